//! Fuzzing entry point shared by the `cargo fuzz` target (`fuzz/`) and the
//! deterministic `fuzz_smoke` test.
//! Compiled only with the crate's `fuzzing` feature (off by default), which
//! `fuzz/Cargo.toml` and the crate's self dev-dependency (for `cargo test`)
//! turn on.
//!
//! [`run_one`] activates a device (MTU, MRG_RXBUF and the four offloads
//! from the first byte) on 256 KiB of guest RAM with a socketpair as its
//! switch port, and interprets the rest as a program of steps: raw
//! descriptors and bytes written anywhere (including outside RAM), heads
//! made available on either queue, structured transmit frames (plain, with
//! a partial TCP checksum, or a TCP packet for segmentation; or with one
//! defect: writable descriptor, too short, too long, offload header not
//! negotiated), structured receive buffers, messages of any length from the
//! switch side (plain, partial checksum, segmentation, or a header of random
//! bytes), notifications of any queue, the switch side draining its socket,
//! and resets.
//!
//! Oracles, after every step:
//! - every message that reaches the switch has a frame of 14..=MTU+14 bytes
//!   (64 KiB + 14 for segmentation, and only if the guest negotiated it);
//! - no received frame has offloads the guest did not negotiate, and every
//!   IPv4/TCP frame received without NEEDS_CSUM has valid checksums;
//! - while no raw step has run: the switch gets exactly the valid
//!   structured transmit frames, in order, behind the header written by
//!   hand here; every receive buffer the device used holds a header whose
//!   `num_buffers` spans used buffers, and the reassembled message is byte
//!   for byte one the switch side sent (as [`offload::finish`] makes it for
//!   this guest), in send order; a guard region no descriptor points at is
//!   never written;
//! - the frames waiting for receive buffers never exceed the bound.
//!
//! Any panic is a bug.

// A fuzz harness: its casts are of its own constants and of bounded fuzz input.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use net_switch::socket::{FrameSocket, Recv};
use virtio_driver_model::{Input, NoIrq, SplitRing};
use virtio_mmio_transport::{ActivateContext, VirtioDevice};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::offload::{self, sample, Allowed, NetHeader, MAX_GSO_FRAME};
use crate::{
    Net, SwitchPort, HDR_LEN, OFFLOAD_FEATURES, RX_QUEUE_FRAMES, VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_MRG_RXBUF,
};

const RAM: u64 = 256 << 10;
const QSIZE: u16 = 16;
const RX_RING: u64 = 0;
const TX_RING: u64 = 0x1000;
const RX_BUFS: u64 = 0x1_0000;
const TX_BUFS: u64 = 0x2_0000;
const SLOT: u64 = 0x1000;
const GUARD: u64 = 0x3_0000;
const GUARD_LEN: usize = 0x1_0000;
/// Headers written by hand (the oracle does not borrow the device's encoder)
/// for a sample TCP frame: NEEDS_CSUM at 34+16; and that plus GSO_TCPV4 with
/// hdr_len 54 (gso_size filled in by the caller).
const CSUM_HDR: [u8; HDR_LEN] = [1, 0, 0, 0, 0, 0, 34, 0, 16, 0, 0, 0];
const TSO_HDR: [u8; HDR_LEN] = [1, 1, 54, 0, 0, 0, 34, 0, 16, 0, 0, 0];
/// Bytes per step record; byte 0 is the operation.
pub const STEP_BYTES: usize = 16;

/// What a run reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FuzzStats {
    pub tx_structured: u64,
    pub tx_delivered: u64,
    pub tx_bad_chains: u64,
    pub rx_sent: u64,
    pub rx_delivered: u64,
    pub rx_merged: u64,
    pub rx_dropped: u64,
    /// Offload messages: transmitted by the guest, and sent by the switch side.
    pub tx_offload: u64,
    pub rx_offload: u64,
    /// The device's own counts: segmentation frames sent on, and received
    /// frames it finished (segmented or checksummed) for the guest.
    pub tx_segmentation: u64,
    pub rx_finished: u64,
    pub resets: u64,
    pub raw_steps: u64,
}

struct Harness {
    dev: Net,
    mem: GuestMemoryMmap,
    rx: SplitRing,
    tx: SplitRing,
    peer: FrameSocket,
    features: u64,
    mtu: usize,
    /// A raw step has run: only the structural oracles hold.
    raw: bool,
    tx_expect: VecDeque<Vec<u8>>,
    tx_busy: [bool; QSIZE as usize],
    /// Posted receive buffers by head: (address, size).
    rx_posted: BTreeMap<u16, (u64, u32)>,
    /// Messages the guest should see (`num_buffers` 0) for what the switch
    /// side sent, by tag, not yet seen in the guest.
    rx_sent: VecDeque<(u32, Vec<u8>)>,
    next_tag: u32,
    stats: FuzzStats,
}

fn addr(inp: &mut Input<'_>) -> u64 {
    match inp.u8() % 6 {
        0 => inp.u64(),
        1 => RAM - u64::from(inp.u8()),
        2 => u64::from(inp.u16()),
        _ => RX_BUFS + u64::from(inp.u16()) % 0x2_0000,
    }
}

fn new_ring(base: u64) -> SplitRing {
    SplitRing::new(base, QSIZE)
}

impl Harness {
    fn activate(&mut self) {
        self.rx = new_ring(RX_RING);
        self.tx = new_ring(TX_RING);
        let _ = self.mem.write_slice(&[0u8; 0x300], GuestAddress(RX_RING));
        let _ = self.mem.write_slice(&[0u8; 0x300], GuestAddress(TX_RING));
        self.tx_busy = [false; QSIZE as usize];
        self.rx_posted.clear();
        self.tx_expect.clear();
        if let (Some(rx), Some(tx)) = (self.rx.queue(), self.tx.queue()) {
            let _ = self.dev.activate(ActivateContext {
                mem: self.mem.clone(),
                queues: vec![rx, tx],
                interrupt: Arc::new(NoIrq),
                acked_features: self.features,
            });
        }
    }

    fn drain_peer(&mut self) {
        let mut buf = vec![0u8; 70_000];
        loop {
            match self.peer.recv(&mut buf) {
                Ok(Recv::Frame(n)) => {
                    let gso = n > HDR_LEN && buf[1] != 0;
                    let max = if gso {
                        assert_ne!(
                            self.features & OFFLOAD_FEATURES,
                            0,
                            "segmentation not negotiated"
                        );
                        MAX_GSO_FRAME
                    } else {
                        self.mtu + 14
                    };
                    assert!(
                        (HDR_LEN + 14..=HDR_LEN + max).contains(&n),
                        "the device sent a {n}-byte message (MTU {})",
                        self.mtu
                    );
                    self.stats.tx_delivered += 1;
                    if !self.raw {
                        let want = self.tx_expect.pop_front();
                        assert_eq!(
                            want.as_deref(),
                            Some(&buf[..n]),
                            "the switch got a frame the guest did not send"
                        );
                    }
                }
                _ => return,
            }
        }
    }

    fn structured_tx(&mut self, inp: &mut Input<'_>) {
        let slot = (u16::from(inp.u8()) % (QSIZE / 2)) * 2;
        if self.tx_busy[usize::from(slot)] {
            return;
        }
        let defect = match inp.u8() {
            d if d < 180 => 0,
            d => d % 4 + 1,
        };
        let len = match defect {
            2 => usize::from(inp.u8() % 14),
            3 => self.mtu + 15 + usize::from(inp.u8()),
            _ => 14 + usize::from(inp.u16()) % (self.mtu + 1).min(4000 - HDR_LEN - 14),
        };
        let tag = inp.u8();
        let split = inp.u8() & 1 == 1;
        let mut hdr = [0u8; HDR_LEN];
        let offloads = self.features & OFFLOAD_FEATURES != 0;
        if defect == 4 {
            // Never valid: NEEDS_CSUM without CSUM, or UDP segmentation.
            if offloads {
                hdr[1] = 3;
            } else {
                hdr[0] = 1;
            }
        }
        let mut frame: Vec<u8> = (0..len).map(|i| (i as u8) ^ tag).collect();
        let kind = if offloads && defect == 0 {
            inp.u8() % 3
        } else {
            0
        };
        let max_mss = self.mtu.saturating_sub(40).min(3000);
        if kind == 1 || (kind == 2 && max_mss < 3) {
            // A partial TCP checksum, which the device passes on.
            frame = sample::tcp4_frame(usize::from(inp.u16()) % 1400.min(self.mtu - 40), 0x18, 0);
            hdr = CSUM_HDR;
        } else if kind == 2 {
            // A TCP packet for segmentation, bigger than the MTU when it can be.
            // At least 3: 3000 bytes then make at most 1000 segments (MAX_SEGMENTS).
            let mss = 3 + usize::from(inp.u16()) % max_mss.saturating_sub(2).max(1);
            frame = sample::tcp4_frame(usize::from(inp.u16()) % 3000, 0x18, 0);
            hdr = TSO_HDR;
            hdr[4..6].copy_from_slice(&(mss as u16).to_le_bytes());
        }
        if kind != 0 {
            self.stats.tx_offload += 1;
        }
        let len = frame.len();
        let base = TX_BUFS + u64::from(slot) * SLOT;
        let flags = if defect == 1 { 2 } else { 0 };
        if len + HDR_LEN > 2 * SLOT as usize {
            // Too long for the slot memory: described, not written.
            self.tx
                .set_desc(&self.mem, slot, base, (len + HDR_LEN) as u32, flags, 0);
        } else if split {
            let _ = self.mem.write_slice(&hdr, GuestAddress(base));
            let _ = self.mem.write_slice(&frame, GuestAddress(base + 0x40));
            self.tx
                .set_desc(&self.mem, slot, base, HDR_LEN as u32, flags | 1, slot + 1);
            self.tx
                .set_desc(&self.mem, slot + 1, base + 0x40, len as u32, flags, 0);
        } else {
            let mut all = hdr.to_vec();
            all.extend_from_slice(&frame);
            let _ = self.mem.write_slice(&all, GuestAddress(base));
            self.tx
                .set_desc(&self.mem, slot, base, all.len() as u32, flags, 0);
        }
        self.tx_busy[usize::from(slot)] = true;
        self.tx.make_available(&self.mem, slot);
        self.stats.tx_structured += 1;
        if defect == 0 {
            self.tx_expect.push_back([&hdr[..], &frame].concat());
        }
        self.dev.queue_notify(1);
    }

    fn structured_rx(&mut self, inp: &mut Input<'_>) {
        let n = inp.u8() % 4 + 1;
        let size = 1 + u32::from(inp.u16()) % SLOT as u32;
        for _ in 0..n {
            let Some(head) = (0..QSIZE).find(|h| !self.rx_posted.contains_key(h)) else {
                break;
            };
            let a = RX_BUFS + u64::from(head) * SLOT;
            self.rx.set_desc(&self.mem, head, a, size, 2, 0);
            self.rx_posted.insert(head, (a, size));
            self.rx.make_available(&self.mem, head);
        }
        self.dev.queue_notify(0);
    }

    fn peer_send(&mut self, inp: &mut Input<'_>) {
        let len = match inp.u8() % 8 {
            0 => usize::from(inp.u8() % 14),
            1 => self.mtu + 14 + usize::from(inp.u8() % 4),
            _ => 14 + usize::from(inp.u16()) % (self.mtu + 1),
        };
        let count = inp.u8() % 8 + 1;
        let kind = inp.u8() % 8;
        let mut hdr = [0u8; HDR_LEN];
        let mut sample_len = 0;
        match kind {
            // A partial checksum, or a packet for segmentation (MSS from the input).
            4 | 5 => {
                hdr = CSUM_HDR;
                sample_len = usize::from(inp.u16()) % self.mtu.saturating_sub(40).max(1);
            }
            6 => {
                hdr = TSO_HDR;
                hdr[4..6].copy_from_slice(&(1 + inp.u16() % 2000).to_le_bytes());
                sample_len = usize::from(inp.u16()) % 6000;
            }
            // Random header bytes (DATA_VALID, gso types, offsets, num_buffers).
            7 => hdr.iter_mut().for_each(|b| *b = inp.u8()),
            _ => {}
        }
        for _ in 0..count {
            let tag = self.next_tag;
            self.next_tag += 1;
            let mut f: Vec<u8> = if matches!(kind, 4..=6) {
                self.stats.rx_offload += 1;
                sample::tcp4_frame(sample_len, 0x18, 0)
            } else {
                (0..len)
                    .map(|i| (i as u8).wrapping_add(tag as u8))
                    .collect()
            };
            if f.len() >= 18 && !matches!(kind, 4..=6) {
                f[14..18].copy_from_slice(&tag.to_le_bytes());
            }
            let message = [&hdr[..], &f].concat();
            if matches!(self.peer.send(&message), Ok(net_switch::socket::Send::Sent)) {
                self.stats.rx_sent += 1;
                for m in self.expected_rx(message) {
                    self.rx_sent.push_back((tag, m));
                }
            }
        }
        self.dev.process_backend();
    }

    /// What the guest should receive for `message` from the switch side:
    /// nothing if it is malformed, else the message or its segments as
    /// finished for what this guest negotiated.
    fn expected_rx(&self, mut message: Vec<u8>) -> Vec<Vec<u8>> {
        if message.len() < HDR_LEN + 14 {
            return Vec::new();
        }
        message[0] &= !offload::VIRTIO_NET_HDR_F_DATA_VALID;
        let mut hdr = [0u8; HDR_LEN];
        hdr.copy_from_slice(&message[..HDR_LEN]);
        let Ok(h) = NetHeader::parse(&hdr, &message[HDR_LEN..], Allowed::ALL, self.mtu) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        offload::finish(message, h, self.guest_offloads(), |m| out.push(m));
        out
    }

    fn guest_offloads(&self) -> Allowed {
        let checksum = self.features & VIRTIO_NET_F_GUEST_CSUM != 0;
        Allowed {
            checksum,
            tso4: checksum && self.features & VIRTIO_NET_F_GUEST_TSO4 != 0,
        }
    }

    /// Checks what the device put in the receive ring.
    fn check_rx(&mut self) {
        let used = self.rx.take_used(&self.mem);
        let mut i = 0;
        while i < used.len() {
            let (head, len) = used[i];
            let Some((a, size)) = self.rx_posted.remove(&head) else {
                assert!(self.raw, "head {head} used but never posted");
                i += 1;
                continue;
            };
            // Raw steps may have rewritten this head's descriptor since it was posted
            // (the device used the one it read when it took the chain), so only the
            // structured runs can hold the device to the posted size.
            if self.raw {
                i += 1;
                continue;
            }
            assert!(
                len <= size,
                "used length {len} beyond the {size}-byte buffer"
            );
            let mut buf = vec![0u8; len as usize];
            assert!(self.mem.read_slice(&mut buf, GuestAddress(a)).is_ok());
            assert!(
                buf.len() >= HDR_LEN || i + 1 < used.len(),
                "a short first buffer"
            );
            let mut data = buf;
            // The header may itself span buffers; num_buffers is at 10..12.
            let mut j = i + 1;
            while data.len() < HDR_LEN && j < used.len() {
                data.extend(self.take_buf(used[j]));
                j += 1;
            }
            let num = usize::from(u16::from_le_bytes([data[10], data[11]]));
            assert!(num >= 1, "num_buffers 0");
            if self.features & VIRTIO_NET_F_MRG_RXBUF == 0 {
                assert_eq!(num, 1);
            }
            while j < i + num {
                assert!(j < used.len(), "num_buffers {num} beyond the used entries");
                data.extend(self.take_buf(used[j]));
                j += 1;
            }
            if num > 1 {
                self.stats.rx_merged += 1;
            }
            let (flags, gso) = (data[0], data[1]);
            let can = self.guest_offloads();
            assert!(
                flags == 0 || (flags == 1 && can.checksum),
                "flags {flags:#x} for {can:?}"
            );
            assert!(
                gso == 0 || (gso == 1 && can.tso4),
                "gso_type {gso:#x} for {can:?}"
            );
            let frame = &data[HDR_LEN..];
            if gso == 0 {
                assert!(frame.len() <= self.mtu + 14, "a {}-byte frame", frame.len());
            }
            let tcp4 = frame.len() >= 54 && frame[12..14] == [8, 0] && frame[23] == 6;
            if flags == 0 && tcp4 {
                assert!(
                    sample::checksums_verify(frame),
                    "a TCP frame with a bad checksum"
                );
            }
            let frame_len = frame.len();
            data[10..12].copy_from_slice(&[0, 0]);
            // The oldest frames may have been dropped; this one is the next
            // one sent that has its bytes. Frames are in order per source MAC
            // only (the device serves sources round robin), so the ones before
            // it from its source were dropped, other sources' wait.
            let pos = self.rx_sent.iter().position(|(_, m)| *m == data);
            let Some(pos) = pos else {
                panic!("the guest received a {frame_len}-byte frame the switch never sent");
            };
            let source = |m: &[u8]| m.get(HDR_LEN + 6..HDR_LEN + 12).map(<[u8]>::to_vec);
            let src = source(&data);
            let before = self.rx_sent.len();
            let mut i_msg = 0;
            self.rx_sent.retain(|(_, m)| {
                let keep = i_msg > pos || (i_msg < pos && source(m) != src);
                i_msg += 1;
                keep
            });
            self.stats.rx_dropped += (before - self.rx_sent.len() - 1) as u64;
            self.stats.rx_delivered += 1;
            i = j;
        }
    }

    fn take_buf(&mut self, (head, len): (u16, u32)) -> Vec<u8> {
        let Some((a, size)) = self.rx_posted.remove(&head) else {
            panic!("merged buffer {head} never posted");
        };
        assert!(len <= size);
        let mut b = vec![0u8; len as usize];
        assert!(self.mem.read_slice(&mut b, GuestAddress(a)).is_ok());
        b
    }
}

/// Runs one fuzz input. Panics only on a bug.
pub fn run_one(data: &[u8]) -> FuzzStats {
    let mode = data.first().copied().unwrap_or(0);
    let mtu: u16 = match (mode >> 1) % 4 {
        0 | 1 => 1500,
        2 => 68,
        _ => 9000,
    };
    let features = if mode & 1 == 1 {
        VIRTIO_NET_F_MRG_RXBUF
    } else {
        0
    } | if mode & 8 == 8 { OFFLOAD_FEATURES } else { 0 }
        | virtio_mmio_transport::VIRTIO_F_VERSION_1;
    let Ok((ours, peer)) = FrameSocket::pair() else {
        return FuzzStats::default();
    };
    let Ok(dev) = Net::new(
        Box::new(SwitchPort::from_socket(ours)),
        crate::mac_from_name("fuzz"),
        mtu,
    ) else {
        return FuzzStats::default();
    };
    let Ok(mem) = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]) else {
        return FuzzStats::default();
    };
    let _ = mem.write_slice(&vec![0xa5u8; GUARD_LEN], GuestAddress(GUARD));
    let mut h = Harness {
        dev,
        mem,
        rx: new_ring(RX_RING),
        tx: new_ring(TX_RING),
        peer,
        features,
        mtu: usize::from(mtu),
        raw: false,
        tx_expect: VecDeque::new(),
        tx_busy: [false; QSIZE as usize],
        rx_posted: BTreeMap::new(),
        rx_sent: VecDeque::new(),
        next_tag: 0,
        stats: FuzzStats::default(),
    };
    h.activate();
    for rec in data.get(1..).unwrap_or(&[]).chunks(STEP_BYTES).take(256) {
        let mut inp = Input::new(rec);
        let op = inp.u8() % 12;
        if op <= 3 {
            h.raw = true;
            h.stats.raw_steps += 1;
        }
        match op {
            0 | 1 => {
                let (i, a, len, flags, next) = (
                    inp.u8() as u16,
                    addr(&mut inp),
                    inp.u16(),
                    inp.u16(),
                    inp.u16(),
                );
                let ring = if op == 0 { &h.rx } else { &h.tx };
                ring.set_desc(&h.mem, i, a, u32::from(len), flags & 7, next);
            }
            2 => {
                let head = u16::from(inp.u8()) % (QSIZE + 2);
                if inp.u8() & 1 == 0 {
                    h.rx.make_available(&h.mem, head);
                } else {
                    h.tx.make_available(&h.mem, head);
                }
            }
            3 => {
                // Anywhere but the used rings, which only the device writes.
                let mut off = u64::from(inp.u16()) % RAM;
                if (0x200..0x300).contains(&off) || (0x1200..0x1300).contains(&off) {
                    off += 0x100;
                }
                let n = usize::from(inp.u8() % 8);
                let bytes: Vec<u8> = (0..n).map(|_| inp.u8()).collect();
                let _ = h.mem.write_slice(&bytes, GuestAddress(off));
            }
            4 | 5 => h.structured_tx(&mut inp),
            6 | 7 => h.structured_rx(&mut inp),
            8 | 9 => h.peer_send(&mut inp),
            10 => {
                if inp.u8() & 1 == 0 {
                    h.dev.queue_notify(u16::from(inp.u8() % 3));
                } else {
                    h.drain_peer();
                    h.dev.process_backend();
                }
            }
            _ => {
                h.dev.reset();
                h.stats.resets += 1;
                // Frames sent before the reset may or may not arrive: start over.
                h.drain_peer();
                h.rx_sent.clear();
                h.activate();
            }
        }
        // Completed transmit chains free their slots.
        for (head, _) in h.tx.take_used(&h.mem) {
            if let Some(b) = h.tx_busy.get_mut(usize::from(head)) {
                *b = false;
            }
        }
        h.check_rx();
        assert!(h.dev.rx_pending() <= RX_QUEUE_FRAMES);
        if !h.raw {
            let mut guard = vec![0u8; GUARD_LEN];
            assert!(h.mem.read_slice(&mut guard, GuestAddress(GUARD)).is_ok());
            assert!(
                guard.iter().all(|&b| b == 0xa5),
                "the guard region was written"
            );
        }
    }
    h.drain_peer();
    let dev = h.dev.stats();
    h.stats.tx_bad_chains = dev.tx_bad_chains;
    h.stats.tx_segmentation = dev.tx_segmentation;
    h.stats.rx_finished = dev.rx_finished_in_software;
    h.stats
}
