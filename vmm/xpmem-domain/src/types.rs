//! Semantic request, response, event and action types of the xpmem domain.
//!
//! These are deliberately *not* wire structures: the virtio-xpmem device model decodes
//! guest requests into [`Request`] values, feeds them to [`crate::Domain::handle`], and turns
//! the returned [`Action`]s into virtqueue completions, event-queue writes and aperture
//! `mmap`s. Every request and event of the device specification
//! (`virtio-spec/virtio-xpmem.md`) has a counterpart here.

use std::collections::BTreeMap;

/// Size of a page on the wire and in the apertures.
pub const PAGE_SIZE: u64 = 4096;
/// `log2(PAGE_SIZE)`.
pub const PAGE_SHIFT: u32 = 12;
/// `XPMEM_MAXADDR_SIZE`: a MAKE size meaning "to the end of the user address space".
pub const XPMEM_MAXADDR_SIZE: u64 = u64::MAX;
/// `XPMEM_PERMIT_MODE`: the only supported permit type.
pub const XPMEM_PERMIT_MODE: u32 = 0x1;
/// `XPMEM_RDONLY` (GET flags and ATTACH flags).
pub const XPMEM_RDONLY: u32 = 0x1;
/// `XPMEM_RDWR` (GET flags).
pub const XPMEM_RDWR: u32 = 0x2;
/// GET flags, ORed into the access: the requester holds `CAP_IPC_OWNER` in its VM, so the
/// mode bits do not apply to it for segments of that same VM (native IPC semantics). The
/// guest kernel vouches for it, as for uid and gid; it means nothing for another VM's
/// segment.
pub const XPMEM_GET_IPC_OWNER: u32 = 0x100;

/// Identifies one VM inside a domain. Must be below [`crate::MAX_VM_ID`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VmId(pub u32);

/// Opaque non-zero process token chosen by a guest driver (one per process using
/// `/dev/xpmem`). Ownership checks compare `(VmId, OwnerToken)` pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OwnerToken(pub u64);

/// Opaque value chosen by the caller of [`crate::Domain::handle`] to match a (possibly
/// deferred) [`Action::Respond`] with its request, typically the descriptor chain head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestTag(pub u64);

/// A guest-physical address range `[start, start + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpaRange {
    /// First byte (must be page aligned).
    pub start: u64,
    /// Length in bytes (must be a non-zero multiple of [`PAGE_SIZE`]).
    pub len: u64,
}

/// What the domain needs to know about a VM when it joins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmSpec {
    /// Guest-physical RAM ranges. RESOLVE_REPLY page addresses must fall inside them.
    pub ram: Vec<GpaRange>,
    /// Size of shared-memory region 0 (read-write import aperture) in pages.
    pub rw_aperture_pages: u64,
    /// Size of shared-memory region 1 (read-only import aperture) in pages; 0 if absent.
    pub ro_aperture_pages: u64,
    /// The driver negotiated named segments (NAME and SEARCH); without it they are
    /// answered [`Status::Unsupported`].
    pub names: bool,
}

/// Which VMs may import (GET) segments exported by which VMs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ImportPolicy {
    /// Every VM may import from every VM (the default).
    #[default]
    AllToAll,
    /// Only the listed `(importer, exporter)` pairs may import, read-write where the value
    /// is true, else read-only. A VM may always import from itself, listed or not.
    Allow(BTreeMap<(VmId, VmId), bool>),
}

impl ImportPolicy {
    /// Whether `importer` may GET segments exported by `exporter` (for writing if
    /// `writable`).
    pub fn allows(&self, importer: VmId, exporter: VmId, writable: bool) -> bool {
        importer == exporter
            || match self {
                ImportPolicy::AllToAll => true,
                ImportPolicy::Allow(pairs) => pairs
                    .get(&(importer, exporter))
                    .is_some_and(|&rw| rw || !writable),
            }
    }
}

/// Domain-wide configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainConfig {
    /// Key material for segment/permit/attachment id generation. Pass a random value in
    /// production (ids are then not guessable across domains) and a constant in tests.
    pub seed: u64,
    /// Import policy checked at GET.
    pub policy: ImportPolicy,
    /// Milliseconds an importer has to acknowledge an INVALIDATE event before its slots are
    /// revoked by force (advertised as `invalidate_deadline_ms` in config space).
    pub invalidate_deadline_ms: u64,
    /// Upper bound of a FAULT prefetch window in pages (advertised as `max_fault_pages`).
    pub max_fault_pages: u32,
    /// Exclusive upper bound of guest user virtual addresses (x86-64 4-level paging:
    /// `1 << 47`). MAKE ranges must lie below it; size [`XPMEM_MAXADDR_SIZE`] extends to it.
    pub user_addr_limit: u64,
    /// Most segments one VM may hold (MAKE beyond it fails with [`Status::NoSpc`]); bounds
    /// the host memory a guest can make the domain allocate.
    pub max_segments_per_vm: u32,
    /// Most permits (apids) one VM may hold.
    pub max_permits_per_vm: u32,
    /// Most attachments one VM may hold.
    pub max_attachments_per_vm: u32,
    /// Milliseconds an exporter has to answer a RESOLVE before the FAULT fails with
    /// [`Status::Fault`]. Values below `invalidate_deadline_ms` are raised to it.
    pub resolve_timeout_ms: u64,
}

impl Default for DomainConfig {
    /// Defaults with a fixed seed: override `seed` with a random value in production.
    fn default() -> Self {
        DomainConfig {
            seed: 0x5eed_5eed_5eed_5eed,
            policy: ImportPolicy::AllToAll,
            invalidate_deadline_ms: 1000,
            max_fault_pages: 64,
            user_addr_limit: 1 << 47,
            max_segments_per_vm: 65536,
            max_permits_per_vm: 65536,
            max_attachments_per_vm: 65536,
            resolve_timeout_ms: 2000,
        }
    }
}

/// Which import aperture (virtio shared memory region) an attachment lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Window {
    /// Shared memory region 0: read-write aperture.
    Rw,
    /// Shared memory region 1: read-only aperture (`KVM_MEM_READONLY` memslot).
    Ro,
}

impl Window {
    /// The virtio shared memory region id (`shm_id` in the ATTACH response).
    pub fn shm_id(self) -> u32 {
        match self {
            Window::Rw => 0,
            Window::Ro => 1,
        }
    }
}

/// A decoded guest request. `owner` is the request header's process token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// 1 MAKE: export `[vaddr, vaddr + size)` of the owner's address space.
    Make {
        owner: OwnerToken,
        vaddr: u64,
        size: u64,
        permit_type: u32,
        permit_value: u64,
        uid: u32,
        gid: u32,
    },
    /// 2 REMOVE: withdraw a segment (owner only). Importers are revoked at once.
    Remove { owner: OwnerToken, segid: i64 },
    /// 3 GET: obtain a permit (apid) for a segment. `uid`/`gid` are the requester's;
    /// `flags` is [`XPMEM_RDONLY`] or [`XPMEM_RDWR`]; `permit_value` must be 0.
    Get {
        owner: OwnerToken,
        segid: i64,
        flags: u32,
        permit_type: u32,
        permit_value: u64,
        uid: u32,
        gid: u32,
    },
    /// 4 RELEASE: drop a permit (owner only); detaches its attachments.
    Release { owner: OwnerToken, apid: i64 },
    /// 5 ATTACH: reserve aperture pages for `[offset, offset + size)` of the segment.
    Attach {
        owner: OwnerToken,
        apid: i64,
        offset: u64,
        size: u64,
        flags: u32,
    },
    /// 6 DETACH: unmap and free an attachment (owner only).
    Detach { owner: OwnerToken, attach_id: u64 },
    /// 7 FAULT (importer): map pages `page_index..page_index + npages` of an attachment
    /// (deferred). `npages` must be at least 1; it is clamped to `max_fault_pages`, the
    /// attachment's end and the first non-empty slot. The wire FAULT's WRITE flag is not
    /// needed here: RESOLVE asks for write access whenever the attachment is read-write.
    Fault {
        owner: OwnerToken,
        attach_id: u64,
        page_index: u64,
        npages: u32,
    },
    /// 8 RESOLVE_REPLY (exporter): page addresses for a RESOLVE event, or its failure.
    /// `Err` carries the status the exporter reported (any non-OK status).
    ResolveReply {
        resolve_id: u64,
        result: Result<Vec<u64>, Status>,
    },
    /// 9 INVALIDATE (exporter): `[vaddr, vaddr + len)` of a segment is going away (deferred
    /// until every importer acknowledged or was revoked). Checked against the exporting VM
    /// only; `owner` is not compared.
    Invalidate {
        owner: OwnerToken,
        segid: i64,
        vaddr: u64,
        len: u64,
    },
    /// 10 INVALIDATE_ACK (importer).
    InvalidateAck { invalidation_id: u64 },
    /// 11 RELEASE_OWNER: the process token is gone; drop everything it holds.
    ReleaseOwner { owner: OwnerToken },
    /// 12 NAME (exporter): give a segment of `owner` a name unique in the domain. The
    /// name must satisfy [`is_valid_name`].
    Name {
        owner: OwnerToken,
        segid: i64,
        name: String,
    },
    /// 13 SEARCH: the segid of the segment named `name`, if the requester's VM may import
    /// from its VM.
    Search { owner: OwnerToken, name: String },
}

/// Longest segment name in bytes.
pub const MAX_NAME_LEN: usize = 63;

/// Whether `name` may name a segment: 1 to [`MAX_NAME_LEN`] graphic ASCII bytes.
pub fn is_valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_graphic())
}

impl Request {
    /// The protocol opcode of this request (the specification's numbering).
    pub fn opcode(&self) -> u32 {
        match self {
            Request::Make { .. } => 1,
            Request::Remove { .. } => 2,
            Request::Get { .. } => 3,
            Request::Release { .. } => 4,
            Request::Attach { .. } => 5,
            Request::Detach { .. } => 6,
            Request::Fault { .. } => 7,
            Request::ResolveReply { .. } => 8,
            Request::Invalidate { .. } => 9,
            Request::InvalidateAck { .. } => 10,
            Request::ReleaseOwner { .. } => 11,
            Request::Name { .. } => 12,
            Request::Search { .. } => 13,
        }
    }
}

/// Protocol status codes other than OK (specification 8.1, "Status codes").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, thiserror::Error)]
#[repr(u32)]
pub enum Status {
    /// 1: malformed or out-of-range request field.
    #[error("invalid argument: a field is malformed, misaligned or out of range")]
    Invalid = 1,
    /// 2: no such segid/apid/attachment/id.
    #[error("no such segment, permit, attachment or id")]
    NoEnt = 2,
    /// 3: permission denied or not the owner.
    #[error("permission denied: not the owner, mode bits or domain policy forbid it")]
    Perm = 3,
    /// 4: aperture or table full.
    #[error("no space left in the import aperture or a domain table")]
    NoSpc = 4,
    /// 5: unknown opcode or unsupported feature.
    #[error("operation not supported by this device")]
    Unsupported = 5,
    /// 6: the exporter could not resolve the pages.
    #[error("the exporter could not resolve the pages")]
    Fault = 6,
    /// 7: the pages were revoked (deadline, segment removed).
    #[error("the pages were revoked")]
    Revoked = 7,
    /// 8: the exporting VM is gone.
    #[error("the exporting VM is gone")]
    Gone = 8,
    /// 9: refused for now: the VM was revoked by force on this segment and backs off.
    #[error("refused for now: this VM missed invalidation deadlines on the segment and must back off; retry later")]
    Again = 9,
    /// 10: the name is taken, or the segment already has one.
    #[error("the name is taken by another segment, or this segment already has a name")]
    Exist = 10,
}

impl Status {
    /// The wire value of this status.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// Decodes a non-zero wire status; `None` for 0 (OK) and unknown values.
    pub fn from_code(code: u32) -> Option<Status> {
        Some(match code {
            1 => Status::Invalid,
            2 => Status::NoEnt,
            3 => Status::Perm,
            4 => Status::NoSpc,
            5 => Status::Unsupported,
            6 => Status::Fault,
            7 => Status::Revoked,
            8 => Status::Gone,
            9 => Status::Again,
            10 => Status::Exist,
            _ => return None,
        })
    }
}

/// Body of a successful response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseBody {
    /// Requests whose response has no body (REMOVE, RELEASE, DETACH, RESOLVE_REPLY,
    /// INVALIDATE_ACK, RELEASE_OWNER).
    Empty,
    /// MAKE.
    Segid(i64),
    /// GET.
    Apid(i64),
    /// ATTACH: the reserved range is `aperture_page * PAGE_SIZE` bytes into `window`.
    Attached {
        attach_id: u64,
        window: Window,
        aperture_page: u64,
    },
    /// FAULT: `mapped` pages starting at the faulting page are now mapped (>= 1).
    Mapped(u32),
    /// INVALIDATE: `targets` importer attachments had a mapped slot in the range and were
    /// sent an INVALIDATE event (a target that became moot because its attachment was
    /// detached, its importer VM left or the segment was removed still counts); `revoked`
    /// of them were revoked by force at the deadline. Both 0 when nothing was mapped.
    Invalidated { targets: u32, revoked: u32 },
}

/// Why an importer's pages were revoked (REVOKED event `reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum RevokeReason {
    /// 1: the importer did not acknowledge an invalidation before the deadline.
    Deadline = 1,
    /// 2: the exporter removed the segment.
    SegmentRemoved = 2,
    /// 3: the exporting VM went away (reset or exit).
    ExporterGone = 3,
    /// 4: the host could not keep the importer's mappings and revoked its whole window.
    Host = 4,
}

/// An event for a VM's event queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// 1 RESOLVE (to the exporter): resolve `npages` pages from `vaddr` of `segid`.
    Resolve {
        resolve_id: u64,
        segid: i64,
        vaddr: u64,
        npages: u32,
        write: bool,
    },
    /// 2 INVALIDATE (to an importer): zap user mappings of the pages, then ack.
    Invalidate {
        invalidation_id: u64,
        attach_id: u64,
        page_index: u64,
        npages: u64,
    },
    /// 3 REVOKED (to an importer): the pages are gone for good; later FAULTs fail.
    Revoked {
        attach_id: u64,
        page_index: u64,
        npages: u64,
        reason: RevokeReason,
    },
}

/// Something the device model must do, in the order returned. In particular, `Unmap`
/// actions must be applied before any `Respond` that follows them in the same batch (an
/// exporter's INVALIDATE completes only after the importer pages are gone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Complete request `tag` of `vm`.
    Respond {
        vm: VmId,
        tag: RequestTag,
        result: Result<ResponseBody, Status>,
    },
    /// Queue an event for `vm`'s event queue.
    PostEvent { vm: VmId, event: Event },
    /// Map `npages` pages of `exporter` RAM starting at `exporter_gpa` into `importer`'s
    /// `window` at `aperture_page` (`MAP_FIXED|MAP_SHARED` of the exporter's memfd).
    Map {
        importer: VmId,
        window: Window,
        aperture_page: u64,
        exporter: VmId,
        exporter_gpa: u64,
        npages: u64,
        writable: bool,
    },
    /// Replace `npages` aperture pages of `importer`'s `window` with the filler.
    Unmap {
        importer: VmId,
        window: Window,
        aperture_page: u64,
        npages: u64,
    },
    /// Replace the whole `window` of `vm` with the filler (the VM is leaving). Like every
    /// action it must be applied before the ones after it: those may complete other VMs'
    /// requests on the assumption that `vm` no longer sees any exporter page.
    RevokeWindow { vm: VmId, window: Window },
}

/// What one VM holds in the domain: the objects its guest made and has not
/// released. A guest that shut down cleanly holds nothing; whatever is left
/// is torn down by [`crate::Domain::remove_vm`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmHoldings {
    /// Segments it exports.
    pub segments: u64,
    /// Permits (apids) it holds.
    pub permits: u64,
    /// Attachments it holds.
    pub attachments: u64,
}

impl VmHoldings {
    /// True if the VM holds no object.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Snapshot of the domain's bookkeeping. "Held" counters describe live state and are all
/// zero once every VM has been removed; the others are cumulative.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// VMs currently joined.
    pub vms: u64,
    /// Live segments.
    pub segments: u64,
    /// Segment names (NAME) in use.
    pub names: u64,
    /// Live permits (apids), including ones whose segment is gone.
    pub permits: u64,
    /// Live attachments, including revoked ones not yet detached.
    pub attachments: u64,
    /// Importer aperture pages currently mapped to exporter memory.
    pub mapped_pages: u64,
    /// Reverse-map entries (one per mapped importer page).
    pub rmap_entries: u64,
    /// FAULT requests not yet answered.
    pub pending_faults: u64,
    /// RESOLVE events not yet answered by the exporter.
    pub pending_resolves: u64,
    /// Exporter INVALIDATE requests not yet answered.
    pub pending_invalidations: u64,
    /// Importer INVALIDATE events not yet acknowledged (or revoked).
    pub pending_invalidation_targets: u64,
    /// Aperture pages reserved by attachments (both windows, all VMs).
    pub aperture_pages_reserved: u64,
    /// Cumulative: events posted.
    pub events_posted: u64,
    /// Cumulative: RESOLVE events posted.
    pub resolves_issued: u64,
    /// Cumulative: RESOLVE_REPLYs discarded because an invalidation raced them.
    pub resolves_stale: u64,
    /// Cumulative: RESOLVE_REPLYs rejected as invalid (bad gpa, wrong count).
    pub resolves_rejected: u64,
    /// Cumulative: RESOLVEs not answered within the resolve timeout.
    pub resolves_timed_out: u64,
    /// Cumulative: FAULTs that joined a RESOLVE already in flight instead of sending one.
    pub resolves_shared: u64,
    /// Cumulative: exporter INVALIDATE requests accepted.
    pub invalidations_started: u64,
    /// Cumulative: exporter INVALIDATE requests answered OK.
    pub invalidations_completed: u64,
    /// Cumulative: importer targets revoked by force at the deadline.
    pub invalidations_forced: u64,
    /// Cumulative: Map actions emitted.
    pub map_actions: u64,
    /// Cumulative: Unmap actions emitted.
    pub unmap_actions: u64,
    /// Cumulative: importer windows revoked whole by the device ([`crate::Domain::window_revoked`]).
    pub windows_revoked: u64,
    /// Cumulative: back-offs started or extended by a forced revocation.
    pub backoffs_started: u64,
    /// Cumulative: ATTACHs and FAULTs refused with [`Status::Again`] during a back-off.
    pub backoff_refusals: u64,
    /// (importer VM, segment) pairs with a back-off record (current value).
    pub backoffs: u64,
}

impl Counters {
    /// Whether every "held" counter is zero (nothing leaked).
    pub fn nothing_held(&self) -> bool {
        self.vms == 0
            && self.segments == 0
            && self.names == 0
            && self.permits == 0
            && self.attachments == 0
            && self.mapped_pages == 0
            && self.rmap_entries == 0
            && self.pending_faults == 0
            && self.pending_resolves == 0
            && self.pending_invalidations == 0
            && self.pending_invalidation_targets == 0
            && self.aperture_pages_reserved == 0
    }
}
