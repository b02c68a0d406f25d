//! What a forked child sees of a region.
//!
//! A child's copy of the region is not registered with any userfaultfd, and the parent's threads do not exist in it, so
//! a page whose contents live only in memd would silently read as zeros there. At fork (a `pthread_atfork` child
//! handler) every live region is therefore walked once in the child: pages mapped at fork time keep their contents (the
//! kernel copied them), pages never written or released read zeros as they should, and every other page (held in memd,
//! or caught unmapped in the middle of a fetch or an eviction) is made `PROT_NONE`. Touching one of those runs a
//! SIGSEGV handler that prints which region and server the page belongs to and kills the child with the default SIGSEGV
//! action — a clear fatal error, never silent zeros. Faults elsewhere are passed on to the previous handler. `release`
//! in the child drops pages locally only (the memd copies belong to the parent), and dropping the child's `Region`
//! leaves memd alone.
//!
//! Children that `exec` at once (the usual case) pay for one walk of the page-state table.
//!
//! # Safety
//! The registry is a fixed array of atomic pointers, so the child handler (which runs where another parent
//! thread may have held any lock at fork time) takes no lock and does not allocate. The signal handler calls
//! only async-signal-safe functions (`write`, `sigaction`).

use crate::region::Shared;
use crate::PAGE_SIZE;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering::SeqCst};
use std::sync::Once;

const SLOTS: usize = 256;
static REGIONS: [AtomicPtr<Shared>; SLOTS] = [const { AtomicPtr::new(std::ptr::null_mut()) }; SLOTS];
static INSTALL: Once = Once::new();
static GUARDED: AtomicBool = AtomicBool::new(false);
static mut OLD_SEGV: std::mem::MaybeUninit<libc::sigaction> = std::mem::MaybeUninit::zeroed();

/// Registers a live region for the fork walk (the `Shared` outlives its registration: `unregister` runs first
/// in `Region::drop`).
pub(crate) fn register(sh: &std::sync::Arc<Shared>) {
    INSTALL.call_once(|| {
        // SAFETY: pthread_atfork stores a function pointer that stays valid for the life of the process.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
        if rc != 0 {
            tracing::error!(rc, "pthread_atfork failed: a forked child would not guard far pages");
        }
    });
    let p = std::sync::Arc::as_ptr(sh).cast_mut();
    if !REGIONS.iter().any(|s| s.compare_exchange(std::ptr::null_mut(), p, SeqCst, SeqCst).is_ok()) {
        tracing::error!("more than {SLOTS} regions: a forked child will not guard this one");
    }
}

/// Removes a region from the fork walk.
pub(crate) fn unregister(sh: &std::sync::Arc<Shared>) {
    let p = std::sync::Arc::as_ptr(sh).cast_mut();
    for s in &REGIONS {
        let _ = s.compare_exchange(p, std::ptr::null_mut(), SeqCst, SeqCst);
    }
}

/// Whether a page with state byte `st` may hold contents the child cannot get: it lives in memd, or is in the
/// middle of a fetch or an eviction. Such a page is still fine if it is mapped in the child (`mincore`): its
/// contents are then exactly the parent's at fork.
fn candidate(st: u8) -> bool {
    let loc = st & 0b11;
    loc == 2 || loc == 3 || (loc == 0 && st & (1 << 2) != 0)
}

extern "C" fn in_child() {
    const CHUNK: usize = 4096;
    let mut any = false;
    let mut resident = [0u8; CHUNK];
    for slot in &REGIONS {
        let p = slot.load(SeqCst);
        if p.is_null() {
            continue;
        }
        // SAFETY: a registered pointer refers to a live `Shared` (see `register`); the child is single-threaded.
        let sh = unsafe { &*p };
        let n = crate::as_usize(sh.npages);
        let mut c0 = 0;
        while c0 < n {
            let c1 = (c0 + CHUNK).min(n);
            if (c0..c1).any(|i| candidate(sh.state.at(i).load(SeqCst))) {
                let start = crate::as_usize(sh.base) + c0 * PAGE_SIZE;
                // SAFETY: the range lies in the region mapping and `resident` has one byte per page of it.
                let rc =
                    unsafe { libc::mincore(start as *mut libc::c_void, (c1 - c0) * PAGE_SIZE, resident.as_mut_ptr()) };
                if rc != 0 {
                    resident.fill(0);
                }
                let mut i = c0;
                while i < c1 {
                    let guard = |i: usize| candidate(sh.state.at(i).load(SeqCst)) && resident[i - c0] & 1 == 0;
                    if !guard(i) {
                        i += 1;
                        continue;
                    }
                    let mut j = i + 1;
                    while j < c1 && guard(j) {
                        j += 1;
                    }
                    protect(
                        sh.base + crate::as_u64(i * PAGE_SIZE),
                        crate::as_u64((j - i) * PAGE_SIZE),
                        libc::PROT_NONE,
                    );
                    any = true;
                    i = j;
                }
            }
            c0 = c1;
        }
    }
    if any && !GUARDED.swap(true, SeqCst) {
        install_handler();
    }
}

fn protect(start: u64, len: u64, prot: i32) {
    // SAFETY: the range lies inside a region mapping this process owns; changing its protection affects no
    // Rust object (region memory is only reached through raw pointers handed to the program).
    unsafe { libc::mprotect(crate::as_usize(start) as *mut libc::c_void, crate::as_usize(len), prot) };
}

/// `release` in a forked child: pages become readable zeros locally; memd copies belong to the parent.
pub(crate) fn release_in_child(sh: &Shared, start: u64, len: u64) {
    protect(start, len, libc::PROT_READ | libc::PROT_WRITE);
    // The child's mapping is not registered, so this raises no event.
    if let Err(e) = crate::raw::dontneed(start, len) {
        tracing::error!(error = %e, "release in a forked child failed");
    }
    for p in (start - sh.base) / PAGE_SIZE as u64..(start - sh.base + len) / PAGE_SIZE as u64 {
        sh.state.at(crate::as_usize(p)).store(0, SeqCst);
    }
}

fn install_handler() {
    // SAFETY: a zeroed sigaction is a valid starting value; we fill handler, mask and flags before use.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = on_segv as *const () as usize;
    sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
    // SAFETY: OLD_SEGV is written only here, once (GUARDED), before the handler can run; sigaction reads `sa`
    // and writes the previous action into OLD_SEGV.
    unsafe {
        libc::sigemptyset(&raw mut sa.sa_mask);
        libc::sigaction(libc::SIGSEGV, &raw const sa, (&raw mut OLD_SEGV).cast());
    }
}

fn write_all(b: &[u8]) {
    // SAFETY: writing a live byte slice to stderr; write(2) is async-signal-safe.
    unsafe { libc::write(2, b.as_ptr().cast(), b.len()) };
}

fn write_hex(v: u64) {
    let mut buf = [0u8; 18];
    buf[0] = b'0';
    buf[1] = b'x';
    for i in 0..16 {
        let nib = (v >> (60 - 4 * i)) & 0xf;
        buf[2 + i] = b"0123456789abcdef"[crate::as_usize(nib)];
    }
    write_all(&buf);
}

extern "C" fn on_segv(sig: i32, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as u64;
    for slot in &REGIONS {
        let p = slot.load(SeqCst);
        if p.is_null() {
            continue;
        }
        // SAFETY: as in `in_child`.
        let sh = unsafe { &*p };
        if addr >= sh.base && addr < sh.base + sh.len {
            write_all(b"farmem: forked child touched far-memory address ");
            write_hex(addr);
            write_all(b" whose page was not resident at fork time; its contents live in memd (");
            write_all(sh.server.as_bytes());
            write_all(
                b") and far memory is not inherited across fork. Only pages resident at fork are copied; \
                        exiting with SIGSEGV.\n",
            );
            default_segv();
            return;
        }
    }
    // Not ours: hand over to the previous disposition.
    // SAFETY: OLD_SEGV was initialised by sigaction before this handler was installed.
    let old = unsafe { (&raw const OLD_SEGV).read().assume_init() };
    let h = old.sa_sigaction;
    if h == libc::SIG_DFL || h == libc::SIG_IGN {
        default_segv();
    } else if old.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous handler was installed as a three-argument SA_SIGINFO handler.
        let f: extern "C" fn(i32, *mut libc::siginfo_t, *mut libc::c_void) = unsafe { std::mem::transmute(h) };
        f(sig, info, ctx);
    } else {
        // SAFETY: the previous handler was installed as a one-argument handler.
        let f: extern "C" fn(i32) = unsafe { std::mem::transmute(h) };
        f(sig);
    }
}

/// Restores the default SIGSEGV action: returning re-executes the access, which then kills the process.
fn default_segv() {
    // SAFETY: a zeroed sigaction with SIG_DFL (0) is the default disposition.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = libc::SIG_DFL;
    // SAFETY: sigaction is async-signal-safe; `sa` is a valid action.
    unsafe { libc::sigaction(libc::SIGSEGV, &raw const sa, std::ptr::null_mut()) };
}
