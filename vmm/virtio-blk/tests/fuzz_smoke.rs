//! Runs the fuzz entry point (the same one `cargo fuzz run requests` uses)
//! over a deterministic pseudo-random corpus, so it is exercised without
//! libFuzzer. Iterations: `FUZZ_SMOKE_ITERS` (default 400), seed `FUZZ_SMOKE_SEED`. With
//! `FUZZ_WRITE_SEEDS=<dir>` the inputs are also written there as a seed
//! corpus for `cargo fuzz`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::time::Instant;

use virtio_blk_device::fuzzing::{run_one, FuzzStats, STEP_BYTES};

use virtio_driver_model::XorShift as Rng;

/// Mostly structured requests (operations 3 and 4), some defects, flushes with
/// injected failures and resets in between.
fn guided(rng: &mut Rng, steps: usize) -> Vec<u8> {
    let mut data = vec![rng.next_u64() as u8];
    for _ in 0..steps {
        let mut rec: Vec<u8> = rng.bytes(STEP_BYTES);
        rec[0] = match rng.next_u64() % 16 {
            0 => 6, // inject / heal failures
            1 => 7, // reset with other features
            2 => 5, // notify
            _ => 3, // structured request
        };
        data.extend_from_slice(&rec);
    }
    data
}

fn add(total: &mut FuzzStats, s: FuzzStats) {
    total.requests += s.requests;
    total.ok += s.ok;
    total.ioerr += s.ioerr;
    total.unsupp += s.unsupp;
    total.no_status += s.no_status;
    total.structured += s.structured;
    total.bytes_written += s.bytes_written;
    total.bytes_read += s.bytes_read;
    total.flushes += s.flushes;
    total.discards += s.discards;
    total.write_zeroes += s.write_zeroes;
}

#[test]
fn fuzz_entry_point_over_pseudo_random_inputs() {
    let iters = virtio_driver_model::smoke_iters();
    let seeds_dir = std::env::var("FUZZ_WRITE_SEEDS").ok();
    let mut rng = virtio_driver_model::smoke_rng();
    let start = Instant::now();
    let mut total = FuzzStats::default();
    let mut bytes = 0usize;
    for i in 0..iters {
        let steps = (rng.next_u64() % 64) as usize;
        let data = if i % 2 == 0 {
            rng.bytes(1 + steps * STEP_BYTES)
        } else {
            guided(&mut rng, steps)
        };
        if let Some(dir) = &seeds_dir {
            std::fs::write(format!("{dir}/seed-{i:04}"), &data).unwrap();
        }
        bytes += data.len();
        add(&mut total, run_one(&data));
    }
    eprintln!(
        "fuzz_smoke: {iters} inputs, {bytes} bytes, {:.2?}; {total:?}",
        start.elapsed()
    );
    // The corpus must get past parsing into every request type and error path.
    assert!(total.ok > 0 && total.ioerr > 0 && total.unsupp > 0 && total.no_status > 0);
    assert!(total.bytes_written > 0 && total.bytes_read > 0);
    assert!(total.flushes > 0 && total.discards > 0 && total.write_zeroes > 0);
}
