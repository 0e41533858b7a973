//! The eviction listener, delivered outside moka.
//!
//! moka calls its listener synchronously, on the thread whose operation caused
//! the removal, while it may hold internal locks. Our moka listener therefore
//! only queues the notification (`deferred.rs`); when the cache method is back
//! from moka, `call::after` delivers it on the same thread, before the method
//! returns, holding no lock. A listener may thus call back into the cache
//! (even for the same key). Its exceptions go to `sys.unraisablehook`.

use std::sync::Arc;

use moka::notification::RemovalCause;
use pyo3::prelude::*;
use pyo3::{intern, PyTraverseError, PyVisit};

use crate::store::entry::Entry;
use crate::store::key::Key;
use crate::store::slot::PySlot;

/// The user's listener.
pub(crate) struct Listener {
    callback: PySlot,
}

pub(crate) struct Notification {
    listener: Arc<Listener>,
    key: Arc<Key>,
    entry: Arc<Entry>,
    cause: RemovalCause,
}

impl Listener {
    pub(crate) fn new(callback: Py<PyAny>) -> Arc<Self> {
        Arc::new(Listener {
            callback: PySlot::new(callback),
        })
    }

    /// Called from moka's eviction listener: queues the notification, never
    /// runs Python.
    pub(crate) fn notify(self: &Arc<Self>, key: Arc<Key>, entry: Arc<Entry>, cause: RemovalCause) {
        let n = Notification {
            listener: Arc::clone(self),
            key,
            entry,
            cause,
        };
        crate::store::deferred::defer_boxed(Box::new(n));
    }

    pub(crate) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.callback.traverse(visit)
    }

    pub(crate) fn clear(&self) {
        self.callback.clear();
    }
}

fn cause_name(py: Python<'_>, cause: RemovalCause) -> &Bound<'_, pyo3::types::PyString> {
    match cause {
        RemovalCause::Expired => intern!(py, "expired"),
        RemovalCause::Explicit => intern!(py, "explicit"),
        RemovalCause::Replaced => intern!(py, "replaced"),
        RemovalCause::Size => intern!(py, "size"),
    }
}

impl crate::store::deferred::Deferred for Notification {
    /// Calls the listener (attached, holding no lock: from `deferred::run`).
    fn release(self, py: Python<'_>) {
        let Some(cb) = self.listener.callback.get(py) else {
            return;
        };
        let args = (
            self.key.obj().clone_ref(py),
            self.entry.obj.clone_ref(py),
            cause_name(py, self.cause),
        );
        if let Err(err) = crate::store::call::call_python(py, || cb.call1(py, args)) {
            err.write_unraisable(py, Some(cb.bind(py)));
        }
    }
}
