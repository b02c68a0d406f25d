//! Keeping the machine's idle CPUs awake while faults flow.
//!
//! A region fault is a chain of thread wake-ups: the faulting thread wakes the event thread, which asks memd and
//! is woken by its reply, then wakes the faulting thread. The scheduler puts each woken thread on an idle CPU if
//! there is one, and on a VM whose idle vCPUs halt (a guest without halt polling: `guest_halt_poll_ns` = 0),
//! waking a halted vCPU costs the host's round trip to schedule it again — measured ≈ 15 µs on our 2-vCPU VM,
//! where the whole fault's work on one CPU takes 24–25 µs. A quiet machine then serves faults in 70–80 µs, and a
//! busy one (where no vCPU halts) in ~25.
//!
//! [`KeepAwake`](crate::awake::KeepAwake) does in the process what the guest's halt polling would do in the kernel:
//! while faults arrive, one spinner thread per CPU runs at `SCHED_IDLE` priority, so the CPU does not halt and a thread
//! woken onto it starts at once. A `SCHED_IDLE` thread runs only when nothing else on its CPU wants to; any other
//! thread that wakes there preempts it, and the scheduler counts its CPU as idle when placing woken threads. A spinner
//! spins for [`crate::RegionConfig::keep_awake`] after the last fault it saw and then sleeps until the next fault, so a
//! program that does not fault costs nothing. The price, while faults flow, is the idle CPUs' time (and power): the
//! same trade as halt polling, bounded by the window.
//!
//! It removes only part of the cost. Measured with the paired fault rounds on a quiet 2-vCPU VM, alternating
//! builds: region fault 46–67 µs with spinners against 70–93 µs without. A woken thread is still placed on the
//! other vCPU (the scheduler counts a spinner's CPU as idle), and that cross-vCPU hand-off is not free; the
//! chain on one CPU, as on a busy machine where no CPU is idle, takes ~26 µs. A spinner at the lowest ordinary
//! priority (nice 19) instead makes its CPU look busy, which keeps the chain on one CPU: one such run gave
//! 25.9 µs, but unpinned the spinner moved between CPUs and the next run gave 59.9 µs. On a busy machine the
//! spinners cost ~2 µs per fault (28 against 26 µs).
//!
//! # Safety
//! `sched_setscheduler` is called with a live `sched_param`; it has no other memory-safety preconditions.

use parking_lot::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Most spinner threads (one per CPU, on the CPUs the process may use, up to this many).
const MAX_SPINNERS: usize = 64;
/// The window where [`default_window`] turns spinning on.
const WINDOW: Duration = Duration::from_micros(200);
/// Most CPUs for which [`default_window`] turns spinning on (beyond, the spinners' CPU time and power are not
/// worth it by default, and a busy many-core machine rarely leaves the chain's CPUs idle).
const AUTO_MAX_CPUS: usize = 16;

/// The keep-awake window `FARMEM_KEEP_AWAKE=auto` picks: 200 µs on a virtual machine whose idle vCPUs halt
/// without polling (the `hypervisor` CPU flag, and the guest's `haltpoll` idle driver absent or with
/// `guest_halt_poll_ns` 0) and at most 16 CPUs; zero (off) elsewhere.
pub fn default_window() -> Duration {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let poll_ns = std::fs::read_to_string("/sys/module/haltpoll/parameters/guest_halt_poll_ns").ok();
    let ncpus = crate::affinity::allowed_cpus().len();
    if auto_on(&cpuinfo, poll_ns.as_deref(), ncpus) {
        WINDOW
    } else {
        Duration::ZERO
    }
}

/// The decision of [`default_window`], from `/proc/cpuinfo`, the guest halt-polling parameter (if the module is
/// loaded) and the number of CPUs.
fn auto_on(cpuinfo: &str, guest_halt_poll_ns: Option<&str>, ncpus: usize) -> bool {
    let vm = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_once(':').is_some_and(|(_, f)| f.split_whitespace().any(|w| w == "hypervisor")));
    let polls = guest_halt_poll_ns.and_then(|v| v.trim().parse::<u64>().ok()).is_some_and(|ns| ns > 0);
    vm && !polls && (1..=AUTO_MAX_CPUS).contains(&ncpus)
}

#[derive(Debug)]
struct Inner {
    /// Bumped on every batch of faults.
    seq: AtomicU64,
    /// Spinners asleep (waiting for the next fault).
    sleeping: AtomicUsize,
    /// Spinners that have set their CPU and priority.
    ready: AtomicUsize,
    /// The spinners' thread ids.
    tids: Mutex<Vec<i32>>,
    stop: AtomicBool,
    window: Duration,
    /// Nanoseconds spent spinning, all spinners together.
    spun_ns: AtomicU64,
}

/// Spinner threads that keep idle CPUs from halting for a while after each [`KeepAwake::poke`] (see the module
/// docs). A region with [`crate::RegionConfig::keep_awake`] set runs one and pokes it on every batch of faults;
/// benchmarks use one directly to measure a floor under the same conditions.
#[derive(Debug)]
pub struct KeepAwake {
    inner: Arc<Inner>,
    threads: Vec<JoinHandle<()>>,
    /// The process that started the spinners (a forked child has none of them).
    owner_pid: u32,
}

impl KeepAwake {
    /// Starts one spinner per CPU this process may run on (at most 64), each pinned to its CPU,
    /// spinning for `window` after each [`KeepAwake::poke`].
    pub fn start(window: Duration) -> std::io::Result<KeepAwake> {
        let inner = Arc::new(Inner {
            seq: AtomicU64::new(0),
            sleeping: AtomicUsize::new(0),
            ready: AtomicUsize::new(0),
            tids: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            window,
            spun_ns: AtomicU64::new(0),
        });
        let cpus = crate::affinity::allowed_cpus();
        let mut k = KeepAwake { inner, threads: Vec::new(), owner_pid: std::process::id() };
        for cpu in cpus.into_iter().take(MAX_SPINNERS) {
            let inner = Arc::clone(&k.inner);
            let h = std::thread::Builder::new().name(format!("farmem-uffd-awake{cpu}")).stack_size(64 << 10).spawn(
                move || {
                    farmem_memd::internal::mark_thread();
                    crate::affinity::pin_self(cpu);
                    set_idle_policy();
                    inner.tids.lock().push(crate::affinity::gettid());
                    inner.ready.fetch_add(1, SeqCst);
                    spin(&inner);
                },
            )?;
            k.threads.push(h);
        }
        // Return once every spinner runs where and as it should (a few scheduler ticks at most).
        while k.inner.ready.load(SeqCst) < k.threads.len() {
            std::thread::sleep(Duration::from_micros(100));
        }
        Ok(k)
    }

    /// A fault arrived: spinners spin for another window (and sleeping ones wake).
    pub fn poke(&self) {
        self.inner.seq.fetch_add(1, SeqCst);
        // No lock here: a `SCHED_IDLE` spinner holding one could be kept off its CPU for as long as other threads
        // want it, and the event thread would wait with it. A spinner counts itself asleep before its last look at
        // `seq` (both sequentially consistent), so either it sees this poke or the poke sees it asleep; an unpark
        // before its park makes the park return at once.
        if self.inner.sleeping.load(SeqCst) > 0 {
            for h in &self.threads {
                h.thread().unpark();
            }
        }
    }

    /// Spinner threads running.
    pub fn spinners(&self) -> usize {
        self.threads.len()
    }

    /// Time spent spinning so far, all spinners together.
    pub fn spun(&self) -> Duration {
        Duration::from_nanos(self.inner.spun_ns.load(Relaxed))
    }
}

impl Drop for KeepAwake {
    fn drop(&mut self) {
        if std::process::id() != self.owner_pid {
            // A forked child: the spinner threads exist only in the parent.
            std::mem::forget(std::mem::take(&mut self.threads));
            return;
        }
        self.inner.stop.store(true, SeqCst);
        for h in &self.threads {
            h.thread().unpark();
        }
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

/// Makes the calling thread `SCHED_IDLE` (it still spins if the kernel refuses: it then competes as an ordinary
/// thread for its window after each fault, which costs CPU but not correctness).
fn set_idle_policy() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a live sched_param; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &raw const param) };
    if rc != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot make a keep-awake spinner SCHED_IDLE");
    }
}

fn spin(k: &Inner) {
    let mut seen = k.seq.load(SeqCst);
    loop {
        // Asleep until poked (the first time, and after each window without faults).
        k.sleeping.fetch_add(1, SeqCst);
        while k.seq.load(SeqCst) == seen && !k.stop.load(SeqCst) {
            std::thread::park();
        }
        k.sleeping.fetch_sub(1, SeqCst);
        if k.stop.load(SeqCst) {
            return;
        }
        seen = k.seq.load(SeqCst);
        let start = Instant::now();
        let mut until = start + k.window;
        let mut n: u32 = 0;
        loop {
            std::hint::spin_loop();
            let s = k.seq.load(Relaxed);
            n = n.wrapping_add(1);
            if s == seen && !n.is_multiple_of(64) {
                continue;
            }
            let now = Instant::now();
            if s != seen {
                seen = s;
                until = now + k.window;
            }
            let stop = k.stop.load(Relaxed);
            if now >= until || stop {
                k.spun_ns.fetch_add(u64::try_from((now - start).as_nanos()).unwrap_or(u64::MAX), Relaxed);
                if stop {
                    return;
                }
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy_of(tid: i32) -> i32 {
        // SAFETY: sched_getscheduler has no memory-safety preconditions.
        unsafe { libc::sched_getscheduler(tid) }
    }

    #[test]
    fn spins_by_default_only_on_small_vms_whose_vcpus_halt() {
        let vm = "processor\t: 0\nflags\t\t: fpu vme hypervisor lahf_lm\n";
        let metal = "processor\t: 0\nflags\t\t: fpu vme lahf_lm\n";
        assert!(auto_on(vm, Some("0\n"), 2));
        assert!(auto_on(vm, None, 2), "no haltpoll driver: idle vCPUs halt at once");
        assert!(!auto_on(vm, Some("200000\n"), 2), "the guest polls already");
        assert!(!auto_on(vm, Some("0"), 64), "too many CPUs to spin on by default");
        assert!(!auto_on(metal, Some("0"), 2));
        assert!(!auto_on("flags: hypervisorish\n", None, 2));
        assert!(!auto_on(vm, None, 0));
    }

    /// Whether thread `tid` of this process is in interruptible sleep (state `S` in its `stat`, after the
    /// parenthesised command name).
    fn parked(tid: i32) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
        let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
        state == Some("S")
    }

    /// Waits (up to a generous deadline: spinners run only on otherwise idle CPU time) until `f` holds.
    fn eventually(what: &str, f: impl Fn() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(t.elapsed() < Duration::from_secs(60), "{what}: not after 60 s");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn spinners_spin_after_a_poke_then_sleep_and_wake_again() {
        let k = KeepAwake::start(Duration::from_millis(20)).unwrap();
        assert!(k.spinners() >= 1);
        // `sleeping` alone is not enough: a spinner that a poke has unparked still counts itself asleep until it
        // runs, and a `SCHED_IDLE` one may not run for a while. A spinner that is also in interruptible sleep
        // (state `S`: its only blocking call is the park) after a poke has woken, spun its window and parked again.
        let tids = k.inner.tids.lock().clone();
        let all_asleep = || k.inner.sleeping.load(SeqCst) == k.spinners() && tids.iter().all(|&t| parked(t));
        let window = Duration::from_millis(20) * u32::try_from(k.spinners()).unwrap();
        // Asleep until poked: no time accrues.
        eventually("spinners asleep at the start", all_asleep);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(k.spun(), Duration::ZERO, "spinners spun without a poke");
        // A poke wakes them for a window each, then they sleep again.
        for round in 1..=2 {
            let a = k.spun();
            k.poke();
            eventually("spinners spinning after a poke", || k.spun() > a);
            eventually("spinners asleep after their window", all_asleep);
            let b = k.spun();
            assert!(b >= a + window, "round {round}: {a:?} then {b:?}");
            std::thread::sleep(Duration::from_millis(30));
            assert_eq!(k.spun(), b, "spinners kept spinning without faults");
        }
    }

    #[test]
    fn spinners_run_at_idle_priority_on_their_own_cpu() {
        let k = KeepAwake::start(Duration::from_millis(1)).unwrap();
        let tids = k.inner.tids.lock().clone();
        assert_eq!(tids.len(), k.spinners());
        let mut cpus = Vec::new();
        for &tid in &tids {
            let comm = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).unwrap();
            assert!(comm.starts_with("farmem-uffd-awa"), "{comm:?}");
            assert_eq!(policy_of(tid), libc::SCHED_IDLE, "spinner {tid} is not SCHED_IDLE");
            let on = crate::affinity::cpus_of(tid);
            assert_eq!(on.len(), 1, "spinner {tid} is not pinned");
            cpus.push(on[0]);
        }
        cpus.sort_unstable();
        cpus.dedup();
        assert_eq!(cpus.len(), tids.len(), "two spinners on one CPU");
        drop(k);
        // `drop` joins the spinners, and a join returns when the kernel clears the thread's tid, which happens a
        // moment before the exiting thread leaves `/proc/self/task`: wait for it to go (a leaked spinner never does).
        for &tid in &tids {
            let task = format!("/proc/self/task/{tid}");
            eventually(&format!("spinner {tid} gone after drop"), || !std::path::Path::new(&task).exists());
        }
    }
}
