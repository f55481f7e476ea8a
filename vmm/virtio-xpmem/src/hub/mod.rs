//! The hub shared by every virtio-xpmem device of a monitor.
//!
//! # Locking
//!
//! There are two kinds of mutex: the hub's `state` (the domain, the aperture
//! backend and the endpoint registry) and one `Endpoint` mutex per VM (its
//! queues, guest memory, deferred chains and event backlog). The order is
//! always **`state` first, then at most one endpoint at a time**:
//!
//! - requestq processing takes `state`, then its own endpoint to pop one
//!   chain, releases the endpoint, calls the domain and routes the actions,
//!   locking each target endpoint in turn (never two at once);
//! - the deadline timer takes `state`, then endpoints one at a time;
//! - an eventq notification takes only its own endpoint;
//! - nothing takes `state` while holding an endpoint.
//!
//! So no cycle is possible. The transport calls the device with its own lock
//! held, which puts "transport of VM A" before `state`; the hub in turn
//! raises interrupts of *other* VMs through [`VirtioInterrupt::trigger`],
//! which therefore must not take VM B's transport lock (the virtio-mmio
//! transport's interrupt is an atomic status word plus an eventfd).
//! Requests are processed one chain per `state` acquisition, so a guest
//! flooding its requestq cannot starve the other VMs.
//!
//! # Files
//!
//! This file holds the hub's public face: [`XpmemHub`] (creation, VMs joining and
//! leaving, request processing, snapshots), its configuration, errors and counters.
//! `endpoint.rs` is one VM's queues (pop and validate chains, respond, deliver
//! events), `route.rs` the state behind the hub mutex and the in-order application of
//! the domain's actions, `timer.rs` the deadline timer thread.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use virtio_mmio_transport::VirtioInterrupt;
use virtio_queue::Queue;
use virtio_xpmem_wire as wire;
use vm_memory::GuestMemoryMmap;
use xpmem_domain::{
    Counters, Domain, DomainConfig, DomainError, GpaRange, ImportPolicy, Mapping, VmHoldings, VmId,
    VmSpec, Window,
};

use crate::aperture::{
    ApertureBackend, ApertureError, MmapAperture, VmRamLayout, VmWindows, PAGE_SIZE,
};

mod endpoint;
mod route;
mod timer;

pub(crate) use endpoint::Endpoint;
use endpoint::{Active, Popped};
use route::HubState;
pub use timer::TimerError;
use timer::{DeadlineTimer, TIMER_IDLE};

/// Errors of hub and VM management (not of guest requests, which get a
/// status instead).
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("VM id {0:?} is out of range; virtio-xpmem VM ids are 1..{max}", max = xpmem_domain::MAX_VM_ID)]
    BadVmId(VmId),
    #[error("VM {0:?} already has a virtio-xpmem device on this hub")]
    DuplicateVm(VmId),
    #[error("import aperture: {0}")]
    Aperture(#[from] ApertureError),
    #[error("xpmem domain: {0}")]
    Domain(#[from] DomainError),
    #[error("cannot start the xpmem deadline timer thread: {0}")]
    Timer(#[from] TimerError),
}

/// Configuration of a hub (one per monitor).
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// How long an importer has to acknowledge an invalidation before its
    /// slots are revoked by force.
    pub invalidate_deadline: Duration,
    /// Which VMs may import from which.
    pub policy: ImportPolicy,
    /// Key for id generation: pass a random value in production.
    pub seed: u64,
    /// Largest FAULT prefetch window in pages (at most
    /// [`wire::VIRTIO_XPMEM_MAX_PAGES`]).
    pub max_fault_pages: u32,
    /// Events kept per VM while its eventq has no buffers; further events
    /// are dropped (and counted). The forced-revocation deadline still
    /// bounds a dropped INVALIDATE.
    pub max_pending_events: usize,
    /// Host mappings (VMAs) each VM's two aperture windows may use; together with the
    /// rest of the process they must stay below `vm.max_map_count` (see
    /// [`crate::aperture`], "Host mapping budget").
    pub mappings_per_vm: u64,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            invalidate_deadline: Duration::from_millis(1000),
            policy: ImportPolicy::AllToAll,
            seed: 0x5eed_5eed_5eed_5eed,
            max_fault_pages: 64,
            max_pending_events: 4096,
            mappings_per_vm: crate::aperture::DEFAULT_MAPPINGS_PER_VM,
        }
    }
}

/// Source of "now" in milliseconds for the domain.
#[derive(Clone, Debug)]
pub enum HubClock {
    /// Milliseconds since the hub was created; a timer thread ticks the
    /// domain at each deadline.
    Monotonic,
    /// Time set by the caller (tests, benchmarks); no timer thread: call
    /// [`XpmemHub::tick`].
    Manual(ManualClock),
}

/// A clock the caller advances.
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// Current time in ms.
    pub fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
    /// Advances the clock by `ms`.
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

/// Per-device counters (cumulative unless noted).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// requestq chains popped.
    pub chains: u64,
    /// Chains rejected before reaching the domain (malformed chain or request).
    pub rejected: u64,
    /// Requests handed to the domain.
    pub dispatched: u64,
    /// Responses written (including rejections).
    pub responses: u64,
    /// Events written to eventq buffers.
    pub events_delivered: u64,
    /// Events dropped because the backlog was full.
    pub events_dropped: u64,
    /// eventq buffers returned unused because they were invalid or too small.
    pub bad_event_buffers: u64,
    /// Events waiting for eventq buffers (current value).
    pub events_backlog: u64,
    /// Deferred requests waiting for their response (current value).
    pub pending_requests: u64,
}

/// Hub-wide aperture counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApertureStats {
    pub map_actions: u64,
    pub unmap_actions: u64,
    pub mmap_calls: u64,
    pub pages_mapped: u64,
    pub pages_unmapped: u64,
    pub map_failures: u64,
    pub unmap_failures: u64,
    /// Windows replaced whole because an unmap or map failed.
    pub windows_revoked: u64,
    /// Windows whose revocation failed too, so the VM was cut off from them.
    pub cut_offs: u64,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep going
    // rather than turning one bug into a monitor-wide panic cascade.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How the monitor cuts a VM off from one of its aperture windows when the window's pages
/// cannot be replaced (for example, delete the window's memslot). Must not need new host
/// mappings. An error stops the monitor.
pub type CutOff = Box<dyn Fn(Window) -> std::io::Result<()> + Send>;

/// Called with (VM, request opcode, success) just before a response is written: tests use it
/// to check, at the moment an exporter is told its pages are free, that no window maps them.
pub type CompletionProbe = Box<dyn Fn(VmId, u32, bool) + Send>;

/// Request tag used for replies the hub makes on a guest's behalf; endpoint
/// tags start at 1 and skip it.
const SYNTHETIC_TAG: u64 = 0;

/// The hub: one xpmem domain, one aperture backend, all VMs' devices.
pub struct XpmemHub {
    state: Mutex<HubState>,
    cfg: HubConfig,
    clock: HubClock,
    start: Instant,
    /// The deadline timer thread ([`HubClock::Monotonic`] only).
    timer: Option<DeadlineTimer>,
}

impl XpmemHub {
    /// A hub with the real [`MmapAperture`] and a deadline timer thread.
    pub fn new(cfg: HubConfig) -> Result<Arc<Self>, HubError> {
        let aperture = MmapAperture::with_budget(cfg.mappings_per_vm);
        Self::with_backend(cfg, Box::new(aperture), HubClock::Monotonic)
    }

    /// A hub with a chosen aperture backend and clock. With
    /// [`HubClock::Monotonic`] a timer thread ticks the domain; with
    /// [`HubClock::Manual`] the caller calls [`XpmemHub::tick`].
    pub fn with_backend(
        cfg: HubConfig,
        aperture: Box<dyn ApertureBackend>,
        clock: HubClock,
    ) -> Result<Arc<Self>, HubError> {
        // Spec 5.1: 1 <= max_fault_pages <= 512, invalidate_deadline_ms >= 1.
        let max_fault_pages = cfg.max_fault_pages.clamp(1, wire::VIRTIO_XPMEM_MAX_PAGES);
        let deadline = cfg.invalidate_deadline.max(Duration::from_millis(1));
        let dcfg = DomainConfig {
            seed: cfg.seed,
            policy: cfg.policy.clone(),
            invalidate_deadline_ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
            max_fault_pages,
            ..DomainConfig::default()
        };
        let mut cfg = cfg;
        cfg.max_fault_pages = max_fault_pages;
        cfg.invalidate_deadline = deadline;
        let timer = match clock {
            HubClock::Monotonic => Some(DeadlineTimer::new()?),
            HubClock::Manual(_) => None,
        };
        let hub = Arc::new(Self {
            state: Mutex::new(HubState {
                domain: Domain::new(dcfg),
                aperture,
                endpoints: HashMap::new(),
                joined: HashMap::new(),
                held_at_leave: HashMap::new(),
                cut_offs: HashMap::new(),
                completion_probe: None,
                stats: ApertureStats::default(),
            }),
            cfg,
            clock,
            start: Instant::now(),
            timer,
        });
        if let Some(timer) = &hub.timer {
            timer.start(Arc::downgrade(&hub), TIMER_IDLE)?;
        }
        Ok(hub)
    }

    /// The configuration (after clamping).
    pub fn config(&self) -> &HubConfig {
        &self.cfg
    }

    fn now_ms(&self) -> u64 {
        match &self.clock {
            HubClock::Monotonic => {
                u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
            }
            HubClock::Manual(c) => c.now_ms(),
        }
    }

    /// Creates the virtio-xpmem device of VM `vm`: `ram` is its guest RAM
    /// (memfd-backed, for exporting), `windows` its two aperture windows
    /// (register them as memslots; the ro one with `KVM_MEM_READONLY`), or where they
    /// are when the VM runs in a process of its own ([`VmWindows::Remote`]).
    pub fn add_vm(
        self: &Arc<Self>,
        vm: VmId,
        ram: VmRamLayout,
        windows: impl Into<VmWindows>,
    ) -> Result<crate::XpmemDevice, HubError> {
        if vm.0 == 0 || vm.0 >= xpmem_domain::MAX_VM_ID {
            return Err(HubError::BadVmId(vm));
        }
        let windows = windows.into();
        let geometry = windows.geometry();
        let mut st = lock(&self.state);
        if st.endpoints.contains_key(&vm) {
            return Err(HubError::DuplicateVm(vm));
        }
        let spec = VmSpec {
            ram: ram
                .regions()
                .iter()
                .map(|r| GpaRange {
                    start: r.guest_base,
                    len: r.len,
                })
                .collect(),
            rw_aperture_pages: geometry.rw_len / PAGE_SIZE,
            ro_aperture_pages: geometry.ro_len / PAGE_SIZE,
            names: true,
        };
        let forbidden = [
            (geometry.rw_base, geometry.rw_len),
            (geometry.ro_base, geometry.ro_len),
        ];
        let regions = vec![
            virtio_mmio_transport::SharedMemoryRegion {
                id: wire::VIRTIO_XPMEM_SHM_RW,
                guest_base: geometry.rw_base,
                len: geometry.rw_len,
            },
            virtio_mmio_transport::SharedMemoryRegion {
                id: wire::VIRTIO_XPMEM_SHM_RO,
                guest_base: geometry.ro_base,
                len: geometry.ro_len,
            },
        ];
        st.aperture.add_vm(vm, ram, windows)?;
        let ep = Arc::new(Mutex::new(Endpoint {
            vm,
            forbidden,
            active: None,
            pending: HashMap::new(),
            next_tag: 1,
            events: VecDeque::new(),
            max_pending_events: self.cfg.max_pending_events,
            stats: DeviceStats::default(),
        }));
        st.endpoints.insert(vm, ep.clone());
        let config = wire::VirtioXpmemConfig {
            vm_id: vm.0.into(),
            event_size: wire::VIRTIO_XPMEM_EVENT_SIZE.into(),
            max_fault_pages: self.cfg.max_fault_pages.into(),
            reserved: 0.into(),
            invalidate_deadline_ms: u64::try_from(self.cfg.invalidate_deadline.as_millis())
                .unwrap_or(u64::MAX)
                .into(),
        };
        Ok(crate::XpmemDevice::new(
            self.clone(),
            vm,
            ep,
            config,
            regions,
            spec,
        ))
    }

    /// Joins the VM to the domain and takes the queues (driver set DRIVER_OK).
    pub(crate) fn activate(
        &self,
        vm: VmId,
        spec: VmSpec,
        mem: GuestMemoryMmap,
        reqq: Queue,
        evq: Queue,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), HubError> {
        let mut st = lock(&self.state);
        let ep = st
            .endpoint(vm)
            .ok_or(HubError::Aperture(ApertureError::UnknownVm(vm)))?;
        if st.joined.contains_key(&vm) {
            // Activated twice without a reset: start over cleanly.
            self.leave_locked(&mut st, vm);
        }
        st.domain.add_vm(vm, spec)?;
        st.joined.insert(vm, ());
        let mut ep = lock(&ep);
        ep.deactivate();
        ep.active = Some(Active {
            mem,
            reqq,
            evq,
            interrupt,
        });
        Ok(())
    }

    /// Removes `vm` from the domain, routes the consequences to the other
    /// VMs and revokes everything in the VM's own windows.
    fn leave_locked(&self, st: &mut HubState, vm: VmId) {
        let mut left = false;
        if st.joined.remove(&vm).is_some() {
            if let Some(held) = st.domain.vm_holdings(vm) {
                st.held_at_leave.insert(vm, held);
            }
            let now = self.now_ms();
            match st.domain.remove_vm(vm, now) {
                // Its windows are revoked first (RevokeWindow actions), then the
                // requests of other VMs that waited for it are completed.
                Ok(actions) => {
                    st.route(actions, now);
                    left = true;
                }
                Err(e) => log::error!("virtio-xpmem: removing VM {vm:?} from the domain: {e}"),
            }
        }
        if !left {
            // Never joined, or already left: make sure nothing shows anyway.
            for window in [Window::Rw, Window::Ro] {
                st.revoke_window_or_cut_off(vm, window);
            }
        }
        if let Some(ep) = st.endpoint(vm) {
            lock(&ep).deactivate();
        }
    }

    /// Device reset: leave the domain, drop queues and deferred chains.
    pub(crate) fn reset_vm(&self, vm: VmId) {
        let mut st = lock(&self.state);
        self.leave_locked(&mut st, vm);
    }

    /// Device gone: reset, then forget the VM.
    pub(crate) fn remove_vm(&self, vm: VmId) {
        let mut st = lock(&self.state);
        self.leave_locked(&mut st, vm);
        st.endpoints.remove(&vm);
        st.held_at_leave.remove(&vm);
        st.cut_offs.remove(&vm);
        if let Err(e) = st.aperture.remove_vm(vm) {
            log::error!("virtio-xpmem: unregistering VM {vm:?} from the aperture: {e}");
        }
    }

    /// Handles the available requestq chains of `vm`: at most one queue's worth, so a
    /// guest that refills its queue from another vCPU cannot keep this thread (and, chain by
    /// chain, the hub lock) busy; chains it adds meanwhile come with their own notification.
    pub(crate) fn process_requests(&self, vm: VmId) {
        let mut budget = None;
        loop {
            let mut st = lock(&self.state);
            let Some(ep) = st.endpoint(vm) else {
                return;
            };
            let mut ep = lock(&ep);
            let left = budget.get_or_insert_with(|| ep.request_queue_size());
            if *left == 0 {
                break;
            }
            *left -= 1;
            let popped = ep.pop_request();
            drop(ep);
            match popped {
                Popped::Empty => break,
                Popped::Rejected => {}
                Popped::Request(tag, req) => {
                    let now = self.now_ms();
                    let actions = st.domain.handle(vm, tag, req, now);
                    st.route(actions, now);
                }
            }
        }
        if let Some(timer) = &self.timer {
            timer.kick();
        }
    }

    /// Registers how to cut `vm` off from an aperture window whose pages cannot be revoked
    /// (see [`CutOff`]). Without one, such a failure stops the process.
    pub fn set_cut_off(&self, vm: VmId, cut: CutOff) {
        lock(&self.state).cut_offs.insert(vm, cut);
    }

    /// Installs a probe called before each response is written (tests; see
    /// [`CompletionProbe`]). It runs with the hub lock held and must not call the hub.
    #[doc(hidden)]
    pub fn set_completion_probe(&self, probe: CompletionProbe) {
        lock(&self.state).completion_probe = Some(probe);
    }

    /// Runs the domain's deadline processing now (the timer thread calls
    /// this; with a manual clock, tests and benchmarks do).
    pub fn tick(&self) {
        let mut st = lock(&self.state);
        let now = self.now_ms();
        let actions = st.domain.tick(now);
        st.route(actions, now);
    }

    fn next_deadline(&self) -> Option<u64> {
        lock(&self.state).domain.next_deadline()
    }

    /// Snapshot of the domain counters.
    pub fn counters(&self) -> Counters {
        lock(&self.state).domain.counters()
    }

    /// What VM `vm`'s guest holds in the domain now or, if its device is not
    /// active, held when the device was last reset (a reset tears that down;
    /// a guest that shuts down resets its devices). None: it never joined.
    pub fn vm_holdings(&self, vm: VmId) -> Option<VmHoldings> {
        let st = lock(&self.state);
        st.domain
            .vm_holdings(vm)
            .or_else(|| st.held_at_leave.get(&vm).copied())
    }

    /// Snapshot of the aperture counters.
    pub fn aperture_stats(&self) -> ApertureStats {
        lock(&self.state).stats.clone()
    }

    /// Snapshot of one device's counters.
    pub fn device_stats(&self, vm: VmId) -> Option<DeviceStats> {
        let st = lock(&self.state);
        let ep = st.endpoint(vm)?;
        let s = lock(&ep).stats();
        Some(s)
    }

    /// Every importer page the domain believes mapped (tests and fuzzing compare it with
    /// the real windows).
    #[doc(hidden)]
    pub fn mappings(&self) -> Vec<Mapping> {
        lock(&self.state).domain.mappings()
    }

    /// Importer slots mapping exporter page `gpa` (see
    /// [`Domain::rmap_lookup`]).
    pub fn rmap_lookup(&self, exporter: VmId, gpa: u64) -> Vec<Mapping> {
        lock(&self.state).domain.rmap_lookup(exporter, gpa)
    }

    /// The domain's estimate of its reverse map's heap bytes.
    pub fn rmap_heap_bytes_estimate(&self) -> u64 {
        lock(&self.state).domain.rmap_heap_bytes_estimate()
    }

    /// Runs the domain's internal consistency checks (tests).
    pub fn check_invariants(&self) -> Result<(), String> {
        lock(&self.state).domain.check_invariants()
    }
}

impl Drop for XpmemHub {
    fn drop(&mut self) {
        if let Some(timer) = &self.timer {
            timer.stop();
        }
    }
}
