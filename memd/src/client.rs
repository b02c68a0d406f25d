//! The network client: synchronous, std sockets only, pipelined, pooled, reconnecting.
//!
//! No async runtime: the malloc shim embeds this client, and a process must not grow a tokio runtime because it
//! was preloaded. Each connection carries many requests at once, matched to replies by request id.
//!
//! # Who reads the socket
//! Replies are read by whichever thread is waiting for one: the first waiter takes the *reader role*, reads
//! frames, files replies meant for others in a table and wakes them, and returns when its own arrives. A
//! single-threaded caller therefore reads its reply itself — no hand-off to another thread on the latency path.
//! One background *drain* thread per pool takes a connection's reader role only when requests have been
//! outstanding on it for a while with nobody reading (a caller that submitted a prefetch and went on working, or
//! callers blocked writing a large frame while the server waits for its replies to be read): it keeps the pipe
//! moving and prevents the classic pipelining deadlock. It reads only what has already arrived, so a connection
//! whose reply is slow never keeps it from the others.
//!
//! # What a connection costs
//! A socket, a 16 KiB read buffer (touched only when replies pass through it) and a few small tables. It used to
//! cost a drain thread of its own as well, and that was most of it: the first allocation of a thread gives it a
//! mimalloc heap whose first segment lies in an arena mimalloc marks `MADV_HUGEPAGE`, so the kernel backed each
//! drain thread's heap with a whole 2 MiB huge page — about 2 MiB of resident memory per connection (`farmem
//! demo`'s far run peaked at 96–98 MiB with 8 connections and 112–113 MiB with 16; with `MIMALLOC_ALLOW_THP=0`,
//! 4 and 16 connections differed by under 1 MiB). With one drain thread per pool it peaks at 82–83 MiB with 8
//! or 16 connections alike, and at 83–86 MiB with anything from 1 to 32.
//!
//! # Failures
//! When the connection breaks, the thread that notices reconnects with exponential back-off until
//! [`ClientConfig::reconnect_timeout`] passes, then reports [`StoreError::Gone`]. Requests in flight on the broken
//! connection are re-sent by their waiters if idempotent (reads, writes, deletes, ping, stats); a CONSTRUCT,
//! DESTRUCT or COMPUTE that may or may not have run is reported as [`StoreError::Interrupted`].

use crate::auth;
use crate::config::{self, Addr, ConfigError, Credential};
use crate::far::{reply_from_frame, FarStore, ObjectSink, Pending, PendingInner, StoreError};
use crate::proto::{self, Header, Op, OwnKind, Reply, Request, Status, HEADER_LEN, MAX_FRAME, NONCE_LEN, PAGE_SIZE};
use parking_lot::{Condvar, Mutex};
use std::collections::{HashMap, HashSet};
use std::io::{self, BufRead, BufReader, IoSliceMut, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{
    AtomicBool, AtomicU64, AtomicUsize,
    Ordering::{Relaxed, SeqCst},
};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Connections in a pool by default (`FARMEM_CONNECTIONS` or [`ClientConfig::connections`] change it). Each is
/// an independent pipeline — its own writer lock, reader role and server task — and threads are spread over them:
/// with many threads on few connections, a thread preempted while it writes or reads one holds up every request
/// behind it, and replies reach their threads through an extra wake-up. Measured with 16 threads of hash-map
/// lookups on a 2-CPU machine beside two CPU hogs: 0.37–0.39 M lookups/s on 2 connections, 0.54–0.65 M on 4,
/// 0.63–0.64 M on 8. An idle connection costs a socket, its server task and a few KiB (see the module's "What a
/// connection costs"), so more are cheap, but 16 (one per lookup thread) did not measure better: beside two CPU
/// hogs one helper's runs gave 0.78–0.87 M against 0.63–0.78 M on 8, the lead's 0.53–0.78 M against 0.53–0.77 M;
/// on a quiet machine 1.27–1.97 M (median 1.50 M, 6 runs) against 1.53–1.84 M on 8 (3 runs; the build before
/// the single drain thread, on 8: 1.24–1.84 M, median 1.74 M, 6 runs).
pub const DEFAULT_CONNECTIONS: usize = 8;

/// How a client reaches its server.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Server address.
    pub addr: Addr,
    /// Tenant and secret.
    pub credential: Credential,
    /// Connections in the pool; threads are spread over them.
    pub connections: usize,
    /// How long to keep reconnecting before a call fails with [`StoreError::Gone`].
    pub reconnect_timeout: Duration,
    /// Timeout of one connection attempt (and of the handshake).
    pub connect_timeout: Duration,
    /// How long the server keeps the key spaces this client [owns](FarStore::own) after its last connection
    /// closes (the process exited or lost the server). `None`: no session; owned key spaces are kept until dropped.
    /// Must exceed `reconnect_timeout`, or a reconnect could find its data gone.
    pub session_grace: Option<Duration>,
}

impl ClientConfig {
    /// Defaults: [`DEFAULT_CONNECTIONS`] connections, 10 s reconnect deadline, 2 s connect timeout, 60 s session
    /// grace.
    pub fn new(addr: Addr, credential: Credential) -> ClientConfig {
        ClientConfig {
            addr,
            credential,
            connections: DEFAULT_CONNECTIONS,
            reconnect_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            session_grace: Some(Duration::from_secs(60)),
        }
    }

    /// From `FARMEM_SERVER`, `FARMEM_TOKEN_FILE`, `FARMEM_CONNECTIONS` and `FARMEM_SESSION_GRACE`; `Ok(None)`
    /// when `FARMEM_SERVER` is unset. A malformed value is an error naming the variable.
    pub fn from_env() -> Result<Option<ClientConfig>, ConfigError> {
        let Some(server) = config::env_str("FARMEM_SERVER")? else {
            return Ok(None);
        };
        let addr = Addr::parse(&server).map_err(|m| ConfigError::new("FARMEM_SERVER", m))?;
        let file = config::env_str("FARMEM_TOKEN_FILE")?
            .ok_or_else(|| ConfigError::new("FARMEM_TOKEN_FILE", "must be set when FARMEM_SERVER is"))?;
        let cred = config::read_tokens(std::path::Path::new(&file))
            .map_err(|e| ConfigError::new("FARMEM_TOKEN_FILE", e.to_string()))?
            .swap_remove(0);
        let mut cfg = ClientConfig::new(addr, cred);
        if let Some(n) = config::env_connections()? {
            cfg.connections = n;
        }
        if let Some(grace) = config::env_session_grace()? {
            cfg.session_grace = grace;
        }
        Ok(Some(cfg))
    }
}

/// A byte stream to the server.
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    /// Polls the socket without blocking until a byte can be read, it reports an error or end of stream (which
    /// the read that follows then sees), or `until` passes. Spinning here instead of sleeping in `read` spares
    /// the waiting thread a wake-up, which on an idle virtual CPU costs more than a loopback round trip.
    fn spin_until_readable(&self, until: Instant) {
        while !self.readable_now() {
            if Instant::now() >= until {
                return;
            }
            std::hint::spin_loop();
        }
    }

    /// Whether a read would return at once: a byte has arrived, or the socket reports an error or end of stream
    /// (which the read then sees). Never blocks.
    fn readable_now(&self) -> bool {
        let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        let sock = match self {
            Stream::Tcp(s) => socket2::SockRef::from(s),
            Stream::Unix(s) => socket2::SockRef::from(s),
        };
        !matches!(
            sock.recv_with_flags(&mut byte, libc::MSG_PEEK | libc::MSG_DONTWAIT),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted
        )
    }

    fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }
    fn shutdown(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }
    fn set_timeouts(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
            Stream::Unix(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
        }
    }
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(b),
            Stream::Unix(s) => s.read(b),
        }
    }
    fn read_vectored(&mut self, b: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read_vectored(b),
            Stream::Unix(s) => s.read_vectored(b),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(b),
            Stream::Unix(s) => s.write(b),
        }
    }
    fn write_vectored(&mut self, b: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(b),
            Stream::Unix(s) => s.write_vectored(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Why one connection attempt failed.
enum ConnectError {
    /// Worth retrying (refused, reset, timed out).
    Transient(String),
    /// Retrying cannot help (authentication, version).
    Fatal(StoreError),
}

/// A reply body as read off the socket. Page-read replies are unpacked while reading, so page data is copied
/// once, from the socket straight into the buffer handed to the caller.
#[derive(Debug)]
pub(crate) enum Body {
    /// Any other payload, as sent.
    Bytes(Vec<u8>),
    /// A successful READ_PAGES reply.
    Pages { present: Vec<bool>, data: Vec<u8> },
    /// A successful READ_OBJECTS reply whose values went into the request's [`ObjectSink`].
    Placed,
}

fn invalid(m: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, m)
}

/// A frame source that can read a long run of bytes without copying it through a buffer.
pub(crate) trait FrameRead: Read {
    /// Fills `buf` completely (like `read_exact`).
    fn read_bulk(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.read_exact(buf)
    }

    /// Fills every buffer of `bufs` completely, in order (vectored reads: a reply's headers and values go
    /// where they belong in one system call per socket read, not one per piece).
    fn read_bulk_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<()> {
        read_vectored_exact(self, bufs)
    }
}

fn read_vectored_exact<R: Read + ?Sized>(r: &mut R, mut bufs: &mut [IoSliceMut<'_>]) -> io::Result<()> {
    IoSliceMut::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match r.read_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => IoSliceMut::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl FrameRead for Stream {}

impl<R: Read> FrameRead for BufReader<R> {
    /// Takes what is already buffered, then reads the rest straight from the socket into `buf`: page data is
    /// copied once, from the kernel into the caller's buffer, instead of twice.
    fn read_bulk(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let have = self.buffer().len().min(buf.len());
        buf[..have].copy_from_slice(&self.buffer()[..have]);
        self.consume(have);
        if have < buf.len() {
            self.get_mut().read_exact(&mut buf[have..])?;
        }
        Ok(())
    }

    /// Takes what is already buffered, then reads the rest straight from the socket into `bufs`.
    fn read_bulk_vectored(&mut self, mut bufs: &mut [IoSliceMut<'_>]) -> io::Result<()> {
        let mut have = self.buffer();
        let mut took = 0;
        while !have.is_empty() && !bufs.is_empty() {
            let n = have.read_vectored(bufs)?;
            took += n;
            IoSliceMut::advance_slices(&mut bufs, n);
        }
        self.consume(took);
        read_vectored_exact(self.get_mut(), bufs)
    }
}

/// Reads one frame: returns the header and body.
fn read_frame(r: &mut impl FrameRead) -> io::Result<(Header, Body)> {
    read_frame_with(r, &mut |_| None)
}

/// Reads one frame, receiving a successful READ_OBJECTS reply into the sink `sink_for` gives for its request
/// id, if any (and if the reply has the sink's expected length).
fn read_frame_with(
    r: &mut impl FrameRead,
    sink_for: &mut dyn FnMut(u64) -> Option<Arc<dyn ObjectSink>>,
) -> io::Result<(Header, Body)> {
    let mut head = [0u8; 4 + HEADER_LEN];
    r.read_exact(&mut head)?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if !(HEADER_LEN..=MAX_FRAME).contains(&len) {
        return Err(invalid(format!("server sent a frame of {len} bytes")));
    }
    let h = Header::parse(&head[4..]).map_err(|e| invalid(e.msg))?;
    let payload = len - HEADER_LEN;
    if h.op == Op::ReadPages as u8 && h.status == Status::Ok as u8 && payload >= 4 {
        let mut n = [0u8; 4];
        r.read_exact(&mut n)?;
        let n = u32::from_le_bytes(n) as usize;
        let mut bits = vec![0u8; n.div_ceil(8)];
        if n > proto::MAX_BATCH || 4 + bits.len() > payload {
            return Err(invalid(format!("page reply of {payload} bytes cannot hold {n} pages")));
        }
        r.read_exact(&mut bits)?;
        let present: Vec<bool> = (0..n).map(|i| bits[i / 8] & (1 << (i % 8)) != 0).collect();
        let k = present.iter().filter(|&&p| p).count();
        if 4 + bits.len() + k * PAGE_SIZE != payload {
            return Err(invalid(format!("page reply of {payload} bytes does not match its {k} present pages")));
        }
        if k == n {
            // Every byte is overwritten: a spare buffer saves zeroing it (see `recycle_reply_buffer`).
            let mut data = reply_buffer(n * PAGE_SIZE);
            r.read_bulk(&mut data)?;
            return Ok((h, Body::Pages { present, data }));
        }
        let mut data = vec![0u8; n * PAGE_SIZE];
        for (i, _) in present.iter().enumerate().filter(|(_, &p)| p) {
            r.read_exact(&mut data[i * PAGE_SIZE..(i + 1) * PAGE_SIZE])?;
        }
        return Ok((h, Body::Pages { present, data }));
    }
    if h.op == Op::ReadObjects as u8 && h.status == Status::Ok as u8 {
        if let Some(sink) = sink_for(h.id) {
            if let Some(body) = read_objects_into(r, payload, &*sink)? {
                return Ok((h, body));
            }
        }
    }
    let mut body = reply_buffer(payload);
    r.read_bulk(&mut body)?;
    Ok((h, Body::Bytes(body)))
}

/// Reads a READ_OBJECTS reply payload of `payload` bytes into `sink`, if it has the expected length and the sink
/// lends its destinations; `None` when nothing was read (the caller reads it the ordinary way). A reply that
/// differs from the expected one only in its ids or lengths comes back as ordinary bytes.
fn read_objects_into(r: &mut impl FrameRead, payload: usize, sink: &dyn ObjectSink) -> io::Result<Option<Body>> {
    const ENTRY: usize = 12;
    let exp = sink.expected();
    let want = 4 + exp.iter().map(|&(_, l)| ENTRY + l as usize).sum::<usize>();
    if exp.is_empty() || want != payload {
        return Ok(None);
    }
    // Count and entry headers land here, values in the sink's destinations: count, head 0, value 0, head 1, …
    let mut heads = vec![0u8; 4 + ENTRY * exp.len()];
    let mut linear: Option<Vec<u8>> = None;
    let res = sink.receive(&mut |dests: &mut [&mut [u8]]| {
        if dests.len() != exp.len() || dests.iter().zip(exp).any(|(d, &(_, l))| d.len() != l as usize) {
            return Err(invalid("object sink lent destinations of the wrong shape".into()));
        }
        {
            let (first, mut rest) = heads.split_at_mut(4 + ENTRY);
            let mut bufs = Vec::with_capacity(2 * dests.len());
            bufs.push(IoSliceMut::new(first));
            for (i, d) in dests.iter_mut().enumerate() {
                bufs.push(IoSliceMut::new(d));
                if i + 1 < exp.len() {
                    let (h, tail) = rest.split_at_mut(ENTRY);
                    bufs.push(IoSliceMut::new(h));
                    rest = tail;
                }
            }
            r.read_bulk_vectored(&mut bufs)?;
        }
        let count_ok = heads[..4] == u32::try_from(exp.len()).unwrap_or(u32::MAX).to_le_bytes();
        let entries_ok = exp.iter().enumerate().all(|(i, &(id, len))| {
            let h = &heads[4 + i * ENTRY..4 + (i + 1) * ENTRY];
            h[..8] == id.to_le_bytes() && h[8..] == len.to_le_bytes()
        });
        if count_ok && entries_ok {
            return Ok(true);
        }
        // Not the expected reply: give its bytes back in order for the ordinary decoder.
        let mut v = Vec::with_capacity(payload);
        v.extend_from_slice(&heads[..4]);
        for (i, d) in dests.iter().enumerate() {
            v.extend_from_slice(&heads[4 + i * ENTRY..4 + (i + 1) * ENTRY]);
            v.extend_from_slice(d);
        }
        linear = Some(v);
        Ok(false)
    });
    match res {
        None => Ok(None),
        Some(Ok(true)) => Ok(Some(Body::Placed)),
        Some(Ok(false)) => Ok(Some(Body::Bytes(linear.unwrap_or_default()))),
        Some(Err(e)) => Err(e),
    }
}

/// Bytes of the socket buffered at a time. Small: reading a frame's header fills the buffer with as much of
/// what follows as it holds, and a large reply's bytes that landed there are copied again on their way to their
/// destination (with 256 KiB, most of every 256 KiB object or page reply was); the rest is read straight from
/// the socket. 16 KiB still takes a burst of small replies in one system call.
const READ_BUFFER: usize = 16 << 10;

/// Reply bodies at least this large come from (and may go back to) the spare-buffer list.
const SPARE_MIN_BYTES: usize = 64 << 10;
/// Most spare buffers kept.
const SPARE_MAX: usize = 16;

/// Spare reply buffers, handed back with [`recycle_reply_buffer`]. A stream of large replies (a container scan's
/// prefetches: 256 KiB each, several in flight) otherwise allocates and frees a fresh buffer per reply, and the
/// allocator returns it to the kernel in between, so every reply paid for page faults and zeroed pages on top of
/// the one copy from the socket.
static SPARE: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

/// A buffer of `len` bytes for a reply body (a spare one when there is one big enough). Its contents are
/// arbitrary: the caller overwrites all of it.
fn reply_buffer(len: usize) -> Vec<u8> {
    if len >= SPARE_MIN_BYTES {
        let spare = SPARE.lock().ok().and_then(|mut l| {
            let i = l.iter().position(|b| b.capacity() >= len)?;
            Some(l.swap_remove(i))
        });
        if let Some(mut b) = spare {
            // Zeroes only what the last user truncated away (a few bytes for an objects reply).
            b.resize(len, 0);
            return b;
        }
    }
    vec![0u8; len]
}

/// Hands a reply's buffer (such as [`ObjBatch::data`](crate::ObjBatch::data) of a READ_OBJECTS reply, once its
/// values are copied out) back for a later reply to reuse. Small buffers, and any beyond a short list, are freed.
pub fn recycle_reply_buffer(buf: Vec<u8>) {
    if buf.capacity() < SPARE_MIN_BYTES || buf.capacity() > MAX_FRAME {
        return;
    }
    if let Ok(mut l) = SPARE.lock() {
        if l.len() < SPARE_MAX {
            l.push(buf);
        }
    }
}

fn body_bytes(b: Body) -> Vec<u8> {
    match b {
        Body::Bytes(v) => v,
        Body::Pages { .. } | Body::Placed => Vec::new(),
    }
}

fn finish(op: Op, h: &Header, b: Body, server: &str) -> Result<Reply, StoreError> {
    match b {
        Body::Pages { present, data } if op == Op::ReadPages => Ok(Reply::Pages { present, data }),
        Body::Pages { .. } => Err(StoreError::Protocol {
            server: server.to_string(),
            msg: format!("page data in reply to a {op:?} request"),
        }),
        Body::Placed if op == Op::ReadObjects => Ok(Reply::Placed),
        Body::Placed => Err(StoreError::Protocol {
            server: server.to_string(),
            msg: format!("placed objects in reply to a {op:?} request"),
        }),
        Body::Bytes(p) => reply_from_frame(op, h, p.into(), server),
    }
}

/// The client's session: its id and the key spaces it owns, re-announced on every new connection so a reconnect
/// to a restarted server re-establishes them.
#[derive(Debug)]
struct Lease {
    session: u64,
    grace_secs: u32,
    owned: Mutex<HashSet<(OwnKind, u64)>>,
}

impl Lease {
    /// Binds a fresh connection to the session: LEASE, then OWN for every owned key space, all in one write.
    fn bind(&self, s: &mut Stream, server: &str) -> Result<(), ConnectError> {
        let transient = |e: io::Error| ConnectError::Transient(format!("{server}: session: {e}"));
        let mut reqs = vec![Request::Lease { session: self.session, grace_secs: self.grace_secs }];
        reqs.extend(self.owned.lock().iter().map(|&(kind, id)| Request::Own { kind, id }));
        let mut buf = Vec::new();
        for (i, r) in reqs.iter().enumerate() {
            proto::encode_request(&mut buf, i as u64, r);
        }
        s.write_all(&buf).map_err(transient)?;
        for r in &reqs {
            let (h, p) = read_frame(s).map_err(transient)?;
            finish(r.op(), &h, p, server).map_err(ConnectError::Fatal)?;
        }
        Ok(())
    }
}

/// Opens a connection to `cfg.addr`, authenticates and binds it to the session. Returns the stream ready for
/// requests.
fn open(cfg: &ClientConfig, lease: Option<&Lease>) -> Result<Stream, ConnectError> {
    let server = cfg.addr.to_string();
    let transient = |e: io::Error| ConnectError::Transient(format!("{server}: {e}"));
    let stream = match &cfg.addr {
        Addr::Tcp(a) => {
            let addrs: Vec<_> = a.to_socket_addrs().map_err(transient)?.collect();
            let mut last = io::Error::new(io::ErrorKind::NotFound, "address resolves to nothing");
            let mut got = None;
            for sa in addrs {
                match TcpStream::connect_timeout(&sa, cfg.connect_timeout) {
                    Ok(s) => {
                        got = Some(s);
                        break;
                    }
                    Err(e) => last = e,
                }
            }
            let s = got.ok_or_else(|| transient(last))?;
            s.set_nodelay(true).map_err(transient)?;
            Stream::Tcp(s)
        }
        Addr::Unix(p) => Stream::Unix(UnixStream::connect(p).map_err(transient)?),
    };
    stream.set_timeouts(Some(cfg.connect_timeout)).map_err(transient)?;
    let mut s = stream;
    handshake(&mut s, &cfg.credential, &server)?;
    if let Some(l) = lease {
        l.bind(&mut s, &server)?;
    }
    s.set_timeouts(None).map_err(transient)?;
    Ok(s)
}

fn handshake(s: &mut Stream, cred: &Credential, server: &str) -> Result<(), ConnectError> {
    let transient = |e: io::Error| ConnectError::Transient(format!("{server}: handshake: {e}"));
    let mut buf = Vec::new();
    let f = proto::begin_frame(&mut buf, Op::Hello as u8, 0, 0);
    buf.extend_from_slice(proto::MAGIC);
    buf.extend_from_slice(&proto::VERSION.to_le_bytes());
    buf.push(u8::try_from(cred.tenant.len()).unwrap_or(u8::MAX));
    buf.extend_from_slice(cred.tenant.as_bytes());
    proto::end_frame(&mut buf, f);
    s.write_all(&buf).map_err(transient)?;
    let fatal = |status: Option<Status>, msg: String| {
        let server = server.to_string();
        ConnectError::Fatal(match status {
            Some(Status::AuthFailed) | Some(Status::Version) => StoreError::Auth { server, msg },
            _ => StoreError::Protocol { server, msg },
        })
    };
    let (h, p) = read_frame(s).map_err(transient)?;
    let p = body_bytes(p);
    if h.status != 0 {
        return Err(fatal(Status::from_u8(h.status), String::from_utf8_lossy(&p).into_owned()));
    }
    if h.op != Op::Challenge as u8 || p.len() != 2 + NONCE_LEN {
        return Err(fatal(None, "malformed challenge".into()));
    }
    let tag = auth::respond(&cred.secret, &p[2..], &cred.tenant);
    buf.clear();
    let f = proto::begin_frame(&mut buf, Op::Auth as u8, 0, 0);
    buf.extend_from_slice(&tag);
    proto::end_frame(&mut buf, f);
    s.write_all(&buf).map_err(transient)?;
    let (h, p) = read_frame(s).map_err(|e| {
        if matches!(e.kind(), io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset) {
            fatal(Some(Status::AuthFailed), "server closed the connection during authentication".into())
        } else {
            transient(e)
        }
    })?;
    let p = body_bytes(p);
    if h.status != 0 {
        return Err(fatal(Status::from_u8(h.status), String::from_utf8_lossy(&p).into_owned()));
    }
    if h.op != Op::AuthOk as u8 {
        return Err(fatal(None, format!("expected AUTH_OK, got opcode 0x{:02x}", h.op)));
    }
    Ok(())
}

/// Reader-side state of one connection, under one lock.
#[derive(Debug)]
struct Shared {
    /// Generation of the current socket; bumped on every reconnect.
    gen: u64,
    /// The read half, when nobody holds the reader role (None while disconnected or being read).
    reader: Option<BufReader<Stream>>,
    /// Whether a thread holds the reader role.
    reading: bool,
    /// Replies that arrived for requests whose waiter has not collected them.
    done: HashMap<u64, (Header, Body)>,
    /// Requests whose ticket was dropped unwaited: their replies are discarded.
    abandoned: HashSet<u64>,
    /// Requests written on this generation and not yet answered.
    outstanding: usize,
    /// Frames received so far (the drain thread watches it for progress).
    received: u64,
    /// The last reconnect of this generation failed: waiters report this instead of trying again.
    failed: Option<(u64, StoreError)>,
    /// Threads asleep in [`Ticket::wait`], by request id, each on its own condition variable: a reply wakes only
    /// its waiter, and a reader that leaves wakes one waiter to take the role over (one shared condition variable
    /// woke every waiter of the connection for every frame).
    waiters: HashMap<u64, Arc<Condvar>>,
}

impl Shared {
    /// Wakes every waiting thread (the connection changed: reconnected, failed, or a frame of an old generation).
    fn wake_all(&self) {
        for cv in self.waiters.values() {
            cv.notify_one();
        }
    }

    /// Wakes the waiter of request `id`, if it sleeps.
    fn wake(&self, id: u64) {
        if let Some(cv) = self.waiters.get(&id) {
            cv.notify_one();
        }
    }

    /// Wakes one waiter other than `except` to take the reader role over, if replies are still due.
    fn hand_over(&self, except: Option<u64>) {
        if self.outstanding == 0 || self.reading {
            return;
        }
        // A waiter whose reply is already filed would only collect it.
        let next = self.waiters.iter().find(|(id, _)| Some(**id) != except && !self.done.contains_key(*id));
        if let Some((_, cv)) = next {
            cv.notify_one();
        }
    }
}

/// Writer-side state.
#[derive(Debug)]
struct Writer {
    gen: u64,
    stream: Option<Stream>,
}

/// One pipelined connection with reconnect.
#[derive(Debug)]
struct Conn {
    cfg: Arc<ClientConfig>,
    lease: Option<Arc<Lease>>,
    server: String,
    writer: Mutex<Writer>,
    shared: Mutex<Shared>,
    next_id: AtomicU64,
    /// Sinks of READ_OBJECTS requests in flight, by request id (see [`FarStore::submit_into`]); the reader that
    /// reads the reply takes its sink out.
    sinks: Mutex<HashMap<u64, Arc<dyn ObjectSink>>>,
    /// Wakes the pool's drain thread when this connection gets requests outstanding.
    drain: Arc<DrainSignal>,
}

impl Conn {
    fn connect(
        cfg: Arc<ClientConfig>,
        lease: Option<Arc<Lease>>,
        drain: Arc<DrainSignal>,
    ) -> Result<Arc<Conn>, StoreError> {
        let server = cfg.addr.to_string();
        let conn = Arc::new(Conn {
            server,
            writer: Mutex::new(Writer { gen: 0, stream: None }),
            shared: Mutex::new(Shared {
                gen: 0,
                reader: None,
                reading: false,
                done: HashMap::new(),
                abandoned: HashSet::new(),
                outstanding: 0,
                received: 0,
                failed: None,
                waiters: HashMap::new(),
            }),
            next_id: AtomicU64::new(1),
            sinks: Mutex::new(HashMap::new()),
            drain,
            cfg,
            lease,
        });
        conn.reconnect(0, "initial connection")?;
        Ok(conn)
    }

    /// Replaces the socket of generation `failed` (no-op if someone already did), retrying with back-off.
    fn reconnect(&self, failed: u64, why: &str) -> Result<(), StoreError> {
        let mut w = self.writer.lock();
        if w.gen != failed {
            return Ok(());
        }
        if let Some(old) = w.stream.take() {
            old.shutdown();
        }
        if failed != 0 {
            tracing::warn!(server = %self.server, "connection lost ({why}); reconnecting");
        }
        let deadline = Instant::now() + self.cfg.reconnect_timeout;
        let mut delay = Duration::from_millis(5);
        let fail = |e: StoreError| {
            let mut sh = self.shared.lock();
            sh.reader = None;
            sh.failed = Some((failed, e.clone()));
            sh.wake_all();
            Err(e)
        };
        let stream = loop {
            match open(&self.cfg, self.lease.as_deref()) {
                Ok(s) => break s,
                Err(ConnectError::Fatal(e)) => return fail(e),
                Err(ConnectError::Transient(msg)) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return fail(StoreError::Gone {
                            server: self.server.clone(),
                            reason: format!("no connection for {:?}: {msg}", self.cfg.reconnect_timeout),
                        });
                    }
                    std::thread::sleep(delay.min(deadline - now));
                    delay = (delay * 2).min(Duration::from_millis(500));
                }
            }
        };
        let read_half = stream.try_clone().map_err(|e| StoreError::Gone {
            server: self.server.clone(),
            reason: format!("cannot clone the socket: {e}"),
        })?;
        w.gen = failed + 1;
        w.stream = Some(stream);
        let mut sh = self.shared.lock();
        sh.gen = w.gen;
        sh.reader = Some(BufReader::with_capacity(READ_BUFFER, read_half));
        sh.reading = false;
        sh.outstanding = 0;
        sh.failed = None;
        sh.wake_all();
        Ok(())
    }

    /// Writes frames on the current socket in as few system calls as it takes, reconnecting as needed. Returns
    /// the generation they went out on.
    fn send(&self, frames: &[&[u8]]) -> Result<u64, StoreError> {
        loop {
            let mut w = self.writer.lock();
            let gen = w.gen;
            let res = match w.stream.as_mut() {
                Some(s) => write_all_vectored(s, frames).map_err(|e| e.to_string()),
                None => Err("not connected".to_string()),
            };
            match res {
                Ok(()) => {
                    // Count it under the reader lock, before releasing the writer lock, so a reconnect cannot
                    // slip in between.
                    let mut sh = self.shared.lock();
                    if sh.gen == gen {
                        sh.outstanding += frames.len();
                        if sh.outstanding == frames.len() {
                            // Still under the lock the drain thread checks `outstanding` under (see `DrainSignal`).
                            self.drain.kick();
                        }
                    }
                    return Ok(gen);
                }
                Err(e) => {
                    drop(w);
                    // A failed write_all never delivered the whole frame, so re-sending is safe for any request.
                    self.reconnect(gen, &e)?;
                }
            }
        }
    }
}

fn write_all_vectored(s: &mut Stream, frames: &[&[u8]]) -> io::Result<()> {
    if let [one] = frames {
        return s.write_all(one);
    }
    let mut slices: Vec<io::IoSlice<'_>> = frames.iter().map(|f| io::IoSlice::new(f)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        // writev takes at most IOV_MAX (1024) slices at a time.
        let n = rest.len().min(1024);
        match s.write_vectored(&rest[..n]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => io::IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Shortest interval between the drain thread's checks of a pool (and the time a sender gets to read its reply
/// itself before the drain thread may).
const DRAIN_TICK: Duration = Duration::from_millis(2);
/// Longest interval between its checks while other threads keep the pool's connections moving.
const DRAIN_TICK_MAX: Duration = Duration::from_millis(32);

/// How senders wake a pool's drain thread, which sleeps while none of the pool's connections has requests
/// outstanding.
///
/// No wake-up is lost: the drain thread sets `sleeping` before it checks each connection's `outstanding` under
/// that connection's lock, and a sender that raises `outstanding` from zero reads `sleeping` under the same lock,
/// so either the drain thread sees the request or the sender sees `sleeping` (the lock orders the two). `sleeping`
/// is cleared, and `closed` set, under `lock`, where the drain thread checks both before it waits.
#[derive(Debug, Default)]
struct DrainSignal {
    sleeping: AtomicBool,
    closed: AtomicBool,
    lock: Mutex<()>,
    cv: Condvar,
}

impl DrainSignal {
    /// A connection has requests outstanding again: wakes the drain thread if it sleeps. Called under that
    /// connection's `shared` lock. Costs one load when the drain thread is awake.
    fn kick(&self) {
        if self.sleeping.load(SeqCst) {
            let _g = self.lock.lock();
            self.sleeping.store(false, SeqCst);
            self.cv.notify_one();
        }
    }

    /// The client is gone: the drain thread exits.
    fn close(&self) {
        let _g = self.lock.lock();
        self.closed.store(true, SeqCst);
        self.cv.notify_one();
    }
}

/// The pool's background thread: takes a connection's reader role when replies are outstanding on it, nobody
/// reads, nothing arrived for a whole tick, and a reply has arrived. While threads waiting for replies keep the
/// connections moving, the tick doubles up to [`DRAIN_TICK_MAX`]: a busy connection needs no drain, and a wake-up
/// every 2 ms was a few per cent of a miss-heavy load's CPU (and a preemption point beside CPU-bound processes;
/// a drain thread preempted while it holds a connection's reader role holds up every waiter of that connection).
/// It shrinks back to [`DRAIN_TICK`] when a connection stalls, and after the thread slept because no connection
/// had anything outstanding.
///
/// One thread serves the whole pool, so a connection costs no thread (see the module's "What a connection
/// costs"); it never blocks on one connection, since it reads only frames that have begun to arrive.
fn drain_loop(conns: Vec<Weak<Conn>>, signal: Arc<DrainSignal>) {
    crate::internal::mark_thread();
    let mut tick = DRAIN_TICK;
    // Per connection: its (frames received, generation) at the last check if requests were outstanding then.
    let mut last: Vec<Option<(u64, u64)>> = vec![None; conns.len()];
    loop {
        std::thread::sleep(tick);
        if signal.closed.load(SeqCst) {
            return;
        }
        let (mut busy, mut alive, mut stalled) = (false, false, false);
        for (conn, last) in conns.iter().zip(last.iter_mut()) {
            let Some(c) = conn.upgrade() else {
                *last = None;
                continue;
            };
            alive = true;
            let mut sh = c.shared.lock();
            if sh.outstanding == 0 {
                *last = None;
                continue;
            }
            busy = true;
            let state = (sh.received, sh.gen);
            // A burst that started since the last check gets a whole tick for its sender to read the reply
            // itself. One that made no progress for a whole tick: read what has arrived, one frame at a time.
            if *last == Some(state) {
                stalled = true;
                drain_arrived(&c, &mut sh);
            }
            *last = Some((sh.received, sh.gen)).filter(|_| sh.outstanding > 0);
        }
        if !alive {
            return;
        }
        tick = if stalled { DRAIN_TICK } else { (tick * 2).min(DRAIN_TICK_MAX) };
        if !busy {
            if sleep_until_kicked(&conns, &signal) {
                return;
            }
            tick = DRAIN_TICK;
        }
    }
}

/// Reads the frames that have arrived on a stalled connection nobody reads, until a waiter has a reply to
/// collect (it takes the role over) or nothing more has arrived.
fn drain_arrived(c: &Conn, sh: &mut parking_lot::MutexGuard<'_, Shared>) {
    while sh.outstanding > 0 && !sh.reading {
        let Some(rd) = sh.reader.as_ref() else { break };
        // A frame that has begun to arrive is read whole: the server writes frames whole, so its rest follows.
        if rd.buffer().is_empty() && !rd.get_ref().readable_now() {
            break;
        }
        let gen = sh.gen;
        if !read_one(c, sh, gen, None, None) {
            break;
        }
        // Let waiters take over as soon as there are any.
        if !sh.done.is_empty() {
            break;
        }
    }
    sh.hand_over(None);
}

/// Sleeps until a connection of the pool has requests outstanding; `true` if the client was dropped instead.
fn sleep_until_kicked(conns: &[Weak<Conn>], signal: &DrainSignal) -> bool {
    signal.sleeping.store(true, SeqCst);
    let any_outstanding = conns.iter().filter_map(Weak::upgrade).any(|c| c.shared.lock().outstanding > 0);
    let mut g = signal.lock.lock();
    if any_outstanding {
        signal.sleeping.store(false, SeqCst);
    }
    while signal.sleeping.load(SeqCst) && !signal.closed.load(SeqCst) {
        signal.cv.wait(&mut g);
    }
    signal.closed.load(SeqCst)
}

/// Holds the reader role for one frame. Returns `true` if a frame was read; the frame is filed in `done` (the
/// caller removes it if it is `mine`) and its waiter, if asleep, is woken. A reader whose own reply this was is
/// about to leave, so another waiter is woken to take the role over. On a read error the connection is
/// re-established (by this thread) and `false` returned. With `spin_until`, the socket is polled until then
/// before the read blocks (see [`Pending::wait_spinning`]).
fn read_one(
    c: &Conn,
    sh: &mut parking_lot::MutexGuard<'_, Shared>,
    gen: u64,
    mine: Option<u64>,
    spin_until: Option<Instant>,
) -> bool {
    let Some(mut rd) = sh.reader.take() else {
        return false;
    };
    sh.reading = true;
    let res = parking_lot::MutexGuard::unlocked(sh, || {
        if let Some(until) = spin_until {
            if rd.buffer().is_empty() {
                rd.get_ref().spin_until_readable(until);
            }
        }
        read_frame_with(&mut rd, &mut |id| c.sinks.lock().remove(&id))
    });
    if sh.gen == gen {
        sh.reading = false;
        sh.reader = Some(rd);
    }
    match res {
        Ok((h, payload)) if sh.gen == gen => {
            sh.outstanding = sh.outstanding.saturating_sub(1);
            sh.received += 1;
            let id = h.id;
            if !sh.abandoned.remove(&id) {
                sh.done.insert(id, (h, payload));
            }
            if Some(id) == mine {
                sh.hand_over(mine);
            } else {
                sh.wake(id);
            }
            true
        }
        Ok(_) => {
            sh.wake_all();
            false
        }
        Err(e) => {
            if sh.gen == gen {
                sh.reader = None;
                let why = e.to_string();
                parking_lot::MutexGuard::unlocked(sh, || {
                    // Errors surface to waiters when they try to re-send on a dead server.
                    let _ = c.reconnect(gen, &why);
                });
            }
            sh.wake_all();
            false
        }
    }
}

/// A request in flight on a [`Client`] connection.
#[derive(Debug)]
pub struct Ticket {
    conn: Arc<Conn>,
    id: u64,
    op: Op,
    gen: u64,
    /// The encoded request, kept for re-sending after a reconnect (idempotent requests only).
    frame: Option<Vec<u8>>,
    finished: bool,
    /// Submitted with an [`ObjectSink`] (registered in the connection's table until its reply is read).
    sink: bool,
}

impl Ticket {
    /// Waits for the reply; a thread that reads the connection itself polls it without sleeping until
    /// `spin_until`, if given, and then blocks.
    pub(crate) fn wait(mut self, spin_until: Option<Instant>) -> Result<Reply, StoreError> {
        let r = self.wait_inner(spin_until);
        self.finished = true;
        // A reply read the ordinary way (an error, an unexpected shape) left its sink behind.
        if self.sink {
            self.conn.sinks.lock().remove(&self.id);
        }
        r
    }

    fn wait_inner(&mut self, spin_until: Option<Instant>) -> Result<Reply, StoreError> {
        let c = self.conn.clone();
        let mut sh = c.shared.lock();
        loop {
            if let Some((h, payload)) = sh.done.remove(&self.id) {
                // Woken by a reader that may have left since: keep the role taken.
                sh.hand_over(Some(self.id));
                drop(sh);
                return finish(self.op, &h, payload, &c.server);
            }
            if sh.gen != self.gen {
                // The connection our request went out on is gone, and its reply with it.
                drop(sh);
                let Some(frame) = &self.frame else {
                    return Err(StoreError::Interrupted {
                        server: c.server.clone(),
                        op: self.op,
                        reason: "the connection was re-established".into(),
                    });
                };
                self.gen = c.send(&[frame])?;
                sh = c.shared.lock();
                continue;
            }
            if !sh.reading {
                if sh.reader.is_none() {
                    if let Some((g, e)) = &sh.failed {
                        if *g == sh.gen {
                            return Err(e.clone());
                        }
                    }
                    // Disconnected and nobody is reconnecting: do it ourselves.
                    let g = sh.gen;
                    drop(sh);
                    c.reconnect(g, "connection closed")?;
                    sh = c.shared.lock();
                    continue;
                }
                let g = sh.gen;
                read_one(&c, &mut sh, g, Some(self.id), spin_until);
                continue;
            }
            let cv = Arc::new(Condvar::new());
            sh.waiters.insert(self.id, Arc::clone(&cv));
            cv.wait(&mut sh);
            sh.waiters.remove(&self.id);
        }
    }

    pub(crate) fn is_ready(&self) -> bool {
        let sh = self.conn.shared.lock();
        sh.done.contains_key(&self.id) || sh.gen != self.gen
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.finished {
            if self.sink {
                self.conn.sinks.lock().remove(&self.id);
            }
            let mut sh = self.conn.shared.lock();
            if sh.done.remove(&self.id).is_none() && sh.gen == self.gen {
                sh.abandoned.insert(self.id);
            }
        }
    }
}

/// A pool of pipelined connections to one memd. Cheap to share (`Arc<Client>`); every method takes `&self`.
#[derive(Debug)]
pub struct Client {
    cfg: Arc<ClientConfig>,
    conns: Vec<Arc<Conn>>,
    lease: Option<Arc<Lease>>,
    drain: Arc<DrainSignal>,
}

thread_local! {
    static SLOT: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

impl Client {
    /// Connects and authenticates every connection of the pool. Fails with [`StoreError::Auth`] on a wrong
    /// token and [`StoreError::Gone`] when the server cannot be reached within the reconnect deadline.
    pub fn connect(cfg: ClientConfig) -> Result<Client, StoreError> {
        let cfg = Arc::new(cfg);
        let n = cfg.connections.max(1);
        let lease = cfg.session_grace.map(|g| {
            let grace_secs = u32::try_from(g.as_secs().max(1)).unwrap_or(u32::MAX).min(proto::MAX_GRACE_SECS);
            Arc::new(Lease { session: crate::far::fresh_space_id(), grace_secs, owned: Mutex::new(HashSet::new()) })
        });
        let drain = Arc::new(DrainSignal::default());
        let conns =
            (0..n).map(|_| Conn::connect(cfg.clone(), lease.clone(), drain.clone())).collect::<Result<Vec<_>, _>>()?;
        let weak = conns.iter().map(Arc::downgrade).collect();
        let signal = drain.clone();
        std::thread::Builder::new()
            .name("farmem-memd-drain".into())
            .spawn(move || drain_loop(weak, signal))
            .map_err(|e| StoreError::Invalid(format!("cannot spawn the client's drain thread: {e}")))?;
        Ok(Client { cfg, conns, lease, drain })
    }

    /// The configuration this client was built from.
    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    fn conn(&self) -> &Arc<Conn> {
        let slot = SLOT.with(|s| {
            if s.get() == usize::MAX {
                s.set(NEXT_SLOT.fetch_add(1, Relaxed));
            }
            s.get()
        });
        &self.conns[slot % self.conns.len()]
    }

    /// Opens a fresh connection and switches it to raw mode for benchmark baselines; see `PROTOCOL.md`.
    pub fn raw_stream(&self, mode: u8, a: u32, b: u32) -> Result<impl Read + Write, StoreError> {
        let gone = |e: String| StoreError::Gone { server: self.cfg.addr.to_string(), reason: e };
        let mut s = match open(&self.cfg, None) {
            Ok(s) => s,
            Err(ConnectError::Fatal(e)) => return Err(e),
            Err(ConnectError::Transient(m)) => return Err(gone(m)),
        };
        let mut buf = Vec::new();
        let f = proto::begin_frame(&mut buf, Op::Raw as u8, 0, 1);
        buf.push(mode);
        buf.extend_from_slice(&a.to_le_bytes());
        buf.extend_from_slice(&b.to_le_bytes());
        proto::end_frame(&mut buf, f);
        s.write_all(&buf).map_err(|e| gone(e.to_string()))?;
        let (h, p) = read_frame(&mut s).map_err(|e| gone(e.to_string()))?;
        finish(Op::Raw, &h, p, &self.cfg.addr.to_string())?;
        Ok(s)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.drain.close();
        for c in &self.conns {
            if let Some(s) = c.writer.lock().stream.take() {
                s.shutdown();
            }
        }
    }
}

impl FarStore for Client {
    fn submit(&self, req: Request) -> Result<Pending, StoreError> {
        Ok(self.submit_many(vec![req])?.pop().expect("one request in, one out"))
    }

    /// Writes every request in one system call (when they fit the socket buffer) on one connection.
    fn submit_many(&self, reqs: Vec<Request>) -> Result<Vec<Pending>, StoreError> {
        for r in &reqs {
            r.validate().map_err(|e| StoreError::Invalid(e.msg))?;
            if let Some(l) = &self.lease {
                let key = match *r {
                    Request::DropRegion { region } => (OwnKind::Region, region),
                    Request::DropObjects { ds } => (OwnKind::Objects, ds),
                    Request::Destruct { ds } => (OwnKind::Instance, ds),
                    _ => continue,
                };
                l.owned.lock().remove(&key);
            }
        }
        let conn = self.conn();
        let frames: Vec<(u64, Op, Vec<u8>)> = reqs
            .iter()
            .map(|req| {
                let id = conn.next_id.fetch_add(1, Relaxed);
                let mut frame = Vec::new();
                proto::encode_request(&mut frame, id, req);
                (id, req.op(), frame)
            })
            .collect();
        let slices: Vec<&[u8]> = frames.iter().map(|f| f.2.as_slice()).collect();
        let gen = conn.send(&slices)?;
        Ok(frames
            .into_iter()
            .map(|(id, op, frame)| {
                let frame = op.is_idempotent().then_some(frame);
                Pending(PendingInner::Remote(Ticket {
                    conn: conn.clone(),
                    id,
                    op,
                    gen,
                    frame,
                    finished: false,
                    sink: false,
                }))
            })
            .collect())
    }

    /// Registers `sink` under the request's id before sending it, so that whichever thread reads the reply
    /// receives the values into it.
    fn submit_into(&self, req: Request, sink: Arc<dyn ObjectSink>) -> Result<Pending, StoreError> {
        if !matches!(req, Request::ReadObjects { .. }) {
            return self.submit(req);
        }
        req.validate().map_err(|e| StoreError::Invalid(e.msg))?;
        let conn = self.conn();
        let id = conn.next_id.fetch_add(1, Relaxed);
        let mut frame = Vec::new();
        proto::encode_request(&mut frame, id, &req);
        conn.sinks.lock().insert(id, sink);
        let gen = match conn.send(&[&frame]) {
            Ok(g) => g,
            Err(e) => {
                conn.sinks.lock().remove(&id);
                return Err(e);
            }
        };
        let op = req.op();
        Ok(Pending(PendingInner::Remote(Ticket {
            conn: conn.clone(),
            id,
            op,
            gen,
            frame: Some(frame),
            finished: false,
            sink: true,
        })))
    }

    fn describe(&self) -> String {
        self.cfg.addr.to_string()
    }

    fn own(&self, kind: OwnKind, id: u64) -> Result<(), StoreError> {
        let Some(l) = &self.lease else { return Ok(()) };
        // Remember it first: a connection opened from now on announces it even if this request is lost.
        l.owned.lock().insert((kind, id));
        self.call(Request::Own { kind, id }).map(|_| ())
    }
}
