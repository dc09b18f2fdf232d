//! A thread's spare objects of one kind (read buffers, head vectors, request-future blocks, pipes), kept so
//! that a warm thread allocates nothing per request.
//!
//! A pool sized for a burst would otherwise hold the burst's memory for good: an idle proxy after 10,000
//! requests at once kept about 1 MiB of spares per thread. So the spares that no one took during a whole
//! housekeeping interval are given back; a busy thread keeps what it uses.

use std::cell::RefCell;

pub struct FreeList<T> {
    inner: RefCell<Inner<T>>,
    keep: usize,
}

struct Inner<T> {
    items: Vec<T>,
    /// The fewest items the list held since the last trim: that many at the bottom went unused.
    low: usize,
}

impl<T> FreeList<T> {
    /// Holds at most `keep` spares; beyond that, what is put back is dropped.
    pub fn new(keep: usize) -> FreeList<T> {
        FreeList { inner: RefCell::new(Inner { items: Vec::new(), low: 0 }), keep }
    }

    pub fn take(&self) -> Option<T> {
        let mut inner = self.inner.borrow_mut();
        let item = inner.items.pop();
        inner.low = inner.low.min(inner.items.len());
        item
    }

    /// Keeps `item` for the next [`take`](Self::take), or drops it if the list is full.
    pub fn put(&self, item: T) {
        let mut inner = self.inner.borrow_mut();
        if inner.items.len() < self.keep {
            inner.items.push(item);
        }
    }

    /// Drops the spares no one took since the last trim (the oldest, at the bottom); once a housekeeping
    /// interval.
    pub fn trim(&self) {
        let mut inner = self.inner.borrow_mut();
        let unused = inner.low.min(inner.items.len());
        inner.items.drain(..unused);
        if inner.items.is_empty() {
            inner.items = Vec::new();
        }
        inner.low = inner.items.len();
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inner.borrow().items.len()
    }
}

#[cfg(test)]
mod tests {
    use super::FreeList;

    #[test]
    fn spares_unused_for_a_whole_interval_are_given_back() {
        let list = FreeList::new(4);
        // A burst puts back six: four are kept, and they were in use this interval, so a trim keeps them.
        for i in 0..6 {
            list.put(i);
        }
        assert_eq!(list.len(), 4);
        list.trim();
        assert_eq!(list.len(), 4);
        // Two taken and put back during the next interval: the two never taken go.
        let (a, b) = (list.take().unwrap(), list.take().unwrap());
        list.put(a);
        list.put(b);
        list.trim();
        assert_eq!(list.len(), 2);
        assert_eq!((list.take(), list.take()), (Some(2), Some(3)), "the ones in use stay");
        list.put(3);
        list.put(2);
        // Taken this interval, they stay at its end; after an interval with none taken, they go, and the
        // list's own vector with them.
        list.trim();
        assert_eq!(list.len(), 2);
        list.trim();
        assert_eq!(list.len(), 0);
        assert_eq!(list.inner.borrow().items.capacity(), 0);
    }
}
