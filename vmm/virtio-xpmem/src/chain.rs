//! Splitting and validating guest descriptor chains.
//!
//! Everything here treats the guest as hostile: descriptor addresses and
//! lengths are checked against guest RAM (and kept out of the VM's own
//! aperture windows) before a single byte is read or written, the number of
//! descriptors and the size of the device-readable part are bounded, and the
//! direction order (all device-readable descriptors before all
//! device-writable ones) is enforced.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryMmap};

/// Most descriptors accepted in one chain. A chain that loops is cut by the
/// queue's own TTL (queue size); anything above this bound is rejected.
pub const MAX_CHAIN_DESCRIPTORS: usize = 32;

/// Largest device-readable part of a request: header, RESOLVE_REPLY body and
/// the largest page list.
pub const MAX_REQUEST_BYTES: usize = core::mem::size_of::<virtio_xpmem_wire::ReqHeader>()
    + core::mem::size_of::<virtio_xpmem_wire::ResolveReplyReq>()
    + 8 * virtio_xpmem_wire::VIRTIO_XPMEM_MAX_PAGES as usize;

/// Why a descriptor chain was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("descriptor chain has more than {MAX_CHAIN_DESCRIPTORS} descriptors (or loops); the driver must send shorter chains")]
    TooManyDescriptors,
    #[error("a device-readable descriptor follows a device-writable one; put the request before the response buffer")]
    WrongDirectionOrder,
    #[error("descriptor {addr:#x}+{len:#x} is not inside guest RAM")]
    OutsideGuestMemory { addr: u64, len: u32 },
    #[error("descriptor {addr:#x}+{len:#x} overlaps the device's import aperture; use guest RAM buffers")]
    InAperture { addr: u64, len: u32 },
    #[error("device-readable part exceeds {MAX_REQUEST_BYTES} bytes")]
    RequestTooLarge,
    #[error("eventq buffer contains a device-readable descriptor; eventq buffers must be device-writable only")]
    ReadableEventBuffer,
    #[error("reading the request from guest memory failed: {0}")]
    Read(String),
}

/// A device-writable buffer of a chain.
pub type WritableBuf = (GuestAddress, u32);

/// The validated parts of a chain.
#[derive(Debug, Default)]
pub struct SplitChain {
    /// Device-readable bytes, in chain order.
    pub readable: Vec<u8>,
    /// Device-writable buffers, in chain order.
    pub writable: Vec<WritableBuf>,
}

impl SplitChain {
    /// Total capacity of the device-writable part.
    pub fn writable_len(&self) -> u64 {
        self.writable.iter().map(|&(_, l)| u64::from(l)).sum()
    }
}

/// A rejected chain: why, and the device-writable buffers that are
/// themselves valid (so an INVALID status can still be written).
#[derive(Debug)]
pub struct RejectedChain {
    pub error: ChainError,
    pub writable: Vec<WritableBuf>,
}

fn overlaps(addr: u64, len: u32, forbidden: &[(u64, u64)]) -> bool {
    let end = addr.saturating_add(u64::from(len));
    forbidden
        .iter()
        .any(|&(base, flen)| addr < base.saturating_add(flen) && base < end)
}

fn check_buffer(
    mem: &GuestMemoryMmap,
    forbidden: &[(u64, u64)],
    addr: GuestAddress,
    len: u32,
) -> Result<(), ChainError> {
    if overlaps(addr.0, len, forbidden) {
        return Err(ChainError::InAperture { addr: addr.0, len });
    }
    let in_ram = addr.0.checked_add(u64::from(len)).is_some()
        && GuestMemoryBackend::check_range(mem, addr, len as usize);
    if !in_ram {
        return Err(ChainError::OutsideGuestMemory { addr: addr.0, len });
    }
    Ok(())
}

/// Splits a requestq (or, with `writable_only`, an eventq) chain into its
/// device-readable bytes and device-writable buffers, validating
/// everything. `forbidden` lists guest-physical ranges no buffer may touch
/// (the VM's aperture windows).
pub fn split_chain<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
    forbidden: &[(u64, u64)],
    writable_only: bool,
) -> Result<SplitChain, RejectedChain>
where
    M: Deref,
    M::Target: GuestMemory,
{
    let mut readable_descs: Vec<WritableBuf> = Vec::new();
    let mut writable: Vec<WritableBuf> = Vec::new();
    let mut readable_len = 0usize;
    let mut error: Option<ChainError> = None;
    for (count, desc) in chain.enumerate() {
        if count >= MAX_CHAIN_DESCRIPTORS {
            // Keep walking (the queue's TTL bounds it) only to find a
            // writable buffer for the INVALID status.
            error.get_or_insert(ChainError::TooManyDescriptors);
        }
        let (addr, len) = (desc.addr(), desc.len());
        if len == 0 {
            continue;
        }
        let valid = check_buffer(mem, forbidden, addr, len);
        if desc.is_write_only() {
            match valid {
                Ok(()) => writable.push((addr, len)),
                Err(e) => {
                    error.get_or_insert(e);
                }
            }
            continue;
        }
        if writable_only {
            error.get_or_insert(ChainError::ReadableEventBuffer);
        } else if !writable.is_empty() {
            error.get_or_insert(ChainError::WrongDirectionOrder);
        } else if let Err(e) = valid {
            error.get_or_insert(e);
        } else {
            readable_len = readable_len.saturating_add(len as usize);
            if readable_len > MAX_REQUEST_BYTES {
                error.get_or_insert(ChainError::RequestTooLarge);
            }
            readable_descs.push((addr, len));
        }
    }
    if let Some(error) = error {
        return Err(RejectedChain { error, writable });
    }
    let mut readable = vec![0u8; readable_len];
    let mut at = 0;
    for (addr, len) in readable_descs {
        let len = len as usize;
        if let Err(e) = mem.read_slice(&mut readable[at..at + len], addr) {
            return Err(RejectedChain {
                error: ChainError::Read(e.to_string()),
                writable,
            });
        }
        at += len;
    }
    Ok(SplitChain { readable, writable })
}

/// Writes `bytes` across the device-writable buffers. Returns the number of
/// bytes written, or `None` if they do not fit or a write failed.
pub fn write_to_buffers(mem: &GuestMemoryMmap, bufs: &[WritableBuf], bytes: &[u8]) -> Option<u32> {
    let capacity: u64 = bufs.iter().map(|&(_, l)| u64::from(l)).sum();
    if (bytes.len() as u64) > capacity {
        return None;
    }
    let mut at = 0usize;
    for &(addr, len) in bufs {
        if at == bytes.len() {
            break;
        }
        let n = (len as usize).min(bytes.len() - at);
        mem.write_slice(&bytes[at..at + n], addr).ok()?;
        at += n;
    }
    u32::try_from(at).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
#[allow(clippy::cast_possible_truncation)] // test code: casts of small constants
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;

    const W: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;

    /// Guest memory in two regions; the second one stands for an aperture
    /// window that a monitor (wrongly) included in the device's memory map.
    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x10_0000),
            (GuestAddress(0x20_0000), 0x1000),
        ])
        .unwrap()
    }

    fn split(
        mem: &GuestMemoryMmap,
        descs: &[(u64, u32, u16)],
        writable_only: bool,
    ) -> Result<SplitChain, RejectedChain> {
        let q = MockSplitQueue::new(mem, 16);
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .map(|&(a, l, f)| RawDescriptor::from(Descriptor::new(a, l, f, 0)))
            .collect();
        let chain = q.build_desc_chain(&raw).unwrap();
        split_chain(chain, mem, &[(0x20_0000, 0x1000)], writable_only)
    }

    #[test]
    fn readable_then_writable_is_split_in_order() {
        let m = mem();
        m.write_slice(b"abcd", GuestAddress(0x1000)).unwrap();
        m.write_slice(b"ef", GuestAddress(0x2000)).unwrap();
        let s = split(
            &m,
            &[
                (0x1000, 4, 0),
                (0x2000, 2, 0),
                (0x3000, 8, W),
                (0x4000, 0, W),
                (0x5000, 8, W),
            ],
            false,
        )
        .unwrap();
        assert_eq!(s.readable, b"abcdef");
        assert_eq!(
            s.writable,
            vec![(GuestAddress(0x3000), 8), (GuestAddress(0x5000), 8)]
        );
        assert_eq!(s.writable_len(), 16);
        let n = write_to_buffers(&m, &s.writable, &[7u8; 12]).unwrap();
        assert_eq!(n, 12);
        let mut back = [0u8; 4];
        m.read_slice(&mut back, GuestAddress(0x5000)).unwrap();
        assert_eq!(back, [7, 7, 7, 7]);
        assert!(write_to_buffers(&m, &s.writable, &[0u8; 17]).is_none());
    }

    #[test]
    fn aperture_inside_guest_memory_is_still_refused() {
        let m = mem();
        let r = split(&m, &[(0x20_0000, 16, 0), (0x3000, 8, W)], false).unwrap_err();
        assert!(matches!(r.error, ChainError::InAperture { .. }));
        assert_eq!(r.writable, vec![(GuestAddress(0x3000), 8)]);
        let r = split(&m, &[(0x1000, 16, 0), (0x20_0ff8, 8, W)], false).unwrap_err();
        assert!(matches!(r.error, ChainError::InAperture { .. }));
        assert!(r.writable.is_empty());
    }

    #[test]
    fn direction_size_and_range_errors() {
        let m = mem();
        let e = |d: &[(u64, u32, u16)], wo| split(&m, d, wo).unwrap_err().error;
        assert_eq!(
            e(&[(0x3000, 8, W), (0x1000, 4, 0)], false),
            ChainError::WrongDirectionOrder
        );
        assert_eq!(e(&[(0x1000, 8, 0)], true), ChainError::ReadableEventBuffer);
        assert_eq!(
            e(&[(0x1000, MAX_REQUEST_BYTES as u32 + 1, 0)], false),
            ChainError::RequestTooLarge
        );
        assert!(matches!(
            e(&[(0xf_fff0, 32, 0)], false),
            ChainError::OutsideGuestMemory { .. }
        ));
        assert!(matches!(
            e(&[(u64::MAX - 4, 8, 0)], false),
            ChainError::OutsideGuestMemory { .. }
        ));
        // Too many descriptors: the writable one at the end is still found.
        let mut many: Vec<(u64, u32, u16)> = (0..(MAX_CHAIN_DESCRIPTORS as u64 + 2))
            .map(|i| (0x1000 + i, 1, 0))
            .collect();
        many.push((0x3000, 8, W));
        let q = MockSplitQueue::new(&m, 64);
        let raw: Vec<RawDescriptor> = many
            .iter()
            .map(|&(a, l, f)| RawDescriptor::from(Descriptor::new(a, l, f, 0)))
            .collect();
        let r = split_chain(q.build_desc_chain(&raw).unwrap(), &m, &[], false).unwrap_err();
        assert_eq!(r.error, ChainError::TooManyDescriptors);
        assert_eq!(r.writable, vec![(GuestAddress(0x3000), 8)]);
    }
}
