//! An Ethernet learning switch that connects the VMs of a setup.
//!
//! The switch is its own component with a socket interface, in the spirit
//! of `vde_switch` and QEMU's `-netdev stream`: it listens on a Unix socket
//! path, and every port is one `SOCK_SEQPACKET` connection that carries one
//! Ethernet frame (no virtio header, no FCS) per packet. A VM's virtio-net
//! device connects to it the same way whether it lives in the switch's
//! process or in another one.
//!
//! It is split in two:
//! - [`core`]: the switch as a pure state machine ([`Switch`]): frame
//!   validation, MAC learning with aging and bounds, flooding, per-port
//!   bounded output queues and counters. No I/O, no clock (the caller
//!   passes the time), so every rule is unit-testable.
//! - [`server`]: the thin I/O shell ([`SwitchServer`]): the listening
//!   socket, accepting ports, nonblocking reads and writes driven by
//!   rust-vmm's `event-manager`. Each round reads a bounded batch from every
//!   ready port, so a port that floods cannot starve the others; a port that
//!   does not read only fills its own bounded queue and gets drops.
//!
//! [`socket`] has the `SOCK_SEQPACKET` helpers both sides use (listen,
//! accept, connect, send and receive one frame); [`readiness`] the
//! round-at-a-time wait on `event-manager` that the switch and the vsock
//! router's server share.

// Values from guests (lengths, counts, addresses, page numbers, ids) are converted with
// checks that answer an error status; a cast that cannot lose anything by construction
// carries an `allow` saying why. Tests and the fuzz harness may cast freely.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

pub mod core;
pub mod readiness;
pub mod server;
pub mod socket;

pub use crate::core::{
    DropReason, Mac, PortCounters, PortId, Switch, SwitchConfig, SwitchError, Verdict,
    ETH_HEADER_LEN, MAX_GSO_FRAME, MAX_MESSAGE, MIN_FRAME_LEN, NET_HDR_LEN,
};
pub use server::{ServerError, SwitchServer};
pub use socket::SocketError;
