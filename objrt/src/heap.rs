//! The local object heap: log-structured regions, bump allocation per lane, and the budget.
//!
//! All of a runtime's local memory is one allocation ([`crate::raw::HeapMem`]) cut into equal regions (1 MiB by
//! default). Threads allocate by bumping a pointer in the region of their *lane* (a thread picks a lane once,
//! round robin; with a few lanes per core that is per-thread bump allocation without thread-exit hooks). A full
//! region is *sealed*: only sealed regions are evacuated, so the evacuator never races an allocation in the
//! region it walks. Every object starts with an 8-byte header — slot id, size and space — which is what lets the
//! evacuator walk a region and find each object's pointer word. Payloads are 16-byte aligned and the header
//! takes the 8 bytes just before one, so an object of up to 8 bytes takes 16 bytes of the heap (as many as a
//! `malloc` chunk's payload), one of 16 takes 32, and the first header of a region sits 8 bytes into it. Small
//! objects packed twice as densely is what a dereference touches less of: see [`crate::ptr::FarBox::deref`].
//!
//! The budget is a number of regions. The evacuator is woken when free regions fall to the low watermark (4% of
//! the budget by default) and runs until they reach the high one (6%); at the hard watermark (2%) threads
//! outside any scope wait — before allocating, and (containers) before starting a fetch. Free regions are cache
//! left unused, so the defaults are lower than AIFM's 12/22/3%: the evacuator frees its victims region by
//! region as it goes, which is what lets it work with little headroom. Threads inside a scope never wait for the evacuator — it may be waiting for *them* to
//! leave their scope — and dip into a reserve of regions above the budget instead (counted as overflow). The
//! allocation itself is zeroed once and never returned to the allocator while the runtime lives.

use crate::raw::HeapMem;
use crate::word;
use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{
    AtomicBool, AtomicU64, AtomicUsize,
    Ordering::{Acquire, Relaxed, Release},
};
use std::time::{Duration, Instant};

/// Bytes of the header before each object.
pub(crate) const HEADER: usize = 8;
/// Offset of the first header in a region: payloads (right after their headers) are 16-aligned.
const FIRST: usize = 8;
/// Bits of the slot id in a header (ids are below [`crate::slots::MAX_SLOTS`]).
const SLOT_BITS: u32 = 28;
/// Bits of `size - 1` (sizes are 1 ..= [`word::MAX_SIZE`]).
const SIZE_BITS: u32 = 20;

/// What the evacuator learns from an object's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub slot: u64,
    pub size: usize,
    pub space: u16,
}

/// Bytes an object of `size` occupies with its header: from its header to the next object's header, a multiple
/// of 16 so that the next payload is 16-aligned too.
pub(crate) fn footprint(size: usize) -> usize {
    (HEADER + size).div_ceil(16) * 16
}

impl Header {
    /// The header as one little-endian word: slot id in bits 0..28, `size - 1` in bits 28..48, space above.
    fn encode(self) -> u64 {
        debug_assert!(self.slot < crate::slots::MAX_SLOTS);
        debug_assert!((1..=word::MAX_SIZE).contains(&self.size));
        let size = (self.size as u64).wrapping_sub(1) & ((1 << SIZE_BITS) - 1);
        self.slot | size << SLOT_BITS | u64::from(self.space) << (SLOT_BITS + SIZE_BITS)
    }

    fn decode(w: u64) -> Header {
        let size = (w >> SLOT_BITS) & ((1 << SIZE_BITS) - 1);
        Header {
            slot: w & ((1 << SLOT_BITS) - 1),
            // Twenty bits: lossless on every target with a 32-bit or wider usize.
            size: usize::try_from(size).map_or(word::MAX_SIZE, |s| s + 1),
            space: u16::try_from(w >> (SLOT_BITS + SIZE_BITS)).unwrap_or(u16::MAX),
        }
    }
}

#[derive(Debug, Default)]
struct RegionMeta {
    /// Bytes of objects that are live in the region (approximate between updates).
    live: AtomicUsize,
    /// Bytes used, fixed when the region is sealed.
    end: AtomicUsize,
    /// When the region was sealed (a sequence number): the evacuator's hand goes oldest first.
    sealed_at: AtomicU64,
}

#[derive(Debug, Default)]
struct Lane {
    region: Option<u32>,
    off: usize,
}

/// Watermarks, in free regions of the budget.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Marks {
    pub hard: usize,
    pub low: usize,
    pub high: usize,
}

/// Why an allocation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeapFull {
    /// Every region, the reserve included, is in use.
    Exhausted,
}

#[derive(Debug)]
pub(crate) struct Heap {
    pub mem: HeapMem,
    pub region_size: usize,
    pub budget_regions: usize,
    pub total_regions: usize,
    pub marks: Marks,
    regions: Box<[RegionMeta]>,
    free: Mutex<Vec<u32>>,
    free_count: AtomicUsize,
    sealed: Mutex<Vec<u32>>,
    seal_seq: AtomicU64,
    lanes: Box<[Mutex<Lane>]>,
    evac_lane: Mutex<Lane>,
    space_mx: Mutex<()>,
    space_cv: Condvar,
    /// The evacuator's wake-up: `true` asks it to stop.
    pub evac_mx: Mutex<bool>,
    pub evac_cv: Condvar,
    hard: AtomicBool,
    /// Whether this heap's hard watermark holds back scope entry process-wide (while evacuator threads run).
    pub global_pressure: AtomicBool,
    pub peak_regions: AtomicUsize,
    pub overflow_takes: AtomicU64,
    pub alloc_wait_ns: AtomicU64,
}

fn lane_index(n: usize) -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: usize = NEXT.fetch_add(1, Relaxed);
    }
    MINE.with(|m| *m % n)
}

impl Heap {
    /// A heap of `budget_regions` regions of `region_size` bytes plus `reserve` regions above the budget.
    pub(crate) fn new(
        region_size: usize,
        budget_regions: usize,
        reserve: usize,
        lanes: usize,
        marks: Marks,
    ) -> Option<Heap> {
        let total = budget_regions + reserve;
        let mem = HeapMem::new(region_size.checked_mul(total)?, region_size.min(1 << 21))?;
        if mem.base() + mem.len() as u64 >= word::ADDR_LIMIT {
            return None;
        }
        let total_u32 = u32::try_from(total).ok()?;
        Some(Heap {
            mem,
            region_size,
            budget_regions,
            total_regions: total,
            marks,
            regions: (0..total).map(|_| RegionMeta::default()).collect(),
            // Pop from the end: hand out low regions first.
            free: Mutex::new((0..total_u32).rev().collect()),
            free_count: AtomicUsize::new(total),
            sealed: Mutex::new(Vec::new()),
            seal_seq: AtomicU64::new(0),
            lanes: (0..lanes.max(1)).map(|_| Mutex::new(Lane::default())).collect(),
            evac_lane: Mutex::new(Lane::default()),
            space_mx: Mutex::new(()),
            space_cv: Condvar::new(),
            evac_mx: Mutex::new(false),
            evac_cv: Condvar::new(),
            hard: AtomicBool::new(false),
            global_pressure: AtomicBool::new(false),
            peak_regions: AtomicUsize::new(0),
            overflow_takes: AtomicU64::new(0),
            alloc_wait_ns: AtomicU64::new(0),
        })
    }

    /// Regions in use (allocated to lanes, sealed, or being evacuated).
    pub(crate) fn in_use(&self) -> usize {
        self.total_regions - self.free_count.load(Relaxed)
    }

    /// Free regions counted against the budget (0 when the reserve is in use).
    pub(crate) fn free_in_budget(&self) -> usize {
        self.budget_regions.saturating_sub(self.in_use())
    }

    /// Largest object the heap holds.
    pub(crate) fn max_object(&self) -> usize {
        (self.region_size - FIRST - HEADER).min(word::MAX_SIZE)
    }

    fn region_of(&self, addr: u64) -> usize {
        usize::try_from((addr - self.mem.base()) / self.region_size as u64).unwrap_or(usize::MAX)
    }

    fn region_base(&self, r: u32) -> u64 {
        self.mem.base() + u64::from(r) * self.region_size as u64
    }

    /// Records that `bytes` of the object at payload address `addr` are no longer live.
    pub(crate) fn sub_live(&self, addr: u64, size: usize) {
        if let Some(m) = self.regions.get(self.region_of(addr)) {
            m.live.fetch_sub(footprint(size), Release);
        }
    }

    /// Live bytes of region `r` (zero: every object in it was freed or moved out, and its memory may be reused).
    pub(crate) fn region_live(&self, r: u32) -> usize {
        self.regions[r as usize].live.load(Acquire)
    }

    /// Allocates an object of `size` bytes for slot `slot` in space `space` and writes its header; returns the
    /// payload address. `may_wait`: the caller is outside every scope and may wait at the hard watermark.
    pub(crate) fn alloc(&self, size: usize, slot: u64, space: u16, may_wait: bool) -> Result<u64, HeapFull> {
        let need = footprint(size);
        debug_assert!(need <= self.region_size);
        let lane = &self.lanes[lane_index(self.lanes.len())];
        loop {
            {
                let mut l = lane.lock();
                if let Some(at) = self.bump(&mut l, need) {
                    return Ok(self.place(at, Header { slot, size, space }));
                }
            }
            let r = self.take_region(may_wait)?;
            let mut l = lane.lock();
            if let Some(at) = self.bump(&mut l, need) {
                // Another thread of this lane installed a region meanwhile.
                drop(l);
                self.give_back(r);
                return Ok(self.place(at, Header { slot, size, space }));
            }
            self.seal_lane(&mut l);
            l.region = Some(r);
            l.off = FIRST;
        }
    }

    /// Allocates the objects `objs` — (slot, size) each, in `space` — in order, never waiting: what
    /// [`Heap::alloc`] would do one by one, but with the lane's lock taken and the live bytes counted once per
    /// region instead of once per object (a fetch lands a window of objects at once, and each locked
    /// instruction waited for the stores before it). On `Exhausted` nothing stays allocated.
    pub(crate) fn alloc_many(&self, objs: &[(u64, u32)], space: u16) -> Result<Vec<u64>, HeapFull> {
        let lane = &self.lanes[lane_index(self.lanes.len())];
        let mut out = Vec::with_capacity(objs.len());
        while out.len() < objs.len() {
            {
                let mut l = lane.lock();
                if let Some(r) = l.region {
                    let base = self.region_base(r);
                    let mut added = 0;
                    for &(slot, size) in &objs[out.len()..] {
                        let need = footprint(size as usize);
                        if l.off + need > self.region_size {
                            break;
                        }
                        // Headers under the lane's lock, as `alloc` writes them: the region cannot be sealed
                        // (and walked) before they are there.
                        out.push(self.place(base + l.off as u64, Header { slot, size: size as usize, space }));
                        l.off += need;
                        added += need;
                    }
                    if added > 0 {
                        self.regions[r as usize].live.fetch_add(added, Relaxed);
                    }
                }
            }
            if let Some(&(slot, size)) = objs.get(out.len()) {
                // The lane's region is full (or it has none): this one the ordinary way, which installs a new one.
                match self.alloc(size as usize, slot, space, false) {
                    Ok(a) => out.push(a),
                    Err(e) => {
                        for (&a, &(_, size)) in out.iter().zip(objs) {
                            self.sub_live(a, size as usize);
                        }
                        return Err(e);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Allocation for the evacuator's compaction: never waits, and fails rather than go below the hard
    /// watermark (the caller then evicts the object instead of keeping it).
    pub(crate) fn evac_alloc(&self, h: Header) -> Option<u64> {
        let need = footprint(h.size);
        let mut l = self.evac_lane.lock();
        if let Some(at) = self.bump(&mut l, need) {
            return Some(self.place(at, h));
        }
        if self.free_in_budget() <= self.marks.hard {
            return None;
        }
        let r = self.pop_free()?;
        self.seal_lane(&mut l);
        l.region = Some(r);
        l.off = FIRST;
        self.bump(&mut l, need).map(|at| self.place(at, h))
    }

    fn bump(&self, l: &mut Lane, need: usize) -> Option<u64> {
        let r = l.region?;
        if l.off + need > self.region_size {
            return None;
        }
        let at = self.region_base(r) + l.off as u64;
        l.off += need;
        self.regions[r as usize].live.fetch_add(need, Relaxed);
        Some(at)
    }

    /// Writes the header at `at` and returns the payload address (16-aligned: `at` is 8 past a multiple of 16).
    fn place(&self, at: u64, h: Header) -> u64 {
        debug_assert!(at % 16 == 8);
        self.mem.write_bytes(at, &h.encode().to_le_bytes());
        at + HEADER as u64
    }

    /// Reads the header of the object whose payload is at `addr`.
    pub(crate) fn header(&self, addr: u64) -> Header {
        let mut hdr = [0u8; HEADER];
        self.mem.read_bytes(addr - HEADER as u64, &mut hdr);
        Header::decode(u64::from_le_bytes(hdr))
    }

    fn seal_lane(&self, l: &mut Lane) {
        if let Some(r) = l.region.take() {
            let m = &self.regions[r as usize];
            m.end.store(l.off, Relaxed);
            m.sealed_at.store(self.seal_seq.fetch_add(1, Relaxed), Relaxed);
            self.sealed.lock().push(r);
        }
    }

    /// Seals every lane's current region (so that the evacuator may take them): used by explicit full
    /// evacuations and at shutdown-time checks.
    pub(crate) fn seal_all(&self) {
        for lane in self.lanes.iter().chain(std::iter::once(&self.evac_lane)) {
            self.seal_lane(&mut lane.lock());
        }
    }

    fn pop_free(&self) -> Option<u32> {
        let r = self.free.lock().pop()?;
        let left = self.free_count.fetch_sub(1, Relaxed) - 1;
        let used = self.total_regions - left;
        self.peak_regions.fetch_max(used, Relaxed);
        if used > self.budget_regions {
            self.overflow_takes.fetch_add(1, Relaxed);
        }
        self.regions[r as usize].live.store(0, Relaxed);
        self.regions[r as usize].end.store(0, Relaxed);
        self.after_change();
        Some(r)
    }

    fn give_back(&self, r: u32) {
        self.free.lock().push(r);
        self.free_count.fetch_add(1, Relaxed);
        self.after_change();
        let _g = self.space_mx.lock();
        self.space_cv.notify_all();
    }

    /// Returns an evacuated region to the free pool.
    pub(crate) fn release_region(&self, r: u32) {
        self.give_back(r);
    }

    fn take_region(&self, may_wait: bool) -> Result<u32, HeapFull> {
        let start = Instant::now();
        let mut waited = false;
        let res = loop {
            let at_hard = self.free_in_budget() <= self.marks.hard;
            // Outside a scope, wait at the hard watermark — but not forever: an evacuator that cannot make
            // progress (memd full) must slow the program down, never hang it.
            if may_wait && at_hard && start.elapsed() < Duration::from_secs(1) {
                self.wake_evacuator();
                waited = true;
                let mut g = self.space_mx.lock();
                if self.free_in_budget() <= self.marks.hard {
                    self.space_cv.wait_for(&mut g, Duration::from_millis(5));
                }
                continue;
            }
            if let Some(r) = self.pop_free() {
                break Ok(r);
            }
            // Nothing left at all, reserve included.
            self.wake_evacuator();
            if !may_wait || start.elapsed() > Duration::from_secs(5) {
                break Err(HeapFull::Exhausted);
            }
            waited = true;
            let mut g = self.space_mx.lock();
            self.space_cv.wait_for(&mut g, Duration::from_millis(5));
        };
        if waited {
            let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.alloc_wait_ns.fetch_add(ns, Relaxed);
        }
        res
    }

    /// Waits (at most a second) while free memory is at the hard watermark, for a caller outside every scope
    /// that is about to bring objects in: fetches place objects without waiting (they may be completed on behalf
    /// of threads inside scopes), so a thread that can wait does it before it starts one, and the heap stays
    /// within its budget rather than dipping into the reserve.
    ///
    /// While it waits the caller runs `help` (an evacuation cycle, when none is running) and sleeps only when
    /// that did nothing: on a machine whose cores are busy with other work, one evacuator thread gets one
    /// thread's share of the CPU, and mutators that only sleep at the hard watermark leave it at that.
    pub(crate) fn wait_for_room(&self, mut help: impl FnMut() -> bool) {
        if self.free_in_budget() > self.marks.hard {
            return;
        }
        let start = Instant::now();
        while self.free_in_budget() <= self.marks.hard && start.elapsed() < Duration::from_secs(1) {
            if help() {
                continue;
            }
            self.wake_evacuator();
            let mut g = self.space_mx.lock();
            if self.free_in_budget() <= self.marks.hard {
                self.space_cv.wait_for(&mut g, Duration::from_millis(5));
            }
        }
        let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.alloc_wait_ns.fetch_add(ns, Relaxed);
    }

    fn after_change(&self) {
        let free = self.free_in_budget();
        let hard = free <= self.marks.hard;
        if self.global_pressure.load(Relaxed) && self.hard.swap(hard, Relaxed) != hard {
            if hard {
                crate::epoch::HARD_PRESSURE.fetch_add(1, std::sync::atomic::Ordering::Release);
            } else {
                crate::epoch::HARD_PRESSURE.fetch_sub(1, std::sync::atomic::Ordering::Release);
                crate::epoch::pressure_relieved();
            }
        }
        if free <= self.marks.low {
            self.wake_evacuator();
        }
    }

    /// Wakes the evacuator thread (if any).
    pub(crate) fn wake_evacuator(&self) {
        self.evac_cv.notify_all();
    }

    /// Takes up to `max` sealed regions for evacuation: first the nearly empty ones (live at most a quarter of
    /// a region: cheap to reclaim, whatever their age), then the oldest. Oldest first is the CLOCK hand: every
    /// object in a region was placed there (allocated, fetched, or moved by the previous pass) when the region
    /// filled, so the hand reaches objects in the order they were placed and an object's `COLD` bit tells
    /// whether it was used since — FIFO with second chances, which approximates LRU. (Emptiest first among full
    /// regions would pick the regions filled last: the objects fetched most recently.)
    pub(crate) fn take_victims(&self, max: usize) -> Vec<u32> {
        let mut sealed = self.sealed.lock();
        let cheap = self.region_size / 4;
        let key = |r: u32| {
            let m = &self.regions[r as usize];
            let live = m.live.load(Relaxed);
            if live <= cheap {
                (false, live as u64)
            } else {
                (true, m.sealed_at.load(Relaxed))
            }
        };
        // Best victims last, so that they split off the end.
        sealed.sort_by_key(|&r| std::cmp::Reverse(key(r)));
        let n = max.min(sealed.len());
        let at = sealed.len() - n;
        let mut v = sealed.split_off(at);
        v.reverse();
        v
    }

    /// Puts a region that could not be fully evacuated back among the sealed ones.
    pub(crate) fn return_victim(&self, r: u32) {
        self.sealed.lock().push(r);
    }

    /// Number of sealed regions.
    pub(crate) fn sealed_count(&self) -> usize {
        self.sealed.lock().len()
    }

    /// Every object of sealed region `r`, as (payload address, header).
    pub(crate) fn objects(&self, r: u32) -> Vec<(u64, Header)> {
        let end = self.regions[r as usize].end.load(Relaxed);
        let base = self.region_base(r);
        let mut out = Vec::new();
        let mut off = FIRST;
        while off + HEADER <= end {
            let payload = base + (off + HEADER) as u64;
            let h = self.header(payload);
            let next = off + footprint(h.size);
            if next > end {
                debug_assert!(false, "an object runs past its region's end");
                break;
            }
            out.push((payload, h));
            off = next;
        }
        out
    }

    /// Clears this heap's share of the process-wide hard-pressure count (at runtime shutdown).
    pub(crate) fn leave_pressure(&self) {
        self.global_pressure.store(false, Relaxed);
        if self.hard.swap(false, Relaxed) {
            crate::epoch::HARD_PRESSURE.fetch_sub(1, std::sync::atomic::Ordering::Release);
            crate::epoch::pressure_relieved();
        }
    }
}

#[cfg(all(test, not(farmem_loom)))]
mod tests {
    use super::*;

    fn small() -> Heap {
        Heap::new(4096, 16, 4, 2, Marks { hard: 1, low: 2, high: 4 }).unwrap()
    }

    #[test]
    fn bump_allocation_and_walk() {
        let h = small();
        let a = h.alloc(24, 7, 1, true).unwrap();
        let b = h.alloc(1, 8, 2, true).unwrap();
        assert_eq!(a % 16, 0);
        assert_eq!(b - a, footprint(24) as u64, "objects are laid out back to back");
        assert_eq!(h.header(a), Header { slot: 7, size: 24, space: 1 });
        assert_eq!(h.header(b), Header { slot: 8, size: 1, space: 2 });
        assert_eq!((a % 16, footprint(1), footprint(8), footprint(9), footprint(24)), (0, 16, 16, 32, 32));
        assert_eq!(h.in_use(), 1);
        h.seal_all();
        let v = h.take_victims(8);
        assert_eq!(v.len(), 1);
        let objs = h.objects(v[0]);
        assert_eq!(objs.iter().map(|o| o.1.slot).collect::<Vec<_>>(), vec![7, 8]);
        h.release_region(v[0]);
        assert_eq!(h.in_use(), 0);
    }

    #[test]
    fn alloc_many_fills_regions_in_order_and_gives_back_on_failure() {
        let h = small();
        // A region holds `per` objects of 1000 bytes: 7 objects span several regions.
        let per = (h.region_size - FIRST) / footprint(1000);
        let objs: Vec<(u64, u32)> = (0..7).map(|i| (100 + i, 1000)).collect();
        let a = h.alloc_many(&objs, 3).unwrap();
        assert_eq!(a.len(), 7);
        for (k, (&addr, &(slot, size))) in a.iter().zip(&objs).enumerate() {
            assert_eq!(h.header(addr), Header { slot, size: size as usize, space: 3 }, "object {k}");
            if k > 0 && h.region_of(addr) == h.region_of(a[k - 1]) {
                assert_eq!(addr - a[k - 1], footprint(1000) as u64, "back to back within a region");
            }
        }
        assert_eq!(h.in_use(), 7usize.div_ceil(per));
        let live_bytes = || (0..u32::try_from(h.total_regions).unwrap()).map(|r| h.region_live(r)).sum::<usize>();
        let live = live_bytes();
        assert_eq!(live, 7 * footprint(1000));
        // Too many for what is left: nothing of this batch stays live.
        let lots: Vec<(u64, u32)> = (0..1000).map(|i| (i, 2024)).collect();
        assert_eq!(h.alloc_many(&lots, 0), Err(HeapFull::Exhausted));
        assert_eq!(live_bytes(), live, "the failed batch gave its space back");
        h.leave_pressure();
    }

    #[test]
    fn headers_roundtrip_at_their_limits() {
        for h in [
            Header { slot: 0, size: 1, space: 0 },
            Header { slot: (1 << SLOT_BITS) - 1, size: word::MAX_SIZE, space: u16::MAX },
            Header { slot: 12345, size: 4096, space: 7 },
        ] {
            assert_eq!(Header::decode(h.encode()), h);
        }
        assert_eq!(crate::slots::MAX_SLOTS, 1 << SLOT_BITS, "every slot id fits a header");
    }

    #[test]
    fn budget_and_reserve_are_enforced() {
        let h = small();
        // Fill: each region holds (4096 - 8) / footprint(2024) = 2 objects.
        let mut n = 0;
        while h.alloc(2024, n, 0, false).is_ok() {
            n += 1;
            assert!(n < 1000);
        }
        assert_eq!(n, 2 * 20, "budget plus reserve, and not one object more");
        assert_eq!(h.in_use(), 20);
        assert!(h.overflow_takes.load(Relaxed) >= 4);
        assert_eq!(h.alloc(16, 0, 0, false), Err(HeapFull::Exhausted));
        h.leave_pressure();
    }

    #[test]
    fn victims_are_nearly_empty_regions_then_the_oldest() {
        let h = small();
        let addrs: Vec<u64> = (0..8).map(|i| h.alloc(2024, i, 0, true).unwrap()).collect();
        h.seal_all();
        let first = |v: &[u32]| h.objects(v[0])[0].0;
        // Half of the third region is gone: still not cheap, so the oldest region goes first.
        h.sub_live(addrs[5], 2024);
        let v = h.take_victims(1);
        assert_eq!(first(&v), addrs[0], "the oldest region is the CLOCK hand's next");
        h.return_victim(v[0]);
        // All of the third region is gone: it is taken first, whatever its age.
        h.sub_live(addrs[4], 2024);
        let v = h.take_victims(2);
        assert_eq!(first(&v), addrs[4]);
        assert_eq!(first(&v[1..]), addrs[0]);
        h.return_victim(v[0]);
        h.return_victim(v[1]);
        // A region returned by a cycle keeps its age.
        assert_eq!(h.take_victims(4).iter().map(|&r| h.objects(r)[0].0).collect::<Vec<_>>(), {
            vec![addrs[4], addrs[0], addrs[2], addrs[6]]
        });
    }

    #[test]
    fn live_bytes_pick_emptiest_victims() {
        let h = small();
        let mut addrs = Vec::new();
        for i in 0..6 {
            addrs.push(h.alloc(2024, i, 0, true).unwrap());
        }
        h.seal_all();
        // Free both objects of the second region.
        h.sub_live(addrs[2], 2024);
        h.sub_live(addrs[3], 2024);
        let v = h.take_victims(1);
        assert_eq!(h.objects(v[0]).iter().map(|o| o.0).collect::<Vec<_>>(), vec![addrs[2], addrs[3]]);
    }
}
