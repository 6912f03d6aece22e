//! Finding secrets in attributes and replacing them with keyed fingerprints.
//!
//! A value is a secret when its key says so (`authorization`, `*token*`, `*password*`, …), when it
//! is shaped like one (a JWT, `Bearer …`, `Basic …`), or when it sits in a URL's userinfo or a
//! signed query parameter. The attribute is kept with the fingerprint in place of the value, so
//! the same credential can still be followed across spans, services and days.

use ahash::{AHashMap as HashMap, AHashSet as HashSet};

use crate::config::SecretsConfig;
use crate::extract::attributes::Value;
use crate::extract::fingerprint::Fingerprinter;
use crate::extract::jwt::{DecodedToken, JwtDecoder};
use crate::record::CredentialKind;

/// A secret that was replaced, with what could be learnt from it.
#[derive(Debug, Clone)]
pub struct FoundSecret {
    pub kind: CredentialKind,
    /// The attribute key it was found in.
    pub attribute: String,
    pub fingerprint: String,
    pub token: Option<DecodedToken>,
    /// Found in an Authorization header: the credential the caller presented.
    pub from_authorization: bool,
    /// Found as a whole attribute value, not merely mentioned inside text (a span name, an
    /// error message): only those are credentials the span presented.
    pub whole_value: bool,
}

impl FoundSecret {
    /// Ordering used to pick the credential a span presented: Authorization headers first, then
    /// whole attribute values over secrets quoted in text, then by kind (tokens over keys over
    /// cookies over URL secrets).
    pub fn rank(&self) -> (bool, bool, CredentialKind) {
        (!self.from_authorization, !self.whole_value, self.kind)
    }
}

/// What a key says about its values, worked out once per distinct key per request (keys repeat
/// across a request's spans; classifying one means lowercasing it and matching a dozen patterns).
#[derive(Debug, Clone, Copy, Default)]
struct KeyClass {
    secret: Option<CredentialKind>,
    /// Numbers under this key are secrets too (`db.password = 12345678`); not under `*token*`
    /// keys, whose numbers are counts.
    scalar_secret: bool,
    from_authorization: bool,
    url: bool,
    url_query: bool,
}

/// Per-request memo of [`KeyClass`]es.
#[derive(Default)]
pub struct KeyCache(HashMap<String, KeyClass>);

pub struct SecretScrubber {
    fingerprinter: Fingerprinter,
    jwt: JwtDecoder,
    exact_keys: Vec<String>,
    key_substrings: Vec<String>,
    exempt_prefixes: Vec<String>,
    url_params: HashSet<String>,
    url_keys: Vec<String>,
}

fn lower_all(items: &[String]) -> Vec<String> {
    items.iter().map(|s| s.to_ascii_lowercase()).collect()
}

impl SecretScrubber {
    pub fn new(
        config: &SecretsConfig,
        url_keys: &[String],
        fingerprinter: Fingerprinter,
        jwt: JwtDecoder,
    ) -> SecretScrubber {
        SecretScrubber {
            fingerprinter,
            jwt,
            exact_keys: lower_all(&config.exact_keys),
            key_substrings: lower_all(&config.key_substrings),
            exempt_prefixes: lower_all(&config.exempt_key_prefixes),
            url_params: lower_all(&config.url_query_params).into_iter().collect(),
            url_keys: url_keys.to_vec(),
        }
    }

    /// What kind of secret a key holds by its name alone, if any.
    fn key_kind(&self, key: &str) -> Option<CredentialKind> {
        let key = key.to_ascii_lowercase();
        if self.exempt_prefixes.iter().any(|p| key.starts_with(p)) {
            return None;
        }
        let last = key.rsplit('.').next().unwrap_or(&key);
        if let Some(exact) = self.exact_keys.iter().find(|k| **k == key || **k == last) {
            return Some(match exact.as_str() {
                "cookie" | "set-cookie" => CredentialKind::Cookie,
                "x-api-key" => CredentialKind::ApiKey,
                _ => CredentialKind::Bearer,
            });
        }
        let hit = self
            .key_substrings
            .iter()
            .find(|s| key.contains(s.as_str()))?;
        Some(if hit.contains("api") || hit == "secret" {
            CredentialKind::ApiKey
        } else if hit.starts_with("pass") {
            CredentialKind::Basic
        } else {
            CredentialKind::Bearer
        })
    }

    fn classify_key(&self, key: &str, cache: &mut KeyCache) -> KeyClass {
        if let Some(class) = cache.0.get(key) {
            return *class;
        }
        let secret = self.key_kind(key);
        let lower = key.to_ascii_lowercase();
        let class = KeyClass {
            secret,
            scalar_secret: secret.is_some() && !lower.contains("token"),
            from_authorization: lower.ends_with("authorization"),
            url: self.url_keys.iter().any(|k| k == key),
            url_query: key.ends_with("url.query"),
        };
        cache.0.insert(key.to_string(), class);
        class
    }

    /// Scrubs one attribute in place, recording every secret it held.
    pub fn scrub_attribute(
        &self,
        key: &str,
        value: &mut Value,
        found: &mut Vec<FoundSecret>,
        cache: &mut KeyCache,
    ) {
        let class = self.classify_key(key, cache);
        if let Some(kind) = class.secret {
            let from_authorization = class.from_authorization;
            match value {
                Value::Text(s) | Value::Json(s) => {
                    self.replace_whole(key, kind, from_authorization, s, found)
                }
                Value::List(items) => {
                    for s in items {
                        self.replace_whole(key, kind, from_authorization, s, found);
                    }
                }
                Value::Scalar(s) if class.scalar_secret => {
                    self.replace_whole(key, kind, from_authorization, s, found)
                }
                // Numbers and booleans under a `*token*` key are counts and flags, not secrets.
                Value::Scalar(_) => {}
            }
            return;
        }
        match value {
            Value::Text(s) => self.scrub_value(key, class, s, found),
            Value::List(items) => {
                for s in items {
                    self.scrub_value(key, class, s, found);
                }
            }
            Value::Json(s) => self.scrub_json(key, s, found),
            Value::Scalar(_) => {}
        }
    }

    /// Nested maps and arrays (kept as JSON): secret keys apply at every level, and every
    /// string is scrubbed as a value. Walked with a stack; the JSON is depth-bounded anyway.
    fn scrub_json(&self, key: &str, s: &mut String, found: &mut Vec<FoundSecret>) {
        use serde_json::Value as J;
        let Ok(mut tree) = serde_json::from_str::<J>(s) else {
            self.scrub_text(key, s, found);
            return;
        };
        let before = found.len();
        let mut stack: Vec<(&mut J, Option<CredentialKind>)> = vec![(&mut tree, None)];
        while let Some((node, secret)) = stack.pop() {
            match node {
                J::Object(map) => {
                    for (k, v) in map.iter_mut() {
                        stack.push((v, self.key_kind(k).or(secret)));
                    }
                }
                J::Array(items) => stack.extend(items.iter_mut().map(|v| (v, secret))),
                J::String(text) => match secret {
                    Some(kind) => self.replace_whole(key, kind, false, text, found),
                    None => self.scrub_value(key, KeyClass::default(), text, found),
                },
                J::Number(n) if secret.is_some() => {
                    let mut text = n.to_string();
                    if let Some(kind) = secret {
                        self.replace_whole(key, kind, false, &mut text, found);
                    }
                    *node = J::String(text);
                }
                _ => {}
            }
        }
        if found.len() > before {
            *s = tree.to_string();
        }
    }

    /// A value under a non-secret key: it may still be a secret by shape or hold one in a URL.
    fn scrub_value(
        &self,
        key: &str,
        class: KeyClass,
        s: &mut String,
        found: &mut Vec<FoundSecret>,
    ) {
        let trimmed = s.trim();
        if is_jwt(trimmed)
            || strip_prefix_ci(trimmed, "bearer ").is_some_and(|t| is_token_like(t.trim()))
            || strip_prefix_ci(trimmed, "basic ").is_some_and(|t| is_basic_credentials(t.trim()))
        {
            self.replace_whole(key, CredentialKind::Bearer, false, s, found);
            return;
        }
        if class.url || looks_like_url(trimmed) {
            self.scrub_url(key, s, found);
        } else if class.url_query {
            self.scrub_query(key, s, found);
        } else if trimmed.starts_with('/')
            && let Some((path, query)) = trimmed.split_once('?')
            && let Some(scrubbed) = self.scrubbed_query(key, query, found)
        {
            // A request target (`http.target`, `url.path`): `/callback?code=…`.
            *s = format!("{path}?{scrubbed}");
        }
        self.scrub_text(key, s, found);
    }

    /// Replaces a whole value known to be secret with its fingerprint.
    fn replace_whole(
        &self,
        key: &str,
        key_kind: CredentialKind,
        from_authorization: bool,
        s: &mut String,
        found: &mut Vec<FoundSecret>,
    ) {
        let trimmed = s.trim();
        if trimmed.is_empty() {
            return;
        }
        let (kind, material) = classify(key_kind, trimmed);
        *s = self.record(key, kind, material, true, from_authorization, found);
    }

    /// Fingerprints `material`, decoding it first when it is a JWT, and records what was found.
    fn record(
        &self,
        key: &str,
        kind: CredentialKind,
        material: &str,
        whole_value: bool,
        from_authorization: bool,
        found: &mut Vec<FoundSecret>,
    ) -> String {
        let fingerprint = self.fingerprinter.fingerprint(material.as_bytes());
        let token = is_jwt(material)
            .then(|| self.jwt.decode_once(&fingerprint, material))
            .flatten();
        found.push(FoundSecret {
            kind,
            attribute: key.to_string(),
            fingerprint: fingerprint.clone(),
            token,
            from_authorization,
            whole_value,
        });
        fingerprint
    }

    /// Userinfo and signed query parameters of a URL.
    fn scrub_url(&self, key: &str, s: &mut String, found: &mut Vec<FoundSecret>) {
        if !s.contains('@') && !s.contains('?') && !s.contains('#') {
            return;
        }
        let Ok(mut url) = url::Url::parse(s.trim()) else {
            return;
        };
        let mut changed = false;
        if let Some(password) = url.password().filter(|p| !p.is_empty()).map(str::to_string) {
            let fp = self.record(
                key,
                CredentialKind::UrlSecret,
                &password,
                true,
                false,
                found,
            );
            changed |= url.set_password(Some(&fp)).is_ok();
        } else if !url.username().is_empty() {
            // A lone username in a URL is usually a token (`https://<token>@host`).
            let user = url.username().to_string();
            let fp = self.record(key, CredentialKind::UrlSecret, &user, true, false, found);
            changed |= url.set_username(&fp).is_ok();
        }
        if let Some(query) = url.query().map(str::to_string)
            && let Some(scrubbed) = self.scrubbed_query(key, &query, found)
        {
            url.set_query(Some(&scrubbed));
            changed = true;
        }
        // OAuth implicit and hybrid flows return tokens in the fragment.
        if let Some(fragment) = url.fragment().map(str::to_string)
            && let Some(scrubbed) = self.scrubbed_query(key, &fragment, found)
        {
            url.set_fragment(Some(&scrubbed));
            changed = true;
        }
        if changed {
            *s = url.to_string();
        }
    }

    fn scrub_query(&self, key: &str, s: &mut String, found: &mut Vec<FoundSecret>) {
        if let Some(scrubbed) = self.scrubbed_query(key, s, found) {
            *s = scrubbed;
        }
    }

    /// The query string with secret parameters fingerprinted, or `None` when it holds none.
    fn scrubbed_query(
        &self,
        key: &str,
        query: &str,
        found: &mut Vec<FoundSecret>,
    ) -> Option<String> {
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if !pairs
            .iter()
            .any(|(k, v)| !v.is_empty() && self.url_params.contains(&k.to_ascii_lowercase()))
        {
            return None;
        }
        let mut out = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in &pairs {
            if !v.is_empty() && self.url_params.contains(&k.to_ascii_lowercase()) {
                let fp = self.record(key, CredentialKind::UrlSecret, v, true, false, found);
                out.append_pair(k, &fp);
            } else {
                out.append_pair(k, v);
            }
        }
        Some(out.finish())
    }

    /// Free text (span names, status messages, any value): JWTs and `Bearer`/`Basic` tokens
    /// embedded anywhere are replaced.
    pub fn scrub_text(&self, key: &str, s: &mut String, found: &mut Vec<FoundSecret>) {
        if !might_hold_token(s) {
            return;
        }
        let mut out = String::with_capacity(s.len());
        let mut rest = s.as_str();
        let mut changed = false;
        while !rest.is_empty() {
            // The earliest candidate: a JWT, or the token after an auth scheme.
            let jwt_at = rest.find("eyJ").map(|at| (at, at));
            let scheme_at = find_auth_scheme(rest).map(|(at, len)| (at, at + len));
            let (at, token_start) = match (jwt_at, scheme_at) {
                (Some(j), Some(a)) => {
                    if a.0 < j.0 {
                        a
                    } else {
                        j
                    }
                }
                (Some(c), None) | (None, Some(c)) => c,
                (None, None) => break,
            };
            let tail = &rest[token_start..];
            let run = tail.find(|c: char| !is_token_char(c)).unwrap_or(tail.len());
            // A trailing '.' usually ends the sentence, not the token ("invalid token:
            // eyJ…."), but an unsigned JWT (`alg: none`) ends in '.' itself: keep the fewest
            // trailing dots that make a JWT, so the same token always fingerprints the same.
            let candidate = &tail[..run];
            let trimmed_len = candidate.trim_end_matches('.').len();
            let token_len = (trimmed_len..=run)
                .find(|&len| is_jwt(&candidate[..len]))
                .unwrap_or(trimmed_len);
            let token = &tail[..token_len];
            let scheme = rest[at..token_start].to_ascii_lowercase();
            let kind = if is_jwt(token) {
                Some(CredentialKind::Jwt)
            } else if scheme.starts_with("basic") && is_basic_credentials(token) {
                Some(CredentialKind::Basic)
            } else if scheme.starts_with("bearer") && is_token_like(token) {
                Some(CredentialKind::Bearer)
            } else {
                None
            };
            // Always advance by whole characters: the byte after a non-token may be multi-byte.
            let advance = if token_len > 0 {
                token_len
            } else {
                tail.chars().next().map_or(0, char::len_utf8)
            };
            let end = token_start + advance;
            match kind {
                Some(kind) => {
                    out.push_str(&rest[..token_start]);
                    out.push_str(&self.record(key, kind, token, false, false, found));
                    changed = true;
                }
                None => out.push_str(&rest[..end]),
            }
            rest = &rest[end..];
        }
        if changed {
            out.push_str(rest);
            *s = out;
        }
    }
}

/// `scheme://…` for any scheme (`https`, `postgres`, `amqps`, any case).
fn looks_like_url(s: &str) -> bool {
    s.split_once("://").is_some_and(|(scheme, _)| {
        !scheme.is_empty()
            && scheme.len() <= 32
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    })
}

/// Splits a known-secret value into its kind and the material to fingerprint: the token after
/// an auth scheme, so the same token fingerprints alike in any header.
fn classify(key_kind: CredentialKind, value: &str) -> (CredentialKind, &str) {
    if let Some(rest) = strip_prefix_ci(value, "bearer ") {
        let rest = rest.trim();
        let kind = if is_jwt(rest) {
            CredentialKind::Jwt
        } else {
            CredentialKind::Bearer
        };
        return (kind, rest);
    }
    if let Some(rest) = strip_prefix_ci(value, "basic ") {
        return (CredentialKind::Basic, rest.trim());
    }
    if is_jwt(value) {
        return (CredentialKind::Jwt, value);
    }
    (key_kind, value)
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | '+' | '/' | '=')
}

/// Long enough and made of token characters: what follows `Bearer ` in a real header.
fn is_token_like(s: &str) -> bool {
    s.len() >= 8 && s.chars().all(is_token_char)
}

/// A compact JWS (3 parts) or JWE (5 parts) starting with a base64url `{"`.
pub fn is_jwt(s: &str) -> bool {
    if s.len() < 16 || !s.starts_with("eyJ") {
        return false;
    }
    let mut parts = 0;
    for part in s.split('.') {
        parts += 1;
        if !part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return false;
        }
    }
    (parts == 3 || parts == 5) && !s.starts_with("eyJ.")
}

fn might_hold_token(s: &str) -> bool {
    s.contains("eyJ") || find_auth_scheme(s).is_some()
}

/// `Basic` credentials: base64 of `user:password`.
fn is_basic_credentials(s: &str) -> bool {
    use base64::Engine;
    s.len() >= 4
        && base64::engine::general_purpose::STANDARD
            .decode(s)
            .is_ok_and(|raw| raw.contains(&b':'))
}

/// Position and length of the next `Bearer ` or `Basic ` (any case) in `s`.
fn find_auth_scheme(s: &str) -> Option<(usize, usize)> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i + 6 <= bytes.len() {
        let b = bytes[i] | 0x20;
        if b == b'b' {
            if bytes.len() >= i + 7 && bytes[i..i + 7].eq_ignore_ascii_case(b"bearer ") {
                return Some((i, 7));
            }
            if bytes[i..i + 6].eq_ignore_ascii_case(b"basic ") {
                return Some((i, 6));
            }
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::jwt::tests::make_jwt;

    fn scrubber() -> SecretScrubber {
        SecretScrubber::new(
            &SecretsConfig::default(),
            &["url.full".to_string()],
            Fingerprinter::from_key(&[7; 32]),
            JwtDecoder::default(),
        )
    }

    fn scrub(key: &str, value: Value) -> (Value, Vec<FoundSecret>) {
        let mut v = value;
        let mut found = Vec::new();
        scrubber().scrub_attribute(key, &mut v, &mut found, &mut KeyCache::default());
        (v, found)
    }

    fn text(v: &Value) -> String {
        v.clone().into_map_value()
    }

    #[test]
    fn authorization_header_with_jwt_is_fingerprinted_and_decoded() {
        let jwt = make_jwt(&serde_json::json!({"sub": "alice", "jti": "t1"}));
        let (v, found) = scrub(
            "http.request.header.authorization",
            Value::List(vec![format!("Bearer {jwt}")]),
        );
        assert!(!text(&v).contains(&jwt));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].kind, CredentialKind::Jwt);
        assert!(found[0].from_authorization);
        assert_eq!(
            found[0].token.as_ref().unwrap().claims.sub.as_deref(),
            Some("alice")
        );
        // The same token in another header fingerprints the same.
        let (_, again) = scrub("x-forwarded-token", Value::Text(jwt.clone()));
        assert_eq!(again[0].fingerprint, found[0].fingerprint);
    }

    #[test]
    fn keys_by_name() {
        for (key, kind) in [
            ("http.request.header.x-api-key", CredentialKind::ApiKey),
            ("db.password", CredentialKind::Basic),
            ("http.request.header.cookie", CredentialKind::Cookie),
            ("app.client_secret", CredentialKind::ApiKey),
            ("github.token", CredentialKind::Bearer),
        ] {
            let (v, found) = scrub(key, Value::Text("s3cr3t-value-123".into()));
            assert!(!text(&v).contains("s3cr3t"), "{key}");
            assert_eq!(found[0].kind, kind, "{key}");
        }
        let (v, found) = scrub("gen_ai.usage.input_tokens", Value::Text("42".into()));
        assert_eq!(text(&v), "42");
        assert!(found.is_empty());
        let (_, found) = scrub("auth.token_count", Value::Scalar("3".into()));
        assert!(found.is_empty(), "numbers are not secrets");
    }

    /// Found by the `secrets_and_jwt` fuzz target: an unsigned JWT (empty signature, so it
    /// ends in '.') in free text was cut at its trailing dot, no longer looked like a JWT, and
    /// stayed in the text raw.
    #[test]
    fn unsigned_jwts_in_free_text_are_scrubbed_with_their_trailing_dot() {
        let crasher = ",=\reyJ-http.request.";
        let mut text = crasher.to_string();
        let mut found = Vec::new();
        scrubber().scrub_text("name", &mut text, &mut found);
        assert!(!text.contains("eyJ-http"), "{text}");
        assert_eq!(found.len(), 1);

        let unsigned = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9.";
        for sentence in [
            format!("rejected {unsigned} today"),
            format!("rejected {unsigned}."),
            format!("rejected {unsigned}"),
        ] {
            let mut text = sentence.clone();
            let mut found = Vec::new();
            scrubber().scrub_text("name", &mut text, &mut found);
            assert!(!text.contains("eyJzdWIi"), "{sentence} → {text}");
            assert_eq!(found[0].kind, CredentialKind::Jwt);
        }
        // A signed JWT ending a sentence (or an ellipsis) keeps the dots outside the token,
        // and fingerprints as it does anywhere else.
        let signed = make_jwt(&serde_json::json!({"sub": "bob"}));
        let fingerprint = |sentence: String| {
            let mut found = Vec::new();
            let mut text = sentence;
            scrubber().scrub_text("name", &mut text, &mut found);
            assert!(!text.contains(&signed), "{text}");
            (text, found[0].fingerprint.clone())
        };
        let (plain, expected) = fingerprint(format!("invalid token {signed}"));
        let (dot, at_dot) = fingerprint(format!("invalid token {signed}."));
        let (ellipsis, at_ellipsis) = fingerprint(format!("invalid token {signed}..."));
        assert!(dot.ends_with('.') && ellipsis.ends_with("...") && !plain.ends_with('.'));
        assert_eq!((at_dot, at_ellipsis), (expected.clone(), expected));
    }

    #[test]
    fn values_shaped_like_secrets_under_any_key() {
        let (v, found) = scrub("note", Value::Text("Bearer abcdefgh12345678".into()));
        assert!(!text(&v).contains("abcdefgh12345678"));
        assert_eq!(found[0].kind, CredentialKind::Bearer);
        let jwt = make_jwt(&serde_json::json!({"sub": "bob"}));
        let (v, found) = scrub(
            "exception.message",
            Value::Text(format!("rejected token {jwt} for user")),
        );
        let t = text(&v);
        assert!(!t.contains(&jwt) && t.starts_with("rejected token k") && t.ends_with(" for user"));
        assert_eq!(found[0].kind, CredentialKind::Jwt);
        let (v, found) = scrub("http.route", Value::Text("/orders/{id}".into()));
        assert_eq!(text(&v), "/orders/{id}");
        assert!(found.is_empty());
    }

    #[test]
    fn url_userinfo_and_signed_params() {
        let (v, found) = scrub(
            "url.full",
            Value::Text(
                "https://svc:hunter2hunter2@host/p?X-Amz-Signature=abc123&region=eu&access_token=tok999"
                    .into(),
            ),
        );
        let t = text(&v);
        assert!(
            !t.contains("hunter2") && !t.contains("abc123") && !t.contains("tok999"),
            "{t}"
        );
        assert!(t.contains("region=eu"));
        assert_eq!(found.len(), 3);
        assert!(found.iter().all(|f| f.kind == CredentialKind::UrlSecret));
        let (v, found) = scrub("url.full", Value::Text("https://host/p?q=1".into()));
        assert_eq!(text(&v), "https://host/p?q=1");
        assert!(found.is_empty());
    }

    #[test]
    fn free_text_with_multibyte_characters_does_not_panic() {
        let (v, found) = scrub("msg", Value::Text("Bearer é and basic ü, bearer ".into()));
        assert_eq!(text(&v), "Bearer é and basic ü, bearer ");
        assert!(found.is_empty());
        let (v, found) = scrub("msg", Value::Text("auth: Basic dXNlcjpwYXNz — ok".into()));
        assert_eq!(found[0].kind, CredentialKind::Basic);
        assert!(!text(&v).contains("dXNlcjpwYXNz"));
    }

    #[test]
    fn review_findings_are_scrubbed() {
        let cases = [
            (
                "http.request.header.proxy-authorization",
                Value::Text("Negotiate YIIsecretgss".into()),
                "YIIsecretgss",
            ),
            (
                "http.request.headers",
                Value::Json(r#"[{"password":"hunter2"},{"x":"Bearer abcdefgh12345678"}]"#.into()),
                "hunter2",
            ),
            (
                "http.request.headers",
                Value::Json(r#"[{"x":"Bearer abcdefgh12345678"}]"#.into()),
                "abcdefgh12345678",
            ),
            (
                "db.connection_string",
                Value::Text("postgres://app:pgsecret99@db:5432/shop".into()),
                "pgsecret99",
            ),
            (
                "redirect",
                Value::Text("HTTPS://app/cb#access_token=fragtoken123&state=x".into()),
                "fragtoken123",
            ),
            (
                "http.target",
                Value::Text("/callback?code=authcode777&state=s".into()),
                "authcode777",
            ),
            ("db.password", Value::Scalar("12345678".into()), "12345678"),
        ];
        for (key, value, secret) in cases {
            let (v, found) = scrub(key, value);
            assert!(!text(&v).contains(secret), "{key}: {}", text(&v));
            assert!(!found.is_empty(), "{key}");
        }
        let (v, _) = scrub("http.target", Value::Text("/callback?state=s".into()));
        assert_eq!(text(&v), "/callback?state=s");
    }

    #[test]
    fn jwt_ending_a_sentence_is_found() {
        let jwt = make_jwt(&serde_json::json!({"sub": "bob"}));
        let (v, found) = scrub(
            "status.message",
            Value::Text(format!("invalid token: {jwt}.")),
        );
        let t = text(&v);
        assert!(!t.contains(&jwt), "{t}");
        assert!(t.ends_with('.'), "the full stop stays: {t}");
        assert_eq!(found[0].kind, CredentialKind::Jwt);
        assert!(!found[0].whole_value);
    }

    #[test]
    fn jwt_shape() {
        assert!(is_jwt("eyJhbGciOi.eyJzdWIiOiJ4In0.sig_-"));
        assert!(!is_jwt("eyJhbGciOi.eyJzdWIiOiJ4In0"));
        assert!(!is_jwt("eyJhbGciOi.eyJzd WIiOiJ4In0.sig"));
    }
}
