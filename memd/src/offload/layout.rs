//! The object layouts and operation encodings shared by the object runtime's containers (client side) and
//! memd's built-in offloaded types (server side). Both sides use these definitions — and, for column
//! reductions, the very same [`Reducer`] code — so a local and an offloaded run cannot drift apart.
//!
//! **Column chunks.** A column of `len` elements of one [`Elem`] type is stored as chunk objects of exactly
//! [`CHUNK_BYTES`] bytes. Element `i` lives in chunk `i / per_chunk` at byte `(i % per_chunk) * size`, with
//! `per_chunk = CHUNK_BYTES / size` ([`Elem::per_chunk`], [`locate`]); bytes past the last element are
//! unspecified. Elements are in the client's in-memory (little-endian) representation.
//!
//! **Hash buckets.** A bucket object of [`BucketLayout::bucket_bytes`] bytes holds a `u32` entry count, four
//! reserved bytes, then `capacity` entries of `[hash: u64][key: key_size bytes][value: val_size bytes]`, all
//! unaligned little-endian, entries `0..count` in use. Keys compare as bytes; [`hash_key`] is the hash.
//!
//! **Column inputs** ([`ColumnInput`]) start with `[elem: u8][len: u64][chunks: u32][ids: u64 × chunks]`, then
//! the operation's arguments; outputs are documented on [`col_op`].

use super::OffloadError;
use std::cmp::Ordering;

/// Bytes of one column chunk object.
pub const CHUNK_BYTES: usize = 4096;
/// Registered name of the server-side hash map type.
pub const HASHMAP_TYPE: &str = "farmem.hashmap";
/// Registered name of the server-side column type.
pub const COLUMN_TYPE: &str = "farmem.column";

/// Operations of [`HASHMAP_TYPE`].
pub mod map_op {
    /// Batched lookup. Input: repeated `[bucket id: u64][hash: u64][key bytes]`. Output: per lookup `[found:
    /// u8]` followed, when found, by the value bytes.
    pub const GET: u32 = 1;
}

/// Operations of [`COLUMN_TYPE`]. Every input starts with the column header ([`ColumnInput`]).
pub mod col_op {
    /// Sum. Output: 16 bytes — an `i128` for integer columns, an `f64` then 8 zero bytes for float columns.
    pub const SUM: u32 = 1;
    /// Smallest value (NaN ignored). Output: `[present: u8][value]`.
    pub const MIN: u32 = 2;
    /// Largest value (NaN ignored). Output: `[present: u8][value]`.
    pub const MAX: u32 = 3;
    /// Lower median: the value of rank `(len - 1) / 2` in total order. Output: `[present: u8][value]`.
    pub const MEDIAN: u32 = 4;
    /// Distinct values in ascending total order. Output: the values, packed.
    pub const UNIQUE: u32 = 5;
    /// Row indices whose value satisfies a predicate. Args: [`Pred`](crate::offload::layout::Pred) encoding. Output: `u64` indices, ascending.
    pub const FILTER: u32 = 6;
    /// Copy by index into other chunks of the same data structure: `dst[i] = src[idx[i]]`. Args: `[dst chunks:
    /// u32][ids: u64 × n][count: u64][idx: u64 × count]`. Output: empty.
    pub const GATHER: u32 = 7;
    /// Shuffle in place: `col[i] = old[idx[i]]` for every row. Args: `[count = len: u64][idx: u64 × count]`.
    pub const SHUFFLE: u32 = 8;
    /// Assign: `col[idx[i]] = values[i]`, in order. Args: `[count: u64][idx: u64 × count][values × count]`.
    pub const ASSIGN: u32 = 9;
}

/// Element types of a column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Elem {
    /// `u8`
    U8 = 1,
    /// `u16`
    U16 = 2,
    /// `u32`
    U32 = 3,
    /// `u64`
    U64 = 4,
    /// `i8`
    I8 = 5,
    /// `i16`
    I16 = 6,
    /// `i32`
    I32 = 7,
    /// `i64`
    I64 = 8,
    /// `f32`
    F32 = 9,
    /// `f64`
    F64 = 10,
}

impl Elem {
    /// The type for a wire code.
    pub fn from_code(c: u8) -> Result<Elem, OffloadError> {
        use Elem::*;
        Ok(match c {
            1 => U8,
            2 => U16,
            3 => U32,
            4 => U64,
            5 => I8,
            6 => I16,
            7 => I32,
            8 => I64,
            9 => F32,
            10 => F64,
            _ => return Err(OffloadError::BadInput(format!("unknown element type code {c}"))),
        })
    }
    /// Bytes per element.
    pub fn size(self) -> usize {
        use Elem::*;
        match self {
            U8 | I8 => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 => 8,
        }
    }
    /// Whether the sum is reported as `f64`.
    pub fn is_float(self) -> bool {
        matches!(self, Elem::F32 | Elem::F64)
    }
    /// Elements per chunk.
    pub fn per_chunk(self) -> usize {
        CHUNK_BYTES / self.size()
    }
}

/// Chunk index and byte offset of element `i` for elements of `size` bytes.
pub fn locate(i: u64, size: usize) -> (usize, usize) {
    let per = (CHUNK_BYTES / size) as u64;
    (usize::try_from(i / per).unwrap_or(usize::MAX), usize::try_from(i % per).unwrap_or(0) * size)
}

/// Chunks needed for `len` elements of `size` bytes.
pub fn chunks_for(len: u64, size: usize) -> usize {
    let per = (CHUNK_BYTES / size) as u64;
    usize::try_from(len.div_ceil(per)).unwrap_or(usize::MAX)
}

/// A numeric element type: how it is read from chunk bytes, compared, summed and written.
pub trait Num: Copy + PartialOrd + Send + Sync + std::fmt::Debug + 'static {
    /// Its wire code.
    const ELEM: Elem;
    /// Reads one value from the first `size` bytes of `b`.
    fn read(b: &[u8]) -> Self;
    /// Appends its bytes.
    fn put(self, out: &mut Vec<u8>);
    /// Adds it to a sum.
    fn add_to(self, acc: &mut Sum);
    /// Total order (floats: IEEE total order).
    fn total(&self, o: &Self) -> Ordering;
    /// Whether the value is NaN.
    fn is_nan(&self) -> bool {
        false
    }
}

/// A running sum: exact for integers, `f64` in row order for floats.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sum {
    /// Integer columns.
    Int(i128),
    /// Float columns.
    Float(f64),
}

impl Sum {
    /// Encodes as the 16-byte SUM output.
    pub fn encode(self) -> [u8; 16] {
        match self {
            Sum::Int(v) => v.to_le_bytes(),
            Sum::Float(v) => {
                let mut b = [0; 16];
                b[..8].copy_from_slice(&v.to_le_bytes());
                b
            }
        }
    }
    /// Decodes a SUM output of a column of `elem`.
    pub fn decode(elem: Elem, b: &[u8]) -> Result<Sum, OffloadError> {
        let b: [u8; 16] = b.try_into().map_err(|_| OffloadError::BadInput("sum output is not 16 bytes".into()))?;
        Ok(if elem.is_float() {
            let mut f = [0; 8];
            f.copy_from_slice(&b[..8]);
            Sum::Float(f64::from_le_bytes(f))
        } else {
            Sum::Int(i128::from_le_bytes(b))
        })
    }
}

/// The little-endian `read`/`put` every numeric element type shares.
macro_rules! le_bytes {
    ($t:ty) => {
        #[inline]
        fn read(b: &[u8]) -> Self {
            let mut a = [0u8; size_of::<$t>()];
            a.copy_from_slice(&b[..size_of::<$t>()]);
            <$t>::from_le_bytes(a)
        }
        fn put(self, out: &mut Vec<u8>) {
            out.extend_from_slice(&self.to_le_bytes());
        }
    };
}

macro_rules! int_num {
    ($($t:ty => $e:ident),*) => {$(
        impl Num for $t {
            const ELEM: Elem = Elem::$e;
            le_bytes!($t);
            #[inline]
            fn add_to(self, acc: &mut Sum) {
                if let Sum::Int(s) = acc {
                    *s = s.wrapping_add(i128::from(self));
                }
            }
            fn total(&self, o: &Self) -> Ordering {
                self.cmp(o)
            }
        }
    )*};
}
int_num!(u8 => U8, u16 => U16, u32 => U32, u64 => U64, i8 => I8, i16 => I16, i32 => I32, i64 => I64);

macro_rules! float_num {
    ($($t:ty => $e:ident),*) => {$(
        impl Num for $t {
            const ELEM: Elem = Elem::$e;
            le_bytes!($t);
            #[inline]
            fn add_to(self, acc: &mut Sum) {
                if let Sum::Float(s) = acc {
                    *s += f64::from(self);
                }
            }
            fn total(&self, o: &Self) -> Ordering {
                self.total_cmp(o)
            }
            fn is_nan(&self) -> bool {
                <$t>::is_nan(*self)
            }
        }
    )*};
}
float_num!(f32 => F32, f64 => F64);

/// A filter predicate (NaN never matches).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pred<N> {
    /// `x == a`
    Eq(N),
    /// `x < a`
    Lt(N),
    /// `x > a`
    Gt(N),
    /// `a <= x < b`
    Range(N, N),
}

impl<N: Num> Pred<N> {
    /// Whether `x` matches.
    #[inline]
    pub fn test(&self, x: N) -> bool {
        match *self {
            Pred::Eq(a) => x == a,
            Pred::Lt(a) => x < a,
            Pred::Gt(a) => x > a,
            Pred::Range(a, b) => a <= x && x < b,
        }
    }
    /// Wire form: `[kind: u8][a][b]` (b repeats a for one-operand predicates).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (k, a, b) = match *self {
            Pred::Eq(a) => (1u8, a, a),
            Pred::Lt(a) => (2, a, a),
            Pred::Gt(a) => (3, a, a),
            Pred::Range(a, b) => (4, a, b),
        };
        out.push(k);
        a.put(out);
        b.put(out);
    }
    /// Decodes [`Pred::encode`]'s form.
    pub fn decode(r: &mut Reader<'_>) -> Result<Pred<N>, OffloadError> {
        let k = r.u8()?;
        let size = N::ELEM.size();
        let a = N::read(r.bytes(size)?);
        let b = N::read(r.bytes(size)?);
        Ok(match k {
            1 => Pred::Eq(a),
            2 => Pred::Lt(a),
            3 => Pred::Gt(a),
            4 => Pred::Range(a, b),
            _ => return Err(OffloadError::BadInput(format!("unknown predicate kind {k}"))),
        })
    }
}

/// A column reduction fed chunk by chunk, in row order: the local and the offloaded run share this code.
pub trait Reducer: Send {
    /// Consumes the first `n` elements of `chunk`, rows `first..first + n`.
    fn feed(&mut self, chunk: &[u8], first: u64, n: usize);
    /// The encoded output (see [`col_op`]).
    fn finish(self: Box<Self>) -> Vec<u8>;
}

struct Red<N: Num> {
    op: u32,
    sum: Sum,
    best: Option<N>,
    vals: Vec<N>,
    pred: Option<Pred<N>>,
    rows: Vec<u64>,
}

impl<N: Num> Reducer for Red<N> {
    fn feed(&mut self, chunk: &[u8], first: u64, n: usize) {
        let size = N::ELEM.size();
        let it = chunk[..n * size].chunks_exact(size).map(N::read);
        match self.op {
            col_op::SUM => it.for_each(|x| x.add_to(&mut self.sum)),
            col_op::MIN | col_op::MAX => {
                let want = if self.op == col_op::MIN { Ordering::Less } else { Ordering::Greater };
                for x in it.filter(|x| !x.is_nan()) {
                    match self.best {
                        Some(b) if x.partial_cmp(&b) != Some(want) => {}
                        _ => self.best = Some(x),
                    }
                }
            }
            col_op::MEDIAN | col_op::UNIQUE => self.vals.extend(it),
            _ => {
                if let Some(p) = self.pred {
                    for (i, x) in (first..).zip(it) {
                        if p.test(x) {
                            self.rows.push(i);
                        }
                    }
                }
            }
        }
    }

    fn finish(mut self: Box<Self>) -> Vec<u8> {
        let mut out = Vec::new();
        let opt = |v: Option<N>, out: &mut Vec<u8>| match v {
            Some(x) => {
                out.push(1);
                x.put(out);
            }
            None => out.push(0),
        };
        match self.op {
            col_op::SUM => out.extend_from_slice(&self.sum.encode()),
            col_op::MIN | col_op::MAX => opt(self.best, &mut out),
            col_op::MEDIAN => {
                let m = if self.vals.is_empty() {
                    None
                } else {
                    let k = (self.vals.len() - 1) / 2;
                    Some(*self.vals.select_nth_unstable_by(k, N::total).1)
                };
                opt(m, &mut out);
            }
            col_op::UNIQUE => {
                self.vals.sort_unstable_by(N::total);
                self.vals.dedup_by(|a, b| a.total(b) == Ordering::Equal);
                self.vals.iter().for_each(|x| x.put(&mut out));
            }
            _ => self.rows.iter().for_each(|r| out.extend_from_slice(&r.to_le_bytes())),
        }
        out
    }
}

fn reducer_of<N: Num>(op: u32, args: &mut Reader<'_>) -> Result<Box<dyn Reducer>, OffloadError> {
    let sum = if N::ELEM.is_float() { Sum::Float(0.0) } else { Sum::Int(0) };
    let pred = match op {
        col_op::SUM | col_op::MIN | col_op::MAX | col_op::MEDIAN | col_op::UNIQUE => None,
        col_op::FILTER => Some(Pred::<N>::decode(args)?),
        _ => return Err(OffloadError::UnknownOp(op)),
    };
    Ok(Box::new(Red::<N> { op, sum, best: None, vals: Vec::new(), pred, rows: Vec::new() }))
}

/// The reducer for reduction `op` (SUM, MIN, MAX, MEDIAN, UNIQUE, FILTER) on `elem`, its arguments read
/// from `args`.
pub fn reducer(elem: Elem, op: u32, args: &mut Reader<'_>) -> Result<Box<dyn Reducer>, OffloadError> {
    match elem {
        Elem::U8 => reducer_of::<u8>(op, args),
        Elem::U16 => reducer_of::<u16>(op, args),
        Elem::U32 => reducer_of::<u32>(op, args),
        Elem::U64 => reducer_of::<u64>(op, args),
        Elem::I8 => reducer_of::<i8>(op, args),
        Elem::I16 => reducer_of::<i16>(op, args),
        Elem::I32 => reducer_of::<i32>(op, args),
        Elem::I64 => reducer_of::<i64>(op, args),
        Elem::F32 => reducer_of::<f32>(op, args),
        Elem::F64 => reducer_of::<f64>(op, args),
    }
}

/// Whether `op` is a reduction (read-only, output computed by a [`Reducer`]).
pub fn is_reduction(op: u32) -> bool {
    (col_op::SUM..=col_op::FILTER).contains(&op)
}

/// The header every column input starts with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnInput {
    /// Element type.
    pub elem: Elem,
    /// Rows.
    pub len: u64,
    /// Chunk object ids in row order (exactly `chunks_for(len)` of them).
    pub chunks: Vec<u64>,
}

impl ColumnInput {
    /// Appends the encoded header.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.elem as u8);
        out.extend_from_slice(&self.len.to_le_bytes());
        put_ids(out, &self.chunks);
    }
    /// Reads and checks a header.
    pub fn decode(r: &mut Reader<'_>) -> Result<ColumnInput, OffloadError> {
        let elem = Elem::from_code(r.u8()?)?;
        let len = r.u64()?;
        let chunks = r.ids()?;
        if chunks.len() != chunks_for(len, elem.size()) {
            return Err(OffloadError::BadInput(format!(
                "{} chunks given for {len} rows of {} bytes",
                chunks.len(),
                elem.size()
            )));
        }
        Ok(ColumnInput { elem, len, chunks })
    }
    /// Rows held by chunk `c`.
    pub fn rows_in(&self, c: usize) -> usize {
        let per = self.elem.per_chunk() as u64;
        let first = c as u64 * per;
        usize::try_from(self.len.saturating_sub(first).min(per)).unwrap_or(0)
    }
}

/// Appends `[count: u32][ids: u64 × count]`.
pub fn put_ids(out: &mut Vec<u8>, ids: &[u64]) {
    out.extend_from_slice(&u32::try_from(ids.len()).unwrap_or(u32::MAX).to_le_bytes());
    ids.iter().for_each(|i| out.extend_from_slice(&i.to_le_bytes()));
}

/// Appends `[count: u64][v: u64 × count]`.
pub fn put_u64s(out: &mut Vec<u8>, v: &[u64]) {
    out.extend_from_slice(&(v.len() as u64).to_le_bytes());
    v.iter().for_each(|i| out.extend_from_slice(&i.to_le_bytes()));
}

/// A bounds-checked reader of operation inputs.
#[derive(Debug)]
pub struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads `b` from its start.
    pub fn new(b: &'a [u8]) -> Self {
        Reader { b }
    }
    /// Bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.b
    }
    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.b.is_empty()
    }
    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], OffloadError> {
        if self.b.len() < n {
            return Err(OffloadError::BadInput(format!("input ends early: {n} bytes wanted, {} left", self.b.len())));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    /// The next byte.
    pub fn u8(&mut self) -> Result<u8, OffloadError> {
        Ok(self.bytes(1)?[0])
    }
    /// The next `u32`.
    pub fn u32(&mut self) -> Result<u32, OffloadError> {
        Ok(u32::read(self.bytes(4)?))
    }
    /// The next `u64`.
    pub fn u64(&mut self) -> Result<u64, OffloadError> {
        Ok(u64::read(self.bytes(8)?))
    }
    /// `[count: u32][ids: u64 × count]`.
    pub fn ids(&mut self) -> Result<Vec<u64>, OffloadError> {
        let n = usize::try_from(self.u32()?).unwrap_or(usize::MAX);
        self.u64s_n(n)
    }
    /// `[count: u64][v: u64 × count]`.
    pub fn u64s(&mut self) -> Result<Vec<u64>, OffloadError> {
        let n = usize::try_from(self.u64()?).unwrap_or(usize::MAX);
        self.u64s_n(n)
    }
    fn u64s_n(&mut self, n: usize) -> Result<Vec<u64>, OffloadError> {
        let b = self.bytes(n.checked_mul(8).ok_or_else(|| OffloadError::BadInput("count overflows".into()))?)?;
        Ok(b.chunks_exact(8).map(u64::read).collect())
    }
}

/// The hash of a key's bytes (a fixed 64-bit mix: the same in every process and on the server).
pub fn hash_key(key: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = (key.len() as u64).wrapping_mul(K);
    let mut words = key.chunks_exact(8);
    for w in &mut words {
        h = (h ^ u64::read(w)).wrapping_mul(K).rotate_left(29);
    }
    let mut tail = [0u8; 8];
    let r = words.remainder();
    tail[..r.len()].copy_from_slice(r);
    h = (h ^ u64::from_le_bytes(tail)).wrapping_mul(K);
    // splitmix64's finaliser: every input bit reaches the top bits, which pick the bucket.
    h ^= h >> 30;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^ (h >> 31)
}

/// Shape of a hash bucket object (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketLayout {
    /// Key bytes.
    pub key_size: usize,
    /// Value bytes.
    pub val_size: usize,
    /// Bytes of one bucket object.
    pub bucket_bytes: usize,
}

/// Bytes before the first entry of a bucket.
pub const BUCKET_HEADER: usize = 8;

impl BucketLayout {
    /// A layout, checked to hold at least two entries per bucket within memd's object limit.
    pub fn new(key_size: usize, val_size: usize, bucket_bytes: usize) -> Result<BucketLayout, OffloadError> {
        let l = BucketLayout { key_size, val_size, bucket_bytes };
        if key_size == 0 || bucket_bytes > crate::proto::MAX_OBJECT || l.capacity() < 2 {
            return Err(OffloadError::BadInput(format!(
                "a bucket of {bucket_bytes} bytes cannot hold two entries of {key_size}-byte keys and \
                 {val_size}-byte values"
            )));
        }
        Ok(l)
    }
    /// CONSTRUCT parameters: three `u32`s.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(12);
        for x in [self.key_size, self.val_size, self.bucket_bytes] {
            v.extend_from_slice(&u32::try_from(x).unwrap_or(u32::MAX).to_le_bytes());
        }
        v
    }
    /// Decodes [`BucketLayout::encode`]'s form.
    pub fn decode(b: &[u8]) -> Result<BucketLayout, OffloadError> {
        let mut r = Reader::new(b);
        let mut f = || r.u32().map(|x| usize::try_from(x).unwrap_or(usize::MAX));
        let (k, v, b) = (f()?, f()?, f()?);
        BucketLayout::new(k, v, b)
    }
    /// Bytes per entry.
    pub fn entry_size(&self) -> usize {
        8 + self.key_size + self.val_size
    }
    /// Entries per bucket.
    pub fn capacity(&self) -> usize {
        self.bucket_bytes.saturating_sub(BUCKET_HEADER) / self.entry_size()
    }
    /// Entries in use.
    pub fn count(&self, bucket: &[u8]) -> usize {
        usize::try_from(u32::read(&bucket[..4])).unwrap_or(usize::MAX).min(self.capacity())
    }
    /// Sets the entry count.
    pub fn set_count(&self, bucket: &mut [u8], n: usize) {
        bucket[..4].copy_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
    }
    fn at(&self, i: usize) -> usize {
        BUCKET_HEADER + i * self.entry_size()
    }
    /// Hash of entry `i`.
    pub fn hash(&self, bucket: &[u8], i: usize) -> u64 {
        u64::read(&bucket[self.at(i)..])
    }
    /// Key bytes of entry `i`.
    pub fn key<'b>(&self, bucket: &'b [u8], i: usize) -> &'b [u8] {
        let a = self.at(i) + 8;
        &bucket[a..a + self.key_size]
    }
    /// Value bytes of entry `i`.
    pub fn val<'b>(&self, bucket: &'b [u8], i: usize) -> &'b [u8] {
        let a = self.at(i) + 8 + self.key_size;
        &bucket[a..a + self.val_size]
    }
    /// Mutable value bytes of entry `i`.
    pub fn val_mut<'b>(&self, bucket: &'b mut [u8], i: usize) -> &'b mut [u8] {
        let a = self.at(i) + 8 + self.key_size;
        &mut bucket[a..a + self.val_size]
    }
    /// Writes entry `i`.
    pub fn set(&self, bucket: &mut [u8], i: usize, hash: u64, key: &[u8], val: &[u8]) {
        let a = self.at(i);
        bucket[a..a + 8].copy_from_slice(&hash.to_le_bytes());
        bucket[a + 8..a + 8 + self.key_size].copy_from_slice(key);
        bucket[a + 8 + self.key_size..a + self.entry_size()].copy_from_slice(val);
    }
    /// Moves entry `from` over entry `to`.
    pub fn copy_entry(&self, bucket: &mut [u8], from: usize, to: usize) {
        let (a, e) = (self.at(from), self.entry_size());
        bucket.copy_within(a..a + e, self.at(to));
    }
    /// The entry holding `key` (whose hash is `hash`).
    pub fn find(&self, bucket: &[u8], hash: u64, key: &[u8]) -> Option<usize> {
        (0..self.count(bucket)).find(|&i| self.hash(bucket, i) == hash && self.key(bucket, i) == key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_and_chunks() {
        assert_eq!(locate(0, 8), (0, 0));
        assert_eq!(locate(511, 8), (0, 4088));
        assert_eq!(locate(512, 8), (1, 0));
        assert_eq!(chunks_for(0, 8), 0);
        assert_eq!(chunks_for(513, 8), 2);
        assert_eq!(chunks_for(4096, 1), 1);
    }

    #[test]
    fn bucket_entries() {
        let l = BucketLayout::new(8, 4, 256).unwrap();
        assert_eq!(l.capacity(), (256 - 8) / 20);
        let mut b = vec![0u8; 256];
        for i in 0..3u64 {
            l.set(
                &mut b,
                usize::try_from(i).unwrap(),
                hash_key(&i.to_le_bytes()),
                &i.to_le_bytes(),
                &[u8::try_from(i).unwrap(); 4],
            );
        }
        l.set_count(&mut b, 3);
        let k = 2u64.to_le_bytes();
        assert_eq!(l.find(&b, hash_key(&k), &k), Some(2));
        assert_eq!(l.val(&b, 2), &[2; 4]);
        assert_eq!(l.find(&b, hash_key(&9u64.to_le_bytes()), &9u64.to_le_bytes()), None);
        assert_eq!(BucketLayout::decode(&l.encode()).unwrap(), l);
        assert!(BucketLayout::new(8, 4000, 4096).is_err());
        assert!(BucketLayout::new(0, 4, 4096).is_err());
    }

    #[test]
    fn reducers() {
        let vals: Vec<i32> = vec![5, -3, 9, 5, 0, -3, 7];
        let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let run = |op: u32, args: &[u8]| {
            let mut r = reducer(Elem::I32, op, &mut Reader::new(args)).unwrap();
            r.feed(&bytes[..12], 0, 3);
            r.feed(&bytes[12..], 3, 4);
            r.finish()
        };
        assert_eq!(Sum::decode(Elem::I32, &run(col_op::SUM, &[])).unwrap(), Sum::Int(20));
        assert_eq!(run(col_op::MIN, &[]), [&[1u8][..], &(-3i32).to_le_bytes()].concat());
        assert_eq!(run(col_op::MAX, &[]), [&[1u8][..], &9i32.to_le_bytes()].concat());
        assert_eq!(run(col_op::MEDIAN, &[]), [&[1u8][..], &5i32.to_le_bytes()].concat());
        let u: Vec<u8> = [-3i32, 0, 5, 7, 9].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(run(col_op::UNIQUE, &[]), u);
        let mut p = Vec::new();
        Pred::Range(0i32, 6).encode(&mut p);
        let rows: Vec<u8> = [0u64, 3, 4].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(run(col_op::FILTER, &p), rows);
        assert!(reducer(Elem::I32, 99, &mut Reader::new(&[])).is_err());
    }
}
