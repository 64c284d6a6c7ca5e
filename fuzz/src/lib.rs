//! Helpers shared by the fuzz targets: an allocation meter (to catch a
//! length or count field that makes the code allocate far more than the
//! input could justify), a deterministic way to cut the input into reads,
//! and the byte comparison used by the round-trip checks.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use bytes::BytesMut;

/// Counts live heap bytes and their peak. libFuzzer's own allocations go
/// through C `malloc` and are not counted.
pub struct Metered;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Metered {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Relaxed);
            grew(new_size);
        }
        p
    }
}

fn grew(n: usize) {
    let now = LIVE.fetch_add(n, Relaxed) + n;
    PEAK.fetch_max(now, Relaxed);
}

#[global_allocator]
static ALLOC: Metered = Metered;

/// Run `f` and fail if it ever held more than a generous multiple of the
/// input size on the heap: decoders must reject absurd counts and lengths
/// before allocating for them.
pub fn bounded_alloc<R>(input_len: usize, f: impl FnOnce() -> R) -> R {
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    let r = f();
    let used = PEAK.load(Relaxed).saturating_sub(base);
    let limit = 64 * input_len + (1 << 20);
    assert!(used <= limit, "peak heap {used} bytes for a {input_len}-byte input (limit {limit})");
    r
}

/// Read sizes (1..=64) derived from the input itself, so a given input is
/// always cut the same way and the fuzzer can steer the cuts.
pub fn read_sizes(data: &[u8]) -> impl Iterator<Item = usize> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data.iter().take(64) {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    std::iter::repeat_with(move || {
        h ^= h << 13;
        h ^= h >> 7;
        h ^= h << 17;
        1 + (h % 64) as usize
    })
}

/// `ours` is a re-encoding of `theirs`: same bytes except where a C `bool`
/// was sent as a byte above 1 (decoded as true, re-encoded as 1).
pub fn same_but_bools(theirs: &[u8], ours: &[u8]) -> bool {
    theirs.len() == ours.len() && theirs.iter().zip(ours).all(|(&t, &o)| t == o || (o == 1 && t > 1))
}

/// The bytes one encoder call appends.
pub fn encoded(f: impl FnOnce(&mut BytesMut)) -> BytesMut {
    let mut b = BytesMut::new();
    f(&mut b);
    b
}
