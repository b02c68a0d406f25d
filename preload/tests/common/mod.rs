//! Helpers for the preload tests: the shim and `farmem` binaries, C programs compiled on demand, userfaultfd
//! availability, and running a child with a deadline.
#![allow(dead_code, reason = "each test file uses a different subset")]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The `farmem` binary under test.
pub fn farmem() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_farmem"))
}

/// `libfarmem_preload.so` next to `farmem`, built first: `cargo test` does not build a cdylib for the tests.
pub fn shim() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = farmem();
            let dir = exe.parent().expect("farmem has a directory");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "-q", "-p", "farmem-preload", "--lib", "--manifest-path"])
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
            if dir.ends_with("release") {
                cmd.arg("--release");
            }
            let st = cmd.status().expect("run cargo to build the shim");
            assert!(st.success(), "building libfarmem_preload.so failed");
            let lib = dir.join("libfarmem_preload.so");
            assert!(lib.is_file(), "{} missing after the build", lib.display());
            lib
        })
        .clone()
}

/// A private scratch directory for this test process.
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(farmem_memd::testing::private_dir)
}

/// Compiles `tests/c/NAME.c` with gcc (once per test process) and returns the executable.
pub fn c_program(name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c").join(format!("{name}.c"));
    let out = scratch().join(name);
    if !out.exists() {
        // Unique per call: tests running in parallel may compile the same program at once.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = scratch().join(format!("{name}.{}.{n}.tmp", std::process::id()));
        let st = Command::new("gcc")
            .args(["-O1", "-fno-builtin", "-Wall", "-Wno-alloc-size-larger-than", "-pthread", "-o"])
            .arg(&tmp)
            .arg(&src)
            .status()
            .expect("gcc is installed");
        assert!(st.success(), "gcc failed on {}", src.display());
        std::fs::rename(&tmp, &out).expect("move the compiled program into place");
    }
    out
}

/// Whether this process may use userfaultfd. Outside CI a missing privilege skips the test (false, with a
/// message); with `CI=true` it fails the test, so paging tests always run in CI.
pub fn uffd_available(test: &str) -> bool {
    // SAFETY: userfaultfd(2) with O_CLOEXEC creates a descriptor or fails; we close what we get.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) };
    if fd >= 0 {
        // SAFETY: fd was just returned by the kernel and is ours.
        unsafe { libc::close(i32::try_from(fd).expect("fd fits")) };
        return true;
    }
    let err = std::io::Error::last_os_error();
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: userfaultfd is unavailable ({err}) but CI=true requires this test to run"
    );
    eprintln!(
        "{test}: skipped: userfaultfd is unavailable here ({err}); run as root or set vm.unprivileged_userfaultfd=1"
    );
    false
}

/// Runs `cmd` to completion or kills it after `limit` (then panics naming `what`).
pub fn run_with_deadline(mut cmd: Command, limit: Duration, what: &str) -> Output {
    use std::os::unix::process::CommandExt;
    // Its own process group, so that a deadline kills grandchildren (the program under `farmem run`) too.
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null()).process_group(0);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for the child") {
            break st;
        }
        if start.elapsed() > limit {
            let pgid = i32::try_from(child.id()).expect("pid fits");
            // SAFETY: kill(2) on the process group we created for this child.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = child.wait();
            let e = t_err.join().unwrap_or_default();
            panic!("{what}: still running after {limit:?}, killed; stderr:\n{}", String::from_utf8_lossy(&e));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output { status, stdout: t_out.join().unwrap_or_default(), stderr: t_err.join().unwrap_or_default() }
}

/// `farmem run ARGS -- PROGRAM PARGS` with a deadline.
pub fn farmem_run(flags: &[&str], program: &Path, pargs: &[&str], limit: Duration) -> Output {
    shim();
    let mut cmd = Command::new(farmem());
    cmd.arg("run").args(flags).arg("--").arg(program).args(pargs);
    run_with_deadline(cmd, limit, &format!("farmem run {flags:?} -- {} {pargs:?}", program.display()))
}

/// stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The value after `key` in a line of whitespace-separated `key value` pairs.
pub fn field(text: &str, key: &str) -> Option<String> {
    let mut it = text.split_whitespace();
    while let Some(w) = it.next() {
        if w == key {
            return it.next().map(str::to_string);
        }
    }
    None
}

/// Asserts success and returns stdout, showing stderr otherwise.
pub fn ok(o: &Output, what: &str) -> String {
    assert!(o.status.success(), "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}", o.status, stdout(o), stderr(o));
    stdout(o)
}
