//! Per-thread pools of buffers: read buffers (an idle connection holds none, a busy one borrows one) and the
//! vectors heads are written into.

use bytes::BytesMut;

use super::free_list::FreeList;

pub struct Buffers {
    free: FreeList<BytesMut>,
    size: usize,
}

impl Buffers {
    pub fn new(size: usize, keep: usize) -> Buffers {
        Buffers { free: FreeList::new(keep), size }
    }

    pub fn get(&self) -> BytesMut {
        match self.free.take() {
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
        // Buffers that grew for a body are not kept: an idle thread should not sit on 64 KiB blocks.
        if (self.size / 2..=self.size * 4).contains(&b.capacity()) {
            self.free.put(b);
        }
    }

    /// Gives back the spares unused since the last call (see [`FreeList::trim`]).
    pub fn trim(&self) {
        self.free.trim();
    }
}

/// Per-thread spare vectors for the heads the proxy writes (a request to its server, a response to its
/// client): each is borrowed for one request and comes back when dropped, so a warm thread allocates none.
pub struct HeadBufs {
    free: FreeList<Vec<u8>>,
}

/// A head being written, borrowed from its thread's [`HeadBufs`].
pub struct HeadBuf<'p> {
    bytes: Vec<u8>,
    owner: &'p HeadBufs,
}

/// A head vector that grew past this (a head with very large fields) goes back to the allocator.
const LARGEST_KEPT_HEAD: usize = 16 << 10;

impl HeadBufs {
    pub fn new(keep: usize) -> HeadBufs {
        HeadBufs { free: FreeList::new(keep) }
    }

    /// An empty vector with room for at least `capacity` bytes.
    pub fn get(&self, capacity: usize) -> HeadBuf<'_> {
        let mut bytes = self.free.take().unwrap_or_default();
        bytes.reserve(capacity);
        HeadBuf { bytes, owner: self }
    }

    /// Gives back the spares unused since the last call (see [`FreeList::trim`]).
    pub fn trim(&self) {
        self.free.trim();
    }
}

impl std::ops::Deref for HeadBuf<'_> {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.bytes
    }
}

impl std::ops::DerefMut for HeadBuf<'_> {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }
}

impl Drop for HeadBuf<'_> {
    fn drop(&mut self) {
        if self.bytes.capacity() <= LARGEST_KEPT_HEAD {
            let mut bytes = std::mem::take(&mut self.bytes);
            bytes.clear();
            self.owner.free.put(bytes);
        }
    }
}
