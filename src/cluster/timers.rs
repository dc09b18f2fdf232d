//! foca's timer events, fired strictly in deadline order from one heap (a task per timer can reorder them).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use tokio::time::Instant;

/// Events ordered by deadline, ties by insertion order.
pub struct TimerHeap<T> {
    heap: BinaryHeap<Reverse<(Instant, u64, Slot<T>)>>,
    seq: u64,
}

/// Wrapper that makes any payload orderable by ignoring it.
struct Slot<T>(T);

impl<T> PartialEq for Slot<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl<T> Eq for Slot<T> {}
impl<T> PartialOrd for Slot<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Slot<T> {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

impl<T> TimerHeap<T> {
    pub fn new() -> Self {
        TimerHeap { heap: BinaryHeap::new(), seq: 0 }
    }

    pub fn push(&mut self, at: Instant, event: T) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, Slot(event))));
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// The earliest event due at `now`, if any.
    pub fn pop_due(&mut self, now: Instant) -> Option<T> {
        if self.next_deadline()? <= now {
            self.heap.pop().map(|Reverse((_, _, Slot(e)))| e)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn fires_in_deadline_then_insertion_order() {
        let mut h = TimerHeap::new();
        let t0 = Instant::now();
        h.push(t0 + Duration::from_millis(30), "c");
        h.push(t0 + Duration::from_millis(10), "a");
        h.push(t0 + Duration::from_millis(10), "b");
        assert_eq!(h.pop_due(t0), None);
        let later = t0 + Duration::from_millis(40);
        let order: Vec<_> = std::iter::from_fn(|| h.pop_due(later)).collect();
        assert_eq!(order, ["a", "b", "c"]);
    }
}
