//! Host-memory tests of the aperture: bytes flow both ways, revocation shows the filler,
//! bounds and budgets are enforced, and the mapping bound never undercounts the kernel.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;

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
    ap.add_vm(vm, layout, w.into()).unwrap();
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
    ap.add_vm(EXP, ram.layout(EXP_BASE), exp_windows.into())
        .unwrap();
    let imp_windows = ApertureWindows::reserve(0x1_0000_0000, 4 * MIB, 0x1_1000_0000, MIB).unwrap();
    let imp_ram = Ram::new(MIB);
    ap.add_vm(IMP, imp_ram.layout(0), imp_windows.clone().into())
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
        small.add_vm(VmId(9), ram.layout(EXP_BASE), big.into()),
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
