//! Hashes: CPython's hash of an int, computed in Rust, and the hasher moka
//! and the in-flight map use over Python's hashes.

use std::hash::{BuildHasher, Hasher};

/// CPython's hash of the int `v` (`Objects/longobject.c`, `long_hash`, with
/// the modulus of `Python/pyhash.h`): `v` reduced modulo the Mersenne prime
/// `2**61 - 1` (`2**31 - 1` where `Py_hash_t` is 32 bits), keeping its sign,
/// and -1 (an error in the C API) taken as -2. Checked against `hash()` in
/// `tests/test_python_keys.py` (against `Decimal` and `Fraction` keys).
#[inline]
#[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
pub(crate) fn int_hash(v: i64) -> isize {
    const BITS: u32 = if isize::BITS == 64 { 61 } else { 31 };
    const MODULUS: u64 = (1 << BITS) - 1;
    let magnitude = v.unsigned_abs();
    let reduced = if magnitude < MODULUS {
        magnitude
    } else {
        magnitude % MODULUS
    } as i64;
    let hash = if v < 0 { -reduced } else { reduced };
    (if hash == -1 { -2 } else { hash }) as isize
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_hash_is_cpythons() {
        // `hash()` of each on 64-bit CPython 3.10 to 3.13.
        let cases: [(i64, isize); 9] = [
            (0, 0),
            (1, 1),
            (-1, -2),
            (-2, -2),
            ((1 << 61) - 1, 0),
            (1 << 61, 1),
            (-(1 << 61), -2),
            (i64::MAX, 3),
            (i64::MIN, -4),
        ];
        for (v, expected) in cases {
            assert_eq!(int_hash(v), expected, "hash({v})");
        }
    }

    #[test]
    fn hasher_spreads_small_hashes_over_the_high_bits() {
        let of = |h: isize| {
            let mut hasher = PyHashBuilder.build_hasher();
            hasher.write_isize(h);
            hasher.finish()
        };
        let tops: std::collections::HashSet<u64> = (0..64).map(|h| of(h) >> 58).collect();
        // 64 consecutive ints land in most of the 64 top-6-bit buckets.
        assert!(tops.len() > 32, "{} distinct", tops.len());
        assert_eq!(of(7), of(7));
    }
}
