//! First-fit page allocator for one import aperture window, with coalescing of free ranges:
//! which window pages each attachment occupies. (The host mappings behind the window are
//! the device's business: `virtio_xpmem_device::aperture`.)

use std::collections::BTreeMap;

/// Allocator over `[0, total)` aperture pages.
#[derive(Clone, Debug)]
pub(crate) struct ApertureAllocator {
    /// Free ranges: start -> length, non-overlapping, never adjacent (always coalesced).
    free: BTreeMap<u64, u64>,
    total: u64,
    reserved: u64,
}

impl ApertureAllocator {
    pub(crate) fn new(total: u64) -> Self {
        let mut free = BTreeMap::new();
        if total > 0 {
            free.insert(0, total);
        }
        ApertureAllocator {
            free,
            total,
            reserved: 0,
        }
    }

    /// Pages currently reserved.
    pub(crate) fn reserved(&self) -> u64 {
        self.reserved
    }

    /// Reserves `npages` (> 0) contiguous pages at the lowest free address that fits.
    pub(crate) fn alloc(&mut self, npages: u64) -> Option<u64> {
        if npages == 0 || npages > self.total {
            return None;
        }
        let (&start, &len) = self.free.iter().find(|(_, &len)| len >= npages)?;
        self.free.remove(&start);
        if len > npages {
            self.free.insert(start + npages, len - npages);
        }
        self.reserved += npages;
        Some(start)
    }

    /// Returns `[start, start + npages)`, which must have been reserved by `alloc`.
    pub(crate) fn free(&mut self, start: u64, npages: u64) {
        debug_assert!(npages > 0 && start + npages <= self.total);
        let mut new_start = start;
        let mut new_len = npages;
        if let Some((&pstart, &plen)) = self.free.range(..start).next_back() {
            debug_assert!(pstart + plen <= start, "double free in aperture");
            if pstart + plen == start {
                self.free.remove(&pstart);
                new_start = pstart;
                new_len += plen;
            }
        }
        if let Some(&nlen) = self.free.get(&(start + npages)) {
            self.free.remove(&(start + npages));
            new_len += nlen;
        }
        self.free.insert(new_start, new_len);
        self.reserved -= npages;
    }

    #[cfg(test)]
    pub(crate) fn free_ranges(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;

    #[test]
    fn first_fit_and_coalesce() {
        let mut a = ApertureAllocator::new(10);
        assert_eq!(a.alloc(0), None);
        assert_eq!(a.alloc(11), None);
        let x = a.alloc(3).unwrap();
        let y = a.alloc(3).unwrap();
        let z = a.alloc(4).unwrap();
        assert_eq!((x, y, z), (0, 3, 6));
        assert_eq!(a.alloc(1), None);
        a.free(y, 3);
        assert_eq!(a.alloc(4), None);
        assert_eq!(a.alloc(2), Some(3));
        a.free(3, 2);
        a.free(x, 3);
        a.free(z, 4);
        assert_eq!(a.free_ranges(), 1);
        assert_eq!(a.reserved(), 0);
        assert_eq!(a.alloc(10), Some(0));
    }
}
