//! [`AnonSpan`]: a [`Backing`] of plain anonymous memory, with no far store behind it.
//!
//! It gives the far heap's allocation, routing and zeroing behaviour without userfaultfd or memd, for tests
//! and for measuring the allocator apart from paging.
//!
//! # Safety
//! The span is one private anonymous mapping owned by the value; `release` only drops pages inside it.

use crate::heap::{Backing, PagingStats, ReleaseError};
use std::io;

/// A span of reserved anonymous memory (`MAP_NORESERVE`: pages cost nothing until touched).
#[derive(Debug)]
pub struct AnonSpan {
    base: usize,
    len: usize,
}

impl AnonSpan {
    /// Reserves `len` bytes (rounded up to pages).
    pub fn new(len: usize) -> io::Result<AnonSpan> {
        let len = crate::range::align_up(len.max(1), crate::range::PAGE)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "span length overflows"))?;
        // SAFETY: a fresh private anonymous mapping at an address the kernel picks; no existing memory changes.
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
            return Err(io::Error::last_os_error());
        }
        Ok(AnonSpan { base: p as usize, len })
    }
}

impl Drop for AnonSpan {
    fn drop(&mut self) {
        // SAFETY: the mapping was created in `new` and is unmapped once, here.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}

impl Backing for AnonSpan {
    fn base(&self) -> *mut u8 {
        self.base as *mut u8
    }
    fn size(&self) -> usize {
        self.len
    }
    fn release(&self, off: usize, len: usize) -> Result<(), ReleaseError> {
        if off.checked_add(len).is_none_or(|end| end > self.len) {
            let msg = format!("release of {off:#x}+{len:#x} outside a span of {:#x}", self.len);
            return Err(ReleaseError(io::Error::new(io::ErrorKind::InvalidInput, msg).into()));
        }
        // SAFETY: the range lies inside our private anonymous mapping; DONTNEED makes it read as zeros.
        let r = unsafe { libc::madvise((self.base + off) as *mut libc::c_void, len, libc::MADV_DONTNEED) };
        if r != 0 {
            return Err(ReleaseError(io::Error::last_os_error().into()));
        }
        Ok(())
    }
    fn paging_stats(&self) -> PagingStats {
        PagingStats::default()
    }
}
