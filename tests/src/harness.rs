//! The evaluation harness behind `farmem-bench`: runs a workload in a mode, in a child process, and checks it.
//!
//! Every run is a fresh child process of `farmem-bench` itself (`farmem-bench exec …`), so each mode starts from
//! an empty heap and its peak RSS is its own. The parent owns what a mode needs around the child:
//! - `local`: nothing — everything in RAM, the ideal.
//! - `paging`: a memd on loopback; the child's large allocations go through FarAlloc into a userfaultfd region
//!   with `FARMEM_LOCAL_MEM` = the budget.
//! - `objects`: the same memd; the child uses objrt containers with a runtime of the budget.
//! - `hybrid`: the same memd; the workload's hot structure in objrt, its bulk data on FarAlloc, the budget split
//!   between them in proportion to their sizes.
//! - `swap`: the `local` code in a cgroup v1 memory group limited to the budget plus the process's baseline (the
//!   local run's peak RSS minus the working set: code, stacks, small allocations — what the other modes keep
//!   local outside their budgets too) with `/dev/zram0` as swap — what kernel paging gives a user who changes
//!   nothing. It needs root, zram and the v1 memory controller; without them the run is skipped with a
//!   message saying which is missing.
//!
//! The budget is a fraction of the workload's working set. Every run's checksum is compared with `local`'s; a
//! mismatch is an error, never a data point.

use crate::workloads::{self, Outcome, Params};
use anyhow::{bail, Context, Result};
use farmem_memd::config::{format_size, Credential};
use farmem_memd::server::{self, RunningServer, ServerConfig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

/// The least memory a swap-mode group gets beyond the budget, for the process's own code, stacks and small
/// allocations (see [`run`]'s `baseline`).
pub const MIN_BASELINE: u64 = 4 << 20;

/// How a workload's data is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Everything in RAM.
    Local,
    /// std collections on FarAlloc (the paging path).
    Paging,
    /// objrt containers.
    Objects,
    /// Hot structure in objrt, bulk data on FarAlloc.
    Hybrid,
    /// The local code under kernel swap to zram with a memory-cgroup limit.
    Swap,
}

impl Mode {
    /// All modes, in report order.
    pub const ALL: [Mode; 5] = [Mode::Local, Mode::Paging, Mode::Objects, Mode::Hybrid, Mode::Swap];

    /// Parses a mode name.
    pub fn parse(s: &str) -> Result<Mode> {
        Ok(match s {
            "local" => Mode::Local,
            "paging" => Mode::Paging,
            "objects" => Mode::Objects,
            "hybrid" => Mode::Hybrid,
            "swap" => Mode::Swap,
            _ => bail!("unknown mode {s:?} (local, paging, objects, hybrid, swap)"),
        })
    }

    /// The mode's name.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Local => "local",
            Mode::Paging => "paging",
            Mode::Objects => "objects",
            Mode::Hybrid => "hybrid",
            Mode::Swap => "swap",
        }
    }

    fn uses_memd(self) -> bool {
        matches!(self, Mode::Paging | Mode::Objects | Mode::Hybrid)
    }
}

/// The workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Zipf lookups in a hashtable.
    Hashtable,
    /// Sequential and random reads of 8 KiB elements.
    Array,
    /// Hashtable lookup, array read, snappy compression.
    Web,
    /// NYC-taxi-like DataFrame queries.
    Dataframe,
}

impl Workload {
    /// All workloads.
    pub const ALL: [Workload; 4] = [Workload::Hashtable, Workload::Array, Workload::Web, Workload::Dataframe];

    /// Parses a workload name.
    pub fn parse(s: &str) -> Result<Workload> {
        Ok(match s {
            "hashtable" => Workload::Hashtable,
            "array" => Workload::Array,
            "web" => Workload::Web,
            "dataframe" => Workload::Dataframe,
            _ => bail!("unknown workload {s:?} (hashtable, array, web, dataframe)"),
        })
    }

    /// The workload's name.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Hashtable => "hashtable",
            Workload::Array => "array",
            Workload::Web => "web",
            Workload::Dataframe => "dataframe",
        }
    }

    /// In hybrid mode, the share of the budget that objrt gets (the rest goes to FarAlloc's region); `None` where
    /// the workload has no hot structure to put in objrt.
    pub fn hybrid_objrt_share(self, p: &Params) -> Option<f64> {
        match self {
            Workload::Hashtable => Some(workloads::hashtable::HYBRID_OBJRT_SHARE),
            Workload::Array => None,
            Workload::Web => Some(workloads::web::hybrid_objrt_share(p)),
            Workload::Dataframe => Some(workloads::dataframe::HYBRID_OBJRT_SHARE),
        }
    }

    /// Bytes of data the workload keeps (the budget is a fraction of this).
    pub fn working_set(self, p: &Params) -> u64 {
        match self {
            Workload::Hashtable => workloads::hashtable::working_set(p),
            Workload::Array => workloads::array::working_set(p),
            Workload::Web => workloads::web::working_set(p),
            Workload::Dataframe => workloads::dataframe::working_set(p),
        }
    }
}

/// One measured run, as printed (one JSON line) and written to CSV.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunResult {
    /// Workload name.
    pub workload: String,
    /// Mode name.
    pub mode: String,
    /// Budget as a fraction of the working set.
    pub local: f64,
    /// Budget in bytes.
    pub budget_bytes: u64,
    /// Working set in bytes.
    pub working_set_bytes: u64,
    /// Operations per second of the timed phase.
    pub throughput: f64,
    /// Operations in the timed phase.
    pub ops: u64,
    /// Seconds of the timed phase.
    pub secs: f64,
    /// Seconds building the data.
    pub setup_secs: f64,
    /// Seconds of the whole child process.
    pub wall_secs: f64,
    /// Bytes the child read from memd.
    pub bytes_fetched: u64,
    /// Bytes the child wrote to memd.
    pub bytes_written: u64,
    /// Peak resident memory of the child (the memory group's peak under swap).
    pub peak_rss_bytes: u64,
    /// The run's checksum.
    pub checksum: String,
    /// Whether it equals local's.
    pub checksum_ok: bool,
    /// Why the run was skipped, if it was.
    pub skipped: Option<String>,
    /// Workload-specific figures.
    pub extra: Vec<(String, f64)>,
}

/// A memd for the modes that need one, started on loopback with a fresh token.
#[derive(Debug)]
pub struct Memd {
    server: RunningServer,
    dir: PathBuf,
    token_file: PathBuf,
}

impl Memd {
    /// Starts a memd that can hold `capacity` bytes.
    pub fn start(capacity: u64) -> Result<Memd> {
        let secret = farmem_memd::config::random_secret();
        let cred = Credential { tenant: "bench".into(), secret: secret.clone().into_bytes() };
        let server = server::start(ServerConfig::loopback(capacity, vec![cred])).context("start memd")?;
        let dir = farmem_memd::testing::private_dir();
        let token_file = dir.join("token");
        std::fs::write(&token_file, format!("bench:{secret}\n"))?;
        Ok(Memd { server, dir, token_file })
    }

    /// (bytes sent to clients, bytes received from clients) so far.
    pub fn traffic(&self) -> (u64, u64) {
        let g = &self.server.engine().global;
        (g.bytes_out.load(Relaxed), g.bytes_in.load(Relaxed))
    }

    fn env(&self, cmd: &mut Command) {
        cmd.env("FARMEM_SERVER", self.server.addr().to_string()).env("FARMEM_TOKEN_FILE", &self.token_file);
    }
}

impl Drop for Memd {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Why kernel swap cannot be used here, if it cannot.
pub fn swap_unavailable() -> Option<String> {
    if std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) != Some("0")))
        .unwrap_or(true)
    {
        return Some("swap mode needs root (to configure zram swap and a memory cgroup)".into());
    }
    if !Path::new("/sys/block/zram0").exists() {
        return Some("swap mode needs /dev/zram0 (modprobe zram)".into());
    }
    if !Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists() {
        return Some("swap mode needs the cgroup v1 memory controller at /sys/fs/cgroup/memory".into());
    }
    None
}

/// zram swap and a memory group for one swap-mode run; undone on drop.
#[derive(Debug)]
struct SwapGroup {
    cg: PathBuf,
    we_swapped: bool,
}

fn vmstat(key: &str) -> u64 {
    std::fs::read_to_string("/proc/vmstat")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok())))
        .unwrap_or(0)
}

impl SwapGroup {
    fn new(limit: u64) -> Result<SwapGroup> {
        let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
        let mut we_swapped = false;
        if !swaps.lines().any(|l| l.starts_with("/dev/zram0 ")) {
            let size = std::fs::read_to_string("/sys/block/zram0/disksize").unwrap_or_default();
            if size.trim() != "0" {
                std::fs::write("/sys/block/zram0/reset", "1").context("reset zram0")?;
            }
            std::fs::write("/sys/block/zram0/disksize", "8G").context("size zram0")?;
            let ok = |c: &mut Command| c.stdout(Stdio::null()).status().map(|s| s.success()).unwrap_or(false);
            if !ok(Command::new("mkswap").arg("/dev/zram0")) || !ok(Command::new("swapon").arg("/dev/zram0")) {
                bail!("could not enable zram swap (mkswap/swapon /dev/zram0 failed)");
            }
            we_swapped = true;
        }
        let cg = PathBuf::from(format!("/sys/fs/cgroup/memory/farmem-bench.{}", std::process::id()));
        std::fs::create_dir(&cg).with_context(|| format!("create {}", cg.display()))?;
        let g = SwapGroup { cg, we_swapped };
        std::fs::write(g.cg.join("memory.limit_in_bytes"), limit.to_string()).context("set the memory limit")?;
        // Swappiness 60 is the kernel default; set it explicitly so the group swaps like a default system.
        let _ = std::fs::write(g.cg.join("memory.swappiness"), "60");
        Ok(g)
    }

    fn peak(&self) -> u64 {
        std::fs::read_to_string(self.cg.join("memory.max_usage_in_bytes"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for SwapGroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.cg);
        if self.we_swapped {
            let _ = Command::new("swapoff").arg("/dev/zram0").status();
            let _ = std::fs::write("/sys/block/zram0/reset", "1");
        }
    }
}

/// What a run is checked and sized against: the local run of the same workload.
#[derive(Clone, Copy, Debug)]
pub struct Reference {
    /// Local's checksum.
    pub checksum: u64,
    /// Local's peak RSS minus the working set, at least [`MIN_BASELINE`].
    pub baseline: u64,
}

impl Reference {
    /// The reference a local run gives.
    pub fn of(local: &RunResult) -> Result<Reference> {
        Ok(Reference {
            checksum: u64::from_str_radix(&local.checksum, 16).context("local checksum")?,
            baseline: local.peak_rss_bytes.saturating_sub(local.working_set_bytes).max(MIN_BASELINE),
        })
    }
}

/// Runs one workload in one mode in a child process, checked against `reference` (none for local itself).
pub fn run(w: Workload, mode: Mode, local: f64, p: &Params, reference: Option<Reference>) -> Result<RunResult> {
    let expected = reference.map(|r| r.checksum);
    let ws = w.working_set(p);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a positive fraction of a size")]
    let budget = if mode == Mode::Local { ws } else { ((ws as f64 * local) as u64).max(4 << 20) };
    let mut res = RunResult {
        workload: w.name().into(),
        mode: mode.name().into(),
        local,
        budget_bytes: budget,
        working_set_bytes: ws,
        ..RunResult::default()
    };
    if mode == Mode::Swap {
        if let Some(why) = swap_unavailable() {
            res.skipped = Some(why);
            return Ok(res);
        }
    }
    let exe = std::env::current_exe().context("find farmem-bench's own path")?;
    let mut cmd = Command::new(&exe);
    let mut p2 = p.clone();
    p2.budget = budget;
    cmd.arg("exec").arg(w.name()).arg(mode.name()).arg(serde_json::to_string(&p2)?);
    cmd.stdin(Stdio::null()).stderr(Stdio::inherit());
    for v in ["FARMEM_SERVER", "FARMEM_TOKEN_FILE", "FARMEM_LOCAL_MEM", "FARMEM_THRESHOLD", "FARMEM_REQUIRED"] {
        cmd.env_remove(v);
    }
    // Every mode's small allocations go to mimalloc, which by default commits each thread's first segments
    // eagerly: with `--threads 16` that alone is tens of MB of resident memory that no mode uses (objects mode's
    // peak RSS went from 36 to 130 MB at 16 threads). Commit on demand and purge at once, in every mode alike.
    for (k, v) in [("MIMALLOC_EAGER_COMMIT", "0"), ("MIMALLOC_ARENA_EAGER_COMMIT", "0"), ("MIMALLOC_PURGE_DELAY", "0")]
    {
        if std::env::var_os(k).is_none() {
            cmd.env(k, v);
        }
    }
    let memd = if mode.uses_memd() { Some(Memd::start(4 * ws + (1 << 30))?) } else { None };
    if let Some(m) = &memd {
        m.env(&mut cmd);
        // The region's share of the budget: all of it for paging, the bulk data's part for hybrid.
        let share = if mode == Mode::Hybrid { 1.0 - w.hybrid_objrt_share(p).unwrap_or(0.0) } else { 1.0 };
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a positive fraction of a size")]
        let region_budget = ((budget as f64 * share) as u64).max(1 << 20);
        cmd.env("FARMEM_LOCAL_MEM", region_budget.to_string()).env("FARMEM_REQUIRED", "1");
    }
    let group = match mode {
        Mode::Swap => Some(SwapGroup::new(budget + reference.map_or(MIN_BASELINE, |r| r.baseline))?),
        _ => None,
    };
    let (in0, out0) = (vmstat("pswpin "), vmstat("pswpout "));
    let t = Instant::now();
    let traffic0 = memd.as_ref().map(Memd::traffic).unwrap_or_default();
    let output = match &group {
        // Only the child joins the group: `sh` moves itself in, then execs the workload.
        Some(g) => {
            let mut sh = Command::new("sh");
            sh.arg("-c").arg("echo $$ > \"$1/cgroup.procs\" && shift && exec \"$@\"").arg("farmem-bench").arg(&g.cg);
            sh.arg(&exe).args(cmd.get_args());
            for (k, v) in cmd.get_envs() {
                match v {
                    Some(v) => sh.env(k, v),
                    None => sh.env_remove(k),
                };
            }
            sh.stdin(Stdio::null()).stderr(Stdio::inherit()).output()?
        }
        None => cmd.output()?,
    };
    res.wall_secs = t.elapsed().as_secs_f64();
    if let Some(m) = &memd {
        let (o, i) = m.traffic();
        res.bytes_fetched = o - traffic0.0;
        res.bytes_written = i - traffic0.1;
    }
    if let (Some(g), Some(9)) = (&group, std::os::unix::process::ExitStatusExt::signal(&output.status)) {
        // The memory group's OOM killer: kernel swap could not keep the workload alive at this limit.
        res.skipped = Some(format!(
            "kernel swap: the memory group's OOM killer ended the workload at a limit of {} (budget + baseline; peak {})",
            format_size(budget + reference.map_or(MIN_BASELINE, |r| r.baseline)),
            format_size(g.peak())
        ));
        return Ok(res);
    }
    if !output.status.success() {
        bail!(
            "{} in {} mode failed ({}): {}",
            w.name(),
            mode.name(),
            output.status,
            String::from_utf8_lossy(&output.stdout)
        );
    }
    let line = String::from_utf8_lossy(&output.stdout);
    let child: ChildReport = serde_json::from_str(line.trim())
        .with_context(|| format!("{} {}: unreadable child report {line:?}", w.name(), mode.name()))?;
    if let Some(why) = child.skipped {
        res.skipped = Some(why);
        return Ok(res);
    }
    let o = child.outcome;
    res.ops = o.ops;
    res.secs = o.secs;
    res.setup_secs = o.setup_secs;
    res.throughput = o.ops as f64 / o.secs.max(1e-9);
    res.checksum = format!("{:016x}", o.checksum);
    res.checksum_ok = expected.is_none_or(|e| e == o.checksum);
    res.extra = o.extra;
    res.peak_rss_bytes = child.peak_rss;
    if let Some(g) = &group {
        res.peak_rss_bytes = g.peak();
        res.extra.push(("swap_ins".into(), (vmstat("pswpin ") - in0) as f64));
        res.extra.push(("swap_outs".into(), (vmstat("pswpout ") - out0) as f64));
    }
    if !res.checksum_ok {
        bail!(
            "{} in {} mode at {:.2} local computed checksum {} but local computed {:016x}: far memory returned wrong data",
            w.name(),
            mode.name(),
            local,
            res.checksum,
            expected.unwrap_or(0)
        );
    }
    Ok(res)
}

/// Runs `local` three times and returns the median-throughput run: it is the reference every other mode is
/// plotted against and sized by, and a single short run is at the mercy of a noisy machine.
pub fn run_local(w: Workload, p: &Params) -> Result<RunResult> {
    let mut runs = (0..3).map(|_| run(w, Mode::Local, 1.0, p, None)).collect::<Result<Vec<_>>>()?;
    if runs.iter().any(|r| r.checksum != runs[0].checksum) {
        bail!("{}: local runs disagree on the checksum: the workload is not deterministic", w.name());
    }
    runs.sort_by(|a, b| a.throughput.total_cmp(&b.throughput));
    Ok(runs.swap_remove(1))
}

/// What a child prints.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChildReport {
    /// The workload's outcome.
    pub outcome: Outcome,
    /// Peak resident set (VmHWM).
    pub peak_rss: u64,
    /// Set instead when this mode has no implementation for the workload.
    pub skipped: Option<String>,
}

/// The child's peak resident set in bytes.
pub fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmHWM:").and_then(|v| v.trim().trim_end_matches(" kB").parse().ok()))
        })
        .map_or(0, |kb: u64| kb * 1024)
}

/// Describes a budget for messages.
pub fn describe_budget(r: &RunResult) -> String {
    format!("{} of {}", format_size(r.budget_bytes), format_size(r.working_set_bytes))
}
