//! One VM in a process of its own, started by the broker ([`crate::broker`]): builds the
//! VM with its virtio-xpmem device model in the broker, waits for the broker's go, runs
//! the VM until it ends, the broker goes away or a signal stops it.
//!
//! `xpmem-vmm vm-process --index I --run-dir DIR [--switch-fd 5] -- ARGS...` is how the
//! broker starts it (not meant to be typed): ARGS are the broker's own arguments, parsed
//! again here so that both see the same configuration; descriptor 3 is the xpmem control
//! connection, 4 the start-up handshake (this process writes `R` once its VM is built and
//! waits for `G`), and the optional switch descriptor a switch port the broker connected.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use event_manager::EventSet;
use virtio_xpmem_device::VmId;

use crate::boot;
use crate::cli::{self, Command};
use crate::config::VmConfig;
use crate::events::Watch;
use crate::kvm;
use crate::lifecycle::ExitReason;
use crate::monitor::{
    mappings_per_vm, report, report_booting, report_vsock_socket, MonitorError, Outcome,
};
use crate::sandbox::SeccompMode;
use crate::signals;
use crate::terminal::RawModeGuard;
use crate::vcpu;
use crate::vm::{RunningVm, Shared, Vm, VmError, VsockRouting, XpmemAttach};

/// Descriptor of the xpmem control connection in a VM process.
pub const CONTROL_FD: RawFd = 3;
/// Descriptor of the start-up handshake in a VM process.
pub const HANDSHAKE_FD: RawFd = 4;
/// Descriptor of the switch port, when the VM has one.
pub const SWITCH_FD: RawFd = 5;

/// The broker's guest-to-guest vsock router, in the runtime directory.
pub const VSOCK_ROUTER_SOCKET: &str = "vsock-router.sock";

/// What `vm-process` was told.
pub struct VmProcessArgs {
    pub index: usize,
    pub run_dir: PathBuf,
    pub switch_fd: Option<RawFd>,
    /// The broker's own arguments.
    pub args: Vec<String>,
}

/// Parses `vm-process` arguments (after the subcommand).
pub fn parse(args: impl Iterator<Item = String>) -> Result<VmProcessArgs, String> {
    let mut args = args.peekable();
    let (mut index, mut run_dir, mut switch_fd) = (None, None, None);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--" => break,
            "--index" => index = args.next().and_then(|v| v.parse().ok()),
            "--run-dir" => run_dir = args.next().map(PathBuf::from),
            "--switch-fd" => switch_fd = args.next().and_then(|v| v.parse().ok()),
            other => return Err(format!("vm-process: unknown argument {other:?}")),
        }
    }
    Ok(VmProcessArgs {
        index: index.ok_or("vm-process: --index N is missing")?,
        run_dir: run_dir.ok_or("vm-process: --run-dir DIR is missing")?,
        switch_fd,
        args: args.collect(),
    })
}

/// A panic in any thread of a broker or VM process ends that process at once (after
/// saying where): half a VM, or a broker with one serving thread gone, must not run on.
/// A VM process that ends is cleaned up by the broker; a broker that ends takes its VM
/// processes with it.
pub(crate) fn abort_on_panic(what: &'static str) {
    std::panic::set_hook(Box::new(move |info| {
        crate::report!(
            "xpmem-vmm: {what} {}: {info}; stopping it",
            std::process::id()
        );
        std::process::abort();
    }));
}

/// Takes ownership of an inherited descriptor (checking that it is open).
fn inherited(fd: RawFd) -> Result<OwnedFd, MonitorError> {
    // SAFETY: F_GETFD only reads the descriptor's flags.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(MonitorError::VmProcess(format!(
            "descriptor {fd} is not open; vm-process is started by the broker, not by hand"
        )));
    }
    // SAFETY: the broker passed `fd` to this process for this purpose and nothing else in
    // the process owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Runs VM `index` of the broker's configuration in this process.
pub fn run(p: &VmProcessArgs) -> Result<Outcome, MonitorError> {
    abort_on_panic("VM process");
    let control = UnixStream::from(inherited(CONTROL_FD)?);
    let mut handshake = UnixStream::from(inherited(HANDSHAKE_FD)?);
    let switch_port = p
        .switch_fd
        .map(inherited)
        .transpose()?
        .map(net_switch::socket::FrameSocket::from);
    let config = match cli::parse(p.args.iter().cloned()) {
        Ok(Command::Run(config)) => config,
        Ok(_) => {
            return Err(MonitorError::VmProcess(
                "the broker's arguments run no VMs".into(),
            ))
        }
        Err(e) => return Err(MonitorError::VmProcess(e.to_string())),
    };
    let cfg = config.vms.get(p.index).ok_or_else(|| {
        MonitorError::VmProcess(format!("the configuration has no VM {}", p.index))
    })?;
    let start = VmStart {
        index: p.index,
        run_dir: &p.run_dir,
        cfg,
        stdout_consoles: config.stdout_consoles(),
        seccomp: config.seccomp,
        handshake: Some(&mut handshake),
    };
    run_vm(start, control, switch_port)
}

/// What a VM process runs: VM `index` of the setup whose runtime directory is `run_dir`.
pub(crate) struct VmStart<'a> {
    pub index: usize,
    pub run_dir: &'a Path,
    pub cfg: &'a VmConfig,
    /// VMs of the setup whose console is stdout (prefixes console lines when more than 1).
    pub stdout_consoles: usize,
    pub seccomp: SeccompMode,
    /// Started with the setup: says `R` once built and runs only after the broker's `G`.
    /// `None`: a VM that joins a running setup and starts at once.
    pub handshake: Option<&'a mut UnixStream>,
}

/// Builds and runs the VM; `control` is its xpmem connection to the broker.
pub(crate) fn run_vm(
    start: VmStart<'_>,
    control: UnixStream,
    switch_port: Option<net_switch::socket::FrameSocket>,
) -> Result<Outcome, MonitorError> {
    let VmStart {
        index,
        run_dir,
        cfg,
        stdout_consoles,
        seccomp,
        handshake,
    } = start;
    crate::logging::set_vm(&cfg.name);
    let vm_error = |source| MonitorError::Vm {
        name: cfg.name.clone(),
        source,
    };
    boot::check_files(&cfg.kernel, cfg.initrd.as_deref())
        .map_err(|e| vm_error(VmError::Boot(e)))?;
    let disks = crate::vm::open_disks(cfg).map_err(vm_error)?;
    let kvm = kvm::open(&kvm::device_path())?;
    vcpu::install_kick_handler().map_err(MonitorError::Signals)?;
    let signal_evt = signals::install().map_err(MonitorError::Signals)?;
    let shared = Shared {
        vsock_router: VsockRouting::Socket(run_dir.join(VSOCK_ROUTER_SOCKET)),
        run_dir: run_dir.to_path_buf(),
        switch_socket: None,
        switch_port: Mutex::new(switch_port),
        xpmem: XpmemAttach::Broker {
            control: Mutex::new(Some(control)),
            mappings: mappings_per_vm(1),
        },
    };
    let id = u32::try_from(index + 1)
        .map(VmId)
        .map_err(|_| vm_error(VmError::Xpmem("too many VMs".into())))?;
    let vm = Vm::new(&kvm, cfg, id, &shared, stdout_consoles, disks).map_err(vm_error)?;

    // Built: tell the broker, and start only when every VM of the setup is built.
    if let Some(handshake) = handshake {
        let mut go = [0u8; 1];
        let told = handshake
            .write_all(b"R")
            .and_then(|()| handshake.read_exact(&mut go));
        if told.is_err() || go[0] != b'G' {
            return Err(MonitorError::VmProcess(
                "the broker did not start this VM (another VM of the setup failed, or the broker ended)".into(),
            ));
        }
    }

    let _raw_terminal = if cfg.stdin {
        RawModeGuard::enable().unwrap_or_else(|e| {
            log::warn!("cannot put the terminal in raw mode: {e}");
            None
        })
    } else {
        None
    };
    report_booting(cfg, Some(std::process::id()));
    let mut running = vm.start().map_err(vm_error)?;
    report_vsock_socket(&running);
    // Every thread of this process runs now, every file it needs is open (the wait's
    // epoll instance too: it is created before the filter, which does not allow that).
    let set_up = main_watch(signal_evt, &running)
        .map_err(|e| MonitorError::Events(e).to_string())
        .and_then(|watch| {
            crate::sandbox::install(crate::sandbox::ProcessKind::Vm, seccomp)
                .map(|()| watch)
                .map_err(|e| e.to_string())
        });
    let mut watch = match set_up {
        Ok(watch) => watch,
        Err(e) => {
            let (_, ran) = running.stop(ExitReason::Error(e.clone()));
            report(&running, &ExitReason::Error(e.clone()), ran);
            return Err(MonitorError::VmProcess(e));
        }
    };
    loop {
        let fired = watch.wait().map_err(MonitorError::Events)?;
        if fired.contains(&MainEvent::Signal) {
            let signo = signals::received().unwrap_or(libc::SIGTERM);
            let (reason, ran) = running.stop(ExitReason::Stopped);
            report(&running, &reason, ran);
            return Ok(Outcome::Interrupted(signo));
        }
        if fired.contains(&MainEvent::BrokerGone) {
            crate::report!(
                "xpmem-vmm: VM {}: the broker has gone away; stopping",
                cfg.name
            );
            let (reason, ran) = running.stop(ExitReason::Stopped);
            report(&running, &reason, ran);
            return Ok(Outcome::AllEnded { clean: false });
        }
        if running.exit_requested() {
            // The reason recorded by the guest wins over this placeholder.
            let (reason, ran) = running.stop(ExitReason::Stopped);
            report(&running, &reason, ran);
            return Ok(Outcome::AllEnded {
                clean: reason.is_clean(),
            });
        }
    }
}

/// What the VM process's main thread waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MainEvent {
    /// SIGINT or SIGTERM.
    Signal,
    /// The VM asked to end.
    VmExit,
    /// The broker's control connection hung up (or is in error).
    BrokerGone,
}

/// The main thread's wait: the signal eventfd, the VM's exit eventfd and the broker
/// connection. That connection is watched for hang-up only (no events asked: epoll
/// reports hang-up and error anyway): answers on it belong to the device, which reads
/// them itself.
fn main_watch(
    signal_evt: &vmm_sys_util::eventfd::EventFd,
    running: &RunningVm,
) -> Result<Watch<MainEvent>, event_manager::Error> {
    let mut watch = Watch::new()?;
    watch.watch(signal_evt, EventSet::IN, MainEvent::Signal, false)?;
    watch.watch(running.exit_event(), EventSet::IN, MainEvent::VmExit, false)?;
    if let Some(broker) = running.broker_fd() {
        watch.watch(&broker, EventSet::empty(), MainEvent::BrokerGone, false)?;
    }
    Ok(watch)
}
