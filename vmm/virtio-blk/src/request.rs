//! Parsing and validating virtio-blk requests (virtio 1.2 section 5.2.6).
//!
//! A request is one descriptor chain:
//!
//! ```text
//! le32 type; le32 reserved; le64 sector;   device-readable header (16 bytes)
//! u8 data[];                               readable (OUT, DISCARD, WRITE_ZEROES)
//!                                          or writable (IN, GET_ID)
//! u8 status;                               last byte, device-writable
//! ```
//!
//! The framing into descriptors is free (VIRTIO_F_VERSION_1 implies any
//! layout): the header may share a descriptor with data, the status byte is
//! the last byte of the last writable descriptor. Everything here treats the
//! driver as hostile. A chain is first reduced to plain [`Desc`] records
//! (bounded in number), then [`parse`] checks the direction order, the header,
//! every buffer against guest memory and the segment limits, and
//! [`Request::check`] checks the request against the disk (range, alignment,
//! read-only, negotiated features). Nothing is read from or written to the
//! image before both succeeded.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::image::SECTOR_SIZE;

/// Request types (virtio 1.2 section 5.2.6).
pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;

/// Status values.
pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Size of the request header.
pub const HEADER_LEN: u32 = 16;
/// Size of one DISCARD / WRITE_ZEROES range record.
pub const RANGE_LEN: u32 = 16;
/// The `unmap` flag of a WRITE_ZEROES range.
pub const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP: u32 = 1;
/// Length of the GET_ID answer.
pub const ID_BYTES: usize = 20;

/// One descriptor as the guest wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    /// Device-writable.
    pub write: bool,
}

/// A validated piece of guest memory (inside guest RAM, non-empty).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// What kind of request a chain carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    In,
    Out,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
}

impl Kind {
    fn from_type(t: u32) -> Option<Self> {
        Some(match t {
            VIRTIO_BLK_T_IN => Kind::In,
            VIRTIO_BLK_T_OUT => Kind::Out,
            VIRTIO_BLK_T_FLUSH => Kind::Flush,
            VIRTIO_BLK_T_GET_ID => Kind::GetId,
            VIRTIO_BLK_T_DISCARD => Kind::Discard,
            VIRTIO_BLK_T_WRITE_ZEROES => Kind::WriteZeroes,
            _ => return None,
        })
    }

    /// The device writes the data buffers (IN, GET_ID).
    fn device_writes_data(self) -> bool {
        matches!(self, Kind::In | Kind::GetId)
    }

    /// The request changes the image.
    pub fn modifies(self) -> bool {
        matches!(self, Kind::Out | Kind::Discard | Kind::WriteZeroes)
    }
}

/// Limits the device announced in its configuration space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most data segments per request (`seg_max`).
    pub seg_max: u32,
    /// Largest data segment in bytes (`size_max`).
    pub size_max: u32,
    /// Most ranges in one DISCARD / WRITE_ZEROES request.
    pub max_ranges: u32,
    /// Most sectors in one DISCARD range (`max_discard_sectors`).
    pub max_discard_sectors: u32,
    /// Most sectors in one WRITE_ZEROES range (`max_write_zeroes_sectors`).
    pub max_write_zeroes_sectors: u32,
}

/// What the request is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskState {
    /// Capacity in bytes (a multiple of 512).
    pub size: u64,
    pub read_only: bool,
    /// VIRTIO_BLK_F_DISCARD / F_WRITE_ZEROES were negotiated.
    pub discard: bool,
    pub write_zeroes: bool,
}

/// Why a request is refused. [`RequestError::status`] says what the driver
/// is told.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("the chain has no device-writable status byte at its end (empty, broken or looping chain, or the last buffer is device-readable or outside guest memory); it is returned with length 0")]
    NoStatus,
    #[error("the chain has more than {max} descriptors; the driver must respect seg_max")]
    TooManyDescriptors { max: usize },
    #[error("a device-readable descriptor follows a device-writable one; the header and out-data must come before in-data and status")]
    WrongOrder,
    #[error("the device-readable part is {0} bytes, shorter than the 16-byte request header")]
    HeaderTooShort(u64),
    #[error("buffer at {addr:#x} (+{len:#x}) is outside guest memory")]
    BadAddress { addr: u64, len: u32 },
    #[error("unknown request type {0}")]
    Unsupported(u32),
    #[error("request type {0} needs a feature the driver did not negotiate")]
    NotNegotiated(u32),
    #[error("{kind:?} request has data buffers the device would have to {wrong}; check the descriptor directions")]
    WrongDirection { kind: Kind, wrong: &'static str },
    #[error("request has {got} data segments, more than seg_max {max}")]
    TooManySegments { got: usize, max: u32 },
    #[error("data segment of {got} bytes exceeds size_max {max}")]
    SegmentTooLarge { got: u32, max: u32 },
    #[error("data length {0} is not a multiple of 512")]
    Unaligned(u64),
    #[error("sectors {sector}+{bytes} bytes are beyond the end of the {size}-byte disk")]
    OutOfRange { sector: u64, bytes: u64, size: u64 },
    #[error("{0:?} request on a read-only disk")]
    ReadOnly(Kind),
    #[error("discard/write-zeroes data is {0} bytes, not a whole number of 16-byte ranges")]
    BadRanges(u64),
    #[error("{got} discard/write-zeroes ranges, more than the {max} announced")]
    TooManyRanges { got: u64, max: u32 },
    #[error("range of {got} sectors exceeds the {max} announced")]
    RangeTooLarge { got: u32, max: u32 },
    #[error("range flags {0:#x} are not supported")]
    BadFlags(u32),
    #[error("cannot read the request from guest memory: {0}")]
    Memory(vm_memory::GuestMemoryError),
    #[error("image I/O failed: {0}")]
    Io(std::io::Error),
}

impl RequestError {
    /// The status byte for this error.
    pub fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_)
            | RequestError::NotNegotiated(_)
            | RequestError::BadFlags(_) => VIRTIO_BLK_S_UNSUPP,
            _ => VIRTIO_BLK_S_IOERR,
        }
    }
}

/// A chain refused by [`parse`]: the error, and where to put the status byte
/// if the chain has one.
#[derive(Debug)]
pub struct Rejected {
    pub error: RequestError,
    pub status: Option<GuestAddress>,
}

/// A parsed, memory-checked request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub kind: Kind,
    pub sector: u64,
    /// Data buffers in order (device-writable for IN and GET_ID, readable otherwise).
    pub data: Vec<Segment>,
    /// Total bytes of `data`.
    pub data_len: u64,
    /// The status byte.
    pub status: GuestAddress,
}

/// One DISCARD / WRITE_ZEROES range, checked against the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    /// Byte offset and length in the image.
    pub offset: u64,
    pub len: u64,
    pub unmap: bool,
}

fn checked(mem: &GuestMemoryMmap, addr: u64, len: u32) -> Result<Segment, RequestError> {
    let ok = GuestAddress(addr)
        .0
        .checked_add(u64::from(len))
        .is_some_and(|_| GuestMemoryBackend::check_range(mem, GuestAddress(addr), len as usize));
    if ok {
        Ok(Segment {
            addr: GuestAddress(addr),
            len,
        })
    } else {
        Err(RequestError::BadAddress { addr, len })
    }
}

/// Splits `descs` (in chain order) into a validated request.
///
/// `descs` must be the whole chain; a chain that was cut (broken or looping
/// descriptor table) must not be passed here (see [`RequestError::NoStatus`]).
/// `max_descriptors` bounds the chain length; the caller collects at most
/// that many descriptors plus the last one.
pub fn parse(
    mem: &GuestMemoryMmap,
    descs: &[Desc],
    total_descriptors: usize,
    limits: &Limits,
) -> Result<Request, Rejected> {
    // The status byte first: without it, nothing can be answered.
    let status = match descs.last() {
        Some(d) if d.write && d.len > 0 => {
            let addr = d.addr.checked_add(u64::from(d.len) - 1);
            match addr {
                Some(a) if GuestMemoryBackend::check_range(mem, GuestAddress(a), 1) => {
                    GuestAddress(a)
                }
                _ => {
                    return Err(Rejected {
                        error: RequestError::NoStatus,
                        status: None,
                    })
                }
            }
        }
        _ => {
            return Err(Rejected {
                error: RequestError::NoStatus,
                status: None,
            })
        }
    };
    let reject = |error| Rejected {
        error,
        status: Some(status),
    };
    let max_descriptors = max_descriptors(limits);
    if total_descriptors > max_descriptors || descs.len() > max_descriptors {
        return Err(reject(RequestError::TooManyDescriptors {
            max: max_descriptors,
        }));
    }
    if let Some(i) = descs.iter().position(|d| d.write) {
        if descs[i..].iter().any(|d| !d.write) {
            return Err(reject(RequestError::WrongOrder));
        }
    }
    // Readable bytes: header, then out-data. Writable bytes: in-data, then status.
    let readable: Vec<Desc> = descs
        .iter()
        .copied()
        .filter(|d| !d.write && d.len > 0)
        .collect();
    let mut writable: Vec<Desc> = descs
        .iter()
        .copied()
        .filter(|d| d.write && d.len > 0)
        .collect();
    if let Some(last) = writable.last_mut() {
        last.len -= 1; // the status byte
        if last.len == 0 {
            writable.pop();
        }
    }
    let readable_len: u64 = readable.iter().map(|d| u64::from(d.len)).sum();
    if readable_len < u64::from(HEADER_LEN) {
        return Err(reject(RequestError::HeaderTooShort(readable_len)));
    }

    // The header, possibly split across descriptors.
    let mut header = [0u8; HEADER_LEN as usize];
    let mut filled = 0u32;
    let mut out_data = Vec::new();
    for d in &readable {
        let take = (HEADER_LEN - filled).min(d.len);
        if take > 0 {
            let seg = checked(mem, d.addr, take).map_err(reject)?;
            mem.read_slice(
                &mut header[filled as usize..(filled + take) as usize],
                seg.addr,
            )
            .map_err(|e| reject(RequestError::Memory(e)))?;
            filled += take;
        }
        let rest = d.len - take;
        if rest > 0 {
            out_data.push((d.addr.wrapping_add(u64::from(take)), rest));
        }
    }
    let req_type = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let sector = u64::from_le_bytes([
        header[8], header[9], header[10], header[11], header[12], header[13], header[14],
        header[15],
    ]);
    let kind =
        Kind::from_type(req_type).ok_or_else(|| reject(RequestError::Unsupported(req_type)))?;

    let in_data: Vec<(u64, u32)> = writable.iter().map(|d| (d.addr, d.len)).collect();
    let (data, wrong) = if kind.device_writes_data() {
        (in_data, (!out_data.is_empty()).then_some("read"))
    } else {
        (out_data, (!in_data.is_empty()).then_some("write"))
    };
    if let Some(wrong) = wrong {
        return Err(reject(RequestError::WrongDirection { kind, wrong }));
    }
    if kind == Kind::Flush && !data.is_empty() {
        return Err(reject(RequestError::WrongDirection {
            kind,
            wrong: "read",
        }));
    }
    if data.len() > limits.seg_max as usize {
        return Err(reject(RequestError::TooManySegments {
            got: data.len(),
            max: limits.seg_max,
        }));
    }
    let mut segments = Vec::with_capacity(data.len());
    let mut data_len = 0u64;
    for (addr, len) in data {
        if len > limits.size_max {
            return Err(reject(RequestError::SegmentTooLarge {
                got: len,
                max: limits.size_max,
            }));
        }
        segments.push(checked(mem, addr, len).map_err(reject)?);
        data_len += u64::from(len);
    }
    Ok(Request {
        kind,
        sector,
        data: segments,
        data_len,
        status,
    })
}

/// Most descriptors of one chain: header, `seg_max` data segments, status.
pub fn max_descriptors(limits: &Limits) -> usize {
    limits.seg_max as usize + 2
}

impl Request {
    /// Checks the request against the disk: negotiated features, read-only,
    /// alignment and range. For DISCARD / WRITE_ZEROES it reads and checks the
    /// range records (at most `limits.max_ranges`) and returns them.
    pub fn check(
        &self,
        mem: &GuestMemoryMmap,
        disk: &DiskState,
        limits: &Limits,
    ) -> Result<Vec<Range>, RequestError> {
        let negotiated = match self.kind {
            Kind::Discard => disk.discard,
            Kind::WriteZeroes => disk.write_zeroes,
            _ => true,
        };
        if !negotiated {
            let t = match self.kind {
                Kind::Discard => VIRTIO_BLK_T_DISCARD,
                _ => VIRTIO_BLK_T_WRITE_ZEROES,
            };
            return Err(RequestError::NotNegotiated(t));
        }
        if disk.read_only && self.kind.modifies() {
            return Err(RequestError::ReadOnly(self.kind));
        }
        match self.kind {
            Kind::In | Kind::Out => {
                if self.data_len % SECTOR_SIZE != 0 {
                    return Err(RequestError::Unaligned(self.data_len));
                }
                check_range(self.sector, self.data_len, disk.size)?;
                Ok(Vec::new())
            }
            Kind::Flush | Kind::GetId => Ok(Vec::new()),
            Kind::Discard | Kind::WriteZeroes => self.ranges(mem, disk, limits),
        }
    }

    fn ranges(
        &self,
        mem: &GuestMemoryMmap,
        disk: &DiskState,
        limits: &Limits,
    ) -> Result<Vec<Range>, RequestError> {
        if self.data_len == 0 || self.data_len % u64::from(RANGE_LEN) != 0 {
            return Err(RequestError::BadRanges(self.data_len));
        }
        let count = self.data_len / u64::from(RANGE_LEN);
        if count > u64::from(limits.max_ranges) {
            return Err(RequestError::TooManyRanges {
                got: count,
                max: limits.max_ranges,
            });
        }
        // At most max_ranges * 16 bytes: bounded by the device's own limit.
        let raw_len =
            usize::try_from(self.data_len).map_err(|_| RequestError::BadRanges(self.data_len))?;
        let mut raw = vec![0u8; raw_len];
        let mut off = 0usize;
        for seg in &self.data {
            let n = seg.len as usize;
            mem.read_slice(&mut raw[off..off + n], seg.addr)
                .map_err(RequestError::Memory)?;
            off += n;
        }
        let (max_sectors, allowed_flags) = match self.kind {
            Kind::Discard => (limits.max_discard_sectors, 0),
            _ => (
                limits.max_write_zeroes_sectors,
                VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
            ),
        };
        let mut ranges = Vec::with_capacity(raw_len / RANGE_LEN as usize);
        for rec in raw.chunks_exact(RANGE_LEN as usize) {
            let mut s = [0u8; 8];
            s.copy_from_slice(&rec[0..8]);
            let sector = u64::from_le_bytes(s);
            let num = u32::from_le_bytes([rec[8], rec[9], rec[10], rec[11]]);
            let flags = u32::from_le_bytes([rec[12], rec[13], rec[14], rec[15]]);
            // Discard with UNMAP, or any unknown flag: UNSUPP (virtio 1.2 5.2.6.2).
            if flags & !allowed_flags != 0 {
                return Err(RequestError::BadFlags(flags));
            }
            if num > max_sectors {
                return Err(RequestError::RangeTooLarge {
                    got: num,
                    max: max_sectors,
                });
            }
            let len = u64::from(num) * SECTOR_SIZE;
            let offset = check_range(sector, len, disk.size)?;
            ranges.push(Range {
                offset,
                len,
                unmap: flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
            });
        }
        Ok(ranges)
    }
}

/// Byte offset of `sector` if `sector * 512 + bytes` stays within `size`.
pub fn check_range(sector: u64, bytes: u64, size: u64) -> Result<u64, RequestError> {
    sector
        .checked_mul(SECTOR_SIZE)
        .and_then(|off| off.checked_add(bytes).map(|end| (off, end)))
        .filter(|(_, end)| *end <= size)
        .map(|(off, _)| off)
        .ok_or(RequestError::OutOfRange {
            sector,
            bytes,
            size,
        })
}
