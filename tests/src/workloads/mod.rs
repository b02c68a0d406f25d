//! The four evaluation workloads, each in the shapes the modes need.
//!
//! `local` code uses std collections; the `paging` and `swap` modes run that same code in a child process whose
//! large allocations are far (FarAlloc) or whose memory is capped (a memory cgroup with zram swap). `objects`
//! code uses objrt containers; `hybrid` keeps each workload's hot structure in objrt and its bulk data in
//! FarAlloc-managed memory. Every variant computes the same checksum as `local`, which the harness checks.

pub mod array;
pub mod dataframe;
pub mod hashtable;
pub mod web;

use serde::{Deserialize, Serialize};

/// Knobs shared by all workloads.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Params {
    /// Multiplies the default sizes.
    pub scale: f64,
    /// Seed of all generated data and access streams.
    pub seed: u64,
    /// Zipf exponent of key popularity (hashtable, web).
    pub zipf: f64,
    /// Let objrt offload DataFrame operations to memd.
    pub offload: bool,
    /// Local-memory budget in bytes (objects and hybrid modes size their runtimes with it).
    pub budget: u64,
    /// Threads sharing the timed phase (hashtable; every mode runs with the same number).
    #[serde(default = "one")]
    pub threads: usize,
    /// Keys per lookup batch in objrt's hash map (`get_many`, so that a batch's misses overlap); 1 looks keys
    /// up one by one. Modes without a batch API (std collections) look up one by one whatever it says.
    #[serde(default = "one")]
    pub batch: usize,
    /// Bytes of objrt's hash-map bucket objects (256, 1024 or 4096; hashtable's objects mode).
    #[serde(default = "kib")]
    pub bucket: usize,
}

fn kib() -> usize {
    1024
}

fn one() -> usize {
    1
}

/// What a workload run reports.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Outcome {
    /// Operations in the timed phase.
    pub ops: u64,
    /// Seconds of the timed phase.
    pub secs: f64,
    /// Seconds spent building the data set (not timed).
    pub setup_secs: f64,
    /// Fold of every result the workload computed.
    pub checksum: u64,
    /// Workload-specific figures (phase throughputs and the like).
    pub extra: Vec<(String, f64)>,
}

/// Folds a value into a checksum (FNV-1a over 64-bit words).
pub fn fold(acc: u64, x: u64) -> u64 {
    (acc ^ x).wrapping_mul(0x0000_0100_0000_01b3)
}

/// The starting value of a checksum.
pub const FOLD_START: u64 = 0xcbf2_9ce4_8422_2325;

/// Scales a default count, at least 1.
pub fn scaled(default: u64, scale: f64) -> u64 {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "positive, far below 2^53")]
    let n = (default as f64 * scale).round() as u64;
    n.max(1)
}

/// Sums the little-endian u64 words of a byte slice (touches every byte).
pub fn sum_words(b: &[u8]) -> u64 {
    b.chunks_exact(8).fold(0u64, |a, c| a.wrapping_add(u64::from_le_bytes(c.try_into().expect("8-byte chunk"))))
}
