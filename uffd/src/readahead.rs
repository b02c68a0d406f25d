//! Stream detection for readahead: sequential and strided missing-fault streams, with an adaptive window.
//!
//! The detector sees only missing faults on pages that memd holds. A stream is a run of faults with a constant stride
//! (up to [`MAX_STRIDE`](crate::readahead::MAX_STRIDE) pages either way). The first repeat of a stride confirms a
//! stream and prefetches [`INITIAL_WINDOW`](crate::readahead::INITIAL_WINDOW) pages; whenever the stream faults on its
//! trigger page or just past its window, the previous window counts as readahead hits and the window doubles up to the
//! configured maximum. One page in the middle of each window is left unmapped on purpose (the *trigger*): the program's
//! fault on it asks for the next window while the second half of the current one is still ahead of the program, so
//! fetching overlaps with the program's progress. A fault anywhere else restarts detection for that stream, with the
//! window back at its start. Several interleaved streams are tracked at once (e.g. a merge reading two arrays).
//!
//! **Streams that write.** Read-ahead pages are mapped write-protected, so that a page the program only reads stays
//! clean (dropped at eviction with no traffic), and the first write to each costs a write-protect fault. A program
//! that rewrites what it reads (`for x in v { *x = f(*x) }`) pays that fault on every page. The trigger pages tell
//! the two apart: the program's fault on a trigger is the stream's own sample, and
//! [`Detector::on_write`](crate::readahead::Detector::on_write) learns when it writes one. Once the last
//! [`WRITE_STREAK`](crate::readahead::WRITE_STREAK) faults of a stream were written, its next windows (and its
//! demand reads, [`Detector::predict_write`](crate::readahead::Detector::predict_write)) are mapped writable and
//! dirty: no write-protect faults, at the price of writing back the pages that the program then did not write.
//! The triggers keep sampling (they are mapped per their own fault), so a stream that stops writing is back to
//! write-protected windows after its next trigger.

/// Largest stride, in pages, that counts as a stream.
pub const MAX_STRIDE: i64 = 64;
/// Window of a newly confirmed stream, in pages.
pub const INITIAL_WINDOW: usize = 8;
const STREAMS: usize = 8;
/// Consecutive written faults (triggers, or pages just past a window) after which a stream's windows are fetched
/// writable.
pub const WRITE_STREAK: u32 = 2;

#[derive(Debug, Clone, Copy, Default)]
struct Stream {
    valid: bool,
    /// Last fault of the stream.
    last: u64,
    /// Stride in pages (0 while unknown).
    stride: i64,
    /// First page after the prefetched window: a fault there means the program outran readahead.
    expect: u64,
    /// The page of the window left unmapped on purpose: its fault asks for the next window early.
    trigger: u64,
    /// Pages prefetched by the last window (0 if none).
    window: usize,
    /// Last use, for replacement.
    tick: u64,
    /// Whether the program wrote the page of the stream's last fault (a write fault, or a write-protect fault
    /// on it since).
    wrote_last: bool,
    /// The written-or-not history of the stream's earlier faults, newest in bit 0.
    writes: u8,
}

impl Stream {
    /// The stream moved on to a new fault (`write`: the fault is a write): its previous one joins the history.
    fn advance(&mut self, write: bool) {
        self.writes = (self.writes << 1) | u8::from(self.wrote_last);
        self.wrote_last = write;
    }

    /// Whether the stream's last [`WRITE_STREAK`] faults before the one just recorded were all written. (The
    /// one just recorded is still being served: a read-then-write shows its write only after its install.)
    fn writing(&self) -> bool {
        let streak = (1u8 << WRITE_STREAK) - 1;
        self.writes & streak == streak
    }
}

/// `a - b` as a signed distance (wrapping: pages are far below 2^63).
#[allow(clippy::cast_possible_wrap, reason = "page numbers are below 2^52, so the difference fits")]
fn signed_diff(a: u64, b: u64) -> i64 {
    a.wrapping_sub(b) as i64
}

/// What to prefetch for one fault: `count` pages starting `stride` pages after `page`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefetch {
    /// First page to prefetch.
    pub first: u64,
    /// Distance between prefetched pages (may be negative).
    pub stride: i64,
    /// How many pages.
    pub count: usize,
    /// One of them (in the middle of the window) to keep unmapped: the program's fault on it is the signal to
    /// fetch the next window while the rest of this one is still ahead of the program.
    pub trigger: Option<u64>,
    /// The stream writes what it reads: map the pages (all but the trigger) writable and dirty.
    pub writable: bool,
}

impl Prefetch {
    /// The pages, in stream order, that lie in `[0, npages)`.
    pub fn pages(&self, npages: u64) -> impl Iterator<Item = u64> + '_ {
        let (first, stride) = (self.first, self.stride);
        (0..self.count)
            .map(move |k| i64::try_from(k).ok().and_then(|k| k.checked_mul(stride)))
            .map(move |d| d.and_then(|d| first.checked_add_signed(d)))
            .take_while(move |p| p.is_some_and(|p| p < npages))
            .map(|p| p.unwrap_or(0))
    }
}

/// The stream detector.
#[derive(Debug)]
pub struct Detector {
    streams: [Stream; STREAMS],
    max_window: usize,
    tick: u64,
    /// Prefetched pages the program went on to consume.
    pub hits: u64,
}

impl Detector {
    /// A detector whose windows grow up to `max_window` pages (0 disables readahead).
    pub fn new(max_window: usize) -> Detector {
        Detector { streams: [Stream::default(); STREAMS], max_window, tick: 0, hits: 0 }
    }

    /// Records that the program wrote `page` after a read fault on it (a write-protect fault): if that was a
    /// stream's last fault, the stream counts it as written.
    pub fn on_write(&mut self, page: u64) {
        for s in self.streams.iter_mut().filter(|s| s.valid && s.last == page) {
            s.wrote_last = true;
        }
    }

    /// Whether `page`, the last fault of a stream that writes what it reads, should be mapped writable at once (the
    /// caller asks for demand faults, never for trigger pages). The stream then counts that fault as written:
    /// mapped writable, it can no longer tell; its triggers, mapped per their own fault, keep telling.
    pub fn predict_write(&mut self, page: u64) -> bool {
        let Some(s) = self.streams.iter_mut().find(|s| s.valid && s.stride != 0 && s.last == page) else {
            return false;
        };
        if !s.writing() {
            return false;
        }
        s.wrote_last = true;
        true
    }

    /// Records a missing fault on `page` (`write`: a write fault) and says what to prefetch, if anything. `room`
    /// caps the window (free local frames the prefetch may use without pushing anything out).
    pub fn on_fault(&mut self, page: u64, room: usize, write: bool) -> Option<Prefetch> {
        if self.max_window == 0 {
            return None;
        }
        self.tick += 1;
        let tick = self.tick;
        let found =
            self.streams.iter().position(|s| s.valid && s.stride != 0 && (s.expect == page || s.trigger == page));
        let (idx, first) = match found {
            Some(i) => {
                let s = &mut self.streams[i];
                self.hits += s.window as u64;
                s.advance(write);
                // At the trigger, the next window starts where the current one ends.
                let first = if s.trigger == page { s.expect } else { page.wrapping_add_signed(s.stride) };
                (i, first)
            }
            None => {
                let near = self.streams.iter().position(|s| {
                    s.valid && {
                        let d = signed_diff(page, s.last);
                        d != 0 && d.abs() <= MAX_STRIDE
                    }
                });
                match near {
                    Some(i) => {
                        let s = &mut self.streams[i];
                        let d = signed_diff(page, s.last);
                        if d != s.stride {
                            // A new stride: remember it, prefetch once it repeats. The program that ran this
                            // stream (say, outran its window) is likely to write the same way: the write history
                            // carries over.
                            s.advance(write);
                            *s = Stream {
                                valid: true,
                                last: page,
                                stride: d,
                                expect: page.wrapping_add_signed(d),
                                trigger: u64::MAX,
                                window: 0,
                                tick,
                                ..*s
                            };
                            return None;
                        }
                        s.advance(write);
                        (i, page.wrapping_add_signed(d))
                    }
                    None => {
                        let i = self
                            .streams
                            .iter()
                            .enumerate()
                            .min_by_key(|(_, s)| if s.valid { s.tick } else { 0 })
                            .map_or(0, |(i, _)| i);
                        self.streams[i] = Stream {
                            valid: true,
                            last: page,
                            stride: 0,
                            expect: 0,
                            trigger: u64::MAX,
                            window: 0,
                            tick,
                            wrote_last: write,
                            writes: 0,
                        };
                        return None;
                    }
                }
            }
        };
        let s = &mut self.streams[idx];
        let grown = if s.window == 0 { INITIAL_WINDOW } else { s.window.saturating_mul(2) };
        let window = grown.min(self.max_window).min(room);
        s.last = page;
        s.tick = tick;
        s.window = window;
        let stride = s.stride;
        let at = |k: usize| first.wrapping_add_signed(stride.saturating_mul(i64::try_from(k).unwrap_or(i64::MAX)));
        s.expect = at(window);
        let trigger = (window >= 4).then(|| at(window / 2));
        s.trigger = trigger.unwrap_or(u64::MAX);
        if window == 0 {
            return None;
        }
        Some(Prefetch { first, stride, count: window, trigger, writable: s.writing() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_stream_grows_and_counts_hits() {
        let mut d = Detector::new(64);
        assert_eq!(d.on_fault(100, 1000, false), None);
        assert_eq!(d.on_fault(101, 1000, false), None, "a stride must repeat before anything is prefetched");
        let p = d.on_fault(102, 1000, false).unwrap();
        assert_eq!(p, Prefetch { first: 103, stride: 1, count: INITIAL_WINDOW, trigger: Some(107), writable: false });
        // The program reaches the trigger page: the next window starts after the current one.
        let p = d.on_fault(107, 1000, false).unwrap();
        assert_eq!(p, Prefetch { first: 111, stride: 1, count: 16, trigger: Some(119), writable: false });
        assert_eq!(d.hits, INITIAL_WINDOW as u64);
        let p = d.on_fault(119, 1000, false).unwrap();
        assert_eq!((p.first, p.count), (127, 32));
        let p = d.on_fault(143, 1000, false).unwrap();
        assert_eq!((p.first, p.count), (159, 64), "window capped at the maximum");
        // The program outran readahead and faults just past the window.
        let p = d.on_fault(223, 10, false).unwrap();
        assert_eq!(p.first, 224);
        assert_eq!(p.count, 10, "window capped by room");
    }

    #[test]
    fn streams_that_write_what_they_read_get_writable_windows() {
        let mut d = Detector::new(64);
        // Read faults, each followed by a write to the same page (a write-protect fault).
        let fault = |d: &mut Detector, page: u64| {
            let p = d.on_fault(page, 1000, false);
            d.on_write(page);
            p
        };
        // A stream that starts reading only.
        d.on_fault(100, 1000, false);
        d.on_fault(101, 1000, false);
        let p = d.on_fault(102, 1000, false).unwrap();
        assert!(!p.writable, "{p:?}");
        // Then writes what it reads.
        let p = fault(&mut d, p.trigger.unwrap()).unwrap();
        assert!(!p.writable, "one written fault is not enough: {p:?}");
        let p = fault(&mut d, p.trigger.unwrap()).unwrap();
        assert!(!p.writable, "decided before this fault's write is known: {p:?}");
        let p = fault(&mut d, p.trigger.unwrap()).unwrap();
        assert!(p.writable, "after {WRITE_STREAK} written faults the windows are writable: {p:?}");
        let t = p.trigger.unwrap();
        let p = fault(&mut d, t).unwrap();
        assert!(p.writable);
        // A new stride restarts detection but keeps the stream's write history.
        assert_eq!(fault(&mut d, t + 3), None);
        let p = fault(&mut d, t + 6).unwrap();
        assert!(p.writable && p.stride == 3, "{p:?}");
        let t = p.trigger.unwrap();
        // The program stops writing: its next trigger is read only, and the window after it is protected again.
        let p = d.on_fault(t, 1000, false).unwrap();
        assert!(p.writable, "decided before this fault's write (or not) is known");
        let p = d.on_fault(p.trigger.unwrap(), 1000, false).unwrap();
        assert!(!p.writable, "a trigger read and not written ends the writable windows");
        // A write elsewhere counts for no stream.
        d.on_write(5);
        let p = d.on_fault(p.trigger.unwrap(), 1000, false).unwrap();
        assert!(!p.writable);
        // Write faults count without a write-protect fault.
        let mut d = Detector::new(64);
        let mut t = 200;
        let mut last = None;
        for k in 0..3 {
            last = d.on_fault(t + k, 1000, true);
        }
        for _ in 0..2 {
            t = last.unwrap().trigger.unwrap();
            last = d.on_fault(t, 1000, true);
        }
        assert!(last.unwrap().writable, "{last:?}");
    }

    #[test]
    fn strided_and_backward_streams() {
        let mut d = Detector::new(16);
        d.on_fault(1000, 100, false);
        d.on_fault(996, 100, false);
        let p = d.on_fault(992, 100, false).unwrap();
        assert_eq!((p.first, p.stride), (988, -4));
        let pages: Vec<u64> = p.pages(10_000).collect();
        assert_eq!(pages, vec![988, 984, 980, 976, 972, 968, 964, 960]);
        // Running off the start of the region stops the list.
        let p = Prefetch { first: 4, stride: -4, count: 5, trigger: None, writable: false };
        assert_eq!(p.pages(100).collect::<Vec<_>>(), vec![4, 0]);
    }

    #[test]
    fn random_faults_never_prefetch() {
        let mut d = Detector::new(64);
        let mut x: u64 = 12345;
        let mut prefetches = 0;
        for _ in 0..1000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            if d.on_fault((x >> 33) % 1_000_000, 1000, false).is_some() {
                prefetches += 1;
            }
        }
        assert!(prefetches < 5, "{prefetches} prefetches on random faults");
    }

    #[test]
    fn interleaved_streams() {
        let mut d = Detector::new(8);
        for k in 0..3u64 {
            d.on_fault(10 + k, 100, false);
            d.on_fault(50_000 + k * 2, 100, false);
        }
        let a = d.on_fault(13, 100, false);
        let b = d.on_fault(50_006, 100, false);
        assert!(a.is_some() && b.is_some(), "{a:?} {b:?}");
    }
}
