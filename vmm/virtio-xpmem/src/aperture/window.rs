//! The host side of one aperture window: the reserved range with its guard pages, the
//! sealed filler memfd every unmapped page shows, the `MAP_FIXED` mmap calls over it
//! (with test failure injection), and a VM's pair of windows.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::{Arc, OnceLock};

use xpmem_domain::Window;

use super::{ApertureError, Result, FILLER_BYTE, FILLER_PAGES, PAGE_SIZE};

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
    let len = usize::try_from(FILLER_PAGES * PAGE_SIZE)
        .map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
    let content = vec![FILLER_BYTE; len];
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
pub(super) struct MapSource<'a> {
    pub(super) file: &'a File,
    pub(super) file_offset: u64,
    pub(super) prot: i32,
    pub(super) flags: i32,
}

/// [`PAGE_SIZE`] as a host size.
#[allow(clippy::cast_possible_truncation)] // 4096 fits every usize
const PAGE_BYTES: usize = PAGE_SIZE as usize;

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
            host: unsafe { base.cast::<u8>().add(PAGE_BYTES) },
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

    pub(super) fn check_range(&self, page: u64, npages: u64) -> Result<()> {
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

    pub(super) fn prot(&self, writable: bool) -> i32 {
        if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        }
    }

    /// One `mmap(MAP_FIXED)` of `src` over pages `page..page + npages` of the window
    /// (already bounds-checked by the caller).
    pub(super) fn mmap_fixed(
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
        let (Ok(host_offset), Ok(host_len)) = (usize::try_from(offset), usize::try_from(len))
        else {
            return Err(err(io::Error::from_raw_os_error(libc::EOVERFLOW)));
        };
        if faults.is_some_and(ApertureFaults::should_fail) {
            return Err(err(io::Error::from_raw_os_error(libc::ENOMEM)));
        }
        // SAFETY: offset + len is inside this window (checked by the caller),
        // a range this object reserved and owns; MAP_FIXED only replaces pages
        // of the window. The file range was checked by the caller: the filler
        // is FILLER_PAGES long, an exporter range lies inside its memfd.
        let ret = unsafe {
            libc::mmap(
                self.host.add(host_offset).cast(),
                host_len,
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
    pub(super) fn fill(
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
    #[allow(clippy::cast_possible_truncation)] // reserve() checked that len + 2 pages fits usize
    fn drop(&mut self) {
        // SAFETY: the reservation made in `reserve` starts one guard page
        // before `host` and is len + 2 pages long; it is owned by this object
        // and no longer referenced (the last Arc is gone).
        unsafe {
            libc::munmap(
                self.host.sub(PAGE_BYTES).cast(),
                (self.len + 2 * PAGE_SIZE) as usize,
            )
        };
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
