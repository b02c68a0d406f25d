//! farmem-alloc: `FarAlloc`, a global allocator that puts large allocations in far memory.
//!
//! # Design
//! Every allocation below a threshold (`FARMEM_THRESHOLD`, 1 MiB by default) goes straight to mimalloc: the
//! fast path is a compare in front of `mi_malloc_small` (up to 1 KiB) or `mi_malloc`. Allocations at or above it go to the
//! *far heap*: a page-granular range allocator ([`range::RangeAlloc`]) over one contiguous span of address space
//! ([`heap::Backing`]) — in production a userfaultfd `Region` whose pages are paged to and from memd under a
//! local-memory budget. Because the span is contiguous, `free` and `realloc` tell far blocks from mimalloc's by
//! one range compare, without a header or a lookup; the first half of it (below the region's start) settles
//! every mimalloc block on Linux, where mimalloc's arenas lie below the region.
//!
//! Far memory starts lazily, on the first large allocation: the configuration is read, a memd client connects
//! and the region is mapped. Until that has finished — and whenever the thread is marked internal
//! (`farmem_memd::internal`) — every allocation goes to mimalloc, so start-up work (reading variables, spawning
//! the handler threads, thread-local destructors registering through `calloc`, `dlsym`) never re-enters the
//! far path, and farmem's own threads never fault on the region they serve. A failed start prints one line and
//! leaves FarAlloc serving locally; `FARMEM_REQUIRED=1` makes it fatal.
//!
//! Freed far blocks have their pages released (locally and in memd) before the range is reused, so every free
//! far byte reads as zero: `calloc` and `alloc_zeroed` of a far block cost nothing up front. Blocks move between
//! the two sides when `realloc` crosses the threshold; growing a far block in place succeeds when the pages after
//! it are free, which keeps a doubling `Vec` from copying.
//!
//! When memd's free capacity (measured at start) would be exceeded, large allocations are served locally
//! instead, so the region never has to evict into a full store. A fork holds no FarAlloc lock across it
//! (`pthread_atfork`); the child, which has none of the region's threads, serves new blocks locally (the
//! region itself guards the child against reading pages that live only in memd).

pub mod anon;
pub mod config;
mod far;
pub mod heap;
pub mod range;
pub mod start;

pub use anon::AnonSpan;
pub use far::{FarAlloc, StartError, StartFn, Started, RUN_PID_VAR};
pub use heap::{Backing, HeapStats, PagingStats, ReleaseError};
/// The mimalloc build FarAlloc serves small blocks from (`libmimalloc-sys`), for callers that route the malloc
/// family's common cases to it directly (the preload shim's `malloc` and `free`).
pub use libmimalloc_sys as mimalloc_sys;
