//! Descriptor-chain helpers shared by device models that copy packets in
//! and out of guest memory (virtio-net, virtio-vsock): checked reads of
//! device-readable chains, checked device-writable chains and writes
//! across them, configuration-space reads, and rate-limited logging of
//! guest-triggered warnings.

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Guest-triggered warnings logged at warn level per device; later ones go
/// to debug level, so a hostile driver cannot flood the host's log.
pub const MAX_GUEST_WARNINGS: u64 = 32;

/// Logs a guest-triggered warning through `$count` (a `u64` counter of the
/// device): the first [`MAX_GUEST_WARNINGS`] at warn level, later ones at
/// debug level. `$dev` names the device in the switch-over line.
#[macro_export]
macro_rules! guest_warn {
    ($count:expr, $dev:expr, $($arg:tt)+) => {{
        $count += 1;
        if $count <= $crate::chain::MAX_GUEST_WARNINGS {
            log::warn!($($arg)+);
        } else {
            if $count == $crate::chain::MAX_GUEST_WARNINGS + 1 {
                log::warn!("{}: too many guest-triggered warnings; further ones are logged at debug level", $dev);
            }
            log::debug!($($arg)+);
        }
    }};
}

/// Why a chain is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("a chain the device reads has a device-writable descriptor; such buffers are device-readable")]
    Writable,
    #[error("a chain the device writes has a device-readable descriptor; such buffers are device-writable")]
    Readable,
    #[error("a chain is longer than the {0} bytes the device accepts")]
    TooLong(usize),
    #[error("a buffer at {addr:#x} (+{len:#x}) is outside guest memory")]
    BadBuffer { addr: u64, len: u32 },
}

/// Copies a device-readable chain into `buf` (at most `max` bytes, `buf`
/// grown to `max`); returns its length.
pub fn read_chain(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    max: usize,
    buf: &mut Vec<u8>,
) -> Result<usize, ChainError> {
    if buf.len() < max {
        buf.resize(max, 0);
    }
    let mut len = 0usize;
    for d in chain {
        if d.is_write_only() {
            return Err(ChainError::Writable);
        }
        let n = d.len() as usize;
        if n > max - len {
            return Err(ChainError::TooLong(max));
        }
        mem.read_slice(&mut buf[len..len + n], d.addr())
            .map_err(|_| ChainError::BadBuffer {
                addr: d.addr().0,
                len: d.len(),
            })?;
        len += n;
    }
    Ok(len)
}

/// A device-writable chain taken from a queue and not yet used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WritableChain {
    pub head: u16,
    pub segments: Vec<(GuestAddress, u32)>,
    pub capacity: usize,
}

impl WritableChain {
    /// Checks a chain: device-writable only, every buffer inside guest RAM.
    pub fn new(
        chain: DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
    ) -> Result<Self, ChainError> {
        let head = chain.head_index();
        let mut segments = Vec::new();
        let mut capacity = 0usize;
        for d in chain {
            if !d.is_write_only() {
                return Err(ChainError::Readable);
            }
            if d.len() == 0 {
                continue;
            }
            if !GuestMemoryBackend::check_range(mem, d.addr(), d.len() as usize) {
                return Err(ChainError::BadBuffer {
                    addr: d.addr().0,
                    len: d.len(),
                });
            }
            segments.push((d.addr(), d.len()));
            capacity = capacity.saturating_add(d.len() as usize);
        }
        Ok(WritableChain {
            head,
            segments,
            capacity,
        })
    }

    /// Writes the front of `parts` (in order) into the chain's buffers,
    /// advancing each part past what was written; returns the bytes
    /// written, or `Err` with the count so far if a buffer became
    /// unwritable.
    pub fn write(&self, mem: &GuestMemoryMmap, parts: &mut [&[u8]]) -> Result<u32, u32> {
        let mut written = 0u32;
        for &(addr, len) in &self.segments {
            let mut room = len;
            let mut at = addr;
            while room > 0 {
                let Some(part) = parts.iter_mut().find(|p| !p.is_empty()) else {
                    return Ok(written);
                };
                // At most `room`, so it fits a u32 (a part longer than
                // u32::MAX is cut to `room` anyway).
                let k = u32::try_from(part.len()).map_or(room, |n| room.min(n));
                let k_bytes = k as usize;
                if mem.write_slice(&part[..k_bytes], at).is_err() {
                    return Err(written);
                }
                *part = &part[k_bytes..];
                room -= k;
                // The guest's segments may add up to more than u32::MAX;
                // the parts (the device's packets) do not, but should they,
                // the used length saturates instead of wrapping.
                written = written.saturating_add(k);
                at = GuestAddress(at.0 + u64::from(k));
            }
        }
        Ok(written)
    }
}

/// Reads configuration space `config` at `offset`; bytes beyond it read as 0.
pub fn read_config(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = offset
            .checked_add(i as u64)
            .and_then(|o| usize::try_from(o).ok())
            .and_then(|o| config.get(o).copied())
            .unwrap_or(0);
    }
}
