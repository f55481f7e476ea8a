//! Guest-to-guest routing, sans-IO: packets a guest sends to another
//! guest's CID go through a [`Router`], which checks them, enforces the
//! receiver's credit and keeps them in the receiver's bounded inbox until
//! its device has receive buffers. Two shells run it:
//!
//! - [`LocalRouter`]: in-process, a mutex and one eventfd per device;
//! - [`RouterServer`]: its own thread behind a Unix `SOCK_SEQPACKET`
//!   socket, one connection per guest CID ([`wire`] has the protocol), so
//!   the devices may live in other processes.
//!
//! A device holds a [`RouterPort`] either way ([`LocalRouter::port`] or
//! [`RouterPort::connect`]) and uses it the same way.
//!
//! Bounds: the router clamps every `buf_alloc` it forwards to
//! [`G2G_MAX_CREDIT`] and resets a connection whose sender goes beyond the
//! (clamped) credit of the receiver, so a receiver that never reads holds
//! at most that many data bytes per connection; connections per guest are
//! at most [`G2G_MAX_CONNS`], and an inbox holds at most
//! [`INBOX_MAX_CONTROL`] control packets (more are dropped and counted).

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::packet::{Header, Op, Packet};

mod client;
mod server;
pub mod wire;

pub use client::PortError;
pub use server::{RouterServer, RouterServerError, MAX_ROUTER_CONNS};

/// Largest credit one guest may have with another through the router.
pub const G2G_MAX_CREDIT: u32 = 256 << 10;
/// Most guest-to-guest connections a guest may take part in.
pub const G2G_MAX_CONNS: usize = 256;
/// Most control packets waiting in one inbox.
pub const INBOX_MAX_CONTROL: usize = 1024;

/// Why a packet was not forwarded (the sender's device answers RST).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("no guest has CID {0}; connect to a CID of this setup")]
    UnknownCid(u64),
    #[error("a guest cannot connect to itself through the router")]
    SelfCid,
    #[error("no such connection")]
    NoConnection,
    #[error("too many guest-to-guest connections (at most {G2G_MAX_CONNS} per guest)")]
    TooManyConns,
    #[error("the sender went beyond the receiver's credit")]
    CreditViolation,
    #[error("the receiver's inbox is full")]
    InboxFull,
    #[error("the vsock router's socket is full; the connection is reset (the router is slow or stuck: check its log)")]
    Busy,
    #[error("the connection to the vsock router is closed; guest-to-guest vsock is off until the VM restarts with a running router")]
    RouterGone,
}

/// Counters, for tests and the monitor's exit report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouterStats {
    pub forwarded: u64,
    pub bytes: u64,
    pub refused: u64,
    pub credit_violations: u64,
    pub control_dropped: u64,
    /// Connections and waiting packets of guests that left (their VM
    /// ended) while open: 0 when every guest closed its sockets first.
    pub left_conns: u64,
    pub left_packets: u64,
    /// Packets a [`RouterServer`] connection sent that failed the header
    /// checks (dropped; always 0 in-process, where the device checks).
    pub malformed: u64,
}

impl std::fmt::Display for RouterStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "forwarded={} bytes={} refused={} credit_violations={} control_dropped={} left_conns={} left_packets={} malformed={}",
            self.forwarded,
            self.bytes,
            self.refused,
            self.credit_violations,
            self.control_dropped,
            self.left_conns,
            self.left_packets,
            self.malformed
        )
    }
}

/// Both ends of a connection, lower (cid, port) first.
type ConnKey = ((u64, u32), (u64, u32));

#[derive(Default)]
struct Side {
    /// The credit this side advertised (clamped) and its fwd_cnt.
    buf_alloc: u32,
    fwd_cnt: u32,
    /// Bytes this side sent.
    tx_cnt: u32,
}

struct G2gConn {
    /// Indexed like the key: 0 is the lower end.
    sides: [Side; 2],
    established: bool,
}

#[derive(Default)]
struct Inbox {
    packets: VecDeque<Packet>,
    bytes: usize,
    control: usize,
}

/// The routing core: endpoints by CID, connections, inboxes.
#[derive(Default)]
pub struct Router {
    inboxes: BTreeMap<u64, Inbox>,
    conns: BTreeMap<ConnKey, G2gConn>,
    stats: RouterStats,
}

fn key_of(h: &Header) -> (ConnKey, usize) {
    let a = (h.src_cid, h.src_port);
    let b = (h.dst_cid, h.dst_port);
    if a <= b {
        ((a, b), 0)
    } else {
        ((b, a), 1)
    }
}

/// What the router holds now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouterHeld {
    pub conns: usize,
    pub packets: usize,
    pub bytes: usize,
}

impl Router {
    pub fn add(&mut self, cid: u64) {
        self.inboxes.entry(cid).or_default();
    }

    pub fn stats(&self) -> RouterStats {
        self.stats
    }

    pub fn held(&self) -> RouterHeld {
        RouterHeld {
            conns: self.conns.len(),
            packets: self.inboxes.values().map(|i| i.packets.len()).sum(),
            bytes: self.inboxes.values().map(|i| i.bytes).sum(),
        }
    }

    fn conns_of(&self, cid: u64) -> usize {
        self.conns
            .keys()
            .filter(|(a, b)| a.0 == cid || b.0 == cid)
            .count()
    }

    fn push(&mut self, to: u64, pkt: Packet) -> Result<(), RouteError> {
        let inbox = self
            .inboxes
            .get_mut(&to)
            .ok_or(RouteError::UnknownCid(to))?;
        if pkt.data.is_empty() {
            if inbox.control >= INBOX_MAX_CONTROL {
                self.stats.control_dropped += 1;
                return Err(RouteError::InboxFull);
            }
            inbox.control += 1;
        }
        inbox.bytes += pkt.data.len();
        self.stats.forwarded += 1;
        self.stats.bytes += pkt.data.len() as u64;
        inbox.packets.push_back(pkt);
        Ok(())
    }

    /// Forwards a packet a guest (whose CID its device checked) sent to
    /// another guest. On `Err`, the sender's device answers RST (unless the
    /// packet was an RST). Returns the CIDs whose inbox got packets.
    pub fn forward(&mut self, mut pkt: Packet) -> Result<Vec<u64>, RouteError> {
        let h = pkt.hdr;
        if h.dst_cid == h.src_cid {
            self.stats.refused += 1;
            return Err(RouteError::SelfCid);
        }
        if !self.inboxes.contains_key(&h.dst_cid) {
            self.stats.refused += 1;
            return Err(RouteError::UnknownCid(h.dst_cid));
        }
        let (key, me) = key_of(&h);
        let clamped = h.buf_alloc.min(G2G_MAX_CREDIT);
        match (h.op, self.conns.get_mut(&key)) {
            (Op::Request, None) => {
                if self.conns_of(h.src_cid) >= G2G_MAX_CONNS
                    || self.conns_of(h.dst_cid) >= G2G_MAX_CONNS
                {
                    self.stats.refused += 1;
                    return Err(RouteError::TooManyConns);
                }
                let mut c = G2gConn {
                    sides: [Side::default(), Side::default()],
                    established: false,
                };
                c.sides[me].buf_alloc = clamped;
                c.sides[me].fwd_cnt = h.fwd_cnt;
                self.conns.insert(key, c);
            }
            (Op::Rst, None) => return Ok(Vec::new()),
            (_, None) => {
                self.stats.refused += 1;
                return Err(RouteError::NoConnection);
            }
            (op, Some(c)) => {
                c.sides[me].buf_alloc = clamped;
                c.sides[me].fwd_cnt = h.fwd_cnt;
                match op {
                    Op::Response => c.established = true,
                    Op::Rw => {
                        let peer = &c.sides[1 - me];
                        let in_flight = c.sides[me].tx_cnt.wrapping_sub(peer.fwd_cnt);
                        let len = u32::try_from(pkt.data.len()).ok().filter(|&len| {
                            c.established
                                && u64::from(in_flight) + u64::from(len)
                                    <= u64::from(peer.buf_alloc)
                        });
                        let Some(len) = len else {
                            self.stats.credit_violations += 1;
                            self.conns.remove(&key);
                            // The receiver learns of it too.
                            let _ = self
                                .push(h.dst_cid, Packet::control(h.reply(Op::Rst).reply(Op::Rst)));
                            return Err(RouteError::CreditViolation);
                        };
                        c.sides[me].tx_cnt = c.sides[me].tx_cnt.wrapping_add(len);
                    }
                    Op::Rst => {
                        self.conns.remove(&key);
                    }
                    _ => {}
                }
            }
        }
        pkt.hdr.buf_alloc = clamped;
        self.push(h.dst_cid, pkt)?;
        Ok(vec![h.dst_cid])
    }

    /// Answers a packet [`Router::forward`] refused with an RST to its
    /// sender, as the sender's device does in-process; for a shell whose
    /// sender is not waiting for the result ([`RouterServer`]). It goes
    /// through the sender's inbox, bounded like any control packet.
    pub fn refuse(&mut self, refused: &Header) {
        if refused.op == Op::Rst {
            return;
        }
        let Some(inbox) = self.inboxes.get_mut(&refused.src_cid) else {
            return;
        };
        if inbox.control >= INBOX_MAX_CONTROL {
            self.stats.control_dropped += 1;
            return;
        }
        inbox.control += 1;
        inbox
            .packets
            .push_back(Packet::control(refused.reply(Op::Rst)));
    }

    pub fn has_cid(&self, cid: u64) -> bool {
        self.inboxes.contains_key(&cid)
    }

    /// The next packet for `cid`'s guest with at most `max_data` payload
    /// bytes (an RW packet is split to fit).
    pub fn pop(&mut self, cid: u64, max_data: usize) -> Option<Packet> {
        let inbox = self.inboxes.get_mut(&cid)?;
        let front = inbox.packets.front_mut()?;
        if let Some(part) = front.split_front(max_data.max(1)) {
            inbox.bytes -= part.data.len();
            return Some(part);
        }
        let pkt = inbox.packets.pop_front()?;
        inbox.bytes -= pkt.data.len();
        if pkt.data.is_empty() {
            inbox.control -= 1;
        }
        Some(pkt)
    }

    pub fn has_packet(&self, cid: u64) -> bool {
        self.inboxes
            .get(&cid)
            .is_some_and(|i| !i.packets.is_empty())
    }

    /// `cid`'s device was reset or its VM ended: its inbox is emptied, its
    /// connections forgotten and their other ends get RST. Returns the CIDs
    /// that got packets.
    pub fn reset(&mut self, cid: u64) -> Vec<u64> {
        if let Some(i) = self.inboxes.get_mut(&cid) {
            *i = Inbox::default();
        }
        let gone: Vec<ConnKey> = self
            .conns
            .keys()
            .filter(|(a, b)| a.0 == cid || b.0 == cid)
            .copied()
            .collect();
        let mut woken = Vec::new();
        for (a, b) in gone {
            self.conns.remove(&(a, b));
            let (me, other) = if a.0 == cid { (a, b) } else { (b, a) };
            let rst = Header::new(Op::Rst, me, other);
            if self.push(other.0, Packet::control(rst)).is_ok() && !woken.contains(&other.0) {
                woken.push(other.0);
            }
        }
        woken
    }

    /// `cid` leaves the setup (its VM ended).
    pub fn remove(&mut self, cid: u64) -> Vec<u64> {
        self.stats.left_conns += self
            .conns
            .keys()
            .filter(|(a, b)| a.0 == cid || b.0 == cid)
            .count() as u64;
        self.stats.left_packets += self.inboxes.get(&cid).map_or(0, |i| i.packets.len() as u64);
        let woken = self.reset(cid);
        self.inboxes.remove(&cid);
        woken
    }
}

struct Shared {
    router: Router,
    wakers: BTreeMap<u64, Arc<EventFd>>,
}

/// The in-process router of one monitor: a [`Router`] behind a mutex and
/// an eventfd per device, written when its inbox gets packets.
#[derive(Clone)]
pub struct LocalRouter {
    shared: Arc<Mutex<Shared>>,
}

impl Default for LocalRouter {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalRouter {
    pub fn new() -> Self {
        LocalRouter {
            shared: Arc::new(Mutex::new(Shared {
                router: Router::default(),
                wakers: BTreeMap::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding the router cannot leave it inconsistent in
        // a way that matters more than stopping all vsock traffic.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `cid`; the returned port belongs to its device.
    pub fn port(&self, cid: u64) -> std::io::Result<RouterPort> {
        let wake = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        let mut s = self.lock();
        s.router.add(cid);
        s.wakers.insert(cid, wake.clone());
        Ok(RouterPort {
            kind: PortKind::Local(LocalPort {
                router: self.clone(),
                cid,
                wake,
            }),
        })
    }

    pub fn stats(&self) -> RouterStats {
        self.lock().router.stats()
    }

    pub fn held(&self) -> RouterHeld {
        self.lock().router.held()
    }
}

/// What [`RouterPort::send`] did with a packet.
#[derive(Debug)]
pub enum Sent {
    Sent,
    /// The router's socket is full: the packet is back, try again when it is writable.
    Busy(Packet),
    Refused(RouteError),
}

/// One device's handle on a router: a [`LocalRouter`] in this process or
/// a connection to a [`RouterServer`]. The device uses both the same way.
pub struct RouterPort {
    kind: PortKind,
}

enum PortKind {
    Local(LocalPort),
    Socket(client::SocketPort),
}

/// A port of a [`LocalRouter`].
struct LocalPort {
    router: LocalRouter,
    cid: u64,
    wake: Arc<EventFd>,
}

impl LocalPort {
    fn wake(s: &Shared, cids: &[u64]) {
        for c in cids {
            if let Some(w) = s.wakers.get(c) {
                let _ = w.write(1);
            }
        }
    }

    fn forward(&self, pkt: Packet) -> Result<(), RouteError> {
        let dst = pkt.hdr.dst_cid;
        let mut s = self.router.lock();
        let r = s.router.forward(pkt);
        match &r {
            Ok(cids) => Self::wake(&s, cids),
            // A credit violation also queued an RST for the receiver.
            Err(RouteError::CreditViolation) => Self::wake(&s, &[dst]),
            Err(_) => {}
        }
        r.map(|_| ())
    }

    fn reset(&self) {
        let mut s = self.router.lock();
        let cids = s.router.reset(self.cid);
        Self::wake(&s, &cids);
    }
}

impl Drop for LocalPort {
    fn drop(&mut self) {
        let mut s = self.router.lock();
        let cids = s.router.remove(self.cid);
        s.wakers.remove(&self.cid);
        Self::wake(&s, &cids);
    }
}

impl RouterPort {
    /// Connects to the [`RouterServer`] listening at `path` as guest `cid`
    /// and waits for the router's welcome, so that once this returns the
    /// other guests can reach `cid`. Fails if the router is not there or
    /// refuses the CID (taken by another VM, or not a guest CID).
    pub fn connect(path: &std::path::Path, cid: u64) -> std::io::Result<RouterPort> {
        Ok(RouterPort {
            kind: PortKind::Socket(client::SocketPort::connect(path, cid)?),
        })
    }

    /// Forwards a packet the guest sent to another guest. On `Err` the
    /// device answers RST (over a socket also when the socket is full,
    /// [`RouteError::Busy`]; refusals of the router itself then come back
    /// as RST packets).
    pub fn forward(&self, pkt: Packet) -> Result<(), RouteError> {
        match &self.kind {
            PortKind::Local(p) => p.forward(pkt),
            PortKind::Socket(p) => p.forward(&pkt),
        }
    }

    /// Like [`RouterPort::forward`], but a packet the router's socket has no room for
    /// now comes back ([`Sent::Busy`]), so the device can hold it and stop reading its
    /// transmit queue until the socket is writable, instead of resetting the connection.
    pub fn send(&self, pkt: Packet) -> Sent {
        let result = match &self.kind {
            PortKind::Local(p) => p.forward(pkt),
            PortKind::Socket(p) => match p.forward(&pkt) {
                Err(RouteError::Busy) => return Sent::Busy(pkt),
                other => other,
            },
        };
        match result {
            Ok(()) => Sent::Sent,
            Err(e) => Sent::Refused(e),
        }
    }

    /// Whether the port is a connection to a router in another process (which can be
    /// [`Sent::Busy`]).
    pub fn is_socket(&self) -> bool {
        matches!(self.kind, PortKind::Socket(_))
    }

    /// The next packet for the guest with at most `max_data` payload bytes
    /// (an RW packet is split to fit).
    pub fn pop(&self, max_data: usize) -> Option<Packet> {
        match &self.kind {
            PortKind::Local(p) => p.router.lock().router.pop(p.cid, max_data),
            PortKind::Socket(p) => p.pop(max_data),
        }
    }

    pub fn has_packet(&self) -> bool {
        match &self.kind {
            PortKind::Local(p) => p.router.lock().router.has_packet(p.cid),
            PortKind::Socket(p) => p.has_packet(),
        }
    }

    /// Clears the wake-up (after the device looked at its inbox); nothing
    /// to do for a socket, which is readable exactly while packets wait.
    pub fn clear_wake(&self) {
        if let PortKind::Local(p) = &self.kind {
            let _ = p.wake.read();
        }
    }

    /// Whether the device should poll [`RouterPort::wake_fd`] now. An
    /// eventfd is cleared by [`RouterPort::clear_wake`], so always. A
    /// socket stays readable while a packet waits in it: once the port
    /// holds a packet the guest has no receive buffer for, or the router
    /// is gone, polling it would only spin the device's event loop, and
    /// the guest's next receive buffers (a queue notification) run the
    /// device anyway.
    pub fn wake_armed(&self) -> bool {
        match &self.kind {
            PortKind::Local(_) => true,
            PortKind::Socket(p) => p.wake_armed(),
        }
    }

    /// The device was reset: its inbox is emptied, its connections are
    /// forgotten and their other ends get RST.
    pub fn reset(&self) {
        match &self.kind {
            PortKind::Local(p) => p.reset(),
            PortKind::Socket(p) => p.reset(),
        }
    }

    /// Readable when packets wait (an eventfd, or the router socket).
    pub fn wake_fd(&self) -> RawFd {
        match &self.kind {
            PortKind::Local(p) => p.wake.as_raw_fd(),
            PortKind::Socket(p) => p.as_raw_fd(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
#[allow(clippy::cast_possible_truncation)] // test code: casts of test lengths
mod socket_tests;
