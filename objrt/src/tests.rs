//! Runtime tests. Those named `miri_*` use an in-process store, no evacuator thread and no timing, so they also
//! run under Miri.

#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "small test indices and seeds")]

use crate::{DerefScope, FarArc, FarBox, FetchHandle, ObjError, Runtime, RuntimeConfig, Space};
use farmem_memd::{FarStore, MemStore};
use parking_lot::Mutex;
use std::sync::Arc;

/// A runtime with no evacuator thread over a fresh in-process store.
fn manual(local_mem: usize) -> (Runtime, MemStore) {
    let store = MemStore::new(1 << 30);
    let mut cfg = RuntimeConfig::new(local_mem);
    cfg.evacuator_threads = 0;
    cfg.lanes = 2;
    (Runtime::new(cfg, Arc::new(store.clone())).unwrap(), store)
}

fn pattern(seed: u64) -> [u64; 16] {
    let mut a = [0u64; 16];
    for (i, x) in a.iter_mut().enumerate() {
        *x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(i as u64);
    }
    a
}

#[test]
fn miri_alloc_deref_write_read() {
    let (rt, _) = manual(1 << 20);
    let mut b = FarBox::new_in(&rt, pattern(1));
    {
        let s = DerefScope::new();
        assert_eq!(*b.deref(&s), pattern(1));
        b.deref_mut(&s)[0] = 99;
        let inner = DerefScope::new();
        assert_eq!(b.deref(&inner)[0], 99, "nested scopes see the write");
    }
    assert_eq!(b.read()[0], 99);
    b.write(pattern(2));
    assert_eq!(b.read(), pattern(2));
    assert!(b.is_local());
}

#[test]
fn miri_evacuate_all_then_swap_in_then_clean_drop() {
    let (rt, store) = manual(1 << 20);
    let boxes: Vec<_> = (0..40).map(|i| FarBox::new_in(&rt, pattern(i))).collect();
    rt.evacuate_all().unwrap();
    let st = rt.stats();
    assert_eq!(st.written_back, 40, "{st:?}");
    assert_eq!(st.bytes_out, 40 * 128);
    assert!(boxes.iter().all(|b| !b.is_local()));
    assert_eq!(store.engine().used(), 40 * 128);
    for (i, b) in boxes.iter().enumerate() {
        assert_eq!(b.read(), pattern(i as u64));
    }
    let st = rt.stats();
    assert_eq!(st.misses, 40);
    assert_eq!(st.bytes_in, 40 * 128);
    // They came back clean: evacuating again drops them without writing.
    rt.evacuate_all().unwrap();
    let st2 = rt.stats();
    assert_eq!(st2.clean_drops, 40, "{st2:?}");
    assert_eq!(st2.bytes_out, st.bytes_out, "clean objects are not written again");
    assert_eq!(rt.stats().regions_in_use, 0, "every region reclaimed");
}

#[test]
fn miri_free_deletes_remote_copy() {
    let (rt, store) = manual(1 << 20);
    let a = FarBox::new_in(&rt, 7u64);
    let b = FarBox::new_in(&rt, 8u64);
    let c = FarBox::new_in(&rt, 9u64);
    rt.evacuate_all().unwrap();
    assert_eq!(store.engine().used(), 24);
    // c comes back, so it is local with a remote copy.
    assert_eq!(c.read(), 9);
    drop(a);
    b.free();
    drop(c);
    rt.flush_deletes().unwrap();
    assert_eq!(store.engine().used(), 0, "remote copies are deleted");
    assert_eq!(rt.stats().remote_deletes, 3);
    assert_eq!(rt.stats().frees, 3);
    // A never-evicted object has nothing remote to delete.
    let d = FarBox::new_in(&rt, 1u64);
    drop(d);
    rt.flush_deletes().unwrap();
    assert_eq!(rt.stats().remote_deletes, 3);
}

#[test]
fn miri_fetch_handle_batches_misses() {
    let (rt, _) = manual(1 << 20);
    let boxes: Vec<_> = (0..32).map(|i| FarBox::new_in(&rt, pattern(i))).collect();
    rt.evacuate_all().unwrap();
    // Two batches in flight before either is waited for.
    let h1 = rt.fetch(&boxes[..16]).unwrap();
    let h2 = rt.fetch(&boxes[16..]).unwrap();
    assert!(!h1.is_empty() && !h2.is_empty());
    assert!(h1.is_ready(), "the in-process store answers at once");
    h2.wait().unwrap();
    h1.wait().unwrap();
    assert!(boxes.iter().all(FarBox::is_local));
    assert_eq!(rt.stats().misses, 32);
    // Everything is local: nothing to start.
    assert!(rt.fetch(&boxes).unwrap().is_empty());
    let s = DerefScope::new();
    for (i, b) in boxes.iter().enumerate() {
        assert_eq!(*b.deref(&s), pattern(i as u64));
    }
    assert_eq!(rt.stats().misses, 32, "no miss after the fetch");
}

#[test]
fn miri_fetch_all_completes_fetches_others_started() {
    use crate::ptr::sealed::Sealed as _;
    let (rt, _) = manual(1 << 20);
    let boxes: Vec<_> = (0..8).map(|i| FarBox::new_in(&rt, pattern(i))).collect();
    rt.evacuate_all().unwrap();
    // Another fetch (a handle not waited for yet) holds the first half claimed.
    let theirs = rt.fetch(&boxes[..4]).unwrap();
    assert!(!theirs.is_empty());
    assert!(boxes[..4].iter().all(|b| !b.is_local()), "claimed, in flight");
    let slots: Vec<_> = boxes.iter().map(|b| b.far_slot()).collect();
    rt.inner.fetch_all(&slots).unwrap();
    // Every object is local on return, the ones the other fetch carries too (without them a container's scope
    // would wait for that fetch inside the scope), and nothing was fetched twice.
    assert!(boxes.iter().all(FarBox::is_local));
    assert_eq!(rt.stats().misses, 8);
    theirs.wait().unwrap();
    for (i, b) in boxes.iter().enumerate() {
        assert_eq!(b.read(), pattern(i as u64));
    }
}

#[test]
fn miri_deref_if_local_never_fetches() {
    let (rt, _) = manual(1 << 20);
    let b = FarBox::new_in(&rt, pattern(3));
    rt.evacuate_all().unwrap();
    {
        let s = DerefScope::new();
        assert!(b.deref_if_local(&s).is_none(), "remote: no fetch inside the scope");
    }
    assert_eq!(rt.stats().misses, 0);
    let h = b.prefetch().unwrap();
    {
        let s = DerefScope::new();
        assert!(b.deref_if_local(&s).is_none(), "in flight: no wait inside the scope");
    }
    h.wait().unwrap();
    let s = DerefScope::new();
    // Local (cold and fresh after its fetch): the first use clears FRESH, as a dereference's would.
    assert_eq!(b.deref_if_local(&s).map(|r| *r), Some(pattern(3)));
    assert_eq!(rt.stats().misses, 1);
}

#[test]
fn miri_dropped_fetch_handle_completes() {
    let (rt, _) = manual(1 << 20);
    let b = FarBox::new_in(&rt, 5u32);
    rt.evacuate_all().unwrap();
    drop(b.prefetch().unwrap());
    assert!(b.is_local());
    assert_eq!(b.read(), 5);
}

#[test]
fn miri_non_temporal_access_stays_remote() {
    let (rt, store) = manual(1 << 20);
    let mut b = FarBox::new_in(&rt, 11u64);
    assert_eq!(b.read_nt().unwrap(), 11, "a local object is copied");
    rt.evacuate_all().unwrap();
    assert_eq!(b.read_nt().unwrap(), 11);
    assert!(!b.is_local(), "a non-temporal read does not cache");
    b.write_nt(12).unwrap();
    assert!(!b.is_local(), "nor does a non-temporal write");
    assert_eq!(store.read_object(rt.space_ds(Space::DEFAULT), b.id()).unwrap().unwrap(), 12u64.to_le_bytes());
    assert_eq!(b.read(), 12);
    assert!(b.is_local());
}

#[test]
fn miri_write_back_makes_memd_current() {
    let (rt, store) = manual(1 << 20);
    let sp = rt.new_space().unwrap();
    let mut boxes: Vec<_> = (0..10).map(|i| FarBox::try_new_in(&rt, sp, i as u64).unwrap()).collect();
    assert_eq!(rt.write_back(&boxes).unwrap(), 10);
    let ds = rt.space_ds(sp);
    assert_ne!(ds, rt.space_ds(Space::DEFAULT));
    assert_eq!(store.read_object(ds, boxes[3].id()).unwrap().unwrap(), 3u64.to_le_bytes());
    assert!(boxes.iter().all(FarBox::is_local), "write-back keeps objects local");
    assert_eq!(rt.write_back(&boxes).unwrap(), 0, "clean objects are not written again");
    boxes[3].write(33);
    assert_eq!(rt.write_back(&boxes).unwrap(), 1, "only the dirtied object");
    assert_eq!(store.read_object(ds, boxes[3].id()).unwrap().unwrap(), 33u64.to_le_bytes());
    // Clean now: evacuation drops them all without writing.
    let out = rt.stats().bytes_out;
    rt.evacuate_all().unwrap();
    assert_eq!(rt.stats().bytes_out, out);
    assert_eq!(boxes[3].read(), 33);
}

/// The word of a hot local object is its bare address (the fast path loads through it as it is), and the flags
/// kept beside it in the slot follow the object: set by write-back and fetch, cleared by the first write (whose
/// fast path a clean object refuses), unchanged by compaction, and read by eviction and free.
#[test]
fn miri_hot_word_is_the_address_and_flags_follow_the_object() {
    use crate::ptr::sealed::Sealed;
    use crate::word::{ADDR_MASK, CLEAN, HAS_REMOTE, SHARED};
    use std::sync::atomic::Ordering::Relaxed;
    let (rt, store) = manual(2 << 20);
    let ds = rt.space_ds(Space::DEFAULT);
    let mut b = FarBox::new_in(&rt, 7u64);
    let slot = b.far_slot();
    let w = slot.word.load(Relaxed);
    assert_eq!(w & !ADDR_MASK, 0, "a hot object's word is its address: {w:#x}");
    {
        let s = DerefScope::new();
        assert_eq!(std::ptr::from_ref(&*b.deref(&s)).addr() as u64, w);
    }
    assert_eq!(slot.flags(), 0, "new: dirty, not in memd, not shared");
    assert_eq!(rt.write_back([&b]).unwrap(), 1);
    assert_eq!(slot.flags(), CLEAN | HAS_REMOTE);
    assert_eq!(slot.word.load(Relaxed), w, "write-back leaves the word alone");
    {
        let s = DerefScope::new();
        *b.deref_mut(&s) = 8;
        assert_eq!(slot.flags(), HAS_REMOTE, "the first write dirties the object");
        *b.deref_mut(&s) += 1;
    }
    assert_eq!(b.read(), 9);
    // Compaction moves a hot dirty object and keeps its flags; then, cold, it is written back on eviction. (The
    // hot fillers make the victims span several regions, so that the pass keeps some of what it marks; `b`,
    // first in the first region, is the first kept.)
    let fillers: Vec<_> = (0..2000).map(|i| FarBox::new_in(&rt, pattern(i))).collect();
    rt.inner.heap.seal_all();
    crate::evac::cycle(&rt.inner, 64, true);
    assert!(b.is_local());
    assert_ne!(slot.word.load(Relaxed) & ADDR_MASK, w, "compacted: a new place");
    assert_eq!(slot.flags(), HAS_REMOTE, "and the same flags");
    drop(fillers);
    rt.evacuate_all().unwrap();
    assert!(!b.is_local());
    assert_eq!(store.read_object(ds, b.id()).unwrap().unwrap(), 9u64.to_le_bytes(), "the dirty object was written");
    // Fetched: clean and in memd; a write through the non-temporal path dirties it too.
    assert_eq!(b.read(), 9);
    assert_eq!(slot.flags(), CLEAN | HAS_REMOTE);
    b.write_nt(10).unwrap();
    assert_eq!(slot.flags(), HAS_REMOTE);
    let out = rt.stats().bytes_out;
    b.evict().unwrap();
    assert!(rt.stats().bytes_out > out, "evicting a dirty object writes it");
    assert_eq!(store.read_object(ds, b.id()).unwrap().unwrap(), 10u64.to_le_bytes());
    // A shared object keeps SHARED through eviction and fetch.
    let a = FarArc::new_in(&rt, 5u32);
    assert_eq!(a.far_slot().flags(), SHARED);
    rt.evacuate_all().unwrap();
    assert_eq!(a.read(), 5);
    assert_eq!(a.far_slot().flags(), SHARED | CLEAN | HAS_REMOTE);
    // Freeing an object memd holds deletes it there.
    let id = b.id();
    drop(b);
    rt.inner.flush_deletes().unwrap();
    assert!(store.read_object(ds, id).unwrap().is_none(), "free deletes memd's copy");
}

#[test]
fn miri_evict_and_shared_objects() {
    let (rt, _) = manual(1 << 20);
    let mut b = FarBox::new_in(&rt, [3u8; 40]);
    b.evict().unwrap();
    assert!(!b.is_local());
    assert_eq!(b.read(), [3u8; 40]);
    let a = FarArc::new_in(&rt, 77u16);
    let a2 = a.clone();
    assert_eq!(a.count(), 2);
    rt.evacuate_all().unwrap();
    assert!(!a2.is_local());
    {
        let s = DerefScope::new();
        assert_eq!(*a.deref(&s), 77);
        assert_eq!(*a2.deref(&s), 77);
    }
    drop(a);
    assert_eq!(a2.read(), 77, "the object lives while a clone does");
}

#[test]
fn miri_hot_objects_are_compacted_and_kept() {
    let (rt, _) = manual(2 << 20);
    let boxes: Vec<_> = (0..2000).map(|i| FarBox::new_in(&rt, pattern(i))).collect();
    rt.inner.heap.seal_all();
    crate::evac::cycle(&rt.inner, 64, true);
    let st = rt.stats();
    assert!(st.compacted > 0, "fresh (hot) objects are kept on the first pass: {st:?}");
    // Keep touching the first half; the rest goes cold and leaves.
    for _ in 0..3 {
        let s = DerefScope::new();
        for b in &boxes[..1000] {
            let _ = b.deref(&s)[0];
        }
        drop(s);
        rt.evacuate_all().unwrap();
    }
    let hot_local = boxes[..1000].iter().filter(|b| b.is_local()).count();
    let cold_local = boxes[1000..].iter().filter(|b| b.is_local()).count();
    assert!(cold_local <= hot_local, "hot {hot_local} vs cold {cold_local}");
    for (i, b) in boxes.iter().enumerate() {
        assert_eq!(b.read(), pattern(i as u64));
    }
}

#[test]
fn miri_too_large_and_bad_configs_are_errors() {
    let (rt, _) = manual(1 << 20);
    let e = FarBox::try_new_in(&rt, Space::DEFAULT, [0u8; 65536]).unwrap_err();
    assert!(matches!(e, ObjError::TooLarge { size: 65536, .. }), "{e}");
    let store: Arc<dyn FarStore> = Arc::new(MemStore::new(1 << 20));
    let e = Runtime::new(RuntimeConfig::new(100_000), Arc::clone(&store)).unwrap_err();
    assert!(e.to_string().contains("at least 16"), "{e}");
    let mut c = RuntimeConfig::new(16 << 20);
    c.low_watermark = 0.5;
    c.high_watermark = 0.2;
    assert!(Runtime::new(c, Arc::clone(&store)).unwrap_err().to_string().contains("watermarks"));
    let c = RuntimeConfig { local_mem: 16 << 20, region_size: 5000, ..Default::default() };
    assert!(Runtime::new(c, store).unwrap_err().to_string().contains("power of two"));
}

#[test]
fn evacuating_inside_a_scope_is_refused() {
    let (rt, _) = manual(1 << 20);
    let _s = DerefScope::new();
    assert!(rt.evacuate_all().is_err());
}

#[test]
fn concurrent_derefs_fetch_once() {
    let (rt, _) = manual(1 << 20);
    let a = FarArc::new_in(&rt, pattern(5));
    for round in 0..20 {
        rt.evacuate_all().unwrap();
        assert!(!a.is_local());
        let before = rt.stats().misses;
        let barrier = std::sync::Barrier::new(4);
        std::thread::scope(|t| {
            for _ in 0..4 {
                t.spawn(|| {
                    barrier.wait();
                    let s = DerefScope::new();
                    assert_eq!(*a.deref(&s), pattern(5));
                });
            }
        });
        assert_eq!(rt.stats().misses - before, 1, "round {round}: one fetch for four derefs");
    }
}

#[test]
fn store_failure_is_reported_not_hung() {
    // A store with room for one object: write-back of more fails, objects stay local and correct.
    let store = MemStore::new(200);
    let mut cfg = RuntimeConfig::new(1 << 20);
    cfg.evacuator_threads = 0;
    let rt = Runtime::new(cfg, Arc::new(store)).unwrap();
    let boxes: Vec<_> = (0..10).map(|i| FarBox::new_in(&rt, pattern(i))).collect();
    rt.evacuate_all().unwrap();
    assert!(rt.stats().writeback_errors > 0);
    for (i, b) in boxes.iter().enumerate() {
        assert_eq!(b.read(), pattern(i as u64));
    }
}

/// Many threads read and mutate random objects (and replace some) while the evacuator runs, with a budget of
/// about 8% of the data; every value is checked against a shadow copy.
#[test]
fn stress_against_shadow_with_background_evacuator() {
    const OBJS: usize = 12_000; // 12 000 × 1 KiB ≈ 12 MiB of data
    const THREADS: usize = 4;
    const OPS: usize = 20_000;
    type Obj = [u64; 128];
    let fill = |seed: u64| -> Obj {
        let mut a = [0u64; 128];
        for (i, x) in a.iter_mut().enumerate() {
            *x = seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
        a
    };
    let store = MemStore::new(1 << 30);
    let mut cfg = RuntimeConfig::new(1 << 20); // 16 regions of 64 KiB: ≈ 8% of the data
    cfg.region_size = 64 << 10;
    cfg.lanes = 2;
    let rt = Runtime::new(cfg, Arc::new(store.clone())).unwrap();
    let objs: Vec<Mutex<(FarBox<Obj>, u64)>> =
        (0..OBJS as u64).map(|i| Mutex::new((FarBox::new_in(&rt, fill(i)), i))).collect();
    let shared: Vec<FarArc<Obj>> = (0..64u64).map(|i| FarArc::new_in(&rt, fill(1_000_000 + i))).collect();
    std::thread::scope(|t| {
        for th in 0..THREADS as u64 {
            let (objs, shared, rt) = (&objs, &shared, &rt);
            t.spawn(move || {
                let mut x = 0x1234_5678_9abc_def1u64 ^ (th << 32);
                let mut next = || {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x
                };
                for op in 0..OPS {
                    let r = next();
                    let i = (r % OBJS as u64) as usize;
                    let mut g = objs[i].lock();
                    let (b, seed) = &mut *g;
                    match (r >> 32) % 10 {
                        0..=4 => {
                            let s = DerefScope::new();
                            assert_eq!(*b.deref(&s), fill(*seed), "object {i} op {op}");
                        }
                        5..=7 => {
                            let new = next();
                            let s = DerefScope::new();
                            let mut m = b.deref_mut(&s);
                            assert_eq!(m[5], fill(*seed)[5]);
                            *m = fill(new);
                            *seed = new;
                        }
                        8 => {
                            // Replace: free the old object, allocate a new one.
                            let new = next();
                            *b = FarBox::new_in(rt, fill(new));
                            *seed = new;
                        }
                        _ => {
                            let k = (r as usize >> 8) % shared.len();
                            let s = DerefScope::new();
                            assert_eq!(*shared[k].deref(&s), fill(1_000_000 + k as u64));
                            // Two objects in one scope: the first reference stays valid across the second miss.
                            let first = b.deref(&s);
                            let other = objs[(i + 1) % OBJS].try_lock();
                            if let Some(o) = other {
                                assert_eq!(*o.0.deref(&s), fill(o.1));
                            }
                            assert_eq!(*first, fill(*seed));
                        }
                    }
                }
            });
        }
    });
    // Everything still right after the storm, read both ways.
    for (i, m) in objs.iter().enumerate() {
        let g = m.lock();
        assert_eq!(g.0.read(), fill(g.1), "object {i}");
    }
    let st = rt.stats();
    assert!(st.evac_cycles > 0 && st.misses > 0 && st.written_back > 0, "{st:?}");
    assert!(st.frees > 0 && st.remote_deletes + 600 >= st.frees / 2, "{st:?}");
    eprintln!("{st:?}");
    let total = rt.inner.heap.total_regions as u64;
    assert!(st.peak_regions <= total, "{st:?}");
    drop(objs);
    drop(shared);
    // Not `rt.flush_deletes()`: the background evacuator may have taken the last batch of deletes and still be
    // sending it, and a flush does not wait for another thread's. Dropping the runtime joins the evacuator,
    // then sends whatever is still queued.
    drop(rt);
    assert_eq!(store.engine().used(), 0, "every remote copy deleted once all objects are freed");
}

/// The same kind of run against a real memd over loopback (`TestServer` + `Client`): threads mutate objects
/// while the evacuator writes them back; all values checked.
#[test]
fn against_a_real_memd() {
    let srv = farmem_memd::testing::TestServer::start(1 << 30);
    let store: Arc<dyn FarStore> = Arc::new(srv.client());
    let mut cfg = RuntimeConfig::new(1 << 20);
    cfg.region_size = 64 << 10;
    cfg.lanes = 2;
    let rt = Runtime::new(cfg, store).unwrap();
    // 16 000 × 128 B objects ≈ 2.3 MiB with headers: more than twice the budget.
    let objs: Vec<Mutex<(FarBox<[u64; 16]>, u64)>> =
        (0..16_000u64).map(|i| Mutex::new((FarBox::new_in(&rt, pattern(i)), i))).collect();
    std::thread::scope(|t| {
        for th in 0..2u64 {
            let objs = &objs;
            t.spawn(move || {
                let mut x = 0x2545_f491_4f6c_dd1du64 ^ th;
                for _ in 0..3000 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let mut g = objs[(x % objs.len() as u64) as usize].lock();
                    let (b, seed) = &mut *g;
                    let s = DerefScope::new();
                    assert_eq!(*b.deref(&s), pattern(*seed));
                    if x & 1 == 0 {
                        *seed = x >> 1;
                        *b.deref_mut(&s) = pattern(*seed);
                    }
                }
            });
        }
    });
    for m in &objs {
        let g = m.lock();
        assert_eq!(g.0.read(), pattern(g.1));
    }
    let st = rt.stats();
    assert!(st.written_back > 0 && st.misses > 0, "{st:?}");
    drop(objs);
    rt.flush_deletes().unwrap();
}

/// Over a socket, a fetch's values are received straight into the heap (`Landing`): values, counters and the
/// heap's accounting are the same as with a copy — every region is reclaimed once the objects leave again —
/// including for objects of several sizes in one request, fetches whose handles are dropped unwaited, and
/// fetches that find the heap too full to land in.
#[test]
fn fetches_received_in_place_from_a_real_memd() {
    let srv = farmem_memd::testing::TestServer::start(1 << 30);
    let mut cfg = RuntimeConfig::new(1 << 20);
    cfg.evacuator_threads = 0;
    cfg.lanes = 2;
    cfg.region_size = 64 << 10;
    let rt = Runtime::new(cfg, Arc::new(srv.client())).unwrap();
    let big = |i: u64| -> [u64; 512] { std::array::from_fn(|k| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ k as u64) };
    let bigs: Vec<FarBox<[u64; 512]>> = (0..100).map(|i| FarBox::new_in(&rt, big(i))).collect();
    let smalls: Vec<FarBox<[u64; 16]>> = (0..100).map(|i| FarBox::new_in(&rt, pattern(i))).collect();
    for round in 0..3 {
        rt.evacuate_all().unwrap();
        assert!(bigs.iter().all(|b| !b.is_local()) && smalls.iter().all(|b| !b.is_local()));
        let st0 = rt.stats();
        // Mixed sizes in one request each.
        let h1 = rt.fetch(bigs.iter().take(50)).unwrap();
        let h2 = rt.fetch(smalls.iter().take(50)).unwrap();
        if round == 1 {
            // Dropping a handle completes its fetch.
            drop(h1);
            drop(h2);
        } else {
            h2.wait().unwrap();
            h1.wait().unwrap();
        }
        assert!(bigs[..50].iter().all(FarBox::is_local) && smalls[..50].iter().all(FarBox::is_local));
        for (i, b) in bigs.iter().enumerate() {
            assert_eq!(b.read(), big(i as u64), "round {round}, object {i}");
        }
        for (i, b) in smalls.iter().enumerate() {
            assert_eq!(b.read(), pattern(i as u64), "round {round}, object {i}");
        }
        let st = rt.stats();
        assert_eq!(st.misses - st0.misses, 200, "{st:?}");
        assert_eq!(st.bytes_in - st0.bytes_in, 100 * 4096 + 100 * 128, "{st:?}");
    }
    rt.evacuate_all().unwrap();
    assert_eq!(rt.stats().regions_in_use, 0, "every landed object's space was reclaimed");

    // A heap too full to land in: the fetch fails cleanly (as a copying install would) and the objects stay
    // remote and readable once there is room again.
    // (Inside a scope an allocation that finds the heap full fails instead of evacuating for itself.)
    let fill: Vec<FarBox<[u64; 512]>> = {
        let _s = DerefScope::new();
        std::iter::from_fn(|| FarBox::try_new_in(&rt, Space::DEFAULT, big(7)).ok()).take(10_000).collect()
    };
    assert!(!fill.is_empty());
    let r = rt.fetch(bigs.iter()).and_then(FetchHandle::wait);
    assert!(matches!(r, Err(ObjError::HeapExhausted { .. })), "{r:?}");
    drop(fill);
    rt.evacuate_all().unwrap();
    for (i, b) in bigs.iter().enumerate() {
        assert_eq!(b.read(), big(i as u64), "object {i} after a failed fetch");
    }
}

#[test]
fn memd_gone_is_an_error_not_a_hang() {
    let mut srv = farmem_memd::testing::TestServer::start(1 << 20);
    let mut cc = srv.client_config();
    cc.reconnect_timeout = std::time::Duration::from_millis(500);
    let store: Arc<dyn FarStore> = Arc::new(farmem_memd::Client::connect(cc).unwrap());
    let mut cfg = RuntimeConfig::new(1 << 20);
    cfg.evacuator_threads = 0;
    let rt = Runtime::new(cfg, store).unwrap();
    let mut b = FarBox::new_in(&rt, 5u64);
    b.evict().unwrap();
    srv.stop();
    let s = DerefScope::new();
    match b.try_deref(&s) {
        Err(ObjError::Store(e)) => {
            assert!(e.is_gone() || matches!(e, farmem_memd::StoreError::Interrupted { .. }), "{e}")
        }
        other => panic!("expected a store error, got {other:?}"),
    }
    drop(s);
    // The object is still remote and usable once a server is back (here: it is not, so reads keep failing).
    assert!(!b.is_local());
    assert!(b.read_nt().is_err());
}

#[test]
fn default_runtime_serves_far_boxes() {
    if std::env::var_os("FARMEM_SERVER").is_some() {
        eprintln!("skipped: FARMEM_SERVER is set, the default runtime would use that server");
        return;
    }
    let b = FarBox::new([1u32, 2, 3, 4]);
    assert_eq!(b.read(), [1, 2, 3, 4]);
    let a = FarArc::new(9u8);
    assert_eq!(a.clone().read(), 9);
    assert!(Runtime::try_global().is_ok());
}

mod model {
    //! Operation sequences against a shadow `Vec`, on a runtime small enough that every sequence evacuates.
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Alloc(u64),
        Read(usize),
        Write(usize, u64),
        ReadNt(usize),
        WriteNt(usize, u64),
        Evict(usize),
        Free(usize),
        Fetch(Vec<usize>),
        WriteBack(Vec<usize>),
        Evacuate,
        EvacuateAll,
        Hold(usize, usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => any::<u64>().prop_map(Op::Alloc),
            4 => any::<usize>().prop_map(Op::Read),
            3 => (any::<usize>(), any::<u64>()).prop_map(|(i, v)| Op::Write(i, v)),
            1 => any::<usize>().prop_map(Op::ReadNt),
            1 => (any::<usize>(), any::<u64>()).prop_map(|(i, v)| Op::WriteNt(i, v)),
            1 => any::<usize>().prop_map(Op::Evict),
            1 => any::<usize>().prop_map(Op::Free),
            1 => proptest::collection::vec(any::<usize>(), 0..8).prop_map(Op::Fetch),
            1 => proptest::collection::vec(any::<usize>(), 0..8).prop_map(Op::WriteBack),
            1 => Just(Op::Evacuate),
            1 => Just(Op::EvacuateAll),
            1 => (any::<usize>(), any::<usize>()).prop_map(|(i, j)| Op::Hold(i, j)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        #[test]
        fn runtime_matches_shadow(ops in proptest::collection::vec(op(), 1..200)) {
            let (rt, store) = manual(1 << 20);
            let mut far: Vec<FarBox<[u64; 16]>> = Vec::new();
            let mut shadow: Vec<u64> = Vec::new();
            for op in ops {
                let n = far.len();
                match op {
                    Op::Alloc(v) => {
                        far.push(FarBox::new_in(&rt, pattern(v)));
                        shadow.push(v);
                    }
                    Op::Read(i) if n > 0 => prop_assert_eq!(far[i % n].read(), pattern(shadow[i % n])),
                    Op::Write(i, v) if n > 0 => {
                        far[i % n].write(pattern(v));
                        shadow[i % n] = v;
                    }
                    Op::ReadNt(i) if n > 0 => prop_assert_eq!(far[i % n].read_nt().unwrap(), pattern(shadow[i % n])),
                    Op::WriteNt(i, v) if n > 0 => {
                        far[i % n].write_nt(pattern(v)).unwrap();
                        shadow[i % n] = v;
                    }
                    Op::Evict(i) if n > 0 => {
                        far[i % n].evict().unwrap();
                        prop_assert!(!far[i % n].is_local());
                    }
                    Op::Free(i) if n > 0 => {
                        drop(far.swap_remove(i % n));
                        shadow.swap_remove(i % n);
                    }
                    Op::Fetch(ix) if n > 0 => {
                        let sel: Vec<&FarBox<[u64; 16]>> = ix.iter().map(|i| &far[i % n]).collect();
                        rt.fetch(sel).unwrap().wait().unwrap();
                        for i in &ix {
                            prop_assert!(far[i % n].is_local());
                        }
                    }
                    Op::WriteBack(ix) if n > 0 => {
                        let sel: Vec<&FarBox<[u64; 16]>> = ix.iter().map(|i| &far[i % n]).collect();
                        rt.write_back(sel).unwrap();
                        for i in &ix {
                            let got = store.read_object(rt.space_ds(Space::DEFAULT), far[i % n].id()).unwrap();
                            prop_assert_eq!(got, Some(bytemuck::bytes_of(&pattern(shadow[i % n])).to_vec()));
                        }
                    }
                    Op::Evacuate => rt.evacuate().unwrap(),
                    Op::EvacuateAll => rt.evacuate_all().unwrap(),
                    Op::Hold(i, j) if n > 0 => {
                        // Two references held in one scope across a miss.
                        let s = DerefScope::new();
                        let a = far[i % n].deref(&s);
                        let b = far[j % n].deref(&s);
                        prop_assert_eq!(*a, pattern(shadow[i % n]));
                        prop_assert_eq!(*b, pattern(shadow[j % n]));
                    }
                    _ => {}
                }
            }
            for (b, v) in far.iter().zip(&shadow) {
                prop_assert_eq!(b.read(), pattern(*v));
            }
            let live = far.len();
            drop(far);
            rt.flush_deletes().unwrap();
            prop_assert_eq!(store.engine().used(), 0, "{} objects freed, memd still holds bytes", live);
        }
    }
}

#[test]
fn miri_runtimes_are_independent() {
    let (a, _) = manual(1 << 20);
    let (b, _) = manual(1 << 20);
    let x = FarBox::new_in(&a, 1u64);
    let y = FarBox::new_in(&b, 2u64);
    a.evacuate_all().unwrap();
    assert!(!x.is_local());
    assert!(y.is_local(), "evacuating one runtime leaves the other alone");
    {
        // One scope serves objects of both.
        let s = DerefScope::new();
        assert_eq!(*x.deref(&s) + *y.deref(&s), 3);
    }
    assert!(a.fetch([&y]).is_err(), "an object of another runtime is refused");
    assert_ne!(a.space_ds(Space::DEFAULT), b.space_ds(Space::DEFAULT));
}

#[test]
fn a_leaked_scope_on_an_exited_thread_does_not_stop_evacuation() {
    let (rt, _) = manual(1 << 20);
    let _objs: Vec<_> = (0..10).map(|i| FarBox::new_in(&rt, i as u64)).collect();
    std::thread::spawn(|| std::mem::forget(DerefScope::new())).join().unwrap();
    rt.evacuate_all().unwrap();
    assert_eq!(rt.stats().written_back, 10);
}
