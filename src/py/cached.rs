//! The wrapper behind `moka_py.cached` (the whole of a sync function, the hit
//! of an `async` one), and the key of a call's arguments.
//!
//! The hit path of a decorated function is the hot path: the key is built and
//! looked up in Rust, without Python-level frames. Hits and misses are counted
//! in striped atomic counters, exact and free of contention between threads.
//! Locks: none of its own; the store's rules apply (`store/cache.rs`).

use std::cell::Cell;
use std::sync::atomic::Ordering;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use pyo3::{ffi, intern, PyTraverseError, PyVisit};

use crate::py::moka::Moka;
use crate::store::counter::Counter;
use crate::store::key::{Key, KeyRef};
use crate::store::tags::Stamp;

/// Builds the key of a call like `functools.lru_cache`: a single argument of
/// a scalar built-in type is its own key (so `f(1)` and `f(1.0)` share one);
/// otherwise the positional arguments, then the keyword-argument separator and
/// the keyword arguments sorted by name (so their order does not matter);
/// with `typed`, the arguments' types too. Exposed to Python as `make_key`
/// for the async wrappers.
#[pyfunction]
#[pyo3(signature = (args, kwargs, typed))]
pub(crate) fn make_key<'py>(
    py: Python<'py>,
    args: &Bound<'py, PyTuple>,
    kwargs: Option<&Bound<'py, PyDict>>,
    typed: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let kwargs = kwargs.filter(|k| !k.is_empty());
    if !typed && kwargs.is_none() {
        if args.len() == 1 {
            let arg = args.get_item(0)?;
            if is_scalar(&arg) {
                return Ok(arg);
            }
        }
        return Ok(args.clone().into_any());
    }
    let mut items: Vec<Bound<'py, PyAny>> = args.iter().collect();
    let mut pairs: Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)> = Vec::new();
    if let Some(kwargs) = kwargs {
        pairs = kwargs.iter().collect();
        pairs.sort_by(|(a, _), (b, _)| {
            a.lt(b).ok().map_or(std::cmp::Ordering::Equal, |lt| {
                if lt {
                    std::cmp::Ordering::Less
                } else {
                    std::cmp::Ordering::Greater
                }
            })
        });
        items.push(crate::store::key::kwargs_mark(py));
        for (k, v) in &pairs {
            items.push(PyTuple::new(py, [k, v])?.into_any());
        }
    }
    if typed {
        for arg in args.iter() {
            items.push(arg.get_type().into_any());
        }
        for (_, v) in &pairs {
            items.push(v.get_type().into_any());
        }
    }
    Ok(PyTuple::new(py, items)?.into_any())
}

fn is_scalar(obj: &Bound<'_, PyAny>) -> bool {
    let p = obj.as_ptr();
    // SAFETY: `p` is a live object; these only read its type.
    unsafe {
        ffi::PyLong_CheckExact(p) != 0
            || ffi::PyUnicode_CheckExact(p) != 0
            || ffi::PyFloat_CheckExact(p) != 0
            || ffi::PyBytes_CheckExact(p) != 0
            || p == ffi::Py_None()
    }
}

// CPython's public C API (Include/classobject.h); pyo3-ffi does not declare it.
// PyPy exports the C API under `PyPy` names.
extern "C" {
    #[cfg_attr(PyPy, link_name = "PyPyMethod_New")]
    fn PyMethod_New(func: *mut ffi::PyObject, slf: *mut ffi::PyObject) -> *mut ffi::PyObject;
}

/// A function decorated with `@cached`. Behaves as a function: it binds as a
/// method. `moka_py.cached` instantiates a Python subclass, whose `__dict__`
/// (filled by `functools.update_wrapper`) the GC then traverses.
///
/// Counting follows `functools.lru_cache`: every call counts once, as a miss
/// if it computed the result and as a hit otherwise. A call that does not
/// find its key is counted a miss when it starts; one that then joins another
/// call's computation (`wait_concurrent=True`, a thread or an `async`
/// awaiter) becomes a hit through [`CachedFunction::joined`], the one place
/// that re-counts, so sync and async functions count alike.
#[pyclass(
    frozen,
    subclass,
    weakref,
    module = "moka_py._moka_py",
    name = "CachedFunction"
)]
pub(crate) struct CachedFunction {
    func: Py<PyAny>,
    cache: Py<Moka>,
    typed: bool,
    coalesce: bool,
    /// For an `async def` function: `miss(key, args, kwargs)` returns the
    /// awaitable of a miss (a hit returns the stored `Ready`).
    miss: Option<Py<PyAny>>,
    /// `key(*args, **kwargs)`: the cache key of a call, instead of [`make_key`].
    key: Option<Py<PyAny>>,
    /// `cache_if(result)`: whether a computed result is stored.
    cache_if: Option<Py<PyAny>>,
    /// For an `async def` function with `refresh_after`:
    /// `refresh(key, args, kwargs)` starts the reload of a stale entry as a
    /// task on the running loop (a sync function reloads on the cache's
    /// executor, `refresh.rs`).
    refresh: Option<Py<PyAny>>,
    /// `tags=`: the tags of every result, or `tags(*args, **kwargs)`.
    tags: Option<Py<PyAny>>,
    info: Py<PyAny>,
    maxsize: Py<PyAny>,
    parameters: Py<PyDict>,
    hits: Counter,
    misses: Counter,
}

impl CachedFunction {
    /// The cache key of a call.
    #[inline]
    fn key_of<'py>(
        &self,
        py: Python<'py>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        match &self.key {
            Some(key) => crate::store::call::call_python(py, || key.bind(py).call(args, kwargs)),
            None => make_key(py, args, kwargs, self.typed),
        }
    }

    /// Whether `value`, just computed, is stored (`cache_if`).
    fn keeps(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<bool> {
        match &self.cache_if {
            Some(keep) => {
                crate::store::call::call_python(py, || keep.bind(py).call1((value,)))?.is_truthy()
            }
            None => Ok(true),
        }
    }

    /// The stamp of the tags of a call's result (`tags=`), taken before the
    /// function runs: an invalidation during the call dates the result.
    fn stamp<'py>(
        &self,
        py: Python<'py>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Option<Stamp>> {
        let Some(tags) = &self.tags else {
            return Ok(None);
        };
        let tags = tags.bind(py);
        let cache = self.cache.get();
        if tags.is_callable() {
            let names = crate::store::call::call_python(py, || tags.call(args, kwargs))?;
            return crate::py::tags::stamp_of(cache, Some(&names));
        }
        crate::py::tags::stamp_of(cache, Some(tags))
    }

    /// Re-counts a call counted as a miss as a hit: it received the result
    /// of another call's computation.
    fn joined(&self) {
        self.misses.sub(1, Ordering::Relaxed);
        self.hits.add(1, Ordering::Relaxed);
    }

    /// A call whose key was not found (`hash` and `lookup` from
    /// `read_key_hashed`). Kept out of line, so that the hit path and PyO3's
    /// argument parsing stay inlined in `__call__`'s trampoline.
    #[inline(never)]
    fn miss<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        hash: isize,
        lookup: Option<&KeyRef>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        self.misses.add(1, Ordering::Relaxed);
        let cache = self.cache.get();
        let tags = self.stamp(py, args, kwargs)?;
        if let Some(miss) = &self.miss {
            let key = MissKey(cache.owned_hashed(key, hash, lookup)?, tags);
            return crate::store::call::call_python(py, || miss.call1(py, (key, args, kwargs)));
        }
        if self.coalesce {
            let owned = cache.owned_hashed(key, hash, lookup)?;
            return self.coalesced(py, owned, args, kwargs, tags);
        }
        let value = match cache.compute(|| {
            crate::store::call::call_python(py, || self.func.bind(py).call(args, kwargs))
        }) {
            Ok(value) => value,
            // `stale_if_error`: an expired result the cache still keeps.
            Err(err) if err.is_instance_of::<pyo3::exceptions::PyException>(py) => {
                return cache.stale_value(py, lookup).ok_or(err)
            }
            Err(err) => return Err(err),
        };
        if self.keeps(py, &value)? {
            let owned = cache.owned_hashed(key, hash, lookup)?;
            cache.insert_key(py, owned, &value, None, None, tags)?;
        }
        Ok(value.unbind())
    }

    /// A hit on an entry due for a refresh (`refresh_after`): starts its
    /// reload. Out of line, as the miss.
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn refresh<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        hash: isize,
        lookup: Option<&KeyRef>,
        seen: std::sync::Arc<crate::store::entry::Entry>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) {
        let cache = self.cache.bind(py);
        let owned = cache.get().owned_hashed(key, hash, lookup);
        if let Some(refresh) = &self.refresh {
            // An async function: claimed here, reloaded by a task on this
            // thread's loop, which finishes the claim.
            let miss_key = owned
                .as_ref()
                .ok()
                .map(|key| MissKey(key.clone_ref(py), None));
            let claim = cache.get().claim_refresh(cache, owned, seen, None, None);
            let (Some(key), Some(claim)) = (miss_key, claim) else {
                return;
            };
            let started = crate::store::call::call_python(py, || {
                refresh.call1(py, (key, args, kwargs, claim))
            });
            if let Err(err) = started {
                err.write_unraisable(py, Some(self.func.bind(py)));
            }
            return;
        }
        let call = crate::py::refresh::Call {
            func: self.func.clone_ref(py),
            args: args.clone().unbind(),
            kwargs: kwargs.map(|k| k.clone().unbind()),
            keep: self.cache_if.as_ref().map(|k| k.clone_ref(py)),
        };
        cache.get().refresh(cache, owned, seen, call, None, None);
    }

    /// The miss of a sync function with `wait_concurrent`: one computation
    /// per key at a time, shared by every thread that asks meanwhile.
    fn coalesced<'py>(
        &self,
        py: Python<'py>,
        key: Key,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
        tags: Option<Stamp>,
    ) -> PyResult<Py<PyAny>> {
        let computed = Cell::new(false);
        let call = || {
            computed.set(true);
            crate::store::call::call_python(py, || self.func.bind(py).call(args, kwargs))
        };
        let cache = self.cache.get();
        let result = if self.cache_if.is_some() {
            cache.load_if(py, key, call, |value| self.keeps(py, value), tags)
        } else {
            cache.load(py, key, call, None, None, tags)
        };
        if !computed.get() {
            self.joined();
        }
        result
    }
}

#[pymethods]
impl CachedFunction {
    /// `CachedFunction(func, cache, typed, wait_concurrent, cache_info_type,
    /// maxsize, parameters, miss=None, key=None, cache_if=None, refresh=None,
    /// tags=None)`: built by `moka_py.cached`.
    #[new]
    #[pyo3(signature = (func, cache, typed, wait_concurrent, cache_info_type, maxsize, parameters, miss=None, key=None, cache_if=None, refresh=None, tags=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        func: Py<PyAny>,
        cache: Py<Moka>,
        typed: bool,
        wait_concurrent: bool,
        cache_info_type: Py<PyAny>,
        maxsize: Py<PyAny>,
        parameters: Py<PyDict>,
        miss: Option<Py<PyAny>>,
        key: Option<Py<PyAny>>,
        cache_if: Option<Py<PyAny>>,
        refresh: Option<Py<PyAny>>,
        tags: Option<Py<PyAny>>,
    ) -> Self {
        CachedFunction {
            func,
            cache,
            typed,
            coalesce: wait_concurrent,
            miss,
            key,
            cache_if,
            refresh,
            tags,
            info: cache_info_type,
            maxsize,
            parameters,
            hits: Counter::default(),
            misses: Counter::default(),
        }
    }

    #[pyo3(signature = (*args, **kwargs))]
    fn __call__<'py>(
        &self,
        py: Python<'py>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let key = self.key_of(py, args, kwargs)?;
        let cache = self.cache.get();
        // The key's hash is kept for the miss: `__hash__` runs once per call.
        let (hash, lookup) = cache.read_key_hashed(&key)?;
        if let Some((found, stale)) = cache.read_for_load(py, lookup.as_ref()) {
            self.hits.add(1, Ordering::Relaxed);
            if let Some(seen) = stale {
                self.refresh(py, &key, hash, lookup.as_ref(), seen, args, kwargs);
            }
            return Ok(found);
        }
        self.miss(py, &key, hash, lookup.as_ref(), args, kwargs)
    }

    /// Binds to an instance like a function does.
    fn __get__(
        slf: &Bound<'_, Self>,
        obj: Option<&Bound<'_, PyAny>>,
        _owner: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        match obj {
            Some(obj) if !obj.is_none() => {
                // SAFETY: both are live objects; PyMethod_New returns a new
                // reference or NULL with an exception set.
                unsafe {
                    Bound::from_owned_ptr_or_err(py, PyMethod_New(slf.as_ptr(), obj.as_ptr()))
                }
                .map(Bound::unbind)
            }
            _ => Ok(slf.clone().into_any().unbind()),
        }
    }

    /// `CacheInfo(hits, misses, maxsize, currsize)`.
    fn cache_info(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let currsize = self.cache.get().count(py);
        self.info.call1(
            py,
            (
                self.hits.sum(Ordering::Relaxed),
                self.misses.sum(Ordering::Relaxed),
                self.maxsize.clone_ref(py),
                currsize,
            ),
        )
    }

    /// [`CachedFunction::joined`], for the `async` miss path: an awaiter
    /// that joined a computation in flight.
    fn _joined(&self) {
        self.joined();
    }

    /// Stores `value` under the key of an `async` miss (the `Ready` of its
    /// result), without hashing the arguments again.
    fn _store(
        &self,
        py: Python<'_>,
        key: &Bound<'_, MissKey>,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let key = key.get();
        let tags = key.1.clone();
        self.cache
            .get()
            .insert_key(py, key.0.clone_ref(py), value, None, None, tags)
    }

    /// The underlying `Moka` cache.
    #[getter]
    fn cache(&self, py: Python<'_>) -> Py<Moka> {
        self.cache.clone_ref(py)
    }

    /// The cache key of a call with these arguments, for
    /// `cache_invalidate`/`cache_contains` (Python methods of the subclass:
    /// a second `(*args, **kwargs)` method here would keep PyO3's argument
    /// parsing from being inlined into `__call__`).
    #[pyo3(signature = (args, kwargs=None))]
    fn _key<'py>(
        &self,
        py: Python<'py>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.key_of(py, args, kwargs)
    }

    /// The tags of a call's result, stamped now (`f.refresh`, which stores
    /// its result with `Moka.set(..., tags=stamp)`); `None` without `tags=`.
    #[pyo3(signature = (args, kwargs=None))]
    fn _stamp<'py>(
        &self,
        py: Python<'py>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Option<crate::py::tags::TagStamp>> {
        Ok(self.stamp(py, args, kwargs)?.map(crate::py::tags::TagStamp))
    }

    /// Returns the function itself, as `functools.lru_cache` wrappers do.
    fn __copy__<'py>(slf: &Bound<'py, Self>) -> Bound<'py, Self> {
        slf.clone()
    }

    /// Returns the function itself, as `functools.lru_cache` wrappers do.
    fn __deepcopy__<'py>(slf: &Bound<'py, Self>, _memo: &Bound<'py, PyAny>) -> Bound<'py, Self> {
        slf.clone()
    }

    /// Pickles by qualified name, like a function: unpickling imports it.
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        slf.getattr(intern!(slf.py(), "__qualname__"))
    }

    /// Empties the cache and resets the statistics.
    fn cache_clear(&self, py: Python<'_>) -> PyResult<()> {
        self.cache.get().clear(py);
        self.hits.reset();
        self.misses.reset();
        Ok(())
    }

    /// The decorator's arguments, as a new dict.
    fn cache_parameters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.parameters.bind(py).copy()
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.func)?;
        visit.call(&self.cache)?;
        visit.call(&self.info)?;
        visit.call(&self.maxsize)?;
        visit.call(&self.parameters)?;
        for f in [
            &self.miss,
            &self.key,
            &self.cache_if,
            &self.refresh,
            &self.tags,
        ]
        .into_iter()
        .flatten()
        {
            visit.call(f)?;
        }
        Ok(())
    }
}

/// The key of an `async` call that missed, resolved once by the call: the
/// miss path stores its result under it (`CachedFunction._store`) and keys
/// its table of computations in flight by it. Its hash and `==` are the
/// resolved key's, computed in Rust: the arguments' `__hash__` and `__eq__`
/// do not run again.
#[pyclass(frozen, module = "moka_py._moka_py", name = "MissKey")]
pub(crate) struct MissKey(Key, Option<Stamp>);

#[pymethods]
impl MissKey {
    fn __hash__(&self) -> isize {
        self.0.hash()
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<MissKey>()
            .is_ok_and(|other| other.get().0 == self.0)
    }

    /// The key object: the decorated function's `key(...)`, or the one built
    /// from the arguments.
    #[getter]
    fn key(&self, py: Python<'_>) -> Py<PyAny> {
        self.0.obj().clone_ref(py)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(self.0.obj())
    }
}
