//! The switch's I/O shell: a listening socket, one `SOCK_SEQPACKET`
//! connection per port, nonblocking reads and writes driven by rust-vmm's
//! `event-manager` ([`crate::readiness`]: one epoll instance, level-triggered).
//!
//! One [`SwitchServer::step`] is one round: wait until a socket is ready, read
//! at most [`RX_BATCH`] frames from every readable port into the [`Switch`],
//! accept waiting connections, then write every port's queue until its socket
//! is full. A port is watched for writing only while frames wait for it.
//! Reading is never held back (a port's frames go to the others' bounded
//! queues or are dropped), so a port that floods gets no more than its batch
//! per round, and a port that does not read only fills its own queue and gets
//! drops: no port waits for another.
//!
//! [`SwitchServer::run`] also watches its stop eventfd; it waits without a
//! timeout while no address is learned, and at most [`AGE_INTERVAL`] while
//! some are, to age them out.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use event_manager::EventSet;
use log::{debug, info, warn};
use vmm_sys_util::eventfd::EventFd;

use crate::core::{PortCounters, PortId, Switch, SwitchConfig, SwitchError, MAX_MESSAGE};
use crate::readiness::Readiness;
use crate::socket::{FrameListener, FrameSocket, Recv, Send, SocketError};

/// Most frames read from one port per round.
pub const RX_BATCH: usize = 64;
/// Most connections accepted per round.
const ACCEPT_BATCH: usize = 16;
/// Most ports at once; later connections are closed at once.
pub const MAX_PORTS: usize = 256;
/// How often learned addresses are aged out (lookups ignore expired ones anyway).
pub const AGE_INTERVAL: Duration = Duration::from_secs(1);

/// Errors of the switch server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] SwitchError),
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error("switch: cannot wait for its sockets: {0}")]
    Events(#[source] event_manager::Error),
    #[error("switch: accepting a connection failed: {0} (check the open file limit)")]
    Accept(#[source] std::io::Error),
}

/// The switch with its sockets.
pub struct SwitchServer {
    switch: Switch,
    listener: Option<FrameListener>,
    conns: BTreeMap<PortId, FrameSocket>,
    /// The listener and every port (the stop eventfd too while [`SwitchServer::run`]s).
    events: Readiness,
    buf: Vec<u8>,
    start: Instant,
    last_age: Duration,
}

impl SwitchServer {
    /// A switch listening at `path` (removed again when the server drops).
    pub fn bind(config: SwitchConfig, path: &Path) -> Result<Self, ServerError> {
        let switch = Switch::new(config)?;
        let listener = FrameListener::bind(path)?;
        Self::with(switch, Some(listener))
    }

    /// A switch without a listening socket; ports are added with
    /// [`SwitchServer::add_connection`].
    pub fn unbound(config: SwitchConfig) -> Result<Self, ServerError> {
        Self::with(Switch::new(config)?, None)
    }

    fn with(switch: Switch, listener: Option<FrameListener>) -> Result<Self, ServerError> {
        // Every port, the listener and the stop eventfd can be reported in one round.
        let mut events = Readiness::new(MAX_PORTS + 2).map_err(ServerError::Events)?;
        if let Some(l) = &listener {
            events
                .watch(l.as_raw_fd(), EventSet::IN)
                .map_err(ServerError::Events)?;
        }
        // One byte more than the largest message: a packet that fills it is too long.
        let buf = vec![0u8; MAX_MESSAGE + 1];
        Ok(Self {
            switch,
            listener,
            conns: BTreeMap::new(),
            events,
            buf,
            start: Instant::now(),
            last_age: Duration::ZERO,
        })
    }

    pub fn socket_path(&self) -> Option<&Path> {
        self.listener.as_ref().map(FrameListener::path)
    }

    /// Makes `socket` a port.
    pub fn add_connection(&mut self, socket: FrameSocket) -> Result<PortId, ServerError> {
        self.events
            .watch(socket.as_raw_fd(), EventSet::IN)
            .map_err(ServerError::Events)?;
        let id = self.switch.add_port();
        self.conns.insert(id, socket);
        Ok(id)
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
        let stop = stop.as_raw_fd();
        self.events
            .watch(stop, EventSet::IN)
            .map_err(ServerError::Events)?;
        let age = i32::try_from(AGE_INTERVAL.as_millis()).unwrap_or(1000);
        loop {
            // Nothing to age: no need to wake up before something happens.
            let timeout = if self.switch.table_len() > 0 { age } else { -1 };
            if self.round(timeout, Some(stop))? {
                break;
            }
        }
        // The stop eventfd is the caller's: out of the set before the caller closes it.
        self.events.unwatch(stop).map_err(ServerError::Events)?;
        Ok(self.switch)
    }

    /// One round, waiting at most `timeout_ms` (-1 for ever).
    pub fn step(&mut self, timeout_ms: i32) -> Result<(), ServerError> {
        self.round(timeout_ms, None).map(|_| ())
    }

    /// One round; true when `stop` became readable (nothing else is done then).
    fn round(&mut self, timeout_ms: i32, stop: Option<RawFd>) -> Result<bool, ServerError> {
        // A port is watched for writing while frames wait for it.
        for (id, conn) in &self.conns {
            let mut events = EventSet::IN;
            if self.switch.queued(*id).0 > 0 {
                events |= EventSet::OUT;
            }
            self.events
                .watch(conn.as_raw_fd(), events)
                .map_err(ServerError::Events)?;
        }
        let ready = self.events.wait(timeout_ms).map_err(ServerError::Events)?;
        if stop.is_some_and(|fd| ready.contains(fd)) {
            return Ok(true);
        }
        let now = self.now();
        // Which ports are readable, before any is removed (and its number reused).
        let readable: Vec<PortId> = self
            .conns
            .iter()
            .filter(|(_, c)| ready.readable(c.as_raw_fd()))
            .map(|(id, _)| *id)
            .collect();
        for id in readable {
            self.read_port(id, now);
        }
        if self
            .listener
            .as_ref()
            .is_some_and(|l| ready.contains(l.as_raw_fd()))
        {
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
            if let Err(e) = self.events.watch(sock.as_raw_fd(), EventSet::IN) {
                warn!("switch: cannot watch a new connection ({e}); it is closed");
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
                Ok(Recv::Frame(n)) if n <= MAX_MESSAGE => {
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
        if let Some(conn) = self.conns.remove(&id) {
            // Out of the set while still open.
            if let Err(e) = self.events.unwatch(conn.as_raw_fd()) {
                warn!("switch: {id}: cannot stop watching its socket: {e}");
            }
        }
        if let Some(c) = self.switch.remove_port(id) {
            info!("switch: {id} {why}: {c}");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
#[allow(clippy::cast_possible_truncation)] // test code: casts of small port indices
mod tests;
