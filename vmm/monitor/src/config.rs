//! Monitor configuration: the TOML file format, sizes, and validation.
//!
//! ```toml
//! [xpmem]                      # settings of the xpmem domain shared by all VMs
//! invalidate_deadline_ms = 100
//!
//! [[vm]]
//! name = "a"
//! vcpus = 2
//! memory = "1G"                # integer = MiB, or a string with K/M/G suffix
//! kernel = "bzImage"           # relative paths are relative to this file
//! initrd = "initramfs.cpio.gz"
//! cmdline = "quiet"            # appended to the default command line
//! console = "stdout"           # or "file:PATH"
//! stdin = true                 # optional: which VM reads the terminal
//! input = "a.fifo"             # optional, instead of stdin: a file or FIFO this
//!                              # VM's serial port reads (a FIFO never ends)
//! aperture_rw = "1G"           # optional import aperture window sizes
//! aperture_ro = "256M"
//! import_from = { b = "rw", c = "ro" }  # optional: the only VMs whose segments this
//!                              # VM may get (read-write or read-only); without it, all
//! root = "root.img"            # optional: boot from this raw image (first disk,
//!                              # /dev/vda; adds `root=/dev/vda rw` to the command
//!                              # line), or root = { path = "base.img", read_only = true }
//! disks = [{ path = "data.img", read_only = false, serial = "data" }]
//!                              # optional: more virtio-blk disks (/dev/vdb, ...)
//! net = { mac = "02:00:00:00:00:0a", mtu = 1500, ip = "169.254.7.1" }
//!                              # optional: this VM's virtio-net device on the setup's
//!                              # switch (the default: every VM has one, MAC derived
//!                              # from the name, MTU of the switch, IPv4 link-local
//!                              # address from the VM's index); net = false: none
//! # net = { tap = "xtap0", mac = "02:00:00:00:00:0b", mtu = 1500, ip = "169.254.100.2" }
//!                              # instead: this VM's device on the host's TAP interface
//!                              # xtap0 (not on the switch): an existing persistent TAP
//!                              # (`ip tuntap add dev xtap0 mode tap user $USER`) or, with
//!                              # CAP_NET_ADMIN, one the monitor creates for its lifetime;
//!                              # the host side gives it an address and brings it up.
//!                              # mtu: 68..=65535, default 1500; one TAP per VM; the VM
//!                              # gets no host names (it cannot reach the switch's VMs)
//!                              # net.offloads = false: no checksum or TCP segmentation
//!                              # offloads (default true: the guests leave checksums and
//!                              # cutting 64 KiB TCP packets to the devices, which pass
//!                              # them on whole to guests that take them)
//!
//! vsock = { cid = 3, socket = "a.vsock" }
//!                              # optional: this VM's virtio-vsock device (the default:
//!                              # every VM has one, cid 3 + the VM's index, socket
//!                              # `<name>.vsock` in the monitor's runtime directory);
//!                              # the host connects to `socket` and writes
//!                              # `CONNECT <port>\n`; the guest's connections to the
//!                              # host (CID 2) port P go to `<socket>_P`; VMs of the
//!                              # setup reach each other by CID; vsock = false: none
//!
//! [switch]                     # optional: the VM-to-VM Ethernet switch
//! mtu = 1500                   # largest payload (68..=65535); frames up to mtu + 14
//! socket = "/run/sw.sock"      # optional: use a switch already listening there
//!                              # (`xpmem-vmm switch --socket PATH`) instead of
//!                              # starting one in the monitor
//! ```
//!
//! Disk images are checked here, before anything is written: each must be a
//! regular file (or block device) of a non-zero multiple of 512 bytes, writable unless
//! `read_only`, with a serial of at most 20 bytes, and an image used writable
//! must not be used by any other disk of the setup (compared by device and
//! inode, so another path to the same file counts).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::layout::{MIB, MIN_MEMORY, VIRTIO_GSI_FIRST, VIRTIO_GSI_LAST};

/// Highest vCPU count the monitor supports: xAPIC ids are 8 bits and 0xff is broadcast.
pub const MAX_VCPUS: u32 = 254;
/// Longest accepted VM name (it prefixes every console line).
pub const MAX_NAME_LEN: usize = 32;
/// Default size of the read-write import aperture window.
pub const DEFAULT_APERTURE_RW: u64 = 1 << 30;
/// Default size of the read-only import aperture window.
pub const DEFAULT_APERTURE_RO: u64 = 256 << 20;
/// Kernel command line every guest starts with; `cmdline` is appended.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 pci=off";
/// virtio-mmio devices every VM has before its disks (entropy, xpmem).
pub const FIXED_VIRTIO_DEVICES: usize = 2;
/// Most disks per VM: the virtio-mmio slots (one GSI each) left after the fixed devices.
pub const MAX_DISKS: usize =
    (VIRTIO_GSI_LAST - VIRTIO_GSI_FIRST + 1) as usize - FIXED_VIRTIO_DEVICES;
/// The guest's name of the first virtio-blk disk (the root disk).
pub const ROOT_DEVICE: &str = "/dev/vda";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("invalid config file {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("no VM configured: add at least one [[vm]] section")]
    NoVms,
    #[error("invalid VM name {0:?}: use 1 to 32 characters from [A-Za-z0-9_.-]")]
    BadName(String),
    #[error("duplicate VM name {0:?}: every VM needs a unique name")]
    DuplicateName(String),
    #[error("VM {vm}: vcpus must be between 1 and {MAX_VCPUS}, got {got}")]
    BadVcpus { vm: String, got: u64 },
    #[error("VM {vm}: invalid {what} size {value:?}: {reason}")]
    BadSize {
        vm: String,
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("VM {vm}: memory {got} MiB is below the minimum of {} MiB", MIN_MEMORY / MIB)]
    MemoryTooSmall { vm: String, got: u64 },
    #[error("VM {vm}: invalid console {value:?}: use \"stdout\" or \"file:PATH\"")]
    BadConsole { vm: String, value: String },
    #[error("more than one VM has stdin = true ({0} and {1}); only one VM can read the terminal")]
    TwoStdinVms(String, String),
    #[error("VM {0}: `stdin = true` and `input` both set; choose one source for its serial input")]
    InputAndStdin(String),
    #[error("VM {vm}: import_from names {other:?}, which is not a VM of this setup; name VMs defined by [[vm]] sections")]
    UnknownImport { vm: String, other: String },
    #[error(
        "VM {vm}: import_from.{other} = {value:?}: use \"rw\" (read-write) or \"ro\" (read-only)"
    )]
    BadImportAccess {
        vm: String,
        other: String,
        value: String,
    },
    #[error("VM {vm}: {reason}")]
    BadDisk { vm: String, reason: String },
    #[error("VM {vm}: {count} disks{with}, more than the {MAX_DISKS} virtio-mmio slots a VM has for them; use fewer disks{or}")]
    TooManyDisks {
        vm: String,
        count: usize,
        /// " with its network and vsock devices" etc.
        with: String,
        /// ", or net = false / vsock = false" when they take slots.
        or: String,
    },
    #[error("disk image {path} is writable in VM {writer} and also used by VM {other}{via}; a writable image belongs to one VM only: give each VM its own copy, or set read_only = true for every use")]
    SharedWritableDisk {
        path: PathBuf,
        writer: String,
        other: String,
        via: String,
    },
    #[error("VM {vm}: net: {reason}")]
    BadNet { vm: String, reason: String },
    #[error("VMs {0} and {1} have the same MAC address {2}; give each VM its own (net.mac)")]
    DuplicateMac(String, String, String),
    #[error("VM {vm}: vsock: {reason}")]
    BadVsock { vm: String, reason: String },
    #[error("VMs {0} and {1} have the same vsock CID {2}; give each VM its own (vsock.cid)")]
    DuplicateCid(String, String, u64),
    #[error("VMs {0} and {1} use the same vsock socket {2}; give each VM its own (vsock.socket)")]
    DuplicateVsockSocket(String, String, PathBuf),
    #[error("invalid {what} {value}: {reason}")]
    BadSetting {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
}

/// Where a VM's serial console output goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Console {
    /// The monitor's stdout, each line prefixed with `[vm-NAME] `.
    Stdout,
    /// A file, created or truncated.
    File(PathBuf),
}

impl Console {
    fn parse(vm: &str, value: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        if value == "stdout" {
            return Ok(Console::Stdout);
        }
        match value.strip_prefix("file:") {
            Some(path) if !path.is_empty() => Ok(Console::File(base_dir.join(path))),
            _ => Err(ConfigError::BadConsole {
                vm: vm.to_string(),
                value: value.to_string(),
            }),
        }
    }
}

impl fmt::Display for Console {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Console::Stdout => write!(f, "stdout"),
            Console::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

/// Settings of the xpmem domain shared by all VMs (`[xpmem]` table).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct XpmemSettings {
    /// How long an importer may take to acknowledge an invalidation before
    /// the monitor revokes its mappings by force.
    pub invalidate_deadline_ms: Option<u64>,
}

/// The VM-to-VM switch (`[switch]` table).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SwitchSettings {
    /// Largest payload on the switch (default [`DEFAULT_MTU`]).
    pub mtu: Option<u64>,
    /// Connect to a switch listening at this path instead of starting one.
    pub socket: Option<PathBuf>,
}

/// MTU of the switch and of each VM's device unless the config says otherwise.
pub const DEFAULT_MTU: u16 = 1500;

/// Longest kernel command line the guest kernel takes (x86 `COMMAND_LINE_SIZE`
/// 2048 with its NUL); the host-name list is left out beyond it.
pub const MAX_GUEST_CMDLINE: usize = 2047;

/// VMs that get an address of their own from their index: 169.254.1.1 to
/// 169.254.254.254 (RFC 3927 reserves 169.254.0.x and 169.254.255.x).
pub const MAX_INDEXED_ADDRESSES: usize = 254 * 254;

/// The IPv4 link-local address of the VM at `index` in the config (0-based):
/// 169.254.(1 + index / 254).(1 + index % 254), so 169.254.1.1 for the first
/// VM, 169.254.1.254 for the 254th, 169.254.2.1 for the 255th. Two VMs of a
/// setup never share one, and it does not change when other VMs change.
pub fn link_local_ipv4(index: usize) -> Option<Ipv4Addr> {
    if index >= MAX_INDEXED_ADDRESSES {
        return None;
    }
    Some(Ipv4Addr::new(
        169,
        254,
        (1 + index / 254) as u8,
        (1 + index % 254) as u8,
    ))
}

/// An address a VM may be given: 169.254.1.0/24 .. 169.254.254.0/24, not the
/// network or broadcast address of a /24 (x.x.x.0, x.x.x.255).
fn usable_link_local(ip: Ipv4Addr) -> bool {
    let [a, b, c, d] = ip.octets();
    a == 169 && b == 254 && (1..=254).contains(&c) && (1..=254).contains(&d)
}

/// `net = false`, `net = true` or `net = { mac = "02:..", mtu = 1500 }`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum NetSpec {
    Enabled(bool),
    Device(NetDeviceSpec),
}

/// `net = { mac = "02:..", mtu = 1500, ip = "169.254.7.1", tap = "xtap0" }`:
/// all optional.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetDeviceSpec {
    pub mac: Option<String>,
    /// A host TAP interface instead of the setup's switch.
    pub tap: Option<String>,
    pub mtu: Option<u64>,
    /// IPv4 link-local address the guest's init gives eth0 (default: from
    /// the VM's index, [`link_local_ipv4`]).
    pub ip: Option<String>,
    /// Checksum and TCP segmentation offloads (default true).
    pub offloads: Option<bool>,
}

/// A validated virtio-net device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfig {
    pub mac: net_switch::Mac,
    pub mtu: u16,
    /// The guest's IPv4 link-local address (`xpmem.ip=` on its command line).
    pub ip: Ipv4Addr,
    /// The host TAP interface the device is on; `None`: the setup's switch.
    pub tap: Option<virtio_net_device::TapName>,
    /// Offer the guest checksum and TCP segmentation offloads.
    pub offloads: bool,
}

impl NetConfig {
    /// Whether the device is on the setup's switch (not on a TAP).
    pub fn on_switch(&self) -> bool {
        self.tap.is_none()
    }
}

/// `vsock = false`, `vsock = true` or `vsock = { cid = 3, socket = "a.vsock" }`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum VsockSpec {
    Enabled(bool),
    Device(VsockDeviceSpec),
}

/// `vsock = { cid = 3, socket = "a.vsock" }`: both optional.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VsockDeviceSpec {
    pub cid: Option<u64>,
    pub socket: Option<PathBuf>,
}

/// A validated virtio-vsock device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's CID (3 + the VM's index unless set).
    pub cid: u64,
    /// The host side's Unix socket; `None`: `<name>.vsock` in the monitor's
    /// runtime directory.
    pub socket: Option<PathBuf>,
}

/// A validated switch: its MTU, and where it listens if the monitor does
/// not start it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwitchSetup {
    pub mtu: u16,
    pub socket: Option<PathBuf>,
}

/// A size as written in the config: an integer (MiB) or a string with a unit.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum SizeSpec {
    MiB(u64),
    Text(String),
}

impl SizeSpec {
    /// Bytes this size stands for.
    pub fn bytes(&self) -> Result<u64, String> {
        match self {
            SizeSpec::MiB(mib) => mib.checked_mul(MIB).ok_or_else(|| "too large".to_string()),
            SizeSpec::Text(text) => parse_size(text),
        }
    }

    fn display(&self) -> String {
        match self {
            SizeSpec::MiB(mib) => mib.to_string(),
            SizeSpec::Text(text) => text.clone(),
        }
    }
}

/// Parses `1024`, `1024M`, `1G`, `512MiB`, `4096K` into bytes; a bare number is MiB.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    if digits.is_empty() {
        return Err("expected a number with an optional K, M or G suffix".to_string());
    }
    let value: u64 = digits.parse().map_err(|_| "number too large".to_string())?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => 20,
        "k" | "kb" | "kib" => 10,
        "g" | "gb" | "gib" => 30,
        "b" => 0,
        _ => return Err(format!("unknown unit {unit:?}; use K, M or G")),
    };
    value
        .checked_mul(1 << shift)
        .ok_or_else(|| "too large".to_string())
}

/// One `[[vm]]` table as written in the file.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    pub name: String,
    #[serde(default = "default_vcpus")]
    pub vcpus: u64,
    pub memory: SizeSpec,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    pub console: Option<String>,
    pub stdin: Option<bool>,
    pub input: Option<PathBuf>,
    pub aperture_rw: Option<SizeSpec>,
    pub aperture_ro: Option<SizeSpec>,
    /// Exporter VM name -> "rw" or "ro": the only VMs this one may import from.
    pub import_from: Option<std::collections::BTreeMap<String, String>>,
    /// Boot from this disk: it becomes the first disk and the root device.
    pub root: Option<RootSpec>,
    /// Further disks, in order.
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
    /// The VM's network device (default: one, on the setup's switch).
    pub net: Option<NetSpec>,
    /// The VM's vsock device (default: one, CID 3 + index).
    pub vsock: Option<VsockSpec>,
}

/// One virtio-blk disk as written in the file.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    /// A raw image file; relative paths are relative to the config file.
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
    /// What the guest reads as the disk's serial (at most 20 bytes).
    pub serial: Option<String>,
}

/// `root = "root.img"` or `root = { path = "root.img", read_only = true }`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum RootSpec {
    Path(PathBuf),
    Disk(DiskSpec),
}

/// A validated disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub read_only: bool,
    pub serial: Option<String>,
    /// Size in bytes when the config was checked.
    pub size: u64,
    /// Device and inode of the image: its identity, whatever the path.
    pub dev: u64,
    pub ino: u64,
}

impl DiskSpec {
    fn validate(&self, vm: &str, base_dir: &Path) -> Result<DiskConfig, ConfigError> {
        let bad = |reason: String| ConfigError::BadDisk {
            vm: vm.to_string(),
            reason,
        };
        let path = base_dir.join(&self.path);
        if let Some(serial) = &self.serial {
            virtio_blk_device::check_serial(serial)
                .map_err(|e| bad(format!("disk {}: {e}", path.display())))?;
        }
        let info = virtio_blk_device::check_image(&path, self.read_only)
            .map_err(|e| bad(e.to_string()))?;
        Ok(DiskConfig {
            path,
            read_only: self.read_only,
            serial: self.serial.clone(),
            size: info.size,
            dev: info.dev,
            ino: info.ino,
        })
    }
}

fn default_vcpus() -> u64 {
    1
}

/// The whole config file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    #[serde(default)]
    pub xpmem: XpmemSettings,
    #[serde(default)]
    pub switch: SwitchSettings,
    #[serde(default)]
    pub monitor: MonitorSettings,
    #[serde(default)]
    pub vm: Vec<VmSpec>,
}

/// How the monitor runs the setup (`[monitor]` table).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MonitorSettings {
    /// `"per-vm"` (default): a broker process and one process per VM; `"one"`: every VM
    /// in the monitor's own process.
    pub processes: Option<String>,
    /// With per-VM processes: `"kill"` (default), `"log"` or `"off"` (see
    /// [`crate::sandbox`]).
    pub seccomp: Option<String>,
}

/// Which processes run the VMs of a setup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Processes {
    /// A broker (xpmem domain, switch) and one process per VM: a VM whose process dies
    /// takes only itself down.
    #[default]
    PerVm,
    /// Every VM in the monitor's own process.
    One,
}

/// A validated VM configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    pub name: String,
    pub vcpus: u8,
    /// Guest RAM in bytes (page aligned, at least [`MIN_MEMORY`]).
    pub memory: u64,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Extra kernel command line, appended to [`DEFAULT_CMDLINE`].
    pub cmdline: String,
    pub console: Console,
    /// This VM's serial port reads the monitor's stdin.
    pub stdin: bool,
    /// This VM's serial port reads this file or FIFO (never together with `stdin`).
    pub input: Option<PathBuf>,
    pub aperture_rw: u64,
    pub aperture_ro: u64,
    /// `None`: may import from every VM, read-write. `Some`: only from these VMs (by
    /// name), read-write where true.
    pub import_from: Option<Vec<(String, bool)>>,
    /// virtio-blk disks in guest order (/dev/vda, /dev/vdb, ...).
    pub disks: Vec<DiskConfig>,
    /// The first disk is the root file system (`root = ...`).
    pub root_disk: bool,
    /// The virtio-net device on the setup's switch, if any.
    pub net: Option<NetConfig>,
    /// The virtio-vsock device, if any.
    pub vsock: Option<VsockConfig>,
    /// `xpmem.hosts=` for the guest: the names of the setup's VMs with a
    /// network device, see [`Config::hosts_param`]. `None` without a network
    /// device, or when the list does not fit on the command line.
    pub hosts: Option<String>,
}

impl VmConfig {
    /// The full kernel command line: the default one, the root device when
    /// booting from a disk, then `cmdline` (so a `root=` there wins).
    pub fn kernel_cmdline(&self) -> String {
        let mut line = self.cmdline_without_hosts();
        if let Some(hosts) = &self.hosts {
            line.push_str(&format!(" xpmem.hosts={hosts}"));
        }
        if !self.cmdline.trim().is_empty() {
            line.push(' ');
            line.push_str(self.cmdline.trim());
        }
        line
    }

    /// The default line, `root=` and `xpmem.ip=`: what comes before the
    /// host names.
    fn cmdline_without_hosts(&self) -> String {
        let mut line = DEFAULT_CMDLINE.to_string();
        if let (true, Some(root)) = (self.root_disk, self.disks.first()) {
            let mode = if root.read_only { "ro" } else { "rw" };
            line.push_str(&format!(" root={ROOT_DEVICE} {mode}"));
        }
        if let Some(net) = &self.net {
            line.push_str(&format!(" xpmem.ip={}/16", net.ip));
        }
        line
    }

    /// Bytes of the command line without the host names.
    fn cmdline_len_without_hosts(&self) -> usize {
        let mut line = self.cmdline_without_hosts();
        if !self.cmdline.trim().is_empty() {
            line.push(' ');
            line.push_str(self.cmdline.trim());
        }
        line.len()
    }
}

/// A validated monitor configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub xpmem: XpmemSettings,
    pub processes: Processes,
    pub seccomp: crate::sandbox::SeccompMode,
    /// The switch, when at least one VM has a network device.
    pub switch: Option<SwitchSetup>,
    pub vms: Vec<VmConfig>,
    /// Things the monitor says once at start (e.g. host names left out).
    pub notes: Vec<String>,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn size_of(
    vm: &str,
    what: &'static str,
    spec: Option<&SizeSpec>,
    default: u64,
) -> Result<u64, ConfigError> {
    match spec {
        None => Ok(default),
        Some(spec) => spec.bytes().map_err(|reason| ConfigError::BadSize {
            vm: vm.to_string(),
            what,
            value: spec.display(),
            reason,
        }),
    }
}

impl VmSpec {
    fn net_config(
        &self,
        vm: &str,
        index: usize,
        switch_mtu: u16,
    ) -> Result<Option<NetConfig>, ConfigError> {
        let bad = |reason: String| ConfigError::BadNet {
            vm: vm.to_string(),
            reason,
        };
        let (mac, mtu, ip, tap, offloads) = match &self.net {
            Some(NetSpec::Enabled(false)) => return Ok(None),
            None | Some(NetSpec::Enabled(true)) => (None, None, None, None, None),
            Some(NetSpec::Device(d)) => (
                d.mac.as_deref(),
                d.mtu,
                d.ip.as_deref(),
                d.tap.as_deref(),
                d.offloads,
            ),
        };
        let tap = tap
            .map(virtio_net_device::TapName::new)
            .transpose()
            .map_err(|e| bad(format!("tap: {e}")))?;
        let ip = match ip {
            None => link_local_ipv4(index).ok_or_else(|| {
                bad(format!(
                    "VM number {} has no address of its own: only the first {MAX_INDEXED_ADDRESSES} VMs get one from their index; give it net.ip",
                    index + 1
                ))
            })?,
            Some(text) => match text.parse::<Ipv4Addr>() {
                Ok(ip) if usable_link_local(ip) => ip,
                _ => {
                    return Err(bad(format!(
                        "ip {text:?} is not an IPv4 link-local host address between 169.254.1.1 and 169.254.254.254 (x.x.x.0 and x.x.x.255 excluded)"
                    )))
                }
            },
        };
        let mac = match mac {
            None => virtio_net_device::mac_from_name(vm),
            Some(text) => {
                let mac = net_switch::Mac::parse(text).ok_or_else(|| {
                    bad(format!(
                        "mac {text:?} is not six hex pairs separated by colons, e.g. \"02:00:00:00:00:0a\""
                    ))
                })?;
                if mac.is_group() || mac.is_zero() {
                    return Err(bad(format!("mac {mac} is not a unicast address; use a locally administered one such as 02:00:00:00:00:0a")));
                }
                mac
            }
        };
        let mtu = match (mtu, tap) {
            (None, None) => switch_mtu,
            (None, Some(_)) => DEFAULT_MTU,
            (Some(m), None) => match u16::try_from(m) {
                Ok(m) if (68..=switch_mtu).contains(&m) => m,
                _ => {
                    return Err(bad(format!(
                        "mtu {m} must be between 68 and the switch's MTU {switch_mtu}"
                    )))
                }
            },
            (Some(m), Some(_)) => match u16::try_from(m) {
                Ok(m) if m >= 68 => m,
                _ => {
                    return Err(bad(format!(
                    "mtu {m} must be between 68 and 65535 (the TAP's MTU on the host should match)"
                )))
                }
            },
        };
        Ok(Some(NetConfig {
            mac,
            mtu,
            ip,
            tap,
            offloads: offloads.unwrap_or(true),
        }))
    }

    fn vsock_config(
        &self,
        vm: &str,
        index: usize,
        base_dir: &Path,
    ) -> Result<Option<VsockConfig>, ConfigError> {
        let bad = |reason: String| ConfigError::BadVsock {
            vm: vm.to_string(),
            reason,
        };
        let (cid, socket) = match &self.vsock {
            Some(VsockSpec::Enabled(false)) => return Ok(None),
            None | Some(VsockSpec::Enabled(true)) => (None, None),
            Some(VsockSpec::Device(d)) => (d.cid, d.socket.as_ref()),
        };
        let cid = cid.unwrap_or(3 + index as u64);
        if !(virtio_vsock_device::packet::MIN_GUEST_CID
            ..=virtio_vsock_device::packet::MAX_GUEST_CID)
            .contains(&cid)
        {
            return Err(bad(format!(
                "cid {cid} is reserved or too large: guest CIDs are 3..=4294967294 (0-2 are the hypervisor, local and host)"
            )));
        }
        let socket = match socket {
            None => None,
            Some(p) => {
                let path = base_dir.join(p);
                let len = path.as_os_str().len();
                if len > virtio_vsock_device::backend::MAX_SOCKET_PATH {
                    return Err(bad(format!(
                        "socket path {} is {len} bytes; with `_<port>` appended it must fit a Unix socket address, so use at most {} bytes",
                        path.display(),
                        virtio_vsock_device::backend::MAX_SOCKET_PATH
                    )));
                }
                let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
                if let Some(dir) = dir {
                    if !dir.is_dir() {
                        return Err(bad(format!(
                            "the directory of socket {} does not exist; create it or choose another path",
                            path.display()
                        )));
                    }
                }
                if let Ok(meta) = std::fs::symlink_metadata(&path) {
                    use std::os::unix::fs::FileTypeExt;
                    if !meta.file_type().is_socket() {
                        return Err(bad(format!(
                            "socket path {} is an existing file that is not a socket; remove it or choose another path",
                            path.display()
                        )));
                    }
                }
                Some(path)
            }
        };
        Ok(Some(VsockConfig { cid, socket }))
    }

    /// Validates one VM; relative paths are resolved against `base_dir`.
    pub fn validate(&self, base_dir: &Path) -> Result<VmConfig, ConfigError> {
        self.validate_with(base_dir, 0, DEFAULT_MTU)
    }

    pub(crate) fn validate_with(
        &self,
        base_dir: &Path,
        index: usize,
        switch_mtu: u16,
    ) -> Result<VmConfig, ConfigError> {
        let name = self.name.clone();
        if !valid_name(&name) {
            return Err(ConfigError::BadName(name));
        }
        let vcpus = match u8::try_from(self.vcpus) {
            Ok(v) if v >= 1 && u32::from(v) <= MAX_VCPUS => v,
            _ => {
                return Err(ConfigError::BadVcpus {
                    vm: name,
                    got: self.vcpus,
                })
            }
        };
        let memory = size_of(&name, "memory", Some(&self.memory), 0)?;
        if memory < MIN_MEMORY {
            return Err(ConfigError::MemoryTooSmall {
                vm: name,
                got: memory / MIB,
            });
        }
        if memory % crate::layout::PAGE_SIZE != 0 {
            return Err(ConfigError::BadSize {
                vm: name,
                what: "memory",
                value: self.memory.display(),
                reason: "not a multiple of 4 KiB".to_string(),
            });
        }
        let aperture_rw = size_of(
            &name,
            "aperture_rw",
            self.aperture_rw.as_ref(),
            DEFAULT_APERTURE_RW,
        )?;
        let aperture_ro = size_of(
            &name,
            "aperture_ro",
            self.aperture_ro.as_ref(),
            DEFAULT_APERTURE_RO,
        )?;
        for (what, size, spec) in [
            ("aperture_rw", aperture_rw, &self.aperture_rw),
            ("aperture_ro", aperture_ro, &self.aperture_ro),
        ] {
            if size == 0 || size % (2 * MIB) != 0 {
                return Err(ConfigError::BadSize {
                    vm: name,
                    what,
                    value: spec.as_ref().map(SizeSpec::display).unwrap_or_default(),
                    reason: "must be a non-zero multiple of 2 MiB".to_string(),
                });
            }
        }
        let console = Console::parse(&name, self.console.as_deref().unwrap_or("stdout"), base_dir)?;
        if self.input.is_some() && self.stdin == Some(true) {
            return Err(ConfigError::InputAndStdin(name));
        }
        let import_from = match &self.import_from {
            None => None,
            Some(table) => Some(
                table
                    .iter()
                    .map(|(other, access)| match access.as_str() {
                        "rw" => Ok((other.clone(), true)),
                        "ro" => Ok((other.clone(), false)),
                        _ => Err(ConfigError::BadImportAccess {
                            vm: name.clone(),
                            other: other.clone(),
                            value: access.clone(),
                        }),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let root = self.root.as_ref().map(|r| match r {
            RootSpec::Path(path) => DiskSpec {
                path: path.clone(),
                read_only: false,
                serial: None,
            },
            RootSpec::Disk(d) => d.clone(),
        });
        let net = self.net_config(&name, index, switch_mtu)?;
        let vsock = self.vsock_config(&name, index, base_dir)?;
        let count = self.disks.len() + usize::from(root.is_some());
        if count + usize::from(net.is_some()) + usize::from(vsock.is_some()) > MAX_DISKS {
            let others: Vec<&str> = [("network", net.is_some()), ("vsock", vsock.is_some())]
                .iter()
                .filter(|(_, on)| *on)
                .map(|(what, _)| *what)
                .collect();
            let (with, or) = if others.is_empty() {
                (String::new(), String::new())
            } else {
                (
                    format!(
                        " with its {} device{}",
                        others.join(" and "),
                        if others.len() > 1 { "s" } else { "" }
                    ),
                    format!(
                        ", or drop {}",
                        others
                            .iter()
                            .map(|w| if *w == "network" {
                                "net = false"
                            } else {
                                "vsock = false"
                            })
                            .collect::<Vec<_>>()
                            .join(" / ")
                    ),
                )
            };
            return Err(ConfigError::TooManyDisks {
                vm: name,
                count,
                with,
                or,
            });
        }
        let disks = root
            .iter()
            .chain(&self.disks)
            .map(|d| d.validate(&name, base_dir))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(VmConfig {
            disks,
            root_disk: root.is_some(),
            net,
            vsock,
            hosts: None,
            vcpus,
            memory,
            kernel: base_dir.join(&self.kernel),
            initrd: self.initrd.as_ref().map(|p| base_dir.join(p)),
            cmdline: self.cmdline.clone().unwrap_or_default(),
            console,
            // Decided for all VMs together in `Config::from_specs`.
            stdin: false,
            input: self.input.as_ref().map(|p| base_dir.join(p)),
            aperture_rw,
            aperture_ro,
            import_from,
            name,
        })
    }
}

/// What no two VMs of a setup may share: a name, a writable disk, a MAC, a TAP, a vsock
/// CID or socket, an address.
fn check_distinct(vms: &[VmConfig]) -> Result<(), ConfigError> {
    let mut names = HashSet::new();
    for vm in vms {
        if !names.insert(vm.name.as_str()) {
            return Err(ConfigError::DuplicateName(vm.name.clone()));
        }
    }
    check_shared_disks(vms)?;
    let mut macs: HashMap<net_switch::Mac, &str> = HashMap::new();
    for vm in vms {
        if let Some(net) = &vm.net {
            if let Some(other) = macs.insert(net.mac, &vm.name) {
                return Err(ConfigError::DuplicateMac(
                    other.to_string(),
                    vm.name.clone(),
                    net.mac.to_string(),
                ));
            }
        }
    }
    let mut taps: HashMap<virtio_net_device::TapName, &str> = HashMap::new();
    for vm in vms {
        if let Some(tap) = vm.net.and_then(|n| n.tap) {
            if let Some(other) = taps.insert(tap, &vm.name) {
                return Err(ConfigError::BadNet {
                    vm: vm.name.clone(),
                    reason: format!(
                        "tap {tap} is VM {other}'s too; a TAP interface serves one VM: give each its own"
                    ),
                });
            }
        }
    }
    let mut cids: HashMap<u64, &str> = HashMap::new();
    let mut sockets: HashMap<&Path, &str> = HashMap::new();
    for vm in vms {
        if let Some(v) = &vm.vsock {
            if let Some(other) = cids.insert(v.cid, &vm.name) {
                return Err(ConfigError::DuplicateCid(
                    other.to_string(),
                    vm.name.clone(),
                    v.cid,
                ));
            }
            if let Some(path) = &v.socket {
                if let Some(other) = sockets.insert(path, &vm.name) {
                    return Err(ConfigError::DuplicateVsockSocket(
                        other.to_string(),
                        vm.name.clone(),
                        path.clone(),
                    ));
                }
            }
        }
    }
    let mut ips: HashMap<Ipv4Addr, &str> = HashMap::new();
    for vm in vms {
        if let Some(net) = &vm.net {
            if let Some(other) = ips.insert(net.ip, &vm.name) {
                return Err(ConfigError::BadNet {
                    vm: vm.name.clone(),
                    reason: format!(
                        "ip {} is VM {other}'s address too; give each VM its own (net.ip)",
                        net.ip
                    ),
                });
            }
        }
    }
    Ok(())
}

/// An image used writable by one disk must not be used by any other disk of the
/// setup (same VM or not); read-only uses may share.
fn check_shared_disks(vms: &[VmConfig]) -> Result<(), ConfigError> {
    let mut seen: HashMap<(u64, u64), (&str, &DiskConfig)> = HashMap::new();
    for vm in vms {
        for disk in &vm.disks {
            if let Some((first_vm, first)) = seen.get(&(disk.dev, disk.ino)) {
                if !(first.read_only && disk.read_only) {
                    let (writer, w, other, o) = if first.read_only {
                        (vm.name.as_str(), disk, *first_vm, *first)
                    } else {
                        (*first_vm, *first, vm.name.as_str(), disk)
                    };
                    let via = if o.path == w.path {
                        String::new()
                    } else {
                        format!(" (as {})", o.path.display())
                    };
                    return Err(ConfigError::SharedWritableDisk {
                        path: w.path.clone(),
                        writer: writer.to_string(),
                        other: other.to_string(),
                        via,
                    });
                }
            } else {
                seen.insert((disk.dev, disk.ino), (vm.name.as_str(), disk));
            }
        }
    }
    Ok(())
}

impl Config {
    /// Reads and validates a TOML config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let base_dir = path.parent().unwrap_or_else(|| Path::new("."));
        Self::from_toml(&text, base_dir).map_err(|e| match e {
            ConfigError::Parse { reason, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                reason,
            },
            other => other,
        })
    }

    /// Parses and validates TOML text; relative paths resolve against `base_dir`.
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        let spec: FileSpec = toml::from_str(text).map_err(|e| {
            // toml's messages may span lines; errors are reported on one.
            let message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
            let reason = match e.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!("line {line}: {message}")
                }
                None => message,
            };
            ConfigError::Parse {
                path: PathBuf::new(),
                reason,
            }
        })?;
        let mut config = Self::from_specs(spec.xpmem, spec.switch, &spec.vm, base_dir)?;
        config.processes = match spec.monitor.processes.as_deref() {
            None | Some("per-vm") => Processes::PerVm,
            Some("one") => Processes::One,
            Some(other) => {
                return Err(ConfigError::BadSetting {
                    what: "monitor.processes",
                    value: other.to_string(),
                    reason:
                        "must be \"per-vm\" (a process per VM) or \"one\" (every VM in one process)",
                })
            }
        };
        config.seccomp = match spec.monitor.seccomp.as_deref() {
            None | Some("kill") => crate::sandbox::SeccompMode::Kill,
            Some("log") => crate::sandbox::SeccompMode::Log,
            Some("off") => crate::sandbox::SeccompMode::Off,
            Some(other) => {
                return Err(ConfigError::BadSetting {
                    what: "monitor.seccomp",
                    value: other.to_string(),
                    reason: "must be \"kill\" (a forbidden system call kills the process), \"log\" or \"off\"",
                })
            }
        };
        Ok(config)
    }

    /// Validates VM specs together: unique names, one stdin owner.
    pub fn from_specs(
        xpmem: XpmemSettings,
        switch: SwitchSettings,
        specs: &[VmSpec],
        base_dir: &Path,
    ) -> Result<Self, ConfigError> {
        if specs.is_empty() {
            return Err(ConfigError::NoVms);
        }
        if xpmem.invalidate_deadline_ms == Some(0) {
            return Err(ConfigError::BadSetting {
                what: "xpmem.invalidate_deadline_ms",
                value: "0".to_string(),
                reason: "must be at least 1",
            });
        }
        let switch_mtu = match switch.mtu {
            None => DEFAULT_MTU,
            Some(m) => match u16::try_from(m) {
                Ok(m) if m >= 68 => m,
                _ => {
                    return Err(ConfigError::BadSetting {
                        what: "switch.mtu",
                        value: m.to_string(),
                        reason: "must be between 68 and 65535",
                    })
                }
            },
        };
        let mut seen = HashSet::new();
        let mut vms = Vec::with_capacity(specs.len());
        for (index, spec) in specs.iter().enumerate() {
            let vm = spec.validate_with(base_dir, index, switch_mtu)?;
            if !seen.insert(vm.name.clone()) {
                return Err(ConfigError::DuplicateName(vm.name));
            }
            vms.push(vm);
        }
        check_distinct(&vms)?;
        let mut notes = Vec::new();
        if let Some(hosts) = Self::hosts_param(&vms) {
            let longest = vms
                .iter()
                .filter(|v| v.net.is_some_and(|n| n.on_switch()))
                .map(|v| (v.cmdline_len_without_hosts(), v.name.as_str()))
                .max();
            let extra = " xpmem.hosts=".len() + hosts.len();
            match longest {
                Some((len, name)) if len + extra > MAX_GUEST_CMDLINE => notes.push(format!(
                    "host names left out of the guests' command lines: with them VM {name}'s would be {} bytes, more than {MAX_GUEST_CMDLINE}; the VMs get their addresses but cannot look each other up by name (use shorter names)",
                    len + extra
                )),
                _ => {
                    for vm in vms.iter_mut().filter(|v| v.net.is_some_and(|n| n.on_switch())) {
                        vm.hosts = Some(hosts.clone());
                    }
                }
            }
        }
        let switch = vms
            .iter()
            .any(|v| v.net.is_some_and(|n| n.on_switch()))
            .then(|| SwitchSetup {
                mtu: switch_mtu,
                socket: switch.socket.as_ref().map(|p| base_dir.join(p)),
            });
        for vm in &vms {
            for (other, _) in vm.import_from.iter().flatten() {
                if !seen.contains(other) {
                    return Err(ConfigError::UnknownImport {
                        vm: vm.name.clone(),
                        other: other.clone(),
                    });
                }
            }
        }

        // stdin goes to the VM that asks for it, or else to the only VM on stdout.
        let explicit: Vec<usize> = specs
            .iter()
            .enumerate()
            .filter(|(_, s)| s.stdin == Some(true))
            .map(|(i, _)| i)
            .collect();
        match explicit.as_slice() {
            [] => {
                let on_stdout: Vec<usize> = vms
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| v.console == Console::Stdout)
                    .map(|(i, _)| i)
                    .collect();
                if let [only] = on_stdout.as_slice() {
                    if specs[*only].stdin != Some(false) && specs[*only].input.is_none() {
                        vms[*only].stdin = true;
                    }
                }
            }
            [one] => vms[*one].stdin = true,
            [a, b, ..] => {
                return Err(ConfigError::TwoStdinVms(
                    vms[*a].name.clone(),
                    vms[*b].name.clone(),
                ))
            }
        }
        Ok(Config {
            xpmem,
            processes: Processes::default(),
            seccomp: crate::sandbox::SeccompMode::default(),
            switch,
            vms,
            notes,
        })
    }

    /// The MTU of the setup's switch (the default when it has none).
    pub fn switch_mtu(&self) -> u16 {
        self.switch.as_ref().map_or(DEFAULT_MTU, |s| s.mtu)
    }

    /// VM `spec` (paths relative to `base_dir`) joining a running setup as its VM number
    /// `index + 1`: its configuration as if it had been that entry of the config file
    /// (CID, address and MAC from `index`). The joining process and the broker both call
    /// this with the broker's `index` and `switch_mtu`, so they get the same VM; the
    /// broker then checks it with [`Config::admit`].
    pub fn joining_vm(
        spec: &VmSpec,
        base_dir: &Path,
        index: usize,
        switch_mtu: u16,
    ) -> Result<VmConfig, ConfigError> {
        let mut vm = spec.validate_with(base_dir, index, switch_mtu)?;
        vm.stdin =
            vm.console == Console::Stdout && spec.stdin != Some(false) && spec.input.is_none();
        Ok(vm)
    }

    /// Checks that `vm` shares nothing it may not with the VMs running now, `live`
    /// ([`check_distinct`]); returns its guest's `xpmem.hosts=` (the names of the live
    /// VMs and its own, when it is on the switch).
    pub fn admit(vm: &VmConfig, live: &[VmConfig]) -> Result<Option<String>, ConfigError> {
        let mut all: Vec<VmConfig> = live.to_vec();
        all.push(vm.clone());
        check_distinct(&all)?;
        Ok(if vm.net.is_some_and(|n| n.on_switch()) {
            Self::hosts_param(&all)
        } else {
            None
        })
    }

    /// The `xpmem.hosts=` value: one entry per VM of the setup in config
    /// order, separated by commas; an entry is the VM's name, followed by
    /// `:C.D` when its address is 169.254.C.D but not the one of its index
    /// ([`link_local_ipv4`]); a VM without a network device, or with its
    /// device on a TAP, has an empty entry (so positions stay indexes).
    /// `None` when no VM is on the switch. Example: `a,b,,d:7.1` (a is 169.254.1.1, b 169.254.1.2, the
    /// third VM has no network device, d is 169.254.7.1).
    pub fn hosts_param(vms: &[VmConfig]) -> Option<String> {
        if !vms.iter().any(|v| v.net.is_some_and(|n| n.on_switch())) {
            return None;
        }
        let entries: Vec<String> = vms
            .iter()
            .enumerate()
            .map(|(i, vm)| match &vm.net {
                None => String::new(),
                Some(net) if !net.on_switch() => String::new(),
                Some(net) if link_local_ipv4(i) == Some(net.ip) => vm.name.clone(),
                Some(net) => {
                    let [_, _, c, d] = net.ip.octets();
                    format!("{}:{c}.{d}", vm.name)
                }
            })
            .collect();
        let mut text = entries.join(",");
        // Trailing empty entries say nothing.
        while text.ends_with(',') {
            text.pop();
        }
        Some(text)
    }

    /// Number of VMs whose console is stdout.
    pub fn stdout_consoles(&self) -> usize {
        self.vms
            .iter()
            .filter(|v| v.console == Console::Stdout)
            .count()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;

    const TWO_VMS: &str = r#"
        [xpmem]
        invalidate_deadline_ms = 250

        [[vm]]
        name = "a"
        vcpus = 2
        memory = "1G"
        kernel = "bzImage"
        initrd = "/abs/initrd.gz"
        cmdline = "quiet"

        [[vm]]
        name = "b"
        memory = 512
        kernel = "bzImage"
        console = "file:b.log"
        aperture_rw = "64M"
        aperture_ro = "2M"
    "#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("/cfg"))
    }

    #[test]
    fn parses_two_vms() {
        let c = parse(TWO_VMS).unwrap();
        assert_eq!(c.xpmem.invalidate_deadline_ms, Some(250));
        assert_eq!(c.vms.len(), 2);
        let a = &c.vms[0];
        assert_eq!(a.vcpus, 2);
        assert_eq!(a.memory, 1 << 30);
        assert_eq!(a.kernel, PathBuf::from("/cfg/bzImage"));
        assert_eq!(a.initrd, Some(PathBuf::from("/abs/initrd.gz")));
        assert_eq!(a.console, Console::Stdout);
        assert_eq!(
            a.kernel_cmdline(),
            format!("{DEFAULT_CMDLINE} xpmem.ip=169.254.1.1/16 xpmem.hosts=a,b quiet")
        );
        assert_eq!(a.aperture_rw, DEFAULT_APERTURE_RW);
        assert_eq!(a.aperture_ro, DEFAULT_APERTURE_RO);
        // Only "a" is on stdout, so it gets the terminal.
        assert!(a.stdin);
        let b = &c.vms[1];
        assert_eq!(b.vcpus, 1);
        assert_eq!(b.memory, 512 << 20);
        assert_eq!(b.console, Console::File(PathBuf::from("/cfg/b.log")));
        assert_eq!(
            b.kernel_cmdline(),
            format!("{DEFAULT_CMDLINE} xpmem.ip=169.254.1.2/16 xpmem.hosts=a,b")
        );
        assert_eq!((b.aperture_rw, b.aperture_ro), (64 << 20, 2 << 20));
        assert!(!b.stdin);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Ok(1 << 30));
        assert_eq!(parse_size("1024M"), Ok(1 << 30));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("4096k"), Ok(4 << 20));
        assert_eq!(parse_size("4096B"), Ok(4096));
        assert!(parse_size("").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("12T").is_err());
        assert!(parse_size("-5M").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("99999999999G").is_err());
    }

    fn one_vm(extra: &str) -> String {
        format!("[[vm]]\nname = \"a\"\nmemory = \"256M\"\nkernel = \"k\"\n{extra}\n")
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = parse(&one_vm("vcpu = 2")).unwrap_err();
        assert!(
            matches!(&e, ConfigError::Parse { reason, .. } if reason.contains("vcpu")),
            "{e}"
        );
        let e = parse(&format!("bogus = 1\n{}", one_vm(""))).unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }));
        let e = parse(&format!("[xpmem]\ndeadline = 3\n{}", one_vm(""))).unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }));
    }

    #[test]
    fn missing_required_keys_and_bad_types_are_errors() {
        let e = parse("[[vm]]\nname = \"a\"\nkernel = \"k\"\n").unwrap_err();
        assert!(
            matches!(&e, ConfigError::Parse { reason, .. } if reason.contains("memory")),
            "{e}"
        );
        let e = parse(&one_vm("vcpus = \"two\"")).unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }));
        assert!(matches!(parse("[[vm]\n"), Err(ConfigError::Parse { .. })));
    }

    #[test]
    fn no_vms() {
        assert_eq!(parse(""), Err(ConfigError::NoVms));
        assert_eq!(parse("[xpmem]\n"), Err(ConfigError::NoVms));
    }

    #[test]
    fn vcpu_limits() {
        for bad in [0u64, 255, 1000] {
            assert_eq!(
                parse(&one_vm(&format!("vcpus = {bad}"))),
                Err(ConfigError::BadVcpus {
                    vm: "a".into(),
                    got: bad
                })
            );
        }
        assert!(parse(&one_vm("vcpus = 254")).is_ok());
    }

    #[test]
    fn memory_limits() {
        let text = "[[vm]]\nname = \"a\"\nmemory = \"32M\"\nkernel = \"k\"\n";
        assert_eq!(
            parse(text),
            Err(ConfigError::MemoryTooSmall {
                vm: "a".into(),
                got: 32
            })
        );
        let text = "[[vm]]\nname = \"a\"\nmemory = \"65537K\"\nkernel = \"k\"\n";
        assert!(matches!(
            parse(text),
            Err(ConfigError::BadSize { what: "memory", .. })
        ));
        let text = "[[vm]]\nname = \"a\"\nmemory = \"lots\"\nkernel = \"k\"\n";
        assert!(matches!(
            parse(text),
            Err(ConfigError::BadSize { what: "memory", .. })
        ));
    }

    #[test]
    fn aperture_must_be_2m_aligned_and_non_empty() {
        assert!(matches!(
            parse(&one_vm("aperture_ro = 0")),
            Err(ConfigError::BadSize {
                what: "aperture_ro",
                ..
            })
        ));
        assert!(matches!(
            parse(&one_vm("aperture_rw = \"3M\"")),
            Err(ConfigError::BadSize {
                what: "aperture_rw",
                ..
            })
        ));
    }

    #[test]
    fn names() {
        for bad in ["", "has space", "a/b", &"x".repeat(33)] {
            let text = format!("[[vm]]\nname = \"{bad}\"\nmemory = 256\nkernel = \"k\"\n");
            assert_eq!(parse(&text), Err(ConfigError::BadName(bad.to_string())));
        }
        let dup = format!("{}{}", one_vm(""), one_vm(""));
        assert_eq!(parse(&dup), Err(ConfigError::DuplicateName("a".into())));
    }

    #[test]
    fn consoles() {
        assert!(matches!(
            parse(&one_vm("console = \"serial\"")),
            Err(ConfigError::BadConsole { .. })
        ));
        assert!(matches!(
            parse(&one_vm("console = \"file:\"")),
            Err(ConfigError::BadConsole { .. })
        ));
    }

    #[test]
    fn stdin_owner() {
        // Two VMs on stdout: nobody reads stdin unless asked.
        let two = format!(
            "{}[[vm]]\nname = \"b\"\nmemory = 256\nkernel = \"k\"\n",
            one_vm("")
        );
        let c = parse(&two).unwrap();
        assert!(c.vms.iter().all(|v| !v.stdin));
        assert_eq!(c.stdout_consoles(), 2);

        let c = parse(&format!(
            "{}[[vm]]\nname = \"b\"\nmemory = 256\nkernel = \"k\"\nstdin = true\n",
            one_vm("")
        ))
        .unwrap();
        assert!(!c.vms[0].stdin && c.vms[1].stdin);

        assert_eq!(
            parse(&format!(
                "{}[[vm]]\nname = \"b\"\nmemory = 256\nkernel = \"k\"\nstdin = true\n",
                one_vm("stdin = true")
            )),
            Err(ConfigError::TwoStdinVms("a".into(), "b".into()))
        );
        // A single stdout VM can opt out.
        assert!(!parse(&one_vm("stdin = false")).unwrap().vms[0].stdin);
    }

    #[test]
    fn input_files() {
        // Every VM can read its own file or FIFO; relative paths follow the config file.
        let c = parse(&format!(
            "{}[[vm]]\nname = \"b\"\nmemory = 256\nkernel = \"k\"\ninput = \"/run/b.fifo\"\n",
            one_vm("input = \"a.fifo\"")
        ))
        .unwrap();
        assert_eq!(c.vms[0].input, Some(PathBuf::from("/cfg/a.fifo")));
        assert_eq!(c.vms[1].input, Some(PathBuf::from("/run/b.fifo")));
        assert!(c.vms.iter().all(|v| !v.stdin));
        // The only stdout VM does not take stdin when it has an input file.
        let one = parse(&one_vm("input = \"a.fifo\"")).unwrap();
        assert!(!one.vms[0].stdin);
        assert_eq!(
            parse(&one_vm("input = \"a.fifo\"\nstdin = true")),
            Err(ConfigError::InputAndStdin("a".into()))
        );
    }

    #[test]
    fn shipped_example_config_is_valid() {
        let text = include_str!("../configs/two-vms.toml");
        let c = Config::from_toml(text, Path::new("/x")).unwrap();
        assert_eq!(c.vms.len(), 2);
        assert!(c.vms[0].stdin);
        assert_eq!(
            c.vms[1].console,
            Console::File(PathBuf::from("/x/vm-b.console"))
        );
        assert_eq!(c.xpmem.invalidate_deadline_ms, Some(1000));
    }

    #[test]
    fn zero_deadline_is_rejected() {
        assert!(matches!(
            parse(&format!(
                "[xpmem]\ninvalidate_deadline_ms = 0\n{}",
                one_vm("")
            )),
            Err(ConfigError::BadSetting { .. })
        ));
    }

    fn vms_with(b_extra: &str, c_extra: &str) -> String {
        format!(
            "{}[[vm]]\nname = \"b\"\nmemory = \"256M\"\nkernel = \"k\"\n{b_extra}\n\
             [[vm]]\nname = \"c\"\nmemory = \"256M\"\nkernel = \"k\"\n{c_extra}\n",
            one_vm("")
        )
    }

    #[test]
    fn import_from_names_vms_of_the_setup_with_rw_or_ro() {
        let c = parse(&vms_with(
            "import_from = { a = \"rw\", c = \"ro\" }",
            "import_from = {}",
        ))
        .unwrap();
        assert_eq!(c.vms[0].import_from, None);
        assert_eq!(
            c.vms[1].import_from,
            Some(vec![("a".to_string(), true), ("c".to_string(), false)])
        );
        assert_eq!(c.vms[2].import_from, Some(vec![]));
        assert_eq!(
            parse(&vms_with("import_from = { x = \"rw\" }", "")),
            Err(ConfigError::UnknownImport {
                vm: "b".into(),
                other: "x".into()
            })
        );
        let e = parse(&vms_with("", "import_from = { a = \"write\" }")).unwrap_err();
        assert_eq!(
            e,
            ConfigError::BadImportAccess {
                vm: "c".into(),
                other: "a".into(),
                value: "write".into()
            }
        );
        assert!(e.to_string().contains("use \"rw\""), "{e}");
    }

    /// A scratch directory with image files, removed on drop.
    struct Images(PathBuf);

    impl Images {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "xpmem-vmm-config-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Images(dir)
        }
        fn image(&self, name: &str, size: u64) -> PathBuf {
            let path = self.0.join(name);
            std::fs::File::create(&path).unwrap().set_len(size).unwrap();
            path
        }
        fn parse(&self, text: &str) -> Result<Config, ConfigError> {
            Config::from_toml(text, &self.0)
        }
    }

    impl Drop for Images {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn vm(name: &str, extra: &str) -> String {
        format!("[[vm]]\nname = \"{name}\"\nmemory = 256\nkernel = \"k\"\n{extra}\n")
    }

    #[test]
    fn root_and_disks_in_guest_order_with_the_root_on_the_command_line() {
        let dir = Images::new("disks");
        dir.image("root.img", 1 << 30);
        let data = dir.image("data.img", 4096);
        let text = vm(
            "a",
            &format!(
                "root = \"root.img\"\ncmdline = \"quiet\"\ndisks = [{{ path = \"{}\", read_only = true, serial = \"data-1\" }}]",
                data.display()
            ),
        );
        let c = dir.parse(&text).unwrap();
        let a = &c.vms[0];
        assert!(a.root_disk);
        assert_eq!(a.disks.len(), 2);
        assert_eq!(a.disks[0].path, dir.0.join("root.img"));
        assert_eq!((a.disks[0].read_only, a.disks[0].size), (false, 1 << 30));
        assert_eq!(a.disks[0].serial, None);
        assert_eq!(a.disks[1].path, data);
        assert!(a.disks[1].read_only);
        assert_eq!(a.disks[1].serial.as_deref(), Some("data-1"));
        assert_eq!(
            a.kernel_cmdline(),
            format!(
                "{DEFAULT_CMDLINE} root=/dev/vda rw xpmem.ip=169.254.1.1/16 xpmem.hosts=a quiet"
            )
        );

        // A read-only root, as a table; without root, disks add nothing to the cmdline.
        let text = format!(
            "{}{}",
            vm(
                "a",
                "root = { path = \"root.img\", read_only = true, serial = \"r\" }\nnet = false"
            ),
            vm(
                "b",
                "disks = [{ path = \"root.img\", read_only = true }]\nnet = false"
            )
        );
        let c = dir.parse(&text).unwrap();
        assert_eq!(
            c.vms[0].kernel_cmdline(),
            format!("{DEFAULT_CMDLINE} root=/dev/vda ro")
        );
        assert!(!c.vms[1].root_disk);
        assert_eq!(c.vms[1].kernel_cmdline(), DEFAULT_CMDLINE);
    }

    fn disk_error(dir: &Images, text: &str) -> String {
        let e = dir.parse(text).unwrap_err();
        let msg = e.to_string();
        assert!(!msg.contains('\n'), "one line: {msg}");
        msg
    }

    #[test]
    fn each_bad_disk_is_one_clear_error() {
        let dir = Images::new("bad-disks");
        dir.image("ok.img", 1 << 20);
        dir.image("odd.img", 1000);
        dir.image("empty.img", 0);
        let ro = dir.image("ro.img", 4096);
        std::fs::set_permissions(&ro, std::os::unix::fs::PermissionsExt::from_mode(0o444)).unwrap();
        std::fs::create_dir(dir.0.join("adir")).unwrap();
        for (extra, needle) in [
            ("root = \"nope.img\"", "nope.img does not exist"),
            ("root = \"adir\"", "is a directory"),
            ("root = \"odd.img\"", "is 1000 bytes, not a multiple of 512"),
            ("root = \"empty.img\"", "is empty"),
            (
                "root = \"ro.img\"",
                "is read-only (mode 444) but asked to be writable",
            ),
            (
                "disks = [{ path = \"ok.img\", serial = \"123456789012345678901\" }]",
                "longer than 20 bytes",
            ),
            (
                "disks = [{ path = \"ok.img\", serial = \"a\\tb\" }]",
                "control character",
            ),
        ] {
            let msg = disk_error(&dir, &vm("a", extra));
            assert!(msg.starts_with("VM a: "), "{msg}");
            assert!(msg.contains(needle), "{needle:?} in {msg}");
        }
        // A read-only file is fine as a read-only disk.
        assert!(dir
            .parse(&vm("a", "root = { path = \"ro.img\", read_only = true }"))
            .is_ok());
        // Unknown keys in a disk table.
        let e = dir
            .parse(&vm("a", "disks = [{ path = \"ok.img\", readonly = true }]"))
            .unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }), "{e}");
        // Too many disks.
        let many: Vec<String> = (0..=MAX_DISKS)
            .map(|_| "{ path = \"ok.img\", read_only = true }".to_string())
            .collect();
        let e = dir
            .parse(&vm("a", &format!("disks = [{}]", many.join(", "))))
            .unwrap_err();
        assert!(matches!(e, ConfigError::TooManyDisks { count, .. } if count == MAX_DISKS + 1));
        // 16 disks fit only without one of the default devices.
        let sixteen: Vec<String> = (0..MAX_DISKS - 1)
            .map(|i| {
                format!(
                    "{{ path = \"{}\" }}",
                    dir.image(&format!("s{i}.img"), 512).display()
                )
            })
            .collect();
        let e = dir
            .parse(&vm("a", &format!("disks = [{}]", sixteen.join(", "))))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("16 disks with its network and vsock devices")
                && e.contains("or drop net = false / vsock = false"),
            "{e}"
        );
        assert!(dir
            .parse(&vm(
                "a",
                &format!("disks = [{}]\nvsock = false", sixteen.join(", "))
            ))
            .is_ok());
    }

    #[test]
    fn a_writable_image_belongs_to_one_vm_whatever_the_path() {
        let dir = Images::new("shared");
        let img = dir.image("root.img", 1 << 20);
        std::fs::hard_link(&img, dir.0.join("link.img")).unwrap();
        std::os::unix::fs::symlink(&img, dir.0.join("sym.img")).unwrap();
        // Read-only everywhere: fine.
        let ro = "disks = [{ path = \"root.img\", read_only = true }]";
        assert!(dir
            .parse(&format!("{}{}", vm("a", ro), vm("b", ro)))
            .is_ok());
        for (a, b) in [
            ("root = \"root.img\"", "root = \"root.img\""),
            ("root = \"root.img\"", "root = \"link.img\""),
            ("root = \"sym.img\"", ro),
            (ro, "disks = [{ path = \"link.img\" }]"),
        ] {
            let msg = disk_error(&dir, &format!("{}{}", vm("a", a), vm("b", b)));
            assert!(
                msg.contains("a writable image belongs to one VM only"),
                "{msg}"
            );
            assert!(msg.contains("VM a") && msg.contains("VM b"), "{msg}");
        }
        let msg = disk_error(
            &dir,
            &format!(
                "{}{}",
                vm("a", "root = \"root.img\""),
                vm("b", "root = \"link.img\"")
            ),
        );
        assert!(msg.contains("(as "), "names the other path: {msg}");
        // Twice in one VM.
        let msg = disk_error(
            &dir,
            &vm(
                "a",
                "root = \"root.img\"\ndisks = [{ path = \"sym.img\", read_only = true }]",
            ),
        );
        assert!(
            msg.contains("writable in VM a and also used by VM a"),
            "{msg}"
        );
    }

    #[test]
    fn every_vm_is_on_the_switch_by_default_with_a_mac_from_its_name() {
        let c = parse(TWO_VMS).unwrap();
        let sw = c.switch.clone().unwrap();
        assert_eq!((sw.mtu, sw.socket), (DEFAULT_MTU, None));
        let (a, b) = (c.vms[0].net.unwrap(), c.vms[1].net.unwrap());
        assert_eq!(a.mac, virtio_net_device::mac_from_name("a"));
        assert_eq!(b.mac, virtio_net_device::mac_from_name("b"));
        assert_eq!((a.mtu, b.mtu), (1500, 1500));
    }

    #[test]
    fn addresses_come_from_the_index_and_names_go_on_every_command_line() {
        assert_eq!(link_local_ipv4(0), Some(Ipv4Addr::new(169, 254, 1, 1)));
        assert_eq!(link_local_ipv4(253), Some(Ipv4Addr::new(169, 254, 1, 254)));
        assert_eq!(link_local_ipv4(254), Some(Ipv4Addr::new(169, 254, 2, 1)));
        assert_eq!(
            link_local_ipv4(MAX_INDEXED_ADDRESSES - 1),
            Some(Ipv4Addr::new(169, 254, 254, 254))
        );
        assert_eq!(link_local_ipv4(MAX_INDEXED_ADDRESSES), None);
        // Every index gets its own usable address.
        let all: HashSet<Ipv4Addr> = (0..MAX_INDEXED_ADDRESSES)
            .map(|i| link_local_ipv4(i).unwrap())
            .collect();
        assert_eq!(all.len(), MAX_INDEXED_ADDRESSES);
        assert!(all.iter().all(|ip| usable_link_local(*ip)));

        let text = format!(
            "{}{}{}{}",
            vm("a", "cmdline = \"quiet\""),
            vm("b", ""),
            vm("c", "net = false"),
            vm("d", "net = { ip = \"169.254.7.1\" }")
        );
        let c = parse(&text).unwrap();
        let ips: Vec<Option<String>> = c
            .vms
            .iter()
            .map(|v| v.net.map(|n| n.ip.to_string()))
            .collect();
        assert_eq!(
            ips,
            [
                Some("169.254.1.1".into()),
                Some("169.254.1.2".into()),
                None,
                Some("169.254.7.1".into())
            ]
        );
        assert_eq!(
            c.vms[0].kernel_cmdline(),
            format!("{DEFAULT_CMDLINE} xpmem.ip=169.254.1.1/16 xpmem.hosts=a,b,,d:7.1 quiet")
        );
        assert!(c.vms[3]
            .kernel_cmdline()
            .ends_with(" xpmem.ip=169.254.7.1/16 xpmem.hosts=a,b,,d:7.1"));
        // No network device: neither address nor names.
        assert_eq!(c.vms[2].kernel_cmdline(), DEFAULT_CMDLINE);
        assert!(c.notes.is_empty());
    }

    #[test]
    fn host_names_that_do_not_fit_are_left_out_with_a_note() {
        let text: String = (0..200)
            .map(|i| vm(&format!("vm-with-a-long-name-{i:03}"), ""))
            .collect();
        let c = parse(&text).unwrap();
        assert_eq!(c.vms[199].net.unwrap().ip, Ipv4Addr::new(169, 254, 1, 200));
        assert!(c.vms.iter().all(|v| v.hosts.is_none()));
        assert!(c
            .vms
            .iter()
            .all(|v| v.kernel_cmdline().len() <= MAX_GUEST_CMDLINE));
        assert_eq!(c.notes.len(), 1);
        assert!(c.notes[0].contains("host names left out"), "{:?}", c.notes);
        // 300 VMs with short names fit.
        let text: String = (0..300).map(|i| vm(&format!("v{i}"), "")).collect();
        let c = parse(&text).unwrap();
        assert!(c.notes.is_empty(), "{:?}", c.notes);
        let line = c.vms[299].kernel_cmdline();
        assert!(line.contains(" xpmem.ip=169.254.2.46/16 xpmem.hosts=v0,v1,"));
        assert!(line.len() <= MAX_GUEST_CMDLINE);
    }

    #[test]
    fn bad_or_shared_addresses_are_one_clear_error() {
        let err = |text: String| parse(&text).unwrap_err().to_string();
        for bad in [
            "127.0.0.1",
            "169.254.0.5",
            "169.254.255.1",
            "169.254.3.0",
            "169.254.3.255",
            "x",
        ] {
            let e = err(vm("a", &format!("net = {{ ip = \"{bad}\" }}")));
            assert!(e.contains("not an IPv4 link-local host address"), "{e}");
        }
        let e = err(format!(
            "{}{}",
            vm("a", ""),
            vm("b", "net = { ip = \"169.254.1.1\" }")
        ));
        assert!(e.contains("ip 169.254.1.1 is VM a's address too"), "{e}");
    }

    #[test]
    fn net_settings_and_the_switch_table() {
        let text = format!(
            "[switch]\nmtu = 9000\nsocket = \"sw.sock\"\n{}{}",
            vm("a", "net = { mac = \"02:00:00:00:00:0A\", mtu = 4000 }"),
            vm("b", "net = false")
        );
        let c = parse(&text).unwrap();
        assert_eq!(
            c.switch,
            Some(SwitchSetup {
                mtu: 9000,
                socket: Some(PathBuf::from("/cfg/sw.sock"))
            })
        );
        let a = c.vms[0].net.unwrap();
        assert_eq!(
            (a.mac.to_string().as_str(), a.mtu),
            ("02:00:00:00:00:0a", 4000)
        );
        assert_eq!(c.vms[1].net, None);
        // Nobody on the switch: no switch.
        let none = format!("{}{}", vm("a", "net = false"), vm("b", "net = false"));
        assert_eq!(parse(&none).unwrap().switch, None);
    }

    #[test]
    fn each_bad_net_setting_is_one_clear_error() {
        let err = |text: String| parse(&text).unwrap_err().to_string();
        let e = err(vm("a", "net = { mac = \"02:00:00:00:00\" }"));
        assert!(
            e.contains("VM a: net: mac \"02:00:00:00:00\" is not six hex pairs"),
            "{e}"
        );
        let e = err(vm("a", "net = { mac = \"01:00:5e:00:00:01\" }"));
        assert!(e.contains("not a unicast address"), "{e}");
        let e = err(vm("a", "net = { mtu = 9000 }"));
        assert!(
            e.contains("mtu 9000 must be between 68 and the switch's MTU 1500"),
            "{e}"
        );
        let e = err(vm("a", "net = { mtu = 10 }"));
        assert!(e.contains("mtu 10"), "{e}");
        let e = err(format!(
            "{}{}",
            vm("a", "net = { mac = \"02:00:00:00:00:01\" }"),
            vm("b", "net = { mac = \"02:00:00:00:00:01\" }")
        ));
        assert!(
            e.contains("VMs a and b have the same MAC address 02:00:00:00:00:01"),
            "{e}"
        );
        let e = err(format!("[switch]\nmtu = 70000\n{}", vm("a", "")));
        assert!(e.contains("switch.mtu 70000"), "{e}");
        let e = err(vm("a", "net = { speed = 10 }"));
        assert!(e.contains("invalid config file"), "{e}");
        let c = parse(&vm("a", "net = { offloads = false }")).unwrap();
        assert!(!c.vms[0].net.unwrap().offloads);
        let e = err(vm("a", "net = { offloads = \"no\" }"));
        assert!(e.contains("invalid config file"), "{e}");
        for e in [
            err(vm("a", "net = { mac = \"02:00:00:00:00\" }")),
            err(format!("[switch]\nmtu = 70000\n{}", vm("a", ""))),
        ] {
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn a_vm_on_a_tap_is_not_on_the_switch_and_gets_no_host_names() {
        let text = format!(
            "{}{}{}",
            vm("a", ""),
            vm(
                "t",
                "net = { tap = \"xtap0\", ip = \"169.254.100.2\", mtu = 9000 }"
            ),
            vm("b", "")
        );
        let c = parse(&text).unwrap();
        let t = c.vms[1].net.unwrap();
        assert_eq!(t.tap.map(|n| n.to_string()).as_deref(), Some("xtap0"));
        assert_eq!((t.mtu, t.ip.to_string().as_str()), (9000, "169.254.100.2"));
        assert!(!t.on_switch() && c.vms[0].net.unwrap().on_switch());
        assert!(
            t.offloads && c.vms[0].net.unwrap().offloads,
            "offloads by default"
        );
        assert_eq!(c.vms[0].hosts.as_deref(), Some("a,,b"));
        assert_eq!(c.vms[1].hosts, None);
        assert!(c.vms[1]
            .kernel_cmdline()
            .contains("xpmem.ip=169.254.100.2/16"));
        assert!(c.switch.is_some());
        // Only TAP VMs: no switch, no host names; the MTU defaults to 1500.
        let c = parse(&vm("t", "net = { tap = \"xtap0\" }")).unwrap();
        assert_eq!((c.switch.clone(), c.vms[0].hosts.clone()), (None, None));
        assert_eq!(c.vms[0].net.unwrap().mtu, DEFAULT_MTU);
    }

    #[test]
    fn bad_tap_settings_are_one_clear_line() {
        let err = |text: String| parse(&text).unwrap_err().to_string();
        let e = err(vm("a", "net = { tap = \"abcdefghijklmnop\" }"));
        assert!(
            e.contains(
                "VM a: net: tap: TAP name \"abcdefghijklmnop\" is empty or longer than 15 bytes"
            ),
            "{e}"
        );
        let e = err(vm("a", "net = { tap = \"tap%d\" }"));
        assert!(
            e.contains("characters an interface name cannot have"),
            "{e}"
        );
        let e = err(vm("a", "net = { tap = \"\" }"));
        assert!(e.contains("is empty or longer"), "{e}");
        let e = err(vm("a", "net = { tap = \"x\", mtu = 67 }"));
        assert!(e.contains("mtu 67 must be between 68 and 65535"), "{e}");
        let e = err(format!(
            "{}{}",
            vm("a", "net = { tap = \"xtap0\" }"),
            vm("b", "net = { tap = \"xtap0\" }")
        ));
        assert!(
            e.contains("VM b: net: tap xtap0 is VM a's too; a TAP interface serves one VM"),
            "{e}"
        );
        for e in [
            err(vm("a", "net = { tap = \"a b\" }")),
            err(vm("a", "net = { tap = 5 }")),
        ] {
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn a_joining_vm_is_configured_as_the_next_vm_number_and_must_share_nothing() {
        let live = Config::from_toml(
            &format!("{}{}", vm("a", ""), vm("b", "")),
            Path::new("/cfg"),
        )
        .unwrap()
        .vms;
        let spec = |name: &str| {
            crate::cli::parse_vm_spec(
                format!("--name {name} --memory 256M --kernel bz")
                    .split_whitespace()
                    .map(String::from),
            )
            .unwrap()
        };
        // VM number 4 (a third VM left before): CID 3 + 3, address 169.254.1.4.
        let j = Config::joining_vm(&spec("j"), Path::new("/home/u"), 3, DEFAULT_MTU).unwrap();
        assert_eq!(j.vsock.as_ref().map(|v| v.cid), Some(6));
        assert_eq!(j.net.map(|n| n.ip), link_local_ipv4(3));
        assert_eq!(j.kernel, PathBuf::from("/home/u/bz"));
        let hosts = Config::admit(&j, &live).unwrap();
        // a and b at their index addresses; j is third in the list, so its address is
        // spelled out.
        assert_eq!(hosts.as_deref(), Some("a,b,j:1.4"));
        // A name, a CID or an address that a live VM has is refused.
        let dup = Config::joining_vm(&spec("a"), Path::new("/"), 3, DEFAULT_MTU).unwrap();
        assert_eq!(
            Config::admit(&dup, &live).unwrap_err(),
            ConfigError::DuplicateName("a".into())
        );
        let same_cid = Config::joining_vm(&spec("k"), Path::new("/"), 1, DEFAULT_MTU).unwrap();
        let e = Config::admit(&same_cid, &live).unwrap_err().to_string();
        assert!(e.contains("same vsock CID 4"), "{e}");
    }

    #[test]
    fn every_vm_has_vsock_by_default_with_cid_3_plus_index() {
        let c = parse(&format!(
            "{}{}{}",
            vm("a", ""),
            vm("b", "vsock = false"),
            vm("c", "vsock = { cid = 77, socket = \"/tmp/c.vsock\" }")
        ))
        .unwrap();
        assert_eq!(
            c.vms[0].vsock,
            Some(VsockConfig {
                cid: 3,
                socket: None
            })
        );
        assert_eq!(c.vms[1].vsock, None);
        assert_eq!(
            c.vms[2].vsock,
            Some(VsockConfig {
                cid: 77,
                socket: Some(PathBuf::from("/tmp/c.vsock"))
            })
        );
        // Relative sockets resolve against the config's directory.
        let c = Config::from_toml(
            &vm("a", "vsock = { socket = \"a.vsock\" }"),
            Path::new("/tmp"),
        )
        .unwrap();
        assert_eq!(
            c.vms[0].vsock.as_ref().unwrap().socket,
            Some(PathBuf::from("/tmp/a.vsock"))
        );
    }

    #[test]
    fn each_bad_vsock_setting_is_one_clear_error() {
        let err = |text: String| parse(&text).unwrap_err().to_string();
        for cid in [0u64, 1, 2, u64::from(u32::MAX), 1 << 40] {
            let e = err(vm("a", &format!("vsock = {{ cid = {cid} }}")));
            assert!(
                e.contains(&format!("VM a: vsock: cid {cid} is reserved or too large")),
                "{e}"
            );
        }
        let e = err(format!("{}{}", vm("a", ""), vm("b", "vsock = { cid = 3 }")));
        assert_eq!(
            e,
            "VMs a and b have the same vsock CID 3; give each VM its own (vsock.cid)"
        );
        let e = err(format!(
            "{}{}",
            vm("a", "vsock = { socket = \"/tmp/x.vsock\" }"),
            vm("b", "vsock = { socket = \"/tmp/x.vsock\" }")
        ));
        assert!(
            e.contains("VMs a and b use the same vsock socket /tmp/x.vsock"),
            "{e}"
        );
        let long = format!("/tmp/{}", "s".repeat(100));
        let e = err(vm("a", &format!("vsock = {{ socket = \"{long}\" }}")));
        assert!(e.contains("must fit a Unix socket address"), "{e}");
        let e = err(vm("a", "vsock = { socket = \"/nonexistent-dir/a.vsock\" }"));
        assert!(e.contains("does not exist; create it"), "{e}");
        let e = err(vm("a", "vsock = { socket = \"/etc/passwd\" }"));
        assert!(
            e.contains("is an existing file that is not a socket"),
            "{e}"
        );
        // An unknown key names the line (as for net).
        let e = err(vm("a", "vsock = { port = 1 }"));
        assert!(
            e.contains("invalid config file") && e.contains("line 5"),
            "{e}"
        );
        assert!(!e.contains('\n'), "one line: {e}");
    }

    #[test]
    fn monitor_settings_default_to_per_vm_processes_with_seccomp() {
        let vm = "[[vm]]\nname = \"a\"\nmemory = \"256M\"\nkernel = \"k\"\n";
        let c = Config::from_toml(vm, Path::new("/")).unwrap();
        assert_eq!(c.processes, Processes::PerVm);
        assert_eq!(c.seccomp, crate::sandbox::SeccompMode::Kill);
        let text = format!("[monitor]\nprocesses = \"one\"\nseccomp = \"log\"\n{vm}");
        let c = Config::from_toml(&text, Path::new("/")).unwrap();
        assert_eq!(c.processes, Processes::One);
        assert_eq!(c.seccomp, crate::sandbox::SeccompMode::Log);
        for (key, value) in [("processes", "two"), ("seccomp", "maybe")] {
            let text = format!("[monitor]\n{key} = \"{value}\"\n{vm}");
            let e = Config::from_toml(&text, Path::new("/"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("monitor.{key}")) && e.contains(value),
                "{e}"
            );
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }
}
