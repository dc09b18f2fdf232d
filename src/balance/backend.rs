//! One backend server and the address it currently resolves to.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use std::sync::Arc;

use super::counters::PerThread;
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
    /// Until when (Unix ms) this server is skipped after a failed connect; 0 when it is not.
    ejected_until: AtomicU64,
    /// Requests currently using this server, on any thread.
    in_flight: AtomicUsize,
    /// What happened to requests sent here, per data-plane thread.
    pub counters: PerThread,
}

impl Backend {
    /// A server counted by `threads` data-plane threads.
    pub fn new(spec: &BackendSpec, threads: usize) -> Backend {
        let literal = spec.host.parse::<IpAddr>().ok().map(|ip| Arc::new(SocketAddr::new(ip, spec.port)));
        Backend {
            name: spec.name.clone(),
            host: spec.host.clone(),
            port: spec.port,
            resolved: ArcSwapOption::new(literal),
            ejected_until: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            counters: PerThread::new(threads),
        }
    }

    /// Skips this server on every thread for `period` after a refused or timed-out connect, so requests stop
    /// paying for a retry while gossip or a health check has not yet noticed the failure.
    pub fn eject(&self, period: Duration) {
        self.ejected_until.store(unix_ms() + period.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && unix_ms() < until
    }

    /// Counts a request against this server until the guard drops; the guard keeps the server.
    pub fn enter(self: Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
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

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A request in flight to a server (see [`Backend::enter`]).
pub struct InFlight(Arc<Backend>);

impl InFlight {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
