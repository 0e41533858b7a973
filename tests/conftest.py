"""Shared helpers: real threads that cannot hang the run, and a collector for
`sys.unraisablehook`."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

# Long enough that only a deadlock reaches it, short enough that a deadlock
# fails one test well before pytest-timeout's 120 s.
DEFAULT_THREAD_TIMEOUT = 30.0


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
            f"{len(alive)} of {n} threads still running after {timeout} s "
            f"(deadlock?): {alive}",
            pytrace=False,
        )
    for e in errors:
        if e is not None:
            raise e
    return results


@pytest.fixture(name="run_threads")
def run_threads_fixture() -> Callable[..., list[Any]]:
    return run_threads


@dataclass
class Unraisable:
    exc_type: type[BaseException]
    exc_value: BaseException | None
    err_msg: str | None
    object: object


@pytest.fixture
def unraisable() -> Iterator[list[Unraisable]]:
    """Collects every `sys.unraisablehook` call made during the test (from any thread)."""
    seen: list[Unraisable] = []
    lock = threading.Lock()

    def hook(args: Any) -> None:
        with lock:
            seen.append(Unraisable(args.exc_type, args.exc_value, args.err_msg, args.object))

    old = sys.unraisablehook
    sys.unraisablehook = hook
    try:
        yield seen
    finally:
        sys.unraisablehook = old
        seen.clear()
