//! Recycled heap blocks for the future of one request.
//!
//! A connection's task holds only what it needs while idle; the head, the exchange and their nested futures
//! (several KiB) live on the heap while a request is in flight. `Box::pin` would allocate and free that block
//! for every request; a thread keeps freed blocks here instead and reuses them, so a warm thread allocates
//! nothing per request.

use std::alloc::{self, Layout};
use std::future::Future;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

use super::free_list::FreeList;

/// Every block has this layout: the largest request future fits (checked when each one is built).
const BLOCK: Layout = match Layout::from_size_align(4096, 64) {
    Ok(layout) => layout,
    Err(_) => panic!("a valid layout"),
};

/// Free blocks of one thread.
pub struct Frames {
    free: FreeList<Block>,
}

/// A free block, deallocated when dropped.
struct Block(NonNull<u8>);

impl Block {
    fn new() -> Block {
        // SAFETY: BLOCK has a non-zero size.
        let raw = unsafe { alloc::alloc(BLOCK) };
        Block(NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(BLOCK)))
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        // SAFETY: every block was allocated with BLOCK, and a `Block` is one no future uses.
        unsafe { alloc::dealloc(self.0.as_ptr(), BLOCK) };
    }
}

/// A future pinned in a block of its thread's [`Frames`]; the block goes back when this is dropped.
pub struct Frame<'f, F: Future> {
    future: NonNull<F>,
    frames: &'f Frames,
}

impl Frames {
    /// Keeps at most `keep` free blocks; beyond that they go back to the allocator.
    pub fn new(keep: usize) -> Frames {
        Frames { free: FreeList::new(keep) }
    }

    /// Builds a future with `make` into a block: a reused one, or a new one if none is free.
    ///
    /// A closure rather than the future itself: a future passed by value is built on the caller's stack and
    /// then copied whole (its largest state, several KiB) into the block for every request. With this function
    /// and `make` inlined, the compiler writes the new future straight into the block (no such copy is left in
    /// the release build; bench/README.md counts what it saved).
    #[inline(always)]
    pub fn pin<F: Future>(&self, make: impl FnOnce() -> F) -> Frame<'_, F> {
        const {
            assert!(size_of::<F>() <= BLOCK.size() && align_of::<F>() <= BLOCK.align(), "a request future fits");
        }
        let block = self.free.take().unwrap_or_else(Block::new);
        let future_ptr = block.0.cast::<F>();
        // SAFETY: the block is BLOCK-sized and aligned, which holds an F (checked above), and no one else
        // uses it: it was just allocated or taken off the free list. Should `make` panic, `block` still owns
        // the memory and frees it.
        unsafe { future_ptr.as_ptr().write(make()) };
        // The block is the Frame's now, until it drops the future and gives the block back.
        std::mem::forget(block);
        Frame { future: future_ptr, frames: self }
    }

    /// Gives back the blocks unused since the last call (see [`FreeList::trim`]).
    pub fn trim(&self) {
        self.free.trim();
    }
}

impl<F: Future> Future for Frame<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: the future was written into its block in `pin` and stays there, never moved, until `drop`
        // drops it in place: it is pinned for its whole life.
        unsafe { Pin::new_unchecked(&mut *self.future.as_ptr()) }.poll(cx)
    }
}

impl<F: Future> Drop for Frame<'_, F> {
    fn drop(&mut self) {
        // SAFETY: the future is live (written in `pin`, dropped only here) and is not used again.
        unsafe { std::ptr::drop_in_place(self.future.as_ptr()) };
        self.frames.free.put(Block(self.future.cast()));
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use super::Frames;

    /// Counts its drops, so a test can see a future dropped exactly once.
    struct Dropped(Rc<Cell<u32>>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.set(self.0.get() + 1);
        }
    }

    #[test]
    fn a_block_is_reused_and_every_future_dropped_once() {
        let frames = Frames::new(1);
        let drops = Rc::new(Cell::new(0));
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut blocks = Vec::new();
        for i in 0..3u64 {
            let held = Dropped(drops.clone());
            let frame = frames.pin(|| async move {
                let _held = held;
                tokio::task::yield_now().await;
                i * 2
            });
            blocks.push(frame.future.as_ptr() as usize);
            assert_eq!(rt.block_on(frame), i * 2);
        }
        assert_eq!(drops.get(), 3, "each future's state dropped once");
        assert!(blocks.windows(2).all(|w| w[0] == w[1]), "one block served all three: {blocks:x?}");
        // A future dropped before it finished still drops what it holds, and its block is kept.
        let unfinished = frames.pin(|| {
            let held = Dropped(drops.clone());
            async move {
                let _held = held;
                std::future::pending::<()>().await
            }
        });
        drop(unfinished);
        assert_eq!(drops.get(), 4);
        assert_eq!(frames.free.len(), 1);
    }
}
