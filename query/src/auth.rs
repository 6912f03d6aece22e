//! Optional bearer-key authentication of queries (`query.auth_keys_file`), shared by Flight SQL
//! and `POST /v1/query`. The keys are the collector's [`BearerKeys`], the same as for ingest.

pub use idtrail_collector::auth::BearerKeys;

use crate::error::{QueryError, Result};

/// Refuses a request whose `Authorization` header carries none of `keys`.
pub fn authenticate(keys: &BearerKeys, authorization: Option<&str>) -> Result<()> {
    keys.check(authorization)
        .map(|_| ())
        .ok_or(QueryError::Unauthenticated)
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
        assert!(authenticate(&keys, Some("Bearer k-one")).is_ok());
        assert!(authenticate(&keys, Some("bearer k-two")).is_ok());
        assert!(matches!(
            authenticate(&keys, Some("Bearer k-three")),
            Err(QueryError::Unauthenticated)
        ));
        assert!(authenticate(&keys, Some("Basic k-one")).is_err());
        assert!(authenticate(&keys, None).is_err());
        assert!(!format!("{keys:?}").contains("k-one"));
    }
}
