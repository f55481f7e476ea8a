//! The virtio-blk device model: feature bits, configuration space, and the
//! request queue.

use std::sync::Arc;

use log::{debug, warn};
use virtio_mmio_transport::avail::{ask_for_reset, next_available};
use virtio_mmio_transport::{
    signal_used, ActivateContext, ActivateError, VirtioDevice, VirtioInterrupt,
    VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryMmap};

use crate::image::{DiskBackend, DiskImage, SECTOR_SIZE};
use crate::request::{
    self, Desc, DiskState, Kind, Limits, Range, Rejected, Request, RequestError, ID_BYTES,
    VIRTIO_BLK_S_OK,
};

/// Virtio device ID of the block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;
/// Size of the single request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most data segments per request. With the header and the status byte a
/// chain then fits in the queue without indirect descriptors.
pub const SEG_MAX: u32 = 126;
/// Largest data segment (1 MiB).
pub const SIZE_MAX: u32 = 1 << 20;
/// Logical block size announced to the driver.
pub const BLK_SIZE: u32 = 512;
/// Most sectors in one DISCARD / WRITE_ZEROES range (2 GiB).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
/// Most ranges in one DISCARD / WRITE_ZEROES request.
pub const MAX_DISCARD_SEG: u32 = 32;
/// Discard granularity in sectors (4 KiB: the host's file-system block).
pub const DISCARD_SECTOR_ALIGNMENT: u32 = 8;

/// Feature bits (virtio 1.2 section 5.2.3).
pub const VIRTIO_BLK_F_SIZE_MAX: u64 = 1 << 1;
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
pub const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
pub const VIRTIO_BLK_F_DISCARD: u64 = 1 << 13;
pub const VIRTIO_BLK_F_WRITE_ZEROES: u64 = 1 << 14;
/// The limits the configuration space announces and every request is held to.
/// (GET_ID has no feature bit in virtio 1.2: a driver may always send it.)
pub const LIMITS: Limits = Limits {
    seg_max: SEG_MAX,
    size_max: SIZE_MAX,
    max_ranges: MAX_DISCARD_SEG,
    max_discard_sectors: MAX_DISCARD_SECTORS,
    max_write_zeroes_sectors: MAX_DISCARD_SECTORS,
};

/// Bytes of configuration space the device fills (up to and including
/// `write_zeroes_may_unmap` and its padding).
pub const CONFIG_LEN: usize = 60;

const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];

/// Guest-triggered warnings logged at warn level per device; later ones go to
/// debug level, so a hostile driver cannot flood the host's log.
const MAX_GUEST_WARNINGS: u64 = 32;

macro_rules! guest_warn {
    ($self:ident, $($arg:tt)+) => {{
        $self.guest_warnings += 1;
        if $self.guest_warnings <= MAX_GUEST_WARNINGS {
            warn!($($arg)+);
        } else {
            if $self.guest_warnings == MAX_GUEST_WARNINGS + 1 {
                warn!("virtio-blk: too many guest-triggered warnings; further ones are logged at debug level");
            }
            debug!($($arg)+);
        }
    }};
}

/// Errors of creating the block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("disk serial {0:?} is longer than 20 bytes; use a shorter serial")]
    SerialTooLong(String),
    #[error("disk serial {0:?} has a NUL or control character; use printable ASCII")]
    BadSerial(String),
    #[error("disk size {0} is not a non-zero multiple of 512 bytes")]
    BadSize(u64),
    #[error("virtqueue error: {0:?}")]
    Queue(virtio_queue::Error),
}

/// Checks a disk serial: at most 20 bytes of printable ASCII.
pub fn check_serial(serial: &str) -> Result<[u8; ID_BYTES], BlockError> {
    if serial.len() > ID_BYTES {
        return Err(BlockError::SerialTooLong(serial.to_string()));
    }
    if !serial.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(BlockError::BadSerial(serial.to_string()));
    }
    let mut id = [0u8; ID_BYTES];
    id[..serial.len()].copy_from_slice(serial.as_bytes());
    Ok(id)
}

/// Counters, for tests and diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockStats {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub discards: u64,
    pub write_zeroes: u64,
    pub get_ids: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Requests answered with IOERR or UNSUPP.
    pub errors: u64,
    /// Chains returned with length 0 (no status byte).
    pub rejected: u64,
}

struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<dyn VirtioInterrupt>,
    /// The driver negotiated FLUSH: the write cache is write-back. Without it
    /// every write is synced before it completes (write-through).
    flush_negotiated: bool,
    disk: DiskState,
}

/// The virtio-blk device model.
pub struct Block {
    backend: Box<dyn DiskBackend>,
    size: u64,
    read_only: bool,
    id: [u8; ID_BYTES],
    features: u64,
    config: [u8; CONFIG_LEN],
    active: Option<Active>,
    stats: BlockStats,
    guest_warnings: u64,
}

impl Block {
    /// A block device on an opened image; `serial` (at most 20 bytes) is what
    /// GET_ID returns (all zeroes without one).
    pub fn new(image: DiskImage, serial: Option<&str>) -> Result<Self, BlockError> {
        let (size, read_only) = (image.size(), image.read_only());
        Self::with_backend(Box::new(image), size, read_only, serial)
    }

    /// A block device on any backend of `size` bytes (tests, fault injection).
    pub fn with_backend(
        backend: Box<dyn DiskBackend>,
        size: u64,
        read_only: bool,
        serial: Option<&str>,
    ) -> Result<Self, BlockError> {
        if size == 0 || size % SECTOR_SIZE != 0 {
            return Err(BlockError::BadSize(size));
        }
        let id = match serial {
            Some(s) => check_serial(s)?,
            None => [0; ID_BYTES],
        };
        let mut features = VIRTIO_F_VERSION_1
            | VIRTIO_F_RING_EVENT_IDX
            | VIRTIO_BLK_F_SIZE_MAX
            | VIRTIO_BLK_F_SEG_MAX
            | VIRTIO_BLK_F_BLK_SIZE
            | VIRTIO_BLK_F_FLUSH;
        if read_only {
            features |= VIRTIO_BLK_F_RO;
        } else {
            features |= VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES;
        }
        Ok(Self {
            backend,
            size,
            read_only,
            id,
            features,
            config: build_config(size / SECTOR_SIZE),
            active: None,
            stats: BlockStats::default(),
            guest_warnings: 0,
        })
    }

    pub fn stats(&self) -> BlockStats {
        self.stats
    }

    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// Capacity in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Processes every available chain; returns whether any was used.
    fn process_queue(&mut self) -> Result<bool, BlockError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(false);
        };
        let mut used_any = false;
        active
            .queue
            .disable_notification(&active.mem)
            .map_err(BlockError::Queue)?;
        loop {
            let chain = match next_available(&mut active.queue, &active.mem) {
                Ok(Some(chain)) => chain,
                Ok(None) => break,
                Err(e) => {
                    guest_warn!(self, "virtio-blk: {e}");
                    if used_any {
                        let _ = signal_used(&mut active.queue, &active.mem, &*active.interrupt);
                    }
                    ask_for_reset(&*active.interrupt, "virtio-blk");
                    // Every request was completed synchronously: nothing is in flight.
                    self.active = None;
                    return Ok(false);
                }
            };
            let head = chain.head_index();
            let (descs, total, cut) = collect(chain, request::max_descriptors(&LIMITS));
            let outcome = if cut {
                Err(Rejected {
                    error: RequestError::NoStatus,
                    status: None,
                })
            } else {
                request::parse(&active.mem, &descs, total, &LIMITS)
            };
            let len = match outcome {
                Ok(req) => {
                    let (status, written) = match execute(
                        &req,
                        &active.mem,
                        &active.disk,
                        active.flush_negotiated,
                        self.backend.as_mut(),
                        &self.id,
                        &mut self.stats,
                    ) {
                        Ok(written) => (VIRTIO_BLK_S_OK, written),
                        Err(e) => {
                            guest_warn!(
                                self,
                                "virtio-blk: request {head} ({:?}, sector {}) failed: {e}",
                                req.kind,
                                req.sector
                            );
                            self.stats.errors += 1;
                            (e.status(), 0)
                        }
                    };
                    finish(&active.mem, req.status, status, written)
                }
                Err(Rejected { error, status }) => {
                    guest_warn!(self, "virtio-blk: request {head} refused: {error}");
                    match status {
                        Some(addr) => {
                            self.stats.errors += 1;
                            finish(&active.mem, addr, error.status(), 0)
                        }
                        None => {
                            self.stats.rejected += 1;
                            0
                        }
                    }
                }
            };
            // A head outside the descriptor table cannot be returned; the
            // chain is dropped and the queue goes on.
            match active.queue.add_used(&active.mem, head, len) {
                Ok(()) => used_any = true,
                Err(e) => {
                    guest_warn!(self, "virtio-blk: request {head} cannot be returned: {e:?}")
                }
            }
        }
        Ok(used_any)
    }
}

/// Walks a chain, keeping at most `max + 1` descriptors (enough to see that it
/// is too long) and always the last one. Returns the kept descriptors, how many
/// the chain had, and whether the walk was cut (broken table or loop: the last
/// descriptor still says NEXT), in which case there is no trustworthy status.
fn collect(
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    max: usize,
) -> (Vec<Desc>, usize, bool) {
    let mut descs = Vec::with_capacity(8);
    let mut total = 0usize;
    let mut cut = true;
    for d in chain {
        total += 1;
        let desc = Desc {
            addr: d.addr().0,
            len: d.len(),
            write: d.is_write_only(),
        };
        if descs.len() <= max {
            descs.push(desc);
        } else if let Some(last) = descs.last_mut() {
            *last = desc;
        }
        cut = d.has_next();
    }
    (descs, total, cut)
}

/// Writes the status byte; returns the used length (`written` data bytes plus
/// the status byte, or 0 if even the status cannot be written).
fn finish(
    mem: &GuestMemoryMmap,
    status_addr: vm_memory::GuestAddress,
    status: u8,
    written: u32,
) -> u32 {
    match mem.write_obj(status, status_addr) {
        Ok(()) => written.saturating_add(1),
        Err(_) => 0,
    }
}

/// Runs a parsed request; returns the data bytes written into guest buffers.
fn execute(
    req: &Request,
    mem: &GuestMemoryMmap,
    disk: &DiskState,
    flush_negotiated: bool,
    backend: &mut dyn DiskBackend,
    id: &[u8; ID_BYTES],
    stats: &mut BlockStats,
) -> Result<u32, RequestError> {
    let ranges = req.check(mem, disk, &LIMITS)?;
    match req.kind {
        Kind::In => {
            let mut offset = req.sector * SECTOR_SIZE;
            for seg in &req.data {
                transfer(mem, seg, offset, |slice, off| {
                    backend.read_exact_at(slice, off)
                })?;
                offset += u64::from(seg.len);
            }
            stats.reads += 1;
            stats.bytes_read += req.data_len;
            // data_len <= seg_max * size_max < 2^32.
            Ok(u32::try_from(req.data_len).unwrap_or(u32::MAX))
        }
        Kind::Out => {
            let mut offset = req.sector * SECTOR_SIZE;
            for seg in &req.data {
                transfer(mem, seg, offset, |slice, off| {
                    backend.write_all_at(slice, off)
                })?;
                offset += u64::from(seg.len);
            }
            if !flush_negotiated {
                backend.sync_data().map_err(RequestError::Io)?;
            }
            stats.writes += 1;
            stats.bytes_written += req.data_len;
            Ok(0)
        }
        Kind::Flush => {
            backend.sync_data().map_err(RequestError::Io)?;
            stats.flushes += 1;
            Ok(0)
        }
        Kind::GetId => {
            let mut written = 0usize;
            for seg in &req.data {
                if written == ID_BYTES {
                    break;
                }
                let n = (ID_BYTES - written).min(seg.len as usize);
                mem.write_slice(&id[written..written + n], seg.addr)
                    .map_err(RequestError::Memory)?;
                written += n;
            }
            stats.get_ids += 1;
            #[allow(clippy::cast_possible_truncation)] // at most ID_BYTES (20)
            let written = written as u32;
            Ok(written)
        }
        Kind::Discard | Kind::WriteZeroes => {
            for Range { offset, len, unmap } in ranges {
                if len == 0 {
                    continue;
                }
                if req.kind == Kind::Discard {
                    backend.discard(offset, len)
                } else {
                    backend.write_zeroes(offset, len, unmap)
                }
                .map_err(RequestError::Io)?;
            }
            if !flush_negotiated {
                backend.sync_data().map_err(RequestError::Io)?;
            }
            if req.kind == Kind::Discard {
                stats.discards += 1;
            } else {
                stats.write_zeroes += 1;
            }
            Ok(0)
        }
    }
}

/// Moves one segment between guest memory and the image, piece by piece
/// across guest RAM regions, with no host buffer.
fn transfer(
    mem: &GuestMemoryMmap,
    seg: &request::Segment,
    mut offset: u64,
    mut io: impl FnMut(&crate::image::GuestSlice<'_>, u64) -> std::io::Result<()>,
) -> Result<(), RequestError> {
    for slice in GuestMemoryBackend::get_slices(mem, seg.addr, seg.len as usize) {
        let slice = slice.map_err(RequestError::Memory)?;
        io(&slice, offset).map_err(RequestError::Io)?;
        offset += slice.len() as u64;
    }
    Ok(())
}

/// The configuration space (virtio 1.2 section 5.2.4), little-endian.
fn build_config(capacity_sectors: u64) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    let mut put = |off: usize, bytes: &[u8]| c[off..off + bytes.len()].copy_from_slice(bytes);
    put(0, &capacity_sectors.to_le_bytes());
    put(8, &SIZE_MAX.to_le_bytes());
    put(12, &SEG_MAX.to_le_bytes());
    // geometry (16..20) unused: F_GEOMETRY is not offered.
    put(20, &BLK_SIZE.to_le_bytes());
    // topology (24..32) unused: F_TOPOLOGY is not offered.
    // writeback (32), num_queues (34): F_CONFIG_WCE / F_MQ are not offered.
    put(36, &MAX_DISCARD_SECTORS.to_le_bytes());
    put(40, &MAX_DISCARD_SEG.to_le_bytes());
    put(44, &DISCARD_SECTOR_ALIGNMENT.to_le_bytes());
    put(48, &MAX_DISCARD_SECTORS.to_le_bytes()); // max_write_zeroes_sectors
    put(52, &MAX_DISCARD_SEG.to_le_bytes()); // max_write_zeroes_seg
    put(56, &[1]); // write_zeroes_may_unmap
    c
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn device_features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| self.config.get(o).copied())
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // `writeback` is writable only with F_CONFIG_WCE, which is not offered.
        guest_warn!(
            self,
            "virtio-blk: {}-byte config write at {offset:#x} ignored; the configuration is read-only",
            data.len()
        );
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let mut queues = ctx.queues.into_iter();
        let (Some(queue), None) = (queues.next(), queues.next()) else {
            return Err(ActivateError::Device(
                "virtio-blk has exactly one queue".into(),
            ));
        };
        let acked = ctx.acked_features;
        self.active = Some(Active {
            mem: ctx.mem,
            queue,
            interrupt: ctx.interrupt,
            flush_negotiated: acked & VIRTIO_BLK_F_FLUSH != 0,
            disk: DiskState {
                size: self.size,
                read_only: self.read_only,
                discard: acked & VIRTIO_BLK_F_DISCARD != 0,
                write_zeroes: acked & VIRTIO_BLK_F_WRITE_ZEROES != 0,
            },
        });
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        if index != 0 {
            guest_warn!(
                self,
                "virtio-blk: notify for nonexistent queue {index} ignored"
            );
            return;
        }
        match self.process_queue() {
            Ok(false) => debug!("virtio-blk: notify with no available buffers"),
            Ok(true) => {
                let Some(active) = self.active.as_mut() else {
                    return;
                };
                if let Err(e) = signal_used(&mut active.queue, &active.mem, &*active.interrupt) {
                    warn!("virtio-blk: cannot raise the used-buffer interrupt: {e}");
                }
            }
            Err(e) => warn!("virtio-blk: queue processing stopped: {e}"),
        }
    }

    fn reset(&mut self) {
        // Every request was completed synchronously; nothing is in flight.
        self.active = None;
    }
}
