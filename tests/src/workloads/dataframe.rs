//! DataFrame analytics over a synthetic NYC-taxi table (see [`crate::taxi`]): the usual Kaggle queries —
//! trips and mean duration per passenger count, mean fare per pickup hour, a distance filter, the fares sorted,
//! and the distinct passenger counts.

use super::{fold, scaled, Outcome, Params, FOLD_START};
use crate::taxi;
use std::time::Instant;

/// Rows of the table.
pub fn rows(p: &Params) -> u64 {
    scaled(2_000_000, p.scale)
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

/// Folds an f64 result, rounded to micro-units so that summation order does not change the checksum.
pub fn fold_f64(acc: u64, x: f64) -> u64 {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "checksum of a rounded value")]
    fold(acc, (x * 1e6).round() as i64 as u64)
}

/// Query results, folded in a fixed order by [`Answers::checksum`].
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Answers {
    /// Trips per passenger count 1..=6.
    pub trips_by_passengers: [u64; 7],
    /// Mean duration in seconds per passenger count.
    pub mean_duration_by_passengers: [f64; 7],
    /// Mean fare per pickup hour of day.
    pub mean_fare_by_hour: [f64; 24],
    /// Trips over 10 miles and their mean fare plus tip.
    pub long_trips: (u64, f64),
    /// Fares at the 10th, 50th and 90th percentile and the ten largest, from sorting the column.
    pub fare_order: Vec<f64>,
    /// Distinct passenger counts.
    pub distinct_passengers: Vec<i64>,
}

impl Answers {
    /// The checksum of all answers.
    pub fn checksum(&self) -> u64 {
        let mut a = FOLD_START;
        for &x in &self.trips_by_passengers {
            a = fold(a, x);
        }
        for &x in self.mean_duration_by_passengers.iter().chain(&self.mean_fare_by_hour).chain(&self.fare_order) {
            a = fold_f64(a, x);
        }
        a = fold(a, self.long_trips.0);
        a = fold_f64(a, self.long_trips.1);
        for &x in &self.distinct_passengers {
            a = fold(a, x.cast_unsigned());
        }
        a
    }
}

/// Picks the 10th/50th/90th percentiles and the ten largest from a sorted column.
pub fn fare_order(sorted: &[f64]) -> Vec<f64> {
    let n = sorted.len();
    let mut v = vec![sorted[n / 10], sorted[n / 2], sorted[n * 9 / 10]];
    v.extend(sorted.iter().rev().take(10));
    v
}

/// The queries over in-memory columns (local, paging, swap).
pub fn queries(c: &Columns) -> Answers {
    let mut a = Answers::default();
    let mut dur = [0f64; 7];
    for ((&p, &pu), &dr) in c.passengers.iter().zip(&c.pickup).zip(&c.dropoff) {
        let p = usize::try_from(p).expect("1..=6");
        a.trips_by_passengers[p] += 1;
        dur[p] += (dr - pu) as f64;
    }
    for ((m, d), n) in a.mean_duration_by_passengers.iter_mut().zip(dur).zip(a.trips_by_passengers) {
        *m = d / n.max(1) as f64;
    }
    let (mut fare_sum, mut n) = ([0f64; 24], [0u64; 24]);
    for (&pu, &f) in c.pickup.iter().zip(&c.fare) {
        let h = usize::try_from(pu / 3600 % 24).expect("0..24");
        fare_sum[h] += f;
        n[h] += 1;
    }
    for ((m, s), n) in a.mean_fare_by_hour.iter_mut().zip(fare_sum).zip(n) {
        *m = s / n.max(1) as f64;
    }
    let mut long = (0u64, 0f64);
    for ((&d, &f), &t) in c.distance.iter().zip(&c.fare).zip(&c.tip) {
        if d > 10.0 {
            long.0 += 1;
            long.1 += f + t;
        }
    }
    a.long_trips = (long.0, long.1 / long.0.max(1) as f64);
    let mut sorted = c.fare.clone();
    sorted.sort_unstable_by(f64::total_cmp);
    a.fare_order = fare_order(&sorted);
    let mut seen = [false; 7];
    for &p in &c.passengers {
        seen[usize::try_from(p).expect("1..=6")] = true;
    }
    a.distinct_passengers = (1..7i64).zip(&seen[1..]).filter(|(_, &s)| s).map(|(p, _)| p).collect();
    a
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
