//! virtio socket device (virtio 1.2 section 5.10, device ID 19).
//!
//! Three virtqueues, `rx` (0), `tx` (1) and `event` (2), of [`QUEUE_SIZE`]
//! entries; configuration space: `guest_cid` (le64). Stream sockets only;
//! features offered: `VIRTIO_F_VERSION_1`.
//!
//! # Pieces
//!
//! - [`packet`]: the 44-byte header, parsed and checked field by field (own
//!   code rather than the `virtio-vsock` crate: that one expects a header
//!   and at most one data descriptor per chain and works in place on guest
//!   memory, while this device copies every packet through sans-IO cores
//!   and accepts any chain layout).
//! - [`conn`]: connections between a guest and the host (CID 2), sans-IO:
//!   REQUEST/RESPONSE/RST/SHUTDOWN/RW/CREDIT_UPDATE/CREDIT_REQUEST and
//!   credit-based flow control both ways.
//! - [`backend`]: the host's Unix sockets on Firecracker's convention
//!   (`CONNECT <port>\n` / `OK <hostport>\n` on the device's socket; the
//!   guest's connections to the host go to `<socket>_<port>`).
//! - [`router`]: guest-to-guest routing between the devices of one setup,
//!   a sans-IO core ([`router::Router`]) and its in-process shell
//!   ([`router::LocalRouter`]).
//!
//! # Guest input and bounds
//!
//! Every transmit chain is copied (at most 44 + 64 KiB, device-readable
//! only, inside RAM) and returned at once; its header must name the guest's
//! own CID, a stream socket, a known operation and exactly as many data
//! bytes as follow it, and only RW carries data. Refused packets are
//! counted and answered with RST where they name a connection. Host
//! memory per connection is bounded by the credit the device advertises
//! ([`conn::HOST_BUF_ALLOC`], resets beyond it) and by
//! [`conn::TO_GUEST_CAP`]; guest-to-guest by the router's clamped credit.
//! A guest that never reads stops the reads from the host's sockets.
//!
//! Worst cases per device, with every limit reached at once (a guest and
//! host programs that open the most connections and never read): host side
//! [`conn::MAX_HOST_CONNS`] x ([`conn::HOST_BUF_ALLOC`] +
//! [`conn::TO_GUEST_CAP`]) = 80 MiB; router inbox
//! [`router::G2G_MAX_CONNS`] x [`router::G2G_MAX_CREDIT`] = 64 MiB of data
//! plus [`router::INBOX_MAX_CONTROL`] control packets. Linux guests keep
//! far below that: their kernel drains the receive queue into its socket
//! buffers whether or not the program reads.

pub mod backend;
pub mod conn;
mod device;
#[doc(hidden)]
pub mod fuzzing;
pub mod packet;
pub mod router;

pub use backend::{BackendError, HostSide};
pub use conn::{ConnStats, Held, HostConns};
pub use device::{
    Vsock, VsockError, VsockReport, VsockStats, CONFIG_LEN, QUEUE_SIZE, VIRTIO_ID_VSOCK,
};
pub use router::{LocalRouter, RouterPort};

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests;
