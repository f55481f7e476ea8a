//! One VM: construction (memory, irqchip, devices, ACPI, boot state) and
//! the running VM (vCPU threads plus an event thread).

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_pit_config, CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, Kvm, VcpuFd, VmFd};
use thiserror::Error;
use virtio_mmio_transport::{MmioTransport, VirtioDevice, MMIO_DEVICE_SIZE, NOTIFY_REG_OFFSET};
use virtio_xpmem_device::aperture::{ApertureWindows, VmRamLayout};
use virtio_xpmem_device::remote::{BrokerHandle, RemoteXpmemDevice};
use virtio_xpmem_device::{CutOff, VmHoldings, VmId, Window, XpmemHub};
use vm_memory::{Bytes, GuestAddress};
use vmm_acpi::{AcpiConfig, MmioDeviceInfo};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::boot::{self, cpu, BootEntry, BootSpec};
use crate::bus::{lock, Bus, BusDevice, BusError};
use crate::config::{Console, VmConfig};
use crate::devices::acpi_pm::{AcpiPm, ACPI_PM_BASE, ACPI_PM_LEN};
use crate::devices::cmos::{Cmos, CMOS_BASE, CMOS_LEN};
use crate::devices::i8042::{I8042, I8042_BASE, I8042_LEN};
use crate::devices::serial::{ConsoleSink, SerialDevice, SERIAL_BASE, SERIAL_LEN};
use crate::events::{EventThread, Input, QueueNotifiers};
use crate::layout::{MemoryLayout, MmioSlot, KVM_TSS_ADDR, SERIAL_GSI};
use crate::lifecycle::{ExitHandle, ExitReason};
use crate::memory::{set_memslot, GuestRam};
use crate::vcpu::{self, VcpuContext};

#[derive(Debug, Error)]
pub enum VmError {
    #[error("{want} vCPUs requested but KVM on this host allows at most {max} per VM")]
    TooManyVcpus { want: u8, max: usize },
    #[error("KVM {what} failed: {err}")]
    Kvm {
        what: &'static str,
        err: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Layout(#[from] crate::layout::LayoutError),
    #[error(transparent)]
    Memory(#[from] crate::memory::MemoryError),
    #[error(transparent)]
    Boot(#[from] crate::boot::BootError),
    #[error(transparent)]
    Cpu(#[from] crate::boot::cpu::CpuError),
    #[error("cannot build ACPI tables: {0}")]
    Acpi(#[from] vmm_acpi::AcpiError),
    #[error("ACPI tables end at {0:#x}, beyond the BIOS area reserved for them")]
    AcpiTooLarge(u64),
    #[error("cannot write ACPI tables to guest memory: {0}")]
    AcpiWrite(vm_memory::GuestMemoryError),
    #[error("cannot set up the xpmem device: {0}")]
    Xpmem(String),
    #[error(transparent)]
    Disk(#[from] virtio_blk_device::ImageError),
    #[error("disk {path}: {source}")]
    DiskDevice {
        path: PathBuf,
        source: virtio_blk_device::BlockError,
    },
    #[error("network device: {0}")]
    Net(String),
    #[error("vsock device: {0}")]
    Vsock(String),
    #[error("cannot create virtio device {name}: {reason}")]
    Device { name: &'static str, reason: String },
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("cannot create console file {path}: {err}")]
    ConsoleFile { path: PathBuf, err: std::io::Error },
    #[error("cannot open serial input {path}: {err} (create the file or FIFO first)")]
    InputFile { path: PathBuf, err: std::io::Error },
    #[error("cannot create an eventfd: {0} (check the open file limit)")]
    EventFd(std::io::Error),
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot set up the VM's event thread: {0}")]
    Events(event_manager::Error),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |err| VmError::Kvm { what, err }
}

/// Opens and locks the disk images of `cfg` (see [`virtio_blk_device::DiskImage`]):
/// a writable image another VM or monitor holds is refused here, before any VM of
/// the setup is built.
pub fn open_disks(cfg: &VmConfig) -> Result<Vec<virtio_blk_device::Block>, VmError> {
    cfg.disks
        .iter()
        .map(|disk| {
            let image = virtio_blk_device::DiskImage::open(&disk.path, disk.read_only)?;
            virtio_blk_device::Block::new(image, disk.serial.as_deref()).map_err(|source| {
                VmError::DiskDevice {
                    path: disk.path.clone(),
                    source,
                }
            })
        })
        .collect()
}

/// Where a VM's virtio-xpmem device model runs.
pub enum XpmemAttach {
    /// In this process, on the monitor's hub (one process runs every VM).
    Local(Arc<XpmemHub>),
    /// In the broker at the other end of this control connection (one process per VM);
    /// taken by the VM that is built. The VM's windows may use `mappings` host mappings.
    Broker {
        control: Mutex<Option<std::os::unix::net::UnixStream>>,
        mappings: u64,
    },
}

/// A built VM's handle on its xpmem device model, for the report at its end.
#[derive(Clone)]
enum XpmemLink {
    Local(Arc<XpmemHub>, VmId),
    Broker(BrokerHandle),
}

impl XpmemLink {
    fn holdings(&self) -> Option<VmHoldings> {
        match self {
            XpmemLink::Local(hub, id) => hub.vm_holdings(*id),
            XpmemLink::Broker(handle) => handle.holdings().unwrap_or_else(|e| {
                log::warn!("xpmem: cannot ask the broker what this VM holds: {e}");
                None
            }),
        }
    }
}

/// How a VM's vsock device reaches the other guests of the setup.
pub enum VsockRouting {
    /// The router in this process (one process runs every VM).
    Local(virtio_vsock_device::LocalRouter),
    /// The broker's router, listening at this path.
    Socket(PathBuf),
}

impl VsockRouting {
    fn port(&self, cid: u64) -> std::io::Result<virtio_vsock_device::RouterPort> {
        match self {
            VsockRouting::Local(router) => router.port(cid),
            VsockRouting::Socket(path) => virtio_vsock_device::RouterPort::connect(path, cid),
        }
    }
}

/// Objects shared by all VMs of the monitor.
pub struct Shared {
    /// The xpmem domain every VM's virtio-xpmem device joins.
    pub xpmem: XpmemAttach,
    /// Where the setup's switch listens (when a VM has a network device).
    pub switch_socket: Option<PathBuf>,
    /// A switch port already connected for this process's VM (the broker connects each
    /// VM's port, so ports are numbered in config order); taken by the VM that is built.
    pub switch_port: Mutex<Option<net_switch::socket::FrameSocket>>,
    /// Routes vsock packets between the VMs' devices.
    pub vsock_router: VsockRouting,
    /// The monitor's runtime directory (default vsock sockets).
    pub run_dir: PathBuf,
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        MmioTransport::read(self, offset, data)
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        MmioTransport::write(self, offset, data)
    }
}

pub(crate) type SharedTransport = Arc<Mutex<MmioTransport>>;

/// A VM's vsock device as the monitor reports it: CID, socket, counters.
pub type VsockInfo = (u64, PathBuf, Arc<Mutex<virtio_vsock_device::VsockReport>>);

/// A VM that is built but not started.
pub struct Vm {
    name: String,
    vcpus: Vec<VcpuFd>,
    pio: Bus,
    mmio: Bus,
    serial: Arc<Mutex<SerialDevice>>,
    /// Each transport's queue notification eventfds.
    notifiers: Vec<QueueNotifiers>,
    /// Transports whose device has a backend descriptor to watch (virtio-net, vsock,
    /// remote xpmem).
    backends: Vec<SharedTransport>,
    exit: Arc<ExitHandle>,
    input: Option<SerialInput>,
    /// The domain this VM joined (its id there, or the broker connection).
    xpmem: XpmemLink,
    /// The vsock device's CID, socket and published report.
    vsock: Option<VsockInfo>,
    // Drop order matters: the VM fd (and with it every memslot) must go
    // before the memory it points at.
    _vm_fd: Arc<VmFd>,
    _transports: Vec<SharedTransport>,
    _apertures: ApertureWindows,
    _ram: GuestRam,
}

impl Vm {
    /// Builds VM `id` from `cfg` with its opened `disks` ([`open_disks`]):
    /// everything is set up and loaded, no vCPU runs yet.
    pub fn new(
        kvm: &Kvm,
        cfg: &VmConfig,
        id: VmId,
        shared: &Shared,
        stdout_consoles: usize,
        disks: Vec<virtio_blk_device::Block>,
    ) -> Result<Self, VmError> {
        let max = kvm.get_max_vcpus();
        if usize::from(cfg.vcpus) > max {
            return Err(VmError::TooManyVcpus {
                want: cfg.vcpus,
                max,
            });
        }
        let input = SerialInput::open(cfg)?;
        let layout = MemoryLayout::new(cfg.memory, cfg.aperture_rw, cfg.aperture_ro)?;
        let vm_fd = Arc::new(create_vm_fd(kvm)?);
        let ram = GuestRam::new(&cfg.name, &layout)?;
        let next_slot = ram.register(&vm_fd)?;
        let apertures = map_apertures(&vm_fd, &layout, next_slot)?;

        let exit = Arc::new(ExitHandle::new().map_err(VmError::EventFd)?);
        let (pio, serial) = legacy_devices(&vm_fd, cfg, &exit, stdout_consoles)?;

        // virtio devices, in slot order. Adding a device is one entry here.
        let cut_off = aperture_cut_off(Arc::downgrade(&vm_fd), next_slot, &apertures);
        let (xpmem, xpmem_link): (Box<dyn VirtioDevice>, XpmemLink) = match &shared.xpmem {
            XpmemAttach::Local(hub) => {
                let device = hub
                    .add_vm(
                        id,
                        VmRamLayout::from_guest_memory(&ram.mem)
                            .map_err(|e| VmError::Xpmem(e.to_string()))?,
                        apertures.clone(),
                    )
                    .map_err(|e| VmError::Xpmem(e.to_string()))?;
                hub.set_cut_off(id, cut_off);
                (Box::new(device), XpmemLink::Local(hub.clone(), id))
            }
            XpmemAttach::Broker { control, mappings } => {
                let control = lock(control)
                    .take()
                    .ok_or_else(|| VmError::Xpmem("the broker connection is taken".into()))?;
                // The aperture thread runs until the broker closes the connection.
                let (device, handle, _aperture_thread) = RemoteXpmemDevice::connect(
                    id,
                    control,
                    &ram.mem,
                    apertures.clone(),
                    *mappings,
                    cut_off,
                )
                .map_err(|e| VmError::Xpmem(e.to_string()))?;
                (Box::new(device), XpmemLink::Broker(handle))
            }
        };
        let mut devices: Vec<(&'static str, Box<dyn VirtioDevice>)> = vec![
            ("rng", Box::new(virtio_rng_device::Rng::new())),
            ("xpmem", xpmem),
        ];
        // Disks after the fixed devices (whose slots and GSIs stay put); the guest
        // names virtio-blk disks in probe order, which is DSDT order: the first
        // disk is /dev/vda.
        devices.extend(
            disks
                .into_iter()
                .map(|d| ("blk", Box::new(d) as Box<dyn VirtioDevice>)),
        );
        // The network device last, so the disks keep their slots.
        if let Some(net) = &cfg.net {
            let backend: Box<dyn virtio_net_device::NetBackend> = match &net.tap {
                Some(tap) => Box::new(
                    virtio_net_device::TapBackend::open(tap)
                        .map_err(|e| VmError::Net(e.to_string()))?,
                ),
                None if lock(&shared.switch_port).is_some() => {
                    let port = lock(&shared.switch_port)
                        .take()
                        .ok_or_else(|| VmError::Net("the switch port is taken".into()))?;
                    Box::new(virtio_net_device::SwitchPort::from_socket(port))
                }
                None => {
                    let path = shared.switch_socket.as_deref().ok_or_else(|| {
                        VmError::Net("no switch socket; the monitor starts the switch first".into())
                    })?;
                    Box::new(
                        virtio_net_device::SwitchPort::connect(path)
                            .map_err(|e| VmError::Net(e.to_string()))?,
                    )
                }
            };
            let mut device = virtio_net_device::Net::new(backend, net.mac, net.mtu)
                .map_err(|e| VmError::Net(e.to_string()))?;
            device.set_offloads(net.offloads);
            devices.push(("net", Box::new(device)));
        }
        let mut vsock = None;
        if let Some(v) = &cfg.vsock {
            let path = v
                .socket
                .clone()
                .unwrap_or_else(|| shared.run_dir.join(format!("{}.vsock", cfg.name)));
            let port = shared
                .vsock_router
                .port(v.cid)
                .map_err(|e| VmError::Vsock(e.to_string()))?;
            let host = virtio_vsock_device::HostSide::listen(&path, Some(port.wake_fd()))
                .map_err(|e| VmError::Vsock(e.to_string()))?;
            let device = virtio_vsock_device::Vsock::new(v.cid, host, Some(port))
                .map_err(|e| VmError::Vsock(e.to_string()))?;
            vsock = Some((v.cid, path, device.report_handle()));
            devices.push(("vsock", Box::new(device)));
        }

        let mut mmio = Bus::new();
        let mut slots = Vec::new();
        let mut transports = Vec::new();
        let mut notifiers = Vec::new();
        let mut backends = Vec::new();
        for (index, (name, device)) in devices.into_iter().enumerate() {
            let slot = MemoryLayout::mmio_slot(index)?;
            let (transport, queue_notifiers) =
                attach_virtio(&vm_fd, &mut mmio, slot, name, device, &ram)?;
            notifiers.push(queue_notifiers);
            if lock(&transport).backend_poll().is_some() {
                backends.push(transport.clone());
            }
            transports.push(transport);
            slots.push(slot);
        }

        let rsdp = write_acpi_tables(&ram, cfg.vcpus, &slots)?;
        let cmdline = cfg.kernel_cmdline();
        let entry = boot::load(
            &ram.mem,
            &layout,
            &BootSpec {
                kernel: &cfg.kernel,
                initrd: cfg.initrd.as_deref(),
                cmdline: &cmdline,
                acpi_rsdp: Some(rsdp),
            },
        )?;
        let vcpus = create_vcpus(kvm, &vm_fd, cfg.vcpus, &entry)?;

        Ok(Vm {
            name: cfg.name.clone(),
            vcpus,
            pio,
            mmio,
            serial,
            notifiers,
            backends,
            exit,
            input,
            xpmem: xpmem_link,
            vsock,
            _vm_fd: vm_fd,
            _transports: transports,
            _apertures: apertures,
            _ram: ram,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Starts the vCPU threads and the event thread.
    pub fn start(mut self) -> Result<RunningVm, VmError> {
        let started = Instant::now();
        let stop = EventFd::new(EFD_NONBLOCK).map_err(VmError::EventFd)?;
        let loop_stop = stop.try_clone().map_err(VmError::EventFd)?;
        // Its epoll instance and registrations are made here, during set-up.
        let events = EventThread::new(
            loop_stop,
            std::mem::take(&mut self.notifiers),
            std::mem::take(&mut self.backends),
            self.input
                .take()
                .map(|source| Input::new(source, self.serial.clone())),
        )
        .map_err(VmError::Events)?;
        let mut running = RunningVm {
            name: self.name.clone(),
            exit: self.exit.clone(),
            serial: self.serial.clone(),
            vcpu_threads: Vec::new(),
            event_thread: None,
            stop,
            started,
            xpmem: self.xpmem.clone(),
            vsock: self.vsock.clone(),
            held_at_exit: None,
            device_reports: Vec::new(),
            vm: None,
        };
        running.event_thread = Some(
            std::thread::Builder::new()
                .name(format!("{}-events", self.name))
                .spawn(move || events.run())
                .map_err(VmError::Thread)?,
        );
        for (index, vcpu) in std::mem::take(&mut self.vcpus).into_iter().enumerate() {
            let ctx = VcpuContext {
                vm_name: self.name.clone(),
                id: index as u8,
                pio: self.pio.clone(),
                mmio: self.mmio.clone(),
                exit: self.exit.clone(),
            };
            match std::thread::Builder::new()
                .name(format!("{}-vcpu{index}", self.name))
                .spawn(move || vcpu::run(vcpu, ctx))
            {
                Ok(handle) => running.vcpu_threads.push(handle),
                Err(err) => {
                    running.vm = Some(self);
                    running.stop(ExitReason::Error(format!(
                        "cannot start vCPU thread: {err}"
                    )));
                    return Err(VmError::Thread(err));
                }
            }
        }
        running.vm = Some(self);
        Ok(running)
    }
}

/// A VM with the in-kernel irqchip (LAPICs, IOAPIC, PIC) and PIT.
fn create_vm_fd(kvm: &Kvm) -> Result<VmFd, VmError> {
    let vm_fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    vm_fd
        .set_tss_address(KVM_TSS_ADDR as usize)
        .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    vm_fd
        .create_irq_chip()
        .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm_fd.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
    Ok(vm_fd)
}

/// The xpmem hub's last resort when an aperture window's pages cannot be revoked: delete
/// the window's memslot (KVM drops every mapping of it before the ioctl returns, and no
/// new host mapping is needed). The guest then sees no memory there; its attachments in
/// the window are revoked.
fn aperture_cut_off(vm_fd: Weak<VmFd>, first_slot: u32, windows: &ApertureWindows) -> CutOff {
    let rw = (first_slot, windows.rw.guest_base());
    let ro = (first_slot + 1, windows.ro.guest_base());
    Box::new(move |window| {
        let Some(vm_fd) = vm_fd.upgrade() else {
            // The VM is gone, and its memslots with it.
            return Ok(());
        };
        let (slot, base) = match window {
            Window::Rw => rw,
            Window::Ro => ro,
        };
        log::error!("xpmem: deleting memslot {slot} (aperture window at {base:#x}) of a VM whose window could not be revoked");
        // SAFETY: a size of 0 deletes the slot; it refers to no host memory afterwards.
        unsafe { set_memslot(&vm_fd, slot, base, 0, 0, false) }
            .map_err(|e| std::io::Error::other(e.to_string()))
    })
}

/// Reserves the import aperture windows and registers them as memslots
/// `first_slot` (read-write) and `first_slot + 1` (read-only).
fn map_apertures(
    vm_fd: &VmFd,
    layout: &MemoryLayout,
    first_slot: u32,
) -> Result<ApertureWindows, VmError> {
    let apertures = ApertureWindows::reserve(
        layout.aperture_rw.guest_base,
        layout.aperture_rw.size,
        layout.aperture_ro.guest_base,
        layout.aperture_ro.size,
    )
    .map_err(|e| VmError::Xpmem(e.to_string()))?;
    for (offset, window, readonly) in [(0, &apertures.rw, false), (1, &apertures.ro, true)] {
        // SAFETY: the caller keeps `apertures` (which owns the host mapping)
        // alive until after the VM fd is closed (field order of `Vm`), so the
        // mapping outlives the memslot.
        unsafe {
            set_memslot(
                vm_fd,
                first_slot + offset,
                window.guest_base(),
                window.len(),
                window.host_addr(),
                readonly,
            )
        }?;
    }
    Ok(apertures)
}

/// COM1, the i8042 reset line, the ACPI power-management ports and the RTC.
fn legacy_devices(
    vm_fd: &VmFd,
    cfg: &VmConfig,
    exit: &Arc<ExitHandle>,
    stdout_consoles: usize,
) -> Result<(Bus, Arc<Mutex<SerialDevice>>), VmError> {
    let sink = match &cfg.console {
        // Several VMs on stdout: write whole lines so they never interleave.
        Console::Stdout => ConsoleSink::stdout(&cfg.name, stdout_consoles == 1),
        Console::File(path) => ConsoleSink::file(path).map_err(|err| VmError::ConsoleFile {
            path: path.clone(),
            err,
        })?,
    };
    let serial = Arc::new(Mutex::new(
        SerialDevice::new(sink).map_err(VmError::EventFd)?,
    ));
    vm_fd
        .register_irqfd(lock(&serial).irqfd(), SERIAL_GSI)
        .map_err(kvm_err("KVM_IRQFD (serial)"))?;
    let mut pio = Bus::new();
    pio.insert(u64::from(SERIAL_BASE), SERIAL_LEN, serial.clone())?;
    pio.insert(
        u64::from(I8042_BASE),
        I8042_LEN,
        Arc::new(Mutex::new(I8042::new(exit.clone()))),
    )?;
    pio.insert(
        u64::from(ACPI_PM_BASE),
        ACPI_PM_LEN,
        Arc::new(Mutex::new(AcpiPm::new(exit.clone()))),
    )?;
    pio.insert(
        u64::from(CMOS_BASE),
        CMOS_LEN,
        Arc::new(Mutex::new(Cmos::new())),
    )?;
    Ok((pio, serial))
}

/// Writes the ACPI tables describing the CPUs (MADT) and the virtio-mmio
/// devices (DSDT) into the BIOS area; returns the RSDP address.
fn write_acpi_tables(ram: &GuestRam, vcpus: u8, slots: &[MmioSlot]) -> Result<u64, VmError> {
    let tables = vmm_acpi::build_tables(
        &AcpiConfig {
            num_cpus: vcpus,
            virtio_mmio: slots
                .iter()
                .map(|s| MmioDeviceInfo {
                    base: s.base,
                    len: s.size,
                    gsi: s.gsi,
                })
                .collect(),
            // KVM's default routing wires ISA IRQ n to IOAPIC pin n.
            irq0_to_gsi2: false,
            // The 8250 on 0x3f8 raises GSI 4 (see devices::serial).
            legacy_serial: Some(vmm_acpi::COM1),
        },
        vmm_acpi::RSDP_GPA,
    )?;
    if tables.end_gpa > vmm_acpi::BIOS_AREA_END {
        return Err(VmError::AcpiTooLarge(tables.end_gpa));
    }
    for blob in &tables.blobs {
        ram.mem
            .write_slice(&blob.bytes, GuestAddress(blob.gpa))
            .map_err(VmError::AcpiWrite)?;
    }
    Ok(tables.rsdp_gpa)
}

/// Creates every vCPU; the boot vCPU starts at `entry`, the others wait
/// for INIT/SIPI from the guest (KVM's default state for APs).
fn create_vcpus(
    kvm: &Kvm,
    vm_fd: &VmFd,
    count: u8,
    entry: &BootEntry,
) -> Result<Vec<VcpuFd>, VmError> {
    let supported: CpuId = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    let mut vcpus = Vec::with_capacity(usize::from(count));
    for index in 0..count {
        let vcpu = vm_fd
            .create_vcpu(u64::from(index))
            .map_err(kvm_err("KVM_CREATE_VCPU"))?;
        cpu::setup_common(&vcpu, index, count, &supported)?;
        if index == 0 {
            cpu::setup_boot_vcpu(&vcpu, entry)?;
        }
        vcpus.push(vcpu);
    }
    Ok(vcpus)
}

/// Wraps `device` in a virtio-mmio transport at `slot`: MMIO bus entry,
/// irqfd on the slot's GSI, one ioeventfd per queue on QueueNotify.
fn attach_virtio(
    vm_fd: &VmFd,
    mmio: &mut Bus,
    slot: MmioSlot,
    name: &'static str,
    device: Box<dyn VirtioDevice>,
    ram: &GuestRam,
) -> Result<(SharedTransport, QueueNotifiers), VmError> {
    let queues = device.queue_max_sizes().len();
    let transport = MmioTransport::new(device, ram.mem.clone()).map_err(|e| VmError::Device {
        name,
        reason: e.to_string(),
    })?;
    vm_fd
        .register_irqfd(transport.irqfd(), slot.gsi)
        .map_err(kvm_err("KVM_IRQFD (virtio)"))?;
    let transport = Arc::new(Mutex::new(transport));
    let mut evts = Vec::with_capacity(queues);
    for queue in 0..queues {
        let queue = u32::try_from(queue).map_err(|_| VmError::Device {
            name,
            reason: "too many queues".into(),
        })?;
        let evt = EventFd::new(EFD_NONBLOCK).map_err(VmError::EventFd)?;
        // The datamatch is a u32: KVM matches 4-byte writes of the queue index.
        vm_fd
            .register_ioevent(
                &evt,
                &IoEventAddress::Mmio(slot.base + NOTIFY_REG_OFFSET),
                queue,
            )
            .map_err(kvm_err("KVM_IOEVENTFD"))?;
        evts.push(evt);
    }
    mmio.insert(slot.base, MMIO_DEVICE_SIZE, transport.clone())?;
    let notifiers = QueueNotifiers::new(transport.clone(), evts);
    Ok((transport, notifiers))
}

/// Where a VM's serial port reads its input from.
pub(crate) enum SerialInput {
    /// The monitor's stdin (the terminal).
    Stdin,
    /// A file or FIFO of the config's `input`; a FIFO is opened read-write so it
    /// never reports end-of-file while writers come and go.
    File(File),
}

impl SerialInput {
    fn open(cfg: &VmConfig) -> Result<Option<Self>, VmError> {
        let Some(path) = &cfg.input else {
            return Ok(cfg.stdin.then_some(SerialInput::Stdin));
        };
        let err = |err| VmError::InputFile {
            path: path.clone(),
            err,
        };
        let is_fifo = std::fs::metadata(path).map_err(err)?.file_type().is_fifo();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(is_fifo)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(err)?;
        Ok(Some(SerialInput::File(file)))
    }

    pub(crate) fn fd(&self) -> RawFd {
        match self {
            SerialInput::Stdin => libc::STDIN_FILENO,
            SerialInput::File(f) => f.as_raw_fd(),
        }
    }
}

/// A VM whose threads run.
pub struct RunningVm {
    name: String,
    exit: Arc<ExitHandle>,
    serial: Arc<Mutex<SerialDevice>>,
    vcpu_threads: Vec<JoinHandle<()>>,
    event_thread: Option<JoinHandle<()>>,
    stop: EventFd,
    started: Instant,
    xpmem: XpmemLink,
    vsock: Option<VsockInfo>,
    /// What the guest still held in the xpmem domain when it stopped.
    held_at_exit: Option<VmHoldings>,
    /// The devices' counters when it stopped ([`VirtioDevice::exit_report`]).
    device_reports: Vec<String>,
    /// Kept alive until every thread has stopped.
    vm: Option<Vm>,
}

/// How often stopped vCPU threads are re-kicked until they leave KVM_RUN.
const KICK_INTERVAL: Duration = Duration::from_millis(5);

impl RunningVm {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the guest still held in the xpmem domain when it stopped (set by
    /// [`RunningVm::stop`]).
    /// The vsock device's CID, socket and its last published report.
    pub fn vsock(&self) -> Option<(u64, &Path, virtio_vsock_device::VsockReport)> {
        self.vsock.as_ref().map(|(cid, path, report)| {
            let r = *report.lock().unwrap_or_else(|e| e.into_inner());
            (*cid, path.as_path(), r)
        })
    }

    /// The broker connection (POLLHUP when the broker is gone), when this VM's xpmem
    /// device model runs in a broker.
    pub fn broker_fd(&self) -> Option<RawFd> {
        match &self.xpmem {
            XpmemLink::Broker(handle) => Some(handle.raw_fd()),
            XpmemLink::Local(..) => None,
        }
    }

    pub fn xpmem_held_at_exit(&self) -> Option<VmHoldings> {
        self.held_at_exit
    }

    /// The devices' counters, one line each (set by [`RunningVm::stop`]).
    pub fn device_reports(&self) -> &[String] {
        &self.device_reports
    }

    /// Readable when the VM asks to end.
    pub fn exit_event(&self) -> &EventFd {
        self.exit.event()
    }

    pub fn exit_requested(&self) -> bool {
        self.exit.is_requested()
    }

    /// Stops the VM (recording `reason` unless it already ended), joins its
    /// threads and releases it. Returns the reason it ended and its run time.
    pub fn stop(&mut self, reason: ExitReason) -> (ExitReason, Duration) {
        self.exit.request(reason);
        let ran = self.started.elapsed();
        // A vCPU may be blocked in KVM_RUN (halted, or an AP waiting for
        // SIPI); a signal makes KVM_RUN return. A kick that lands just
        // before the thread enters KVM_RUN is lost, so kick until it exits.
        for thread in self.vcpu_threads.drain(..) {
            while !thread.is_finished() {
                vcpu::kick(&thread);
                std::thread::sleep(KICK_INTERVAL);
            }
            // The thread has finished: join cannot block. A panicked vCPU
            // thread has already been reported by the panic hook.
            let _ = thread.join();
        }
        let _ = self.stop.write(1);
        if let Some(thread) = self.event_thread.take() {
            let _ = thread.join();
        }
        lock(&self.serial).flush();
        // Nothing of the guest runs any more: what it holds now, it never
        // released (dropping the VM below tears it down).
        if self.vm.is_some() {
            self.held_at_exit = self.xpmem.holdings();
        }
        if let Some(vm) = &self.vm {
            self.device_reports = vm
                ._transports
                .iter()
                .filter_map(|t| lock(t).device().exit_report())
                .collect();
        }
        self.vm = None;
        let reason = self
            .exit
            .reason()
            .unwrap_or_else(|| ExitReason::Error("no exit reason recorded".into()));
        (reason, ran)
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        if self.vm.is_some() {
            self.stop(ExitReason::Stopped);
        }
    }
}
