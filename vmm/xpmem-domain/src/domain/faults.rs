//! FAULT and RESOLVE: an importer's FAULT becomes a RESOLVE event to the exporter (or
//! joins one in flight, or waits behind an invalidation), and the exporter's RESOLVE_REPLY
//! maps the pages and answers the FAULT.

use crate::types::{Event, OwnerToken, RequestTag, ResponseBody, Status, VmId, PAGE_SIZE};

use super::slots::{slot_gpa, SLOT_EMPTY, SLOT_REVOKED};
use super::state::{AttState, FaultState, PendingFault, PendingResolve};
use super::{Domain, Out, MAX_RESOLVE_ATTEMPTS};

impl Domain {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fault(
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

    pub(super) fn resolve_reply(
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
            // An offset that does not fit usize lies beyond the reply.
            let off = (a.vaddr + page_index * PAGE_SIZE).saturating_sub(r.vaddr) / PAGE_SIZE;
            let off = usize::try_from(off).unwrap_or(usize::MAX);
            if off < gpas.len() {
                let want = usize::try_from(f.want).unwrap_or(usize::MAX);
                let take = want.min(gpas.len() - off);
                let part = gpas[off..off + take].to_vec();
                self.map_pages(attach_id, page_index, &part, out);
            }
            // Answers the FAULT, or resolves what the reply did not cover.
            self.run_fault(k, out);
        }
        Some(Ok(ResponseBody::Empty))
    }

    /// (Re-)evaluates a pending FAULT: answers it, parks it behind an invalidation, or
    /// issues a RESOLVE to the exporter.
    pub(super) fn run_fault(&mut self, key: u64, out: &mut Out) {
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
        let Some(first) = a.slot(page_index) else {
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
                .take_while(|&i| a.slot(i).and_then(slot_gpa).is_some())
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
            .take_while(|&i| a.slot(i) == Some(SLOT_EMPTY))
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
        // n <= want <= max_fault_pages, a u32.
        let Ok(npages) = u32::try_from(n) else {
            return self.fail_fault(key, Status::Invalid, out);
        };
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
                npages,
                write,
            },
            out,
        );
    }

    pub(super) fn drop_fault(&mut self, key: u64) -> Option<PendingFault> {
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

    pub(super) fn fail_fault(&mut self, key: u64, status: Status, out: &mut Out) {
        if let Some(f) = self.drop_fault(key) {
            self.respond(f.importer, f.tag, Err(status), out);
        }
    }
}
