//! The dereference loops that `benches/objrt.rs` times and `examples/deref_cost.rs` counts instructions of: one
//! definition, so both measure the same code. Included with `#[path]` (a file in a subfolder of `benches/` is not
//! a bench target of its own).

use farmem_objrt::{DerefScope, FarBox};

/// Sums the objects in a scope of its own (the goal's figure).
#[inline(never)]
pub fn sum_far(v: &[FarBox<u64>]) -> u64 {
    let s = DerefScope::new();
    v.iter().map(|b| *b.deref(&s)).sum()
}

/// Sums the objects in a scope its caller opened.
#[inline(never)]
pub fn sum_far_in(v: &[FarBox<u64>], s: &DerefScope) -> u64 {
    v.iter().map(|b| *b.deref(s)).sum()
}

/// The baseline.
#[inline(never)]
pub fn sum_box(v: &[Box<u64>]) -> u64 {
    v.iter().map(|b| **b).sum()
}

/// A reference, not a goal: a `Box` of a `Box` is three dependent loads with no test at all — the slot
/// indirection's share of the gap, for any design in which the word lives outside the movable pointer.
#[allow(clippy::redundant_allocation, reason = "the extra indirection is what this measures")]
#[inline(never)]
pub fn sum_box_box(v: &[Box<Box<u64>>]) -> u64 {
    v.iter().map(|b| ***b).sum()
}
