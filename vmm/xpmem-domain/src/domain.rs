//! The domain state machine.

use crate::types::*;

/// VM ids must be below this value (they are encoded into object ids).
pub const MAX_VM_ID: u32 = 1 << crate::ids::VM_BITS;
/// How often one FAULT is resolved again after invalidations raced its resolution.
pub const MAX_RESOLVE_ATTEMPTS: u32 = 8;

/// Errors of VM management calls (guest requests never produce these; they get a
/// [`Status`] in their response instead).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DomainError {
    /// The VM id is already joined.
    #[error("VM {0:?} is already part of the xpmem domain; remove it first or pick another id")]
    DuplicateVm(VmId),
    /// The VM id is too large.
    #[error("VM id {0:?} is too large; xpmem domain VM ids must be below {MAX_VM_ID}")]
    VmIdTooLarge(VmId),
    /// A RAM range is empty, not page aligned, overflows, or overlaps another.
    #[error("RAM range {start:#x}+{len:#x} of VM {vm:?} is empty, not page aligned, overflows or overlaps another range")]
    BadRamRange { vm: VmId, start: u64, len: u64 },
    /// The VM is not joined.
    #[error("VM {0:?} is not part of the xpmem domain")]
    UnknownVm(VmId),
}

/// The xpmem domain. See the crate documentation.
pub struct Domain {
    cfg: DomainConfig,
}

impl Domain {
    /// Creates an empty domain.
    pub fn new(cfg: DomainConfig) -> Self {
        Domain { cfg }
    }

    /// The configuration the domain was created with.
    pub fn config(&self) -> &DomainConfig {
        &self.cfg
    }

    /// A VM joins (device activation). Its apertures start empty.
    pub fn add_vm(&mut self, vm: VmId, spec: VmSpec) -> Result<(), DomainError> {
        let _ = (vm, spec);
        todo!()
    }

    /// A VM leaves (device reset or VM exit), at any moment. Returns the actions for the
    /// remaining VMs: revocations of their imports from `vm`, failed FAULTs (GONE) and
    /// completed INVALIDATEs that were only waiting for `vm`.
    pub fn remove_vm(&mut self, vm: VmId, now_ms: u64) -> Result<Vec<Action>, DomainError> {
        let _ = (vm, now_ms);
        todo!()
    }

    /// Handles one guest request of `vm`. The request's own response is either among the
    /// returned actions or deferred (FAULT, INVALIDATE) to a later call.
    pub fn handle(&mut self, vm: VmId, tag: RequestTag, req: Request, now_ms: u64) -> Vec<Action> {
        let _ = (vm, tag, req, now_ms);
        todo!()
    }

    /// Advances time: forces invalidations whose deadline has passed.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Action> {
        let _ = now_ms;
        todo!()
    }

    /// The earliest pending deadline (ms), if any: call [`Domain::tick`] then.
    pub fn next_deadline(&self) -> Option<u64> {
        todo!()
    }

    /// Snapshot of the counters.
    pub fn counters(&self) -> Counters {
        todo!()
    }

    /// Importer slots mapping exporter page `gpa` of `exporter`, as
    /// `(importer, window, aperture_page, attach_id)`.
    pub fn rmap_lookup(&self, exporter: VmId, gpa: u64) -> Vec<(VmId, Window, u64, u64)> {
        let _ = (exporter, gpa);
        todo!()
    }
}
