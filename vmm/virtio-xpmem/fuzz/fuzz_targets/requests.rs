//! Arbitrary bytes -> guest actions (descriptor chains, requests, notifies,
//! clock, resets) against two virtio-xpmem devices sharing one hub. See
//! `virtio_xpmem_device::fuzzing::run_one`, behind the
//! crate's `fuzzing` feature (turned on in this project's Cargo.toml).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    virtio_xpmem_device::fuzzing::run_one(data);
});
