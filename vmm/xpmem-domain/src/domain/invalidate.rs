//! INVALIDATE: an exporter's invalidation becomes one target per importer with mapped
//! slots, each ended by INVALIDATE_ACK, the deadline (forced revocation and back-off) or a
//! revoked window; the exporter is answered when every target is done.

use std::collections::BTreeSet;

use crate::types::{
    Action, Event, OwnerToken, RequestTag, ResponseBody, RevokeReason, Status, VmId, Window,
    PAGE_SIZE,
};

use super::slots::slot_gpa;
use super::state::{Attachment, Backoff, FaultState, InvTarget, Invalidation, TargetEnd};
use super::{keys_where, Domain, Out, MAX_BACKOFF_DOUBLINGS};

impl Domain {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn invalidate(
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
            let mapped = |i: &u64| a.slot(*i).and_then(slot_gpa).is_some();
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

    pub(super) fn invalidate_ack(
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

    /// Completes an importer target: on ack, its slots in range are unmapped (they may be
    /// faulted again later); at the deadline, they are unmapped and revoked for good and the
    /// importer backs off from the segment; when its window was revoked, they are revoked
    /// (the device already unmapped them).
    pub(super) fn finish_target(&mut self, t: u64, end: TargetEnd, out: &mut Out) {
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

    /// Answers an exporter INVALIDATE whose targets are all done, then lets FAULTs parked
    /// behind it proceed.
    pub(super) fn complete_invalidation(&mut self, k: u64, out: &mut Out) {
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
    pub(super) fn drop_invalidation(&mut self, k: u64) {
        if let Some(inv) = self.invalidations.remove(&k) {
            for t in inv.targets {
                self.targets.remove(&t);
            }
            if let Some(seg) = self.segments.get_mut(&inv.segid) {
                seg.invalidations.remove(&k);
            }
        }
    }

    /// Whether an invalidation of segment `segid` is pending over `[start, end)` (vaddrs).
    pub(super) fn invalidation_overlaps(&self, segid: i64, start: u64, end: u64) -> bool {
        self.first_invalidated(segid, start, end).is_some()
    }

    /// The lowest vaddr of `[start, end)` that a pending invalidation of segment `segid`
    /// covers.
    pub(super) fn first_invalidated(&self, segid: i64, start: u64, end: u64) -> Option<u64> {
        let seg = self.segments.get(&segid)?;
        seg.invalidations
            .iter()
            .filter_map(|k| self.invalidations.get(k))
            .filter(|i| i.start < end && start < i.end)
            .map(|i| i.start.max(start))
            .min()
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
    pub(super) fn backing_off(&mut self, vm: VmId, segid: i64) -> bool {
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
}
