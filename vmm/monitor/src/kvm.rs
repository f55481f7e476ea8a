//! Opening `/dev/kvm` and checking it can run the monitor's VMs.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use kvm_ioctls::{Cap, Kvm};
use thiserror::Error;

/// The stable KVM API version (`KVM_GET_API_VERSION`).
pub const KVM_API_VERSION: i32 = 12;
/// Environment variable that overrides the KVM device path (for tests and
/// hosts with the device elsewhere).
pub const KVM_PATH_ENV: &str = "XPMEM_VMM_KVM_DEVICE";

#[derive(Debug, Error)]
pub enum KvmError {
    #[error("{0} does not exist: KVM is not available; load kvm-intel or kvm-amd, or run on a host with hardware virtualization")]
    NotFound(PathBuf),
    #[error("permission denied opening {0}: add your user to the group owning it (usually \"kvm\") or run as root")]
    PermissionDenied(PathBuf),
    #[error("cannot open {path}: {err}")]
    Open {
        path: PathBuf,
        err: kvm_ioctls::Error,
    },
    #[error("{path} is not a usable KVM device: KVM_GET_API_VERSION returned {got}, expected {KVM_API_VERSION}")]
    BadApiVersion { path: PathBuf, got: i32 },
    #[error("KVM on this host lacks {0}, which the monitor needs; use a newer host kernel")]
    MissingCapability(&'static str),
}

/// Capabilities every VM relies on.
const REQUIRED: &[(Cap, &str)] = &[
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (
        Cap::Irqchip,
        "KVM_CAP_IRQCHIP (in-kernel interrupt controller)",
    ),
    (Cap::Pit2, "KVM_CAP_PIT2 (in-kernel timer)"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (
        Cap::ReadonlyMem,
        "KVM_CAP_READONLY_MEM (read-only import aperture)",
    ),
];

/// The KVM device path: `$XPMEM_VMM_KVM_DEVICE` or `/dev/kvm`.
pub fn device_path() -> PathBuf {
    std::env::var_os(KVM_PATH_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/dev/kvm"))
}

/// Opens the KVM device at `path` and checks API version and capabilities.
pub fn open(path: &Path) -> Result<Kvm, KvmError> {
    use std::os::unix::ffi::OsStrExt;
    let cpath = CString::new(path.as_os_str().as_bytes()).map_err(|_| KvmError::Open {
        path: path.to_path_buf(),
        err: kvm_ioctls::Error::new(libc::EINVAL),
    })?;
    let kvm = Kvm::new_with_path(&cpath).map_err(|err| match err.errno() {
        libc::ENOENT | libc::ENODEV | libc::ENXIO => KvmError::NotFound(path.to_path_buf()),
        libc::EACCES | libc::EPERM => KvmError::PermissionDenied(path.to_path_buf()),
        _ => KvmError::Open {
            path: path.to_path_buf(),
            err,
        },
    })?;
    let got = kvm.get_api_version();
    if got != KVM_API_VERSION {
        return Err(KvmError::BadApiVersion {
            path: path.to_path_buf(),
            got,
        });
    }
    for (cap, name) in REQUIRED {
        if !kvm.check_extension(*cap) {
            return Err(KvmError::MissingCapability(name));
        }
    }
    Ok(kvm)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;

    #[test]
    fn missing_device() {
        let err = open(Path::new("/nonexistent/kvm")).unwrap_err();
        assert!(matches!(err, KvmError::NotFound(_)), "{err}");
    }

    #[test]
    fn not_a_kvm_device() {
        // /dev/null opens fine but does not answer KVM ioctls.
        let err = open(Path::new("/dev/null")).unwrap_err();
        assert!(
            matches!(err, KvmError::BadApiVersion { got: -1, .. }),
            "{err}"
        );
    }
}
