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

use virtio_blk_device::fuzzing::{run_one, FuzzStats, STEP_BYTES};

use virtio_driver_model::{SmokeRun, XorShift as Rng};

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
    let start = Instant::now();
    let mut total = FuzzStats::default();
    let run = virtio_driver_model::run_smoke_corpus(
        None,
        |rng, i| {
            let steps = (rng.next_u64() % 64) as usize;
            if i % 2 == 0 {
                rng.bytes(1 + steps * STEP_BYTES)
            } else {
                guided(rng, steps)
            }
        },
        |data| add(&mut total, run_one(data)),
    );
    eprintln!("fuzz_smoke: {run:?}, {:.2?}; {total:?}", start.elapsed());
    if run == SmokeRun::Replayed {
        return;
    }
    // The corpus must get past parsing into every request type and error path.
    assert!(total.ok > 0 && total.ioerr > 0 && total.unsupp > 0 && total.no_status > 0);
    assert!(total.bytes_written > 0 && total.bytes_read > 0);
    assert!(total.flushes > 0 && total.discards > 0 && total.write_zeroes > 0);
}
