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

/// The host mapping behind one aperture window.
///
/// Created with [`ApertureWindow::reserve`]; the whole range shows the filler
/// until pages are mapped. Dropping it unmaps the host range, so it must
/// outlive the memslot that points at it.
#[derive(Debug)]
pub struct ApertureWindow {
    kind: Window,
    guest_base: u64,
    host: *mut u8,
    len: u64,
}

// SAFETY: the window is a plain host address range; all mutation goes through
// mmap(2), which is thread safe, and the struct itself is immutable.
unsafe impl Send for ApertureWindow {}
// SAFETY: as above; shared references only read the immutable fields.
unsafe impl Sync for ApertureWindow {}

impl ApertureWindow {
    /// Reserves `len` bytes of host address space for the window at guest
    /// physical `guest_base` and fills it with the filler.
    pub fn reserve(kind: Window, guest_base: u64, len: u64) -> Result<Arc<Self>> {
        if len == 0 || !len.is_multiple_of(PAGE_SIZE) || usize::try_from(len).is_err() {
            return Err(ApertureError::BadWindowLength(len));
        }
        if !guest_base.is_multiple_of(PAGE_SIZE) || guest_base.checked_add(len).is_none() {
            return Err(ApertureError::BadWindowBase(guest_base));
        }
        filler()?;
        // SAFETY: a fresh PROT_NONE anonymous reservation at a kernel-chosen
        // address; it overlaps no existing mapping.
        let host = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if host == libc::MAP_FAILED {
            return Err(ApertureError::Reserve {
                len,
                source: io::Error::last_os_error(),
            });
        }
        let window = Self {
            kind,
            guest_base,
            host: host.cast(),
            len,
        };
        window.fill(0, len / PAGE_SIZE)?;
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

    /// Maps the filler over pages `page..page + npages` (already
    /// bounds-checked). Returns the number of mmap calls.
    fn fill(&self, page: u64, npages: u64) -> Result<u64> {
        let filler = filler()?;
        let prot = self.prot(self.kind == Window::Rw);
        let mut calls = 0;
        let mut done = 0;
        while done < npages {
            let chunk = (npages - done).min(FILLER_PAGES);
            let offset = (page + done) * PAGE_SIZE;
            let len = chunk * PAGE_SIZE;
            // SAFETY: offset + len is inside this window (checked by the
            // caller), a range this object reserved and owns; MAP_FIXED only
            // replaces pages of the window. The filler memfd is
            // FILLER_PAGES long, so offset 0..len is inside it.
            let ret = unsafe {
                libc::mmap(
                    self.host.add(offset as usize).cast(),
                    len as usize,
                    prot,
                    libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
                    filler.as_raw_fd(),
                    0,
                )
            };
            if ret == libc::MAP_FAILED {
                return Err(ApertureError::Mmap {
                    offset,
                    len,
                    source: io::Error::last_os_error(),
                });
            }
            calls += 1;
            done += chunk;
        }
        Ok(calls)
    }

    /// Maps `len` bytes of `file` at `file_offset` over the window at page
    /// `page` (already bounds-checked).
    fn map_file(
        &self,
        page: u64,
        npages: u64,
        file: &File,
        file_offset: u64,
        writable: bool,
    ) -> Result<()> {
        let offset = page * PAGE_SIZE;
        let len = npages * PAGE_SIZE;
        let file_off = libc::off_t::try_from(file_offset).map_err(|_| ApertureError::Mmap {
            offset,
            len,
            source: io::Error::from_raw_os_error(libc::EOVERFLOW),
        })?;
        // SAFETY: the target range is inside this window (checked by the
        // caller) and owned by it; the file range was checked against the
        // exporter's RAM layout, so it lies inside the exporter's memfd.
        let ret = unsafe {
            libc::mmap(
                self.host.add(offset as usize).cast(),
                len as usize,
                self.prot(writable),
                libc::MAP_SHARED | libc::MAP_FIXED,
                file.as_raw_fd(),
                file_off,
            )
        };
        if ret == libc::MAP_FAILED {
            return Err(ApertureError::Mmap {
                offset,
                len,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

impl Drop for ApertureWindow {
    fn drop(&mut self) {
        // SAFETY: host..host+len is the reservation made in `reserve`, owned
        // by this object and no longer referenced (the last Arc is gone).
        unsafe { libc::munmap(self.host.cast(), self.len as usize) };
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
pub trait ApertureBackend: Send {
    /// Registers a VM: its RAM (for when it exports) and its windows (for
    /// when it imports).
    fn add_vm(&mut self, vm: VmId, ram: VmRamLayout, windows: ApertureWindows) -> Result<()>;
    /// Revokes every page of the VM's windows (they show the filler) and
    /// forgets the VM. The caller must first have unmapped the VM's RAM from
    /// every other VM's window (the domain does this on `remove_vm`).
    fn remove_vm(&mut self, vm: VmId) -> Result<()>;
    /// Revokes every page of the VM's windows but keeps it registered
    /// (device reset).
    fn revoke_all(&mut self, vm: VmId) -> Result<MapStats>;
    /// Maps `npages` exporter pages starting at guest-physical `exporter_gpa`
    /// into `importer`'s `window` starting at `aperture_page`. A range that is
    /// contiguous in the exporter's memfd takes one mmap call (a range
    /// spanning several RAM regions takes one per region). On error nothing
    /// stays mapped in the target range (it shows the filler).
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
    /// they show the filler afterwards.
    fn unmap(
        &mut self,
        importer: VmId,
        window: Window,
        aperture_page: u64,
        npages: u64,
    ) -> Result<MapStats>;
}

struct VmAperture {
    ram: VmRamLayout,
    windows: ApertureWindows,
}

/// The real [`ApertureBackend`]: memfd ranges mapped over host windows.
#[derive(Default)]
pub struct MmapAperture {
    vms: HashMap<VmId, VmAperture>,
}

impl MmapAperture {
    /// An aperture with no VMs.
    pub fn new() -> Self {
        Self::default()
    }

    /// The windows of a registered VM.
    pub fn windows(&self, vm: VmId) -> Option<&ApertureWindows> {
        self.vms.get(&vm).map(|v| &v.windows)
    }

    /// The apertures of `vm`, or UnknownVm.
    fn vm(&self, vm: VmId) -> Result<&VmAperture> {
        self.vms.get(&vm).ok_or(ApertureError::UnknownVm(vm))
    }
}

impl ApertureBackend for MmapAperture {
    fn add_vm(&mut self, vm: VmId, ram: VmRamLayout, windows: ApertureWindows) -> Result<()> {
        if self.vms.contains_key(&vm) {
            return Err(ApertureError::DuplicateVm(vm));
        }
        self.vms.insert(vm, VmAperture { ram, windows });
        Ok(())
    }

    fn remove_vm(&mut self, vm: VmId) -> Result<()> {
        self.revoke_all(vm)?;
        self.vms.remove(&vm);
        Ok(())
    }

    fn revoke_all(&mut self, vm: VmId) -> Result<MapStats> {
        let v = self.vm(vm)?;
        let mut stats = MapStats::default();
        for w in [&v.windows.rw, &v.windows.ro] {
            stats.mmap_calls += w.fill(0, w.pages())?;
            stats.pages += w.pages();
        }
        Ok(stats)
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
        let imp = self.vm(importer)?;
        let exp = self.vm(exporter)?;
        let win = imp.windows.get(window);
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
        // touching any mapping. A run: (first window page, npages, region
        // index, file offset).
        let mut runs: Vec<(u64, u64, usize, u64)> = Vec::new();
        let mut done = 0;
        while done < npages {
            let gpa = exporter_gpa + done * PAGE_SIZE;
            let (region, off) = exp.ram.translate(exporter, gpa)?;
            let r = &exp.ram.regions[region];
            let left_in_region = (r.guest_base + r.len - gpa) / PAGE_SIZE;
            let n = left_in_region.min(npages - done);
            runs.push((aperture_page + done, n, region, off));
            done += n;
        }
        let mut stats = MapStats {
            mmap_calls: 0,
            pages: npages,
        };
        for &(page, n, region, off) in &runs {
            let file = &exp.ram.regions[region].file;
            if let Err(e) = win.map_file(page, n, file, off, writable) {
                // Leave nothing of this request mapped.
                if let Err(fill_err) = win.fill(aperture_page, npages) {
                    log::error!("cannot restore the filler after a failed map: {fill_err}");
                }
                return Err(e);
            }
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
        let imp = self.vm(importer)?;
        let win = imp.windows.get(window);
        win.check_range(aperture_page, npages)?;
        let mmap_calls = win.fill(aperture_page, npages)?;
        Ok(MapStats {
            mmap_calls,
            pages: npages,
        })
    }
}

#[cfg(test)]
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
        let ram = Ram::new(4 * MIB);
        let mut ap = MmapAperture::new();
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
        let lo = Ram::new(MIB);
        let hi = Ram::new(MIB);
        lo.write(MIB - PAGE_SIZE, 0x01, 4096);
        hi.write(0, 0x02, 4096);
        let layout = VmRamLayout::new(vec![
            RamRegion {
                guest_base: 0,
                len: MIB,
                file: lo.file.clone(),
                file_offset: 0,
            },
            RamRegion {
                guest_base: MIB,
                len: MIB,
                file: hi.file.clone(),
                file_offset: 0,
            },
        ])
        .unwrap();
        let w3 = ApertureWindows::reserve(0x1_0000_0000, MIB, 0x1_1000_0000, MIB).unwrap();
        ap.add_vm(VmId(3), layout, w3).unwrap();
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
}
