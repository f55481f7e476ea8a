//! A VM's guest RAM as the aperture sees it: guest-physical ranges and the memfd ranges
//! behind them, for translating exporter pages into what is mapped over a window.

use std::fs::File;
use std::sync::Arc;

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use xpmem_domain::VmId;

use super::{ApertureError, Result, PAGE_SIZE};

/// One RAM region of a VM: guest-physical range backed by `file` (the guest
/// RAM memfd) starting at `file_offset`.
#[derive(Clone, Debug)]
pub struct RamRegion {
    pub guest_base: u64,
    pub len: u64,
    pub file: Arc<File>,
    pub file_offset: u64,
}

/// The guest-physical to memfd translation of one VM's RAM.
#[derive(Clone, Debug, Default)]
pub struct VmRamLayout {
    pub(super) regions: Vec<RamRegion>,
}

impl VmRamLayout {
    /// A layout from explicit regions (page aligned, non-overlapping).
    pub fn new(mut regions: Vec<RamRegion>) -> Result<Self> {
        regions.sort_by_key(|r| r.guest_base);
        let mut prev_end = 0u64;
        for r in &regions {
            let bad = ApertureError::BadRamRegion {
                gpa: r.guest_base,
                len: r.len,
            };
            let end = r.guest_base.checked_add(r.len).ok_or(bad)?;
            if r.len == 0
                || !r.guest_base.is_multiple_of(PAGE_SIZE)
                || !r.len.is_multiple_of(PAGE_SIZE)
                || !r.file_offset.is_multiple_of(PAGE_SIZE)
                || r.file_offset.checked_add(r.len).is_none()
                || r.guest_base < prev_end
            {
                return Err(ApertureError::BadRamRegion {
                    gpa: r.guest_base,
                    len: r.len,
                });
            }
            prev_end = end;
        }
        Ok(Self { regions })
    }

    /// The layout of a file-backed [`GuestMemoryMmap`] (every region must be
    /// backed by a memfd or other shareable file).
    pub fn from_guest_memory(mem: &GuestMemoryMmap) -> Result<Self> {
        let mut regions = Vec::new();
        for r in mem.iter() {
            let gpa = r.start_addr().0;
            let fo = r
                .file_offset()
                .ok_or(ApertureError::RamNotFileBacked { gpa })?;
            regions.push(RamRegion {
                guest_base: gpa,
                len: r.len(),
                file: fo.arc().clone(),
                file_offset: fo.start(),
            });
        }
        Self::new(regions)
    }

    /// The regions, sorted by guest address.
    pub fn regions(&self) -> &[RamRegion] {
        &self.regions
    }

    /// Region index and file offset of a page-aligned guest-physical page.
    pub(super) fn translate(&self, vm: VmId, gpa: u64) -> Result<(usize, u64)> {
        if !gpa.is_multiple_of(PAGE_SIZE) {
            return Err(ApertureError::UnalignedGpa { vm, gpa });
        }
        let idx = self
            .regions
            .partition_point(|r| r.guest_base <= gpa)
            .checked_sub(1)
            .ok_or(ApertureError::GpaNotInRam { vm, gpa })?;
        let r = &self.regions[idx];
        if gpa - r.guest_base >= r.len {
            return Err(ApertureError::GpaNotInRam { vm, gpa });
        }
        Ok((idx, r.file_offset + (gpa - r.guest_base)))
    }
}
