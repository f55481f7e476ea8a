//! The 44-byte `virtio_vsock_hdr` (virtio 1.2 section 5.10.6), parsed and
//! checked field by field.

/// Bytes of the packet header.
pub const HDR_LEN: usize = 44;
/// The host's CID.
pub const HOST_CID: u64 = 2;
/// Lowest CID a guest may have (0, 1 and 2 are reserved; 2 is the host).
pub const MIN_GUEST_CID: u64 = 3;
/// Highest CID a guest may have: the kernel's `VMADDR_CID_ANY` (u32::MAX) is
/// reserved, and Linux 6.1 keeps CIDs in 32 bits.
pub const MAX_GUEST_CID: u64 = u32::MAX as u64 - 1;
/// `type` of a stream socket, the only one the device offers.
pub const TYPE_STREAM: u16 = 1;
/// Largest payload of one packet the device accepts from a guest (Linux's
/// `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
pub const MAX_PKT_DATA: usize = 64 << 10;

/// Shutdown flags.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

/// Packet operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Request,
    Response,
    Rst,
    Shutdown,
    Rw,
    CreditUpdate,
    CreditRequest,
}

impl Op {
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Op::Request,
            2 => Op::Response,
            3 => Op::Rst,
            4 => Op::Shutdown,
            5 => Op::Rw,
            6 => Op::CreditUpdate,
            7 => Op::CreditRequest,
            _ => return None,
        })
    }

    pub fn to_u16(self) -> u16 {
        match self {
            Op::Request => 1,
            Op::Response => 2,
            Op::Rst => 3,
            Op::Shutdown => 4,
            Op::Rw => 5,
            Op::CreditUpdate => 6,
            Op::CreditRequest => 7,
        }
    }
}

/// Why a packet from a guest is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    #[error("a packet of {0} bytes is shorter than the 44-byte header")]
    Short(usize),
    #[error("the header says {hdr} data bytes but {actual} follow it; len must be exactly the payload length")]
    BadLen { hdr: u32, actual: usize },
    #[error("a packet carries {0} data bytes, more than the {MAX_PKT_DATA} a packet may carry")]
    TooLong(usize),
    #[error("unknown operation {0}; valid ones are 1..=7")]
    UnknownOp(u16),
    #[error("socket type {0} is not supported; only stream sockets (type 1) are")]
    BadType(u16),
    #[error("operation {0:?} carries {1} data bytes; only RW packets carry data")]
    DataOnControl(Op, u32),
    #[error("source CID {got} is not the guest's CID {want}")]
    WrongSrcCid { got: u64, want: u64 },
}

/// A parsed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: Op,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

/// A payload length for a header's `len` field. Payloads are at most
/// [`MAX_PKT_DATA`] bytes ([`Header::parse`] refuses longer guest packets, and
/// the host cuts its data to that), so this is exact; a longer payload (a
/// bug) would be announced as `u32::MAX`, which the receivers' length checks
/// refuse, rather than as a truncated length.
pub fn len_field(data_len: usize) -> u32 {
    u32::try_from(data_len).unwrap_or(u32::MAX)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

impl Header {
    /// A stream header with every count 0.
    pub fn new(op: Op, src: (u64, u32), dst: (u64, u32)) -> Self {
        Header {
            src_cid: src.0,
            dst_cid: dst.0,
            src_port: src.1,
            dst_port: dst.1,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        }
    }

    /// The header answering `self` with `op`: addresses swapped.
    pub fn reply(&self, op: Op) -> Self {
        Header::new(
            op,
            (self.dst_cid, self.dst_port),
            (self.src_cid, self.src_port),
        )
    }

    /// Parses and checks a whole packet (header and `total - 44` data bytes)
    /// sent by the guest whose CID is `guest_cid`.
    pub fn parse(bytes: &[u8], guest_cid: u64) -> Result<Self, PacketError> {
        if bytes.len() < HDR_LEN {
            return Err(PacketError::Short(bytes.len()));
        }
        let mut c = [0u8; 8];
        c.copy_from_slice(&bytes[0..8]);
        let src_cid = u64::from_le_bytes(c);
        c.copy_from_slice(&bytes[8..16]);
        let dst_cid = u64::from_le_bytes(c);
        let len = u32_at(bytes, 24);
        let type_ = u16::from_le_bytes([bytes[28], bytes[29]]);
        let op_raw = u16::from_le_bytes([bytes[30], bytes[31]]);
        let actual = bytes.len() - HDR_LEN;
        if actual > MAX_PKT_DATA {
            return Err(PacketError::TooLong(actual));
        }
        if len as usize != actual {
            return Err(PacketError::BadLen { hdr: len, actual });
        }
        let op = Op::from_u16(op_raw).ok_or(PacketError::UnknownOp(op_raw))?;
        if type_ != TYPE_STREAM {
            return Err(PacketError::BadType(type_));
        }
        if op != Op::Rw && len != 0 {
            return Err(PacketError::DataOnControl(op, len));
        }
        if src_cid != guest_cid {
            return Err(PacketError::WrongSrcCid {
                got: src_cid,
                want: guest_cid,
            });
        }
        Ok(Header {
            src_cid,
            dst_cid,
            src_port: u32_at(bytes, 16),
            dst_port: u32_at(bytes, 20),
            len,
            type_,
            op,
            flags: u32_at(bytes, 32),
            buf_alloc: u32_at(bytes, 36),
            fwd_cnt: u32_at(bytes, 40),
        })
    }

    pub fn encode(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_u16().to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// A header and its payload (empty unless RW).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub hdr: Header,
    pub data: Vec<u8>,
}

impl Packet {
    pub fn control(hdr: Header) -> Self {
        Packet {
            hdr,
            data: Vec::new(),
        }
    }

    /// Splits off the first `max` data bytes of an RW packet as a packet of
    /// its own (same header, `len` adjusted); `None` when it fits whole.
    pub fn split_front(&mut self, max: usize) -> Option<Packet> {
        if self.hdr.op != Op::Rw || self.data.len() <= max {
            return None;
        }
        let rest = self.data.split_off(max);
        let front = std::mem::replace(&mut self.data, rest);
        self.hdr.len = len_field(self.data.len());
        let mut hdr = self.hdr;
        hdr.len = len_field(front.len());
        Some(Packet { hdr, data: front })
    }
}
