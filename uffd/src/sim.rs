//! Replacement-policy simulator: the region's CLOCK (with only the signals it really gets) next to FIFO and
//! exact LRU, on a page access trace.
//!
//! The region cannot see reads of resident pages: its reference bits come from faults only — a missing fault installs a
//! page referenced, and a write to a write-protected page (a clean page, or a dirty page the hand re-armed) raises a
//! write-protect fault that sets the bit again. [`Policy::WpClock`](crate::sim::Policy::WpClock) models exactly that,
//! so its miss rate on a trace is what the region would see; [`Policy::Fifo`](crate::sim::Policy::Fifo) and
//! [`Policy::Lru`](crate::sim::Policy::Lru) bracket it.

use std::collections::{HashMap, VecDeque};

/// One access: page and whether it wrote.
pub type Access = (u64, bool);

/// A replacement policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// First in, first out.
    Fifo,
    /// Exact least-recently-used.
    Lru,
    /// The region's CLOCK fed by faults and write-protect faults.
    WpClock,
}

#[derive(Debug, Clone, Copy, Default)]
struct Frame {
    page: u64,
    used: bool,
    referenced: bool,
    dirty: bool,
    armed: bool,
}

/// Misses of `policy` on `trace` with `frames` local pages (compulsory misses included).
pub fn misses(policy: Policy, trace: &[Access], frames: usize) -> u64 {
    assert!(frames > 0, "at least one frame");
    let mut misses = 0;
    match policy {
        Policy::Fifo => {
            let mut q: VecDeque<u64> = VecDeque::new();
            let mut set: HashMap<u64, ()> = HashMap::new();
            for &(p, _) in trace {
                if set.contains_key(&p) {
                    continue;
                }
                misses += 1;
                if q.len() == frames {
                    if let Some(v) = q.pop_front() {
                        set.remove(&v);
                    }
                }
                q.push_back(p);
                set.insert(p, ());
            }
        }
        Policy::Lru => {
            // Recency stamps with a lazily cleaned queue: O(1) amortised per access.
            let mut stamp: HashMap<u64, u64> = HashMap::new();
            let mut q: VecDeque<(u64, u64)> = VecDeque::new();
            for (t, &(p, _)) in (0u64..).zip(trace) {
                if stamp.insert(p, t).is_none() {
                    misses += 1;
                    if stamp.len() > frames {
                        while let Some((v, s)) = q.pop_front() {
                            if stamp.get(&v) == Some(&s) {
                                stamp.remove(&v);
                                break;
                            }
                        }
                    }
                }
                q.push_back((p, t));
            }
        }
        Policy::WpClock => {
            let mut ring = vec![Frame::default(); frames];
            let mut at: HashMap<u64, usize> = HashMap::new();
            let mut hand = 0;
            let mut filled = 0;
            for &(p, write) in trace {
                if let Some(&i) = at.get(&p) {
                    let f = &mut ring[i];
                    if write && f.armed {
                        // A write-protect fault: the only signal a hit can give.
                        f.referenced = true;
                        f.armed = false;
                        f.dirty = true;
                    }
                    continue;
                }
                misses += 1;
                let slot = if filled < frames {
                    filled += 1;
                    filled - 1
                } else {
                    loop {
                        let f = &mut ring[hand];
                        let i = hand;
                        hand = (hand + 1) % frames;
                        if f.referenced {
                            f.referenced = false;
                            if f.dirty {
                                f.armed = true;
                            }
                            continue;
                        }
                        at.remove(&f.page);
                        break i;
                    }
                };
                ring[slot] = Frame { page: p, used: true, referenced: true, dirty: write, armed: !write };
                at.insert(p, slot);
            }
            debug_assert!(ring.iter().take(filled).all(|f| f.used));
        }
    }
    misses
}

/// A workload for comparing policies: `hot` pages take `hot_share` of `n` accesses (a fraction of which
/// write), the rest spread over `cold` pages; seeded, deterministic.
pub fn hot_cold_trace(n: usize, hot: u64, cold: u64, hot_share: f64, write_share: f64, seed: u64) -> Vec<Access> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    #[allow(clippy::cast_precision_loss, reason = "a uniform draw in [0, 1) needs no more than 53 bits")]
    let mut unit = move || (next() >> 11) as f64 / (1u64 << 53) as f64;
    (0..n)
        .map(|_| {
            let h = unit() < hot_share;
            let w = unit() < write_share;
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "scaled draw below the range")]
            let page = if h { (unit() * hot as f64) as u64 } else { hot + (unit() * cold as f64) as u64 };
            (page, w)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn textbook_cases() {
        // Belady's sequence with 3 frames: FIFO 9 misses, LRU 10.
        let t: Vec<Access> = [1, 2, 3, 4, 1, 2, 5, 1, 2, 3, 4, 5].iter().map(|&p| (p, false)).collect();
        assert_eq!(misses(Policy::Fifo, &t, 3), 9);
        assert_eq!(misses(Policy::Lru, &t, 3), 10);
        // A loop that fits has only compulsory misses under every policy.
        let l: Vec<Access> = (0..100).map(|i| (i % 8, i % 3 == 0)).collect();
        for p in [Policy::Fifo, Policy::Lru, Policy::WpClock] {
            assert_eq!(misses(p, &l, 8), 8, "{p:?}");
        }
    }

    #[test]
    fn written_hot_set_survives_under_wp_clock() {
        // Hot pages are written; cold pages are read once. FIFO keeps pushing the hot set out.
        let t = hot_cold_trace(200_000, 64, 100_000, 0.7, 0.5, 7);
        let (fifo, lru, clock) =
            (misses(Policy::Fifo, &t, 128), misses(Policy::Lru, &t, 128), misses(Policy::WpClock, &t, 128));
        assert!(lru < fifo, "lru {lru} fifo {fifo}");
        assert!(clock < fifo, "wp-clock {clock} fifo {fifo}");
    }
}
