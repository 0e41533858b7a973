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
//!
//! Locks and who waits on them:
//! * the map's shard locks: taken only inside `Python::detach`, held only for
//!   a lookup/insert/remove (which may run a key's `__eq__`: see `key.rs`);
//! * `Load::state`: taken only inside `Python::detach`, never held while
//!   running Python code.
//!
//! Outcomes: a value reaches every waiter as the same object; an `Exception`
//! reaches every waiter as its own shallow copy (sharing one exception object
//! between threads would interleave their tracebacks), and nothing is cached;
//! a `BaseException` that is not an `Exception` (`KeyboardInterrupt`,
//! `SystemExit`) propagates in the leader only, and the waiters start over.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, ThreadId};
use std::time::Duration;

use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyTraceback;
use pyo3::{intern, PyTypeInfo};

use crate::detach::detach;
use crate::errors::Error;
use crate::key::{Key, PyHashBuilder};

/// Bumped in a child process after `os.fork()`: a load started before the
/// fork has no leader in the child (only the forking thread survives), so a
/// load from an older generation counts as abandoned and is replaced.
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);

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
    owner: ThreadId,
    generation: u64,
    state: Mutex<State>,
    done: Condvar,
}

#[derive(Clone)]
enum State {
    Running,
    Ready(Arc<Py<PyAny>>),
    Failed(Arc<Failure>),
    Abandoned,
}

/// An initializer's exception, with what a waiter's copy needs, captured by
/// the leader before the exception propagates further in its own thread.
struct Failure {
    exc: Py<PyAny>,
    traceback: Option<Py<PyTraceback>>,
    cause: Py<PyAny>,
    context: Py<PyAny>,
    suppress_context: Py<PyAny>,
}

pub(crate) enum Join<'a, T> {
    /// This thread computes the value and must call [`Leader::finish`] (or
    /// [`Leader::prepare`]); with the result of the join's recheck.
    Leader(Leader<'a>, T),
    /// Another thread computes it: wait with [`Load::wait`].
    Waiter(Arc<Load>),
}

pub(crate) enum Outcome {
    Value(Py<PyAny>),
    Error(PyErr),
    Retry,
}

impl Loads {
    /// Joins the load of `key`, starting it if none is in flight. `again` is a
    /// second owned copy of the key, kept by a leader to remove its entry.
    /// A new leader runs `recheck` in the same detached section (one hand-off
    /// of the interpreter instead of two) and gets its result with the lead.
    pub(crate) fn join<'a, T: Send>(
        &'a self,
        py: Python<'_>,
        key: Key,
        again: Key,
        recheck: impl FnOnce() -> T + Send,
    ) -> PyResult<Join<'a, T>> {
        let me = thread::current().id();
        let generation = FORK_GENERATION.load(Ordering::Relaxed);
        let new_load = || {
            Arc::new(Load {
                owner: me,
                generation,
                state: Mutex::new(State::Running),
                done: Condvar::new(),
            })
        };
        let found = detach(py, || {
            let found = match self.map.entry(key) {
                MapEntry::Occupied(mut e) if e.get().generation != generation => {
                    // Left over from before a fork: nobody will finish it here.
                    let load = new_load();
                    e.insert(Arc::clone(&load));
                    Err(load)
                }
                MapEntry::Occupied(e) => Ok(Arc::clone(e.get())),
                MapEntry::Vacant(e) => {
                    let load = new_load();
                    e.insert(Arc::clone(&load));
                    Err(load)
                }
            };
            // The shard lock is released: the recheck holds no lock of ours.
            found.map_err(|load| (load, recheck()))
        });
        if let Err(err) = crate::key::take_eq_error() {
            if let Err((load, _)) = found {
                // We inserted a load but will not lead it: withdraw it
                // (detached: that takes a shard lock).
                let leader = Leader {
                    loads: self,
                    key: again,
                    load: Some(load),
                };
                detach(py, move || drop(leader));
            }
            return Err(err);
        }
        match found {
            Ok(load) if load.owner == me => {
                Err(Error::Recursion(format!(
                "get_with: the initializer for key {} asked for the same key again on the same \
                 thread (it would wait for itself forever)",
                again.obj().bind(py).repr().map_or_else(|_| "?".to_owned(), |r| r.to_string())
            ))
                .into())
            }
            Ok(load) => Ok(Join::Waiter(load)),
            Err((load, rechecked)) => Ok(Join::Leader(
                Leader {
                    loads: self,
                    key: again,
                    load: Some(load),
                },
                rechecked,
            )),
        }
    }
}

impl Load {
    /// Waits, detached, for the leader's outcome.
    pub(crate) fn wait(&self, py: Python<'_>) -> PyResult<Outcome> {
        loop {
            let state = detach(py, || {
                let guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                let (guard, _) = self
                    .done
                    .wait_timeout_while(guard, SIGNAL_CHECK_INTERVAL, |s| {
                        matches!(s, State::Running)
                    })
                    .unwrap_or_else(PoisonError::into_inner);
                guard.clone()
            });
            match state {
                State::Running => py.check_signals()?,
                State::Ready(value) => return Ok(Outcome::Value(value.clone_ref(py))),
                State::Failed(failure) => return Ok(Outcome::Error(failure.fan_out(py))),
                State::Abandoned => return Ok(Outcome::Retry),
            }
        }
    }
}

/// The leader's handle. Dropping it without [`Leader::finish`] (a panic)
/// abandons the load, so waiters retry instead of waiting forever.
pub(crate) struct Leader<'a> {
    loads: &'a Loads,
    key: Key,
    load: Option<Arc<Load>>,
}

impl<'a> Leader<'a> {
    /// Publishes the outcome of the initializer: `Ok(value)` or its error.
    pub(crate) fn finish(self, py: Python<'_>, result: &PyResult<Py<PyAny>>) {
        let publish = self.prepare(py, result);
        detach(py, || publish.run());
    }

    /// The attached half of [`Leader::finish`]: what to publish. The caller
    /// runs it detached, possibly in a section that does more.
    pub(crate) fn prepare(self, py: Python<'_>, result: &PyResult<Py<PyAny>>) -> Publish<'a> {
        let state = match result {
            Ok(value) => State::Ready(Arc::new(value.clone_ref(py))),
            Err(err) if err.is_instance_of::<PyException>(py) => {
                State::Failed(Arc::new(Failure::capture(py, err)))
            }
            Err(_) => State::Abandoned,
        };
        Publish {
            leader: self,
            state,
        }
    }

    fn publish(&mut self, state: State) {
        let Some(load) = self.load.take() else { return };
        self.loads
            .map
            .remove_if(&self.key, |_, v| Arc::ptr_eq(v, &load));
        // A colliding key's `__eq__` may raise during that lookup; the entry
        // is found by identity regardless, and the error belongs to no call.
        drop(crate::key::take_eq_error());
        *load.state.lock().unwrap_or_else(PoisonError::into_inner) = state;
        load.done.notify_all();
    }
}

/// A leader's outcome, ready to publish (see [`Leader::prepare`]). Dropped
/// without [`Publish::run`], the load is abandoned.
pub(crate) struct Publish<'a> {
    leader: Leader<'a>,
    state: State,
}

impl Publish<'_> {
    /// Removes the load from the map and wakes its waiters. Takes a shard
    /// lock and the load's lock: call it detached.
    pub(crate) fn run(mut self) {
        self.leader.publish(self.state);
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        self.publish(State::Abandoned);
    }
}

impl Failure {
    fn capture(py: Python<'_>, err: &PyErr) -> Self {
        let exc = err.value(py);
        let attr = |name: &Bound<'_, pyo3::types::PyString>| {
            exc.getattr(name).map_or_else(|_| py.None(), Bound::unbind)
        };
        Failure {
            exc: exc.clone().into_any().unbind(),
            traceback: err.traceback(py).map(Bound::unbind),
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
        let copy = COPY
            .get_or_try_init(py, || {
                py.import(intern!(py, "copy"))?
                    .getattr(intern!(py, "copy"))
                    .map(Bound::unbind)
            })
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
        let _ = copy.setattr(intern!(py, "__traceback__"), &self.traceback);
        let _ = copy.setattr(intern!(py, "__cause__"), &self.cause);
        let _ = copy.setattr(intern!(py, "__context__"), &self.context);
        let _ = copy.setattr(intern!(py, "__suppress_context__"), &self.suppress_context);
        PyErr::from_value(copy)
    }
}
