//! farmem-objrt: the object runtime — far pointers, deref scopes, a local object heap under a budget, and a
//! pauseless evacuator that moves cold objects to memd.
//!
//! This is the path for data a programmer marks as far (AIFM's design, in safe Rust where Rust allows):
//!
//! ```
//! use farmem_objrt::{DerefScope, FarBox, Runtime, RuntimeConfig};
//! use std::sync::Arc;
//! let rt = Runtime::new(RuntimeConfig::new(16 << 20), Arc::new(farmem_memd::MemStore::new(1 << 30))).unwrap();
//! let mut b = FarBox::new_in(&rt, [0u64; 8]);
//! {
//!     let scope = DerefScope::new();
//!     b.deref_mut(&scope)[3] = 7;         // marks the object dirty
//!     assert_eq!(b.deref(&scope)[3], 7);  // local: a load, a test and a branch
//! }
//! rt.evacuate_all().unwrap();             // now it lives in memd
//! assert!(!b.is_local());
//! assert_eq!(b.read()[3], 7);             // fetched back on dereference
//! ```
//!
//! **Objects** are `bytemuck::Pod` values of 1 B – 1 MiB (any bytes are a valid value and there is no padding,
//! so an object can be copied to memd and back as bytes). A [`FarBox`] owns one; a [`FarArc`] shares an
//! immutable one. Each has a *pointer word* in a process-wide slot table ([`word`] documents its bits): local
//! form = address + present/busy/evacuating/CLOCK bits, all four below the 16-aligned address, so that the word
//! of a hot object is its bare address (its dirty/in-memd/shared flags sit beside the word in the slot); remote
//! form = space (memd `ds` id) and size, with the slot index as object id. A `FarBox` is 8 bytes, as a `Box`
//! is: the address of its slot (its runtime is kept beside the slot), so a local dereference is three dependent
//! loads — the slot's address, the word, the object — with one test and one branch.
//!
//! **Scopes.** [`DerefScope`] is an epoch pin. Dereferencing borrows both the pointer and the scope, so a
//! [`Ref`]/[`RefMut`] never outlives either (compile-fail doc tests on `DerefScope` prove it). Scopes nest.
//! They are `!Send` and must not be held across `.await`: async code fetches with a [`FetchHandle`] first and
//! opens a scope afterwards.
//!
//! **Heap and evacuator.** Objects are bump-allocated in 1 MiB log-structured regions (`heap.rs`); background
//! evacuator threads (`evac.rs`) start when free regions fall to the low watermark and stop at the high one,
//! keep hot objects (CLOCK) by compacting them, write cold dirty ones to memd in pipelined batches, and drop
//! cold clean ones. Mutators never wait for a cycle — only for an object that is being moved at that moment,
//! and (outside scopes) at the hard watermark.
//!
//! **Misses** fetch the object once however many threads dereference it; [`Runtime::fetch`] and `prefetch`
//! start fetches of many objects (batched per space) before anyone waits, so misses overlap. Non-temporal
//! reads and writes (`read_nt`, `write_nt`) go to memd without caching. Freeing deletes the remote copy too.
//!
//! **For containers** (the next layer): spaces give each data structure its own memd `ds` id
//! ([`Runtime::new_space`]), [`Runtime::write_back`] makes memd's copy current before offloaded computation,
//! and [`Runtime::fetch`] is the prefetcher's tool.
//!
//! # Unsafe code and verification
//! All `unsafe` is in `raw.rs` (heap memory and address-to-reference conversion), whose module documentation
//! states the protocol the rest of the crate maintains; every other module is `#![deny(unsafe_code)]`. The
//! pointer-word state machine (deref vs evacuate vs free) has a loom model:
//! `RUSTFLAGS="--cfg farmem_loom" cargo test -p farmem-objrt --release --lib loom`. The parts that make no
//! system calls run under Miri: `cargo +nightly miri test -p farmem-objrt --lib -- word:: heap:: raw::
//! epoch::tests slots:: tests::miri_` (the `miri_` runtime tests use an in-process store, no evacuator thread
//! and no timing).
#![deny(unsafe_code)]

/// Far containers: Array, Vector (DataFrame column), List, Stack, Queue, HashMap; offloaded operations.
pub mod containers;
pub mod epoch;
pub mod error;
mod evac;
mod heap;
/// Stride and direction prefetchers with an adaptive, budget-bounded window.
pub mod prefetch;
mod primitive;
pub mod ptr;
#[allow(unsafe_code)]
mod raw;
pub mod runtime;
mod slots;
pub mod stats;
pub mod word;

#[cfg(all(test, farmem_loom))]
mod loom_model;
#[cfg(all(test, not(farmem_loom)))]
mod tests;

pub use containers::{Array, ContainerError, HashMap, List, Offload, Queue, Stack, Vector};
pub use epoch::DerefScope;
pub use error::ObjError;
pub use ptr::{FarArc, FarBox, FarHandle, Ref, RefMut};
pub use runtime::{FetchHandle, Runtime, RuntimeConfig, Space};
pub use stats::Stats;
