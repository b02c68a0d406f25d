//! The region: reservation, registration, the event thread, the eviction threads, release and statistics.
//!
//! See the crate documentation for the design; this module's comments explain the invariants the code keeps.
//!
//! # Safety
//! The only unsafe code here reads region pages during write-back (after they are write-protected and marked
//! evicting, so the region code owns them) and uses libc for eventfd and poll on descriptors this module owns.

use crate::affinity::{self, Follower};
use crate::awake::KeepAwake;
use crate::mem::{Mapping, Table};
use crate::raw::{self, Msg, RawError, Uffd};
use crate::readahead::Detector;
use crate::{as_u64, as_usize, PAGE_SIZE};
use farmem_memd::config::{self, ConfigError};
use farmem_memd::internal;
use farmem_memd::proto::Reply;
use farmem_memd::{FarStore, Pending, Request, StoreError};
use parking_lot::{Condvar, Mutex};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const PS: u64 = PAGE_SIZE as u64;

/// Logs through `tracing`, at most [`LOG_BURST`] messages a second from the fault and eviction paths; how many
/// were suppressed is reported with the next message let through.
macro_rules! limited {
    ($lvl:ident, $($arg:tt)+) => {
        if let Some(suppressed) = log_gate() {
            if suppressed > 0 {
                tracing::warn!(suppressed, "farmem-uffd: messages suppressed by rate limiting");
            }
            tracing::$lvl!($($arg)+);
        }
    };
}

/// Messages a second the fault and eviction paths may log.
const LOG_BURST: u64 = 10;

/// Admits a message (returning how many were suppressed since the last one admitted) or suppresses it.
fn log_gate() -> Option<u64> {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    static WINDOW: AtomicU64 = AtomicU64::new(0);
    static COUNT: AtomicU64 = AtomicU64::new(0);
    static SUPPRESSED: AtomicU64 = AtomicU64::new(0);
    let secs = START.get_or_init(Instant::now).elapsed().as_secs() + 1;
    let w = WINDOW.load(Relaxed);
    if w != secs && WINDOW.compare_exchange(w, secs, Relaxed, Relaxed).is_ok() {
        COUNT.store(0, Relaxed);
    }
    if COUNT.fetch_add(1, Relaxed) < LOG_BURST {
        Some(SUPPRESSED.swap(0, Relaxed))
    } else {
        SUPPRESSED.fetch_add(1, Relaxed);
        None
    }
}

// Per-page state byte: a location in the low two bits and flags above.
/// Not mapped locally.
const ABSENT: u8 = 0;
/// Mapped locally.
const PRESENT: u8 = 1;
/// Being installed by the event thread (holds a frame).
const FETCHING: u8 = 2;
/// Being evicted by an eviction thread (holds a frame, still mapped until its `MADV_DONTNEED`).
const EVICTING: u8 = 3;
const LOC: u8 = 0b11;
/// memd holds this page's contents (for an absent page) or the contents it had when mapped clean.
const REMOTE: u8 = 1 << 2;
/// Mapped writable: local contents differ from memd (or memd has none).
const DIRTY: u8 = 1 << 3;
/// CLOCK reference bit.
const REF: u8 = 1 << 4;
/// Released while fetching or evicting: the page must end up absent, with no remote copy.
const RELEASED: u8 = 1 << 5;
/// A dirty page being evicted in place (write-protect, copy, `MADV_DONTNEED`) that the eviction thread may still
/// read for its write-back; cleared, under `core`, before the page is dropped.
const INPLACE: u8 = 1 << 6;
/// A readahead trigger: held by the event thread unmapped (from its request on) until the program touches it.
const STAGED: u8 = 1 << 7;
/// Most trigger pages held at once (one per live stream, and then some).
const MAX_STAGED: usize = 16;

/// Pages per read or write request.
const IO_CHUNK: usize = 64;
/// Most pages one eviction round takes.
const EVICT_BATCH: usize = 512;
/// Default of [`RegionConfig::clean_drop_run`]. Measured with the paired benchmarks: dropping every clean victim
/// in place cost random faults ~3.5 µs more CPU in the eviction thread and ~4.5 µs more in the event thread
/// (one REMOVE event per scattered page), while a sequential scan's runs average ~180 pages.
const INPLACE_RUN: usize = 16;
/// Default of [`RegionConfig::spin`].
const SPIN: Duration = Duration::from_micros(50);
/// Default of [`RegionConfig::reply_spin`].
const REPLY_SPIN: Duration = Duration::from_micros(100);
/// Retries of a failed store call that is not "gone for good", with exponential back-off from 1 ms.
const STORE_RETRIES: u32 = 5;

/// Region configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionConfig {
    /// Virtual bytes to reserve (`FARMEM_REGION_SIZE`, default 64 GiB); rounded up to whole pages.
    pub size: usize,
    /// Local-memory budget in bytes (`FARMEM_LOCAL_MEM`, default 25% of RAM): resident pages never exceed it.
    pub local_mem: usize,
    /// Threads serving the region: one event thread (reads every userfaultfd event and installs every page)
    /// plus `handler_threads - 1` eviction threads, at least one. Must be at least 1.
    pub handler_threads: usize,
    /// Whether sequential and strided fault streams are fetched ahead (`FARMEM_READAHEAD`, default on).
    pub readahead: bool,
    /// Whether a stream that writes what it reads gets its read-ahead windows and demand reads mapped writable and
    /// dirty at once, instead of write-protected with a write-protect fault on each first write
    /// (`FARMEM_WRITE_AHEAD`, default on; see [`crate::readahead`]). A page mapped so and then left unwritten is
    /// written back at eviction like a dirty one. A read-modify-write sweep 4x the budget ran 5.3-5.7x faster
    /// with it on a quiet machine and 3.3x on a loaded one (`REGION_PAIRED=rewrite` region bench: write-protect
    /// faults per 1000 pages 998 -> 0.1, pages written back unchanged).
    pub write_ahead: bool,
    /// Largest readahead window in pages (default 512 = 2 MiB; a window never takes more than the free frames
    /// above the eviction reserve). Paired scan rounds: 512 gave 0.33-0.43x of the raw stream where 256 gave
    /// 0.32-0.35x, and half the missing faults per page (the program waits on in-flight pages less often).
    pub max_readahead: usize,
    /// Record the page of every missing fault (see [`Region::fault_trace`]); off by default.
    pub trace: bool,
    /// How long the event thread keeps polling for the next event before it sleeps (default 50 µs): a fault
    /// that arrives meanwhile skips a thread wake-up, at the price of CPU time on a busy machine.
    pub spin: Duration,
    /// How long the event thread polls memd's connection for the reply to a demand fetch before it sleeps in
    /// `read` (`FARMEM_REPLY_SPIN`, µs; default 100 µs; zero = sleep at once). The faulting thread waits for that
    /// reply, and on a virtual machine waking the event thread from an idle, halted vCPU costs more than a
    /// loopback round trip: a quiet 2-vCPU VM's region fault went from 75-96 µs to 46-53 µs (paired fault rounds,
    /// alternating builds). It spends that CPU time only while a demand fetch is out and only until its reply comes.
    pub reply_spin: Duration,
    /// Evict dirty victims with `UFFDIO_MOVE` where the kernel has it (default); when off, or for a page it
    /// refuses, they are write-protected, copied and dropped in place.
    pub move_eviction: bool,
    /// Shortest run of contiguous clean victims dropped in place (one `MADV_DONTNEED`) rather than moved out with
    /// the dirty ones (default 16; 1 drops every clean victim in place). Each in-place drop raises a REMOVE event
    /// that the eviction thread waits for the event thread to read, while moved pages leave with one drop of the
    /// staging area per round: scattered clean victims (random access) are cheaper moved, the long runs of a
    /// sequential scan cheaper dropped. Without `UFFDIO_MOVE` every victim is dropped in place.
    pub clean_drop_run: usize,
    /// Keep the event and eviction threads on the CPU of the thread that faults, while faults come from one CPU
    /// (default off; see the `affinity` module): a hand-off to a sleeping CPU costs more than the whole fault
    /// on one CPU on a VM. On our 2-vCPU VM it took the paired fault rounds' slow mode away on a busy machine
    /// (slow in 0 of 14 runs against 4 of 14), but on a quiet one it changed nothing (region fault 73-79 µs
    /// either way: memd's worker still runs on the other, idle CPU) and moved the threads ~130 times a run, so
    /// it is not the default.
    pub follow_faults: bool,
    /// How long after each fault the machine's idle CPUs are kept from halting (`FARMEM_KEEP_AWAKE`, in µs;
    /// zero = off): one `SCHED_IDLE` spinner thread per CPU spins that long after the last fault, so a thread the
    /// fault wakes on an idle CPU starts at once instead of waiting for the CPU to wake (see [`crate::awake`]).
    /// Spinners yield to any other thread and sleep while no faults come; the cost is idle CPU time while faults
    /// flow. Off by default; `FARMEM_KEEP_AWAKE=auto` picks [`crate::awake::default_window`] (200 µs on a VM of
    /// at most 16 vCPUs whose idle vCPUs halt without polling, off elsewhere). On our 2-vCPU VM a quiet machine's
    /// region fault went from 70-93 µs to 46-67 µs (paired fault rounds, alternating builds); on a busy one (no
    /// vCPU halts) it costs ~2 µs per fault (26 against 28 µs), and its effect on many-threaded paging beside CPU
    /// hogs is not yet measured, hence not the default.
    pub keep_awake: Duration,
}

impl Default for RegionConfig {
    fn default() -> Self {
        RegionConfig {
            size: 64 << 30,
            local_mem: default_local_mem(),
            handler_threads: 2,
            readahead: true,
            write_ahead: true,
            max_readahead: 512,
            trace: false,
            spin: SPIN,
            reply_spin: REPLY_SPIN,
            move_eviction: true,
            clean_drop_run: INPLACE_RUN,
            follow_faults: false,
            keep_awake: Duration::ZERO,
        }
    }
}

/// A quarter of physical memory (64 MiB if it cannot be learned).
fn default_local_mem() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let (pages, psize) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
    match (usize::try_from(pages), usize::try_from(psize)) {
        (Ok(n), Ok(p)) if n > 0 && p > 0 => n.saturating_mul(p) / 4,
        _ => 64 << 20,
    }
}

impl RegionConfig {
    /// Defaults overridden by `FARMEM_REGION_SIZE`, `FARMEM_LOCAL_MEM`, `FARMEM_READAHEAD`, `FARMEM_WRITE_AHEAD`,
    /// `FARMEM_KEEP_AWAKE` and `FARMEM_REPLY_SPIN` (both µs, `0`/`off`, `auto`); a malformed value is an error
    /// naming the variable.
    pub fn from_env() -> Result<RegionConfig, ConfigError> {
        let mut c = RegionConfig::default();
        let size = |name: &str| -> Result<Option<usize>, ConfigError> {
            config::env_size(name)?
                .map(|v| usize::try_from(v).map_err(|_| ConfigError::new(name, "too large for this machine")))
                .transpose()
        };
        if let Some(v) = size("FARMEM_REGION_SIZE")? {
            c.size = v;
        }
        if let Some(v) = size("FARMEM_LOCAL_MEM")? {
            c.local_mem = v;
        }
        if let Some(v) = config::env_bool("FARMEM_READAHEAD")? {
            c.readahead = v;
        }
        if let Some(v) = config::env_bool("FARMEM_WRITE_AHEAD")? {
            c.write_ahead = v;
        }
        if let Some(d) = env_micros("FARMEM_KEEP_AWAKE", crate::awake::default_window)? {
            c.keep_awake = d;
        }
        if let Some(d) = env_micros("FARMEM_REPLY_SPIN", || REPLY_SPIN)? {
            c.reply_spin = d;
        }
        Ok(c)
    }
}

/// A spin window from the environment: whole µs up to 1 s, `0`/`off` for none, `auto` for `auto()`.
fn env_micros(name: &str, auto: impl Fn() -> Duration) -> Result<Option<Duration>, ConfigError> {
    let Some(v) = config::env_str(name)? else { return Ok(None) };
    let v = v.trim();
    let us: u64 = if v.eq_ignore_ascii_case("off") {
        0
    } else if v.eq_ignore_ascii_case("auto") {
        u64::try_from(auto().as_micros()).unwrap_or(0)
    } else {
        v.parse().map_err(|_| {
            ConfigError::new(
                name,
                format!("{v:?} is not a number of microseconds (a whole number; 0 or off turns it off, auto decides)"),
            )
        })?
    };
    if us > 1_000_000 {
        return Err(ConfigError::new(name, "more than 1000000 µs (1 s) of spinning"));
    }
    Ok(Some(Duration::from_micros(us)))
}

/// Why a region operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    /// The configuration is unusable.
    #[error("invalid region configuration: {0}")]
    Config(String),
    /// A `release` range is not page aligned or not inside the region.
    #[error("invalid release range: {0}")]
    Range(String),
    /// Reserving address space or metadata failed.
    #[error("cannot map {what}: {source}")]
    Map {
        /// What was being mapped.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// A userfaultfd call failed (errno kept). EPERM on `userfaultfd` means the process lacks the privilege
    /// (root, CAP_SYS_PTRACE, `vm.unprivileged_userfaultfd=1`, or access to `/dev/userfaultfd`).
    #[error("userfaultfd: {0}")]
    Uffd(#[from] RawError),
    /// The kernel lacks a userfaultfd feature the region needs.
    #[error("the kernel's userfaultfd lacks {0} (needs Linux 6.6 or later)")]
    Unsupported(String),
    /// A handler thread could not start.
    #[error("cannot start a region thread: {0}")]
    Thread(std::io::Error),
    /// The far store could not take the region (unreachable, refused).
    #[error("far store: {0}")]
    Store(#[from] farmem_memd::StoreError),
}

/// Region counters and fault-latency percentiles.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegionStats {
    /// Missing-page faults received.
    pub missing_faults: u64,
    /// Write-protect faults received (first write to a clean page).
    pub wp_faults: u64,
    /// Pages installed zero-filled (never written, or released).
    pub zero_fills: u64,
    /// Pages fetched from memd on demand.
    pub pages_fetched: u64,
    /// Dirty pages written back to memd.
    pub pages_written: u64,
    /// Clean pages dropped with no traffic.
    pub clean_drops: u64,
    /// Pages fetched ahead of demand.
    pub readahead_pages: u64,
    /// Prefetched pages the program went on to use.
    pub readahead_hits: u64,
    /// Prefetched pages mapped writable (and dirty) because their stream writes what it reads (see
    /// [`crate::readahead`]); included in `readahead_pages`.
    pub readahead_writable: u64,
    /// Pages fetched on demand for a read and mapped writable (and dirty) because their stream writes what it
    /// reads; included in `pages_fetched`.
    pub predicted_writable: u64,
    /// Pages released by `release`, `madvise`, `munmap` or `mremap`.
    pub released_pages: u64,
    /// Faults that waited for eviction to free local memory.
    pub deferred_faults: u64,
    /// Pages poisoned because memd was unreachable.
    pub poisoned_pages: u64,
    /// Evicted pages taken out with `UFFDIO_MOVE`.
    pub evicted_moved: u64,
    /// Evicted pages written-protected and dropped in place (no `UFFDIO_MOVE`, or it refused the page).
    pub evicted_in_place: u64,
    /// Times the event and eviction threads were pinned to the faulting thread's CPU, or unpinned
    /// ([`RegionConfig::follow_faults`]).
    pub cpu_moves: u64,
    /// Spinner threads keeping idle CPUs awake ([`RegionConfig::keep_awake`]; 0 when off).
    pub keep_awake_threads: u64,
    /// CPU time those spinners spent spinning, in µs, all together.
    pub keep_awake_spin_us: u64,
    /// Pages resident now.
    pub resident_pages: u64,
    /// Most pages ever resident.
    pub peak_resident_pages: u64,
    /// The budget, in pages.
    pub budget_pages: u64,
    /// Faults in the latency histogram (demand faults served by an install).
    pub latency_count: u64,
    /// Median fault service latency (ns), measured from reading the event to installing the page.
    pub latency_p50_ns: u64,
    /// 90th percentile (ns).
    pub latency_p90_ns: u64,
    /// 99th percentile (ns).
    pub latency_p99_ns: u64,
    /// Largest (ns).
    pub latency_max_ns: u64,
}

#[derive(Debug, Default)]
struct Counters {
    missing: AtomicU64,
    wp: AtomicU64,
    zero_fills: AtomicU64,
    fetched: AtomicU64,
    written: AtomicU64,
    clean_drops: AtomicU64,
    ra_pages: AtomicU64,
    ra_hits: AtomicU64,
    ra_writable: AtomicU64,
    predicted_writable: AtomicU64,
    released: AtomicU64,
    deferred: AtomicU64,
    poisoned: AtomicU64,
    moved: AtomicU64,
    inplace: AtomicU64,
    cpu_moves: AtomicU64,
    peak: AtomicU64,
}

/// Frame bookkeeping, guarded by `Shared::core`.
#[derive(Debug)]
struct Core {
    /// CLOCK hand (a frame index).
    hand: usize,
    /// Free frames: `free_len` entries of the `free` ring starting at `free_head`. Frames are handed out in the
    /// order they came back (FIFO), which the CLOCK relies on for long eviction runs (see `evict_round`).
    free_len: usize,
    /// First entry of the free ring.
    free_head: usize,
    /// `MADV_DONTNEED` ranges issued by eviction whose REMOVE event has not been read yet.
    self_removes: Vec<(u64, u64)>,
}

/// State shared by the region handle and its threads.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) base: u64,
    pub(crate) len: u64,
    pub(crate) npages: u64,
    /// Local frames (the budget in pages).
    budget: usize,
    /// Eviction starts below this many free frames and readahead never takes them.
    reserve: usize,
    /// Eviction starts below this many free frames (between `reserve` and `high`), so that a readahead window
    /// finds frames above the reserve while eviction refills them, instead of stalling the stream at the reserve.
    low: usize,
    /// Eviction stops at this many free frames.
    high: usize,
    uffd: Uffd,
    efd: OwnedFd,
    store: Arc<dyn FarStore>,
    region_id: u64,
    core: Mutex<Core>,
    evict_cv: Condvar,
    /// Per-page state byte (see the constants above); written under `core`, readable without it.
    pub(crate) state: Table<AtomicU8>,
    /// Page → frame, valid while the page holds a frame.
    frame_of: Table<AtomicU32>,
    /// Frame → page + 1 (0 = free).
    frames: Table<AtomicU32>,
    /// Stack of free frames.
    free: Table<AtomicU32>,
    zero: Mapping,
    /// Per eviction thread, `EVICT_BATCH` pages registered with the userfaultfd that victims are moved into.
    staging: Option<Mapping>,
    /// Thread ids of the eviction threads (moved with the event thread, see [`Follower`]).
    evictor_tids: Mutex<Vec<i32>>,
    /// Spinners keeping idle CPUs awake while faults flow ([`RegionConfig::keep_awake`]).
    awake: Option<KeepAwake>,
    c: Counters,
    hist: Mutex<hdrhistogram::Histogram<u64>>,
    trace: Option<Mutex<Vec<u64>>>,
    /// In-place drops (`MADV_DONTNEED` by an eviction thread) under way. While one is, the event thread's
    /// ioctls fail with EAGAIN until the dropping thread runs again after its REMOVE event is read: the event
    /// thread then sleeps until the drop is over (the eviction thread signals `efd`) instead of spinning.
    drops: AtomicU32,
    /// Stops the eviction threads (and store retries).
    stop: AtomicBool,
    /// Stops the event thread; set only after the eviction threads are gone, since their `MADV_DONTNEED`
    /// blocks until the event thread reads its REMOVE event.
    stop_events: AtomicBool,
    dead: AtomicBool,
    dead_note: Once,
    cfg: RegionConfig,
    pub(crate) owner_pid: u32,
    /// `store.describe()`, kept for messages printed where nothing may allocate.
    pub(crate) server: String,
}

/// A userfaultfd-managed far-memory region. See the crate documentation.
#[derive(Debug)]
pub struct Region {
    sh: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    map: Mapping,
}

fn loc(st: u8) -> u8 {
    st & LOC
}

impl Shared {
    fn st(&self, p: u64) -> u8 {
        self.state.at(as_usize(p)).load(Relaxed)
    }
    fn set(&self, p: u64, v: u8) {
        self.state.at(as_usize(p)).store(v, Relaxed);
    }
    fn addr(&self, p: u64) -> u64 {
        self.base + p * PS
    }
    fn resident(&self, core: &Core) -> usize {
        self.budget - core.free_len
    }
    /// Gives `p` a frame; false when none is free.
    fn alloc_frame(&self, core: &mut Core, p: u64) -> bool {
        if core.free_len == 0 {
            return false;
        }
        let f = self.free.at(core.free_head).load(Relaxed);
        core.free_head = (core.free_head + 1) % self.budget;
        core.free_len -= 1;
        self.frames.at(as_usize(u64::from(f))).store(u32::try_from(p + 1).unwrap_or(0), Relaxed);
        self.frame_of.at(as_usize(p)).store(f, Relaxed);
        let r = as_u64(self.resident(core));
        self.c.peak.fetch_max(r, Relaxed);
        true
    }
    fn free_frame(&self, core: &mut Core, p: u64) {
        let f = self.frame_of.at(as_usize(p)).load(Relaxed);
        self.frames.at(as_usize(u64::from(f))).store(0, Relaxed);
        self.free.at((core.free_head + core.free_len) % self.budget).store(f, Relaxed);
        core.free_len += 1;
    }
    /// `MADV_DONTNEED` by an eviction thread, counted in `drops` while it is under way; the event thread is told
    /// when it is over.
    fn evictor_dontneed(&self, start: u64, len: u64) -> Result<(), RawError> {
        self.drops.fetch_add(1, Relaxed);
        let r = raw::dontneed(start, len);
        self.drops.fetch_sub(1, Relaxed);
        self.notify_event_thread();
        r
    }
    fn notify_event_thread(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a live u64 to our own eventfd.
        unsafe { libc::write(self.efd.as_raw_fd(), std::ptr::from_ref(&one).cast(), 8) };
    }
    fn record(&self, t0: Instant) {
        let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.hist.lock().saturating_record(ns.max(1));
    }

    /// Marks the region dead (memd unreachable for good) and says so on stderr, once.
    fn die(&self, err: &StoreError) {
        self.dead.store(true, Relaxed);
        self.dead_note.call_once(|| {
            eprintln!(
                "farmem: far-memory server {} is unreachable ({err}); pages of this far-memory region that live \
                 there cannot be fetched or written back, so touching them raises SIGBUS",
                self.store.describe()
            );
        });
    }

    /// Runs `f` against the store, retrying errors that are not final with exponential back-off.
    fn with_retry<T>(&self, mut f: impl FnMut() -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut delay = Duration::from_millis(1);
        let mut tries = 0;
        loop {
            match f() {
                Ok(v) => return Ok(v),
                Err(e) if e.is_gone() || tries >= STORE_RETRIES || self.stop.load(Relaxed) => return Err(e),
                Err(e) => {
                    limited!(warn, error = %e, "far-store call failed; retrying");
                    std::thread::sleep(delay);
                    delay *= 4;
                    tries += 1;
                }
            }
        }
    }

    /// Deletes remote copies (best effort: a failure only leaks memd space, the page state already says zero).
    fn delete_remote(&self, pages: &[u64]) {
        for chunk in pages.chunks(16_384) {
            if let Err(e) = self.with_retry(|| self.store.delete_pages(self.region_id, chunk)) {
                limited!(warn, error = %e, pages = chunk.len(), "could not delete released pages from memd");
                if e.is_gone() {
                    self.die(&e);
                }
            }
        }
    }

    /// Applies a REMOVE/UNMAP of `[start, end)`: unless eviction issued exactly this range, the pages are
    /// released — local copies are gone (the kernel zaps them after this event is read) and remote ones deleted.
    fn on_remove(&self, start: u64, end: u64, from_event: bool) {
        let mut doomed = Vec::new();
        {
            let mut core = self.core.lock();
            let own = if from_event { core.self_removes.iter().position(|&r| r == (start, end)) } else { None };
            if let Some(i) = own {
                core.self_removes.swap_remove(i);
                return;
            }
            let lo = start.max(self.base);
            let hi = end.min(self.base + self.len);
            if lo >= hi {
                return;
            }
            let (p0, p1) = ((lo - self.base) / PS, (hi - self.base).div_ceil(PS));
            let mut n = 0u64;
            for p in p0..p1 {
                let st = self.st(p);
                match loc(st) {
                    PRESENT => {
                        self.free_frame(&mut core, p);
                        if st & REMOTE != 0 {
                            doomed.push(p);
                        }
                        self.set(p, ABSENT);
                        n += 1;
                    }
                    ABSENT => {
                        if st & REMOTE != 0 {
                            doomed.push(p);
                            n += 1;
                        }
                        self.set(p, ABSENT);
                    }
                    _ => {
                        self.set(p, st | RELEASED);
                        n += 1;
                    }
                }
            }
            self.c.released.fetch_add(n, Relaxed);
        }
        self.delete_remote(&doomed);
    }
}

/// Contiguous runs of a sorted page list: (first page, count).
fn runs(pages: &[u64]) -> Vec<(u64, usize)> {
    let mut out: Vec<(u64, usize)> = Vec::new();
    for &p in pages {
        match out.last_mut() {
            Some((s, n)) if *s + as_u64(*n) == p => *n += 1,
            _ => out.push((p, 1)),
        }
    }
    out
}

#[derive(Debug, Clone, Copy)]
struct Fault {
    page: u64,
    write: bool,
    wp: bool,
    t0: Instant,
}

/// One read request in flight: its pages (state FETCHING, each holding a frame) and what to do on arrival.
struct Batch {
    pages: Vec<u64>,
    /// The demand faults among `pages` (empty for a readahead batch).
    demand: Vec<Fault>,
    is_demand: bool,
    /// Readahead trigger pages among `pages` (sorted): held unmapped on arrival.
    triggers: Vec<u64>,
    /// Readahead pages among `pages` (sorted) of streams that write what they read: mapped writable and dirty.
    writable: Vec<u64>,
    reply: Result<Pending, StoreError>,
}

/// The event thread's private state.
struct EventLoop {
    sh: Arc<Shared>,
    deferred: Vec<Fault>,
    /// Readahead trigger pages: contents fetched, page left unmapped (state FETCHING | STAGED), oldest first.
    staged: std::collections::VecDeque<(u64, Box<[u8]>)>,
    /// Faults on trigger pages whose contents are still in flight: served as soon as they arrive.
    early: Vec<Fault>,
    /// Read requests in flight, oldest first (replies arrive in this order).
    inflight: std::collections::VecDeque<Batch>,
    det: Detector,
    msgs: Vec<Msg>,
    follow: Follower,
}

impl EventLoop {
    fn run(&mut self) {
        let sh = Arc::clone(&self.sh);
        let mut busy = Instant::now();
        while !sh.stop_events.load(Relaxed) {
            self.msgs.clear();
            let mut msgs = std::mem::take(&mut self.msgs);
            if let Err(e) = sh.uffd.read_msgs(&mut msgs, 64) {
                limited!(error, error = %e, "reading userfaultfd events failed");
                std::thread::sleep(Duration::from_millis(1));
            }
            let mut had_events = !msgs.is_empty();
            if had_events {
                let mut faults = std::mem::take(&mut self.deferred);
                self.absorb(&msgs, &mut faults);
                let faulted = !faults.is_empty();
                self.serve(faults);
                // After the fetches are sent: waking sleeping spinners then overlaps with memd's round trip.
                if let (true, Some(k)) = (faulted, &sh.awake) {
                    k.poke();
                }
            } else if !self.deferred.is_empty() && (sh.core.lock().free_len > 0 || sh.dead.load(Relaxed)) {
                // Eviction freed frames (or memd is gone and the faults get poisoned).
                let faults = std::mem::take(&mut self.deferred);
                self.serve(faults);
                had_events = true;
            }
            self.msgs = msgs;
            // Fetches stay in flight while events are served: the next readahead window is requested as soon as
            // the program reaches its trigger, while the current one is still arriving. One batch is installed
            // per turn, so events are read between batches.
            if let Some(b) = self.inflight.pop_front() {
                self.complete(b);
                busy = Instant::now();
                continue;
            }
            if had_events {
                busy = Instant::now();
                continue;
            }
            // Faults come in bursts: poll the descriptor for a short while before sleeping, which saves the
            // wake-up of a blocked thread on the next fault.
            if busy.elapsed() < sh.cfg.spin {
                std::hint::spin_loop();
                continue;
            }
            let timeout = if self.deferred.is_empty() { 500 } else { 2 };
            self.poll(timeout);
            busy = Instant::now();
        }
        // Finish what is in flight: pages being fetched hold frames, and their faulting threads wait.
        while let Some(b) = self.inflight.pop_front() {
            self.complete(b);
        }
    }

    fn poll(&self, timeout_ms: i32) {
        let mut fds = [
            libc::pollfd { fd: self.sh.uffd.raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: self.sh.efd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: `fds` is a live array of two pollfd structs for descriptors this region owns.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
        if fds[1].revents & libc::POLLIN != 0 {
            let mut v: u64 = 0;
            // SAFETY: reading 8 bytes into a live u64 from our own non-blocking eventfd.
            unsafe { libc::read(self.sh.efd.as_raw_fd(), std::ptr::from_mut(&mut v).cast(), 8) };
        }
    }

    /// Applies non-cooperative events at once and collects page faults.
    fn absorb(&mut self, msgs: &[Msg], faults: &mut Vec<Fault>) {
        let sh = &self.sh;
        let now = Instant::now();
        for m in msgs {
            match *m {
                Msg::PageFault { addr, flags, tid } => {
                    let ra = sh.c.ra_pages.load(Relaxed);
                    if self.follow.on_fault(tid, ra, &|| sh.evictor_tids.lock().clone()) {
                        sh.c.cpu_moves.fetch_add(1, Relaxed);
                    }
                    let wp = flags & raw::PAGEFAULT_FLAG_WP != 0;
                    if wp {
                        sh.c.wp.fetch_add(1, Relaxed);
                    } else {
                        sh.c.missing.fetch_add(1, Relaxed);
                    }
                    if addr < sh.base || addr >= sh.base + sh.len {
                        // Pages moved out of the region by mremap stay registered; their far copies are gone.
                        limited!(error, addr, "fault outside the region (moved by mremap?); poisoning it");
                        let page = addr & !(PS - 1);
                        if let Err(e) = sh.uffd.poison(page, PS) {
                            limited!(error, error = %e, "cannot poison a page outside the region");
                        }
                        continue;
                    }
                    let page = (addr - sh.base) / PS;
                    if !wp {
                        if let Some(t) = &sh.trace {
                            t.lock().push(page);
                        }
                    }
                    faults.push(Fault { page, write: flags & raw::PAGEFAULT_FLAG_WRITE != 0, wp, t0: now });
                }
                Msg::Remove { start, end } | Msg::Unmap { start, end } => sh.on_remove(start, end, true),
                Msg::Remap { from, to, len } => {
                    limited!(warn, from, to, len, "region pages moved by mremap: treating the old range as released");
                    sh.on_remove(from, from.saturating_add(len), true);
                }
                Msg::Other(e) => limited!(warn, event = e, "unexpected userfaultfd event"),
            }
        }
    }

    /// Reads pending events while an ioctl reports EAGAIN: applies REMOVE/UNMAP/REMAP, defers page faults.
    fn pump(&mut self) {
        let mut msgs = Vec::new();
        if let Err(e) = self.sh.uffd.read_msgs(&mut msgs, 64) {
            limited!(error, error = %e, "reading userfaultfd events failed");
        }
        let mut faults = Vec::new();
        self.absorb(&msgs, &mut faults);
        self.deferred.extend(faults);
        if msgs.is_empty() {
            if self.sh.drops.load(Relaxed) > 0 {
                // An eviction thread's drop holds the ioctls off until it runs again: sleep until it says the
                // drop is over (or another event arrives) rather than spin against it for the CPU.
                self.poll(1);
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// A wrapper retrying an ioctl while events are pending.
    fn retry_eagain(&mut self, mut f: impl FnMut(&Uffd) -> Result<(), RawError>) -> Result<(), RawError> {
        loop {
            match f(&self.sh.uffd) {
                Err(e) if e.errno == libc::EAGAIN => self.pump(),
                r => return r,
            }
        }
    }

    fn serve(&mut self, mut faults: Vec<Fault>) {
        let sh = Arc::clone(&self.sh);
        faults.sort_by_key(|f| f.page);
        faults.dedup_by(|b, a| {
            if a.page == b.page {
                a.write |= b.write;
                a.wp |= b.wp;
                a.t0 = a.t0.min(b.t0);
                true
            } else {
                false
            }
        });
        let mut unprotect = Vec::new();
        let mut wake = Vec::new();
        let mut poison = Vec::new();
        let mut zero = Vec::new();
        let mut fetch = Vec::new();
        let mut ra: Vec<u64> = Vec::new();
        let mut evicting_zero = Vec::new();
        let mut staged = Vec::new();
        let mut triggers = Vec::new();
        let mut writable = Vec::new();
        let dead = sh.dead.load(Relaxed);
        {
            let mut core = sh.core.lock();
            for f in faults {
                let p = f.page;
                let st = sh.st(p);
                match loc(st) {
                    PRESENT if f.wp => {
                        sh.set(p, st | DIRTY | REF);
                        unprotect.push(f);
                        self.det.on_write(p);
                    }
                    PRESENT => wake.push(f.page),
                    FETCHING if st & STAGED != 0 => staged.push(f),
                    // A released page being evicted in place is gone already; the eviction thread may be the
                    // one reading it (for write-back). Map zeros there (see `zero_while_evicting`): the
                    // eviction drops them with the page.
                    EVICTING if st & (RELEASED | INPLACE) == RELEASED | INPLACE && !f.wp => evicting_zero.push(f.page),
                    // The evicting thread wakes the page's waiters once it is gone; a fault on a page being
                    // fetched is woken by the install.
                    EVICTING | FETCHING => {}
                    _ if f.wp => wake.push(f.page),
                    // memd is gone: nothing it holds can come back, and with no free frame (dirty pages can
                    // no longer be evicted) a zero fill would wait for ever.
                    _ if dead && (st & REMOTE != 0 || core.free_len == 0) => poison.push(f.page),
                    _ => {
                        if sh.alloc_frame(&mut core, p) {
                            sh.set(p, FETCHING | (st & REMOTE));
                            if st & REMOTE != 0 {
                                fetch.push(f);
                            } else {
                                zero.push(f);
                            }
                        } else {
                            sh.c.deferred.fetch_add(1, Relaxed);
                            self.deferred.push(f);
                        }
                    }
                }
            }
            if sh.cfg.readahead {
                for f in fetch.iter().chain(&staged) {
                    let room = core.free_len.saturating_sub(sh.reserve);
                    if let Some(pf) = self.det.on_fault(f.page, room, f.write) {
                        for q in pf.pages(sh.npages) {
                            let st = sh.st(q);
                            if st == (ABSENT | REMOTE) && core.free_len > sh.reserve && sh.alloc_frame(&mut core, q) {
                                ra.push(q);
                                // A trigger is staged from the start: a fault on it before its contents
                                // arrive asks for the next window at once.
                                if pf.trigger == Some(q) {
                                    triggers.push(q);
                                    sh.set(q, FETCHING | REMOTE | STAGED);
                                } else {
                                    sh.set(q, FETCHING | REMOTE);
                                    if pf.writable && sh.cfg.write_ahead {
                                        writable.push(q);
                                    }
                                }
                            }
                        }
                    }
                }
                // A demand read of a stream that writes what it reads: mapped writable and dirty at once.
                for f in fetch.iter_mut().filter(|f| !f.write && sh.cfg.write_ahead) {
                    if self.det.predict_write(f.page) {
                        f.write = true;
                        sh.c.predicted_writable.fetch_add(1, Relaxed);
                    }
                }
                sh.c.ra_hits.store(self.det.hits, Relaxed);
            }
            if core.free_len < sh.low {
                sh.evict_cv.notify_all();
            }
        }
        self.unprotect(&unprotect.iter().map(|f| f.page).collect::<Vec<_>>());
        for f in &unprotect {
            sh.record(f.t0);
        }
        for (s, n) in runs(&wake) {
            if let Err(e) = sh.uffd.wake(sh.addr(s), as_u64(n) * PS) {
                limited!(error, error = %e, "UFFDIO_WAKE failed");
            }
        }
        self.poison(&poison);
        for p in evicting_zero {
            self.zero_while_evicting(p);
        }
        self.install_staged(&staged);
        self.install_zero(&zero);
        if !fetch.is_empty() || !ra.is_empty() {
            ra.sort_unstable();
            triggers.sort_unstable();
            writable.sort_unstable();
            self.submit_fetch(&fetch, &ra, &triggers, &writable);
        }
    }

    /// Lifts write protection from `pages` (sorted; marked dirty by their write-protect faults) that are still
    /// mapped. The check and the ioctl happen under `core`: between a fault's `serve` and its un-protect, eviction
    /// may take the page (it was referenced, but a second round can clear that and pick it), write-protect it
    /// and copy it out; lifting the protection then would let the woken writer write into a page about to be
    /// dropped, and the write would be lost. A page no longer mapped is left to the wake-up its eviction sends.
    fn unprotect(&mut self, pages: &[u64]) {
        let sh = Arc::clone(&self.sh);
        let mut i = 0;
        while i < pages.len() {
            let core = sh.core.lock();
            // Still mapped and still marked dirty (not evicted and fetched again clean meanwhile).
            let mapped_dirty = |p: u64| sh.st(p) & (LOC | DIRTY) == PRESENT | DIRTY;
            if !mapped_dirty(pages[i]) {
                i += 1;
                continue;
            }
            let mut n = 1;
            while i + n < pages.len() && pages[i + n] == pages[i] + as_u64(n) && mapped_dirty(pages[i + n]) {
                n += 1;
            }
            match sh.uffd.writeprotect(sh.addr(pages[i]), as_u64(n) * PS, 0) {
                Err(e) if e.errno == libc::EAGAIN => {
                    // Reading the pending event may take `core` (a release): not while holding it.
                    drop(core);
                    self.pump();
                    continue;
                }
                Err(e) => limited!(error, error = %e, "cannot un-write-protect a page"),
                Ok(()) => {}
            }
            i += n;
        }
    }

    /// Maps zeros over a released page that an eviction thread is still reading for its write-back (state
    /// `EVICTING | INPLACE | RELEASED`), so that its read (or the program's) does not wait for ever.
    ///
    /// The copy is made under `core`, after checking that `INPLACE` is still set. The eviction thread clears
    /// `INPLACE` under `core` before it drops the page, so the zeros are always mapped before that drop and
    /// dropped by it. Mapped after the drop, they would outlive the eviction: a page mapped behind the region's
    /// back, holding no frame, write-protected, and marked absent, on which every write would fault for ever.
    /// Once `INPLACE` is clear the faulting thread is left to the wake-up the eviction sends when the page is
    /// gone: the fault was read before the eviction finished, so it is waiting when that wake-up comes.
    fn zero_while_evicting(&mut self, p: u64) {
        let sh = Arc::clone(&self.sh);
        loop {
            let core = sh.core.lock();
            let st = sh.st(p);
            if loc(st) != EVICTING || st & (RELEASED | INPLACE) != RELEASED | INPLACE {
                return;
            }
            match sh.uffd.copy(sh.addr(p), sh.zero.ptr(), PS, raw::COPY_MODE_WP) {
                Ok(()) => return,
                Err(e) if e.errno == libc::EEXIST => {
                    // Mapped meanwhile: the copy woke nobody.
                    let _ = sh.uffd.wake(sh.addr(p), PS);
                    return;
                }
                Err(e) if e.errno == libc::EAGAIN => {
                    // Reading the pending event may take `core` (a release): not while holding it.
                    drop(core);
                    self.pump();
                }
                Err(e) => {
                    limited!(error, error = %e, "cannot map zeros over a released page being evicted");
                    return;
                }
            }
        }
    }

    fn poison(&mut self, pages: &[u64]) {
        let sh = Arc::clone(&self.sh);
        for &p in pages {
            match self.retry_eagain(|u| u.poison(sh.addr(p), PS)) {
                Ok(()) => {
                    sh.c.poisoned.fetch_add(1, Relaxed);
                }
                Err(e) if e.errno == libc::EEXIST => {
                    let _ = sh.uffd.wake(sh.addr(p), PS);
                }
                Err(e) => limited!(error, error = %e, "cannot poison a page"),
            }
        }
    }

    /// Serves faults on readahead trigger pages from their held contents (no network round trip), or as soon as
    /// their contents arrive.
    fn install_staged(&mut self, faults: &[Fault]) {
        for f in faults {
            let Some(i) = self.staged.iter().position(|(p, _)| *p == f.page) else {
                // Still in flight: `stage` serves it on arrival.
                self.early.push(*f);
                continue;
            };
            let Some((p, buf)) = self.staged.remove(i) else { continue };
            let (mode, flags) = if f.write { (0, DIRTY) } else { (raw::COPY_MODE_WP, 0) };
            self.install(&[p], &|_| buf.as_ptr(), mode, flags);
            self.sh.record(f.t0);
        }
    }

    /// Holds a fetched trigger page unmapped (or installs it at once when the program already faulted on it); the
    /// oldest held page is installed when too many are held.
    fn stage(&mut self, page: u64, data: &[u8]) {
        let sh = Arc::clone(&self.sh);
        let waiting: Vec<Fault> = if self.early.iter().any(|f| f.page == page) {
            let (w, rest) = std::mem::take(&mut self.early).into_iter().partition(|f| f.page == page);
            self.early = rest;
            w
        } else {
            Vec::new()
        };
        {
            let mut core = sh.core.lock();
            let st = sh.st(page);
            if st & RELEASED != 0 {
                sh.free_frame(&mut core, page);
                sh.set(page, ABSENT);
                drop(core);
                let _ = sh.uffd.wake(sh.addr(page), PS);
                return;
            }
            sh.set(page, st | STAGED);
        }
        if !waiting.is_empty() {
            let write = waiting.iter().any(|f| f.write);
            let (mode, flags) = if write { (0, DIRTY) } else { (raw::COPY_MODE_WP, 0) };
            self.install(&[page], &|_| data.as_ptr(), mode, flags);
            for f in &waiting {
                sh.record(f.t0);
            }
            return;
        }
        self.staged.push_back((page, data.to_vec().into_boxed_slice()));
        if self.staged.len() > MAX_STAGED {
            if let Some((p, buf)) = self.staged.pop_front() {
                self.install(&[p], &|_| buf.as_ptr(), raw::COPY_MODE_WP, 0);
            }
        }
    }

    /// Zero-fills never-written (or released) pages: write faults get a writable page, read faults a
    /// write-protected one, so the first write is seen.
    fn install_zero(&mut self, faults: &[Fault]) {
        if faults.is_empty() {
            return;
        }
        let sh = Arc::clone(&self.sh);
        let zero = sh.zero.ptr();
        let zero_pages = sh.zero.len() / PAGE_SIZE;
        let mut i = 0;
        while i < faults.len() {
            // A run of contiguous pages with the same access kind, as long as the zero buffer.
            let mut j = i + 1;
            while j < faults.len()
                && j - i < zero_pages
                && faults[j].page == faults[j - 1].page + 1
                && faults[j].write == faults[i].write
            {
                j += 1;
            }
            let pages: Vec<u64> = faults[i..j].iter().map(|f| f.page).collect();
            let mode = if faults[i].write { 0 } else { raw::COPY_MODE_WP };
            let flags = if faults[i].write { DIRTY } else { 0 };
            self.install(&pages, &|_| zero, mode, flags);
            sh.c.zero_fills.fetch_add(as_u64(j - i), Relaxed);
            for f in &faults[i..j] {
                sh.record(f.t0);
            }
            i = j;
        }
    }

    /// Installs contiguous `pages` (each holding a frame, state FETCHING) with UFFDIO_COPY from `src(i)`, then
    /// marks them PRESENT with `flags` (plus REF). Pages released meanwhile end up absent instead.
    fn install(&mut self, pages: &[u64], src: &dyn Fn(usize) -> *const u8, mode: u64, flags: u8) {
        let sh = Arc::clone(&self.sh);
        let mut i = 0;
        // A page released before its install starts (a held trigger page, say) must not be installed at all:
        // no later zap would remove it. So each copy covers the longest run of pages not released, re-checked
        // after every EAGAIN (whose pending event may have released some).
        while i < pages.len() {
            if sh.st(pages[i]) & RELEASED != 0 {
                i += 1;
                continue;
            }
            let n = pages[i..].iter().position(|&p| sh.st(p) & RELEASED != 0).unwrap_or(pages.len() - i);
            let base = src(i);
            // Whole-run copies need a contiguous source; `src` gives one for zero and fetched runs.
            match sh.uffd.copy(sh.addr(pages[i]), base, as_u64(n) * PS, mode) {
                Ok(()) => i += n,
                Err(e) => {
                    i += e.done / PAGE_SIZE;
                    match e.errno {
                        libc::EEXIST => i += 1,
                        libc::EAGAIN => {
                            self.pump();
                        }
                        _ => {
                            limited!(error, error = %e, page = pages[i], "UFFDIO_COPY failed; poisoning the page");
                            let _ = sh.uffd.poison(sh.addr(pages[i]), PS);
                            i += 1;
                        }
                    }
                }
            }
        }
        let mut core = sh.core.lock();
        for &p in pages {
            let st = sh.st(p);
            if st & RELEASED != 0 {
                sh.free_frame(&mut core, p);
                sh.set(p, ABSENT);
                let _ = sh.uffd.wake(sh.addr(p), PS);
            } else {
                sh.set(p, PRESENT | REF | flags | (st & REMOTE));
            }
        }
    }

    /// Requests demand pages and readahead pages with pipelined batch reads (demand pages first), all in one
    /// burst; [`EventLoop::complete`] installs each batch as it arrives.
    fn submit_fetch(&mut self, demand: &[Fault], ra: &[u64], triggers: &[u64], writable: &[u64]) {
        let sh = Arc::clone(&self.sh);
        let dpages: Vec<u64> = demand.iter().map(|f| f.page).collect();
        let mut batches: Vec<Batch> = Vec::new();
        let new = |pages: &[u64], demand: Vec<Fault>, triggers: Vec<u64>, writable: Vec<u64>| Batch {
            pages: pages.to_vec(),
            is_demand: !demand.is_empty(),
            demand,
            triggers,
            writable,
            reply: Err(StoreError::Invalid(String::new())),
        };
        for c in dpages.chunks(IO_CHUNK) {
            let (lo, hi) = (c[0], c[c.len() - 1]);
            let d: Vec<Fault> = demand.iter().filter(|f| f.page >= lo && f.page <= hi).copied().collect();
            batches.push(new(c, d, Vec::new(), Vec::new()));
        }
        let among =
            |of: &[u64], c: &[u64]| -> Vec<u64> { of.iter().copied().filter(|p| c.binary_search(p).is_ok()).collect() };
        for c in ra.chunks(IO_CHUNK) {
            batches.push(new(c, Vec::new(), among(triggers, c), among(writable, c)));
        }
        let reqs: Vec<Request> =
            batches.iter().map(|b| Request::ReadPages { region: sh.region_id, pages: b.pages.clone() }).collect();
        match sh.store.submit_many(reqs) {
            Ok(pendings) => {
                for (b, p) in batches.iter_mut().zip(pendings) {
                    b.reply = Ok(p);
                }
            }
            Err(e) => {
                for b in &mut batches {
                    b.reply = Err(e.clone());
                }
            }
        }
        self.inflight.extend(batches);
    }

    /// Waits for the reply of one batch and installs its pages.
    fn complete(&mut self, b: Batch) {
        let sh = Arc::clone(&self.sh);
        let Batch { pages, demand, is_demand, triggers, writable, reply } = b;
        let demand = &demand[..];
        let triggers = &triggers[..];
        // A program thread waits for a demand batch: poll for its reply rather than sleep through it.
        let reply = reply.and_then(|p| if is_demand { p.wait_spinning(sh.cfg.reply_spin) } else { p.wait() });
        let reply = reply.or_else(|e| {
            if e.is_gone() {
                return Err(e);
            }
            sh.with_retry(|| {
                sh.store.read_pages(sh.region_id, &pages).map(|(pr, d)| Reply::Pages { present: pr, data: d })
            })
        });
        let data = match reply {
            Ok(Reply::Pages { present, .. }) if present.iter().any(|&p| !p) => {
                // memd lost pages it acknowledged: zeros here would be silent data loss.
                let lost = pages.iter().zip(&present).find(|(_, &p)| !p).map_or(0, |(&q, _)| q);
                let e = StoreError::Protocol {
                    server: sh.store.describe(),
                    msg: format!(
                        "it no longer holds page {lost} of region {:#x}, which was written there (restarted \
                         without its data?)",
                        sh.region_id
                    ),
                };
                self.fetch_failed(&pages, is_demand, &e);
                return;
            }
            Ok(Reply::Pages { data, .. }) if data.len() == pages.len() * PAGE_SIZE => data,
            Ok(other) => {
                let e = StoreError::Protocol { server: sh.store.describe(), msg: format!("bad page reply {other:?}") };
                self.fetch_failed(&pages, is_demand, &e);
                return;
            }
            Err(e) => {
                self.fetch_failed(&pages, is_demand, &e);
                return;
            }
        };
        let dptr = data.as_ptr();
        if is_demand {
            // `demand[i]` is the fault on `pages[i]` (both sorted, one fault per page). Write faults get the
            // page writable at once (it is dirty from the start); reads get it write-protected so the first
            // write is seen. Each run of contiguous pages with the same access kind is one copy.
            debug_assert!(demand.iter().map(|f| f.page).eq(pages.iter().copied()));
            let mut i = 0;
            while i < demand.len() {
                let mut j = i + 1;
                while j < demand.len() && demand[j].page == demand[j - 1].page + 1 && demand[j].write == demand[i].write
                {
                    j += 1;
                }
                let (mode, flags) = if demand[i].write { (0, DIRTY) } else { (raw::COPY_MODE_WP, 0) };
                self.install(&pages[i..j], &|x| dptr.wrapping_add((i + x) * PAGE_SIZE), mode, flags);
                for f in &demand[i..j] {
                    sh.record(f.t0);
                }
                i = j;
            }
            sh.c.fetched.fetch_add(as_u64(pages.len()), Relaxed);
            farmem_memd::client::recycle_reply_buffer(data);
            return;
        }
        let mut k = 0;
        for (s, n) in runs(&pages) {
            let run: Vec<u64> = (s..s + as_u64(n)).collect();
            let off = k * PAGE_SIZE;
            for sub in split_by(&run, |p| triggers.binary_search(p).is_ok()) {
                let first = as_usize(sub[0] - s);
                if triggers.binary_search(&sub[0]).is_ok() {
                    for (j, &p) in sub.iter().enumerate() {
                        let at = off + (first + j) * PAGE_SIZE;
                        self.stage(p, &data[at..at + PAGE_SIZE]);
                    }
                } else {
                    // Pages of a stream that writes what it reads are mapped writable, dirty from the start (no
                    // write-protect fault on each); the others write-protected, so that they stay clean.
                    let mut at = first;
                    for part in split_by(&sub, |p| writable.binary_search(p).is_ok()) {
                        let src = |i: usize| dptr.wrapping_add(off + (at + i) * PAGE_SIZE);
                        if writable.binary_search(&part[0]).is_ok() {
                            self.install(&part, &src, 0, DIRTY);
                            sh.c.ra_writable.fetch_add(as_u64(part.len()), Relaxed);
                        } else {
                            self.install(&part, &src, raw::COPY_MODE_WP, 0);
                        }
                        at += part.len();
                    }
                }
            }
            sh.c.ra_pages.fetch_add(as_u64(n), Relaxed);
            k += n;
        }
        // The next reply reuses the buffer rather than a fresh zeroed one.
        farmem_memd::client::recycle_reply_buffer(data);
    }

    /// A read failed for good: poison the demand pages (after saying why), return readahead frames.
    fn fetch_failed(&mut self, pages: &[u64], is_demand: bool, e: &StoreError) {
        let sh = Arc::clone(&self.sh);
        sh.die(e);
        {
            let mut core = sh.core.lock();
            for &p in pages {
                let st = sh.st(p);
                sh.free_frame(&mut core, p);
                sh.set(p, if st & RELEASED != 0 { ABSENT } else { ABSENT | REMOTE });
            }
        }
        if is_demand {
            self.poison(pages);
        } else {
            // Threads that touched these pages while they were in flight wait for them: they fault again and
            // are answered then (with SIGBUS if memd is gone).
            self.early.retain(|f| !pages.contains(&f.page));
            for (s, n) in runs(pages) {
                let _ = sh.uffd.wake(sh.addr(s), as_u64(n) * PS);
            }
        }
    }
}

/// Splits `run` into maximal sub-runs on which `key` is constant.
fn split_by(run: &[u64], key: impl Fn(&u64) -> bool) -> Vec<Vec<u64>> {
    let mut out: Vec<Vec<u64>> = Vec::new();
    let mut last = None;
    for p in run {
        let k = key(p);
        match out.last_mut() {
            Some(v) if last == Some(k) => v.push(*p),
            _ => out.push(vec![*p]),
        }
        last = Some(k);
    }
    out
}

/// An eviction thread: keeps `reserve..high` frames free.
fn evictor(sh: &Shared, slot: usize) {
    loop {
        {
            let mut core = sh.core.lock();
            while !sh.stop.load(Relaxed) && core.free_len >= sh.low {
                sh.evict_cv.wait_for(&mut core, Duration::from_millis(200));
            }
        }
        if sh.stop.load(Relaxed) {
            return;
        }
        loop {
            let freed = evict_round(sh, slot);
            sh.notify_event_thread();
            let free = sh.core.lock().free_len;
            if freed == 0 {
                std::thread::sleep(Duration::from_micros(200));
                break;
            }
            if free >= sh.high || sh.stop.load(Relaxed) {
                break;
            }
        }
    }
}

/// Retries an ioctl that another thread's pending event blocks (EAGAIN): the event thread reads it.
fn retry_busy(mut f: impl FnMut() -> Result<(), RawError>) -> Result<(), RawError> {
    loop {
        match f() {
            Err(e) if e.errno == libc::EAGAIN => std::thread::sleep(Duration::from_micros(20)),
            r => return r,
        }
    }
}

/// `UFFDIO_MOVE` of `len` bytes from `src` to `dst`, continuing after partial progress. On `EAGAIN` the kernel may
/// already have moved a prefix of the range: retrying the whole call would find those destination slots full
/// (`EEXIST`, 0 bytes done) and make the caller evict, in place, pages that are no longer in the region — and
/// then fault on them itself. So the next call starts where the last one stopped. An error reports the bytes moved
/// by all calls.
fn move_all(sh: &Shared, dst: u64, src: u64, len: u64) -> Result<(), RawError> {
    let mut off = 0u64;
    loop {
        match sh.uffd.move_pages(dst + off, src + off, len - off) {
            Ok(()) => return Ok(()),
            Err(e) => {
                off += as_u64(e.done);
                if off >= len {
                    return Ok(());
                }
                if e.errno != libc::EAGAIN {
                    return Err(RawError { done: usize::try_from(off).unwrap_or(usize::MAX), ..e });
                }
                std::thread::sleep(Duration::from_micros(20));
            }
        }
    }
}

/// One eviction round: picks victims by CLOCK, write-protects the dirty ones, writes them back in pipelined
/// batches, drops all of them, and frees their frames. Returns the number of pages evicted.
fn evict_round(sh: &Shared, slot: usize) -> usize {
    let mut victims = Vec::new();
    let mut rearm = Vec::new();
    let hand0;
    {
        let mut core = sh.core.lock();
        hand0 = core.hand;
        let want = sh.high.saturating_sub(core.free_len).clamp(1, EVICT_BATCH);
        let mut steps = 0;
        while victims.len() < want && steps < 2 * sh.budget + 1 {
            let f = core.hand;
            core.hand = (core.hand + 1) % sh.budget;
            steps += 1;
            let slot = sh.frames.at(f).load(Relaxed);
            if slot == 0 {
                continue;
            }
            let p = u64::from(slot - 1);
            let st = sh.st(p);
            if loc(st) != PRESENT {
                continue;
            }
            if st & DIRTY != 0 && sh.dead.load(Relaxed) {
                // memd is gone: only clean pages can still make room.
                continue;
            }
            if st & REF != 0 {
                // Second chance. A dirty page is write-protected again so its next write sets REF anew.
                sh.set(p, st & !REF);
                if st & DIRTY != 0 {
                    rearm.push(p);
                }
                continue;
            }
            sh.set(p, (st & !LOC) | EVICTING);
            victims.push(p);
        }
    }
    rearm.sort_unstable();
    for (s, n) in runs(&rearm) {
        if let Err(e) = retry_busy(|| sh.uffd.writeprotect(sh.addr(s), as_u64(n) * PS, raw::WRITEPROTECT_MODE_WP)) {
            limited!(debug, error = %e, "re-arming write protection failed");
        }
    }
    if victims.is_empty() {
        return 0;
    }
    victims.sort_unstable();
    // 1. Take the dirty pages out of the region. UFFDIO_MOVE does it atomically (a racing access takes a missing
    //    fault and waits for the wake below) into this thread's staging slots; a page it refuses (shared with a
    //    forked child) is evicted in place instead. Clean pages need no write-back, so runs of at least
    //    `clean_drop_run` of them are dropped in place (one `MADV_DONTNEED` per run in step 4) rather than moved
    //    and then dropped from staging: they are mapped write-protected and stay so while EVICTING (a write
    //    faults and waits for the wake), and a read racing the drop reads either the page or, after it, memd's
    //    identical copy. Shorter runs of clean pages move out with the dirty ones.
    let stage = sh.staging.as_ref().map(|m| as_u64(m.ptr() as usize) + as_u64(slot * EVICT_BATCH * PAGE_SIZE));
    let mut moved: Vec<(u64, u64)> = Vec::new();
    let mut inplace: Vec<u64> = Vec::new();
    let mut unmapped: Vec<u64> = Vec::new();
    // The length (up to `limit`) of the run of contiguous clean victims starting at victims[i].
    let min_run = sh.cfg.clean_drop_run.max(1);
    let clean_run = |i: usize, limit: usize| {
        let mut n = 0;
        while n < limit
            && i + n < victims.len()
            && victims[i + n] == victims[i] + as_u64(n)
            && sh.st(victims[i + n]) & DIRTY == 0
        {
            n += 1;
        }
        n
    };
    let mut i = 0;
    while i < victims.len() {
        let p = victims[i];
        let Some(st0) = stage else {
            inplace.push(p);
            i += 1;
            continue;
        };
        if clean_run(i, min_run) == min_run {
            // A long run of clean victims: dropped in place in step 4, one call for the whole run.
            let n = clean_run(i, usize::MAX);
            inplace.extend_from_slice(&victims[i..i + n]);
            i += n;
            continue;
        }
        // A run of contiguous victims (dirty ones, and clean ones in runs too short to be worth a REMOVE event
        // of their own) moves in one call into consecutive slots.
        let mut n = 1;
        while i + n < victims.len() && victims[i + n] == p + as_u64(n) && clean_run(i + n, min_run) < min_run {
            n += 1;
        }
        let dst = st0 + as_u64(i) * PS;
        match move_all(sh, dst, sh.addr(p), as_u64(n) * PS) {
            Ok(()) => {
                moved.extend((0..n).map(|k| (p + as_u64(k), dst + as_u64(k) * PS)));
                i += n;
            }
            Err(e) => {
                // Part of the run may have moved; the first page that did not is handled alone.
                let done = e.done / PAGE_SIZE;
                moved.extend((0..done).map(|k| (p + as_u64(k), dst + as_u64(k) * PS)));
                i += done;
                let q = victims[i];
                let one = st0 + as_u64(i) * PS;
                match move_all(sh, one, sh.addr(q), PS) {
                    Ok(()) => moved.push((q, one)),
                    // Not mapped: the program released it and the kernel already zapped it.
                    Err(e) if e.errno == libc::ENOENT => unmapped.push(q),
                    Err(e) => {
                        limited!(debug, error = %e, page = q, "UFFDIO_MOVE refused a page; evicting it in place");
                        inplace.push(q);
                    }
                }
                i += 1;
            }
        }
    }
    // 2. Dirty in-place victims: write-protect them before copying out, so a racing write faults and waits until
    //    the page is gone, and mark them INPLACE while this thread may read them (see `zero_while_evicting`).
    //    (DIRTY does not change while a page is EVICTING.)
    let inplace_dirty: Vec<u64> = inplace.iter().copied().filter(|&p| sh.st(p) & DIRTY != 0).collect();
    {
        let _core = sh.core.lock();
        for &p in &inplace_dirty {
            sh.set(p, sh.st(p) | INPLACE);
        }
    }
    for (s, n) in runs(&inplace_dirty) {
        if let Err(e) = retry_busy(|| sh.uffd.writeprotect(sh.addr(s), as_u64(n) * PS, raw::WRITEPROTECT_MODE_WP)) {
            limited!(error, error = %e, "cannot write-protect pages for eviction");
        }
    }
    // 3. Write dirty pages back in pipelined batches.
    let mut dirty: Vec<(u64, u64)> = moved.iter().copied().filter(|&(p, _)| sh.st(p) & DIRTY != 0).collect();
    dirty.extend(inplace_dirty.iter().map(|&p| (p, sh.addr(p))));
    dirty.sort_unstable();
    if !dirty.is_empty() && !write_back(sh, &dirty) {
        // memd is unreachable: put every page back (moved ones are moved back; in-place ones stay
        // write-protected, so their next write marks them dirty again).
        for &(p, src) in &moved {
            if let Err(e) = retry_busy(|| sh.uffd.move_pages(sh.addr(p), src, PS)) {
                limited!(error, error = %e, page = p, "cannot move an unevictable page back");
            }
        }
        // Released in-place victims may have zeros mapped over them: those go as in step 4.
        let released: Vec<u64> = {
            let _core = clear_inplace(sh, &inplace_dirty);
            inplace.iter().copied().filter(|&p| sh.st(p) & RELEASED != 0).collect()
        };
        drop_in_place(sh, &released);
        let mut core = sh.core.lock();
        for &p in &victims {
            let st = sh.st(p) & !INPLACE;
            if st & RELEASED != 0 || unmapped.contains(&p) {
                sh.free_frame(&mut core, p);
                sh.set(p, ABSENT);
            } else {
                sh.set(p, (st & !LOC) | PRESENT);
            }
        }
        drop(core);
        for (s, n) in runs(&victims) {
            let _ = sh.uffd.wake(sh.addr(s), as_u64(n) * PS);
        }
        return 0;
    }
    // 4. Drop in-place victims (the REMOVE event this raises is recognised by its range). No zeros may be mapped
    //    over a released one after this drop: INPLACE goes first, under `core`.
    drop(clear_inplace(sh, &inplace_dirty));
    drop_in_place(sh, &inplace);
    // 5. Released victims lose their memd copies while they are still EVICTING, so no later write-back of the
    //    page (once reused) can be overtaken by this delete.
    let gone = |p: u64, st: u8| st & RELEASED != 0 || unmapped.contains(&p);
    let early: Vec<u64> = victims.iter().copied().filter(|&p| gone(p, sh.st(p))).collect();
    sh.delete_remote(&early);
    // 6. New states, frames back, waiters woken. Frames go back to the free ring in the order the hand met them,
    //    and the ring hands them out in that order: a stream's pages then sit in frames in the order they were
    //    fetched, the hand meets them again in that order one revolution later, and a round's victims form
    //    long runs of pages (few in-place drops, each with its REMOVE event and TLB shootdown) instead of runs
    //    scattered over the resident window.
    let mut doomed = Vec::new();
    let (mut clean, mut written) = (0u64, 0u64);
    let mut by_frame = victims.clone();
    by_frame.sort_unstable_by_key(|&p| {
        (as_usize(u64::from(sh.frame_of.at(as_usize(p)).load(Relaxed))) + sh.budget - hand0) % sh.budget
    });
    {
        let mut core = sh.core.lock();
        for &p in &by_frame {
            let st = sh.st(p) & !INPLACE;
            sh.free_frame(&mut core, p);
            if st & DIRTY != 0 {
                written += 1;
            } else {
                clean += 1;
            }
            let new = if gone(p, st) {
                // Released after the early delete: delete once more below.
                if st & (DIRTY | REMOTE) != 0 && !early.contains(&p) {
                    doomed.push(p);
                }
                ABSENT
            } else if st & (DIRTY | REMOTE) != 0 {
                ABSENT | REMOTE
            } else {
                ABSENT
            };
            sh.set(p, new);
        }
    }
    sh.c.clean_drops.fetch_add(clean, Relaxed);
    sh.c.written.fetch_add(written, Relaxed);
    sh.c.moved.fetch_add(as_u64(moved.len()), Relaxed);
    sh.c.inplace.fetch_add(as_u64(inplace.len()), Relaxed);
    for (s, n) in runs(&victims) {
        let _ = sh.uffd.wake(sh.addr(s), as_u64(n) * PS);
    }
    // The staging copies go in one call; its REMOVE event lies outside the region and is ignored.
    if let (Some(st0), false) = (stage, moved.is_empty()) {
        if let Err(e) = retry_busy(|| sh.evictor_dontneed(st0, as_u64(victims.len()) * PS)) {
            limited!(error, error = %e, "cannot free the eviction staging area");
        }
    }
    sh.delete_remote(&doomed);
    victims.len()
}

/// Clears `INPLACE` on `pages` under `core` (after which no zeros are mapped over them, see
/// `zero_while_evicting`) and returns the lock, for a caller that reads more state under it.
fn clear_inplace<'a>(sh: &'a Shared, pages: &[u64]) -> parking_lot::MutexGuard<'a, Core> {
    let core = sh.core.lock();
    for &p in pages {
        sh.set(p, sh.st(p) & !INPLACE);
    }
    core
}

/// Drops region pages (sorted) with one `MADV_DONTNEED` per contiguous run. Each range is recorded first, so that
/// the event thread recognises the REMOVE event the drop raises as the eviction's own and not a release.
fn drop_in_place(sh: &Shared, pages: &[u64]) {
    for (s, n) in runs(pages) {
        let (a, l) = (sh.addr(s), as_u64(n) * PS);
        sh.core.lock().self_removes.push((a, a + l));
        if let Err(e) = sh.evictor_dontneed(a, l) {
            limited!(error, error = %e, "cannot drop evicted pages");
            let mut core = sh.core.lock();
            if let Some(i) = core.self_removes.iter().position(|&r| r == (a, a + l)) {
                core.self_removes.swap_remove(i);
            }
        }
    }
}

/// Writes dirty pages (page, address of its contents) to memd in pipelined batches. False when memd is
/// unreachable for good (the region is then dead).
fn write_back(sh: &Shared, dirty: &[(u64, u64)]) -> bool {
    let gather = |chunk: &[(u64, u64)]| {
        let mut data = vec![0u8; chunk.len() * PAGE_SIZE];
        for (i, &(_, a)) in chunk.iter().enumerate() {
            // SAFETY: `a` is a mapped page this thread owns for the eviction: a staging slot it moved the page
            // into, or a write-protected region page that only this thread drops, after the write-back.
            let src = unsafe { std::slice::from_raw_parts(as_usize(a) as *const u8, PAGE_SIZE) };
            data[i * PAGE_SIZE..(i + 1) * PAGE_SIZE].copy_from_slice(src);
        }
        (chunk.iter().map(|&(p, _)| p).collect::<Vec<u64>>(), data)
    };
    let mut pendings = Vec::new();
    for chunk in dirty.chunks(IO_CHUNK) {
        let (pages, data) = gather(chunk);
        pendings.push((chunk, sh.store.submit(Request::WritePages { region: sh.region_id, pages, data })));
    }
    for (chunk, p) in pendings {
        let r = p.and_then(Pending::wait).or_else(|e| {
            if e.is_gone() {
                return Err(e);
            }
            let (pages, data) = gather(chunk);
            sh.with_retry(|| sh.store.write_pages(sh.region_id, &pages, &data)).map(|()| Reply::Done)
        });
        if let Err(e) = r {
            sh.die(&e);
            return false;
        }
    }
    true
}

fn eventfd() -> std::io::Result<OwnedFd> {
    // SAFETY: eventfd(2) returns a new descriptor or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just created and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Region {
    /// Reserves and registers a region of `cfg.size` bytes whose pages live in `store`, cached locally up to
    /// `cfg.local_mem`, and starts its threads.
    pub fn new(cfg: RegionConfig, store: Arc<dyn FarStore>) -> Result<Region, RegionError> {
        let _g = internal::enter();
        let size = cfg.size.checked_next_multiple_of(PAGE_SIZE).unwrap_or(0);
        if size == 0 {
            return Err(RegionError::Config(format!("size {} must be at least one page", cfg.size)));
        }
        let budget = cfg.local_mem / PAGE_SIZE;
        if budget < 16 {
            return Err(RegionError::Config(format!(
                "local_mem {} must hold at least 16 pages ({} bytes)",
                cfg.local_mem,
                16 * PAGE_SIZE
            )));
        }
        if u32::try_from(budget).is_err() || u32::try_from(size / PAGE_SIZE + 1).is_err() {
            return Err(RegionError::Config("more than 2^32 pages".into()));
        }
        if cfg.handler_threads == 0 {
            return Err(RegionError::Config("handler_threads must be at least 1".into()));
        }
        let npages = size / PAGE_SIZE;
        let map = Mapping::new(size).map_err(|source| RegionError::Map { what: "the region", source })?;
        let meta = |what| move |source| RegionError::Map { what, source };
        // UFFDIO_API may be called once per descriptor: learn what the kernel offers on a probe descriptor.
        let offered = Uffd::open()?.api(0)?;
        let uffd = Uffd::open()?;
        let want = (offered & raw::FEATURE_MOVE)
            | raw::FEATURE_PAGEFAULT_FLAG_WP
            | raw::FEATURE_EVENT_REMOVE
            | raw::FEATURE_EVENT_UNMAP
            | raw::FEATURE_EVENT_REMAP
            | raw::FEATURE_POISON
            | if cfg.follow_faults { offered & raw::FEATURE_THREAD_ID } else { 0 };
        uffd.api(want).map_err(|e| {
            if e.errno == libc::EINVAL {
                RegionError::Unsupported("write-protect faults, REMOVE/UNMAP/REMAP events or POISON".into())
            } else {
                RegionError::Uffd(e)
            }
        })?;
        let base = as_u64(map.ptr() as usize);
        let ioctls = uffd.register(base, as_u64(size), raw::REGISTER_MODE_MISSING | raw::REGISTER_MODE_WP)?;
        for (nr, name) in [
            (linux_raw_sys::general::_UFFDIO_COPY, "UFFDIO_COPY"),
            (linux_raw_sys::general::_UFFDIO_WRITEPROTECT, "UFFDIO_WRITEPROTECT"),
            (linux_raw_sys::general::_UFFDIO_POISON, "UFFDIO_POISON"),
        ] {
            if ioctls & (1u64 << nr) == 0 {
                return Err(RegionError::Unsupported(name.into()));
            }
        }
        let evictors = cfg.handler_threads.saturating_sub(1).max(1);
        let staging = if cfg.move_eviction && offered & raw::FEATURE_MOVE != 0 {
            let m = Mapping::new(evictors * EVICT_BATCH * PAGE_SIZE).map_err(meta("the eviction staging area"))?;
            // UFFDIO_MOVE needs its destination registered with the same userfaultfd and mapped alike.
            uffd.register(
                as_u64(m.ptr() as usize),
                as_u64(m.len()),
                raw::REGISTER_MODE_MISSING | raw::REGISTER_MODE_WP,
            )?;
            Some(m)
        } else {
            None
        };
        let free: Table<AtomicU32> = Table::new(budget).map_err(meta("frame tables"))?;
        for f in 0..budget {
            free.at(f).store(u32::try_from(f).unwrap_or(0), Relaxed);
        }
        let reserve = (budget / 16).clamp(2, 1024);
        let server = store.describe();
        let sh = Arc::new(Shared {
            base,
            len: as_u64(size),
            npages: as_u64(npages),
            budget,
            reserve,
            high: (2 * reserve).min(budget / 2),
            low: (reserve + reserve / 2).min(budget / 2),
            uffd,
            efd: eventfd().map_err(RegionError::Thread)?,
            store,
            region_id: farmem_memd::far::fresh_space_id(),
            core: Mutex::new(Core { hand: 0, free_len: budget, free_head: 0, self_removes: Vec::new() }),
            evict_cv: Condvar::new(),
            state: Table::new(npages).map_err(meta("page states"))?,
            frame_of: Table::new(npages).map_err(meta("page frames"))?,
            frames: Table::new(budget).map_err(meta("frame tables"))?,
            free,
            zero: Mapping::new(64 * PAGE_SIZE).map_err(meta("a zero page buffer"))?,
            staging,
            evictor_tids: Mutex::new(Vec::new()),
            awake: if cfg.keep_awake.is_zero() {
                None
            } else {
                Some(KeepAwake::start(cfg.keep_awake).map_err(RegionError::Thread)?)
            },
            c: Counters::default(),
            drops: AtomicU32::new(0),
            hist: Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1, 60_000_000_000, 3)
                    .map_err(|e| RegionError::Config(format!("histogram: {e}")))?,
            ),
            trace: cfg.trace.then(|| Mutex::new(Vec::new())),
            stop: AtomicBool::new(false),
            stop_events: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            dead_note: Once::new(),
            cfg: RegionConfig { size, ..cfg },
            owner_pid: std::process::id(),
            server,
        });
        // The region's pages are this process's memory: tie them to the client's session, so memd drops them
        // once the process is gone, however it ends.
        sh.store.own(farmem_memd::proto::OwnKind::Region, sh.region_id)?;
        let mut region = Region { sh: Arc::clone(&sh), threads: Vec::new(), map };
        let s = Arc::clone(&sh);
        let max_ra = if sh.cfg.readahead { sh.cfg.max_readahead } else { 0 };
        region.spawn("farmem-uffd-event", move || {
            let follow = Follower::new(s.cfg.follow_faults);
            let mut ev = EventLoop {
                follow,
                sh: s,
                deferred: Vec::new(),
                staged: std::collections::VecDeque::new(),
                early: Vec::new(),
                inflight: std::collections::VecDeque::new(),
                det: Detector::new(max_ra),
                msgs: Vec::with_capacity(64),
            };
            ev.run();
        })?;
        for i in 0..evictors {
            let s = Arc::clone(&sh);
            region.spawn(&format!("farmem-uffd-evict{i}"), move || {
                s.evictor_tids.lock().push(affinity::gettid());
                evictor(&s, i);
            })?;
        }
        crate::fork::register(&sh);
        Ok(region)
    }

    fn spawn(&mut self, name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), RegionError> {
        let h = std::thread::Builder::new()
            .name(name.to_string())
            .stack_size(256 << 10)
            .spawn(move || {
                internal::mark_thread();
                f();
            })
            .map_err(RegionError::Thread)?;
        self.threads.push(h);
        Ok(())
    }

    /// First byte of the region.
    pub fn base(&self) -> *mut u8 {
        self.map.ptr()
    }

    /// Length in bytes (the configured size rounded up to pages).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the region is empty (never: it holds at least one page).
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Whether `addr` lies inside the region.
    pub fn contains(&self, addr: usize) -> bool {
        let b = self.map.ptr() as usize;
        addr >= b && addr - b < self.map.len()
    }

    /// Releases `[offset, offset+len)` (page aligned): local and remote copies are dropped and the pages read
    /// as zeros afterwards.
    pub fn release(&self, offset: usize, len: usize) -> Result<(), RegionError> {
        let _g = internal::enter();
        if !offset.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
            return Err(RegionError::Range(format!(
                "offset {offset} and length {len} must be multiples of {PAGE_SIZE}"
            )));
        }
        if offset.checked_add(len).is_none_or(|e| e > self.len()) {
            return Err(RegionError::Range(format!(
                "[{offset}, {offset}+{len}) is outside the region of {} bytes",
                self.len()
            )));
        }
        if len == 0 {
            return Ok(());
        }
        let start = self.sh.base + as_u64(offset);
        if std::process::id() != self.sh.owner_pid {
            crate::fork::release_in_child(&self.sh, start, as_u64(len));
            return Ok(());
        }
        // Apply the release here (so memd copies are gone when this returns), then drop the local pages. The
        // REMOVE event the drop raises finds nothing left to do. A page being installed meanwhile is either
        // dropped by the `MADV_DONTNEED` below or, when its install retries after that event, skipped (its
        // RELEASED flag is set before the event exists).
        self.sh.on_remove(start, start + as_u64(len), false);
        raw::dontneed(start, as_u64(len))?;
        Ok(())
    }

    /// The configuration the region runs with (its size rounded up to whole pages).
    pub fn config(&self) -> &RegionConfig {
        &self.sh.cfg
    }

    /// Counters and fault-latency percentiles.
    pub fn stats(&self) -> RegionStats {
        let _g = internal::enter();
        let sh = &self.sh;
        let c = &sh.c;
        let h = sh.hist.lock();
        let resident = as_u64(sh.resident(&sh.core.lock()));
        RegionStats {
            missing_faults: c.missing.load(Relaxed),
            wp_faults: c.wp.load(Relaxed),
            zero_fills: c.zero_fills.load(Relaxed),
            pages_fetched: c.fetched.load(Relaxed),
            pages_written: c.written.load(Relaxed),
            clean_drops: c.clean_drops.load(Relaxed),
            readahead_pages: c.ra_pages.load(Relaxed),
            readahead_hits: c.ra_hits.load(Relaxed),
            readahead_writable: c.ra_writable.load(Relaxed),
            predicted_writable: c.predicted_writable.load(Relaxed),
            released_pages: c.released.load(Relaxed),
            deferred_faults: c.deferred.load(Relaxed),
            poisoned_pages: c.poisoned.load(Relaxed),
            evicted_moved: c.moved.load(Relaxed),
            evicted_in_place: c.inplace.load(Relaxed),
            cpu_moves: c.cpu_moves.load(Relaxed),
            keep_awake_threads: self.sh.awake.as_ref().map_or(0, |k| as_u64(k.spinners())),
            keep_awake_spin_us: self
                .sh
                .awake
                .as_ref()
                .map_or(0, |k| u64::try_from(k.spun().as_micros()).unwrap_or(u64::MAX)),
            resident_pages: resident,
            peak_resident_pages: c.peak.load(Relaxed),
            budget_pages: as_u64(sh.budget),
            latency_count: h.len(),
            latency_p50_ns: h.value_at_quantile(0.5),
            latency_p90_ns: h.value_at_quantile(0.9),
            latency_p99_ns: h.value_at_quantile(0.99),
            latency_max_ns: h.max(),
        }
    }

    /// Clears the fault-latency histogram (benchmarks measure one phase at a time).
    pub fn reset_latency(&self) {
        self.sh.hist.lock().reset();
    }

    /// The pages of every missing fault so far, in order (empty unless `RegionConfig::trace`).
    pub fn fault_trace(&self) -> Vec<u64> {
        let _g = internal::enter();
        self.sh.trace.as_ref().map(|t| t.lock().clone()).unwrap_or_default()
    }

    /// The id of this region's page space in memd.
    pub fn region_id(&self) -> u64 {
        self.sh.region_id
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        let _g = internal::enter();
        crate::fork::unregister(&self.sh);
        if std::process::id() != self.sh.owner_pid {
            // A forked child: the threads and the memd pages belong to the parent.
            return;
        }
        self.sh.stop.store(true, Relaxed);
        self.sh.evict_cv.notify_all();
        // Eviction threads first (the event thread serves their REMOVE events), then the event thread.
        let mut threads = std::mem::take(&mut self.threads);
        let event = if threads.is_empty() { None } else { Some(threads.remove(0)) };
        for h in threads {
            let _ = h.join();
        }
        self.sh.stop_events.store(true, Relaxed);
        self.sh.notify_event_thread();
        if let Some(h) = event {
            let _ = h.join();
        }
        if !self.sh.dead.load(Relaxed) {
            if let Err(e) = self.sh.store.drop_region(self.sh.region_id) {
                tracing::warn!(error = %e, "could not drop the region's pages from memd");
            }
        }
    }
}
