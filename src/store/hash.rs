//! The hasher moka and the in-flight map use over Python's hashes.

use std::hash::{BuildHasher, Hasher};

/// Spreads Python's hash (which is the identity for small ints) over all 64
/// bits; moka and dashmap pick segments and buckets from different bits.
#[derive(Clone, Copy, Default)]
pub(crate) struct PyHashBuilder;

impl BuildHasher for PyHashBuilder {
    type Hasher = PyHasher;
    fn build_hasher(&self) -> PyHasher {
        PyHasher(0)
    }
}

pub(crate) struct PyHasher(u64);

impl Hasher for PyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    #[allow(clippy::cast_sign_loss)]
    fn write_isize(&mut self, i: isize) {
        self.write_u64(i as u64);
    }

    fn write_u64(&mut self, i: u64) {
        // A multiplicative mix with a final fold (as in splitmix64).
        let mut x = (self.0 ^ i).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^= x >> 31;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        self.0 = x ^ (x >> 29);
    }
}
