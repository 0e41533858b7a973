//! Refresh-ahead (`Moka(..., refresh_after=seconds)`).
//!
//! moka's read hook marks an entry stale once it is older than
//! `refresh_after` (`expiry.rs`). When `get_with` (or `@cached`) finds a stale
//! entry it returns the value at once and calls [`Refresher::start`]:
//!
//! 1. the reload claims the key in the cache's in-flight loads (`loader.rs`),
//!    so at most one load of a key runs at a time, and a `get_with` that
//!    misses meanwhile waits for this reload instead of starting its own;
//!    when a load is in flight already, nothing starts;
//! 2. a [`Reload`] (a callable holding the claim) is submitted to the
//!    executor: the `concurrent.futures.Executor` given as `executor=`, or
//!    the cache's own `ThreadPoolExecutor`, made on first use;
//! 3. on a pool thread, the reload runs the initializer (attached, holding no
//!    lock), stores its result unless the entry was replaced by a newer write
//!    meanwhile (a `set` wins over a reload that started before it), and
//!    wakes the waiters. If the initializer raises, the old value stays until
//!    it expires, the waiters get the exception, and it goes to
//!    `sys.unraisablehook`. The entry stays stale, so a later read retries.
//!
//! A reload that never runs (the executor refused it, or dropped it at
//! shutdown) abandons its claim when it is dropped: waiters start over.
//!
//! Locks: the claim and the store take the in-flight map's shard lock and
//! moka's key lock through `call::enter`, as any write; `Reload::job` is a
//! mutex held only to take the job out, once.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use moka::ops::compute::Op;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple};
use pyo3::{intern, PyTraverseError, PyVisit};

use crate::cache::Moka;
use crate::call;
use crate::entry::Entry;
use crate::key::Key;
use crate::loader::Load;
use crate::slot::PySlot;

/// The cache's refresh settings and executor.
pub(crate) struct Refresher {
    pub(crate) after: Duration,
    /// The executor given as `executor=`.
    given: Option<PySlot>,
    /// The cache's own pool, made on first use.
    own: PyOnceLock<Py<PyAny>>,
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
    /// The entry found stale: the reload replaces it, or an absent one, but
    /// not a newer write.
    pub(crate) seen: Arc<Entry>,
    pub(crate) ttl: Option<Duration>,
    pub(crate) tti: Option<Duration>,
}

impl Refresher {
    pub(crate) fn new(after: Duration, executor: Option<&Bound<'_, PyAny>>) -> Self {
        Refresher {
            after,
            given: executor.map(|e| PySlot::new(e.clone().unbind())),
            own: PyOnceLock::new(),
        }
    }

    fn executor(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        if let Some(given) = &self.given {
            return given.get(py).ok_or_else(|| {
                pyo3::exceptions::PyRuntimeError::new_err("the cache's executor was cleared")
            });
        }
        if let Some(own) = self.own.get(py) {
            return Ok(own.clone_ref(py));
        }
        // Made outside any lock; a thread that loses the race to install its
        // pool drops it unused (no thread of it was started).
        let kwargs = PyDict::new(py);
        kwargs.set_item(intern!(py, "thread_name_prefix"), "moka_py-refresh")?;
        let pool = py
            .import(intern!(py, "concurrent.futures"))?
            .getattr(intern!(py, "ThreadPoolExecutor"))?
            .call((), Some(&kwargs))?
            .unbind();
        let _ = self.own.set(py, pool);
        Ok(self
            .own
            .get(py)
            .expect("the pool was just set")
            .clone_ref(py))
    }

    /// Starts a reload of `target.key` unless a load of it is in flight.
    /// Errors (the executor refused the job) go to `sys.unraisablehook`: the
    /// caller has its value already.
    pub(crate) fn start(&self, cache: &Bound<'_, Moka>, call: Call, target: Target) {
        let py = cache.py();
        let Some(load) = cache.get().loads().claim(py, &target.key) else {
            return;
        };
        let reload = Reload {
            cache: cache.clone().unbind(),
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
            err.write_unraisable(py, Some(cache.as_any()));
        }
        call::after(py);
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

/// One reload, submitted to the executor (see the module comment).
#[pyclass(frozen, module = "moka_py._moka_py", name = "_Reload")]
pub(crate) struct Reload {
    cache: Py<Moka>,
    job: Mutex<Option<Job>>,
}

#[pymethods]
impl Reload {
    fn __call__(&self, py: Python<'_>) {
        let job = self
            .job
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(Job { load, call, target }) = job else {
            return;
        };
        let moka = self.cache.get();
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
                    moka.replace(py, target.key, &target.seen, &value, target.ttl, target.tti)?;
                }
                Ok(value.unbind())
            });
        leader.publish(py, &result);
        if let Err(err) = result {
            err.write_unraisable(py, Some(func));
        }
        drop(target.seen);
        call::after(py);
    }
}

impl Reload {
    /// Gives the claim up without running: waiters start over.
    fn abandon(&self) {
        let job = self
            .job
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(job) = job {
            drop(self.cache.get().loads().leader(job.target.key, job.load));
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

impl Moka {
    /// Stores a reloaded `value` under `key` unless the entry there now is a
    /// newer write than `seen` (see the module comment).
    pub(crate) fn replace(
        &self,
        py: Python<'_>,
        key: Key,
        seen: &Arc<Entry>,
        value: &Bound<'_, PyAny>,
        ttl: Option<Duration>,
        tti: Option<Duration>,
    ) -> PyResult<()> {
        let entry = self.entry(py, key.obj().bind(py), value, ttl, tti)?;
        self.write(py, entry.weight, move |store| {
            store.entry(key).and_compute_with(|current| match current {
                Some(current) if !Arc::ptr_eq(current.value(), seen) => Op::Nop,
                _ => Op::Put(entry),
            });
        });
        Ok(())
    }
}

/// Sends `exc` to `sys.unraisablehook`, as a failed reload of a thread does
/// (for the reloads of `aget_with`, run as asyncio tasks).
#[pyfunction]
pub(crate) fn _write_unraisable(
    exc: &Bound<'_, pyo3::exceptions::PyBaseException>,
    obj: &Bound<'_, PyAny>,
) {
    PyErr::from_value(exc.clone().into_any()).write_unraisable(exc.py(), Some(obj));
}
