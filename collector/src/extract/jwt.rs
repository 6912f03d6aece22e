//! JWT claims: decoded with `jsonwebtoken`, verified only when a JWKS is configured.
//!
//! Only `iss sub aud client_id jti scope iat exp act may_act` are kept; everything else in the
//! token (emails, names, custom claims) is dropped. `auth_time` and `amr` are read only to tell
//! user tokens from client-credential tokens.

use std::path::Path;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::record::TokenClaims;

/// Deepest `act` nesting followed; deeper chains are cut (and the cut is visible as the chain
/// ending early). Guards against hostile tokens.
const MAX_ACT_DEPTH: usize = 32;

/// Decoded tokens are remembered by fingerprint: a token is sent with every call made under it
/// until it expires, so most JWTs a collector sees it has decoded before (at full load decoding
/// was 4.3 % of the collector's CPU; BENCHMARKS.md, stop 21). About this many tokens…
const DECODED_TOKENS_KEPT: usize = 4096;
/// …within this many bytes of kept claims: a hostile token's claims (scopes, audiences, actors)
/// can be megabytes, and a count alone would let 4,096 of them pin gigabytes.
const DECODED_TOKEN_BYTES_KEPT: u64 = 16 << 20;

/// A remembered token's weight: its kept claims' bytes, its fingerprint and a fixed overhead.
#[derive(Clone)]
struct ClaimsBytes;

impl quick_cache::Weighter<String, Option<DecodedToken>> for ClaimsBytes {
    fn weight(&self, fingerprint: &String, decoded: &Option<DecodedToken>) -> u64 {
        let claims = decoded.as_ref().map_or(0, |d| d.claims.kept_bytes());
        (fingerprint.len() + claims + 128) as u64
    }
}

/// Decodes tokens, checking signatures against a JWKS when one is configured.
pub struct JwtDecoder {
    jwks: Option<JwkSet>,
    /// Decoded tokens by keyed fingerprint (never the token itself). Decoding is a function of
    /// the token and the JWKS alone (no clock: expired tokens still verify), so a remembered
    /// result is the result.
    decoded: quick_cache::sync::Cache<String, Option<DecodedToken>, ClaimsBytes>,
}

impl Default for JwtDecoder {
    fn default() -> JwtDecoder {
        JwtDecoder::with_jwks(None)
    }
}

/// A decoded token's kept claims and whether it speaks for a human user.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedToken {
    pub claims: TokenClaims,
    /// The token was issued to a user (it has `auth_time`/`amr`, or its `sub` is not its own
    /// client), so its `sub` may stand for the user when spans carry no user attribute.
    pub is_user_token: bool,
}

impl JwtDecoder {
    pub fn new(jwks_file: Option<&Path>) -> Result<JwtDecoder> {
        let jwks = match jwks_file {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::io(format!("reading JWKS {}", path.display()), e))?;
                Some(serde_json::from_str(&text).map_err(|e| {
                    Error::config(format!("JWKS {} is not valid: {e}", path.display()))
                })?)
            }
        };
        Ok(JwtDecoder::with_jwks(jwks))
    }

    fn with_jwks(jwks: Option<JwkSet>) -> JwtDecoder {
        JwtDecoder {
            jwks,
            decoded: quick_cache::sync::Cache::with_weighter(
                DECODED_TOKENS_KEPT,
                DECODED_TOKEN_BYTES_KEPT,
                ClaimsBytes,
            ),
        }
    }

    /// [`Self::decode`], remembered by the token's keyed `fingerprint`.
    pub fn decode_once(&self, fingerprint: &str, token: &str) -> Option<DecodedToken> {
        if let Some(decoded) = self.decoded.get(fingerprint) {
            return decoded;
        }
        let decoded = self.decode(token);
        self.decoded
            .insert(fingerprint.to_string(), decoded.clone());
        decoded
    }

    /// Decodes `token`; `None` when it is not a decodable JWT (opaque tokens, JWE).
    pub fn decode(&self, token: &str) -> Option<DecodedToken> {
        let data = jsonwebtoken::dangerous::insecure_decode::<Value>(token).ok()?;
        let verified = self.verify(token, &data.header);
        Some(kept_claims(&data.claims, verified))
    }

    fn verify(&self, token: &str, header: &jsonwebtoken::Header) -> bool {
        let Some(jwks) = &self.jwks else {
            return false;
        };
        let Some(jwk) = header.kid.as_deref().and_then(|kid| jwks.find(kid)) else {
            return false;
        };
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            return false;
        };
        // An audit store checks authenticity, not freshness: expired tokens still verify.
        let mut validation = Validation::new(header.alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        jsonwebtoken::decode::<Value>(token, &key, &validation).is_ok()
    }
}

fn string_claim(claims: &Value, name: &str) -> Option<String> {
    match claims.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn strings_claim(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

fn seconds_to_nanos(claims: &Value, name: &str) -> Option<i64> {
    let secs = claims.get(name)?.as_f64()?;
    let nanos = secs * 1e9;
    (nanos.is_finite() && nanos.abs() < i64::MAX as f64).then_some(nanos as i64)
}

/// Flattens the RFC 8693 `act` chain: `{"sub": A, "act": {"sub": B}}` gives `[A, B]`, the
/// current actor first.
fn actor_chain(claims: &Value) -> Vec<String> {
    let mut actors = Vec::new();
    let mut node = claims.get("act");
    while let Some(act) = node {
        if actors.len() >= MAX_ACT_DEPTH {
            break;
        }
        match act.get("sub").and_then(Value::as_str) {
            Some(sub) => actors.push(sub.to_string()),
            None => match act.get("client_id").and_then(Value::as_str) {
                Some(client) => actors.push(client.to_string()),
                None => break,
            },
        }
        node = act.get("act");
    }
    actors
}

fn may_act_subjects(claims: &Value) -> Vec<String> {
    match claims.get("may_act") {
        Some(Value::Object(obj)) => obj
            .get("sub")
            .and_then(Value::as_str)
            .map(|s| vec![s.to_string()])
            .unwrap_or_default(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|i| i.get("sub").and_then(Value::as_str).map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

fn kept_claims(claims: &Value, verified: bool) -> DecodedToken {
    let sub = string_claim(claims, "sub");
    let client_id = string_claim(claims, "client_id").or_else(|| string_claim(claims, "azp"));
    let mut scopes = strings_claim(claims.get("scope"));
    if scopes.is_empty() {
        scopes = strings_claim(claims.get("scp"));
    }
    let has_login = claims.get("auth_time").is_some() || claims.get("amr").is_some();
    let is_user_token = sub.is_some() && (has_login || client_id.is_none() || client_id != sub);
    DecodedToken {
        claims: TokenClaims {
            iss: string_claim(claims, "iss"),
            sub,
            client_id,
            jti: string_claim(claims, "jti"),
            scopes,
            audience: strings_claim(claims.get("aud")),
            issued_at: seconds_to_nanos(claims, "iat"),
            expires_at: seconds_to_nanos(claims, "exp"),
            actors: actor_chain(claims),
            may_act: may_act_subjects(claims),
            verified,
        },
        is_user_token,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    /// An unsigned-looking JWT with the given claims (signature bytes are not checked here).
    pub(crate) fn make_jwt(claims: &Value) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(claims.to_string());
        format!("{header}.{body}.c2lnbmF0dXJl")
    }

    #[test]
    fn keeps_listed_claims_and_flattens_act() {
        let token = make_jwt(&serde_json::json!({
            "iss": "https://idp", "sub": "alice", "client_id": "planner",
            "aud": ["orders", "billing"], "jti": "j1", "scope": "orders:read orders:write",
            "iat": 1_700_000_000, "exp": 1_700_003_600, "email": "alice@example.com",
            "act": {"sub": "sub-agent", "act": {"sub": "planner"}},
            "may_act": {"sub": "planner"}
        }));
        let d = JwtDecoder::default().decode(&token).unwrap();
        assert_eq!(d.claims.sub.as_deref(), Some("alice"));
        assert_eq!(d.claims.actors, vec!["sub-agent", "planner"]);
        assert_eq!(d.claims.may_act, vec!["planner"]);
        assert_eq!(d.claims.scopes, vec!["orders:read", "orders:write"]);
        assert_eq!(d.claims.audience, vec!["orders", "billing"]);
        assert_eq!(d.claims.issued_at, Some(1_700_000_000_000_000_000));
        assert!(!d.claims.verified);
        assert!(d.is_user_token, "sub differs from client_id");
    }

    #[test]
    fn client_credentials_token_is_not_a_user() {
        let token = make_jwt(&serde_json::json!({"sub": "batch", "client_id": "batch"}));
        assert!(!JwtDecoder::default().decode(&token).unwrap().is_user_token);
        let login =
            make_jwt(&serde_json::json!({"sub": "batch", "client_id": "batch", "auth_time": 1}));
        assert!(JwtDecoder::default().decode(&login).unwrap().is_user_token);
    }

    #[test]
    fn verifies_against_jwks() {
        use jsonwebtoken::{EncodingKey, Header, encode};
        let dir = tempfile::tempdir().unwrap();
        let jwks = dir.path().join("jwks.json");
        // "secret-key-for-tests-only" base64url, an oct key
        std::fs::write(
            &jwks,
            r#"{"keys":[{"kty":"oct","kid":"k1","alg":"HS256","k":"c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seQ"}]}"#,
        )
        .unwrap();
        let decoder = JwtDecoder::new(Some(&jwks)).unwrap();
        let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some("k1".into());
        let claims = serde_json::json!({"sub": "alice", "exp": 1});
        let good = encode(
            &header,
            &claims,
            &EncodingKey::from_secret(b"secret-key-for-tests-only"),
        )
        .unwrap();
        let bad = encode(&header, &claims, &EncodingKey::from_secret(b"another-key")).unwrap();
        assert!(decoder.decode(&good).unwrap().claims.verified);
        assert!(!decoder.decode(&bad).unwrap().claims.verified);
        // Remembered by fingerprint: a forged token, with a fingerprint of its own, never
        // borrows the genuine one's verification, however often either is seen.
        for _ in 0..2 {
            let good = decoder.decode_once("k1:good", &good).unwrap();
            let bad = decoder.decode_once("k1:bad", &bad).unwrap();
            assert_eq!((good.claims.verified, bad.claims.verified), (true, false));
        }
    }

    #[test]
    fn garbage_is_not_a_token() {
        assert!(JwtDecoder::default().decode("eyJub3Q.a.token").is_none());
        assert!(JwtDecoder::default().decode("opaque").is_none());
    }
}
