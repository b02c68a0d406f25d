//! Metadata overhead of the page store: `overhead [GIB]` fills an in-process store with GIB GiB of pages
//! (default 4) and prints the bookkeeping bytes the store counts (hash tables, slab tables, free lists, value
//! headers) per stored byte, and what the process's resident memory grew by beyond the stored bytes (which also
//! sees what the allocator keeps per allocation).
use farmem_memd::{FarStore, MemStore, PAGE_SIZE};

fn main() {
    let gib: u64 = std::env::args().nth(1).map_or(4, |a| a.parse().expect("GIB is a whole number"));
    let rss0 = rss();
    let store = MemStore::new(gib << 30);
    const BATCH: usize = 256;
    let batch = BATCH as u64;
    let data = vec![0xabu8; BATCH * PAGE_SIZE];
    let pages = (gib << 30) / PAGE_SIZE as u64;
    let t = std::time::Instant::now();
    for start in (0..pages).step_by(BATCH) {
        let ids: Vec<u64> = (start..start + batch).collect();
        store.write_pages(1, &ids, &data).expect("fits the capacity");
    }
    let grown = rss().saturating_sub(rss0);
    let (meta, values) = store.engine().footprint();
    let stored = store.engine().used();
    println!(
        "{} pages ({} bytes) stored in {:.1} s; values take {} bytes; metadata {} bytes = {:.2}% of stored bytes",
        pages,
        stored,
        t.elapsed().as_secs_f64(),
        values,
        meta,
        meta as f64 * 100.0 / stored as f64
    );
    println!(
        "resident memory grew by {} bytes: {:.2}% more than the stored bytes",
        grown,
        (grown as f64 - stored as f64) * 100.0 / stored as f64
    );
}

/// Resident bytes of this process (VmRSS), or 0 where /proc is missing.
fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
