//! The client pool's drain thread: one for the whole pool, whatever its number of connections, and it keeps
//! every connection moving even while a reply on one of them is held up. A file of its own: the test counts the
//! process's drain threads, which other tests' clients would add to.

use farmem_memd::testing::{with_gate, Gate, TestServer};
use farmem_memd::{Client, FarStore, Pending, Reply, Request, PAGE_SIZE};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Threads of this process whose name starts like the pool's drain thread's ("farmem-memd-drain", which the
/// kernel cuts to 15 bytes).
fn drain_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("farmem-memd-dra"))
        .count()
}

/// Submits `req` from a fresh thread: each thread that first uses a pool takes the next connection, so requests
/// submitted this way go out on different connections of a pool with more connections than threads so far.
fn submit_from_new_thread(c: &Arc<Client>, req: Request) -> Pending {
    let c = c.clone();
    std::thread::spawn(move || c.submit(req).unwrap()).join().unwrap()
}

/// Liveness, not speed: waits up to 30 s for `p` to be ready.
fn ready_soon(p: &Pending) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !p.is_ready() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    p.is_ready()
}

#[test]
fn one_drain_thread_serves_a_whole_pool_and_a_held_up_reply_does_not_stall_the_others() {
    let gate = Arc::new(Gate::default());
    let srv = TestServer::start_with(with_gate(&gate), 64 << 20);
    let mut cfg = srv.client_config();
    cfg.connections = 16;
    let before = drain_threads();
    let c = Arc::new(Client::connect(cfg).unwrap());
    // The thread names itself once it runs.
    let deadline = Instant::now() + Duration::from_secs(30);
    while drain_threads() == before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    c.construct(1, "gated", &[]).unwrap();
    let page = |seed: u8| vec![seed; PAGE_SIZE];
    for p in 0..4u8 {
        c.write_pages(5, &[u64::from(p)], &page(p)).unwrap();
    }

    // A compute nobody waits for, held up on the server until the gate opens, on one connection ...
    let held = submit_from_new_thread(&c, Request::Compute { ds: 1, op: 0, input: vec![7, 7] });
    // ... and reads nobody waits for either on others, after they sat idle long enough for the drain thread
    // to go to sleep. A drain thread stuck reading the held-up connection would never read these.
    for p in 0..4u8 {
        std::thread::sleep(Duration::from_millis(20));
        let r = submit_from_new_thread(&c, Request::ReadPages { region: 5, pages: vec![u64::from(p)] });
        assert!(ready_soon(&r), "nobody read the reply of an unwaited read on connection {p}");
        match r.wait().unwrap() {
            Reply::Pages { present, data } => assert!(present == vec![true] && data == page(p)),
            r => panic!("{r:?}"),
        }
    }
    assert!(!held.is_ready(), "the held-up compute cannot have been answered yet");
    gate.open();
    assert!(ready_soon(&held), "nobody read the held-up compute's reply once it came");
    match held.wait().unwrap() {
        Reply::Output(v) => assert_eq!(v, vec![7, 7]),
        r => panic!("{r:?}"),
    }

    // Counted after all that work, when every thread the pool started long since runs under its name.
    assert_eq!(drain_threads(), before + 1, "a pool of 16 connections has one drain thread");
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(30);
    while drain_threads() > before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(drain_threads(), before, "the drain thread outlived its client");
}
