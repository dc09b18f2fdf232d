//! What the stats need from the past and the counters do not keep: rates per second and their maxima, when
//! each server last changed state, how long it has been down and how often it went down, when it last took a
//! request. A sampler thread reads the counters once a second, away from the data plane; the CSV, the page and
//! the runtime API read its latest figures.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::proxy::Shared;

const EVERY: Duration = Duration::from_secs(1);
/// Servers no longer listed are forgotten this long after (a departed member's row is listed, DOWN, for its
/// 10 minutes first; one back within this time finds its history, though its counts start anew).
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// How long after a failed probe of its node a server is shown as going down.
const SUSPECTED_FOR: Duration = Duration::from_secs(5);

/// A per-second rate of a growing total, and its maximum.
#[derive(Debug, Default, Clone, Copy)]
pub struct Rate {
    last_total: Option<u64>,
    pub now: u64,
    pub max: u64,
}

impl Rate {
    fn sample(&mut self, total: u64, elapsed: Duration) {
        if let Some(last) = self.last_total {
            let per_s = total.saturating_sub(last) as f64 / elapsed.as_secs_f64().max(0.001);
            self.now = per_s.round() as u64;
            self.max = self.max.max(self.now);
        }
        self.last_total = Some(total);
    }
}

/// How a server's (or the backend's) state went over time.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    status: &'static str,
    changed: Instant,
    down_since: Option<Instant>,
    down_before: Duration,
    /// Times it went from UP (or DRAIN) to DOWN: HAProxy's `chkdown`.
    pub went_down: u64,
    /// Requests per second (HAProxy's `rate`, sessions per second for a server).
    pub rate: Rate,
    last_sessions: u64,
    last_session: Option<Instant>,
    last_seen: Instant,
    /// Failed gossip probes of its node, and when the count last grew.
    suspicions: u64,
    suspected: Option<Instant>,
}

impl Seen {
    fn new(status: &'static str, at: Instant) -> Seen {
        Seen {
            status,
            changed: at,
            down_since: (status == "DOWN").then_some(at),
            down_before: Duration::ZERO,
            went_down: 0,
            rate: Rate::default(),
            last_sessions: 0,
            last_session: None,
            last_seen: at,
            suspicions: 0,
            suspected: None,
        }
    }

    fn observe(&mut self, status: &'static str, sessions: u64, elapsed: Duration, at: Instant) {
        if status != self.status {
            if status == "DOWN" {
                self.down_since = Some(at);
                if matches!(self.status, "UP" | "DRAIN") {
                    self.went_down += 1;
                }
            } else if let Some(since) = self.down_since.take() {
                self.down_before += at - since;
            }
            self.status = status;
            self.changed = at;
        }
        if sessions > self.last_sessions {
            self.last_session = Some(at);
        }
        self.last_sessions = sessions;
        self.rate.sample(sessions, elapsed);
        self.last_seen = at;
    }

    fn observe_suspicions(&mut self, count: u64, at: Instant) {
        if count > self.suspicions {
            self.suspected = Some(at);
        }
        self.suspicions = count;
    }

    /// Whether a gossip probe of its node failed lately: an UP server that may be going down.
    pub fn suspected_lately(&self) -> bool {
        self.suspected.is_some_and(|t| t.elapsed() < SUSPECTED_FOR)
    }

    /// Seconds since the state last changed (`lastchg`).
    pub fn since_change_s(&self) -> u64 {
        self.changed.elapsed().as_secs()
    }

    /// Seconds spent DOWN in all (`downtime`), the current stretch included.
    pub fn downtime_s(&self) -> u64 {
        (self.down_before + self.down_since.map_or(Duration::ZERO, |s| s.elapsed())).as_secs()
    }

    /// Seconds since the last request (`lastsess`); `None` before any.
    pub fn since_request_s(&self) -> Option<u64> {
        self.last_session.map(|t| t.elapsed().as_secs())
    }
}

#[derive(Default)]
struct State {
    servers: HashMap<String, Seen>,
    backend: Option<Seen>,
    /// Connections and requests per second of the plain and TLS frontends.
    frontends: [(Rate, Rate); 2],
    at: Option<Instant>,
}

/// The sampler's latest figures.
#[derive(Default)]
pub struct History {
    state: Mutex<State>,
}

/// What one frontend's rates are: connections (`rate`) and requests (`req_rate`) per second.
#[derive(Debug, Default, Clone, Copy)]
pub struct FrontendRates {
    pub connections: Rate,
    pub requests: Rate,
}

impl History {
    /// The figures of server `name`, if sampled yet.
    pub fn server(&self, name: &str) -> Option<Seen> {
        self.state.lock().servers.get(name).copied()
    }

    pub fn backend(&self) -> Option<Seen> {
        self.state.lock().backend
    }

    /// The plain frontend's rates (0) or the TLS frontend's (1).
    pub fn frontend(&self, which: usize) -> FrontendRates {
        let (connections, requests) = self.state.lock().frontends[which];
        FrontendRates { connections, requests }
    }

    /// Reads the counters once.
    pub fn sample(&self, shared: &Shared) {
        let set = shared.backends.load();
        let now = Instant::now();
        let mut state = self.state.lock();
        let elapsed = state.at.map_or(EVERY, |at| now - at);
        state.at = Some(now);
        for (i, counters) in [&shared.frontend, &shared.frontend_tls].into_iter().enumerate() {
            let totals = counters.sum();
            state.frontends[i].0.sample(totals.sessions, elapsed);
            state.frontends[i].1.sample(totals.requests, elapsed);
        }
        let mut backend_requests = set.retired.requests + shared.backend.sum().requests;
        let mut usable = false;
        for ((b, &state_now), &weight) in set.servers.iter().zip(&set.states).zip(&set.weights) {
            let status = super::stats::status_of(b, state_now);
            usable |= super::stats::takes_requests(status, weight);
            let totals = b.totals();
            backend_requests += totals.requests;
            let seen = state.servers.entry(b.name().to_string()).or_insert_with(|| Seen::new(status, now));
            seen.observe(status, totals.sessions, elapsed, now);
            seen.observe_suspicions(b.suspicions(), now);
        }
        state.servers.retain(|_, seen| now - seen.last_seen < FORGET_AFTER);
        // The backend's status as the stats show it (`Snapshot::backend_status`).
        let status = if usable { "UP" } else { "DOWN" };
        state.backend.get_or_insert_with(|| Seen::new(status, now)).observe(status, backend_requests, elapsed, now);
    }
}

/// Samples `shared` every second on a thread of its own until the proxy stops.
pub fn start(shared: Arc<Shared>, history: Arc<History>) -> std::io::Result<()> {
    std::thread::Builder::new().name("shoal-stats".into()).spawn(move || {
        while !*shared.shutdown.borrow() {
            history.sample(&shared);
            std::thread::sleep(EVERY);
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_that_goes_down_counts_its_downtime_and_the_fall() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut seen = Seen::new("UP", t0);
        seen.observe("UP", 10, s, t0 + s);
        seen.observe("UP", 30, s, t0 + 2 * s);
        assert_eq!((seen.rate.now, seen.rate.max), (20, 20));
        seen.observe("DOWN", 30, s, t0 + 3 * s);
        seen.observe("DOWN", 30, s, t0 + 5 * s);
        assert_eq!((seen.rate.now, seen.rate.max, seen.went_down), (0, 20, 1));
        seen.observe("MAINT", 30, s, t0 + 6 * s);
        seen.observe("UP", 31, s, t0 + 7 * s);
        assert_eq!(seen.down_before, 3 * s);
        assert_eq!((seen.changed, seen.last_session), (t0 + 7 * s, Some(t0 + 7 * s)));
        seen.observe("DOWN", 31, s, t0 + 8 * s);
        assert_eq!(seen.went_down, 2);
    }
}
