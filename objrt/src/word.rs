//! The pointer word: one `u64` per far object that says where the object is and what may be done to it.
//!
//! ```text
//! local : | 63..52 0 | 51 FRESH | 50..48 0 | 47..4 address (16-aligned)     | COLD | MARKED | BUSY | ABSENT=0 |
//! remote: | 63..48 0 | 47..32 space | 31..28 0 | 27..8 size - 1 | 7..4 0 |  0   |   0    | BUSY | ABSENT=1 |
//! ```
//! The four low bits are the ones a dereference must find clear: the object is local (`ABSENT`), nobody is
//! moving, fetching or freeing it (`BUSY`), the evacuator has not picked it (`MARKED`), and the CLOCK hand has
//! not passed it since its last use (`COLD`). Objects are 16-byte aligned, so those bits are free in a local word,
//! and a local word holds nothing else but, on its way in, [`FRESH`] (below): **the word of a hot local object is
//! the object's address itself**. The
//! read fast path is `test al, 0xf; jne slow` and then the load of the object through the word as it is (see
//! [`crate::ptr::FarBox::deref`]); an earlier layout kept three flags above the address, and the `and` that
//! stripped them cost 10 % of a dereference.
//!
//! Those flags — [`CLEAN`], [`HAS_REMOTE`], [`SHARED`] — live beside the word, in the slot's `flags`
//! (`slots.rs`), and mean something only while the word is local. Only writes and the runtime's slow paths read
//! them. A write's fast path loads them after the word (same cache line) and takes the slow path while `CLEAN`
//! is set, so the first write after a write-back clears it once. Who changes them, and why no change is lost:
//! - `CLEAN`/`HAS_REMOTE` are set only by the thread that holds the word `BUSY` (fetch install, write-back),
//!   before it publishes the word with release ordering; whoever acquires the word afterwards sees them.
//! - `CLEAN` is cleared only by a writer's slow path, after its [`touch`] found the object local, inside the
//!   writer's scope and with `&mut` access to the pointer. Nobody can hold the object `BUSY` meanwhile without
//!   first waiting for that scope (the evacuator: mark, grace period, [`begin_move`]) or a shared borrow of the
//!   pointer (write-back, eviction, which `&mut` excludes), so every reader of `CLEAN` sees the clear.
//! - `SHARED` is set when the object is allocated and never changes.
//!
//! A fetched object arrives `COLD | FRESH`: its first use clears only `FRESH`, and only a second use before the
//! evacuator's hand comes round clears `COLD` and keeps it. The access a fetch was made for (a miss, or a
//! prefetch a scan runs ahead of itself) is the object's first use, not evidence that it is hot: a scan
//! passes through its objects once, and counting that pass would make the evacuator copy every scanned object
//! to keep it (two-touch admission, as in CLOCK-Pro or Linux's active list). `FRESH` implies `COLD`.
//!
//! The object id is not in the word: it is the index of the slot that holds the word (`slots.rs`), which
//! never changes while the object lives. The remote form carries the space (a data-structure index of the
//! runtime, which maps to memd's `ds` id) and the size, enough to fetch the object without touching local memory.
//!
//! # State machine
//! Every transition is a compare-and-swap on the whole word, so a stale view always fails:
//! - mutator deref: local with `COLD`/`MARKED` → clear them, or only `FRESH` and `MARKED` on the first use of
//!   a fetched object (a mark is *cancelled*: the evacuator will skip the object); remote → `BUSY` (fetch
//!   claimed) → local, `COLD | FRESH`.
//! - evacuator: local → `MARKED` → (grace period) → `BUSY` → new local address, or remote.
//! - free: any non-`BUSY` state → [`FREE`].
//! - write-back / non-temporal write: local or remote → `BUSY` → same place (and `CLEAN` set in the flags).

use crate::primitive::{AtomicU64, Ordering};

/// Not local: the word is in remote form.
pub const ABSENT: u64 = 1 << 0;
/// Someone (evacuator, fetcher, freer, flusher) owns the object for a moment; wait for them.
pub const BUSY: u64 = 1 << 1;
/// The evacuator has picked the object and waits for a grace period; a dereference cancels it.
pub const MARKED: u64 = 1 << 2;
/// CLOCK bit: set by the evacuator's pass, cleared by the next dereference.
pub const COLD: u64 = 1 << 3;
/// A dereference finds all of these clear on its fast path; then the word is the object's address.
pub const READ_SLOW: u64 = ABSENT | BUSY | MARKED | COLD;
/// Slot flag (not a word bit): the local copy equals memd's copy (so it can be dropped without a write). A write
/// finds it clear on its fast path.
pub const CLEAN: u32 = 1 << 0;
/// Slot flag: memd holds a copy of the object (maybe stale if not `CLEAN`): free must delete it.
pub const HAS_REMOTE: u32 = 1 << 1;
/// Slot flag: the object is owned by a [`crate::ptr::FarArc`].
pub const SHARED: u32 = 1 << 2;
/// Word bit: fetched and not used yet — its first use clears this bit instead of `COLD` (set only together
/// with `COLD`, so a hot word is still the bare address).
pub const FRESH: u64 = 1 << 51;
/// Bits of a local word that hold the address.
pub const ADDR_MASK: u64 = ((1 << 48) - 1) & !0xf;
/// The highest address a local word can hold (exclusive).
pub const ADDR_LIMIT: u64 = 1 << 48;
/// The word of a slot that holds no object.
pub const FREE: u64 = BUSY;

const SIZE_SHIFT: u32 = 8;
const SIZE_MASK: u64 = (1 << 20) - 1;
const SPACE_SHIFT: u32 = 32;
const SPACE_MASK: u64 = (1 << 16) - 1;

/// Largest object size the remote form can hold (1 MiB, memd's limit).
pub const MAX_SIZE: usize = 1 << 20;
/// Number of spaces a runtime can have.
pub const MAX_SPACES: usize = 1 << 16;

/// A local word for an object at `addr` (16-aligned, below [`ADDR_LIMIT`]) with state bits `bits` (any of
/// `COLD`, `MARKED`, `BUSY`). With none, the word is `addr` itself: what the fast path relies on.
#[inline]
pub fn local(addr: u64, bits: u64) -> u64 {
    debug_assert!(addr & !ADDR_MASK == 0, "address {addr:#x} not 16-aligned or too high");
    debug_assert!(
        bits & !(COLD | MARKED | BUSY | FRESH) == 0 && (bits & FRESH == 0 || bits & COLD != 0),
        "a local word holds only state bits beside the address (FRESH only with COLD)"
    );
    addr | bits
}

/// A remote word for an object of `size` bytes (1 ..= [`MAX_SIZE`]) in space `space`.
#[inline]
pub fn remote(space: u16, size: usize) -> u64 {
    debug_assert!((1..=MAX_SIZE).contains(&size));
    let sz = (size as u64 - 1) & SIZE_MASK;
    ABSENT | (sz << SIZE_SHIFT) | (u64::from(space) << SPACE_SHIFT)
}

/// Whether `w` is in local form.
#[inline]
pub fn is_local(w: u64) -> bool {
    w & ABSENT == 0 && w != FREE
}

/// The address of a local word.
#[inline]
pub fn addr(w: u64) -> u64 {
    w & ADDR_MASK
}

/// The size of a remote word.
#[inline]
pub fn remote_size(w: u64) -> usize {
    // Twenty bits: the cast is lossless on every target with a 32-bit or wider usize.
    usize::try_from((w >> SIZE_SHIFT) & SIZE_MASK).map_or(MAX_SIZE, |s| s + 1)
}

/// The space of a remote word.
#[inline]
pub fn remote_space(w: u64) -> u16 {
    u16::try_from((w >> SPACE_SHIFT) & SPACE_MASK).unwrap_or(u16::MAX)
}

/// What a slow-path dereference found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// Local at this address; the word now lets the fast path through.
    Local(u64),
    /// Remote and not claimed: the caller should claim a fetch ([`claim`]). Carries the word seen.
    Remote(u64),
    /// Someone owns the object for a moment (word seen): wait and retry.
    Busy(u64),
}

/// Slow path of a dereference: clears `MARKED` (cancelling an evacuation the evacuator has not begun) and
/// `COLD` — or, on a fetched object's first use, `FRESH` instead of `COLD`; leaves `COLD` and `FRESH` alone
/// when `warm` is false (non-temporal access). A write then clears the slot's `CLEAN` flag itself
/// (`Slot::mark_dirty` in `slots.rs`).
pub fn touch(word: &AtomicU64, warm: bool) -> Found {
    let mut w = crate::primitive::load_word(word);
    loop {
        if w & BUSY != 0 {
            return Found::Busy(w);
        }
        if w & ABSENT != 0 {
            return Found::Remote(w);
        }
        let mut clear = MARKED;
        if warm {
            clear |= if w & FRESH != 0 { FRESH } else { COLD };
        }
        if w & clear == 0 {
            return Found::Local(addr(w));
        }
        match word.compare_exchange_weak(w, w & !clear, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Found::Local(addr(w)),
            Err(now) => w = now,
        }
    }
}

/// Claims `word` (seen as `seen`) for an operation that must exclude everyone else: sets `BUSY`, clearing
/// `MARKED` (which cancels a pending evacuation). Returns the word as it was, without `MARKED`.
pub fn claim(word: &AtomicU64, seen: u64) -> Result<u64, u64> {
    debug_assert!(seen & BUSY == 0);
    word.compare_exchange(seen, (seen & !MARKED) | BUSY, Ordering::AcqRel, Ordering::Acquire).map(|w| w & !MARKED)
}

/// Ends a claim: publishes `w` (which must not have `BUSY`) with release ordering, so the bytes written before
/// are visible to whoever sees it.
pub fn publish(word: &AtomicU64, w: u64) {
    debug_assert!(w & BUSY == 0 || w == FREE);
    crate::primitive::store_word(word, w);
}

/// Evacuator: marks a local object at `at` for evacuation. `None` if the word no longer describes that object
/// there, or if someone holds it.
pub fn mark(word: &AtomicU64, at: u64) -> Option<u64> {
    let w = word.load(Ordering::Acquire);
    if !is_local(w) || addr(w) != at || w & (BUSY | MARKED) != 0 {
        return None;
    }
    let m = w | MARKED;
    word.compare_exchange(w, m, Ordering::SeqCst, Ordering::Relaxed).ok().map(|_| m)
}

/// Evacuator, after a grace period: takes a marked object for moving. Fails if a mutator cancelled the mark
/// (touched the object), freed it, or claimed it meanwhile. On success returns the word (without `MARKED`).
pub fn begin_move(word: &AtomicU64, marked: u64) -> Result<u64, u64> {
    word.compare_exchange(marked, (marked & !MARKED) | BUSY, Ordering::AcqRel, Ordering::Acquire).map(|w| w & !MARKED)
}

/// Free: takes the word to [`FREE`] from any state that nobody holds. Returns the word it replaced, or
/// `Err(seen)` when it is `BUSY` (wait and retry).
pub fn take_for_free(word: &AtomicU64) -> Result<u64, u64> {
    let mut w = word.load(Ordering::Acquire);
    loop {
        if w & BUSY != 0 {
            return Err(w);
        }
        match word.compare_exchange_weak(w, FREE, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Ok(w & !MARKED),
            Err(now) => w = now,
        }
    }
}

#[cfg(all(test, not(farmem_loom)))]
mod tests {
    use super::*;

    #[test]
    fn encodings_roundtrip() {
        for &(space, size) in &[(0u16, 1usize), (7, 4096), (u16::MAX, MAX_SIZE), (300, 17)] {
            let w = remote(space, size);
            assert!(!is_local(w));
            assert_eq!(remote_space(w), space);
            assert_eq!(remote_size(w), size);
            assert_eq!(w & (BUSY | MARKED | COLD), 0);
            assert_ne!(w & READ_SLOW, 0, "a remote object takes the slow path");
        }
        let a = 0x7fff_ffff_fff0u64;
        let w = local(a, COLD);
        assert!(is_local(w));
        assert_eq!(addr(w), a);
        assert_ne!(w & READ_SLOW, 0, "a cold object takes the slow path");
        assert_eq!(local(a, 0), a, "the word of a hot local object is its address");
        assert_eq!(local(a, 0) & READ_SLOW, 0, "and it takes the fast path");
        for bits in [MARKED, BUSY, COLD | MARKED] {
            assert_ne!(local(a, bits) & READ_SLOW, 0);
            assert_eq!(addr(local(a, bits)), a);
        }
        assert!(!is_local(FREE));
        assert_ne!(FREE & READ_SLOW, 0);
    }

    #[test]
    fn touch_clears_what_it_should() {
        let a = 0x1000u64;
        let word = AtomicU64::new(local(a, COLD | MARKED));
        assert_eq!(touch(&word, false), Found::Local(a));
        assert_eq!(word.load(Ordering::Relaxed), local(a, COLD), "non-temporal access keeps COLD");
        assert_eq!(touch(&word, true), Found::Local(a));
        assert_eq!(word.load(Ordering::Relaxed), a);
        // A fetched object: the first use clears FRESH only, the second COLD.
        word.store(local(a, COLD | FRESH), Ordering::Relaxed);
        assert_eq!(touch(&word, false), Found::Local(a));
        assert_eq!(word.load(Ordering::Relaxed), local(a, COLD | FRESH), "non-temporal: not a use");
        assert_eq!(touch(&word, true), Found::Local(a));
        assert_eq!(word.load(Ordering::Relaxed), local(a, COLD), "first use");
        assert_ne!(word.load(Ordering::Relaxed) & READ_SLOW, 0);
        assert_eq!(touch(&word, true), Found::Local(a));
        assert_eq!(word.load(Ordering::Relaxed), a, "second use: hot, the bare address");
        let r = remote(1, 8);
        word.store(r, Ordering::Relaxed);
        assert_eq!(touch(&word, true), Found::Remote(r));
        assert_eq!(claim(&word, r), Ok(r));
        assert_eq!(touch(&word, true), Found::Busy(r | BUSY));
        assert_eq!(take_for_free(&word), Err(r | BUSY));
    }

    #[test]
    fn evacuation_protocol() {
        let a = 0x2000u64;
        let word = AtomicU64::new(local(a, COLD));
        assert_eq!(mark(&word, 0x3000), None, "wrong address: not this object");
        let m = mark(&word, a).unwrap();
        assert_eq!(mark(&word, a), None, "already marked");
        // A mutator touches it: the mark is cancelled and the move fails.
        assert_eq!(touch(&word, true), Found::Local(a));
        assert!(begin_move(&word, m).is_err());
        // Marked again, untouched: the move begins and excludes free.
        let m = mark(&word, a).unwrap();
        let w = begin_move(&word, m).unwrap();
        assert_eq!(w, local(a, 0));
        assert!(take_for_free(&word).is_err());
        publish(&word, remote(0, 16));
        assert_eq!(take_for_free(&word), Ok(remote(0, 16)));
        assert_eq!(word.load(Ordering::Relaxed), FREE);
        // Free cancels a mark.
        word.store(local(a, 0), Ordering::Relaxed);
        let m = mark(&word, a).unwrap();
        assert_eq!(take_for_free(&word), Ok(local(a, 0)));
        assert!(begin_move(&word, m).is_err());
    }
}
