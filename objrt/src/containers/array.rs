//! [`Array`]: a fixed-length far array.

use super::{ContainerError, ElemMut, Offload, Vector};
use crate::epoch::DerefScope;
use crate::runtime::Runtime;
use bytemuck::Pod;
use farmem_memd::offload::layout::Num;

/// A far array whose length is fixed at creation. It reads like a [`Vector`] (it dereferences to one: `get`,
/// `read`, `iter`, `prefetch`, the column reductions...) but offers only length-preserving writes.
#[derive(Debug)]
pub struct Array<'rt, T: Pod>(Vector<'rt, T>);

impl<'rt, T: Pod> Array<'rt, T> {
    /// `len` zeroed elements.
    pub fn new(rt: &'rt Runtime, len: usize) -> Result<Self, ContainerError> {
        Self::from_elem(rt, T::zeroed(), len)
    }

    /// `len` copies of `value`.
    pub fn from_elem(rt: &'rt Runtime, value: T, len: usize) -> Result<Self, ContainerError> {
        Ok(Array(Vector::from_elem(rt, value, len)?))
    }

    /// A copy of `items`.
    pub fn from_slice(rt: &'rt Runtime, items: &[T]) -> Result<Self, ContainerError> {
        Ok(Array(Vector::from_slice(rt, items)?))
    }

    /// The elements as a vector (which may grow).
    pub fn into_vector(self) -> Vector<'rt, T> {
        self.0
    }

    /// Element `i`, mutably borrowed for the life of `scope`.
    #[inline]
    pub fn get_mut<'s>(&'s mut self, i: usize, scope: &'s DerefScope) -> Option<ElemMut<'s, T>> {
        self.0.get_mut(i, scope)
    }

    /// Overwrites element `i`.
    pub fn set(&mut self, i: usize, value: T) -> Result<(), ContainerError> {
        self.0.set(i, value)
    }

    /// Overwrites element `i` without caching its chunk.
    pub fn write_nt(&mut self, i: usize, value: T) -> Result<(), ContainerError> {
        self.0.write_nt(i, value)
    }
}

impl<T: Pod + Num> Array<'_, T> {
    /// See [`Vector::shuffle`].
    pub fn shuffle(&mut self, idx: &[u64], mode: Offload) -> Result<(), ContainerError> {
        self.0.shuffle(idx, mode)
    }

    /// See [`Vector::assign`].
    pub fn assign(&mut self, idx: &[u64], values: &[T], mode: Offload) -> Result<(), ContainerError> {
        self.0.assign(idx, values, mode)
    }
}

impl<'rt, T: Pod> std::ops::Deref for Array<'rt, T> {
    type Target = Vector<'rt, T>;
    fn deref(&self) -> &Vector<'rt, T> {
        &self.0
    }
}

impl<'rt, T: Pod> From<Array<'rt, T>> for Vector<'rt, T> {
    fn from(a: Array<'rt, T>) -> Self {
        a.0
    }
}
