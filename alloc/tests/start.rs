//! FarAlloc's start-up paths without memd: a failing start serves locally, `set_local_only` keeps far memory
//! off, and a started heap returns freed blocks for reuse. (The default global allocator runs this binary;
//! the FarAllocs here are plain statics called directly.)

use farmem_alloc::config::AllocConfig;
use farmem_alloc::{AnonSpan, FarAlloc, StartError, Started};
use std::ptr;

const T: usize = 64 << 10;

fn fail(_: &AllocConfig) -> Result<Started, StartError> {
    Err(StartError::Region("no region in this test".into()))
}

fn anon(_: &AllocConfig) -> Result<Started, StartError> {
    Ok((Box::new(AnonSpan::new(1 << 30).map_err(|e| StartError::Region(e.to_string()))?), 8 << 20))
}

static FAILS: FarAlloc = FarAlloc::with_start(fail, T);
static OFF: FarAlloc = FarAlloc::with_start(anon, T);
static SMALL: FarAlloc = FarAlloc::with_start(anon, T);

#[test]
fn a_failed_start_serves_locally() {
    let p = FAILS.malloc(2 * T);
    assert!(!p.is_null());
    assert!(!FAILS.is_far(p) && !FAILS.is_started());
    assert_eq!(FAILS.threshold(), usize::MAX, "everything is local from now on");
    // SAFETY: p is live and freed once.
    unsafe { FAILS.free(p) };
    assert!(FAILS.heap_stats().is_none());
    assert!(FAILS.summary().contains("not used"));
}

#[test]
fn local_only_never_starts() {
    assert!(OFF.set_local_only());
    let p = OFF.calloc(4, T);
    assert!(!p.is_null() && !OFF.is_far(p));
    // SAFETY: p is live and freed once.
    unsafe { OFF.free(p) };
    assert!(!OFF.start_now());
}

#[test]
fn capacity_limit_and_reuse() {
    assert!(SMALL.start_now());
    // The limit is 8 MiB of live far blocks: the third 3 MiB block is served locally.
    let blocks: Vec<_> = (0..3).map(|_| SMALL.malloc(3 << 20)).collect();
    let far: Vec<bool> = blocks.iter().map(|&p| SMALL.is_far(p)).collect();
    assert_eq!(far, [true, true, false]);
    let s = SMALL.heap_stats().unwrap();
    assert_eq!((s.live_bytes, s.fallbacks), (6 << 20, 1));
    // SAFETY: live blocks, each freed once.
    unsafe { blocks.iter().for_each(|&p| SMALL.free(p)) };
    assert_eq!(SMALL.heap_stats().unwrap().live_bytes, 0);
    // Freed ranges coalesce: an 8 MiB block fits again, and reads as zeros.
    let q = SMALL.malloc(8 << 20);
    assert!(SMALL.is_far(q));
    // SAFETY: q holds 8 MiB.
    assert!(unsafe { std::slice::from_raw_parts(q.cast::<u8>(), 8 << 20) }.iter().all(|&b| b == 0));
    // SAFETY: live block.
    unsafe { SMALL.free(q) };
    // SAFETY: null is accepted.
    unsafe { SMALL.free(ptr::null_mut()) };
    assert!(SMALL.summary().contains("far bytes allocated"));
}
