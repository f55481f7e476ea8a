//! The host side's connection state machine, sans-IO: guest packets and
//! host stream events in, packets for the guest and [`HostAction`]s out.
//! No socket is touched here; the shell ([`crate::backend`]) owns the
//! streams and names them by [`StreamId`].
//!
//! Flow control (virtio 1.2 section 5.10.6.3) both ways:
//! - guest -> host: the core advertises `buf_alloc` = [`HOST_BUF_ALLOC`]
//!   and `fwd_cnt` = bytes written to the host stream. An RW packet beyond
//!   that credit is a protocol violation: the connection is reset. So the
//!   bytes held for a host stream never exceed [`HOST_BUF_ALLOC`].
//! - host -> guest: the shell reads from a host stream at most
//!   [`HostConns::read_allowance`] bytes: the guest's credit
//!   (`buf_alloc - (tx_cnt - fwd_cnt)`), capped by [`TO_GUEST_CAP`] bytes
//!   waiting for receive buffers. A guest that never reads stops the reads;
//!   the data stays in the host's socket buffer.

use std::collections::{BTreeMap, VecDeque};

use crate::packet::{
    len_field, Header, Op, Packet, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};

/// The shell's name for a host stream.
pub type StreamId = u64;

/// Credit the host side gives each connection (bytes it buffers for a host
/// stream that does not read).
pub const HOST_BUF_ALLOC: u32 = 256 << 10;
/// Most bytes read from a host stream that wait for guest receive buffers.
pub const TO_GUEST_CAP: usize = 64 << 10;
/// Most connections to the host per device.
pub const MAX_HOST_CONNS: usize = 256;
/// Most replies to packets of unknown connections that wait for the guest.
pub const MAX_ORPHAN_REPLIES: usize = 64;
/// First local port of host-initiated connections (as Firecracker).
pub const FIRST_HOST_PORT: u32 = 1 << 30;

/// What the shell must do with its streams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostAction {
    /// Connect `stream` to the host listener of guest-initiated connections
    /// to `port` (`<socket>_<port>`); answer with
    /// [`HostConns::host_connected`].
    Connect { stream: StreamId, port: u32 },
    /// The guest will send no more: shut down the stream's write side once
    /// [`HostConns::to_host`] is empty (it is when this is emitted).
    ShutdownWrite { stream: StreamId },
    /// Close the stream and forget it.
    Close { stream: StreamId },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// The host sent `CONNECT`; REQUEST queued or sent, waiting for RESPONSE.
    HostConnecting,
    /// The guest sent REQUEST; waiting for the shell's connect.
    GuestConnecting,
    Established,
}

/// Counters and what is held, for tests and the monitor's exit report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnStats {
    pub conns_opened: u64,
    pub conns_refused: u64,
    pub bytes_to_host: u64,
    pub bytes_to_guest: u64,
    pub credit_violations: u64,
    pub protocol_errors: u64,
    pub orphan_replies_dropped: u64,
}

/// What the core holds now (all 0 when nothing is open).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub conns: usize,
    pub to_host_bytes: usize,
    pub to_guest_bytes: usize,
    pub replies: usize,
}

struct Conn {
    stream: StreamId,
    state: State,
    /// Guest -> host bytes not yet written; `skip` of them are the `OK`
    /// line, which counts for no credit.
    to_host: VecDeque<u8>,
    skip: usize,
    /// Bytes received from the guest / written to the host (our fwd_cnt).
    rx_cnt: u32,
    fwd_cnt: u32,
    fwd_cnt_sent: u32,
    /// Host -> guest bytes waiting for receive buffers.
    to_guest: VecDeque<u8>,
    tx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Control packets owed to the guest.
    send_request: bool,
    send_response: bool,
    send_credit_update: bool,
    send_credit_request: bool,
    /// Host EOF seen: SHUTDOWN(SEND) owed once `to_guest` is empty.
    host_eof: bool,
    shutdown_sent: bool,
    /// The guest will send no more / receive no more.
    guest_shut_send: bool,
    guest_shut_rcv: bool,
    write_shut: bool,
}

impl Conn {
    fn new(stream: StreamId, state: State) -> Self {
        Conn {
            stream,
            state,
            to_host: VecDeque::new(),
            skip: 0,
            rx_cnt: 0,
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            to_guest: VecDeque::new(),
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            send_request: false,
            send_response: false,
            send_credit_update: false,
            send_credit_request: false,
            host_eof: false,
            shutdown_sent: false,
            guest_shut_send: false,
            guest_shut_rcv: false,
            write_shut: false,
        }
    }

    fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    fn our_free(&self) -> u32 {
        HOST_BUF_ALLOC.saturating_sub(self.rx_cnt.wrapping_sub(self.fwd_cnt))
    }
}

/// Key: (guest port, host port).
type Key = (u32, u32);

/// The connections between one guest and the host.
pub struct HostConns {
    guest_cid: u64,
    conns: BTreeMap<Key, Conn>,
    by_stream: BTreeMap<StreamId, Key>,
    /// RSTs for the guest (connections already forgotten), bounded.
    replies: VecDeque<Header>,
    actions: Vec<HostAction>,
    next_host_port: u32,
    cursor: Option<Key>,
    stats: ConnStats,
}

impl HostConns {
    pub fn new(guest_cid: u64) -> Self {
        HostConns {
            guest_cid,
            conns: BTreeMap::new(),
            by_stream: BTreeMap::new(),
            replies: VecDeque::new(),
            actions: Vec::new(),
            next_host_port: FIRST_HOST_PORT,
            cursor: None,
            stats: ConnStats::default(),
        }
    }

    pub fn stats(&self) -> ConnStats {
        self.stats
    }

    pub fn held(&self) -> Held {
        Held {
            conns: self.conns.len(),
            to_host_bytes: self.conns.values().map(|c| c.to_host.len()).sum(),
            to_guest_bytes: self.conns.values().map(|c| c.to_guest.len()).sum(),
            replies: self.replies.len(),
        }
    }

    /// Streams the shell should know about (open or opening).
    pub fn streams(&self) -> impl Iterator<Item = StreamId> + '_ {
        self.by_stream.keys().copied()
    }

    pub fn take_actions(&mut self) -> Vec<HostAction> {
        std::mem::take(&mut self.actions)
    }

    fn hdr(&self, key: Key, op: Op) -> Header {
        Header::new(op, (HOST_CID, key.1), (self.guest_cid, key.0))
    }

    fn reply(&mut self, hdr: Header) {
        if self.replies.len() >= MAX_ORPHAN_REPLIES {
            self.stats.orphan_replies_dropped += 1;
        } else {
            self.replies.push_back(hdr);
        }
    }

    /// Forgets a connection: the stream is closed; an RST is owed to the
    /// guest if `rst`.
    fn drop_conn(&mut self, key: Key, rst: bool) {
        if let Some(c) = self.conns.remove(&key) {
            self.by_stream.remove(&c.stream);
            self.actions.push(HostAction::Close { stream: c.stream });
            if rst {
                let h = self.hdr(key, Op::Rst);
                self.reply(h);
            }
        }
    }

    /// The host connected and asked for the guest's `port`.
    pub fn host_connect(&mut self, stream: StreamId, guest_port: u32) -> bool {
        if self.conns.len() >= MAX_HOST_CONNS || self.by_stream.contains_key(&stream) {
            self.stats.conns_refused += 1;
            self.actions.push(HostAction::Close { stream });
            return false;
        }
        let mut port = self.next_host_port;
        while self.conns.contains_key(&(guest_port, port)) {
            port = port.wrapping_add(1).max(FIRST_HOST_PORT);
        }
        self.next_host_port = port.wrapping_add(1).max(FIRST_HOST_PORT);
        let mut c = Conn::new(stream, State::HostConnecting);
        c.send_request = true;
        self.conns.insert((guest_port, port), c);
        self.by_stream.insert(stream, (guest_port, port));
        true
    }

    /// The shell's answer to [`HostAction::Connect`].
    pub fn host_connected(&mut self, stream: StreamId, ok: bool) {
        let Some(&key) = self.by_stream.get(&stream) else {
            return;
        };
        match self.conns.get_mut(&key) {
            Some(c) if c.state == State::GuestConnecting && ok => {
                c.state = State::Established;
                c.send_response = true;
                self.stats.conns_opened += 1;
            }
            Some(_) if !ok => {
                self.stats.conns_refused += 1;
                self.drop_conn(key, true);
            }
            _ => {}
        }
    }

    /// How many bytes the shell may read from `stream` now.
    pub fn read_allowance(&self, stream: StreamId) -> usize {
        let Some(c) = self.by_stream.get(&stream).and_then(|k| self.conns.get(k)) else {
            return 0;
        };
        if c.state != State::Established || c.host_eof || c.guest_shut_rcv {
            return 0;
        }
        (c.peer_credit() as usize).min(TO_GUEST_CAP.saturating_sub(c.to_guest.len()))
    }

    /// Data the shell read from `stream` (at most its allowance; more is
    /// cut off and counted as a shell bug).
    pub fn host_data(&mut self, stream: StreamId, data: &[u8]) {
        let allowed = self.read_allowance(stream);
        let Some(c) = self
            .by_stream
            .get(&stream)
            .and_then(|k| self.conns.get_mut(k))
        else {
            return;
        };
        let n = data.len().min(allowed);
        c.to_guest.extend(&data[..n]);
        c.tx_cnt = counter_add(c.tx_cnt, n);
        if n < data.len() {
            self.stats.protocol_errors += 1;
        }
    }

    /// The host stream ended (EOF on read).
    pub fn host_eof(&mut self, stream: StreamId) {
        let Some(&key) = self.by_stream.get(&stream) else {
            return;
        };
        if let Some(c) = self.conns.get_mut(&key) {
            if c.state == State::Established {
                c.host_eof = true;
            } else {
                self.drop_conn(key, true);
            }
        }
    }

    /// The host stream failed (write error, hang-up before the handshake).
    pub fn host_error(&mut self, stream: StreamId) {
        if let Some(&key) = self.by_stream.get(&stream) {
            self.drop_conn(key, true);
        }
    }

    /// Guest -> host bytes waiting for `stream` (front part).
    pub fn to_host(&self, stream: StreamId) -> &[u8] {
        self.by_stream
            .get(&stream)
            .and_then(|k| self.conns.get(k))
            .map_or(&[], |c| c.to_host.as_slices().0)
    }

    /// The shell wrote `n` bytes of [`HostConns::to_host`].
    pub fn host_written(&mut self, stream: StreamId, n: usize) {
        let Some(&key) = self.by_stream.get(&stream) else {
            return;
        };
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let n = n.min(c.to_host.len());
        c.to_host.drain(..n);
        let skipped = n.min(c.skip);
        c.skip -= skipped;
        c.fwd_cnt = counter_add(c.fwd_cnt, n - skipped);
        self.stats.bytes_to_host += (n - skipped) as u64;
        let unreported = c.fwd_cnt.wrapping_sub(c.fwd_cnt_sent);
        if unreported >= HOST_BUF_ALLOC / 4 || (c.to_host.is_empty() && unreported > 0) {
            c.send_credit_update = true;
        }
        self.after_drain(key);
    }

    /// Closes or half-closes a stream whose guest side is done, once its
    /// bytes are written.
    fn after_drain(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if !c.to_host.is_empty() {
            return;
        }
        if c.guest_shut_send && c.guest_shut_rcv {
            // The guest closed: answer with RST (it waits for one).
            self.drop_conn(key, true);
        } else if c.guest_shut_send && !c.write_shut {
            c.write_shut = true;
            self.actions
                .push(HostAction::ShutdownWrite { stream: c.stream });
        }
    }

    /// A packet from the guest to the host (CID 2), already parsed and
    /// checked by [`Header::parse`].
    pub fn from_guest(&mut self, pkt: Packet) {
        let h = pkt.hdr;
        let key = (h.src_port, h.dst_port);
        debug_assert_eq!(h.type_, TYPE_STREAM);
        let Some(c) = self.conns.get_mut(&key) else {
            match h.op {
                Op::Request => self.guest_connect(key),
                Op::Rst => {}
                _ => {
                    // No such connection (virtio 1.2 5.10.6.4): RST.
                    self.stats.protocol_errors += 1;
                    self.reply(h.reply(Op::Rst));
                }
            }
            return;
        };
        c.peer_buf_alloc = h.buf_alloc;
        c.peer_fwd_cnt = h.fwd_cnt;
        match (h.op, c.state) {
            (Op::Rst, _) => {
                self.drop_conn(key, false);
            }
            (Op::Response, State::HostConnecting) => {
                c.state = State::Established;
                let ok = format!("OK {}\n", key.1);
                c.skip = ok.len();
                c.to_host.extend(ok.as_bytes());
                self.stats.conns_opened += 1;
            }
            (Op::Rw, State::Established) if !c.guest_shut_send => {
                let Some(len) = u32::try_from(pkt.data.len())
                    .ok()
                    .filter(|&len| len <= c.our_free())
                else {
                    self.stats.credit_violations += 1;
                    self.drop_conn(key, true);
                    return;
                };
                c.rx_cnt = c.rx_cnt.wrapping_add(len);
                c.to_host.extend(&pkt.data);
            }
            (Op::CreditUpdate, State::Established) => {}
            (Op::CreditRequest, State::Established) => c.send_credit_update = true,
            (Op::Shutdown, State::Established) => {
                if h.flags & SHUTDOWN_SEND != 0 {
                    c.guest_shut_send = true;
                }
                if h.flags & SHUTDOWN_RCV != 0 {
                    c.guest_shut_rcv = true;
                    c.to_guest.clear();
                }
                self.after_drain(key);
            }
            _ => {
                // REQUEST on an open connection, RESPONSE out of turn, data
                // after SHUTDOWN: reset.
                self.stats.protocol_errors += 1;
                self.drop_conn(key, true);
            }
        }
    }

    fn guest_connect(&mut self, key: Key) {
        if self.conns.len() >= MAX_HOST_CONNS {
            self.stats.conns_refused += 1;
            let h = self.hdr(key, Op::Rst);
            self.reply(h);
            return;
        }
        // The shell's stream ids for guest-initiated connections have the
        // top bit set, host-initiated ones are the shell's own counter.
        let stream = (1u64 << 63) | (u64::from(key.0) << 32) | u64::from(key.1);
        if self.by_stream.contains_key(&stream) {
            let h = self.hdr(key, Op::Rst);
            self.reply(h);
            return;
        }
        self.conns
            .insert(key, Conn::new(stream, State::GuestConnecting));
        self.by_stream.insert(stream, key);
        self.actions.push(HostAction::Connect {
            stream,
            port: key.1,
        });
    }

    /// Whether a packet for the guest is ready.
    pub fn has_packet(&self) -> bool {
        !self.replies.is_empty() || self.conns.values().any(has_work)
    }

    /// The next packet for the guest with at most `max_data` payload bytes,
    /// round robin over connections.
    pub fn next_to_guest(&mut self, max_data: usize) -> Option<Packet> {
        if let Some(h) = self.replies.pop_front() {
            return Some(Packet::control(h));
        }
        let start = self.cursor;
        let key = {
            let mut after = match start {
                Some(k) => self
                    .conns
                    .range((std::ops::Bound::Excluded(k), std::ops::Bound::Unbounded)),
                None => self.conns.range(..),
            };
            after
                .find(|(_, c)| has_work(c))
                .or_else(|| self.conns.iter().find(|(_, c)| has_work(c)))
                .map(|(k, _)| *k)?
        };
        self.cursor = Some(key);
        let base = self.hdr(key, Op::Rw);
        let c = self.conns.get_mut(&key)?;
        let mut hdr = base;
        hdr.buf_alloc = HOST_BUF_ALLOC;
        hdr.fwd_cnt = c.fwd_cnt;
        let mut data = Vec::new();
        if c.send_request {
            c.send_request = false;
            hdr.op = Op::Request;
        } else if c.send_response {
            c.send_response = false;
            hdr.op = Op::Response;
        } else if !c.to_guest.is_empty() && max_data > 0 {
            let n = c.to_guest.len().min(max_data);
            data = c.to_guest.drain(..n).collect();
            hdr.len = len_field(n);
            self.stats.bytes_to_guest += n as u64;
        } else if c.host_eof && c.to_guest.is_empty() && !c.shutdown_sent {
            c.shutdown_sent = true;
            hdr.op = Op::Shutdown;
            hdr.flags = SHUTDOWN_SEND;
        } else if c.send_credit_request && !c.send_credit_update {
            c.send_credit_request = false;
            hdr.op = Op::CreditRequest;
        } else {
            // A credit update, or data that does not fit: our credit is
            // always worth sending.
            hdr.op = Op::CreditUpdate;
        }
        // Every packet carries our credit.
        c.send_credit_update = false;
        c.fwd_cnt_sent = c.fwd_cnt;
        if c.state == State::Established
            && c.peer_credit() == 0
            && !c.host_eof
            && hdr.op != Op::CreditRequest
        {
            c.send_credit_request = true;
        }
        Some(Packet { hdr, data })
    }

    /// The driver reset the device: every stream is closed.
    pub fn reset(&mut self) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for k in keys {
            self.drop_conn(k, false);
        }
        self.replies.clear();
        self.cursor = None;
    }
}

/// `counter + n` for the free-running byte counters (`tx_cnt`, `fwd_cnt`),
/// which count modulo 2^32 (virtio 1.2 section 5.10.6.3).
#[allow(clippy::cast_possible_truncation)] // n mod 2^32 is what a modulo-2^32 counter adds
fn counter_add(counter: u32, n: usize) -> u32 {
    counter.wrapping_add(n as u32)
}

fn has_work(c: &Conn) -> bool {
    c.send_request
        || c.send_response
        || c.send_credit_update
        || (c.send_credit_request && c.to_guest.is_empty())
        || !c.to_guest.is_empty()
        || (c.host_eof && !c.shutdown_sent)
}
