//! One backend server and the address it currently resolves to.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use arc_swap::{ArcSwap, ArcSwapOption};
use std::sync::Arc;

use super::counters::PerThread;
use crate::config::BackendSpec;

/// A server requests can be sent to.
///
/// The host is resolved lazily and again after a failed connect, because compose service names may resolve
/// only once their container is up, and to a new address after a restart.
#[derive(Debug)]
pub struct Backend {
    /// What the stats, the runtime API and the log call it. Names come from gossip and can move: when two
    /// live members share one, the newest takes it (see `Publisher`), so it is swapped, not fixed.
    name: ArcSwap<String>,
    pub host: String,
    pub port: u16,
    resolved: ArcSwapOption<SocketAddr>,
    /// Skipped by every thread after a failed connect (or a request its host never acknowledged), until a
    /// probe connect succeeds or membership says it is back.
    ejected: AtomicBool,
    /// Gossip probes of this server's node that failed: a request waiting on it may be given up.
    suspicions: AtomicU64,
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
            name: ArcSwap::from_pointee(spec.name.clone()),
            host: spec.host.clone(),
            port: spec.port,
            resolved: ArcSwapOption::new(literal),
            ejected: AtomicBool::new(false),
            suspicions: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            counters: PerThread::new(threads),
        }
    }

    pub fn name(&self) -> Arc<String> {
        self.name.load_full()
    }

    /// Gives the server another name; returns the old one if it changed.
    pub fn rename(&self, name: String) -> Option<Arc<String>> {
        if **self.name.load() == name {
            return None;
        }
        Some(self.name.swap(Arc::new(name)))
    }

    /// Takes this server out of every thread's choice until it is readmitted, so requests stop paying for a
    /// failed attempt while gossip or a health check has not noticed yet. Returns whether it was in.
    pub fn eject(&self) -> bool {
        !self.ejected.swap(true, Ordering::Relaxed)
    }

    /// Puts an ejected server back; returns whether it was out.
    pub fn readmit(&self) -> bool {
        self.ejected.swap(false, Ordering::Relaxed)
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    /// Records that a gossip probe of this server's node failed (it may be cut off, or merely unlucky).
    pub fn suspect(&self) {
        self.suspicions.fetch_add(1, Ordering::Relaxed);
    }

    pub fn suspicions(&self) -> u64 {
        self.suspicions.load(Ordering::Relaxed)
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

    /// The address last resolved, if any (literal addresses always have one).
    pub fn cached_address(&self) -> Option<SocketAddr> {
        self.resolved.load().as_deref().copied()
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
