//! JWT minting for generated traces.
//!
//! Tokens are real HS256 JWTs (header.payload.signature) so the collector's
//! parser sees exactly the shape it meets in production: it must decode the
//! payload, keep the lineage claims and drop the rest (email, name, ...).
//! Minting is comparatively slow (JSON + HMAC), so callers cache tokens and
//! reuse them across traces, which is also what real credentials do.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::Rng;
use serde::Serialize;

/// Fixed, public signing key: the generator's tokens must look real but
/// protect nothing, and a fixed key lets tests verify signatures.
pub const SIGNING_KEY: &[u8] = b"idtrail-gen-hs256-test-key-not-a-secret-0001";
/// `kid` header value of every generated token.
pub const KEY_ID: &str = "idtrail-gen-1";
/// `iss` claim of every generated token.
pub const ISSUER: &str = "https://idp.example.com";

const HOUR: u64 = 3600;

/// RFC 8693 actor claim; nested `act` lists prior actors, outermost = current.
#[derive(Debug, Clone, Serialize)]
pub struct Actor {
    pub sub: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<Actor>>,
}

impl Actor {
    /// Builds the nested chain from `chain[0]` (current actor) outwards to
    /// the earliest actor.
    pub fn chain(chain: &[&str]) -> Option<Actor> {
        let (first, rest) = chain.split_first()?;
        Some(Actor {
            sub: (*first).to_string(),
            act: Actor::chain(rest).map(Box::new),
        })
    }
}

/// Claim set covering all three token kinds; absent fields are omitted so
/// each kind serialises to its natural shape.
#[derive(Debug, Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    client_id: &'a str,
    scope: &'a str,
    iat: u64,
    nbf: u64,
    exp: u64,
    jti: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_time: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    amr: Option<[&'a str; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    act: Option<Actor>,
    #[serde(skip_serializing_if = "Option::is_none")]
    may_act: Option<Actor>,
}

/// Human user as far as tokens are concerned.
pub struct UserIdentity<'a> {
    pub sub: &'a str,
    pub email: &'a str,
    pub name: &'a str,
}

/// Signs claim sets with the fixed key; holds the parsed key and header so
/// they are built once.
pub struct Minter {
    key: EncodingKey,
    header: Header,
}

impl Default for Minter {
    fn default() -> Self {
        Self::new()
    }
}

impl Minter {
    pub fn new() -> Self {
        let mut header = Header::new(Algorithm::HS256);
        header.typ = Some("JWT".to_string());
        header.kid = Some(KEY_ID.to_string());
        Minter {
            key: EncodingKey::from_secret(SIGNING_KEY),
            header,
        }
    }

    fn sign(&self, claims: &Claims<'_>) -> anyhow::Result<String> {
        Ok(jsonwebtoken::encode(&self.header, claims, &self.key)?)
    }

    /// User access token from an interactive login (has auth_time and amr).
    /// 10% live 48h to give the collector long-lived tokens to flag.
    pub fn user_token<R: Rng>(
        &self,
        rng: &mut R,
        user: &UserIdentity<'_>,
        client_id: &str,
        now_s: u64,
    ) -> anyhow::Result<String> {
        let iat = now_s.saturating_sub(rng.random_range(0..HOUR / 2));
        let claims = Claims {
            iss: ISSUER,
            sub: user.sub,
            aud: "https://api.example.com",
            client_id,
            scope: "orders:read orders:write",
            iat,
            nbf: iat,
            exp: iat + lifetime(rng),
            jti: jti(rng),
            auth_time: Some(iat.saturating_sub(rng.random_range(0..300))),
            amr: Some(["pwd", "mfa"]),
            email: Some(user.email),
            name: Some(user.name),
            act: None,
            may_act: None,
        };
        self.sign(&claims)
    }

    /// RFC 8693 token-exchange result: still the user's token (sub), issued
    /// to `client_id`, naming the delegation chain in `act` (current actor
    /// first) and who was allowed to act in `may_act`.
    pub fn exchanged_token<R: Rng>(
        &self,
        rng: &mut R,
        user_sub: &str,
        client_id: &str,
        actors: &[&str],
        may_act: &str,
        now_s: u64,
    ) -> anyhow::Result<String> {
        let iat = now_s.saturating_sub(rng.random_range(0..60));
        let claims = Claims {
            iss: ISSUER,
            sub: user_sub,
            aud: "https://orders.example.com",
            client_id,
            scope: "orders:write",
            iat,
            nbf: iat,
            exp: iat + lifetime(rng),
            jti: jti(rng),
            auth_time: None,
            amr: None,
            email: None,
            name: None,
            act: Actor::chain(actors),
            may_act: Some(Actor {
                sub: may_act.to_string(),
                act: None,
            }),
        };
        self.sign(&claims)
    }

    /// Client-credentials token for an autonomous workload: sub == client_id,
    /// no auth_time/amr because no human authenticated.
    pub fn client_credentials_token<R: Rng>(
        &self,
        rng: &mut R,
        client_id: &str,
        now_s: u64,
    ) -> anyhow::Result<String> {
        let iat = now_s.saturating_sub(rng.random_range(0..HOUR / 2));
        let claims = Claims {
            iss: ISSUER,
            sub: client_id,
            aud: "https://api.example.com",
            client_id,
            scope: "orders:read orders:write events:publish",
            iat,
            nbf: iat,
            exp: iat + lifetime(rng),
            jti: jti(rng),
            auth_time: None,
            amr: None,
            email: None,
            name: None,
            act: None,
            may_act: None,
        };
        self.sign(&claims)
    }
}

/// 1h normally, 48h for 10% of tokens.
fn lifetime<R: Rng>(rng: &mut R) -> u64 {
    if rng.random_bool(0.1) {
        48 * HOUR
    } else {
        HOUR
    }
}

/// Unique token id drawn from the seeded RNG (so runs are reproducible).
fn jti<R: Rng>(rng: &mut R) -> String {
    let bytes: [u8; 16] = rng.random();
    let mut s = String::with_capacity(32);
    for b in bytes {
        push_hex(&mut s, b);
    }
    s
}

fn push_hex(s: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    s.push(HEX[usize::from(b >> 4)] as char);
    s.push(HEX[usize::from(b & 0xf)] as char);
}

/// Decodes a JWT's payload without verifying it (tests, debugging).
pub fn decode_payload(token: &str) -> anyhow::Result<serde_json::Value> {
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("not a JWT: no payload segment"))?;
    let bytes = URL_SAFE_NO_PAD.decode(payload)?;
    Ok(serde_json::from_slice(&bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    #[test]
    fn user_token_claims_parse_back() -> anyhow::Result<()> {
        let mut rng = SmallRng::seed_from_u64(7);
        let m = Minter::new();
        let user = UserIdentity {
            sub: "alice@example.com",
            email: "alice@example.com",
            name: "Alice Smith",
        };
        let t = m.user_token(&mut rng, &user, "agent-portal", 1_700_000_000)?;
        let c = decode_payload(&t)?;
        assert_eq!(c["iss"], ISSUER);
        assert_eq!(c["sub"], "alice@example.com");
        assert_eq!(c["client_id"], "agent-portal");
        assert_eq!(c["amr"], serde_json::json!(["pwd", "mfa"]));
        assert!(c["auth_time"].is_u64());
        let (iat, exp) = (c["iat"].as_u64(), c["exp"].as_u64());
        assert!(matches!((iat, exp), (Some(i), Some(e)) if e - i == HOUR || e - i == 48 * HOUR));
        let header = jsonwebtoken::decode_header(&t)?;
        assert_eq!(header.kid.as_deref(), Some(KEY_ID));
        assert_eq!(header.alg, Algorithm::HS256);
        Ok(())
    }

    #[test]
    fn exchanged_token_has_nested_act() -> anyhow::Result<()> {
        let mut rng = SmallRng::seed_from_u64(7);
        let m = Minter::new();
        let t = m.exchanged_token(
            &mut rng,
            "bob@example.com",
            "agt_sub",
            &["agt_sub", "agt_planner"],
            "agt_planner",
            1_700_000_000,
        )?;
        let c = decode_payload(&t)?;
        assert_eq!(c["sub"], "bob@example.com");
        assert_eq!(c["act"]["sub"], "agt_sub");
        assert_eq!(c["act"]["act"]["sub"], "agt_planner");
        assert!(c["act"]["act"].get("act").is_none());
        assert_eq!(c["may_act"]["sub"], "agt_planner");
        assert_eq!(c["scope"], "orders:write");
        assert!(c.get("auth_time").is_none());
        Ok(())
    }

    #[test]
    fn client_credentials_token_shape_and_signature() -> anyhow::Result<()> {
        let mut rng = SmallRng::seed_from_u64(7);
        let m = Minter::new();
        let t = m.client_credentials_token(&mut rng, "agt_reconciler", 1_700_000_000)?;
        let c = decode_payload(&t)?;
        assert_eq!(c["sub"], c["client_id"]);
        assert!(c.get("auth_time").is_none() && c.get("amr").is_none());
        let mut v = jsonwebtoken::Validation::new(Algorithm::HS256);
        v.validate_exp = false;
        v.validate_aud = false;
        let key = jsonwebtoken::DecodingKey::from_secret(SIGNING_KEY);
        jsonwebtoken::decode::<serde_json::Value>(&t, &key, &v)?;
        Ok(())
    }
}
