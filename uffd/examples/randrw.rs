//! Random 4 KiB reads and writes (one word per access, half of them writes) over `--size` bytes, either on plain
//! memory (`--mode plain`, for running under kernel swap: `swap-peer --limit 64M -- randrw --mode plain`) or on
//! a farmem region with a `--budget` of local memory backed by a loopback memd (`--mode region`). Prints
//! accesses per second. The bench `region` measures the region side in criterion; this example exists so both
//! sides can be run the same way by hand.
//!
//! `cargo run --release -p farmem-uffd --example randrw -- --mode region --size 256M --budget 64M --ops 400000`

use farmem_memd::config::parse_size;
use farmem_memd::testing::TestServer;
use farmem_uffd::{Region, RegionConfig, PAGE_SIZE};
use std::sync::Arc;
use std::time::Instant;

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.into())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = arg(&args, "--mode", "region");
    let size = usize::try_from(parse_size(&arg(&args, "--size", "256M")).expect("--size")).expect("--size fits");
    let budget = usize::try_from(parse_size(&arg(&args, "--budget", "64M")).expect("--budget")).expect("fits");
    let ops: usize = arg(&args, "--ops", "400000").parse().expect("--ops is a number");
    let pages = size / PAGE_SIZE;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let run = |base: *mut u8, next: &mut dyn FnMut() -> u64| {
        // Populate every page once, then measure random accesses.
        for p in 0..pages {
            // SAFETY: `p` is below `pages`, inside the memory at `base`.
            unsafe { base.add(p * PAGE_SIZE).cast::<u64>().write_volatile(p as u64) };
        }
        let t = Instant::now();
        let mut sum = 0u64;
        for _ in 0..ops {
            let r = next();
            let p = usize::try_from(r % pages as u64).expect("page index fits");
            // SAFETY: as above.
            let w = unsafe { base.add(p * PAGE_SIZE).cast::<u64>() };
            // SAFETY: as above.
            unsafe {
                if r & (1 << 40) != 0 {
                    w.write_volatile(r);
                } else {
                    sum = sum.wrapping_add(w.read_volatile());
                }
            }
        }
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(sum);
        println!("{mode}: {ops} random 4K accesses over {size} bytes in {secs:.3} s = {:.0} ops/s", ops as f64 / secs);
    };
    match mode.as_str() {
        "plain" => {
            let mut v = vec![0u8; size];
            run(v.as_mut_ptr(), &mut next);
        }
        "region" => {
            let server = TestServer::start(u64::try_from(2 * size).expect("fits"));
            let cfg = RegionConfig { size, local_mem: budget, ..RegionConfig::default() };
            let r = Region::new(cfg, Arc::new(server.client())).unwrap_or_else(|e| {
                eprintln!("randrw: cannot create a region: {e}");
                std::process::exit(77)
            });
            run(r.base(), &mut next);
            println!("{:?}", r.stats());
        }
        m => {
            eprintln!("randrw: unknown --mode {m} (plain or region)");
            std::process::exit(2);
        }
    }
}
