//! The domain state machine: the [`Domain`] struct, its public entry points and the
//! dispatch of guest requests to the files that handle them, plus the helpers they share
//! (responses, events, serial numbers and ids).
//!
//! The work is split by responsibility: `requests.rs` (MAKE, NAME, SEARCH, REMOVE, GET,
//! RELEASE, ATTACH, DETACH), `faults.rs` (FAULT, RESOLVE_REPLY), `invalidate.rs`
//! (INVALIDATE, INVALIDATE_ACK, deadlines, back-off, revoked windows), `lifecycle.rs`
//! (joining, leaving, RELEASE_OWNER and teardown of objects), `slots.rs` (attachment slots
//! and the reverse map), `invariants.rs` (counters and the self-check), `state.rs` (the
//! records kept per object).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::ids::{IdCipher, IdKind};
use crate::types::*;

mod faults;
mod invalidate;
mod invariants;
mod lifecycle;
mod requests;
mod slots;
mod state;

use state::{
    Attachment, Backoff, InvTarget, Invalidation, PendingFault, PendingResolve, Permit, Segment,
    TargetEnd, VmState,
};

/// VM ids must be below this value (they are encoded into object ids).
pub const MAX_VM_ID: u32 = 1 << crate::ids::VM_BITS;
/// How often one FAULT is resolved before it fails with [`Status::Fault`] (invalidations
/// racing the resolution cause re-resolves).
pub const MAX_RESOLVE_ATTEMPTS: u32 = 8;
/// Guest-physical addresses must be below this (the reverse map packs `(vm, pfn)` in 64 bits).
pub const MAX_GPA: u64 = 1 << 56;
/// Apertures are limited to this many pages per window (reverse-map entries pack the page
/// index of an attachment in 32 bits).
pub const MAX_APERTURE_PAGES: u64 = 1 << 32;
/// A back-off lasts the invalidation deadline times `2^(strikes - 1)`, doubling up to this
/// many times.
pub const MAX_BACKOFF_DOUBLINGS: u32 = 6;

/// Errors of VM management calls (guest requests never produce these; they get a
/// [`Status`] in their response instead).
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum DomainError {
    /// The VM id is already joined.
    #[error("VM {0:?} is already part of the xpmem domain; remove it first or pick another id")]
    DuplicateVm(VmId),
    /// The VM id is too large.
    #[error("VM id {0:?} is too large; xpmem domain VM ids must be below {MAX_VM_ID}")]
    VmIdTooLarge(VmId),
    /// A RAM range is empty, not page aligned, too high, or overlaps another.
    #[error("RAM range {start:#x}+{len:#x} of VM {vm:?} is empty, not page aligned, ends above {MAX_GPA:#x} or overlaps another range")]
    BadRamRange { vm: VmId, start: u64, len: u64 },
    /// An aperture is larger than supported.
    #[error("import aperture of VM {vm:?} has {pages} pages; at most {MAX_APERTURE_PAGES} are supported")]
    ApertureTooLarge { vm: VmId, pages: u64 },
    /// The VM is not joined.
    #[error("VM {0:?} is not part of the xpmem domain; add it with add_vm first")]
    UnknownVm(VmId),
}

/// One importer page mapping exporter memory, as reported by [`Domain::mappings`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mapping {
    /// Exporting VM.
    pub exporter: VmId,
    /// Exporter guest-physical page address.
    pub exporter_gpa: u64,
    /// Importing VM.
    pub importer: VmId,
    /// Importer aperture window.
    pub window: Window,
    /// Page within the window.
    pub aperture_page: u64,
    /// Attachment the slot belongs to.
    pub attach_id: u64,
}

/// The xpmem domain. See the crate documentation.
pub struct Domain {
    cfg: DomainConfig,
    ids: IdCipher,
    vms: BTreeMap<VmId, VmState>,
    segments: HashMap<i64, Segment>,
    /// Segment names (NAME, SEARCH), unique in the domain; dropped with the segment.
    names: BTreeMap<String, i64>,
    permits: HashMap<i64, Permit>,
    /// Attachments in a slab; reverse-map entries name them by slab index.
    slab: Vec<Option<Attachment>>,
    slab_free: Vec<u32>,
    attach_index: HashMap<u64, u32>,
    /// Reverse map: `(rmap_key, slab index << 32 | page index)`. 16 bytes per mapped page
    /// plus B-tree node overhead.
    rmap: BTreeSet<(u64, u64)>,
    faults: BTreeMap<u64, PendingFault>,
    /// resolve_id -> fault key.
    resolves: HashMap<u64, PendingResolve>,
    invalidations: BTreeMap<u64, Invalidation>,
    targets: BTreeMap<u64, InvTarget>,
    /// Per-VM id counters; kept after a VM leaves so that ids are never reused.
    id_counters: BTreeMap<VmId, u64>,
    next_serial: u64,
    /// Latest time seen from the caller (ms); time never goes backwards here.
    now_ms: u64,
    mapped_pages: u64,
    /// Back-offs by (importer VM, segid); dropped with the segment or the VM.
    backoffs: HashMap<(VmId, i64), Backoff>,
    stats: Counters,
}

type Out = Vec<Action>;

impl Domain {
    /// Creates an empty domain.
    pub fn new(cfg: DomainConfig) -> Self {
        Domain {
            ids: IdCipher::new(cfg.seed),
            cfg,
            vms: BTreeMap::new(),
            segments: HashMap::new(),
            names: BTreeMap::new(),
            permits: HashMap::new(),
            slab: Vec::new(),
            slab_free: Vec::new(),
            attach_index: HashMap::new(),
            rmap: BTreeSet::new(),
            faults: BTreeMap::new(),
            resolves: HashMap::new(),
            invalidations: BTreeMap::new(),
            targets: BTreeMap::new(),
            id_counters: BTreeMap::new(),
            next_serial: 1,
            now_ms: 0,
            mapped_pages: 0,
            backoffs: HashMap::new(),
            stats: Counters::default(),
        }
    }

    /// The configuration the domain was created with.
    pub fn config(&self) -> &DomainConfig {
        &self.cfg
    }

    /// Decodes the exporting VM of a segment id (whether or not the segment still exists);
    /// `None` if `segid` cannot have been issued by this domain.
    pub fn segid_vm(&self, segid: i64) -> Option<VmId> {
        self.ids.decode(IdKind::Segment, segid).map(|(vm, _)| vm)
    }

    /// Handles one guest request of `vm`. The request's own response is either among the
    /// returned actions or deferred (FAULT, INVALIDATE) to a later call. Requests from a VM
    /// that is not joined are answered with [`Status::NoEnt`].
    pub fn handle(&mut self, vm: VmId, tag: RequestTag, req: Request, now_ms: u64) -> Vec<Action> {
        self.now_ms = self.now_ms.max(now_ms);
        let mut out = Vec::new();
        if !self.vms.contains_key(&vm) {
            out.push(Action::Respond {
                vm,
                tag,
                result: Err(Status::NoEnt),
            });
            return out;
        }
        let result = match req {
            Request::Make {
                owner,
                vaddr,
                size,
                permit_type,
                permit_value,
                uid,
                gid,
            } => self.make(vm, owner, vaddr, size, permit_type, permit_value, uid, gid),
            Request::Remove { owner, segid } => self.remove(vm, owner, segid, &mut out),
            Request::Get {
                owner,
                segid,
                flags,
                permit_type,
                permit_value,
                uid,
                gid,
            } => self.get(vm, owner, segid, flags, permit_type, permit_value, uid, gid),
            Request::Release { owner, apid } => self.release(vm, owner, apid, &mut out),
            Request::Attach {
                owner,
                apid,
                offset,
                size,
                flags,
            } => self.attach(vm, owner, apid, offset, size, flags),
            Request::Detach { owner, attach_id } => self.detach(vm, owner, attach_id, &mut out),
            Request::Fault {
                owner,
                attach_id,
                page_index,
                npages,
            } => self.fault(vm, tag, owner, attach_id, page_index, npages, &mut out),
            Request::ResolveReply { resolve_id, result } => {
                self.resolve_reply(vm, resolve_id, result, &mut out)
            }
            Request::Invalidate {
                owner,
                segid,
                vaddr,
                len,
            } => self.invalidate(vm, tag, owner, segid, vaddr, len, now_ms, &mut out),
            Request::InvalidateAck { invalidation_id } => {
                self.invalidate_ack(vm, invalidation_id, &mut out)
            }
            Request::ReleaseOwner { owner } => self.release_owner(vm, owner, &mut out),
            Request::Name { owner, segid, name } => Some(self.name(vm, owner, segid, name)),
            Request::Search { owner, name } => Some(self.search(vm, owner, &name)),
        };
        if let Some(result) = result {
            self.respond(vm, tag, result, &mut out);
        }
        out
    }

    /// Advances time: every pending INVALIDATE whose deadline is `<= now_ms` is completed by
    /// force; importers that did not acknowledge lose the pages (Unmap + REVOKED with reason
    /// [`RevokeReason::Deadline`]) and later FAULTs of them fail with [`Status::Revoked`].
    /// Every RESOLVE not answered within the resolve timeout is forgotten and its FAULT
    /// fails with [`Status::Fault`].
    pub fn tick(&mut self, now_ms: u64) -> Vec<Action> {
        self.now_ms = self.now_ms.max(now_ms);
        let now_ms = self.now_ms;
        let mut out = Vec::new();
        let due: Vec<u64> = keys_where(&self.invalidations, |i| i.deadline <= now_ms);
        for k in due {
            let targets: Vec<u64> = match self.invalidations.get(&k) {
                Some(inv) => inv.targets.iter().copied().collect(),
                None => continue,
            };
            for t in targets {
                self.finish_target(t, TargetEnd::Deadline, &mut out);
            }
        }
        let late: Vec<u64> = keys_where(&self.resolves, |r| r.due_ms <= now_ms);
        for rid in late {
            if let Some(r) = self.resolves.remove(&rid) {
                self.stats.resolves_timed_out += 1;
                for k in r.faults {
                    self.fail_fault(k, Status::Fault, &mut out);
                }
            }
        }
        out
    }

    /// The earliest pending deadline (ms: invalidation deadline or resolve timeout), if
    /// any: call [`Domain::tick`] then.
    pub fn next_deadline(&self) -> Option<u64> {
        let inv = self.invalidations.values().map(|i| i.deadline);
        let res = self.resolves.values().map(|r| r.due_ms);
        inv.chain(res).min()
    }

    /// The resolve timeout in effect: the configured one, but never shorter than the
    /// invalidation deadline (an exporter may be blocked in an invalidation that long).
    pub fn resolve_timeout_ms(&self) -> u64 {
        self.cfg
            .resolve_timeout_ms
            .max(self.cfg.invalidate_deadline_ms)
    }

    fn respond(
        &mut self,
        vm: VmId,
        tag: RequestTag,
        result: Result<ResponseBody, Status>,
        out: &mut Out,
    ) {
        if self.vms.contains_key(&vm) {
            out.push(Action::Respond { vm, tag, result });
        }
    }

    fn post(&mut self, vm: VmId, event: Event, out: &mut Out) {
        if self.vms.contains_key(&vm) {
            self.stats.events_posted += 1;
            out.push(Action::PostEvent { vm, event });
        }
    }

    fn serial(&mut self) -> u64 {
        let s = self.next_serial;
        self.next_serial += 1;
        s
    }

    fn new_id(&mut self, kind: IdKind, vm: VmId) -> Option<i64> {
        // Counters survive remove_vm: ids of a VM's earlier incarnation never come back.
        let ctr = self.id_counters.entry(vm).or_insert(0);
        if *ctr >= crate::ids::MAX_COUNTER {
            return None;
        }
        let c = *ctr;
        *ctr += 1;
        Some(self.ids.encode(kind, vm, c))
    }

    /// A new id for one more segment or permit of `vm`, recorded in the
    /// VM's `held` set; NOSPC past the per-VM `max` or when ids run out.
    fn take_held_id(
        &mut self,
        vm: VmId,
        kind: IdKind,
        max: u32,
        held: fn(&mut VmState) -> &mut BTreeSet<i64>,
    ) -> Result<i64, Status> {
        let st = self.vms.get_mut(&vm).ok_or(Status::NoEnt)?;
        if held(st).len() >= max as usize {
            return Err(Status::NoSpc);
        }
        let id = self.new_id(kind, vm).ok_or(Status::NoSpc)?;
        if let Some(st) = self.vms.get_mut(&vm) {
            held(st).insert(id);
        }
        Ok(id)
    }
}

/// Keys of the entries of `map` whose value satisfies `pred`, collected so the
/// map can be changed while they are visited.
fn keys_where<'a, K: Copy + 'a, V: 'a, C: FromIterator<K>>(
    map: impl IntoIterator<Item = (&'a K, &'a V)>,
    pred: impl Fn(&V) -> bool,
) -> C {
    map.into_iter()
        .filter(|(_, v)| pred(v))
        .map(|(&k, _)| k)
        .collect()
}
