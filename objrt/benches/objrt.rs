//! objrt benchmarks, each against its baseline in the same run:
//! - local dereference vs `Box` dereference (goal ≤ 1.2×);
//! - remote dereference (fetch + install) vs one memd object read round trip (goal ≤ 1.3×), over a loopback memd
//!   (`TestServer` + `Client`);
//! - evacuator write-back throughput vs memd's pipelined batched object writes of the same bytes (reported).
//!
//! `cargo bench -p farmem-objrt --bench objrt`. After criterion's figures, a summary prints the three ratios
//! measured in this process.

#![allow(clippy::cast_possible_truncation, reason = "fill bytes are taken modulo 251")]

use criterion::{black_box, criterion_group, Criterion};
use farmem_memd::testing::TestServer;
use farmem_memd::{FarStore, ObjBatch, Pending, Request};
use farmem_objrt::{DerefScope, FarBox, Runtime, RuntimeConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};

const N_LOCAL: usize = 4096;

/// The dereference whose machine code the fast-path comment in `ptr.rs` describes (`objdump -d` the bench
/// binary and look for `deref_one` and `sum_far`).
#[inline(never)]
pub fn deref_one(b: &FarBox<u64>, s: &DerefScope) -> u64 {
    *b.deref(s)
}

// Like with like: both sums read every object through its pointer, in the same iterator shape, and get their
// slice through the same `black_box`. A dereference needs a scope and a `Box` does not, so the far sum opens its
// scope itself, once per pass of 4096 dereferences, as a user does (`let s = DerefScope::new(); for … {
// b.deref(&s) … }`): that is what a user always pays, and it is in the timed figure (about 0.01 ns a
// dereference). `sum_far_in`, given a scope by reference by a caller that is not inlined, is the other shape: its
// hit count must live in memory, so it pays a memory increment per dereference; it is reported beside.

#[path = "common/deref_loops.rs"]
mod deref_loops;
use deref_loops::{sum_box, sum_box_box, sum_far, sum_far_in};

fn local_runtime() -> Runtime {
    let mut cfg = RuntimeConfig::new(64 << 20);
    cfg.evacuator_threads = 0;
    Runtime::new(cfg, Arc::new(farmem_memd::MemStore::new(1 << 30))).expect("runtime")
}

/// Local-deref timing for the summary: `ROUNDS` rounds, each timing `PASSES` passes of every variant in turn
/// (interleaved, so a burst of load from other processes hits all of them alike). Other load on the machine only
/// ever adds time, so the figure of each variant is its fastest round, and the ratio is taken between those; the
/// median of the per-round ratios is printed beside as a check.
const ROUNDS: usize = 300;
const PASSES: usize = 20;

fn fastest_rounds(fs: &mut [&mut dyn FnMut() -> u64]) -> (Vec<f64>, Vec<Vec<f64>>) {
    let mut best = vec![f64::MAX; fs.len()];
    let mut rounds = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let mut r = Vec::with_capacity(fs.len());
        for (k, f) in fs.iter_mut().enumerate() {
            let t = Instant::now();
            for _ in 0..PASSES {
                black_box(f());
            }
            let ns = t.elapsed().as_secs_f64() * 1e9 / (PASSES * N_LOCAL) as f64;
            best[k] = best[k].min(ns);
            r.push(ns);
        }
        rounds.push(r);
    }
    (best, rounds)
}

fn median_ratio(rounds: &[Vec<f64>], k: usize) -> f64 {
    let mut v: Vec<f64> = rounds.iter().map(|r| r[k] / r[0]).collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bench_local(c: &mut Criterion) {
    let rt = local_runtime();
    let far: Vec<FarBox<u64>> = (0..N_LOCAL as u64).map(|i| FarBox::new_in(&rt, i)).collect();
    let boxed: Vec<Box<u64>> = (0..N_LOCAL as u64).map(Box::new).collect();
    let mut g = c.benchmark_group("local_deref_4096");
    g.bench_function("box", |b| b.iter(|| sum_box(black_box(&boxed))));
    g.bench_function("farbox", |b| b.iter(|| sum_far(black_box(&far))));
    g.bench_function("farbox_scope_by_ref", |b| {
        let s = DerefScope::new();
        b.iter(|| sum_far_in(black_box(&far), &s))
    });
    let inner: Vec<Box<u64>> = (0..N_LOCAL as u64).map(Box::new).collect();
    let boxbox: Vec<Box<Box<u64>>> = inner.into_iter().map(Box::new).collect();
    g.bench_function("box_box_reference", |b| b.iter(|| sum_box_box(black_box(&boxbox))));
    g.finish();
    let s = DerefScope::new();
    assert_eq!(deref_one(&far[1], &s), 1);
    assert_eq!(sum_far(&far), sum_box(&boxed));
}

fn remote_setup(size: usize) -> (TestServer, Runtime, FarBox<[u8; 4096]>, Arc<dyn FarStore>) {
    let srv = TestServer::start(1 << 30);
    let store: Arc<dyn FarStore> = Arc::new(srv.client());
    // A background evacuator reclaims the regions that the repeated fetches fill.
    let rt = Runtime::new(RuntimeConfig::new(64 << 20), Arc::clone(&store)).expect("runtime");
    assert_eq!(size, 4096);
    let b = FarBox::new_in(&rt, [7u8; 4096]);
    (srv, rt, b, store)
}

/// One remote dereference: evict (untimed), then time the dereference that fetches it back.
fn remote_deref(b: &mut FarBox<[u8; 4096]>, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        b.evict().expect("evict");
        let t = Instant::now();
        {
            let s = DerefScope::new();
            black_box(b.deref(&s)[17]);
        }
        total += t.elapsed();
    }
    total
}

fn read_rtt(store: &dyn FarStore, ds: u64, id: u64, iters: u64) -> Duration {
    let t = Instant::now();
    for _ in 0..iters {
        black_box(store.read_object(ds, id).expect("read").expect("present"));
    }
    t.elapsed()
}

fn bench_remote(c: &mut Criterion) {
    let (_srv, rt, mut b, store) = remote_setup(4096);
    let ds = rt.space_ds(farmem_objrt::Space::DEFAULT);
    b.evict().expect("evict");
    let id = b.id();
    let mut g = c.benchmark_group("remote_4KiB");
    g.bench_function("memd_read_object_rtt", |bch| bch.iter_custom(|n| read_rtt(&*store, ds, id, n)));
    g.bench_function("farbox_remote_deref", |bch| bch.iter_custom(|n| remote_deref(&mut b, n)));
    g.finish();
}

const WB_OBJ: usize = 4096;
const WB_N: usize = 8192; // 32 MiB

fn writeback_runtime(store: Arc<dyn FarStore>) -> Runtime {
    let mut cfg = RuntimeConfig::new(128 << 20);
    cfg.evacuator_threads = 0;
    Runtime::new(cfg, store).expect("runtime")
}

/// Evacuator write-back of WB_N dirty 4 KiB objects; returns the time of `evacuate_all`.
fn evac_writeback(store: &Arc<dyn FarStore>) -> Duration {
    let rt = writeback_runtime(Arc::clone(store));
    let objs: Vec<FarBox<[u8; WB_OBJ]>> = (0..WB_N).map(|i| FarBox::new_in(&rt, [(i % 251) as u8; WB_OBJ])).collect();
    let t = Instant::now();
    rt.evacuate_all().expect("evacuate");
    let d = t.elapsed();
    assert_eq!(rt.stats().written_back, WB_N as u64);
    drop(objs);
    d
}

/// memd's own pipelined batched writes of the same bytes in 4 MiB batches.
fn memd_batched_write(store: &Arc<dyn FarStore>) -> Duration {
    let ds = farmem_memd::far::fresh_space_id();
    let per = (4 << 20) / WB_OBJ;
    let batches: Vec<ObjBatch> = (0..WB_N / per)
        .map(|k| {
            let mut b = ObjBatch::new();
            for i in 0..per {
                b.push((k * per + i) as u64, &[(i % 251) as u8; WB_OBJ]);
            }
            b
        })
        .collect();
    let t = Instant::now();
    let pend: Vec<Pending> =
        batches.into_iter().map(|batch| store.submit(Request::WriteObjects { ds, batch }).expect("submit")).collect();
    for p in pend {
        p.wait().expect("write");
    }
    let d = t.elapsed();
    store.drop_objects(ds).expect("drop");
    d
}

fn bench_writeback(c: &mut Criterion) {
    let srv = TestServer::start(4 << 30);
    let store: Arc<dyn FarStore> = Arc::new(srv.client());
    let mut g = c.benchmark_group("writeback_32MiB");
    g.sample_size(10);
    g.throughput(criterion::Throughput::Bytes((WB_N * WB_OBJ) as u64));
    g.bench_function("memd_batched_write", |b| b.iter_custom(|n| (0..n).map(|_| memd_batched_write(&store)).sum()));
    g.bench_function("evacuator_writeback", |b| b.iter_custom(|n| (0..n).map(|_| evac_writeback(&store)).sum()));
    g.finish();
}

fn summary() {
    // Local.
    let rt = local_runtime();
    let far: Vec<FarBox<u64>> = (0..N_LOCAL as u64).map(|i| FarBox::new_in(&rt, i)).collect();
    let boxed: Vec<Box<u64>> = (0..N_LOCAL as u64).map(Box::new).collect();
    // Inner boxes first, then the outer ones: two separate streams of heap blocks, as the slots and the objects are.
    let inner: Vec<Box<u64>> = (0..N_LOCAL as u64).map(Box::new).collect();
    let boxbox: Vec<Box<Box<u64>>> = inner.into_iter().map(Box::new).collect();
    let s = DerefScope::new();
    let (best, rounds) = fastest_rounds(&mut [
        &mut || sum_box(black_box(&boxed)),
        &mut || sum_far(black_box(&far)),
        &mut || sum_far_in(black_box(&far), &s),
        &mut || sum_box_box(black_box(&boxbox)),
    ]);
    drop(s);
    // Remote.
    let (_srv, rt2, mut b, store) = remote_setup(4096);
    let ds = rt2.space_ds(farmem_objrt::Space::DEFAULT);
    b.evict().expect("evict");
    let id = b.id();
    // Alternate single operations and take per-operation medians: robust against other load on the machine.
    let mut rtt = Vec::new();
    let mut rd = Vec::new();
    for _ in 0..2000 {
        rtt.push(read_rtt(&*store, ds, id, 1));
        rd.push(remote_deref(&mut b, 1));
    }
    rtt.sort();
    rd.sort();
    // Write-back.
    let srv = TestServer::start(4 << 30);
    let wstore: Arc<dyn FarStore> = Arc::new(srv.client());
    let mut mw = Vec::new();
    let mut ew = Vec::new();
    for _ in 0..3 {
        mw.push(memd_batched_write(&wstore));
        ew.push(evac_writeback(&wstore));
    }
    mw.sort();
    ew.sort();
    let gbs = |d: Duration| (WB_N * WB_OBJ) as f64 / d.as_secs_f64() / 1e9;
    println!("\nobjrt summary (medians, this run):");
    println!(
        "  local deref : farbox {:.3} ns/deref, box {:.3} ns/deref, ratio {:.2}x (median of rounds {:.2}x; goal <= 1.2x)",
        best[1],
        best[0],
        best[1] / best[0],
        median_ratio(&rounds, 1)
    );
    println!(
        "                scope passed by reference: {:.3} ns/deref, ratio {:.2}x (median of rounds {:.2}x)",
        best[2],
        best[2] / best[0],
        median_ratio(&rounds, 2)
    );
    println!(
        "                reference, Box<Box<u64>> (three dependent loads): {:.3} ns/deref, ratio {:.2}x (median of \
         rounds {:.2}x)",
        best[3],
        best[3] / best[0],
        median_ratio(&rounds, 3)
    );
    println!(
        "  remote deref: farbox {:.1} us, memd 4 KiB read rtt {:.1} us, ratio {:.2}x (goal <= 1.3x)",
        rd[1000].as_secs_f64() * 1e6,
        rtt[1000].as_secs_f64() * 1e6,
        rd[1000].as_secs_f64() / rtt[1000].as_secs_f64()
    );
    println!(
        "  write-back  : evacuator {:.2} GB/s, memd batched writes {:.2} GB/s, ratio {:.2}x",
        gbs(ew[1]),
        gbs(mw[1]),
        gbs(ew[1]) / gbs(mw[1])
    );
}

criterion_group!(benches, bench_local, bench_remote, bench_writeback);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
