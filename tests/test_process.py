"""Process life: `os.fork()`, interpreter shutdown with threads still inside the
cache, and subinterpreters. Every scenario runs in a child interpreter
(`run_isolated`): a fork, a crash at exit or a hang must not touch the runner.

Fork. The cache works in the child of a fork taken while no other thread is
inside a moka_py call, with everything the parent had stored (threads that
exist but wait elsewhere do not matter). A fork taken while another thread is
*inside* a moka_py call copies the locks that thread held (moka's, PyO3's
reference pool): the child's first call that needs one of them waits forever.
That is the usual rule for fork in a threaded process; fork before starting
threads, or use the "spawn"/"forkserver" start methods. One case is in reach of
the library and tested here: a thread that was *running a `get_with`
initializer* (Python code, outside every lock) at fork time does not exist in
the child, and the child must not wait for its load.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from support import PyKey, run_isolated, run_threads

from moka_py import Moka, cached

CHILD_TIMEOUT = 5.0
T = TypeVar("T")


def const(value: T) -> Callable[[], T]:
    """An initializer that returns `value`."""
    return lambda: value


def in_fork(child: Callable[[], None], timeout: float = CHILD_TIMEOUT) -> None:
    """Runs `child()` in a forked process. Raises AssertionError if it raises,
    crashes, or has not finished after `timeout` seconds (then it is killed)."""
    with warnings.catch_warnings():
        # 3.12+ warns that forking a multi-threaded process may deadlock: the
        # very thing these scenarios check.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        code = 1
        try:
            child()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            assert code == 0, f"the forked child failed (exit code {code})"
            return
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError(f"the forked child did not finish in {timeout} s (deadlock?)")
        time.sleep(0.01)


def exercise(c: Moka[Any, Any]) -> None:
    """Every kind of call, on a cache whose capacity is at least 100."""
    for i in range(200):
        c.set(("child", i), i)
        assert c.get(("child", i)) in (i, None)
    assert c.get_with("loaded", lambda: "v") == "v"
    assert c.get_with(PyKey(99), lambda: "py") == "py"
    c.remove("loaded")
    c.run_pending_tasks()
    assert c.count() <= c.capacity
    c.clear()
    assert len(c) == 0
    assert c.keys() == []


def scenario_fork_child_uses_the_parent_cache() -> None:
    events: list[tuple[Any, str]] = []
    c: Moka[Any, Any] = Moka(
        500, eviction_listener=lambda k, v, cause: events.append((k, cause)), policy="lru"
    )
    values = {i: [i] for i in range(50)}
    for i, v in values.items():
        c.set(i, v)
        c.set(PyKey(i), v)
    c.set("str", "s")
    calls: list[int] = []

    @cached(maxsize=16, wait_concurrent=True)
    def square(x: int) -> int:
        calls.append(x)
        return x * x

    assert square(3) == 9

    def child() -> None:
        for i, v in values.items():
            assert c.get(i) is v
            assert c.get(PyKey(i)) is v
        assert c["str"] == "s"
        assert len(c) == 101
        assert c.remove(0) is values[0]
        assert events[-1] == (0, "explicit")
        assert square(3) == 9
        assert square(4) == 16
        assert calls == [3, 4]
        got = run_threads(lambda i: c.get_with(i % 8 + 1, const("new")), 16)
        assert all(g is values[i % 8 + 1] for i, g in enumerate(got))
        exercise(c)
        exercise(Moka(100))

    in_fork(child)
    # The child's writes stay in the child.
    assert len(c) == 101
    assert c.get(0) is values[0]
    assert events == []
    assert calls == [3]


def test_fork_child_uses_the_parent_cache() -> None:
    run_isolated(scenario_fork_child_uses_the_parent_cache)


def scenario_fork_with_idle_threads() -> None:
    """Threads that used the cache, and wait in a barrier (outside moka_py) at
    fork time."""
    c: Moka[Any, Any] = Moka(100, eviction_listener=lambda k, v, cause: None)
    rounds, workers = 3, 4
    start, done = threading.Barrier(workers + 1), threading.Barrier(workers + 1)

    def worker(i: int) -> None:
        for _ in range(rounds):
            start.wait(10)
            for n in range(500):
                c.set((i, n % 150), n)
                c.get_with((i, "g", n % 20), const(n))
                c.remove((i, (n * 7) % 150))
            done.wait(10)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(workers)]
    for t in threads:
        t.start()
    for _ in range(rounds):
        start.wait(10)
        done.wait(10)
        # Every worker has returned from its last call, and is on its way to
        # (or waiting in) the next barrier.
        in_fork(lambda: exercise(c))
    for t in threads:
        t.join(10)
        assert not t.is_alive()


def test_fork_with_idle_threads() -> None:
    run_isolated(scenario_fork_with_idle_threads)


def scenario_fork_while_a_load_is_in_flight(use_cached: bool) -> None:
    c: Moka[str, str] = Moka(10)
    started, release = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        release.wait(20)
        return "parent"

    @cached(wait_concurrent=True)
    def load(key: str) -> str:
        return slow()

    get: Callable[[], str] = (lambda: load("k")) if use_cached else (lambda: c.get_with("k", slow))
    results: list[str] = []
    loader = threading.Thread(target=lambda: results.append(get()))
    loader.start()
    assert started.wait(10)

    def child() -> None:
        # The loading thread does not exist here: nobody will finish its load.
        if use_cached:
            release.set()  # the child's own copy of the event: its load ends at once
            assert load("k") == "parent"
        else:
            assert c.get_with("k", lambda: "child") == "child"

    try:
        in_fork(child)
    finally:
        release.set()
        loader.join(20)
    assert results == ["parent"]


def scenario_fork_while_get_with_loads() -> None:
    scenario_fork_while_a_load_is_in_flight(use_cached=False)


def scenario_fork_while_cached_loads() -> None:
    scenario_fork_while_a_load_is_in_flight(use_cached=True)


def test_fork_while_get_with_loads() -> None:
    run_isolated(scenario_fork_while_get_with_loads)


def test_fork_while_cached_loads() -> None:
    run_isolated(scenario_fork_while_cached_loads)


# --- interpreter shutdown ----------------------------------------------------------


def scenario_exit_with_daemon_threads_waiting_in_get_with() -> None:
    """The main thread returns (the interpreter shuts down) while daemon threads
    wait in `get_with` for a load that is still running."""
    c: Moka[str, int] = Moka(10)
    started = threading.Event()
    waiting = threading.Barrier(5)

    def slow() -> int:
        started.set()
        time.sleep(60)
        return 1

    def waiter() -> None:
        assert started.wait(10)
        waiting.wait(10)
        c.get_with("k", slow)

    threading.Thread(target=c.get_with, args=("k", slow), daemon=True).start()
    for _ in range(4):
        threading.Thread(target=waiter, daemon=True).start()
    waiting.wait(10)
    time.sleep(0.1)  # let the waiters enter get_with


def scenario_exit_waits_for_non_daemon_get_with() -> None:
    """Non-daemon threads waiting in `get_with` when the main thread returns:
    the interpreter waits for them, and each gets the value."""
    c: Moka[str, str] = Moka(10)
    started = threading.Event()
    results: list[str] = []

    def slow() -> str:
        started.set()
        time.sleep(0.5)
        return "value"

    def call() -> None:
        results.append(c.get_with("k", slow))

    def check() -> None:
        # Runs once the interpreter has joined the non-daemon threads.
        if results != ["value"] * 5:
            print(f"the threads got {results}", file=sys.stderr, flush=True)
            os._exit(1)

    atexit.register(check)
    threading.Thread(target=call).start()
    assert started.wait(10)
    for _ in range(4):
        threading.Thread(target=call).start()


def test_exit_with_daemon_threads_waiting_in_get_with() -> None:
    run_isolated(scenario_exit_with_daemon_threads_waiting_in_get_with)


def test_exit_waits_for_non_daemon_get_with() -> None:
    run_isolated(scenario_exit_waits_for_non_daemon_get_with)


# The module is imported on a worker thread and, at exit, the main thread calls the cache
# from an atexit handler that runs after moka_py's own hook (atexit runs the handlers in
# reverse order of registration), while a daemon thread waits in `get_with`. The main
# thread is the one that finalizes: it must run its initializer and get its values, not
# park as the other threads do. It needs an interpreter where moka_py is not imported yet,
# so it is a script of its own rather than a scenario of this module.
IMPORT_ON_A_THREAD_THEN_EXIT = """
import atexit, threading, time


def at_exit():
    # Runs after moka_py's exit hook, on the main thread.
    c.set("at-exit", 1)
    assert c.get("at-exit") == 1
    assert c.get_with("loaded-at-exit", lambda: "v") == "v"
    print("main thread served at exit", flush=True)

atexit.register(at_exit)

module = {}
importer = threading.Thread(target=lambda: module.update(m=__import__("moka_py")))
importer.start()
importer.join(10)
assert "m" in module and threading.main_thread() is threading.current_thread()
c = module["m"].Moka(10)

started = threading.Event()

def slow():
    started.set()
    time.sleep(60)
    return 0

threading.Thread(target=c.get_with, args=("slow", slow), daemon=True).start()
assert started.wait(10)
threading.Thread(target=c.get_with, args=("slow", slow), daemon=True).start()
time.sleep(0.1)
"""


def test_exit_after_import_on_a_worker_thread_serves_the_main_thread() -> None:
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", IMPORT_ON_A_THREAD_THEN_EXIT],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "main thread served at exit", proc.stdout + proc.stderr


# --- subinterpreters -----------------------------------------------------------------


def subinterpreters() -> Any:
    """The low-level subinterpreter module: `_interpreters` (3.13+) or
    `_xxsubinterpreters` (3.11, 3.12); None when neither exists."""
    for name in ("_interpreters", "_xxsubinterpreters"):
        try:
            return __import__(name)
        except ImportError:
            continue
    return None


def run_in_subinterpreter(code: str, config: str | None) -> str | None:
    """Runs `code` in a new subinterpreter; returns the text of the exception
    that escaped it ("ImportError: ..."), or None if it ran to the end."""
    mod = subinterpreters()
    interp = mod.create() if config is None else mod.create(config)
    try:
        try:
            failure = mod.run_string(interp, code)
        except Exception as e:  # 3.11/3.12: RunFailedError("<class 'ImportError'>: ...")
            return str(e).replace("<class '", "").replace("'>", "", 1)
        if failure is None:
            return None
        return str(failure.formatted)  # 3.13+: a description of the exception
    finally:
        mod.destroy(interp)


def check_import_refused(config: str | None) -> None:
    failure = run_in_subinterpreter("import moka_py", config)
    assert failure is not None, "moka_py was imported in a subinterpreter"
    assert "ImportError" in failure, failure
    assert "subinterpreter" in failure.lower(), failure


def scenario_subinterpreter_import_before_main(config: str | None) -> None:
    check_import_refused(config)
    c: Moka[str, int] = Moka(10)
    c.set("k", 1)
    assert c.get("k") == 1


def scenario_subinterpreter_import_after_main(config: str | None) -> None:
    c: Moka[str, int] = Moka(10)
    c.set("k", 1)
    check_import_refused(config)
    check_import_refused(config)
    assert c.get("k") == 1
    c.set("j", 2)
    assert len(c) == 2


def scenario_subinterpreter_default_before_main() -> None:
    scenario_subinterpreter_import_before_main(None)


def scenario_subinterpreter_default_after_main() -> None:
    scenario_subinterpreter_import_after_main(None)


def scenario_subinterpreter_legacy_after_main() -> None:
    scenario_subinterpreter_import_after_main("legacy")


needs_subinterpreters = pytest.mark.skipif(
    subinterpreters() is None, reason="no subinterpreter module on this interpreter"
)


@needs_subinterpreters
def test_subinterpreter_import_before_main_raises_import_error() -> None:
    run_isolated(scenario_subinterpreter_default_before_main)


@needs_subinterpreters
def test_subinterpreter_import_after_main_raises_import_error() -> None:
    run_isolated(scenario_subinterpreter_default_after_main)


@pytest.mark.skipif(
    not hasattr(subinterpreters(), "new_config"),
    reason="no configurable (legacy, shared-GIL) subinterpreters on this interpreter",
)
def test_legacy_subinterpreter_import_raises_import_error() -> None:
    run_isolated(scenario_subinterpreter_legacy_after_main)
