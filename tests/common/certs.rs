//! Certificates for the TLS tests: a CA of their own and leaves for chosen names, written as PEM files
//! (chain and key in one file, as `--tls-cert` reads them). Removed on drop.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair};

pub struct Pki {
    /// Where the leaves are written; `--tls-cert` may name it whole.
    pub dir: PathBuf,
    /// The CA certificate alone, for clients to trust (`curl --cacert`).
    pub ca_file: PathBuf,
    ca: Certificate,
    ca_key: KeyPair,
}

impl Pki {
    pub fn new() -> Pki {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let root = std::env::temp_dir().join(format!("shoal-pki-{}-{n}", std::process::id()));
        let dir = root.join("certs");
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "shoal test CA");
        let ca = params.self_signed(&ca_key).unwrap();
        let ca_file = root.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        Pki { dir, ca_file, ca, ca_key }
    }

    /// A certificate for `names` (the first is also its common name) signed by the CA, written with its key
    /// as `file` in the directory; returns its path.
    pub fn leaf(&self, file: &str, names: &[&str]) -> PathBuf {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let path = self.dir.join(file);
        std::fs::write(&path, format!("{}{}{}", cert.pem(), self.ca.pem(), key.serialize_pem())).unwrap();
        path
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        if let Some(root) = self.dir.parent() {
            let _ = std::fs::remove_dir_all(root);
        }
    }
}
