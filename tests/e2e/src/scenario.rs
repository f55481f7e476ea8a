//! Multi-VM scenarios: runs the monitor with a TOML config (the format of
//! `vmm/monitor/src/config.rs`) on the KVM test host, streams the guests'
//! consoles with progress lines, and collects what each guest reported.
//!
//! The monitor prefixes every line of a VM's serial console with
//! `[vm-NAME] ` on its stdout; the guest image's `/init` prints the
//! `XPMEM-GUEST READY` banner (see [`crate::console`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::console::{self, Event, Ready};
use crate::debian::Cache;
use crate::nested::{self, Options, Payload};

/// Errors while preparing or running a scenario.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read scenario config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("scenario config {path} is not valid TOML: {reason}")]
    Toml { path: PathBuf, reason: String },
    #[error("scenario config {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("cannot serialize the rewritten config: {0}")]
    Serialize(String),
    #[error(
        "monitor binary {0} does not exist; build it with tests/nested/build-static.sh xpmem-vmm"
    )]
    NoMonitor(PathBuf),
    #[error(transparent)]
    Nested(#[from] nested::Error),
}

/// One VM of a generated scenario.
#[derive(Debug, Clone)]
pub struct VmSetup {
    /// VM name (also given to the guest as `xpmem.name=`).
    pub name: String,
    /// vCPUs.
    pub vcpus: u32,
    /// RAM in MiB.
    pub memory_mib: u32,
    /// Extra kernel command line.
    pub cmdline: String,
}

/// Writes a monitor config for `vms`, all booting `kernel` + `initrd`.
pub fn config_toml(vms: &[VmSetup], kernel: &Path, initrd: &Path) -> String {
    // XPMEM_GUEST_APPEND: extra guest kernel parameters for every VM, for
    // experiments on the test host (like XPMEM_L1_APPEND for L1).
    let append = std::env::var("XPMEM_GUEST_APPEND").unwrap_or_default();
    let mut s = String::new();
    for vm in vms {
        let cmdline = format!("xpmem.name={} {} {}", vm.name, vm.cmdline, append.trim());
        s.push_str(&format!(
            "[[vm]]\nname = {}\nvcpus = {}\nmemory = {}\nkernel = {}\ninitrd = {}\ncmdline = {}\n\n",
            toml_str(&vm.name),
            vm.vcpus,
            vm.memory_mib,
            toml_str(&kernel.to_string_lossy()),
            toml_str(&initrd.to_string_lossy()),
            toml_str(cmdline.trim()),
        ));
    }
    s
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A scenario ready to run: the payload (monitor, config, images) and the VM names.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// What goes to the test host.
    pub payload: Payload,
    /// VM names in config order.
    pub vms: Vec<String>,
}

/// Reads the config file at `path` and [`prepare`]s it.
pub fn prepare_file(path: &Path, vmm: &Path, vmm_timeout: Duration) -> Result<Prepared, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    prepare(path, &text, vmm, vmm_timeout)
}

/// Prepares `config` (read from `config_path`, relative paths resolved
/// against its directory): the kernel and initrd files it names are copied
/// into the payload and the config is rewritten to point at the copies.
/// The monitor is killed after `vmm_timeout`.
pub fn prepare(
    config_path: &Path,
    config: &str,
    vmm: &Path,
    vmm_timeout: Duration,
) -> Result<Prepared, Error> {
    if !vmm.exists() {
        return Err(Error::NoMonitor(vmm.to_path_buf()));
    }
    let base = config_path.parent().unwrap_or_else(|| Path::new("."));
    let cfg_err = |reason: String| Error::Config {
        path: config_path.to_path_buf(),
        reason,
    };
    let mut table: toml::Table = config.parse().map_err(|e: toml::de::Error| Error::Toml {
        path: config_path.to_path_buf(),
        reason: e.message().to_string(),
    })?;
    let mut payload = Payload::default();
    let mut copied: BTreeMap<PathBuf, String> = BTreeMap::new();
    let mut names = Vec::new();
    let vms = table
        .get_mut("vm")
        .and_then(toml::Value::as_array_mut)
        .ok_or_else(|| cfg_err("no [[vm]] tables".into()))?;
    for vm in vms.iter_mut() {
        let vm = vm
            .as_table_mut()
            .ok_or_else(|| cfg_err("`vm` must be an array of tables".into()))?;
        let name = vm
            .get("name")
            .and_then(toml::Value::as_str)
            .ok_or_else(|| cfg_err("a [[vm]] has no name".into()))?
            .to_string();
        for key in ["kernel", "initrd"] {
            let Some(p) = vm.get(key).and_then(toml::Value::as_str) else {
                continue;
            };
            let src = base.join(p);
            let n = copied.len();
            let dest = copied
                .entry(src.clone())
                .or_insert_with(|| {
                    let base = src
                        .file_name()
                        .map(|b| b.to_string_lossy().into_owned())
                        .unwrap_or_else(|| key.to_string());
                    format!("files/{n}-{base}")
                })
                .clone();
            vm.insert(key.to_string(), toml::Value::String(dest));
        }
        names.push(name);
    }
    for (src, dest) in &copied {
        if !src.exists() {
            return Err(cfg_err(format!("{} does not exist", src.display())));
        }
        payload.file(src, dest.clone());
    }
    let rewritten = toml::to_string(&table).map_err(|e| Error::Serialize(e.to_string()))?;
    payload.data("config.toml", rewritten, 0o644);
    payload.file(vmm, "xpmem-vmm");
    payload.script = format!(
        "echo XPMEM-VMM START\n\
         timeout -s KILL {} ./xpmem-vmm --config config.toml &\n\
         pid=$!\n\
         {heartbeat}\
         wait $pid\n\
         rc=$?\n\
         kill $hb 2>/dev/null\n\
         echo \"XPMEM-VMM-EXIT rc=$rc\"\n\
         exit $rc\n",
        vmm_timeout.as_secs().max(1),
        heartbeat = nested::HEARTBEAT
    );
    Ok(Prepared {
        payload,
        vms: names,
    })
}

/// What one VM did.
#[derive(Debug, Clone, Default)]
pub struct VmReport {
    /// VM name.
    pub name: String,
    /// Time from monitor start to the VM's first console line.
    pub first_output: Option<Duration>,
    /// The readiness banner.
    pub ready: Option<Ready>,
    /// Time from monitor start to the banner.
    pub ready_after: Option<Duration>,
    /// Exit code of the guest's configured command.
    pub result_rc: Option<i32>,
    /// Init errors (`XPMEM-GUEST ERROR`) and malformed banners.
    pub errors: Vec<String>,
    /// Kernel panic message, if any.
    pub panic: Option<String>,
    /// Number of console lines.
    pub lines: usize,
}

/// What a scenario run produced.
#[derive(Debug, Clone)]
pub struct Report {
    /// Host-level outcome (nested or direct, timings).
    pub host: nested::Outcome,
    /// The monitor's exit code (None: never started or killed with L1).
    pub vmm_exit: Option<i32>,
    /// Per VM, in config order.
    pub vms: Vec<VmReport>,
    /// Lines after monitor start that belong to no VM (the monitor's own output).
    pub monitor_lines: Vec<String>,
    /// Every line seen.
    pub log: Vec<String>,
}

/// How much of the consoles to echo to stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// Every line.
    All,
    /// Guest and monitor lines, not the L1 kernel's.
    Guests,
    /// Progress lines and problems only.
    Progress,
}

fn vm_line<'a>(line: &'a str, vms: &[String]) -> Option<(usize, &'a str)> {
    let rest = line.strip_prefix("[vm-")?;
    let (name, text) = rest.split_once(']')?;
    let idx = vms.iter().position(|v| v == name)?;
    Some((idx, text.strip_prefix(' ').unwrap_or(text)))
}

/// Runs a prepared scenario on the test host.
pub fn run(
    cache: &Cache,
    prepared: &Prepared,
    opts: &Options,
    echo: Echo,
) -> Result<Report, Error> {
    let mut vms: Vec<VmReport> = prepared
        .vms
        .iter()
        .map(|n| VmReport {
            name: n.clone(),
            ..VmReport::default()
        })
        .collect();
    let start = Instant::now();
    let mut vmm_start: Option<Instant> = None;
    let mut vmm_exit = None;
    let mut monitor_lines = Vec::new();
    let mut log = Vec::new();
    let host = nested::run(cache, &prepared.payload, opts, |line| {
        log.push(line.to_string());
        if line.contains(nested::KVM_READY_MARKER) {
            println!("[nested] L1 up in {:.1}s", start.elapsed().as_secs_f64());
        }
        if line == "XPMEM-VMM START" {
            vmm_start = Some(Instant::now());
            println!("[nested] monitor started ({} VMs)", prepared.vms.len());
            return;
        }
        if let Some(rc) = line.strip_prefix("XPMEM-VMM-EXIT rc=") {
            vmm_exit = rc.trim().parse().ok();
            return;
        }
        let since = vmm_start.map(|t| t.elapsed()).unwrap_or_default();
        let Some((idx, text)) = vm_line(line, &prepared.vms) else {
            if vmm_start.is_some() && !line.starts_with(nested::RESULT_MARKER) {
                monitor_lines.push(line.to_string());
                if echo != Echo::All {
                    println!("[monitor] {line}");
                }
            }
            if echo == Echo::All {
                println!("[L1] {line}");
            }
            return;
        };
        let vm = &mut vms[idx];
        vm.lines += 1;
        if vm.first_output.is_none() {
            vm.first_output = Some(since);
            println!(
                "[vm-{}] booting... (first output after {:.1}s)",
                vm.name,
                since.as_secs_f64()
            );
        }
        if echo != Echo::Progress {
            println!("{line}");
        }
        match console::parse_line(text) {
            Some(Ok(Event::Ready(r))) if vm.ready.is_none() => {
                println!(
                    "[vm-{}] ready after {:.1}s (guest uptime {}s): cpus={} virtio={}",
                    vm.name,
                    since.as_secs_f64(),
                    r.uptime
                        .map(|u| format!("{u:.1}"))
                        .unwrap_or_else(|| "?".into()),
                    r.cpus,
                    describe_virtio(&r)
                );
                vm.ready = Some(r);
                vm.ready_after = Some(since);
            }
            Some(Ok(Event::Result { rc, .. })) if vm.result_rc.is_none() => {
                vm.result_rc = Some(rc);
                println!("[vm-{}] command exited with {rc}", vm.name);
            }
            Some(Ok(Event::InitError(e))) => {
                if echo == Echo::Progress {
                    println!("{line}");
                }
                vm.errors.push(e);
            }
            Some(Ok(Event::Panic(p))) => {
                if echo == Echo::Progress {
                    println!("{line}");
                }
                vm.panic = Some(p);
            }
            Some(Err(e)) => vm.errors.push(e.to_string()),
            Some(Ok(_)) | None => {}
        }
    })?;
    Ok(Report {
        host,
        vmm_exit,
        vms,
        monitor_lines,
        log,
    })
}

/// `virtio0=4/virtio_rng` style summary of the banner's devices.
pub fn describe_virtio(r: &Ready) -> String {
    if r.virtio.is_empty() {
        return "none".into();
    }
    r.virtio
        .iter()
        .map(|d| {
            format!(
                "{}=id{}/{}",
                d.name,
                d.device_id,
                d.driver.as_deref().unwrap_or("unbound")
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;

    #[test]
    fn vm_lines_are_attributed() {
        let vms = vec!["a".to_string(), "b-2".to_string()];
        assert_eq!(vm_line("[vm-b-2] hello", &vms), Some((1, "hello")));
        assert_eq!(vm_line("[vm-a]", &vms), Some((0, "")));
        assert_eq!(vm_line("[vm-c] x", &vms), None);
        assert_eq!(vm_line("vm-a x", &vms), None);
    }

    #[test]
    fn generated_config_round_trips() {
        let vms = [VmSetup {
            name: "a".into(),
            vcpus: 2,
            memory_mib: 512,
            cmdline: "quiet".into(),
        }];
        let text = config_toml(
            &vms,
            Path::new("/k/vmlinuz"),
            Path::new("/i/guest \"x\".gz"),
        );
        let t: toml::Table = text.parse().unwrap();
        let vm = &t["vm"].as_array().unwrap()[0];
        assert_eq!(vm["vcpus"].as_integer(), Some(2));
        assert_eq!(vm["initrd"].as_str(), Some("/i/guest \"x\".gz"));
        assert_eq!(vm["cmdline"].as_str(), Some("xpmem.name=a quiet"));
    }
}
