//! virtio-xpmem device model and import aperture.

pub mod aperture;

pub use xpmem_domain::VmId;
