//! The global allocator, mimalloc, and how a thread gives its free memory back to the OS.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// Every block mimalloc hands out is aligned to a machine word: its size classes are whole
/// words and its pages start aligned. mimalloc's own `mi_realloc_aligned` takes its plain
/// path for an alignment up to this.
const WORD: usize = std::mem::size_of::<usize>();

/// mimalloc as the global allocator.
///
/// A request makes dozens of small, short-lived allocations (header maps, futures, buffers);
/// mimalloc serves them from thread-local pages at a fraction of glibc malloc's cost.
///
/// A layout that needs no more than a word's alignment (nearly all of them: bytes, strings,
/// header maps) goes to `mi_malloc`. Only a larger alignment goes to `mi_malloc_aligned`, whose
/// fallback for a block that is not a power of two in size, or not on its size class's free
/// list at that moment, over-allocates by the alignment, takes a larger size class, and marks
/// the page as holding interior pointers, which sends every later free in that page down
/// mimalloc's slow path. Through `mi_malloc_aligned` alone, that fallback ran for about one
/// allocation in four of a proxied request.
pub struct Allocator;

// SAFETY: every block comes from mimalloc and goes back to it; a block from `mi_malloc`,
// `mi_zalloc` or `mi_realloc` is word-aligned, which satisfies any layout sent there
// (`align <= WORD`); every other layout goes to mimalloc's aligned entry points.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            mi::mi_malloc(layout.size()).cast()
        } else {
            mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            mi::mi_zalloc(layout.size()).cast()
        } else {
            mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi::mi_free(ptr.cast::<c_void>())
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= WORD {
            mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
        } else {
            mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
        }
    }
}

#[global_allocator]
static ALLOCATOR: Allocator = Allocator;

/// Collect the calling thread's heap: free every page whose blocks are all free (blocks freed
/// by other threads included), then decommit every free range of the arenas at once instead
/// of after `purge_delay`. For [`fulcrum_proxy::memory`], which calls it on each worker after
/// client connections have fallen, never per request.
pub fn release_thread_memory() {
    // SAFETY: `mi_collect` only touches the calling thread's heap and mimalloc's own,
    // internally synchronised arena state; it takes no pointers.
    unsafe { mi::mi_collect(true) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every alignment a Rust type can ask for up to a page, at sizes on both sides of
    /// mimalloc's small-object limit, through each entry point: the block is aligned, writable
    /// to its size, and survives a reallocation with its contents.
    #[test]
    fn every_layout_gets_an_aligned_block_that_keeps_its_contents() {
        let sizes = [
            1, 3, 7, 8, 9, 15, 16, 17, 24, 40, 48, 100, 1000, 1025, 1500, 4096, 70_000,
        ];
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for &size in &sizes {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: non-zero sizes; each block is freed with the layout it was made with.
                unsafe {
                    let p = Allocator.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "alloc size {size} align {align}");
                    for i in 0..size {
                        p.add(i).write(i as u8);
                    }
                    let grown = size * 3 + 5;
                    let q = Allocator.realloc(p, layout, grown);
                    assert_eq!(q as usize % align, 0, "realloc size {size} align {align}");
                    for i in 0..size {
                        assert_eq!(q.add(i).read(), i as u8);
                    }
                    Allocator.dealloc(q, Layout::from_size_align(grown, align).unwrap());

                    let z = Allocator.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0, "zeroed size {size} align {align}");
                    assert!((0..size).all(|i| z.add(i).read() == 0));
                    Allocator.dealloc(z, layout);
                }
            }
        }
    }
}
