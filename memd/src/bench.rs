//! `memd bench`: memd's own operations measured beside raw TCP on the same address in the same run.
//!
//! The baselines use the server's raw modes (see `PROTOCOL.md`): a ping-pong of exactly the sizes a one-page
//! read sends and receives, and a one-way byte stream in each direction. Every memd figure is reported with its
//! ratio to the matching baseline, so the numbers mean something on a noisy shared machine.

use crate::client::Client;
use crate::far::{FarStore, Pending, StoreError};
use crate::proto::{ObjBatch, Request, PAGE_SIZE};
use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// One measured figure.
#[derive(Clone, Debug)]
pub struct Figure {
    /// What was measured.
    pub name: String,
    /// Operations per second.
    pub ops_per_sec: f64,
    /// Payload bytes per second.
    pub bytes_per_sec: f64,
    /// Mean latency of one operation in microseconds (round-trip figures only).
    pub mean_us: Option<f64>,
}

/// Bytes a one-page READ_PAGES request puts on the wire (length, header, region, count, page).
pub const PAGE_READ_REQUEST: u32 = 4 + 12 + 8 + 4 + 8;
/// Bytes its reply puts on the wire (length, header, count, bitmap, page).
pub const PAGE_READ_REPLY: u32 = 4 + 12 + 4 + 1 + 4096;

fn run_for(d: Duration, mut f: impl FnMut() -> Result<u64, StoreError>) -> Result<(u64, f64), StoreError> {
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < d {
        n += f()?;
    }
    Ok((n, start.elapsed().as_secs_f64()))
}

fn io(e: std::io::Error) -> StoreError {
    StoreError::Invalid(format!("raw stream: {e}"))
}

/// Raw ping-pong with the request and reply sizes of a one-page read, on connection `s` (raw mode 1).
pub fn raw_ping_pong_on(s: &mut (impl Read + Write), d: Duration) -> Result<Figure, StoreError> {
    let req = vec![1u8; PAGE_READ_REQUEST as usize];
    let mut rep = vec![0u8; PAGE_READ_REPLY as usize];
    let (n, secs) = run_for(d, || {
        for _ in 0..16 {
            s.write_all(&req).map_err(io)?;
            s.read_exact(&mut rep).map_err(io)?;
        }
        Ok(16)
    })?;
    Ok(fig("raw TCP ping-pong (page-read sizes)", n, secs, PAGE_SIZE, true))
}

/// Raw server-to-client stream on connection `s` (raw mode 2).
pub fn raw_stream_in_on(s: &mut (impl Read + Write), d: Duration) -> Result<Figure, StoreError> {
    let mut buf = vec![0u8; 256 * 1024];
    let (n, secs) = run_for(d, || {
        s.read_exact(&mut buf).map_err(io)?;
        Ok(buf.len() as u64)
    })?;
    Ok(fig("raw TCP stream, server to client", n / PAGE_SIZE as u64, secs, PAGE_SIZE, false))
}

/// Raw client-to-server stream on connection `s` (raw mode 3).
pub fn raw_stream_out_on(s: &mut (impl Read + Write), d: Duration) -> Result<Figure, StoreError> {
    let buf = vec![7u8; 256 * 1024];
    let (n, secs) = run_for(d, || {
        s.write_all(&buf).map_err(io)?;
        Ok(buf.len() as u64)
    })?;
    Ok(fig("raw TCP stream, client to server", n / PAGE_SIZE as u64, secs, PAGE_SIZE, false))
}

/// Raw ping-pong with the request and reply sizes of a one-page read, on a fresh raw connection to `c`'s server.
pub fn raw_ping_pong(c: &Client, d: Duration) -> Result<Figure, StoreError> {
    raw_ping_pong_on(&mut c.raw_stream(1, PAGE_READ_REQUEST, PAGE_READ_REPLY)?, d)
}

/// Raw server-to-client stream on a fresh raw connection to `c`'s server.
pub fn raw_stream_in(c: &Client, d: Duration) -> Result<Figure, StoreError> {
    raw_stream_in_on(&mut c.raw_stream(2, 256 * 1024, 0)?, d)
}

/// Raw client-to-server stream on a fresh raw connection to `c`'s server.
pub fn raw_stream_out(c: &Client, d: Duration) -> Result<Figure, StoreError> {
    raw_stream_out_on(&mut c.raw_stream(3, 0, 0)?, d)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Measures `a` and its baseline `b` in alternating rounds and reports each figure's median round and the
/// median of the per-round ratios (by latency when `latency`, else by bytes/s): robust when the machine's speed
/// drifts during the run.
fn paired(
    rounds: usize,
    d: Duration,
    latency: bool,
    mut a: impl FnMut(Duration) -> Result<Figure, StoreError>,
    mut b: impl FnMut(Duration) -> Result<Figure, StoreError>,
) -> Result<(Figure, Figure, f64), StoreError> {
    let (mut fa, mut fb, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let (x, y) = (a(d)?, b(d)?);
        ratios.push(if latency {
            x.mean_us.unwrap_or(0.0) / y.mean_us.unwrap_or(1.0)
        } else {
            x.bytes_per_sec / y.bytes_per_sec
        });
        fa.push(x);
        fb.push(y);
    }
    let pick = |v: Vec<Figure>| {
        let m = median(v.iter().map(|f| f.ops_per_sec).collect());
        v.into_iter().find(|f| f.ops_per_sec == m).expect("the median is one of the rounds")
    };
    Ok((pick(fa), pick(fb), median(ratios)))
}

fn fig(name: &str, ops: u64, secs: f64, bytes_each: usize, latency: bool) -> Figure {
    let ops_per_sec = ops as f64 / secs;
    Figure {
        name: name.to_string(),
        ops_per_sec,
        bytes_per_sec: ops_per_sec * bytes_each as f64,
        mean_us: latency.then(|| 1e6 / ops_per_sec),
    }
}

/// Keeps `depth` requests in flight, made by `make`, for `d`; each counts as `per_req` operations.
fn pipelined(
    store: &dyn FarStore,
    d: Duration,
    depth: usize,
    per_req: u64,
    mut make: impl FnMut(u64) -> Request,
) -> Result<(u64, f64), StoreError> {
    let mut q: VecDeque<Pending> = VecDeque::new();
    let start = Instant::now();
    let (mut i, mut n) = (0u64, 0u64);
    while start.elapsed() < d {
        // Refill in bursts of half the window: one system call each.
        if q.len() <= depth / 2 {
            let burst: Vec<Request> = (0..depth - q.len())
                .map(|_| {
                    i += 1;
                    make(i - 1)
                })
                .collect();
            q.extend(store.submit_many(burst)?);
        }
        q.pop_front().expect("queue filled above").wait()?;
        n += per_req;
    }
    for p in q {
        p.wait()?;
        n += per_req;
    }
    Ok((n, start.elapsed().as_secs_f64()))
}

/// A pipelined-throughput figure: [`pipelined`] requests from `make`, each counting `per_req` pages.
fn pipelined_fig<'a>(
    c: &'a Client,
    name: &'static str,
    depth: usize,
    per_req: u64,
    mut make: impl FnMut(u64) -> Request + 'a,
) -> impl FnMut(Duration) -> Result<Figure, StoreError> + 'a {
    move |d| {
        let (n, s) = pipelined(c, d, depth, per_req, &mut make)?;
        Ok(fig(name, n, s, PAGE_SIZE, false))
    }
}

/// The standard set of figures, each memd figure with the median ratio to its raw-TCP baseline over alternating
/// rounds (`secs` in all per figure). Scratch key spaces are deleted afterwards.
pub fn run_all(c: &Client, secs: f64) -> Result<Vec<(Figure, String)>, StoreError> {
    const ROUNDS: u32 = 7;
    let d = Duration::from_secs_f64((secs / f64::from(ROUNDS)).max(0.05));
    let region = crate::far::fresh_space_id();
    let ds = crate::far::fresh_space_id();
    const PAGES: u64 = 4096;
    // Populate 16 MiB of pages to read back.
    let data = vec![0x3cu8; 64 * PAGE_SIZE];
    for chunk in (0..PAGES).collect::<Vec<_>>().chunks(64) {
        c.write_pages(region, chunk, &data[..chunk.len() * PAGE_SIZE])?;
    }
    let mut ping = c.raw_stream(1, PAGE_READ_REQUEST, PAGE_READ_REPLY)?;
    let mut src = c.raw_stream(2, 256 * 1024, 0)?;
    let mut sink = c.raw_stream(3, 0, 0)?;
    let mut out = Vec::new();
    let mut push = |(a, b, r): (Figure, Figure, f64), unit: &str| {
        out.push((a, format!("{r:.2}x raw {unit} (median of {ROUNDS} paired rounds)")));
        if !out.iter().any(|(f, _)| f.name == b.name) {
            out.push((b, String::new()));
        }
    };
    push(
        paired(
            ROUNDS as usize,
            d,
            true,
            |d| {
                let (n, s) = run_for(d, || c.read_pages(region, &[7]).map(|_| 1))?;
                Ok(fig("page read round trip (1 x 4 KiB)", n, s, PAGE_SIZE, true))
            },
            |d| raw_ping_pong_on(&mut ping, d),
        )?,
        "latency",
    );
    let rounds = ROUNDS as usize;
    let reads = |i: u64| Request::ReadPages { region, pages: (0..64).map(|k| (i * 64 + k) % PAGES).collect() };
    let writes = |i: u64| Request::WritePages {
        region,
        pages: (0..64).map(|k| (i * 64 + k) % PAGES).collect(),
        data: data.clone(),
    };
    let one = |i: u64| Request::ReadPages { region, pages: vec![i % PAGES] };
    let f = pipelined_fig(c, "pipelined page reads (64 in flight)", 64, 1, one);
    push(paired(rounds, d, false, f, |d| raw_stream_in_on(&mut src, d))?, "bytes/s");
    let f = pipelined_fig(c, "batched page reads (64/frame, 8 in flight)", 8, 64, reads);
    push(paired(rounds, d, false, f, |d| raw_stream_in_on(&mut src, d))?, "bytes/s");
    let f = pipelined_fig(c, "batched page writes (64/frame, 8 in flight)", 8, 64, writes);
    push(paired(rounds, d, false, f, |d| raw_stream_out_on(&mut sink, d))?, "bytes/s");
    let value = [0x11u8; 64];
    let (n, s) = pipelined(c, d * ROUNDS, 8, 256, |i| {
        let mut b = ObjBatch::new();
        for k in 0..256 {
            b.push((i * 256 + k) % 65536, &value);
        }
        Request::WriteObjects { ds, batch: b }
    })?;
    out.push((fig("batched 64 B object writes (256/frame)", n, s, 64, false), String::new()));
    let (n, s) = pipelined(c, d * ROUNDS, 8, 256, |i| Request::ReadObjects {
        ds,
        ids: (0..256).map(|k| (i * 256 + k) % 65536).collect(),
    })?;
    out.push((fig("batched 64 B object reads (256/frame)", n, s, 64, false), String::new()));
    c.drop_region(region)?;
    c.drop_objects(ds)?;
    Ok(out)
}

/// CPU time (ns) of every thread of this process at one moment, by thread id, with the thread's name — for the
/// per-thread CPU figures of benchmarks (an in-process memd's server threads included). Read from
/// `/proc/self/task/*/schedstat`; a thread that exits meanwhile is simply missing.
#[derive(Clone, Debug, Default)]
pub struct ThreadCpu(HashMap<u32, (String, u64)>);

impl ThreadCpu {
    /// A snapshot of every thread's run time so far.
    pub fn now() -> ThreadCpu {
        let mut out = HashMap::new();
        let Ok(dir) = std::fs::read_dir("/proc/self/task") else { return ThreadCpu(out) };
        for e in dir.flatten() {
            let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            let name = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default().trim().to_string();
            let stat = std::fs::read_to_string(e.path().join("schedstat")).unwrap_or_default();
            if let Some(ns) = stat.split_whitespace().next().and_then(|x| x.parse::<u64>().ok()) {
                out.insert(tid, (name, ns));
            }
        }
        ThreadCpu(out)
    }
}

/// CPU time summed by thread name over one or more intervals; digits are dropped from names, so the workers of a
/// pool add up.
#[derive(Clone, Debug, Default)]
pub struct CpuByName(HashMap<String, u64>);

impl CpuByName {
    /// Adds the CPU time each thread used between two snapshots.
    pub fn add(&mut self, from: &ThreadCpu, to: &ThreadCpu) {
        for (tid, (name, ns)) in &to.0 {
            let before = from.0.get(tid).map_or(0, |x| x.1);
            let key: String = name.chars().filter(|c| !c.is_ascii_digit()).collect();
            *self.0.entry(key).or_insert(0) += ns.saturating_sub(before);
        }
    }

    /// CPU time of all threads together, in ns.
    pub fn total_ns(&self) -> u64 {
        self.0.values().sum()
    }

    /// `total T = name a, name b, ...` in µs per unit of work (`units` of them), busiest thread first, with
    /// `decimals` decimal places.
    pub fn per_unit(&self, units: u64, decimals: usize) -> String {
        let n = units.max(1) as f64 * 1e3;
        let mut v: Vec<(&String, &u64)> = self.0.iter().filter(|(_, ns)| **ns > 0).collect();
        v.sort_by_key(|x| std::cmp::Reverse(*x.1));
        let total: u64 = v.iter().map(|x| *x.1).sum();
        let parts: Vec<String> = v.iter().map(|(name, ns)| format!("{name} {:.decimals$}", **ns as f64 / n)).collect();
        format!("total {:.decimals$} = {}", total as f64 / n, parts.join(", "))
    }
}
