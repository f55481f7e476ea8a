//! Errors of the xpmem crate.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::abi::XPMEM_ERRNO_NOPROC;

/// The XPMEM operation that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `xpmem_version`.
    Version,
    /// `xpmem_make`.
    Make,
    /// `xpmem_remove`.
    Remove,
    /// `xpmem_get`.
    Get,
    /// `xpmem_release`.
    Release,
    /// `xpmem_attach`.
    Attach,
    /// `xpmem_detach`.
    Detach,
    /// `xpmem_name`.
    Name,
    /// `xpmem_search`.
    Search,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Version => "xpmem version",
            Op::Make => "xpmem make",
            Op::Remove => "xpmem remove",
            Op::Get => "xpmem get",
            Op::Release => "xpmem release",
            Op::Attach => "xpmem attach",
            Op::Detach => "xpmem detach",
            Op::Name => "xpmem name",
            Op::Search => "xpmem search",
        })
    }
}

/// Errors of the xpmem crate; each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The device node could not be opened.
    #[error("cannot open {path}: {source} (is the xpmem kernel module loaded? `insmod xpmem.ko`)")]
    Open {
        /// The path tried.
        path: PathBuf,
        /// The open error.
        source: io::Error,
    },
    /// The module is loaded but the VM has no virtio-xpmem device.
    #[error("{op}: this VM has no virtio-xpmem device (start it with one; only `version` works without)")]
    NoDevice {
        /// The operation.
        op: Op,
    },
    /// The segment's mode or the domain policy denies access, or the id
    /// belongs to another process.
    #[error("{op}: permission denied (the segment's mode does not admit this uid, the host policy forbids it, or the id belongs to another process)")]
    PermissionDenied {
        /// The operation.
        op: Op,
    },
    /// No such segment, permit or attachment.
    #[error(
        "{op}: no such segment, permit or attachment (it was removed, released, or never existed)"
    )]
    NotFound {
        /// The operation.
        op: Op,
    },
    /// The exporting process is gone (`XPMEM_ERRNO_NOPROC`).
    #[error("{op}: the exporting process is gone")]
    ExporterGone {
        /// The operation.
        op: Op,
    },
    /// The name is taken by another segment of the setup, or the segment
    /// already has a name.
    #[error("{op}: the name is taken by another segment of this setup, or this segment already has a name (choose another name)")]
    NameTaken {
        /// The operation.
        op: Op,
    },
    /// The driver or device does not offer named segments.
    #[error(
        "{op}: not supported by this driver or device (named segments need VIRTIO_XPMEM_F_NAMES)"
    )]
    Unsupported {
        /// The operation.
        op: Op,
    },
    /// Out of memory, or the import aperture has no room for the attachment.
    #[error("{op}: out of memory or import aperture space (detach something, or attach a smaller range)")]
    NoSpace {
        /// The operation.
        op: Op,
    },
    /// An argument was rejected before or by the driver.
    #[error("{op}: invalid argument: {detail}")]
    InvalidArgument {
        /// The operation.
        op: Op,
        /// What was wrong.
        detail: &'static str,
    },
    /// Any other OS error.
    #[error("{op} failed: {source}")]
    Os {
        /// The operation.
        op: Op,
        /// The OS error.
        source: io::Error,
    },
}

impl Error {
    /// Maps an error returned by an XPMEM ioctl.
    pub fn from_os(op: Op, source: io::Error) -> Self {
        match source.raw_os_error() {
            Some(libc::ENODEV) => Error::NoDevice { op },
            Some(libc::EACCES) | Some(libc::EPERM) => Error::PermissionDenied { op },
            Some(libc::ENOENT) => Error::NotFound { op },
            Some(XPMEM_ERRNO_NOPROC) => Error::ExporterGone { op },
            Some(libc::ENOMEM) | Some(libc::ENOSPC) => Error::NoSpace { op },
            Some(libc::EEXIST) => Error::NameTaken { op },
            Some(libc::EOPNOTSUPP) => Error::Unsupported { op },
            Some(libc::EINVAL) => Error::InvalidArgument {
                op,
                detail: "rejected by the driver (alignment, range, flags or id)",
            },
            _ => Error::Os { op, source },
        }
    }

    /// The operation that failed, if any.
    pub fn op(&self) -> Option<Op> {
        match self {
            Error::Open { .. } => None,
            Error::NoDevice { op }
            | Error::PermissionDenied { op }
            | Error::NotFound { op }
            | Error::ExporterGone { op }
            | Error::NoSpace { op }
            | Error::NameTaken { op }
            | Error::Unsupported { op }
            | Error::InvalidArgument { op, .. }
            | Error::Os { op, .. } => Some(*op),
        }
    }
}

/// Result type of the crate.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;

    fn map(errno: i32) -> Error {
        Error::from_os(Op::Get, io::Error::from_raw_os_error(errno))
    }

    #[test]
    fn errnos_map_to_variants() {
        assert!(matches!(map(libc::ENODEV), Error::NoDevice { op: Op::Get }));
        assert!(matches!(map(libc::EACCES), Error::PermissionDenied { .. }));
        assert!(matches!(map(libc::EPERM), Error::PermissionDenied { .. }));
        assert!(matches!(map(libc::ENOENT), Error::NotFound { .. }));
        assert!(matches!(
            map(XPMEM_ERRNO_NOPROC),
            Error::ExporterGone { .. }
        ));
        assert!(matches!(map(libc::ENOMEM), Error::NoSpace { .. }));
        assert!(matches!(map(libc::ENOSPC), Error::NoSpace { .. }));
        assert!(matches!(map(libc::EINVAL), Error::InvalidArgument { .. }));
        assert!(matches!(map(libc::EEXIST), Error::NameTaken { .. }));
        assert!(matches!(map(libc::EOPNOTSUPP), Error::Unsupported { .. }));
        match map(libc::EIO) {
            Error::Os { op, source } => {
                assert_eq!(op, Op::Get);
                assert_eq!(source.raw_os_error(), Some(libc::EIO));
            }
            other => panic!("EIO mapped to {other:?}"),
        }
    }

    #[test]
    fn messages_name_the_operation_and_the_remedy() {
        let msg = map(libc::ENODEV).to_string();
        assert!(msg.starts_with("xpmem get:"), "{msg}");
        assert!(msg.contains("no virtio-xpmem device"), "{msg}");
        let msg = Error::Open {
            path: "/dev/nope".into(),
            source: io::Error::from_raw_os_error(libc::ENOENT),
        }
        .to_string();
        assert!(msg.contains("/dev/nope") && msg.contains("insmod"), "{msg}");
    }

    #[test]
    fn op_is_reported() {
        assert_eq!(map(libc::ENOENT).op(), Some(Op::Get));
        let open = Error::Open {
            path: "/x".into(),
            source: io::Error::from_raw_os_error(libc::ENOENT),
        };
        assert_eq!(open.op(), None);
    }
}
