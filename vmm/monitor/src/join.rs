//! A VM that joins a running setup, and leaves it when it ends (issue 12 item 1):
//! `xpmem-vmm vm --broker SOCKET VM-FLAGS...`.
//!
//! The broker listens on `broker.sock` in its runtime directory (`SOCK_SEQPACKET`). A
//! joining process connects, sends its VM flags and working directory
//! ([`JoinRequest`]); the broker reads them as VM number `index + 1` of the setup
//! ([`Config::joining_vm`]: CID, address and MAC from that index), checks that the VM
//! shares nothing it may not with the VMs running now ([`Config::admit`]), and answers
//! ([`JoinReply`]) with the index, the switch's MTU, the guests' host names and, for a VM
//! on the switch, a switch port it connected. The same connection then carries the VM's
//! xpmem device exactly as the control connection of a VM process the broker started
//! ([`virtio_xpmem_device::remote::serve_vm_process`]), so a joined VM is served, and
//! cleaned up when its process ends, like any other. It leaves the setup when its guest
//! powers off or its process dies; it stops when the broker goes away.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use virtio_xpmem_device::remote::protocol;

use crate::cli::{self, JoinArgs};
use crate::config::{Config, VmConfig};
use crate::monitor::{MonitorError, Outcome};
use crate::sandbox::SeccompMode;
use crate::vm_process::{self, VmStart};

/// The broker socket's name in the runtime directory.
pub const BROKER_SOCKET: &str = "broker.sock";

/// How long either side waits for the other's message while a VM joins.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What a joining process asks.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct JoinRequest {
    /// Its VM flags (`--name`, `--memory`, ...), as on its command line.
    pub args: Vec<String>,
    /// Where relative paths among them start.
    pub cwd: PathBuf,
}

/// The broker's answer.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum JoinReply {
    Accepted {
        index: u32,
        switch_mtu: u16,
        hosts: Option<String>,
        /// A switch port comes with the reply.
        switch_port: bool,
        /// The setup's `[monitor] seccomp`.
        seccomp: SeccompMode,
    },
    Refused(String),
}

fn join_error(what: impl std::fmt::Display) -> MonitorError {
    MonitorError::VmProcess(format!("cannot join the setup: {what}"))
}

/// `xpmem-vmm vm --broker SOCKET VM-FLAGS...`: `args` are the arguments after `vm`.
pub fn run(args: Vec<String>) -> Result<Outcome, MonitorError> {
    vm_process::abort_on_panic("VM process");
    let JoinArgs { broker, spec } = match cli::parse_join(args.iter().cloned()) {
        Ok(Some(join)) => join,
        Ok(None) => {
            print!("{}", cli::USAGE);
            return Ok(Outcome::AllEnded { clean: true });
        }
        Err(e) => return Err(MonitorError::VmProcess(e.to_string())),
    };
    let vm_flags = cli::without_broker(&args);
    let cwd = std::env::current_dir().map_err(join_error)?;
    let run_dir = broker
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let connection = net_switch::socket::FrameSocket::connect(&broker)
        .map_err(|e| join_error(format!("{e}; is a setup running with that broker socket?")))?;
    let control = UnixStream::from(OwnedFd::from(connection));
    control.set_nonblocking(false).map_err(join_error)?;
    control
        .set_read_timeout(Some(JOIN_TIMEOUT))
        .map_err(join_error)?;
    let request = JoinRequest {
        args: vm_flags,
        cwd: cwd.clone(),
    };
    protocol::send(&control, &request, &[]).map_err(join_error)?;
    let (reply, mut fds) = match protocol::recv::<JoinReply>(&control) {
        Ok(Some(answer)) => answer,
        Ok(None) => return Err(join_error("the broker closed the connection")),
        Err(e) => return Err(join_error(e)),
    };
    control.set_read_timeout(None).map_err(join_error)?;
    let (index, switch_mtu, hosts, switch_port, seccomp) = match reply {
        JoinReply::Accepted {
            index,
            switch_mtu,
            hosts,
            switch_port,
            seccomp,
        } => (index, switch_mtu, hosts, switch_port, seccomp),
        JoinReply::Refused(why) => return Err(join_error(why)),
    };
    let index = usize::try_from(index).map_err(join_error)?;
    let mut vm = Config::joining_vm(&spec, &cwd, index, switch_mtu)
        .map_err(|e| MonitorError::VmProcess(e.to_string()))?;
    vm.hosts = hosts;
    let switch_port = match (switch_port, fds.pop()) {
        (true, Some(fd)) => Some(net_switch::socket::FrameSocket::from(fd)),
        (false, None) => None,
        _ => {
            return Err(join_error(
                "the broker's reply came without its switch port",
            ))
        }
    };
    let start = VmStart {
        index,
        run_dir: &run_dir,
        cfg: &vm,
        stdout_consoles: usize::from(vm.console == crate::config::Console::Stdout),
        seccomp,
        handshake: None,
    };
    vm_process::run_vm(start, control, switch_port)
}

/// A VM the broker admitted: serve `control` as its xpmem connection.
pub(crate) struct Admitted {
    pub vm: VmConfig,
    pub control: UnixStream,
    /// The joining process (the connection's peer).
    pub pid: i32,
}

/// What the broker needs to admit a VM.
pub(crate) struct Setup<'a> {
    pub switch_mtu: u16,
    /// The switch to connect a joining VM's port to, if the setup has one.
    pub switch_socket: Option<&'a Path>,
    pub seccomp: SeccompMode,
    /// Some VM of the setup has `import_from`: the import policy is fixed at start and
    /// has no place for a VM that joins.
    pub imports_restricted: bool,
}

/// The broker's listening socket.
pub(crate) struct JoinServer {
    listener: net_switch::socket::FrameListener,
}

impl JoinServer {
    pub fn bind(run_dir: &Path) -> Result<Self, MonitorError> {
        let listener = net_switch::socket::FrameListener::bind(&run_dir.join(BROKER_SOCKET))
            .map_err(|e| MonitorError::VmProcess(format!("cannot open the broker socket: {e}")))?;
        Ok(Self { listener })
    }

    pub fn path(&self) -> &Path {
        self.listener.path()
    }

    pub fn listener_fd(&self) -> &impl AsRawFd {
        &self.listener
    }

    /// Tells a VM waiting on the socket that it may not join now (the setup is stopping).
    pub fn turn_away(&self, why: &str) {
        if let Ok(Some(connection)) = self.listener.accept() {
            let control = UnixStream::from(OwnedFd::from(connection));
            refuse(&control, why.to_string());
        }
    }

    /// Takes one joining VM waiting on the socket, if any: VM number `index + 1`, checked
    /// against the VMs running now, `live`. A refused VM is told why (and the broker
    /// reports it); `None` then, as when nobody was waiting.
    pub fn accept(&self, setup: &Setup<'_>, index: usize, live: &[VmConfig]) -> Option<Admitted> {
        let connection = match self.listener.accept() {
            Ok(Some(c)) => c,
            Ok(None) => return None,
            Err(e) => {
                crate::report!("xpmem-vmm: broker socket: cannot accept a joining VM: {e}");
                return None;
            }
        };
        let pid = connection.peer_pid();
        let control = UnixStream::from(OwnedFd::from(connection));
        match admit(&control, setup, index, live) {
            Ok((vm, port)) => {
                let Some(pid) = pid else {
                    refuse(&control, "its process id is unknown".into());
                    return None;
                };
                let reply = JoinReply::Accepted {
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                    switch_mtu: setup.switch_mtu,
                    hosts: vm.hosts.clone(),
                    switch_port: port.is_some(),
                    seccomp: setup.seccomp,
                };
                let fds: Vec<_> = port.iter().map(AsRawFd::as_raw_fd).collect();
                if let Err(e) = protocol::send(&control, &reply, &fds) {
                    crate::report!("xpmem-vmm: VM {} could not join: {e}", vm.name);
                    return None;
                }
                let _ = control.set_read_timeout(None);
                let _ = control.set_write_timeout(None);
                Some(Admitted { vm, control, pid })
            }
            Err(why) => {
                let who = pid.map_or_else(|| "?".to_string(), |p| p.to_string());
                crate::report!("xpmem-vmm: a VM (process {who}) may not join: {why}");
                refuse(&control, why);
                None
            }
        }
    }
}

fn refuse(control: &UnixStream, why: String) {
    let _ = protocol::send(control, &JoinReply::Refused(why), &[]);
}

/// Reads a joining VM's request and checks it; returns its configuration (host names
/// set) and its switch port, if it has one.
fn admit(
    control: &UnixStream,
    setup: &Setup<'_>,
    index: usize,
    live: &[VmConfig],
) -> Result<(VmConfig, Option<net_switch::socket::FrameSocket>), String> {
    let io = |e: io::Error| e.to_string();
    if setup.imports_restricted {
        return Err(
            "this setup restricts imports (import_from in its config), and the policy has no place for a VM that joins; start it with the setup instead".into(),
        );
    }
    control.set_nonblocking(false).map_err(io)?;
    control.set_read_timeout(Some(JOIN_TIMEOUT)).map_err(io)?;
    control.set_write_timeout(Some(JOIN_TIMEOUT)).map_err(io)?;
    let request = match protocol::recv::<JoinRequest>(control) {
        Ok(Some((request, _))) => request,
        Ok(None) => return Err("it hung up before asking".into()),
        Err(e) => return Err(e.to_string()),
    };
    let spec = cli::parse_vm_spec(request.args.iter().cloned()).map_err(|e| e.to_string())?;
    let mut vm = Config::joining_vm(&spec, &request.cwd, index, setup.switch_mtu)
        .map_err(|e| e.to_string())?;
    vm.hosts = Config::admit(&vm, live).map_err(|e| e.to_string())?;
    let port = match (vm.net.is_some_and(|n| n.on_switch()), setup.switch_socket) {
        (false, _) => None,
        (true, Some(switch)) => Some(
            net_switch::socket::FrameSocket::connect(switch)
                .map_err(|e| format!("cannot connect its switch port: {e}"))?,
        ),
        (true, None) => return Err(
            "this setup has no switch (none of its VMs has a network device); join with --no-net"
                .into(),
        ),
    };
    Ok((vm, port))
}
