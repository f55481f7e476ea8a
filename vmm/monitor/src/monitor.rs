//! Runs every VM of a configuration until they have all ended or the
//! monitor is told to stop. The main thread waits on an `event-manager` loop
//! ([`crate::events::Watch`]) for the signal eventfd and every VM's exit eventfd.

use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use event_manager::EventSet;
use std::collections::BTreeMap;
use thiserror::Error;
use vmm_sys_util::eventfd::EventFd;

use virtio_xpmem_device::{HubConfig, HubError, VmId, XpmemHub};
use xpmem_domain::ImportPolicy;

use crate::boot;
use crate::config::Config;
use crate::events::Watch;
use crate::kvm::{self, KvmError};
use crate::layout::MIB;
use crate::lifecycle::ExitReason;
use crate::signals;
use crate::switch::RunningSwitch;
use crate::terminal::RawModeGuard;
use crate::vcpu;
use crate::vm::{RunningVm, Shared, Vm, VmError, VsockRouting, XpmemAttach};

/// Used when the config does not set `xpmem.invalidate_deadline_ms`.
pub const DEFAULT_INVALIDATE_DEADLINE_MS: u64 = 1000;

#[derive(Debug, Error)]
pub enum MonitorError {
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error("VM {name}: {source}")]
    Vm { name: String, source: VmError },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("cannot create the xpmem domain: {0}")]
    Hub(#[from] HubError),
    #[error(transparent)]
    Switch(#[from] crate::switch::SwitchError),
    #[error("cannot wait for events: {0}")]
    Events(event_manager::Error),
    #[error("{0}")]
    VmProcess(String),
}

/// How the run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every VM ended by itself; `clean` if all powered off or rebooted.
    AllEnded { clean: bool },
    /// SIGINT/SIGTERM stopped the VMs.
    Interrupted(i32),
    /// A VM process could not set its VM up and said why; no VM ran. Its exit status.
    SetupFailed(i32),
}

impl Outcome {
    /// The process exit status: 0 for a clean end, 1 if a VM failed,
    /// 128 + signal number when stopped by a signal.
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::AllEnded { clean: true } => 0,
            Outcome::AllEnded { clean: false } => 1,
            Outcome::Interrupted(signo) => 128 + signo,
            Outcome::SetupFailed(code) => *code,
        }
    }
}

fn random_seed() -> u64 {
    let mut seed = [0u8; 8];
    // SAFETY: `seed` is valid for 8 bytes of writes.
    let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
    if n != 8 {
        // Ids stay unique without randomness; they only become guessable.
        log::warn!("getrandom failed; xpmem ids use a time-based key");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return now.as_nanos() as u64;
    }
    u64::from_le_bytes(seed)
}

/// The domain's import policy from the VMs' `import_from` tables: every VM may import
/// from every VM read-write unless some VM lists the only ones it may import from. VM ids
/// are the VMs' positions in the config, from 1.
pub fn import_policy(config: &Config) -> ImportPolicy {
    if config.vms.iter().all(|vm| vm.import_from.is_none()) {
        return ImportPolicy::AllToAll;
    }
    let id = |i: usize| VmId(u32::try_from(i + 1).unwrap_or(u32::MAX));
    let index = |name: &str| config.vms.iter().position(|vm| vm.name == name);
    let mut pairs = BTreeMap::new();
    for (i, vm) in config.vms.iter().enumerate() {
        match &vm.import_from {
            None => {
                for e in 0..config.vms.len() {
                    pairs.insert((id(i), id(e)), true);
                }
            }
            Some(list) => {
                for (exporter, rw) in list {
                    if let Some(e) = index(exporter) {
                        pairs.insert((id(i), id(e)), *rw);
                    }
                }
            }
        }
    }
    ImportPolicy::Allow(pairs)
}

/// Host mappings left for the aperture windows of each of `vms` VMs: what
/// `vm.max_map_count` allows once this process's own mappings (now, plus room for the
/// threads, RAM and devices of every VM) are counted. A guest that scatters its window
/// beyond its share gets FAULT errors; revocations never need more (see the
/// virtio-xpmem aperture docs).
pub(crate) fn mappings_per_vm(vms: usize) -> u64 {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let max = read("/proc/sys/vm/max_map_count")
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(65_530);
    let in_use = read("/proc/self/maps").map_or(1024, |s| s.lines().count() as u64);
    let vms = u64::try_from(vms.max(1)).unwrap_or(u64::MAX);
    let reserved = in_use + 2048 + 256 * vms;
    let share = max.saturating_sub(reserved) / vms;
    log::info!("xpmem: each VM's aperture windows may use {share} host mappings (vm.max_map_count {max}, {in_use} in use)");
    share
}

/// The line a VM's start is announced with (`process`: the VM's own process, if any).
pub(crate) fn report_booting(cfg: &crate::config::VmConfig, process: Option<u32>) {
    let disks: String = cfg
        .disks
        .iter()
        .map(|d| {
            let mode = if d.read_only { "ro" } else { "rw" };
            format!(", disk {} ({mode})", d.path.display())
        })
        .collect();
    let process = process
        .map(|p| format!("; process {p}"))
        .unwrap_or_default();
    crate::report!(
        "xpmem-vmm: VM {}: booting {} ({} vCPUs, {} MiB, console {}{disks}{process})",
        cfg.name,
        cfg.kernel.display(),
        cfg.vcpus,
        cfg.memory / MIB,
        cfg.console
    );
}

/// Where a started VM's vsock device listens, if it has one.
pub(crate) fn report_vsock_socket(vm: &RunningVm) {
    if let Some((cid, path, _)) = vm.vsock() {
        crate::report!(
            "xpmem-vmm: VM {}: vsock cid {cid}, host socket {} (CONNECT <port>; guest connections to the host at {}_<port>)",
            vm.name(),
            path.display(),
            path.display()
        );
    }
}

/// The xpmem hub's settings for `config`, each VM's windows allowed `mappings` host
/// mappings.
pub(crate) fn hub_config(config: &Config, mappings: u64) -> HubConfig {
    let deadline = config
        .xpmem
        .invalidate_deadline_ms
        .unwrap_or(DEFAULT_INVALIDATE_DEADLINE_MS);
    HubConfig {
        invalidate_deadline: Duration::from_millis(deadline),
        seed: random_seed(),
        mappings_per_vm: mappings,
        policy: import_policy(config),
        ..HubConfig::default()
    }
}

pub(crate) fn report(vm: &RunningVm, reason: &ExitReason, ran: Duration) {
    let name = vm.name();
    crate::report!(
        "xpmem-vmm: VM {name}: {reason} after {:.2} s",
        ran.as_secs_f64()
    );
    // Objects a guest made and never released (a clean shutdown leaves none);
    // the domain tears them down now.
    match vm.xpmem_held_at_exit() {
        Some(h) => crate::report!(
            "xpmem-vmm: VM {name}: xpmem objects the guest left: segments={} permits={} attachments={}",
            h.segments, h.permits, h.attachments
        ),
        None => crate::report!("xpmem-vmm: VM {name}: xpmem objects the guest left: none (its device is not active: never started by the driver, or reset)"),
    }
    for line in vm.device_reports() {
        crate::report!("xpmem-vmm: VM {name}: {line}");
    }
    if let Some((cid, _, r)) = vm.vsock() {
        crate::report!("xpmem-vmm: VM {name}: vsock cid {cid} at exit: {r}");
    }
}

/// Prints the config's notes and checks every VM's kernel and initrd, so that a bad
/// file fails before anything is set up.
pub(crate) fn announce_and_check(config: &Config) -> Result<(), MonitorError> {
    for note in &config.notes {
        crate::report!("xpmem-vmm: note: {note}");
    }
    for cfg in &config.vms {
        boot::check_files(&cfg.kernel, cfg.initrd.as_deref()).map_err(|e| MonitorError::Vm {
            name: cfg.name.clone(),
            source: VmError::Boot(e),
        })?;
    }
    Ok(())
}

/// Builds all VMs (so bad input fails before any guest runs), starts them,
/// and waits.
pub fn run(config: &Config) -> Result<Outcome, MonitorError> {
    announce_and_check(config)?;
    // Disk images are opened and locked before anything else is set up, so a
    // conflict with another VM or monitor leaves nothing behind.
    let mut disks = Vec::with_capacity(config.vms.len());
    for cfg in &config.vms {
        disks.push(
            crate::vm::open_disks(cfg).map_err(|source| MonitorError::Vm {
                name: cfg.name.clone(),
                source,
            })?,
        );
    }
    let kvm = kvm::open(&kvm::device_path())?;
    vcpu::install_kick_handler().map_err(MonitorError::Signals)?;
    let signal_evt = signals::install().map_err(MonitorError::Signals)?;

    // The switch listens before any VM is built: each network device
    // connects to it while its VM is set up.
    let (mut switch, switch_socket) = crate::switch::start_for(config)?;
    // The runtime directory for default vsock sockets (the switch's, or
    // one of its own); removed at the end.
    let run_dir = crate::switch::runtime_dir();
    let _run_dir_guard = if config
        .vms
        .iter()
        .any(|v| v.vsock.as_ref().is_some_and(|s| s.socket.is_none()))
    {
        Some(crate::switch::RunDir::create(&run_dir)?)
    } else {
        None
    };
    let hub = XpmemHub::new(hub_config(config, mappings_per_vm(config.vms.len())))?;
    let router = virtio_vsock_device::LocalRouter::new();
    let shared = Shared {
        vsock_router: VsockRouting::Local(router.clone()),
        run_dir,
        switch_socket,
        switch_port: std::sync::Mutex::new(None),
        xpmem: XpmemAttach::Local(hub.clone()),
    };

    let mut built = Vec::with_capacity(config.vms.len());
    for ((index, cfg), disks) in config.vms.iter().enumerate().zip(disks) {
        let vm_error = |source| MonitorError::Vm {
            name: cfg.name.clone(),
            source,
        };
        let id = u32::try_from(index + 1)
            .map(VmId)
            .map_err(|_| vm_error(VmError::Xpmem("too many VMs".into())))?;
        built.push(
            Vm::new(&kvm, cfg, id, &shared, config.stdout_consoles(), disks).map_err(vm_error)?,
        );
    }

    let _raw_terminal = if config.vms.iter().any(|v| v.stdin) {
        RawModeGuard::enable().unwrap_or_else(|e| {
            log::warn!("cannot put the terminal in raw mode: {e}");
            None
        })
    } else {
        None
    };

    let mut running: Vec<RunningVm> = Vec::with_capacity(built.len());
    for (vm, cfg) in built.into_iter().zip(&config.vms) {
        report_booting(cfg, None);
        // On error the VMs already in `running` are stopped when it drops.
        running.push(vm.start().map_err(|source| MonitorError::Vm {
            name: cfg.name.clone(),
            source,
        })?);
        if let Some(vm) = running.last() {
            report_vsock_socket(vm);
        }
    }

    let mut watch = main_watch(signal_evt, &running).map_err(MonitorError::Events)?;
    let mut clean = true;
    while !running.is_empty() {
        let fired = watch.wait().map_err(MonitorError::Events)?;
        if fired.contains(&MainEvent::Signal) {
            let signo = signals::received().unwrap_or(libc::SIGTERM);
            crate::report!(
                "xpmem-vmm: received {}, stopping {} VM(s)",
                signals::name(signo),
                running.len()
            );
            for mut vm in running.drain(..) {
                let (reason, ran) = vm.stop(ExitReason::Stopped);
                report(&vm, &reason, ran);
            }
            report_domain(&hub);
            report_switch(switch.as_mut(), config);
            report_vsock(router.held(), router.stats());
            return Ok(Outcome::Interrupted(signo));
        }
        let mut index = 0;
        while index < running.len() {
            if running[index].exit_requested() {
                let mut vm = running.swap_remove(index);
                // Out of the set before the VM, and with it its exit eventfd, goes.
                watch.forget(MainEvent::VmExit(vm.exit_event().as_raw_fd()));
                // The reason recorded by the guest wins over this placeholder.
                let (reason, ran) = vm.stop(ExitReason::Stopped);
                report(&vm, &reason, ran);
                clean &= reason.is_clean();
            } else {
                index += 1;
            }
        }
    }
    report_domain(&hub);
    report_switch(switch.as_mut(), config);
    report_vsock(router.held(), router.stats());
    Ok(Outcome::AllEnded { clean })
}

/// What the single process's main thread waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MainEvent {
    /// SIGINT or SIGTERM.
    Signal,
    /// The VM with this exit eventfd asked to end.
    VmExit(RawFd),
}

/// The main thread's wait: the signal eventfd and every VM's exit eventfd. An exit
/// eventfd is written once, when its VM is asked to end, and never read: it is forgotten
/// when its VM is stopped, which the loop does in the round it fires.
fn main_watch(
    signal_evt: &EventFd,
    running: &[RunningVm],
) -> Result<Watch<MainEvent>, event_manager::Error> {
    let mut watch = Watch::new()?;
    watch.watch(signal_evt, EventSet::IN, MainEvent::Signal, false)?;
    for vm in running {
        let evt = vm.exit_event();
        watch.watch(evt, EventSet::IN, MainEvent::VmExit(evt.as_raw_fd()), false)?;
    }
    Ok(watch)
}

/// Prints the vsock router's counters once every VM has ended (`left_*`:
/// guest-to-guest connections and packets of VMs that ended with them open).
pub(crate) fn report_vsock(
    held: virtio_vsock_device::router::RouterHeld,
    stats: virtio_vsock_device::router::RouterStats,
) {
    crate::report!(
        "xpmem-vmm: vsock router at exit: held conns={} packets={} bytes={}; total {}",
        held.conns,
        held.packets,
        held.bytes,
        stats
    );
}

/// Stops the monitor's own switch and prints its counters. Its ports are
/// numbered in connection order, which is the order of the VMs with a
/// network device in the config.
pub(crate) fn report_switch(switch: Option<&mut RunningSwitch>, config: &Config) {
    let Some(report) = switch.and_then(RunningSwitch::stop) else {
        return;
    };
    let names: Vec<&str> = config
        .vms
        .iter()
        .filter(|v| v.net.is_some_and(|n| n.on_switch()))
        .map(|v| v.name.as_str())
        .collect();
    for line in report.lines() {
        let vm = line
            .strip_prefix("port ")
            .and_then(|rest| rest.split([':', ' ']).next())
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| names.get(n.wrapping_sub(1)))
            .map(|name| format!(" (VM {name})"))
            .unwrap_or_default();
        crate::report!("xpmem-vmm: switch{vm}: {line}");
    }
}

/// Prints the xpmem domain's counters once every VM has ended: the "held"
/// ones must all be zero (anything else is a leak), the totals say what the
/// run did.
pub(crate) fn report_domain(hub: &XpmemHub) {
    let c = hub.counters();
    let a = hub.aperture_stats();
    crate::report!(
        "xpmem-vmm: xpmem domain at exit: held vms={} segments={} names={} permits={} attachments={} \
         mapped_pages={} rmap_entries={} pending_faults={} pending_resolves={} \
         pending_invalidations={} pending_invalidation_targets={} aperture_pages_reserved={}; \
         total resolves_issued={} map_actions={} invalidations_started={} \
         invalidations_completed={} invalidations_forced={} windows_revoked={} \
         backoffs_started={} backoff_refusals={} aperture_map_failures={} \
         aperture_unmap_failures={} aperture_cut_offs={}",
        c.vms,
        c.segments,
        c.names,
        c.permits,
        c.attachments,
        c.mapped_pages,
        c.rmap_entries,
        c.pending_faults,
        c.pending_resolves,
        c.pending_invalidations,
        c.pending_invalidation_targets,
        c.aperture_pages_reserved,
        c.resolves_issued,
        c.map_actions,
        c.invalidations_started,
        c.invalidations_completed,
        c.invalidations_forced,
        c.windows_revoked,
        c.backoffs_started,
        c.backoff_refusals,
        a.map_failures,
        a.unmap_failures,
        a.cut_offs,
    );
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn import_policy_is_all_to_all_unless_a_vm_restricts_itself() {
        let base = "[[vm]]\nname = \"a\"\nmemory = \"256M\"\nkernel = \"k\"\n\
                    [[vm]]\nname = \"b\"\nmemory = \"256M\"\nkernel = \"k\"\n";
        let config = Config::from_toml(base, Path::new("/")).unwrap();
        assert_eq!(import_policy(&config), ImportPolicy::AllToAll);
        let text = format!(
            "{base}[[vm]]\nname = \"c\"\nmemory = \"256M\"\nkernel = \"k\"\nimport_from = {{ b = \"ro\" }}\n"
        );
        let policy = import_policy(&Config::from_toml(&text, Path::new("/")).unwrap());
        let (a, b, c) = (VmId(1), VmId(2), VmId(3));
        // a and b are unrestricted, c imports from b read-only and nothing else.
        assert!(policy.allows(a, c, true) && policy.allows(b, a, true));
        assert!(policy.allows(c, b, false));
        assert!(!policy.allows(c, b, true));
        assert!(!policy.allows(c, a, false));
        assert!(policy.allows(c, c, true));
    }
}
