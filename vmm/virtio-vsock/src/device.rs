//! The virtio-vsock device model: features, configuration space and the
//! rx, tx and event queues, between the guest and the host side
//! ([`HostConns`] + [`HostSide`]) and the guest-to-guest router
//! ([`RouterPort`]).

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use log::{debug, warn};
use virtio_mmio_transport::avail::{ask_for_reset, next_available, AvailError};
use virtio_mmio_transport::chain::{self, ChainError, WritableChain};
use virtio_mmio_transport::{
    guest_warn, signal_used, ActivateContext, ActivateError, VirtioDevice, VirtioInterrupt,
    VIRTIO_F_VERSION_1,
};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use crate::backend::{BackendError, HostSide, TOKEN_LISTENER, TOKEN_WAKE};
use crate::conn::{ConnStats, Held, HostConns};
use crate::packet::{
    len_field, Header, Op, Packet, PacketError, HDR_LEN, HOST_CID, MAX_GUEST_CID, MAX_PKT_DATA,
    MIN_GUEST_CID,
};
use crate::router::{RouterPort, Sent};

/// Virtio device ID of the socket device.
pub const VIRTIO_ID_VSOCK: u32 = 19;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Bytes of configuration space: `guest_cid` (le64).
pub const CONFIG_LEN: usize = 8;
/// Most RSTs the device itself owes the guest (answers to refused packets).
pub const MAX_REPLIES: usize = 64;

const RX: usize = 0;
const TX: usize = 1;
const EVENT: usize = 2;
const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE];
/// Rounds of moving data per notification (the event thread comes back
/// while a descriptor stays ready).
const MAX_ROUNDS: usize = 64;

/// Errors of creating the device and of guest chains.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("guest CID {0} is reserved or too large: use 3..=4294967294")]
    BadCid(u64),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("cannot create the vsock wake-up descriptor: {0}")]
    Wake(std::io::Error),
    #[error("a receive chain of {0} bytes cannot hold the 44-byte header")]
    RxTooSmall(usize),
    #[error("bad packet: {0}")]
    Packet(#[from] PacketError),
    #[error("virtqueue error: {0:?}")]
    Queue(virtio_queue::Error),
    #[error(transparent)]
    Chain(#[from] ChainError),
}

/// Device counters, for tests and the monitor's exit report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VsockStats {
    pub tx_packets: u64,
    pub tx_bad: u64,
    pub rx_packets: u64,
    pub rx_bad_chains: u64,
    pub to_guests: u64,
    pub refused: u64,
    pub replies_dropped: u64,
}

/// What the device last published: counters and holdings (the monitor
/// prints it when the VM ends).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VsockReport {
    pub stats: VsockStats,
    pub conns: ConnStats,
    pub held: Held,
    pub open_streams: usize,
}

impl std::fmt::Display for VsockReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (s, c, h) = (&self.stats, &self.conns, &self.held);
        write!(
            f,
            "held conns={} to_host_bytes={} to_guest_bytes={} replies={} streams={}; \
             total tx_packets={} tx_bad={} rx_packets={} rx_bad_chains={} to_guests={} refused={} \
             conns_opened={} conns_refused={} bytes_to_host={} bytes_to_guest={} \
             credit_violations={} protocol_errors={}",
            h.conns,
            h.to_host_bytes,
            h.to_guest_bytes,
            h.replies,
            self.open_streams,
            s.tx_packets,
            s.tx_bad,
            s.rx_packets,
            s.rx_bad_chains,
            s.to_guests,
            s.refused,
            c.conns_opened,
            c.conns_refused,
            c.bytes_to_host,
            c.bytes_to_guest,
            c.credit_violations,
            c.protocol_errors
        )
    }
}

struct Active {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<dyn VirtioInterrupt>,
    /// A receive chain taken while nothing was ready for it.
    held: Option<WritableChain>,
}

/// How often a packet held for a full router socket is retried without an event.
const STALL_RETRY: std::time::Duration = std::time::Duration::from_millis(20);

/// The virtio-vsock device.
pub struct Vsock {
    cid: u64,
    conns: HostConns,
    host: HostSide,
    router: Option<RouterPort>,
    /// A guest-to-guest packet the router's socket had no room for: the transmit queue
    /// is not read until it has gone (one packet, at most 64 KiB of data).
    stalled: Option<Packet>,
    active: Option<Active>,
    replies: VecDeque<Header>,
    buf: Vec<u8>,
    stats: VsockStats,
    guest_warnings: u64,
    report: Arc<Mutex<VsockReport>>,
}

impl Vsock {
    /// A device with guest CID `cid`, host side `host` and, for
    /// guest-to-guest traffic, a port of the setup's router (whose wake
    /// descriptor `host` must poll).
    pub fn new(cid: u64, host: HostSide, router: Option<RouterPort>) -> Result<Self, VsockError> {
        if !(MIN_GUEST_CID..=MAX_GUEST_CID).contains(&cid) {
            return Err(VsockError::BadCid(cid));
        }
        Ok(Vsock {
            cid,
            conns: HostConns::new(cid),
            host,
            router,
            stalled: None,
            active: None,
            replies: VecDeque::new(),
            buf: vec![0u8; HDR_LEN + MAX_PKT_DATA],
            stats: VsockStats::default(),
            guest_warnings: 0,
            report: Arc::default(),
        })
    }

    pub fn cid(&self) -> u64 {
        self.cid
    }

    pub fn stats(&self) -> VsockStats {
        self.stats
    }

    pub fn conn_stats(&self) -> ConnStats {
        self.conns.stats()
    }

    /// What the host side holds now (connections, buffered bytes, owed
    /// replies), plus the open host streams.
    pub fn held(&self) -> (Held, usize) {
        let mut h = self.conns.held();
        h.replies += self.replies.len();
        (h, self.host.open_streams())
    }

    /// A handle on the report the device publishes after every round.
    pub fn report_handle(&self) -> Arc<Mutex<VsockReport>> {
        self.report.clone()
    }

    fn publish(&self) {
        let (held, open_streams) = self.held();
        let r = VsockReport {
            stats: self.stats,
            conns: self.conns.stats(),
            held,
            open_streams,
        };
        *self.report.lock().unwrap_or_else(|e| e.into_inner()) = r;
    }

    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    fn reply_rst(&mut self, to: &Header) {
        if to.op == Op::Rst {
            return;
        }
        if self.replies.len() >= MAX_REPLIES {
            self.stats.replies_dropped += 1;
        } else {
            self.replies.push_back(to.reply(Op::Rst));
        }
    }

    /// The driver corrupted a queue: the device drops what it holds for the driver
    /// (its connections are reset) and asks it for a reset (DEVICE_NEEDS_RESET); until
    /// then it is inert.
    fn stop_for_reset(&mut self, e: &AvailError) {
        guest_warn!(self.guest_warnings, "virtio-vsock", "virtio-vsock: {e}");
        if let Some(a) = &self.active {
            ask_for_reset(&*a.interrupt, "virtio-vsock");
        }
        VirtioDevice::reset(self);
    }

    /// Reads and dispatches every transmit chain.
    fn process_tx(&mut self) -> Result<(), VsockError> {
        let mut used_any = false;
        loop {
            if let Some(pkt) = self.stalled.take() {
                self.dispatch(pkt);
                if self.stalled.is_some() {
                    // Still no room: the socket's writability runs the device again.
                    break;
                }
            }
            let Some(a) = self.active.as_mut() else {
                return Ok(());
            };
            let chain = match next_available(&mut a.tx, &a.mem) {
                Ok(Some(chain)) => chain,
                Ok(None) => break,
                Err(e) => {
                    self.stop_for_reset(&e);
                    return Ok(());
                }
            };
            let head = chain.head_index();
            let read = chain::read_chain(chain, &a.mem, HDR_LEN + MAX_PKT_DATA, &mut self.buf)
                .map_err(VsockError::from);
            if a.tx.add_used(&a.mem, head, 0).is_ok() {
                used_any = true;
            }
            let parsed = read.and_then(|n| {
                Header::parse(&self.buf[..n], self.cid)
                    .map(|h| (h, n))
                    .map_err(VsockError::from)
            });
            match parsed {
                Ok((hdr, n)) => {
                    self.stats.tx_packets += 1;
                    let pkt = Packet {
                        hdr,
                        data: self.buf[HDR_LEN..n].to_vec(),
                    };
                    self.dispatch(pkt);
                }
                Err(e) => {
                    self.stats.tx_bad += 1;
                    guest_warn!(
                        self.guest_warnings,
                        "virtio-vsock",
                        "virtio-vsock cid {}: transmit chain {head} refused: {e}",
                        self.cid
                    );
                    // Tell the guest's socket, if the header names one of its own.
                    if let Ok(n) = read_len(&e) {
                        if n >= HDR_LEN {
                            if let Some(h) = loose_header(&self.buf[..HDR_LEN], self.cid) {
                                self.reply_rst(&h);
                            }
                        }
                    }
                }
            }
        }
        if used_any {
            if let Some(a) = self.active.as_mut() {
                if let Err(e) = signal_used(&mut a.tx, &a.mem, &*a.interrupt) {
                    warn!("virtio-vsock: cannot raise the transmit interrupt: {e}");
                }
            }
        }
        Ok(())
    }

    fn dispatch(&mut self, pkt: Packet) {
        let dst = pkt.hdr.dst_cid;
        if dst == HOST_CID {
            self.conns.from_guest(pkt);
            return;
        }
        if dst == self.cid || !(MIN_GUEST_CID..=MAX_GUEST_CID).contains(&dst) {
            self.stats.refused += 1;
            self.reply_rst(&pkt.hdr);
            return;
        }
        let hdr = pkt.hdr;
        match &self.router {
            Some(r) => match r.send(pkt) {
                Sent::Sent => self.stats.to_guests += 1,
                Sent::Busy(pkt) => self.stalled = Some(pkt),
                Sent::Refused(e) => {
                    self.stats.refused += 1;
                    debug!(
                        "virtio-vsock cid {}: packet to cid {dst} refused: {e}",
                        self.cid
                    );
                    self.reply_rst(&hdr);
                }
            },
            None => {
                self.stats.refused += 1;
                self.reply_rst(&hdr);
            }
        }
    }

    fn next_packet(&mut self, max_data: usize) -> Option<Packet> {
        if let Some(h) = self.replies.pop_front() {
            return Some(Packet::control(h));
        }
        // Alternate fairly enough: host side first, then the router.
        if let Some(p) = self.conns.next_to_guest(max_data) {
            return Some(p);
        }
        self.router.as_ref().and_then(|r| r.pop(max_data))
    }

    fn has_packet(&self) -> bool {
        !self.replies.is_empty()
            || self.conns.has_packet()
            || self.router.as_ref().is_some_and(|r| r.has_packet())
    }

    /// Fills receive chains with what is ready; true if any was used.
    fn deliver_rx(&mut self) -> bool {
        let mut used = false;
        while self.active.is_some() && self.has_packet() {
            let Some(a) = self.active.as_mut() else {
                break;
            };
            let chain = match a.held.take() {
                Some(c) => c,
                None => {
                    let Some(chain) = a.rx.pop_descriptor_chain(&a.mem) else {
                        break;
                    };
                    let head = chain.head_index();
                    match rx_chain(chain, &a.mem) {
                        Ok(c) => c,
                        Err(e) => {
                            self.stats.rx_bad_chains += 1;
                            guest_warn!(
                                self.guest_warnings,
                                "virtio-vsock",
                                "virtio-vsock cid {}: receive chain {head} refused: {e}",
                                self.cid
                            );
                            if a.rx.add_used(&a.mem, head, 0).is_ok() {
                                used = true;
                            }
                            continue;
                        }
                    }
                }
            };
            let Some(pkt) = self.next_packet(chain.capacity - HDR_LEN) else {
                if let Some(a) = self.active.as_mut() {
                    a.held = Some(chain);
                }
                break;
            };
            if let Some(a) = self.active.as_mut() {
                let n = write_rx(a, &chain, &pkt);
                if a.rx.add_used(&a.mem, chain.head, n).is_ok() {
                    used = true;
                    self.stats.rx_packets += 1;
                }
            }
        }
        if used {
            if let Some(a) = self.active.as_mut() {
                if let Err(e) = signal_used(&mut a.rx, &a.mem, &*a.interrupt) {
                    warn!("virtio-vsock: cannot raise the receive interrupt: {e}");
                }
            }
        }
        used
    }

    /// Moves everything that can move: host streams, router inbox, guest
    /// receive buffers.
    fn run(&mut self) {
        if self.stalled.is_some() {
            if let Err(e) = self.process_tx() {
                warn!("virtio-vsock: transmit processing stopped: {e}");
            }
        }
        for _ in 0..MAX_ROUNDS {
            self.host.apply(&mut self.conns);
            let before = self.conns.stats();
            self.host.pump(&mut self.conns);
            let moved = self.deliver_rx();
            if !moved && before == self.conns.stats() {
                break;
            }
        }
        self.host.update_interest(&self.conns);
        self.arm_wake();
        self.publish();
    }

    /// Polls the router's wake-up descriptor only while it can bring
    /// something the device can take: a router socket stays readable while
    /// a packet waits for receive buffers the guest has not posted, and the
    /// event loop would spin on it; the guest's next buffers (an rx queue
    /// notification) run the device anyway.
    fn arm_wake(&mut self) {
        if let Some(r) = &self.router {
            self.host
                .wake_interest(r.wake_armed(), self.stalled.is_some() && r.is_socket());
        }
    }
}

/// The length a failed read got to (for the RST of a malformed packet).
fn read_len(e: &VsockError) -> Result<usize, ()> {
    match e {
        VsockError::Packet(PacketError::BadLen { actual, .. }) => Ok(HDR_LEN + actual),
        VsockError::Packet(
            PacketError::UnknownOp(_) | PacketError::BadType(_) | PacketError::DataOnControl(..),
        ) => Ok(HDR_LEN),
        _ => Err(()),
    }
}

/// Addresses of a refused packet whose source is the guest, for an RST.
fn loose_header(b: &[u8], cid: u64) -> Option<Header> {
    let mut c = [0u8; 8];
    c.copy_from_slice(b.get(0..8)?);
    if u64::from_le_bytes(c) != cid {
        return None;
    }
    c.copy_from_slice(b.get(8..16)?);
    let dst_cid = u64::from_le_bytes(c);
    let port = |at: usize| -> Option<u32> {
        let mut w = [0u8; 4];
        w.copy_from_slice(b.get(at..at + 4)?);
        Some(u32::from_le_bytes(w))
    };
    Some(Header::new(
        Op::Request,
        (cid, port(16)?),
        (dst_cid, port(20)?),
    ))
}

/// Checks a receive chain: device-writable only, inside guest RAM, room
/// for a header.
fn rx_chain(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
) -> Result<WritableChain, VsockError> {
    let mut c = WritableChain::new(chain, mem)?;
    if c.capacity < HDR_LEN {
        return Err(VsockError::RxTooSmall(c.capacity));
    }
    c.capacity = c.capacity.min(HDR_LEN + MAX_PKT_DATA);
    Ok(c)
}

/// Writes header and payload across the chain; returns the bytes written.
fn write_rx(a: &Active, chain: &WritableChain, pkt: &Packet) -> u32 {
    let mut hdr = pkt.hdr;
    hdr.len = len_field(pkt.data.len());
    let hdr = hdr.encode();
    let written = chain.write(&a.mem, &mut [&hdr[..], &pkt.data[..]]);
    written.unwrap_or_else(|w| w)
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn device_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        chain::read_config(&self.cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        guest_warn!(self.guest_warnings, "virtio-vsock",
            "virtio-vsock: {}-byte config write at {offset:#x} ignored; the configuration is read-only",
            data.len()
        );
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let mut queues = ctx.queues.into_iter();
        let (Some(rx), Some(tx), Some(_event), None) =
            (queues.next(), queues.next(), queues.next(), queues.next())
        else {
            return Err(ActivateError::Device(
                "virtio-vsock has exactly three queues (rx, tx, event)".into(),
            ));
        };
        self.active = Some(Active {
            mem: ctx.mem,
            rx,
            tx,
            interrupt: ctx.interrupt,
            held: None,
        });
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        match usize::from(index) {
            RX => {}
            TX => {
                if let Err(e) = self.process_tx() {
                    warn!("virtio-vsock: transmit processing stopped: {e}");
                }
            }
            // The device sends no events (no migration): buffers stay.
            EVENT => return,
            _ => {
                guest_warn!(
                    self.guest_warnings,
                    "virtio-vsock",
                    "virtio-vsock: notify for nonexistent queue {index} ignored"
                );
                return;
            }
        }
        self.run();
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.host.epoll_fd())
    }

    /// While a packet waits for room in the router's socket the device also retries on
    /// a timer: the socket's writability is watched, but a lost wake-up must not stall
    /// the guest's transmit queue for good.
    fn backend_retry(&self) -> Option<std::time::Duration> {
        self.stalled.as_ref().map(|_| STALL_RETRY)
    }

    fn process_backend(&mut self) {
        let ready = self.host.ready();
        if ready.contains(&TOKEN_WAKE) {
            if let Some(r) = &self.router {
                r.clear_wake();
            }
        }
        if ready.contains(&TOKEN_LISTENER) || !ready.is_empty() {
            self.host.accept_and_handshake(&mut self.conns);
        }
        self.run();
    }

    fn reset(&mut self) {
        self.active = None;
        self.stalled = None;
        self.conns.reset();
        self.host.apply(&mut self.conns);
        self.replies.clear();
        if let Some(r) = &self.router {
            r.reset();
        }
        self.arm_wake();
        self.publish();
    }
}
