//! The large-object allocator: page-granular ranges inside one contiguous span of address space.
//!
//! [`RangeAlloc`] hands out offsets into `[0, len)`; it never touches the memory it manages, so it is a plain
//! data structure that is fuzzed on its own (see the tests). Free ranges are kept twice — by address, to coalesce
//! a freed range with its neighbours in `O(log n)`, and by `(length, address)`, for best fit — and live ranges
//! by address, so a pointer alone is enough to free it (the C `free` has no size).
//!
//! Freeing is two-phase so that the caller can drop the pages' contents (`Region::release`) *between* the two
//! steps, without holding the allocator lock and without another thread receiving the range before its old
//! contents are gone: [`RangeAlloc::take`] removes a live range, [`RangeAlloc::give_back`] returns it to the free
//! set. The invariant that results — every free byte reads as zero — is what lets `calloc` skip zeroing.

use std::collections::{BTreeMap, BTreeSet};

/// The allocation granule: one page.
pub const PAGE: usize = 4096;

/// Rounds `n` up to a multiple of `to` (a power of two); `None` on overflow.
pub fn align_up(n: usize, to: usize) -> Option<usize> {
    debug_assert!(to.is_power_of_two());
    n.checked_add(to - 1).map(|v| v & !(to - 1))
}

/// A page-granular allocator of offsets in `[0, len)`.
#[derive(Debug, Clone)]
pub struct RangeAlloc {
    len: usize,
    free_by_addr: BTreeMap<usize, usize>,
    free_by_size: BTreeSet<(usize, usize)>,
    used: BTreeMap<usize, usize>,
    used_bytes: usize,
}

impl RangeAlloc {
    /// An allocator over `[0, len)`; `len` is rounded down to whole pages.
    pub fn new(len: usize) -> RangeAlloc {
        let len = len & !(PAGE - 1);
        let mut a = RangeAlloc {
            len,
            free_by_addr: BTreeMap::new(),
            free_by_size: BTreeSet::new(),
            used: BTreeMap::new(),
            used_bytes: 0,
        };
        if len > 0 {
            a.insert_free(0, len);
        }
        a
    }

    /// Size of the managed span in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the managed span is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes in live ranges.
    pub fn used_bytes(&self) -> usize {
        self.used_bytes
    }

    /// Number of live ranges.
    pub fn live(&self) -> usize {
        self.used.len()
    }

    /// Number of free ranges (1 when everything is free: freed ranges coalesce).
    pub fn free_ranges(&self) -> usize {
        self.free_by_addr.len()
    }

    fn insert_free(&mut self, off: usize, len: usize) {
        self.free_by_addr.insert(off, len);
        self.free_by_size.insert((len, off));
    }

    fn remove_free(&mut self, off: usize, len: usize) {
        self.free_by_addr.remove(&off);
        self.free_by_size.remove(&(len, off));
    }

    /// Allocates `size` bytes (rounded up to pages) at an offset that is a multiple of `align` (at least a
    /// page). Best fit: the smallest free range that holds the aligned block. `None` when nothing fits.
    pub fn alloc(&mut self, size: usize, align: usize) -> Option<usize> {
        let align = align.max(PAGE);
        if !align.is_power_of_two() || size == 0 {
            return None;
        }
        let size = align_up(size, PAGE)?;
        let mut found = None;
        for &(len, off) in self.free_by_size.range((size, 0)..) {
            let start = align_up(off, align)?;
            if start.checked_add(size).is_some_and(|end| end <= off + len) {
                found = Some((off, len, start));
                break;
            }
        }
        let (off, len, start) = found?;
        self.remove_free(off, len);
        if start > off {
            self.insert_free(off, start - off);
        }
        let end = start + size;
        if end < off + len {
            self.insert_free(end, off + len - end);
        }
        self.used.insert(start, size);
        self.used_bytes += size;
        Some(start)
    }

    /// Live ranges as `(offset, length)`, by address.
    pub fn live_ranges(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.used.iter().map(|(&o, &l)| (o, l))
    }

    /// The length of the live range starting at `off`, if there is one.
    pub fn size_of(&self, off: usize) -> Option<usize> {
        self.used.get(&off).copied()
    }

    /// First phase of a free: removes the live range at `off` and returns its length. The range is in neither
    /// set until [`RangeAlloc::give_back`]; `None` if `off` does not start a live range.
    pub fn take(&mut self, off: usize) -> Option<usize> {
        let len = self.used.remove(&off)?;
        self.used_bytes -= len;
        Some(len)
    }

    /// Second phase of a free: returns `[off, off + len)` (taken earlier, or cut off by
    /// [`RangeAlloc::shrink`]) to the free set, merging it with free neighbours.
    pub fn give_back(&mut self, off: usize, len: usize) {
        debug_assert!(off.is_multiple_of(PAGE) && len.is_multiple_of(PAGE) && len > 0 && off + len <= self.len);
        let (mut start, mut end) = (off, off + len);
        if let Some((&p, &plen)) = self.free_by_addr.range(..off).next_back() {
            debug_assert!(p + plen <= off, "double free of offset {off:#x}");
            if p + plen == off {
                self.remove_free(p, plen);
                start = p;
            }
        }
        if let Some(nlen) = self.free_by_addr.get(&end).copied() {
            self.remove_free(end, nlen);
            end += nlen;
        }
        self.insert_free(start, end - start);
    }

    /// Grows the live range at `off` to `new_size` (rounded up to pages) if the free range right after it
    /// holds the difference. Returns whether it grew (a live range already that large counts as grown).
    pub fn grow(&mut self, off: usize, new_size: usize) -> bool {
        let (Some(cur), Some(new)) = (self.used.get(&off).copied(), align_up(new_size, PAGE)) else {
            return false;
        };
        if new <= cur {
            return true;
        }
        let next = off + cur;
        let Some(nlen) = self.free_by_addr.get(&next).copied() else {
            return false;
        };
        let extra = new - cur;
        if nlen < extra {
            return false;
        }
        self.remove_free(next, nlen);
        if nlen > extra {
            self.insert_free(next + extra, nlen - extra);
        }
        self.used.insert(off, new);
        self.used_bytes += extra;
        true
    }

    /// Shrinks the live range at `off` to `new_size` (rounded up to pages, at least one page). Returns the cut
    /// tail `(offset, len)`, which the caller releases and then hands to [`RangeAlloc::give_back`]; `None` when
    /// nothing is cut or `off` is not live.
    pub fn shrink(&mut self, off: usize, new_size: usize) -> Option<(usize, usize)> {
        let cur = self.used.get(&off).copied()?;
        let new = align_up(new_size.max(1), PAGE)?;
        if new >= cur {
            return None;
        }
        self.used.insert(off, new);
        self.used_bytes -= cur - new;
        Some((off + new, cur - new))
    }

    /// Checks every internal invariant (tests and debug builds): the sets agree, nothing overlaps, free ranges
    /// are coalesced, and live plus free bytes cover exactly what is not in flight between `take` and
    /// `give_back` (`in_flight` bytes).
    pub fn check(&self, in_flight: usize) -> Result<(), String> {
        if self.free_by_addr.len() != self.free_by_size.len() {
            return Err("free sets disagree in size".into());
        }
        for (&off, &len) in &self.free_by_addr {
            if !self.free_by_size.contains(&(len, off)) {
                return Err(format!("free range {off:#x}+{len:#x} missing from the size index"));
            }
        }
        let mut all: Vec<(usize, usize, bool)> = self.free_by_addr.iter().map(|(&o, &l)| (o, l, true)).collect();
        all.extend(self.used.iter().map(|(&o, &l)| (o, l, false)));
        all.sort_unstable();
        let mut prev_end = 0;
        let mut prev_free_end = None;
        let mut total = 0;
        for &(o, l, free) in &all {
            if o % PAGE != 0 || l % PAGE != 0 || l == 0 {
                return Err(format!("range {o:#x}+{l:#x} is not whole pages"));
            }
            if o < prev_end {
                return Err(format!("range {o:#x} overlaps its predecessor ending at {prev_end:#x}"));
            }
            if free && prev_free_end == Some(o) {
                return Err(format!("free range at {o:#x} is not coalesced with its predecessor"));
            }
            prev_free_end = if free { Some(o + l) } else { None };
            prev_end = o + l;
            total += l;
        }
        if prev_end > self.len {
            return Err(format!("range ends at {prev_end:#x} past the span {:#x}", self.len));
        }
        if total + in_flight != self.len {
            return Err(format!("{total} + {in_flight} bytes accounted of {}", self.len));
        }
        if self.used.values().sum::<usize>() != self.used_bytes {
            return Err("used_bytes is out of date".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reuse_and_coalesce() {
        let mut a = RangeAlloc::new(16 * PAGE);
        let x = a.alloc(PAGE, PAGE).unwrap();
        let y = a.alloc(3 * PAGE + 1, PAGE).unwrap();
        let z = a.alloc(PAGE, PAGE).unwrap();
        assert_eq!((x, y, z), (0, PAGE, 5 * PAGE));
        let l = a.take(y).unwrap();
        assert_eq!(l, 4 * PAGE);
        a.give_back(y, l);
        // Best fit: a 2-page block goes into the 4-page hole, not the 10-page tail.
        assert_eq!(a.alloc(2 * PAGE, PAGE), Some(PAGE));
        for off in [x, PAGE, z] {
            let l = a.take(off).unwrap();
            a.give_back(off, l);
        }
        assert_eq!(a.free_ranges(), 1);
        assert_eq!(a.used_bytes(), 0);
        a.check(0).unwrap();
        assert_eq!(a.alloc(16 * PAGE, PAGE), Some(0));
        assert_eq!(a.alloc(PAGE, PAGE), None);
    }

    #[test]
    fn alignment_and_bad_requests() {
        let mut a = RangeAlloc::new(64 * PAGE);
        a.alloc(PAGE, PAGE).unwrap();
        let big = a.alloc(PAGE, 16 * PAGE).unwrap();
        assert_eq!(big % (16 * PAGE), 0);
        a.check(0).unwrap();
        assert_eq!(a.alloc(0, PAGE), None);
        assert_eq!(a.alloc(PAGE, 3 * PAGE), None);
        assert_eq!(a.alloc(usize::MAX - 5, PAGE), None);
        assert_eq!(a.alloc(PAGE, 128 * PAGE), None, "no offset in the span has that alignment except 0, taken");
        assert_eq!(a.take(big + PAGE), None, "an interior offset is not a live range");
    }

    #[test]
    fn grow_and_shrink_in_place() {
        let mut a = RangeAlloc::new(32 * PAGE);
        let x = a.alloc(2 * PAGE, PAGE).unwrap();
        assert!(a.grow(x, 8 * PAGE));
        assert_eq!(a.size_of(x), Some(8 * PAGE));
        let y = a.alloc(PAGE, PAGE).unwrap();
        assert_eq!(y, 8 * PAGE);
        assert!(!a.grow(x, 9 * PAGE), "blocked by y");
        let (t, tl) = a.shrink(x, 3 * PAGE - 7).unwrap();
        assert_eq!((t, tl), (3 * PAGE, 5 * PAGE));
        a.check(tl).unwrap();
        a.give_back(t, tl);
        a.check(0).unwrap();
        assert_eq!(a.shrink(x, 3 * PAGE), None);
        assert!(a.grow(x, 8 * PAGE));
        a.check(0).unwrap();
    }

    #[derive(Debug, Clone)]
    enum Action {
        Alloc { size: usize, align_shift: u32 },
        Dealloc { i: usize },
        Realloc { i: usize, size: usize },
    }

    fn action() -> impl Strategy<Value = Action> {
        prop_oneof![
            4 => (1usize..12 * PAGE, 0u32..4).prop_map(|(size, align_shift)| Action::Alloc { size, align_shift }),
            3 => any::<usize>().prop_map(|i| Action::Dealloc { i }),
            3 => (any::<usize>(), 1usize..16 * PAGE).prop_map(|(i, size)| Action::Realloc { i, size }),
        ]
    }

    /// The memory the allocator manages, simulated: released bytes are zeroed, so a fresh block must read
    /// zeros, and every live block must keep the byte pattern its owner wrote.
    struct Model {
        a: RangeAlloc,
        mem: Vec<u8>,
        live: Vec<(usize, usize, u8)>,
        next_tag: u8,
    }

    impl Model {
        fn release(&mut self, off: usize, len: usize) {
            self.mem[off..off + len].fill(0);
        }
        fn free(&mut self, off: usize) {
            let len = self.a.take(off).expect("live");
            self.a.check(len).unwrap();
            self.release(off, len);
            self.a.give_back(off, len);
        }
        fn fill(&mut self, off: usize, size: usize) -> u8 {
            self.next_tag = self.next_tag.wrapping_add(1).max(1);
            self.mem[off..off + size].fill(self.next_tag);
            self.next_tag
        }
        fn verify(&self) {
            self.a.check(0).unwrap();
            let mut blocks: Vec<(usize, usize, usize, u8)> = self
                .live
                .iter()
                .map(|&(off, size, tag)| (off, size, self.a.size_of(off).expect("live block is known"), tag))
                .collect();
            blocks.sort_unstable();
            let zeros = vec![0u8; self.mem.len()];
            let mut pos = 0;
            for &(off, size, cap, tag) in &blocks {
                assert!(cap >= size && off % PAGE == 0);
                assert!(off >= pos, "two live blocks share a byte at {off:#x}");
                assert!(self.mem[pos..off] == zeros[..off - pos], "free bytes below {off:#x} are not zero");
                assert!(self.mem[off..off + size] == vec![tag; size][..], "block {off:#x} corrupted");
                pos = off + cap;
            }
            assert!(self.mem[pos..] == zeros[pos..], "free bytes above {pos:#x} are not zero");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]
        #[test]
        fn fuzz_actions(actions in proptest::collection::vec(action(), 1..120)) {
            let span = 96 * PAGE;
            let mut m = Model { a: RangeAlloc::new(span), mem: vec![0; span], live: Vec::new(), next_tag: 0 };
            for act in actions {
                match act {
                    Action::Alloc { size, align_shift } => {
                        let align = PAGE << align_shift;
                        if let Some(off) = m.a.alloc(size, align) {
                            prop_assert_eq!(off % align, 0);
                            prop_assert!(m.mem[off..off + size].iter().all(|&b| b == 0), "fresh block not zero");
                            let tag = m.fill(off, size);
                            m.live.push((off, size, tag));
                        } else {
                            // Refusal is only allowed when no free range could hold the block.
                            let need = align_up(size, PAGE).unwrap() + align - PAGE;
                            prop_assert!(m.a.free_by_size.range((need, 0)..).next().is_none());
                        }
                    }
                    Action::Dealloc { i } if !m.live.is_empty() => {
                        let (off, _, _) = m.live.swap_remove(i % m.live.len());
                        m.free(off);
                    }
                    Action::Realloc { i, size } if !m.live.is_empty() => {
                        let k = i % m.live.len();
                        let (off, old, tag) = m.live[k];
                        if size <= old {
                            if let Some((t, tl)) = m.a.shrink(off, size) {
                                m.release(t, tl);
                                m.a.give_back(t, tl);
                            }
                            m.live[k] = (off, size, tag);
                        } else if m.a.grow(off, size) {
                            m.mem[off + old..off + size].fill(tag);
                            m.live[k] = (off, size, tag);
                        } else if let Some(new) = m.a.alloc(size, PAGE) {
                            m.mem.copy_within(off..off + old, new);
                            m.mem[new + old..new + size].fill(tag);
                            m.free(off);
                            m.live[k] = (new, size, tag);
                        }
                    }
                    _ => {}
                }
                m.verify();
            }
            for (off, _, _) in std::mem::take(&mut m.live) {
                m.free(off);
            }
            prop_assert_eq!(m.a.free_ranges(), 1);
            prop_assert_eq!(m.a.used_bytes(), 0);
        }
    }
}
