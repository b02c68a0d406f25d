//! memd speed against raw TCP on the same loopback server, in one run.
//!
//! Each group pairs a memd figure with its baseline: a one-page read round trip with a raw ping-pong of the same
//! request and reply sizes; pipelined one-page reads with a raw server-to-client stream; batched 64 B object ops
//! are reported in operations per second (goal: at least 1 M/s).
//!
//! `MEMD_BULK=1 cargo bench -p farmem-memd --bench memd` runs only the bulk-read rounds instead: the server's CPU
//! per 4 KiB served for the paging path's readahead (READ_PAGES of 64 pages, 4 in flight), for objrt's scan
//! prefetch (READ_OBJECTS of 64 × 4 KiB values, 4 in flight), and for a raw TCP stream of the same bytes, in
//! alternating rounds over 64 MiB of each (per-thread CPU from `/proc/self/task/*/schedstat`).

use criterion::{criterion_group, Criterion, Throughput};
use farmem_memd::bench::{PAGE_READ_REPLY, PAGE_READ_REQUEST};
use farmem_memd::testing::TestServer;
use farmem_memd::{FarStore, ObjBatch, Request, PAGE_SIZE};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::time::Instant;

fn page_read_round_trip(c: &mut Criterion) {
    let s = TestServer::start(1 << 30);
    let client = s.client();
    client.write_pages(1, &[0], &[7u8; PAGE_SIZE]).unwrap();
    let mut g = c.benchmark_group("page_read_round_trip");
    g.bench_function("memd", |b| b.iter(|| client.read_pages(1, &[0]).unwrap()));
    let mut raw = client.raw_stream(1, PAGE_READ_REQUEST, PAGE_READ_REPLY).unwrap();
    let (req, mut rep) = (vec![1u8; PAGE_READ_REQUEST as usize], vec![0u8; PAGE_READ_REPLY as usize]);
    g.bench_function("raw_tcp_ping_pong", |b| {
        b.iter(|| {
            raw.write_all(&req).unwrap();
            raw.read_exact(&mut rep).unwrap();
        })
    });
    g.finish();
}

fn pipelined_reads(c: &mut Criterion) {
    let s = TestServer::start(1 << 30);
    let client = s.client();
    let pages: Vec<u64> = (0..1024).collect();
    client.write_pages(1, &pages, &vec![3u8; 1024 * PAGE_SIZE]).unwrap();
    let mut g = c.benchmark_group("pipelined_4k_reads");
    g.throughput(Throughput::Bytes(PAGE_SIZE as u64));
    g.bench_function("memd_64_in_flight", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            let mut q = VecDeque::new();
            let mut sent = 0u64;
            for _ in 0..iters {
                if q.len() <= 32 && sent < iters {
                    let n = (64 - q.len() as u64).min(iters - sent);
                    let burst = (0..n).map(|i| Request::ReadPages { region: 1, pages: vec![(sent + i) % 1024] });
                    q.extend(client.submit_many(burst.collect()).unwrap());
                    sent += n;
                }
                q.pop_front().unwrap().wait().unwrap();
            }
            t.elapsed()
        })
    });
    let mut raw = client.raw_stream(2, 256 * 1024, 0).unwrap();
    let mut buf = vec![0u8; PAGE_SIZE];
    g.bench_function("raw_tcp_stream", |b| b.iter(|| raw.read_exact(&mut buf).unwrap()));
    g.finish();
}

fn batched_objects(c: &mut Criterion) {
    let s = TestServer::start(1 << 30);
    let client = s.client();
    let mut g = c.benchmark_group("batched_64b_objects");
    g.throughput(Throughput::Elements(256));
    let value = [9u8; 64];
    g.bench_function("write_256_per_frame", |b| {
        let mut i = 0u64;
        b.iter(|| {
            let mut batch = ObjBatch::new();
            for k in 0..256 {
                batch.push((i * 256 + k) % 65536, &value);
            }
            i += 1;
            client.write_objects(1, batch).unwrap()
        })
    });
    let ids: Vec<u64> = (0..256).collect();
    g.bench_function("read_256_per_frame", |b| b.iter(|| client.read_objects(1, &ids).unwrap()));
    g.finish();
}

/// CPU time (ns) on the server's worker threads (named `memd`) so far.
fn server_cpu_ns() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else { return 0 };
    let mut ns = 0;
    for e in dir.flatten() {
        if std::fs::read_to_string(e.path().join("comm")).unwrap_or_default().trim() != "memd" {
            continue;
        }
        let stat = std::fs::read_to_string(e.path().join("schedstat")).unwrap_or_default();
        ns += stat.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    ns
}

fn bulk_reads() {
    const N: u64 = 16384;
    const BATCH: usize = 64;
    const IN_FLIGHT: usize = 4;
    let s = TestServer::start(1 << 30);
    let client = s.client();
    let value = vec![5u8; PAGE_SIZE];
    for start in (0..N).step_by(256) {
        let ids: Vec<u64> = (start..start + 256).collect();
        client.write_pages(1, &ids, &vec![4u8; 256 * PAGE_SIZE]).unwrap();
        let mut b = ObjBatch::new();
        for &id in &ids {
            b.push(id, &value);
        }
        client.write_objects(2, b).unwrap();
    }
    let scan = |make: &dyn Fn(Vec<u64>) -> Request| {
        let mut q = VecDeque::new();
        for start in (0..N).step_by(BATCH) {
            if q.len() == IN_FLIGHT {
                let p: farmem_memd::Pending = q.pop_front().unwrap();
                p.wait().unwrap();
            }
            q.push_back(client.submit(make((start..start + BATCH as u64).collect())).unwrap());
        }
        q.into_iter().for_each(|p| drop(p.wait().unwrap()));
    };
    let mut raw = client.raw_stream(2, 256 * 1024, 0).unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let rounds = 7;
    let (mut cpu, mut secs) = ([vec![], vec![], vec![]], [vec![], vec![], vec![]]);
    for _ in 0..rounds {
        for (k, cpu) in cpu.iter_mut().enumerate() {
            let (c0, t) = (server_cpu_ns(), Instant::now());
            match k {
                0 => scan(&|pages| Request::ReadPages { region: 1, pages }),
                1 => scan(&|ids| Request::ReadObjects { ds: 2, ids }),
                _ => {
                    for _ in 0..N * PAGE_SIZE as u64 / buf.len() as u64 {
                        raw.read_exact(&mut buf).unwrap();
                    }
                }
            }
            secs[k].push(t.elapsed().as_secs_f64());
            cpu.push((server_cpu_ns() - c0) as f64 / N as f64 / 1e3);
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("bulk reads of 64 MiB, {rounds} alternating rounds (medians; CPU of the server's threads per 4 KiB):");
    let raw_cpu = med(&mut cpu[2].clone());
    let raw_s = med(&mut secs[2].clone());
    for (k, what) in ["READ_PAGES 64 x 4 KiB", "READ_OBJECTS 64 x 4 KiB", "raw TCP stream"].iter().enumerate() {
        let (c, t) = (med(&mut cpu[k]), med(&mut secs[k]));
        let (lo, hi) = (cpu[k][0], cpu[k][rounds - 1]);
        println!(
            "  {what:<24} server CPU {c:.2} µs/page (range {lo:.2}-{hi:.2}, {:.2}x raw); {:.2} GB/s ({:.2}x raw)",
            c / raw_cpu,
            (N * PAGE_SIZE as u64) as f64 / t / 1e9,
            raw_s / t
        );
    }
}

criterion_group!(benches, page_read_round_trip, pipelined_reads, batched_objects);

fn main() {
    if std::env::var_os("MEMD_BULK").is_some() {
        bulk_reads();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
