//! Runs the fuzz entry point (the same one `cargo fuzz run packets` uses)
//! over a deterministic pseudo-random corpus, so it is exercised without
//! libFuzzer. Iterations, seed, replay of one input: see
//! `virtio_driver_model::run_smoke_corpus`.
//!
//! Needs the crate's `fuzzing` feature (`required-features` in Cargo.toml);
//! the crate's dev-dependency on itself turns it on, so a plain `cargo test`
//! runs this.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use virtio_driver_model::{SmokeRun, XorShift as Rng};
use virtio_vsock_device::fuzzing::{run_one, FuzzStats, STEP_BYTES};

/// Structured steps only (no raw descriptors), so the content oracles hold.
fn guided(rng: &mut Rng, steps: usize) -> Vec<u8> {
    let mut data = Vec::new();
    for _ in 0..steps {
        let mut rec: Vec<u8> = rng.bytes(STEP_BYTES);
        rec[0] = 3 + (rng.next_u64() % 9) as u8; // ops 3..=11
        data.extend_from_slice(&rec);
    }
    data
}

#[test]
fn fuzz_entry_point_over_pseudo_random_inputs() {
    let mut t = FuzzStats::default();
    // Its own fixed corpus, unless scripts/fuzz.sh asks for a fresh seed.
    let run = virtio_driver_model::run_smoke_corpus(
        Some(0x51a7_c0de_2026_0010),
        |rng, i| {
            let steps = (rng.next_u64() % 96) as usize;
            if i % 2 == 0 {
                rng.bytes(steps * STEP_BYTES)
            } else {
                guided(rng, steps)
            }
        },
        |data| {
            let s = run_one(data);
            t.tx_structured += s.tx_structured;
            t.tx_bad += s.tx_bad;
            t.rx_packets += s.rx_packets;
            t.to_peer += s.to_peer;
            t.peer_packets += s.peer_packets;
            t.resets += s.resets;
            t.raw_steps += s.raw_steps;
        },
    );
    if run == SmokeRun::Replayed {
        return;
    }
    eprintln!("{run:?}: {t:?}");
    // The corpus must reach the interesting paths, or the smoke test proves nothing.
    assert!(t.tx_structured > 1000 && t.tx_bad > 50, "{t:?}");
    assert!(
        t.rx_packets > 200 && t.to_peer > 200 && t.peer_packets > 100,
        "{t:?}"
    );
    assert!(t.resets > 20 && t.raw_steps > 100, "{t:?}");
}
