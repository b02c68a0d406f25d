//! Region speed against its floors, all measured in one run, plus replacement-policy miss rates.
//!
//! - `fault/*`: a demand fault on a page held in memd, against the floor = a bare userfaultfd round trip served
//!   from local memory + one memd 4 KiB read round trip (both measured here, on the same loopback memd).
//! - `scan/*`: a sequential scan of a region 4× its budget, against a raw TCP stream from the same memd.
//! - Paired rounds (printed after the criterion runs; these are the figures for the goals): the fault floor's two
//!   parts and the region fault measured in blocks of 200 back to back, 30 rounds, and the scan alternating with
//!   the raw stream of the same 256 MiB, 9 rounds, each round giving one ratio, so a slow phase of the shared
//!   machine hits both sides alike. The bare handler is measured blocking in `poll` and spinning like the
//!   region's event thread (`RegionConfig::spin`): the goal compares with the spinning one, like with like. The
//!   memd read is measured as a plain call and, like the region's event thread waits for a demand fetch,
//!   polling for its reply (`RegionConfig::reply_spin`); the ratio against that floor is printed too.
//!   A third paired figure, `rewrite`, times read-modify-write sweeps with and without `RegionConfig::write_ahead`.
//!   `REGION_PAIRED=faults|scan|rewrite` runs only one of them (e.g. `cargo bench --bench region -- paired` skips the
//!   criterion runs); `SPIN_US`, `REPLY_SPIN_US`, `RA_MAX`, `FOLLOW_FAULTS=1` and `KEEP_AWAKE_US` override the
//!   region's spin, reply spin, largest readahead window, CPU following and keep-awake window (the fault floor is
//!   then measured with the same keep-awake spinners).
//! - `random/*`: random 4 KiB reads and writes over a region 4× its budget (budget = 25%), and the same loop on
//!   plain memory. Kernel swap under the same limit is measured by hand with the `randrw` example.
//! - A summary table of ratios, then miss rates of the region's CLOCK, FIFO and exact LRU on access traces
//!   (simulated, and the region's real fault count on the same trace).
//!
//! Skips with a message where userfaultfd is unavailable.
#![allow(clippy::cast_possible_truncation, reason = "benchmarks run on 64-bit targets only")]

use criterion::{criterion_group, Criterion};
use farmem_memd::bench::{CpuByName, ThreadCpu};
use farmem_memd::testing::TestServer;
use farmem_memd::FarStore;
use farmem_uffd::raw::{self, Msg, Uffd};
use farmem_uffd::sim::{self, Policy};
use farmem_uffd::{Region, RegionConfig, PAGE_SIZE};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

/// Per-benchmark totals (elapsed, operations), for the same-run ratio table.
static TOTALS: Mutex<Option<HashMap<&'static str, (Duration, u64)>>> = Mutex::new(None);

fn add(name: &'static str, d: Duration, ops: u64) {
    let mut t = TOTALS.lock();
    let e = t.get_or_insert_with(HashMap::new).entry(name).or_insert((Duration::ZERO, 0));
    e.0 += d;
    e.1 += ops;
}

/// Per-operation samples (ns) for medians, which a shared noisy machine distorts less than means.
static SAMPLES: Mutex<Option<HashMap<&'static str, Vec<u64>>>> = Mutex::new(None);

fn sample(name: &'static str, d: Duration) {
    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    SAMPLES.lock().get_or_insert_with(HashMap::new).entry(name).or_default().push(ns);
}

fn median_ns(name: &str) -> Option<f64> {
    let mut t = SAMPLES.lock();
    let v = t.as_mut()?.get_mut(name)?;
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    Some(v[v.len() / 2] as f64)
}

fn per_op_ns(name: &str) -> Option<f64> {
    let t = TOTALS.lock();
    let (d, n) = *t.as_ref()?.get(name)?;
    (n > 0).then(|| d.as_secs_f64() * 1e9 / n as f64)
}

struct Env {
    server: TestServer,
}

fn env() -> &'static Env {
    static E: OnceLock<Env> = OnceLock::new();
    E.get_or_init(|| Env { server: TestServer::start(4 << 30) })
}

fn client() -> Arc<dyn FarStore> {
    Arc::new(env().server.client())
}

fn region(size: usize, budget: usize, readahead: bool, trace: bool) -> Option<Region> {
    let cfg = RegionConfig { size, local_mem: budget, readahead, trace, ..RegionConfig::default() };
    match Region::new(cfg, client()) {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("skipping region benchmarks: {e}");
            None
        }
    }
}

fn touch(r: &Region, page: usize, write: bool) -> u64 {
    let p = r.base().wrapping_add(page * PAGE_SIZE).cast::<u64>();
    // SAFETY: `page` is inside the region.
    unsafe {
        if write {
            p.write_volatile(page as u64);
            0
        } else {
            p.read_volatile()
        }
    }
}

/// A bare userfaultfd: one handler thread answering each missing fault with UFFDIO_COPY from a local page. With
/// a non-zero `spin` it waits for events the way the region's event thread does: it keeps reading the
/// descriptor for `spin` after the last event before it blocks in `poll`.
struct Bare {
    map: farmem_uffd::mem::Mapping,
    uffd: Arc<Uffd>,
    stop: Arc<AtomicBool>,
    handler: Option<std::thread::JoinHandle<()>>,
}

impl Bare {
    fn new(pages: usize, spin: Duration) -> Option<Bare> {
        let map = farmem_uffd::mem::Mapping::new(pages * PAGE_SIZE).ok()?;
        let uffd = Arc::new(Uffd::open().ok()?);
        uffd.api(0).ok()?;
        uffd.register(map.ptr() as u64, map.len() as u64, raw::REGISTER_MODE_MISSING).ok()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (u, s) = (Arc::clone(&uffd), Arc::clone(&stop));
        let handler = std::thread::spawn(move || {
            let src = vec![7u8; PAGE_SIZE];
            let mut msgs = Vec::new();
            let mut busy = Instant::now();
            while !s.load(Ordering::Relaxed) {
                msgs.clear();
                if busy.elapsed() >= spin {
                    let mut fds = [libc::pollfd { fd: u.raw_fd(), events: libc::POLLIN, revents: 0 }];
                    // SAFETY: one live pollfd for our own descriptor.
                    unsafe { libc::poll(fds.as_mut_ptr(), 1, 50) };
                }
                let _ = u.read_msgs(&mut msgs, 64);
                if !msgs.is_empty() {
                    busy = Instant::now();
                }
                for m in &msgs {
                    if let Msg::PageFault { addr, .. } = *m {
                        let _ = u.copy(addr & !(PAGE_SIZE as u64 - 1), src.as_ptr(), PAGE_SIZE as u64, 0);
                    }
                }
            }
        });
        Some(Bare { map, uffd, stop, handler: Some(handler) })
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handler.take() {
            let _ = h.join();
        }
        let _ = &self.uffd;
    }
}

fn fault_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("fault");
    g.sample_size(10).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(500));
    // Floor part 1: a bare userfaultfd round trip served from local memory.
    if let Some(bare) = Bare::new(64 * 1024, Duration::ZERO) {
        let pages = bare.map.len() / PAGE_SIZE;
        let mut next = 0usize;
        g.bench_function("uffd_round_trip_local", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    if next == pages {
                        raw::dontneed(bare.map.ptr() as u64, bare.map.len() as u64).unwrap();
                        next = 0;
                    }
                    let p = bare.map.ptr().wrapping_add(next * PAGE_SIZE);
                    let t = Instant::now();
                    // SAFETY: inside the bare mapping.
                    std::hint::black_box(unsafe { p.read_volatile() });
                    let d = t.elapsed();
                    total += d;
                    sample("uffd_floor", d);
                    next += 1;
                }
                add("uffd_floor", total, iters);
                total
            })
        });
    }
    // Floor part 2: one memd 4 KiB read round trip.
    let store = client();
    let data = vec![3u8; PAGE_SIZE];
    store.write_pages(1, &[0], &data).unwrap();
    g.bench_function("memd_read_4k", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                let t1 = Instant::now();
                std::hint::black_box(store.read_pages(1, &[0]).unwrap());
                sample("memd_floor", t1.elapsed());
            }
            let d = t.elapsed();
            add("memd_floor", d, iters);
            d
        })
    });
    // The region: a read fault on a page memd holds, readahead off, random order.
    let pages = 32 * 1024;
    if let Some(r) = region(pages * PAGE_SIZE, 4 * MIB, false, false) {
        for p in 0..pages {
            touch(&r, p, true);
        }
        let order = permutation(pages, 42);
        let mut k = 0;
        g.bench_function("region_fetch_fault", |b| {
            b.iter_custom(|iters| {
                let before = r.stats().missing_faults;
                let t = Instant::now();
                for _ in 0..iters {
                    let t1 = Instant::now();
                    std::hint::black_box(touch(&r, order[k % pages], false));
                    // Accesses this fast hit a resident page; the rest are the faults compared with the floor.
                    let d1 = t1.elapsed();
                    if d1 > Duration::from_micros(2) {
                        sample("region_fault", d1);
                    }
                    k += 1;
                }
                let d = t.elapsed();
                let faults = r.stats().missing_faults - before;
                add("region_fault", d, faults.max(1));
                // Per-fault time is what the floor compares with; criterion reports per access.
                d
            })
        });
        let s = r.stats();
        println!(
            "region fault service latency (event read to install): p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs",
            s.latency_p50_ns as f64 / 1e3,
            s.latency_p90_ns as f64 / 1e3,
            s.latency_p99_ns as f64 / 1e3
        );
    }
    g.finish();
}

fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut x = seed | 1;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

fn scan_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("scan");
    g.sample_size(10).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_millis(500));
    let (size, budget) = (256 * MIB, 64 * MIB);
    g.throughput(criterion::Throughput::Bytes(size as u64));
    let spin = std::env::var("SPIN_US").ok().and_then(|v| v.parse().ok()).map(Duration::from_micros);
    let cfg = RegionConfig {
        size,
        local_mem: budget,
        spin: spin.unwrap_or(Duration::from_micros(50)),
        ..RegionConfig::default()
    };
    if let Ok(r) = Region::new(cfg, client()) {
        for p in 0..size / PAGE_SIZE {
            touch(&r, p, true);
        }
        g.bench_function("region_4x_budget", |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    let mut sum = 0u64;
                    for off in (0..size).step_by(64) {
                        // SAFETY: inside the region.
                        sum = sum.wrapping_add(unsafe { r.base().add(off).cast::<u64>().read_volatile() });
                    }
                    std::hint::black_box(sum);
                }
                let d = t.elapsed();
                add("scan_region", d, iters * size as u64);
                d
            })
        });
        let s = r.stats();
        println!(
            "scan: {} faults, {} pages read ahead ({} hits), {} fetched on demand, {} clean drops",
            s.missing_faults, s.readahead_pages, s.readahead_hits, s.pages_fetched, s.clean_drops
        );
    }
    g.finish();
}

fn random_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("random");
    g.sample_size(10).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(500));
    let (size, budget) = (256 * MIB, 64 * MIB);
    let pages = size / PAGE_SIZE;
    let ops = permutation(4 * pages, 9);
    if let Some(r) = region(size, budget, true, true) {
        for p in 0..pages {
            touch(&r, p, true);
        }
        let mut k = 0;
        g.bench_function("region_25pct_budget", |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    let x = ops[k % ops.len()];
                    std::hint::black_box(touch(&r, x % pages, x & 1 == 0));
                    k += 1;
                }
                let d = t.elapsed();
                add("random_region", d, iters);
                d
            })
        });
        // The region's real fault trace of this workload, for the policy table.
        let trace = r.fault_trace();
        let s = r.stats();
        *RANDOM_TRACE.lock() = Some((trace.len(), s.missing_faults));
    }
    let mut plain = vec![0u64; size / 8];
    let mut k = 0;
    g.bench_function("plain_memory", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                let x = ops[k % ops.len()];
                let i = (x % pages) * (PAGE_SIZE / 8);
                if x & 1 == 0 {
                    plain[i] = x as u64;
                } else {
                    std::hint::black_box(plain[i]);
                }
                k += 1;
            }
            let d = t.elapsed();
            add("random_plain", d, iters);
            d
        })
    });
    g.finish();
}

static RANDOM_TRACE: Mutex<Option<(usize, u64)>> = Mutex::new(None);

/// A region with the default configuration, except what `SPIN_US` (event-thread spin, µs), `RA_MAX` (largest
/// readahead window, pages) and `FOLLOW_FAULTS` (1: threads pinned to the faulting CPU) set, for trying
/// settings without a rebuild.
fn tuned_region(size: usize, budget: usize, readahead: bool) -> Option<Region> {
    let var = |n: &str| std::env::var(n).ok().and_then(|v| v.parse::<u64>().ok());
    let mut cfg = RegionConfig { size, local_mem: budget, readahead, ..RegionConfig::default() };
    if let Some(us) = var("SPIN_US") {
        cfg.spin = Duration::from_micros(us);
    }
    if let Some(w) = var("RA_MAX").and_then(|w| usize::try_from(w).ok()) {
        cfg.max_readahead = w;
    }
    if let Some(f) = var("FOLLOW_FAULTS") {
        cfg.follow_faults = f != 0;
    }
    if let Some(us) = var("REPLY_SPIN_US") {
        cfg.reply_spin = Duration::from_micros(us);
    }
    cfg.keep_awake = keep_awake();
    match Region::new(cfg, client()) {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("skipping paired region benchmarks: {e}");
            None
        }
    }
}

/// The regions' keep-awake window: `KEEP_AWAKE_US` (µs, 0 = off) or the default.
fn keep_awake() -> Duration {
    std::env::var("KEEP_AWAKE_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(RegionConfig::default().keep_awake, Duration::from_micros)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn spread(v: &mut [f64]) -> String {
    v.sort_by(f64::total_cmp);
    format!("median {:.2}x, range {:.2}-{:.2}x over {} rounds", v[v.len() / 2], v[0], v[v.len() - 1], v.len())
}

/// The fault goal in paired rounds: each round takes `per` samples of a bare userfaultfd round trip (handler
/// blocking in `poll`, and handler spinning like the region's event thread), of a memd 4 KiB read, and of a
/// region fetch fault, one block after the other, so a slow phase of the shared machine hits all of them alike.
/// The ratio of each round is region median / (uffd median + memd median).
fn paired_faults(rounds: usize, per: usize) {
    let spin = RegionConfig::default().spin;
    let (Some(block), Some(spinning)) = (Bare::new(16 * 1024, Duration::ZERO), Bare::new(16 * 1024, spin)) else {
        return;
    };
    let store = client();
    store.write_pages(1, &[0], &[3u8; PAGE_SIZE]).unwrap();
    let pages = 32 * 1024;
    let Some(r) = tuned_region(pages * PAGE_SIZE, 4 * MIB, false) else { return };
    // The memd read as the region's event thread waits for a demand fetch: polling the socket for its reply.
    let reply_spin = r.config().reply_spin;
    let spin_read = || {
        let req = farmem_memd::Request::ReadPages { region: 1, pages: vec![0] };
        let t = Instant::now();
        std::hint::black_box(store.submit(req).and_then(|p| p.wait_spinning(reply_spin)).unwrap());
        t.elapsed().as_nanos() as f64
    };
    for p in 0..pages {
        touch(&r, p, true);
    }
    let order = permutation(pages, 7);
    let (mut k, mut nb, mut ns) = (0usize, 0usize, 0usize);
    let bare_fault = |b: &Bare, next: &mut usize| -> f64 {
        let n = b.map.len() / PAGE_SIZE;
        if *next == n {
            raw::dontneed(b.map.ptr() as u64, b.map.len() as u64).unwrap();
            *next = 0;
        }
        let p = b.map.ptr().wrapping_add(*next * PAGE_SIZE);
        *next += 1;
        let t = Instant::now();
        // SAFETY: inside the bare mapping.
        std::hint::black_box(unsafe { p.read_volatile() });
        t.elapsed().as_nanos() as f64
    };
    let (mut rb, mut rs, mut rp, mut rw) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut mw = Vec::new();
    let mut cpu = CpuByName::default();
    let s0 = r.stats();
    let (mut mb, mut ms, mut mm, mut mr) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // Floor without spinners (only when the region keeps CPUs awake): memd read and spinning bare handler.
    let (mut pm, mut ps) = (Vec::new(), Vec::new());
    // With the region keeping idle CPUs awake, the floor is measured with the same spinners, poked before every
    // sample (as the region's event thread pokes them on every fault): like with like.
    let window = keep_awake();
    let awake = (!window.is_zero()).then(|| farmem_uffd::awake::KeepAwake::start(window).unwrap());
    let poke = || {
        if let Some(k) = &awake {
            k.poke();
        }
    };
    for _ in 0..rounds {
        let mut b: Vec<f64> = (0..per)
            .map(|_| {
                poke();
                bare_fault(&block, &mut nb)
            })
            .collect();
        let mut sp: Vec<f64> = (0..per)
            .map(|_| {
                poke();
                bare_fault(&spinning, &mut ns)
            })
            .collect();
        let mut m: Vec<f64> = (0..per)
            .map(|_| {
                poke();
                let t = Instant::now();
                std::hint::black_box(store.read_pages(1, &[0]).unwrap());
                t.elapsed().as_nanos() as f64
            })
            .collect();
        let mut w: Vec<f64> = (0..per)
            .map(|_| {
                poke();
                spin_read()
            })
            .collect();
        if awake.is_some() {
            // Spinners idle for their window first, then the floor as a machine without them sees it.
            std::thread::sleep(window * 2);
            let mut pb: Vec<f64> = (0..per).map(|_| bare_fault(&spinning, &mut ns)).collect();
            let mut pr: Vec<f64> = (0..per)
                .map(|_| {
                    let t = Instant::now();
                    std::hint::black_box(store.read_pages(1, &[0]).unwrap());
                    t.elapsed().as_nanos() as f64
                })
                .collect();
            ps.push(median(&mut pb));
            pm.push(median(&mut pr));
        }
        let mut f = Vec::with_capacity(per);
        let c0 = ThreadCpu::now();
        while f.len() < per {
            let t = Instant::now();
            std::hint::black_box(touch(&r, order[k % pages], false));
            let d = t.elapsed();
            k += 1;
            // Accesses this fast hit a resident page; the rest are the faults compared with the floor.
            if d > Duration::from_micros(2) {
                f.push(d.as_nanos() as f64);
            }
        }
        cpu.add(&c0, &ThreadCpu::now());
        let (b, sp, m, w, f) = (median(&mut b), median(&mut sp), median(&mut m), median(&mut w), median(&mut f));
        rb.push(f / (b + m));
        rs.push(f / (sp + m));
        rw.push(f / (sp + w));
        mw.push(w);
        mb.push(b);
        ms.push(sp);
        mm.push(m);
        mr.push(f);
        if let (Some(&x), Some(&y)) = (ps.last(), pm.last()) {
            rp.push(f / (x + y));
        }
    }
    let us = |v: &mut Vec<f64>| median(v) / 1e3;
    println!(
        "fault (paired rounds of {per}, medians): region {:.1} µs; memd 4K read {:.1} µs; bare uffd {:.1} µs \
         spinning handler, {:.1} µs blocking handler; memd 4K read polling for its reply ({} µs, like the \
         region's event thread) {:.1} µs",
        us(&mut mr),
        us(&mut mm),
        us(&mut ms),
        us(&mut mb),
        reply_spin.as_micros(),
        us(&mut mw)
    );
    if let Some(k) = &awake {
        println!(
            "  region and floor both with idle CPUs kept awake ({} spinners, {} µs after each fault/sample)",
            k.spinners(),
            window.as_micros()
        );
        println!(
            "  floor without spinners, same rounds: memd 4K read {:.1} µs, bare uffd {:.1} µs spinning handler; \
             region (kept awake) vs that floor: {}",
            us(&mut pm),
            us(&mut ps),
            spread(&mut rp)
        );
    }
    println!("  ratio vs floor with a spinning bare handler (like the region's): {}", spread(&mut rs));
    println!("  ratio vs floor with a blocking bare handler: {}", spread(&mut rb));
    println!(
        "  ratio vs floor with a spinning bare handler and a memd read polling for its reply (both waits like \
         the region's): {}",
        spread(&mut rw)
    );
    let s1 = r.stats();
    print_cpu("region faults", &cpu, "missing fault", s1.missing_faults - s0.missing_faults);
    let s = r.stats();
    println!(
        "  region's own fault service latency (event read to install): p50 {:.1} µs, p90 {:.1} µs; event and \
         eviction threads moved between CPUs {} times",
        s.latency_p50_ns as f64 / 1e3,
        s.latency_p90_ns as f64 / 1e3,
        s1.cpu_moves - s0.cpu_moves
    );
}

/// The scan goal in paired rounds: each round scans a region 4× its budget once, then reads the same number of
/// bytes from a raw TCP stream of the same memd. The ratio of each round is region bytes/s / raw bytes/s.
fn paired_scan(rounds: usize) {
    let (size, budget) = (256 * MIB, 64 * MIB);
    let Some(r) = tuned_region(size, budget, true) else { return };
    for p in 0..size / PAGE_SIZE {
        touch(&r, p, true);
    }
    let c = env().server.client();
    let Ok(mut raw) = c.raw_stream(2, 256 * 1024, 0) else { return };
    let mut buf = vec![0u8; 256 * 1024];
    let scan = || {
        let mut sum = 0u64;
        for off in (0..size).step_by(64) {
            // SAFETY: inside the region.
            sum = sum.wrapping_add(unsafe { r.base().add(off).cast::<u64>().read_volatile() });
        }
        std::hint::black_box(sum);
    };
    scan();
    let (mut ratios, mut rr, mut tr) = (Vec::new(), Vec::new(), Vec::new());
    let (mut cpu_region, mut cpu_raw) = (CpuByName::default(), CpuByName::default());
    let s0 = r.stats();
    // Markers for a profiler attached to the measured rounds only (the setup above dominates a whole run).
    eprintln!("paired scan: rounds start");
    for _ in 0..rounds {
        let c0 = ThreadCpu::now();
        let t = Instant::now();
        scan();
        let region_bps = size as f64 / t.elapsed().as_secs_f64();
        let c1 = ThreadCpu::now();
        let t = Instant::now();
        let mut got = 0;
        while got < size {
            std::io::Read::read_exact(&mut raw, &mut buf).unwrap();
            got += buf.len();
        }
        let raw_bps = size as f64 / t.elapsed().as_secs_f64();
        cpu_region.add(&c0, &c1);
        cpu_raw.add(&c1, &ThreadCpu::now());
        ratios.push(region_bps / raw_bps);
        rr.push(region_bps / 1e6);
        tr.push(raw_bps / 1e6);
    }
    eprintln!("paired scan: rounds end");
    println!(
        "scan 4x budget (paired rounds of 256 MiB): region {:.0} MB/s; raw TCP stream {:.0} MB/s; ratio {}",
        median(&mut rr),
        median(&mut tr),
        spread(&mut ratios)
    );
    let pages = rounds * size / PAGE_SIZE;
    let s1 = r.stats();
    let per_k = |a: u64, b: u64| (b - a) as f64 * 1000.0 / pages as f64;
    println!(
        "  per 1000 pages scanned: {:.1} missing faults, {:.1} deferred, {:.0} read ahead, {:.0} fetched on demand, \
         {:.0} dropped clean, {:.0} moved out",
        per_k(s0.missing_faults, s1.missing_faults),
        per_k(s0.deferred_faults, s1.deferred_faults),
        per_k(s0.readahead_pages, s1.readahead_pages),
        per_k(s0.pages_fetched, s1.pages_fetched),
        per_k(s0.clean_drops, s1.clean_drops),
        per_k(s0.evicted_moved, s1.evicted_moved),
    );
    print_cpu("region scan", &cpu_region, "4 KiB page", pages as u64);
    print_cpu("raw TCP stream", &cpu_raw, "4 KiB page", pages as u64);
}

/// The write-ahead figure in paired rounds: read-modify-write sweeps (one word per 64 bytes read and rewritten) over
/// two regions 4x their budget, one with `write_ahead` (the default) and one without, alternating; each round's
/// ratio is the time without over the time with.
fn paired_rewrite(rounds: usize) {
    let (size, budget) = (256 * MIB, 64 * MIB);
    let Some(on) = tuned_region(size, budget, true) else { return };
    let Ok(off) = Region::new(RegionConfig { write_ahead: false, ..on.config().clone() }, client()) else { return };
    let sweep = |r: &Region| {
        let t = Instant::now();
        for o in (0..size).step_by(64) {
            // SAFETY: inside the region.
            unsafe {
                let w = r.base().add(o).cast::<u64>();
                w.write_volatile(w.read_volatile().wrapping_add(1));
            }
        }
        t.elapsed()
    };
    for r in [&on, &off] {
        for p in 0..size / PAGE_SIZE {
            touch(r, p, true);
        }
        sweep(r);
    }
    let (s0_on, s0_off) = (on.stats(), off.stats());
    let (mut ratios, mut ton, mut toff) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let a = sweep(&on);
        let b = sweep(&off);
        ratios.push(b.as_secs_f64() / a.as_secs_f64());
        ton.push(size as f64 / a.as_secs_f64() / 1e6);
        toff.push(size as f64 / b.as_secs_f64() / 1e6);
    }
    println!(
        "rewrite sweep 4x budget (paired rounds of 256 MiB, each word read and rewritten): write-ahead {:.0} MB/s; \
         without {:.0} MB/s; speed-up {}",
        median(&mut ton),
        median(&mut toff),
        spread(&mut ratios)
    );
    let pages = (rounds * size / PAGE_SIZE) as f64;
    for (what, r, s0) in [("write-ahead", &on, &s0_on), ("without", &off, &s0_off)] {
        let s = r.stats();
        let per_k = |a: u64, b: u64| (b - a) as f64 * 1000.0 / pages;
        println!(
            "  per 1000 pages, {what}: {:.1} write-protect faults, {:.1} missing faults, {:.0} mapped writable \
             ahead, {:.0} written back",
            per_k(s0.wp_faults, s.wp_faults),
            per_k(s0.missing_faults, s.missing_faults),
            per_k(s0.readahead_writable + s0.predicted_writable, s.readahead_writable + s.predicted_writable),
            per_k(s0.pages_written, s.pages_written),
        );
    }
}

/// Prints CPU time per unit by thread name, largest first.
fn print_cpu(what: &str, cpu: &CpuByName, unit: &str, n: u64) {
    println!("  CPU µs per {unit}, {what}: {}", cpu.per_unit(n, 2));
}

fn summary() {
    println!("\n== criterion phases (each figure from its own phase; the paired rounds below are the goal figures) ==");
    type Stat = fn(&str) -> Option<f64>;
    for (what, ns) in [("means", per_op_ns as Stat), ("medians", median_ns)] {
        let f = |n| ns(n).map(|v| v / 1e3);
        if let (Some(u), Some(m), Some(r)) = (f("uffd_floor"), f("memd_floor"), f("region_fault")) {
            println!(
                "fault ({what}): region {r:.1} µs/fault; floor = uffd {u:.1} µs + memd 4K read {m:.1} µs = {:.1} µs; \
                 ratio {:.2}x",
                u + m,
                r / (u + m)
            );
        }
    }
    let store = env().server.client();
    if let (Some(ns), Ok(tcp)) =
        (per_op_ns("scan_region"), farmem_memd::bench::raw_stream_in(&store, Duration::from_secs(2)))
    {
        let region_bps = 1e9 / ns;
        println!(
            "scan 4x budget: region {:.0} MB/s; raw TCP stream {:.0} MB/s; ratio {:.2}",
            region_bps / 1e6,
            tcp.bytes_per_sec / 1e6,
            region_bps / tcp.bytes_per_sec
        );
    }
    println!("\n== paired rounds (the figures for the goals) ==");
    // REGION_PAIRED=faults, =scan or =rewrite runs only one of them (for profiling).
    let only = std::env::var("REGION_PAIRED").unwrap_or_default();
    if only.is_empty() || only == "faults" {
        paired_faults(30, 200);
    }
    if only.is_empty() || only == "scan" {
        // `SCAN_ROUNDS` gives more rounds (for profiling).
        let rounds = std::env::var("SCAN_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(9);
        paired_scan(rounds);
    }
    if only.is_empty() || only == "rewrite" {
        paired_rewrite(5);
    }
    let f = |n| per_op_ns(n).map(|v| v / 1e3);
    if let (Some(r), Some(p)) = (f("random_region"), f("random_plain")) {
        println!("random 4K r/w, budget 25%: region {r:.2} µs/op ({:.0} ops/s); plain memory {p:.3} µs/op", 1e6 / r);
    }
    policy_table();
}

/// Miss rates of the region's CLOCK next to FIFO and exact LRU, simulated, and the region's real missing-fault
/// count when the same trace is replayed on a region (readahead off).
fn policy_table() {
    println!("\n== replacement policy: misses per 1000 accesses (frames = budget pages) ==");
    println!("{:<34} {:>8} {:>8} {:>9} {:>12}", "trace", "FIFO", "LRU", "WP-CLOCK", "region real");
    let frames = 1024;
    let traces: Vec<(&str, Vec<sim::Access>)> = vec![
        ("hot/cold 70% on 512 hot, 50% writes", sim::hot_cold_trace(200_000, 512, 16_384, 0.7, 0.5, 1)),
        ("hot/cold 90% on 768 hot, 90% writes", sim::hot_cold_trace(200_000, 768, 16_384, 0.9, 0.9, 2)),
        ("hot/cold 90% on 768 hot, reads only", sim::hot_cold_trace(200_000, 768, 16_384, 0.9, 0.0, 3)),
        ("uniform random, 50% writes", sim::hot_cold_trace(200_000, 0, 4096, 0.0, 0.5, 4)),
    ];
    for (name, t) in traces {
        let per_k = |m: u64| m as f64 * 1000.0 / t.len() as f64;
        let real = replay(&t, frames);
        println!(
            "{name:<34} {:>8.1} {:>8.1} {:>9.1} {:>12}",
            per_k(sim::misses(Policy::Fifo, &t, frames)),
            per_k(sim::misses(Policy::Lru, &t, frames)),
            per_k(sim::misses(Policy::WpClock, &t, frames)),
            real.map_or("-".into(), |m| format!("{:.1}", per_k(m)))
        );
    }
    if let Some((n, faults)) = *RANDOM_TRACE.lock() {
        println!("(random bench: {n} missing faults traced, {faults} counted)");
    }
}

/// Replays a trace on a real region with a budget of `frames` pages; returns its missing faults.
fn replay(t: &[sim::Access], frames: usize) -> Option<u64> {
    let max = t.iter().map(|a| a.0).max()? as usize + 1;
    let r = region(max * PAGE_SIZE, frames * PAGE_SIZE, false, false)?;
    for &(p, w) in t {
        touch(&r, p as usize, w);
    }
    Some(r.stats().missing_faults)
}

criterion_group!(benches, fault_benches, scan_benches, random_benches);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
