//! [`MmapAperture`], the real [`ApertureBackend`]: maps exporter memfd ranges over
//! importer windows and puts the filler back, within each VM's host mapping budget.

use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;

use xpmem_domain::{VmId, Window};

use super::window::MapSource;
use super::{
    split_reserve, ApertureBackend, ApertureError, ApertureFaults, ApertureWindows, MapStats,
    Result, VmRamLayout, VmWindows, DEFAULT_MAPPINGS_PER_VM, FILLER_PAGES, PAGE_SIZE,
};

/// An upper bound of the host mappings behind one window: the window is cut
/// into the ranges of the mmap calls that made it; the kernel can only merge
/// neighbours, so it never has more mappings than ranges here.
#[derive(Clone, Debug)]
struct WindowMappings {
    pages: u64,
    /// Page indices (0 < cut < pages) where one range ends and the next starts.
    cuts: std::collections::BTreeSet<u64>,
}

impl WindowMappings {
    /// A window just filled from page 0 in filler-sized chunks.
    fn filled(pages: u64) -> Self {
        Self {
            pages,
            cuts: (1..pages.div_ceil(FILLER_PAGES))
                .map(|k| k * FILLER_PAGES)
                .collect(),
        }
    }

    fn count(&self) -> u64 {
        self.cuts.len() as u64 + 1
    }

    /// The count after mmap calls replace pages `start..end` with ranges that
    /// have `inner` cut points between them.
    fn count_after(&self, start: u64, end: u64, inner: u64) -> u64 {
        let inside = self.cuts.range(start + 1..end).count() as u64;
        let edge = |p: u64| u64::from(p > 0 && p < self.pages && !self.cuts.contains(&p));
        self.count() - inside + edge(start) + edge(end) + inner
    }

    /// Records one mmap over pages `start..start + n`.
    fn record(&mut self, start: u64, n: u64) {
        let end = start + n;
        // Remove the cuts inside one by one: O(k log n) (BTreeSet::append would rebuild
        // the whole set).
        let inside: Vec<u64> = self.cuts.range(start + 1..end).copied().collect();
        for p in inside {
            self.cuts.remove(&p);
        }
        for p in [start, end] {
            if p > 0 && p < self.pages {
                self.cuts.insert(p);
            }
        }
    }
}

struct VmAperture {
    ram: VmRamLayout,
    windows: ApertureWindows,
    /// Mapping bounds of the rw and ro windows.
    mappings: [WindowMappings; 2],
}

impl VmAperture {
    fn mappings(&mut self, w: Window) -> &mut WindowMappings {
        &mut self.mappings[usize::from(w == Window::Ro)]
    }
    fn total_mappings(&self) -> u64 {
        self.mappings.iter().map(WindowMappings::count).sum()
    }
}

/// The real [`ApertureBackend`]: memfd ranges mapped over host windows.
pub struct MmapAperture {
    vms: HashMap<VmId, VmAperture>,
    /// RAM of exporters that live in other processes (per-VM processes: the broker
    /// hands each importer's process the exporter's memfd when it first maps from it).
    exporters: HashMap<VmId, VmRamLayout>,
    budget: u64,
    faults: Option<Arc<ApertureFaults>>,
}

impl Default for MmapAperture {
    fn default() -> Self {
        Self::new()
    }
}

impl MmapAperture {
    /// An aperture with no VMs and [`DEFAULT_MAPPINGS_PER_VM`].
    pub fn new() -> Self {
        Self::with_budget(DEFAULT_MAPPINGS_PER_VM)
    }

    /// An aperture whose VMs may each use `mappings_per_vm` host mappings
    /// for their two windows (see the module docs).
    pub fn with_budget(mappings_per_vm: u64) -> Self {
        Self {
            vms: HashMap::new(),
            exporters: HashMap::new(),
            budget: mappings_per_vm,
            faults: None,
        }
    }

    /// Makes this aperture's mmap calls fail as `faults` says (tests).
    pub fn with_faults(mut self, faults: Arc<ApertureFaults>) -> Self {
        self.faults = Some(faults);
        self
    }

    /// The windows of a registered VM.
    pub fn windows(&self, vm: VmId) -> Option<&ApertureWindows> {
        self.vms.get(&vm).map(|v| &v.windows)
    }

    /// Upper bound of the host mappings behind `vm`'s two windows.
    pub fn mappings_in_use(&self, vm: VmId) -> Option<u64> {
        self.vms.get(&vm).map(VmAperture::total_mappings)
    }

    /// Registers the RAM of an exporter whose windows are not in this process, so
    /// that [`ApertureBackend::map`] can map from it (replacing an earlier layout).
    pub fn add_exporter(&mut self, vm: VmId, ram: VmRamLayout) {
        self.exporters.insert(vm, ram);
    }

    /// Forgets an exporter registered with [`MmapAperture::add_exporter`] (its memfd is
    /// closed here once no window maps it any more).
    pub fn forget_exporter(&mut self, vm: VmId) {
        self.exporters.remove(&vm);
    }

    /// The RAM layout of `vm` as an exporter: its own registration, or an outside one.
    fn exporter_ram(&self, vm: VmId) -> Result<&VmRamLayout> {
        self.vms
            .get(&vm)
            .map(|v| &v.ram)
            .or_else(|| self.exporters.get(&vm))
            .ok_or(ApertureError::UnknownVm(vm))
    }

    /// The apertures of `vm`, or UnknownVm.
    fn vm(&self, vm: VmId) -> Result<&VmAperture> {
        self.vms.get(&vm).ok_or(ApertureError::UnknownVm(vm))
    }

    fn vm_mut(&mut self, vm: VmId) -> Result<&mut VmAperture> {
        self.vms.get_mut(&vm).ok_or(ApertureError::UnknownVm(vm))
    }

    /// Fills pages of a window, keeping its mapping bound current.
    fn fill(&mut self, vm: VmId, window: Window, page: u64, npages: u64) -> Result<MapStats> {
        let faults = self.faults.clone();
        let v = self.vm_mut(vm)?;
        let win = v.windows.get(window).clone();
        win.check_range(page, npages)?;
        let bound = v.mappings(window);
        let mmap_calls = win.fill(page, npages, faults.as_deref(), &mut |p, n| {
            bound.record(p, n)
        })?;
        Ok(MapStats {
            mmap_calls,
            pages: npages,
        })
    }
}

impl ApertureBackend for MmapAperture {
    fn add_vm(&mut self, vm: VmId, ram: VmRamLayout, windows: VmWindows) -> Result<()> {
        if self.vms.contains_key(&vm) {
            return Err(ApertureError::DuplicateVm(vm));
        }
        let VmWindows::Local(windows) = windows else {
            return Err(ApertureError::WindowsElsewhere(vm));
        };
        let mappings = [
            WindowMappings::filled(windows.rw.pages()),
            WindowMappings::filled(windows.ro.pages()),
        ];
        // Whole-window revocation must always fit, with room for maps.
        let needed =
            mappings.iter().map(WindowMappings::count).sum::<u64>() + split_reserve(self.budget);
        if needed > self.budget {
            return Err(ApertureError::MappingBudget {
                vm,
                needed,
                budget: self.budget,
            });
        }
        self.vms.insert(
            vm,
            VmAperture {
                ram,
                windows,
                mappings,
            },
        );
        Ok(())
    }

    fn remove_vm(&mut self, vm: VmId) -> Result<()> {
        self.revoke_all(vm)?;
        self.vms.remove(&vm);
        Ok(())
    }

    fn revoke_window(&mut self, vm: VmId, window: Window) -> Result<MapStats> {
        let pages = self.vm(vm)?.windows.get(window).pages();
        self.fill(vm, window, 0, pages)
    }

    fn map(
        &mut self,
        importer: VmId,
        window: Window,
        aperture_page: u64,
        exporter: VmId,
        exporter_gpa: u64,
        npages: u64,
        writable: bool,
    ) -> Result<MapStats> {
        let budget = self.budget;
        let faults = self.faults.clone();
        let imp = self.vm(importer)?;
        let exp = self.exporter_ram(exporter)?;
        let win = imp.windows.get(window).clone();
        win.check_range(aperture_page, npages)?;
        if writable && window == Window::Ro {
            return Err(ApertureError::WritableInReadOnlyWindow);
        }
        let too_big = ApertureError::GpaNotInRam {
            vm: exporter,
            gpa: exporter_gpa,
        };
        let len = npages.checked_mul(PAGE_SIZE).ok_or(too_big)?;
        if exporter_gpa.checked_add(len).is_none() {
            return Err(ApertureError::GpaNotInRam {
                vm: exporter,
                gpa: exporter_gpa,
            });
        }
        // Validate everything and split at RAM region boundaries before
        // touching any mapping. A run: (first window page, npages, file,
        // file offset).
        let mut runs: Vec<(u64, u64, Arc<File>, u64)> = Vec::new();
        let mut done = 0;
        while done < npages {
            let gpa = exporter_gpa + done * PAGE_SIZE;
            let (region, off) = exp.translate(exporter, gpa)?;
            let r = &exp.regions[region];
            let left_in_region = (r.guest_base + r.len - gpa) / PAGE_SIZE;
            let n = left_in_region.min(npages - done);
            runs.push((aperture_page + done, n, r.file.clone(), off));
            done += n;
        }
        // The budget: each run is one mapping, and revocations keep their reserve.
        let imp = self.vm_mut(importer)?;
        let others = imp.total_mappings() - imp.mappings(window).count();
        let inner = (runs.len() as u64).saturating_sub(1);
        let needed = others
            + imp
                .mappings(window)
                .count_after(aperture_page, aperture_page + npages, inner);
        if needed + split_reserve(budget) > budget {
            return Err(ApertureError::MappingBudget {
                vm: importer,
                needed: needed + split_reserve(budget),
                budget,
            });
        }
        let mut stats = MapStats {
            mmap_calls: 0,
            pages: npages,
        };
        let prot = win.prot(writable);
        for (page, n, file, off) in &runs {
            let src = MapSource {
                file,
                file_offset: *off,
                prot,
                flags: libc::MAP_SHARED,
            };
            let mapped = win.mmap_fixed(*page, *n, src, faults.as_deref());
            if let Err(e) = mapped {
                // Leave nothing of this request mapped.
                return match self.fill(importer, window, aperture_page, npages) {
                    Ok(_) => Err(e),
                    Err(fill_err) => {
                        log::error!(
                            "cannot restore the filler after a failed map ({e}): {fill_err}"
                        );
                        Err(ApertureError::Unrestored {
                            vm: importer,
                            source: Box::new(fill_err),
                        })
                    }
                };
            }
            self.vm_mut(importer)?.mappings(window).record(*page, *n);
            stats.mmap_calls += 1;
        }
        Ok(stats)
    }

    fn unmap(
        &mut self,
        importer: VmId,
        window: Window,
        aperture_page: u64,
        npages: u64,
    ) -> Result<MapStats> {
        let budget = self.budget;
        let v = self.vm_mut(importer)?;
        v.windows.get(window).check_range(aperture_page, npages)?;
        let others = v.total_mappings() - v.mappings(window).count();
        let inner = npages.div_ceil(FILLER_PAGES).saturating_sub(1);
        let needed = others
            + v.mappings(window)
                .count_after(aperture_page, aperture_page + npages, inner);
        if needed > budget {
            // Splitting here could push the process towards its mapping
            // limit: the caller revokes the whole window instead.
            return Err(ApertureError::MappingBudget {
                vm: importer,
                needed,
                budget,
            });
        }
        self.fill(importer, window, aperture_page, npages)
    }
}
