//! Runs the fuzz entry point (the same one `cargo fuzz run requests` uses)
//! over a deterministic pseudo-random corpus, so it is exercised without
//! libFuzzer. Iterations, seed, replay of one input: see
//! `virtio_driver_model::run_smoke_corpus`.
//!
//! Needs the crate's `fuzzing` feature (`required-features` in Cargo.toml);
//! the crate's dev-dependency on itself turns it on, so a plain `cargo test`
//! runs this.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::time::Instant;

use virtio_xpmem_device::fuzzing::{run_one, STEP_BYTES};

use virtio_driver_model::{SmokeRun, XorShift as Rng};

/// Step records following a MAKE / GET / ATTACH / FAULT / RESOLVE_REPLY /
/// INVALIDATE / ACK flow between VM 0 (exporter) and VM 1 (importer), with
/// random deviations. See `STEP_BYTES` for the record layout.
fn guided(rng: &mut Rng, steps: usize) -> Vec<u8> {
    // (opcode selector, VM, overrides of bytes 3..)
    const FLOW: [(u8, u8, &[u8]); 9] = [
        (0, 0, &[]),           // MAKE (mode byte even: 0o666)
        (2, 1, &[0, 1]),       // GET last id, read-write
        (4, 1, &[0, 0, 0, 0]), // ATTACH last id, offset 0, 1 page, rw
        (6, 1, &[0, 0, 0, 1]), // FAULT last id, page 0, 1 page, write
        (7, 0, &[1, 0, 1, 0]), // RESOLVE_REPLY 1 page, last id, USER_GPA
        (8, 0, &[0]),          // INVALIDATE
        (9, 1, &[0]),          // INVALIDATE_ACK last id
        (5, 1, &[0]),          // DETACH
        (1, 0, &[0]),          // REMOVE
    ];
    let mut data = rng.bytes(steps * STEP_BYTES);
    let mut phase = 0usize;
    for rec in data.chunks_mut(STEP_BYTES) {
        match rng.next_u64() % 8 {
            0 => continue, // a random step
            1 => phase = (rng.next_u64() % FLOW.len() as u64) as usize,
            _ => {}
        }
        let (sel, vm, bytes) = FLOW[phase % FLOW.len()];
        rec[0] = (vm << 7) | 3;
        rec[2] = sel;
        rec[3..3 + bytes.len()].copy_from_slice(bytes);
        // Owner byte varies less than the rest: mostly owner 1.
        phase += 1;
    }
    data
}

/// Step records that make the importer (VM 1) scatter its window: each block exports 16
/// pages, attaches 7, faults them with one RESOLVE answered by 7 scattered pages (7 host
/// mappings) or 7 contiguous ones, then invalidates single pages in the middle of runs. A few blocks exhaust
/// the harness's mapping budget, so refused maps and window revocations are reached.
fn scatter(rng: &mut Rng, blocks: usize) -> Vec<u8> {
    const SEG_VADDR: [u8; 4] = [0, 0, 0, 0x10]; // 0x1000_0000
    let mut recs: Vec<[u8; STEP_BYTES]> = Vec::new();
    let rec = |recs: &mut Vec<[u8; STEP_BYTES]>, vm: u8, sel: u8, bytes: &[u8], rng: &mut Rng| {
        let mut r = [0u8; STEP_BYTES];
        for b in r.iter_mut() {
            *b = rng.next_u64() as u8;
        }
        r[0] = (vm << 7) | 3;
        r[2] = sel;
        r[3..3 + bytes.len()].copy_from_slice(bytes);
        recs.push(r);
    };
    // Every record spells out all the fields its request reads, then the owner byte (0:
    // owner 1), so the requests of one VM share an owner.
    for _ in 0..blocks {
        let mut make = SEG_VADDR.to_vec();
        make.extend_from_slice(&[15, 0, 0, 0, 0, 0]); // 16 pages, mode 0o666, uid/gid 0
        rec(&mut recs, 0, 0, &make, rng);
        rec(&mut recs, 1, 2, &[0, 1, 0, 0, 0], rng); // GET the segment, read-write
        rec(&mut recs, 1, 4, &[0, 0, 15, 0, 0], rng); // ATTACH 7 pages at offset 0, rw
        rec(&mut recs, 1, 6, &[0, 0, 6, 1, 0], rng); // FAULT page 0, 7 pages, write
                                                     // USER_GPA + pages below the end of the 1 MiB RAM: scattered (7 host mappings) or
                                                     // contiguous (one run, which invalidations then split).
        let contiguous = rng.next_u64().is_multiple_of(2);
        let base = (rng.next_u64() % 184) as u8;
        let mut reply = vec![7, 0];
        for i in 0..7u8 {
            let page = if contiguous {
                base + i
            } else {
                (rng.next_u64() % 192) as u8
            };
            reply.extend_from_slice(&[1, page]);
        }
        reply.push(0);
        rec(&mut recs, 0, 7, &reply, rng);
        // Ids so far: ..., segid, apid, attach_id, resolve_id; each acknowledged
        // INVALIDATE adds its id and the attach_id.
        for k in 0..(rng.next_u64() % 4) as u8 {
            let page = 1 + (rng.next_u64() % 5) as u8;
            let mut inv = vec![3 + 2 * k];
            inv.extend_from_slice(&[0, page << 4, 0, 0x10, 0, 0]); // 1 page at SEG_VADDR + page
            rec(&mut recs, 0, 8, &inv, rng);
            if rng.next_u64().is_multiple_of(3) {
                // The unmap behind the acknowledgement fails (1..3 mmap calls fail).
                let n: u16 = 0x8000 | ((rng.next_u64() % 3) as u16) << 8;
                let mut r = [0u8; STEP_BYTES];
                r[0] = 6;
                r[1..3].copy_from_slice(&n.to_le_bytes());
                recs.push(r);
            }
            rec(&mut recs, 1, 9, &[1, 0], rng); // INVALIDATE_ACK the event's id
        }
    }
    recs.concat()
}

#[test]
fn fuzz_entry_point_over_pseudo_random_inputs() {
    let start = Instant::now();
    let (mut segments, mut maps, mut invals, mut events) = (0u64, 0u64, 0u64, 0u64);
    let mut windows_revoked = 0;
    let run = virtio_driver_model::run_smoke_corpus(
        None,
        |rng, i| {
            let steps = (rng.next_u64() % 48) as usize;
            match i % 3 {
                0 => rng.bytes(steps * STEP_BYTES),
                1 => guided(rng, steps),
                _ => {
                    let blocks = 4 + (rng.next_u64() % 6) as usize;
                    scatter(rng, blocks)
                }
            }
        },
        |data| {
            let c = run_one(data);
            segments += c.segments;
            maps += c.map_actions;
            invals += c.invalidations_started;
            events += c.events_posted;
            windows_revoked += c.windows_revoked;
        },
    );
    if run == SmokeRun::Replayed {
        return;
    }
    eprintln!(
        "fuzz_smoke: {run:?}, {:.2?}; reached: {segments} live segments, {maps} maps, {invals} invalidations, {events} events, {windows_revoked} windows revoked",
        start.elapsed()
    );
    // The harness must get past request parsing deep into the domain, and into the
    // aperture's failure paths.
    assert!(
        segments > 0 && events > 0 && maps > 0,
        "the corpus never reaches the domain"
    );
    assert!(windows_revoked > 0, "the corpus never revokes a window");
}
