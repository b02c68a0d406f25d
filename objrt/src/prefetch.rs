//! Prefetchers: a stride detector over the chunk positions a container touches, and the adaptive window that
//! decides how far ahead it fetches.
//!
//! A container reports every chunk (or list node) it moves to with [`Prefetcher::access`]. After
//! [`PrefetchConfig::trigger`] equal, non-zero strides in a row (a sequential scan has stride 1, a reverse walk
//! −1, a column read every k-th chunk stride k) it starts fetching ahead: it keeps between one and two windows
//! of positions requested beyond the current one, and asks for them a whole window per request, so a stream of
//! `N` chunks costs at most about `N / window` requests. The window starts at [`PrefetchConfig::min_window`];
//! each time the stream reaches a position that was requested but has not arrived yet (the prefetch was late),
//! the distance it keeps ahead doubles: first the window, up to [`PrefetchConfig::max_window`] positions per
//! request, then the number of windows in flight, up to [`PrefetchConfig::max_ahead`] positions in all (a
//! 16th of the runtime's budget by default). A broken pattern resets both.
//!
//! Why requests are capped below what may be in flight: a reply is usable only once it has all arrived, and
//! it passes through a buffer of its size on both ends. Several mid-sized requests in flight keep the link
//! busy while the program consumes the earliest reply. Why the distance ahead is capped: prefetched objects
//! need free regions, and fetching further ahead than the evacuator keeps free makes installs wait for it.
//! Measured on an `Array` scan at a 25% (16 MiB) budget, `CONTAINERS_SUMMARY=scan cargo bench -p farmem-objrt
//! --bench containers`, 4 alternating rounds on a quiet machine: 1 MiB ahead in 256 KiB requests (the
//! default) 3.8–4.9 GB/s, in 128 KiB requests 3.9–4.8 GB/s, 2 MiB ahead 2.9–3.3 GB/s, 512 KiB ahead 1.8–2.0
//! GB/s; one 1 MiB request per window (the previous design) 0.7 GB/s. On a loaded machine the order of 512 KiB
//! and 1 MiB ahead flips (medians of 6 runs: 0.69× and 0.55× a raw TCP stream).
//!
//! Fetches go through [`Runtime::fetch`](crate::Runtime::fetch); the handles are kept until the stream passes
//! them (waiting then is free: the dereference that reached them already completed them).

use crate::runtime::{FetchHandle, Runtime};
use crate::ObjError;
use std::collections::VecDeque;

/// Bytes a prefetch request asks for at most (see the module documentation).
pub const MAX_REQUEST_BYTES: usize = 256 << 10;

/// Tuning of a [`Prefetcher`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefetchConfig {
    /// Equal strides in a row before prefetching starts.
    pub trigger: u32,
    /// Positions per request at the start of a stream.
    pub min_window: usize,
    /// Largest window: positions per request.
    pub max_window: usize,
    /// Most positions requested ahead of the current one (at least two windows' worth are allowed).
    pub max_ahead: usize,
}

impl PrefetchConfig {
    /// Defaults for objects of `object_bytes` in runtime `rt`: requests of up to [`MAX_REQUEST_BYTES`], and at
    /// most a 16th of the runtime's budget requested ahead — about the free memory its evacuator restores (the
    /// high watermark, 6% by default), so prefetched objects land in free regions instead of waiting for it.
    pub fn for_runtime(rt: &Runtime, object_bytes: usize) -> PrefetchConfig {
        let object_bytes = object_bytes.max(1);
        let max_ahead = (rt.budget() / 16 / object_bytes).max(2);
        let max_window = (MAX_REQUEST_BYTES / object_bytes).clamp(1, max_ahead / 2);
        PrefetchConfig { trigger: 2, min_window: 4.min(max_window), max_window, max_ahead }
    }

    /// The distance kept ahead at the start of a stream: two windows.
    fn min_ahead(&self) -> usize {
        2 * self.min_window.max(1)
    }

    /// The largest distance kept ahead: `max_ahead`, but at least two full windows.
    fn ahead_limit(&self) -> usize {
        self.max_ahead.max(2 * self.max_window.max(1))
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
    /// Positions kept requested beyond the current one (two windows or more).
    ahead: usize,
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
            ahead: cfg.min_ahead(),
            next: None,
            pending: VecDeque::new(),
            stats: PrefetchStats::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> PrefetchStats {
        self.stats
    }

    /// The current window (positions per request).
    pub fn window(&self) -> usize {
        (self.ahead / 2).clamp(1, self.cfg.max_window.max(1))
    }

    /// How many positions beyond the current one the prefetcher keeps requested.
    pub fn ahead(&self) -> usize {
        self.ahead
    }

    /// Forgets the stream (the positions changed meaning, e.g. a list was restructured).
    pub fn reset(&mut self) {
        self.last = None;
        self.streak = 0;
        self.stride = 0;
        self.next = None;
        self.ahead = self.cfg.min_ahead();
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
                self.ahead = self.cfg.min_ahead();
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
                self.ahead = (self.ahead * 2).min(self.cfg.ahead_limit());
            }
        }
        let mut next = match self.next {
            Some(n) if (n - pos) * s.signum() > 0 => n,
            _ => pos + s,
        };
        let window = self.window();
        let w = i64::try_from(window).unwrap_or(i64::MAX);
        // Top up to `ahead`, a window per request: at least one window beyond the current position.
        let ahead = i64::try_from(self.ahead).unwrap_or(i64::MAX).saturating_sub(w).max(w);
        let mut batch = Vec::with_capacity(window);
        while (next - pos) / s <= ahead {
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
        let mut p = Prefetcher::new(PrefetchConfig { trigger: 2, min_window: 4, max_window: 16, max_ahead: 32 });
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
        let mut p = Prefetcher::new(PrefetchConfig { trigger: 2, min_window: 2, max_window: 8, max_ahead: 32 });
        for pos in (0..40).rev() {
            p.access(pos, false, |_| Ok(None));
        }
        assert_eq!(p.window(), 8, "{:?}", p.stats());
        assert_eq!(p.ahead(), 32, "after the window, the distance ahead grows to max_ahead");
        p.access(100, false, |_| Ok(None));
        assert_eq!(p.window(), 2);
        assert_eq!(p.ahead(), 4);
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
