//! Keeping the region's threads on the CPU of the thread that faults.
//!
//! A demand fault is a chain of hand-offs: the faulting thread wakes the event thread, which asks memd and is woken
//! by its reply, then wakes the faulting thread. On a machine whose idle CPUs sleep (a VM's halted vCPUs), every
//! hand-off to another CPU pays for waking it: measured on our 2-vCPU VM, a bare userfaultfd round trip costs
//! 6.7 µs with the handler on the faulting thread's CPU and 21.5 µs with it on the other one, a memd 4 KiB read
//! 15 µs against 36–52 µs. The scheduler spreads the chain over idle CPUs (the event thread spins, so whatever it
//! wakes goes elsewhere), which made a region fault 70–77 µs where the same chain on one CPU takes 24–25 µs.
//!
//! So, when [`crate::RegionConfig::follow_faults`] asks for it and the faulting threads run on one CPU, the event
//! thread and the eviction threads are pinned to it
//! ([`Follower`]); when faults come from several CPUs they are unpinned again. A faulting thread the scheduler
//! moves to another CPU is followed at the next sample. The faulting thread's CPU is read
//! from `/proc/self/task/TID/stat` (field 39) for one fault in [`SAMPLE_EVERY`], the thread id coming with the
//! fault message (`UFFD_FEATURE_THREAD_ID`).
//!
//! It pins only the region's own threads. On a quiet 2-vCPU VM memd's worker (in-process in the benchmarks) still
//! woke on the other, idle vCPU, the region fault stayed at 73–79 µs with following on or off, and the scheduler
//! moved the faulting thread away from the pinned event thread's CPU about 130 times per run, each move followed;
//! on a busy machine it removed the slow mode (0 slow runs in 14 against 4 in 14). Hence it is off by default.
//! The cost is better removed at its source: with the guest's halt polling on
//! (`/sys/module/haltpoll/parameters/guest_halt_poll_ns=200000`) the same quiet VM served region faults in
//! 24–29 µs without any pinning.
//!
//! # Safety
//! `sched_getaffinity`/`sched_setaffinity` are called with a live `cpu_set_t` of the size passed; they have no other
//! memory-safety preconditions.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// One fault in this many has its thread's CPU read.
pub(crate) const SAMPLE_EVERY: u32 = 32;
/// Consecutive samples on one CPU before the region's threads move there.
const AGREE: u32 = 2;

/// The calling thread's id.
pub(crate) fn gettid() -> i32 {
    // SAFETY: gettid(2) has no preconditions.
    unsafe { libc::gettid() }
}

/// The CPUs `tid` (0 = the calling thread) may run on.
fn get_mask(tid: i32) -> Option<libc::cpu_set_t> {
    // SAFETY: an all-zero cpu_set_t is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &raw mut set) };
    (rc == 0).then_some(set)
}

/// Restricts `tid` (0 = the calling thread) to `set`; false if the kernel refused.
fn set_mask(tid: i32, set: &libc::cpu_set_t) -> bool {
    // SAFETY: `set` is a live cpu_set_t of the size passed.
    unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), set) == 0 }
}

/// Most CPUs a `cpu_set_t` holds.
const SETSIZE: usize = libc::CPU_SETSIZE as usize;

/// The set of `cpu` alone (`cpu < SETSIZE`).
fn only(cpu: usize) -> libc::cpu_set_t {
    assert!(cpu < SETSIZE, "cpu {cpu} beyond a cpu_set_t");
    // SAFETY: an all-zero cpu_set_t is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE (checked above), so the bit is inside `set`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    set
}

/// Whether `set` holds `cpu`.
fn has(set: &libc::cpu_set_t, cpu: usize) -> bool {
    // SAFETY: `cpu` is below CPU_SETSIZE, so the bit read is inside `set`.
    cpu < SETSIZE && unsafe { libc::CPU_ISSET(cpu, set) }
}

/// The CPU a thread of this process last ran on: field 39 of its `stat`, read through a descriptor kept open
/// for the thread seen last (`pread` at offset 0 regenerates the file).
#[derive(Debug, Default)]
struct CpuProbe {
    file: Option<(u32, File)>,
    buf: Vec<u8>,
}

impl CpuProbe {
    fn last_cpu(&mut self, tid: u32) -> Option<usize> {
        if self.file.as_ref().is_none_or(|(t, _)| *t != tid) {
            self.file = File::open(format!("/proc/self/task/{tid}/stat")).ok().map(|f| (tid, f));
        }
        let (_, f) = self.file.as_ref()?;
        self.buf.resize(1024, 0);
        let n = f.read_at(&mut self.buf, 0).ok()?;
        parse_cpu(&self.buf[..n])
    }
}

/// Field 39 (`processor`) of a `/proc/.../stat` line. The command name (field 2) is in parentheses and may hold
/// spaces and parentheses itself, so fields are counted from the last `)`.
fn parse_cpu(stat: &[u8]) -> Option<usize> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    // After the `)` come fields 3, 4, ...: field 39 is the 37th.
    rest.split_ascii_whitespace().nth(36)?.parse().ok()
}

/// What [`Follower::decide`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Move {
    Stay,
    Pin(usize),
    Unpin,
}

/// Moves the event thread and the eviction threads to the CPU the faulting threads run on, while they all run
/// on one; see the module documentation. Owned by the event thread.
#[derive(Debug)]
pub(crate) struct Follower {
    /// The CPUs the region's threads were allowed at start (restored when unpinned); `None` disables following.
    home: Option<libc::cpu_set_t>,
    probe: CpuProbe,
    count: u32,
    last: Option<usize>,
    agree: u32,
    pinned: Option<usize>,
    /// The region's readahead page count at the last sample.
    readahead: u64,
}

impl Follower {
    /// A follower for the calling (event) thread; `enabled` false makes every call a no-op.
    pub(crate) fn new(enabled: bool) -> Follower {
        let home = if enabled { get_mask(0) } else { None };
        Follower { home, probe: CpuProbe::default(), count: 0, last: None, agree: 0, pinned: None, readahead: 0 }
    }

    /// Called for every page fault with the faulting thread's id (0 if unknown) and the region's count of pages
    /// read ahead so far; `others` gives the eviction threads' ids, moved along with the calling thread. True when
    /// the threads were pinned or unpinned.
    ///
    /// While pages are being read ahead the threads stay unpinned: a stream's faults are few and its throughput
    /// comes from the event thread installing readahead on one CPU while the program reads on the other.
    pub(crate) fn on_fault(&mut self, tid: u32, readahead: u64, others: &dyn Fn() -> Vec<i32>) -> bool {
        let Some(home) = self.home else { return false };
        if tid == 0 {
            return false;
        }
        self.count += 1;
        if self.count < SAMPLE_EVERY {
            return false;
        }
        self.count = 0;
        let streaming = readahead != self.readahead;
        self.readahead = readahead;
        let decision = if streaming {
            self.last = None;
            self.agree = 0;
            if self.pinned.is_some() {
                Move::Unpin
            } else {
                Move::Stay
            }
        } else {
            let Some(cpu) = self.probe.last_cpu(tid) else { return false };
            self.decide(cpu, &home)
        };
        let (set, pinned) = match decision {
            Move::Stay => return false,
            Move::Pin(c) => (only(c), Some(c)),
            Move::Unpin => (home, None),
        };
        if !set_mask(0, &set) {
            return false;
        }
        for t in others() {
            set_mask(t, &set);
        }
        self.pinned = pinned;
        true
    }

    /// What to do after a sample of the faulting thread's CPU: pin once [`AGREE`] + 1 samples in a row agree;
    /// while pinned with the last two samples on the pinned CPU (one faulting thread), follow a sample elsewhere
    /// at once (the scheduler moved that thread); otherwise a sample elsewhere unpins.
    fn decide(&mut self, cpu: usize, home: &libc::cpu_set_t) -> Move {
        let settled = self.pinned.is_some() && self.last == self.pinned && self.agree >= 1;
        if self.last == Some(cpu) {
            self.agree = self.agree.saturating_add(1);
        } else {
            self.last = Some(cpu);
            self.agree = 0;
        }
        if (self.agree >= AGREE || settled) && self.pinned != Some(cpu) && has(home, cpu) {
            Move::Pin(cpu)
        } else if self.agree == 0 && self.pinned.is_some_and(|p| p != cpu) {
            Move::Unpin
        } else {
            Move::Stay
        }
    }

    /// The CPU the region's threads are pinned to, if any.
    #[cfg(test)]
    fn pinned(&self) -> Option<usize> {
        self.pinned
    }
}

/// The CPUs the calling thread may run on, in order (empty if they cannot be learned).
pub(crate) fn allowed_cpus() -> Vec<usize> {
    cpus_of(0)
}

/// The CPUs thread `tid` (0 = the calling thread) may run on, in order.
pub(crate) fn cpus_of(tid: i32) -> Vec<usize> {
    get_mask(tid).map(|m| (0..SETSIZE).filter(|&c| has(&m, c)).collect()).unwrap_or_default()
}

/// Pins the calling thread to `cpu`; false if the kernel refused.
pub(crate) fn pin_self(cpu: usize) -> bool {
    cpu < SETSIZE && set_mask(0, &only(cpu))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_processor_field_after_an_awkward_command_name() {
        let mut line = String::from("1234 (a) b (c) R");
        for f in 4..=38 {
            line.push_str(&format!(" {f}"));
        }
        line.push_str(" 7 0 0 0");
        assert_eq!(parse_cpu(line.as_bytes()), Some(7));
        assert_eq!(parse_cpu(b"12 (x) R 1 2"), None);
        assert_eq!(parse_cpu(b"no parenthesis"), None);
    }

    #[test]
    fn reads_this_threads_cpu() {
        let mut p = CpuProbe::default();
        let tid = u32::try_from(gettid()).unwrap();
        let cpu = p.last_cpu(tid).expect("/proc/self/task/TID/stat is readable");
        let n = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        assert!(cpu < n.max(SETSIZE), "cpu {cpu}");
    }

    /// Feeds samples to `decide` as if each were applied; returns the moves.
    fn run(f: &mut Follower, cpus: &[usize]) -> Vec<Move> {
        let mut home = only(0);
        for c in 1..4 {
            // SAFETY: 1..4 is inside a cpu_set_t.
            unsafe { libc::CPU_SET(c, &mut home) };
        }
        cpus.iter()
            .map(|&c| {
                let m = f.decide(c, &home);
                match m {
                    Move::Pin(c) => f.pinned = Some(c),
                    Move::Unpin => f.pinned = None,
                    Move::Stay => {}
                }
                m
            })
            .collect()
    }

    #[test]
    fn follows_one_moving_thread_at_once_and_unpins_for_threads_on_several_cpus() {
        use Move::{Pin, Stay, Unpin};
        let mut f = Follower::new(false);
        // One thread on CPU 1: pinned after three agreeing samples; moved to 2: followed at the first sample.
        assert_eq!(run(&mut f, &[1, 1, 1, 1, 2, 2, 2]), [Stay, Stay, Pin(1), Stay, Pin(2), Stay, Stay]);
        // Threads on CPUs 2 and 3 faulting by turns: one move, then unpinned, and never pinned again.
        assert_eq!(run(&mut f, &[3, 2, 3, 2, 3, 2]), [Pin(3), Unpin, Stay, Stay, Stay, Stay]);
        // A CPU outside the start mask is never pinned to.
        assert_eq!(run(&mut f, &[9, 9, 9, 9]), [Stay, Stay, Stay, Stay]);
    }

    #[test]
    fn pins_to_the_faulting_threads_cpu_and_unpins_when_faults_spread() {
        // Runs on its own thread: it changes that thread's affinity.
        std::thread::spawn(|| {
            let me = u32::try_from(gettid()).unwrap();
            // Keep this thread on one CPU, so that every sample agrees.
            let here = CpuProbe::default().last_cpu(me).unwrap();
            assert!(set_mask(0, &only(here)));
            let home = get_mask(0).unwrap();
            let mut f = Follower::new(true);
            // Faults from this thread: after AGREE + 1 samples on one CPU the follower pins itself there.
            for _ in 0..SAMPLE_EVERY * (AGREE + 2) {
                let _ = f.on_fault(me, 0, &Vec::new);
            }
            let cpu = f.pinned().expect("pinned after agreeing samples");
            assert_eq!(cpu, here);
            let now = get_mask(0).unwrap();
            assert!(has(&now, cpu));
            assert_eq!((0..SETSIZE).filter(|&c| has(&now, c)).count(), 1);
            // Pages read ahead since the last sample unpin (restore the start mask), and keep it unpinned.
            for n in 1..=SAMPLE_EVERY * (AGREE + 2) {
                let _ = f.on_fault(me, u64::from(n), &Vec::new);
            }
            assert_eq!(f.pinned(), None);
            let now = get_mask(0).unwrap();
            assert!((0..SETSIZE).all(|c| has(&now, c) == has(&home, c)));
            for _ in 0..SAMPLE_EVERY * (AGREE + 2) {
                let _ = f.on_fault(me, 0, &Vec::new);
            }
            assert_eq!(f.pinned(), Some(here));
            // A sample from another CPU unpins (restores the start mask).
            f.last = Some(usize::MAX);
            f.agree = 0;
            f.pinned = Some(cpu + 1);
            for _ in 0..SAMPLE_EVERY {
                let _ = f.on_fault(me, 0, &Vec::new);
            }
            assert_eq!(f.pinned(), None);
            let now = get_mask(0).unwrap();
            assert!((0..SETSIZE).all(|c| has(&now, c) == has(&home, c)));
            // Disabled: nothing happens.
            let mut off = Follower::new(false);
            for _ in 0..SAMPLE_EVERY * 4 {
                assert!(!off.on_fault(me, 0, &Vec::new));
            }
            assert_eq!(off.pinned(), None);
        })
        .join()
        .unwrap();
    }
}
