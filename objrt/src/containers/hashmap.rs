//! [`HashMap`]: a concurrent far hash map that grows by extendible hashing, with lookups offloadable to memd.
//!
//! Entries live in bucket objects ([`BucketLayout`] in memd's `offload::layout`: a count and packed
//! `[hash][key][value]` entries). A local directory of `2^depth` slots maps the top `depth` bits of a key's
//! hash to a bucket; a bucket of local depth `d` is shared by the `2^(depth-d)` slots that agree on its `d`
//! bits. A full bucket splits in two on its next bit — touching that bucket only, never the whole table —
//! and the directory doubles (a local array of pointers, cheap) when the bucket's depth already equals it.
//! AIFM's table has a fixed size and fails when full; this one grows one bucket at a time.
//!
//! **Concurrency.** Operations hold the directory's read lock and their bucket's lock (read for lookups,
//! write for updates); a split takes the directory's write lock. Locks are always taken before the deref
//! scope is opened, and are never waited for inside one. So: do not call into the map while holding one of
//! its [`Entry`]s, or from inside the closure given to [`HashMap::for_each`] (both hold locks). Buckets never
//! merge: a map that shrinks keeps its buckets until it is dropped.
//!
//! **Offload.** [`HashMap::get_with`] / [`HashMap::get_many`] with [`Offload::Remote`] (or `Auto` when the
//! bucket is remote) send `[bucket id][hash][key]` to memd's [`HASHMAP_TYPE`] and receive only the value.

use super::{warm, ContainerError, Offload, SpaceHandle};
use crate::epoch::DerefScope;
use crate::ptr::sealed::Sealed as _;
use crate::ptr::FarBox;
use crate::runtime::Runtime;
use bytemuck::Pod;
use farmem_memd::offload::layout::{hash_key, map_op, BucketLayout, HASHMAP_TYPE};
use farmem_memd::proto::Status;
use farmem_memd::StoreError;
use parking_lot::lock_api::ArcRwLockWriteGuard;
use parking_lot::{RawRwLock, RwLock, RwLockReadGuard};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

mod sealed {
    pub trait Sealed {}
}

/// A bucket object size. Smaller buckets keep hot keys apart (a cache of buckets then holds more hot
/// entries); larger ones cost less local metadata.
pub trait BucketObj: Pod + sealed::Sealed + Send + Sync {}

/// 256-byte buckets.
pub type Bucket256 = [u128; 16];
/// 1 KiB buckets (the default).
pub type Bucket1K = [u128; 64];
/// 4 KiB buckets.
pub type Bucket4K = [u128; 256];

impl sealed::Sealed for Bucket256 {}
impl sealed::Sealed for Bucket1K {}
impl sealed::Sealed for Bucket4K {}
impl BucketObj for Bucket256 {}
impl BucketObj for Bucket1K {}
impl BucketObj for Bucket4K {}

/// Lookups read their buckets in a scope that does not wait for the network, fetching again after the scope
/// what was evicted before it, in up to this many rounds; the last one reads whatever it takes (see `get_many`).
const READ_ROUNDS: usize = 3;

/// Bytes of buckets that one run of [`HashMap::get_many`] or [`HashMap::insert_many`] fetches together: the
/// buckets of a run are local at once, so a run is kept well below any useful budget (64 keys of 1 KiB buckets).
const RUN_BYTES: usize = 64 << 10;

/// Directory depths beyond this are refused (16 M slots).
const MAX_DEPTH: u32 = 24;

/// How a [`HashMap`] starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashMapConfig {
    /// The directory starts with `2^initial_depth` buckets (at most 20).
    pub initial_depth: u32,
}

impl Default for HashMapConfig {
    fn default() -> Self {
        HashMapConfig { initial_depth: 2 }
    }
}

#[derive(Debug)]
struct Bucket<B: BucketObj> {
    obj: FarBox<B>,
    depth: u32,
}

type Cell<B> = Arc<RwLock<Bucket<B>>>;

#[derive(Debug)]
struct Dir<B: BucketObj> {
    depth: u32,
    table: Vec<Cell<B>>,
}

#[inline]
fn slot(depth: u32, hash: u64) -> usize {
    if depth == 0 {
        0
    } else {
        usize::try_from(hash >> (64 - depth)).unwrap_or(0)
    }
}

/// A concurrent hash map of `Pod` keys and values in far memory. Keys are compared as bytes.
pub struct HashMap<'rt, K: Pod, V: Pod, B: BucketObj = Bucket1K> {
    sp: SpaceHandle<'rt>,
    layout: BucketLayout,
    dir: RwLock<Dir<B>>,
    len: AtomicUsize,
    _kv: PhantomData<fn(K) -> V>,
}

impl<K: Pod, V: Pod, B: BucketObj> std::fmt::Debug for HashMap<'_, K, V, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashMap").field("len", &self.len()).field("layout", &self.layout).finish()
    }
}

fn unsupported(e: &StoreError) -> bool {
    matches!(e, StoreError::Rejected { status: Status::UnknownType, .. })
}

impl<'rt, K: Pod, V: Pod, B: BucketObj> HashMap<'rt, K, V, B> {
    /// An empty map in a new space of `rt`.
    pub fn new(rt: &'rt Runtime) -> Result<Self, ContainerError> {
        Self::with_config(rt, HashMapConfig::default())
    }

    /// An empty map set up by `cfg`.
    pub fn with_config(rt: &'rt Runtime, cfg: HashMapConfig) -> Result<Self, ContainerError> {
        let layout = BucketLayout::new(size_of::<K>(), size_of::<V>(), size_of::<B>())?;
        if cfg.initial_depth > 20 {
            return Err(ContainerError::Invalid(format!("initial_depth {} is above 20", cfg.initial_depth)));
        }
        let sp = SpaceHandle::new(rt)?;
        let mut table = Vec::with_capacity(1 << cfg.initial_depth);
        for _ in 0..1usize << cfg.initial_depth {
            let obj = FarBox::try_new_in(rt, sp.space, B::zeroed())?;
            table.push(Arc::new(RwLock::new(Bucket { obj, depth: cfg.initial_depth })));
        }
        Ok(HashMap {
            sp,
            layout,
            dir: RwLock::new(Dir { depth: cfg.initial_depth, table }),
            len: AtomicUsize::new(0),
            _kv: PhantomData,
        })
    }

    /// The bucket layout (shared with memd).
    pub fn layout(&self) -> BucketLayout {
        self.layout
    }

    /// memd's data-structure id of the map's space.
    pub fn ds(&self) -> u64 {
        self.sp.ds
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len.load(Relaxed)
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of distinct buckets.
    pub fn bucket_count(&self) -> usize {
        let d = self.dir.read();
        let mut n = 0;
        let mut i = 0;
        while i < d.table.len() {
            n += 1;
            i += 1usize << (d.depth - d.table[i].read().depth);
        }
        n
    }

    /// The memd object id of the bucket holding `key` now (for analysis, e.g. simulating a cache of buckets).
    pub fn bucket_of(&self, key: &K) -> u64 {
        let dir = self.dir.read();
        let id = dir.table[slot(dir.depth, Self::key_hash(key))].read().obj.id();
        id
    }

    fn key_hash(key: &K) -> u64 {
        hash_key(bytemuck::bytes_of(key))
    }

    /// A copy of the value of `key`.
    pub fn get(&self, key: &K) -> Option<V> {
        let kb = bytemuck::bytes_of(key);
        let h = hash_key(kb);
        let dir = self.dir.read();
        let b = dir.table[slot(dir.depth, h)].read();
        let find = |r: &B| {
            let bytes = bytemuck::bytes_of(r);
            self.layout.find(bytes, h, kb).map(|i| bytemuck::pod_read_unaligned(self.layout.val(bytes, i)))
        };
        // As in `get_many`: the scope does not wait for the network, but for the last of `READ_ROUNDS`.
        for _ in 1..READ_ROUNDS {
            warm(&b.obj);
            let s = DerefScope::new_reading();
            if let Some(r) = b.obj.deref_if_local(&s) {
                return find(&r);
            }
        }
        warm(&b.obj);
        let s = DerefScope::new();
        find(&b.obj.deref(&s))
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    fn ensure_remote(&self) -> Result<(), StoreError> {
        self.sp.ensure(HASHMAP_TYPE, &self.layout.encode())
    }

    /// Looks `key` up here or in memd: with [`Offload::Remote`], or `Auto` when its bucket is remote, memd
    /// finds the value and only the value travels (the bucket stays where it is).
    pub fn get_with(&self, key: &K, mode: Offload) -> Result<Option<V>, ContainerError> {
        Ok(self.get_many(std::slice::from_ref(key), mode)?.pop().flatten())
    }

    /// Keys or entries per run of [`HashMap::get_many`] and [`HashMap::insert_many`] (see [`RUN_BYTES`]).
    fn run_len() -> usize {
        (RUN_BYTES / std::mem::size_of::<B>()).max(1)
    }

    /// Looks up many keys at once: local buckets are read here (remote ones fetched in one batch) or, offloaded,
    /// all lookups on remote buckets go to memd in one request — per run of 64 KiB of buckets (64 keys of 1 KiB
    /// buckets), so that any number of keys can be looked up under a small budget.
    pub fn get_many(&self, keys: &[K], mode: Offload) -> Result<Vec<Option<V>>, ContainerError> {
        let mut out = Vec::with_capacity(keys.len());
        for run in keys.chunks(Self::run_len()) {
            out.extend(self.get_run(run, mode)?);
        }
        Ok(out)
    }

    /// One run of [`HashMap::get_many`].
    fn get_run(&self, keys: &[K], mode: Offload) -> Result<Vec<Option<V>>, ContainerError> {
        let l = self.layout;
        let dir = self.dir.read();
        let hashes: Vec<u64> = keys.iter().map(Self::key_hash).collect();
        // Readers only take bucket locks recursively here; writers hold one bucket at a time, so no cycle.
        let guards: Vec<_> = hashes.iter().map(|&h| dir.table[slot(dir.depth, h)].read_recursive()).collect();
        let mut remote: Vec<bool> = guards
            .iter()
            .map(|g| match mode {
                Offload::Local => false,
                Offload::Remote => true,
                Offload::Auto => !g.obj.is_local(),
            })
            .collect();
        let mut out: Vec<Option<V>> = vec![None; keys.len()];
        if remote.iter().any(|&r| r) {
            match self.ensure_remote() {
                Ok(()) => {
                    // Each bucket once: write_back claims an object while it works on it.
                    let mut dirty: Vec<&FarBox<B>> =
                        guards.iter().zip(&remote).filter(|(_, &r)| r).map(|(g, _)| &g.obj).collect();
                    dirty.sort_unstable_by_key(|o| o.id());
                    dirty.dedup_by_key(|o| o.id());
                    self.sp.rt.write_back(dirty)?;
                    let mut input = Vec::new();
                    for (i, key) in keys.iter().enumerate().filter(|&(i, _)| remote[i]) {
                        input.extend_from_slice(&guards[i].obj.id().to_le_bytes());
                        input.extend_from_slice(&hashes[i].to_le_bytes());
                        input.extend_from_slice(bytemuck::bytes_of(key));
                    }
                    let reply = self.sp.rt.store().compute(self.sp.ds, map_op::GET, &input)?;
                    let mut rest = &reply[..];
                    for i in (0..keys.len()).filter(|&i| remote[i]) {
                        match rest.first() {
                            Some(1) if rest.len() > l.val_size => {
                                out[i] = Some(bytemuck::pod_read_unaligned(&rest[1..1 + l.val_size]));
                                rest = &rest[1 + l.val_size..];
                            }
                            Some(0) => rest = &rest[1..],
                            _ => return Err(ContainerError::Invalid("malformed hash map reply".into())),
                        }
                    }
                }
                Err(e) if mode == Offload::Auto && unsupported(&e) => remote.iter_mut().for_each(|r| *r = false),
                Err(e) => return Err(e.into()),
            }
        }
        // Overlap the misses: one batched fetch for every remote bucket needed. The buckets it brings in arrive
        // fresh, so the first lookup on each is their first use, not a second one (see `word::FRESH`). Buckets
        // other threads are fetching are waited for here too, and a bucket evicted between its fetch and the
        // scope is fetched again after the scope, in the next round: the scope never waits for the network (a
        // thread waiting inside a scope holds up every grace period of the evacuator). The last round reads
        // whatever it finds, fetching inside its scope if it must, so that a lookup always ends.
        let mut pending: Vec<usize> = (0..keys.len()).filter(|&i| !remote[i]).collect();
        for round in 1..=READ_ROUNDS {
            let mut missing = pending.iter().copied().filter(|&i| !guards[i].obj.is_local()).peekable();
            if let Some(&first) = missing.peek() {
                super::room_for_fetch(&guards[first].obj);
                let slots: Vec<_> = missing.map(|i| guards[i].obj.far_slot()).collect();
                self.sp.rt.inner.fetch_all(&slots)?;
            }
            // The reading rounds allocate nothing in their scope: no wait at the hard watermark (room was made
            // before the fetch). The last one may fetch inside it and waits like any scope.
            let s = if round < READ_ROUNDS { DerefScope::new_reading() } else { DerefScope::new() };
            pending.retain(|&i| {
                let r =
                    if round < READ_ROUNDS { guards[i].obj.deref_if_local(&s) } else { Some(guards[i].obj.deref(&s)) };
                let Some(r) = r else { return true };
                let bytes = bytemuck::bytes_of(&*r);
                let kb = bytemuck::bytes_of(&keys[i]);
                out[i] = l.find(bytes, hashes[i], kb).map(|k| bytemuck::pod_read_unaligned(l.val(bytes, k)));
                false
            });
            if pending.is_empty() {
                break;
            }
        }
        Ok(out)
    }

    /// Starts fetching the buckets of `keys` (one batched request) and returns the handle: lookups of those
    /// keys afterwards find their buckets local or in flight.
    pub fn prefetch(&self, keys: &[K]) -> Result<crate::FetchHandle, ContainerError> {
        let dir = self.dir.read();
        let guards: Vec<_> =
            keys.iter().map(|k| dir.table[slot(dir.depth, Self::key_hash(k))].read_recursive()).collect();
        Ok(self.sp.rt.fetch(guards.iter().map(|g| &g.obj))?)
    }

    /// Inserts or replaces; returns the previous value.
    pub fn insert(&self, key: K, value: V) -> Result<Option<V>, ContainerError> {
        let l = self.layout;
        let kb = bytemuck::bytes_of(&key);
        let h = hash_key(kb);
        loop {
            {
                let dir = self.dir.read();
                let mut b = dir.table[slot(dir.depth, h)].write();
                warm(&b.obj);
                let s = DerefScope::new();
                let mut r = b.obj.deref_mut(&s);
                let bytes = bytemuck::bytes_of_mut(&mut *r);
                if let Some(i) = l.find(bytes, h, kb) {
                    let old = bytemuck::pod_read_unaligned(l.val(bytes, i));
                    l.val_mut(bytes, i).copy_from_slice(bytemuck::bytes_of(&value));
                    return Ok(Some(old));
                }
                let n = l.count(bytes);
                if n < l.capacity() {
                    l.set(bytes, n, h, kb, bytemuck::bytes_of(&value));
                    l.set_count(bytes, n + 1);
                    self.len.fetch_add(1, Relaxed);
                    return Ok(None);
                }
            }
            self.split(h)?;
        }
    }

    /// Inserts or replaces many entries, in order (a key given twice ends with its later value); returns each
    /// entry's previous value, as [`HashMap::insert`] would have one by one.
    ///
    /// The misses overlap: every remote bucket a run of entries (64 KiB of buckets, as in `get_many`) goes to is
    /// fetched in one batched request before any of them is written, where `insert` waits for one round trip per
    /// remote bucket. Entries whose bucket
    /// is full are inserted after the run, splitting it; later entries for that bucket wait for them, so the
    /// order holds.
    pub fn insert_many(&self, items: &[(K, V)]) -> Result<Vec<Option<V>>, ContainerError> {
        let mut out = Vec::with_capacity(items.len());
        for run in items.chunks(Self::run_len()) {
            self.insert_run(run, &mut out)?;
        }
        Ok(out)
    }

    /// One run of [`HashMap::insert_many`]: its previous values are pushed to `out`.
    fn insert_run(&self, run: &[(K, V)], out: &mut Vec<Option<V>>) -> Result<(), ContainerError> {
        let l = self.layout;
        let base = out.len();
        out.resize(base + run.len(), None);
        let hashes: Vec<u64> = run.iter().map(|(k, _)| Self::key_hash(k)).collect();
        // Entries that found their bucket full, and those buckets (by cell), in the order met.
        let mut later: Vec<usize> = Vec::new();
        let mut full: Vec<*const RwLock<Bucket<B>>> = Vec::new();
        {
            let dir = self.dir.read();
            let cells: Vec<&Cell<B>> = hashes.iter().map(|&h| &dir.table[slot(dir.depth, h)]).collect();
            {
                // One fetch for every remote bucket of the run, outside any scope (readers' locks only, as in
                // `get_many`: writers hold one bucket at a time, so no cycle).
                let mut distinct: Vec<&Cell<B>> = cells.clone();
                distinct.sort_unstable_by_key(|c| Arc::as_ptr(c));
                distinct.dedup_by_key(|c| Arc::as_ptr(c));
                let guards: Vec<_> = distinct.iter().map(|c| c.read_recursive()).collect();
                let mut missing = guards.iter().filter(|g| !g.obj.is_local()).peekable();
                if let Some(first) = missing.peek() {
                    super::room_for_fetch(&first.obj);
                    let slots: Vec<_> = missing.map(|g| g.obj.far_slot()).collect();
                    self.sp.rt.inner.fetch_all(&slots)?;
                }
            }
            for (i, (key, value)) in run.iter().enumerate() {
                let cell = cells[i];
                if full.contains(&Arc::as_ptr(cell)) {
                    later.push(i);
                    continue;
                }
                let mut b = cell.write();
                // Evicted since the fetch (or never fetched: another thread's split moved it): fetch it again.
                warm(&b.obj);
                let s = DerefScope::new();
                let mut r = b.obj.deref_mut(&s);
                let bytes = bytemuck::bytes_of_mut(&mut *r);
                let kb = bytemuck::bytes_of(key);
                if let Some(k) = l.find(bytes, hashes[i], kb) {
                    out[base + i] = Some(bytemuck::pod_read_unaligned(l.val(bytes, k)));
                    l.val_mut(bytes, k).copy_from_slice(bytemuck::bytes_of(value));
                    continue;
                }
                let n = l.count(bytes);
                if n < l.capacity() {
                    l.set(bytes, n, hashes[i], kb, bytemuck::bytes_of(value));
                    l.set_count(bytes, n + 1);
                    self.len.fetch_add(1, Relaxed);
                } else {
                    full.push(Arc::as_ptr(cell));
                    later.push(i);
                }
            }
        }
        // The directory lock is released: these may split.
        for i in later {
            let (key, value) = run[i];
            out[base + i] = self.insert(key, value)?;
        }
        Ok(())
    }

    /// Removes `key`; returns its value.
    pub fn remove(&self, key: &K) -> Option<V> {
        let l = self.layout;
        let kb = bytemuck::bytes_of(key);
        let h = hash_key(kb);
        let dir = self.dir.read();
        let mut b = dir.table[slot(dir.depth, h)].write();
        warm(&b.obj);
        let s = DerefScope::new();
        // Look first, so a miss does not dirty the bucket.
        l.find(bytemuck::bytes_of(&*b.obj.deref(&s)), h, kb)?;
        let mut r = b.obj.deref_mut(&s);
        let bytes = bytemuck::bytes_of_mut(&mut *r);
        let i = l.find(bytes, h, kb)?;
        let old = bytemuck::pod_read_unaligned(l.val(bytes, i));
        remove_at(&l, bytes, i);
        self.len.fetch_sub(1, Relaxed);
        Some(old)
    }

    /// Splits the bucket of `hash` if it is still full (doubling the directory if needed).
    fn split(&self, hash: u64) -> Result<(), ContainerError> {
        let l = self.layout;
        let mut dir = self.dir.write();
        let cell = Arc::clone(&dir.table[slot(dir.depth, hash)]);
        let mut b = cell.write();
        {
            let s = DerefScope::new();
            if l.count(bytemuck::bytes_of(&*b.obj.deref(&s))) < l.capacity() {
                return Ok(());
            }
        }
        if b.depth == dir.depth {
            if dir.depth >= MAX_DEPTH {
                return Err(ContainerError::DirectoryFull(dir.depth));
            }
            let doubled: Vec<Cell<B>> = dir.table.iter().flat_map(|c| [Arc::clone(c), Arc::clone(c)]).collect();
            dir.table = doubled;
            dir.depth += 1;
        }
        let nd = b.depth + 1;
        // Allocated outside any scope: it may wait for the evacuator, which needs none of our locks.
        let mut fresh = FarBox::try_new_in(self.sp.rt, self.sp.space, B::zeroed())?;
        {
            let s = DerefScope::new();
            let mut old = b.obj.deref_mut(&s);
            let mut new = fresh.deref_mut(&s);
            let (ob, nb) = (bytemuck::bytes_of_mut(&mut *old), bytemuck::bytes_of_mut(&mut *new));
            let (mut keep, mut moved) = (0, 0);
            for i in 0..l.count(ob) {
                let h = l.hash(ob, i);
                if (h >> (64 - nd)) & 1 == 1 {
                    l.set(nb, moved, h, l.key(ob, i), l.val(ob, i));
                    moved += 1;
                } else {
                    l.copy_entry(ob, i, keep);
                    keep += 1;
                }
            }
            l.set_count(ob, keep);
            l.set_count(nb, moved);
        }
        b.depth = nd;
        drop(b);
        let new_cell = Arc::new(RwLock::new(Bucket { obj: fresh, depth: nd }));
        // The bucket's slots are the contiguous block sharing its old `nd - 1` bits; the upper half of the
        // block (next bit 1) now points to the new bucket.
        let shift = dir.depth - nd;
        let first = (slot(dir.depth, hash) >> (shift + 1)) << (shift + 1);
        let half = 1usize << shift;
        for j in first + half..first + 2 * half {
            debug_assert!(Arc::ptr_eq(&dir.table[j], &cell));
            dir.table[j] = Arc::clone(&new_cell);
        }
        Ok(())
    }

    /// The entry of `key`, holding its bucket locked until dropped (do not call into the map meanwhile).
    pub fn entry(&self, key: K) -> Entry<'_, 'rt, K, V, B> {
        let h = Self::key_hash(&key);
        let dir = self.dir.read();
        let bucket = dir.table[slot(dir.depth, h)].write_arc();
        warm(&bucket.obj);
        let idx = {
            let s = DerefScope::new();
            self.layout.find(bytemuck::bytes_of(&*bucket.obj.deref(&s)), h, bytemuck::bytes_of(&key))
        };
        match idx {
            Some(index) => Entry::Occupied(OccupiedEntry { map: self, bucket, _dir: dir, key, index }),
            None => Entry::Vacant(VacantEntry { map: self, bucket, _dir: dir, key, hash: h }),
        }
    }

    /// Calls `f` on every entry (bucket by bucket, a scope per bucket, the next buckets prefetched). `f` runs
    /// with the bucket locked: it must not call into this map.
    pub fn for_each(&self, mut f: impl FnMut(K, V)) {
        let l = self.layout;
        let dir = self.dir.read();
        let mut cells = Vec::new();
        let mut i = 0;
        while i < dir.table.len() {
            let c = &dir.table[i];
            i += 1usize << (dir.depth - c.read().depth);
            cells.push(c);
        }
        const AHEAD: usize = 16;
        // The fetch of the next buckets runs while this batch is read (the dereferences complete it).
        let mut _pending = None;
        for (k, c) in cells.iter().enumerate() {
            if k % AHEAD == 0 {
                let next: Vec<_> = cells[k..(k + AHEAD).min(cells.len())].iter().map(|c| c.read()).collect();
                _pending = self.sp.rt.fetch(next.iter().map(|g| &g.obj)).ok();
            }
            let b = c.read();
            let s = DerefScope::new();
            let r = b.obj.deref(&s);
            let bytes = bytemuck::bytes_of(&*r);
            for e in 0..l.count(bytes) {
                f(bytemuck::pod_read_unaligned(l.key(bytes, e)), bytemuck::pod_read_unaligned(l.val(bytes, e)));
            }
        }
    }

    /// Every entry, copied.
    pub fn to_vec(&self) -> Vec<(K, V)> {
        let mut v = Vec::with_capacity(self.len());
        self.for_each(|k, x| v.push((k, x)));
        v
    }
}

/// Removes entry `i` of a bucket's bytes, moving the last entry into its place.
fn remove_at(l: &BucketLayout, bytes: &mut [u8], i: usize) {
    let n = l.count(bytes);
    if i + 1 != n {
        l.copy_entry(bytes, n - 1, i);
    }
    l.set_count(bytes, n - 1);
}

type BucketGuard<B> = ArcRwLockWriteGuard<RawRwLock, Bucket<B>>;

/// A key's place in a [`HashMap`] (see [`HashMap::entry`]); holds the bucket locked.
#[derive(Debug)]
pub enum Entry<'m, 'rt, K: Pod, V: Pod, B: BucketObj> {
    /// The key is present.
    Occupied(OccupiedEntry<'m, 'rt, K, V, B>),
    /// The key is absent.
    Vacant(VacantEntry<'m, 'rt, K, V, B>),
}

/// A present key.
pub struct OccupiedEntry<'m, 'rt, K: Pod, V: Pod, B: BucketObj> {
    map: &'m HashMap<'rt, K, V, B>,
    bucket: BucketGuard<B>,
    _dir: RwLockReadGuard<'m, Dir<B>>,
    key: K,
    index: usize,
}

/// An absent key.
pub struct VacantEntry<'m, 'rt, K: Pod, V: Pod, B: BucketObj> {
    map: &'m HashMap<'rt, K, V, B>,
    bucket: BucketGuard<B>,
    _dir: RwLockReadGuard<'m, Dir<B>>,
    key: K,
    hash: u64,
}

impl<K: Pod + std::fmt::Debug, V: Pod, B: BucketObj> std::fmt::Debug for OccupiedEntry<'_, '_, K, V, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OccupiedEntry").field("key", &self.key).finish()
    }
}

impl<K: Pod + std::fmt::Debug, V: Pod, B: BucketObj> std::fmt::Debug for VacantEntry<'_, '_, K, V, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VacantEntry").field("key", &self.key).finish()
    }
}

impl<'m, 'rt, K: Pod, V: Pod, B: BucketObj> Entry<'m, 'rt, K, V, B> {
    /// The key.
    pub fn key(&self) -> &K {
        match self {
            Entry::Occupied(o) => &o.key,
            Entry::Vacant(v) => &v.key,
        }
    }

    /// The value, inserting `default` first if absent.
    pub fn or_insert(self, default: V) -> Result<V, ContainerError> {
        self.or_insert_with(|| default)
    }

    /// The value, inserting `f()` first if absent.
    pub fn or_insert_with(self, f: impl FnOnce() -> V) -> Result<V, ContainerError> {
        match self {
            Entry::Occupied(o) => Ok(o.get()),
            Entry::Vacant(v) => {
                let x = f();
                v.insert(x)?;
                Ok(x)
            }
        }
    }

    /// Applies `f` to a present value.
    pub fn and_modify(mut self, f: impl FnOnce(&mut V)) -> Self {
        if let Entry::Occupied(o) = &mut self {
            o.modify(f);
        }
        self
    }
}

impl<K: Pod, V: Pod, B: BucketObj> OccupiedEntry<'_, '_, K, V, B> {
    /// The key.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// A copy of the value.
    pub fn get(&self) -> V {
        let s = DerefScope::new();
        let r = self.bucket.obj.deref(&s);
        bytemuck::pod_read_unaligned(self.map.layout.val(bytemuck::bytes_of(&*r), self.index))
    }

    /// Applies `f` to the value.
    pub fn modify(&mut self, f: impl FnOnce(&mut V)) {
        let l = self.map.layout;
        let s = DerefScope::new();
        let mut r = self.bucket.obj.deref_mut(&s);
        let slot = l.val_mut(bytemuck::bytes_of_mut(&mut *r), self.index);
        let mut v: V = bytemuck::pod_read_unaligned(slot);
        f(&mut v);
        slot.copy_from_slice(bytemuck::bytes_of(&v));
    }

    /// Replaces the value; returns the old one.
    pub fn insert(&mut self, value: V) -> V {
        let mut old = value;
        self.modify(|v| std::mem::swap(v, &mut old));
        old
    }

    /// Removes the entry; returns its value.
    pub fn remove(mut self) -> V {
        let l = self.map.layout;
        let s = DerefScope::new();
        let mut r = self.bucket.obj.deref_mut(&s);
        let bytes = bytemuck::bytes_of_mut(&mut *r);
        let v = bytemuck::pod_read_unaligned(l.val(bytes, self.index));
        remove_at(&l, bytes, self.index);
        self.map.len.fetch_sub(1, Relaxed);
        v
    }
}

impl<K: Pod, V: Pod, B: BucketObj> VacantEntry<'_, '_, K, V, B> {
    /// The key.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// Inserts the value. If the bucket is full the locks are let go for a split and the insert retried; a
    /// value another thread inserted for this key meanwhile is then replaced.
    pub fn insert(mut self, value: V) -> Result<(), ContainerError> {
        let l = self.map.layout;
        {
            let s = DerefScope::new();
            let mut r = self.bucket.obj.deref_mut(&s);
            let bytes = bytemuck::bytes_of_mut(&mut *r);
            let n = l.count(bytes);
            if n < l.capacity() {
                l.set(bytes, n, self.hash, bytemuck::bytes_of(&self.key), bytemuck::bytes_of(&value));
                l.set_count(bytes, n + 1);
                self.map.len.fetch_add(1, Relaxed);
                return Ok(());
            }
        }
        let VacantEntry { map, bucket, _dir, key, .. } = self;
        drop(bucket);
        drop(_dir);
        map.insert(key, value).map(|_| ())
    }
}

#[cfg(all(test, not(farmem_loom)))]
mod tests {
    use super::*;
    use crate::RuntimeConfig;
    use farmem_memd::MemStore;

    #[test]
    fn a_lookups_own_fetch_is_not_a_second_use() {
        let mut cfg = RuntimeConfig::new(2 << 20);
        cfg.evacuator_threads = 0;
        cfg.lanes = 2;
        let rt = Runtime::new(cfg, Arc::new(MemStore::new(1 << 30))).unwrap();
        let m = HashMap::<u64, u64, Bucket1K>::new(&rt).unwrap();
        for k in 0..2000u64 {
            m.insert(k, k * 3).unwrap();
        }
        let once = 0u64;
        let twice = (1..2000u64).find(|k| m.bucket_of(k) != m.bucket_of(&once)).unwrap();
        let cell = |k: &u64| {
            let dir = m.dir.read();
            Arc::clone(&dir.table[slot(dir.depth, HashMap::<u64, u64, Bucket1K>::key_hash(k))])
        };
        let (a, b) = (cell(&once), cell(&twice));
        rt.evacuate_all().unwrap();
        assert!(!a.read().obj.is_local() && !b.read().obj.is_local());
        let misses = rt.stats().misses;
        assert_eq!(m.get(&once), Some(0));
        assert_eq!(m.get_many(&[twice], Offload::Local).unwrap(), vec![Some(twice * 3)]);
        assert_eq!(m.get(&twice), Some(twice * 3));
        assert_eq!(rt.stats().misses - misses, 2);
        // One pass of the hand over the region they were fetched into: the bucket used again is kept, the one
        // only fetched leaves.
        rt.inner.heap.seal_all();
        crate::evac::cycle(&rt.inner, 0, true);
        assert!(!a.read().obj.is_local(), "fetched and not used again: cold");
        assert!(b.read().obj.is_local(), "used again after its fetch: kept");
        assert_eq!((m.get(&once), m.get(&twice)), (Some(0), Some(twice * 3)));
    }
}
