//! Array: 8 KiB elements read in one sequential pass, then at uniformly random indices.

use super::{fold, scaled, sum_words, Outcome, Params, FOLD_START};
use crate::rng::{mix64, Rng};
use farmem_objrt::Runtime;
use std::time::Instant;

/// Bytes of an element.
pub const ELEM: usize = 8192;
/// An element.
pub type Elem = [u8; ELEM];

/// Elements in the array.
pub fn elems(p: &Params) -> u64 {
    scaled(8_192, p.scale)
}

/// Random reads in the second phase.
pub fn random_reads(p: &Params) -> u64 {
    scaled(16_384, p.scale)
}

/// Bytes of the array.
pub fn working_set(p: &Params) -> u64 {
    elems(p) * ELEM as u64
}

/// Fills element `i`.
pub fn fill(seed: u64, i: u64, e: &mut Elem) {
    let base = mix64(seed ^ i);
    for (k, c) in e.chunks_exact_mut(8).enumerate() {
        c.copy_from_slice(&base.wrapping_add(k as u64).to_le_bytes());
    }
}

/// The random index stream.
pub fn random_indices(p: &Params) -> impl Iterator<Item = u64> {
    let n = elems(p);
    let mut rng = Rng::new(p.seed ^ 0x200);
    (0..random_reads(p)).map(move |_| rng.below(n))
}

/// Reports both phases in one outcome.
pub fn outcome(p: &Params, setup_secs: f64, seq: (f64, u64), rand: (f64, u64)) -> Outcome {
    let n = elems(p) as f64;
    let r = random_reads(p) as f64;
    Outcome {
        ops: elems(p) + random_reads(p),
        secs: seq.0 + rand.0,
        setup_secs,
        checksum: fold(seq.1, rand.1),
        extra: vec![("seq_gb_per_s".into(), n * ELEM as f64 / seq.0 / 1e9), ("random_reads_per_s".into(), r / rand.0)],
    }
}

/// A boxed slice of elements (local, paging, swap).
pub fn local(p: &Params) -> Outcome {
    let t = Instant::now();
    let n = usize::try_from(elems(p)).expect("fits");
    let mut a: Vec<Elem> = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let mut e = [0u8; ELEM];
        fill(p.seed, i, &mut e);
        a.push(e);
    }
    let setup = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut acc = FOLD_START;
    for e in &a {
        acc = fold(acc, sum_words(e));
    }
    let seq = (t.elapsed().as_secs_f64(), acc);
    let t = Instant::now();
    let mut acc = FOLD_START;
    for i in random_indices(p) {
        acc = fold(acc, sum_words(&a[usize::try_from(i).expect("fits")]));
    }
    outcome(p, setup, seq, (t.elapsed().as_secs_f64(), acc))
}

/// Half an element: objrt's containers hold elements of at most 4 KiB, so an 8 KiB element is two of these.
pub type Half = [u128; ELEM / 32];

/// Splits an element into its two halves.
pub fn halves(e: &Elem) -> (Half, Half) {
    let (a, b) = e.split_at(ELEM / 2);
    (bytemuck::pod_read_unaligned(a), bytemuck::pod_read_unaligned(b))
}

/// Sums an element's words from its halves (the same value as [`sum_words`] over the element).
pub fn sum_halves(a: &Half, b: &Half) -> u64 {
    sum_words(bytemuck::bytes_of(a)).wrapping_add(sum_words(bytemuck::bytes_of(b)))
}

/// objrt's Array, two 4 KiB entries per element (objects mode).
pub fn objects(p: &Params, rt: &Runtime) -> anyhow::Result<Outcome> {
    let t = Instant::now();
    let n = usize::try_from(elems(p))?;
    let mut a: farmem_objrt::Array<Half> = farmem_objrt::Array::new(rt, 2 * n)?;
    let mut e = [0u8; ELEM];
    for i in 0..n {
        fill(p.seed, i as u64, &mut e);
        let (x, y) = halves(&e);
        a.set(2 * i, x)?;
        a.set(2 * i + 1, y)?;
    }
    let setup = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut acc = FOLD_START;
    let mut it = a.iter();
    while let (Some(x), Some(y)) = (it.next(), it.next()) {
        acc = fold(acc, sum_halves(&x, &y));
    }
    let seq = (t.elapsed().as_secs_f64(), acc);
    let t = Instant::now();
    let mut acc = FOLD_START;
    for i in random_indices(p) {
        let i = usize::try_from(i)?;
        let (x, y) = (a.read(2 * i), a.read(2 * i + 1));
        let (x, y) = x.zip(y).ok_or_else(|| anyhow::anyhow!("element {i} lost"))?;
        acc = fold(acc, sum_halves(&x, &y));
    }
    Ok(outcome(p, setup, seq, (t.elapsed().as_secs_f64(), acc)))
}
