//! `memd`: run the far-memory server, or talk to one (ping, stats, bench).

use anyhow::{bail, Context, Result};
use farmem_memd::config::{self, Addr, Credential};
use farmem_memd::server::{self, ServerConfig};
use farmem_memd::{Client, ClientConfig, FarStore};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const USAGE: &str = "usage:
  memd serve [--listen ADDR] [--capacity SIZE] --token-file F [--workers N]
  memd ping  --server ADDR --token-file F [--count N]
  memd stats --server ADDR --token-file F
  memd bench --server ADDR --token-file F [--seconds N]   (N per figure, default 7)
ADDR is host:port (default 127.0.0.1:7070) or unix:/path; SIZE like 512M or 8G (default 8G).
The token file holds one `tenant:secret` per line (a bare secret means tenant `default`).
FARMEM_LOG sets the log filter (default info for serve, warn otherwise).";

struct Args {
    rest: Vec<String>,
}

impl Args {
    fn take(&mut self, flag: &str) -> Result<Option<String>> {
        let Some(i) = self.rest.iter().position(|a| a == flag) else {
            return Ok(None);
        };
        if i + 1 >= self.rest.len() {
            bail!("{flag} needs a value\n{USAGE}");
        }
        let v = self.rest.remove(i + 1);
        self.rest.remove(i);
        Ok(Some(v))
    }
    fn done(&self) -> Result<()> {
        if let Some(a) = self.rest.first() {
            bail!("unexpected argument {a:?}\n{USAGE}");
        }
        Ok(())
    }
}

fn init_logs(default: &str) -> Result<()> {
    let filter = config::env_str("FARMEM_LOG")?.unwrap_or_else(|| default.to_string());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).with_context(|| format!("FARMEM_LOG={filter:?}"))?;
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    Ok(())
}

fn client(args: &mut Args) -> Result<Client> {
    let server = args.take("--server")?.context("--server ADDR is required")?;
    let addr = Addr::parse(&server).map_err(|m| anyhow::anyhow!("--server: {m}"))?;
    let file = args.take("--token-file")?.context("--token-file F is required")?;
    let cred: Credential = config::read_tokens(&PathBuf::from(&file))?.swap_remove(0);
    let mut cfg = ClientConfig::new(addr, cred);
    cfg.connections = 1;
    cfg.reconnect_timeout = Duration::from_secs(3);
    Ok(Client::connect(cfg)?)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("memd: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.is_empty() || argv.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return Ok(());
    }
    let cmd = argv.remove(0);
    let mut args = Args { rest: argv };
    match cmd.as_str() {
        "serve" => {
            init_logs("info")?;
            let listen = args.take("--listen")?.unwrap_or_else(|| "127.0.0.1:7070".into());
            let listen = Addr::parse(&listen).map_err(|m| anyhow::anyhow!("--listen: {m}"))?;
            let capacity = args.take("--capacity")?.unwrap_or_else(|| "8G".into());
            let capacity = config::parse_size(&capacity).map_err(|m| anyhow::anyhow!("--capacity: {m}"))?;
            let file = args.take("--token-file")?.context("--token-file F is required (one tenant:secret a line)")?;
            let tokens = config::read_tokens(&PathBuf::from(&file))?;
            let workers = match args.take("--workers")? {
                Some(w) => w.parse().with_context(|| format!("--workers {w:?} is not a number"))?,
                None => 2,
            };
            args.done()?;
            let mut cfg = ServerConfig::loopback(capacity, tokens);
            cfg.listen = listen;
            cfg.workers = workers;
            let running = server::serve_until_signal(cfg).context("cannot start the server")?;
            println!("listening on {} (capacity {})", running.addr(), config::format_size(capacity));
            running.join();
            Ok(())
        }
        "ping" => {
            init_logs("warn")?;
            let count: u32 = match args.take("--count")? {
                Some(c) => c.parse().with_context(|| format!("--count {c:?} is not a number"))?,
                None => 5,
            };
            let c = client(&mut args)?;
            args.done()?;
            for _ in 0..count.max(1) {
                let t = Instant::now();
                c.ping()?;
                println!("pong from {} in {:.1} us", c.describe(), t.elapsed().as_secs_f64() * 1e6);
            }
            Ok(())
        }
        "stats" => {
            init_logs("warn")?;
            let c = client(&mut args)?;
            args.done()?;
            for (k, v) in c.stats()? {
                println!("{k:<28} {v}");
            }
            Ok(())
        }
        "bench" => {
            init_logs("warn")?;
            let secs: f64 = match args.take("--seconds")? {
                Some(s) => s.parse().with_context(|| format!("--seconds {s:?} is not a number"))?,
                None => 7.0,
            };
            let c = client(&mut args)?;
            args.done()?;
            println!("{:<46} {:>12} {:>10} {:>9}  ratio", "figure", "ops/s", "GB/s", "mean us");
            let out = farmem_memd::bench::run_all(&c, secs)?;
            for (f, ratio) in &out {
                let mean = f.mean_us.map_or(String::new(), |m| format!("{m:.1}"));
                println!(
                    "{:<46} {:>12.0} {:>10.3} {:>9}  {}",
                    f.name,
                    f.ops_per_sec,
                    f.bytes_per_sec / 1e9,
                    mean,
                    ratio
                );
            }
            let get = |prefix: &str| out.iter().find(|(f, _)| f.name.starts_with(prefix)).map(|(_, r)| r.clone());
            let ops =
                out.iter().find(|(f, _)| f.name.starts_with("batched 64 B object writes")).map(|(f, _)| f.ops_per_sec);
            println!(
                "summary: page read RTT {} | pipelined reads {} | batched reads {} | batched writes {} | 64 B object writes {:.2} M ops/s",
                get("page read round trip").unwrap_or_default(),
                get("pipelined page reads").unwrap_or_default(),
                get("batched page reads").unwrap_or_default(),
                get("batched page writes").unwrap_or_default(),
                ops.unwrap_or(0.0) / 1e6
            );
            Ok(())
        }
        other => bail!("unknown command {other:?}\n{USAGE}"),
    }
}
