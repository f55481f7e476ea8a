//! Per-vCPU architectural state: CPUID (with topology fixed up for this
//! vCPU), MSRs, FPU, local APIC LVTs, and for the boot vCPU the 64-bit
//! register state the Linux 64-bit boot protocol expects.
//!
//! Application processors keep KVM's reset state (wait-for-SIPI); the guest
//! finds them through the ACPI MADT and starts them with INIT/SIPI.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, CpuId, Msrs};
use kvm_ioctls::VcpuFd;
use thiserror::Error;

use super::gdt::{segment, CODE_INDEX, DATA_INDEX, GDT, TSS_INDEX};
use super::BootEntry;
use crate::layout::{BOOT_STACK_POINTER, GDT_ADDR, IDT_ADDR};

#[derive(Debug, Error)]
pub enum CpuError {
    #[error("cannot set CPUID of vCPU {0}: {1}")]
    SetCpuid(u8, kvm_ioctls::Error),
    #[error("cannot set MSRs of vCPU {0}: {1}")]
    SetMsrs(u8, kvm_ioctls::Error),
    #[error("KVM accepted only {done} of {wanted} boot MSRs on vCPU {vcpu}")]
    PartialMsrs {
        vcpu: u8,
        done: usize,
        wanted: usize,
    },
    #[error("cannot build the MSR list: {0}")]
    MsrList(String),
    #[error("cannot set FPU state of vCPU {0}: {1}")]
    Fpu(u8, kvm_ioctls::Error),
    #[error("cannot access the local APIC of vCPU {0}: {1}")]
    Lapic(u8, kvm_ioctls::Error),
    #[error("cannot set registers of vCPU {0}: {1}")]
    Regs(u8, kvm_ioctls::Error),
}

// CPUID bits.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF1_EDX_HTT: u32 = 1 << 28;
const EXT1_ECX_CMP_LEGACY: u32 = 1 << 1;
/// Leaf 0xb/0x1f level types.
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

// MSR indices.
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default memory type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

// Control register bits.
const CR0_PE: u64 = 1 << 0;
const CR0_NW: u64 = 1 << 29;
const CR0_CD: u64 = 1 << 30;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

// Local APIC register offsets and LVT delivery modes.
const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Number of bits needed to number `count` things (ceil(log2)).
fn bits_for(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        u32::BITS - (count - 1).leading_zeros()
    }
}

fn is_amd(cpuid: &CpuId) -> bool {
    cpuid.as_slice().iter().any(|e| {
        e.function == 0
            && e.ebx == u32::from_le_bytes(*b"Auth")
            && e.edx == u32::from_le_bytes(*b"enti")
    })
}

/// Adapts the KVM-supported CPUID to vCPU `id` of `count`: one socket of
/// `count` single-threaded cores, APIC id = vCPU index.
pub fn fixup_cpuid(cpuid: &mut CpuId, id: u8, count: u8) {
    let amd = is_amd(cpuid);
    let id32 = u32::from(id);
    let count32 = u32::from(count);
    let core_bits = bits_for(count32);
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            0x1 => {
                entry.ebx = (entry.ebx & 0x0000_ffff) | (id32 << 24) | (count32 << 16);
                entry.ecx |= LEAF1_ECX_HYPERVISOR;
                if count > 1 {
                    entry.edx |= LEAF1_EDX_HTT;
                } else {
                    entry.edx &= !LEAF1_EDX_HTT;
                }
            }
            0x4 if !amd => {
                // Cores per package - 1 in EAX[31:26]; caches are per core,
                // the last level is shared by the package.
                let level = (entry.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count32 - 1 } else { 0 };
                entry.eax = (entry.eax & 0x3fff) | (sharing << 14) | ((count32 - 1) << 26);
            }
            0xb | 0x1f => {
                let (shift, logical, kind) = match entry.index {
                    0 => (0, 1, LEVEL_TYPE_SMT),
                    1 => (core_bits, count32, LEVEL_TYPE_CORE),
                    _ => (0, 0, 0),
                };
                entry.eax = shift;
                entry.ebx = logical;
                entry.ecx = (kind << 8) | (entry.index & 0xff);
                entry.edx = id32;
            }
            0x8000_0001 if amd => {
                if count > 1 {
                    entry.ecx |= EXT1_ECX_CMP_LEGACY;
                } else {
                    entry.ecx &= !EXT1_ECX_CMP_LEGACY;
                }
            }
            0x8000_0008 if amd => {
                entry.ecx = (entry.ecx & !0xf0ff) | (core_bits << 12) | (count32 - 1);
            }
            0x8000_001d if amd => {
                let level = (entry.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count32 - 1 } else { 0 };
                entry.eax = (entry.eax & !(0xfff << 14)) | (sharing << 14);
            }
            0x8000_001e if amd => {
                entry.eax = id32; // extended APIC id
                entry.ebx = id32 & 0xff; // core id, one thread per core
                entry.ecx = 0; // node 0, one node per package
            }
            _ => {}
        }
    }
}

/// The MSRs every vCPU starts with.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    let msr = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        msr(MSR_IA32_SYSENTER_CS, 0),
        msr(MSR_IA32_SYSENTER_ESP, 0),
        msr(MSR_IA32_SYSENTER_EIP, 0),
        msr(MSR_STAR, 0),
        msr(MSR_CSTAR, 0),
        msr(MSR_KERNEL_GS_BASE, 0),
        msr(MSR_SYSCALL_MASK, 0),
        msr(MSR_LSTAR, 0),
        msr(MSR_IA32_TSC, 0),
        msr(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        msr(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
}

fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
    u32::from_le_bytes(bytes)
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        lapic.regs[offset + i] = *b as _;
    }
}

fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// LINT0 delivers the legacy PIC (ExtINT), LINT1 NMI, as a BIOS would set them.
pub fn setup_lapic_lvts(lapic: &mut kvm_lapic_state) {
    let lint0 = lapic_reg(lapic, APIC_LVT_LINT0);
    set_lapic_reg(
        lapic,
        APIC_LVT_LINT0,
        with_delivery_mode(lint0, APIC_MODE_EXTINT),
    );
    let lint1 = lapic_reg(lapic, APIC_LVT_LINT1);
    set_lapic_reg(
        lapic,
        APIC_LVT_LINT1,
        with_delivery_mode(lint1, APIC_MODE_NMI),
    );
}

/// Configures state shared by all vCPUs: CPUID, MSRs, FPU and LAPIC.
pub fn setup_common(
    vcpu: &VcpuFd,
    id: u8,
    count: u8,
    supported_cpuid: &CpuId,
) -> Result<(), CpuError> {
    let mut cpuid = supported_cpuid.clone();
    fixup_cpuid(&mut cpuid, id, count);
    vcpu.set_cpuid2(&cpuid)
        .map_err(|e| CpuError::SetCpuid(id, e))?;

    let entries = boot_msrs();
    let msrs = Msrs::from_entries(&entries).map_err(|e| CpuError::MsrList(format!("{e:?}")))?;
    let done = vcpu.set_msrs(&msrs).map_err(|e| CpuError::SetMsrs(id, e))?;
    if done != entries.len() {
        return Err(CpuError::PartialMsrs {
            vcpu: id,
            done,
            wanted: entries.len(),
        });
    }

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(|e| CpuError::Fpu(id, e))?;

    let mut lapic = vcpu.get_lapic().map_err(|e| CpuError::Lapic(id, e))?;
    setup_lapic_lvts(&mut lapic);
    vcpu.set_lapic(&lapic).map_err(|e| CpuError::Lapic(id, e))?;
    Ok(())
}

/// Puts the boot vCPU in 64-bit mode at the kernel entry point.
pub fn setup_boot_vcpu(vcpu: &VcpuFd, boot: &BootEntry) -> Result<(), CpuError> {
    let regs = kvm_regs {
        rflags: 0x2,
        rip: boot.entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: boot.zero_page,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(|e| CpuError::Regs(0, e))?;

    let mut sregs = vcpu.get_sregs().map_err(|e| CpuError::Regs(0, e))?;
    let code = segment(CODE_INDEX);
    let data = segment(DATA_INDEX);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(TSS_INDEX);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(&GDT) - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cr3 = boot.cr3;
    sregs.cr4 |= CR4_PAE;
    // Caching must be on: CD/NW left set would make the guest crawl.
    sregs.cr0 = (sregs.cr0 | CR0_PE | CR0_PG) & !(CR0_CD | CR0_NW);
    sregs.efer |= EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs).map_err(|e| CpuError::Regs(0, e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn entry(
        function: u32,
        index: u32,
        eax: u32,
        ebx: u32,
        ecx: u32,
        edx: u32,
    ) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    fn amd_cpuid() -> CpuId {
        let vendor = |s: &[u8; 4]| u32::from_le_bytes(*s);
        CpuId::from_entries(&[
            entry(0, 0, 0xd, vendor(b"Auth"), vendor(b"cAMD"), vendor(b"enti")),
            entry(1, 0, 0x800f12, 0xff00_0800, 0, 0),
            entry(0xb, 0, 0, 0, 0, 0),
            entry(0xb, 1, 0, 0, 0, 0),
            entry(0xb, 2, 0, 0, 0, 0),
            entry(0x8000_0001, 0, 0, 0, 0, 0),
            entry(0x8000_0008, 0, 0x3030, 0, 0xffff_ffff, 0),
            entry(0x8000_001d, 0, (3 << 5) | 0x3, 0, 0, 0),
            entry(0x8000_001e, 0, 7, 7, 7, 0),
        ])
        .unwrap()
    }

    fn find(c: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    #[test]
    fn bits() {
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(2), 1);
        assert_eq!(bits_for(3), 2);
        assert_eq!(bits_for(4), 2);
        assert_eq!(bits_for(5), 3);
        assert_eq!(bits_for(254), 8);
    }

    #[test]
    fn topology_of_vcpu_2_of_3_on_amd() {
        let mut c = amd_cpuid();
        fixup_cpuid(&mut c, 2, 3);
        let l1 = find(&c, 1, 0);
        assert_eq!(l1.ebx >> 24, 2, "initial APIC id");
        assert_eq!((l1.ebx >> 16) & 0xff, 3, "logical processor count");
        assert_eq!(l1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(l1.edx & LEAF1_EDX_HTT, 0);

        let smt = find(&c, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 2));
        let core = find(&c, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 3, 0x201, 2));
        let end = find(&c, 0xb, 2);
        assert_eq!((end.eax, end.ebx, end.ecx & 0xff00), (0, 0, 0));

        assert_ne!(find(&c, 0x8000_0001, 0).ecx & EXT1_ECX_CMP_LEGACY, 0);
        let nc = find(&c, 0x8000_0008, 0).ecx;
        assert_eq!(nc & 0xff, 2);
        assert_eq!((nc >> 12) & 0xf, 2);
        assert_eq!(nc & 0xffff_0000, 0xffff_0000, "other bits kept");
        assert_eq!((find(&c, 0x8000_001d, 0).eax >> 14) & 0xfff, 2);
        let ext = find(&c, 0x8000_001e, 0);
        assert_eq!((ext.eax, ext.ebx, ext.ecx), (2, 2, 0));
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let mut c = amd_cpuid();
        fixup_cpuid(&mut c, 0, 1);
        assert_eq!(find(&c, 1, 0).edx & LEAF1_EDX_HTT, 0);
        assert_eq!(find(&c, 0x8000_0001, 0).ecx & EXT1_ECX_CMP_LEGACY, 0);
        assert_eq!(find(&c, 0x8000_0008, 0).ecx & 0xf0ff, 0);
    }

    #[test]
    fn intel_leaf4_reports_cores() {
        let vendor = |s: &[u8; 4]| u32::from_le_bytes(*s);
        let mut c = CpuId::from_entries(&[
            entry(0, 0, 0xd, vendor(b"Genu"), vendor(b"ntel"), vendor(b"ineI")),
            entry(4, 0, (1 << 5) | 0x1, 0, 0, 0),
            entry(4, 3, (3 << 5) | 0x3, 0, 0, 0),
        ])
        .unwrap();
        fixup_cpuid(&mut c, 1, 4);
        let l1d = find(&c, 4, 0);
        assert_eq!(l1d.eax >> 26, 3);
        assert_eq!((l1d.eax >> 14) & 0xfff, 0);
        assert_eq!((find(&c, 4, 3).eax >> 14) & 0xfff, 3);
    }

    #[test]
    fn lapic_lvts() {
        let mut lapic = kvm_lapic_state::default();
        set_lapic_reg(&mut lapic, APIC_LVT_LINT0, 0x0001_0700);
        set_lapic_reg(&mut lapic, APIC_LVT_LINT1, 0x0001_0000);
        setup_lapic_lvts(&mut lapic);
        assert_eq!(lapic_reg(&lapic, APIC_LVT_LINT0), 0x0001_0700);
        assert_eq!(lapic_reg(&lapic, APIC_LVT_LINT1), 0x0001_0400);
    }

    #[test]
    fn msrs_enable_write_back_mtrrs() {
        let msrs = boot_msrs();
        let mtrr = msrs.iter().find(|m| m.index == MSR_MTRR_DEF_TYPE).unwrap();
        assert_eq!(mtrr.data & 0xff, 6);
        assert_ne!(mtrr.data & (1 << 11), 0);
    }
}
