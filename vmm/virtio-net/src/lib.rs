//! virtio network device (virtio 1.2 section 5.1, device ID 1).
//!
//! Two virtqueues, `receiveq1` (0) and `transmitq1` (1), of [`QUEUE_SIZE`]
//! entries. Every frame carries the 12-byte `virtio_net_hdr` (VERSION_1
//! layout, with `num_buffers`). Features offered: `VIRTIO_F_VERSION_1`,
//! `VIRTIO_F_RING_EVENT_IDX`, `MAC`, `MTU`, `STATUS` (link up while the
//! backend is connected) and `MRG_RXBUF`. No checksum or segmentation
//! offloads: a header that asks for them is refused.
//!
//! # Backend
//!
//! Frames leave and arrive through a [`NetBackend`]; [`SwitchPort`] is one
//! `SOCK_SEQPACKET` connection to the setup's [`net_switch`]. The backend's
//! [`TapBackend`] is a TAP interface on the host (per VM, optional). The
//! descriptor is watched by the VM's event thread
//! ([`VirtioDevice::backend_fd`](virtio_mmio_transport::VirtioDevice::backend_fd)),
//! which calls `process_backend` when it is ready.
//!
//! # Guest input and bounds
//!
//! - TX: a chain must be device-readable only, at least header + 14 bytes
//!   and at most header + MTU + 14; its header must not ask for offloads.
//!   Bad chains are returned (used length 0) and counted; nothing outside
//!   guest RAM is touched. At most one frame waits when the backend is
//!   full; the TX queue is not read further until it has gone.
//! - RX: frames from the backend wait in a queue of at most
//!   [`RX_QUEUE_FRAMES`] frames and [`RX_QUEUE_BYTES`] bytes until the guest
//!   posts buffers; beyond that they are dropped and counted, so a guest
//!   that never reads costs bounded host memory. The queue is fair between
//!   source MACs (round robin; when full, the sender holding the most
//!   frames loses its oldest), so one VM flooding this guest cannot starve
//!   another VM's traffic to it. Each poll reads at most
//!   [`RX_READ_BATCH`] frames. A receive chain must be device-writable only
//!   and inside guest RAM; a bad one is returned with length 0. With
//!   `MRG_RXBUF` a frame spans as many chains as it needs.

// Values from guests (lengths, counts, addresses, page numbers, ids) are converted with
// checks that answer an error status; a cast that cannot lose anything by construction
// carries an `allow` saying why. Tests and the fuzz harness may cast freely.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod backend;
mod device;
mod fair;
pub mod offload;
// The fuzz entry point and its fake guest driver: only with the `fuzzing` feature
// (the `cargo fuzz` target and the `fuzz_smoke` test turn it on), never in a
// normal build's API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod tap;

pub use backend::{NetBackend, SwitchPort};
pub use device::{
    mac_from_name, Net, NetError, NetStats, CONFIG_LEN, HDR_LEN, OFFLOAD_FEATURES, QUEUE_SIZE,
    RX_QUEUE_BYTES, RX_QUEUE_FRAMES, RX_READ_BATCH, VIRTIO_ID_NET, VIRTIO_NET_F_CSUM,
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
pub use net_switch::Mac;
pub use tap::{TapBackend, TapError, TapName, MAX_TAP_NAME, TUN_DEVICE};

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
#[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
// test code: casts of test sizes, indices and ifreq fields
mod tests;
