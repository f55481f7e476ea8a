//! Runs the fuzz entry point (the same one `cargo fuzz run requests` uses)
//! over a deterministic pseudo-random corpus, so it is exercised without
//! libFuzzer. Iterations: `FUZZ_SMOKE_ITERS` (default 400). With
//! `FUZZ_WRITE_SEEDS=<dir>` the guided inputs are also written there as a
//! seed corpus for `cargo fuzz`.

use std::time::Instant;

use virtio_xpmem_device::fuzzing::{run_one, STEP_BYTES};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

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
    let mut data: Vec<u8> = (0..steps * STEP_BYTES).map(|_| rng.next() as u8).collect();
    let mut phase = 0usize;
    for rec in data.chunks_mut(STEP_BYTES) {
        match rng.next() % 8 {
            0 => continue, // a random step
            1 => phase = (rng.next() % FLOW.len() as u64) as usize,
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

#[test]
fn fuzz_entry_point_over_pseudo_random_inputs() {
    let iters: u64 = std::env::var("FUZZ_SMOKE_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let seeds_dir = std::env::var("FUZZ_WRITE_SEEDS").ok();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let start = Instant::now();
    let mut bytes_total = 0usize;
    let (mut segments, mut maps, mut invals, mut events) = (0u64, 0u64, 0u64, 0u64);
    for i in 0..iters {
        let steps = (rng.next() % 48) as usize;
        let data = if i % 2 == 0 {
            (0..steps * STEP_BYTES).map(|_| rng.next() as u8).collect()
        } else {
            guided(&mut rng, steps)
        };
        if let (Some(dir), 1) = (&seeds_dir, i % 2) {
            std::fs::write(format!("{dir}/guided-{i:04}"), &data).unwrap();
        }
        bytes_total += data.len();
        let c = run_one(&data);
        segments += c.segments;
        maps += c.map_actions;
        invals += c.invalidations_started;
        events += c.events_posted;
    }
    eprintln!(
        "fuzz_smoke: {iters} inputs, {bytes_total} bytes, {:.2?}; reached: {segments} live segments, {maps} maps, {invals} invalidations, {events} events",
        start.elapsed()
    );
    // The harness must get past request parsing deep into the domain.
    assert!(
        segments > 0 && events > 0 && maps > 0,
        "the corpus never reaches the domain"
    );
}
