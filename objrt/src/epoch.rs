//! Deref scopes: an epoch-style pin that tells the evacuator when no thread can still hold a reference to an
//! object it has marked.
//!
//! Each thread has a `Record` whose state is `sequence << 1 | pinned`. Entering the outermost
//! [`DerefScope`] bumps the sequence and sets the pinned bit, then issues a `SeqCst` fence; leaving it
//! clears the bit with a release store. Nested scopes only count depth. `Domain::synchronize` (the grace
//! period) issues a `SeqCst` fence, snapshots every record, and waits until each record that was pinned has
//! changed. Why that suffices: the evacuator marks an object (a `SeqCst` CAS) *before* its fence; a mutator pins
//! (a store and a `SeqCst` fence) *before* it loads a pointer word. Either the mutator's pin precedes the
//! evacuator's fence — then the snapshot sees it pinned and waits for it to leave — or it follows, and then the
//! mutator's load sees the mark and cancels it (see [`crate::word::touch`]).
//!
//! One process-wide domain serves every runtime, so a scope opened for one runtime's objects covers any other's
//! as well: a dereference never has to check which runtime a scope belongs to.
//!
//! A scope is `!Send`; it must never be held across an `.await` (a future moved to another thread would carry
//! a pin that the other thread's record does not show). An async dereference, when it comes, will fetch with a
//! [`crate::runtime::FetchHandle`] outside any scope, await it, and then open a scope for synchronous access.

use crate::primitive::{fence, AtomicU64, Ordering};
use std::cell::{Cell, RefCell};
use std::marker::PhantomData;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// One thread's pin state.
#[derive(Debug)]
pub(crate) struct Record {
    state: AtomicU64,
    /// Dereferences of this thread's scopes served from local memory (written only by the owner).
    hits: std::sync::atomic::AtomicU64,
    /// The owning thread has exited.
    dead: std::sync::atomic::AtomicBool,
}

impl Record {
    fn new() -> Record {
        Record {
            state: AtomicU64::new(0),
            hits: std::sync::atomic::AtomicU64::new(0),
            dead: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Enters the outermost scope.
    pub(crate) fn pin(&self) {
        let s = self.state.load(Ordering::Relaxed);
        let next = ((s >> 1) + 1) << 1 | 1;
        // The store, then a SeqCst fence: orders it before every later pointer-word load (the evacuator has the
        // matching fence between its mark and its snapshot of the records).
        #[cfg(not(farmem_loom))]
        {
            self.state.store(next, Ordering::Relaxed);
            fence(Ordering::SeqCst);
        }
        // loom models SeqCst fences as AcqRel only; a SeqCst read-modify-write on both sides is what it can check.
        #[cfg(farmem_loom)]
        self.state.swap(next, Ordering::SeqCst);
    }

    /// Leaves the outermost scope.
    pub(crate) fn unpin(&self) {
        #[cfg(not(farmem_loom))]
        {
            let s = self.state.load(Ordering::Relaxed);
            self.state.store(s & !1, Ordering::Release);
        }
        #[cfg(farmem_loom)]
        self.state.fetch_and(!1, Ordering::SeqCst);
    }

    fn read(&self) -> u64 {
        #[cfg(not(farmem_loom))]
        {
            self.state.load(Ordering::Acquire)
        }
        #[cfg(farmem_loom)]
        {
            self.state.fetch_add(0, Ordering::SeqCst)
        }
    }
}

/// A set of records whose pins a grace period waits for.
#[derive(Debug, Default)]
pub(crate) struct Domain {
    records: Mutex<Vec<Arc<Record>>>,
    /// Hits of records whose threads have exited.
    retired_hits: std::sync::atomic::AtomicU64,
}

impl Domain {
    /// A new record for the calling thread.
    pub(crate) fn register(&self) -> Arc<Record> {
        let r = Arc::new(Record::new());
        lock(&self.records).push(Arc::clone(&r));
        r
    }

    /// Waits until every thread that was inside a scope when this was called has left that scope.
    pub(crate) fn synchronize(&self) {
        fence(Ordering::SeqCst);
        let snapshot: Vec<(Arc<Record>, u64)> = {
            let mut recs = lock(&self.records);
            recs.retain(|r| {
                let dead = r.dead.load(std::sync::atomic::Ordering::Acquire);
                if dead {
                    self.retired_hits.fetch_add(r.hits.load(std::sync::atomic::Ordering::Relaxed), RELAXED);
                }
                !dead
            });
            recs.iter().map(|r| (Arc::clone(r), r.read())).filter(|(_, s)| s & 1 == 1).collect()
        };
        for (r, s) in snapshot {
            let mut spins = 0u32;
            #[cfg(not(farmem_loom))]
            let start = std::time::Instant::now();
            #[cfg(not(farmem_loom))]
            let mut warned = false;
            // A thread that exited cannot hold references any more (scopes are `!Send`, and a reference borrows
            // its scope), even if it leaked a scope with `mem::forget`.
            while r.read() == s && !r.dead.load(std::sync::atomic::Ordering::Acquire) {
                #[cfg(not(farmem_loom))]
                if !warned && start.elapsed() > Duration::from_secs(2) {
                    warned = true;
                    tracing::warn!(
                        "farmem: the evacuator has waited 2 s for a thread to leave its DerefScope; scopes must be \
                         short (a scope held across a long wait, or leaked with mem::forget, stops evacuation)"
                    );
                }
                backoff(&mut spins);
            }
        }
    }

    /// Dereferences served from local memory, counted so far by the finished scopes of every thread.
    pub(crate) fn hits(&self) -> u64 {
        let live: u64 = lock(&self.records).iter().map(|r| r.hits.load(RELAXED)).sum();
        live + self.retired_hits.load(RELAXED)
    }
}

const RELAXED: std::sync::atomic::Ordering = std::sync::atomic::Ordering::Relaxed;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Spin, then yield, then sleep briefly: the waits here last microseconds to a network round trip.
pub(crate) fn backoff(spins: &mut u32) {
    *spins += 1;
    #[cfg(farmem_loom)]
    {
        loom::thread::yield_now();
    }
    #[cfg(not(farmem_loom))]
    {
        if *spins < 64 {
            std::hint::spin_loop();
        } else if *spins < 256 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(20));
        }
    }
}

/// The process-wide domain.
pub(crate) fn domain() -> &'static Domain {
    static D: OnceLock<Domain> = OnceLock::new();
    D.get_or_init(Domain::default)
}

struct Local {
    depth: Cell<u32>,
    rec: RefCell<Option<Arc<Record>>>,
    /// Dereferences of this thread's scopes that were not served locally (they fetched, or waited for a fetch),
    /// not yet subtracted from the record's hits (that happens when the outermost scope ends, once every
    /// dereference they belong to has been counted).
    misses: Cell<u64>,
}

impl Drop for Local {
    fn drop(&mut self) {
        if let Some(r) = self.rec.get_mut().take() {
            r.dead.store(true, std::sync::atomic::Ordering::Release);
        }
    }
}

thread_local! {
    static LOCAL: Local = const { Local { depth: Cell::new(0), rec: RefCell::new(None), misses: Cell::new(0) } };
}

/// Runtimes whose free local memory is at or below the hard watermark: outermost scopes wait on entry.
pub(crate) static HARD_PRESSURE: AtomicUsize = AtomicUsize::new(0);
static PRESSURE_CV: (Mutex<()>, Condvar) = (Mutex::new(()), Condvar::new());
static SCOPE_WAIT_NS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Longest a scope entry waits for the evacuator before going ahead anyway (so a stalled evacuator — memd
/// full, say — slows mutators down but never hangs them).
const MAX_SCOPE_WAIT: Duration = Duration::from_millis(20);

/// Wakes threads waiting at scope entry (called when a runtime leaves hard pressure).
pub(crate) fn pressure_relieved() {
    let _g = lock(&PRESSURE_CV.0);
    PRESSURE_CV.1.notify_all();
}

/// Nanoseconds threads spent waiting at scope entry because of the hard watermark.
pub(crate) fn scope_wait_ns() -> u64 {
    SCOPE_WAIT_NS.load(RELAXED)
}

/// Whether the calling thread is inside a scope.
pub(crate) fn pinned() -> bool {
    LOCAL.with(|l| l.depth.get() > 0)
}

/// A pin: while it lives, no object the thread has dereferenced through it is moved or freed by an evacuator.
///
/// Scopes nest; only the outermost one pins. References borrowed through a scope cannot outlive it:
///
/// ```compile_fail,E0597
/// use farmem_objrt::{DerefScope, FarBox, Runtime, RuntimeConfig};
/// let rt = Runtime::new(RuntimeConfig::new(16 << 20), std::sync::Arc::new(farmem_memd::MemStore::new(1 << 30))).unwrap();
/// let b = FarBox::new_in(&rt, 5u64);
/// let r;
/// {
///     let s = DerefScope::new();
///     r = b.deref(&s);
/// }
/// assert_eq!(*r, 5);
/// ```
///
/// nor outlive the pointer they borrow:
///
/// ```compile_fail,E0505
/// use farmem_objrt::{DerefScope, FarBox, Runtime, RuntimeConfig};
/// let rt = Runtime::new(RuntimeConfig::new(16 << 20), std::sync::Arc::new(farmem_memd::MemStore::new(1 << 30))).unwrap();
/// let b = FarBox::new_in(&rt, 5u64);
/// let s = DerefScope::new();
/// let r = b.deref(&s);
/// drop(b); // frees the object while `r` points at it
/// assert_eq!(*r, 5);
/// ```
///
/// and a mutable reference excludes every other (no aliasing through a scope):
///
/// ```compile_fail,E0502
/// use farmem_objrt::{DerefScope, FarBox, Runtime, RuntimeConfig};
/// let rt = Runtime::new(RuntimeConfig::new(16 << 20), std::sync::Arc::new(farmem_memd::MemStore::new(1 << 30))).unwrap();
/// let mut b = FarBox::new_in(&rt, 5u64);
/// let s = DerefScope::new();
/// let r = b.deref(&s);
/// let mut m = b.deref_mut(&s);
/// *m = 6;
/// assert_eq!(*r, 5);
/// ```
///
/// Used inside the scope, the same code compiles:
///
/// ```
/// use farmem_objrt::{DerefScope, FarBox, Runtime, RuntimeConfig};
/// let rt = Runtime::new(RuntimeConfig::new(16 << 20), std::sync::Arc::new(farmem_memd::MemStore::new(1 << 30))).unwrap();
/// let b = FarBox::new_in(&rt, 5u64);
/// {
///     let s = DerefScope::new();
///     let r = b.deref(&s);
///     assert_eq!(*r, 5);
/// }
/// ```
///
/// and a scope stays on its thread:
///
/// ```compile_fail,E0277
/// let s = farmem_objrt::DerefScope::new();
/// std::thread::spawn(move || drop(s));
/// ```
#[derive(Debug)]
pub struct DerefScope {
    /// Dereferences through this scope (feature `hit-stats`), added to the thread's record when it ends.
    pub(crate) derefs: Cell<u64>,
    _not_send: PhantomData<*const ()>,
}

impl DerefScope {
    /// Enters a scope. An outermost scope waits first (briefly) while some runtime is at its hard watermark.
    #[inline]
    pub fn new() -> DerefScope {
        enter();
        DerefScope { derefs: Cell::new(0), _not_send: PhantomData }
    }
}

impl DerefScope {
    /// Enters a scope without waiting at the hard watermark: for a container that only reads, inside the scope,
    /// objects it has just made local — it allocates nothing there and never waits for the network — and that
    /// waited for room (helping the evacuator) before it fetched them. The wait at scope entry holds back threads
    /// that might allocate into the reserve; one that cannot would only sit idle, and beside CPU-bound processes
    /// the evacuator it waits for may not run for a whole time slice.
    #[inline]
    pub(crate) fn new_reading() -> DerefScope {
        enter_with(false);
        DerefScope { derefs: Cell::new(0), _not_send: PhantomData }
    }
}

impl Default for DerefScope {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for DerefScope {
    // Inlined, and passing the count by value, so that the scope's address does not escape: then the count of a
    // scope used in one function stays in a register (see `ptr::count_deref`).
    #[inline]
    fn drop(&mut self) {
        leave(self.derefs.get());
    }
}

/// Entering a scope: pins the thread's record if this is its outermost scope.
#[inline(never)]
fn enter() {
    enter_with(true);
}

/// Entering a scope; an outermost one waits at the hard watermark first if `may_wait`.
#[inline(always)]
fn enter_with(may_wait: bool) {
    LOCAL.with(|l| {
        let d = l.depth.get();
        if d == 0 {
            if may_wait && HARD_PRESSURE.load(RELAXED) != 0 {
                wait_for_pressure();
            }
            let mut rec = l.rec.borrow_mut();
            rec.get_or_insert_with(|| domain().register()).pin();
        }
        l.depth.set(d + 1);
    });
}

/// Leaving a scope that counted `derefs` dereferences: adds them to the thread's record (less the misses, when
/// this is the outermost scope), and unpins it if this was the outermost scope.
#[inline(never)]
fn leave(derefs: u64) {
    // try_with: a scope dropped during thread teardown after LOCAL is gone has nothing left to unpin.
    let _ = LOCAL.try_with(|l| {
        let d = l.depth.get() - 1;
        l.depth.set(d);
        if let Some(r) = l.rec.borrow().as_ref() {
            let misses = if d == 0 { l.misses.replace(0) } else { 0 };
            if derefs != misses {
                // Never below zero: every miss belongs to a dereference of a scope that has ended by now.
                let h = r.hits.load(RELAXED);
                r.hits.store((h + derefs).saturating_sub(misses), RELAXED);
            }
            if d == 0 {
                r.unpin();
            }
        }
    });
}

/// The calling thread's hits published so far (its finished scopes).
#[cfg(all(test, not(farmem_loom)))]
pub(crate) fn thread_hits() -> u64 {
    LOCAL.with(|l| l.rec.borrow().as_ref().map_or(0, |r| r.hits.load(RELAXED)))
}

/// Notes that a dereference of the calling thread was not served locally (slow path only): it is subtracted
/// from the hits when the thread's outermost scope ends.
#[cold]
pub(crate) fn deref_missed() {
    let _ = LOCAL.try_with(|l| l.misses.set(l.misses.get() + 1));
}

#[cold]
fn wait_for_pressure() {
    let start = Instant::now();
    let mut g = lock(&PRESSURE_CV.0);
    while HARD_PRESSURE.load(std::sync::atomic::Ordering::Acquire) != 0 {
        let left = MAX_SCOPE_WAIT.saturating_sub(start.elapsed());
        if left.is_zero() {
            break;
        }
        g = PRESSURE_CV.1.wait_timeout(g, left).unwrap_or_else(std::sync::PoisonError::into_inner).0;
    }
    drop(g);
    let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
    SCOPE_WAIT_NS.fetch_add(ns, RELAXED);
}

#[cfg(all(test, not(farmem_loom)))]
mod tests {
    use super::*;

    #[test]
    fn nested_scopes_pin_once() {
        assert!(!pinned());
        let a = DerefScope::new();
        let b = DerefScope::new();
        assert!(pinned());
        drop(a);
        assert!(pinned(), "the inner scope still pins");
        drop(b);
        assert!(!pinned());
    }

    #[test]
    fn grace_period_waits_for_pinned_records_only() {
        let d = Domain::default();
        let r1 = d.register();
        let r2 = d.register();
        r1.pin();
        r1.unpin();
        // Nobody pinned: returns at once.
        d.synchronize();
        r2.pin();
        let before = r2.read();
        // Unpin r2 before synchronizing: the snapshot sees it unpinned.
        r2.unpin();
        d.synchronize();
        assert_ne!(r2.read(), before);
        r1.pin();
        r1.unpin();
        r1.pin();
        assert_eq!(r1.read() >> 1, 3, "each pin starts a new sequence");
        r1.unpin();
    }
}
