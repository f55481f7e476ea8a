use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use virtio_mmio_transport::{
    ActivateContext, InterruptReason, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1,
};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::image::{DiskBackend, GuestSlice};
use crate::request::*;
use crate::*;

const MEM_SIZE: usize = 0x40_0000;
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;
const W: bool = true;
const R: bool = false;
const IMAGE_SECTORS: u64 = 64;

/// A temporary image file, removed on drop.
pub(crate) struct TempImage(pub PathBuf);

impl TempImage {
    /// An image of `sectors` sectors; byte i holds `(i / 512) as u8 ^ 0x5a`.
    pub(crate) fn new(tag: &str, sectors: u64) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "virtio-blk-{tag}-{}-{}.img",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let bytes: Vec<u8> = (0..sectors * 512).map(|i| (i / 512) as u8 ^ 0x5a).collect();
        std::fs::write(&path, bytes).unwrap();
        Self(path)
    }
    pub(crate) fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.0).unwrap()
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Counts used-buffer interrupts (`.0`) and reset requests (`.1`).
#[derive(Default)]
struct CountingInterrupt(AtomicUsize, AtomicUsize);

impl VirtioInterrupt for CountingInterrupt {
    fn trigger(&self, reason: InterruptReason) -> std::io::Result<()> {
        match reason {
            InterruptReason::UsedBuffer => self.0.fetch_add(1, Ordering::SeqCst),
            InterruptReason::NeedsReset => self.1.fetch_add(1, Ordering::SeqCst),
            InterruptReason::ConfigChange => panic!("virtio-blk has no config changes"),
        };
        Ok(())
    }
}

/// Wraps the real image and can make `sync_data` fail; counts syncs.
struct FaultySync {
    inner: DiskImage,
    fail: Arc<AtomicBool>,
    syncs: Arc<AtomicUsize>,
}

impl DiskBackend for FaultySync {
    fn read_exact_at(&mut self, buf: &GuestSlice<'_>, offset: u64) -> std::io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }
    fn write_all_at(&mut self, buf: &GuestSlice<'_>, offset: u64) -> std::io::Result<()> {
        self.inner.write_all_at(buf, offset)
    }
    fn sync_data(&mut self) -> std::io::Result<()> {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        if self.fail.load(Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        self.inner.sync_data()
    }
    fn discard(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
        self.inner.discard(offset, len)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> std::io::Result<()> {
        self.inner.write_zeroes(offset, len, unmap)
    }
}

struct Harness {
    mem: GuestMemoryMmap,
    vq: MockSplitQueue<'static, GuestMemoryMmap>,
    dev: Block,
    irq: Arc<CountingInterrupt>,
    used: u16,
}

impl Harness {
    fn with_device(dev: Block, features: u64) -> Self {
        let mem: &'static GuestMemoryMmap = Box::leak(Box::new(
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap(),
        ));
        let vq = MockSplitQueue::new(mem, QUEUE_SIZE);
        let mut h = Self {
            mem: mem.clone(),
            vq,
            dev,
            irq: Arc::new(CountingInterrupt::default()),
            used: 0,
        };
        h.dev
            .activate(ActivateContext {
                mem: h.mem.clone(),
                queues: vec![h.vq.create_queue::<Queue>().unwrap()],
                interrupt: h.irq.clone(),
                acked_features: features,
            })
            .unwrap();
        h
    }

    fn new(image: &TempImage, read_only: bool) -> Self {
        let dev = Block::new(DiskImage::open(&image.0, read_only).unwrap(), Some("disk0")).unwrap();
        let features = dev.device_features();
        Self::with_device(dev, features)
    }

    fn header(&self, t: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&t.to_le_bytes());
        h[4..8].copy_from_slice(&0xdead_beefu32.to_le_bytes()); // reserved: ignored
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(HDR)).unwrap();
    }

    /// Submits one chain of (addr, len, writable); returns (used len, status byte).
    fn submit(&mut self, descs: &[(u64, u32, bool)]) -> (u32, u8) {
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let n = descs.len();
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, write))| {
                let mut flags = if write { 2 } else { 0 };
                if i + 1 < n {
                    flags |= 1;
                }
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, (i + 1) as u16))
            })
            .collect();
        self.vq.add_desc_chains(&raw, 0).unwrap();
        self.dev.queue_notify(0);
        assert_eq!(self.vq.used().idx().load(), self.used + 1, "chain not used");
        let e = self
            .vq
            .used()
            .ring()
            .ref_at(usize::from(self.used % QUEUE_SIZE))
            .unwrap()
            .load();
        self.used += 1;
        assert_eq!(e.id(), 0);
        let status: u8 = self.mem.read_obj(GuestAddress(STATUS)).unwrap();
        (e.len(), status)
    }

    /// A request in the Linux layout: header, data segments, status.
    fn request(&mut self, t: u32, sector: u64, data: &[(u64, u32, bool)]) -> (u32, u8) {
        self.header(t, sector);
        let mut d = vec![(HDR, 16, R)];
        d.extend_from_slice(data);
        d.push((STATUS, 1, W));
        self.submit(&d)
    }
}

fn sector_pattern(sector: u64) -> Vec<u8> {
    vec![sector as u8 ^ 0x5a; 512]
}

#[test]
fn identity_features_and_config() {
    let img = TempImage::new("ident", IMAGE_SECTORS);
    let dev = Block::new(DiskImage::open(&img.0, false).unwrap(), None).unwrap();
    assert_eq!(dev.device_type(), VIRTIO_ID_BLOCK);
    assert_eq!(dev.queue_max_sizes(), &[QUEUE_SIZE]);
    let f = dev.device_features();
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_SIZE_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
    ] {
        assert_ne!(f & bit, 0, "feature {bit:#x}");
    }
    assert_eq!(f & VIRTIO_BLK_F_RO, 0);
    let mut c = [0u8; CONFIG_LEN + 8];
    dev.read_config(0, &mut c);
    let u32_at = |o: usize| u32::from_le_bytes(c[o..o + 4].try_into().unwrap());
    assert_eq!(
        u64::from_le_bytes(c[0..8].try_into().unwrap()),
        IMAGE_SECTORS
    );
    assert_eq!(u32_at(8), SIZE_MAX);
    assert_eq!(u32_at(12), SEG_MAX);
    assert_eq!(u32_at(20), 512);
    assert_eq!(u32_at(36), MAX_DISCARD_SECTORS);
    assert_eq!(u32_at(40), MAX_DISCARD_SEG);
    assert_eq!(u32_at(44), DISCARD_SECTOR_ALIGNMENT);
    assert_eq!(u32_at(48), MAX_DISCARD_SECTORS);
    assert_eq!(u32_at(52), MAX_DISCARD_SEG);
    assert_eq!(c[56], 1);
    assert_eq!(&c[CONFIG_LEN..], &[0; 8], "beyond the config reads 0");
    // Partial and far-out reads.
    let mut b = [0xffu8; 4];
    dev.read_config(1, &mut b);
    assert_eq!(b, [0, 0, 0, 0]);
    dev.read_config(u64::MAX - 1, &mut b);
    assert_eq!(b, [0; 4]);

    drop(dev);
    let ro = Block::new(DiskImage::open(&img.0, true).unwrap(), None).unwrap();
    let f = ro.device_features();
    assert_ne!(f & VIRTIO_BLK_F_RO, 0);
    assert_eq!(f & (VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES), 0);
}

#[test]
fn write_then_read_across_segments_and_file_contents() {
    let img = TempImage::new("rw", IMAGE_SECTORS);
    let mut h = Harness::new(&img, false);
    let data: Vec<u8> = (0..1536u32).map(|i| (i * 7) as u8).collect();
    h.mem.write_slice(&data[..512], GuestAddress(DATA)).unwrap();
    h.mem
        .write_slice(&data[512..], GuestAddress(DATA + 0x1_0000))
        .unwrap();
    let (len, status) = h.request(
        VIRTIO_BLK_T_OUT,
        3,
        &[(DATA, 512, R), (DATA + 0x1_0000, 1024, R)],
    );
    assert_eq!((len, status), (1, VIRTIO_BLK_S_OK));
    let file = img.bytes();
    assert_eq!(&file[3 * 512..6 * 512], &data[..]);
    assert_eq!(&file[2 * 512..3 * 512], &sector_pattern(2)[..]);
    assert_eq!(&file[6 * 512..7 * 512], &sector_pattern(6)[..]);

    // Read sectors 2..7 back into three segments.
    let (len, status) = h.request(
        VIRTIO_BLK_T_IN,
        2,
        &[
            (DATA + 0x2_0000, 1024, W),
            (DATA + 0x3_0000, 512, W),
            (DATA + 0x4_0000, 1024, W),
        ],
    );
    assert_eq!((len, status), (2561, VIRTIO_BLK_S_OK));
    let mut got = vec![0u8; 2560];
    h.mem
        .read_slice(&mut got[..1024], GuestAddress(DATA + 0x2_0000))
        .unwrap();
    h.mem
        .read_slice(&mut got[1024..1536], GuestAddress(DATA + 0x3_0000))
        .unwrap();
    h.mem
        .read_slice(&mut got[1536..], GuestAddress(DATA + 0x4_0000))
        .unwrap();
    assert_eq!(&got[..], &file[1024..1024 + 2560]);
    assert_eq!(h.irq.0.load(Ordering::SeqCst), 2);
    let s = h.dev.stats();
    assert_eq!(
        (s.reads, s.writes, s.bytes_read, s.bytes_written),
        (1, 1, 2560, 1536)
    );
}

#[test]
fn any_layout_header_split_and_shared_with_data() {
    let img = TempImage::new("layout", IMAGE_SECTORS);
    let mut h = Harness::new(&img, false);
    // Header split over two descriptors, then the status inside the last data buffer.
    h.header(VIRTIO_BLK_T_IN, 5);
    let (len, status) = h.submit(&[(HDR, 10, R), (HDR + 10, 6, R), (STATUS - 512, 513, W)]);
    assert_eq!((len, status), (513, VIRTIO_BLK_S_OK));
    let mut got = vec![0u8; 512];
    h.mem
        .read_slice(&mut got, GuestAddress(STATUS - 512))
        .unwrap();
    assert_eq!(got, sector_pattern(5));

    // OUT with header and data in one descriptor.
    let mut buf = vec![0u8; 16 + 512];
    buf[0..4].copy_from_slice(&VIRTIO_BLK_T_OUT.to_le_bytes());
    buf[8..16].copy_from_slice(&9u64.to_le_bytes());
    buf[16..].fill(0xab);
    h.mem.write_slice(&buf, GuestAddress(DATA)).unwrap();
    let (len, status) = h.submit(&[(DATA, 528, R), (STATUS, 1, W)]);
    assert_eq!((len, status), (1, VIRTIO_BLK_S_OK));
    assert_eq!(&img.bytes()[9 * 512..10 * 512], &[0xab; 512][..]);
}

#[test]
fn out_of_range_and_overflowing_sectors_are_ioerr_and_change_nothing() {
    let img = TempImage::new("range", IMAGE_SECTORS);
    let before = img.bytes();
    let mut h = Harness::new(&img, false);
    for (t, sector, len) in [
        (VIRTIO_BLK_T_OUT, IMAGE_SECTORS, 512), // starts at the end
        (VIRTIO_BLK_T_OUT, IMAGE_SECTORS - 1, 1024), // crosses the end
        (VIRTIO_BLK_T_OUT, u64::MAX, 512),      // sector * 512 overflows
        (VIRTIO_BLK_T_OUT, u64::MAX / 512, 512), // offset + len overflows
        (VIRTIO_BLK_T_IN, IMAGE_SECTORS, 512),
        (VIRTIO_BLK_T_IN, 1 << 55, 512),
    ] {
        let dir = t == VIRTIO_BLK_T_IN;
        let (used, status) = h.request(t, sector, &[(DATA, len, dir)]);
        assert_eq!(
            (used, status),
            (1, VIRTIO_BLK_S_IOERR),
            "type {t} sector {sector}"
        );
    }
    // The last sector itself is fine.
    let (_, status) = h.request(VIRTIO_BLK_T_IN, IMAGE_SECTORS - 1, &[(DATA, 512, W)]);
    assert_eq!(status, VIRTIO_BLK_S_OK);
    assert_eq!(img.bytes(), before);
    assert_eq!(h.dev.stats().errors, 6);
}

#[test]
fn data_length_must_be_whole_sectors() {
    let img = TempImage::new("align", IMAGE_SECTORS);
    let before = img.bytes();
    let mut h = Harness::new(&img, false);
    assert_eq!(
        h.request(VIRTIO_BLK_T_OUT, 0, &[(DATA, 511, R)]).1,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(
        h.request(
            VIRTIO_BLK_T_IN,
            0,
            &[(DATA, 100, W), (DATA + 0x1000, 100, W)]
        )
        .1,
        VIRTIO_BLK_S_IOERR
    );
    // Segments need not be whole sectors, only the total.
    assert_eq!(
        h.request(
            VIRTIO_BLK_T_IN,
            0,
            &[(DATA, 100, W), (DATA + 0x1000, 412, W)]
        )
        .1,
        VIRTIO_BLK_S_OK
    );
    assert_eq!(img.bytes(), before);
}

#[test]
fn read_only_disk_refuses_writes_and_keeps_the_file() {
    let img = TempImage::new("ro", IMAGE_SECTORS);
    let before = img.bytes();
    let dev = Block::new(DiskImage::open(&img.0, true).unwrap(), None).unwrap();
    // A driver that acks DISCARD / WRITE_ZEROES anyway.
    let mut h = Harness::with_device(
        dev,
        VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_RO | VIRTIO_BLK_F_FLUSH,
    );
    h.mem.write_slice(&[0xee; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(
        h.request(VIRTIO_BLK_T_OUT, 0, &[(DATA, 512, R)]),
        (1, VIRTIO_BLK_S_IOERR)
    );
    let mut range = [0u8; 16];
    range[8..12].copy_from_slice(&4u32.to_le_bytes());
    h.mem.write_slice(&range, GuestAddress(DATA)).unwrap();
    // Not negotiated (not even offered): UNSUPP.
    assert_eq!(
        h.request(VIRTIO_BLK_T_DISCARD, 0, &[(DATA, 16, R)]).1,
        VIRTIO_BLK_S_UNSUPP
    );
    assert_eq!(
        h.request(VIRTIO_BLK_T_IN, 1, &[(DATA, 512, W)]),
        (513, VIRTIO_BLK_S_OK)
    );
    assert_eq!(h.request(VIRTIO_BLK_T_FLUSH, 0, &[]).1, VIRTIO_BLK_S_OK);
    assert_eq!(img.bytes(), before);

    // With DISCARD / WRITE_ZEROES negotiated by a driver that ignores RO: IOERR.
    let dev = Block::new(DiskImage::open(&img.0, true).unwrap(), None).unwrap();
    let mut h = Harness::with_device(
        dev,
        VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES,
    );
    h.mem.write_slice(&range, GuestAddress(DATA)).unwrap();
    for t in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
        assert_eq!(h.request(t, 0, &[(DATA, 16, R)]).1, VIRTIO_BLK_S_IOERR);
    }
    assert_eq!(img.bytes(), before);
}

#[test]
fn unknown_types_are_unsupp() {
    let img = TempImage::new("unsupp", IMAGE_SECTORS);
    let mut h = Harness::new(&img, false);
    for t in [2, 3, 5, 14, 15, 24, 0x8000_0000, u32::MAX] {
        assert_eq!(h.request(t, 0, &[]), (1, VIRTIO_BLK_S_UNSUPP), "type {t}");
    }
}

#[test]
fn malformed_chains_get_ioerr_or_length_zero() {
    let img = TempImage::new("malformed", 4 * IMAGE_SECTORS);
    let before = img.bytes();
    let mut h = Harness::new(&img, false);
    h.header(VIRTIO_BLK_T_OUT, 0);
    // Header too short.
    assert_eq!(
        h.submit(&[(HDR, 8, R), (STATUS, 1, W)]),
        (1, VIRTIO_BLK_S_IOERR)
    );
    // Data in the wrong direction: OUT with writable data, IN with readable data.
    assert_eq!(
        h.submit(&[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)]).1,
        VIRTIO_BLK_S_IOERR
    );
    h.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        h.submit(&[(HDR, 16, R), (DATA, 512, R), (STATUS, 1, W)]).1,
        VIRTIO_BLK_S_IOERR
    );
    // FLUSH with data.
    h.header(VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(
        h.submit(&[(HDR, 16, R), (DATA, 512, R), (STATUS, 1, W)]).1,
        VIRTIO_BLK_S_IOERR
    );
    // Readable after writable.
    h.header(VIRTIO_BLK_T_OUT, 0);
    assert_eq!(
        h.submit(&[(DATA, 512, W), (HDR, 16, R), (STATUS, 1, W)]).1,
        VIRTIO_BLK_S_IOERR
    );
    // Data outside guest memory, or straddling its end.
    for addr in [1u64 << 40, MEM_SIZE as u64 - 256, u64::MAX - 100] {
        assert_eq!(
            h.submit(&[(HDR, 16, R), (addr, 512, R), (STATUS, 1, W)]).1,
            VIRTIO_BLK_S_IOERR,
            "{addr:#x}"
        );
    }
    // Header outside guest memory.
    assert_eq!(
        h.submit(&[(1 << 40, 16, R), (STATUS, 1, W)]).1,
        VIRTIO_BLK_S_IOERR
    );
    // A segment above size_max.
    assert_eq!(
        h.submit(&[(HDR, 16, R), (DATA, SIZE_MAX + 512, R), (STATUS, 1, W)])
            .1,
        VIRTIO_BLK_S_IOERR
    );
    // More segments than seg_max.
    let mut many = vec![(HDR, 16, R)];
    many.extend((0..=SEG_MAX as u64).map(|i| (DATA + i * 512, 512, R)));
    many.push((STATUS, 1, W));
    assert_eq!(h.submit(&many).1, VIRTIO_BLK_S_IOERR);
    // Exactly seg_max is fine.
    many.remove(1);
    assert_eq!(h.submit(&many).1, VIRTIO_BLK_S_OK);
    let after_ok = img.bytes();

    // No status byte: last descriptor readable, empty, outside memory, or nothing writable.
    for chain in [
        vec![(HDR, 16, R), (DATA, 512, R)],
        vec![(HDR, 16, R), (STATUS, 0, W)],
        vec![(HDR, 16, R), (1 << 40, 1, W)],
        vec![(HDR, 16, R), (u64::MAX, 1, W)],
    ] {
        assert_eq!(h.submit(&chain), (0, 0xff), "{chain:?}");
    }
    assert_eq!(img.bytes(), after_ok);
    assert_ne!(after_ok, before, "the seg_max request wrote");
    assert_eq!(h.dev.stats().rejected, 4);
}

#[test]
fn looping_and_broken_chains_are_returned_with_length_zero() {
    let img = TempImage::new("loop", IMAGE_SECTORS);
    let mut h = Harness::new(&img, false);
    h.header(VIRTIO_BLK_T_IN, 0);
    // 0 -> 1 -> 0 -> ...
    let raw = [
        RawDescriptor::from(SplitDescriptor::new(HDR, 16, 1, 1)),
        RawDescriptor::from(SplitDescriptor::new(STATUS, 1, 3, 0)),
    ];
    h.vq.add_desc_chains(&raw, 0).unwrap();
    h.dev.queue_notify(0);
    assert_eq!(h.vq.used().idx().load(), 1);
    assert_eq!(h.vq.used().ring().ref_at(0).unwrap().load().len(), 0);
    // next index beyond the queue.
    let raw = [
        RawDescriptor::from(SplitDescriptor::new(HDR, 16, 1, 999)),
        RawDescriptor::from(SplitDescriptor::new(STATUS, 1, 2, 0)),
    ];
    h.vq.add_desc_chains(&raw[..1], 0).unwrap();
    h.dev.queue_notify(0);
    assert_eq!(h.vq.used().idx().load(), 2);
    assert_eq!(h.vq.used().ring().ref_at(1).unwrap().load().len(), 0);
    assert_eq!(h.dev.stats().rejected, 2);
}

/// A device on `img` whose syncs are counted and fail while `fail` is set.
fn faulty_sync_harness(
    img: &TempImage,
    features: Option<u64>,
) -> (Harness, Arc<AtomicBool>, Arc<AtomicUsize>) {
    let fail = Arc::new(AtomicBool::new(false));
    let syncs = Arc::new(AtomicUsize::new(0));
    let backend = FaultySync {
        inner: DiskImage::open(&img.0, false).unwrap(),
        fail: fail.clone(),
        syncs: syncs.clone(),
    };
    let dev = Block::with_backend(Box::new(backend), IMAGE_SECTORS * 512, false, None).unwrap();
    let features = features.unwrap_or_else(|| dev.device_features());
    (Harness::with_device(dev, features), fail, syncs)
}

#[test]
fn flush_completes_only_after_a_successful_sync() {
    let img = TempImage::new("flush", IMAGE_SECTORS);
    let (mut h, fail, syncs) = faulty_sync_harness(&img, None);
    // Write-back (FLUSH negotiated): a write does not sync, a flush does.
    h.mem.write_slice(&[1; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(h.request(VIRTIO_BLK_T_OUT, 0, &[(DATA, 512, R)]).1, 0);
    assert_eq!(syncs.load(Ordering::SeqCst), 0);
    assert_eq!(h.request(VIRTIO_BLK_T_FLUSH, 0, &[]), (1, VIRTIO_BLK_S_OK));
    assert_eq!(syncs.load(Ordering::SeqCst), 1);
    // A failing fdatasync fails the flush.
    fail.store(true, Ordering::SeqCst);
    assert_eq!(
        h.request(VIRTIO_BLK_T_FLUSH, 0, &[]),
        (1, VIRTIO_BLK_S_IOERR)
    );
    assert_eq!(syncs.load(Ordering::SeqCst), 2);
    assert_eq!(h.dev.stats().flushes, 1);
}

#[test]
fn without_flush_negotiated_every_write_is_synced() {
    let img = TempImage::new("wt", IMAGE_SECTORS);
    let (mut h, fail, syncs) = faulty_sync_harness(&img, Some(VIRTIO_F_VERSION_1));
    assert_eq!(h.request(VIRTIO_BLK_T_OUT, 0, &[(DATA, 512, R)]).1, 0);
    assert_eq!(syncs.load(Ordering::SeqCst), 1);
    fail.store(true, Ordering::SeqCst);
    assert_eq!(
        h.request(VIRTIO_BLK_T_OUT, 0, &[(DATA, 512, R)]).1,
        VIRTIO_BLK_S_IOERR
    );
    // Reads do not sync.
    assert_eq!(h.request(VIRTIO_BLK_T_IN, 0, &[(DATA, 512, W)]).1, 0);
    assert_eq!(syncs.load(Ordering::SeqCst), 2);
}

#[test]
fn get_id_returns_the_padded_serial() {
    let img = TempImage::new("id", IMAGE_SECTORS);
    let mut h = Harness::new(&img, false);
    h.mem.write_slice(&[0xcc; 32], GuestAddress(DATA)).unwrap();
    assert_eq!(
        h.request(VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 20, W)]),
        (21, VIRTIO_BLK_S_OK)
    );
    let mut id = [0u8; 21];
    h.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..5], b"disk0");
    assert_eq!(&id[5..20], &[0; 15]);
    assert_eq!(id[20], 0xcc, "wrote past the buffer");
    // A short buffer gets what fits.
    h.mem.write_slice(&[0xcc; 32], GuestAddress(DATA)).unwrap();
    assert_eq!(
        h.request(VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 3, W)]),
        (4, VIRTIO_BLK_S_OK)
    );
    let mut id = [0u8; 4];
    h.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id, b"dis\xcc");

    assert!(matches!(
        check_serial("012345678901234567890"),
        Err(BlockError::SerialTooLong(_))
    ));
    assert!(check_serial("01234567890123456789").is_ok());
    assert!(matches!(
        check_serial("a\0b"),
        Err(BlockError::BadSerial(_))
    ));
    drop(h);
    let dev = Block::new(
        DiskImage::open(&img.0, true).unwrap(),
        Some("much-too-long-serial-x"),
    );
    assert!(dev.is_err());
}

fn range(sector: u64, num: u32, flags: u32) -> [u8; 16] {
    let mut r = [0u8; 16];
    r[0..8].copy_from_slice(&sector.to_le_bytes());
    r[8..12].copy_from_slice(&num.to_le_bytes());
    r[12..16].copy_from_slice(&flags.to_le_bytes());
    r
}

#[test]
fn discard_and_write_zeroes() {
    let img = TempImage::new("discard", IMAGE_SECTORS);
    let mut h = Harness::new(&img, false);
    // Write zeroes over sectors 8..16 (no unmap) and 20..24 (unmap), in one request.
    let mut two = range(8, 8, 0).to_vec();
    two.extend_from_slice(&range(20, 4, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP));
    h.mem.write_slice(&two, GuestAddress(DATA)).unwrap();
    assert_eq!(
        h.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &[(DATA, 32, R)]),
        (1, VIRTIO_BLK_S_OK)
    );
    let file = img.bytes();
    assert_eq!(file.len() as u64, IMAGE_SECTORS * 512, "size kept");
    assert!(file[8 * 512..16 * 512].iter().all(|&b| b == 0));
    assert!(file[20 * 512..24 * 512].iter().all(|&b| b == 0));
    assert_eq!(&file[16 * 512..17 * 512], &sector_pattern(16)[..]);
    assert_eq!(&file[7 * 512..8 * 512], &sector_pattern(7)[..]);
    assert_eq!(&file[24 * 512..25 * 512], &sector_pattern(24)[..]);

    // Discard of a 4 KiB-aligned range (hole punch: reads back zeroes here).
    h.mem
        .write_slice(&range(32, 8, 0), GuestAddress(DATA))
        .unwrap();
    assert_eq!(
        h.request(VIRTIO_BLK_T_DISCARD, 0, &[(DATA, 16, R)]),
        (1, VIRTIO_BLK_S_OK)
    );
    let file = img.bytes();
    assert_eq!(file.len() as u64, IMAGE_SECTORS * 512);
    assert_eq!(&file[40 * 512..41 * 512], &sector_pattern(40)[..]);

    let before = img.bytes();
    // Discard with UNMAP, or unknown flags: UNSUPP.
    for (t, flags) in [
        (VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP),
        (VIRTIO_BLK_T_DISCARD, 2),
        (VIRTIO_BLK_T_WRITE_ZEROES, 4),
    ] {
        h.mem
            .write_slice(&range(0, 1, flags), GuestAddress(DATA))
            .unwrap();
        assert_eq!(h.request(t, 0, &[(DATA, 16, R)]).1, VIRTIO_BLK_S_UNSUPP);
    }
    // Beyond the end, overflowing, too large, bad lengths: IOERR.
    for (t, r, len) in [
        (VIRTIO_BLK_T_DISCARD, range(IMAGE_SECTORS - 1, 2, 0), 16),
        (VIRTIO_BLK_T_WRITE_ZEROES, range(u64::MAX, 1, 0), 16),
        (
            VIRTIO_BLK_T_WRITE_ZEROES,
            range(0, MAX_DISCARD_SECTORS + 1, 0),
            16,
        ),
        (VIRTIO_BLK_T_DISCARD, range(0, 1, 0), 15),
        (VIRTIO_BLK_T_DISCARD, range(0, 1, 0), 0),
    ] {
        h.mem.write_slice(&r, GuestAddress(DATA)).unwrap();
        let data: &[(u64, u32, bool)] = if len == 0 { &[] } else { &[(DATA, len, R)] };
        assert_eq!(h.request(t, 0, data).1, VIRTIO_BLK_S_IOERR);
    }
    // More ranges than announced.
    let many: Vec<u8> = (0..=MAX_DISCARD_SEG)
        .flat_map(|i| range(u64::from(i), 1, 0))
        .collect();
    h.mem.write_slice(&many, GuestAddress(DATA)).unwrap();
    assert_eq!(
        h.request(VIRTIO_BLK_T_DISCARD, 0, &[(DATA, many.len() as u32, R)])
            .1,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(img.bytes(), before);

    // Not negotiated: UNSUPP.
    drop(h);
    let dev = Block::new(DiskImage::open(&img.0, false).unwrap(), None);
    let mut h = Harness::with_device(dev.unwrap(), VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH);
    h.mem
        .write_slice(&range(0, 1, 0), GuestAddress(DATA))
        .unwrap();
    for t in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
        assert_eq!(h.request(t, 0, &[(DATA, 16, R)]).1, VIRTIO_BLK_S_UNSUPP);
    }
    assert_eq!(img.bytes(), before);
}

#[test]
fn flock_excludes_a_second_writer() {
    let img = TempImage::new("lock", IMAGE_SECTORS);
    let w = DiskImage::open(&img.0, false).unwrap();
    for ro in [false, true] {
        let e = DiskImage::open(&img.0, ro).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ImageError::Locked { .. }), "{msg}");
        assert!(msg.contains(&img.0.display().to_string()), "{msg}");
        assert!(msg.contains("this monitor"), "{msg}");
    }
    drop(w);
    // Readers share; a writer is then refused.
    let r1 = DiskImage::open(&img.0, true).unwrap();
    let r2 = DiskImage::open(&img.0, true).unwrap();
    assert!(matches!(
        DiskImage::open(&img.0, false),
        Err(ImageError::Locked { .. })
    ));
    drop((r1, r2));
    // The lock goes with the file.
    DiskImage::open(&img.0, false).unwrap();
}

#[test]
fn image_checks() {
    let dir = std::env::temp_dir();
    let missing = dir.join(format!("virtio-blk-missing-{}.img", std::process::id()));
    assert!(matches!(
        check_image(&missing, false),
        Err(ImageError::Missing(_))
    ));
    assert!(matches!(
        check_image(&dir, true),
        Err(ImageError::Directory(_))
    ));
    let img = TempImage::new("checks", 1);
    std::fs::write(&img.0, [0u8; 513]).unwrap();
    let e = check_image(&img.0, true).unwrap_err();
    assert!(matches!(e, ImageError::Unaligned { size: 513, .. }), "{e}");
    std::fs::write(&img.0, []).unwrap();
    assert!(matches!(
        check_image(&img.0, true),
        Err(ImageError::Empty(_))
    ));
    std::fs::write(&img.0, [0u8; 1024]).unwrap();
    let info = check_image(&img.0, false).unwrap();
    assert_eq!(info.size, 1024);
    std::fs::set_permissions(&img.0, std::fs::Permissions::from_mode(0o444)).unwrap();
    let e = check_image(&img.0, false).unwrap_err();
    assert!(
        matches!(e, ImageError::ReadOnlyFile { mode: 0o444, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("read_only = true"), "{e}");
    assert!(check_image(&img.0, true).is_ok());
    // A sparse image is fine.
    let sparse = TempImage::new("sparse", 1);
    std::fs::File::options()
        .write(true)
        .open(&sparse.0)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    assert_eq!(check_image(&sparse.0, false).unwrap().size, 1 << 30);
}

#[test]
fn parser_unit_cases() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let mut hdr = [0u8; 16];
    hdr[8..16].copy_from_slice(&7u64.to_le_bytes());
    mem.write_slice(&hdr, GuestAddress(HDR)).unwrap();
    let d = |addr, len, write| Desc { addr, len, write };
    let ok = parse(
        &mem,
        &[
            d(HDR, 16, R),
            d(DATA, 512, W),
            d(DATA + 512, 0, W),
            d(STATUS, 1, W),
        ],
        4,
        &LIMITS,
    )
    .unwrap();
    assert_eq!(ok.kind, Kind::In);
    assert_eq!(ok.sector, 7);
    assert_eq!(ok.data_len, 512);
    assert_eq!(ok.data.len(), 1, "empty descriptors are dropped");
    assert_eq!(ok.status, GuestAddress(STATUS));
    // Empty chain.
    assert!(matches!(
        parse(&mem, &[], 0, &LIMITS),
        Err(Rejected {
            error: RequestError::NoStatus,
            status: None
        })
    ));
    // Too many descriptors (counted, even if not all kept).
    let e = parse(&mem, &[d(HDR, 16, R), d(STATUS, 1, W)], 500, &LIMITS).unwrap_err();
    assert!(matches!(e.error, RequestError::TooManyDescriptors { .. }));
    assert_eq!(e.status, Some(GuestAddress(STATUS)));
    assert_eq!(e.error.status(), VIRTIO_BLK_S_IOERR);
    // Ranges.
    assert_eq!(check_range(0, 512, 512).unwrap(), 0);
    assert!(check_range(1, 1, 512).is_err());
    assert!(check_range(u64::MAX / 512 + 1, 0, u64::MAX).is_err());
    assert_eq!(RequestError::Unsupported(99).status(), VIRTIO_BLK_S_UNSUPP);
}

#[test]
fn lifecycle_notify_before_activate_wrong_queue_and_reset() {
    let img = TempImage::new("life", IMAGE_SECTORS);
    let mut dev = Block::new(DiskImage::open(&img.0, false).unwrap(), None).unwrap();
    dev.queue_notify(0);
    dev.queue_notify(3);
    assert!(!dev.is_active());
    dev.write_config(0, &[1, 2, 3, 4]);
    let mut c = [0u8; 8];
    dev.read_config(0, &mut c);
    assert_eq!(
        u64::from_le_bytes(c),
        IMAGE_SECTORS,
        "config writes are ignored"
    );
    let features = dev.device_features();
    let mut h = Harness::with_device(dev, features);
    h.dev.queue_notify(1);
    assert_eq!(h.vq.used().idx().load(), 0);
    h.dev.reset();
    assert!(!h.dev.is_active());
    h.dev.queue_notify(0);
    assert!(h
        .dev
        .activate(ActivateContext {
            mem: h.mem.clone(),
            queues: vec![],
            interrupt: h.irq.clone(),
            acked_features: VIRTIO_F_VERSION_1,
        })
        .is_err());
}

#[test]
fn an_available_index_past_the_ring_stops_the_queue_and_asks_for_a_reset() {
    let img = TempImage::new("avail", IMAGE_SECTORS);
    let mut h = Harness::new(&img, false);
    assert_eq!(h.request(VIRTIO_BLK_T_IN, 1, &[(DATA, 512, W)]), (513, 0));
    // A hostile driver claims more chains than the ring holds. The device loop used to
    // spin here for ever (pop: nothing; enable_notification: "more available").
    h.vq.avail().idx().store(h.used + QUEUE_SIZE + 1);
    h.dev.queue_notify(0);
    assert_eq!(h.irq.1.load(Ordering::SeqCst), 1, "no reset requested");
    assert!(
        !h.dev.is_active(),
        "the device still uses the corrupt queue"
    );
    assert_eq!(h.vq.used().idx().load(), h.used, "a chain was used");
    // Further notifications are ignored, and a reset brings the device back.
    h.dev.queue_notify(0);
    assert_eq!(h.irq.1.load(Ordering::SeqCst), 1);
    h.dev.reset();
    let features = h.dev.device_features();
    let mut h = Harness::with_device(h.dev, features);
    assert_eq!(h.request(VIRTIO_BLK_T_IN, 2, &[(DATA, 512, W)]), (513, 0));
}
