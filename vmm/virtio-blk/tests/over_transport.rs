//! The block device behind the virtio-mmio transport, driven through the
//! registers the way Linux's virtio_mmio and virtio_blk drivers do: feature
//! negotiation, config reads, one queue, requests in the Linux layout
//! (header, data, status), QueueNotify, used ring, interrupt, reset.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use virtio_blk_device::request::*;
use virtio_blk_device::{
    Block, DiskImage, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_mmio_transport::{regs, status, MmioTransport, VirtioDevice, VIRTIO_F_VERSION_1};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x11_0000;
const STATUS: u64 = 0x12_0000;
const SECTORS: u64 = 128;

struct TempImage(std::path::PathBuf);

impl TempImage {
    fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "virtio-blk-transport-{tag}-{}.img",
            std::process::id()
        ));
        let bytes: Vec<u8> = (0..SECTORS * 512).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, bytes).unwrap();
        Self(path)
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn rd(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn wr(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn add_status(t: &mut MmioTransport, bit: u32) {
    let s = rd(t, regs::STATUS);
    wr(t, regs::STATUS, s | bit);
}

/// The driver model: guest memory, the mock ring, the transport.
struct Driver {
    mem: GuestMemoryMmap,
    vq: MockSplitQueue<'static, GuestMemoryMmap>,
    t: MmioTransport,
    used: u16,
    next_desc: u16,
}

impl Driver {
    /// Probes the device like Linux and accepts `want` of its features.
    fn bring_up(device: Block, want: u64) -> (Self, u64) {
        let mem: &'static GuestMemoryMmap = Box::leak(Box::new(
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap(),
        ));
        let vq = MockSplitQueue::create(mem, GuestAddress(0x1_0000), 64);
        let device: Box<dyn VirtioDevice> = Box::new(device);
        let mut t = MmioTransport::new(device, mem.clone()).unwrap();
        assert_eq!(rd(&mut t, regs::MAGIC_VALUE), 0x7472_6976);
        assert_eq!(rd(&mut t, regs::DEVICE_ID), 2);
        wr(&mut t, regs::STATUS, 0);
        add_status(&mut t, status::ACKNOWLEDGE);
        add_status(&mut t, status::DRIVER);
        let mut offered = 0u64;
        for sel in 0..2 {
            wr(&mut t, regs::DEVICE_FEATURES_SEL, sel);
            offered |= u64::from(rd(&mut t, regs::DEVICE_FEATURES)) << (32 * sel);
        }
        let acked = offered & want;
        for sel in 0..2 {
            wr(&mut t, regs::DRIVER_FEATURES_SEL, sel);
            wr(&mut t, regs::DRIVER_FEATURES, (acked >> (32 * sel)) as u32);
        }
        add_status(&mut t, status::FEATURES_OK);
        assert_ne!(rd(&mut t, regs::STATUS) & status::FEATURES_OK, 0);
        wr(&mut t, regs::QUEUE_SEL, 0);
        assert!(rd(&mut t, regs::QUEUE_NUM_MAX) >= 64);
        wr(&mut t, regs::QUEUE_NUM, 64);
        let split = |a: GuestAddress| (a.0 as u32, (a.0 >> 32) as u32);
        for (addr, lo_reg, hi_reg) in [
            (
                vq.desc_table_addr(),
                regs::QUEUE_DESC_LOW,
                regs::QUEUE_DESC_HIGH,
            ),
            (
                vq.avail_addr(),
                regs::QUEUE_DRIVER_LOW,
                regs::QUEUE_DRIVER_HIGH,
            ),
            (
                vq.used_addr(),
                regs::QUEUE_DEVICE_LOW,
                regs::QUEUE_DEVICE_HIGH,
            ),
        ] {
            let (lo, hi) = split(addr);
            wr(&mut t, lo_reg, lo);
            wr(&mut t, hi_reg, hi);
        }
        wr(&mut t, regs::QUEUE_READY, 1);
        add_status(&mut t, status::DRIVER_OK);
        assert!(t.is_activated());
        (
            Self {
                mem: mem.clone(),
                vq,
                t,
                used: 0,
                next_desc: 0,
            },
            offered,
        )
    }

    fn config_u64(&mut self, off: u64) -> u64 {
        let mut b = [0u8; 8];
        self.t.read(regs::CONFIG + off, &mut b);
        u64::from_le_bytes(b)
    }

    fn config_u32(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.t.read(regs::CONFIG + off, &mut b);
        u32::from_le_bytes(b)
    }

    /// Sends header + data + status, notifies, checks the used ring and the
    /// interrupt; returns (used len, status).
    fn request(
        &mut self,
        t: u32,
        sector: u64,
        data: &[(u64, u32)],
        device_writes: bool,
    ) -> (u32, u8) {
        let mut hdr = [0u8; 16];
        hdr[0..4].copy_from_slice(&t.to_le_bytes());
        hdr[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&hdr, GuestAddress(HDR)).unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let n = data.len() + 2;
        let base = self.next_desc;
        let mut descs = Vec::with_capacity(n);
        let entries = std::iter::once((HDR, 16, false))
            .chain(data.iter().map(|&(a, l)| (a, l, device_writes)))
            .chain(std::iter::once((STATUS, 1, true)));
        for (i, (addr, len, write)) in entries.enumerate() {
            let mut flags = if write { 2 } else { 0 };
            if i + 1 < n {
                flags |= 1;
            }
            descs.push(RawDescriptor::from(SplitDescriptor::new(
                addr,
                len,
                flags,
                base + i as u16 + 1,
            )));
        }
        self.vq.add_desc_chains(&descs, base).unwrap();
        self.next_desc = (base + n as u16) % 32;
        // With EVENT_IDX the driver asks for an interrupt at the next used
        // entry (used_event sits after the 64 available ring entries).
        let used_event = self.vq.avail_addr().0 + 4 + 2 * 64;
        self.mem
            .write_obj(self.used, GuestAddress(used_event))
            .unwrap();
        wr(&mut self.t, regs::QUEUE_NOTIFY, 0);
        assert_eq!(self.vq.used().idx().load(), self.used + 1);
        let e = self
            .vq
            .used()
            .ring()
            .ref_at(usize::from(self.used % 64))
            .unwrap()
            .load();
        self.used += 1;
        assert_eq!(e.id(), u32::from(base));
        assert_eq!(rd(&mut self.t, regs::INTERRUPT_STATUS) & 1, 1);
        wr(&mut self.t, regs::INTERRUPT_ACK, 1);
        (e.len(), self.mem.read_obj(GuestAddress(STATUS)).unwrap())
    }
}

#[test]
fn linux_style_driver_reads_writes_flushes_and_resets() {
    let img = TempImage::new("rw");
    let dev = Block::new(DiskImage::open(&img.0, false).unwrap(), Some("root-disk")).unwrap();
    let (mut d, offered) = Driver::bring_up(dev, u64::MAX);
    assert_eq!(offered & VIRTIO_BLK_F_RO, 0);
    assert_ne!(offered & VIRTIO_BLK_F_FLUSH, 0);
    assert_ne!(offered & VIRTIO_F_VERSION_1, 0);
    assert_eq!(d.config_u64(0), SECTORS, "capacity");
    assert_eq!(d.config_u32(12), virtio_blk_device::SEG_MAX);
    assert_eq!(d.config_u32(20), 512, "blk_size");

    // Write 4 sectors from two pages at sector 10, flush, read them back.
    let pattern: Vec<u8> = (0..2048u32).map(|i| (i * 13 + 5) as u8).collect();
    d.mem
        .write_slice(&pattern[..1024], GuestAddress(DATA))
        .unwrap();
    d.mem
        .write_slice(&pattern[1024..], GuestAddress(DATA + 0x1000))
        .unwrap();
    assert_eq!(
        d.request(
            VIRTIO_BLK_T_OUT,
            10,
            &[(DATA, 1024), (DATA + 0x1000, 1024)],
            false
        ),
        (1, VIRTIO_BLK_S_OK)
    );
    assert_eq!(
        d.request(VIRTIO_BLK_T_FLUSH, 0, &[], false),
        (1, VIRTIO_BLK_S_OK)
    );
    let file = std::fs::read(&img.0).unwrap();
    assert_eq!(&file[10 * 512..14 * 512], &pattern[..]);
    assert_eq!(file[14 * 512], ((14 * 512) % 251) as u8, "after the write");
    assert_eq!(
        file[10 * 512 - 1],
        ((10 * 512 - 1) % 251) as u8,
        "before the write"
    );

    assert_eq!(
        d.request(VIRTIO_BLK_T_IN, 9, &[(DATA + 0x2000, 3072)], true),
        (3073, VIRTIO_BLK_S_OK)
    );
    let mut back = vec![0u8; 3072];
    d.mem
        .read_slice(&mut back, GuestAddress(DATA + 0x2000))
        .unwrap();
    assert_eq!(&back[..], &file[9 * 512..15 * 512]);

    // GET_ID, then the error statuses through the transport.
    assert_eq!(
        d.request(VIRTIO_BLK_T_GET_ID, 0, &[(DATA + 0x3000, 20)], true),
        (21, VIRTIO_BLK_S_OK)
    );
    let mut id = [0u8; 20];
    d.mem
        .read_slice(&mut id, GuestAddress(DATA + 0x3000))
        .unwrap();
    assert_eq!(&id, b"root-disk\0\0\0\0\0\0\0\0\0\0\0");
    assert_eq!(
        d.request(VIRTIO_BLK_T_IN, SECTORS, &[(DATA, 512)], true).1,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(d.request(77, 0, &[], false).1, VIRTIO_BLK_S_UNSUPP);

    // Reset: nothing is served afterwards, and the image is unchanged by it.
    wr(&mut d.t, regs::STATUS, 0);
    assert!(!d.t.is_activated());
    wr(&mut d.t, regs::QUEUE_NOTIFY, 0);
    assert_eq!(d.vq.used().idx().load(), d.used);
    assert_eq!(std::fs::read(&img.0).unwrap(), file);
}

#[test]
fn read_only_disk_over_the_transport() {
    let img = TempImage::new("ro");
    let before = std::fs::read(&img.0).unwrap();
    let dev = Block::new(DiskImage::open(&img.0, true).unwrap(), None).unwrap();
    let (mut d, offered) = Driver::bring_up(
        dev,
        VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_RO | VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_WRITE_ZEROES,
    );
    assert_ne!(offered & VIRTIO_BLK_F_RO, 0);
    assert_eq!(offered & VIRTIO_BLK_F_WRITE_ZEROES, 0);
    d.mem.write_slice(&[0x77; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(
        d.request(VIRTIO_BLK_T_OUT, 0, &[(DATA, 512)], false),
        (1, VIRTIO_BLK_S_IOERR)
    );
    assert_eq!(
        d.request(VIRTIO_BLK_T_IN, 0, &[(DATA, 512)], true),
        (513, VIRTIO_BLK_S_OK)
    );
    assert_eq!(std::fs::read(&img.0).unwrap(), before);
}
