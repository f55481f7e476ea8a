//! A guest whose other vCPU refills its eventq (or requestq) with unusable buffers exactly
//! as fast as the device returns them must not keep the hub busy: one delivery attempt (or
//! one notification) looks at most at one queue's worth of buffers, and other VMs' requests
//! and the deadline go on.
//!
//! The refilling "vCPU" is made deterministic by hooking the device's own log record for
//! each refused buffer (a logger is process-wide, so this test has its own binary).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

use common::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Host addresses of the flooding guest's eventq avail ring (base) and how many more
/// buffers the "other vCPU" will post.
static RING: OnceLock<usize> = OnceLock::new();
/// The same for the requestq flood (used once RING_REQ is set).
static RING_REQ: OnceLock<usize> = OnceLock::new();
static REFILLS_LEFT: AtomicU64 = AtomicU64::new(0);
static NEXT_AVAIL: AtomicUsize = AtomicUsize::new(0);

/// Posts one more device-readable (so unusable) buffer on the flooding guest's eventq.
fn refill_one() {
    let Some(&avail) = RING_REQ.get().or(RING.get()) else {
        return;
    };
    if REFILLS_LEFT
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_err()
    {
        return;
    }
    let idx = NEXT_AVAIL.fetch_add(1, Ordering::SeqCst) as u16;
    let head = idx % QSIZE;
    // SAFETY: `avail` is the host address of the avail ring inside the guest RAM mapping,
    // which the test keeps alive while the hub runs; the ring has QSIZE entries.
    unsafe {
        ((avail + 4 + 2 * usize::from(head)) as *mut u16).write_volatile(head);
        std::sync::atomic::fence(Ordering::Release);
        ((avail + 2) as *mut u16).write_volatile(idx.wrapping_add(1));
    }
}

struct RefillOnRefusal;

impl log::Log for RefillOnRefusal {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        let msg = record.args().to_string();
        if msg.contains("bad eventq buffer") || msg.contains("rejected request chain") {
            refill_one();
        }
    }
    fn flush(&self) {}
}

static LOGGER: RefillOnRefusal = RefillOnRefusal;

/// Stocks the queue at `ring` with QSIZE device-readable buffers of EVBUF_LEN bytes
/// (unusable both as an event buffer and as a request without a response buffer);
/// returns the avail ring's host address.
fn stock_bad_buffers(mem: &GuestMemoryMmap, ring: u64) -> usize {
    let qsize = u64::from(QSIZE);
    let avail = ring + 16 * qsize;
    write_bad_descriptors(mem, ring);
    for k in 0..QSIZE {
        mem.write_obj(k, GuestAddress(avail + 4 + 2 * u64::from(k)))
            .unwrap();
    }
    mem.write_obj(QSIZE, GuestAddress(avail + 2)).unwrap();
    NEXT_AVAIL.store(usize::from(QSIZE), Ordering::SeqCst);
    mem.get_host_address(GuestAddress(avail)).unwrap() as usize
}

#[test]
fn one_delivery_attempt_looks_at_one_queue_of_unusable_buffers_at_most() {
    log::set_logger(&LOGGER).unwrap();
    log::set_max_level(log::LevelFilter::Debug);
    let (hub, clock) = manual_hub(100);
    let (ma, mb, ms) = (guest_ram(), guest_ram(), guest_ram());
    let mut p = pair(&hub, &ma, &mb, false, 0);
    let s = deaf_importer(&hub, &mut p, &ms);
    let Pair {
        mut a,
        mut b,
        segid,
        model,
        att: att_b,
        ..
    } = p;
    RING.set(stock_bad_buffers(&ms, EVQ_ADDR)).unwrap();
    // From here every refused buffer is replaced at once, up to 100000 times.
    REFILLS_LEFT.store(100_000, Ordering::SeqCst);
    let head_s = invalidate(&mut a, segid, 12, 1);
    let refused = hub.device_stats(s.vm).unwrap().bad_event_buffers;
    assert!(
        refused <= u64::from(QSIZE),
        "one delivery attempt went through {refused} unusable buffers (queue size {QSIZE})"
    );
    // The pair a/b is served while s's event waits.
    assert_eq!(fault(&mut b, &mut a, &model, att_b, 0, 1, true).status, 0);
    let head = invalidate(&mut a, segid, 0, 1);
    assert!(ack_all(&mut b).is_empty());
    let c = a
        .completion(head)
        .expect("the pair's INVALIDATE was not answered");
    assert_eq!((c.status, c.u32_at(0), c.u32_at(4)), (0, 1, 0));
    // The deadline still revokes s (its REVOKED event is another bounded attempt).
    clock.advance(100);
    hub.tick();
    let c = a
        .completion(head_s)
        .expect("s was not revoked at the deadline");
    assert_eq!((c.u32_at(0), c.u32_at(4)), (1, 1));
    let refused = hub.device_stats(s.vm).unwrap().bad_event_buffers;
    assert!(refused <= 3 * u64::from(QSIZE), "{refused}");
    REFILLS_LEFT.store(0, Ordering::SeqCst);
    hub.check_invariants().unwrap();

    // The same flood on a requestq: one notification handles at most one queue's worth.
    let mr = guest_ram();
    let r = Guest::new(&hub, 4, &mr);
    let ring = stock_bad_buffers(&mr, REQQ_ADDR);
    RING_REQ.set(ring).unwrap();
    REFILLS_LEFT.store(100_000, Ordering::SeqCst);
    let chains_before = hub.device_stats(r.vm).unwrap().chains;
    let mut r = r;
    r.dev.queue_notify(0);
    let handled = hub.device_stats(r.vm).unwrap().chains - chains_before;
    REFILLS_LEFT.store(0, Ordering::SeqCst);
    assert!(
        handled <= u64::from(QSIZE),
        "one requestq notification handled {handled} chains (queue size {QSIZE})"
    );
}
