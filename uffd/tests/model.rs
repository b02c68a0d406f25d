//! Model-based tests: random reads, writes and releases over a region 8× its budget, checked against a shadow
//! copy, from one and from four threads.
mod common;
use common::*;
use farmem_uffd::Region;
use std::sync::Arc;

const PAGES: usize = 512;
const BUDGET: usize = 64;

fn word(r: &Region, off: usize) -> *mut u64 {
    assert!(off + 8 <= r.len());
    r.base().wrapping_add(off).cast()
}

/// Runs `ops` random operations on the pages `p` with `p % stride == lane`, against a shadow of those pages.
fn run_lane(r: &Region, seed: u64, ops: usize, lane: usize, stride: usize, releases: bool) {
    let mut rng = Rng(seed);
    let mine: Vec<usize> = (0..PAGES).filter(|p| p % stride == lane).collect();
    let mut shadow = vec![0u64; mine.len() * PS / 8];
    for _ in 0..ops {
        let i = rng.below(mine.len());
        let w = rng.below(PS / 8);
        let off = mine[i] * PS + w * 8;
        match rng.below(100) {
            0..=44 => {
                let v = rng.word();
                // SAFETY: `off` is inside the region and 8-byte aligned; only this lane touches this page.
                unsafe { word(r, off).write_volatile(v) };
                shadow[i * PS / 8 + w] = v;
            }
            45..=97 => {
                // SAFETY: as above.
                let got = unsafe { word(r, off).read_volatile() };
                assert_eq!(got, shadow[i * PS / 8 + w], "lane {lane}: page {} word {w}", mine[i]);
            }
            _ if releases && stride == 1 => {
                // Release a run of up to 8 pages.
                let n = 1 + rng.below(8).min(mine.len() - 1 - i);
                r.release(mine[i] * PS, n * PS).unwrap();
                shadow[i * PS / 8..(i + n) * PS / 8].fill(0);
            }
            _ if releases => {
                r.release(mine[i] * PS, PS).unwrap();
                shadow[i * PS / 8..(i + 1) * PS / 8].fill(0);
            }
            _ => {}
        }
    }
    // Every word of every page at the end.
    for (i, &p) in mine.iter().enumerate() {
        for w in 0..PS / 8 {
            // SAFETY: inside the region.
            let got = unsafe { word(r, p * PS + w * 8).read_volatile() };
            assert_eq!(got, shadow[i * PS / 8 + w], "final check: lane {lane}: page {p} word {w}");
        }
    }
}

fn check_budget(r: &Region) {
    let s = r.stats();
    assert!(s.peak_resident_pages <= BUDGET as u64, "{s:?}");
    assert_eq!(s.poisoned_pages, 0, "{s:?}");
}

#[test]
fn one_thread_random_ops_match_shadow() {
    for (seed, ra) in [(1, false), (2, true), (3, true)] {
        let Some((r, _s)) = region(PAGES, BUDGET, ra) else { return };
        run_lane(&r, seed, 40_000, 0, 1, true);
        let s = r.stats();
        eprintln!("{s:?}");
        assert!(s.pages_written > 0 && s.pages_fetched > 0, "the test must evict and fetch: {s:?}");
        check_budget(&r);
    }
}

#[test]
fn in_place_eviction_random_ops_match_shadow() {
    let store = Arc::new(farmem_memd::MemStore::new(1 << 30));
    let cfg = farmem_uffd::RegionConfig {
        size: PAGES * PS,
        local_mem: BUDGET * PS,
        move_eviction: false,
        ..farmem_uffd::RegionConfig::default()
    };
    let Some(r) = region_with(cfg, store) else { return };
    run_lane(&r, 5, 30_000, 0, 1, true);
    let s = r.stats();
    assert!(s.evicted_in_place > 1000 && s.evicted_moved == 0, "{s:?}");
    check_budget(&r);
}

#[test]
fn four_threads_random_ops_match_shadow() {
    for seed in [11u64, 12] {
        let Some((r, _s)) = region(PAGES, BUDGET, true) else { return };
        let r = Arc::new(r);
        let hs: Vec<_> = (0..4)
            .map(|lane| {
                let r = Arc::clone(&r);
                std::thread::spawn(move || run_lane(&r, seed * 100 + lane as u64, 20_000, lane, 4, true))
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        check_budget(&r);
    }
}

#[test]
fn sequential_sweeps_match_and_read_ahead() {
    let Some((r, _s)) = region(PAGES, BUDGET, true) else { return };
    for p in 0..PAGES {
        // SAFETY: inside the region.
        unsafe { word(&r, p * PS).write_volatile(p as u64 ^ 0xabcd) };
    }
    for pass in 0..2 {
        for p in 0..PAGES {
            // SAFETY: inside the region.
            let v = unsafe { word(&r, p * PS).read_volatile() };
            assert_eq!(v, p as u64 ^ 0xabcd, "pass {pass} page {p}");
        }
        // Backwards with a stride of 3 pages.
        for p in (0..PAGES).rev().step_by(3) {
            // SAFETY: inside the region.
            let v = unsafe { word(&r, p * PS).read_volatile() };
            assert_eq!(v, p as u64 ^ 0xabcd, "pass {pass} strided page {p}");
        }
    }
    let s = r.stats();
    assert!(s.readahead_pages > 0 && s.readahead_hits > 0, "{s:?}");
    check_budget(&r);
}

#[test]
fn streams_that_rewrite_what_they_read_get_writable_read_ahead_and_read_only_ones_stay_clean() {
    // Budget room enough for read-ahead windows of 32 pages and more (readahead keeps 1/16 of it in reserve).
    const PAGES: usize = 4096;
    const BUDGET: usize = 1024;
    let Some((r, _s)) = region(PAGES, BUDGET, true) else { return };
    let at = |p: usize| word(&r, p * PS + 8 * (p % 500));
    for p in 0..PAGES {
        // SAFETY: inside the region.
        unsafe { at(p).write_volatile(p as u64) };
    }
    // Read-only sweeps: read-ahead pages stay write-protected, so they are dropped clean. Only the dirty pages
    // the fill left resident are written back (at most the budget).
    let s0 = r.stats();
    for pass in 0..2 {
        for p in 0..PAGES {
            // SAFETY: inside the region.
            assert_eq!(unsafe { at(p).read_volatile() }, p as u64, "read pass {pass} page {p}");
        }
    }
    let s1 = r.stats();
    assert!(s1.readahead_pages - s0.readahead_pages >= PAGES as u64, "{s1:?}");
    assert_eq!(s1.readahead_writable, s0.readahead_writable, "read-only streams got writable pages: {s1:?}");
    assert_eq!(s1.predicted_writable, s0.predicted_writable, "read-only streams got writable pages: {s1:?}");
    assert!(s1.pages_written - s0.pages_written <= BUDGET as u64, "clean pages were written back: {s1:?}");
    // Read-modify-write sweeps: once a stream's triggers are seen written, its windows (and its demand reads)
    // come writable, so the writes take no write-protect fault (one per page before).
    for pass in 0..3u64 {
        for p in 0..PAGES {
            let w = at(p);
            // SAFETY: inside the region.
            let v = unsafe { w.read_volatile() };
            assert_eq!(v, p as u64 + pass, "rewrite pass {pass} page {p}");
            // SAFETY: inside the region.
            unsafe { w.write_volatile(v + 1) };
        }
    }
    let s2 = r.stats();
    let writes = 3 * PAGES as u64;
    let wp = s2.wp_faults - s1.wp_faults;
    let writable = s2.readahead_writable + s2.predicted_writable - s1.readahead_writable - s1.predicted_writable;
    assert!(writable >= writes / 2, "{writable} pages mapped writable ahead of {writes} rewrites: {s2:?}");
    assert!(wp < writes / 4, "{wp} write-protect faults for {writes} page rewrites: {s2:?}");
    // What was written, writable or not, survives eviction.
    for p in 0..PAGES {
        // SAFETY: inside the region.
        assert_eq!(unsafe { at(p).read_volatile() }, p as u64 + 3, "after the rewrites, page {p}");
    }
    let s = r.stats();
    assert!(s.peak_resident_pages <= BUDGET as u64 && s.poisoned_pages == 0, "{s:?}");
}

#[test]
fn random_ops_over_a_loopback_memd_match_shadow() {
    let server = farmem_memd::testing::TestServer::start(1 << 30);
    let client: Arc<dyn farmem_memd::FarStore> = Arc::new(server.client());
    let cfg = farmem_uffd::RegionConfig {
        size: PAGES * PS,
        local_mem: BUDGET * PS,
        handler_threads: 3,
        ..farmem_uffd::RegionConfig::default()
    };
    let Some(r) = region_with(cfg, client) else { return };
    let r = Arc::new(r);
    let hs: Vec<_> = (0..4)
        .map(|lane| {
            let r = Arc::clone(&r);
            std::thread::spawn(move || run_lane(&r, 77 + lane as u64, 8_000, lane, 4, true))
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    // A sequential pass over the network exercises pipelined readahead.
    for p in 0..PAGES {
        // SAFETY: inside the region.
        std::hint::black_box(unsafe { word(&r, p * PS).read_volatile() });
    }
    let s = r.stats();
    assert!(s.pages_fetched > 0 && s.pages_written > 0, "{s:?}");
    check_budget(&r);
}

/// Sequential streams over a loopback memd, so readahead batches are really in flight while faults arrive:
/// one thread reads its half of the region again and again, the other reads its half and releases pages just
/// ahead of itself (pages being fetched ahead, or held as triggers), which must read zeros, then rewrites them.
#[test]
fn streams_with_releases_ahead_over_a_loopback_memd_match_shadow() {
    const N: usize = 2048;
    let server = farmem_memd::testing::TestServer::start(1 << 30);
    let client: Arc<dyn farmem_memd::FarStore> = Arc::new(server.client());
    let cfg = farmem_uffd::RegionConfig {
        size: N * PS,
        local_mem: 192 * PS,
        max_readahead: 64,
        ..farmem_uffd::RegionConfig::default()
    };
    let Some(r) = region_with(cfg, client) else { return };
    let value = |p: usize, gen: u64| (p as u64) << 8 | gen;
    for p in 0..N {
        // SAFETY: inside the region.
        unsafe { word(&r, p * PS).write_volatile(value(p, 1)) };
    }
    let r = Arc::new(r);
    let reader = {
        let r = Arc::clone(&r);
        std::thread::spawn(move || {
            for pass in 0..4 {
                for p in 0..N / 2 {
                    // SAFETY: inside the region.
                    let v = unsafe { word(&r, p * PS).read_volatile() };
                    assert_eq!(v, value(p, 1), "reader pass {pass} page {p}");
                }
            }
        })
    };
    let mut shadow: Vec<u64> = (0..N).map(|p| value(p, 1)).collect();
    let half = N / 2;
    let check = |shadow: &[u64], what: &str| {
        for (p, &want) in shadow.iter().enumerate().skip(half) {
            // SAFETY: inside the region.
            let v = unsafe { word(&r, p * PS).read_volatile() };
            assert_eq!(v, want, "{what}: page {p}");
        }
    };
    for round in 0..3u64 {
        let mut pos = half;
        while pos < N {
            let end = (pos + 32).min(N);
            for (p, &want) in shadow.iter().enumerate().take(end).skip(pos) {
                // SAFETY: inside the region.
                let v = unsafe { word(&r, p * PS).read_volatile() };
                assert_eq!(v, want, "round {round} page {p}");
            }
            // Release a stretch just ahead, which readahead is likely fetching or holding right now.
            let (a, b) = (end + 8, (end + 24).min(N));
            if a < b {
                r.release(a * PS, (b - a) * PS).unwrap();
                shadow[a..b].fill(0);
            }
            pos = end;
        }
        check(&shadow, "after releases");
        for (p, v) in shadow.iter_mut().enumerate().skip(half) {
            if *v == 0 {
                *v = value(p, round + 2);
                // SAFETY: inside the region.
                unsafe { word(&r, p * PS).write_volatile(*v) };
            }
        }
        check(&shadow, "after rewrites");
    }
    reader.join().unwrap();
    let s = r.stats();
    assert!(s.readahead_pages > 0 && s.released_pages > 0, "{s:?}");
    assert!(s.peak_resident_pages <= s.budget_pages && s.poisoned_pages == 0, "{s:?}");
}
