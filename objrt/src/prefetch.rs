//! Prefetchers: a stride detector over the chunk positions a container touches, and the adaptive window that
//! decides how far ahead it fetches.
//!
//! A container reports every chunk (or list node) it moves to with [`Prefetcher::access`]. After
//! [`PrefetchConfig::trigger`] equal, non-zero strides in a row (a sequential scan has stride 1, a reverse walk
//! −1, a column read every k-th chunk stride k) it starts fetching ahead: it keeps between one and two windows
//! of positions requested beyond the current one, and asks for them a whole window per request, so a stream of
//! `N` chunks costs at most about `N / window` round trips. The window starts at
//! [`PrefetchConfig::min_window`]; each time the stream reaches a position that was requested but has not
//! arrived yet (the prefetch was late), it doubles, up to [`PrefetchConfig::max_window`] — which is bounded by
//! the local budget: never more than an eighth of the smallest budget the runtime's region size allows
//! is in flight. A broken pattern resets the window.
//!
//! Fetches go through [`Runtime::fetch`](crate::Runtime::fetch); the handles are kept until the stream passes
//! them (waiting then is free: the dereference that reached them already completed them).

use crate::runtime::{FetchHandle, Runtime};
use crate::ObjError;
use std::collections::VecDeque;

/// Tuning of a [`Prefetcher`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefetchConfig {
    /// Equal strides in a row before prefetching starts.
    pub trigger: u32,
    /// Positions per request at the start of a stream.
    pub min_window: usize,
    /// Largest window (two windows may be in flight at once).
    pub max_window: usize,
}

impl PrefetchConfig {
    /// Defaults for objects of `object_bytes` in runtime `rt`: the window may grow until two windows take an
    /// eighth of the smallest budget compatible with the runtime's region size (16 regions).
    pub fn for_runtime(rt: &Runtime, object_bytes: usize) -> PrefetchConfig {
        let region = usize::try_from(rt.stats().region_size).unwrap_or(1 << 20);
        let budget_floor = 16 * region;
        let max_window = (budget_floor / 8 / 2 / object_bytes.max(1)).max(1);
        PrefetchConfig { trigger: 2, min_window: 4.min(max_window), max_window }
    }
}

/// Counters of a prefetcher.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefetchStats {
    /// Fetch requests started (one batched request per window; windows with nothing to fetch not counted).
    pub batches: u64,
    /// Positions asked for in those requests.
    pub requested: u64,
    /// Times the stream reached a position that was requested but not local yet (the window grew).
    pub late: u64,
}

/// A stride detector with an adaptive prefetch window.
#[derive(Debug)]
pub struct Prefetcher {
    cfg: PrefetchConfig,
    last: Option<i64>,
    stride: i64,
    streak: u32,
    window: usize,
    /// Next position to request (in stride direction), once a stream is on.
    next: Option<i64>,
    /// Handles of requests, with the first position of each.
    pending: VecDeque<(i64, FetchHandle)>,
    stats: PrefetchStats,
}

impl Prefetcher {
    /// A prefetcher with `cfg`.
    pub fn new(cfg: PrefetchConfig) -> Prefetcher {
        Prefetcher {
            cfg,
            last: None,
            stride: 0,
            streak: 0,
            window: cfg.min_window.max(1),
            next: None,
            pending: VecDeque::new(),
            stats: PrefetchStats::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> PrefetchStats {
        self.stats
    }

    /// The current window.
    pub fn window(&self) -> usize {
        self.window
    }

    /// Forgets the stream (the positions changed meaning, e.g. a list was restructured).
    pub fn reset(&mut self) {
        self.last = None;
        self.streak = 0;
        self.stride = 0;
        self.next = None;
        self.window = self.cfg.min_window.max(1);
    }

    /// Position `pos` is being accessed; `was_local` says whether its object was local already. `issue`
    /// starts a fetch of the given positions (it skips positions outside the container) and returns its handle.
    pub fn access(
        &mut self,
        pos: i64,
        was_local: bool,
        mut issue: impl FnMut(&[i64]) -> Result<Option<FetchHandle>, ObjError>,
    ) {
        if self.last == Some(pos) {
            return;
        }
        if let Some(l) = self.last {
            let s = pos - l;
            if s == self.stride && s != 0 {
                self.streak = self.streak.saturating_add(1);
            } else {
                self.stride = s;
                self.streak = 1;
                self.next = None;
                self.window = self.cfg.min_window.max(1);
                // The old stream's fetches are left to complete (dropping a handle waits for its reply).
                self.pending.clear();
            }
        }
        self.last = Some(pos);
        let s = self.stride;
        // Handles the stream has passed are done (the dereference that got there completed them).
        while let Some(&(first, _)) = self.pending.front() {
            if (pos - first) * s.signum() < 0 {
                break;
            }
            self.pending.pop_front();
        }
        if self.streak < self.cfg.trigger || s == 0 {
            return;
        }
        if let Some(n) = self.next {
            if !was_local && (n - pos) * s.signum() > 0 {
                // Requested already, but not here yet: fetch further ahead.
                self.stats.late += 1;
                self.window = (self.window * 2).min(self.cfg.max_window);
            }
        }
        let mut next = match self.next {
            Some(n) if (n - pos) * s.signum() > 0 => n,
            _ => pos + s,
        };
        let w = i64::try_from(self.window).unwrap_or(i64::MAX);
        let mut batch = Vec::with_capacity(self.window);
        while (next - pos) / s <= w {
            batch.clear();
            batch.extend((0..w).map(|k| next + k * s));
            match issue(&batch) {
                // `None`: every position was local or in flight already, nothing was sent.
                Ok(None) => {}
                Ok(Some(h)) => {
                    self.stats.batches += 1;
                    self.stats.requested += batch.len() as u64;
                    self.pending.push_back((next, h));
                }
                Err(e) => {
                    tracing::debug!("prefetch failed: {e}");
                    break;
                }
            }
            next += w * s;
        }
        self.next = Some(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_stream_requests_window_batches() {
        let mut p = Prefetcher::new(PrefetchConfig { trigger: 2, min_window: 4, max_window: 16 });
        let mut asked: Vec<i64> = Vec::new();
        let mut calls = 0;
        for pos in 0..100 {
            p.access(pos, true, |b| {
                asked.extend_from_slice(b);
                calls += 1;
                Ok(None)
            });
        }
        // Every position from 3 on was requested exactly once, ahead of its access, in window-sized batches.
        let mut sorted = asked.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), asked.len(), "no position requested twice");
        assert!((3..100).all(|i| asked.contains(&i)));
        assert!(calls <= 100 / 4 + 2, "{calls} requests");
        assert_eq!(p.stats().batches, 0, "nothing needed fetching, so nothing was sent");
    }

    #[test]
    fn late_prefetch_grows_the_window_and_a_broken_stride_resets_it() {
        let mut p = Prefetcher::new(PrefetchConfig { trigger: 2, min_window: 2, max_window: 8 });
        for pos in (0..40).rev() {
            p.access(pos, false, |_| Ok(None));
        }
        assert_eq!(p.window(), 8, "{:?}", p.stats());
        p.access(100, false, |_| Ok(None));
        assert_eq!(p.window(), 2);
        let mut asked = Vec::new();
        for pos in [3, 6, 9, 12] {
            p.access(pos, true, |b| {
                asked.extend_from_slice(b);
                Ok(None)
            });
        }
        assert!(asked.contains(&15) && asked.iter().all(|x| x % 3 == 0), "{asked:?}");
    }
}
