//! Metadata overhead of the page store: `overhead [GIB]` fills an in-process store with GIB GiB of pages
//! (default 4) and prints the bookkeeping bytes (hash tables, slab tables, free lists) per stored byte.
use farmem_memd::{FarStore, MemStore, PAGE_SIZE};

fn main() {
    let gib: u64 = std::env::args().nth(1).map_or(4, |a| a.parse().expect("GIB is a whole number"));
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
    let (meta, slabs) = store.engine().footprint();
    let stored = store.engine().used();
    println!(
        "{} pages ({} bytes) stored in {:.1} s; slabs reserve {} bytes; metadata {} bytes = {:.2}% of stored bytes",
        pages,
        stored,
        t.elapsed().as_secs_f64(),
        slabs,
        meta,
        meta as f64 * 100.0 / stored as f64
    );
}
