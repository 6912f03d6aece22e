//! TLS for a listener: the rustls configuration built from `TlsConfig`'s files, and rebuilt when
//! they change so certificates rotate without a restart.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use parking_lot::{Mutex, RwLock};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;
use crate::error::{Error, Result};

/// The live TLS settings of one listener.
pub struct TlsServer {
    config: TlsConfig,
    /// Application protocols offered in ALPN: `h2` for gRPC, `http/1.1` for OTLP/HTTP.
    alpn: Vec<Vec<u8>>,
    current: RwLock<Arc<ServerConfig>>,
    /// What the files looked like when `current` was built.
    loaded: Mutex<Vec<FileStamp>>,
}

/// A file's modification time and length: a rotation changes at least one of them.
type FileStamp = Option<(SystemTime, u64)>;

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer")
            .field("cert_file", &self.config.cert_file)
            .field("client_ca_file", &self.config.client_ca_file)
            .finish_non_exhaustive()
    }
}

impl TlsServer {
    /// Loads the files; any problem fails start-up with the file named.
    pub fn load(config: &TlsConfig, alpn: &[&[u8]]) -> Result<Arc<TlsServer>> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let stamps = stamps(config);
        let built = build(config, &alpn)?;
        Ok(Arc::new(TlsServer {
            config: config.clone(),
            alpn,
            current: RwLock::new(Arc::new(built)),
            loaded: Mutex::new(stamps),
        }))
    }

    /// Whether connections must present a client certificate (mTLS).
    pub fn requires_client_certificate(&self) -> bool {
        self.config.client_ca_file.is_some()
    }

    /// An acceptor with the settings in force now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.read().clone())
    }

    /// Rebuilds the settings if a file changed since they were built. A set that fails to load
    /// (a rotation caught half-written, a key that does not match) is logged and skipped, and
    /// the files are tried again at the next check.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamps(&self.config);
        let mut loaded = self.loaded.lock();
        if *loaded == now {
            return false;
        }
        match build(&self.config, &self.alpn) {
            Ok(config) => {
                *self.current.write() = Arc::new(config);
                *loaded = now;
                tracing::info!(cert_file = %self.config.cert_file.display(), "TLS certificates reloaded");
                true
            }
            Err(error) => {
                tracing::warn!(%error, "TLS files changed but do not load; keeping the previous ones");
                false
            }
        }
    }

    /// Checks the files every `reload_interval` for as long as the server is in use.
    pub fn spawn_reloader(self: &Arc<Self>) {
        let server: Weak<TlsServer> = Arc::downgrade(self);
        let period = self
            .config
            .reload_interval
            .max(std::time::Duration::from_millis(100));
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(server) = server.upgrade() else {
                    return;
                };
                // File reads and key parsing are blocking and rare.
                let _ = tokio::task::spawn_blocking(move || server.reload_if_changed()).await;
            }
        });
    }
}

fn stamps(config: &TlsConfig) -> Vec<FileStamp> {
    let stamp = |path: &Path| {
        std::fs::metadata(path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    };
    [
        Some(&config.cert_file),
        Some(&config.key_file),
        config.client_ca_file.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| stamp(p))
    .collect()
}

fn build(config: &TlsConfig, alpn: &[Vec<u8>]) -> Result<ServerConfig> {
    let invalid =
        |path: &PathBuf, why: String| Error::config(format!("TLS file {}: {why}", path.display()));
    let certificates = read_certificates(&config.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&config.key_file)
        .map_err(|e| invalid(&config.key_file, format!("no private key read ({e})")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // TLS 1.2 is the floor; rustls implements nothing older.
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::config(format!("TLS protocol versions: {e}")))?;
    let builder = match &config.client_ca_file {
        Some(ca_file) => {
            let mut roots = RootCertStore::empty();
            for certificate in read_certificates(ca_file)? {
                roots
                    .add(certificate)
                    .map_err(|e| invalid(ca_file, format!("not a usable CA certificate ({e})")))?;
            }
            // A client without a certificate completes the handshake and is then answered
            // UNAUTHENTICATED / 401 by the request handler, which exporters understand; an
            // untrusted certificate still fails the handshake.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| invalid(ca_file, format!("client CA unusable ({e})")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut server = builder.with_single_cert(certificates, key).map_err(|e| {
        invalid(
            &config.cert_file,
            format!("certificate and key unusable ({e})"),
        )
    })?;
    server.alpn_protocols = alpn.to_vec();
    Ok(server)
}

fn read_certificates(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>> {
    let certificates: std::result::Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), io::Error::other(e)))?
        .collect();
    let certificates = certificates
        .map_err(|e| Error::config(format!("TLS file {}: bad PEM ({e})", path.display())))?;
    if certificates.is_empty() {
        return Err(Error::config(format!(
            "TLS file {}: no certificate in it",
            path.display()
        )));
    }
    Ok(certificates)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_certificate(dir: &Path, name: &str) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    }

    fn config(dir: &Path) -> TlsConfig {
        TlsConfig {
            cert_file: dir.join("cert.pem"),
            key_file: dir.join("key.pem"),
            client_ca_file: None,
            reload_interval: std::time::Duration::from_secs(1),
        }
    }

    #[test]
    fn bad_files_fail_start_up_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        let error = TlsServer::load(&config(dir.path()), &[b"h2"]).unwrap_err();
        assert!(error.to_string().contains("cert.pem"), "{error}");
        std::fs::write(dir.path().join("cert.pem"), "no PEM here").unwrap();
        std::fs::write(dir.path().join("key.pem"), "no PEM here").unwrap();
        let error = TlsServer::load(&config(dir.path()), &[b"h2"]).unwrap_err();
        assert!(error.to_string().contains("no certificate"), "{error}");
    }

    #[test]
    fn changed_files_reload_and_broken_ones_keep_the_previous() {
        let dir = tempfile::tempdir().unwrap();
        write_certificate(dir.path(), "first.example");
        let server = TlsServer::load(&config(dir.path()), &[b"h2"]).unwrap();
        let first = server.current.read().clone();
        assert!(!server.reload_if_changed(), "nothing changed");

        std::fs::write(dir.path().join("cert.pem"), "-----BEGIN CERTIFICATE-----\n").unwrap();
        assert!(!server.reload_if_changed());
        assert!(
            Arc::ptr_eq(&first, &server.current.read()),
            "kept the previous"
        );

        write_certificate(dir.path(), "second.example.org");
        assert!(server.reload_if_changed());
        assert!(!Arc::ptr_eq(&first, &server.current.read()));
        assert_eq!(server.current.read().alpn_protocols, vec![b"h2".to_vec()]);
    }
}
