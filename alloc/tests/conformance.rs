//! The malloc family's semantics on both sides of the threshold, with FarAlloc as this test binary's own global
//! allocator over an anonymous span (no memd, no userfaultfd: routing, alignment, zeroing and moves only).
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "test byte patterns wrap on purpose")]

use farmem_alloc::config::AllocConfig;
use farmem_alloc::{AnonSpan, FarAlloc, StartError, Started};
use std::ffi::c_void;
use std::ptr;

const T: usize = 64 << 10;

fn start_anon(_: &AllocConfig) -> Result<Started, StartError> {
    let span = AnonSpan::new(16 << 30).map_err(|e| StartError::Region(e.to_string()))?;
    Ok((Box::new(span), usize::MAX))
}

#[global_allocator]
static A: FarAlloc = FarAlloc::with_start(start_anon, T);

fn errno() -> i32 {
    // SAFETY: reads this thread's errno.
    unsafe { *libc::__errno_location() }
}

fn clear_errno() {
    // SAFETY: writes this thread's errno.
    unsafe { *libc::__errno_location() = 0 };
}

const SIZES: [usize; 12] = [0, 1, 15, 16, 100, 4095, 4096, T - 1, T, T + 1, 3 << 20, (5 << 20) + 17];

fn fill(p: *mut c_void, n: usize, seed: u8) {
    for i in 0..n {
        // SAFETY: the test owns n writable bytes at p.
        unsafe { *p.cast::<u8>().add(i) = seed.wrapping_add(i as u8) };
    }
}

fn check(p: *const c_void, n: usize, seed: u8) {
    for i in 0..n {
        // SAFETY: the test owns n readable bytes at p.
        let b = unsafe { *p.cast::<u8>().add(i) };
        assert_eq!(b, seed.wrapping_add(i as u8), "byte {i} of {n}");
    }
}

#[test]
fn malloc_usable_size_and_routing() {
    assert!(A.start_now(), "far memory starts over an anonymous span");
    for &n in &SIZES {
        let p = A.malloc(n);
        assert!(!p.is_null());
        assert!(
            (p as usize).is_multiple_of(8) && (n < 16 || n % 16 != 0 || (p as usize).is_multiple_of(16)),
            "malloc({n}) = {p:p}"
        );
        assert_eq!(A.is_far(p), n >= T, "size {n}");
        // SAFETY: p is live.
        let u = unsafe { A.usable_size(p) };
        assert!(u >= n, "usable {u} < {n}");
        fill(p, u, 7);
        check(p, u, 7);
        // SAFETY: p is live and freed once.
        unsafe { A.free(p) };
    }
    // SAFETY: null is accepted by free and usable_size.
    unsafe {
        A.free(ptr::null_mut());
        assert_eq!(A.usable_size(ptr::null_mut()), 0);
    }
}

#[test]
fn alignment_family() {
    for &n in &SIZES {
        for align in [8usize, 16, 64, 4096, 1 << 16, 2 << 20] {
            let mut p: *mut c_void = ptr::null_mut();
            // SAFETY: &mut p is writable.
            assert_eq!(unsafe { A.posix_memalign(&mut p, align, n) }, 0);
            assert_eq!(p as usize % align, 0, "posix_memalign({align}, {n})");
            fill(p, n, 1);
            let q = A.aligned_alloc(align, n);
            assert_eq!(q as usize % align, 0, "aligned_alloc({align}, {n})");
            let r = A.memalign(align, n);
            assert_eq!(r as usize % align, 0, "memalign({align}, {n})");
            check(p, n, 1);
            // SAFETY: live blocks, each freed once.
            unsafe {
                assert!(A.usable_size(p) >= n && A.usable_size(q) >= n && A.usable_size(r) >= n);
                A.free(p);
                A.free(q);
                A.free(r);
            }
        }
        let v = A.valloc(n);
        let pv = A.pvalloc(n);
        assert_eq!(v as usize % 4096, 0);
        assert_eq!(pv as usize % 4096, 0);
        // SAFETY: live blocks, each freed once.
        unsafe {
            assert!(A.usable_size(pv) >= n.div_ceil(4096).max(1) * 4096);
            A.free(v);
            A.free(pv);
        }
    }
    let mut p: *mut c_void = ptr::null_mut();
    for bad in [0usize, 3, 4, 12, 24] {
        // SAFETY: &mut p is writable.
        assert_eq!(unsafe { A.posix_memalign(&mut p, bad, 10) }, libc::EINVAL, "posix_memalign({bad})");
        assert!(p.is_null(), "out is untouched on failure");
        clear_errno();
        assert!(A.aligned_alloc(bad + 3 * usize::from(bad == 0), 10).is_null() || bad == 4);
    }
    clear_errno();
    assert!(A.aligned_alloc(48, 10).is_null());
    assert_eq!(errno(), libc::EINVAL);
    // memalign rounds a non-power-of-two alignment up.
    let m = A.memalign(48, 100);
    assert_eq!(m as usize % 64, 0);
    // SAFETY: live block.
    unsafe { A.free(m) };
    clear_errno();
    assert!(A.memalign(usize::MAX, 10).is_null());
    assert_eq!(errno(), libc::EINVAL);
    clear_errno();
    assert!(A.pvalloc(usize::MAX - 10).is_null());
    assert_eq!(errno(), libc::ENOMEM);
    let mut p: *mut c_void = ptr::null_mut();
    // SAFETY: &mut p is writable.
    assert_eq!(unsafe { A.posix_memalign(&mut p, 4096, usize::MAX - 8192) }, libc::ENOMEM);
    assert!(p.is_null());
}

#[test]
fn calloc_zeroes_and_checks_overflow() {
    for &n in &SIZES {
        // Dirty memory of this size first, so a reused block would show stale bytes.
        let d = A.malloc(n.max(1));
        fill(d, n, 0xAA);
        // SAFETY: live block.
        unsafe { A.free(d) };
        let p = A.calloc(1, n);
        assert!(!p.is_null());
        // SAFETY: p holds n readable bytes.
        assert!(unsafe { std::slice::from_raw_parts(p.cast::<u8>(), n) }.iter().all(|&b| b == 0), "calloc({n})");
        // SAFETY: live block.
        unsafe { A.free(p) };
    }
    // The threshold applies to the product.
    let p = A.calloc(T / 8, 8);
    assert!(A.is_far(p));
    // SAFETY: live block.
    unsafe { A.free(p) };
    for (a, b) in [(usize::MAX / 2, 3), (usize::MAX, 2), (1 << 33, 1 << 33)] {
        clear_errno();
        assert!(A.calloc(a, b).is_null());
        assert_eq!(errno(), libc::ENOMEM);
    }
    clear_errno();
    assert!(A.malloc(usize::MAX - 4096).is_null());
    assert_eq!(errno(), libc::ENOMEM);
}

#[test]
fn realloc_moves_across_the_threshold_both_ways() {
    // SAFETY: every pointer passed is live; the old one is not used after a successful realloc.
    unsafe {
        let mut p = A.realloc(ptr::null_mut(), 100);
        fill(p, 100, 3);
        let mut kept = 100;
        for n in [T - 1, T, 3 << 20, 9 << 20, 2 << 20, T + 5, 5000, 64, (7 << 20) + 1, 10] {
            p = A.realloc(p, n);
            assert!(!p.is_null());
            assert_eq!(A.is_far(p), n >= T, "realloc to {n}");
            kept = kept.min(n);
            check(p, kept, 3);
            fill(p, n, 3);
            kept = n;
        }
        assert!(A.realloc(p, 0).is_null(), "realloc(p, 0) frees, as glibc does");
        // Failure leaves the block intact.
        let q = A.malloc(T * 2);
        fill(q, T * 2, 9);
        clear_errno();
        assert!(A.realloc(q, usize::MAX - 4096).is_null());
        assert_eq!(errno(), libc::ENOMEM);
        check(q, T * 2, 9);
        let r = A.reallocarray(q, usize::MAX / 4, 8);
        assert!(r.is_null());
        assert_eq!(errno(), libc::ENOMEM);
        let r = A.reallocarray(q, 3, T);
        check(r, T * 2, 9);
        A.free(r);
    }
}

#[test]
fn rust_collections_grow_into_far_memory() {
    let mut v: Vec<u64> = Vec::new();
    for i in 0..(4u64 << 20) {
        v.push(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    }
    assert!(A.is_far(v.as_ptr().cast()));
    let sum = v.iter().fold(0u64, |a, &x| a.wrapping_add(x));
    let want = (0..(4u64 << 20)).fold(0u64, |a, i| a.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    assert_eq!(sum, want);
    v.truncate(10);
    v.shrink_to_fit();
    assert!(!A.is_far(v.as_ptr().cast()));
    assert_eq!(v[9], 9u64.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let z = vec![0u8; 3 << 20];
    assert!(A.is_far(z.as_ptr().cast()) && z.iter().all(|&b| b == 0));
    #[repr(align(4096))]
    struct Page([u8; 4096]);
    let pages: Vec<Page> = (0..64).map(|i| Page([i as u8; 4096])).collect();
    assert_eq!(pages.as_ptr() as usize % 4096, 0);
    assert!(pages.iter().enumerate().all(|(i, p)| p.0.iter().all(|&b| b == i as u8)));
}

#[test]
fn threads_stress() {
    let handles: Vec<_> = (0..4u64)
        .map(|t| {
            std::thread::spawn(move || {
                let mut rng = t.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
                let mut live: Vec<(Vec<u8>, u8)> = Vec::new();
                for i in 0..1500u32 {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let n = if rng % 16 == 0 { T + (rng as usize % (1 << 20)) } else { 1 + rng as usize % 2048 };
                    let tag = (i % 251) as u8;
                    live.push((vec![tag; n], tag));
                    if live.len() > 24 {
                        let k = (rng >> 8) as usize % live.len();
                        let (mut v, tag) = live.swap_remove(k);
                        assert!(v.iter().all(|&b| b == tag));
                        v.resize(v.len() * 2 + 1, tag);
                        assert!(v.iter().all(|&b| b == tag));
                    }
                }
                for (v, tag) in live {
                    assert!(v.iter().all(|&b| b == tag));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let s = A.heap_stats().unwrap();
    assert!(s.allocations > 0);
}
