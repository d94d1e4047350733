//! A global allocator that turns a memory bomb into a finding: any single request above
//! [`MAX_ONE`] or live memory above [`MAX_LIVE`] prints what was asked and aborts, so libFuzzer
//! (or the regression test) reports the input instead of the machine swapping or an allocation
//! that was never touched going unnoticed (RSS limits only see touched pages). The inputs are
//! small (libFuzzer's `-max_len`), so any of them reaching these sizes is a bomb.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The most one allocation may ask for: above what medkern's own input limits allow a
/// decoder (256 MiB) and what the largest fuzzed checkpoint (ResNet-34 trunk) needs.
pub const MAX_ONE: usize = 512 << 20;
/// The most that may be live at once.
pub const MAX_LIVE: usize = 2 << 30;

pub struct Capped;

static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Set once a cap is hit: the report below may allocate (the backtrace) without the caps.
static TRIPPED: AtomicBool = AtomicBool::new(false);

fn over(size: usize) -> ! {
    TRIPPED.store(true, Ordering::SeqCst);
    let live = LIVE.load(Ordering::Relaxed);
    eprintln!(
        "medkern-fuzz: allocation of {size} bytes with {live} live exceeds the fuzzing caps \
         ({MAX_ONE} bytes at once, {MAX_LIVE} live): a memory bomb\n{}",
        std::backtrace::Backtrace::force_capture()
    );
    std::process::abort()
}

fn reserve(size: usize) {
    if TRIPPED.load(Ordering::Relaxed) {
        return;
    }
    if size > MAX_ONE {
        over(size);
    }
    let before = LIVE.fetch_add(size, Ordering::Relaxed);
    if before + size > MAX_LIVE {
        over(size);
    }
}

// SAFETY: every call forwards to the system allocator with the same layout; the counters only
// observe sizes.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        reserve(layout.size());
        // SAFETY: forwarded contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        reserve(layout.size());
        // SAFETY: forwarded contract.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            reserve(new_size - layout.size());
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        // SAFETY: forwarded contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
