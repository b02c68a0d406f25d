//! Configuration shared by every farmem crate: byte sizes (`256M`, `8G`), `FARMEM_*` environment variables,
//! token files, and server addresses. A malformed value is an error naming its source, never a silent default.

use std::fmt;
use std::path::{Path, PathBuf};

/// A configuration value that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: {msg}")]
pub struct ConfigError {
    /// Where the value came from: a variable, flag or file name.
    pub source_name: String,
    /// What is wrong with it.
    pub msg: String,
}

impl ConfigError {
    /// An error about `source_name`.
    pub fn new(source_name: impl Into<String>, msg: impl Into<String>) -> Self {
        ConfigError { source_name: source_name.into(), msg: msg.into() }
    }
}

/// Splits `s` into a leading whole number and the unit after it (trimmed); `what` names the expected form.
fn number_and_unit<'a>(s: &'a str, what: &str) -> Result<(u64, &'a str), String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if digits == 0 {
        return Err(format!("{s:?} is not {what}"));
    }
    let n: u64 = t[..digits].parse().map_err(|_| format!("{s:?} is too large"))?;
    Ok((n, t[digits..].trim()))
}

/// Parses a byte size: a whole number with an optional binary suffix K, M, G or T (also KiB/KB/k…), e.g.
/// `4096`, `256M`, `8G`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (n, unit) = number_and_unit(s, "a size (expected e.g. 4096, 256M, 8G)")?;
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        other => return Err(format!("{s:?} has an unknown unit {other:?} (use K, M, G or T)")),
    };
    n.checked_mul(1u64 << shift).ok_or_else(|| format!("{s:?} is too large"))
}

/// Formats a byte count the way [`parse_size`] reads it back when it is a whole multiple (`64M`), or in
/// decimal otherwise.
pub fn format_size(n: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

/// Reads environment variable `name`: `Ok(None)` when unset or empty, an error when set but not UTF-8.
pub fn env_str(name: &str) -> Result<Option<String>, ConfigError> {
    match std::env::var(name) {
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError::new(name, "value is not valid UTF-8")),
    }
}

/// Reads a size from environment variable `name` (see [`parse_size`]).
pub fn env_size(name: &str) -> Result<Option<u64>, ConfigError> {
    env_str(name)?.map(|v| parse_size(&v).map_err(|m| ConfigError::new(name, m))).transpose()
}

/// Reads a boolean (`1/0`, `true/false`, `yes/no`, `on/off`) from environment variable `name`.
pub fn env_bool(name: &str) -> Result<Option<bool>, ConfigError> {
    env_str(name)?
        .map(|v| match v.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(ConfigError::new(name, format!("{v:?} is not a boolean (use 1 or 0)"))),
        })
        .transpose()
}

/// Parses a duration: a whole number with an optional unit `s` (the default), `m` or `h`, e.g. `90`, `30s`, `5m`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (n, unit) = number_and_unit(s, "a duration (expected e.g. 60, 30s, 5m)")?;
    let unit = match unit.to_ascii_lowercase().as_str() {
        "" | "s" | "sec" | "secs" => 1,
        "m" | "min" | "mins" => 60,
        "h" | "hour" | "hours" => 3600,
        other => return Err(format!("{s:?} has an unknown unit {other:?} (use s, m or h)")),
    };
    n.checked_mul(unit).map(std::time::Duration::from_secs).ok_or_else(|| format!("{s:?} is too large"))
}

/// Reads the session grace period from `FARMEM_SESSION_GRACE`: `Ok(None)` when unset, `Ok(Some(None))` for `off`
/// (no session: what the process stores in memd stays after it exits), `Ok(Some(Some(d)))` otherwise.
pub fn env_session_grace() -> Result<Option<Option<std::time::Duration>>, ConfigError> {
    const NAME: &str = "FARMEM_SESSION_GRACE";
    let Some(v) = env_str(NAME)? else { return Ok(None) };
    if v.trim().eq_ignore_ascii_case("off") {
        return Ok(Some(None));
    }
    let d = parse_duration(&v).map_err(|m| ConfigError::new(NAME, m))?;
    if d.is_zero() || d.as_secs() > u64::from(crate::proto::MAX_GRACE_SECS) {
        let max = crate::proto::MAX_GRACE_SECS;
        return Err(ConfigError::new(NAME, format!("{v:?} must be 1 s to {max} s, or off")));
    }
    Ok(Some(Some(d)))
}

/// Most connections a client pool may be configured with (`FARMEM_CONNECTIONS`).
pub const MAX_CONNECTIONS: usize = 256;

/// Parses a connection count: a whole number from 1 to [`MAX_CONNECTIONS`].
pub fn parse_connections(s: &str) -> Result<usize, String> {
    let t = s.trim();
    match t.parse::<usize>() {
        Ok(n) if (1..=MAX_CONNECTIONS).contains(&n) => Ok(n),
        Ok(_) => Err(format!("{s:?} must be 1 to {MAX_CONNECTIONS} connections")),
        Err(_) => Err(format!("{s:?} is not a number of connections (expected e.g. 8)")),
    }
}

/// Reads the number of connections of a memd client's pool from `FARMEM_CONNECTIONS` (see
/// [`parse_connections`]); `Ok(None)` when unset.
pub fn env_connections() -> Result<Option<usize>, ConfigError> {
    const NAME: &str = "FARMEM_CONNECTIONS";
    env_str(NAME)?.map(|v| parse_connections(&v).map_err(|m| ConfigError::new(NAME, m))).transpose()
}

/// Where a memd server listens or is reached.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Addr {
    /// `host:port`.
    Tcp(String),
    /// `unix:/path`.
    Unix(PathBuf),
}

impl Addr {
    /// Parses `host:port` or `unix:/path`.
    pub fn parse(s: &str) -> Result<Addr, String> {
        let s = s.trim();
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err("unix: address needs a path, e.g. unix:/run/memd.sock".into());
            }
            return Ok(Addr::Unix(PathBuf::from(p)));
        }
        match s.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => Ok(Addr::Tcp(s.to_string())),
            _ => Err(format!("{s:?} is not host:port or unix:/path")),
        }
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Tcp(s) => f.write_str(s),
            Addr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// One `tenant:secret` credential.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// Tenant name.
    pub tenant: String,
    /// Shared secret.
    pub secret: Vec<u8>,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credential {{ tenant: {:?}, secret: <{} bytes> }}", self.tenant, self.secret.len())
    }
}

/// Name of the tenant of a token-file line that holds a bare secret.
pub const DEFAULT_TENANT: &str = "default";

/// Parses a token file: one credential a line, `tenant:secret` or a bare `secret` (tenant `default`); blank
/// lines and `#` comments are skipped. The server accepts every line; a client uses the first.
pub fn parse_tokens(text: &str, origin: &str) -> Result<Vec<Credential>, ConfigError> {
    let mut out: Vec<Credential> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (tenant, secret) = line.split_once(':').unwrap_or((DEFAULT_TENANT, line));
        let (tenant, secret) = (tenant.trim(), secret.trim());
        let at = || format!("{origin} line {}", i + 1);
        if tenant.is_empty() || tenant.len() > 255 || !tenant.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::new(at(), "tenant name must be 1-255 printable characters"));
        }
        if secret.len() < 16 {
            return Err(ConfigError::new(at(), "secret must be at least 16 characters"));
        }
        if out.iter().any(|c| c.tenant == tenant) {
            return Err(ConfigError::new(at(), format!("tenant {tenant:?} appears twice")));
        }
        out.push(Credential { tenant: tenant.to_string(), secret: secret.as_bytes().to_vec() });
    }
    if out.is_empty() {
        return Err(ConfigError::new(origin, "holds no credential"));
    }
    Ok(out)
}

/// Reads and parses a token file.
pub fn read_tokens(path: &Path) -> Result<Vec<Credential>, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::new(&origin, format!("cannot read: {e}")))?;
    parse_tokens(&text, &origin)
}

/// A fresh random secret (64 hex characters).
pub fn random_secret() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the OS random source is available");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_reject_garbage() {
        use std::time::Duration;
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration(" 30s "), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        for bad in ["", "s", "-1", "5 weeks", "1.5m", "99999999999999999999"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn connection_counts_parse_and_reject_garbage() {
        assert_eq!(parse_connections("16"), Ok(16));
        assert_eq!(parse_connections(" 1 "), Ok(1));
        assert_eq!(parse_connections("256"), Ok(MAX_CONNECTIONS));
        for bad in ["0", "257", "-1", "8x", "eight", "1.5"] {
            assert!(parse_connections(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn connections_from_env_name_the_bad_variable() {
        // The only test that sets FARMEM_CONNECTIONS.
        std::env::set_var("FARMEM_CONNECTIONS", "0");
        let e = env_connections().unwrap_err();
        std::env::set_var("FARMEM_CONNECTIONS", "12");
        let ok = env_connections();
        std::env::remove_var("FARMEM_CONNECTIONS");
        assert_eq!(e.source_name, "FARMEM_CONNECTIONS");
        assert!(e.to_string().contains("FARMEM_CONNECTIONS"), "{e}");
        assert_eq!(ok, Ok(Some(12)));
        assert_eq!(env_connections(), Ok(None));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("8g"), Ok(8 << 30));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert!(parse_size("").is_err());
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert_eq!(format_size(64 << 20), "64M");
        assert_eq!(format_size(1000), "1000");
    }

    #[test]
    fn tokens() {
        let c = parse_tokens("# x\nalice:0123456789abcdef0\n\n0123456789abcdefX\n", "f").unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].tenant, "alice");
        assert_eq!(c[1].tenant, DEFAULT_TENANT);
        assert!(parse_tokens("a:short", "f").unwrap_err().to_string().contains("f line 1"));
        assert!(parse_tokens("", "f").is_err());
        assert!(parse_tokens("a:0123456789abcdef0\na:0123456789abcdef1", "f").is_err());
    }

    #[test]
    fn addrs() {
        assert_eq!(Addr::parse("127.0.0.1:7070"), Ok(Addr::Tcp("127.0.0.1:7070".into())));
        assert_eq!(Addr::parse("unix:/tmp/s"), Ok(Addr::Unix("/tmp/s".into())));
        assert!(Addr::parse("nonsense").is_err());
        assert!(Addr::parse("unix:").is_err());
    }
}
