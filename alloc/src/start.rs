//! Starting far memory from the environment: a memd [`Client`] and a uffd [`Region`] over it.

use crate::config::AllocConfig;
use crate::far::{StartError, Started};
use crate::heap::{Backing, PagingStats, ReleaseError};
use farmem_memd::{Client, ClientConfig, FarStore};
use farmem_uffd::{Region, RegionConfig, PAGE_SIZE};
use std::sync::Arc;

/// A uffd region as the far heap's backing.
#[derive(Debug)]
pub struct RegionBacking(pub Region);

impl Backing for RegionBacking {
    fn base(&self) -> *mut u8 {
        self.0.base()
    }
    fn size(&self) -> usize {
        self.0.len()
    }
    fn release(&self, off: usize, len: usize) -> Result<(), ReleaseError> {
        self.0.release(off, len).map_err(|e| ReleaseError(Box::new(e)))
    }
    fn paging_stats(&self) -> PagingStats {
        let s = self.0.stats();
        let page = PAGE_SIZE as u64;
        PagingStats {
            faults: s.missing_faults,
            // On demand and read ahead: both came over the network.
            bytes_fetched: (s.pages_fetched + s.readahead_pages) * page,
            bytes_written_back: s.pages_written * page,
            peak_resident: s.peak_resident_pages * page,
        }
    }
}

/// How many live far bytes a store can take: its free capacity, less 1/8 for its own bookkeeping. Stores that
/// do not report a capacity are taken as unbounded.
pub fn store_limit(store: &dyn FarStore) -> Result<usize, StartError> {
    let stats = store.stats()?;
    let get = |k: &str| stats.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
    Ok(match (get("global.capacity"), get("global.bytes_stored")) {
        (Some(cap), Some(used)) => {
            let free = cap.saturating_sub(used);
            usize::try_from(free - free / 8).unwrap_or(usize::MAX)
        }
        _ => usize::MAX,
    })
}

/// Starts far memory on `store` with `cfg`.
pub fn start_on(store: Arc<dyn FarStore>, cfg: RegionConfig) -> Result<Started, StartError> {
    let limit = store_limit(&*store)?;
    let region = Region::new(cfg, store).map_err(|e| StartError::Region(e.to_string()))?;
    Ok((Box::new(RegionBacking(region)), limit))
}

/// Starts far memory from `FARMEM_SERVER`, `FARMEM_TOKEN_FILE`, `FARMEM_LOCAL_MEM`, `FARMEM_REGION_SIZE` and
/// `FARMEM_READAHEAD`.
pub fn start_from_env(_cfg: &AllocConfig) -> Result<Started, StartError> {
    let region_cfg = RegionConfig::from_env()?;
    let client_cfg: ClientConfig = ClientConfig::from_env()?.ok_or(StartError::NoServer)?;
    let client = Client::connect(client_cfg)?;
    start_on(Arc::new(client), region_cfg)
}
