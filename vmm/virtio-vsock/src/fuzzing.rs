//! Fuzzing entry point shared by the `cargo fuzz` target (`fuzz/`) and the
//! deterministic `fuzz_smoke` test.
//! Compiled only with the crate's `fuzzing` feature (off by default), which
//! `fuzz/Cargo.toml` and the crate's self dev-dependency (for `cargo test`)
//! turn on.
//!
//! [`run_one`] activates two devices (CIDs 3 and 4) on one router, each
//! on 1 MiB of guest RAM, and interprets the input as a program of steps
//! against device 3: raw descriptors and bytes written anywhere (including
//! outside RAM), heads made available on any queue, structured transmit
//! packets (valid for the protocol, or with one defect: wrong source CID,
//! unknown op, bad type, wrong len, data on a control packet, writable
//! descriptor), aimed at the host, at device 4, at itself or at unknown
//! CIDs; receive buffers of any size; device 4 answering as a well-behaved
//! or silent peer; notifications; resets of either device.
//!
//! Oracles, after every step: no used length beyond its buffer; every
//! packet device 3 receives parses as a header to CID 3 (RSTs come from
//! whatever CID the guest addressed); what the device and the router hold stays within their bounds;
//! while no raw step has run, a guard region no descriptor points at is
//! never written. After the run, both devices reset: nothing is held.
//!
//! Any panic is a bug.

// A fuzz harness: its casts are of its own constants and of bounded fuzz input.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::sync::Arc;

use virtio_driver_model::{Input, NoIrq, SplitRing};
use virtio_mmio_transport::{ActivateContext, VirtioDevice, VIRTIO_F_VERSION_1};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::conn::{Held, MAX_HOST_CONNS, TO_GUEST_CAP};
use crate::packet::{Header, Op, HDR_LEN, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND};
use crate::router::{LocalRouter, G2G_MAX_CONNS, G2G_MAX_CREDIT, INBOX_MAX_CONTROL};
use crate::{HostSide, Vsock};

const RAM: u64 = 1 << 20;
const QSIZE: u16 = 16;
const TX_BUFS: u64 = 0x1_0000;
const RX_BUFS: u64 = 0x8_0000;
const GUARD: u64 = 0xf_0000;
const GUARD_LEN: usize = 0x1_0000;
/// Bytes per step record; byte 0 is the operation.
pub const STEP_BYTES: usize = 16;

/// What a run reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FuzzStats {
    pub tx_structured: u64,
    pub tx_bad: u64,
    pub rx_packets: u64,
    pub to_peer: u64,
    pub peer_packets: u64,
    pub resets: u64,
    pub raw_steps: u64,
}

struct Dev {
    dev: Vsock,
    mem: GuestMemoryMmap,
    rings: [SplitRing; 3],
    /// Receive heads the driver has made available and the device not yet used,
    /// with the size each was posted with: a head is posted again only once used
    /// (the device may hold a chain it took, with the length it read then).
    rx_out: [Option<u32>; QSIZE as usize],
}

impl Dev {
    fn new(cid: u64, router: &LocalRouter) -> Option<Self> {
        let port = router.port(cid).ok()?;
        let host = HostSide::without_socket(Some(port.wake_fd())).ok()?;
        let dev = Vsock::new(cid, host, Some(port)).ok()?;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).ok()?;
        let _ = mem.write_slice(&vec![0xa5u8; GUARD_LEN], GuestAddress(GUARD));
        let mut d = Dev {
            dev,
            mem,
            rings: [
                SplitRing::new(0, QSIZE),
                SplitRing::new(0x1000, QSIZE),
                SplitRing::new(0x2000, QSIZE),
            ],
            rx_out: [None; QSIZE as usize],
        };
        d.activate();
        Some(d)
    }

    fn activate(&mut self) {
        self.rx_out = [None; QSIZE as usize];
        for (i, r) in self.rings.iter_mut().enumerate() {
            *r = SplitRing::new(0x1000 * i as u64, QSIZE);
            let _ = self
                .mem
                .write_slice(&[0u8; 0x300], GuestAddress(0x1000 * i as u64));
        }
        let qs: Option<Vec<_>> = self.rings.iter().map(|r| r.queue()).collect();
        if let Some(queues) = qs {
            let _ = self.dev.activate(ActivateContext {
                mem: self.mem.clone(),
                queues,
                interrupt: Arc::new(NoIrq),
                acked_features: VIRTIO_F_VERSION_1,
            });
        }
    }

    fn send(&mut self, slot: u16, bytes: &[u8], writable: bool) {
        let d = (slot % (QSIZE / 2)) * 2;
        let a = TX_BUFS + u64::from(d) * 0x4000;
        let (h, rest) = bytes.split_at(bytes.len().min(HDR_LEN));
        let _ = self.mem.write_slice(h, GuestAddress(a));
        let _ = self.mem.write_slice(rest, GuestAddress(a + 0x100));
        let w = if writable { 2 } else { 0 };
        self.rings[1].set_desc(&self.mem, d, a, h.len() as u32, 1 | w, d + 1);
        self.rings[1].set_desc(&self.mem, d + 1, a + 0x100, rest.len() as u32, 0, 0);
        self.rings[1].make_available(&self.mem, d);
        self.dev.queue_notify(1);
        self.rings[1].take_used(&self.mem);
    }

    fn post_rx(&mut self, size: u32) {
        for i in 0..QSIZE {
            if self.rx_out[usize::from(i)].is_some() {
                continue;
            }
            self.rx_out[usize::from(i)] = Some(size);
            let a = RX_BUFS + u64::from(i) * 0x4000;
            self.rings[0].set_desc(&self.mem, i, a, size, 2, 0);
            self.rings[0].make_available(&self.mem, i);
        }
        self.dev.queue_notify(0);
    }

    /// Takes used receive buffers and checks them.
    fn take_rx(&mut self, me: u64, checked: bool) -> Vec<Header> {
        let mut out = Vec::new();
        for (head, len) in self.rings[0].take_used(&self.mem) {
            let posted = self
                .rx_out
                .get_mut(usize::from(head))
                .and_then(Option::take);
            assert!(
                len <= posted.unwrap_or(0).max(HDR_LEN as u32 + (64 << 10)),
                "used length {len}"
            );
            if !checked || len == 0 {
                continue;
            }
            let Some(size) = posted else {
                panic!("head {head} used but not posted");
            };
            assert!(
                len <= size,
                "used length {len} beyond the {size}-byte buffer"
            );
            let mut b = vec![0u8; len as usize];
            assert!(self
                .mem
                .read_slice(&mut b, GuestAddress(RX_BUFS + u64::from(head) * 0x4000))
                .is_ok());
            let src = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
            let h =
                Header::parse(&b, src).unwrap_or_else(|e| panic!("device wrote a bad packet: {e}"));
            assert_eq!(h.dst_cid, me);
            out.push(h);
        }
        out
    }

    fn check_bounds(&self) {
        let (held, _) = self.dev.held();
        assert!(held.conns <= MAX_HOST_CONNS);
        assert!(held.to_guest_bytes <= held.conns * TO_GUEST_CAP);
    }
}

fn header(inp: &mut Input<'_>, peer_port: u32) -> (Header, Vec<u8>, u8) {
    let dst_cid = match inp.u8() % 8 {
        0..=2 => 4,
        3 | 4 => HOST_CID,
        5 => 3,
        6 => u64::from(inp.u8()),
        _ => inp.u64(),
    };
    let op = Op::from_u16(u16::from(inp.u8() % 7) + 1).unwrap_or(Op::Rw);
    let mut h = Header::new(op, (3, u32::from(inp.u8() % 4)), (dst_cid, peer_port));
    h.buf_alloc = u32::from(inp.u16()) << (inp.u8() % 16);
    h.fwd_cnt = inp.u32();
    if op == Op::Shutdown {
        h.flags = u32::from(inp.u8()) & (SHUTDOWN_RCV | SHUTDOWN_SEND);
    }
    let data = if op == Op::Rw {
        vec![0x5a; usize::from(inp.u16()) % 20_000]
    } else {
        Vec::new()
    };
    h.len = data.len() as u32;
    let defect = match inp.u8() {
        d if d < 200 => 0,
        d => d % 6 + 1,
    };
    (h, data, defect)
}

/// Runs one fuzz input. Panics only on a bug.
pub fn run_one(data: &[u8]) -> FuzzStats {
    let router = LocalRouter::new();
    let (Some(mut a), Some(mut b)) = (Dev::new(3, &router), Dev::new(4, &router)) else {
        return FuzzStats::default();
    };
    let mut stats = FuzzStats::default();
    let mut raw = false;
    let mut b_rx_size = HDR_LEN as u32 + 4096;
    let mut peer_answers = true;
    for rec in data.chunks(STEP_BYTES).take(256) {
        let mut inp = Input::new(rec);
        let op = inp.u8() % 12;
        if op <= 2 {
            raw = true;
            stats.raw_steps += 1;
        }
        match op {
            0 => {
                let (q, i, len, flags, next) = (
                    inp.u8() % 3,
                    inp.u8() as u16,
                    inp.u16(),
                    inp.u16(),
                    inp.u16(),
                );
                let addr = match inp.u8() % 4 {
                    0 => inp.u64(),
                    1 => RAM - u64::from(inp.u8()),
                    _ => RX_BUFS + u64::from(inp.u16()),
                };
                a.rings[usize::from(q)].set_desc(&a.mem, i, addr, u32::from(len), flags & 7, next);
            }
            1 => {
                let q = usize::from(inp.u8() % 3);
                let head = u16::from(inp.u8()) % (QSIZE + 2);
                a.rings[q].make_available(&a.mem, head);
                a.dev.queue_notify(q as u16);
            }
            2 => {
                let mut off = u64::from(inp.u16()) * 16 % RAM;
                if off % 0x1000 >= 0x200 && off < 0x3000 {
                    off += 0x100;
                }
                let n = usize::from(inp.u8() % 8);
                let bytes: Vec<u8> = (0..n).map(|_| inp.u8()).collect();
                let _ = a.mem.write_slice(&bytes, GuestAddress(off));
            }
            3..=6 => {
                let slot = u16::from(inp.u8());
                let peer_port = 80 + u32::from(inp.u8() % 2);
                let (h, d, defect) = header(&mut inp, peer_port);
                let mut bytes = h.encode().to_vec();
                bytes.extend_from_slice(&d);
                match defect {
                    1 => bytes[0] ^= 1,
                    2 => bytes[30] = 8,
                    3 => bytes[28] = 2,
                    4 => bytes[24] = bytes[24].wrapping_add(1),
                    5 => bytes.truncate(inp.u8() as usize % HDR_LEN),
                    _ => {}
                }
                a.send(slot, &bytes, defect == 6);
                stats.tx_structured += 1;
            }
            7 => {
                let rx_size = match inp.u8() % 4 {
                    0 => u32::from(inp.u8()),
                    1 => HDR_LEN as u32 + u32::from(inp.u16()) % 0x3000,
                    _ => HDR_LEN as u32 + 4096,
                };
                a.post_rx(rx_size);
            }
            8 | 9 => {
                // The peer: accept, read and give credit, or stay silent.
                if inp.u8() % 4 == 0 {
                    peer_answers = !peer_answers;
                }
                if peer_answers {
                    b.post_rx(b_rx_size);
                }
                for h in b.take_rx(4, true) {
                    stats.peer_packets += 1;
                    let reply = match h.op {
                        Op::Request => Some(Op::Response),
                        Op::Rw | Op::CreditRequest => Some(Op::CreditUpdate),
                        Op::Shutdown => Some(Op::Rst),
                        _ => None,
                    };
                    if let (Some(op), true) = (reply, peer_answers) {
                        let mut r = h.reply(op);
                        r.buf_alloc = 64 << 10;
                        r.fwd_cnt = inp.u32();
                        let slot = u16::from(inp.u8());
                        b.send(slot, &r.encode(), false);
                    }
                }
                b_rx_size = HDR_LEN as u32 + 64 + u32::from(inp.u16()) % 8192;
            }
            10 => {
                a.dev.process_backend();
                b.dev.process_backend();
            }
            _ => {
                stats.resets += 1;
                if inp.u8() & 1 == 0 {
                    a.dev.reset();
                    a.activate();
                } else {
                    b.dev.reset();
                    b.activate();
                }
            }
        }
        let got = a.take_rx(3, !raw);
        stats.rx_packets += got.len() as u64;
        a.check_bounds();
        b.check_bounds();
        let held = router.held();
        assert!(held.conns <= 2 * G2G_MAX_CONNS);
        assert!(held.bytes <= held.conns * G2G_MAX_CREDIT as usize + 2 * (64 << 10));
        assert!(held.packets <= 2 * INBOX_MAX_CONTROL + held.bytes);
        if !raw {
            let mut guard = vec![0u8; GUARD_LEN];
            assert!(a.mem.read_slice(&mut guard, GuestAddress(GUARD)).is_ok());
            assert!(
                guard.iter().all(|&x| x == 0xa5),
                "the guard region was written"
            );
        }
    }
    stats.tx_bad = a.dev.stats().tx_bad;
    stats.to_peer = a.dev.stats().to_guests;
    a.dev.reset();
    b.dev.reset();
    assert_eq!(a.dev.held(), (Held::default(), 0));
    assert_eq!(b.dev.held(), (Held::default(), 0));
    assert_eq!(router.held(), Default::default());
    stats
}
