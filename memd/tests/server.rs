//! memd against a live server on loopback: every op, pipelining, tenants, bad input, capacity, authentication,
//! reconnects, and the `memd` command.
#![allow(clippy::cast_possible_truncation, reason = "test data generators fold numbers into bytes on purpose")]

use farmem_memd::config::{Addr, Credential};
use farmem_memd::offload::{DsInstance, DsType, ObjectsView, OffloadError, Registry};
use farmem_memd::proto::{self, Header, Op, OwnKind, Status, HEADER_LEN, MAGIC, PAGE_SIZE, VERSION};
use farmem_memd::server::{self, ServerConfig};
use farmem_memd::testing::{with_gate, Gate, TestServer};
use farmem_memd::{Client, ClientConfig, FarStore, ObjBatch, Request, StoreError};
use proptest::prelude::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A test type: op 0 sleeps `input[0]` × 10 ms and echoes the input; op 1 sums the u64 objects 0..n of its ds.
struct Slow;
struct SlowInst;
impl DsType for Slow {
    fn construct(&self, _: &[u8]) -> Result<Box<dyn DsInstance>, OffloadError> {
        Ok(Box::new(SlowInst))
    }
}
impl DsInstance for SlowInst {
    fn compute(&mut self, op: u32, input: &[u8], objs: &mut ObjectsView<'_>) -> Result<Vec<u8>, OffloadError> {
        match op {
            0 => {
                std::thread::sleep(Duration::from_millis(10 * u64::from(*input.first().unwrap_or(&0))));
                Ok(input.to_vec())
            }
            1 => {
                let n = u64::from_le_bytes(input.try_into().map_err(|_| OffloadError::BadInput("want u64".into()))?);
                let mut sum = 0u64;
                for id in 0..n {
                    let v = objs.get(id).ok_or(OffloadError::MissingObject(id))?;
                    sum += u64::from_le_bytes(v[..8].try_into().unwrap());
                }
                Ok(sum.to_le_bytes().to_vec())
            }
            o => Err(OffloadError::UnknownOp(o)),
        }
    }
}

fn with_slow(cfg: &mut ServerConfig) {
    let mut r = Registry::new();
    r.register("slow", Arc::new(Slow));
    cfg.registry = r;
}

fn page(seed: u64) -> Vec<u8> {
    (0..PAGE_SIZE).map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64) % 251) as u8).collect()
}

fn exercise_every_op(c: &dyn FarStore) {
    c.ping().unwrap();
    let mut data = page(1);
    data.extend(page(2));
    c.write_pages(9, &[100, 200], &data).unwrap();
    let (present, got) = c.read_pages(9, &[200, 300, 100]).unwrap();
    assert_eq!(present, vec![true, false, true]);
    assert_eq!(&got[..PAGE_SIZE], &page(2)[..]);
    assert!(got[PAGE_SIZE..2 * PAGE_SIZE].iter().all(|&b| b == 0));
    assert_eq!(&got[2 * PAGE_SIZE..], &page(1)[..]);
    c.delete_pages(9, &[100]).unwrap();
    assert_eq!(c.read_pages(9, &[100, 200]).unwrap().0, vec![false, true]);
    c.drop_region(9).unwrap();
    assert_eq!(c.read_pages(9, &[200]).unwrap().0, vec![false]);

    let mut b = ObjBatch::new();
    b.push(1, b"one");
    b.push(2, &vec![2u8; proto::MAX_OBJECT]);
    b.push(3, &[3u8; 64]);
    c.write_objects(4, b).unwrap();
    let got = c.read_objects(4, &[3, 9, 1, 2]).unwrap();
    let v: Vec<_> = got.iter().map(|(id, v)| (id, v.map(<[u8]>::len))).collect();
    assert_eq!(v, vec![(3, Some(64)), (9, None), (1, Some(3)), (2, Some(proto::MAX_OBJECT))]);
    c.delete_objects(4, &[1]).unwrap();
    assert_eq!(c.read_object(4, 1).unwrap(), None);
    c.drop_objects(4).unwrap();
    assert_eq!(c.read_object(4, 3).unwrap(), None);

    c.construct(5, "slow", &[]).unwrap();
    for i in 0..4u64 {
        c.write_object(5, i, &(i * 10).to_le_bytes()).unwrap();
    }
    assert_eq!(c.compute(5, 1, &4u64.to_le_bytes()).unwrap(), 60u64.to_le_bytes());
    let e = c.compute(5, 7, &[]).unwrap_err();
    assert!(matches!(e, StoreError::Rejected { status: Status::ComputeFailed, .. }), "{e}");
    assert!(e.to_string().contains("operation 7"), "{e}");
    let e = c.compute(5, 1, &9u64.to_le_bytes()).unwrap_err();
    assert!(e.to_string().contains("object 4 is missing"), "{e}");
    c.destruct(5).unwrap();
    assert_eq!(c.read_object(5, 0).unwrap(), None, "destruct drops the instance's objects");
    let e = c.construct(6, "nope", &[]).unwrap_err();
    assert!(matches!(e, StoreError::Rejected { status: Status::UnknownType, .. }), "{e}");
    assert!(e.to_string().contains("slow"), "the error lists the known types: {e}");
    let stats = c.stats().unwrap();
    assert!(stats.iter().any(|(k, v)| k == "tenant.ops.write" && *v >= 3), "{stats:?}");
}

#[test]
fn every_op_round_trips_over_tcp() {
    let s = TestServer::start_with(with_slow, 1 << 30);
    exercise_every_op(&s.client());
    assert_eq!(s.server().engine().used(), 0, "everything written was deleted again");
}

#[test]
fn every_op_round_trips_over_a_unix_socket() {
    let dir = farmem_memd::testing::private_dir();
    let path = dir.join("memd.sock");
    let s = TestServer::start_with(
        |c| {
            with_slow(c);
            c.listen = Addr::Unix(path.clone());
        },
        1 << 30,
    );
    assert_eq!(s.addr(), &Addr::Unix(path.clone()));
    exercise_every_op(&s.client());
    drop(s);
    assert!(!path.exists(), "the socket file is removed when the server stops");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_in_process_store_behaves_the_same() {
    let mut r = Registry::new();
    r.register("slow", Arc::new(Slow));
    exercise_every_op(&farmem_memd::MemStore::with_registry(1 << 30, r));
}

#[test]
fn out_of_order_replies_reach_the_right_caller() {
    let gate = Arc::new(Gate::default());
    let s = TestServer::start_with(with_gate(&gate), 1 << 30);
    let mut cfg = s.client_config();
    cfg.connections = 1;
    let c = Client::connect(cfg).unwrap();
    c.construct(1, "gated", &[]).unwrap();
    c.write_pages(1, &[0], &page(7)).unwrap();
    // A compute that cannot finish until the gate opens, then reads on the same connection: the reads are
    // answered while it is still running (they cannot wait for it: it ends only after they are all in).
    let slow = c.submit(Request::Compute { ds: 1, op: 0, input: vec![30, 1, 2] }).unwrap();
    gate.wait_entered();
    let fast: Vec<_> = (0..10).map(|_| c.submit(Request::ReadPages { region: 1, pages: vec![0] }).unwrap()).collect();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for f in fast {
            match f.wait().unwrap() {
                farmem_memd::Reply::Pages { present, data } => {
                    assert_eq!(present, vec![true]);
                    assert_eq!(data, page(7));
                }
                r => panic!("{r:?}"),
            }
        }
        let _ = tx.send(());
    });
    // A liveness bound, not a speed one: reads stuck behind the compute would never be answered.
    let answered = rx.recv_timeout(Duration::from_secs(60));
    assert!(!slow.is_ready(), "the compute finished before its gate opened");
    gate.open();
    reader.join().unwrap();
    assert!(answered.is_ok(), "reads waited for the compute");
    assert_eq!(slow.wait().unwrap(), farmem_memd::Reply::Output(vec![30, 1, 2]));
}

#[test]
fn many_threads_and_tenants_at_once() {
    let alice = Credential { tenant: "alice".into(), secret: b"alice-secret-0123456789".to_vec() };
    let bob = Credential { tenant: "bob".into(), secret: b"bob-secret-0123456789ab".to_vec() };
    let srv = server::start(ServerConfig::loopback(1 << 30, vec![alice.clone(), bob.clone()])).unwrap();
    let connect = |cred: &Credential| {
        let mut cfg = ClientConfig::new(srv.addr().clone(), cred.clone());
        cfg.connections = 2;
        Arc::new(Client::connect(cfg).unwrap())
    };
    let (a, b) = (connect(&alice), connect(&bob));
    std::thread::scope(|sc| {
        for (t, c) in [(0u64, &a), (1, &a), (2, &b), (3, &b)] {
            sc.spawn(move || {
                let tag = if t < 2 { 0xAAu8 } else { 0xBB };
                for i in 0..200u64 {
                    let p = t * 1000 + i;
                    let mut d = page(p);
                    d[0] = tag;
                    // Both tenants use the same region and page numbers.
                    let w = c.submit(Request::WritePages { region: 1, pages: vec![p % 300], data: d.clone() }).unwrap();
                    let r = c.submit(Request::ReadPages { region: 1, pages: vec![p % 300] }).unwrap();
                    w.wait().unwrap();
                    match r.wait().unwrap() {
                        farmem_memd::Reply::Pages { present, data } => {
                            assert!(present[0]);
                            assert_eq!(data[0], tag, "a tenant read another tenant's page");
                        }
                        other => panic!("{other:?}"),
                    }
                }
            });
        }
    });
    // Bob dropping the region leaves Alice's copy alone.
    b.drop_region(1).unwrap();
    assert!(!b.read_pages(1, &[0]).unwrap().0[0]);
    let (present, data) = a.read_pages(1, &[0]).unwrap();
    assert!(present[0] && data[0] == 0xAA);
    srv.stop();
}

/// A value that says which key and which write it is: 8 bytes of key, 8 of round, then the round's byte.
fn stamped(key: u64, round: u64, len: usize) -> Vec<u8> {
    let mut v = vec![(round % 251) as u8; len];
    v[..8].copy_from_slice(&key.to_le_bytes());
    v[8..16].copy_from_slice(&round.to_le_bytes());
    v
}

/// Checks a value read back: whole (one write's bytes throughout), of the right key, never older than the last
/// value seen of it, which it then updates.
fn check_stamped(key: u64, v: &[u8], seen: &mut u64) {
    assert_eq!(u64::from_le_bytes(v[..8].try_into().unwrap()), key, "a reply put a value in the wrong place");
    let round = u64::from_le_bytes(v[8..16].try_into().unwrap());
    assert!(v[16..].iter().all(|&b| b == (round % 251) as u8), "a reply mixed two writes of key {key}");
    assert!(round >= *seen, "key {key} went back from write {seen} to {round}");
    *seen = round;
}

#[test]
fn replies_never_mix_old_and_new_bytes_of_a_value() {
    const PAGES: u64 = 48;
    const OBJS: u64 = 12;
    let s = TestServer::start(1 << 30);
    let (writer, reader) = (s.client(), s.client());
    let obj_len = |id: u64, round: u64| [4096, 3000, 2048, 2047, 100][((id + round) % 5) as usize];
    let done = std::sync::atomic::AtomicBool::new(false);
    let write_round = |round: u64| {
        let pages: Vec<u64> = (0..PAGES).collect();
        let data: Vec<u8> = pages.iter().flat_map(|&p| stamped(p, round, PAGE_SIZE)).collect();
        let mut batch = ObjBatch::new();
        for id in 0..OBJS {
            batch.push(id, &stamped(id, round, obj_len(id, round)));
        }
        let w = writer.submit(Request::WritePages { region: 4, pages, data }).unwrap();
        writer.write_objects(5, batch).unwrap();
        w.wait().unwrap();
    };
    // Every key exists before the reads start: a batch is stored shard by shard (a read racing the first write
    // may see some of its pages and not others), but an overwrite never makes a stored value vanish.
    write_round(1);
    std::thread::scope(|sc| {
        sc.spawn(|| {
            for round in 2..=300u64 {
                write_round(round);
            }
            done.store(true, std::sync::atomic::Ordering::Release);
        });
        let (mut seen_pages, mut seen_objs) = (vec![0u64; PAGES as usize], vec![0u64; OBJS as usize]);
        let mut reads = 0;
        while !done.load(std::sync::atomic::Ordering::Acquire) || reads < 20 {
            reads += 1;
            // Several reads in flight at once, so that replies queue up in the server's output together.
            let reqs = vec![
                Request::ReadPages { region: 4, pages: (0..PAGES).collect() },
                Request::ReadObjects { ds: 5, ids: (0..OBJS).collect() },
                Request::ReadPages { region: 4, pages: (0..PAGES).rev().collect() },
            ];
            for (i, p) in reader.submit_many(reqs).unwrap().into_iter().enumerate() {
                match p.wait().unwrap() {
                    farmem_memd::Reply::Pages { present, data } => {
                        assert!(present.iter().all(|&x| x), "a stored page vanished while it was overwritten");
                        for (k, v) in data.chunks_exact(PAGE_SIZE).enumerate() {
                            let key = if i == 0 { k as u64 } else { PAGES - 1 - k as u64 };
                            // The reversed read sees pages in another order: keep it out of the ordering check.
                            let mut seen = if i == 0 { seen_pages[key as usize] } else { 0 };
                            check_stamped(key, v, &mut seen);
                            if i == 0 {
                                seen_pages[key as usize] = seen;
                            }
                        }
                    }
                    farmem_memd::Reply::Objects(b) => {
                        for (id, v) in b.iter() {
                            let v = v.unwrap_or_else(|| panic!("object {id} vanished while it was overwritten"));
                            check_stamped(id, v, &mut seen_objs[id as usize]);
                            assert_eq!(v.len(), obj_len(id, seen_objs[id as usize]), "object {id} has a wrong length");
                        }
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
    });
}

#[test]
fn capacity_is_enforced_and_nothing_partial_is_stored() {
    let s = TestServer::start(8 * PAGE_SIZE as u64);
    let c = s.client();
    let data: Vec<u8> = (0..6).flat_map(page).collect();
    c.write_pages(1, &[0, 1, 2, 3, 4, 5], &data).unwrap();
    let e = c.write_pages(1, &[10, 11, 12], &data[..3 * PAGE_SIZE]).unwrap_err();
    assert!(matches!(e, StoreError::NoSpace(_)), "{e}");
    assert!(e.to_string().contains("capacity"), "{e}");
    assert_eq!(c.read_pages(1, &[10, 11, 12]).unwrap().0, vec![false; 3], "a refused batch stores nothing");
    let mut b = ObjBatch::new();
    b.push(1, &[1; 100]);
    b.push(2, &vec![2; 3 * PAGE_SIZE]);
    assert!(matches!(c.write_objects(1, b), Err(StoreError::NoSpace(_))));
    assert_eq!(c.read_object(1, 1).unwrap(), None);
    // Overwrites of stored pages still work, and the old data is intact.
    c.write_pages(1, &[0], &page(99)).unwrap();
    let (_, got) = c.read_pages(1, &[0, 5]).unwrap();
    assert_eq!(&got[..PAGE_SIZE], &page(99)[..]);
    assert_eq!(&got[PAGE_SIZE..], &page(5)[..]);
    c.delete_pages(1, &[0, 1, 2]).unwrap();
    c.write_pages(1, &[10, 11, 12], &data[..3 * PAGE_SIZE]).unwrap();
    c.ping().unwrap();
}

// ---- raw-socket helpers for bad input ----

fn tcp(s: &TestServer) -> TcpStream {
    let Addr::Tcp(a) = s.addr() else { panic!("tcp test server") };
    let t = TcpStream::connect(a).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    t
}

fn frame(op: u8, id: u64, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    let f = proto::begin_frame(&mut b, op, 0, id);
    b.extend_from_slice(payload);
    proto::end_frame(&mut b, f);
    b
}

fn read_frame(t: &mut TcpStream) -> std::io::Result<(Header, Vec<u8>)> {
    let mut len = [0u8; 4];
    t.read_exact(&mut len)?;
    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
    t.read_exact(&mut body)?;
    Ok((Header::parse(&body).unwrap(), body[HEADER_LEN..].to_vec()))
}

fn hello(tenant: &str, version: u16) -> Vec<u8> {
    let mut p = MAGIC.to_vec();
    p.extend_from_slice(&version.to_le_bytes());
    p.push(tenant.len() as u8);
    p.extend_from_slice(tenant.as_bytes());
    frame(Op::Hello as u8, 0, &p)
}

/// Completes a handshake by hand; returns the socket and the AUTH frame that was sent.
fn authed(s: &TestServer) -> (TcpStream, Vec<u8>) {
    let mut t = tcp(s);
    let cred = s.credential();
    t.write_all(&hello(&cred.tenant, VERSION)).unwrap();
    let (h, p) = read_frame(&mut t).unwrap();
    assert_eq!(h.op, Op::Challenge as u8);
    let tag = farmem_memd::auth::respond(&cred.secret, &p[2..], &cred.tenant);
    let auth = frame(Op::Auth as u8, 0, &tag);
    t.write_all(&auth).unwrap();
    let (h, _) = read_frame(&mut t).unwrap();
    assert_eq!(h.op, Op::AuthOk as u8);
    (t, auth)
}

fn closed(t: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(t.read(&mut b), Ok(0) | Err(_))
}

#[test]
fn bad_frames_get_errors_and_the_server_keeps_serving() {
    let s = TestServer::start(1 << 30);
    let good = s.client();

    // Unknown opcode: error frame, connection stays usable.
    let (mut t, _) = authed(&s);
    t.write_all(&frame(0x77, 5, b"xyz")).unwrap();
    let (h, p) = read_frame(&mut t).unwrap();
    assert_eq!((h.id, Status::from_u8(h.status)), (5, Some(Status::UnknownOp)));
    assert!(String::from_utf8_lossy(&p).contains("0x77"));
    // A payload that does not decode: error frame, connection stays usable.
    t.write_all(&frame(Op::ReadPages as u8, 6, &[1, 2, 3])).unwrap();
    let (h, p) = read_frame(&mut t).unwrap();
    assert_eq!((h.id, Status::from_u8(h.status)), (6, Some(Status::BadRequest)));
    assert!(String::from_utf8_lossy(&p).contains("truncated"), "{}", String::from_utf8_lossy(&p));
    t.write_all(&frame(Op::Ping as u8, 7, &[])).unwrap();
    assert_eq!(read_frame(&mut t).unwrap().0.status, 0);
    // A batch count that lies about its size.
    let mut p = 1u64.to_le_bytes().to_vec();
    p.extend_from_slice(&1_000_000u32.to_le_bytes());
    t.write_all(&frame(Op::ReadPages as u8, 8, &p)).unwrap();
    assert_eq!(Status::from_u8(read_frame(&mut t).unwrap().0.status), Some(Status::TooLarge));

    // Length over the maximum: error frame, then closed.
    let (mut t, _) = authed(&s);
    t.write_all(&u32::MAX.to_le_bytes()).unwrap();
    let (h, p) = read_frame(&mut t).unwrap();
    assert_eq!(Status::from_u8(h.status), Some(Status::TooLarge), "{}", String::from_utf8_lossy(&p));
    assert!(closed(&mut t));

    // Length shorter than a header: error frame, then closed.
    let (mut t, _) = authed(&s);
    t.write_all(&3u32.to_le_bytes()).unwrap();
    t.write_all(&[0; 3]).unwrap();
    assert_eq!(Status::from_u8(read_frame(&mut t).unwrap().0.status), Some(Status::BadRequest));
    assert!(closed(&mut t));

    // Truncated frame, then the client goes away: nothing breaks.
    let (mut t, _) = authed(&s);
    let f = frame(Op::WritePages as u8, 1, &[0; 100]);
    t.write_all(&f[..50]).unwrap();
    drop(t);

    // Requests before the handshake: refused and closed.
    let mut t = tcp(&s);
    t.write_all(&frame(Op::Ping as u8, 1, &[])).unwrap();
    let (h, _) = read_frame(&mut t).unwrap();
    assert_eq!(Status::from_u8(h.status), Some(Status::BadRequest));
    assert!(closed(&mut t));

    // Wrong protocol version.
    let mut t = tcp(&s);
    t.write_all(&hello("test", VERSION + 1)).unwrap();
    let (h, p) = read_frame(&mut t).unwrap();
    assert_eq!(Status::from_u8(h.status), Some(Status::Version));
    assert!(String::from_utf8_lossy(&p).contains("version"));
    assert!(closed(&mut t));

    good.ping().unwrap();
    exercise_pages_quickly(&good);
}

fn exercise_pages_quickly(c: &Client) {
    c.write_pages(77, &[1], &page(1)).unwrap();
    assert_eq!(c.read_pages(77, &[1]).unwrap().1, page(1));
}

#[test]
fn authentication_rejects_wrong_missing_and_replayed_tokens() {
    let s = TestServer::start(1 << 30);
    let mut cfg = s.client_config();
    cfg.credential.secret = b"definitely-not-the-secret".to_vec();
    let e = Client::connect(cfg).unwrap_err();
    assert!(matches!(e, StoreError::Auth { .. }), "{e}");
    assert!(e.to_string().contains("authentication"), "{e}");
    assert!(e.is_gone());

    let mut cfg = s.client_config();
    cfg.credential.tenant = "mallory".into();
    assert!(matches!(Client::connect(cfg).unwrap_err(), StoreError::Auth { .. }));

    // Replay: a captured AUTH frame is useless against a new challenge.
    let (_t, captured) = authed(&s);
    let mut t = tcp(&s);
    t.write_all(&hello(&s.credential().tenant, VERSION)).unwrap();
    read_frame(&mut t).unwrap();
    t.write_all(&captured).unwrap();
    let (h, _) = read_frame(&mut t).unwrap();
    assert_eq!(Status::from_u8(h.status), Some(Status::AuthFailed));
    assert!(closed(&mut t));
    s.client().ping().unwrap();
}

#[test]
fn a_client_that_stops_reading_only_hurts_itself() {
    let s = TestServer::start_with(|c| c.write_stall = Duration::from_secs(1), 1 << 30);
    let c = s.client();
    c.write_pages(1, &[0], &page(3)).unwrap();
    let (mut t, _) = authed(&s);
    t.set_write_timeout(Some(Duration::from_millis(200))).unwrap();
    // Pour in reads of a 4 KiB page and never read a reply.
    let req = frame(Op::ReadPages as u8, 1, &{
        let mut p = 1u64.to_le_bytes().to_vec();
        p.extend_from_slice(&1u32.to_le_bytes());
        p.extend_from_slice(&0u64.to_le_bytes());
        p
    });
    let burst: Vec<u8> = req.iter().copied().cycle().take(req.len() * 1000).collect();
    let mut stalled = false;
    for _ in 0..2000 {
        if t.write_all(&burst).is_err() {
            stalled = true;
            break;
        }
    }
    assert!(stalled, "the server kept reading although its replies were not read");
    // Everyone else is served meanwhile.
    for _ in 0..20 {
        exercise_pages_quickly(&c);
    }
    // And the stalled connection is eventually closed.
    std::thread::sleep(Duration::from_millis(1500));
    let mut sink = vec![0u8; 1 << 20];
    let deadline = Instant::now() + Duration::from_secs(10);
    t.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    loop {
        match t.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => assert!(Instant::now() < deadline, "the stalled connection was never closed"),
        }
    }
}

#[test]
fn a_client_survives_a_server_restart() {
    let s = TestServer::start(1 << 30);
    let Addr::Tcp(addr) = s.addr().clone() else { unreachable!() };
    let cred = s.credential().clone();
    let mut cfg = ClientConfig::new(Addr::Tcp(addr.clone()), cred.clone());
    cfg.reconnect_timeout = Duration::from_secs(10);
    let c = Client::connect(cfg).unwrap();
    c.write_pages(1, &[1], &page(1)).unwrap();
    drop(s);
    // Restart on the same port a little later; the client's next calls reconnect.
    let restarter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let mut sc = ServerConfig::loopback(1 << 30, vec![cred]);
        sc.listen = Addr::Tcp(addr);
        server::start(sc).unwrap()
    });
    c.write_pages(1, &[2], &page(2)).unwrap();
    let srv = restarter.join().unwrap();
    let (present, got) = c.read_pages(1, &[1, 2]).unwrap();
    assert_eq!(present, vec![false, true], "the restarted server is empty; the new write is there");
    assert_eq!(&got[PAGE_SIZE..], &page(2)[..]);
    srv.stop();
    // Gone for good: a typed error within the reconnect deadline, not a hang.
    let mut cfg = c.config().clone();
    cfg.reconnect_timeout = Duration::from_millis(500);
    drop(c);
    let t = Instant::now();
    let e = Client::connect(cfg).unwrap_err();
    assert!(e.is_gone(), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_call_in_flight_when_the_server_dies_fails_with_gone() {
    let mut s = TestServer::start(1 << 30);
    let mut cfg = s.client_config();
    cfg.reconnect_timeout = Duration::from_millis(500);
    let c = Client::connect(cfg).unwrap();
    c.ping().unwrap();
    s.stop();
    let e = c.read_pages(1, &[0]).unwrap_err();
    assert!(e.is_gone(), "{e}");
    assert!(e.to_string().contains(&s.credential().tenant) || e.to_string().contains("127.0.0.1"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn random_bytes_over_the_socket_never_hurt_the_server(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        authenticate in any::<bool>(),
    ) {
        thread_local!(static SERVER: (TestServer, Client) = {
            let s = TestServer::start(1 << 24);
            let c = s.client();
            (s, c)
        });
        SERVER.with(|(s, c)| {
            let mut t = if authenticate { authed(s).0 } else { tcp(s) };
            t.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            let _ = t.write_all(&bytes);
            let mut sink = [0u8; 4096];
            let _ = t.read(&mut sink);
            drop(t);
            c.ping().unwrap();
        });
    }
}

#[test]
fn memd_command_ping_stats_and_signals() {
    use std::process::{Command, Stdio};
    let exe = env!("CARGO_BIN_EXE_memd");
    let dir = farmem_memd::testing::private_dir();
    let tok = dir.join("tok");
    std::fs::write(&tok, "ops:0123456789abcdef0123456789\n").unwrap();
    // Starts `memd serve` and returns it with the first line it prints.
    let serve = || {
        let mut child = Command::new(exe)
            .args(["serve", "--listen", "127.0.0.1:0", "--capacity", "64M", "--token-file"])
            .arg(&tok)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.as_mut().unwrap()), &mut line).unwrap();
        (child, line)
    };
    let (mut child, line) = serve();
    let addr = line.split_whitespace().nth(2).expect("listening on ADDR").to_string();
    let out =
        Command::new(exe).args(["ping", "--count", "2", "--server", &addr, "--token-file"]).arg(&tok).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("pong from"));
    let out = Command::new(exe).args(["stats", "--server", &addr, "--token-file"]).arg(&tok).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("global.capacity"), "{out:?}");
    let bad = dir.join("bad");
    std::fs::write(&bad, "ops:wrong-secret-wrong-secret\n").unwrap();
    let out = Command::new(exe).args(["ping", "--server", &addr, "--token-file"]).arg(&bad).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("authentication"), "{out:?}");
    let out = Command::new(exe).args(["serve", "--capacity", "lots", "--token-file"]).arg(&tok).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--capacity"), "{out:?}");
    // SIGTERM stops the server cleanly.
    let st = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(st.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "memd exited with {status:?} on SIGTERM");
    // Also when it comes the moment the server says where it listens (its handlers are in place by then).
    for _ in 0..5 {
        let (mut child, line) = serve();
        assert!(line.starts_with("listening on"), "{line:?}");
        assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
        let status = child.wait().unwrap();
        assert!(status.success(), "memd exited with {status:?} on a SIGTERM right after it started listening");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn owned_key_spaces_end_with_their_client_and_others_stay() {
    let s = TestServer::start(64 << 20);
    let observer = s.client();
    let mut cfg = s.client_config();
    cfg.session_grace = Some(Duration::from_secs(1));
    let c = Client::connect(cfg).unwrap();
    c.write_pages(1, &[0], &page(1)).unwrap();
    c.write_pages(2, &[0], &page(2)).unwrap();
    c.write_object(3, 1, b"x").unwrap();
    c.own(OwnKind::Region, 1).unwrap();
    c.own(OwnKind::Objects, 3).unwrap();
    c.own(OwnKind::Region, 1).unwrap();
    // Longer than the grace: a session with a live connection never expires.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(observer.read_pages(1, &[0]).unwrap().0[0], "owned data vanished while its client was connected");
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(30);
    while observer.read_pages(1, &[0]).unwrap().0[0] {
        assert!(Instant::now() < deadline, "the session's region was not dropped after its client left");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(observer.read_object(3, 1).unwrap(), None, "the session's object space was not dropped");
    assert_eq!(observer.read_pages(2, &[0]).unwrap().1, page(2), "a key space nobody owns must be kept");
}

#[test]
fn own_needs_a_lease_and_a_known_kind() {
    let s = TestServer::start(1 << 20);
    let (mut t, _) = authed(&s);
    let mut own = vec![0u8];
    own.extend_from_slice(&7u64.to_le_bytes());
    t.write_all(&frame(Op::Own as u8, 1, &own)).unwrap();
    let (h, p) = read_frame(&mut t).unwrap();
    assert_eq!((h.id, h.status), (1, Status::BadRequest as u8), "{}", String::from_utf8_lossy(&p));
    let mut lease = 9u64.to_le_bytes().to_vec();
    lease.extend_from_slice(&5u32.to_le_bytes());
    t.write_all(&frame(Op::Lease as u8, 2, &lease)).unwrap();
    assert_eq!(read_frame(&mut t).unwrap().0.status, Status::Ok as u8);
    t.write_all(&frame(Op::Lease as u8, 3, &lease)).unwrap();
    assert_eq!(read_frame(&mut t).unwrap().0.status, Status::BadRequest as u8, "a second LEASE is refused");
    own[0] = 9;
    t.write_all(&frame(Op::Own as u8, 4, &own)).unwrap();
    assert_eq!(read_frame(&mut t).unwrap().0.status, Status::BadRequest as u8, "unknown kind");
    own[0] = 0;
    t.write_all(&frame(Op::Own as u8, 5, &own)).unwrap();
    assert_eq!(read_frame(&mut t).unwrap().0.status, Status::Ok as u8);
    let mut long = 9u64.to_le_bytes().to_vec();
    long.extend_from_slice(&u32::MAX.to_le_bytes());
    t.write_all(&frame(Op::Lease as u8, 6, &long)).unwrap();
    assert_eq!(read_frame(&mut t).unwrap().0.status, Status::BadRequest as u8, "grace over the limit");
}

/// A READ_OBJECTS reply read into a recycled buffer (left full of garbage and truncated by its last user) holds
/// exactly the values sent, with nothing of the old contents showing.
#[test]
fn replies_into_recycled_buffers_hold_the_right_values() {
    let srv = TestServer::start(64 << 20);
    let c = srv.client();
    let value = |id: u64, round: u64| vec![(id * 7 + round) as u8; 4096 + id as usize];
    for round in 0..4u64 {
        let mut b = ObjBatch::new();
        for id in 0..40u64 {
            b.push(id, &value(id, round));
        }
        c.write_objects(6, b).unwrap();
        // Every other round asks for one object fewer, so buffers come back both larger and smaller than needed.
        let n = 40 - round % 2;
        let got = c.read_objects(6, &(0..n).collect::<Vec<_>>()).unwrap();
        for (id, v) in got.iter() {
            assert_eq!(v, Some(&value(id, round)[..]), "object {id}, round {round}");
        }
        let mut spent = got.data;
        spent.iter_mut().for_each(|x| *x = 0xEE);
        spent.truncate(100);
        farmem_memd::client::recycle_reply_buffer(spent);
    }
}

/// A sink that lends plain buffers (an object runtime lends its heap); counts its calls and keeps the outcome.
#[derive(Debug)]
struct VecSink {
    expected: Vec<(u64, u32)>,
    bufs: std::sync::Mutex<Vec<Vec<u8>>>,
    calls: std::sync::atomic::AtomicUsize,
    outcome: std::sync::Mutex<Option<bool>>,
    lend: bool,
}

impl VecSink {
    fn new(expected: Vec<(u64, u32)>, lend: bool) -> Arc<VecSink> {
        let bufs = expected.iter().map(|&(_, l)| vec![0u8; l as usize]).collect();
        Arc::new(VecSink {
            expected,
            bufs: std::sync::Mutex::new(bufs),
            calls: 0.into(),
            outcome: std::sync::Mutex::new(None),
            lend,
        })
    }
    fn calls(&self) -> usize {
        self.calls.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl farmem_memd::far::ObjectSink for VecSink {
    fn expected(&self) -> &[(u64, u32)] {
        &self.expected
    }
    fn receive(
        &self,
        fill: &mut dyn FnMut(&mut [&mut [u8]]) -> std::io::Result<bool>,
    ) -> Option<std::io::Result<bool>> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if !self.lend {
            return None;
        }
        let mut bufs = self.bufs.lock().unwrap();
        let mut dests: Vec<&mut [u8]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
        let r = fill(&mut dests);
        *self.outcome.lock().unwrap() = r.as_ref().ok().copied();
        Some(r)
    }
}

fn value(id: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (id as u8).wrapping_mul(31).wrapping_add(i as u8)).collect()
}

#[test]
fn object_reads_are_received_in_place_when_the_reply_is_as_expected() {
    let s = TestServer::start(1 << 30);
    let c = s.client();
    // Shared (≥ 2 KiB) and slab-stored values alike.
    let lens: Vec<usize> = vec![4096, 100, 3000, 4096, 16, 2048, 777, 4096];
    let mut b = ObjBatch::new();
    for (id, &l) in lens.iter().enumerate() {
        b.push(id as u64, &value(id as u64, l));
    }
    c.write_objects(9, b).unwrap();
    let expect_all = |ids: &[u64]| ids.iter().map(|&i| (i, lens[i as usize] as u32)).collect::<Vec<_>>();
    let fetch = |ids: Vec<u64>, sink: Arc<VecSink>| c.submit_into(Request::ReadObjects { ds: 9, ids }, sink).unwrap();

    // As expected: placed, values in the sink's buffers. Several in flight, waited in reverse order, so that
    // one wait reads the other requests' replies too (the sink travels with the request, not with its waiter).
    let sinks: Vec<Arc<VecSink>> = (0..4).map(|k| VecSink::new(expect_all(&[k, 7 - k, 3]), true)).collect();
    let pend: Vec<_> = sinks.iter().map(|sk| fetch(sk.expected.iter().map(|e| e.0).collect(), sk.clone())).collect();
    for (sk, p) in sinks.iter().zip(pend).rev() {
        assert_eq!(p.wait().unwrap(), farmem_memd::Reply::Placed);
        assert_eq!(sk.calls(), 1);
        assert_eq!(*sk.outcome.lock().unwrap(), Some(true));
        for (&(id, _), got) in sk.expected.iter().zip(sk.bufs.lock().unwrap().iter()) {
            assert_eq!(got, &value(id, lens[id as usize]), "object {id}");
        }
    }

    // An absent object changes the reply's length: read the ordinary way, the sink never asked.
    let sk = VecSink::new(vec![(0, 4096), (42, 4096)], true);
    match fetch(vec![0, 42], sk.clone()).wait().unwrap() {
        farmem_memd::Reply::Objects(b) => {
            let got: Vec<_> = b.iter().map(|(id, v)| (id, v.map(<[u8]>::to_vec))).collect();
            assert_eq!(got, vec![(0, Some(value(0, 4096))), (42, None)]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sk.calls(), 0);

    // Same total length, other lengths per object: received, found different, handed back as ordinary bytes.
    let sk = VecSink::new(vec![(1, 3000), (2, 100)], true);
    match fetch(vec![1, 2], sk.clone()).wait().unwrap() {
        farmem_memd::Reply::Objects(b) => {
            let got: Vec<_> = b.iter().map(|(id, v)| (id, v.map(<[u8]>::to_vec))).collect();
            assert_eq!(got, vec![(1, Some(value(1, 100))), (2, Some(value(2, 3000)))]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!((sk.calls(), *sk.outcome.lock().unwrap()), (1, Some(false)));

    // A sink that has no room: the ordinary reply.
    let sk = VecSink::new(expect_all(&[0, 1]), false);
    assert!(matches!(fetch(vec![0, 1], sk.clone()).wait().unwrap(), farmem_memd::Reply::Objects(_)));
    assert_eq!(sk.calls(), 1);

    // A dropped request leaves no sink behind; the connection goes on.
    let sk = VecSink::new(expect_all(&[5]), true);
    drop(fetch(vec![5], sk.clone()));
    assert_eq!(c.read_object(9, 6).unwrap(), Some(value(6, 777)));
    assert_eq!(Arc::strong_count(&sk), 1, "the client let go of the sink");

    // The in-process store has no socket: always the ordinary reply.
    let m = farmem_memd::MemStore::new(1 << 20);
    m.write_object(9, 3, &value(3, 4096)).unwrap();
    let sk = VecSink::new(vec![(3, 4096)], true);
    let r = m.submit_into(Request::ReadObjects { ds: 9, ids: vec![3] }, sk.clone()).unwrap().wait().unwrap();
    assert!(matches!(r, farmem_memd::Reply::Objects(_)));
    assert_eq!(sk.calls(), 0);
}

/// READ_PAGES replies read into recycled buffers (full of garbage, longer or shorter than needed) hold exactly the
/// pages sent; absent pages of a partial reply read as zeros.
#[test]
fn page_replies_into_recycled_buffers_hold_the_right_pages() {
    let srv = TestServer::start(64 << 20);
    let c = srv.client();
    let n = 64u64;
    let mut data = Vec::new();
    for p in 0..n {
        data.extend_from_slice(&page(p + 1));
    }
    c.write_pages(9, &(0..n).collect::<Vec<_>>(), &data).unwrap();
    for round in 0..4usize {
        for len in [n as usize * PAGE_SIZE + 4096 * round, 20 * PAGE_SIZE] {
            farmem_memd::client::recycle_reply_buffer(vec![0xEE; len]);
        }
        let (present, got) = c.read_pages(9, &(0..n).collect::<Vec<_>>()).unwrap();
        assert!(present.iter().all(|&p| p));
        assert!(got == data, "round {round}: a whole reply differs from the pages written");
        // Pages 64.. were never written: their slots must be zeros, not garbage from a recycled buffer.
        let ask: Vec<u64> = (n - 20..n + 20).collect();
        farmem_memd::client::recycle_reply_buffer(got);
        let (present, got) = c.read_pages(9, &ask).unwrap();
        for (i, &p) in ask.iter().enumerate() {
            let slot = &got[i * PAGE_SIZE..(i + 1) * PAGE_SIZE];
            if p < n {
                assert!(present[i] && slot == &page(p + 1)[..], "round {round}, page {p}");
            } else {
                assert!(!present[i] && slot.iter().all(|&b| b == 0), "round {round}, absent page {p}");
            }
        }
    }
}

/// A request submitted and never waited for is read by the connection's drain thread, also after the connection
/// sat idle (the drain thread then sleeps until a request goes out).
#[test]
fn an_unwaited_request_on_an_idle_connection_is_drained() {
    let srv = TestServer::start(64 << 20);
    let mut cfg = srv.client_config();
    cfg.connections = 1;
    let c = Client::connect(cfg).unwrap();
    c.write_pages(3, &[0], &page(3)).unwrap();
    for _ in 0..3 {
        // Long enough for the drain thread to find nothing outstanding and go to sleep.
        std::thread::sleep(Duration::from_millis(20));
        let p = c.submit(Request::ReadPages { region: 3, pages: vec![0] }).unwrap();
        // Liveness, not speed: without the drain thread nobody would ever read this reply.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !p.is_ready() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(p.is_ready(), "nobody read the reply of an unwaited request");
        match p.wait().unwrap() {
            farmem_memd::Reply::Pages { present, data } => assert!(present == vec![true] && data == page(3)),
            r => panic!("{r:?}"),
        }
    }
}

/// Spinning waits over TCP and a Unix socket: replies that come within the spin, after it (the wait then
/// blocks), out of order, and replies for other callers read during a spin all reach the right caller.
#[test]
fn spinning_waits_get_their_replies_whether_they_come_within_the_spin_or_after() {
    let dir = farmem_memd::testing::private_dir();
    let path = dir.join("memd.sock");
    let tcp = TestServer::start_with(with_slow, 1 << 30);
    let unix = TestServer::start_with(
        |c| {
            with_slow(c);
            c.listen = Addr::Unix(path.clone());
        },
        1 << 30,
    );
    for s in [&tcp, &unix] {
        let mut cfg = s.client_config();
        cfg.connections = 1;
        let c = Client::connect(cfg).unwrap();
        c.construct(1, "slow", &[]).unwrap();
        for p in 0..8 {
            c.write_pages(1, &[p], &page(p)).unwrap();
        }
        let read = |p: u64| c.submit(Request::ReadPages { region: 1, pages: vec![p] }).unwrap();
        let check = |r: farmem_memd::Reply, p: u64| match r {
            farmem_memd::Reply::Pages { present, data } => {
                assert_eq!(present, vec![true]);
                assert_eq!(data, page(p), "page {p}");
            }
            r => panic!("{r:?}"),
        };
        // Within the spin (a generous one), with no spin at all, and in reverse order of submission.
        check(read(3).wait_spinning(Duration::from_secs(1)).unwrap(), 3);
        check(read(4).wait_spinning(Duration::ZERO).unwrap(), 4);
        let mut batch: Vec<_> = (0..8).map(|p| (p, read(p))).collect();
        while let Some((p, r)) = batch.pop() {
            check(r.wait_spinning(Duration::from_millis(5)).unwrap(), p);
        }
        // After the spin: a 50 ms compute waited on with a 1 ms spin blocks for the rest.
        let slow = c.submit(Request::Compute { ds: 1, op: 0, input: vec![5, 9] }).unwrap();
        assert_eq!(slow.wait_spinning(Duration::from_millis(1)).unwrap(), farmem_memd::Reply::Output(vec![5, 9]));
        // A spinning reader files a reply meant for another thread's wait.
        let slow = c.submit(Request::Compute { ds: 1, op: 0, input: vec![3, 1] }).unwrap();
        let fast = read(6);
        std::thread::scope(|sc| {
            sc.spawn(|| check(fast.wait().unwrap(), 6));
            assert_eq!(slow.wait_spinning(Duration::from_secs(2)).unwrap(), farmem_memd::Reply::Output(vec![3, 1]));
        });
        c.destruct(1).unwrap();
    }
    drop(unix);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A spinning wait on a server that dies meanwhile ends with an error, not a hang.
#[test]
fn a_spinning_wait_on_a_dying_server_fails() {
    let gate = Arc::new(Gate::default());
    let mut s = TestServer::start_with(with_gate(&gate), 1 << 30);
    let mut cfg = s.client_config();
    cfg.reconnect_timeout = Duration::from_millis(300);
    let c = Client::connect(cfg).unwrap();
    c.construct(1, "gated", &[]).unwrap();
    // The compute cannot answer before the gate opens, which happens only once the wait has ended: the server
    // surely dies under the wait, however late the stopping thread runs.
    let slow = c.submit(Request::Compute { ds: 1, op: 0, input: vec![20] }).unwrap();
    let t = Instant::now();
    std::thread::scope(|sc| {
        sc.spawn(|| {
            gate.wait_entered();
            // Give the wait a moment to be spinning (it fails the same way if it is not yet).
            std::thread::sleep(Duration::from_millis(20));
            s.stop();
        });
        let r = slow.wait_spinning(Duration::from_secs(30));
        // The stopping server waits for its running compute: let it end.
        gate.open();
        let e = r.unwrap_err();
        assert!(matches!(e, StoreError::Gone { .. } | StoreError::Interrupted { .. }), "{e}");
    });
    assert!(t.elapsed() < Duration::from_secs(20), "the wait outlived the server by {:?}", t.elapsed());
}
