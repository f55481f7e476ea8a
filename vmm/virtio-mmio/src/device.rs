//! The contract between the virtio-mmio transport and a device model.
//!
//! The transport owns the register file, the status state machine and the
//! queues until the driver sets DRIVER_OK; it then hands the queues, guest
//! memory and an interrupt handle to the device with [`VirtioDevice::activate`].

use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

/// Why an interrupt is raised; maps to the virtio-mmio InterruptStatus bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptReason {
    /// Bit 0: the device used a buffer in at least one queue.
    UsedBuffer,
    /// Bit 1: the device configuration changed.
    ConfigChange,
    /// The device cannot go on until the driver resets it (a queue the driver
    /// corrupted): DEVICE_NEEDS_RESET in the status register and bit 1, as
    /// virtio 1.2 section 2.1.2 asks.
    NeedsReset,
}

/// Raises the device's interrupt. The implementation sets the InterruptStatus
/// bit *before* signalling the guest (irqfd), so the guest never sees an
/// interrupt with an empty status.
pub trait VirtioInterrupt: Send + Sync {
    fn trigger(&self, reason: InterruptReason) -> std::io::Result<()>;
}

/// After a device put buffers in `queue`'s used ring: raises the used-buffer
/// interrupt unless the driver suppressed it (EVENT_IDX). When the ring
/// cannot be read it interrupts anyway: a spurious interrupt is harmless, a
/// lost one stalls the driver.
pub fn signal_used(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    interrupt: &dyn VirtioInterrupt,
) -> std::io::Result<()> {
    use virtio_queue::QueueT;
    if queue.needs_notification(mem).unwrap_or(true) {
        interrupt.trigger(InterruptReason::UsedBuffer)
    } else {
        Ok(())
    }
}

/// A virtio shared memory region (virtio 1.2 section 2.10) as the device
/// offers it: `id` is what the driver writes to SHMSel; `guest_base` and
/// `len` are reported in SHMBase/SHMLen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedMemoryRegion {
    pub id: u8,
    pub guest_base: u64,
    pub len: u64,
}

/// Everything a device needs once the driver has set DRIVER_OK.
pub struct ActivateContext {
    pub mem: GuestMemoryMmap,
    /// One entry per queue the device declared, already validated by the
    /// transport (ready, sizes and ring addresses set by the driver).
    pub queues: Vec<Queue>,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    /// Features the driver acknowledged (a subset of `device_features`).
    pub acked_features: u64,
}

/// Errors a device can report when it is activated. The transport answers
/// them by setting DEVICE_NEEDS_RESET.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("queue {0} is not usable: the driver must set its size and rings (inside guest memory) and make it ready before DRIVER_OK")]
    QueueNotReady(usize),
    #[error("device activation failed: {0}")]
    Device(String),
}

/// A virtio device model behind the virtio-mmio transport.
///
/// All methods are called with the transport's lock held, from a vCPU thread
/// (MMIO exits) or the VM's event thread (ioeventfd queue notifications);
/// they must not block on the guest.
pub trait VirtioDevice: Send {
    /// Virtio device ID (e.g. 4 for entropy).
    fn device_type(&self) -> u32;
    /// Maximum size of each virtqueue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits offered to the driver, including VIRTIO_F_VERSION_1.
    fn device_features(&self) -> u64;
    /// Reads device configuration space at `offset`. Out-of-range bytes read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device configuration space; out-of-range writes are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Shared memory regions the device exposes (none by default).
    fn shared_memory_regions(&self) -> Vec<SharedMemoryRegion> {
        Vec::new()
    }
    /// Takes ownership of the queues when the driver sets DRIVER_OK.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// The driver notified queue `index` (QueueNotify write or ioeventfd).
    /// Also called for every queue right after activation, so buffers made
    /// available before DRIVER_OK are not missed.
    fn queue_notify(&mut self, index: u16);
    /// A descriptor of the device's own I/O source (a network backend's
    /// socket) that the VM's event thread watches (epoll, level-triggered) for
    /// reading, and for writing while [`VirtioDevice::backend_wants_write`]; it
    /// calls [`VirtioDevice::process_backend`] when it is ready, and asks again
    /// after that and after every round of events. The descriptor must stay
    /// open as long as the device lives (also once the device stops returning
    /// it: taking it out of the epoll set needs it open). None by default.
    fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    /// The device waits for `backend_fd` to become writable.
    fn backend_wants_write(&self) -> bool {
        false
    }
    /// The device holds work its backend descriptor may not announce when it can be
    /// done (a packet for a full socket whose room comes back without the descriptor
    /// becoming writable to us): the event thread calls
    /// [`VirtioDevice::process_backend`] again after at most this long. None by default.
    fn backend_retry(&self) -> Option<std::time::Duration> {
        None
    }
    /// `backend_fd` is ready (or the device should look at its backend):
    /// move what can be moved without blocking. Called whether or not the
    /// driver has activated the device.
    fn process_backend(&mut self) {}
    /// One line of counters for the monitor to print when the VM has
    /// stopped (none by default).
    fn exit_report(&self) -> Option<String> {
        None
    }
    /// The driver reset the device (status written as 0). The device drops
    /// its queues and returns to its initial state, releasing everything it
    /// holds on behalf of the driver.
    fn reset(&mut self);
}
