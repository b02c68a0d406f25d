//! farmem-bench end to end at a small scale: every workload in the paging mode (std collections on FarAlloc over
//! a userfaultfd region and a real memd) must compute exactly what local computes, under a budget that forces
//! eviction. Needs root for userfaultfd; runs (never skips) when CI=true.

use std::process::Command;

fn uffd_available() -> bool {
    // The harness's paging mode needs userfaultfd, which needs root (or vm.unprivileged_userfaultfd=1).
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false);
    let unpriv = std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd").map(|s| s.trim() == "1");
    root || unpriv.unwrap_or(false)
}

fn bench(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_farmem-bench")).args(args).output().expect("run farmem-bench");
    assert!(out.status.success(), "farmem-bench {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("bad JSON {line:?}: {e}"))
}

#[test]
fn paging_mode_matches_local_on_every_workload() {
    if !uffd_available() {
        assert!(std::env::var("CI").is_err(), "CI must be able to run userfaultfd tests (run as root)");
        eprintln!("skipping: userfaultfd needs root here");
        return;
    }
    // Scales at which every large structure passes FarAlloc's 1 MiB threshold, yet runs take a second or two.
    for (w, scale) in [("hashtable", "0.06"), ("array", "0.06"), ("web", "0.06"), ("dataframe", "0.2")] {
        let r = bench(&["run", w, "--mode", "paging", "--local", "0.25", "--scale", scale]);
        assert_eq!(r["checksum_ok"], true, "{w}: {r}");
        assert!(r["skipped"].is_null(), "{w}: {r}");
        assert!(r["bytes_fetched"].as_u64().unwrap() > 0, "{w} at 25% local must fetch from memd: {r}");
    }
}

#[test]
fn objects_and_hybrid_modes_match_local_on_every_workload() {
    // At scale 0.2 every working set is over 10 MB, so the 25% budget (at least 4 MiB) forces evacuation.
    for w in ["hashtable", "array", "web", "dataframe"] {
        let scale = "0.2";
        let r = bench(&["run", w, "--mode", "objects", "--local", "0.25", "--scale", scale]);
        assert_eq!(r["checksum_ok"], true, "{w}: {r}");
        assert!(r["bytes_written"].as_u64().unwrap() > 0, "{w} at 25% local must evacuate to memd: {r}");
        if w == "dataframe" {
            let r = bench(&["run", w, "--mode", "objects", "--local", "0.25", "--scale", scale, "--no-offload"]);
            assert_eq!(r["checksum_ok"], true, "{w} without offload: {r}");
        }
        if !uffd_available() {
            continue;
        }
        let r = bench(&["run", w, "--mode", "hybrid", "--local", "0.25", "--scale", scale]);
        match r["skipped"].as_str() {
            Some(why) => assert!(w == "array" && why.contains("no hot structure"), "{w}: {r}"),
            None => assert_eq!(r["checksum_ok"], true, "{w}: {r}"),
        }
    }
}

#[test]
fn threaded_and_batched_hashtable_lookups_match_local_in_every_mode() {
    // Several threads share the lookups (each its own stream), objrt looks keys up in get_many batches; every
    // mode must still compute local's checksum, which folds the threads' results in thread order.
    let mut modes = vec!["objects"];
    if uffd_available() {
        modes.extend(["hybrid", "paging"]);
    }
    for m in modes {
        for bucket in ["256", "1024"] {
            let args = ["run", "hashtable", "--mode", m, "--local", "0.25", "--scale", "0.2", "--threads", "4"];
            let r = bench(&[&args[..], &["--batch", "16", "--bucket", bucket]].concat());
            assert_eq!(r["checksum_ok"], true, "{m}: {r}");
            assert!(r["skipped"].is_null(), "{m}: {r}");
            assert!(r["bytes_fetched"].as_u64().unwrap() > 0, "{m} at 25% local must fetch from memd: {r}");
            if m != "objects" {
                break;
            }
        }
    }
}

#[test]
fn swap_mode_runs_or_says_why_not() {
    let r = bench(&["run", "array", "--mode", "swap", "--local", "0.25", "--scale", "0.06"]);
    match r["skipped"].as_str() {
        Some(why) => assert!(why.contains("needs"), "{r}"),
        None => assert_eq!(r["checksum_ok"], true, "{r}"),
    }
}

#[test]
fn bad_arguments_are_clear_errors() {
    for (args, needle) in [
        (&["run", "nosuch", "--mode", "local"][..], "unknown workload"),
        (&["run", "array", "--mode", "teleport"][..], "unknown mode"),
        (&["run", "array", "--mode", "local", "--local", "2"][..], "--local"),
        (&["run", "array", "--mode", "local", "--scale", "x"][..], "--scale"),
        (&["run", "hashtable", "--mode", "local", "--threads", "0"][..], "--threads"),
        (&["run", "hashtable", "--mode", "local", "--batch", "many"][..], "--batch"),
        (&["run", "hashtable", "--mode", "objects", "--bucket", "512"][..], "--bucket"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_farmem-bench")).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(needle), "{args:?}: {out:?}");
    }
}
