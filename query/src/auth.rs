//! Optional authentication of queries, shared by Flight SQL and `POST /v1/query`: bearer keys
//! (`query.auth_keys_file`, the collector's [`BearerKeys`], the same as for ingest) and client
//! certificates on an mTLS listener (the collector's [`Peer`]).

pub use idtrail_collector::auth::BearerKeys;
use idtrail_collector::listener::Peer;

use crate::error::{QueryError, Result};

/// Refuses a request that lacks what its listener requires: a client certificate on an mTLS
/// listener, a listed key in its `Authorization` header when `keys` are set.
pub fn authenticate(
    keys: Option<&BearerKeys>,
    authorization: Option<&str>,
    peer: Option<&Peer>,
) -> Result<()> {
    // The collector's refusal already says what was missing; its reason is kept, not its
    // "unauthenticated: " prefix, which QueryError adds again.
    match peer.map(Peer::principal) {
        Some(Err(idtrail_collector::Error::Unauthenticated(why))) => {
            return Err(QueryError::Unauthenticated(why));
        }
        Some(Err(other)) => return Err(QueryError::Unauthenticated(other.to_string())),
        _ => {}
    }
    match keys {
        Some(keys) if keys.check(authorization).is_none() => Err(QueryError::Unauthenticated(
            "send Authorization: Bearer <key> with a key from query.auth_keys_file".into(),
        )),
        _ => Ok(()),
    }
}

/// [`authenticate`] for an HTTP request: its `Authorization` header, and the peer the
/// listener put in its extensions. One check for every HTTP query route.
pub fn authenticate_http(
    keys: Option<&BearerKeys>,
    headers: &axum::http::HeaderMap,
    extensions: &axum::http::Extensions,
) -> Result<()> {
    authenticate(
        keys,
        headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
        Peer::of(extensions),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_listed_keys_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "# analysts\nk-one\n\nk-two\n").unwrap();
        let keys = BearerKeys::load(&path).unwrap();
        let keys = Some(&keys);
        assert!(authenticate(keys, Some("Bearer k-one"), None).is_ok());
        assert!(authenticate(keys, Some("bearer k-two"), None).is_ok());
        assert!(matches!(
            authenticate(keys, Some("Bearer k-three"), None),
            Err(QueryError::Unauthenticated(_))
        ));
        assert!(authenticate(keys, Some("Basic k-one"), None).is_err());
        assert!(authenticate(keys, None, None).is_err());
        assert!(!format!("{keys:?}").contains("k-one"));
    }

    #[test]
    fn an_mtls_listener_needs_a_client_certificate() {
        let peer = |identity: Option<&str>| Peer {
            remote: "127.0.0.1:1".parse().unwrap(),
            client_identity: identity.map(str::to_string),
            client_certificate_required: true,
        };
        assert!(authenticate(None, None, Some(&peer(Some("grafana")))).is_ok());
        let refused = authenticate(None, None, Some(&peer(None))).unwrap_err();
        assert!(
            refused.to_string().contains("client certificate"),
            "{refused}"
        );
        // Plain listeners (no peer recorded, or one that asks nothing) need nothing.
        assert!(authenticate(None, None, None).is_ok());
        let plain = Peer {
            client_certificate_required: false,
            ..peer(None)
        };
        assert!(authenticate(None, None, Some(&plain)).is_ok());
    }
}
