//! A synthetic, deterministic NYC-taxi-like trip table.
//!
//! Columns follow the public yellow-cab schema's shape: pickup and dropoff times (seconds since 2016-01-01),
//! passenger count (1–6, mostly 1), trip distance (miles, long-tailed), fare (base + per mile + per minute,
//! noisy), tip, and pickup/dropoff coordinates around Manhattan. Row `i` depends only on `(seed, i)`, so any mode
//! and any process generates the same table.

use crate::rng::{mix64, Rng};

/// Column names, in storage order.
pub const COLUMNS: [&str; 10] = [
    "pickup_time",
    "dropoff_time",
    "passenger_count",
    "trip_distance",
    "fare",
    "tip",
    "pickup_lon",
    "pickup_lat",
    "dropoff_lon",
    "dropoff_lat",
];

/// One trip.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Trip {
    /// Pickup time, seconds since 2016-01-01 00:00.
    pub pickup: i64,
    /// Dropoff time.
    pub dropoff: i64,
    /// Passengers, 1..=6.
    pub passengers: i64,
    /// Miles.
    pub distance: f64,
    /// Dollars.
    pub fare: f64,
    /// Dollars.
    pub tip: f64,
    /// Degrees.
    pub pickup_lon: f64,
    /// Degrees.
    pub pickup_lat: f64,
    /// Degrees.
    pub dropoff_lon: f64,
    /// Degrees.
    pub dropoff_lat: f64,
}

/// Row `i` of the table for `seed`.
pub fn trip(seed: u64, i: u64) -> Trip {
    let mut r = Rng::new(mix64(seed ^ mix64(i)));
    let pickup = i64::try_from(r.below(366 * 86_400)).unwrap_or(0);
    // Long-tailed distance: mostly short hops, a few airport runs.
    let u = r.f64();
    let distance = (0.3 + 2.0 * (-(1.0 - u).ln())).min(60.0);
    let minutes = distance * (2.5 + 2.0 * r.f64()) + 2.0;
    #[allow(clippy::cast_possible_truncation, reason = "trip durations are a few hours at most")]
    let dropoff = pickup + (minutes * 60.0) as i64;
    let passengers = match r.below(100) {
        0..=69 => 1,
        70..=84 => 2,
        85..=89 => 3,
        90..=93 => 4,
        94..=97 => 5,
        _ => 6,
    };
    let fare = ((2.5 + 2.5 * distance + 0.5 * minutes) * (0.9 + 0.2 * r.f64()) * 100.0).round() / 100.0;
    let tip = if r.below(3) == 0 { 0.0 } else { (fare * (0.1 + 0.15 * r.f64()) * 100.0).round() / 100.0 };
    let (lon0, lat0) = (-73.98 + 0.05 * (r.f64() - 0.5), 40.75 + 0.08 * (r.f64() - 0.5));
    let angle = r.f64() * std::f64::consts::TAU;
    let deg = distance / 60.0;
    Trip {
        pickup,
        dropoff,
        passengers,
        distance,
        fare,
        tip,
        pickup_lon: lon0,
        pickup_lat: lat0,
        dropoff_lon: lon0 + deg * angle.cos(),
        dropoff_lat: lat0 + deg * angle.sin(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_deterministic_and_plausible() {
        assert_eq!(trip(1, 42), trip(1, 42));
        assert_ne!(trip(1, 42), trip(2, 42));
        for i in 0..10_000 {
            let t = trip(9, i);
            assert!(t.dropoff > t.pickup && (1..=6).contains(&t.passengers));
            assert!(t.distance > 0.0 && t.fare >= 2.5 * 0.9 && t.tip >= 0.0);
        }
    }
}
