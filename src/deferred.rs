//! What must not run inside moka, queued while in it and run after it.
//!
//! Two kinds of work would run Python code at a moment moka chooses, possibly
//! while it holds one of its locks:
//!
//! * an eviction notification (moka calls its listener synchronously, on the
//!   thread whose operation removed the entry);
//! * the release of a Python reference that moka lets go of (a replaced,
//!   evicted, expired, removed or cleared value or key, or one freed later
//!   from moka's epoch-based garbage): the last `Py_DECREF` of an object runs
//!   its finalizer (`__del__`, `weakref` callbacks), which may call the cache.
//!
//! Every Python reference that moka or a lock of ours can hold is therefore a
//! [`PyOwned`], whose `Drop` does not decrement the count: it queues the
//! pointer on the current thread. Notifications are queued the same way, and
//! so are the references to canonical keys (see `intern.rs`), whose release
//! takes an interner lock. [`run`] does all of it, attached, holding no lock:
//! `call::enter` calls it after every moka call. PyO3's own deferred reference
//! pool is never relied on.
//!
//! A queue left on a thread that ends (its thread-local storage torn down)
//! moves to a process-wide list of orphans, which the next [`run`] on any
//! thread empties: nothing is lost.

use std::cell::{Cell, RefCell};
use std::mem::ManuallyDrop;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use pyo3::ffi;
use pyo3::prelude::*;

use crate::intern::Canon;
use crate::listener::Notification;

/// A strong reference to a Python object whose release is deferred to [`run`]
/// (see the module comment). Dereferences to `Py<PyAny>`.
#[repr(transparent)]
pub(crate) struct PyOwned(ManuallyDrop<Py<PyAny>>);

impl PyOwned {
    pub(crate) fn new(obj: Py<PyAny>) -> Self {
        PyOwned(ManuallyDrop::new(obj))
    }
}

impl std::ops::Deref for PyOwned {
    type Target = Py<PyAny>;
    fn deref(&self) -> &Py<PyAny> {
        &self.0
    }
}

impl Drop for PyOwned {
    fn drop(&mut self) {
        // SAFETY: the field is never used again; its reference moves to the
        // queue, which releases it exactly once.
        let obj = unsafe { ManuallyDrop::take(&mut self.0) };
        // SAFETY: `into_ptr` gives up a strong reference without releasing it.
        let ptr = unsafe { NonNull::new_unchecked(obj.into_ptr()) };
        defer(Item::Object(ptr));
    }
}

pub(crate) enum Item {
    /// A strong reference to release (`Py_DECREF`).
    Object(NonNull<ffi::PyObject>),
    /// A reference to a canonical key, to check against its interner.
    Canon(Arc<Canon>),
    /// An eviction notification to deliver.
    Notify(Notification),
}

// SAFETY: an `Object` is an owned strong reference, which may be released
// from any thread that is attached; nothing else in `Item` is thread-bound.
unsafe impl Send for Item {}

/// One thread's queue. Dropped at thread exit: what is left becomes orphans.
struct Queue(RefCell<Vec<Item>>);

impl Drop for Queue {
    fn drop(&mut self) {
        let left = std::mem::take(self.0.get_mut());
        if !left.is_empty() {
            orphan(left);
        }
    }
}

thread_local! {
    static QUEUE: Queue = const { Queue(RefCell::new(Vec::new())) };
    /// Whether `QUEUE` may hold something: a flag without a destructor, so
    /// that the check made after every call is one thread-local read.
    static QUEUED: Cell<bool> = const { Cell::new(false) };
}

/// Queues left by threads that ended, or items queued during a thread's
/// teardown. Lock: held to move a vector in or out, nothing else.
static ORPHANS: Mutex<Vec<Item>> = Mutex::new(Vec::new());
static HAS_ORPHANS: AtomicBool = AtomicBool::new(false);

fn orphan(mut items: Vec<Item>) {
    ORPHANS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .append(&mut items);
    HAS_ORPHANS.store(true, Ordering::Release);
}

/// Queues `item` on this thread (or, during its teardown, as an orphan).
pub(crate) fn defer(item: Item) {
    let mut item = Some(item);
    let _ = QUEUE.try_with(|q| {
        if let Ok(mut q) = q.0.try_borrow_mut() {
            q.extend(item.take());
            QUEUED.set(true);
        }
    });
    // Left over only while the thread's storage is torn down.
    if let Some(item) = item {
        orphan(vec![item]);
    }
}

/// Runs everything queued on this thread (and the orphans): delivers the
/// notifications in order, releases the references. Must be called attached,
/// holding no lock. What it runs (listeners, finalizers) may call the cache
/// again; their own queue items are handled by the same loop.
#[inline]
pub(crate) fn run(py: Python<'_>) {
    if QUEUED.get() || HAS_ORPHANS.load(Ordering::Relaxed) {
        run_queued(py);
    }
}

#[cold]
#[inline(never)]
fn run_queued(py: Python<'_>) {
    loop {
        QUEUED.set(false);
        let mut batch = QUEUE
            .try_with(|q| {
                let mut q = q.0.borrow_mut();
                // An empty queue keeps its buffer: nothing is allocated again.
                if q.is_empty() {
                    Vec::new()
                } else {
                    std::mem::take(&mut *q)
                }
            })
            .unwrap_or_default();
        if HAS_ORPHANS.load(Ordering::Acquire) && HAS_ORPHANS.swap(false, Ordering::AcqRel) {
            batch.append(&mut ORPHANS.lock().unwrap_or_else(PoisonError::into_inner));
        }
        if batch.is_empty() {
            return;
        }
        if crate::call::exiting() {
            // A thread other than the main one must not run Python code while
            // the interpreter exits (see call.rs): the references are leaked.
            std::mem::forget(batch);
            return;
        }
        for item in batch {
            match item {
                // SAFETY: an owned strong reference, released once; we are
                // attached and hold no lock.
                Item::Object(ptr) => unsafe { ffi::Py_DecRef(ptr.as_ptr()) },
                Item::Canon(canon) => crate::intern::release(canon),
                Item::Notify(n) => n.deliver(py),
            }
        }
    }
}
