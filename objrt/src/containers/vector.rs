//! [`Vector`]: a growable far array in 4 KiB chunks — also the DataFrame column type, whose operations run
//! locally or in memd.

use super::CHUNK_BYTES;
use super::{
    check_elem, elems, elems_mut, new_chunk, per_chunk, warm, Chunk, ContainerError, ElemMut, ElemRef, Offload,
    SpaceHandle,
};
use crate::epoch::DerefScope;
use crate::prefetch::{PrefetchConfig, PrefetchStats, Prefetcher};
use crate::ptr::FarBox;
use crate::runtime::{FetchHandle, Runtime};
use bytemuck::Pod;
use farmem_memd::far::ObjectSink;
use farmem_memd::offload::layout::{
    self, col_op, put_ids, put_u64s, reducer, ColumnInput, Num, Pred, Reader, Sum, COLUMN_TYPE,
};
use farmem_memd::proto::Status;
use farmem_memd::StoreError;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// A growable array of `T` kept in far memory, in chunks of 4 KiB.
///
/// Reads through `&self` may come from many threads; index streams feed a stride prefetcher. As a DataFrame
/// column (`T` numeric) it offers reductions, filters, copy/shuffle by index and assignment, each run here or
/// in memd (see [`Offload`]).
pub struct Vector<'rt, T: Pod> {
    pub(crate) sp: Arc<SpaceHandle<'rt>>,
    pub(crate) chunks: Vec<FarBox<Chunk>>,
    pub(crate) len: usize,
    pf: Mutex<Prefetcher>,
    pf_cfg: PrefetchConfig,
    last_chunk: AtomicUsize,
    _t: PhantomData<T>,
}

impl<T: Pod> std::fmt::Debug for Vector<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vector")
            .field("len", &self.len)
            .field("chunks", &self.chunks.len())
            .field("ds", &format_args!("{:#x}", self.sp.ds))
            .finish()
    }
}

fn oob(index: usize, len: usize) -> ContainerError {
    ContainerError::OutOfBounds { index: index as u64, len: len as u64 }
}

impl<'rt, T: Pod> Vector<'rt, T> {
    /// An empty vector in a new space of `rt`.
    pub fn new(rt: &'rt Runtime) -> Result<Self, ContainerError> {
        Ok(Self::in_space(Arc::new(SpaceHandle::new(rt)?)))
    }

    /// An empty vector sharing `sp` (derived columns live beside their source, where memd can write them).
    pub(crate) fn in_space(sp: Arc<SpaceHandle<'rt>>) -> Self {
        const { check_elem::<T>() };
        let pf_cfg = PrefetchConfig::for_runtime(sp.rt, super::CHUNK_BYTES);
        Vector {
            sp,
            chunks: Vec::new(),
            len: 0,
            pf: Mutex::new(Prefetcher::new(pf_cfg)),
            pf_cfg,
            last_chunk: AtomicUsize::new(usize::MAX),
            _t: PhantomData,
        }
    }

    /// A vector holding a copy of `items`.
    pub fn from_slice(rt: &'rt Runtime, items: &[T]) -> Result<Self, ContainerError> {
        let mut v = Self::new(rt)?;
        v.extend_from_slice(items)?;
        Ok(v)
    }

    /// A vector of `n` copies of `value`.
    pub fn from_elem(rt: &'rt Runtime, value: T, n: usize) -> Result<Self, ContainerError> {
        let mut v = Self::new(rt)?;
        v.resize(n, value)?;
        Ok(v)
    }

    /// The runtime.
    pub fn runtime(&self) -> &'rt Runtime {
        self.sp.rt
    }

    /// memd's data-structure id of this vector's space.
    pub fn ds(&self) -> u64 {
        self.sp.ds
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of chunk objects.
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// Chunk objects that are in far memory right now.
    pub fn remote_chunks(&self) -> usize {
        self.chunks.iter().filter(|c| !c.is_local()).count()
    }

    /// Memd object ids of the chunks, in order.
    pub fn chunk_ids(&self) -> Vec<u64> {
        self.chunks.iter().map(FarBox::id).collect()
    }

    /// The stride prefetcher's counters (index accesses through [`Vector::get`] and friends).
    pub fn prefetch_stats(&self) -> PrefetchStats {
        self.pf.lock().stats()
    }

    /// Replaces the prefetch tuning (the default comes from [`PrefetchConfig::for_runtime`]).
    pub fn set_prefetch_config(&mut self, cfg: PrefetchConfig) {
        self.pf_cfg = cfg;
        *self.pf.get_mut() = Prefetcher::new(cfg);
    }

    #[inline]
    fn split(i: usize) -> (usize, usize) {
        (i / per_chunk::<T>(), i % per_chunk::<T>())
    }

    /// Elements held by chunk `c`.
    #[inline]
    pub(crate) fn rows_in(&self, c: usize) -> usize {
        self.len.saturating_sub(c * per_chunk::<T>()).min(per_chunk::<T>())
    }

    fn fetch_positions(&self, pos: &[i64]) -> Result<Option<FetchHandle>, crate::ObjError> {
        let objs = pos.iter().filter_map(|&p| usize::try_from(p).ok()).filter_map(|p| self.chunks.get(p));
        let h = self.sp.rt.fetch(objs)?;
        Ok((!h.is_empty()).then_some(h))
    }

    /// Feeds the stride prefetcher when an index access moves to another chunk.
    #[inline]
    fn note(&self, c: usize) {
        // A plain load first: threads reading the same chunk share the line instead of bouncing it.
        if self.last_chunk.load(Relaxed) != c {
            self.last_chunk.store(c, Relaxed);
            self.note_slow(c);
        }
    }

    #[cold]
    fn note_slow(&self, c: usize) {
        // Never wait for the prefetcher: another thread is feeding it.
        if let Some(mut p) = self.pf.try_lock() {
            let local = self.chunks[c].is_local();
            p.access(i64::try_from(c).unwrap_or(i64::MAX), local, |b| self.fetch_positions(b));
        }
    }

    /// Element `i`, borrowed for the life of `scope`.
    #[inline]
    pub fn get<'s>(&'s self, i: usize, scope: &'s DerefScope) -> Option<ElemRef<'s, T>> {
        if i >= self.len {
            return None;
        }
        let (c, k) = Self::split(i);
        self.note(c);
        Some(ElemRef::new(self.chunks[c].deref(scope), k))
    }

    /// Element `i`, mutably borrowed for the life of `scope` (its chunk becomes dirty).
    #[inline]
    pub fn get_mut<'s>(&'s mut self, i: usize, scope: &'s DerefScope) -> Option<ElemMut<'s, T>> {
        if i >= self.len {
            return None;
        }
        let (c, k) = Self::split(i);
        self.note(c);
        Some(ElemMut::new(self.chunks[c].deref_mut(scope), k))
    }

    /// A copy of element `i`.
    pub fn read(&self, i: usize) -> Option<T> {
        let s = DerefScope::new();
        self.get(i, &s).map(|r| *r)
    }

    /// A copy of element `i` that does not bring its chunk into local memory.
    pub fn read_nt(&self, i: usize) -> Result<T, ContainerError> {
        if i >= self.len {
            return Err(oob(i, self.len));
        }
        let (c, k) = Self::split(i);
        let chunk = self.chunks[c].read_nt()?;
        Ok(elems::<T>(&chunk, k + 1)[k])
    }

    /// Overwrites element `i`.
    pub fn set(&mut self, i: usize, value: T) -> Result<(), ContainerError> {
        let len = self.len;
        let s = DerefScope::new();
        match self.get_mut(i, &s) {
            Some(mut r) => {
                *r = value;
                Ok(())
            }
            None => Err(oob(i, len)),
        }
    }

    /// Overwrites element `i` without bringing its chunk into local memory (its chunk is read and written
    /// whole in memd if it is remote).
    pub fn write_nt(&mut self, i: usize, value: T) -> Result<(), ContainerError> {
        if i >= self.len {
            return Err(oob(i, self.len));
        }
        let (c, k) = Self::split(i);
        let mut chunk = self.chunks[c].read_nt()?;
        elems_mut::<T>(&mut chunk, k + 1)[k] = value;
        self.chunks[c].write_nt(chunk)?;
        Ok(())
    }

    /// Appends an element.
    pub fn push(&mut self, value: T) -> Result<(), ContainerError> {
        let (c, k) = Self::split(self.len);
        if c == self.chunks.len() {
            self.chunks.push(new_chunk(self.sp.rt, self.sp.space)?);
        }
        let s = DerefScope::new();
        elems_mut::<T>(&mut self.chunks[c].deref_mut(&s), k + 1)[k] = value;
        self.len += 1;
        Ok(())
    }

    /// Appends every element of `items`, a chunk at a time.
    pub fn extend_from_slice(&mut self, mut items: &[T]) -> Result<(), ContainerError> {
        while !items.is_empty() {
            let (c, k) = Self::split(self.len);
            if c == self.chunks.len() {
                self.chunks.push(new_chunk(self.sp.rt, self.sp.space)?);
            }
            let n = (per_chunk::<T>() - k).min(items.len());
            let s = DerefScope::new();
            elems_mut::<T>(&mut self.chunks[c].deref_mut(&s), k + n)[k..].copy_from_slice(&items[..n]);
            self.len += n;
            items = &items[n..];
        }
        Ok(())
    }

    /// Grows to `n` elements with copies of `value`, or truncates to `n`.
    pub fn resize(&mut self, n: usize, value: T) -> Result<(), ContainerError> {
        if n <= self.len {
            self.truncate(n);
            return Ok(());
        }
        let fill = vec![value; per_chunk::<T>().min(n - self.len)];
        while self.len < n {
            let k = (n - self.len).min(fill.len());
            self.extend_from_slice(&fill[..k])?;
        }
        Ok(())
    }

    /// Removes and returns the last element.
    pub fn pop(&mut self) -> Option<T> {
        let v = self.read(self.len.checked_sub(1)?)?;
        self.truncate(self.len - 1);
        Some(v)
    }

    /// Shortens to `n` elements (freeing whole chunks past the end).
    pub fn truncate(&mut self, n: usize) {
        if n >= self.len {
            return;
        }
        self.len = n;
        self.chunks.truncate(n.div_ceil(per_chunk::<T>()));
        self.last_chunk.store(usize::MAX, Relaxed);
    }

    /// Removes every element.
    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// Starts fetching the chunks holding elements `range` (at most two prefetch windows of them: the rest is
    /// left for later) and returns the handle.
    pub fn prefetch(&self, range: Range<usize>) -> Result<FetchHandle, ContainerError> {
        let end = range.end.min(self.len);
        if range.start >= end {
            return Ok(self.sp.rt.fetch(std::iter::empty::<&FarBox<Chunk>>())?);
        }
        let (c0, _) = Self::split(range.start);
        let (c1, _) = Self::split(end - 1);
        let c1 = c1.min(c0 + 2 * self.pf_cfg.max_window - 1);
        Ok(self.sp.rt.fetch(self.chunks[c0..=c1].iter())?)
    }

    /// An iterator over copies of the elements; it holds a scope, renews it at each chunk and prefetches ahead.
    pub fn iter(&self) -> Iter<'_, 'rt, T> {
        Iter { v: self, i: 0, end: self.len, scope: None, cur: usize::MAX, pf: Prefetcher::new(self.pf_cfg) }
    }

    /// An iterator over copies of the elements that does not bring chunks into local memory: remote chunks are
    /// read from memd a window per request, local ones copied without warming them.
    pub fn iter_nt(&self) -> IterNt<'_, 'rt, T> {
        IterNt { v: self, i: 0, buf: Vec::new(), buf_start: 0, window: self.pf_cfg.max_window.max(1) }
    }

    /// Calls `f` on every chunk's elements in order (zero-copy), with sequential prefetching.
    pub fn for_each_slice(&self, mut f: impl FnMut(&[T])) {
        let mut pf = Prefetcher::new(self.pf_cfg);
        for c in 0..self.chunks.len() {
            pf.access(i64::try_from(c).unwrap_or(i64::MAX), self.chunks[c].is_local(), |b| self.fetch_positions(b));
            warm(&self.chunks[c]);
            let s = DerefScope::new();
            f(elems::<T>(&self.chunks[c].deref(&s), self.rows_in(c)));
        }
    }

    /// Calls `f` on every chunk's elements in order without bringing chunks into local memory (non-temporal):
    /// for a scan of more than the budget, caching buys nothing — with any recency-based eviction the chunks a
    /// scan caches are gone before it comes back to them — and costs a copy into cold heap memory per chunk plus
    /// the evacuator's work to drop it again. Remote chunks are read a prefetch window per request, with as many
    /// requests in flight as the prefetcher keeps ahead, each received straight into a buffer that later
    /// windows reuse (so it stays in cache); local chunks are copied without warming them.
    pub fn for_each_slice_nt(&self, mut f: impl FnMut(&[T])) -> Result<(), ContainerError> {
        let w = self.pf_cfg.max_window.max(1);
        let depth = (self.pf_cfg.max_ahead / w).max(2);
        let n = self.chunks.len();
        let mut spare: Vec<Vec<Chunk>> = Vec::new();
        let mut inflight: VecDeque<NtWindow> = VecDeque::new();
        let mut next = 0;
        while next < n || !inflight.is_empty() {
            while next < n && inflight.len() < depth {
                let end = (next + w).min(n);
                inflight.push_back(self.nt_request(next..end, spare.pop().unwrap_or_default())?);
                next = end;
            }
            let Some(mut win) = inflight.pop_front() else { break };
            let buf = win.finish(self)?;
            let mut r = 0;
            for k in win.range {
                let rows = self.rows_in(k);
                if win.remote.get(r) == Some(&k) {
                    f(elems::<T>(&buf[r], rows));
                    r += 1;
                } else {
                    // Read in place if still local; `&self` excludes writers, so if it was evicted meanwhile,
                    // memd's copy is the same.
                    let s = DerefScope::new();
                    match self.chunks[k].peek_nt(&s) {
                        Some(c) => f(elems::<T>(&c, rows)),
                        None => {
                            drop(s);
                            f(elems::<T>(&self.chunks[k].read_nt()?, rows));
                        }
                    }
                }
            }
            spare.push(buf);
        }
        Ok(())
    }

    /// Sends the read of the remote chunks of `range` (none if all are local), to be received into `buf`.
    fn nt_request(&self, range: Range<usize>, buf: Vec<Chunk>) -> Result<NtWindow, ContainerError> {
        let remote: Vec<usize> = range.clone().filter(|&k| !self.chunks[k].is_local()).collect();
        if remote.is_empty() {
            return Ok(NtWindow { range, remote, sent: None, buf });
        }
        let bytes = u32::try_from(CHUNK_BYTES).unwrap_or(u32::MAX);
        let sink = Arc::new(NtSink {
            expected: remote.iter().map(|&k| (self.chunks[k].id(), bytes)).collect(),
            buf: Mutex::new(buf),
        });
        let req =
            farmem_memd::Request::ReadObjects { ds: self.sp.ds, ids: sink.expected.iter().map(|e| e.0).collect() };
        let pending = self.sp.rt.store().submit_into(req, Arc::clone(&sink) as Arc<dyn ObjectSink>)?;
        Ok(NtWindow { range, remote, sent: Some((pending, sink)), buf: Vec::new() })
    }

    /// Copies every element into a `Vec`.
    pub fn to_vec(&self) -> Vec<T> {
        let mut out = Vec::with_capacity(self.len);
        self.for_each_slice(|s| out.extend_from_slice(s));
        out
    }

    /// Whether memd should run an operation on these chunks.
    fn remote_here(&self, mode: Offload, chunks: usize, remote: usize) -> bool {
        match mode {
            Offload::Local => false,
            Offload::Remote => true,
            Offload::Auto => chunks > 0 && 2 * remote > chunks,
        }
    }

    /// Writes back dirty chunks `which` and drops their local copies, so memd may rewrite them.
    fn hand_over(&mut self, which: &[usize]) -> Result<(), ContainerError> {
        self.sp.rt.write_back(which.iter().map(|&c| &self.chunks[c]))?;
        for &c in which {
            self.chunks[c].evict()?;
        }
        self.last_chunk.store(usize::MAX, Relaxed);
        Ok(())
    }
}

impl<'rt, T: Pod + Num> Vector<'rt, T> {
    fn header(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(16 + 8 * self.chunks.len());
        ColumnInput { elem: T::ELEM, len: self.len as u64, chunks: self.chunk_ids() }.encode(&mut v);
        v
    }

    fn compute(&self, op: u32, args: &[u8]) -> Result<Vec<u8>, ContainerError> {
        self.sp.ensure(COLUMN_TYPE, &[])?;
        let mut input = self.header();
        input.extend_from_slice(args);
        Ok(self.sp.rt.store().compute(self.sp.ds, op, &input)?)
    }

    /// Runs reduction `op`, here or in memd.
    fn reduce(&self, op: u32, args: &[u8], mode: Offload) -> Result<Vec<u8>, ContainerError> {
        if self.remote_here(mode, self.chunks.len(), self.remote_chunks()) {
            let r = self
                .sp
                .rt
                .write_back(self.chunks.iter())
                .map_err(ContainerError::from)
                .and_then(|_| self.compute(op, args));
            match r {
                Ok(out) => return Ok(out),
                Err(e) if mode == Offload::Auto && unsupported(&e) => {
                    tracing::debug!("column op {op} runs locally: {e}");
                }
                Err(e) => return Err(e),
            }
        }
        let mut red = reducer(T::ELEM, op, &mut Reader::new(args))?;
        let mut pf = Prefetcher::new(self.pf_cfg);
        for c in 0..self.chunks.len() {
            pf.access(i64::try_from(c).unwrap_or(i64::MAX), self.chunks[c].is_local(), |b| self.fetch_positions(b));
            warm(&self.chunks[c]);
            let s = DerefScope::new();
            let chunk = self.chunks[c].deref(&s);
            red.feed(bytemuck::bytes_of(&*chunk), (c * per_chunk::<T>()) as u64, self.rows_in(c));
        }
        Ok(red.finish())
    }

    fn opt_value(out: &[u8]) -> Result<Option<T>, ContainerError> {
        match out.first() {
            Some(1) if out.len() == 1 + size_of::<T>() => Ok(Some(bytemuck::pod_read_unaligned(&out[1..]))),
            Some(0) if out.len() == 1 => Ok(None),
            _ => Err(ContainerError::Invalid(format!("malformed value reply of {} bytes", out.len()))),
        }
    }

    /// The sum (exact for integers; `f64` added in row order for floats).
    pub fn sum(&self, mode: Offload) -> Result<Sum, ContainerError> {
        Ok(Sum::decode(T::ELEM, &self.reduce(col_op::SUM, &[], mode)?)?)
    }

    /// The smallest value (NaN ignored), `None` when empty.
    pub fn min(&self, mode: Offload) -> Result<Option<T>, ContainerError> {
        Self::opt_value(&self.reduce(col_op::MIN, &[], mode)?)
    }

    /// The largest value (NaN ignored), `None` when empty.
    pub fn max(&self, mode: Offload) -> Result<Option<T>, ContainerError> {
        Self::opt_value(&self.reduce(col_op::MAX, &[], mode)?)
    }

    /// The lower median (rank `(len - 1) / 2` in total order), `None` when empty.
    pub fn median(&self, mode: Offload) -> Result<Option<T>, ContainerError> {
        Self::opt_value(&self.reduce(col_op::MEDIAN, &[], mode)?)
    }

    /// Distinct values in ascending total order.
    pub fn unique(&self, mode: Offload) -> Result<Vec<T>, ContainerError> {
        let out = self.reduce(col_op::UNIQUE, &[], mode)?;
        Ok(out.chunks_exact(size_of::<T>()).map(bytemuck::pod_read_unaligned).collect())
    }

    /// Row indices (ascending) whose value satisfies `pred`.
    pub fn filter(&self, pred: Pred<T>, mode: Offload) -> Result<Vec<u64>, ContainerError> {
        let mut args = Vec::new();
        pred.encode(&mut args);
        let out = self.reduce(col_op::FILTER, &args, mode)?;
        Ok(out.chunks_exact(8).map(bytemuck::pod_read_unaligned).collect())
    }

    fn check_indices(&self, idx: &[u64]) -> Result<(), ContainerError> {
        match idx.iter().find(|&&i| i >= self.len as u64) {
            Some(&i) => Err(ContainerError::OutOfBounds { index: i, len: self.len as u64 }),
            None => Ok(()),
        }
    }

    /// Copy by index: a new column (in this column's space) with `out[i] = self[idx[i]]`.
    pub fn gather(&self, idx: &[u64], mode: Offload) -> Result<Vector<'rt, T>, ContainerError> {
        self.check_indices(idx)?;
        if self.remote_here(mode, self.chunks.len(), self.remote_chunks()) {
            match self.gather_remote(idx) {
                Ok(v) => return Ok(v),
                Err(e) if mode == Offload::Auto && unsupported(&e) => {}
                Err(e) => return Err(e),
            }
        }
        let mut out = Vector::in_space(Arc::clone(&self.sp));
        let mut buf = Vec::with_capacity(per_chunk::<T>());
        for part in idx.chunks(per_chunk::<T>()) {
            buf.clear();
            let s = DerefScope::new();
            for &i in part {
                let i = usize::try_from(i).unwrap_or(usize::MAX);
                buf.push(*self.get(i, &s).ok_or_else(|| oob(i, self.len))?);
            }
            drop(s);
            out.extend_from_slice(&buf)?;
        }
        Ok(out)
    }

    fn gather_remote(&self, idx: &[u64]) -> Result<Vector<'rt, T>, ContainerError> {
        self.sp.ensure(COLUMN_TYPE, &[])?;
        self.sp.rt.write_back(self.chunks.iter())?;
        let mut out = Vector::in_space(Arc::clone(&self.sp));
        for _ in 0..layout::chunks_for(idx.len() as u64, size_of::<T>()) {
            out.chunks.push(new_chunk(self.sp.rt, self.sp.space)?);
        }
        out.len = idx.len();
        let all: Vec<usize> = (0..out.chunks.len()).collect();
        out.hand_over(&all)?;
        let mut args = Vec::new();
        put_ids(&mut args, &out.chunk_ids());
        put_u64s(&mut args, idx);
        self.compute(col_op::GATHER, &args)?;
        Ok(out)
    }

    /// Shuffle by index, in place: `self[i] = old[idx[i]]` for every row (`idx` has one entry per row).
    pub fn shuffle(&mut self, idx: &[u64], mode: Offload) -> Result<(), ContainerError> {
        if idx.len() != self.len {
            return Err(ContainerError::Invalid(format!("{} shuffle indices for {} rows", idx.len(), self.len)));
        }
        self.check_indices(idx)?;
        if self.remote_here(mode, self.chunks.len(), self.remote_chunks()) {
            let all: Vec<usize> = (0..self.chunks.len()).collect();
            let r = self.sp.ensure(COLUMN_TYPE, &[]).map_err(ContainerError::from).and_then(|()| {
                self.hand_over(&all)?;
                let mut args = Vec::new();
                put_u64s(&mut args, idx);
                self.compute(col_op::SHUFFLE, &args)
            });
            match r {
                Ok(_) => return Ok(()),
                Err(e) if mode == Offload::Auto && unsupported(&e) => {}
                Err(e) => return Err(e),
            }
        }
        let mut g = self.gather(idx, Offload::Local)?;
        std::mem::swap(&mut self.chunks, &mut g.chunks);
        self.last_chunk.store(usize::MAX, Relaxed);
        Ok(())
    }

    /// Assign: `self[idx[i]] = values[i]`, in order (a later assignment to a row wins).
    pub fn assign(&mut self, idx: &[u64], values: &[T], mode: Offload) -> Result<(), ContainerError> {
        if idx.len() != values.len() {
            return Err(ContainerError::Invalid(format!("{} indices for {} values", idx.len(), values.len())));
        }
        self.check_indices(idx)?;
        let mut touched: Vec<usize> =
            idx.iter().map(|&i| Self::split(usize::try_from(i).unwrap_or(usize::MAX)).0).collect();
        touched.sort_unstable();
        touched.dedup();
        let remote = touched.iter().filter(|&&c| !self.chunks[c].is_local()).count();
        if self.remote_here(mode, touched.len(), remote) {
            let r = self.sp.ensure(COLUMN_TYPE, &[]).map_err(ContainerError::from).and_then(|()| {
                self.hand_over(&touched)?;
                let mut args = Vec::new();
                put_u64s(&mut args, idx);
                args.extend_from_slice(bytemuck::cast_slice(values));
                self.compute(col_op::ASSIGN, &args)
            });
            match r {
                Ok(_) => return Ok(()),
                Err(e) if mode == Offload::Auto && unsupported(&e) => {}
                Err(e) => return Err(e),
            }
        }
        for (&i, &v) in idx.iter().zip(values) {
            self.set(usize::try_from(i).unwrap_or(usize::MAX), v)?;
        }
        Ok(())
    }
}

/// Whether an offload failure means "memd cannot run this here" (so `Auto` runs it locally instead).
fn unsupported(e: &ContainerError) -> bool {
    matches!(e, ContainerError::Store(StoreError::Rejected { status: Status::UnknownType, .. }))
}

/// Iterator over copies of a [`Vector`]'s elements (see [`Vector::iter`]).
#[derive(Debug)]
pub struct Iter<'a, 'rt, T: Pod> {
    v: &'a Vector<'rt, T>,
    i: usize,
    end: usize,
    scope: Option<DerefScope>,
    cur: usize,
    pf: Prefetcher,
}

impl<T: Pod> Iterator for Iter<'_, '_, T> {
    type Item = T;

    #[inline]
    fn next(&mut self) -> Option<T> {
        if self.i >= self.end {
            self.scope = None;
            return None;
        }
        let (c, k) = Vector::<T>::split(self.i);
        if c != self.cur {
            // A new chunk: leave the old scope (the evacuator may move what we no longer use), prefetch ahead.
            self.scope = None;
            let v = self.v;
            self.pf.access(i64::try_from(c).unwrap_or(i64::MAX), v.chunks[c].is_local(), |b| v.fetch_positions(b));
            warm(&v.chunks[c]);
            self.cur = c;
        }
        let s = self.scope.get_or_insert_with(DerefScope::new);
        let x = elems::<T>(&self.v.chunks[c].deref(s), k + 1)[k];
        self.i += 1;
        Some(x)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.end - self.i;
        (n, Some(n))
    }
}

impl<T: Pod> ExactSizeIterator for Iter<'_, '_, T> {}

/// Non-temporal iterator over a [`Vector`] (see [`Vector::iter_nt`]).
#[derive(Debug)]
pub struct IterNt<'a, 'rt, T: Pod> {
    v: &'a Vector<'rt, T>,
    i: usize,
    buf: Vec<T>,
    buf_start: usize,
    window: usize,
}

impl<T: Pod> IterNt<'_, '_, T> {
    /// Reads the window of chunks starting at chunk `c` into the buffer.
    fn refill(&mut self, c: usize) -> Result<(), ContainerError> {
        let v = self.v;
        let end = (c + self.window).min(v.chunks.len());
        let remote: Vec<usize> = (c..end).filter(|&k| !v.chunks[k].is_local()).collect();
        let ids: Vec<u64> = remote.iter().map(|&k| v.chunks[k].id()).collect();
        // `&Vector` excludes writers, so memd's copy of a remote chunk is current.
        let batch = if ids.is_empty() { None } else { Some(v.sp.rt.store().read_objects(v.sp.ds, &ids)?) };
        let mut fetched = batch.iter().flat_map(|b| b.iter());
        self.buf.clear();
        self.buf_start = c * per_chunk::<T>();
        for k in c..end {
            let n = v.rows_in(k);
            if remote.binary_search(&k).is_ok() {
                let (id, bytes) = fetched.next().unwrap_or((0, None));
                match bytes {
                    Some(b) if id == v.chunks[k].id() && b.len() >= n * size_of::<T>() => self.buf.extend(
                        b[..n * size_of::<T>()].chunks_exact(size_of::<T>()).map(bytemuck::pod_read_unaligned::<T>),
                    ),
                    _ => return Err(crate::ObjError::Missing { ds: v.sp.ds, id: v.chunks[k].id() }.into()),
                }
            } else {
                let chunk = v.chunks[k].read_nt()?;
                self.buf.extend_from_slice(elems::<T>(&chunk, n));
            }
        }
        Ok(())
    }
}

impl<T: Pod> Iterator for IterNt<'_, '_, T> {
    type Item = Result<T, ContainerError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.i >= self.v.len {
            return None;
        }
        if self.i < self.buf_start || self.i >= self.buf_start + self.buf.len() {
            if let Err(e) = self.refill(self.i / per_chunk::<T>()) {
                self.i = self.v.len;
                return Some(Err(e));
            }
        }
        let x = self.buf[self.i - self.buf_start];
        self.i += 1;
        Some(Ok(x))
    }
}

/// One window of a non-temporal scan ([`Vector::for_each_slice_nt`]): its chunks, the remote ones among them,
/// and the read in flight for those.
struct NtWindow {
    range: Range<usize>,
    remote: Vec<usize>,
    sent: Option<(farmem_memd::Pending, Arc<NtSink>)>,
    buf: Vec<Chunk>,
}

impl NtWindow {
    /// Waits for the read; returns the values of the remote chunks, in order.
    fn finish<T: Pod>(&mut self, v: &Vector<'_, T>) -> Result<Vec<Chunk>, ContainerError> {
        let remote = &self.remote;
        let Some((pending, sink)) = self.sent.take() else { return Ok(std::mem::take(&mut self.buf)) };
        let reply = pending.wait()?;
        let mut buf = std::mem::take(&mut *sink.buf.lock());
        buf.resize(remote.len(), [0u128; CHUNK_BYTES / 16]);
        match reply {
            farmem_memd::Reply::Placed => {}
            farmem_memd::Reply::Objects(b) => {
                let mut vals = b.iter();
                for (slot, &(id, len)) in buf.iter_mut().zip(&sink.expected) {
                    match vals.next() {
                        Some((got, Some(bytes))) if got == id && bytes.len() == len as usize => {
                            bytemuck::bytes_of_mut(slot)[..bytes.len()].copy_from_slice(bytes);
                        }
                        _ => return Err(crate::ObjError::Missing { ds: v.sp.ds, id }.into()),
                    }
                }
                drop(vals);
                farmem_memd::client::recycle_reply_buffer(b.data);
            }
            other => {
                return Err(StoreError::Protocol {
                    server: v.sp.rt.store().describe(),
                    msg: format!("expected objects, got {other:?}"),
                }
                .into())
            }
        }
        let ctr = &v.sp.rt.inner.ctr;
        crate::stats::Counters::add(&ctr.misses, remote.len() as u64);
        crate::stats::Counters::add_usize(&ctr.bytes_in, remote.len() * CHUNK_BYTES);
        Ok(buf)
    }
}

/// Receives a non-temporal window's chunks into a reusable buffer ([`ObjectSink`]).
#[derive(Debug)]
struct NtSink {
    expected: Vec<(u64, u32)>,
    buf: Mutex<Vec<Chunk>>,
}

impl ObjectSink for NtSink {
    fn expected(&self) -> &[(u64, u32)] {
        &self.expected
    }

    fn receive(
        &self,
        fill: &mut dyn FnMut(&mut [&mut [u8]]) -> std::io::Result<bool>,
    ) -> Option<std::io::Result<bool>> {
        let mut buf = self.buf.lock();
        buf.resize(self.expected.len(), [0u128; CHUNK_BYTES / 16]);
        let mut dests: Vec<&mut [u8]> = buf
            .iter_mut()
            .zip(&self.expected)
            .map(|(c, &(_, len))| &mut bytemuck::bytes_of_mut(c)[..len as usize])
            .collect();
        Some(fill(&mut dests))
    }
}
