//! The cost of a local dereference next to a `Box` dereference, for instruction counts: sums 4096 `u64` objects
//! through `FarBox`es (in a scope the summing function opens) and through `Box`es, `PASSES` times each, in
//! functions that are never inlined, so that callgrind attributes the instructions to them:
//!
//! ```text
//! cargo build --release -p farmem-objrt --example deref_cost
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/deref.cg target/release/examples/deref_cost
//! callgrind_annotate --inclusive=yes /tmp/deref.cg | grep -E 'sum_(far|box)'
//! ```
//! Instructions per dereference = the function's inclusive count / (`PASSES` × 4096) (`sum_far`'s includes
//! opening and closing its scope, about 90 instructions a pass). The same loops are timed by
//! `cargo bench -p farmem-objrt --bench objrt` (its summary prints the ratio).

use farmem_objrt::{DerefScope, FarBox, Runtime, RuntimeConfig};
use std::hint::black_box;
use std::sync::Arc;

const N: u64 = 4096;
const PASSES: usize = 100;

#[path = "../benches/common/deref_loops.rs"]
mod deref_loops;
use deref_loops::{sum_box, sum_box_box, sum_far, sum_far_in};

pub fn main() {
    let mut cfg = RuntimeConfig::new(64 << 20);
    cfg.evacuator_threads = 0;
    let rt = Runtime::new(cfg, Arc::new(farmem_memd::MemStore::new(1 << 30))).expect("start the runtime");
    let far: Vec<FarBox<u64>> = (0..N).map(|i| FarBox::new_in(&rt, i)).collect();
    let boxed: Vec<Box<u64>> = (0..N).map(Box::new).collect();
    let boxbox: Vec<Box<Box<u64>>> = (0..N).map(Box::new).collect::<Vec<_>>().into_iter().map(Box::new).collect();
    let want = N * (N - 1) / 2;
    let hits_before = rt.stats().hits;
    let s = DerefScope::new();
    for _ in 0..PASSES {
        assert_eq!(sum_box(black_box(&boxed)), want);
        assert_eq!(sum_far(black_box(&far)), want);
        assert_eq!(sum_far_in(black_box(&far), &s), want);
        assert_eq!(sum_box_box(black_box(&boxbox)), want);
    }
    drop(s);
    let hits = rt.stats().hits - hits_before;
    if cfg!(feature = "hit-stats") {
        // Process-wide: at least this thread's dereferences (other tests may add theirs).
        assert!(hits >= 2 * PASSES as u64 * N, "hits {hits}");
    }
    println!("{} dereferences of each kind, {hits} hits counted", PASSES as u64 * N);
}
