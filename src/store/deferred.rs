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
        #[cfg(Py_GIL_DISABLED)]
        let obj = shared::from_local(obj);
        PyOwned(ManuallyDrop::new(obj))
    }
}

/// On the free-threaded build a reference has an owner: `Py_INCREF` on the
/// thread that made an object counts in its local count, and a `Py_DECREF`
/// by another thread that takes the shared count below zero hands the object
/// to its owner, which frees it (and runs its finalizer) at its next
/// evaluation-breaker check, in whatever frame it is then running: nested,
/// say, in a finalizer of its own that writes to the cache (a chain of such
/// finalizers went 500 deep and raised `RecursionError`). So the cache holds
/// its references in the shared count from the start, and gives them back
/// there: an object whose owner has dropped its own references is then freed
/// by the thread that lets go of it, in the release loop of [`run`].
/// Immortal objects are left alone, as `Py_INCREF` leaves them.
#[cfg(Py_GIL_DISABLED)]
mod shared {
    use std::sync::atomic::Ordering;

    use pyo3::ffi;
    use pyo3::prelude::*;

    extern "C" {
        /// The shared half of `Py_DECREF` (exported by 3.13t for it).
        fn _Py_DecRefShared(op: *mut ffi::PyObject);
    }

    /// One shared reference (`1 << _Py_REF_SHARED_SHIFT` in the count).
    const ONE: isize = 1 << 2;

    /// # Safety
    /// `op` must be a live object.
    unsafe fn immortal(op: *mut ffi::PyObject) -> bool {
        // SAFETY: reads a field of a live object.
        unsafe { (*op).ob_ref_local.load(Ordering::Relaxed) == u32::MAX }
    }

    /// `obj`'s reference, moved to the shared count.
    pub(super) fn from_local(obj: Py<PyAny>) -> Py<PyAny> {
        let op = obj.as_ptr();
        // SAFETY: `obj` keeps `op` alive; the shared reference is taken
        // before the one `obj` holds is given back, so the count never
        // reaches zero here. (Called attached, as every `PyOwned::new`.)
        unsafe {
            if !immortal(op) {
                (*op).ob_ref_shared.fetch_add(ONE, Ordering::Relaxed);
                ffi::Py_DECREF(obj.into_ptr());
                return Bound::from_owned_ptr(Python::assume_attached(), op).unbind();
            }
        }
        obj
    }

    /// Gives back a reference taken by [`from_local`].
    ///
    /// # Safety
    /// `op` must hold such a reference; the caller must be attached.
    pub(super) unsafe fn release(op: *mut ffi::PyObject) {
        // SAFETY: as the caller guarantees.
        unsafe {
            if !immortal(op) {
                _Py_DecRefShared(op);
            }
        }
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

impl Local {
    /// Sets `pending`, counting the threads that have it in [`PENDING`].
    #[inline]
    fn set_pending(&self, pending: bool) {
        #[cfg(not(Py_GIL_DISABLED))]
        if self.pending.replace(pending) != pending {
            if pending {
                PENDING.fetch_add(1, Ordering::Relaxed);
            } else {
                PENDING.fetch_sub(1, Ordering::Relaxed);
            }
        }
        #[cfg(Py_GIL_DISABLED)]
        self.pending.set(pending);
    }
}

/// On the GIL build, how many threads have something queued: while none has,
/// [`run`] answers without a look at this thread's queue (a thread-local,
/// about 15 instructions a call). A thread reads its own increments in
/// order, so a thread with items queued never finds 0 here. Not on the
/// free-threaded build, where threads writing at once would all update this
/// one counter (a cache line passed between cores on every write).
#[cfg(not(Py_GIL_DISABLED))]
static PENDING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

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
            local.set_pending(false);
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
                local.set_pending(true);
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
    run_holding(py, exiting, NOT_HELD);
}

/// The key and value objects of a write (see [`run_holding`]), or nulls.
pub(crate) type Held = [*mut ffi::PyObject; 2];

/// No objects held: what every call but a write of one entry passes.
pub(crate) const NOT_HELD: Held = [std::ptr::null_mut(); 2];

/// [`run`] after a write of `held` (its key and value objects): the release
/// loop does not let go of them while someone else still holds them (their
/// reference stays queued for the thread's next release). A write whose
/// entry moka lets go of at once (refused by the eviction policy) would
/// otherwise leave the caller's own reference to the value as the last one,
/// and its finalizer would run when the caller drops its argument, nested in
/// whatever frame made the write. Released by a later loop instead, it runs
/// there, one finalizer deep (the chain of `tests/test_finalizers.py` whose
/// finalizers write values the cache refuses). Passed as an argument, not
/// kept in the thread-local: two look-ups fewer per write.
#[inline]
pub(crate) fn run_holding(py: Python<'_>, exiting: fn() -> bool, held: Held) {
    #[cfg(not(Py_GIL_DISABLED))]
    let mine = PENDING.load(Ordering::Relaxed) != 0 && LOCAL.with(|local| local.pending.get());
    #[cfg(Py_GIL_DISABLED)]
    let mine = LOCAL.with(|local| local.pending.get());
    if mine || HAS_ORPHANS.load(Ordering::Relaxed) {
        run_queued(py, exiting, held);
    }
}

/// Marks this thread as releasing for as long as it lives (also when a
/// release unwinds), so that a nested [`run`] leaves its items to this loop.
struct Running<'a>(&'a Local);

impl<'a> Running<'a> {
    /// `None` when this thread is already releasing.
    fn enter(local: &'a Local) -> Option<Self> {
        if local.running.replace(true) {
            None
        } else {
            Some(Running(local))
        }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.set(false);
    }
}

#[cold]
#[inline(never)]
fn run_queued(py: Python<'_>, exiting: fn() -> bool, held: Held) {
    // One look-up of the thread-local for the whole loop (each is a call to
    // `__tls_get_addr` in a shared library). `Local` has no destructor, so
    // the reference is good for as long as the thread runs, and the loop only
    // borrows its cells briefly: a release that calls the cache again uses
    // the same cells through its own look-up.
    LOCAL.with(|local| run_local(local, py, exiting, held));
}

fn run_local(local: &Local, py: Python<'_>, exiting: fn() -> bool, held: Held) {
    // Nested in a release of this thread: the outer loop, which goes on
    // until the queue is empty, takes what this call would have run.
    let Some(_running) = Running::enter(local) else {
        return;
    };
    let mut kept: Vec<Item> = Vec::new();
    loop {
        // The queue gets the spare buffer (a release that runs the cache
        // again while this batch is out, and finds none, starts a new one).
        let mut batch = {
            local.set_pending(false);
            let mut items = local.items.borrow_mut();
            if items.is_empty() {
                Vec::new()
            } else {
                std::mem::replace(&mut *items, local.spare.take())
            }
        };
        if HAS_ORPHANS.load(Ordering::Acquire) && HAS_ORPHANS.swap(false, Ordering::AcqRel) {
            batch.append(&mut ORPHANS.lock().unwrap_or_else(PoisonError::into_inner));
        }
        if batch.is_empty() {
            if !kept.is_empty() {
                // For the next loop on this thread (see `run_holding`).
                local.items.borrow_mut().append(&mut kept);
                local.set_pending(true);
            }
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
                None => {
                    let obj: *mut ffi::PyObject = item.ptr.cast().as_ptr();
                    // SAFETY: a live object (this item owns a reference).
                    if held.contains(&obj) && unsafe { ffi::Py_REFCNT(obj) } > 1 {
                        kept.push(item);
                    } else {
                        // SAFETY: an owned strong reference (shared on the
                        // free-threaded build, see `shared`), released once;
                        // we are attached and hold no lock.
                        #[cfg(not(Py_GIL_DISABLED))]
                        unsafe {
                            ffi::Py_DECREF(obj);
                        }
                        // SAFETY: as above.
                        #[cfg(Py_GIL_DISABLED)]
                        unsafe {
                            shared::release(obj);
                        }
                    }
                }
                // SAFETY: the pointer and the function `defer_boxed` or
                // `defer_arc` queued together, called once; attached.
                Some(release) => unsafe { release(py, item.ptr) },
            }
        }
        // Keep the larger of the two buffers for the next batch.
        if local.state.get() == LIVE {
            let spare = local.spare.take();
            local.spare.set(if spare.capacity() >= batch.capacity() {
                spare
            } else {
                batch
            });
        }
    }
}
