//! [`List`]: a sequence of chunked nodes — O(1) at both ends, insert and remove anywhere by shifting within
//! one node (splitting a full one) — and the base of [`Stack`](super::Stack) and [`Queue`](super::Queue).
//!
//! Each node is one 4 KiB chunk object holding a run of elements at `start..start + len`; the node order,
//! starts and lengths are kept locally (a far pointer and two counts per 4 KiB). Nodes have *positions*
//! that stay put while nodes come and go at the ends, so walks in either direction feed the stride
//! prefetcher as stride +1 or −1 (direction detection).

use super::{check_elem, elems, elems_mut, new_chunk, per_chunk, warm, Chunk, ContainerError, ElemRef, SpaceHandle};
use crate::epoch::DerefScope;
use crate::prefetch::{PrefetchConfig, PrefetchStats, Prefetcher};
use crate::ptr::FarBox;
use crate::runtime::{FetchHandle, Runtime};
use bytemuck::Pod;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::marker::PhantomData;

fn pos(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[derive(Debug)]
struct Node {
    obj: FarBox<Chunk>,
    start: usize,
    len: usize,
}

/// A far list of `T` in chunked nodes.
pub struct List<'rt, T: Pod> {
    sp: SpaceHandle<'rt>,
    nodes: VecDeque<Node>,
    len: usize,
    /// Position of `nodes[0]`.
    base: i64,
    pf: Mutex<Prefetcher>,
    pf_cfg: PrefetchConfig,
    _t: PhantomData<T>,
}

impl<T: Pod> std::fmt::Debug for List<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("List").field("len", &self.len).field("nodes", &self.nodes.len()).finish()
    }
}

impl<'rt, T: Pod> List<'rt, T> {
    /// An empty list in a new space of `rt`.
    pub fn new(rt: &'rt Runtime) -> Result<Self, ContainerError> {
        const { check_elem::<T>() };
        let pf_cfg = PrefetchConfig::for_runtime(rt, super::CHUNK_BYTES);
        Ok(List {
            sp: SpaceHandle::new(rt)?,
            nodes: VecDeque::new(),
            len: 0,
            base: 0,
            pf: Mutex::new(Prefetcher::new(pf_cfg)),
            pf_cfg,
            _t: PhantomData,
        })
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The direction prefetcher's counters (end operations and index accesses).
    pub fn prefetch_stats(&self) -> PrefetchStats {
        self.pf.lock().stats()
    }

    fn fetch_positions(&self, pos: &[i64]) -> Result<Option<FetchHandle>, crate::ObjError> {
        let objs = pos
            .iter()
            .filter_map(|&p| usize::try_from(p - self.base).ok())
            .filter_map(|i| self.nodes.get(i))
            .map(|n| &n.obj);
        let h = self.sp.rt.fetch(objs)?;
        Ok((!h.is_empty()).then_some(h))
    }

    /// Feeds the direction detector with node `n`.
    fn note(&self, n: usize) {
        if let Some(mut p) = self.pf.try_lock() {
            let local = self.nodes[n].obj.is_local();
            p.access(self.base + pos(n), local, |b| self.fetch_positions(b));
        }
    }

    /// Node and offset (within its run) of element `i`, searching from the nearer end.
    fn locate(&self, i: usize) -> (usize, usize) {
        if i < self.len / 2 {
            let mut i = i;
            for (n, node) in self.nodes.iter().enumerate() {
                if i < node.len {
                    return (n, i);
                }
                i -= node.len;
            }
        } else {
            let mut back = self.len - i;
            for (n, node) in self.nodes.iter().enumerate().rev() {
                if back <= node.len {
                    return (n, node.len - back);
                }
                back -= node.len;
            }
        }
        unreachable!("index {i} within length {} is in some node", self.len)
    }

    /// Element `i`, borrowed for the life of `scope` (walks the local node index, O(nodes)).
    pub fn get<'s>(&'s self, i: usize, scope: &'s DerefScope) -> Option<ElemRef<'s, T>> {
        if i >= self.len {
            return None;
        }
        let (n, k) = self.locate(i);
        self.note(n);
        let node = &self.nodes[n];
        Some(ElemRef::new(node.obj.deref(scope), node.start + k))
    }

    /// A copy of element `i`.
    pub fn read(&self, i: usize) -> Option<T> {
        let s = DerefScope::new();
        self.get(i, &s).map(|r| *r)
    }

    /// A copy of the first element.
    pub fn front(&self) -> Option<T> {
        self.read(0)
    }

    /// A copy of the last element.
    pub fn back(&self) -> Option<T> {
        self.read(self.len.checked_sub(1)?)
    }

    fn new_node(&self, start: usize) -> Result<Node, ContainerError> {
        Ok(Node { obj: new_chunk(self.sp.rt, self.sp.space)?, start, len: 0 })
    }

    fn write_at(node: &mut Node, k: usize, v: T) {
        let s = DerefScope::new();
        elems_mut::<T>(&mut node.obj.deref_mut(&s), k + 1)[k] = v;
    }

    /// Appends at the back.
    pub fn push_back(&mut self, v: T) -> Result<(), ContainerError> {
        if self.nodes.back().is_none_or(|n| n.start + n.len == per_chunk::<T>()) {
            let node = self.new_node(0)?;
            self.nodes.push_back(node);
        }
        let node = self.nodes.back_mut().expect("a node was just ensured");
        Self::write_at(node, node.start + node.len, v);
        node.len += 1;
        self.len += 1;
        Ok(())
    }

    /// Prepends at the front.
    pub fn push_front(&mut self, v: T) -> Result<(), ContainerError> {
        if self.nodes.front().is_none_or(|n| n.start == 0) {
            let node = self.new_node(per_chunk::<T>())?;
            self.nodes.push_front(node);
            self.base -= 1;
        }
        let node = self.nodes.front_mut().expect("a node was just ensured");
        node.start -= 1;
        node.len += 1;
        Self::write_at(node, node.start, v);
        self.len += 1;
        Ok(())
    }

    fn read_at(node: &Node, k: usize) -> T {
        let s = DerefScope::new();
        elems::<T>(&node.obj.deref(&s), k + 1)[k]
    }

    /// Removes the last element.
    pub fn pop_back(&mut self) -> Option<T> {
        let n = self.nodes.len().checked_sub(1)?;
        self.note(n);
        let node = &mut self.nodes[n];
        let v = Self::read_at(node, node.start + node.len - 1);
        node.len -= 1;
        if node.len == 0 {
            self.nodes.pop_back();
        }
        self.len -= 1;
        Some(v)
    }

    /// Removes the first element.
    pub fn pop_front(&mut self) -> Option<T> {
        if self.nodes.is_empty() {
            return None;
        }
        self.note(0);
        let node = &mut self.nodes[0];
        let v = Self::read_at(node, node.start);
        node.start += 1;
        node.len -= 1;
        if node.len == 0 {
            self.nodes.pop_front();
            self.base += 1;
        }
        self.len -= 1;
        Some(v)
    }

    /// Inserts `v` before element `i` (`i == len` appends).
    pub fn insert(&mut self, i: usize, v: T) -> Result<(), ContainerError> {
        if i > self.len {
            return Err(ContainerError::OutOfBounds { index: i as u64, len: self.len as u64 });
        }
        if i == self.len {
            return self.push_back(v);
        }
        if i == 0 {
            return self.push_front(v);
        }
        let per = per_chunk::<T>();
        let (mut n, mut k) = self.locate(i);
        if self.nodes[n].len == per {
            // Split the full node: its upper half moves to a new node after it.
            let half = per / 2;
            let mut fresh = self.new_node(0)?;
            {
                let s = DerefScope::new();
                let old = self.nodes[n].obj.deref(&s);
                let mut new = fresh.obj.deref_mut(&s);
                elems_mut::<T>(&mut new, per - half).copy_from_slice(&elems::<T>(&old, per)[half..]);
            }
            fresh.len = per - half;
            self.nodes[n].len = half;
            self.nodes.insert(n + 1, fresh);
            self.pf.get_mut().reset();
            if k >= half {
                n += 1;
                k -= half;
            }
        }
        let node = &mut self.nodes[n];
        let s = DerefScope::new();
        let mut c = node.obj.deref_mut(&s);
        let e = elems_mut::<T>(&mut c, per);
        let at = node.start + k;
        if node.start + node.len < per {
            e.copy_within(at..node.start + node.len, at + 1);
            e[at] = v;
        } else {
            // No room after the run: shift its head left instead.
            e.copy_within(node.start..at, node.start - 1);
            node.start -= 1;
            e[at - 1] = v;
        }
        node.len += 1;
        self.len += 1;
        Ok(())
    }

    /// Removes and returns element `i`.
    pub fn remove(&mut self, i: usize) -> Option<T> {
        if i >= self.len {
            return None;
        }
        let (n, k) = self.locate(i);
        let node = &mut self.nodes[n];
        let v = {
            let s = DerefScope::new();
            let mut c = node.obj.deref_mut(&s);
            let e = elems_mut::<T>(&mut c, per_chunk::<T>());
            let at = node.start + k;
            let v = e[at];
            e.copy_within(at + 1..node.start + node.len, at);
            v
        };
        node.len -= 1;
        self.len -= 1;
        if node.len == 0 {
            self.nodes.remove(n);
            if n == 0 {
                self.base += 1;
            } else {
                self.pf.get_mut().reset();
            }
        }
        Some(v)
    }

    /// Starts fetching the nodes holding elements `range` (at most two prefetch windows of them) and returns
    /// the handle.
    pub fn prefetch(&self, range: std::ops::Range<usize>) -> Result<FetchHandle, ContainerError> {
        let end = range.end.min(self.len);
        if range.start >= end {
            return Ok(self.sp.rt.fetch(std::iter::empty::<&FarBox<Chunk>>())?);
        }
        let (n0, _) = self.locate(range.start);
        let (n1, _) = self.locate(end - 1);
        let n1 = n1.min(n0 + 2 * self.pf_cfg.max_window - 1);
        Ok(self.sp.rt.fetch(self.nodes.range(n0..=n1).map(|n| &n.obj))?)
    }

    /// Removes every element.
    pub fn clear(&mut self) {
        self.nodes.clear();
        self.len = 0;
        self.pf.get_mut().reset();
    }

    /// Double-ended iterator over copies of the elements; it holds a scope, renews it at each node, and
    /// prefetches ahead in the direction it walks.
    pub fn iter(&self) -> ListIter<'_, 'rt, T> {
        ListIter {
            l: self,
            front: (0, 0),
            back: (self.nodes.len(), 0),
            left: self.len,
            scope: None,
            cur: usize::MAX,
            pf_front: Prefetcher::new(self.pf_cfg),
            pf_back: Prefetcher::new(self.pf_cfg),
        }
    }

    /// Copies every element into a `Vec`.
    pub fn to_vec(&self) -> Vec<T> {
        self.iter().collect()
    }
}

/// Iterator over a [`List`] (see [`List::iter`]).
#[derive(Debug)]
pub struct ListIter<'a, 'rt, T: Pod> {
    l: &'a List<'rt, T>,
    /// Next node and offset from the front.
    front: (usize, usize),
    /// Node and offset one past the next element from the back (offset 0: the end of the previous node).
    back: (usize, usize),
    left: usize,
    scope: Option<DerefScope>,
    cur: usize,
    pf_front: Prefetcher,
    pf_back: Prefetcher,
}

impl<T: Pod> ListIter<'_, '_, T> {
    fn read(&mut self, n: usize, k: usize, forward: bool) -> T {
        let l = self.l;
        if n != self.cur {
            self.scope = None;
            let pf = if forward { &mut self.pf_front } else { &mut self.pf_back };
            pf.access(l.base + pos(n), l.nodes[n].obj.is_local(), |b| l.fetch_positions(b));
            warm(&l.nodes[n].obj);
            self.cur = n;
        }
        let s = self.scope.get_or_insert_with(DerefScope::new);
        let node = &l.nodes[n];
        elems::<T>(&node.obj.deref(s), node.start + k + 1)[node.start + k]
    }
}

impl<T: Pod> Iterator for ListIter<'_, '_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        if self.left == 0 {
            self.scope = None;
            return None;
        }
        let (n, k) = self.front;
        let v = self.read(n, k, true);
        self.front = if k + 1 == self.l.nodes[n].len { (n + 1, 0) } else { (n, k + 1) };
        self.left -= 1;
        Some(v)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl<T: Pod> DoubleEndedIterator for ListIter<'_, '_, T> {
    fn next_back(&mut self) -> Option<T> {
        if self.left == 0 {
            self.scope = None;
            return None;
        }
        let (mut n, mut k) = self.back;
        if k == 0 {
            n -= 1;
            k = self.l.nodes[n].len;
        }
        let v = self.read(n, k - 1, false);
        self.back = (n, k - 1);
        self.left -= 1;
        Some(v)
    }
}

impl<T: Pod> ExactSizeIterator for ListIter<'_, '_, T> {}
