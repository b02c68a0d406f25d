//! Clean pages are evicted by dropping them in place, with no copy-out: races of that drop with readers, writers
//! and releases of the same pages, under a budget so small that almost every access meets an eviction, checked
//! against a shadow copy. A lost wake-up or a page left mapped behind the region's back shows up as a thread that
//! never finishes, which the watchdog reports (it bounds a hang, it does not time anything).
mod common;
use common::*;
use farmem_uffd::{Region, RegionConfig};
use std::sync::Arc;

const PAGES: usize = 512;
const BUDGET: usize = 16;
const WORKERS: usize = 3;

fn word(r: &Region, p: usize, w: usize) -> *mut u64 {
    assert!(p < PAGES && w < PS / 8);
    r.base().wrapping_add(p * PS + w * 8).cast()
}

/// Random reads, writes and release-then-touch on the pages `p % WORKERS == lane`, checked against a shadow.
/// Most accesses read (so most victims are clean); a release is followed at once by a read and a write of the
/// released page, which is then most likely still being evicted.
fn worker(r: &Region, lane: usize, seed: u64, ops: usize) {
    let mut rng = Rng(seed);
    let mine: Vec<usize> = (0..PAGES).filter(|p| p % WORKERS == lane).collect();
    let mut shadow: Vec<[u64; 2]> = mine.iter().map(|&p| [p as u64 + 1, !(p as u64)]).collect();
    for _ in 0..ops {
        let i = rng.below(mine.len());
        let p = mine[i];
        let w = rng.below(2);
        let at = if w == 0 { 0 } else { PS / 8 - 1 };
        match rng.below(100) {
            0..=69 => {
                // SAFETY: inside the region, 8-byte aligned; only this lane touches page `p`.
                let got = unsafe { word(r, p, at).read_volatile() };
                assert_eq!(got, shadow[i][w], "lane {lane}: page {p} word {at}");
            }
            70..=89 => {
                let v = rng.word() | 1;
                // SAFETY: as above.
                unsafe { word(r, p, at).write_volatile(v) };
                shadow[i][w] = v;
            }
            _ => {
                r.release(p * PS, PS).unwrap();
                // SAFETY: as above.
                let got = unsafe { word(r, p, at).read_volatile() };
                assert_eq!(got, 0, "lane {lane}: released page {p} word {at}");
                let v = rng.word() | 1;
                // SAFETY: as above.
                unsafe { word(r, p, at).write_volatile(v) };
                shadow[i] = [0, 0];
                shadow[i][w] = v;
            }
        }
    }
    for (i, &p) in mine.iter().enumerate() {
        for (w, at) in [(0, 0), (1, PS / 8 - 1)] {
            // SAFETY: as above.
            let got = unsafe { word(r, p, at).read_volatile() };
            assert_eq!(got, shadow[i][w], "final check: lane {lane}: page {p} word {at}");
        }
    }
}

fn run(readahead: bool, move_eviction: bool, seed: u64) {
    let store = Arc::new(farmem_memd::MemStore::new(1 << 30));
    let cfg = RegionConfig {
        size: PAGES * PS,
        local_mem: BUDGET * PS,
        handler_threads: 2,
        readahead,
        move_eviction,
        // Every clean victim is dropped in place, however short its run: the race under test.
        clean_drop_run: 1,
        ..RegionConfig::default()
    };
    let Some(r) = region_with(cfg, store) else { return };
    for p in 0..PAGES {
        // SAFETY: inside the region; no other thread yet.
        unsafe {
            word(&r, p, 0).write_volatile(p as u64 + 1);
            word(&r, p, PS / 8 - 1).write_volatile(!(p as u64));
        }
    }
    let r = Arc::new(r);
    run_lanes(&r, WORKERS, move |r, lane| worker(r, lane, seed * 10 + lane as u64, 20_000));
    let s = r.stats();
    eprintln!("{s:?}");
    assert!(s.clean_drops > 1000 && s.released_pages > 100, "the test must drop clean pages and release: {s:?}");
    assert!(s.peak_resident_pages <= s.budget_pages && s.poisoned_pages == 0, "{s:?}");
}

#[test]
fn clean_drops_race_with_reads_writes_and_releases() {
    for seed in 1..=2 {
        run(false, true, seed);
    }
}

#[test]
fn clean_drops_race_with_readahead_and_releases() {
    for seed in 3..=4 {
        run(true, true, seed);
    }
}

/// Without `UFFDIO_MOVE` dirty victims are evicted in place too: the eviction thread reads them for write-back
/// while the program releases and touches them again.
#[test]
fn all_victims_in_place_race_with_reads_writes_and_releases() {
    for seed in 5..=6 {
        run(true, false, seed);
    }
}

/// With the default `clean_drop_run`, a sequential read-only scan's clean victims leave in long runs dropped in
/// place, and random reads' scattered clean victims are moved out; the data reads back right either way.
#[test]
fn long_clean_runs_are_dropped_in_place_and_scattered_ones_moved() {
    const N: usize = 4096;
    let store = Arc::new(farmem_memd::MemStore::new(1 << 30));
    let cfg = RegionConfig { size: N * PS, local_mem: 1024 * PS, readahead: true, ..RegionConfig::default() };
    let Some(r) = region_with(cfg, store) else { return };
    let at = |p: usize| r.base().wrapping_add(p * PS).cast::<u64>();
    for p in 0..N {
        // SAFETY: inside the region.
        unsafe { at(p).write_volatile(p as u64 * 3 + 1) };
    }
    let s0 = r.stats();
    for pass in 0..2 {
        for p in 0..N {
            // SAFETY: inside the region.
            assert_eq!(unsafe { at(p).read_volatile() }, p as u64 * 3 + 1, "pass {pass} page {p}");
        }
    }
    let s1 = r.stats();
    let mut rng = Rng(9);
    for _ in 0..20_000 {
        let p = rng.below(N);
        // SAFETY: inside the region.
        assert_eq!(unsafe { at(p).read_volatile() }, p as u64 * 3 + 1, "random read of page {p}");
    }
    let s2 = r.stats();
    eprintln!("{s0:?}\n{s1:?}\n{s2:?}");
    assert!(s1.evicted_in_place - s0.evicted_in_place > 1000, "the scans dropped clean runs in place: {s1:?}");
    assert!(s2.evicted_moved - s1.evicted_moved > 1000, "random reads moved scattered clean victims: {s2:?}");
    // Each page was dirty once (the fill) and is written back once; clean victims are never written.
    assert_eq!(s2.pages_written, N as u64, "clean pages are never written back: {s2:?}");
    assert!(s2.peak_resident_pages <= s2.budget_pages && s2.poisoned_pages == 0, "{s2:?}");
}
