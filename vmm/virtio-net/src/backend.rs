//! Where a virtio-net device's frames go: the [`NetBackend`] trait and the
//! switch-port backend.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use net_switch::socket::{FrameSocket, Recv, Send, SocketError};

/// A frame transport behind the device: nonblocking, one message per call;
/// a message is the 12-byte `virtio_net_hdr_v1` (see `offload`) and then
/// the Ethernet frame.
pub trait NetBackend: std::marker::Send {
    /// Sends one message.
    fn send(&mut self, message: &[u8]) -> io::Result<Send>;
    /// Receives one message into `buf` (see [`Recv::Frame`] for messages
    /// longer than `buf`).
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Recv>;
    /// The descriptor to poll, if any.
    fn fd(&self) -> Option<RawFd>;
}

/// One port of the setup's switch: a `SOCK_SEQPACKET` connection to its socket.
#[derive(Debug)]
pub struct SwitchPort {
    socket: FrameSocket,
}

impl SwitchPort {
    /// Connects to the switch listening at `path`.
    pub fn connect(path: &Path) -> Result<Self, SocketError> {
        Ok(Self {
            socket: FrameSocket::connect(path)?,
        })
    }

    /// A port on an already connected socket (tests, socketpairs).
    pub fn from_socket(socket: FrameSocket) -> Self {
        Self { socket }
    }
}

impl NetBackend for SwitchPort {
    fn send(&mut self, message: &[u8]) -> io::Result<Send> {
        self.socket.send(message)
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Recv> {
        self.socket.recv(buf)
    }

    fn fd(&self) -> Option<RawFd> {
        Some(self.socket.as_raw_fd())
    }
}
