//! Released ranges read zeros (resident and evicted pages alike, and their memd copies are gone); clean pages
//! are dropped without write-back.
mod common;
use common::*;
use farmem_memd::FarStore;

fn fill(base: *mut u8, pages: std::ops::Range<usize>, tag: u8) {
    for p in pages {
        // SAFETY: callers pass pages inside the region.
        unsafe { std::ptr::write_bytes(base.add(p * PS), tag_byte(tag, p), PS) };
    }
}

fn page_is(base: *mut u8, p: usize, v: u8) -> bool {
    // SAFETY: callers pass pages inside the region.
    let s = unsafe { std::slice::from_raw_parts(base.add(p * PS), PS) };
    s.iter().all(|&b| b == v)
}

#[test]
fn released_pages_read_zero_and_leave_memd() {
    let Some((r, store)) = region(256, 32, false) else { return };
    let base = r.base();
    fill(base, 0..256, 3);
    // Pages 0..64 are evicted by now (written back); the last pages are resident.
    let s = r.stats();
    assert!(s.pages_written >= 200, "{s:?}");
    r.release(0, 16 * PS).unwrap(); // evicted pages
    r.release(250 * PS, 6 * PS).unwrap(); // resident pages
    r.release(100 * PS, PS).unwrap();
    // memd no longer holds the released pages.
    let (present, _) = store.read_pages(r.region_id(), &[0, 5, 15, 100, 16]).unwrap();
    assert_eq!(present, vec![false, false, false, false, true]);
    for p in 0..256 {
        let released = !(16..250).contains(&p) || p == 100;
        let want = if released { 0 } else { tag_byte(3, p) };
        assert!(page_is(base, p, want), "page {p} (released: {released})");
    }
    // A released page can be written again and keeps its new contents through eviction.
    fill(base, 0..4, 9);
    fill(base, 20..200, 3);
    for p in 0..4 {
        assert!(page_is(base, p, tag_byte(9, p)), "rewritten page {p}");
    }
    assert!(r.stats().released_pages >= 23);
    // Bad ranges are refused.
    assert!(r.release(1, PS).is_err());
    assert!(r.release(0, 257 * PS).is_err());
    assert!(r.release(usize::MAX - PS + 1, PS).is_err());
}

#[test]
fn madvise_by_the_program_reads_zero() {
    let Some((r, _store)) = region(128, 16, false) else { return };
    let base = r.base();
    fill(base, 0..128, 5);
    // SAFETY: a page-aligned range inside the region; the program frees it behind the region's back.
    let rc = unsafe { libc::madvise(base.add(10 * PS).cast(), 4 * PS, libc::MADV_DONTNEED) };
    assert_eq!(rc, 0);
    for p in 0..128 {
        let want = if (10..14).contains(&p) { 0 } else { tag_byte(5, p) };
        assert!(page_is(base, p, want), "page {p}");
    }
}

#[test]
fn clean_pages_cause_no_write_back() {
    let Some((r, _store)) = region(256, 32, false) else { return };
    let base = r.base();
    fill(base, 0..256, 7);
    let read_all = || {
        for p in 0..256 {
            assert!(page_is(base, p, tag_byte(7, p)), "page {p}");
        }
    };
    read_all();
    let after_first = r.stats();
    // Every page is clean now (the pass above evicted every dirty page); reading twice more writes nothing.
    read_all();
    read_all();
    let s = r.stats();
    assert_eq!(s.pages_written, after_first.pages_written, "clean pages were written back: {s:?}");
    assert!(s.clean_drops >= after_first.clean_drops + 400, "{s:?}");
    assert!(s.pages_written >= 256 && s.pages_written <= 256 + 32, "{s:?}");
}

fn vm_rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn default_sized_region_costs_little_until_touched() {
    let store: std::sync::Arc<dyn FarStore> = std::sync::Arc::new(farmem_memd::MemStore::new(1 << 30));
    let before = vm_rss_kib();
    let cfg = farmem_uffd::RegionConfig { local_mem: 16 << 20, ..farmem_uffd::RegionConfig::default() };
    assert_eq!(cfg.size, 64 << 30);
    let Some(r) = region_with(cfg, store) else { return };
    let pages = r.len() / PS;
    let probe = [0, 1, pages / 2, pages - 1];
    for &p in &probe {
        // SAFETY: inside the region.
        unsafe { r.base().add(p * PS).cast::<u64>().write_volatile(p as u64 + 5) };
    }
    for &p in &probe {
        // SAFETY: inside the region.
        assert_eq!(unsafe { r.base().add(p * PS).cast::<u64>().read_volatile() }, p as u64 + 5);
    }
    let grown = vm_rss_kib().saturating_sub(before);
    assert!(grown < 64 * 1024, "a 64 GiB region with four touched pages grew RSS by {grown} KiB");
    r.release(0, r.len()).unwrap();
    for &p in &probe {
        // SAFETY: inside the region.
        assert_eq!(unsafe { r.base().add(p * PS).cast::<u64>().read_volatile() }, 0);
    }
    assert!(r.contains(r.base() as usize + r.len() - 1) && !r.contains(r.base() as usize + r.len()));
}

#[test]
fn pages_memd_lost_are_never_silent_zeros() {
    // Run in a child: losing memd's copy must poison the access (SIGBUS), not read zeros.
    if std::env::var("FARMEM_UFFD_TEST_ROLE").as_deref() == Ok("lost") {
        let (r, store) = region(256, 32, false).unwrap();
        fill(r.base(), 0..256, 1);
        store.drop_region(r.region_id()).unwrap();
        // Page 0 was evicted: its fetch finds nothing.
        println!("value {}", page_is(r.base(), 0, 0));
        std::process::exit(3);
    }
    if std::env::var("FARMEM_UFFD_TEST_ROLE").is_ok() || region(64, 16, false).is_none() {
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "pages_memd_lost_are_never_silent_zeros", "--nocapture", "--test-threads=1"])
        .env("FARMEM_UFFD_TEST_ROLE", "lost")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGBUS), "{:?}\n{err}", out.status);
    assert!(err.contains("no longer holds page"), "{err}");
}

#[test]
fn keep_awake_spinners_run_after_faults_and_not_when_off() {
    let store: std::sync::Arc<dyn FarStore> = std::sync::Arc::new(farmem_memd::MemStore::new(1 << 30));
    let cfg = |us| farmem_uffd::RegionConfig {
        size: 512 * PS,
        local_mem: 64 * PS,
        keep_awake: std::time::Duration::from_micros(us),
        ..farmem_uffd::RegionConfig::default()
    };
    let Some(off) = region_with(cfg(0), store.clone()) else { return };
    fill(off.base(), 0..512, 3);
    for p in 0..512 {
        assert!(page_is(off.base(), p, tag_byte(3, p)), "page {p}");
    }
    let s = off.stats();
    assert_eq!((s.keep_awake_threads, s.keep_awake_spin_us), (0, 0));
    drop(off);

    let on = region_with(cfg(2000), store).unwrap();
    let s = on.stats();
    assert!(s.keep_awake_threads >= 1);
    assert_eq!(s.keep_awake_spin_us, 0, "spinners spun before any fault");
    fill(on.base(), 0..512, 4);
    for p in 0..512 {
        assert!(page_is(on.base(), p, tag_byte(4, p)), "page {p}");
    }
    // Spinners run only on idle CPU time: wait for them to finish a window rather than time them.
    let t = std::time::Instant::now();
    while on.stats().keep_awake_spin_us == 0 {
        assert!(t.elapsed() < std::time::Duration::from_secs(60), "spinners never spun after faults");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}
