//! Refresh-ahead (`Moka(..., refresh_after=seconds)`).
//!
//! moka's read hook marks an entry stale once it is older than
//! `refresh_after` (`expiry.rs`). When `get_with` (or `@cached`) finds a stale
//! entry it returns the value at once and starts a reload:
//!
//! 1. the reload claims the key in the cache's in-flight loads (`loader.rs`),
//!    so at most one load of a key runs at a time, and a `get_with` that
//!    misses meanwhile waits for this reload instead of starting its own;
//!    when a load is in flight already, nothing starts;
//! 2. a sync reload, a [`Reload`] (a callable holding the claim), is
//!    submitted to the executor: the `concurrent.futures.Executor` given as
//!    `executor=`, or the default pool, a `ThreadPoolExecutor` shared by every
//!    cache and made on first use (again after a `fork`, whose child has no
//!    thread of the parent's pool). An async reload (`aget_with`, `@cached` on
//!    `async def`) gets a [`Claim`] and runs as a task on the caller's loop;
//! 3. the reload runs the initializer (attached, holding no lock) and stores
//!    its result where the entry it found stale still is, or where the entry
//!    is gone but a `get_with` waits for the reload; a newer write wins, and
//!    a removal stays a removal. Then it wakes the waiters. If the
//!    initializer raises, the old value stays until it expires, the waiters
//!    get the exception, and it goes to `sys.unraisablehook`. The entry stays
//!    stale, so a later read retries.
//!
//! A claim that is never finished (the executor refused the job or dropped it
//! at shutdown, the task never ran) is abandoned when dropped: waiters start
//! over.
//!
//! Locks: the claim and the store take the in-flight map's shard lock and
//! moka's key lock through `call::enter`, as any write; the job mutexes and
//! the default pool's mutex are held only to take or swap a value out, never
//! while Python code runs or a reference is released.

use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use moka::ops::compute::Op;
use pyo3::exceptions::PyBaseException;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use pyo3::{intern, PyTraverseError, PyVisit};

use crate::store::cache::Store;
use crate::store::call;
use crate::store::deferred::PyOwned;
use crate::store::entry::Entry;
use crate::store::key::Key;
use crate::store::loader::{fork_generation, Load};
use crate::store::slot::PySlot;
use crate::store::tags::Stamp;

/// The cache's refresh settings and executor.
pub(crate) struct Refresher {
    pub(crate) after: Duration,
    /// The executor given as `executor=`; without one, [`default_pool`].
    given: Option<PySlot>,
}

/// What a reload calls: `func(*args, **kwargs)`, and whether its result is
/// stored: `keep(result)` (`@cached(cache_if=)`), or always.
pub(crate) struct Call {
    pub(crate) func: Py<PyAny>,
    pub(crate) args: Py<PyTuple>,
    pub(crate) kwargs: Option<Py<PyDict>>,
    pub(crate) keep: Option<Py<PyAny>>,
}

/// How the reloaded value is stored.
pub(crate) struct Target {
    pub(crate) key: Key,
    /// The entry found stale: the reload replaces it (see the module comment).
    pub(crate) seen: Arc<Entry>,
    ttl: Option<Duration>,
    tti: Option<Duration>,
    /// The entry's tags, at their epochs when the reload began (so that an
    /// invalidation during the reload dates the reloaded value too).
    tags: Option<Stamp>,
}

impl Target {
    pub(crate) fn new(
        key: Key,
        seen: Arc<Entry>,
        ttl: Option<Duration>,
        tti: Option<Duration>,
    ) -> Self {
        let tags = seen.tags().map(Stamp::renewed);
        Target {
            key,
            seen,
            ttl,
            tti,
            tags,
        }
    }
}

/// The default pool of every cache without `executor=`, with the fork
/// generation it was made in.
static DEFAULT_POOL: Mutex<Option<(u64, PyOwned)>> = Mutex::new(None);

/// The default pool, made on first use and again in a forked child.
fn default_pool(py: Python<'_>) -> PyResult<Py<PyAny>> {
    let generation = fork_generation();
    let current = |slot: &Option<(u64, PyOwned)>| match slot {
        Some((made, pool)) if *made == generation => Some(pool.clone_ref(py)),
        _ => None,
    };
    if let Some(pool) = current(&DEFAULT_POOL.lock().unwrap_or_else(PoisonError::into_inner)) {
        return Ok(pool);
    }
    // Made outside the lock; a thread that loses the race to install its
    // pool drops it unused (no thread of it was started).
    let kwargs = PyDict::new(py);
    kwargs.set_item(intern!(py, "thread_name_prefix"), "moka_py-refresh")?;
    let pool = py
        .import(intern!(py, "concurrent.futures"))?
        .getattr(intern!(py, "ThreadPoolExecutor"))?
        .call((), Some(&kwargs))?
        .unbind();
    let mut slot = DEFAULT_POOL.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(won) = current(&slot) {
        return Ok(won);
    }
    // The parent's pool (after a fork) is a `PyOwned`: released after the call.
    let _old = slot.replace((generation, PyOwned::new(pool.clone_ref(py))));
    Ok(pool)
}

impl Refresher {
    pub(crate) fn new(after: Duration, executor: Option<&Bound<'_, PyAny>>) -> Self {
        Refresher {
            after,
            given: executor.map(|e| PySlot::new(e.clone().unbind())),
        }
    }

    fn executor(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match &self.given {
            Some(given) => given.get(py).ok_or_else(|| {
                pyo3::exceptions::PyRuntimeError::new_err("the cache's executor was cleared")
            }),
            None => default_pool(py),
        }
    }

    /// Starts a sync reload of `target.key` on the executor unless a load of
    /// it is in flight. Errors (the executor refused the job) go to
    /// `sys.unraisablehook`: the caller has its value already.
    /// `owner` is the cache's Python object, named in those reports.
    pub(crate) fn start(
        &self,
        py: Python<'_>,
        cache: &Arc<Store>,
        owner: &Bound<'_, PyAny>,
        call: Call,
        target: Target,
    ) {
        let Some(load) = cache.loads().claim(py, &target.key, None) else {
            return;
        };
        let reload = Reload {
            cache: Arc::clone(cache),
            job: Mutex::new(Some(Job { load, call, target })),
        };
        let submitted = Bound::new(py, reload).and_then(|reload| {
            let submit = self.executor(py).and_then(|executor| {
                executor
                    .bind(py)
                    .call_method1(intern!(py, "submit"), (&reload,))
            });
            // A refused job gives its claim up now: the exception's traceback
            // may keep the reload alive for long.
            submit.inspect_err(|_| reload.get().abandon())
        });
        if let Err(err) = submitted {
            err.write_unraisable(py, Some(owner));
        }
        call::after(py);
    }

    /// Claims `target.key` for an async reload run by this thread's event
    /// loop; `None` when a load of it is in flight.
    pub(crate) fn claim(
        &self,
        py: Python<'_>,
        cache: &Arc<Store>,
        target: Target,
    ) -> Option<Claim> {
        let owner = Some(thread::current().id());
        let load = cache.loads().claim(py, &target.key, owner)?;
        Some(Claim {
            cache: Arc::clone(cache),
            job: Mutex::new(Some((load, target))),
        })
    }

    pub(crate) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(given) = &self.given {
            given.traverse(visit)?;
        }
        Ok(())
    }

    pub(crate) fn clear(&self) {
        if let Some(given) = &self.given {
            given.clear();
        }
    }
}

struct Job {
    load: Arc<Load>,
    call: Call,
    target: Target,
}

/// One sync reload, submitted to the executor (see the module comment).
#[pyclass(frozen, module = "moka_py._moka_py", name = "_Reload")]
pub(crate) struct Reload {
    cache: Arc<Store>,
    job: Mutex<Option<Job>>,
}

#[pymethods]
impl Reload {
    fn __call__(&self, py: Python<'_>) {
        let job = take(&self.job);
        let Some(Job { load, call, target }) = job else {
            return;
        };
        let moka = &*self.cache;
        let leader = moka.loads().leader(target.key.clone_ref(py), load);
        leader.start();
        let func = call.func.bind(py);
        let result = moka
            .compute(|| {
                call::call_python(py, || {
                    func.call(call.args.bind(py), call.kwargs.as_ref().map(|k| k.bind(py)))
                })
            })
            .and_then(|value| {
                let keep = match &call.keep {
                    Some(keep) => {
                        call::call_python(py, || keep.bind(py).call1((&value,)))?.is_truthy()?
                    }
                    None => true,
                };
                if keep {
                    replace(moka, py, &target, &value, leader.waited())?;
                }
                Ok(value.unbind())
            });
        leader.publish(py, &result);
        if let Err(err) = result {
            err.write_unraisable(py, Some(func));
        }
        drop(target);
        call::after(py);
    }
}

impl Reload {
    /// Gives the claim up without running: waiters start over.
    fn abandon(&self) {
        if let Some(job) = take(&self.job) {
            drop(self.cache.loads().leader(job.target.key, job.load));
        }
    }
}

impl Drop for Reload {
    fn drop(&mut self) {
        // A reload that never ran (an executor dropped it at shutdown)
        // abandons its claim; what that lets go of is queued and released at
        // this thread's next call.
        self.abandon();
    }
}

/// An async reload's claim on its key (see the module comment): the task
/// that reloads calls `finish` or `fail` once; dropped unfinished, it
/// abandons the claim.
#[pyclass(frozen, module = "moka_py._moka_py", name = "_Claim")]
pub(crate) struct Claim {
    cache: Arc<Store>,
    job: Mutex<Option<(Arc<Load>, Target)>>,
}

#[pymethods]
impl Claim {
    /// Stores `value` (with `store`, unless a newer write won) and hands it to
    /// the waiters.
    #[pyo3(signature = (value, store=true))]
    fn finish(&self, py: Python<'_>, value: &Bound<'_, PyAny>, store: bool) -> PyResult<()> {
        let Some((load, target)) = take(&self.job) else {
            return Ok(());
        };
        let moka = &*self.cache;
        let leader = moka.loads().leader(target.key.clone_ref(py), load);
        let stored = if store {
            replace(moka, py, &target, value, leader.waited())
        } else {
            Ok(())
        };
        let result = stored.map(|()| value.clone().unbind());
        leader.publish(py, &result);
        drop(target);
        call::after(py);
        result.map(drop)
    }

    /// Hands `exc` to the waiters; the entry stays as it is.
    fn fail(&self, py: Python<'_>, exc: &Bound<'_, PyBaseException>) {
        let Some((load, target)) = take(&self.job) else {
            return;
        };
        let leader = self.cache.loads().leader(target.key.clone_ref(py), load);
        leader.publish(py, &Err(PyErr::from_value(exc.clone().into_any())));
        drop(target);
        call::after(py);
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some((load, target)) = take(&self.job) {
            drop(self.cache.loads().leader(target.key, load));
        }
    }
}

/// Takes a job out of its mutex (held for that alone).
fn take<T>(job: &Mutex<Option<T>>) -> Option<T> {
    job.lock().unwrap_or_else(PoisonError::into_inner).take()
}

/// Stores a reloaded `value` under `target.key` where the entry found
/// stale still is, or, when the entry is gone, if a caller waits for the
/// reload (`waited`): not over a newer write, and not where a removal
/// without waiters left nothing.
fn replace(
    store: &Store,
    py: Python<'_>,
    target: &Target,
    value: &Bound<'_, PyAny>,
    waited: bool,
) -> PyResult<()> {
    let key = target.key.clone_ref(py);
    let entry = store.entry(
        py,
        key.obj().bind(py),
        value,
        target.ttl,
        target.tti,
        target.tags.clone(),
    )?;
    let seen = &target.seen;
    store.write(py, entry.weight, move |table| {
        table.entry(key).and_compute_with(|current| match current {
            Some(current) if Arc::ptr_eq(current.value(), seen) => Op::Put(entry),
            None if waited => Op::Put(entry),
            _ => Op::Nop,
        });
    });
    Ok(())
}

/// Sends `exc` to `sys.unraisablehook`, as a failed reload of a thread does
/// (for the reloads of `aget_with`, run as asyncio tasks).
#[pyfunction]
pub(crate) fn _write_unraisable(exc: &Bound<'_, PyBaseException>, obj: &Bound<'_, PyAny>) {
    PyErr::from_value(exc.clone().into_any()).write_unraisable(exc.py(), Some(obj));
}

/// The refresh settings: `refresh_after` shorter than the cache-wide `ttl`,
/// and an `executor` (with a `submit` method) only together with it.
pub(crate) fn from_options(
    refresh_after: Option<Duration>,
    ttl: Option<Duration>,
    executor: Option<&Bound<'_, PyAny>>,
) -> Result<Option<Refresher>, crate::store::errors::Error> {
    let Some(after) = refresh_after else {
        return match executor {
            Some(_) => Err(crate::store::errors::Error::Value(
                "executor is used only for refreshes: give refresh_after too".to_owned(),
            )),
            None => Ok(None),
        };
    };
    if let Some(ttl) = ttl {
        if after >= ttl {
            return Err(crate::store::errors::Error::Value(format!(
                "refresh_after must be shorter than ttl, got {} s for a ttl of {} s",
                after.as_secs_f64(),
                ttl.as_secs_f64()
            )));
        }
    }
    if let Some(executor) = executor {
        let submit = executor
            .getattr(pyo3::intern!(executor.py(), "submit"))
            .ok();
        if !submit.is_some_and(|s| s.is_callable()) {
            return Err(crate::store::errors::Error::wrong_type(
                "executor must be a concurrent.futures.Executor (an object with a submit method)",
                executor,
            ));
        }
    }
    Ok(Some(Refresher::new(after, executor)))
}
