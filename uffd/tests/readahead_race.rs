//! Readahead installs racing with the program: several threads stream through their own blocks of a region far
//! larger than the budget (so readahead batches are being mapped while eviction takes pages back), write into
//! pages just installed, and release stretches just ahead of themselves — with `Region::release` and with their
//! own `madvise(DONTNEED)`, whose REMOVE event only the event thread sees — while those pages are being fetched and
//! mapped. Every read is checked against a shadow copy: a lost write, or a released page that reads anything but
//! zeros (a copy mapped after its release's zap), fails the test. A thread left waiting for ever (a write-protect
//! fault on a page woken before it was marked present) shows up as a worker that never finishes, which the
//! watchdog reports (it bounds a hang, it does not time anything). (Written for installer threads, tried on branch
//! `s7-scan-installers`, where it fails without their gate, without their check for released pages, or without
//! their wake-up after marking pages present.)
mod common;
use common::*;
use farmem_uffd::{Region, RegionConfig};
use std::sync::Arc;

/// Pages per worker: a contiguous block, so that each worker's reads form a sequential stream.
const BLOCK: usize = 1024;
const WORKERS: usize = 3;
const BUDGET: usize = 256;

fn word(r: &Region, p: usize, w: usize) -> *mut u64 {
    assert!(p < BLOCK * WORKERS && w < PS / 8);
    r.base().wrapping_add(p * PS + w * 8).cast()
}

fn value(p: usize, gen: u64) -> u64 {
    (p as u64) << 20 | gen
}

/// Releases pages `[a, b)` of the region, alternating the region's own call and the program's `madvise`.
fn release(r: &Region, a: usize, b: usize, by_madvise: bool) {
    if by_madvise {
        // SAFETY: the range lies inside the region and only this worker touches its pages; their contents are
        // given up on purpose.
        let rc = unsafe { libc::madvise(r.base().wrapping_add(a * PS).cast(), (b - a) * PS, libc::MADV_DONTNEED) };
        assert_eq!(rc, 0, "madvise failed: {}", std::io::Error::last_os_error());
    } else {
        r.release(a * PS, (b - a) * PS).unwrap();
    }
}

/// Streams through block `lane` `passes` times. Each pass reads every page (first and last word) in order and
/// checks it; every few pages it writes a fresh value into the page just read, and now and then releases a
/// stretch 8-40 pages ahead, which readahead is most likely fetching or mapping at that moment.
fn worker(r: &Region, lane: usize, seed: u64, passes: usize) {
    let mut rng = Rng(seed);
    let first = lane * BLOCK;
    let mut shadow: Vec<[u64; 2]> = (first..first + BLOCK).map(|p| [value(p, 1), !value(p, 1)]).collect();
    let last = PS / 8 - 1;
    for pass in 0..passes {
        let mut k = 0;
        while k < BLOCK {
            let p = first + k;
            for (w, at) in [(0, 0), (1, last)] {
                // SAFETY: inside the region, 8-byte aligned; only this worker touches page `p`.
                let got = unsafe { word(r, p, at).read_volatile() };
                assert_eq!(got, shadow[k][w], "lane {lane} pass {pass}: page {p} word {at}");
            }
            match rng.below(64) {
                0..=9 => {
                    let v = rng.word() | 1;
                    // SAFETY: as above.
                    unsafe { word(r, p, last).write_volatile(v) };
                    shadow[k][1] = v;
                }
                10 => {
                    let a = k + 8 + rng.below(16);
                    let b = (a + 1 + rng.below(16)).min(BLOCK);
                    if a < b {
                        release(r, first + a, first + b, rng.below(2) == 0);
                        shadow[a..b].fill([0, 0]);
                    }
                }
                _ => {}
            }
            k += 1;
        }
        // Released pages come back with fresh contents, so the next pass streams over data memd holds again.
        for (k, s) in shadow.iter_mut().enumerate() {
            if *s == [0, 0] {
                let p = first + k;
                *s = [value(p, pass as u64 + 2), !value(p, pass as u64 + 2)];
                // SAFETY: as above.
                unsafe {
                    word(r, p, 0).write_volatile(s[0]);
                    word(r, p, last).write_volatile(s[1]);
                }
            }
        }
    }
}

fn run(store: Arc<dyn farmem_memd::FarStore>, seed: u64) {
    let cfg = RegionConfig {
        size: BLOCK * WORKERS * PS,
        local_mem: BUDGET * PS,
        handler_threads: 2,
        readahead: true,
        max_readahead: 128,
        ..RegionConfig::default()
    };
    let Some(r) = region_with(cfg, store) else { return };
    for p in 0..BLOCK * WORKERS {
        // SAFETY: inside the region; no other thread yet.
        unsafe {
            word(&r, p, 0).write_volatile(value(p, 1));
            word(&r, p, PS / 8 - 1).write_volatile(!value(p, 1));
        }
    }
    let r = Arc::new(r);
    run_lanes(&r, WORKERS, move |r, lane| worker(r, lane, seed * 10 + lane as u64, 8));
    let s = r.stats();
    eprintln!("{s:?}");
    assert!(s.readahead_pages > 5000 && s.released_pages > 100, "the test must read ahead and release: {s:?}");
    assert!(s.wp_faults > 100 && s.clean_drops > 1000, "the test must write and evict: {s:?}");
    assert!(s.peak_resident_pages <= s.budget_pages && s.poisoned_pages == 0, "{s:?}");
}

/// Over a loopback memd, so that replies arrive while installs, faults and releases go on.
#[test]
fn readahead_races_with_evictions_writes_and_releases_over_loopback() {
    let server = farmem_memd::testing::TestServer::start(1 << 30);
    for seed in 1..=2 {
        run(Arc::new(server.client()), seed);
    }
}

/// Over the in-process store, whose replies are ready at once: installs follow faults as closely as they can.
#[test]
fn readahead_races_with_evictions_writes_and_releases_in_process() {
    for seed in 3..=4 {
        run(Arc::new(farmem_memd::MemStore::new(1 << 30)), seed);
    }
}
