//! Wire format of the virtio-xpmem device (device ID [`VIRTIO_ID_XPMEM`]).
//!
//! The normative description is `virtio-spec/virtio-xpmem.md`; the C
//! declarations used by the guest driver are in
//! `virtio-spec/include/virtio_xpmem.h`. This crate gives the device side:
//!
//! * [`layout`]: `#[repr(C)]` little-endian structures ([`vm_memory::ByteValued`]);
//! * the constants below (opcodes, events, status codes, flags, limits);
//! * [`request`]: [`Request::parse`] validates a guest request completely;
//! * [`reply`]: encoders for responses ([`Response`]) and events ([`Event`]),
//!   plus request encoders and an event decoder for tests and mock drivers.
//!
//! All multi-byte fields are little-endian; the structures use
//! [`vm_memory::Le32`]/[`vm_memory::Le64`], so no manual conversion is needed.

// Values from guests (lengths, counts, addresses, page numbers, ids) are converted with
// checks that answer an error status; a cast that cannot lose anything by construction
// carries an `allow` saying why. Tests and the fuzz harness may cast freely.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

pub mod layout;
pub mod reply;
pub mod request;

pub use layout::*;
pub use reply::{Event, EventError, Response, ResponseBody};
pub use request::{parse_request, Access, Request, RequestHeader, SegmentName, WireError};

macro_rules! wire_consts {
    ($( $(#[$meta:meta])* $name:ident : $ty:ty = $value:expr; )+) => {
        $( $(#[$meta])* pub const $name: $ty = $value; )+

        /// Every constant of this crate with its C name (identical to the
        /// Rust name) and value; the C agreement test checks each of them
        /// against `virtio_xpmem.h`.
        pub const ALL_CONSTANTS: &[(&str, u64)] = &[ $( (stringify!($name), $name as u64) ),+ ];
    };
}

wire_consts! {
    /// Virtio device ID. Unassigned in the OASIS virtio 1.3 "Device Types"
    /// table (which ends at 47) and in Linux `virtio_ids.h` (whose highest
    /// entry is 48, virtio-media), below 64 so that a virtio-pci transport
    /// (0x1040 + ID) can carry it, and clear of the IDs used out of tree
    /// (crosvm 59..=63, early virtio-media 49). See the spec, "Device ID".
    VIRTIO_ID_XPMEM: u32 = 56;

    /// Feature bit: shared memory region 1 (read-only aperture) exists.
    VIRTIO_XPMEM_F_RO_APERTURE: u32 = 0;
    /// Feature bit: named segments (NAME and SEARCH requests).
    VIRTIO_XPMEM_F_NAMES: u32 = 1;

    /// Virtqueue index of requestq.
    VIRTIO_XPMEM_QUEUE_REQUEST: u16 = 0;
    /// Virtqueue index of eventq.
    VIRTIO_XPMEM_QUEUE_EVENT: u16 = 1;
    /// Number of virtqueues.
    VIRTIO_XPMEM_NUM_QUEUES: u16 = 2;

    /// Shared memory region id of the read-write import aperture.
    VIRTIO_XPMEM_SHM_RW: u8 = 0;
    /// Shared memory region id of the read-only import aperture.
    VIRTIO_XPMEM_SHM_RO: u8 = 1;

    /// log2 of the wire page size.
    VIRTIO_XPMEM_PAGE_SHIFT: u32 = 12;
    /// Page size on the wire, in bytes.
    VIRTIO_XPMEM_PAGE_SIZE: u64 = 4096;
    /// Hard upper bound of `npages` in FAULT, RESOLVE and RESOLVE_REPLY; the
    /// device announces its own (smaller or equal) bound in `max_fault_pages`.
    VIRTIO_XPMEM_MAX_PAGES: u32 = 512;
    /// MAKE `size` meaning "up to the end of the user address space"
    /// (XPMEM_MAXADDR_SIZE); the device bounds it (see the spec, MAKE).
    VIRTIO_XPMEM_MAXADDR_SIZE: u64 = u64::MAX;
    /// Size of the largest event (header + body); eventq buffers need at
    /// least `event_size` bytes from config space, which is never less.
    VIRTIO_XPMEM_EVENT_SIZE: u32 = 40;

    /// Request: export a range.
    VIRTIO_XPMEM_REQ_MAKE: u32 = 1;
    /// Request: withdraw an export.
    VIRTIO_XPMEM_REQ_REMOVE: u32 = 2;
    /// Request: get an access permit.
    VIRTIO_XPMEM_REQ_GET: u32 = 3;
    /// Request: release an access permit.
    VIRTIO_XPMEM_REQ_RELEASE: u32 = 4;
    /// Request: attach (reserve aperture space).
    VIRTIO_XPMEM_REQ_ATTACH: u32 = 5;
    /// Request: detach.
    VIRTIO_XPMEM_REQ_DETACH: u32 = 6;
    /// Request (importer): map pages of an attachment.
    VIRTIO_XPMEM_REQ_FAULT: u32 = 7;
    /// Request (exporter): answer a RESOLVE event.
    VIRTIO_XPMEM_REQ_RESOLVE_REPLY: u32 = 8;
    /// Request (exporter): take back a range of a segment.
    VIRTIO_XPMEM_REQ_INVALIDATE: u32 = 9;
    /// Request (importer): acknowledge an INVALIDATE event.
    VIRTIO_XPMEM_REQ_INVALIDATE_ACK: u32 = 10;
    /// Request: drop everything the owner token owns.
    VIRTIO_XPMEM_REQ_RELEASE_OWNER: u32 = 11;
    /// Request (exporter, `VIRTIO_XPMEM_F_NAMES`): give a segment a name.
    VIRTIO_XPMEM_REQ_NAME: u32 = 12;
    /// Request (`VIRTIO_XPMEM_F_NAMES`): look a segment up by name.
    VIRTIO_XPMEM_REQ_SEARCH: u32 = 13;

    /// Event (to exporter): resolve pages of a segment.
    VIRTIO_XPMEM_EVT_RESOLVE: u32 = 1;
    /// Event (to importer): drop mappings, then acknowledge.
    VIRTIO_XPMEM_EVT_INVALIDATE: u32 = 2;
    /// Event (to importer): pages were revoked.
    VIRTIO_XPMEM_EVT_REVOKED: u32 = 3;

    /// Status: success.
    VIRTIO_XPMEM_S_OK: u32 = 0;
    /// Status: malformed request or value out of range.
    VIRTIO_XPMEM_S_INVALID: u32 = 1;
    /// Status: no such segid/apid/attach_id/resolve_id/invalidation_id.
    VIRTIO_XPMEM_S_NOENT: u32 = 2;
    /// Status: permission denied or not the owner.
    VIRTIO_XPMEM_S_PERM: u32 = 3;
    /// Status: aperture or a table is full.
    VIRTIO_XPMEM_S_NOSPC: u32 = 4;
    /// Status: unknown opcode.
    VIRTIO_XPMEM_S_UNSUPPORTED: u32 = 5;
    /// Status: the exporter could not resolve the pages.
    VIRTIO_XPMEM_S_FAULT: u32 = 6;
    /// Status: the pages were revoked.
    VIRTIO_XPMEM_S_REVOKED: u32 = 7;
    /// Status: the exporter (segment, VM or process) is gone.
    VIRTIO_XPMEM_S_GONE: u32 = 8;
    /// Status: refused for now; this VM was revoked by force on the segment
    /// and is backing off (retry later).
    VIRTIO_XPMEM_S_AGAIN: u32 = 9;
    /// Status: the name is taken, or the segment already has one.
    VIRTIO_XPMEM_S_EXIST: u32 = 10;

    /// Size of the name field of NAME and SEARCH: a name has 1 to
    /// `VIRTIO_XPMEM_NAME_SIZE - 1` graphic ASCII bytes, then NUL padding.
    VIRTIO_XPMEM_NAME_SIZE: u32 = 64;

    /// GET flags: read-only permit.
    VIRTIO_XPMEM_GET_RDONLY: u32 = 1;
    /// GET flags: read-write permit.
    VIRTIO_XPMEM_GET_RDWR: u32 = 2;
    /// GET flags, ORed into the access: the requester holds `CAP_IPC_OWNER` in
    /// its VM (mode bits do not apply to it within that VM).
    VIRTIO_XPMEM_GET_F_IPC_OWNER: u32 = 0x100;
    /// The only permit type (IPC-style mode bits).
    VIRTIO_XPMEM_PERMIT_MODE: u32 = 1;
    /// Mode bits allowed in MAKE `permit_value`.
    VIRTIO_XPMEM_PERMIT_MODE_MASK: u64 = 0o777;
    /// ATTACH flags: read-only attachment (read-only aperture).
    VIRTIO_XPMEM_ATTACH_F_RDONLY: u32 = 1;
    /// FAULT flags: the importer wants to write.
    VIRTIO_XPMEM_FAULT_F_WRITE: u32 = 1;
    /// RESOLVE flags: resolve for writing (break copy-on-write).
    VIRTIO_XPMEM_RESOLVE_F_WRITE: u32 = 1;

    /// REVOKED reason: the importer missed the invalidation deadline.
    VIRTIO_XPMEM_REVOKE_DEADLINE: u32 = 1;
    /// REVOKED reason: the segment was removed.
    VIRTIO_XPMEM_REVOKE_REMOVED: u32 = 2;
    /// REVOKED reason: the exporting process or VM is gone.
    VIRTIO_XPMEM_REVOKE_EXPORTER_GONE: u32 = 3;
    /// REVOKED reason: the host could not keep the mapping and revoked the
    /// importer's whole window.
    VIRTIO_XPMEM_REVOKE_HOST: u32 = 4;
}

/// Virtio status code carried in [`RespHeader::status`] and
/// [`ResolveReplyReq::status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Status {
    Ok = VIRTIO_XPMEM_S_OK,
    Invalid = VIRTIO_XPMEM_S_INVALID,
    NoEnt = VIRTIO_XPMEM_S_NOENT,
    Perm = VIRTIO_XPMEM_S_PERM,
    NoSpc = VIRTIO_XPMEM_S_NOSPC,
    Unsupported = VIRTIO_XPMEM_S_UNSUPPORTED,
    Fault = VIRTIO_XPMEM_S_FAULT,
    Revoked = VIRTIO_XPMEM_S_REVOKED,
    Gone = VIRTIO_XPMEM_S_GONE,
    Again = VIRTIO_XPMEM_S_AGAIN,
    Exist = VIRTIO_XPMEM_S_EXIST,
}

impl Status {
    /// The status with wire value `v`, if it is defined.
    pub fn from_u32(v: u32) -> Option<Status> {
        Some(match v {
            VIRTIO_XPMEM_S_OK => Status::Ok,
            VIRTIO_XPMEM_S_INVALID => Status::Invalid,
            VIRTIO_XPMEM_S_NOENT => Status::NoEnt,
            VIRTIO_XPMEM_S_PERM => Status::Perm,
            VIRTIO_XPMEM_S_NOSPC => Status::NoSpc,
            VIRTIO_XPMEM_S_UNSUPPORTED => Status::Unsupported,
            VIRTIO_XPMEM_S_FAULT => Status::Fault,
            VIRTIO_XPMEM_S_REVOKED => Status::Revoked,
            VIRTIO_XPMEM_S_GONE => Status::Gone,
            VIRTIO_XPMEM_S_AGAIN => Status::Again,
            VIRTIO_XPMEM_S_EXIST => Status::Exist,
            _ => return None,
        })
    }
}

/// Why an importer's pages were revoked ([`Event::Revoked`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum RevokeReason {
    Deadline = VIRTIO_XPMEM_REVOKE_DEADLINE,
    Removed = VIRTIO_XPMEM_REVOKE_REMOVED,
    ExporterGone = VIRTIO_XPMEM_REVOKE_EXPORTER_GONE,
    Host = VIRTIO_XPMEM_REVOKE_HOST,
}

impl RevokeReason {
    /// The reason with wire value `v`, if it is defined.
    pub fn from_u32(v: u32) -> Option<RevokeReason> {
        Some(match v {
            VIRTIO_XPMEM_REVOKE_DEADLINE => RevokeReason::Deadline,
            VIRTIO_XPMEM_REVOKE_REMOVED => RevokeReason::Removed,
            VIRTIO_XPMEM_REVOKE_EXPORTER_GONE => RevokeReason::ExporterGone,
            VIRTIO_XPMEM_REVOKE_HOST => RevokeReason::Host,
            _ => return None,
        })
    }
}

/// True if `v` is a multiple of [`VIRTIO_XPMEM_PAGE_SIZE`].
pub const fn is_page_aligned(v: u64) -> bool {
    v & (VIRTIO_XPMEM_PAGE_SIZE - 1) == 0
}

/// True if `id` is a possible segid/apid/attach_id/resolve_id/
/// invalidation_id on the wire: non-zero and positive as an `i64`
/// (XPMEM ids are `__s64` and never 0 or negative).
pub const fn is_valid_id(id: u64) -> bool {
    id != 0 && id <= i64::MAX as u64
}

/// Size in bytes of the device-writable part (response header + body) of a
/// request with `opcode`; an unknown opcode gets just the header.
pub const fn response_size(opcode: u32) -> usize {
    let body = match opcode {
        VIRTIO_XPMEM_REQ_MAKE => core::mem::size_of::<MakeResp>(),
        VIRTIO_XPMEM_REQ_GET => core::mem::size_of::<GetResp>(),
        VIRTIO_XPMEM_REQ_ATTACH => core::mem::size_of::<AttachResp>(),
        VIRTIO_XPMEM_REQ_FAULT => core::mem::size_of::<FaultResp>(),
        VIRTIO_XPMEM_REQ_INVALIDATE => core::mem::size_of::<InvalidateResp>(),
        VIRTIO_XPMEM_REQ_SEARCH => core::mem::size_of::<SearchResp>(),
        _ => 0,
    };
    core::mem::size_of::<RespHeader>() + body
}
