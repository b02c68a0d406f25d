//! [`AnonSpan`]: a [`Backing`] of plain anonymous memory, with no far store behind it.
//!
//! It gives the far heap's allocation, routing and zeroing behaviour without userfaultfd or memd, for tests
//! and for measuring the allocator apart from paging.
//!
//! The mapping is uffd's [`Mapping`] (which owns it and unmaps it on drop) and release is uffd's `dontneed`, so
//! this module needs no `unsafe` of its own.

use crate::heap::{Backing, PagingStats, ReleaseError};
use farmem_uffd::mem::Mapping;
use std::io;

/// A span of reserved anonymous memory (`MAP_NORESERVE`: pages cost nothing until touched).
#[derive(Debug)]
pub struct AnonSpan {
    map: Mapping,
}

impl AnonSpan {
    /// Reserves `len` bytes (rounded up to pages).
    pub fn new(len: usize) -> io::Result<AnonSpan> {
        Ok(AnonSpan { map: Mapping::new(len)? })
    }
}

impl Backing for AnonSpan {
    fn base(&self) -> *mut u8 {
        self.map.ptr()
    }
    fn size(&self) -> usize {
        self.map.len()
    }
    fn release(&self, off: usize, len: usize) -> Result<(), ReleaseError> {
        if off.checked_add(len).is_none_or(|end| end > self.map.len()) {
            let msg = format!("release of {off:#x}+{len:#x} outside a span of {:#x}", self.map.len());
            return Err(ReleaseError(io::Error::new(io::ErrorKind::InvalidInput, msg).into()));
        }
        // The range lies inside our private anonymous mapping (checked above); DONTNEED makes it read as zeros.
        let start = self.map.ptr() as u64 + off as u64;
        farmem_uffd::raw::dontneed(start, len as u64).map_err(|e| ReleaseError(Box::new(e)))
    }
    fn paging_stats(&self) -> PagingStats {
        PagingStats::default()
    }
}
