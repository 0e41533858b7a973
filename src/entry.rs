//! The value moka stores: the Python object plus what moka's policies need to
//! know about it, computed before the insert so that moka never calls Python.

use std::time::Duration;

use pyo3::prelude::*;

pub(crate) struct Entry {
    /// The cached object, stored by reference.
    pub(crate) obj: Py<PyAny>,
    /// The weigher's result (1 without a weigher), read by moka's weigher.
    pub(crate) weight: u32,
    /// Per-entry time to live, read by [`crate::expiry::PerEntry`].
    pub(crate) ttl: Option<Duration>,
    /// Per-entry time to idle, read by [`crate::expiry::PerEntry`].
    pub(crate) tti: Option<Duration>,
}
