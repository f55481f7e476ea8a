//! `#[repr(C)]` little-endian wire structures of virtio-xpmem.
//!
//! Every multi-byte field is a [`Le32`]/[`Le64`] from vm-memory, so the byte
//! order is fixed by the type: read a field with `.to_native()` (or
//! `u64::from`) and build one with `Le64::from(x)`. Every structure is
//! plain old data without padding (each one carries explicit `reserved`
//! fields where needed), which the `wire_struct!` macro proves at compile
//! time before it implements [`ByteValued`].
//!
//! The C header `virtio-spec/include/virtio_xpmem.h` declares the same
//! structures; `tests/c_agreement.rs` compiles it and compares every size,
//! offset and constant with this file.

use vm_memory::{ByteValued, Le32, Le64};

/// Where one field of a wire structure lives; used by the C agreement test
/// and available to anyone who wants to dump a layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldLayout {
    /// Field name, identical in Rust and in the C header.
    pub name: &'static str,
    /// Byte offset from the start of the structure.
    pub offset: usize,
    /// Size in bytes.
    pub size: usize,
}

/// A structure of the wire format together with its C name and field table.
pub trait WireLayout: ByteValued {
    /// `struct <C_NAME>` in `virtio_xpmem.h`.
    const C_NAME: &'static str;
    /// Every field, in declaration order.
    const FIELDS: &'static [FieldLayout];
}

macro_rules! wire_struct {
    (
        $(#[$meta:meta])*
        $name:ident = $cname:literal, size $size:expr, {
            $( $(#[$fmeta:meta])* $field:ident : $ty:ty ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty ),+
        }

        const _: () = assert!(core::mem::size_of::<$name>() == $size);
        // No padding: the field sizes add up to the structure size.
        const _: () = assert!(0 $( + core::mem::size_of::<$ty>() )+ == $size);

        // SAFETY: `$name` is `#[repr(C)]` and consists only of `Le32`/`Le64`
        // fields, which are transparent wrappers of `u32`/`u64`, and
        // [`WireName`], a transparent wrapper of `[u8; 64]` (all valid for
        // every bit pattern, no references, no drop glue). The assertion
        // above proves there is no padding, so every byte of the structure
        // is initialised and any byte sequence of the right length is a
        // valid value.
        unsafe impl ByteValued for $name {}

        impl WireLayout for $name {
            const C_NAME: &'static str = $cname;
            const FIELDS: &'static [FieldLayout] = &[
                $( FieldLayout {
                    name: stringify!($field),
                    offset: core::mem::offset_of!($name, $field),
                    size: core::mem::size_of::<$ty>(),
                } ),+
            ];
        }
    };
}

wire_struct! {
    /// Device configuration space (read-only for the driver).
    VirtioXpmemConfig = "virtio_xpmem_config", size 24, {
        /// Id of this VM in the xpmem domain (informational, non-zero).
        vm_id: Le32,
        /// Size in bytes of the largest event; eventq buffers must be at least this big.
        event_size: Le32,
        /// Largest `npages` the device accepts in FAULT and RESOLVE.
        max_fault_pages: Le32,
        reserved: Le32,
        /// Time an importer has to acknowledge an invalidation before it is revoked.
        invalidate_deadline_ms: Le64,
    }
}

wire_struct! {
    /// First part of every requestq chain.
    ReqHeader = "virtio_xpmem_req_hdr", size 16, {
        /// One of `VIRTIO_XPMEM_REQ_*`.
        opcode: Le32,
        /// Must be 0.
        flags: Le32,
        /// Non-zero opaque process token chosen by the driver.
        owner: Le64,
    }
}

wire_struct! {
    /// First part of the device-writable part of every requestq chain.
    RespHeader = "virtio_xpmem_resp_hdr", size 8, {
        /// One of `VIRTIO_XPMEM_S_*`.
        status: Le32,
        reserved: Le32,
    }
}

wire_struct! {
    /// First part of every eventq buffer.
    EventHeader = "virtio_xpmem_event_hdr", size 8, {
        /// One of `VIRTIO_XPMEM_EVT_*`.
        event_type: Le32,
        reserved: Le32,
    }
}

wire_struct! {
    /// MAKE: export `[vaddr, vaddr + size)` of the calling process.
    MakeReq = "virtio_xpmem_make_req", size 40, {
        vaddr: Le64,
        size: Le64,
        /// `XPMEM_PERMIT_MODE` (1).
        permit_type: Le32,
        /// uid of the exporting process.
        uid: Le32,
        /// Mode bits (at most 0777).
        permit_value: Le64,
        /// gid of the exporting process.
        gid: Le32,
        reserved: Le32,
    }
}

wire_struct! {
    /// MAKE response body.
    MakeResp = "virtio_xpmem_make_resp", size 8, {
        segid: Le64,
    }
}

wire_struct! {
    /// REMOVE: withdraw an export.
    RemoveReq = "virtio_xpmem_remove_req", size 8, {
        segid: Le64,
    }
}

wire_struct! {
    /// GET: obtain an access permit for a segment.
    GetReq = "virtio_xpmem_get_req", size 32, {
        segid: Le64,
        /// `XPMEM_RDONLY` (1) or `XPMEM_RDWR` (2).
        flags: Le32,
        /// `XPMEM_PERMIT_MODE` (1).
        permit_type: Le32,
        /// Must be 0 (as in native XPMEM).
        permit_value: Le64,
        /// Credentials of the calling process.
        uid: Le32,
        gid: Le32,
    }
}

wire_struct! {
    /// GET response body.
    GetResp = "virtio_xpmem_get_resp", size 8, {
        apid: Le64,
    }
}

wire_struct! {
    /// RELEASE: drop an access permit.
    ReleaseReq = "virtio_xpmem_release_req", size 8, {
        apid: Le64,
    }
}

wire_struct! {
    /// ATTACH: reserve aperture space for `[offset, offset + size)` of a segment.
    AttachReq = "virtio_xpmem_attach_req", size 32, {
        apid: Le64,
        offset: Le64,
        size: Le64,
        /// `VIRTIO_XPMEM_ATTACH_F_RDONLY` or 0.
        flags: Le32,
        reserved: Le32,
    }
}

wire_struct! {
    /// ATTACH response body.
    AttachResp = "virtio_xpmem_attach_resp", size 24, {
        attach_id: Le64,
        /// Offset of the reserved range inside shared memory region `shm_id`.
        aperture_offset: Le64,
        /// `VIRTIO_XPMEM_SHM_RW` or `VIRTIO_XPMEM_SHM_RO`.
        shm_id: Le32,
        reserved: Le32,
    }
}

wire_struct! {
    /// DETACH: release an attachment and its aperture range.
    DetachReq = "virtio_xpmem_detach_req", size 8, {
        attach_id: Le64,
    }
}

wire_struct! {
    /// FAULT: ask for pages `[page_index, page_index + npages)` of an attachment.
    FaultReq = "virtio_xpmem_fault_req", size 24, {
        attach_id: Le64,
        /// Page index inside the attachment of the faulting page.
        page_index: Le64,
        /// Window size, the faulting page first (1..=max_fault_pages).
        npages: Le32,
        /// `VIRTIO_XPMEM_FAULT_F_WRITE` or 0.
        flags: Le32,
    }
}

wire_struct! {
    /// FAULT response body.
    FaultResp = "virtio_xpmem_fault_resp", size 8, {
        /// Number of pages from `page_index` now mapped (0 means: retry).
        mapped: Le32,
        reserved: Le32,
    }
}

wire_struct! {
    /// RESOLVE_REPLY fixed part; followed by `npages` x `le64` guest-physical
    /// page addresses.
    ResolveReplyReq = "virtio_xpmem_resolve_reply_req", size 16, {
        resolve_id: Le64,
        npages: Le32,
        /// `VIRTIO_XPMEM_S_OK` or the reason the exporter could not resolve.
        status: Le32,
    }
}

wire_struct! {
    /// INVALIDATE: the exporter takes back `[vaddr, vaddr + len)`.
    InvalidateReq = "virtio_xpmem_invalidate_req", size 24, {
        segid: Le64,
        vaddr: Le64,
        len: Le64,
    }
}

wire_struct! {
    /// INVALIDATE response body: what the invalidation did.
    InvalidateResp = "virtio_xpmem_invalidate_resp", size 8, {
        /// Importer attachments that had a mapped slot in the range and so
        /// were sent an INVALIDATE event (including those that became moot
        /// because the importer detached or its VM left).
        targets: Le32,
        /// Of `targets`, how many were revoked by force at the deadline.
        revoked: Le32,
    }
}

wire_struct! {
    /// INVALIDATE_ACK: the importer has dropped its mappings.
    InvalidateAckReq = "virtio_xpmem_invalidate_ack_req", size 8, {
        invalidation_id: Le64,
    }
}

/// The name field of NAME and SEARCH: [`VIRTIO_XPMEM_NAME_SIZE`] bytes, the
/// name's bytes then NUL padding (validated by [`crate::SegmentName`]).
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireName(pub [u8; crate::VIRTIO_XPMEM_NAME_SIZE as usize]);

impl Default for WireName {
    fn default() -> Self {
        WireName([0; crate::VIRTIO_XPMEM_NAME_SIZE as usize])
    }
}

wire_struct! {
    /// NAME: give segment `segid` the name `name` (exporter only).
    NameReq = "virtio_xpmem_name_req", size 72, {
        segid: Le64,
        name: WireName,
    }
}

wire_struct! {
    /// SEARCH: look up the segment named `name`.
    SearchReq = "virtio_xpmem_search_req", size 64, {
        name: WireName,
    }
}

wire_struct! {
    /// SEARCH response body.
    SearchResp = "virtio_xpmem_search_resp", size 8, {
        segid: Le64,
    }
}

wire_struct! {
    /// RESOLVE event body (to the exporter).
    ResolveEvent = "virtio_xpmem_resolve_event", size 32, {
        resolve_id: Le64,
        segid: Le64,
        /// Exporter virtual address of the first page.
        vaddr: Le64,
        npages: Le32,
        /// `VIRTIO_XPMEM_RESOLVE_F_WRITE` or 0.
        flags: Le32,
    }
}

wire_struct! {
    /// INVALIDATE event body (to an importer).
    InvalidateEvent = "virtio_xpmem_invalidate_event", size 32, {
        invalidation_id: Le64,
        attach_id: Le64,
        page_index: Le64,
        npages: Le64,
    }
}

wire_struct! {
    /// REVOKED event body (to an importer).
    RevokedEvent = "virtio_xpmem_revoked_event", size 32, {
        attach_id: Le64,
        page_index: Le64,
        npages: Le64,
        /// One of `VIRTIO_XPMEM_REVOKE_*`.
        reason: Le32,
        reserved: Le32,
    }
}

/// Name and size of every wire structure, for tests and diagnostics.
pub fn all_layouts() -> Vec<(&'static str, usize, &'static [FieldLayout])> {
    fn entry<T: WireLayout>() -> (&'static str, usize, &'static [FieldLayout]) {
        (T::C_NAME, core::mem::size_of::<T>(), T::FIELDS)
    }
    vec![
        entry::<VirtioXpmemConfig>(),
        entry::<ReqHeader>(),
        entry::<RespHeader>(),
        entry::<EventHeader>(),
        entry::<MakeReq>(),
        entry::<MakeResp>(),
        entry::<RemoveReq>(),
        entry::<GetReq>(),
        entry::<GetResp>(),
        entry::<ReleaseReq>(),
        entry::<AttachReq>(),
        entry::<AttachResp>(),
        entry::<DetachReq>(),
        entry::<FaultReq>(),
        entry::<FaultResp>(),
        entry::<ResolveReplyReq>(),
        entry::<InvalidateReq>(),
        entry::<InvalidateResp>(),
        entry::<InvalidateAckReq>(),
        entry::<NameReq>(),
        entry::<SearchReq>(),
        entry::<SearchResp>(),
        entry::<ResolveEvent>(),
        entry::<InvalidateEvent>(),
        entry::<RevokedEvent>(),
    ]
}

/// Copies `bytes` into a `T`; `None` unless `bytes.len()` is exactly
/// `size_of::<T>()`. Unlike `ByteValued::from_slice` this needs no alignment.
pub fn read_exact<T: ByteValued>(bytes: &[u8]) -> Option<T> {
    if bytes.len() != core::mem::size_of::<T>() {
        return None;
    }
    let mut value = T::zeroed();
    value.as_mut_slice().copy_from_slice(bytes);
    Some(value)
}
