//! Unmodified C programs (compiled here with gcc) and python3 under `farmem run`: results equal to plain runs,
//! peak RSS within the budget plus a stated slack, malloc-family conformance, threads, fork, bad
//! configuration, and a memd at capacity.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Peak-RSS allowance on top of the local-memory budget and the program's own footprint: the region's
/// bookkeeping, the memd client's connection buffers, fetch and write-back batches in flight, and mimalloc
/// pages not yet purged (measured: 35–45 MiB on the 2-core CI machine).
const SLACK_KB: u64 = 56 << 10;
const LIMIT: Duration = Duration::from_secs(240);

fn kb(s: &str) -> u64 {
    s.parse().expect("a number")
}

#[test]
fn c_conformance_under_the_shim() {
    if !uffd_available("c_conformance_under_the_shim") {
        return;
    }
    let p = c_program("conformance");
    let o = farmem_run(&["--local-mem", "16M", "--threshold", "64K", "--stats"], &p, &[], LIMIT);
    assert_eq!(ok(&o, "conformance"), "conformance ok\n");
    let err = stderr(&o);
    let far = field(&err, "allocated").expect("the --stats summary");
    assert!(kb(&far) > 0, "far memory was used: {err}");
}

#[test]
fn c_malloc_routes_by_size_and_free_by_address() {
    if !uffd_available("c_malloc_routes_by_size_and_free_by_address") {
        return;
    }
    let p = c_program("routing");
    let o = farmem_run(&["--local-mem", "16M", "--threshold", "64K", "--stats"], &p, &[], LIMIT);
    assert_eq!(ok(&o, "routing"), "routing ok\n");
    let err = stderr(&o);
    assert!(err.contains(" in 2 allocations,"), "exactly the blocks of 64K and 64K + 1 are far: {err}");
}

/// The exit summary is printed after the program's own exit handlers, and those may close stderr (coreutils'
/// programs do): `--stats` still reaches farmem run's stderr.
#[test]
fn stats_survive_a_program_that_closes_stderr() {
    if !uffd_available("stats_survive_a_program_that_closes_stderr") {
        return;
    }
    let p = c_program("closestderr");
    let o = farmem_run(&["--local-mem", "16M", "--threshold", "64K", "--stats"], &p, &[], LIMIT);
    assert_eq!(ok(&o, "closestderr"), "closestderr ok\n");
    let err = stderr(&o);
    let far = field(&err, "allocated").unwrap_or_else(|| panic!("no --stats summary on stderr: {err:?}"));
    assert!(kb(&far) >= 8 << 20, "the 8 MiB block was far: {err}");
    // A program that closed every descriptor and opened a file of its own where the duplicate was: the summary
    // is not written into that file.
    let file = scratch().join("closestderr.out");
    let o = farmem_run(&["--threshold", "64K", "--stats"], &p, &[file.to_str().unwrap()], LIMIT);
    assert_eq!(ok(&o, "closestderr FILE"), "closestderr ok\n");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "mine\n", "the program's file holds only what it wrote");
}

/// `--stats` in a process tree: the command farmem run started says when it used no far memory; the processes it
/// starts in turn print a summary only if they used some.
#[test]
fn stats_come_from_the_command_and_from_processes_that_used_far_memory() {
    if !uffd_available("stats_come_from_the_command_and_from_processes_that_used_far_memory") {
        return;
    }
    let p = c_program("closestderr");
    // bash, not sh: dash leaves with _exit, which runs no exit handlers.
    let script = format!("true; {p} >/dev/null; /bin/true; true", p = p.display());
    let flags = ["--local-mem", "16M", "--threshold", "64K", "--stats"];
    let o = farmem_run(&flags, Path::new("/bin/bash"), &["-c", &script], LIMIT);
    ok(&o, "bash -c");
    let err = stderr(&o);
    assert_eq!(err.matches("far memory was not used").count(), 1, "only bash itself reports no far memory: {err}");
    assert_eq!(err.matches("far bytes allocated").count(), 1, "the program that used far memory reports: {err}");
}

#[test]
fn c_working_set_six_times_the_budget() {
    if !uffd_available("c_working_set_six_times_the_budget") {
        return;
    }
    let p = c_program("workset");
    let plain = ok(&Command::new(&p).arg("96").output().unwrap(), "plain workset");
    let small = ok(&Command::new(&p).arg("4").output().unwrap(), "small workset");
    let far = ok(&farmem_run(&["--local-mem", "16M"], &p, &["96"], LIMIT), "workset under farmem");
    assert_eq!(field(&far, "checksum"), field(&plain, "checksum"), "same result as without farmem");
    let rss = kb(&field(&far, "maxrss_kb").unwrap());
    let bound = kb(&field(&small, "maxrss_kb").unwrap()) + (16 << 10) + SLACK_KB;
    eprintln!("peak RSS: plain {} KiB, far {rss} KiB, bound {bound} KiB", field(&plain, "maxrss_kb").unwrap());
    assert!(rss <= bound, "peak RSS {rss} KiB exceeds budget + slack ({bound} KiB)");
}

#[test]
fn c_threads_stress() {
    if !uffd_available("c_threads_stress") {
        return;
    }
    let p = c_program("stress");
    let o = farmem_run(&["--local-mem", "16M", "--threshold", "64K"], &p, &[], LIMIT);
    assert_eq!(ok(&o, "stress"), "stress ok\n");
}

/// Each thread's mimalloc heap starts in a segment of its own, in an arena mimalloc advises `MADV_HUGEPAGE`:
/// unless `MIMALLOC_ALLOW_THP` is set, FarAlloc takes that advice back, so 32 threads with 64 KiB of blocks each
/// do not hold 32 transparent huge pages (64 MiB) of local memory. With `MIMALLOC_ALLOW_THP=1` mimalloc's choice
/// stands. Where the kernel gives no transparent huge pages at all there is nothing to tell apart.
#[test]
fn thread_heaps_take_no_huge_pages_unless_asked() {
    if !uffd_available("thread_heaps_take_no_huge_pages_unless_asked") {
        return;
    }
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if thp.is_empty() || thp.contains("[never]") {
        eprintln!("thread_heaps_take_no_huge_pages_unless_asked: skipped: transparent huge pages are off here");
        return;
    }
    let p = c_program("threadheaps");
    let run = |allow: Option<&str>| {
        let mut cmd = Command::new(farmem());
        cmd.args(["run", "--local-mem", "16M", "--"]).arg(&p).arg("32").env_remove("MIMALLOC_ALLOW_THP");
        if let Some(v) = allow {
            cmd.env("MIMALLOC_ALLOW_THP", v);
        }
        shim();
        let out = ok(&run_with_deadline(cmd, LIMIT, "threadheaps"), "threadheaps");
        (kb(&field(&out, "rss_kb").unwrap()), kb(&field(&out, "huge_kb").unwrap()))
    };
    let (rss, huge) = run(None);
    eprintln!("32 thread heaps: RSS {rss} KiB, {huge} KiB in huge pages");
    // One huge page at most: one faulted in before the shim's constructor ran.
    assert!(huge <= 2048, "{huge} KiB of the thread heaps are transparent huge pages");
    let (rss_thp, huge_thp) = run(Some("1"));
    eprintln!("with MIMALLOC_ALLOW_THP=1: RSS {rss_thp} KiB, {huge_thp} KiB in huge pages");
    assert!(huge_thp >= 8 * 2048, "MIMALLOC_ALLOW_THP=1 leaves mimalloc's huge pages: {huge_thp} KiB");
}

#[test]
fn fork_child_reads_a_far_buffer() {
    if !uffd_available("fork_child_reads_a_far_buffer") {
        return;
    }
    let p = c_program("forkread");
    // A block that fits the budget is resident at fork: the child reads it whole.
    let o = farmem_run(&["--local-mem", "32M"], &p, &["8"], LIMIT);
    assert_eq!(ok(&o, "forkread 8"), "child exit 0\n", "stderr: {}", stderr(&o));
    // A block 4x the budget is mostly in memd: the child reads it correctly or is stopped loudly, never
    // sees zeros in place of data (exit 3).
    let o = farmem_run(&["--local-mem", "16M"], &p, &["64"], LIMIT);
    let out = ok(&o, "forkread 64");
    assert!(out == "child exit 0\n" || out == "child signal 11\n", "child saw wrong data: {out}");
    if out == "child signal 11\n" {
        assert!(stderr(&o).contains("not inherited across fork"), "the child said why: {}", stderr(&o));
    }
}

#[test]
fn forks_while_threads_allocate() {
    if !uffd_available("forks_while_threads_allocate") {
        return;
    }
    let p = c_program("forkstorm");
    let o = farmem_run(&["--local-mem", "16M", "--stats"], &p, &[], LIMIT);
    assert_eq!(ok(&o, "forkstorm"), "forkstorm ok\n");
    // Only the parent prints the exit summary: a forked child's figures would be the parent's.
    assert_eq!(stderr(&o).matches("far bytes allocated").count(), 1, "{}", stderr(&o));
}

#[test]
fn memd_at_capacity_falls_back_to_local_memory() {
    if !uffd_available("memd_at_capacity_falls_back_to_local_memory") {
        return;
    }
    let p = c_program("workset");
    let plain = ok(&Command::new(&p).arg("64").output().unwrap(), "plain workset");
    // 64 MiB of 4 MiB blocks against a memd of 24 MiB: the blocks that do not fit are served locally, and the
    // ones already in memd keep their contents.
    let o = farmem_run(&["--local-mem", "16M", "--capacity", "24M", "--stats"], &p, &["64"], LIMIT);
    let far = ok(&o, "workset at capacity");
    assert_eq!(field(&far, "checksum"), field(&plain, "checksum"));
    let err = stderr(&o);
    let served_locally: u64 = err
        .split("peak live")
        .nth(1)
        .and_then(|s| s.split(',').nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("stats line: {err}"));
    assert!(served_locally > 0, "some blocks were served locally: {err}");
}

#[test]
fn python_hashes_512_mib_at_a_64_mib_budget() {
    if !uffd_available("python_hashes_512_mib_at_a_64_mib_budget") {
        return;
    }
    // The real interpreter, not a wrapper script (pyenv shims are bash scripts that start several processes).
    let Ok(o) = Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).output() else {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "python3 is missing in CI");
        eprintln!("skipped: no python3");
        return;
    };
    let py = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let script = "import hashlib, resource, sys\n\
                  n = int(sys.argv[1]) << 20\n\
                  b = bytearray(n)\n\
                  for i in range(0, n, 4096):\n    b[i] = (i >> 12) & 255\n\
                  for i in range(0, n, 1 << 20):\n    b[i + 7] = (i >> 20) & 255\n\
                  print(hashlib.sha256(b).hexdigest(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n";
    let run_plain = |mib: &str| ok(&Command::new(&py).args(["-c", script, mib]).output().unwrap(), "plain python");
    let plain = run_plain("512");
    let small = run_plain("1");
    let o = farmem_run(&["--local-mem", "64M"], std::path::Path::new(&py), &["-c", script, "512"], LIMIT);
    let far = ok(&o, "python under farmem");
    let digest = |s: &str| s.split_whitespace().next().map(str::to_string);
    assert_eq!(digest(&far), digest(&plain), "same digest as a plain run");
    let rss = kb(far.split_whitespace().nth(1).unwrap());
    let bound = kb(small.split_whitespace().nth(1).unwrap()) + (64 << 10) + SLACK_KB;
    eprintln!("python peak RSS: plain {}, far {rss} KiB, bound {bound} KiB", plain.trim());
    assert!(rss <= bound, "peak RSS {rss} KiB exceeds budget + slack ({bound} KiB)");
}

#[test]
fn run_against_an_external_memd() {
    if !uffd_available("run_against_an_external_memd") {
        return;
    }
    let srv = farmem_memd::testing::TestServer::start(256 << 20);
    let p = c_program("workset");
    let plain = ok(&Command::new(&p).arg("48").output().unwrap(), "plain workset");
    let addr = srv.addr().to_string();
    let token = srv.token_file().display().to_string();
    let flags = ["--server", &addr, "--token-file", &token, "--local-mem", "16M", "--stats"];
    let o = farmem_run(&flags, &p, &["48"], LIMIT);
    assert_eq!(field(&ok(&o, "workset on an external memd"), "checksum"), field(&plain, "checksum"));
    assert!(stderr(&o).contains("written back"), "{}", stderr(&o));
}

#[test]
fn an_exited_process_leaves_nothing_in_an_external_memd() {
    if !uffd_available("an_exited_process_leaves_nothing_in_an_external_memd") {
        return;
    }
    shim();
    let srv = farmem_memd::testing::TestServer::start(256 << 20);
    // One connection, so that the server's connection count tells when only the observer is left.
    let mut cfg = srv.client_config();
    cfg.connections = 1;
    let observer = farmem_memd::Client::connect(cfg).unwrap();
    let stat = |key: &str| {
        let stats = farmem_memd::FarStore::stats(&observer).unwrap();
        stats.iter().find(|(k, _)| k == key).map(|(_, v)| *v).unwrap_or_else(|| panic!("memd reports {key}"))
    };
    let pages = || stat("global.pages");
    let py = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    // 48 MiB written at a 16 MiB budget, then an exit that frees nothing: the evicted pages are in memd.
    let script = "import os\nb = bytearray(b'\\x01') * (48 << 20)\nos._exit(0)\n";
    let (addr, token) = (srv.addr().to_string(), srv.token_file().display().to_string());
    let run = |grace: &str| {
        let mut cmd = Command::new(farmem());
        cmd.args(["run", "--server", &addr, "--token-file", &token, "--local-mem", "16M", "--", &py, "-c", script]);
        cmd.env("FARMEM_SESSION_GRACE", grace);
        ok(&run_with_deadline(cmd, LIMIT, &format!("python with session grace {grace}")), "python");
    };
    // Without a session the pages outlive the process (what memd did before sessions).
    run("off");
    // The process is gone, but memd may still be reading the last write-backs it sent: once the server has ended
    // all of its connections, nothing more of it can arrive, and the count is final.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while stat("global.connections") != 1 {
        assert!(std::time::Instant::now() < deadline, "memd still serves an exited process's connections");
        std::thread::sleep(Duration::from_millis(10));
    }
    let kept = pages();
    assert!(kept > 0, "the workload left no pages in memd; the test proves nothing");
    // With a 1 s grace they are dropped soon after the process exits.
    run("1s");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while pages() != kept {
        assert!(
            std::time::Instant::now() < deadline,
            "{} pages in memd, {kept} before the process ran: those of the exited process are still there",
            pages()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn malformed_configuration_is_named() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = Command::new(farmem());
        c.arg("run").args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    for (args, env, name) in [
        (&["--local-mem", "12Q", "--", "true"][..], &[][..], "--local-mem"),
        (&["--threshold", "100", "--", "true"], &[], "--threshold"),
        (&["--region-size", "x", "--", "true"], &[], "--region-size"),
        (&["--server", "nonsense", "--token-file", "/nonexistent", "--", "true"], &[], "--server"),
        (&["--server", "127.0.0.1:1", "--", "true"], &[], "--token-file"),
        (&["--server", "127.0.0.1:1", "--token-file", "/nonexistent/f", "--", "true"], &[], "--token-file"),
        (&["--log", "a=b=c", "--", "true"], &[], "--log"),
        (&["--local-mem", "8K", "--", "true"], &[], "--local-mem"),
        (&["--local-mem"], &[], "--local-mem"),
        (&["--", "true"], &[("FARMEM_THRESHOLD", "lots")], "FARMEM_THRESHOLD"),
        (&["--", "true"], &[("FARMEM_LOCAL_MEM", "-5")], "FARMEM_LOCAL_MEM"),
        (&["--", "true"], &[("FARMEM_STATS", "maybe")], "FARMEM_STATS"),
    ] {
        let o = run(args, env);
        assert_eq!(o.status.code(), Some(2), "{args:?} {env:?}");
        let e = stderr(&o);
        assert!(e.contains(name) && e.lines().count() == 1, "{args:?} {env:?}: error names {name}: {e}");
    }
    let o = run(&["--stats"], &[]);
    assert!(stderr(&o).contains("no command"), "{}", stderr(&o));
    let o = run(&["--help"], &[]);
    assert!(o.status.success() && stdout(&o).contains("farmem run"), "{}", stdout(&o));
    let o = run(&["--bogus", "--", "true"], &[]);
    assert!(stderr(&o).contains("--bogus"), "{}", stderr(&o));
}

#[test]
fn the_shim_reports_bad_variables_and_serves_locally() {
    let p = c_program("conformance");
    let lib = shim();
    let run = |env: &[(&str, &str)]| {
        let mut c = Command::new(&p);
        c.env("LD_PRELOAD", &lib).env_remove("FARMEM_SERVER");
        for (k, v) in env {
            c.env(k, v);
        }
        run_with_deadline(c, LIMIT, "conformance with bad variables")
    };
    // Malformed threshold: one line naming it, then everything is served locally and correctly.
    let o = run(&[("FARMEM_THRESHOLD", "lots")]);
    assert_eq!(ok(&o, "bad threshold"), "conformance ok\n");
    let e = stderr(&o);
    assert_eq!(e.lines().filter(|l| l.contains("FARMEM_THRESHOLD")).count(), 1, "{e}");
    // No server: one line saying so.
    let o = run(&[("FARMEM_THRESHOLD", "64K")]);
    assert_eq!(ok(&o, "no server"), "conformance ok\n");
    assert_eq!(stderr(&o).lines().filter(|l| l.contains("FARMEM_SERVER")).count(), 1, "{}", stderr(&o));
    // FARMEM_REQUIRED=1 makes either fatal.
    for env in [
        &[("FARMEM_THRESHOLD", "lots"), ("FARMEM_REQUIRED", "1")][..],
        &[("FARMEM_THRESHOLD", "64K"), ("FARMEM_REQUIRED", "1")],
    ] {
        let o = run(env);
        assert_eq!(o.status.code(), Some(1), "{env:?}");
        assert!(stderr(&o).contains("FARMEM_REQUIRED=1"), "{}", stderr(&o));
    }
    let o =
        run(&[("FARMEM_THRESHOLD", "64K"), ("FARMEM_SERVER", "127.0.0.1:1"), ("FARMEM_TOKEN_FILE", "/nonexistent")]);
    assert_eq!(ok(&o, "bad token file"), "conformance ok\n");
    assert!(stderr(&o).contains("FARMEM_TOKEN_FILE"), "{}", stderr(&o));
}

#[test]
fn run_passes_the_exit_status_and_finds_its_library() {
    shim();
    let o = Command::new(farmem()).args(["run", "--", "sh", "-c", "exit 7"]).output().unwrap();
    assert_eq!(o.status.code(), Some(7));
    let o = Command::new(farmem()).args(["run", "--", "sh", "-c", "kill -TERM $$"]).output().unwrap();
    assert_eq!(o.status.code(), Some(128 + libc::SIGTERM));
    let o = Command::new(farmem()).args(["run", "--", "/nonexistent/program"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("/nonexistent/program"));
    // Without the library next to it, farmem says how to build it.
    let lonely = scratch().join("lonely");
    std::fs::create_dir_all(&lonely).unwrap();
    let copy = lonely.join("farmem");
    std::fs::copy(farmem(), &copy).unwrap();
    let o = Command::new(&copy).args(["run", "--", "true"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cargo build") && stderr(&o).contains("-p farmem-preload"), "{}", stderr(&o));
}

#[test]
fn demo_results_match() {
    if !uffd_available("demo_results_match") {
        return;
    }
    let mut c = Command::new(farmem());
    c.args(["demo", "--local-mem", "16M", "--size", "64M"]);
    let out = ok(&run_with_deadline(c, LIMIT, "farmem demo"), "farmem demo");
    assert!(out.contains("results match: yes"), "{out}");
    assert!(out.contains("plain") && out.contains("far memory") && out.contains("peak RSS"), "{out}");
}
