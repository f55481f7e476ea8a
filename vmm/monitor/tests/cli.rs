//! Drives the real `xpmem-vmm` binary: bad input must give one clear line on
//! stderr and a non-zero status; tiny hand-made guests check power-off,
//! reboot, console output and SIGTERM on any host whose /dev/kvm can create
//! VMs (stock Linux guests are booted by the nested end-to-end tests).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{kvm_usable, tiny_bzimage, wait_bounded, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_xpmem-vmm");

/// `out dx, al` of each byte of `text` to COM1.
fn serial_print(text: &[u8]) -> Vec<u8> {
    let mut code = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    for &b in text {
        code.extend_from_slice(&[0xb0, b, 0xee]); // mov al, b; out dx, al
    }
    code
}

/// Writes `value` to I/O port `port`, then halts forever.
fn out_then_halt(port: u16, value: u8) -> Vec<u8> {
    let [lo, hi] = port.to_le_bytes();
    vec![0x66, 0xba, lo, hi, 0xb0, value, 0xee, 0xf4, 0xeb, 0xfd]
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts a usage/config error: status, exactly one line, the expected words.
fn assert_one_line_error(out: &Output, code: i32, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "stderr: {err}");
    assert!(err.starts_with("xpmem-vmm: error: "), "stderr: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(!err.contains("panicked"), "stderr: {err}");
}

fn config(dir: &TempDir, body: &str) -> PathBuf {
    dir.write("vm.toml", body.as_bytes())
}

#[test]
fn help_and_unknown_flags() {
    let out = run(&["--help"], &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--config FILE"));
    assert_one_line_error(&run(&["--frobnicate"], &[]), 2, "unknown argument");
    assert_one_line_error(&run(&[], &[]), 2, "missing --name");
}

#[test]
fn config_errors() {
    let dir = TempDir::new("config");
    let vm = |extra: &str| format!("[[vm]]\nname = \"a\"\nmemory = 256\nkernel = \"k\"\n{extra}\n");
    let cases: Vec<(String, &str)> = vec![
        (vm("colour = \"blue\""), "unknown field `colour`"),
        (
            format!("[xpmem]\nspeed = 1\n{}", vm("")),
            "unknown field `speed`",
        ),
        (format!("{}{}", vm(""), vm("")), "duplicate VM name \"a\""),
        (vm("vcpus = 0"), "vcpus must be between 1 and 254"),
        (vm("vcpus = 100000"), "vcpus must be between 1 and 254"),
        (
            "[[vm]]\nname = \"a\"\nmemory = 32\nkernel = \"k\"\n".into(),
            "below the minimum of 64 MiB",
        ),
        (vm("console = \"tty\""), "invalid console"),
        ("[[vm]\n".into(), "invalid config file"),
        ("".into(), "no VM configured"),
    ];
    for (body, needle) in cases {
        let path = config(&dir, &body);
        let out = run(&["--config", path.to_str().unwrap()], &[]);
        assert_one_line_error(&out, 2, needle);
    }
    assert_one_line_error(
        &run(&["--config", "/nonexistent/vm.toml"], &[]),
        2,
        "cannot read config file",
    );
}

#[test]
fn missing_files_are_reported_before_kvm_is_touched() {
    let dir = TempDir::new("files");
    let kernel = dir.write("bzImage", &tiny_bzimage(&[0xf4]));
    let missing_kernel = "[[vm]]\nname = \"a\"\nmemory = 64\nkernel = \"nope\"\n";
    let out = run(
        &["--config", config(&dir, missing_kernel).to_str().unwrap()],
        &[("XPMEM_VMM_KVM_DEVICE", "/nonexistent/kvm")],
    );
    assert_one_line_error(&out, 1, "cannot open kernel");
    let out = run(
        &[
            "--name",
            "a",
            "--memory",
            "64M",
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            "/nonexistent/initrd",
        ],
        &[("XPMEM_VMM_KVM_DEVICE", "/nonexistent/kvm")],
    );
    assert_one_line_error(&out, 1, "cannot open initramfs");
}

#[test]
fn kvm_device_missing_or_wrong() {
    let dir = TempDir::new("kvm");
    let kernel = dir.write("bzImage", &tiny_bzimage(&[0xf4]));
    let args = [
        "--name",
        "a",
        "--memory",
        "64M",
        "--kernel",
        kernel.to_str().unwrap(),
    ];
    let out = run(&args, &[("XPMEM_VMM_KVM_DEVICE", "/nonexistent/kvm")]);
    assert_one_line_error(&out, 1, "does not exist: KVM is not available");
    let out = run(&args, &[("XPMEM_VMM_KVM_DEVICE", "/dev/null")]);
    assert_one_line_error(&out, 1, "not a usable KVM device");
}

fn one_vm(kernel: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["--name", "t", "--memory", "64M", "--kernel"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(kernel.to_str().unwrap().to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Runs the monitor, killing it (and failing) if it does not exit in time.
fn run_bounded(args: &[String], limit: Duration) -> Output {
    let child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_bounded(child, limit)
}

#[test]
fn bad_kernels_and_oversized_initramfs() {
    if !kvm_usable("a cli.rs KVM test") {
        return;
    }
    let dir = TempDir::new("bad-kernel");
    let junk = dir.write("junk", &[0x5a; 8192]);
    let out = run_bounded(&one_vm(&junk, &[]), Duration::from_secs(60));
    assert_one_line_error(&out, 1, "is not a usable bzImage or ELF vmlinux");

    let kernel = dir.write("bzImage", &tiny_bzimage(&[0xf4]));
    let initrd = dir.0.join("big.cpio");
    std::fs::File::create(&initrd)
        .unwrap()
        .set_len(80 << 20)
        .unwrap();
    let out = run_bounded(
        &one_vm(&kernel, &["--initrd", initrd.to_str().unwrap()]),
        Duration::from_secs(60),
    );
    assert_one_line_error(&out, 1, "does not fit in guest memory");
}

#[test]
fn guest_output_and_acpi_power_off() {
    if !kvm_usable("a cli.rs KVM test") {
        return;
    }
    let dir = TempDir::new("poweroff");
    let mut code = serial_print(b"hello from t\r\n");
    code.extend(out_then_halt(0x600, 0x34)); // SLP_TYP=5 | SLP_EN
    let kernel = dir.write("bzImage", &tiny_bzimage(&code));
    let out = run_bounded(&one_vm(&kernel, &[]), Duration::from_secs(120));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "stderr: {err}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("[vm-t] hello from t"),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(err.contains("VM t: booting"), "{err}");
    assert!(err.contains("VM t: powered off after"), "{err}");
    // The guest never started its virtio-xpmem device: it left nothing behind.
    assert!(
        err.contains(
            "VM t: xpmem objects the guest left: none (its device is not active: never started by the driver, or reset)"
        ),
        "{err}"
    );
    // The VM's virtio-xpmem device left the domain: nothing is held.
    assert!(
        err.contains(
            "xpmem domain at exit: held vms=0 segments=0 names=0 permits=0 attachments=0 \
             mapped_pages=0 rmap_entries=0 pending_faults=0 pending_resolves=0 \
             pending_invalidations=0 pending_invalidation_targets=0 aperture_pages_reserved=0;"
        ),
        "{err}"
    );
}

#[test]
fn i8042_reset_ends_the_vm() {
    if !kvm_usable("a cli.rs KVM test") {
        return;
    }
    let dir = TempDir::new("reboot");
    let kernel = dir.write("bzImage", &tiny_bzimage(&out_then_halt(0x64, 0xfe)));
    let console = dir.0.join("console.log");
    let console_arg = format!("file:{}", console.display());
    let out = run_bounded(
        &one_vm(&kernel, &["--console", &console_arg]),
        Duration::from_secs(120),
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "stderr: {err}");
    assert!(err.contains("VM t: rebooted"), "{err}");
    assert!(console.exists());
}

#[test]
fn sigterm_stops_a_spinning_vm() {
    if !kvm_usable("a cli.rs KVM test") {
        return;
    }
    let dir = TempDir::new("sigterm");
    // Two vCPUs: the boot vCPU spins, the AP waits for a SIPI that never
    // comes; both must be knocked out of KVM_RUN.
    let kernel = dir.write("bzImage", &tiny_bzimage(&[0xeb, 0xfe]));
    let args = one_vm(&kernel, &["--vcpus", "2"]);
    let mut child = Command::new(BIN)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the VM is running (the "booting" line), then stop it.
    let mut stderr_pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr_pipe, &mut text);
        text
    });
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("xpmem-vmm ignored SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = reader.join().unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "stderr: {err}");
    assert!(err.contains("received SIGTERM, stopping 1 VM(s)"), "{err}");
    assert!(err.contains("VM t: stopped by the monitor after"), "{err}");
    // Where each vCPU was: the spinning boot vCPU, and the AP never started.
    assert!(
        err.contains("VM t vCPU 0: stopped while running, rip 0x100200"),
        "{err}"
    );
    assert!(
        err.contains("VM t vCPU 1: stopped while waiting for INIT"),
        "{err}"
    );
}

#[test]
fn disk_config_errors_are_one_line_and_write_nothing() {
    let dir = TempDir::new("disks");
    let img = |name: &str, size: u64| {
        let path = dir.0.join(name);
        std::fs::File::create(&path).unwrap().set_len(size).unwrap();
        path
    };
    img("root.img", 1 << 20);
    img("odd.img", 1000);
    let ro = img("ro.img", 4096);
    std::fs::set_permissions(&ro, std::os::unix::fs::PermissionsExt::from_mode(0o444)).unwrap();
    std::fs::create_dir(dir.0.join("adir")).unwrap();
    std::fs::hard_link(dir.0.join("root.img"), dir.0.join("link.img")).unwrap();
    let vm = |name: &str, extra: &str| {
        format!(
            "[[vm]]\nname = \"{name}\"\nmemory = 64\nkernel = \"k\"\nconsole = \"file:{name}.log\"\n{extra}\n"
        )
    };
    let cases: Vec<(String, &str)> = vec![
        (vm("a", "root = \"nope.img\""), "does not exist"),
        (vm("a", "root = \"adir\""), "is a directory"),
        (vm("a", "root = \"odd.img\""), "not a multiple of 512"),
        (
            vm("a", "root = \"ro.img\""),
            "is read-only (mode 444) but asked to be writable",
        ),
        (
            vm(
                "a",
                "disks = [{ path = \"root.img\", serial = \"serial-that-is-too-long\" }]",
            ),
            "longer than 20 bytes",
        ),
        (
            format!(
                "{}{}",
                vm("a", "root = \"root.img\""),
                vm("b", "root = \"link.img\"")
            ),
            "a writable image belongs to one VM only",
        ),
    ];
    for (body, needle) in cases {
        let path = config(&dir, &body);
        let out = run(
            &["--config", path.to_str().unwrap()],
            &[("XPMEM_VMM_KVM_DEVICE", "/nonexistent/kvm")],
        );
        assert_one_line_error(&out, 2, needle);
        assert!(!dir.0.join("a.log").exists(), "nothing written: {body}");
    }
}

#[test]
fn a_disk_locked_by_another_process_is_refused_before_anything_starts() {
    let dir = TempDir::new("disk-lock");
    dir.write("k", &tiny_bzimage(&[0xf4]));
    let image = dir.0.join("root.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    // This test process plays the other monitor.
    let holder = virtio_blk_device::DiskImage::open(&image, false).unwrap();
    let body = "[[vm]]\nname = \"a\"\nmemory = 64\nkernel = \"k\"\nconsole = \"file:a.log\"\nroot = { path = \"root.img\", read_only = true }\n";
    let path = config(&dir, body);
    let out = run(
        &["--config", path.to_str().unwrap()],
        &[("XPMEM_VMM_KVM_DEVICE", "/nonexistent/kvm")],
    );
    assert_one_line_error(&out, 1, "root.img is in use by process");
    assert!(
        stderr(&out).contains(&std::process::id().to_string()),
        "{}",
        stderr(&out)
    );
    assert!(!dir.0.join("a.log").exists());
    drop(holder);
    // Once released, the monitor gets past the disks (and stops at the missing KVM).
    let out = run(
        &["--config", path.to_str().unwrap()],
        &[("XPMEM_VMM_KVM_DEVICE", "/nonexistent/kvm")],
    );
    assert_one_line_error(&out, 1, "KVM is not available");
}

#[test]
fn a_vm_with_disks_boots_and_releases_its_locks() {
    if !kvm_usable("a cli.rs KVM test") {
        return;
    }
    let dir = TempDir::new("disk-boot");
    let mut code = serial_print(b"disks\r\n");
    code.extend(out_then_halt(0x600, 0x34)); // power off
    let kernel = dir.write("bzImage", &tiny_bzimage(&code));
    let root = dir.0.join("root.img");
    let data = dir.0.join("data.img");
    for p in [&root, &data] {
        std::fs::File::create(p).unwrap().set_len(1 << 20).unwrap();
    }
    let root_arg = root.to_str().unwrap().to_string();
    let data_arg = format!("{},ro,serial=data", data.display());
    let out = run_bounded(
        &one_vm(&kernel, &["--root", &root_arg, "--disk", &data_arg]),
        Duration::from_secs(120),
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "stderr: {err}");
    assert!(
        err.contains(&format!(
            "disk {} (rw), disk {} (ro)",
            root.display(),
            data.display()
        )),
        "{err}"
    );
    assert!(err.contains("VM t: powered off after"), "{err}");
    // The monitor is gone, and its locks with it.
    virtio_blk_device::DiskImage::open(&root, false).unwrap();
}
