//! Far pointers ([`FarBox`], [`FarArc`]) and the references a scope lends out ([`Ref`], [`RefMut`]).

use crate::epoch::DerefScope;
use crate::error::ObjError;
use crate::raw;
use crate::runtime::{FetchHandle, RtInner, Runtime, Space};
use crate::slots::Slot;
use crate::word;
use bytemuck::Pod;
use std::marker::PhantomData;
use std::sync::Arc;

/// Compile-time checks on an object type: not zero-sized, at most 16-byte aligned (the heap's alignment), at
/// most 1 MiB.
const fn check_type<T>() {
    assert!(size_of::<T>() > 0, "far objects cannot be zero-sized");
    assert!(align_of::<T>() <= 16, "far objects are at most 16-byte aligned");
    assert!(size_of::<T>() <= word::MAX_SIZE, "far objects are at most 1 MiB");
}

pub(crate) mod sealed {
    pub trait Sealed {
        fn far_slot(&self) -> &'static crate::slots::Slot;
        fn far_runtime(&self) -> &crate::runtime::RtInner;
    }
}

/// A far pointer of any type, for batch operations ([`Runtime::fetch`], [`Runtime::write_back`]).
pub trait FarHandle: sealed::Sealed {
    /// The object's id in memd (unique among live objects of the process).
    fn object_id(&self) -> u64 {
        self.far_slot().id()
    }
}

/// A shared reference to a far object, valid while the scope it came from lives.
#[derive(Debug)]
pub struct Ref<'s, T>(&'s T);

impl<T> std::ops::Deref for Ref<'_, T> {
    type Target = T;
    #[inline(always)]
    fn deref(&self) -> &T {
        self.0
    }
}

/// An exclusive reference to a far object (the object was marked dirty when it was made), valid while the scope
/// it came from lives.
#[derive(Debug)]
pub struct RefMut<'s, T>(&'s mut T);

impl<T> std::ops::Deref for RefMut<'_, T> {
    type Target = T;
    #[inline(always)]
    fn deref(&self) -> &T {
        self.0
    }
}

impl<T> std::ops::DerefMut for RefMut<'_, T> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut T {
        self.0
    }
}

/// The unique owner of a far object — local while hot, in memd when cold.
///
/// Dereference it through a [`DerefScope`]; the references cannot outlive the scope, and while it lives the
/// object is not moved. Dropping the box frees the object, locally and in memd.
///
/// A `FarBox` is 8 bytes, as a `Box` is: the address of its slot (`slots.rs`), which holds the pointer word. Its
/// runtime is kept beside the slot and read only by slow paths (see `raw.rs`, P5).
pub struct FarBox<T: Pod> {
    slot: &'static Slot,
    _t: PhantomData<T>,
}

impl<T: Pod> sealed::Sealed for FarBox<T> {
    fn far_slot(&self) -> &'static Slot {
        self.slot
    }
    fn far_runtime(&self) -> &RtInner {
        self.rt()
    }
}
impl<T: Pod> FarHandle for FarBox<T> {}

impl<T: Pod> std::fmt::Debug for FarBox<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let w = self.slot.word.load(crate::primitive::Ordering::Relaxed);
        f.debug_struct("FarBox")
            .field("id", &self.slot.id())
            .field("word", &format_args!("{w:#x}"))
            .field("flags", &self.slot.flags())
            .finish()
    }
}

/// Counts a dereference in the scope; the thread's count is added to [`crate::Stats::hits`] when the scope ends,
/// less the dereferences that the slow path found remote (it notes them itself, see [`try_deref_slow`]).
///
/// The count lives in the scope and is bumped on every dereference, fast or slow, and no slow path ever receives
/// the scope. So when a scope is opened in the function that dereferences through it (or in one that inlines it)
/// LLVM keeps the count in a register — often not even that: in a loop that dereferences once per iteration it
/// becomes the trip count — and stores it once when the scope ends. A scope passed by reference to a function
/// that is not inlined costs a memory increment per dereference instead (the count must live in memory there).
/// Building without the default `hit-stats` feature drops the count, and `hits` stays 0.
#[inline(always)]
fn count_deref(scope: &DerefScope) {
    #[cfg(feature = "hit-stats")]
    scope.derefs.set(scope.derefs.get() + 1);
    #[cfg(not(feature = "hit-stats"))]
    let _ = scope;
}

#[cold]
#[inline(never)]
fn deref_failed(e: ObjError) -> ! {
    panic!("farmem: dereferencing a far object failed: {e}")
}

/// The slow path of [`FarBox::deref`] and [`FarBox::deref_mut`]: [`try_deref_slow`], panicking on failure.
/// Returning only the address (no `Result` in memory) keeps the inlined fast path free of a stack frame; taking
/// the slot (already in a register: the fast path loaded its word) rather than the `FarBox` lets a loop over a
/// slice of boxes keep one induction variable, the index, which is also the scope's count.
#[cold]
#[inline(never)]
fn deref_slow(slot: &'static Slot, write: bool) -> u64 {
    match try_deref_slow(slot, write) {
        Ok(a) => a,
        Err(e) => deref_failed(e),
    }
}

/// The slow path: returns the object's address once the fast path would let it through. A dereference that
/// was not served from local memory (it fetched the object, or waited for another thread's fetch) is noted
/// as a miss of the thread, so that the hits count only local ones. It does not take the scope, so the
/// scope's count can stay in a register across it. `slot` belongs to the caller's far pointer (which is
/// borrowed across the call), so the slot's runtime is alive (`raw.rs`, P5).
#[cold]
#[inline(never)]
fn try_deref_slow(slot: &'static Slot, write: bool) -> Result<u64, ObjError> {
    let (a, local) = crate::slots::owner(slot).get().deref_slow(slot, write, true)?;
    if cfg!(feature = "hit-stats") && !local {
        crate::epoch::deref_missed();
    }
    Ok(a)
}

impl<T: Pod> FarBox<T> {
    /// A new object in the default runtime ([`Runtime::global`]). Panics if it cannot be allocated.
    pub fn new(value: T) -> FarBox<T> {
        Self::new_in(Runtime::global(), value)
    }

    /// A new object in `rt`. Panics if it cannot be allocated; [`FarBox::try_new_in`] returns the error.
    pub fn new_in(rt: &Runtime, value: T) -> FarBox<T> {
        match Self::try_new_in(rt, Space::DEFAULT, value) {
            Ok(b) => b,
            Err(e) => panic!("farmem: cannot allocate a far object: {e}"),
        }
    }

    /// A new object in space `space` of `rt`.
    pub fn try_new_in(rt: &Runtime, space: Space, value: T) -> Result<FarBox<T>, ObjError> {
        const { check_type::<T>() };
        Ok(FarBox::own(rt, rt.inner.alloc_obj(space.0, bytemuck::bytes_of(&value), false)?))
    }

    /// The pointer for a freshly allocated `slot` of `rt`: gives the slot its count of the runtime (P5).
    fn own(rt: &Runtime, slot: &'static Slot) -> FarBox<T> {
        crate::slots::owner(slot).set(Arc::clone(&rt.inner));
        FarBox { slot, _t: PhantomData }
    }

    /// The runtime the object belongs to (borrowed from the slot's count, for as long as this pointer).
    #[inline]
    fn rt(&self) -> &RtInner {
        crate::slots::owner(self.slot).get()
    }

    /// Borrows the object for the life of `scope`.
    ///
    /// The fast path — the object is local, hot and nobody is moving it — is one load of the pointer word, one
    /// `test` of its four low bits and one branch, and then the load of the object through the word as it is:
    /// the word of a hot local object *is* the object's address (its other flags live beside it in the slot,
    /// see `word.rs`), so nothing is masked. It never writes shared memory: the CLOCK bit (`COLD`) is cleared by
    /// the slow path, which only the first dereference after an evacuator pass takes, and the hit count is the
    /// scope's (see `count_deref`). Checked in the optimised x86-64 code (rustc 1.95; `objdump -d -C -M intel`
    /// of the bench binary, functions `deref_one`, `sum_far` and `sum_far_in` in `benches/objrt.rs`). `sum_far`
    /// opens a scope and sums 4096 objects; its loop is 8 instructions a dereference (callgrind: 8.0 with the
    /// scope's entry and exit; `Box`'s loop, unrolled 4×, is 2.75):
    /// ```text
    /// loop:
    ///   mov  rdi, [r14+r12*8]    ; the FarBox: its slot's address (a FarBox is 8 bytes, as a Box is)
    ///   mov  rax, [rdi]          ; the pointer word (acquire load: a plain mov on x86)
    ///   test al, 0xf             ; ABSENT | BUSY | MARKED | COLD
    ///   jne  slow                ; out of line: `call deref_slow(rdi, false)` (cold), then back to `next`
    /// next:
    ///   add  r15, [rax]          ; the object itself, through the word (the sum)
    ///   inc  r12                 ; the loop index, which is also the scope's dereference count (feature
    ///   cmp  rbx, r12            ;   `hit-stats`): it is passed to the scope's `leave` once, when the scope ends
    ///   jne  loop
    /// ```
    /// A non-inlined `deref_one(b, s)` is `mov rdi,[rdi]; mov rax,[rdi]; test al,0xf; jne slow;
    /// inc qword [rsi]; mov rax,[rax]; ret` (its scope is behind a pointer, so the count is a memory increment
    /// there; so it is in `sum_far_in`, whose scope comes by reference). Compared with `Box`, which loads the
    /// pointer and the object, the extra cost is the slot indirection — a third dependent load, because the word
    /// cannot live inside the `FarBox`, which Rust moves freely — plus the test and branch. LLVM does not unroll
    /// the loop, as it unrolls `Box`'s 4×, because the loop contains a call (the slow path's; LLVM's unroller
    /// refuses any loop with a call in it, however cold). The rest is layout: the `FarBox` is 8 bytes, so a loop
    /// over a slice of them needs one induction variable, which is also the count (the slow path takes the slot,
    /// already in a register, not the `FarBox`); the fast path reads nothing of the 16-byte slot but its word;
    /// and an object of up to 8 bytes takes 16 bytes of the heap (8-byte header, `heap.rs`), so consecutive
    /// objects share cache lines as `malloc`'s do.
    #[inline(always)]
    pub fn deref<'s>(&'s self, scope: &'s DerefScope) -> Ref<'s, T> {
        let w = crate::primitive::load_word(&self.slot.word);
        let a = if w & word::READ_SLOW == 0 { w } else { deref_slow(self.slot, false) };
        count_deref(scope);
        Ref(raw::obj_ref(a))
    }

    /// Like [`FarBox::deref`], but never fetches or waits: `None` when the object is not local and free to use
    /// right now (remote, or held by someone). A container that brought its objects in before opening its
    /// scope uses it to keep network waits out of the scope: it closes the scope, brings in what was evicted
    /// meanwhile, and tries again (a thread waiting inside a scope holds up every grace period).
    #[inline]
    pub(crate) fn deref_if_local<'s>(&'s self, scope: &'s DerefScope) -> Option<Ref<'s, T>> {
        let w = crate::primitive::load_word(&self.slot.word);
        let a = if w & word::READ_SLOW == 0 {
            w
        } else {
            // What the slow path does first, and all it does for an object that is local and nobody holds.
            match word::touch(&self.slot.word, true) {
                word::Found::Local(a) => a,
                word::Found::Remote(_) | word::Found::Busy(_) => return None,
            }
        };
        count_deref(scope);
        Some(Ref(raw::obj_ref(a)))
    }

    /// If the object is local and free to use right now, lends it in place for the life of `scope` without
    /// warming it (a non-temporal read that finds it local need not copy it out); `None` otherwise.
    #[inline]
    pub(crate) fn peek_nt<'s>(&'s self, scope: &'s DerefScope) -> Option<Ref<'s, T>> {
        match word::touch(&self.slot.word, false) {
            word::Found::Local(a) => {
                count_deref(scope);
                Some(Ref(raw::obj_ref(a)))
            }
            word::Found::Remote(_) | word::Found::Busy(_) => None,
        }
    }

    /// Like [`FarBox::deref`], but a failed fetch (memd gone, local heap exhausted) is returned, not a panic.
    #[inline]
    pub fn try_deref<'s>(&'s self, scope: &'s DerefScope) -> Result<Ref<'s, T>, ObjError> {
        let w = crate::primitive::load_word(&self.slot.word);
        let a = if w & word::READ_SLOW == 0 { w } else { try_deref_slow(self.slot, false)? };
        count_deref(scope);
        Ok(Ref(raw::obj_ref(a)))
    }

    /// Borrows the object mutably for the life of `scope`, marking it dirty. Fast path as [`FarBox::deref`], then
    /// a load and a test of the slot's flags, which sit beside the word (`mov ecx,[rdi+0xc]; test cl,1;
    /// jne slow`): a `CLEAN` object takes the slow path once, which clears the flag (`Slot::mark_dirty`).
    #[inline(always)]
    pub fn deref_mut<'s>(&'s mut self, scope: &'s DerefScope) -> RefMut<'s, T> {
        let w = crate::primitive::load_word(&self.slot.word);
        let a = if w & word::READ_SLOW == 0 && !self.slot.is_clean() { w } else { deref_slow(self.slot, true) };
        count_deref(scope);
        RefMut(raw::obj_mut(a))
    }

    /// Like [`FarBox::deref_mut`], returning failures.
    #[inline]
    pub fn try_deref_mut<'s>(&'s mut self, scope: &'s DerefScope) -> Result<RefMut<'s, T>, ObjError> {
        let w = crate::primitive::load_word(&self.slot.word);
        let a = if w & word::READ_SLOW == 0 && !self.slot.is_clean() { w } else { try_deref_slow(self.slot, true)? };
        count_deref(scope);
        Ok(RefMut(raw::obj_mut(a)))
    }

    /// A copy of the object (opens its own scope).
    pub fn read(&self) -> T {
        let s = DerefScope::new();
        *self.deref(&s)
    }

    /// Overwrites the object (opens its own scope).
    pub fn write(&mut self, value: T) {
        let s = DerefScope::new();
        *self.deref_mut(&s) = value;
    }

    /// A copy of the object that does not bring it into local memory (non-temporal read): a remote object is
    /// read straight from memd, a local one is copied without warming its CLOCK bit.
    pub fn read_nt(&self) -> Result<T, ObjError> {
        let mut v = T::zeroed();
        self.rt().read_nt(self.slot, bytemuck::bytes_of_mut(&mut v))?;
        Ok(v)
    }

    /// Overwrites the object without bringing it into local memory: a remote object is written straight to
    /// memd; a local one is written in place without warming it.
    pub fn write_nt(&mut self, value: T) -> Result<(), ObjError> {
        self.rt().write_nt(self.slot, bytemuck::bytes_of(&value))
    }

    /// Starts fetching the object if it is remote; see [`FetchHandle`].
    pub fn prefetch(&self) -> Result<FetchHandle, ObjError> {
        Runtime::fetch_in(&crate::slots::owner(self.slot).arc(), &[self.slot])
    }

    /// Moves the object to memd now (writing it first if dirty).
    pub fn evict(&mut self) -> Result<(), ObjError> {
        self.rt().evict(self.slot)
    }

    /// Whether the object is in local memory right now.
    pub fn is_local(&self) -> bool {
        word::is_local(self.slot.word.load(crate::primitive::Ordering::Acquire))
    }

    /// The object's id in memd.
    pub fn id(&self) -> u64 {
        self.slot.id()
    }

    /// Frees the object (local copy now, remote copy by a batched delete). Same as dropping the box.
    pub fn free(self) {
        drop(self)
    }
}

impl<T: Pod> Drop for FarBox<T> {
    fn drop(&mut self) {
        // The count comes back before the object is freed: freeing may hand the slot to another pointer (P5).
        let rt = crate::slots::owner(self.slot).take();
        rt.free(self.slot);
    }
}

/// A shared, immutable far object: clones point to the same object, which is freed with the last clone.
pub struct FarArc<T: Pod> {
    inner: Arc<FarBox<T>>,
}

impl<T: Pod> Clone for FarArc<T> {
    fn clone(&self) -> Self {
        FarArc { inner: Arc::clone(&self.inner) }
    }
}

impl<T: Pod> std::fmt::Debug for FarArc<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("FarArc").field(&*self.inner).finish()
    }
}

impl<T: Pod> sealed::Sealed for FarArc<T> {
    fn far_slot(&self) -> &'static Slot {
        self.inner.slot
    }
    fn far_runtime(&self) -> &RtInner {
        self.inner.rt()
    }
}
impl<T: Pod> FarHandle for FarArc<T> {}

impl<T: Pod> FarArc<T> {
    /// A new shared object in the default runtime.
    pub fn new(value: T) -> FarArc<T> {
        Self::new_in(Runtime::global(), value)
    }

    /// A new shared object in `rt`. Panics if it cannot be allocated.
    pub fn new_in(rt: &Runtime, value: T) -> FarArc<T> {
        match Self::try_new_in(rt, Space::DEFAULT, value) {
            Ok(b) => b,
            Err(e) => panic!("farmem: cannot allocate a far object: {e}"),
        }
    }

    /// A new shared object in space `space` of `rt`.
    pub fn try_new_in(rt: &Runtime, space: Space, value: T) -> Result<FarArc<T>, ObjError> {
        const { check_type::<T>() };
        let slot = rt.inner.alloc_obj(space.0, bytemuck::bytes_of(&value), true)?;
        Ok(FarArc { inner: Arc::new(FarBox::own(rt, slot)) })
    }

    /// Borrows the object for the life of `scope` (fast path as [`FarBox::deref`]).
    #[inline(always)]
    pub fn deref<'s>(&'s self, scope: &'s DerefScope) -> Ref<'s, T> {
        self.inner.deref(scope)
    }

    /// Like [`FarArc::deref`], returning failures.
    #[inline]
    pub fn try_deref<'s>(&'s self, scope: &'s DerefScope) -> Result<Ref<'s, T>, ObjError> {
        self.inner.try_deref(scope)
    }

    /// A copy of the object.
    pub fn read(&self) -> T {
        self.inner.read()
    }

    /// A copy that does not bring the object into local memory.
    pub fn read_nt(&self) -> Result<T, ObjError> {
        self.inner.read_nt()
    }

    /// Starts fetching the object if it is remote.
    pub fn prefetch(&self) -> Result<FetchHandle, ObjError> {
        self.inner.prefetch()
    }

    /// Whether the object is local right now.
    pub fn is_local(&self) -> bool {
        self.inner.is_local()
    }

    /// Number of clones alive.
    pub fn count(&self) -> usize {
        Arc::strong_count(&self.inner)
    }
}

#[cfg(all(test, not(farmem_loom)))]
mod tests {
    use crate::epoch::thread_hits;
    use crate::{DerefScope, FarArc, FarBox, Runtime, RuntimeConfig};
    use std::sync::Arc;

    /// A `FarBox` is one word (the address of its slot); its runtime's count lives beside the slot (`raw.rs`,
    /// P5): taken by each pointer, given back when the pointer is dropped, and enough to keep the runtime's heap
    /// alive after the `Runtime` itself is gone.
    #[test]
    fn miri_far_pointers_are_one_word_and_hold_their_runtime() {
        assert_eq!(size_of::<FarBox<[u8; 100]>>(), size_of::<Box<u8>>());
        let mut cfg = RuntimeConfig::new(1 << 20);
        cfg.evacuator_threads = 0;
        let rt = Runtime::new(cfg, Arc::new(farmem_memd::MemStore::new(1 << 30))).unwrap();
        let inner = Arc::clone(&rt.inner);
        let n0 = Arc::strong_count(&inner);
        let a = FarBox::new_in(&rt, 1u64);
        let b = FarArc::new_in(&rt, 2u64);
        let b2 = b.clone();
        assert_eq!(Arc::strong_count(&inner), n0 + 2, "one count per object, not per clone of a FarArc");
        let h = a.prefetch().unwrap();
        assert!(h.is_empty(), "local: nothing to fetch");
        drop(h);
        assert_eq!(Arc::strong_count(&inner), n0 + 2);
        assert!(rt.fetch([&b]).unwrap().is_empty());
        drop(rt);
        // Left: `inner` and the two objects' counts.
        assert_eq!(Arc::strong_count(&inner), 3);
        assert_eq!((a.read(), b2.read()), (1, 2), "the objects outlive the Runtime handle");
        drop(a);
        drop(b);
        assert_eq!(Arc::strong_count(&inner), 2, "the FarArc's object lives while a clone does");
        drop(b2);
        assert_eq!(Arc::strong_count(&inner), 1, "every count given back");
    }

    /// Hits are the dereferences served locally: fast-path ones, and slow-path ones that did not fetch; they are
    /// published when the scope ends (for misses, when the thread's outermost scope ends).
    #[test]
    fn miri_hits_count_local_dereferences_only() {
        let mut cfg = RuntimeConfig::new(1 << 20);
        cfg.evacuator_threads = 0;
        let rt = Runtime::new(cfg, Arc::new(farmem_memd::MemStore::new(1 << 30))).unwrap();
        let mut b = FarBox::new_in(&rt, 5u64);
        let per = u64::from(cfg!(feature = "hit-stats"));
        let h0 = thread_hits();
        {
            let s = DerefScope::new();
            assert_eq!(*b.deref(&s) + *b.try_deref(&s).unwrap(), 10);
            *b.deref_mut(&s) += 1;
            assert_eq!(thread_hits(), h0, "published when the scope ends");
        }
        assert_eq!(thread_hits(), h0 + 3 * per);
        b.evict().unwrap();
        {
            let s = DerefScope::new();
            assert_eq!(*b.deref(&s), 6, "a miss: fetched");
            {
                let inner = DerefScope::new();
                assert_eq!(*b.deref(&inner), 6);
            }
            assert_eq!(*b.try_deref(&s).unwrap(), 6);
        }
        assert_eq!(thread_hits(), h0 + 5 * per, "the fetching dereference is not a hit");
        assert_eq!(rt.stats().misses, 1);
    }
}
