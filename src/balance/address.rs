//! A server's address: its host name looked up away from the data plane, one lookup at a time per server, and
//! never waited on past the deadline of whoever needs the answer.
//!
//! The system resolver (`getaddrinfo`) blocks and cannot be cancelled: a DNS server that drops queries holds it
//! for resolv.conf's timeout times its attempts (up to 150 s). So a lookup runs on a thread of its own, the
//! requests that need its answer wait for it within their connect timeout, and a burst of them shares the one
//! lookup instead of each parking a blocked thread on the resolver.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use thiserror::Error;
use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ResolveError {
    #[error("cannot resolve {0}")]
    Failed(Arc<str>),
    #[error("no answer from the resolver within {0:?}")]
    TimedOut(Duration),
}

/// Where a server is, as last looked up (a literal IP address is its own answer, never looked up).
#[derive(Debug)]
pub struct Address(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    host: String,
    port: u16,
    current: ArcSwapOption<SocketAddr>,
    lookup: Mutex<Lookup>,
    /// Woken when a lookup ends.
    done: Notify,
}

#[derive(Debug, Default)]
struct Lookup {
    running: bool,
    /// Lookups ended so far, so a waiter can tell that the one it waited for is over.
    ended: u64,
    /// Why the last lookup found nothing.
    error: Option<Arc<str>>,
}

impl Address {
    pub fn new(host: &str, port: u16) -> Address {
        let literal = host.parse::<IpAddr>().ok().map(|ip| Arc::new(SocketAddr::new(ip, port)));
        Address(Arc::new(Inner {
            host: host.to_owned(),
            port,
            current: ArcSwapOption::new(literal),
            lookup: Mutex::new(Lookup::default()),
            done: Notify::new(),
        }))
    }

    fn is_literal(&self) -> bool {
        self.0.host.parse::<IpAddr>().is_ok()
    }

    /// The address last looked up, if any.
    pub fn cached(&self) -> Option<SocketAddr> {
        self.0.current.load().as_deref().copied()
    }

    /// Looks the name up again in the background (after a failed connect: the name may have moved), unless a
    /// lookup is already under way.
    pub fn refresh(&self) {
        if !self.is_literal() {
            let mut lookup = self.0.lookup.lock();
            if !lookup.running {
                self.start(&mut lookup);
            }
        }
    }

    /// The address to connect to, waiting until `deadline` at most for a lookup when there is none yet, or
    /// when `fresh` (this caller's last connect here failed) and a lookup begun since may bring a new one.
    /// A lookup that fails leaves the last good address in place.
    pub async fn resolve(&self, deadline: Instant, fresh: bool) -> Result<SocketAddr, ResolveError> {
        let began = Instant::now();
        let mut waited_for = None;
        loop {
            let ended = self.0.done.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            {
                let mut lookup = self.0.lookup.lock();
                let cached = self.cached();
                match (cached, waited_for) {
                    (Some(addr), _) if !(fresh && lookup.running) => return Ok(addr),
                    (Some(addr), Some(seen)) if lookup.ended > seen => return Ok(addr),
                    (None, Some(seen)) if lookup.ended > seen && !lookup.running => {
                        let why = lookup.error.clone().unwrap_or_else(|| Arc::from(self.0.host.as_str()));
                        return Err(ResolveError::Failed(why));
                    }
                    _ => {}
                }
                waited_for.get_or_insert(lookup.ended);
                if !lookup.running {
                    self.start(&mut lookup);
                }
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                return Err(ResolveError::TimedOut(deadline.saturating_duration_since(began)));
            }
        }
    }

    /// Starts a lookup on a thread of its own; called with the lookup state locked.
    fn start(&self, lookup: &mut Lookup) {
        lookup.running = true;
        let inner = self.0.clone();
        let spawned = std::thread::Builder::new().name("shoal-resolve".into()).spawn(move || {
            let found = (inner.host.as_str(), inner.port).to_socket_addrs().map(|a| a.collect::<Vec<_>>());
            inner.ended(found.map_err(|e| e.to_string()));
        });
        if let Err(e) = spawned {
            lookup.running = false;
            lookup.ended += 1;
            lookup.error = Some(Arc::from(format!("{}: no thread for the lookup: {e}", self.0.host)));
            self.0.done.notify_waiters();
        }
    }
}

impl Inner {
    /// Records a lookup's answer: the address in use stays if the name still has it (pooled connections and
    /// hashing keep their server), else the first one.
    fn ended(&self, found: Result<Vec<SocketAddr>, String>) {
        let mut lookup = self.lookup.lock();
        lookup.running = false;
        lookup.ended += 1;
        match found {
            Ok(addrs) if !addrs.is_empty() => {
                let current = self.current.load().as_deref().copied();
                if current.is_none_or(|c| !addrs.contains(&c)) {
                    self.current.store(Some(Arc::new(addrs[0])));
                }
                lookup.error = None;
            }
            Ok(_) => lookup.error = Some(Arc::from(format!("{}: the name has no address", self.host))),
            Err(e) => lookup.error = Some(Arc::from(format!("{}: {e}", self.host))),
        }
        drop(lookup);
        self.done.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_literal_address_is_its_own_answer() {
        let address = Address::new("127.0.0.1", 8080);
        let now = Instant::now();
        assert_eq!(address.resolve(now, true).await, Ok("127.0.0.1:8080".parse().unwrap()));
    }

    #[tokio::test]
    async fn a_name_is_looked_up_and_kept() {
        let address = Address::new("localhost", 8080);
        assert_eq!(address.cached(), None);
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = address.resolve(deadline, false).await.unwrap();
        assert!(addr.ip().is_loopback() && addr.port() == 8080, "{addr}");
        assert_eq!(address.cached(), Some(addr));
        address.refresh();
        assert_eq!(address.resolve(deadline, true).await, Ok(addr), "the address in use stays");
    }
}
