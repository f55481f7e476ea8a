//! Safe Rust bindings to `/dev/xpmem`, the XPMEM user ABI offered by the
//! virtio-xpmem guest driver (and by the native XPMEM module).
//!
//! Objects release themselves: a [`Segment`] is removed, a [`Permit`]
//! released and an [`Attachment`] detached when dropped. Lifetimes keep the
//! order right: an attachment borrows its permit (releasing a permit detaches
//! its attachments), and a segment made with [`Xpmem::export`] borrows the
//! [`SharedBuffer`] it exports.
//!
//! Shared memory can change under the program at any time (another process,
//! maybe in another VM, writes it), so the safe views are slices of atomics;
//! plain pointers are there for code that does its own synchronisation.
//!
//! ```no_run
//! use xpmem::{Access, Mode, SharedBuffer, Xpmem};
//! use std::sync::atomic::Ordering;
//!
//! let dev = Xpmem::open()?;
//! let buf = SharedBuffer::new(1 << 20)?;
//! buf.as_atomic_u64()[0].store(42, Ordering::Release);
//! let seg = dev.export(&buf, Mode::EVERYONE)?;
//! println!("segid {}", seg.id());
//! // In another process or VM, given the segid:
//! let permit = dev.get(seg.id(), Access::ReadWrite)?;
//! let att = permit.attach(0, 1 << 20)?;
//! assert_eq!(att.as_atomic_u64().unwrap()[0].load(Ordering::Acquire), 42);
//! # Ok::<(), xpmem::Error>(())
//! ```

pub mod abi;
mod error;

use std::fmt;
use std::fs::OpenOptions;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::ptr::NonNull;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicU8};
use std::sync::Arc;

pub use error::{Error, Op, Result};

/// The driver's version (`XPMEM_CMD_VERSION`): 12-bit major, 16-bit minor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version(pub u32);

impl Version {
    /// Major number (bits 16..28).
    pub fn major(self) -> u32 {
        (self.0 >> 16) & 0xfff
    }

    /// Minor number (bits 0..16).
    pub fn minor(self) -> u32 {
        self.0 & 0xffff
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:x} ({:#010x})", self.major(), self.minor(), self.0)
    }
}

/// Permission bits of an exported segment, checked IPC style against the
/// importer's uid/gid (e.g. 0o600: only the exporter's uid).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(u32);

impl Mode {
    /// 0o600: the exporter's uid only.
    pub const OWNER_ONLY: Mode = Mode(0o600);
    /// 0o666: everyone the host's domain policy admits.
    pub const EVERYONE: Mode = Mode(0o666);

    /// Mode bits; `None` if any bit above 0o777 is set.
    pub fn new(bits: u32) -> Option<Mode> {
        (bits & !0o777 == 0).then_some(Mode(bits))
    }

    /// The bits.
    pub fn bits(self) -> u32 {
        self.0
    }
}

/// The access a permit grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read-only: attachments are mapped read-only.
    ReadOnly,
    /// Read and write.
    ReadWrite,
}

impl Access {
    fn flags(self) -> i32 {
        match self {
            Access::ReadOnly => abi::XPMEM_RDONLY,
            Access::ReadWrite => abi::XPMEM_RDWR,
        }
    }
}

/// A segment id: positive, passed between processes (and VMs) by the
/// application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SegId(i64);

impl SegId {
    /// A segment id from its raw value; `None` unless positive.
    pub fn from_raw(raw: i64) -> Option<SegId> {
        (raw > 0).then_some(SegId(raw))
    }

    /// The raw `xpmem_segid_t`.
    pub fn raw(self) -> i64 {
        self.0
    }
}

impl fmt::Display for SegId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Error parsing a [`SegId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a segment id: {0:?} (expected a positive decimal or 0x-prefixed hex number)")]
pub struct ParseSegIdError(String);

impl FromStr for SegId {
    type Err = ParseSegIdError;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let t = s.trim();
        let raw = match t.strip_prefix("0x") {
            Some(hex) => i64::from_str_radix(hex, 16),
            None => t.parse::<i64>(),
        };
        raw.ok()
            .and_then(SegId::from_raw)
            .ok_or_else(|| ParseSegIdError(s.to_string()))
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let ps = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(ps).ok().filter(|&p| p > 0).unwrap_or(4096)
}

/// An open `/dev/xpmem`. Cheap to clone; every object keeps it open.
///
/// The driver treats each (open file, process) pair as one owner: ids made
/// through one `Xpmem` cannot be used through another.
#[derive(Debug, Clone)]
pub struct Xpmem {
    fd: Arc<OwnedFd>,
}

impl Xpmem {
    /// Opens [`abi::XPMEM_DEV_PATH`].
    pub fn open() -> Result<Xpmem> {
        Xpmem::open_path(abi::XPMEM_DEV_PATH)
    }

    /// Opens the device at `path`.
    pub fn open_path(path: impl AsRef<Path>) -> Result<Xpmem> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| Error::Open {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Xpmem {
            fd: Arc::new(OwnedFd::from(file)),
        })
    }

    fn ioctl<T>(&self, op: Op, cmd: u32, arg: *mut T) -> Result<i32> {
        // SAFETY: the descriptor is open for the lifetime of `self`; `arg` is
        // null (VERSION) or points to a live #[repr(C)] argument struct of the
        // layout the driver expects for `cmd` (checked in abi's tests), which
        // the driver reads and writes only within its size.
        let ret = unsafe { libc::ioctl(self.fd.as_raw_fd(), cmd as _, arg) };
        if ret < 0 {
            Err(Error::from_os(op, io::Error::last_os_error()))
        } else {
            Ok(ret)
        }
    }

    /// The driver's version. Works without a virtio-xpmem device.
    pub fn version(&self) -> Result<Version> {
        let v = self.ioctl(
            Op::Version,
            abi::XPMEM_CMD_VERSION,
            std::ptr::null_mut::<u8>(),
        )?;
        Ok(Version(v as u32))
    }

    /// Exports `buf` with the given mode. The segment is removed when dropped.
    pub fn export<'a>(&self, buf: &'a SharedBuffer, mode: Mode) -> Result<Segment<'a>> {
        // SAFETY: the buffer is only ever accessed through atomics or raw
        // pointers, so writes by importers cannot break Rust's aliasing
        // rules, and the returned segment borrows it, so it outlives the
        // segment.
        let segid = unsafe { self.make_raw(buf.as_ptr(), buf.len(), mode)? };
        Ok(Segment {
            dev: self.clone(),
            segid,
            _buf: PhantomData,
        })
    }

    /// Exports `[addr, addr + len)` of this process (`len` may be
    /// [`abi::XPMEM_MAXADDR_SIZE`]) and returns the raw id; nothing removes it
    /// but [`Xpmem::remove`] or closing the device.
    ///
    /// # Safety
    ///
    /// Importers may read and write the range at any time, including memory
    /// that Rust code holds references to. The caller must make sure no
    /// reference into the range assumes exclusive or immutable access while
    /// the segment exists.
    pub unsafe fn make_raw(&self, addr: *const u8, len: usize, mode: Mode) -> Result<SegId> {
        let ps = page_size();
        if addr as usize % ps != 0 {
            return Err(Error::InvalidArgument {
                op: Op::Make,
                detail: "address not page-aligned",
            });
        }
        if len == 0 || (len != abi::XPMEM_MAXADDR_SIZE && len % ps != 0) {
            return Err(Error::InvalidArgument {
                op: Op::Make,
                detail: "size zero or not a multiple of the page size",
            });
        }
        let mut cmd = abi::CmdMake {
            vaddr: addr as u64,
            size: len,
            permit_type: abi::XPMEM_PERMIT_MODE,
            permit_value: u64::from(mode.bits()),
            segid: 0,
        };
        self.ioctl(Op::Make, abi::XPMEM_CMD_MAKE, &mut cmd)?;
        SegId::from_raw(cmd.segid).ok_or(Error::InvalidArgument {
            op: Op::Make,
            detail: "driver returned a non-positive segid",
        })
    }

    /// Removes a segment made with [`Xpmem::make_raw`].
    pub fn remove(&self, segid: SegId) -> Result<()> {
        let mut cmd = abi::CmdRemove { segid: segid.raw() };
        self.ioctl(Op::Remove, abi::XPMEM_CMD_REMOVE, &mut cmd)
            .map(drop)
    }

    /// Gives a segment of this process a name, unique among all VMs of the
    /// setup, by which programs in any VM find it ([`Xpmem::search`]). A
    /// segment keeps its name until it is removed. Names are 1 to
    /// [`abi::XPMEM_NAME_MAX`] printable ASCII bytes without spaces.
    pub fn name(&self, segid: SegId, name: &str) -> Result<()> {
        let mut cmd = abi::CmdName {
            segid: segid.raw(),
            name: name_field(Op::Name, name)?,
        };
        self.ioctl(Op::Name, abi::XPMEM_CMD_NAME, &mut cmd)
            .map(drop)
    }

    /// The segment named `name`, if this VM may import from its VM
    /// ([`Error::NotFound`] otherwise).
    pub fn search(&self, name: &str) -> Result<SegId> {
        let mut cmd = abi::CmdSearch {
            name: name_field(Op::Search, name)?,
            segid: 0,
        };
        self.ioctl(Op::Search, abi::XPMEM_CMD_SEARCH, &mut cmd)?;
        SegId::from_raw(cmd.segid).ok_or(Error::InvalidArgument {
            op: Op::Search,
            detail: "driver returned a non-positive segid",
        })
    }

    /// Gets a permit for a segment (possibly of another VM).
    pub fn get(&self, segid: SegId, access: Access) -> Result<Permit> {
        let mut cmd = abi::CmdGet {
            segid: segid.raw(),
            flags: access.flags(),
            permit_type: abi::XPMEM_PERMIT_MODE,
            permit_value: 0,
            apid: 0,
        };
        self.ioctl(Op::Get, abi::XPMEM_CMD_GET, &mut cmd)?;
        if cmd.apid <= 0 {
            return Err(Error::InvalidArgument {
                op: Op::Get,
                detail: "driver returned a non-positive apid",
            });
        }
        Ok(Permit {
            dev: self.clone(),
            apid: cmd.apid,
            access,
        })
    }
}

/// The NUL-padded name field of NAME and SEARCH.
fn name_field(op: Op, name: &str) -> Result<[u8; abi::XPMEM_NAME_MAX + 1]> {
    if name.is_empty() || name.len() > abi::XPMEM_NAME_MAX {
        return Err(Error::InvalidArgument {
            op,
            detail: "a name has 1 to 63 bytes",
        });
    }
    if !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::InvalidArgument {
            op,
            detail: "a name has only printable ASCII bytes without spaces",
        });
    }
    let mut field = [0; abi::XPMEM_NAME_MAX + 1];
    field[..name.len()].copy_from_slice(name.as_bytes());
    Ok(field)
}

/// Anonymous memory to export, accessed through atomics.
#[derive(Debug)]
pub struct SharedBuffer {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer is plain memory, only handed out as atomics or raw
// pointers; nothing in it is tied to a thread.
unsafe impl Send for SharedBuffer {}
// SAFETY: as above; shared access goes through atomics.
unsafe impl Sync for SharedBuffer {}

impl SharedBuffer {
    /// Maps `len` bytes (rounded up to whole pages) of zeroed memory.
    pub fn new(len: usize) -> Result<SharedBuffer> {
        let ps = page_size();
        let len =
            len.checked_next_multiple_of(ps)
                .filter(|&l| l > 0)
                .ok_or(Error::InvalidArgument {
                    op: Op::Make,
                    detail: "buffer length zero or too large",
                })?;
        // SAFETY: an anonymous private mapping at an address of the kernel's
        // choosing; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Error::from_os(Op::Make, io::Error::last_os_error()));
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or(Error::NoSpace { op: Op::Make })?;
        Ok(SharedBuffer { ptr, len })
    }

    /// Length in bytes (whole pages).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: buffers have at least one page.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The start address.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The buffer as bytes.
    pub fn as_atomic_u8(&self) -> &[AtomicU8] {
        // SAFETY: the mapping is `len` bytes, readable and writable, alive as
        // long as `self`; AtomicU8 has the size and alignment of u8 and allows
        // concurrent modification by importers.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<AtomicU8>(), self.len) }
    }

    /// The buffer as 64-bit words.
    pub fn as_atomic_u64(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is page-aligned (so 8-byte aligned) and `len`
        // is a multiple of the page size; see `as_atomic_u8`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<AtomicU64>(), self.len / 8) }
    }
}

impl Drop for SharedBuffer {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `new`; no borrow of it
        // outlives `self` (segments and slices borrow the buffer).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// An exported segment; removed (its attachments revoked) when dropped.
#[derive(Debug)]
pub struct Segment<'a> {
    dev: Xpmem,
    segid: SegId,
    _buf: PhantomData<&'a SharedBuffer>,
}

impl Segment<'_> {
    /// The id to hand to importers.
    pub fn id(&self) -> SegId {
        self.segid
    }

    /// Names the segment (see [`Xpmem::name`]).
    pub fn name(&self, name: &str) -> Result<()> {
        self.dev.name(self.segid, name)
    }

    /// Removes the segment, reporting errors (dropping ignores them).
    pub fn remove(self) -> Result<()> {
        let r = self.dev.remove(self.segid);
        std::mem::forget(self);
        r
    }
}

impl Drop for Segment<'_> {
    fn drop(&mut self) {
        // Errors cannot be reported from drop; use `remove` to see them.
        let _ = self.dev.remove(self.segid);
    }
}

/// A permit to attach a segment; released when dropped.
#[derive(Debug)]
pub struct Permit {
    dev: Xpmem,
    apid: i64,
    access: Access,
}

impl Permit {
    /// The access this permit grants.
    pub fn access(&self) -> Access {
        self.access
    }

    /// The raw `xpmem_apid_t`.
    pub fn raw(&self) -> i64 {
        self.apid
    }

    /// Maps `len` bytes of the segment from byte `offset` (a multiple of the
    /// page size, as natively; `len` is rounded up to whole pages) at an
    /// address the kernel chooses. Pages are fetched on first touch.
    pub fn attach(&self, offset: usize, len: usize) -> Result<Attachment<'_>> {
        self.attach_inner(offset, len, 0)
    }

    /// Like [`Permit::attach`], at the fixed page-aligned address `addr`
    /// (`MAP_FIXED`).
    ///
    /// # Safety
    ///
    /// Whatever was mapped at `[addr, addr + len)` is replaced: no live Rust
    /// object may be there.
    pub unsafe fn attach_at(
        &self,
        offset: usize,
        len: usize,
        addr: NonNull<u8>,
    ) -> Result<Attachment<'_>> {
        if addr.as_ptr() as usize % page_size() != 0 {
            return Err(Error::InvalidArgument {
                op: Op::Attach,
                detail: "fixed address not page-aligned",
            });
        }
        self.attach_inner(offset, len, addr.as_ptr() as u64)
    }

    fn attach_inner(&self, offset: usize, len: usize, vaddr: u64) -> Result<Attachment<'_>> {
        if offset % page_size() != 0 {
            return Err(Error::InvalidArgument {
                op: Op::Attach,
                detail: "offset not a multiple of the page size",
            });
        }
        let offset = libc::off_t::try_from(offset).map_err(|_| Error::InvalidArgument {
            op: Op::Attach,
            detail: "offset too large",
        })?;
        if len == 0 {
            return Err(Error::InvalidArgument {
                op: Op::Attach,
                detail: "zero length",
            });
        }
        let mut cmd = abi::CmdAttach {
            apid: self.apid,
            offset,
            size: len,
            vaddr,
            fd: -1,
            // A read-only permit already gives a read-only attachment.
            flags: 0,
        };
        self.dev
            .ioctl(Op::Attach, abi::XPMEM_CMD_ATTACH, &mut cmd)?;
        let ptr = NonNull::new(cmd.vaddr as *mut u8).ok_or(Error::InvalidArgument {
            op: Op::Attach,
            detail: "driver returned a null address",
        })?;
        Ok(Attachment {
            permit: self,
            ptr,
            len,
        })
    }

    /// Releases the permit, reporting errors (dropping ignores them).
    pub fn release(self) -> Result<()> {
        let r = self.release_inner();
        std::mem::forget(self);
        r
    }

    fn release_inner(&self) -> Result<()> {
        let mut cmd = abi::CmdRelease { apid: self.apid };
        self.dev
            .ioctl(Op::Release, abi::XPMEM_CMD_RELEASE, &mut cmd)
            .map(drop)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let _ = self.release_inner();
    }
}

/// A mapping of (part of) another process's segment; detached when dropped.
///
/// Touching it after the exporter went away raises SIGBUS; writing a
/// read-only attachment raises SIGSEGV.
#[derive(Debug)]
pub struct Attachment<'p> {
    permit: &'p Permit,
    ptr: NonNull<u8>,
    len: usize,
}

impl Attachment<'_> {
    /// Start address (the segment byte `offset` given to attach).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: attachments are at least one byte long.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True if mapped read-only.
    pub fn is_read_only(&self) -> bool {
        self.permit.access == Access::ReadOnly
    }

    /// The attachment as bytes.
    pub fn as_atomic_u8(&self) -> &[AtomicU8] {
        // SAFETY: the driver mapped `len` bytes at `ptr` for as long as the
        // attachment exists (munmap by others is prevented by the borrow);
        // other processes modify it concurrently, which atomics allow.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<AtomicU8>(), self.len) }
    }

    /// The attachment as 64-bit words, if its start is 8-byte aligned.
    pub fn as_atomic_u64(&self) -> Option<&[AtomicU64]> {
        if self.ptr.as_ptr() as usize % std::mem::align_of::<AtomicU64>() != 0 {
            return None;
        }
        // SAFETY: aligned as checked; `len / 8` words lie inside the mapping;
        // see `as_atomic_u8`.
        Some(unsafe {
            std::slice::from_raw_parts(self.ptr.as_ptr().cast::<AtomicU64>(), self.len / 8)
        })
    }

    /// Detaches, reporting errors (dropping ignores them).
    pub fn detach(self) -> Result<()> {
        let r = self.detach_inner();
        std::mem::forget(self);
        r
    }

    fn detach_inner(&self) -> Result<()> {
        let mut cmd = abi::CmdDetach {
            vaddr: self.ptr.as_ptr() as u64,
        };
        self.permit
            .dev
            .ioctl(Op::Detach, abi::XPMEM_CMD_DETACH, &mut cmd)
            .map(drop)
    }
}

impl Drop for Attachment<'_> {
    fn drop(&mut self) {
        let _ = self.detach_inner();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn version_fields() {
        let v = Version(0x0002_7004);
        assert_eq!(v.major(), 2);
        assert_eq!(v.minor(), 0x7004);
        assert_eq!(v.to_string(), "2.7004 (0x00027004)");
        assert_eq!(Version(0xfff_ffff).major(), 0xfff);
    }

    #[test]
    fn mode_rejects_bits_above_0777() {
        assert_eq!(Mode::new(0o640).map(Mode::bits), Some(0o640));
        assert_eq!(Mode::new(0o1777), None);
        assert_eq!(Mode::EVERYONE.bits(), 0o666);
    }

    #[test]
    fn segid_parsing() {
        assert_eq!("42".parse::<SegId>().map(SegId::raw), Ok(42));
        assert_eq!(" 0x2a\n".parse::<SegId>().map(SegId::raw), Ok(42));
        assert!("0".parse::<SegId>().is_err());
        assert!("-5".parse::<SegId>().is_err());
        assert!("segid".parse::<SegId>().is_err());
        assert_eq!(SegId::from_raw(-1), None);
    }

    #[test]
    fn access_flags_are_the_abi_ones() {
        assert_eq!(Access::ReadOnly.flags(), abi::XPMEM_RDONLY);
        assert_eq!(Access::ReadWrite.flags(), abi::XPMEM_RDWR);
    }

    #[test]
    fn open_missing_device_names_the_path() {
        let err = Xpmem::open_path("/nonexistent/xpmem").unwrap_err();
        match &err {
            Error::Open { path, source } => {
                assert_eq!(path, Path::new("/nonexistent/xpmem"));
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains("/nonexistent/xpmem"));
    }

    #[test]
    fn ioctl_on_a_non_xpmem_file_maps_the_errno() {
        // /dev/null rejects unknown ioctls with ENOTTY: an Os error that
        // names the operation.
        let dev = Xpmem::open_path("/dev/null").expect("open /dev/null");
        let err = dev.version().unwrap_err();
        assert!(
            matches!(
                err,
                Error::Os {
                    op: Op::Version,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn make_checks_alignment_before_the_driver() {
        // /dev/null would answer ENOTTY: getting InvalidArgument proves the
        // check ran locally.
        let dev = Xpmem::open_path("/dev/null").expect("open /dev/null");
        let buf = SharedBuffer::new(2 * page_size()).expect("buffer");
        // SAFETY: the call fails before anything is exported.
        let unaligned = unsafe { dev.make_raw(buf.as_ptr().add(1), page_size(), Mode::EVERYONE) };
        assert!(matches!(
            unaligned,
            Err(Error::InvalidArgument { op: Op::Make, .. })
        ));
        // SAFETY: as above.
        let odd = unsafe { dev.make_raw(buf.as_ptr(), 100, Mode::EVERYONE) };
        assert!(matches!(odd, Err(Error::InvalidArgument { .. })));
        // SAFETY: as above.
        let empty = unsafe { dev.make_raw(buf.as_ptr(), 0, Mode::EVERYONE) };
        assert!(matches!(empty, Err(Error::InvalidArgument { .. })));
        // A well-formed request reaches the "driver" (/dev/null: ENOTTY).
        let reached = dev.export(&buf, Mode::EVERYONE);
        assert!(matches!(reached, Err(Error::Os { op: Op::Make, .. })));
    }

    #[test]
    fn shared_buffer_rounds_to_pages_and_is_usable() {
        let buf = SharedBuffer::new(1).expect("buffer");
        assert_eq!(buf.len(), page_size());
        assert_eq!(buf.as_ptr() as usize % page_size(), 0);
        let words = buf.as_atomic_u64();
        assert_eq!(words.len(), page_size() / 8);
        words[3].store(0x1122_3344_5566_7788, Ordering::Relaxed);
        assert_eq!(buf.as_atomic_u8()[3 * 8].load(Ordering::Relaxed), 0x88);
        assert!(SharedBuffer::new(0).is_err());
    }
}
