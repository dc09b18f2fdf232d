//! One consistent reading of every counter, shared by the CSV, the page and the metrics.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::SystemTime;

use super::history::{FrontendRates, Seen};
use crate::balance::counters::Totals;
use crate::balance::timings::Phases;
use crate::balance::Checked;
use crate::balance::ServerState;
use crate::proxy::Shared;

pub use crate::proxy::{BACKEND_NAME as BACKEND, FRONTEND_NAME as FRONTEND};

/// The TLS frontend's name in the stats.
pub const FRONTEND_TLS: &str = "shoal-tls";

pub struct Server {
    pub name: String,
    /// `host:port` as configured or announced.
    pub address: String,
    pub host: String,
    pub port: u16,
    /// Where the host name last resolved to (the address itself when it is one).
    pub resolved: Option<std::net::SocketAddr>,
    /// UP, DOWN (failing its check, or skipped after a failed connect), DRAIN or MAINT.
    pub status: &'static str,
    pub weight: u16,
    /// Its weight before `--slowstart` scales it (`uweight`).
    pub user_weight: u16,
    /// Its weight as configured or announced, before an operator's `set weight` (`iweight`).
    pub initial_weight: u16,
    /// HAProxy's `sid`: fixed while the server is listed.
    pub id: u64,
    pub in_flight: u64,
    /// The most requests in flight at once.
    pub peak_in_flight: u64,
    /// Requests waiting for one of its `maxconn` slots, and the most at once.
    pub queued: u64,
    pub peak_queued: u64,
    pub maxconn: Option<u64>,
    /// `maxqueue`, when the server has a queue with a limit (HAProxy's `qlimit`).
    pub maxqueue: Option<u64>,
    /// The id its sticky cookie carries, when sticky sessions are on.
    pub cookie: Option<String>,
    pub totals: Totals,
    pub timings: Arc<Phases>,
    /// Its rate and state changes, once sampled.
    pub seen: Option<Seen>,
    /// The proxy's last health check of it, its health and how many failed (static servers with checks).
    pub check: Option<Checked>,
}

/// A server's status as the stats show it: one skipped after a failed connect is down for now, whatever
/// membership says.
pub fn status_of(b: &crate::balance::Backend, state: ServerState) -> &'static str {
    if state == ServerState::Up && b.is_ejected() {
        "DOWN"
    } else {
        state.as_str()
    }
}

/// The status HAProxy prints for a server it checks, between two verdicts: `UP 2/3` after a failed check (2
/// more of `fall` 3 put it DOWN), `DOWN 1/2` after a passing one (1 of `rise` 2 done).
pub fn status_text(status: &str, check: Option<&Checked>) -> String {
    match (status, check.map(|c| &c.health)) {
        // Health and state are published apart: a check that just took a server down may be read before the
        // set that says DOWN, and is printed plain.
        ("UP", Some(h)) if h.health >= h.rise && h.health < h.rise + h.fall - 1 => {
            format!("UP {}/{}", h.health + 1 - h.rise, h.fall)
        }
        ("DOWN", Some(h)) if h.health > 0 && h.health < h.rise => format!("DOWN {}/{}", h.health, h.rise),
        _ => status.to_string(),
    }
}

/// Taking new requests: UP with a weight above 0 (HAProxy's usable servers).
pub fn takes_requests(status: &str, weight: u16) -> bool {
    status == "UP" && weight > 0
}

impl Server {
    pub fn in_rotation(&self) -> bool {
        takes_requests(self.status, self.weight)
    }
}

pub struct Snapshot {
    pub frontend: Totals,
    /// The TLS frontend's, when there are TLS listeners.
    pub frontend_tls: Option<Totals>,
    /// Latencies of the plain frontend, the TLS frontend (when there are TLS listeners) and the backend.
    pub frontend_timings: Arc<Phases>,
    pub frontend_tls_timings: Option<Arc<Phases>>,
    pub backend_timings: Arc<Phases>,
    /// Rates of the plain and TLS frontends; the backend's rate and state changes.
    pub frontend_rates: [FrontendRates; 2],
    pub backend_seen: Option<Seen>,
    /// Client connections open on both frontends.
    pub connections: u64,
    /// Open on the plain frontend and the TLS one, each with the most it has had at once.
    pub frontend_connections: [(u64, u64); 2],
    pub max_connections: u64,
    pub servers: Vec<Server>,
    pub backend: Totals,
    /// Requests the backend holds now, in flight or queued (its `scur`, HAProxy's `beconn`).
    pub backend_current: u64,
    /// The most it held at once (its `smax`).
    pub backend_peak: u64,
    /// The most requests waiting in its servers' queues at once.
    pub backend_peak_queued: u64,
    pub uptime_s: u64,
    pub gossip: Gossip,
    /// The balancing algorithm, as HAProxy's CSV `algo` names it.
    pub algo: String,
    /// Log lines lost: (log, cause, count), for the access log and diagnostics.
    pub log_lost: Vec<(&'static str, &'static str, u64)>,
}

/// The gossip layer's counters.
pub struct Gossip {
    pub members: u64,
    /// Sealed packets that opened and went on to SWIM.
    pub accepted: u64,
    /// By [`crate::cluster::Refused`], in the order of `Refused::ALL`.
    pub refused: [u64; 6],
    pub members_refused: u64,
    pub rejoins: u64,
}

impl Snapshot {
    pub fn read(shared: &Shared) -> Snapshot {
        let set = shared.backends.load();
        let config = shared.config.load();
        let sticky = config.sticky_cookie.is_some();
        let servers: Vec<Server> = set
            .servers
            .iter()
            .zip(&set.weights)
            .zip(&set.states)
            .enumerate()
            .map(|(i, ((b, &weight), &state))| Server {
                name: b.name().to_string(),
                address: format!("{}:{}", b.host, b.port),
                host: b.host.clone(),
                port: b.port,
                resolved: b.address.cached(),
                cookie: sticky.then(|| b.cookie()),
                status: status_of(b, state),
                weight,
                user_weight: set.user_weights.get(i).copied().unwrap_or(weight),
                initial_weight: set.initial_weights.get(i).copied().unwrap_or(weight),
                id: set.ids.get(i).copied().unwrap_or(i as u64 + 1),
                in_flight: b.in_flight() as u64,
                peak_in_flight: b.peak_in_flight() as u64,
                queued: u64::from(b.queued()),
                peak_queued: u64::from(b.peak_queued()),
                maxconn: b.maxconn().map(u64::from),
                maxqueue: b.maxqueue().map(u64::from),
                totals: b.totals(),
                timings: b.timings.read(),
                seen: shared.history.server(&b.name()),
                check: b.last_check(),
            })
            .collect();
        let mut backend = set.retired;
        backend += shared.backend.sum();
        for s in &servers {
            backend += s.totals;
        }
        Snapshot {
            frontend: shared.frontend.sum(),
            frontend_tls: shared.tls.load().as_ref().map(|_| shared.frontend_tls.sum()),
            frontend_timings: shared.timings.frontends[0].read(),
            frontend_tls_timings: shared.tls.load().as_ref().map(|_| shared.timings.frontends[1].read()),
            backend_timings: shared.timings.backend.read(),
            frontend_rates: [shared.history.frontend(0), shared.history.frontend(1)],
            backend_seen: shared.history.backend(),
            connections: shared.open.all() as u64,
            frontend_connections: [false, true].map(|tls| {
                let (open, peak) = shared.open.frontend(tls);
                (open as u64, peak as u64)
            }),
            max_connections: config.limits.max_connections as u64,
            // From the backend's pool, not a server's: with no server left (a reload, the retention of
            // departed members ending) they read 0 and jumped back when one came.
            backend_current: set.pool.as_ref().map_or(0, |p| p.sessions() as u64),
            backend_peak: set.pool.as_ref().map_or(0, |p| p.peak_in_flight() as u64),
            backend_peak_queued: set.pool.as_ref().map_or(0, |p| p.peak_queued() as u64),
            servers,
            backend,
            uptime_s: SystemTime::now().duration_since(shared.started).map_or(0, |d| d.as_secs()),
            gossip: Gossip {
                members: shared.gossip.members.load(Relaxed),
                accepted: shared.gossip.accepted.load(Relaxed),
                refused: std::array::from_fn(|i| shared.gossip.refused[i].load(Relaxed)),
                members_refused: shared.gossip.members_refused.load(Relaxed),
                rejoins: shared.gossip.rejoins.load(Relaxed),
            },
            algo: config.balance.haproxy_name(),
            log_lost: [("access", &shared.log), ("diagnostics", &shared.diagnostics)]
                .into_iter()
                .filter_map(|(log, sink)| Some((log, sink.as_ref()?.stats().clone())))
                .flat_map(|(log, s)| [(log, "dropped", s.dropped()), (log, "failed", s.failed())])
                .collect(),
        }
    }

    pub fn backend_status(&self) -> &'static str {
        if self.servers.iter().any(Server::in_rotation) {
            "UP"
        } else {
            "DOWN"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::health::CheckReport;
    use crate::balance::health::CheckHealth;

    fn checked(health: u32) -> Checked {
        let report = CheckReport { status: "L7OK", code: Some(200), duration: Default::default(), error: None };
        Checked { report, health: CheckHealth { health, rise: 2, fall: 3 }, failed: 0 }
    }

    #[test]
    fn status_between_verdicts_as_haproxy_prints_it() {
        let text = |status, health| status_text(status, Some(&checked(health)));
        assert_eq!([text("UP", 4), text("UP", 3), text("UP", 2)], ["UP", "UP 2/3", "UP 1/3"]);
        assert_eq!([text("DOWN", 0), text("DOWN", 1)], ["DOWN", "DOWN 1/2"]);
        // A check that took the server down, read before the set saying DOWN: no underflow (it panicked).
        assert_eq!(text("UP", 0), "UP");
        assert_eq!(status_text("MAINT", Some(&checked(3))), "MAINT");
        assert_eq!(status_text("UP", None), "UP");
    }
}
