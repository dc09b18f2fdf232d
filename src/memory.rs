//! Memory the proxy holds but does not use. Two habits of the allocator inflated the resident size of a
//! proxy holding many idle connections:
//!
//! - mimalloc (the binary's global allocator) reserves its arena in 2 MiB-aligned ranges, which the kernel
//!   backs with transparent huge pages where THP is `always` (Debian's default): a few live bytes kept a whole
//!   2 MiB page resident. Without THP, shoal starts at 7.5 MB instead of 18 and 10,000 idle connections
//!   cost 0.93 KiB each instead of 1.15 (bench/compare.sh idle10k).
//! - It keeps freed pages for a while before returning them (a second by default, ten for whole arena ranges),
//!   and returns them only when the heap is next used: a burst's buffers stayed resident in a proxy that then
//!   went quiet. The delay is 10 ms here, and each data-plane thread collects once a second.

/// `mi_option_purge_delay` in mimalloc.h (v3), not among libmimalloc-sys's named options.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// No transparent huge pages for this process; freed pages go back to the system after 10 ms (arena ranges
/// after 100 ms), mimalloc 2's default. Called first thing by `shoal proxy` only: the THP flag is inherited,
/// and the processes the agent supervises keep the system's policy.
pub fn tune() {
    // SAFETY: prctl with an integer flag; it fails harmlessly on kernels without THP.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    // SAFETY: sets an option by its index in mimalloc's enum; any value is valid for this one.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10) }
}

/// Returns this thread's freed pages whose purge delay has passed. Cheap: it visits the thread's pages once.
pub fn return_freed() {
    // SAFETY: mi_collect only walks the calling thread's heap.
    unsafe { libmimalloc_sys::mi_collect(false) }
}
