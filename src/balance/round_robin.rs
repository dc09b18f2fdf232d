//! Round robin with a per-thread cursor: no shared counter on the request path.

use std::cell::Cell;
use std::sync::Arc;

use super::{Backend, BackendSet};

pub struct RoundRobin {
    next: Cell<usize>,
}

impl RoundRobin {
    /// `start` staggers threads so they do not all begin with the first server.
    pub fn new(start: usize) -> RoundRobin {
        RoundRobin { next: Cell::new(start) }
    }

    /// The next server, skipping `avoid` (one that just failed) and ejected servers while another exists.
    pub fn pick(&self, set: &BackendSet, avoid: Option<&Arc<Backend>>) -> Option<Arc<Backend>> {
        let n = set.servers.len();
        let mut fallback = None;
        for _ in 0..n {
            let i = self.next.get() % n;
            self.next.set(i.wrapping_add(1));
            let candidate = &set.servers[i];
            if avoid.is_some_and(|a| Arc::ptr_eq(a, candidate)) {
                continue;
            }
            if candidate.is_ejected() {
                fallback.get_or_insert(candidate);
                continue;
            }
            return Some(candidate.clone());
        }
        // Every server is ejected or avoided: trying one beats refusing outright.
        fallback.or(set.servers.first()).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::value::backend;

    fn set(n: usize) -> BackendSet {
        BackendSet {
            servers: (0..n)
                .map(|i| Arc::new(Backend::new(&backend(&format!("127.0.0.1:{}", 1000 + i)).unwrap())))
                .collect(),
        }
    }

    #[test]
    fn cycles_and_avoids() {
        let s = set(3);
        let rr = RoundRobin::new(0);
        let names: Vec<_> = (0..4).map(|_| rr.pick(&s, None).unwrap().port).collect();
        assert_eq!(names, [1000, 1001, 1002, 1000]);
        let failed = s.servers[1].clone();
        assert_eq!(rr.pick(&s, Some(&failed)).unwrap().port, 1002);
        assert!(RoundRobin::new(0).pick(&set(0), None).is_none());
        let one = set(1);
        assert_eq!(rr.pick(&one, Some(&one.servers[0])).unwrap().port, 1000);
        s.servers[0].eject(std::time::Duration::from_secs(60));
        let picks: Vec<_> = (0..4).map(|_| rr.pick(&s, None).unwrap().port).collect();
        assert!(!picks.contains(&1000), "an ejected server is skipped: {picks:?}");
        for b in &s.servers {
            b.eject(std::time::Duration::from_secs(60));
        }
        assert!(rr.pick(&s, None).is_some(), "all ejected still yields a server");
    }
}
