//! Arbitrary bytes -> guest actions (descriptor chains, structured requests
//! with defects, notifies, resets, injected sync/write failures) against one
//! virtio-blk device on a small memfd image. See
//! `virtio_blk_device::fuzzing::run_one`, behind the
//! crate's `fuzzing` feature (turned on in this project's Cargo.toml).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    virtio_blk_device::fuzzing::run_one(data);
});
