//! `moka_py.Moka`: the cache class.
//!
//! Which locks each method may wait on, and whether it is attached then:
//! * `get`/`in`/`[]`: moka's read path may wait on its hash table's resize
//!   lock, and with an eviction listener its housekeeping takes per-key locks.
//!   Those waits are short and safe attached only while no thread inside moka
//!   can need the interpreter, i.e. while every key this cache has seen
//!   compares in Rust and there is no listener; otherwise reads detach too
//!   (`detach_reads`, which once set stays set).
//! * `set`/`remove`/`clear`/`get_with` (miss)/`run_pending_tasks`/`len`:
//!   moka's write path and housekeeping may block, so they always run
//!   detached.
//! * Python code (the weigher, the initializer, the listener) runs attached
//!   and outside every moka and in-flight-map call.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use moka::sync::Cache;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::detach::detach;
use crate::entry::Entry;
use crate::errors::key_error;
use crate::expiry::PerEntry;
use crate::key::{self, Key, KeyRef, PyHashBuilder};
use crate::listener::{self, Listener};
use crate::loader::{Join, Loads, Outcome};
use crate::options::{self, Policy};
use crate::slot::PySlot;

type Store = Cache<Key, Arc<Entry>, PyHashBuilder>;

/// A thread-safe in-memory cache with size-bounded eviction and expiration.
#[pyclass(frozen, generic, weakref, module = "moka_py._moka_py", name = "Moka")]
pub(crate) struct Moka {
    /// The moka cache. `clear()` swaps in a fresh one, so that nothing of the
    /// old one (moka keeps removed keys in tombstones of its table) stays
    /// alive; a call that was already using the old one finishes on it.
    store: ArcSwap<Store>,
    loads: Loads,
    listener: Option<Arc<Listener>>,
    weigher: Option<PySlot>,
    capacity: u64,
    /// How far over `capacity` the cache may go before a write runs moka's
    /// housekeeping itself (see [`Moka::bound_size`]).
    slack: u64,
    /// Weight written since this binding last ran housekeeping.
    unsynced: AtomicU64,
    ttl: Option<Duration>,
    tti: Option<Duration>,
    policy: Policy,
    /// Whether reads must detach (see the module comment): set when the cache
    /// has a listener, or once a key compared by Python `__eq__` was used.
    detach_reads: AtomicBool,
    /// Set once a key compared by Python `__eq__` was used.
    python_keys: AtomicBool,
}

/// moka's hash table frees removed entries through epoch-based reclamation,
/// in batches; until then they keep their values alive. `clear()` and
/// `run_pending_tasks()` push this thread's pending garbage out and collect
/// it, so afterwards the cache holds no reference to removed values (a
/// per-`remove` flush would triple its cost). Runs detached.
fn reclaim() {
    for _ in 0..3 {
        crossbeam_epoch::pin().flush();
    }
}

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
        Ok(Moka {
            store: ArcSwap::from_pointee(build_store(
                capacity,
                policy,
                ttl,
                tti,
                listener.as_ref(),
            )),
            loads: Loads::default(),
            detach_reads: AtomicBool::new(listener.is_some()),
            python_keys: AtomicBool::new(false),
            listener,
            slack: slack_for(capacity, weigher.is_some()),
            weigher: weigher.map(|w| PySlot::new(w.clone().unbind())),
            capacity,
            unsynced: AtomicU64::new(0),
            ttl,
            tti,
            policy,
        })
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
        self.insert(py, self.key(key)?, value, ttl, tti)
    }

    /// The value for `key`, or `default` when it is absent.
    #[pyo3(signature = (key, default=None))]
    fn get(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        match self.lookup(py, &self.key_ref(key)?)? {
            Some(entry) => Ok(entry.obj.clone_ref(py)),
            None => Ok(default.unwrap_or_else(|| py.None())),
        }
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
        if let Some(entry) = self.lookup(py, &lookup)? {
            return Ok(entry.obj.clone_ref(py));
        }
        self.load(py, key, &lookup, || initializer.call0(), ttl, tti)
    }

    /// Removes `key` and returns its value, or `default` when it was absent.
    #[pyo3(signature = (key, default=None))]
    fn remove(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        match self.take(py, &self.key_ref(key)?)? {
            Some(entry) => Ok(entry.obj.clone_ref(py)),
            None => Ok(default.unwrap_or_else(|| py.None())),
        }
    }

    /// Removes every entry (the listener sees each with cause `"explicit"`).
    pub(crate) fn clear(&self, py: Python<'_>) -> PyResult<()> {
        let old = self.store.swap(Arc::new(self.fresh_store()));
        detach(py, move || {
            old.invalidate_all();
            old.run_pending_tasks();
            self.unsynced.store(0, Ordering::Relaxed);
            drop(old);
            reclaim();
        });
        self.finish(py)
    }

    /// The number of entries, after applying pending evictions.
    pub(crate) fn count(&self, py: Python<'_>) -> PyResult<u64> {
        self.run_pending_tasks(py)?;
        Ok(self.store.load().entry_count())
    }

    /// The total weight of the entries (their number without a weigher).
    fn weighted_size(&self, py: Python<'_>) -> PyResult<u64> {
        self.run_pending_tasks(py)?;
        Ok(self.store.load().weighted_size())
    }

    /// Applies pending evictions and expirations now.
    fn run_pending_tasks(&self, py: Python<'_>) -> PyResult<()> {
        detach(py, || {
            self.store.load().run_pending_tasks();
            self.unsynced.store(0, Ordering::Relaxed);
            reclaim();
        });
        self.finish(py)
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

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(usize::try_from(self.count(py)?).unwrap_or(usize::MAX))
    }

    /// `key in cache`: does not count as an access (for `tti` or eviction).
    fn __contains__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let key = self.key_ref(key)?;
        let found = if self.detach_reads.load(Ordering::SeqCst) {
            detach(py, || self.store.load().contains_key(&key))
        } else {
            self.store.load().contains_key(&key)
        };
        self.finish(py)?;
        Ok(found)
    }

    fn __getitem__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        match self.lookup(py, &self.key_ref(key)?)? {
            Some(entry) => Ok(entry.obj.clone_ref(py)),
            None => Err(key_error(key)),
        }
    }

    fn __setitem__(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.insert(py, self.key(key)?, value, None, None)
    }

    fn __delitem__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<()> {
        match self.take(py, &self.key_ref(key)?)? {
            Some(_) => Ok(()),
            None => Err(key_error(key)),
        }
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.keys(py)?.try_iter().map(Bound::into_any)
    }

    /// A list of the keys (a snapshot).
    fn keys<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(
            py,
            self.snapshot(py)?
                .iter()
                .map(|(k, _)| k.obj().clone_ref(py)),
        )
    }

    /// A list of the values (a snapshot).
    fn values<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(
            py,
            self.snapshot(py)?.iter().map(|(_, e)| e.obj.clone_ref(py)),
        )
    }

    /// A list of `(key, value)` pairs (a snapshot).
    fn items<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let pairs: PyResult<Vec<Bound<'py, PyTuple>>> = self
            .snapshot(py)?
            .iter()
            .map(|(k, e)| PyTuple::new(py, [k.obj().clone_ref(py), e.obj.clone_ref(py)]))
            .collect();
        PyList::new(py, pairs?)
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
        // Walking moka's table may wait on its resize lock, whose holder may
        // be waiting for the interpreter to compare Python keys: with such
        // keys the entries are not visited (cycles through them are then not
        // collected; clearing the cache frees them), never risking a hang.
        if self.python_keys.load(Ordering::SeqCst) {
            return Ok(());
        }
        key::without_python(|| {
            for (key, entry) in self.store.load().iter() {
                visit.call(key.obj())?;
                visit.call(&entry.obj)?;
            }
            Ok(())
        })
    }

    fn __clear__(&self) {
        // No thread is inside a method of an object the GC is clearing (it
        // would hold a reference), so nothing here waits on another thread.
        // Dropping the old table notifies no listener.
        drop(self.store.swap(Arc::new(self.fresh_store())));
        reclaim();
        if let Some(l) = &self.listener {
            l.clear();
        }
        if let Some(w) = &self.weigher {
            w.clear();
        }
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

    fn mark_python_keys(&self) {
        // SeqCst: on 3.13t a reader must not keep reading attached once a
        // Python-compared key may be inside moka.
        self.python_keys.store(true, Ordering::SeqCst);
        self.detach_reads.store(true, Ordering::SeqCst);
    }

    pub(crate) fn key_ref(&self, obj: &Bound<'_, PyAny>) -> PyResult<KeyRef> {
        let key = KeyRef::new(obj)?;
        if key.uses_python_eq() {
            self.mark_python_keys();
        }
        Ok(key)
    }

    pub(crate) fn key(&self, obj: &Bound<'_, PyAny>) -> PyResult<Key> {
        let key = Key::new(obj)?;
        if key.uses_python_eq() {
            self.mark_python_keys();
        }
        Ok(key)
    }

    /// The miss path of `get_with`: joins or starts the single-flight load of
    /// `key` (see `loader.rs`); the leader runs `init` holding no lock, stores
    /// its value and hands it to the waiters. The leader's path hands the
    /// interpreter off twice: to join and recheck the cache, then to store the
    /// value and publish it.
    pub(crate) fn load<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        lookup: &KeyRef,
        init: impl FnOnce() -> PyResult<Bound<'py, PyAny>>,
        ttl: Option<Duration>,
        tti: Option<Duration>,
    ) -> PyResult<Py<PyAny>> {
        let mut init = Some(init);
        loop {
            // A load that finished between our miss and our join has already
            // stored its value: a new leader looks again, in the same section.
            let recheck = || self.store.load().get(lookup);
            match self
                .loads
                .join(py, lookup.to_owned(key), lookup.to_owned(key), recheck)?
            {
                Join::Waiter(load) => match load.wait(py)? {
                    Outcome::Value(value) => return Ok(value),
                    Outcome::Error(err) => return Err(err),
                    Outcome::Retry => {
                        if let Some(entry) = self.lookup(py, lookup)? {
                            return Ok(entry.obj.clone_ref(py));
                        }
                    }
                },
                Join::Leader(leader, rechecked) => {
                    // Deliver what the recheck may have queued.
                    let value = match (self.finish(py), rechecked, init.take()) {
                        (Err(err), _, _) => Err(err),
                        (Ok(()), Some(entry), _) => {
                            let result = Ok(entry.obj.clone_ref(py));
                            leader.finish(py, &result);
                            return result;
                        }
                        (Ok(()), None, Some(init)) => crate::detach::call_python(py, init),
                        // Unreachable: a call leads at most once, and a
                        // leader returns; kept so the loop stays total.
                        (Ok(()), None, None) => Err(pyo3::exceptions::PyRuntimeError::new_err(
                            "get_with: initializer already consumed",
                        )),
                    };
                    let owned = lookup.to_owned(key);
                    let stored = value.and_then(|value| {
                        let entry = self.prepare(py, &owned, &value, ttl, tti)?;
                        Ok((value, entry))
                    });
                    return match stored {
                        Ok((value, entry)) => {
                            let value = value.unbind();
                            let publish = leader.prepare(py, &Ok(value.clone_ref(py)));
                            detach(py, move || {
                                self.store_entry(owned, entry);
                                publish.run();
                            });
                            self.finish(py)?;
                            Ok(value)
                        }
                        Err(err) => {
                            let result = Err(err);
                            leader.finish(py, &result);
                            result
                        }
                    };
                }
            }
        }
    }

    /// What every method does when it is back from moka: raise a key's
    /// `__eq__` error, deliver queued eviction notifications.
    fn finish(&self, py: Python<'_>) -> PyResult<()> {
        if self.listener.is_some() {
            listener::deliver(py);
        }
        // Only a key compared by Python can have raised, and such a key marks
        // the cache before it reaches moka: without the mark this thread's
        // moka call compared no such key, and the thread-local is not read.
        if self.python_keys.load(Ordering::SeqCst) {
            key::take_eq_error()
        } else {
            Ok(())
        }
    }

    pub(crate) fn lookup(&self, py: Python<'_>, key: &KeyRef) -> PyResult<Option<Arc<Entry>>> {
        let found = if self.detach_reads.load(Ordering::SeqCst) {
            detach(py, || self.store.load().get(key))
        } else {
            self.store.load().get(key)
        };
        self.finish(py)?;
        Ok(found)
    }

    fn take(&self, py: Python<'_>, key: &KeyRef) -> PyResult<Option<Arc<Entry>>> {
        let found = detach(py, || self.store.load().remove(key));
        self.finish(py)?;
        Ok(found)
    }

    pub(crate) fn insert(
        &self,
        py: Python<'_>,
        key: Key,
        value: &Bound<'_, PyAny>,
        ttl: Option<Duration>,
        tti: Option<Duration>,
    ) -> PyResult<()> {
        let entry = self.prepare(py, &key, value, ttl, tti)?;
        detach(py, || self.store_entry(key, entry));
        self.finish(py)
    }

    /// The attached half of an insert: runs the weigher, refuses a key whose
    /// `__eq__` raises, and builds the entry.
    fn prepare(
        &self,
        py: Python<'_>,
        key: &Key,
        value: &Bound<'_, PyAny>,
        ttl: Option<Duration>,
        tti: Option<Duration>,
    ) -> PyResult<Arc<Entry>> {
        let weight = match self.weigher.as_ref().and_then(|w| w.get(py)) {
            Some(weigher) => {
                let weight =
                    crate::detach::call_python(py, || weigher.bind(py).call1((key.obj(), value)))?;
                options::weight(&weight)?
            }
            None => 1,
        };
        if key.uses_python_eq() {
            // A key whose `__eq__` raises must not be stored: probe first.
            detach(py, || self.store.load().contains_key(key));
            key::take_eq_error()?;
        }
        Ok(Arc::new(Entry::new(
            value.clone().unbind(),
            weight,
            ttl,
            tti,
        )))
    }

    /// The detached half of an insert (the caller then calls `finish`).
    fn store_entry(&self, key: Key, entry: Arc<Entry>) {
        let store = self.store.load();
        let weight = entry.weight;
        store.insert(key, entry);
        self.bound_size(&store, weight);
    }

    /// Keeps the size within `capacity + slack`: moka applies writes in
    /// batches, so on its own a small cache could run far over its capacity
    /// until the next batch. Runs detached.
    fn bound_size(&self, store: &Store, weight: u32) {
        let written = u64::from(weight);
        let unsynced = self.unsynced.fetch_add(written, Ordering::Relaxed) + written;
        if store.weighted_size().saturating_add(unsynced) > self.capacity.saturating_add(self.slack)
        {
            self.unsynced.store(0, Ordering::Relaxed);
            store.run_pending_tasks();
        }
    }

    /// The entries, collected detached: walking moka's table may wait on its
    /// resize lock, whose holder may need the interpreter for a key's `__eq__`.
    fn snapshot(&self, py: Python<'_>) -> PyResult<Vec<(Arc<Key>, Arc<Entry>)>> {
        let entries = detach(py, || self.store.load().iter().collect());
        self.finish(py)?;
        Ok(entries)
    }
}
