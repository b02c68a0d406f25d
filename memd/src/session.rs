//! Client sessions: key spaces that live only as long as the client process that made them.
//!
//! A process's paging region and object spaces are its memory. When the process exits — cleanly or killed — nobody
//! is left to drop them, so an external memd would keep them until it runs out of capacity. A client therefore
//! binds each of its connections to one random session id (LEASE) and names the key spaces that belong to the
//! process (OWN). While the session has at least one connection nothing happens. When its last connection closes,
//! the server waits for the grace period the client asked for (longer than the client's reconnect deadline, so a
//! network blip or a reconnect keeps everything) and then drops every key space the session owns.
//!
//! Sessions are per tenant: a session id of another tenant names a different session.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::proto::{self, OwnKind, ProtoError, RequestView};
use crate::store::{Engine, Tenant};

/// Most key spaces one session may own (a bound on the server memory a client can pin).
pub const MAX_OWNED: usize = 1 << 20;

#[derive(Debug)]
struct Session {
    tenant: Arc<Tenant>,
    /// Connections bound to the session right now.
    conns: usize,
    /// Bumped on every attach, so an expiry scheduled before a reconnect does nothing.
    epoch: u64,
    grace: Duration,
    owned: HashSet<(OwnKind, u64)>,
}

/// What the server should do after a connection of a session closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expiry {
    /// Pass to [`Sessions::expire`] after the grace period.
    pub epoch: u64,
    /// How long to wait.
    pub grace: Duration,
}

/// The server's session table.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<(String, u64), Session>>,
}

impl Sessions {
    /// An empty table.
    pub fn new() -> Sessions {
        Sessions::default()
    }

    /// Binds one more connection of `tenant` to `session` (creating it), cancelling any pending expiry.
    pub fn attach(&self, tenant: &Arc<Tenant>, session: u64, grace_secs: u32) {
        let grace = Duration::from_secs(u64::from(grace_secs));
        let mut m = self.map.lock();
        match m.entry((tenant.name().to_string(), session)) {
            Entry::Occupied(mut e) => {
                let s = e.get_mut();
                s.conns += 1;
                s.epoch += 1;
                s.grace = grace;
            }
            Entry::Vacant(e) => {
                e.insert(Session { tenant: tenant.clone(), conns: 1, epoch: 0, grace, owned: HashSet::new() });
            }
        }
    }

    /// Records that `session` owns a key space.
    pub fn own(&self, tenant: &Tenant, session: u64, kind: OwnKind, id: u64) -> Result<(), ProtoError> {
        let mut m = self.map.lock();
        let s = m
            .get_mut(&(tenant.name().to_string(), session))
            .ok_or_else(|| ProtoError::bad("OWN on a connection without a session"))?;
        if s.owned.len() >= MAX_OWNED && !s.owned.contains(&(kind, id)) {
            return Err(ProtoError::bad(format!("a session may own at most {MAX_OWNED} key spaces")));
        }
        s.owned.insert((kind, id));
        Ok(())
    }

    /// Forgets a key space the session dropped itself (DROP_REGION, DROP_OBJECTS, DESTRUCT); other requests are
    /// ignored without taking the lock.
    pub fn forget(&self, tenant: &Tenant, session: u64, req: &RequestView<'_>) {
        let key = match *req {
            RequestView::DropRegion { region } => (OwnKind::Region, region),
            RequestView::DropObjects { ds } => (OwnKind::Objects, ds),
            RequestView::Destruct { ds } => (OwnKind::Instance, ds),
            _ => return,
        };
        if let Some(s) = self.map.lock().get_mut(&(tenant.name().to_string(), session)) {
            s.owned.remove(&key);
        }
    }

    /// One connection of `session` closed. Returns the expiry to schedule when it was the last one.
    pub fn detach(&self, tenant: &Tenant, session: u64) -> Option<Expiry> {
        let mut m = self.map.lock();
        let s = m.get_mut(&(tenant.name().to_string(), session))?;
        s.conns = s.conns.saturating_sub(1);
        (s.conns == 0).then_some(Expiry { epoch: s.epoch, grace: s.grace })
    }

    /// Drops everything `session` owns, unless a connection came back since `epoch`. Returns how many key spaces
    /// were dropped (None when the session is alive or already gone).
    pub fn expire(&self, engine: &Engine, tenant: &str, session: u64, epoch: u64) -> Option<usize> {
        let s = {
            let mut m = self.map.lock();
            let key = (tenant.to_string(), session);
            match m.get(&key) {
                Some(s) if s.conns == 0 && s.epoch == epoch => m.remove(&key)?,
                _ => return None,
            }
        };
        let mut scratch = Vec::new();
        for &(kind, id) in &s.owned {
            let (op, req) = match kind {
                OwnKind::Region => (proto::Op::DropRegion, RequestView::DropRegion { region: id }),
                OwnKind::Objects => (proto::Op::DropObjects, RequestView::DropObjects { ds: id }),
                OwnKind::Instance => (proto::Op::Destruct, RequestView::Destruct { ds: id }),
            };
            // A DESTRUCT of an instance the client already destroyed answers NoSuchDs: nothing to do.
            engine.dispatch(&s.tenant, 0, op as u8, &req, &mut scratch);
            scratch.clear();
        }
        Some(s.owned.len())
    }

    /// Sessions in the table (live or waiting to expire).
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload;

    fn write_page(e: &Engine, t: &Tenant, region: u64) {
        let mut frame = Vec::new();
        let req = proto::Request::WritePages { region, pages: vec![1], data: vec![7; proto::PAGE_SIZE] };
        proto::encode_request(&mut frame, 1, &req);
        let v = proto::decode_request(proto::Op::WritePages as u8, &frame[4 + proto::HEADER_LEN..]).unwrap();
        let mut out = Vec::new();
        e.dispatch(t, 1, proto::Op::WritePages as u8, &v, &mut out);
        assert_eq!(out[5], 0, "write failed");
    }

    #[test]
    fn expiry_drops_owned_spaces_only_after_the_last_connection() {
        let e = Engine::new(1 << 20, offload::builtin());
        let t = e.tenant("a");
        let s = Sessions::new();
        write_page(&e, &t, 10);
        write_page(&e, &t, 11);
        s.attach(&t, 5, 1);
        s.attach(&t, 5, 1);
        s.own(&t, 5, OwnKind::Region, 10).unwrap();
        assert_eq!(s.detach(&t, 5), None, "one connection is still bound");
        let ex = s.detach(&t, 5).expect("last connection");
        assert_eq!(ex.grace, Duration::from_secs(1));
        assert_eq!(e.used(), 2 * proto::PAGE_SIZE as u64);
        assert_eq!(s.expire(&e, "a", 5, ex.epoch), Some(1));
        assert_eq!(e.used(), proto::PAGE_SIZE as u64, "the owned region is dropped, the other kept");
        assert!(s.is_empty());
    }

    #[test]
    fn a_reconnect_cancels_the_expiry() {
        let e = Engine::new(1 << 20, offload::builtin());
        let t = e.tenant("a");
        let s = Sessions::new();
        write_page(&e, &t, 10);
        s.attach(&t, 5, 60);
        s.own(&t, 5, OwnKind::Region, 10).unwrap();
        let ex = s.detach(&t, 5).unwrap();
        s.attach(&t, 5, 60);
        assert_eq!(s.expire(&e, "a", 5, ex.epoch), None);
        assert_eq!(e.used(), proto::PAGE_SIZE as u64);
    }

    #[test]
    fn sessions_are_per_tenant_and_need_a_lease() {
        let e = Engine::new(1 << 20, offload::builtin());
        let (a, b) = (e.tenant("a"), e.tenant("b"));
        let s = Sessions::new();
        s.attach(&a, 5, 1);
        assert!(s.own(&b, 5, OwnKind::Region, 1).is_err(), "tenant b has no session 5");
        let view = RequestView::DropRegion { region: 1 };
        s.own(&a, 5, OwnKind::Region, 1).unwrap();
        s.forget(&a, 5, &view);
        let ex = s.detach(&a, 5).unwrap();
        assert_eq!(s.expire(&e, "a", 5, ex.epoch), Some(0), "a dropped region is forgotten");
    }
}
