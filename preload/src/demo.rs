//! `farmem demo`: one workload, run plainly and with far memory, compared.
//!
//! The workload runs in a re-executed copy of this binary (the hidden `__demo-worker` command), so each run's
//! peak RSS is its own (`getrusage`) and the far run uses this binary's global allocator, FarAlloc — no shim to
//! build. The workload: build `SIZE` bytes of pseudo-random `u64`s in 8 MiB vectors, sweep them twice reading
//! and rewriting every element, do scattered updates, and hash everything. The working set is 4× the
//! local-memory budget by default, so in the far run most of it lives in memd at any time.

use crate::cli::{mib, self_maxrss, size_flag, value, CliError, Embedded};
use farmem_alloc::FarAlloc;
use std::process::Command;
use std::time::Instant;

/// The hidden worker command.
pub const WORKER: &str = "__demo-worker";

const CHUNK_WORDS: usize = 1 << 20;

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The workload over `bytes` bytes (rounded down to 8 MiB chunks, at least one); returns its result hash.
pub fn workload(bytes: u64) -> u64 {
    let chunks = usize::try_from(bytes / (8 * CHUNK_WORDS as u64)).unwrap_or(usize::MAX).max(1);
    let mut data: Vec<Vec<u64>> =
        (0..chunks).map(|c| (0..CHUNK_WORDS).map(|j| splitmix((c * CHUNK_WORDS + j) as u64)).collect()).collect();
    let mut acc = 0u64;
    for pass in 0..2u64 {
        for v in &mut data {
            for x in v.iter_mut() {
                acc = acc.rotate_left(5) ^ *x ^ pass;
                *x ^= acc >> 3;
            }
        }
    }
    let mut r = acc | 1;
    for _ in 0..20_000 {
        r = splitmix(r);
        let c = usize::try_from(r % chunks as u64).unwrap_or(0);
        let j = usize::try_from((r >> 20) % CHUNK_WORDS as u64).unwrap_or(0);
        data[c][j] = data[c][j].wrapping_mul(31).wrapping_add(r);
    }
    data.iter().flatten().fold(acc, |h, &x| splitmix(h ^ x))
}

/// The hidden worker: `__demo-worker plain|far BYTES`; prints one `demo-result` line.
pub fn worker(a: &'static FarAlloc, args: &[String]) -> i32 {
    let (Some(mode), Some(bytes)) = (args.first(), args.get(1).and_then(|s| s.parse::<u64>().ok())) else {
        eprintln!("farmem: usage: farmem {WORKER} plain|far BYTES");
        return 2;
    };
    match mode.as_str() {
        "plain" => {
            a.set_local_only();
        }
        "far" => {
            if !a.start_now() {
                eprintln!("farmem: demo: far memory did not start");
                return 1;
            }
        }
        m => {
            eprintln!("farmem: {WORKER}: unknown mode {m:?}");
            return 2;
        }
    }
    let t = Instant::now();
    let hash = workload(bytes);
    let secs = t.elapsed().as_secs_f64();
    let p = a.paging_stats().unwrap_or_default();
    println!(
        "demo-result hash={hash:016x} secs={secs:.3} maxrss={} faults={} fetched={} written={} peak_resident={}",
        self_maxrss(),
        p.faults,
        p.bytes_fetched,
        p.bytes_written_back,
        p.peak_resident
    );
    0
}

#[derive(Debug, Default)]
struct Outcome {
    hash: String,
    secs: f64,
    maxrss: u64,
    faults: u64,
    fetched: u64,
    written: u64,
}

fn run_worker(mode: &str, bytes: u64, env: &[(&str, String)]) -> Result<Outcome, CliError> {
    let exe = std::env::current_exe().map_err(|e| CliError::Other(format!("cannot locate farmem itself: {e}")))?;
    let mut cmd = Command::new(exe);
    cmd.arg(WORKER).arg(mode).arg(bytes.to_string());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("FARMEM_") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("LD_PRELOAD");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().map_err(|e| CliError::Other(format!("cannot start the {mode} run: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(line) = stdout.lines().find(|l| l.starts_with("demo-result ")) else {
        return Err(CliError::Other(format!(
            "the {mode} run failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    };
    let mut o = Outcome::default();
    for kv in line.split_whitespace().skip(1) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let n = || v.parse::<u64>().unwrap_or(0);
        match k {
            "hash" => o.hash = v.to_string(),
            "secs" => o.secs = v.parse().unwrap_or(0.0),
            "maxrss" => o.maxrss = n(),
            "faults" => o.faults = n(),
            "fetched" => o.fetched = n(),
            "written" => o.written = n(),
            _ => {}
        }
    }
    Ok(o)
}

/// `farmem demo ARGS`.
pub fn main(args: &[String]) -> i32 {
    match demo(args) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(CliError::Help) => {
            println!("{}", crate::USAGE);
            0
        }
        Err(e) => {
            eprintln!("farmem: {e}");
            2
        }
    }
}

fn demo(args: &[String]) -> Result<bool, CliError> {
    let mut local = 64u64 << 20;
    let mut size = None;
    let mut i = 0;
    while i < args.len() {
        if let Some(v) = value(args, &mut i, "--local-mem")? {
            local = size_flag("--local-mem", v)?;
        } else if let Some(v) = value(args, &mut i, "--size")? {
            size = Some(size_flag("--size", v)?);
        } else if args[i] == "-h" || args[i] == "--help" {
            return Err(CliError::Help);
        } else {
            return Err(CliError::Other(format!("demo: unknown argument {:?}", args[i])));
        }
        i += 1;
    }
    if local < (16 << 20) {
        return Err(farmem_memd::config::ConfigError::new("--local-mem", "the demo needs at least 16M").into());
    }
    let size = size.unwrap_or(local * 4).max(8 << 20);
    println!(
        "farmem demo: {} working set, {} local-memory budget ({:.1}x)",
        mib(size),
        mib(local),
        size as f64 / local as f64
    );
    println!("running plainly ...");
    let plain = run_worker("plain", size, &[])?;
    println!("running with far memory (embedded memd on loopback) ...");
    let memd = Embedded::start(size * 2 + (256 << 20))?;
    let env = [
        ("FARMEM_SERVER", memd.addr().to_string()),
        ("FARMEM_TOKEN_FILE", memd.token_file().display().to_string()),
        ("FARMEM_LOCAL_MEM", local.to_string()),
        ("FARMEM_REQUIRED", "1".to_string()),
    ];
    let far = run_worker("far", size, &env);
    drop(memd);
    let far = match far {
        Ok(f) => f,
        Err(e) => {
            println!("  plain: {:.2} s, peak RSS {}, result {}", plain.secs, mib(plain.maxrss), plain.hash);
            return Err(e);
        }
    };
    println!();
    println!("  {:<12} {:>9} {:>14}  result", "", "time", "peak RSS");
    for (name, o) in [("plain", &plain), ("far memory", &far)] {
        println!("  {:<12} {:>7.2} s {:>14}  {}", name, o.secs, mib(o.maxrss), o.hash);
    }
    let same = plain.hash == far.hash;
    println!();
    println!("results match: {}", if same { "yes" } else { "NO" });
    println!(
        "far memory: {} page faults, {:.0} MiB fetched, {:.0} MiB written back; peak RSS {:.0}% of the plain run's",
        far.faults,
        far.fetched as f64 / f64::from(1u32 << 20),
        far.written as f64 / f64::from(1u32 << 20),
        100.0 * far.maxrss as f64 / plain.maxrss.max(1) as f64
    );
    Ok(same)
}
