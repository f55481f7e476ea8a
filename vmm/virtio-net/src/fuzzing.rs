//! Fuzzing entry point shared by the `cargo fuzz` target (`fuzz/`) and the
//! deterministic `fuzz_smoke` test.
//! Compiled only with the crate's `fuzzing` feature (off by default), which
//! `fuzz/Cargo.toml` and the crate's self dev-dependency (for `cargo test`)
//! turn on.
//!
//! [`run_one`] activates a device (MTU, MRG_RXBUF from the first byte) on
//! 256 KiB of guest RAM with a socketpair as its switch port, and
//! interprets the rest as a program of steps: raw descriptors and bytes
//! written anywhere (including outside RAM), heads made available on either
//! queue, structured transmit frames (valid, or with one defect: writable
//! descriptor, too short, too long, offload header), structured receive
//! buffers, frames of any length from the switch side, notifications of
//! any queue, the switch side draining its socket, and resets.
//!
//! Oracles, after every step:
//! - every frame that reaches the switch is 14..=MTU+14 bytes;
//! - while no raw step has run: the switch gets exactly the valid
//!   structured transmit frames, in order; every receive buffer the device
//!   used holds a header whose `num_buffers` spans used buffers, and the
//!   reassembled frame is byte for byte one the switch side sent, in send
//!   order; a guard region no descriptor points at is never written;
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

use crate::{Net, SwitchPort, HDR_LEN, RX_QUEUE_FRAMES, VIRTIO_NET_F_MRG_RXBUF};

const RAM: u64 = 256 << 10;
const QSIZE: u16 = 16;
const RX_RING: u64 = 0;
const TX_RING: u64 = 0x1000;
const RX_BUFS: u64 = 0x1_0000;
const TX_BUFS: u64 = 0x2_0000;
const SLOT: u64 = 0x1000;
const GUARD: u64 = 0x3_0000;
const GUARD_LEN: usize = 0x1_0000;
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
    /// Frames sent by the switch side, by tag, not yet seen in the guest.
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
                    assert!(
                        (14..=self.mtu + 14).contains(&n),
                        "the device sent a {n}-byte frame (MTU {})",
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
        if defect == 4 {
            hdr[0] = 1;
        }
        let frame: Vec<u8> = (0..len).map(|i| (i as u8) ^ tag).collect();
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
            self.tx_expect.push_back(frame);
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
        for _ in 0..count {
            let tag = self.next_tag;
            self.next_tag += 1;
            let mut f: Vec<u8> = (0..len)
                .map(|i| (i as u8).wrapping_add(tag as u8))
                .collect();
            if len >= 18 {
                f[14..18].copy_from_slice(&tag.to_le_bytes());
            }
            if matches!(self.peer.send(&f), Ok(net_switch::socket::Send::Sent)) {
                self.stats.rx_sent += 1;
                if (14..=self.mtu + 14).contains(&len) {
                    self.rx_sent.push_back((tag, f));
                }
            }
        }
        self.dev.process_backend();
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
            let frame = &data[HDR_LEN..];
            // The oldest frames may have been dropped; this one is the next
            // one sent that has its bytes.
            let pos = self.rx_sent.iter().position(|(_, f)| f == frame);
            let Some(pos) = pos else {
                panic!(
                    "the guest received a {}-byte frame the switch never sent",
                    frame.len()
                );
            };
            self.stats.rx_dropped += pos as u64;
            self.rx_sent.drain(..=pos);
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
    } | virtio_mmio_transport::VIRTIO_F_VERSION_1;
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
    h.stats.tx_bad_chains = h.dev.stats().tx_bad_chains;
    h.stats
}
