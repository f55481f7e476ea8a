//! The switch's I/O shell: a listening socket, one `SOCK_SEQPACKET`
//! connection per port, nonblocking reads and writes driven by `poll(2)`.
//!
//! One [`SwitchServer::step`] is one poll round: accept waiting
//! connections, read at most [`RX_BATCH`] frames from every readable port
//! into the [`Switch`], then write every port's queue until its socket is
//! full. Reading is never held back (a port's frames go to the others'
//! bounded queues or are dropped), so a port that floods gets no more than
//! its batch per round, and a port that does not read only fills its own
//! queue and gets drops: no port waits for another.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use vmm_sys_util::eventfd::EventFd;

use crate::core::{PortCounters, PortId, Switch, SwitchConfig, SwitchError};
use crate::socket::{FrameListener, FrameSocket, Recv, Send, SocketError};

/// Most frames read from one port per poll round.
pub const RX_BATCH: usize = 64;
/// Most connections accepted per poll round.
const ACCEPT_BATCH: usize = 16;
/// Most ports at once; later connections are closed at once.
pub const MAX_PORTS: usize = 256;
/// How often learned addresses are aged out (lookups ignore expired ones anyway).
const AGE_INTERVAL: Duration = Duration::from_secs(1);

/// Errors of the switch server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] SwitchError),
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error("switch: poll failed: {0}")]
    Poll(#[source] std::io::Error),
    #[error("switch: accepting a connection failed: {0} (check the open file limit)")]
    Accept(#[source] std::io::Error),
}

/// The switch with its sockets.
pub struct SwitchServer {
    switch: Switch,
    listener: Option<FrameListener>,
    conns: BTreeMap<PortId, FrameSocket>,
    buf: Vec<u8>,
    start: Instant,
    last_age: Duration,
}

impl SwitchServer {
    /// A switch listening at `path` (removed again when the server drops).
    pub fn bind(config: SwitchConfig, path: &Path) -> Result<Self, ServerError> {
        let switch = Switch::new(config)?;
        let listener = FrameListener::bind(path)?;
        Ok(Self::with(switch, Some(listener)))
    }

    /// A switch without a listening socket; ports are added with
    /// [`SwitchServer::add_connection`].
    pub fn unbound(config: SwitchConfig) -> Result<Self, ServerError> {
        Ok(Self::with(Switch::new(config)?, None))
    }

    fn with(switch: Switch, listener: Option<FrameListener>) -> Self {
        // One byte more than the largest frame: a packet that fills it is too long.
        let buf = vec![0u8; switch.config().max_frame() + 1];
        Self {
            switch,
            listener,
            conns: BTreeMap::new(),
            buf,
            start: Instant::now(),
            last_age: Duration::ZERO,
        }
    }

    pub fn socket_path(&self) -> Option<&Path> {
        self.listener.as_ref().map(FrameListener::path)
    }

    /// Makes `socket` a port.
    pub fn add_connection(&mut self, socket: FrameSocket) -> PortId {
        let id = self.switch.add_port();
        self.conns.insert(id, socket);
        id
    }

    pub fn switch(&self) -> &Switch {
        &self.switch
    }

    /// Counters of the connected ports.
    pub fn counters(&self) -> Vec<(PortId, PortCounters)> {
        self.switch
            .ports()
            .filter_map(|p| self.switch.counters(p).map(|c| (p, c)))
            .collect()
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Runs until `stop` is readable; returns the switch for its counters.
    pub fn run(mut self, stop: &EventFd) -> Result<Switch, ServerError> {
        let timeout = i32::try_from(AGE_INTERVAL.as_millis()).unwrap_or(1000);
        while !self.step(timeout, Some(stop.as_raw_fd()))? {}
        Ok(self.switch)
    }

    /// One poll round (waiting at most `timeout_ms`, -1 for ever). Returns
    /// true when `stop` became readable (nothing else is done then).
    pub fn step(&mut self, timeout_ms: i32, stop: Option<RawFd>) -> Result<bool, ServerError> {
        let ids: Vec<PortId> = self.conns.keys().copied().collect();
        let mut fds = Vec::with_capacity(ids.len() + 2);
        let stop_at = stop.map(|fd| {
            fds.push(pollfd(fd, libc::POLLIN));
            fds.len() - 1
        });
        let listen_at = self.listener.as_ref().map(|l| {
            fds.push(pollfd(l.as_raw_fd(), libc::POLLIN));
            fds.len() - 1
        });
        let first_port = fds.len();
        for id in &ids {
            let mut events = libc::POLLIN;
            if self.switch.queued(*id).0 > 0 {
                events |= libc::POLLOUT;
            }
            if let Some(c) = self.conns.get(id) {
                fds.push(pollfd(c.as_raw_fd(), events));
            }
        }
        // SAFETY: `fds` is a valid array of `fds.len()` pollfds for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(ServerError::Poll(e));
        }
        if stop_at.is_some_and(|i| fds[i].revents != 0) {
            return Ok(true);
        }
        let now = self.now();
        for (id, fd) in ids.iter().zip(&fds[first_port..]) {
            if fd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                self.read_port(*id, now);
            }
        }
        if listen_at.is_some_and(|i| fds[i].revents != 0) {
            self.accept()?;
        }
        let ids: Vec<PortId> = self.conns.keys().copied().collect();
        for id in ids {
            self.flush_port(id);
        }
        if now.saturating_sub(self.last_age) >= AGE_INTERVAL {
            self.switch.age(now);
            self.last_age = now;
        }
        Ok(false)
    }

    fn accept(&mut self) -> Result<(), ServerError> {
        let Some(listener) = &self.listener else {
            return Ok(());
        };
        for _ in 0..ACCEPT_BATCH {
            let Some(sock) = listener.accept().map_err(ServerError::Accept)? else {
                break;
            };
            if self.conns.len() >= MAX_PORTS {
                warn!("switch: {MAX_PORTS} ports in use; connection refused");
                continue;
            }
            let pid = sock.peer_pid();
            let id = self.switch.add_port();
            self.conns.insert(id, sock);
            info!("switch: {id} connected (pid {pid:?})");
        }
        Ok(())
    }

    fn read_port(&mut self, id: PortId, now: Duration) {
        for _ in 0..RX_BATCH {
            let Some(conn) = self.conns.get(&id) else {
                return;
            };
            match conn.recv(&mut self.buf) {
                Ok(Recv::Frame(n)) if n <= self.switch.config().max_frame() => {
                    self.switch.ingress(id, &self.buf[..n], now);
                }
                Ok(Recv::Frame(n)) => self.switch.oversized(id, n),
                Ok(Recv::Empty) => return,
                Ok(Recv::Closed) => {
                    self.remove(id, "disconnected");
                    return;
                }
                Err(e) => {
                    self.remove(id, &format!("receive failed: {e}"));
                    return;
                }
            }
        }
    }

    fn flush_port(&mut self, id: PortId) {
        while let Some(frame) = self.switch.front(id) {
            let Some(conn) = self.conns.get(&id) else {
                return;
            };
            match conn.send(&frame) {
                Ok(Send::Sent) => self.switch.sent(id),
                Ok(Send::WouldBlock) => return,
                Ok(Send::Closed) => {
                    self.remove(id, "disconnected");
                    return;
                }
                Err(e) => {
                    debug!(
                        "switch: {id}: send of a {}-byte frame failed: {e}",
                        frame.len()
                    );
                    self.switch.send_failed(id);
                }
            }
        }
    }

    fn remove(&mut self, id: PortId, why: &str) {
        self.conns.remove(&id);
        if let Some(c) = self.switch.remove_port(id) {
            info!("switch: {id} {why}: {c}");
        }
    }
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
#[allow(clippy::cast_possible_truncation)] // test code: casts of small port indices
mod tests;
