//! Helpers shared by the monitor's binary-level tests.
#![allow(dead_code)] // each test file uses a different subset
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Output};
use std::time::{Duration, Instant};

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "xpmem-vmm-test-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether /dev/kvm can be used (it need not boot Linux); prints a visible
/// skip line naming `test` when it cannot, or panics with `XPMEM_REQUIRE_KVM=1`.
pub fn kvm_usable(test: &str) -> bool {
    let reason = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => return true,
        Err(e) => format!("/dev/kvm cannot be opened read-write ({e})"),
    };
    if std::env::var("XPMEM_REQUIRE_KVM").as_deref() == Ok("1") {
        panic!("XPMEM_REQUIRE_KVM=1 but {test} cannot run: {reason}");
    }
    // Written to the stderr handle rather than with eprintln!, which the
    // test harness captures: a skip must be visible in a normal run.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {test} because {reason} (set XPMEM_REQUIRE_KVM=1 to fail instead)"
    );
    false
}

/// A bzImage whose 64-bit entry point runs `code` (x86-64 machine code).
pub fn tiny_bzimage(code: &[u8]) -> Vec<u8> {
    let setup_sects = 4u8;
    let setup_len = (usize::from(setup_sects) + 1) * 512;
    let mut img = vec![0u8; setup_len + 0x1000];
    img[0x1f1] = setup_sects;
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    img[0x211] = 1; // LOADED_HIGH
    img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
    img[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
    img[0x236..0x238].copy_from_slice(&1u16.to_le_bytes()); // XLF_KERNEL_64
    img[0x238..0x23c].copy_from_slice(&2048u32.to_le_bytes());
    img[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes());
    img[0x260..0x264].copy_from_slice(&0x10_0000u32.to_le_bytes());
    // The 64-bit entry is 0x200 bytes into the protected-mode kernel.
    img[setup_len + 0x200..setup_len + 0x200 + code.len()].copy_from_slice(code);
    img
}

/// Waits for the monitor `child`, killing it (and failing the test) if it
/// does not exit within `limit`; the failure shows its stdout and stderr.
pub fn wait_bounded(child: Child, limit: Duration) -> Output {
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(50));
            // SAFETY: kill(pid, 0) only probes whether our child still exists.
            if unsafe { libc::kill(pid as i32, 0) } != 0 {
                return false;
            }
        }
        // SAFETY: `pid` is our own child process, not yet reaped (we reap it
        // in wait_with_output below, after this thread is joined).
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        true
    });
    let out = child.wait_with_output().unwrap();
    let killed = watchdog.join().unwrap();
    assert!(
        !killed,
        "xpmem-vmm did not exit within {limit:?}; stdout: {}; stderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
