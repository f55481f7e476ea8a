//! Command-line parsing: either `--config FILE` or the flags of one VM.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::config::{
    Config, ConfigError, DiskSpec, RootSpec, SizeSpec, SwitchSettings, VmSpec, XpmemSettings,
};

pub const USAGE: &str = "\
usage: xpmem-vmm --config FILE
       xpmem-vmm --name NAME --memory SIZE --kernel PATH [options]
       xpmem-vmm switch --socket PATH [--mtu N]
       xpmem-vmm vm --broker SOCKET --name NAME --memory SIZE --kernel PATH [options]
       xpmem-vmm exec --socket PATH [options] COMMAND...

Launches one or more KVM guests. With --config, every [[vm]] table of the TOML
file is started; otherwise one VM is described by flags:

  --name NAME            VM name (prefixes its console lines)
  --vcpus N              number of vCPUs (default 1)
  --memory SIZE          guest RAM, e.g. 1024M or 1G (a bare number is MiB)
  --kernel PATH          bzImage or ELF vmlinux
  --initrd PATH          initramfs
  --cmdline STRING       appended to the default kernel command line
  --console stdout|file:PATH
                         where the serial console goes (default stdout)
  --aperture-rw SIZE     read-write import aperture window (default 1G)
  --aperture-ro SIZE     read-only import aperture window (default 256M)
  --root PATH[,ro]       boot from this raw disk image (/dev/vda, root= on the
                         kernel command line); ro makes it read-only
  --disk PATH[,ro][,serial=ID]
                         another raw disk image (repeatable; /dev/vdb, ...)
  --no-net               no virtio-net device (by default the VM has one on
                         a switch the monitor starts)
  --no-vsock             no virtio-vsock device (by default the VM has one,
                         CID 3, socket <name>.vsock in the runtime directory)

`xpmem-vmm switch --socket PATH` runs only the VM-to-VM Ethernet switch,
listening at PATH (one SOCK_SEQPACKET connection per port) until SIGINT or
SIGTERM, then prints its counters; a config's [switch] socket = PATH makes
the VMs connect to it.

`xpmem-vmm vm --broker SOCKET VM-FLAGS...` starts one more VM, described by
the VM flags above, in a setup that is running: SOCKET is the broker socket
its monitor printed at start (broker.sock in its runtime directory). The VM
gets the CID, address and MAC of the next VM number of the setup, shares
XPMEM, the switch and guest-to-guest vsock with the others, and leaves the
setup when it ends; it ends when the setup's monitor ends.

`xpmem-vmm exec --socket PATH COMMAND...` runs COMMAND in the VM whose vsock
socket is PATH, through its guest agent; see `xpmem-vmm exec --help`.

Warnings of the devices (a guest's malformed request, a host I/O error) go to
stderr, at most 100 at once and 10 a second after that; XPMEM_VMM_LOG=off,
error, warn (the default), info or debug sets the level.

  -h, --help             print this help
  -V, --version          print the version
";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CliError {
    #[error("unknown argument {0:?}; see --help")]
    Unknown(String),
    #[error("{0} needs a value; see --help")]
    MissingValue(String),
    #[error("{0} given twice")]
    Repeated(String),
    #[error("--config cannot be combined with VM flags such as {0}")]
    ConfigAndFlags(String),
    #[error("missing {0}; give --config FILE or describe a VM with --name, --memory and --kernel")]
    MissingFlag(&'static str),
    #[error("--vcpus {0:?} is not a number")]
    BadNumber(String),
    #[error("{flag} {value:?}: unknown option {option:?}; use PATH[,ro][,serial=ID]")]
    BadDiskOption {
        flag: &'static str,
        value: String,
        option: String,
    },
    #[error("switch: {0}; usage: xpmem-vmm switch --socket PATH [--mtu N]")]
    Switch(String),
    #[error("vm: {0}; usage: xpmem-vmm vm --broker SOCKET --name NAME --memory SIZE --kernel PATH [VM flags]")]
    Join(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Run(Config),
    /// Run only the switch, listening at `socket`.
    Switch {
        socket: PathBuf,
        mtu: u16,
    },
    Help,
    Version,
}

#[derive(Default)]
struct Flags {
    config: Option<PathBuf>,
    name: Option<String>,
    vcpus: Option<String>,
    memory: Option<String>,
    kernel: Option<String>,
    initrd: Option<String>,
    cmdline: Option<String>,
    console: Option<String>,
    aperture_rw: Option<String>,
    aperture_ro: Option<String>,
    root: Option<String>,
    disks: Vec<String>,
    no_net: bool,
    no_vsock: bool,
    first_vm_flag: Option<String>,
}

/// `PATH[,ro][,serial=ID]` of `--root` / `--disk`.
fn disk_flag(flag: &'static str, value: &str) -> Result<DiskSpec, CliError> {
    let mut parts = value.split(',');
    let path = PathBuf::from(parts.next().unwrap_or_default());
    let mut disk = DiskSpec {
        path,
        read_only: false,
        serial: None,
    };
    for option in parts {
        match option.split_once('=') {
            None if option == "ro" => disk.read_only = true,
            Some(("serial", id)) if flag == "--disk" => disk.serial = Some(id.to_string()),
            _ => {
                return Err(CliError::BadDiskOption {
                    flag,
                    value: value.to_string(),
                    option: option.to_string(),
                })
            }
        }
    }
    Ok(disk)
}

/// The value of `flag`: the `--flag=value` part, or the next argument.
fn flag_value(
    flag: &str,
    inline: Option<String>,
    args: &mut impl Iterator<Item = String>,
) -> Result<String, CliError> {
    match inline {
        Some(v) => Ok(v),
        None => args
            .next()
            .ok_or_else(|| CliError::MissingValue(flag.to_string())),
    }
}

fn set(slot: &mut Option<String>, flag: &str, value: String) -> Result<(), CliError> {
    if slot.replace(value).is_some() {
        return Err(CliError::Repeated(flag.to_string()));
    }
    Ok(())
}

/// Parses the arguments after the program name.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Command, CliError> {
    let mut args = args.into_iter().peekable();
    if args.peek().map(String::as_str) == Some("switch") {
        args.next();
        return parse_switch(args);
    }
    let flags = match parse_flags(args)? {
        Parsed::Early(command) => return Ok(command),
        Parsed::Flags(flags) => flags,
    };
    if let Some(path) = flags.config {
        if let Some(flag) = flags.first_vm_flag {
            return Err(CliError::ConfigAndFlags(flag));
        }
        return Ok(Command::Run(Config::from_file(&path)?));
    }
    let spec = spec_from_flags(flags)?;
    Ok(Command::Run(Config::from_specs(
        XpmemSettings::default(),
        SwitchSettings::default(),
        &[spec],
        Path::new(""),
    )?))
}

/// `xpmem-vmm vm --broker SOCKET VM-FLAGS...`: one VM, described by flags, that joins the
/// running setup whose broker listens at SOCKET.
#[derive(Debug, PartialEq, Eq)]
pub struct JoinArgs {
    pub broker: PathBuf,
    pub spec: VmSpec,
}

/// Parses the arguments after `vm`; `Ok(None)` for `--help`.
pub fn parse_join<I: IntoIterator<Item = String>>(args: I) -> Result<Option<JoinArgs>, CliError> {
    let mut broker = None;
    let mut rest = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        if flag == "--broker" {
            let value = flag_value(&flag, inline, &mut args)?;
            set(&mut broker, &flag, value)?;
        } else {
            rest.push(arg);
        }
    }
    if rest.iter().any(|a| a == "-h" || a == "--help") {
        return Ok(None);
    }
    let spec = parse_vm_spec(rest)?;
    let broker = broker.ok_or_else(|| CliError::Join("--broker SOCKET is required".into()))?;
    Ok(Some(JoinArgs {
        broker: PathBuf::from(broker),
        spec,
    }))
}

/// `args` of `vm` without `--broker SOCKET`: the VM flags a joining process sends.
pub fn without_broker(args: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut skip = false;
    for arg in args {
        if std::mem::take(&mut skip) {
            continue;
        }
        if arg == "--broker" {
            skip = true;
        } else if !arg.starts_with("--broker=") {
            out.push(arg.clone());
        }
    }
    out
}

/// The one VM that VM flags describe (no `--config`).
pub fn parse_vm_spec<I: IntoIterator<Item = String>>(args: I) -> Result<VmSpec, CliError> {
    let flags = match parse_flags(args.into_iter().peekable())? {
        Parsed::Early(_) => return Err(CliError::Join("--help is not a VM flag".into())),
        Parsed::Flags(flags) => flags,
    };
    if flags.config.is_some() {
        return Err(CliError::Join(
            "--config does not go with vm --broker; describe the joining VM with flags".into(),
        ));
    }
    spec_from_flags(flags)
}

enum Parsed {
    /// `--help` or `--version`.
    Early(Command),
    Flags(Box<Flags>),
}

/// The VM flags and `--config`.
fn parse_flags(
    mut args: std::iter::Peekable<impl Iterator<Item = String>>,
) -> Result<Parsed, CliError> {
    let mut flags = Flags::default();
    while let Some(arg) = args.next() {
        // Accept both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Parsed::Early(Command::Help)),
            "-V" | "--version" => return Ok(Parsed::Early(Command::Version)),
            _ => {}
        }
        if flag == "--no-net" || flag == "--no-vsock" {
            if flag == "--no-net" {
                flags.no_net = true;
            } else {
                flags.no_vsock = true;
            }
            flags.first_vm_flag.get_or_insert(flag);
            continue;
        }
        if flag == "--disk" {
            let value = match inline {
                Some(v) => v,
                None => args
                    .next()
                    .ok_or_else(|| CliError::MissingValue(flag.clone()))?,
            };
            flags.disks.push(value);
            flags.first_vm_flag.get_or_insert(flag);
            continue;
        }
        let slot = match flag.as_str() {
            "--config" => None,
            "--root" => Some(&mut flags.root),
            "--name" => Some(&mut flags.name),
            "--vcpus" => Some(&mut flags.vcpus),
            "--memory" => Some(&mut flags.memory),
            "--kernel" => Some(&mut flags.kernel),
            "--initrd" => Some(&mut flags.initrd),
            "--cmdline" => Some(&mut flags.cmdline),
            "--console" => Some(&mut flags.console),
            "--aperture-rw" => Some(&mut flags.aperture_rw),
            "--aperture-ro" => Some(&mut flags.aperture_ro),
            _ => return Err(CliError::Unknown(arg)),
        };
        let value = flag_value(&flag, inline, &mut args)?;
        match slot {
            None => {
                if flags.config.replace(PathBuf::from(value)).is_some() {
                    return Err(CliError::Repeated(flag));
                }
            }
            Some(slot) => {
                set(slot, &flag, value)?;
                flags.first_vm_flag.get_or_insert(flag);
            }
        }
    }

    Ok(Parsed::Flags(Box::new(flags)))
}

/// The VM the flags describe.
fn spec_from_flags(flags: Box<Flags>) -> Result<VmSpec, CliError> {
    let name = flags.name.ok_or(CliError::MissingFlag("--name"))?;
    let memory = flags.memory.ok_or(CliError::MissingFlag("--memory"))?;
    let kernel = flags.kernel.ok_or(CliError::MissingFlag("--kernel"))?;
    let vcpus = match flags.vcpus {
        None => 1,
        Some(v) => v.parse().map_err(|_| CliError::BadNumber(v))?,
    };
    let spec = VmSpec {
        name,
        vcpus,
        memory: SizeSpec::Text(memory),
        kernel: PathBuf::from(kernel),
        initrd: flags.initrd.map(PathBuf::from),
        cmdline: flags.cmdline,
        console: flags.console,
        stdin: None,
        input: None,
        aperture_rw: flags.aperture_rw.map(SizeSpec::Text),
        aperture_ro: flags.aperture_ro.map(SizeSpec::Text),
        import_from: None,
        root: flags
            .root
            .map(|r| disk_flag("--root", &r).map(RootSpec::Disk))
            .transpose()?,
        disks: flags
            .disks
            .iter()
            .map(|d| disk_flag("--disk", d))
            .collect::<Result<_, _>>()?,
        net: flags
            .no_net
            .then_some(crate::config::NetSpec::Enabled(false)),
        vsock: flags
            .no_vsock
            .then_some(crate::config::VsockSpec::Enabled(false)),
    };
    Ok(spec)
}

/// `switch --socket PATH [--mtu N]`.
fn parse_switch(args: impl Iterator<Item = String>) -> Result<Command, CliError> {
    let (mut socket, mut mtu) = (None, None);
    let mut args = args;
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let slot = match flag.as_str() {
            "--socket" => &mut socket,
            "--mtu" => &mut mtu,
            "-h" | "--help" => return Ok(Command::Help),
            _ => return Err(CliError::Unknown(arg)),
        };
        let value = flag_value(&flag, inline, &mut args)?;
        set(slot, &flag, value)?;
    }
    let socket = socket.ok_or_else(|| CliError::Switch("--socket PATH is required".into()))?;
    let mtu = match mtu {
        None => crate::config::DEFAULT_MTU,
        Some(m) => match m.parse::<u16>() {
            Ok(v) if v >= 68 => v,
            _ => {
                return Err(CliError::Switch(format!(
                    "--mtu {m:?} must be a number between 68 and 65535"
                )))
            }
        },
    };
    Ok(Command::Switch {
        socket: PathBuf::from(socket),
        mtu,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;
    use crate::config::Console;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn a_joining_vm_is_its_flags_and_a_broker_socket() {
        let a = args("--name j --memory 256M --broker /run/x/broker.sock --kernel bz --no-vsock");
        let join = parse_join(a.clone()).unwrap().unwrap();
        assert_eq!(join.broker, PathBuf::from("/run/x/broker.sock"));
        assert_eq!(join.spec.name, "j");
        assert_eq!(
            join.spec.vsock,
            Some(crate::config::VsockSpec::Enabled(false))
        );
        // What the joining process sends the broker, which parses it the same way.
        let sent = without_broker(&a);
        assert_eq!(sent, args("--name j --memory 256M --kernel bz --no-vsock"));
        assert_eq!(parse_vm_spec(sent).unwrap(), join.spec);
        assert_eq!(
            without_broker(&args("--broker=/s --name j")),
            args("--name j")
        );
        assert_eq!(parse_join(args("--broker /s --help")).unwrap(), None);
    }

    #[test]
    fn a_joining_vm_needs_a_broker_and_flags_not_a_config() {
        let e = parse_join(args("--name j --memory 256M --kernel bz")).unwrap_err();
        assert!(e.to_string().contains("--broker SOCKET is required"), "{e}");
        let e = parse_join(args("--broker /s --config c.toml")).unwrap_err();
        assert!(e.to_string().contains("--config does not go with"), "{e}");
        let e = parse_join(args("--broker /s --name j --kernel bz")).unwrap_err();
        assert_eq!(e, CliError::MissingFlag("--memory"));
    }

    #[test]
    fn one_vm_from_flags() {
        let Command::Run(c) = parse(args(
            "--name a --vcpus 2 --memory 1024M --kernel bz --initrd rd.gz --console=file:/tmp/a.log",
        ))
        .unwrap() else {
            panic!("expected Run")
        };
        let vm = &c.vms[0];
        assert_eq!(vm.name, "a");
        assert_eq!(vm.vcpus, 2);
        assert_eq!(vm.memory, 1 << 30);
        assert_eq!(vm.kernel, PathBuf::from("bz"));
        assert_eq!(vm.initrd, Some(PathBuf::from("rd.gz")));
        assert_eq!(vm.console, Console::File(PathBuf::from("/tmp/a.log")));
    }

    #[test]
    fn cmdline_with_spaces() {
        let mut a = args("--name a --memory 256 --kernel k --cmdline");
        a.push("quiet loglevel=3".to_string());
        let Command::Run(c) = parse(a).unwrap() else {
            panic!("expected Run")
        };
        assert!(c.vms[0].kernel_cmdline().ends_with(" quiet loglevel=3"));
        // The only stdout VM reads stdin.
        assert!(c.vms[0].stdin);
    }

    #[test]
    fn root_and_disks_from_flags() {
        let dir = std::env::temp_dir().join(format!("xpmem-vmm-cli-disks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let root = dir.join("root.img");
        let data = dir.join("data.img");
        for p in [&root, &data] {
            std::fs::File::create(p).unwrap().set_len(1 << 20).unwrap();
        }
        let mut a = args("--name a --memory 256 --kernel k --root");
        a.push(format!("{},ro", root.display()));
        a.push(format!("--disk={},serial=d1", data.display()));
        a.push("--disk".into());
        a.push(format!("{},ro", root.display()));
        let Command::Run(c) = parse(a).unwrap() else {
            panic!("expected Run")
        };
        let vm = &c.vms[0];
        assert_eq!(vm.disks.len(), 3);
        assert!(vm.root_disk && vm.disks[0].read_only);
        assert_eq!(vm.disks[1].serial.as_deref(), Some("d1"));
        assert!(vm.kernel_cmdline().contains("root=/dev/vda ro"));
        let mut a = args("--name a --memory 256 --kernel k --root");
        a.push(format!("{},serial=x", root.display()));
        assert!(matches!(parse(a), Err(CliError::BadDiskOption { .. })));
        let mut a = args("--name a --memory 256 --kernel k --disk");
        a.push(format!("{},rw", data.display()));
        assert!(matches!(parse(a), Err(CliError::BadDiskOption { .. })));
        assert!(matches!(
            parse(args(
                "--name a --memory 256 --kernel k --disk /nonexistent/x.img"
            )),
            Err(CliError::Config(ConfigError::BadDisk { .. }))
        ));
        assert_eq!(
            parse(args("--config x.toml --disk a.img")),
            Err(CliError::ConfigAndFlags("--disk".into()))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn help_and_version() {
        assert_eq!(parse(args("--help")), Ok(Command::Help));
        assert_eq!(parse(args("--name a -V")), Ok(Command::Version));
    }

    #[test]
    fn errors() {
        assert_eq!(
            parse(args("--bogus")),
            Err(CliError::Unknown("--bogus".into()))
        );
        assert_eq!(
            parse(args("--name")),
            Err(CliError::MissingValue("--name".into()))
        );
        assert_eq!(
            parse(args("--name a --name b")),
            Err(CliError::Repeated("--name".into()))
        );
        assert_eq!(
            parse(args("--config x.toml --vcpus 2")),
            Err(CliError::ConfigAndFlags("--vcpus".into()))
        );
        assert_eq!(parse(args("")), Err(CliError::MissingFlag("--name")));
        assert_eq!(
            parse(args("--name a --kernel k")),
            Err(CliError::MissingFlag("--memory"))
        );
        assert_eq!(
            parse(args("--name a --memory 256 --kernel k --vcpus x")),
            Err(CliError::BadNumber("x".into()))
        );
        assert!(matches!(
            parse(args("--name a --memory 256 --kernel k --vcpus 0")),
            Err(CliError::Config(ConfigError::BadVcpus { .. }))
        ));
        assert!(matches!(
            parse(args("--config /nonexistent/x.toml")),
            Err(CliError::Config(ConfigError::Read { .. }))
        ));
    }

    #[test]
    fn switch_subcommand_and_no_net() {
        assert_eq!(
            parse(args("switch --socket /run/sw.sock --mtu=9000")).unwrap(),
            Command::Switch {
                socket: PathBuf::from("/run/sw.sock"),
                mtu: 9000
            }
        );
        let Command::Switch { mtu, .. } = parse(args("switch --socket s")).unwrap() else {
            panic!()
        };
        assert_eq!(mtu, 1500);
        for (line, want) in [
            ("switch", "--socket PATH is required"),
            ("switch --socket s --mtu 20", "--mtu \"20\" must be"),
            ("switch --socket", "--socket needs a value"),
            ("switch --bogus", "unknown argument"),
            ("switch --socket a --socket b", "given twice"),
        ] {
            let e = parse(args(line)).unwrap_err().to_string();
            assert!(e.contains(want), "{line}: {e}");
        }
        let Command::Run(c) = parse(args("--name a --memory 256 --kernel k --no-net")).unwrap()
        else {
            panic!()
        };
        assert_eq!((c.vms[0].net, c.switch), (None, None));
        let Command::Run(c) = parse(args("--name a --memory 256 --kernel k")).unwrap() else {
            panic!()
        };
        assert!(c.vms[0].net.is_some() && c.switch.is_some());
    }
}
