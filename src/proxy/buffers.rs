//! Per-thread pool of read buffers: an idle connection holds none, and a busy one borrows one.

use std::cell::RefCell;

use bytes::BytesMut;

pub struct Buffers {
    free: RefCell<Vec<BytesMut>>,
    size: usize,
    keep: usize,
}

impl Buffers {
    pub fn new(size: usize, keep: usize) -> Buffers {
        Buffers { free: RefCell::new(Vec::new()), size, keep }
    }

    pub fn get(&self) -> BytesMut {
        match self.free.borrow_mut().pop() {
            Some(mut b) => {
                b.clear();
                b.reserve(self.size);
                b
            }
            None => BytesMut::with_capacity(self.size),
        }
    }

    /// Returns a buffer; its unread bytes must already have been consumed.
    pub fn put(&self, b: BytesMut) {
        debug_assert!(b.is_empty());
        let mut free = self.free.borrow_mut();
        // Buffers that grew for a body are not kept: an idle thread should not sit on 64 KiB blocks.
        if (self.size / 2..=self.size * 4).contains(&b.capacity()) && free.len() < self.keep {
            free.push(b);
        }
    }
}
