//! [`Queue`]: a far FIFO queue (a [`List`] pushed at the back and popped at the front).

use super::{ContainerError, List, ListIter};
use crate::prefetch::PrefetchStats;
use crate::runtime::Runtime;
use bytemuck::Pod;

/// A far FIFO queue of `T`. Pops walk the nodes forwards, which the direction prefetcher follows.
#[derive(Debug)]
pub struct Queue<'rt, T: Pod>(List<'rt, T>);

impl<'rt, T: Pod> Queue<'rt, T> {
    /// An empty queue in a new space of `rt`.
    pub fn new(rt: &'rt Runtime) -> Result<Self, ContainerError> {
        Ok(Queue(List::new(rt)?))
    }
    /// Enqueues at the back.
    pub fn push(&mut self, v: T) -> Result<(), ContainerError> {
        self.0.push_back(v)
    }
    /// Dequeues from the front.
    pub fn pop(&mut self) -> Option<T> {
        self.0.pop_front()
    }
    /// A copy of the front.
    pub fn peek(&self) -> Option<T> {
        self.0.front()
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Whether the queue is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Elements from front to back.
    pub fn iter(&self) -> ListIter<'_, 'rt, T> {
        self.0.iter()
    }
    /// The direction prefetcher's counters.
    pub fn prefetch_stats(&self) -> PrefetchStats {
        self.0.prefetch_stats()
    }
}
