//! [`FarAlloc`]: routing between mimalloc and the far heap, the malloc family's C semantics, the Rust
//! `GlobalAlloc` interface, fork handling and the exit summary.
//!
//! # Safety
//! This module calls mimalloc's C functions and reads and writes raw blocks; each call site states why the
//! pointer it passes came from the allocator it goes to.

use crate::config::{AllocConfig, MIN_THRESHOLD};
use crate::heap::{Backing, Heap, HeapStats, PagingStats};
use crate::range::PAGE;
use farmem_memd::internal;
use libmimalloc_sys as mi;
use std::alloc::{GlobalAlloc, Layout};
use std::ffi::{c_int, c_void};
use std::fmt;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};

/// Alignment `mi_malloc` guarantees for every size (blocks whose size is a multiple of 16 are 16-aligned,
/// as C requires of objects of such types; smaller requests of 16 go through `mi_malloc_aligned`).
const MI_ALIGN: usize = 8;

/// `mi_option_purge_delay`: the 16th entry of `mi_option_e` in mimalloc v2 and v3 alike (the Rust bindings do
/// not name it).
const MI_OPTION_PURGE_DELAY: mi::mi_option_t = 15;
/// Purge delay while far memory runs, in ms: freed pages are returned soon, so the paging path's transient
/// buffers (fetch and write-back batches) do not stay resident on top of the budget. It is mimalloc v2's
/// default (the one built here); v3's is 1 s, which cost 25–35 MiB of peak RSS in our tests.
const FAR_PURGE_DELAY_MS: std::ffi::c_long = 10;

/// `mi_option_allow_thp`: the 38th entry of `mi_option_e` in mimalloc v2, the generation built here (v3 numbers
/// it differently; the Rust bindings do not name it).
const MI_OPTION_ALLOW_THP: mi::mi_option_t = 37;
/// Arena slots in mimalloc v2 (`MI_MAX_ARENAS`); arena ids are slot + 1.
const MI_MAX_ARENAS: c_int = 132;

unsafe extern "C" {
    /// Start and length of mimalloc's arena `arena_id`, or null if there is none (exported by the mimalloc
    /// linked here; not in the Rust bindings).
    fn mi_arena_area(arena_id: c_int, size: *mut usize) -> *mut c_void;
}

// `malloc` sends every size up to MI_SMALL_SIZE_MAX to mimalloc without looking at the threshold.
const _: () = assert!(mi::MI_SMALL_SIZE_MAX < MIN_THRESHOLD);

const UNCONFIGURED: u8 = 0;
const CONFIGURING: u8 = 1;
const CONFIGURED: u8 = 2;
const STARTING: u8 = 3;
const READY: u8 = 4;
const LOCAL: u8 = 5;
const CHILD: u8 = 6;

/// Why far memory could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A `FARMEM_*` variable is malformed.
    #[error(transparent)]
    Config(#[from] farmem_memd::config::ConfigError),
    /// No server is configured.
    #[error("FARMEM_SERVER is not set (run the program under `farmem run`, or point FARMEM_SERVER at a memd)")]
    NoServer,
    /// The server could not be reached or refused us.
    #[error("cannot reach memd: {0}")]
    Store(#[from] farmem_memd::StoreError),
    /// The paging region could not be set up.
    #[error("cannot set up the far region: {0}")]
    Region(String),
}

/// What a start function returns: the span to allocate from and how many live bytes it may hold.
pub type Started = (Box<dyn Backing>, usize);

/// Starts far memory. Runs once, on the first allocation at or above the threshold, with the thread marked
/// internal: everything it allocates is local.
pub type StartFn = fn(&AllocConfig) -> Result<Started, StartError>;

/// A global allocator that places allocations of at least `FARMEM_THRESHOLD` bytes in far memory and every
/// other one in mimalloc.
///
/// ```no_run
/// #[global_allocator]
/// static A: farmem_alloc::FarAlloc = farmem_alloc::FarAlloc::from_env();
///
/// fn main() {
///     let big = vec![0u8; 64 << 20]; // in far memory once FARMEM_SERVER names a memd
///     assert_eq!(big.len(), 64 << 20);
/// }
/// ```
///
/// Nothing happens until the first large allocation: then the configuration is read and far memory started.
/// If that fails, one line on stderr says why and every allocation is served locally (`FARMEM_REQUIRED=1`
/// makes it fatal instead). Besides [`GlobalAlloc`], FarAlloc offers the C malloc family with glibc's
/// semantics ([`FarAlloc::malloc`] …), which the preload shim exports.
#[repr(C, align(64))]
pub struct FarAlloc {
    // The three words `malloc` and `free` read come first, so they share one cache line (the struct is
    // 64-aligned and `repr(C)` keeps this order).
    /// Smallest size placed in far memory (`usize::MAX`: none).
    threshold: AtomicUsize,
    /// The far region is `[lo, hi)`; both are `usize::MAX` until it exists. Written once, `hi` first and `lo`
    /// last with Release, so a thread whose Acquire load of `lo` sees the region also sees its `hi`.
    lo: AtomicUsize,
    hi: AtomicUsize,
    state: AtomicU8,
    heap: OnceLock<Heap>,
    cfg: OnceLock<AllocConfig>,
    start: StartFn,
    fixed_threshold: usize,
}

impl fmt::Debug for FarAlloc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FarAlloc")
            .field("state", &self.state.load(Ordering::Relaxed))
            .field("threshold", &self.threshold.load(Ordering::Relaxed))
            .field("heap", &self.heap.get())
            .finish_non_exhaustive()
    }
}

/// Runs `f`; a panic inside it aborts the process instead of unwinding into the allocator's caller (a global
/// allocator must not unwind, and the shim's callers are C). The panic message is printed first by the hook.
#[inline]
fn no_unwind<R>(f: impl FnOnce() -> R) -> R {
    struct Abort;
    impl Drop for Abort {
        fn drop(&mut self) {
            std::process::abort();
        }
    }
    let guard = Abort;
    let r = f();
    std::mem::forget(guard);
    r
}

fn set_errno(e: i32) {
    // SAFETY: __errno_location returns this thread's errno slot, always valid to write.
    unsafe { *libc::__errno_location() = e };
}

/// Keeps mimalloc from backing the local heap with transparent huge pages, unless `MIMALLOC_ALLOW_THP` asks for
/// them. mimalloc v2 reserves its arenas with `MADV_HUGEPAGE`, and every thread's heap starts in a segment of its
/// own, so the first small block a thread allocates makes the kernel fault in a whole 2 MiB page: a program of 32
/// threads held 64 MiB of huge pages for 64 KiB of blocks (4 MiB under glibc's malloc). Far memory exists to keep
/// the local footprint small, so FarAlloc gives that up for the huge pages' shorter page walks.
///
/// mimalloc's own `allow_thp = 0` is not used as it stands: set before mimalloc initialises, it turns huge pages
/// off for the whole process (`PR_SET_THP_DISABLE`, inherited by children and kept across `exec`), which would
/// take them from the program's own mappings too. So mimalloc is initialised first, the option then only stops
/// it from advising new arenas, and the arenas it reserved already are advised `MADV_NOHUGEPAGE` (huge pages
/// already faulted in stay; every later fault there takes a 4 KiB page). An arena another thread reserves while
/// this runs may keep its advice; configuration runs at load time in the shim, before the program's threads.
fn local_heap_without_thp() {
    // libc's getenv, not std's: std's copies a value it finds, and an allocation here can be the process's first
    // (the shim configures from a load-time constructor), which would change where mimalloc puts its first heap.
    // SAFETY: the name is NUL-terminated; the result is only compared with null.
    if !unsafe { libc::getenv(c"MIMALLOC_ALLOW_THP".as_ptr()) }.is_null() {
        return;
    }
    // SAFETY: mi_process_init may be called at any time and runs once; setting an option is allowed at any time.
    unsafe {
        mi::mi_process_init();
        mi::mi_option_set(MI_OPTION_ALLOW_THP, 0);
    }
    for id in 1..=MI_MAX_ARENAS {
        let mut len = 0usize;
        // SAFETY: mi_arena_area only reads mimalloc's arena table and writes the length through the valid pointer.
        let start = unsafe { mi_arena_area(id, &raw mut len) };
        if start.is_null() || len == 0 {
            continue;
        }
        // SAFETY: the range is one of mimalloc's own anonymous mappings; MADV_NOHUGEPAGE changes only which page
        // size later faults in it get, never its contents or its mapping.
        if unsafe { libc::madvise(start, len, libc::MADV_NOHUGEPAGE) } != 0 {
            tracing::debug!(id, len, "madvise(MADV_NOHUGEPAGE) on a mimalloc arena failed");
        }
    }
}

fn local_alloc(size: usize, align: usize, zero: bool) -> *mut u8 {
    // SAFETY: mimalloc's allocation functions accept any size and power-of-two alignment; they return null or
    // a fresh block.
    let p = unsafe {
        match (align <= MI_ALIGN, zero) {
            (true, false) => mi::mi_malloc(size),
            (true, true) => mi::mi_zalloc(size),
            (false, false) => mi::mi_malloc_aligned(size, align),
            (false, true) => mi::mi_zalloc_aligned(size, align),
        }
    };
    if p.is_null() {
        set_errno(libc::ENOMEM);
    }
    p.cast()
}

const MAX_INSTANCES: usize = 8;
static INSTANCES: [AtomicPtr<FarAlloc>; MAX_INSTANCES] = [const { AtomicPtr::new(ptr::null_mut()) }; MAX_INSTANCES];
static ATFORK: Once = Once::new();

fn for_each_instance(mut f: impl FnMut(&'static FarAlloc)) {
    for slot in &INSTANCES {
        let p = slot.load(Ordering::Acquire);
        // SAFETY: only `'static` FarAllocs are registered (see `register`), so a non-null slot is valid.
        if let Some(a) = unsafe { p.as_ref() } {
            f(a);
        }
    }
}

extern "C" fn atfork_prepare() {
    for_each_instance(|a| {
        if let Some(h) = a.heap.get() {
            h.fork_lock();
        }
    });
}

extern "C" fn atfork_parent() {
    // atfork_prepare took the locks on this thread just before fork.
    Heap::fork_unlock();
}

extern "C" fn atfork_child() {
    // The child's only thread is a copy of the one that took the locks in atfork_prepare.
    Heap::fork_unlock();
    for_each_instance(|a| {
        if a.heap.get().is_some() {
            a.enter_child();
        }
    });
}

/// A private duplicate of the process's stderr and the device and inode of the file it was taken on, set when
/// the exit summary is registered. The summary is printed by an `atexit` handler registered at start-up, so it
/// runs after the program's own, and programs close stderr in theirs (coreutils' `close_stdout`, for one). A
/// program that closes every descriptor and opens files of its own may be given the duplicate's number for one
/// of them: the summary goes there only while the number still refers to the file it was taken on.
static SUMMARY_FD: OnceLock<(c_int, (u64, u64))> = OnceLock::new();

/// Device and inode of the file open on `fd`, if it is open.
fn file_id(fd: c_int) -> Option<(u64, u64)> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a whole stat into the valid buffer, or fails and writes nothing we read.
    if unsafe { libc::fstat(fd, st.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: fstat succeeded, so the buffer is initialised.
    let st = unsafe { st.assume_init() };
    Some((st.st_dev, st.st_ino))
}

/// Set by `farmem run` to its own pid in the command's environment, so that the exit summary can tell the
/// command it started from the processes that command starts in turn.
pub const RUN_PID_VAR: &str = "FARMEM_RUN_PID";

/// Whether a process that never started far memory should still say so at exit: yes unless `farmem run` started
/// it indirectly. `farmem run --stats -- make` should not print one line per compiler, shell and helper that
/// allocated nothing large; the command itself still explains an empty summary.
fn reports_unused() -> bool {
    let Some(run) = std::env::var(RUN_PID_VAR).ok().and_then(|v| v.trim().parse::<i32>().ok()) else { return true };
    // SAFETY: getppid has no preconditions.
    unsafe { libc::getppid() == run }
}

extern "C" fn stats_at_exit() {
    for_each_instance(|a| {
        if a.cfg.get().is_some_and(|c| c.stats) && a.state.load(Ordering::Acquire) != CHILD {
            let _in = internal::enter();
            if a.heap.get().is_none() && !reports_unused() {
                return;
            }
            let text = a.summary();
            let written = SUMMARY_FD.get().filter(|&&(fd, id)| file_id(fd) == Some(id)).is_some_and(|&(fd, _)| {
                // SAFETY: fd is our duplicate, still open (fstat just found it); ManuallyDrop leaves it open.
                let mut f = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
                f.write_all(text.as_bytes()).is_ok()
            });
            if !written {
                eprint!("{text}");
            }
        }
    });
}

impl FarAlloc {
    /// Byte offset, inside a FarAlloc, of the far region's start address: an `AtomicUsize` that is
    /// `usize::MAX` until far memory runs and is written once (with Release) when it starts. Every block at a
    /// lower address is mimalloc's, so code that routes `free` itself (the preload shim's, in assembly) may send
    /// such a pointer to `mi_free` after one compare, and must send any other to [`FarAlloc::free`].
    pub const REGION_START_OFFSET: usize = std::mem::offset_of!(FarAlloc, lo);
    /// Byte offset, inside a FarAlloc, of the threshold in force: an `AtomicUsize` (read Relaxed) below which
    /// every size is served by `mi_malloc`, so code that routes `malloc` itself may do so after one compare.
    pub const THRESHOLD_OFFSET: usize = std::mem::offset_of!(FarAlloc, threshold);

    /// A FarAlloc configured from `FARMEM_*` variables, backed by a uffd region on the memd at
    /// `FARMEM_SERVER`. Const, for `#[global_allocator]`.
    pub const fn from_env() -> FarAlloc {
        FarAlloc::with_start(crate::start::start_from_env, 0)
    }

    /// A FarAlloc whose far memory comes from `start`, with a fixed `threshold` (at least 4 KiB; `0` reads
    /// `FARMEM_THRESHOLD` and the other variables as [`FarAlloc::from_env`] does). For tests and embedders.
    pub const fn with_start(start: StartFn, threshold: usize) -> FarAlloc {
        FarAlloc {
            threshold: AtomicUsize::new(MIN_THRESHOLD),
            lo: AtomicUsize::new(usize::MAX),
            hi: AtomicUsize::new(usize::MAX),
            state: AtomicU8::new(UNCONFIGURED),
            heap: OnceLock::new(),
            cfg: OnceLock::new(),
            start,
            fixed_threshold: threshold,
        }
    }

    /// Serves everything from local memory from now on (if far memory has not started). Returns whether far
    /// memory is now off: false means it is already running.
    pub fn set_local_only(&self) -> bool {
        for s in [UNCONFIGURED, CONFIGURED] {
            if self.state.compare_exchange(s, LOCAL, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                self.threshold.store(usize::MAX, Ordering::Relaxed);
                return true;
            }
        }
        matches!(self.state.load(Ordering::Acquire), LOCAL | CHILD)
    }

    /// Whether far memory is running.
    pub fn is_started(&self) -> bool {
        self.state.load(Ordering::Acquire) == READY
    }

    /// Starts far memory now instead of at the first large allocation (reads the configuration first).
    /// Returns whether it runs.
    pub fn start_now(&self) -> bool {
        let t = self.threshold();
        if t != usize::MAX {
            let p = self.far_alloc(t, PAGE);
            if let Some(p) = p {
                // SAFETY: p was just allocated from the far heap.
                unsafe { self.free(p.cast()) };
            }
        }
        self.is_started()
    }

    /// The threshold in force (reads the configuration if that has not happened yet); `usize::MAX` when
    /// serving locally only.
    pub fn threshold(&self) -> usize {
        while matches!(self.state.load(Ordering::Acquire), UNCONFIGURED | CONFIGURING) {
            if self.state.compare_exchange(UNCONFIGURED, CONFIGURING, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                self.configure();
            } else {
                std::thread::yield_now();
            }
        }
        self.threshold.load(Ordering::Relaxed)
    }

    /// Whether `p` lies in far memory: `lo <= p < hi`. The first compare alone settles every pointer below
    /// the region, which is where mimalloc's memory lies on Linux (it places its arenas at hinted addresses
    /// from 2 TiB up, while an unhinted `mmap` such as the region's lands near the top of the address space,
    /// ~127 TiB) and every pointer while far memory is not running (`lo` is `usize::MAX`).
    #[inline]
    pub fn is_far(&self, p: *const c_void) -> bool {
        let a = p as usize;
        a >= self.lo.load(Ordering::Acquire) && a < self.hi.load(Ordering::Relaxed)
    }

    /// Far-heap counters, once far memory has started.
    pub fn heap_stats(&self) -> Option<HeapStats> {
        self.heap.get().map(Heap::stats)
    }

    /// Paging counters, once far memory has started.
    pub fn paging_stats(&self) -> Option<PagingStats> {
        self.heap.get().map(Heap::paging_stats)
    }

    /// The summary `FARMEM_STATS=1` prints at exit.
    pub fn summary(&self) -> String {
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        match (self.heap_stats(), self.paging_stats()) {
            (Some(h), Some(p)) => format!(
                "farmem: far bytes allocated {} ({:.1} MiB in {} allocations, peak live {:.1} MiB, {} served \
                 locally when far memory was full)\nfarmem: faults {}, fetched {:.1} MB, written back {:.1} MB, \
                 peak local resident {:.1} MB\n",
                h.bytes_allocated,
                mib(h.bytes_allocated),
                h.allocations,
                mib(h.peak_live_bytes),
                h.fallbacks,
                p.faults,
                mib(p.bytes_fetched),
                mib(p.bytes_written_back),
                mib(p.peak_resident),
            ),
            _ => "farmem: far memory was not used (no allocation reached the threshold, or it did not start)\n"
                .to_string(),
        }
    }

    fn fail(&self, msg: &str, required: bool) {
        if required {
            eprintln!("farmem: far memory is required (FARMEM_REQUIRED=1) but could not start: {msg}");
            // SAFETY: _exit ends the process at once; nothing runs after it.
            unsafe { libc::_exit(1) };
        }
        eprintln!("farmem: far memory is off, serving every allocation from local memory: {msg}");
        self.threshold.store(usize::MAX, Ordering::Relaxed);
        self.state.store(LOCAL, Ordering::Release);
    }

    fn configure(&self) {
        let _in = internal::enter();
        FarAlloc::install_errno_handler();
        local_heap_without_thp();
        let cfg = if self.fixed_threshold != 0 {
            Ok(AllocConfig { threshold: self.fixed_threshold.max(MIN_THRESHOLD), ..AllocConfig::default() })
        } else {
            AllocConfig::from_env()
        };
        match cfg {
            Ok(cfg) => {
                let t = cfg.threshold;
                let stats = cfg.stats;
                let _ = self.cfg.set(cfg);
                if stats {
                    self.register();
                }
                self.threshold.store(t, Ordering::Relaxed);
                self.state.store(CONFIGURED, Ordering::Release);
            }
            Err(e) => self.fail(&e.to_string(), AllocConfig::required_from_env()),
        }
    }

    fn start_far(&self) {
        let _in = internal::enter();
        let Some(cfg) = self.cfg.get() else { return self.fail("configuration missing", false) };
        debug_assert!(internal::is_internal(), "StartFn contract: runs with the thread marked internal");
        match (self.start)(cfg) {
            Ok((backing, limit)) => {
                let heap = Heap::new(backing, limit);
                let (lo, hi) = heap.bounds();
                if self.heap.set(heap).is_err() {
                    return self.fail("far memory started twice", cfg.required);
                }
                self.register();
                if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
                    // SAFETY: setting a mimalloc option is allowed at any time.
                    unsafe { mi::mi_option_set(MI_OPTION_PURGE_DELAY, FAR_PURGE_DELAY_MS) };
                }
                // `hi` first: a thread that sees the new `lo` (Acquire) sees `hi` too; one that sees only `hi`
                // still finds the range empty (`lo` is usize::MAX).
                self.hi.store(hi, Ordering::Relaxed);
                self.lo.store(lo, Ordering::Release);
                self.state.store(READY, Ordering::Release);
                tracing::debug!(lo, hi, threshold = cfg.threshold, "far memory started");
            }
            Err(e) => self.fail(&e.to_string(), cfg.required),
        }
    }

    /// Registers this instance for the atfork handlers and the exit summary. Instances are `'static`: every
    /// FarAlloc that reaches here is a global allocator or a test's static (FarAlloc is not Clone and every
    /// method that starts far memory is reached through `&'static self` in practice); a FarAlloc on the stack
    /// must not start far memory.
    fn register(&self) {
        let me = self as *const FarAlloc as *mut FarAlloc;
        let mut present = false;
        for_each_instance(|a| present |= ptr::eq(a, me));
        if !present {
            for slot in &INSTANCES {
                if slot.compare_exchange(ptr::null_mut(), me, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    break;
                }
            }
        }
        ATFORK.call_once(|| {
            // SAFETY: the handlers are plain extern "C" functions that live as long as the process.
            unsafe {
                libc::pthread_atfork(Some(atfork_prepare), Some(atfork_parent), Some(atfork_child));
                libc::atexit(stats_at_exit);
            }
            if self.cfg.get().is_some_and(|c| c.stats) {
                // Above the descriptors programs number by hand, closed on exec (the new image's shim takes its
                // own). It keeps the stderr pipe open while the program runs, which only `--stats` asks for.
                // SAFETY: F_DUPFD_CLOEXEC duplicates descriptor 2 (or fails, leaving -1); nothing else is passed.
                let fd = unsafe { libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 100) };
                match file_id(fd) {
                    Some(id) => {
                        let _ = SUMMARY_FD.set((fd, id));
                    }
                    // SAFETY: fd, if valid, is the duplicate just made and used nowhere else.
                    None if fd >= 0 => unsafe {
                        libc::close(fd);
                    },
                    None => {}
                }
            }
        });
    }

    /// In a forked child: the region's threads do not exist here, so new blocks are local; freeing a far block
    /// still works (the backing drops the child's pages only).
    fn enter_child(&self) {
        self.threshold.store(usize::MAX, Ordering::Relaxed);
        self.state.store(CHILD, Ordering::Release);
    }

    /// A far block of `size` bytes aligned to `align`, zeroed; `None` when far memory cannot serve it (then
    /// the caller serves it locally).
    fn far_alloc(&self, size: usize, align: usize) -> Option<*mut u8> {
        if internal::is_internal() {
            return None;
        }
        no_unwind(|| self.far_alloc_inner(size, align))
    }

    fn far_alloc_inner(&self, size: usize, align: usize) -> Option<*mut u8> {
        loop {
            match self.state.load(Ordering::Acquire) {
                READY => {
                    return if size >= self.threshold.load(Ordering::Relaxed) {
                        self.heap.get()?.alloc(size, align)
                    } else {
                        None
                    }
                }
                UNCONFIGURED
                    if self
                        .state
                        .compare_exchange(UNCONFIGURED, CONFIGURING, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok() =>
                {
                    self.configure();
                }
                CONFIGURED => {
                    if size < self.threshold.load(Ordering::Relaxed) {
                        return None;
                    }
                    if self.state.compare_exchange(CONFIGURED, STARTING, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                        self.start_far();
                    } else {
                        return None;
                    }
                }
                _ => return None,
            }
        }
    }

    fn alloc_aligned(&self, size: usize, align: usize, zero: bool) -> *mut u8 {
        if size >= self.threshold.load(Ordering::Relaxed) {
            if let Some(p) = self.far_alloc(size, align.max(MI_ALIGN)) {
                return p;
            }
        }
        local_alloc(size, align, zero)
    }

    fn far_heap(&self) -> &Heap {
        self.heap.get().expect("a far pointer exists only once the heap does")
    }

    fn bad_pointer(&self, what: &str, p: *const c_void) -> ! {
        eprintln!("farmem: {what}(): {p:p} is not the start of a far block");
        std::process::abort()
    }

    /// `extern "C"` (so it cannot unwind) lets `free` tail-call it without a frame of its own; the block comes
    /// first so the caller's argument register stays where it is.
    #[cold]
    extern "C" fn far_free(p: *mut u8, this: &FarAlloc) {
        no_unwind(|| {
            if !this.far_heap().free(p) {
                this.bad_pointer("free", p.cast());
            }
        })
    }

    fn far_usable(&self, p: *mut u8) -> usize {
        no_unwind(|| match self.far_heap().usable_size(p) {
            Some(n) => n,
            None => self.bad_pointer("malloc_usable_size", p.cast()),
        })
    }

    // ---- the malloc family -------------------------------------------------------------------------------

    /// `malloc`: a block of at least `size` bytes suitably aligned for any object of that size, or null
    /// with `errno = ENOMEM` (below the threshold, mimalloc sets errno through the handler that
    /// [`FarAlloc::install_errno_handler`] installs, which keeps this path a tail call).
    ///
    /// The common case costs one compare more than mimalloc's own `malloc`: sizes up to
    /// [`mi::MI_SMALL_SIZE_MAX`] (1 KiB, always below the threshold, which is at least 4 KiB) go straight to
    /// `mi_malloc_small`, which is `mi_malloc` without its size test.
    #[inline]
    pub fn malloc(&self, size: usize) -> *mut c_void {
        if size <= mi::MI_SMALL_SIZE_MAX {
            // SAFETY: mi_malloc_small accepts any size up to MI_SMALL_SIZE_MAX.
            return unsafe { mi::mi_malloc_small(size) };
        }
        if size < self.threshold.load(Ordering::Relaxed) {
            // SAFETY: mi_malloc accepts any size.
            return unsafe { mi::mi_malloc(size) };
        }
        FarAlloc::malloc_large(size, self)
    }

    /// `extern "C"` (so it cannot unwind) lets `malloc` tail-call it without a frame of its own; the size comes
    /// first so the caller's argument register stays where it is.
    #[cold]
    extern "C" fn malloc_large(size: usize, this: &FarAlloc) -> *mut c_void {
        this.alloc_aligned(size, MI_ALIGN, false).cast()
    }

    /// Makes mimalloc set `errno = ENOMEM` when an allocation fails (it reports failures through its error
    /// handler only). The preload shim calls this at load time; FarAlloc calls it when it reads its
    /// configuration.
    pub fn install_errno_handler() {
        unsafe extern "C" fn on_error(err: std::ffi::c_int, _arg: *mut c_void) {
            if err == libc::ENOMEM || err == libc::EOVERFLOW {
                set_errno(libc::ENOMEM);
            }
        }
        // SAFETY: registers a plain function that lives as long as the process.
        unsafe { mi::mi_register_error(Some(on_error), ptr::null_mut()) };
    }

    /// `calloc`: `nmemb * size` zeroed bytes; null with `ENOMEM` on overflow or exhaustion. The threshold
    /// applies to the product.
    pub fn calloc(&self, nmemb: usize, size: usize) -> *mut c_void {
        let Some(total) = nmemb.checked_mul(size) else {
            set_errno(libc::ENOMEM);
            return ptr::null_mut();
        };
        self.alloc_aligned(total, MI_ALIGN, true).cast()
    }

    /// `free`; null is ignored.
    ///
    /// # Safety
    /// `p` is null or a live block from this allocator (any function of the family), not freed before.
    ///
    /// The common case costs two instructions more than mimalloc's own `free` (a compare with the region's
    /// start and a tail jump; see [`FarAlloc::is_far`]).
    #[inline]
    pub unsafe fn free(&self, p: *mut c_void) {
        if self.is_far(p) {
            FarAlloc::far_free(p.cast(), self);
        } else {
            // SAFETY: p is null (mi_free ignores it) or not far, so by the caller's contract it came from
            // mimalloc.
            unsafe { mi::mi_free(p) };
        }
    }

    /// `malloc_usable_size`: how many bytes the block at `p` can hold (0 for null).
    ///
    /// # Safety
    /// `p` is null or a live block from this allocator.
    pub unsafe fn usable_size(&self, p: *mut c_void) -> usize {
        if self.is_far(p) {
            self.far_usable(p.cast())
        } else if p.is_null() {
            0
        } else {
            // SAFETY: p is a live mimalloc block, per the caller's contract.
            unsafe { mi::mi_usable_size(p) }
        }
    }

    /// `realloc` with glibc's semantics: null `p` is `malloc(size)`; `size == 0` frees `p` and returns null;
    /// on failure `p` is untouched and null is returned with `ENOMEM`. Blocks move between mimalloc and far
    /// memory when `size` crosses the threshold, in either direction.
    ///
    /// # Safety
    /// `p` is null or a live block from this allocator.
    pub unsafe fn realloc(&self, p: *mut c_void, size: usize) -> *mut c_void {
        if p.is_null() {
            return self.malloc(size);
        }
        if size == 0 {
            // SAFETY: forwarded contract.
            unsafe { self.free(p) };
            return ptr::null_mut();
        }
        // SAFETY: forwarded contract; every block of the family is aligned to at least MI_ALIGN.
        unsafe { self.realloc_aligned(p, MI_ALIGN, size) }
    }

    /// Resizes `p` to `size` (> 0) keeping alignment `align`.
    ///
    /// # Safety
    /// `p` is a live block from this allocator aligned to `align`.
    unsafe fn realloc_aligned(&self, p: *mut c_void, align: usize, size: usize) -> *mut c_void {
        let threshold = self.threshold.load(Ordering::Relaxed);
        let far = self.is_far(p);
        let old = if far {
            let n = self.far_usable(p.cast());
            if size >= threshold && no_unwind(|| self.far_heap().resize_in_place(p.cast(), size)) {
                return p;
            }
            n
        } else {
            if size < threshold || internal::is_internal() {
                // SAFETY: p is a live mimalloc block aligned to `align`, per the caller's contract.
                let q = unsafe {
                    if align <= MI_ALIGN {
                        mi::mi_realloc(p, size)
                    } else {
                        mi::mi_realloc_aligned(p, size, align)
                    }
                };
                if q.is_null() {
                    set_errno(libc::ENOMEM);
                }
                return q;
            }
            // SAFETY: p is a live mimalloc block.
            unsafe { mi::mi_usable_size(p) }
        };
        let q = self.alloc_aligned(size, align, false);
        if q.is_null() {
            return ptr::null_mut();
        }
        // SAFETY: p holds `old` readable bytes, q holds at least `size` writable ones; they are distinct
        // live blocks, so they do not overlap.
        unsafe { ptr::copy_nonoverlapping(p.cast::<u8>(), q, old.min(size)) };
        // SAFETY: p is live and no longer used.
        unsafe { self.free(p) };
        q.cast()
    }

    /// `reallocarray`: `realloc(p, nmemb * size)` with the product checked (null and `ENOMEM` on overflow).
    ///
    /// # Safety
    /// `p` is null or a live block from this allocator.
    pub unsafe fn reallocarray(&self, p: *mut c_void, nmemb: usize, size: usize) -> *mut c_void {
        match nmemb.checked_mul(size) {
            // SAFETY: forwarded contract.
            Some(total) => unsafe { self.realloc(p, total) },
            None => {
                set_errno(libc::ENOMEM);
                ptr::null_mut()
            }
        }
    }

    /// `posix_memalign`: `align` must be a power of two and a multiple of `sizeof(void *)` (else `EINVAL`);
    /// returns 0 and stores the block in `*out`, or `ENOMEM` leaving `*out` untouched.
    ///
    /// # Safety
    /// `out` is valid for a pointer write.
    pub unsafe fn posix_memalign(&self, out: *mut *mut c_void, align: usize, size: usize) -> i32 {
        if !align.is_power_of_two() || !align.is_multiple_of(std::mem::size_of::<*mut c_void>()) {
            return libc::EINVAL;
        }
        let saved = errno();
        let p = self.alloc_aligned(size, align, false);
        if p.is_null() {
            set_errno(saved);
            return libc::ENOMEM;
        }
        // SAFETY: the caller guarantees `out` is writable.
        unsafe { *out = p.cast() };
        0
    }

    /// `aligned_alloc`: `align` must be a power of two (else null with `EINVAL`).
    pub fn aligned_alloc(&self, align: usize, size: usize) -> *mut c_void {
        if !align.is_power_of_two() {
            set_errno(libc::EINVAL);
            return ptr::null_mut();
        }
        self.alloc_aligned(size, align, false).cast()
    }

    /// `memalign` as glibc has it: an alignment that is not a power of two is rounded up to one; one above
    /// `SIZE_MAX / 2 + 1` is `EINVAL`.
    pub fn memalign(&self, align: usize, size: usize) -> *mut c_void {
        match align.max(1).checked_next_power_of_two() {
            Some(a) => self.alloc_aligned(size, a, false).cast(),
            None => {
                set_errno(libc::EINVAL);
                ptr::null_mut()
            }
        }
    }

    /// `valloc`: page-aligned.
    pub fn valloc(&self, size: usize) -> *mut c_void {
        self.alloc_aligned(size, PAGE, false).cast()
    }

    /// `pvalloc`: page-aligned, size rounded up to whole pages (`ENOMEM` on overflow).
    pub fn pvalloc(&self, size: usize) -> *mut c_void {
        match crate::range::align_up(size, PAGE) {
            Some(n) => self.alloc_aligned(n.max(PAGE), PAGE, false).cast(),
            None => {
                set_errno(libc::ENOMEM);
                ptr::null_mut()
            }
        }
    }
}

fn errno() -> i32 {
    // SAFETY: __errno_location returns this thread's errno slot, always valid to read.
    unsafe { *libc::__errno_location() }
}

// SAFETY: every block comes from mimalloc (which honours size and alignment) or from the far heap (whole pages
// at an offset aligned to max(align, 4096) from a page-aligned base; requests whose alignment the base cannot
// give are served by mimalloc); `free` routes each block back to where it came from by address.
unsafe impl GlobalAlloc for FarAlloc {
    #[inline]
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if l.align() <= MI_ALIGN {
            self.malloc(l.size()).cast()
        } else {
            self.alloc_aligned(l.size(), l.align(), false)
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        self.alloc_aligned(l.size(), l.align(), true)
    }

    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, _l: Layout) {
        // SAFETY: GlobalAlloc's contract: p was allocated by this allocator and is live.
        unsafe { self.free(p.cast()) }
    }

    #[inline]
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: GlobalAlloc's contract: p is live, allocated with layout l (so aligned to l.align()), and
        // new_size > 0.
        unsafe { self.realloc_aligned(p.cast(), l.align(), new_size).cast() }
    }
}
