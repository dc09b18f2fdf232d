//! The backend set and the algorithms that pick from it.
//!
//! The set is published as an immutable snapshot ([`BackendSet`]) behind an `ArcSwap`: writers (static
//! configuration today, gossip membership later) swap in a new set; each data-plane thread loads it without a
//! lock. The weighted round-robin cycle is computed once per snapshot; picking state such as the cursor into it
//! is per thread.

mod backend;
pub mod counters;
mod least_conn;
mod membership;
pub mod recovery;
mod round_robin;

use std::sync::Arc;

use arc_swap::ArcSwap;

pub use backend::{Backend, InFlight};
pub use least_conn::LeastConn;
pub use membership::{ClusterBackends, NoSuchServer, Override, Publisher};
pub use round_robin::RoundRobin;

use crate::config::value::Balance;

/// The configured algorithm, with its per-thread state.
pub enum Balancer {
    RoundRobin(RoundRobin),
    LeastConn(LeastConn),
}

impl Balancer {
    /// The algorithm for data-plane thread `thread`.
    pub fn new(kind: Balance, thread: usize) -> Balancer {
        match kind {
            Balance::RoundRobin => Balancer::RoundRobin(RoundRobin::new(thread)),
            Balance::LeastConn => Balancer::LeastConn(LeastConn::new(thread)),
        }
    }

    /// The server for the next attempt; `avoid` holds those that already failed this request.
    pub fn pick(&self, set: &BackendSet, avoid: &[Arc<Backend>]) -> Option<Arc<Backend>> {
        match self {
            Balancer::RoundRobin(rr) => rr.pick(set, avoid),
            Balancer::LeastConn(lc) => lc.pick(set, avoid),
        }
    }
}

/// How acceptable `server` is for the next attempt, lower being better; `None`: not at all.
///
/// A server that failed this request (`avoid`) but is not ejected only lost a pooled connection, which a
/// keep-alive race explains: it comes before one ejected for a failed connect. One both avoided and ejected
/// is never tried again for this request. With nothing else left, an ejected server is still tried: it may
/// be back, and the alternative is a 503.
fn rank(server: &Arc<Backend>, avoid: &[Arc<Backend>]) -> Option<u8> {
    let avoided = avoid.iter().any(|a| Arc::ptr_eq(a, server));
    match (avoided, server.is_ejected()) {
        (false, false) => Some(0),
        (true, false) => Some(1),
        (false, true) => Some(2),
        (true, true) => None,
    }
}

/// The longest weighted round-robin cycle; larger weight sums are scaled down to it (every server keeps a
/// place), so rebuilding a set and walking its cycle stay cheap whatever weights the members announce.
const MAX_CYCLE: u64 = 4096;

/// A server's state, as HAProxy's status column names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// In rotation.
    Up,
    /// Failing its health check (or not yet passing it).
    Down,
    /// Finishing what it has, taking nothing new: its agent is draining, or an operator said so.
    Drain,
    /// Taken out by an operator.
    Maint,
}

impl ServerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Up => "UP",
            ServerState::Down => "DOWN",
            ServerState::Drain => "DRAIN",
            ServerState::Maint => "MAINT",
        }
    }
}

/// An immutable snapshot of the servers known to the proxy, and the order in which those in rotation take
/// requests.
#[derive(Debug, Default)]
pub struct BackendSet {
    /// Every known server, in rotation or not (the stats list them all).
    pub servers: Vec<Arc<Backend>>,
    /// Each server's weight, in the order of `servers`.
    pub weights: Vec<u16>,
    /// Each server's state, in the order of `servers`.
    pub states: Vec<ServerState>,
    /// Round-robin order as indexes into `servers`: each server in rotation as often as its weight,
    /// interleaved.
    cycle: Vec<usize>,
    /// The servers in rotation, once each, as indexes into `servers`.
    rotation: Vec<usize>,
}

impl BackendSet {
    /// Servers with their weights (HAProxy's `weight`) and states; those UP with a weight above 0 are in
    /// rotation.
    pub fn new(servers: Vec<(Arc<Backend>, u16, ServerState)>) -> BackendSet {
        let rotation: Vec<u64> =
            servers.iter().map(|(_, w, state)| if *state == ServerState::Up { u64::from(*w) } else { 0 }).collect();
        let in_rotation: Vec<usize> = (0..servers.len()).filter(|&i| rotation[i] > 0).collect();
        let weights_in_rotation: Vec<u64> = in_rotation.iter().map(|&i| rotation[i]).collect();
        let cycle = smooth_cycle(&weights_in_rotation).into_iter().map(|k| in_rotation[k]).collect();
        let mut set = BackendSet { cycle, rotation: in_rotation, ..BackendSet::default() };
        for (backend, weight, state) in servers {
            set.servers.push(backend);
            set.weights.push(weight);
            set.states.push(state);
        }
        set
    }

    /// Servers in rotation with their weights; a weight of 0 keeps a server out of rotation.
    pub fn weighted(servers: Vec<(Arc<Backend>, u16)>) -> BackendSet {
        BackendSet::new(servers.into_iter().map(|(b, w)| (b, w, ServerState::Up)).collect())
    }

    /// Servers sharing traffic equally.
    pub fn equal(servers: Vec<Arc<Backend>>) -> BackendSet {
        BackendSet::weighted(servers.into_iter().map(|b| (b, 1)).collect())
    }

    /// The round-robin order, as indexes into `servers`.
    pub fn cycle(&self) -> &[usize] {
        &self.cycle
    }

    /// The servers in rotation, once each, as indexes into `servers`.
    pub fn rotation(&self) -> &[usize] {
        &self.rotation
    }
}

/// Smooth weighted round robin (nginx's): each step every server gains its weight, the richest is picked and
/// pays the total. Weights 5,1,1 give a a b a c a a rather than a a a a a b c, so no server gets a burst.
fn smooth_cycle(weights: &[u64]) -> Vec<usize> {
    let divisor = weights.iter().fold(0, |a, &w| gcd(a, w)).max(1);
    let mut weights: Vec<u64> = weights.iter().map(|w| w / divisor).collect();
    let sum: u64 = weights.iter().sum();
    if sum > MAX_CYCLE {
        weights = weights.iter().map(|w| (w * MAX_CYCLE / sum).max(1)).collect();
    }
    let total: i64 = weights.iter().sum::<u64>() as i64;
    let mut current = vec![0i64; weights.len()];
    (0..total)
        .map(|_| {
            for (c, w) in current.iter_mut().zip(&weights) {
                *c += *w as i64;
            }
            let best = (0..current.len()).fold(0, |best, i| if current[i] > current[best] { i } else { best });
            current[best] -= total;
            best
        })
        .collect()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The shared, swappable handle every thread reads snapshots from.
pub type SharedBackends = Arc<ArcSwap<BackendSet>>;

pub fn shared(set: BackendSet) -> SharedBackends {
    Arc::new(ArcSwap::from_pointee(set))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_cycle_interleaves_by_weight() {
        assert_eq!(smooth_cycle(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_cycle(&[300, 100]), [0, 0, 1, 0], "reduced by the common divisor");
        assert_eq!(smooth_cycle(&[1, 1, 1]), [0, 1, 2]);
        assert!(smooth_cycle(&[]).is_empty());
        let big = smooth_cycle(&[65535, 65534, 1]);
        assert!(big.len() as u64 <= MAX_CYCLE + 3, "capped: {}", big.len());
        assert!(big.contains(&2), "a small weight keeps a place after scaling");
        let count = |i| big.iter().filter(|&&x| x == i).count();
        assert!(count(0) >= count(1) && count(1) > 1000);
    }
}
