//! The domain state machine.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::aperture::ApertureAllocator;
use crate::ids::{IdCipher, IdKind};
use crate::types::*;

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

// Slot encoding in `Attachment::slots`: empty, revoked, or `gpa | SLOT_MAPPED`.
const SLOT_EMPTY: u64 = 0;
const SLOT_REVOKED: u64 = 2;
const SLOT_MAPPED: u64 = 1;

fn slot_gpa(slot: u64) -> Option<u64> {
    (slot & SLOT_MAPPED != 0).then_some(slot & !(PAGE_SIZE - 1))
}

struct VmState {
    /// RAM ranges as sorted, non-overlapping `(start, end)`.
    ram: Vec<(u64, u64)>,
    rw: ApertureAllocator,
    ro: ApertureAllocator,
    /// Ids of the segments, permits and attachments this VM holds (per-VM limits, and
    /// teardown without scanning other VMs' objects).
    segs: BTreeSet<i64>,
    permits: BTreeSet<i64>,
    atts: BTreeSet<u64>,
    /// The driver negotiated NAME and SEARCH.
    names: bool,
}

impl VmState {
    fn ram_contains_page(&self, gpa: u64) -> bool {
        let idx = self.ram.partition_point(|&(start, _)| start <= gpa);
        idx > 0 && {
            let (_, end) = self.ram[idx - 1];
            gpa.checked_add(PAGE_SIZE).is_some_and(|e| e <= end)
        }
    }

    fn aperture(&mut self, w: Window) -> &mut ApertureAllocator {
        match w {
            Window::Rw => &mut self.rw,
            Window::Ro => &mut self.ro,
        }
    }
}

struct Segment {
    vm: VmId,
    owner: OwnerToken,
    vaddr: u64,
    size: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    attachments: BTreeSet<u64>,
    invalidations: BTreeSet<u64>,
    /// Its entry in [`Domain::names`], if it was named.
    name: Option<String>,
}

struct Permit {
    vm: VmId,
    owner: OwnerToken,
    segid: i64,
    exporter: VmId,
    writable: bool,
    attachments: BTreeSet<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum AttState {
    Live,
    SegmentRemoved,
    ExporterGone,
}

struct Attachment {
    id: u64,
    importer: VmId,
    owner: OwnerToken,
    apid: i64,
    segid: i64,
    exporter: VmId,
    /// Exporter virtual address of page 0.
    vaddr: u64,
    window: Window,
    aperture_page: u64,
    writable: bool,
    state: AttState,
    /// One entry per page: `SLOT_EMPTY`, `SLOT_REVOKED` or `gpa | SLOT_MAPPED`.
    slots: Vec<u64>,
}

impl Attachment {
    fn npages(&self) -> u64 {
        self.slots.len() as u64
    }
}

enum FaultState {
    /// Waiting for RESOLVE `resolve_id`, which covers this FAULT's window.
    Resolving {
        resolve_id: u64,
    },
    Parked,
    Idle,
}

/// A RESOLVE sent to an exporter; several FAULTs (of any importer) whose windows lie
/// inside its range share it.
struct PendingResolve {
    exporter: VmId,
    segid: i64,
    vaddr: u64,
    npages: u64,
    write: bool,
    /// An overlapping INVALIDATE was processed after the RESOLVE was sent.
    stale: bool,
    /// When the exporter's reply is due (resolve timeout).
    due_ms: u64,
    /// FAULT keys waiting for it (never empty).
    faults: Vec<u64>,
}

struct PendingFault {
    importer: VmId,
    tag: RequestTag,
    attach_id: u64,
    page_index: u64,
    /// Prefetch window in pages, already clamped.
    want: u64,
    attempts: u32,
    state: FaultState,
}

struct Invalidation {
    exporter: VmId,
    tag: RequestTag,
    segid: i64,
    start: u64,
    end: u64,
    deadline: u64,
    /// Targets not finished yet.
    targets: BTreeSet<u64>,
    /// Targets the invalidation started with (reported in the response).
    ntargets: u32,
    /// Targets revoked by force at the deadline (reported in the response).
    revoked: u32,
}

/// How an invalidation target ends.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum TargetEnd {
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
struct Backoff {
    strikes: u32,
    until_ms: u64,
}

struct InvTarget {
    inv: u64,
    importer: VmId,
    attach_id: u64,
    page_index: u64,
    npages: u64,
}

/// Reverse-map key: `(exporter vm, exporter pfn)` packed into 64 bits.
fn rmap_key(exporter: VmId, gpa: u64) -> u64 {
    (u64::from(exporter.0) << 44) | (gpa >> PAGE_SHIFT)
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

    /// A VM joins (device activation). Its apertures start empty.
    pub fn add_vm(&mut self, vm: VmId, spec: VmSpec) -> Result<(), DomainError> {
        if vm.0 >= MAX_VM_ID {
            return Err(DomainError::VmIdTooLarge(vm));
        }
        if self.vms.contains_key(&vm) {
            return Err(DomainError::DuplicateVm(vm));
        }
        for pages in [spec.rw_aperture_pages, spec.ro_aperture_pages] {
            if pages > MAX_APERTURE_PAGES {
                return Err(DomainError::ApertureTooLarge { vm, pages });
            }
        }
        let mut ram = Vec::with_capacity(spec.ram.len());
        for r in &spec.ram {
            let bad = DomainError::BadRamRange {
                vm,
                start: r.start,
                len: r.len,
            };
            let end = r.start.checked_add(r.len).ok_or_else(|| bad.clone())?;
            if r.len == 0 || r.start % PAGE_SIZE != 0 || r.len % PAGE_SIZE != 0 || end > MAX_GPA {
                return Err(bad);
            }
            ram.push((r.start, end));
        }
        ram.sort_unstable();
        for w in ram.windows(2) {
            if w[0].1 > w[1].0 {
                return Err(DomainError::BadRamRange {
                    vm,
                    start: w[1].0,
                    len: w[1].1 - w[1].0,
                });
            }
        }
        self.vms.insert(
            vm,
            VmState {
                ram,
                rw: ApertureAllocator::new(spec.rw_aperture_pages),
                ro: ApertureAllocator::new(spec.ro_aperture_pages),
                segs: BTreeSet::new(),
                permits: BTreeSet::new(),
                atts: BTreeSet::new(),
                names: spec.names,
            },
        );
        Ok(())
    }

    /// A VM leaves (device reset or VM exit), at any moment. Returns first
    /// [`Action::RevokeWindow`] for both of `vm`'s windows (it may still be running and
    /// reading them), then the actions for the remaining VMs: revocations of their imports
    /// from `vm` (Unmap + REVOKED with reason [`RevokeReason::ExporterGone`]), their FAULTs
    /// on `vm`'s segments failing with [`Status::Gone`], and INVALIDATEs of other exporters
    /// that were only waiting for `vm` to acknowledge, now answered. Nothing else is
    /// emitted towards `vm`: its queues are torn down by the device. `vm`'s own pending
    /// requests are dropped.
    pub fn remove_vm(&mut self, vm: VmId, now_ms: u64) -> Result<Vec<Action>, DomainError> {
        self.now_ms = self.now_ms.max(now_ms);
        let Some(st) = self.vms.remove(&vm) else {
            return Err(DomainError::UnknownVm(vm));
        };
        // Its windows go before anything that completes another VM's request.
        let mut out = vec![
            Action::RevokeWindow {
                vm,
                window: Window::Rw,
            },
            Action::RevokeWindow {
                vm,
                window: Window::Ro,
            },
        ];
        self.backoffs.retain(|&(importer, _), _| importer != vm);
        // Its own pending FAULTs are dropped with their resolves.
        let own_faults: Vec<u64> = keys_where(&self.faults, |f| f.importer == vm);
        for k in own_faults {
            self.drop_fault(k);
        }
        // Its exporter invalidations are dropped (nobody to answer).
        let own_invs: Vec<u64> = keys_where(&self.invalidations, |i| i.exporter == vm);
        for k in own_invs {
            self.drop_invalidation(k);
        }
        // Invalidation targets waiting for it count as acknowledged.
        let own_targets: Vec<u64> = keys_where(&self.targets, |t| t.importer == vm);
        for t in own_targets {
            self.finish_target(t, TargetEnd::Acked, &mut out);
        }
        // Its attachments and permits.
        for a in st.atts {
            self.detach_internal(a, &mut out);
        }
        for p in st.permits {
            self.release_internal(p, &mut out);
        }
        // Its segments: importers are revoked.
        for s in st.segs {
            self.remove_segment(s, RevokeReason::ExporterGone, &mut out);
        }
        Ok(out)
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

    /// Snapshot of the counters.
    /// What `vm` holds now (None: not a member).
    pub fn vm_holdings(&self, vm: VmId) -> Option<VmHoldings> {
        self.vms.get(&vm).map(|st| VmHoldings {
            segments: st.segs.len() as u64,
            permits: st.permits.len() as u64,
            attachments: st.atts.len() as u64,
        })
    }

    pub fn counters(&self) -> Counters {
        let mut c = self.stats.clone();
        c.vms = self.vms.len() as u64;
        c.segments = self.segments.len() as u64;
        c.names = self.names.len() as u64;
        c.permits = self.permits.len() as u64;
        c.attachments = self.attach_index.len() as u64;
        c.mapped_pages = self.mapped_pages;
        c.backoffs = self.backoffs.len() as u64;
        c.rmap_entries = self.rmap.len() as u64;
        c.pending_faults = self.faults.len() as u64;
        c.pending_resolves = self.resolves.len() as u64;
        c.pending_invalidations = self.invalidations.len() as u64;
        c.pending_invalidation_targets = self.targets.len() as u64;
        c.aperture_pages_reserved = self
            .vms
            .values()
            .map(|v| v.rw.reserved() + v.ro.reserved())
            .sum();
        c
    }

    /// Importer slots mapping exporter page `gpa` of `exporter` (reverse-map lookup).
    pub fn rmap_lookup(&self, exporter: VmId, gpa: u64) -> Vec<Mapping> {
        let key = rmap_key(exporter, gpa & !(PAGE_SIZE - 1));
        self.rmap
            .range((key, 0)..=(key, u64::MAX))
            .filter_map(|&(_, e)| self.rmap_entry_mapping(exporter, e))
            .collect()
    }

    /// Estimated heap bytes of the reverse map. Entries are 16 bytes in B-tree leaves of
    /// 11 (192 bytes per leaf); leaves filled in ascending order stay about half full, so
    /// this assumes 5.5 entries per leaf (35 bytes per mapped page). `benches/domain.rs`
    /// measured 26-35 bytes per mapped page with a counting allocator.
    pub fn rmap_heap_bytes_estimate(&self) -> u64 {
        (self.rmap.len() as u64 * 192).div_ceil(11) * 2
    }

    /// The device could not apply an [`Action::Map`] (for example `mmap` failed): the domain
    /// forgets those slots again (they become empty and their reverse-map entries are
    /// dropped), so a later FAULT resolves them anew. The device must make sure the pages
    /// show the filler. Pages of the range that are not mapped are left alone.
    pub fn map_failed(&mut self, importer: VmId, window: Window, aperture_page: u64, npages: u64) {
        let atts: Vec<(u64, u64, u64)> = self
            .attach_index
            .keys()
            .filter_map(|&id| {
                let a = self.att(id)?;
                let end = aperture_page.checked_add(npages)?;
                let a_end = a.aperture_page + a.npages();
                if a.importer != importer
                    || a.window != window
                    || a.aperture_page >= end
                    || aperture_page >= a_end
                {
                    return None;
                }
                let lo = aperture_page.max(a.aperture_page) - a.aperture_page;
                let hi = end.min(a_end) - a.aperture_page;
                Some((id, lo, hi))
            })
            .collect();
        let mut ignored = Vec::new();
        for (id, lo, hi) in atts {
            self.clear_slots(id, lo, hi, false, &mut ignored);
        }
        // The Unmap actions describe what the device already did (nothing is mapped there).
        self.stats.unmap_actions -= ignored.len() as u64;
    }

    /// Every mapping in the reverse map (for tests and diagnostics).
    pub fn mappings(&self) -> Vec<Mapping> {
        self.rmap
            .iter()
            .filter_map(|&(key, e)| self.rmap_entry_mapping(VmId((key >> 44) as u32), e))
            .collect()
    }

    /// Verifies internal consistency (reverse map vs. slots, counters, aperture accounting,
    /// cross references). Meant for tests; cost is linear in the domain's size.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut mapped = 0u64;
        let mut reserved: BTreeMap<(VmId, Window), u64> = BTreeMap::new();
        for (&id, &idx) in &self.attach_index {
            let a = self
                .slab
                .get(idx as usize)
                .and_then(|s| s.as_ref())
                .ok_or(format!("attachment {id:#x} index {idx} empty"))?;
            if a.id != id {
                return Err(format!("attachment {id:#x} slab mismatch"));
            }
            if !self.vms.contains_key(&a.importer) {
                return Err(format!("attachment {id:#x} of removed importer"));
            }
            *reserved.entry((a.importer, a.window)).or_default() += a.npages();
            if a.state == AttState::Live {
                let seg = self
                    .segments
                    .get(&a.segid)
                    .ok_or(format!("live attachment {id:#x} without segment"))?;
                if !seg.attachments.contains(&id) {
                    return Err(format!("segment does not list attachment {id:#x}"));
                }
            }
            let p = self
                .permits
                .get(&a.apid)
                .ok_or(format!("attachment {id:#x} without permit"))?;
            if !p.attachments.contains(&id) {
                return Err(format!("permit does not list attachment {id:#x}"));
            }
            for (i, &s) in a.slots.iter().enumerate() {
                if let Some(gpa) = slot_gpa(s) {
                    mapped += 1;
                    let e = (u64::from(idx) << 32) | i as u64;
                    if !self.rmap.contains(&(rmap_key(a.exporter, gpa), e)) {
                        return Err(format!("slot {i} of {id:#x} mapped but not in rmap"));
                    }
                    if a.state != AttState::Live {
                        return Err(format!("revoked attachment {id:#x} has mapped slot"));
                    }
                }
            }
        }
        if mapped != self.mapped_pages || mapped != self.rmap.len() as u64 {
            return Err(format!(
                "mapped slots {mapped}, counter {}, rmap {}",
                self.mapped_pages,
                self.rmap.len()
            ));
        }
        for (&vm, st) in &self.vms {
            let segs: BTreeSet<i64> = keys_where(&self.segments, |s| s.vm == vm);
            let perms: BTreeSet<i64> = keys_where(&self.permits, |p| p.vm == vm);
            let atts: BTreeSet<u64> = self
                .attach_index
                .keys()
                .copied()
                .filter(|&id| self.att(id).is_some_and(|a| a.importer == vm))
                .collect();
            if segs != st.segs || perms != st.permits || atts != st.atts {
                return Err(format!("per-VM object counts of {vm:?} off"));
            }
            for w in [Window::Rw, Window::Ro] {
                let r = match w {
                    Window::Rw => st.rw.reserved(),
                    Window::Ro => st.ro.reserved(),
                };
                if r != reserved.get(&(vm, w)).copied().unwrap_or(0) {
                    return Err(format!("aperture accounting of {vm:?} {w:?} off"));
                }
            }
        }
        for (&k, f) in &self.faults {
            if let FaultState::Resolving { resolve_id } = f.state {
                if !self
                    .resolves
                    .get(&resolve_id)
                    .is_some_and(|r| r.faults.contains(&k))
                {
                    return Err(format!("fault {k} resolve {resolve_id} not indexed"));
                }
            }
        }
        for (rid, r) in &self.resolves {
            if r.faults.is_empty() {
                return Err(format!("resolve {rid} without faults"));
            }
            for k in &r.faults {
                if !self
                    .faults
                    .get(k)
                    .is_some_and(|f| matches!(f.state, FaultState::Resolving { resolve_id } if resolve_id == *rid))
                {
                    return Err(format!("resolve {rid} lists fault {k} that does not wait for it"));
                }
            }
        }
        let mut ntargets = 0;
        for (k, inv) in &self.invalidations {
            if inv.targets.is_empty() {
                return Err(format!("invalidation {k} without targets still pending"));
            }
            for t in &inv.targets {
                match self.targets.get(t) {
                    Some(tt) if tt.inv == *k => ntargets += 1,
                    _ => return Err(format!("target {t} of invalidation {k} missing")),
                }
            }
        }
        if ntargets != self.targets.len() {
            return Err("orphan invalidation targets".into());
        }
        for &(vm, segid) in self.backoffs.keys() {
            if !self.vms.contains_key(&vm) || !self.segments.contains_key(&segid) {
                return Err(format!(
                    "back-off of {vm:?} on {segid:#x} outlived its VM or segment"
                ));
            }
        }
        for (name, segid) in &self.names {
            if self.segments.get(segid).and_then(|s| s.name.as_ref()) != Some(name) {
                return Err(format!("name {name:?} outlived segment {segid:#x}"));
            }
        }
        let named = self.segments.values().filter(|s| s.name.is_some()).count();
        if named != self.names.len() {
            return Err(format!(
                "{named} named segments but {} names",
                self.names.len()
            ));
        }
        Ok(())
    }

    // ----- helpers -----

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

    fn att(&self, id: u64) -> Option<&Attachment> {
        let idx = *self.attach_index.get(&id)?;
        self.slab.get(idx as usize)?.as_ref()
    }

    fn att_mut(&mut self, id: u64) -> Option<&mut Attachment> {
        let idx = *self.attach_index.get(&id)?;
        self.slab.get_mut(idx as usize)?.as_mut()
    }

    fn rmap_entry_mapping(&self, exporter: VmId, e: u64) -> Option<Mapping> {
        let idx = (e >> 32) as usize;
        let page = e & 0xffff_ffff;
        let a = self.slab.get(idx)?.as_ref()?;
        let gpa = slot_gpa(*a.slots.get(page as usize)?)?;
        Some(Mapping {
            exporter,
            exporter_gpa: gpa,
            importer: a.importer,
            window: a.window,
            aperture_page: a.aperture_page + page,
            attach_id: a.id,
        })
    }

    /// Clears mapped slots `[lo, hi)` of an attachment (dropping rmap entries) and emits
    /// coalesced Unmap actions; with `revoke`, every slot in the range becomes revoked.
    fn clear_slots(&mut self, attach_id: u64, lo: u64, hi: u64, revoke: bool, out: &mut Out) {
        let Some(&idx) = self.attach_index.get(&attach_id) else {
            return;
        };
        let Some(a) = self.slab.get_mut(idx as usize).and_then(|s| s.as_mut()) else {
            return;
        };
        let hi = hi.min(a.npages());
        let (importer, window, base, exporter) =
            (a.importer, a.window, a.aperture_page, a.exporter);
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut removed = 0u64;
        for i in lo..hi {
            let s = a.slots[i as usize];
            if let Some(gpa) = slot_gpa(s) {
                self.rmap
                    .remove(&(rmap_key(exporter, gpa), (u64::from(idx) << 32) | i));
                removed += 1;
                match runs.last_mut() {
                    Some((start, n)) if *start + *n == i => *n += 1,
                    _ => runs.push((i, 1)),
                }
            }
            if revoke {
                a.slots[i as usize] = SLOT_REVOKED;
            } else if s != SLOT_REVOKED {
                a.slots[i as usize] = SLOT_EMPTY;
            }
        }
        self.mapped_pages -= removed;
        if self.vms.contains_key(&importer) {
            for (start, n) in runs {
                self.stats.unmap_actions += 1;
                out.push(Action::Unmap {
                    importer,
                    window,
                    aperture_page: base + start,
                    npages: n,
                });
            }
        }
    }

    /// Whether an invalidation of segment `segid` is pending over `[start, end)` (vaddrs).
    fn invalidation_overlaps(&self, segid: i64, start: u64, end: u64) -> bool {
        self.first_invalidated(segid, start, end).is_some()
    }

    /// The lowest vaddr of `[start, end)` that a pending invalidation of segment `segid`
    /// covers.
    fn first_invalidated(&self, segid: i64, start: u64, end: u64) -> Option<u64> {
        let seg = self.segments.get(&segid)?;
        seg.invalidations
            .iter()
            .filter_map(|k| self.invalidations.get(k))
            .filter(|i| i.start < end && start < i.end)
            .map(|i| i.start.max(start))
            .min()
    }

    fn drop_fault(&mut self, key: u64) -> Option<PendingFault> {
        let f = self.faults.remove(&key)?;
        if let FaultState::Resolving { resolve_id } = f.state {
            self.leave_resolve(resolve_id, key);
        }
        Some(f)
    }

    /// Removes FAULT `key` from the followers of a resolve; a resolve nobody waits for is
    /// forgotten (a late reply then answers NOENT).
    fn leave_resolve(&mut self, resolve_id: u64, key: u64) {
        if let Some(r) = self.resolves.get_mut(&resolve_id) {
            r.faults.retain(|&k| k != key);
            if r.faults.is_empty() {
                self.resolves.remove(&resolve_id);
            }
        }
    }

    fn fail_fault(&mut self, key: u64, status: Status, out: &mut Out) {
        if let Some(f) = self.drop_fault(key) {
            self.respond(f.importer, f.tag, Err(status), out);
        }
    }

    /// (Re-)evaluates a pending FAULT: answers it, parks it behind an invalidation, or
    /// issues a RESOLVE to the exporter.
    fn run_fault(&mut self, key: u64, out: &mut Out) {
        let Some(f) = self.faults.get(&key) else {
            return;
        };
        let (attach_id, page_index, want, attempts) =
            (f.attach_id, f.page_index, f.want, f.attempts);
        let Some(a) = self.att(attach_id) else {
            self.fail_fault(key, Status::NoEnt, out);
            return;
        };
        match a.state {
            AttState::Live => {}
            AttState::SegmentRemoved => return self.fail_fault(key, Status::Revoked, out),
            AttState::ExporterGone => return self.fail_fault(key, Status::Gone, out),
        }
        // page_index was checked against the attachment when the FAULT arrived.
        let Some(&first) = a.slots.get(page_index as usize) else {
            return self.fail_fault(key, Status::Invalid, out);
        };
        if first == SLOT_REVOKED {
            return self.fail_fault(key, Status::Revoked, out);
        }
        let end = (page_index + want).min(a.npages());
        let vaddr = a.vaddr + page_index * PAGE_SIZE;
        let (segid, exporter, write) = (a.segid, a.exporter, a.writable);
        if first != SLOT_EMPTY {
            let n = (page_index..end)
                .take_while(|&i| slot_gpa(a.slots[i as usize]).is_some())
                .count() as u64;
            // Mapped slots that a pending invalidation covers are on their way out: the
            // importer may already have handled the INVALIDATE event and sent this FAULT
            // after it, so a completion naming them would let it map a slot that the
            // acknowledgement then unmaps behind its back (spec 8.7 step 2). Answer only
            // the slots before the first of them; if that is the faulting slot, wait.
            let n = match self.first_invalidated(segid, vaddr, vaddr + n * PAGE_SIZE) {
                Some(va) => (va - vaddr) / PAGE_SIZE,
                None => n,
            };
            if n == 0 {
                if let Some(f) = self.faults.get_mut(&key) {
                    f.state = FaultState::Parked;
                }
                return;
            }
            if let Some(f) = self.drop_fault(key) {
                // n <= want <= max_fault_pages, a u32.
                let n = u32::try_from(n).unwrap_or(u32::MAX);
                self.respond(f.importer, f.tag, Ok(ResponseBody::Mapped(n)), out);
            }
            return;
        }
        let n = (page_index..end)
            .take_while(|&i| a.slots[i as usize] == SLOT_EMPTY)
            .count() as u64;
        if self.invalidation_overlaps(segid, vaddr, vaddr + n * PAGE_SIZE) {
            if let Some(f) = self.faults.get_mut(&key) {
                f.state = FaultState::Parked;
            }
            return;
        }
        if attempts >= MAX_RESOLVE_ATTEMPTS {
            return self.fail_fault(key, Status::Fault, out);
        }
        if let Some(f) = self.faults.get_mut(&key) {
            f.attempts += 1;
        }
        // Share a RESOLVE in flight that covers the window with sufficient access.
        let end_va = vaddr + n * PAGE_SIZE;
        let shared = self
            .resolves
            .iter()
            .find(|(_, r)| {
                r.segid == segid
                    && !r.stale
                    && (r.write || !write)
                    && r.vaddr <= vaddr
                    && end_va <= r.vaddr + r.npages * PAGE_SIZE
            })
            .map(|(&rid, _)| rid);
        if let Some(resolve_id) = shared {
            if let Some(r) = self.resolves.get_mut(&resolve_id) {
                r.faults.push(key);
            }
            if let Some(f) = self.faults.get_mut(&key) {
                f.state = FaultState::Resolving { resolve_id };
            }
            self.stats.resolves_shared += 1;
            return;
        }
        let resolve_id = self.serial();
        let due_ms = self.now_ms.saturating_add(self.resolve_timeout_ms());
        if let Some(f) = self.faults.get_mut(&key) {
            f.state = FaultState::Resolving { resolve_id };
        }
        self.resolves.insert(
            resolve_id,
            PendingResolve {
                exporter,
                segid,
                vaddr,
                npages: n,
                write,
                stale: false,
                due_ms,
                faults: vec![key],
            },
        );
        self.stats.resolves_issued += 1;
        self.post(
            exporter,
            Event::Resolve {
                resolve_id,
                segid,
                vaddr,
                // n <= max_fault_pages, a u32.
                npages: n as u32,
                write,
            },
            out,
        );
    }

    /// Completes an importer target: on ack, its slots in range are unmapped (they may be
    /// faulted again later); at the deadline, they are unmapped and revoked for good and the
    /// importer backs off from the segment; when its window was revoked, they are revoked
    /// (the device already unmapped them).
    fn finish_target(&mut self, t: u64, end: TargetEnd, out: &mut Out) {
        let Some(target) = self.targets.remove(&t) else {
            return;
        };
        let lo = target.page_index;
        let hi = lo + target.npages;
        // A target whose attachment is gone (detached, importer VM left) is moot: it still
        // counts as a target of its invalidation, but not as revoked.
        let segid = self.att(target.attach_id).map(|a| a.segid);
        let live = segid.is_some();
        match end {
            TargetEnd::Acked => self.clear_slots(target.attach_id, lo, hi, false, out),
            TargetEnd::WindowRevoked => {
                let mut already_unmapped = Vec::new();
                self.clear_slots(target.attach_id, lo, hi, true, &mut already_unmapped);
                self.stats.unmap_actions -= already_unmapped.len() as u64;
            }
            TargetEnd::Deadline => {
                self.clear_slots(target.attach_id, lo, hi, true, out);
                if let Some(segid) = segid {
                    self.stats.invalidations_forced += 1;
                    self.back_off(target.importer, segid);
                    self.post(
                        target.importer,
                        Event::Revoked {
                            attach_id: target.attach_id,
                            page_index: lo,
                            npages: target.npages,
                            reason: RevokeReason::Deadline,
                        },
                        out,
                    );
                }
            }
        }
        let revoked = end != TargetEnd::Acked && live;
        let done = match self.invalidations.get_mut(&target.inv) {
            Some(inv) => {
                inv.targets.remove(&t);
                if revoked {
                    inv.revoked += 1;
                }
                inv.targets.is_empty()
            }
            None => false,
        };
        if done {
            self.complete_invalidation(target.inv, out);
        }
    }

    /// One more forced revocation of `importer` on `segid`: its back-off starts again from
    /// now and lasts twice as long as the previous one (up to [`MAX_BACKOFF_DOUBLINGS`]).
    fn back_off(&mut self, importer: VmId, segid: i64) {
        let b = self.backoffs.entry((importer, segid)).or_insert(Backoff {
            strikes: 0,
            until_ms: 0,
        });
        b.strikes = b.strikes.saturating_add(1);
        let doublings = (b.strikes - 1).min(MAX_BACKOFF_DOUBLINGS);
        let len = self
            .cfg
            .invalidate_deadline_ms
            .saturating_mul(1 << doublings);
        b.until_ms = self.now_ms.saturating_add(len);
        self.stats.backoffs_started += 1;
    }

    /// Whether `vm` is backing off from `segid` now (and counts the refusal).
    fn backing_off(&mut self, vm: VmId, segid: i64) -> bool {
        let now = self.now_ms;
        let refused = self
            .backoffs
            .get(&(vm, segid))
            .is_some_and(|b| now < b.until_ms);
        if refused {
            self.stats.backoff_refusals += 1;
        }
        refused
    }

    /// The end of `vm`'s current back-off from `segid`, if it is backing off at `now_ms`.
    pub fn backoff_until(&self, vm: VmId, segid: i64, now_ms: u64) -> Option<u64> {
        self.backoffs
            .get(&(vm, segid))
            .map(|b| b.until_ms)
            .filter(|&until| now_ms < until)
    }

    /// The device revoked the whole `window` of `importer` (an unmap failed, or would have
    /// taken more host mappings than the VM's budget): it shows the filler, or the guest
    /// was cut off from it. Every attachment in it loses all its pages for good (REVOKED
    /// with reason [`RevokeReason::Host`]); invalidation targets on them count as revoked
    /// and their exporters are answered; FAULTs on them fail with [`Status::Revoked`].
    /// Returns the actions for the other VMs and the importer; it contains no Unmap.
    pub fn window_revoked(&mut self, importer: VmId, window: Window, now_ms: u64) -> Vec<Action> {
        self.now_ms = self.now_ms.max(now_ms);
        let mut out = Vec::new();
        let Some(st) = self.vms.get(&importer) else {
            return out;
        };
        self.stats.windows_revoked += 1;
        let atts: Vec<u64> = st
            .atts
            .iter()
            .copied()
            .filter(|&id| self.att(id).is_some_and(|a| a.window == window))
            .collect();
        for aid in atts {
            let targets: Vec<u64> = keys_where(&self.targets, |t| t.attach_id == aid);
            for t in targets {
                self.finish_target(t, TargetEnd::WindowRevoked, &mut out);
            }
            let Some(npages) = self.att(aid).map(Attachment::npages) else {
                continue;
            };
            let mut already_unmapped = Vec::new();
            self.clear_slots(aid, 0, npages, true, &mut already_unmapped);
            self.stats.unmap_actions -= already_unmapped.len() as u64;
            let faults: Vec<u64> = keys_where(&self.faults, |f| f.attach_id == aid);
            for k in faults {
                self.fail_fault(k, Status::Revoked, &mut out);
            }
            self.post(
                importer,
                Event::Revoked {
                    attach_id: aid,
                    page_index: 0,
                    npages,
                    reason: RevokeReason::Host,
                },
                &mut out,
            );
        }
        out
    }

    /// Answers an exporter INVALIDATE whose targets are all done, then lets FAULTs parked
    /// behind it proceed.
    fn complete_invalidation(&mut self, k: u64, out: &mut Out) {
        let Some(inv) = self.invalidations.remove(&k) else {
            return;
        };
        debug_assert!(inv.targets.is_empty());
        if let Some(seg) = self.segments.get_mut(&inv.segid) {
            seg.invalidations.remove(&k);
        }
        self.stats.invalidations_completed += 1;
        let body = ResponseBody::Invalidated {
            targets: inv.ntargets,
            revoked: inv.revoked,
        };
        self.respond(inv.exporter, inv.tag, Ok(body), out);
        self.unpark(inv.segid, out);
    }

    fn unpark(&mut self, segid: i64, out: &mut Out) {
        let parked: Vec<u64> = self
            .faults
            .iter()
            .filter(|(_, f)| matches!(f.state, FaultState::Parked))
            .filter(|(_, f)| self.att(f.attach_id).is_some_and(|a| a.segid == segid))
            .map(|(&k, _)| k)
            .collect();
        for k in parked {
            self.run_fault(k, out);
        }
    }

    /// Drops an invalidation without answering (its exporter is gone).
    fn drop_invalidation(&mut self, k: u64) {
        if let Some(inv) = self.invalidations.remove(&k) {
            for t in inv.targets {
                self.targets.remove(&t);
            }
            if let Some(seg) = self.segments.get_mut(&inv.segid) {
                seg.invalidations.remove(&k);
            }
        }
    }

    /// Removes a segment: importers are revoked at once, pending INVALIDATEs of it are
    /// answered (nothing is mapped any more), FAULTs on it fail.
    fn remove_segment(&mut self, segid: i64, reason: RevokeReason, out: &mut Out) {
        let Some(seg) = self.segments.remove(&segid) else {
            return;
        };
        if let Some(st) = self.vms.get_mut(&seg.vm) {
            st.segs.remove(&segid);
        }
        if let Some(name) = &seg.name {
            self.names.remove(name);
        }
        self.backoffs.retain(|&(_, s), _| s != segid);
        let (state, status) = match reason {
            RevokeReason::ExporterGone => (AttState::ExporterGone, Status::Gone),
            _ => (AttState::SegmentRemoved, Status::Revoked),
        };
        for &aid in &seg.attachments {
            let Some(a) = self.att(aid) else { continue };
            let (importer, npages) = (a.importer, a.npages());
            self.clear_slots(aid, 0, npages, true, out);
            if let Some(a) = self.att_mut(aid) {
                a.state = state;
            }
            self.post(
                importer,
                Event::Revoked {
                    attach_id: aid,
                    page_index: 0,
                    npages,
                    reason,
                },
                out,
            );
        }
        let faults: Vec<u64> = keys_where(&self.faults, |f| seg.attachments.contains(&f.attach_id));
        for k in faults {
            self.fail_fault(k, status, out);
        }
        for k in seg.invalidations {
            if let Some(inv) = self.invalidations.get_mut(&k) {
                for t in std::mem::take(&mut inv.targets) {
                    self.targets.remove(&t);
                }
            }
            if self.invalidations.contains_key(&k) {
                self.complete_invalidation(k, out);
            }
        }
    }

    fn detach_internal(&mut self, attach_id: u64, out: &mut Out) {
        let Some(a) = self.att(attach_id) else { return };
        let npages = a.npages();
        self.fail_faults_on(&[attach_id], out);
        // Targets on it count as acknowledged: its slots are about to be unmapped.
        let targets: Vec<u64> = keys_where(&self.targets, |t| t.attach_id == attach_id);
        self.clear_slots(attach_id, 0, npages, false, out);
        for t in targets {
            self.finish_target(t, TargetEnd::Acked, out);
        }
        let Some(idx) = self.attach_index.remove(&attach_id) else {
            return;
        };
        let Some(a) = self.slab.get_mut(idx as usize).and_then(|s| s.take()) else {
            return;
        };
        self.slab_free.push(idx);
        if let Some(st) = self.vms.get_mut(&a.importer) {
            st.aperture(a.window).free(a.aperture_page, a.npages());
            st.atts.remove(&attach_id);
        }
        if let Some(seg) = self.segments.get_mut(&a.segid) {
            seg.attachments.remove(&attach_id);
        }
        if let Some(p) = self.permits.get_mut(&a.apid) {
            p.attachments.remove(&attach_id);
        }
    }

    /// Answers NOENT to the pending FAULTs on `atts`, which are about to be detached,
    /// before any of them is: detaching one can complete an invalidation, and that would
    /// restart, and possibly answer as mapped, a FAULT on another doomed attachment.
    fn fail_faults_on(&mut self, atts: &[u64], out: &mut Out) {
        let faults: Vec<u64> = keys_where(&self.faults, |f| atts.contains(&f.attach_id));
        for k in faults {
            self.fail_fault(k, Status::NoEnt, out);
        }
    }

    fn release_internal(&mut self, apid: i64, out: &mut Out) {
        let Some(p) = self.permits.get(&apid) else {
            return;
        };
        let atts: Vec<u64> = p.attachments.iter().copied().collect();
        self.fail_faults_on(&atts, out);
        for a in atts {
            self.detach_internal(a, out);
        }
        if let Some(p) = self.permits.remove(&apid) {
            if let Some(st) = self.vms.get_mut(&p.vm) {
                st.permits.remove(&apid);
            }
        }
    }

    // ----- requests -----

    #[allow(clippy::too_many_arguments)]
    fn make(
        &mut self,
        vm: VmId,
        owner: OwnerToken,
        vaddr: u64,
        size: u64,
        permit_type: u32,
        permit_value: u64,
        uid: u32,
        gid: u32,
    ) -> Option<Result<ResponseBody, Status>> {
        Some((|| {
            if owner.0 == 0 || permit_type != XPMEM_PERMIT_MODE || permit_value > 0o777 {
                return Err(Status::Invalid);
            }
            let limit = self.cfg.user_addr_limit;
            if vaddr % PAGE_SIZE != 0 || vaddr >= limit {
                return Err(Status::Invalid);
            }
            let size = if size == XPMEM_MAXADDR_SIZE {
                (limit - vaddr) & !(PAGE_SIZE - 1)
            } else {
                size
            };
            let end = vaddr.checked_add(size).ok_or(Status::Invalid)?;
            if size == 0 || size % PAGE_SIZE != 0 || end > limit {
                return Err(Status::Invalid);
            }
            let max = self.cfg.max_segments_per_vm;
            let segid = self.take_held_id(vm, IdKind::Segment, max, |st| &mut st.segs)?;
            self.segments.insert(
                segid,
                Segment {
                    vm,
                    owner,
                    vaddr,
                    size,
                    mode: permit_value as u32,
                    uid,
                    gid,
                    attachments: BTreeSet::new(),
                    invalidations: BTreeSet::new(),
                    name: None,
                },
            );
            Ok(ResponseBody::Segid(segid))
        })())
    }

    /// NAME: only the segment's owner may name it, once; names are unique in the domain.
    fn name(
        &mut self,
        vm: VmId,
        owner: OwnerToken,
        segid: i64,
        name: String,
    ) -> Result<ResponseBody, Status> {
        if !self.vms.get(&vm).is_some_and(|st| st.names) {
            return Err(Status::Unsupported);
        }
        if owner.0 == 0 || !is_valid_name(&name) {
            return Err(Status::Invalid);
        }
        let seg = self
            .segments
            .get_mut(&segid)
            .filter(|s| s.vm == vm)
            .ok_or(Status::NoEnt)?;
        if seg.owner != owner {
            return Err(Status::Perm);
        }
        if seg.name.is_some() || self.names.contains_key(&name) {
            return Err(Status::Exist);
        }
        seg.name = Some(name.clone());
        self.names.insert(name, segid);
        Ok(ResponseBody::Empty)
    }

    /// SEARCH: a name is visible to the VMs the import policy lets import from its VM.
    fn search(&self, vm: VmId, owner: OwnerToken, name: &str) -> Result<ResponseBody, Status> {
        if !self.vms.get(&vm).is_some_and(|st| st.names) {
            return Err(Status::Unsupported);
        }
        if owner.0 == 0 || !is_valid_name(name) {
            return Err(Status::Invalid);
        }
        let segid = *self.names.get(name).ok_or(Status::NoEnt)?;
        let seg = self.segments.get(&segid).ok_or(Status::NoEnt)?;
        if !self.cfg.policy.allows(vm, seg.vm, false) {
            return Err(Status::NoEnt);
        }
        Ok(ResponseBody::Segid(segid))
    }

    fn remove(
        &mut self,
        vm: VmId,
        owner: OwnerToken,
        segid: i64,
        out: &mut Out,
    ) -> Option<Result<ResponseBody, Status>> {
        let seg = match self.segments.get(&segid) {
            Some(s) => s,
            None => return Some(Err(Status::NoEnt)),
        };
        if seg.vm != vm || seg.owner != owner {
            return Some(Err(Status::Perm));
        }
        self.remove_segment(segid, RevokeReason::SegmentRemoved, out);
        Some(Ok(ResponseBody::Empty))
    }

    #[allow(clippy::too_many_arguments)]
    fn get(
        &mut self,
        vm: VmId,
        owner: OwnerToken,
        segid: i64,
        flags: u32,
        permit_type: u32,
        permit_value: u64,
        uid: u32,
        gid: u32,
    ) -> Option<Result<ResponseBody, Status>> {
        Some((|| {
            if owner.0 == 0 || permit_type != XPMEM_PERMIT_MODE || permit_value != 0 {
                return Err(Status::Invalid);
            }
            let ipc_owner = flags & XPMEM_GET_IPC_OWNER != 0;
            let writable = match flags & !XPMEM_GET_IPC_OWNER {
                XPMEM_RDONLY => false,
                XPMEM_RDWR => true,
                _ => return Err(Status::Invalid),
            };
            let seg = self.segments.get(&segid).ok_or(Status::NoEnt)?;
            if !self.cfg.policy.allows(vm, seg.vm, writable) {
                return Err(Status::Perm);
            }
            // IPC-style, but uids and gids are per-VM namespaces: uid 0 of one VM is not
            // uid 0 of another. The owner's bits apply only to the exporter's VM with a
            // matching uid, the group's only to that VM with a matching gid; an importer
            // in another VM always gets the others' bits. CAP_IPC_OWNER (which the guest
            // kernel vouches for) passes the mode check as natively, but only within the
            // exporter's VM: root of another VM is just another VM's process.
            let same_vm = vm == seg.vm;
            let bypass = same_vm && ipc_owner;
            let bits = if same_vm && uid == seg.uid {
                seg.mode >> 6
            } else if same_vm && gid == seg.gid {
                seg.mode >> 3
            } else {
                seg.mode
            } & 0o7;
            let need = if writable { 0o6 } else { 0o4 };
            if bits & need != need && !bypass {
                return Err(Status::Perm);
            }
            let exporter = seg.vm;
            let max = self.cfg.max_permits_per_vm;
            let apid = self.take_held_id(vm, IdKind::Permit, max, |st| &mut st.permits)?;
            self.permits.insert(
                apid,
                Permit {
                    vm,
                    owner,
                    segid,
                    exporter,
                    writable,
                    attachments: BTreeSet::new(),
                },
            );
            Ok(ResponseBody::Apid(apid))
        })())
    }

    fn release(
        &mut self,
        vm: VmId,
        owner: OwnerToken,
        apid: i64,
        out: &mut Out,
    ) -> Option<Result<ResponseBody, Status>> {
        let p = match self.permits.get(&apid) {
            Some(p) => p,
            None => return Some(Err(Status::NoEnt)),
        };
        if p.vm != vm || p.owner != owner {
            return Some(Err(Status::Perm));
        }
        self.release_internal(apid, out);
        Some(Ok(ResponseBody::Empty))
    }

    fn attach(
        &mut self,
        vm: VmId,
        owner: OwnerToken,
        apid: i64,
        offset: u64,
        size: u64,
        flags: u32,
    ) -> Option<Result<ResponseBody, Status>> {
        Some((|| {
            let p = self.permits.get(&apid).ok_or(Status::NoEnt)?;
            if p.vm != vm || p.owner != owner {
                return Err(Status::Perm);
            }
            if flags & !XPMEM_RDONLY != 0 {
                return Err(Status::Invalid);
            }
            let rdonly = flags & XPMEM_RDONLY != 0;
            if !rdonly && !p.writable {
                return Err(Status::Perm);
            }
            let (segid, exporter) = (p.segid, p.exporter);
            if self.backing_off(vm, segid) {
                return Err(Status::Again);
            }
            let seg = match self.segments.get(&segid) {
                Some(s) => s,
                None if !self.vms.contains_key(&exporter) => return Err(Status::Gone),
                None => return Err(Status::NoEnt),
            };
            let end = offset.checked_add(size).ok_or(Status::Invalid)?;
            if size == 0 || offset % PAGE_SIZE != 0 || size % PAGE_SIZE != 0 || end > seg.size {
                return Err(Status::Invalid);
            }
            let vaddr = seg.vaddr + offset;
            let npages = size / PAGE_SIZE;
            let window = if rdonly { Window::Ro } else { Window::Rw };
            let max = self.cfg.max_attachments_per_vm;
            let st = self.vms.get_mut(&vm).ok_or(Status::NoEnt)?;
            if st.atts.len() >= max as usize {
                return Err(Status::NoSpc);
            }
            let aperture_page = st.aperture(window).alloc(npages).ok_or(Status::NoSpc)?;
            let id = match self.new_id(IdKind::Attachment, vm) {
                Some(id) => id as u64,
                None => {
                    if let Some(st) = self.vms.get_mut(&vm) {
                        st.aperture(window).free(aperture_page, npages);
                    }
                    return Err(Status::NoSpc);
                }
            };
            let a = Attachment {
                id,
                importer: vm,
                owner,
                apid,
                segid,
                exporter,
                vaddr,
                window,
                aperture_page,
                writable: !rdonly,
                state: AttState::Live,
                // npages <= aperture pages <= MAX_APERTURE_PAGES, so this fits usize.
                slots: vec![SLOT_EMPTY; npages as usize],
            };
            let idx = match self.slab_free.pop() {
                Some(i) => {
                    self.slab[i as usize] = Some(a);
                    i
                }
                None => {
                    self.slab.push(Some(a));
                    (self.slab.len() - 1) as u32
                }
            };
            self.attach_index.insert(id, idx);
            if let Some(st) = self.vms.get_mut(&vm) {
                st.atts.insert(id);
            }
            if let Some(s) = self.segments.get_mut(&segid) {
                s.attachments.insert(id);
            }
            if let Some(p) = self.permits.get_mut(&apid) {
                p.attachments.insert(id);
            }
            Ok(ResponseBody::Attached {
                attach_id: id,
                window,
                aperture_page,
            })
        })())
    }

    fn detach(
        &mut self,
        vm: VmId,
        owner: OwnerToken,
        attach_id: u64,
        out: &mut Out,
    ) -> Option<Result<ResponseBody, Status>> {
        let a = match self.att(attach_id) {
            Some(a) => a,
            None => return Some(Err(Status::NoEnt)),
        };
        if a.importer != vm || a.owner != owner {
            return Some(Err(Status::Perm));
        }
        self.detach_internal(attach_id, out);
        Some(Ok(ResponseBody::Empty))
    }

    #[allow(clippy::too_many_arguments)]
    fn fault(
        &mut self,
        vm: VmId,
        tag: RequestTag,
        owner: OwnerToken,
        attach_id: u64,
        page_index: u64,
        npages: u32,
        out: &mut Out,
    ) -> Option<Result<ResponseBody, Status>> {
        let a = match self.att(attach_id) {
            Some(a) => a,
            None => return Some(Err(Status::NoEnt)),
        };
        if a.importer != vm || a.owner != owner {
            return Some(Err(Status::Perm));
        }
        if npages == 0 || page_index >= a.npages() {
            return Some(Err(Status::Invalid));
        }
        let segid = a.segid;
        if self.backing_off(vm, segid) {
            return Some(Err(Status::Again));
        }
        let want = u64::from(npages.min(self.cfg.max_fault_pages.max(1)));
        let key = self.serial();
        self.faults.insert(
            key,
            PendingFault {
                importer: vm,
                tag,
                attach_id,
                page_index,
                want,
                attempts: 0,
                state: FaultState::Idle,
            },
        );
        self.run_fault(key, out);
        None
    }

    fn resolve_reply(
        &mut self,
        vm: VmId,
        resolve_id: u64,
        result: Result<Vec<u64>, Status>,
        out: &mut Out,
    ) -> Option<Result<ResponseBody, Status>> {
        match self.resolves.get(&resolve_id) {
            None => return Some(Err(Status::NoEnt)),
            // Only the exporter that was asked may answer; the resolve stays pending.
            Some(r) if r.exporter != vm => return Some(Err(Status::Perm)),
            Some(_) => {}
        }
        let r = self.resolves.remove(&resolve_id)?;
        for k in &r.faults {
            if let Some(f) = self.faults.get_mut(k) {
                f.state = FaultState::Idle;
            }
        }
        let gpas = match result {
            Err(_) => {
                for k in r.faults {
                    self.fail_fault(k, Status::Fault, out);
                }
                return Some(Ok(ResponseBody::Empty));
            }
            Ok(g) => g,
        };
        let valid = !gpas.is_empty()
            && gpas.len() as u64 <= r.npages
            && self.vms.get(&r.exporter).is_some_and(|st| {
                gpas.iter()
                    .all(|&g| g % PAGE_SIZE == 0 && st.ram_contains_page(g))
            });
        if !valid {
            self.stats.resolves_rejected += 1;
            for k in r.faults {
                self.fail_fault(k, Status::Fault, out);
            }
            return Some(Err(Status::Invalid));
        }
        let r_end = r.vaddr + r.npages * PAGE_SIZE;
        if r.stale || self.invalidation_overlaps(r.segid, r.vaddr, r_end) {
            // An invalidation raced this resolution: the addresses may already be stale.
            // Each FAULT starts again (waiting for the invalidation first).
            self.stats.resolves_stale += 1;
            for k in r.faults {
                self.run_fault(k, out);
            }
            return Some(Ok(ResponseBody::Empty));
        }
        for k in r.faults {
            let Some(f) = self.faults.get(&k) else {
                continue;
            };
            let (attach_id, page_index) = (f.attach_id, f.page_index);
            let Some(a) = self.att(attach_id) else {
                continue;
            };
            // The FAULT's window starts inside the resolved range (checked when it joined).
            let off =
                ((a.vaddr + page_index * PAGE_SIZE).saturating_sub(r.vaddr) / PAGE_SIZE) as usize;
            if off < gpas.len() {
                let take = (f.want as usize).min(gpas.len() - off);
                let part = gpas[off..off + take].to_vec();
                self.map_pages(attach_id, page_index, &part, out);
            }
            // Answers the FAULT, or resolves what the reply did not cover.
            self.run_fault(k, out);
        }
        Some(Ok(ResponseBody::Empty))
    }

    /// Maps `gpas` into empty slots from `page_index`, emitting coalesced Map actions.
    fn map_pages(&mut self, attach_id: u64, page_index: u64, gpas: &[u64], out: &mut Out) {
        let Some(&idx) = self.attach_index.get(&attach_id) else {
            return;
        };
        let Some(a) = self.slab.get_mut(idx as usize).and_then(|s| s.as_mut()) else {
            return;
        };
        let (importer, window, base, exporter, writable) = (
            a.importer,
            a.window,
            a.aperture_page,
            a.exporter,
            a.writable,
        );
        // (first page, first gpa, count)
        let mut runs: Vec<(u64, u64, u64)> = Vec::new();
        let mut added = 0;
        for (i, &gpa) in gpas.iter().enumerate() {
            let page = page_index + i as u64;
            let Some(slot) = a.slots.get_mut(page as usize) else {
                break;
            };
            if *slot != SLOT_EMPTY {
                continue;
            }
            *slot = gpa | SLOT_MAPPED;
            self.rmap
                .insert((rmap_key(exporter, gpa), (u64::from(idx) << 32) | page));
            added += 1;
            match runs.last_mut() {
                Some((p, g, n)) if *p + *n == page && *g + *n * PAGE_SIZE == gpa => *n += 1,
                _ => runs.push((page, gpa, 1)),
            }
        }
        self.mapped_pages += added;
        for (page, gpa, n) in runs {
            self.stats.map_actions += 1;
            out.push(Action::Map {
                importer,
                window,
                aperture_page: base + page,
                exporter,
                exporter_gpa: gpa,
                npages: n,
                writable,
            });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn invalidate(
        &mut self,
        vm: VmId,
        tag: RequestTag,
        owner: OwnerToken,
        segid: i64,
        vaddr: u64,
        len: u64,
        now_ms: u64,
        out: &mut Out,
    ) -> Option<Result<ResponseBody, Status>> {
        let _ = owner;
        let seg = match self.segments.get(&segid) {
            Some(s) => s,
            None => return Some(Err(Status::NoEnt)),
        };
        if seg.vm != vm {
            return Some(Err(Status::Perm));
        }
        let Some(end) = vaddr.checked_add(len) else {
            return Some(Err(Status::Invalid));
        };
        if len == 0 || vaddr % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 {
            return Some(Err(Status::Invalid));
        }
        let start = vaddr.max(seg.vaddr);
        let end = end.min(seg.vaddr + seg.size);
        let atts: Vec<u64> = seg.attachments.iter().copied().collect();
        self.stats.invalidations_started += 1;
        if start >= end {
            self.stats.invalidations_completed += 1;
            return Some(Ok(ResponseBody::Invalidated {
                targets: 0,
                revoked: 0,
            }));
        }
        let k = self.serial();
        // Resolutions in flight over the range may return addresses being invalidated.
        for r in self.resolves.values_mut() {
            if r.segid == segid && r.vaddr < end && start < r.vaddr + r.npages * PAGE_SIZE {
                r.stale = true;
            }
        }
        let mut targets = BTreeSet::new();
        let mut events = Vec::new();
        for aid in atts {
            let Some(a) = self.att(aid) else { continue };
            let a_end = a.vaddr + a.npages() * PAGE_SIZE;
            if a.vaddr >= end || start >= a_end {
                continue;
            }
            let lo = (start.max(a.vaddr) - a.vaddr) / PAGE_SIZE;
            let hi = (end.min(a_end) - a.vaddr) / PAGE_SIZE;
            let mapped = |i: &u64| slot_gpa(a.slots[*i as usize]).is_some();
            let Some(first) = (lo..hi).find(mapped) else {
                continue;
            };
            let last = (lo..hi).rev().find(mapped).unwrap_or(first);
            let importer = a.importer;
            let t = self.serial();
            self.targets.insert(
                t,
                InvTarget {
                    inv: k,
                    importer,
                    attach_id: aid,
                    page_index: first,
                    npages: last - first + 1,
                },
            );
            targets.insert(t);
            events.push((
                importer,
                Event::Invalidate {
                    invalidation_id: t,
                    attach_id: aid,
                    page_index: first,
                    npages: last - first + 1,
                },
            ));
        }
        if targets.is_empty() {
            self.stats.invalidations_completed += 1;
            return Some(Ok(ResponseBody::Invalidated {
                targets: 0,
                revoked: 0,
            }));
        }
        if let Some(s) = self.segments.get_mut(&segid) {
            s.invalidations.insert(k);
        }
        self.invalidations.insert(
            k,
            Invalidation {
                exporter: vm,
                tag,
                segid,
                start,
                end,
                deadline: now_ms.saturating_add(self.cfg.invalidate_deadline_ms),
                ntargets: u32::try_from(targets.len()).unwrap_or(u32::MAX),
                targets,
                revoked: 0,
            },
        );
        for (importer, ev) in events {
            self.post(importer, ev, out);
        }
        None
    }

    fn invalidate_ack(
        &mut self,
        vm: VmId,
        invalidation_id: u64,
        out: &mut Out,
    ) -> Option<Result<ResponseBody, Status>> {
        match self.targets.get(&invalidation_id) {
            Some(t) if t.importer == vm => {
                self.finish_target(invalidation_id, TargetEnd::Acked, out);
                Some(Ok(ResponseBody::Empty))
            }
            // Late, duplicate or foreign acknowledgements change nothing.
            _ => Some(Err(Status::NoEnt)),
        }
    }

    fn release_owner(
        &mut self,
        vm: VmId,
        owner: OwnerToken,
        out: &mut Out,
    ) -> Option<Result<ResponseBody, Status>> {
        let Some(st) = self.vms.get(&vm) else {
            return Some(Err(Status::NoEnt));
        };
        let atts: Vec<u64> = st
            .atts
            .iter()
            .copied()
            .filter(|&id| self.att(id).is_some_and(|a| a.owner == owner))
            .collect();
        let permits: Vec<i64> = st
            .permits
            .iter()
            .copied()
            .filter(|k| self.permits.get(k).is_some_and(|p| p.owner == owner))
            .collect();
        let segs: Vec<i64> = st
            .segs
            .iter()
            .copied()
            .filter(|k| self.segments.get(k).is_some_and(|s| s.owner == owner))
            .collect();
        let mut doomed = atts.clone();
        for p in &permits {
            if let Some(p) = self.permits.get(p) {
                doomed.extend(p.attachments.iter().copied());
            }
        }
        self.fail_faults_on(&doomed, out);
        for a in atts {
            self.detach_internal(a, out);
        }
        for p in permits {
            self.release_internal(p, out);
        }
        for s in segs {
            self.remove_segment(s, RevokeReason::SegmentRemoved, out);
        }
        Some(Ok(ResponseBody::Empty))
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
