//! Guest RAM: one memfd per VM, mapped `MAP_SHARED`, one KVM memslot per RAM region.
//!
//! The memfd is what makes cross-VM sharing possible: the xpmem domain maps
//! ranges of an exporter's memfd into an importer's aperture.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Arc;

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_READONLY};
use kvm_ioctls::VmFd;
use thiserror::Error;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::layout::{MemoryLayout, RamRegion};

#[derive(Debug, Error)]
pub enum MemoryError {
    #[error("cannot create the guest memory file (memfd_create): {0}")]
    Memfd(std::io::Error),
    #[error(
        "cannot size guest memory to {size} bytes: {err}; is there enough memory and memfd space?"
    )]
    Resize { size: u64, err: std::io::Error },
    #[error("cannot map guest memory: {0}")]
    Map(vm_memory::mmap::FromRangesError),
    #[error("KVM refused memory slot {slot} at {guest_base:#x} (+{size:#x}): {err}")]
    Memslot {
        slot: u32,
        guest_base: u64,
        size: u64,
        err: kvm_ioctls::Error,
    },
}

/// The RAM of one VM.
pub struct GuestRam {
    /// The memfd backing all of the VM's RAM, region after region.
    pub memfd: Arc<File>,
    /// RAM regions and where they sit in the memfd.
    pub regions: Vec<RamRegion>,
    /// Host mappings of the regions (MAP_SHARED views of `memfd`).
    pub mem: GuestMemoryMmap,
}

fn create_memfd(name: &str, size: u64) -> Result<File, MemoryError> {
    let cname = CString::new(format!("xpmem-vmm-{name}"))
        .map_err(|_| MemoryError::Memfd(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
    // SAFETY: `cname` is a valid NUL-terminated string that outlives the call;
    // the flags are constants the kernel validates.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)
        .map_err(|err| MemoryError::Resize { size, err })?;
    Ok(file)
}

impl GuestRam {
    /// Creates and maps the memfd for `layout`'s RAM regions.
    pub fn new(vm_name: &str, layout: &MemoryLayout) -> Result<Self, MemoryError> {
        let memfd = Arc::new(create_memfd(vm_name, layout.memory_size())?);
        let ranges: Vec<_> = layout
            .ram
            .iter()
            .map(|r| {
                (
                    GuestAddress(r.guest_base),
                    r.size as usize,
                    Some(FileOffset::from_arc(memfd.clone(), r.file_offset)),
                )
            })
            .collect();
        let mem = GuestMemoryMmap::from_ranges_with_files(ranges).map_err(MemoryError::Map)?;
        Ok(GuestRam {
            memfd,
            regions: layout.ram.clone(),
            mem,
        })
    }

    /// Registers every RAM region as a KVM memslot, slots 0..n.
    pub fn register(&self, vm: &VmFd) -> Result<u32, MemoryError> {
        let mut slot = 0;
        for region in self.mem.iter() {
            let host = region.as_ptr() as u64;
            let guest_base = region.start_addr().0;
            let size = region.len();
            // SAFETY: the host range [host, host + size) is a live mapping owned
            // by `self.mem`, which the VM keeps alive for as long as the VM fd exists
            // (the `Vm` struct holds both and drops the VM fd first).
            unsafe { set_memslot(vm, slot, guest_base, size, host, false) }?;
            slot += 1;
        }
        Ok(slot)
    }
}

/// Installs one memslot.
///
/// # Safety
///
/// `[host, host + size)` must stay mapped for as long as the slot exists.
pub unsafe fn set_memslot(
    vm: &VmFd,
    slot: u32,
    guest_base: u64,
    size: u64,
    host: u64,
    readonly: bool,
) -> Result<(), MemoryError> {
    let region = kvm_userspace_memory_region {
        slot,
        flags: if readonly { KVM_MEM_READONLY } else { 0 },
        guest_phys_addr: guest_base,
        memory_size: size,
        userspace_addr: host,
    };
    // SAFETY: the caller guarantees the host range outlives the slot.
    unsafe { vm.set_user_memory_region(region) }.map_err(|err| MemoryError::Memslot {
        slot,
        guest_base,
        size,
        err,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;
    use crate::layout::{GIB, MIB};
    use std::os::unix::fs::FileExt;
    use vm_memory::Bytes;

    #[test]
    fn ram_is_shared_with_the_memfd() {
        let layout = MemoryLayout::new(64 * MIB, 2 * MIB, 0).unwrap();
        let ram = GuestRam::new("test", &layout).unwrap();
        assert_eq!(ram.memfd.metadata().unwrap().len(), 64 * MIB);
        ram.mem
            .write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        let mut buf = [0u8; 4];
        ram.memfd.read_exact_at(&mut buf, 0x1000).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0xdead_beef);
    }

    #[test]
    fn high_region_maps_the_memfd_tail() {
        // Sparse memfd: 3 GiB + 4 MiB costs nothing until touched.
        let layout = MemoryLayout::new(3 * GIB + 4 * MIB, 2 * MIB, 0).unwrap();
        let ram = GuestRam::new("test", &layout).unwrap();
        assert_eq!(ram.mem.num_regions(), 2);
        ram.mem
            .write_obj(0x55_u8, GuestAddress(4 * GIB + 16))
            .unwrap();
        let mut buf = [0u8; 1];
        ram.memfd.read_exact_at(&mut buf, 3 * GIB + 16).unwrap();
        assert_eq!(buf[0], 0x55);
        // The MMIO hole is not memory.
        assert!(ram.mem.write_obj(0_u8, GuestAddress(3 * GIB + 16)).is_err());
    }
}
