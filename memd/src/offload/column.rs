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

#[cfg(test)]
mod tests {
    use crate::offload::builtin;
    use crate::offload::layout::{col_op, put_ids, put_u64s, ColumnInput, Elem, COLUMN_TYPE, HASHMAP_TYPE};
    use crate::proto::Status;
    use crate::{FarStore, MemStore, StoreError};

    fn column(store: &MemStore, ds: u64, vals: &[u32]) -> ColumnInput {
        let per = Elem::U32.per_chunk();
        let mut chunks = Vec::new();
        for (k, part) in vals.chunks(per).enumerate() {
            let mut b = vec![0u8; super::CHUNK_BYTES];
            for (i, v) in part.iter().enumerate() {
                b[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
            }
            let id = 100 + k as u64;
            store.write_object(ds, id, &b).unwrap();
            chunks.push(id);
        }
        ColumnInput { elem: Elem::U32, len: vals.len() as u64, chunks }
    }

    fn run(store: &MemStore, ds: u64, col: &ColumnInput, op: u32, args: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut input = Vec::new();
        col.encode(&mut input);
        input.extend_from_slice(args);
        store.compute(ds, op, &input)
    }

    fn failed(r: Result<Vec<u8>, StoreError>, what: &str) {
        match r {
            Err(StoreError::Rejected { status: Status::ComputeFailed, msg }) => assert!(msg.contains(what), "{msg}"),
            other => panic!("expected a COMPUTE_FAILED mentioning {what:?}, got {other:?}"),
        }
    }

    #[test]
    fn column_ops_and_bad_inputs() {
        let s = MemStore::with_registry(1 << 30, builtin());
        s.construct(1, COLUMN_TYPE, &[]).unwrap();
        let vals: Vec<u32> = (0..2500).map(|i| (i * 37) % 101).collect();
        let col = column(&s, 1, &vals);
        let sum: i128 = vals.iter().map(|&v| i128::from(v)).sum();
        assert_eq!(run(&s, 1, &col, col_op::SUM, &[]).unwrap(), sum.to_le_bytes());
        // Assign then shuffle (reverse), read back through SUM/ MAX-free checks on the stored chunks.
        let mut args = Vec::new();
        put_u64s(&mut args, &[0, 2499, 0]);
        args.extend_from_slice(&[7u32, 8, 9].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
        run(&s, 1, &col, col_op::ASSIGN, &args).unwrap();
        let first = s.read_object(1, 100).unwrap().unwrap();
        assert_eq!(&first[..4], &9u32.to_le_bytes(), "a later assignment to a row wins");
        let mut args = Vec::new();
        put_u64s(&mut args, &(0..2500u64).rev().collect::<Vec<_>>());
        run(&s, 1, &col, col_op::SHUFFLE, &args).unwrap();
        let first = s.read_object(1, 100).unwrap().unwrap();
        assert_eq!(&first[..4], &8u32.to_le_bytes());

        // Bad inputs: clear errors, nothing changed.
        let mut short = col.clone();
        short.chunks.pop();
        failed(run(&s, 1, &short, col_op::SUM, &[]), "chunks given");
        let mut args = Vec::new();
        put_u64s(&mut args, &[2500]);
        args.extend_from_slice(&1u32.to_le_bytes());
        failed(run(&s, 1, &col, col_op::ASSIGN, &args), "out of bounds");
        let mut args = Vec::new();
        put_u64s(&mut args, &[1, 2]);
        failed(run(&s, 1, &col, col_op::SHUFFLE, &args), "indices for");
        let mut args = Vec::new();
        put_ids(&mut args, &[100]);
        put_u64s(&mut args, &[1]);
        failed(run(&s, 1, &col, col_op::GATHER, &args), "also a source chunk");
        let mut missing = col.clone();
        missing.chunks[0] = 999;
        failed(run(&s, 1, &missing, col_op::MIN, &[]), "missing");
        failed(run(&s, 1, &col, 77, &[]), "not defined");
        failed(run(&s, 1, &col, col_op::FILTER, &[9]), "ends early");
        assert!(s.construct(2, COLUMN_TYPE, &[1]).is_err());
        assert!(s.construct(3, HASHMAP_TYPE, &[1, 2, 3]).is_err(), "truncated bucket layout");
        s.destruct(1).unwrap();
        assert_eq!(s.read_object(1, 100).unwrap(), None, "DESTRUCT drops the column's objects");
    }
}
