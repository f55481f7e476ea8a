//! The host side's sockets, on Firecracker's convention: the device listens
//! on a Unix stream socket; a host program connects and writes
//! `CONNECT <port>\n`, and once the guest accepted, reads `OK <hostport>\n`
//! followed by the stream. A connection the guest opens to the host (CID 2)
//! port P goes to the Unix socket `<socket>_P`, where a host program
//! listens. Everything is nonblocking and driven by one epoll descriptor
//! (the device's `backend_fd`); the connection logic is in
//! [`crate::conn::HostConns`].

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::conn::{HostAction, HostConns, StreamId};

/// epoll token of the listening socket.
pub(crate) const TOKEN_LISTENER: u64 = 0;
/// epoll token of the router's wake-up eventfd.
pub(crate) const TOKEN_WAKE: u64 = 1;
const FIRST_STREAM: u64 = 16;
/// Longest `CONNECT <port>\n` line.
const MAX_LINE: usize = 32;
/// Most accepted connections that have not sent their `CONNECT` line yet;
/// beyond it the oldest is closed.
pub const MAX_HANDSHAKES: usize = 32;
/// Bytes read from a host stream per read call.
const READ_CHUNK: usize = 64 << 10;

/// Errors of setting up the host side.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot listen on vsock socket {path}: {err}; remove a stale file there or choose another path")]
    Listen { path: PathBuf, err: io::Error },
    #[error("vsock socket path {0} is too long: a Unix socket path with `_<port>` appended must fit in 107 bytes; use a shorter one")]
    PathTooLong(PathBuf),
    #[error(
        "vsock socket {0} is in use: another process listens there; stop it or choose another path"
    )]
    InUse(PathBuf),
    #[error("cannot create the vsock device's epoll descriptor: {0}")]
    Epoll(io::Error),
}

/// Longest socket path that still leaves room for `_4294967295`.
pub const MAX_SOCKET_PATH: usize = 107 - 11;

struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

/// The Unix sockets of one device.
pub struct HostSide {
    path: PathBuf,
    listener: Option<UnixListener>,
    epoll: Epoll,
    handshakes: BTreeMap<StreamId, Handshake>,
    streams: BTreeMap<StreamId, UnixStream>,
    /// The interest each stream is registered with (absent: none).
    interest: BTreeMap<StreamId, EventSet>,
    next_id: u64,
    buf: Vec<u8>,
    /// The router's wake-up descriptor and what it is polled for: (readable, writable);
    /// neither means it is out of the epoll set.
    wake: Option<(RawFd, (bool, bool))>,
}

fn register(epoll: &Epoll, fd: RawFd, set: EventSet, token: u64) -> io::Result<()> {
    epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(set, token))
}

impl HostSide {
    /// Listens at `path` (a leftover socket file there is replaced).
    /// `wake_fd` (the router's eventfd) is polled too.
    pub fn listen(path: &Path, wake_fd: Option<RawFd>) -> Result<Self, BackendError> {
        if path.as_os_str().as_bytes().len() > MAX_SOCKET_PATH {
            return Err(BackendError::PathTooLong(path.to_path_buf()));
        }
        let mut side = Self::without_socket(wake_fd)?;
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_socket() {
                // A socket someone still listens on belongs to them; a
                // leftover of a process that ended is replaced.
                if UnixStream::connect(path).is_ok() {
                    return Err(BackendError::InUse(path.to_path_buf()));
                }
                let _ = std::fs::remove_file(path);
            }
        }
        let listen_err = |err| BackendError::Listen {
            path: path.to_path_buf(),
            err,
        };
        let listener = UnixListener::bind(path).map_err(listen_err)?;
        listener.set_nonblocking(true).map_err(listen_err)?;
        register(
            &side.epoll,
            listener.as_raw_fd(),
            EventSet::IN,
            TOKEN_LISTENER,
        )
        .map_err(BackendError::Epoll)?;
        side.path = path.to_path_buf();
        side.listener = Some(listener);
        Ok(side)
    }

    /// No listening socket: only the router's eventfd (a device without a
    /// host side, and tests).
    pub fn without_socket(wake_fd: Option<RawFd>) -> Result<Self, BackendError> {
        let epoll = Epoll::new().map_err(BackendError::Epoll)?;
        if let Some(fd) = wake_fd {
            register(&epoll, fd, EventSet::IN, TOKEN_WAKE).map_err(BackendError::Epoll)?;
        }
        Ok(HostSide {
            path: PathBuf::new(),
            listener: None,
            epoll,
            handshakes: BTreeMap::new(),
            streams: BTreeMap::new(),
            interest: BTreeMap::new(),
            next_id: FIRST_STREAM,
            buf: vec![0u8; READ_CHUNK],
            wake: wake_fd.map(|fd| (fd, (true, false))),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Puts the router's wake-up descriptor into the epoll set or takes it
    /// out ([`crate::RouterPort::wake_armed`]). Out, not just without
    /// interest: epoll reports a hung-up socket even with no events asked
    /// for, and the device's event loop would spin on it.
    pub fn arm_wake(&mut self, armed: bool) {
        self.wake_interest(armed, false);
    }

    /// Polls the router's descriptor for reading, writing (a packet waits for room in
    /// the router's socket), both or neither (out of the epoll set).
    pub fn wake_interest(&mut self, read: bool, write: bool) {
        let Some((fd, was)) = self.wake else {
            return;
        };
        if was == (read, write) {
            return;
        }
        let mut set = EventSet::empty();
        if read {
            set |= EventSet::IN;
        }
        if write {
            set |= EventSet::OUT;
        }
        let r = match (was != (false, false), read || write) {
            (false, true) => register(&self.epoll, fd, set, TOKEN_WAKE),
            (true, true) => self.epoll.ctl(
                ControlOperation::Modify,
                fd,
                EpollEvent::new(set, TOKEN_WAKE),
            ),
            _ => self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default()),
        };
        match r {
            Ok(()) => self.wake = Some((fd, (read, write))),
            Err(e) => log::warn!("virtio-vsock: cannot change the router wake-up polling: {e}"),
        }
    }

    /// Open streams and handshakes (for the exit report).
    pub fn open_streams(&self) -> usize {
        self.streams.len() + self.handshakes.len()
    }

    /// Ready tokens (nonblocking).
    pub fn ready(&self) -> Vec<u64> {
        let mut events = [EpollEvent::default(); 64];
        match self.epoll.wait(0, &mut events) {
            Ok(n) => events[..n].iter().map(|e| e.data()).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Accepts new connections and reads `CONNECT` lines; completed
    /// handshakes are handed to `conns`.
    pub fn accept_and_handshake(&mut self, conns: &mut HostConns) {
        if let Some(l) = &self.listener {
            for _ in 0..MAX_HANDSHAKES {
                let Ok((stream, _)) = l.accept() else {
                    break;
                };
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                let id = self.next_id;
                self.next_id += 1;
                if self.handshakes.len() >= MAX_HANDSHAKES {
                    // Dropping the oldest closes it.
                    let _ = self.handshakes.pop_first();
                }
                let _ = register(&self.epoll, stream.as_raw_fd(), EventSet::IN, id);
                self.handshakes.insert(
                    id,
                    Handshake {
                        stream,
                        line: Vec::new(),
                    },
                );
            }
        }
        let ids: Vec<StreamId> = self.handshakes.keys().copied().collect();
        for id in ids {
            let Some(h) = self.handshakes.get_mut(&id) else {
                continue;
            };
            let mut byte = [0u8; 1];
            // Byte by byte: nothing after the line may be consumed here.
            let done = loop {
                match h.stream.read(&mut byte) {
                    Ok(0) => break Some(None),
                    Ok(_) if byte[0] == b'\n' => break Some(parse_connect(&h.line)),
                    Ok(_) if h.line.len() >= MAX_LINE => break Some(None),
                    Ok(_) => h.line.push(byte[0]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break None,
                    Err(_) => break Some(None),
                }
            };
            match done {
                None => {}
                Some(None) => {
                    // Not `CONNECT <port>`: Firecracker closes too.
                    self.forget(id);
                }
                Some(Some(port)) => {
                    if let Some(h) = self.handshakes.remove(&id) {
                        let _ = self.epoll.ctl(
                            ControlOperation::Delete,
                            h.stream.as_raw_fd(),
                            EpollEvent::default(),
                        );
                        self.streams.insert(id, h.stream);
                        conns.host_connect(id, port);
                    }
                }
            }
        }
    }

    fn forget(&mut self, id: StreamId) {
        self.handshakes.remove(&id);
        self.interest.remove(&id);
        // Dropping the stream closes it and removes it from the epoll set.
        self.streams.remove(&id);
    }

    /// Carries out the core's actions.
    pub fn apply(&mut self, conns: &mut HostConns) {
        for _ in 0..4 {
            let actions = conns.take_actions();
            if actions.is_empty() {
                return;
            }
            for a in actions {
                match a {
                    HostAction::Connect { stream, port } => {
                        let mut p = self.path.as_os_str().to_owned();
                        p.push(format!("_{port}"));
                        match connect_nonblocking(Path::new(&p)) {
                            Ok(s) => {
                                self.streams.insert(stream, s);
                                conns.host_connected(stream, true);
                            }
                            Err(_) => conns.host_connected(stream, false),
                        }
                    }
                    HostAction::ShutdownWrite { stream } => {
                        if let Some(s) = self.streams.get(&stream) {
                            let _ = s.shutdown(std::net::Shutdown::Write);
                        }
                    }
                    HostAction::Close { stream } => self.forget(stream),
                }
            }
        }
    }

    /// Moves bytes between the streams and the core until nothing moves
    /// without blocking (bounded).
    pub fn pump(&mut self, conns: &mut HostConns) {
        let ids: Vec<StreamId> = self.streams.keys().copied().collect();
        for id in ids {
            // Guest -> host.
            while let Some(s) = self.streams.get_mut(&id) {
                let data = conns.to_host(id);
                if data.is_empty() {
                    break;
                }
                match s.write(data) {
                    Ok(n) => conns.host_written(id, n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        conns.host_error(id);
                        break;
                    }
                }
            }
            // Host -> guest, within the guest's credit.
            let allow = conns.read_allowance(id).min(self.buf.len());
            if allow > 0 {
                if let Some(s) = self.streams.get_mut(&id) {
                    match s.read(&mut self.buf[..allow]) {
                        Ok(0) => conns.host_eof(id),
                        Ok(n) => conns.host_data(id, &self.buf[..n]),
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                            ) => {}
                        Err(_) => conns.host_error(id),
                    }
                }
            }
        }
        self.apply(conns);
    }

    /// Registers each stream for what the core can use now.
    pub fn update_interest(&mut self, conns: &HostConns) {
        let ids: Vec<StreamId> = self.streams.keys().copied().collect();
        for id in ids {
            let mut want = EventSet::empty();
            if conns.read_allowance(id) > 0 {
                want |= EventSet::IN;
            }
            if !conns.to_host(id).is_empty() {
                want |= EventSet::OUT;
            }
            let had = self.interest.get(&id).copied();
            if had == Some(want) || (had.is_none() && want.is_empty()) {
                continue;
            }
            let Some(s) = self.streams.get(&id) else {
                continue;
            };
            let fd = s.as_raw_fd();
            let r = match (had, want.is_empty()) {
                (Some(_), true) => {
                    self.epoll
                        .ctl(ControlOperation::Delete, fd, EpollEvent::default())
                }
                (Some(_), false) => {
                    self.epoll
                        .ctl(ControlOperation::Modify, fd, EpollEvent::new(want, id))
                }
                (None, _) => register(&self.epoll, fd, want, id),
            };
            if r.is_ok() {
                if want.is_empty() {
                    self.interest.remove(&id);
                } else {
                    self.interest.insert(id, want);
                }
            }
        }
    }
}

impl Drop for HostSide {
    fn drop(&mut self) {
        if self.listener.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// `CONNECT <port>` (decimal u32), as Firecracker.
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let port = line.strip_prefix("CONNECT ")?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

#[allow(clippy::cast_possible_truncation)] // AF_UNIX is 1
const AF_UNIX_FAMILY: libc::sa_family_t = libc::AF_UNIX as libc::sa_family_t;

/// Connects a nonblocking Unix stream socket: a listener whose backlog is
/// full refuses at once instead of blocking the device.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    addr.sun_family = AF_UNIX_FAMILY;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = libc::c_char::from_ne_bytes([*s]);
    }
    // SAFETY: socket() has no memory arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor that nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // Less than size_of::<sockaddr_un>() (checked above).
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    let len =
        libc::socklen_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: addr is a valid sockaddr_un and len does not exceed its size.
    let r = unsafe {
        libc::connect(
            owned.as_raw_fd(),
            std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
            len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}
