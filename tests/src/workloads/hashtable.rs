//! Hashtable: N keys with 32-byte values, then zipf(s)-distributed lookups (AIFM §6.1's hashtable shape).

use super::{fold, scaled, Outcome, Params, FOLD_START};
use crate::rng::{mix64, Rng, Zipf};
use farmem_objrt::{Offload, Runtime};
use std::collections::HashMap;
use std::time::Instant;

/// Bytes of a value.
pub const VALUE: usize = 32;
/// A value.
pub type Value = [u8; VALUE];

/// Keys in the table.
pub fn keys(p: &Params) -> u64 {
    scaled(750_000, p.scale)
}

/// Lookups in the timed phase.
pub fn lookups(p: &Params) -> u64 {
    scaled(500_000, p.scale)
}

/// Bytes the local table occupies: a std HashMap of this many entries has 2^k buckets of (key, value) plus one
/// control byte each.
pub fn working_set(p: &Params) -> u64 {
    let buckets = (keys(p) * 8 / 7).next_power_of_two();
    buckets * (8 + VALUE as u64 + 1)
}

/// The key of popularity rank `r` (0 = hottest): scattered over the key space.
pub fn key(seed: u64, r: u64) -> u64 {
    mix64(seed ^ r.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// The value stored under the key of rank `r`.
pub fn value(seed: u64, r: u64) -> Value {
    let mut v = [0u8; VALUE];
    for (i, c) in v.chunks_exact_mut(8).enumerate() {
        c.copy_from_slice(&mix64(seed.wrapping_add(r * 4 + i as u64)).to_le_bytes());
    }
    v
}

/// Folds a looked-up value into the checksum.
pub fn fold_value(acc: u64, v: &Value) -> u64 {
    fold(acc, u64::from_le_bytes(v[..8].try_into().expect("8 bytes")) ^ u64::from(v[VALUE - 1]))
}

/// The rank stream of thread `t` of the timed phase: `p.threads` threads share the `lookups(p)` lookups, each
/// drawing its own zipf stream (thread 0 of one thread draws the whole stream).
pub fn ranks(p: &Params, t: usize) -> impl Iterator<Item = u64> {
    let threads = p.threads.max(1) as u64;
    let t = t as u64;
    let n = lookups(p) / threads + u64::from(t < lookups(p) % threads);
    let z = Zipf::new(keys(p), p.zipf);
    let mut rng = Rng::new(p.seed ^ 0x100 ^ (t << 32));
    (0..n).map(move |_| z.sample(&mut rng) - 1)
}

/// Runs `per_thread(t)` for every thread `t` of the timed phase at once; returns the seconds they took and their
/// checksums folded in thread order (so every mode's checksum is comparable, however the threads interleave).
fn timed(p: &Params, per_thread: impl Fn(usize) -> anyhow::Result<u64> + Sync) -> anyhow::Result<(f64, u64)> {
    let t = Instant::now();
    let accs: Vec<anyhow::Result<u64>> = std::thread::scope(|s| {
        let f = &per_thread;
        let handles: Vec<_> = (0..p.threads.max(1)).map(|i| s.spawn(move || f(i))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a lookup thread panicked"))))
            .collect()
    });
    let secs = t.elapsed().as_secs_f64();
    let mut acc = FOLD_START;
    for a in accs {
        acc = fold(acc, a?);
    }
    Ok((secs, acc))
}

/// Thread `t`'s lookups in batches of `p.batch` keys: `get(keys)` returns their values in order, `each` is
/// called on every value in rank order.
fn batched<V>(
    p: &Params,
    t: usize,
    mut get: impl FnMut(&[u64]) -> anyhow::Result<Vec<Option<V>>>,
    mut each: impl FnMut(&V),
) -> anyhow::Result<()> {
    let mut ranks = ranks(p, t);
    let (mut rs, mut keys) = (Vec::with_capacity(p.batch), Vec::with_capacity(p.batch));
    loop {
        rs.clear();
        rs.extend(ranks.by_ref().take(p.batch.max(1)));
        if rs.is_empty() {
            return Ok(());
        }
        keys.clear();
        keys.extend(rs.iter().map(|&r| key(p.seed, r)));
        for (&r, v) in rs.iter().zip(get(&keys)?) {
            each(&v.ok_or_else(|| anyhow::anyhow!("key of rank {r} lost"))?);
        }
    }
}

/// std HashMap (local, paging, swap), `p.threads` threads looking up at once (one key at a time: std has no
/// batch API, and a thread that faults on a page waits for it).
pub fn local(p: &Params) -> Outcome {
    let t = Instant::now();
    let n = keys(p);
    let mut m: HashMap<u64, Value> = HashMap::with_capacity(usize::try_from(n).expect("fits"));
    for r in 0..n {
        m.insert(key(p.seed, r), value(p.seed, r));
    }
    let setup_secs = t.elapsed().as_secs_f64();
    let (secs, checksum) = timed(p, |t| {
        let mut acc = FOLD_START;
        for r in ranks(p, t) {
            acc = fold_value(acc, m.get(&key(p.seed, r)).expect("every key was inserted"));
        }
        Ok(acc)
    })
    .expect("local lookups cannot fail");
    Outcome { ops: lookups(p), secs, setup_secs, checksum, extra: vec![] }
}

/// objrt's HashMap (objects mode): `p.threads` threads, each looking up `p.batch` keys per `get_many` call so
/// that the misses of a batch are fetched in one request; buckets of `p.bucket` bytes.
pub fn objects(p: &Params, rt: &Runtime) -> anyhow::Result<Outcome> {
    use farmem_objrt::containers::{Bucket1K, Bucket256, Bucket4K};
    match p.bucket {
        256 => objects_in::<Bucket256>(p, rt),
        1024 => objects_in::<Bucket1K>(p, rt),
        4096 => objects_in::<Bucket4K>(p, rt),
        b => anyhow::bail!("bucket size {b} is not 256, 1024 or 4096"),
    }
}

fn objects_in<B: farmem_objrt::containers::BucketObj>(p: &Params, rt: &Runtime) -> anyhow::Result<Outcome> {
    let t = Instant::now();
    let m: farmem_objrt::HashMap<u64, Value, B> = farmem_objrt::HashMap::new(rt)?;
    for r in 0..keys(p) {
        m.insert(key(p.seed, r), value(p.seed, r))?;
    }
    let setup_secs = t.elapsed().as_secs_f64();
    let s0 = rt.stats();
    let cpu0 = process_cpu_secs();
    let (secs, checksum) = timed(p, |t| {
        let mut acc = FOLD_START;
        batched(p, t, |keys| Ok(m.get_many(keys, Offload::Local)?), |v: &Value| acc = fold_value(acc, v))?;
        Ok(acc)
    })?;
    let cpu = process_cpu_secs().zip(cpu0).map(|(b, a)| b - a);
    let s = rt.stats();
    let ms = |a: u64, b: u64| a.saturating_sub(b) as f64 / 1e6;
    // What the runtime did during the lookups: misses, and the time mutators spent waiting (summed over threads).
    let mut extra = vec![
        ("buckets".into(), m.bucket_count() as f64),
        ("misses".into(), s.misses.saturating_sub(s0.misses) as f64),
        ("evac_cycles".into(), s.evac_cycles.saturating_sub(s0.evac_cycles) as f64),
        ("alloc_wait_ms".into(), ms(s.alloc_wait_ns, s0.alloc_wait_ns)),
        ("scope_wait_ms".into(), ms(s.scope_wait_ns, s0.scope_wait_ns)),
        ("busy_wait_ms".into(), ms(s.busy_wait_ns, s0.busy_wait_ns)),
        ("grace_wait_ms".into(), ms(s.grace_wait_ns, s0.grace_wait_ns)),
        ("shared_misses".into(), s.shared_misses.saturating_sub(s0.shared_misses) as f64),
        ("clean_drops".into(), s.clean_drops.saturating_sub(s0.clean_drops) as f64),
        ("compacted".into(), s.compacted.saturating_sub(s0.compacted) as f64),
        ("cancelled".into(), s.evac_cancelled.saturating_sub(s0.evac_cancelled) as f64),
        ("overflow".into(), s.overflow_regions.saturating_sub(s0.overflow_regions) as f64),
    ];
    if let Some(c) = cpu {
        // The process's CPU time per lookup (all its threads: mutators, evacuator, memd client): what a CPU hog
        // beside the run cannot inflate the way it inflates wall time.
        extra.push(("cpu_us_per_op".into(), c * 1e6 / lookups(p) as f64));
    }
    Ok(Outcome { ops: lookups(p), secs, setup_secs, checksum, extra })
}

/// CPU time (user + system) of this process so far, from `/proc/self/stat` (clock ticks of 10 ms); `None` where
/// that file cannot be read.
fn process_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command (which may hold spaces) start at the last ')'; utime and stime are 14 and 15.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// Share of the budget the objrt part gets in hybrid mode: the index (key to row, about 16 B an entry) against
/// the values (32 B each).
pub const HYBRID_OBJRT_SHARE: f64 = 16.0 / 48.0;

/// The key-to-row index in objrt, the values in a std Vec on FarAlloc (hybrid mode).
pub fn hybrid(p: &Params, rt: &Runtime) -> anyhow::Result<Outcome> {
    let t = Instant::now();
    let index: farmem_objrt::HashMap<u64, u32> = farmem_objrt::HashMap::new(rt)?;
    let mut values: Vec<Value> = Vec::with_capacity(usize::try_from(keys(p))?);
    for r in 0..keys(p) {
        index.insert(key(p.seed, r), u32::try_from(r)?)?;
        values.push(value(p.seed, r));
    }
    let setup_secs = t.elapsed().as_secs_f64();
    let (secs, checksum) = timed(p, |t| {
        let mut acc = FOLD_START;
        batched(
            p,
            t,
            |keys| Ok(index.get_many(keys, Offload::Local)?),
            |&row| {
                acc = fold_value(acc, &values[row as usize]);
            },
        )?;
        Ok(acc)
    })?;
    Ok(Outcome { ops: lookups(p), secs, setup_secs, checksum, extra: vec![] })
}
