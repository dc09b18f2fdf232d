//! Weighted round robin with a per-thread cursor into the snapshot's cycle: no shared counter on the request
//! path.

use std::cell::Cell;
use std::sync::Arc;

use super::{rank, Backend, BackendSet};

pub struct RoundRobin {
    next: Cell<usize>,
}

impl RoundRobin {
    /// `start` staggers threads so they do not all begin with the first server.
    pub fn new(start: usize) -> RoundRobin {
        RoundRobin { next: Cell::new(start) }
    }

    /// The next server in the set's weighted cycle, skipping `avoid` (one that just failed) and ejected
    /// servers while another exists. When every server is full, the one whose queue should move first (its
    /// length for its `maxconn`): the cursor comes back to where it started after a full turn, so the first
    /// full server took every queued request while the others' queues stayed empty.
    pub fn pick(&self, set: &BackendSet, avoid: &[Arc<Backend>]) -> Option<Arc<Backend>> {
        let cycle = set.cycle();
        let n = cycle.len();
        let mut fallback: Option<((u8, u64), &Arc<Backend>)> = None;
        for _ in 0..n {
            let i = self.next.get() % n;
            self.next.set(i + 1);
            let candidate = &set.servers[cycle[i]];
            match rank(candidate, avoid) {
                Some(0) => return Some(candidate.clone()),
                Some(r) => {
                    let wait = ((u64::from(candidate.queued()) + 1) << 32)
                        / u64::from(candidate.maxconn().unwrap_or(1).max(1));
                    let key = (r, wait);
                    if fallback.is_none_or(|(best, _)| key < best) {
                        fallback = Some((key, candidate));
                    }
                }
                None => {}
            }
        }
        fallback.map(|(_, b)| b.clone())
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

    fn set(n: usize) -> BackendSet {
        BackendSet::equal((0..n).map(|i| server(1000 + i)).collect())
    }

    #[test]
    fn follows_weights_and_skips_weight_zero() {
        let s = BackendSet::weighted(vec![(server(1), 200), (server(2), 0), (server(3), 100)]);
        let rr = RoundRobin::new(0);
        let ports: Vec<_> = (0..6).map(|_| rr.pick(&s, &[]).unwrap().port).collect();
        assert_eq!(ports, [1, 3, 1, 1, 3, 1]);
        assert!(RoundRobin::new(0).pick(&BackendSet::weighted(vec![(server(1), 0)]), &[]).is_none());
    }

    #[test]
    fn cycles_and_avoids() {
        let s = set(3);
        let rr = RoundRobin::new(0);
        let names: Vec<_> = (0..4).map(|_| rr.pick(&s, &[]).unwrap().port).collect();
        assert_eq!(names, [1000, 1001, 1002, 1000]);
        let failed = s.servers[1].clone();
        assert_eq!(rr.pick(&s, std::slice::from_ref(&failed)).unwrap().port, 1002);
        assert!(RoundRobin::new(0).pick(&set(0), &[]).is_none());
        let one = set(1);
        assert_eq!(rr.pick(&one, &one.servers).unwrap().port, 1000, "the only server, avoided but not ejected");
        s.servers[0].eject(std::time::Instant::now());
        let picks: Vec<_> = (0..4).map(|_| rr.pick(&s, &[]).unwrap().port).collect();
        assert!(!picks.contains(&1000), "an ejected server is skipped: {picks:?}");
        assert_eq!(rr.pick(&s, &s.servers[1..]).unwrap().port, 1001, "avoided before ejected");
        for b in &s.servers {
            b.eject(std::time::Instant::now());
        }
        assert!(rr.pick(&s, &[]).is_some(), "all ejected still yields a server");
        assert!(rr.pick(&s, &s.servers).is_none(), "failed and ejected: never again for this request");
        assert!(s.servers[0].readmit(std::time::Instant::now()));
        assert_eq!(rr.pick(&s, &[]).unwrap().port, 1000, "readmitted");
    }
}
