//! Far containers: [`Array`], [`Vector`], [`List`], [`Stack`], [`Queue`] and a concurrent, growing
//! [`HashMap`], each usable far beyond the local budget.
//!
//! **Chunks, not elements.** Elements are grouped into chunk objects of
//! [`CHUNK_BYTES`](farmem_memd::offload::layout::CHUNK_BYTES) (4 KiB; hash buckets have their own size): one
//! far object per element would drown in pointer words and object headers, and would fetch 8-byte values one
//! round trip at a time. The per-chunk metadata kept locally (a far pointer and a count) is under 1% of the
//! data. Element types are `bytemuck::Pod`, as every far object is, at most 4 KiB and 16-byte aligned.
//!
//! **Spaces.** Each container puts its objects in its own [`Space`](crate::Space) — its own memd `ds` id —
//! which is what lets memd's offloaded types ([`farmem_memd::offload`]) find them, and nothing else.
//!
//! **Access.** Through a [`DerefScope`](crate::DerefScope): `get(i, &scope)` lends an [`ElemRef`] valid for
//! the scope; `read(i)` copies with a scope of its own. Iterators own a scope and renew it at every chunk
//! boundary, so a long scan never holds back the evacuator. `*_nt` variants read without caching
//! (non-temporal). Container operations that take locks (the hash map) open their scopes after locking, and
//! must not be called while the caller holds a scope of its own: a thread waiting for a lock inside a scope
//! could hold back the evacuator that the lock holder waits for.
//!
//! **Prefetch** ([`crate::prefetch`]): index streams of `Array`/`Vector` and node walks of
//! `List`/`Queue`/`Stack` feed a stride detector; iterators prefetch ahead in their direction; `prefetch(range)`
//! asks explicitly. The window adapts and never exceeds what the budget allows in flight.
//!
//! **Offload.** `Vector` (the DataFrame column type) runs sum/min/max/median/unique/filters, copy and shuffle
//! by index, and assign either locally or in memd beside the chunks; `HashMap::get_with` looks up a key in
//! memd without moving its bucket. [`Offload::Auto`] offloads when most of the chunks involved are remote.
//! Dirty local chunks are written back first ([`Runtime::write_back`]), and chunks the server rewrites are
//! dropped locally first, so both paths give the same answer — for reductions the very same code
//! ([`farmem_memd::offload::layout::Reducer`]) runs on both sides.
//!
//! ```
//! use farmem_memd::{offload::builtin, MemStore};
//! use farmem_objrt::containers::{HashMap, Pred, Sum};
//! use farmem_objrt::{DerefScope, Offload, Runtime, RuntimeConfig, Vector};
//! use std::sync::Arc;
//! let rt = Runtime::new(RuntimeConfig::new(2 << 20), Arc::new(MemStore::with_registry(1 << 30, builtin())))?;
//! let mut col = Vector::from_slice(&rt, &(0..100_000i64).collect::<Vec<_>>())?; // 800 KB in 196 chunks
//! {
//!     let s = DerefScope::new();
//!     *col.get_mut(7, &s).unwrap() = -1;
//! }
//! rt.evacuate_all()?; // now the column is in far memory: Auto offloads
//! assert_eq!(col.sum(Offload::Auto)?, Sum::Int((0..100_000).sum::<i128>() - 8));
//! assert_eq!(col.filter(Pred::Lt(2), Offload::Remote)?, vec![0, 1, 7]);
//! let m = HashMap::<u64, [u8; 16]>::new(&rt)?;
//! m.insert(42, *b"far memory here!")?;
//! assert_eq!(m.entry(42).or_insert([0; 16])?, *b"far memory here!");
//! rt.evacuate_all()?;
//! assert_eq!(m.get_with(&42, Offload::Remote)?, Some(*b"far memory here!")); // the bucket stays remote
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod array;
mod hashmap;
mod list;
mod queue;
mod stack;
mod vector;

pub use array::Array;
pub use hashmap::{
    Bucket1K, Bucket256, Bucket4K, BucketObj, Entry, HashMap, HashMapConfig, OccupiedEntry, VacantEntry,
};
pub use list::{List, ListIter};
pub use queue::Queue;
pub use stack::Stack;
pub use vector::{Iter, IterNt, Vector};

pub use farmem_memd::offload::layout::{Num, Pred, Sum, CHUNK_BYTES};

use crate::error::ObjError;
use crate::ptr::{FarBox, Ref, RefMut};
use crate::runtime::{Runtime, Space};
use bytemuck::Pod;
use farmem_memd::offload::OffloadError;
use farmem_memd::proto::OwnKind;
use farmem_memd::StoreError;
use parking_lot::Mutex;
use std::marker::PhantomData;

/// Why a container operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ContainerError {
    /// The object runtime failed (allocation, far store).
    #[error(transparent)]
    Obj(#[from] ObjError),
    /// memd refused or failed an offloaded operation (the store error keeps its status).
    #[error("offloaded operation: {0}")]
    Store(#[from] StoreError),
    /// An offloaded operation's reply did not decode, or its input was invalid.
    #[error("offloaded operation: {0}")]
    Offload(#[from] OffloadError),
    /// An index is past the end.
    #[error("index {index} is out of bounds for length {len}")]
    OutOfBounds {
        /// The index.
        index: u64,
        /// The length.
        len: u64,
    },
    /// Argument lists of different lengths, or another unusable argument.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The hash map's directory cannot double again (keys whose hashes agree on too many bits).
    #[error("hash map directory is at its maximum depth {0}")]
    DirectoryFull(u32),
}

/// Where an operation that can be offloaded runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Offload {
    /// Offload when most of the chunks involved are remote; run locally otherwise (and locally if memd lacks
    /// the offloaded type).
    #[default]
    Auto,
    /// Always here, fetching chunks as needed.
    Local,
    /// Always in memd.
    Remote,
}

/// A 4 KiB chunk object (16-byte aligned, so any element type up to that alignment can be cast from it).
pub(crate) type Chunk = [u128; CHUNK_BYTES / 16];

/// Compile-time checks on an element type.
pub(crate) const fn check_elem<T>() {
    assert!(size_of::<T>() > 0, "container elements cannot be zero-sized");
    assert!(size_of::<T>() <= CHUNK_BYTES, "container elements are at most 4 KiB");
    assert!(align_of::<T>() <= 16, "container elements are at most 16-byte aligned");
}

/// Elements of `T` per chunk.
pub(crate) const fn per_chunk<T>() -> usize {
    CHUNK_BYTES / size_of::<T>()
}

/// The first `n` elements of a chunk.
#[inline]
pub(crate) fn elems<T: Pod>(c: &Chunk, n: usize) -> &[T] {
    bytemuck::cast_slice(&bytemuck::bytes_of(c)[..n * size_of::<T>()])
}

/// The first `n` elements of a chunk, mutably.
#[inline]
pub(crate) fn elems_mut<T: Pod>(c: &mut Chunk, n: usize) -> &mut [T] {
    bytemuck::cast_slice_mut(&mut bytemuck::bytes_of_mut(c)[..n * size_of::<T>()])
}

/// Brings a remote object in before a scope is opened, so that no scope is held across the round trip (a
/// scope held during a miss delays every evacuation grace period). Failures are left to the dereference that
/// follows, which reports them.
#[inline]
pub(crate) fn warm<T: Pod>(obj: &FarBox<T>) {
    use crate::ptr::sealed::Sealed as _;
    if !obj.is_local() {
        room_for_fetch(obj);
        // Also waits for a fetch of it that another thread has in flight, so that the caller's scope does not.
        // A failure shows again (and is reported) at the dereference.
        let _ = obj.far_runtime().fetch_all(&[obj.far_slot()]);
    }
}

/// Before a fetch outside any scope: waits while the runtime's heap is at its hard watermark (see
/// [`crate::heap::Heap::wait_for_room`]), as an allocation there would — when an evacuator thread runs.
///
/// At the low watermark with no cycle running, the caller runs one cycle itself first: it has the CPU now, and
/// the evacuator thread it would otherwise wake may wait for one (beside CPU-bound processes, for a whole time
/// slice) while the fetches of many threads take the heap down to the hard watermark, where they all wait.
pub(crate) fn room_for_fetch<P: crate::ptr::FarHandle>(obj: &P) {
    let rt = obj.far_runtime();
    // Without evacuator threads nobody would make room: the fetch goes ahead (and may evacuate for itself).
    if rt.background.load(std::sync::atomic::Ordering::Relaxed) && !crate::epoch::pinned() {
        if rt.heap.free_in_budget() <= rt.heap.marks.low {
            crate::evac::help(rt);
        }
        rt.heap.wait_for_room(|| crate::evac::help(rt));
    }
}

/// A fresh zeroed chunk in `space`.
pub(crate) fn new_chunk(rt: &Runtime, space: Space) -> Result<FarBox<Chunk>, ObjError> {
    FarBox::try_new_in(rt, space, [0u128; CHUNK_BYTES / 16])
}

/// A container's space and, once something was offloaded, its memd instance (destroyed with the last user).
#[derive(Debug)]
pub(crate) struct SpaceHandle<'rt> {
    pub rt: &'rt Runtime,
    pub space: Space,
    pub ds: u64,
    /// `None`: not constructed yet; `Some(Ok)`: constructed; `Some(Err)`: memd refused (e.g. lacks the type).
    constructed: Mutex<Option<Result<(), StoreError>>>,
}

impl<'rt> SpaceHandle<'rt> {
    pub fn new(rt: &'rt Runtime) -> Result<SpaceHandle<'rt>, ObjError> {
        let space = rt.new_space()?;
        Ok(SpaceHandle { rt, space, ds: rt.space_ds(space), constructed: Mutex::new(None) })
    }

    /// Makes sure memd has an instance of type `ty` for this space.
    pub fn ensure(&self, ty: &str, params: &[u8]) -> Result<(), StoreError> {
        let mut c = self.constructed.lock();
        if let Some(r) = c.as_ref() {
            return r.clone();
        }
        let r = self.rt.store().construct(self.ds, ty, params).and_then(|()| {
            // The instance lives in memd on behalf of this process: it ends with the process's session.
            self.rt.store().own(OwnKind::Instance, self.ds)
        });
        // Remember success, and a refusal of the type (it will not change); retry after other failures.
        if r.is_ok() || matches!(r, Err(StoreError::Rejected { .. })) {
            *c = Some(r.clone());
        }
        r
    }
}

impl Drop for SpaceHandle<'_> {
    fn drop(&mut self) {
        if matches!(*self.constructed.get_mut(), Some(Ok(()))) {
            if let Err(e) = self.rt.store().destruct(self.ds) {
                tracing::warn!("farmem: destroying offloaded data structure {:#x}: {e}", self.ds);
            }
        }
    }
}

/// A shared reference to one element, valid while its scope lives.
#[derive(Debug)]
pub struct ElemRef<'s, T> {
    chunk: Ref<'s, Chunk>,
    off: usize,
    _t: PhantomData<&'s T>,
}

impl<'s, T> ElemRef<'s, T> {
    pub(crate) fn new(chunk: Ref<'s, Chunk>, index_in_chunk: usize) -> Self {
        ElemRef { chunk, off: index_in_chunk * size_of::<T>(), _t: PhantomData }
    }
}

impl<T: Pod> std::ops::Deref for ElemRef<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        bytemuck::from_bytes(&bytemuck::bytes_of(&*self.chunk)[self.off..self.off + size_of::<T>()])
    }
}

/// An exclusive reference to one element (its chunk was marked dirty), valid while its scope lives.
#[derive(Debug)]
pub struct ElemMut<'s, T> {
    chunk: RefMut<'s, Chunk>,
    off: usize,
    _t: PhantomData<&'s mut T>,
}

impl<'s, T> ElemMut<'s, T> {
    pub(crate) fn new(chunk: RefMut<'s, Chunk>, index_in_chunk: usize) -> Self {
        ElemMut { chunk, off: index_in_chunk * size_of::<T>(), _t: PhantomData }
    }
}

impl<T: Pod> std::ops::Deref for ElemMut<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        bytemuck::from_bytes(&bytemuck::bytes_of(&*self.chunk)[self.off..self.off + size_of::<T>()])
    }
}

impl<T: Pod> std::ops::DerefMut for ElemMut<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        let off = self.off;
        bytemuck::from_bytes_mut(&mut bytemuck::bytes_of_mut(&mut *self.chunk)[off..off + size_of::<T>()])
    }
}
