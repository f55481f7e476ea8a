//! The messages between a VM process and the broker, and how they travel: one message per
//! `SOCK_SEQPACKET` packet, encoded with bincode (size-limited), file descriptors beside it
//! as `SCM_RIGHTS`.
//!
//! Two connections per VM, each with one side that asks and one that answers, so neither
//! side ever has to tell an answer from a question:
//! - the *control* connection: the VM process asks ([`ToBroker`]), the broker answers
//!   ([`FromBroker`]);
//! - the *aperture* connection: the broker asks ([`ApertureOp`]), the VM process's aperture
//!   thread answers ([`ApertureReply`]).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::RemoteError;

/// Largest message either side sends or accepts.
pub(crate) const MAX_MESSAGE: usize = 16 * 1024;
/// Most descriptors one message carries.
pub(crate) const MAX_FDS: usize = 8;
/// Most RAM regions a VM may announce (the monitor uses one or two).
pub(crate) const MAX_RAM_REGIONS: usize = 8;

/// One guest RAM region and where it sits in one of the files sent with the message.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct WireRamRegion {
    pub guest_base: u64,
    pub len: u64,
    /// Index into the message's descriptors.
    pub file: u8,
    pub file_offset: u64,
}

/// A virtqueue as the driver set it up (virtio-queue's `QueueState` without `max_size`,
/// which the broker knows itself).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct WireQueue {
    pub size: u16,
    pub ready: bool,
    pub event_idx: bool,
    pub next_avail: u16,
    pub next_used: u16,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
}

/// The VM process's questions on the control connection.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToBroker {
    /// First message. Descriptors: the RAM files (as the regions index them), then the
    /// request and event kick eventfds, the call eventfd and the VM's end of its aperture
    /// connection.
    Hello {
        ram: Vec<WireRamRegion>,
        ram_files: u8,
        rw_base: u64,
        rw_len: u64,
        ro_base: u64,
        ro_len: u64,
    },
    /// The driver set DRIVER_OK.
    Activate {
        acked_features: u64,
        queues: Vec<WireQueue>,
    },
    /// The driver reset the device.
    Reset,
    /// What the guest holds in the domain (or held when it last left it).
    Holdings,
}

/// The broker's answers on the control connection.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromBroker {
    /// Answer to Hello: the device's config space and features.
    Welcome {
        config: Vec<u8>,
        features: u64,
    },
    Done,
    Failed(String),
    /// segments, permits, attachments
    Holdings(Option<(u64, u64, u64)>),
}

/// 0 = the read-write window, 1 = the read-only one.
pub(crate) type WireWindow = u8;

/// The broker's requests on the aperture connection.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ApertureOp {
    /// The RAM of another VM, to map from. Descriptors: its RAM files.
    AddExporter {
        vm: u32,
        ram: Vec<WireRamRegion>,
        ram_files: u8,
    },
    /// That VM is gone: close its RAM files.
    ForgetExporter { vm: u32 },
    Map {
        window: WireWindow,
        page: u64,
        exporter: u32,
        gpa: u64,
        npages: u64,
        writable: bool,
    },
    Unmap {
        window: WireWindow,
        page: u64,
        npages: u64,
    },
    /// Replace the whole window by the filler (or cut the VM off from it).
    RevokeWindow { window: WireWindow },
}

/// Why an aperture operation failed, as far as the broker needs to know.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) enum WireApertureError {
    /// The VM's host mapping budget refused the map.
    Budget {
        needed: u64,
        budget: u64,
    },
    /// A failed map could not restore the filler: the window must be revoked.
    Unrestored(String),
    Other(String),
}

/// The aperture thread's answers.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ApertureReply {
    Done { mmap_calls: u64, pages: u64 },
    Failed(WireApertureError),
}

fn codec() -> impl bincode::Options {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_limit(MAX_MESSAGE as u64)
        .with_fixint_encoding()
        .reject_trailing_bytes()
}

/// Sends one message with `fds` beside it.
pub fn send<T: Serialize>(sock: &UnixStream, msg: &T, fds: &[RawFd]) -> Result<(), RemoteError> {
    use bincode::Options;
    let bytes = codec()
        .serialize(msg)
        .map_err(|e| RemoteError::Encode(e.to_string()))?;
    if fds.len() > MAX_FDS {
        return Err(RemoteError::Encode(format!(
            "{} descriptors in one message",
            fds.len()
        )));
    }
    let sent = sock
        .send_with_fds(&[&bytes[..]], fds)
        .map_err(|e| RemoteError::Io(e.into()))?;
    if sent != bytes.len() {
        return Err(RemoteError::Io(io::Error::other(
            "short send on a SOCK_SEQPACKET connection",
        )));
    }
    Ok(())
}

/// Receives one message and the descriptors that came with it. `Ok(None)`: the peer closed
/// the connection.
pub fn recv<T: DeserializeOwned>(
    sock: &UnixStream,
) -> Result<Option<(T, Vec<OwnedFd>)>, RemoteError> {
    use bincode::Options;
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut raw = [-1 as RawFd; MAX_FDS];
    let mut iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    // SAFETY: `iov` describes `buf`, which lives (and is not otherwise borrowed) until
    // the call returns; `raw` has room for MAX_FDS descriptors.
    let (len, nfds) =
        unsafe { sock.recv_with_fds(&mut iov, &mut raw) }.map_err(|e| RemoteError::Io(e.into()))?;
    let fds: Vec<OwnedFd> = raw[..nfds.min(MAX_FDS)]
        .iter()
        .filter(|fd| **fd >= 0)
        // SAFETY: each descriptor was just received with SCM_RIGHTS and belongs to no one
        // else in this process.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(*fd) })
        .collect();
    if len == 0 && fds.is_empty() {
        return Ok(None);
    }
    let msg = codec()
        .deserialize(&buf[..len.min(buf.len())])
        .map_err(|e| RemoteError::Decode(e.to_string()))?;
    Ok(Some((msg, fds)))
}

/// A connected pair of `SOCK_SEQPACKET` sockets (close-on-exec).
pub fn seqpacket_pair() -> io::Result<(UnixStream, UnixStream)> {
    let mut fds = [-1; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair writes.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nothing else.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((UnixStream::from(a), UnixStream::from(b)))
}

/// Regions of a layout as sent, with the distinct files they need (in index order).
pub(crate) fn wire_ram(
    ram: &crate::aperture::VmRamLayout,
) -> Result<(Vec<WireRamRegion>, Vec<std::sync::Arc<File>>), RemoteError> {
    let mut files: Vec<std::sync::Arc<File>> = Vec::new();
    let mut regions = Vec::new();
    for r in ram.regions() {
        let index = match files
            .iter()
            .position(|f| f.as_raw_fd() == r.file.as_raw_fd())
        {
            Some(i) => i,
            None => {
                files.push(r.file.clone());
                files.len() - 1
            }
        };
        regions.push(WireRamRegion {
            guest_base: r.guest_base,
            len: r.len,
            file: u8::try_from(index)
                .map_err(|_| RemoteError::Encode("too many RAM files".into()))?,
            file_offset: r.file_offset,
        });
    }
    if regions.len() > MAX_RAM_REGIONS || files.len() > MAX_FDS - 4 {
        return Err(RemoteError::Encode(format!(
            "{} RAM regions in {} files; at most {MAX_RAM_REGIONS} regions in {} files travel",
            regions.len(),
            files.len(),
            MAX_FDS - 4
        )));
    }
    Ok((regions, files))
}

/// The layout a peer announced: regions checked (count, alignment, overlap through
/// [`crate::aperture::VmRamLayout::new`], and each inside its file).
pub(crate) fn layout_from_wire(
    regions: &[WireRamRegion],
    files: Vec<OwnedFd>,
) -> Result<crate::aperture::VmRamLayout, RemoteError> {
    if regions.is_empty() || regions.len() > MAX_RAM_REGIONS {
        return Err(RemoteError::Protocol(format!(
            "{} RAM regions announced; 1 to {MAX_RAM_REGIONS} expected",
            regions.len()
        )));
    }
    let files: Vec<std::sync::Arc<File>> = files
        .into_iter()
        .map(|fd| std::sync::Arc::new(File::from(fd)))
        .collect();
    let mut out = Vec::with_capacity(regions.len());
    for r in regions {
        let file = files.get(usize::from(r.file)).ok_or_else(|| {
            RemoteError::Protocol(format!(
                "RAM region names file {} of {}",
                r.file,
                files.len()
            ))
        })?;
        let size = file.metadata().map_err(RemoteError::Io)?.len();
        let end = r.file_offset.checked_add(r.len);
        if end.is_none_or(|end| end > size) {
            return Err(RemoteError::Protocol(format!(
                "RAM region at {:#x} (+{:#x}) lies beyond its file's {size} bytes",
                r.guest_base, r.len
            )));
        }
        out.push(crate::aperture::RamRegion {
            guest_base: r.guest_base,
            len: r.len,
            file: file.clone(),
            file_offset: r.file_offset,
        });
    }
    crate::aperture::VmRamLayout::new(out).map_err(|e| RemoteError::Protocol(e.to_string()))
}
