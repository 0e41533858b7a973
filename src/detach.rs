//! Detaching from the interpreter, and calling Python from Rust, safely at
//! interpreter exit.
//!
//! On CPython before 3.14, a thread that re-attaches to an interpreter that is
//! finalizing is ended by `pthread_exit`, whose forced unwinding through Rust
//! frames aborts the process. Daemon threads inside a cache method when the
//! main thread exits would hit that. So:
//!
//! * at exit (an `atexit` hook, which runs before finalization starts) the
//!   module sets [`EXITING`] and, detached, waits a bounded time for the
//!   threads inside moka_py (counted in [`ACTIVE`]) to leave;
//! * a thread other than the main one that is about to re-attach, or to run
//!   Python code from Rust, while exiting parks for good instead (detached,
//!   holding nothing); the process ends around it.
//!
//! What remains: Python code called from Rust (an initializer, a listener...)
//! that is still running when that wait times out can be ended inside our
//! frames, as before.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use crate::counter::Counter;

static EXITING: AtomicBool = AtomicBool::new(false);
/// Threads inside moka_py, striped: every detached call counts itself in and
/// out, and a single shared counter would be contended on 3.13t.
static ACTIVE: Counter = Counter::new();

/// How long the exit hook waits for threads to leave moka_py.
const EXIT_WAIT: Duration = Duration::from_secs(2);

/// `Py_IsFinalizing` (3.13+) or `_Py_IsFinalizing` (before): looked up once,
/// by name, in the running interpreter, so one build serves every version.
fn is_finalizing() -> bool {
    type IsFinalizing = unsafe extern "C" fn() -> std::os::raw::c_int;
    static FUNCTION: OnceLock<Option<IsFinalizing>> = OnceLock::new();
    let function = FUNCTION.get_or_init(|| {
        [c"Py_IsFinalizing", c"_Py_IsFinalizing"]
            .iter()
            .find_map(|name| {
                // SAFETY: dlsym with a NUL-terminated name; a non-null result is
                // the address of the CPython function of that name, whose
                // signature is `int (void)` in every version.
                unsafe {
                    let address = libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr());
                    (!address.is_null())
                        .then(|| std::mem::transmute::<*mut libc::c_void, IsFinalizing>(address))
                }
            })
    });
    // SAFETY: reads an atomic flag of the runtime; callable without a thread
    // state.
    function.is_some_and(|f| unsafe { f() } != 0)
}

fn is_main_thread() -> bool {
    // SAFETY: plain system calls without arguments.
    unsafe { libc::syscall(libc::SYS_gettid) == libc::c_long::from(libc::getpid()) }
}

/// Whether this thread must not re-attach: the interpreter is exiting and
/// this is not the main thread.
pub(crate) fn exiting() -> bool {
    (EXITING.load(Ordering::SeqCst) || is_finalizing()) && !is_main_thread()
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
    EXITING.store(true, Ordering::SeqCst);
    // The hook runs in the main thread, which is not counted while here.
    py.detach(|| {
        let deadline = Instant::now() + EXIT_WAIT;
        while ACTIVE.sum(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
}
