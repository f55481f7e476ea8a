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
//!   a sans-IO core ([`router::Router`]) and two shells: in-process
//!   ([`router::LocalRouter`], a mutex and an eventfd per device) or a
//!   component of its own ([`router::RouterServer`], a thread behind a Unix
//!   `SOCK_SEQPACKET` socket, one connection per guest CID, protocol in
//!   [`router::wire`]), so that devices in other processes can share it.
//!   A device holds a [`RouterPort`] from either ([`LocalRouter::port`],
//!   [`RouterPort::connect`]) and uses both alike.
//!
//! # Router over a socket
//!
//! A port's connection starts with a hello naming its CID; the server
//! answers with a welcome or, for a CID that is taken or not a guest CID,
//! closes the connection (so [`RouterPort::connect`] fails). Then every
//! SEQPACKET packet is one vsock packet, the 44-byte header and its data,
//! checked on arrival like the device checks a guest's (a malformed one is
//! dropped and counted in [`router::RouterStats::malformed`]); short
//! control messages carry a device reset and its answer, which marks where
//! the packets queued before the reset end. The server writes each
//! connection until its socket is full and then holds at most that one
//! packet; everything else stays in the router's bounded inboxes. The port
//! sends without blocking: a full socket refuses the packet
//! ([`router::RouteError::Busy`]) and the device answers RST, as for any
//! packet the router refuses (refusals of the router itself come back as
//! RST packets). On receive the port holds at most one packet, split to
//! fit the guest's buffers; while it holds one the device takes the socket
//! out of its epoll set (a readable socket would keep the event loop
//! spinning), and the guest's next receive buffers run the device again.
//! A closed connection is the guest leaving: its peers get RST.
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

// Values from guests (lengths, counts, addresses, page numbers, ids) are converted with
// checks that answer an error status; a cast that cannot lose anything by construction
// carries an `allow` saying why. Tests and the fuzz harness may cast freely.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

pub mod backend;
pub mod conn;
mod device;
// The fuzz entry point and its fake guest driver: only with the `fuzzing` feature
// (the `cargo fuzz` target and the `fuzz_smoke` test turn it on), never in a
// normal build's API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod packet;
pub mod router;

pub use backend::{BackendError, HostSide};
pub use conn::{ConnStats, Held, HostConns};
pub use device::{
    Vsock, VsockError, VsockReport, VsockStats, CONFIG_LEN, QUEUE_SIZE, VIRTIO_ID_VSOCK,
};
pub use router::{LocalRouter, RouterPort, RouterServer, RouterServerError};

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
#[allow(clippy::cast_possible_truncation)] // test code: casts of test lengths
mod tests;
