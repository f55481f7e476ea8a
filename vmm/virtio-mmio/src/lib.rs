//! virtio-mmio transport (virtio 1.2 section 4.2) and the [`VirtioDevice`] trait.
//!
//! [`MmioTransport`] implements the version 2 ("modern") register layout of
//! section 4.2.2, including the shared memory region registers, on top of a
//! [`VirtioDevice`]. The monitor routes MMIO exits inside the device window
//! (`MMIO_DEVICE_SIZE` bytes) to [`MmioTransport::read`] and
//! [`MmioTransport::write`], registers an ioeventfd on
//! `base + NOTIFY_REG_OFFSET` whose handler calls
//! [`MmioTransport::queue_notify`], and registers the transport's
//! [`MmioTransport::irqfd`] with KVM for the device's GSI.

// Values from guests (lengths, counts, addresses, page numbers, ids) are converted with
// checks that answer an error status; a cast that cannot lose anything by construction
// carries an `allow` saying why. Tests and the fuzz harness may cast freely.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

pub mod avail;
pub mod chain;
pub mod device;
mod transport;

pub use device::{
    signal_used, ActivateContext, ActivateError, InterruptReason, SharedMemoryRegion, VirtioDevice,
    VirtioInterrupt,
};
pub use transport::{
    MmioInterrupt, MmioTransport, TransportError, MMIO_DEVICE_SIZE, MMIO_MAGIC_VALUE,
    MMIO_VENDOR_ID, MMIO_VERSION, NOTIFY_REG_OFFSET,
};

/// Register offsets of the virtio-mmio v2 layout (virtio 1.2 section 4.2.2).
pub mod regs {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_SEL: u64 = 0x0ac;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits (virtio 1.2 section 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// InterruptStatus bits (virtio 1.2 section 4.2.2).
pub mod interrupt_bits {
    /// The device used a buffer in at least one queue.
    pub const USED_BUFFER: u32 = 1;
    /// The device configuration changed.
    pub const CONFIG_CHANGE: u32 = 2;
}

/// VIRTIO_F_VERSION_1 (bit 32): every device behind this transport must offer it.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// VIRTIO_F_RING_EVENT_IDX (bit 29).
pub const VIRTIO_F_RING_EVENT_IDX: u64 = 1 << 29;
