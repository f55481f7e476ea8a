//! The virtio-mmio v2 register file and device status state machine.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use log::{debug, warn};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::device::{
    ActivateContext, ActivateError, InterruptReason, VirtioDevice, VirtioInterrupt,
};
use crate::{interrupt_bits, regs, status, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1};

/// Size of one virtio-mmio device window in guest-physical address space.
pub const MMIO_DEVICE_SIZE: u64 = 0x200;
/// Offset of QueueNotify inside the window (where the monitor puts its ioeventfd,
/// with a 4-byte datamatch-free registration or one per queue index).
pub const NOTIFY_REG_OFFSET: u64 = regs::QUEUE_NOTIFY;
/// "virt" in little endian.
pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
/// The modern (non-legacy) register layout.
pub const MMIO_VERSION: u32 = 2;
/// Vendor ID reported to the driver ("XPMM"); drivers do not interpret it.
pub const MMIO_VENDOR_ID: u32 = 0x4d4d_5058;

/// Guest-triggered warnings logged at warn level per transport; later ones go
/// to debug level, so a hostile driver cannot flood the host's log.
const MAX_GUEST_WARNINGS: u64 = 32;

macro_rules! guest_warn {
    ($self:ident, $($arg:tt)+) => {{
        let n = $self.guest_warnings.fetch_add(1, Ordering::Relaxed);
        if n < MAX_GUEST_WARNINGS {
            warn!($($arg)+);
        } else {
            if n == MAX_GUEST_WARNINGS {
                warn!("virtio-mmio: too many guest-triggered warnings; further ones are logged at debug level");
            }
            debug!($($arg)+);
        }
    }};
}

/// Errors creating a transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("device declares queue {index} with maximum size {size}; virtqueue sizes must be a power of two between 1 and 32768")]
    InvalidQueueMaxSize { index: usize, size: u16 },
    #[error("device declares no virtqueues; a virtio device needs at least one")]
    NoQueues,
    #[error("device declares {0} virtqueues; at most 65535 are addressable")]
    TooManyQueues(usize),
    #[error("device features lack VIRTIO_F_VERSION_1; the virtio-mmio v2 transport only carries modern devices")]
    MissingVersion1,
    #[error("cannot create the interrupt eventfd: {0} (check the process's open file limit)")]
    EventFd(#[source] std::io::Error),
}

/// The interrupt handle given to the device: sets the InterruptStatus bit,
/// then signals the irqfd.
pub struct MmioInterrupt {
    status: Arc<AtomicU32>,
    config_generation: Arc<AtomicU32>,
    /// Set by the device ([`InterruptReason::NeedsReset`]); the transport moves it
    /// into its status register at the next register access.
    needs_reset: Arc<AtomicBool>,
    irqfd: EventFd,
}

impl VirtioInterrupt for MmioInterrupt {
    fn trigger(&self, reason: InterruptReason) -> std::io::Result<()> {
        let bit = match reason {
            InterruptReason::UsedBuffer => interrupt_bits::USED_BUFFER,
            InterruptReason::ConfigChange => {
                // The driver re-reads configuration until the generation is
                // stable; a change notification implies a new generation.
                self.config_generation.fetch_add(1, Ordering::SeqCst);
                interrupt_bits::CONFIG_CHANGE
            }
            InterruptReason::NeedsReset => {
                self.needs_reset.store(true, Ordering::SeqCst);
                interrupt_bits::CONFIG_CHANGE
            }
        };
        // The status bit must be visible before the guest takes the interrupt.
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.irqfd.write(1)
    }
}

/// A virtio-mmio v2 transport in front of one device model.
///
/// `D` is usually `dyn VirtioDevice`; tests use a concrete type to inspect it.
pub struct MmioTransport<D: VirtioDevice + ?Sized = dyn VirtioDevice> {
    device: Box<D>,
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    interrupt: Arc<MmioInterrupt>,
    interrupt_status: Arc<AtomicU32>,
    config_generation: Arc<AtomicU32>,
    /// The device asked for a reset ([`MmioInterrupt`]'s copy).
    needs_reset: Arc<AtomicBool>,
    device_status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    shm_sel: u32,
    activated: bool,
    guest_warnings: AtomicU64,
}

impl<D: VirtioDevice + ?Sized> MmioTransport<D> {
    /// Wraps `device`. `mem` is the guest memory handed to the device when it
    /// is activated and used to validate the rings the driver sets up.
    pub fn new(device: Box<D>, mem: GuestMemoryMmap) -> Result<Self, TransportError> {
        if device.device_features() & VIRTIO_F_VERSION_1 == 0 {
            return Err(TransportError::MissingVersion1);
        }
        let sizes = device.queue_max_sizes();
        if sizes.is_empty() {
            return Err(TransportError::NoQueues);
        }
        if sizes.len() > usize::from(u16::MAX) {
            return Err(TransportError::TooManyQueues(sizes.len()));
        }
        let queues = sizes
            .iter()
            .enumerate()
            .map(|(index, &size)| {
                Queue::new(size).map_err(|_| TransportError::InvalidQueueMaxSize { index, size })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let irqfd = EventFd::new(EFD_NONBLOCK).map_err(TransportError::EventFd)?;
        let interrupt_status = Arc::new(AtomicU32::new(0));
        let config_generation = Arc::new(AtomicU32::new(0));
        let needs_reset = Arc::new(AtomicBool::new(false));
        let interrupt = Arc::new(MmioInterrupt {
            status: interrupt_status.clone(),
            config_generation: config_generation.clone(),
            needs_reset: needs_reset.clone(),
            irqfd,
        });
        Ok(Self {
            device,
            mem,
            queues,
            interrupt,
            interrupt_status,
            config_generation,
            needs_reset,
            device_status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            shm_sel: 0,
            activated: false,
            guest_warnings: AtomicU64::new(0),
        })
    }

    /// The eventfd to register with KVM as the device's irqfd.
    pub fn irqfd(&self) -> &EventFd {
        &self.interrupt.irqfd
    }

    /// The interrupt handle the device receives on activation.
    pub fn interrupt(&self) -> Arc<MmioInterrupt> {
        self.interrupt.clone()
    }

    /// Current InterruptStatus register value.
    pub fn interrupt_status(&self) -> u32 {
        self.interrupt_status.load(Ordering::SeqCst)
    }

    /// Current device status register value.
    pub fn device_status(&self) -> u32 {
        self.device_status
    }

    /// Whether the device was activated (DRIVER_OK accepted) and not reset since.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// Features the driver has written so far.
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// Handles a guest read of `data.len()` bytes at `offset` inside the window.
    /// Registers are 32 bits wide; a read of another width or alignment
    /// returns zeros. Configuration space (from 0x100) accepts any width.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.take_needs_reset();
        if offset >= regs::CONFIG {
            self.device.read_config(offset - regs::CONFIG, data);
            return;
        }
        if data.len() != 4 || offset & 3 != 0 {
            guest_warn!(self,
                "virtio-mmio: {}-byte read at register offset {:#x} ignored; registers are 32-bit aligned",
                data.len(),
                offset
            );
            data.fill(0);
            return;
        }
        let value = self.read_reg(offset);
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// Handles a guest write of `data` at `offset` inside the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        self.take_needs_reset();
        if offset >= regs::CONFIG {
            if self.device_status & status::FAILED != 0 {
                guest_warn!(self, "virtio-mmio: config write after FAILED ignored");
                return;
            }
            self.device.write_config(offset - regs::CONFIG, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            guest_warn!(
                self,
                "virtio-mmio: {}-byte write at register offset {:#x} ignored; registers are 32-bit",
                data.len(),
                offset
            );
            return;
        };
        if offset & 3 != 0 {
            guest_warn!(
                self,
                "virtio-mmio: unaligned write at offset {offset:#x} ignored"
            );
            return;
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }

    /// The driver notified queue `index` (QueueNotify write or ioeventfd).
    /// Notifications before DRIVER_OK are dropped: every queue is kicked
    /// once right after activation.
    pub fn queue_notify(&mut self, index: u32) {
        if !self.activated {
            debug!("virtio-mmio: notify for queue {index} before DRIVER_OK ignored");
            return;
        }
        match u16::try_from(index) {
            Ok(i) if usize::from(i) < self.queues.len() => self.device.queue_notify(i),
            _ => guest_warn!(
                self,
                "virtio-mmio: notify for nonexistent queue {index} ignored (device has {})",
                self.queues.len()
            ),
        }
    }

    /// The device's backend descriptor to poll ([`VirtioDevice::backend_fd`])
    /// and whether to poll it for writing too.
    pub fn backend_poll(&self) -> Option<(std::os::fd::RawFd, bool)> {
        self.device
            .backend_fd()
            .map(|fd| (fd, self.device.backend_wants_write()))
    }

    /// How soon the device wants [`MmioTransport::process_backend`] again without an
    /// event ([`VirtioDevice::backend_retry`]).
    pub fn backend_retry(&self) -> Option<std::time::Duration> {
        self.device.backend_retry()
    }

    /// The backend descriptor is ready: lets the device move data.
    pub fn process_backend(&mut self) {
        self.device.process_backend();
    }

    /// Moves a device's reset request ([`InterruptReason::NeedsReset`]) into the status
    /// register, where the driver reads it and which refuses DRIVER_OK until a reset.
    fn take_needs_reset(&mut self) {
        if self.activated && self.needs_reset.swap(false, Ordering::SeqCst) {
            guest_warn!(
                self,
                "virtio-mmio: the device stopped (see its warning) and needs a reset; DEVICE_NEEDS_RESET set"
            );
            self.device_status |= status::DEVICE_NEEDS_RESET;
        }
    }

    fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_sel as usize)
    }

    fn read_reg(&self, offset: u64) -> u32 {
        match offset {
            regs::MAGIC_VALUE => MMIO_MAGIC_VALUE,
            regs::VERSION => MMIO_VERSION,
            regs::DEVICE_ID => self.device.device_type(),
            regs::VENDOR_ID => MMIO_VENDOR_ID,
            regs::DEVICE_FEATURES => match self.device_features_sel {
                0 => low_half(self.device.device_features()),
                1 => (self.device.device_features() >> 32) as u32,
                _ => 0,
            },
            regs::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            regs::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            regs::INTERRUPT_STATUS => self.interrupt_status.load(Ordering::SeqCst),
            regs::STATUS => self.device_status,
            regs::SHM_LEN_LOW | regs::SHM_LEN_HIGH | regs::SHM_BASE_LOW | regs::SHM_BASE_HIGH => {
                self.read_shm(offset)
            }
            regs::CONFIG_GENERATION => self.config_generation.load(Ordering::SeqCst),
            _ => {
                guest_warn!(
                    self,
                    "virtio-mmio: read of write-only or reserved register {offset:#x}"
                );
                0
            }
        }
    }

    fn read_shm(&self, offset: u64) -> u32 {
        let region = self
            .device
            .shared_memory_regions()
            .into_iter()
            .find(|r| u32::from(r.id) == self.shm_sel);
        // Virtio 1.2 section 4.2.2: a non-existent region has length -1;
        // the base of a non-existent region also reads as all ones.
        let (base, len) = region.map_or((u64::MAX, u64::MAX), |r| (r.guest_base, r.len));
        match offset {
            regs::SHM_LEN_LOW => low_half(len),
            regs::SHM_LEN_HIGH => (len >> 32) as u32,
            regs::SHM_BASE_LOW => low_half(base),
            _ => (base >> 32) as u32,
        }
    }

    fn write_reg(&mut self, offset: u64, value: u32) {
        match offset {
            regs::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            regs::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            regs::DRIVER_FEATURES => self.write_driver_features(value),
            regs::QUEUE_SEL => self.queue_sel = value,
            regs::QUEUE_NUM
            | regs::QUEUE_READY
            | regs::QUEUE_DESC_LOW
            | regs::QUEUE_DESC_HIGH
            | regs::QUEUE_DRIVER_LOW
            | regs::QUEUE_DRIVER_HIGH
            | regs::QUEUE_DEVICE_LOW
            | regs::QUEUE_DEVICE_HIGH => self.write_queue_reg(offset, value),
            regs::QUEUE_NOTIFY => self.queue_notify(value),
            regs::INTERRUPT_ACK => {
                self.interrupt_status.fetch_and(!value, Ordering::SeqCst);
            }
            regs::STATUS => self.write_status(value),
            regs::SHM_SEL => self.shm_sel = value,
            _ => guest_warn!(self, "virtio-mmio: write of {value:#x} to read-only or reserved register {offset:#x} ignored"),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        let s = self.device_status;
        if s & status::DRIVER == 0 || s & (status::FEATURES_OK | status::FAILED) != 0 {
            guest_warn!(self, "virtio-mmio: DriverFeatures write in status {s:#x} ignored; features are written after DRIVER and before FEATURES_OK");
            return;
        }
        match self.driver_features_sel {
            0 => {
                self.driver_features =
                    (self.driver_features & 0xffff_ffff_0000_0000) | u64::from(value)
            }
            1 => {
                self.driver_features =
                    (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
            }
            sel => {
                if value != 0 {
                    guest_warn!(self, "virtio-mmio: driver acknowledges features {value:#x} in nonexistent word {sel}; ignored");
                }
            }
        }
    }

    fn write_queue_reg(&mut self, offset: u64, value: u32) {
        let s = self.device_status;
        if s & status::FEATURES_OK == 0
            || s & (status::DRIVER_OK | status::FAILED | status::DEVICE_NEEDS_RESET) != 0
        {
            guest_warn!(self, "virtio-mmio: queue register {offset:#x} write in status {s:#x} ignored; queues are configured after FEATURES_OK and before DRIVER_OK");
            return;
        }
        let sel = self.queue_sel;
        let Some(queue) = self.queues.get_mut(sel as usize) else {
            guest_warn!(
                self,
                "virtio-mmio: queue register {offset:#x} write for nonexistent queue {sel} ignored"
            );
            return;
        };
        if offset != regs::QUEUE_READY && queue.ready() {
            guest_warn!(self, "virtio-mmio: queue {sel} register {offset:#x} written while the queue is ready; ignored");
            return;
        }
        match offset {
            regs::QUEUE_NUM => match u16::try_from(value) {
                Ok(size) if queue.try_set_size(size).is_ok() => {}
                _ => guest_warn!(self,
                    "virtio-mmio: queue {sel} size {value} rejected (maximum {}, must be a power of two)",
                    queue.max_size()
                ),
            },
            regs::QUEUE_READY => match value {
                0 => queue.set_ready(false),
                1 => queue.set_ready(true),
                _ => guest_warn!(self, "virtio-mmio: QueueReady value {value} ignored; only 0 and 1 are valid"),
            },
            regs::QUEUE_DESC_LOW => queue.set_desc_table_address(Some(value), None),
            regs::QUEUE_DESC_HIGH => queue.set_desc_table_address(None, Some(value)),
            regs::QUEUE_DRIVER_LOW => queue.set_avail_ring_address(Some(value), None),
            regs::QUEUE_DRIVER_HIGH => queue.set_avail_ring_address(None, Some(value)),
            regs::QUEUE_DEVICE_LOW => queue.set_used_ring_address(Some(value), None),
            regs::QUEUE_DEVICE_HIGH => queue.set_used_ring_address(None, Some(value)),
            _ => {}
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.device_status;
        if value & old != old & !status::DEVICE_NEEDS_RESET {
            guest_warn!(self, "virtio-mmio: status write {value:#x} clears bits of {old:#x}; only a write of 0 (reset) may do that; ignored");
            return;
        }
        if value & status::DEVICE_NEEDS_RESET & !old != 0 {
            guest_warn!(
                self,
                "virtio-mmio: the driver may not set DEVICE_NEEDS_RESET; bit ignored"
            );
        }
        if value & status::FAILED != 0 {
            if old & status::FAILED == 0 {
                guest_warn!(
                    self,
                    "virtio-mmio: driver set FAILED; the device stays inert until reset"
                );
            }
            self.device_status = old | status::FAILED;
            if self.activated {
                // The driver gave up on a live device: stop it now (no more queue
                // processing or notifications, its resources released), not at the
                // driver's eventual reset, which may never come.
                self.device.reset();
                self.activated = false;
            }
            return;
        }
        let mut new = old;
        // Each step requires the previous one (virtio 1.2 section 3.1.1).
        if value & status::ACKNOWLEDGE != 0 {
            new |= status::ACKNOWLEDGE;
        }
        if value & status::DRIVER != 0 && new & status::DRIVER == 0 {
            if new & status::ACKNOWLEDGE == 0 {
                guest_warn!(self, "virtio-mmio: DRIVER before ACKNOWLEDGE ignored");
            } else {
                new |= status::DRIVER;
            }
        }
        if value & status::FEATURES_OK != 0 && new & status::FEATURES_OK == 0 {
            if new & status::DRIVER == 0 {
                guest_warn!(self, "virtio-mmio: FEATURES_OK before DRIVER ignored");
            } else if self.features_acceptable() {
                new |= status::FEATURES_OK;
                let event_idx = self.driver_features & VIRTIO_F_RING_EVENT_IDX != 0;
                for q in &mut self.queues {
                    q.set_event_idx(event_idx);
                }
            } else {
                guest_warn!(self,
                    "virtio-mmio: FEATURES_OK refused: driver features {:#x} are not a subset of device features {:#x} or lack VERSION_1",
                    self.driver_features,
                    self.device.device_features()
                );
            }
        }
        self.device_status = new;
        if value & status::DRIVER_OK != 0 && new & status::DRIVER_OK == 0 {
            if new & status::FEATURES_OK == 0 {
                guest_warn!(self, "virtio-mmio: DRIVER_OK before FEATURES_OK ignored");
            } else if new & status::DEVICE_NEEDS_RESET != 0 {
                guest_warn!(
                    self,
                    "virtio-mmio: DRIVER_OK while the device needs reset ignored"
                );
            } else {
                self.activate();
            }
        }
    }

    fn features_acceptable(&self) -> bool {
        let offered = self.device.device_features();
        self.driver_features & !offered == 0 && self.driver_features & VIRTIO_F_VERSION_1 != 0
    }

    fn activate(&mut self) {
        let result = self
            .build_activate_context()
            .and_then(|ctx| self.device.activate(ctx));
        match result {
            Ok(()) => {
                self.device_status |= status::DRIVER_OK;
                self.activated = true;
                // Buffers made available before DRIVER_OK (or whose notify
                // raced with it) must not be missed.
                for i in 0..self.queues.len() {
                    // The constructor guarantees at most u16::MAX queues.
                    if let Ok(i) = u16::try_from(i) {
                        self.device.queue_notify(i);
                    }
                }
            }
            Err(e) => {
                guest_warn!(
                    self,
                    "virtio-mmio: device activation failed, setting DEVICE_NEEDS_RESET: {e}"
                );
                self.device_status |= status::DEVICE_NEEDS_RESET;
                if let Err(e) = self.interrupt.trigger(InterruptReason::ConfigChange) {
                    warn!("virtio-mmio: cannot signal DEVICE_NEEDS_RESET to the guest: {e}");
                }
            }
        }
    }

    fn build_activate_context(&self) -> Result<ActivateContext, ActivateError> {
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, q) in self.queues.iter().enumerate() {
            if !q.is_valid(&self.mem) {
                return Err(ActivateError::QueueNotReady(i));
            }
            let copy = Queue::try_from(q.state())
                .map_err(|e| ActivateError::Device(format!("cannot copy queue {i} state: {e}")))?;
            queues.push(copy);
        }
        Ok(ActivateContext {
            mem: self.mem.clone(),
            queues,
            interrupt: self.interrupt.clone(),
            acked_features: self.driver_features,
        })
    }

    fn reset(&mut self) {
        debug!("virtio-mmio: device reset");
        self.device.reset();
        self.activated = false;
        self.device_status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.shm_sel = 0;
        for q in &mut self.queues {
            q.reset();
        }
        self.interrupt_status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }
}

/// The low 32 bits of a 64-bit value that the registers show as a LOW/HIGH
/// pair (device features, shared memory region base and length); the HIGH
/// register shows `v >> 32`.
#[allow(clippy::cast_possible_truncation)] // keeping the low half is the point
fn low_half(v: u64) -> u32 {
    v as u32
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
#[allow(clippy::cast_possible_truncation)]
// test code: splits test addresses and features into registers
mod tests;
