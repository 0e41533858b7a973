//! The binding's own errors and how they become Python exceptions.
//!
//! Validation functions (`options.rs`) return `Result<T, Error>`; the `From`
//! impl below turns an `Error` into the builtin exception that Python code
//! expects at the boundary, where `?` in a `PyResult` function converts it.
//! Every message names the rule and the bad value: `"{rule}, not {type}"` for a
//! value of the wrong type, `"{rule}, got {repr}"` for a value out of range.

use pyo3::exceptions::{PyKeyError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;

#[derive(Debug)]
pub(crate) enum Error {
    /// A value of the right type but outside the allowed range: `ValueError`.
    Value(String),
    /// A value of the wrong type: `TypeError`.
    Type(String),
    /// `get_with` re-entered for the key its own initializer is computing:
    /// `RuntimeError`.
    Recursion(String),
    /// An exception raised by Python code while a value was checked (a
    /// comparison), passed on unchanged.
    Python(PyErr),
}

impl Error {
    /// `TypeError("{rule}, not {type name}")`.
    pub(crate) fn wrong_type(rule: &str, value: &Bound<'_, PyAny>) -> Self {
        Error::Type(format!("{rule}, not {}", type_name(value)))
    }

    /// `ValueError("{rule}, got {repr}")`.
    pub(crate) fn bad_value(rule: &str, value: &Bound<'_, PyAny>) -> Self {
        Error::Value(format!("{rule}, got {}", repr(value)))
    }
}

impl From<PyErr> for Error {
    fn from(err: PyErr) -> Self {
        Error::Python(err)
    }
}

impl From<Error> for PyErr {
    fn from(err: Error) -> Self {
        match err {
            Error::Value(msg) => PyValueError::new_err(msg),
            Error::Type(msg) => PyTypeError::new_err(msg),
            Error::Recursion(msg) => PyRuntimeError::new_err(msg),
            Error::Python(err) => err,
        }
    }
}

/// `repr(value)` for a message, or `<T object>` when its `__repr__` fails (the
/// exception is dropped: the message is about another error).
pub(crate) fn repr(value: &Bound<'_, PyAny>) -> String {
    value.repr().map_or_else(
        |_| format!("<{} object>", type_name(value)),
        |r| r.to_string(),
    )
}

/// The name of `value`'s type, or `?` if even that fails.
pub(crate) fn type_name(value: &Bound<'_, PyAny>) -> String {
    value
        .get_type()
        .name()
        .map_or_else(|_| "?".to_owned(), |n| n.to_string())
}

/// `KeyError(key)`, as a `dict` raises it.
pub(crate) fn key_error(key: &Bound<'_, PyAny>) -> PyErr {
    PyKeyError::new_err((key.clone().unbind(),))
}
