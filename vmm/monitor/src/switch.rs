//! The setup's VM-to-VM switch when the monitor runs it itself: a
//! [`net_switch::SwitchServer`] on its own thread, listening on
//! `switch.sock` in a runtime directory the monitor creates (mode 0700,
//! under `$XDG_RUNTIME_DIR` or the temp directory) and removes at the end.
//! Each VM's virtio-net device connects to that socket like any other
//! client would, so a VM in another process can connect the same way.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use net_switch::{Switch, SwitchConfig, SwitchServer};
use thiserror::Error;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[derive(Debug, Error)]
pub enum SwitchError {
    #[error("cannot create the runtime directory {path}: {err} (set XDG_RUNTIME_DIR to a writable directory)")]
    RuntimeDir { path: PathBuf, err: std::io::Error },
    #[error("cannot start the switch: {0}")]
    Server(#[from] net_switch::ServerError),
    #[error("cannot start the switch thread: {0}")]
    Thread(std::io::Error),
}

/// The switch thread and its socket directory.
pub struct RunningSwitch {
    socket: PathBuf,
    dir: PathBuf,
    stop: EventFd,
    thread: Option<JoinHandle<Result<Switch, net_switch::ServerError>>>,
}

/// The directory for this monitor's sockets.
pub fn runtime_dir() -> PathBuf {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    base.join(format!("xpmem-vmm-{}", std::process::id()))
}

/// The runtime directory when the monitor needs it for other sockets
/// (vsock): created (mode 0700) unless the switch made it, removed when
/// dropped.
pub struct RunDir(PathBuf);

impl RunDir {
    pub fn create(dir: &Path) -> Result<Self, SwitchError> {
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(err) => {
                return Err(SwitchError::RuntimeDir {
                    path: dir.to_path_buf(),
                    err,
                })
            }
        }
        Ok(RunDir(dir.to_path_buf()))
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The switch a setup's VMs connect to: started here (on a thread, in a new runtime
/// directory) unless `[switch] socket` names one; none without network devices.
/// Returns the running switch, if started here, and the socket to connect to.
pub fn start_for(
    config: &crate::config::Config,
) -> Result<(Option<RunningSwitch>, Option<PathBuf>), SwitchError> {
    use crate::config::SwitchSetup;
    match &config.switch {
        Some(SwitchSetup { socket: None, mtu }) => {
            let running = RunningSwitch::start(*mtu)?;
            let socket = running.socket().to_path_buf();
            Ok((Some(running), Some(socket)))
        }
        Some(SwitchSetup {
            socket: Some(path), ..
        }) => Ok((None, Some(path.clone()))),
        None => Ok((None, None)),
    }
}

impl RunningSwitch {
    /// Starts a switch with `mtu` listening in a new runtime directory.
    pub fn start(mtu: u16) -> Result<Self, SwitchError> {
        let dir = runtime_dir();
        // Its name holds this process's pid, so a directory that is already there is the
        // leftover of a dead process (one killed by SIGKILL) whose pid was reused.
        if dir.is_dir() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|err| SwitchError::RuntimeDir {
                path: dir.clone(),
                err,
            })?;
        let cleanup = |e: SwitchError| {
            let _ = std::fs::remove_dir_all(&dir);
            e
        };
        let socket = dir.join("switch.sock");
        let config = SwitchConfig {
            mtu: usize::from(mtu),
            ..SwitchConfig::default()
        };
        let server = SwitchServer::bind(config, &socket).map_err(|e| cleanup(e.into()))?;
        let stop = EventFd::new(EFD_NONBLOCK).map_err(|e| cleanup(SwitchError::Thread(e)))?;
        let thread_stop = stop
            .try_clone()
            .map_err(|e| cleanup(SwitchError::Thread(e)))?;
        let thread = std::thread::Builder::new()
            .name("switch".into())
            .spawn(move || server.run(&thread_stop))
            .map_err(|e| cleanup(SwitchError::Thread(e)))?;
        Ok(Self {
            socket,
            dir,
            stop,
            thread: Some(thread),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Stops the switch and removes its directory; returns its counters,
    /// one line per port.
    pub fn stop(&mut self) -> Option<String> {
        let thread = self.thread.take()?;
        let _ = self.stop.write(1);
        let report = match thread.join() {
            Ok(Ok(switch)) => Some(switch.report()),
            Ok(Err(e)) => Some(format!("the switch failed: {e}\n")),
            Err(_) => Some("the switch thread panicked\n".to_string()),
        };
        let _ = std::fs::remove_dir_all(&self.dir);
        report
    }
}

impl Drop for RunningSwitch {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `xpmem-vmm switch --socket PATH`: runs a switch in the foreground until
/// `stop` (the monitor's signal eventfd) is readable; returns its counters.
pub fn serve(socket: &Path, mtu: u16, stop: &EventFd) -> Result<String, SwitchError> {
    let config = SwitchConfig {
        mtu: usize::from(mtu),
        ..SwitchConfig::default()
    };
    let server = SwitchServer::bind(config, socket)?;
    Ok(server.run(stop)?.report())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;
    use net_switch::socket::{FrameSocket, Recv};

    #[test]
    fn the_monitor_switch_forwards_between_connected_ports_and_cleans_up() {
        let mut sw = RunningSwitch::start(1500).unwrap();
        let dir = sw.dir.clone();
        let a = FrameSocket::connect(sw.socket()).unwrap();
        let b = FrameSocket::connect(sw.socket()).unwrap();
        // A plain header, then a 60-byte broadcast frame.
        let h = net_switch::NET_HDR_LEN;
        let mut f = vec![0u8; h + 60];
        f[h..h + 6].copy_from_slice(&[0xff; 6]);
        f[h + 6..h + 12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        a.send(&f).unwrap();
        let mut buf = [0u8; 2048];
        let mut got = None;
        // Bounded wait: 500 polls of at most 10 ms.
        for _ in 0..500 {
            if let Recv::Frame(n) = b.recv(&mut buf).unwrap() {
                got = Some(n);
                break;
            }
            let mut p = [libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&b),
                events: libc::POLLIN,
                revents: 0,
            }];
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(p.as_mut_ptr(), 1, 10) };
        }
        assert_eq!(got, Some(h + 60));
        assert_eq!(&buf[..h + 60], &f[..]);
        let report = sw.stop().unwrap();
        assert!(
            report.contains("port 1: rx_frames=1 rx_bytes=60"),
            "{report}"
        );
        assert!(
            report.contains("port 2: rx_frames=0 rx_bytes=0 tx_frames=1"),
            "{report}"
        );
        assert!(!dir.exists(), "the runtime directory is removed");
        assert_eq!(sw.stop(), None);
    }

    #[test]
    fn the_standalone_switch_serves_until_its_stop_eventfd_fires() {
        let dir = std::env::temp_dir().join(format!("xpmem-vmm-switch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("switch.sock");
        let stop = EventFd::new(EFD_NONBLOCK).unwrap();
        let stop2 = stop.try_clone().unwrap();
        let path = socket.clone();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let r = serve(&path, 1500, &stop2);
            let _ = done_tx.send(());
            r
        });
        // Connected and idle (nothing learned): it waits for the stop eventfd alone.
        let mut port = None;
        for _ in 0..500 {
            if let Ok(p) = FrameSocket::connect(&socket) {
                port = Some(p);
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(port.is_some(), "the switch did not listen");
        let wait = std::time::Duration::from_millis(200);
        assert!(done_rx.recv_timeout(wait).is_err(), "it ended by itself");
        stop.write(1).unwrap();
        done_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the switch did not stop on its eventfd");
        let report = thread.join().unwrap().unwrap();
        assert!(report.contains("port 1: rx_frames=0"), "{report}");
        assert!(!socket.exists(), "the socket file is removed");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
