//! Host memory aliasing under KVM (BRIEF section 2, architecture decision 3).
//!
//! The import aperture relies on this: guest RAM is a `MAP_SHARED` memfd
//! mapping registered as a memslot, and when the monitor maps a page of a
//! *different* memfd over part of that host mapping with
//! `mmap(MAP_FIXED | MAP_SHARED)`, the guest sees the new page at once, with
//! no memslot change (KVM's MMU notifier zaps the stale stage-2 / shadow
//! entry). This test proves it on whatever `/dev/kvm` the host has, with a
//! tiny hand-made guest that reads a word from a data page, reports it on an
//! I/O port and writes the word + 1 back next to it:
//!
//! 1. the guest sees memfd A's value and its write lands in memfd A;
//! 2. after memfd B's page is mapped over the data page, the guest sees B's
//!    value, its write lands in memfd B and memfd A is untouched;
//! 3. after A's page is mapped back (what revocation does with a filler),
//!    the guest sees A again.
//!
//! The guest is tried first in 64-bit long mode with paging (what `kvm_pvm`
//! needs), then in real mode; the mode used is printed. When `/dev/kvm` is
//! missing or cannot run any guest, the test prints `SKIPPED: ...` and passes,
//! unless `XPMEM_REQUIRE_KVM=1`, in which case it fails.

use std::fs::File;
use std::io;
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

/// 64-bit code: mov eax,[DATA]; mov dx,0x10; out dx,eax; inc eax;
/// mov [DATA+4],eax; mov dx,0x11; out dx,al; hlt; jmp hlt.
const CODE_LONG: &[u8] = &[
    0x8b, 0x04, 0x25, 0x00, 0x90, 0x00, 0x00, // mov eax, [0x9000]
    0x66, 0xba, 0x10, 0x00, // mov dx, 0x10
    0xef, // out dx, eax
    0xff, 0xc0, // inc eax
    0x89, 0x04, 0x25, 0x04, 0x90, 0x00, 0x00, // mov [0x9004], eax
    0x66, 0xba, 0x11, 0x00, // mov dx, 0x11
    0xee, // out dx, al
    0xf4, // hlt
    0xeb, 0xfd, // jmp hlt
];

/// The same program in 16-bit real mode (0x66 selects 32-bit operands).
const CODE_REAL: &[u8] = &[
    0x66, 0xa1, 0x00, 0x90, // mov eax, [0x9000]
    0xba, 0x10, 0x00, // mov dx, 0x10
    0x66, 0xef, // out dx, eax
    0x66, 0x40, // inc eax
    0x66, 0xa3, 0x04, 0x90, // mov [0x9004], eax
    0xba, 0x11, 0x00, // mov dx, 0x11
    0xee, // out dx, al
    0xf4, // hlt
    0xeb, 0xfd, // jmp hlt
];

/// Skips (or fails, with XPMEM_REQUIRE_KVM=1) when KVM cannot be used here.
fn skip(reason: &str) {
    if std::env::var("XPMEM_REQUIRE_KVM").as_deref() == Ok("1") {
        panic!("XPMEM_REQUIRE_KVM=1 but the KVM memfd aliasing test cannot run: {reason}");
    }
    eprintln!("SKIPPED: kvm_memfd_alias because {reason}");
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

/// Writes page tables (identity map of the first 2 MiB), a GDT and the code.
fn write_guest_image(mem: &Mapping, mode: GuestMode) {
    let q = |v: u64| v.to_le_bytes();
    mem.write(PML4 as usize, &q(PDPT | 0x3)); // present, writable
    mem.write(PDPT as usize, &q(PD | 0x3));
    mem.write(PD as usize, &q(0x83)); // 2 MiB page at 0, present, writable
                                      // GDT: null, 64-bit code (0x08), data (0x10).
    mem.write(GDT as usize, &q(0));
    mem.write(GDT as usize + 8, &q(0x00af_9b00_0000_ffff));
    mem.write(GDT as usize + 16, &q(0x00cf_9300_0000_ffff));
    let code = match mode {
        GuestMode::Long64 => CODE_LONG,
        GuestMode::Real16 => CODE_REAL,
    };
    mem.write(CODE as usize, code);
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

/// Runs the guest program once from the start; returns the value it
/// reported, or a description of what went wrong.
fn run_guest(vcpu: &mut VcpuFd, mode: GuestMode) -> Result<u32, String> {
    setup_vcpu(vcpu, mode)?;
    let _watchdog = Watchdog::start(RUN_TIMEOUT);
    let mut reported = None;
    for _ in 0..64 {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(PORT_VALUE, data)) => {
                let bytes: [u8; 4] = data
                    .try_into()
                    .map_err(|_| format!("{}-byte OUT on port 0x10, expected 4", data.len()))?;
                reported = Some(u32::from_le_bytes(bytes));
            }
            Ok(VcpuExit::IoOut(PORT_DONE, _)) => {
                return reported.ok_or_else(|| "guest finished without reporting".to_string());
            }
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
    _vm: VmFd,
    vcpu: VcpuFd,
    ram_fd: File,
    ram: Mapping,
}

fn create_vm(kvm: &Kvm, mode: GuestMode) -> Result<Vm, String> {
    let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
    let ram_fd = memfd("guest-ram", MEM_SIZE).map_err(|e| format!("memfd_create: {e}"))?;
    let ram = Mapping::new(&ram_fd, MEM_SIZE).map_err(|e| format!("mmap: {e}"))?;
    write_guest_image(&ram, mode);
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: ram.addr as u64,
    };
    // SAFETY: the region is the live mapping owned by the returned `Vm`,
    // which also owns (and drops after) the VM fd.
    unsafe { vm.set_user_memory_region(region) }
        .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION: {e}"))?;
    let vcpu = vm
        .create_vcpu(0)
        .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
    Ok(Vm {
        _vm: vm,
        vcpu,
        ram_fd,
        ram,
    })
}

/// Finds a guest mode this KVM runs; returns the VM with the first run done.
fn first_working_mode(kvm: &Kvm) -> Result<(Vm, GuestMode), String> {
    let mut failures = Vec::new();
    for mode in [GuestMode::Long64, GuestMode::Real16] {
        let mut vm = create_vm(kvm, mode)?;
        vm.ram.write(DATA as usize, &VALUE_A.to_le_bytes());
        match run_guest(&mut vm.vcpu, mode) {
            Ok(v) if v == VALUE_A => return Ok((vm, mode)),
            Ok(v) => failures.push(format!(
                "{mode:?}: guest read {v:#x}, expected {VALUE_A:#x}"
            )),
            Err(e) => failures.push(format!("{mode:?}: {e}")),
        }
    }
    Err(failures.join("; "))
}

#[test]
fn guest_sees_memfd_page_mapped_over_its_ram() {
    let kvm = match Kvm::new() {
        Ok(k) => k,
        Err(e) => return skip(&format!("/dev/kvm cannot be opened ({e})")),
    };
    let sync_mmu = kvm.check_extension_raw(kvm_bindings::KVM_CAP_SYNC_MMU.into());
    eprintln!(
        "kvm_memfd_alias: KVM API {}, KVM_CAP_SYNC_MMU={sync_mmu}",
        kvm.get_api_version()
    );
    if let Err(e) = vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler) {
        return skip(&format!(
            "cannot install the vCPU kick signal handler ({e})"
        ));
    }
    let (mut vm, mode) = match first_working_mode(&kvm) {
        Ok(x) => x,
        Err(e) => return skip(&format!("this KVM runs no tiny test guest ({e})")),
    };
    eprintln!("kvm_memfd_alias: guest mode {mode:?} works");

    // 1. Baseline: the guest reads and writes memfd A.
    assert_eq!(pread_u32(&vm.ram_fd, DATA + 4), VALUE_A + 1);

    // 2. Map a page of memfd B over the data page of the memslot's mapping.
    let other = memfd("aperture-page", PAGE).unwrap();
    other.write_all_at(&VALUE_B.to_le_bytes(), 0).unwrap();
    vm.ram.map_page_over(DATA as usize, &other, 0).unwrap();
    assert_eq!(vm.ram.read_u32(DATA as usize), VALUE_B);
    let seen = run_guest(&mut vm.vcpu, mode).expect("guest run after aliasing");
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
        .write_all_at(&(VALUE_A ^ 0xffff_ffff).to_le_bytes(), DATA)
        .unwrap();
    vm.ram
        .map_page_over(DATA as usize, &vm.ram_fd, DATA as usize)
        .unwrap();
    let seen = run_guest(&mut vm.vcpu, mode).expect("guest run after unaliasing");
    assert_eq!(seen, VALUE_A ^ 0xffff_ffff);
    assert_eq!(
        pread_u32(&other, 4),
        VALUE_B + 1,
        "the guest wrote into the page after it was unmapped"
    );
    eprintln!("kvm_memfd_alias: after mapping the original page back the guest saw it again");
}
