//! Test support: a memd on a free loopback port with a fresh token, stopped when dropped.
//!
//! Used by the tests of every farmem crate. The token file lives in a private temporary directory that is removed
//! with the server.

use crate::client::{Client, ClientConfig};
use crate::config::{Addr, Credential};
use crate::far::StoreError;
use crate::offload::{DsInstance, DsType, ObjectsView, OffloadError, Registry};
use crate::server::{self, RunningServer, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

/// A running loopback memd and the credential to reach it.
#[derive(Debug)]
pub struct TestServer {
    server: Option<RunningServer>,
    cred: Credential,
    dir: PathBuf,
    token_file: PathBuf,
}

impl TestServer {
    /// Starts a server holding at most `capacity` bytes, with the built-in offloadable types.
    pub fn start(capacity: u64) -> TestServer {
        Self::start_with(|_| {}, capacity)
    }

    /// Starts a server after letting `adjust` change its configuration (registry, timeouts, listen address).
    pub fn start_with(adjust: impl FnOnce(&mut ServerConfig), capacity: u64) -> TestServer {
        let cred = Credential { tenant: "test".into(), secret: crate::config::random_secret().into_bytes() };
        let mut cfg = ServerConfig::loopback(capacity, vec![cred.clone()]);
        adjust(&mut cfg);
        let dir = private_dir();
        let token_file = dir.join("token");
        let line = format!("{}:{}\n", cred.tenant, String::from_utf8_lossy(&cred.secret));
        std::fs::write(&token_file, line).expect("write the test token file");
        let server = server::start(cfg).expect("start a test memd");
        TestServer { server: Some(server), cred, dir, token_file }
    }

    /// Where the server listens.
    pub fn addr(&self) -> &Addr {
        self.server.as_ref().expect("server running").addr()
    }

    /// The credential it accepts.
    pub fn credential(&self) -> &Credential {
        &self.cred
    }

    /// A file holding that credential as `tenant:secret`.
    pub fn token_file(&self) -> &Path {
        &self.token_file
    }

    /// The running server (engine, address).
    pub fn server(&self) -> &RunningServer {
        self.server.as_ref().expect("server running")
    }

    /// A client configuration for this server, with a short reconnect deadline suited to tests.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new(self.addr().clone(), self.cred.clone());
        c.reconnect_timeout = Duration::from_secs(3);
        c
    }

    /// A connected client.
    pub fn client(&self) -> Client {
        self.try_client().expect("connect to the test memd")
    }

    /// A client, or why it could not connect.
    pub fn try_client(&self) -> Result<Client, StoreError> {
        Client::connect(self.client_config())
    }

    /// Stops the server (connections are closed; clients see it as gone).
    pub fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh directory only this user can read, under the system temporary directory.
pub fn private_dir() -> PathBuf {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::temp_dir();
    loop {
        let p = base.join(format!("farmem-{}-{:016x}", std::process::id(), crate::far::fresh_space_id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&p) {
            Ok(()) => return p,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("cannot create a private directory in {}: {e}", base.display()),
        }
    }
}

/// An offloadable test type, registered as `"gated"` by [`with_gate`], whose every compute blocks until the test
/// opens the gate, then echoes its input: a test knows a compute is in flight (and holds its reply back for as
/// long as it needs), with no guess at how long the server takes to start it or the test to go on.
#[derive(Debug, Default)]
pub struct Gate {
    /// (computes that have started, open)
    state: Mutex<(u32, bool)>,
    cv: Condvar,
}

impl Gate {
    /// Blocks until a compute has started.
    pub fn wait_entered(&self) {
        let g = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        drop(self.cv.wait_while(g, |(entered, _)| *entered == 0).unwrap_or_else(PoisonError::into_inner));
    }

    /// Lets every compute, waiting or to come, finish.
    pub fn open(&self) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).1 = true;
        self.cv.notify_all();
    }
}

struct Gated(Arc<Gate>);

impl DsType for Gated {
    fn construct(&self, _: &[u8]) -> Result<Box<dyn DsInstance>, OffloadError> {
        Ok(Box::new(Gated(self.0.clone())))
    }
}

impl DsInstance for Gated {
    fn compute(&mut self, _: u32, input: &[u8], _: &mut ObjectsView<'_>) -> Result<Vec<u8>, OffloadError> {
        let mut g = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
        g.0 += 1;
        self.0.cv.notify_all();
        drop(self.0.cv.wait_while(g, |(_, open)| !*open).unwrap_or_else(PoisonError::into_inner));
        Ok(input.to_vec())
    }
}

/// For [`TestServer::start_with`]: a registry holding only type `"gated"`, whose computes wait for `gate`.
pub fn with_gate(gate: &Arc<Gate>) -> impl FnOnce(&mut ServerConfig) {
    let gate = gate.clone();
    move |cfg| {
        let mut r = Registry::new();
        r.register("gated", Arc::new(Gated(gate)));
        cfg.registry = r;
    }
}
