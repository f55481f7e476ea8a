//! The KVM test host. On machines with hardware virtualization the payload runs
//! directly on the host; elsewhere (e.g. `kvm_pvm` hosts, where a stock Linux
//! guest cannot boot) it runs inside an "L1" QEMU-TCG VM with emulated AMD SVM,
//! whose Debian kernel loads `kvm-amd` and so has a real `/dev/kvm`.
//!
//! The payload (files + a shell script) is packed into the L1 initramfs under
//! `/payload`; L1's serial console is streamed back line by line, and the
//! script's exit code comes back as the marker line `XPMEM-L1-RESULT rc=<n>`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cpio::Archive;
use crate::debian::{Cache, Kernel};
use crate::kmod::ModuleIndex;
use crate::process::{self, Exit, Flow};

/// Errors of the test host.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Debian(#[from] crate::debian::Error),
    #[error(transparent)]
    Kmod(#[from] crate::kmod::Error),
    #[error(transparent)]
    Cpio(#[from] crate::cpio::Error),
    #[error(transparent)]
    Process(#[from] process::Error),
    #[error("cannot read payload file {path}: {source}")]
    ReadPayload {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--direct was requested but this host has no usable hardware KVM ({0}); use --nested")]
    NoDirectKvm(String),
    #[error("the L1 host did not report the payload's result (console ended without `XPMEM-L1-RESULT`); see the [L1] lines above")]
    NoResult,
}

/// Which kind of KVM host to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Direct if the host has usable hardware KVM, nested otherwise.
    Auto,
    /// Always boot the L1 QEMU-TCG host.
    Nested,
    /// Always run on this host.
    Direct,
}

/// What this host offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKvm {
    /// True if `/dev/kvm` is backed by VMX/SVM (not `kvm_pvm`).
    pub hardware: bool,
    /// Human-readable reason.
    pub reason: String,
}

/// Detects whether `/dev/kvm` on this host can boot a stock Linux guest.
pub fn detect_host() -> HostKvm {
    if Path::new("/sys/module/kvm_pvm").exists() {
        return HostKvm {
            hardware: false,
            reason: "/dev/kvm is kvm_pvm (software KVM that cannot boot stock Linux)".into(),
        };
    }
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = flags
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if !hw {
        return HostKvm {
            hardware: false,
            reason: "the CPU has no vmx/svm flag".into(),
        };
    }
    if !Path::new("/dev/kvm").exists() {
        return HostKvm {
            hardware: false,
            reason:
                "the CPU has vmx/svm but /dev/kvm does not exist (modprobe kvm_intel or kvm_amd)"
                    .into(),
        };
    }
    HostKvm {
        hardware: true,
        reason: "hardware-assisted /dev/kvm".into(),
    }
}

/// When L1 loads its KVM modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmLoad {
    /// `/init` loads them before the payload runs (the usual case).
    AtBoot,
    /// The payload calls `load-kvm` itself (to test behaviour without `/dev/kvm`).
    Deferred,
}

/// Where a payload file's contents come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A host file, read when the run starts.
    Path(PathBuf),
    /// Inline contents.
    Data(Vec<u8>),
}

impl Source {
    fn bytes(&self) -> Result<Vec<u8>, Error> {
        match self {
            Source::Path(p) => read(p),
            Source::Data(d) => Ok(d.clone()),
        }
    }
}

/// One file of the payload.
#[derive(Debug, Clone)]
pub struct PayloadFile {
    /// Path relative to the payload directory.
    pub dest: String,
    /// Its contents.
    pub source: Source,
    /// Permission bits.
    pub mode: u32,
}

/// Files plus the shell script run with the payload directory as working dir.
#[derive(Debug, Clone, Default)]
pub struct Payload {
    /// Files placed in the payload directory.
    pub files: Vec<PayloadFile>,
    /// The script (busybox `sh` in L1, `sh` when direct).
    pub script: String,
    /// Host files the script reads as block devices, read-only, without
    /// copying them into L1's RAM (a root image is a gigabyte): the script
    /// finds drive N at `$XPMEM_DRIVEN` (`/dev/vda`, `/dev/vdb`, ... in L1, the
    /// file itself when direct).
    pub drives: Vec<PathBuf>,
    /// Modules of the L1 kernel (names as in `modules.dep`, e.g. `tun`)
    /// that L1's init loads, with their dependencies, before the script
    /// runs. Ignored when direct (the host has its own).
    pub modules: Vec<String>,
}

impl Payload {
    /// A payload running `script`.
    pub fn new(script: impl Into<String>) -> Self {
        Self {
            files: Vec::new(),
            script: script.into(),
            drives: Vec::new(),
            modules: Vec::new(),
        }
    }

    /// Adds a read-only drive (see [`Payload::drives`]).
    pub fn drive(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        self.drives.push(path.into());
        self
    }

    /// Adds a file; executables keep their mode bits.
    pub fn file(&mut self, source: impl Into<PathBuf>, dest: impl Into<String>) -> &mut Self {
        let source = source.into();
        let mode = std::fs::metadata(&source)
            .map(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.permissions().mode() & 0o777
            })
            .unwrap_or(0o644);
        self.files.push(PayloadFile {
            dest: dest.into(),
            source: Source::Path(source),
            mode,
        });
        self
    }

    /// Adds a file with inline contents.
    pub fn data(
        &mut self,
        dest: impl Into<String>,
        data: impl Into<Vec<u8>>,
        mode: u32,
    ) -> &mut Self {
        self.files.push(PayloadFile {
            dest: dest.into(),
            source: Source::Data(data.into()),
            mode,
        });
        self
    }
}

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Host selection.
    pub mode: Mode,
    /// Kill everything after this long.
    pub timeout: Duration,
    /// L1 RAM in MiB.
    pub memory_mib: u32,
    /// L1 vCPUs.
    pub cpus: u32,
    /// When KVM modules are loaded in L1.
    pub kvm: KvmLoad,
    /// Where to put temporary files (the L1 initramfs, direct-mode payload dirs).
    pub work_dir: PathBuf,
    /// If set, every console line is appended to this file as it arrives,
    /// prefixed with the seconds since the run started.
    pub console_log: Option<PathBuf>,
    /// Kill the test host when its console is silent this long. Only for
    /// payloads that print a heartbeat ([`HEARTBEAT`]): then silence means
    /// the nested host itself stopped running.
    pub silence_limit: Option<Duration>,
}

impl Options {
    /// Defaults: auto mode, 15 minutes, 4 GiB, 1 vCPU (see `run_nested`), KVM at boot.
    pub fn new(work_dir: impl Into<PathBuf>) -> Self {
        Self {
            mode: Mode::Auto,
            timeout: Duration::from_secs(900),
            memory_mib: 4096,
            cpus: 1,
            kvm: KvmLoad::AtBoot,
            work_dir: work_dir.into(),
            console_log: None,
            silence_limit: None,
        }
    }
}

/// Result of a run.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// True if it ran inside the L1 VM.
    pub nested: bool,
    /// The payload script's exit code (None: timed out or no marker).
    pub exit_code: Option<i32>,
    /// True if the harness killed the run at the deadline.
    pub timed_out: bool,
    /// True if the harness killed the run after `silence_limit` without output.
    pub stalled: bool,
    /// Wall time until L1's `/dev/kvm` was ready (nested runs only).
    pub l1_ready: Option<Duration>,
    /// Total wall time.
    pub total: Duration,
}

/// Payload script fragment: every 30 s, L1 prints its uptime and load and the
/// state and kernel wait channel of every monitor thread (to tell a stalled
/// guest from a stalled monitor, and a live test host from a stopped one).
/// Runs in the background; its pid is in `$hb`.
pub const HEARTBEAT: &str = r#"(
	while sleep 30; do
		v=
		for p in /proc/[0-9]*; do
			[ "$(cat $p/comm 2>/dev/null)" = xpmem-vmm ] && v=${p#/proc/}
		done
		t=
		for d in /proc/$v/task/*; do
			[ -r "$d/stat" ] || continue
			t="$t $(cat $d/comm):$(cut -d' ' -f3 $d/stat)/$(cat $d/wchan 2>/dev/null)"
		done
		echo "XPMEM-L1 HEARTBEAT uptime=$(cut -d' ' -f1 /proc/uptime) load=$(cut -d' ' -f1-3 /proc/loadavg) threads:$t"
	done
) &
hb=$!
"#;

/// A test host whose payload prints [`HEARTBEAT`] is declared stopped after
/// this long without console output.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(120);

/// What a group prints when the test host stopped and it runs again. A hang
/// of our guests or monitor keeps L1's heartbeat going (and ends at the
/// monitor's deadline); only the test host itself stopping silences it.
pub fn stall_warning(group: &str, last_line: &str) -> String {
    format!(
        "[{group}] WARNING: the nested test host stopped: no console output, not even its \
         30 s heartbeat, for {} s (last line: {last_line:?}). This is the intermittent \
         QEMU-TCG nested-SVM stall of tests/nested/README.md, not a guest or monitor \
         hang. Running the group once more.",
        SILENCE_LIMIT.as_secs()
    )
}

/// The marker L1's init prints after the payload exits.
pub const RESULT_MARKER: &str = "XPMEM-L1-RESULT rc=";
/// The marker L1's `load-kvm` prints once `/dev/kvm` exists.
pub const KVM_READY_MARKER: &str = "XPMEM-L1 KVM READY";

const L1_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/payload:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp /run && mount -t tmpfs tmpfs /tmp
echo "XPMEM-L1 UP uptime=$(cut -d' ' -f1 /proc/uptime)s cpus=$(grep -c ^processor /proc/cpuinfo) mem=$(grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2)kB"
case " $(cat /proc/cmdline) " in
*" xpmem.l1.kvm=defer "*) echo "XPMEM-L1 kvm modules not loaded (deferred; run load-kvm)" ;;
*) load-kvm ;;
esac
if [ -f /lib/modules/disk/order ]; then
	for m in $(cat /lib/modules/disk/order); do
		insmod /lib/modules/disk/$m || echo "XPMEM-L1 ERROR insmod $m failed"
	done
	n=0
	for d in $(cat /lib/modules/disk/drives); do
		i=0
		while [ ! -b /dev/$d ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
		[ -b /dev/$d ] || echo "XPMEM-L1 ERROR drive /dev/$d missing"
		export XPMEM_DRIVE$n=/dev/$d
		n=$((n + 1))
	done
fi
if [ -f /lib/modules/extra/order ]; then
	for m in $(cat /lib/modules/extra/order); do
		insmod /lib/modules/extra/$m || echo "XPMEM-L1 ERROR insmod $m failed"
	done
fi
export XPMEM_HOST=nested
cd /payload
sh /payload/run.sh
rc=$?
echo "XPMEM-L1-RESULT rc=$rc"
sync
poweroff -f
"#;

const L1_LOAD_KVM: &str = r#"#!/bin/sh
# Loads kvm-amd and its dependencies (order from modules.dep), checks /dev/kvm.
for m in $(cat /lib/modules/kvm/order); do
	insmod /lib/modules/kvm/$m || { echo "XPMEM-L1 ERROR insmod $m failed"; exit 1; }
done
i=0
while [ ! -c /dev/kvm ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
if [ ! -c /dev/kvm ]; then
	echo "XPMEM-L1 ERROR /dev/kvm missing after loading kvm-amd"
	exit 1
fi
echo "XPMEM-L1 KVM READY uptime=$(cut -d' ' -f1 /proc/uptime)s"
"#;

/// The CPU model of the nested test host: AMD EPYC with SVM, minus XSAVE and
/// the AVX family (see where it is used).
pub const L1_CPU_MODEL: &str = "EPYC,+svm,-avx,-avx2,-fma,-xsave,-xsaveopt,-xsavec,-xgetbv1";

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::ReadPayload {
        path: path.to_path_buf(),
        source,
    })
}

/// Adds the L1 kernel's modules `names` with their dependencies under
/// `lib/modules/<dir>/`, and `order`, the order to load them in.
fn add_modules(a: &mut Archive, idx: &ModuleIndex, dir: &str, names: &[&str]) -> Result<(), Error> {
    let mut order = String::new();
    for m in idx.resolve(names)? {
        let name = m
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        a.add_file(&format!("lib/modules/{dir}/{name}"), 0o644, read(&m)?)?;
        order.push_str(&name);
        order.push('\n');
    }
    a.add_file(
        &format!("lib/modules/{dir}/order"),
        0o644,
        order.into_bytes(),
    )?;
    Ok(())
}

/// Builds the L1 initramfs (uncompressed newc) for `payload`.
pub fn build_l1_initramfs(
    kernel: &Kernel,
    busybox: &Path,
    payload: &Payload,
) -> Result<Archive, Error> {
    let mut a = Archive::new();
    for d in ["proc", "sys", "dev", "tmp", "run", "payload"] {
        a.add_dir(d)?;
    }
    a.add_char_dev("dev/console", 0o600, 5, 1)?;
    a.add_char_dev("dev/null", 0o666, 1, 3)?;
    a.add_file("bin/busybox", 0o755, read(busybox)?)?;
    a.add_symlink("bin/sh", "busybox")?;
    a.add_file("init", 0o755, L1_INIT.as_bytes().to_vec())?;
    a.add_file("bin/load-kvm", 0o755, L1_LOAD_KVM.as_bytes().to_vec())?;
    let idx = ModuleIndex::load(&kernel.modules_dir)?;
    add_modules(&mut a, &idx, "kvm", &["kvm-amd"])?;
    if !payload.modules.is_empty() {
        let names: Vec<&str> = payload.modules.iter().map(String::as_str).collect();
        add_modules(&mut a, &idx, "extra", &names)?;
    }
    if !payload.drives.is_empty() {
        add_modules(&mut a, &idx, "disk", &["virtio_pci", "virtio_blk"])?;
        let names: Vec<String> = (0..payload.drives.len())
            .map(|i| format!("vd{}", (b'a' + i as u8) as char))
            .collect();
        a.add_file(
            "lib/modules/disk/drives",
            0o644,
            names.join("\n").into_bytes(),
        )?;
    }
    for f in &payload.files {
        a.add_file(&format!("payload/{}", f.dest), f.mode, f.source.bytes()?)?;
    }
    a.add_file("payload/run.sh", 0o755, payload.script.as_bytes().to_vec())?;
    Ok(a)
}

/// Decides direct vs nested for `mode`.
pub fn choose(mode: Mode) -> Result<bool, Error> {
    let host = detect_host();
    match mode {
        Mode::Nested => Ok(true),
        Mode::Direct if host.hardware => Ok(false),
        Mode::Direct => Err(Error::NoDirectKvm(host.reason)),
        Mode::Auto => Ok(!host.hardware),
    }
}

/// Runs `payload` on the chosen host. Every line of L1's console (or of a
/// direct run's output) is given to `on_line`.
pub fn run(
    cache: &Cache,
    payload: &Payload,
    opts: &Options,
    mut on_line: impl FnMut(&str),
) -> Result<Outcome, Error> {
    let nested = choose(opts.mode)?;
    std::fs::create_dir_all(&opts.work_dir).map_err(|source| Error::Io {
        path: opts.work_dir.clone(),
        source,
    })?;
    let mut log = match &opts.console_log {
        Some(path) => {
            let io = |source| Error::Io {
                path: path.clone(),
                source,
            };
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            Some(std::fs::File::create(path).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?)
        }
        None => None,
    };
    let start = Instant::now();
    let mut tee = |line: &str| {
        if let Some(f) = log.as_mut() {
            use std::io::Write;
            // The log is a debugging aid: a failed write must not fail the run.
            let _ = writeln!(f, "{:8.2} {line}", start.elapsed().as_secs_f64());
        }
        on_line(line);
    };
    if nested {
        run_nested(cache, payload, opts, &mut tee)
    } else {
        run_direct(payload, opts, &mut tee)
    }
}

struct TempPath(PathBuf);

impl Drop for TempPath {
    fn drop(&mut self) {
        // Best-effort cleanup of a file or directory we created.
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run_nested(
    cache: &Cache,
    payload: &Payload,
    opts: &Options,
    on_line: &mut dyn FnMut(&str),
) -> Result<Outcome, Error> {
    let kernel = cache.kernel()?;
    let busybox = cache.busybox()?;
    let archive = build_l1_initramfs(&kernel, &busybox, payload)?;
    let initrd = TempPath(
        opts.work_dir
            .join(format!("l1-initramfs-{}.cpio", std::process::id())),
    );
    let file = std::fs::File::create(&initrd.0).map_err(|source| Error::Io {
        path: initrd.0.clone(),
        source,
    })?;
    archive.write_to(std::io::BufWriter::new(file))?;

    let mut append = String::from("console=ttyS0 reboot=k panic=-1 quiet loglevel=4 rdinit=/init");
    if opts.kvm == KvmLoad::Deferred {
        append.push_str(" xpmem.l1.kvm=defer");
    }
    // Extra L1 kernel parameters, for experiments.
    if let Ok(extra) = std::env::var("XPMEM_L1_APPEND") {
        append.push(' ');
        append.push_str(&extra);
    }
    let mut cmd = Command::new("qemu-system-x86_64");
    // One L1 vCPU on single-threaded TCG. With 2 L1 vCPUs, round-robin TCG
    // starved L1 once two L2 guests were busy (both guests stalled 3 s into
    // boot), and multi-threaded TCG let an L2 vCPU triple-fault. With one L1
    // vCPU, two 2-vCPU guests boot reliably. XPMEM_L1_ACCEL overrides.
    let accel = std::env::var("XPMEM_L1_ACCEL").unwrap_or_else(|_| "tcg,thread=single".into());
    // No XSAVE/AVX in L1, hence none for the L2 guests: under QEMU 7.2's
    // emulated SVM the L2 kernels warned "XSAVE consistency problem: size 832
    // != kernel_size 576" (CPUID leaf 0xD counted AVX state the kernel had not
    // enabled, so XSAVE wrote 256 bytes past the FPU buffers). Guests then
    // crashed, triple-faulted or hung L1 in about one boot in three; without
    // XSAVE the boot group passed every time. XPMEM_L1_CPU overrides (keep +svm).
    let cpu = std::env::var("XPMEM_L1_CPU").unwrap_or_else(|_| L1_CPU_MODEL.into());
    cmd.args(["-accel", &accel, "-cpu", &cpu])
        .args(["-smp", &opts.cpus.to_string()])
        .args(["-m", &format!("{}M", opts.memory_mib)])
        .args([
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(&initrd.0)
        .args(["-append", &append]);
    for (i, drive) in payload.drives.iter().enumerate() {
        let mut spec = std::ffi::OsString::from("file=");
        spec.push(drive);
        spec.push(format!(",format=raw,if=none,id=d{i},readonly=on"));
        cmd.arg("-drive")
            .arg(spec)
            .args(["-device", &format!("virtio-blk-pci,drive=d{i}")]);
    }

    let start = Instant::now();
    let mut exit_code = None;
    let mut l1_ready = None;
    let exit = process::run_watched(&mut cmd, opts.timeout, opts.silence_limit, |raw| {
        if raw.contains("TCG doesn't support requested feature") {
            return Flow::Continue;
        }
        let cleaned = strip_ansi(raw);
        let line = cleaned.as_str();
        if line.contains(KVM_READY_MARKER) && l1_ready.is_none() {
            l1_ready = Some(start.elapsed());
        }
        if let Some(rest) = line.split(RESULT_MARKER).nth(1) {
            exit_code = rest.trim().parse::<i32>().ok();
        }
        on_line(line);
        // An L1 panic reboots, and -no-reboot turns that into QEMU exiting.
        Flow::Continue
    })?;
    let timed_out = exit == Exit::TimedOut;
    let stalled = exit == Exit::Silent;
    if exit_code.is_none() && !timed_out && !stalled {
        return Err(Error::NoResult);
    }
    Ok(Outcome {
        nested: true,
        exit_code,
        timed_out,
        stalled,
        l1_ready,
        total: start.elapsed(),
    })
}

fn run_direct(
    payload: &Payload,
    opts: &Options,
    on_line: &mut dyn FnMut(&str),
) -> Result<Outcome, Error> {
    let dir = TempPath(opts.work_dir.join(format!("direct-{}", std::process::id())));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    std::fs::create_dir_all(&dir.0).map_err(io(&dir.0))?;
    for f in &payload.files {
        let dest = dir.0.join(&f.dest);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&dest, f.source.bytes()?).map_err(io(&dest))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(f.mode))
                .map_err(io(&dest))?;
        }
    }
    let script = dir.0.join("run.sh");
    std::fs::write(&script, &payload.script).map_err(io(&script))?;
    let path = format!(
        "{}:{}",
        dir.0.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let start = Instant::now();
    let mut cmd = Command::new("sh");
    cmd.arg("run.sh")
        .current_dir(&dir.0)
        .env("PATH", path)
        .env("XPMEM_HOST", "direct");
    for (i, drive) in payload.drives.iter().enumerate() {
        cmd.env(format!("XPMEM_DRIVE{i}"), drive);
    }
    let exit = process::run_watched(&mut cmd, opts.timeout, opts.silence_limit, |line| {
        on_line(line);
        Flow::Continue
    })?;
    Ok(Outcome {
        nested: false,
        exit_code: match exit {
            Exit::Code(c) => Some(c),
            Exit::TimedOut | Exit::Silent => None,
        },
        timed_out: exit == Exit::TimedOut,
        stalled: exit == Exit::Silent,
        l1_ready: None,
        total: start.elapsed(),
    })
}

/// Removes terminal escape sequences (SeaBIOS clears the screen) from a line.
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        // CSI sequences carry parameters up to one final byte in 0x40..=0x7e;
        // two-character escapes (such as ESC c, reset) are dropped whole.
        if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if ('\x40'..='\x7e').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;

    #[test]
    fn ansi_sequences_are_removed() {
        assert_eq!(strip_ansi("\x1bc\x1b[?7l\x1b[2JSeaBIOS"), "SeaBIOS");
        assert_eq!(strip_ansi("plain [vm-a] text"), "plain [vm-a] text");
    }

    #[test]
    fn forced_modes() {
        assert!(choose(Mode::Nested).unwrap());
        let host = detect_host();
        assert_eq!(choose(Mode::Auto).unwrap(), !host.hardware);
        assert_eq!(choose(Mode::Direct).is_ok(), host.hardware);
    }
}
