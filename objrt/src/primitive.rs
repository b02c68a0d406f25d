//! The atomics the pointer state machine is built from: `std`'s normally, loom's under `cfg(farmem_loom)`.
//!
//! Only the modules that the loom model exercises ([`crate::word`] transitions and [`crate::epoch::Domain`]) take
//! their atomics from here; the heap and slot tables use `std` directly because they are not modelled.

#[cfg(not(farmem_loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

#[cfg(farmem_loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// Loads a pointer word for a dereference. A plain acquire load (one `mov` on x86-64) normally; under loom a
/// read-modify-write, because loom models `SeqCst` fences only as acquire-release and so would invent a
/// store-buffer outcome (pin not seen by the evacuator *and* mark not seen by the mutator) that the hardware's
/// `SeqCst` fences rule out.
#[inline(always)]
pub(crate) fn load_word(w: &AtomicU64) -> u64 {
    #[cfg(not(farmem_loom))]
    {
        w.load(Ordering::Acquire)
    }
    #[cfg(farmem_loom)]
    {
        w.fetch_add(0, Ordering::SeqCst)
    }
}

/// Publishes a pointer word (release). Under loom a read-modify-write: in our models a thread spinning with
/// read-modify-writes never observed a plain store of another thread, so every store a spinner waits for is an
/// RMW there.
#[inline(always)]
pub(crate) fn store_word(w: &AtomicU64, v: u64) {
    #[cfg(not(farmem_loom))]
    w.store(v, Ordering::Release);
    #[cfg(farmem_loom)]
    w.swap(v, Ordering::SeqCst);
}
