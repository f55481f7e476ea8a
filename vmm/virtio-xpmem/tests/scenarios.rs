//! Multi-VM scenarios through the device model: a driver model per VM over
//! mock split queues, memfd-backed guest RAM and the real MmapAperture.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::time::Duration;

use common::*;
use virtio_xpmem_device::aperture::{FILLER_BYTE, PAGE_SIZE};
use virtio_xpmem_device::{HubClock, HubConfig, ManualClock, XpmemHub};
use virtio_xpmem_wire as wire;

#[test]
fn three_vms_full_lifecycle() {
    let (hub, _clock) = manual_hub(1000);
    let (ma, mb, mc) = (guest_ram(), guest_ram(), guest_ram());
    let mut a = Guest::new(&hub, 1, &ma);
    let mut b = Guest::new(&hub, 2, &mb);
    let mut c = Guest::new(&hub, 3, &mc);

    let (segid, model) = make_segment(&mut a);
    let (apid_b, att_b, off_b, shm_b) = get_attach(&mut b, segid, false);
    assert_eq!(shm_b, 0);
    let (_apid_c, att_c, off_c, shm_c) = get_attach(&mut c, segid, true);
    assert_eq!(shm_c, 1);

    // Before any fault the aperture shows the filler.
    assert!(b
        .aperture_read(0, off_b, 64)
        .iter()
        .all(|&x| x == FILLER_BYTE));

    // B faults pages 0..4 for write, C faults page 0..2 read-only.
    let f = fault(&mut b, &mut a, &model, att_b, 0, 4, true);
    assert_eq!(f.status, 0);
    let mapped = f.u32_at(0);
    assert!((1..=4).contains(&mapped), "mapped {mapped}");
    let f = fault(&mut c, &mut a, &model, att_c, 0, 2, false);
    assert_eq!(f.status, 0);

    // Bytes flow: B and C see A's page contents (scattered gpas).
    for i in 0..u64::from(mapped) {
        let v = b.aperture_read(0, off_b + i * PAGE_SIZE, PAGE_SIZE as usize);
        assert!(v.iter().all(|&x| x == 0x10 + i as u8), "page {i}");
    }
    assert!(c.aperture_read(1, off_c, 16).iter().all(|&x| x == 0x10));
    // B writes through the aperture, A sees it in its RAM; A writes, B sees it.
    b.aperture_write(off_b + 100, b"hello from B");
    let gpa0 = model.gpa_of(SEG_VADDR);
    assert_eq!(a.ram_read(gpa0 + 100, 12), b"hello from B");
    a.ram_fill(gpa0 + 200, 0x5c, 8);
    assert_eq!(b.aperture_read(0, off_b + 200, 8), vec![0x5c; 8]);
    assert_eq!(c.aperture_read(1, off_c + 200, 8), vec![0x5c; 8]);

    let counters = hub.counters();
    assert!(counters.rmap_entries > u64::from(mapped), "{counters:?}");

    // A invalidates page 0: both importers get INVALIDATE, ack, then A's request completes.
    let inv = wire::Request::Invalidate {
        segid,
        vaddr: SEG_VADDR,
        len: PAGE_SIZE,
    };
    let head = a.submit(
        &inv.to_bytes(a.owner),
        wire::response_size(inv.opcode()) as u32,
    );
    assert!(
        a.completion(head).is_none(),
        "INVALIDATE must wait for the importers"
    );
    for imp in [&mut b, &mut c] {
        let evs = imp.take_events();
        let ids: Vec<u64> = evs
            .iter()
            .filter_map(|e| match e {
                wire::Event::Invalidate {
                    invalidation_id,
                    page_index,
                    ..
                } => {
                    assert_eq!(*page_index, 0);
                    Some(*invalidation_id)
                }
                _ => None,
            })
            .collect();
        assert_eq!(ids.len(), 1, "{evs:?}");
        assert!(a.completion(head).is_none(), "completed before every ack");
        let ack = imp.call(wire::Request::InvalidateAck {
            invalidation_id: ids[0],
        });
        assert_eq!(ack.status, 0);
    }
    let done = a
        .completion(head)
        .expect("INVALIDATE not completed after all acks");
    assert_eq!(done.status, 0);
    // virtio_xpmem_invalidate_resp: two targets, none revoked.
    assert_eq!(done.used_len, 16);
    assert_eq!((done.u32_at(0), done.u32_at(4)), (2, 0));
    // Page 0 is gone from both apertures; A's later data never shows.
    a.ram_fill(gpa0, 0x99, PAGE_SIZE as usize);
    assert!(b
        .aperture_read(0, off_b, PAGE_SIZE as usize)
        .iter()
        .all(|&x| x == FILLER_BYTE));
    assert!(c
        .aperture_read(1, off_c, PAGE_SIZE as usize)
        .iter()
        .all(|&x| x == FILLER_BYTE));
    if mapped > 1 {
        // Page 1 still shared.
        assert_eq!(b.aperture_read(0, off_b + PAGE_SIZE, 1), vec![0x11]);
    }
    hub.check_invariants().unwrap();

    // Teardown: B detaches and releases, C drops its owner, A removes.
    assert_eq!(b.call(wire::Request::Detach { attach_id: att_b }).status, 0);
    assert!(b
        .aperture_read(0, off_b + PAGE_SIZE, 16)
        .iter()
        .all(|&x| x == FILLER_BYTE));
    assert_eq!(b.call(wire::Request::Release { apid: apid_b }).status, 0);
    assert_eq!(c.call(wire::Request::ReleaseOwner).status, 0);
    assert_eq!(a.call(wire::Request::Remove { segid }).status, 0);
    let counters = hub.counters();
    assert_eq!(counters.segments, 0, "{counters:?}");
    assert_eq!(counters.permits, 0, "{counters:?}");
    assert_eq!(counters.attachments, 0, "{counters:?}");
    assert_eq!(counters.rmap_entries, 0, "{counters:?}");
    assert_eq!(counters.mapped_pages, 0, "{counters:?}");
    hub.check_invariants().unwrap();
    let st = hub.aperture_stats();
    assert_eq!(st.map_failures + st.unmap_failures, 0, "{st:?}");

    drop((a, b, c));
    assert!(hub.counters().nothing_held(), "{:?}", hub.counters());
}

#[test]
fn importer_that_never_acks_is_revoked_at_the_deadline() {
    let (hub, clock) = manual_hub(100);
    let (ma, mb) = (guest_ram(), guest_ram());
    let mut a = Guest::new(&hub, 1, &ma);
    let mut b = Guest::new(&hub, 2, &mb);
    let (segid, model) = make_segment(&mut a);
    let (_apid, att, off, _shm) = get_attach(&mut b, segid, false);
    let f = fault(&mut b, &mut a, &model, att, 0, 1, true);
    assert_eq!(f.status, 0);
    assert_eq!(b.aperture_read(0, off, 1), vec![0x10]);

    let inv = wire::Request::Invalidate {
        segid,
        vaddr: SEG_VADDR,
        len: SEG_PAGES * PAGE_SIZE,
    };
    let head = a.submit(
        &inv.to_bytes(a.owner),
        wire::response_size(inv.opcode()) as u32,
    );
    let evs = b.take_events();
    let late_id = evs
        .iter()
        .find_map(|e| match e {
            wire::Event::Invalidate {
                invalidation_id, ..
            } => Some(*invalidation_id),
            _ => None,
        })
        .expect("no INVALIDATE event");
    // B ignores it. Before the deadline nothing happens.
    clock.advance(99);
    hub.tick();
    assert!(a.completion(head).is_none());
    assert_eq!(b.aperture_read(0, off, 1), vec![0x10], "revoked too early");
    clock.advance(2);
    hub.tick();
    let done = a
        .completion(head)
        .expect("INVALIDATE not completed at the deadline");
    assert_eq!(done.status, 0);
    assert_eq!(done.used_len, 16);
    assert_eq!(
        (done.u32_at(0), done.u32_at(4)),
        (1, 1),
        "one target, revoked"
    );
    // B's slot shows the filler, never A's later data.
    a.ram_fill(model.gpa_of(SEG_VADDR), 0x77, PAGE_SIZE as usize);
    assert!(b
        .aperture_read(0, off, PAGE_SIZE as usize)
        .iter()
        .all(|&x| x == FILLER_BYTE));
    let evs = b.take_events();
    assert!(
        evs.iter().any(|e| matches!(
            e,
            wire::Event::Revoked {
                reason: wire::RevokeReason::Deadline,
                ..
            }
        )),
        "{evs:?}"
    );
    assert_eq!(hub.counters().invalidations_forced, 1);
    // A late ack is answered (not OK: the invalidation is over) and harmless.
    let late = b.call(wire::Request::InvalidateAck {
        invalidation_id: late_id,
    });
    assert_ne!(late.status, 0);
    assert!(b
        .aperture_read(0, off, 64)
        .iter()
        .all(|&x| x == FILLER_BYTE));
    hub.check_invariants().unwrap();
}

#[test]
fn deadline_timer_thread_revokes_without_manual_ticks() {
    let hub = XpmemHub::new(HubConfig {
        invalidate_deadline: Duration::from_millis(30),
        ..HubConfig::default()
    })
    .unwrap();
    let (ma, mb) = (guest_ram(), guest_ram());
    let mut a = Guest::new(&hub, 1, &ma);
    let mut b = Guest::new(&hub, 2, &mb);
    let (segid, model) = make_segment(&mut a);
    let (_apid, att, off, _shm) = get_attach(&mut b, segid, false);
    assert_eq!(fault(&mut b, &mut a, &model, att, 0, 1, true).status, 0);
    let inv = wire::Request::Invalidate {
        segid,
        vaddr: SEG_VADDR,
        len: PAGE_SIZE,
    };
    let head = a.submit(
        &inv.to_bytes(a.owner),
        wire::response_size(inv.opcode()) as u32,
    );
    // Wait (generously) for the timer thread; this is a liveness check, not a timing one.
    let mut done = None;
    for _ in 0..1000 {
        done = a.completion(head);
        if done.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let done = done.expect("timer thread never revoked");
    assert_eq!(done.status, 0);
    assert_eq!((done.u32_at(0), done.u32_at(4)), (1, 1));
    assert!(b
        .aperture_read(0, off, 64)
        .iter()
        .all(|&x| x == FILLER_BYTE));
}

#[test]
fn exporter_reset_revokes_importers() {
    let (hub, _clock) = manual_hub(1000);
    let (ma, mb) = (guest_ram(), guest_ram());
    let mut a = Guest::new(&hub, 1, &ma);
    let mut b = Guest::new(&hub, 2, &mb);
    let (segid, model) = make_segment(&mut a);
    let (_apid, att, off, _shm) = get_attach(&mut b, segid, false);
    assert_eq!(fault(&mut b, &mut a, &model, att, 0, 2, true).status, 0);
    a.reset_and_reactivate();
    assert!(b
        .aperture_read(0, off, 2 * PAGE_SIZE as usize)
        .iter()
        .all(|&x| x == FILLER_BYTE));
    let evs = b.take_events();
    assert!(
        evs.iter().any(|e| matches!(
            e,
            wire::Event::Revoked {
                reason: wire::RevokeReason::ExporterGone,
                ..
            }
        )),
        "{evs:?}"
    );
    // A later FAULT fails instead of hanging.
    let req = wire::Request::Fault {
        attach_id: att,
        page_index: 0,
        npages: 1,
        write: false,
    };
    let head = b.submit(
        &req.to_bytes(b.owner),
        wire::response_size(req.opcode()) as u32,
    );
    let c = b
        .completion(head)
        .expect("FAULT on a gone exporter must complete");
    assert_ne!(c.status, 0);
    hub.check_invariants().unwrap();
}

#[test]
fn events_wait_for_eventq_buffers_and_the_backlog_is_bounded() {
    let clock = ManualClock::default();
    let hub = XpmemHub::with_backend(
        HubConfig {
            max_pending_events: 8,
            ..HubConfig::default()
        },
        Box::new(virtio_xpmem_device::aperture::MmapAperture::new()),
        HubClock::Manual(clock),
    )
    .unwrap();
    let (ma, mb) = (guest_ram(), guest_ram());
    // The exporter stocks only 4 eventq buffers.
    let mut a = Guest::with_event_buffers(&hub, 1, &ma, 4);
    let mut b = Guest::new(&hub, 2, &mb);
    let (segid, _model) = make_segment(&mut a);
    let (_apid, att, _off, _shm) = get_attach(&mut b, segid, false);
    // 10 FAULTs on distinct pages: 10 RESOLVE events for A.
    for i in 0..10 {
        let req = wire::Request::Fault {
            attach_id: att,
            page_index: i,
            npages: 1,
            write: false,
        };
        b.submit(
            &req.to_bytes(b.owner),
            wire::response_size(req.opcode()) as u32,
        );
    }
    let st = hub.device_stats(a.vm).unwrap();
    assert_eq!(st.events_delivered, 4, "{st:?}");
    assert_eq!(st.events_backlog, 6, "{st:?}");
    // A collects and refills: the backlog drains in order of arrival.
    let mut got = Vec::new();
    for _ in 0..4 {
        got.extend(a.take_events());
    }
    assert_eq!(got.len(), 10);
    let ids: Vec<u64> = got
        .iter()
        .map(|e| match e {
            wire::Event::Resolve { resolve_id, .. } => *resolve_id,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    let mut sorted = ids.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), 10, "duplicate events: {ids:?}");
    assert_eq!(hub.device_stats(a.vm).unwrap().events_backlog, 0);

    // With the buffers withheld, the backlog stops at max_pending_events.
    let mc = guest_ram();
    let mut c = Guest::with_event_buffers(&hub, 3, &mc, 0);
    let (segid_c, _m) = make_segment(&mut c);
    let (_apid, att_c, _off, _shm) = get_attach(&mut b, segid_c, false);
    let resolves_before = hub.counters().pending_resolves;
    let mut heads = Vec::new();
    for i in 0..12 {
        let req = wire::Request::Fault {
            attach_id: att_c,
            page_index: i,
            npages: 1,
            write: false,
        };
        heads.push(b.submit(
            &req.to_bytes(b.owner),
            wire::response_size(req.opcode()) as u32,
        ));
    }
    let st = hub.device_stats(c.vm).unwrap();
    assert_eq!(st.events_backlog, 8, "{st:?}");
    assert_eq!(st.events_dropped, 4, "{st:?}");
    // The FAULTs whose RESOLVE could not be queued fail at once (spec
    // 8.3.2); the others still wait for the exporter.
    let statuses: Vec<Option<u32>> = heads
        .iter()
        .map(|&h| b.completion(h).map(|c| c.status))
        .collect();
    assert_eq!(statuses[..8], [None; 8], "{statuses:?}");
    assert_eq!(
        statuses[8..],
        [Some(wire::VIRTIO_XPMEM_S_FAULT); 4],
        "{statuses:?}"
    );
    assert_eq!(hub.counters().pending_resolves, resolves_before + 8);
    hub.check_invariants().unwrap();
}

/// An aperture backend whose map can be made to fail.
struct FlakyAperture {
    inner: virtio_xpmem_device::aperture::MmapAperture,
    fail: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl virtio_xpmem_device::aperture::ApertureBackend for FlakyAperture {
    fn add_vm(
        &mut self,
        vm: virtio_xpmem_device::VmId,
        ram: virtio_xpmem_device::aperture::VmRamLayout,
        windows: virtio_xpmem_device::aperture::VmWindows,
    ) -> Result<(), virtio_xpmem_device::aperture::ApertureError> {
        self.inner.add_vm(vm, ram, windows)
    }
    fn remove_vm(
        &mut self,
        vm: virtio_xpmem_device::VmId,
    ) -> Result<(), virtio_xpmem_device::aperture::ApertureError> {
        self.inner.remove_vm(vm)
    }
    fn revoke_window(
        &mut self,
        vm: virtio_xpmem_device::VmId,
        window: xpmem_domain::Window,
    ) -> Result<virtio_xpmem_device::aperture::MapStats, virtio_xpmem_device::aperture::ApertureError>
    {
        self.inner.revoke_window(vm, window)
    }
    fn map(
        &mut self,
        importer: virtio_xpmem_device::VmId,
        window: xpmem_domain::Window,
        aperture_page: u64,
        exporter: virtio_xpmem_device::VmId,
        exporter_gpa: u64,
        npages: u64,
        writable: bool,
    ) -> Result<virtio_xpmem_device::aperture::MapStats, virtio_xpmem_device::aperture::ApertureError>
    {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(virtio_xpmem_device::aperture::ApertureError::UnknownVm(
                importer,
            ));
        }
        self.inner.map(
            importer,
            window,
            aperture_page,
            exporter,
            exporter_gpa,
            npages,
            writable,
        )
    }
    fn unmap(
        &mut self,
        importer: virtio_xpmem_device::VmId,
        window: xpmem_domain::Window,
        aperture_page: u64,
        npages: u64,
    ) -> Result<virtio_xpmem_device::aperture::MapStats, virtio_xpmem_device::aperture::ApertureError>
    {
        self.inner.unmap(importer, window, aperture_page, npages)
    }
}

#[test]
fn a_failed_map_fails_the_fault() {
    let fail = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let hub = XpmemHub::with_backend(
        HubConfig::default(),
        Box::new(FlakyAperture {
            inner: virtio_xpmem_device::aperture::MmapAperture::new(),
            fail: fail.clone(),
        }),
        HubClock::Manual(ManualClock::default()),
    )
    .unwrap();
    let (ma, mb) = (guest_ram(), guest_ram());
    let mut a = Guest::new(&hub, 1, &ma);
    let mut b = Guest::new(&hub, 2, &mb);
    let (segid, model) = make_segment(&mut a);
    let (_apid, att, off, _shm) = get_attach(&mut b, segid, false);
    let f = fault(&mut b, &mut a, &model, att, 0, 1, false);
    assert_eq!(f.status, wire::VIRTIO_XPMEM_S_FAULT);
    assert_eq!(hub.aperture_stats().map_failures, 1);
    assert!(b
        .aperture_read(0, off, 64)
        .iter()
        .all(|&x| x == FILLER_BYTE));
    // Once mapping works again, a new FAULT succeeds.
    fail.store(false, std::sync::atomic::Ordering::SeqCst);
    let f = fault(&mut b, &mut a, &model, att, 0, 1, false);
    assert_eq!(f.status, 0);
    assert_eq!(b.aperture_read(0, off, 1), vec![0x10]);
    hub.check_invariants().unwrap();
}

#[test]
fn importer_reset_clears_its_window_and_releases_a_waiting_exporter() {
    let (hub, _clock) = manual_hub(60_000);
    let (ma, mb) = (guest_ram(), guest_ram());
    let mut a = Guest::new(&hub, 1, &ma);
    let mut b = Guest::new(&hub, 2, &mb);
    let (segid, model) = make_segment(&mut a);
    let (_apid, att, off, _shm) = get_attach(&mut b, segid, false);
    assert_eq!(fault(&mut b, &mut a, &model, att, 0, 2, true).status, 0);
    assert_eq!(b.aperture_read(0, off, 1), vec![0x10]);
    let inv = wire::Request::Invalidate {
        segid,
        vaddr: SEG_VADDR,
        len: PAGE_SIZE,
    };
    let head = a.submit(
        &inv.to_bytes(a.owner),
        wire::response_size(inv.opcode()) as u32,
    );
    assert!(a.completion(head).is_none());
    // B resets instead of acknowledging: it counts as acknowledged.
    b.reset_and_reactivate();
    let c = a
        .completion(head)
        .expect("INVALIDATE still waits for a reset importer");
    assert_eq!(c.status, 0);
    // The reset made the target moot: still a target, not revoked.
    assert_eq!((c.u32_at(0), c.u32_at(4)), (1, 0));
    assert!(b
        .aperture_read(0, off, 2 * PAGE_SIZE as usize)
        .iter()
        .all(|&x| x == FILLER_BYTE));
    let counters = hub.counters();
    assert_eq!(counters.attachments, 0, "{counters:?}");
    assert_eq!(counters.rmap_entries, 0, "{counters:?}");
    hub.check_invariants().unwrap();
}

#[test]
fn invalidate_response_reports_targets_and_needs_room_for_them() {
    let (hub, _clock) = manual_hub(60_000);
    let (ma, mb) = (guest_ram(), guest_ram());
    let mut a = Guest::new(&hub, 1, &ma);
    let mut b = Guest::new(&hub, 2, &mb);
    let (segid, model) = make_segment(&mut a);
    let (_apid, att, off, _shm) = get_attach(&mut b, segid, false);
    let inv = |vaddr, len| wire::Request::Invalidate { segid, vaddr, len };
    // Attached but nothing mapped: completes at once, no target.
    let c = a.call(inv(SEG_VADDR, SEG_PAGES * PAGE_SIZE));
    assert_eq!((c.status, c.used_len), (0, 16));
    assert_eq!((c.u32_at(0), c.u32_at(4)), (0, 0));
    assert_eq!(fault(&mut b, &mut a, &model, att, 0, 1, true).status, 0);
    b.take_events();
    // A writable part with room for the status only: INVALID, and no effect (no event,
    // the page stays mapped).
    let req = inv(SEG_VADDR, PAGE_SIZE);
    let head = a.submit(&req.to_bytes(a.owner), 8);
    let c = a.completion(head).expect("short INVALIDATE not answered");
    assert_eq!((c.status, c.used_len), (wire::VIRTIO_XPMEM_S_INVALID, 8));
    assert!(b.take_events().is_empty());
    assert_eq!(b.aperture_read(0, off, 1), vec![0x10]);
    hub.check_invariants().unwrap();
}
