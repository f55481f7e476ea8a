//! The flat 64-bit GDT the boot vCPU starts with.

use kvm_bindings::kvm_segment;

/// GDT index of each descriptor; the selector is index * 8.
pub const CODE_INDEX: u16 = 1;
pub const DATA_INDEX: u16 = 2;
pub const TSS_INDEX: u16 = 3;

/// Builds a segment descriptor from access/flags, base and limit.
pub const fn descriptor(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// null, 64-bit code (L=1), data, 32-bit busy TSS.
pub const GDT: [u64; 4] = [
    0,
    descriptor(0xa09b, 0, 0xfffff),
    descriptor(0xc093, 0, 0xfffff),
    descriptor(0x808b, 0, 0xfffff),
];

/// Decodes descriptor `index` of [`GDT`] into the form KVM wants in sregs.
pub fn segment(index: u16) -> kvm_segment {
    let entry = GDT[usize::from(index)];
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit_raw = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    // With 4 KiB granularity the limit counts pages.
    let limit = if g == 1 {
        (limit_raw << 12) | 0xfff
    } else {
        limit_raw
    };
    kvm_segment {
        base,
        limit,
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: u8::from(((entry >> 47) & 1) == 0),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_64_bit_ring0() {
        let cs = segment(CODE_INDEX);
        assert_eq!(cs.selector, 0x8);
        assert_eq!((cs.l, cs.db, cs.dpl, cs.present, cs.s), (1, 0, 0, 1, 1));
        assert_eq!(cs.type_, 0xb);
        assert_eq!(cs.limit, 0xffff_ffff);
        assert_eq!(cs.base, 0);
    }

    #[test]
    fn data_and_tss() {
        let ds = segment(DATA_INDEX);
        assert_eq!((ds.selector, ds.type_, ds.db, ds.l), (0x10, 3, 1, 0));
        let tss = segment(TSS_INDEX);
        assert_eq!((tss.selector, tss.type_, tss.s, tss.g), (0x18, 0xb, 0, 1));
        assert_eq!(segment(0).unusable, 1);
    }

    #[test]
    fn descriptor_round_trips_base_and_limit() {
        let d = descriptor(0x0093, 0x1234_5678, 0xabcde);
        let base = ((d >> 16) & 0x00ff_ffff) | ((d >> 32) & 0xff00_0000);
        let limit = (d & 0xffff) | ((d >> 32) & 0x000f_0000);
        assert_eq!(base, 0x1234_5678);
        assert_eq!(limit, 0xabcde);
    }
}
