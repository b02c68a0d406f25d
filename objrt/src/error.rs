//! Errors of the object runtime.

use farmem_memd::config::ConfigError;
use farmem_memd::StoreError;

/// Why an object-runtime operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ObjError {
    /// A configuration value is unusable (names the field or variable).
    #[error("object runtime configuration: {0}")]
    Config(String),
    /// A `FARMEM_*` variable is malformed.
    #[error(transparent)]
    Env(#[from] ConfigError),
    /// The local heap could not be allocated.
    #[error("cannot allocate a local heap of {0} bytes")]
    HeapAlloc(usize),
    /// Every local region, the reserve above the budget included, is in use and the evacuator cannot free one in
    /// time (typically: far memory is full or gone, or scopes are held for very long).
    #[error("local object heap exhausted ({regions} regions of {region_size} bytes in use)")]
    HeapExhausted {
        /// Regions in use.
        regions: usize,
        /// Bytes per region.
        region_size: usize,
    },
    /// An object is larger than a region (or memd's 1 MiB object limit).
    #[error("object of {size} bytes is larger than the {max}-byte limit")]
    TooLarge {
        /// Requested size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// All 2^28 object slots are in use.
    #[error("too many live far objects")]
    OutOfSlots,
    /// A runtime may have at most 65536 spaces.
    #[error("too many spaces in one runtime (limit {0})")]
    OutOfSpaces(usize),
    /// The far store failed (the inner error says whether it is gone for good).
    #[error("far store: {0}")]
    Store(#[from] StoreError),
    /// memd no longer holds an object the runtime evicted to it (memd restarted without its data?).
    #[error("object {id} of data structure {ds:#x} is missing from far memory")]
    Missing {
        /// Data-structure id.
        ds: u64,
        /// Object id.
        id: u64,
    },
}
