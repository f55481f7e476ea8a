//! What the devices' fuzz targets drive them with: a hostile driver's side of
//! a split virtqueue ([`SplitRing`]: descriptors, available ring, used ring
//! in guest memory, written byte by byte so that any value can be put there),
//! a reader of fuzz input bytes ([`Input`]) and an interrupt sink
//! ([`NoIrq`]). Not for production paths: every write to guest memory here
//! ignores failure on purpose (a fuzz input may point anywhere).

use virtio_mmio_transport::{InterruptReason, VirtioInterrupt};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// An interrupt line nobody listens to.
pub struct NoIrq;

impl VirtioInterrupt for NoIrq {
    fn trigger(&self, _: InterruptReason) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads fuzz input as little-endian numbers; past the end it reads zeros.
pub struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data, pos: 0 }
    }

    pub fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for b in &mut out {
            *b = self.data.get(self.pos).copied().unwrap_or(0);
            self.pos += 1;
        }
        out
    }

    pub fn u8(&mut self) -> u8 {
        self.bytes::<1>()[0]
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.bytes())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }

    /// Mostly one of the last 8 values of `pool` (ids the device handed out),
    /// sometimes a made-up one.
    pub fn pick(&mut self, pool: &[u64]) -> u64 {
        let i = self.u8() as usize;
        if pool.is_empty() || i >= 224 {
            self.u64()
        } else {
            pool[pool.len() - 1 - (i % pool.len().min(8))]
        }
    }
}

/// The driver's side of a split virtqueue of `size` entries at `base`:
/// descriptor table at `base`, available ring at `base + 16 * size`, used
/// ring at `base + 32 * size` (each part fits its slot for sizes up to 256).
pub struct SplitRing {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    avail_idx: u16,
    used_seen: u16,
    overruns: u64,
}

impl SplitRing {
    pub fn new(base: u64, size: u16) -> Self {
        let stride = 16 * u64::from(size);
        SplitRing {
            size,
            desc: base,
            avail: base + stride,
            used: base + 2 * stride,
            avail_idx: 0,
            used_seen: 0,
            overruns: 0,
        }
    }

    /// A ready device-side queue over this ring.
    pub fn queue(&self) -> Option<Queue> {
        let mut q = Queue::new(self.size).ok()?;
        q.set_size(self.size);
        q.try_set_desc_table_address(GuestAddress(self.desc)).ok()?;
        q.try_set_avail_ring_address(GuestAddress(self.avail))
            .ok()?;
        q.try_set_used_ring_address(GuestAddress(self.used)).ok()?;
        q.set_ready(true);
        Some(q)
    }

    /// Writes descriptor `i` (modulo the size): any values, as a hostile driver may.
    pub fn set_desc(
        &self,
        mem: &GuestMemoryMmap,
        i: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        let at = self.desc + u64::from(i % self.size) * 16;
        let _ = mem.write_slice(&raw, GuestAddress(at));
    }

    /// Puts `head` (any value) in the available ring and publishes it.
    pub fn make_available(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = self.avail + 4 + u64::from(self.avail_idx % self.size) * 2;
        let _ = mem.write_obj(head.to_le(), GuestAddress(slot));
        self.avail_idx = self.avail_idx.wrapping_add(1);
        let _ = mem.write_obj(self.avail_idx.to_le(), GuestAddress(self.avail + 2));
    }

    /// How often [`SplitRing::take_used`] skipped entries: completions it never saw.
    pub fn overruns(&self) -> u64 {
        self.overruns
    }

    /// The used entries `(id, len)` since the last call, at most a ring's worth: when
    /// the device used more than that since (a hostile available index reuses heads),
    /// the older entries were overwritten and are skipped.
    pub fn take_used(&mut self, mem: &GuestMemoryMmap) -> Vec<(u16, u32)> {
        let idx: u16 = mem
            .read_obj(GuestAddress(self.used + 2))
            .unwrap_or(self.used_seen);
        if idx.wrapping_sub(self.used_seen) > self.size {
            self.used_seen = idx.wrapping_sub(self.size);
            self.overruns += 1;
        }
        let mut out = Vec::new();
        while self.used_seen != idx {
            let e = self.used + 4 + u64::from(self.used_seen % self.size) * 8;
            let id: u32 = mem.read_obj(GuestAddress(e)).unwrap_or(0);
            let len: u32 = mem.read_obj(GuestAddress(e + 4)).unwrap_or(0);
            out.push((id as u16, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

/// A deterministic pseudo-random generator (xorshift64*) for the fuzz
/// targets' smoke tests: the same seed gives the same corpus everywhere.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// `n` pseudo-random bytes (a raw fuzz input).
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// The generator of a fuzz smoke test's corpus: seeded from
/// `FUZZ_SMOKE_SEED` (decimal or 0x-hex; `scripts/fuzz.sh` sets a fresh one
/// per round), otherwise one fixed seed, so CI runs the same corpus always.
pub fn smoke_rng() -> XorShift {
    let seed = std::env::var("FUZZ_SMOKE_SEED")
        .ok()
        .and_then(|v| match v.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => v.parse().ok(),
        });
    // xorshift never leaves 0.
    XorShift(seed.filter(|s| *s != 0).unwrap_or(0x9e37_79b9_7f4a_7c15))
}

/// How many inputs a fuzz smoke test runs: `FUZZ_SMOKE_ITERS`, default 400.
pub fn smoke_iters() -> u64 {
    std::env::var("FUZZ_SMOKE_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400)
}

/// What [`run_smoke_corpus`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmokeRun {
    /// The generated corpus: how many inputs and bytes.
    Corpus { inputs: u64, bytes: u64 },
    /// Only the one input named by `FUZZ_SMOKE_REPLAY` (coverage totals mean
    /// nothing then).
    Replayed,
}

/// Runs a fuzz smoke test's corpus: [`smoke_iters`] inputs, input `i` made by
/// `generate(rng, i)` from [`smoke_rng`] (or from `fixed_seed` when
/// `FUZZ_SMOKE_SEED` is unset and the test keeps its own corpus), each handed
/// to `run`.
///
/// For finding the input behind a failure:
/// - `FUZZ_WRITE_SEEDS=<dir>` writes each input to `<dir>/input-NNNNN` *before*
///   it runs, so after a hang the newest file is the one that hung (the files
///   also seed `cargo fuzz`);
/// - `FUZZ_SMOKE_REPLAY=<file>` runs only that input;
/// - a panicking input is named (index and seed) before the panic goes on.
///
/// # Panics
/// When `run` panics, or a seed file cannot be written or read.
pub fn run_smoke_corpus(
    fixed_seed: Option<u64>,
    mut generate: impl FnMut(&mut XorShift, u64) -> Vec<u8>,
    mut run: impl FnMut(&[u8]),
) -> SmokeRun {
    if let Some(path) = std::env::var_os("FUZZ_SMOKE_REPLAY") {
        let data = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("FUZZ_SMOKE_REPLAY={}: {e}", path.to_string_lossy()));
        run(&data);
        return SmokeRun::Replayed;
    }
    let seeded = std::env::var_os("FUZZ_SMOKE_SEED").is_some();
    let mut rng = match fixed_seed {
        Some(seed) if !seeded => XorShift(seed),
        _ => smoke_rng(),
    };
    let seed = rng.0;
    let seeds_dir = std::env::var_os("FUZZ_WRITE_SEEDS").map(std::path::PathBuf::from);
    let iters = smoke_iters();
    let mut bytes = 0u64;
    for i in 0..iters {
        let data = generate(&mut rng, i);
        if let Some(dir) = &seeds_dir {
            let file = dir.join(format!("input-{i:05}"));
            std::fs::write(&file, &data)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", file.display()));
        }
        bytes += data.len() as u64;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&data)));
        if let Err(panic) = outcome {
            eprintln!(
                "fuzz smoke: input {i} of seed {seed:#x} failed; to get it alone: \
                 FUZZ_SMOKE_SEED={seed:#x} FUZZ_SMOKE_ITERS={} FUZZ_WRITE_SEEDS=<dir>, \
                 then FUZZ_SMOKE_REPLAY=<dir>/input-{i:05}",
                i + 1
            );
            std::panic::resume_unwind(panic);
        }
    }
    SmokeRun::Corpus {
        inputs: iters,
        bytes,
    }
}
