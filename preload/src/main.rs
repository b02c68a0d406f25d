//! `farmem`: run unmodified programs with far memory (`farmem run`), or see it work (`farmem demo`).
//!
//! `run` preloads `libfarmem_preload.so` into the command; unless `--server` names a memd, it starts one inside
//! this process on a private loopback port with a fresh token file and stops it when the command ends. `demo`
//! re-executes this binary twice on the same workload — once plainly, once with this binary's own global
//! allocator (FarAlloc) under a local-memory budget — so it needs no `.so` and works straight from
//! `cargo run --release --bin farmem -- demo`.

mod cli;
mod demo;
mod run;

use farmem_alloc::FarAlloc;

/// This binary's own allocator: local-only in `run` and in the `demo` parent, far in the demo's far worker.
#[global_allocator]
static A: FarAlloc = FarAlloc::from_env();

pub(crate) const USAGE: &str = "\
usage:
  farmem run [--local-mem 256M] [--threshold 1M] [--region-size 64G] [--capacity SIZE]
             [--server ADDR --token-file FILE] [--stats] [--log LEVEL] -- CMD ARGS...
      Runs CMD with far memory: allocations of at least --threshold bytes live in memd, with at most
      --local-mem of them resident. Without --server, an embedded memd of --capacity bytes (default: half
      of RAM) runs for the command's lifetime. Exits with CMD's status.
  farmem demo [--local-mem 64M] [--size SIZE]
      Runs a built-in workload of SIZE bytes (default 4x --local-mem) plainly and with far memory, and
      prints both times, both peak RSS figures and whether the results match.";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("run") => {
            A.set_local_only();
            run::main(&args[1..])
        }
        Some("demo") => {
            A.set_local_only();
            demo::main(&args[1..])
        }
        Some(demo::WORKER) => demo::worker(&A, &args[1..]),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            0
        }
        Some(other) => {
            eprintln!("farmem: unknown command {other:?}\n{USAGE}");
            2
        }
        None => {
            eprintln!("{USAGE}");
            2
        }
    };
    std::process::exit(code);
}
