//! Wire protocol v1: frame layout, opcodes, and the codec shared by server, client and the in-process store.
//!
//! Every frame is `u32 len` (little-endian; the number of bytes that follow) and a 12-byte header — `u8 op`,
//! `u8 status`, `u16 reserved`, `u64 id` — then an op-specific payload. `memd/PROTOCOL.md` is the normative
//! description; this module is its only implementation. Decoding never panics and never trusts a length: every
//! read is bounds-checked and a malformed payload is a [`ProtoError`].

use std::fmt;

/// Size of a page in the page store.
pub const PAGE_SIZE: usize = 4096;
/// Protocol version spoken by this build.
pub const VERSION: u16 = 1;
/// Magic bytes opening the HELLO payload.
pub const MAGIC: &[u8; 8] = b"FARMEMv1";
/// Bytes of the fixed header after the length prefix.
pub const HEADER_LEN: usize = 12;
/// Largest frame (header + payload) either side accepts: 64 batched 1 MiB objects plus slack.
pub const MAX_FRAME: usize = 64 * 1024 * 1024 + 64 * 1024;
/// Largest object value.
pub const MAX_OBJECT: usize = 1024 * 1024;
/// Largest number of entries in one batch.
pub const MAX_BATCH: usize = 65_536;
/// Length sentinel for an absent object in an object-read reply.
pub const ABSENT: u32 = u32::MAX;
/// Length of the server's challenge nonce and of the HMAC-SHA256 tag.
pub const NONCE_LEN: usize = 32;

/// Request and reply opcodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Op {
    /// Liveness; empty payload both ways.
    Ping = 0x01,
    /// Counters; reply is a list of (name, value).
    Stats = 0x02,
    /// Read pages of a region.
    ReadPages = 0x10,
    /// Write pages of a region.
    WritePages = 0x11,
    /// Delete pages of a region.
    DeletePages = 0x12,
    /// Delete every page of a region.
    DropRegion = 0x13,
    /// Read objects of a data structure.
    ReadObjects = 0x20,
    /// Write objects of a data structure.
    WriteObjects = 0x21,
    /// Delete objects of a data structure.
    DeleteObjects = 0x22,
    /// Delete every object of a data structure.
    DropObjects = 0x23,
    /// Create a server-side data structure instance.
    Construct = 0x30,
    /// Destroy a server-side data structure instance.
    Destruct = 0x31,
    /// Run an operation of a server-side data structure.
    Compute = 0x32,
    /// Bind the connection to a client session that outlives single connections.
    Lease = 0x40,
    /// Make a key space part of the connection's session: dropped when the session expires.
    Own = 0x41,
    /// Switch the connection to a raw byte mode (benchmark baseline).
    Raw = 0xE0,
    /// Client's first frame: magic, version, tenant.
    Hello = 0xF0,
    /// Server's answer to HELLO: version and nonce.
    Challenge = 0xF1,
    /// Client's HMAC over the nonce.
    Auth = 0xF2,
    /// Server accepted the AUTH frame.
    AuthOk = 0xF3,
}

impl Op {
    /// Decodes an opcode byte.
    pub fn from_u8(b: u8) -> Option<Op> {
        use Op::*;
        Some(match b {
            0x01 => Ping,
            0x02 => Stats,
            0x10 => ReadPages,
            0x11 => WritePages,
            0x12 => DeletePages,
            0x13 => DropRegion,
            0x20 => ReadObjects,
            0x21 => WriteObjects,
            0x22 => DeleteObjects,
            0x23 => DropObjects,
            0x30 => Construct,
            0x31 => Destruct,
            0x32 => Compute,
            0x40 => Lease,
            0x41 => Own,
            0xE0 => Raw,
            0xF0 => Hello,
            0xF1 => Challenge,
            0xF2 => Auth,
            0xF3 => AuthOk,
            _ => return None,
        })
    }

    /// Whether repeating the request after a lost reply gives the same outcome (the client retries these).
    pub fn is_idempotent(self) -> bool {
        !matches!(self, Op::Construct | Op::Destruct | Op::Compute)
    }
}

/// Status byte of a reply; anything but `Ok` carries a UTF-8 message as payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// The payload did not decode.
    BadRequest = 1,
    /// The write would pass the server's capacity; nothing was stored.
    NoSpace = 2,
    /// Unknown opcode.
    UnknownOp = 3,
    /// Handshake failed.
    AuthFailed = 4,
    /// Protocol versions differ.
    Version = 5,
    /// Frame or value over the limit.
    TooLarge = 6,
    /// CONSTRUCT named a type the server does not know.
    UnknownType = 7,
    /// The data structure id names no instance.
    NoSuchDs = 8,
    /// The offloaded operation failed (unknown op, bad input).
    ComputeFailed = 9,
    /// Bug or resource failure on the server.
    Internal = 10,
}

impl Status {
    /// Decodes a status byte.
    pub fn from_u8(b: u8) -> Option<Status> {
        use Status::*;
        Some(match b {
            0 => Ok,
            1 => BadRequest,
            2 => NoSpace,
            3 => UnknownOp,
            4 => AuthFailed,
            5 => Version,
            6 => TooLarge,
            7 => UnknownType,
            8 => NoSuchDs,
            9 => ComputeFailed,
            10 => Internal,
            _ => return None,
        })
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Status::Ok => "ok",
            Status::BadRequest => "bad request",
            Status::NoSpace => "no space",
            Status::UnknownOp => "unknown opcode",
            Status::AuthFailed => "authentication failed",
            Status::Version => "version mismatch",
            Status::TooLarge => "too large",
            Status::UnknownType => "unknown data-structure type",
            Status::NoSuchDs => "no such data structure",
            Status::ComputeFailed => "compute failed",
            Status::Internal => "internal error",
        };
        f.write_str(s)
    }
}

/// A payload that does not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {msg}")]
pub struct ProtoError {
    /// Status to answer with.
    pub status: Status,
    /// What was wrong.
    pub msg: String,
}

impl ProtoError {
    /// A `BadRequest` error.
    pub fn bad(msg: impl Into<String>) -> Self {
        ProtoError { status: Status::BadRequest, msg: msg.into() }
    }
    /// An error with a given status.
    pub fn new(status: Status, msg: impl Into<String>) -> Self {
        ProtoError { status, msg: msg.into() }
    }
}

/// Fixed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Raw opcode byte (may be unknown to this build).
    pub op: u8,
    /// Raw status byte.
    pub status: u8,
    /// Request id, echoed in the reply.
    pub id: u64,
}

impl Header {
    /// Parses the 12 header bytes that follow the length prefix.
    pub fn parse(b: &[u8]) -> Result<Header, ProtoError> {
        if b.len() < HEADER_LEN {
            return Err(ProtoError::bad(format!("frame of {} bytes is shorter than its header", b.len())));
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&b[4..12]);
        Ok(Header { op: b[0], status: b[1], id: u64::from_le_bytes(id) })
    }
}

/// Starts a frame in `buf`: reserves the length prefix and writes the header. Finish with [`end_frame`].
pub fn begin_frame(buf: &mut Vec<u8>, op: u8, status: u8, id: u64) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&[op, status, 0, 0]);
    buf.extend_from_slice(&id.to_le_bytes());
    start
}

/// Patches the length prefix of the frame begun at `start`.
pub fn end_frame(buf: &mut [u8], start: usize) {
    let len = u32::try_from(buf.len() - start - 4).expect("frame length checked against MAX_FRAME by callers");
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// Appends a complete error frame.
pub fn error_frame(buf: &mut Vec<u8>, op: u8, id: u64, status: Status, msg: &str) {
    let s = begin_frame(buf, op, status as u8, id);
    buf.extend_from_slice(msg.as_bytes());
    end_frame(buf, s);
}

/// Bounds-checked little-endian reader over a payload.
#[derive(Debug)]
pub struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// Reads from the start of `b`.
    pub fn new(b: &'a [u8]) -> Self {
        Reader { b, at: 0 }
    }
    /// Takes `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len()).ok_or_else(|| {
            ProtoError::bad(format!("payload truncated: wanted {n} bytes at offset {}, have {}", self.at, self.b.len()))
        })?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    /// Takes a `u8`.
    pub fn u8(&mut self) -> Result<u8, ProtoError> {
        Ok(self.bytes(1)?[0])
    }
    /// Takes a `u16`.
    pub fn u16(&mut self) -> Result<u16, ProtoError> {
        let mut a = [0; 2];
        a.copy_from_slice(self.bytes(2)?);
        Ok(u16::from_le_bytes(a))
    }
    /// Takes a `u32`.
    pub fn u32(&mut self) -> Result<u32, ProtoError> {
        let mut a = [0; 4];
        a.copy_from_slice(self.bytes(4)?);
        Ok(u32::from_le_bytes(a))
    }
    /// Takes a `u64`.
    pub fn u64(&mut self) -> Result<u64, ProtoError> {
        let mut a = [0; 8];
        a.copy_from_slice(self.bytes(8)?);
        Ok(u64::from_le_bytes(a))
    }
    /// Takes a batch count, checked against [`MAX_BATCH`] and against the bytes left (`min_each` per entry).
    pub fn count(&mut self, min_each: usize) -> Result<usize, ProtoError> {
        let n = self.u32()? as usize;
        if n > MAX_BATCH {
            return Err(ProtoError::new(Status::TooLarge, format!("batch of {n} entries exceeds {MAX_BATCH}")));
        }
        if n.saturating_mul(min_each) > self.remaining() {
            return Err(ProtoError::bad(format!("batch of {n} entries does not fit in {} bytes", self.remaining())));
        }
        Ok(n)
    }
    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.b.len() - self.at
    }
    /// Everything not yet read.
    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.b[self.at..];
        self.at = self.b.len();
        s
    }
    /// Fails unless every byte was consumed.
    pub fn finish(&self) -> Result<(), ProtoError> {
        if self.remaining() != 0 {
            return Err(ProtoError::bad(format!("{} trailing bytes after payload", self.remaining())));
        }
        Ok(())
    }
}

/// A batch of objects in one flat buffer: ids, lengths ([`ABSENT`] for a missing object) and concatenated bytes.
///
/// One allocation per batch, not per object: this is what object reads return and writes take.
///
/// Equality compares the entries (ids, lengths, values), not how `data` lays them out.
#[derive(Clone, Debug, Default)]
pub struct ObjBatch {
    /// Object ids.
    pub ids: Vec<u64>,
    /// Byte lengths, or [`ABSENT`].
    pub lens: Vec<u32>,
    /// Concatenated values of present objects, in order — unless the batch was decoded from a READ_OBJECTS reply
    /// ([`decode_objects`]): then it is the reply's payload as received, each value after its 12-byte entry
    /// (see [`ObjBatch::is_packed`]; [`ObjBatch::pack`] makes it plain values). Read values with
    /// [`ObjBatch::iter`], which knows both layouts.
    pub data: Vec<u8>,
    /// `data` is a READ_OBJECTS reply payload: a 4-byte count, then per entry its id and length (12 bytes) and
    /// its value if present.
    wire: bool,
}

impl PartialEq for ObjBatch {
    fn eq(&self, other: &Self) -> bool {
        self.ids == other.ids && self.lens == other.lens && self.iter().map(|x| x.1).eq(other.iter().map(|x| x.1))
    }
}

impl Eq for ObjBatch {}

impl ObjBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }
    /// Appends a present object. Panics if the value is over [`MAX_OBJECT`] (callers validate sizes first).
    pub fn push(&mut self, id: u64, value: &[u8]) {
        self.pack();
        let len =
            u32::try_from(value.len()).ok().filter(|&l| l as usize <= MAX_OBJECT).expect("object over MAX_OBJECT");
        self.ids.push(id);
        self.lens.push(len);
        self.data.extend_from_slice(value);
    }
    /// Appends an absent object.
    pub fn push_absent(&mut self, id: u64) {
        self.pack();
        self.ids.push(id);
        self.lens.push(ABSENT);
    }
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
    /// Entries in order: `(id, Some(bytes))` or `(id, None)` for an absent object.
    pub fn iter(&self) -> impl Iterator<Item = (u64, Option<&[u8]>)> + '_ {
        // In a reply's layout, each entry's 12 bytes (and the count before the first) sit before its value.
        let (mut off, entry) = if self.wire { (4usize, 12usize) } else { (0, 0) };
        self.ids.iter().zip(&self.lens).map(move |(&id, &len)| {
            off += entry;
            if len == ABSENT {
                (id, None)
            } else {
                let s = &self.data[off..off + len as usize];
                off += len as usize;
                (id, Some(s))
            }
        })
    }
}

impl ObjBatch {
    /// Whether `data` holds the values alone, back to back (true unless decoded from a READ_OBJECTS reply and not
    /// [packed](ObjBatch::pack) since).
    pub fn is_packed(&self) -> bool {
        !self.wire
    }

    /// Bytes of the present values.
    pub fn values_len(&self) -> usize {
        if self.wire {
            self.lens.iter().filter(|&&l| l != ABSENT).map(|&l| l as usize).sum()
        } else {
            self.data.len()
        }
    }

    /// Makes `data` the values alone, back to back (moving each value down over the entries before it).
    pub fn pack(&mut self) {
        if !self.wire {
            return;
        }
        let (mut from, mut at) = (4usize, 0usize);
        for &len in &self.lens {
            from += 12;
            if len != ABSENT {
                let len = len as usize;
                // Each value moves left (past at least the count and its own entry), never over one not moved yet.
                self.data.copy_within(from..from + len, at);
                from += len;
                at += len;
            }
        }
        self.data.truncate(at);
        self.wire = false;
    }
}

/// Largest session grace period a client may ask for.
pub const MAX_GRACE_SECS: u32 = 24 * 3600;

/// What kind of key space an OWN request names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OwnKind {
    /// A page region (dropped as by DROP_REGION).
    Region = 0,
    /// An object key space (dropped as by DROP_OBJECTS).
    Objects = 1,
    /// A server-side data structure instance (destroyed as by DESTRUCT).
    Instance = 2,
}

impl OwnKind {
    /// Decodes a kind byte.
    pub fn from_u8(b: u8) -> Option<OwnKind> {
        Some(match b {
            0 => OwnKind::Region,
            1 => OwnKind::Objects,
            2 => OwnKind::Instance,
            _ => return None,
        })
    }
}

/// A request as the client builds it. Encoded by [`encode_request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Liveness check.
    Ping,
    /// Server and tenant counters.
    Stats,
    /// Read pages; absent pages come back flagged absent and zero-filled.
    ReadPages {
        /// Region id (page key space).
        region: u64,
        /// Page numbers.
        pages: Vec<u64>,
    },
    /// Write pages: `data` holds `pages.len() * PAGE_SIZE` bytes.
    WritePages {
        /// Region id.
        region: u64,
        /// Page numbers.
        pages: Vec<u64>,
        /// Page contents, in order.
        data: Vec<u8>,
    },
    /// Delete pages (absent ones are ignored).
    DeletePages {
        /// Region id.
        region: u64,
        /// Page numbers.
        pages: Vec<u64>,
    },
    /// Delete every page of a region.
    DropRegion {
        /// Region id.
        region: u64,
    },
    /// Read objects.
    ReadObjects {
        /// Data-structure id (object key space).
        ds: u64,
        /// Object ids.
        ids: Vec<u64>,
    },
    /// Write objects (1 B to 1 MiB each).
    WriteObjects {
        /// Data-structure id.
        ds: u64,
        /// The objects.
        batch: ObjBatch,
    },
    /// Delete objects.
    DeleteObjects {
        /// Data-structure id.
        ds: u64,
        /// Object ids.
        ids: Vec<u64>,
    },
    /// Delete every object of a data structure.
    DropObjects {
        /// Data-structure id.
        ds: u64,
    },
    /// Create a server-side data structure of a registered type.
    Construct {
        /// Id the instance is known by (also its object key space).
        ds: u64,
        /// Registered type name.
        ty: String,
        /// Type-specific parameters.
        params: Vec<u8>,
    },
    /// Destroy a server-side instance.
    Destruct {
        /// Instance id.
        ds: u64,
    },
    /// Run an operation on a server-side instance.
    Compute {
        /// Instance id.
        ds: u64,
        /// Type-specific operation number.
        op: u32,
        /// Operation input.
        input: Vec<u8>,
    },
    /// Bind this connection to a session (once per connection, before OWN).
    Lease {
        /// Client-chosen random session id; every connection of one client process sends the same one.
        session: u64,
        /// How long the server keeps the session's key spaces after its last connection closes.
        grace_secs: u32,
    },
    /// Tie a key space to the connection's session.
    Own {
        /// What `id` names.
        kind: OwnKind,
        /// Region id, object key space id or instance id.
        id: u64,
    },
}

impl Request {
    /// The request's opcode.
    pub fn op(&self) -> Op {
        match self {
            Request::Ping => Op::Ping,
            Request::Stats => Op::Stats,
            Request::ReadPages { .. } => Op::ReadPages,
            Request::WritePages { .. } => Op::WritePages,
            Request::DeletePages { .. } => Op::DeletePages,
            Request::DropRegion { .. } => Op::DropRegion,
            Request::ReadObjects { .. } => Op::ReadObjects,
            Request::WriteObjects { .. } => Op::WriteObjects,
            Request::DeleteObjects { .. } => Op::DeleteObjects,
            Request::DropObjects { .. } => Op::DropObjects,
            Request::Construct { .. } => Op::Construct,
            Request::Destruct { .. } => Op::Destruct,
            Request::Compute { .. } => Op::Compute,
            Request::Lease { .. } => Op::Lease,
            Request::Own { .. } => Op::Own,
        }
    }

    /// Checks sizes a server would reject, so a caller gets the error before anything is sent.
    pub fn validate(&self) -> Result<(), ProtoError> {
        let batch = |n: usize| {
            if n > MAX_BATCH {
                Err(ProtoError::new(Status::TooLarge, format!("batch of {n} entries exceeds {MAX_BATCH}")))
            } else {
                Ok(())
            }
        };
        match self {
            Request::ReadPages { pages, .. } | Request::DeletePages { pages, .. } => batch(pages.len())?,
            Request::WritePages { pages, data, .. } => {
                batch(pages.len())?;
                if data.len() != pages.len() * PAGE_SIZE {
                    return Err(ProtoError::bad(format!(
                        "{} pages need {} bytes of data, got {}",
                        pages.len(),
                        pages.len() * PAGE_SIZE,
                        data.len()
                    )));
                }
            }
            Request::ReadObjects { ids, .. } | Request::DeleteObjects { ids, .. } => batch(ids.len())?,
            Request::WriteObjects { batch: b, .. } => {
                batch(b.len())?;
                if b.ids.len() != b.lens.len() {
                    return Err(ProtoError::bad("object batch ids and lengths differ in count"));
                }
                let mut total = 0usize;
                for &l in &b.lens {
                    if l == 0 || l == ABSENT || l as usize > MAX_OBJECT {
                        return Err(ProtoError::new(
                            Status::TooLarge,
                            format!("object of {l} bytes: values must be 1 B to {MAX_OBJECT} B"),
                        ));
                    }
                    total += l as usize;
                }
                if total != b.values_len() {
                    return Err(ProtoError::bad("object batch lengths do not add up to its data"));
                }
            }
            Request::Construct { ty, .. } if ty.len() > 255 => {
                return Err(ProtoError::bad("type name longer than 255 bytes"))
            }
            Request::Lease { grace_secs, .. } if *grace_secs > MAX_GRACE_SECS => {
                return Err(ProtoError::bad(format!("session grace of {grace_secs} s exceeds {MAX_GRACE_SECS} s")))
            }
            _ => {}
        }
        let size = encoded_len(self);
        if size > MAX_FRAME {
            return Err(ProtoError::new(Status::TooLarge, format!("request of {size} bytes exceeds {MAX_FRAME}")));
        }
        Ok(())
    }
}

fn encoded_len(r: &Request) -> usize {
    HEADER_LEN
        + match r {
            Request::Ping | Request::Stats => 0,
            Request::ReadPages { pages, .. } | Request::DeletePages { pages, .. } => 12 + 8 * pages.len(),
            Request::WritePages { pages, data, .. } => 12 + 8 * pages.len() + data.len(),
            Request::DropRegion { .. } | Request::DropObjects { .. } | Request::Destruct { .. } => 8,
            Request::ReadObjects { ids, .. } | Request::DeleteObjects { ids, .. } => 12 + 8 * ids.len(),
            Request::WriteObjects { batch, .. } => 12 + 12 * batch.len() + batch.values_len(),
            Request::Construct { ty, params, .. } => 9 + ty.len() + params.len(),
            Request::Compute { input, .. } => 12 + input.len(),
            Request::Lease { .. } => 12,
            Request::Own { .. } => 9,
        }
}

fn put_u64s(buf: &mut Vec<u8>, v: &[u64]) {
    buf.extend_from_slice(&u32::try_from(v.len()).expect("batch validated").to_le_bytes());
    for x in v {
        buf.extend_from_slice(&x.to_le_bytes());
    }
}

/// Appends the complete frame of `req` with request id `id`. Call [`Request::validate`] first.
pub fn encode_request(buf: &mut Vec<u8>, id: u64, req: &Request) {
    buf.reserve(encoded_len(req) + 4);
    let s = begin_frame(buf, req.op() as u8, 0, id);
    match req {
        Request::Ping | Request::Stats => {}
        Request::ReadPages { region, pages } | Request::DeletePages { region, pages } => {
            buf.extend_from_slice(&region.to_le_bytes());
            put_u64s(buf, pages);
        }
        Request::WritePages { region, pages, data } => {
            buf.extend_from_slice(&region.to_le_bytes());
            put_u64s(buf, pages);
            buf.extend_from_slice(data);
        }
        Request::DropRegion { region: x } | Request::DropObjects { ds: x } | Request::Destruct { ds: x } => {
            buf.extend_from_slice(&x.to_le_bytes())
        }
        Request::ReadObjects { ds, ids } | Request::DeleteObjects { ds, ids } => {
            buf.extend_from_slice(&ds.to_le_bytes());
            put_u64s(buf, ids);
        }
        Request::WriteObjects { ds, batch } => {
            buf.extend_from_slice(&ds.to_le_bytes());
            put_u64s(buf, &batch.ids);
            for l in &batch.lens {
                buf.extend_from_slice(&l.to_le_bytes());
            }
            if batch.is_packed() {
                buf.extend_from_slice(&batch.data);
            } else {
                batch.iter().for_each(|(_, v)| buf.extend_from_slice(v.unwrap_or_default()));
            }
        }
        Request::Construct { ds, ty, params } => {
            buf.extend_from_slice(&ds.to_le_bytes());
            buf.push(u8::try_from(ty.len()).expect("type name validated"));
            buf.extend_from_slice(ty.as_bytes());
            buf.extend_from_slice(params);
        }
        Request::Compute { ds, op, input } => {
            buf.extend_from_slice(&ds.to_le_bytes());
            buf.extend_from_slice(&op.to_le_bytes());
            buf.extend_from_slice(input);
        }
        Request::Lease { session, grace_secs } => {
            buf.extend_from_slice(&session.to_le_bytes());
            buf.extend_from_slice(&grace_secs.to_le_bytes());
        }
        Request::Own { kind, id } => {
            buf.push(*kind as u8);
            buf.extend_from_slice(&id.to_le_bytes());
        }
    }
    end_frame(buf, s);
}

/// A decoded request borrowing the frame it came from (the server's view).
#[derive(Debug)]
pub enum RequestView<'a> {
    /// See [`Request::Ping`].
    Ping,
    /// See [`Request::Stats`].
    Stats,
    /// See [`Request::ReadPages`]; `pages` is raw little-endian u64s.
    ReadPages {
        /// Region id.
        region: u64,
        /// Page numbers.
        pages: U64s<'a>,
    },
    /// See [`Request::WritePages`].
    WritePages {
        /// Region id.
        region: u64,
        /// Page numbers.
        pages: U64s<'a>,
        /// Page contents.
        data: &'a [u8],
    },
    /// See [`Request::DeletePages`].
    DeletePages {
        /// Region id.
        region: u64,
        /// Page numbers.
        pages: U64s<'a>,
    },
    /// See [`Request::DropRegion`].
    DropRegion {
        /// Region id.
        region: u64,
    },
    /// See [`Request::ReadObjects`].
    ReadObjects {
        /// Data-structure id.
        ds: u64,
        /// Object ids.
        ids: U64s<'a>,
    },
    /// See [`Request::WriteObjects`].
    WriteObjects {
        /// Data-structure id.
        ds: u64,
        /// Object ids.
        ids: U64s<'a>,
        /// Raw little-endian u32 lengths.
        lens: &'a [u8],
        /// Concatenated values.
        data: &'a [u8],
    },
    /// See [`Request::DeleteObjects`].
    DeleteObjects {
        /// Data-structure id.
        ds: u64,
        /// Object ids.
        ids: U64s<'a>,
    },
    /// See [`Request::DropObjects`].
    DropObjects {
        /// Data-structure id.
        ds: u64,
    },
    /// See [`Request::Construct`].
    Construct {
        /// Instance id.
        ds: u64,
        /// Type name.
        ty: &'a str,
        /// Parameters.
        params: &'a [u8],
    },
    /// See [`Request::Destruct`].
    Destruct {
        /// Instance id.
        ds: u64,
    },
    /// See [`Request::Compute`].
    Compute {
        /// Instance id.
        ds: u64,
        /// Operation number.
        op: u32,
        /// Input.
        input: &'a [u8],
    },
    /// Switch to raw mode: `mode` 1 = echo (`a` request bytes in, `b` reply bytes out, repeated),
    /// 2 = source (the server streams `a`-byte chunks until the client closes), 3 = sink.
    Raw {
        /// Mode number.
        mode: u8,
        /// First size parameter.
        a: u32,
        /// Second size parameter.
        b: u32,
    },
    /// Bind the connection to a session.
    Lease {
        /// Session id.
        session: u64,
        /// Grace period in seconds.
        grace_secs: u32,
    },
    /// Tie a key space to the connection's session.
    Own {
        /// What `id` names.
        kind: OwnKind,
        /// The key space.
        id: u64,
    },
}

/// A borrowed array of little-endian u64s.
#[derive(Clone, Copy, Debug)]
pub struct U64s<'a>(&'a [u8]);

impl<'a> U64s<'a> {
    /// Number of values.
    pub fn len(&self) -> usize {
        self.0.len() / 8
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Value `i`.
    pub fn get(&self, i: usize) -> u64 {
        let mut a = [0; 8];
        a.copy_from_slice(&self.0[i * 8..i * 8 + 8]);
        u64::from_le_bytes(a)
    }
    /// All values.
    pub fn iter(self) -> impl Iterator<Item = u64> + Clone + 'a {
        self.0.chunks_exact(8).map(|c| {
            let mut a = [0; 8];
            a.copy_from_slice(c);
            u64::from_le_bytes(a)
        })
    }
}

fn take_u64s<'a>(r: &mut Reader<'a>) -> Result<U64s<'a>, ProtoError> {
    let n = r.count(8)?;
    Ok(U64s(r.bytes(n * 8)?))
}

/// Decodes a request payload for opcode byte `op`. Never panics.
pub fn decode_request(op: u8, payload: &[u8]) -> Result<RequestView<'_>, ProtoError> {
    let op = Op::from_u8(op).ok_or_else(|| ProtoError::new(Status::UnknownOp, format!("unknown opcode 0x{op:02x}")))?;
    let mut r = Reader::new(payload);
    let v = match op {
        Op::Ping => RequestView::Ping,
        Op::Stats => RequestView::Stats,
        Op::ReadPages | Op::DeletePages => {
            let region = r.u64()?;
            let pages = take_u64s(&mut r)?;
            if op == Op::ReadPages {
                RequestView::ReadPages { region, pages }
            } else {
                RequestView::DeletePages { region, pages }
            }
        }
        Op::WritePages => {
            let region = r.u64()?;
            let pages = take_u64s(&mut r)?;
            let data = r.bytes(pages.len() * PAGE_SIZE)?;
            RequestView::WritePages { region, pages, data }
        }
        Op::DropRegion => RequestView::DropRegion { region: r.u64()? },
        Op::ReadObjects | Op::DeleteObjects => {
            let ds = r.u64()?;
            let ids = take_u64s(&mut r)?;
            if op == Op::ReadObjects {
                RequestView::ReadObjects { ds, ids }
            } else {
                RequestView::DeleteObjects { ds, ids }
            }
        }
        Op::WriteObjects => {
            let ds = r.u64()?;
            let n = r.count(12)?;
            let ids = U64s(r.bytes(n * 8)?);
            let lens = r.bytes(n * 4)?;
            let mut total = 0usize;
            for c in lens.chunks_exact(4) {
                let l = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                if l == 0 || l as usize > MAX_OBJECT {
                    return Err(ProtoError::new(
                        Status::TooLarge,
                        format!("object of {l} bytes: values must be 1 B to {MAX_OBJECT} B"),
                    ));
                }
                total += l as usize;
            }
            let data = r.bytes(total)?;
            RequestView::WriteObjects { ds, ids, lens, data }
        }
        Op::DropObjects => RequestView::DropObjects { ds: r.u64()? },
        Op::Construct => {
            let ds = r.u64()?;
            let n = r.u8()? as usize;
            let ty = std::str::from_utf8(r.bytes(n)?).map_err(|_| ProtoError::bad("type name is not UTF-8"))?;
            RequestView::Construct { ds, ty, params: r.rest() }
        }
        Op::Destruct => RequestView::Destruct { ds: r.u64()? },
        Op::Compute => {
            let ds = r.u64()?;
            let op = r.u32()?;
            RequestView::Compute { ds, op, input: r.rest() }
        }
        Op::Raw => {
            let mode = r.u8()?;
            let a = r.u32()?;
            let b = r.u32()?;
            if !(1..=3).contains(&mode) || a as usize > MAX_FRAME || b as usize > MAX_FRAME {
                return Err(ProtoError::bad(format!("raw mode {mode} with sizes {a}, {b} is not valid")));
            }
            RequestView::Raw { mode, a, b }
        }
        Op::Lease => {
            let session = r.u64()?;
            let grace_secs = r.u32()?;
            if grace_secs > MAX_GRACE_SECS {
                return Err(ProtoError::bad(format!("session grace of {grace_secs} s exceeds {MAX_GRACE_SECS} s")));
            }
            RequestView::Lease { session, grace_secs }
        }
        Op::Own => {
            let k = r.u8()?;
            let kind = OwnKind::from_u8(k).ok_or_else(|| ProtoError::bad(format!("unknown key-space kind {k}")))?;
            RequestView::Own { kind, id: r.u64()? }
        }
        Op::Hello | Op::Challenge | Op::Auth | Op::AuthOk => {
            return Err(ProtoError::bad(format!("{op:?} is only valid during the handshake")))
        }
    };
    r.finish()?;
    Ok(v)
}

/// A decoded reply (the client's view).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Answer to PING.
    Pong,
    /// Answer to a write, delete, drop, construct or destruct.
    Done,
    /// Answer to STATS.
    Stats(Vec<(String, u64)>),
    /// Answer to READ_PAGES: one flag per page, and `present.len() * PAGE_SIZE` bytes (absent pages zeroed).
    Pages {
        /// Whether each page was stored.
        present: Vec<bool>,
        /// Page contents.
        data: Vec<u8>,
    },
    /// Answer to READ_OBJECTS.
    Objects(ObjBatch),
    /// Answer to READ_OBJECTS submitted with [`FarStore::submit_into`](crate::far::FarStore::submit_into) whose
    /// values were received into the sink: every object present, as expected.
    Placed,
    /// Answer to COMPUTE.
    Output(Vec<u8>),
}

/// Decodes an `Ok` reply payload to a request of opcode `op`.
pub fn decode_reply(op: Op, payload: &[u8]) -> Result<Reply, ProtoError> {
    let mut r = Reader::new(payload);
    let reply = match op {
        Op::Ping => Reply::Pong,
        Op::Stats => {
            let n = r.count(9)?;
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                let l = r.u8()? as usize;
                let name =
                    String::from_utf8(r.bytes(l)?.to_vec()).map_err(|_| ProtoError::bad("stat name not UTF-8"))?;
                v.push((name, r.u64()?));
            }
            Reply::Stats(v)
        }
        Op::ReadPages => {
            let n = r.count(0)?;
            let bits = r.bytes(n.div_ceil(8))?;
            let present: Vec<bool> = (0..n).map(|i| bits[i / 8] & (1 << (i % 8)) != 0).collect();
            let mut data = vec![0u8; n * PAGE_SIZE];
            for (i, _) in present.iter().enumerate().filter(|(_, &p)| p) {
                data[i * PAGE_SIZE..(i + 1) * PAGE_SIZE].copy_from_slice(r.bytes(PAGE_SIZE)?);
            }
            Reply::Pages { present, data }
        }
        Op::ReadObjects => return decode_objects(payload.to_vec()).map(Reply::Objects),
        Op::Compute => Reply::Output(r.rest().to_vec()),
        Op::Raw => Reply::Done,
        _ => Reply::Done,
    };
    r.finish()?;
    Ok(reply)
}

/// Decodes an `Ok` reply payload to READ_OBJECTS into a batch that keeps the payload as it is, values in place
/// between their entries (not [packed](ObjBatch::pack)): a reply costs one buffer and no pass over its bytes
/// beyond the one that received them.
pub fn decode_objects(payload: Vec<u8>) -> Result<ObjBatch, ProtoError> {
    let mut b = ObjBatch::new();
    {
        let mut r = Reader::new(&payload);
        let n = r.count(12)?;
        b.ids.reserve(n);
        b.lens.reserve(n);
        for _ in 0..n {
            let id = r.u64()?;
            let len = r.u32()?;
            if len == ABSENT {
                b.push_absent(id);
            } else if len as usize > MAX_OBJECT {
                return Err(ProtoError::bad(format!("object of {len} bytes in reply")));
            } else {
                r.bytes(len as usize)?;
                b.ids.push(id);
                b.lens.push(len);
            }
        }
        r.finish()?;
    }
    b.data = payload;
    b.wire = true;
    Ok(b)
}

/// Encodes a STATS reply payload.
pub fn put_stats(buf: &mut Vec<u8>, stats: &[(String, u64)]) {
    buf.extend_from_slice(&u32::try_from(stats.len()).unwrap_or(u32::MAX).to_le_bytes());
    for (name, v) in stats {
        let n = &name.as_bytes()[..name.len().min(255)];
        buf.push(u8::try_from(n.len()).unwrap_or(u8::MAX));
        buf.extend_from_slice(n);
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip_header(req: &Request) -> (Header, Vec<u8>) {
        let mut buf = Vec::new();
        encode_request(&mut buf, 42, req);
        let len = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
        assert_eq!(len, buf.len() - 4);
        let h = Header::parse(&buf[4..]).unwrap();
        (h, buf[4 + HEADER_LEN..].to_vec())
    }

    #[test]
    fn write_objects_roundtrip() {
        let mut b = ObjBatch::new();
        b.push(1, b"hello");
        b.push(9, &[7; 300]);
        let req = Request::WriteObjects { ds: 3, batch: b.clone() };
        req.validate().unwrap();
        let (h, payload) = roundtrip_header(&req);
        assert_eq!(h.id, 42);
        match decode_request(h.op, &payload).unwrap() {
            RequestView::WriteObjects { ds, ids, lens, data } => {
                assert_eq!(ds, 3);
                assert_eq!(ids.iter().collect::<Vec<_>>(), vec![1, 9]);
                assert_eq!(lens.len(), 8);
                assert_eq!(data.len(), 305);
            }
            v => panic!("decoded {v:?}"),
        }
    }

    #[test]
    fn rejects_oversized_and_empty_objects() {
        let mut b = ObjBatch::new();
        b.ids.push(1);
        b.lens.push(0);
        assert_eq!(Request::WriteObjects { ds: 0, batch: b }.validate().unwrap_err().status, Status::TooLarge);
    }

    #[test]
    fn unknown_opcode_is_named() {
        let e = decode_request(0x77, &[]).unwrap_err();
        assert_eq!(e.status, Status::UnknownOp);
        assert!(e.msg.contains("0x77"));
    }

    #[test]
    fn pages_reply_zero_fills_absent() {
        let mut buf = Vec::new();
        buf.extend_from_slice(&2u32.to_le_bytes());
        buf.push(0b10);
        buf.extend_from_slice(&[5u8; PAGE_SIZE]);
        match decode_reply(Op::ReadPages, &buf).unwrap() {
            Reply::Pages { present, data } => {
                assert_eq!(present, vec![false, true]);
                assert!(data[..PAGE_SIZE].iter().all(|&b| b == 0));
                assert!(data[PAGE_SIZE..].iter().all(|&b| b == 5));
            }
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn objects_reply_keeps_values_in_order_and_absent_ones_marked() {
        let mut buf = Vec::new();
        buf.extend_from_slice(&4u32.to_le_bytes());
        for (id, v) in [(7u64, &b"first"[..]), (8, &[]), (9, &[3u8; 4096][..]), (10, &b"z"[..])] {
            buf.extend_from_slice(&id.to_le_bytes());
            if id == 8 {
                buf.extend_from_slice(&ABSENT.to_le_bytes());
            } else {
                buf.extend_from_slice(&u32::try_from(v.len()).unwrap().to_le_bytes());
                buf.extend_from_slice(v);
            }
        }
        let Reply::Objects(b) = decode_reply(Op::ReadObjects, &buf).unwrap() else { panic!() };
        let got: Vec<(u64, Option<Vec<u8>>)> = b.iter().map(|(id, v)| (id, v.map(<[u8]>::to_vec))).collect();
        assert_eq!(
            got,
            vec![(7, Some(b"first".to_vec())), (8, None), (9, Some(vec![3u8; 4096])), (10, Some(b"z".to_vec()))]
        );
        assert!(!b.is_packed(), "a reply's values stay where they arrived");
        assert_eq!(b.values_len(), 5 + 4096 + 1);
        let mut packed = b.clone();
        packed.pack();
        assert_eq!(packed.data.len(), 5 + 4096 + 1, "the values only");
        assert_eq!(packed, b, "packing changes the layout, not the entries");
        let mut built = ObjBatch::new();
        for (id, v) in b.iter() {
            match v {
                Some(v) => built.push(id, v),
                None => built.push_absent(id),
            }
        }
        assert_eq!(packed.data, built.data);
        // A reply's batch written back encodes as the packed one does, and pushing onto it packs it first.
        let (mut e1, mut e2) = (Vec::new(), Vec::new());
        encode_request(&mut e1, 1, &Request::WriteObjects { ds: 3, batch: b.clone() });
        encode_request(&mut e2, 1, &Request::WriteObjects { ds: 3, batch: built.clone() });
        assert_eq!(e1, e2);
        let mut grown = b.clone();
        grown.push(11, b"more");
        built.push(11, b"more");
        assert_eq!(grown.data, built.data);
        // A value running past the end, or trailing bytes, are errors.
        assert!(decode_objects(buf[..buf.len() - 1].to_vec()).is_err());
        let mut long = buf.clone();
        long.push(0);
        assert!(decode_objects(long).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        #[test]
        fn decoder_never_panics(op in any::<u8>(), payload in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_request(op, &payload);
            if let Some(op) = Op::from_u8(op) {
                let _ = decode_reply(op, &payload);
            }
        }

        #[test]
        fn truncated_requests_are_errors(pages in proptest::collection::vec(any::<u64>(), 1..8), cut in 1usize..64) {
            let data = vec![1u8; pages.len() * PAGE_SIZE];
            let req = Request::WritePages { region: 1, pages, data };
            let (h, payload) = roundtrip_header(&req);
            let cut = cut.min(payload.len());
            prop_assert!(decode_request(h.op, &payload[..payload.len() - cut]).is_err());
        }

        #[test]
        fn page_requests_roundtrip(region in any::<u64>(), pages in proptest::collection::vec(any::<u64>(), 0..64)) {
            let req = Request::DeletePages { region, pages: pages.clone() };
            let (h, payload) = roundtrip_header(&req);
            match decode_request(h.op, &payload).unwrap() {
                RequestView::DeletePages { region: r, pages: p } => {
                    prop_assert_eq!(r, region);
                    prop_assert_eq!(p.iter().collect::<Vec<_>>(), pages);
                }
                v => prop_assert!(false, "decoded {:?}", v),
            }
        }
    }
}
