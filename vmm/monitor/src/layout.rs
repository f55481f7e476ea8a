//! Guest-physical memory map of every VM and the e820 table derived from it.
//!
//! ```text
//! 0x0000_0000  RAM      real-mode IVT, GDT/IDT, zero page, boot stack, page tables, cmdline
//! 0x0009_fc00  (hole)   EBDA, VGA and BIOS area; the ACPI tables live at 0xe_0000
//! 0x0010_0000  RAM      kernel, initramfs (top of low RAM), free memory
//!    ...       RAM ends at min(memory, 3 GiB)
//! 0xc000_0000  (hole)   32-bit MMIO: virtio-mmio devices at 0xd000_0000, IOAPIC, LAPIC
//! 0x1_0000_0000 RAM     the rest of the memory above 4 GiB, if any
//!    ...       import aperture (read-write window, then read-only window),
//!              1 GiB aligned above RAM, marked reserved in e820
//! ```

use thiserror::Error;

/// Page size used for all layout alignment.
pub const PAGE_SIZE: u64 = 0x1000;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// Global descriptor table.
pub const GDT_ADDR: u64 = 0x500;
/// Interrupt descriptor table (empty; the kernel installs its own).
pub const IDT_ADDR: u64 = 0x520;
/// Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables: PML4, one PDPT, four page directories (2 MiB pages).
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xa000;
pub const PD_ADDR: u64 = 0xb000;
/// Number of page directories, each mapping 1 GiB; together the first 4 GiB.
pub const PD_COUNT: u64 = 4;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Largest command line the layout has room for (up to the EBDA).
pub const CMDLINE_MAX_SIZE: u64 = 0x1_0000;
/// Start of the Extended BIOS Data Area: low RAM ends here.
pub const EBDA_START: u64 = 0x9_fc00;
/// Area reserved for the ACPI tables (RSDP first).
pub const ACPI_TABLES_START: u64 = 0xe_0000;
pub const ACPI_TABLES_END: u64 = 0x10_0000;
/// Where the kernel is loaded; RAM above it is "high memory" for the boot protocol.
pub const HIMEM_START: u64 = 0x10_0000;

/// RAM below 4 GiB stops here: [3 GiB, 4 GiB) is the 32-bit MMIO hole.
pub const MMIO32_START: u64 = 3 * GIB;
pub const MMIO32_END: u64 = 4 * GIB;

/// virtio-mmio devices: one 4 KiB slot each (the transport uses the first 0x200 bytes).
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_STRIDE: u64 = 0x1000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x200;
/// GSIs handed to virtio-mmio devices (`virtio_mmio` rejects IRQ 0; 0..4 are legacy ISA).
pub const VIRTIO_GSI_FIRST: u32 = 5;
pub const VIRTIO_GSI_LAST: u32 = 23;
/// Legacy COM1 interrupt.
pub const SERIAL_GSI: u32 = 4;

/// KVM's three-page TSS area, just below the IOAPIC/LAPIC range and above the devices.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;

/// Guest RAM smaller than this cannot hold a decompressed distro kernel and its initramfs.
pub const MIN_MEMORY: u64 = 64 * MIB;
/// Alignment of the import aperture base.
pub const APERTURE_ALIGN: u64 = GIB;

/// e820 entry types (Linux `enum e820_type`).
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

// The fixed boot areas must not overlap each other or the BIOS area.
const _: () = assert!(GDT_ADDR + 4 * 8 <= IDT_ADDR);
const _: () = assert!(ZERO_PAGE_ADDR + PAGE_SIZE < BOOT_STACK_POINTER);
const _: () = assert!(BOOT_STACK_POINTER < PML4_ADDR);
const _: () = assert!(PD_ADDR + PD_COUNT * PAGE_SIZE <= CMDLINE_ADDR);
const _: () = assert!(CMDLINE_ADDR + CMDLINE_MAX_SIZE <= EBDA_START);
const _: () = assert!(VIRTIO_MMIO_BASE >= MMIO32_START);

#[derive(Debug, Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("memory size {0:#x} is below the minimum of {MIN_MEMORY} bytes (64 MiB); give the VM more memory")]
    MemoryTooSmall(u64),
    #[error("memory size {0:#x} is not a multiple of 4 KiB; use a whole number of pages")]
    MemoryUnaligned(u64),
    #[error("import aperture window size {0:#x} must be a multiple of 2 MiB")]
    ApertureUnaligned(u64),
    #[error("the memory map does not fit in the guest-physical address space; use less memory or a smaller aperture")]
    Overflow,
    #[error("too many virtio-mmio devices: at most {} are supported", VIRTIO_GSI_LAST - VIRTIO_GSI_FIRST + 1)]
    TooManyDevices,
}

/// One contiguous range of guest RAM, backed by the VM's memfd at `file_offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamRegion {
    pub guest_base: u64,
    pub size: u64,
    pub file_offset: u64,
}

impl RamRegion {
    pub fn end(&self) -> u64 {
        self.guest_base + self.size
    }
}

/// A guest-physical window of the import aperture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApertureWindow {
    pub guest_base: u64,
    pub size: u64,
}

/// One e820 entry as handed to the kernel in the zero page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// A virtio-mmio device slot: register window and interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioSlot {
    pub base: u64,
    pub size: u64,
    pub gsi: u32,
}

/// The complete guest-physical map of one VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryLayout {
    /// RAM regions in ascending order; one memslot each.
    pub ram: Vec<RamRegion>,
    /// Read-write import window (shared memory region id 0).
    pub aperture_rw: ApertureWindow,
    /// Read-only import window (shared memory region id 1).
    pub aperture_ro: ApertureWindow,
}

const fn align_up(value: u64, align: u64) -> Option<u64> {
    match value.checked_add(align - 1) {
        Some(v) => Some(v & !(align - 1)),
        None => None,
    }
}

impl MemoryLayout {
    /// Splits `memory` bytes of RAM around the 32-bit MMIO hole and places the
    /// import aperture windows above the end of RAM.
    pub fn new(memory: u64, aperture_rw: u64, aperture_ro: u64) -> Result<Self, LayoutError> {
        if memory < MIN_MEMORY {
            return Err(LayoutError::MemoryTooSmall(memory));
        }
        if !memory.is_multiple_of(PAGE_SIZE) {
            return Err(LayoutError::MemoryUnaligned(memory));
        }
        for size in [aperture_rw, aperture_ro] {
            if !size.is_multiple_of(2 * MIB) {
                return Err(LayoutError::ApertureUnaligned(size));
            }
        }

        let low = memory.min(MMIO32_START);
        let mut ram = vec![RamRegion {
            guest_base: 0,
            size: low,
            file_offset: 0,
        }];
        if memory > low {
            ram.push(RamRegion {
                guest_base: MMIO32_END,
                size: memory - low,
                file_offset: low,
            });
        }
        let ram_end = ram.last().map_or(0, RamRegion::end);

        let rw_base =
            align_up(ram_end.max(MMIO32_END), APERTURE_ALIGN).ok_or(LayoutError::Overflow)?;
        let ro_base = rw_base
            .checked_add(aperture_rw)
            .and_then(|b| align_up(b, APERTURE_ALIGN))
            .ok_or(LayoutError::Overflow)?;
        let end = ro_base
            .checked_add(aperture_ro)
            .ok_or(LayoutError::Overflow)?;
        // Stay within 46 physical address bits, which every x86 host KVM runs on supports.
        if end > 1 << 46 {
            return Err(LayoutError::Overflow);
        }

        Ok(MemoryLayout {
            ram,
            aperture_rw: ApertureWindow {
                guest_base: rw_base,
                size: aperture_rw,
            },
            aperture_ro: ApertureWindow {
                guest_base: ro_base,
                size: aperture_ro,
            },
        })
    }

    /// Total RAM in bytes.
    pub fn memory_size(&self) -> u64 {
        self.ram.iter().map(|r| r.size).sum()
    }

    /// End of the RAM region that starts at 0 (the highest address the
    /// initramfs may use is below it).
    pub fn low_ram_end(&self) -> u64 {
        self.ram[0].end()
    }

    /// The e820 map: usable RAM minus the legacy BIOS area, and the import
    /// aperture windows as reserved ranges so the guest never uses them as RAM.
    pub fn e820(&self) -> Vec<E820Entry> {
        let mut map = vec![E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        }];
        for region in &self.ram {
            let start = region.guest_base.max(HIMEM_START);
            if region.end() > start {
                map.push(E820Entry {
                    addr: start,
                    size: region.end() - start,
                    kind: E820_RAM,
                });
            }
        }
        for window in [self.aperture_rw, self.aperture_ro] {
            if window.size > 0 {
                map.push(E820Entry {
                    addr: window.guest_base,
                    size: window.size,
                    kind: E820_RESERVED,
                });
            }
        }
        map
    }

    /// The virtio-mmio slot of the `index`-th device.
    pub fn mmio_slot(index: usize) -> Result<MmioSlot, LayoutError> {
        let index32 = u32::try_from(index).map_err(|_| LayoutError::TooManyDevices)?;
        let gsi = VIRTIO_GSI_FIRST
            .checked_add(index32)
            .filter(|gsi| *gsi <= VIRTIO_GSI_LAST)
            .ok_or(LayoutError::TooManyDevices)?;
        Ok(MmioSlot {
            base: VIRTIO_MMIO_BASE + u64::from(index32) * VIRTIO_MMIO_STRIDE,
            size: VIRTIO_MMIO_SIZE,
            gsi,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;

    fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
        a.0 < b.0 + b.1 && b.0 < a.0 + a.1
    }

    #[test]
    fn small_memory_is_one_region_below_the_hole() {
        let l = MemoryLayout::new(GIB, GIB, 256 * MIB).unwrap();
        assert_eq!(
            l.ram,
            vec![RamRegion {
                guest_base: 0,
                size: GIB,
                file_offset: 0
            }]
        );
        // The aperture never starts below 4 GiB, so it cannot collide with MMIO.
        assert_eq!(l.aperture_rw.guest_base, 4 * GIB);
        assert_eq!(l.aperture_ro.guest_base, 5 * GIB);
        assert_eq!(l.memory_size(), GIB);
    }

    #[test]
    fn large_memory_splits_around_the_hole() {
        let l = MemoryLayout::new(5 * GIB, GIB, 256 * MIB).unwrap();
        assert_eq!(l.ram.len(), 2);
        assert_eq!(l.ram[0].size, 3 * GIB);
        assert_eq!(l.ram[1].guest_base, 4 * GIB);
        assert_eq!(l.ram[1].size, 2 * GIB);
        // The high region continues in the memfd where the low one stops.
        assert_eq!(l.ram[1].file_offset, 3 * GIB);
        assert_eq!(l.memory_size(), 5 * GIB);
        assert_eq!(l.aperture_rw.guest_base, 6 * GIB);
        assert_eq!(l.aperture_ro.guest_base, 7 * GIB);
    }

    #[test]
    fn unaligned_ram_end_rounds_the_aperture_up() {
        let l = MemoryLayout::new(3 * GIB + 10 * MIB, 64 * MIB, 2 * MIB).unwrap();
        assert_eq!(l.ram[1].end(), 4 * GIB + 10 * MIB);
        assert_eq!(l.aperture_rw.guest_base, 5 * GIB);
        assert_eq!(l.aperture_ro.guest_base, 6 * GIB);
    }

    #[test]
    fn e820_has_ram_hole_and_reserved_aperture_without_overlap() {
        for memory in [64 * MIB, GIB, 3 * GIB, 3 * GIB + 4 * MIB, 8 * GIB] {
            let l = MemoryLayout::new(memory, GIB, 256 * MIB).unwrap();
            let map = l.e820();
            let ram: u64 = map
                .iter()
                .filter(|e| e.kind == E820_RAM)
                .map(|e| e.size)
                .sum();
            // All RAM except the legacy BIOS area [EBDA, 1 MiB) is usable.
            assert_eq!(
                ram,
                memory - (HIMEM_START - EBDA_START),
                "memory {memory:#x}"
            );
            for (i, a) in map.iter().enumerate() {
                for b in &map[i + 1..] {
                    assert!(
                        !overlaps((a.addr, a.size), (b.addr, b.size)),
                        "{a:?} overlaps {b:?}"
                    );
                }
                // Nothing may claim the 32-bit MMIO hole.
                assert!(!overlaps((a.addr, a.size), (MMIO32_START, GIB)), "{a:?}");
                // And nothing may claim the ACPI table area.
                assert!(!overlaps(
                    (a.addr, a.size),
                    (ACPI_TABLES_START, ACPI_TABLES_END - ACPI_TABLES_START)
                ));
            }
            let reserved: Vec<_> = map.iter().filter(|e| e.kind == E820_RESERVED).collect();
            assert_eq!(reserved.len(), 2);
            assert_eq!(reserved[0].addr, l.aperture_rw.guest_base);
            assert_eq!(reserved[0].size, GIB);
            assert_eq!(reserved[1].addr, l.aperture_ro.guest_base);
            assert_eq!(reserved[1].size, 256 * MIB);
            let ram_end = l.ram.last().unwrap().end();
            assert!(reserved[0].addr >= ram_end);
        }
    }

    #[test]
    fn empty_aperture_window_is_not_listed() {
        let l = MemoryLayout::new(GIB, GIB, 0).unwrap();
        assert_eq!(
            l.e820().iter().filter(|e| e.kind == E820_RESERVED).count(),
            1
        );
    }

    #[test]
    fn rejects_bad_sizes() {
        assert_eq!(
            MemoryLayout::new(MIN_MEMORY - PAGE_SIZE, GIB, 0),
            Err(LayoutError::MemoryTooSmall(MIN_MEMORY - PAGE_SIZE))
        );
        assert_eq!(
            MemoryLayout::new(MIN_MEMORY + 1, GIB, 0),
            Err(LayoutError::MemoryUnaligned(MIN_MEMORY + 1))
        );
        assert_eq!(
            MemoryLayout::new(GIB, MIB, 0),
            Err(LayoutError::ApertureUnaligned(MIB))
        );
        assert_eq!(
            MemoryLayout::new(1 << 46, GIB, 0),
            Err(LayoutError::Overflow)
        );
    }

    #[test]
    fn mmio_slots_step_through_gsis_5_to_23() {
        let first = MemoryLayout::mmio_slot(0).unwrap();
        assert_eq!(
            first,
            MmioSlot {
                base: VIRTIO_MMIO_BASE,
                size: VIRTIO_MMIO_SIZE,
                gsi: 5
            }
        );
        let last = MemoryLayout::mmio_slot(18).unwrap();
        assert_eq!(last.gsi, 23);
        assert_eq!(last.base, VIRTIO_MMIO_BASE + 18 * VIRTIO_MMIO_STRIDE);
        assert!(last.base + last.size < KVM_TSS_ADDR);
        assert_eq!(
            MemoryLayout::mmio_slot(19),
            Err(LayoutError::TooManyDevices)
        );
    }
}
