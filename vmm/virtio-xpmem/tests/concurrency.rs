//! Several VMs driven from their own threads at once, plus the hub's
//! deadline timer thread: exercises the lock order (hub state, then one
//! endpoint at a time) under contention. A watchdog aborts the process if
//! the VMs do not finish, so a deadlock fails the test instead of hanging it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use virtio_xpmem_device::aperture::{FILLER_BYTE, PAGE_SIZE};
use virtio_xpmem_device::{HubConfig, XpmemHub};
use virtio_xpmem_wire as wire;

const SEG_VADDR: u64 = 0x7f00_0000_0000;
const SEG_PAGES: u64 = 32;
const IMPORTERS: usize = 3;
const FAULTS_PER_IMPORTER: u64 = 150;

/// Acks INVALIDATE events; returns how many.
fn ack_invalidations(g: &mut Guest<'_>) -> usize {
    let mut n = 0;
    for ev in g.take_events() {
        if let wire::Event::Invalidate {
            invalidation_id, ..
        } = ev
        {
            g.call(wire::Request::InvalidateAck { invalidation_id });
            n += 1;
        }
    }
    n
}

#[test]
fn vms_on_their_own_threads_do_not_deadlock() {
    let finished = std::sync::Arc::new(AtomicBool::new(false));
    let watchdog = {
        let finished = finished.clone();
        std::thread::spawn(move || {
            for _ in 0..1200 {
                if finished.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            eprintln!("concurrency test did not finish in 120 s: deadlock?");
            std::process::abort();
        })
    };

    let hub = XpmemHub::new(HubConfig {
        invalidate_deadline: Duration::from_millis(20),
        max_fault_pages: 8,
        ..HubConfig::default()
    })
    .unwrap();
    let importers_done = AtomicUsize::new(0);
    let mut seg_txs = Vec::new();
    let mut seg_rxs = Vec::new();
    for _ in 0..IMPORTERS {
        let (tx, rx) = mpsc::channel::<u64>();
        seg_txs.push(tx);
        seg_rxs.push(rx);
    }

    std::thread::scope(|s| {
        let hub_ref = &hub;
        let done_ref = &importers_done;
        // Exporter: VM 1.
        s.spawn(move || {
            let mem = guest_ram();
            let mut a = Guest::new(hub_ref, 1, &mem);
            let model = ExporterModel {
                vaddr: SEG_VADDR,
                npages: SEG_PAGES,
                contiguous: false,
            };
            for i in 0..SEG_PAGES {
                a.ram_fill(
                    model.gpa_of(SEG_VADDR + i * PAGE_SIZE),
                    0x10 + i as u8,
                    PAGE_SIZE as usize,
                );
            }
            let segid = a
                .call(wire::Request::Make {
                    vaddr: SEG_VADDR,
                    size: SEG_PAGES * PAGE_SIZE,
                    mode: 0o666,
                    uid: 0,
                    gid: 0,
                })
                .u64_at(0);
            for tx in seg_txs {
                tx.send(segid).unwrap();
            }
            let mut inval: Option<u16> = None;
            let mut round = 0u64;
            let mut completed = 0;
            while done_ref.load(Ordering::SeqCst) < IMPORTERS {
                let evs = a.take_events();
                model.answer_resolves(&mut a, evs);
                match inval {
                    Some(head) => {
                        if let Some(c) = a.completion(head) {
                            assert_eq!((c.status, c.used_len), (0, 16));
                            // At most one target per importer attachment.
                            let (targets, revoked) = (c.u32_at(0), c.u32_at(4));
                            assert!(revoked <= targets && targets as usize <= IMPORTERS);
                            completed += 1;
                            inval = None;
                        }
                    }
                    None => {
                        round += 1;
                        let req = wire::Request::Invalidate {
                            segid,
                            vaddr: SEG_VADDR + (round * 7 % SEG_PAGES) * PAGE_SIZE,
                            len: 2 * PAGE_SIZE.min((SEG_PAGES - round * 7 % SEG_PAGES) * PAGE_SIZE),
                        };
                        inval = Some(a.submit(
                            &req.to_bytes(a.owner),
                            wire::response_size(req.opcode()) as u32,
                        ));
                    }
                }
                std::thread::yield_now();
            }
            // Let the last invalidation finish (the timer forces it at worst).
            while let Some(head) = inval {
                if a.completion(head).is_some() {
                    completed += 1;
                    inval = None;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            assert!(completed > 0);
            assert_eq!(a.call(wire::Request::Remove { segid }).status, 0);
        });
        // Importers: VMs 2..
        for (k, rx) in seg_rxs.into_iter().enumerate() {
            s.spawn(move || {
                let mem = guest_ram();
                let mut b = Guest::new(hub_ref, 2 + k as u32, &mem);
                let segid = rx.recv().unwrap();
                let apid = b
                    .call(wire::Request::Get {
                        segid,
                        access: wire::Access::ReadWrite,
                        uid: 0,
                        gid: 0,
                        ipc_owner: false,
                    })
                    .u64_at(0);
                let c = b.call(wire::Request::Attach {
                    apid,
                    offset: 0,
                    size: SEG_PAGES * PAGE_SIZE,
                    read_only: false,
                });
                assert_eq!(c.status, 0);
                let (att, off) = (c.u64_at(0), c.u64_at(8));
                let mut ok = 0;
                for i in 0..FAULTS_PER_IMPORTER {
                    let page = (i * 5 + k as u64) % SEG_PAGES;
                    let req = wire::Request::Fault {
                        attach_id: att,
                        page_index: page,
                        npages: 2,
                        write: false,
                    };
                    let head = b.submit(&req.to_bytes(b.owner), 16);
                    let c = loop {
                        if let Some(c) = b.completion(head) {
                            break c;
                        }
                        ack_invalidations(&mut b);
                        std::thread::yield_now();
                    };
                    if c.status == 0 {
                        ok += 1;
                        // Either the exporter's byte or (if invalidated since) the filler.
                        let v = b.aperture_read(0, off + page * PAGE_SIZE, 1)[0];
                        assert!(
                            v == 0x10 + page as u8 || v == FILLER_BYTE,
                            "page {page}: {v:#x}"
                        );
                    }
                    ack_invalidations(&mut b);
                }
                assert!(ok > 0, "importer {k}: no FAULT succeeded");
                done_ref.fetch_add(1, Ordering::SeqCst);
                // Keep acking until the exporter is done with its last invalidation.
                for _ in 0..50 {
                    ack_invalidations(&mut b);
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
        }
    });
    finished.store(true, Ordering::SeqCst);
    watchdog.join().unwrap();
    hub.check_invariants().unwrap();
    let c = hub.counters();
    assert!(c.nothing_held(), "{c:?}");
    assert!(c.invalidations_completed > 0, "{c:?}");
    eprintln!(
        "concurrency: {} invalidations ({} forced), {} resolves, {} maps, {} unmaps",
        c.invalidations_completed,
        c.invalidations_forced,
        c.resolves_issued,
        c.map_actions,
        c.unmap_actions
    );
}
