//! The records the domain keeps: per-VM state, segments, permits, attachments, pending
//! FAULTs and RESOLVEs, invalidations and their targets, back-offs.

use std::collections::BTreeSet;

use crate::aperture_alloc::ApertureAllocator;
use crate::types::{OwnerToken, RequestTag, VmId, Window, PAGE_SIZE};

pub(super) struct VmState {
    /// RAM ranges as sorted, non-overlapping `(start, end)`.
    pub(super) ram: Vec<(u64, u64)>,
    pub(super) rw: ApertureAllocator,
    pub(super) ro: ApertureAllocator,
    /// Ids of the segments, permits and attachments this VM holds (per-VM limits, and
    /// teardown without scanning other VMs' objects).
    pub(super) segs: BTreeSet<i64>,
    pub(super) permits: BTreeSet<i64>,
    pub(super) atts: BTreeSet<u64>,
    /// The driver negotiated NAME and SEARCH.
    pub(super) names: bool,
}

impl VmState {
    pub(super) fn ram_contains_page(&self, gpa: u64) -> bool {
        let idx = self.ram.partition_point(|&(start, _)| start <= gpa);
        idx > 0 && {
            let (_, end) = self.ram[idx - 1];
            gpa.checked_add(PAGE_SIZE).is_some_and(|e| e <= end)
        }
    }

    pub(super) fn aperture(&mut self, w: Window) -> &mut ApertureAllocator {
        match w {
            Window::Rw => &mut self.rw,
            Window::Ro => &mut self.ro,
        }
    }
}

pub(super) struct Segment {
    pub(super) vm: VmId,
    pub(super) owner: OwnerToken,
    pub(super) vaddr: u64,
    pub(super) size: u64,
    pub(super) mode: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) attachments: BTreeSet<u64>,
    pub(super) invalidations: BTreeSet<u64>,
    /// Its entry in [`Domain::names`], if it was named.
    pub(super) name: Option<String>,
}

pub(super) struct Permit {
    pub(super) vm: VmId,
    pub(super) owner: OwnerToken,
    pub(super) segid: i64,
    pub(super) exporter: VmId,
    pub(super) writable: bool,
    pub(super) attachments: BTreeSet<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum AttState {
    Live,
    SegmentRemoved,
    ExporterGone,
}

pub(super) struct Attachment {
    pub(super) id: u64,
    pub(super) importer: VmId,
    pub(super) owner: OwnerToken,
    pub(super) apid: i64,
    pub(super) segid: i64,
    pub(super) exporter: VmId,
    /// Exporter virtual address of page 0.
    pub(super) vaddr: u64,
    pub(super) window: Window,
    pub(super) aperture_page: u64,
    pub(super) writable: bool,
    pub(super) state: AttState,
    /// One entry per page: `SLOT_EMPTY`, `SLOT_REVOKED` or `gpa | SLOT_MAPPED`.
    pub(super) slots: Vec<u64>,
}

impl Attachment {
    pub(super) fn npages(&self) -> u64 {
        self.slots.len() as u64
    }

    /// Slot `page`, if the attachment has that page.
    pub(super) fn slot(&self, page: u64) -> Option<u64> {
        self.slots.get(usize::try_from(page).ok()?).copied()
    }

    /// Slot `page` for writing, if the attachment has that page.
    pub(super) fn slot_mut(&mut self, page: u64) -> Option<&mut u64> {
        self.slots.get_mut(usize::try_from(page).ok()?)
    }
}

pub(super) enum FaultState {
    /// Waiting for RESOLVE `resolve_id`, which covers this FAULT's window.
    Resolving {
        resolve_id: u64,
    },
    Parked,
    Idle,
}

/// A RESOLVE sent to an exporter; several FAULTs (of any importer) whose windows lie
/// inside its range share it.
pub(super) struct PendingResolve {
    pub(super) exporter: VmId,
    pub(super) segid: i64,
    pub(super) vaddr: u64,
    pub(super) npages: u64,
    pub(super) write: bool,
    /// An overlapping INVALIDATE was processed after the RESOLVE was sent.
    pub(super) stale: bool,
    /// When the exporter's reply is due (resolve timeout).
    pub(super) due_ms: u64,
    /// FAULT keys waiting for it (never empty).
    pub(super) faults: Vec<u64>,
}

pub(super) struct PendingFault {
    pub(super) importer: VmId,
    pub(super) tag: RequestTag,
    pub(super) attach_id: u64,
    pub(super) page_index: u64,
    /// Prefetch window in pages, already clamped.
    pub(super) want: u64,
    pub(super) attempts: u32,
    pub(super) state: FaultState,
}

pub(super) struct Invalidation {
    pub(super) exporter: VmId,
    pub(super) tag: RequestTag,
    pub(super) segid: i64,
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) deadline: u64,
    /// Targets not finished yet.
    pub(super) targets: BTreeSet<u64>,
    /// Targets the invalidation started with (reported in the response).
    pub(super) ntargets: u32,
    /// Targets revoked by force at the deadline (reported in the response).
    pub(super) revoked: u32,
}

/// How an invalidation target ends.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum TargetEnd {
    /// Acknowledged (or moot): the slots become empty and may be faulted again.
    Acked,
    /// Missed the deadline: the slots are revoked for good, the importer backs off.
    Deadline,
    /// The device revoked the importer's whole window: already unmapped.
    WindowRevoked,
}

/// Forced revocations of one importer VM on one segment: until `until_ms` its ATTACHs and
/// FAULTs on the segment are refused, so a VM that never acknowledges cannot stall each of
/// the exporter's invalidations by a full deadline.
pub(super) struct Backoff {
    pub(super) strikes: u32,
    pub(super) until_ms: u64,
}

pub(super) struct InvTarget {
    pub(super) inv: u64,
    pub(super) importer: VmId,
    pub(super) attach_id: u64,
    pub(super) page_index: u64,
    pub(super) npages: u64,
}
