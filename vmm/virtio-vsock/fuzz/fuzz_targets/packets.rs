//! Arbitrary bytes -> guest actions (raw and structured transmit packets to
//! the host, a peer guest, itself and unknown CIDs; receive buffers of any
//! size; a peer that answers or stays silent; resets) against two
//! virtio-vsock devices on one router. See
//! `virtio_vsock_device::fuzzing::run_one`, behind the
//! crate's `fuzzing` feature (turned on in this project's Cargo.toml).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    virtio_vsock_device::fuzzing::run_one(data);
});
