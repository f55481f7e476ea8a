//! The invalidation guarantee against host failures and hostile guests: no exporter is
//! told its pages are free while any importer window still shows them. A completion probe
//! looks at the real importer windows at the moment each INVALIDATE, DETACH or REMOVE is
//! answered.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use virtio_xpmem_device::aperture::{
    ApertureFaults, ApertureWindows, MmapAperture, FILLER_BYTE, PAGE_SIZE,
};
use virtio_xpmem_device::{HubClock, HubConfig, ManualClock, VmId, XpmemHub};
use virtio_xpmem_wire as wire;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Exporter pages hold 0x10 + page index (see `make_segment`).
fn shows_exporter_bytes(windows: &ApertureWindows) -> Option<(u32, u64, u8)> {
    for (shm, w) in [(0u32, &windows.rw), (1, &windows.ro)] {
        for page in 0..w.pages() {
            // SAFETY: inside the window, which is always mapped readable.
            let b =
                unsafe { std::ptr::read_volatile((w.host_addr() + page * PAGE_SIZE) as *const u8) };
            if (0x10..0x10 + SEG_PAGES as u8).contains(&b) {
                return Some((shm, page, b));
            }
        }
    }
    None
}

/// Records, for every completion of the opcodes that free exporter pages, what the
/// importers' windows showed at that moment.
#[derive(Clone, Default)]
struct Probe {
    seen: Arc<Mutex<Vec<String>>>,
    completions: Arc<AtomicU64>,
}

impl Probe {
    fn install(&self, hub: &XpmemHub, importers: Vec<ApertureWindows>) {
        let seen = self.seen.clone();
        let completions = self.completions.clone();
        hub.set_completion_probe(Box::new(move |vm, opcode, ok| {
            let frees = [
                wire::VIRTIO_XPMEM_REQ_INVALIDATE,
                wire::VIRTIO_XPMEM_REQ_REMOVE,
                wire::VIRTIO_XPMEM_REQ_DETACH,
            ];
            if !ok || !frees.contains(&opcode) {
                return;
            }
            completions.fetch_add(1, Ordering::SeqCst);
            for (i, w) in importers.iter().enumerate() {
                if let Some((shm, page, b)) = shows_exporter_bytes(w) {
                    seen.lock().unwrap().push(format!(
                        "VM {vm:?} was answered opcode {opcode} while importer #{i} window {shm} page {page} showed exporter byte {b:#x}"
                    ));
                }
            }
        }));
    }

    fn assert_clean(&self, min_completions: u64) {
        let seen = self.seen.lock().unwrap();
        assert!(seen.is_empty(), "{seen:#?}");
        assert!(self.completions.load(Ordering::SeqCst) >= min_completions);
    }
}

fn hub_with(aperture: MmapAperture, deadline_ms: u64) -> (Arc<XpmemHub>, ManualClock) {
    let clock = ManualClock::default();
    let hub = XpmemHub::with_backend(
        HubConfig {
            invalidate_deadline: Duration::from_millis(deadline_ms),
            ..HubConfig::default()
        },
        Box::new(aperture),
        HubClock::Manual(clock.clone()),
    )
    .unwrap();
    (hub, clock)
}

fn revoked_host(events: &[wire::Event], att: u64) -> bool {
    events.iter().any(|e| {
        matches!(e, wire::Event::Revoked { attach_id, reason: wire::RevokeReason::Host, .. } if *attach_id == att)
    })
}

#[test]
fn a_failed_unmap_revokes_the_whole_window_before_the_exporter_is_answered() {
    let faults = Arc::new(ApertureFaults::default());
    let (hub, _clock) = hub_with(MmapAperture::new().with_faults(faults.clone()), 60_000);
    let (ma, mb) = (guest_ram(), guest_ram());
    let Pair {
        mut a,
        mut b,
        segid,
        att,
        off,
        ..
    } = pair(&hub, &ma, &mb, false, 8);
    let probe = Probe::default();
    probe.install(&hub, vec![b.windows.clone()]);
    assert_eq!(b.aperture_read(0, off, 1), vec![0x10]);
    // The unmap that follows b's acknowledgement fails (one mmap call).
    faults.fail_next(1);
    let head = invalidate(&mut a, segid, 0, 4);
    let rest = ack_all(&mut b);
    assert!(rest.is_empty(), "{rest:?}");
    let c = a.completion(head).expect("INVALIDATE not answered");
    assert_eq!(c.status, 0);
    probe.assert_clean(1);
    // The whole window went: every attachment in it is revoked for good.
    assert!(b
        .aperture_read(0, 0, b.windows.rw.len() as usize)
        .iter()
        .all(|&x| x == FILLER_BYTE));
    assert!(revoked_host(&b.take_events(), att));
    let st = hub.aperture_stats();
    assert_eq!(
        (st.unmap_failures, st.windows_revoked, st.cut_offs),
        (1, 1, 0)
    );
    assert_eq!(hub.counters().windows_revoked, 1);
    assert_eq!(b.fault_status_now(att, 6), wire::VIRTIO_XPMEM_S_REVOKED);
    hub.check_invariants().unwrap();
    assert_eq!(hub.counters().mapped_pages, 0);
}

#[test]
fn a_window_that_cannot_be_revoked_is_cut_off_before_the_exporter_is_answered() {
    let faults = Arc::new(ApertureFaults::default());
    let (hub, _clock) = hub_with(MmapAperture::new().with_faults(faults.clone()), 60_000);
    let (ma, mb) = (guest_ram(), guest_ram());
    let Pair {
        mut a,
        mut b,
        segid,
        att,
        ..
    } = pair(&hub, &ma, &mb, false, 8);
    // The monitor's cut-off (it would delete the memslot): here it records the call and
    // then really replaces the window, as the guest would no longer see it.
    let cut = Arc::new(AtomicBool::new(false));
    {
        let cut = cut.clone();
        let faults = faults.clone();
        hub.set_cut_off(
            b.vm,
            Box::new(move |window| {
                assert_eq!(window, xpmem_domain::Window::Rw);
                cut.store(true, Ordering::SeqCst);
                faults.heal();
                Ok(())
            }),
        );
    }
    let cut_seen = Arc::new(AtomicBool::new(true));
    {
        let (cut, cut_seen) = (cut.clone(), cut_seen.clone());
        hub.set_completion_probe(Box::new(move |vm, opcode, _| {
            if vm == VmId(1)
                && opcode == wire::VIRTIO_XPMEM_REQ_INVALIDATE
                && !cut.load(Ordering::SeqCst)
            {
                cut_seen.store(false, Ordering::SeqCst);
            }
        }));
    }
    // Every mmap fails: the unmap, then the whole-window revocation.
    faults.fail_next(i64::MAX);
    let head = invalidate(&mut a, segid, 0, 4);
    ack_all(&mut b);
    let c = a.completion(head).expect("INVALIDATE not answered");
    assert_eq!(c.status, 0);
    assert!(cut.load(Ordering::SeqCst), "the VM was not cut off");
    assert!(
        cut_seen.load(Ordering::SeqCst),
        "the exporter was answered before the cut-off"
    );
    assert_eq!(hub.aperture_stats().cut_offs, 1);
    assert!(revoked_host(&b.take_events(), att));
    hub.check_invariants().unwrap();
}

#[test]
fn an_importer_that_resets_instead_of_acking_loses_its_window_before_the_exporter_is_answered() {
    let (hub, _clock) = hub_with(MmapAperture::new(), 60_000);
    let (ma, mb) = (guest_ram(), guest_ram());
    let Pair {
        mut a,
        mut b,
        segid,
        ..
    } = pair(&hub, &ma, &mb, true, 8);
    let probe = Probe::default();
    probe.install(&hub, vec![b.windows.clone()]);
    let head = invalidate(&mut a, segid, 0, SEG_PAGES);
    assert!(a.completion(head).is_none());
    // b resets its device (another vCPU could still be reading the window).
    b.dev.reset();
    let c = a
        .completion(head)
        .expect("INVALIDATE not answered after the reset");
    assert_eq!(c.status, 0);
    probe.assert_clean(1);
    assert_eq!(shows_exporter_bytes(&b.windows), None);
    hub.check_invariants().unwrap();
}

#[test]
fn an_exporter_that_resets_is_unmapped_from_importers_before_anyone_is_answered() {
    let (hub, _clock) = hub_with(MmapAperture::new(), 60_000);
    let (ma, mb, mc) = (guest_ram(), guest_ram(), guest_ram());
    let mut a = Guest::new(&hub, 1, &ma);
    let mut b = Guest::new(&hub, 2, &mb);
    let mut c = Guest::new(&hub, 3, &mc);
    let probe = Probe::default();
    probe.install(&hub, vec![b.windows.clone(), c.windows.clone()]);
    let (segid, model) = make_segment(&mut a);
    let (_apid, att, _off, _shm) = get_attach(&mut b, segid, false);
    assert_eq!(fault(&mut b, &mut a, &model, att, 0, 16, true).status, 0);
    // c exports too and b detaches from it while a goes away.
    let (segid_c, model_c) = make_segment(&mut c);
    let (_apid, att_c, _off, _shm) = get_attach(&mut b, segid_c, false);
    assert_eq!(fault(&mut b, &mut c, &model_c, att_c, 0, 2, true).status, 0);
    a.dev.reset();
    assert_eq!(
        shows_exporter_bytes(&b.windows).map(|(_, _, v)| v),
        Some(0x10)
    );
    let d = b.call(wire::Request::Detach { attach_id: att_c });
    assert_eq!(d.status, 0);
    probe.assert_clean(1);
    assert_eq!(shows_exporter_bytes(&b.windows), None);
    hub.check_invariants().unwrap();
}

#[test]
fn repeat_offenders_back_off_instead_of_stalling_every_invalidation() {
    let (hub, clock) = hub_with(MmapAperture::new(), 100);
    let (ma, mb) = (guest_ram(), guest_ram());
    let Pair {
        mut a,
        mut b,
        segid,
        model,
        apid,
        att,
        ..
    } = pair(&hub, &ma, &mb, false, 4);
    // b never acknowledges: revoked at the deadline.
    let head = invalidate(&mut a, segid, 0, 4);
    clock.advance(100);
    hub.tick();
    let c = a.completion(head).expect("not forced at the deadline");
    assert_eq!((c.u32_at(0), c.u32_at(4)), (1, 1));
    // At once it tries again: new attachments and FAULTs are refused with AGAIN.
    let again = b.call(wire::Request::Attach {
        apid,
        offset: 0,
        size: PAGE_SIZE,
        read_only: false,
    });
    assert_eq!(again.status, wire::VIRTIO_XPMEM_S_AGAIN);
    assert_eq!(b.fault_status_now(att, 8), wire::VIRTIO_XPMEM_S_AGAIN);
    let counters = hub.counters();
    assert_eq!(
        (counters.backoffs_started, counters.backoff_refusals),
        (1, 2)
    );
    // After the back-off it may fault again.
    clock.advance(100);
    assert_eq!(fault(&mut b, &mut a, &model, att, 8, 1, true).status, 0);
}

/// A guest that spins unusable eventq buffers from "another vCPU" (a thread) while an
/// event for it is pending: the hub must not loop on its buffers, so another pair's
/// invalidations are acknowledged (not forced) and the deadline timer still runs.
#[test]
fn a_guest_spinning_bad_event_buffers_cannot_stall_the_hub() {
    let done = Arc::new(AtomicBool::new(false));
    let scenario = {
        let done = done.clone();
        std::thread::spawn(move || spinning_guest_scenario(&done))
    };
    let start = Instant::now();
    while !scenario.is_finished() && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let finished = scenario.is_finished();
    done.store(true, Ordering::SeqCst);
    assert!(
        finished,
        "the hub stalled: the pair's invalidations did not complete in 120 s"
    );
    let latencies = scenario.join().unwrap();
    let max = latencies.iter().max().copied().unwrap_or_default();
    println!(
        "NOTE pair invalidation latency with a bad-buffer spinner: {} rounds, max {:?}",
        latencies.len(),
        max
    );
}

fn spinning_guest_scenario(stop: &AtomicBool) -> Vec<Duration> {
    let hub = XpmemHub::with_backend(
        HubConfig {
            invalidate_deadline: Duration::from_millis(2000),
            ..HubConfig::default()
        },
        Box::new(MmapAperture::new()),
        HubClock::Monotonic,
    )
    .unwrap();
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
    // From now on s posts only descriptors the device must refuse (device-readable
    // buffers on the eventq), as fast as the ring allows.
    let stop_spin = Arc::new(AtomicBool::new(false));
    let posted = Arc::new(AtomicU64::new(0));
    let spinner = {
        let (mem, flag, posted) = (ms.clone(), stop_spin.clone(), posted.clone());
        std::thread::spawn(move || spin_bad_event_buffers(&mem, &flag, &posted))
    };
    while posted.load(Ordering::SeqCst) < u64::from(QSIZE) {
        std::thread::yield_now();
    }
    // An event for s is now pending behind its bad buffers.
    let head_s = invalidate(&mut a, segid, 12, 1);
    let mut latencies = Vec::new();
    for round in 0..20u64 {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let page = round % 8;
        assert_eq!(
            fault(&mut b, &mut a, &model, att_b, page, 1, true).status,
            0
        );
        let t = Instant::now();
        let head = invalidate(&mut a, segid, page, 1);
        let c = loop {
            ack_all(&mut b);
            if let Some(c) = a.completion(head) {
                break c;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        latencies.push(t.elapsed());
        assert_eq!(c.status, 0);
        assert_eq!(
            (c.u32_at(0), c.u32_at(4)),
            (1, 0),
            "round {round}: the pair's invalidation was forced, not acknowledged"
        );
    }
    // The deadline timer still works: s's target is revoked by force.
    let start = Instant::now();
    let c = loop {
        if let Some(c) = a.completion(head_s) {
            break c;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "s was never revoked"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!((c.u32_at(0), c.u32_at(4)), (1, 1));
    stop_spin.store(true, Ordering::SeqCst);
    spinner.join().unwrap();
    let posted = posted.load(Ordering::SeqCst);
    let st = hub.device_stats(s.vm).unwrap();
    assert!(st.bad_event_buffers > 0 && posted > 0, "{st:?}");
    println!(
        "NOTE spinner posted {posted} bad eventq buffers, the device returned {}",
        st.bad_event_buffers
    );
    drop(s);
    latencies
}

/// Keeps s's eventq full of device-readable (wrong direction) buffers, with plain stores
/// into guest memory so that it refills faster than the device can take them; returns how
/// many it posted. Bounded by `stop` and by 60 s.
fn spin_bad_event_buffers(mem: &GuestMemoryMmap, stop: &AtomicBool, posted: &AtomicU64) {
    let qsize = u64::from(QSIZE);
    let desc = EVQ_ADDR;
    let avail = desc + 16 * qsize;
    let used = (avail + 6 + 2 * qsize + 3) & !3;
    write_bad_descriptors(mem, desc);
    let avail_host = mem.get_host_address(GuestAddress(avail)).unwrap() as usize;
    let used_host = mem.get_host_address(GuestAddress(used)).unwrap() as usize;
    let ring = |i: u64| (avail_host + 4 + 2 * i as usize) as *mut u16;
    let avail_idx = (avail_host + 2) as *mut u16;
    let used_idx = (used_host + 2) as *const u16;
    // SAFETY: these ring addresses (and those below) lie inside the guest RAM mapping,
    // which `mem` keeps alive; the device reads and writes them concurrently, as a guest
    // would, hence volatile accesses.
    let mut idx = unsafe { avail_idx.read_volatile() };
    let start = Instant::now();
    while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(60) {
        for _ in 0..1024 {
            // SAFETY: inside the guest RAM mapping (above).
            let seen = unsafe { used_idx.read_volatile() };
            if idx.wrapping_sub(seen) >= QSIZE {
                std::hint::spin_loop();
                continue;
            }
            let head = idx % QSIZE;
            // SAFETY: inside the guest RAM mapping (above).
            unsafe { ring(u64::from(head)).write_volatile(head) };
            idx = idx.wrapping_add(1);
            std::sync::atomic::fence(Ordering::Release);
            // SAFETY: inside the guest RAM mapping (above).
            unsafe { avail_idx.write_volatile(idx) };
            posted.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Fills the process's mapping table up to `vm.max_map_count` (every other page of a
/// PROT_NONE reservation made readable, each a mapping of its own); returns the
/// reservation and how many mappings it took.
fn exhaust_mapping_table() -> (usize, usize, u64) {
    let max: usize = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let len = 2 * (max + 16) * PAGE_SIZE as usize;
    // SAFETY: a fresh anonymous reservation at a kernel-chosen address.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED);
    for (splits, i) in (1..2 * max).step_by(2).enumerate() {
        // SAFETY: one page inside the reservation made above.
        let r = unsafe {
            libc::mprotect(
                base.cast::<u8>().add(i * PAGE_SIZE as usize).cast(),
                PAGE_SIZE as usize,
                libc::PROT_READ,
            )
        };
        if r != 0 {
            assert_eq!(
                std::io::Error::last_os_error().raw_os_error(),
                Some(libc::ENOMEM)
            );
            return (base as usize, len, splits as u64);
        }
    }
    panic!("never reached vm.max_map_count ({max})");
}

/// The real thing, in a child process of its own (it fills the mapping table): at the
/// kernel's mapping limit the unmap that splits an importer's run fails with ENOMEM, and
/// the exporter is still answered only after the importer's window no longer shows its
/// page.
fn at_mapping_limit() {
    // No budget: the kernel's limit is what stops the unmap here.
    let (hub, _clock) = hub_with(MmapAperture::with_budget(1 << 40), 60_000);
    let (ma, mb) = (guest_ram(), guest_ram());
    let mut p = pair(&hub, &ma, &mb, false, 0);
    // One run of 16 pages (one host mapping).
    p.model.contiguous = true;
    let f = fault(&mut p.b, &mut p.a, &p.model, p.att, 0, 16, true);
    assert_eq!(f.status, 0);
    let probe = Probe::default();
    probe.install(&hub, vec![p.b.windows.clone()]);
    let (base, len, splits) = exhaust_mapping_table();
    // The exporter takes back page 8, in the middle of the run.
    let head = invalidate(&mut p.a, p.segid, 8, 1);
    ack_all(&mut p.b);
    let answer = p.a.completion(head);
    let st = hub.aperture_stats();
    // SAFETY: the reservation made by exhaust_mapping_table, no longer used.
    unsafe { libc::munmap(base as *mut libc::c_void, len) };
    let c = answer.expect("INVALIDATE not answered");
    assert_eq!(c.status, 0);
    probe.assert_clean(1);
    assert!(
        st.unmap_failures >= 1 && st.windows_revoked >= 1,
        "the mapping limit did not make the unmap fail: {st:?}"
    );
    assert_eq!(shows_exporter_bytes(&p.b.windows), None);
    println!(
        "AT-LIMIT OK: {splits} extra mappings filled the table; unmap_failures={} windows_revoked={} cut_offs={}",
        st.unmap_failures, st.windows_revoked, st.cut_offs
    );
}

#[test]
fn revocation_at_the_process_mapping_limit() {
    if std::env::var_os("XPMEM_AT_MAPPING_LIMIT").is_some() {
        at_mapping_limit();
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "revocation_at_the_process_mapping_limit",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("XPMEM_AT_MAPPING_LIMIT", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("AT-LIMIT OK"),
        "child at the mapping limit failed ({:?}):\n{stdout}\n{stderr}",
        out.status
    );
    for line in stdout.lines().filter(|l| l.contains("AT-LIMIT OK")) {
        println!("NOTE {line}");
    }
}

#[test]
fn a_guest_that_scatters_its_window_gets_an_error_status_not_a_host_failure() {
    // Budget: the two 4 MiB windows' filler (2 + 2) plus the reserve (16) plus 6 more.
    let (hub, _clock) = hub_with(MmapAperture::with_budget(4 + 16 + 6), 60_000);
    let (ma, mb) = (guest_ram(), guest_ram());
    let mut p = pair(&hub, &ma, &mb, false, 0);
    // Scattered exporter pages, one FAULT per page: each page its own host mapping.
    let statuses: Vec<u32> = (0..SEG_PAGES)
        .map(|page| fault(&mut p.b, &mut p.a, &p.model, p.att, page, 1, true).status)
        .collect();
    let ok = statuses.iter().take_while(|&&s| s == 0).count();
    assert!(ok >= 2 && ok < SEG_PAGES as usize, "{statuses:?}");
    assert!(
        statuses[ok..]
            .iter()
            .all(|&s| s == wire::VIRTIO_XPMEM_S_FAULT),
        "{statuses:?}"
    );
    let st = hub.aperture_stats();
    assert_eq!(st.unmap_failures, 0);
    assert!(st.map_failures > 0);
    // Revoking everything still works within the budget.
    let head = invalidate(&mut p.a, p.segid, 0, SEG_PAGES);
    ack_all(&mut p.b);
    assert_eq!(p.a.completion(head).map(|c| c.status), Some(0));
    assert_eq!(shows_exporter_bytes(&p.b.windows), None);
    assert_eq!(hub.aperture_stats().windows_revoked, 0);
    hub.check_invariants().unwrap();
}

#[test]
fn a_map_whose_filler_cannot_be_restored_revokes_the_window() {
    let faults = Arc::new(ApertureFaults::default());
    let (hub, _clock) = hub_with(MmapAperture::new().with_faults(faults.clone()), 60_000);
    let (ma, mb) = (guest_ram(), guest_ram());
    let mut p = pair(&hub, &ma, &mb, false, 2);
    // The map of page 4 fails, and so does the filler that should replace it.
    faults.fail_next(2);
    let f = fault(&mut p.b, &mut p.a, &p.model, p.att, 4, 1, true);
    assert_eq!(f.status, wire::VIRTIO_XPMEM_S_FAULT);
    assert_eq!(shows_exporter_bytes(&p.b.windows), None);
    assert!(revoked_host(&p.b.take_events(), p.att));
    let st = hub.aperture_stats();
    assert_eq!((st.map_failures, st.windows_revoked), (1, 1));
    assert_eq!(p.b.fault_status_now(p.att, 0), wire::VIRTIO_XPMEM_S_REVOKED);
    hub.check_invariants().unwrap();
}

#[test]
fn a_resetting_importer_whose_windows_cannot_be_revoked_is_cut_off_first() {
    let faults = Arc::new(ApertureFaults::default());
    let (hub, _clock) = hub_with(MmapAperture::new().with_faults(faults.clone()), 60_000);
    let (ma, mb) = (guest_ram(), guest_ram());
    let Pair {
        mut a,
        mut b,
        segid,
        ..
    } = pair(&hub, &ma, &mb, false, 8);
    let cut: Arc<Mutex<Vec<xpmem_domain::Window>>> = Arc::default();
    {
        let cut = cut.clone();
        hub.set_cut_off(
            b.vm,
            Box::new(move |w| {
                cut.lock().unwrap().push(w);
                Ok(())
            }),
        );
    }
    let answered_after: Arc<Mutex<Option<usize>>> = Arc::default();
    {
        let (cut, answered_after) = (cut.clone(), answered_after.clone());
        hub.set_completion_probe(Box::new(move |vm, opcode, _| {
            if vm == VmId(1) && opcode == wire::VIRTIO_XPMEM_REQ_INVALIDATE {
                *answered_after.lock().unwrap() = Some(cut.lock().unwrap().len());
            }
        }));
    }
    let head = invalidate(&mut a, segid, 0, 4);
    faults.fail_next(i64::MAX);
    b.dev.reset();
    faults.heal();
    assert_eq!(a.completion(head).map(|c| c.status), Some(0));
    assert_eq!(
        *cut.lock().unwrap(),
        vec![xpmem_domain::Window::Rw, xpmem_domain::Window::Ro]
    );
    assert_eq!(
        *answered_after.lock().unwrap(),
        Some(2),
        "the exporter was answered before both windows were cut off"
    );
    assert_eq!(hub.aperture_stats().cut_offs, 2);
    hub.check_invariants().unwrap();
}
