//! A replaceable reference to a Python callable (the listener, the weigher),
//! emptied by the GC's `__clear__` to break reference cycles.
//!
//! Lock: the mutex is held only to clone, visit or take the reference; nothing
//! inside it runs Python code or waits, so a thread that waits on it (attached
//! or not) waits for a few instructions at most.

use std::sync::{Mutex, PoisonError};

use pyo3::prelude::*;
use pyo3::{PyTraverseError, PyVisit};

use crate::store::deferred::PyOwned;

/// The reference is a [`PyOwned`]: wherever the slot is dropped, the release
/// happens outside moka and every lock.
pub(crate) struct PySlot(Mutex<Option<PyOwned>>);

impl PySlot {
    pub(crate) fn new(obj: Py<PyAny>) -> Self {
        PySlot(Mutex::new(Some(PyOwned::new(obj))))
    }

    pub(crate) fn get(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        let slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        slot.as_ref().map(|obj| obj.clone_ref(py))
    }

    pub(crate) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        // Never block inside the GC: a slot that is busy is simply not visited,
        // which only makes the collector more conservative.
        if let Ok(slot) = self.0.try_lock() {
            if let Some(obj) = slot.as_ref() {
                visit.call(&**obj)?;
            }
        }
        Ok(())
    }

    pub(crate) fn clear(&self) {
        let old = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        drop(old);
    }
}
