//! End-to-end harness for the cross-VM XPMEM monitor.
//!
//! * [`debian`]: fetches the Debian kernel and busybox into a build cache.
//! * [`image`]: builds guest initramfs images (cached by content hash).
//! * [`nested`]: the KVM test host: direct, or an L1 QEMU-TCG VM with nested SVM.
//! * [`scenario`]: runs multi-VM monitor configurations and parses guest consoles.
//! * [`cases`]: the end-to-end test groups.
//! * [`relay`]: passes messages between guests through their serial consoles.
//! * [`demo`]: the two-VM XPMEM demo (`xpmem-e2e demo`, `./scripts/demo.sh`).
//! * [`xpmem_group`]: the `xpmem` group (guest driver + device, one and two VMs).

pub mod bench;
pub mod cases;
pub mod console;
pub mod cpio;
pub mod debian;
pub mod demo;
pub mod disk_group;
pub mod forced;
pub mod hash;
pub mod image;
pub mod kill_group;
pub mod kmod;
pub mod lanes;
pub mod nested;
pub mod net_group;
pub mod process;
pub mod relay;
pub mod rootdisk_group;
pub mod scale_group;
pub mod scenario;
pub mod tap_group;
pub mod vsock_group;
pub mod vsock_host;
pub mod xpmem_group;

use std::path::PathBuf;

/// The build directory: `$XPMEM_BUILD_DIR`, else `<repo>/build`.
pub fn build_dir() -> PathBuf {
    match std::env::var_os("XPMEM_BUILD_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => repo_root().join("build"),
    }
}

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .unwrap_or(manifest)
}
