//! Web frontend, the shape of AIFM's §6.2 application: each request looks a user key up in a hashtable, reads the
//! 8 KiB array element it names (non-temporally: it is used once), and compresses it with snappy.

use super::{fold, scaled, Outcome, Params, FOLD_START};
use crate::rng::{mix64, Rng, Zipf};
use crate::workloads::array::{halves, Half};
use farmem_objrt::{Offload, Runtime};
use std::collections::HashMap;
use std::time::Instant;

/// Bytes of an element.
pub const ELEM: usize = 8192;
/// An element.
pub type Elem = [u8; ELEM];

/// Keys in the hashtable.
pub fn keys(p: &Params) -> u64 {
    scaled(250_000, p.scale)
}

/// Elements in the array.
pub fn elems(p: &Params) -> u64 {
    scaled(8_192, p.scale)
}

/// Requests in the timed phase.
pub fn requests(p: &Params) -> u64 {
    scaled(50_000, p.scale)
}

/// Bytes of the hashtable plus the array.
pub fn working_set(p: &Params) -> u64 {
    (keys(p) * 8 / 7).next_power_of_two() * (8 + 4 + 1) + elems(p) * ELEM as u64
}

/// The key of rank `r`.
pub fn key(seed: u64, r: u64) -> u64 {
    mix64(seed ^ 0x77 ^ r.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// The array index the key of rank `r` points at.
pub fn target(p: &Params, r: u64) -> u32 {
    u32::try_from(mix64(r ^ p.seed) % elems(p)).expect("fewer than 2^32 elements")
}

const WORDS: [&str; 16] = [
    "the ", "far ", "memory ", "page ", "object ", "remote ", "local ", "cache ", "evict ", "fetch ", "pointer ",
    "scope ", "runtime ", "server ", "client ", "batch ",
];

/// Fills element `i` with compressible text.
pub fn fill(seed: u64, i: u64, e: &mut Elem) {
    let mut rng = Rng::new(mix64(seed ^ 0x300 ^ i));
    let mut at = 0;
    while at < ELEM {
        let w = WORDS[usize::try_from(rng.below(16)).expect("small")].as_bytes();
        let n = w.len().min(ELEM - at);
        e[at..at + n].copy_from_slice(&w[..n]);
        at += n;
    }
}

/// The request stream: ranks of keys.
pub fn ranks(p: &Params) -> impl Iterator<Item = u64> {
    let z = Zipf::new(keys(p), p.zipf);
    let mut rng = Rng::new(p.seed ^ 0x400);
    (0..requests(p)).map(move |_| z.sample(&mut rng) - 1)
}

/// Serves one request's element: compress and fold.
pub fn respond(enc: &mut snap::raw::Encoder, e: &Elem, out: &mut Vec<u8>, acc: u64) -> u64 {
    out.resize(snap::raw::max_compress_len(ELEM), 0);
    let n = enc.compress(e, out).expect("snappy compresses any input");
    fold(fold(acc, n as u64), u64::from_le_bytes(out[n - 8..n].try_into().expect("8 bytes")))
}

/// The array as a std Vec (local, paging, swap, and hybrid's bulk data).
fn std_array(p: &Params) -> Vec<Elem> {
    let mut arr: Vec<Elem> = Vec::with_capacity(usize::try_from(elems(p)).expect("fits"));
    for i in 0..elems(p) {
        let mut e = [0u8; ELEM];
        fill(p.seed, i, &mut e);
        arr.push(e);
    }
    arr
}

/// Times the request stream: `element(rank, buf)` looks the key up and copies its element into `buf`.
fn serve(
    p: &Params,
    setup_secs: f64,
    mut element: impl FnMut(u64, &mut Elem) -> anyhow::Result<()>,
) -> anyhow::Result<Outcome> {
    let (mut enc, mut out, mut e) = (snap::raw::Encoder::new(), Vec::new(), [0u8; ELEM]);
    let t = Instant::now();
    let mut acc = FOLD_START;
    for r in ranks(p) {
        element(r, &mut e)?;
        acc = respond(&mut enc, &e, &mut out, acc);
    }
    Ok(Outcome { ops: requests(p), secs: t.elapsed().as_secs_f64(), setup_secs, checksum: acc, extra: vec![] })
}

/// std HashMap + Vec (local, paging, swap).
pub fn local(p: &Params) -> anyhow::Result<Outcome> {
    let t = Instant::now();
    let mut index: HashMap<u64, u32> = HashMap::with_capacity(usize::try_from(keys(p))?);
    for r in 0..keys(p) {
        index.insert(key(p.seed, r), target(p, r));
    }
    let arr = std_array(p);
    serve(p, t.elapsed().as_secs_f64(), |r, e| {
        e.copy_from_slice(&arr[index[&key(p.seed, r)] as usize]);
        Ok(())
    })
}

fn build_index<'rt>(p: &Params, rt: &'rt Runtime) -> anyhow::Result<farmem_objrt::HashMap<'rt, u64, u32>> {
    let index = farmem_objrt::HashMap::new(rt)?;
    for r in 0..keys(p) {
        index.insert(key(p.seed, r), target(p, r))?;
    }
    Ok(index)
}

/// objrt HashMap and Array; elements are read non-temporally (objects mode).
pub fn objects(p: &Params, rt: &Runtime) -> anyhow::Result<Outcome> {
    let t = Instant::now();
    let index = build_index(p, rt)?;
    let n = usize::try_from(elems(p))?;
    let mut arr: farmem_objrt::Array<Half> = farmem_objrt::Array::new(rt, 2 * n)?;
    let mut e = [0u8; ELEM];
    for i in 0..n {
        fill(p.seed, i as u64, &mut e);
        let (x, y) = halves(&e);
        arr.set(2 * i, x)?;
        arr.set(2 * i + 1, y)?;
    }
    serve(p, t.elapsed().as_secs_f64(), |r, e| {
        let i = index.get_with(&key(p.seed, r), Offload::Local)?.ok_or_else(|| anyhow::anyhow!("key {r} lost"))?;
        let i = i as usize;
        // Non-temporal: the element is used once, so it is not cached locally.
        e[..ELEM / 2].copy_from_slice(bytemuck::bytes_of(&arr.read_nt(2 * i)?));
        e[ELEM / 2..].copy_from_slice(bytemuck::bytes_of(&arr.read_nt(2 * i + 1)?));
        Ok(())
    })
}

/// Share of the budget for objrt in hybrid mode: the hashtable's part of the working set.
pub fn hybrid_objrt_share(p: &Params) -> f64 {
    let table = (keys(p) * 8 / 7).next_power_of_two() * (8 + 4 + 1);
    table as f64 / working_set(p) as f64
}

/// The hashtable in objrt, the array in a std Vec on FarAlloc (hybrid mode, AIFM's own split).
pub fn hybrid(p: &Params, rt: &Runtime) -> anyhow::Result<Outcome> {
    let t = Instant::now();
    let index = build_index(p, rt)?;
    let arr = std_array(p);
    serve(p, t.elapsed().as_secs_f64(), |r, e| {
        let i = index.get_with(&key(p.seed, r), Offload::Local)?.ok_or_else(|| anyhow::anyhow!("key {r} lost"))?;
        e.copy_from_slice(&arr[i as usize]);
        Ok(())
    })
}
