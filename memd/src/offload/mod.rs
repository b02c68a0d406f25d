//! Offloaded compute: a registry of server-side data-structure types behind CONSTRUCT, DESTRUCT and COMPUTE.
//!
//! A type is registered under a name; CONSTRUCT(ds, name, params) makes an instance known by the id `ds`, which
//! also names the object key space the client fills with WRITE_OBJECTS. COMPUTE(ds, op, input) runs on the
//! server beside the data: the instance sees the tenant's objects of its own `ds` through an [`ObjectsView`] and
//! nothing else, so offloaded code can never reach another tenant or another data structure.

pub mod column;
pub mod hashmap;
pub mod layout;

use crate::proto::{ProtoError, Status};
use crate::store::{Engine, Tenant};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// A kind of server-side data structure.
pub trait DsType: Send + Sync {
    /// Builds an instance from CONSTRUCT's parameters.
    fn construct(&self, params: &[u8]) -> Result<Box<dyn DsInstance>, OffloadError>;
}

/// One server-side data structure.
pub trait DsInstance: Send + Sync {
    /// Runs operation `op` on `input`, reading and writing this instance's objects through `objects`.
    fn compute(&mut self, op: u32, input: &[u8], objects: &mut ObjectsView<'_>) -> Result<Vec<u8>, OffloadError>;
}

impl fmt::Debug for dyn DsInstance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DsInstance")
    }
}

/// Why an offloaded operation failed; sent to the client as a COMPUTE_FAILED error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    /// The type has no operation of this number.
    #[error("operation {0} is not defined for this data structure")]
    UnknownOp(u32),
    /// Parameters or input did not decode.
    #[error("bad input: {0}")]
    BadInput(String),
    /// An object the operation needs is not stored.
    #[error("object {0} is missing")]
    MissingObject(u64),
    /// A write back into the store failed (capacity).
    #[error("{0}")]
    Store(String),
}

impl From<OffloadError> for ProtoError {
    fn from(e: OffloadError) -> Self {
        ProtoError::new(Status::ComputeFailed, e.to_string())
    }
}

/// Registered types by name.
#[derive(Clone, Default)]
pub struct Registry {
    types: BTreeMap<String, Arc<dyn DsType>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.types.keys()).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a type under `name`, replacing any earlier one.
    pub fn register(&mut self, name: &str, ty: Arc<dyn DsType>) -> &mut Self {
        self.types.insert(name.to_string(), ty);
        self
    }
    /// The registered type names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.types.keys().map(String::as_str)
    }
    pub(crate) fn construct(&self, name: &str, params: &[u8]) -> Result<Box<dyn DsInstance>, ProtoError> {
        let ty = self.types.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.names().collect();
            ProtoError::new(
                Status::UnknownType,
                format!("unknown data-structure type {name:?} (known: {})", known.join(", ")),
            )
        })?;
        Ok(ty.construct(params)?)
    }
}

/// An instance's window onto its own objects (the tenant's key space `ds`).
#[derive(Debug)]
pub struct ObjectsView<'a> {
    pub(crate) engine: &'a Engine,
    pub(crate) tenant: &'a Tenant,
    pub(crate) ds: u64,
}

impl ObjectsView<'_> {
    /// The data-structure id this view is bound to.
    pub fn ds(&self) -> u64 {
        self.ds
    }
    /// A copy of object `id`, if stored.
    pub fn get(&self, id: u64) -> Option<Vec<u8>> {
        self.engine.read_object(self.tenant, self.ds, id)
    }
    /// Runs `f` on object `id` in place (no copy), under its shard lock: keep `f` short.
    pub fn with<R>(&self, id: u64, f: impl FnOnce(Option<&[u8]>) -> R) -> R {
        self.engine.with_object(self.tenant, self.ds, id, f)
    }
    /// Stores object `id` (1 B to 1 MiB), subject to the server's capacity.
    pub fn put(&mut self, id: u64, value: &[u8]) -> Result<(), OffloadError> {
        if value.is_empty() || value.len() > crate::proto::MAX_OBJECT {
            return Err(OffloadError::BadInput(format!("object of {} bytes", value.len())));
        }
        let len = u32::try_from(value.len()).expect("bounded by MAX_OBJECT");
        self.engine
            .write_objects(self.tenant, self.ds, std::iter::once((id, len)), value)
            .map_err(|e| OffloadError::Store(e.to_string()))
    }
}

/// The types every memd serves: the object runtime's offloaded containers — the hash map
/// ([`layout::HASHMAP_TYPE`]) and DataFrame columns ([`layout::COLUMN_TYPE`]).
pub fn builtin() -> Registry {
    let mut r = Registry::new();
    r.register(layout::HASHMAP_TYPE, Arc::new(hashmap::HashMapType));
    r.register(layout::COLUMN_TYPE, Arc::new(column::ColumnType));
    r
}
