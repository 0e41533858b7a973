//! `_Tier`: the local tier of `moka_py.redis.TieredCache`, the part that runs
//! on every read, and the sequence numbers that keep it coherent.
//!
//! A hit is served here, in Rust, without a Python frame: when the tier is
//! trusted (its invalidation feed is up) and the key is of a plain type (an
//! exact `str`, `int`, `float`, `bool`, `bytes`, `None`, `uuid.UUID`, or a
//! tuple of them), `get` reads the local `Moka` and returns what it finds.
//! Anything else (a miss, another key type, an untrusted tier) goes to the
//! Python slow path given at construction, which talks to Redis.
//!
//! # Why a value fetched from Redis may be refused here
//!
//! A reader fetches a value from Redis, then puts it into the local tier. A
//! write of the same key elsewhere can land between the two: its
//! invalidation arrives, finds nothing local to drop, and then the reader
//! inserts the value it fetched before that write. To rule that out, every
//! invalidation of a key bumps a sequence number (one per stripe of keys, by
//! hash), and dropping the whole tier (`clear`, a lost feed) bumps an epoch.
//! The reader takes a [`Tier::token`] before its Redis round trip, and
//! [`Tier::fill`] inserts only when neither moved since; the check and the
//! insert happen under `seqs`, which every bump also takes, so no bump can
//! fall between them.
//!
//! # Locks (see `store/call.rs`)
//!
//! `seqs` is held for a comparison and one moka insert (`fill`, `put`), or
//! for one increment. No Python code runs under it: the keys reaching `fill`
//! and `put` are plain (hashed and compared in Rust, `key.rs`), the local
//! `Moka` has no weigher and no listener of the user's, and what the insert
//! lets go of is queued by `deferred.rs` and released by `store/call.rs`
//! after the lock is dropped. Its waiters are other fills, puts and
//! invalidations; the holder waits only on moka's own locks, whose holders
//! never wait on `seqs`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyFloat, PyInt, PyString, PyTuple, PyType};
use pyo3::{PyTraverseError, PyVisit};

use crate::py::moka::Moka;
use crate::py::ready::Ready;
use crate::store::entry::Entry;

/// Stripes of the per-key sequence numbers.
const STRIPES: usize = 256;

/// The sequence numbers. A token packs, from the high bits down, the
/// epoch (32 bits), the tag sequence (32 bits) and the stripe's number (64
/// bits): tokens are only compared for equality, and 2^32 bumps never fall
/// between a token and its fill. `stale_if_error`'s check (`_TAG_BITS` in
/// `redis/_shared.py`) leaves the tag sequence out: the kept values carry
/// their tags, which are checked themselves.
struct Seqs {
    epoch: u32,
    tags: u32,
    stripes: Vec<u64>,
}

impl Seqs {
    fn token(&self, stripe: usize) -> u128 {
        (u128::from(self.epoch) << 96)
            | (u128::from(self.tags) << 64)
            | u128::from(self.stripes[stripe])
    }
}

#[pyclass(frozen, module = "moka_py._moka_py", name = "_Tier")]
pub(crate) struct Tier {
    local: Py<Moka>,
    /// `slow_get(key, default)`: the read path through Redis.
    slow_get: Py<PyAny>,
    /// `slow_aget(key, default)`: its async form (returns an awaitable).
    slow_aget: Py<PyAny>,
    uuid: Py<PyType>,
    trusted: AtomicBool,
    seqs: Mutex<Seqs>,
}

fn stripe_of(hash: isize) -> usize {
    // The low bits of CPython's hash of an int are the int itself: mix them.
    #[allow(clippy::cast_sign_loss)]
    let h = (hash as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    #[allow(clippy::cast_possible_truncation)]
    let stripe = (h >> 56) as usize;
    stripe % STRIPES
}

fn seconds(ttl: Option<f64>) -> Option<Option<Duration>> {
    match ttl {
        None => Some(None),
        Some(s) if s.is_finite() && s > 0.0 => Some(Some(Duration::from_secs_f64(s))),
        // Already expired (or not a usable deadline): nothing to keep.
        Some(_) => None,
    }
}

impl Tier {
    /// Whether `key` is of a type that the hot path may look up directly.
    fn plain(&self, key: &Bound<'_, PyAny>, depth: u8) -> bool {
        key.is_exact_instance_of::<PyString>()
            || key.is_exact_instance_of::<PyInt>()
            || key.is_exact_instance_of::<PyFloat>()
            || key.is_exact_instance_of::<PyBool>()
            || key.is_none()
            || key.is_exact_instance_of::<PyBytes>()
            || key.get_type().is(self.uuid.bind(key.py()))
            || (depth < 8
                && key.is_exact_instance_of::<PyTuple>()
                && key
                    .cast::<PyTuple>()
                    .is_ok_and(|t| t.iter().all(|item| self.plain(&item, depth + 1))))
    }

    /// The local value of `key` (a counted read) when the tier is trusted and
    /// the key plain: the hot path of `get`, `aget` and `lookup`.
    #[inline]
    fn hit(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<Option<Py<PyAny>>> {
        if !(self.trusted.load(Ordering::Acquire) && self.plain(key, 0)) {
            return Ok(None);
        }
        let local = self.local.get();
        Ok(local.read(py, local.read_key(key)?.as_ref()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seqs> {
        // A panic under the lock leaves the numbers consistent (each change is
        // one store): go on with them.
        self.seqs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The stripe of `key` and its owned form; the key must be plain (the
    /// Python layer checks it first).
    fn resolve(
        &self,
        local: &Moka,
        key: &Bound<'_, PyAny>,
    ) -> PyResult<(usize, crate::store::key::Key)> {
        let owned = local.key(key)?;
        Ok((stripe_of(owned.hash()), owned))
    }

    /// Inserts `value` when the key's token is still `token` (after bumping
    /// the key's stripe when `bump` is set, for a write of this process);
    /// otherwise removes the key when `bump` is set. `ttl` of `Some(<= 0)`
    /// inserts nothing.
    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        ttl: Option<f64>,
        token: u128,
        bump: bool,
        tags: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let local = self.local.get();
        let (stripe, owned) = self.resolve(local, key)?;
        let tags = crate::py::tags::stamp_of(local, tags)?;
        let entry: Option<Arc<Entry>> = match seconds(ttl) {
            Some(ttl) => Some(local.entry(py, key, value, ttl, None, tags)?),
            None => None,
        };
        let weight = entry.as_ref().map_or(0, |e| e.weight);
        Ok(local.write(py, weight, move |store| {
            let mut seqs = self.lock();
            let current = seqs.token(stripe) == token;
            if bump {
                seqs.stripes[stripe] = seqs.stripes[stripe].wrapping_add(1);
            }
            match entry {
                Some(entry) if current => {
                    store.insert(owned, entry);
                    true
                }
                _ => {
                    if bump {
                        // What is there is older than this write.
                        drop(local.remove_in(store, &owned));
                    }
                    false
                }
            }
        }))
    }
}

#[pymethods]
impl Tier {
    #[new]
    fn new(local: Py<Moka>, slow_get: Py<PyAny>, slow_aget: Py<PyAny>, uuid: Py<PyType>) -> Self {
        Tier {
            local,
            slow_get,
            slow_aget,
            uuid,
            trusted: AtomicBool::new(false),
            seqs: Mutex::new(Seqs {
                epoch: 0,
                tags: 0,
                stripes: vec![0; STRIPES],
            }),
        }
    }

    /// The local value of `key` when the tier is trusted, else the slow path.
    #[pyo3(signature = (key, default=None))]
    fn get(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        if let Some(found) = self.hit(py, key)? {
            return Ok(found);
        }
        let default = default.unwrap_or_else(|| py.None());
        self.slow_get.call1(py, (key, default))
    }

    /// `get` for the async cache: a hit is a finished awaitable (`Ready`).
    #[pyo3(signature = (key, default=None))]
    fn aget(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        if let Some(found) = self.hit(py, key)? {
            return Ok(Py::new(py, Ready::new(found))?.into_any());
        }
        let default = default.unwrap_or_else(|| py.None());
        self.slow_aget.call1(py, (key, default))
    }

    /// The local value of `key` when the tier is trusted and the key plain;
    /// `default` otherwise (no slow path: `get_with` goes on to its load).
    fn lookup(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        default: Py<PyAny>,
    ) -> PyResult<Py<PyAny>> {
        if let Some(found) = self.hit(py, key)? {
            return Ok(found);
        }
        Ok(default)
    }

    /// Whether `key` is one the hot path looks up directly.
    fn is_plain(&self, key: &Bound<'_, PyAny>) -> bool {
        self.plain(key, 0)
    }

    /// The local value of `key` whether or not the tier is trusted, without
    /// counting a read (the fail-safe path); `default` when absent.
    fn peek(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        default: Py<PyAny>,
    ) -> PyResult<Py<PyAny>> {
        let local = self.local.get();
        let found = match local.key_ref(key)? {
            Some(k) => local.lookup(py, &k),
            None => None,
        };
        Ok(found.unwrap_or(default))
    }

    /// The sequence token of `key`: take it before fetching from Redis, and
    /// hand it to [`Tier::fill`].
    fn token(&self, key: &Bound<'_, PyAny>) -> PyResult<u128> {
        let (hash, _) = self.local.get().key_ref_hashed(key)?;
        Ok(self.lock().token(stripe_of(hash)))
    }

    /// Puts a value read from Redis into the local tier, for at most `ttl`
    /// seconds, unless the key was invalidated since `token` was taken;
    /// with `tags` (names, or a stamp taken by the local cache's `_stamp`).
    #[pyo3(signature = (key, value, ttl, token, tags=None))]
    fn fill(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        ttl: Option<f64>,
        token: u128,
        tags: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        self.write(py, key, value, ttl, token, false, tags)
    }

    /// After this process wrote `value` to Redis: invalidates the key for the
    /// other readers of this process, and keeps `value` locally unless the key
    /// was invalidated since `token` (taken before the Redis write: a write
    /// elsewhere may have landed after it).
    #[pyo3(signature = (key, value, ttl, token, tags=None))]
    fn put(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        ttl: Option<f64>,
        token: u128,
        tags: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        self.write(py, key, value, ttl, token, true, tags)
    }

    /// Drops the local copy of `key` and refuses fills that started before.
    fn invalidate(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<()> {
        let local = self.local.get();
        let (hash, lookup) = local.key_ref_hashed(key)?;
        let stripe = stripe_of(hash);
        {
            let mut seqs = self.lock();
            seqs.stripes[stripe] = seqs.stripes[stripe].wrapping_add(1);
        }
        // A fill holds `seqs` from its check to its insert: one that passed
        // its check has inserted by now, and is removed here.
        if let Some(lookup) = lookup {
            local.write(py, 0, |store| drop(local.remove_in(store, &lookup)));
        }
        Ok(())
    }

    /// Makes every local copy written with one of `tags` absent (the local
    /// `Moka`'s `invalidate_tags`), and refuses every fill that started
    /// before: such a fill may hold a value read before the tags were
    /// invalidated in Redis, and it learns its tags only from the value.
    fn invalidate_tags(&self, tags: &Bound<'_, PyAny>) -> PyResult<()> {
        let names = crate::py::tags::names(tags)?;
        {
            let mut seqs = self.lock();
            seqs.tags = seqs.tags.wrapping_add(1);
        }
        // A fill that passed its check has inserted by now, stamped with
        // the tags' epochs from before this: they are advanced here.
        self.local.get().tags.invalidate(&names);
        Ok(())
    }

    /// Drops every local copy and refuses every fill that started before.
    fn invalidate_all(&self, py: Python<'_>) {
        {
            let mut seqs = self.lock();
            seqs.epoch = seqs.epoch.wrapping_add(1);
        }
        self.local.get().clear(py);
    }

    /// Whether local copies are served without asking Redis.
    #[getter]
    fn get_trusted(&self) -> bool {
        self.trusted.load(Ordering::Acquire)
    }

    #[setter]
    fn set_trusted(&self, value: bool) {
        self.trusted.store(value, Ordering::Release);
    }

    /// The local `Moka`.
    #[getter]
    fn local(&self, py: Python<'_>) -> Py<Moka> {
        self.local.clone_ref(py)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.local)?;
        visit.call(&self.slow_get)?;
        visit.call(&self.slow_aget)?;
        visit.call(&self.uuid)
    }
}
