//! [`Stack`]: a far LIFO stack (a [`List`] used at its back).

use super::{ContainerError, List, ListIter};
use crate::prefetch::PrefetchStats;
use crate::runtime::Runtime;
use bytemuck::Pod;

/// A far LIFO stack of `T`. Pops walk the nodes backwards, which the direction prefetcher follows.
#[derive(Debug)]
pub struct Stack<'rt, T: Pod>(List<'rt, T>);

impl<'rt, T: Pod> Stack<'rt, T> {
    /// An empty stack in a new space of `rt`.
    pub fn new(rt: &'rt Runtime) -> Result<Self, ContainerError> {
        Ok(Stack(List::new(rt)?))
    }
    /// Pushes on top.
    pub fn push(&mut self, v: T) -> Result<(), ContainerError> {
        self.0.push_back(v)
    }
    /// Pops the top.
    pub fn pop(&mut self) -> Option<T> {
        self.0.pop_back()
    }
    /// A copy of the top.
    pub fn peek(&self) -> Option<T> {
        self.0.back()
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Whether the stack is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Elements from bottom to top (reverse it for top to bottom).
    pub fn iter(&self) -> ListIter<'_, 'rt, T> {
        self.0.iter()
    }
    /// The direction prefetcher's counters.
    pub fn prefetch_stats(&self) -> PrefetchStats {
        self.0.prefetch_stats()
    }
}
