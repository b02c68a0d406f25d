//! Pipelined one-page reads against a memd, for profiling: `pipeline ADDR TOKEN_FILE SECONDS DEPTH`.
use farmem_memd::config::{read_tokens, Addr};
use farmem_memd::{Client, ClientConfig, FarStore, Request};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 5 {
        return Err("usage: pipeline ADDR TOKEN_FILE SECONDS DEPTH".into());
    }
    let cred = read_tokens(a[2].as_ref())?.swap_remove(0);
    let c = Client::connect(ClientConfig::new(Addr::parse(&a[1])?, cred))?;
    let (secs, depth): (f64, usize) = (a[3].parse()?, a[4].parse()?);
    c.write_pages(1, &[0], &[1u8; 4096])?;
    let mut q = VecDeque::new();
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < Duration::from_secs_f64(secs) {
        if q.len() <= depth / 2 {
            let burst = (0..depth - q.len()).map(|_| Request::ReadPages { region: 1, pages: vec![0] }).collect();
            q.extend(c.submit_many(burst)?);
        }
        q.pop_front().unwrap().wait()?;
        n += 1;
    }
    println!("{:.0} reads/s", n as f64 / t.elapsed().as_secs_f64());
    Ok(())
}
