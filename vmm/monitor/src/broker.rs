//! The broker: one process per VM (issue 12's topology). The broker owns the xpmem domain
//! (the hub with [`RemoteAperture`]), the switch and the runtime directory; every VM runs
//! in a child process of its own ([`crate::vm_process`]), so a VM whose process dies takes
//! only itself down: the broker removes it from the domain and the others go on.
//!
//! Start-up: the broker checks every VM's files, starts the switch, then starts one
//! `xpmem-vmm vm-process` per VM with its control connection, a handshake socket and its
//! switch port (connected here, so ports are numbered in config order). Each child builds
//! its VM and says so; only when all are built does the broker tell them to start, so bad
//! input still fails before any guest runs. Children die with the broker
//! (`PR_SET_PDEATHSIG`), and see its end on their control connection.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command};
use std::sync::Arc;
use std::thread::JoinHandle;

use event_manager::EventSet;
use virtio_xpmem_device::remote::{self, ApertureLinks, RemoteAperture};
use virtio_xpmem_device::{HubClock, VmId, XpmemHub};

use crate::config::{Config, VmConfig};
use crate::events::Watch;
use crate::join::{JoinServer, Setup};
use crate::monitor::{
    hub_config, report_domain, report_switch, report_vsock, MonitorError, Outcome,
};
use crate::signals;
use crate::switch::RunDir;
use crate::vm_process::{self, CONTROL_FD, HANDSHAKE_FD, SWITCH_FD, VSOCK_ROUTER_SOCKET};

/// One VM process as the broker sees it.
struct VmProcess {
    name: String,
    /// Its VM's configuration (what a joining VM is checked against).
    vm: VmConfig,
    origin: Origin,
    /// Readable when the process has exited (pidfd); also how it is signalled, here
    /// and by its serving thread.
    exited: Arc<OwnedFd>,
    serve: Option<JoinHandle<()>>,
}

/// How a VM process came to be.
enum Origin {
    /// Started by the broker with the setup; says `R` on `handshake` once built.
    Started { child: Child, handshake: UnixStream },
    /// Joined the running setup (`xpmem-vmm vm --broker`); not the broker's child, so its
    /// exit status is its own parent's.
    Joined { pid: i32 },
}

impl VmProcess {
    /// Sends `signal` through the pidfd, so a joined process whose pid was reused since is
    /// not hit.
    fn signal(&self, signal: i32) {
        // SAFETY: pidfd_send_signal(2) with a pidfd this process owns, no siginfo, no flags.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.exited.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
    }
}

/// Serves VM `id`'s xpmem device on `control` in a thread of its own.
fn serve_thread(
    hub: &std::sync::Arc<XpmemHub>,
    links: &ApertureLinks,
    id: VmId,
    control: UnixStream,
    process: &Arc<OwnedFd>,
    name: &str,
) -> std::io::Result<JoinHandle<()>> {
    let (hub, links, name) = (hub.clone(), links.clone(), name.to_string());
    let process = Some(process.clone());
    std::thread::Builder::new()
        .name(format!("broker-{name}"))
        .spawn(move || {
            if let Err(e) = remote::serve_vm_process(&hub, &links, id, control, process) {
                crate::report!("xpmem-vmm: VM {name}: xpmem broker connection: {e}");
            }
        })
}

fn vm_id(index: usize) -> VmId {
    VmId(u32::try_from(index + 1).unwrap_or(u32::MAX))
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(|_| std::io::Error::other("pidfd out of range"))?;
    // SAFETY: the descriptor was just created and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Starts `xpmem-vmm vm-process` for VM `index` with `fds` (source, number in the child).
fn spawn(
    index: usize,
    run_dir: &std::path::Path,
    args: &[String],
    fds: Vec<(RawFd, RawFd)>,
) -> std::io::Result<Child> {
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg("vm-process")
        .arg("--index")
        .arg(index.to_string())
        .arg("--run-dir")
        .arg(run_dir);
    if fds.iter().any(|&(_, to)| to == SWITCH_FD) {
        cmd.arg("--switch-fd").arg(SWITCH_FD.to_string());
    }
    cmd.arg("--").args(args);
    // SAFETY: getpid(2) has no preconditions.
    let broker = unsafe { libc::getpid() };
    // SAFETY: the closure runs in the child between fork and exec and calls only
    // async-signal-safe functions (fcntl, dup2, prctl, getppid, _exit) on descriptors
    // this process owns; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // First out of the way (a source may sit on a target number), then in place;
            // dup2 clears close-on-exec on the copy.
            let mut moved = [(-1, -1); 3];
            for (slot, &(from, to)) in moved.iter_mut().zip(fds.iter()) {
                let high = libc::fcntl(from, libc::F_DUPFD_CLOEXEC, 64);
                if high < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                *slot = (high, to);
            }
            for &(high, to) in moved.iter().filter(|(h, _)| *h >= 0) {
                if libc::dup2(high, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // Die with the broker; if it is already gone, do not start at all.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != broker {
                libc::_exit(1);
            }
            Ok(())
        })
    };
    cmd.spawn()
}

fn describe(status: std::process::ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("ended with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig} ({})", signals::name(sig)),
        _ => "ended".to_string(),
    }
}

/// Waits (at most [`SETUP_EXIT_WAIT`]) for a VM process that failed its set-up to end;
/// returns the status to exit with.
fn wait_failed(mut p: VmProcess) -> i32 {
    let Origin::Started { child, .. } = &mut p.origin else {
        return 1;
    };
    let deadline = std::time::Instant::now() + SETUP_EXIT_WAIT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            _ => {
                let _ = child.kill();
                break child.wait().ok();
            }
        }
    };
    if let Some(t) = p.serve.take() {
        let _ = t.join();
    }
    match status {
        Some(s) if s.code().is_some_and(|c| c != 0) => s.code().unwrap_or(1),
        Some(s) => {
            crate::report!(
                "xpmem-vmm: error: VM {}: its process {} while setting up",
                p.name,
                describe(s)
            );
            1
        }
        None => 1,
    }
}

/// How long a VM process that failed its set-up may take to say why and end.
const SETUP_EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Kills the processes that are still running and waits for them.
fn kill_all(procs: &mut [VmProcess]) {
    for p in procs.iter_mut() {
        p.signal(libc::SIGKILL);
    }
    for p in procs.iter_mut() {
        if let Origin::Started { child, .. } = &mut p.origin {
            let _ = child.wait();
        }
        if let Some(t) = p.serve.take() {
            let _ = t.join();
        }
    }
}

/// Runs every VM of `config` in a process of its own; `args` are this process's
/// arguments, which each VM process parses again.
pub fn run(config: &Config, args: &[String]) -> Result<Outcome, MonitorError> {
    vm_process::abort_on_panic("broker");
    crate::monitor::announce_and_check(config)?;
    let signal_evt = signals::install().map_err(MonitorError::Signals)?;
    let (mut switch, switch_socket) = crate::switch::start_for(config)?;
    let run_dir = crate::switch::runtime_dir();
    let _run_dir_guard = RunDir::create(&run_dir)?;
    let router = virtio_vsock_device::RouterServer::bind(&run_dir.join(VSOCK_ROUTER_SOCKET))
        .map_err(|e| MonitorError::VmProcess(format!("cannot start the vsock router: {e}")))?;
    let links = ApertureLinks::default();
    // Each VM process budgets its own windows' mappings; the broker maps none.
    let hub = XpmemHub::with_backend(
        hub_config(config, 0),
        Box::new(RemoteAperture::new(links.clone())),
        HubClock::Monotonic,
    )?;

    let mut procs: Vec<VmProcess> = Vec::with_capacity(config.vms.len());
    for (index, cfg) in config.vms.iter().enumerate() {
        let failed = |e: std::io::Error| {
            MonitorError::VmProcess(format!("VM {}: cannot start its process: {e}", cfg.name))
        };
        let setup = (|| {
            let (vm_control, broker_control) = remote::seqpacket_pair()?;
            let (vm_handshake, handshake) = UnixStream::pair()?;
            let port = match (&cfg.net, &switch_socket) {
                (Some(net), Some(path)) if net.on_switch() => Some(
                    net_switch::socket::FrameSocket::connect(path)
                        .map_err(|e| std::io::Error::other(e.to_string()))?,
                ),
                _ => None,
            };
            let mut fds = vec![
                (vm_control.as_raw_fd(), CONTROL_FD),
                (vm_handshake.as_raw_fd(), HANDSHAKE_FD),
            ];
            if let Some(port) = &port {
                fds.push((port.as_raw_fd(), SWITCH_FD));
            }
            let child = spawn(index, &run_dir, args, fds)?;
            let exited = Arc::new(pidfd_open(child.id())?);
            Ok::<_, std::io::Error>((child, exited, handshake, broker_control))
        })();
        let (child, exited, handshake, broker_control) = match setup {
            Ok(v) => v,
            Err(e) => {
                kill_all(&mut procs);
                return Err(failed(e));
            }
        };
        let serve = serve_thread(
            &hub,
            &links,
            vm_id(index),
            broker_control,
            &exited,
            &cfg.name,
        );
        let failed = serve.as_ref().err().map(ToString::to_string);
        procs.push(VmProcess {
            name: cfg.name.clone(),
            vm: cfg.clone(),
            origin: Origin::Started { child, handshake },
            exited,
            serve: serve.ok(),
        });
        if let Some(e) = failed {
            kill_all(&mut procs);
            return Err(MonitorError::VmProcess(format!(
                "cannot start a broker thread: {e}"
            )));
        }
    }

    // Every VM built, or none starts.
    for i in 0..procs.len() {
        let mut ready = [0u8; 1];
        let built = match &mut procs[i].origin {
            Origin::Started { handshake, .. } => {
                handshake.read_exact(&mut ready).is_ok() && ready[0] == b'R'
            }
            Origin::Joined { .. } => true,
        };
        if !built {
            // That process is ending and says why itself: wait for it (it must not be
            // killed before its message is out), then stop the others.
            let failed = procs.remove(i);
            let code = wait_failed(failed);
            kill_all(&mut procs);
            return Ok(Outcome::SetupFailed(code));
        }
    }
    for p in &mut procs {
        // A child that died since it said R is seen in the loop below.
        if let Origin::Started { handshake, .. } = &mut p.origin {
            let _ = handshake.write_all(b"G");
        }
    }
    let joins = match JoinServer::bind(&run_dir) {
        Ok(joins) => joins,
        Err(e) => {
            kill_all(&mut procs);
            return Err(e);
        }
    };
    crate::report!(
        "xpmem-vmm: more VMs can join this setup: xpmem-vmm vm --broker {} --name NAME --memory SIZE --kernel PATH ...",
        joins.path().display()
    );

    // Every thread and process of the setup runs now. The wait's epoll instance is
    // created before the filter, which does not allow that.
    let watch = match watch_all(&procs, signal_evt, &joins) {
        Ok(watch) => watch,
        Err(e) => {
            kill_all(&mut procs);
            return Err(MonitorError::Events(e));
        }
    };
    if let Err(e) = crate::sandbox::install(crate::sandbox::ProcessKind::Broker, config.seccomp) {
        kill_all(&mut procs);
        return Err(MonitorError::VmProcess(e.to_string()));
    }
    let setup = Setup {
        switch_mtu: config.switch_mtu(),
        switch_socket: switch_socket.as_deref(),
        seccomp: config.seccomp,
        imports_restricted: config.vms.iter().any(|vm| vm.import_from.is_some()),
    };
    let joining = Joining {
        server: &joins,
        setup: &setup,
        hub: &hub,
        links: &links,
    };
    let outcome = wait_all(&mut procs, watch, &joining)?;
    for p in &mut procs {
        if let Some(t) = p.serve.take() {
            let _ = t.join();
        }
    }
    report_domain(&hub);
    report_switch(switch.as_mut(), config);
    let held = router.held();
    report_vsock(held, router.stop());
    drop(hub);
    Ok(outcome)
}

/// What the broker's main thread waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BrokerEvent {
    /// SIGINT or SIGTERM.
    Signal,
    /// A VM waits on the broker socket to join.
    Join,
    /// VM process `i` (index in the processes) has ended: its pidfd is readable.
    Exited(usize),
}

/// The broker's wait: the signal eventfd, the broker socket and one pidfd per VM process.
/// The pidfds and the signal are watched until they first fire: a pidfd stays readable
/// once its process has ended, and the signal eventfd is not read (later signals change
/// nothing).
fn watch_all(
    procs: &[VmProcess],
    signal_evt: &vmm_sys_util::eventfd::EventFd,
    joins: &JoinServer,
) -> Result<Watch<BrokerEvent>, event_manager::Error> {
    let mut watch = Watch::new()?;
    watch.watch(signal_evt, EventSet::IN, BrokerEvent::Signal, true)?;
    watch.watch(joins.listener_fd(), EventSet::IN, BrokerEvent::Join, false)?;
    for (i, p) in procs.iter().enumerate() {
        watch.watch(&p.exited, EventSet::IN, BrokerEvent::Exited(i), true)?;
    }
    Ok(watch)
}

/// What admitting a joining VM takes.
struct Joining<'a> {
    server: &'a JoinServer,
    setup: &'a Setup<'a>,
    hub: &'a std::sync::Arc<XpmemHub>,
    links: &'a ApertureLinks,
}

/// Admits the VM waiting on the broker socket, if it may join: its xpmem connection is
/// served and its process watched like those of the setup's own VMs.
fn join_one(
    procs: &mut Vec<VmProcess>,
    running: &mut Vec<bool>,
    watch: &mut Watch<BrokerEvent>,
    joining: &Joining<'_>,
) {
    let index = procs.len();
    let live: Vec<VmConfig> = procs
        .iter()
        .zip(running.iter())
        .filter(|(_, &r)| r)
        .map(|(p, _)| p.vm.clone())
        .collect();
    let Some(joined) = joining.server.accept(joining.setup, index, &live) else {
        return;
    };
    let name = joined.vm.name.clone();
    let exited = match pidfd_open(u32::try_from(joined.pid).unwrap_or(0)) {
        Ok(fd) => Arc::new(fd),
        Err(e) => {
            crate::report!("xpmem-vmm: VM {name} cannot join: its process: {e}");
            return;
        }
    };
    if let Err(e) = watch.watch(&exited, EventSet::IN, BrokerEvent::Exited(index), true) {
        crate::report!("xpmem-vmm: VM {name} cannot join: {e}");
        return;
    }
    let serve = serve_thread(
        joining.hub,
        joining.links,
        vm_id(index),
        joined.control,
        &exited,
        &name,
    );
    match &serve {
        Ok(_) => crate::report!(
            "xpmem-vmm: VM {name} joined the setup (VM number {}, process {})",
            index + 1,
            joined.pid
        ),
        // Its connection is closed with the failed thread's closure: the VM stops.
        Err(e) => {
            crate::report!("xpmem-vmm: VM {name} cannot join: no thread to serve it: {e}")
        }
    }
    running.push(serve.is_ok());
    procs.push(VmProcess {
        name,
        vm: joined.vm,
        origin: Origin::Joined { pid: joined.pid },
        exited,
        serve: serve.ok(),
    });
}

/// Waits until every VM process has ended (or a signal stops them all), admitting VMs
/// that join meanwhile.
fn wait_all(
    procs: &mut Vec<VmProcess>,
    mut watch: Watch<BrokerEvent>,
    joining: &Joining<'_>,
) -> Result<Outcome, MonitorError> {
    let mut clean = true;
    let mut running = vec![true; procs.len()];
    let mut interrupted = None;
    while running.contains(&true) {
        let mut fired = watch.wait().map_err(MonitorError::Events)?;
        if fired.contains(&BrokerEvent::Signal) && interrupted.is_none() {
            let signo = signals::received().unwrap_or(libc::SIGTERM);
            crate::report!(
                "xpmem-vmm: received {}, stopping {} VM(s)",
                signals::name(signo),
                running.iter().filter(|&&r| r).count()
            );
            for (p, _) in procs.iter().zip(&running).filter(|(_, &r)| r) {
                p.signal(libc::SIGTERM);
            }
            interrupted = Some(signo);
        }
        if fired.contains(&BrokerEvent::Join) {
            if interrupted.is_some() {
                // The socket stays readable until the connection is taken.
                joining.server.turn_away("the setup is stopping");
            } else {
                join_one(procs, &mut running, &mut watch, joining);
            }
        }
        // In process order, as they are reported.
        fired.sort_by_key(|e| match e {
            BrokerEvent::Signal => 0,
            BrokerEvent::Join => 1,
            BrokerEvent::Exited(i) => i + 2,
        });
        for event in fired {
            let BrokerEvent::Exited(i) = event else {
                continue;
            };
            let (Some(p), Some(alive)) = (procs.get_mut(i), running.get_mut(i)) else {
                continue;
            };
            *alive = false;
            let child = match &mut p.origin {
                Origin::Started { child, .. } => child,
                Origin::Joined { pid } => {
                    if interrupted.is_none() {
                        crate::report!(
                            "xpmem-vmm: VM {} left the setup (its process {pid} ended)",
                            p.name
                        );
                    }
                    continue;
                }
            };
            match child.wait() {
                Ok(status) => {
                    if !status.success() && interrupted.is_none() {
                        crate::report!(
                            "xpmem-vmm: VM {}: its process {}",
                            p.name,
                            describe(status)
                        );
                    }
                    clean &= status.success();
                }
                Err(e) => {
                    crate::report!("xpmem-vmm: VM {}: cannot wait for its process: {e}", p.name);
                    clean = false;
                }
            }
        }
    }
    Ok(match interrupted {
        Some(signo) => Outcome::Interrupted(signo),
        None => Outcome::AllEnded { clean },
    })
}
