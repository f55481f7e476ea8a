//! Fuzzing entry point shared by the `cargo fuzz` target (`fuzz/`) and the
//! deterministic `fuzz_smoke` test.
//! Compiled only with the crate's `fuzzing` feature (off by default), which
//! `fuzz/Cargo.toml` and the crate's self dev-dependency (for `cargo test`)
//! turn on.
//!
//! [`run_one`] opens a small image (a memfd of [`IMAGE_SECTORS`] sectors with
//! a known pattern, through the real [`DiskImage`]) behind a recording backend,
//! activates a block device on 256 KiB of guest RAM and interprets the input as
//! a program of guest actions: raw descriptors and bytes written anywhere
//! (including outside RAM), heads made available, structured requests (valid
//! ones, or with one known defect), queue notifications, device resets with
//! other negotiated features, and injected `fdatasync`/write failures.
//!
//! Oracles, checked after every step:
//! - every backend access lies inside the image (the recorder asserts it);
//! - a read-only disk is never written, discarded or zeroed;
//! - the image equals a shadow copy that only the recorded writes, discards
//!   and zeroings changed: nothing else touched the file;
//! - a structured request gets the status its defect calls for (OK, IOERR,
//!   UNSUPP, or used length 0 without a status byte), and a successful write
//!   leaves exactly its data in the image, a successful read exactly the
//!   image's bytes in the guest buffers.
//!
//! Any panic is a bug.

// A fuzz harness: its casts are of its own constants and of bounded fuzz input.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use virtio_driver_model::{Input, NoIrq, SplitRing};
use virtio_mmio_transport::{ActivateContext, VirtioDevice};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::image::{DiskBackend, DiskImage, GuestSlice};
use crate::request::*;
use crate::{Block, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_WRITE_ZEROES};

/// Sectors of the fuzzed image.
pub const IMAGE_SECTORS: u64 = 32;
const IMAGE_BYTES: u64 = IMAGE_SECTORS * 512;
const RAM: u64 = 256 << 10;
const QSIZE: u16 = 16;
const BUF_BASE: u64 = 0x1000;
/// Guest memory per structured-request slot: header, up to 3 data segments of
/// up to 2 KiB, status (16 slots fit below [`RAM`]).
const SLOT: u64 = 0x3000;
/// The queue (descriptor table, available ring, used ring: 0x400 bytes), above the
/// slots and where raw descriptors' addresses (see [`addr`]) do not reach: a chain
/// whose device-writable buffer covered the used ring would make the device's own
/// data look like completions to the harness, and its checks would fail for no bug.
const RING: u64 = 0x38000;
const RING_BYTES: u64 = 0x400;
/// The used ring's offset in [`RING`] (`SplitRing` puts it at 32 bytes per entry).
const USED_AT: u64 = 32 * QSIZE as u64;
/// Bytes per step record; byte 0 is the operation.
pub const STEP_BYTES: usize = 24;

/// The expected image content, changed only by what the backend was asked to do.
#[derive(Default)]
struct Shadow {
    bytes: Vec<u8>,
    modified: u64,
}

/// Counters of what the fuzz run reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FuzzStats {
    pub requests: u64,
    pub ok: u64,
    pub ioerr: u64,
    pub unsupp: u64,
    pub no_status: u64,
    pub structured: u64,
    pub bytes_written: u64,
    pub bytes_read: u64,
    pub flushes: u64,
    pub discards: u64,
    pub write_zeroes: u64,
}

/// The real image behind a recorder that checks bounds and keeps the shadow.
struct Recorder {
    inner: DiskImage,
    shadow: Arc<Mutex<Shadow>>,
    read_only: bool,
    fail_sync: Arc<AtomicBool>,
    fail_write: Arc<AtomicBool>,
}

fn lock(s: &Mutex<Shadow>) -> std::sync::MutexGuard<'_, Shadow> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

impl Recorder {
    fn bounds(&self, offset: u64, len: u64, what: &str) {
        assert!(
            offset
                .checked_add(len)
                .is_some_and(|end| end <= IMAGE_BYTES),
            "{what} at {offset}+{len} outside the {IMAGE_BYTES}-byte image"
        );
        if what != "read" {
            assert!(!self.read_only, "{what} on a read-only disk");
        }
    }
}

impl DiskBackend for Recorder {
    fn read_exact_at(&mut self, buf: &GuestSlice<'_>, offset: u64) -> std::io::Result<()> {
        self.bounds(offset, buf.len() as u64, "read");
        self.inner.read_exact_at(buf, offset)
    }
    fn write_all_at(&mut self, buf: &GuestSlice<'_>, offset: u64) -> std::io::Result<()> {
        self.bounds(offset, buf.len() as u64, "write");
        if self.fail_write.load(Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        let mut data = vec![0u8; buf.len()];
        buf.copy_to(&mut data[..]);
        self.inner.write_all_at(buf, offset)?;
        let mut s = lock(&self.shadow);
        let o = offset as usize;
        s.bytes[o..o + data.len()].copy_from_slice(&data);
        s.modified += 1;
        Ok(())
    }
    fn sync_data(&mut self) -> std::io::Result<()> {
        if self.fail_sync.load(Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        self.inner.sync_data()
    }
    fn discard(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
        self.bounds(offset, len, "discard");
        self.inner.discard(offset, len)?;
        // Hole punching reads back as zeroes (partial blocks are zeroed too).
        let mut s = lock(&self.shadow);
        s.bytes[offset as usize..(offset + len) as usize].fill(0);
        s.modified += 1;
        Ok(())
    }
    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> std::io::Result<()> {
        self.bounds(offset, len, "write_zeroes");
        self.inner.write_zeroes(offset, len, unmap)?;
        let mut s = lock(&self.shadow);
        s.bytes[offset as usize..(offset + len) as usize].fill(0);
        s.modified += 1;
        Ok(())
    }
}

/// What a structured request must get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// OK; for IN the data must equal the image, for OUT the image the data.
    Ok,
    Status(u8),
    /// Returned with used length 0.
    NoStatus,
    /// Depends on an injected failure or on the ranges: OK or IOERR.
    OkOrIoerr,
    /// Anything but a panic (the defect made the header read data bytes).
    Any,
}

fn memfd_image(read_only: bool) -> Option<(File, DiskImage, Vec<u8>)> {
    // SAFETY: valid C string; memfd_create has no memory side effects.
    let fd = unsafe { libc::memfd_create(c"fuzz-disk".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd was just created and is owned by nobody else.
    let mut f = unsafe { File::from_raw_fd(fd) };
    let pattern: Vec<u8> = (0..IMAGE_BYTES)
        .map(|i| (i / 512) as u8 ^ (i as u8).rotate_left(3) | 1)
        .collect();
    f.write_all(&pattern).ok()?;
    let path = format!("/proc/self/fd/{}", f.as_raw_fd());
    let image = DiskImage::open(std::path::Path::new(&path), read_only).ok()?;
    Some((f, image, pattern))
}

fn file_bytes(f: &mut File) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = f.seek(SeekFrom::Start(0));
    let _ = f.read_to_end(&mut out);
    out
}

fn addr(inp: &mut Input<'_>) -> u64 {
    match inp.u8() % 6 {
        0 => inp.u64(),
        1 => RAM - u64::from(inp.u8()),
        2 => u64::from(inp.u16()),
        _ => BUF_BASE + u64::from(inp.u16()) % (RAM - BUF_BASE),
    }
}

struct Pending {
    expect: Expect,
    kind: u32,
    /// Image byte offset and guest data segments of an IN/OUT.
    offset: u64,
    segs: Vec<(u64, u32)>,
    status: Option<u64>,
    /// For failure messages: defect and descriptors.
    what: String,
}

/// Runs one fuzz input. Panics only on a bug.
pub fn run_one(data: &[u8]) -> FuzzStats {
    let mut stats = FuzzStats::default();
    let mode = data.first().copied().unwrap_or(0);
    let read_only = mode & 1 == 1;
    let Some((mut file, image, pattern)) = memfd_image(read_only) else {
        return stats;
    };
    let shadow = Arc::new(Mutex::new(Shadow {
        bytes: pattern,
        modified: 0,
    }));
    let fail_sync = Arc::new(AtomicBool::new(false));
    let fail_write = Arc::new(AtomicBool::new(false));
    let backend = Recorder {
        inner: image,
        shadow: shadow.clone(),
        read_only,
        fail_sync: fail_sync.clone(),
        fail_write: fail_write.clone(),
    };
    let Ok(mut dev) = Block::with_backend(Box::new(backend), IMAGE_BYTES, read_only, Some("fuzz"))
    else {
        return stats;
    };
    let Ok(mem) = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]) else {
        return stats;
    };
    let offered = dev.device_features();
    let mut features = offered;
    let mut ring = SplitRing::new(RING, QSIZE);
    let activate = |dev: &mut Block, ring: &mut SplitRing, features: u64| {
        *ring = SplitRing::new(RING, QSIZE);
        let _ = mem.write_slice(&[0u8; RING_BYTES as usize], GuestAddress(RING));
        if let Some(q) = ring.queue() {
            let _ = dev.activate(ActivateContext {
                mem: mem.clone(),
                queues: vec![q],
                interrupt: Arc::new(NoIrq),
                acked_features: features,
            });
        }
    };
    activate(&mut dev, &mut ring, features);
    let mut pending: Vec<Option<Pending>> = (0..QSIZE).map(|_| None).collect();

    for rec in data.get(1..).unwrap_or(&[]).chunks(STEP_BYTES).take(256) {
        let mut inp = Input::new(rec);
        let op = inp.u8() % 8;
        if op <= 2 {
            // Raw guest actions may rewrite a request's descriptors or memory.
            pending.iter_mut().for_each(|p| *p = None);
        }
        if std::env::var_os("BLK_FUZZ_TRACE").is_some() {
            eprintln!("step op {op} {rec:02x?}");
        }
        match op {
            0 => {
                let (i, a, len, flags, next) = (
                    inp.u8() as u16,
                    addr(&mut inp),
                    inp.u32(),
                    inp.u16(),
                    inp.u16(),
                );
                // Mostly small lengths, so chains often look plausible.
                let len = if len & 0x8000_0000 != 0 {
                    len
                } else {
                    len % 0x2000
                };
                ring.set_desc(&mem, i, a, len, flags & 7, next);
            }
            1 => {
                let head = u16::from(inp.u8()) % (QSIZE + 2);
                ring.make_available(&mem, head);
            }
            2 => {
                // Anywhere but the used ring, which only the device writes (the
                // harness reads completions from it).
                // Often the descriptor table and available ring (a hostile index).
                let off = u64::from(inp.u16());
                let off = if off & 3 == 0 {
                    RING + (off >> 2) % USED_AT
                } else {
                    off
                };
                let n = usize::from(inp.u8() % 16);
                // Nor with its tail: bytes written just below the used ring must not
                // run into its index.
                let n = match (RING + USED_AT).checked_sub(off) {
                    Some(room) if off >= RING => n.min(room as usize),
                    _ => n,
                };
                let bytes: Vec<u8> = (0..n).map(|_| inp.u8()).collect();
                let _ = mem.write_slice(&bytes, GuestAddress(off));
            }
            3 | 4 => {
                let head = u16::from(inp.u8()) % QSIZE;
                // Its descriptors may overwrite those of a chain still waiting
                // (behind a broken avail entry): nothing older is checked.
                pending.iter_mut().for_each(|p| *p = None);
                let p = structured(&mut inp, &mem, &mut ring, head, features, read_only);
                stats.structured += 1;
                pending[usize::from(head)] = Some(p);
                dev.queue_notify(0);
            }
            5 => dev.queue_notify(u16::from(inp.u8() % 3)),
            6 => {
                let b = inp.u8();
                fail_sync.store(b & 1 == 1, Ordering::SeqCst);
                fail_write.store(b & 2 == 2, Ordering::SeqCst);
            }
            _ => {
                let b = inp.u8();
                dev.reset();
                features = offered
                    & !(u64::from(b & 7) << 9 & VIRTIO_BLK_F_FLUSH)
                    & !(if b & 8 != 0 { VIRTIO_BLK_F_DISCARD } else { 0 })
                    & !(if b & 16 != 0 {
                        VIRTIO_BLK_F_WRITE_ZEROES
                    } else {
                        0
                    });
                pending.iter_mut().for_each(|p| *p = None);
                activate(&mut dev, &mut ring, features);
            }
        }
        // Completions.
        let overruns = ring.overruns();
        let used = ring.take_used(&mem);
        if ring.overruns() != overruns {
            // Some completions were overwritten unseen: a later entry with a waiting
            // request's head may belong to another chain.
            pending.iter_mut().for_each(|p| *p = None);
        }
        for (head, len) in used {
            if std::env::var_os("BLK_FUZZ_TRACE").is_some() {
                eprintln!("  used head {head} len {len}");
            }
            stats.requests += 1;
            let Some(p) = pending.get_mut(usize::from(head)).and_then(Option::take) else {
                continue;
            };
            check_completion(&p, len, &mem, &shadow, &mut stats);
        }
        let s = lock(&shadow);
        assert_eq!(
            file_bytes(&mut file),
            s.bytes,
            "the image changed outside what the device was asked to write"
        );
        if read_only {
            assert_eq!(s.modified, 0);
        }
    }
    let d = dev.stats();
    stats.bytes_written = d.bytes_written;
    stats.bytes_read = d.bytes_read;
    stats.flushes = d.flushes;
    stats.discards = d.discards;
    stats.write_zeroes = d.write_zeroes;
    stats
}

fn check_completion(
    p: &Pending,
    len: u32,
    mem: &GuestMemoryMmap,
    shadow: &Mutex<Shadow>,
    stats: &mut FuzzStats,
) {
    let status = p
        .status
        .and_then(|a| mem.read_obj::<u8>(GuestAddress(a)).ok());
    match (len, status) {
        (0, _) => stats.no_status += 1,
        (_, Some(VIRTIO_BLK_S_OK)) => stats.ok += 1,
        (_, Some(VIRTIO_BLK_S_IOERR)) => stats.ioerr += 1,
        (_, Some(VIRTIO_BLK_S_UNSUPP)) => stats.unsupp += 1,
        _ => {}
    }
    let got = if len == 0 { None } else { status };
    match p.expect {
        Expect::NoStatus => assert_eq!(len, 0, "type {} without status byte", p.kind),
        Expect::Status(s) => {
            assert_eq!(
                got,
                Some(s),
                "type {} wanted status {s}, used len {len}: {}",
                p.kind,
                p.what
            );
            assert_eq!(len, 1, "type {} status {s}: {}", p.kind, p.what);
        }
        Expect::OkOrIoerr => assert!(
            matches!(got, Some(VIRTIO_BLK_S_OK) | Some(VIRTIO_BLK_S_IOERR)),
            "type {}: {got:?}",
            p.kind
        ),
        Expect::Ok => assert_eq!(
            got,
            Some(VIRTIO_BLK_S_OK),
            "type {} (len {len}): {}",
            p.kind,
            p.what
        ),
        Expect::Any => {}
    }
    if got != Some(VIRTIO_BLK_S_OK) {
        return;
    }
    // Data checks for successful reads and writes.
    let s = lock(shadow);
    let mut off = p.offset as usize;
    for &(a, n) in &p.segs {
        // `segs` is only kept for IN and OUT, which succeed only inside the image.
        let mut buf = vec![0u8; n as usize];
        assert!(mem.read_slice(&mut buf, GuestAddress(a)).is_ok());
        assert!(
            off + buf.len() <= s.bytes.len(),
            "OK beyond the end: {}",
            p.what
        );
        assert_eq!(
            buf,
            s.bytes[off..off + buf.len()],
            "type {} data differs from the image at {off}: {}",
            p.kind,
            p.what
        );
        off += n as usize;
    }
    if p.kind == VIRTIO_BLK_T_IN {
        assert_eq!(
            len as u64,
            1 + p.segs.iter().map(|s| u64::from(s.1)).sum::<u64>()
        );
    }
}

/// Builds a request in slot `head` (descriptors `head..`, memory at
/// `BUF_BASE + head * SLOT`), with at most one defect, and makes it available.
fn structured(
    inp: &mut Input<'_>,
    mem: &GuestMemoryMmap,
    ring: &mut SplitRing,
    head: u16,
    features: u64,
    read_only: bool,
) -> Pending {
    let base = BUF_BASE + u64::from(head % QSIZE) * SLOT;
    let kind = match inp.u8() % 8 {
        0 | 1 => VIRTIO_BLK_T_IN,
        2 | 3 => VIRTIO_BLK_T_OUT,
        4 => VIRTIO_BLK_T_FLUSH,
        5 => VIRTIO_BLK_T_GET_ID,
        6 => {
            if inp.u8() & 1 == 0 {
                VIRTIO_BLK_T_DISCARD
            } else {
                VIRTIO_BLK_T_WRITE_ZEROES
            }
        }
        _ => u32::from(inp.u8()) + 2, // sometimes known, mostly not
    };
    let defect = inp.u8();
    let defect = if defect < 160 { 0 } else { defect % 8 + 1 };
    let nsegs = usize::from(inp.u8() % 3) + 1;
    let sector_sel = inp.u8();
    let mut sector = match sector_sel % 8 {
        0 => IMAGE_SECTORS - 1,
        1 => inp.u64(),
        _ => u64::from(sector_sel) % IMAGE_SECTORS,
    };
    let fill = inp.u8();
    let write_data = !matches!(kind, VIRTIO_BLK_T_IN | VIRTIO_BLK_T_GET_ID);

    // Data segments.
    let mut segs: Vec<(u64, u32)> = Vec::new();
    let mut at = base + 0x100;
    match kind {
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
            for _ in 0..nsegs {
                let n = 512 * (u32::from(inp.u8() % 4) + 1) / if defect == 1 { 3 } else { 1 };
                segs.push((at, n));
                at += u64::from(n);
            }
        }
        VIRTIO_BLK_T_GET_ID => segs.push((at, 20)),
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            let n = inp.u8() % 3 + 1;
            let mut recs = Vec::new();
            for _ in 0..n {
                let s = u64::from(inp.u8()) % (IMAGE_SECTORS + 2);
                let num = u32::from(inp.u8() % 9);
                let flags = if kind == VIRTIO_BLK_T_WRITE_ZEROES {
                    u32::from(inp.u8() & 1)
                } else {
                    0
                };
                recs.extend_from_slice(&s.to_le_bytes());
                recs.extend_from_slice(&num.to_le_bytes());
                recs.extend_from_slice(&flags.to_le_bytes());
            }
            let _ = mem.write_slice(&recs, GuestAddress(at));
            segs.push((at, recs.len() as u32));
        }
        _ => {}
    }
    if write_data && (kind == VIRTIO_BLK_T_OUT) {
        for &(a, n) in &segs {
            let bytes: Vec<u8> = (0..n).map(|i| fill ^ (i as u8)).collect();
            let _ = mem.write_slice(&bytes, GuestAddress(a));
        }
    }
    let total: u64 = segs.iter().map(|s| u64::from(s.1)).sum();
    // Header.
    if defect == 2 {
        sector = IMAGE_SECTORS - 1; // with > 1 sector of data: beyond the end
    }
    let mut hdr = [0u8; 16];
    hdr[0..4].copy_from_slice(&kind.to_le_bytes());
    hdr[8..16].copy_from_slice(&sector.to_le_bytes());
    let _ = mem.write_slice(&hdr, GuestAddress(base));
    let status_addr = base + SLOT - 1;
    let _ = mem.write_obj(0xffu8, GuestAddress(status_addr));

    // Descriptors: header, data, status, with the defect applied.
    let mut descs: Vec<(u64, u32, bool)> = Vec::new();
    descs.push((base, if defect == 3 { 8 } else { 16 }, false));
    for (i, &(a, n)) in segs.iter().enumerate() {
        let flip = defect == 4 && i == 0;
        let a = if defect == 5 && i == 0 { RAM - 8 } else { a };
        descs.push((a, n, !write_data ^ flip));
    }
    let mut status = Some(status_addr);
    match defect {
        6 => status = None, // no status descriptor
        7 => {
            descs.push((status_addr, 1, false)); // status not writable
            status = None;
        }
        _ => descs.push((status_addr, 1, true)),
    }
    for (i, &(a, n, w)) in descs.iter().enumerate() {
        let idx = (head + i as u16) % QSIZE;
        let last = i + 1 == descs.len();
        let flags = if w { 2 } else { 0 } | if last { 0 } else { 1 };
        ring.set_desc(mem, idx, a, n, flags, (idx + 1) % QSIZE);
    }
    ring.make_available(mem, head);

    // What it must get.
    let in_range = |len: u64| {
        sector
            .checked_mul(512)
            .and_then(|o| o.checked_add(len))
            .is_some_and(|end| end <= IMAGE_BYTES)
    };
    let has_data = !segs.is_empty();
    let expect = if defect == 6 && !write_data && has_data {
        // The last byte of the (writable) data becomes the status byte.
        Expect::Any
    } else if status.is_none() || descs.len() > QSIZE as usize {
        Expect::NoStatus
    } else if defect == 3 && write_data && has_data {
        Expect::Any
    } else if defect == 3 {
        Expect::Status(VIRTIO_BLK_S_IOERR)
    } else if !matches!(
        kind,
        VIRTIO_BLK_T_IN
            | VIRTIO_BLK_T_OUT
            | VIRTIO_BLK_T_FLUSH
            | VIRTIO_BLK_T_GET_ID
            | VIRTIO_BLK_T_DISCARD
            | VIRTIO_BLK_T_WRITE_ZEROES
    ) {
        Expect::Status(VIRTIO_BLK_S_UNSUPP)
    } else if (defect == 4 || defect == 5) && has_data {
        Expect::Status(VIRTIO_BLK_S_IOERR)
    } else {
        match kind {
            VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
                if (kind == VIRTIO_BLK_T_OUT && read_only) || total % 512 != 0 || !in_range(total) {
                    Expect::Status(VIRTIO_BLK_S_IOERR)
                } else if kind == VIRTIO_BLK_T_OUT {
                    Expect::OkOrIoerr
                } else {
                    Expect::Ok
                }
            }
            VIRTIO_BLK_T_FLUSH => Expect::OkOrIoerr,
            VIRTIO_BLK_T_GET_ID => Expect::Ok,
            _ => {
                let feature = if kind == VIRTIO_BLK_T_DISCARD {
                    VIRTIO_BLK_F_DISCARD
                } else {
                    VIRTIO_BLK_F_WRITE_ZEROES
                };
                if features & feature == 0 {
                    Expect::Status(VIRTIO_BLK_S_UNSUPP)
                } else if read_only {
                    Expect::Status(VIRTIO_BLK_S_IOERR)
                } else {
                    // Ranges may be out of bounds: OK or IOERR, the shadow decides.
                    Expect::OkOrIoerr
                }
            }
        }
    };
    let segs = if matches!(kind, VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT) {
        segs
    } else {
        Vec::new()
    };
    Pending {
        expect,
        kind,
        offset: sector.wrapping_mul(512),
        segs,
        status,
        what: format!("defect {defect}, sector {sector}, descriptors {descs:x?}"),
    }
}
