//! TLS termination with rustls (ring provider): certificates from PEM files, each holding a chain and its key,
//! chosen by SNI (an exact name first, then a wildcard, else the first certificate); TLS 1.2 and 1.3 only;
//! ALPN `http/1.1`; session tickets and a session cache so returning clients resume cheaply.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("{0}: {1}")]
    Read(PathBuf, String),
    #[error("{0}: no certificate in it")]
    NoCertificate(PathBuf),
    #[error("{0}: {1}")]
    Key(PathBuf, String),
    #[error("no certificate given (--tls-cert)")]
    None,
    #[error("TLS setup: {0}")]
    Setup(#[from] rustls::Error),
}

/// One loaded certificate and the names it serves.
struct Loaded {
    key: Arc<CertifiedKey>,
    names: Vec<String>,
    path: PathBuf,
}

/// The certificates, indexed by the names they serve.
#[derive(Debug)]
pub struct Certificates {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// What was loaded, for the start-up log: (file, names).
    pub summary: Vec<(PathBuf, Vec<String>)>,
}

impl Certificates {
    /// Loads every file given, or every file in a directory given, in order; the first certificate is the
    /// default, and where two serve one name the first wins.
    pub fn load(paths: &[PathBuf]) -> Result<Certificates, TlsError> {
        let mut loaded = Vec::new();
        for path in paths {
            if path.is_dir() {
                let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                    .map_err(|e| TlsError::Read(path.clone(), e.to_string()))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_file())
                    .collect();
                files.sort();
                for file in files {
                    loaded.push(load_file(&file)?);
                }
            } else {
                loaded.push(load_file(path)?);
            }
        }
        let default = loaded.first().ok_or(TlsError::None)?.key.clone();
        let (mut exact, mut wildcard) = (HashMap::new(), HashMap::new());
        for l in &loaded {
            for name in &l.names {
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_string()).or_insert_with(|| l.key.clone()),
                    None => exact.entry(name.clone()).or_insert_with(|| l.key.clone()),
                };
            }
        }
        let summary = loaded.into_iter().map(|l| (l.path, l.names)).collect();
        Ok(Certificates { default, exact, wildcard, summary })
    }

    fn for_name(&self, name: &str) -> Arc<CertifiedKey> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(key) = self.exact.get(&name) {
            return key.clone();
        }
        let parent = name.split_once('.').map(|(_, parent)| parent);
        parent.and_then(|p| self.wildcard.get(p)).unwrap_or(&self.default).clone()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(match hello.server_name() {
            Some(name) => self.for_name(name),
            None => self.default.clone(),
        })
    }
}

/// A PEM file holding a certificate chain (leaf first) and the leaf's private key.
fn load_file(path: &Path) -> Result<Loaded, TlsError> {
    let read = |e: rustls_pki_types::pem::Error| TlsError::Read(path.to_path_buf(), e.to_string());
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(path).map_err(read)?.collect::<Result<_, _>>().map_err(read)?;
    let leaf = chain.first().ok_or_else(|| TlsError::NoCertificate(path.to_path_buf()))?;
    let names = match webpki::EndEntityCert::try_from(leaf) {
        Ok(cert) => cert.valid_dns_names().map(|n| n.to_ascii_lowercase()).collect(),
        Err(e) => return Err(TlsError::Read(path.to_path_buf(), format!("certificate: {e:?}"))),
    };
    let key_error = |e: String| TlsError::Key(path.to_path_buf(), e);
    let key = PrivateKeyDer::from_pem_file(path).map_err(|e| key_error(format!("private key: {e}")))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| key_error(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|e| key_error(format!("the key does not match the certificate: {e}")))?;
    Ok(Loaded { key: Arc::new(certified), names, path: path.to_path_buf() })
}

/// The server side of TLS for `certificates`.
pub fn server_config(certificates: Arc<Certificates>) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(certificates);
    // http/1.0 too: rustls refuses a client whose list shares nothing with ours (no_application_protocol),
    // where OpenSSL servers go on without ALPN, and HTTP/1.0 clients are served.
    config.alpn_protocols = vec![b"http/1.1".to_vec(), b"http/1.0".to_vec()];
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_file_names_itself() {
        let err = Certificates::load(&[PathBuf::from("/nonexistent/cert.pem")]).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/cert.pem"), "{err}");
        let empty = std::env::temp_dir().join(format!("shoal-empty-{}.pem", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = Certificates::load(std::slice::from_ref(&empty)).unwrap_err().to_string();
        assert!(err.contains("no certificate"), "{err}");
        let _ = std::fs::remove_file(&empty);
        assert!(matches!(Certificates::load(&[]), Err(TlsError::None)));
    }
}
