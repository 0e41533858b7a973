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
//! pointer on the current thread. Anything else whose release must wait (a
//! notification, a canonical key's reference, whose release takes an
//! interner lock) is queued as a pointer and the function that releases it
//! ([`defer_boxed`], [`defer_arc`]): the queue holds one kind of item and knows
//! none of its callers. [`run`] releases everything, attached, holding no
//! lock: `call::enter` calls it after every moka call. PyO3's own deferred
//! reference pool is never relied on.
//!
//! The queue's buffers stay with their thread (a released batch's buffer is
//! kept for the next one), so a call that queues something allocates
//! nothing. Its thread-local storage has no destructor of its own, which
//! keeps [`run`]'s "anything queued?" check one thread-local read; a guard
//! with a destructor is registered on a thread's first queued item. A queue
//! left on a thread that ends moves to a process-wide list of orphans, which
//! the next [`run`] on any thread empties: nothing is lost.

use std::cell::{Cell, RefCell};
use std::mem::ManuallyDrop;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use pyo3::ffi;
use pyo3::prelude::*;

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
    #[inline]
    fn drop(&mut self) {
        // SAFETY: the field is never used again; its reference moves to the
        // queue, which releases it exactly once.
        let obj = unsafe { ManuallyDrop::take(&mut self.0) };
        // SAFETY: `into_ptr` gives up a strong reference without releasing it.
        let ptr = unsafe { NonNull::new_unchecked(obj.into_ptr()) };
        push(Item {
            ptr: ptr.cast(),
            release: None,
        });
    }
}

/// How a queued pointer is released (attached, holding no lock).
type Release = unsafe fn(Python<'_>, NonNull<()>);

/// One queued release: a strong reference to a Python object (`release` is
/// `None`: a `Py_DECREF`, inline) or a pointer and the function that
/// releases it.
struct Item {
    ptr: NonNull<()>,
    release: Option<Release>,
}

// SAFETY: a Python reference may be released from any attached thread, and
// the other pointers come from `defer_boxed`/`defer_arc`, which require
// `Send` of what they point to.
unsafe impl Send for Item {}

/// What a thread queues, released by [`run`]: implemented by every type that
/// is queued by [`defer_boxed`] (a notification) or [`defer_arc`] (a
/// canonical key's reference).
pub(crate) trait Deferred: Send + 'static {
    /// Runs attached, holding no lock; may run Python code.
    fn release(self, py: Python<'_>);
}

/// Queues `value` (boxed) for [`run`], which calls its `release`.
pub(crate) fn defer_boxed<T: Deferred>(value: Box<T>) {
    /// # Safety
    /// `ptr` comes from `Box::into_raw` of a `Box<T>`, and is released once.
    unsafe fn release_boxed<T: Deferred>(py: Python<'_>, ptr: NonNull<()>) {
        // SAFETY: as the function's contract says.
        let value = unsafe { Box::from_raw(ptr.cast::<T>().as_ptr()) };
        value.release(py);
    }
    // SAFETY: `Box::into_raw` never returns null.
    let ptr = unsafe { NonNull::new_unchecked(Box::into_raw(value)) };
    push(Item {
        ptr: ptr.cast(),
        release: Some(release_boxed::<T>),
    });
}

/// Queues `value` (a reference counted pointer, not boxed again) for [`run`],
/// which calls its `release`.
pub(crate) fn defer_arc<T: Send + Sync + 'static>(value: Arc<T>)
where
    Arc<T>: Deferred,
{
    /// # Safety
    /// `ptr` comes from `Arc::into_raw` of an `Arc<T>`, and is released once.
    unsafe fn release_arc<T: Send + Sync + 'static>(py: Python<'_>, ptr: NonNull<()>)
    where
        Arc<T>: Deferred,
    {
        // SAFETY: as the function's contract says.
        let value = unsafe { Arc::from_raw(ptr.cast::<T>().as_ptr()) };
        value.release(py);
    }
    // SAFETY: `Arc::into_raw` never returns null.
    let ptr = unsafe { NonNull::new_unchecked(Arc::into_raw(value).cast_mut()) };
    push(Item {
        ptr: ptr.cast(),
        release: Some(release_arc::<T>),
    });
}

/// One thread's queue. Its thread-local has no destructor (see the module
/// comment): [`Guard`] empties it when the thread ends.
struct Local {
    /// What is queued, in order.
    items: RefCell<Vec<Item>>,
    /// The buffer of the last released batch, kept for the next one.
    spare: Cell<Vec<Item>>,
    /// Whether `items` may hold something.
    pending: Cell<bool>,
    /// Whether [`run_queued`] is running on this thread: a release it makes
    /// (a finalizer or listener that calls the cache) queues its own releases
    /// for that loop instead of running them one frame deeper.
    running: Cell<bool>,
    /// [`FRESH`], [`LIVE`] (the guard is registered) or [`GONE`].
    state: Cell<u8>,
}

const FRESH: u8 = 0;
const LIVE: u8 = 1;
const GONE: u8 = 2;

/// Registered on a thread's first queued item; at thread exit, turns what is
/// left into orphans and frees the buffers.
struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        LOCAL.with(|local| {
            local.state.set(GONE);
            local.pending.set(false);
            let left = std::mem::take(&mut *local.items.borrow_mut());
            drop(local.spare.take());
            if !left.is_empty() {
                orphan(left);
            }
        });
    }
}

thread_local! {
    static LOCAL: ManuallyDrop<Local> = const {
        ManuallyDrop::new(Local {
            items: RefCell::new(Vec::new()),
            spare: Cell::new(Vec::new()),
            pending: Cell::new(false),
            running: Cell::new(false),
            state: Cell::new(FRESH),
        })
    };
    static GUARD: Guard = const { Guard };
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
#[inline]
fn push(item: Item) {
    let item = LOCAL.with(|local| {
        if local.state.get() != LIVE && !register(local) {
            return Some(item);
        }
        match local.items.try_borrow_mut() {
            Ok(mut items) => {
                items.push(item);
                local.pending.set(true);
                None
            }
            Err(_) => Some(item),
        }
    });
    if let Some(item) = item {
        orphan(vec![item]);
    }
}

/// Registers this thread's [`Guard`]; false once the thread is ending.
#[cold]
fn register(local: &Local) -> bool {
    if local.state.get() == GONE || GUARD.try_with(|_| ()).is_err() {
        return false;
    }
    local.state.set(LIVE);
    true
}

/// Runs everything queued on this thread (and the orphans): delivers the
/// notifications in order, releases the references. Must be called attached,
/// holding no lock. `exiting` says whether this thread must not run Python
/// code any more (`exit.rs`): then what is queued is leaked. What it runs
/// (listeners, finalizers) may call the cache again; their own queue items
/// are handled by the same loop, never by a nested one: a chain of
/// finalizers each of which writes to the cache (and so lets go of the next
/// value) stays one finalizer deep, however long it is (a trampoline).
#[inline]
pub(crate) fn run(py: Python<'_>, exiting: fn() -> bool) {
    if LOCAL.with(|local| local.pending.get()) || HAS_ORPHANS.load(Ordering::Relaxed) {
        run_queued(py, exiting);
    }
}

/// Marks this thread as releasing for as long as it lives (also when a
/// release unwinds), so that a nested [`run`] leaves its items to this loop.
struct Running;

impl Running {
    /// `None` when this thread is already releasing (or is ending).
    fn enter() -> Option<Self> {
        let nested = LOCAL
            .try_with(|local| local.running.replace(true))
            .unwrap_or(true);
        if nested {
            None
        } else {
            Some(Running)
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = LOCAL.try_with(|local| local.running.set(false));
    }
}

#[cold]
#[inline(never)]
fn run_queued(py: Python<'_>, exiting: fn() -> bool) {
    // Nested in a release of this thread: the outer loop, which goes on
    // until the queue is empty, takes what this call would have run.
    let Some(_running) = Running::enter() else {
        return;
    };
    loop {
        // The queue gets the spare buffer (a release that runs the cache
        // again while this batch is out, and finds none, starts a new one).
        let mut batch = LOCAL.with(|local| {
            local.pending.set(false);
            let mut items = local.items.borrow_mut();
            if items.is_empty() {
                Vec::new()
            } else {
                std::mem::replace(&mut *items, local.spare.take())
            }
        });
        if HAS_ORPHANS.load(Ordering::Acquire) && HAS_ORPHANS.swap(false, Ordering::AcqRel) {
            batch.append(&mut ORPHANS.lock().unwrap_or_else(PoisonError::into_inner));
        }
        if batch.is_empty() {
            return;
        }
        if exiting() {
            // A thread other than the main one must not run Python code while
            // the interpreter exits (see call.rs): the references are leaked.
            std::mem::forget(batch);
            return;
        }
        for item in batch.drain(..) {
            match item.release {
                // SAFETY: an owned strong reference, released once; we are
                // attached and hold no lock.
                None => unsafe { ffi::Py_DECREF(item.ptr.cast().as_ptr()) },
                // SAFETY: the pointer and the function `defer_boxed` or
                // `defer_arc` queued together, called once; attached.
                Some(release) => unsafe { release(py, item.ptr) },
            }
        }
        // Keep the larger of the two buffers for the next batch.
        LOCAL.with(|local| {
            if local.state.get() == LIVE {
                let spare = local.spare.take();
                local.spare.set(if spare.capacity() >= batch.capacity() {
                    spare
                } else {
                    batch
                });
            }
        });
    }
}
