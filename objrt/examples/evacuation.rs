//! Far objects under a small budget: 64 MiB of data through an 8 MiB local heap, every value checked, then the
//! runtime's counters. Runs on an in-process far store, or on memd when `FARMEM_SERVER` and `FARMEM_TOKEN_FILE`
//! are set.
//!
//! `cargo run --release -p farmem-objrt --example evacuation`

use farmem_objrt::{DerefScope, FarBox, Runtime, RuntimeConfig};
use std::sync::Arc;

type Page = [u64; 512]; // 4 KiB

fn value(i: u64, round: u64) -> u64 {
    i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ round
}

pub fn main() {
    let store: Arc<dyn farmem_memd::FarStore> = match farmem_memd::ClientConfig::from_env() {
        Ok(Some(c)) => Arc::new(farmem_memd::Client::connect(c).expect("connect to memd")),
        Ok(None) => Arc::new(farmem_memd::MemStore::new(1 << 30)),
        Err(e) => panic!("{e}"),
    };
    let rt = Runtime::new(RuntimeConfig::new(8 << 20), store).expect("start the runtime");
    let n = 16 * 1024u64; // 16 Ki pages = 64 MiB
    let mut pages: Vec<FarBox<Page>> = (0..n).map(|i| FarBox::new_in(&rt, [value(i, 0); 512])).collect();
    for round in 1..3 {
        for (i, p) in pages.iter_mut().enumerate() {
            let i = i as u64;
            let s = DerefScope::new();
            let mut page = p.deref_mut(&s);
            assert!(page.iter().all(|&x| x == value(i, round - 1)), "page {i} round {round}");
            page.fill(value(i, round));
        }
    }
    for (i, p) in pages.iter().enumerate() {
        assert_eq!(p.read()[511], value(i as u64, 2));
    }
    let st = rt.stats();
    println!(
        "64 MiB through an 8 MiB heap: {} misses, {} MiB in, {} MiB out, {} evacuation cycles, peak {} of {} regions",
        st.misses,
        st.bytes_in >> 20,
        st.bytes_out >> 20,
        st.evac_cycles,
        st.peak_regions,
        (8 << 20) / st.region_size
    );
}
