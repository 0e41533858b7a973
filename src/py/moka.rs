//! `moka_py.Moka`: the cache class. A thin handle over the store
//! (`store/cache.rs`): each method parses its arguments and calls it. The
//! store's methods are reached through `Deref`; reloads (`refresh.rs`) are
//! the class's own, as they run on its executor.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PyTuple, PyType};
use pyo3::{PyTraverseError, PyVisit};

use crate::py::ready::Ready;
use crate::py::refresh::{self, Refresher};
use crate::py::stats::CacheStats;
use crate::py::tags::{self, TagStamp};
use crate::store::cache::{Settings, Store};
use crate::store::call;
use crate::store::entry::Entry;
use crate::store::errors::key_error;
use crate::store::key::Key;
use crate::store::options::{self, Policy};

/// A thread-safe in-memory cache with size-bounded eviction and expiration.
#[pyclass(frozen, weakref, module = "moka_py._moka_py", name = "Moka")]
pub(crate) struct Moka {
    /// Shared with the reloads in flight (`refresh.rs`).
    store: Arc<Store>,
    /// With `refresh_after=`: the reloads' settings and executor (`refresh.rs`).
    refresh: Option<Refresher>,
    /// See [`Moka::is_plain`]; fixed for the life of the cache. (Read by
    /// the fast entries, which PyPy does not have.)
    #[cfg_attr(PyPy, allow(dead_code))]
    plain: bool,
}

impl Moka {
    /// Whether no operation of this cache calls Python code of its own (an
    /// eviction listener, a weigher, a reload): the shape the fast entries
    /// take (`fast.rs`).
    #[inline]
    #[cfg_attr(PyPy, allow(dead_code))]
    pub(crate) fn is_plain(&self) -> bool {
        self.plain
    }
}

impl Deref for Moka {
    type Target = Store;
    #[inline]
    fn deref(&self) -> &Store {
        &self.store
    }
}

#[pymethods]
impl Moka {
    #[new]
    #[pyo3(
        signature = (capacity, ttl=None, tti=None, eviction_listener=None, policy=None, weigher=None, stats=false, refresh_after=None, executor=None, stale_if_error=None),
        text_signature = "(capacity, ttl=None, tti=None, eviction_listener=None, policy='tiny_lfu', weigher=None, stats=False, refresh_after=None, executor=None, stale_if_error=None)"
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
        stale_if_error: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let capacity = options::capacity(capacity)?;
        let (ttl, tti) = options::durations(ttl, tti)?;
        let policy = policy.map_or(Ok(Policy::TinyLfu), Policy::parse)?;
        let refresh_after = options::duration(refresh_after, "refresh_after")?;
        let executor = executor.filter(|e| !e.is_none());
        let refresh = refresh::from_options(refresh_after, ttl, executor)?;
        let stale_if_error = options::duration(stale_if_error, "stale_if_error")?;
        if stale_if_error.is_some() && (ttl.is_none() || tti.is_some()) {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "stale_if_error keeps values past their ttl: it needs a ttl, and no tti \
                 (an entry that expires by idleness is gone)",
            ));
        }
        let eviction_listener = eviction_listener.filter(|l| !l.is_none());
        let weigher = weigher.filter(|w| !w.is_none());
        for (name, f) in [
            ("eviction_listener", eviction_listener),
            ("weigher", weigher),
        ] {
            if let Some(f) = f {
                if !f.is_callable() {
                    return Err(crate::store::errors::Error::wrong_type(
                        &format!("{name} must be callable or None"),
                        f,
                    )
                    .into());
                }
            }
        }

        let settings = Settings {
            capacity,
            policy,
            ttl,
            tti,
            refresh_after,
            stale_if_error,
        };
        let store = Store::new(
            settings,
            eviction_listener.map(|l| l.clone().unbind()),
            weigher.map(|w| w.clone().unbind()),
            stats,
            refresh.is_some(),
        );
        Ok(Moka {
            plain: refresh.is_none() && !store.has_callbacks(),
            store: Arc::new(store),
            refresh,
        })
    }

    /// `Moka[K, V]` is `Moka` itself (as in moka-py), so that it also works
    /// with `isinstance`; the stub declares the generic parameters.
    #[classmethod]
    fn __class_getitem__(cls: &Bound<'_, PyType>, _item: &Bound<'_, PyAny>) -> Py<PyType> {
        cls.clone().unbind()
    }

    /// Stores `value` under `key`, optionally with its own `ttl`/`tti` and
    /// with `tags` (see `invalidate_tags`).
    #[pyo3(signature = (key, value, ttl=None, tti=None, *, tags=None))]
    fn set(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
        tti: Option<&Bound<'_, PyAny>>,
        tags: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let (ttl, tti) = options::durations(ttl, tti)?;
        let tags = tags::stamp_of(self, tags)?;
        self.insert(py, key, value, ttl, tti, tags)
    }

    /// For an async load of `key` that raised (`_aload.py`, `@cached`): the
    /// value expired at most `stale_if_error` ago, as a 1-tuple, or `None`.
    fn _stale<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let key = self.read_key(key)?;
        self.stale_value(py, key.as_ref())
            .map(|v| PyTuple::new(py, [v]))
            .transpose()
    }

    /// Seconds an expired value stays for a failed load to return, or `None`.
    #[getter]
    fn stale_if_error(&self) -> Option<f64> {
        self.settings.stale_if_error.map(|d| d.as_secs_f64())
    }

    /// Makes every entry written with one of `tags` before this call absent
    /// (a load in flight stores a value that is absent at once); O(1) per
    /// tag, whatever the number of entries.
    #[pyo3(signature = (*tags))]
    fn invalidate_tags(&self, tags: &Bound<'_, PyTuple>) -> PyResult<()> {
        self.tags.invalidate(&tags::names(tags.as_any())?);
        Ok(())
    }

    /// The stamp of `tags` now, for a write of a load that begins now
    /// (`_aload.py`).
    fn _stamp(&self, tags: &Bound<'_, PyAny>) -> PyResult<Option<TagStamp>> {
        Ok(tags::stamp_of(self, Some(tags))?.map(TagStamp))
    }

    /// The value for `key`, or `default` when it is absent.
    #[pyo3(signature = (key, default=None))]
    fn get(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let found = self.read(py, self.read_key(key)?.as_ref());
        Ok(found.unwrap_or_else(|| default.unwrap_or_else(|| py.None())))
    }

    /// The value for `key`; on a miss, calls `initializer()` once (however many
    /// threads ask at the same time), caches and returns its result.
    /// With `refresh_after`, an entry older than that is returned at once and
    /// reloaded in the background (`refresh.rs`).
    #[pyo3(signature = (key, initializer, ttl=None, tti=None, *, tags=None))]
    fn get_with(
        slf: &Bound<'_, Self>,
        key: &Bound<'_, PyAny>,
        initializer: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
        tti: Option<&Bound<'_, PyAny>>,
        tags: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let (this, py) = (slf.get(), slf.py());
        let (ttl, tti) = options::durations(ttl, tti)?;
        // The key's hash is kept for the miss: `__hash__` runs once per call.
        let (hash, lookup) = this.read_key_hashed(key)?;
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
        // Stamped before the load: an invalidation during it dates the value.
        let tags = tags::stamp_of(this, tags)?;
        this.load(py, owned, || initializer.call0(), ttl, tti, tags)
    }

    /// `await cache.aget_with(key, initializer)`: `initializer` is an async
    /// callable. A hit returns a finished awaitable; a miss, a coroutine that
    /// joins the one computation of `key` on this event loop
    /// (`python/moka_py/_aload.py`).
    #[pyo3(signature = (key, initializer, ttl=None, tti=None, *, tags=None))]
    fn aget_with(
        slf: &Bound<'_, Self>,
        key: &Bound<'_, PyAny>,
        initializer: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
        tti: Option<&Bound<'_, PyAny>>,
        tags: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let (this, py) = (slf.get(), slf.py());
        // Checked now (a bad value raises at the call); the miss passes the
        // objects on to `cache.set`, the reload the parsed durations.
        let durations = options::durations(ttl, tti)?;
        let none = py.None();
        let (ttl, tti) = (ttl.unwrap_or(none.bind(py)), tti.unwrap_or(none.bind(py)));
        if let Some(tags) = tags.filter(|t| !t.is_none()) {
            // Checked now, as the durations are.
            tags::names(tags)?;
        }
        let (hash, lookup) = this.read_key_hashed(key)?;
        let Some((found, stale)) = this.read_for_load(py, lookup.as_ref()) else {
            let tags = tags.unwrap_or(none.bind(py));
            return aload(py, "load")?
                .call1((slf, key, initializer, ttl, tti, tags))
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
        crate::py::bulk::get_many(&self.store, py, keys)
    }

    /// Stores every `(key, value)` of `items` (a mapping or an iterable of
    /// pairs). Every key and weight is checked before anything is stored.
    #[pyo3(signature = (items, ttl=None, tti=None, *, tags=None))]
    fn set_many(
        &self,
        py: Python<'_>,
        items: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
        tti: Option<&Bound<'_, PyAny>>,
        tags: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let (ttl, tti) = options::durations(ttl, tti)?;
        let tags = tags::stamp_of(self, tags)?;
        crate::py::bulk::set_many(&self.store, py, items, ttl, tti, tags)
    }

    /// Removes the present `keys`; returns how many were removed.
    fn remove_many(&self, py: Python<'_>, keys: &Bound<'_, PyAny>) -> PyResult<u64> {
        crate::py::bulk::remove_many(&self.store, py, keys)
    }

    /// Removes the entries for which `predicate(key, value)` is true, run on
    /// a snapshot outside moka; returns how many were removed.
    fn remove_if(&self, py: Python<'_>, predicate: &Bound<'_, PyAny>) -> PyResult<u64> {
        crate::py::bulk::remove_if(&self.store, py, predicate)
    }

    /// A snapshot of the statistics (`stats=True`): since the last
    /// `reset_stats()`, or (`cumulative`) since the cache was made.
    #[pyo3(signature = (*, cumulative = false))]
    fn stats(&self, cumulative: bool) -> PyResult<CacheStats> {
        Ok(self.stats_or_err()?.snapshot(cumulative).into())
    }

    /// Makes `stats()` count from zero again (`stats=True`); the cumulative
    /// figures are left alone.
    fn reset_stats(&self) -> PyResult<()> {
        self.stats_or_err()?.reset();
        Ok(())
    }

    /// The number of entries as last counted, without applying pending
    /// evictions: what an exporter reads (no listener runs in its thread).
    fn _approx_count(&self) -> u64 {
        self.store.approx_count()
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
        self.store.clear(py);
    }

    /// The number of entries, after applying pending evictions.
    fn count(&self, py: Python<'_>) -> u64 {
        self.store.count(py)
    }

    /// The total weight of the entries (their number without a weigher).
    fn weighted_size(&self, py: Python<'_>) -> u64 {
        self.store.weighted_size(py)
    }

    /// Applies pending evictions and expirations now.
    fn run_pending_tasks(&self, py: Python<'_>) {
        self.store.run_pending_tasks(py);
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
        Ok(match self.read_key(key)? {
            Some(key) => self.store.contains(py, &key),
            None => false,
        })
    }

    fn __getitem__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        self.read(py, self.read_key(key)?.as_ref())
            .ok_or_else(|| key_error(key))
    }

    fn __setitem__(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.insert(py, key, value, None, None, None)
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
        if let Some(r) = &self.refresh {
            r.traverse(&visit)?;
        }
        self.store.traverse(&visit)
    }

    fn __clear__(&self) {
        // The GC calls this attached.
        Python::attach(|py| {
            self.store.gc_clear(py);
            if let Some(r) = &self.refresh {
                r.clear();
            }
            // Release what the table held now.
            call::after(py);
        });
    }
}

impl Moka {
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
                slf.py(),
                &self.store,
                slf.as_any(),
                call,
                refresh::Target::new(key, seen, ttl, tti),
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
            let target = refresh::Target::new(key, seen, ttl, tti);
            refresher
                .claim(py, &self.store, target)
                .map(|claim| Bound::new(py, claim))
                .transpose()
        });
        claimed.unwrap_or_else(|err| {
            err.write_unraisable(py, Some(slf.as_any()));
            None
        })
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
