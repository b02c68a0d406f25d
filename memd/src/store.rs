//! Server-side storage: tenants, their page and object stores, capacity, counters, and request dispatch.
//!
//! Pages, and object values of at least [`SHARE_MIN`] bytes, are reference-counted buffers (`Arc`): a read
//! reply holds them by reference and the server writes them to the socket straight from the store, with no copy
//! into a reply buffer ([`crate::outbuf`]). Writes are copy-on-write — a value is changed in place only while
//! no reply holds it, otherwise it is replaced — so a reply never mixes old and new bytes of a value. A page costs
//! its 4 KiB, the `Arc` counts (16 B) and the allocator's header; pages are found by aligned runs of [`PAGE_RUN`]
//! (one hash-map entry and an array of 16 pointers per run).
//! Smaller objects live in slabs — large boxed buffers carved into fixed-size slots, size classes four to a power
//! of two (at most 25% internal waste) from 16 B to 2 KiB — and are copied into replies, which for them is cheaper
//! than a heap allocation and a separate piece of a vectored write. Each tenant's keys are spread over [`SHARDS`]
//! independently locked shards so that connections on different cores rarely contend; pages go to shards in
//! aligned runs of [`PAGE_RUN`], so that a batch of consecutive pages takes a few locks, not one per page, and
//! objects in aligned runs of [`OBJ_RUN`] ids (a container's chunks have consecutive ids: a read of 64 of them
//! took 64 shard locks, now 4 or 5).
//!
//! [`Engine::dispatch_into`] is the one place a request turns into a reply frame: the TCP server and the
//! in-process store both call it, so the two cannot drift apart.

use crate::offload::{ObjectsView, Registry};
use crate::outbuf::{OutBuf, Shared};
use crate::proto::{self, Op, ProtoError, RequestView, Status, ABSENT, PAGE_SIZE};
use parking_lot::{Mutex, MutexGuard};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Number of independently locked shards per tenant store.
pub const SHARDS: usize = 16;

/// Pages `k * PAGE_RUN .. (k + 1) * PAGE_RUN` of a region live in one shard, in one run.
pub const PAGE_RUN: u64 = RUN_LEN as u64;
const RUN_LEN: usize = 16;

/// Objects `k * OBJ_RUN .. (k + 1) * OBJ_RUN` of a space live in one shard.
pub const OBJ_RUN: u64 = 16;

/// Object values of at least this many bytes are reference-counted and sent by reference; smaller ones live in
/// slabs and are copied into replies.
pub const SHARE_MIN: usize = 2048;

/// Bytes a reference-counted value costs beyond its own: the `Arc` counts (16 B) and the allocator's chunk
/// header and rounding (16 B with glibc's malloc for the page-sized chunks). An estimate, for
/// [`Engine::footprint`]; `examples/overhead.rs` measures resident memory as well.
pub const SHARED_OVERHEAD: usize = 32;

/// A stored page.
type Page = Arc<[u8; PAGE_SIZE]>;

/// A multiply-xorshift hasher for the (space, key) pairs of the stores: far cheaper than SipHash, and the keys
/// are chosen by authenticated tenants, who can only slow down their own shards.
#[derive(Default, Clone, Copy, Debug)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type Map<V> = HashMap<(u64, u64), V, BuildHasherDefault<KeyHasher>>;

fn shard_of(space: u64, key: u64) -> usize {
    let mut h = KeyHasher::default();
    h.write_u64(space);
    h.write_u64(key);
    // The shard count is a small power of two: only the low bits matter.
    usize::try_from(h.finish() % SHARDS as u64).unwrap_or(0)
}

fn page_shard(region: u64, page: u64) -> usize {
    shard_of(region, page / PAGE_RUN)
}

fn obj_shard(ds: u64, id: u64) -> usize {
    shard_of(ds, id / OBJ_RUN)
}

fn new_page(data: &[u8]) -> Page {
    Arc::<[u8]>::from(data).try_into().expect("a page is PAGE_SIZE bytes")
}

/// Stores `data` as `*v`: in place when no reply holds the value, else as a new value (copy-on-write).
fn overwrite_page(v: &mut Page, data: &[u8]) {
    match Arc::get_mut(v) {
        Some(p) => p.copy_from_slice(data),
        None => *v = new_page(data),
    }
}

/// Locks shards one at a time as a batch walks its keys: a run of keys in one shard takes the lock once. At most
/// one shard lock is held at any time, so batches cannot deadlock each other.
struct ShardWalk<'a, S> {
    shards: &'a [Mutex<S>],
    held: Option<(usize, MutexGuard<'a, S>)>,
}

impl<'a, S> ShardWalk<'a, S> {
    fn new(shards: &'a [Mutex<S>]) -> Self {
        ShardWalk { shards, held: None }
    }
    fn at(&mut self, i: usize) -> &mut S {
        if self.held.as_ref().map(|h| h.0) != Some(i) {
            self.held = None;
            self.held = Some((i, self.shards[i].lock()));
        }
        &mut self.held.as_mut().expect("just locked").1
    }
}

/// Fixed-size slots carved out of large buffers, with a free list.
#[derive(Debug)]
struct Slab {
    slot: usize,
    per_slab: usize,
    slabs: Vec<Box<[u8]>>,
    free: Vec<u32>,
    next: u32,
}

impl Slab {
    fn new(slot: usize) -> Slab {
        let per_slab = (256 * 1024 / slot).max(1);
        Slab { slot, per_slab, slabs: Vec::new(), free: Vec::new(), next: 0 }
    }
    fn alloc(&mut self) -> u32 {
        if let Some(s) = self.free.pop() {
            return s;
        }
        let s = self.next;
        if s as usize == self.slabs.len() * self.per_slab {
            self.slabs.push(vec![0u8; self.slot * self.per_slab].into_boxed_slice());
        }
        self.next += 1;
        s
    }
    fn release(&mut self, s: u32) {
        self.free.push(s);
        if self.free.len() == self.next as usize {
            // Everything is free: give the memory back.
            self.free.clear();
            self.slabs.clear();
            self.next = 0;
        }
    }
    fn get(&self, s: u32) -> &[u8] {
        let (b, o) = (s as usize / self.per_slab, s as usize % self.per_slab);
        &self.slabs[b][o * self.slot..(o + 1) * self.slot]
    }
    fn get_mut(&mut self, s: u32) -> &mut [u8] {
        let (b, o) = (s as usize / self.per_slab, s as usize % self.per_slab);
        &mut self.slabs[b][o * self.slot..(o + 1) * self.slot]
    }
    fn overhead_bytes(&self) -> usize {
        self.slabs.capacity() * std::mem::size_of::<Box<[u8]>>() + self.free.capacity() * 4
    }
    fn reserved_bytes(&self) -> usize {
        self.slabs.len() * self.slot * self.per_slab
    }
}

/// One aligned run of [`PAGE_RUN`] pages of a region.
type Run = Box<[Option<Page>; RUN_LEN]>;

/// Pages of one shard, by run: a batch of consecutive pages finds them with one cache-warm lookup per page
/// (the same key again and again) instead of a cold hash probe each, and a densely filled region costs one map
/// entry and 128 B of pointers per 16 pages.
#[derive(Debug, Default)]
struct PageShard {
    runs: Map<Run>,
    pages: usize,
}

fn run_of(page: u64) -> (u64, usize) {
    (page / PAGE_RUN, usize::try_from(page % PAGE_RUN).expect("PAGE_RUN is small"))
}

impl PageShard {
    fn get(&self, region: u64, page: u64) -> Option<&Page> {
        let (run, i) = run_of(page);
        self.runs.get(&(region, run)).and_then(|r| r[i].as_ref())
    }
    /// Stores a page; returns whether it is new.
    fn put(&mut self, region: u64, page: u64, data: &[u8]) -> bool {
        let (run, i) = run_of(page);
        let slot = &mut self.runs.entry((region, run)).or_default()[i];
        match slot {
            Some(v) => {
                overwrite_page(v, data);
                false
            }
            None => {
                *slot = Some(new_page(data));
                self.pages += 1;
                true
            }
        }
    }
    /// Removes a page; returns whether it was there.
    fn remove(&mut self, region: u64, page: u64) -> bool {
        let (run, i) = run_of(page);
        let Some(r) = self.runs.get_mut(&(region, run)) else { return false };
        if r[i].take().is_none() {
            return false;
        }
        self.pages -= 1;
        if r.iter().all(Option::is_none) {
            self.runs.remove(&(region, run));
        }
        true
    }
    /// Removes every page of `region`; returns how many there were.
    fn drop_region(&mut self, region: u64) -> usize {
        let mut removed = 0;
        self.runs.retain(|&(r, _), run| {
            if r == region {
                removed += run.iter().flatten().count();
            }
            r != region
        });
        self.pages -= removed;
        removed
    }
}

/// Object size classes of the slabs: 16 B, then four steps per power of two, up to the largest value under
/// [`SHARE_MIN`].
fn class_sizes() -> Vec<usize> {
    let mut v = vec![16];
    let mut base = 16;
    while base < SHARE_MIN {
        for k in 1..=4 {
            v.push(base + base * k / 4);
        }
        base *= 2;
    }
    v.retain(|&s| s < SHARE_MIN);
    v.push(SHARE_MIN - 1);
    v
}

/// An object's value, as [`ObjShard::get`] finds it.
enum ObjRef<'a> {
    Slab(&'a [u8]),
    Shared(&'a Arc<[u8]>),
}

impl ObjRef<'_> {
    fn as_slice(&self) -> &[u8] {
        match self {
            ObjRef::Slab(b) => b,
            ObjRef::Shared(a) => a,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct ObjLoc {
    class: u8,
    slot: u32,
    len: u32,
}

/// Objects of one shard: values under [`SHARE_MIN`] bytes in `map` and its slabs, larger ones in `shared`. A
/// key is in at most one of the two maps.
#[derive(Debug)]
struct ObjShard {
    map: Map<ObjLoc>,
    classes: Vec<Slab>,
    shared: Map<Arc<[u8]>>,
}

impl ObjShard {
    fn new(sizes: &[usize]) -> ObjShard {
        ObjShard { map: Map::default(), classes: sizes.iter().map(|&s| Slab::new(s)).collect(), shared: Map::default() }
    }
    fn get(&self, ds: u64, id: u64) -> Option<ObjRef<'_>> {
        if let Some(a) = self.shared.get(&(ds, id)) {
            return Some(ObjRef::Shared(a));
        }
        self.map.get(&(ds, id)).map(|l| ObjRef::Slab(&self.classes[l.class as usize].get(l.slot)[..l.len as usize]))
    }
    fn len_of(&self, ds: u64, id: u64) -> Option<u32> {
        match self.shared.get(&(ds, id)) {
            Some(a) => Some(u32::try_from(a.len()).expect("object length validated")),
            None => self.map.get(&(ds, id)).map(|l| l.len),
        }
    }
    /// Stores a value; returns the previous length, if any.
    fn put(&mut self, sizes: &[usize], ds: u64, id: u64, v: &[u8]) -> Option<u32> {
        let len = u32::try_from(v.len()).expect("object length validated");
        if v.len() >= SHARE_MIN {
            let old = self.remove_slab(ds, id);
            return match self.shared.get_mut(&(ds, id)) {
                Some(a) => {
                    let old = u32::try_from(a.len()).expect("object length validated");
                    match Arc::get_mut(a) {
                        Some(b) if b.len() == v.len() => b.copy_from_slice(v),
                        _ => *a = Arc::from(v),
                    }
                    Some(old)
                }
                None => {
                    self.shared.insert((ds, id), Arc::from(v));
                    old
                }
            };
        }
        if let Some(a) = self.shared.remove(&(ds, id)) {
            self.insert_new(sizes.partition_point(|&s| s < v.len()), ds, id, v, len);
            return Some(u32::try_from(a.len()).expect("object length validated"));
        }
        let class = sizes.partition_point(|&s| s < v.len());
        if let Some(l) = self.map.get_mut(&(ds, id)) {
            let old = l.len;
            if l.class as usize == class {
                l.len = len;
                let (c, s) = (l.class as usize, l.slot);
                self.classes[c].get_mut(s)[..v.len()].copy_from_slice(v);
                return Some(old);
            }
            let (c, s) = (l.class as usize, l.slot);
            self.classes[c].release(s);
            self.map.remove(&(ds, id));
            self.insert_new(class, ds, id, v, len);
            return Some(old);
        }
        self.insert_new(class, ds, id, v, len);
        None
    }
    fn insert_new(&mut self, class: usize, ds: u64, id: u64, v: &[u8], len: u32) {
        let slot = self.classes[class].alloc();
        self.classes[class].get_mut(slot)[..v.len()].copy_from_slice(v);
        let class = u8::try_from(class).expect("fewer than 256 size classes");
        self.map.insert((ds, id), ObjLoc { class, slot, len });
    }
    fn remove_slab(&mut self, ds: u64, id: u64) -> Option<u32> {
        let l = self.map.remove(&(ds, id))?;
        self.classes[l.class as usize].release(l.slot);
        Some(l.len)
    }
    fn remove(&mut self, ds: u64, id: u64) -> Option<u32> {
        match self.shared.remove(&(ds, id)) {
            Some(a) => Some(u32::try_from(a.len()).expect("object length validated")),
            None => self.remove_slab(ds, id),
        }
    }
}

/// Per-tenant counters, also summed into the global report.
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes of page and object values stored.
    pub bytes_stored: AtomicU64,
    /// Pages stored.
    pub pages: AtomicU64,
    /// Objects stored.
    pub objects: AtomicU64,
    /// Request payload bytes received.
    pub bytes_in: AtomicU64,
    /// Reply bytes sent.
    pub bytes_out: AtomicU64,
    /// Open connections.
    pub connections: AtomicU64,
    /// Requests by kind: reads, writes, deletes, offload, other.
    pub ops: [AtomicU64; 5],
    /// Requests answered with an error.
    pub errors: AtomicU64,
}

const OP_KINDS: [&str; 5] = ["read", "write", "delete", "offload", "other"];

impl Counters {
    fn report(&self, prefix: &str, out: &mut Vec<(String, u64)>) {
        let mut put = |k: &str, v: &AtomicU64| out.push((format!("{prefix}.{k}"), v.load(Relaxed)));
        put("bytes_stored", &self.bytes_stored);
        put("pages", &self.pages);
        put("objects", &self.objects);
        put("bytes_in", &self.bytes_in);
        put("bytes_out", &self.bytes_out);
        put("connections", &self.connections);
        put("errors", &self.errors);
        for (k, v) in OP_KINDS.iter().zip(&self.ops) {
            put(&format!("ops.{k}"), v);
        }
    }
}

type Instance = Arc<Mutex<Box<dyn crate::offload::DsInstance>>>;

/// One tenant: its key spaces, counters and offloaded data-structure instances.
#[derive(Debug)]
pub struct Tenant {
    name: String,
    pages: Vec<Mutex<PageShard>>,
    objects: Vec<Mutex<ObjShard>>,
    instances: Mutex<HashMap<u64, Instance>>,
    /// This tenant's counters.
    pub counters: Counters,
}

impl Tenant {
    fn new(name: &str, sizes: &[usize]) -> Tenant {
        Tenant {
            name: name.to_string(),
            pages: (0..SHARDS).map(|_| Mutex::new(PageShard::default())).collect(),
            objects: (0..SHARDS).map(|_| Mutex::new(ObjShard::new(sizes))).collect(),
            instances: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        }
    }
    /// The tenant's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The whole store: capacity, tenants, registry of offloadable types, global counters.
#[derive(Debug)]
pub struct Engine {
    capacity: u64,
    used: AtomicU64,
    sizes: Vec<usize>,
    tenants: Mutex<HashMap<String, Arc<Tenant>>>,
    registry: Registry,
    /// Counters over all tenants (connections, bytes in/out are counted here as well as per tenant).
    pub global: Counters,
}

/// A capacity reservation: released on drop unless committed.
struct Reservation<'a> {
    used: &'a AtomicU64,
    bytes: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.used.fetch_sub(self.bytes, Relaxed);
    }
}

impl Engine {
    /// An engine holding at most `capacity` bytes of values, with offloadable types from `registry`.
    pub fn new(capacity: u64, registry: Registry) -> Engine {
        Engine {
            capacity,
            used: AtomicU64::new(0),
            sizes: class_sizes(),
            tenants: Mutex::new(HashMap::new()),
            registry,
            global: Counters::default(),
        }
    }

    /// The configured capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes of values stored, over all tenants.
    pub fn used(&self) -> u64 {
        self.used.load(Relaxed)
    }

    /// The tenant of this name, created on first use.
    pub fn tenant(&self, name: &str) -> Arc<Tenant> {
        let mut t = self.tenants.lock();
        if let Some(x) = t.get(name) {
            return x.clone();
        }
        let x = Arc::new(Tenant::new(name, &self.sizes));
        t.insert(name.to_string(), x.clone());
        x
    }

    fn reserve(&self, bytes: u64) -> Result<Reservation<'_>, ProtoError> {
        let mut cur = self.used.load(Relaxed);
        loop {
            let new = cur.saturating_add(bytes);
            if new > self.capacity {
                return Err(ProtoError::new(
                    Status::NoSpace,
                    format!("write of {bytes} new bytes refused: {cur} of {} bytes capacity in use", self.capacity),
                ));
            }
            match self.used.compare_exchange_weak(cur, new, Relaxed, Relaxed) {
                Ok(_) => return Ok(Reservation { used: &self.used, bytes }),
                Err(c) => cur = c,
            }
        }
    }

    /// Bytes of bookkeeping (hash tables, slab tables, free lists, the counts and allocator headers of
    /// reference-counted values, estimated as [`SHARED_OVERHEAD`] each) beside the stored values, and the bytes
    /// that hold values (slabs, whole, and reference-counted values), summed over tenants. Used to report metadata
    /// overhead.
    pub fn footprint(&self) -> (usize, usize) {
        let entry_run = std::mem::size_of::<((u64, u64), Run)>() + 1;
        // A run's pointers, and the allocator's header of that allocation.
        let run = std::mem::size_of::<[Option<Page>; RUN_LEN]>() + 16;
        let entry_obj = std::mem::size_of::<((u64, u64), ObjLoc)>() + 1;
        let entry_shared = std::mem::size_of::<((u64, u64), Arc<[u8]>)>() + 1;
        let (mut meta, mut values) = (0, 0);
        for t in self.tenants.lock().values() {
            for s in &t.pages {
                let s = s.lock();
                meta += s.runs.capacity() * entry_run + s.runs.len() * run + s.pages * SHARED_OVERHEAD;
                values += s.pages * PAGE_SIZE;
            }
            for s in &t.objects {
                let s = s.lock();
                meta += s.map.capacity() * entry_obj;
                for c in &s.classes {
                    meta += c.overhead_bytes();
                    values += c.reserved_bytes();
                }
                meta += s.shared.capacity() * entry_shared + s.shared.len() * SHARED_OVERHEAD;
                values += s.shared.values().map(|v| v.len()).sum::<usize>();
            }
        }
        (meta, values)
    }

    /// Counters of one tenant and of the whole server, as (name, value) pairs.
    pub fn stats(&self, tenant: &Tenant) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        self.global.report("global", &mut out);
        out.push(("global.capacity".into(), self.capacity));
        out.push(("global.used".into(), self.used()));
        out.push(("global.tenants".into(), self.tenants.lock().len() as u64));
        tenant.counters.report("tenant", &mut out);
        out
    }

    fn count_op(&self, t: &Tenant, kind: usize) {
        t.counters.ops[kind].fetch_add(1, Relaxed);
        self.global.ops[kind].fetch_add(1, Relaxed);
    }

    fn add_stored(&self, t: &Tenant, bytes: u64, pages: u64, objects: u64) {
        for c in [&t.counters, &self.global] {
            c.bytes_stored.fetch_add(bytes, Relaxed);
            c.pages.fetch_add(pages, Relaxed);
            c.objects.fetch_add(objects, Relaxed);
        }
    }

    fn sub_stored(&self, t: &Tenant, bytes: u64, pages: u64, objects: u64) {
        self.used.fetch_sub(bytes, Relaxed);
        for c in [&t.counters, &self.global] {
            c.bytes_stored.fetch_sub(bytes, Relaxed);
            c.pages.fetch_sub(pages, Relaxed);
            c.objects.fetch_sub(objects, Relaxed);
        }
    }

    /// Executes one decoded request for `tenant`, appending the complete reply frame (success or error) to
    /// `out`, with stored values spliced in by reference. `Raw` requests are the transport's business and
    /// answered here with an error.
    pub fn dispatch_into(&self, tenant: &Tenant, id: u64, op: u8, req: &RequestView<'_>, out: &mut OutBuf) {
        let frame = out.begin_frame(op, Status::Ok as u8, id);
        match self.execute(tenant, req, out) {
            Ok(()) => out.end_frame(frame),
            Err(e) => {
                out.truncate(frame);
                tenant.counters.errors.fetch_add(1, Relaxed);
                self.global.errors.fetch_add(1, Relaxed);
                proto::error_frame(out.bytes_mut(), op, id, e.status, &e.msg);
            }
        }
    }

    /// [`Engine::dispatch_into`], with the reply frame copied out whole into `out`.
    pub fn dispatch(&self, tenant: &Tenant, id: u64, op: u8, req: &RequestView<'_>, out: &mut Vec<u8>) {
        let mut o = OutBuf::default();
        self.dispatch_into(tenant, id, op, req, &mut o);
        o.flatten_into(out);
    }

    fn execute(&self, t: &Tenant, req: &RequestView<'_>, out: &mut OutBuf) -> Result<(), ProtoError> {
        match *req {
            RequestView::Ping => self.count_op(t, 4),
            RequestView::Stats => {
                self.count_op(t, 4);
                proto::put_stats(out.bytes_mut(), &self.stats(t));
            }
            RequestView::ReadPages { region, pages } => {
                self.count_op(t, 0);
                let n = pages.len();
                out.extend_from_slice(&u32::try_from(n).expect("batch bounded").to_le_bytes());
                let bits_at = out.bytes_mut().len();
                out.bytes_mut().resize(bits_at + n.div_ceil(8), 0);
                let mut walk = ShardWalk::new(&t.pages);
                for (i, p) in pages.iter().enumerate() {
                    if let Some(page) = walk.at(page_shard(region, p)).get(region, p) {
                        out.push_shared(Shared::Page(page.clone()));
                        out.bytes_mut()[bits_at + i / 8] |= 1 << (i % 8);
                    }
                }
            }
            RequestView::WritePages { region, pages, data } => {
                self.count_op(t, 1);
                // Reserve room for pages not yet stored; the reservation is returned if anything fails.
                let mut walk = ShardWalk::new(&t.pages);
                let fresh =
                    pages.iter().filter(|&p| walk.at(page_shard(region, p)).get(region, p).is_none()).count() as u64;
                drop(walk);
                let res = self.reserve(fresh * PAGE_SIZE as u64)?;
                let mut added = 0u64;
                let mut walk = ShardWalk::new(&t.pages);
                for (i, p) in pages.iter().enumerate() {
                    let src = &data[i * PAGE_SIZE..(i + 1) * PAGE_SIZE];
                    if walk.at(page_shard(region, p)).put(region, p, src) {
                        added += 1;
                    }
                }
                drop(walk);
                // Commit what was really added (a concurrent writer may have added some of the same pages).
                std::mem::forget(res);
                self.used.fetch_sub((fresh - added.min(fresh)) * PAGE_SIZE as u64, Relaxed);
                if added > fresh {
                    self.used.fetch_add((added - fresh) * PAGE_SIZE as u64, Relaxed);
                }
                self.add_stored(t, added * PAGE_SIZE as u64, added, 0);
            }
            RequestView::DeletePages { region, pages } => {
                self.count_op(t, 2);
                let mut removed = 0u64;
                let mut walk = ShardWalk::new(&t.pages);
                for p in pages.iter() {
                    if walk.at(page_shard(region, p)).remove(region, p) {
                        removed += 1;
                    }
                }
                drop(walk);
                self.release_pages(t, removed);
            }
            RequestView::DropRegion { region } => {
                self.count_op(t, 2);
                let mut removed = 0u64;
                for shard in &t.pages {
                    removed += shard.lock().drop_region(region) as u64;
                }
                self.release_pages(t, removed);
            }
            RequestView::ReadObjects { ds, ids } => {
                self.count_op(t, 0);
                out.extend_from_slice(&u32::try_from(ids.len()).expect("batch bounded").to_le_bytes());
                let mut walk = ShardWalk::new(&t.objects);
                for id in ids.iter() {
                    out.extend_from_slice(&id.to_le_bytes());
                    match walk.at(obj_shard(ds, id)).get(ds, id) {
                        Some(v) => {
                            let len = u32::try_from(v.as_slice().len()).expect("bounded");
                            out.extend_from_slice(&len.to_le_bytes());
                            match v {
                                ObjRef::Slab(b) => out.extend_from_slice(b),
                                ObjRef::Shared(a) => out.push_shared(Shared::Value(a.clone())),
                            }
                        }
                        None => out.extend_from_slice(&ABSENT.to_le_bytes()),
                    }
                }
            }
            RequestView::WriteObjects { ds, ids, lens, data } => {
                self.count_op(t, 1);
                self.write_objects(t, ds, ids.iter().zip(lens_iter(lens)), data)?;
            }
            RequestView::DeleteObjects { ds, ids } => {
                self.count_op(t, 2);
                let (mut bytes, mut n) = (0u64, 0u64);
                let mut walk = ShardWalk::new(&t.objects);
                for id in ids.iter() {
                    if let Some(l) = walk.at(obj_shard(ds, id)).remove(ds, id) {
                        bytes += u64::from(l);
                        n += 1;
                    }
                }
                drop(walk);
                self.release_objects(t, bytes, n);
            }
            RequestView::DropObjects { ds } => {
                self.count_op(t, 2);
                let (bytes, n) = self.drop_objects(t, ds);
                self.release_objects(t, bytes, n);
            }
            RequestView::Construct { ds, ty, params } => {
                self.count_op(t, 3);
                let inst = self.registry.construct(ty, params)?;
                let mut m = t.instances.lock();
                if m.contains_key(&ds) {
                    return Err(ProtoError::bad(format!("data structure {ds} already exists")));
                }
                m.insert(ds, Arc::new(Mutex::new(inst)));
            }
            RequestView::Destruct { ds } => {
                self.count_op(t, 3);
                if t.instances.lock().remove(&ds).is_none() {
                    return Err(ProtoError::new(Status::NoSuchDs, format!("no data structure {ds}")));
                }
                let (bytes, n) = self.drop_objects(t, ds);
                self.release_objects(t, bytes, n);
            }
            RequestView::Compute { ds, op, input } => {
                self.count_op(t, 3);
                let inst = t
                    .instances
                    .lock()
                    .get(&ds)
                    .cloned()
                    .ok_or_else(|| ProtoError::new(Status::NoSuchDs, format!("no data structure {ds}")))?;
                let mut inst = inst.lock();
                let mut view = ObjectsView { engine: self, tenant: t, ds };
                let output = inst.compute(op, input, &mut view)?;
                out.extend_from_slice(&output);
            }
            RequestView::Raw { .. } => {
                return Err(ProtoError::bad("raw mode is only available over a socket"));
            }
            // Sessions belong to the transport (a server's connections); the in-process store lives and dies with
            // its process, so there is nothing to expire.
            RequestView::Lease { .. } | RequestView::Own { .. } => self.count_op(t, 4),
        }
        Ok(())
    }

    fn release_pages(&self, t: &Tenant, removed: u64) {
        self.sub_stored(t, removed * PAGE_SIZE as u64, removed, 0);
    }

    fn release_objects(&self, t: &Tenant, bytes: u64, n: u64) {
        self.sub_stored(t, bytes, 0, n);
    }

    fn drop_objects(&self, t: &Tenant, ds: u64) -> (u64, u64) {
        let (mut bytes, mut n) = (0u64, 0u64);
        for shard in &t.objects {
            let mut shard = shard.lock();
            let keys: Vec<u64> =
                shard.map.keys().chain(shard.shared.keys()).filter(|k| k.0 == ds).map(|k| k.1).collect();
            for id in keys {
                if let Some(l) = shard.remove(ds, id) {
                    bytes += u64::from(l);
                    n += 1;
                }
            }
        }
        (bytes, n)
    }

    /// Stores objects of `ds` for `t`, all or nothing with respect to capacity.
    pub(crate) fn write_objects(
        &self,
        t: &Tenant,
        ds: u64,
        entries: impl Iterator<Item = (u64, u32)> + Clone,
        data: &[u8],
    ) -> Result<(), ProtoError> {
        // Growth if every entry replaced what is stored now (shrinking entries give room back only afterwards).
        let mut grow = 0u64;
        let mut walk = ShardWalk::new(&t.objects);
        for (id, len) in entries.clone() {
            let old = walk.at(obj_shard(ds, id)).len_of(ds, id).unwrap_or(0);
            grow += u64::from(len.saturating_sub(old));
        }
        drop(walk);
        let res = self.reserve(grow)?;
        let (mut added_bytes, mut freed_bytes, mut added, mut off) = (0u64, 0u64, 0u64, 0usize);
        let mut walk = ShardWalk::new(&t.objects);
        for (id, len) in entries {
            let v = &data[off..off + len as usize];
            off += len as usize;
            let old = walk.at(obj_shard(ds, id)).put(&self.sizes, ds, id, v);
            if old.is_none() {
                added += 1;
            }
            let old = old.unwrap_or(0);
            added_bytes += u64::from(len.saturating_sub(old));
            freed_bytes += u64::from(old.saturating_sub(len));
        }
        drop(walk);
        // Settle the reservation against what really changed (a concurrent writer may have raced us).
        std::mem::forget(res);
        if added_bytes > grow {
            self.used.fetch_add(added_bytes - grow, Relaxed);
        } else {
            self.used.fetch_sub(grow - added_bytes, Relaxed);
        }
        self.add_stored(t, added_bytes, 0, added);
        self.sub_stored(t, freed_bytes, 0, 0);
        Ok(())
    }

    pub(crate) fn read_object(&self, t: &Tenant, ds: u64, id: u64) -> Option<Vec<u8>> {
        t.objects[obj_shard(ds, id)].lock().get(ds, id).map(|v| v.as_slice().to_vec())
    }

    pub(crate) fn with_object<R>(&self, t: &Tenant, ds: u64, id: u64, f: impl FnOnce(Option<&[u8]>) -> R) -> R {
        f(t.objects[obj_shard(ds, id)].lock().get(ds, id).as_ref().map(ObjRef::as_slice))
    }

    /// Kind of op for counting, used by transports that answer some ops themselves.
    pub fn op_name(op: Op) -> &'static str {
        match op {
            Op::ReadPages | Op::ReadObjects => OP_KINDS[0],
            Op::WritePages | Op::WriteObjects => OP_KINDS[1],
            Op::DeletePages | Op::DeleteObjects | Op::DropRegion | Op::DropObjects => OP_KINDS[2],
            Op::Construct | Op::Destruct | Op::Compute => OP_KINDS[3],
            _ => OP_KINDS[4],
        }
    }
}

fn lens_iter(lens: &[u8]) -> impl Iterator<Item = u32> + Clone + '_ {
    lens.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_sizes_cover_the_range() {
        let s = class_sizes();
        assert_eq!(s[0], 16);
        assert_eq!(*s.last().unwrap(), SHARE_MIN - 1);
        assert!(s.windows(2).all(|w| w[0] < w[1] && w[1] * 4 <= w[0] * 5 + w[0] / 4 * 4));
        assert!(s.len() < 256);
    }

    #[test]
    fn page_metadata_stays_under_three_percent() {
        let store = crate::far::MemStore::new(1 << 30);
        let data = vec![1u8; 256 * PAGE_SIZE];
        for start in (0..16384u64).step_by(256) {
            let ids: Vec<u64> = (start..start + 256).collect();
            crate::far::FarStore::write_pages(&store, 3, &ids, &data).unwrap();
        }
        let (meta, slabs) = store.engine().footprint();
        let stored = usize::try_from(store.engine().used()).unwrap();
        assert_eq!(stored, 16384 * PAGE_SIZE);
        // Each shard may have one partly used slab.
        assert!(slabs >= stored && slabs <= stored + SHARDS * 256 * 1024, "slabs reserve {slabs} bytes");
        assert!(meta * 100 <= stored * 3, "metadata {meta} bytes for {stored} bytes of pages");
    }

    fn run(e: &Engine, t: &Tenant, req: &proto::Request, out: &mut OutBuf) {
        let mut frame = Vec::new();
        proto::encode_request(&mut frame, 1, req);
        let v = proto::decode_request(req.op() as u8, &frame[4 + proto::HEADER_LEN..]).unwrap();
        e.dispatch_into(t, 1, req.op() as u8, &v, out);
    }

    fn reply(out: &OutBuf, op: Op) -> proto::Reply {
        let mut flat = Vec::new();
        out.flatten_into(&mut flat);
        let len = u32::from_le_bytes(flat[..4].try_into().unwrap()) as usize;
        assert_eq!(len + 4, flat.len(), "one whole frame");
        assert_eq!(flat[5], 0, "status ok: {:?}", String::from_utf8_lossy(&flat[16..]));
        proto::decode_reply(op, &flat[4 + proto::HEADER_LEN..]).unwrap()
    }

    #[test]
    fn a_reply_in_flight_keeps_the_values_it_read() {
        let e = Engine::new(1 << 30, Registry::new());
        let t = e.tenant("t");
        let mut scratch = OutBuf::default();
        let pages: Vec<u64> = (0..40).collect();
        run(
            &e,
            &t,
            &proto::Request::WritePages { region: 1, pages: pages.clone(), data: vec![1; 40 * PAGE_SIZE] },
            &mut scratch,
        );
        let mut batch = proto::ObjBatch::new();
        for (id, len) in [(0u64, 5000usize), (1, 100), (2, SHARE_MIN), (3, SHARE_MIN - 1)] {
            batch.push(id, &vec![1; len]);
        }
        run(&e, &t, &proto::Request::WriteObjects { ds: 2, batch }, &mut scratch);
        // Two replies built, not yet sent: they hold the pages and the large values.
        let mut held_pages = OutBuf::default();
        run(&e, &t, &proto::Request::ReadPages { region: 1, pages: pages.clone() }, &mut held_pages);
        let mut held_objs = OutBuf::default();
        run(&e, &t, &proto::Request::ReadObjects { ds: 2, ids: vec![0, 1, 2, 3] }, &mut held_objs);
        // Overwrite everything (objects also change size class and representation), then delete some.
        run(
            &e,
            &t,
            &proto::Request::WritePages { region: 1, pages: pages.clone(), data: vec![2; 40 * PAGE_SIZE] },
            &mut scratch,
        );
        let mut batch = proto::ObjBatch::new();
        for (id, len) in [(0u64, 5000usize), (1, 3000), (2, 10), (3, SHARE_MIN - 1)] {
            batch.push(id, &vec![2; len]);
        }
        run(&e, &t, &proto::Request::WriteObjects { ds: 2, batch }, &mut scratch);
        run(&e, &t, &proto::Request::DeletePages { region: 1, pages: vec![0, 39] }, &mut scratch);
        match reply(&held_pages, Op::ReadPages) {
            proto::Reply::Pages { present, data } => {
                assert!(present.iter().all(|&p| p));
                assert!(data.iter().all(|&b| b == 1), "the held reply saw a later write");
            }
            r => panic!("{r:?}"),
        }
        match reply(&held_objs, Op::ReadObjects) {
            proto::Reply::Objects(b) => {
                let lens: Vec<usize> = b.iter().map(|(_, v)| v.unwrap().len()).collect();
                assert_eq!(lens, [5000, 100, SHARE_MIN, SHARE_MIN - 1]);
                assert!(b.iter().all(|(_, v)| v.unwrap().iter().all(|&x| x == 1)));
            }
            r => panic!("{r:?}"),
        }
        // New reads see the new values; the capacity counts the current sizes.
        let mut now = OutBuf::default();
        run(&e, &t, &proto::Request::ReadPages { region: 1, pages: vec![0, 1, 39] }, &mut now);
        match reply(&now, Op::ReadPages) {
            proto::Reply::Pages { present, data } => {
                assert_eq!(present, [false, true, false]);
                assert!(data[PAGE_SIZE..2 * PAGE_SIZE].iter().all(|&b| b == 2));
            }
            r => panic!("{r:?}"),
        }
        let mut now = OutBuf::default();
        run(&e, &t, &proto::Request::ReadObjects { ds: 2, ids: vec![0, 1, 2, 3] }, &mut now);
        match reply(&now, Op::ReadObjects) {
            proto::Reply::Objects(b) => {
                let lens: Vec<usize> = b.iter().map(|(_, v)| v.unwrap().len()).collect();
                assert_eq!(lens, [5000, 3000, 10, SHARE_MIN - 1]);
                assert!(b.iter().all(|(_, v)| v.unwrap().iter().all(|&x| x == 2)));
            }
            r => panic!("{r:?}"),
        }
        assert_eq!(e.used(), (38 * PAGE_SIZE + 5000 + 3000 + 10 + SHARE_MIN - 1) as u64);
        run(&e, &t, &proto::Request::DropObjects { ds: 2 }, &mut scratch);
        run(&e, &t, &proto::Request::DropRegion { region: 1 }, &mut scratch);
        assert_eq!(e.used(), 0);
        assert_eq!(e.footprint().1, 0, "no value is left behind");
    }

    #[test]
    fn slab_reuses_and_returns_memory() {
        let mut s = Slab::new(PAGE_SIZE);
        let a = s.alloc();
        let b = s.alloc();
        s.get_mut(b)[0] = 9;
        s.release(a);
        assert_eq!(s.alloc(), a);
        assert_eq!(s.get(b)[0], 9);
        s.release(a);
        s.release(b);
        assert_eq!(s.reserved_bytes(), 0);
    }
}
