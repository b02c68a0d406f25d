//! `farmem run`: the command under the preload shim, with an embedded memd unless `--server` is given.

use crate::cli::{size_flag, value, CliError, Embedded};
use farmem_alloc::config::{check_threshold, AllocConfig};
use farmem_memd::config::{self, Addr, ConfigError};
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};

/// The shim's file name.
pub const LIB: &str = "libfarmem_preload.so";

/// Parsed `farmem run` flags.
#[derive(Debug, Default)]
pub struct RunOpts {
    pub local_mem: Option<u64>,
    pub threshold: Option<u64>,
    pub region_size: Option<u64>,
    pub capacity: Option<u64>,
    pub server: Option<Addr>,
    pub token_file: Option<PathBuf>,
    pub stats: bool,
    pub log: Option<String>,
    pub cmd: Vec<String>,
}

/// Parses and validates `farmem run`'s arguments, and the `FARMEM_*` variables no flag overrides.
pub fn parse(args: &[String]) -> Result<RunOpts, CliError> {
    let mut o = RunOpts::default();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if a == "--" {
            o.cmd = args[i + 1..].to_vec();
            break;
        }
        if let Some(v) = value(args, &mut i, "--local-mem")? {
            o.local_mem = Some(size_flag("--local-mem", v)?);
        } else if let Some(v) = value(args, &mut i, "--threshold")? {
            o.threshold = Some(check_threshold("--threshold", size_flag("--threshold", v)?)? as u64);
        } else if let Some(v) = value(args, &mut i, "--region-size")? {
            o.region_size = Some(size_flag("--region-size", v)?);
        } else if let Some(v) = value(args, &mut i, "--capacity")? {
            o.capacity = Some(size_flag("--capacity", v)?);
        } else if let Some(v) = value(args, &mut i, "--server")? {
            o.server = Some(Addr::parse(v).map_err(|m| ConfigError::new("--server", m))?);
        } else if let Some(v) = value(args, &mut i, "--token-file")? {
            o.token_file = Some(PathBuf::from(v));
        } else if let Some(v) = value(args, &mut i, "--log")? {
            tracing_subscriber::EnvFilter::try_new(v)
                .map_err(|e| ConfigError::new("--log", format!("{v:?} is not a log filter: {e}")))?;
            o.log = Some(v.to_string());
        } else if a == "-h" || a == "--help" {
            return Err(CliError::Help);
        } else if a == "--stats" {
            o.stats = true;
        } else if a.starts_with('-') {
            return Err(CliError::Other(format!("run: unknown flag {a:?} (the command goes after `--`)")));
        } else {
            // The command may also follow the flags without `--`.
            o.cmd = args[i..].to_vec();
            break;
        }
        i += 1;
    }
    if o.cmd.is_empty() {
        return Err(CliError::Other("run: no command given (farmem run [flags] -- CMD ARGS...)".into()));
    }
    match (&o.server, &o.token_file) {
        (Some(_), None) => return Err(ConfigError::new("--token-file", "must be given with --server").into()),
        (None, Some(_)) => return Err(ConfigError::new("--server", "must be given with --token-file").into()),
        (Some(_), Some(f)) => {
            config::read_tokens(f).map_err(|e| ConfigError::new("--token-file", e.to_string()))?;
        }
        (None, None) => {}
    }
    if o.server.is_some() && o.capacity.is_some() {
        return Err(ConfigError::new("--capacity", "sizes the embedded memd; it has no effect with --server").into());
    }
    if o.local_mem.is_some_and(|l| l < 16 * 4096) {
        return Err(ConfigError::new("--local-mem", "must be at least 64K (16 pages)").into());
    }
    if let (Some(l), Some(r)) = (o.local_mem, o.region_size) {
        if l > r {
            return Err(ConfigError::new("--local-mem", "is larger than --region-size").into());
        }
    }
    // Variables the flags leave in force reach the shim: check them here, where an error can stop us.
    let env_sizes = [
        ("FARMEM_LOCAL_MEM", o.local_mem.is_none()),
        ("FARMEM_REGION_SIZE", o.region_size.is_none()),
        ("FARMEM_THRESHOLD", o.threshold.is_none()),
    ];
    for (name, inherited) in env_sizes {
        if inherited {
            config::env_size(name)?;
        }
    }
    if o.threshold.is_none() {
        AllocConfig::from_env()?;
    }
    for name in ["FARMEM_STATS", "FARMEM_REQUIRED", "FARMEM_READAHEAD"] {
        config::env_bool(name)?;
    }
    config::env_session_grace()?;
    if o.server.is_none() {
        if let Some(v) = config::env_str("FARMEM_SERVER")? {
            Addr::parse(&v).map_err(|m| ConfigError::new("FARMEM_SERVER", m))?;
            farmem_memd::ClientConfig::from_env()?;
        }
    }
    Ok(o)
}

/// Finds the shim next to this executable.
pub fn find_lib() -> Result<PathBuf, CliError> {
    let exe =
        std::env::current_exe().map_err(|e| CliError::Other(format!("cannot locate the farmem executable: {e}")))?;
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    let lib = dir.join(LIB);
    if lib.is_file() {
        return Ok(lib);
    }
    let profile = if dir.ends_with("release") { " --release" } else { "" };
    Err(CliError::Other(format!(
        "{LIB} is not next to the farmem executable (looked for {}); build it with `cargo build{profile} -p \
         farmem-preload`",
        lib.display()
    )))
}

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe; pid is our child, which we have not reaped yet.
        unsafe { libc::kill(pid, sig) };
    }
}

fn set_handler(sig: libc::c_int, handler: libc::sighandler_t) {
    // SAFETY: installs a disposition for one signal; `forward` is async-signal-safe.
    unsafe { libc::signal(sig, handler) };
}

/// Runs `o.cmd` under the shim and returns its exit status (128 + signal if a signal ended it).
pub fn execute(o: &RunOpts) -> Result<i32, CliError> {
    let lib = find_lib()?;
    let embedded = match &o.server {
        Some(_) => None,
        None => Some(Embedded::start(o.capacity.unwrap_or_else(crate::cli::half_of_ram))?),
    };
    let (server, token) = match (&embedded, &o.server, &o.token_file) {
        (Some(e), _, _) => (e.addr().to_string(), e.token_file().to_path_buf()),
        (None, Some(s), Some(t)) => (s.to_string(), t.clone()),
        _ => unreachable!("parse() requires --server and --token-file together"),
    };
    let mut cmd = Command::new(&o.cmd[0]);
    cmd.args(&o.cmd[1..]);
    cmd.env("FARMEM_SERVER", server).env("FARMEM_TOKEN_FILE", token);
    let sized =
        [("FARMEM_LOCAL_MEM", o.local_mem), ("FARMEM_THRESHOLD", o.threshold), ("FARMEM_REGION_SIZE", o.region_size)];
    for (name, v) in sized {
        if let Some(v) = v {
            cmd.env(name, config::format_size(v));
        }
    }
    if o.stats {
        cmd.env("FARMEM_STATS", "1");
    }
    cmd.env(farmem_alloc::RUN_PID_VAR, std::process::id().to_string());
    if let Some(l) = &o.log {
        cmd.env("FARMEM_LOG", l);
    }
    let mut preload = OsString::from(&lib);
    if let Some(old) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        preload.push(":");
        preload.push(old);
    }
    cmd.env("LD_PRELOAD", preload);
    let mut child = cmd.spawn().map_err(|e| CliError::Other(format!("cannot run {:?}: {e}", o.cmd[0])))?;
    CHILD.store(i32::try_from(child.id()).unwrap_or(0), Ordering::Relaxed);
    // Like system(3): the terminal's SIGINT/SIGQUIT reach the command directly; we stay alive to clean up.
    set_handler(libc::SIGINT, libc::SIG_IGN);
    set_handler(libc::SIGQUIT, libc::SIG_IGN);
    set_handler(libc::SIGTERM, forward as extern "C" fn(libc::c_int) as libc::sighandler_t);
    set_handler(libc::SIGHUP, forward as extern "C" fn(libc::c_int) as libc::sighandler_t);
    let status = child.wait().map_err(|e| CliError::Other(format!("waiting for {:?}: {e}", o.cmd[0])))?;
    CHILD.store(0, Ordering::Relaxed);
    drop(embedded);
    Ok(match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        (None, None) => 1,
    })
}

/// `farmem run ARGS`.
pub fn main(args: &[String]) -> i32 {
    match parse(args).and_then(|o| execute(&o)) {
        Ok(code) => code,
        Err(CliError::Help) => {
            println!("{}", crate::USAGE);
            0
        }
        Err(e) => {
            eprintln!("farmem: {e}");
            2
        }
    }
}
