//! The TAP backend: the device's frames go to and come from a Linux TAP
//! interface on the host (`/dev/net/tun`, `IFF_TAP | IFF_NO_PI |
//! IFF_VNET_HDR`): every frame carries the same 12-byte `virtio_net_hdr` as
//! on the switch, and the TAP takes and gives partial checksums and 64 KiB
//! TCP packets (`TUNSETOFFLOAD` with `TUN_F_CSUM | TUN_F_TSO4`), which the
//! device checks and finishes like any other (see `offload`).
//!
//! [`TapBackend::open`] attaches to the interface by name: an existing
//! persistent TAP (`ip tuntap add dev NAME mode tap user USER`, which its
//! owner may open without privileges), or, with `CAP_NET_ADMIN`, a new one
//! that exists while the monitor holds it. The monitor neither sets an
//! address on it nor brings it up: that is the host side's business.
//!
//! Bounds are the device's: a frame from the host longer than the device's
//! MTU + 14 (64 KiB + 14 with segmentation) is seen as too long and dropped
//! (`rx_dropped_malformed`); a guest frame over that never reaches the TAP
//! (`tx_bad_chains`).

use std::ffi::CString;
use std::fmt;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use net_switch::socket::{Recv, Send};
use thiserror::Error;

use crate::backend::NetBackend;

/// The clone device of the TUN/TAP driver.
pub const TUN_DEVICE: &str = "/dev/net/tun";
/// Longest interface name (`IFNAMSIZ` 16 with its NUL).
pub const MAX_TAP_NAME: usize = 15;

/// Errors of naming and opening a TAP interface.
#[derive(Debug, Error)]
pub enum TapError {
    #[error(
        "TAP name {0:?} is empty or longer than {MAX_TAP_NAME} bytes; use a name such as \"xtap0\""
    )]
    NameLength(String),
    #[error("TAP name {0:?} has characters an interface name cannot have; use letters, digits, '_', '-' and '.' only (and not \".\" or \"..\")")]
    NameChars(String),
    #[error("cannot open {TUN_DEVICE}: {0}; load the tun module (modprobe tun) and check the device node exists (char 10,200)")]
    NoTunDevice(io::Error),
    #[error("no permission to open {TUN_DEVICE} ({0}); run the monitor with CAP_NET_ADMIN or give your user access to it")]
    TunDevicePermission(io::Error),
    #[error("TAP interface {0} does not exist and creating one needs CAP_NET_ADMIN; run the monitor with it, or create a persistent TAP owned by your user first: ip tuntap add dev {0} mode tap user $USER")]
    NotFoundNoPermission(String),
    #[error("no permission to attach to TAP interface {0}: it is owned by another user or group; run the monitor with CAP_NET_ADMIN, or recreate it owned by you: ip tuntap add dev {0} mode tap user $USER")]
    NoPermission(String),
    #[error("interface {0} exists but is not a TAP interface (a TUN, an Ethernet or another kind); name a TAP interface or a free name")]
    NotTap(String),
    #[error(
        "TAP interface {0} is in use by another process; a TAP serves one VM: give this VM its own"
    )]
    Busy(String),
    #[error("cannot attach to TAP interface {name}: {source}")]
    Attach { name: String, source: io::Error },
}

/// A valid Linux interface name for a TAP: 1 to 15 bytes of
/// `[A-Za-z0-9_.-]`, not `.` or `..` (no `%d` patterns: the name is fixed).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TapName {
    len: u8,
    bytes: [u8; MAX_TAP_NAME],
}

impl TapName {
    /// Checks `name`.
    pub fn new(name: &str) -> Result<Self, TapError> {
        if name.is_empty() || name.len() > MAX_TAP_NAME {
            return Err(TapError::NameLength(name.to_string()));
        }
        let ok = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.');
        if name == "." || name == ".." || !name.bytes().all(ok) {
            return Err(TapError::NameChars(name.to_string()));
        }
        let mut bytes = [0u8; MAX_TAP_NAME];
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        Ok(Self {
            len: u8::try_from(name.len()).map_err(|_| TapError::NameLength(name.to_string()))?,
            bytes,
        })
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII bytes are ever stored (checked in `new`).
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

impl fmt::Display for TapName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for TapName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TapName({:?})", self.as_str())
    }
}

/// `ifr_flags` for TUNSETIFF: a TAP without the packet-information prefix,
/// with the virtio header.
#[allow(clippy::cast_possible_truncation)] // IFF_TAP | IFF_NO_PI | IFF_VNET_HDR is 0x5002
const TAP_FLAGS: libc::c_short =
    (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
/// The header's size on the TAP: `virtio_net_hdr_v1`, as on the switch.
const VNET_HDR_SIZE: libc::c_int = 12;
/// What the TAP may hand the device: partial checksums and 64 KiB IPv4 TCP.
const TAP_OFFLOADS: libc::c_uint = libc::TUN_F_CSUM | libc::TUN_F_TSO4;

/// A TAP interface's queue: one Ethernet frame per `read`/`write`,
/// nonblocking.
#[derive(Debug)]
pub struct TapBackend {
    fd: OwnedFd,
    name: String,
}

impl TapBackend {
    /// Attaches to (or, with `CAP_NET_ADMIN`, creates) the TAP interface
    /// `name`.
    pub fn open(name: &TapName) -> Result<Self, TapError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_DEVICE)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EACCES) | Some(libc::EPERM) => TapError::TunDevicePermission(e),
                _ => TapError::NoTunDevice(e),
            })?;
        let fd = OwnedFd::from(file);
        let cname = CString::new(name.as_str())
            .map_err(|_| TapError::NameChars(name.as_str().to_string()))?;
        // SAFETY: ifreq is plain old data; all zeroes is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(cname.as_bytes()) {
            *dst = libc::c_char::from_ne_bytes([*src]);
        }
        // The name is at most 15 bytes and ifr_name has 16: the last stays NUL.
        req.ifr_ifru.ifru_flags = TAP_FLAGS;
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `req`
        // is and which lives across the call; `fd` is an open tun clone device.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            let owned = name.as_str().to_string();
            return Err(match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => {
                    if Path::new("/sys/class/net").join(&owned).exists() {
                        TapError::NoPermission(owned)
                    } else {
                        TapError::NotFoundNoPermission(owned)
                    }
                }
                Some(libc::EINVAL) => TapError::NotTap(owned),
                Some(libc::EBUSY) => TapError::Busy(owned),
                _ => TapError::Attach {
                    name: owned,
                    source: e,
                },
            });
        }
        let attach_error = |source| TapError::Attach {
            name: name.as_str().to_string(),
            source,
        };
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which
        // points at a live c_int; `fd` is the TAP queue attached above.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &VNET_HDR_SIZE) };
        if rc < 0 {
            return Err(attach_error(io::Error::last_os_error()));
        }
        // SAFETY: TUNSETOFFLOAD takes its flags by value, no memory is passed.
        let rc = unsafe {
            libc::ioctl(
                fd.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(TAP_OFFLOADS),
            )
        };
        if rc < 0 {
            return Err(attach_error(io::Error::last_os_error()));
        }
        Ok(Self {
            fd,
            name: name.as_str().to_string(),
        })
    }

    /// A backend on a descriptor that behaves like a TAP queue with the
    /// virtio header (one message per read and write, nonblocking), e.g. one
    /// end of a `SOCK_SEQPACKET` socketpair in tests.
    pub fn from_fd(fd: OwnedFd, name: &str) -> Self {
        Self {
            fd,
            name: name.to_string(),
        }
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Runs a `read`/`write` call again while it is interrupted.
fn retry_eintr(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let n = call();
        if let Ok(n) = usize::try_from(n) {
            return Ok(n);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// What an error of a TAP queue means: `Some(true)` nothing to do now,
/// `Some(false)` the interface was deleted under us, `None` another error
/// (e.g. EIO while the host side is down: this frame is lost, the link stays
/// and the device counts it).
fn classify(e: &io::Error) -> Option<bool> {
    match e.raw_os_error() {
        Some(libc::EAGAIN) => Some(true),
        Some(libc::EBADFD) | Some(libc::ENXIO) | Some(libc::ENODEV) => Some(false),
        _ => None,
    }
}

impl NetBackend for TapBackend {
    fn send(&mut self, frame: &[u8]) -> io::Result<Send> {
        let fd = self.fd.as_raw_fd();
        // SAFETY: `frame` is valid for `frame.len()` bytes of reads; the
        // descriptor is owned by `self` and open.
        match retry_eintr(|| unsafe { libc::write(fd, frame.as_ptr().cast(), frame.len()) }) {
            Ok(_) => Ok(Send::Sent),
            Err(e) => match classify(&e) {
                Some(true) => Ok(Send::WouldBlock),
                Some(false) => Ok(Send::Closed),
                None => Err(e),
            },
        }
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Recv> {
        let fd = self.fd.as_raw_fd();
        // SAFETY: `buf` is valid for `buf.len()` bytes of writes; the
        // descriptor is owned by `self` and open. A frame longer than `buf`
        // is cut (the device drops it by its length).
        match retry_eintr(|| unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) }) {
            // End of file: a TAP never reads an empty frame.
            Ok(0) => Ok(Recv::Closed),
            Ok(n) => Ok(Recv::Frame(n)),
            Err(e) => match classify(&e) {
                Some(true) => Ok(Recv::Empty),
                Some(false) => Ok(Recv::Closed),
                None => Err(e),
            },
        }
    }

    fn fd(&self) -> Option<RawFd> {
        Some(self.fd.as_raw_fd())
    }
}
