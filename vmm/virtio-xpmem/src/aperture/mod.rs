//! The import aperture: host mappings behind each VM's aperture windows.
//!
//! Every VM has two *aperture windows*, guest-physical ranges above RAM that
//! the monitor registers as KVM memslots: the read-write window (virtio shared
//! memory region 0) and the read-only window (region 1, a `KVM_MEM_READONLY`
//! memslot). [`ApertureWindow::reserve`] creates the host mapping behind one
//! window; the monitor passes [`ApertureWindow::host_addr`] to
//! `KVM_SET_USER_MEMORY_REGION` and must keep the window alive (it is
//! reference counted) for as long as the memslot exists.
//!
//! Attaching maps exporter guest RAM into a window: the exporter's guest
//! physical pages are translated through its [`VmRamLayout`] into ranges of
//! its guest-RAM memfd, which are mapped over the window with
//! `mmap(MAP_FIXED | MAP_SHARED)`, one call per contiguous run. KVM's MMU
//! notifier (`KVM_CAP_SYNC_MMU`) zaps the stale stage-2 entries, so the
//! importer sees the new pages on its next access without a memslot change.
//!
//! # The filler
//!
//! A window page that is not mapped to an exporter shows the *filler*: one
//! process-wide memfd of [`FILLER_PAGES`] pages, every byte [`FILLER_BYTE`],
//! sealed (`F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL`) so no
//! one can change it. It is mapped `MAP_PRIVATE`: in the read-write window a
//! guest write to an unmapped page copies the filler page into a private page
//! of *that window only*. This is deliberate:
//!
//! - a shared writable filler would be one physical page seen by every
//!   importer of every VM, a cross-VM channel;
//! - a read-only filler in the read-write memslot would make a guest write to
//!   a revoked page fail `KVM_RUN` with `EFAULT` and kill the VM.
//!
//! Unmapping (revocation) maps the filler again with `MAP_FIXED`, which
//! atomically replaces the exporter's pages: after [`ApertureBackend::unmap`]
//! returns, the window shows [`FILLER_BYTE`]s (or the importer's own earlier
//! writes to that page are gone too) and never the exporter's later data. The
//! memory a guest can pin this way is bounded by its rw window size.
//!
//! The poison pattern (rather than zeros) makes a read of a revoked page
//! recognisable in guest dumps and tests.
//!
//! # Host mapping budget
//!
//! Every mmap over a window creates host mappings (VMAs), and a process has
//! at most `vm.max_map_count` of them. A guest that answers RESOLVEs with
//! scattered pages turns each aperture page into its own mapping, and a
//! revocation that replaces the middle of a run splits it. If the process ran
//! out of mappings, the mmap that revokes a page would fail and the importer
//! would keep seeing a page its exporter freed. So [`MmapAperture`] keeps, per
//! window, an upper bound of the mappings behind it (the cut points between
//! the ranges of its own mmap calls; the kernel may merge ranges, never split
//! them further) and gives every VM a budget:
//!
//! - a map that would leave fewer than [`split_reserve`] mappings of the
//!   budget free is refused ([`ApertureError::MappingBudget`]; the FAULT gets
//!   an error status), so revocations always have room to split runs;
//! - an unmap that would exceed the budget, or whose mmap fails for any
//!   reason, is reported as an error: the caller then calls
//!   [`ApertureBackend::revoke_window`], which replaces the *whole* window by
//!   the filler. Whole-window replacement never splits a mapping (each
//!   window has PROT_NONE guard pages on both sides, so no mapping crosses its
//!   edges) and needs at most `ceil(pages / FILLER_PAGES)` mappings, which
//!   [`MmapAperture::add_vm`] checked fit the budget;
//! - if even that fails, the caller must cut the guest off by a path that
//!   does not need new mappings (the monitor deletes the window's memslot).

//!
//! # Files
//!
//! This file holds the constants, errors and the [`ApertureBackend`] trait; `window.rs` one
//! window's host range and the filler, `ram.rs` a VM's RAM layout, `mmap.rs` the
//! [`MmapAperture`] backend with its mapping budget, `tests.rs` the tests.

use std::io;

use xpmem_domain::{VmId, Window};

mod mmap;
mod ram;
mod window;

pub use mmap::MmapAperture;
pub use ram::{RamRegion, VmRamLayout};
pub use window::{ApertureFaults, ApertureWindow, ApertureWindows};

/// Size of an aperture page (the protocol's page size, also the host's).
pub const PAGE_SIZE: u64 = 4096;
/// Pages in the filler memfd; an unmap of `n` pages needs
/// `ceil(n / FILLER_PAGES)` mmap calls.
pub const FILLER_PAGES: u64 = 512;
/// Every byte of an unmapped (or revoked) aperture page reads as this value.
pub const FILLER_BYTE: u8 = 0xa5;
/// Host mappings a VM's two windows may use when the caller sets no budget.
pub const DEFAULT_MAPPINGS_PER_VM: u64 = 8192;

/// Mappings of a VM's budget that maps may not use: revocations need them to
/// split runs (each unmap adds at most two).
pub fn split_reserve(budget: u64) -> u64 {
    (budget / 8).max(16)
}

/// Errors of the import aperture.
#[derive(Debug, thiserror::Error)]
pub enum ApertureError {
    #[error("aperture window length {0:#x} is zero or not a multiple of 4096; give a page-aligned, non-empty window")]
    BadWindowLength(u64),
    #[error("aperture window guest base {0:#x} is not page aligned; align it to 4096")]
    BadWindowBase(u64),
    #[error(
        "cannot reserve {len:#x} bytes of host address space for an aperture window: {source}"
    )]
    Reserve { len: u64, source: io::Error },
    #[error("cannot create the aperture filler memfd: {0}")]
    Filler(io::Error),
    #[error("VM {0:?} is not registered with the aperture; call add_vm first")]
    UnknownVm(VmId),
    #[error("VM {0:?} is already registered with the aperture")]
    DuplicateVm(VmId),
    #[error("the aperture windows of VM {0:?} are in another process; register them with that process's aperture")]
    WindowsElsewhere(VmId),
    #[error("the process of VM {vm:?} failed the aperture operation: {message}")]
    Remote { vm: VmId, message: String },
    #[error(
        "pages {page}..{page}+{npages} are outside the {window:?} aperture window of {pages} pages"
    )]
    OutOfWindow {
        window: Window,
        page: u64,
        npages: u64,
        pages: u64,
    },
    #[error("cannot map an exporter page writable into the read-only aperture window")]
    WritableInReadOnlyWindow,
    #[error("exporter guest-physical address {gpa:#x} of VM {vm:?} is not page aligned")]
    UnalignedGpa { vm: VmId, gpa: u64 },
    #[error("exporter guest-physical address {gpa:#x} is not in the RAM of VM {vm:?}")]
    GpaNotInRam { vm: VmId, gpa: u64 },
    #[error("RAM region at guest-physical {gpa:#x} is not backed by a file (memfd); back guest RAM with a memfd to share it")]
    RamNotFileBacked { gpa: u64 },
    #[error(
        "RAM region at guest-physical {gpa:#x} (length {len:#x}) is not page aligned or overflows"
    )]
    BadRamRegion { gpa: u64, len: u64 },
    #[error("mmap of {len:#x} bytes at aperture window offset {offset:#x} failed: {source}")]
    Mmap {
        offset: u64,
        len: u64,
        source: io::Error,
    },
    #[error("VM {vm:?} would need {needed} host mappings for its aperture windows, above its budget of {budget}; raise vm.max_map_count or give the VM smaller aperture windows")]
    MappingBudget { vm: VmId, needed: u64, budget: u64 },
    #[error(
        "a failed map of VM {vm:?} could not restore the filler ({source}); revoke the window"
    )]
    Unrestored {
        vm: VmId,
        #[source]
        source: Box<ApertureError>,
    },
}

type Result<T> = std::result::Result<T, ApertureError>;

/// Where a VM's two aperture windows are, as [`ApertureBackend::add_vm`] gets them.
#[derive(Clone, Debug)]
pub enum VmWindows {
    /// Reserved in this process (one process runs the VM and the hub).
    Local(ApertureWindows),
    /// In the VM's own process; only their guest-physical placement is known here.
    Remote(WindowGeometry),
}

/// Guest-physical placement of a VM's two aperture windows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowGeometry {
    pub rw_base: u64,
    pub rw_len: u64,
    pub ro_base: u64,
    pub ro_len: u64,
}

impl VmWindows {
    /// The windows' guest-physical placement.
    pub fn geometry(&self) -> WindowGeometry {
        match self {
            VmWindows::Local(w) => WindowGeometry {
                rw_base: w.rw.guest_base(),
                rw_len: w.rw.len(),
                ro_base: w.ro.guest_base(),
                ro_len: w.ro.len(),
            },
            VmWindows::Remote(g) => *g,
        }
    }
}

impl From<ApertureWindows> for VmWindows {
    fn from(w: ApertureWindows) -> Self {
        VmWindows::Local(w)
    }
}

/// What a map or unmap did, for statistics and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapStats {
    /// Number of mmap(2) calls made.
    pub mmap_calls: u64,
    /// Number of pages mapped or unmapped.
    pub pages: u64,
}

/// The host side of the import aperture, as the device model uses it.
///
/// Implementations must validate every argument: the values come from the
/// domain, which derives them from guest requests.
///
/// The revocation contract: when [`unmap`](Self::unmap) returns an error,
/// the pages may still show exporter memory; the caller must then call
/// [`revoke_window`](Self::revoke_window), and if that fails too, cut the
/// guest off from the window by other means (delete the memslot) before it
/// tells anyone that the pages are gone.
pub trait ApertureBackend: Send {
    /// Registers a VM: its RAM (for when it exports) and its windows (for
    /// when it imports).
    fn add_vm(&mut self, vm: VmId, ram: VmRamLayout, windows: VmWindows) -> Result<()>;
    /// Revokes every page of the VM's windows (they show the filler) and
    /// forgets the VM. The caller must first have unmapped the VM's RAM from
    /// every other VM's window (the domain does this on `remove_vm`).
    fn remove_vm(&mut self, vm: VmId) -> Result<()>;
    /// Replaces the whole `window` of `vm` by the filler, without splitting
    /// any mapping (the window is kept registered).
    fn revoke_window(&mut self, vm: VmId, window: Window) -> Result<MapStats>;
    /// Revokes every page of the VM's windows but keeps it registered
    /// (device reset).
    fn revoke_all(&mut self, vm: VmId) -> Result<MapStats> {
        let rw = self.revoke_window(vm, Window::Rw)?;
        let ro = self.revoke_window(vm, Window::Ro)?;
        Ok(MapStats {
            mmap_calls: rw.mmap_calls + ro.mmap_calls,
            pages: rw.pages + ro.pages,
        })
    }
    /// Maps `npages` exporter pages starting at guest-physical `exporter_gpa`
    /// into `importer`'s `window` starting at `aperture_page`. A range that is
    /// contiguous in the exporter's memfd takes one mmap call (a range
    /// spanning several RAM regions takes one per region). On error nothing
    /// stays mapped in the target range (it shows the filler), except with
    /// [`ApertureError::Unrestored`]: then revoke the window.
    #[allow(clippy::too_many_arguments)]
    fn map(
        &mut self,
        importer: VmId,
        window: Window,
        aperture_page: u64,
        exporter: VmId,
        exporter_gpa: u64,
        npages: u64,
        writable: bool,
    ) -> Result<MapStats>;
    /// Revokes `npages` pages of `importer`'s `window` from `aperture_page`:
    /// they show the filler afterwards. On error see the trait docs.
    fn unmap(
        &mut self,
        importer: VmId,
        window: Window,
        aperture_page: u64,
        npages: u64,
    ) -> Result<MapStats>;
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
#[allow(clippy::cast_possible_truncation)] // test code: casts of test sizes and offsets
mod tests;
