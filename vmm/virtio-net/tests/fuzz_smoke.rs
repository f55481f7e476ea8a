//! Runs the fuzz entry point (the same one `cargo fuzz run frames` uses)
//! over a deterministic pseudo-random corpus, so it is exercised without
//! libFuzzer. Iterations, seed, replay of one input: see
//! `virtio_driver_model::run_smoke_corpus`.
//!
//! Needs the crate's `fuzzing` feature (`required-features` in Cargo.toml);
//! the crate's dev-dependency on itself turns it on, so a plain `cargo test`
//! runs this.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use virtio_driver_model::{SmokeRun, XorShift as Rng};
use virtio_net_device::fuzzing::{run_one, FuzzStats, STEP_BYTES};

/// Mostly structured steps (no raw descriptors), so the content oracles
/// hold for the whole input.
fn guided(rng: &mut Rng, steps: usize) -> Vec<u8> {
    let mut data = vec![rng.next_u64() as u8];
    for _ in 0..steps {
        let mut rec: Vec<u8> = rng.bytes(STEP_BYTES);
        rec[0] = 4 + (rng.next_u64() % 8) as u8; // ops 4..=11
        data.extend_from_slice(&rec);
    }
    data
}

fn add(t: &mut FuzzStats, s: FuzzStats) {
    t.tx_structured += s.tx_structured;
    t.tx_delivered += s.tx_delivered;
    t.tx_bad_chains += s.tx_bad_chains;
    t.rx_sent += s.rx_sent;
    t.rx_delivered += s.rx_delivered;
    t.rx_merged += s.rx_merged;
    t.rx_dropped += s.rx_dropped;
    t.tx_offload += s.tx_offload;
    t.rx_offload += s.rx_offload;
    t.tx_segmentation += s.tx_segmentation;
    t.rx_finished += s.rx_finished;
    t.resets += s.resets;
    t.raw_steps += s.raw_steps;
}

#[test]
fn fuzz_entry_point_over_pseudo_random_inputs() {
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
    if run == SmokeRun::Replayed {
        return;
    }
    eprintln!("{run:?}: {total:?}");
    // The corpus must reach the interesting paths, or the smoke test proves nothing.
    assert!(total.tx_delivered > 100, "{total:?}");
    assert!(total.tx_bad_chains > 20, "{total:?}");
    assert!(total.rx_delivered > 100, "{total:?}");
    assert!(total.rx_merged > 10, "{total:?}");
    assert!(total.rx_dropped > 0, "{total:?}");
    assert!(total.resets > 10 && total.raw_steps > 100, "{total:?}");
    // Offloads both ways: segmentation frames sent on, and finished for guests.
    assert!(total.tx_offload > 50 && total.rx_offload > 50, "{total:?}");
    assert!(
        total.tx_segmentation > 10 && total.rx_finished > 10,
        "{total:?}"
    );
}
