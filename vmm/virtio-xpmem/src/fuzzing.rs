//! Fuzzing entry point shared by the `cargo fuzz` target (`fuzz/`) and the
//! deterministic `fuzz_smoke` test.
//! Compiled only with the crate's `fuzzing` feature (off by default), which
//! `fuzz/Cargo.toml` and the crate's self dev-dependency (for `cargo test`)
//! turn on.
//!
//! [`run_one`] builds a hub with two VMs (memfd-backed RAM, real
//! [`MmapAperture`](crate::aperture::MmapAperture), manual clock) and
//! interprets the input as a program of guest actions: raw descriptors and
//! bytes written anywhere (including outside RAM and into the aperture),
//! heads made available, well-formed requests built from the input with ids
//! learned from earlier responses and events, queue notifications, clock
//! advances, device resets and injected mmap failures of the aperture. After
//! every step the domain's invariants must hold and the real windows must
//! agree with the domain (the oracle): a page the domain maps shows the
//! exporter's page, every other page shows the filler, unless the VM was cut
//! off from that window. Windows have 1024 pages and a small mapping budget,
//! so the budget and its fallbacks are reachable. At the end, dropping the
//! devices must leave nothing held. Any panic is a bug.

// A fuzz harness: its casts are of its own constants and of bounded fuzz input.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Arc;

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_driver_model::{Input, NoIrq, SplitRing};
use virtio_mmio_transport::{ActivateContext, VirtioDevice};
use virtio_xpmem_wire as wire;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap};
use xpmem_domain::VmId;

use crate::aperture::{
    ApertureFaults, ApertureWindows, MmapAperture, VmRamLayout, FILLER_BYTE, PAGE_SIZE,
};
use crate::{HubClock, HubConfig, ManualClock, XpmemDevice, XpmemHub};

const RAM: u64 = 1 << 20;
const QSIZE: u16 = 16;
const RW_GPA: u64 = 0x1_0000_0000;
const RO_GPA: u64 = 0x1_1000_0000;
const WIN_LEN: u64 = 1024 * 4096;
/// Host mappings per VM: the filler of both windows (2 + 2), the split reserve (16) and
/// room for a few dozen scattered runs.
const MAPPINGS_PER_VM: u64 = 4 + 16 + 40;
const BUF_BASE: u64 = 0x1_0000;
const SLOT: u64 = 0x1000;
const EV_BASE: u64 = 0x8_0000;
const USER_GPA: u64 = 0x4_0000;
/// Bytes per step record of a fuzz input: byte 0 is the operation (bit 7
/// picks the VM, bits 0..2 the action); for a structured request (actions
/// 3 and 4) byte 1 is the head and byte 2 selects the opcode (mod 13, in
/// opcode order starting at MAKE = 0).
pub const STEP_BYTES: usize = 40;

struct Vm {
    mem: GuestMemoryMmap,
    windows: ApertureWindows,
    /// Windows (rw, ro) the hub cut this VM off from (a memslot would be gone).
    cut_off: Arc<[std::sync::atomic::AtomicBool; 2]>,
    dev: XpmemDevice,
    reqq: SplitRing,
    evq: SplitRing,
    /// Opcode of the structured request last placed at each head.
    sent: [u32; QSIZE as usize],
}

fn memfd(len: u64) -> Option<File> {
    // SAFETY: valid C string; memfd_create has no memory side effects.
    let fd = unsafe { libc::memfd_create(c"fuzz-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd was just created and is owned by nobody else.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(len).ok()?;
    Some(f)
}

impl Vm {
    fn new(hub: &Arc<XpmemHub>, id: u32) -> Option<Self> {
        let mem = GuestMemoryMmap::from_ranges_with_files([(
            GuestAddress(0),
            RAM as usize,
            Some(FileOffset::new(memfd(RAM)?, 0)),
        )])
        .ok()?;
        let windows = ApertureWindows::reserve(RW_GPA, WIN_LEN, RO_GPA, WIN_LEN).ok()?;
        let layout = VmRamLayout::from_guest_memory(&mem).ok()?;
        let dev = hub.add_vm(VmId(id), layout, windows.clone()).ok()?;
        let cut_off: Arc<[std::sync::atomic::AtomicBool; 2]> = Arc::default();
        let flags = cut_off.clone();
        hub.set_cut_off(
            VmId(id),
            Box::new(move |w| {
                flags[usize::from(w == xpmem_domain::Window::Ro)]
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            }),
        );
        let mut vm = Self {
            mem,
            windows,
            cut_off,
            dev,
            reqq: SplitRing::new(0, QSIZE),
            evq: SplitRing::new(0x1000, QSIZE),
            sent: [0; QSIZE as usize],
        };
        vm.activate()?;
        Some(vm)
    }

    fn activate(&mut self) -> Option<()> {
        self.reqq = SplitRing::new(0, QSIZE);
        self.evq = SplitRing::new(0x1000, QSIZE);
        let _ = self.mem.write_slice(&[0u8; 0x2000], GuestAddress(0));
        let features = self.dev.device_features();
        self.dev
            .activate(ActivateContext {
                mem: self.mem.clone(),
                queues: vec![self.reqq.queue()?, self.evq.queue()?],
                interrupt: Arc::new(NoIrq),
                acked_features: features,
            })
            .ok()?;
        for k in 0..QSIZE / 2 {
            self.evq.set_desc(
                &self.mem,
                k,
                EV_BASE + u64::from(k) * 64,
                64,
                VRING_DESC_F_WRITE as u16,
                0,
            );
            self.evq.make_available(&self.mem, k);
        }
        Some(())
    }

    /// Collects ids from completed structured requests and from events,
    /// and gives event buffers back.
    fn harvest(&mut self, ids: &mut Vec<u64>) {
        for (head, len) in self.reqq.take_used(&self.mem) {
            let h = usize::from(head % QSIZE);
            let opcode = std::mem::take(&mut self.sent[h]);
            let resp = BUF_BASE + u64::from(head % QSIZE) * SLOT + 0x800;
            let mut b = [0u8; 32];
            let returns_id = matches!(
                opcode,
                wire::VIRTIO_XPMEM_REQ_MAKE
                    | wire::VIRTIO_XPMEM_REQ_GET
                    | wire::VIRTIO_XPMEM_REQ_ATTACH
            );
            if returns_id
                && len >= 16
                && self.mem.read_slice(&mut b, GuestAddress(resp)).is_ok()
                && b[0..4] == [0; 4]
            {
                ids.push(u64::from_le_bytes(b[8..16].try_into().unwrap_or([0; 8])));
            }
        }
        for (head, len) in self.evq.take_used(&self.mem) {
            let addr = EV_BASE + u64::from(head % QSIZE) * 64;
            let mut b = vec![0u8; (len as usize).min(64)];
            if self.mem.read_slice(&mut b, GuestAddress(addr)).is_ok() {
                if let Ok(ev) = wire::Event::parse(&b) {
                    match ev {
                        wire::Event::Resolve { resolve_id, .. } => ids.push(resolve_id),
                        wire::Event::Invalidate {
                            invalidation_id,
                            attach_id,
                            ..
                        } => {
                            ids.push(invalidation_id);
                            ids.push(attach_id);
                        }
                        wire::Event::Revoked { attach_id, .. } => ids.push(attach_id),
                    }
                }
            }
            self.evq.make_available(&self.mem, head % QSIZE);
        }
        self.dev.queue_notify(wire::VIRTIO_XPMEM_QUEUE_EVENT);
        if ids.len() > 64 {
            ids.drain(..ids.len() - 64);
        }
    }
}

fn structured_request(inp: &mut Input<'_>, ids: &[u64]) -> wire::Request {
    let page = |v: u64| v & !0xfff;
    // Names from a small set, so that NAME collides and SEARCH hits.
    let name = |inp: &mut Input<'_>| {
        let text = format!("n{}", inp.u8() % 4);
        wire::SegmentName::new(&text).unwrap_or_else(|_| unreachable!("{text} is a valid name"))
    };
    match inp.u8() % 13 {
        0 => wire::Request::Make {
            vaddr: page(u64::from(inp.u32())),
            size: (u64::from(inp.u8() % 16) + 1) * 4096,
            mode: match inp.u16() {
                m if m & 1 == 0 => 0o666,
                m => u32::from(m >> 1) & 0o777,
            },
            uid: u32::from(inp.u8() & 1),
            gid: u32::from(inp.u8() & 1),
        },
        1 => wire::Request::Remove {
            segid: inp.pick(ids),
        },
        2 => wire::Request::Get {
            segid: inp.pick(ids),
            access: if inp.u8() & 1 == 0 {
                wire::Access::ReadOnly
            } else {
                wire::Access::ReadWrite
            },
            uid: u32::from(inp.u8() & 1),
            gid: u32::from(inp.u8() & 1),
            ipc_owner: false,
        },
        3 => wire::Request::Release {
            apid: inp.pick(ids),
        },
        4 => wire::Request::Attach {
            apid: inp.pick(ids),
            offset: u64::from(inp.u8() % 8).saturating_sub(4) * 4096,
            size: u64::from(inp.u8() % 16).saturating_sub(8).max(1) * 4096,
            read_only: inp.u8() & 1 == 1,
        },
        5 => wire::Request::Detach {
            attach_id: inp.pick(ids),
        },
        6 => wire::Request::Fault {
            attach_id: inp.pick(ids),
            page_index: u64::from(inp.u8() % 20),
            npages: u32::from(inp.u8() % 8) + 1,
            write: inp.u8() & 1 == 1,
        },
        7 => {
            let n = inp.u8() % 8;
            let status = if n == 0 {
                wire::Status::Fault
            } else {
                wire::Status::Ok
            };
            wire::Request::ResolveReply {
                resolve_id: inp.pick(ids),
                status,
                gpas: (0..n)
                    .map(|_| match inp.u8() % 4 {
                        0 => page(inp.u64()),
                        _ => USER_GPA + u64::from(inp.u8()) * 4096,
                    })
                    .collect(),
            }
        }
        8 => wire::Request::Invalidate {
            segid: inp.pick(ids),
            vaddr: page(u64::from(inp.u32())),
            len: (u64::from(inp.u8() % 16) + 1) * 4096,
        },
        9 => wire::Request::InvalidateAck {
            invalidation_id: inp.pick(ids),
        },
        10 => wire::Request::Name {
            segid: inp.pick(ids),
            name: name(inp),
        },
        11 => wire::Request::Search { name: name(inp) },
        _ => wire::Request::ReleaseOwner,
    }
}

fn addr(inp: &mut Input<'_>) -> u64 {
    match inp.u8() % 6 {
        0 => inp.u64(),
        1 => RW_GPA + u64::from(inp.u16()),
        2 => RAM - u64::from(inp.u8()),
        3 => u64::from(inp.u16()),
        _ => BUF_BASE + u64::from(inp.u16()),
    }
}

/// First bytes of window page `page`.
fn window_head(w: &crate::aperture::ApertureWindow, page: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    // SAFETY: `page` is below `w.pages()`, so the 16 bytes lie inside the window, which
    // is always mapped readable.
    unsafe {
        std::ptr::copy_nonoverlapping(
            (w.host_addr() + page * PAGE_SIZE) as *const u8,
            out.as_mut_ptr(),
            16,
        )
    };
    out
}

/// The oracle: every window page shows what the domain says, the exporter's page or the
/// filler (windows the VM was cut off from are not reachable and are skipped).
fn check_windows(hub: &XpmemHub, vms: &[Vm; 2]) {
    let mapped: std::collections::BTreeMap<(u32, xpmem_domain::Window, u64), (u32, u64)> = hub
        .mappings()
        .into_iter()
        .map(|m| {
            (
                (m.importer.0, m.window, m.aperture_page),
                (m.exporter.0, m.exporter_gpa),
            )
        })
        .collect();
    for (i, vm) in vms.iter().enumerate() {
        let id = i as u32 + 1;
        for (k, window) in [xpmem_domain::Window::Rw, xpmem_domain::Window::Ro]
            .into_iter()
            .enumerate()
        {
            if vm.cut_off[k].load(std::sync::atomic::Ordering::SeqCst) {
                continue;
            }
            let w = vm.windows.get(window);
            for page in 0..w.pages() {
                let seen = window_head(w, page);
                match mapped.get(&(id, window, page)) {
                    Some(&(exp, gpa)) => {
                        let mut want = [0u8; 16];
                        let exporter = &vms[exp as usize - 1].mem;
                        let _ = exporter.read_slice(&mut want, GuestAddress(gpa));
                        assert_eq!(
                            seen, want,
                            "VM {id} {window:?} page {page} should show VM {exp}'s page {gpa:#x}"
                        );
                    }
                    None => assert_eq!(
                        seen, [FILLER_BYTE; 16],
                        "VM {id} {window:?} page {page} is unmapped in the domain but does not show the filler"
                    ),
                }
            }
        }
    }
}

/// Runs one fuzz input and returns the domain's counters (for harness
/// coverage statistics). Panics only on a bug.
pub fn run_one(data: &[u8]) -> xpmem_domain::Counters {
    let clock = ManualClock::default();
    let faults = Arc::new(ApertureFaults::default());
    let aperture = MmapAperture::with_budget(MAPPINGS_PER_VM).with_faults(faults.clone());
    let Ok(hub) = XpmemHub::with_backend(
        HubConfig {
            max_pending_events: 32,
            ..HubConfig::default()
        },
        Box::new(aperture),
        HubClock::Manual(clock.clone()),
    ) else {
        return Default::default();
    };
    let (Some(a), Some(b)) = (Vm::new(&hub, 1), Vm::new(&hub, 2)) else {
        return Default::default();
    };
    let mut vms = [a, b];
    // Give every RAM page outside the rings and buffers its own content, so the oracle
    // can tell exporter pages from the filler and from each other.
    for (i, vm) in vms.iter().enumerate() {
        for gpa in (USER_GPA..RAM).step_by(PAGE_SIZE as usize) {
            let tag = ((i as u64 + 1) << 56) | gpa;
            let _ = vm.mem.write_obj(tag, GuestAddress(gpa));
            let _ = vm.mem.write_obj(!tag, GuestAddress(gpa + 8));
        }
    }
    let mut ids: Vec<u64> = Vec::new();
    // The input is a sequence of fixed-size step records, so mutations of
    // one step do not shift the meaning of the following ones.
    for rec in data.chunks(STEP_BYTES).take(256) {
        let mut inp = Input::new(rec);
        let op = inp.u8();
        let v = usize::from(op >> 7);
        let vm = &mut vms[v];
        match op & 0x7 {
            0 => {
                let (i, a, len, flags, next) = (
                    inp.u8() as u16,
                    addr(&mut inp),
                    inp.u32(),
                    inp.u16(),
                    inp.u16(),
                );
                let q = if inp.u8() & 1 == 0 { &vm.reqq } else { &vm.evq };
                q.set_desc(&vm.mem, i % QSIZE, a, len, flags, next);
            }
            1 => {
                let head = u16::from(inp.u8()) % (QSIZE + 2);
                if inp.u8() & 1 == 0 {
                    vm.reqq.make_available(&vm.mem, head);
                } else {
                    vm.evq.make_available(&vm.mem, head);
                }
            }
            2 => {
                let off = u64::from(inp.u16());
                let n = usize::from(inp.u8() % 64);
                let bytes: Vec<u8> = (0..n).map(|_| inp.u8()).collect();
                let _ = vm.mem.write_slice(&bytes, GuestAddress(BUF_BASE + off));
            }
            3 | 4 => {
                // A well-formed request in slot `head`: readable then writable.
                let head = u16::from(inp.u8()) % QSIZE;
                let req = structured_request(&mut inp, &ids);
                let owner = 1 + u64::from(inp.u8() % 3);
                let bytes = req.to_bytes(owner);
                let base = BUF_BASE + u64::from(head) * SLOT;
                let _ = vm.mem.write_slice(&bytes, GuestAddress(base));
                let d0 = head;
                let d1 = (head + 1) % QSIZE;
                vm.reqq.set_desc(
                    &vm.mem,
                    d0,
                    base,
                    bytes.len() as u32,
                    VRING_DESC_F_NEXT as u16,
                    d1,
                );
                vm.reqq
                    .set_desc(&vm.mem, d1, base + 0x800, 64, VRING_DESC_F_WRITE as u16, 0);
                vm.sent[usize::from(head)] = req.opcode();
                vm.reqq.make_available(&vm.mem, head);
                vm.dev.queue_notify(wire::VIRTIO_XPMEM_QUEUE_REQUEST);
            }
            5 => {
                vm.dev.queue_notify(u16::from(inp.u8() % 3));
            }
            6 => {
                let n = inp.u16();
                if n & 0x8000 != 0 {
                    // The aperture's next mmap calls fail (skip, then fail).
                    faults.heal();
                    match n % 4 {
                        0 => faults.fail_next(i64::from(n >> 8 & 7) + 1),
                        1 => faults.fail_after(i64::from(n >> 4 & 7)),
                        _ => {}
                    }
                } else {
                    clock.advance(u64::from(n));
                    hub.tick();
                }
            }
            _ => {
                if inp.u8().is_multiple_of(8) {
                    vm.dev.reset();
                    vm.sent = [0; QSIZE as usize];
                    let _ = vm.activate();
                } else {
                    vm.dev.queue_notify(wire::VIRTIO_XPMEM_QUEUE_REQUEST);
                }
            }
        }
        for vm in &mut vms {
            vm.harvest(&mut ids);
        }
        if let Err(e) = hub.check_invariants() {
            panic!("domain invariant broken: {e}");
        }
        check_windows(&hub, &vms);
    }
    faults.heal();
    let seen = hub.counters();
    drop(vms);
    let c = hub.counters();
    assert!(c.nothing_held(), "state leaked after every VM left: {c:?}");
    seen
}
