//! The store: the moka cache behind one `Moka`, and every operation on it.
//!
//! Plain Rust under the `Moka` class (`py/moka.rs`), which parses arguments
//! and calls it; batches (`py/bulk.rs`), reloads (`py/refresh.rs`) and the
//! decorator (`py/cached.rs`) use it too. Every operation reaches moka
//! through `call::enter` (see `call.rs` for which calls stay attached and
//! why no cycle of waits can form), and never runs Python code inside it:
//! keys are resolved first (`key.rs`, `intern.rs`), the weigher runs before
//! the insert, and what moka lets go of is queued and released after the
//! call (`deferred.rs`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_epoch::{self as epoch, Atomic, Guard, Owned};
use moka::ops::compute::{CompResult, Op};
use moka::sync::Cache;
use moka::Equivalent;
use pyo3::prelude::*;
use pyo3::{PyTraverseError, PyVisit};

use crate::store::call::{self, Span};
use crate::store::deferred;
use crate::store::entry::Entry;
use crate::store::expiry::PerEntry;
use crate::store::hash::PyHashBuilder;
use crate::store::intern::Interner;
use crate::store::key::{self, Key, KeyRef, Repr};
use crate::store::listener::Listener;
use crate::store::loader::Loads;
use crate::store::options::{self, Policy};
use crate::store::slot::PySlot;
use crate::store::stats::Stats;
use crate::store::tags::{Stamp, Tags};

/// moka's cache, as this binding instantiates it.
pub(crate) type Table = Cache<Key, Arc<Entry>, PyHashBuilder>;

/// One cache's state: its moka table and what the operations on it need.
pub(crate) struct Store {
    /// The moka table. `clear()` swaps in a fresh one, so that nothing of the
    /// old one (moka keeps removed keys in tombstones of its table) stays
    /// alive; a call that was already using the old one finishes on it (see
    /// [`Pinned`]). Freed by hand in `Drop`, to release its references then.
    table: Atomic<Table>,
    loads: Loads,
    /// Canonical ids of the keys compared by Python `==`; made on first use.
    interner: OnceLock<Arc<Interner>>,
    listener: Option<Arc<Listener>>,
    weigher: Option<PySlot>,
    capacity: u64,
    /// How far over `capacity` the cache may go before a write runs moka's
    /// housekeeping itself (see [`Store::bound_size`]).
    slack: u64,
    /// Whether writes must count what they add (see [`needs_bound`]).
    bounded: bool,
    /// Weight written since this binding last ran housekeeping.
    unsynced: AtomicU64,
    /// With a weigher: whether anything was written since this binding last
    /// ran housekeeping (see [`Store::settle`]).
    dirty: AtomicBool,
    /// Set once an entry has its own `ttl`/`tti`: moka then notices some
    /// expirations only on its timer wheel's next tick (about a second), so
    /// `len` counts the live entries instead of reading moka's count.
    per_entry: AtomicBool,
    pub(crate) settings: Settings,
    /// With `stats=True`: what the cache records (`stats.rs`).
    pub(crate) stats: Option<Arc<Stats>>,
    /// Whether reads report entries due for a refresh (`refresh_after=`).
    refreshes: bool,
    /// The tags' epochs (`tags.rs`).
    pub(crate) tags: Tags,
}

/// What a new moka store is built with (the constructor's options).
#[derive(Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) capacity: u64,
    pub(crate) policy: Policy,
    pub(crate) ttl: Option<Duration>,
    pub(crate) tti: Option<Duration>,
    pub(crate) refresh_after: Option<Duration>,
    /// How long after its `ttl` an entry stays for a failed load to return
    /// (`stale_if_error=`; a cache with it has a `ttl` and no `tti`).
    pub(crate) stale_if_error: Option<Duration>,
}

/// moka's hash table frees removed entries through epoch-based reclamation,
/// in batches; until then they keep their values (and keys) alive. `clear()`
/// and `run_pending_tasks()` push this thread's pending garbage out and
/// collect what every thread left (each flush advances the epoch once and
/// collects a few batches; threads that ended left theirs in the global
/// queue), so afterwards the cache holds no reference to removed values (a
/// per-`remove` flush would triple its cost). What that frees is queued and
/// released after the call.
/// Tables retired by `clear()` are freed by [`free_retired`], attached, after.
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
fn build_table(
    settings: Settings,
    listener: Option<&Arc<Listener>>,
    stats: Option<&Arc<Stats>>,
) -> Table {
    let grace = settings.stale_if_error.unwrap_or_default();
    let mut builder = Cache::builder()
        .max_capacity(settings.capacity)
        .eviction_policy(settings.policy.to_moka())
        .expire_after(PerEntry {
            refresh_after: settings.refresh_after,
            grace,
        })
        .weigher(|_: &Key, entry: &Arc<Entry>| entry.weight);
    if let Some(ttl) = settings.ttl {
        builder = builder.time_to_live(ttl.saturating_add(grace));
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

/// The entry of `key` in `table` as every read sees it: present, not
/// expired, and current (no tag of it invalidated; with `stale_if_error`,
/// not past its `ttl`: see [`Entry::current`]). A read of moka, so an access.
#[inline(always)]
pub(crate) fn live<Q>(table: &Table, key: &Q) -> Option<Arc<Entry>>
where
    Q: Equivalent<Key> + std::hash::Hash + ?Sized,
{
    table.get(key).filter(|e| e.current())
}

/// The entries of `table` that reads see (see [`live`]).
fn live_entries(table: &Table) -> impl Iterator<Item = (Arc<Key>, Arc<Entry>)> + '_ {
    table.iter().filter(|(_, e)| e.current())
}

/// The table of a store, for as long as the calling thread stays pinned in
/// crossbeam's epoch (which moka's own reads and writes pin anyway, so its
/// pins inside become nested ones, a counter's increment): a table that
/// `clear()` swaps out is freed only once every thread pinned before has
/// let go. A plain atomic load where an `ArcSwap` took about 50 instructions
/// and a thread-local per read. Never held across a [`reclaim`] (it would
/// keep the epoch from advancing).
pub(crate) struct Pinned<'a> {
    table: &'a Table,
    _guard: Guard,
}

impl std::ops::Deref for Pinned<'_> {
    type Target = Table;
    #[inline]
    fn deref(&self) -> &Table {
        self.table
    }
}

/// The table for a call into moka made attached on the GIL build (a
/// [`Span::Read`] on every build, a [`Span::Write`] on the GIL build; see
/// `call.rs`): there, a plain load, without crossbeam's pin (its
/// thread-local and counters, about 30 instructions a read). Sound because
/// on the GIL build the thread holds the GIL from the load to the end of its
/// use of the table (the call runs no Python code and does not detach), and
/// a table swapped out is freed only by a thread holding the GIL
/// ([`free_retired`]): it cannot be freed while such a thread reads it. On
/// the free-threaded build, where attached threads run at once, it is
/// [`Pinned`].
#[cfg(not(Py_GIL_DISABLED))]
pub(crate) struct Held<'a>(&'a Table);

#[cfg(not(Py_GIL_DISABLED))]
impl std::ops::Deref for Held<'_> {
    type Target = Table;
    #[inline]
    fn deref(&self) -> &Table {
        self.0
    }
}

#[cfg(Py_GIL_DISABLED)]
pub(crate) type Held<'a> = Pinned<'a>;

/// Tables swapped out by `clear()`, handed over by crossbeam's collector once
/// no pinned thread can still be reading them, and freed by the next
/// [`free_retired`] (outside the collector: freeing a moka table pins and
/// defers in turn). Lock: held to push or take the list, nothing else.
// Boxed: readers point into the box, which must stay where it is (not be
// moved out of) until it is freed.
#[allow(clippy::vec_box)]
static RETIRED: Mutex<Vec<Box<Table>>> = Mutex::new(Vec::new());

/// Frees the tables that [`RETIRED`] holds (what they held is queued,
/// released after the call, as everything moka lets go of). Attached (the
/// token): on the GIL build, a thread that holds the GIL reads the table
/// without pinning ([`Store::table_held`]), so a table is freed only by a
/// thread that holds the GIL, which that reader then cannot be using.
fn free_retired(_py: Python<'_>) {
    let tables = std::mem::take(&mut *RETIRED.lock().unwrap_or_else(PoisonError::into_inner));
    drop(tables);
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

impl Store {
    /// A new, empty store. `listener` and `weigher` are callables (checked
    /// by the caller).
    pub(crate) fn new(
        settings: Settings,
        listener: Option<Py<PyAny>>,
        weigher: Option<Py<PyAny>>,
        stats: bool,
        refreshes: bool,
    ) -> Self {
        let listener = listener.map(Listener::new);
        let stats = stats.then(|| Arc::new(Stats::default()));
        let slack = slack_for(settings.capacity, weigher.is_some());
        Store {
            table: Atomic::new(build_table(settings, listener.as_ref(), stats.as_ref())),
            loads: Loads::default(),
            interner: OnceLock::new(),
            listener,
            slack,
            bounded: needs_bound(slack, weigher.is_some()),
            weigher: weigher.map(PySlot::new),
            capacity: settings.capacity,
            unsynced: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
            // With `stale_if_error`, moka keeps expired entries: `len` walks.
            per_entry: AtomicBool::new(settings.stale_if_error.is_some()),
            settings,
            stats,
            refreshes,
            tags: Tags::new(),
        }
    }

    /// Whether the cache has an eviction listener or a weigher: Python code
    /// that its operations call.
    #[inline]
    pub(crate) fn has_callbacks(&self) -> bool {
        self.listener.is_some() || self.weigher.is_some()
    }

    /// Removes every entry (the listener sees each with cause `"explicit"`).
    pub(crate) fn clear(&self, py: Python<'_>) {
        call::enter(
            py,
            Span::Long,
            || {
                self.swap_table(|old| {
                    old.invalidate_all();
                    old.run_pending_tasks();
                });
                self.unsynced.store(0, Ordering::Relaxed);
                reclaim();
            },
            |()| free_retired(py),
        );
    }

    /// The number of entries as moka last counted them, without applying
    /// pending evictions (an atomic read: no housekeeping, so no listener
    /// runs). For metrics, read by a collector's thread.
    pub(crate) fn approx_count(&self) -> u64 {
        self.table().entry_count()
    }

    /// The number of entries, after applying pending evictions.
    pub(crate) fn count(&self, py: Python<'_>) -> u64 {
        self.sweep(py);
        self.sync(py, |store, walk| {
            if walk {
                live_entries(store).count() as u64
            } else {
                store.entry_count()
            }
        })
    }

    /// The total weight of the entries (their number without a weigher).
    pub(crate) fn weighted_size(&self, py: Python<'_>) -> u64 {
        self.sweep(py);
        self.sync(py, |store, walk| {
            if walk {
                live_entries(store).map(|(_, e)| u64::from(e.weight)).sum()
            } else {
                store.weighted_size()
            }
        })
    }

    /// Applies pending evictions and expirations now, and removes the
    /// entries invalidated by tag.
    pub(crate) fn run_pending_tasks(&self, py: Python<'_>) {
        self.sweep(py);
        self.sync(py, |_, _| ());
    }

    /// Removes the entries that an `invalidate_tags` since the last sweep
    /// made out of date (reads already skip them): one walk of the table
    /// after any number of invalidations, by `len()` and
    /// `run_pending_tasks()`. An entry written again meanwhile stays.
    fn sweep(&self, py: Python<'_>) {
        if !self.tags.take_unswept() {
            return;
        }
        let stale = call::enter(
            py,
            Span::Long,
            || {
                self.table()
                    .iter()
                    .filter(|(_, e)| !e.current())
                    .collect::<Vec<_>>()
            },
            |stale| {
                stale
                    .into_iter()
                    .map(|(k, e)| (k.clone_ref(py), e))
                    .collect::<Vec<_>>()
            },
        );
        self.remove_seen(py, stale);
    }

    /// Removes each `(key, entry)` where that entry still is (not one
    /// written since); how many were removed.
    pub(crate) fn remove_seen(&self, py: Python<'_>, chosen: Vec<(Key, Arc<Entry>)>) -> u64 {
        if chosen.is_empty() {
            return 0;
        }
        self.write_batch(py, move |store, _| {
            self.settle(store);
            let mut removed = 0;
            for (key, seen) in chosen {
                let result = store.entry(key).and_compute_with(|current| match current {
                    Some(current) if Arc::ptr_eq(current.value(), &seen) => Op::Remove,
                    _ => Op::Nop,
                });
                if matches!(result, CompResult::Removed(_)) {
                    removed += 1;
                }
            }
            removed
        })
    }

    /// `in`: does not count as an access (for `tti` or eviction), unless
    /// the cache has tags or `stale_if_error`: then the entry is read, to
    /// check them (moka has no read of an entry that is not an access).
    pub(crate) fn contains(&self, py: Python<'_>, key: &KeyRef) -> bool {
        call::enter(
            py,
            Span::Read,
            || {
                let store = self.table_held();
                if self.tags.used() || self.settings.stale_if_error.is_some() {
                    live(&store, key).is_some()
                } else {
                    store.contains_key(key)
                }
            },
            |found| found,
        )
    }

    /// Visits every Python object the store holds (the GC's `__traverse__`).
    pub(crate) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(l) = &self.listener {
            l.traverse(visit)?;
        }
        if let Some(w) = &self.weigher {
            w.traverse(visit)?;
        }
        if let Some(interner) = self.interner.get() {
            interner.traverse(visit)?;
        }
        // Walking moka's table runs no Python code. Its epoch pin may free
        // garbage of other threads' removals; that is only queued (released
        // at this thread's next call, or at exit), never released here.
        for (key, entry) in self.table().iter() {
            visit.call(key.obj())?;
            visit.call(&*entry.obj)?;
        }
        Ok(())
    }

    /// The GC's `__clear__`: drops the table (notifying no listener) and the
    /// callbacks. What they held is queued: the caller releases it.
    pub(crate) fn gc_clear(&self, py: Python<'_>) {
        // No thread is inside a method of an object the GC is clearing (it
        // would hold a reference), so nothing here waits on another thread.
        self.swap_table(|_| ());
        reclaim();
        free_retired(py);
        self.clear_callbacks();
    }

    /// Whether an entry of this cache can expire: a cache-wide `ttl`/`tti`,
    /// or an entry ever given its own.
    #[inline]
    pub(crate) fn can_expire(&self) -> bool {
        self.settings.ttl.is_some()
            || self.settings.tti.is_some()
            || self.per_entry.load(Ordering::Acquire)
    }

    fn fresh_table(&self) -> Table {
        build_table(self.settings, self.listener.as_ref(), self.stats.as_ref())
    }

    /// The current table, pinned (see [`Pinned`]).
    #[inline]
    pub(crate) fn table(&self) -> Pinned<'_> {
        let guard = epoch::pin();
        let table = self.table.load(Ordering::Acquire, &guard);
        // SAFETY: the table is never null (made in `new`, replaced by
        // `swap_table`), and one swapped out is freed only after every thread
        // pinned before the swap has unpinned: `guard` lives as long as the
        // reference, in the same `Pinned`.
        let table = unsafe { &*table.as_raw() };
        Pinned {
            table,
            _guard: guard,
        }
    }

    /// The current table, for an `op` of [`call::enter`] that runs attached
    /// on the GIL build: a [`Span::Read`], or a [`Span::Write`] (see [`Held`]).
    #[cfg(not(Py_GIL_DISABLED))]
    #[inline]
    fn table_held(&self) -> Held<'_> {
        debug_assert!(
            // SAFETY: reads this thread's current thread state; no locks.
            unsafe { !pyo3::ffi::compat::PyThreadState_GetUnchecked().is_null() },
            "an unpinned read of the table while detached"
        );
        // SAFETY: the table is never null (see `table`); the caller holds
        // the GIL for as long as it uses the reference (see `Held`).
        Held(unsafe {
            &*self
                .table
                .load(Ordering::Acquire, epoch::unprotected())
                .as_raw()
        })
    }

    #[cfg(Py_GIL_DISABLED)]
    #[inline]
    fn table_held(&self) -> Held<'_> {
        self.table()
    }

    /// Puts a fresh table in place of the current one; `finish` runs on the
    /// old one (still visible to the calls already using it), which is
    /// retired once no thread can be reading it (see [`RETIRED`]).
    fn swap_table(&self, finish: impl FnOnce(&Table)) {
        let guard = epoch::pin();
        let old = self
            .table
            .swap(Owned::new(self.fresh_table()), Ordering::AcqRel, &guard);
        // SAFETY: `old` was the current table until the swap; only this call
        // retires it, after every thread pinned now has let go.
        unsafe {
            finish(old.deref());
            let old = old.into_owned().into_box();
            guard.defer_unchecked(move || {
                RETIRED
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(old);
            });
        }
    }

    /// Lets go of the listener and the weigher (queued, as every release).
    pub(crate) fn clear_callbacks(&self) {
        if let Some(l) = &self.listener {
            l.clear();
        }
        if let Some(w) = &self.weigher {
            w.clear();
        }
    }

    pub(crate) fn loads(&self) -> &Loads {
        &self.loads
    }

    pub(crate) fn stats_or_err(&self) -> PyResult<&Stats> {
        self.stats.as_deref().ok_or_else(|| {
            crate::store::errors::Error::Value(
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
    /// key that cannot be present (see [`Store::key_ref`]).
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
        let refreshes = self.refreshes;
        let found = key.and_then(|key| {
            call::enter(
                py,
                Span::Read,
                || live(&self.table_held(), key),
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
        if let Some((hash, repr)) = key::common(obj) {
            return Ok(Key::new(hash, repr, obj));
        }
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

    /// [`Store::key_ref`] for a read (see [`Store::read_key_hashed`]).
    #[inline(always)]
    pub(crate) fn read_key(&self, obj: &Bound<'_, PyAny>) -> PyResult<Option<KeyRef>> {
        Ok(self.read_key_hashed(obj)?.1)
    }

    /// [`Store::key_ref`] with `obj`'s hash, for [`Store::owned_hashed`]: a
    /// miss of `@cached` then runs the arguments' `__hash__` once, not twice.
    #[inline]
    pub(crate) fn key_ref_hashed(
        &self,
        obj: &Bound<'_, PyAny>,
    ) -> PyResult<(isize, Option<KeyRef>)> {
        if let Some((hash, repr)) = key::common(obj) {
            return Ok((hash, Some(KeyRef::new(hash, repr))));
        }
        self.resolve(obj, key::describe(obj)?)
    }

    /// [`Store::key_ref_hashed`] for a read ([`Store::read`],
    /// [`Store::read_for_load`], [`Store::contains`]: attached on every
    /// build): a tuple of native items is compared only with entries of its
    /// hash, and built only when one is found (`key::describe_read`).
    #[inline(always)]
    pub(crate) fn read_key_hashed(
        &self,
        obj: &Bound<'_, PyAny>,
    ) -> PyResult<(isize, Option<KeyRef>)> {
        if let Some((hash, repr)) = key::common(obj) {
            return Ok((hash, Some(KeyRef::new(hash, repr))));
        }
        self.resolve(obj, key::describe_read(obj)?)
    }

    /// The lookup form of a described key: a key compared by Python is
    /// looked up among the canonical ones (absent if it was never stored).
    #[inline]
    fn resolve(
        &self,
        obj: &Bound<'_, PyAny>,
        (hash, repr): (isize, Repr),
    ) -> PyResult<(isize, Option<KeyRef>)> {
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

    /// The owned key of `obj`, for a key whose hash [`Store::key_ref_hashed`] gave:
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
        tags: Option<Stamp>,
    ) -> PyResult<Py<PyAny>> {
        self.load_keeping(py, key, init, |_| Ok(true), ttl, tti, tags)
    }

    /// [`Store::load`] for `@cached(cache_if=...)`: the leader stores the
    /// value only when `keep(value)` is true (run attached, holding no lock,
    /// like the weigher); every waiter receives the value either way.
    pub(crate) fn load_if<'py>(
        &self,
        py: Python<'py>,
        key: Key,
        init: impl FnOnce() -> PyResult<Bound<'py, PyAny>>,
        keep: impl FnOnce(&Bound<'py, PyAny>) -> PyResult<bool>,
        tags: Option<Stamp>,
    ) -> PyResult<Py<PyAny>> {
        self.load_keeping(py, key, init, keep, None, None, tags)
    }

    /// The single-flight load; with `stale_if_error`, a load that raises is
    /// answered with the key's expired entry if moka still keeps one (then
    /// nothing is stored, and the next call loads again).
    #[allow(clippy::too_many_arguments)]
    fn load_keeping<'py>(
        &self,
        py: Python<'py>,
        key: Key,
        init: impl FnOnce() -> PyResult<Bound<'py, PyAny>>,
        keep: impl FnOnce(&Bound<'py, PyAny>) -> PyResult<bool>,
        ttl: Option<Duration>,
        tti: Option<Duration>,
        tags: Option<Stamp>,
    ) -> PyResult<Py<PyAny>> {
        let stale = if self.settings.stale_if_error.is_some() {
            self.stale_entry(py, &key)
        } else {
            None
        };
        let served = std::cell::Cell::new(false);
        self.loads.load(
            py,
            key,
            |key| self.lookup(py, key),
            || match (self.compute(init), stale) {
                (Err(err), Some(stale))
                    if err.is_instance_of::<pyo3::exceptions::PyException>(py)
                        && stale.stale_servable() =>
                {
                    drop(err);
                    served.set(true);
                    self.count_stale();
                    Ok(stale.obj.clone_ref(py).into_bound(py))
                }
                (result, _) => result,
            },
            |key, value| {
                if !served.get() && keep(value)? {
                    self.insert_key(py, key, value, ttl, tti, tags)
                } else {
                    Ok(())
                }
            },
        )
    }

    /// The entry of `key` that moka keeps past its expiry (`stale_if_error`).
    fn stale_entry<Q>(&self, py: Python<'_>, key: &Q) -> Option<Arc<Entry>>
    where
        Q: Equivalent<Key> + std::hash::Hash + Sync + ?Sized,
    {
        call::enter(
            py,
            Span::Read,
            || self.table_held().get(key).filter(|e| e.stale_servable()),
            |entry| entry,
        )
    }

    /// For a load of `key` that raised (outside [`Store::load`]): the value
    /// expired at most `stale_if_error` ago, if moka still keeps it, counted
    /// in the statistics as served.
    pub(crate) fn stale_value(&self, py: Python<'_>, key: Option<&KeyRef>) -> Option<Py<PyAny>> {
        self.settings.stale_if_error?;
        let entry = self.stale_entry(py, key?)?;
        self.count_stale();
        Some(entry.obj.clone_ref(py))
    }

    fn count_stale(&self) {
        if let Some(stats) = &self.stats {
            stats.stale_served();
        }
    }

    /// The value of `key`, if present (and not expired).
    pub(crate) fn lookup<Q>(&self, py: Python<'_>, key: &Q) -> Option<Py<PyAny>>
    where
        Q: Equivalent<Key> + std::hash::Hash + Sync + ?Sized,
    {
        call::enter(
            py,
            Span::Read,
            || live(&self.table_held(), key),
            |entry| entry.map(|e| e.obj.clone_ref(py)),
        )
    }

    /// Removes `key`; its value if it was present. An expired entry counts as
    /// absent here as everywhere: it is left for moka to evict. Only a cache
    /// where something can expire asks moka first (`remove` returns an
    /// expired entry's value); the lookup is about 300 instructions.
    pub(crate) fn take(&self, py: Python<'_>, key: &KeyRef) -> Option<Py<PyAny>> {
        call::enter(
            py,
            Span::Write,
            || {
                let store = self.table_held();
                if self.can_expire() && !store.contains_key(key) {
                    None
                } else {
                    // (One invalidated by tag is removed, as absent.)
                    self.remove_in(&store, key).filter(|e| e.current())
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
        tags: Option<Stamp>,
    ) -> PyResult<()> {
        let key = self.key(key)?;
        self.insert_key(py, key, value, ttl, tti, tags)
    }

    /// Stores `value` under an owned key (an error of the weigher drops it).
    pub(crate) fn insert_key(
        &self,
        py: Python<'_>,
        key: Key,
        value: &Bound<'_, PyAny>,
        ttl: Option<Duration>,
        tti: Option<Duration>,
        tags: Option<Stamp>,
    ) -> PyResult<()> {
        match self.entry(py, key.obj().bind(py), value, ttl, tti, tags) {
            Ok(entry) => {
                let held = [key.obj().as_ptr(), value.as_ptr()];
                let weight = entry.weight;
                self.write_holding(py, weight, move |store| store.insert(key, entry), held);
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
        tags: Option<Stamp>,
    ) -> PyResult<Arc<Entry>> {
        let weight = match self.weigher.as_ref().and_then(|w| w.get(py)) {
            Some(weigher) => {
                let weight = call::call_python(py, || weigher.bind(py).call1((key, value)))?;
                options::weight(&weight)?
            }
            None => 1,
        };
        if (ttl.is_some() || tti.is_some()) && !self.per_entry.load(Ordering::Relaxed) {
            // Before the insert: a thread that finds the entry then sees it.
            self.per_entry.store(true, Ordering::Release);
        }
        // With `stale_if_error` (and so a cache-wide `ttl`): when reads stop
        // seeing the entry.
        let expires = match (self.settings.stale_if_error, self.settings.ttl) {
            (Some(_), Some(all)) => Some(Instant::now() + ttl.map_or(all, |own| own.min(all))),
            _ => None,
        };
        Ok(Arc::new(Entry::new(
            value.clone().unbind(),
            weight,
            ttl,
            tti,
            tags,
            expires,
        )))
    }

    /// A write of one key: `op` on the store, then the size bound for the
    /// `weight` it added.
    pub(crate) fn write<T: Send>(
        &self,
        py: Python<'_>,
        weight: u32,
        op: impl FnOnce(&Table) -> T + Send,
    ) -> T {
        self.write_holding(py, weight, op, deferred::NOT_HELD)
    }

    /// [`Store::write`] of an entry whose key and value objects are `held`
    /// (see `deferred::run_holding`).
    fn write_holding<T: Send>(
        &self,
        py: Python<'_>,
        weight: u32,
        op: impl FnOnce(&Table) -> T + Send,
        held: deferred::Held,
    ) -> T {
        call::enter_holding(
            py,
            Span::Write,
            || {
                let store = self.table_held();
                let out = op(&store);
                if self.bounded {
                    self.bound_size(&store, weight);
                }
                out
            },
            |out| out,
            held,
        )
    }

    /// A write of a batch (`bulk.rs`): `op` gets the store and a function
    /// that keeps the size bound for the weight of each insert; detached, as
    /// a batch can last.
    pub(crate) fn write_batch<T: Send>(
        &self,
        py: Python<'_>,
        op: impl FnOnce(&Table, &dyn Fn(&Table, u32)) -> T + Send,
    ) -> T {
        call::enter(
            py,
            Span::Long,
            || {
                let store = self.table();
                let bound = |store: &Table, weight: u32| {
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
        op: impl FnOnce(&Table) -> T + Send,
        then: impl FnOnce(T) -> R,
    ) -> R {
        call::enter(py, Span::Long, || op(&self.table()), then)
    }

    /// Keeps the size within `capacity + slack`: moka applies writes in
    /// batches, so on its own a small cache could run far over its capacity
    /// until the next batch.
    fn bound_size(&self, store: &Table, weight: u32) {
        if self.weigher.is_some() && !self.dirty.load(Ordering::Relaxed) {
            self.dirty.store(true, Ordering::Relaxed);
        }
        let written = u64::from(weight);
        let unsynced = self.unsynced.fetch_add(written, Ordering::Relaxed) + written;
        if store.weighted_size().saturating_add(unsynced) > self.capacity.saturating_add(self.slack)
        {
            self.housekeep(store);
        }
    }

    /// Runs moka's housekeeping on `store` (a table of this store) now: its
    /// pending writes, evictions and expirations. What is written from here
    /// on counts as not applied yet.
    fn housekeep(&self, store: &Table) {
        self.dirty.store(false, Ordering::Relaxed);
        self.unsynced.store(0, Ordering::Relaxed);
        store.run_pending_tasks();
    }

    /// Called before a removal from `store`, which it must be a table of this
    /// store: with a weigher, applies the writes moka has not applied yet.
    ///
    /// moka (0.12.16) miscounts the total weight when an entry is replaced by
    /// one of another weight and then removed before its housekeeping ran: the
    /// replacement's pending update is skipped for the retired entry, but the
    /// removal subtracts the new weight, so the cache's weighted size drifts
    /// from its contents for good (below it: the cache then holds more than
    /// its capacity; above it: it evicts early). Applying the pending writes
    /// first keeps the count exact for one thread; a replacement by another
    /// thread between the two can still drift by its difference in weight.
    pub(crate) fn settle(&self, store: &Table) {
        if self.weigher.is_some() && self.dirty.load(Ordering::Relaxed) {
            self.housekeep(store);
        }
    }

    /// Removes `key` from `store` (a table of this store), [settled](Self::settle)
    /// first: every removal of one key goes through here.
    pub(crate) fn remove_in<Q>(&self, store: &Table, key: &Q) -> Option<Arc<Entry>>
    where
        Q: Equivalent<Key> + std::hash::Hash + ?Sized,
    {
        self.settle(store);
        store.remove(key)
    }

    /// Applies pending evictions and expirations, then reads `f` of the store;
    /// `f`'s second argument says whether it must walk the entries to skip
    /// expired ones (see `per_entry`).
    fn sync<T: Send>(&self, py: Python<'_>, f: impl FnOnce(&Table, bool) -> T + Send) -> T {
        call::enter(
            py,
            Span::Long,
            || {
                self.housekeep(&self.table());
                // Unpinned: the epoch may advance and free what is pending.
                reclaim();
                f(&self.table(), self.per_entry.load(Ordering::Relaxed))
            },
            |out| {
                free_retired(py);
                out
            },
        )
    }

    /// Calls `f` with the entries, collected detached (a long walk); `f`
    /// runs attached and may build Python objects.
    pub(crate) fn snapshot<R>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(Vec<(Arc<Key>, Arc<Entry>)>) -> R,
    ) -> R {
        call::enter(py, Span::Long, || live_entries(&self.table()).collect(), f)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: no other reference to the store exists (`&mut self`), so
        // no thread reads the table; it is freed here, once.
        unsafe {
            let table = self.table.swap(
                epoch::Shared::null(),
                Ordering::AcqRel,
                epoch::unprotected(),
            );
            if !table.is_null() {
                drop(table.into_owned());
            }
        }
        reclaim();
        drop(self.interner.take());
        self.clear_callbacks();
        // Release what the table and the interner held now, not at some
        // later call (attached: the last owner is a Python object or a call).
        Python::attach(|py| {
            free_retired(py);
            call::after(py);
        });
    }
}

/// The store's own invariants, on an embedded interpreter (`ci/test.sh rust`).
#[cfg(test)]
mod tests {
    use super::*;
    use pyo3::types::{PyInt, PyList};

    fn store(capacity: u64, ttl: Option<Duration>, weigher: Option<&str>) -> Store {
        Python::attach(|py| {
            let weigher = weigher.map(|code| {
                let code = std::ffi::CString::new(code).unwrap();
                py.eval(&code, None, None).unwrap().unbind()
            });
            let settings = Settings {
                capacity,
                policy: Policy::TinyLfu,
                ttl,
                tti: None,
                refresh_after: None,
                stale_if_error: None,
            };
            Store::new(settings, None, weigher, false, false)
        })
    }

    fn int(py: Python<'_>, v: i64) -> Bound<'_, PyAny> {
        PyInt::new(py, v).into_any()
    }

    fn get(store: &Store, py: Python<'_>, k: i64) -> Option<Py<PyAny>> {
        store.read(py, store.key_ref(&int(py, k)).unwrap().as_ref())
    }

    fn init() {
        Python::initialize();
    }

    #[test]
    fn an_expired_entry_is_absent_everywhere() {
        init();
        let store = store(100, Some(Duration::from_millis(30)), None);
        Python::attach(|py| {
            store
                .insert(py, &int(py, 1), &int(py, 10), None, None, None)
                .unwrap();
            assert!(get(&store, py, 1).is_some());
            std::thread::sleep(Duration::from_millis(60));
            let key = store.key_ref(&int(py, 1)).unwrap().unwrap();
            assert!(get(&store, py, 1).is_none());
            assert!(!store.contains(py, &key));
            assert!(
                store.take(py, &key).is_none(),
                "remove returns no expired value"
            );
            assert_eq!(store.count(py), 0);
        });
    }

    #[test]
    fn a_removed_value_is_released_once_by_housekeeping() {
        init();
        let store = store(100, None, None);
        Python::attach(|py| {
            let value = PyList::empty(py).into_any();
            let base = value.get_refcnt();
            store
                .insert(py, &int(py, 1), &value, None, None, None)
                .unwrap();
            assert_eq!(
                value.get_refcnt(),
                base + 1,
                "the entry holds one reference"
            );
            let key = store.key_ref(&int(py, 1)).unwrap().unwrap();
            let taken = store.take(py, &key).expect("present");
            assert!(taken.bind(py).is(&value));
            drop(taken);
            // moka frees removed entries in batches: run_pending_tasks pushes
            // them out, and what that frees is released after the call.
            store.run_pending_tasks(py);
            assert_eq!(value.get_refcnt(), base);
            store.run_pending_tasks(py);
            assert_eq!(value.get_refcnt(), base, "released once");
        });
    }

    #[test]
    fn the_bound_holds_after_every_write() {
        init();
        for capacity in [1, 10, 100] {
            let store = store(capacity, None, None);
            Python::attach(|py| {
                for i in 0..500 {
                    store
                        .insert(py, &int(py, i), &int(py, i), None, None, None)
                        .unwrap();
                    let size = store.snapshot(py, |entries| entries.len() as u64);
                    assert!(
                        size <= capacity + slack_for(capacity, false),
                        "{size} > {capacity}"
                    );
                }
            });
        }
    }

    #[test]
    fn the_weighted_size_stays_exact_when_a_replaced_entry_is_removed() {
        init();
        let store = store(10, None, Some("lambda k, v: v"));
        Python::attach(|py| {
            for _ in 0..4 {
                store
                    .insert(py, &int(py, 1), &int(py, 5), None, None, None)
                    .unwrap();
                store.run_pending_tasks(py);
                store
                    .insert(py, &int(py, 1), &int(py, 0), None, None, None)
                    .unwrap();
                let key = store.key_ref(&int(py, 1)).unwrap().unwrap();
                assert!(store.take(py, &key).is_some());
                assert_eq!(store.weighted_size(py), 0);
            }
        });
    }

    #[test]
    fn slack_is_a_32nd_and_at_most_256_entries_without_a_weigher() {
        assert_eq!(slack_for(31, false), 0);
        assert_eq!(slack_for(64, false), 2);
        assert_eq!(slack_for(1 << 20, false), 256);
        assert_eq!(slack_for(1 << 20, true), 1 << 15);
        // Without a weigher, moka's own batch keeps a large cache bounded.
        assert!(needs_bound(2, false) && !needs_bound(256, false) && needs_bound(256, true));
    }
}
