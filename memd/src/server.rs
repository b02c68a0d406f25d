//! The memd server: tokio, TCP or Unix socket, one task per connection.
//!
//! A connection task owns its socket. It reads into a buffer, executes every complete frame in it against the
//! [`Engine`] (memory operations take microseconds, so they run inline), appends the replies to one output buffer,
//! and writes that buffer when the input runs dry — a burst of pipelined requests costs one vectored `write`, and
//! the pages and large objects a read returns go from the store to the socket with no copy in between
//! ([`OutBuf`]). COMPUTE runs
//! offloaded code of unknown cost, so it goes to the blocking pool and its reply is written whenever it finishes:
//! replies may overtake each other, which is why every frame carries the request id.
//!
//! Bad input never takes the server down: an undecodable payload or unknown opcode gets an error frame and the
//! connection goes on; a frame over the size limit, a short header or a failed handshake gets an error frame and
//! the connection is closed (its framing can no longer be trusted). A client that stops reading its replies only
//! stalls its own task (the socket's send buffer fills and the task stops reading); after
//! [`ServerConfig::write_stall`] without progress it is disconnected.

use crate::auth;
use crate::config::{Addr, Credential};
use crate::offload::Registry;
use crate::outbuf::{OutBuf, MAX_IOV};
use crate::proto::{self, Header, Op, RequestView, Status, HEADER_LEN, MAX_FRAME, NONCE_LEN};
use crate::session::Sessions;
use crate::store::{Engine, Tenant};
use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, oneshot};

/// What a server needs to run.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where to listen (`127.0.0.1:0` picks a free port).
    pub listen: Addr,
    /// Bytes of values the server may hold.
    pub capacity: u64,
    /// Accepted credentials (one per tenant).
    pub tokens: Vec<Credential>,
    /// Offloadable data-structure types.
    pub registry: Registry,
    /// Time allowed for the handshake.
    pub handshake_timeout: Duration,
    /// A connection whose replies make no progress for this long is closed.
    pub write_stall: Duration,
    /// Tokio worker threads.
    pub workers: usize,
}

impl ServerConfig {
    /// Loopback on a free port, with the built-in offloadable types.
    pub fn loopback(capacity: u64, tokens: Vec<Credential>) -> ServerConfig {
        ServerConfig {
            listen: Addr::Tcp("127.0.0.1:0".into()),
            capacity,
            tokens,
            registry: crate::offload::builtin(),
            handshake_timeout: Duration::from_secs(10),
            write_stall: Duration::from_secs(60),
            workers: 2,
        }
    }
}

/// A server running on its own threads; dropping it stops it.
#[derive(Debug)]
pub struct RunningServer {
    addr: Addr,
    engine: Arc<Engine>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningServer {
    /// The address it listens on (with the real port when `:0` was asked for).
    pub fn addr(&self) -> &Addr {
        &self.addr
    }
    /// Its storage engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }
    /// Stops accepting, closes every connection and waits for the server threads to finish.
    pub fn stop(mut self) {
        self.shutdown();
    }
    /// Blocks until the server stops (after a signal, if it was started with [`serve_until_signal`]).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
    fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Addr::Unix(p) = &self.addr {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Binds and starts a server on background threads.
pub fn start(cfg: ServerConfig) -> io::Result<RunningServer> {
    start_inner(cfg, false)
}

/// Binds and starts a server that also stops on SIGTERM or SIGINT; [`RunningServer::join`] waits for that.
pub fn serve_until_signal(cfg: ServerConfig) -> io::Result<RunningServer> {
    start_inner(cfg, true)
}

fn start_inner(cfg: ServerConfig, signals: bool) -> io::Result<RunningServer> {
    if cfg.tokens.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no credentials: the server would accept nobody"));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.workers.max(1))
        .thread_name("memd")
        .on_thread_start(crate::internal::mark_thread)
        .enable_all()
        .build()?;
    let (listener, addr) = rt.block_on(async {
        match &cfg.listen {
            Addr::Tcp(a) => {
                let l = TcpListener::bind(a).await?;
                let local = l.local_addr()?;
                Ok::<_, io::Error>((Listener::Tcp(l), Addr::Tcp(local.to_string())))
            }
            Addr::Unix(p) => {
                if p.exists() {
                    // A stale socket from a crashed server refuses connections; a live one accepts them.
                    if std::os::unix::net::UnixStream::connect(p).is_ok() {
                        return Err(io::Error::new(
                            io::ErrorKind::AddrInUse,
                            format!("{} is in use by a running server", p.display()),
                        ));
                    }
                    std::fs::remove_file(p)?;
                }
                Ok((Listener::Unix(UnixListener::bind(p)?), Addr::Unix(p.clone())))
            }
        }
    })?;
    // The handlers are in place before the caller learns the address (and, say, prints it for a supervisor that
    // may signal at once): a SIGTERM from then on stops the server cleanly instead of killing it.
    let signals = if signals {
        use tokio::signal::unix::{signal, SignalKind};
        let _rt = rt.enter();
        let installed = signal(SignalKind::terminate()).and_then(|t| Ok((t, signal(SignalKind::interrupt())?)));
        Some(
            installed
                .map_err(|e| io::Error::new(e.kind(), format!("cannot install the SIGTERM/SIGINT handlers: {e}")))?,
        )
    } else {
        None
    };
    let engine = Arc::new(Engine::new(cfg.capacity, cfg.registry.clone()));
    let secrets: HashMap<String, Vec<u8>> = cfg.tokens.iter().map(|c| (c.tenant.clone(), c.secret.clone())).collect();
    let ctx = Arc::new(Ctx { engine: engine.clone(), secrets, cfg, sessions: Arc::new(Sessions::new()) });
    let (stop_tx, stop_rx) = oneshot::channel();
    let thread = std::thread::Builder::new().name("memd-main".into()).spawn(move || {
        crate::internal::mark_thread();
        rt.block_on(accept_loop(ctx, listener, stop_rx, signals));
        rt.shutdown_timeout(Duration::from_secs(2));
    })?;
    Ok(RunningServer { addr, engine, stop: Some(stop_tx), thread: Some(thread) })
}

struct Ctx {
    engine: Arc<Engine>,
    secrets: HashMap<String, Vec<u8>>,
    cfg: ServerConfig,
    sessions: Arc<Sessions>,
}

/// SIGTERM and SIGINT, as installed by [`serve_until_signal`].
type Signals = (tokio::signal::unix::Signal, tokio::signal::unix::Signal);

async fn stop_signal(signals: Option<Signals>) {
    let Some((mut term, mut int)) = signals else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("signal received; stopping");
}

async fn accept_loop(ctx: Arc<Ctx>, listener: Listener, mut stop: oneshot::Receiver<()>, signals: Option<Signals>) {
    let sig = stop_signal(signals);
    tokio::pin!(sig);
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => return,
            _ = &mut sig => return,
            a = accept(&listener) => a,
        };
        match accepted {
            Ok(Conn::Tcp(s)) => {
                let _ = s.set_nodelay(true);
                tokio::spawn(connection(ctx.clone(), s));
            }
            Ok(Conn::Unix(s)) => {
                tokio::spawn(connection(ctx.clone(), s));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

enum Conn {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(l: &Listener) -> io::Result<Conn> {
    match l {
        Listener::Tcp(l) => l.accept().await.map(|(s, _)| Conn::Tcp(s)),
        Listener::Unix(l) => l.accept().await.map(|(s, _)| Conn::Unix(s)),
    }
}

/// Why a connection ends.
#[derive(Debug)]
enum End {
    /// The peer closed it or an I/O error occurred.
    Io(io::Error),
    /// We sent an error frame and close.
    Protocol,
}

impl From<io::Error> for End {
    fn from(e: io::Error) -> Self {
        End::Io(e)
    }
}

/// Reads one whole frame (handshake phase only: nothing else is pipelined yet).
async fn read_frame_exact<S: AsyncRead + Unpin>(s: &mut S) -> io::Result<(Header, Vec<u8>)> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if !(HEADER_LEN..=1024).contains(&len) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("handshake frame of {len} bytes")));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await?;
    let h = Header::parse(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.msg))?;
    body.drain(..HEADER_LEN);
    Ok((h, body))
}

async fn send_error<S: AsyncWrite + Unpin>(s: &mut S, op: u8, id: u64, st: Status, msg: &str) -> End {
    let mut b = Vec::new();
    proto::error_frame(&mut b, op, id, st, msg);
    let _ = s.write_all(&b).await;
    let _ = s.shutdown().await;
    End::Protocol
}

/// Runs the handshake; returns the authenticated tenant.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(ctx: &Ctx, s: &mut S) -> Result<Arc<Tenant>, End> {
    let (h, p) = match read_frame_exact(s).await {
        Ok(x) => x,
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            return Err(send_error(s, Op::Hello as u8, 0, Status::BadRequest, &e.to_string()).await)
        }
        Err(e) => return Err(End::Io(e)),
    };
    let mut r = proto::Reader::new(&p);
    let hello = (|| {
        if h.op != Op::Hello as u8 {
            return Err(format!("expected HELLO, got opcode 0x{:02x}", h.op));
        }
        let magic = r.bytes(8).map_err(|e| e.msg)?;
        if magic != proto::MAGIC {
            return Err("not a farmem client (bad magic)".to_string());
        }
        let version = r.u16().map_err(|e| e.msg)?;
        let n = r.u8().map_err(|e| e.msg)? as usize;
        let tenant = std::str::from_utf8(r.bytes(n).map_err(|e| e.msg)?).map_err(|_| "tenant is not UTF-8")?;
        Ok((version, tenant.to_string()))
    })();
    let (version, tenant) = match hello {
        Ok(x) => x,
        Err(m) => return Err(send_error(s, h.op, h.id, Status::BadRequest, &m).await),
    };
    if version != proto::VERSION {
        let m = format!("server speaks protocol version {}, client {version}", proto::VERSION);
        return Err(send_error(s, h.op, h.id, Status::Version, &m).await);
    }
    let nonce = auth::nonce();
    let mut b = Vec::new();
    let f = proto::begin_frame(&mut b, Op::Challenge as u8, 0, h.id);
    b.extend_from_slice(&proto::VERSION.to_le_bytes());
    b.extend_from_slice(&nonce);
    proto::end_frame(&mut b, f);
    s.write_all(&b).await?;
    let (h, p) = match read_frame_exact(s).await {
        Ok(x) => x,
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            return Err(send_error(s, Op::Auth as u8, 0, Status::BadRequest, &e.to_string()).await)
        }
        Err(e) => return Err(End::Io(e)),
    };
    // Unknown tenant and wrong secret get the same answer: no way to probe for tenant names.
    let ok = h.op == Op::Auth as u8
        && p.len() == NONCE_LEN
        && ctx.secrets.get(&tenant).is_some_and(|secret| auth::verify(secret, &nonce, &tenant, &p));
    if !ok {
        tracing::info!(tenant, "authentication failed");
        return Err(send_error(s, Op::Auth as u8, h.id, Status::AuthFailed, "authentication failed").await);
    }
    b.clear();
    let f = proto::begin_frame(&mut b, Op::AuthOk as u8, 0, h.id);
    proto::end_frame(&mut b, f);
    s.write_all(&b).await?;
    Ok(ctx.engine.tenant(&tenant))
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin>(ctx: Arc<Ctx>, mut s: S) {
    let tenant = match tokio::time::timeout(ctx.cfg.handshake_timeout, handshake(&ctx, &mut s)).await {
        Ok(Ok(t)) => t,
        Ok(Err(_)) => return,
        Err(_) => {
            send_error(&mut s, Op::Hello as u8, 0, Status::AuthFailed, "handshake timed out").await;
            return;
        }
    };
    for c in [&ctx.engine.global, &tenant.counters] {
        c.connections.fetch_add(1, Relaxed);
    }
    let mut session = None;
    let end = serve(&ctx, &tenant, &mut s, &mut session).await;
    for c in [&ctx.engine.global, &tenant.counters] {
        c.connections.fetch_sub(1, Relaxed);
    }
    if let Some(id) = session {
        if let Some(ex) = ctx.sessions.detach(&tenant, id) {
            let (sessions, engine, name) = (ctx.sessions.clone(), ctx.engine.clone(), tenant.name().to_string());
            tokio::spawn(async move {
                tokio::time::sleep(ex.grace).await;
                if let Some(n) = sessions.expire(&engine, &name, id, ex.epoch) {
                    tracing::info!(
                        tenant = name,
                        "session {id:016x} had no connection for {:?}; dropped its {n} key spaces",
                        ex.grace
                    );
                }
            });
        }
    }
    if let Err(End::Io(e)) = end {
        if !matches!(
            e.kind(),
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
        ) {
            tracing::debug!(tenant = tenant.name(), "connection ended: {e}");
        }
    }
}

fn count_io(ctx: &Ctx, t: &Tenant, bytes_in: usize, bytes_out: usize) {
    for c in [&ctx.engine.global, &t.counters] {
        c.bytes_in.fetch_add(bytes_in as u64, Relaxed);
        c.bytes_out.fetch_add(bytes_out as u64, Relaxed);
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &Arc<Ctx>,
    tenant: &Arc<Tenant>,
    s: &mut S,
    session: &mut Option<u64>,
) -> Result<(), End> {
    let mut inbuf: Vec<u8> = Vec::with_capacity(256 * 1024);
    let mut out = OutBuf::with_capacity(64 * 1024);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let mut in_flight = 0usize;
    loop {
        // Execute every complete frame in the buffer.
        let mut at = 0;
        while inbuf.len() - at >= 4 {
            let len = u32::from_le_bytes([inbuf[at], inbuf[at + 1], inbuf[at + 2], inbuf[at + 3]]) as usize;
            if len > MAX_FRAME {
                let m = format!("frame of {len} bytes exceeds the maximum of {MAX_FRAME}");
                write_out(s, &out).await?;
                return Err(send_error(s, 0, 0, Status::TooLarge, &m).await);
            }
            if len < HEADER_LEN {
                let m = format!("frame of {len} bytes is shorter than the {HEADER_LEN}-byte header");
                write_out(s, &out).await?;
                return Err(send_error(s, 0, 0, Status::BadRequest, &m).await);
            }
            if inbuf.len() - at - 4 < len {
                break;
            }
            let body = &inbuf[at + 4..at + 4 + len];
            at += 4 + len;
            let h = Header::parse(body).expect("length checked above");
            let before = out.len();
            match proto::decode_request(h.op, &body[HEADER_LEN..]) {
                Ok(RequestView::Raw { mode, a, b }) => {
                    let f = out.begin_frame(h.op, 0, h.id);
                    out.end_frame(f);
                    write_out(s, &out).await?;
                    if at != inbuf.len() {
                        return Err(send_error(s, h.op, h.id, Status::BadRequest, "data after RAW").await);
                    }
                    return raw_mode(s, mode, a as usize, b as usize).await.map_err(End::Io);
                }
                Ok(RequestView::Compute { .. }) => {
                    // Offloaded code may be slow: run it off the reactor and answer when it is done.
                    let (ctx2, t2, frame, tx) = (ctx.clone(), tenant.clone(), body.to_vec(), done_tx.clone());
                    in_flight += 1;
                    tokio::task::spawn_blocking(move || {
                        let mut reply = Vec::new();
                        match proto::decode_request(h.op, &frame[HEADER_LEN..]) {
                            Ok(v) => ctx2.engine.dispatch(&t2, h.id, h.op, &v, &mut reply),
                            Err(e) => proto::error_frame(&mut reply, h.op, h.id, e.status, &e.msg),
                        }
                        let _ = tx.send(reply);
                    });
                }
                Ok(RequestView::Lease { session: id, grace_secs }) => match *session {
                    Some(_) => {
                        proto::error_frame(out.bytes_mut(), h.op, h.id, Status::BadRequest, "connection has a session")
                    }
                    None => {
                        ctx.sessions.attach(tenant, id, grace_secs);
                        *session = Some(id);
                        let f = out.begin_frame(h.op, 0, h.id);
                        out.end_frame(f);
                    }
                },
                Ok(RequestView::Own { kind, id }) => match session.map(|sid| ctx.sessions.own(tenant, sid, kind, id)) {
                    Some(Ok(())) => {
                        let f = out.begin_frame(h.op, 0, h.id);
                        out.end_frame(f);
                    }
                    Some(Err(e)) => proto::error_frame(out.bytes_mut(), h.op, h.id, e.status, &e.msg),
                    None => proto::error_frame(out.bytes_mut(), h.op, h.id, Status::BadRequest, "OWN before LEASE"),
                },
                Ok(v) => {
                    ctx.engine.dispatch_into(tenant, h.id, h.op, &v, &mut out);
                    if let Some(sid) = *session {
                        ctx.sessions.forget(tenant, sid, &v);
                    }
                }
                Err(e) => {
                    tenant.counters.errors.fetch_add(1, Relaxed);
                    proto::error_frame(out.bytes_mut(), h.op, h.id, e.status, &e.msg)
                }
            }
            count_io(ctx, tenant, 4 + len, out.len() - before);
        }
        inbuf.drain(..at);
        if !out.is_empty() {
            write_timed(ctx, s, &out).await?;
            out.clear();
        }
        if inbuf.capacity() - inbuf.len() < 64 * 1024 {
            inbuf.reserve(256 * 1024);
        }
        tokio::select! {
            n = s.read_buf(&mut inbuf) => {
                if n? == 0 {
                    if inbuf.is_empty() && in_flight == 0 {
                        return Ok(());
                    }
                    if !inbuf.is_empty() {
                        let m = format!("connection closed inside a frame ({} bytes pending)", inbuf.len());
                        return Err(send_error(s, 0, 0, Status::BadRequest, &m).await);
                    }
                    // Half-closed with compute still running: finish those replies, then end.
                    while in_flight > 0 {
                        let Some(r) = done_rx.recv().await else { break };
                        in_flight -= 1;
                        count_io(ctx, tenant, 0, r.len());
                        out.extend_from_slice(&r);
                        write_timed(ctx, s, &out).await?;
                        out.clear();
                    }
                    return Ok(());
                }
            }
            Some(r) = done_rx.recv(), if in_flight > 0 => {
                in_flight -= 1;
                count_io(ctx, tenant, 0, r.len());
                out.extend_from_slice(&r);
            }
        }
    }
}

/// Writes all of `out` with vectored writes of at most [`MAX_IOV`] pieces each.
async fn write_out<S: AsyncWrite + Unpin>(s: &mut S, out: &OutBuf) -> io::Result<()> {
    let mut pieces = out.io_slices();
    let mut rest: &mut [IoSlice<'_>] = &mut pieces;
    while !rest.is_empty() {
        let k = rest.len().min(MAX_IOV);
        let n = s.write_vectored(&rest[..k]).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}

async fn write_timed<S: AsyncWrite + Unpin>(ctx: &Ctx, s: &mut S, out: &OutBuf) -> Result<(), End> {
    match tokio::time::timeout(ctx.cfg.write_stall, write_out(s, out)).await {
        Ok(r) => Ok(r?),
        Err(_) => {
            tracing::info!("client stopped reading its replies for {:?}; disconnecting", ctx.cfg.write_stall);
            Err(End::Protocol)
        }
    }
}

/// Raw byte modes that give benchmarks a same-address baseline: 1 echo (`a` bytes in, `b` bytes out, repeated),
/// 2 source (stream `a`-byte chunks until the client closes), 3 sink.
async fn raw_mode<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, mode: u8, a: usize, b: usize) -> io::Result<()> {
    match mode {
        1 => {
            let mut inb = vec![0u8; a.max(1)];
            let outb = vec![0x5au8; b];
            loop {
                if let Err(e) = s.read_exact(&mut inb[..a]).await {
                    return if e.kind() == io::ErrorKind::UnexpectedEof { Ok(()) } else { Err(e) };
                }
                s.write_all(&outb).await?;
            }
        }
        2 => {
            let chunk = vec![0xa5u8; a.max(1)];
            loop {
                if s.write_all(&chunk).await.is_err() {
                    return Ok(());
                }
            }
        }
        _ => {
            let mut sink = vec![0u8; 256 * 1024];
            while s.read(&mut sink).await? > 0 {}
            Ok(())
        }
    }
}
