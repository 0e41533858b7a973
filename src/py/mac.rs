//! `_Mac`: HMAC-SHA256 under one key, for the envelope of `moka_py.redis`
//! (`python/moka_py/redis/_envelope.py` owns the format; this only computes
//! and checks the MAC).
//!
//! Python's `hmac` goes through OpenSSL 3, whose per-call set-up costs about
//! 1.5 µs for a 100-byte message here; a remote hit of a signed value pays for
//! one MAC. This keeps the key's inner and outer SHA-256 states, absorbed
//! once, and clones them per message (SHA-NI where the CPU has it), and it
//! compares MACs in constant time.
//!
//! The key is secret: it is never shown (no `__repr__` with it, no pickling),
//! and only its absorbed states are kept. A long message is hashed detached
//! from the interpreter, over bytes objects the caller holds (immutable).

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use sha2::{Digest, Sha256};

use crate::store::call::detach;

const BLOCK: usize = 64;
/// Messages at least this long are hashed detached.
const DETACH_AT: usize = 64 * 1024;

/// HMAC-SHA256 (RFC 2104) with the key's pads absorbed once.
#[derive(Clone)]
pub(crate) struct Hmac {
    inner: Sha256,
    outer: Sha256,
}

impl Hmac {
    pub(crate) fn new(key: &[u8]) -> Self {
        let mut block = [0u8; BLOCK];
        if key.len() > BLOCK {
            block[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        let mut ipad = [0x36u8; BLOCK];
        let mut opad = [0x5cu8; BLOCK];
        for i in 0..BLOCK {
            ipad[i] ^= block[i];
            opad[i] ^= block[i];
        }
        let mut inner = Sha256::new();
        inner.update(ipad);
        let mut outer = Sha256::new();
        outer.update(opad);
        Self { inner, outer }
    }

    /// The MAC of the concatenation of `parts`.
    pub(crate) fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut inner = self.inner.clone();
        for part in parts {
            inner.update(part);
        }
        let mut outer = self.outer.clone();
        outer.update(inner.finalize());
        outer.finalize().into()
    }
}

/// Whether `a` and `b` are equal, in a time that depends on their lengths only.
pub(crate) fn equal(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[pyclass(frozen, module = "moka_py._moka_py", name = "_Mac")]
pub(crate) struct Mac {
    hmac: Hmac,
}

impl Mac {
    fn compute(&self, py: Python<'_>, parts: &Bound<'_, PyTuple>) -> PyResult<[u8; 32]> {
        let bytes: Vec<Bound<'_, PyBytes>> = parts
            .iter()
            .map(|p| {
                p.cast_into::<PyBytes>()
                    .map_err(|e| PyTypeError::new_err(format!("_Mac takes bytes, not {e}")))
            })
            .collect::<PyResult<_>>()?;
        let slices: Vec<&[u8]> = bytes.iter().map(|b| b.as_bytes()).collect();
        let total: usize = slices.iter().map(|s| s.len()).sum();
        if total >= DETACH_AT {
            let hmac = &self.hmac;
            // The bytes objects are immutable and held by `bytes` until after.
            Ok(detach(py, || hmac.mac(&slices)))
        } else {
            Ok(self.hmac.mac(&slices))
        }
    }
}

#[pymethods]
impl Mac {
    #[new]
    fn new(key: &[u8]) -> Self {
        Self {
            hmac: Hmac::new(key),
        }
    }

    /// The 32-byte HMAC-SHA256 of the concatenated `parts` (bytes).
    #[pyo3(signature = (*parts))]
    fn sign<'py>(
        &self,
        py: Python<'py>,
        parts: &Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let mac = self.compute(py, parts)?;
        Ok(PyBytes::new(py, &mac))
    }

    /// Whether `mac` is the MAC of the concatenated `parts`, compared in
    /// constant time.
    #[pyo3(signature = (mac, *parts))]
    fn verify(&self, py: Python<'_>, mac: &[u8], parts: &Bound<'_, PyTuple>) -> PyResult<bool> {
        Ok(equal(&self.compute(py, parts)?, mac))
    }

    fn __repr__(&self) -> &'static str {
        "<moka_py._moka_py._Mac>"
    }

    fn __reduce__(&self) -> PyResult<()> {
        Err(PyTypeError::new_err(
            "a _Mac holds a secret key and cannot be pickled",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::{equal, Hmac};

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    // RFC 4231's test cases 1, 2, 6 (a key longer than a block) and 7.
    #[test]
    fn rfc_4231() {
        let cases: [(&[u8], &[u8], &str); 4] = [
            (
                &[0x0b; 20],
                b"Hi There",
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                b"Jefe",
                b"what do ya want for nothing?",
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First",
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
            (
                &[0xaa; 131],
                b"This is a test using a larger than block-size key and a larger than \
block-size data. The key needs to be hashed before being used by the HMAC algorithm.",
                "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
            ),
        ];
        for (key, data, want) in cases {
            assert_eq!(hex(&Hmac::new(key).mac(&[data])), want);
            // Split anywhere, the same MAC.
            let (a, b) = data.split_at(data.len() / 3);
            assert_eq!(hex(&Hmac::new(key).mac(&[a, b, b""])), want);
        }
    }

    #[test]
    fn equal_is_exact() {
        assert!(equal(b"abc", b"abc"));
        assert!(!equal(b"abc", b"abd"));
        assert!(!equal(b"abc", b"ab"));
        assert!(equal(b"", b""));
    }
}
