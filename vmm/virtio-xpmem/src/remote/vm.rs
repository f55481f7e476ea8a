//! The VM process's side: [`RemoteXpmemDevice`], the virtio-xpmem device behind this
//! VM's transport whose model runs in the broker, and the aperture thread that maps and
//! unmaps this VM's windows when the broker asks.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_mmio_transport::{
    ActivateContext, ActivateError, InterruptReason, SharedMemoryRegion, VirtioDevice,
    VirtioInterrupt,
};
use virtio_xpmem_wire as wire;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use xpmem_domain::{VmHoldings, VmId, Window};

use super::protocol::{
    self, ApertureOp, ApertureReply, FromBroker, ToBroker, WireApertureError, WireQueue,
};
use super::RemoteError;
use crate::aperture::{
    ApertureBackend, ApertureError, ApertureWindows, MapStats, MmapAperture, VmRamLayout,
};
use crate::CutOff;

const QUEUE_SIZES: [u16; 2] = [crate::QUEUE_SIZE, crate::QUEUE_SIZE];

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The control connection, shared by the device and the monitor's [`BrokerHandle`].
type Control = Arc<Mutex<UnixStream>>;

fn ask(control: &Control, msg: &ToBroker) -> Result<FromBroker, RemoteError> {
    let sock = lock(control);
    protocol::send(&sock, msg, &[])?;
    match protocol::recv::<FromBroker>(&sock)? {
        Some((answer, _)) => Ok(answer),
        None => Err(RemoteError::BrokerGone),
    }
}

/// The virtio-xpmem device of a VM that runs in its own process: the transport and
/// interrupt are here, the device model (queues, domain) is in the broker, which works
/// on this VM's RAM through the memfd this process sent it. Queue notifications go to
/// the broker through kick eventfds; the broker's completions come back through the call
/// eventfd, which is this device's backend descriptor, and this VM's event thread raises
/// the interrupt.
pub struct RemoteXpmemDevice {
    vm: VmId,
    control: Control,
    kicks: [EventFd; 2],
    call: EventFd,
    interrupt: Option<Arc<dyn VirtioInterrupt>>,
    config: Vec<u8>,
    features: u64,
    regions: Vec<SharedMemoryRegion>,
}

/// The monitor's handle on the broker connection, for what it reports at the end.
#[derive(Clone)]
pub struct BrokerHandle {
    control: Control,
}

impl BrokerHandle {
    /// What this VM's guest holds in the domain (or held when its device was last reset).
    pub fn holdings(&self) -> Result<Option<VmHoldings>, RemoteError> {
        match ask(&self.control, &ToBroker::Holdings)? {
            FromBroker::Holdings(h) => Ok(h.map(|(segments, permits, attachments)| VmHoldings {
                segments,
                permits,
                attachments,
            })),
            other => Err(RemoteError::Protocol(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }

    /// The connection's descriptor: it reports POLLHUP when the broker is gone.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        lock(&self.control).as_raw_fd()
    }
}

/// The thread that serves the broker's aperture requests for this VM; see
/// [`RemoteXpmemDevice::connect`].
pub struct ApertureThread(std::thread::JoinHandle<()>);

impl ApertureThread {
    /// True once the broker has closed the aperture connection.
    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

impl RemoteXpmemDevice {
    /// Joins VM `vm` (whose RAM is `mem`, memfd-backed, and whose windows are `windows`)
    /// to the broker at the other end of `control`. Starts the aperture thread, which
    /// maps exporters' RAM into `windows` within `mappings_budget` host mappings and uses
    /// `cut_off` when a window cannot be revoked.
    pub fn connect(
        vm: VmId,
        control: UnixStream,
        mem: &GuestMemoryMmap,
        windows: ApertureWindows,
        mappings_budget: u64,
        cut_off: CutOff,
    ) -> Result<(Self, BrokerHandle, ApertureThread), RemoteError> {
        let ram = VmRamLayout::from_guest_memory(mem)
            .map_err(|e| RemoteError::Protocol(e.to_string()))?;
        let (regions, files) = protocol::wire_ram(&ram)?;
        let kicks = [
            EventFd::new(EFD_NONBLOCK).map_err(RemoteError::Io)?,
            EventFd::new(EFD_NONBLOCK).map_err(RemoteError::Io)?,
        ];
        let call = EventFd::new(EFD_NONBLOCK).map_err(RemoteError::Io)?;
        let (ours, theirs) = protocol::seqpacket_pair().map_err(RemoteError::Io)?;
        let mut fds: Vec<i32> = files.iter().map(|f| f.as_raw_fd()).collect();
        fds.extend([
            kicks[0].as_raw_fd(),
            kicks[1].as_raw_fd(),
            call.as_raw_fd(),
            theirs.as_raw_fd(),
        ]);
        let hello = ToBroker::Hello {
            ram: regions,
            ram_files: u8::try_from(files.len()).unwrap_or(u8::MAX),
            rw_base: windows.rw.guest_base(),
            rw_len: windows.rw.len(),
            ro_base: windows.ro.guest_base(),
            ro_len: windows.ro.len(),
        };
        let mut aperture = MmapAperture::with_budget(mappings_budget);
        let shm = vec![
            SharedMemoryRegion {
                id: wire::VIRTIO_XPMEM_SHM_RW,
                guest_base: windows.rw.guest_base(),
                len: windows.rw.len(),
            },
            SharedMemoryRegion {
                id: wire::VIRTIO_XPMEM_SHM_RO,
                guest_base: windows.ro.guest_base(),
                len: windows.ro.len(),
            },
        ];
        aperture
            .add_vm(vm, ram, windows.into())
            .map_err(|e| RemoteError::Protocol(e.to_string()))?;
        protocol::send(&control, &hello, &fds)?;
        drop(theirs);
        let (config, features) = match protocol::recv::<FromBroker>(&control)? {
            Some((FromBroker::Welcome { config, features }, _)) => (config, features),
            Some((FromBroker::Failed(e), _)) => return Err(RemoteError::Refused(e)),
            Some((other, _)) => {
                return Err(RemoteError::Protocol(format!(
                    "unexpected answer {other:?}"
                )))
            }
            None => return Err(RemoteError::BrokerGone),
        };
        let thread = std::thread::Builder::new()
            .name("xpmem-aperture".into())
            .spawn(move || serve_aperture(vm, ours, aperture, cut_off))
            .map_err(RemoteError::Io)?;
        let control = Arc::new(Mutex::new(control));
        let device = Self {
            vm,
            control: control.clone(),
            kicks,
            call,
            interrupt: None,
            config,
            features,
            regions: shm,
        };
        Ok((device, BrokerHandle { control }, ApertureThread(thread)))
    }
}

impl VirtioDevice for RemoteXpmemDevice {
    fn device_type(&self) -> u32 {
        wire::VIRTIO_ID_XPMEM
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn device_features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::device::read_config_space(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        crate::device::ignore_config_write(self.vm, offset, data);
    }

    fn shared_memory_regions(&self) -> Vec<SharedMemoryRegion> {
        self.regions.clone()
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let queues = ctx
            .queues
            .iter()
            .map(|q| {
                let s = q.state();
                WireQueue {
                    size: s.size,
                    ready: s.ready,
                    event_idx: s.event_idx_enabled,
                    next_avail: s.next_avail,
                    next_used: s.next_used,
                    desc_table: s.desc_table,
                    avail_ring: s.avail_ring,
                    used_ring: s.used_ring,
                }
            })
            .collect();
        let nq = ctx.queues.len();
        if nq < 2 {
            return Err(ActivateError::QueueNotReady(nq));
        }
        self.interrupt = Some(ctx.interrupt);
        let msg = ToBroker::Activate {
            acked_features: ctx.acked_features,
            queues,
        };
        match ask(&self.control, &msg) {
            Ok(FromBroker::Done) => Ok(()),
            Ok(FromBroker::Failed(e)) => Err(ActivateError::Device(e)),
            Ok(other) => Err(ActivateError::Device(format!(
                "unexpected broker answer {other:?}"
            ))),
            Err(e) => Err(ActivateError::Device(e.to_string())),
        }
    }

    fn queue_notify(&mut self, index: u16) {
        match self.kicks.get(usize::from(index)) {
            Some(kick) => {
                if let Err(e) = kick.write(1) {
                    log::warn!(
                        "virtio-xpmem: VM {:?}: cannot pass a notification to the broker: {e}",
                        self.vm
                    );
                }
            }
            None => log::debug!(
                "virtio-xpmem: VM {:?}: notify for unknown queue {index}",
                self.vm
            ),
        }
    }

    fn reset(&mut self) {
        self.interrupt = None;
        // The broker answers once the VM has left the domain and its windows show the
        // filler again.
        match ask(&self.control, &ToBroker::Reset) {
            Ok(FromBroker::Done) => {}
            Ok(other) => log::error!("virtio-xpmem: VM {:?}: reset answered {other:?}", self.vm),
            Err(e) => log::error!(
                "virtio-xpmem: VM {:?}: cannot reset the device in the broker: {e}",
                self.vm
            ),
        }
    }

    fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.call.as_raw_fd())
    }

    fn process_backend(&mut self) {
        if self.call.read().is_ok() {
            if let Some(interrupt) = &self.interrupt {
                if let Err(e) = interrupt.trigger(InterruptReason::UsedBuffer) {
                    log::warn!(
                        "virtio-xpmem: VM {:?}: cannot raise the interrupt: {e}",
                        self.vm
                    );
                }
            }
        }
    }
}

fn window(w: protocol::WireWindow) -> Result<Window, ApertureError> {
    match w {
        0 => Ok(Window::Rw),
        1 => Ok(Window::Ro),
        _ => Err(ApertureError::Remote {
            vm: VmId(0),
            message: format!("no aperture window {w}"),
        }),
    }
}

fn reply(result: Result<MapStats, ApertureError>) -> ApertureReply {
    match result {
        Ok(s) => ApertureReply::Done {
            mmap_calls: s.mmap_calls,
            pages: s.pages,
        },
        Err(ApertureError::MappingBudget { needed, budget, .. }) => {
            ApertureReply::Failed(WireApertureError::Budget { needed, budget })
        }
        Err(e @ ApertureError::Unrestored { .. }) => {
            ApertureReply::Failed(WireApertureError::Unrestored(e.to_string()))
        }
        Err(e) => ApertureReply::Failed(WireApertureError::Other(e.to_string())),
    }
}

/// One aperture request, applied to this process's windows.
fn apply(
    vm: VmId,
    aperture: &mut MmapAperture,
    cut_off: &CutOff,
    op: ApertureOp,
    fds: Vec<std::os::fd::OwnedFd>,
) -> ApertureReply {
    match op {
        ApertureOp::AddExporter {
            vm: exporter,
            ram,
            ram_files,
        } => {
            if fds.len() != usize::from(ram_files) {
                return reply(Err(ApertureError::Remote {
                    vm,
                    message: format!("{} RAM files announced, {} came", ram_files, fds.len()),
                }));
            }
            match protocol::layout_from_wire(&ram, fds) {
                Ok(layout) => {
                    aperture.add_exporter(VmId(exporter), layout);
                    reply(Ok(MapStats::default()))
                }
                Err(e) => reply(Err(ApertureError::Remote {
                    vm,
                    message: e.to_string(),
                })),
            }
        }
        ApertureOp::ForgetExporter { vm: exporter } => {
            aperture.forget_exporter(VmId(exporter));
            reply(Ok(MapStats::default()))
        }
        ApertureOp::Map {
            window: w,
            page,
            exporter,
            gpa,
            npages,
            writable,
        } => reply(
            window(w)
                .and_then(|w| aperture.map(vm, w, page, VmId(exporter), gpa, npages, writable)),
        ),
        ApertureOp::Unmap {
            window: w,
            page,
            npages,
        } => reply(window(w).and_then(|w| aperture.unmap(vm, w, page, npages))),
        ApertureOp::RevokeWindow { window: w } => {
            let w = match window(w) {
                Ok(w) => w,
                Err(e) => return reply(Err(e)),
            };
            match aperture.revoke_window(vm, w) {
                Ok(s) => reply(Ok(s)),
                Err(e) => {
                    // The last resort is here, in the process that owns the memslot.
                    log::error!("virtio-xpmem: cannot revoke the {w:?} aperture window ({e}); cutting the VM off from it");
                    if let Err(e) = cut_off(w) {
                        log::error!("virtio-xpmem: cannot cut the VM off from its {w:?} aperture window ({e}); stopping this VM's process so that it keeps no other VM's freed memory");
                        std::process::abort();
                    }
                    reply(Ok(MapStats::default()))
                }
            }
        }
    }
}

/// Serves the broker's aperture requests until the broker closes the connection. The
/// broker takes a closed connection for this process's exit (and so for every window
/// mapping being gone), so this process never closes it while it lives: on any failure
/// to talk to the broker it aborts.
fn serve_aperture(vm: VmId, sock: UnixStream, mut aperture: MmapAperture, cut_off: CutOff) {
    loop {
        let (op, fds) = match protocol::recv::<ApertureOp>(&sock) {
            Ok(Some(m)) => m,
            // The broker is gone, or has dropped this VM: nobody will ask again.
            Ok(None) => break,
            Err(RemoteError::Decode(e)) => {
                log::error!("virtio-xpmem: VM {vm:?}: undecodable aperture request: {e}");
                let answer = ApertureReply::Failed(WireApertureError::Other(e));
                if protocol::send(&sock, &answer, &[]).is_err() {
                    std::process::abort();
                }
                continue;
            }
            Err(e) => {
                log::error!(
                    "virtio-xpmem: VM {vm:?}: the aperture connection failed ({e}); stopping"
                );
                std::process::abort();
            }
        };
        let answer = apply(vm, &mut aperture, &cut_off, op, fds);
        if let Err(e) = protocol::send(&sock, &answer, &[]) {
            if matches!(&e, RemoteError::Io(err) if err.kind() == io::ErrorKind::BrokenPipe) {
                break;
            }
            log::error!("virtio-xpmem: VM {vm:?}: cannot answer the broker ({e}); stopping");
            std::process::abort();
        }
    }
    // Keep the connection open until the process ends: closing it is the broker's sign
    // that this process and its mappings are gone.
    std::mem::forget(sock);
}
