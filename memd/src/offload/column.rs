//! The server-side column ([`COLUMN_TYPE`](super::layout::COLUMN_TYPE)): DataFrame column operations run
//! beside the chunks. One instance serves every column of its data structure; each request names its chunks
//! ([`ColumnInput`]), so the instance keeps no state that could go stale.

use super::layout::{col_op, is_reduction, locate, reducer, ColumnInput, Reader, CHUNK_BYTES};
use super::{DsInstance, DsType, ObjectsView, OffloadError};

/// The type: CONSTRUCT takes no parameters.
#[derive(Debug, Default)]
pub struct ColumnType;

impl DsType for ColumnType {
    fn construct(&self, params: &[u8]) -> Result<Box<dyn DsInstance>, OffloadError> {
        if !params.is_empty() {
            return Err(OffloadError::BadInput("a column data structure takes no parameters".into()));
        }
        Ok(Box::new(ColumnInstance))
    }
}

#[derive(Debug)]
struct ColumnInstance;

/// Reads a whole chunk (checking its size).
fn chunk(objects: &ObjectsView<'_>, id: u64) -> Result<Vec<u8>, OffloadError> {
    let b = objects.get(id).ok_or(OffloadError::MissingObject(id))?;
    if b.len() != CHUNK_BYTES {
        return Err(OffloadError::BadInput(format!("object {id} has {} bytes, not a column chunk", b.len())));
    }
    Ok(b)
}

/// Every row's bytes, packed (for operations that read rows in arbitrary order).
fn all_rows(col: &ColumnInput, objects: &ObjectsView<'_>) -> Result<Vec<u8>, OffloadError> {
    let size = col.elem.size();
    let mut out = Vec::with_capacity(usize::try_from(col.len).unwrap_or(0) * size);
    for (c, &id) in col.chunks.iter().enumerate() {
        let n = col.rows_in(c);
        objects.with(id, |b| match b {
            Some(b) if b.len() == CHUNK_BYTES => {
                out.extend_from_slice(&b[..n * size]);
                Ok(())
            }
            Some(_) => Err(OffloadError::BadInput(format!("object {id} is not a column chunk"))),
            None => Err(OffloadError::MissingObject(id)),
        })?;
    }
    Ok(out)
}

/// Writes packed rows into chunks (each chunk rewritten whole).
fn store_rows(rows: &[u8], size: usize, chunks: &[u64], objects: &mut ObjectsView<'_>) -> Result<(), OffloadError> {
    let per_bytes = (CHUNK_BYTES / size) * size;
    for (c, &id) in chunks.iter().enumerate() {
        let part = rows.get(c * per_bytes..).unwrap_or(&[]);
        let part = &part[..part.len().min(per_bytes)];
        let mut b = chunk(objects, id)?;
        b[..part.len()].copy_from_slice(part);
        objects.put(id, &b)?;
    }
    Ok(())
}

fn check_indices(idx: &[u64], len: u64) -> Result<(), OffloadError> {
    match idx.iter().find(|&&i| i >= len) {
        Some(i) => Err(OffloadError::BadInput(format!("row index {i} is out of bounds for {len} rows"))),
        None => Ok(()),
    }
}

fn gather_rows(rows: &[u8], size: usize, idx: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(idx.len() * size);
    for &i in idx {
        let a = usize::try_from(i).unwrap_or(usize::MAX) * size;
        out.extend_from_slice(&rows[a..a + size]);
    }
    out
}

impl DsInstance for ColumnInstance {
    fn compute(&mut self, op: u32, input: &[u8], objects: &mut ObjectsView<'_>) -> Result<Vec<u8>, OffloadError> {
        let mut r = Reader::new(input);
        let col = ColumnInput::decode(&mut r)?;
        let size = col.elem.size();
        if is_reduction(op) {
            let mut red = reducer(col.elem, op, &mut r)?;
            let per = col.elem.per_chunk() as u64;
            for (c, &id) in col.chunks.iter().enumerate() {
                let n = col.rows_in(c);
                objects.with(id, |b| match b {
                    Some(b) if b.len() == CHUNK_BYTES => {
                        red.feed(b, c as u64 * per, n);
                        Ok(())
                    }
                    Some(_) => Err(OffloadError::BadInput(format!("object {id} is not a column chunk"))),
                    None => Err(OffloadError::MissingObject(id)),
                })?;
            }
            return Ok(red.finish());
        }
        match op {
            col_op::GATHER => {
                let dst = r.ids()?;
                let idx = r.u64s()?;
                if dst.len() != super::layout::chunks_for(idx.len() as u64, size) {
                    return Err(OffloadError::BadInput(format!(
                        "{} destination chunks for {} rows",
                        dst.len(),
                        idx.len()
                    )));
                }
                if let Some(d) = dst.iter().find(|d| col.chunks.contains(d)) {
                    return Err(OffloadError::BadInput(format!("destination chunk {d} is also a source chunk")));
                }
                check_indices(&idx, col.len)?;
                let rows = all_rows(&col, objects)?;
                store_rows(&gather_rows(&rows, size, &idx), size, &dst, objects)?;
            }
            col_op::SHUFFLE => {
                let idx = r.u64s()?;
                if idx.len() as u64 != col.len {
                    return Err(OffloadError::BadInput(format!("{} indices for {} rows", idx.len(), col.len)));
                }
                check_indices(&idx, col.len)?;
                let rows = all_rows(&col, objects)?;
                store_rows(&gather_rows(&rows, size, &idx), size, &col.chunks, objects)?;
            }
            col_op::ASSIGN => {
                let idx = r.u64s()?;
                let vals = r.bytes(idx.len() * size)?;
                check_indices(&idx, col.len)?;
                // Chunk by chunk, in order of first touch; later assignments to a row win, as locally.
                let mut order: Vec<(usize, usize, usize)> = idx
                    .iter()
                    .enumerate()
                    .map(|(k, &i)| {
                        let (c, off) = locate(i, size);
                        (c, k, off)
                    })
                    .collect();
                order.sort_unstable();
                for group in order.chunk_by(|a, b| a.0 == b.0) {
                    let id = col.chunks[group[0].0];
                    let mut b = chunk(objects, id)?;
                    for &(_, k, off) in group {
                        b[off..off + size].copy_from_slice(&vals[k * size..(k + 1) * size]);
                    }
                    objects.put(id, &b)?;
                }
            }
            _ => return Err(OffloadError::UnknownOp(op)),
        }
        if !r.is_empty() {
            return Err(OffloadError::BadInput(format!("{} bytes after the arguments", r.rest().len())));
        }
        Ok(Vec::new())
    }
}
