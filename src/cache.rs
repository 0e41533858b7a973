//! `moka_py.Moka`: the cache class.
//!
//! Every method reaches moka through `call::enter` (see `call.rs` for which
//! calls stay attached and why no cycle of waits can form), and never runs
//! Python code inside it: keys are resolved first (`key.rs`, `intern.rs`),
//! the weigher runs before the insert, and what moka lets go of is queued and
//! released after the call (`deferred.rs`).

use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use moka::sync::Cache;
use moka::Equivalent;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple, PyType};
use pyo3::{PyTraverseError, PyVisit};

use crate::call::{self, Span};
use crate::entry::Entry;
use crate::errors::key_error;
use crate::expiry::PerEntry;
use crate::intern::Interner;
use crate::key::{self, Key, KeyRef, PyHashBuilder, Repr};
use crate::listener::Listener;
use crate::loader::Loads;
use crate::options::{self, Policy};
use crate::slot::PySlot;

type Store = Cache<Key, Arc<Entry>, PyHashBuilder>;

/// A thread-safe in-memory cache with size-bounded eviction and expiration.
#[pyclass(frozen, weakref, module = "moka_py._moka_py", name = "Moka")]
pub(crate) struct Moka {
    /// The moka cache. `clear()` swaps in a fresh one, so that nothing of the
    /// old one (moka keeps removed keys in tombstones of its table) stays
    /// alive; a call that was already using the old one finishes on it.
    /// Dropped by hand in `Drop`, to release its references right then.
    store: ManuallyDrop<ArcSwap<Store>>,
    loads: Loads,
    /// Canonical ids of the keys compared by Python `==`; made on first use.
    interner: OnceLock<Arc<Interner>>,
    listener: Option<Arc<Listener>>,
    weigher: Option<PySlot>,
    capacity: u64,
    /// How far over `capacity` the cache may go before a write runs moka's
    /// housekeeping itself (see [`Moka::bound_size`]).
    slack: u64,
    /// Whether writes must count what they add (see [`needs_bound`]).
    bounded: bool,
    /// Weight written since this binding last ran housekeeping.
    unsynced: AtomicU64,
    /// Set once an entry has its own `ttl`/`tti`: moka then notices some
    /// expirations only on its timer wheel's next tick (about a second), so
    /// `len` counts the live entries instead of reading moka's count.
    per_entry: AtomicBool,
    ttl: Option<Duration>,
    tti: Option<Duration>,
    policy: Policy,
}

/// moka's hash table frees removed entries through epoch-based reclamation,
/// in batches; until then they keep their values (and keys) alive. `clear()`
/// and `run_pending_tasks()` push this thread's pending garbage out and
/// collect what every thread left (each flush advances the epoch once and
/// collects a few batches; threads that ended left theirs in the global
/// queue), so afterwards the cache holds no reference to removed values (a
/// per-`remove` flush would triple its cost). What that frees is queued and
/// released after the call.
fn reclaim() {
    for _ in 0..RECLAIM_FLUSHES {
        crossbeam_epoch::pin().flush();
    }
}

/// Enough flushes to collect a few hundred batches of garbage (about 100 ns
/// each when there is none).
const RECLAIM_FLUSHES: usize = 64;

/// A new, empty moka cache with this configuration.
fn build_store(
    capacity: u64,
    policy: Policy,
    ttl: Option<Duration>,
    tti: Option<Duration>,
    listener: Option<&Arc<Listener>>,
) -> Store {
    let mut builder = Cache::builder()
        .max_capacity(capacity)
        .eviction_policy(policy.to_moka())
        .expire_after(PerEntry)
        .weigher(|_: &Key, entry: &Arc<Entry>| entry.weight);
    if let Some(ttl) = ttl {
        builder = builder.time_to_live(ttl);
    }
    if let Some(tti) = tti {
        builder = builder.time_to_idle(tti);
    }
    if let Some(l) = listener {
        builder = builder.eviction_listener(l.queue());
    }
    builder.build_with_hasher(PyHashBuilder)
}

/// moka applies its pending writes (and evicts) inline once this many are
/// queued (its `WRITE_LOG_FLUSH_POINT`, 64), so without a weigher a cache
/// never runs further over its capacity than this on its own.
const MOKA_WRITE_BATCH: u64 = 64 + 1;

/// Whether writes must count the weight they add to keep the documented bound
/// (a shared counter, written by every `set`): only with a weigher (a batch
/// may weigh anything) or when the slack is smaller than moka's own batch.
fn needs_bound(slack: u64, weighted: bool) -> bool {
    weighted || slack < MOKA_WRITE_BATCH
}

/// The documented bound on the excess: 1/32 of the capacity, and for a cache
/// without a weigher never more than 256 entries.
fn slack_for(capacity: u64, weighted: bool) -> u64 {
    let slack = capacity / 32;
    if weighted {
        slack
    } else {
        slack.min(256)
    }
}

#[pymethods]
impl Moka {
    #[new]
    #[pyo3(
        signature = (capacity, ttl=None, tti=None, eviction_listener=None, policy=None, weigher=None),
        text_signature = "(capacity, ttl=None, tti=None, eviction_listener=None, policy='tiny_lfu', weigher=None)"
    )]
    fn new(
        capacity: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
        tti: Option<&Bound<'_, PyAny>>,
        eviction_listener: Option<&Bound<'_, PyAny>>,
        policy: Option<&Bound<'_, PyAny>>,
        weigher: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let capacity = options::capacity(capacity)?;
        let ttl = options::duration(ttl, "ttl")?;
        let tti = options::duration(tti, "tti")?;
        let policy = policy.map_or(Ok(Policy::TinyLfu), Policy::parse)?;
        let eviction_listener = eviction_listener.filter(|l| !l.is_none());
        let weigher = weigher.filter(|w| !w.is_none());
        for (name, f) in [
            ("eviction_listener", eviction_listener),
            ("weigher", weigher),
        ] {
            if let Some(f) = f {
                if !f.is_callable() {
                    return Err(crate::errors::Error::Type(format!(
                        "{name} must be callable or None, not {}",
                        options::type_name(f)
                    ))
                    .into());
                }
            }
        }

        let listener = eviction_listener.map(|l| Listener::new(l.clone().unbind()));
        let slack = slack_for(capacity, weigher.is_some());
        Ok(Moka {
            store: ManuallyDrop::new(ArcSwap::from_pointee(build_store(
                capacity,
                policy,
                ttl,
                tti,
                listener.as_ref(),
            ))),
            loads: Loads::default(),
            interner: OnceLock::new(),
            listener,
            slack,
            bounded: needs_bound(slack, weigher.is_some()),
            weigher: weigher.map(|w| PySlot::new(w.clone().unbind())),
            capacity,
            unsynced: AtomicU64::new(0),
            per_entry: AtomicBool::new(false),
            ttl,
            tti,
            policy,
        })
    }

    /// `Moka[K, V]` is `Moka` itself (as in moka-py), so that it also works
    /// with `isinstance`; the stub declares the generic parameters.
    #[classmethod]
    fn __class_getitem__(cls: &Bound<'_, PyType>, _item: &Bound<'_, PyAny>) -> Py<PyType> {
        cls.clone().unbind()
    }

    /// Stores `value` under `key`, optionally with its own `ttl`/`tti`.
    #[pyo3(signature = (key, value, ttl=None, tti=None))]
    fn set(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
        tti: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let ttl = options::duration(ttl, "ttl")?;
        let tti = options::duration(tti, "tti")?;
        self.insert(py, key, value, ttl, tti)
    }

    /// The value for `key`, or `default` when it is absent.
    #[pyo3(signature = (key, default=None))]
    fn get(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let found = match self.key_ref(key)? {
            Some(key) => self.lookup(py, &key),
            None => None,
        };
        Ok(found.unwrap_or_else(|| default.unwrap_or_else(|| py.None())))
    }

    /// The value for `key`; on a miss, calls `initializer()` once (however many
    /// threads ask at the same time), caches and returns its result.
    #[pyo3(signature = (key, initializer, ttl=None, tti=None))]
    fn get_with(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        initializer: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
        tti: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let ttl = options::duration(ttl, "ttl")?;
        let tti = options::duration(tti, "tti")?;
        let lookup = self.key_ref(key)?;
        if let Some(found) = lookup.as_ref().and_then(|k| self.lookup(py, k)) {
            return Ok(found);
        }
        let owned = self.owned(key, lookup.as_ref())?;
        self.load(py, owned, || initializer.call0(), ttl, tti)
    }

    /// Removes `key` and returns its value, or `default` when it was absent.
    #[pyo3(signature = (key, default=None))]
    fn remove(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let found = match self.key_ref(key)? {
            Some(key) => self.take(py, &key),
            None => None,
        };
        Ok(found.unwrap_or_else(|| default.unwrap_or_else(|| py.None())))
    }

    /// Removes every entry (the listener sees each with cause `"explicit"`).
    pub(crate) fn clear(&self, py: Python<'_>) {
        call::enter(
            py,
            Span::Long,
            || {
                let old = self.store.swap(Arc::new(self.fresh_store()));
                old.invalidate_all();
                old.run_pending_tasks();
                self.unsynced.store(0, Ordering::Relaxed);
                drop(old);
                reclaim();
            },
            |()| (),
        );
    }

    /// The number of entries, after applying pending evictions.
    pub(crate) fn count(&self, py: Python<'_>) -> u64 {
        self.sync(py, |store, walk| {
            if walk {
                store.iter().count() as u64
            } else {
                store.entry_count()
            }
        })
    }

    /// The total weight of the entries (their number without a weigher).
    fn weighted_size(&self, py: Python<'_>) -> u64 {
        self.sync(py, |store, walk| {
            if walk {
                store.iter().map(|(_, e)| u64::from(e.weight)).sum()
            } else {
                store.weighted_size()
            }
        })
    }

    /// Applies pending evictions and expirations now.
    fn run_pending_tasks(&self, py: Python<'_>) {
        self.sync(py, |_, _| ());
    }

    /// The maximum number of entries (or total weight, with a weigher).
    #[getter]
    fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The eviction policy: `"tiny_lfu"` or `"lru"`.
    #[getter]
    fn policy(&self) -> &'static str {
        self.policy.name()
    }

    /// The cache-wide time to live in seconds, or None.
    #[getter]
    fn ttl(&self) -> Option<f64> {
        self.ttl.map(|d| d.as_secs_f64())
    }

    /// The cache-wide time to idle in seconds, or None.
    #[getter]
    fn tti(&self) -> Option<f64> {
        self.tti.map(|d| d.as_secs_f64())
    }

    fn __len__(&self, py: Python<'_>) -> usize {
        usize::try_from(self.count(py)).unwrap_or(usize::MAX)
    }

    /// `key in cache`: does not count as an access (for `tti` or eviction).
    fn __contains__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let Some(key) = self.key_ref(key)? else {
            return Ok(false);
        };
        Ok(call::enter(
            py,
            Span::Read,
            || self.store.load().contains_key(&key),
            |found| found,
        ))
    }

    fn __getitem__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        match self.key_ref(key)? {
            Some(k) => self.lookup(py, &k).ok_or_else(|| key_error(key)),
            None => Err(key_error(key)),
        }
    }

    fn __setitem__(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.insert(py, key, value, None, None)
    }

    fn __delitem__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<()> {
        match self.key_ref(key)? {
            Some(k) => self.take(py, &k).map(drop).ok_or_else(|| key_error(key)),
            None => Err(key_error(key)),
        }
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.keys(py)?.try_iter().map(Bound::into_any)
    }

    /// A list of the keys (a snapshot).
    fn keys<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.snapshot(py, |entries| {
            PyList::new(py, entries.iter().map(|(k, _)| k.obj().clone_ref(py)))
        })
    }

    /// A list of the values (a snapshot).
    fn values<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.snapshot(py, |entries| {
            PyList::new(py, entries.iter().map(|(_, e)| e.obj.clone_ref(py)))
        })
    }

    /// A list of `(key, value)` pairs (a snapshot).
    fn items<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.snapshot(py, |entries| {
            let pairs: PyResult<Vec<Bound<'py, PyTuple>>> = entries
                .iter()
                .map(|(k, e)| PyTuple::new(py, [k.obj().clone_ref(py), e.obj.clone_ref(py)]))
                .collect();
            PyList::new(py, pairs?)
        })
    }

    fn __repr__(&self) -> String {
        let secs = |d: Option<Duration>| {
            d.map_or_else(|| "None".to_owned(), |d| format!("{}", d.as_secs_f64()))
        };
        format!(
            "Moka(capacity={}, ttl={}, tti={}, policy={:?})",
            self.capacity,
            secs(self.ttl),
            secs(self.tti),
            self.policy.name()
        )
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(l) = &self.listener {
            l.traverse(&visit)?;
        }
        if let Some(w) = &self.weigher {
            w.traverse(&visit)?;
        }
        if let Some(interner) = self.interner.get() {
            interner.traverse(&visit)?;
        }
        // Walking moka's table runs no Python code. Its epoch pin may free
        // garbage of other threads' removals; that is only queued (released
        // at this thread's next call, or at exit), never released here.
        for (key, entry) in self.store.load().iter() {
            visit.call(key.obj())?;
            visit.call(&*entry.obj)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        // No thread is inside a method of an object the GC is clearing (it
        // would hold a reference), so nothing here waits on another thread.
        // Dropping the old table notifies no listener.
        drop(self.store.swap(Arc::new(self.fresh_store())));
        reclaim();
        self.clear_callbacks();
        // The GC calls this attached; release what the table held now.
        Python::attach(call::after);
    }
}

impl Drop for Moka {
    fn drop(&mut self) {
        // SAFETY: the store is not used again (`self` is being dropped).
        unsafe { ManuallyDrop::drop(&mut self.store) };
        reclaim();
        drop(self.interner.take());
        self.clear_callbacks();
        // A pyclass is dropped by its `tp_dealloc`, attached: release what
        // the table and the interner held now, not at some later call.
        Python::attach(call::after);
    }
}

impl Moka {
    fn fresh_store(&self) -> Store {
        build_store(
            self.capacity,
            self.policy,
            self.ttl,
            self.tti,
            self.listener.as_ref(),
        )
    }

    /// Lets go of the listener and the weigher (queued, as every release).
    fn clear_callbacks(&self) {
        if let Some(l) = &self.listener {
            l.clear();
        }
        if let Some(w) = &self.weigher {
            w.clear();
        }
    }

    fn interner(&self) -> &Arc<Interner> {
        self.interner.get_or_init(Interner::new)
    }

    /// The owned key of `obj` (interned if it is compared by Python).
    pub(crate) fn key(&self, obj: &Bound<'_, PyAny>) -> PyResult<Key> {
        let (hash, repr) = key::describe(obj)?;
        let repr = match repr {
            Repr::Python => Repr::Canon(self.interner().intern(obj, hash)?),
            native => native,
        };
        Ok(Key::new(hash, repr, obj))
    }

    /// The lookup key of `obj`; `None` for a key compared by Python that is
    /// not interned, which therefore is in no entry and no load.
    pub(crate) fn key_ref(&self, obj: &Bound<'_, PyAny>) -> PyResult<Option<KeyRef>> {
        Ok(self.key_ref_hashed(obj)?.1)
    }

    /// [`Moka::key_ref`] with `obj`'s hash, for [`Moka::owned_hashed`]: a
    /// miss of `@cached` then runs the arguments' `__hash__` once, not twice.
    #[inline]
    pub(crate) fn key_ref_hashed(
        &self,
        obj: &Bound<'_, PyAny>,
    ) -> PyResult<(isize, Option<KeyRef>)> {
        let (hash, repr) = key::describe(obj)?;
        let repr = match repr {
            Repr::Python => match self.interner.get() {
                Some(interner) => match interner.lookup(obj, hash)? {
                    Some(id) => Repr::CanonId(id),
                    None => return Ok((hash, None)),
                },
                None => return Ok((hash, None)),
            },
            native => native,
        };
        Ok((hash, Some(KeyRef::new(hash, repr))))
    }

    /// [`Moka::owned`] for a key whose hash [`Moka::key_ref_hashed`] gave:
    /// a key without an owned lookup form is one compared by Python, and is
    /// interned with that hash (no second `describe`, so no second `__hash__`).
    pub(crate) fn owned_hashed(
        &self,
        obj: &Bound<'_, PyAny>,
        hash: isize,
        lookup: Option<&KeyRef>,
    ) -> PyResult<Key> {
        match lookup.and_then(|k| k.to_owned(obj)) {
            Some(key) => Ok(key),
            None => Ok(Key::new(
                hash,
                Repr::Canon(self.interner().intern(obj, hash)?),
                obj,
            )),
        }
    }

    /// The owned key of `obj`, from its lookup key when that has one.
    pub(crate) fn owned(&self, obj: &Bound<'_, PyAny>, lookup: Option<&KeyRef>) -> PyResult<Key> {
        match lookup.and_then(|k| k.to_owned(obj)) {
            Some(key) => Ok(key),
            None => self.key(obj),
        }
    }

    /// The miss path of `get_with` and of `@cached(wait_concurrent=True)`:
    /// the single-flight load of `key` (see `loader.rs`).
    pub(crate) fn load<'py>(
        &self,
        py: Python<'py>,
        key: Key,
        init: impl FnOnce() -> PyResult<Bound<'py, PyAny>>,
        ttl: Option<Duration>,
        tti: Option<Duration>,
    ) -> PyResult<Py<PyAny>> {
        self.loads.load(
            py,
            key,
            |key| self.lookup(py, key),
            init,
            |key, value| self.insert_key(py, key, value, ttl, tti),
        )
    }

    /// [`Moka::load`] for `@cached(cache_if=...)`: the leader stores the
    /// value only when `keep(value)` is true (run attached, holding no lock,
    /// like the weigher); every waiter receives the value either way.
    pub(crate) fn load_if<'py>(
        &self,
        py: Python<'py>,
        key: Key,
        init: impl FnOnce() -> PyResult<Bound<'py, PyAny>>,
        keep: impl FnOnce(&Bound<'py, PyAny>) -> PyResult<bool>,
    ) -> PyResult<Py<PyAny>> {
        self.loads.load(
            py,
            key,
            |key| self.lookup(py, key),
            init,
            |key, value| {
                if keep(value)? {
                    self.insert_key(py, key, value, None, None)
                } else {
                    Ok(())
                }
            },
        )
    }

    /// The value of `key`, if present (and not expired).
    pub(crate) fn lookup<Q>(&self, py: Python<'_>, key: &Q) -> Option<Py<PyAny>>
    where
        Q: Equivalent<Key> + std::hash::Hash + Sync + ?Sized,
    {
        call::enter(
            py,
            Span::Read,
            || self.store.load().get(key),
            |entry| entry.map(|e| e.obj.clone_ref(py)),
        )
    }

    /// Removes `key`; its value if it was present. An expired entry counts as
    /// absent here as everywhere: it is left for moka to evict.
    fn take(&self, py: Python<'_>, key: &KeyRef) -> Option<Py<PyAny>> {
        call::enter(
            py,
            Span::Write,
            || {
                let store = self.store.load();
                if store.contains_key(key) {
                    store.remove(key)
                } else {
                    None
                }
            },
            |entry| entry.map(|e| e.obj.clone_ref(py)),
        )
    }

    /// `set`: the key is resolved (raising as a `dict` would for a bad key),
    /// then the weigher runs, then the entry is stored.
    pub(crate) fn insert(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        ttl: Option<Duration>,
        tti: Option<Duration>,
    ) -> PyResult<()> {
        let key = self.key(key)?;
        self.insert_key(py, key, value, ttl, tti)
    }

    /// Stores `value` under an owned key (an error of the weigher drops it).
    pub(crate) fn insert_key(
        &self,
        py: Python<'_>,
        key: Key,
        value: &Bound<'_, PyAny>,
        ttl: Option<Duration>,
        tti: Option<Duration>,
    ) -> PyResult<()> {
        match self.entry(py, key.obj().bind(py), value, ttl, tti) {
            Ok(entry) => {
                self.store_entry(py, key, entry);
                Ok(())
            }
            Err(err) => {
                // Release the key now, not at this thread's next call.
                drop(key);
                call::after(py);
                Err(err)
            }
        }
    }

    /// The entry for `value`: runs the weigher (attached, holding nothing).
    fn entry(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        ttl: Option<Duration>,
        tti: Option<Duration>,
    ) -> PyResult<Arc<Entry>> {
        let weight = match self.weigher.as_ref().and_then(|w| w.get(py)) {
            Some(weigher) => {
                let weight = call::call_python(py, || weigher.bind(py).call1((key, value)))?;
                options::weight(&weight)?
            }
            None => 1,
        };
        if (ttl.is_some() || tti.is_some()) && !self.per_entry.load(Ordering::Relaxed) {
            self.per_entry.store(true, Ordering::Relaxed);
        }
        Ok(Arc::new(Entry::new(
            value.clone().unbind(),
            weight,
            ttl,
            tti,
        )))
    }

    fn store_entry(&self, py: Python<'_>, key: Key, entry: Arc<Entry>) {
        call::enter(
            py,
            Span::Write,
            || {
                let store = self.store.load();
                let weight = entry.weight;
                store.insert(key, entry);
                if self.bounded {
                    self.bound_size(&store, weight);
                }
            },
            |()| (),
        );
    }

    /// Keeps the size within `capacity + slack`: moka applies writes in
    /// batches, so on its own a small cache could run far over its capacity
    /// until the next batch.
    fn bound_size(&self, store: &Store, weight: u32) {
        let written = u64::from(weight);
        let unsynced = self.unsynced.fetch_add(written, Ordering::Relaxed) + written;
        if store.weighted_size().saturating_add(unsynced) > self.capacity.saturating_add(self.slack)
        {
            self.unsynced.store(0, Ordering::Relaxed);
            store.run_pending_tasks();
        }
    }

    /// Applies pending evictions and expirations, then reads `f` of the store;
    /// `f`'s second argument says whether it must walk the entries to skip
    /// expired ones (see `per_entry`).
    fn sync<T: Send>(&self, py: Python<'_>, f: impl FnOnce(&Store, bool) -> T + Send) -> T {
        call::enter(
            py,
            Span::Long,
            || {
                let store = self.store.load();
                store.run_pending_tasks();
                self.unsynced.store(0, Ordering::Relaxed);
                reclaim();
                f(&store, self.per_entry.load(Ordering::Relaxed))
            },
            |out| out,
        )
    }

    /// Calls `f` with the entries, collected detached (a long walk); `f`
    /// runs attached and may build Python objects.
    fn snapshot<R>(&self, py: Python<'_>, f: impl FnOnce(Vec<(Arc<Key>, Arc<Entry>)>) -> R) -> R {
        call::enter(py, Span::Long, || self.store.load().iter().collect(), f)
    }
}
