//! Optional bearer-key authentication of queries (`query.auth_keys_file`), shared by Flight SQL
//! and `POST /v1/query`.

use std::path::Path;

use crate::error::{QueryError, Result};

/// The accepted keys. Never printed: `Debug` shows only how many there are.
pub struct BearerKeys {
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for BearerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BearerKeys({} keys)", self.keys.len())
    }
}

impl BearerKeys {
    /// One key per line; blank lines and `#` comments are skipped.
    pub fn load(path: &Path) -> Result<BearerKeys> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| QueryError::storage(format!("reading {}", path.display()), e))?;
        let keys: Vec<Vec<u8>> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| l.as_bytes().to_vec())
            .collect();
        if keys.is_empty() {
            return Err(QueryError::storage(
                format!("reading {}", path.display()),
                "no keys in the file: every query would be refused",
            ));
        }
        Ok(BearerKeys { keys })
    }

    /// Checks an `Authorization` header value (`Bearer <key>`, scheme case-insensitive).
    pub fn check(&self, authorization: Option<&str>) -> Result<()> {
        let presented = authorization
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, key)| key.trim().as_bytes());
        let Some(presented) = presented else {
            return Err(QueryError::Unauthenticated);
        };
        // Every key is compared in full, so timing tells nothing about which prefix matched.
        let mut matched = false;
        for key in &self.keys {
            matched |= constant_time_eq(key, presented);
        }
        if matched {
            Ok(())
        } else {
            Err(QueryError::Unauthenticated)
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
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
        assert!(keys.check(Some("Bearer k-one")).is_ok());
        assert!(keys.check(Some("bearer k-two")).is_ok());
        assert!(keys.check(Some("Bearer k-three")).is_err());
        assert!(keys.check(Some("Basic k-one")).is_err());
        assert!(keys.check(None).is_err());
        assert!(!format!("{keys:?}").contains("k-one"));
    }
}
