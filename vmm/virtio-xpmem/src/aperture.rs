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

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::{Arc, OnceLock};

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use xpmem_domain::{VmId, Window};

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

/// The process-wide sealed filler memfd.
fn filler() -> Result<&'static File> {
    static FILLER: OnceLock<std::result::Result<File, i32>> = OnceLock::new();
    FILLER
        .get_or_init(|| create_filler().map_err(|e| e.raw_os_error().unwrap_or(libc::EIO)))
        .as_ref()
        .map_err(|&errno| ApertureError::Filler(io::Error::from_raw_os_error(errno)))
}

fn create_filler() -> io::Result<File> {
    // SAFETY: the name is a valid NUL-terminated string; memfd_create has no
    // other memory side effects.
    let fd = unsafe {
        libc::memfd_create(
            c"virtio-xpmem-filler".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by memfd_create and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    let content = vec![FILLER_BYTE; (FILLER_PAGES * PAGE_SIZE) as usize];
    std::io::Write::write_all(&mut &file, &content)?;
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
    // SAFETY: F_ADD_SEALS on an fd we own, with an integer argument.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// Failure injection for tests: makes the aperture's own mmap calls fail.
///
/// Shared with the test through an `Arc`; [`MmapAperture::with_faults`]
/// installs it. The next `skip` calls succeed, the `fail` calls after them
/// fail with `ENOMEM`, and later ones succeed again.
#[derive(Debug, Default)]
pub struct ApertureFaults {
    skip: std::sync::atomic::AtomicI64,
    fail: std::sync::atomic::AtomicI64,
    /// mmap calls failed so far.
    pub injected: std::sync::atomic::AtomicU64,
}

impl ApertureFaults {
    /// Lets `n` more mmap calls succeed, then fails every one after.
    pub fn fail_after(&self, n: i64) {
        self.arm(n, i64::MAX);
    }
    /// Fails the next `n` mmap calls.
    pub fn fail_next(&self, n: i64) {
        self.arm(0, n);
    }
    /// Stops failing mmap calls.
    pub fn heal(&self) {
        self.arm(0, 0);
    }
    fn arm(&self, skip: i64, fail: i64) {
        use std::sync::atomic::Ordering::SeqCst;
        self.fail.store(0, SeqCst);
        self.skip.store(skip, SeqCst);
        self.fail.store(fail, SeqCst);
    }
    /// Whether the next mmap call must fail (and counts it).
    fn should_fail(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        if self.fail.load(SeqCst) <= 0 {
            return false;
        }
        if self.skip.fetch_sub(1, SeqCst) > 0 {
            return false;
        }
        self.skip.store(0, SeqCst);
        if self.fail.fetch_sub(1, SeqCst) <= 0 {
            return false;
        }
        self.injected.fetch_add(1, SeqCst);
        true
    }
}

/// The host mapping behind one aperture window.
///
/// Created with [`ApertureWindow::reserve`]; the whole range shows the filler
/// until pages are mapped. One PROT_NONE guard page on each side keeps the
/// window's mappings from merging with neighbours, so replacing the whole
/// window never splits a mapping. Dropping it unmaps the host range, so it
/// must outlive the memslot that points at it.
#[derive(Debug)]
pub struct ApertureWindow {
    kind: Window,
    guest_base: u64,
    /// First byte of the window (one guard page after the reservation start).
    host: *mut u8,
    len: u64,
}

// SAFETY: the window is a plain host address range; all mutation goes through
// mmap(2), which is thread safe, and the struct itself is immutable.
unsafe impl Send for ApertureWindow {}
// SAFETY: as above; shared references only read the immutable fields.
unsafe impl Sync for ApertureWindow {}

/// What one mmap over a window maps: `file` from `file_offset`, with `prot` and `flags`
/// (`MAP_FIXED` is added).
#[derive(Clone, Copy)]
struct MapSource<'a> {
    file: &'a File,
    file_offset: u64,
    prot: i32,
    flags: i32,
}

/// One successful mmap over a window: pages `start..start + npages`.
type OnMapped<'a> = &'a mut dyn FnMut(u64, u64);

impl ApertureWindow {
    /// Reserves `len` bytes of host address space for the window at guest
    /// physical `guest_base` (plus a guard page on each side) and fills it
    /// with the filler.
    pub fn reserve(kind: Window, guest_base: u64, len: u64) -> Result<Arc<Self>> {
        let total = len
            .checked_add(2 * PAGE_SIZE)
            .filter(|_| len != 0 && len.is_multiple_of(PAGE_SIZE))
            .and_then(|t| usize::try_from(t).ok())
            .ok_or(ApertureError::BadWindowLength(len))?;
        if !guest_base.is_multiple_of(PAGE_SIZE) || guest_base.checked_add(len).is_none() {
            return Err(ApertureError::BadWindowBase(guest_base));
        }
        filler()?;
        // SAFETY: a fresh PROT_NONE anonymous reservation at a kernel-chosen
        // address; it overlaps no existing mapping.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(ApertureError::Reserve {
                len,
                source: io::Error::last_os_error(),
            });
        }
        let window = Self {
            kind,
            guest_base,
            // SAFETY: the reservation is len + 2 pages long; one page in is
            // still inside it.
            host: unsafe { base.cast::<u8>().add(PAGE_SIZE as usize) },
            len,
        };
        window.fill(0, len / PAGE_SIZE, None, &mut |_, _| {})?;
        Ok(Arc::new(window))
    }

    /// Which window this is.
    pub fn kind(&self) -> Window {
        self.kind
    }
    /// Guest-physical base (SHMBase).
    pub fn guest_base(&self) -> u64 {
        self.guest_base
    }
    /// Host virtual address to register as the memslot's userspace address.
    pub fn host_addr(&self) -> u64 {
        self.host as u64
    }
    /// Length in bytes (SHMLen).
    pub fn len(&self) -> u64 {
        self.len
    }
    /// Windows are never empty; present for API symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Number of pages in the window.
    pub fn pages(&self) -> u64 {
        self.len / PAGE_SIZE
    }

    fn check_range(&self, page: u64, npages: u64) -> Result<()> {
        match page.checked_add(npages) {
            Some(end) if end <= self.pages() => Ok(()),
            _ => Err(ApertureError::OutOfWindow {
                window: self.kind,
                page,
                npages,
                pages: self.pages(),
            }),
        }
    }

    fn prot(&self, writable: bool) -> i32 {
        if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        }
    }

    /// One `mmap(MAP_FIXED)` of `src` over pages `page..page + npages` of the window
    /// (already bounds-checked by the caller).
    fn mmap_fixed(
        &self,
        page: u64,
        npages: u64,
        src: MapSource<'_>,
        faults: Option<&ApertureFaults>,
    ) -> Result<()> {
        let MapSource {
            file,
            file_offset,
            prot,
            flags,
        } = src;
        let offset = page * PAGE_SIZE;
        let len = npages * PAGE_SIZE;
        let err = |source| ApertureError::Mmap {
            offset,
            len,
            source,
        };
        let file_off = libc::off_t::try_from(file_offset)
            .map_err(|_| err(io::Error::from_raw_os_error(libc::EOVERFLOW)))?;
        if faults.is_some_and(ApertureFaults::should_fail) {
            return Err(err(io::Error::from_raw_os_error(libc::ENOMEM)));
        }
        // SAFETY: offset + len is inside this window (checked by the caller),
        // a range this object reserved and owns; MAP_FIXED only replaces pages
        // of the window. The file range was checked by the caller: the filler
        // is FILLER_PAGES long, an exporter range lies inside its memfd.
        let ret = unsafe {
            libc::mmap(
                self.host.add(offset as usize).cast(),
                len as usize,
                prot,
                flags | libc::MAP_FIXED,
                file.as_raw_fd(),
                file_off,
            )
        };
        if ret == libc::MAP_FAILED {
            return Err(err(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Maps the filler over pages `page..page + npages` (already
    /// bounds-checked), one mmap per [`FILLER_PAGES`]; `on_mapped` hears of
    /// each one that succeeded. Returns the number of mmap calls.
    fn fill(
        &self,
        page: u64,
        npages: u64,
        faults: Option<&ApertureFaults>,
        on_mapped: OnMapped<'_>,
    ) -> Result<u64> {
        let filler = filler()?;
        let prot = self.prot(self.kind == Window::Rw);
        let flags = libc::MAP_PRIVATE | libc::MAP_NORESERVE;
        let mut calls = 0;
        let mut done = 0;
        while done < npages {
            let chunk = (npages - done).min(FILLER_PAGES);
            let src = MapSource {
                file: filler,
                file_offset: 0,
                prot,
                flags,
            };
            self.mmap_fixed(page + done, chunk, src, faults)?;
            on_mapped(page + done, chunk);
            calls += 1;
            done += chunk;
        }
        Ok(calls)
    }
}

impl Drop for ApertureWindow {
    fn drop(&mut self) {
        // SAFETY: the reservation made in `reserve` starts one guard page
        // before `host` and is len + 2 pages long; it is owned by this object
        // and no longer referenced (the last Arc is gone).
        unsafe {
            libc::munmap(
                self.host.sub(PAGE_SIZE as usize).cast(),
                (self.len + 2 * PAGE_SIZE) as usize,
            )
        };
    }
}

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
    regions: Vec<RamRegion>,
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
    fn translate(&self, vm: VmId, gpa: u64) -> Result<(usize, u64)> {
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

/// A VM's two aperture windows.
#[derive(Clone, Debug)]
pub struct ApertureWindows {
    pub rw: Arc<ApertureWindow>,
    pub ro: Arc<ApertureWindow>,
}

impl ApertureWindows {
    /// Reserves both windows (rw at `rw_base`, ro at `ro_base`).
    pub fn reserve(rw_base: u64, rw_len: u64, ro_base: u64, ro_len: u64) -> Result<Self> {
        Ok(Self {
            rw: ApertureWindow::reserve(Window::Rw, rw_base, rw_len)?,
            ro: ApertureWindow::reserve(Window::Ro, ro_base, ro_len)?,
        })
    }

    /// The window of the given kind.
    pub fn get(&self, kind: Window) -> &Arc<ApertureWindow> {
        match kind {
            Window::Rw => &self.rw,
            Window::Ro => &self.ro,
        }
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
    fn add_vm(&mut self, vm: VmId, ram: VmRamLayout, windows: ApertureWindows) -> Result<()>;
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
    fn add_vm(&mut self, vm: VmId, ram: VmRamLayout, windows: ApertureWindows) -> Result<()> {
        if self.vms.contains_key(&vm) {
            return Err(ApertureError::DuplicateVm(vm));
        }
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
        let exp = self.vm(exporter)?;
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
            let (region, off) = exp.ram.translate(exporter, gpa)?;
            let r = &exp.ram.regions[region];
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn memfd(len: u64) -> File {
        // SAFETY: valid C string; no memory side effects.
        let fd = unsafe { libc::memfd_create(c"test-ram".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
        // SAFETY: fresh fd owned by nobody else.
        let f = unsafe { File::from_raw_fd(fd) };
        f.set_len(len).unwrap();
        f
    }

    /// Exporter RAM as a plain host mapping of its memfd, for checking bytes.
    struct Ram {
        file: Arc<File>,
        host: *mut u8,
        len: u64,
    }

    impl Ram {
        fn new(len: u64) -> Self {
            let file = Arc::new(memfd(len));
            // SAFETY: new shared mapping of the whole memfd.
            let host = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    file.as_raw_fd(),
                    0,
                )
            };
            assert_ne!(host, libc::MAP_FAILED);
            Self {
                file,
                host: host.cast(),
                len,
            }
        }
        fn layout(&self, base: u64) -> VmRamLayout {
            VmRamLayout::new(vec![RamRegion {
                guest_base: base,
                len: self.len,
                file: self.file.clone(),
                file_offset: 0,
            }])
            .unwrap()
        }
        fn write(&self, off: u64, val: u8, n: usize) {
            assert!(off + n as u64 <= self.len);
            // SAFETY: in bounds of our own mapping.
            unsafe { std::ptr::write_bytes(self.host.add(off as usize), val, n) };
        }
        fn read(&self, off: u64) -> u8 {
            assert!(off < self.len);
            // SAFETY: in bounds of our own mapping.
            unsafe { std::ptr::read_volatile(self.host.add(off as usize)) }
        }
    }

    impl Drop for Ram {
        fn drop(&mut self) {
            // SAFETY: our own mapping.
            unsafe { libc::munmap(self.host.cast(), self.len as usize) };
        }
    }

    fn win_read(w: &ApertureWindow, off: u64) -> u8 {
        assert!(off < w.len());
        // SAFETY: inside the window, which is always mapped readable.
        unsafe { std::ptr::read_volatile((w.host_addr() + off) as *const u8) }
    }

    fn win_write(w: &ApertureWindow, off: u64, val: u8) {
        assert!(off < w.len());
        // SAFETY: inside the rw window, mapped writable.
        unsafe { std::ptr::write_volatile((w.host_addr() + off) as *mut u8, val) }
    }

    const EXP: VmId = VmId(1);
    const IMP: VmId = VmId(2);
    const EXP_BASE: u64 = 0x10_0000;

    fn setup() -> (MmapAperture, Ram, ApertureWindows) {
        setup_with(MmapAperture::new())
    }

    /// Registers `vm` with RAM in two regions (0..1 MiB, 1..2 MiB) of different memfds;
    /// returns them (keep them alive).
    fn add_two_region_exporter(ap: &mut MmapAperture, vm: VmId) -> (Ram, Ram) {
        let lo = Ram::new(MIB);
        let hi = Ram::new(MIB);
        let region = |guest_base, ram: &Ram| RamRegion {
            guest_base,
            len: MIB,
            file: ram.file.clone(),
            file_offset: 0,
        };
        let layout = VmRamLayout::new(vec![region(0, &lo), region(MIB, &hi)]).unwrap();
        let w = ApertureWindows::reserve(0x1_0000_0000, MIB, 0x1_1000_0000, MIB).unwrap();
        ap.add_vm(vm, layout, w).unwrap();
        (lo, hi)
    }

    #[test]
    fn fresh_window_shows_filler() {
        let w = ApertureWindow::reserve(Window::Rw, 0, 3 * FILLER_PAGES * PAGE_SIZE).unwrap();
        for off in [0, PAGE_SIZE * FILLER_PAGES, w.len() - 1] {
            assert_eq!(win_read(&w, off), FILLER_BYTE);
        }
    }

    #[test]
    fn map_shares_bytes_both_ways_and_unmap_revokes() {
        let (mut ap, ram, w) = setup();
        ram.write(0x2000, 0x11, 4096);
        let stats = ap
            .map(IMP, Window::Rw, 5, EXP, EXP_BASE + 0x2000, 1, true)
            .unwrap();
        assert_eq!(
            stats,
            MapStats {
                mmap_calls: 1,
                pages: 1
            }
        );
        let off = 5 * PAGE_SIZE;
        assert_eq!(win_read(&w.rw, off), 0x11);
        assert_eq!(win_read(&w.rw, off + 4095), 0x11);
        // Neighbours still show the filler.
        assert_eq!(win_read(&w.rw, off - 1), FILLER_BYTE);
        assert_eq!(win_read(&w.rw, off + 4096), FILLER_BYTE);
        // Importer write reaches the exporter, exporter write reaches the importer.
        win_write(&w.rw, off + 7, 0x77);
        assert_eq!(ram.read(0x2007), 0x77);
        ram.write(0x2008, 0x88, 1);
        assert_eq!(win_read(&w.rw, off + 8), 0x88);

        ap.unmap(IMP, Window::Rw, 5, 1).unwrap();
        assert_eq!(win_read(&w.rw, off + 7), FILLER_BYTE);
        // The exporter's later data never shows through.
        ram.write(0x2000, 0x99, 4096);
        assert_eq!(win_read(&w.rw, off), FILLER_BYTE);
        assert_eq!(win_read(&w.rw, off + 4095), FILLER_BYTE);
        // A write to a revoked page stays private to the window.
        win_write(&w.rw, off, 0x42);
        assert_eq!(ram.read(0x2000), 0x99);
        let fresh = ApertureWindow::reserve(Window::Rw, 0, PAGE_SIZE).unwrap();
        assert_eq!(
            win_read(&fresh, 0),
            FILLER_BYTE,
            "filler must not be shared-writable"
        );
    }

    fn maps_line_perms(addr: u64) -> String {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        for line in maps.lines() {
            let (range, rest) = line.split_once(' ').unwrap();
            let (lo, hi) = range.split_once('-').unwrap();
            let lo = u64::from_str_radix(lo, 16).unwrap();
            let hi = u64::from_str_radix(hi, 16).unwrap();
            if (lo..hi).contains(&addr) {
                return rest.split(' ').next().unwrap().to_string();
            }
        }
        panic!("{addr:#x} not mapped");
    }

    #[test]
    fn read_only_mapping_is_prot_read() {
        let (mut ap, ram, w) = setup();
        ram.write(0x3000, 0x33, 4096);
        assert!(matches!(
            ap.map(IMP, Window::Ro, 0, EXP, EXP_BASE + 0x3000, 1, true),
            Err(ApertureError::WritableInReadOnlyWindow)
        ));
        ap.map(IMP, Window::Ro, 2, EXP, EXP_BASE + 0x3000, 1, false)
            .unwrap();
        let addr = w.ro.host_addr() + 2 * PAGE_SIZE;
        assert_eq!(win_read(&w.ro, 2 * PAGE_SIZE), 0x33);
        assert_eq!(maps_line_perms(addr), "r--s");
        // A write must fault: try it in a forked child.
        // SAFETY: the child only does a volatile write and _exit; no locks
        // are taken between fork and _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: deliberately faulting write in the child.
            unsafe {
                std::ptr::write_volatile(addr as *mut u8, 1);
                libc::_exit(0);
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFSIGNALED(status),
            "write to ro window did not fault"
        );
        assert_eq!(libc::WTERMSIG(status), libc::SIGSEGV);
        assert_eq!(ram.read(0x3000), 0x33);
    }

    #[test]
    fn one_mmap_per_contiguous_region_run() {
        let (mut ap, _ram, w) = setup();
        let s = ap.map(IMP, Window::Rw, 0, EXP, EXP_BASE, 64, true).unwrap();
        assert_eq!(
            s,
            MapStats {
                mmap_calls: 1,
                pages: 64
            }
        );
        // Exporter RAM in two regions of different memfds: a range across
        // the boundary needs one mmap per region, and bytes come from each.
        let (lo, hi) = add_two_region_exporter(&mut ap, VmId(3));
        lo.write(MIB - PAGE_SIZE, 0x01, 4096);
        hi.write(0, 0x02, 4096);
        let s = ap
            .map(IMP, Window::Rw, 100, VmId(3), MIB - PAGE_SIZE, 2, true)
            .unwrap();
        assert_eq!(s.mmap_calls, 2);
        assert_eq!(win_read(&w.rw, 100 * PAGE_SIZE), 0x01);
        assert_eq!(win_read(&w.rw, 101 * PAGE_SIZE), 0x02);
        let s = ap.unmap(IMP, Window::Rw, 0, FILLER_PAGES + 1).unwrap();
        assert_eq!(s.mmap_calls, 2);
        assert_eq!(win_read(&w.rw, 100 * PAGE_SIZE), FILLER_BYTE);
    }

    #[test]
    fn bounds_are_checked_and_nothing_is_mapped_on_error() {
        let (mut ap, ram, w) = setup();
        ram.write(0, 0x55, 4096);
        let pages = w.rw.pages();
        assert!(matches!(
            ap.map(IMP, Window::Rw, pages, EXP, EXP_BASE, 1, true),
            Err(ApertureError::OutOfWindow { .. })
        ));
        assert!(matches!(
            ap.map(IMP, Window::Rw, u64::MAX, EXP, EXP_BASE, 1, true),
            Err(ApertureError::OutOfWindow { .. })
        ));
        assert!(matches!(
            ap.unmap(IMP, Window::Rw, pages - 1, 2),
            Err(ApertureError::OutOfWindow { .. })
        ));
        // Range running past the end of exporter RAM: nothing is mapped.
        assert!(matches!(
            ap.map(
                IMP,
                Window::Rw,
                0,
                EXP,
                EXP_BASE + 3 * MIB,
                (MIB / PAGE_SIZE) + 1,
                true
            ),
            Err(ApertureError::GpaNotInRam { .. })
        ));
        assert_eq!(win_read(&w.rw, 0), FILLER_BYTE);
        assert!(matches!(
            ap.map(IMP, Window::Rw, 0, EXP, EXP_BASE - PAGE_SIZE, 1, true),
            Err(ApertureError::GpaNotInRam { .. })
        ));
        assert!(matches!(
            ap.map(IMP, Window::Rw, 0, EXP, EXP_BASE + 1, 1, true),
            Err(ApertureError::UnalignedGpa { .. })
        ));
        assert!(matches!(
            ap.map(IMP, Window::Rw, 0, VmId(99), EXP_BASE, 1, true),
            Err(ApertureError::UnknownVm(VmId(99)))
        ));
        assert!(matches!(
            ApertureWindow::reserve(Window::Rw, 0, 100),
            Err(ApertureError::BadWindowLength(100))
        ));
    }

    #[test]
    fn revoke_all_restores_filler() {
        let (mut ap, ram, w) = setup();
        ram.write(0, 0x66, 8192);
        ap.map(IMP, Window::Rw, 1, EXP, EXP_BASE, 2, true).unwrap();
        ap.map(IMP, Window::Ro, 1, EXP, EXP_BASE, 1, false).unwrap();
        assert_eq!(win_read(&w.rw, PAGE_SIZE), 0x66);
        ap.remove_vm(IMP).unwrap();
        assert_eq!(win_read(&w.rw, PAGE_SIZE), FILLER_BYTE);
        assert_eq!(win_read(&w.ro, PAGE_SIZE), FILLER_BYTE);
        assert!(matches!(
            ap.unmap(IMP, Window::Rw, 0, 1),
            Err(ApertureError::UnknownVm(IMP))
        ));
    }

    #[test]
    fn layout_translation() {
        let a = Arc::new(memfd(MIB));
        let layout = VmRamLayout::new(vec![
            RamRegion {
                guest_base: 0x10_0000,
                len: MIB,
                file: a.clone(),
                file_offset: MIB,
            },
            RamRegion {
                guest_base: 0,
                len: 0x8_0000,
                file: a.clone(),
                file_offset: 0,
            },
        ])
        .unwrap();
        assert_eq!(layout.translate(VmId(1), 0x1000).unwrap(), (0, 0x1000));
        assert_eq!(
            layout.translate(VmId(1), 0x10_1000).unwrap(),
            (1, MIB + 0x1000)
        );
        assert!(layout.translate(VmId(1), 0x8_0000).is_err());
        assert!(layout.translate(VmId(1), 0x20_0000).is_err());
        assert!(VmRamLayout::new(vec![
            RamRegion {
                guest_base: 0,
                len: 0x2000,
                file: a.clone(),
                file_offset: 0
            },
            RamRegion {
                guest_base: 0x1000,
                len: 0x2000,
                file: a,
                file_offset: 0
            },
        ])
        .is_err());
    }
    /// Host mappings (VMAs) inside `w`, read from /proc/self/maps.
    fn vmas_in(w: &ApertureWindow) -> u64 {
        let (lo, hi) = (w.host_addr(), w.host_addr() + w.len());
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines()
            .filter(|line| {
                let range = line.split(' ').next().unwrap();
                let (a, b) = range.split_once('-').unwrap();
                let a = u64::from_str_radix(a, 16).unwrap();
                let b = u64::from_str_radix(b, 16).unwrap();
                a < hi && lo < b
            })
            .count() as u64
    }

    fn setup_with(ap: MmapAperture) -> (MmapAperture, Ram, ApertureWindows) {
        let mut ap = ap;
        let ram = Ram::new(4 * MIB);
        let exp_windows = ApertureWindows::reserve(0x1_0000_0000, MIB, 0x1_1000_0000, MIB).unwrap();
        ap.add_vm(EXP, ram.layout(EXP_BASE), exp_windows).unwrap();
        let imp_windows =
            ApertureWindows::reserve(0x1_0000_0000, 4 * MIB, 0x1_1000_0000, MIB).unwrap();
        let imp_ram = Ram::new(MIB);
        ap.add_vm(IMP, imp_ram.layout(0), imp_windows.clone())
            .unwrap();
        (ap, ram, imp_windows)
    }

    #[test]
    fn windows_have_guard_pages_and_the_bound_never_undercounts_the_kernel() {
        let (mut ap, _ram, w) = setup();
        // The pages right outside the window are PROT_NONE guards.
        assert_eq!(maps_line_perms(w.rw.host_addr() - 1), "---p");
        assert_eq!(maps_line_perms(w.rw.host_addr() + w.rw.len()), "---p");
        // Scattered single-page maps, then revocations in the middle of runs.
        for i in 0..200u64 {
            let gpa = EXP_BASE + ((i * 37) % 1000) * PAGE_SIZE;
            ap.map(IMP, Window::Rw, i * 3, EXP, gpa, 1 + i % 3, true)
                .unwrap();
        }
        ap.map(IMP, Window::Rw, 700, EXP, EXP_BASE, 64, true)
            .unwrap();
        for p in [701, 703, 710, 711, 600, 0] {
            ap.unmap(IMP, Window::Rw, p, 1).unwrap();
        }
        let bound = ap.mappings_in_use(IMP).unwrap();
        let real = vmas_in(&w.rw) + vmas_in(&w.ro);
        assert!(
            real <= bound,
            "kernel has {real} mappings, bound says {bound}"
        );
        assert!(bound > 200, "scattered maps must count: {bound}");
        // Whole-window revocation brings the bound back to the filler's.
        ap.revoke_all(IMP).unwrap();
        let filled = w.rw.pages().div_ceil(FILLER_PAGES) + w.ro.pages().div_ceil(FILLER_PAGES);
        assert_eq!(ap.mappings_in_use(IMP), Some(filled));
        assert!(vmas_in(&w.rw) + vmas_in(&w.ro) <= filled);
    }

    #[test]
    fn the_budget_refuses_maps_keeps_room_for_revocations_and_refuses_a_window_that_cannot_fit() {
        // 4 MiB + 1 MiB windows: 2 + 1 filler mappings; reserve 16.
        let budget = 3 + 16 + 20;
        let (mut ap, ram, w) = setup_with(MmapAperture::with_budget(budget));
        ram.write(0, 0x42, 4 * MIB as usize - 1);
        // Every other page, scattered: each map adds up to two mappings.
        let mut mapped = Vec::new();
        let refused = (0..100u64).find_map(|i| {
            match ap.map(
                IMP,
                Window::Rw,
                2 * i,
                EXP,
                EXP_BASE + 4 * i * PAGE_SIZE,
                1,
                true,
            ) {
                Ok(_) => {
                    mapped.push(2 * i);
                    None
                }
                Err(e) => Some(e),
            }
        });
        assert!(
            matches!(refused, Some(ApertureError::MappingBudget { vm: IMP, .. })),
            "{refused:?}"
        );
        let in_use = ap.mappings_in_use(IMP).unwrap();
        assert!(in_use + split_reserve(budget) <= budget, "{in_use}");
        // A refused map changed nothing.
        assert_eq!(
            win_read(&w.rw, 2 * mapped.len() as u64 * PAGE_SIZE),
            FILLER_BYTE
        );
        // Revoking whole mapped pages never splits: always within budget.
        for &p in &mapped {
            ap.unmap(IMP, Window::Rw, p, 1).unwrap();
            assert_eq!(win_read(&w.rw, p * PAGE_SIZE), FILLER_BYTE);
        }
        // A run revoked page by page from its middle splits each time; the
        // reserve absorbs some, then unmap refuses (the caller revokes the
        // window instead).
        ap.revoke_all(IMP).unwrap();
        ap.map(IMP, Window::Rw, 0, EXP, EXP_BASE, 512, true)
            .unwrap();
        let err = (1..255u64)
            .map(|k| ap.unmap(IMP, Window::Rw, 2 * k, 1))
            .find_map(Result::err);
        assert!(
            matches!(err, Some(ApertureError::MappingBudget { .. })),
            "{err:?}"
        );
        assert!(ap.mappings_in_use(IMP).unwrap() <= budget);
        ap.revoke_window(IMP, Window::Rw).unwrap();
        assert!((0..512).all(|p| win_read(&w.rw, p * PAGE_SIZE) == FILLER_BYTE));
        // A VM whose filler alone does not fit is refused at once.
        let mut small = MmapAperture::with_budget(18);
        let big = ApertureWindows::reserve(0, 8 * MIB, 1 << 30, MIB).unwrap();
        assert!(matches!(
            small.add_vm(VmId(9), ram.layout(EXP_BASE), big),
            Err(ApertureError::MappingBudget {
                needed: 21,
                budget: 18,
                ..
            })
        ));
    }

    #[test]
    fn a_failed_unmap_leaves_it_to_the_caller_and_a_failed_restore_says_so() {
        let faults = Arc::new(ApertureFaults::default());
        let (mut ap, ram, w) = setup_with(MmapAperture::new().with_faults(faults.clone()));
        ram.write(0, 0x61, 8192);
        ap.map(IMP, Window::Rw, 3, EXP, EXP_BASE, 2, true).unwrap();
        faults.fail_after(0);
        let e = ap.unmap(IMP, Window::Rw, 3, 1).unwrap_err();
        assert!(matches!(e, ApertureError::Mmap { .. }), "{e:?}");
        // Exactly the situation the caller must repair: still mapped.
        assert_eq!(win_read(&w.rw, 3 * PAGE_SIZE), 0x61);
        assert!(ap.revoke_window(IMP, Window::Rw).is_err());
        faults.heal();
        ap.revoke_window(IMP, Window::Rw).unwrap();
        assert_eq!(win_read(&w.rw, 3 * PAGE_SIZE), FILLER_BYTE);
        // A map whose second run fails and whose filler restore fails too.
        let _ram = add_two_region_exporter(&mut ap, VmId(3));
        faults.fail_after(1);
        let e = ap
            .map(IMP, Window::Rw, 10, VmId(3), MIB - PAGE_SIZE, 2, true)
            .unwrap_err();
        assert!(
            matches!(e, ApertureError::Unrestored { vm: IMP, .. }),
            "{e:?}"
        );
        faults.heal();
        assert!(faults.injected.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    }
}
