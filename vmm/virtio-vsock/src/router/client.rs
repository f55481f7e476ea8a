//! The device's end of a router connection: a [`super::RouterPort`] whose
//! router is a [`super::RouterServer`], possibly in another process.
//!
//! Sending is nonblocking: a full socket refuses the packet
//! ([`RouteError::Busy`]) and the device answers RST, as when the router
//! itself refuses. Receiving holds at most one packet, the one the guest
//! has no (big enough) receive buffer for yet; the rest waits in the
//! socket and, behind it, in the router's bounded inbox.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::{debug, warn};
use net_switch::socket::{FrameSocket, Recv, Send};
use net_switch::SocketError;

use super::wire::{self, Msg};
use super::RouteError;
use crate::packet::{
    len_field, Header, Packet, HDR_LEN, MAX_GUEST_CID, MAX_PKT_DATA, MIN_GUEST_CID,
};

/// How long [`SocketPort::connect`] waits for the router's welcome.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a reset waits for room in a full socket before it is left for
/// the next send.
const RESET_TIMEOUT: Duration = Duration::from_secs(1);
/// Most messages one call reads while looking for a packet to deliver
/// (dropped ones count), so a flood of stale packets after a reset cannot
/// keep the device's event thread; the socket stays readable for the rest.
const RECV_BUDGET: usize = 64;

/// Errors of connecting a port to a router.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("vsock guest CID {0} is reserved or too large: use 3..=4294967294")]
    BadCid(u64),
    #[error("cannot connect to the vsock router at {path}: {source} (is the router running and listening there?)")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot reach the vsock router: {0}")]
    Socket(#[source] SocketError),
    #[error("the vsock router at {path} refused CID {cid}: another VM has it, or it is not a guest CID (see the router's log); give each VM its own CID")]
    Refused { path: PathBuf, cid: u64 },
    #[error("the vsock router at {path} did not welcome CID {cid} within {WELCOME_TIMEOUT:?}; it is stuck or not a vsock router: check its log")]
    Timeout { path: PathBuf, cid: u64 },
    #[error("talking to the vsock router at {path} failed: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl From<PortError> for io::Error {
    fn from(e: PortError) -> Self {
        let kind = match &e {
            PortError::BadCid(_) => io::ErrorKind::InvalidInput,
            PortError::Connect { source, .. } | PortError::Io { source, .. } => source.kind(),
            PortError::Socket(_) => io::ErrorKind::Other,
            PortError::Refused { .. } => io::ErrorKind::ConnectionRefused,
            PortError::Timeout { .. } => io::ErrorKind::TimedOut,
        };
        io::Error::new(kind, e)
    }
}

struct State {
    /// A packet, or the rest of a split one, the guest has not taken yet.
    held: Option<Packet>,
    /// Receive buffer: one byte more than the largest packet, so that a
    /// longer one shows (MSG_TRUNC reports its real length).
    rbuf: Vec<u8>,
    /// Send buffer (one SEQPACKET packet is one send).
    sbuf: Vec<u8>,
    /// Resets whose "reset done" has not come back: what arrives before
    /// it was queued before the reset and is dropped.
    awaiting_done: u32,
    /// The reset message still has to go out (the socket was full).
    reset_pending: bool,
    /// The router closed the connection.
    gone: bool,
}

pub(super) struct SocketPort {
    sock: FrameSocket,
    cid: u64,
    state: Mutex<State>,
}

/// Waits until `fd` has one of `events` or `deadline` passes.
///
/// Not an event loop but one bounded wait on one descriptor, so `poll(2)` rather than
/// `event-manager`: an epoll instance per wait would need `epoll_create1`, which the VM
/// process's seccomp filter does not allow, and a reset (a guest's status write) waits
/// here after that filter is installed; one kept for the port would be a descriptor per
/// port for a wait that is rare (a full socket at reset, the welcome at connect).
fn wait_for(fd: RawFd, events: libc::c_short, deadline: Instant) -> bool {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        let mut p = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        // SAFETY: `p` is one valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r > 0 {
            return true;
        }
        if r == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return false;
        }
    }
}

/// Checks a packet from the router: well formed and for this guest.
fn parse_incoming(b: &[u8], cid: u64) -> Result<Packet, String> {
    let mut c = [0u8; 8];
    c.copy_from_slice(b.get(0..8).ok_or("short packet")?);
    let hdr = Header::parse(b, u64::from_le_bytes(c)).map_err(|e| e.to_string())?;
    if hdr.dst_cid != cid {
        return Err(format!("packet for CID {}", hdr.dst_cid));
    }
    Ok(Packet {
        hdr,
        data: b[HDR_LEN..].to_vec(),
    })
}

impl SocketPort {
    pub(super) fn connect(path: &Path, cid: u64) -> io::Result<Self> {
        Ok(Self::try_connect(path, cid)?)
    }

    fn try_connect(path: &Path, cid: u64) -> Result<Self, PortError> {
        if !(MIN_GUEST_CID..=MAX_GUEST_CID).contains(&cid) {
            return Err(PortError::BadCid(cid));
        }
        let sock = FrameSocket::connect(path).map_err(|e| match e {
            SocketError::Connect { source, .. } => PortError::Connect {
                path: path.to_path_buf(),
                source,
            },
            other => PortError::Socket(other),
        })?;
        let io_err = |source| PortError::Io {
            path: path.to_path_buf(),
            source,
        };
        let timeout = || PortError::Timeout {
            path: path.to_path_buf(),
            cid,
        };
        let deadline = Instant::now() + WELCOME_TIMEOUT;
        loop {
            match sock.send(&wire::hello(cid)).map_err(io_err)? {
                Send::Sent => break,
                Send::WouldBlock if wait_for(sock.as_raw_fd(), libc::POLLOUT, deadline) => {}
                Send::WouldBlock => return Err(timeout()),
                Send::Closed => {
                    return Err(PortError::Refused {
                        path: path.to_path_buf(),
                        cid,
                    })
                }
            }
        }
        let mut b = [0u8; HDR_LEN];
        loop {
            if !wait_for(sock.as_raw_fd(), libc::POLLIN, deadline) {
                return Err(timeout());
            }
            match sock.recv(&mut b).map_err(io_err)? {
                Recv::Frame(n) if n <= b.len() && wire::classify(&b[..n]) == Ok(Msg::Welcome) => {
                    break
                }
                // Nothing else may come first: not a router of this version.
                Recv::Frame(_) => return Err(timeout()),
                Recv::Empty => {}
                Recv::Closed => {
                    return Err(PortError::Refused {
                        path: path.to_path_buf(),
                        cid,
                    })
                }
            }
        }
        Ok(SocketPort {
            sock,
            cid,
            state: Mutex::new(State {
                held: None,
                rbuf: vec![0u8; HDR_LEN + MAX_PKT_DATA + 1],
                sbuf: Vec::with_capacity(HDR_LEN + MAX_PKT_DATA),
                awaiting_done: 0,
                reset_pending: false,
                gone: false,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Only this port's own calls take it; a panic in one leaves at
        // worst a lost packet.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lost(&self, st: &mut State, why: &str) {
        if !st.gone {
            warn!(
                "virtio-vsock cid {}: the vsock router connection {why}; guest-to-guest vsock is off for this VM",
                self.cid
            );
        }
        st.gone = true;
        st.held = None;
    }

    /// Sends a pending reset; waits up to `wait` for room. True once sent.
    fn send_reset(&self, st: &mut State, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            match self.sock.send(&wire::RESET) {
                Ok(Send::Sent) => {
                    st.reset_pending = false;
                    return true;
                }
                Ok(Send::WouldBlock)
                    if wait_for(self.sock.as_raw_fd(), libc::POLLOUT, deadline) => {}
                Ok(Send::WouldBlock) => return false,
                Ok(Send::Closed) => {
                    self.lost(st, "was closed by the router");
                    return false;
                }
                Err(e) => {
                    self.lost(st, &format!("failed: {e}"));
                    return false;
                }
            }
        }
    }

    pub(super) fn forward(&self, pkt: &Packet) -> Result<(), RouteError> {
        let mut g = self.lock();
        let st = &mut *g;
        if st.reset_pending {
            // The reset must reach the router before anything sent after it.
            self.send_reset(st, Duration::ZERO);
        }
        if st.gone {
            return Err(RouteError::RouterGone);
        }
        if st.reset_pending {
            return Err(RouteError::Busy);
        }
        let mut hdr = pkt.hdr;
        hdr.len = len_field(pkt.data.len());
        st.sbuf.clear();
        st.sbuf.extend_from_slice(&hdr.encode());
        st.sbuf.extend_from_slice(&pkt.data);
        match self.sock.send(&st.sbuf) {
            Ok(Send::Sent) => Ok(()),
            Ok(Send::WouldBlock) => Err(RouteError::Busy),
            Ok(Send::Closed) => {
                self.lost(st, "was closed by the router");
                Err(RouteError::RouterGone)
            }
            Err(e) => {
                warn!(
                    "virtio-vsock cid {}: sending a {}-byte packet to the vsock router failed: {e}",
                    self.cid,
                    st.sbuf.len()
                );
                Err(RouteError::Busy)
            }
        }
    }

    /// Reads until a packet for the guest is held, the socket is empty or
    /// the budget is spent.
    fn fill(&self, st: &mut State) {
        if st.reset_pending {
            self.send_reset(st, Duration::ZERO);
        }
        for _ in 0..RECV_BUDGET {
            if st.held.is_some() || st.gone {
                return;
            }
            let n = match self.sock.recv(&mut st.rbuf) {
                Ok(Recv::Frame(n)) => n,
                Ok(Recv::Empty) => return,
                Ok(Recv::Closed) => return self.lost(st, "was closed by the router"),
                Err(e) => return self.lost(st, &format!("failed: {e}")),
            };
            if n > st.rbuf.len() {
                warn!(
                    "virtio-vsock cid {}: dropped a {n}-byte packet from the vsock router (longer than any packet)",
                    self.cid
                );
                continue;
            }
            match wire::classify(&st.rbuf[..n]) {
                Ok(Msg::ResetDone) => st.awaiting_done = st.awaiting_done.saturating_sub(1),
                Ok(Msg::Packet(_)) if st.awaiting_done > 0 => {}
                Ok(Msg::Packet(b)) => match parse_incoming(b, self.cid) {
                    Ok(p) => st.held = Some(p),
                    Err(e) => warn!(
                        "virtio-vsock cid {}: dropped a bad packet from the vsock router: {e}",
                        self.cid
                    ),
                },
                Ok(m) => debug!(
                    "virtio-vsock cid {}: unexpected {m:?} from the vsock router ignored",
                    self.cid
                ),
                Err(e) => warn!(
                    "virtio-vsock cid {}: dropped a message from the vsock router: {e}",
                    self.cid
                ),
            }
        }
    }

    pub(super) fn pop(&self, max_data: usize) -> Option<Packet> {
        let mut g = self.lock();
        let st = &mut *g;
        self.fill(st);
        let front = st.held.as_mut()?;
        // Split like `Router::pop`: the rest stays held for the next buffer.
        if let Some(part) = front.split_front(max_data.max(1)) {
            return Some(part);
        }
        st.held.take()
    }

    pub(super) fn has_packet(&self) -> bool {
        let mut g = self.lock();
        self.fill(&mut g);
        g.held.is_some()
    }

    /// Whether the device should poll the socket: while it holds no packet. This must
    /// not read the socket itself: a packet read here, after the device last looked for
    /// one and before it waits, would be held with nothing left to make the socket
    /// readable, and a guest that already posted its receive buffers (and sends nothing,
    /// waiting for exactly that packet, say a credit update) would never get it.
    pub(super) fn wake_armed(&self) -> bool {
        let g = self.lock();
        !g.gone && g.held.is_none()
    }

    pub(super) fn reset(&self) {
        let mut g = self.lock();
        let st = &mut *g;
        st.held = None;
        if !st.reset_pending {
            // One reset message (and one answer) covers resets in a row.
            st.awaiting_done += 1;
        }
        st.reset_pending = true;
        // A reset is rare and its peers wait for their RST: give a full
        // socket (the router reads every connection all the time) a moment.
        if !self.send_reset(st, RESET_TIMEOUT) && !st.gone {
            warn!(
                "virtio-vsock cid {}: the vsock router socket stayed full; the reset goes with the next packet",
                self.cid
            );
        }
    }
}

impl AsRawFd for SocketPort {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}
