//! Shared helpers for the region tests.
#![allow(dead_code)]

use farmem_memd::{FarStore, MemStore};
use farmem_uffd::{Region, RegionConfig, RegionError};
use std::sync::Arc;

pub const PS: usize = farmem_uffd::PAGE_SIZE;

/// A region of `pages` pages with a budget of `budget` pages over an in-process store, or `None` (with a
/// message) when userfaultfd is unavailable and CI is unset. Under CI=true unavailability fails the test.
pub fn region(pages: usize, budget: usize, readahead: bool) -> Option<(Region, Arc<MemStore>)> {
    let store = Arc::new(MemStore::new(1 << 30));
    region_on(pages, budget, readahead, store.clone() as Arc<dyn FarStore>).map(|r| (r, store))
}

pub fn region_on(pages: usize, budget: usize, readahead: bool, store: Arc<dyn FarStore>) -> Option<Region> {
    let cfg = RegionConfig {
        size: pages * PS,
        local_mem: budget * PS,
        handler_threads: 2,
        readahead,
        ..RegionConfig::default()
    };
    region_with(cfg, store)
}

/// A region with configuration `cfg`, or `None` as for [`region`].
pub fn region_with(cfg: RegionConfig, store: Arc<dyn FarStore>) -> Option<Region> {
    match Region::new(cfg, store) {
        Ok(r) => Some(r),
        Err(e @ (RegionError::Uffd(_) | RegionError::Unsupported(_))) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("userfaultfd is required under CI=true: {e}");
            }
            eprintln!("skipping: userfaultfd unavailable here ({e})");
            None
        }
        Err(e) => panic!("region creation failed: {e}"),
    }
}

/// A small deterministic generator (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(pub u64);
impl Rng {
    pub fn word(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.word() % n as u64).unwrap_or(0)
    }
}

/// The byte every byte of page `p` holds after `fill(.., tag)`: never zero.
pub fn tag_byte(tag: u8, p: usize) -> u8 {
    tag.wrapping_add(u8::try_from(p % 256).unwrap_or(0)) | 1
}

/// Runs `lane(&region, lane)` on `workers` threads at once and waits for all of them, failing the test with the
/// region's stats if one has not finished after 120 s (a hang) and with its panic if one panicked.
pub fn run_lanes(r: &Arc<Region>, workers: usize, lane: impl Fn(&Region, usize) + Send + Sync + 'static) {
    let lane = Arc::new(lane);
    let (tx, rx) = std::sync::mpsc::channel();
    let hs: Vec<_> = (0..workers)
        .map(|i| {
            let (r, tx, lane) = (Arc::clone(r), tx.clone(), Arc::clone(&lane));
            std::thread::spawn(move || {
                lane(&r, i);
                let _ = tx.send(i);
            })
        })
        .collect();
    drop(tx);
    for _ in 0..workers {
        match rx.recv_timeout(std::time::Duration::from_secs(120)) {
            Ok(_) => {}
            // A panicking worker drops its sender without sending: its join below reports the panic.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("a worker never finished (hang): {:?}", r.stats())
            }
        }
    }
    for h in hs {
        h.join().unwrap();
    }
}
