//! `farmem-bench`: AIFM's evaluation rerun side by side — paging, objects, hybrid, kernel swap — with plots.
//!
//! ```text
//! farmem-bench run WORKLOAD --mode MODE [--local 0.25] [--scale S] [--zipf 0.99] [--seed N] [--no-offload]
//!                  [--threads N] [--batch N] [--bucket 256|1024|4096]
//! farmem-bench sweep WORKLOAD [--local 0.1,0.25,0.5,1.0] [--modes local,paging,...] [--out results/] [...]
//! ```
//! `run` prints one JSON line; `sweep` runs every mode at every local fraction, prints a JSON line per run, and
//! writes `OUT/WORKLOAD.csv` and `OUT/WORKLOAD.png`. Every run is checked against `local`'s checksum.

use anyhow::{bail, Context, Result};
use farmem_alloc::FarAlloc;
use farmem_tests::harness::{self, ChildReport, Mode, Reference, RunResult, Workload};
use farmem_tests::workloads::{self, Outcome, Params};
use std::path::PathBuf;

#[global_allocator]
static ALLOC: FarAlloc = FarAlloc::from_env();

const USAGE: &str = "usage:
  farmem-bench run WORKLOAD --mode MODE [--local F] [--scale S] [--zipf S] [--seed N] [--no-offload]
                 [--threads N] [--batch N] [--bucket B]
  farmem-bench sweep WORKLOAD [--local F,F,...] [--modes M,M,...] [--out DIR] [--scale S] [--zipf S] [--seed N]
                 [--threads N] [--batch N] [--bucket B]
WORKLOAD: hashtable, array, web, dataframe (or `all` for sweep)
MODE: local, paging, objects, hybrid, swap
--local: local memory as a fraction of the working set (run: 0.25; sweep: 0.1,0.25,0.5,1.0)
--threads: threads sharing the hashtable's lookups, in every mode (default 1)
--batch: keys per objrt get_many call in the hashtable's objects and hybrid modes (default 1)
--bucket: bytes of objrt's hash-map buckets in the hashtable's objects mode: 256, 1024 (default), 4096";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("exec") => child(&args[1..]),
        Some("run") => cmd_run(&args[1..]),
        Some("sweep") => cmd_sweep(&args[1..]),
        _ => {
            println!("{USAGE}");
            Ok(())
        }
    };
    if let Err(e) = r {
        eprintln!("farmem-bench: {e:#}");
        std::process::exit(1);
    }
}

struct Opts {
    workload: String,
    mode: Option<String>,
    local: Vec<f64>,
    modes: Vec<Mode>,
    out: PathBuf,
    params: Params,
}

fn parse(args: &[String], sweep: bool) -> Result<Opts> {
    let mut it = args.iter();
    let workload = it.next().context(USAGE)?.clone();
    let mut o = Opts {
        workload,
        mode: None,
        local: if sweep { vec![0.1, 0.25, 0.5, 1.0] } else { vec![0.25] },
        modes: Mode::ALL.to_vec(),
        out: PathBuf::from("results"),
        params: Params {
            scale: 1.0,
            seed: 42,
            zipf: 0.99,
            offload: true,
            budget: 0,
            threads: 1,
            batch: 1,
            bucket: 1024,
        },
    };
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} needs a value\n{USAGE}"));
        let num = |v: &str, what: &str| v.parse::<f64>().with_context(|| format!("{what} {v:?} is not a number"));
        match a.as_str() {
            "--mode" => o.mode = Some(val()?.clone()),
            "--local" => {
                o.local = val()?.split(',').map(|v| num(v, "--local")).collect::<Result<_>>()?;
                if o.local.iter().any(|&f| !(f > 0.0 && f <= 1.0)) {
                    bail!("--local fractions must be in (0, 1]");
                }
            }
            "--modes" => o.modes = val()?.split(',').map(Mode::parse).collect::<Result<_>>()?,
            "--out" => o.out = PathBuf::from(val()?),
            "--scale" => {
                o.params.scale = num(val()?, "--scale")?;
                if o.params.scale <= 0.0 {
                    bail!("--scale must be positive");
                }
            }
            "--zipf" => {
                o.params.zipf = num(val()?, "--zipf")?;
                if o.params.zipf <= 0.0 {
                    bail!("--zipf must be positive");
                }
            }
            "--seed" => o.params.seed = val()?.parse().context("--seed must be a whole number")?,
            "--threads" => {
                o.params.threads = val()?.parse().context("--threads must be a whole number")?;
                if !(1..=256).contains(&o.params.threads) {
                    bail!("--threads must be in 1..=256");
                }
            }
            "--bucket" => {
                o.params.bucket = val()?.parse().context("--bucket must be a whole number")?;
                if ![256, 1024, 4096].contains(&o.params.bucket) {
                    bail!("--bucket must be 256, 1024 or 4096");
                }
            }
            "--batch" => {
                o.params.batch = val()?.parse().context("--batch must be a whole number")?;
                if !(1..=4096).contains(&o.params.batch) {
                    bail!("--batch must be in 1..=4096");
                }
            }
            "--no-offload" => o.params.offload = false,
            other => bail!("unknown option {other:?}\n{USAGE}"),
        }
    }
    Ok(o)
}

fn cmd_run(args: &[String]) -> Result<()> {
    let o = parse(args, false)?;
    let w = Workload::parse(&o.workload)?;
    let mode = Mode::parse(o.mode.as_deref().context("--mode is required")?)?;
    let local = harness::run_local(w, &o.params)?;
    let reference = Reference::of(&local)?;
    let r = if mode == Mode::Local { local } else { harness::run(w, mode, o.local[0], &o.params, Some(reference))? };
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}

fn cmd_sweep(args: &[String]) -> Result<()> {
    let o = parse(args, true)?;
    let ws: Vec<Workload> =
        if o.workload == "all" { Workload::ALL.to_vec() } else { vec![Workload::parse(&o.workload)?] };
    std::fs::create_dir_all(&o.out).with_context(|| format!("create {}", o.out.display()))?;
    for w in ws {
        let mut runs: Vec<RunResult> = Vec::new();
        let local = harness::run_local(w, &o.params)?;
        let reference = Reference::of(&local)?;
        println!("{}", serde_json::to_string(&local)?);
        runs.push(local);
        for &f in &o.local {
            for &m in o.modes.iter().filter(|&&m| m != Mode::Local) {
                let r = harness::run(w, m, f, &o.params, Some(reference))?;
                if let Some(why) = &r.skipped {
                    eprintln!("farmem-bench: {} {} skipped: {why}", w.name(), m.name());
                }
                println!("{}", serde_json::to_string(&r)?);
                runs.push(r);
            }
        }
        let csv = o.out.join(format!("{}.csv", w.name()));
        farmem_tests::plot::write_csv(&csv, &runs)?;
        let png = o.out.join(format!("{}.png", w.name()));
        let title = format!("{} (scale {}, zipf {})", w.name(), o.params.scale, o.params.zipf);
        farmem_tests::plot::plot(&png, &title, &runs, &o.local)?;
        eprintln!("farmem-bench: wrote {} and {}", csv.display(), png.display());
    }
    Ok(())
}

/// An object runtime of `budget` bytes on the memd named by the environment. (objrt allocates its heap as
/// farmem-internal memory, so with FarAlloc active it stays local rather than landing in the region.)
fn runtime(budget: u64) -> Result<farmem_objrt::Runtime> {
    let cfg = farmem_memd::ClientConfig::from_env()?.context("objects and hybrid modes need FARMEM_SERVER")?;
    let store: std::sync::Arc<dyn farmem_memd::FarStore> = std::sync::Arc::new(farmem_memd::Client::connect(cfg)?);
    let rc = farmem_objrt::RuntimeConfig::new(usize::try_from(budget.max(4 << 20))?);
    Ok(farmem_objrt::Runtime::new(rc, store)?)
}

/// The child side of a run: executes one workload in one mode and prints a [`ChildReport`].
fn child(args: &[String]) -> Result<()> {
    let [w, m, p] = args else { bail!("exec takes WORKLOAD MODE PARAMS") };
    let (w, m) = (Workload::parse(w)?, Mode::parse(m)?);
    let p: Params = serde_json::from_str(p).context("exec PARAMS")?;
    if !matches!(m, Mode::Paging | Mode::Hybrid) {
        ALLOC.set_local_only();
    }
    let outcome: Result<Outcome, String> = match m {
        Mode::Local | Mode::Swap | Mode::Paging => Ok(match w {
            Workload::Hashtable => workloads::hashtable::local(&p),
            Workload::Array => workloads::array::local(&p),
            Workload::Web => workloads::web::local(&p)?,
            Workload::Dataframe => workloads::dataframe::local(&p),
        }),
        Mode::Objects => {
            let rt = runtime(p.budget)?;
            Ok(match w {
                Workload::Hashtable => workloads::hashtable::objects(&p, &rt)?,
                Workload::Array => workloads::array::objects(&p, &rt)?,
                Workload::Web => workloads::web::objects(&p, &rt)?,
                Workload::Dataframe => workloads::dataframe::objects(&p, &rt)?,
            })
        }
        Mode::Hybrid => match w.hybrid_objrt_share(&p) {
            None => Err(format!(
                "{} has no hot structure to keep in objrt: its hybrid mode would be its paging mode",
                w.name()
            )),
            Some(share) => {
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "fraction of a size")]
                let rt = runtime((p.budget as f64 * share) as u64)?;
                Ok(match w {
                    Workload::Hashtable => workloads::hashtable::hybrid(&p, &rt)?,
                    Workload::Web => workloads::web::hybrid(&p, &rt)?,
                    Workload::Dataframe => workloads::dataframe::hybrid(&p, &rt)?,
                    Workload::Array => unreachable!("no hybrid share"),
                })
            }
        },
    };
    let report = match outcome {
        Ok(outcome) => ChildReport { outcome, peak_rss: harness::peak_rss(), skipped: None },
        Err(why) => ChildReport { outcome: Outcome::default(), peak_rss: 0, skipped: Some(why) },
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
