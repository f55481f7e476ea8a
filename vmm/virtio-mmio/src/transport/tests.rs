use std::sync::{Arc, Mutex};

use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::*;
use crate::device::SharedMemoryRegion;

const FEATURE_X: u64 = 1 << 3;
const DEV_FEATURES: u64 = VIRTIO_F_VERSION_1 | FEATURE_X;

#[derive(Debug, Default)]
struct Record {
    activations: Vec<(usize, u64)>,
    notifies: Vec<u16>,
    resets: usize,
    config_writes: Vec<(u64, Vec<u8>)>,
}

struct TestDevice {
    rec: Arc<Mutex<Record>>,
    config: [u8; 8],
    fail_activate: bool,
    regions: Vec<SharedMemoryRegion>,
    held: Option<ActivateContext>,
}

impl VirtioDevice for TestDevice {
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn device_features(&self) -> u64 {
        DEV_FEATURES
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| self.config.get(o + i))
                .copied()
                .unwrap_or(0);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.rec
            .lock()
            .unwrap()
            .config_writes
            .push((offset, data.to_vec()));
    }
    fn shared_memory_regions(&self) -> Vec<SharedMemoryRegion> {
        self.regions.clone()
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.fail_activate {
            return Err(ActivateError::Device("test failure".into()));
        }
        self.rec
            .lock()
            .unwrap()
            .activations
            .push((ctx.queues.len(), ctx.acked_features));
        self.held = Some(ctx);
        Ok(())
    }
    fn queue_notify(&mut self, index: u16) {
        self.rec.lock().unwrap().notifies.push(index);
    }
    fn reset(&mut self) {
        self.held = None;
        self.rec.lock().unwrap().resets += 1;
    }
}

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
}

fn transport_with(fail_activate: bool) -> (MmioTransport<TestDevice>, Arc<Mutex<Record>>) {
    let rec = Arc::new(Mutex::new(Record::default()));
    let dev = TestDevice {
        rec: rec.clone(),
        config: [1, 2, 3, 4, 5, 6, 7, 8],
        fail_activate,
        regions: vec![SharedMemoryRegion {
            id: 0,
            guest_base: 0x1_2345_6000,
            len: 0x2_0000_0000,
        }],
        held: None,
    };
    (MmioTransport::new(Box::new(dev), mem()).unwrap(), rec)
}

fn transport() -> (MmioTransport<TestDevice>, Arc<Mutex<Record>>) {
    transport_with(false)
}

fn rd(t: &mut MmioTransport<TestDevice>, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn wr(t: &mut MmioTransport<TestDevice>, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn add_status(t: &mut MmioTransport<TestDevice>, bit: u32) {
    let s = rd(t, regs::STATUS);
    wr(t, regs::STATUS, s | bit);
}

fn negotiate(t: &mut MmioTransport<TestDevice>, features: u64) -> bool {
    add_status(t, status::ACKNOWLEDGE);
    add_status(t, status::DRIVER);
    wr(t, regs::DRIVER_FEATURES_SEL, 0);
    wr(t, regs::DRIVER_FEATURES, features as u32);
    wr(t, regs::DRIVER_FEATURES_SEL, 1);
    wr(t, regs::DRIVER_FEATURES, (features >> 32) as u32);
    add_status(t, status::FEATURES_OK);
    rd(t, regs::STATUS) & status::FEATURES_OK != 0
}

/// Sets up queue `i` at a distinct place in guest memory, like Linux does.
fn setup_queue(t: &mut MmioTransport<TestDevice>, i: u32, size: u32) {
    let base = 0x1_0000 + u64::from(i) * 0x1_0000;
    wr(t, regs::QUEUE_SEL, i);
    assert_eq!(rd(t, regs::QUEUE_READY), 0);
    assert!(rd(t, regs::QUEUE_NUM_MAX) >= size);
    wr(t, regs::QUEUE_NUM, size);
    wr(t, regs::QUEUE_DESC_LOW, base as u32);
    wr(t, regs::QUEUE_DESC_HIGH, 0);
    wr(t, regs::QUEUE_DRIVER_LOW, (base + 0x1000) as u32);
    wr(t, regs::QUEUE_DRIVER_HIGH, 0);
    wr(t, regs::QUEUE_DEVICE_LOW, (base + 0x2000) as u32);
    wr(t, regs::QUEUE_DEVICE_HIGH, 0);
    wr(t, regs::QUEUE_READY, 1);
    assert_eq!(rd(t, regs::QUEUE_READY), 1);
}

fn full_init(t: &mut MmioTransport<TestDevice>) {
    assert!(negotiate(t, DEV_FEATURES));
    setup_queue(t, 0, 16);
    setup_queue(t, 1, 4);
    add_status(t, status::DRIVER_OK);
}

#[test]
fn identification_registers() {
    let (mut t, _) = transport();
    assert_eq!(rd(&mut t, regs::MAGIC_VALUE), 0x7472_6976);
    assert_eq!(rd(&mut t, regs::VERSION), 2);
    assert_eq!(rd(&mut t, regs::DEVICE_ID), 42);
    assert_eq!(rd(&mut t, regs::VENDOR_ID), MMIO_VENDOR_ID);
    wr(&mut t, regs::DEVICE_FEATURES_SEL, 0);
    assert_eq!(rd(&mut t, regs::DEVICE_FEATURES), FEATURE_X as u32);
    wr(&mut t, regs::DEVICE_FEATURES_SEL, 1);
    assert_eq!(rd(&mut t, regs::DEVICE_FEATURES), 1);
    wr(&mut t, regs::DEVICE_FEATURES_SEL, 2);
    assert_eq!(rd(&mut t, regs::DEVICE_FEATURES), 0);
    // Writes to read-only registers change nothing.
    wr(&mut t, regs::MAGIC_VALUE, 0);
    wr(&mut t, regs::DEVICE_ID, 7);
    assert_eq!(rd(&mut t, regs::MAGIC_VALUE), 0x7472_6976);
    assert_eq!(rd(&mut t, regs::DEVICE_ID), 42);
}

#[test]
fn new_rejects_bad_devices() {
    struct Bad(Vec<u16>, u64);
    impl VirtioDevice for Bad {
        fn device_type(&self) -> u32 {
            1
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &self.0
        }
        fn device_features(&self) -> u64 {
            self.1
        }
        fn read_config(&self, _: u64, _: &mut [u8]) {}
        fn write_config(&mut self, _: u64, _: &[u8]) {}
        fn activate(&mut self, _: ActivateContext) -> Result<(), ActivateError> {
            Ok(())
        }
        fn queue_notify(&mut self, _: u16) {}
        fn reset(&mut self) {}
    }
    let new = |q: Vec<u16>, f| MmioTransport::new(Box::new(Bad(q, f)), mem());
    assert!(matches!(
        new(vec![3], VIRTIO_F_VERSION_1),
        Err(TransportError::InvalidQueueMaxSize { index: 0, size: 3 })
    ));
    assert!(matches!(
        new(vec![], VIRTIO_F_VERSION_1),
        Err(TransportError::NoQueues)
    ));
    assert!(matches!(
        new(vec![8], 0),
        Err(TransportError::MissingVersion1)
    ));
    assert!(new(vec![8, 256], VIRTIO_F_VERSION_1).is_ok());
}

#[test]
fn feature_negotiation_accepts_subset_with_version_1() {
    let (mut t, _) = transport();
    assert!(negotiate(&mut t, VIRTIO_F_VERSION_1));
    assert_eq!(t.driver_features(), VIRTIO_F_VERSION_1);
    // Features are frozen after FEATURES_OK.
    wr(&mut t, regs::DRIVER_FEATURES_SEL, 0);
    wr(&mut t, regs::DRIVER_FEATURES, FEATURE_X as u32);
    assert_eq!(t.driver_features(), VIRTIO_F_VERSION_1);
}

#[test]
fn feature_negotiation_refuses_unoffered_bits() {
    let (mut t, _) = transport();
    assert!(!negotiate(&mut t, DEV_FEATURES | (1 << 5)));
    assert_eq!(
        rd(&mut t, regs::STATUS),
        status::ACKNOWLEDGE | status::DRIVER
    );
    // The driver may not proceed to DRIVER_OK either.
    add_status(&mut t, status::DRIVER_OK);
    assert_eq!(rd(&mut t, regs::STATUS) & status::DRIVER_OK, 0);
    assert!(!t.is_activated());
}

#[test]
fn feature_negotiation_refuses_legacy_driver() {
    let (mut t, _) = transport();
    assert!(!negotiate(&mut t, FEATURE_X));
}

#[test]
fn features_before_driver_are_ignored() {
    let (mut t, _) = transport();
    wr(&mut t, regs::DRIVER_FEATURES, FEATURE_X as u32);
    assert_eq!(t.driver_features(), 0);
}

#[test]
fn status_steps_must_be_in_order() {
    let (mut t, _) = transport();
    wr(&mut t, regs::STATUS, status::DRIVER);
    assert_eq!(rd(&mut t, regs::STATUS), 0);
    wr(&mut t, regs::STATUS, status::ACKNOWLEDGE);
    wr(
        &mut t,
        regs::STATUS,
        status::ACKNOWLEDGE | status::FEATURES_OK,
    );
    assert_eq!(rd(&mut t, regs::STATUS), status::ACKNOWLEDGE);
    // Clearing a bit without a reset is refused.
    add_status(&mut t, status::DRIVER);
    wr(&mut t, regs::STATUS, status::DRIVER);
    assert_eq!(
        rd(&mut t, regs::STATUS),
        status::ACKNOWLEDGE | status::DRIVER
    );
}

#[test]
fn full_init_activates_device_and_rekicks_queues() {
    let (mut t, rec) = transport();
    full_init(&mut t);
    assert!(t.is_activated());
    assert_eq!(
        rd(&mut t, regs::STATUS),
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK
    );
    {
        let r = rec.lock().unwrap();
        assert_eq!(r.activations, vec![(2, DEV_FEATURES)]);
        assert_eq!(r.notifies, vec![0, 1]);
    }
    let held = t.device().held.as_ref().unwrap();
    assert_eq!(held.queues[0].size(), 16);
    assert_eq!(held.queues[1].size(), 4);
    assert_eq!(held.queues[1].desc_table(), 0x2_0000);
    assert_eq!(held.queues[1].avail_ring(), 0x2_1000);
    assert_eq!(held.queues[1].used_ring(), 0x2_2000);

    // Notifications now reach the device, via the register and directly.
    wr(&mut t, regs::QUEUE_NOTIFY, 1);
    t.queue_notify(0);
    assert_eq!(rec.lock().unwrap().notifies, vec![0, 1, 1, 0]);

    // Queue registers are frozen after DRIVER_OK.
    wr(&mut t, regs::QUEUE_SEL, 0);
    wr(&mut t, regs::QUEUE_NUM, 2);
    wr(&mut t, regs::QUEUE_READY, 0);
    assert_eq!(rd(&mut t, regs::QUEUE_READY), 1);
    assert_eq!(t.queues[0].size(), 16);
}

#[test]
fn activation_requires_every_queue() {
    let (mut t, rec) = transport();
    assert!(negotiate(&mut t, DEV_FEATURES));
    setup_queue(&mut t, 0, 16);
    add_status(&mut t, status::DRIVER_OK);
    assert!(!t.is_activated());
    let s = rd(&mut t, regs::STATUS);
    assert_eq!(s & status::DRIVER_OK, 0);
    assert_ne!(s & status::DEVICE_NEEDS_RESET, 0);
    assert_ne!(t.interrupt_status() & interrupt_bits::CONFIG_CHANGE, 0);
    assert!(rec.lock().unwrap().activations.is_empty());
}

#[test]
fn activation_error_sets_needs_reset_and_reset_recovers() {
    let (mut t, rec) = transport_with(true);
    full_init(&mut t);
    assert!(!t.is_activated());
    assert_ne!(rd(&mut t, regs::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(t.irqfd().read().unwrap(), 1);
    wr(&mut t, regs::STATUS, 0);
    assert_eq!(rd(&mut t, regs::STATUS), 0);
    assert_eq!(rec.lock().unwrap().resets, 1);
}

#[test]
fn a_device_that_needs_a_reset_shows_it_in_status_until_the_driver_resets() {
    let (mut t, rec) = transport();
    full_init(&mut t);
    assert!(t.is_activated());
    let _ = t.irqfd().read();
    t.interrupt().trigger(InterruptReason::NeedsReset).unwrap();
    let s = rd(&mut t, regs::STATUS);
    assert_ne!(s & status::DEVICE_NEEDS_RESET, 0);
    assert_ne!(s & status::DRIVER_OK, 0, "DRIVER_OK stays with NEEDS_RESET");
    assert_ne!(t.interrupt_status() & interrupt_bits::CONFIG_CHANGE, 0);
    assert_eq!(t.irqfd().read().unwrap(), 1);
    // Queue registers stay closed; a reset clears the bit and the device comes back.
    wr(&mut t, regs::STATUS, 0);
    assert_eq!(rd(&mut t, regs::STATUS), 0);
    assert_eq!(rec.lock().unwrap().resets, 1);
    full_init(&mut t);
    assert!(t.is_activated());
    assert_eq!(rd(&mut t, regs::STATUS) & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn a_reset_request_before_activation_is_not_carried_into_it() {
    let (mut t, _) = transport();
    // A stale request (from a device of a previous activation) must not poison the
    // next one: the transport clears it on reset.
    t.interrupt().trigger(InterruptReason::NeedsReset).unwrap();
    wr(&mut t, regs::STATUS, 0);
    full_init(&mut t);
    assert!(t.is_activated());
    assert_eq!(rd(&mut t, regs::STATUS) & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn ready_with_rings_outside_memory_fails_activation() {
    let (mut t, _) = transport();
    assert!(negotiate(&mut t, DEV_FEATURES));
    setup_queue(&mut t, 0, 16);
    wr(&mut t, regs::QUEUE_SEL, 1);
    wr(&mut t, regs::QUEUE_DESC_LOW, 0);
    wr(&mut t, regs::QUEUE_DESC_HIGH, 0x100); // 1 TiB: outside guest memory
    wr(&mut t, regs::QUEUE_READY, 1);
    add_status(&mut t, status::DRIVER_OK);
    assert!(!t.is_activated());
    assert_ne!(rd(&mut t, regs::STATUS) & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn reset_releases_device_and_clears_registers() {
    let (mut t, rec) = transport();
    full_init(&mut t);
    t.interrupt().trigger(InterruptReason::UsedBuffer).unwrap();
    wr(&mut t, regs::STATUS, 0);
    assert!(!t.is_activated());
    assert!(t.device().held.is_none());
    assert_eq!(rec.lock().unwrap().resets, 1);
    assert_eq!(rd(&mut t, regs::STATUS), 0);
    assert_eq!(rd(&mut t, regs::INTERRUPT_STATUS), 0);
    assert_eq!(t.driver_features(), 0);
    wr(&mut t, regs::QUEUE_SEL, 0);
    assert_eq!(rd(&mut t, regs::QUEUE_READY), 0);
    // Notifications after reset do not reach the device.
    let before = rec.lock().unwrap().notifies.len();
    t.queue_notify(0);
    assert_eq!(rec.lock().unwrap().notifies.len(), before);
    // And the device can be brought up again.
    full_init(&mut t);
    assert!(t.is_activated());
    assert_eq!(rec.lock().unwrap().activations.len(), 2);
}

#[test]
fn driver_failed_makes_device_inert() {
    let (mut t, rec) = transport();
    assert!(negotiate(&mut t, DEV_FEATURES));
    add_status(&mut t, status::FAILED);
    add_status(&mut t, status::DRIVER_OK);
    assert!(!t.is_activated());
    assert_eq!(rd(&mut t, regs::STATUS) & status::DRIVER_OK, 0);
    t.write(regs::CONFIG, &[1]);
    assert!(rec.lock().unwrap().config_writes.is_empty());
}

#[test]
fn failed_after_driver_ok_stops_the_device_until_reset() {
    let (mut t, rec) = transport();
    full_init(&mut t);
    let notifies = rec.lock().unwrap().notifies.len();
    add_status(&mut t, status::FAILED);
    // The device was stopped (released) at once and hears nothing more.
    assert!(!t.is_activated());
    assert_eq!(rec.lock().unwrap().resets, 1);
    assert!(t.device().held.is_none());
    assert_ne!(rd(&mut t, regs::STATUS) & status::FAILED, 0);
    wr(&mut t, regs::QUEUE_NOTIFY, 0);
    t.queue_notify(1);
    t.write(regs::CONFIG, &[1]);
    {
        let r = rec.lock().unwrap();
        assert_eq!(r.notifies.len(), notifies);
        assert!(r.config_writes.is_empty());
        assert_eq!(r.activations.len(), 1);
    }
    // Setting FAILED again changes nothing; a reset and a new init bring it back.
    add_status(&mut t, status::FAILED);
    assert_eq!(rec.lock().unwrap().resets, 1);
    wr(&mut t, regs::STATUS, 0);
    full_init(&mut t);
    assert!(t.is_activated());
    assert_eq!(rec.lock().unwrap().activations.len(), 2);
}

#[test]
fn shared_memory_registers() {
    let (mut t, _) = transport();
    wr(&mut t, regs::SHM_SEL, 0);
    assert_eq!(rd(&mut t, regs::SHM_LEN_LOW), 0);
    assert_eq!(rd(&mut t, regs::SHM_LEN_HIGH), 2);
    assert_eq!(rd(&mut t, regs::SHM_BASE_LOW), 0x2345_6000);
    assert_eq!(rd(&mut t, regs::SHM_BASE_HIGH), 1);
    wr(&mut t, regs::SHM_SEL, 1);
    assert_eq!(rd(&mut t, regs::SHM_LEN_LOW), u32::MAX);
    assert_eq!(rd(&mut t, regs::SHM_LEN_HIGH), u32::MAX);
    wr(&mut t, regs::SHM_SEL, u32::MAX);
    assert_eq!(rd(&mut t, regs::SHM_LEN_LOW), u32::MAX);
}

#[test]
fn interrupt_status_and_ack() {
    let (mut t, _) = transport();
    let irq = t.interrupt();
    irq.trigger(InterruptReason::UsedBuffer).unwrap();
    assert_eq!(rd(&mut t, regs::INTERRUPT_STATUS), 1);
    assert_eq!(t.irqfd().read().unwrap(), 1);
    let gen = rd(&mut t, regs::CONFIG_GENERATION);
    irq.trigger(InterruptReason::ConfigChange).unwrap();
    assert_eq!(rd(&mut t, regs::INTERRUPT_STATUS), 3);
    assert_eq!(rd(&mut t, regs::CONFIG_GENERATION), gen.wrapping_add(1));
    wr(&mut t, regs::INTERRUPT_ACK, 1);
    assert_eq!(rd(&mut t, regs::INTERRUPT_STATUS), 2);
    wr(&mut t, regs::INTERRUPT_ACK, 2);
    assert_eq!(rd(&mut t, regs::INTERRUPT_STATUS), 0);
    // Nothing else pending on the eventfd beyond the second trigger.
    assert_eq!(t.irqfd().read().unwrap(), 1);
    assert!(t.irqfd().read().is_err());
}

#[test]
fn config_space_reads_at_each_width() {
    let (mut t, rec) = transport();
    let mut b1 = [0u8; 1];
    t.read(regs::CONFIG + 3, &mut b1);
    assert_eq!(b1, [4]);
    let mut b2 = [0u8; 2];
    t.read(regs::CONFIG + 2, &mut b2);
    assert_eq!(b2, [3, 4]);
    let mut b4 = [0u8; 4];
    t.read(regs::CONFIG + 4, &mut b4);
    assert_eq!(b4, [5, 6, 7, 8]);
    let mut b8 = [0u8; 8];
    t.read(regs::CONFIG, &mut b8);
    assert_eq!(b8, [1, 2, 3, 4, 5, 6, 7, 8]);
    // Beyond the device's config: zeros.
    t.read(regs::CONFIG + 6, &mut b4);
    assert_eq!(b4, [7, 8, 0, 0]);
    t.write(regs::CONFIG + 1, &[9, 9]);
    assert_eq!(rec.lock().unwrap().config_writes, vec![(1, vec![9u8, 9])]);
}

#[test]
fn wrong_width_register_access_is_ignored() {
    let (mut t, _) = transport();
    let mut b2 = [0xffu8; 2];
    t.read(regs::MAGIC_VALUE, &mut b2);
    assert_eq!(b2, [0, 0]);
    let mut b8 = [0xffu8; 8];
    t.read(regs::MAGIC_VALUE, &mut b8);
    assert_eq!(b8, [0; 8]);
    let mut b4 = [0xffu8; 4];
    t.read(regs::MAGIC_VALUE + 1, &mut b4);
    assert_eq!(b4, [0; 4]);
    t.write(regs::STATUS, &[1]);
    assert_eq!(rd(&mut t, regs::STATUS), 0);
    t.write(regs::STATUS + 2, &1u32.to_le_bytes());
    assert_eq!(rd(&mut t, regs::STATUS), 0);
    t.write(regs::STATUS, &[1, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(rd(&mut t, regs::STATUS), 0);
    let mut empty = [0u8; 0];
    t.read(regs::STATUS, &mut empty);
    t.write(regs::STATUS, &[]);
}

#[test]
fn hostile_queue_writes_never_panic() {
    let (mut t, rec) = transport();
    // Queue registers before FEATURES_OK are ignored.
    wr(&mut t, regs::QUEUE_NUM, 4);
    assert_eq!(t.queues[0].size(), 16);
    assert!(negotiate(&mut t, DEV_FEATURES));
    // Size above the maximum, zero, not a power of two, > u16.
    for bad in [32, 0, 6, 0x1_0000, u32::MAX] {
        wr(&mut t, regs::QUEUE_NUM, bad);
        assert_eq!(t.queues[0].size(), 16, "size {bad} accepted");
    }
    // Misaligned rings are refused.
    wr(&mut t, regs::QUEUE_DESC_LOW, 0x1001);
    assert_eq!(t.queues[0].desc_table(), 0);
    // Out-of-range queue selector: reads 0, writes ignored.
    for sel in [2, 0xffff, u32::MAX] {
        wr(&mut t, regs::QUEUE_SEL, sel);
        assert_eq!(rd(&mut t, regs::QUEUE_NUM_MAX), 0);
        assert_eq!(rd(&mut t, regs::QUEUE_READY), 0);
        wr(&mut t, regs::QUEUE_NUM, 4);
        wr(&mut t, regs::QUEUE_READY, 1);
        wr(&mut t, regs::QUEUE_DESC_HIGH, 1);
    }
    // Ready with rings never set, then DRIVER_OK: refused, no panic.
    wr(&mut t, regs::QUEUE_SEL, 0);
    wr(&mut t, regs::QUEUE_READY, 7);
    assert_eq!(rd(&mut t, regs::QUEUE_READY), 0);
    wr(&mut t, regs::QUEUE_READY, 1);
    wr(&mut t, regs::QUEUE_SEL, 1);
    wr(&mut t, regs::QUEUE_READY, 1);
    // Changing a ready queue's geometry is refused.
    wr(&mut t, regs::QUEUE_NUM, 2);
    assert_eq!(t.queues[1].size(), 8);
    // Notify for nonexistent queues, before and after activation attempts.
    for q in [2, 1000, u32::MAX] {
        wr(&mut t, regs::QUEUE_NOTIFY, q);
        t.queue_notify(q);
    }
    assert!(rec.lock().unwrap().notifies.is_empty());
    // The default ring addresses are 0: overlapping, but inside guest memory,
    // which is all the transport checks; the device must cope with garbage.
    add_status(&mut t, status::DRIVER_OK);
    assert!(t.is_activated());
    for q in [2, 1000, u32::MAX] {
        t.queue_notify(q);
    }
    assert_eq!(rec.lock().unwrap().notifies, vec![0, 1]);
    // Garbage to every offset in the window, at every width.
    for off in (0..MMIO_DEVICE_SIZE + 8).step_by(1) {
        for w in [1usize, 2, 4, 8] {
            let data = vec![0xa5u8; w];
            t.write(off, &data);
            let mut out = vec![0u8; w];
            t.read(off, &mut out);
        }
    }
}

mod hostile_sequences {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Read(u64, usize),
        Write(u64, Vec<u8>),
        Notify(u32),
        Trigger(bool),
    }

    /// Offsets that hit real registers most of the time.
    fn offset() -> impl Strategy<Value = u64> {
        prop_oneof![
            4 => (0u64..0x40).prop_map(|r| r * 4),
            1 => 0u64..0x220,
            1 => any::<u64>(),
        ]
    }

    /// Values that are interesting for the status and queue registers.
    fn value() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            3 => (0u32..16).prop_map(|v| v.to_le_bytes().to_vec()),
            2 => prop::sample::select(vec![0x1u32, 0x3, 0xb, 0xf, 0x80, 0x40, 0x1_0000, 0x2_0000])
                .prop_map(|v| v.to_le_bytes().to_vec()),
            2 => any::<u32>().prop_map(|v| v.to_le_bytes().to_vec()),
            1 => prop::collection::vec(any::<u8>(), 0..9),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (offset(), prop::sample::select(vec![1usize, 2, 4, 8])).prop_map(|(o, w)| Op::Read(o, w)),
            6 => (offset(), value()).prop_map(|(o, v)| Op::Write(o, v)),
            1 => (0u32..4).prop_map(Op::Notify),
            1 => any::<bool>().prop_map(Op::Trigger),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Arbitrary register traffic never panics and keeps the transport's
        /// invariants: the device is active exactly when DRIVER_OK is set and FAILED is not,
        /// it only sees notifications for its queues while active, every
        /// activation carries both queues, features a subset of the offer
        /// including VERSION_1.
        #[test]
        fn register_traffic_keeps_invariants(
            prelude in 0u8..3,
            ops in prop::collection::vec(op(), 1..200),
        ) {
            let (mut t, rec) = transport();
            // Start some sequences from a negotiated or running device, so
            // the traffic also hits the later states.
            match prelude {
                1 => prop_assert!(negotiate(&mut t, DEV_FEATURES)),
                2 => {
                    full_init(&mut t);
                    prop_assert!(t.is_activated());
                }
                _ => {}
            }
            let mut notified_while_active = 0usize;
            for op in ops {
                match op {
                    Op::Read(o, w) => {
                        let mut b = vec![0u8; w];
                        t.read(o, &mut b);
                    }
                    Op::Write(o, v) => t.write(o, &v),
                    Op::Notify(q) => {
                        let active = t.is_activated();
                        t.queue_notify(q);
                        if active && q < 2 {
                            notified_while_active += 1;
                        }
                    }
                    Op::Trigger(cfg) => {
                        let reason = if cfg {
                            InterruptReason::ConfigChange
                        } else {
                            InterruptReason::UsedBuffer
                        };
                        t.interrupt().trigger(reason).unwrap();
                    }
                }
                let s = t.device_status();
                // FAILED stops a running device; DRIVER_OK stays in the register.
                prop_assert_eq!(
                    t.is_activated(),
                    s & status::DRIVER_OK != 0 && s & status::FAILED == 0
                );
                prop_assert_eq!(t.is_activated(), t.device().held.is_some());
                prop_assert_eq!(t.interrupt_status() & !3, 0);
                if s & status::FEATURES_OK != 0 {
                    prop_assert_eq!(t.driver_features() & !DEV_FEATURES, 0);
                    prop_assert_ne!(t.driver_features() & VIRTIO_F_VERSION_1, 0);
                }
            }
            let r = rec.lock().unwrap();
            for (queues, features) in &r.activations {
                prop_assert_eq!(*queues, 2);
                prop_assert_eq!(features & !DEV_FEATURES, 0);
            }
            // Direct notifies while active reach the device (plus MMIO
            // notifies and the kicks after each activation).
            prop_assert!(r.notifies.len() >= notified_while_active);
            prop_assert!(r.notifies.iter().all(|&q| q < 2));
        }
    }
}
