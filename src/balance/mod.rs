//! The backend set and the algorithms that pick from it.
//!
//! The set is published as an immutable snapshot ([`BackendSet`]) behind an `ArcSwap`: writers (static
//! configuration, gossip membership, the runtime API) swap in a new set; each data-plane thread loads it
//! without a lock. What depends only on the set is computed once per snapshot (the weighted round-robin cycle,
//! the sticky-cookie index, the hash ring on first use); picking state such as a cursor is per thread.
//!
//! An algorithm sees the set and the request's [`Affinity`], what it was worth knowing about the request
//! when its head was read: the server its sticky cookie names, the hash of its key.

mod address;
mod backend;
pub mod counters;
pub mod ejection;
mod hash;
pub mod health;
mod least_conn;
mod membership;
mod random;
mod round_robin;
mod set;
pub mod timings;

use std::sync::Arc;

use arc_swap::ArcSwap;

pub use address::ResolveError;
pub use backend::{raise_peak, Backend, Checked, InFlight, Pool, QueueError};
pub use hash::{key_hash, Hash};
pub use least_conn::LeastConn;
pub use membership::{ClusterBackends, NoSuchServer, Override, Publisher};
pub use random::Random;
pub use round_robin::RoundRobin;
pub use set::{BackendSet, ServerState};

use crate::config::value::Balance;

/// What the request says about where it should go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Affinity {
    /// The server id its sticky cookie carries, if any.
    pub cookie: Option<u64>,
    /// The hash of its key (client address, path or header), under a hashing algorithm.
    pub hash: Option<u64>,
}

/// A server for a request.
pub struct Pick {
    pub backend: Arc<Backend>,
    /// The response needs no new sticky cookie: the request's chose this server, or names one that is only
    /// ejected for a while after a failed connect elsewhere (its clients go back to it once it is back, rather
    /// than being moved for good by one failure they did not see; HAProxy moves only the requests that fail).
    pub keeps_cookie: bool,
}

/// Settings the algorithms share.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// `--hash-balance-factor`: percent of the average load before a key spills over; 0: unbounded.
    pub hash_factor: u32,
    /// `--latency-aware`: leastconn and random weigh servers by their recent response times too.
    pub latency: bool,
}

/// The configured algorithm, with its per-thread state.
pub enum Balancer {
    RoundRobin(RoundRobin),
    LeastConn(LeastConn),
    Random(Random),
    Hash(Hash, RoundRobin),
}

impl Balancer {
    /// The algorithm for data-plane thread `thread`.
    pub fn new(kind: &Balance, thread: usize, options: Options) -> Balancer {
        match kind {
            Balance::RoundRobin => Balancer::RoundRobin(RoundRobin::new(thread)),
            Balance::LeastConn => Balancer::LeastConn(LeastConn::new(thread, options.latency)),
            Balance::Random => Balancer::Random(Random::new(thread, options.latency)),
            // A request without the key (no such header) goes round robin.
            Balance::Source | Balance::Uri | Balance::Header(_) => {
                Balancer::Hash(Hash::new(options.hash_factor), RoundRobin::new(thread))
            }
        }
    }

    /// The server for the next attempt; `avoid` holds those that already failed this request.
    ///
    /// A sticky cookie naming a server that is UP or DRAIN (a draining server keeps its sessions, as with
    /// HAProxy) wins over the algorithm, unless that server failed this request or is ejected.
    pub fn pick(&self, set: &BackendSet, affinity: &Affinity, avoid: &[Arc<Backend>]) -> Option<Pick> {
        if let Some((id, (server, state))) = affinity.cookie.and_then(|id| Some((id, set.by_cookie(id)?))) {
            let usable = matches!(state, ServerState::Up | ServerState::Drain);
            match rank(server, avoid) {
                Some(r) if usable && r <= 1 => return Some(Pick { backend: server.clone(), keeps_cookie: true }),
                // Ejected for a while: a stand-in chosen by the cookie, the same one request after request
                // (with three servers or more, the algorithm moved the session back and forth).
                Some(3) if usable => {
                    let backend = Hash::new(0).pick(set, key_hash(&id.to_be_bytes()), avoid)?;
                    return Some(Pick { backend, keeps_cookie: true });
                }
                _ => {}
            }
        }
        let backend = match (self, affinity.hash) {
            (Balancer::RoundRobin(rr), _) | (Balancer::Hash(_, rr), None) => rr.pick(set, avoid),
            (Balancer::LeastConn(lc), _) => lc.pick(set, avoid),
            (Balancer::Random(r), _) => r.pick(set, avoid),
            (Balancer::Hash(h, _), Some(hash)) => h.pick(set, hash, avoid),
        }?;
        Some(Pick { backend, keeps_cookie: false })
    }
}

/// How acceptable `server` is for the next attempt, lower being better; `None`: not at all.
///
/// 0: free. 1: every `maxconn` slot taken (a request would queue). 2: failed this request (`avoid`) but not
/// ejected: it only lost a pooled connection, which a keep-alive race explains. 3: ejected for a failed
/// connect: with nothing else left it is still tried, it may be back, and the alternative is a 503. A server
/// both avoided and ejected is never tried again for this request.
fn rank(server: &Arc<Backend>, avoid: &[Arc<Backend>]) -> Option<u8> {
    let avoided = avoid.iter().any(|a| Arc::ptr_eq(a, server));
    match (avoided, server.is_ejected()) {
        (false, false) if server.is_full() => Some(1),
        (false, false) => Some(0),
        (true, false) => Some(2),
        (false, true) => Some(3),
        (true, true) => None,
    }
}

/// What one more request to server `i` costs, for leastconn and random: requests in flight per unit of
/// weight, times (with `latency`) the server's recent response time.
fn cost(set: &BackendSet, i: usize, latency: bool) -> u64 {
    let server = &set.servers[i];
    let load = (server.in_flight() as u64 + 1) * set.inverse_weight(i);
    match latency {
        true => load.saturating_mul(server.latency_us()),
        false => load,
    }
}

/// The mean response time of the servers sampled, if any is.
fn sampled_mean(servers: &[Arc<Backend>]) -> Option<u64> {
    let sampled: Vec<u64> = servers.iter().map(|b| b.sampled_latency_us()).filter(|&us| us > 0).collect();
    (!sampled.is_empty()).then(|| sampled.iter().sum::<u64>() / sampled.len() as u64)
}

/// Fades every server's response-time average towards the mean of those sampled (see
/// [`Backend::fade_latency`]); with none sampled there is nothing to compare, and nothing changes.
pub fn fade_latencies(servers: &[Arc<Backend>]) {
    if let Some(mean) = sampled_mean(servers) {
        servers.iter().for_each(|s| s.fade_latency(mean));
    }
}

/// Gives the servers with no response time yet the mean of the others, when a set is built: a server new to
/// it is as fast as the others until it answers, not the fastest of all.
pub fn seed_latencies(servers: &[Arc<Backend>]) {
    if let Some(mean) = sampled_mean(servers) {
        servers.iter().for_each(|s| s.seed_latency(mean));
    }
}

/// The shared, swappable handle every thread reads snapshots from.
pub type SharedBackends = Arc<ArcSwap<BackendSet>>;

pub fn shared(set: BackendSet) -> SharedBackends {
    Arc::new(ArcSwap::from_pointee(set))
}
