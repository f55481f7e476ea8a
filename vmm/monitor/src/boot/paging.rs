//! Identity page tables for the 64-bit boot protocol: the first 4 GiB
//! mapped with 2 MiB pages, which covers the kernel, zero page, command line
//! and initramfs wherever they were placed in low memory.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{PAGE_SIZE, PDPT_ADDR, PD_ADDR, PD_COUNT, PML4_ADDR};

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const PAGE_SIZE_2M: u64 = 1 << 7;

/// Entries of the PML4, the PDPT and the page directories, as (address, value).
pub fn entries() -> impl Iterator<Item = (u64, u64)> {
    let pml4 = std::iter::once((PML4_ADDR, PDPT_ADDR | PRESENT | WRITABLE));
    let pdpt = (0..PD_COUNT).map(|i| {
        (
            PDPT_ADDR + i * 8,
            (PD_ADDR + i * PAGE_SIZE) | PRESENT | WRITABLE,
        )
    });
    let pd = (0..PD_COUNT * 512).map(|i| {
        (
            PD_ADDR + i * 8,
            (i << 21) | PRESENT | WRITABLE | PAGE_SIZE_2M,
        )
    });
    pml4.chain(pdpt).chain(pd)
}

/// Writes the tables; returns the CR3 value.
pub fn write(mem: &GuestMemoryMmap) -> Result<u64, vm_memory::GuestMemoryError> {
    for (addr, value) in entries() {
        mem.write_obj(value, GuestAddress(addr))?;
    }
    Ok(PML4_ADDR)
}

/// Walks the tables the way the MMU would; used by the tests.
pub fn translate(mem: &GuestMemoryMmap, cr3: u64, vaddr: u64) -> Option<u64> {
    let pml4e: u64 = mem
        .read_obj(GuestAddress(cr3 + ((vaddr >> 39) & 0x1ff) * 8))
        .ok()?;
    if pml4e & PRESENT == 0 {
        return None;
    }
    let pdpte: u64 = mem
        .read_obj(GuestAddress((pml4e & !0xfff) + ((vaddr >> 30) & 0x1ff) * 8))
        .ok()?;
    if pdpte & PRESENT == 0 {
        return None;
    }
    let pde: u64 = mem
        .read_obj(GuestAddress((pdpte & !0xfff) + ((vaddr >> 21) & 0x1ff) * 8))
        .ok()?;
    if pde & PRESENT == 0 || pde & PAGE_SIZE_2M == 0 {
        return None;
    }
    Some((pde & !0x1f_ffff) + (vaddr & 0x1f_ffff))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;
    use crate::layout::{GIB, MIB};

    #[test]
    fn identity_maps_the_first_4g() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (64 * MIB) as usize)]).unwrap();
        let cr3 = write(&mem).unwrap();
        for addr in [
            0,
            0x7000,
            0x10_0000,
            0x1234_5678,
            GIB + 5,
            3 * GIB + 0x1f_ffff,
            4 * GIB - 1,
        ] {
            assert_eq!(translate(&mem, cr3, addr), Some(addr), "{addr:#x}");
        }
        assert_eq!(translate(&mem, cr3, 4 * GIB), None);
    }

    #[test]
    fn tables_do_not_overlap() {
        let mut addrs: Vec<u64> = entries().map(|(a, _)| a).collect();
        let n = addrs.len();
        addrs.sort_unstable();
        addrs.dedup();
        assert_eq!(addrs.len(), n);
    }
}
