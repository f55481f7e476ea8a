use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_mmio_transport::InterruptReason;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::*;

const MEM_SIZE: usize = 0x40_0000;
const BUF: u64 = 0x10_0000;
const W: u16 = VRING_DESC_F_WRITE as u16;
const N: u16 = VRING_DESC_F_NEXT as u16;

#[derive(Default)]
struct CountingInterrupt(AtomicUsize);

impl VirtioInterrupt for CountingInterrupt {
    fn trigger(&self, reason: InterruptReason) -> std::io::Result<()> {
        assert_eq!(reason, InterruptReason::UsedBuffer);
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Deterministic source: 1, 2, 3, ... (wrapping), never 0.
struct Sequence(u8);

impl EntropySource for Sequence {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), RngError> {
        for b in buf {
            self.0 = self.0.wrapping_add(1).max(1);
            *b = self.0;
        }
        Ok(())
    }
}

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

fn activate(
    rng: &mut Rng,
    mem: &GuestMemoryMmap,
    vq: &MockSplitQueue<GuestMemoryMmap>,
) -> Arc<CountingInterrupt> {
    let irq = Arc::new(CountingInterrupt::default());
    rng.activate(ActivateContext {
        mem: mem.clone(),
        queues: vec![vq.create_queue::<Queue>().unwrap()],
        interrupt: irq.clone(),
        acked_features: VIRTIO_F_VERSION_1,
    })
    .unwrap();
    irq
}

fn used(vq: &MockSplitQueue<GuestMemoryMmap>, i: usize) -> (u32, u32) {
    let e = vq.used().ring().ref_at(i).unwrap().load();
    (e.id(), e.len())
}

#[test]
fn device_identity() {
    let rng = Rng::new();
    assert_eq!(rng.device_type(), 4);
    assert_eq!(rng.queue_max_sizes(), &[QUEUE_SIZE]);
    assert_ne!(rng.device_features() & VIRTIO_F_VERSION_1, 0);
    let mut cfg = [0xffu8; 4];
    rng.read_config(0, &mut cfg);
    assert_eq!(cfg, [0; 4]);
}

#[test]
fn normal_request_is_filled_across_descriptors() {
    let mem = mem();
    let vq = MockSplitQueue::new(&mem, 16);
    vq.add_desc_chains(&[desc(BUF, 100, W | N, 1), desc(BUF + 0x1000, 28, W, 0)], 0)
        .unwrap();
    let mut rng = Rng::with_source(Box::new(Sequence(0)));
    let irq = activate(&mut rng, &mem, &vq);
    rng.queue_notify(0);
    assert_eq!(vq.used().idx().load(), 1);
    assert_eq!(used(&vq, 0), (0, 128));
    let mut a = [0u8; 101];
    mem.read_slice(&mut a, GuestAddress(BUF)).unwrap();
    let want: Vec<u8> = (1..=100).collect();
    assert_eq!(&a[..100], &want[..]);
    assert_eq!(a[100], 0, "wrote past the descriptor");
    let mut b = [0u8; 29];
    mem.read_slice(&mut b, GuestAddress(BUF + 0x1000)).unwrap();
    let want: Vec<u8> = (101..=128).collect();
    assert_eq!(&b[..28], &want[..]);
    assert_eq!(b[28], 0);
    assert_eq!(irq.0.load(Ordering::SeqCst), 1);
    assert_eq!(
        rng.stats(),
        RngStats {
            requests: 1,
            bytes: 128,
            rejected: 0
        }
    );
}

#[test]
fn getrandom_source_returns_random_bytes() {
    let mem = mem();
    let vq = MockSplitQueue::new(&mem, 16);
    vq.add_desc_chains(&[desc(BUF, 64, W, 0), desc(BUF + 64, 64, W, 0)], 0)
        .unwrap();
    let mut rng = Rng::new();
    activate(&mut rng, &mem, &vq);
    rng.queue_notify(0);
    assert_eq!(vq.used().idx().load(), 2);
    assert_eq!(used(&vq, 0), (0, 64));
    assert_eq!(used(&vq, 1), (1, 64));
    let mut a = [0u8; 64];
    let mut b = [0u8; 64];
    mem.read_slice(&mut a, GuestAddress(BUF)).unwrap();
    mem.read_slice(&mut b, GuestAddress(BUF + 64)).unwrap();
    // 512 random bits: all-zero or equal halves would mean no entropy.
    assert_ne!(a, [0u8; 64]);
    assert_ne!(a, b);
}

#[test]
fn read_only_descriptor_gets_used_len_zero() {
    let mem = mem();
    let vq = MockSplitQueue::new(&mem, 16);
    vq.add_desc_chains(
        &[
            desc(BUF, 16, W | N, 1),
            desc(BUF + 0x100, 16, 0, 0),
            // A following good chain is still served.
            desc(BUF + 0x200, 8, W, 0),
        ],
        0,
    )
    .unwrap();
    let mut rng = Rng::with_source(Box::new(Sequence(0)));
    let irq = activate(&mut rng, &mem, &vq);
    rng.queue_notify(0);
    assert_eq!(vq.used().idx().load(), 2);
    assert_eq!(used(&vq, 0), (0, 0));
    assert_eq!(used(&vq, 1), (2, 8));
    let mut a = [0u8; 16];
    mem.read_slice(&mut a, GuestAddress(BUF)).unwrap();
    assert_eq!(a, [0; 16], "nothing written for a refused chain");
    assert_eq!(rng.stats().rejected, 1);
    assert_eq!(irq.0.load(Ordering::SeqCst), 1);
}

#[test]
fn buffers_outside_guest_memory_do_not_panic() {
    let mem = mem();
    let vq = MockSplitQueue::new(&mem, 16);
    vq.add_desc_chains(
        &[
            desc(1 << 40, 64, W, 0),
            // Straddles the end of guest memory.
            desc(MEM_SIZE as u64 - 8, 64, W, 0),
            desc(u64::MAX - 4, 64, W, 0),
            desc(BUF, 4, W, 0),
        ],
        0,
    )
    .unwrap();
    let mut rng = Rng::with_source(Box::new(Sequence(0)));
    activate(&mut rng, &mem, &vq);
    rng.queue_notify(0);
    assert_eq!(vq.used().idx().load(), 4);
    assert_eq!(used(&vq, 0), (0, 0));
    assert_eq!(used(&vq, 1), (1, 0));
    assert_eq!(used(&vq, 2), (2, 0));
    assert_eq!(used(&vq, 3), (3, 4));
    assert_eq!(rng.stats().rejected, 3);
}

#[test]
fn large_request_is_capped() {
    let mem = mem();
    let vq = MockSplitQueue::new(&mem, 16);
    vq.add_desc_chains(
        &[
            desc(BUF, 0x2_0000, W | N, 1),
            desc(BUF + 0x2_0000, 0x1000, W, 0),
        ],
        0,
    )
    .unwrap();
    let mut rng = Rng::with_source(Box::new(Sequence(0)));
    activate(&mut rng, &mem, &vq);
    rng.queue_notify(0);
    assert_eq!(used(&vq, 0), (0, MAX_REQUEST_BYTES));
    let mut after = [0u8; 1];
    mem.read_slice(&mut after, GuestAddress(BUF + u64::from(MAX_REQUEST_BYTES)))
        .unwrap();
    assert_eq!(after, [0]);
}

#[test]
fn descriptor_loop_terminates() {
    let mem = mem();
    let vq = MockSplitQueue::new(&mem, 4);
    // 0 -> 1 -> 0 -> ...: virtio-queue bounds the walk by the queue size.
    vq.add_desc_chains(&[desc(BUF, 8, W | N, 1), desc(BUF + 8, 8, W | N, 0)], 0)
        .unwrap();
    let mut rng = Rng::with_source(Box::new(Sequence(0)));
    activate(&mut rng, &mem, &vq);
    rng.queue_notify(0);
    assert_eq!(vq.used().idx().load(), 1);
    assert!(used(&vq, 0).1 <= 4 * 8);
}

#[test]
fn lifecycle_notify_before_activate_wrong_queue_and_reset() {
    let mem = mem();
    let vq = MockSplitQueue::new(&mem, 16);
    vq.add_desc_chains(&[desc(BUF, 8, W, 0)], 0).unwrap();
    let mut rng = Rng::with_source(Box::new(Sequence(0)));
    rng.queue_notify(0);
    rng.queue_notify(7);
    assert_eq!(vq.used().idx().load(), 0);
    let irq = activate(&mut rng, &mem, &vq);
    rng.queue_notify(1);
    assert_eq!(vq.used().idx().load(), 0);
    rng.queue_notify(0);
    assert_eq!(vq.used().idx().load(), 1);
    // A notify with nothing new neither uses nor interrupts.
    rng.queue_notify(0);
    assert_eq!(irq.0.load(Ordering::SeqCst), 1);
    rng.reset();
    assert!(!rng.is_active());
    rng.queue_notify(0);
}

#[test]
fn activate_refuses_wrong_queue_count() {
    let mem = mem();
    let mut rng = Rng::new();
    let r = rng.activate(ActivateContext {
        mem: mem.clone(),
        queues: vec![],
        interrupt: Arc::new(CountingInterrupt::default()),
        acked_features: VIRTIO_F_VERSION_1,
    });
    assert!(matches!(r, Err(ActivateError::Device(_))));
    assert!(!rng.is_active());
}

/// With VIRTIO_F_RING_EVENT_IDX the device interrupts only when the driver's
/// used_event index asks for it.
#[test]
fn event_idx_suppresses_unwanted_interrupts() {
    for (used_event, want_irqs) in [(0u16, 1usize), (5, 0)] {
        let mem = mem();
        let vq = MockSplitQueue::new(&mem, 16);
        vq.add_desc_chains(&[desc(BUF, 8, W, 0)], 0).unwrap();
        // used_event lives after the 16 available ring entries.
        let used_event_addr = vq.avail_addr().unchecked_add(4 + 2 * 16);
        mem.write_obj(used_event, used_event_addr).unwrap();
        let mut queue = vq.create_queue::<Queue>().unwrap();
        queue.set_event_idx(true);
        let irq = Arc::new(CountingInterrupt::default());
        let mut rng = Rng::with_source(Box::new(Sequence(0)));
        rng.activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![queue],
            interrupt: irq.clone(),
            acked_features: VIRTIO_F_VERSION_1 | VIRTIO_F_RING_EVENT_IDX,
        })
        .unwrap();
        rng.queue_notify(0);
        assert_eq!(vq.used().idx().load(), 1);
        assert_eq!(
            irq.0.load(Ordering::SeqCst),
            want_irqs,
            "used_event {used_event}"
        );
    }
}
