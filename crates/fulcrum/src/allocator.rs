//! The global allocator, mimalloc, and how a thread gives its free memory back to the OS.
#![allow(unsafe_code)]

/// A request makes dozens of small, short-lived allocations (header maps, futures, buffers);
/// mimalloc serves them from thread-local pages at a fraction of glibc malloc's cost.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Collect the calling thread's heap: free every page whose blocks are all free (blocks freed
/// by other threads included), then decommit every free range of the arenas at once instead
/// of after `purge_delay`. For [`fulcrum_proxy::memory`], which calls it on each worker after
/// client connections have fallen, never per request.
pub fn release_thread_memory() {
    // SAFETY: `mi_collect` only touches the calling thread's heap and mimalloc's own,
    // internally synchronised arena state; it takes no pointers.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
