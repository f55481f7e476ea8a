//! The device model in a broker, the transports and windows "in VM processes": every
//! message really crosses SOCK_SEQPACKET connections, exporter RAM really travels as a
//! memfd over SCM_RIGHTS, and every map and unmap is done by the VM side's aperture thread.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use common::*;
use virtio_xpmem_device::aperture::{FILLER_BYTE, PAGE_SIZE};
use virtio_xpmem_wire as wire;

fn page(g: &Guest<'_>, off: u64, i: u64) -> Vec<u8> {
    g.aperture_read(0, off + i * PAGE_SIZE, PAGE_SIZE as usize)
}

#[test]
fn an_importer_process_sees_the_exporter_process_pages_until_it_acknowledges_the_invalidation() {
    let broker = TestBroker::new(1000);
    let (ma, mb) = (guest_ram(), guest_ram());
    let mut a = Guest::remote(&broker, 1, &ma);
    let mut b = Guest::remote(&broker, 2, &mb);
    let (segid, model) = make_segment(&mut a);
    let (_apid, att, off, _shm) = get_attach(&mut b, segid, false);
    let f = fault(&mut b, &mut a, &model, att, 0, 4, true);
    assert_eq!(f.status, 0, "FAULT through the broker failed");
    for i in 0..4 {
        assert!(
            page(&b, off, i).iter().all(|&x| x == 0x10 + i as u8),
            "page {i} is not the exporter's"
        );
    }
    // The importer writes through its window into the exporter's memory.
    b.aperture_write(off, b"from b");
    assert_eq!(a.ram_read(model.gpa_of(SEG_VADDR), 6), b"from b");

    let head = invalidate(&mut a, segid, 0, 4);
    assert!(
        a.completion(head).is_none(),
        "INVALIDATE completed before the importer acknowledged"
    );
    assert!(
        page(&b, off, 1).iter().all(|&x| x == 0x11),
        "unmapped before the acknowledgement"
    );
    ack_all(&mut b);
    let c = a
        .completion(head)
        .expect("INVALIDATE not completed after the acknowledgement");
    assert_eq!(c.status, 0);
    for i in 0..4 {
        assert!(
            page(&b, off, i).iter().all(|&x| x == FILLER_BYTE),
            "page {i} still mapped"
        );
    }
    assert!(broker.hub.mappings().is_empty());
    broker.hub.check_invariants().unwrap();
}

#[test]
fn a_vm_process_that_goes_away_leaves_nothing_in_the_broker() {
    let broker = TestBroker::new(1000);
    let (ma, mb) = (guest_ram(), guest_ram());
    let mut a = Guest::remote(&broker, 1, &ma);
    let mut b = Guest::remote(&broker, 2, &mb);
    let (segid, model) = make_segment(&mut a);
    let (_apid, att, _off, _shm) = get_attach(&mut b, segid, false);
    assert_eq!(fault(&mut b, &mut a, &model, att, 0, 2, false).status, 0);
    assert!(!broker.hub.mappings().is_empty());

    // The exporter's process ends (its connection closes): its segment is revoked and the
    // importer is told.
    drop(a);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while broker
        .hub
        .vm_holdings(virtio_xpmem_device::VmId(1))
        .is_some_and(|h| h.segments > 0)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let evs = b.take_events();
    assert!(
        evs.iter().any(|e| matches!(e, wire::Event::Revoked { .. })),
        "the importer was not told its attachment was revoked: {evs:?}"
    );
    assert!(
        broker.hub.mappings().is_empty(),
        "the importer still maps the exporter's pages"
    );
    drop(b);
    broker.join();
    let c = broker.hub.counters();
    assert_eq!(
        (c.vms, c.segments, c.permits, c.attachments, c.mapped_pages),
        (0, 0, 0, 0, 0),
        "{c:?}"
    );
    broker.hub.check_invariants().unwrap();
}

#[test]
fn a_broken_vm_process_is_refused_without_harm_to_the_broker() {
    use std::os::unix::net::UnixStream;
    use virtio_xpmem_device::remote;
    let broker = TestBroker::new(1000);
    let serve = |sock: UnixStream| {
        remote::serve_vm_process(
            &broker.hub,
            &broker.links,
            virtio_xpmem_device::VmId(7),
            sock,
            None,
        )
    };
    // Garbage instead of Hello.
    let (ours, theirs) = remote::seqpacket_pair().unwrap();
    std::io::Write::write_all(&mut &ours, &[0xff; 40]).unwrap();
    assert!(serve(theirs).is_err());
    // A connection that closes before saying anything (a VM process that failed before
    // its VM was built): nothing to do, nothing held.
    let (ours, theirs) = remote::seqpacket_pair().unwrap();
    drop(ours);
    let closed = serve(theirs);
    assert!(closed.is_ok(), "{closed:?}");
    // A first message that is not Hello.
    let (ours, theirs) = remote::seqpacket_pair().unwrap();
    let mut bytes = vec![3u8, 0, 0, 0];
    bytes.resize(4, 0);
    std::io::Write::write_all(&mut &ours, &bytes).unwrap();
    assert!(serve(theirs).is_err());
    // The broker still serves a well-behaved VM, and holds nothing of the broken ones.
    let ma = guest_ram();
    let mut a = Guest::remote(&broker, 1, &ma);
    let (_segid, _model) = make_segment(&mut a);
    assert_eq!(broker.hub.counters().vms, 1);
}
