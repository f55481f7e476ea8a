//! What travels on a router connection (one Unix `SOCK_SEQPACKET`
//! connection per guest CID): a few short control messages and, otherwise,
//! one vsock packet per SEQPACKET packet (the 44-byte header followed by
//! its data, as in the virtqueues).
//!
//! Control messages are shorter than [`HDR_LEN`], so no packet can be
//! mistaken for one, and start with [`MAGIC`]:
//!
//! | message | direction | bytes |
//! |---|---|---|
//! | hello | port -> router, first | `vsr1` + CID (le64) |
//! | welcome | router -> port, answers the hello | `vsr1okay` |
//! | reset | port -> router | `vsr1rset` |
//! | reset done | router -> port | `vsr1rdon` |
//!
//! The router answers a hello it refuses (CID below 3 or above the
//! largest guest CID, or taken) by closing the connection. "Reset done"
//! marks where the packets queued before a reset end: the port drops
//! everything that arrives between its reset and that marker.

use crate::packet::HDR_LEN;

/// Starts every control message (protocol version 1).
pub const MAGIC: [u8; 4] = *b"vsr1";
/// Bytes of a hello.
pub const HELLO_LEN: usize = 12;
pub const WELCOME: [u8; 8] = *b"vsr1okay";
pub const RESET: [u8; 8] = *b"vsr1rset";
pub const RESET_DONE: [u8; 8] = *b"vsr1rdon";

/// Why a message is neither a control message nor a packet.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("a {0}-byte message is neither a vsock router control message nor a packet (packets have the 44-byte header); is the peer a vsock router client of this version?")]
    Unknown(usize),
}

/// One message, classified.
#[derive(Debug, PartialEq, Eq)]
pub enum Msg<'a> {
    Hello(u64),
    Welcome,
    Reset,
    ResetDone,
    /// A vsock packet, still to be checked with `Header::parse`.
    Packet(&'a [u8]),
}

pub fn hello(cid: u64) -> [u8; HELLO_LEN] {
    let mut b = [0u8; HELLO_LEN];
    b[..4].copy_from_slice(&MAGIC);
    b[4..].copy_from_slice(&cid.to_le_bytes());
    b
}

pub fn classify(bytes: &[u8]) -> Result<Msg<'_>, WireError> {
    if bytes.len() >= HDR_LEN {
        return Ok(Msg::Packet(bytes));
    }
    let unknown = || WireError::Unknown(bytes.len());
    if bytes.len() == HELLO_LEN && bytes[..4] == MAGIC {
        let mut c = [0u8; 8];
        c.copy_from_slice(&bytes[4..]);
        return Ok(Msg::Hello(u64::from_le_bytes(c)));
    }
    match <[u8; 8]>::try_from(bytes).map_err(|_| unknown())? {
        WELCOME => Ok(Msg::Welcome),
        RESET => Ok(Msg::Reset),
        RESET_DONE => Ok(Msg::ResetDone),
        _ => Err(unknown()),
    }
}
