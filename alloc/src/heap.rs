//! The far heap: a [`RangeAlloc`] over a [`Backing`] span, with the bookkeeping FarAlloc reports.

use crate::range::{RangeAlloc, PAGE};
use farmem_memd::internal;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Paging figures of a backing, for the exit summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PagingStats {
    /// Page faults served.
    pub faults: u64,
    /// Bytes fetched from far memory (on demand and read ahead).
    pub bytes_fetched: u64,
    /// Bytes written back to far memory.
    pub bytes_written_back: u64,
    /// Highest number of bytes resident locally at once.
    pub peak_resident: u64,
}

/// Why a [`Backing`] could not drop pages; wraps the backing's own error (errno kept).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ReleaseError(pub Box<dyn std::error::Error + Send + Sync>);

/// A span of address space whose pages can be dropped: a uffd `Region` in production, plain anonymous memory
/// in tests.
///
/// # Contract
/// Every method is called with the thread marked internal (`farmem_memd::internal::enter`), so the
/// allocations an implementation makes go to local memory, never back into the far heap; the heap's lock is
/// not held during [`Backing::release`], so an implementation may block on the network there.
pub trait Backing: Send + Sync + fmt::Debug {
    /// First byte of the span (page aligned).
    fn base(&self) -> *mut u8;
    /// Length of the span in bytes.
    fn size(&self) -> usize;
    /// Drops the contents of `[off, off + len)` (page aligned) everywhere: afterwards it reads as zeros.
    fn release(&self, off: usize, len: usize) -> Result<(), ReleaseError>;
    /// Paging counters.
    fn paging_stats(&self) -> PagingStats;
}

/// Counters of the far heap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapStats {
    /// Bytes ever handed out from far memory (whole pages).
    pub bytes_allocated: u64,
    /// Large allocations served from far memory.
    pub allocations: u64,
    /// Bytes live in far memory now.
    pub live_bytes: u64,
    /// Highest `live_bytes` seen.
    pub peak_live_bytes: u64,
    /// Large allocations served locally because far memory was full.
    pub fallbacks: u64,
}

thread_local! {
    /// Range-table guards held across a fork by the forking thread. Its small buffer is allocated at the first
    /// fork, from the small-object allocator, never from a range table the handlers hold.
    static FORK_GUARDS: std::cell::RefCell<Vec<std::sync::MutexGuard<'static, RangeAlloc>>> =
        std::cell::RefCell::new(Vec::with_capacity(8));
}

/// The far heap.
pub struct Heap {
    backing: Box<dyn Backing>,
    base: usize,
    /// A std (futex) mutex, not parking_lot's: a forked child unlocks it (see [`Heap::fork_unlock`]), and
    /// parking_lot's unlock, when threads were parked on it at fork time, takes a global bucket lock that a
    /// thread which does not exist in the child may have held — the child hung there.
    ranges: std::sync::Mutex<RangeAlloc>,
    limit: usize,
    allocated: AtomicU64,
    allocations: AtomicU64,
    peak_live: AtomicUsize,
    fallbacks: AtomicU64,
    release_failed: AtomicBool,
}

impl fmt::Debug for Heap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Heap").field("backing", &self.backing).field("limit", &self.limit).finish_non_exhaustive()
    }
}

impl Heap {
    /// A heap over `backing` holding at most `limit` live bytes (the far store's free capacity).
    pub fn new(backing: Box<dyn Backing>, limit: usize) -> Heap {
        let base = backing.base() as usize;
        let len = backing.size();
        Heap {
            backing,
            base,
            ranges: std::sync::Mutex::new(RangeAlloc::new(len)),
            limit,
            allocated: AtomicU64::new(0),
            allocations: AtomicU64::new(0),
            peak_live: AtomicUsize::new(0),
            fallbacks: AtomicU64::new(0),
            release_failed: AtomicBool::new(false),
        }
    }

    /// `[start, end)` of the span.
    pub fn bounds(&self) -> (usize, usize) {
        (self.base, self.base + self.backing.size())
    }

    /// Allocates a block of at least `size` bytes aligned to `align`; its contents read as zeros. `None` when
    /// the span or the store's capacity is exhausted (the caller serves the request locally).
    pub fn alloc(&self, size: usize, align: usize) -> Option<*mut u8> {
        if align > PAGE && !self.base.is_multiple_of(align) {
            return None;
        }
        let _in = internal::enter();
        let mut r = self.ranges();
        let rounded = crate::range::align_up(size, PAGE)?;
        let fits_span = rounded <= r.len();
        let off = if r.used_bytes().saturating_add(rounded) > self.limit { None } else { r.alloc(size, align) };
        let Some(off) = off else {
            drop(r);
            if fits_span {
                // Counted only when far memory could have held the block had it not been full.
                self.fallbacks.fetch_add(1, Relaxed);
            }
            return None;
        };
        let live = r.used_bytes();
        drop(r);
        self.peak_live.fetch_max(live, Relaxed);
        self.allocated.fetch_add(rounded as u64, Relaxed);
        self.allocations.fetch_add(1, Relaxed);
        Some((self.base + off) as *mut u8)
    }

    fn offset(&self, p: *mut u8) -> usize {
        p as usize - self.base
    }

    /// Usable size of the block at `p`, or `None` if `p` does not start a live block.
    pub fn usable_size(&self, p: *mut u8) -> Option<usize> {
        let _in = internal::enter();
        self.ranges().size_of(self.offset(p))
    }

    fn release_and_give_back(&self, off: usize, len: usize) {
        debug_assert!(internal::is_internal(), "Backing contract: called with the thread marked internal");
        match self.backing.release(off, len) {
            Ok(()) => self.ranges().give_back(off, len),
            Err(e) => {
                // The range may still hold data somewhere; handing it out again would break the zero
                // invariant calloc relies on, so it stays out of use.
                if !self.release_failed.swap(true, Relaxed) {
                    eprintln!("farmem: releasing far memory failed ({e}); freed far blocks will not be reused");
                }
            }
        }
    }

    /// Frees the block at `p`. Returns false (and does nothing) if `p` does not start a live block.
    pub fn free(&self, p: *mut u8) -> bool {
        let _in = internal::enter();
        let off = self.offset(p);
        let Some(len) = self.ranges().take(off) else {
            return false;
        };
        self.release_and_give_back(off, len);
        true
    }

    /// Resizes the block at `p` in place to `new_size` if possible (shrinking always is; growing is when the
    /// pages after it are free). Returns whether the block now holds `new_size` bytes.
    pub fn resize_in_place(&self, p: *mut u8, new_size: usize) -> bool {
        let _in = internal::enter();
        let off = self.offset(p);
        let mut r = self.ranges();
        let Some(cur) = r.size_of(off) else { return false };
        if new_size > cur {
            let Some(rounded) = crate::range::align_up(new_size, PAGE) else { return false };
            if (r.used_bytes() - cur).saturating_add(rounded) > self.limit || !r.grow(off, new_size) {
                return false;
            }
            let live = r.used_bytes();
            drop(r);
            self.peak_live.fetch_max(live, Relaxed);
            self.allocated.fetch_add((rounded - cur) as u64, Relaxed);
            return true;
        }
        let tail = r.shrink(off, new_size);
        drop(r);
        if let Some((t, tl)) = tail {
            self.release_and_give_back(t, tl);
        }
        true
    }

    /// Heap counters.
    pub fn stats(&self) -> HeapStats {
        let live = self.ranges().used_bytes() as u64;
        HeapStats {
            bytes_allocated: self.allocated.load(Relaxed),
            allocations: self.allocations.load(Relaxed),
            live_bytes: live,
            peak_live_bytes: self.peak_live.load(Relaxed) as u64,
            fallbacks: self.fallbacks.load(Relaxed),
        }
    }

    /// Paging counters of the backing.
    pub fn paging_stats(&self) -> PagingStats {
        self.backing.paging_stats()
    }

    /// The range table (a panic elsewhere while it was held leaves it consistent: every change is one call).
    fn ranges(&self) -> std::sync::MutexGuard<'_, RangeAlloc> {
        self.ranges.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Locks the range table for a fork (see `FarAlloc`'s atfork handlers); the guard stays with this thread
    /// until [`Heap::fork_unlock`] (in the parent, or in the child, whose only thread is a copy of this one).
    pub(crate) fn fork_lock(&'static self) {
        let g = self.ranges();
        FORK_GUARDS.with(|v| v.borrow_mut().push(g));
    }

    /// Undoes [`Heap::fork_lock`] in the parent or the child: drops the guards this thread took.
    pub(crate) fn fork_unlock() {
        FORK_GUARDS.with(|v| v.borrow_mut().clear());
    }
}
