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

/// The rank stream of the timed phase.
pub fn ranks(p: &Params) -> impl Iterator<Item = u64> {
    let z = Zipf::new(keys(p), p.zipf);
    let mut rng = Rng::new(p.seed ^ 0x100);
    (0..lookups(p)).map(move |_| z.sample(&mut rng) - 1)
}

/// std HashMap (local, paging, swap).
pub fn local(p: &Params) -> Outcome {
    let t = Instant::now();
    let n = keys(p);
    let mut m: HashMap<u64, Value> = HashMap::with_capacity(usize::try_from(n).expect("fits"));
    for r in 0..n {
        m.insert(key(p.seed, r), value(p.seed, r));
    }
    let setup_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut acc = FOLD_START;
    for r in ranks(p) {
        acc = fold_value(acc, m.get(&key(p.seed, r)).expect("every key was inserted"));
    }
    Outcome { ops: lookups(p), secs: t.elapsed().as_secs_f64(), setup_secs, checksum: acc, extra: vec![] }
}

/// objrt's HashMap (objects mode).
pub fn objects(p: &Params, rt: &Runtime) -> anyhow::Result<Outcome> {
    let t = Instant::now();
    let m: farmem_objrt::HashMap<u64, Value> = farmem_objrt::HashMap::new(rt)?;
    for r in 0..keys(p) {
        m.insert(key(p.seed, r), value(p.seed, r))?;
    }
    let setup_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut acc = FOLD_START;
    for r in ranks(p) {
        let v = m.get_with(&key(p.seed, r), Offload::Local)?.ok_or_else(|| anyhow::anyhow!("key of rank {r} lost"))?;
        acc = fold_value(acc, &v);
    }
    Ok(Outcome { ops: lookups(p), secs: t.elapsed().as_secs_f64(), setup_secs, checksum: acc, extra: vec![] })
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
    let t = Instant::now();
    let mut acc = FOLD_START;
    for r in ranks(p) {
        let row = index.get_with(&key(p.seed, r), Offload::Local)?.ok_or_else(|| anyhow::anyhow!("key {r} lost"))?;
        acc = fold_value(acc, &values[row as usize]);
    }
    Ok(Outcome { ops: lookups(p), secs: t.elapsed().as_secs_f64(), setup_secs, checksum: acc, extra: vec![] })
}
