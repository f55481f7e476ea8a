//! The router as a component of its own: a [`Router`] on a thread behind a
//! Unix `SOCK_SEQPACKET` listening socket, one connection per guest CID
//! (protocol in [`super::wire`]), like the network switch
//! (`net_switch::SwitchServer`, whose socket helpers it uses).
//!
//! The thread waits on rust-vmm's `event-manager` (the switch's
//! `net_switch::readiness`: one epoll instance, created with the listener and
//! the stop eventfd in it before the thread starts, level-triggered). A
//! connection is watched for reading, and for writing while something waits
//! for room in its socket.
//!
//! One round: read at most [`RX_BATCH`] messages from every readable
//! connection and forward the packets, accept new connections, then write
//! every connection's inbox until its socket is full. Reading is never held
//! back (a packet goes into the receiver's bounded inbox or is refused with
//! an RST to its sender), so no connection waits for another. Memory stays
//! within the [`Router`]'s bounds plus, per connection, the one packet its
//! full socket did not take.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use event_manager::EventSet;
use log::{debug, error, info, warn};
use net_switch::readiness::Readiness;
use net_switch::socket::{FrameListener, FrameSocket, Recv, Send};
use net_switch::SocketError;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::wire::{self, Msg};
use super::{Router, RouterHeld, RouterStats};
use crate::packet::{
    len_field, Header, Packet, HDR_LEN, MAX_GUEST_CID, MAX_PKT_DATA, MIN_GUEST_CID,
};

/// Most messages read from one connection per round.
pub const RX_BATCH: usize = 64;
/// Most connections at once (with or without their hello); later ones are
/// closed at once.
pub const MAX_ROUTER_CONNS: usize = 1024;
/// Most connections accepted per round.
const ACCEPT_BATCH: usize = 16;
/// Pause after a failed accept (the listener stays readable: without it
/// the thread would spin, e.g. while the open file limit is reached).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Malformed packets logged as warnings; later ones at debug level.
const MALFORMED_WARNINGS: u64 = 16;

/// Errors of starting the router server.
#[derive(Debug, thiserror::Error)]
pub enum RouterServerError {
    #[error("vsock router socket {0} is in use: another router listens there; stop it or choose another path")]
    InUse(PathBuf),
    #[error("cannot listen for the vsock router: {0}")]
    Socket(#[from] SocketError),
    #[error("cannot create the vsock router's stop eventfd: {0} (check the open file limit)")]
    EventFd(#[source] io::Error),
    #[error("cannot start the vsock router thread: {0} (check the process and memory limits)")]
    Spawn(#[source] io::Error),
    #[error("vsock router: cannot wait for its sockets: {0}")]
    Events(#[source] event_manager::Error),
}

/// What [`RouterServer::stats`] and [`RouterServer::held`] return: the
/// thread publishes it after every round.
#[derive(Clone, Copy, Default)]
struct Snapshot {
    stats: RouterStats,
    held: RouterHeld,
}

struct Conn {
    sock: FrameSocket,
    /// The guest CID, once its hello came.
    cid: Option<u64>,
    /// The welcome still has to go out.
    welcome: bool,
    /// "Reset done" answers still to go out (one per reset).
    resets_done: u32,
    /// The one encoded packet the socket had no room for.
    out: Option<Vec<u8>>,
}

impl Conn {
    fn wants_out(&self) -> bool {
        self.welcome || self.resets_done > 0 || self.out.is_some()
    }
}

/// What one send did.
enum Sent {
    Yes,
    Full,
    Gone(String),
}

fn send(sock: &FrameSocket, bytes: &[u8]) -> Sent {
    match sock.send(bytes) {
        Ok(Send::Sent) => Sent::Yes,
        Ok(Send::WouldBlock) => Sent::Full,
        Ok(Send::Closed) => Sent::Gone("disconnected".into()),
        Err(e) => Sent::Gone(format!("send failed: {e}")),
    }
}

/// The router thread's state.
struct Shell {
    router: Router,
    listener: FrameListener,
    conns: BTreeMap<u64, Conn>,
    /// The stop eventfd, the listener and every connection.
    events: Readiness,
    next_id: u64,
    buf: Vec<u8>,
    malformed: u64,
    /// Connections closed so far.
    closes: u64,
    snapshot: Arc<Mutex<Snapshot>>,
}

fn lock(s: &Mutex<Snapshot>) -> MutexGuard<'_, Snapshot> {
    // Plain counters: a panic while holding it leaves nothing inconsistent.
    s.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shell {
    fn run(mut self, stop: &EventFd) {
        loop {
            match self.step(stop) {
                Ok(false) => {}
                Ok(true) => break,
                Err(e) => {
                    error!("{e}; the vsock router stops and its connections close");
                    break;
                }
            }
        }
        self.publish();
    }

    /// One round; true when `stop` became readable.
    fn step(&mut self, stop: &EventFd) -> Result<bool, RouterServerError> {
        // A connection is watched for writing while something waits for room.
        for c in self.conns.values() {
            let mut events = EventSet::IN;
            if c.wants_out() {
                events |= EventSet::OUT;
            }
            self.events
                .watch(c.sock.as_raw_fd(), events)
                .map_err(RouterServerError::Events)?;
        }
        let ready = self.events.wait(-1).map_err(RouterServerError::Events)?;
        if ready.is_empty() {
            // Interrupted by a signal.
            return Ok(false);
        }
        if ready.contains(stop.as_raw_fd()) {
            return Ok(true);
        }
        // Which connections are readable, before any is closed (and its number reused).
        let readable: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| ready.readable(c.sock.as_raw_fd()))
            .map(|(id, _)| *id)
            .collect();
        for id in readable {
            let mut buf = std::mem::take(&mut self.buf);
            self.read_conn(id, &mut buf);
            self.buf = buf;
        }
        if ready.contains(self.listener.as_raw_fd()) {
            self.accept();
        }
        // A connection found closed while writing leaves RSTs in its peers'
        // inboxes, perhaps of peers already written: write again until a
        // pass closes nothing (each pass that does has one connection less).
        loop {
            let closes = self.closes;
            let ids: Vec<u64> = self.conns.keys().copied().collect();
            for id in ids {
                self.flush(id);
            }
            if self.closes == closes {
                break;
            }
        }
        self.publish();
        Ok(false)
    }

    fn publish(&self) {
        let mut held = self.router.held();
        for out in self.conns.values().filter_map(|c| c.out.as_ref()) {
            held.packets += 1;
            held.bytes += out.len().saturating_sub(HDR_LEN);
        }
        let mut stats = self.router.stats();
        stats.malformed = self.malformed;
        *lock(&self.snapshot) = Snapshot { stats, held };
    }

    fn accept(&mut self) {
        for _ in 0..ACCEPT_BATCH {
            let sock = match self.listener.accept() {
                Ok(Some(s)) => s,
                Ok(None) => return,
                Err(e) => {
                    warn!("vsock router: accepting a connection failed: {e} (check the open file limit)");
                    std::thread::sleep(ACCEPT_BACKOFF);
                    return;
                }
            };
            if self.conns.len() >= MAX_ROUTER_CONNS {
                warn!("vsock router: {MAX_ROUTER_CONNS} connections open; a new one is closed");
                continue;
            }
            if let Err(e) = self.events.watch(sock.as_raw_fd(), EventSet::IN) {
                warn!("vsock router: cannot watch a new connection ({e}); it is closed");
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            debug!(
                "vsock router: connection {id} from pid {:?}",
                sock.peer_pid()
            );
            self.conns.insert(
                id,
                Conn {
                    sock,
                    cid: None,
                    welcome: false,
                    resets_done: 0,
                    out: None,
                },
            );
        }
    }

    /// Closes connection `id`; its guest leaves the router (peers get RST).
    fn close(&mut self, id: u64, why: &str) {
        let Some(c) = self.conns.remove(&id) else {
            return;
        };
        // Out of the set while still open.
        if let Err(e) = self.events.unwatch(c.sock.as_raw_fd()) {
            warn!("vsock router: connection {id}: cannot stop watching its socket: {e}");
        }
        self.closes += 1;
        match c.cid {
            Some(cid) => {
                self.router.remove(cid);
                info!("vsock router: cid {cid} {why}");
            }
            None => warn!("vsock router: connection {id} closed: {why}"),
        }
    }

    fn bad_packet(&mut self, cid: u64, what: &str) {
        self.malformed += 1;
        if self.malformed <= MALFORMED_WARNINGS {
            warn!("vsock router: dropped a malformed packet from cid {cid}: {what}");
        } else {
            debug!("vsock router: dropped a malformed packet from cid {cid}: {what}");
        }
    }

    fn hello(&mut self, id: u64, cid: u64) {
        if !(MIN_GUEST_CID..=MAX_GUEST_CID).contains(&cid) {
            return self.close(
                id,
                &format!("asked for CID {cid}, which is not a guest CID (3..=4294967294)"),
            );
        }
        if self.router.has_cid(cid) {
            return self.close(
                id,
                &format!("asked for CID {cid}, which another VM has; give each VM its own CID"),
            );
        }
        if let Some(c) = self.conns.get_mut(&id) {
            c.cid = Some(cid);
            c.welcome = true;
            self.router.add(cid);
            info!(
                "vsock router: cid {cid} connected (pid {:?})",
                c.sock.peer_pid()
            );
        }
    }

    fn read_conn(&mut self, id: u64, buf: &mut [u8]) {
        for _ in 0..RX_BATCH {
            let Some(c) = self.conns.get(&id) else {
                return;
            };
            let cid = c.cid;
            let n = match c.sock.recv(buf) {
                Ok(Recv::Frame(n)) => n,
                Ok(Recv::Empty) => return,
                Ok(Recv::Closed) => return self.close(id, "disconnected"),
                Err(e) => return self.close(id, &format!("receive failed: {e}")),
            };
            let Some(cid) = cid else {
                let Some(bytes) = buf.get(..n) else {
                    return self.close(id, &format!("sent a {n}-byte message before its hello"));
                };
                match wire::classify(bytes) {
                    Ok(Msg::Hello(want)) => self.hello(id, want),
                    Ok(m) => return self.close(id, &format!("sent {m:?} before its hello")),
                    Err(e) => return self.close(id, &format!("sent no hello: {e}")),
                }
                continue;
            };
            let Some(bytes) = buf.get(..n) else {
                self.bad_packet(cid, &format!("{n} bytes, longer than any packet"));
                continue;
            };
            match wire::classify(bytes) {
                Ok(Msg::Packet(b)) => match Header::parse(b, cid) {
                    Ok(hdr) => {
                        let pkt = Packet {
                            hdr,
                            data: b[HDR_LEN..].to_vec(),
                        };
                        if let Err(e) = self.router.forward(pkt) {
                            debug!(
                                "vsock router: packet from cid {cid} to cid {} refused: {e}",
                                hdr.dst_cid
                            );
                            // What the sender's device does in-process.
                            self.router.refuse(&hdr);
                        }
                    }
                    Err(e) => self.bad_packet(cid, &e.to_string()),
                },
                Ok(Msg::Reset) => {
                    self.router.reset(cid);
                    if let Some(c) = self.conns.get_mut(&id) {
                        // Popped before the reset: stale for the new driver.
                        c.out = None;
                        c.resets_done += 1;
                    }
                }
                Ok(m) => self.bad_packet(cid, &format!("unexpected {m:?}")),
                Err(e) => self.bad_packet(cid, &e.to_string()),
            }
        }
    }

    /// Writes what waits for connection `id` until its socket is full.
    fn flush(&mut self, id: u64) {
        if let Err(why) = self.try_flush(id) {
            self.close(id, &why);
        }
    }

    fn try_flush(&mut self, id: u64) -> Result<(), String> {
        let Some(c) = self.conns.get_mut(&id) else {
            return Ok(());
        };
        let Some(cid) = c.cid else {
            return Ok(());
        };
        macro_rules! send_or_return {
            ($bytes:expr) => {
                match send(&c.sock, $bytes) {
                    Sent::Yes => {}
                    Sent::Full => return Ok(()),
                    Sent::Gone(why) => return Err(why),
                }
            };
        }
        if c.welcome {
            send_or_return!(&wire::WELCOME);
            c.welcome = false;
        }
        if let Some(out) = &c.out {
            send_or_return!(out);
            c.out = None;
        }
        while c.resets_done > 0 {
            send_or_return!(&wire::RESET_DONE);
            c.resets_done -= 1;
        }
        // The port splits packets further for the guest's buffers.
        while let Some(pkt) = self.router.pop(cid, MAX_PKT_DATA) {
            let mut hdr = pkt.hdr;
            hdr.len = len_field(pkt.data.len());
            let mut bytes = Vec::with_capacity(HDR_LEN + pkt.data.len());
            bytes.extend_from_slice(&hdr.encode());
            bytes.extend_from_slice(&pkt.data);
            match send(&c.sock, &bytes) {
                Sent::Yes => {}
                Sent::Full => {
                    c.out = Some(bytes);
                    return Ok(());
                }
                Sent::Gone(why) => return Err(why),
            }
        }
        Ok(())
    }
}

/// A [`Router`] on its own thread behind a Unix `SOCK_SEQPACKET` socket;
/// devices connect with [`super::RouterPort::connect`].
pub struct RouterServer {
    path: PathBuf,
    stop: EventFd,
    snapshot: Arc<Mutex<Snapshot>>,
    thread: Option<JoinHandle<()>>,
}

impl RouterServer {
    /// Listens at `path` and starts the router thread. A leftover socket
    /// file nobody listens on is replaced; a live one is refused.
    pub fn bind(path: &Path) -> Result<Self, RouterServerError> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_socket() {
                if FrameSocket::connect(path).is_ok() {
                    return Err(RouterServerError::InUse(path.to_path_buf()));
                }
                let _ = std::fs::remove_file(path);
            }
        }
        let listener = FrameListener::bind(path)?;
        let stop = EventFd::new(EFD_NONBLOCK).map_err(RouterServerError::EventFd)?;
        let thread_stop = stop.try_clone().map_err(RouterServerError::EventFd)?;
        // The epoll instance is made here, before the broker's seccomp filter (which
        // does not allow epoll_create1); every connection, the listener and the stop
        // eventfd can be reported in one round.
        let mut events = Readiness::new(MAX_ROUTER_CONNS + 2).map_err(RouterServerError::Events)?;
        events
            .watch(thread_stop.as_raw_fd(), EventSet::IN)
            .map_err(RouterServerError::Events)?;
        events
            .watch(listener.as_raw_fd(), EventSet::IN)
            .map_err(RouterServerError::Events)?;
        let snapshot = Arc::new(Mutex::new(Snapshot::default()));
        let shell = Shell {
            router: Router::default(),
            listener,
            conns: BTreeMap::new(),
            events,
            next_id: 0,
            // One byte more than the largest packet: a longer one shows.
            buf: vec![0u8; HDR_LEN + MAX_PKT_DATA + 1],
            malformed: 0,
            closes: 0,
            snapshot: snapshot.clone(),
        };
        // On failure the closure, and with it the listener, is dropped:
        // the socket file goes away.
        let thread = std::thread::Builder::new()
            .name("vsock-router".into())
            .spawn(move || shell.run(&thread_stop))
            .map_err(RouterServerError::Spawn)?;
        Ok(RouterServer {
            path: path.to_path_buf(),
            stop,
            snapshot,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn socket(&self) -> &Path {
        &self.path
    }

    /// Counters as of the router thread's last round.
    pub fn stats(&self) -> RouterStats {
        lock(&self.snapshot).stats
    }

    /// What the router holds as of its last round: connections, and the
    /// packets and data bytes in the inboxes plus those the connections'
    /// full sockets did not take (at most one per connection).
    pub fn held(&self) -> RouterHeld {
        lock(&self.snapshot).held
    }

    /// Stops the thread (closing every connection: the ports see the
    /// router gone), removes the socket file and returns the last counters.
    pub fn stop(mut self) -> RouterStats {
        self.shutdown();
        self.stats()
    }

    fn shutdown(&mut self) {
        let Some(t) = self.thread.take() else {
            return;
        };
        if let Err(e) = self.stop.write(1) {
            error!("vsock router: cannot signal its thread to stop: {e}");
            return;
        }
        // The thread's listener removes the socket file when it drops.
        if t.join().is_err() {
            error!("vsock router: its thread panicked");
        }
    }
}

impl Drop for RouterServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}
