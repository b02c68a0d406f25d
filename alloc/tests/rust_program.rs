//! A Rust program whose only farmem change is `#[global_allocator] static A: FarAlloc = FarAlloc::from_env();`
//! — this test binary — run against a loopback memd with a working set 6× its local-memory budget: the same
//! result as a plain run, and peak RSS within the budget plus a stated slack.
//!
//! The parent test re-executes this binary, running only the ignored `child` test, with `FARMEM_*` set (or
//! with far memory switched off for the plain run).

use farmem_alloc::FarAlloc;
use farmem_memd::testing::TestServer;
use std::process::Command;

#[global_allocator]
static A: FarAlloc = FarAlloc::from_env();

/// Peak-RSS allowance above budget + the program's own footprint (see preload/tests/shim.rs for what it holds).
const SLACK_KB: u64 = 56 << 10;

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn maxrss_kb() -> u64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the buffer we own.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) }, 0);
    // SAFETY: getrusage succeeded.
    u64::try_from(unsafe { ru.assume_init() }.ru_maxrss).unwrap()
}

/// Builds `mib` MiB as a growing Vec of Vecs (realloc moves blocks into far memory as they cross the
/// threshold), sweeps it twice, sorts a slice of it, and hashes everything.
fn workload(mib: usize) -> u64 {
    let words = 1 << 17; // 1 MiB per block: at the default threshold
    let mut blocks: Vec<Vec<u64>> = Vec::new();
    for b in 0..mib {
        let mut v = Vec::new();
        for j in 0..words {
            v.push(splitmix((b * words + j) as u64));
        }
        blocks.push(v);
    }
    let mut acc = 0u64;
    for pass in 0..2 {
        for v in &mut blocks {
            for x in v.iter_mut() {
                acc = acc.rotate_left(5) ^ *x ^ pass;
                *x ^= acc >> 3;
            }
        }
    }
    blocks[1].sort_unstable();
    let joined: Vec<u64> = blocks[2].iter().chain(&blocks[3]).copied().collect();
    blocks.iter().flatten().chain(&joined).fold(acc, |h, &x| splitmix(h ^ x))
}

#[test]
#[ignore = "the child half of working_set_six_times_the_budget, which runs it"]
fn child() {
    let Ok(mib) = std::env::var("FARMEM_TEST_CHILD_MIB") else { return };
    if std::env::var_os("FARMEM_SERVER").is_none() {
        assert!(A.set_local_only());
    } else {
        assert!(A.start_now(), "far memory started");
    }
    let h = workload(mib.parse().unwrap());
    println!("result {h:016x} maxrss_kb {}", maxrss_kb());
    if let Some(s) = A.paging_stats() {
        println!("faults {} fetched {} written {}", s.faults, s.bytes_fetched, s.bytes_written_back);
    }
}

fn uffd_available() -> bool {
    // SAFETY: userfaultfd(2) creates a descriptor or fails; we close what we get.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) };
    if fd >= 0 {
        // SAFETY: our descriptor.
        unsafe { libc::close(i32::try_from(fd).unwrap()) };
        return true;
    }
    let err = std::io::Error::last_os_error();
    assert!(std::env::var("CI").as_deref() != Ok("true"), "userfaultfd unavailable ({err}) but CI=true");
    eprintln!("skipped: userfaultfd is unavailable ({err})");
    false
}

fn run_child(mib: usize, far: Option<&TestServer>) -> (String, u64, String) {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--ignored", "--exact", "child", "--nocapture", "--test-threads=1"]);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("FARMEM_") {
            c.env_remove(k);
        }
    }
    c.env("FARMEM_TEST_CHILD_MIB", mib.to_string());
    if let Some(s) = far {
        c.env("FARMEM_SERVER", s.addr().to_string())
            .env("FARMEM_TOKEN_FILE", s.token_file())
            .env("FARMEM_LOCAL_MEM", "16M")
            .env("FARMEM_REQUIRED", "1");
    }
    let o = c.output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "child failed: {out}\n{}", String::from_utf8_lossy(&o.stderr));
    let line =
        out.lines().find_map(|l| l.find("result ").map(|i| &l[i..])).unwrap_or_else(|| panic!("no result in {out}"));
    let w: Vec<&str> = line.split_whitespace().collect();
    (w[1].to_string(), w[3].parse().unwrap(), out.clone())
}

#[test]
fn working_set_six_times_the_budget() {
    A.set_local_only();
    if !uffd_available() {
        return;
    }
    let (plain, plain_rss, _) = run_child(96, None);
    let (_, small_rss, _) = run_child(4, None);
    let srv = TestServer::start(1 << 30);
    let (far, far_rss, out) = run_child(96, Some(&srv));
    assert_eq!(far, plain, "same result with far memory");
    let bound = small_rss + (16 << 10) + SLACK_KB;
    eprintln!("peak RSS: plain {plain_rss} KiB, far {far_rss} KiB, bound {bound} KiB\n{out}");
    assert!(far_rss <= bound, "peak RSS {far_rss} KiB above budget + slack {bound} KiB");
    // The two sweeps read 96 MiB each through a 16 MiB budget: each fetches at least 80 MiB back (on demand or
    // read ahead) and, rewriting every element, writes as much back.
    let stat = |name: &str| -> u64 {
        let line = out.lines().find(|l| l.starts_with("faults ")).unwrap_or_else(|| panic!("no paging stats: {out}"));
        let w: Vec<&str> = line.split_whitespace().collect();
        let i = w.iter().position(|&x| x == name).unwrap_or_else(|| panic!("no {name} in {line:?}"));
        w[i + 1].parse().unwrap()
    };
    assert!(stat("faults") > 0, "paging happened: {out}");
    assert!(stat("fetched") >= 2 * (80 << 20), "fetched bytes count every page fetched: {out}");
    assert!(stat("written") >= 2 * (80 << 20), "written-back bytes count every page written: {out}");
}
