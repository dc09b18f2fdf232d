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

/// A lookup still running after this long is presumed stuck (a hung NSS module; glibc's own worst case,
/// resolv.conf's longest timeout times its most attempts, is 150 s a server): another may start, and whichever
/// answer is newest wins.
const STUCK: Duration = Duration::from_secs(180);

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
    /// The lookup under way, by number, and when it began.
    running: Option<(u64, Instant)>,
    /// Lookups started so far: the next one's number.
    started: u64,
    /// The number of the lookup whose answer is in effect, if any: an older one's answer that comes later is
    /// ignored.
    applied: Option<u64>,
    /// Lookups ended so far, so a waiter can tell that the one it waited for is over.
    ended: u64,
    /// Why the last lookup found nothing.
    error: Option<Arc<str>>,
}

impl Lookup {
    fn under_way(&self) -> bool {
        self.running.is_some_and(|(_, began)| began.elapsed() < STUCK)
    }
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
    /// lookup is already under way. The address in use stays until the answer comes.
    pub fn refresh(&self) {
        if !self.is_literal() {
            let mut lookup = self.0.lookup.lock();
            if !lookup.under_way() {
                self.start(&mut lookup);
            }
        }
    }

    /// The address to connect to: the one in use, or, before the name has one, the answer of a lookup,
    /// waited for until `deadline` at most.
    pub async fn resolve(&self, deadline: Instant) -> Result<SocketAddr, ResolveError> {
        let began = Instant::now();
        let mut waited_for = None;
        loop {
            let ended = self.0.done.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            {
                let mut lookup = self.0.lookup.lock();
                if let Some(addr) = self.cached() {
                    return Ok(addr);
                }
                if let Some(seen) = waited_for {
                    if lookup.ended > seen && !lookup.under_way() {
                        let why = lookup.error.clone().unwrap_or_else(|| Arc::from(self.0.host.as_str()));
                        return Err(ResolveError::Failed(why));
                    }
                }
                waited_for.get_or_insert(lookup.ended);
                if !lookup.under_way() {
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
        let number = lookup.started;
        lookup.started += 1;
        lookup.running = Some((number, Instant::now()));
        let inner = self.0.clone();
        let spawned = std::thread::Builder::new().name("shoal-resolve".into()).spawn(move || {
            let found = (inner.host.as_str(), inner.port).to_socket_addrs().map(|a| a.collect::<Vec<_>>());
            inner.ended(number, found.map_err(|e| e.to_string()));
        });
        if let Err(e) = spawned {
            lookup.running = None;
            lookup.ended += 1;
            lookup.error = Some(Arc::from(format!("{}: no thread for the lookup: {e}", self.0.host)));
            self.0.done.notify_waiters();
        }
    }
}

impl Inner {
    /// Records lookup `number`'s answer, unless a newer one's is in effect: the address in use stays if the
    /// name still has it (pooled connections and hashing keep their server), else the first one.
    fn ended(&self, number: u64, found: Result<Vec<SocketAddr>, String>) {
        let mut lookup = self.lookup.lock();
        if lookup.running.is_some_and(|(running, _)| running == number) {
            lookup.running = None;
        }
        lookup.ended += 1;
        if lookup.applied.is_none_or(|applied| applied < number) {
            lookup.applied = Some(number);
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
        assert_eq!(address.resolve(now).await, Ok("127.0.0.1:8080".parse().unwrap()));
    }

    #[tokio::test]
    async fn a_name_is_looked_up_and_kept() {
        let address = Address::new("localhost", 8080);
        assert_eq!(address.cached(), None);
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = address.resolve(deadline).await.unwrap();
        assert!(addr.ip().is_loopback() && addr.port() == 8080, "{addr}");
        assert_eq!(address.cached(), Some(addr));
        address.refresh();
        assert_eq!(address.resolve(deadline).await, Ok(addr), "the address in use stays");
    }
}
