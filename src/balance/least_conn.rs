//! Least connections (HAProxy's `leastconn`): the server in rotation with the fewest requests in flight, from
//! every thread, relative to its weight. Ties go round robin from a per-thread cursor, so idle servers share
//! evenly. Reading the in-flight counters is the only cross-thread traffic, and it is reads only.

use std::cell::Cell;
use std::sync::Arc;

use super::{rank, Backend, BackendSet};

pub struct LeastConn {
    next: Cell<usize>,
}

impl LeastConn {
    /// `start` staggers threads so they do not all begin their tie-breaking with the first server.
    pub fn new(start: usize) -> LeastConn {
        LeastConn { next: Cell::new(start) }
    }

    /// The least loaded server in rotation, skipping `avoid` (one that just failed) and ejected servers while
    /// another exists.
    pub fn pick(&self, set: &BackendSet, avoid: &[Arc<Backend>]) -> Option<Arc<Backend>> {
        let rotation = set.rotation();
        let n = rotation.len();
        if n == 0 {
            return None;
        }
        let start = self.next.get();
        self.next.set(start.wrapping_add(1));
        let mut best: Option<(usize, u64, u64)> = None;
        let mut fallback: Option<(u8, usize)> = None;
        for k in 0..n {
            let i = rotation[(start + k) % n];
            let server = &set.servers[i];
            match rank(server, avoid) {
                Some(0) => {}
                Some(r) if fallback.is_none_or(|(best, _)| r < best) => {
                    fallback = Some((r, i));
                    continue;
                }
                _ => continue,
            }
            let (load, weight) = (server.in_flight() as u64, u64::from(set.weights[i]));
            if best.is_none_or(|(_, best_load, best_weight)| load * best_weight < best_load * weight) {
                best = Some((i, load, weight));
            }
        }
        let chosen = best.map(|(i, ..)| i).or(fallback.map(|(_, i)| i))?;
        Some(set.servers[chosen].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::value::backend;

    fn server(port: usize) -> Arc<Backend> {
        Arc::new(Backend::new(&backend(&format!("127.0.0.1:{port}")).unwrap(), 1))
    }

    #[test]
    fn fewest_in_flight_for_the_weight_wins() {
        let (a, b) = (server(1), server(2));
        let set = BackendSet::weighted(vec![(a.clone(), 100), (b.clone(), 100)]);
        let lc = LeastConn::new(0);
        let busy = a.clone().enter();
        assert!((0..4).all(|_| lc.pick(&set, &[]).unwrap().port == 2), "a has one in flight");
        drop(busy);
        let ports: Vec<_> = (0..4).map(|_| lc.pick(&set, &[]).unwrap().port).collect();
        assert!(ports.contains(&1) && ports.contains(&2), "ties alternate: {ports:?}");
        // Twice the weight takes twice the load before it stops winning.
        let heavy = BackendSet::weighted(vec![(a.clone(), 200), (b.clone(), 100)]);
        let _one = a.clone().enter();
        let _b = b.clone().enter();
        assert_eq!(lc.pick(&heavy, &[]).unwrap().port, 1, "1/200 beats 1/100");
        assert_eq!(lc.pick(&heavy, std::slice::from_ref(&a)).unwrap().port, 2, "avoided");
        assert!(LeastConn::new(0).pick(&BackendSet::weighted(vec![(a, 0)]), &[]).is_none());
    }
}
