//! Unix `SOCK_SEQPACKET` sockets, one Ethernet frame per packet: what the
//! switch and its clients (a VM's virtio-net backend) use.
//!
//! Every socket here is nonblocking and close-on-exec. Sending never raises
//! SIGPIPE (`MSG_NOSIGNAL`); receiving reports a frame's real length even
//! when it did not fit the buffer (`MSG_TRUNC`), so an oversized frame is
//! recognised and dropped, never passed on cut short.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Errors of setting up a socket.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("socket path {path} is {len} bytes; a Unix socket path has at most 107: use a shorter runtime directory")]
    PathTooLong { path: PathBuf, len: usize },
    #[error("cannot create a Unix SOCK_SEQPACKET socket: {0} (check the open file limit)")]
    Create(#[source] io::Error),
    #[error(
        "cannot listen on {path}: {source} (remove a stale socket file or choose another path)"
    )]
    Listen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot connect to the switch at {path}: {source} (is the switch running and listening there?)")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot make a socket pair: {0} (check the open file limit)")]
    Pair(#[source] io::Error),
}

/// One end of a frame connection.
#[derive(Debug)]
pub struct FrameSocket {
    fd: OwnedFd,
}

/// What [`FrameSocket::recv`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Recv {
    /// A frame of this many bytes; if more than the buffer, it was cut and
    /// only the buffer's length was stored.
    Frame(usize),
    /// Nothing to read now.
    Empty,
    /// The peer closed the connection (or sent an empty packet, which the
    /// protocol does not allow).
    Closed,
}

/// What [`FrameSocket::send`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Send {
    Sent,
    /// The peer's buffer is full; try again when the socket is writable.
    WouldBlock,
    /// The peer is gone.
    Closed,
}

#[allow(clippy::cast_possible_truncation)] // AF_UNIX is 1
const AF_UNIX_FAMILY: libc::sa_family_t = libc::AF_UNIX as libc::sa_family_t;

fn sockaddr(path: &Path) -> Result<(libc::sockaddr_un, libc::socklen_t), SocketError> {
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = AF_UNIX_FAMILY;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(SocketError::PathTooLong {
            path: path.to_path_buf(),
            len: bytes.len(),
        });
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = libc::c_char::from_ne_bytes([*s]);
    }
    // Less than size_of::<sockaddr_un>() (checked above).
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    let len = libc::socklen_t::try_from(len).map_err(|_| SocketError::PathTooLong {
        path: path.to_path_buf(),
        len: bytes.len(),
    })?;
    Ok((addr, len))
}

fn new_socket() -> Result<OwnedFd, SocketError> {
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(SocketError::Create(io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A listening `SOCK_SEQPACKET` socket bound to a path.
#[derive(Debug)]
pub struct FrameListener {
    fd: OwnedFd,
    path: PathBuf,
}

impl FrameListener {
    /// Binds and listens at `path` (which must not exist).
    pub fn bind(path: &Path) -> Result<Self, SocketError> {
        let (addr, len) = sockaddr(path)?;
        let fd = new_socket()?;
        let err = |source| SocketError::Listen {
            path: path.to_path_buf(),
            source,
        };
        // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                len,
            )
        };
        if r < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        // SAFETY: plain listen(2) on a bound socket we own.
        if unsafe { libc::listen(fd.as_raw_fd(), 64) } < 0 {
            let e = io::Error::last_os_error();
            let _ = std::fs::remove_file(path);
            return Err(err(e));
        }
        Ok(Self {
            fd,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts one pending connection, if any.
    pub fn accept(&self) -> io::Result<Option<FrameSocket>> {
        // SAFETY: accept4 with null address pointers is valid; the result is checked.
        let fd = unsafe {
            libc::accept4(
                self.fd.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                // The peer gave up between connect and accept.
                _ if e.raw_os_error() == Some(libc::ECONNABORTED) => Ok(None),
                _ => Err(e),
            };
        }
        // SAFETY: `fd` is a new descriptor accept4 just returned; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Some(FrameSocket { fd }))
    }
}

impl AsRawFd for FrameListener {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Drop for FrameListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl FrameSocket {
    /// Connects to a switch listening at `path`.
    pub fn connect(path: &Path) -> Result<Self, SocketError> {
        let (addr, len) = sockaddr(path)?;
        let fd = new_socket()?;
        loop {
            // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
            let r = unsafe {
                libc::connect(
                    fd.as_raw_fd(),
                    (&addr as *const libc::sockaddr_un).cast(),
                    len,
                )
            };
            if r == 0 {
                return Ok(Self { fd });
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(SocketError::Connect {
                    path: path.to_path_buf(),
                    source: e,
                });
            }
        }
    }

    /// A connected pair (tests, or a switch port inside one process).
    pub fn pair() -> Result<(Self, Self), SocketError> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors socketpair writes.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if r < 0 {
            return Err(SocketError::Pair(io::Error::last_os_error()));
        }
        // SAFETY: both descriptors are new and owned by nothing else.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok((Self { fd: a }, Self { fd: b }))
    }

    /// Sends one frame as one packet.
    pub fn send(&self, frame: &[u8]) -> io::Result<Send> {
        loop {
            // SAFETY: `frame` is valid for `frame.len()` bytes of reads.
            let n = unsafe {
                libc::send(
                    self.fd.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if n >= 0 {
                return Ok(Send::Sent);
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(Send::WouldBlock),
                _ if matches!(
                    e.raw_os_error(),
                    Some(libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN)
                ) =>
                {
                    return Ok(Send::Closed)
                }
                _ => return Err(e),
            }
        }
    }

    /// Receives one packet into `buf`.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Recv> {
        loop {
            // SAFETY: `buf` is valid for `buf.len()` bytes of writes; with
            // MSG_TRUNC the kernel still writes at most that many.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                )
            };
            // Negative: an error, below.
            match usize::try_from(n) {
                Ok(0) => return Ok(Recv::Closed),
                Ok(len) => return Ok(Recv::Frame(len)),
                Err(_) => {}
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(Recv::Empty),
                _ if e.raw_os_error() == Some(libc::ECONNRESET) => return Ok(Recv::Closed),
                _ => return Err(e),
            }
        }
    }

    /// The PID of the connected process, for log messages.
    pub fn peer_pid(&self) -> Option<i32> {
        // SAFETY: ucred is plain old data; all zeroes is valid.
        let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
        let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::ucred>()).ok()?;
        // SAFETY: `cred` and `len` are valid for getsockopt to write.
        let r = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            )
        };
        (r == 0).then_some(cred.pid)
    }
}

impl From<OwnedFd> for FrameSocket {
    /// A connection made elsewhere (a port the broker connected and handed to a VM
    /// process). It must be a connected, nonblocking `SOCK_SEQPACKET` socket.
    fn from(fd: OwnedFd) -> Self {
        Self { fd }
    }
}

impl From<FrameSocket> for OwnedFd {
    /// The connection, to hand to another process (or use as another socket type).
    fn from(socket: FrameSocket) -> Self {
        socket.fd
    }
}

impl AsRawFd for FrameSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for FrameSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
