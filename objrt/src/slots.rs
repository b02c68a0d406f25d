//! The slot table: where pointer words live.
//!
//! A far pointer is moved around freely by Rust, so the word the evacuator must update cannot live inside it (as
//! it does in AIFM's C++). It lives in a slot of a process-wide table instead; the pointer is nothing but a
//! `&'static` reference to its slot (8 bytes, like a `Box`), and the object's header in the local heap holds the
//! slot's index, which doubles as the object's id in memd. A slot is 16 bytes: the word, the id, and the flags
//! of a local object (`CLEAN`, `HAS_REMOTE`, `SHARED`: see [`crate::word`]; kept out of the word so that the
//! word of a hot object is its bare address). A read's fast path reads nothing of a slot but its word; a write's
//! also reads the flags, in the same cache line. The pointer's runtime is kept beside the slot, in a parallel
//! array of [`RtCell`]s that only slow paths read. Slot memory is allocated in chunks that are never freed ("type-stable"), so a stale
//! index read by the evacuator from a dead object's header still names a valid word; the word's address check
//! ([`crate::word::mark`]) tells the evacuator the object is gone.
//!
//! A freed slot is reused only once memd no longer holds an object under its id (the runtime deletes the remote
//! copy first), so a delete still queued for a dead object can never remove a newer one.

use crate::primitive::{AtomicU32, AtomicU64, Ordering};
use crate::raw::RtCell;
use parking_lot::Mutex;
use std::sync::OnceLock;

/// One pointer word, its immutable id, and the flags of the object while it is local.
#[derive(Debug)]
pub struct Slot {
    pub(crate) word: AtomicU64,
    /// Below [`MAX_SLOTS`] = 2^28.
    id: u32,
    /// [`crate::word::CLEAN`] | [`crate::word::HAS_REMOTE`] | [`crate::word::SHARED`]. Who may change them and
    /// why `Relaxed` suffices (the word's release/acquire and the grace period order them) is in `word.rs`.
    flags: AtomicU32,
}

impl Slot {
    /// The object's id (the slot's index in the table).
    #[inline]
    pub(crate) fn id(&self) -> u64 {
        u64::from(self.id)
    }

    /// The flags of the local object.
    #[inline(always)]
    pub(crate) fn flags(&self) -> u32 {
        self.flags.load(Ordering::Relaxed)
    }

    /// Whether the local copy equals memd's (a write's fast path finds this false).
    #[inline(always)]
    pub(crate) fn is_clean(&self) -> bool {
        self.flags() & crate::word::CLEAN != 0
    }

    /// Sets the flags. Only by whoever owns the word: the allocator before it publishes a new object, or the
    /// thread that holds the word `BUSY`, before it publishes (`word.rs`).
    #[inline]
    pub(crate) fn set_flags(&self, f: u32) {
        self.flags.store(f, Ordering::Relaxed);
    }

    /// A write's slow path, once [`crate::word::touch`] found the object local (in the writer's scope, with `&mut`
    /// access to the pointer): clears `CLEAN`, so that the next write-back or eviction writes the object.
    #[inline]
    pub(crate) fn mark_dirty(&self) {
        if self.is_clean() {
            self.flags.fetch_and(!crate::word::CLEAN, Ordering::Relaxed);
        }
    }
}

const CHUNK_BITS: u32 = 14;
const CHUNK: usize = 1 << CHUNK_BITS;
const CHUNKS: usize = 1 << 14;
/// Number of slots (object ids) the table can hand out: 2^28, the ids an 8-byte object header holds.
pub(crate) const MAX_SLOTS: u64 = (CHUNKS as u64) << CHUNK_BITS;

/// A slot outside the table, for the loom models (which run the crate's transitions on one object).
#[cfg(all(test, farmem_loom))]
impl Slot {
    pub(crate) fn for_model(word: u64, flags: u32) -> Slot {
        Slot { word: AtomicU64::new(word), id: 0, flags: AtomicU32::new(flags) }
    }
}

/// `CHUNK` slots and their runtimes, allocated together and never freed.
struct Chunk {
    slots: Box<[Slot]>,
    owners: Box<[RtCell]>,
}

struct Table {
    chunks: Box<[OnceLock<&'static Chunk>]>,
    free: Mutex<Vec<u64>>,
    next_chunk: Mutex<usize>,
}

fn table() -> &'static Table {
    static T: OnceLock<Table> = OnceLock::new();
    T.get_or_init(|| Table {
        chunks: (0..CHUNKS).map(|_| OnceLock::new()).collect(),
        free: Mutex::new(Vec::new()),
        next_chunk: Mutex::new(0),
    })
}

/// A free slot (its word is [`crate::word::FREE`]), or `None` when all [`MAX_SLOTS`] slots are in use.
pub fn alloc() -> Option<&'static Slot> {
    let t = table();
    loop {
        if let Some(id) = t.free.lock().pop() {
            return get(id);
        }
        let mut next = t.next_chunk.lock();
        if !t.free.lock().is_empty() {
            continue;
        }
        if *next >= CHUNKS {
            return None;
        }
        let c = *next;
        let base = (c as u64) << CHUNK_BITS;
        let slots = (0..CHUNK as u64)
            .map(|i| Slot {
                word: AtomicU64::new(crate::word::FREE),
                id: u32::try_from(base + i).unwrap_or_else(|_| unreachable!("ids are below 2^28")),
                flags: AtomicU32::new(0),
            })
            .collect();
        let owners = (0..CHUNK).map(|_| RtCell::new()).collect();
        let leaked: &'static Chunk = Box::leak(Box::new(Chunk { slots, owners }));
        if t.chunks[c].set(leaked).is_err() {
            unreachable!("chunk {c} filled twice under the chunk lock");
        }
        *next = c + 1;
        // Hand out slots from the low end first: push in reverse.
        t.free.lock().extend((1..CHUNK as u64).rev().map(|i| base + i));
        return Some(&leaked.slots[0]);
    }
}

fn chunk_of(id: u64) -> Option<(&'static Chunk, usize)> {
    let c = usize::try_from(id >> CHUNK_BITS).ok()?;
    let i = usize::try_from(id & (CHUNK as u64 - 1)).ok()?;
    table().chunks.get(c)?.get().map(|ch| (*ch, i))
}

/// The slot with index `id`, if it was ever allocated.
pub fn get(id: u64) -> Option<&'static Slot> {
    chunk_of(id).map(|(ch, i)| &ch.slots[i])
}

/// The cell that holds the runtime of `slot`'s far pointer (see [`crate::raw`], P5).
pub(crate) fn owner(slot: &'static Slot) -> &'static RtCell {
    match chunk_of(slot.id()) {
        Some((ch, i)) => &ch.owners[i],
        None => unreachable!("slot {} is not in the table", slot.id()),
    }
}

/// Returns slots to the free list. Their words must be [`crate::word::FREE`] and memd must hold no object
/// under their ids.
pub fn release(ids: impl IntoIterator<Item = u64>) {
    table().free.lock().extend(ids);
}

#[cfg(all(test, not(farmem_loom)))]
mod tests {
    use super::*;
    use crate::primitive::Ordering;

    #[test]
    fn slots_are_unique_and_reused() {
        assert_eq!(size_of::<Slot>(), 16, "a slot is the word, a 32-bit id and 32 bits of flags");
        let a = alloc().unwrap();
        let b = alloc().unwrap();
        assert_ne!(a.id(), b.id());
        assert_eq!(a.word.load(Ordering::Relaxed), crate::word::FREE);
        assert!(std::ptr::eq(get(a.id()).unwrap(), a));
        a.set_flags(crate::word::CLEAN | crate::word::SHARED);
        assert!(a.is_clean());
        a.mark_dirty();
        assert_eq!(a.flags(), crate::word::SHARED, "a write clears CLEAN only");
        release([a.id(), b.id()]);
        let c = alloc().unwrap();
        assert!(c.id() == a.id() || c.id() == b.id(), "a released slot is reused");
        release([c.id()]);
        assert!(get(u64::MAX).is_none());
    }
}
