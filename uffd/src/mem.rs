//! Anonymous mappings taken straight from the kernel: the region's reservation and its per-page metadata.
//!
//! The region lives under a global allocator whose large allocations come from a region, so metadata sized by
//! the region (one byte per page of a 64 GiB reservation is 16 MiB) must not come from the heap. `MAP_NORESERVE`
//! zero-filled mappings cost nothing until a page of them is touched.
//!
//! # Safety
//! [`Mapping`](crate::mem::Mapping) owns its range and unmaps it once; [`Table`](crate::mem::Table) hands out elements
//! of types for which the all-zero bit pattern is a valid value (integers and atomics), indexed with bounds checks.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, AtomicU8};

/// An owned anonymous private mapping.
#[derive(Debug)]
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; sharing its address between threads is sound and
// every access through it is synchronised by its users.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes (rounded up to pages), readable and writable, `MAP_NORESERVE`, zero-filled on first touch.
    pub fn new(len: usize) -> std::io::Result<Mapping> {
        let len = len.max(1).next_multiple_of(crate::PAGE_SIZE);
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing overlaps nothing we own.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapping { ptr: p.cast(), len })
    }
    /// First byte.
    pub fn ptr(&self) -> *mut u8 {
        self.ptr
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the mapping is empty (never: lengths are rounded up to a page).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr..ptr+len` is the mapping this value created and nobody uses it after drop.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Element types valid when all-zero.
pub trait Zeroable: Sized {}
impl Zeroable for AtomicU8 {}
impl Zeroable for AtomicU32 {}

/// A fixed-length array of `T` in its own mapping, initially all zero.
#[derive(Debug)]
pub struct Table<T: Zeroable> {
    map: Mapping,
    n: usize,
    _t: PhantomData<T>,
}

impl<T: Zeroable> Table<T> {
    /// `n` zeroed elements.
    pub fn new(n: usize) -> std::io::Result<Table<T>> {
        let bytes = n.checked_mul(std::mem::size_of::<T>()).ok_or_else(|| std::io::Error::other("table too large"))?;
        Ok(Table { map: Mapping::new(bytes)?, n, _t: PhantomData })
    }
    /// Element `i`. Panics when out of bounds.
    pub fn at(&self, i: usize) -> &T {
        assert!(i < self.n, "table index {i} out of {}", self.n);
        // SAFETY: `i < n` keeps the element inside the mapping, which is aligned to a page and zero-filled, and
        // the all-zero pattern is a valid `T` (`Zeroable`); `T` is an atomic, so shared references suffice.
        unsafe { &*self.map.ptr().cast::<T>().add(i) }
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.n
    }
    /// Whether the table has no elements.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}
