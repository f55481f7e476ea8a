//! virtio block device (virtio 1.2 section 5.2, device ID 2) on raw image files.
//!
//! One virtqueue (`requestq`) of [`QUEUE_SIZE`] entries. Requests are read,
//! written, flushed and discarded synchronously, on the thread that calls
//! [`VirtioDevice::queue_notify`](virtio_mmio_transport::VirtioDevice::queue_notify)
//! (the VM's event thread, or a vCPU writing QueueNotify): every chain is
//! completed before the call returns, so a reset never has requests in flight.
//!
//! Features offered: `VIRTIO_F_VERSION_1`, `VIRTIO_F_RING_EVENT_IDX`,
//! `SIZE_MAX` ([`SIZE_MAX`]), `SEG_MAX` ([`SEG_MAX`]), `BLK_SIZE` (512),
//! `FLUSH` (an `fdatasync` of the image; FLUSH completes only after it
//! succeeded, and without FLUSH negotiated every write is synced before it
//! completes), `RO` for read-only disks, and for writable disks `DISCARD`
//! (hole punching) and `WRITE_ZEROES` (zero-range or hole punching). GET_ID
//! answers the disk's serial (20 bytes, NUL padded).
//!
//! # Images
//!
//! [`image::DiskImage::open`] checks, opens and locks a raw image file
//! (`flock`: exclusive for writable images, shared for read-only ones), so
//! two VMs or two monitors cannot write one image at once.
//!
//! # Guest input
//!
//! The driver is untrusted ([`request`]): a chain is walked at most once and
//! bounded to `SEG_MAX + 2` descriptors; the direction order, the header, every
//! buffer (inside guest RAM), the number and size of the data segments, the
//! data length (whole sectors), the sector range (no overflow, not beyond the
//! end) and the read-only flag are checked before any I/O. Bad requests get
//! `VIRTIO_BLK_S_IOERR` (`UNSUPP` for unknown types and flags); a chain with no
//! writable status byte is returned with length 0. Data moves segment by
//! segment between guest memory and the file (`pread`/`pwrite` straight into
//! guest RAM), so a request costs no host memory proportional to its size.

// Values from guests (lengths, counts, addresses, page numbers, ids) are converted with
// checks that answer an error status; a cast that cannot lose anything by construction
// carries an `allow` saying why. Tests and the fuzz harness may cast freely.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod device;
// The fuzz entry point and its fake guest driver: only with the `fuzzing` feature
// (the `cargo fuzz` target and the `fuzz_smoke` test turn it on), never in a
// normal build's API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod image;
pub mod request;

pub use device::{
    check_serial, Block, BlockError, BlockStats, BLK_SIZE, CONFIG_LEN, DISCARD_SECTOR_ALIGNMENT,
    LIMITS, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, QUEUE_SIZE, SEG_MAX, SIZE_MAX,
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_ID_BLOCK,
};
pub use image::{check_image, DiskBackend, DiskImage, ImageError, ImageInfo, SECTOR_SIZE};

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
#[allow(clippy::cast_possible_truncation)]
// test code: casts of test sizes, sectors and pattern bytes
mod tests;
