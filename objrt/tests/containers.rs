//! Far containers against their std counterparts (proptest operation sequences under a tight budget, so the
//! evacuator really moves chunks out), offloaded operations against their local versions, and prefetching
//! counted in far-store round trips.
#![allow(clippy::cast_possible_truncation, reason = "test sizes and values are small")]

use farmem_memd::offload::builtin;
use farmem_memd::{FarStore, MemStore, Pending, Request, StoreError};
use farmem_objrt::containers::{Bucket256, HashMap as FarMap, Pred};
use farmem_objrt::{Array, DerefScope, List, Offload, Queue, Runtime, RuntimeConfig, Stack, Vector};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// 1 MiB of local memory (16 regions of 64 KiB) and a background evacuator: containers of a few MiB live
/// mostly in far memory.
fn tight() -> Runtime {
    let mut cfg = RuntimeConfig::new(1 << 20);
    cfg.lanes = 2;
    Runtime::new(cfg, Arc::new(MemStore::with_registry(1 << 32, builtin()))).unwrap()
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() })
}

#[derive(Clone, Debug)]
enum VecOp {
    Push(u64),
    Extend(u64, usize),
    Pop,
    Set(usize, u64),
    Get(usize),
    ReadNt(usize),
    WriteNt(usize, u64),
    Truncate(usize),
    Evacuate,
    Check,
}

fn vec_op() -> impl Strategy<Value = VecOp> {
    prop_oneof![
        3 => any::<u64>().prop_map(VecOp::Push),
        3 => (any::<u64>(), 0..40_000usize).prop_map(|(v, n)| VecOp::Extend(v, n)),
        2 => Just(VecOp::Pop),
        4 => (any::<usize>(), any::<u64>()).prop_map(|(i, v)| VecOp::Set(i, v)),
        4 => any::<usize>().prop_map(VecOp::Get),
        1 => any::<usize>().prop_map(VecOp::ReadNt),
        1 => (any::<usize>(), any::<u64>()).prop_map(|(i, v)| VecOp::WriteNt(i, v)),
        1 => any::<usize>().prop_map(VecOp::Truncate),
        1 => Just(VecOp::Evacuate),
        1 => Just(VecOp::Check),
    ]
}

#[test]
fn vector_matches_vec() {
    let rt = tight();
    runner(96)
        .run(&proptest::collection::vec(vec_op(), 1..60), |ops| {
            let mut far = Vector::<u64>::new(&rt).unwrap();
            let mut model: Vec<u64> = Vec::new();
            for op in ops {
                match op {
                    VecOp::Push(v) => {
                        far.push(v).unwrap();
                        model.push(v);
                    }
                    VecOp::Extend(v, n) => {
                        let items: Vec<u64> = (0..n as u64).map(|k| v.wrapping_add(k)).collect();
                        far.extend_from_slice(&items).unwrap();
                        model.extend_from_slice(&items);
                    }
                    VecOp::Pop => prop_assert_eq!(far.pop(), model.pop()),
                    VecOp::Set(i, v) => {
                        let i = if model.is_empty() { i } else { i % (model.len() + 1) };
                        let r = far.set(i, v);
                        if i < model.len() {
                            r.unwrap();
                            model[i] = v;
                        } else {
                            prop_assert!(r.is_err());
                        }
                    }
                    VecOp::Get(i) => {
                        let i = i % (model.len() + 1);
                        let s = DerefScope::new();
                        prop_assert_eq!(far.get(i, &s).map(|r| *r), model.get(i).copied());
                    }
                    VecOp::ReadNt(i) => {
                        let i = i % (model.len() + 1);
                        prop_assert_eq!(far.read_nt(i).ok(), model.get(i).copied());
                    }
                    VecOp::WriteNt(i, v) => {
                        if !model.is_empty() {
                            let i = i % model.len();
                            far.write_nt(i, v).unwrap();
                            model[i] = v;
                        }
                    }
                    VecOp::Truncate(n) => {
                        let n = n % (model.len() + 1);
                        far.truncate(n);
                        model.truncate(n);
                    }
                    VecOp::Evacuate => rt.evacuate_all().unwrap(),
                    VecOp::Check => {
                        prop_assert!(far.iter().eq(model.iter().copied()));
                        let nt: Vec<u64> = far.iter_nt().map(Result::unwrap).collect();
                        prop_assert!(nt == model);
                    }
                }
                prop_assert_eq!(far.len(), model.len());
            }
            prop_assert!(far.to_vec() == model);
            Ok(())
        })
        .unwrap();
    assert!(rt.stats().written_back + rt.stats().clean_drops > 0, "the evacuator never ran: {:?}", rt.stats());
}

#[test]
fn array_is_fixed_and_matches_a_slice() {
    let rt = tight();
    let n = 300_000; // 2.4 MB of u64: more than twice the budget
    let mut a = Array::<u64>::new(&rt, n).unwrap();
    let mut model = vec![0u64; n];
    for i in (0..n).step_by(7) {
        a.set(i, i as u64 * 3).unwrap();
        model[i] = i as u64 * 3;
    }
    assert!(a.set(n, 1).is_err());
    assert_eq!(a.len(), n);
    assert!(a.iter().eq(model.iter().copied()));
    for i in (0..n).rev().step_by(1013) {
        assert_eq!(a.read(i), Some(model[i]));
    }
    assert!(rt.stats().misses > 0, "{:?}", rt.stats());
}

#[derive(Clone, Debug)]
enum ListOp {
    PushBack(u32),
    PushFront(u32),
    Many(u32, usize, bool),
    PopBack,
    PopFront,
    Insert(usize, u32),
    Remove(usize),
    Get(usize),
    Evacuate,
    Check,
}

fn list_op() -> impl Strategy<Value = ListOp> {
    prop_oneof![
        3 => any::<u32>().prop_map(ListOp::PushBack),
        3 => any::<u32>().prop_map(ListOp::PushFront),
        2 => (any::<u32>(), 0..20_000usize, any::<bool>()).prop_map(|(v, n, f)| ListOp::Many(v, n, f)),
        2 => Just(ListOp::PopBack),
        2 => Just(ListOp::PopFront),
        3 => (any::<usize>(), any::<u32>()).prop_map(|(i, v)| ListOp::Insert(i, v)),
        2 => any::<usize>().prop_map(ListOp::Remove),
        2 => any::<usize>().prop_map(ListOp::Get),
        1 => Just(ListOp::Evacuate),
        1 => Just(ListOp::Check),
    ]
}

#[test]
fn list_matches_vecdeque() {
    let rt = tight();
    runner(96)
        .run(&proptest::collection::vec(list_op(), 1..80), |ops| {
            let mut far = List::<u32>::new(&rt).unwrap();
            let mut model: VecDeque<u32> = VecDeque::new();
            for op in ops {
                match op {
                    ListOp::PushBack(v) => {
                        far.push_back(v).unwrap();
                        model.push_back(v);
                    }
                    ListOp::PushFront(v) => {
                        far.push_front(v).unwrap();
                        model.push_front(v);
                    }
                    ListOp::Many(v, n, front) => {
                        for k in 0..n as u32 {
                            if front {
                                far.push_front(v ^ k).unwrap();
                                model.push_front(v ^ k);
                            } else {
                                far.push_back(v ^ k).unwrap();
                                model.push_back(v ^ k);
                            }
                        }
                    }
                    ListOp::PopBack => prop_assert_eq!(far.pop_back(), model.pop_back()),
                    ListOp::PopFront => prop_assert_eq!(far.pop_front(), model.pop_front()),
                    ListOp::Insert(i, v) => {
                        let i = i % (model.len() + 1);
                        far.insert(i, v).unwrap();
                        model.insert(i, v);
                    }
                    ListOp::Remove(i) => {
                        let i = i % (model.len() + 1);
                        prop_assert_eq!(far.remove(i), model.remove(i));
                    }
                    ListOp::Get(i) => {
                        let i = i % (model.len() + 1);
                        prop_assert_eq!(far.read(i), model.get(i).copied());
                    }
                    ListOp::Evacuate => rt.evacuate_all().unwrap(),
                    ListOp::Check => {
                        prop_assert!(far.iter().eq(model.iter().copied()));
                        prop_assert!(far.iter().rev().eq(model.iter().rev().copied()));
                    }
                }
                prop_assert_eq!(far.len(), model.len());
                prop_assert_eq!(far.front(), model.front().copied());
                prop_assert_eq!(far.back(), model.back().copied());
            }
            prop_assert!(far.to_vec().iter().eq(model.iter()));
            Ok(())
        })
        .unwrap();
}

#[test]
fn stack_and_queue_match_std() {
    let rt = tight();
    let ops = proptest::collection::vec((any::<bool>(), any::<u64>(), 0..5000usize), 1..40);
    runner(48)
        .run(&ops, |ops| {
            let mut st = Stack::<u64>::new(&rt).unwrap();
            let mut q = Queue::<u64>::new(&rt).unwrap();
            let (mut vs, mut vq) = (Vec::new(), VecDeque::new());
            for (push, v, n) in ops {
                for k in 0..n as u64 {
                    if push {
                        st.push(v ^ k).unwrap();
                        q.push(v ^ k).unwrap();
                        vs.push(v ^ k);
                        vq.push_back(v ^ k);
                    } else {
                        prop_assert_eq!(st.pop(), vs.pop());
                        prop_assert_eq!(q.pop(), vq.pop_front());
                    }
                }
                prop_assert_eq!(st.peek(), vs.last().copied());
                prop_assert_eq!(q.peek(), vq.front().copied());
                prop_assert_eq!(st.len(), vs.len());
                prop_assert_eq!(q.len(), vq.len());
            }
            prop_assert!(st.iter().eq(vs.iter().copied()));
            prop_assert!(q.iter().eq(vq.iter().copied()));
            Ok(())
        })
        .unwrap();
}

type Val = [u64; 6];

#[derive(Clone, Debug)]
enum MapOp {
    Insert(u32, u64),
    InsertRange(u32, u32),
    Remove(u32),
    Get(u32),
    GetRemote(u32),
    GetMany(Vec<u32>, bool),
    InsertMany(Vec<(u32, u64)>),
    EntryAdd(u32, u64),
    EntryRemove(u32),
    Evacuate,
}

fn map_op() -> impl Strategy<Value = MapOp> {
    let k = 0..30_000u32;
    prop_oneof![
        3 => (k.clone(), any::<u64>()).prop_map(|(k, v)| MapOp::Insert(k, v)),
        2 => (k.clone(), 0..8000u32).prop_map(|(k, n)| MapOp::InsertRange(k, n)),
        2 => k.clone().prop_map(MapOp::Remove),
        3 => k.clone().prop_map(MapOp::Get),
        2 => k.clone().prop_map(MapOp::GetRemote),
        1 => (proptest::collection::vec(k.clone(), 0..40), any::<bool>()).prop_map(|(v, r)| MapOp::GetMany(v, r)),
        // Longer than one internal run (64 KiB of buckets), with repeated keys: later values win.
        1 => proptest::collection::vec((k.clone(), any::<u64>()), 0..700).prop_map(MapOp::InsertMany),
        2 => (k.clone(), any::<u64>()).prop_map(|(k, v)| MapOp::EntryAdd(k, v)),
        1 => k.prop_map(MapOp::EntryRemove),
        1 => Just(MapOp::Evacuate),
    ]
}

fn val(k: u32, v: u64) -> Val {
    [u64::from(k), v, v ^ 1, v ^ 2, v ^ 3, v ^ 4]
}

#[test]
fn hashmap_matches_std() {
    let rt = tight();
    runner(64)
        .run(&proptest::collection::vec(map_op(), 1..60), |ops| {
            let far = FarMap::<u32, Val, Bucket256>::new(&rt).unwrap();
            let mut model: HashMap<u32, Val> = HashMap::new();
            for op in ops {
                match op {
                    MapOp::Insert(k, v) => {
                        prop_assert_eq!(far.insert(k, val(k, v)).unwrap(), model.insert(k, val(k, v)))
                    }
                    MapOp::InsertRange(k, n) => {
                        for k in k..k + n {
                            prop_assert_eq!(far.insert(k, val(k, 7)).unwrap(), model.insert(k, val(k, 7)));
                        }
                    }
                    MapOp::Remove(k) => prop_assert_eq!(far.remove(&k), model.remove(&k)),
                    MapOp::Get(k) => prop_assert_eq!(far.get(&k), model.get(&k).copied()),
                    MapOp::GetRemote(k) => {
                        prop_assert_eq!(far.get_with(&k, Offload::Remote).unwrap(), model.get(&k).copied());
                        prop_assert_eq!(far.get_with(&k, Offload::Auto).unwrap(), model.get(&k).copied());
                    }
                    MapOp::GetMany(keys, remote) => {
                        let mode = if remote { Offload::Remote } else { Offload::Local };
                        let want: Vec<Option<Val>> = keys.iter().map(|k| model.get(k).copied()).collect();
                        prop_assert_eq!(far.get_many(&keys, mode).unwrap(), want);
                    }
                    MapOp::InsertMany(items) => {
                        let items: Vec<(u32, Val)> = items.into_iter().map(|(k, v)| (k, val(k, v))).collect();
                        let want: Vec<Option<Val>> = items.iter().map(|&(k, v)| model.insert(k, v)).collect();
                        prop_assert_eq!(far.insert_many(&items).unwrap(), want);
                    }
                    MapOp::EntryAdd(k, v) => {
                        let got =
                            far.entry(k).and_modify(|x| x[1] = x[1].wrapping_add(v)).or_insert(val(k, v)).unwrap();
                        let m = model.entry(k).and_modify(|x| x[1] = x[1].wrapping_add(v)).or_insert(val(k, v));
                        prop_assert_eq!(got, *m);
                    }
                    MapOp::EntryRemove(k) => {
                        let got = match far.entry(k) {
                            farmem_objrt::containers::Entry::Occupied(o) => Some(o.remove()),
                            farmem_objrt::containers::Entry::Vacant(_) => None,
                        };
                        prop_assert_eq!(got, model.remove(&k));
                    }
                    MapOp::Evacuate => rt.evacuate_all().unwrap(),
                }
                prop_assert_eq!(far.len(), model.len());
            }
            let mut all = far.to_vec();
            all.sort_unstable_by_key(|e| e.0);
            let mut want: Vec<(u32, Val)> = model.into_iter().collect();
            want.sort_unstable_by_key(|e| e.0);
            prop_assert!(all == want);
            Ok(())
        })
        .unwrap();
}

/// Runs `f(t)` on four threads at once, `t` = 0..4.
fn on_four_threads(f: impl Fn(u64) + Sync) {
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let f = &f;
            s.spawn(move || f(t));
        }
    });
}

#[test]
fn hashmap_concurrent_inserts_and_lookups() {
    let rt = tight();
    let map = FarMap::<u64, u64>::new(&rt).unwrap();
    const PER: u64 = 20_000;
    on_four_threads(|t| {
        for k in t * PER..(t + 1) * PER {
            assert_eq!(map.insert(k, k * 2).unwrap(), None);
            // Read back an earlier key of this thread: a split elsewhere must never hide it.
            let back = t * PER + (k - t * PER) / 2;
            assert_eq!(map.get(&back), Some(back * 2));
        }
    });
    assert_eq!(map.len(), (4 * PER) as usize);
    for k in (0..4 * PER).step_by(97) {
        assert_eq!(map.get_with(&k, Offload::Auto).unwrap(), Some(k * 2));
    }
    assert!(map.bucket_count() > 100);
}

// ---------------------------------------------------------------------------------------------------------
// Offloaded column operations give the local answer.

fn check_column_ops<T>(rt: &Runtime, data: &[T], idx: &[u64], preds: &[Pred<T>]) -> Result<(), TestCaseError>
where
    T: bytemuck::Pod + farmem_objrt::containers::Num + PartialEq,
{
    let same = |a: &[T], b: &[T]| bytemuck::cast_slice::<T, u8>(a) == bytemuck::cast_slice::<T, u8>(b);
    let mut col = Vector::from_slice(rt, data).unwrap();
    rt.evacuate_all().unwrap();
    // Some chunks local and dirty: the offloaded run must see these writes.
    if !data.is_empty() {
        for i in (0..data.len()).step_by(1500) {
            col.set(i, data[data.len() - 1 - i]).unwrap();
        }
    }
    let local = Offload::Local;
    for mode in [Offload::Remote, Offload::Auto] {
        prop_assert_eq!(col.sum(mode).unwrap(), col.sum(local).unwrap());
        let opt = |x: Option<T>| x.map(|v| bytemuck::bytes_of(&v).to_vec());
        prop_assert_eq!(opt(col.min(mode).unwrap()), opt(col.min(local).unwrap()));
        prop_assert_eq!(opt(col.max(mode).unwrap()), opt(col.max(local).unwrap()));
        prop_assert_eq!(opt(col.median(mode).unwrap()), opt(col.median(local).unwrap()));
        prop_assert!(same(&col.unique(mode).unwrap(), &col.unique(local).unwrap()));
        for p in preds {
            prop_assert_eq!(col.filter(*p, mode).unwrap(), col.filter(*p, local).unwrap());
        }
        let g_remote = col.gather(idx, mode).unwrap();
        let g_local = col.gather(idx, local).unwrap();
        prop_assert!(same(&g_remote.to_vec(), &g_local.to_vec()));
    }
    // Mutations: the same shuffle and assignment on two copies, one offloaded.
    let mut other = Vector::from_slice(rt, &col.to_vec()).unwrap();
    rt.evacuate_all().unwrap();
    if !data.is_empty() {
        let perm: Vec<u64> = (0..data.len() as u64).map(|i| idx.get(i as usize).copied().unwrap_or(i)).collect();
        col.shuffle(&perm, Offload::Remote).unwrap();
        other.shuffle(&perm, Offload::Local).unwrap();
        prop_assert!(same(&col.to_vec(), &other.to_vec()));
        let vals: Vec<T> = idx.iter().map(|&i| data[i as usize]).collect();
        rt.evacuate_all().unwrap();
        col.assign(idx, &vals, Offload::Remote).unwrap();
        other.assign(idx, &vals, Offload::Local).unwrap();
        prop_assert!(same(&col.to_vec(), &other.to_vec()));
    }
    Ok(())
}

#[test]
fn offloaded_column_ops_match_local() {
    let rt = tight();
    let strat = (proptest::collection::vec(any::<i32>().prop_map(|x| x % 1000), 0..12_000), any::<u64>());
    runner(32)
        .run(&strat, |(data, seed)| {
            let n = data.len() as u64;
            let idx: Vec<u64> = if n == 0 { vec![] } else { (0..n.min(3000)).map(|i| (i * 7919 + seed) % n).collect() };
            let preds = [Pred::Eq(5), Pred::Lt(-100), Pred::Gt(990), Pred::Range(-10, 10)];
            check_column_ops(&rt, &data, &idx, &preds)?;
            let f: Vec<f64> = data.iter().map(|&x| f64::from(x) / 7.0).collect();
            check_column_ops(&rt, &f, &idx, &[Pred::Range(-1.0, 1.0), Pred::Gt(100.0)])?;
            let b: Vec<u8> = data.iter().map(|&x| x.unsigned_abs() as u8).collect();
            check_column_ops(&rt, &b, &idx, &[Pred::Eq(3)])
        })
        .unwrap();
}

#[test]
fn offload_against_a_real_memd() {
    let server = farmem_memd::testing::TestServer::start(1 << 30);
    let mut cfg = RuntimeConfig::new(1 << 20);
    cfg.lanes = 2;
    let rt = Runtime::new(cfg, Arc::new(server.client())).unwrap();
    let data: Vec<i64> = (0..100_000i64).map(|i| (i * 7_919) % 10_007 - 5_000).collect();
    let col = Vector::from_slice(&rt, &data).unwrap();
    rt.evacuate_all().unwrap();
    assert!(col.remote_chunks() * 2 > col.chunk_count());
    assert_eq!(
        col.sum(Offload::Auto).unwrap(),
        farmem_objrt::containers::Sum::Int(data.iter().map(|&x| i128::from(x)).sum())
    );
    let mut sorted = data.clone();
    sorted.sort_unstable();
    assert_eq!(col.median(Offload::Remote).unwrap(), Some(sorted[(sorted.len() - 1) / 2]));
    assert_eq!(col.min(Offload::Remote).unwrap(), Some(sorted[0]));
    let rows = col.filter(Pred::Range(0, 10), Offload::Remote).unwrap();
    let want: Vec<u64> = (0..data.len() as u64).filter(|&i| (0..10).contains(&data[i as usize])).collect();
    assert_eq!(rows, want);
    let mut u = sorted.clone();
    u.dedup();
    assert_eq!(col.unique(Offload::Remote).unwrap(), u);

    let map = FarMap::<u64, [u64; 2]>::new(&rt).unwrap();
    for k in 0..30_000u64 {
        map.insert(k, [k, !k]).unwrap();
    }
    rt.evacuate_all().unwrap();
    let before = rt.stats().misses;
    for k in (0..40_000u64).step_by(37) {
        let want = (k < 30_000).then_some([k, !k]);
        assert_eq!(map.get_with(&k, Offload::Remote).unwrap(), want);
    }
    assert_eq!(rt.stats().misses, before, "offloaded lookups moved no bucket");
    let keys: Vec<u64> = (0..500).map(|k| k * 61).collect();
    let got = map.get_many(&keys, Offload::Remote).unwrap();
    assert!(got.iter().zip(&keys).all(|(g, &k)| *g == (k < 30_000).then_some([k, !k])));
    // Without the built-in types memd refuses; Auto falls back to running locally.
    let plain = Runtime::new(RuntimeConfig::new(4 << 20), Arc::new(MemStore::new(1 << 30))).unwrap();
    let v = Vector::from_slice(&plain, &[3u32, 1, 2]).unwrap();
    assert!(v.sum(Offload::Remote).is_err());
    assert_eq!(v.sum(Offload::Auto).unwrap(), farmem_objrt::containers::Sum::Int(6));
}

// ---------------------------------------------------------------------------------------------------------
// Prefetching, counted in far-store read requests.

#[derive(Debug)]
struct Counting {
    inner: MemStore,
    reads: AtomicU64,
}

impl FarStore for Counting {
    fn submit(&self, req: Request) -> Result<Pending, StoreError> {
        if matches!(req, Request::ReadObjects { .. }) {
            self.reads.fetch_add(1, Relaxed);
        }
        self.inner.submit(req)
    }
    fn describe(&self) -> String {
        "counting".into()
    }
}

fn counted(local_mem: usize) -> (Runtime, Arc<Counting>) {
    let store = Arc::new(Counting { inner: MemStore::new(1 << 32), reads: AtomicU64::new(0) });
    let mut cfg = RuntimeConfig::new(local_mem);
    cfg.evacuator_threads = 0;
    let rt = Runtime::new(cfg, Arc::clone(&store) as Arc<dyn FarStore>).unwrap();
    (rt, store)
}

#[test]
fn sequential_scan_is_batched() {
    let (rt, store) = counted(16 << 20);
    let per = 512; // u64 per chunk
    let chunks = 1024;
    let v = Vector::<u64>::from_slice(&rt, &(0..(per * chunks) as u64).collect::<Vec<_>>()).unwrap();
    let min_window = 4;
    // Iterator (sequential, direction known), index stream (stride detected), explicit prefetch.
    for pass in 0..3 {
        rt.evacuate_all().unwrap();
        assert_eq!(v.remote_chunks(), chunks);
        store.reads.store(0, Relaxed);
        let sum: u64 = match pass {
            0 => v.iter().sum(),
            1 => (0..v.len()).map(|i| v.read(i).unwrap()).sum(),
            _ => {
                let mut s = 0;
                for c in 0..chunks {
                    if c % 8 == 0 {
                        drop(v.prefetch(c * per..(c + 8) * per).unwrap());
                    }
                    s += (c * per..(c + 1) * per).map(|i| v.read(i).unwrap()).sum::<u64>();
                }
                s
            }
        };
        assert_eq!(sum, (0..(per * chunks) as u64).sum::<u64>());
        let reads = store.reads.load(Relaxed);
        assert!(reads <= (chunks / min_window) as u64 + 4, "pass {pass}: {reads} read requests for {chunks} chunks");
    }
    assert!(v.prefetch_stats().batches > 0);
}

#[test]
fn a_scan_is_not_a_second_use() {
    // A chunk a scan fetches is used once: the evacuator drops it (memd has it) instead of copying it to keep it
    // as hot (that a second use does make an object hot is `word::tests::touch_clears_what_it_should`).
    let rt = tight();
    let per: usize = 512; // u64 per chunk
    let chunks: usize = 1024; // 4 MiB: 4x the budget
    let a = Array::<u64>::from_slice(&rt, &(0..(per * chunks) as u64).collect::<Vec<_>>()).unwrap();
    rt.evacuate_all().unwrap();
    let before = rt.stats();
    for _ in 0..3 {
        let mut sum = 0u64;
        a.for_each_slice(|x| sum += x.iter().sum::<u64>());
        assert_eq!(sum, (0..(per * chunks) as u64).sum::<u64>());
    }
    let st = rt.stats();
    assert!(st.misses - before.misses >= 2 * chunks as u64, "the scans fetched: {st:?}");
    assert!(st.clean_drops > before.clean_drops, "scanned chunks were dropped: {st:?}");
    assert_eq!(st.compacted, before.compacted, "no scanned chunk was kept as hot: {st:?}");
}

#[test]
fn bulk_inserts_fetch_their_buckets_in_batches() {
    let (rt, store) = counted(16 << 20);
    let map = FarMap::<u64, u64>::new(&rt).unwrap();
    let n = 20_000u64;
    let first: Vec<(u64, u64)> = (0..n).map(|k| (k, k)).collect();
    assert!(map.insert_many(&first).unwrap().iter().all(Option::is_none));
    let buckets = map.bucket_count();
    rt.evacuate_all().unwrap();
    store.reads.store(0, Relaxed);
    // Every bucket is remote; replacing every value one by one reads each bucket in a request of its own, and in
    // runs of 64 entries (64 KiB of 1 KiB buckets) with one request per run.
    let again: Vec<(u64, u64)> = (0..n).map(|k| (k, k + 1)).collect();
    let old = map.insert_many(&again).unwrap();
    assert!(old.iter().zip(0..n).all(|(o, k)| *o == Some(k)));
    let reads = store.reads.load(Relaxed);
    let runs = n.div_ceil(64);
    assert!(buckets as u64 > 2 * runs, "{buckets} buckets: too few for the test to tell");
    assert!(reads <= runs, "{reads} read requests for {runs} runs over {buckets} remote buckets");
    assert_eq!(map.len(), n as usize);
    for k in (0..n).step_by(7) {
        assert_eq!(map.get(&k), Some(k + 1));
    }
}

#[test]
fn concurrent_bulk_inserts_split_and_keep_every_entry() {
    let rt = tight();
    let map = FarMap::<u64, u64>::new(&rt).unwrap();
    const PER: u64 = 20_000;
    on_four_threads(|t| {
        // Interleaved key ranges, so the threads fill and split the same buckets; each key twice in a batch: the
        // later value wins.
        let keys: Vec<u64> = (0..PER).map(|i| i * 4 + t).collect();
        for batch in keys.chunks(300) {
            let items: Vec<(u64, u64)> =
                batch.iter().map(|&k| (k, 1)).chain(batch.iter().map(|&k| (k, k * 2))).collect();
            let old = map.insert_many(&items).unwrap();
            let (a, b) = old.split_at(batch.len());
            assert!(a.iter().all(Option::is_none) && b.iter().all(|o| *o == Some(1)));
        }
    });
    assert_eq!(map.len(), (4 * PER) as usize);
    let keys: Vec<u64> = (0..4 * PER).collect();
    let want: Vec<Option<u64>> = keys.iter().map(|&k| Some(k * 2)).collect();
    assert_eq!(map.get_many(&keys, Offload::Local).unwrap(), want);
}

#[test]
fn strided_index_stream_is_detected() {
    let (rt, store) = counted(16 << 20);
    let per = 512usize;
    let a = Array::<u64>::from_elem(&rt, 1, per * 900).unwrap();
    rt.evacuate_all().unwrap();
    store.reads.store(0, Relaxed);
    // Every third chunk, reading one element of each.
    let mut touched = 0;
    for i in (0..a.len()).step_by(3 * per) {
        assert_eq!(a.read(i), Some(1));
        touched += 1;
    }
    let reads = store.reads.load(Relaxed) as usize;
    assert!(reads <= touched / 4 + 4, "{reads} read requests for {touched} strided chunks");
    assert!(a.remote_chunks() >= 2 * touched - 8, "chunks between the strides were not fetched");
}

#[test]
fn list_walks_prefetch_in_their_direction() {
    let (rt, store) = counted(16 << 20);
    let mut q = Queue::<u64>::new(&rt).unwrap();
    let mut st = Stack::<u64>::new(&rt).unwrap();
    let mut l = List::<u64>::new(&rt).unwrap();
    let n = 512 * 600;
    for i in 0..n {
        q.push(i).unwrap();
        st.push(i).unwrap();
        l.push_back(i).unwrap();
    }
    let nodes = l.node_count();
    for (what, walk) in [("queue pops", 0), ("stack pops", 1), ("list backwards", 2)] {
        rt.evacuate_all().unwrap();
        store.reads.store(0, Relaxed);
        match walk {
            0 => assert!((0..n).all(|i| q.pop() == Some(i))),
            1 => assert!((0..n).rev().all(|i| st.pop() == Some(i))),
            _ => assert!(l.iter().rev().eq((0..n).rev())),
        }
        let reads = store.reads.load(Relaxed) as usize;
        assert!(reads <= nodes / 4 + 4, "{what}: {reads} read requests for {nodes} nodes");
    }
}

#[test]
fn hashmap_readers_and_offloaded_lookups_race_with_splits() {
    let rt = tight();
    let map = FarMap::<u64, [u64; 3], Bucket256>::new(&rt).unwrap();
    const N: u64 = 30_000;
    std::thread::scope(|s| {
        let m = &map;
        s.spawn(move || {
            for k in 0..N {
                m.insert(k, [k, k + 1, k + 2]).unwrap();
            }
        });
        for t in 0..3u64 {
            s.spawn(move || {
                let mode = [Offload::Local, Offload::Remote, Offload::Auto][t as usize];
                let mut seen = 0;
                while seen < N / 2 {
                    // Keys below what this thread has seen present must stay visible through every split.
                    let keys: Vec<u64> = (0..64).map(|i| (seen * 31 + i * 7 + t) % (seen + 1)).collect();
                    let got = m.get_many(&keys, mode).unwrap();
                    for (k, g) in keys.iter().zip(&got) {
                        assert!(g.is_none_or(|v| v == [*k, k + 1, k + 2]), "key {k}: {g:?}");
                    }
                    if m.get(&seen).is_some() {
                        for k in (0..=seen).step_by(997) {
                            assert_eq!(m.get_with(&k, mode).unwrap(), Some([k, k + 1, k + 2]), "key {k}");
                        }
                        seen += 1 + seen / 8;
                    }
                }
            });
        }
    });
    assert_eq!(map.len(), N as usize);
}

#[test]
fn dropping_containers_frees_far_memory() {
    let store = Arc::new(MemStore::with_registry(1 << 32, builtin()));
    // No background evacuator: with one, the last batch of deletes may be in flight from the evacuator thread
    // when `flush_deletes` returns here (it does not wait for another thread's flush), which made this check
    // flaky (about 1 run in 8 found one container's chunks still stored).
    let mut cfg = RuntimeConfig::new(4 << 20);
    cfg.evacuator_threads = 0;
    let rt = Runtime::new(cfg, Arc::clone(&store) as Arc<dyn FarStore>).unwrap();
    {
        let col = Vector::from_slice(&rt, &(0..200_000u64).collect::<Vec<_>>()).unwrap();
        let map = FarMap::<u64, u64>::new(&rt).unwrap();
        for k in 0..50_000 {
            map.insert(k, k).unwrap();
        }
        let mut l = List::<u64>::new(&rt).unwrap();
        for k in 0..50_000 {
            l.push_front(k).unwrap();
        }
        rt.evacuate_all().unwrap();
        assert!(col.sum(Offload::Remote).is_ok());
        assert_eq!(map.get_with(&7, Offload::Remote).unwrap(), Some(7));
        let g = col.gather(&[5, 1, 5], Offload::Remote).unwrap();
        assert_eq!(g.to_vec(), vec![5, 1, 5]);
        assert!(store.engine().used() > 1 << 20);
    }
    rt.flush_deletes().unwrap();
    assert_eq!(store.engine().used(), 0, "every chunk, bucket and node was deleted in memd");
}

#[test]
fn containers_are_shareable_between_threads() {
    fn sync_send<T: Sync + Send>() {}
    sync_send::<Vector<'static, u64>>();
    sync_send::<Array<'static, f64>>();
    sync_send::<FarMap<'static, u64, u64>>();
    sync_send::<List<'static, u32>>();
    sync_send::<Queue<'static, u32>>();
    sync_send::<Stack<'static, u32>>();
}

#[test]
fn explicit_prefetch_batches_list_nodes_and_map_buckets() {
    let (rt, store) = counted(16 << 20);
    let mut l = List::<u64>::new(&rt).unwrap();
    for i in 0..512 * 40 {
        l.push_back(i).unwrap();
    }
    let m = FarMap::<u64, u64>::new(&rt).unwrap();
    for k in 0..20_000 {
        m.insert(k, k + 1).unwrap();
    }
    rt.evacuate_all().unwrap();
    store.reads.store(0, Relaxed);
    l.prefetch(512 * 10..512 * 30).unwrap().wait().unwrap();
    let keys: Vec<u64> = (0..200).map(|k| k * 97).collect();
    m.prefetch(&keys).unwrap().wait().unwrap();
    assert_eq!(store.reads.load(Relaxed), 2, "one request for the nodes, one for the buckets");
    for k in &keys {
        assert_eq!(m.get(k), Some(k + 1));
    }
    assert_eq!(store.reads.load(Relaxed), 2, "the buckets were local already");
    // Reading the prefetched nodes backwards: only the direction prefetcher's requests beyond node 10 remain.
    for i in (512 * 10..512 * 30).rev() {
        assert_eq!(l.read(i), Some(i as u64));
    }
    let s = l.prefetch_stats();
    assert_eq!(store.reads.load(Relaxed), 2 + s.batches, "{s:?}");
}

/// `for_each_slice_nt` sees the same elements as a caching scan, brings nothing into local memory, and sends a
/// request per window of remote chunks — in memory and over a socket (where replies are received in place),
/// with some chunks local (read in place), some dirty, and a partial last chunk.
#[test]
fn non_temporal_scan_matches_and_caches_nothing() {
    let server = farmem_memd::testing::TestServer::start(1 << 30);
    let (counted_rt, store) = counted(4 << 20);
    let mut cfg = RuntimeConfig::new(4 << 20);
    cfg.lanes = 2;
    let remote_rt = Runtime::new(cfg, Arc::new(server.client())).unwrap();
    for (name, rt) in [("in-process", &counted_rt), ("memd", &remote_rt)] {
        let n = 512 * 600 + 77;
        let data: Vec<u64> = (0..n as u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).collect();
        let mut a = Array::from_slice(rt, &data).unwrap();
        rt.evacuate_all().unwrap();
        // Some chunks local again (one of them dirty, so memd's copy is stale until written back).
        for c in (0..600).step_by(7) {
            assert_eq!(a.read(c * 512 + 3), Some(data[c * 512 + 3]));
        }
        a.set(7 * 512, 42).unwrap();
        let mut want = data.clone();
        want[7 * 512] = 42;
        let remote = a.remote_chunks();
        assert!(remote > 400 && remote < a.chunk_count(), "{name}: {remote} remote chunks");
        store.reads.store(0, Relaxed);
        let mut got = Vec::with_capacity(n);
        a.for_each_slice_nt(|s| got.extend_from_slice(s)).unwrap();
        assert_eq!(got.len(), n, "{name}");
        assert!(got == want, "{name}: the non-temporal scan differs");
        assert_eq!(a.remote_chunks(), remote, "{name}: nothing was brought in");
        if name == "in-process" {
            let reads = store.reads.load(Relaxed);
            // A window is the prefetcher's max_window: here half its max_ahead (a 16th of the budget), 32 chunks.
            let window = (4 << 20) / 16 / 4096 / 2;
            assert!(reads <= (a.chunk_count() / window) as u64 + 2, "{name}: {reads} requests");
        }
    }
}
