//! `moka_py._moka_py`: a thread-safe, GIL-free binding of the `moka` cache.
//!
//! Two layers, one folder each: `store/`, plain Rust (keys, entries, the moka
//! store, deferred releases), and `py/`, the Python classes over it. Arrows
//! point one way: `py` uses `store`, never the reverse. This file only wires
//! them into the Python module.
//!
//! The rule everything rests on, and the one helper through which every call
//! enters moka, are written down in `store/call.rs`: no Python code runs
//! inside moka or under any lock of this binding.

mod py;
mod store;

use pyo3::exceptions::PyImportError;

/// Every Rust allocation of the module (moka's entries and buffers, keys,
/// the in-flight loads) goes to mimalloc; Python objects stay with CPython's
/// allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
#[cfg(not(PyPy))]
use pyo3::ffi;
use pyo3::prelude::*;

#[pymodule(gil_used = false)]
fn _moka_py(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // SAFETY: both calls only read the runtime's interpreter pointers; we are
    // attached (module initialisation). PyPy has no subinterpreters.
    #[cfg(not(PyPy))]
    let in_main = unsafe { ffi::PyInterpreterState_Get() == ffi::PyInterpreterState_Main() };
    #[cfg(PyPy)]
    let in_main = true;
    if !in_main {
        return Err(PyImportError::new_err(
            "moka_py cannot be imported in a subinterpreter: its caches share process-wide \
             state; import it in the main interpreter",
        ));
    }
    store::call::init(m.py())?;
    m.add("VERSION", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<py::moka::Moka>()?;
    // PyPy calls a C method through its own layer (cpyext), which these hand-written
    // entries cannot shorten: PyO3's entries serve every call there.
    #[cfg(not(PyPy))]
    py::fast::install(m.py())?;
    store::key::check_layouts(m.py())?;
    m.add_class::<py::cached::CachedFunction>()?;
    m.add_class::<py::cached::MissKey>()?;
    m.add_class::<py::ready::Ready>()?;
    m.add_class::<py::stats::CacheStats>()?;
    m.add_class::<py::tags::TagStamp>()?;
    m.add_class::<py::refresh::Claim>()?;
    m.add_class::<py::tier::Tier>()?;
    m.add_class::<py::mac::Mac>()?;
    #[cfg(not(PyPy))]
    py::ready::add_send_slot(m.py());
    m.add_function(wrap_pyfunction!(py::cached::make_key, m)?)?;
    m.add_function(wrap_pyfunction!(py::refresh::_write_unraisable, m)?)?;
    let mark = m.py().eval(c"object()", None, None)?;
    store::key::set_kwargs_mark(&mark);
    m.add("_KWARGS_MARK", mark)?;
    let before_exit = wrap_pyfunction!(store::call::_before_exit, m)?;
    m.py()
        .import("atexit")?
        .getattr("register")?
        .call1((before_exit,))?;
    let os = m.py().import("os")?;
    if os.hasattr("register_at_fork")? {
        for after_fork in [
            wrap_pyfunction!(store::call::_after_fork_in_child, m)?,
            wrap_pyfunction!(store::loader::_after_fork_in_child, m)?,
        ] {
            let kwargs = pyo3::types::PyDict::new(m.py());
            kwargs.set_item("after_in_child", after_fork)?;
            os.getattr("register_at_fork")?.call((), Some(&kwargs))?;
        }
    }
    Ok(())
}
