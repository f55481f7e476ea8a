//! Counters and the self-check: what the domain holds ([`Domain::counters`],
//! [`Domain::vm_holdings`]) and [`Domain::check_invariants`] for tests.

use std::collections::{BTreeMap, BTreeSet};

use crate::types::{Counters, VmHoldings, VmId, Window};

use super::slots::{rmap_key, slot_gpa};
use super::state::{AttState, FaultState};
use super::{keys_where, Domain};

impl Domain {
    /// What `vm` holds now (None: not a member).
    pub fn vm_holdings(&self, vm: VmId) -> Option<VmHoldings> {
        self.vms.get(&vm).map(|st| VmHoldings {
            segments: st.segs.len() as u64,
            permits: st.permits.len() as u64,
            attachments: st.atts.len() as u64,
        })
    }

    /// Snapshot of the counters.
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
}
