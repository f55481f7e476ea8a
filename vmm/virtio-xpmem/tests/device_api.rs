//! The VirtioDevice surface of XpmemDevice as the transport sees it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use common::*;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_mmio_transport::{ActivateContext, ActivateError, SharedMemoryRegion, VirtioDevice};
use virtio_xpmem_device::aperture::{ApertureWindows, VmRamLayout};
use virtio_xpmem_device::{HubConfig, HubError, VmHoldings, VmId, XpmemHub, QUEUE_SIZE};
use virtio_xpmem_wire as wire;

#[test]
fn identity_features_config_and_regions() {
    let hub = XpmemHub::new(HubConfig {
        invalidate_deadline: std::time::Duration::from_millis(250),
        max_fault_pages: 32,
        ..HubConfig::default()
    })
    .unwrap();
    let mem = guest_ram();
    let windows =
        ApertureWindows::reserve(APERTURE_RW_GPA, APERTURE_LEN, APERTURE_RO_GPA, 2 << 20).unwrap();
    let mut dev = hub
        .add_vm(
            VmId(7),
            VmRamLayout::from_guest_memory(&mem).unwrap(),
            windows.clone(),
        )
        .unwrap();
    assert_eq!(dev.device_type(), wire::VIRTIO_ID_XPMEM);
    assert_eq!(dev.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
    let f = dev.device_features();
    assert_ne!(f & (1 << VIRTIO_F_VERSION_1), 0);
    assert_ne!(f & (1 << wire::VIRTIO_XPMEM_F_RO_APERTURE), 0);
    assert_eq!(
        dev.shared_memory_regions(),
        vec![
            SharedMemoryRegion {
                id: 0,
                guest_base: APERTURE_RW_GPA,
                len: APERTURE_LEN
            },
            SharedMemoryRegion {
                id: 1,
                guest_base: APERTURE_RO_GPA,
                len: 2 << 20
            },
        ]
    );
    let mut cfg = [0u8; 24];
    dev.read_config(0, &mut cfg);
    assert_eq!(u32::from_le_bytes(cfg[0..4].try_into().unwrap()), 7);
    assert_eq!(
        u32::from_le_bytes(cfg[4..8].try_into().unwrap()),
        wire::VIRTIO_XPMEM_EVENT_SIZE
    );
    assert_eq!(u32::from_le_bytes(cfg[8..12].try_into().unwrap()), 32);
    assert_eq!(u64::from_le_bytes(cfg[16..24].try_into().unwrap()), 250);
    // Partial, unaligned and out-of-range reads; writes are ignored.
    let mut b = [0xffu8; 4];
    dev.read_config(22, &mut b);
    assert_eq!(b, [0, 0, 0, 0]);
    dev.read_config(u64::MAX, &mut b);
    assert_eq!(b, [0, 0, 0, 0]);
    dev.write_config(0, &[1, 2, 3, 4]);
    dev.read_config(0, &mut b);
    assert_eq!(u32::from_le_bytes(b), 7);

    // Activation needs both queues.
    let q = DriverQueue::new(&mem, REQQ_ADDR);
    let err = dev
        .activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![q.queue()],
            interrupt: std::sync::Arc::new(CountingInterrupt::default()),
            acked_features: f,
        })
        .unwrap_err();
    assert!(matches!(err, ActivateError::QueueNotReady(1)));
    let err = dev
        .activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![q.queue(), DriverQueue::new(&mem, EVQ_ADDR).queue()],
            interrupt: std::sync::Arc::new(CountingInterrupt::default()),
            acked_features: f & !(1 << VIRTIO_F_VERSION_1),
        })
        .unwrap_err();
    assert!(matches!(err, ActivateError::Device(_)));
    assert_eq!(hub.counters().vms, 0);

    // The same VM id twice, and out-of-range ids, are refused.
    let again = hub.add_vm(
        VmId(7),
        VmRamLayout::from_guest_memory(&mem).unwrap(),
        windows.clone(),
    );
    assert!(matches!(again, Err(HubError::DuplicateVm(_))));
    let zero = hub.add_vm(
        VmId(0),
        VmRamLayout::from_guest_memory(&mem).unwrap(),
        windows.clone(),
    );
    assert!(matches!(zero, Err(HubError::BadVmId(_))));
    drop(dev);
    // After the device is gone the id is free again.
    let dev = hub.add_vm(
        VmId(7),
        VmRamLayout::from_guest_memory(&mem).unwrap(),
        windows,
    );
    assert!(dev.is_ok());
}

#[test]
fn reset_releases_everything_and_the_device_can_be_reused() {
    let hub = XpmemHub::new(HubConfig::default()).unwrap();
    let mem = guest_ram();
    let mut g = Guest::new(&hub, 1, &mem);
    let c = g.call(wire::Request::Make {
        vaddr: 0x1000,
        size: 0x1000,
        mode: 0o600,
        uid: 0,
        gid: 0,
    });
    assert_eq!(c.status, 0);
    assert_eq!(hub.counters().segments, 1);
    let held = |segments| VmHoldings {
        segments,
        permits: 0,
        attachments: 0,
    };
    assert_eq!(hub.vm_holdings(VmId(1)), Some(held(1)));
    // A reset (as at guest shutdown) tears the segment down; the hub still
    // tells what the guest had left until the device is active again.
    g.dev.reset();
    assert_eq!(hub.counters().segments, 0);
    assert_eq!(hub.vm_holdings(VmId(1)), Some(held(1)));
    g.reset_and_reactivate();
    assert_eq!(hub.vm_holdings(VmId(1)), Some(held(0)));
    assert_eq!(hub.counters().segments, 0);
    assert_eq!(hub.counters().vms, 1);
    let c = g.call(wire::Request::Make {
        vaddr: 0x1000,
        size: 0x1000,
        mode: 0o600,
        uid: 0,
        gid: 0,
    });
    assert_eq!(c.status, 0);
    drop(g);
    assert!(hub.counters().nothing_held());
}

/// MAKE of one page at 0x1000, mode 0644; its segid.
fn make_page(g: &mut Guest<'_>) -> u64 {
    let c = g.call(wire::Request::Make {
        vaddr: 0x1000,
        size: 0x1000,
        mode: 0o644,
        uid: 0,
        gid: 0,
    });
    assert_eq!(c.status, wire::VIRTIO_XPMEM_S_OK);
    c.u64_at(0)
}

#[test]
fn without_the_ro_feature_read_only_attach_fails() {
    let hub = XpmemHub::new(HubConfig::default()).unwrap();
    let (ma, mb) = (guest_ram(), guest_ram());
    let mut a = Guest::new(&hub, 1, &ma);
    let mut b = Guest::new(&hub, 2, &mb);
    b.features_mask = !(1 << wire::VIRTIO_XPMEM_F_RO_APERTURE);
    b.reset_and_reactivate();
    let segid = make_page(&mut a);
    let apid = b
        .call(wire::Request::Get {
            segid,
            access: wire::Access::ReadOnly,
            uid: 0,
            gid: 0,
            ipc_owner: false,
        })
        .u64_at(0);
    let c = b.call(wire::Request::Attach {
        apid,
        offset: 0,
        size: 0x1000,
        read_only: true,
    });
    assert!(
        c.status == wire::VIRTIO_XPMEM_S_INVALID || c.status == wire::VIRTIO_XPMEM_S_NOSPC,
        "status {}",
        c.status
    );
    assert_eq!(hub.counters().attachments, 0);
}

#[test]
fn named_segments_over_the_queues_and_only_with_the_feature() {
    let hub = XpmemHub::new(HubConfig::default()).unwrap();
    let (ma, mb, mc) = (guest_ram(), guest_ram(), guest_ram());
    let mut a = Guest::new(&hub, 1, &ma);
    let mut b = Guest::new(&hub, 2, &mb);
    assert_ne!(
        a.dev.device_features() & (1 << wire::VIRTIO_XPMEM_F_NAMES),
        0
    );
    let segid = make_page(&mut a);
    let name = |s: &str| wire::SegmentName::new(s).unwrap();
    let c = a.call(wire::Request::Name {
        segid,
        name: name("a/ring"),
    });
    assert_eq!((c.status, c.used_len), (wire::VIRTIO_XPMEM_S_OK, 8));
    let c = b.call(wire::Request::Name {
        segid,
        name: name("b/ring"),
    });
    assert_eq!(c.status, wire::VIRTIO_XPMEM_S_NOENT, "not b's segment");
    let found = b.call(wire::Request::Search {
        name: name("a/ring"),
    });
    assert_eq!(
        (found.status, found.used_len),
        (wire::VIRTIO_XPMEM_S_OK, 16)
    );
    assert_eq!(found.u64_at(0), segid);
    // The name is taken for b's own segment too.
    let mine = make_page(&mut b);
    let c = b.call(wire::Request::Name {
        segid: mine,
        name: name("a/ring"),
    });
    assert_eq!(c.status, wire::VIRTIO_XPMEM_S_EXIST);
    // A malformed name field (a space) is INVALID, not a panic or a lookup.
    let mut raw = wire::Request::Search { name: name("ab") }.to_bytes(b.owner);
    let at = raw.len() - 64;
    raw[at + 1] = b' ';
    let head = b.submit(&raw, 16);
    let c = b.completion(head).unwrap();
    assert_eq!(c.status, wire::VIRTIO_XPMEM_S_INVALID);
    // Without VIRTIO_XPMEM_F_NAMES both requests are UNSUPPORTED.
    let mut c_vm = Guest::new(&hub, 3, &mc);
    c_vm.features_mask = !(1 << wire::VIRTIO_XPMEM_F_NAMES);
    c_vm.reset_and_reactivate();
    let c = c_vm.call(wire::Request::Search {
        name: name("a/ring"),
    });
    assert_eq!(c.status, wire::VIRTIO_XPMEM_S_UNSUPPORTED);
    // The name goes with a's VM.
    drop(a);
    let c = b.call(wire::Request::Search {
        name: name("a/ring"),
    });
    assert_eq!(c.status, wire::VIRTIO_XPMEM_S_NOENT);
    assert_eq!(hub.counters().names, 0);
}
