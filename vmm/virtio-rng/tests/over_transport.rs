//! The entropy device behind the virtio-mmio transport, driven through the
//! registers the way Linux's virtio_mmio and virtio_rng drivers do.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_mmio_transport::{regs, status, MmioTransport, VirtioDevice, VIRTIO_F_VERSION_1};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_rng_device::Rng;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const BUF: u64 = 0x10_0000;

fn rd(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn wr(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn add_status(t: &mut MmioTransport, bit: u32) {
    let s = rd(t, regs::STATUS);
    wr(t, regs::STATUS, s | bit);
}

fn wdesc(addr: u64, len: u32) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(
        addr,
        len,
        VRING_DESC_F_WRITE as u16,
        0,
    ))
}

#[test]
fn linux_style_bring_up_serves_requests_made_before_driver_ok() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
    let vq = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 8);
    let device: Box<dyn VirtioDevice> = Box::new(Rng::new());
    let mut t: MmioTransport = MmioTransport::new(device, mem.clone()).unwrap();

    assert_eq!(rd(&mut t, regs::MAGIC_VALUE), 0x7472_6976);
    assert_eq!(rd(&mut t, regs::VERSION), 2);
    assert_eq!(rd(&mut t, regs::DEVICE_ID), 4);
    wr(&mut t, regs::STATUS, 0);
    add_status(&mut t, status::ACKNOWLEDGE);
    add_status(&mut t, status::DRIVER);
    wr(&mut t, regs::DEVICE_FEATURES_SEL, 1);
    assert_eq!(
        rd(&mut t, regs::DEVICE_FEATURES) & 1,
        1,
        "VERSION_1 offered"
    );
    wr(&mut t, regs::DRIVER_FEATURES_SEL, 0);
    wr(&mut t, regs::DRIVER_FEATURES, 0);
    wr(&mut t, regs::DRIVER_FEATURES_SEL, 1);
    wr(
        &mut t,
        regs::DRIVER_FEATURES,
        (VIRTIO_F_VERSION_1 >> 32) as u32,
    );
    add_status(&mut t, status::FEATURES_OK);
    assert_ne!(rd(&mut t, regs::STATUS) & status::FEATURES_OK, 0);

    wr(&mut t, regs::QUEUE_SEL, 0);
    assert_eq!(rd(&mut t, regs::QUEUE_READY), 0);
    assert!(rd(&mut t, regs::QUEUE_NUM_MAX) >= 8);
    wr(&mut t, regs::QUEUE_NUM, 8);
    let split = |a: GuestAddress| (a.0 as u32, (a.0 >> 32) as u32);
    let (lo, hi) = split(vq.desc_table_addr());
    wr(&mut t, regs::QUEUE_DESC_LOW, lo);
    wr(&mut t, regs::QUEUE_DESC_HIGH, hi);
    let (lo, hi) = split(vq.avail_addr());
    wr(&mut t, regs::QUEUE_DRIVER_LOW, lo);
    wr(&mut t, regs::QUEUE_DRIVER_HIGH, hi);
    let (lo, hi) = split(vq.used_addr());
    wr(&mut t, regs::QUEUE_DEVICE_LOW, lo);
    wr(&mut t, regs::QUEUE_DEVICE_HIGH, hi);
    wr(&mut t, regs::QUEUE_READY, 1);

    // virtio_rng adds its first buffer during probe, before DRIVER_OK.
    vq.add_desc_chains(&[wdesc(BUF, 32)], 0).unwrap();
    add_status(&mut t, status::DRIVER_OK);
    assert!(t.is_activated());
    // The transport's kick after DRIVER_OK served it without a notify.
    assert_eq!(vq.used().idx().load(), 1);
    let e = vq.used().ring().ref_at(0).unwrap().load();
    assert_eq!((e.id(), e.len()), (0, 32));
    assert_eq!(rd(&mut t, regs::INTERRUPT_STATUS), 1);
    assert_eq!(t.irqfd().read().unwrap(), 1);
    wr(&mut t, regs::INTERRUPT_ACK, 1);
    assert_eq!(rd(&mut t, regs::INTERRUPT_STATUS), 0);

    // A later request goes through QueueNotify.
    vq.add_desc_chains(&[wdesc(BUF + 0x100, 16)], 1).unwrap();
    wr(&mut t, regs::QUEUE_NOTIFY, 0);
    assert_eq!(vq.used().idx().load(), 2);
    let e = vq.used().ring().ref_at(1).unwrap().load();
    assert_eq!((e.id(), e.len()), (1, 16));
    let mut got = [0u8; 16];
    mem.read_slice(&mut got, GuestAddress(BUF + 0x100)).unwrap();
    assert_ne!(got, [0u8; 16]);

    // Reset: nothing is served afterwards.
    wr(&mut t, regs::STATUS, 0);
    assert!(!t.is_activated());
    vq.add_desc_chains(&[wdesc(BUF + 0x200, 16)], 2).unwrap();
    wr(&mut t, regs::QUEUE_NOTIFY, 0);
    t.queue_notify(0);
    assert_eq!(vq.used().idx().load(), 2);
}
