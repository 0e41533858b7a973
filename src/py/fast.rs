//! Hand-written entries for `Moka.get`, `get_with`, `set` and `remove`: the
//! calls a program makes millions of times.
//!
//! PyO3's generated entry for a method costs about 120 instructions before
//! the method's body runs (callgrind, `bash ci/profile.sh`): its trampoline
//! (the panic guard, an increment and decrement of its thread-local attach
//! count, a look at its pool of deferred references under a mutex), the
//! generic parsing of the arguments and a type check of `self`. The entries
//! here take the one shape that matters, positional arguments only, a key
//! of a built-in type (see [`key::plain`], and `uuid.UUID` for reads) and a cache without an eviction
//! listener, weigher or `refresh_after`, and do only what it needs: count
//! the arguments, catch a panic. Any other call (keywords, a wrong count, a
//! key whose hash or `==` is Python code, a cache with callbacks) goes to
//! PyO3's entry, which is kept for that: behaviour and error messages are
//! PyO3's own.
//!
//! Why only that shape: these entries do not count themselves in PyO3's
//! attach count, and PyO3 defers the release of a `Py` dropped while that
//! count is zero to its own pool (released at the next PyO3 entry). The fast
//! shape drops no `Py`: keys are borrowed, values go into entries (released
//! through `deferred.rs`, which decrements directly), and no callback of the
//! cache is called. A `get_with` miss runs its load inside `Python::try_attach`, which counts
//! it. Nothing here changes the rule of `store/call.rs`: every moka call still goes through
//! `call::enter`.
//!
//! Reads (`get`, `get_with`) take their key's hash and representation from
//! [`key::read_plain`], which also accepts an exact `uuid.UUID`: one pass over
//! the key that both checks its shape and describes it.
//!
//! `install` replaces each method in the class's dictionary by a method
//! descriptor for the entry, with the docstring and signature of PyO3's (so
//! `help()`, `inspect.signature` and stubtest see no difference), and keeps
//! PyO3's descriptor for the other calls.

use std::ffi::{CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

use pyo3::ffi;
use pyo3::panic::PanicException;
use pyo3::prelude::*;
use pyo3::{Borrowed, PyTypeInfo};

use crate::py::moka::Moka;
use crate::store::key::{self, KeyRef};

/// One method: its name, its entry, and PyO3's descriptor for it (a strong
/// reference kept for the life of the process, set by [`install`]).
struct Method {
    name: &'static CStr,
    entry: ffi::PyCFunctionFastWithKeywords,
    pyo3: AtomicPtr<ffi::PyObject>,
}

static GET: Method = Method {
    name: c"get",
    entry: get,
    pyo3: AtomicPtr::new(ptr::null_mut()),
};
static GET_WITH: Method = Method {
    name: c"get_with",
    entry: get_with,
    pyo3: AtomicPtr::new(ptr::null_mut()),
};
static SET: Method = Method {
    name: c"set",
    entry: set,
    pyo3: AtomicPtr::new(ptr::null_mut()),
};
static REMOVE: Method = Method {
    name: c"remove",
    entry: remove,
    pyo3: AtomicPtr::new(ptr::null_mut()),
};

/// Puts the entries in place of PyO3's in `Moka`'s dictionary (at import).
pub(crate) fn install(py: Python<'_>) -> PyResult<()> {
    let tp = Moka::type_object(py);
    for method in [&GET, &GET_WITH, &SET, &REMOVE] {
        let name = method.name.to_str().expect("ASCII");
        let pyo3 = tp.getattr(name)?;
        // `name(signature)\n--\n\ndoc`: how CPython reads a signature from
        // a C method's docstring (`__text_signature__`).
        let signature: Option<String> = pyo3.getattr("__text_signature__")?.extract()?;
        let doc: Option<String> = pyo3.getattr("__doc__")?.extract()?;
        let text = match signature {
            Some(sig) => format!("{name}{sig}\n--\n\n{}", doc.unwrap_or_default()),
            None => doc.unwrap_or_default(),
        };
        // Both live for the life of the process, as the descriptor does.
        let doc = CString::new(text).map_err(|e| PyErr::new::<PanicException, _>(e.to_string()))?;
        let def = Box::leak(Box::new(ffi::PyMethodDef {
            ml_name: method.name.as_ptr(),
            ml_meth: ffi::PyMethodDefPointer {
                PyCFunctionFastWithKeywords: method.entry,
            },
            ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
            ml_doc: Box::leak(doc.into_boxed_c_str()).as_ptr(),
        }));
        // SAFETY: `tp` is a live type object and `def` a method definition
        // that outlives it; NULL comes with an exception set.
        let descr = unsafe {
            Bound::from_owned_ptr_or_err(py, ffi::PyDescr_NewMethod(tp.as_type_ptr(), def))?
        };
        method
            .pyo3
            .store(pyo3.unbind().into_ptr(), Ordering::Release);
        tp.setattr(name, descr)?;
    }
    Ok(())
}

/// A call the fast shape does not take, passed on to PyO3's entry (with
/// `slf` as its first argument).
///
/// # Safety
/// As the entries: attached, `args` holds `nargs` positional arguments then
/// one value per name of `kwnames` (a tuple, or NULL).
#[cold]
#[inline(never)]
unsafe fn slow(
    method: &Method,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: as the caller guarantees; the descriptor was stored at import.
    unsafe {
        let nkw = if kwnames.is_null() {
            0
        } else {
            ffi::PyTuple_GET_SIZE(kwnames)
        };
        #[allow(clippy::cast_sign_loss)]
        let total = (nargs + nkw) as usize;
        let mut all = Vec::with_capacity(total + 1);
        all.push(slf);
        all.extend_from_slice(std::slice::from_raw_parts(args, total));
        #[allow(clippy::cast_sign_loss)]
        ffi::PyObject_Vectorcall(
            method.pyo3.load(Ordering::Acquire),
            all.as_ptr(),
            (nargs + 1) as usize,
            kwnames,
        )
    }
}

/// Runs `body`, turning an error into a raised exception and a panic into
/// PyO3's `PanicException`, as PyO3's own entries do.
#[inline]
fn guarded(body: impl FnOnce(Python<'_>) -> PyResult<*mut ffi::PyObject>) -> *mut ffi::PyObject {
    // SAFETY: CPython calls the entries attached.
    let py = unsafe { Python::assume_attached() };
    match catch_unwind(AssertUnwindSafe(|| body(py))) {
        Ok(Ok(obj)) => obj,
        Ok(Err(err)) => {
            err.restore(py);
            ptr::null_mut()
        }
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic in moka_py".to_owned());
            PyErr::new::<PanicException, _>(message).restore(py);
            ptr::null_mut()
        }
    }
}

/// The cache behind `slf`, when it has the fast shape: no eviction
/// listener, no weigher, no `refresh_after`.
///
/// # Safety
/// `slf` must be a live `Moka` (a method descriptor of the class checks the
/// type of `self` before it calls the entry).
#[inline]
unsafe fn plain_cache<'a>(slf: *mut ffi::PyObject) -> Option<&'a Moka> {
    // SAFETY: as the caller guarantees; `Moka` is frozen, so `get` needs no
    // borrow, and `slf` outlives the call (the caller holds it).
    let moka: &'a Moka = unsafe {
        let py = Python::assume_attached();
        let slf = Borrowed::from_ptr(py, slf).cast_unchecked::<Moka>();
        &*ptr::from_ref(slf.get())
    };
    moka.is_plain().then_some(moka)
}

/// Whether the arguments have the fast shape: `min..=max` positional
/// arguments, no keywords, a first argument of a plain key type.
///
/// # Safety
/// As the entries.
#[inline]
unsafe fn plain_args(
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
    min: ffi::Py_ssize_t,
    max: ffi::Py_ssize_t,
) -> bool {
    // SAFETY: `args` holds at least `nargs` objects.
    counted(nargs, kwnames, min, max) && unsafe { key::plain(*args) }
}

/// Whether the arguments are `min..=max` positional ones.
#[inline]
fn counted(
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
    min: ffi::Py_ssize_t,
    max: ffi::Py_ssize_t,
) -> bool {
    kwnames.is_null() && nargs >= min && nargs <= max
}

/// The cache and the first argument's read key, when a read has the fast
/// shape (see [`plain_cache`] and [`key::read_plain`]).
///
/// # Safety
/// As the entries.
#[inline(always)]
unsafe fn plain_read<'a>(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
    min: ffi::Py_ssize_t,
    max: ffi::Py_ssize_t,
) -> Option<(&'a Moka, isize, KeyRef)> {
    // SAFETY: as the caller guarantees.
    unsafe {
        let moka = plain_cache(slf)?;
        if !counted(nargs, kwnames, min, max) {
            return None;
        }
        let key = Borrowed::from_ptr(Python::assume_attached(), *args);
        let (hash, repr) = key::read_plain(&key)?;
        Some((moka, hash, KeyRef::new(hash, repr)))
    }
}

/// The second positional argument if there are two, else `None`: a new
/// reference.
///
/// # Safety
/// As the entries.
#[inline]
unsafe fn default(args: *const *mut ffi::PyObject, nargs: ffi::Py_ssize_t) -> *mut ffi::PyObject {
    // SAFETY: `args` holds `nargs` objects; `None` is immortal or counted.
    unsafe {
        let default = if nargs == 2 {
            *args.add(1)
        } else {
            ffi::Py_None()
        };
        ffi::Py_IncRef(default);
        default
    }
}

/// `Moka.get(key, default=None)`.
unsafe extern "C" fn get(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: called by CPython with a live `Moka` and its arguments.
    unsafe {
        let Some((moka, _, key)) = plain_read(slf, args, nargs, kwnames, 1, 2) else {
            return slow(&GET, slf, args, nargs, kwnames);
        };
        guarded(|py| {
            Ok(match moka.read(py, Some(&key)) {
                Some(value) => value.into_ptr(),
                None => default(args, nargs),
            })
        })
    }
}

/// `Moka.get_with(key, initializer)`. A miss runs the single-flight load
/// inside `Python::try_attach`, which counts it in PyO3's attach count (see
/// the module comment); while the interpreter finalizes, when PyO3 will not
/// attach, it goes to PyO3's entry.
unsafe extern "C" fn get_with(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: called by CPython with a live `Moka` and its arguments.
    unsafe {
        let Some((moka, hash, lookup)) = plain_read(slf, args, nargs, kwnames, 2, 2) else {
            return slow(&GET_WITH, slf, args, nargs, kwnames);
        };
        let mut finalizing = false;
        let found = guarded(|py| {
            // No `refresh_after`: a hit is never stale.
            if let Some(value) = moka.lookup(py, &lookup) {
                moka.count_read(true);
                return Ok(value.into_ptr());
            }
            let key = &*Borrowed::from_ptr(py, *args);
            let initializer = &*Borrowed::from_ptr(py, *args.add(1));
            let owned = moka.owned_hashed(key, hash, Some(&lookup))?;
            let loaded = Python::try_attach(|py| {
                moka.count_read(false);
                moka.load(py, owned, || initializer.call0(), None, None, None)
            });
            let Some(loaded) = loaded else {
                finalizing = true;
                return Ok(ptr::null_mut());
            };
            loaded.map(Py::into_ptr)
        });
        if finalizing {
            return slow(&GET_WITH, slf, args, nargs, kwnames);
        }
        found
    }
}

/// `Moka.set(key, value)`.
unsafe extern "C" fn set(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: called by CPython with a live `Moka` and its arguments.
    unsafe {
        let moka = match plain_cache(slf) {
            Some(moka) if plain_args(args, nargs, kwnames, 2, 2) => moka,
            _ => return slow(&SET, slf, args, nargs, kwnames),
        };
        guarded(|py| {
            let key = &*Borrowed::from_ptr(py, *args);
            let value = &*Borrowed::from_ptr(py, *args.add(1));
            moka.insert(py, key, value, None, None, None)?;
            Ok(ffi::Py_NewRef(ffi::Py_None()))
        })
    }
}

/// `Moka.remove(key, default=None)`.
unsafe extern "C" fn remove(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: called by CPython with a live `Moka` and its arguments.
    unsafe {
        let moka = match plain_cache(slf) {
            Some(moka) if plain_args(args, nargs, kwnames, 1, 2) => moka,
            _ => return slow(&REMOVE, slf, args, nargs, kwnames),
        };
        guarded(|py| {
            let key = &*Borrowed::from_ptr(py, *args);
            let found = match moka.key_ref(key)? {
                Some(key) => moka.take(py, &key),
                None => None,
            };
            Ok(match found {
                Some(value) => value.into_ptr(),
                None => default(args, nargs),
            })
        })
    }
}
