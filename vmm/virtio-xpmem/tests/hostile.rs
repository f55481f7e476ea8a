//! A hostile guest: malformed descriptor chains and requests get an error
//! status (or a zero-length completion when there is nowhere to write one)
//! and change nothing else.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::time::Duration;

use common::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_xpmem_device::aperture::MmapAperture;
use virtio_xpmem_device::{HubClock, HubConfig, ManualClock, XpmemHub};
use virtio_xpmem_wire as wire;

/// (addr, len, flags, next)
type Desc = (u64, u32, u16, u16);

const W: u16 = VRING_DESC_F_WRITE as u16;
const N: u16 = VRING_DESC_F_NEXT as u16;
const REQ: u64 = 0x30_0000;
const RESP: u64 = 0x30_1000;

fn hub() -> std::sync::Arc<XpmemHub> {
    XpmemHub::with_backend(
        HubConfig {
            invalidate_deadline: Duration::from_millis(100),
            ..HubConfig::default()
        },
        Box::new(MmapAperture::new()),
        HubClock::Manual(ManualClock::default()),
    )
    .unwrap()
}

fn make_bytes(owner: u64) -> Vec<u8> {
    wire::Request::Make {
        vaddr: 0x1000,
        size: 0x1000,
        mode: 0o600,
        uid: 0,
        gid: 0,
    }
    .to_bytes(owner)
}

/// Places `descs` (addr, len, flags, next) at indices 0.., makes head 0
/// available, notifies, and returns the used element (len) and the status
/// word at RESP.
fn run(g: &mut Guest<'_>, descs: &[(u64, u32, u16, u16)]) -> Option<(u32, u32)> {
    g.ram_fill(RESP, 0xee, 64);
    for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
        g.reqq.set_desc(i as u16, addr, len, flags, next);
    }
    g.reqq.make_available(0);
    g.dev.queue_notify(0);
    let used = g.reqq.take_used();
    assert!(used.len() <= 1);
    used.first().map(|&(head, len)| {
        assert_eq!(head, 0);
        let st = u32::from_le_bytes(g.ram_read(RESP, 4).try_into().unwrap());
        (len, st)
    })
}

#[test]
fn malformed_chains_get_invalid_and_change_nothing() {
    let hub = hub();
    let mem = guest_ram();
    let mut g = Guest::new(&hub, 1, &mem);
    let req = make_bytes(g.owner);
    g.mem_write(REQ, &req);
    let rlen = req.len() as u32;
    let resp_len = wire::response_size(wire::VIRTIO_XPMEM_REQ_MAKE) as u32;
    let before = hub.counters();
    let invalid = wire::VIRTIO_XPMEM_S_INVALID;
    // Expected: Some(status) written, or None = returned with length 0.
    let cases: Vec<(&str, Vec<Desc>, Option<u32>)> = vec![
        (
            "header cut short",
            vec![(REQ, 8, N, 1), (RESP, resp_len, W, 0)],
            Some(invalid),
        ),
        (
            "body cut short",
            vec![(REQ, rlen - 4, N, 1), (RESP, resp_len, W, 0)],
            Some(invalid),
        ),
        (
            "request outside guest RAM",
            vec![(1 << 40, rlen, N, 1), (RESP, resp_len, W, 0)],
            Some(invalid),
        ),
        (
            "request straddles the end of RAM",
            vec![(RAM_SIZE as u64 - 8, rlen, N, 1), (RESP, resp_len, W, 0)],
            Some(invalid),
        ),
        (
            "request in the aperture window",
            vec![(APERTURE_RW_GPA, rlen, N, 1), (RESP, resp_len, W, 0)],
            Some(invalid),
        ),
        (
            "writable before readable",
            vec![(RESP, resp_len, W | N, 1), (REQ, rlen, 0, 0)],
            Some(invalid),
        ),
        (
            "huge readable length",
            vec![(REQ, 0x8000_0000, N, 1), (RESP, resp_len, W, 0)],
            Some(invalid),
        ),
        // Over 4 GiB in total: virtio-queue ends the chain before the response buffer.
        (
            "chain longer than 4 GiB",
            vec![(REQ, u32::MAX, N, 1), (RESP, resp_len, W, 0)],
            None,
        ),
        (
            "readable larger than any request",
            vec![(REQ, 0x10_0000, N, 1), (RESP, resp_len, W, 0)],
            Some(invalid),
        ),
        (
            "response buffer too small",
            vec![(REQ, rlen, N, 1), (RESP, 8, W, 0)],
            Some(invalid),
        ),
        (
            "response buffer smaller than a header",
            vec![(REQ, rlen, N, 1), (RESP, 4, W, 0)],
            None,
        ),
        ("no response buffer", vec![(REQ, rlen, 0, 0)], None),
        (
            "response buffer outside RAM",
            vec![(REQ, rlen, N, 1), (1 << 40, resp_len, W, 0)],
            None,
        ),
        (
            "response buffer in the aperture",
            vec![(REQ, rlen, N, 1), (APERTURE_RW_GPA, resp_len, W, 0)],
            None,
        ),
        (
            "next index out of the table",
            vec![(REQ, rlen, N, 200)],
            None,
        ),
        (
            "indirect table outside RAM",
            vec![(1 << 40, 32, VRING_DESC_F_INDIRECT as u16, 0)],
            None,
        ),
    ];
    for (name, descs, want) in cases {
        let (len, status) =
            run(&mut g, &descs).unwrap_or_else(|| panic!("case {name}: not completed"));
        match want {
            Some(st) => {
                assert_eq!(status, st, "case {name}");
                assert!(len >= 8, "case {name}: used length {len}");
            }
            None => assert_eq!((len, status), (0, 0xeeee_eeee), "case {name}"),
        }
        assert_eq!(hub.counters(), before, "case {name} changed the domain");
    }
    // A descriptor loop: 0 -> 1 -> 0 ... The queue's TTL ends it; the chain is
    // either rejected as too long or answered, but the device neither hangs
    // nor creates anything.
    let got = run(&mut g, &[(REQ, 8, N, 1), (REQ, 8, N, 0)]);
    assert!(matches!(got, Some((0, _))), "loop: {got:?}");
    assert_eq!(hub.counters(), before);

    let st = g.stats();
    assert_eq!(st.dispatched, 0, "{st:?}");
    assert_eq!(st.rejected, st.chains, "{st:?}");

    // The device still works afterwards.
    let c = g.call(wire::Request::Make {
        vaddr: 0x1000,
        size: 0x1000,
        mode: 0o600,
        uid: 0,
        gid: 0,
    });
    assert_eq!(c.status, 0);
    assert_eq!(hub.counters().segments, before.segments + 1);
}

#[test]
fn a_long_chain_is_rejected() {
    let hub = hub();
    let mem = guest_ram();
    let mut g = Guest::new(&hub, 1, &mem);
    let req = make_bytes(g.owner);
    g.mem_write(REQ, &req);
    // 40 one-byte readable descriptors, then the response.
    let mut descs: Vec<(u64, u32, u16, u16)> = (0..40u16)
        .map(|i| (REQ + u64::from(i), 1, N, i + 1))
        .collect();
    descs.push((RESP, 64, W, 0));
    let got = run(&mut g, &descs);
    assert_eq!(
        got,
        Some((8, wire::VIRTIO_XPMEM_S_INVALID)),
        "status header only"
    );
    assert_eq!(hub.counters().segments, 0);
}

#[test]
fn bad_requests_get_their_status() {
    let hub = hub();
    let mem = guest_ram();
    let mut g = Guest::new(&hub, 1, &mem);
    let before = hub.counters();
    let mut unknown = make_bytes(g.owner);
    unknown[0..4].copy_from_slice(&99u32.to_le_bytes());
    let mut zero_owner = make_bytes(g.owner);
    zero_owner[8..16].copy_from_slice(&0u64.to_le_bytes());
    let mut bad_flags = make_bytes(g.owner);
    bad_flags[4..8].copy_from_slice(&1u32.to_le_bytes());
    let misaligned = wire::Request::Make {
        vaddr: 0x1001,
        size: 0x1000,
        mode: 0o600,
        uid: 0,
        gid: 0,
    }
    .to_bytes(g.owner);
    for (name, bytes, status) in [
        ("unknown opcode", unknown, wire::VIRTIO_XPMEM_S_UNSUPPORTED),
        ("zero owner", zero_owner, wire::VIRTIO_XPMEM_S_INVALID),
        ("header flags", bad_flags, wire::VIRTIO_XPMEM_S_INVALID),
        ("misaligned vaddr", misaligned, wire::VIRTIO_XPMEM_S_INVALID),
    ] {
        let head = g.submit(&bytes, 64);
        let c = g
            .completion(head)
            .unwrap_or_else(|| panic!("{name}: no completion"));
        assert_eq!(c.status, status, "{name}");
    }
    // Ids that do not exist / belong to nobody.
    for (name, req, status) in [
        (
            "remove unknown",
            wire::Request::Remove { segid: 12345 },
            wire::VIRTIO_XPMEM_S_NOENT,
        ),
        (
            "detach unknown",
            wire::Request::Detach { attach_id: 777 },
            wire::VIRTIO_XPMEM_S_NOENT,
        ),
        (
            "ack unknown",
            wire::Request::InvalidateAck { invalidation_id: 5 },
            wire::VIRTIO_XPMEM_S_NOENT,
        ),
        (
            "resolve reply unknown",
            wire::Request::ResolveReply {
                resolve_id: 9,
                status: wire::Status::Ok,
                gpas: vec![0x1000],
            },
            wire::VIRTIO_XPMEM_S_NOENT,
        ),
    ] {
        let c = g.call(req);
        assert_eq!(c.status, status, "{name}");
    }
    assert_eq!(hub.counters().segments, before.segments);
    assert_eq!(hub.counters().permits, before.permits);
    let st = hub.aperture_stats();
    assert_eq!(st.map_actions + st.unmap_actions, 0);
}

#[test]
fn bad_eventq_buffers_are_returned_unused() {
    let hub = hub();
    let (ma, mb) = (guest_ram(), guest_ram());
    // A gets no eventq buffers from the model; we add hostile ones by hand.
    let mut a = Guest::with_event_buffers(&hub, 1, &ma, 0);
    let mut b = Guest::new(&hub, 2, &mb);
    let c = a.call(wire::Request::Make {
        vaddr: 0x10000,
        size: 0x4000,
        mode: 0o666,
        uid: 0,
        gid: 0,
    });
    let segid = c.u64_at(0);
    let c = b.call(wire::Request::Get {
        segid,
        access: wire::Access::ReadWrite,
        uid: 0,
        gid: 0,
        ipc_owner: false,
    });
    let apid = c.u64_at(0);
    let c = b.call(wire::Request::Attach {
        apid,
        offset: 0,
        size: 0x4000,
        read_only: false,
    });
    let att = c.u64_at(0);
    let req = wire::Request::Fault {
        attach_id: att,
        page_index: 0,
        npages: 1,
        write: false,
    };
    b.submit(&req.to_bytes(b.owner), 16);
    assert_eq!(hub.device_stats(a.vm).unwrap().events_backlog, 1);
    // Readable buffer, too small, outside RAM, in the aperture: all returned with len 0.
    let bad = [
        (0x28_0000u64, 64u32, 0u16),
        (0x28_0000, 8, W),
        (1 << 40, 64, W),
        (APERTURE_RW_GPA, 64, W),
    ];
    for (i, &(addr, len, flags)) in bad.iter().enumerate() {
        a.evq.set_desc(i as u16, addr, len, flags, 0);
        a.evq.make_available(i as u16);
    }
    a.dev.queue_notify(1);
    let used = a.evq.take_used();
    assert_eq!(used, vec![(0, 0), (1, 0), (2, 0), (3, 0)]);
    let st = hub.device_stats(a.vm).unwrap();
    assert_eq!(st.bad_event_buffers, 4);
    assert_eq!(st.events_backlog, 1, "the event must survive bad buffers");
    // A good buffer gets it.
    a.evq.set_desc(4, 0x28_0000, 64, W, 0);
    a.evq.make_available(4);
    a.dev.queue_notify(1);
    let used = a.evq.take_used();
    assert_eq!(used.len(), 1);
    assert!(used[0].1 > 0);
    let mut ev = vec![0u8; used[0].1 as usize];
    ev.copy_from_slice(&a.ram_read(0x28_0000, used[0].1 as usize));
    assert!(matches!(
        wire::Event::parse(&ev),
        Ok(wire::Event::Resolve { .. })
    ));
}

#[test]
fn reposted_heads_cannot_grow_the_pending_table() {
    let hub = hub();
    let (ma, mb) = (guest_ram(), guest_ram());
    let mut a = Guest::new(&hub, 1, &ma);
    let mut b = Guest::new(&hub, 2, &mb);
    let segid = a
        .call(wire::Request::Make {
            vaddr: 0x10000,
            size: 0x4000,
            mode: 0o666,
            uid: 0,
            gid: 0,
        })
        .u64_at(0);
    let apid = b
        .call(wire::Request::Get {
            segid,
            access: wire::Access::ReadWrite,
            uid: 0,
            gid: 0,
            ipc_owner: false,
        })
        .u64_at(0);
    let att = b
        .call(wire::Request::Attach {
            apid,
            offset: 0,
            size: 0x4000,
            read_only: false,
        })
        .u64_at(0);
    // One FAULT chain (it stays pending: A never answers), made available
    // over and over without waiting for it to be used.
    let req = wire::Request::Fault {
        attach_id: att,
        page_index: 0,
        npages: 1,
        write: false,
    };
    b.mem_write(REQ, &req.to_bytes(b.owner));
    b.reqq
        .set_desc(0, REQ, req.to_bytes(b.owner).len() as u32, N, 1);
    b.reqq.set_desc(1, RESP, 16, W, 0);
    let reposts = 3 * QSIZE;
    let st0 = b.stats();
    for _ in 0..reposts {
        b.reqq.make_available(0);
        b.dev.queue_notify(0);
    }
    let st = b.stats();
    assert!(st.pending_requests <= u64::from(QSIZE), "{st:?}");
    assert_eq!(st.chains - st0.chains, u64::from(reposts));
    assert_eq!(
        st.rejected - st0.rejected + st.pending_requests,
        u64::from(reposts),
        "{st:?}"
    );
    assert!(st.rejected > st0.rejected, "{st:?}");
}
