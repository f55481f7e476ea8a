//! Unguessable, decodable object ids.
//!
//! Segment ids, permit ids and attachment ids are a keyed permutation (a 4-round Feistel
//! network over 46 bits) of `(vm << COUNTER_BITS) | counter`, plus one. The result is a
//! positive id in `1..=2^46`: at most 12 hex digits, like native XPMEM's
//! `(uniq << 32) | tgid` (programs keep ids in small text buffers). The domain can decode
//! the VM, and a guest cannot predict ids of another domain (or of another kind) without
//! the key.
//!
//! The trade-off: 46 bits instead of 62 make a blind guess likelier, one in `2^46 / live
//! ids` (about 7 * 10^7 with a million live ids), and a guessed id still has to belong to
//! the guessing VM and owner to be of use (permits and attachments) or pass the segment's
//! access checks (segments). Each VM can be issued 2^36 ids of each kind in a setup's life
//! (then NOSPC); at most 1024 VMs.

use crate::types::VmId;

/// Bits of the per-VM counter inside an id.
const COUNTER_BITS: u32 = 36;
/// Number of ids of one kind a VM can be issued.
pub(crate) const MAX_COUNTER: u64 = 1 << COUNTER_BITS;
/// Bits of the VM number inside an id.
pub(crate) const VM_BITS: u32 = 10;
const HALF_BITS: u32 = (COUNTER_BITS + VM_BITS) / 2;
const HALF_MASK: u64 = (1 << HALF_BITS) - 1;
const ROUNDS: usize = 4;

/// The kind of object an id names; each kind uses its own key schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IdKind {
    Segment = 1,
    Permit = 2,
    Attachment = 3,
}

/// Id generator and decoder for one domain.
#[derive(Clone, Debug)]
pub(crate) struct IdCipher {
    keys: [[u64; ROUNDS]; 3],
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl IdCipher {
    pub(crate) fn new(seed: u64) -> Self {
        let mut state = seed;
        let mut keys = [[0u64; ROUNDS]; 3];
        for kind in keys.iter_mut() {
            for k in kind.iter_mut() {
                state = splitmix64(state);
                *k = state;
            }
        }
        IdCipher { keys }
    }

    fn round(key: u64, half: u64) -> u64 {
        splitmix64(half ^ key) & HALF_MASK
    }

    /// Encodes `(vm, counter)`; `counter` must be below `1 << COUNTER_BITS` and `vm` below
    /// `1 << VM_BITS`.
    #[allow(clippy::cast_possible_wrap)] // cipher < 2^46: cipher + 1 cannot wrap an i64
    pub(crate) fn encode(&self, kind: IdKind, vm: VmId, counter: u64) -> i64 {
        debug_assert!(counter < (1 << COUNTER_BITS));
        debug_assert!(u64::from(vm.0) < (1 << VM_BITS));
        let plain = (u64::from(vm.0) << COUNTER_BITS) | counter;
        let keys = &self.keys[kind as usize - 1];
        let (mut l, mut r) = (plain >> HALF_BITS, plain & HALF_MASK);
        for key in keys {
            let next = l ^ Self::round(*key, r);
            l = r;
            r = next;
        }
        let cipher = (l << HALF_BITS) | r;
        // cipher < 2^46, so cipher + 1 is in [1, 2^46] and fits a positive i64.
        (cipher + 1) as i64
    }

    /// Decodes an id into `(vm, counter)`; `None` if it cannot be an id of this kind.
    pub(crate) fn decode(&self, kind: IdKind, id: i64) -> Option<(VmId, u64)> {
        if id <= 0 || id > (1i64 << (2 * HALF_BITS)) {
            return None;
        }
        let cipher = u64::try_from(id - 1).ok()?;
        let keys = &self.keys[kind as usize - 1];
        let (mut l, mut r) = (cipher >> HALF_BITS, cipher & HALF_MASK);
        for key in keys.iter().rev() {
            let prev = r ^ Self::round(*key, l);
            r = l;
            l = prev;
        }
        let plain = (l << HALF_BITS) | r;
        let vm = u32::try_from(plain >> COUNTER_BITS).ok()?;
        Some((VmId(vm), plain & ((1 << COUNTER_BITS) - 1)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_positive() {
        let c = IdCipher::new(42);
        for vm in [0u32, 1, 7, (1 << VM_BITS) - 1] {
            for ctr in [0u64, 1, 2, 1000, (1 << COUNTER_BITS) - 1] {
                for kind in [IdKind::Segment, IdKind::Permit, IdKind::Attachment] {
                    let id = c.encode(kind, VmId(vm), ctr);
                    assert!(id > 0);
                    assert_eq!(c.decode(kind, id), Some((VmId(vm), ctr)));
                }
            }
        }
    }

    #[test]
    fn different_seeds_and_kinds_give_different_ids() {
        let a = IdCipher::new(1);
        let b = IdCipher::new(2);
        let ida = a.encode(IdKind::Segment, VmId(1), 1);
        assert_ne!(ida, b.encode(IdKind::Segment, VmId(1), 1));
        assert_ne!(ida, a.encode(IdKind::Permit, VmId(1), 1));
        // Consecutive counters do not give consecutive ids.
        assert_ne!(a.encode(IdKind::Segment, VmId(1), 2), ida + 1);
    }

    #[test]
    fn ids_have_at_most_twelve_hex_digits() {
        let c = IdCipher::new(9);
        for vm in [1u32, (1 << VM_BITS) - 1] {
            for ctr in [0u64, 12345, (1 << COUNTER_BITS) - 1] {
                let id = c.encode(IdKind::Segment, VmId(vm), ctr);
                assert!((1..=1i64 << 46).contains(&id), "{id:#x}");
                assert!(format!("{id:x}").len() <= 12);
            }
        }
    }

    #[test]
    fn decode_rejects_out_of_range() {
        let c = IdCipher::new(3);
        assert_eq!(c.decode(IdKind::Segment, 0), None);
        assert_eq!(c.decode(IdKind::Segment, -5), None);
        assert_eq!(c.decode(IdKind::Segment, i64::MAX), None);
    }
}
