//! Flag parsing and the pieces `run` and `demo` share: the embedded memd and the child environment.

use farmem_memd::config::{self, Addr, ConfigError, Credential};
use farmem_memd::server::{self, RunningServer, ServerConfig};
use std::path::{Path, PathBuf};

/// A command-line error: printed as `farmem: {0}` with exit status 2.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A flag or variable is malformed or missing.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `--help` was asked for.
    #[error("help requested")]
    Help,
    /// Anything else that stops the command from starting.
    #[error("{0}")]
    Other(String),
}

/// Parses a size given to `flag`.
pub fn size_flag(flag: &str, v: &str) -> Result<u64, ConfigError> {
    config::parse_size(v).map_err(|m| ConfigError::new(flag, m))
}

/// Takes the value of `flag` (`--flag V` or `--flag=V`) at `args[*i]`, advancing `i`.
pub fn value<'a>(args: &'a [String], i: &mut usize, flag: &str) -> Result<Option<&'a str>, ConfigError> {
    let a = &args[*i];
    if let Some(v) = a.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
        return Ok(Some(v));
    }
    if a != flag {
        return Ok(None);
    }
    *i += 1;
    args.get(*i).map(|s| Some(s.as_str())).ok_or_else(|| ConfigError::new(flag, "needs a value"))
}

/// Half of physical memory: the embedded memd's default capacity.
pub fn half_of_ram() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let (pages, psize) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
    match (u64::try_from(pages), u64::try_from(psize)) {
        (Ok(n), Ok(p)) if n > 0 && p > 0 => n.saturating_mul(p) / 2,
        _ => 4 << 30,
    }
}

/// A memd running inside this process, with its token file in a private directory; both go away on drop.
#[derive(Debug)]
pub struct Embedded {
    server: Option<RunningServer>,
    dir: PathBuf,
    token_file: PathBuf,
}

impl Embedded {
    /// Starts a loopback memd of `capacity` bytes on a free port with a fresh secret.
    pub fn start(capacity: u64) -> Result<Embedded, CliError> {
        let dir = farmem_memd::testing::private_dir();
        let cred = Credential { tenant: "farmem".into(), secret: config::random_secret().into_bytes() };
        let token_file = dir.join("token");
        let line = format!("{}:{}\n", cred.tenant, String::from_utf8_lossy(&cred.secret));
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&token_file)?
                .write_all(line.as_bytes())
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(CliError::Other(format!("cannot write a token file in {}: {e}", dir.display())));
        }
        match server::start(ServerConfig::loopback(capacity, vec![cred])) {
            Ok(s) => Ok(Embedded { server: Some(s), dir, token_file }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(CliError::Other(format!("cannot start the embedded memd: {e}")))
            }
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> Addr {
        self.server.as_ref().map(|s| s.addr().clone()).unwrap_or(Addr::Tcp(String::new()))
    }

    /// Its token file.
    pub fn token_file(&self) -> &Path {
        &self.token_file
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Peak resident set of this process, in bytes.
pub fn self_maxrss() -> u64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a rusage into the buffer we own.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    if rc != 0 {
        return 0;
    }
    // SAFETY: getrusage succeeded, so the struct is initialised.
    let kb = unsafe { ru.assume_init() }.ru_maxrss;
    u64::try_from(kb).unwrap_or(0) * 1024
}

/// Formats bytes as MiB with one decimal.
pub fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / f64::from(1u32 << 20))
}
