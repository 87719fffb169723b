//! The `stackgate` binary: everything lives in the library; see `stackgate::cli`.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys::{
    mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned, mi_zalloc, mi_zalloc_aligned,
};

/// mimalloc instead of glibc malloc: every proxied request allocates and frees a handful
/// of small, short-lived buffers (header maps, futures, bodies), which mimalloc's
/// thread-local free lists serve in a fraction of glibc's instructions (see the README's
/// benchmark section for the measurement).
///
/// `mimalloc::MiMalloc` asks for every block through mimalloc's aligned entry points.
/// Those serve a block from the free lists directly only up to 1 KiB; a larger one (a
/// request's header map, an HTTP/2 stream's buffers) goes through their generic path,
/// about 130 instructions instead of 20. Every mimalloc block is aligned to 16 bytes
/// (8 below 16 bytes), so an alignment no larger than that and than the size, the rule
/// std's own allocator uses for `malloc`, needs no aligned call.
struct Allocator;

/// The alignment every mimalloc block of at least this size already has.
const MIN_ALIGN: usize = 16;

fn plain(layout: &Layout) -> bool {
    layout.align() <= MIN_ALIGN && layout.align() <= layout.size()
}

// SAFETY: each function forwards to mimalloc's own with the layout's size, and with its
// alignment unless `plain` holds, in which case mimalloc's blocks have it already (see
// above); every block is freed by `mi_free`, which takes blocks from any of them.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain(&layout) {
            mi_malloc(layout.size()).cast()
        } else {
            mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain(&layout) {
            mi_zalloc(layout.size()).cast()
        } else {
            mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi_free(ptr.cast::<c_void>());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= MIN_ALIGN && layout.align() <= new_size {
            mi_realloc(ptr.cast::<c_void>(), new_size).cast()
        } else {
            mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
        }
    }
}

#[global_allocator]
static GLOBAL: Allocator = Allocator;

fn main() -> std::process::ExitCode {
    stackgate::cli::main()
}

#[cfg(test)]
mod tests {
    use super::Allocator;
    use std::alloc::{GlobalAlloc, Layout};

    /// Every block has its layout's alignment, zeroed blocks are zero, and a block
    /// moved by `realloc` (growing past 1 KiB, shrinking, changing between the plain
    /// and the aligned path) keeps its bytes.
    #[test]
    fn blocks_have_their_alignment_and_keep_their_bytes() {
        let sizes = [1, 7, 8, 15, 16, 17, 100, 1024, 1025, 4096, 70_000];
        for align in [1, 2, 8, 16, 32, 64, 4096] {
            for size in sizes {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: non-zero sizes; each block is freed with its own layout.
                unsafe {
                    let zeroed = Allocator.alloc_zeroed(layout);
                    assert!(!zeroed.is_null() && (zeroed as usize).is_multiple_of(align), "{size} {align}");
                    assert!(std::slice::from_raw_parts(zeroed, size).iter().all(|&b| b == 0));
                    Allocator.dealloc(zeroed, layout);
                    let mut p = Allocator.alloc(layout);
                    assert!(!p.is_null() && (p as usize).is_multiple_of(align), "{size} {align}");
                    let mut held = size;
                    std::ptr::write_bytes(p, 0xA5, held);
                    for new_size in sizes {
                        p = Allocator.realloc(p, Layout::from_size_align(held, align).unwrap(), new_size);
                        assert!(!p.is_null() && (p as usize).is_multiple_of(align), "{size} {align} -> {new_size}");
                        let kept = held.min(new_size);
                        assert!(std::slice::from_raw_parts(p, kept).iter().all(|&b| b == 0xA5));
                        std::ptr::write_bytes(p, 0xA5, new_size);
                        held = new_size;
                    }
                    Allocator.dealloc(p, Layout::from_size_align(held, align).unwrap());
                }
            }
        }
    }
}
