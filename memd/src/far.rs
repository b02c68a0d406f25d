//! The far-store abstraction every other crate programs against.
//!
//! [`FarStore`] is "somewhere pages and objects live": the network [`crate::client::Client`] and the in-process
//! [`MemStore`] both implement it, so paging and object code is written once and unit-tested without sockets.
//! Requests are submitted without waiting ([`FarStore::submit`] returns a [`Pending`]), so a caller can put many
//! requests in flight before it waits for any — the basis of readahead, prefetch and batched write-back.

use crate::proto::{self, Header, ObjBatch, Op, OwnKind, ProtoError, Reply, Request, RequestView, Status};
use crate::store::{Engine, Tenant};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a far-store call failed. Every variant says what happened in words a user can act on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The server is out of capacity; nothing of the request was stored.
    #[error("far memory is full: {0}")]
    NoSpace(String),
    /// The server refused the request.
    #[error("server refused the request ({status}): {msg}")]
    Rejected {
        /// Status it answered with.
        status: Status,
        /// Its message.
        msg: String,
    },
    /// The handshake failed: wrong tenant or secret, or a version mismatch.
    #[error("authentication with {server} failed: {msg}")]
    Auth {
        /// Server address.
        server: String,
        /// Reason.
        msg: String,
    },
    /// The server could not be reached within the reconnect deadline; retrying will not help.
    #[error("far-memory server {server} is gone: {reason}")]
    Gone {
        /// Server address.
        server: String,
        /// Last error seen.
        reason: String,
    },
    /// The connection dropped while a non-idempotent request was in flight: it may or may not have run.
    #[error("connection to {server} lost during a {op:?} request, which is not retried: {reason}")]
    Interrupted {
        /// Server address.
        server: String,
        /// The request's opcode.
        op: Op,
        /// What broke.
        reason: String,
    },
    /// The server's reply did not decode.
    #[error("protocol error from {server}: {msg}")]
    Protocol {
        /// Server address.
        server: String,
        /// What was wrong.
        msg: String,
    },
    /// The request was invalid before anything was sent.
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl StoreError {
    /// Whether the server is unreachable for good (the caller should stop using it).
    pub fn is_gone(&self) -> bool {
        matches!(self, StoreError::Gone { .. } | StoreError::Auth { .. })
    }
    pub(crate) fn from_status(status: Status, msg: String) -> StoreError {
        match status {
            Status::NoSpace => StoreError::NoSpace(msg),
            s => StoreError::Rejected { status: s, msg },
        }
    }
}

/// Decodes a reply frame (header already parsed) for a request of opcode `op`. An owned payload of objects
/// becomes the batch's value buffer ([`proto::decode_objects`]) instead of being copied into a new one.
pub(crate) fn reply_from_frame(
    op: Op,
    h: &Header,
    payload: std::borrow::Cow<'_, [u8]>,
    server: &str,
) -> Result<Reply, StoreError> {
    match Status::from_u8(h.status) {
        Some(Status::Ok) => match op {
            Op::ReadObjects => proto::decode_objects(payload.into_owned()).map(Reply::Objects),
            _ => proto::decode_reply(op, &payload),
        }
        .map_err(|e| StoreError::Protocol { server: server.to_string(), msg: e.to_string() }),
        Some(s) => Err(StoreError::from_status(s, String::from_utf8_lossy(&payload).into_owned())),
        None => Err(StoreError::Protocol { server: server.to_string(), msg: format!("unknown status {}", h.status) }),
    }
}

/// A submitted request whose reply may not have arrived yet.
#[derive(Debug)]
#[must_use = "a Pending must be waited on to learn whether the request succeeded"]
pub struct Pending(pub(crate) PendingInner);

#[derive(Debug)]
pub(crate) enum PendingInner {
    Ready(Result<Reply, StoreError>),
    Remote(crate::client::Ticket),
}

impl Pending {
    /// A request that is already answered.
    pub fn ready(r: Result<Reply, StoreError>) -> Pending {
        Pending(PendingInner::Ready(r))
    }
    /// Blocks until the reply arrives.
    pub fn wait(self) -> Result<Reply, StoreError> {
        match self.0 {
            PendingInner::Ready(r) => r,
            PendingInner::Remote(t) => t.wait(None),
        }
    }
    /// Like [`Pending::wait`], but a thread that reads the reply off the connection itself first polls the
    /// socket without sleeping for up to `spin`, then blocks. For a latency-critical wait whose reply is due
    /// within microseconds — a page fault's fetch: on a virtual machine, waking a thread that slept on an idle
    /// CPU can cost more than the round trip. It burns up to `spin` of CPU time per call.
    pub fn wait_spinning(self, spin: Duration) -> Result<Reply, StoreError> {
        match self.0 {
            PendingInner::Ready(r) => r,
            PendingInner::Remote(t) => t.wait(Instant::now().checked_add(spin)),
        }
    }
    /// Whether [`Pending::wait`] would return without blocking.
    pub fn is_ready(&self) -> bool {
        match &self.0 {
            PendingInner::Ready(_) => true,
            PendingInner::Remote(t) => t.is_ready(),
        }
    }
}

fn unexpected(what: &str, r: Reply) -> StoreError {
    StoreError::Protocol { server: String::new(), msg: format!("expected a {what} reply, got {r:?}") }
}

/// Destinations for the values of one READ_OBJECTS reply, so that a network client can receive them from the
/// socket straight where they belong — an object runtime's heap — instead of into a reply buffer that is copied
/// again (that copy was a quarter of a container scan's CPU).
///
/// The client uses a sink only for a successful reply exactly as long as [`ObjectSink::expected`] predicts (every
/// object present, at its expected length); it checks each value's id and length as they arrive, and if one
/// differs it hands the bytes back as an ordinary [`Reply::Objects`], and the sink discards what was written.
pub trait ObjectSink: Send + Sync + fmt::Debug {
    /// The ids and value lengths the reply should carry, in request order.
    fn expected(&self) -> &[(u64, u32)];

    /// Called at most once, by the thread that reads the reply: lends `fill` one destination per expected value,
    /// in order, each of its expected length. `fill` reads the values into them and returns whether they are
    /// the expected ones. Returns `None` when the sink cannot lend destinations (the reply is then read the
    /// ordinary way), else what `fill` returned; the sink keeps the values only on `Some(Ok(true))`.
    fn receive(&self, fill: &mut dyn FnMut(&mut [&mut [u8]]) -> std::io::Result<bool>)
        -> Option<std::io::Result<bool>>;
}

/// Somewhere far pages and objects live. Implemented by [`crate::client::Client`] and [`MemStore`].
///
/// Pages are 4 KiB values keyed by (region, page number); objects are 1 B – 1 MiB values keyed by (data
/// structure, object id). The two key spaces are separate. Absent pages read as zeros and are flagged absent.
pub trait FarStore: Send + Sync + fmt::Debug {
    /// Sends `req` and returns at once; the reply is collected with [`Pending::wait`].
    fn submit(&self, req: Request) -> Result<Pending, StoreError>;

    /// Sends several requests at once (one system call on a network store) and returns their handles in order.
    fn submit_many(&self, reqs: Vec<Request>) -> Result<Vec<Pending>, StoreError> {
        reqs.into_iter().map(|r| self.submit(r)).collect()
    }

    /// Like [`FarStore::submit`] for a [`Request::ReadObjects`], offering `sink` as the place its values may be
    /// received into (see [`ObjectSink`]). The reply is then [`Reply::Placed`] if they were, and the usual
    /// [`Reply::Objects`] otherwise (always, for a store without a socket to read from).
    fn submit_into(&self, req: Request, sink: Arc<dyn ObjectSink>) -> Result<Pending, StoreError> {
        drop(sink);
        self.submit(req)
    }

    /// Where the store is, for messages (`127.0.0.1:7070`, `in-process`).
    fn describe(&self) -> String;

    /// Sends `req` and waits for its reply.
    fn call(&self, req: Request) -> Result<Reply, StoreError> {
        self.submit(req)?.wait()
    }

    /// Round trip with no work.
    fn ping(&self) -> Result<(), StoreError> {
        self.call(Request::Ping).map(|_| ())
    }

    /// Reads pages: per-page presence flags and `pages.len() * PAGE_SIZE` bytes (absent pages zeroed).
    fn read_pages(&self, region: u64, pages: &[u64]) -> Result<(Vec<bool>, Vec<u8>), StoreError> {
        match self.call(Request::ReadPages { region, pages: pages.to_vec() })? {
            Reply::Pages { present, data } => Ok((present, data)),
            r => Err(unexpected("pages", r)),
        }
    }

    /// Writes pages; `data` holds `pages.len() * PAGE_SIZE` bytes.
    fn write_pages(&self, region: u64, pages: &[u64], data: &[u8]) -> Result<(), StoreError> {
        self.call(Request::WritePages { region, pages: pages.to_vec(), data: data.to_vec() }).map(|_| ())
    }

    /// Deletes pages (absent ones are ignored).
    fn delete_pages(&self, region: u64, pages: &[u64]) -> Result<(), StoreError> {
        self.call(Request::DeletePages { region, pages: pages.to_vec() }).map(|_| ())
    }

    /// Deletes every page of `region`.
    fn drop_region(&self, region: u64) -> Result<(), StoreError> {
        self.call(Request::DropRegion { region }).map(|_| ())
    }

    /// Reads objects.
    fn read_objects(&self, ds: u64, ids: &[u64]) -> Result<ObjBatch, StoreError> {
        match self.call(Request::ReadObjects { ds, ids: ids.to_vec() })? {
            Reply::Objects(b) => Ok(b),
            r => Err(unexpected("objects", r)),
        }
    }

    /// Reads one object.
    fn read_object(&self, ds: u64, id: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let b = self.read_objects(ds, &[id])?;
        let v = b.iter().next().and_then(|(_, v)| v.map(<[u8]>::to_vec));
        Ok(v)
    }

    /// Writes objects (all or nothing with respect to capacity).
    fn write_objects(&self, ds: u64, batch: ObjBatch) -> Result<(), StoreError> {
        self.call(Request::WriteObjects { ds, batch }).map(|_| ())
    }

    /// Writes one object.
    fn write_object(&self, ds: u64, id: u64, value: &[u8]) -> Result<(), StoreError> {
        let mut b = ObjBatch::new();
        if value.is_empty() || value.len() > proto::MAX_OBJECT {
            return Err(StoreError::Invalid(format!("object of {} bytes: values must be 1 B to 1 MiB", value.len())));
        }
        b.push(id, value);
        self.write_objects(ds, b)
    }

    /// Deletes objects (absent ones are ignored).
    fn delete_objects(&self, ds: u64, ids: &[u64]) -> Result<(), StoreError> {
        self.call(Request::DeleteObjects { ds, ids: ids.to_vec() }).map(|_| ())
    }

    /// Deletes every object of `ds`.
    fn drop_objects(&self, ds: u64) -> Result<(), StoreError> {
        self.call(Request::DropObjects { ds }).map(|_| ())
    }

    /// Creates server-side data structure `ds` of registered type `ty`.
    fn construct(&self, ds: u64, ty: &str, params: &[u8]) -> Result<(), StoreError> {
        self.call(Request::Construct { ds, ty: ty.to_string(), params: params.to_vec() }).map(|_| ())
    }

    /// Destroys server-side data structure `ds` and its objects.
    fn destruct(&self, ds: u64) -> Result<(), StoreError> {
        self.call(Request::Destruct { ds }).map(|_| ())
    }

    /// Runs operation `op` of data structure `ds` on the server.
    fn compute(&self, ds: u64, op: u32, input: &[u8]) -> Result<Vec<u8>, StoreError> {
        match self.call(Request::Compute { ds, op, input: input.to_vec() })? {
            Reply::Output(v) => Ok(v),
            r => Err(unexpected("output", r)),
        }
    }

    /// Ties key space `id` to this client's session: a server drops it once the client has had no connection for
    /// its grace period (the process exited or was killed), so memory of dead processes does not pile up in memd.
    /// Idempotent. Stores without sessions (the in-process store) keep nothing beyond their process: a no-op.
    fn own(&self, kind: OwnKind, id: u64) -> Result<(), StoreError> {
        let _ = (kind, id);
        Ok(())
    }

    /// Server and tenant counters as (name, value).
    fn stats(&self) -> Result<Vec<(String, u64)>, StoreError> {
        match self.call(Request::Stats)? {
            Reply::Stats(v) => Ok(v),
            r => Err(unexpected("stats", r)),
        }
    }
}

/// A fresh random 64-bit id for a region or data structure, so that several processes sharing one tenant
/// never collide.
pub fn fresh_space_id() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the OS random source is available");
    u64::from_le_bytes(b)
}

/// An in-process far store: the server's own [`Engine`] called directly, through the same codec.
///
/// Requests are encoded and replies decoded exactly as over a socket, so behaviour (capacity, errors, batch
/// limits) is identical to a real memd; it is for unit tests and for embedding.
#[derive(Debug, Clone)]
pub struct MemStore {
    engine: Arc<Engine>,
    tenant: Arc<Tenant>,
}

impl MemStore {
    /// A store of `capacity` bytes with no offloadable types.
    pub fn new(capacity: u64) -> MemStore {
        Self::with_registry(capacity, crate::offload::Registry::new())
    }
    /// A store of `capacity` bytes with offloadable types from `registry`.
    pub fn with_registry(capacity: u64, registry: crate::offload::Registry) -> MemStore {
        let engine = Arc::new(Engine::new(capacity, registry));
        Self::on_engine(engine, crate::config::DEFAULT_TENANT)
    }
    /// A view of an existing engine as tenant `tenant`.
    pub fn on_engine(engine: Arc<Engine>, tenant: &str) -> MemStore {
        let tenant = engine.tenant(tenant);
        MemStore { engine, tenant }
    }
    /// The engine behind this store.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }
}

impl FarStore for MemStore {
    fn submit(&self, req: Request) -> Result<Pending, StoreError> {
        req.validate().map_err(|e: ProtoError| StoreError::Invalid(e.msg))?;
        let mut frame = Vec::new();
        proto::encode_request(&mut frame, 1, &req);
        let body = &frame[4..];
        let h = Header::parse(body).map_err(|e| StoreError::Invalid(e.msg))?;
        let view: RequestView<'_> =
            proto::decode_request(h.op, &body[proto::HEADER_LEN..]).map_err(|e| StoreError::Invalid(e.msg))?;
        let mut out = Vec::new();
        self.engine.dispatch(&self.tenant, h.id, h.op, &view, &mut out);
        let rh = Header::parse(&out[4..]).map_err(|e| StoreError::Invalid(e.msg))?;
        Ok(Pending::ready(reply_from_frame(req.op(), &rh, (&out[4 + proto::HEADER_LEN..]).into(), "in-process")))
    }

    fn describe(&self) -> String {
        "in-process".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::PAGE_SIZE;

    #[test]
    fn pages_roundtrip_and_capacity() {
        let s = MemStore::new(3 * PAGE_SIZE as u64);
        let data: Vec<u8> = (0..2 * PAGE_SIZE).map(|i| u8::try_from(i % 251).unwrap()).collect();
        s.write_pages(7, &[1, 2], &data).unwrap();
        let (present, got) = s.read_pages(7, &[2, 1, 3]).unwrap();
        assert_eq!(present, vec![true, true, false]);
        assert_eq!(&got[..PAGE_SIZE], &data[PAGE_SIZE..]);
        assert_eq!(&got[PAGE_SIZE..2 * PAGE_SIZE], &data[..PAGE_SIZE]);
        assert!(got[2 * PAGE_SIZE..].iter().all(|&b| b == 0));
        // Overwriting costs nothing; two new pages do not fit in the one page left.
        s.write_pages(7, &[1], &data[..PAGE_SIZE]).unwrap();
        let e = s.write_pages(7, &[10, 11], &data).unwrap_err();
        assert!(matches!(e, StoreError::NoSpace(_)), "{e}");
        assert!(!s.read_pages(7, &[10]).unwrap().0[0], "a refused write stores nothing");
        s.delete_pages(7, &[1]).unwrap();
        s.write_pages(7, &[10, 11], &data).unwrap();
        s.drop_region(7).unwrap();
        assert_eq!(s.engine().used(), 0);
    }

    #[test]
    fn objects_roundtrip() {
        let s = MemStore::new(1 << 30);
        s.write_object(1, 5, b"abc").unwrap();
        s.write_object(1, 5, &[9; 1000]).unwrap();
        s.write_object(2, 5, b"other ds").unwrap();
        assert_eq!(s.read_object(1, 5).unwrap().unwrap(), vec![9; 1000]);
        assert_eq!(s.read_object(2, 5).unwrap().unwrap(), b"other ds");
        assert_eq!(s.read_object(1, 6).unwrap(), None);
        assert_eq!(s.engine().used(), 1008);
        s.drop_objects(1).unwrap();
        assert_eq!(s.read_object(1, 5).unwrap(), None);
        assert_eq!(s.engine().used(), 8);
        assert!(matches!(s.write_object(1, 1, &[]), Err(StoreError::Invalid(_))));
        assert!(matches!(s.write_object(1, 1, &vec![0; (1 << 20) + 1]), Err(StoreError::Invalid(_))));
    }

    #[test]
    fn unknown_type_is_a_clear_error() {
        let s = MemStore::new(1 << 20);
        let e = s.construct(1, "nope", &[]).unwrap_err();
        assert!(matches!(e, StoreError::Rejected { status: Status::UnknownType, .. }), "{e}");
        let e = s.compute(1, 0, &[]).unwrap_err();
        assert!(matches!(e, StoreError::Rejected { status: Status::NoSuchDs, .. }), "{e}");
    }
}
