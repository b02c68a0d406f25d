//! loom model of the pointer-word state machine: dereference vs evacuation vs free.
//!
//! Run with `RUSTFLAGS="--cfg farmem_loom" cargo test -p farmem-objrt --release --lib loom`.
//!
//! The model uses the crate's own transitions ([`crate::word`]) and grace period ([`crate::epoch::Domain`]) on a
//! single object whose bytes are an atomic cell at one of two "addresses". The evacuator moves the object from
//! address 1 to address 2 and then *reuses* address 1 (writes [`REUSED`] there), as a reclaimed region would be.
//! A mutator that reads [`REUSED`] through a reference it obtained legitimately is the bug the protocol exists
//! to prevent; a freer and an evacuator both believing they own the object is the other. A write that the
//! evacuator loses — it drops the object as clean after a mutator wrote it — is the third: the object's
//! `CLEAN` flag lives beside its word (`word.rs`), and [`loom_write_vs_evacuate_loses_nothing`] checks that
//! splitting them loses no write.

use crate::epoch::{backoff, Domain};
use crate::primitive::{AtomicU64, Ordering};
use crate::word::{self, Found};
use loom::sync::Arc;

const VALUE: u64 = 42;
const REUSED: u64 = 0xdead;
const A1: u64 = 0x10;
const A2: u64 = 0x20;

struct Obj {
    word: AtomicU64,
    cells: [AtomicU64; 2],
}

impl Obj {
    fn new() -> Obj {
        Obj { word: AtomicU64::new(word::local(A1, word::COLD)), cells: [AtomicU64::new(VALUE), AtomicU64::new(0)] }
    }
    fn cell(&self, a: u64) -> &AtomicU64 {
        &self.cells[usize::from(a == A2)]
    }
}

/// The evacuator: mark, grace period, take, copy, publish, reuse the old place.
fn evacuate(d: &Domain, o: &Obj) -> bool {
    let Some(m) = word::mark(&o.word, A1) else { return false };
    d.synchronize();
    let Ok(_) = word::begin_move(&o.word, m) else { return false };
    loom::thread::yield_now();
    let v = o.cell(A1).load(Ordering::Relaxed);
    assert_eq!(v, VALUE, "the evacuator copies a live object");
    o.cell(A2).store(v, Ordering::Relaxed);
    word::publish(&o.word, word::local(A2, 0));
    o.cell(A1).store(REUSED, Ordering::Relaxed);
    true
}

/// A dereference inside a pinned scope: reads the object through the address it was given, twice (as code
/// holding a reference for a while would); waits while the object is `BUSY` (being moved), as the runtime does.
fn deref(o: &Obj) -> u64 {
    let mut spins = 0;
    loop {
        let w = crate::primitive::load_word(&o.word);
        let a = if w & word::READ_SLOW == 0 {
            word::addr(w)
        } else {
            match word::touch(&o.word, true) {
                Found::Local(a) => a,
                Found::Busy(_) => {
                    backoff(&mut spins);
                    continue;
                }
                Found::Remote(_) => unreachable!("the model never evicts"),
            }
        };
        let v1 = o.cell(a).load(Ordering::Relaxed);
        // Let the evacuator run while the reference is held (loom needs the hint to explore that interleaving:
        // without the grace period in `evacuate` this model fails here).
        loom::thread::yield_now();
        let v2 = o.cell(a).load(Ordering::Relaxed);
        assert_eq!((v1, v2), (VALUE, VALUE), "a reference saw its memory reused");
        return v1;
    }
}

#[test]
fn loom_deref_vs_evacuate() {
    let b = loom::model::Builder::new();
    b.check(|| {
        let d = Arc::new(Domain::default());
        let o = Arc::new(Obj::new());
        let rec = d.register();
        let o2 = Arc::clone(&o);
        let m = loom::thread::spawn(move || {
            rec.pin();
            let v = deref(&o2);
            rec.unpin();
            v
        });
        evacuate(&d, &o);
        assert_eq!(m.join().unwrap(), VALUE);
    });
}

#[test]
fn loom_nested_pin_deref_vs_evacuate() {
    // The mutator pins (outer scope), the evacuator may mark meanwhile, then the mutator dereferences twice in
    // an inner scope: it must cancel the mark rather than wait for an evacuator waiting for its outer scope.
    let b = loom::model::Builder::new();
    b.check(|| {
        let d = Arc::new(Domain::default());
        let o = Arc::new(Obj::new());
        let rec = d.register();
        let o2 = Arc::clone(&o);
        let m = loom::thread::spawn(move || {
            rec.pin();
            let v = (deref(&o2), deref(&o2));
            rec.unpin();
            v
        });
        evacuate(&d, &o);
        assert_eq!(m.join().unwrap(), (VALUE, VALUE));
    });
}

#[test]
fn loom_free_vs_evacuate() {
    let b = loom::model::Builder::new();
    b.check(|| {
        let d = Arc::new(Domain::default());
        let o = Arc::new(Obj::new());
        let o2 = Arc::clone(&o);
        let f = loom::thread::spawn(move || {
            let mut spins = 0;
            let w = loop {
                match word::take_for_free(&o2.word) {
                    Ok(w) => break w,
                    Err(_) => backoff(&mut spins),
                }
            };
            // The freer owns the object now: whatever the evacuator did, it finished, and the word it saw is
            // the object's current place.
            assert!(word::is_local(w));
            assert_eq!(o2.cell(word::addr(w)).load(Ordering::Relaxed), VALUE);
            o2.cell(word::addr(w)).store(REUSED, Ordering::Relaxed);
        });
        let moved = evacuate(&d, &o);
        f.join().unwrap();
        assert_eq!(o.word.load(Ordering::Relaxed), word::FREE);
        // If the evacuator moved it, it did so before the free; its old place was reused by the evacuator, its
        // new place by the freer.
        if moved {
            assert_eq!(o.cell(A2).load(Ordering::Relaxed), REUSED);
        }
    });
}

#[test]
fn loom_concurrent_swap_in_fetches_once() {
    // The object starts remote. Two threads dereference it at once: exactly one claims the fetch (the runtime's
    // `start_fetch`), writes the bytes and publishes the local word; the other waits and must then see the
    // bytes (release/acquire through the word), never the memory's old contents.
    loom::model(|| {
        let o = Arc::new(Obj::new());
        o.word.store(word::remote(0, 8), Ordering::Relaxed);
        o.cells[0].store(REUSED, Ordering::Relaxed);
        let fetches = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (o, fetches) = (Arc::clone(&o), Arc::clone(&fetches));
                loom::thread::spawn(move || {
                    let mut spins = 0;
                    loop {
                        match word::touch(&o.word, true) {
                            Found::Local(a) => return o.cell(a).load(Ordering::Relaxed),
                            Found::Busy(_) => backoff(&mut spins),
                            Found::Remote(w) => {
                                if word::claim(&o.word, w).is_ok() {
                                    fetches.fetch_add(1, Ordering::Relaxed);
                                    o.cell(A1).store(VALUE, Ordering::Relaxed);
                                    word::publish(&o.word, word::local(A1, 0));
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), VALUE);
        }
        assert_eq!(fetches.load(Ordering::Relaxed), 1, "one fetch for two dereferences");
    });
}

/// A mutator's `deref_mut` inside a pinned scope (the fast path, or `touch` and `mark_dirty`), fetching the
/// object first if the evacuator has sent it away; writes `v` through the reference.
fn write(o: &WObj, v: u64) {
    let mut spins = 0;
    loop {
        let w = crate::primitive::load_word(&o.slot.word);
        let a = if w & word::READ_SLOW == 0 && !o.slot.is_clean() {
            w
        } else {
            match word::touch(&o.slot.word, true) {
                Found::Local(a) => {
                    o.slot.mark_dirty();
                    a
                }
                Found::Busy(_) => {
                    backoff(&mut spins);
                    continue;
                }
                Found::Remote(w) => {
                    // The runtime's fetch: claim, copy memd's bytes in, set the flags, publish (cold, clean).
                    if word::claim(&o.slot.word, w).is_ok() {
                        o.cells[1].store(o.remote.load(Ordering::Relaxed), Ordering::Relaxed);
                        o.slot.set_flags(word::CLEAN | word::HAS_REMOTE);
                        word::publish(&o.slot.word, word::local(A2, word::COLD));
                    }
                    continue;
                }
            }
        };
        o.cells[usize::from(a == A2)].store(v, Ordering::Relaxed);
        return;
    }
}

/// An object whose memd copy is a cell too, with a real slot (word and flags).
struct WObj {
    slot: crate::slots::Slot,
    cells: [AtomicU64; 2],
    remote: AtomicU64,
}

#[test]
fn loom_write_vs_evacuate_loses_nothing() {
    // The object is local, hot and clean (memd holds VALUE). A mutator writes NEW in a scope while the
    // evacuator takes the object: it must write it back (not drop it as clean) if the write came first, and the
    // mutator must fetch it back and dirty it if the move came first. Either way the object ends up NEW.
    // (Without `mark_dirty` in the write's slow path, or with the fast path not checking `CLEAN`, this fails.)
    const NEW: u64 = 7;
    let b = loom::model::Builder::new();
    b.check(|| {
        let d = Arc::new(Domain::default());
        let o = Arc::new(WObj {
            slot: crate::slots::Slot::for_model(word::local(A1, 0), word::CLEAN | word::HAS_REMOTE),
            cells: [AtomicU64::new(VALUE), AtomicU64::new(0)],
            remote: AtomicU64::new(VALUE),
        });
        let rec = d.register();
        let o2 = Arc::clone(&o);
        let m = loom::thread::spawn(move || {
            rec.pin();
            write(&o2, NEW);
            rec.unpin();
        });
        if let Some(mk) = word::mark(&o.slot.word, A1) {
            d.synchronize();
            if word::begin_move(&o.slot.word, mk).is_ok() {
                if !o.slot.is_clean() {
                    o.remote.store(o.cells[0].load(Ordering::Relaxed), Ordering::Relaxed);
                }
                word::publish(&o.slot.word, word::remote(0, 8));
                o.cells[0].store(REUSED, Ordering::Relaxed);
            }
        }
        m.join().unwrap();
        let w = o.slot.word.load(Ordering::Acquire);
        let now = if word::is_local(w) {
            o.cells[usize::from(word::addr(w) == A2)].load(Ordering::Relaxed)
        } else {
            o.remote.load(Ordering::Relaxed)
        };
        assert_eq!(now, NEW, "a write was lost (word {w:#x}, flags {})", o.slot.flags());
    });
}
