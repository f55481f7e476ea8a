//! Parsing and validation of requestq requests.
//!
//! The driver is untrusted: [`RequestHeader::parse`] and [`Request::parse`]
//! check every field the wire format constrains (exact lengths, reserved
//! fields zero, known flag bits, page alignment, non-zero sizes, no address
//! overflow, id ranges, page-count bounds). What they accept is well formed;
//! whether the ids exist and the caller may use them is for the device to
//! decide. [`WireError::status`] gives the status to answer a rejected
//! request with.

use core::mem::size_of;

use vm_memory::{ByteValued, Le64};

use crate::layout::*;
use crate::*;

/// Why a request was rejected. Each message names the offending field and
/// what the driver must send instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("request header is {actual} bytes; the driver must send exactly {expected}")]
    HeaderLength { expected: usize, actual: usize },
    #[error("request header flags are {0:#x}; no header flags are defined, send 0")]
    HeaderFlags(u32),
    #[error("request header owner is 0; the driver must send a non-zero process token")]
    ZeroOwner,
    #[error("unknown opcode {0}; valid opcodes are 1..=13")]
    UnknownOpcode(u32),
    #[error("{name} body is {actual} bytes; the driver must send exactly {expected}")]
    BodyLength {
        name: &'static str,
        expected: usize,
        actual: usize,
    },
    #[error("{field} is {value:#x}; it is reserved and must be 0")]
    ReservedNonZero { field: &'static str, value: u64 },
    #[error("{field} is {value:#x}; it must be a multiple of the 4096-byte page size")]
    Misaligned { field: &'static str, value: u64 },
    #[error("{field} is 0; it must be at least one page")]
    ZeroSize { field: &'static str },
    #[error(
        "{field} range starting at {start:#x} with length {len:#x} wraps past 2^64; shrink it"
    )]
    Overflow {
        field: &'static str,
        start: u64,
        len: u64,
    },
    #[error("{field} is {value:#x}; ids are positive 64-bit values (1..=2^63-1)")]
    InvalidId { field: &'static str, value: u64 },
    #[error("{field} has unknown bits set ({value:#x}); allowed bits are {allowed:#x}")]
    UnknownFlags {
        field: &'static str,
        value: u64,
        allowed: u64,
    },
    #[error("GET flags are {0:#x}; send exactly 1 (read-only) or 2 (read-write)")]
    BadAccess(u32),
    #[error("permit_type is {0}; the only permit type is 1 (XPMEM_PERMIT_MODE)")]
    BadPermitType(u32),
    #[error("npages is {npages}; at most {max} pages per request are allowed")]
    TooManyPages { npages: u32, max: u32 },
    #[error("RESOLVE_REPLY announces {npages} pages but carries {bytes} bytes of addresses (8 per page)")]
    PageCountMismatch { npages: u32, bytes: usize },
    #[error("RESOLVE_REPLY status {0} is not a defined status code")]
    UnknownStatus(u32),
    #[error(
        "RESOLVE_REPLY with status {status} carries {npages} pages; a failed reply must carry none"
    )]
    PagesWithError { status: u32, npages: u32 },
    #[error("name is malformed ({0}); send 1 to 63 graphic ASCII bytes (0x21..=0x7e) followed by NUL bytes up to 64")]
    BadName(&'static str),
}

impl WireError {
    /// Status the device answers the rejected request with.
    pub fn status(&self) -> Status {
        match self {
            WireError::UnknownOpcode(_) => Status::Unsupported,
            _ => Status::Invalid,
        }
    }
}

/// The validated request header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHeader {
    pub opcode: u32,
    /// Non-zero process token.
    pub owner: u64,
}

impl RequestHeader {
    /// Parses and validates a 16-byte request header (flags 0, owner non-zero).
    /// The opcode is checked by [`Request::parse`].
    pub fn parse(bytes: &[u8]) -> Result<RequestHeader, WireError> {
        let hdr: ReqHeader = read_exact(bytes).ok_or(WireError::HeaderLength {
            expected: size_of::<ReqHeader>(),
            actual: bytes.len(),
        })?;
        let flags = hdr.flags.to_native();
        if flags != 0 {
            return Err(WireError::HeaderFlags(flags));
        }
        let owner = hdr.owner.to_native();
        if owner == 0 {
            return Err(WireError::ZeroOwner);
        }
        Ok(RequestHeader {
            opcode: hdr.opcode.to_native(),
            owner,
        })
    }
}

/// A segment name (NAME, SEARCH): 1 to [`SegmentName::MAX_LEN`] graphic
/// ASCII bytes (`0x21..=0x7e`), so that it prints unambiguously in
/// `/proc/xpmem` and logs. On the wire it is NUL padded to
/// [`VIRTIO_XPMEM_NAME_SIZE`] bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentName(String);

impl SegmentName {
    /// Longest name in bytes (one byte of the wire field stays NUL).
    pub const MAX_LEN: usize = VIRTIO_XPMEM_NAME_SIZE as usize - 1;

    /// Checks `name` against the rules above.
    pub fn new(name: &str) -> Result<SegmentName, WireError> {
        if name.is_empty() {
            return Err(WireError::BadName("empty"));
        }
        if name.len() > Self::MAX_LEN {
            return Err(WireError::BadName("longer than 63 bytes"));
        }
        if !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(WireError::BadName("a byte outside 0x21..=0x7e"));
        }
        Ok(SegmentName(name.to_string()))
    }

    /// Decodes the wire field: the name, then only NUL bytes.
    pub fn from_wire(field: &WireName) -> Result<SegmentName, WireError> {
        let bytes = &field.0;
        let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        if bytes[len..].iter().any(|&b| b != 0) {
            return Err(WireError::BadName("bytes after the terminating NUL"));
        }
        if len == bytes.len() {
            return Err(WireError::BadName("no terminating NUL"));
        }
        let text =
            core::str::from_utf8(&bytes[..len]).map_err(|_| WireError::BadName("not ASCII"))?;
        SegmentName::new(text)
    }

    /// The NUL-padded wire field.
    pub fn to_wire(&self) -> WireName {
        let mut field = WireName::default();
        field.0[..self.0.len()].copy_from_slice(self.0.as_bytes());
        field
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Access mode of a permit (GET flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

/// A validated request. Addresses and sizes are in bytes; every range is
/// page aligned, non-empty and does not wrap (MAKE may instead use
/// [`VIRTIO_XPMEM_MAXADDR_SIZE`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Make {
        vaddr: u64,
        /// Page aligned and non-zero, or [`VIRTIO_XPMEM_MAXADDR_SIZE`]
        /// ("to the end of the user address space").
        size: u64,
        /// IPC mode bits, at most 0o777.
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Remove {
        segid: u64,
    },
    Get {
        segid: u64,
        access: Access,
        uid: u32,
        gid: u32,
        /// The requester holds `CAP_IPC_OWNER` in its VM
        /// ([`VIRTIO_XPMEM_GET_F_IPC_OWNER`]).
        ipc_owner: bool,
    },
    Release {
        apid: u64,
    },
    Attach {
        apid: u64,
        offset: u64,
        size: u64,
        read_only: bool,
    },
    Detach {
        attach_id: u64,
    },
    Fault {
        attach_id: u64,
        page_index: u64,
        /// 1..=[`VIRTIO_XPMEM_MAX_PAGES`]; `page_index + npages` does not wrap.
        npages: u32,
        write: bool,
    },
    ResolveReply {
        resolve_id: u64,
        status: Status,
        /// Page-aligned guest-physical addresses; empty iff `status != Ok`.
        gpas: Vec<u64>,
    },
    Invalidate {
        segid: u64,
        vaddr: u64,
        len: u64,
    },
    InvalidateAck {
        invalidation_id: u64,
    },
    ReleaseOwner,
    Name {
        segid: u64,
        name: SegmentName,
    },
    Search {
        name: SegmentName,
    },
}

fn body<T: WireLayout>(name: &'static str, bytes: &[u8]) -> Result<T, WireError> {
    read_exact(bytes).ok_or(WireError::BodyLength {
        name,
        expected: size_of::<T>(),
        actual: bytes.len(),
    })
}

fn id(field: &'static str, value: Le64) -> Result<u64, WireError> {
    let value = value.to_native();
    if is_valid_id(value) {
        Ok(value)
    } else {
        Err(WireError::InvalidId { field, value })
    }
}

fn reserved(field: &'static str, value: u64) -> Result<(), WireError> {
    if value == 0 {
        Ok(())
    } else {
        Err(WireError::ReservedNonZero { field, value })
    }
}

fn flags(field: &'static str, value: u32, allowed: u32) -> Result<(), WireError> {
    if value & !allowed == 0 {
        Ok(())
    } else {
        Err(WireError::UnknownFlags {
            field,
            value: value.into(),
            allowed: allowed.into(),
        })
    }
}

/// Validates a byte range: start and length page aligned, length non-zero,
/// end does not wrap.
fn range(
    start_field: &'static str,
    start: u64,
    len_field: &'static str,
    len: u64,
) -> Result<(), WireError> {
    if !is_page_aligned(start) {
        return Err(WireError::Misaligned {
            field: start_field,
            value: start,
        });
    }
    if len == 0 {
        return Err(WireError::ZeroSize { field: len_field });
    }
    if !is_page_aligned(len) {
        return Err(WireError::Misaligned {
            field: len_field,
            value: len,
        });
    }
    if start.checked_add(len).is_none() {
        return Err(WireError::Overflow {
            field: start_field,
            start,
            len,
        });
    }
    Ok(())
}

fn npages_bound(npages: u32) -> Result<(), WireError> {
    if npages > VIRTIO_XPMEM_MAX_PAGES {
        return Err(WireError::TooManyPages {
            npages,
            max: VIRTIO_XPMEM_MAX_PAGES,
        });
    }
    Ok(())
}

fn permit_type(value: u32) -> Result<(), WireError> {
    if value == VIRTIO_XPMEM_PERMIT_MODE {
        Ok(())
    } else {
        Err(WireError::BadPermitType(value))
    }
}

impl Request {
    /// Parses and validates the body that follows a request header with
    /// `opcode`. `body` must be exactly the body: no header, no padding.
    pub fn parse(opcode: u32, body_bytes: &[u8]) -> Result<Request, WireError> {
        match opcode {
            VIRTIO_XPMEM_REQ_MAKE => {
                let b: MakeReq = body("MAKE", body_bytes)?;
                let (vaddr, size) = (b.vaddr.to_native(), b.size.to_native());
                if size == VIRTIO_XPMEM_MAXADDR_SIZE {
                    if !is_page_aligned(vaddr) {
                        return Err(WireError::Misaligned {
                            field: "vaddr",
                            value: vaddr,
                        });
                    }
                } else {
                    range("vaddr", vaddr, "size", size)?;
                }
                permit_type(b.permit_type.to_native())?;
                let mode = b.permit_value.to_native();
                let bad_mode = || WireError::UnknownFlags {
                    field: "permit_value",
                    value: mode,
                    allowed: VIRTIO_XPMEM_PERMIT_MODE_MASK,
                };
                if mode & !VIRTIO_XPMEM_PERMIT_MODE_MASK != 0 {
                    return Err(bad_mode());
                }
                reserved("reserved", b.reserved.to_native().into())?;
                Ok(Request::Make {
                    vaddr,
                    size,
                    // Always fits: checked against the 9-bit mask above.
                    mode: u32::try_from(mode).map_err(|_| bad_mode())?,
                    uid: b.uid.to_native(),
                    gid: b.gid.to_native(),
                })
            }
            VIRTIO_XPMEM_REQ_REMOVE => {
                let b: RemoveReq = body("REMOVE", body_bytes)?;
                Ok(Request::Remove {
                    segid: id("segid", b.segid)?,
                })
            }
            VIRTIO_XPMEM_REQ_GET => {
                let b: GetReq = body("GET", body_bytes)?;
                let segid = id("segid", b.segid)?;
                let flags = b.flags.to_native();
                let access = match flags & !VIRTIO_XPMEM_GET_F_IPC_OWNER {
                    VIRTIO_XPMEM_GET_RDONLY => Access::ReadOnly,
                    VIRTIO_XPMEM_GET_RDWR => Access::ReadWrite,
                    _ => return Err(WireError::BadAccess(flags)),
                };
                permit_type(b.permit_type.to_native())?;
                reserved("permit_value", b.permit_value.to_native())?;
                Ok(Request::Get {
                    segid,
                    access,
                    uid: b.uid.to_native(),
                    gid: b.gid.to_native(),
                    ipc_owner: flags & VIRTIO_XPMEM_GET_F_IPC_OWNER != 0,
                })
            }
            VIRTIO_XPMEM_REQ_RELEASE => {
                let b: ReleaseReq = body("RELEASE", body_bytes)?;
                Ok(Request::Release {
                    apid: id("apid", b.apid)?,
                })
            }
            VIRTIO_XPMEM_REQ_ATTACH => {
                let b: AttachReq = body("ATTACH", body_bytes)?;
                let apid = id("apid", b.apid)?;
                let (offset, size) = (b.offset.to_native(), b.size.to_native());
                range("offset", offset, "size", size)?;
                let f = b.flags.to_native();
                flags("flags", f, VIRTIO_XPMEM_ATTACH_F_RDONLY)?;
                reserved("reserved", b.reserved.to_native().into())?;
                Ok(Request::Attach {
                    apid,
                    offset,
                    size,
                    read_only: f & VIRTIO_XPMEM_ATTACH_F_RDONLY != 0,
                })
            }
            VIRTIO_XPMEM_REQ_DETACH => {
                let b: DetachReq = body("DETACH", body_bytes)?;
                Ok(Request::Detach {
                    attach_id: id("attach_id", b.attach_id)?,
                })
            }
            VIRTIO_XPMEM_REQ_FAULT => {
                let b: FaultReq = body("FAULT", body_bytes)?;
                let attach_id = id("attach_id", b.attach_id)?;
                let page_index = b.page_index.to_native();
                let npages = b.npages.to_native();
                if npages == 0 {
                    return Err(WireError::ZeroSize { field: "npages" });
                }
                npages_bound(npages)?;
                if page_index.checked_add(npages.into()).is_none() {
                    return Err(WireError::Overflow {
                        field: "page_index",
                        start: page_index,
                        len: npages.into(),
                    });
                }
                let f = b.flags.to_native();
                flags("flags", f, VIRTIO_XPMEM_FAULT_F_WRITE)?;
                Ok(Request::Fault {
                    attach_id,
                    page_index,
                    npages,
                    write: f & VIRTIO_XPMEM_FAULT_F_WRITE != 0,
                })
            }
            VIRTIO_XPMEM_REQ_RESOLVE_REPLY => {
                let fixed = size_of::<ResolveReplyReq>();
                if body_bytes.len() < fixed {
                    return Err(WireError::BodyLength {
                        name: "RESOLVE_REPLY",
                        expected: fixed,
                        actual: body_bytes.len(),
                    });
                }
                let (head, tail) = body_bytes.split_at(fixed);
                let b: ResolveReplyReq = body("RESOLVE_REPLY", head)?;
                let resolve_id = id("resolve_id", b.resolve_id)?;
                let npages = b.npages.to_native();
                npages_bound(npages)?;
                // npages <= 512, so this cannot overflow.
                if tail.len() != npages as usize * size_of::<u64>() {
                    return Err(WireError::PageCountMismatch {
                        npages,
                        bytes: tail.len(),
                    });
                }
                let raw_status = b.status.to_native();
                let status =
                    Status::from_u32(raw_status).ok_or(WireError::UnknownStatus(raw_status))?;
                if status == Status::Ok && npages == 0 {
                    return Err(WireError::ZeroSize { field: "npages" });
                }
                if status != Status::Ok && npages != 0 {
                    return Err(WireError::PagesWithError {
                        status: raw_status,
                        npages,
                    });
                }
                let mut gpas = Vec::with_capacity(npages as usize);
                for chunk in tail.chunks_exact(size_of::<u64>()) {
                    let mut raw = [0u8; 8];
                    raw.copy_from_slice(chunk);
                    let gpa = u64::from_le_bytes(raw);
                    if !is_page_aligned(gpa) {
                        return Err(WireError::Misaligned {
                            field: "gpa",
                            value: gpa,
                        });
                    }
                    gpas.push(gpa);
                }
                Ok(Request::ResolveReply {
                    resolve_id,
                    status,
                    gpas,
                })
            }
            VIRTIO_XPMEM_REQ_INVALIDATE => {
                let b: InvalidateReq = body("INVALIDATE", body_bytes)?;
                let segid = id("segid", b.segid)?;
                let (vaddr, len) = (b.vaddr.to_native(), b.len.to_native());
                range("vaddr", vaddr, "len", len)?;
                Ok(Request::Invalidate { segid, vaddr, len })
            }
            VIRTIO_XPMEM_REQ_INVALIDATE_ACK => {
                let b: InvalidateAckReq = body("INVALIDATE_ACK", body_bytes)?;
                Ok(Request::InvalidateAck {
                    invalidation_id: id("invalidation_id", b.invalidation_id)?,
                })
            }
            VIRTIO_XPMEM_REQ_RELEASE_OWNER => {
                if !body_bytes.is_empty() {
                    return Err(WireError::BodyLength {
                        name: "RELEASE_OWNER",
                        expected: 0,
                        actual: body_bytes.len(),
                    });
                }
                Ok(Request::ReleaseOwner)
            }
            VIRTIO_XPMEM_REQ_NAME => {
                let b: NameReq = body("NAME", body_bytes)?;
                Ok(Request::Name {
                    segid: id("segid", b.segid)?,
                    name: SegmentName::from_wire(&b.name)?,
                })
            }
            VIRTIO_XPMEM_REQ_SEARCH => {
                let b: SearchReq = body("SEARCH", body_bytes)?;
                Ok(Request::Search {
                    name: SegmentName::from_wire(&b.name)?,
                })
            }
            other => Err(WireError::UnknownOpcode(other)),
        }
    }

    /// The opcode of this request.
    pub fn opcode(&self) -> u32 {
        match self {
            Request::Make { .. } => VIRTIO_XPMEM_REQ_MAKE,
            Request::Remove { .. } => VIRTIO_XPMEM_REQ_REMOVE,
            Request::Get { .. } => VIRTIO_XPMEM_REQ_GET,
            Request::Release { .. } => VIRTIO_XPMEM_REQ_RELEASE,
            Request::Attach { .. } => VIRTIO_XPMEM_REQ_ATTACH,
            Request::Detach { .. } => VIRTIO_XPMEM_REQ_DETACH,
            Request::Fault { .. } => VIRTIO_XPMEM_REQ_FAULT,
            Request::ResolveReply { .. } => VIRTIO_XPMEM_REQ_RESOLVE_REPLY,
            Request::Invalidate { .. } => VIRTIO_XPMEM_REQ_INVALIDATE,
            Request::InvalidateAck { .. } => VIRTIO_XPMEM_REQ_INVALIDATE_ACK,
            Request::ReleaseOwner => VIRTIO_XPMEM_REQ_RELEASE_OWNER,
            Request::Name { .. } => VIRTIO_XPMEM_REQ_NAME,
            Request::Search { .. } => VIRTIO_XPMEM_REQ_SEARCH,
        }
    }
}

/// Parses a complete device-readable part (header followed by body), as
/// gathered from a descriptor chain.
pub fn parse_request(readable: &[u8]) -> Result<(RequestHeader, Request), WireError> {
    let hlen = size_of::<ReqHeader>();
    if readable.len() < hlen {
        return Err(WireError::HeaderLength {
            expected: hlen,
            actual: readable.len(),
        });
    }
    let (head, body) = readable.split_at(hlen);
    let header = RequestHeader::parse(head)?;
    let request = Request::parse(header.opcode, body)?;
    Ok((header, request))
}

impl Request {
    /// Encodes this request with a header carrying `owner` (device-readable
    /// part of a chain). Used by tests and mock drivers; the encoding of a
    /// valid request parses back to the same value.
    pub fn to_bytes(&self, owner: u64) -> Vec<u8> {
        let header = ReqHeader {
            opcode: self.opcode().into(),
            flags: 0.into(),
            owner: owner.into(),
        };
        let mut out = header.as_slice().to_vec();
        match self {
            Request::Make {
                vaddr,
                size,
                mode,
                uid,
                gid,
            } => out.extend_from_slice(
                MakeReq {
                    vaddr: (*vaddr).into(),
                    size: (*size).into(),
                    permit_type: VIRTIO_XPMEM_PERMIT_MODE.into(),
                    uid: (*uid).into(),
                    permit_value: u64::from(*mode).into(),
                    gid: (*gid).into(),
                    reserved: 0.into(),
                }
                .as_slice(),
            ),
            Request::Remove { segid } => out.extend_from_slice(
                RemoveReq {
                    segid: (*segid).into(),
                }
                .as_slice(),
            ),
            Request::Get {
                segid,
                access,
                uid,
                gid,
                ipc_owner,
            } => out.extend_from_slice(
                GetReq {
                    segid: (*segid).into(),
                    flags: (match access {
                        Access::ReadOnly => VIRTIO_XPMEM_GET_RDONLY,
                        Access::ReadWrite => VIRTIO_XPMEM_GET_RDWR,
                    } | if *ipc_owner {
                        VIRTIO_XPMEM_GET_F_IPC_OWNER
                    } else {
                        0
                    })
                    .into(),
                    permit_type: VIRTIO_XPMEM_PERMIT_MODE.into(),
                    permit_value: 0.into(),
                    uid: (*uid).into(),
                    gid: (*gid).into(),
                }
                .as_slice(),
            ),
            Request::Release { apid } => out.extend_from_slice(
                ReleaseReq {
                    apid: (*apid).into(),
                }
                .as_slice(),
            ),
            Request::Attach {
                apid,
                offset,
                size,
                read_only,
            } => out.extend_from_slice(
                AttachReq {
                    apid: (*apid).into(),
                    offset: (*offset).into(),
                    size: (*size).into(),
                    flags: if *read_only {
                        VIRTIO_XPMEM_ATTACH_F_RDONLY
                    } else {
                        0
                    }
                    .into(),
                    reserved: 0.into(),
                }
                .as_slice(),
            ),
            Request::Detach { attach_id } => out.extend_from_slice(
                DetachReq {
                    attach_id: (*attach_id).into(),
                }
                .as_slice(),
            ),
            Request::Fault {
                attach_id,
                page_index,
                npages,
                write,
            } => out.extend_from_slice(
                FaultReq {
                    attach_id: (*attach_id).into(),
                    page_index: (*page_index).into(),
                    npages: (*npages).into(),
                    flags: if *write {
                        VIRTIO_XPMEM_FAULT_F_WRITE
                    } else {
                        0
                    }
                    .into(),
                }
                .as_slice(),
            ),
            Request::ResolveReply {
                resolve_id,
                status,
                gpas,
            } => {
                let npages = u32::try_from(gpas.len()).unwrap_or(u32::MAX);
                out.extend_from_slice(
                    ResolveReplyReq {
                        resolve_id: (*resolve_id).into(),
                        npages: npages.into(),
                        status: (*status as u32).into(),
                    }
                    .as_slice(),
                );
                for gpa in gpas {
                    out.extend_from_slice(&gpa.to_le_bytes());
                }
            }
            Request::Invalidate { segid, vaddr, len } => out.extend_from_slice(
                InvalidateReq {
                    segid: (*segid).into(),
                    vaddr: (*vaddr).into(),
                    len: (*len).into(),
                }
                .as_slice(),
            ),
            Request::InvalidateAck { invalidation_id } => out.extend_from_slice(
                InvalidateAckReq {
                    invalidation_id: (*invalidation_id).into(),
                }
                .as_slice(),
            ),
            Request::ReleaseOwner => {}
            Request::Name { segid, name } => out.extend_from_slice(
                NameReq {
                    segid: (*segid).into(),
                    name: name.to_wire(),
                }
                .as_slice(),
            ),
            Request::Search { name } => out.extend_from_slice(
                SearchReq {
                    name: name.to_wire(),
                }
                .as_slice(),
            ),
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;

    const OWNER: u64 = 0x1234;
    const SEGID: u64 = (3 << 48) | 0x00ab_cdef;

    fn valid_requests() -> Vec<Request> {
        vec![
            Request::Make {
                vaddr: 0x7f00_0000_0000,
                size: 16 * 4096,
                mode: 0o640,
                uid: 1000,
                gid: 100,
            },
            Request::Remove { segid: SEGID },
            Request::Get {
                segid: SEGID,
                access: Access::ReadWrite,
                uid: 1000,
                gid: 100,
                ipc_owner: false,
            },
            Request::Get {
                segid: SEGID,
                access: Access::ReadOnly,
                uid: 0,
                gid: 0,
                ipc_owner: true,
            },
            Request::Release { apid: 7 },
            Request::Attach {
                apid: 7,
                offset: 0x1000,
                size: 0x20000,
                read_only: true,
            },
            Request::Detach { attach_id: 9 },
            Request::Fault {
                attach_id: 9,
                page_index: 3,
                npages: 16,
                write: true,
            },
            Request::ResolveReply {
                resolve_id: 5,
                status: Status::Ok,
                gpas: vec![0x10_0000, 0x10_1000, 0x20_0000],
            },
            Request::ResolveReply {
                resolve_id: 5,
                status: Status::Fault,
                gpas: vec![],
            },
            Request::Invalidate {
                segid: SEGID,
                vaddr: 0x7f00_0000_1000,
                len: 0x1000,
            },
            Request::InvalidateAck {
                invalidation_id: 11,
            },
            Request::ReleaseOwner,
            Request::Name {
                segid: SEGID,
                name: SegmentName::new("ring-0").unwrap(),
            },
            Request::Search {
                name: SegmentName::new(&"n".repeat(SegmentName::MAX_LEN)).unwrap(),
            },
        ]
    }

    /// Encodes a request, lets `edit` corrupt the body, and parses it.
    fn parse_edited(req: &Request, edit: impl FnOnce(&mut Vec<u8>)) -> Result<Request, WireError> {
        let bytes = req.to_bytes(OWNER);
        let mut body = bytes[size_of::<ReqHeader>()..].to_vec();
        edit(&mut body);
        Request::parse(req.opcode(), &body)
    }

    fn put_u32(body: &mut [u8], at: usize, v: u32) {
        body[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn put_u64(body: &mut [u8], at: usize, v: u64) {
        body[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    fn make() -> Request {
        valid_requests()[0].clone()
    }

    #[test]
    fn valid_requests_round_trip() {
        for req in valid_requests() {
            let bytes = req.to_bytes(OWNER);
            let (hdr, parsed) = parse_request(&bytes).unwrap();
            assert_eq!(hdr.owner, OWNER);
            assert_eq!(hdr.opcode, req.opcode());
            assert_eq!(parsed, req);
        }
    }

    #[test]
    fn header_errors() {
        let good = Request::ReleaseOwner.to_bytes(OWNER);
        assert_eq!(
            parse_request(&good[..15]),
            Err(WireError::HeaderLength {
                expected: 16,
                actual: 15
            })
        );
        assert!(matches!(
            RequestHeader::parse(&good[..15]),
            Err(WireError::HeaderLength { .. })
        ));
        let mut flags = good.clone();
        put_u32(&mut flags, 4, 2);
        assert_eq!(parse_request(&flags), Err(WireError::HeaderFlags(2)));
        let zero_owner = Request::ReleaseOwner.to_bytes(0);
        assert_eq!(parse_request(&zero_owner), Err(WireError::ZeroOwner));
    }

    #[test]
    fn unknown_opcodes_are_unsupported() {
        for op in [0, 14, u32::MAX] {
            let err = Request::parse(op, &[]).unwrap_err();
            assert_eq!(err, WireError::UnknownOpcode(op));
            assert_eq!(err.status(), Status::Unsupported);
        }
    }

    #[test]
    fn names_are_checked() {
        for bad in ["", "a b", "tab\tname", "é", &"x".repeat(64)] {
            assert!(
                matches!(SegmentName::new(bad), Err(WireError::BadName(_))),
                "{bad:?}"
            );
        }
        let name = Request::Name {
            segid: SEGID,
            name: SegmentName::new("shm/ring").unwrap(),
        };
        // The name field starts after the 8-byte segid.
        let cases: [(&str, usize, &[u8]); 5] = [
            ("empty", 8, &[0; 64]),
            ("garbage after the NUL", 20, b"x"),
            ("no NUL", 8, &[b'a'; 64]),
            ("a space", 9, b" "),
            ("not ASCII", 9, &[0xc3]),
        ];
        for (what, at, bytes) in cases {
            let err = parse_edited(&name, |b| b[at..at + bytes.len()].copy_from_slice(bytes))
                .unwrap_err();
            assert!(matches!(err, WireError::BadName(_)), "{what}: {err:?}");
            assert_eq!(err.status(), Status::Invalid, "{what}");
        }
        let bad_segid = parse_edited(&name, |b| put_u64(b, 0, 0)).unwrap_err();
        assert!(matches!(bad_segid, WireError::InvalidId { .. }));
        let search = Request::Search {
            name: SegmentName::new("x").unwrap(),
        };
        let err = parse_edited(&search, |b| b[63] = b'y').unwrap_err();
        assert!(matches!(err, WireError::BadName(_)), "{err:?}");
        assert_eq!(
            response_size(VIRTIO_XPMEM_REQ_SEARCH),
            size_of::<RespHeader>() + 8
        );
        assert_eq!(
            response_size(VIRTIO_XPMEM_REQ_NAME),
            size_of::<RespHeader>()
        );
    }

    #[test]
    fn wrong_body_lengths() {
        for req in valid_requests() {
            let err = parse_edited(&req, |b| b.push(0)).unwrap_err();
            assert!(
                matches!(
                    err,
                    WireError::BodyLength { .. } | WireError::PageCountMismatch { .. }
                ),
                "{req:?}: {err:?}"
            );
            assert_eq!(err.status(), Status::Invalid);
            if req != Request::ReleaseOwner {
                let err = parse_edited(&req, |b| {
                    b.pop();
                })
                .unwrap_err();
                assert!(
                    matches!(
                        err,
                        WireError::BodyLength { .. } | WireError::PageCountMismatch { .. }
                    ),
                    "{req:?}: {err:?}"
                );
            }
        }
        assert!(matches!(
            Request::parse(VIRTIO_XPMEM_REQ_RESOLVE_REPLY, &[0; 15]),
            Err(WireError::BodyLength { expected: 16, .. })
        ));
    }

    #[test]
    fn make_errors() {
        let m = make();
        assert!(matches!(
            parse_edited(&m, |b| put_u64(b, 0, 0x7f00_0000_0010)),
            Err(WireError::Misaligned { field: "vaddr", .. })
        ));
        assert_eq!(
            parse_edited(&m, |b| put_u64(b, 8, 0)),
            Err(WireError::ZeroSize { field: "size" })
        );
        assert!(matches!(
            parse_edited(&m, |b| put_u64(b, 8, 4097)),
            Err(WireError::Misaligned { field: "size", .. })
        ));
        // XPMEM_MAXADDR_SIZE is the one size that is not page aligned.
        assert!(matches!(
            parse_edited(&m, |b| put_u64(b, 8, u64::MAX)),
            Ok(Request::Make { size: u64::MAX, .. })
        ));
        assert!(matches!(
            parse_edited(&m, |b| put_u64(b, 8, u64::MAX - 1)),
            Err(WireError::Misaligned { field: "size", .. })
        ));
        assert!(matches!(
            parse_edited(&m, |b| {
                put_u64(b, 0, 0x10);
                put_u64(b, 8, u64::MAX);
            }),
            Err(WireError::Misaligned { field: "vaddr", .. })
        ));
        assert!(matches!(
            parse_edited(&m, |b| {
                put_u64(b, 0, 0xffff_ffff_ffff_0000);
                put_u64(b, 8, 0x10000);
            }),
            Err(WireError::Overflow { field: "vaddr", .. })
        ));
        assert_eq!(
            parse_edited(&m, |b| put_u32(b, 16, 2)),
            Err(WireError::BadPermitType(2))
        );
        assert!(matches!(
            parse_edited(&m, |b| put_u64(b, 24, 0o1777)),
            Err(WireError::UnknownFlags {
                field: "permit_value",
                ..
            })
        ));
        assert!(matches!(
            parse_edited(&m, |b| put_u32(b, 36, 1)),
            Err(WireError::ReservedNonZero {
                field: "reserved",
                ..
            })
        ));
        // The largest range that ends exactly at 2^64 - 4096 is fine.
        assert!(parse_edited(&m, |b| {
            put_u64(b, 0, 0);
            put_u64(b, 8, !0xfffu64);
        })
        .is_ok());
    }

    #[test]
    fn invalid_ids() {
        let cases: Vec<(Request, usize, &str)> = vec![
            (Request::Remove { segid: SEGID }, 0, "segid"),
            (valid_requests()[2].clone(), 0, "segid"),
            (Request::Release { apid: 1 }, 0, "apid"),
            (valid_requests()[5].clone(), 0, "apid"),
            (Request::Detach { attach_id: 1 }, 0, "attach_id"),
            (valid_requests()[7].clone(), 0, "attach_id"),
            (valid_requests()[8].clone(), 0, "resolve_id"),
            (valid_requests()[10].clone(), 0, "segid"),
            (
                Request::InvalidateAck { invalidation_id: 1 },
                0,
                "invalidation_id",
            ),
        ];
        for (req, at, field) in cases {
            for bad in [0, 1 << 63, u64::MAX] {
                assert_eq!(
                    parse_edited(&req, |b| put_u64(b, at, bad)),
                    Err(WireError::InvalidId { field, value: bad }),
                    "{req:?}"
                );
            }
        }
    }

    #[test]
    fn get_errors() {
        let g = valid_requests()[2].clone();
        for bad in [0, 3, 4] {
            assert_eq!(
                parse_edited(&g, |b| put_u32(b, 8, bad)),
                Err(WireError::BadAccess(bad))
            );
        }
        assert_eq!(
            parse_edited(&g, |b| put_u32(b, 12, 0)),
            Err(WireError::BadPermitType(0))
        );
        assert!(matches!(
            parse_edited(&g, |b| put_u64(b, 16, 0o666)),
            Err(WireError::ReservedNonZero {
                field: "permit_value",
                ..
            })
        ));
    }

    #[test]
    fn attach_errors() {
        let a = valid_requests()[5].clone();
        assert!(matches!(
            parse_edited(&a, |b| put_u64(b, 8, 0x1800)),
            Err(WireError::Misaligned {
                field: "offset",
                ..
            })
        ));
        assert_eq!(
            parse_edited(&a, |b| put_u64(b, 16, 0)),
            Err(WireError::ZeroSize { field: "size" })
        );
        assert!(matches!(
            parse_edited(&a, |b| put_u64(b, 16, 0x800)),
            Err(WireError::Misaligned { field: "size", .. })
        ));
        assert!(matches!(
            parse_edited(&a, |b| {
                put_u64(b, 8, !0xfffu64);
                put_u64(b, 16, 0x2000);
            }),
            Err(WireError::Overflow {
                field: "offset",
                ..
            })
        ));
        assert!(matches!(
            parse_edited(&a, |b| put_u32(b, 24, 2)),
            Err(WireError::UnknownFlags { field: "flags", .. })
        ));
        assert!(matches!(
            parse_edited(&a, |b| put_u32(b, 28, 1)),
            Err(WireError::ReservedNonZero {
                field: "reserved",
                ..
            })
        ));
    }

    #[test]
    fn fault_errors() {
        let f = valid_requests()[7].clone();
        assert_eq!(
            parse_edited(&f, |b| put_u32(b, 16, 0)),
            Err(WireError::ZeroSize { field: "npages" })
        );
        assert_eq!(
            parse_edited(&f, |b| put_u32(b, 16, VIRTIO_XPMEM_MAX_PAGES + 1)),
            Err(WireError::TooManyPages {
                npages: VIRTIO_XPMEM_MAX_PAGES + 1,
                max: VIRTIO_XPMEM_MAX_PAGES
            })
        );
        assert!(parse_edited(&f, |b| put_u32(b, 16, VIRTIO_XPMEM_MAX_PAGES)).is_ok());
        assert!(matches!(
            parse_edited(&f, |b| put_u64(b, 8, u64::MAX - 3)),
            Err(WireError::Overflow {
                field: "page_index",
                ..
            })
        ));
        assert!(matches!(
            parse_edited(&f, |b| put_u32(b, 20, 0x8000_0001)),
            Err(WireError::UnknownFlags { field: "flags", .. })
        ));
    }

    #[test]
    fn resolve_reply_errors() {
        let ok = valid_requests()[8].clone();
        // npages says 4 but three addresses follow.
        assert_eq!(
            parse_edited(&ok, |b| put_u32(b, 8, 4)),
            Err(WireError::PageCountMismatch {
                npages: 4,
                bytes: 24
            })
        );
        assert_eq!(
            parse_edited(&ok, |b| put_u32(b, 8, VIRTIO_XPMEM_MAX_PAGES + 1)),
            Err(WireError::TooManyPages {
                npages: VIRTIO_XPMEM_MAX_PAGES + 1,
                max: VIRTIO_XPMEM_MAX_PAGES
            })
        );
        assert_eq!(
            parse_edited(&ok, |b| put_u32(b, 8, u32::MAX)),
            Err(WireError::TooManyPages {
                npages: u32::MAX,
                max: VIRTIO_XPMEM_MAX_PAGES
            })
        );
        assert_eq!(
            parse_edited(&ok, |b| put_u32(b, 12, 99)),
            Err(WireError::UnknownStatus(99))
        );
        assert_eq!(
            parse_edited(&ok, |b| put_u32(b, 12, VIRTIO_XPMEM_S_FAULT)),
            Err(WireError::PagesWithError {
                status: VIRTIO_XPMEM_S_FAULT,
                npages: 3
            })
        );
        assert_eq!(
            parse_edited(&ok, |b| put_u64(b, 16 + 8, 0x10_1008)),
            Err(WireError::Misaligned {
                field: "gpa",
                value: 0x10_1008
            })
        );
        let empty_ok = Request::ResolveReply {
            resolve_id: 5,
            status: Status::Ok,
            gpas: vec![],
        };
        assert_eq!(
            parse_edited(&empty_ok, |_| {}),
            Err(WireError::ZeroSize { field: "npages" })
        );
        // The largest reply is accepted.
        let full = Request::ResolveReply {
            resolve_id: 5,
            status: Status::Ok,
            gpas: (0..u64::from(VIRTIO_XPMEM_MAX_PAGES))
                .map(|i| i << 12)
                .collect(),
        };
        assert_eq!(parse_edited(&full, |_| {}), Ok(full.clone()));
    }

    #[test]
    fn invalidate_errors() {
        let i = valid_requests()[10].clone();
        assert!(matches!(
            parse_edited(&i, |b| put_u64(b, 8, 0x7f00_0000_1001)),
            Err(WireError::Misaligned { field: "vaddr", .. })
        ));
        assert_eq!(
            parse_edited(&i, |b| put_u64(b, 16, 0)),
            Err(WireError::ZeroSize { field: "len" })
        );
        assert!(matches!(
            parse_edited(&i, |b| put_u64(b, 16, 0x1001)),
            Err(WireError::Misaligned { field: "len", .. })
        ));
        assert!(matches!(
            parse_edited(&i, |b| put_u64(b, 8, !0xfffu64)),
            Err(WireError::Overflow { field: "vaddr", .. })
        ));
    }

    #[test]
    fn error_messages_name_the_field() {
        let err = WireError::Misaligned {
            field: "vaddr",
            value: 0x10,
        };
        assert!(err.to_string().contains("vaddr"));
        assert!(err.to_string().contains("4096"));
    }
}
