//! One backend server and the address it currently resolves to.

use std::io;
use std::net::{IpAddr, SocketAddr};

use arc_swap::ArcSwapOption;
use std::sync::Arc;

use crate::config::BackendSpec;

/// A server requests can be sent to.
///
/// The host is resolved lazily and again after a failed connect, because compose service names may resolve
/// only once their container is up, and to a new address after a restart.
#[derive(Debug)]
pub struct Backend {
    pub name: String,
    pub host: String,
    pub port: u16,
    resolved: ArcSwapOption<SocketAddr>,
}

impl Backend {
    pub fn new(spec: &BackendSpec) -> Backend {
        let literal = spec.host.parse::<IpAddr>().ok().map(|ip| Arc::new(SocketAddr::new(ip, spec.port)));
        Backend {
            name: spec.name.clone(),
            host: spec.host.clone(),
            port: spec.port,
            resolved: ArcSwapOption::new(literal),
        }
    }

    fn is_literal(&self) -> bool {
        self.host.parse::<IpAddr>().is_ok()
    }

    /// The address to connect to; `fresh` forces a new lookup (after a connect failure).
    pub async fn address(&self, fresh: bool) -> io::Result<SocketAddr> {
        if let Some(addr) = self.resolved.load().as_deref() {
            if !fresh || self.is_literal() {
                return Ok(*addr);
            }
        }
        let addr = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{} has no address", self.host)))?;
        self.resolved.store(Some(Arc::new(addr)));
        Ok(addr)
    }
}
