//! A model of the guest driver: speaks the virtio-xpmem protocol over
//! virtio-queue's mock split queues in memfd-backed fake guest RAM, so the
//! bytes really flow through the aperture.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_mmio_transport::{ActivateContext, InterruptReason, VirtioDevice, VirtioInterrupt};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use virtio_xpmem_device::aperture::{ApertureWindows, VmRamLayout, PAGE_SIZE};
use virtio_xpmem_device::remote::{self, BrokerHandle};
use virtio_xpmem_device::{HubClock, HubConfig, ManualClock, VmId, XpmemHub};
use virtio_xpmem_wire as wire;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap};

pub const RAM_SIZE: usize = 16 << 20;
pub const QSIZE: u16 = 64;
pub const REQQ_ADDR: u64 = 0x0;
pub const EVQ_ADDR: u64 = 0x4000;
/// Request slot k: readable at SLOT_BASE + k * SLOT_STRIDE, writable 0x1800 later.
pub const SLOT_BASE: u64 = 0x10_0000;
pub const SLOT_STRIDE: u64 = 0x2000;
pub const RESP_OFF: u64 = 0x1800;
pub const NSLOTS: u16 = QSIZE / 2;
pub const EVBUF_BASE: u64 = 0x20_0000;
pub const EVBUF_LEN: u32 = 64;
/// Exported "user" memory of the model lives here.
pub const USER_GPA: u64 = 0x40_0000;
pub const APERTURE_RW_GPA: u64 = 0x1_0000_0000;
pub const APERTURE_RO_GPA: u64 = 0x1_1000_0000;
pub const APERTURE_LEN: u64 = 4 << 20;

pub fn memfd(len: usize) -> File {
    // SAFETY: valid C string; no memory side effects.
    let fd = unsafe { libc::memfd_create(c"guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: fresh fd owned by nobody else.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(len as u64).unwrap();
    f
}

/// memfd-backed guest RAM at guest-physical 0.
pub fn guest_ram() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges_with_files([(
        GuestAddress(0),
        RAM_SIZE,
        Some(FileOffset::new(memfd(RAM_SIZE), 0)),
    )])
    .unwrap()
}

#[derive(Default)]
pub struct CountingInterrupt(pub AtomicU64);

impl VirtioInterrupt for CountingInterrupt {
    fn trigger(&self, _reason: InterruptReason) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Driver side of one split queue. The descriptor table is managed through
/// virtio-queue's `MockSplitQueue`; the avail and used rings are laid out
/// here because the mock (0.18) places its used ring `len` bytes (not
/// `2 * len`) after the avail ring start, so with more than ~len/2
/// outstanding buffers the two rings overlap.
pub struct DriverQueue<'a> {
    pub mock: MockSplitQueue<'a, GuestMemoryMmap>,
    mem: &'a GuestMemoryMmap,
    desc_addr: u64,
    avail_addr: u64,
    used_addr: u64,
    avail_idx: u16,
    used_seen: u16,
}

impl<'a> DriverQueue<'a> {
    pub fn new(mem: &'a GuestMemoryMmap, addr: u64) -> Self {
        let mock = MockSplitQueue::create(mem, GuestAddress(addr), QSIZE);
        let avail_addr = addr + 16 * u64::from(QSIZE);
        let used_addr = (avail_addr + 6 + 2 * u64::from(QSIZE) + 3) & !3;
        // Rings start zeroed (flags, idx).
        mem.write_slice(&[0u8; 6 + 2 * QSIZE as usize], GuestAddress(avail_addr))
            .unwrap();
        mem.write_slice(&[0u8; 6 + 8 * QSIZE as usize], GuestAddress(used_addr))
            .unwrap();
        Self {
            mock,
            mem,
            desc_addr: addr,
            avail_addr,
            used_addr,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(QSIZE).unwrap();
        q.set_size(QSIZE);
        q.try_set_desc_table_address(GuestAddress(self.desc_addr))
            .unwrap();
        q.try_set_avail_ring_address(GuestAddress(self.avail_addr))
            .unwrap();
        q.try_set_used_ring_address(GuestAddress(self.used_addr))
            .unwrap();
        q.set_ready(true);
        q
    }

    /// Writes descriptor `index` = (addr, len, flags, next).
    pub fn set_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = SplitDescriptor::new(addr, len, flags, next);
        self.mock
            .desc_table()
            .store(index, RawDescriptor::from(d))
            .unwrap();
    }

    /// Writes a chain of (addr, len, writable) at consecutive indices from
    /// `first` and makes it available.
    pub fn add_chain(&mut self, first: u16, bufs: &[(u64, u32, bool)]) {
        for (i, &(addr, len, w)) in bufs.iter().enumerate() {
            let idx = first + i as u16;
            let mut flags = if w { VRING_DESC_F_WRITE as u16 } else { 0 };
            if i + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            self.set_desc(idx, addr, len, flags, idx + 1);
        }
        self.make_available(first);
    }

    /// Puts head `head` in the available ring.
    pub fn make_available(&mut self, head: u16) {
        let avail = self.avail_addr;
        let slot = avail + 4 + u64::from(self.avail_idx % QSIZE) * 2;
        self.mem
            .write_obj(head.to_le(), GuestAddress(slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx.to_le(), GuestAddress(avail + 2))
            .unwrap();
    }

    /// New used elements since the last call: (head, len).
    pub fn take_used(&mut self) -> Vec<(u16, u32)> {
        let used = self.used_addr;
        let idx: u16 = self.mem.read_obj(GuestAddress(used + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let e = used + 4 + u64::from(self.used_seen % QSIZE) * 8;
            let id: u32 = self.mem.read_obj(GuestAddress(e)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(e + 4)).unwrap();
            out.push((id as u16, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

/// A completed request: status and response body bytes.
#[derive(Debug, Clone)]
pub struct Completion {
    pub used_len: u32,
    pub status: u32,
    pub body: Vec<u8>,
}

impl Completion {
    pub fn u64_at(&self, off: usize) -> u64 {
        u64::from_le_bytes(self.body[off..off + 8].try_into().unwrap())
    }
    pub fn u32_at(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.body[off..off + 4].try_into().unwrap())
    }
}

/// The guest driver model of one VM.
pub struct Guest<'a> {
    pub vm: VmId,
    pub mem: &'a GuestMemoryMmap,
    pub reqq: DriverQueue<'a>,
    pub evq: DriverQueue<'a>,
    pub dev: Box<dyn VirtioDevice>,
    pub hub: Arc<XpmemHub>,
    pub windows: ApertureWindows,
    /// For a VM whose device model runs behind a broker connection: a round trip on it
    /// after each notification waits until the broker has handled it.
    barrier: Option<BrokerHandle>,
    pub irq: Arc<CountingInterrupt>,
    free_slots: Vec<u16>,
    /// head -> (slot, response length)
    outstanding: HashMap<u16, (u16, u32)>,
    done: HashMap<u16, (u16, Completion)>,
    pub events: Vec<wire::Event>,
    pub owner: u64,
    event_buffers: u16,
    /// Features the driver model acknowledges (ANDed with the offer).
    pub features_mask: u64,
}

impl<'a> Guest<'a> {
    /// Creates the VM's device on `hub`, activates it and stocks eventq.
    pub fn new(hub: &Arc<XpmemHub>, vm: u32, mem: &'a GuestMemoryMmap) -> Self {
        Self::with_event_buffers(hub, vm, mem, QSIZE)
    }

    /// Like `new`, stocking only `nbufs` eventq buffers.
    pub fn with_event_buffers(
        hub: &Arc<XpmemHub>,
        vm: u32,
        mem: &'a GuestMemoryMmap,
        nbufs: u16,
    ) -> Self {
        let windows =
            ApertureWindows::reserve(APERTURE_RW_GPA, APERTURE_LEN, APERTURE_RO_GPA, APERTURE_LEN)
                .unwrap();
        let layout = VmRamLayout::from_guest_memory(mem).unwrap();
        let dev = hub.add_vm(VmId(vm), layout, windows.clone()).unwrap();
        Self::with_device(hub, vm, mem, nbufs, Box::new(dev), windows, None)
    }

    /// A VM whose device model runs in `broker` (see `TestBroker`): the device here is the
    /// VM process's side of the connection.
    pub fn remote(broker: &TestBroker, vm: u32, mem: &'a GuestMemoryMmap) -> Self {
        let windows =
            ApertureWindows::reserve(APERTURE_RW_GPA, APERTURE_LEN, APERTURE_RO_GPA, APERTURE_LEN)
                .unwrap();
        let (vm_end, broker_end) = remote::seqpacket_pair().unwrap();
        broker.serve(VmId(vm), broker_end);
        let (dev, handle, _thread) = remote::RemoteXpmemDevice::connect(
            VmId(vm),
            vm_end,
            mem,
            windows.clone(),
            8192,
            Box::new(|_| Err(std::io::Error::other("no memslot to delete in tests"))),
        )
        .unwrap();
        Self::with_device(
            &broker.hub,
            vm,
            mem,
            QSIZE,
            Box::new(dev),
            windows,
            Some(handle),
        )
    }

    fn with_device(
        hub: &Arc<XpmemHub>,
        vm: u32,
        mem: &'a GuestMemoryMmap,
        nbufs: u16,
        dev: Box<dyn VirtioDevice>,
        windows: ApertureWindows,
        barrier: Option<BrokerHandle>,
    ) -> Self {
        let mut g = Self {
            vm: VmId(vm),
            mem,
            reqq: DriverQueue::new(mem, REQQ_ADDR),
            evq: DriverQueue::new(mem, EVQ_ADDR),
            dev,
            hub: hub.clone(),
            barrier,
            windows,
            irq: Arc::new(CountingInterrupt::default()),
            free_slots: (0..NSLOTS).rev().collect(),
            outstanding: HashMap::new(),
            done: HashMap::new(),
            events: Vec::new(),
            owner: 0x1000 + u64::from(vm),
            event_buffers: nbufs,
            features_mask: !0,
        };
        g.activate();
        g
    }

    /// Notifies queue `q`; with a broker, returns once the broker has handled it.
    pub fn notify(&mut self, q: u16) {
        self.dev.queue_notify(q);
        if let Some(b) = &self.barrier {
            b.holdings().unwrap();
        }
    }

    /// This VM's device counters.
    pub fn stats(&self) -> virtio_xpmem_device::DeviceStats {
        self.hub.device_stats(self.vm).unwrap()
    }

    pub fn activate(&mut self) {
        let features = self.dev.device_features() & self.features_mask;
        self.dev
            .activate(ActivateContext {
                mem: self.mem.clone(),
                queues: vec![self.reqq.queue(), self.evq.queue()],
                interrupt: self.irq.clone(),
                acked_features: features,
            })
            .unwrap();
        for k in 0..self.event_buffers {
            self.evq
                .add_chain(k, &[(EVBUF_BASE + u64::from(k) * 0x100, EVBUF_LEN, true)]);
        }
        self.notify(0);
        self.notify(1);
    }

    /// Device reset by the driver, then a fresh driver initialisation.
    pub fn reset_and_reactivate(&mut self) {
        self.dev.reset();
        self.reqq = DriverQueue::new(self.mem, REQQ_ADDR);
        self.evq = DriverQueue::new(self.mem, EVQ_ADDR);
        self.free_slots = (0..NSLOTS).rev().collect();
        self.outstanding.clear();
        self.done.clear();
        self.events.clear();
        self.activate();
    }

    /// Submits request bytes with a response buffer of `resp_len`; returns the head.
    pub fn submit(&mut self, req: &[u8], resp_len: u32) -> u16 {
        let slot = self.free_slots.pop().expect("out of request slots");
        let base = SLOT_BASE + u64::from(slot) * SLOT_STRIDE;
        self.mem.write_slice(req, GuestAddress(base)).unwrap();
        let resp = base + RESP_OFF;
        // Poison the response buffer so a missing write is visible.
        self.mem
            .write_slice(&[0xee; 0x100], GuestAddress(resp))
            .unwrap();
        let head = slot * 2;
        self.reqq.add_chain(
            head,
            &[(base, req.len() as u32, false), (resp, resp_len, true)],
        );
        self.outstanding.insert(head, (slot, resp_len));
        self.notify(0);
        head
    }

    /// Collects completions and events (refilling eventq).
    pub fn poll(&mut self) {
        for (head, len) in self.reqq.take_used() {
            let (slot, resp_len) = self
                .outstanding
                .remove(&head)
                .unwrap_or_else(|| panic!("VM {:?}: unknown used head {head}", self.vm));
            let resp = SLOT_BASE + u64::from(slot) * SLOT_STRIDE + RESP_OFF;
            let mut bytes = vec![0u8; resp_len.min(0x100) as usize];
            self.mem.read_slice(&mut bytes, GuestAddress(resp)).unwrap();
            let status = u32::from_le_bytes(bytes[0..4].try_into().unwrap());
            // The slot (and so the head) stays taken until the completion
            // is collected, so a later request cannot reuse the head.
            self.done.insert(
                head,
                (
                    slot,
                    Completion {
                        used_len: len,
                        status,
                        body: bytes[8..].to_vec(),
                    },
                ),
            );
        }
        let mut refill = false;
        for (head, len) in self.evq.take_used() {
            let addr = EVBUF_BASE + u64::from(head) * 0x100;
            let mut bytes = vec![0u8; len as usize];
            self.mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
            self.events
                .push(wire::Event::parse(&bytes).unwrap_or_else(|e| {
                    panic!("device wrote a malformed event {e}: head {head} len {len}")
                }));
            self.evq.make_available(head);
            refill = true;
        }
        if refill {
            self.notify(1);
        }
    }

    /// Takes the completion of `head`, if it completed.
    pub fn completion(&mut self, head: u16) -> Option<Completion> {
        self.poll();
        let (slot, c) = self.done.remove(&head)?;
        self.free_slots.push(slot);
        Some(c)
    }

    /// Submits a request with a response buffer of the size its opcode needs; returns the head.
    pub fn send(&mut self, req: &wire::Request) -> u16 {
        let len = wire::response_size(req.opcode()) as u32;
        self.submit(&req.to_bytes(self.owner), len)
    }

    /// Sends a FAULT that must be answered at once; returns its status.
    pub fn fault_status_now(&mut self, attach_id: u64, page_index: u64) -> u32 {
        let head = self.send(&wire::Request::Fault {
            attach_id,
            page_index,
            npages: 1,
            write: false,
        });
        self.completion(head)
            .unwrap_or_else(|| panic!("VM {:?}: FAULT not answered at once", self.vm))
            .status
    }

    /// Submits a request and expects an immediate completion.
    pub fn call(&mut self, req: wire::Request) -> Completion {
        let opcode = req.opcode();
        let head = self.submit(
            &req.to_bytes(self.owner),
            wire::response_size(opcode) as u32,
        );
        self.completion(head)
            .unwrap_or_else(|| panic!("VM {:?}: opcode {opcode} did not complete", self.vm))
    }

    /// Takes all events received so far.
    pub fn take_events(&mut self) -> Vec<wire::Event> {
        self.poll();
        std::mem::take(&mut self.events)
    }

    /// Host view of the guest's aperture window (as the guest would see it).
    pub fn aperture_read(&self, shm_id: u32, offset: u64, len: usize) -> Vec<u8> {
        let w = if shm_id == 0 {
            &self.windows.rw
        } else {
            &self.windows.ro
        };
        assert!(offset + len as u64 <= w.len());
        let mut v = vec![0u8; len];
        // SAFETY: inside the window, which is always mapped readable.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (w.host_addr() + offset) as *const u8,
                v.as_mut_ptr(),
                len,
            )
        };
        v
    }

    pub fn aperture_write(&self, offset: u64, bytes: &[u8]) {
        let w = &self.windows.rw;
        assert!(offset + bytes.len() as u64 <= w.len());
        // SAFETY: inside the rw window, mapped writable.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                (w.host_addr() + offset) as *mut u8,
                bytes.len(),
            )
        };
    }

    pub fn ram_read(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(gpa)).unwrap();
        v
    }

    pub fn mem_write(&self, gpa: u64, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(gpa)).unwrap();
    }

    pub fn ram_fill(&self, gpa: u64, val: u8, len: usize) {
        self.mem
            .write_slice(&vec![val; len], GuestAddress(gpa))
            .unwrap();
    }
}

/// The exporter side of the model: user vaddr -> gpa page table, answering
/// RESOLVE events. Pages are scattered (reverse order) unless `contiguous`.
pub struct ExporterModel {
    pub vaddr: u64,
    pub npages: u64,
    pub contiguous: bool,
}

impl ExporterModel {
    pub fn gpa_of(&self, vaddr: u64) -> u64 {
        let i = (vaddr - self.vaddr) / PAGE_SIZE;
        assert!(i < self.npages);
        if self.contiguous {
            USER_GPA + i * PAGE_SIZE
        } else {
            USER_GPA + (self.npages - 1 - i) * PAGE_SIZE
        }
    }

    /// Answers every RESOLVE among `events`; returns the other events.
    pub fn answer_resolves(&self, g: &mut Guest<'_>, events: Vec<wire::Event>) -> Vec<wire::Event> {
        let mut rest = Vec::new();
        for ev in events {
            match ev {
                wire::Event::Resolve {
                    resolve_id,
                    vaddr,
                    npages,
                    ..
                } => {
                    let gpas = (0..u64::from(npages))
                        .map(|i| self.gpa_of(vaddr + i * PAGE_SIZE))
                        .collect();
                    let c = g.call(wire::Request::ResolveReply {
                        resolve_id,
                        status: wire::Status::Ok,
                        gpas,
                    });
                    assert_eq!(c.status, 0, "RESOLVE_REPLY rejected");
                }
                other => rest.push(other),
            }
        }
        rest
    }
}

/// A broker in this process: a hub whose aperture is `RemoteAperture`, serving each VM's
/// connection on a thread, as the monitor's broker process does.
pub struct TestBroker {
    pub hub: Arc<XpmemHub>,
    pub clock: ManualClock,
    pub links: remote::ApertureLinks,
    threads: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl TestBroker {
    pub fn new(deadline_ms: u64) -> Self {
        let clock = ManualClock::default();
        let links = remote::ApertureLinks::default();
        let hub = XpmemHub::with_backend(
            HubConfig {
                invalidate_deadline: Duration::from_millis(deadline_ms),
                ..HubConfig::default()
            },
            Box::new(remote::RemoteAperture::new(links.clone())),
            HubClock::Manual(clock.clone()),
        )
        .unwrap();
        Self {
            hub,
            clock,
            links,
            threads: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Serves VM `vm`'s connection on a thread until it closes.
    pub fn serve(&self, vm: VmId, sock: std::os::unix::net::UnixStream) {
        let (hub, links) = (self.hub.clone(), self.links.clone());
        let t = std::thread::spawn(move || {
            if let Err(e) = remote::serve_vm_process(&hub, &links, vm, sock, None) {
                panic!("serving VM {vm:?}: {e}");
            }
        });
        self.threads.lock().unwrap().push(t);
    }

    /// Waits until every served connection has closed (and so every VM has left).
    pub fn join(&self) {
        for t in self.threads.lock().unwrap().drain(..) {
            t.join().unwrap();
        }
    }
}

// ----- scenario helpers shared by the multi-VM tests -----

pub const SEG_VADDR: u64 = 0x7f00_0000_0000;
pub const SEG_PAGES: u64 = 16;

pub fn manual_hub(deadline_ms: u64) -> (std::sync::Arc<XpmemHub>, ManualClock) {
    let clock = ManualClock::default();
    let hub = XpmemHub::with_backend(
        HubConfig {
            invalidate_deadline: Duration::from_millis(deadline_ms),
            ..HubConfig::default()
        },
        Box::new(virtio_xpmem_device::aperture::MmapAperture::new()),
        HubClock::Manual(clock.clone()),
    )
    .unwrap();
    (hub, clock)
}

/// Exporter `a` makes a segment of SEG_PAGES pages; returns (segid, model).
pub fn make_segment(a: &mut Guest<'_>) -> (u64, ExporterModel) {
    let model = ExporterModel {
        vaddr: SEG_VADDR,
        npages: SEG_PAGES,
        contiguous: false,
    };
    for i in 0..SEG_PAGES {
        a.ram_fill(
            model.gpa_of(SEG_VADDR + i * PAGE_SIZE),
            0x10 + i as u8,
            PAGE_SIZE as usize,
        );
    }
    let c = a.call(wire::Request::Make {
        vaddr: SEG_VADDR,
        size: SEG_PAGES * PAGE_SIZE,
        mode: 0o666,
        uid: 1000,
        gid: 1000,
    });
    assert_eq!(c.status, 0, "MAKE failed");
    (c.u64_at(0), model)
}

/// Importer gets and attaches the whole segment; returns (apid, attach_id, aperture offset, shm id).
pub fn get_attach(b: &mut Guest<'_>, segid: u64, read_only: bool) -> (u64, u64, u64, u32) {
    let c = b.call(wire::Request::Get {
        segid,
        access: if read_only {
            wire::Access::ReadOnly
        } else {
            wire::Access::ReadWrite
        },
        uid: 1000,
        gid: 1000,
        ipc_owner: false,
    });
    assert_eq!(c.status, 0, "GET failed");
    let apid = c.u64_at(0);
    let c = b.call(wire::Request::Attach {
        apid,
        offset: 0,
        size: SEG_PAGES * PAGE_SIZE,
        read_only,
    });
    assert_eq!(c.status, 0, "ATTACH failed");
    (apid, c.u64_at(0), c.u64_at(8), c.u32_at(16))
}

/// Importer faults `npages` from `page`; the exporter model resolves.
pub fn fault(
    b: &mut Guest<'_>,
    a: &mut Guest<'_>,
    model: &ExporterModel,
    attach_id: u64,
    page: u64,
    npages: u32,
    write: bool,
) -> Completion {
    let req = wire::Request::Fault {
        attach_id,
        page_index: page,
        npages,
        write,
    };
    let head = b.submit(
        &req.to_bytes(b.owner),
        wire::response_size(req.opcode()) as u32,
    );
    assert!(
        b.completion(head).is_none(),
        "FAULT must wait for the exporter"
    );
    let evs = a.take_events();
    assert!(
        evs.iter().any(|e| matches!(e, wire::Event::Resolve { .. })),
        "exporter got no RESOLVE: {evs:?}"
    );
    let rest = model.answer_resolves(a, evs);
    assert!(rest.is_empty());
    b.completion(head)
        .expect("FAULT not completed after RESOLVE_REPLY")
}

/// Exporter `a` sends INVALIDATE for `npages` segment pages from `first_page`; returns the head.
pub fn invalidate(a: &mut Guest<'_>, segid: u64, first_page: u64, npages: u64) -> u16 {
    a.send(&wire::Request::Invalidate {
        segid,
        vaddr: SEG_VADDR + first_page * PAGE_SIZE,
        len: npages * PAGE_SIZE,
    })
}

/// The importer acknowledges every INVALIDATE it got; returns the other events.
pub fn ack_all(b: &mut Guest<'_>) -> Vec<wire::Event> {
    let mut rest = Vec::new();
    for ev in b.take_events() {
        match ev {
            wire::Event::Invalidate {
                invalidation_id, ..
            } => {
                let c = b.call(wire::Request::InvalidateAck { invalidation_id });
                assert_eq!(c.status, 0);
            }
            other => rest.push(other),
        }
    }
    rest
}

/// Writes QSIZE device-readable descriptors of EVBUF_LEN bytes into the queue at `ring`
/// (unusable as event buffers, and as requests without a response buffer).
pub fn write_bad_descriptors(mem: &GuestMemoryMmap, ring: u64) {
    for k in 0..QSIZE {
        let d = ring + u64::from(k) * 16;
        mem.write_obj(EVBUF_BASE + u64::from(k) * 0x100, GuestAddress(d))
            .unwrap();
        mem.write_obj(EVBUF_LEN, GuestAddress(d + 8)).unwrap();
        mem.write_obj(0u16, GuestAddress(d + 12)).unwrap();
    }
}

/// Exporter VM 1 and importer VM 2 on one hub: a's segment (see `make_segment`) and b's
/// attachment of all of it, with b's first `mapped` pages faulted in.
pub struct Pair<'a> {
    pub a: Guest<'a>,
    pub b: Guest<'a>,
    pub segid: u64,
    pub model: ExporterModel,
    pub apid: u64,
    pub att: u64,
    pub off: u64,
}

pub fn pair<'a>(
    hub: &Arc<XpmemHub>,
    ma: &'a GuestMemoryMmap,
    mb: &'a GuestMemoryMmap,
    read_only: bool,
    mapped: u32,
) -> Pair<'a> {
    let mut a = Guest::new(hub, 1, ma);
    let mut b = Guest::new(hub, 2, mb);
    let (segid, model) = make_segment(&mut a);
    let (apid, att, off, _shm) = get_attach(&mut b, segid, read_only);
    if mapped > 0 {
        let f = fault(&mut b, &mut a, &model, att, 0, mapped, !read_only);
        assert_eq!(f.status, 0);
    }
    Pair {
        a,
        b,
        segid,
        model,
        apid,
        att,
        off,
    }
}

/// VM 3, with no eventq buffers, attached to the pair's segment with page 12 mapped: an
/// importer whose events cannot be delivered.
pub fn deaf_importer<'a>(
    hub: &Arc<XpmemHub>,
    p: &mut Pair<'_>,
    ms: &'a GuestMemoryMmap,
) -> Guest<'a> {
    let mut s = Guest::with_event_buffers(hub, 3, ms, 0);
    let (_apid, att_s, _off, _shm) = get_attach(&mut s, p.segid, false);
    assert_eq!(
        fault(&mut s, &mut p.a, &p.model, att_s, 12, 1, false).status,
        0
    );
    s
}
