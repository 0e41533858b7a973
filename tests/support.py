"""Helpers that the test modules import (`from support import ...`): the
Python-compared key `PyKey`, real threads that cannot hang the run
(`run_threads`), a way to run a scenario in a child interpreter
(`run_isolated`), stable test ids (`param_id`) and what `sys.unraisablehook`
receives (`Unraisable`). tests/ is on `sys.path` through `pythonpath` in
pyproject.toml; conftest.py holds only the fixtures.

A deadlock in which a thread waits on a lock while attached to the interpreter
also blocks the main thread (it cannot take the GIL back), so no timeout that
runs Python code can end it: neither `Thread.join(timeout)` nor pytest-timeout.
Two things cover that case: `run_isolated` runs a scenario in a child process
killed from outside, and conftest's `watchdog` fixture arms faulthandler's C
watchdog (after `WATCHDOG_SECONDS`), which dumps every thread's stack and exits
without needing the GIL (under pytest-xdist the worker's crash then fails that
one test).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

PYPY = sys.implementation.name == "pypy"

# PyPy never collects a reference cycle that runs through an object of a C
# extension (its C-API layer calls no tp_traverse: pypy/pypy#3848); README,
# "Platforms", says so. The tests of such cycles are CPython's.
cpython_cycles = pytest.mark.skipif(
    PYPY, reason="PyPy does not collect cycles through C extension objects (pypy/pypy#3848)"
)


# What reference counting does at once, and PyPy (which counts no references)
# only in its collector: an object freed as its last reference goes, a
# finalizer run at that moment.
cpython_refcounting = pytest.mark.skipif(
    PYPY, reason="PyPy frees objects only in its collector (no reference counting)"
)


# PyPy's collector sizes its heap by a policy of its own (it grows by hundreds of MiB
# in the warm-up of the RSS tests, then holds): RSS there says nothing of the cache.
cpython_rss = pytest.mark.skipif(
    PYPY, reason="PyPy's collector sizes its heap by its own policy: RSS is not the cache's"
)


def collect_on_pypy() -> None:
    """Where a test checks that the cache let go of an object: on CPython
    nothing (the object must be freed at once, by reference counting); on
    PyPy, which counts no references and frees only in its collector, two
    collections (an object that C code let go of is freed in the pass after
    the one that finds it unreachable)."""
    if PYPY:
        import gc

        gc.collect()
        gc.collect()


# Long enough that only a deadlock reaches it, short enough that a deadlock
# fails one test well before pytest-timeout's 120 s.
DEFAULT_THREAD_TIMEOUT = 30.0


class PyKey:
    """A key compared by Python's `__eq__` (not one of the native key types).

    Its hash is `n % buckets`: with the default few buckets, lookups must
    compare keys (collisions are the point); `buckets=None` hashes `n` itself,
    one hash per key, for tests that want the `__eq__` path without collisions.
    """

    def __init__(self, n: int, buckets: int | None = 3) -> None:
        self.n = n
        self.buckets = buckets

    def __hash__(self) -> int:
        return hash(self.n) if self.buckets is None else self.n % self.buckets

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PyKey) and other.n == self.n

    def __repr__(self) -> str:
        return f"PyKey({self.n})"


def run_threads(
    fn: Callable[[int], Any],
    n: int,
    timeout: float = DEFAULT_THREAD_TIMEOUT,
) -> list[Any]:
    """Runs `fn(i)` for i in range(n), each in its own thread, and returns the results.

    The threads are started together (behind a barrier). The whole group gets
    `timeout` seconds: a thread still alive after that fails the test instead
    of hanging it (the threads are daemons, so they do not keep the process
    alive). The first exception raised in a thread (by start order) is
    re-raised here, so it fails the test without a thread-exception warning.
    """
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException | None] = [None] * n

    def target(i: int) -> None:
        try:
            barrier.wait(timeout)
            results[i] = fn(i)
        except BaseException as e:
            errors[i] = e

    threads = [
        threading.Thread(target=target, args=(i,), name=f"run_threads-{i}", daemon=True)
        for i in range(n)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = [t.name for t in threads if t.is_alive()]
    if alive:
        pytest.fail(
            f"{len(alive)} of {n} threads still running after {timeout} s (deadlock?): {alive}",
            pytrace=False,
        )
    for e in errors:
        if e is not None:
            raise e
    return results


def wait_for(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    """Polls `predicate()` until it is true (for work another thread or a
    background reload finishes); fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(0.005)


def param_id(value: object) -> str:
    """A test id for a parameter that is the same in every process (pytest-xdist
    compares them): its repr, or its type's name when the repr shows an address."""
    r = repr(value)
    return type(value).__name__ if " at 0x" in r else r


TESTS_DIR = Path(__file__).resolve().parent

# The signing key of the moka_py.redis tests' caches (the default serializer,
# pickle, needs one).
SIGNING_KEY = b"moka_py tests: 32 bytes or more of secret"

# Longer than pytest-timeout's 120 s, so that one reports the hangs it can end.
WATCHDOG_SECONDS = 150.0


def run_isolated(scenario: Callable[[], None], timeout: float = 30.0) -> None:
    """Runs `scenario()` (a module-level function of a test module) in a child
    interpreter, with warnings as errors. Fails the test if it raises, crashes,
    or has not finished after `timeout` seconds (then with the stacks of all its
    threads)."""
    module, name = scenario.__module__, scenario.__qualname__
    code = (
        "import faulthandler, sys\n"
        f"faulthandler.dump_traceback_later({timeout - 5.0!r}, exit=True)\n"
        f"sys.path.insert(0, {str(TESTS_DIR)!r})\n"
        f"import {module}\n"
        f"{module}.{name}()\n"
    )
    env = {**os.environ, "RUST_BACKTRACE": "0", "PYTHONFAULTHANDLER": "1"}
    try:
        proc = subprocess.run(
            [sys.executable, "-W", "error", "-c", code],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{name} did not finish in {timeout} s (deadlock?)\n{e.stderr!s:.6000}")
    stderr = proc.stderr
    if len(stderr) > 12000:
        stderr = stderr[:3000] + "\n[...]\n" + stderr[-9000:]
    if proc.returncode != 0:
        hung = "Timeout (" in stderr
        pytest.fail(
            f"{name} {'hung (deadlock?)' if hung else 'failed'} in a child interpreter "
            f"(exit code {proc.returncode}):\n{stderr}",
            pytrace=False,
        )
    # A Rust panic is a bug even when it was caught and the scenario went on.
    if "panicked at" in stderr:
        pytest.fail(f"{name}: a Rust panic in the child interpreter:\n{stderr}", pytrace=False)


@dataclass
class Unraisable:
    exc_type: type[BaseException]
    exc_value: BaseException | None
    err_msg: str | None
    object: object
