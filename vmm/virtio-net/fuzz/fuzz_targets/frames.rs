//! Arbitrary bytes -> guest and switch actions (raw and structured transmit
//! and receive chains, frames of any length from the switch, notifies,
//! resets) against one virtio-net device on a socketpair. See
//! `virtio_net_device::fuzzing::run_one`, behind the
//! crate's `fuzzing` feature (turned on in this project's Cargo.toml).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    virtio_net_device::fuzzing::run_one(data);
});
