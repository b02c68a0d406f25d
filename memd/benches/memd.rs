//! memd speed against raw TCP on the same loopback server, in one run.
//!
//! Each group pairs a memd figure with its baseline: a one-page read round trip with a raw ping-pong of the same
//! request and reply sizes; pipelined one-page reads with a raw server-to-client stream; batched 64 B object ops
//! are reported in operations per second (goal: at least 1 M/s).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
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

criterion_group!(benches, page_read_round_trip, pipelined_reads, batched_objects);
criterion_main!(benches);
