//! Raw userfaultfd system interface: the `userfaultfd(2)` syscall, the `UFFDIO_*` ioctls and event reads.
//!
//! Nothing else lives here. Struct layouts come from `linux-raw-sys` (pre-generated uapi bindings of
//! `<linux/userfaultfd.h>`); the two request numbers it does not export (`UFFDIO_MOVE`, `UFFDIO_POISON`) are
//! computed as the kernel's `_IOWR(UFFDIO, nr, struct)` does. Mode bits the bindings lack are
//! written out below with their uapi names.
//!
//! Every ioctl that can make partial progress (`COPY`, `ZEROPAGE`, `POISON`) reports how many bytes it handled
//! before failing, because the kernel stores a negative errno or a byte count in the struct's result field; a
//! negative count is never reinterpreted as a length.
//!
//! # Safety
//! The ioctls write into caller-chosen addresses of the caller's own address space. The wrappers are safe
//! functions because the kernel validates that every destination lies in a range registered with this
//! userfaultfd and never touches memory outside it; the caller only decides *which* registered pages are
//! filled, which is a correctness (not memory-safety) question for the region code.

use linux_raw_sys::general as g;
use linux_raw_sys::ioctl as io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `UFFDIO_WRITEPROTECT_MODE_WP`: set write protection (clear it when absent).
pub const WRITEPROTECT_MODE_WP: u64 = 1 << 0;
/// `UFFDIO_WRITEPROTECT_MODE_DONTWAKE`: do not wake threads waiting on the range when un-protecting.
pub const WRITEPROTECT_MODE_DONTWAKE: u64 = 1 << 1;
/// `UFFDIO_COPY_MODE_DONTWAKE`.
pub const COPY_MODE_DONTWAKE: u64 = g::UFFDIO_COPY_MODE_DONTWAKE as u64;
/// `UFFDIO_COPY_MODE_WP`: install the pages write-protected.
pub const COPY_MODE_WP: u64 = g::UFFDIO_COPY_MODE_WP as u64;
/// `UFFDIO_ZEROPAGE_MODE_DONTWAKE`.
pub const ZEROPAGE_MODE_DONTWAKE: u64 = g::UFFDIO_ZEROPAGE_MODE_DONTWAKE as u64;

/// Event codes of `uffd_msg.event`.
pub const EVENT_PAGEFAULT: u8 = 0x12;
/// `UFFD_EVENT_REMAP`.
pub const EVENT_REMAP: u8 = 0x14;
/// `UFFD_EVENT_REMOVE`.
pub const EVENT_REMOVE: u8 = 0x15;
/// `UFFD_EVENT_UNMAP`.
pub const EVENT_UNMAP: u8 = 0x16;
const _: () = assert!(EVENT_PAGEFAULT as u32 == g::UFFD_EVENT_PAGEFAULT);
const _: () = assert!(EVENT_REMAP as u32 == g::UFFD_EVENT_REMAP);
const _: () = assert!(EVENT_REMOVE as u32 == g::UFFD_EVENT_REMOVE);
const _: () = assert!(EVENT_UNMAP as u32 == g::UFFD_EVENT_UNMAP);

/// Page-fault flag: the access was a write.
pub const PAGEFAULT_FLAG_WRITE: u64 = g::UFFD_PAGEFAULT_FLAG_WRITE as u64;
/// Page-fault flag: a write hit a write-protected page.
pub const PAGEFAULT_FLAG_WP: u64 = g::UFFD_PAGEFAULT_FLAG_WP as u64;

/// Feature bits negotiated by [`Uffd::api`].
pub const FEATURE_PAGEFAULT_FLAG_WP: u64 = g::UFFD_FEATURE_PAGEFAULT_FLAG_WP as u64;
/// `UFFD_FEATURE_EVENT_REMAP`.
pub const FEATURE_EVENT_REMAP: u64 = g::UFFD_FEATURE_EVENT_REMAP as u64;
/// `UFFD_FEATURE_EVENT_REMOVE`.
pub const FEATURE_EVENT_REMOVE: u64 = g::UFFD_FEATURE_EVENT_REMOVE as u64;
/// `UFFD_FEATURE_EVENT_UNMAP`.
pub const FEATURE_EVENT_UNMAP: u64 = g::UFFD_FEATURE_EVENT_UNMAP as u64;
/// `UFFD_FEATURE_POISON`.
pub const FEATURE_POISON: u64 = g::UFFD_FEATURE_POISON as u64;
/// `UFFD_FEATURE_MOVE`.
pub const FEATURE_MOVE: u64 = g::UFFD_FEATURE_MOVE as u64;
/// `UFFD_FEATURE_THREAD_ID`: page-fault messages carry the faulting thread's id.
pub const FEATURE_THREAD_ID: u64 = g::UFFD_FEATURE_THREAD_ID as u64;

/// `UFFDIO_REGISTER_MODE_MISSING`.
pub const REGISTER_MODE_MISSING: u64 = g::UFFDIO_REGISTER_MODE_MISSING as u64;
/// `UFFDIO_REGISTER_MODE_WP`.
pub const REGISTER_MODE_WP: u64 = g::UFFDIO_REGISTER_MODE_WP as u64;

/// `_IOWR(0xAA, nr, size)`: direction read|write (3) in bits 30-31, size in bits 16-29, type, number.
const fn iowr(nr: u32, size: usize) -> u32 {
    #[allow(clippy::cast_possible_truncation, reason = "uffdio structs are a few dozen bytes")]
    let size = size as u32;
    (3 << 30) | (size << 16) | (g::UFFDIO << 8) | nr
}
/// `UFFDIO_MOVE` = `_IOWR(UFFDIO, _UFFDIO_MOVE, struct uffdio_move)`.
const UFFDIO_MOVE: u32 = iowr(g::_UFFDIO_MOVE, std::mem::size_of::<g::uffdio_move>());
/// `UFFDIO_POISON` = `_IOWR(UFFDIO, _UFFDIO_POISON, struct uffdio_poison)`.
const UFFDIO_POISON: u32 = iowr(g::_UFFDIO_POISON, std::mem::size_of::<g::uffdio_poison>());
// The computation reproduces the numbers linux-raw-sys does export.
const _: () = assert!(iowr(g::_UFFDIO_COPY, std::mem::size_of::<g::uffdio_copy>()) == io::UFFDIO_COPY);
const _: () = assert!(iowr(g::_UFFDIO_ZEROPAGE, std::mem::size_of::<g::uffdio_zeropage>()) == io::UFFDIO_ZEROPAGE);
const _: () = assert!(std::mem::size_of::<g::uffd_msg>() == 32);

/// A failed userfaultfd operation: which one, its errno, and the bytes it handled before failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{op} failed after {done} bytes: {}", std::io::Error::from_raw_os_error(*errno))]
pub struct RawError {
    /// The operation (`UFFDIO_COPY`, `read`, ...).
    pub op: &'static str,
    /// The errno.
    pub errno: i32,
    /// Bytes handled before the failure (0 where the operation is all-or-nothing).
    pub done: usize,
}

impl RawError {
    fn last(op: &'static str, done: usize) -> RawError {
        RawError { op, errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO), done }
    }
}

/// One userfaultfd message: a page fault or a non-cooperative event, decoded from `struct uffd_msg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Msg {
    /// A thread faulted at `addr` (page aligned by the kernel unless EXACT_ADDRESS) with `flags`.
    PageFault {
        /// Faulting address.
        addr: u64,
        /// `PAGEFAULT_FLAG_*`.
        flags: u64,
        /// The faulting thread's id (0 unless the descriptor has [`FEATURE_THREAD_ID`]).
        tid: u32,
    },
    /// `madvise(DONTNEED/REMOVE)` of `[start, end)`.
    Remove {
        /// Range start.
        start: u64,
        /// Range end.
        end: u64,
    },
    /// `munmap` of `[start, end)`.
    Unmap {
        /// Range start.
        start: u64,
        /// Range end.
        end: u64,
    },
    /// `mremap` of `len` bytes from `from` to `to`.
    Remap {
        /// Old address.
        from: u64,
        /// New address.
        to: u64,
        /// Length.
        len: u64,
    },
    /// An event this code did not ask for (fork), reported with its code.
    Other(u8),
}

/// An open userfaultfd.
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
}

fn ioctl<T>(fd: &OwnedFd, req: u32, arg: &mut T) -> libc::c_int {
    // SAFETY: `arg` points at a live, properly laid out uapi struct matching `req` (each caller pairs the
    // request number with its struct); the kernel reads and writes only that struct and memory it validates
    // as registered with this userfaultfd.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::c_ulong::from(req), std::ptr::from_mut(arg)) }
}

impl Uffd {
    /// Opens a non-blocking, close-on-exec userfaultfd that also handles kernel-mode faults (a `read(2)` into a
    /// region buffer), falling back to user-mode-only where that needs a privilege the process lacks.
    pub fn open() -> Result<Uffd, RawError> {
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
        // SAFETY: userfaultfd(2) takes an int flags argument and returns a new descriptor or -1.
        let mut fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
        if fd < 0 {
            let user_only = flags | i32::try_from(g::UFFD_USER_MODE_ONLY).unwrap_or(1);
            // SAFETY: as above.
            fd = unsafe { libc::syscall(libc::SYS_userfaultfd, user_only) };
        }
        if fd < 0 {
            return Err(RawError::last("userfaultfd", 0));
        }
        let fd = i32::try_from(fd).map_err(|_| RawError { op: "userfaultfd", errno: libc::EBADF, done: 0 })?;
        // SAFETY: the syscall just returned this descriptor and nothing else owns it.
        Ok(Uffd { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// `UFFDIO_API`: negotiates `features` (every bit must be granted) and returns the kernel's full feature set.
    pub fn api(&self, features: u64) -> Result<u64, RawError> {
        let mut a = g::uffdio_api { api: u64::from(g::UFFD_API), features, ioctls: 0 };
        if ioctl(&self.fd, io::UFFDIO_API, &mut a) != 0 {
            return Err(RawError::last("UFFDIO_API", 0));
        }
        Ok(a.features)
    }

    /// `UFFDIO_REGISTER` of `[start, start+len)` with `mode`; returns the ioctl bitmask the range supports.
    pub fn register(&self, start: u64, len: u64, mode: u64) -> Result<u64, RawError> {
        let mut r = g::uffdio_register { range: g::uffdio_range { start, len }, mode, ioctls: 0 };
        if ioctl(&self.fd, io::UFFDIO_REGISTER, &mut r) != 0 {
            return Err(RawError::last("UFFDIO_REGISTER", 0));
        }
        Ok(r.ioctls)
    }

    /// `UFFDIO_COPY`: copies `len` bytes from `src` into the registered range at `dst`.
    pub fn copy(&self, dst: u64, src: *const u8, len: u64, mode: u64) -> Result<(), RawError> {
        let mut c = g::uffdio_copy { dst, src: src as u64, len, mode, copy: 0 };
        let rc = ioctl(&self.fd, io::UFFDIO_COPY, &mut c);
        result("UFFDIO_COPY", rc, c.copy)
    }

    /// `UFFDIO_ZEROPAGE`: maps the zero page over `[start, start+len)`.
    pub fn zeropage(&self, start: u64, len: u64, mode: u64) -> Result<(), RawError> {
        let mut z = g::uffdio_zeropage { range: g::uffdio_range { start, len }, mode, zeropage: 0 };
        let rc = ioctl(&self.fd, io::UFFDIO_ZEROPAGE, &mut z);
        result("UFFDIO_ZEROPAGE", rc, z.zeropage)
    }

    /// `UFFDIO_WRITEPROTECT`: sets (`WRITEPROTECT_MODE_WP`) or clears write protection of present pages.
    pub fn writeprotect(&self, start: u64, len: u64, mode: u64) -> Result<(), RawError> {
        let mut w = g::uffdio_writeprotect { range: g::uffdio_range { start, len }, mode };
        if ioctl(&self.fd, io::UFFDIO_WRITEPROTECT, &mut w) != 0 {
            return Err(RawError::last("UFFDIO_WRITEPROTECT", 0));
        }
        Ok(())
    }

    /// `UFFDIO_MOVE`: moves the present pages at `src` to the empty range `dst` (registered with this
    /// userfaultfd) atomically: a thread touching `src` afterwards takes a missing fault.
    pub fn move_pages(&self, dst: u64, src: u64, len: u64) -> Result<(), RawError> {
        let mut m = g::uffdio_move { dst, src, len, mode: 0, move_: 0 };
        let rc = ioctl(&self.fd, UFFDIO_MOVE, &mut m);
        result("UFFDIO_MOVE", rc, m.move_)
    }

    /// `UFFDIO_WAKE`: wakes threads waiting on faults in the range (they retry the access).
    pub fn wake(&self, start: u64, len: u64) -> Result<(), RawError> {
        let mut r = g::uffdio_range { start, len };
        if ioctl(&self.fd, io::UFFDIO_WAKE, &mut r) != 0 {
            return Err(RawError::last("UFFDIO_WAKE", 0));
        }
        Ok(())
    }

    /// `UFFDIO_POISON`: marks missing pages poisoned, so an access raises SIGBUS.
    pub fn poison(&self, start: u64, len: u64) -> Result<(), RawError> {
        let mut p = g::uffdio_poison { range: g::uffdio_range { start, len }, mode: 0, updated: 0 };
        let rc = ioctl(&self.fd, UFFDIO_POISON, &mut p);
        result("UFFDIO_POISON", rc, p.updated)
    }

    /// Reads pending messages without blocking into `out`; returns how many were read (0 when none is pending).
    pub fn read_msgs(&self, out: &mut Vec<Msg>, max: usize) -> Result<usize, RawError> {
        const N: usize = 64;
        let mut buf = [g::uffd_msg {
            event: 0,
            reserved1: 0,
            reserved2: 0,
            reserved3: 0,
            arg: g::uffd_msg__bindgen_ty_1 {
                reserved: g::uffd_msg__bindgen_ty_1__bindgen_ty_5 { reserved1: 0, reserved2: 0, reserved3: 0 },
            },
        }; N];
        let want = max.clamp(1, N);
        // SAFETY: `buf` is writable for `want` whole messages; read(2) on a userfaultfd writes whole messages.
        let n = unsafe {
            libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), want * std::mem::size_of::<g::uffd_msg>())
        };
        if n < 0 {
            let e = RawError::last("read(userfaultfd)", 0);
            return if e.errno == libc::EAGAIN { Ok(0) } else { Err(e) };
        }
        let count = usize::try_from(n).unwrap_or(0) / std::mem::size_of::<g::uffd_msg>();
        for m in &buf[..count] {
            out.push(decode(m));
        }
        Ok(count)
    }

    /// The descriptor, for `poll(2)`.
    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }
}

fn decode(m: &g::uffd_msg) -> Msg {
    let arg = m.arg;
    // SAFETY (for each union read below): `event` says which member the kernel filled in; every member is
    // plain integers, so any bit pattern is a valid value.
    match m.event {
        EVENT_PAGEFAULT => {
            // SAFETY: see above.
            let pf = unsafe { arg.pagefault };
            // SAFETY: `feat` is a union of one `u32`; the kernel fills it with the thread id or leaves it zero.
            let tid = unsafe { pf.feat.ptid };
            Msg::PageFault { addr: pf.address, flags: pf.flags, tid }
        }
        EVENT_REMOVE | EVENT_UNMAP => {
            // SAFETY: see above.
            let r = unsafe { arg.remove };
            if m.event == EVENT_REMOVE {
                Msg::Remove { start: r.start, end: r.end }
            } else {
                Msg::Unmap { start: r.start, end: r.end }
            }
        }
        EVENT_REMAP => {
            // SAFETY: see above.
            let r = unsafe { arg.remap };
            Msg::Remap { from: r.from, to: r.to, len: r.len }
        }
        e => Msg::Other(e),
    }
}

/// Folds an ioctl return code and the struct's result field (bytes handled, or a negative errno) into a result.
fn result(op: &'static str, rc: libc::c_int, field: i64) -> Result<(), RawError> {
    if rc == 0 {
        return Ok(());
    }
    let e = RawError::last(op, usize::try_from(field).unwrap_or(0));
    Err(e)
}

/// `madvise(MADV_DONTNEED)` of `[start, start+len)`: drops the pages (a registered range reports it as a REMOVE
/// event and the call blocks until a handler reads that event).
pub fn dontneed(start: u64, len: u64) -> Result<(), RawError> {
    let addr = usize::try_from(start).map_err(|_| RawError { op: "madvise", errno: libc::EINVAL, done: 0 })?;
    let len = usize::try_from(len).map_err(|_| RawError { op: "madvise", errno: libc::EINVAL, done: 0 })?;
    // SAFETY: MADV_DONTNEED on a private anonymous range of our own mapping only discards page contents; the
    // caller ensures the range lies in the region it owns.
    if unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_DONTNEED) } != 0 {
        return Err(RawError::last("madvise(MADV_DONTNEED)", 0));
    }
    Ok(())
}
