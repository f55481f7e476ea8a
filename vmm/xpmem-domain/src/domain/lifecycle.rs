//! Joining and leaving, and tearing objects down: [`Domain::add_vm`],
//! [`Domain::remove_vm`], RELEASE_OWNER, and the removal of segments, permits and
//! attachments that REMOVE, RELEASE and DETACH share with them.

use std::collections::BTreeSet;

use crate::aperture_alloc::ApertureAllocator;
use crate::types::{
    Action, Event, OwnerToken, ResponseBody, RevokeReason, Status, VmId, VmSpec, Window, PAGE_SIZE,
};

use super::state::{AttState, TargetEnd, VmState};
use super::{keys_where, Domain, DomainError, Out, MAX_APERTURE_PAGES, MAX_GPA, MAX_VM_ID};

impl Domain {
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

    pub(super) fn release_owner(
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

    /// Removes a segment: importers are revoked at once, pending INVALIDATEs of it are
    /// answered (nothing is mapped any more), FAULTs on it fail.
    pub(super) fn remove_segment(&mut self, segid: i64, reason: RevokeReason, out: &mut Out) {
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

    pub(super) fn detach_internal(&mut self, attach_id: u64, out: &mut Out) {
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

    pub(super) fn release_internal(&mut self, apid: i64, out: &mut Out) {
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
}
