//! Power of two random choices (HAProxy's `balance random`): draw two servers, in proportion to their
//! weights, and take the one with fewer requests in flight for its weight. Nearly as even as leastconn, with
//! no herd on the single least loaded server when many proxies (or threads) pick at once.

use std::cell::Cell;
use std::sync::Arc;

use super::{cost, rank, Backend, BackendSet};

pub struct Random {
    /// xorshift state, per thread.
    state: Cell<u64>,
    latency: bool,
}

impl Random {
    pub fn new(thread: usize, latency: bool) -> Random {
        let seed = 0x9e37_79b9_7f4a_7c15u64 ^ ((thread as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9));
        Random { state: Cell::new(seed | 1), latency }
    }

    fn next(&self) -> u64 {
        let mut x = self.state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state.set(x);
        x
    }

    pub fn pick(&self, set: &BackendSet, avoid: &[Arc<Backend>]) -> Option<Arc<Backend>> {
        // The weighted cycle holds each server as often as its weight: a uniform draw from it is by weight.
        let cycle = set.cycle();
        if cycle.is_empty() {
            return None;
        }
        let mut best: Option<(u8, u64, usize)> = None;
        let mut first: Option<usize> = None;
        let mut draws = 0;
        // Two acceptable draws of different servers, or a bounded number of tries when most servers are to be
        // avoided (or one server holds most of the weight).
        for _ in 0..cycle.len().min(8) + 2 {
            let i = cycle[(self.next() % cycle.len() as u64) as usize];
            if first == Some(i) && set.rotation().len() > 1 {
                continue;
            }
            let Some(r) = rank(&set.servers[i], avoid) else { continue };
            let c = cost(set, i, self.latency);
            if best.is_none_or(|(br, bc, _)| (r, c) < (br, bc)) {
                best = Some((r, c, i));
            }
            first.get_or_insert(i);
            draws += 1;
            if draws == 2 && best.is_some_and(|(r, _, _)| r == 0) {
                break;
            }
        }
        if best.is_none() {
            return set.rotation().iter().map(|&i| &set.servers[i]).find(|b| rank(b, avoid).is_some()).cloned();
        }
        best.map(|(_, _, i)| set.servers[i].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::Pool;
    use crate::config::value::backend;

    #[test]
    fn spreads_by_weight_and_shuns_the_busy() {
        let a = Arc::new(Backend::new(&backend("a=10.0.0.1:80").unwrap(), &Pool::new(1)));
        let b = Arc::new(Backend::new(&backend("b=10.0.0.2:80").unwrap(), &Pool::new(1)));
        let set = BackendSet::weighted(vec![(a.clone(), 300), (b.clone(), 100)]);
        let r = Random::new(0, false);
        let a_share = (0..4000).filter(|_| Arc::ptr_eq(&r.pick(&set, &[]).unwrap(), &a)).count();
        assert!(a_share > 2800, "the heavier server wins most draws: {a_share}");
        let busy: Vec<_> = (0..50).map(|_| a.clone().enter()).collect();
        let b_share = (0..1000).filter(|_| Arc::ptr_eq(&r.pick(&set, &[]).unwrap(), &b)).count();
        assert!(b_share > 300, "a busy server loses the draws it meets b in: {b_share}");
        drop(busy);
        assert!(Arc::ptr_eq(&r.pick(&set, std::slice::from_ref(&a)).unwrap(), &b), "avoided");
    }
}
