//! FarAlloc's own settings, read from `FARMEM_*` variables (the region and client read theirs themselves).

use farmem_memd::config::{env_bool, env_size, env_str, ConfigError};

/// The default threshold: allocations of at least 1 MiB go to far memory.
pub const DEFAULT_THRESHOLD: usize = 1 << 20;
/// The smallest threshold accepted: one page. Smaller blocks would waste most of a page each.
pub const MIN_THRESHOLD: usize = 4096;

/// What FarAlloc reads from the environment before it starts a region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocConfig {
    /// Smallest allocation placed in far memory (`FARMEM_THRESHOLD`).
    pub threshold: usize,
    /// Whether failing to start far memory is fatal (`FARMEM_REQUIRED`).
    pub required: bool,
    /// Whether to print a summary at exit (`FARMEM_STATS`).
    pub stats: bool,
    /// Log filter (`FARMEM_LOG`), installed by the preload shim only.
    pub log: Option<String>,
}

impl Default for AllocConfig {
    fn default() -> Self {
        AllocConfig { threshold: DEFAULT_THRESHOLD, required: false, stats: false, log: None }
    }
}

/// Checks a threshold value from `source` (a variable or flag name).
pub fn check_threshold(source: &str, v: u64) -> Result<usize, ConfigError> {
    let t = usize::try_from(v).map_err(|_| ConfigError::new(source, "value does not fit in memory"))?;
    if t < MIN_THRESHOLD {
        return Err(ConfigError::new(source, format!("{t} is below the minimum threshold of {MIN_THRESHOLD} (4K)")));
    }
    Ok(t)
}

impl AllocConfig {
    /// Reads `FARMEM_REQUIRED` alone, so that even a malformed other variable can be made fatal. A malformed
    /// `FARMEM_REQUIRED` itself counts as "required": whoever set it wanted something strict.
    pub fn required_from_env() -> bool {
        env_bool("FARMEM_REQUIRED").map(|v| v.unwrap_or(false)).unwrap_or(true)
    }

    /// Reads `FARMEM_THRESHOLD`, `FARMEM_REQUIRED`, `FARMEM_STATS` and `FARMEM_LOG`.
    pub fn from_env() -> Result<AllocConfig, ConfigError> {
        let threshold = match env_size("FARMEM_THRESHOLD")? {
            Some(v) => check_threshold("FARMEM_THRESHOLD", v)?,
            None => DEFAULT_THRESHOLD,
        };
        Ok(AllocConfig {
            threshold,
            required: env_bool("FARMEM_REQUIRED")?.unwrap_or(false),
            stats: env_bool("FARMEM_STATS")?.unwrap_or(false),
            log: env_str("FARMEM_LOG")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_bounds() {
        assert_eq!(check_threshold("X", 4096), Ok(4096));
        let e = check_threshold("FARMEM_THRESHOLD", 100).unwrap_err();
        assert!(e.to_string().starts_with("FARMEM_THRESHOLD: "), "{e}");
    }
}
