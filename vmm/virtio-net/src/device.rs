//! The virtio-net device model: features, configuration space, the receive
//! and transmit queues.

use std::os::fd::RawFd;
use std::sync::Arc;

use log::{debug, warn};
use net_switch::socket::{Recv, Send};
use net_switch::{Mac, ETH_HEADER_LEN};
use virtio_mmio_transport::avail::{ask_for_reset, next_available, AvailError};
use virtio_mmio_transport::chain::{self, ChainError, WritableChain};
use virtio_mmio_transport::{
    guest_warn, signal_used, ActivateContext, ActivateError, InterruptReason, VirtioDevice,
    VirtioInterrupt, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1,
};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use crate::backend::NetBackend;
use crate::fair::FairQueue;
use crate::offload::{self, Allowed, NetHeader, OffloadError, MAX_GSO_FRAME, NET_HDR_LEN};

/// Virtio device ID of the network device.
pub const VIRTIO_ID_NET: u32 = 1;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Bytes of `virtio_net_hdr` with VERSION_1 (num_buffers included); the
/// same header goes in front of every frame to and from the backend.
pub const HDR_LEN: usize = NET_HDR_LEN;
/// Most frames waiting for receive buffers.
pub const RX_QUEUE_FRAMES: usize = 256;
/// Most bytes waiting for receive buffers (the larger of this and one
/// largest frame).
pub const RX_QUEUE_BYTES: usize = 1 << 20;
/// Most frames read from the backend per `process_backend` call.
pub const RX_READ_BATCH: usize = 256;
/// Bytes of configuration space: mac, status, max_virtqueue_pairs, mtu.
pub const CONFIG_LEN: usize = 12;

/// Feature bits (virtio 1.2 section 5.1.3).
/// The device completes partial checksums of transmitted frames.
pub const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
/// The driver takes received frames with partial checksums.
pub const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << 1;
pub const VIRTIO_NET_F_MTU: u64 = 1 << 3;
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// The driver takes received IPv4 TCP packets of up to 64 KiB unsegmented.
pub const VIRTIO_NET_F_GUEST_TSO4: u64 = 1 << 7;
/// The device segments transmitted IPv4 TCP packets of up to 64 KiB.
pub const VIRTIO_NET_F_HOST_TSO4: u64 = 1 << 11;
/// The four offload features, offered unless turned off.
pub const OFFLOAD_FEATURES: u64 =
    VIRTIO_NET_F_CSUM | VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_HOST_TSO4;
pub const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
/// `status` bit: the link is up.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

const RX: usize = 0;
const TX: usize = 1;
const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE, QUEUE_SIZE];

/// Errors of creating the device and of guest input (the latter are
/// counted and logged, never returned to the monitor).
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("MTU {0} is outside 68..=65535; use 1500 for plain Ethernet")]
    BadMtu(u16),
    #[error(
        "MAC {0} is a multicast address; a NIC needs a unicast one (first byte even, e.g. 02:...)"
    )]
    MulticastMac(Mac),
    #[error("a transmit chain of {0} bytes is shorter than the header and an Ethernet header")]
    TxTooShort(usize),
    #[error("a transmit header was refused: {0}")]
    TxOffload(#[from] OffloadError),
    #[error("virtqueue error: {0:?}")]
    Queue(virtio_queue::Error),
    #[error(transparent)]
    Chain(#[from] ChainError),
}

/// A locally administered unicast MAC derived from `name` (02:xx:xx:xx:xx:xx,
/// the five bytes from an FNV-1a hash of the name).
pub fn mac_from_name(name: &str) -> Mac {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    Mac([0x02, b[3], b[4], b[5], b[6], b[7]])
}

/// Counters, for tests and diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames the guest sent that went to the backend.
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Transmit chains refused (bad direction, length, header or address).
    pub tx_bad_chains: u64,
    /// Frames the backend refused or lost (it was gone).
    pub tx_dropped_backend: u64,
    /// Frames written into the guest's receive buffers.
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Receive chains used, including the extra ones of merged frames.
    pub rx_buffers: u64,
    /// Receive chains refused (device-readable or outside guest memory).
    pub rx_bad_chains: u64,
    /// Frames from the backend dropped because the guest had no buffers and
    /// the waiting queue was full.
    pub rx_dropped_queue_full: u64,
    /// Frames dropped because the guest's buffers could not hold them.
    pub rx_dropped_small_buffers: u64,
    /// Frames from the backend that were shorter than an Ethernet header,
    /// longer than MTU + 14, or whose offload header was not valid.
    pub rx_dropped_malformed: u64,
    /// Frames the guest sent for segmentation (each counts once in
    /// `tx_frames`).
    pub tx_segmentation: u64,
    /// Received frames the device completed for a guest that does not take
    /// partial checksums or unsegmented packets (segments or checksums).
    pub rx_finished_in_software: u64,
    /// Frames from the backend while the driver had not started the device.
    pub rx_dropped_inactive: u64,
}

impl std::fmt::Display for NetStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tx_frames={} tx_bytes={} tx_bad_chains={} tx_dropped_backend={} \
             rx_frames={} rx_bytes={} rx_buffers={} rx_bad_chains={} \
             rx_dropped_queue_full={} rx_dropped_small_buffers={} \
             rx_dropped_malformed={} rx_dropped_inactive={} tx_segmentation={} \
             rx_finished_in_software={}",
            self.tx_frames,
            self.tx_bytes,
            self.tx_bad_chains,
            self.tx_dropped_backend,
            self.rx_frames,
            self.rx_bytes,
            self.rx_buffers,
            self.rx_bad_chains,
            self.rx_dropped_queue_full,
            self.rx_dropped_small_buffers,
            self.rx_dropped_malformed,
            self.rx_dropped_inactive,
            self.tx_segmentation,
            self.rx_finished_in_software
        )
    }
}

struct Active {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<dyn VirtioInterrupt>,
    mergeable: bool,
    /// Offloads the driver may ask of the device when it transmits.
    tx_offloads: Allowed,
    /// Offloads the driver takes in received frames; the device does the
    /// rest ([`offload::finish`]).
    rx_offloads: Allowed,
    /// Receive chains held for the next frame (with MRG_RXBUF, until they
    /// hold it; without, the one chain a too large frame did not fit).
    gathered: Vec<WritableChain>,
}

/// The virtio-net device model.
pub struct Net {
    backend: Box<dyn NetBackend>,
    backend_open: bool,
    mac: Mac,
    mtu: u16,
    /// Offer the checksum and segmentation offloads.
    offloads: bool,
    active: Option<Active>,
    rx_pending: FairQueue,
    /// A message (header and frame) the backend could not take yet (its
    /// chain is already used).
    tx_stalled: Option<Vec<u8>>,
    buf: Vec<u8>,
    stats: NetStats,
    guest_warnings: u64,
}

impl Net {
    pub fn new(backend: Box<dyn NetBackend>, mac: Mac, mtu: u16) -> Result<Self, NetError> {
        if mtu < 68 {
            return Err(NetError::BadMtu(mtu));
        }
        if mac.is_group() {
            return Err(NetError::MulticastMac(mac));
        }
        Ok(Self {
            backend,
            backend_open: true,
            mac,
            mtu,
            offloads: true,
            active: None,
            rx_pending: FairQueue::default(),
            tx_stalled: None,
            // One byte more than the largest message: one that fills it is too long.
            buf: vec![0u8; HDR_LEN + MAX_GSO_FRAME + 1],
            stats: NetStats::default(),
            guest_warnings: 0,
        })
    }

    /// Whether the checksum and segmentation offloads are offered (on by
    /// default; off, the guests checksum and segment every frame themselves).
    pub fn set_offloads(&mut self, on: bool) {
        self.offloads = on;
    }

    pub fn stats(&self) -> NetStats {
        self.stats
    }

    pub fn mac(&self) -> Mac {
        self.mac
    }

    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// Frames waiting for receive buffers.
    pub fn rx_pending(&self) -> usize {
        self.rx_pending.len()
    }

    fn config(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[0..6].copy_from_slice(&self.mac.0);
        let status = if self.backend_open {
            VIRTIO_NET_S_LINK_UP
        } else {
            0
        };
        c[6..8].copy_from_slice(&status.to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c[10..12].copy_from_slice(&self.mtu.to_le_bytes());
        c
    }

    fn backend_gone(&mut self) {
        if !self.backend_open {
            return;
        }
        warn!(
            "virtio-net {}: the backend (switch connection or TAP) is gone; link down",
            self.mac
        );
        self.backend_open = false;
        if let Some(a) = &self.active {
            let _ = a.interrupt.trigger(InterruptReason::ConfigChange);
        }
    }

    /// Sends the stalled message; false if the backend is still full.
    fn flush_stalled(&mut self) -> bool {
        let Some(frame) = self.tx_stalled.take() else {
            return true;
        };
        match self.send(&frame) {
            Some(Send::WouldBlock) => {
                self.tx_stalled = Some(frame);
                false
            }
            _ => true,
        }
    }

    /// Hands a message (header and frame) to the backend and counts it;
    /// `WouldBlock` if it is full.
    fn send(&mut self, message: &[u8]) -> Option<Send> {
        if !self.backend_open {
            self.stats.tx_dropped_backend += 1;
            return None;
        }
        match self.backend.send(message) {
            Ok(Send::Sent) => {
                self.stats.tx_frames += 1;
                self.stats.tx_bytes += message.len().saturating_sub(HDR_LEN) as u64;
                Some(Send::Sent)
            }
            Ok(Send::WouldBlock) => Some(Send::WouldBlock),
            Ok(Send::Closed) => {
                self.stats.tx_dropped_backend += 1;
                self.backend_gone();
                Some(Send::Closed)
            }
            Err(e) => {
                debug!(
                    "virtio-net: backend refused a {}-byte frame: {e}",
                    message.len().saturating_sub(HDR_LEN)
                );
                self.stats.tx_dropped_backend += 1;
                None
            }
        }
    }

    /// The driver corrupted a queue: the device drops what it holds for the driver
    /// and asks it for a reset (DEVICE_NEEDS_RESET); until then it is inert.
    fn stop_for_reset(&mut self, e: &AvailError) {
        guest_warn!(self.guest_warnings, "virtio-net", "virtio-net: {e}");
        if let Some(a) = &self.active {
            ask_for_reset(&*a.interrupt, "virtio-net");
        }
        VirtioDevice::reset(self);
    }

    /// Processes the transmit queue until it is empty or the backend is full.
    fn process_tx(&mut self) -> Result<(), NetError> {
        if !self.flush_stalled() {
            return Ok(());
        }
        let (mtu, mut used_any) = (usize::from(self.mtu), false);
        if let Some(a) = self.active.as_mut() {
            a.tx.disable_notification(&a.mem).map_err(NetError::Queue)?;
        }
        loop {
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
            let allowed = a.tx_offloads;
            let frame = read_tx_chain(chain, &a.mem, allowed, mtu, &mut self.buf);
            // The frame is copied out of guest memory: the chain goes back now.
            match a.tx.add_used(&a.mem, head, 0) {
                Ok(()) => used_any = true,
                Err(e) => guest_warn!(
                    self.guest_warnings,
                    "virtio-net",
                    "virtio-net: transmit chain {head} cannot be returned: {e:?}"
                ),
            }
            match frame {
                Ok((len, header)) => {
                    if header.tso.is_some() {
                        self.stats.tx_segmentation += 1;
                    }
                    let frame = self.buf[..len].to_vec();
                    if let Some(Send::WouldBlock) = self.send(&frame) {
                        // Wait for the backend (`backend_wants_write`); the
                        // queue is read again once this frame has gone.
                        self.tx_stalled = Some(frame);
                        break;
                    }
                }
                Err(e) => {
                    self.stats.tx_bad_chains += 1;
                    guest_warn!(
                        self.guest_warnings,
                        "virtio-net",
                        "virtio-net: transmit chain {head} refused: {e}"
                    );
                }
            }
        }
        if used_any {
            if let Some(a) = self.active.as_mut() {
                if let Err(e) = signal_used(&mut a.tx, &a.mem, &*a.interrupt) {
                    warn!("virtio-net: cannot raise the transmit interrupt: {e}");
                }
            }
        }
        Ok(())
    }

    /// Reads frames from the backend into the waiting queue and delivers
    /// what the guest has buffers for.
    fn read_backend(&mut self) {
        let byte_bound = RX_QUEUE_BYTES.max(HDR_LEN + MAX_GSO_FRAME);
        for _ in 0..RX_READ_BATCH {
            if !self.backend_open {
                break;
            }
            match self.backend.recv(&mut self.buf) {
                Ok(Recv::Frame(n)) => {
                    let Some(a) = &self.active else {
                        self.stats.rx_dropped_inactive += 1;
                        continue;
                    };
                    let can = a.rx_offloads;
                    let Some((len, header)) = self.check_received(n) else {
                        self.stats.rx_dropped_malformed += 1;
                        continue;
                    };
                    if offload::needs_finishing(&header, can) {
                        self.stats.rx_finished_in_software += 1;
                    }
                    // Fair between senders: a full queue drops the oldest
                    // frame of whoever holds the most (see `fair`).
                    let (pending, stats) = (&mut self.rx_pending, &mut self.stats);
                    offload::finish(self.buf[..len].to_vec(), header, can, |m| {
                        if !pending.push(m, RX_QUEUE_FRAMES, byte_bound) {
                            stats.rx_dropped_queue_full += 1;
                        }
                    });
                    self.deliver_rx();
                }
                Ok(Recv::Empty) => break,
                Ok(Recv::Closed) => self.backend_gone(),
                Err(e) => {
                    warn!(
                        "virtio-net {}: receive from the backend failed: {e}; link down",
                        self.mac
                    );
                    self.backend_gone();
                }
            }
        }
    }

    /// Checks the message of `n` bytes the backend put in `buf`: its length
    /// and its header (`DATA_VALID` cleared: the device does not pass on
    /// another's claim). Returns its length and header, `None` to drop it.
    fn check_received(&mut self, n: usize) -> Option<(usize, NetHeader)> {
        // `n` is the message's real length; one that filled `buf` was cut.
        if n < HDR_LEN + ETH_HEADER_LEN || n >= self.buf.len() {
            return None;
        }
        self.buf[0] &= !offload::VIRTIO_NET_HDR_F_DATA_VALID;
        let (hdr, frame) = self.buf[..n].split_at(HDR_LEN);
        let hdr: &[u8; HDR_LEN] = hdr.try_into().ok()?;
        match NetHeader::parse(hdr, frame, Allowed::ALL, usize::from(self.mtu)) {
            Ok(h) => Some((n, h)),
            Err(e) => {
                debug!("virtio-net {}: a received frame was dropped: {e}", self.mac);
                None
            }
        }
    }

    /// Moves waiting frames into the guest's receive buffers; raises the
    /// interrupt if any buffer was used.
    fn deliver_rx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        while let Some(message) = self.rx_pending.front() {
            let need = message.len();
            match gather(
                active,
                need,
                &mut self.stats,
                &mut used,
                &mut self.guest_warnings,
            ) {
                Gathered::Wait => break,
                Gathered::TooSmall => {
                    self.stats.rx_dropped_small_buffers += 1;
                }
                Gathered::Ready(n) => {
                    write_rx(
                        active,
                        n,
                        message,
                        &mut self.stats,
                        &mut self.guest_warnings,
                    );
                    used = true;
                }
            }
            self.rx_pending.pop_front();
        }
        if used {
            if let Err(e) = signal_used(&mut active.rx, &active.mem, &*active.interrupt) {
                warn!("virtio-net: cannot raise the receive interrupt: {e}");
            }
        }
    }
}

enum Gathered {
    /// Not enough buffers yet.
    Wait,
    /// The buffers the guest offers cannot hold the frame: drop it.
    TooSmall,
    /// The first `n` gathered chains hold the frame.
    Ready(usize),
}

/// Takes receive chains until they hold `need` bytes (one chain without
/// MRG_RXBUF). Bad chains are returned at once with length 0.
fn gather(
    a: &mut Active,
    need: usize,
    stats: &mut NetStats,
    used: &mut bool,
    warnings: &mut u64,
) -> Gathered {
    let limit = if a.mergeable {
        usize::from(a.rx.size())
    } else {
        1
    };
    loop {
        let capacity: usize = a.gathered.iter().map(|c| c.capacity).sum();
        if a.mergeable {
            if capacity >= need {
                let mut sum = 0;
                let n = a
                    .gathered
                    .iter()
                    .position(|c| {
                        sum += c.capacity;
                        sum >= need
                    })
                    .map_or(a.gathered.len(), |i| i + 1);
                return Gathered::Ready(n);
            }
        } else if let Some(c) = a.gathered.first() {
            return if c.capacity >= need {
                Gathered::Ready(1)
            } else {
                Gathered::TooSmall
            };
        }
        if a.gathered.len() >= limit {
            // Every buffer the queue can hold would not be enough.
            return Gathered::TooSmall;
        }
        let Some(chain) = a.rx.pop_descriptor_chain(&a.mem) else {
            return Gathered::Wait;
        };
        let head = chain.head_index();
        match WritableChain::new(chain, &a.mem) {
            Ok(c) => a.gathered.push(c),
            Err(e) => {
                stats.rx_bad_chains += 1;
                guest_warn!(
                    *warnings,
                    "virtio-net",
                    "virtio-net: receive chain {head} refused: {e}"
                );
                if a.rx.add_used(&a.mem, head, 0).is_ok() {
                    *used = true;
                }
            }
        }
    }
}

/// Writes `message` (its header, checked and finished for this guest, then
/// the frame) across the first `n` gathered chains and returns them to the
/// guest.
fn write_rx(a: &mut Active, n: usize, message: &[u8], stats: &mut NetStats, warnings: &mut u64) {
    let (header, frame) = message.split_at(HDR_LEN.min(message.len()));
    let mut hdr = [0u8; HDR_LEN];
    hdr.copy_from_slice(header);
    // num_buffers = chains used (1 without MRG_RXBUF).
    let num = u16::try_from(n).unwrap_or(u16::MAX);
    hdr[10..12].copy_from_slice(&num.to_le_bytes());
    let mut src = [&hdr[..], frame];
    let chains: Vec<WritableChain> = a.gathered.drain(..n).collect();
    for c in chains {
        let written = c.write(&a.mem, &mut src).unwrap_or_else(|w| {
            guest_warn!(
                *warnings,
                "virtio-net",
                "virtio-net: a receive buffer of chain {} became unwritable",
                c.head
            );
            w
        });
        if a.rx.add_used(&a.mem, c.head, written).is_ok() {
            stats.rx_buffers += 1;
        }
    }
    stats.rx_frames += 1;
    stats.rx_bytes += frame.len() as u64;
}

/// Copies a transmit chain (header and frame) into `buf` and checks the
/// header against the offloads `allowed` and the MTU; leaves the header in
/// its canonical form (`num_buffers` 0, unused fields 0). Returns the
/// message's length and its header.
fn read_tx_chain(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    allowed: Allowed,
    mtu: usize,
    buf: &mut Vec<u8>,
) -> Result<(usize, NetHeader), NetError> {
    let max = HDR_LEN
        + if allowed.tso4 {
            MAX_GSO_FRAME
        } else {
            mtu + ETH_HEADER_LEN
        };
    let len = chain::read_chain(chain, mem, max, buf)?;
    if len < HDR_LEN + ETH_HEADER_LEN {
        return Err(NetError::TxTooShort(len));
    }
    let (hdr, frame) = buf[..len].split_at(HDR_LEN);
    let hdr: [u8; HDR_LEN] = hdr.try_into().map_err(|_| NetError::TxTooShort(len))?;
    let header = NetHeader::parse(&hdr, frame, allowed, mtu)?;
    buf[..HDR_LEN].copy_from_slice(&header.encode());
    Ok((len, header))
}

/// The offloads `features` turn on: for transmitting (CSUM, HOST_TSO4) or
/// receiving (GUEST_CSUM, GUEST_TSO4). Segmentation needs checksums too.
fn offloads(features: u64, csum: u64, tso4: u64) -> Allowed {
    let checksum = features & csum != 0;
    Allowed {
        checksum,
        tso4: checksum && features & tso4 != 0,
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn device_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
            | VIRTIO_F_RING_EVENT_IDX
            | VIRTIO_NET_F_MAC
            | VIRTIO_NET_F_MTU
            | VIRTIO_NET_F_STATUS
            | VIRTIO_NET_F_MRG_RXBUF
            | if self.offloads { OFFLOAD_FEATURES } else { 0 }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        chain::read_config(&self.config(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The MAC is writable only with VIRTIO_NET_F_CTRL_MAC_ADDR (not offered).
        guest_warn!(self.guest_warnings, "virtio-net",
            "virtio-net: {}-byte config write at {offset:#x} ignored; the configuration is read-only",
            data.len()
        );
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let mut queues = ctx.queues.into_iter();
        let (Some(rx), Some(tx), None) = (queues.next(), queues.next(), queues.next()) else {
            return Err(ActivateError::Device(
                "virtio-net has exactly two queues (receiveq1, transmitq1)".into(),
            ));
        };
        let features = ctx.acked_features & self.device_features();
        self.active = Some(Active {
            mem: ctx.mem,
            rx,
            tx,
            interrupt: ctx.interrupt,
            mergeable: features & VIRTIO_NET_F_MRG_RXBUF != 0,
            tx_offloads: offloads(features, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4),
            rx_offloads: offloads(features, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4),
            gathered: Vec::new(),
        });
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        match usize::from(index) {
            RX => {
                // New receive buffers: deliver what waits, then read on.
                self.deliver_rx();
                self.read_backend();
            }
            TX => {
                if let Err(e) = self.process_tx() {
                    warn!("virtio-net: transmit processing stopped: {e}");
                }
            }
            _ => guest_warn!(
                self.guest_warnings,
                "virtio-net",
                "virtio-net: notify for nonexistent queue {index} ignored"
            ),
        }
    }

    fn backend_fd(&self) -> Option<RawFd> {
        if self.backend_open {
            self.backend.fd()
        } else {
            None
        }
    }

    fn backend_wants_write(&self) -> bool {
        self.tx_stalled.is_some()
    }

    fn exit_report(&self) -> Option<String> {
        Some(format!("virtio-net {}: {}", self.mac, self.stats))
    }

    fn process_backend(&mut self) {
        if self.tx_stalled.is_some() && self.flush_stalled() {
            if let Err(e) = self.process_tx() {
                warn!("virtio-net: transmit processing stopped: {e}");
            }
        }
        self.read_backend();
    }

    fn reset(&mut self) {
        // Held receive chains and waiting frames belong to the old driver.
        self.active = None;
        self.rx_pending.clear();
        self.tx_stalled = None;
    }
}
