//! Attachment slots and the reverse map: finding an attachment by id, mapping exporter
//! pages into slots and clearing them again (emitting coalesced Map/Unmap actions), and the
//! reverse-map queries.

use crate::types::{Action, VmId, Window, PAGE_SHIFT, PAGE_SIZE};

use super::state::Attachment;
use super::{Domain, Mapping, Out};

// Slot encoding in `Attachment::slots`: empty, revoked, or `gpa | SLOT_MAPPED`.
pub(super) const SLOT_EMPTY: u64 = 0;
pub(super) const SLOT_REVOKED: u64 = 2;
pub(super) const SLOT_MAPPED: u64 = 1;

pub(super) fn slot_gpa(slot: u64) -> Option<u64> {
    (slot & SLOT_MAPPED != 0).then_some(slot & !(PAGE_SIZE - 1))
}

/// Reverse-map key: `(exporter vm, exporter pfn)` packed into 64 bits.
pub(super) fn rmap_key(exporter: VmId, gpa: u64) -> u64 {
    (u64::from(exporter.0) << 44) | (gpa >> PAGE_SHIFT)
}

impl Domain {
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

    pub(super) fn att(&self, id: u64) -> Option<&Attachment> {
        let idx = *self.attach_index.get(&id)?;
        self.slab.get(idx as usize)?.as_ref()
    }

    pub(super) fn att_mut(&mut self, id: u64) -> Option<&mut Attachment> {
        let idx = *self.attach_index.get(&id)?;
        self.slab.get_mut(idx as usize)?.as_mut()
    }

    fn rmap_entry_mapping(&self, exporter: VmId, e: u64) -> Option<Mapping> {
        let idx = (e >> 32) as usize;
        let page = e & 0xffff_ffff;
        let a = self.slab.get(idx)?.as_ref()?;
        let gpa = slot_gpa(a.slot(page)?)?;
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
    pub(super) fn clear_slots(
        &mut self,
        attach_id: u64,
        lo: u64,
        hi: u64,
        revoke: bool,
        out: &mut Out,
    ) {
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
            let Some(slot) = a.slot_mut(i) else {
                break;
            };
            let s = *slot;
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
                *slot = SLOT_REVOKED;
            } else if s != SLOT_REVOKED {
                *slot = SLOT_EMPTY;
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

    /// Maps `gpas` into empty slots from `page_index`, emitting coalesced Map actions.
    pub(super) fn map_pages(
        &mut self,
        attach_id: u64,
        page_index: u64,
        gpas: &[u64],
        out: &mut Out,
    ) {
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
            let Some(slot) = a.slot_mut(page) else {
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
}
