//! The broker's side: [`RemoteAperture`], the aperture backend that asks each VM's process
//! to map and unmap its own windows, and [`serve_vm_process`], which runs one VM process's
//! virtio-xpmem device in the broker on the memory, queues and eventfds that process sent
//! (one thread per VM process, waiting on an `event-manager` loop of its own).

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use event_manager::{
    EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberId, SubscriberOps,
};
use virtio_mmio_transport::{ActivateContext, InterruptReason, VirtioDevice, VirtioInterrupt};
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use xpmem_domain::{VmId, Window};

use super::protocol::{
    self, ApertureOp, ApertureReply, FromBroker, ToBroker, WireApertureError, WireWindow,
};
use super::RemoteError;
use crate::aperture::{ApertureBackend, ApertureError, MapStats, VmRamLayout, VmWindows};
use crate::XpmemHub;

/// How long a VM process may take to answer an aperture request before the broker kills
/// it: its answer is only an mmap, so silence means it is stopped or broken, and the
/// other VMs must not wait for it.
pub const APERTURE_REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a killed VM process may take to close its connections.
const EXIT_WAIT: Duration = Duration::from_secs(30);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Link {
    sock: UnixStream,
    /// The VM process (its pidfd), killed if it stops answering.
    process: Option<Arc<OwnedFd>>,
    /// Exporters whose RAM this process has been given.
    exporters: HashSet<VmId>,
    /// The connection closed: the process has exited (see [`RemoteAperture`]).
    gone: bool,
}

/// The aperture connections of the VM processes, shared by the serving threads (which
/// add and remove them) and the [`RemoteAperture`] inside the hub. The map's mutex is
/// held only to look a link up, add or remove one, never across a request, so a VM
/// that joins or leaves does not wait for another VM process's answer; each link has
/// its own mutex, held for one request and its answer. Lock order: the hub's state,
/// then a link; the map's mutex is a leaf.
#[derive(Clone)]
pub struct ApertureLinks {
    map: Arc<Mutex<HashMap<VmId, Arc<Mutex<Link>>>>>,
    /// How long a VM process may take to answer ([`APERTURE_REPLY_TIMEOUT`]).
    reply_timeout: Duration,
}

impl Default for ApertureLinks {
    fn default() -> Self {
        Self {
            map: Arc::default(),
            reply_timeout: APERTURE_REPLY_TIMEOUT,
        }
    }
}

/// What a request on a link came back with.
enum Answer {
    Reply(ApertureReply),
    /// The process has exited: nothing of it maps anything any more.
    Gone,
}

impl ApertureLinks {
    fn insert(&self, vm: VmId, sock: UnixStream, process: Option<Arc<OwnedFd>>) -> io::Result<()> {
        sock.set_read_timeout(Some(self.reply_timeout))?;
        let link = Link {
            sock,
            process,
            exporters: HashSet::new(),
            gone: false,
        };
        lock(&self.map).insert(vm, Arc::new(Mutex::new(link)));
        Ok(())
    }

    fn remove(&self, vm: VmId) {
        lock(&self.map).remove(&vm);
    }

    /// `vm`'s link, if its process is connected (the map's mutex only for the lookup).
    fn link(&self, vm: VmId) -> Option<Arc<Mutex<Link>>> {
        lock(&self.map).get(&vm).cloned()
    }

    /// Every link, each with its VM.
    fn all(&self) -> Vec<(VmId, Arc<Mutex<Link>>)> {
        lock(&self.map)
            .iter()
            .map(|(vm, l)| (*vm, l.clone()))
            .collect()
    }

    /// Sends `op` to `vm`'s process and waits for its answer. A process that does not
    /// answer in time is killed; a closed connection means the process has exited.
    fn ask(&self, vm: VmId, op: &ApertureOp, fds: &[i32]) -> Result<Answer, ApertureError> {
        let link = self.link(vm).ok_or(ApertureError::UnknownVm(vm))?;
        let mut link = lock(&link);
        let link = &mut *link;
        if link.gone {
            return Ok(Answer::Gone);
        }
        let answer = match protocol::send(&link.sock, op, fds) {
            Ok(()) => protocol::recv::<ApertureReply>(&link.sock),
            Err(e) => Err(e),
        };
        match answer {
            Ok(Some((reply, _))) => Ok(Answer::Reply(reply)),
            Ok(None) => {
                link.gone = true;
                Ok(Answer::Gone)
            }
            // Its end is closed: the process has exited (the aperture thread never closes
            // it while the process lives), as when a VM process fails its set-up.
            Err(RemoteError::Io(e)) if closed(&e) => {
                log::debug!("virtio-xpmem: the process of VM {vm:?} has exited ({e})");
                link.gone = true;
                Ok(Answer::Gone)
            }
            Err(e) => {
                log::error!("virtio-xpmem: the process of VM {vm:?} did not answer an aperture request ({e}); killing it");
                wait_gone(link, vm)?;
                Ok(Answer::Gone)
            }
        }
    }
}

/// The peer's end of a connection is closed: its process has exited.
fn closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

/// Kills a VM process that stopped answering and waits until its connection closes,
/// which happens only after the kernel has torn down its memory (a process's files
/// close after its address space on exit).
fn wait_gone(link: &mut Link, vm: VmId) -> Result<(), ApertureError> {
    if let Some(pidfd) = &link.process {
        // Through its pidfd: a process that has exited since cannot be mistaken for
        // another that got its pid.
        // SAFETY: pidfd_send_signal(2) with a pidfd this process holds, no siginfo, no
        // flags.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
    }
    let _ = link.sock.set_read_timeout(Some(EXIT_WAIT));
    loop {
        match protocol::recv::<ApertureReply>(&link.sock) {
            Ok(Some(_)) => continue,
            // Closed; "reset" when it died with our request unread.
            Ok(None) => {
                link.gone = true;
                return Ok(());
            }
            Err(RemoteError::Io(e)) if closed(&e) => {
                link.gone = true;
                return Ok(());
            }
            Err(RemoteError::Decode(_)) => continue,
            Err(e) => {
                return Err(ApertureError::Remote {
                    vm,
                    message: format!("the process neither answers nor exits ({e})"),
                })
            }
        }
    }
}

fn wire_window(w: Window) -> WireWindow {
    match w {
        Window::Rw => 0,
        Window::Ro => 1,
    }
}

fn stats_or_error(vm: VmId, reply: ApertureReply) -> Result<MapStats, ApertureError> {
    match reply {
        ApertureReply::Done { mmap_calls, pages } => Ok(MapStats { mmap_calls, pages }),
        ApertureReply::Failed(WireApertureError::Budget { needed, budget }) => {
            Err(ApertureError::MappingBudget { vm, needed, budget })
        }
        ApertureReply::Failed(WireApertureError::Unrestored(message)) => {
            Err(ApertureError::Unrestored {
                vm,
                source: Box::new(ApertureError::Remote { vm, message }),
            })
        }
        ApertureReply::Failed(WireApertureError::Other(message)) => {
            Err(ApertureError::Remote { vm, message })
        }
    }
}

/// The aperture backend of a broker: every VM's windows live in that VM's process, which
/// maps and unmaps them when asked ([`super::vm`]'s aperture thread). Exporter RAM is
/// handed to an importer's process (its memfd, by `SCM_RIGHTS`) the first time it maps
/// from it, and taken back when the exporter leaves.
///
/// A process whose connection has closed has exited, and with it its mappings: an unmap
/// or revocation of its windows then succeeds, a map fails.
pub struct RemoteAperture {
    links: ApertureLinks,
    ram: HashMap<VmId, VmRamLayout>,
}

impl RemoteAperture {
    pub fn new(links: ApertureLinks) -> Self {
        Self {
            links,
            ram: HashMap::new(),
        }
    }

    fn give_exporter(&mut self, importer: VmId, exporter: VmId) -> Result<(), ApertureError> {
        let has = self
            .links
            .link(importer)
            .is_some_and(|l| lock(&l).exporters.contains(&exporter));
        if has {
            return Ok(());
        }
        let ram = self
            .ram
            .get(&exporter)
            .ok_or(ApertureError::UnknownVm(exporter))?;
        let (regions, files) = protocol::wire_ram(ram).map_err(|e| ApertureError::Remote {
            vm: exporter,
            message: e.to_string(),
        })?;
        let fds: Vec<i32> = files.iter().map(|f| f.as_raw_fd()).collect();
        let op = ApertureOp::AddExporter {
            vm: exporter.0,
            ram: regions,
            ram_files: u8::try_from(fds.len()).unwrap_or(u8::MAX),
        };
        match self.links.ask(importer, &op, &fds)? {
            Answer::Reply(r) => {
                stats_or_error(importer, r)?;
                if let Some(l) = self.links.link(importer) {
                    lock(&l).exporters.insert(exporter);
                }
                Ok(())
            }
            Answer::Gone => Err(gone(importer)),
        }
    }
}

fn gone(vm: VmId) -> ApertureError {
    ApertureError::Remote {
        vm,
        message: "the VM's process has exited".into(),
    }
}

impl ApertureBackend for RemoteAperture {
    fn add_vm(
        &mut self,
        vm: VmId,
        ram: VmRamLayout,
        windows: VmWindows,
    ) -> Result<(), ApertureError> {
        if self.ram.contains_key(&vm) {
            return Err(ApertureError::DuplicateVm(vm));
        }
        if let VmWindows::Local(_) = windows {
            return Err(ApertureError::Remote {
                vm,
                message: "a broker runs no VM in its own process".into(),
            });
        }
        self.ram.insert(vm, ram);
        Ok(())
    }

    fn remove_vm(&mut self, vm: VmId) -> Result<(), ApertureError> {
        self.revoke_all(vm)?;
        self.ram.remove(&vm);
        // Other processes close this VM's RAM files: nothing of them maps it any more
        // (the domain unmapped every attachment before it removed the VM).
        let holders: Vec<VmId> = self
            .links
            .all()
            .into_iter()
            .filter(|(_, l)| lock(l).exporters.contains(&vm))
            .map(|(id, _)| id)
            .collect();
        for importer in holders {
            if let Err(e) = self
                .links
                .ask(importer, &ApertureOp::ForgetExporter { vm: vm.0 }, &[])
            {
                log::warn!(
                    "virtio-xpmem: VM {importer:?} could not drop the RAM of VM {vm:?}: {e}"
                );
            }
            if let Some(l) = self.links.link(importer) {
                lock(&l).exporters.remove(&vm);
            }
        }
        Ok(())
    }

    fn revoke_window(&mut self, vm: VmId, window: Window) -> Result<MapStats, ApertureError> {
        let op = ApertureOp::RevokeWindow {
            window: wire_window(window),
        };
        match self.links.ask(vm, &op, &[])? {
            Answer::Reply(r) => stats_or_error(vm, r),
            Answer::Gone => Ok(MapStats::default()),
        }
    }

    fn map(
        &mut self,
        importer: VmId,
        window: Window,
        aperture_page: u64,
        exporter: VmId,
        exporter_gpa: u64,
        npages: u64,
        writable: bool,
    ) -> Result<MapStats, ApertureError> {
        self.give_exporter(importer, exporter)?;
        let op = ApertureOp::Map {
            window: wire_window(window),
            page: aperture_page,
            exporter: exporter.0,
            gpa: exporter_gpa,
            npages,
            writable,
        };
        match self.links.ask(importer, &op, &[])? {
            Answer::Reply(r) => stats_or_error(importer, r),
            Answer::Gone => Err(gone(importer)),
        }
    }

    fn unmap(
        &mut self,
        importer: VmId,
        window: Window,
        aperture_page: u64,
        npages: u64,
    ) -> Result<MapStats, ApertureError> {
        let op = ApertureOp::Unmap {
            window: wire_window(window),
            page: aperture_page,
            npages,
        };
        match self.links.ask(importer, &op, &[])? {
            Answer::Reply(r) => stats_or_error(importer, r),
            Answer::Gone => Ok(MapStats::default()),
        }
    }
}

/// The interrupt of a device whose transport is in another process: the broker writes the
/// call eventfd, the VM process's event thread raises the interrupt.
struct CallInterrupt(EventFd);

impl VirtioInterrupt for CallInterrupt {
    fn trigger(&self, _reason: InterruptReason) -> io::Result<()> {
        self.0.write(1)
    }
}

fn eventfd(fd: OwnedFd) -> EventFd {
    use std::os::fd::IntoRawFd;
    // SAFETY: the descriptor came with the Hello message as an eventfd and is owned by
    // nothing else; a descriptor of another kind only makes reads and writes fail.
    unsafe { <EventFd as std::os::fd::FromRawFd>::from_raw_fd(fd.into_raw_fd()) }
}

/// Guest memory of a VM process: its RAM files mapped here (`MAP_SHARED`), so the device
/// reads and writes its queues in place.
fn guest_memory(ram: &VmRamLayout) -> Result<GuestMemoryMmap, RemoteError> {
    let ranges: Vec<_> = ram
        .regions()
        .iter()
        .map(|r| {
            Ok((
                GuestAddress(r.guest_base),
                usize::try_from(r.len)
                    .map_err(|_| RemoteError::Protocol("RAM region too large".into()))?,
                Some(FileOffset::from_arc(r.file.clone(), r.file_offset)),
            ))
        })
        .collect::<Result<_, RemoteError>>()?;
    GuestMemoryMmap::from_ranges_with_files(ranges)
        .map_err(|e| RemoteError::Protocol(format!("cannot map the VM's RAM: {e}")))
}

fn queue(q: &protocol::WireQueue, mem: &GuestMemoryMmap) -> Result<Queue, String> {
    let state = QueueState {
        max_size: crate::QUEUE_SIZE,
        next_avail: q.next_avail,
        next_used: q.next_used,
        event_idx_enabled: q.event_idx,
        size: q.size,
        ready: q.ready,
        desc_table: q.desc_table,
        avail_ring: q.avail_ring,
        used_ring: q.used_ring,
    };
    let queue = Queue::try_from(state).map_err(|e| format!("bad queue: {e}"))?;
    if !queue.is_valid(mem) {
        return Err("queue rings are not inside guest RAM or not ready".into());
    }
    Ok(queue)
}

/// Runs VM `vm`'s virtio-xpmem device for the VM process at the other end of `control`
/// (`process`, its pidfd: killed if it stops answering aperture requests) until that connection
/// closes; then the VM leaves the domain like a VM whose device was dropped. Returns an
/// error for a process that breaks the protocol (its VM has left the domain then, too).
pub fn serve_vm_process(
    hub: &Arc<XpmemHub>,
    links: &ApertureLinks,
    vm: VmId,
    control: UnixStream,
    process: Option<Arc<OwnedFd>>,
) -> Result<(), RemoteError> {
    let (ram, ram_files, rw_base, rw_len, ro_base, ro_len, mut fds) =
        match protocol::recv::<ToBroker>(&control)? {
            Some((
                ToBroker::Hello {
                    ram,
                    ram_files,
                    rw_base,
                    rw_len,
                    ro_base,
                    ro_len,
                },
                fds,
            )) => (ram, ram_files, rw_base, rw_len, ro_base, ro_len, fds),
            // The process ended before its VM was built: it says why itself, and it
            // left nothing here.
            None => return Ok(()),
            Some(_) => {
                return Err(RemoteError::Protocol(
                    "the first message is not Hello".into(),
                ))
            }
        };
    let nfiles = usize::from(ram_files);
    if fds.len() != nfiles + 4 {
        return Err(RemoteError::Protocol(format!(
            "Hello came with {} descriptors, {} expected",
            fds.len(),
            nfiles + 4
        )));
    }
    let rest = fds.split_off(nfiles);
    let layout = protocol::layout_from_wire(&ram, fds)?;
    let mem = guest_memory(&layout)?;
    let mut rest = rest.into_iter();
    let (Some(kick_req), Some(kick_ev), Some(call), Some(aperture)) =
        (rest.next(), rest.next(), rest.next(), rest.next())
    else {
        return Err(RemoteError::Protocol("Hello lacks its eventfds".into()));
    };
    let kicks = [eventfd(kick_req), eventfd(kick_ev)];
    let interrupt: Arc<dyn VirtioInterrupt> = Arc::new(CallInterrupt(eventfd(call)));
    links
        .insert(vm, UnixStream::from(aperture), process)
        .map_err(RemoteError::Io)?;
    let geometry = crate::aperture::WindowGeometry {
        rw_base,
        rw_len,
        ro_base,
        ro_len,
    };
    let mut device = match hub.add_vm(vm, layout, VmWindows::Remote(geometry)) {
        Ok(d) => d,
        Err(e) => {
            links.remove(vm);
            let _ = protocol::send(&control, &FromBroker::Failed(e.to_string()), &[]);
            return Err(RemoteError::Protocol(e.to_string()));
        }
    };
    let mut config = vec![0u8; core::mem::size_of::<virtio_xpmem_wire::VirtioXpmemConfig>()];
    device.read_config(0, &mut config);
    let welcome = FromBroker::Welcome {
        config,
        features: device.device_features(),
    };
    // The wait is set up before the Welcome (see ServeEvents).
    let events = ServeEvents::new(&control, kicks);
    if let Err(e) = &events {
        let _ = protocol::send(&control, &FromBroker::Failed(e.to_string()), &[]);
    }
    let result = events.and_then(|events| {
        protocol::send(&control, &welcome, &[])?;
        serve_loop(hub, vm, &mut device, &control, events, &mem, &interrupt)
    });
    // The device's drop removes the VM from the domain: its segments are revoked, its
    // attachments unmapped, everything it held released.
    drop(device);
    links.remove(vm);
    result
}

/// A broker thread's wait ([`serve_loop`]): one VM process's two kick eventfds (requestq,
/// eventq) and its control connection, on an `event-manager` loop of their own
/// (level-triggered: what stays readable is reported again next round, as `poll(2)`
/// reported it). The subscriber only records what fired; the loop handles it in a fixed
/// order, the kicks before the control connection.
struct Ready {
    /// Queue 0's kick, queue 1's kick, the control connection: the index is the event's
    /// data.
    fds: [RawFd; 3],
    fired: [bool; 3],
    init_error: Option<event_manager::Error>,
}

/// The control connection's index in [`Ready`].
const CONTROL: usize = 2;

impl MutEventSubscriber for Ready {
    fn init(&mut self, ops: &mut EventOps) {
        for (data, fd) in (0u32..).zip(self.fds) {
            if let Err(e) = ops.add(Events::with_data_raw(fd, data, EventSet::IN)) {
                self.init_error.get_or_insert(e);
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        // Readable, hung up or in error: the loop looks.
        let slot = usize::try_from(events.data())
            .ok()
            .and_then(|i| self.fired.get_mut(i));
        if let Some(fired) = slot {
            *fired = true;
        }
    }
}

/// What one round of a broker thread brought.
struct Round {
    /// The queues whose kick fired (its eventfd was read).
    kicked: [bool; 2],
    /// The control connection is readable (or hung up).
    control: bool,
}

/// The epoll instance of one broker thread and the kick eventfds it reads.
///
/// It is created before the Welcome goes out ([`serve_vm_process`]): the VM process
/// reports itself built only after the Welcome, and the broker installs its seccomp
/// filter, which does not allow `epoll_create1`, only once every VM process has done so.
/// While serving, the loop calls only `epoll_wait` (and `epoll_ctl` never again).
struct ServeEvents {
    manager: EventManager<Ready>,
    id: SubscriberId,
    kicks: [EventFd; 2],
}

impl ServeEvents {
    fn new(control: &UnixStream, kicks: [EventFd; 2]) -> Result<Self, RemoteError> {
        let mut manager = EventManager::new_with_capacity(3).map_err(RemoteError::Events)?;
        let id = manager.add_subscriber(Ready {
            fds: [
                kicks[0].as_raw_fd(),
                kicks[1].as_raw_fd(),
                control.as_raw_fd(),
            ],
            fired: [false; 3],
            init_error: None,
        });
        let ready = manager.subscriber_mut(id).map_err(RemoteError::Events)?;
        if let Some(e) = ready.init_error.take() {
            return Err(RemoteError::Events(e));
        }
        Ok(ServeEvents { manager, id, kicks })
    }

    /// Blocks until a kick fired or the control connection is readable (a signal's
    /// interruption is not an answer); reads the kicks that fired.
    fn wait(&mut self) -> Result<Round, RemoteError> {
        loop {
            self.manager.run().map_err(RemoteError::Events)?;
            let ready = self
                .manager
                .subscriber_mut(self.id)
                .map_err(RemoteError::Events)?;
            let fired = std::mem::take(&mut ready.fired);
            if !fired.contains(&true) {
                continue;
            }
            let mut kicked = [false; 2];
            for ((k, kick), fired) in kicked.iter_mut().zip(&self.kicks).zip(fired) {
                *k = fired && kick.read().is_ok();
            }
            return Ok(Round {
                kicked,
                control: fired[CONTROL],
            });
        }
    }
}

fn serve_loop(
    hub: &Arc<XpmemHub>,
    vm: VmId,
    device: &mut crate::XpmemDevice,
    control: &UnixStream,
    mut events: ServeEvents,
    mem: &GuestMemoryMmap,
    interrupt: &Arc<dyn VirtioInterrupt>,
) -> Result<(), RemoteError> {
    loop {
        let round = events.wait()?;
        for (queue, kicked) in (0u16..).zip(round.kicked) {
            if kicked {
                device.queue_notify(queue);
            }
        }
        if !round.control {
            continue;
        }
        let Some((msg, _)) = protocol::recv::<ToBroker>(control)? else {
            return Ok(());
        };
        let answer = match msg {
            ToBroker::Hello { .. } => FromBroker::Failed("Hello was already said".into()),
            ToBroker::Activate {
                acked_features,
                queues,
            } => {
                let built: Result<Vec<Queue>, String> =
                    queues.iter().take(2).map(|q| queue(q, mem)).collect();
                match built {
                    Ok(queues) => match device.activate(ActivateContext {
                        mem: mem.clone(),
                        queues,
                        interrupt: interrupt.clone(),
                        acked_features,
                    }) {
                        Ok(()) => FromBroker::Done,
                        Err(e) => FromBroker::Failed(e.to_string()),
                    },
                    Err(e) => FromBroker::Failed(e),
                }
            }
            ToBroker::Reset => {
                device.reset();
                FromBroker::Done
            }
            ToBroker::Holdings => FromBroker::Holdings(
                hub.vm_holdings(vm)
                    .map(|h| (h.segments, h.permits, h.attachments)),
            ),
        };
        protocol::send(control, &answer, &[])?;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn links(reply_timeout: Duration) -> ApertureLinks {
        ApertureLinks {
            map: Arc::default(),
            reply_timeout,
        }
    }

    fn pidfd_of(child: &std::process::Child) -> Arc<OwnedFd> {
        use std::os::fd::FromRawFd;
        // SAFETY: pidfd_open(2) of our own child; a non-negative result is a new descriptor
        // that nothing else owns.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id(), 0) };
        assert!(fd >= 0, "pidfd_open: {}", io::Error::last_os_error());
        // SAFETY: see above; the descriptor is valid and owned by the OwnedFd alone.
        Arc::new(unsafe { OwnedFd::from_raw_fd(RawFd::try_from(fd).unwrap()) })
    }

    const REVOKE: ApertureOp = ApertureOp::RevokeWindow { window: 0 };

    #[test]
    fn a_vm_process_that_stops_answering_is_killed_through_its_pidfd() {
        use std::os::unix::process::ExitStatusExt;
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let links = links(Duration::from_millis(200));
        let (ours, theirs) = protocol::seqpacket_pair().unwrap();
        links.insert(VmId(3), ours, Some(pidfd_of(&child))).unwrap();
        // The process never answers; its end closes once it is dead, as a process's
        // files close after its memory is gone.
        let dies = std::thread::spawn(move || {
            let status = child.wait().unwrap();
            drop(theirs);
            status
        });
        let answer = links.ask(VmId(3), &REVOKE, &[]);
        assert!(matches!(answer, Ok(Answer::Gone)), "{:?}", answer.err());
        assert_eq!(dies.join().unwrap().signal(), Some(libc::SIGKILL));
        // From then on it is gone at once, and a VM nobody knows is an error.
        assert!(matches!(links.ask(VmId(3), &REVOKE, &[]), Ok(Answer::Gone)));
        assert!(matches!(
            links.ask(VmId(9), &REVOKE, &[]),
            Err(ApertureError::UnknownVm(VmId(9)))
        ));
    }

    #[test]
    fn vms_join_and_leave_while_another_vm_process_is_being_asked() {
        let links = links(Duration::from_secs(60));
        let (ours, theirs) = protocol::seqpacket_pair().unwrap();
        links.insert(VmId(1), ours, None).unwrap();
        let asking = {
            let links = links.clone();
            std::thread::spawn(move || links.ask(VmId(1), &REVOKE, &[]))
        };
        // The request is out: VM 1 is being asked and holds only its own link.
        let (request, _) = protocol::recv::<ApertureOp>(&theirs).unwrap().unwrap();
        assert!(matches!(request, ApertureOp::RevokeWindow { window: 0 }));
        let (second, _keep) = protocol::seqpacket_pair().unwrap();
        links.insert(VmId(2), second, None).unwrap();
        links.remove(VmId(2));
        assert!(!asking.is_finished(), "VM 1's answer is still awaited");
        protocol::send(
            &theirs,
            &ApertureReply::Done {
                mmap_calls: 1,
                pages: 2,
            },
            &[],
        )
        .unwrap();
        match asking.join().unwrap() {
            Ok(Answer::Reply(ApertureReply::Done {
                mmap_calls: 1,
                pages: 2,
            })) => {}
            _ => panic!("VM 1's answer was lost"),
        }
    }

    #[test]
    fn a_round_reads_the_kicks_that_fired_and_reports_the_control_connection() {
        let (control, peer) = protocol::seqpacket_pair().unwrap();
        let kicks = [
            EventFd::new(EFD_NONBLOCK).unwrap(),
            EventFd::new(EFD_NONBLOCK).unwrap(),
        ];
        let writers = [kicks[0].try_clone().unwrap(), kicks[1].try_clone().unwrap()];
        let mut events = ServeEvents::new(&control, kicks).unwrap();
        // One kick: only its queue, and its eventfd is read.
        writers[1].write(1).unwrap();
        let round = events.wait().unwrap();
        assert_eq!((round.kicked, round.control), ([false, true], false));
        assert!(writers[1].read().is_err(), "the kick was consumed");
        // Both kicks and a message: everything in one round; the message stays for the
        // loop to read, so it is reported again.
        writers[0].write(1).unwrap();
        writers[1].write(1).unwrap();
        protocol::send(&peer, &ToBroker::Reset, &[]).unwrap();
        let round = events.wait().unwrap();
        assert_eq!((round.kicked, round.control), ([true, true], true));
        let round = events.wait().unwrap();
        assert_eq!((round.kicked, round.control), ([false, false], true));
        assert!(matches!(
            protocol::recv::<ToBroker>(&control).unwrap(),
            Some((ToBroker::Reset, _))
        ));
        // The VM process goes away: hang-up is reported as the control connection.
        drop(peer);
        let round = events.wait().unwrap();
        assert_eq!((round.kicked, round.control), ([false, false], true));
        assert!(protocol::recv::<ToBroker>(&control).unwrap().is_none());
    }
}
