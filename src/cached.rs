//! The sync wrapper behind `moka_py.cached`, and the key of a call's arguments.
//!
//! The hit path of a decorated function is the hot path: the key is built and
//! looked up in Rust, without Python-level frames. Hits and misses are counted
//! in striped atomic counters, exact and free of contention between threads.
//! Locks: none of its own; the cache's rules apply (`cache.rs`).

use std::sync::atomic::Ordering;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use pyo3::{ffi, PyTraverseError, PyVisit};

use crate::cache::Moka;
use crate::counter::Counter;

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
        items.push(crate::key::kwargs_mark(py));
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
extern "C" {
    fn PyMethod_New(func: *mut ffi::PyObject, slf: *mut ffi::PyObject) -> *mut ffi::PyObject;
}

/// A function decorated with `@cached` (sync). Behaves as a function: it
/// binds as a method. `moka_py.cached` instantiates a Python subclass, whose
/// `__dict__` (filled by `functools.update_wrapper`) the GC then traverses.
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
    info: Py<PyAny>,
    maxsize: Py<PyAny>,
    parameters: Py<PyDict>,
    hits: Counter,
    misses: Counter,
}

#[pymethods]
impl CachedFunction {
    /// `CachedFunction(func, cache, typed, wait_concurrent, cache_info_type,
    /// maxsize, parameters, miss=None)`: built by `moka_py.cached`.
    #[new]
    #[pyo3(signature = (func, cache, typed, wait_concurrent, cache_info_type, maxsize, parameters, miss=None))]
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
    ) -> Self {
        CachedFunction {
            func,
            cache,
            typed,
            coalesce: wait_concurrent,
            miss,
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
        let key = make_key(py, args, kwargs, self.typed)?;
        let cache = self.cache.get();
        let lookup = cache.key_ref(&key)?;
        if let Some(found) = lookup.as_ref().and_then(|k| cache.lookup(py, k)) {
            self.hits.add(1, Ordering::Relaxed);
            return Ok(found);
        }
        if let Some(miss) = &self.miss {
            self.misses.add(1, Ordering::Relaxed);
            return crate::call::call_python(py, || miss.call1(py, (key, args, kwargs)));
        }
        let call = || {
            self.misses.add(1, Ordering::Relaxed);
            crate::call::call_python(py, || self.func.bind(py).call(args, kwargs))
        };
        if self.coalesce {
            let owned = cache.owned(&key, lookup.as_ref())?;
            return cache.load(py, owned, call, None, None);
        }
        let value = call()?;
        cache.insert_key(py, cache.owned(&key, lookup.as_ref())?, &value, None, None)?;
        Ok(value.unbind())
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

    /// Counts a call that was counted as a miss as a hit instead (an `async`
    /// caller that joined a computation in flight).
    fn _joined(&self) {
        self.misses.sub(1, Ordering::Relaxed);
        self.hits.add(1, Ordering::Relaxed);
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
        if let Some(miss) = &self.miss {
            visit.call(miss)?;
        }
        Ok(())
    }
}
