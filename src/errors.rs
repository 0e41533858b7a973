//! The crate's error type and its conversion to Python exceptions at the boundary.

use pyo3::exceptions::{PyKeyError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;

/// Errors raised by the binding itself (as opposed to errors raised by user
/// code, which travel as `PyErr` unchanged).
#[derive(Debug)]
pub(crate) enum Error {
    /// A value of the right type but outside the allowed range.
    Value(String),
    /// A value of the wrong type.
    Type(String),
    /// `get_with` re-entered for the key its own initializer is computing.
    Recursion(String),
}

impl From<Error> for PyErr {
    fn from(err: Error) -> Self {
        match err {
            Error::Value(msg) => PyValueError::new_err(msg),
            Error::Type(msg) => PyTypeError::new_err(msg),
            Error::Recursion(msg) => PyRuntimeError::new_err(msg),
        }
    }
}

/// `KeyError(key)`, as a `dict` raises it.
pub(crate) fn key_error(key: &Bound<'_, PyAny>) -> PyErr {
    PyKeyError::new_err((key.clone().unbind(),))
}
