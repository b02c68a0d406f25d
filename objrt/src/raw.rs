//! The one module of this crate with `unsafe` code: the local heap's memory and the conversion of object
//! addresses into references.
//!
//! # Safety
//! [`HeapMem`] owns one zero-initialised allocation (so every byte of it is always initialised), exposes its
//! provenance, and frees it on drop. Everything else here turns an address inside it into a reference or copies
//! bytes in or out. Those functions are safe to call *because of the crate's protocol*, which this module cannot
//! check by itself; it is written down here and every caller is listed:
//!
//! - **P1 (liveness).** An address passed in is the payload address of an object allocated by
//!   [`crate::heap::Heap::alloc`] from a `HeapMem` that is still alive: every far pointer keeps its runtime
//!   (and so its heap) alive through a count of its `Arc` (kept beside its slot, P5), and the evacuator and
//!   fetchers only run while the runtime lives.
//! - **P2 (size and alignment).** The object is at least `size_of::<T>()` bytes and its payload is 16-aligned;
//!   `T: Pod` with `align_of::<T>() <= 16` (checked at compile time in [`crate::ptr`]), so any bytes form a
//!   valid `T` and no padding is ever read.
//! - **P3 (exclusion).** A `&T` is produced only by a dereference that found the pointer word local and neither
//!   `BUSY` nor `MARKED` inside a pinned [`crate::epoch::DerefScope`], and lives no longer than that scope;
//!   a `&mut T` additionally comes from `&mut FarBox`, so no other reference to the object exists. Nobody
//!   writes an object's bytes or reuses its memory while such a reference can exist: the evacuator copies an
//!   object only after marking it, waiting a grace period and winning the `MARKED → BUSY` CAS
//!   ([`crate::word::begin_move`]), and reuses a region only after every object in it was moved that way or
//!   freed (a freed object has no references: freeing takes the far pointer by value).
//! - **P4 (claims).** [`read_bytes`]/[`write_bytes`] are called on an object only by the thread that holds it
//!   `BUSY` ([`crate::word::claim`]), by its owner holding `&mut`, or (for headers) on headers that are written
//!   once before the object is published and never again until the region is reused. [`HeapMem::with_fresh`]
//!   lends payloads of objects allocated for a fetch and not yet published to the one thread that reads the
//!   fetch's reply (`runtime.rs`, `Landing::receive`, under the landing's lock, which the fetch takes before
//!   it publishes the objects or gives their space back).
//!
//! - **P5 (a slot's runtime).** A far pointer is only the address of its slot; its runtime is kept beside the
//!   slot, in an [`RtCell`] of the slot table, as one strong count of the runtime's `Arc<RtInner>` (this is how
//!   every far pointer keeps its runtime alive, P1). The count is put there by the pointer's constructor
//!   (`FarBox::try_new_in`, after the object is allocated and before the pointer exists, while the slot is
//!   owned by nobody else) and taken back by the pointer's `drop`, before it frees the object (so before the
//!   slot can be handed out again). In between, [`RtCell::get`] and [`RtCell::arc`] are called only through the
//!   live pointer (`FarBox::rt` and friends), whose borrow bounds the reference `get` returns.
//!
//! Callers: `ptr.rs` (dereferences: P1–P3; the runtime of a pointer: P5), `runtime.rs` (allocation, fetch
//! install and in-place receive, write-back, free: P1, P2, P4), `evac.rs` (copying marked-then-busy objects: P1,
//! P4), `heap.rs` (headers: P4), `slots.rs` (the cells: P5).
//!
//! Addresses are plain `u64`s because the pointer word stores them; they are turned back into pointers with the
//! exposed provenance of the heap allocation (`with_exposed_provenance`), which Miri accepts.

#![allow(
    clippy::cast_possible_truncation,
    reason = "addresses are usize values kept in u64 pointer words; 64-bit targets only"
)]

use crate::runtime::RtInner;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Arc;

/// One zeroed, aligned allocation holding every region of a runtime's local heap.
#[derive(Debug)]
pub(crate) struct HeapMem {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: HeapMem is an owned allocation; concurrent access to its bytes is governed by P3/P4 above.
unsafe impl Send for HeapMem {}
// SAFETY: as above: shared access only hands out bytes under the crate's exclusion protocol.
unsafe impl Sync for HeapMem {}

impl HeapMem {
    /// Allocates `len` zeroed bytes aligned to `align` (a power of two). `None` if the allocator refuses or the
    /// arguments do not form a layout.
    pub(crate) fn new(len: usize, align: usize) -> Option<HeapMem> {
        let layout = Layout::from_size_align(len, align).ok()?;
        if layout.size() == 0 {
            return None;
        }
        // The heap is farmem's own memory: never let FarAlloc place it in a far region.
        let _internal = farmem_memd::internal::enter();
        // SAFETY: the layout has a non-zero size (checked above).
        let p = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(p)?;
        let _ = ptr.as_ptr().expose_provenance();
        Some(HeapMem { ptr, layout })
    }

    /// Address of the first byte.
    pub(crate) fn base(&self) -> u64 {
        self.ptr.as_ptr().addr() as u64
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.layout.size()
    }

    fn check(&self, addr: u64, len: usize) {
        let base = self.base();
        assert!(
            addr >= base && (addr - base) as usize + len <= self.layout.size(),
            "object {addr:#x}+{len} outside the heap {base:#x}+{}",
            self.layout.size()
        );
    }

    /// Copies `dst.len()` bytes at `addr` into `dst` (P1, P4).
    pub(crate) fn read_bytes(&self, addr: u64, dst: &mut [u8]) {
        self.check(addr, dst.len());
        let src = std::ptr::with_exposed_provenance::<u8>(addr as usize);
        // SAFETY: in bounds (checked), initialised (zeroed allocation), and not written concurrently (P4).
        unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) };
    }

    /// Copies `src` to `addr` (P1, P4).
    pub(crate) fn write_bytes(&self, addr: u64, src: &[u8]) {
        self.check(addr, src.len());
        let dst = std::ptr::with_exposed_provenance_mut::<u8>(addr as usize);
        // SAFETY: in bounds (checked); the caller holds the object exclusively (P4), so nobody reads or writes
        // these bytes meanwhile.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
    }

    /// Lends the byte ranges `spans` (address, length) to `f` as mutable slices, in order: a fetch receives
    /// objects' values from the socket straight into their payloads (P1, P4). Each span is the payload of an
    /// object allocated from this heap and not published yet (no pointer word holds its address), which the
    /// caller alone writes until `f` returns — as a thread holding an object `BUSY` does (P4) — and whose
    /// region is not reused meanwhile (its live bytes are counted, P3). Bounds and pairwise disjointness are
    /// checked here (a panic otherwise).
    pub(crate) fn with_fresh<R>(&self, spans: &[(u64, usize)], f: impl FnOnce(&mut [&mut [u8]]) -> R) -> R {
        let mut sorted: Vec<(u64, usize)> = spans.to_vec();
        sorted.sort_unstable();
        for w in sorted.windows(2) {
            assert!(w[0].0 + w[0].1 as u64 <= w[1].0, "overlapping spans {:?} and {:?}", w[0], w[1]);
        }
        let mut v: Vec<&mut [u8]> = Vec::with_capacity(spans.len());
        for &(addr, len) in spans {
            self.check(addr, len);
            let p = std::ptr::with_exposed_provenance_mut::<u8>(addr as usize);
            // SAFETY: in bounds (checked), initialised (zeroed allocation), disjoint from every other span
            // (checked), and nobody else touches an unpublished object's payload while `f` runs (P4).
            v.push(unsafe { std::slice::from_raw_parts_mut(p, len) });
        }
        f(&mut v)
    }

    /// Copies `len` bytes from `from` to `to`, both inside this heap and not overlapping (evacuator compaction:
    /// the source is held `BUSY`, the destination is fresh).
    pub(crate) fn copy_within(&self, from: u64, to: u64, len: usize) {
        self.check(from, len);
        self.check(to, len);
        assert!(from + len as u64 <= to || to + len as u64 <= from, "overlapping copy");
        let s = std::ptr::with_exposed_provenance::<u8>(from as usize);
        let d = std::ptr::with_exposed_provenance_mut::<u8>(to as usize);
        // SAFETY: both ranges in bounds and disjoint (checked); exclusive per P4.
        unsafe { std::ptr::copy_nonoverlapping(s, d, len) };
    }
}

impl Drop for HeapMem {
    fn drop(&mut self) {
        // SAFETY: ptr was returned by alloc_zeroed with this very layout and is freed once.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// The runtime of the far pointer that owns a slot: one strong count of its `Arc<RtInner>`, or nothing while the
/// slot is free (P5).
#[derive(Debug)]
pub(crate) struct RtCell(AtomicPtr<RtInner>);

impl RtCell {
    /// An empty cell.
    pub(crate) const fn new() -> RtCell {
        RtCell(AtomicPtr::new(std::ptr::null_mut()))
    }

    /// Hands the cell a count of `rt`, for the far pointer about to be made for this slot. Panics if the cell
    /// is not empty (the slot already has an owner).
    pub(crate) fn set(&self, rt: Arc<RtInner>) {
        let old = self.0.swap(Arc::into_raw(rt).cast_mut(), Ordering::Release);
        assert!(old.is_null(), "a slot's runtime was set twice");
    }

    /// The runtime, borrowed for as long as the caller's far pointer (P5).
    pub(crate) fn get(&self) -> &RtInner {
        let p = self.0.load(Ordering::Acquire);
        assert!(!p.is_null(), "a far pointer's slot has no runtime");
        // SAFETY: `p` came from `Arc::into_raw` in `set`, and the count it stands for is held until the owning
        // far pointer's `drop` takes it; the caller borrows that pointer, so the `RtInner` lives (P5).
        unsafe { &*p }
    }

    /// A new strong count of the runtime (for a fetch handle that may outlive the pointer).
    pub(crate) fn arc(&self) -> Arc<RtInner> {
        let p = self.0.load(Ordering::Acquire);
        assert!(!p.is_null(), "a far pointer's slot has no runtime");
        // SAFETY: `p` came from `Arc::into_raw` and the cell's count is alive (P5), so the allocation is live and
        // adding a count to it is allowed; `from_raw` then owns exactly that added count.
        unsafe {
            Arc::increment_strong_count(p);
            Arc::from_raw(p)
        }
    }

    /// Takes the count back, emptying the cell (the owning far pointer is being dropped). Panics if empty.
    pub(crate) fn take(&self) -> Arc<RtInner> {
        let p = self.0.swap(std::ptr::null_mut(), Ordering::Acquire);
        assert!(!p.is_null(), "a far pointer's slot has no runtime");
        // SAFETY: `p` came from `Arc::into_raw` in `set`, and the swap made this call the only holder of that
        // count: turning it back into an `Arc` gives the count back exactly once.
        unsafe { Arc::from_raw(p) }
    }
}

/// A shared reference to the object at `addr` (P1–P3).
#[inline(always)]
pub(crate) fn obj_ref<'s, T: bytemuck::Pod>(addr: u64) -> &'s T {
    debug_assert!(addr.is_multiple_of(16) && addr != 0);
    let p = std::ptr::with_exposed_provenance::<T>(addr as usize);
    // SAFETY: P1 (live heap memory), P2 (large enough, aligned, any bytes are a valid T), P3 (no writer while
    // the scope that bounds 's lives).
    unsafe { &*p }
}

/// An exclusive reference to the object at `addr` (P1–P3, with `&mut FarBox` as the proof of uniqueness).
#[inline(always)]
pub(crate) fn obj_mut<'s, T: bytemuck::Pod>(addr: u64) -> &'s mut T {
    debug_assert!(addr.is_multiple_of(16) && addr != 0);
    let p = std::ptr::with_exposed_provenance_mut::<T>(addr as usize);
    // SAFETY: as obj_ref; the caller holds `&mut FarBox`, so this is the only reference to the object.
    unsafe { &mut *p }
}

#[cfg(all(test, not(farmem_loom)))]
mod tests {
    use super::*;

    #[test]
    fn heap_mem_bytes_roundtrip() {
        let h = HeapMem::new(4096, 4096).unwrap();
        assert_eq!(h.base() % 4096, 0);
        let a = h.base() + 32;
        let mut buf = [1u8; 8];
        h.read_bytes(a, &mut buf);
        assert_eq!(buf, [0; 8], "the heap starts zeroed");
        h.write_bytes(a, &42u64.to_le_bytes());
        assert_eq!(*obj_ref::<u64>(a), 42);
        *obj_mut::<u64>(a) += 1;
        h.copy_within(a, a + 16, 8);
        h.read_bytes(a + 16, &mut buf);
        assert_eq!(u64::from_le_bytes(buf), 43);
        assert!(HeapMem::new(0, 16).is_none());
    }

    #[test]
    #[should_panic(expected = "outside the heap")]
    fn out_of_bounds_is_caught() {
        let h = HeapMem::new(64, 16).unwrap();
        h.write_bytes(h.base() + 60, &[0; 8]);
    }
}
