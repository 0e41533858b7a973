//! How every call enters moka (or another lock of this binding), and what runs
//! after it. Read this before adding a lock or a call into moka.
//!
//! # The rule
//!
//! No Python code runs inside a moka call, or while any lock of this binding
//! is held: not a listener or an initializer (called after, or before, holding
//! nothing), not a weigher (called before the insert), not a key's `__eq__` or
//! `__hash__` (keys compare in Rust, `key.rs`; the others are resolved to a
//! canonical id first, outside moka, `intern.rs`), and not a finalizer (every
//! Python reference that moka or a lock of ours can let go of is queued, not
//! released, `deferred.rs`). [`enter`] runs the call, then, attached and
//! holding nothing, whatever was queued: notifications, then releases.
//!
//! # Why a short call stays attached on the GIL build
//!
//! A thread inside moka holds moka's locks (a key lock, the housekeeping lock,
//! a hash-table resize) only while it runs Rust code that needs nothing else
//! from Python. On the GIL build it cannot lose the GIL there either: the GIL
//! changes hands only when the holder runs bytecode or detaches, and a short
//! call does neither. So when an attached thread waits on a moka lock, the
//! holder is a thread in a long, detached call (below), which needs neither
//! the GIL nor anything the waiter holds to finish and let go. No cycle of
//! waits can form: the waiter holds the GIL, the holder never needs it while
//! holding the lock. Staying attached saves the hand-off of the GIL around
//! every call, which under threads (the GIL going to whichever thread is
//! runnable, the caller queuing to get it back) costs far more than the call.
//!
//! # On the free-threaded build (3.13t)
//!
//! The same argument holds with "attached" for "holds the GIL", and with one
//! more waiter: a stop-the-world pause (the GC's, among others) waits until
//! every attached thread reaches a safe point or detaches. A thread holding a
//! moka lock never needs to attach while holding it (it runs no Python code
//! and does not detach inside moka), so it always gets to release it, and a
//! thread waiting on it attached only delays the pause by one moka call.
//! Which calls detach there was chosen by measuring both ways (a 90/10 and
//! an all-read loop of `get`/`set` from one and two threads, during
//! development; not a script of the repository): reads ([`Span::Read`]:
//! `get`, `in`) stay attached, since detaching costs more than the read and
//! they take no lock they could wait on for long; writes ([`Span::Write`]: an
//! insert, a removal, the in-flight map) detach, since they contend on moka's
//! write channel, key locks and housekeeping, and detached waiters let a
//! pause proceed; attached writes were slower there. The benchmark's 3.13t
//! section shows what the result does.
//!
//! # What always detaches
//!
//! A wait that can last: a `get_with` waiter waiting for its leader, and the
//! calls that work for long ([`Span::Long`]: clearing, applying pending
//! evictions, counting, walking the whole table).
//!
//! # Interpreter exit
//!
//! On CPython before 3.14, a thread that re-attaches to an interpreter that is
//! finalizing is ended by `pthread_exit`, whose forced unwinding through Rust
//! frames aborts the process. Daemon threads inside a cache method when the
//! main thread exits would hit that. So:
//!
//! * at exit (an `atexit` hook, which runs before finalization starts) the
//!   module sets [`EXITING`] and, detached, waits a bounded time for the
//!   threads inside moka_py (counted in [`ACTIVE`]) to leave;
//! * a thread other than the main one ([`MAIN_THREAD`]: the one that runs the
//!   exit hook and then finalizes) that is about to re-attach, or to run
//!   Python code from Rust, while exiting parks for good instead (detached,
//!   holding nothing); the process ends around it.
//!
//! What remains: Python code called from Rust (an initializer, a listener...)
//! that is still running when that wait times out can be ended inside our
//! frames, as before.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use crate::store::counter::Counter;
use crate::store::deferred;

static EXITING: AtomicBool = AtomicBool::new(false);
/// Whether this interpreter is a free-threaded build (set at import).
static FREE_THREADED: AtomicBool = AtomicBool::new(false);
/// Threads inside moka_py, striped: every detached call counts itself in and
/// out, and a single shared counter would be contended on 3.13t.
static ACTIVE: Counter = Counter::new();

/// How long the exit hook waits for threads to leave moka_py.
const EXIT_WAIT: Duration = Duration::from_secs(2);

// Two functions of CPython's C API that pyo3-ffi 0.28 does not declare for
// every version. The extension is built for one interpreter version at a time
// (not the limited API), so `build.rs` passes that version as `Py_3_*` cfgs.
extern "C" {
    /// Whether the runtime is finalizing: public as `Py_IsFinalizing` from
    /// 3.13 (pyo3-ffi declares it there), `_Py_IsFinalizing` before (exported
    /// by 3.10 to 3.12, removed in 3.13).
    /// PyPy (3.11) exports it as `_PyPy_IsFinalizing`.
    #[cfg(not(Py_3_13))]
    #[cfg_attr(not(PyPy), link_name = "_Py_IsFinalizing")]
    #[cfg_attr(PyPy, link_name = "_PyPy_IsFinalizing")]
    fn Py_IsFinalizing() -> std::os::raw::c_int;
    /// The identifier of the calling thread, as `threading.get_ident()`
    /// returns it (stable ABI; callable without a thread state).
    #[cfg_attr(PyPy, link_name = "PyPyThread_get_thread_ident")]
    fn PyThread_get_thread_ident() -> std::os::raw::c_ulong;
}

#[cfg(Py_3_13)]
use pyo3::ffi::Py_IsFinalizing;

/// The identifier (`threading.get_ident()`) of the thread that counts as the
/// main one: `threading.main_thread()` at import, the thread that forked in a
/// child process, and the thread that runs the exit hook (the one that goes on
/// to finalize the interpreter) from then on.
static MAIN_THREAD: AtomicU64 = AtomicU64::new(0);

// `c_ulong` is `u64` here, but 32 bits wide on Windows.
#[allow(clippy::useless_conversion)]
fn current_thread() -> u64 {
    // SAFETY: takes no argument and needs no thread state (it returns the
    // platform's identifier of the calling thread).
    u64::from(unsafe { PyThread_get_thread_ident() })
}

fn is_finalizing() -> bool {
    // SAFETY: reads an atomic flag of the runtime; callable without a thread
    // state, in every version that declares it.
    unsafe { Py_IsFinalizing() != 0 }
}

fn is_main_thread() -> bool {
    current_thread() == MAIN_THREAD.load(Ordering::SeqCst)
}

/// Registered with `os.register_at_fork(after_in_child=...)` at import: in
/// the child the thread that forked is the only one, and the main one.
#[pyfunction]
pub(crate) fn _after_fork_in_child() {
    MAIN_THREAD.store(current_thread(), Ordering::SeqCst);
}

/// Whether this thread must not re-attach: the interpreter is exiting and
/// this is not the main thread.
pub(crate) fn exiting() -> bool {
    (EXITING.load(Ordering::SeqCst) || is_finalizing()) && !is_main_thread()
}

/// Whether the main thread is exiting and the others park: a load led by
/// another thread will then never finish, and the main thread must not wait
/// for it.
pub(crate) fn main_thread_exiting() -> bool {
    (EXITING.load(Ordering::SeqCst) || is_finalizing()) && is_main_thread()
}

fn park_forever() -> ! {
    loop {
        std::thread::park();
    }
}

/// Counts the calling thread in while it is inside moka_py.
struct Active;

impl Active {
    fn enter() -> Self {
        ACTIVE.add(1, Ordering::SeqCst);
        Active
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        ACTIVE.sub(1, Ordering::SeqCst);
    }
}

/// `py.detach(f)`, except that a thread other than the main one never
/// re-attaches while the interpreter is exiting: it parks.
pub(crate) fn detach<T, F>(py: Python<'_>, f: F) -> T
where
    F: Send + FnOnce() -> T,
    T: Send,
{
    py.detach(|| {
        let active = Active::enter();
        let result = f();
        if exiting() {
            drop(active);
            park_forever();
        }
        result
    })
}

/// Runs Python code from Rust (`f` is attached). A thread other than the main
/// one does not start it while the interpreter is exiting: it parks, detached.
pub(crate) fn call_python<R>(py: Python<'_>, f: impl FnOnce() -> R) -> R {
    if exiting() {
        py.detach(|| park_forever());
    }
    let _active = Active::enter();
    f()
}

/// The `atexit` hook (registered at import).
#[pyfunction]
pub(crate) fn _before_exit(py: Python<'_>) {
    // The thread that runs the hook finalizes the interpreter next: it is the
    // one that must never park.
    MAIN_THREAD.store(current_thread(), Ordering::SeqCst);
    EXITING.store(true, Ordering::SeqCst);
    // The hook runs in the main thread, which is not counted while here.
    py.detach(|| {
        let deadline = Instant::now() + EXIT_WAIT;
        while ACTIVE.sum(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
}

/// What a call does inside moka (or another lock of ours), which decides
/// whether it detaches (see the module comment).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Span {
    /// A lookup of one key: attached on every build.
    Read,
    /// A write of one key: attached on the GIL build, detached on the
    /// free-threaded build.
    Write,
    /// Work that can last (a whole-table operation) or a real wait: detached.
    Long,
}

/// Records at import which thread is the main one (`threading.main_thread()`,
/// right even when the import runs on another thread), and whether this is a
/// free-threaded build: its ABI flags have a `t` (read from `sys`, already
/// loaded; `sysconfig` would cost an import of some 10 ms), and where there
/// are none (Windows), whether the GIL is off at import.
pub(crate) fn init(py: Python<'_>) -> PyResult<()> {
    let main: u64 = py
        .import("threading")?
        .call_method0("main_thread")?
        .getattr("ident")?
        .extract()?;
    MAIN_THREAD.store(main, Ordering::SeqCst);
    let sys = py.import("sys")?;
    let free_threaded = match sys.getattr("abiflags") {
        Ok(flags) => flags.extract::<String>()?.contains('t'),
        Err(_) => match sys.getattr("_is_gil_enabled") {
            Ok(enabled) => !enabled.call0()?.is_truthy()?,
            Err(_) => false,
        },
    };
    FREE_THREADED.store(free_threaded, Ordering::Relaxed);
    Ok(())
}

/// The one way into moka: runs `op` (attached or detached as `span` and the
/// build decide, see the module comment), then `then` on its result,
/// attached, then [`after`]. `op` must not run Python code; `then` may.
#[inline]
pub(crate) fn enter<T: Send, R>(
    py: Python<'_>,
    span: Span,
    op: impl FnOnce() -> T + Send,
    then: impl FnOnce(T) -> R,
) -> R {
    enter_holding(py, span, op, then, deferred::NOT_HELD)
}

/// [`enter`] for a write of one entry whose key and value objects are `held`
/// (see `deferred::run_holding`).
#[inline]
pub(crate) fn enter_holding<T: Send, R>(
    py: Python<'_>,
    span: Span,
    op: impl FnOnce() -> T + Send,
    then: impl FnOnce(T) -> R,
    held: deferred::Held,
) -> R {
    let detached = match span {
        Span::Read => false,
        Span::Write => FREE_THREADED.load(Ordering::Relaxed),
        Span::Long => true,
    };
    let out = if detached { detach(py, op) } else { op() };
    let result = then(out);
    deferred::run_holding(py, exiting, held);
    result
}

/// What runs after a call into moka, attached and holding no lock: the queued
/// notifications and releases (`deferred.rs`). [`enter`] calls it; an
/// operation made of several calls (a `get_with` miss) calls it once more at
/// its very end, for what it let go of between them.
#[inline]
pub(crate) fn after(py: Python<'_>) {
    deferred::run(py, exiting);
}
