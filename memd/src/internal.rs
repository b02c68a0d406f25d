//! A thread-local "inside farmem" mark.
//!
//! farmem's own threads (fault handlers, client helper threads, evacuators) and farmem code running on an
//! application thread (a free that releases region pages) must never have their allocations routed back into
//! far memory: that would fault on the very region they serve. `FarAlloc` sends every allocation made while
//! [`is_internal`] holds to local memory. The mark is a `const`-initialised `Cell` with no destructor, so using
//! it never allocates or registers a thread-exit hook.

use std::cell::Cell;

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Whether the current thread is running farmem internals.
pub fn is_internal() -> bool {
    DEPTH.with(|d| d.get() > 0)
}

/// Marks the current thread as running farmem internals until the guard drops. Nests.
pub fn enter() -> InternalGuard {
    DEPTH.with(|d| d.set(d.get() + 1));
    InternalGuard { _not_send: std::marker::PhantomData }
}

/// Marks a whole thread (call first thing in a farmem-owned thread); never undone.
pub fn mark_thread() {
    DEPTH.with(|d| d.set(d.get() + 1));
}

/// Keeps the current thread marked internal while alive.
#[derive(Debug)]
pub struct InternalGuard {
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for InternalGuard {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get() - 1));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn nests() {
        assert!(!super::is_internal());
        let a = super::enter();
        let b = super::enter();
        drop(a);
        assert!(super::is_internal());
        drop(b);
        assert!(!super::is_internal());
    }
}
