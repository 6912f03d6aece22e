//! Keyed fingerprints of secrets: `k<key id>:` + hex(HMAC-SHA256(key, secret)[..16]).
//!
//! A plain hash is not enough: API keys and passwords are often low-entropy, and anyone holding
//! the Parquet files could brute-force them offline. The HMAC key lives outside the data
//! directory, so the files alone reveal nothing. The key id names the key so that fingerprints
//! made under a rotated key are never confused with current ones.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Length of the secret key in bytes.
const KEY_LEN: usize = 32;

/// Computes fingerprints with one HMAC key.
#[derive(Clone)]
pub struct Fingerprinter {
    mac: Hmac<Sha256>,
    prefix: String,
}

impl std::fmt::Debug for Fingerprinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Fingerprinter")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Fingerprinter {
    pub fn from_key(key: &[u8; KEY_LEN]) -> Fingerprinter {
        // The key id is derived from the key, so a rotated key can never reuse an id by mistake.
        let id_digest = Sha256::new()
            .chain_update(b"idtrail fingerprint key id\0")
            .chain_update(key)
            .finalize();
        let prefix = format!("k{}:", hex::encode(&id_digest[..4]));
        // HMAC accepts keys of any length; 32 bytes can never fail.
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
        Fingerprinter { mac, prefix }
    }

    /// Loads the key file, creating it (32 random bytes, hex, mode 0600) when absent.
    pub fn load_or_create(path: &Path) -> Result<Fingerprinter> {
        let key = match fs::read_to_string(path) {
            Ok(text) => {
                check_permissions(path)?;
                parse_key(path, &text)?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_key(path)?,
            Err(e) => return Err(Error::io(format!("reading key file {}", path.display()), e)),
        };
        Ok(Fingerprinter::from_key(&key))
    }

    /// The `k<key id>:` prefix of every fingerprint this key makes.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn fingerprint(&self, secret: &[u8]) -> String {
        let mut mac = self.mac.clone();
        mac.update(secret);
        let digest = mac.finalize().into_bytes();
        let mut out = String::with_capacity(self.prefix.len() + 32);
        out.push_str(&self.prefix);
        out.push_str(&hex::encode(&digest[..16]));
        out
    }
}

fn parse_key(path: &Path, text: &str) -> Result<[u8; KEY_LEN]> {
    let bytes = hex::decode(text.trim()).map_err(|_| {
        Error::config(format!(
            "key file {} must hold {KEY_LEN} bytes as hex",
            path.display()
        ))
    })?;
    bytes.try_into().map_err(|_| {
        Error::config(format!(
            "key file {} must hold {KEY_LEN} bytes as hex",
            path.display()
        ))
    })
}

fn check_permissions(path: &Path) -> Result<()> {
    let meta = fs::metadata(path)
        .map_err(|e| Error::io(format!("reading key file {}", path.display()), e))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(Error::config(format!(
            "key file {} is readable by group or others; run chmod 600 on it",
            path.display()
        )));
    }
    Ok(())
}

fn create_key(path: &Path) -> Result<[u8; KEY_LEN]> {
    let mut key = [0u8; KEY_LEN];
    getrandom::fill(&mut key)
        .map_err(|e| Error::config(format!("no system randomness for the key: {e}")))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    let ctx = || format!("creating key file {}", path.display());
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(ctx(), e))?;
    file.write_all(hex::encode(key).as_bytes())
        .and_then(|_| file.write_all(b"\n"))
        .and_then(|_| file.sync_all())
        .map_err(|e| Error::io(ctx(), e))?;
    tracing::info!(path = %path.display(), "created fingerprint key file");
    Ok(key)
}

/// Default key location: beside, never inside, the data directory.
pub fn default_key_path(data_dir: &Path) -> PathBuf {
    let name = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "idtrail-data".into());
    data_dir
        .parent()
        .unwrap_or(Path::new("."))
        .join(format!("{name}.fingerprint.key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_keyed_prefixed_and_stable() {
        let a = Fingerprinter::from_key(&[1; 32]);
        let b = Fingerprinter::from_key(&[2; 32]);
        let fa = a.fingerprint(b"hunter2");
        assert!(fa.starts_with('k') && fa.contains(':'));
        assert_eq!(fa.len(), a.prefix().len() + 32);
        assert_eq!(fa, a.fingerprint(b"hunter2"));
        assert_ne!(
            fa,
            b.fingerprint(b"hunter2"),
            "another key, another fingerprint"
        );
        assert_ne!(a.prefix(), b.prefix(), "key ids differ");
    }

    #[test]
    fn key_file_is_created_0600_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/fp.key");
        let first = Fingerprinter::load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = Fingerprinter::load_or_create(&path).unwrap();
        assert_eq!(first.fingerprint(b"x"), again.fingerprint(b"x"));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Fingerprinter::load_or_create(&path).is_err());
    }

    #[test]
    fn default_key_path_is_outside_data_dir() {
        let p = default_key_path(Path::new("./idtrail-data"));
        assert_eq!(p, Path::new("./idtrail-data.fingerprint.key"));
    }
}
