//! Single-flight loading for `get_with`: one initializer call per missing key,
//! every concurrent caller of that key receives its result.
//!
//! A map of in-flight loads (a `DashMap`, whose lock striping keeps unrelated
//! keys from contending) holds one [`Load`] per key being computed. The first
//! caller of a missing key inserts it and becomes the leader: it runs the
//! initializer attached to the interpreter while holding no lock, stores the
//! value in the cache, removes the load from the map and wakes the waiters.
//! Every other caller finds the load and waits on its condition variable
//! detached from the interpreter, waking every few milliseconds to let the
//! main thread handle signals (Ctrl-C interrupts a waiter; the load goes on).
//! [`Loads::load`] owns that whole orchestration.
//!
//! Locks and who waits on them (see `call.rs` for the rule):
//! * the map's shard locks: taken through `call::enter` (short), held for one
//!   lookup/insert/remove, which compares keys in Rust and queues what it
//!   drops;
//! * `Load::state`: held to read or set the state (no Python code, no
//!   release); a waiter waits on its condition variable detached.
//!
//! Outcomes: a value reaches every waiter as the same object; an `Exception`
//! reaches every waiter as its own shallow copy (sharing one exception object
//! between threads would interleave their tracebacks), and nothing is cached;
//! a `BaseException` that is not an `Exception` (`KeyboardInterrupt`,
//! `SystemExit`) propagates in the leader only, and the waiters start over.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::thread::{self, ThreadId};
use std::time::Duration;

use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::{intern, PyTypeInfo};

use crate::store::call::Span;
use crate::store::deferred::PyOwned;
use crate::store::errors::Error;
use crate::store::hash::PyHashBuilder;
use crate::store::key::Key;

/// Bumped in a child process after `os.fork()`: a load started before the
/// fork has no leader in the child (only the forking thread survives), so a
/// load from an older generation counts as abandoned and is replaced.
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);

/// The process's fork generation (see [`FORK_GENERATION`]).
pub(crate) fn fork_generation() -> u64 {
    FORK_GENERATION.load(Ordering::Relaxed)
}

/// Registered with `os.register_at_fork(after_in_child=...)` at import.
#[pyfunction]
pub(crate) fn _after_fork_in_child() {
    FORK_GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// How long a waiter sleeps between two checks for signals.
const SIGNAL_CHECK_INTERVAL: Duration = Duration::from_millis(20);

#[derive(Default)]
pub(crate) struct Loads {
    map: DashMap<Key, Arc<Load>, PyHashBuilder>,
}

pub(crate) struct Load {
    /// The thread running the initializer: the leader from the start, or for
    /// a refresh the pool thread, once it starts (`refresh.rs`).
    owner: OnceLock<ThreadId>,
    /// Whether a caller joined to wait for the outcome (a refresh then
    /// stores its value even where the entry is gone, see `refresh.rs`).
    waited: AtomicBool,
    generation: u64,
    state: Mutex<State>,
    done: Condvar,
}

#[derive(Clone)]
enum State {
    Running,
    Ready(Arc<PyOwned>),
    Failed(Arc<Failure>),
    Abandoned,
}

/// An initializer's exception, with what a waiter's copy needs, captured by
/// the leader before the exception propagates further in its own thread.
struct Failure {
    exc: PyOwned,
    traceback: PyOwned,
    cause: PyOwned,
    context: PyOwned,
    suppress_context: PyOwned,
}

enum Joined {
    /// This thread inserted the load: it computes the value.
    Leader(Arc<Load>),
    /// Another thread computes it.
    Waiter(Arc<Load>),
}

enum Outcome {
    Value(Py<PyAny>),
    Error(PyErr),
    Retry,
    /// The interpreter exits and the leader, another thread, is parked: the
    /// main thread computes the value itself.
    Orphaned,
}

impl Loads {
    /// The miss path of `get_with` for `key`: waits for the load in flight, or
    /// leads one. A leader first runs `recheck` (a load may have finished
    /// between the caller's miss and its join), then `init` (attached, holding
    /// no lock), then `store` with its value, and publishes the outcome.
    /// Takes the key, so that everything the call let go of is released
    /// before it returns.
    pub(crate) fn load<'py>(
        &self,
        py: Python<'py>,
        key: Key,
        recheck: impl Fn(&Key) -> Option<Py<PyAny>>,
        init: impl FnOnce() -> PyResult<Bound<'py, PyAny>>,
        store: impl FnOnce(Key, &Bound<'py, PyAny>) -> PyResult<()>,
    ) -> PyResult<Py<PyAny>> {
        let result = self.load_or_wait(py, &key, recheck, init, store);
        // For what the waits and the publication let go of, the key included.
        drop(key);
        crate::store::call::after(py);
        result
    }

    fn load_or_wait<'py>(
        &self,
        py: Python<'py>,
        key: &Key,
        recheck: impl Fn(&Key) -> Option<Py<PyAny>>,
        init: impl FnOnce() -> PyResult<Bound<'py, PyAny>>,
        store: impl FnOnce(Key, &Bound<'py, PyAny>) -> PyResult<()>,
    ) -> PyResult<Py<PyAny>> {
        let me = thread::current().id();
        let load = loop {
            let load = match self.join(py, key, me) {
                Joined::Leader(load) => break Some(load),
                Joined::Waiter(load) => load,
            };
            if load.owner.get() == Some(&me) {
                return Err(Error::Recursion(format!(
                    "get_with: the initializer for key {} asked for the same key again on the \
                     same thread (it would wait for itself forever)",
                    crate::store::errors::repr(key.obj().bind(py))
                ))
                .into());
            }
            match load.wait(py)? {
                Outcome::Value(value) => return Ok(value),
                Outcome::Error(err) => return Err(err),
                Outcome::Retry => {
                    if let Some(value) = recheck(key) {
                        return Ok(value);
                    }
                }
                Outcome::Orphaned => break None,
            }
        };
        // Dropped without `publish` (a panic), the leader abandons the load,
        // so that its waiters start over instead of waiting forever. Without
        // a load (orphaned at exit) there is nothing to publish.
        let leader = Leader {
            loads: self,
            key: key.clone_ref(py),
            load,
        };
        let result = match recheck(key) {
            Some(value) => Ok(value),
            None => crate::store::call::call_python(py, init).and_then(|value| {
                store(key.clone_ref(py), &value)?;
                Ok(value.unbind())
            }),
        };
        leader.publish(py, &result);
        result
    }

    /// Joins the load of `key`, starting it if none is in flight.
    fn join(&self, py: Python<'_>, key: &Key, me: ThreadId) -> Joined {
        let generation = FORK_GENERATION.load(Ordering::Relaxed);
        let new_load = || Load::new(Some(me), generation);
        let key = key.clone_ref(py);
        crate::store::call::enter(
            py,
            Span::Write,
            || match self.map.entry(key) {
                MapEntry::Occupied(mut e) if e.get().generation != generation => {
                    // Left over from before a fork: nobody will finish it here.
                    let load = new_load();
                    e.insert(Arc::clone(&load));
                    Joined::Leader(load)
                }
                MapEntry::Occupied(e) => {
                    e.get().waited.store(true, Ordering::Relaxed);
                    Joined::Waiter(Arc::clone(e.get()))
                }
                MapEntry::Vacant(e) => {
                    let load = new_load();
                    e.insert(Arc::clone(&load));
                    Joined::Leader(load)
                }
            },
            |joined| joined,
        )
    }
}

impl Loads {
    /// Claims the load of `key` for a refresh (`refresh.rs`): the new load,
    /// or `None` when one is in flight already. `owner` is the thread that
    /// will run it, when known (an async reload, on this thread's loop);
    /// otherwise whoever runs it calls [`Leader::start`]. It publishes
    /// through the leader.
    pub(crate) fn claim(
        &self,
        py: Python<'_>,
        key: &Key,
        owner: Option<ThreadId>,
    ) -> Option<Arc<Load>> {
        let generation = FORK_GENERATION.load(Ordering::Relaxed);
        let key = key.clone_ref(py);
        crate::store::call::enter(
            py,
            Span::Write,
            || match self.map.entry(key) {
                MapEntry::Occupied(e) if e.get().generation == generation => None,
                MapEntry::Occupied(mut e) => {
                    let load = Load::new(owner, generation);
                    e.insert(Arc::clone(&load));
                    Some(load)
                }
                MapEntry::Vacant(e) => {
                    let load = Load::new(owner, generation);
                    e.insert(Arc::clone(&load));
                    Some(load)
                }
            },
            |claimed| claimed,
        )
    }

    /// The leader of a load claimed by [`Loads::claim`].
    pub(crate) fn leader(&self, key: Key, load: Arc<Load>) -> Leader<'_> {
        Leader {
            loads: self,
            key,
            load: Some(load),
        }
    }
}

impl Load {
    /// Whether a caller waits for this load's outcome.
    fn waited(&self) -> bool {
        self.waited.load(Ordering::Relaxed)
    }

    fn new(owner: Option<ThreadId>, generation: u64) -> Arc<Self> {
        let cell = OnceLock::new();
        if let Some(owner) = owner {
            let _ = cell.set(owner);
        }
        Arc::new(Load {
            owner: cell,
            waited: AtomicBool::new(false),
            generation,
            state: Mutex::new(State::Running),
            done: Condvar::new(),
        })
    }

    /// Waits, detached, for the leader's outcome.
    fn wait(&self, py: Python<'_>) -> PyResult<Outcome> {
        let me = thread::current().id();
        loop {
            let state = crate::store::call::enter(
                py,
                Span::Long,
                || {
                    let guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                    let (guard, _) = self
                        .done
                        .wait_timeout_while(guard, SIGNAL_CHECK_INTERVAL, |s| {
                            matches!(s, State::Running)
                        })
                        .unwrap_or_else(PoisonError::into_inner);
                    guard.clone()
                },
                |state| state,
            );
            match state {
                State::Running
                    if crate::store::call::main_thread_exiting()
                        && self.owner.get() != Some(&me) =>
                {
                    return Ok(Outcome::Orphaned);
                }
                State::Running => py.check_signals()?,
                State::Ready(value) => return Ok(Outcome::Value(value.clone_ref(py))),
                State::Failed(failure) => return Ok(Outcome::Error(failure.fan_out(py))),
                State::Abandoned => return Ok(Outcome::Retry),
            }
        }
    }
}

/// The leader's handle (see [`Loads::load`]). Dropped without `publish`, it
/// abandons the load: its waiters start over.
pub(crate) struct Leader<'a> {
    loads: &'a Loads,
    key: Key,
    load: Option<Arc<Load>>,
}

impl Leader<'_> {
    /// Records the calling thread as the one running the initializer (a
    /// refresh, on its pool thread), so that a `get_with` of the same key from
    /// inside the initializer raises instead of waiting for itself.
    pub(crate) fn start(&self) {
        if let Some(load) = &self.load {
            let _ = load.owner.set(thread::current().id());
        }
    }

    /// Whether a caller joined to wait for the outcome.
    pub(crate) fn waited(&self) -> bool {
        self.load.as_ref().is_some_and(|load| load.waited())
    }

    /// Publishes the outcome of the initializer: `Ok(value)` or its error.
    pub(crate) fn publish(mut self, py: Python<'_>, result: &PyResult<Py<PyAny>>) {
        let state = match result {
            Ok(value) => State::Ready(Arc::new(PyOwned::new(value.clone_ref(py)))),
            Err(err) if err.is_instance_of::<PyException>(py) => {
                State::Failed(Arc::new(Failure::capture(py, err)))
            }
            Err(_) => State::Abandoned,
        };
        crate::store::call::enter(py, Span::Write, || self.settle(state), |()| ());
    }

    /// Removes the load from the map and wakes its waiters. Takes a shard
    /// lock and the load's lock; runs no Python code.
    fn settle(&mut self, state: State) {
        let Some(load) = self.load.take() else { return };
        self.loads
            .map
            .remove_if(&self.key, |_, v| Arc::ptr_eq(v, &load));
        *load.state.lock().unwrap_or_else(PoisonError::into_inner) = state;
        load.done.notify_all();
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        self.settle(State::Abandoned);
    }
}

impl Failure {
    fn capture(py: Python<'_>, err: &PyErr) -> Self {
        let exc = err.value(py);
        let attr = |name: &Bound<'_, pyo3::types::PyString>| {
            PyOwned::new(exc.getattr(name).map_or_else(|_| py.None(), Bound::unbind))
        };
        Failure {
            exc: PyOwned::new(exc.clone().into_any().unbind()),
            traceback: PyOwned::new(
                err.traceback(py)
                    .map_or_else(|| py.None(), |t| t.into_any().unbind()),
            ),
            cause: attr(intern!(py, "__cause__")),
            context: attr(intern!(py, "__context__")),
            suppress_context: attr(intern!(py, "__suppress_context__")),
        }
    }

    /// A waiter's own copy of the exception (or the original if it cannot be
    /// copied), with the leader's traceback, cause and context.
    fn fan_out(&self, py: Python<'_>) -> PyErr {
        static COPY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let exc = self.exc.bind(py);
        // Imported outside the cell's lock (an import runs Python code).
        let copy_fn = match COPY.get(py) {
            Some(copy) => Ok(copy.clone_ref(py)),
            None => py
                .import(intern!(py, "copy"))
                .and_then(|m| m.getattr(intern!(py, "copy")))
                .map(|copy| {
                    let _ = COPY.set(py, copy.clone().unbind());
                    copy.unbind()
                }),
        };
        let copy = copy_fn
            .and_then(|copy| copy.bind(py).call1((exc,)))
            .ok()
            .filter(|c| {
                c.is_instance(&pyo3::exceptions::PyBaseException::type_object(py))
                    .unwrap_or(false)
            })
            .filter(|c| !c.is(exc));
        let Some(copy) = copy else {
            return PyErr::from_value(exc.clone());
        };
        let _ = copy.setattr(intern!(py, "__traceback__"), &*self.traceback);
        let _ = copy.setattr(intern!(py, "__cause__"), &*self.cause);
        let _ = copy.setattr(intern!(py, "__context__"), &*self.context);
        let _ = copy.setattr(intern!(py, "__suppress_context__"), &*self.suppress_context);
        PyErr::from_value(copy)
    }
}
