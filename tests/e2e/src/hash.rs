//! Content hashing for build caches (FNV-1a, 128-bit). Not cryptographic: it
//! only decides whether cached outputs are stale.

/// Incremental FNV-1a 128-bit hasher.
#[derive(Debug, Clone)]
pub struct ContentHash(u128);

const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
const PRIME: u128 = 0x0000000001000000000000000000013B;

impl Default for ContentHash {
    fn default() -> Self {
        Self(OFFSET)
    }
}

impl ContentHash {
    /// A fresh hasher.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes, prefixed with their length so that field boundaries count.
    pub fn update(&mut self, bytes: &[u8]) -> &mut Self {
        for b in (bytes.len() as u64).to_le_bytes().iter().chain(bytes) {
            self.0 ^= u128::from(*b);
            self.0 = self.0.wrapping_mul(PRIME);
        }
        self
    }

    /// The digest as 32 hex digits.
    pub fn hex(&self) -> String {
        format!("{:032x}", self.0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;

    #[test]
    fn boundaries_matter() {
        let a = ContentHash::new().update(b"ab").update(b"c").hex();
        let b = ContentHash::new().update(b"a").update(b"bc").hex();
        assert_ne!(a, b);
        let c = ContentHash::new().update(b"ab").update(b"c").hex();
        assert_eq!(a, c);
    }
}
