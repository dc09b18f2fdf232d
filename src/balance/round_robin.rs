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

    /// The next server, skipping `avoid` (one that just failed) when another exists.
    pub fn pick(&self, set: &BackendSet, avoid: Option<&Arc<Backend>>) -> Option<Arc<Backend>> {
        let n = set.servers.len();
        for _ in 0..n {
            let i = self.next.get() % n;
            self.next.set(i.wrapping_add(1));
            let candidate = &set.servers[i];
            if avoid.is_some_and(|a| Arc::ptr_eq(a, candidate)) && n > 1 {
                continue;
            }
            return Some(candidate.clone());
        }
        None
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
    }
}
