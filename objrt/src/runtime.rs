//! The runtime: configuration, spaces, swap-in, fetch handles, write-back, free and stats.

use crate::epoch::{self, backoff};
use crate::error::ObjError;
use crate::heap::{Heap, HeapFull, Marks};
use crate::primitive::Ordering;
use crate::slots::{self, Slot};
use crate::stats::{Counters, Stats};
use crate::word::{self, Found};
use farmem_memd::config::{env_size, env_str, ConfigError};
use farmem_memd::far::fresh_space_id;
use farmem_memd::far::ObjectSink;
use farmem_memd::proto::OwnKind;
use farmem_memd::{FarStore, ObjBatch, Pending, Reply, Request};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;

/// How a [`Runtime`] is set up. Build with [`RuntimeConfig::new`] and adjust fields.
#[derive(Clone, Debug, PartialEq)]
pub struct RuntimeConfig {
    /// Local memory for objects, in bytes (the budget).
    pub local_mem: usize,
    /// Bytes per heap region; 0 picks 1 MiB, or less for small budgets (at least 64 regions, at least 64 KiB).
    pub region_size: usize,
    /// Evacuator threads. 0: no background evacuation — objects leave local memory through [`Runtime::evacuate`]
    /// and friends, or when an allocation outside any scope finds the heap full and evacuates for itself; a
    /// fetch inside a scope that finds it full fails (for tests and single-threaded tools). Cycles are
    /// serialised (one at a time per runtime, their write-backs pipelined), so more than one thread only shortens
    /// the wake-up latency; 1 is the default.
    pub evacuator_threads: usize,
    /// Allocation lanes (bump regions in use at once); 0 picks two per CPU, at most 16.
    pub lanes: usize,
    /// Free fraction of the budget at which the evacuator starts (default 0.04; AIFM: 0.12). Free memory is
    /// cache that is not used: low watermarks keep more objects local (AIFM's keep 12–22% of the budget idle).
    pub low_watermark: f64,
    /// Free fraction at which it stops (default 0.06; AIFM: 0.22).
    pub high_watermark: f64,
    /// Free fraction at which mutators outside scopes wait (default 0.02; AIFM: 0.03).
    pub hard_watermark: f64,
    /// Regions above the budget that threads inside a scope may use at the hard watermark, as a fraction of
    /// the budget (they cannot wait there: the evacuator may be waiting for their scope to end).
    pub reserve: f64,
    /// Bytes per write-back request of the evacuator.
    pub writeback_batch: usize,
}

impl Default for RuntimeConfig {
    /// A 256 MiB budget and the default watermarks; so `RuntimeConfig { local_mem: n, ..Default::default() }` works.
    fn default() -> Self {
        RuntimeConfig::new(256 << 20)
    }
}

impl RuntimeConfig {
    /// Defaults around a budget of `local_mem` bytes.
    pub fn new(local_mem: usize) -> RuntimeConfig {
        RuntimeConfig {
            local_mem,
            region_size: 0,
            evacuator_threads: 1,
            lanes: 0,
            low_watermark: 0.04,
            high_watermark: 0.06,
            hard_watermark: 0.02,
            reserve: 0.125,
            writeback_batch: 4 << 20,
        }
    }

    /// From `FARMEM_LOCAL_MEM` (default 256M).
    pub fn from_env() -> Result<RuntimeConfig, ConfigError> {
        let mem = env_size("FARMEM_LOCAL_MEM")?.unwrap_or(256 << 20);
        let mem = usize::try_from(mem).map_err(|_| ConfigError::new("FARMEM_LOCAL_MEM", "too large"))?;
        Ok(RuntimeConfig::new(mem))
    }

    fn region_size(&self) -> usize {
        if self.region_size != 0 {
            return self.region_size;
        }
        let per = (self.local_mem / 64).max(1);
        let pow = if per.is_power_of_two() { per } else { per.next_power_of_two() / 2 };
        pow.clamp(64 << 10, 1 << 20)
    }

    fn validate(&self) -> Result<Shape, ObjError> {
        let bad = |m: String| Err(ObjError::Config(m));
        let rs = self.region_size();
        if !rs.is_power_of_two() || rs < 4096 {
            return bad(format!("region_size {rs} must be a power of two of at least 4096"));
        }
        let regions = self.local_mem / rs;
        if regions < 16 {
            return bad(format!(
                "local_mem {} holds only {regions} regions of {rs} bytes; at least 16 are needed",
                self.local_mem
            ));
        }
        let frac = |name: &str, f: f64| {
            if (0.0..1.0).contains(&f) {
                Ok(f)
            } else {
                Err(ObjError::Config(format!("{name} {f} must be in [0, 1)")))
            }
        };
        let (hard, low, high) = (
            frac("hard_watermark", self.hard_watermark)?,
            frac("low_watermark", self.low_watermark)?,
            frac("high_watermark", self.high_watermark)?,
        );
        if !(hard < low && low < high) {
            return bad(format!("watermarks must satisfy hard {hard} < low {low} < high {high}"));
        }
        let reserve = frac("reserve", self.reserve)?;
        if self.writeback_batch < 4096 {
            return bad(format!("writeback_batch {} is below 4096", self.writeback_batch));
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "fractions of a small count")]
        let count = |f: f64| (f * regions as f64).ceil() as usize;
        let hard_r = count(hard).max(1);
        let low_r = count(low).max(hard_r + 1);
        let high_r = count(high).max(low_r + 1).min(regions);
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let lanes = if self.lanes == 0 { (2 * cpus).min(16).min(regions / 4 - 1).max(1) } else { self.lanes };
        // Lanes and the evacuator's destination hold regions that cannot be evacuated: keep them a small part.
        if lanes + 1 > regions / 4 {
            return bad(format!("{lanes} lanes need at least {} regions; the budget has {regions}", 4 * (lanes + 1)));
        }
        let reserve_r = count(reserve).max(2) + lanes;
        Ok(Shape {
            region_size: rs,
            regions,
            marks: Marks { hard: hard_r, low: low_r, high: high_r },
            reserve: reserve_r,
            lanes,
        })
    }
}

/// What a validated configuration works out to.
struct Shape {
    region_size: usize,
    regions: usize,
    marks: Marks,
    reserve: usize,
    lanes: usize,
}

/// A data structure's key space in memd: objects of one space share memd's `ds` id, which offloaded
/// computation uses to find them. Every runtime has [`Space::DEFAULT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Space(pub(crate) u16);

impl Space {
    /// The space every runtime starts with.
    pub const DEFAULT: Space = Space(0);
}

/// Objects held `BUSY` by an operation, with the words they had.
type Claimed = Vec<(&'static Slot, u64)>;

/// Objects whose fetch started and that others may complete.
///
/// A std mutex, not parking_lot's: it is held for a whole network round trip (by the thread completing the
/// fetch) and a thread that needs one of its objects waits on it. parking_lot spins through `sched_yield`
/// before it parks, and beside CPU-bound processes every yield hands the CPU away for a whole time slice; the
/// std mutex spins briefly without yielding, then sleeps until the holder is done.
#[derive(Debug)]
pub(crate) struct Inflight {
    groups: std::sync::Mutex<Option<Vec<Group>>>,
}

impl Inflight {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Vec<Group>>> {
        // A panic while completing leaves either the groups (not taken yet) or `None` (taken): both consistent.
        self.groups.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(Debug)]
struct Group {
    space: u16,
    pending: Pending,
    entries: Claimed,
    /// Where the reply may be received in place (fetches of at least [`LANDING_MIN_BYTES`]).
    landing: Option<Arc<Landing>>,
}

/// Fetches of fewer bytes are received the ordinary way: for a single small object (a hash-map bucket) the copy
/// out of the reply buffer costs less than a landing and its registration with the client.
const LANDING_MIN_BYTES: usize = 16 << 10;

/// Where a fetch group's values may be received in place ([`ObjectSink`]): the thread that reads the reply —
/// any thread, the fetcher or not — allocates the objects in the heap just before it reads their values and
/// reads them straight into their payloads, which saves copying each value out of a reply buffer. The objects
/// stay unpublished (their words claimed `BUSY` by the fetch) until [`RtInner::install_group`] publishes them;
/// until then their live bytes keep their regions from being reused.
#[derive(Debug)]
struct Landing {
    heap: Arc<Heap>,
    space: u16,
    /// (id, size) of each object, in request order.
    expected: Vec<(u64, u32)>,
    state: Mutex<LandingState>,
}

#[derive(Debug)]
enum LandingState {
    /// Nothing received yet.
    Open,
    /// The values are at these payload addresses (in request order), not yet published.
    Placed(Vec<u64>),
    /// Closed by the fetch: no value will be received any more.
    Closed,
}

impl Landing {
    /// Closes the landing (no `receive` runs after this) and returns the addresses of the values it received.
    fn close(&self) -> Option<Vec<u64>> {
        match std::mem::replace(&mut *self.state.lock(), LandingState::Closed) {
            LandingState::Placed(a) => Some(a),
            LandingState::Open | LandingState::Closed => None,
        }
    }

    /// Gives back the space of objects allocated but not published.
    fn give_back(&self, addrs: &[u64]) {
        for (&a, &(_, len)) in addrs.iter().zip(&self.expected) {
            self.heap.sub_live(a, len as usize);
        }
    }
}

impl ObjectSink for Landing {
    fn expected(&self) -> &[(u64, u32)] {
        &self.expected
    }

    fn receive(
        &self,
        fill: &mut dyn FnMut(&mut [&mut [u8]]) -> std::io::Result<bool>,
    ) -> Option<std::io::Result<bool>> {
        // Held through the read: `close` waits for it, so the space is never given back while being written.
        let mut st = self.state.lock();
        if !matches!(*st, LandingState::Open) {
            return None;
        }
        // Never waits: this may be any thread waiting for a reply, possibly inside a scope.
        let addrs = self.heap.alloc_many(&self.expected, self.space).ok()?;
        let spans: Vec<(u64, usize)> = addrs.iter().zip(&self.expected).map(|(&a, &(_, l))| (a, l as usize)).collect();
        // P4 (raw.rs): each span is the payload of an object just allocated above, for this landing alone, and
        // not published (no word holds its address), so no other thread reads or writes it; its live bytes keep
        // its region from being reused until `install_group` publishes it or gives it back, which happens only
        // after `close`, which waits for this lock.
        let r = self.heap.mem.with_fresh(&spans, |d| fill(d));
        if matches!(r, Ok(true)) {
            *st = LandingState::Placed(addrs);
        } else {
            self.give_back(&addrs);
        }
        Some(r)
    }
}

/// Hashes object ids (already spread by the slot allocator) with one multiply: the in-flight table is on every
/// miss's path, and SipHash's cost there showed up in profiles.
#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = (id ^ (id >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type IdMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<IdHasher>>;

/// Shards of the in-flight table (a power of two): threads fetching different objects rarely share a lock.
const INFLIGHT_SHARDS: usize = 64;
/// Consecutive ids per run of the in-flight table (see [`InflightTable::shard_index`]).
const INFLIGHT_RUN: u64 = 16;

/// Object id → the fetch that is bringing it in, sharded by id so that the many threads of a miss-heavy load
/// do not serialise on one lock (each fetch registers and unregisters every object it carries).
#[derive(Debug)]
struct InflightTable {
    shards: Box<[Mutex<IdMap<Arc<Inflight>>>]>,
}

impl InflightTable {
    fn new() -> InflightTable {
        InflightTable { shards: (0..INFLIGHT_SHARDS).map(|_| Mutex::new(IdMap::default())).collect() }
    }

    fn shard_index(id: u64) -> usize {
        // Aligned runs of consecutive ids (a container's chunks) share a shard, so that a fetch of a window of
        // chunks registers and unregisters them under a few locks, not one per chunk; runs spread over shards.
        usize::try_from((id / INFLIGHT_RUN) % INFLIGHT_SHARDS as u64).unwrap_or(0)
    }

    fn shard(&self, id: u64) -> &Mutex<IdMap<Arc<Inflight>>> {
        &self.shards[Self::shard_index(id)]
    }

    /// Registers every object of `entries` as brought in by `inf`, locking each shard once per run of ids.
    fn insert_all(&self, entries: &Claimed, inf: &Arc<Inflight>) {
        let mut i = 0;
        while i < entries.len() {
            let k = Self::shard_index(entries[i].0.id());
            let mut m = self.shards[k].lock();
            while i < entries.len() && Self::shard_index(entries[i].0.id()) == k {
                m.insert(entries[i].0.id(), Arc::clone(inf));
                i += 1;
            }
        }
    }

    /// Unregisters every object of `entries`, locking each shard once per run of ids.
    fn remove_all(&self, entries: &Claimed) {
        let mut i = 0;
        while i < entries.len() {
            let k = Self::shard_index(entries[i].0.id());
            let mut m = self.shards[k].lock();
            while i < entries.len() && Self::shard_index(entries[i].0.id()) == k {
                m.remove(&entries[i].0.id());
                i += 1;
            }
        }
    }

    fn get(&self, id: u64) -> Option<Arc<Inflight>> {
        self.shard(id).lock().get(&id).cloned()
    }

    fn remove(&self, id: u64) {
        self.shard(id).lock().remove(&id);
    }
}

#[derive(Debug)]
/// The shared state behind a [`Runtime`] and its far pointers (opaque).
#[doc(hidden)]
pub struct RtInner {
    /// Shared with the fetches' landings (see [`Landing`]), which allocate in it from the thread that reads a reply.
    pub(crate) heap: Arc<Heap>,
    pub(crate) store: Arc<dyn FarStore>,
    spaces: RwLock<Vec<u64>>,
    pub(crate) ctr: Counters,
    inflight: InflightTable,
    deletes: Mutex<Vec<(u16, u64)>>,
    pub(crate) evac_lock: Mutex<()>,
    pub(crate) cfg: RuntimeConfig,
    /// Evacuator threads are running (cleared when the `Runtime` is dropped).
    pub(crate) background: std::sync::atomic::AtomicBool,
}

/// An object runtime: a local heap under a budget, an evacuator, and a far store.
///
/// Several may exist in one process (each with its own heap, budget and memd data-structure ids); far
/// pointers keep their runtime's heap alive. Dropping the `Runtime` stops its evacuator threads (objects that
/// are still alive stay valid, but nothing evacuates them any more). Applications that want one runtime for
/// everything use [`Runtime::global`].
#[derive(Debug)]
pub struct Runtime {
    pub(crate) inner: Arc<RtInner>,
    threads: Vec<JoinHandle<()>>,
}

const DELETE_BATCH: usize = 512;

impl Runtime {
    /// A runtime with budget and tuning from `cfg`, keeping far objects in `store`.
    pub fn new(cfg: RuntimeConfig, store: Arc<dyn FarStore>) -> Result<Runtime, ObjError> {
        let Shape { region_size: rs, regions, marks, reserve, lanes } = cfg.validate()?;
        let heap =
            Heap::new(rs, regions, reserve, lanes, marks).ok_or(ObjError::HeapAlloc(rs * (regions + reserve)))?;
        heap.global_pressure.store(cfg.evacuator_threads > 0, Relaxed);
        let background = cfg.evacuator_threads > 0;
        let inner = Arc::new(RtInner {
            heap: Arc::new(heap),
            store,
            spaces: RwLock::new(vec![fresh_space_id()]),
            ctr: Counters::default(),
            inflight: InflightTable::new(),
            deletes: Mutex::new(Vec::new()),
            evac_lock: Mutex::new(()),
            cfg: cfg.clone(),
            background: std::sync::atomic::AtomicBool::new(background),
        });
        // Objects are this process's memory: memd drops the space once the process is gone, however it ends.
        inner.store.own(OwnKind::Objects, inner.ds(0))?;
        let mut threads = Vec::new();
        for i in 0..cfg.evacuator_threads {
            let rt = Arc::clone(&inner);
            let t = std::thread::Builder::new()
                .name(format!("farmem-evac-{i}"))
                .spawn(move || crate::evac::run(&rt))
                .map_err(|e| ObjError::Config(format!("cannot start an evacuator thread: {e}")))?;
            threads.push(t);
        }
        tracing::debug!(region_size = rs, regions, reserve, lanes, ?marks, "object runtime started");
        Ok(Runtime { inner, threads })
    }

    /// The process's default runtime: the one given to [`Runtime::set_global`], or else one built on first use
    /// from `FARMEM_LOCAL_MEM` and, when `FARMEM_SERVER` is set, a memd client (`FARMEM_TOKEN_FILE`); without
    /// `FARMEM_SERVER` far objects stay in an in-process store (a warning says so). Panics with the reason if
    /// that fails; [`Runtime::try_global`] returns it instead.
    pub fn global() -> &'static Runtime {
        match Self::try_global() {
            Ok(rt) => rt,
            Err(e) => panic!("farmem: cannot start the default object runtime: {e}"),
        }
    }

    /// See [`Runtime::global`].
    pub fn try_global() -> Result<&'static Runtime, ObjError> {
        if let Some(rt) = GLOBAL.get() {
            return Ok(rt);
        }
        let cfg = RuntimeConfig::from_env()?;
        let store: Arc<dyn FarStore> = match farmem_memd::ClientConfig::from_env()? {
            Some(c) => Arc::new(farmem_memd::Client::connect(c)?),
            None => {
                if env_str("FARMEM_SERVER")?.is_none() {
                    tracing::warn!("FARMEM_SERVER is not set: far objects are kept in an in-process store");
                }
                Arc::new(farmem_memd::MemStore::new(u64::MAX))
            }
        };
        let rt = Runtime::new(cfg, store)?;
        // A racing initialiser may have won: theirs is used, ours dropped.
        let _ = GLOBAL.set(rt);
        GLOBAL.get().ok_or_else(|| ObjError::Config("global runtime vanished".into()))
    }

    /// Installs `rt` as the default runtime; gives it back if one is already installed.
    pub fn set_global(rt: Runtime) -> Result<(), Runtime> {
        GLOBAL.set(rt)
    }

    /// A new space (a fresh memd `ds` id) for a data structure's objects.
    pub fn new_space(&self) -> Result<Space, ObjError> {
        let ds = fresh_space_id();
        self.inner.store.own(OwnKind::Objects, ds)?;
        let mut s = self.inner.spaces.write();
        let i = u16::try_from(s.len()).map_err(|_| ObjError::OutOfSpaces(word::MAX_SPACES))?;
        s.push(ds);
        Ok(Space(i))
    }

    /// memd's `ds` id for `space` (for offloaded computation on its objects).
    pub fn space_ds(&self, space: Space) -> u64 {
        self.inner.ds(space.0)
    }

    /// The far store.
    pub fn store(&self) -> &Arc<dyn FarStore> {
        &self.inner.store
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }

    /// The local-memory budget in bytes (whole regions of it).
    pub fn budget(&self) -> usize {
        self.inner.heap.budget_regions * self.inner.heap.region_size
    }

    /// Largest object this runtime holds.
    pub fn max_object(&self) -> usize {
        self.inner.heap.max_object()
    }

    /// Runs evacuation cycles now until free local memory reaches the high watermark (or nothing more can be
    /// evacuated). Must be called outside every scope.
    pub fn evacuate(&self) -> Result<(), ObjError> {
        not_in_scope()?;
        let target = self.inner.heap.marks.high;
        crate::evac::evacuate_until(&self.inner, target, true);
        Ok(())
    }

    /// Moves every object that nobody is using right now to far memory (dirty ones written back), leaving the
    /// local heap (nearly) empty. Must be called outside every scope.
    pub fn evacuate_all(&self) -> Result<(), ObjError> {
        not_in_scope()?;
        crate::evac::evacuate_all(&self.inner);
        Ok(())
    }

    /// Starts fetching every object of `objs` that is remote (one batched request per space) and returns at
    /// once. Objects already local or being fetched are skipped. The objects must belong to this runtime.
    pub fn fetch<'a, P, I>(&self, objs: I) -> Result<FetchHandle, ObjError>
    where
        P: crate::ptr::FarHandle + 'a,
        I: IntoIterator<Item = &'a P>,
    {
        Self::fetch_in(&self.inner, &self.owned_slots(objs)?)
    }

    /// The slots of `objs`, each checked to belong to this runtime.
    fn owned_slots<'a, P, I>(&self, objs: I) -> Result<Vec<&'static Slot>, ObjError>
    where
        P: crate::ptr::FarHandle + 'a,
        I: IntoIterator<Item = &'a P>,
    {
        objs.into_iter()
            .map(|p| {
                self.check_owner(p)?;
                Ok(p.far_slot())
            })
            .collect()
    }

    pub(crate) fn fetch_in(rt: &Arc<RtInner>, slots: &[&'static Slot]) -> Result<FetchHandle, ObjError> {
        let inf = rt.start_fetch(slots)?;
        Ok(FetchHandle { rt: Arc::clone(rt), inf })
    }

    /// Writes every dirty local object of `objs` to memd in batches and marks it clean (it stays local), so
    /// that memd's copy — which offloaded computation reads — is current. Returns how many were written.
    pub fn write_back<'a, P, I>(&self, objs: I) -> Result<usize, ObjError>
    where
        P: crate::ptr::FarHandle + 'a,
        I: IntoIterator<Item = &'a P>,
    {
        self.inner.write_back(&self.owned_slots(objs)?)
    }

    /// Sends the deletes of freed remote objects that are still queued.
    pub fn flush_deletes(&self) -> Result<(), ObjError> {
        self.inner.flush_deletes()
    }

    fn check_owner<P: crate::ptr::FarHandle>(&self, p: &P) -> Result<(), ObjError> {
        if std::ptr::eq(p.far_runtime(), &*self.inner) {
            Ok(())
        } else {
            Err(ObjError::Config("object belongs to another runtime".into()))
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.inner.background.store(false, Relaxed);
        *self.inner.heap.evac_mx.lock() = true;
        self.inner.heap.evac_cv.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.inner.heap.leave_pressure();
        if let Err(e) = self.inner.flush_deletes() {
            tracing::warn!("farmem: deleting freed objects at runtime shutdown: {e}");
        }
    }
}

static GLOBAL: OnceLock<Runtime> = OnceLock::new();

fn not_in_scope() -> Result<(), ObjError> {
    if epoch::pinned() {
        Err(ObjError::Config("evacuation was requested inside a DerefScope (it would wait for that very scope)".into()))
    } else {
        Ok(())
    }
}

/// Fetches started by [`Runtime::fetch`] or a pointer's `prefetch`. Waiting installs the objects locally;
/// dropping the handle waits too. Other threads that dereference one of the objects meanwhile complete the
/// fetch themselves rather than fetching again.
#[derive(Debug)]
#[must_use = "a fetch is completed by waiting on its handle (or dropping it)"]
pub struct FetchHandle {
    rt: Arc<RtInner>,
    inf: Option<Arc<Inflight>>,
}

impl FetchHandle {
    /// Waits for the objects to arrive and places them in local memory.
    pub fn wait(mut self) -> Result<(), ObjError> {
        match self.inf.take() {
            Some(inf) => self.rt.complete(&inf),
            None => Ok(()),
        }
    }

    /// Whether the handle started any fetch at all (false when every object was local or already in flight).
    pub fn is_empty(&self) -> bool {
        self.inf.is_none()
    }

    /// Whether [`FetchHandle::wait`] would return without waiting for the network: every reply has arrived
    /// (or another thread completed the fetch). This is what an async dereference will poll.
    pub fn is_ready(&self) -> bool {
        match &self.inf {
            None => true,
            Some(inf) => {
                let g = match inf.groups.try_lock() {
                    Ok(g) => g,
                    Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                    Err(std::sync::TryLockError::WouldBlock) => return false,
                };
                g.as_ref().is_none_or(|gs| gs.iter().all(|g| g.pending.is_ready()))
            }
        }
    }
}

impl Drop for FetchHandle {
    fn drop(&mut self) {
        if let Some(inf) = self.inf.take() {
            if let Err(e) = self.rt.complete(&inf) {
                crate::evac::warn_limited(&format!("a dropped fetch handle failed: {e}"));
            }
        }
    }
}

impl Drop for RtInner {
    fn drop(&mut self) {
        // The last far pointer is gone: send the deletes still queued.
        if let Err(e) = self.flush_deletes() {
            tracing::warn!("farmem: deleting freed far objects failed: {e}");
        }
    }
}

impl RtInner {
    pub(crate) fn ds(&self, space: u16) -> u64 {
        self.spaces.read().get(usize::from(space)).copied().unwrap_or(0)
    }

    pub(crate) fn stats(&self) -> Stats {
        let c = &self.ctr;
        let h = &self.heap;
        Stats {
            hits: epoch::domain().hits(),
            misses: c.misses.load(Relaxed),
            shared_misses: c.shared_misses.load(Relaxed),
            bytes_in: c.bytes_in.load(Relaxed),
            bytes_out: c.bytes_out.load(Relaxed),
            evac_cycles: c.evac_cycles.load(Relaxed),
            compacted: c.compacted.load(Relaxed),
            written_back: c.written_back.load(Relaxed),
            clean_drops: c.clean_drops.load(Relaxed),
            evac_cancelled: c.evac_cancelled.load(Relaxed),
            grace_wait_ns: c.grace_wait_ns.load(Relaxed),
            regions_freed: c.regions_freed.load(Relaxed),
            frees: c.frees.load(Relaxed),
            remote_deletes: c.remote_deletes.load(Relaxed),
            alloc_wait_ns: h.alloc_wait_ns.load(Relaxed),
            scope_wait_ns: epoch::scope_wait_ns(),
            busy_wait_ns: c.busy_wait_ns.load(Relaxed),
            overflow_regions: h.overflow_takes.load(Relaxed),
            peak_regions: h.peak_regions.load(Relaxed) as u64,
            regions_in_use: h.in_use() as u64,
            region_size: h.region_size as u64,
            writeback_errors: c.writeback_errors.load(Relaxed),
        }
    }

    fn exhausted(&self) -> ObjError {
        ObjError::HeapExhausted { regions: self.heap.in_use(), region_size: self.heap.region_size }
    }

    /// Allocates a new object holding `bytes` in `space` and returns its slot (published, dirty, hot).
    pub(crate) fn alloc_obj(&self, space: u16, bytes: &[u8], shared: bool) -> Result<&'static Slot, ObjError> {
        let max = self.heap.max_object();
        if bytes.len() > max {
            return Err(ObjError::TooLarge { size: bytes.len(), max });
        }
        let slot = slots::alloc().ok_or(ObjError::OutOfSlots)?;
        let may_wait = self.background.load(Relaxed) && !epoch::pinned();
        let mut res = self.heap.alloc(bytes.len(), slot.id(), space, may_wait);
        if res.is_err() && !self.background.load(Relaxed) && !epoch::pinned() {
            // No evacuator thread: an allocation outside any scope evacuates for itself.
            crate::evac::evacuate_until(self, self.heap.marks.high, true);
            res = self.heap.alloc(bytes.len(), slot.id(), space, false);
        }
        let addr = match res {
            Ok(a) => a,
            Err(HeapFull::Exhausted) => {
                slots::release([slot.id()]);
                return Err(self.exhausted());
            }
        };
        self.heap.mem.write_bytes(addr, bytes);
        slot.set_flags(if shared { word::SHARED } else { 0 });
        word::publish(&slot.word, word::local(addr, 0));
        Ok(slot)
    }

    /// Slow path of a dereference: returns the object's local address once the word lets the fast path through
    /// (or, for a non-temporal access, once the object is local without warming it), and whether it was served
    /// from local memory (false when this call fetched it or waited for another thread's fetch of it).
    pub(crate) fn deref_slow(&self, slot: &'static Slot, write: bool, warm: bool) -> Result<(u64, bool), ObjError> {
        let mut spins = 0u32;
        let mut wait_start: Option<Instant> = None;
        let mut local = true;
        let r = loop {
            match word::touch(&slot.word, warm) {
                Found::Local(a) => {
                    if write {
                        slot.mark_dirty();
                    }
                    break Ok((a, local));
                }
                Found::Remote(_) => {
                    local = false;
                    if let Some(inf) = self.start_fetch(&[slot])? {
                        self.complete(&inf)?;
                    }
                }
                Found::Busy(w) => {
                    if w & word::ABSENT != 0 {
                        local = false;
                        let found = self.inflight.get(slot.id());
                        if let Some(inf) = found {
                            Counters::add(&self.ctr.shared_misses, 1);
                            self.complete(&inf)?;
                            continue;
                        }
                    }
                    wait_start.get_or_insert_with(Instant::now);
                    backoff(&mut spins);
                }
            }
        };
        if let Some(t) = wait_start {
            Counters::add(&self.ctr.busy_wait_ns, u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
        }
        r
    }

    /// Waits until `slot` is not busy (helping a fetch in flight) and returns its word.
    fn settle(&self, slot: &'static Slot) -> Result<u64, ObjError> {
        let mut spins = 0u32;
        loop {
            let w = slot.word.load(Ordering::Acquire);
            if w & word::BUSY == 0 {
                return Ok(w);
            }
            if w & word::ABSENT != 0 {
                let found = self.inflight.get(slot.id());
                if let Some(inf) = found {
                    self.complete(&inf)?;
                    continue;
                }
            }
            backoff(&mut spins);
        }
    }

    /// Claims every remote, unclaimed object of `slots` and sends one read per space.
    pub(crate) fn start_fetch(&self, slots: &[&'static Slot]) -> Result<Option<Arc<Inflight>>, ObjError> {
        // Nearly always one space (a container's objects): a short list, not a hash map.
        let mut by_space: Vec<(u16, Claimed)> = Vec::new();
        for &s in slots {
            let w = s.word.load(Ordering::Acquire);
            if w & word::ABSENT == 0 || w & word::BUSY != 0 || w == word::FREE {
                continue;
            }
            if let Ok(seen) = word::claim(&s.word, w) {
                let space = word::remote_space(seen);
                match by_space.iter_mut().find(|(sp, _)| *sp == space) {
                    Some((_, v)) => v.push((s, seen)),
                    None => {
                        let mut v = Vec::with_capacity(slots.len());
                        v.push((s, seen));
                        by_space.push((space, v));
                    }
                }
            }
        }
        if by_space.is_empty() {
            return Ok(None);
        }
        // The fetch is in the in-flight table before its requests go out, its groups locked until they are
        // sent: a thread that finds one of these objects claimed finds the fetch at once and waits on its lock
        // and then its reply, instead of spinning on a claim whose request is still being sent (under CPU
        // contention, for as long as the fetching thread is preempted — often inside the other's scope).
        let inf = Arc::new(Inflight { groups: std::sync::Mutex::new(None) });
        let mut sent = inf.lock();
        for (_, entries) in &by_space {
            self.inflight.insert_all(entries, &inf);
        }
        let mut groups = Vec::with_capacity(by_space.len());
        let mut failed = None;
        for (space, entries) in by_space {
            if failed.is_some() {
                self.unclaim(&entries);
                continue;
            }
            let req = Request::ReadObjects { ds: self.ds(space), ids: entries.iter().map(|(s, _)| s.id()).collect() };
            let bytes: usize = entries.iter().map(|&(_, seen)| word::remote_size(seen)).sum();
            if bytes < LANDING_MIN_BYTES {
                // Small: the copy a landing saves costs less than setting one up.
                match self.store.submit(req) {
                    Ok(pending) => groups.push(Group { space, pending, entries, landing: None }),
                    Err(e) => {
                        self.unclaim(&entries);
                        failed = Some(e);
                    }
                }
                continue;
            }
            let landing = Arc::new(Landing {
                heap: Arc::clone(&self.heap),
                space,
                expected: entries
                    .iter()
                    .map(|&(s, seen)| (s.id(), u32::try_from(word::remote_size(seen)).unwrap_or(u32::MAX)))
                    .collect(),
                state: Mutex::new(LandingState::Open),
            });
            match self.store.submit_into(req, Arc::clone(&landing) as Arc<dyn ObjectSink>) {
                Ok(pending) => groups.push(Group { space, pending, entries, landing: Some(landing) }),
                Err(e) => {
                    self.unclaim(&entries);
                    failed = Some(e);
                }
            }
        }
        *sent = Some(groups);
        drop(sent);
        if let Some(e) = failed {
            // The groups already sent are completed so that their objects do not stay claimed.
            let _ = self.complete(&inf);
            return Err(e.into());
        }
        Ok(Some(inf))
    }

    /// Brings every object of `slots` in and returns once each is local (or was, after the fetch that brought
    /// it): starts one fetch for the remote ones nobody claimed, and also completes the fetches other threads
    /// have in flight for the rest. A container calls this before it opens the scope it reads the objects in,
    /// so that the scope never waits for the network — a thread waiting inside a scope holds up every grace
    /// period of the evacuator (under CPU contention, for as long as it takes the fetching thread to be
    /// scheduled again).
    pub(crate) fn fetch_all(&self, slots: &[&'static Slot]) -> Result<(), ObjError> {
        let own = self.start_fetch(slots)?;
        let mut first_err = None;
        if let Some(inf) = &own {
            if let Err(e) = self.complete(inf) {
                first_err.get_or_insert(e);
            }
        }
        for &s in slots {
            let w = s.word.load(Ordering::Acquire);
            if w & word::ABSENT != 0 && w & word::BUSY != 0 && w != word::FREE {
                if let Some(inf) = self.inflight.get(s.id()) {
                    if let Err(e) = self.complete(&inf) {
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Gives back claims whose request was never sent.
    fn unclaim(&self, entries: &Claimed) {
        for &(s, seen) in entries {
            // Out of the table first: once published, another thread may claim the object and enter its own fetch.
            self.inflight.remove(s.id());
            word::publish(&s.word, seen);
        }
    }

    /// Completes a fetch: waits for its replies and installs the objects. Idempotent; concurrent callers wait
    /// for the first.
    pub(crate) fn complete(&self, inf: &Inflight) -> Result<(), ObjError> {
        let mut guard = inf.lock();
        let Some(groups) = guard.take() else { return Ok(()) };
        let mut first_err = None;
        for Group { space, pending, entries, landing } in groups {
            if let Err(e) = self.install_group(space, pending, &entries, landing.as_deref()) {
                first_err.get_or_insert(e);
            }
            // Only once its objects are published: a thread that finds them busy looks the fetch up here.
            self.inflight.remove_all(&entries);
        }
        drop(guard);
        first_err.map_or(Ok(()), Err)
    }

    /// Waits for one group's reply and installs its objects (publishing the old word of any it cannot);
    /// returns the first error.
    fn install_group(
        &self,
        space: u16,
        pending: Pending,
        entries: &Claimed,
        landing: Option<&Landing>,
    ) -> Result<(), ObjError> {
        let ds = self.ds(space);
        let reply = pending.wait();
        // After the reply: whoever read it is done with the landing.
        let placed = landing.and_then(Landing::close);
        let batch = match (reply, placed, landing) {
            (Ok(Reply::Placed), Some(addrs), Some(landing)) if addrs.len() == entries.len() => {
                for (&(s, _), &a) in entries.iter().zip(&addrs) {
                    // Arrives cold and fresh, as in `install`.
                    s.set_flags(word::CLEAN | word::HAS_REMOTE | (s.flags() & word::SHARED));
                    word::publish(&s.word, word::local(a, word::COLD | word::FRESH));
                }
                let bytes = landing.expected.iter().map(|&(_, l)| l as usize).sum();
                Counters::add(&self.ctr.misses, entries.len() as u64);
                Counters::add_usize(&self.ctr.bytes_in, bytes);
                return Ok(());
            }
            (reply, placed, landing) => {
                // Values received in place but then not delivered (the connection was re-established and the
                // request answered again the ordinary way): their space goes back.
                if let (Some(addrs), Some(landing)) = (placed, landing) {
                    landing.give_back(&addrs);
                }
                reply
            }
        };
        let batch = match batch {
            Ok(Reply::Objects(b)) => b,
            Ok(r) => {
                entries.iter().for_each(|&(s, seen)| word::publish(&s.word, seen));
                return Err(ObjError::Store(farmem_memd::StoreError::Protocol {
                    server: self.store.describe(),
                    msg: format!("expected objects, got {r:?}"),
                }));
            }
            Err(e) => {
                entries.iter().for_each(|&(s, seen)| word::publish(&s.word, seen));
                return Err(e.into());
            }
        };
        let mut first_err = None;
        let (mut installed, mut bytes) = (0u64, 0usize);
        let mut vals = batch.iter();
        for &(s, seen) in entries {
            let size = word::remote_size(seen);
            match vals.next() {
                Some((id, Some(v))) if id == s.id() && v.len() == size => match self.install(s, seen, v) {
                    Ok(()) => {
                        installed += 1;
                        bytes += v.len();
                    }
                    Err(e) => {
                        word::publish(&s.word, seen);
                        first_err.get_or_insert(e);
                    }
                },
                _ => {
                    word::publish(&s.word, seen);
                    first_err.get_or_insert(ObjError::Missing { ds, id: s.id() });
                }
            }
        }
        // Counted once per reply, not per object: each locked add waited for the copy before it to drain.
        Counters::add(&self.ctr.misses, installed);
        Counters::add_usize(&self.ctr.bytes_in, bytes);
        // The values are copied into the heap: the next reply can reuse the buffer.
        drop(vals);
        farmem_memd::client::recycle_reply_buffer(batch.data);
        first_err.map_or(Ok(()), Err)
    }

    fn install(&self, s: &'static Slot, seen: u64, bytes: &[u8]) -> Result<(), ObjError> {
        let space = word::remote_space(seen);
        // Never wait here: a fetch is completed while others (possibly inside scopes) wait for it.
        let addr = self.heap.alloc(bytes.len(), s.id(), space, false).map_err(|_| self.exhausted())?;
        self.heap.mem.write_bytes(addr, bytes);
        // Arrives cold and fresh: the access it was fetched for is its first use, a second one makes it hot.
        s.set_flags(word::CLEAN | word::HAS_REMOTE | (s.flags() & word::SHARED));
        word::publish(&s.word, word::local(addr, word::COLD | word::FRESH));
        Ok(())
    }

    /// Reads an object's bytes without making it local (non-temporal read). `dst` has the object's size.
    pub(crate) fn read_nt(&self, slot: &'static Slot, dst: &mut [u8]) -> Result<(), ObjError> {
        loop {
            {
                let _scope = epoch::DerefScope::new();
                match word::touch(&slot.word, false) {
                    Found::Local(a) => {
                        self.heap.mem.read_bytes(a, dst);
                        return Ok(());
                    }
                    Found::Busy(_) => {}
                    Found::Remote(w) => {
                        drop(_scope);
                        let ds = self.ds(word::remote_space(w));
                        // The owner borrows the pointer for this call, so nobody can change the object: memd's copy
                        // is current even if another thread swaps the object in meanwhile.
                        let v =
                            self.store.read_object(ds, slot.id())?.ok_or(ObjError::Missing { ds, id: slot.id() })?;
                        if v.len() != dst.len() {
                            return Err(ObjError::Missing { ds, id: slot.id() });
                        }
                        dst.copy_from_slice(&v);
                        Counters::add(&self.ctr.misses, 1);
                        Counters::add_usize(&self.ctr.bytes_in, v.len());
                        return Ok(());
                    }
                }
            }
            self.settle(slot)?;
        }
    }

    /// Overwrites an object without making it local (non-temporal write); `&mut` access is the caller's proof
    /// that no reference to it exists.
    pub(crate) fn write_nt(&self, slot: &'static Slot, src: &[u8]) -> Result<(), ObjError> {
        loop {
            let w = self.settle(slot)?;
            if word::is_local(w) {
                let _scope = epoch::DerefScope::new();
                if let Found::Local(a) = word::touch(&slot.word, false) {
                    slot.mark_dirty();
                    self.heap.mem.write_bytes(a, src);
                    return Ok(());
                }
                continue;
            }
            let Ok(seen) = word::claim(&slot.word, w) else { continue };
            let ds = self.ds(word::remote_space(seen));
            let r = self.store.write_object(ds, slot.id(), src);
            word::publish(&slot.word, seen);
            r?;
            Counters::add_usize(&self.ctr.bytes_out, src.len());
            return Ok(());
        }
    }

    /// Moves one object to far memory now (writing it if dirty); `&mut` access is the caller's proof that no
    /// reference to it exists.
    pub(crate) fn evict(&self, slot: &'static Slot) -> Result<(), ObjError> {
        loop {
            let w = self.settle(slot)?;
            if !word::is_local(w) {
                return Ok(());
            }
            let Ok(seen) = word::claim(&slot.word, w) else { continue };
            let a = word::addr(seen);
            let h = self.heap.header(a);
            let remote = word::remote(h.space, h.size);
            if !slot.is_clean() {
                let mut v = vec![0u8; h.size];
                self.heap.mem.read_bytes(a, &mut v);
                if let Err(e) = self.store.write_object(self.ds(h.space), slot.id(), &v) {
                    word::publish(&slot.word, seen);
                    return Err(e.into());
                }
                Counters::add_usize(&self.ctr.bytes_out, h.size);
            }
            word::publish(&slot.word, remote);
            self.heap.sub_live(a, h.size);
            return Ok(());
        }
    }

    pub(crate) fn write_back(&self, slots: &[&'static Slot]) -> Result<usize, ObjError> {
        let mut by_space: HashMap<u16, (ObjBatch, Claimed)> = HashMap::new();
        let mut seen_ids = std::collections::HashSet::new();
        for &s in slots {
            // An object listed twice is written once (the second claim would wait for the first).
            if !seen_ids.insert(s.id()) {
                continue;
            }
            let seen = loop {
                let w = self.settle(s)?;
                if !word::is_local(w) || s.is_clean() {
                    break None;
                }
                if let Ok(seen) = word::claim(&s.word, w) {
                    break Some(seen);
                }
            };
            let Some(seen) = seen else { continue };
            let a = word::addr(seen);
            let h = self.heap.header(a);
            let (batch, entries) = by_space.entry(h.space).or_insert_with(|| (ObjBatch::new(), Vec::new()));
            push_object(&self.heap, batch, s.id(), a, h.size);
            entries.push((s, seen));
        }
        let mut sent = Vec::new();
        for (space, (batch, entries)) in by_space {
            let bytes = batch.data.len();
            let p = self.store.submit(Request::WriteObjects { ds: self.ds(space), batch });
            sent.push((p, entries, bytes));
        }
        let mut n = 0;
        let mut first_err = None;
        for (p, entries, bytes) in sent {
            let ok = match p.and_then(Pending::wait) {
                Ok(_) => true,
                Err(e) => {
                    first_err.get_or_insert(e);
                    false
                }
            };
            for (s, seen) in &entries {
                if ok {
                    s.set_flags(s.flags() | word::CLEAN | word::HAS_REMOTE);
                }
                word::publish(&s.word, *seen);
            }
            if ok {
                n += entries.len();
                Counters::add_usize(&self.ctr.bytes_out, bytes);
            }
        }
        first_err.map_or(Ok(n), |e| Err(e.into()))
    }

    /// Frees an object: its local copy at once, its remote copy through a batched delete.
    pub(crate) fn free(&self, slot: &'static Slot) {
        let mut spins = 0;
        let w = loop {
            match word::take_for_free(&slot.word) {
                Ok(w) => break w,
                Err(w) => {
                    if w & word::ABSENT != 0 {
                        let found = self.inflight.get(slot.id());
                        if let Some(inf) = found {
                            let _ = self.complete(&inf);
                            continue;
                        }
                    }
                    backoff(&mut spins);
                }
            }
        };
        Counters::add(&self.ctr.frees, 1);
        let remote_space = if word::is_local(w) {
            let a = word::addr(w);
            let h = self.heap.header(a);
            self.heap.sub_live(a, h.size);
            (slot.flags() & word::HAS_REMOTE != 0).then_some(h.space)
        } else {
            Some(word::remote_space(w))
        };
        match remote_space {
            None => slots::release([slot.id()]),
            Some(space) => {
                let full = {
                    let mut d = self.deletes.lock();
                    d.push((space, slot.id()));
                    d.len() >= DELETE_BATCH
                };
                if full {
                    if let Err(e) = self.flush_deletes() {
                        crate::evac::warn_limited(&format!("deleting freed far objects failed: {e}"));
                    }
                }
            }
        }
    }

    /// Sends queued deletes; their slots are reused only once memd confirms.
    pub(crate) fn flush_deletes(&self) -> Result<(), ObjError> {
        let d = std::mem::take(&mut *self.deletes.lock());
        if d.is_empty() {
            return Ok(());
        }
        let mut by_space: HashMap<u16, Vec<u64>> = HashMap::new();
        for (s, id) in d {
            by_space.entry(s).or_default().push(id);
        }
        let mut first_err = None;
        for (space, ids) in by_space {
            match self.store.delete_objects(self.ds(space), &ids) {
                Ok(()) => {
                    Counters::add_usize(&self.ctr.remote_deletes, ids.len());
                    slots::release(ids);
                }
                // The slots are not reused: a delete that may still arrive must not remove a newer object.
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), |e| Err(e.into()))
    }

    /// Whether deletes are queued.
    pub(crate) fn deletes_pending(&self) -> bool {
        !self.deletes.lock().is_empty()
    }
}

/// Appends the object at `a` to `batch` without an intermediate copy.
pub(crate) fn push_object(heap: &Heap, batch: &mut ObjBatch, id: u64, a: u64, size: usize) {
    let at = batch.data.len();
    batch.data.resize(at + size, 0);
    heap.mem.read_bytes(a, &mut batch.data[at..]);
    batch.ids.push(id);
    batch.lens.push(u32::try_from(size).unwrap_or(u32::MAX));
}
