//! Taking chains from the driver's available ring without trusting its index.
//!
//! `virtio_queue::Queue::pop_descriptor_chain` answers `None` both when the ring is
//! empty and when the driver published an available index more than a ring ahead of
//! the device (an index no honest driver writes). `enable_notification` then still
//! says more chains are available, so the usual "pop until empty, re-enable, pop
//! again if more arrived" loop spins for ever on such a ring: one write by a hostile
//! guest would keep the VM's event thread busy and its devices dead.
//! [`next_available`] tells the two apart; the device stops using a corrupt queue
//! and asks the driver for a reset ([`crate::InterruptReason::NeedsReset`]).

use std::sync::atomic::Ordering;

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use crate::{InterruptReason, VirtioInterrupt};

/// The driver's available ring cannot be used any more, until it resets the device.
#[derive(Debug, thiserror::Error)]
pub enum AvailError {
    #[error("the driver published available index {avail}, {ahead} entries past the device's {next} on a ring of {size}; the ring is corrupt and the queue stops until the driver resets the device")]
    IndexTooFarAhead {
        avail: u16,
        next: u16,
        ahead: u16,
        size: u16,
    },
    #[error("the available ring cannot be accessed ({0}); the queue stops until the driver resets the device")]
    Unreadable(virtio_queue::Error),
}

/// Asks the driver to reset the device (DEVICE_NEEDS_RESET), after the device stopped
/// using a queue the driver corrupted. `device` names it in the host's log line when
/// even that fails.
pub fn ask_for_reset(interrupt: &dyn VirtioInterrupt, device: &str) {
    if let Err(e) = interrupt.trigger(InterruptReason::NeedsReset) {
        log::warn!("{device}: cannot ask the driver for a reset: {e}");
    }
}

/// How often [`next_available`] looks again when chains seem to be there but none can
/// be taken (the index moved between two reads): a racing driver notifies again.
const RETRIES: usize = 4;

/// The next chain the driver made available. `Ok(None)` when the ring is empty; then
/// notifications are enabled again (a chain that arrived meanwhile is still taken, with
/// notifications disabled again), so the caller can stop until the next notification.
/// Callers disable notifications before their first call.
///
/// # Errors
/// The available index is more than a ring ahead of the device, or the ring cannot be
/// read: the queue is unusable until the driver resets the device.
pub fn next_available<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
) -> Result<Option<DescriptorChain<&'m GuestMemoryMmap>>, AvailError> {
    for _ in 0..RETRIES {
        let avail = queue
            .avail_idx(mem, Ordering::Acquire)
            .map_err(AvailError::Unreadable)?
            .0;
        let next = queue.next_avail();
        let ahead = avail.wrapping_sub(next);
        if ahead > queue.size() {
            return Err(AvailError::IndexTooFarAhead {
                avail,
                next,
                ahead,
                size: queue.size(),
            });
        }
        if ahead > 0 {
            if let Some(chain) = queue.pop_descriptor_chain(mem) {
                return Ok(Some(chain));
            }
            // The index changed under us: look again.
            continue;
        }
        if !queue
            .enable_notification(mem)
            .map_err(AvailError::Unreadable)?
        {
            return Ok(None);
        }
        queue
            .disable_notification(mem)
            .map_err(AvailError::Unreadable)?;
    }
    // Notifications may be off here; the driver that keeps moving its index is not
    // owed a prompt answer, and its next notification brings the device back.
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    const SIZE: u16 = 8;
    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;

    fn ring() -> (GuestMemoryMmap, Queue) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let mut q = Queue::new(SIZE).unwrap();
        q.try_set_desc_table_address(GuestAddress(DESC)).unwrap();
        q.try_set_avail_ring_address(GuestAddress(AVAIL)).unwrap();
        q.try_set_used_ring_address(GuestAddress(USED)).unwrap();
        q.set_ready(true);
        (mem, q)
    }

    /// Publishes `heads` (descriptor i: 16 bytes at 0x8000 + 16 i) and sets the index.
    fn publish(mem: &GuestMemoryMmap, heads: &[u16], idx: u16) {
        for (slot, &h) in heads.iter().enumerate() {
            let d = DESC + u64::from(h) * 16;
            mem.write_obj(0x8000u64 + u64::from(h) * 16, GuestAddress(d))
                .unwrap();
            mem.write_obj(16u32, GuestAddress(d + 8)).unwrap();
            mem.write_obj(0u16, GuestAddress(d + 12)).unwrap();
            mem.write_obj(h, GuestAddress(AVAIL + 4 + slot as u64 * 2))
                .unwrap();
        }
        mem.write_obj(idx, GuestAddress(AVAIL + 2)).unwrap();
    }

    #[test]
    fn takes_every_published_chain_then_reports_empty() {
        let (mem, mut q) = ring();
        publish(&mem, &[3, 1, 2], 3);
        let heads: Vec<u16> = std::iter::from_fn(|| next_available(&mut q, &mem).unwrap())
            .map(|c| c.head_index())
            .collect();
        assert_eq!(heads, [3, 1, 2]);
        assert!(next_available(&mut q, &mem).unwrap().is_none());
    }

    #[test]
    fn an_index_more_than_a_ring_ahead_is_an_error_not_an_endless_loop() {
        let (mem, mut q) = ring();
        publish(&mem, &[0], SIZE + 1);
        // Before the fix the device loop asked pop (None) and enable_notification
        // (true: "more available") for ever.
        for _ in 0..3 {
            match next_available(&mut q, &mem) {
                Err(AvailError::IndexTooFarAhead {
                    avail, next, ahead, ..
                }) => {
                    assert_eq!((avail, next, ahead), (SIZE + 1, 0, SIZE + 1));
                }
                other => panic!("want IndexTooFarAhead, got {other:?}"),
            }
        }
    }

    #[test]
    fn exactly_a_ring_ahead_is_a_full_ring_not_an_error() {
        let (mem, mut q) = ring();
        let heads: Vec<u16> = (0..SIZE).collect();
        publish(&mem, &heads, SIZE);
        let mut n = 0;
        while next_available(&mut q, &mem).unwrap().is_some() {
            n += 1;
        }
        assert_eq!(n, SIZE);
    }
}
