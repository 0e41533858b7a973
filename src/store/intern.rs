//! Keys compared by Python `==`, resolved outside moka to a canonical identity.
//!
//! A key of a type that Rust cannot compare exactly (`uuid.UUID`, `datetime`,
//! `Decimal`, `frozenset`, dataclasses, any class with its own `__eq__`)
//! would make moka and the in-flight map run `__eq__` while they hold their
//! locks. Instead, each cache keeps an interner: for every such key in use,
//! one [`Canon`] with a process-wide unique, never reused `id`. A key is
//! resolved here first, with Python's own semantics (identity, then `==`, as
//! `dict` does) and then stands in moka as that id, which moka compares in
//! Rust.
//!
//! No Python code runs under an interner lock either: a lookup copies the
//! candidates of its hash (strong references) under the stripe's lock, lets it
//! go, compares them with `==`, and only then takes the lock again to act,
//! checking that nothing it relied on changed meanwhile (a canon it found is
//! still interned; no candidate was added since its copy — the stripe's
//! sequence number says so — else it compares the new ones too).
//!
//! Lifetime: a canon stays interned while some key in moka or in the
//! in-flight map refers to it through a [`CanonRef`]. Dropping a `CanonRef`
//! (which moka may do inside its own call) only queues it (`deferred.rs`);
//! [`release`] then, outside moka, removes the canon when the interner's
//! reference and the queued one are the last two. Every reference to a canon
//! is created from the interner under the stripe lock and given back under it,
//! so that count cannot change while the lock is held; references cloned from
//! a `CanonRef` already held only add to it.
//!
//! Locks: a stripe's mutex is held for a few map and vector operations and
//! increments of reference counts; nothing under it runs Python code, waits
//! for anything or releases a Python reference. A thread may therefore wait
//! for it attached on every build.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use pyo3::prelude::*;
use pyo3::{PyTraverseError, PyVisit};

use crate::store::deferred::{self, Deferred, PyOwned};
use crate::store::hash::PyHashBuilder;

const STRIPES: usize = 32;

/// Ids of canons: unique for the life of the process, never reused, so that
/// an id read without holding its canon can never name another key.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A key compared by Python `==`, interned.
pub(crate) struct Canon {
    id: u64,
    hash: isize,
    /// The stripe's sequence number when this canon was added.
    seq: u64,
    obj: PyOwned,
    interner: Weak<Interner>,
}

/// A key's reference to its canon. Dropping it queues the reference for
/// [`release`] instead of decrementing the count (see the module comment).
pub(crate) struct CanonRef(std::mem::ManuallyDrop<Arc<Canon>>);

impl CanonRef {
    pub(crate) fn id(&self) -> u64 {
        self.0.id
    }
}

impl Clone for CanonRef {
    fn clone(&self) -> Self {
        CanonRef(std::mem::ManuallyDrop::new(Arc::clone(&self.0)))
    }
}

impl Drop for CanonRef {
    fn drop(&mut self) {
        // SAFETY: the field is not used again; the reference moves to the queue.
        let canon = unsafe { std::mem::ManuallyDrop::take(&mut self.0) };
        deferred::defer_arc(canon);
    }
}

#[derive(Default)]
struct Bucket {
    /// Canons by hash (several only when distinct keys collide).
    canons: HashMap<isize, Vec<Arc<Canon>>, PyHashBuilder>,
    /// Bumped for every canon added to this stripe.
    seq: u64,
}

#[repr(align(64))]
#[derive(Default)]
struct Stripe(Mutex<Bucket>);

/// One cache's interner.
pub(crate) struct Interner {
    stripes: Box<[Stripe]>,
    this: Weak<Interner>,
}

/// The candidates copied out of a stripe: `(id, object)` of each canon of
/// the hash whose sequence number is above a bound.
type Candidates = Vec<(u64, Py<PyAny>)>;

impl Interner {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new_cyclic(|this| Interner {
            stripes: (0..STRIPES).map(|_| Stripe::default()).collect(),
            this: this.clone(),
        })
    }

    fn stripe(&self, hash: isize) -> MutexGuard<'_, Bucket> {
        #[allow(clippy::cast_sign_loss, clippy::cast_possible_truncation)]
        let i = ((hash as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 59) as usize % STRIPES;
        self.stripes[i]
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Copies the candidates of `hash` added after `since`, and the stripe's
    /// sequence number. Taking the references (increments) runs no Python.
    fn candidates(&self, py: Python<'_>, hash: isize, since: u64) -> (Candidates, u64) {
        let bucket = self.stripe(hash);
        let found = bucket.canons.get(&hash).map_or_else(Vec::new, |canons| {
            canons
                .iter()
                .filter(|c| c.seq > since)
                .map(|c| (c.id, c.obj.clone_ref(py)))
                .collect()
        });
        (found, bucket.seq)
    }

    /// The id of the canon equal to `obj`, if interned. Runs `==` (attached,
    /// holding no lock) and raises what it raises.
    pub(crate) fn lookup(&self, obj: &Bound<'_, PyAny>, hash: isize) -> PyResult<Option<u64>> {
        let (candidates, _) = self.candidates(obj.py(), hash, 0);
        find_equal(obj, candidates)
    }

    /// The canon of `obj`, interned now if it was not.
    pub(crate) fn intern(&self, obj: &Bound<'_, PyAny>, hash: isize) -> PyResult<CanonRef> {
        let py = obj.py();
        let mut since = 0;
        loop {
            let (candidates, seen) = self.candidates(py, hash, since);
            let found = find_equal(obj, candidates)?;
            let mut bucket = self.stripe(hash);
            if let Some(id) = found {
                let canon = bucket
                    .canons
                    .get(&hash)
                    .and_then(|canons| canons.iter().find(|c| c.id == id));
                if let Some(canon) = canon {
                    return Ok(CanonRef(std::mem::ManuallyDrop::new(Arc::clone(canon))));
                }
                // Released meanwhile: look again from scratch.
                since = 0;
                continue;
            }
            if bucket.seq != seen {
                // Keys were added meanwhile: compare those too.
                since = seen;
                continue;
            }
            bucket.seq += 1;
            let canon = Arc::new(Canon {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                hash,
                seq: bucket.seq,
                obj: PyOwned::new(obj.clone().unbind()),
                interner: self.this.clone(),
            });
            bucket
                .canons
                .entry(hash)
                .or_default()
                .push(Arc::clone(&canon));
            return Ok(CanonRef(std::mem::ManuallyDrop::new(canon)));
        }
    }

    /// Visits every interned key object (the GC's `__traverse__`). Never
    /// blocks: a busy stripe is skipped, which only makes the collector more
    /// conservative.
    pub(crate) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        for stripe in &*self.stripes {
            if let Ok(bucket) = stripe.0.try_lock() {
                for canon in bucket.canons.values().flatten() {
                    visit.call(&*canon.obj)?;
                }
            }
        }
        Ok(())
    }
}

/// The id of the first candidate equal to `obj`: identity first, then `==`
/// with the interned key on the left, as `dict` compares.
fn find_equal(obj: &Bound<'_, PyAny>, candidates: Candidates) -> PyResult<Option<u64>> {
    let py = obj.py();
    for (id, candidate) in candidates {
        let candidate = candidate.bind(py);
        if candidate.is(obj) || candidate.eq(obj)? {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

impl Deferred for Arc<Canon> {
    fn release(self, _py: Python<'_>) {
        release(self);
    }
}

/// Called by `deferred::run` (attached, holding no lock) for each queued
/// `CanonRef`: removes the canon from its interner if no key refers to it any
/// more.
fn release(canon: Arc<Canon>) {
    let Some(interner) = canon.interner.upgrade() else {
        return;
    };
    let removed = {
        let mut bucket = interner.stripe(canon.hash);
        // The interner's reference and this one: no key uses it any more.
        let last = Arc::strong_count(&canon) == 2;
        let mut removed = None;
        if last {
            if let Some(canons) = bucket.canons.get_mut(&canon.hash) {
                if let Some(i) = canons.iter().position(|c| Arc::ptr_eq(c, &canon)) {
                    removed = Some(canons.swap_remove(i));
                    if canons.is_empty() {
                        bucket.canons.remove(&canon.hash);
                    }
                }
            }
        }
        if removed.is_none() {
            // Given back under the lock, as the protocol requires; never the
            // last reference (the interner holds one).
            drop(canon);
            return;
        }
        (removed, canon)
    };
    // Both references go now, outside the lock; the key object's own release
    // is queued again (`PyOwned`).
    drop(removed);
    drop(interner);
}
