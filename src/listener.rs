//! The eviction listener, delivered outside moka.
//!
//! moka calls its listener synchronously, on the thread whose operation caused
//! the removal, while it may hold internal locks. Our moka listener therefore
//! only pushes the notification into a thread-local buffer; when the cache
//! method returns to the interpreter it calls [`deliver`], which runs the
//! Python listener on the same thread, before the method returns, holding no
//! lock. A listener may thus call back into the cache (even for the same key).
//! Its exceptions go to `sys.unraisablehook`.

use std::cell::RefCell;
use std::sync::Arc;

use moka::notification::RemovalCause;
use pyo3::prelude::*;
use pyo3::{intern, PyTraverseError, PyVisit};

use crate::entry::Entry;
use crate::key::Key;
use crate::slot::PySlot;

/// The user's listener.
pub(crate) struct Listener {
    callback: PySlot,
}

struct Notification {
    listener: Arc<Listener>,
    key: Arc<Key>,
    entry: Arc<Entry>,
    cause: RemovalCause,
}

thread_local! {
    static PENDING: RefCell<Vec<Notification>> = const { RefCell::new(Vec::new()) };
}

impl Listener {
    pub(crate) fn new(callback: Py<PyAny>) -> Arc<Self> {
        Arc::new(Listener {
            callback: PySlot::new(callback),
        })
    }

    /// The function given to moka: queues, never runs Python.
    pub(crate) fn queue(
        self: &Arc<Self>,
    ) -> impl Fn(Arc<Key>, Arc<Entry>, RemovalCause) + Send + Sync {
        let listener = Arc::clone(self);
        move |key, entry, cause| {
            let n = Notification {
                listener: Arc::clone(&listener),
                key,
                entry,
                cause,
            };
            // During thread teardown the buffer may be gone: drop the notification.
            let _ = PENDING.try_with(|p| p.borrow_mut().push(n));
        }
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

/// Calls the listeners of every notification queued on this thread. Called
/// attached, holding no lock, at the end of each cache method.
pub(crate) fn deliver(py: Python<'_>) {
    loop {
        let batch = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
        if batch.is_empty() {
            return;
        }
        for n in batch {
            let Some(cb) = n.listener.callback.get(py) else {
                continue;
            };
            let args = (
                n.key.obj().clone_ref(py),
                n.entry.obj.clone_ref(py),
                cause_name(py, n.cause),
            );
            if let Err(err) = crate::detach::call_python(py, || cb.call1(py, args)) {
                err.write_unraisable(py, Some(cb.bind(py)));
            }
        }
    }
}
