//! The `--join HOST:PORT` seeds a node announces itself to until they answer, forever, so start order never
//! matters. Names are resolved on tasks of their own, never inside the SWIM loop (a slow resolver must not
//! stall probes), one at a time per name; every address a name resolves to is tried (swarm's
//! `tasks.<service>` returns one per replica). A name's last addresses are kept through lookups that fail or
//! hang, and announced to meanwhile: a DNS outage must not keep a node from finding its cluster again after
//! a partition heals or a proxy restarts. A node that hears from nobody says which names and addresses it is
//! trying.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

/// The first retry of a seed that did not answer; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// A seed that does not answer is tried again at least this often: a healed partition or a restarted proxy
/// is found within it.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How often seeds whose every address is a member are resolved again (a name may gain a replica, a seed may
/// restart under a new identity).
const RECHECK: Duration = Duration::from_secs(5);
/// How long a node may hear from nobody before it says so, and how often it repeats it.
const ALONE_WARNING: Duration = Duration::from_secs(3);
const ALONE_REPEAT: Duration = Duration::from_secs(30);

/// A name's addresses, or why there are none.
pub struct Resolved {
    index: usize,
    result: Result<Vec<SocketAddr>, String>,
}

struct Seed {
    spec: String,
    addrs: Vec<SocketAddr>,
    error: Option<String>,
    next_try: Instant,
    backoff: Duration,
    resolving: bool,
}

impl Seed {
    /// Its last addresses that are not live members.
    fn not_members<'a>(&'a self, is_member: &'a impl Fn(&SocketAddr) -> bool) -> impl Iterator<Item = SocketAddr> + 'a {
        self.addrs.iter().filter(|a| !is_member(a)).copied()
    }
}

pub struct Seeds {
    seeds: Vec<Seed>,
    /// This node's own gossip address: a name that includes it (a replica of the same service) is not
    /// announced to.
    me: SocketAddr,
    results: mpsc::UnboundedSender<Resolved>,
    /// Since when this node has had no live member, if it has none.
    alone_since: Option<Instant>,
    next_warning: Option<Instant>,
}

impl Seeds {
    /// Seeds for `specs`; resolutions arrive on the returned receiver.
    pub fn new(specs: &[String], me: SocketAddr) -> (Seeds, mpsc::UnboundedReceiver<Resolved>) {
        let (results, receiver) = mpsc::unbounded_channel();
        let now = Instant::now();
        let seeds = specs
            .iter()
            .map(|spec| Seed {
                spec: spec.clone(),
                addrs: Vec::new(),
                error: None,
                next_try: now,
                backoff: FIRST_BACKOFF,
                resolving: false,
            })
            .collect();
        (Seeds { seeds, me, results, alone_since: Some(now), next_warning: None }, receiver)
    }

    /// When [`Seeds::tick`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.seeds.iter().map(|s| s.next_try).chain(self.next_warning).min()
    }

    /// Starts the lookups that are due (one at a time per seed) and returns the addresses to announce to at
    /// once: the last ones known of the due seeds that are not live members. Warns if this node is still alone.
    pub fn tick(&mut self, is_member: impl Fn(&SocketAddr) -> bool) -> Vec<SocketAddr> {
        let now = Instant::now();
        let mut now_due = Vec::new();
        for (index, seed) in self.seeds.iter_mut().enumerate() {
            if seed.next_try > now {
                continue;
            }
            // While a lookup hangs, or after one failed (this one may too), the last addresses now rather than
            // after it.
            if seed.resolving || seed.error.is_some() {
                now_due.extend(seed.not_members(&is_member));
            }
            if seed.resolving {
                seed.next_try = now + seed.backoff;
                seed.backoff = (seed.backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            seed.resolving = true;
            // `resolved` schedules the next try when the answer comes; if it does not, this does.
            seed.next_try = now + MAX_BACKOFF;
            let (spec, results) = (seed.spec.clone(), self.results.clone());
            // Not bounded: a lookup cannot be cancelled (its blocking thread would go on), and there is never
            // more than one per seed; the last addresses are tried while it hangs.
            tokio::spawn(async move {
                let result = match tokio::net::lookup_host(spec.as_str()).await {
                    Ok(addrs) => Ok(addrs.collect::<Vec<_>>()),
                    Err(e) => Err(e.to_string()),
                };
                let _ = results.send(Resolved { index, result });
            });
        }
        if self.next_warning.is_some_and(|at| at <= now) {
            self.warn_alone(now);
        }
        now_due.sort();
        now_due.dedup();
        now_due
    }

    /// Records a resolution and returns the addresses to announce to: those that are not live members.
    pub fn resolved(&mut self, resolved: Resolved, is_member: impl Fn(&SocketAddr) -> bool) -> Vec<SocketAddr> {
        let me = self.me;
        let Some(seed) = self.seeds.get_mut(resolved.index) else { return Vec::new() };
        seed.resolving = false;
        match resolved.result {
            Ok(mut addrs) => {
                addrs.retain(|a| *a != me);
                addrs.sort();
                addrs.dedup();
                if addrs != seed.addrs {
                    tracing::debug!("seed {} resolves to {:?}", seed.spec, addrs);
                }
                seed.addrs = addrs;
                seed.error = None;
            }
            // The last addresses stay: they are likely still right, and the only way back to the cluster.
            Err(e) => {
                if seed.error.as_ref() != Some(&e) {
                    tracing::debug!(
                        "cannot resolve seed {}: {e}; trying its last addresses {:?}",
                        seed.spec,
                        seed.addrs
                    );
                }
                seed.error = Some(e);
            }
        }
        let missing: Vec<SocketAddr> = seed.not_members(&is_member).collect();
        let now = Instant::now();
        if missing.is_empty() && seed.error.is_none() {
            seed.backoff = FIRST_BACKOFF;
            seed.next_try = now + RECHECK;
        } else {
            seed.next_try = now + seed.backoff;
            seed.backoff = (seed.backoff * 2).min(MAX_BACKOFF);
        }
        missing
    }

    /// Every seed's last addresses.
    pub fn last_addresses(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.seeds.iter().flat_map(|s| s.addrs.iter().copied())
    }

    /// This node's gossip address changed (see `Node::adopt_route`).
    pub fn set_me(&mut self, me: SocketAddr) {
        self.me = me;
    }

    /// Tells the seeds whether this node has any live member; being alone for a while is worth a warning.
    pub fn set_alone(&mut self, alone: bool) {
        let now = Instant::now();
        match (alone, self.alone_since) {
            (true, None) => {
                self.alone_since = Some(now);
                // A node that lost everyone retries its seeds at once.
                for seed in &mut self.seeds {
                    seed.next_try = now;
                    seed.backoff = FIRST_BACKOFF;
                }
            }
            (false, Some(_)) => {
                self.alone_since = None;
                self.next_warning = None;
            }
            _ => {}
        }
        if alone && self.next_warning.is_none() && !self.seeds.is_empty() {
            self.next_warning = Some(self.alone_since.unwrap_or(now) + ALONE_WARNING);
        }
    }

    fn warn_alone(&mut self, now: Instant) {
        let tried: Vec<String> = self
            .seeds
            .iter()
            .map(|s| match (&s.error, s.addrs.as_slice()) {
                (Some(e), []) => format!("{} (cannot resolve: {e})", s.spec),
                (Some(e), addrs) => {
                    let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
                    format!("{} (cannot resolve: {e}; trying its last addresses {})", s.spec, list.join(", "))
                }
                (None, []) => format!("{} (no address yet)", s.spec),
                (None, addrs) => {
                    let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
                    format!("{} ({})", s.spec, list.join(", "))
                }
            })
            .collect();
        let alone_for = self.alone_since.map_or(Duration::ZERO, |t| now.duration_since(t));
        let swarm_hint = if self.seeds.iter().any(|s| !s.spec.starts_with("tasks.")) {
            "; under Docker Swarm join through tasks.SERVICE:PORT: a service name resolves to a virtual IP that does \
             not relay gossip"
        } else {
            ""
        };
        tracing::warn!(
            "no answer from any seed after {}s: {}; retrying every {}s (check the address, the cluster key, and that \
             UDP {} is open){swarm_hint}",
            alone_for.as_secs(),
            tried.join("; "),
            MAX_BACKOFF.as_secs(),
            self.seeds.first().and_then(|s| s.spec.rsplit(':').next()).unwrap_or("7946"),
        );
        self.next_warning = Some(now + ALONE_REPEAT);
    }
}
