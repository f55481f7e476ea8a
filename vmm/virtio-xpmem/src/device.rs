//! [`XpmemDevice`]: the per-VM virtio device behind the virtio-mmio transport.

use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_mmio_transport::{ActivateContext, ActivateError, SharedMemoryRegion, VirtioDevice};
use virtio_xpmem_wire as wire;
use vm_memory::ByteValued;
use xpmem_domain::{VmId, VmSpec};

use crate::hub::{lock, DeviceStats, Endpoint, XpmemHub};

/// Maximum size of each of the two virtqueues.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE, QUEUE_SIZE];

/// The virtio-xpmem device of one VM. Created by [`XpmemHub::add_vm`];
/// dropping it removes the VM from the hub.
pub struct XpmemDevice {
    hub: Arc<XpmemHub>,
    vm: VmId,
    ep: Arc<Mutex<Endpoint>>,
    config: wire::VirtioXpmemConfig,
    regions: Vec<SharedMemoryRegion>,
    spec: VmSpec,
}

impl XpmemDevice {
    pub(crate) fn new(
        hub: Arc<XpmemHub>,
        vm: VmId,
        ep: Arc<Mutex<Endpoint>>,
        config: wire::VirtioXpmemConfig,
        regions: Vec<SharedMemoryRegion>,
        spec: VmSpec,
    ) -> Self {
        Self {
            hub,
            vm,
            ep,
            config,
            regions,
            spec,
        }
    }

    /// The VM this device belongs to.
    pub fn vm(&self) -> VmId {
        self.vm
    }

    /// This device's counters.
    pub fn stats(&self) -> DeviceStats {
        lock(&self.ep).stats()
    }

    /// The hub this device belongs to.
    pub fn hub(&self) -> &Arc<XpmemHub> {
        &self.hub
    }
}

/// Copies `data.len()` bytes of the config space `cfg` from `offset` (zeros beyond it).
pub(crate) fn read_config_space(cfg: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = offset
            .checked_add(i as u64)
            .and_then(|o| usize::try_from(o).ok())
            .and_then(|o| cfg.get(o))
            .copied()
            .unwrap_or(0);
    }
}

/// The config space is read-only: a write is logged and dropped.
pub(crate) fn ignore_config_write(vm: VmId, offset: u64, data: &[u8]) {
    log::debug!(
        "virtio-xpmem: VM {vm:?}: ignoring a {}-byte write to read-only config space at {offset:#x}",
        data.len()
    );
}

impl VirtioDevice for XpmemDevice {
    fn device_type(&self) -> u32 {
        wire::VIRTIO_ID_XPMEM
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn device_features(&self) -> u64 {
        (1u64 << VIRTIO_F_VERSION_1)
            | (1u64 << wire::VIRTIO_XPMEM_F_RO_APERTURE)
            | (1u64 << wire::VIRTIO_XPMEM_F_NAMES)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_space(self.config.as_slice(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        ignore_config_write(self.vm, offset, data);
    }

    fn shared_memory_regions(&self) -> Vec<SharedMemoryRegion> {
        self.regions.clone()
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if ctx.acked_features & (1u64 << VIRTIO_F_VERSION_1) == 0 {
            return Err(ActivateError::Device(
                "the driver did not accept VIRTIO_F_VERSION_1; virtio-xpmem has no legacy interface".into(),
            ));
        }
        let nq = ctx.queues.len();
        let mut queues = ctx.queues.into_iter();
        let (Some(reqq), Some(evq)) = (queues.next(), queues.next()) else {
            return Err(ActivateError::QueueNotReady(nq));
        };
        let mut spec = self.spec.clone();
        if ctx.acked_features & (1u64 << wire::VIRTIO_XPMEM_F_RO_APERTURE) == 0 {
            spec.ro_aperture_pages = 0;
        }
        spec.names = ctx.acked_features & (1u64 << wire::VIRTIO_XPMEM_F_NAMES) != 0;
        self.hub
            .activate(self.vm, spec, ctx.mem, reqq, evq, ctx.interrupt)
            .map_err(|e| ActivateError::Device(e.to_string()))
    }

    fn queue_notify(&mut self, index: u16) {
        match index {
            wire::VIRTIO_XPMEM_QUEUE_REQUEST => self.hub.process_requests(self.vm),
            wire::VIRTIO_XPMEM_QUEUE_EVENT => lock(&self.ep).flush_events(),
            other => log::debug!(
                "virtio-xpmem: VM {:?}: notify for unknown queue {other}",
                self.vm
            ),
        }
    }

    fn reset(&mut self) {
        self.hub.reset_vm(self.vm);
    }
}

impl Drop for XpmemDevice {
    fn drop(&mut self) {
        self.hub.remove_vm(self.vm);
    }
}
