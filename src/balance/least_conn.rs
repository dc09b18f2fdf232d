//! Least connections (HAProxy's `leastconn`): the server in rotation with the fewest requests in flight, from
//! every thread, relative to its weight (among 32 at a time in larger sets, see [`WINDOW`]). Ties go round robin from a per-thread cursor, so idle servers share
//! evenly. Reading the in-flight counters is the only cross-thread traffic, and it is reads only.

use std::cell::Cell;
use std::sync::Arc;

use super::set::Rotating;
use super::{rank, Backend, BackendSet};

/// Servers compared per pick. Up to this many in rotation, every one (exact leastconn). In larger sets, this
/// many consecutive ones from a per-thread cursor that moves on by as many each pick, so that every server is
/// compared every ⌈n/32⌉ picks and a pick costs the same with 1,000 servers as with 32. (HAProxy keeps its
/// servers in a tree sorted by load, under a lock; shoal's data-plane threads share no lock, and a full scan
/// costs about a nanosecond per server.)
const WINDOW: usize = 32;

pub struct LeastConn {
    next: Cell<usize>,
    /// Weigh servers by their recent response times too (`--latency-aware`).
    latency: bool,
}

impl LeastConn {
    /// `start` staggers threads so they do not all begin their tie-breaking with the first server.
    pub fn new(start: usize, latency: bool) -> LeastConn {
        LeastConn { next: Cell::new(start), latency }
    }

    /// The least loaded server in rotation, skipping `avoid` (one that just failed) and ejected servers while
    /// another exists.
    pub fn pick(&self, set: &BackendSet, avoid: &[Arc<Backend>]) -> Option<Arc<Backend>> {
        let rotating = set.rotating();
        let n = rotating.len();
        if n == 0 {
            return None;
        }
        let start = self.next.get() % n;
        let window = n.min(WINDOW);
        self.next.set(start + if n > WINDOW { WINDOW } else { 1 });
        // The usual case first: a plain minimum over one array, stopping early at an idle server of the
        // highest weight, which nothing beats.
        let floor = if self.latency { 0 } else { set.least_cost() };
        let mut best = (u64::MAX, 0);
        // From the cursor to the end, then from the start: two plain loops, which compile to far less than
        // one chained iterator.
        let end = start + window;
        if !self.scan(rotating, start, end.min(n), floor, &mut best) && end > n {
            self.scan(rotating, 0, end - n, floor, &mut best);
        }
        let server = &rotating[best.1].server;
        if rank(server, avoid) == Some(0) {
            return Some(server.clone());
        }
        // The least loaded one failed this request, is ejected or full: the least loaded acceptable one.
        let mut best: Option<(u64, &Arc<Backend>)> = None;
        let mut fallback: Option<(u8, &Arc<Backend>)> = None;
        for r in rotating[start..].iter().chain(&rotating[..start]) {
            match rank(&r.server, avoid) {
                Some(0) => {
                    let c = self.cost(r);
                    if best.is_none_or(|(best_cost, _)| c < best_cost) {
                        best = Some((c, &r.server));
                    }
                }
                Some(k) if fallback.is_none_or(|(worst, _)| k < worst) => fallback = Some((k, &r.server)),
                _ => {}
            }
        }
        best.map(|(_, s)| s).or(fallback.map(|(_, s)| s)).cloned()
    }

    /// Folds servers `from..to` into `best` (cost, position); true when it stopped at one nothing beats.
    #[inline(always)]
    fn scan(&self, rotating: &[Rotating], from: usize, to: usize, floor: u64, best: &mut (u64, usize)) -> bool {
        for (k, r) in rotating[from..to].iter().enumerate() {
            let c = self.cost(r);
            if c < best.0 {
                *best = (c, from + k);
            }
            if c <= floor {
                return true;
            }
        }
        false
    }

    /// What one more request costs server `r`: requests in flight per unit of weight, times (with latency)
    /// its recent response time.
    fn cost(&self, r: &Rotating) -> u64 {
        let load = (r.server.in_flight() as u64 + 1) * r.inverse_weight;
        match self.latency {
            true => load.saturating_mul(r.server.latency_us()),
            false => load,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::Pool;
    use crate::config::value::backend;

    fn server(port: usize) -> Arc<Backend> {
        Arc::new(Backend::new(&backend(&format!("127.0.0.1:{port}")).unwrap(), &Pool::new(1)))
    }

    #[test]
    fn fewest_in_flight_for_the_weight_wins() {
        let (a, b) = (server(1), server(2));
        let set = BackendSet::weighted(vec![(a.clone(), 100), (b.clone(), 100)]);
        let lc = LeastConn::new(0, false);
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
        assert!(LeastConn::new(0, false).pick(&BackendSet::weighted(vec![(a, 0)]), &[]).is_none());
    }

    #[test]
    fn a_large_set_finds_its_idle_server_within_a_round_of_windows() {
        let servers: Vec<_> = (0..100).map(|i| server(1000 + i)).collect();
        let set = BackendSet::equal(servers.clone());
        let _busy: Vec<_> =
            servers.iter().enumerate().filter(|(i, _)| *i != 77).map(|(_, s)| s.clone().enter()).collect();
        let lc = LeastConn::new(0, false);
        let picks: Vec<u16> = (0..100usize.div_ceil(WINDOW)).map(|_| lc.pick(&set, &[]).unwrap().port).collect();
        assert!(picks.contains(&1077), "the idle server is compared every 4 picks: {picks:?}");
    }

    #[test]
    fn with_latency_a_slow_server_loses_until_its_average_fades() {
        let (fast, slow) = (server(1), server(2));
        let set = BackendSet::equal(vec![fast.clone(), slow.clone()]);
        fast.record_latency(1_000);
        slow.record_latency(300_000);
        let lc = LeastConn::new(0, true);
        let _three = [fast.clone().enter(), fast.clone().enter(), fast.clone().enter()];
        assert_eq!(lc.pick(&set, &[]).unwrap().port, 1, "4 x 1 ms beats 1 x 300 ms");
        assert_eq!(LeastConn::new(0, false).pick(&set, &[]).unwrap().port, 2, "without latency: the idle one");
        for _ in 0..40 {
            crate::balance::fade_latencies(&set.servers);
        }
        assert_eq!(lc.pick(&set, &[]).unwrap().port, 2, "tried again once its average faded");
        assert_eq!(fast.sampled_latency_us(), 1_000, "an average below the mean does not fade");
    }

    #[test]
    fn with_latency_a_server_not_sampled_yet_counts_as_fast_as_the_others() {
        let (a, b, new) = (server(1), server(2), server(3));
        a.record_latency(2_000);
        b.record_latency(2_000);
        let set = BackendSet::equal(vec![a, b, new.clone()]);
        crate::balance::seed_latencies(&set.servers);
        assert_eq!(new.sampled_latency_us(), 2_000);
        let faster = server(4);
        faster.seed_latency(2_000);
        faster.record_latency(300);
        assert_eq!(faster.sampled_latency_us(), 300, "the first sample replaces the stand-in");
        let lc = LeastConn::new(0, true);
        let _busy = [new.clone().enter(), new.clone().enter()];
        assert_ne!(lc.pick(&set, &[]).unwrap().port, 3, "two in flight on it: not the cheapest any more");
    }
}
