//! virtio entropy device (virtio 1.2 section 5.4, device ID 4).
//!
//! One virtqueue (`requestq`). Every available chain must consist of
//! device-writable descriptors only; the device fills them with bytes from
//! the host's `getrandom(2)` (at most [`MAX_REQUEST_BYTES`] per chain) and
//! returns the number of bytes written as the used length. A malformed chain
//! (a device-readable descriptor, a buffer outside guest memory, a broken
//! descriptor table) is returned with used length 0; the guest can never make
//! the device panic or touch memory outside the guest.

use std::sync::Arc;

use log::{debug, warn};
use virtio_mmio_transport::avail::{ask_for_reset, next_available};
use virtio_mmio_transport::{
    signal_used, ActivateContext, ActivateError, VirtioDevice, VirtioInterrupt,
    VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

/// Virtio device ID of the entropy device.
pub const VIRTIO_ID_RNG: u32 = 4;
/// Size of the single request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most bytes returned for one request chain; larger buffers are filled
/// partially (the driver sees the used length and asks again).
pub const MAX_REQUEST_BYTES: u32 = 64 * 1024;

const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];

/// Guest-triggered warnings logged at warn level per device; later ones go to
/// debug level, so a hostile driver cannot flood the host's log.
const MAX_GUEST_WARNINGS: u64 = 32;

macro_rules! guest_warn {
    ($self:ident, $($arg:tt)+) => {{
        $self.guest_warnings += 1;
        if $self.guest_warnings <= MAX_GUEST_WARNINGS {
            warn!($($arg)+);
        } else {
            if $self.guest_warnings == MAX_GUEST_WARNINGS + 1 {
                warn!("virtio-rng: too many guest-triggered warnings; further ones are logged at debug level");
            }
            debug!($($arg)+);
        }
    }};
}

/// Errors of the entropy device.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    #[error("getrandom failed: {0}; the host's entropy source is unavailable")]
    GetRandom(#[source] std::io::Error),
    #[error("the request chain has a device-readable descriptor; an entropy request must be device-writable only")]
    ReadOnlyDescriptor,
    #[error("the request buffer at {addr:#x} (+{len:#x}) is outside guest memory: {source}")]
    BadBuffer {
        addr: u64,
        len: usize,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error("virtqueue error: {0:?}")]
    Queue(virtio_queue::Error),
}

/// Where the device takes its bytes from.
pub trait EntropySource: Send {
    /// Fills all of `buf`.
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), RngError>;
}

/// The host kernel's CSPRNG through `getrandom(2)`.
#[derive(Debug, Default)]
pub struct GetRandom;

impl EntropySource for GetRandom {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), RngError> {
        let mut done = 0;
        while done < buf.len() {
            let rest = &mut buf[done..];
            // SAFETY: `rest` is a valid, exclusively borrowed buffer of
            // `rest.len()` bytes; getrandom writes at most that many.
            let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(RngError::GetRandom(err));
            }
            // n >= 0 and n <= rest.len() per getrandom(2).
            done += n as usize;
        }
        Ok(())
    }
}

struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<dyn VirtioInterrupt>,
}

/// Counters, for tests and diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RngStats {
    /// Chains completed with data.
    pub requests: u64,
    /// Bytes handed to the guest.
    pub bytes: u64,
    /// Chains refused (used length 0).
    pub rejected: u64,
}

/// The virtio-rng device model.
pub struct Rng {
    source: Box<dyn EntropySource>,
    active: Option<Active>,
    buf: Vec<u8>,
    stats: RngStats,
    guest_warnings: u64,
}

impl Default for Rng {
    fn default() -> Self {
        Self::new()
    }
}

impl Rng {
    /// An entropy device fed by `getrandom(2)`.
    pub fn new() -> Self {
        Self::with_source(Box::new(GetRandom))
    }

    /// An entropy device fed by `source` (tests, or a rate-limited source).
    pub fn with_source(source: Box<dyn EntropySource>) -> Self {
        Self {
            source,
            active: None,
            buf: Vec::new(),
            stats: RngStats::default(),
            guest_warnings: 0,
        }
    }

    pub fn stats(&self) -> RngStats {
        self.stats
    }

    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// Processes every available chain; returns whether any was used.
    fn process_queue(&mut self) -> Result<bool, RngError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(false);
        };
        let mut used_any = false;
        active
            .queue
            .disable_notification(&active.mem)
            .map_err(RngError::Queue)?;
        loop {
            let chain = match next_available(&mut active.queue, &active.mem) {
                Ok(Some(chain)) => chain,
                Ok(None) => break,
                Err(e) => {
                    guest_warn!(self, "virtio-rng: {e}");
                    if used_any {
                        let _ = signal_used(&mut active.queue, &active.mem, &*active.interrupt);
                    }
                    ask_for_reset(&*active.interrupt, "virtio-rng");
                    self.active = None;
                    return Ok(false);
                }
            };
            let head = chain.head_index();
            let len = match fill_chain(chain, &active.mem, self.source.as_mut(), &mut self.buf) {
                Ok(n) => {
                    self.stats.requests += 1;
                    self.stats.bytes += u64::from(n);
                    n
                }
                Err(e) => {
                    guest_warn!(self, "virtio-rng: request {head} refused: {e}");
                    self.stats.rejected += 1;
                    0
                }
            };
            active
                .queue
                .add_used(&active.mem, head, len)
                .map_err(RngError::Queue)?;
            used_any = true;
        }
        Ok(used_any)
    }
}

/// Fills the writable buffers of `chain`; returns the bytes written.
fn fill_chain(
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    source: &mut dyn EntropySource,
    buf: &mut Vec<u8>,
) -> Result<u32, RngError> {
    // Validate the whole chain before writing anything.
    let mut segments = Vec::new();
    let mut total: u32 = 0;
    for desc in chain {
        if !desc.is_write_only() {
            return Err(RngError::ReadOnlyDescriptor);
        }
        let len = desc.len().min(MAX_REQUEST_BYTES - total);
        if len > 0 {
            segments.push((desc.addr(), len as usize));
            total += len;
        }
        if total == MAX_REQUEST_BYTES {
            // The rest of the chain is left unused; it was still walked far
            // enough to be bounded by the queue size.
            break;
        }
    }
    buf.resize(total as usize, 0);
    source.fill(buf)?;
    let mut off = 0;
    for (addr, len) in segments {
        mem.write_slice(&buf[off..off + len], addr)
            .map_err(|source| RngError::BadBuffer {
                addr: addr.0,
                len,
                source,
            })?;
        off += len;
    }
    Ok(total)
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn device_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_F_RING_EVENT_IDX
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // The entropy device has no configuration space.
        data.fill(0);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        guest_warn!(self,
            "virtio-rng: {}-byte config write at {offset:#x} ignored; the device has no config space",
            data.len()
        );
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let mut queues = ctx.queues.into_iter();
        let (Some(queue), None) = (queues.next(), queues.next()) else {
            return Err(ActivateError::Device(
                "virtio-rng has exactly one queue".into(),
            ));
        };
        self.active = Some(Active {
            mem: ctx.mem,
            queue,
            interrupt: ctx.interrupt,
        });
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        if index != 0 {
            guest_warn!(
                self,
                "virtio-rng: notify for nonexistent queue {index} ignored"
            );
            return;
        }
        match self.process_queue() {
            Ok(false) => debug!("virtio-rng: notify with no available buffers"),
            Ok(true) => {
                let Some(active) = self.active.as_mut() else {
                    return;
                };
                if let Err(e) = signal_used(&mut active.queue, &active.mem, &*active.interrupt) {
                    warn!("virtio-rng: cannot raise the used-buffer interrupt: {e}");
                }
            }
            Err(e) => warn!("virtio-rng: queue processing stopped: {e}"),
        }
    }

    fn reset(&mut self) {
        self.active = None;
        self.buf = Vec::new();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests;
