//! virtio-xpmem device model and import aperture.
//!
//! One [`XpmemHub`] per monitor owns the cross-VM [`xpmem_domain::Domain`],
//! the import aperture backend ([`aperture::MmapAperture`]) and a deadline
//! timer thread; each VM gets an [`XpmemDevice`] implementing
//! [`virtio_mmio_transport::VirtioDevice`] (device ID
//! [`virtio_xpmem_wire::VIRTIO_ID_XPMEM`], queues `requestq` and `eventq`,
//! shared memory regions 0 = read-write and 1 = read-only aperture).
//!
//! # Wiring it into a monitor
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use virtio_xpmem_device::{aperture::*, HubConfig, VmId, XpmemHub};
//! # let guest_mem: vm_memory::GuestMemoryMmap = unimplemented!();
//!
//! // Once per monitor.
//! let hub = XpmemHub::new(HubConfig {
//!     invalidate_deadline: Duration::from_millis(1000),
//!     seed: 0x1234_5678, // use a random value
//!     ..HubConfig::default()
//! })?;
//!
//! // Per VM: guest RAM must be memfd-backed (MAP_SHARED) so it can be shared.
//! let ram = VmRamLayout::from_guest_memory(&guest_mem)?;
//! // Two windows above RAM (reserve them in e820 as non-RAM).
//! let windows = ApertureWindows::reserve(
//!     0x1_0000_0000, 256 << 20, // rw window: guest base, length
//!     0x1_1000_0000, 256 << 20, // ro window
//! )?;
//! // Register windows.rw.host_addr() as a memslot at windows.rw.guest_base()
//! // and windows.ro likewise with KVM_MEM_READONLY; keep `windows` alive as
//! // long as the memslots exist.
//! let device = hub.add_vm(VmId(1), ram, windows.clone())?;
//! // Wrap `device` in the virtio-mmio transport. Dropping it removes the VM.
//! # drop(device);
//! # Ok(()) }
//! ```
//!
//! The transport's `VirtioInterrupt::trigger` is called for a VM from other
//! VMs' threads (events and completions are routed across VMs); it must not
//! take that VM's transport lock. See [`hub`] for the lock order.
//!
//! # Guest input
//!
//! Every requestq chain is validated ([`chain`]): at most
//! [`chain::MAX_CHAIN_DESCRIPTORS`] descriptors, device-readable before
//! device-writable, every buffer inside guest RAM and outside the VM's own
//! aperture windows, at most [`chain::MAX_REQUEST_BYTES`] readable, and a
//! writable part large enough for the answer *before* the domain acts. A bad
//! chain gets status INVALID if it has a usable writable buffer, otherwise
//! it is returned with length 0. Requests are parsed by the wire crate.

// Values from guests (lengths, counts, addresses, page numbers, ids) are converted with
// checks that answer an error status; a cast that cannot lose anything by construction
// carries an `allow` saying why. Tests and the fuzz harness may cast freely.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

pub mod aperture;
pub mod chain;
mod convert;
mod device;
// The fuzz entry point and its fake guest driver: only with the `fuzzing` feature
// (the `cargo fuzz` target and the `fuzz_smoke` test turn it on), never in a
// normal build's API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod hub;
pub mod remote;

pub use device::{XpmemDevice, QUEUE_SIZE};
pub use hub::{
    ApertureStats, CompletionProbe, CutOff, DeviceStats, HubClock, HubConfig, HubError,
    ManualClock, XpmemHub,
};
pub use xpmem_domain::{VmHoldings, VmId, Window};
