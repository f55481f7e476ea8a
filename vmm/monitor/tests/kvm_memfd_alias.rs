//! Host memory aliasing under KVM (BRIEF section 2, architecture decision 3).
//!
//! The import aperture relies on this: guest RAM is a `MAP_SHARED` memfd
//! mapping registered as a memslot, and when the monitor maps a page of a
//! *different* memfd over part of a memslot's host mapping with
//! `mmap(MAP_FIXED | MAP_SHARED)`, the guest sees the new page at once, with
//! no memslot change (KVM's MMU notifier zaps the stale stage-2 / shadow
//! entry). These tests prove it on whatever `/dev/kvm` the host has, with a
//! tiny hand-made guest that reads a word, reports it on an I/O port and
//! writes the word + 1 to a second address.
//!
//! `guest_sees_memfd_page_mapped_over_its_ram`:
//! 1. the guest sees memfd A's value and its write lands in memfd A;
//! 2. after memfd B's page is mapped over the data page, the guest sees B's
//!    value, its write lands in memfd B and memfd A is untouched;
//! 3. after A's page is mapped back (what revocation does with a filler),
//!    the guest sees A again.
//!
//! `two_vms_share_a_page_through_an_aperture_memslot`: the real import path.
//! VM B has an aperture memslot above its RAM backed by a filler memfd; a page
//! of VM A's RAM memfd is mapped into it; each guest sees the other's writes;
//! mapping the filler back revokes the access. A `KVM_MEM_READONLY` aperture
//! slot lets B read A's page while B's writes exit to the monitor as MMIO.
//!
//! The guest is tried first in 64-bit long mode with paging, then in real
//! mode; the mode used is printed. When `/dev/kvm` is missing or cannot run
//! any guest, the tests print `SKIPPED: ...` and pass, unless
//! `XPMEM_REQUIRE_KVM=1`, in which case they fail.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

const PAGE: usize = 4096;
/// Guest RAM: 2 MiB, one memslot at guest-physical 0.
const MEM_SIZE: usize = 2 << 20;
const GDT: u64 = 0x500;
const PML4: u64 = 0x1000;
const PDPT: u64 = 0x2000;
const PD: u64 = 0x3000;
const CODE: u64 = 0x8000;
/// The page that gets aliased.
const DATA: u64 = 0x9000;
/// The guest reports the word it read on this port.
const PORT_VALUE: u16 = 0x10;
/// The guest signals it is done (after its write) on this port.
const PORT_DONE: u16 = 0x11;
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

const VALUE_A: u32 = 0x1234_5678;
const VALUE_B: u32 = 0xcafe_f00d;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GuestMode {
    Long64,
    Real16,
}

/// The guest program: `mov eax,[read]; out 0x10,eax; inc eax;
/// mov [write],eax; out 0x11,al; hlt; jmp hlt`.
fn program(mode: GuestMode, read: u32, write: u32) -> Vec<u8> {
    let mut c = Vec::new();
    match mode {
        GuestMode::Long64 => {
            c.extend_from_slice(&[0x8b, 0x04, 0x25]); // mov eax, [disp32]
            c.extend_from_slice(&read.to_le_bytes());
            c.extend_from_slice(&[0x66, 0xba, 0x10, 0x00]); // mov dx, 0x10
            c.push(0xef); // out dx, eax
            c.extend_from_slice(&[0xff, 0xc0]); // inc eax
            c.extend_from_slice(&[0x89, 0x04, 0x25]); // mov [disp32], eax
            c.extend_from_slice(&write.to_le_bytes());
            c.extend_from_slice(&[0x66, 0xba, 0x11, 0x00]); // mov dx, 0x11
        }
        GuestMode::Real16 => {
            // 0x66 selects 32-bit operands; addresses are 16-bit (DS base 0).
            let (Ok(read), Ok(write)) = (u16::try_from(read), u16::try_from(write)) else {
                panic!("real-mode test program addresses must be below 64 KiB");
            };
            c.extend_from_slice(&[0x66, 0xa1]); // mov eax, [moffs16]
            c.extend_from_slice(&read.to_le_bytes());
            c.extend_from_slice(&[0xba, 0x10, 0x00]); // mov dx, 0x10
            c.extend_from_slice(&[0x66, 0xef]); // out dx, eax
            c.extend_from_slice(&[0x66, 0x40]); // inc eax
            c.extend_from_slice(&[0x66, 0xa3]); // mov [moffs16], eax
            c.extend_from_slice(&write.to_le_bytes());
            c.extend_from_slice(&[0xba, 0x11, 0x00]); // mov dx, 0x11
        }
    }
    c.extend_from_slice(&[0xee, 0xf4, 0xeb, 0xfd]); // out dx, al; hlt; jmp hlt
    c
}

/// Skips (or fails, with XPMEM_REQUIRE_KVM=1) when KVM cannot be used here.
fn skip(reason: &str) {
    if std::env::var("XPMEM_REQUIRE_KVM").as_deref() == Ok("1") {
        panic!("XPMEM_REQUIRE_KVM=1 but the KVM memfd aliasing test cannot run: {reason}");
    }
    // Written to the stderr handle rather than with eprintln!, which the
    // test harness captures: a skip must be visible in a normal run.
    let _ = writeln!(
        io::stderr(),
        "SKIPPED: kvm_memfd_alias because {reason} (set XPMEM_REQUIRE_KVM=1 to fail instead)"
    );
}

fn memfd(name: &str, len: usize) -> io::Result<File> {
    let cname = std::ffi::CString::new(name).map_err(io::Error::other)?;
    // SAFETY: `cname` is a valid NUL-terminated string; memfd_create does not
    // retain the pointer.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(len as u64)?;
    Ok(file)
}

/// A `MAP_SHARED` mapping of a whole memfd, unmapped on drop.
struct Mapping {
    addr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(file: &File, len: usize) -> io::Result<Self> {
        // SAFETY: a fresh mapping at a kernel-chosen address; it aliases no
        // Rust object. `file` is at least `len` bytes long.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            addr: addr.cast(),
            len,
        })
    }

    /// Replaces the page at `offset` of this mapping with page `file_offset`
    /// of `file`, in place (the import aperture's attach/revoke operation).
    fn map_page_over(&self, offset: usize, file: &File, file_offset: usize) -> io::Result<()> {
        assert!(offset & (PAGE - 1) == 0 && offset + PAGE <= self.len);
        // SAFETY: the target range lies inside this mapping, which this
        // struct owns; no Rust reference into it is live (all accesses go
        // through `write`/`read` below, which copy).
        let addr = unsafe {
            libc::mmap(
                self.addr.add(offset).cast(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                file.as_raw_fd(),
                file_offset as libc::off_t,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        assert_eq!(addr.cast::<u8>(), self.addr.wrapping_add(offset));
        Ok(())
    }

    fn write(&self, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= self.len);
        // SAFETY: the range is inside the mapping (checked above) and the
        // guest is not running (the vCPU runs on this thread).
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.addr.add(offset), bytes.len())
        };
    }

    fn read_u32(&self, offset: usize) -> u32 {
        assert!(offset + 4 <= self.len);
        let mut b = [0u8; 4];
        // SAFETY: as in `write`.
        unsafe { std::ptr::copy_nonoverlapping(self.addr.add(offset), b.as_mut_ptr(), 4) };
        u32::from_le_bytes(b)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the range this struct mapped.
        unsafe { libc::munmap(self.addr.cast(), self.len) };
    }
}

fn pread_u32(file: &File, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    file.read_exact_at(&mut b, offset).unwrap();
    u32::from_le_bytes(b)
}

/// Writes page tables (identity map of the first 8 MiB with 2 MiB pages,
/// covering RAM and the aperture slots) and a GDT.
fn write_guest_image(mem: &Mapping) {
    let q = |v: u64| v.to_le_bytes();
    mem.write(PML4 as usize, &q(PDPT | 0x3)); // present, writable
    mem.write(PDPT as usize, &q(PD | 0x3));
    for i in 0..4u64 {
        // 2 MiB page, present, writable.
        mem.write(PD as usize + 8 * i as usize, &q((i << 21) | 0x83));
    }
    // GDT: null, 64-bit code (0x08), data (0x10).
    mem.write(GDT as usize, &q(0));
    mem.write(GDT as usize + 8, &q(0x00af_9b00_0000_ffff));
    mem.write(GDT as usize + 16, &q(0x00cf_9300_0000_ffff));
}

fn setup_vcpu(vcpu: &VcpuFd, mode: GuestMode) -> Result<(), String> {
    let mut sregs = vcpu
        .get_sregs()
        .map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
    match mode {
        GuestMode::Long64 => {
            let code = kvm_segment {
                base: 0,
                limit: 0xffff_ffff,
                selector: 0x08,
                type_: 0xb,
                present: 1,
                dpl: 0,
                db: 0,
                s: 1,
                l: 1,
                g: 1,
                ..Default::default()
            };
            let data = kvm_segment {
                selector: 0x10,
                type_: 0x3,
                db: 1,
                l: 0,
                ..code
            };
            sregs.cs = code;
            sregs.ds = data;
            sregs.es = data;
            sregs.fs = data;
            sregs.gs = data;
            sregs.ss = data;
            sregs.gdt.base = GDT;
            sregs.gdt.limit = 23;
            sregs.cr3 = PML4;
            sregs.cr4 = 1 << 5; // PAE
            sregs.cr0 = (1 << 0) | (1 << 4) | (1 << 31); // PE, ET, PG; CD/NW clear
            sregs.efer = (1 << 8) | (1 << 10); // LME, LMA
        }
        GuestMode::Real16 => {
            for seg in [
                &mut sregs.cs,
                &mut sregs.ds,
                &mut sregs.es,
                &mut sregs.fs,
                &mut sregs.gs,
                &mut sregs.ss,
            ] {
                seg.base = 0;
                seg.selector = 0;
            }
            sregs.cr0 &= !((1 << 0) | (1 << 31) | (1 << 29) | (1 << 30));
        }
    }
    vcpu.set_sregs(&sregs)
        .map_err(|e| format!("KVM_SET_SREGS: {e}"))?;
    let mut regs = vcpu.get_regs().map_err(|e| format!("KVM_GET_REGS: {e}"))?;
    regs.rip = CODE;
    regs.rflags = 0x2;
    regs.rsp = CODE;
    regs.rax = 0;
    vcpu.set_regs(&regs)
        .map_err(|e| format!("KVM_SET_REGS: {e}"))?;
    Ok(())
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Kicks the calling thread out of KVM_RUN with a signal after the deadline,
/// repeatedly, until dropped.
struct Watchdog {
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN() + 2
}

impl Watchdog {
    fn start(timeout: Duration) -> Self {
        // SAFETY: pthread_self has no preconditions.
        let target = unsafe { libc::pthread_self() };
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            while !d.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
                if start.elapsed() > timeout && !d.load(Ordering::SeqCst) {
                    // SAFETY: `target` is the vCPU thread, which outlives
                    // this watchdog (Drop joins before returning); the
                    // signal has a no-op handler installed.
                    unsafe { libc::pthread_kill(target, kick_signal()) };
                }
            }
        });
        Self {
            done,
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What one run of the guest program did.
#[derive(Debug, Default)]
struct RunResult {
    /// The word the guest read.
    reported: u32,
    /// Writes that KVM turned into MMIO exits (e.g. into a read-only slot).
    mmio_writes: Vec<(u64, Vec<u8>)>,
}

/// Loads the program (reading `read`, writing `write`) and runs it once from
/// the start.
fn run_guest(vm: &mut Vm, read: u32, write: u32) -> Result<RunResult, String> {
    vm.ram.write(CODE as usize, &program(vm.mode, read, write));
    setup_vcpu(&vm.vcpu, vm.mode)?;
    let _watchdog = Watchdog::start(RUN_TIMEOUT);
    let mut result = RunResult::default();
    let mut reported = false;
    for _ in 0..64 {
        match vm.vcpu.run() {
            Ok(VcpuExit::IoOut(PORT_VALUE, data)) => {
                let bytes: [u8; 4] = data
                    .try_into()
                    .map_err(|_| format!("{}-byte OUT on port 0x10, expected 4", data.len()))?;
                result.reported = u32::from_le_bytes(bytes);
                reported = true;
            }
            Ok(VcpuExit::IoOut(PORT_DONE, _)) if reported => return Ok(result),
            Ok(VcpuExit::IoOut(PORT_DONE, _)) => {
                return Err("guest finished without reporting".into())
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => result.mmio_writes.push((addr, data.to_vec())),
            Ok(VcpuExit::Hlt) => return Err("guest halted before finishing".into()),
            Ok(exit) => return Err(format!("unexpected exit {exit:?}")),
            Err(e) if e.errno() == libc::EINTR => {
                return Err(format!("guest did not finish within {RUN_TIMEOUT:?}"))
            }
            Err(e) => return Err(format!("KVM_RUN: {e}")),
        }
    }
    Err("guest kept exiting without finishing".into())
}

struct Vm {
    vm: VmFd,
    vcpu: VcpuFd,
    mode: GuestMode,
    ram_fd: File,
    ram: Mapping,
    /// Extra memslots (apertures), kept alive as long as the VM.
    slots: Vec<Mapping>,
}

impl Vm {
    fn new(kvm: &Kvm, mode: GuestMode) -> Result<Vm, String> {
        let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
        let ram_fd = memfd("guest-ram", MEM_SIZE).map_err(|e| format!("memfd_create: {e}"))?;
        let ram = Mapping::new(&ram_fd, MEM_SIZE).map_err(|e| format!("mmap: {e}"))?;
        write_guest_image(&ram);
        let vcpu = vm
            .create_vcpu(0)
            .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
        let mut this = Vm {
            vm,
            vcpu,
            mode,
            ram_fd,
            ram,
            slots: Vec::new(),
        };
        let addr = this.ram.addr as u64;
        this.add_slot(0, 0, MEM_SIZE, addr, 0)?;
        Ok(this)
    }

    fn add_slot(
        &mut self,
        slot: u32,
        gpa: u64,
        len: usize,
        host: u64,
        flags: u32,
    ) -> Result<(), String> {
        let region = kvm_userspace_memory_region {
            slot,
            flags,
            guest_phys_addr: gpa,
            memory_size: len as u64,
            userspace_addr: host,
        };
        // SAFETY: `host` is a live mapping of `len` bytes owned by this `Vm`
        // (`ram` or an entry of `slots`), dropped only after the VM fd.
        unsafe { self.vm.set_user_memory_region(region) }
            .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION slot {slot}: {e}"))
    }

    /// Registers `len` bytes of `backing` (a filler) as an aperture memslot.
    fn add_aperture(
        &mut self,
        slot: u32,
        gpa: u64,
        backing: &File,
        len: usize,
        flags: u32,
    ) -> Result<usize, String> {
        let map = Mapping::new(backing, len).map_err(|e| format!("mmap aperture: {e}"))?;
        let host = map.addr as u64;
        self.slots.push(map);
        self.add_slot(slot, gpa, len, host, flags)?;
        Ok(self.slots.len() - 1)
    }
}

/// Finds a guest mode this KVM runs; returns the VM with the first run done
/// (the guest read VALUE_A at DATA and wrote VALUE_A + 1 at DATA + 4).
fn first_working_mode(kvm: &Kvm) -> Result<Vm, String> {
    let mut failures = Vec::new();
    for mode in [GuestMode::Long64, GuestMode::Real16] {
        let mut vm = Vm::new(kvm, mode)?;
        vm.ram.write(DATA as usize, &VALUE_A.to_le_bytes());
        match run_guest(&mut vm, DATA as u32, DATA as u32 + 4) {
            Ok(r) if r.reported == VALUE_A => return Ok(vm),
            Ok(r) => failures.push(format!(
                "{mode:?}: guest read {:#x}, expected {VALUE_A:#x}",
                r.reported
            )),
            Err(e) => failures.push(format!("{mode:?}: {e}")),
        }
    }
    Err(failures.join("; "))
}

/// Opens KVM and installs the kick handler, or says why the tests skip.
fn open_kvm() -> Result<Kvm, String> {
    let kvm = Kvm::new().map_err(|e| format!("/dev/kvm cannot be opened ({e})"))?;
    vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler)
        .map_err(|e| format!("cannot install the vCPU kick signal handler ({e})"))?;
    Ok(kvm)
}

#[test]
fn guest_sees_memfd_page_mapped_over_its_ram() {
    let kvm = match open_kvm() {
        Ok(k) => k,
        Err(e) => return skip(&e),
    };
    let sync_mmu = kvm.check_extension_raw(kvm_bindings::KVM_CAP_SYNC_MMU.into());
    eprintln!(
        "kvm_memfd_alias: KVM API {}, KVM_CAP_SYNC_MMU={sync_mmu}",
        kvm.get_api_version()
    );
    let mut vm = match first_working_mode(&kvm) {
        Ok(x) => x,
        Err(e) => return skip(&format!("this KVM runs no tiny test guest ({e})")),
    };
    eprintln!("kvm_memfd_alias: guest mode {:?} works", vm.mode);
    let (read, write) = (DATA as u32, DATA as u32 + 4);

    // 1. Baseline: the guest read memfd A (checked by first_working_mode)
    //    and its write landed in memfd A.
    assert_eq!(pread_u32(&vm.ram_fd, DATA + 4), VALUE_A + 1);

    // 2. Map a page of memfd B over the data page of the memslot's mapping.
    let other = memfd("aperture-page", PAGE).unwrap();
    other.write_all_at(&VALUE_B.to_le_bytes(), 0).unwrap();
    vm.ram.map_page_over(DATA as usize, &other, 0).unwrap();
    assert_eq!(vm.ram.read_u32(DATA as usize), VALUE_B);
    let seen = run_guest(&mut vm, read, write)
        .expect("guest run after aliasing")
        .reported;
    assert_eq!(
        seen, VALUE_B,
        "the guest still sees the old page after MAP_FIXED over its memslot"
    );
    assert_eq!(
        pread_u32(&other, 4),
        VALUE_B + 1,
        "the guest's write did not land in the aliased memfd"
    );
    assert_eq!(
        pread_u32(&vm.ram_fd, DATA + 4),
        VALUE_A + 1,
        "the guest's write went to the original memfd"
    );
    eprintln!("kvm_memfd_alias: guest saw the aliased page ({seen:#x}) and wrote into it");

    // 3. Map memfd A's own page back (revocation) and check again.
    vm.ram_fd
        .write_all_at(&(!VALUE_A).to_le_bytes(), DATA)
        .unwrap();
    vm.ram
        .map_page_over(DATA as usize, &vm.ram_fd, DATA as usize)
        .unwrap();
    let seen = run_guest(&mut vm, read, write)
        .expect("guest run after unaliasing")
        .reported;
    assert_eq!(seen, !VALUE_A);
    assert_eq!(
        pread_u32(&other, 4),
        VALUE_B + 1,
        "the guest wrote into the page after it was unmapped"
    );
    eprintln!("kvm_memfd_alias: after mapping the original page back the guest saw it again");
}

/// Guest-physical base of the read-write aperture slot (right above RAM).
const APERTURE_RW: u64 = MEM_SIZE as u64;
/// Guest-physical base of the read-only aperture slot.
const APERTURE_RO: u64 = APERTURE_RW + APERTURE_LEN as u64;
const APERTURE_LEN: usize = 2 << 20;

/// The import aperture between two VMs: a page of VM A's RAM memfd is mapped
/// into a separate aperture memslot of VM B (first backed by a filler), both
/// guests see each other's writes, and mapping the filler back revokes it.
/// A `KVM_MEM_READONLY` aperture slot lets B read the page while its writes
/// exit to the monitor instead of reaching A's memory.
#[test]
fn two_vms_share_a_page_through_an_aperture_memslot() {
    let kvm = match open_kvm() {
        Ok(k) => k,
        Err(e) => return skip(&e),
    };
    // The aperture lies above 64 KiB, out of reach of the real-mode program.
    let mut a = match Vm::new(&kvm, GuestMode::Long64) {
        Ok(vm) => vm,
        Err(e) => return skip(&format!("cannot create a VM ({e})")),
    };
    a.ram.write(DATA as usize, &VALUE_A.to_le_bytes());
    match run_guest(&mut a, DATA as u32, DATA as u32 + 4) {
        Ok(r) if r.reported == VALUE_A => {}
        other => {
            return skip(&format!(
                "this KVM does not run the 64-bit test guest ({other:?})"
            ))
        }
    }
    let mut b = Vm::new(&kvm, GuestMode::Long64).unwrap();
    let filler = memfd("aperture-filler", APERTURE_LEN).unwrap();
    let rw = b
        .add_aperture(1, APERTURE_RW, &filler, APERTURE_LEN, 0)
        .unwrap();

    // Before any attachment B reads the filler (zeros).
    assert_eq!(
        run_guest(&mut b, APERTURE_RW as u32, APERTURE_RW as u32 + 8)
            .unwrap()
            .reported,
        0
    );

    // Attach: A's page DATA into B's aperture page 0.
    b.slots[rw]
        .map_page_over(0, &a.ram_fd, DATA as usize)
        .unwrap();
    // B reads what A's guest wrote (VALUE_A + 1 at DATA + 4) and writes + 1.
    let r = run_guest(&mut b, APERTURE_RW as u32 + 4, APERTURE_RW as u32 + 8).unwrap();
    assert_eq!(r.reported, VALUE_A + 1, "B does not see A's guest write");
    // A's guest sees B's guest write.
    let r = run_guest(&mut a, DATA as u32 + 8, DATA as u32 + 12).unwrap();
    assert_eq!(r.reported, VALUE_A + 2, "A does not see B's guest write");
    eprintln!("kvm_memfd_alias: two VMs exchanged data through an aperture memslot");

    // Revoke: map the filler back; B no longer reaches A's page.
    b.slots[rw].map_page_over(0, &filler, 0).unwrap();
    let r = run_guest(&mut b, APERTURE_RW as u32 + 12, APERTURE_RW as u32 + 16).unwrap();
    assert_eq!(r.reported, 0, "B still reads A's page after revocation");
    assert_eq!(
        pread_u32(&a.ram_fd, DATA + 16),
        0,
        "B wrote into A after revocation"
    );

    // Read-only aperture.
    if kvm.check_extension_raw(kvm_bindings::KVM_CAP_READONLY_MEM.into()) <= 0 {
        eprintln!(
            "kvm_memfd_alias: KVM_CAP_READONLY_MEM is not offered; read-only aperture part not run"
        );
        return;
    }
    let ro_filler = memfd("aperture-ro-filler", APERTURE_LEN).unwrap();
    let ro = b
        .add_aperture(
            2,
            APERTURE_RO,
            &ro_filler,
            APERTURE_LEN,
            kvm_bindings::KVM_MEM_READONLY,
        )
        .unwrap();
    b.slots[ro]
        .map_page_over(0, &a.ram_fd, DATA as usize)
        .unwrap();
    let r = run_guest(&mut b, APERTURE_RO as u32 + 8, APERTURE_RO as u32 + 0x20).unwrap();
    assert_eq!(
        r.reported,
        VALUE_A + 2,
        "B does not read A's page through the read-only slot"
    );
    assert_eq!(
        r.mmio_writes,
        vec![(APERTURE_RO + 0x20, (VALUE_A + 3).to_le_bytes().to_vec())],
        "a write into the read-only slot must exit to the monitor"
    );
    assert_eq!(
        pread_u32(&a.ram_fd, DATA + 0x20),
        0,
        "the read-only slot let B write A's page"
    );
    eprintln!("kvm_memfd_alias: read-only aperture slot: reads see A's page, writes exit as MMIO");
}
