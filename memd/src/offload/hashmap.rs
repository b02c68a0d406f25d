//! The server-side hash map ([`HASHMAP_TYPE`](super::layout::HASHMAP_TYPE)): lookups run beside the buckets
//! and return only values, so a miss costs one small reply instead of moving a bucket to the client.

use super::layout::{map_op, BucketLayout, Reader};
use super::{DsInstance, DsType, ObjectsView, OffloadError};

/// The type: CONSTRUCT parameters are a [`BucketLayout`].
#[derive(Debug, Default)]
pub struct HashMapType;

impl DsType for HashMapType {
    fn construct(&self, params: &[u8]) -> Result<Box<dyn DsInstance>, OffloadError> {
        Ok(Box::new(HashMapInstance { layout: BucketLayout::decode(params)? }))
    }
}

/// One map: only its bucket layout; the client names the bucket of every lookup (it owns the directory).
#[derive(Debug)]
struct HashMapInstance {
    layout: BucketLayout,
}

impl DsInstance for HashMapInstance {
    fn compute(&mut self, op: u32, input: &[u8], objects: &mut ObjectsView<'_>) -> Result<Vec<u8>, OffloadError> {
        if op != map_op::GET {
            return Err(OffloadError::UnknownOp(op));
        }
        let l = self.layout;
        let mut r = Reader::new(input);
        let mut out = Vec::new();
        while !r.is_empty() {
            let bucket = r.u64()?;
            let hash = r.u64()?;
            let key = r.bytes(l.key_size)?;
            objects.with(bucket, |b| {
                let b = b.ok_or(OffloadError::MissingObject(bucket))?;
                if b.len() != l.bucket_bytes {
                    return Err(OffloadError::BadInput(format!(
                        "object {bucket} has {} bytes, not a {}-byte bucket",
                        b.len(),
                        l.bucket_bytes
                    )));
                }
                match l.find(b, hash, key) {
                    Some(i) => {
                        out.push(1);
                        out.extend_from_slice(l.val(b, i));
                    }
                    None => out.push(0),
                }
                Ok(())
            })?;
        }
        Ok(out)
    }
}
