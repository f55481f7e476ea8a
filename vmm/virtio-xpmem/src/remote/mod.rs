//! One process per VM: the xpmem domain in a broker process, each VM's transport and
//! aperture windows in the VM's own process.
//!
//! The broker runs every VM's virtio-xpmem device model (the same [`crate::XpmemHub`] as
//! in a single process) on memory the VM processes share with it, much like a vhost-user
//! back end: each VM process sends its guest-RAM memfd, two kick eventfds (requestq,
//! eventq), a call eventfd and one end of an *aperture* connection
//! ([`vm::RemoteXpmemDevice::connect`]); the broker maps the memfd, builds the queues when
//! the driver activates the device, and serves it ([`broker::serve_vm_process`]).
//!
//! Only the VM process can change its own aperture windows (they are memslots of its KVM
//! VM), so the hub's aperture backend in the broker is [`broker::RemoteAperture`]: every
//! map, unmap and revocation is a request on that VM's aperture connection, answered by
//! the VM process's aperture thread after its `mmap` returned. The hub applies the
//! domain's actions in order as before, so an exporter's request still completes only
//! after every importer's process has answered that it unmapped the pages. Exporter RAM
//! travels as the exporter's memfd (`SCM_RIGHTS`) to an importer's process the first time
//! it maps from it, and the broker takes it back when the exporter leaves.
//!
//! A VM process that dies closes both connections; the kernel closes a dying process's
//! files only after it has torn down its address space, so a closed aperture connection
//! means that process maps nothing any more. The broker then removes the VM from the
//! domain exactly as when a device is dropped: its segments are revoked (REVOKED events
//! to importers), its attachments unmapped, its ids freed. A VM process that stops
//! answering is killed after [`broker::APERTURE_REPLY_TIMEOUT`].

pub mod broker;
pub mod protocol;
pub mod vm;

pub use broker::{serve_vm_process, ApertureLinks, RemoteAperture, APERTURE_REPLY_TIMEOUT};
pub use protocol::seqpacket_pair;
pub use vm::{ApertureThread, BrokerHandle, RemoteXpmemDevice};

/// Errors on the connections between a VM process and the broker.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("broker connection: {0}")]
    Io(#[source] std::io::Error),
    #[error("cannot encode a broker message: {0}")]
    Encode(String),
    #[error("undecodable broker message: {0}")]
    Decode(String),
    #[error("broker protocol violation: {0}")]
    Protocol(String),
    #[error("the broker refused this VM: {0}")]
    Refused(String),
    #[error("the broker has gone away; the setup is stopping")]
    BrokerGone,
    #[error("cannot wait for the VM process's messages and kicks: {0}")]
    Events(#[source] event_manager::Error),
}
