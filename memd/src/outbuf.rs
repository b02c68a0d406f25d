//! Reply buffers that send stored values by reference.
//!
//! A bulk read reply is mostly stored values: 4 KiB pages, or object values of kilobytes. Copying each of them
//! into a reply buffer before the kernel copies it again into the socket cost a fifth of the server's CPU on the
//! paging path's readahead. An [`OutBuf`] holds the reply's own bytes (frame headers, counts, bitmaps, small
//! values) in one `Vec` and splices stored values in by reference ([`Shared`], a reference count), and the server
//! hands the pieces to one vectored write.
//!
//! Why this is sound without `unsafe`: a stored value is an `Arc`, and the store replaces it copy-on-write — a
//! writer may change a value in place only while it holds the one reference ([`std::sync::Arc::get_mut`]). A
//! reply therefore sends the value as it was when the request executed, whole, even if a write to the same key
//! lands before the reply leaves.

use crate::proto::{self, PAGE_SIZE};
use std::io::IoSlice;
use std::sync::Arc;

/// A stored value that a reply holds by reference.
#[derive(Clone, Debug)]
pub enum Shared {
    /// A page.
    Page(Arc<[u8; PAGE_SIZE]>),
    /// An object's value.
    Value(Arc<[u8]>),
}

impl Shared {
    /// The value's bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Shared::Page(p) => &p[..],
            Shared::Value(v) => v,
        }
    }
}

/// A position in an [`OutBuf`], to truncate back to or to close a frame begun there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    bytes: usize,
    shared: usize,
    shared_len: usize,
}

/// Reply frames under construction: own bytes, with stored values spliced in by reference.
///
/// The logical content is `bytes`, with each shared value inserted at its recorded byte offset (in push order
/// among values at the same offset). [`OutBuf::len`] and the frame lengths count both.
#[derive(Debug, Default)]
pub struct OutBuf {
    bytes: Vec<u8>,
    /// (offset in `bytes` the value follows, value).
    shared: Vec<(usize, Shared)>,
    shared_len: usize,
}

/// At most this many pieces go to one `writev` (Linux's `IOV_MAX`).
pub const MAX_IOV: usize = 1024;

impl OutBuf {
    /// An empty buffer whose own bytes have room for `cap` bytes.
    pub fn with_capacity(cap: usize) -> OutBuf {
        OutBuf { bytes: Vec::with_capacity(cap), shared: Vec::new(), shared_len: 0 }
    }

    /// Logical length: own bytes plus spliced values.
    pub fn len(&self) -> usize {
        self.bytes.len() + self.shared_len
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The own bytes, to append to (appended bytes follow every value spliced so far).
    pub fn bytes_mut(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    /// Appends own bytes.
    pub fn extend_from_slice(&mut self, b: &[u8]) {
        self.bytes.extend_from_slice(b);
    }

    /// Appends a stored value by reference.
    pub fn push_shared(&mut self, v: Shared) {
        self.shared_len += v.as_slice().len();
        self.shared.push((self.bytes.len(), v));
    }

    /// The current end.
    pub fn mark(&self) -> Mark {
        Mark { bytes: self.bytes.len(), shared: self.shared.len(), shared_len: self.shared_len }
    }

    /// Drops everything after `m`.
    pub fn truncate(&mut self, m: Mark) {
        self.bytes.truncate(m.bytes);
        self.shared.truncate(m.shared);
        self.shared_len = m.shared_len;
    }

    /// Empties the buffer (keeping its allocations).
    pub fn clear(&mut self) {
        self.truncate(Mark { bytes: 0, shared: 0, shared_len: 0 });
    }

    /// Starts a frame (length prefix and header); finish it with [`OutBuf::end_frame`].
    pub fn begin_frame(&mut self, op: u8, status: u8, id: u64) -> Mark {
        let m = self.mark();
        proto::begin_frame(&mut self.bytes, op, status, id);
        m
    }

    /// Patches the length prefix of the frame begun at `m`, counting the values spliced into it.
    pub fn end_frame(&mut self, m: Mark) {
        let len = self.len() - (m.bytes + m.shared_len) - 4;
        let len = u32::try_from(len).expect("frame length checked against MAX_FRAME by callers");
        self.bytes[m.bytes..m.bytes + 4].copy_from_slice(&len.to_le_bytes());
    }

    /// Appends the logical content to `out`, copying the values.
    pub fn flatten_into(&self, out: &mut Vec<u8>) {
        out.reserve(self.len());
        let mut at = 0;
        for (pos, v) in &self.shared {
            out.extend_from_slice(&self.bytes[at..*pos]);
            out.extend_from_slice(v.as_slice());
            at = *pos;
        }
        out.extend_from_slice(&self.bytes[at..]);
    }

    /// The logical content as pieces for a vectored write (no empty pieces). Consecutive values stay separate
    /// pieces; pass at most [`MAX_IOV`] at a time to one system call.
    pub fn io_slices(&self) -> Vec<IoSlice<'_>> {
        let mut v = Vec::with_capacity(2 * self.shared.len() + 1);
        let mut at = 0;
        for (pos, s) in &self.shared {
            if *pos > at {
                v.push(IoSlice::new(&self.bytes[at..*pos]));
            }
            v.push(IoSlice::new(s.as_slice()));
            at = *pos;
        }
        if self.bytes.len() > at {
            v.push(IoSlice::new(&self.bytes[at..]));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(b: u8) -> Shared {
        Shared::Page(Arc::new([b; PAGE_SIZE]))
    }

    fn joined(o: &OutBuf) -> Vec<u8> {
        o.io_slices().iter().flat_map(|s| s.iter().copied()).collect()
    }

    #[test]
    fn values_sit_where_they_were_pushed() {
        let mut o = OutBuf::default();
        o.extend_from_slice(b"ab");
        o.push_shared(page(1));
        o.push_shared(Shared::Value(Arc::from(&b"xyz"[..])));
        o.extend_from_slice(b"c");
        let mut flat = Vec::new();
        o.flatten_into(&mut flat);
        let mut want = b"ab".to_vec();
        want.extend_from_slice(&[1; PAGE_SIZE]);
        want.extend_from_slice(b"xyzc");
        assert_eq!(flat, want);
        assert_eq!(joined(&o), want);
        assert_eq!(o.len(), want.len());
        assert_eq!(o.io_slices().len(), 4);
    }

    #[test]
    fn frames_count_spliced_values_and_truncate_drops_them() {
        let mut o = OutBuf::default();
        let f = o.begin_frame(0x10, 0, 7);
        o.extend_from_slice(&[9; 3]);
        o.push_shared(page(2));
        o.end_frame(f);
        let second = o.mark();
        let g = o.begin_frame(0x10, 0, 8);
        o.push_shared(page(3));
        o.end_frame(g);
        let mut flat = Vec::new();
        o.flatten_into(&mut flat);
        let len = u32::from_le_bytes(flat[..4].try_into().unwrap()) as usize;
        assert_eq!(len, proto::HEADER_LEN + 3 + PAGE_SIZE);
        let next = 4 + len;
        let len2 = u32::from_le_bytes(flat[next..next + 4].try_into().unwrap()) as usize;
        assert_eq!(len2, proto::HEADER_LEN + PAGE_SIZE);
        assert_eq!(flat.len(), next + 4 + len2);
        o.truncate(second);
        assert_eq!(o.len(), next);
        let mut cut = Vec::new();
        o.flatten_into(&mut cut);
        assert_eq!(cut, flat[..next]);
        o.clear();
        assert!(o.is_empty() && o.io_slices().is_empty());
    }
}
