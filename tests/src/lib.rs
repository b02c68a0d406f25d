//! farmem-tests: cross-crate integration tests, the evaluation workloads and the `farmem-bench` harness.
//!
//! `farmem-bench` reruns AIFM's evaluation side by side in five modes — `local` (the ideal), `paging` (std
//! collections on FarAlloc), `objects` (objrt containers), `hybrid` (hot structure in objrt, bulk data on
//! FarAlloc) and `swap` (kernel paging to zram under a memory-cgroup limit) — at the same local-memory budget,
//! and checks that every mode computes what `local` computes.

pub mod harness;
pub mod plot;
pub mod rng;
pub mod taxi;
pub mod workloads;
