//! `moka_py._moka_py`: a thread-safe, GIL-free binding of the `moka` cache.
//!
//! Every concept lives in its own module; this file only wires them into the
//! Python module.
//!
//! The rule everything rests on, and the one helper through which every call
//! enters moka, are written down in [`call`]: no Python code runs inside moka
//! or under any lock of this binding.

mod bulk;
mod cache;
mod cached;
mod call;
mod counter;
mod deferred;
mod entry;
mod errors;
mod expiry;
mod intern;
mod key;
mod listener;
mod loader;
mod options;
mod ready;
mod refresh;
mod slot;
mod stats;
mod tier;

use pyo3::exceptions::PyImportError;

/// Every Rust allocation of the module (moka's entries and buffers, keys,
/// the in-flight loads) goes to mimalloc; Python objects stay with CPython's
/// allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use pyo3::ffi;
use pyo3::prelude::*;

#[pymodule(gil_used = false)]
fn _moka_py(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // SAFETY: both calls only read the runtime's interpreter pointers; we are
    // attached (module initialisation).
    let in_main = unsafe { ffi::PyInterpreterState_Get() == ffi::PyInterpreterState_Main() };
    if !in_main {
        return Err(PyImportError::new_err(
            "moka_py cannot be imported in a subinterpreter: its caches share process-wide \
             state; import it in the main interpreter",
        ));
    }
    call::init(m.py())?;
    m.add("VERSION", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<cache::Moka>()?;
    m.add_class::<cached::CachedFunction>()?;
    m.add_class::<cached::MissKey>()?;
    m.add_class::<ready::Ready>()?;
    m.add_class::<stats::CacheStats>()?;
    m.add_class::<refresh::Claim>()?;
    m.add_class::<tier::Tier>()?;
    ready::add_send_slot(m.py());
    m.add_function(wrap_pyfunction!(cached::make_key, m)?)?;
    m.add_function(wrap_pyfunction!(refresh::_write_unraisable, m)?)?;
    let mark = m.py().eval(c"object()", None, None)?;
    key::set_kwargs_mark(&mark);
    m.add("_KWARGS_MARK", mark)?;
    let before_exit = wrap_pyfunction!(call::_before_exit, m)?;
    m.py()
        .import("atexit")?
        .getattr("register")?
        .call1((before_exit,))?;
    let os = m.py().import("os")?;
    if os.hasattr("register_at_fork")? {
        for after_fork in [
            wrap_pyfunction!(call::_after_fork_in_child, m)?,
            wrap_pyfunction!(loader::_after_fork_in_child, m)?,
        ] {
            let kwargs = pyo3::types::PyDict::new(m.py());
            kwargs.set_item("after_in_child", after_fork)?;
            os.getattr("register_at_fork")?.call((), Some(&kwargs))?;
        }
    }
    Ok(())
}
