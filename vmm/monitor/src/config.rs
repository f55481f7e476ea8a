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
//! ```

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::layout::{MIB, MIN_MEMORY};

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
    pub vm: Vec<VmSpec>,
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
}

impl VmConfig {
    /// The full kernel command line.
    pub fn kernel_cmdline(&self) -> String {
        if self.cmdline.trim().is_empty() {
            DEFAULT_CMDLINE.to_string()
        } else {
            format!("{DEFAULT_CMDLINE} {}", self.cmdline.trim())
        }
    }
}

/// A validated monitor configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub xpmem: XpmemSettings,
    pub vms: Vec<VmConfig>,
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
    /// Validates one VM; relative paths are resolved against `base_dir`.
    pub fn validate(&self, base_dir: &Path) -> Result<VmConfig, ConfigError> {
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
        Ok(VmConfig {
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
        Self::from_specs(spec.xpmem, &spec.vm, base_dir)
    }

    /// Validates VM specs together: unique names, one stdin owner.
    pub fn from_specs(
        xpmem: XpmemSettings,
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
        let mut seen = HashSet::new();
        let mut vms = Vec::with_capacity(specs.len());
        for spec in specs {
            let vm = spec.validate(base_dir)?;
            if !seen.insert(vm.name.clone()) {
                return Err(ConfigError::DuplicateName(vm.name));
            }
            vms.push(vm);
        }
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
        Ok(Config { xpmem, vms })
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
        assert_eq!(a.kernel_cmdline(), format!("{DEFAULT_CMDLINE} quiet"));
        assert_eq!(a.aperture_rw, DEFAULT_APERTURE_RW);
        assert_eq!(a.aperture_ro, DEFAULT_APERTURE_RO);
        // Only "a" is on stdout, so it gets the terminal.
        assert!(a.stdin);
        let b = &c.vms[1];
        assert_eq!(b.vcpus, 1);
        assert_eq!(b.memory, 512 << 20);
        assert_eq!(b.console, Console::File(PathBuf::from("/cfg/b.log")));
        assert_eq!(b.kernel_cmdline(), DEFAULT_CMDLINE);
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
}
