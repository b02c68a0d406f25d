//! Runtime counters.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A snapshot of a runtime's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Dereferences served from local memory (on the fast path, or on the slow path without a fetch). Counted
    /// per scope and summed when the scope ends, so this figure is process-wide (all runtimes) and includes only
    /// finished scopes; 0 when built without the default `hit-stats` feature.
    pub hits: u64,
    /// Objects fetched from far memory (by dereference, fetch handle or prefetch).
    pub misses: u64,
    /// Dereferences that found the object being fetched by another thread and waited for that fetch.
    pub shared_misses: u64,
    /// Bytes fetched from far memory.
    pub bytes_in: u64,
    /// Bytes written to far memory (evacuator write-back, explicit write-back, non-temporal writes).
    pub bytes_out: u64,
    /// Evacuation cycles run.
    pub evac_cycles: u64,
    /// Hot objects the evacuator kept and compacted.
    pub compacted: u64,
    /// Cold dirty objects written back and evicted.
    pub written_back: u64,
    /// Cold clean objects dropped without a write.
    pub clean_drops: u64,
    /// Objects whose evacuation a mutator cancelled by touching them.
    pub evac_cancelled: u64,
    /// Nanoseconds evacuation cycles spent waiting for grace periods (summed over the threads that ran them).
    pub grace_wait_ns: u64,
    /// Regions reclaimed by the evacuator.
    pub regions_freed: u64,
    /// Objects freed.
    pub frees: u64,
    /// Remote copies deleted in memd.
    pub remote_deletes: u64,
    /// Nanoseconds this runtime's allocations waited at the hard watermark.
    pub alloc_wait_ns: u64,
    /// Nanoseconds outermost scopes (any runtime) waited at entry for a hard watermark.
    pub scope_wait_ns: u64,
    /// Nanoseconds dereferences waited for an object held by someone else (being moved, fetched or freed).
    pub busy_wait_ns: u64,
    /// Region allocations beyond the budget (inside scopes, at the hard watermark).
    pub overflow_regions: u64,
    /// Most regions in use at once.
    pub peak_regions: u64,
    /// Regions in use now.
    pub regions_in_use: u64,
    /// Bytes of one region.
    pub region_size: u64,
    /// Failed write-backs (objects stayed local).
    pub writeback_errors: u64,
}

impl Stats {
    /// Nanoseconds mutators spent waiting in all (allocation, scope entry, busy objects).
    pub fn mutator_wait_ns(&self) -> u64 {
        self.alloc_wait_ns + self.scope_wait_ns + self.busy_wait_ns
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub misses: AtomicU64,
    pub shared_misses: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub evac_cycles: AtomicU64,
    pub compacted: AtomicU64,
    pub written_back: AtomicU64,
    pub clean_drops: AtomicU64,
    pub evac_cancelled: AtomicU64,
    pub grace_wait_ns: AtomicU64,
    pub regions_freed: AtomicU64,
    pub frees: AtomicU64,
    pub remote_deletes: AtomicU64,
    pub busy_wait_ns: AtomicU64,
    pub writeback_errors: AtomicU64,
}

impl Counters {
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }
    pub(crate) fn add_usize(c: &AtomicU64, n: usize) {
        c.fetch_add(n as u64, Relaxed);
    }
}
