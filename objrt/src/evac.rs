//! The pauseless evacuator.
//!
//! A cycle takes the oldest sealed regions as victims (nearly empty ones first: they are cheap) and, for every
//! object still in them:
//! 1. **mark** it (`local → MARKED`, [`word::mark`]);
//! 2. waits one **grace period** ([`crate::epoch::Domain::synchronize`]): afterwards no scope that could hold
//!    a reference from before the mark is still open, and any later dereference found the mark and cancelled it;
//! 3. **takes** it (`MARKED → BUSY`, [`word::begin_move`]) — this fails exactly when a mutator touched or freed
//!    it, and then the object simply stays where it is;
//! 4. moves it: a *hot* object (CLOCK bit clear: used since it was placed) is copied into the evacuator's own
//!    region and gets its `COLD` bit set (second chance); a *cold clean* one is dropped (memd has it); a *cold
//!    dirty* one is written to memd in batches — one `WriteObjects` per space and per `writeback_batch` bytes
//!    (at most a sixteenth of the budget), up to a quarter of the budget in flight — and becomes remote when its
//!    write is confirmed.
//!
//! A victim region whose live bytes reach zero goes back to the free pool; otherwise (an object was cancelled,
//! or is still being published by its allocator) it returns to the sealed set and is retried later.
//!
//! Mutators never wait for a cycle: only a thread that touches an object while it is `BUSY` (being copied or
//! written back) waits, for that object. To guarantee progress, the bytes kept by compaction in one cycle are
//! capped at the victims' live bytes less the regions the cycle was asked for (at most a third of the victims),
//! and nothing is kept when free memory is at the hard watermark.

use crate::heap::Header;
use crate::runtime::{push_object, RtInner};
use crate::slots::{self, Slot};
use crate::stats::Counters;
use crate::word;
use farmem_memd::{ObjBatch, Pending, Request};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// Logs a warning at most once a second (process-wide), then says how many were suppressed meanwhile: a
/// failing memd must not flood the log from a loop that retries every few milliseconds.
pub(crate) fn warn_limited(msg: &str) {
    static LAST: parking_lot::Mutex<Option<std::time::Instant>> = parking_lot::Mutex::new(None);
    static SUPPRESSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut last = LAST.lock();
    if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
        SUPPRESSED.fetch_add(1, Relaxed);
        return;
    }
    *last = Some(std::time::Instant::now());
    drop(last);
    match SUPPRESSED.swap(0, Relaxed) {
        0 => tracing::warn!("farmem: {msg}"),
        n => tracing::warn!("farmem: {msg} ({n} similar messages suppressed)"),
    }
}

/// Body of an evacuator thread.
pub(crate) fn run(rt: &RtInner) {
    farmem_memd::internal::mark_thread();
    let mut stalled = false;
    loop {
        {
            let mut stop = rt.heap.evac_mx.lock();
            if *stop {
                return;
            }
            // Sleep unless there is work — and after a cycle that could not reach the target (memd full, every
            // object in use), sleep anyway rather than spin.
            if stalled || rt.heap.free_in_budget() > rt.heap.marks.low {
                rt.heap.evac_cv.wait_for(&mut stop, Duration::from_millis(10));
            }
            if *stop {
                return;
            }
        }
        stalled = false;
        if rt.heap.free_in_budget() <= rt.heap.marks.low {
            evacuate_until(rt, rt.heap.marks.high, false);
            stalled = rt.heap.free_in_budget() < rt.heap.marks.high;
        }
        if rt.deletes_pending() {
            if let Err(e) = rt.flush_deletes() {
                warn_limited(&format!("deleting freed far objects failed: {e}"));
            }
        }
    }
}

/// Runs cycles until `target` regions of the budget are free or a cycle makes no progress. `seal`: also
/// evacuate the regions lanes are filling (explicit calls, where the caller wants memory back now).
pub(crate) fn evacuate_until(rt: &RtInner, target: usize, seal: bool) {
    let mut idle = 0;
    while rt.heap.free_in_budget() < target && idle < 2 {
        let want = (target - rt.heap.free_in_budget()).max(1);
        if cycle(rt, want, true) == 0 {
            idle += 1;
            if seal || rt.heap.free_in_budget() <= rt.heap.marks.hard {
                rt.heap.seal_all();
            }
        } else {
            idle = 0;
        }
    }
}

/// A mutator outside every scope, waiting at the hard watermark, runs one cycle towards the low watermark if
/// no cycle is running. Returns whether it freed anything (if not, the caller sleeps until woken).
pub(crate) fn help(rt: &RtInner) -> bool {
    if rt.evac_lock.is_locked() {
        return false;
    }
    let want = rt.heap.marks.low.saturating_sub(rt.heap.free_in_budget()).max(1);
    cycle(rt, want, true) > 0
}

/// Moves every object nobody holds to far memory.
pub(crate) fn evacuate_all(rt: &RtInner) {
    rt.heap.seal_all();
    let mut idle = 0;
    while rt.heap.sealed_count() > 0 && idle < 3 {
        if cycle(rt, usize::MAX, false) == 0 {
            idle += 1;
        }
    }
}

struct Marked {
    slot: &'static Slot,
    word: u64,
    addr: u64,
    h: Header,
    /// Index of the object's region in the cycle's victims.
    victim: usize,
}

/// Victims a cycle that wants `want` regions back takes: three times that, so that up to two thirds of what it
/// walks can be kept (see [`cycle`]) — a CLOCK hand that must evict whatever it meets when too much of it is
/// hot would evict recently used objects.
fn victims_for(want: usize) -> usize {
    want.saturating_mul(3).clamp(1, 64)
}

/// One cycle over victim regions (the oldest sealed ones, [`crate::heap::Heap::take_victims`]), aiming to free
/// `want` of them. Returns the number of regions freed.
///
/// Hot objects (used since the hand last passed) are kept — moved to the evacuator's region with `COLD` set —
/// up to the victims' live bytes less `want` regions (less a third of the victims, if fewer than `3 × want` were
/// sealed), so that a cycle gives back what it was asked for even when everything it walks is hot; cold ones
/// leave. A victim is released as soon as its last object is out (clean objects leave at once; dirty ones when
/// their write-back is confirmed), so the regions the kept objects move into are paid back during the cycle,
/// not at its end.
pub(crate) fn cycle(rt: &RtInner, want: usize, keep_hot: bool) -> usize {
    let _one_at_a_time = rt.evac_lock.lock();
    let heap = &rt.heap;
    let victims = heap.take_victims(victims_for(want));
    if victims.is_empty() {
        return 0;
    }
    Counters::add(&rt.ctr.evac_cycles, 1);

    // 1. Mark.
    let mut marked = Vec::new();
    let mut victim_live = 0usize;
    for (vi, &r) in victims.iter().enumerate() {
        for (addr, h) in heap.objects(r) {
            let Some(slot) = slots::get(h.slot) else { continue };
            if let Some(w) = word::mark(&slot.word, addr) {
                victim_live += crate::heap::footprint(h.size);
                marked.push(Marked { slot, word: w, addr, h, victim: vi });
            }
        }
    }

    // 2. Grace period.
    let grace = std::time::Instant::now();
    crate::epoch::domain().synchronize();
    Counters::add(&rt.ctr.grace_wait_ns, u64::try_from(grace.elapsed().as_nanos()).unwrap_or(u64::MAX));

    // 3 and 4. Take and move.
    // Give back `want` regions, or a third of the victims when fewer were sealed.
    let give_back = want.min(victims.len().div_ceil(3));
    let mut keep_budget =
        if keep_hot { victim_live.saturating_sub(give_back.saturating_mul(heap.region_size)) } else { 0 };
    let mut writer = Writer::new(rt);
    let mut released = vec![false; victims.len()];
    let mut freed = 0;
    let mut release_if_empty = |vi: usize, released: &mut [bool]| {
        if !released[vi] && heap.region_live(victims[vi]) == 0 {
            heap.release_region(victims[vi]);
            released[vi] = true;
            freed += 1;
        }
    };
    let mut current = 0;
    for m in marked {
        if m.victim != current {
            release_if_empty(current, &mut released);
            current = m.victim;
        }
        let Ok(w) = word::begin_move(&m.slot.word, m.word) else {
            let now = m.slot.word.load(Relaxed);
            if word::is_local(now) && word::addr(now) == m.addr {
                Counters::add(&rt.ctr.evac_cancelled, 1);
            }
            continue;
        };
        let fp = crate::heap::footprint(m.h.size);
        if w & word::COLD == 0 && fp <= keep_budget {
            if let Some(new) = heap.evac_alloc(m.h) {
                heap.mem.copy_within(m.addr, new, m.h.size);
                // The slot's flags (clean, in memd, shared) stay as they are: only the place changes.
                word::publish(&m.slot.word, word::local(new, word::COLD));
                heap.sub_live(m.addr, m.h.size);
                keep_budget -= fp;
                Counters::add(&rt.ctr.compacted, 1);
                continue;
            }
        }
        if m.slot.is_clean() {
            word::publish(&m.slot.word, word::remote(m.h.space, m.h.size));
            heap.sub_live(m.addr, m.h.size);
            Counters::add(&rt.ctr.clean_drops, 1);
            continue;
        }
        writer.add((m.slot, w, m.addr, m.h));
    }
    writer.finish();

    // Reclaim what is left.
    for (vi, &r) in victims.iter().enumerate() {
        if released[vi] {
            continue;
        }
        if heap.region_live(r) == 0 {
            heap.release_region(r);
            freed += 1;
        } else {
            heap.return_victim(r);
        }
    }
    Counters::add_usize(&rt.ctr.regions_freed, freed);
    freed
}

/// An object being written back: slot, its word (held `BUSY`), old address, header.
type Writing = (&'static Slot, u64, u64, Header);

/// Write-back batches: a batch is sent as soon as it is full, so copying the next objects overlaps the
/// network. The bytes in flight are bounded (a quarter of the budget at most, see [`Writer::new`]): past the
/// bound the oldest batch is waited for before the next is sent, so the transient buffers — ours and the
/// client's copy of each request — do not push the process far above its budget.
struct Writer<'a> {
    rt: &'a RtInner,
    /// Bytes per batch.
    batch: usize,
    /// Bytes that may be in flight at once.
    max_in_flight: usize,
    in_flight: usize,
    open: HashMap<u16, (ObjBatch, Vec<Writing>)>,
    sent: VecDeque<(Result<Pending, farmem_memd::StoreError>, Vec<Writing>, usize)>,
}

impl<'a> Writer<'a> {
    fn new(rt: &'a RtInner) -> Writer<'a> {
        // A batch is at most a sixteenth of the budget (and at least 64 KiB); a quarter of the budget (at least
        // two batches) may be in flight.
        let budget = rt.heap.budget_regions * rt.heap.region_size;
        let batch = rt.cfg.writeback_batch.min((budget / 16).max(64 << 10));
        Writer {
            rt,
            batch,
            max_in_flight: (budget / 4).max(2 * batch),
            in_flight: 0,
            open: HashMap::new(),
            sent: VecDeque::new(),
        }
    }

    fn add(&mut self, o: Writing) {
        let (slot, _, addr, h) = o;
        let limit = self.batch;
        let (batch, entries) = self.open.entry(h.space).or_insert_with(|| {
            // Room for a full batch up front: no regrowth copies while filling it.
            let mut b = ObjBatch::new();
            b.data.reserve(limit + h.size);
            (b, Vec::new())
        });
        push_object(&self.rt.heap, batch, slot.id(), addr, h.size);
        entries.push(o);
        if batch.data.len() >= limit || batch.len() >= farmem_memd::proto::MAX_BATCH {
            if let Some((batch, entries)) = self.open.remove(&h.space) {
                self.send(h.space, batch, entries);
            }
        }
    }

    fn send(&mut self, space: u16, batch: ObjBatch, entries: Vec<Writing>) {
        let bytes = batch.data.len();
        while self.in_flight > 0 && self.in_flight + bytes > self.max_in_flight {
            match self.sent.pop_front() {
                Some(s) => self.complete(s),
                None => break,
            }
        }
        let ds = self.rt.ds(space);
        self.in_flight += bytes;
        self.sent.push_back((self.rt.store.submit(Request::WriteObjects { ds, batch }), entries, bytes));
    }

    /// Waits for one batch, publishes its objects as remote — or, if the write failed, puts them back (local,
    /// dirty).
    fn complete(&mut self, (p, entries, bytes): (Result<Pending, farmem_memd::StoreError>, Vec<Writing>, usize)) {
        let rt = self.rt;
        self.in_flight -= bytes;
        match p.and_then(Pending::wait) {
            Ok(_) => {
                Counters::add_usize(&rt.ctr.written_back, entries.len());
                for (slot, _, addr, h) in entries {
                    word::publish(&slot.word, word::remote(h.space, h.size));
                    rt.heap.sub_live(addr, h.size);
                }
                Counters::add_usize(&rt.ctr.bytes_out, bytes);
            }
            Err(e) => {
                warn_limited(&format!("evacuator write-back of {bytes} bytes failed, objects stay local: {e}"));
                Counters::add(&rt.ctr.writeback_errors, 1);
                for (slot, w, _, _) in entries {
                    word::publish(&slot.word, w | word::COLD);
                }
            }
        }
    }

    /// Sends what is left and waits for every batch.
    fn finish(mut self) {
        for (space, (batch, entries)) in std::mem::take(&mut self.open) {
            self.send(space, batch, entries);
        }
        while let Some(s) = self.sent.pop_front() {
            self.complete(s);
        }
    }
}
