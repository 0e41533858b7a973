//! `Ready`: an awaitable that is already done, for the hits of an `async def`
//! function decorated with `@cached`.
//!
//! The cache of such a function stores each result wrapped in a `Ready`, and
//! a hit returns the stored object itself: no coroutine is created or run,
//! nothing is allocated. Awaiting it (or driving it with `send`, as an
//! `asyncio.Task` does) finishes at once with the result. It holds no state,
//! so any number of callers may await the same object, at once or one after
//! another. It has `send`, `throw` and `close`, so `asyncio` accepts it as a
//! coroutine (`asyncio.create_task`, `asyncio.iscoroutine`).

use pyo3::exceptions::{PyBaseException, PyStopIteration};
use pyo3::prelude::*;
use pyo3::types::{PyTuple, PyType};
#[cfg(not(PyPy))]
use pyo3::{ffi, PyTypeInfo};
use pyo3::{PyTraverseError, PyVisit};

#[pyclass(frozen, module = "moka_py._moka_py", name = "Ready")]
pub(crate) struct Ready {
    value: Py<PyAny>,
}

impl Ready {
    /// `StopIteration(value)`, raised as a generator's `return value` is:
    /// the value itself unless it is a tuple or an exception (which would be
    /// taken for the arguments), so that CPython need not build the exception
    /// to read the value back.
    fn stop_iteration(&self, py: Python<'_>) -> PyErr {
        let value = self.value.bind(py);
        if value.is_instance_of::<PyTuple>() || value.is_instance_of::<PyBaseException>() {
            PyStopIteration::new_err((value.clone().unbind(),))
        } else {
            PyStopIteration::new_err(value.clone().unbind())
        }
    }
}

/// `am_send`: how `await` (on 3.10 and 3.11) and `PyIter_Send` drive an
/// awaitable without an exception: the result comes back as a return value.
/// CPython only: PyPy drives `await` through `__await__` and `__next__`.
#[cfg(not(PyPy))]
unsafe extern "C" fn send(
    iter: *mut ffi::PyObject,
    _value: *mut ffi::PyObject,
    result: *mut *mut ffi::PyObject,
) -> ffi::PySendResult {
    // SAFETY: CPython calls this slot attached, with `iter` a live `Ready`
    // (the slot belongs to its type) and `result` a writable pointer.
    unsafe {
        let py = Python::assume_attached();
        let ready = Bound::from_borrowed_ptr(py, iter).cast_into_unchecked::<Ready>();
        *result = ready.get().value.clone_ref(py).into_ptr();
    }
    ffi::PySendResult::PYGEN_RETURN
}

/// Gives the `Ready` type its `am_send` slot (PyO3 has no way to declare it).
#[cfg(not(PyPy))]
pub(crate) fn add_send_slot(py: Python<'_>) {
    let tp = Ready::type_object(py);
    // SAFETY: a heap type that PyO3 created with an `am_await` slot (so with
    // its own `tp_as_async` table); no `Ready` exists yet, and CPython reads
    // this slot only when driving one.
    unsafe {
        let async_methods = (*tp.as_type_ptr()).tp_as_async;
        if !async_methods.is_null() {
            (*async_methods).am_send = Some(send);
        }
    }
}

#[pymethods]
impl Ready {
    #[new]
    pub(crate) fn new(value: Py<PyAny>) -> Self {
        Ready { value }
    }

    /// The result.
    #[getter]
    fn value(&self, py: Python<'_>) -> Py<PyAny> {
        self.value.clone_ref(py)
    }

    fn __await__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<()> {
        Err(self.stop_iteration(py))
    }

    /// As a coroutine's `send`: finishes with the result.
    #[pyo3(signature = (value, /))]
    fn send(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let _ = value;
        Err(self.stop_iteration(py))
    }

    /// As a coroutine's `throw`: raises what it is given.
    #[pyo3(signature = (typ, val=None, tb=None, /))]
    fn throw(
        &self,
        py: Python<'_>,
        typ: &Bound<'_, PyAny>,
        val: Option<&Bound<'_, PyAny>>,
        tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let exc = if typ.is_instance_of::<PyType>() {
            match val {
                Some(v) if v.is_instance(typ)? => v.clone(),
                Some(v) if !v.is_none() => typ.call1((v,))?,
                _ => typ.call0()?,
            }
        } else {
            typ.clone()
        };
        if let Some(tb) = tb.filter(|tb| !tb.is_none()) {
            exc.setattr("__traceback__", tb)?;
        }
        let _ = py;
        Err(PyErr::from_value(exc))
    }

    /// As a coroutine's `close`: nothing to do.
    fn close(&self) {}

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!("<moka_py Ready {}>", self.value.bind(py).repr()?))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.value)
    }
}
