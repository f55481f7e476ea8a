//! Guest initramfs images: busybox, the guest kernel's virtio modules (plus
//! dependencies from modules.dep), project modules (e.g. `xpmem.ko`) and
//! project files, with an `/init` that prints a readiness banner, runs the
//! configured command and shuts the guest down.
//!
//! Images are cached by a content hash of every input: a rebuild happens only
//! when an input changes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::cpio::Archive;
use crate::debian::Kernel;
use crate::hash::ContentHash;
use crate::kmod::ModuleIndex;

/// Errors while building a guest image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kmod(#[from] crate::kmod::Error),
    #[error(transparent)]
    Cpio(#[from] crate::cpio::Error),
    #[error("cannot read image input {path}: {source}")]
    Input {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write image {path}: {source}")]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("gzip failed: {0} (install the gzip package)")]
    Gzip(String),
    #[error("extra file {0} is a special file; only regular files, directories and symlinks can go into an image")]
    Special(PathBuf),
}

/// The kernel modules every guest loads, in order (dependencies are added).
pub const BASE_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_mmio",
    "virtio_rng",
    "virtio_net",
    // virtio-vsock (with vsock and vmw_vsock_virtio_transport_common).
    "vmw_vsock_virtio_transport",
];

/// The banner the guest prints once init is done; see [`crate::console`].
pub const READY_MARKER: &str = "XPMEM-GUEST READY";
/// The line the guest prints after the configured command exits.
pub const RESULT_MARKER: &str = "XPMEM-GUEST RESULT";

/// The guest's `/init`. Its marker lines (`XPMEM-GUEST ...`) are written to
/// `/dev/kmsg` at level 2 (critical), so they reach the console through the
/// kernel's polled console path even with `quiet` and even if the serial
/// port's interrupt-driven tty output does not work; they appear as
/// `[ uptime] XPMEM-GUEST READY ...`. Kernel command line knobs:
/// `xpmem.name=NAME` (default `guest`), `xpmem.run=CMD` (a path or command
/// without spaces, default `/etc/xpmem/run` if present), `xpmem.exit=reboot|poweroff|halt`
/// (default `reboot`: with `reboot=k` this is an i8042 reset a monitor can
/// catch; `poweroff` needs ACPI S5 support in the monitor), `xpmem.out=kmsg`
/// (send the command's output through `/dev/kmsg` too, one printk per line),
/// `xpmem.ip=169.254.C.D/16` and `xpmem.hosts=a,b,...` (the monitor passes
/// both for a VM with a network device: the init gives the first network
/// device that address and writes `/etc/hosts`; the README's "Addresses
/// between VMs" has the scheme). The READY line then ends with `ip=`.
/// With vsock and `xpmem-agent` in the image, the guest agent runs (in the
/// background; `xpmem.run=agent` makes it the VM's command) and the READY line
/// ends with `agent=5252`; `xpmem.input=agent` makes the command's stdin the
/// FIFO `/run/xpmem-input` the host writes through the agent.
pub const GUEST_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin:/scenario
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp && mount -t tmpfs tmpfs /tmp
say() {
	if [ -c /dev/kmsg ]; then echo "<2>$*" >/dev/kmsg; else echo "$*"; fi
}
name=guest
out=console
run=
exitmode=reboot
addr=
hosts=
input=console
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	xpmem.name=*) name=${arg#xpmem.name=} ;;
	xpmem.run=*) run=${arg#xpmem.run=} ;;
	xpmem.exit=*) exitmode=${arg#xpmem.exit=} ;;
	xpmem.out=*) out=${arg#xpmem.out=} ;;
	xpmem.ip=*) addr=${arg#xpmem.ip=} ;;
	xpmem.hosts=*) hosts=${arg#xpmem.hosts=} ;;
	xpmem.input=*) input=${arg#xpmem.input=} ;;
	esac
done
hostname "$name"
if [ -z "$run" ] && [ -f /etc/xpmem/run ]; then run=/etc/xpmem/run; fi
for m in $(cat /etc/xpmem/modules); do
	insmod "/lib/modules/xpmem/$m" || say "XPMEM-GUEST ERROR $name insmod $m failed"
done
# Give drivers a moment to bind (probing is synchronous for these, normally).
i=0
while [ $i -lt 20 ]; do
	unbound=0
	for d in /sys/bus/virtio/devices/*; do
		[ -e "$d" ] || continue
		[ -e "$d/driver" ] || unbound=1
	done
	[ $unbound = 0 ] && break
	sleep 0.1
	i=$((i + 1))
done
IP() { ip "$@"; }
# Network (README "Addresses between VMs"): loopback; the first network
# device up with the IPv4 link-local address the monitor gave (xpmem.ip=,
# beside the IPv6 link-local one the kernel derives from the MAC); host
# names from xpmem.hosts= (entry i is VM i's name, its address
# 169.254.(1+i/254).(1+i%254) unless the entry says name:C.D; empty
# entries are VMs without a network device).
hosts_of() {
	echo "$1" | tr ',' '\n' | {
		i=0
		while IFS= read -r h; do
			if [ -n "$h" ]; then
				case "$h" in
				*:*) echo "169.254.${h#*:} ${h%%:*}" ;;
				*) echo "169.254.$((1 + i / 254)).$((1 + i % 254)) $h" ;;
				esac
			fi
			i=$((i + 1))
		done
	}
}
net_up() {
	IP link set lo up
	netif=
	for d in /sys/class/net/*; do
		[ -e "$d/device" ] && { netif=$(basename "$d"); break; }
	done
	if [ -n "$netif" ]; then
		IP link set "$netif" up || say "XPMEM-GUEST ERROR $name cannot bring $netif up"
		if [ -n "$addr" ]; then
			IP addr add "$addr" brd + dev "$netif" ||
				say "XPMEM-GUEST ERROR $name cannot give $netif $addr"
		fi
	fi
	{
		echo "127.0.0.1 localhost"
		echo "::1 localhost"
		[ -n "$addr" ] && echo "${addr%/*} $name"
		[ -n "$hosts" ] && hosts_of "$hosts"
	} >"$1"
}
net_up /etc/hosts
echo "hosts: files" >/etc/nsswitch.conf
# The guest agent (`xpmem-vmm exec`) when the VM has vsock: in the
# background, or as the VM's whole job with xpmem.run=agent (until the host
# sends EXIT).
agent=
if [ -e /dev/vsock ] && command -v xpmem-agent >/dev/null; then
	if [ "$run" = agent ]; then
		run='xpmem-agent --main'
	else
		(xpmem-agent 2>&1 | while IFS= read -r l; do say "$l"; done) &
	fi
	agent=" agent=5252"
fi
# xpmem.input=agent: the command reads its stdin from the FIFO
# /run/xpmem-input, which the host fills through the agent (xpmem-relay
# --agent), instead of from the serial console. Opened read-write, so the
# command never sees end-of-file and writers never block on the open.
if [ "$input" = agent ]; then
	mkdir -p /run && mkfifo /run/xpmem-input && exec 0<>/run/xpmem-input ||
		say "XPMEM-GUEST ERROR $name cannot make /run/xpmem-input"
fi
virtio=
for d in /sys/bus/virtio/devices/*; do
	[ -e "$d" ] || continue
	drv=none
	[ -e "$d/driver" ] && drv=$(basename "$(readlink "$d/driver")")
	virtio="$virtio${virtio:+,}$(basename "$d"):$(cat "$d/device"):$drv"
done
online=$(cat /sys/devices/system/cpu/online)
cpus=0
for range in $(echo "$online" | tr ',' ' '); do
	lo=${range%-*}
	hi=${range#*-}
	cpus=$((cpus + hi - lo + 1))
done
say "XPMEM-GUEST READY $name cpus=$cpus virtio=${virtio:-none} uptime=$(cut -d' ' -f1 /proc/uptime)${addr:+ ip=$addr}$agent"
if [ -n "$run" ]; then
	if [ "$out" = kmsg ]; then
		(sh -c "$run" 2>&1; echo "rc=$?" >/tmp/rc) | while IFS= read -r l; do say "$l"; done
		rc=$(sed -n 's/^rc=//p' /tmp/rc)
	else
		sh -c "$run"
		rc=$?
	fi
	say "XPMEM-GUEST RESULT $name rc=${rc:-255}"
fi
sync
case "$exitmode" in
poweroff) poweroff -f ;;
halt) halt -f ;;
*) reboot -f ;;
esac
sleep 5
say "XPMEM-GUEST ERROR $name did not shut down"
"#;

/// What goes into a guest image.
#[derive(Debug, Clone, Default)]
pub struct Spec {
    /// Module names from the guest kernel, loaded in this order after
    /// dependencies (default [`BASE_MODULES`]).
    pub modules: Vec<String>,
    /// Extra `.ko` files (e.g. the project's `xpmem.ko`), loaded last, in order.
    pub extra_modules: Vec<PathBuf>,
    /// Directories whose contents are copied to the image root (e.g. one
    /// holding `scenario/foo.sh` or `bin/xpmem-test`).
    pub extra_dirs: Vec<PathBuf>,
    /// Default command (written to `/etc/xpmem/run`), used when the kernel
    /// command line has no `xpmem.run=`.
    pub run: Option<String>,
}

impl Spec {
    /// The base image: virtio modules, no extras.
    pub fn base() -> Self {
        Self {
            modules: BASE_MODULES.iter().map(|s| s.to_string()).collect(),
            ..Self::default()
        }
    }

    /// What every XPMEM test boots: the base modules and `virtio_blk`, then
    /// `guest-driver/kmod/xpmem.ko`, with `guest-driver/tools/image`
    /// (scenario scripts and static test programs) in the image root.
    pub fn xpmem() -> Self {
        let root = crate::repo_root();
        Self {
            modules: BASE_MODULES
                .iter()
                .chain(&["virtio_blk"])
                .map(|s| s.to_string())
                .collect(),
            extra_modules: vec![root.join("guest-driver/kmod/xpmem.ko")],
            extra_dirs: vec![root.join("guest-driver/tools/image")],
            ..Self::base()
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Input {
        path: path.to_path_buf(),
        source,
    })
}

fn add_tree(a: &mut Archive, dir: &Path, prefix: &str) -> Result<(), Error> {
    let input = |source| Error::Input {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(input)?
        .collect::<Result<_, _>>()
        .map_err(|source| Error::Input {
            path: dir.to_path_buf(),
            source,
        })?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let name = format!("{prefix}{}", e.file_name().to_string_lossy());
        let meta = std::fs::symlink_metadata(&path).map_err(|source| Error::Input {
            path: path.clone(),
            source,
        })?;
        let ft = meta.file_type();
        if ft.is_dir() {
            a.add_dir(&name)?;
            add_tree(a, &path, &format!("{name}/"))?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path).map_err(|source| Error::Input {
                path: path.clone(),
                source,
            })?;
            a.add_symlink(&name, &target.to_string_lossy())?;
        } else if ft.is_file() {
            use std::os::unix::fs::PermissionsExt;
            a.add_file(&name, meta.permissions().mode() & 0o7777, read(&path)?)?;
        } else {
            return Err(Error::Special(path));
        }
    }
    Ok(())
}

/// Assembles the (uncompressed) archive for `spec`.
pub fn archive(kernel: &Kernel, busybox: &Path, spec: &Spec) -> Result<Archive, Error> {
    let mut a = Archive::new();
    for d in [
        "proc",
        "sys",
        "dev",
        "tmp",
        "etc/xpmem",
        "lib/modules/xpmem",
    ] {
        a.add_dir(d)?;
    }
    a.add_char_dev("dev/console", 0o600, 5, 1)?;
    a.add_char_dev("dev/null", 0o666, 1, 3)?;
    a.add_file("bin/busybox", 0o755, read(busybox)?)?;
    a.add_symlink("bin/sh", "busybox")?;
    a.add_file("init", 0o755, GUEST_INIT.as_bytes().to_vec())?;

    let idx = ModuleIndex::load(&kernel.modules_dir)?;
    let wanted: Vec<&str> = spec.modules.iter().map(String::as_str).collect();
    let mut order = String::new();
    let mut add_module = |a: &mut Archive, path: &Path| -> Result<(), Error> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        a.add_file(&format!("lib/modules/xpmem/{name}"), 0o644, read(path)?)?;
        order.push_str(&name);
        order.push('\n');
        Ok(())
    };
    for m in idx.resolve(&wanted)? {
        add_module(&mut a, &m)?;
    }
    for m in &spec.extra_modules {
        add_module(&mut a, m)?;
    }
    a.add_file("etc/xpmem/modules", 0o644, order.into_bytes())?;
    if let Some(run) = &spec.run {
        a.add_file(
            "etc/xpmem/run",
            0o755,
            format!("#!/bin/sh\n{run}\n").into_bytes(),
        )?;
    }
    for d in &spec.extra_dirs {
        add_tree(&mut a, d, "")?;
    }
    Ok(a)
}

/// Builds (or reuses) the gzip-compressed image for `spec` in `out_dir`;
/// returns its path `out_dir/guest-<hash>.cpio.gz`.
pub fn build(
    kernel: &Kernel,
    busybox: &Path,
    spec: &Spec,
    out_dir: &Path,
) -> Result<PathBuf, Error> {
    let a = archive(kernel, busybox, spec)?;
    let mut raw = Vec::with_capacity(a.payload_len() + 64 * 1024);
    a.write_to(&mut raw)?;
    let hash = ContentHash::new()
        .update(b"guest-image-v1")
        .update(&raw)
        .hex();
    let out = out_dir.join(format!("guest-{}.cpio.gz", &hash[..16]));
    if out.exists() {
        return Ok(out);
    }
    std::fs::create_dir_all(out_dir).map_err(|source| Error::Output {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let gz = gzip(&raw)?;
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, gz).map_err(|source| Error::Output {
        path: tmp.clone(),
        source,
    })?;
    std::fs::rename(&tmp, &out).map_err(|source| Error::Output {
        path: out.clone(),
        source,
    })?;
    Ok(out)
}

fn gzip(data: &[u8]) -> Result<Vec<u8>, Error> {
    let mut child = Command::new("gzip")
        .args(["-n", "-6", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Gzip(e.to_string()))?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| Error::Gzip("no stdin pipe".into()))?;
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child
        .wait_with_output()
        .map_err(|e| Error::Gzip(e.to_string()))?;
    match writer.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(Error::Gzip(e.to_string())),
        Err(_) => return Err(Error::Gzip("writer thread panicked".into())),
    }
    if !out.status.success() {
        return Err(Error::Gzip(format!("exit status {}", out.status)));
    }
    Ok(out.stdout)
}
