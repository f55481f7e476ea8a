//! virtio-mmio transport (virtio 1.2 section 4.2) and the [`VirtioDevice`] trait.

pub mod device;

pub use device::{
    ActivateContext, ActivateError, InterruptReason, SharedMemoryRegion, VirtioDevice,
    VirtioInterrupt,
};
