//! farmem-uffd: the transparent paging path — a userfaultfd-managed far-memory region under a local-memory
//! budget.
//!
//! A [`Region`] reserves a large virtual range (`MAP_NORESERVE`, default 64 GiB) and registers it with a
//! userfaultfd for missing and write-protect faults. Pages live in memd (any [`farmem_memd::FarStore`]), keyed
//! by a fresh region id, and are cached locally up to a budget of frames. Several regions may exist in one
//! process; each has its own userfaultfd and threads.
//!
//! ## Threads
//! One **event thread** reads every userfaultfd message, in batches, and is the only thread that installs pages.
//! Having a single installer is what makes release-versus-install ordering race-free: a REMOVE event (the
//! program's `madvise`/`munmap`/`mremap`, or [`Region::release`]) is applied before any later fault is served,
//! and a page released while its fetch is in flight is skipped rather than installed with stale contents.
//! `handler_threads - 1` (at least one) **eviction threads** keep a reserve of free frames.
//! Optionally (`RegionConfig::follow_faults`, off by default), while the faults come from threads on one CPU, the
//! event and eviction threads are pinned to that CPU: a fault is a chain of thread wake-ups, and on a VM a wake-up
//! that crosses to a sleeping vCPU costs more than the whole chain on one CPU (see the `affinity` module).
//! Optionally (`RegionConfig::keep_awake`, `FARMEM_KEEP_AWAKE`, off by default; `auto` turns it on for small VMs
//! whose idle vCPUs halt without polling) one `SCHED_IDLE` **spinner** per CPU keeps the idle CPUs from halting
//! for 200 µs after each fault, so the chain's wake-ups find their CPUs awake: on a quiet 2-vCPU VM the region
//! fault went from 70–93 µs to 46–67 µs (a woken thread still lands on the other vCPU, and that hand-off is not
//! free), on a busy one it costs ~2 µs ([`awake`]).
//! While a demand fetch is out, the event thread polls memd's connection for the reply instead of sleeping in
//! `read` (`RegionConfig::reply_spin`, `FARMEM_REPLY_SPIN`, default 100 µs): waking it from a halted vCPU cost
//! more than the round trip, and the quiet VM's region fault went from 75–96 µs to 46–53 µs.
//!
//! ## Faults
//! - A never-written (or released) page is zero-filled with `UFFDIO_COPY` from a zero buffer — writable for a
//!   write fault, write-protected (`UFFDIO_COPY_MODE_WP`) for a read fault. `UFFDIO_ZEROPAGE` is not used: it
//!   has no write-protect mode, and protecting the zero page afterwards leaves a window in which another thread's
//!   write would go unseen and the page would later be dropped as clean.
//! - A page memd holds is fetched (`READ_PAGES`) and installed with `UFFDIO_COPY`, write-protected for reads
//!   (so it is known clean) and writable for writes (dirty from the start, saving a write-protect fault).
//! - A write-protect fault marks the page dirty and referenced and lifts the protection.
//! - `EEXIST` counts as installed; `EAGAIN` (a non-cooperative event is pending) makes the event thread read
//!   and apply pending events, then retry the rest of the run, skipping pages released meanwhile. While an
//!   eviction thread's own drop holds the ioctls off, the event thread sleeps until the drop is over.
//! - A write-protect fault's protection is lifted under the region lock, and only if the page is still mapped
//!   and dirty: eviction may have taken it meanwhile, and un-protecting it then would lose the write.
//! - Faults that find no free frame wait in a queue (the faulting threads stay blocked in the kernel) while the
//!   event thread keeps reading events; eviction signals an eventfd when frames are free.
//!
//! ## Dirty tracking: write-protect faults, not `WP_ASYNC` + `PAGEMAP_SCAN`
//! Pages are mapped write-protected and marked dirty on their first write fault, under the region lock, before
//! the write proceeds, so "clean" is exact. `UFFD_FEATURE_WP_ASYNC` would save that fault, but the kernel would
//! then resolve writes without telling us: eviction would have to learn dirtiness with `PAGEMAP_SCAN` and then
//! take the page out, and a write landing between the scan and the move (or the drop) would be discarded as
//! clean. With synchronous faults a write racing with eviction simply waits for it. The write-protect faults
//! also feed the replacement policy (below), and a write fault on a missing page installs it writable at once,
//! so only read-then-write pages pay the extra fault — except in a sequential stream whose trigger pages the
//! program keeps writing after reading them (`for x in v { *x = f(*x) }`): its read-ahead windows and demand
//! reads are then mapped writable and dirty from the start (see [`readahead`]), which saves that fault on every
//! page and costs a write-back for any of them the program then leaves unwritten.
//!
//! ## Budget and eviction
//! Resident pages (mapped, being fetched, or being evicted) hold one of `local_mem / 4 KiB` frames, so they
//! never exceed the budget. Readahead never takes the last *reserve* of free frames (1/16 of the budget,
//! 2–1024); eviction starts below 1.5 times the reserve and stops at twice it, so a stream's next window finds
//! frames while eviction refills them (starting only at the reserve stalled streams there). Victims come from a **CLOCK** over the frames whose reference bits are set by the
//! signals userfaultfd gives: a page is installed referenced, and a write-protect fault references it again.
//! When the hand passes a referenced dirty page it re-arms write protection, so a page that keeps being written
//! keeps its second chance; FIFO would evict it every revolution ([`sim`] compares both with exact LRU on
//! traces). Reads of resident pages give no signal (this kernel has no idle-page tracking and `PAGEMAP_SCAN`
//! reports no accessed bit). Free frames are reused first-in first-out, in the order the hand freed them, so
//! a stream's pages sit in frames in fetch order and a round's victims leave in one long run.
//!
//! Eviction is race-free in either of two ways. **Clean** victims (mapped write-protected, so memd holds their
//! contents, or they are zero) in runs of at least 16 contiguous pages (`RegionConfig::clean_drop_run`), as a
//! sequential scan leaves them, are dropped in place with one `MADV_DONTNEED` per run and no traffic: a write
//! racing the drop faults and waits until the eviction wakes it, a read after the drop refetches memd's identical
//! copy. Each such drop raises a REMOVE event the eviction waits for, so scattered clean victims are cheaper
//! moved out with the dirty ones. Where the kernel has `UFFDIO_MOVE`, **dirty** victims are **moved out** of
//! the region into the eviction thread's staging slots (a registered mapping of its own) in one atomic step per
//! run of contiguous pages: a racing access finds the page missing and waits until the eviction wakes it.
//! Otherwise (or for a page MOVE refuses, such as one still shared with a forked child) dirty victims are
//! **write-protected before they are copied out** — a racing write faults and waits — and dropped in place
//! too. A released page that the eviction thread is still reading for its write-back gets zeros mapped over it,
//! and only until its drop, which is what keeps a page from staying mapped behind the region's back. The
//! eviction thread records each range it drops so that the event thread does not mistake the REMOVE event it
//! raises for a release by the program. Dirty pages are written back in pipelined batches (several
//! `WRITE_PAGES` in flight before the first wait). Staging slots are emptied with one `MADV_DONTNEED` per round,
//! whose REMOVE event lies outside the region.
//!
//! ## Readahead
//! [`readahead::Detector`] tracks up to eight sequential or strided (±64 pages) streams of missing faults on
//! pages memd holds. After a stride repeats, the fault's batch read also asks for a window of pages ahead
//! (8 pages, doubling each time the stream continues, up to `max_readahead`), as batch reads of 64 pages sent
//! in one burst (one `writev`) after the demand page's. Reads stay in flight while the event thread goes on
//! reading events: it installs one arrived batch per turn (each run of contiguous pages with one `UFFDIO_COPY`
//! straight from the receive buffer), so faults are served between batches. One page in the middle of each
//! window, the *trigger*, is fetched but held unmapped by the event thread: the program's fault on it (even
//! before its batch has arrived) asks for the next window while the rest of the current one is still arriving
//! or ahead of the program, so the server always has a window to send and fetching overlaps the program's
//! progress. A window only uses frames above the eviction reserve, so it never
//! pushes pages out, and prefetched pages are installed referenced so the CLOCK does not take them before the
//! program reaches them.
//!
//! A scan's cost is nearly all fixed kernel work per page: installing (`UFFDIO_COPY`: allocation, memcg charge,
//! PTE, LRU), receiving, and dropping on eviction. Installing readahead batches on a second thread was tried and
//! not kept: the install path stayed serial on that thread (1.2 µs/page, as on the event thread), and copies on two
//! CPUs at once cost more CPU per page than the overlap saved on our 2-vCPU VM (scan 0.31–0.41× against 0.37–0.43×).
//!
//! ## Release
//! [`Region::release`] (and the program's own `madvise(DONTNEED)`, `munmap`, `mremap`, seen as REMOVE, UNMAP and
//! REMAP events) drops local copies and deletes memd copies, so released memory reads zeros, never stale data.
//!
//! ## Failure
//! memd calls that fail transiently are retried with exponential back-off; the network client itself retries
//! reconnection until its own deadline. When memd is gone for good, a message naming the server goes to stderr
//! once and every fault that needs memd is answered with `UFFDIO_POISON`, so the access raises SIGBUS instead
//! of hanging.
//!
//! ## Fork
//! See [`fork`]: pages resident at fork are inherited, pages that live in memd are made inaccessible in the
//! child, whose access then dies with a message naming the region's server — never silent zeros.
//!
//! ## Living under a global allocator
//! Metadata sized by the region (a state byte and a frame number per page) is mapped directly, not allocated.
//! Region threads call `farmem_memd::internal::mark_thread` first and public methods run inside
//! `farmem_memd::internal::enter`, so an allocator built on a region never routes their allocations into it.
//!
//! ## Limits
//! Without `UFFDIO_MOVE`, in-place eviction recognises its own REMOVE events by their exact range, so the
//! region's mapping should then not be split into several VMAs (`mprotect`/`mlock` of part of it).
//! `handler_threads` counts the event thread plus the eviction threads; faults are served by the one event
//! thread (with many requests in flight), which is what orders installs with releases.
#![cfg(target_os = "linux")]

/// Keeping the event and eviction threads on the faulting thread's CPU.
mod affinity;
/// Keeping idle CPUs from halting while faults flow.
pub mod awake;
/// What a forked child sees of a region.
pub mod fork;
/// Anonymous mappings for the reservation and per-page metadata.
pub mod mem;
/// The raw userfaultfd ioctls (the only place they are issued from).
pub mod raw;
/// Sequential and strided fault-stream detection.
pub mod readahead;
/// The region: fault handling, budget, eviction, release, statistics.
pub mod region;
/// Replacement-policy simulator (region CLOCK vs FIFO vs exact LRU).
pub mod sim;

pub use region::{Region, RegionConfig, RegionError, RegionStats};

/// The page size the region works in (memd's page size).
pub const PAGE_SIZE: usize = farmem_memd::PAGE_SIZE;

#[cfg(not(target_pointer_width = "64"))]
compile_error!("farmem-uffd needs a 64-bit target");

/// `usize` → `u64` (lossless on the 64-bit targets this crate builds for).
pub(crate) fn as_u64(x: usize) -> u64 {
    x as u64
}

/// `u64` → `usize` (lossless on the 64-bit targets this crate builds for).
#[allow(clippy::cast_possible_truncation, reason = "the crate only builds for 64-bit targets")]
pub(crate) fn as_usize(x: u64) -> usize {
    x as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Region>();
        check::<RegionStats>();
    }

    #[test]
    fn config_from_env_names_the_bad_variable() {
        // Only this test touches these variables.
        std::env::set_var("FARMEM_LOCAL_MEM", "12Q");
        let e = RegionConfig::from_env().unwrap_err();
        assert_eq!(e.source_name, "FARMEM_LOCAL_MEM");
        std::env::set_var("FARMEM_LOCAL_MEM", "256M");
        std::env::set_var("FARMEM_REGION_SIZE", "1G");
        std::env::set_var("FARMEM_READAHEAD", "0");
        let c = RegionConfig::from_env().unwrap();
        assert_eq!((c.local_mem, c.size, c.readahead), (256 << 20, 1 << 30, false));
        std::env::set_var("FARMEM_READAHEAD", "maybe");
        assert_eq!(RegionConfig::from_env().unwrap_err().source_name, "FARMEM_READAHEAD");
        std::env::set_var("FARMEM_READAHEAD", "1");
        assert!(RegionConfig::from_env().unwrap().write_ahead, "on by default");
        std::env::set_var("FARMEM_WRITE_AHEAD", "0");
        assert!(!RegionConfig::from_env().unwrap().write_ahead);
        std::env::set_var("FARMEM_WRITE_AHEAD", "sometimes");
        assert_eq!(RegionConfig::from_env().unwrap_err().source_name, "FARMEM_WRITE_AHEAD");
        std::env::set_var("FARMEM_WRITE_AHEAD", "1");
        std::env::set_var("FARMEM_KEEP_AWAKE", "350");
        assert_eq!(RegionConfig::from_env().unwrap().keep_awake, std::time::Duration::from_micros(350));
        std::env::set_var("FARMEM_KEEP_AWAKE", "auto");
        assert_eq!(RegionConfig::from_env().unwrap().keep_awake, crate::awake::default_window());
        for off in ["0", "off"] {
            std::env::set_var("FARMEM_KEEP_AWAKE", off);
            assert!(RegionConfig::from_env().unwrap().keep_awake.is_zero());
        }
        for bad in ["-1", "200us", "2000000"] {
            std::env::set_var("FARMEM_KEEP_AWAKE", bad);
            let e = RegionConfig::from_env().unwrap_err();
            assert_eq!(e.source_name, "FARMEM_KEEP_AWAKE", "{bad:?}");
        }
        std::env::set_var("FARMEM_KEEP_AWAKE", "0");
        assert_eq!(RegionConfig::from_env().unwrap().reply_spin, RegionConfig::default().reply_spin);
        std::env::set_var("FARMEM_REPLY_SPIN", "40");
        assert_eq!(RegionConfig::from_env().unwrap().reply_spin, std::time::Duration::from_micros(40));
        std::env::set_var("FARMEM_REPLY_SPIN", "off");
        assert!(RegionConfig::from_env().unwrap().reply_spin.is_zero());
        for bad in ["fast", "1.5", "1000001"] {
            std::env::set_var("FARMEM_REPLY_SPIN", bad);
            let e = RegionConfig::from_env().unwrap_err();
            assert_eq!(e.source_name, "FARMEM_REPLY_SPIN", "{bad:?}");
        }
        for v in [
            "FARMEM_LOCAL_MEM",
            "FARMEM_REGION_SIZE",
            "FARMEM_READAHEAD",
            "FARMEM_WRITE_AHEAD",
            "FARMEM_KEEP_AWAKE",
            "FARMEM_REPLY_SPIN",
        ] {
            std::env::remove_var(v);
        }
    }

    #[test]
    fn bad_configs_are_clear_errors() {
        let store: std::sync::Arc<dyn farmem_memd::FarStore> = std::sync::Arc::new(farmem_memd::MemStore::new(1 << 20));
        let e = Region::new(RegionConfig { local_mem: 4096, ..RegionConfig::default() }, store.clone()).unwrap_err();
        assert!(e.to_string().contains("local_mem"), "{e}");
        let e = Region::new(RegionConfig { size: 0, ..RegionConfig::default() }, store.clone()).unwrap_err();
        assert!(e.to_string().contains("size"), "{e}");
        let e = Region::new(RegionConfig { handler_threads: 0, ..RegionConfig::default() }, store).unwrap_err();
        assert!(e.to_string().contains("handler_threads"), "{e}");
    }
}
