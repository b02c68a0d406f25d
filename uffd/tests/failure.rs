//! Failure paths, each run in a child process (this test binary re-executed with a role): memd killed in the
//! middle of a run must end in SIGBUS with a message naming the server, never a hang; a forked child must read
//! correct data or die with a clear message, never silent zeros.
mod common;
use common::*;
use farmem_memd::testing::TestServer;
use farmem_memd::{Client, FarStore};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ROLE: &str = "FARMEM_UFFD_TEST_ROLE";

/// Runs this binary's test `name` in a child process with `ROLE=role`; returns (status, stdout, stderr). Fails
/// the test if the child has not finished within a minute (a hang).
fn run_child(name: &str, role: &str) -> (std::process::ExitStatus, String, String) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(_st) = child.try_wait().unwrap() {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("child {role} hung; stderr:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (out.status, String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn signal_of(st: std::process::ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    st.signal()
}

fn role() -> Option<String> {
    std::env::var(ROLE).ok()
}

fn uffd_usable() -> bool {
    region(64, 16, false).is_some()
}

#[test]
fn memd_killed_mid_run_gives_sigbus_with_message() {
    if role().is_some() || !uffd_usable() {
        return;
    }
    let (st, out, err) = run_child("memd_kill_role", "kill");
    assert!(out.contains("memd stopped"), "the child must get as far as stopping memd\nstdout: {out}\nstderr: {err}");
    assert_eq!(signal_of(st), Some(libc::SIGBUS), "status {st:?}\nstdout: {out}\nstderr: {err}");
    assert!(err.contains("far-memory server 127.0.0.1:") && err.contains("unreachable"), "stderr: {err}");
}

#[test]
fn memd_kill_role() {
    if role().as_deref() != Some("kill") {
        return;
    }
    let mut server = TestServer::start(1 << 30);
    let mut cfg = server.client_config();
    cfg.reconnect_timeout = Duration::from_millis(300);
    let client: Arc<dyn FarStore> = Arc::new(Client::connect(cfg).unwrap());
    let r = region_on(512, 64, true, client).unwrap();
    let base = r.base();
    for p in 0..512 {
        // SAFETY: inside the region.
        unsafe { base.add(p * PS).cast::<u64>().write_volatile(p as u64 + 1) };
    }
    for p in 0..512 {
        // SAFETY: inside the region.
        assert_eq!(unsafe { base.add(p * PS).cast::<u64>().read_volatile() }, p as u64 + 1);
    }
    server.stop();
    println!("memd stopped");
    // Page 0 was evicted long ago: fetching it must fail, print the message and raise SIGBUS.
    for p in 0..512 {
        // SAFETY: inside the region.
        unsafe { base.add(p * PS).cast::<u64>().read_volatile() };
    }
    println!("survived: every page was resident");
    std::process::exit(3);
}

#[test]
fn forked_child_reads_correct_data_or_dies_clearly() {
    if role().is_some() || !uffd_usable() {
        return;
    }
    // Everything resident: the child reads it all.
    let (st, out, err) = run_child("fork_role", "fork-resident");
    assert!(st.success(), "status {st:?}\nstdout: {out}\nstderr: {err}");
    assert!(out.contains("child read 48 pages"), "stdout: {out}\nstderr: {err}");
    // Most pages in memd: the child reads correct data until it touches one, then dies with the message.
    let (st, out, err) = run_child("fork_role", "fork-remote");
    assert!(!out.contains("MISMATCH"), "stdout: {out}\nstderr: {err}");
    assert!(out.contains("parent checked"), "stdout: {out}\nstderr: {err}");
    assert!(st.success(), "status {st:?}\nstdout: {out}\nstderr: {err}");
    assert!(out.contains("child died of SIGSEGV"), "stdout: {out}\nstderr: {err}");
    assert!(err.contains("forked child touched far-memory address"), "stderr: {err}");
}

fn write_fd(fd: i32, s: &[u8]) {
    // SAFETY: writing a live byte slice to an open descriptor.
    unsafe { libc::write(fd, s.as_ptr().cast(), s.len()) };
}

#[test]
fn fork_role() {
    let Some(role) = role() else { return };
    let pages = match role.as_str() {
        "fork-resident" => 48,
        "fork-remote" => 512,
        _ => return,
    };
    let (r, _store) = region(pages, 64, false).unwrap();
    let base = r.base();
    for p in 0..pages {
        // SAFETY: inside the region.
        unsafe { base.add(p * PS).cast::<u64>().write_volatile(p as u64 + 1) };
    }
    // SAFETY: the child only reads memory, writes to stdout and exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        for p in 0..pages {
            // SAFETY: inside the region.
            let v = unsafe { base.add(p * PS).cast::<u64>().read_volatile() };
            if v != p as u64 + 1 {
                write_fd(1, b"MISMATCH\n");
                // SAFETY: ending the child without running the parent's destructors.
                unsafe { libc::_exit(3) };
            }
        }
        write_fd(1, b"child read all pages\n");
        // SAFETY: as above.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &raw mut status, 0) };
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        println!("child read {pages} pages");
    } else if libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSEGV {
        println!("child died of SIGSEGV");
    } else {
        println!("child ended with status {status}");
    }
    // The parent still reads everything.
    for p in 0..pages {
        // SAFETY: inside the region.
        assert_eq!(unsafe { base.add(p * PS).cast::<u64>().read_volatile() }, p as u64 + 1);
    }
    println!("parent checked");
}
