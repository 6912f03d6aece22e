//! Bearer keys, for ingest (`receivers.auth_keys_file`) and for queries
//! (`query.auth_keys_file`): one implementation, compared in constant time, never logged.
//!
//! A key file holds one key per line, optionally named: `<key id> <key>`. Blank lines and `#`
//! comments are skipped; a key without a name is called `line<N>`. The id, never the key, is
//! what gets recorded (in `ingest_principal` as `key:<id>`) and logged.

use std::path::Path;

use crate::error::{Error, Result};

struct Key {
    id: String,
    secret: Vec<u8>,
}

/// The accepted keys. `Debug` shows only their ids.
pub struct BearerKeys {
    keys: Vec<Key>,
}

impl std::fmt::Debug for BearerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        write!(f, "BearerKeys({ids:?})")
    }
}

impl BearerKeys {
    pub fn load(path: &Path) -> Result<BearerKeys> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading the key file {}", path.display()), e))?;
        let invalid = |why: String| Error::config(format!("key file {}: {why}", path.display()));
        let mut keys: Vec<Key> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (id, secret) = match (parts.next(), parts.next(), parts.next()) {
                (Some(secret), None, _) => (format!("line{}", n + 1), secret),
                (Some(id), Some(secret), None) => (id.to_string(), secret),
                _ => {
                    return Err(invalid(format!(
                        "line {}: expected `<key id> <key>` or `<key>`",
                        n + 1
                    )));
                }
            };
            if keys.iter().any(|k| k.id == id) {
                return Err(invalid(format!("line {}: key id {id} given twice", n + 1)));
            }
            keys.push(Key {
                id,
                secret: secret.as_bytes().to_vec(),
            });
        }
        if keys.is_empty() {
            return Err(invalid(
                "no keys in the file: every request would be refused".into(),
            ));
        }
        Ok(BearerKeys { keys })
    }

    /// The id of the key an `Authorization` header value (`Bearer <key>`, scheme
    /// case-insensitive) carries, or `None` when it carries none of them.
    pub fn check(&self, authorization: Option<&str>) -> Option<&str> {
        let presented = authorization
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, key)| key.trim().as_bytes())?;
        // Every key is compared in full, so timing tells nothing about which key or prefix
        // matched.
        let mut matched = None;
        for key in &self.keys {
            if bool::from(subtle::ConstantTimeEq::ct_eq(
                key.secret.as_slice(),
                presented,
            )) {
                matched = Some(key.id.as_str());
            }
        }
        matched
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> Result<BearerKeys> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, text).unwrap();
        BearerKeys::load(&path)
    }

    #[test]
    fn named_and_unnamed_keys_answer_their_id() {
        let keys = keys("# exporters\nteam-a s3cret-a\n\ns3cret-b\n").unwrap();
        assert_eq!(keys.check(Some("Bearer s3cret-a")), Some("team-a"));
        assert_eq!(keys.check(Some("bearer  s3cret-b ")), Some("line4"));
        assert_eq!(keys.check(Some("Bearer s3cret")), None);
        assert_eq!(keys.check(Some("Basic s3cret-a")), None);
        assert_eq!(keys.check(Some("s3cret-a")), None);
        assert_eq!(keys.check(None), None);
        let shown = format!("{keys:?}");
        assert!(
            shown.contains("team-a") && !shown.contains("s3cret"),
            "{shown}"
        );
    }

    #[test]
    fn bad_key_files_are_refused() {
        assert!(keys("").is_err());
        assert!(keys("a b c\n").is_err());
        let err = keys("x k1\nx k2\n").unwrap_err().to_string();
        assert!(err.contains("given twice") && !err.contains("k1"), "{err}");
    }
}
