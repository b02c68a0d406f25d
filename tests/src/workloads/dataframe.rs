//! DataFrame analytics over a synthetic NYC-taxi table (see [`crate::taxi`]): the usual Kaggle queries —
//! trips and mean duration per passenger count, mean fare per pickup hour, a distance filter, the fares sorted,
//! and the distinct passenger counts.

use super::{fold, scaled, Outcome, Params, FOLD_START};
use crate::taxi;
use farmem_memd::offload::layout::{Pred, Sum};
use farmem_objrt::{Offload, Runtime, Vector};
use std::time::Instant;

/// Rows of the table.
pub fn rows(p: &Params) -> u64 {
    scaled(1_000_000, p.scale)
}

/// Bytes of the ten 8-byte columns.
pub fn working_set(p: &Params) -> u64 {
    rows(p) * 8 * taxi::COLUMNS.len() as u64
}

/// The columns the queries read, in memory.
#[derive(Debug, Default)]
pub struct Columns {
    /// Pickup times.
    pub pickup: Vec<i64>,
    /// Dropoff times.
    pub dropoff: Vec<i64>,
    /// Passenger counts.
    pub passengers: Vec<i64>,
    /// Trip distances.
    pub distance: Vec<f64>,
    /// Fares.
    pub fare: Vec<f64>,
    /// Tips.
    pub tip: Vec<f64>,
    /// Coordinates (kept so the table has its real width; no query reads them).
    pub coords: [Vec<f64>; 4],
}

/// Generates the table.
pub fn generate(p: &Params) -> Columns {
    let n = usize::try_from(rows(p)).expect("fits");
    let mut c = Columns {
        pickup: Vec::with_capacity(n),
        dropoff: Vec::with_capacity(n),
        passengers: Vec::with_capacity(n),
        distance: Vec::with_capacity(n),
        fare: Vec::with_capacity(n),
        tip: Vec::with_capacity(n),
        coords: std::array::from_fn(|_| Vec::with_capacity(n)),
    };
    for i in 0..rows(p) {
        let t = taxi::trip(p.seed, i);
        c.pickup.push(t.pickup);
        c.dropoff.push(t.dropoff);
        c.passengers.push(t.passengers);
        c.distance.push(t.distance);
        c.fare.push(t.fare);
        c.tip.push(t.tip);
        for (col, v) in c.coords.iter_mut().zip([t.pickup_lon, t.pickup_lat, t.dropoff_lon, t.dropoff_lat]) {
            col.push(v);
        }
    }
    c
}

/// Query results, folded in a fixed order by [`Answers::checksum`]. Each is defined so that every mode computes
/// it bit for bit the same: durations are summed as integers, floats are summed in row order, the median is the
/// lower median.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Answers {
    /// Trips per passenger count 1..=6.
    pub trips_by_passengers: [u64; 7],
    /// Total trip seconds per passenger count.
    pub duration_by_passengers: [i64; 7],
    /// Mean fare per pickup hour of day (fares summed in row order).
    pub mean_fare_by_hour: [f64; 24],
    /// Trips over 10 miles, and the sums of their fares and of their tips (row order).
    pub long_trips: (u64, f64, f64),
    /// The lower median fare and the ten largest fares, largest first.
    pub fare_order: Vec<f64>,
    /// Distinct passenger counts, ascending.
    pub distinct_passengers: Vec<i64>,
}

impl Answers {
    /// The checksum of all answers.
    pub fn checksum(&self) -> u64 {
        let mut a = FOLD_START;
        for (&n, &d) in self.trips_by_passengers.iter().zip(&self.duration_by_passengers) {
            a = fold(fold(a, n), d.cast_unsigned());
        }
        for &x in self.mean_fare_by_hour.iter().chain(&self.fare_order) {
            a = fold(a, x.to_bits());
        }
        a = fold(fold(fold(a, self.long_trips.0), self.long_trips.1.to_bits()), self.long_trips.2.to_bits());
        for &x in &self.distinct_passengers {
            a = fold(a, x.cast_unsigned());
        }
        a
    }
}

/// Minimum fare distance for the long-trip query.
pub const LONG_TRIP_MILES: f64 = 10.0;

/// Keeps the ten largest values seen, largest first.
#[derive(Debug, Default)]
pub struct Top10(Vec<f64>);

impl Top10 {
    /// Offers a value.
    pub fn push(&mut self, x: f64) {
        if self.0.len() < 10 || x > self.0[9] {
            let at = self.0.partition_point(|&y| y >= x);
            self.0.insert(at, x);
            self.0.truncate(10);
        }
    }
}

/// The queries over in-memory columns (local, paging, swap).
pub fn queries(c: &Columns) -> Answers {
    let mut a = Answers::default();
    for ((&p, &pu), &dr) in c.passengers.iter().zip(&c.pickup).zip(&c.dropoff) {
        let p = usize::try_from(p).expect("1..=6");
        a.trips_by_passengers[p] += 1;
        a.duration_by_passengers[p] += dr - pu;
    }
    a.mean_fare_by_hour = fare_by_hour(c.pickup.iter().copied().zip(c.fare.iter().copied()));
    for ((&d, &f), &t) in c.distance.iter().zip(&c.fare).zip(&c.tip) {
        if d > LONG_TRIP_MILES {
            a.long_trips.0 += 1;
            a.long_trips.1 += f;
            a.long_trips.2 += t;
        }
    }
    // Sorting by a column.
    let mut sorted = c.fare.clone();
    sorted.sort_unstable_by(f64::total_cmp);
    a.fare_order = vec![sorted[(sorted.len() - 1) / 2]];
    a.fare_order.extend(sorted.iter().rev().take(10));
    let mut seen = [false; 7];
    for &p in &c.passengers {
        seen[usize::try_from(p).expect("1..=6")] = true;
    }
    a.distinct_passengers = (1..7i64).zip(&seen[1..]).filter(|(_, &s)| s).map(|(p, _)| p).collect();
    a
}

/// Mean fare per pickup hour from (pickup, fare) pairs in row order.
pub fn fare_by_hour(rows: impl Iterator<Item = (i64, f64)>) -> [f64; 24] {
    let (mut sum, mut n) = ([0f64; 24], [0u64; 24]);
    for (pu, f) in rows {
        let h = usize::try_from(pu / 3600 % 24).expect("0..24");
        sum[h] += f;
        n[h] += 1;
    }
    hour_means(sum, n)
}

/// Means from per-hour sums and counts.
pub fn hour_means(sum: [f64; 24], n: [u64; 24]) -> [f64; 24] {
    let mut out = [0f64; 24];
    for ((o, s), n) in out.iter_mut().zip(sum).zip(n) {
        *o = s / n.max(1) as f64;
    }
    out
}

/// Generates the table and times the queries (local, paging, swap).
pub fn local(p: &Params) -> Outcome {
    let t = Instant::now();
    let c = generate(p);
    let setup_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let a = queries(&c);
    Outcome { ops: rows(p), secs: t.elapsed().as_secs_f64(), setup_secs, checksum: a.checksum(), extra: vec![] }
}

/// The queried columns as objrt Vectors.
struct FarColumns<'rt> {
    pickup: Vector<'rt, i64>,
    dropoff: Vector<'rt, i64>,
    passengers: Vector<'rt, i64>,
    distance: Vector<'rt, f64>,
    fare: Vector<'rt, f64>,
    tip: Vector<'rt, f64>,
}

/// Builds the table: the queried columns in objrt; the coordinates in objrt too (`coords_far = false`) or in std
/// Vecs on FarAlloc (hybrid).
fn build<'rt>(p: &Params, rt: &'rt Runtime, coords: &mut CoordStore<'rt>) -> anyhow::Result<FarColumns<'rt>> {
    let mut c = FarColumns {
        pickup: Vector::new(rt)?,
        dropoff: Vector::new(rt)?,
        passengers: Vector::new(rt)?,
        distance: Vector::new(rt)?,
        fare: Vector::new(rt)?,
        tip: Vector::new(rt)?,
    };
    const BATCH: u64 = 4096;
    let mut start = 0;
    while start < rows(p) {
        let end = (start + BATCH).min(rows(p));
        let trips: Vec<taxi::Trip> = (start..end).map(|i| taxi::trip(p.seed, i)).collect();
        let col_i = |f: fn(&taxi::Trip) -> i64| trips.iter().map(f).collect::<Vec<i64>>();
        let col_f = |f: fn(&taxi::Trip) -> f64| trips.iter().map(f).collect::<Vec<f64>>();
        c.pickup.extend_from_slice(&col_i(|t| t.pickup))?;
        c.dropoff.extend_from_slice(&col_i(|t| t.dropoff))?;
        c.passengers.extend_from_slice(&col_i(|t| t.passengers))?;
        c.distance.extend_from_slice(&col_f(|t| t.distance))?;
        c.fare.extend_from_slice(&col_f(|t| t.fare))?;
        c.tip.extend_from_slice(&col_f(|t| t.tip))?;
        let cs = [col_f(|t| t.pickup_lon), col_f(|t| t.pickup_lat), col_f(|t| t.dropoff_lon), col_f(|t| t.dropoff_lat)];
        coords.extend(&cs)?;
        start = end;
    }
    Ok(c)
}

/// Where the never-queried coordinate columns live.
enum CoordStore<'rt> {
    Objrt(Vec<Vector<'rt, f64>>),
    Std(Vec<Vec<f64>>),
}

impl CoordStore<'_> {
    fn extend(&mut self, cols: &[Vec<f64>; 4]) -> anyhow::Result<()> {
        match self {
            CoordStore::Objrt(v) => {
                for (dst, src) in v.iter_mut().zip(cols) {
                    dst.extend_from_slice(src)?;
                }
            }
            CoordStore::Std(v) => {
                for (dst, src) in v.iter_mut().zip(cols) {
                    dst.extend_from_slice(src);
                }
            }
        }
        Ok(())
    }
}

fn sum_i(s: Sum) -> anyhow::Result<i64> {
    match s {
        Sum::Int(v) => Ok(i64::try_from(v)?),
        Sum::Float(_) => anyhow::bail!("an integer column summed as float"),
    }
}

fn sum_f(s: Sum) -> anyhow::Result<f64> {
    match s {
        Sum::Float(v) => Ok(v),
        Sum::Int(_) => anyhow::bail!("a float column summed as integer"),
    }
}

/// The queries through objrt's column operations, offloaded to memd when `p.offload` and the data is remote.
fn far_queries(p: &Params, c: &FarColumns<'_>) -> anyhow::Result<Answers> {
    let mode = if p.offload { Offload::Auto } else { Offload::Local };
    let mut a = Answers::default();
    for pc in 1..7i64 {
        let idx = c.passengers.filter(Pred::Eq(pc), mode)?;
        let slot = usize::try_from(pc)?;
        a.trips_by_passengers[slot] = idx.len() as u64;
        if !idx.is_empty() {
            let d = sum_i(c.dropoff.gather(&idx, mode)?.sum(mode)?)?;
            let u = sum_i(c.pickup.gather(&idx, mode)?.sum(mode)?)?;
            a.duration_by_passengers[slot] = d - u;
        }
    }
    // One column at a time: two live iterators would keep this thread pinned, and nothing could be evacuated.
    let mut hours: Vec<u8> = Vec::with_capacity(c.pickup.len());
    c.pickup.for_each_slice(|s| hours.extend(s.iter().map(|&pu| u8::try_from(pu / 3600 % 24).unwrap_or(0))));
    let (mut sum, mut n, mut row) = ([0f64; 24], [0u64; 24], 0);
    c.fare.for_each_slice(|s| {
        for (&f, &h) in s.iter().zip(&hours[row..]) {
            sum[usize::from(h)] += f;
            n[usize::from(h)] += 1;
        }
        row += s.len();
    });
    a.mean_fare_by_hour = hour_means(sum, n);
    let idx = c.distance.filter(Pred::Gt(LONG_TRIP_MILES), mode)?;
    a.long_trips.0 = idx.len() as u64;
    if !idx.is_empty() {
        a.long_trips.1 = sum_f(c.fare.gather(&idx, mode)?.sum(mode)?)?;
        a.long_trips.2 = sum_f(c.tip.gather(&idx, mode)?.sum(mode)?)?;
    }
    let median = c.fare.median(mode)?.ok_or_else(|| anyhow::anyhow!("empty fare column"))?;
    let mut top = Top10::default();
    c.fare.for_each_slice(|s| s.iter().for_each(|&x| top.push(x)));
    a.fare_order = vec![median];
    a.fare_order.extend(top.0);
    a.distinct_passengers = c.passengers.unique(mode)?;
    Ok(a)
}

/// All ten columns in objrt (objects mode).
pub fn objects(p: &Params, rt: &Runtime) -> anyhow::Result<Outcome> {
    let t = Instant::now();
    let mut coords = CoordStore::Objrt((0..4).map(|_| Vector::new(rt)).collect::<Result<_, _>>()?);
    let c = build(p, rt, &mut coords)?;
    let setup_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let a = far_queries(p, &c)?;
    Ok(Outcome { ops: rows(p), secs: t.elapsed().as_secs_f64(), setup_secs, checksum: a.checksum(), extra: vec![] })
}

/// Share of the budget for objrt in hybrid mode: the six queried columns of ten.
pub const HYBRID_OBJRT_SHARE: f64 = 0.6;

/// The queried columns in objrt, the never-queried coordinates in std Vecs on FarAlloc (hybrid mode).
pub fn hybrid(p: &Params, rt: &Runtime) -> anyhow::Result<Outcome> {
    let t = Instant::now();
    let n = usize::try_from(rows(p))?;
    let mut coords = CoordStore::Std((0..4).map(|_| Vec::with_capacity(n)).collect());
    let c = build(p, rt, &mut coords)?;
    let setup_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let a = far_queries(p, &c)?;
    Ok(Outcome { ops: rows(p), secs: t.elapsed().as_secs_f64(), setup_secs, checksum: a.checksum(), extra: vec![] })
}
