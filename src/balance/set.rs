//! One published snapshot of the backend set: every known server with its weight and state, the servers in
//! rotation, the weighted round-robin cycle, the sticky-cookie index, and (built on first use, only by hashing
//! algorithms) the consistent-hash ring.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use super::hash::Ring;
use super::Backend;

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
    /// Servers by the id their sticky cookie carries, as indexes into `servers`.
    cookies: HashMap<u64, usize>,
    /// The consistent-hash ring of the servers in rotation, built when a hashing algorithm first needs it.
    ring: OnceLock<Ring>,
    /// Every known server, in rotation or not (the stats list them all).
    pub servers: Vec<Arc<Backend>>,
    /// Each server's weight, in the order of `servers`.
    pub weights: Vec<u16>,
    /// Each server's weight before `--slowstart` scales it (HAProxy's `uweight`): `weights` but for a server
    /// ramping up.
    pub user_weights: Vec<u16>,
    /// Each server's weight as configured or announced, before an operator's `set weight` (HAProxy's
    /// `iweight`).
    pub initial_weights: Vec<u16>,
    /// Each server's id (HAProxy's `sid`): given to its name when first listed and kept while it is listed,
    /// so ids do not move when other servers come and go; empty: by position.
    pub ids: Vec<u64>,
    /// Each server's state, in the order of `servers`.
    pub states: Vec<ServerState>,
    /// 2^32 / weight for each server, so comparing loads per unit of weight takes a multiplication, not a
    /// division.
    inverse_weights: Vec<u64>,
    /// The smallest of `inverse_weights` among servers in rotation: the cost of an idle server of the highest
    /// weight.
    least_cost: u64,
    /// Round-robin order as indexes into `servers`: each server in rotation as often as its weight,
    /// interleaved.
    cycle: Vec<usize>,
    /// The servers in rotation, once each, as indexes into `servers`.
    rotation: Vec<usize>,
    /// The sum of the weights of the servers in rotation.
    rotation_weight: u64,
    /// The same servers with what comparing their loads needs, side by side, so leastconn's scan of a large
    /// set reads one array.
    rotating: Vec<Rotating>,
    /// What servers no longer listed counted: the backend's totals keep it.
    pub retired: super::counters::Totals,
    /// The backend's own counts (its peaks), which outlive every server.
    pub pool: Option<super::Pool>,
}

/// A server in rotation, as leastconn compares it.
#[derive(Debug)]
pub struct Rotating {
    pub server: Arc<Backend>,
    /// 2^32 / its weight.
    pub inverse_weight: u64,
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
        let rotation_weight = weights_in_rotation.iter().sum();
        let mut set = BackendSet { cycle, rotation: in_rotation, rotation_weight, ..BackendSet::default() };
        for (i, (backend, weight, state)) in servers.into_iter().enumerate() {
            set.cookies.insert(backend.cookie_id(), i);
            set.servers.push(backend);
            set.weights.push(weight);
            set.states.push(state);
            set.inverse_weights.push((1u64 << 32) / u64::from(weight.max(1)));
        }
        set.least_cost = set.rotation.iter().map(|&i| set.inverse_weights[i]).min().unwrap_or(0);
        set.user_weights = set.weights.clone();
        set.initial_weights = set.weights.clone();
        set.rotating = (set.rotation.iter())
            .map(|&i| Rotating { server: set.servers[i].clone(), inverse_weight: set.inverse_weights[i] })
            .collect();
        set
    }

    /// 2^32 / the weight of server `i`.
    pub fn inverse_weight(&self, i: usize) -> u64 {
        self.inverse_weights[i]
    }

    /// What one request costs an idle server of the highest weight in rotation: no server costs less.
    pub fn least_cost(&self) -> u64 {
        self.least_cost
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

    /// The servers in rotation with their inverse weights, in the order of `rotation`.
    pub fn rotating(&self) -> &[Rotating] {
        &self.rotating
    }

    /// Whether `backend` is still here to finish requests: UP, or DRAIN (which keeps what it has, sticky
    /// sessions included). A server DOWN, in MAINT or gone is not.
    pub fn serves(&self, backend: &Arc<Backend>) -> bool {
        matches!(self.state_of(backend), Some(ServerState::Up | ServerState::Drain))
    }

    /// Whether `backend` is still here to finish the requests it already has: UP, DRAIN, or MAINT, whose
    /// requests in flight end as HAProxy's `disable server` lets them. A server DOWN or gone is not.
    pub fn finishes(&self, backend: &Arc<Backend>) -> bool {
        matches!(self.state_of(backend), Some(ServerState::Up | ServerState::Drain | ServerState::Maint))
    }

    /// `backend`'s state here, if it is in this set.
    fn state_of(&self, backend: &Arc<Backend>) -> Option<ServerState> {
        self.servers.iter().position(|b| Arc::ptr_eq(b, backend)).map(|i| self.states[i])
    }

    /// The server whose sticky cookie carries `id`, with its state.
    pub fn by_cookie(&self, id: u64) -> Option<(&Arc<Backend>, ServerState)> {
        self.cookies.get(&id).map(|&i| (&self.servers[i], self.states[i]))
    }

    /// The sum of the weights of the servers in rotation.
    pub fn rotation_weight(&self) -> u64 {
        self.rotation_weight
    }

    /// The consistent-hash ring of the servers in rotation (built once per snapshot).
    pub fn ring(&self) -> &Ring {
        self.ring.get_or_init(|| {
            let members = self.rotation.iter().map(|&i| (i, self.servers[i].cookie_id(), self.weights[i]));
            Ring::new(members)
        })
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
