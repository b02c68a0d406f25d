//! farmem-preload: `libfarmem_preload.so`, far memory for programs nobody changes.
//!
//! Loaded with `LD_PRELOAD` (as `farmem run` does), the library exports the whole malloc family — `malloc`,
//! `free`, `calloc`, `realloc`, `reallocarray`, `posix_memalign`, `aligned_alloc`, `memalign`, `valloc`,
//! `pvalloc`, `malloc_usable_size` — and interposes them on the C library's. Each is a thin wrapper over one
//! process-wide [`FarAlloc`], which is also this library's own Rust global allocator, so farmem's internal
//! allocations take the same path and are routed to mimalloc by the internal mark. On x86-64, `malloc` and `free`
//! settle their common cases themselves, with a compare and a conditional jump straight into mimalloc (see
//! `malloc` below), and hand everything else to FarAlloc. Small blocks go to mimalloc
//! (linked in statically, called directly); blocks of at least `FARMEM_THRESHOLD` go to a userfaultfd region
//! backed by the memd at `FARMEM_SERVER`, started on the first such allocation.
//!
//! Start-up never re-enters the shim's far path: configuration, the memd connection, the region's threads and
//! the log subscriber are all created with the thread marked internal, so whatever they allocate (thread-local
//! destructor registration through `calloc`, `dlsym`, thread stacks' bookkeeping) is served by mimalloc. The
//! configuration is read by a load-time constructor, so a malformed `FARMEM_*` value is reported at start-up
//! and `FARMEM_STATS=1` prints its summary at exit even for a program that never allocated a large block.
//!
//! Nothing unwinds out of the shim: a panic in an `extern "C"` function aborts the process (Rust ≥ 1.81), and
//! FarAlloc's own fatal conditions abort or `_exit` after one line on stderr. No FarAlloc lock is held across
//! `fork` (`pthread_atfork`).
//!
//! # Safety
//! The exported functions are `unsafe extern "C"`: their callers are C programs bound by the C library's
//! contracts for these functions (a pointer passed to `free`/`realloc` came from this family and is live).

use farmem_alloc::config::AllocConfig;
#[cfg(target_arch = "x86_64")]
use farmem_alloc::mimalloc_sys as mi;
use farmem_alloc::{FarAlloc, StartError, Started};
use std::ffi::c_void;

fn start(cfg: &AllocConfig) -> Result<Started, StartError> {
    let filter = cfg.log.clone().unwrap_or_else(|| "warn".to_string());
    match tracing_subscriber::EnvFilter::try_new(&filter) {
        Ok(f) => {
            // SAFETY: isatty only inspects descriptor 2.
            let tty = unsafe { libc::isatty(2) } == 1;
            let _ = tracing_subscriber::fmt().with_env_filter(f).with_ansi(tty).with_writer(std::io::stderr).try_init();
        }
        Err(e) => {
            return Err(StartError::Config(farmem_memd::config::ConfigError::new(
                "FARMEM_LOG",
                format!("{filter:?} is not a log filter: {e}"),
            )))
        }
    }
    farmem_alloc::start::start_from_env(cfg)
}

#[global_allocator]
static A: FarAlloc = FarAlloc::with_start(start, 0);

extern "C" fn init() {
    FarAlloc::install_errno_handler();
    A.threshold();
}

#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = init;

// `malloc` and `free` on x86-64: the common cases in two instructions each and a jump into mimalloc, which is as
// close to mimalloc's own preload (where `malloc` *is* `mi_malloc`) as a router can get. A compiler cannot emit
// this from Rust on stable: calls to C functions go through the GOT (no PLT, full RELRO), which rules out the
// conditional tail jump and costs a load and a jump more. Everything the assembly does not settle goes to
// FarAlloc's own `malloc`/`free`, which decide again from scratch.

/// C `malloc`, the branches of [`FarAlloc::malloc`]: a size up to `MI_SMALL_SIZE_MAX` (1 KiB) is always local
/// (the threshold is at least 4 KiB), and `mi_malloc_small` is `mi_malloc` without its own size test, so a
/// small `malloc` runs exactly the instructions of mimalloc's; a size below the threshold goes to `mi_malloc`
/// (a plain load is the Relaxed load [`FarAlloc::THRESHOLD_OFFSET`] asks for); any other to
/// [`FarAlloc::malloc`].
///
/// # Safety
/// None beyond C's.
#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
#[no_mangle]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    std::arch::naked_asm!(
        "cmp rdi, {small}",
        "jbe {mi_malloc_small}",
        "cmp rdi, qword ptr [rip + {a} + {threshold}]",
        "jb {mi_malloc}",
        "jmp {rest}",
        small = const mi::MI_SMALL_SIZE_MAX,
        mi_malloc_small = sym mi::mi_malloc_small,
        a = sym A,
        threshold = const FarAlloc::THRESHOLD_OFFSET,
        mi_malloc = sym mi::mi_malloc,
        rest = sym malloc_rest,
    )
}

/// `malloc` for what the assembly above does not settle.
#[cfg(target_arch = "x86_64")]
extern "C" fn malloc_rest(size: usize) -> *mut c_void {
    A.malloc(size)
}

/// C `free`: a block below the far region's start (every block while far memory is not running, and on Linux
/// every mimalloc block — see [`FarAlloc::is_far`]) goes to `mi_free` after one compare with that start (an
/// x86-64 load is an Acquire load, as [`FarAlloc::REGION_START_OFFSET`] asks); any other to [`FarAlloc::free`].
///
/// # Safety
/// `p` is null or a live block of this family.
#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
#[no_mangle]
pub unsafe extern "C" fn free(p: *mut c_void) {
    std::arch::naked_asm!(
        "cmp rdi, qword ptr [rip + {a} + {lo}]",
        "jb {mi_free}",
        "jmp {rest}",
        a = sym A,
        lo = const FarAlloc::REGION_START_OFFSET,
        mi_free = sym mi::mi_free,
        rest = sym free_rest,
    )
}

/// `free` for what the assembly above does not settle.
///
/// # Safety
/// As `free`'s.
#[cfg(target_arch = "x86_64")]
unsafe extern "C" fn free_rest(p: *mut c_void) {
    // SAFETY: C's contract for free, which free's caller is bound by.
    unsafe { A.free(p) }
}

/// C `malloc`.
///
/// # Safety
/// None beyond C's.
#[cfg(not(target_arch = "x86_64"))]
#[no_mangle]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    A.malloc(size)
}

/// C `free`.
///
/// # Safety
/// `p` is null or a live block of this family.
#[cfg(not(target_arch = "x86_64"))]
#[no_mangle]
pub unsafe extern "C" fn free(p: *mut c_void) {
    // SAFETY: C's contract for free, which the caller is bound by.
    unsafe { A.free(p) }
}

/// C `calloc`.
///
/// # Safety
/// None beyond C's.
#[no_mangle]
pub unsafe extern "C" fn calloc(nmemb: usize, size: usize) -> *mut c_void {
    A.calloc(nmemb, size)
}

/// C `realloc`.
///
/// # Safety
/// `p` is null or a live block of this family.
#[no_mangle]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: C's contract for realloc, which the caller is bound by.
    unsafe { A.realloc(p, size) }
}

/// C `reallocarray`.
///
/// # Safety
/// `p` is null or a live block of this family.
#[no_mangle]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, nmemb: usize, size: usize) -> *mut c_void {
    // SAFETY: C's contract for reallocarray, which the caller is bound by.
    unsafe { A.reallocarray(p, nmemb, size) }
}

/// C `posix_memalign`.
///
/// # Safety
/// `out` is valid for a pointer write.
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> i32 {
    // SAFETY: C's contract for posix_memalign, which the caller is bound by.
    unsafe { A.posix_memalign(out, align, size) }
}

/// C `aligned_alloc`.
///
/// # Safety
/// None beyond C's.
#[no_mangle]
pub unsafe extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    A.aligned_alloc(align, size)
}

/// C `memalign`.
///
/// # Safety
/// None beyond C's.
#[no_mangle]
pub unsafe extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    A.memalign(align, size)
}

/// C `valloc`.
///
/// # Safety
/// None beyond C's.
#[no_mangle]
pub unsafe extern "C" fn valloc(size: usize) -> *mut c_void {
    A.valloc(size)
}

/// C `pvalloc`.
///
/// # Safety
/// None beyond C's.
#[no_mangle]
pub unsafe extern "C" fn pvalloc(size: usize) -> *mut c_void {
    A.pvalloc(size)
}

/// C `malloc_usable_size`.
///
/// # Safety
/// `p` is null or a live block of this family.
#[no_mangle]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    // SAFETY: C's contract for malloc_usable_size, which the caller is bound by.
    unsafe { A.usable_size(p) }
}
