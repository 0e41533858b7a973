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
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use moka::sync::Cache;
use moka::Equivalent;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PyTuple, PyType};
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
use crate::ready::Ready;
use crate::refresh::{self, Refresher};
use crate::slot::PySlot;
use crate::stats::{CacheStats, Stats};

pub(crate) type Store = Cache<Key, Arc<Entry>, PyHashBuilder>;

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
    settings: Settings,
    /// With `stats=True`: what the cache records (`stats.rs`).
    stats: Option<Arc<Stats>>,
    /// With `refresh_after=`: the reloads' settings and executor (`refresh.rs`).
    refresh: Option<Refresher>,
}

/// What a new moka store is built with (the constructor's options).
#[derive(Clone, Copy)]
struct Settings {
    capacity: u64,
    policy: Policy,
    ttl: Option<Duration>,
    tti: Option<Duration>,
    refresh_after: Option<Duration>,
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

/// A new, empty moka cache with these settings. moka's eviction listener,
/// installed for the user's listener or for the statistics, only counts and
/// queues: it runs no Python code.
fn build_store(
    settings: Settings,
    listener: Option<&Arc<Listener>>,
    stats: Option<&Arc<Stats>>,
) -> Store {
    let mut builder = Cache::builder()
        .max_capacity(settings.capacity)
        .eviction_policy(settings.policy.to_moka())
        .expire_after(PerEntry {
            refresh_after: settings.refresh_after,
        })
        .weigher(|_: &Key, entry: &Arc<Entry>| entry.weight);
    if let Some(ttl) = settings.ttl {
        builder = builder.time_to_live(ttl);
    }
    if let Some(tti) = settings.tti {
        builder = builder.time_to_idle(tti);
    }
    if listener.is_some() || stats.is_some() {
        let (listener, stats) = (listener.cloned(), stats.cloned());
        builder = builder.eviction_listener(move |key, entry: Arc<Entry>, cause| {
            if let Some(stats) = &stats {
                stats.removed(cause, entry.weight);
            }
            if let Some(listener) = &listener {
                listener.notify(key, entry, cause);
            }
        });
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
        signature = (capacity, ttl=None, tti=None, eviction_listener=None, policy=None, weigher=None, stats=false, refresh_after=None, executor=None),
        text_signature = "(capacity, ttl=None, tti=None, eviction_listener=None, policy='tiny_lfu', weigher=None, stats=False, refresh_after=None, executor=None)"
    )]
    #[allow(clippy::too_many_arguments)]
    fn new(
        capacity: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
        tti: Option<&Bound<'_, PyAny>>,
        eviction_listener: Option<&Bound<'_, PyAny>>,
        policy: Option<&Bound<'_, PyAny>>,
        weigher: Option<&Bound<'_, PyAny>>,
        stats: bool,
        refresh_after: Option<&Bound<'_, PyAny>>,
        executor: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let capacity = options::capacity(capacity)?;
        let ttl = options::duration(ttl, "ttl")?;
        let tti = options::duration(tti, "tti")?;
        let policy = policy.map_or(Ok(Policy::TinyLfu), Policy::parse)?;
        let refresh_after = options::duration(refresh_after, "refresh_after")?;
        let executor = executor.filter(|e| !e.is_none());
        let refresh = options::refresh(refresh_after, ttl, executor)?;
        let eviction_listener = eviction_listener.filter(|l| !l.is_none());
        let weigher = weigher.filter(|w| !w.is_none());
        for (name, f) in [
            ("eviction_listener", eviction_listener),
            ("weigher", weigher),
        ] {
            if let Some(f) = f {
                if !f.is_callable() {
                    return Err(crate::errors::Error::wrong_type(
                        &format!("{name} must be callable or None"),
                        f,
                    )
                    .into());
                }
            }
        }

        let listener = eviction_listener.map(|l| Listener::new(l.clone().unbind()));
        let stats = stats.then(|| Arc::new(Stats::default()));
        let slack = slack_for(capacity, weigher.is_some());
        let settings = Settings {
            capacity,
            policy,
            ttl,
            tti,
            refresh_after,
        };
        Ok(Moka {
            store: ManuallyDrop::new(ArcSwap::from_pointee(build_store(
                settings,
                listener.as_ref(),
                stats.as_ref(),
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
            settings,
            stats,
            refresh,
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
        let found = self.read(py, self.key_ref(key)?.as_ref());
        Ok(found.unwrap_or_else(|| default.unwrap_or_else(|| py.None())))
    }

    /// The value for `key`; on a miss, calls `initializer()` once (however many
    /// threads ask at the same time), caches and returns its result.
    /// With `refresh_after`, an entry older than that is returned at once and
    /// reloaded in the background (`refresh.rs`).
    #[pyo3(signature = (key, initializer, ttl=None, tti=None))]
    fn get_with(
        slf: &Bound<'_, Self>,
        key: &Bound<'_, PyAny>,
        initializer: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
        tti: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let (this, py) = (slf.get(), slf.py());
        let ttl = options::duration(ttl, "ttl")?;
        let tti = options::duration(tti, "tti")?;
        // The key's hash is kept for the miss: `__hash__` runs once per call.
        let (hash, lookup) = this.key_ref_hashed(key)?;
        if let Some((found, stale)) = this.read_for_load(py, lookup.as_ref()) {
            if let Some(seen) = stale {
                let call = refresh::Call {
                    func: initializer.clone().unbind(),
                    args: PyTuple::empty(py).unbind(),
                    kwargs: None,
                    keep: None,
                };
                let target = this.owned_hashed(key, hash, lookup.as_ref());
                this.refresh(slf, target, seen, call, ttl, tti);
            }
            return Ok(found);
        }
        let owned = this.owned_hashed(key, hash, lookup.as_ref())?;
        this.load(py, owned, || initializer.call0(), ttl, tti)
    }

    /// `await cache.aget_with(key, initializer)`: `initializer` is an async
    /// callable. A hit returns a finished awaitable; a miss, a coroutine that
    /// joins the one computation of `key` on this event loop
    /// (`python/moka_py/_aload.py`).
    #[pyo3(signature = (key, initializer, ttl=None, tti=None))]
    fn aget_with(
        slf: &Bound<'_, Self>,
        key: &Bound<'_, PyAny>,
        initializer: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
        tti: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let (this, py) = (slf.get(), slf.py());
        // Checked now (a bad value raises at the call); the miss passes the
        // objects on to `cache.set`, the reload the parsed durations.
        let durations = (
            options::duration(ttl, "ttl")?,
            options::duration(tti, "tti")?,
        );
        let none = py.None();
        let (ttl, tti) = (ttl.unwrap_or(none.bind(py)), tti.unwrap_or(none.bind(py)));
        let (hash, lookup) = this.key_ref_hashed(key)?;
        let Some((found, stale)) = this.read_for_load(py, lookup.as_ref()) else {
            return aload(py, "load")?
                .call1((slf, key, initializer, ttl, tti))
                .map(Bound::unbind);
        };
        if let Some(seen) = stale {
            let target = this.owned_hashed(key, hash, lookup.as_ref());
            let (ttl, tti) = durations;
            if let Some(claim) = this.claim_refresh(slf, target, seen, ttl, tti) {
                if let Err(err) = aload(py, "refresh")
                    .and_then(|refresh| refresh.call1((slf, key, initializer, claim)))
                {
                    err.write_unraisable(py, Some(initializer));
                }
            }
        }
        Ok(Bound::new(py, Ready::new(found))?.into_any().unbind())
    }

    /// The values of the present, unexpired `keys`, as a dict (one call into
    /// moka for the batch).
    fn get_many<'py>(
        &self,
        py: Python<'py>,
        keys: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        crate::bulk::get_many(self, py, keys)
    }

    /// Stores every `(key, value)` of `items` (a mapping or an iterable of
    /// pairs). Every key and weight is checked before anything is stored.
    #[pyo3(signature = (items, ttl=None, tti=None))]
    fn set_many(
        &self,
        py: Python<'_>,
        items: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
        tti: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let ttl = options::duration(ttl, "ttl")?;
        let tti = options::duration(tti, "tti")?;
        crate::bulk::set_many(self, py, items, ttl, tti)
    }

    /// Removes the present `keys`; returns how many were removed.
    fn remove_many(&self, py: Python<'_>, keys: &Bound<'_, PyAny>) -> PyResult<u64> {
        crate::bulk::remove_many(self, py, keys)
    }

    /// Removes the entries for which `predicate(key, value)` is true, run on
    /// a snapshot outside moka; returns how many were removed.
    fn remove_if(&self, py: Python<'_>, predicate: &Bound<'_, PyAny>) -> PyResult<u64> {
        crate::bulk::remove_if(self, py, predicate)
    }

    /// A snapshot of the statistics (`stats=True`).
    fn stats(&self) -> PyResult<CacheStats> {
        Ok(self.stats_or_err()?.snapshot())
    }

    /// Sets every statistic back to zero (`stats=True`).
    fn reset_stats(&self) -> PyResult<()> {
        self.stats_or_err()?.reset();
        Ok(())
    }

    /// Records an initializer call made outside Rust (the async loads of
    /// `aget_with`): `seconds` it took, and whether it returned.
    fn _record_load(&self, seconds: f64, ok: bool) {
        if let Some(stats) = &self.stats {
            let elapsed = Duration::try_from_secs_f64(seconds).unwrap_or_default();
            stats.load(elapsed, ok);
        }
    }

    /// The seconds after which `get_with` reloads an entry, or None.
    #[getter]
    fn refresh_after(&self) -> Option<f64> {
        self.refresh.as_ref().map(|r| r.after.as_secs_f64())
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
        self.settings.capacity
    }

    /// The eviction policy: `"tiny_lfu"` or `"lru"`.
    #[getter]
    fn policy(&self) -> &'static str {
        self.settings.policy.name()
    }

    /// The cache-wide time to live in seconds, or None.
    #[getter]
    fn ttl(&self) -> Option<f64> {
        self.settings.ttl.map(|d| d.as_secs_f64())
    }

    /// The cache-wide time to idle in seconds, or None.
    #[getter]
    fn tti(&self) -> Option<f64> {
        self.settings.tti.map(|d| d.as_secs_f64())
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
        self.read(py, self.key_ref(key)?.as_ref())
            .ok_or_else(|| key_error(key))
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
            self.settings.capacity,
            secs(self.settings.ttl),
            secs(self.settings.tti),
            self.settings.policy.name()
        )
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(l) = &self.listener {
            l.traverse(&visit)?;
        }
        if let Some(w) = &self.weigher {
            w.traverse(&visit)?;
        }
        if let Some(r) = &self.refresh {
            r.traverse(&visit)?;
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
        build_store(self.settings, self.listener.as_ref(), self.stats.as_ref())
    }

    /// Lets go of the listener, the weigher and the given executor (queued,
    /// as every release).
    fn clear_callbacks(&self) {
        if let Some(l) = &self.listener {
            l.clear();
        }
        if let Some(w) = &self.weigher {
            w.clear();
        }
        if let Some(r) = &self.refresh {
            r.clear();
        }
    }

    pub(crate) fn loads(&self) -> &Loads {
        &self.loads
    }

    fn stats_or_err(&self) -> PyResult<&Stats> {
        self.stats.as_deref().ok_or_else(|| {
            crate::errors::Error::Value(
                "statistics are off for this cache: create it with Moka(..., stats=True)"
                    .to_owned(),
            )
            .into()
        })
    }

    /// Counts a read that asked for a value (with `stats=True`).
    #[inline]
    pub(crate) fn count_read(&self, hit: bool) {
        if let Some(stats) = &self.stats {
            if hit {
                stats.hit();
            } else {
                stats.miss();
            }
        }
    }

    /// A read that asks for a value, counted in the statistics. `None` for a
    /// key that cannot be present (see [`Moka::key_ref`]).
    #[inline]
    pub(crate) fn read(&self, py: Python<'_>, key: Option<&KeyRef>) -> Option<Py<PyAny>> {
        let found = key.and_then(|k| self.lookup(py, k));
        self.count_read(found.is_some());
        found
    }

    /// `read` for a caller that can reload: the value, and the entry when a
    /// read found it due for a refresh.
    #[inline]
    pub(crate) fn read_for_load(
        &self,
        py: Python<'_>,
        key: Option<&KeyRef>,
    ) -> Option<(Py<PyAny>, Option<Arc<Entry>>)> {
        let refreshes = self.refresh.is_some();
        let found = key.and_then(|key| {
            call::enter(
                py,
                Span::Read,
                || self.store.load().get(key),
                |entry| {
                    entry.map(|e| {
                        let value = e.obj.clone_ref(py);
                        (value, (refreshes && e.is_stale()).then_some(e))
                    })
                },
            )
        });
        self.count_read(found.is_some());
        found
    }

    /// Starts the reload of a stale entry (`refresh.rs`) under `key` (its
    /// resolution may have failed: errors go to `sys.unraisablehook`, as the
    /// caller has its value).
    pub(crate) fn refresh(
        &self,
        slf: &Bound<'_, Self>,
        key: PyResult<Key>,
        seen: Arc<Entry>,
        call: refresh::Call,
        ttl: Option<Duration>,
        tti: Option<Duration>,
    ) {
        let Some(refresher) = &self.refresh else {
            return;
        };
        match key {
            Ok(key) => refresher.start(
                slf,
                call,
                refresh::Target {
                    key,
                    seen,
                    ttl,
                    tti,
                },
            ),
            Err(err) => err.write_unraisable(slf.py(), Some(call.func.bind(slf.py()))),
        }
    }

    /// Claims the reload of a stale entry for an async reload on this
    /// thread's event loop (`refresh.rs`); `None` when a load of the key is
    /// in flight, or its resolution failed (reported to `sys.unraisablehook`).
    pub(crate) fn claim_refresh<'py>(
        &self,
        slf: &Bound<'py, Self>,
        key: PyResult<Key>,
        seen: Arc<Entry>,
        ttl: Option<Duration>,
        tti: Option<Duration>,
    ) -> Option<Bound<'py, refresh::Claim>> {
        let refresher = self.refresh.as_ref()?;
        let py = slf.py();
        let claimed = key.and_then(|key| {
            let target = refresh::Target {
                key,
                seen,
                ttl,
                tti,
            };
            refresher
                .claim(slf, target)
                .map(|claim| Bound::new(py, claim))
                .transpose()
        });
        claimed.unwrap_or_else(|err| {
            err.write_unraisable(py, Some(slf.as_any()));
            None
        })
    }

    /// Runs an initializer (`init`), recording the call in the statistics.
    pub(crate) fn compute<'py>(
        &self,
        init: impl FnOnce() -> PyResult<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let Some(stats) = &self.stats else {
            return init();
        };
        let start = Instant::now();
        let result = init();
        stats.load(start.elapsed(), result.is_ok());
        result
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

    /// The owned key of `obj`, for a key whose hash [`Moka::key_ref_hashed`] gave:
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
            || self.compute(init),
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
            || self.compute(init),
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
    pub(crate) fn entry(
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
        self.write(py, entry.weight, move |store| store.insert(key, entry));
    }

    /// A write of one key: `op` on the store, then the size bound for the
    /// `weight` it added.
    pub(crate) fn write<T: Send>(
        &self,
        py: Python<'_>,
        weight: u32,
        op: impl FnOnce(&Store) -> T + Send,
    ) -> T {
        call::enter(
            py,
            Span::Write,
            || {
                let store = self.store.load();
                let out = op(&store);
                if self.bounded {
                    self.bound_size(&store, weight);
                }
                out
            },
            |out| out,
        )
    }

    /// A write of a batch (`bulk.rs`): `op` gets the store and a function
    /// that keeps the size bound for the weight of each insert; detached, as
    /// a batch can last.
    pub(crate) fn write_batch<T: Send>(
        &self,
        py: Python<'_>,
        op: impl FnOnce(&Store, &dyn Fn(&Store, u32)) -> T + Send,
    ) -> T {
        call::enter(
            py,
            Span::Long,
            || {
                let store = self.store.load();
                let bound = |store: &Store, weight: u32| {
                    if self.bounded {
                        self.bound_size(store, weight);
                    }
                };
                op(&store, &bound)
            },
            |out| out,
        )
    }

    /// Reads a batch (`bulk.rs`): `op` on the store, detached; `then` on its
    /// result, attached.
    pub(crate) fn read_batch<T: Send, R>(
        &self,
        py: Python<'_>,
        op: impl FnOnce(&Store) -> T + Send,
        then: impl FnOnce(T) -> R,
    ) -> R {
        call::enter(py, Span::Long, || op(&self.store.load()), then)
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
    pub(crate) fn snapshot<R>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(Vec<(Arc<Key>, Arc<Entry>)>) -> R,
    ) -> R {
        call::enter(py, Span::Long, || self.store.load().iter().collect(), f)
    }
}

/// A function of `python/moka_py/_aload.py` (the async loads of `aget_with`),
/// imported on first use.
fn aload<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    if let Some(module) = MODULE.get(py) {
        return module.bind(py).getattr(name);
    }
    // Imported outside the cell's lock (an import runs Python code); a
    // thread that loses the race keeps the module it imported, the same one.
    let module = py.import("moka_py._aload")?;
    let _ = MODULE.set(py, module.clone().unbind());
    module.getattr(name)
}
