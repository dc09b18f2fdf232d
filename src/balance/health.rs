//! The proxy's own view of its servers' health, on a thread of its own away from the data plane and the gossip
//! loop:
//!
//! - Ejected servers (a failed connect, a request their host never acknowledged) are probed with a TCP
//!   connect every 500 ms once their time out is over (see `ejection`), and readmitted when one succeeds,
//!   unless membership said so first.
//! - Static servers (`--backend`) get HTTP checks with `--backend-check-path`, HAProxy's `check` with `inter`,
//!   `rise` and `fall` (gossip members are checked by their own agents).
//! - While a server ramps up under `--slowstart`, its weight is republished as the clock moves.
//! - Response-time averages fade, so a server shunned for being slow is tried again once it may be fast.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{Backend, Publisher, ResolveError, SharedBackends};
use crate::agent::health::{self, CheckConfig};

/// How often ejected servers are probed, and ramping weights republished.
const EVERY: Duration = Duration::from_millis(500);

/// Starts the thread. Each probe may take `connect_limit`.
pub fn start(
    backends: SharedBackends,
    publisher: Arc<Mutex<Publisher>>,
    checks: Option<CheckConfig>,
    connect_limit: Duration,
) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("shoal-health".into()).spawn(move || {
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async move {
            if let Some(config) = checks {
                tokio::task::spawn_local(check_statics(publisher.clone(), config));
            }
            // Servers being probed: a probe may take `connect_limit`, and must hold back neither the next
            // ramp and fading step nor the probes of the others.
            let probing: Rc<RefCell<HashSet<usize>>> = Rc::default();
            loop {
                tokio::time::sleep(EVERY).await;
                publisher.lock().tick();
                let set = backends.load_full();
                super::fade_latencies(&set.servers);
                let now = Instant::now().into_std();
                for backend in set.servers.iter().filter(|b| b.probe_due(now)) {
                    let key = Arc::as_ptr(backend) as usize;
                    if !probing.borrow_mut().insert(key) {
                        continue;
                    }
                    let (backend, probing) = (backend.clone(), probing.clone());
                    tokio::task::spawn_local(async move {
                        probe(backend, connect_limit).await;
                        probing.borrow_mut().remove(&key);
                    });
                }
            }
        });
    })?;
    Ok(())
}

/// Connects to an ejected server within `limit`; its name is looked up again meanwhile (it may have come
/// back elsewhere), for the next probe: a slow resolver must not keep out a server whose address works.
async fn probe(backend: Arc<Backend>, limit: Duration) {
    let deadline = Instant::now() + limit;
    backend.address.refresh();
    let Ok(addr) = backend.address.resolve(deadline).await else { return };
    if let Ok(Ok(_)) = tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
        if backend.readmit(Instant::now().into_std()) {
            tracing::info!("server {} ({addr}) accepts connections again: back in rotation", backend.name());
        }
    }
}

/// Checks every static server each interval; a verdict that changes is published.
async fn check_statics(publisher: Arc<Mutex<Publisher>>, config: CheckConfig) {
    // By name and address: a reload that only changes a server's limits replaces its `Backend`, not its health.
    let key = |b: &Backend| format!("{}={}:{}", b.name(), b.host, b.port);
    let mut verdicts: HashMap<String, CheckHealth> = HashMap::new();
    let mut next = Instant::now();
    loop {
        tokio::time::sleep_until(next).await;
        next += config.interval;
        let statics = publisher.lock().statics();
        // A reload may have replaced them: forget the verdicts of servers that are gone.
        verdicts.retain(|k, _| statics.iter().any(|b| key(b) == *k));
        let mut checks = JoinSet::new();
        for backend in statics {
            let config = config.clone();
            checks.spawn_local(async move {
                // The lookup gets at most an interval too: one name the resolver never answers for must not
                // hold back the verdicts of the others.
                let report = match backend.address.resolve(Instant::now() + config.interval).await {
                    Ok(addr) => health::check_report(addr, &config).await,
                    Err(e) => health::CheckReport {
                        status: if matches!(e, ResolveError::TimedOut(_)) { "L4TOUT" } else { "L4CON" },
                        code: None,
                        duration: Duration::ZERO,
                        error: Some(e.to_string()),
                    },
                };
                (backend, report)
            });
        }
        while let Some(Ok((backend, report))) = checks.join_next().await {
            // A server checked afresh (new, or at a new address under a name the set holds DOWN) starts where
            // the set has it, so that its first verdict that differs is published.
            let health = verdicts.entry(key(&backend)).or_insert_with(|| {
                let down = publisher.lock().static_is_down(&backend.name());
                if down {
                    CheckHealth::down(config.rise, config.fall)
                } else {
                    CheckHealth::new(config.rise, config.fall)
                }
            });
            let (changed, counted) = health.record(report.passed());
            if changed.is_some() {
                match &report.error {
                    None => tracing::info!("server {} is UP: its check passes", backend.name()),
                    Some(why) => tracing::warn!("server {} is DOWN: check failed: {why}", backend.name()),
                }
            }
            backend.checked(report, *health, counted);
            if let Some(healthy) = changed {
                publisher.lock().set_static_health(&backend.name(), healthy);
            }
        }
    }
}

/// HAProxy's `check->health` for a server the proxy checks: 0 .. rise-1 while DOWN, rise .. rise+fall-1 while
/// UP. A server starts UP at `rise` ("up, but will fall down at first failure", as HAProxy's do), a pass
/// takes it up one step and, once at `rise`, to the top; a failure takes it down one, and below `rise` to 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckHealth {
    pub health: u32,
    pub rise: u32,
    pub fall: u32,
}

impl CheckHealth {
    pub fn new(rise: u32, fall: u32) -> CheckHealth {
        let (rise, fall) = (rise.max(1), fall.max(1));
        CheckHealth { health: rise, rise, fall }
    }

    /// At the bottom: DOWN, `rise` passes from UP.
    pub fn down(rise: u32, fall: u32) -> CheckHealth {
        CheckHealth { health: 0, ..CheckHealth::new(rise, fall) }
    }

    pub fn up(&self) -> bool {
        self.health >= self.rise
    }

    /// Records one check. Returns the new state when it changes, and whether a failure counts in `chkfail`
    /// (HAProxy counts those of a server not already at the bottom).
    pub fn record(&mut self, passed: bool) -> (Option<bool>, bool) {
        let was_up = self.up();
        let counted = !passed && self.health > 0;
        if passed && self.health < self.rise + self.fall - 1 {
            self.health += 1;
            if self.health >= self.rise {
                self.health = self.rise + self.fall - 1;
            }
        } else if counted {
            self.health -= 1;
            if self.health < self.rise {
                self.health = 0;
            }
        }
        ((self.up() != was_up).then_some(self.up()), counted)
    }
}

#[cfg(test)]
mod tests {
    use super::CheckHealth;

    /// The steps of HAProxy's `check->health` with rise 2 and fall 3.
    #[test]
    fn health_moves_as_haproxys_does() {
        let mut h = CheckHealth::new(2, 3);
        assert_eq!((h.health, h.up()), (2, true), "starts UP, one failure from DOWN");
        assert_eq!(h.record(false), (Some(false), true));
        assert_eq!(h.health, 0);
        assert_eq!(h.record(false), (None, false), "a failure at the bottom is not counted");
        assert_eq!(h.record(true), (None, false));
        assert_eq!(h.health, 1);
        assert_eq!(h.record(true), (Some(true), false));
        assert_eq!(h.health, 4, "UP at the top");
        assert_eq!(h.record(false), (None, true));
        assert_eq!(h.record(false), (None, true));
        assert_eq!(h.health, 2);
        assert_eq!(h.record(true), (None, false));
        assert_eq!(h.health, 4, "a pass while UP goes back to the top");
        for _ in 0..2 {
            h.record(false);
        }
        assert_eq!(h.record(false), (Some(false), true), "the third failure in a row");
        assert_eq!(h.health, 0);
    }
}
