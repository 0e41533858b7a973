"""Memory: the cache does not grow without bound, keeps nothing alive after
`clear()`, lets the garbage collector free cycles through the `@cached` wrapper,
and leaks neither exceptions nor asyncio Tasks from its coalescing paths.

The RSS scenarios run in a child interpreter (`run_isolated`), so that the
measurement sees only that scenario. `tests/test_moka_gc.py` covers values
released by `remove`/`clear` and cycles through a `Moka`'s values and listener.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import threading
import weakref
from typing import Any

import pytest
from support import (
    PyKey,
    collect_on_pypy,
    cpython_cycles,
    cpython_rss,
    run_isolated,
    run_threads,
)

from moka_py import Moka, cached

# --- RSS over a million set/evict cycles ----------------------------------------

CYCLES = 1_000_000
# The bound on RSS growth over the measured cycles. Measured growth is about
# 0.1 MiB on both builds; leaking a single 8-byte pointer per cycle would add
# 7.6 MiB, and leaking the evicted entries themselves far more.
MAX_GROWTH_MIB = 8.0


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(cycle: Any, warmup: int, cycles: int) -> float:
    """Runs `cycle(i)` `warmup` times, then `cycles` times; returns the RSS
    growth (MiB) over the second part."""
    for i in range(warmup):
        cycle(i)
    gc.collect()
    before = rss_bytes()
    for i in range(warmup, warmup + cycles):
        cycle(i)
    gc.collect()
    return (rss_bytes() - before) / 2**20


def check_growth(growth: float, what: str) -> None:
    assert growth < MAX_GROWTH_MIB, f"{what}: RSS grew by {growth:.1f} MiB"


def scenario_rss_int_keys() -> None:
    c: Moka[int, int] = Moka(1000)
    check_growth(measure(lambda i: c.set(i, i), 200_000, CYCLES), "int keys")
    c.run_pending_tasks()
    assert c.count() == 1000


def scenario_rss_str_keys_with_listener() -> None:
    evicted = [0]

    def listener(k: str, v: tuple[int, str], cause: str) -> None:
        evicted[0] += 1

    c: Moka[str, tuple[int, str]] = Moka(1000, policy="lru", eviction_listener=listener)
    check_growth(measure(lambda i: c.set(f"key-{i}", (i, "v")), 200_000, CYCLES), "str keys")
    c.run_pending_tasks()
    assert c.count() == 1000
    assert evicted[0] >= 200_000 + CYCLES - 1000 - 1000 // 32


class LoadFailed(Exception):
    pass


def scenario_rss_get_with_python_keys() -> None:
    # Keys compared by Python's `__eq__` (the tombstone-prone path), one hash each.
    c: Moka[PyKey, list[int]] = Moka(1000)

    def fail(i: int) -> list[int]:
        raise LoadFailed(i)

    def cycle(i: int) -> None:
        # A third of the loads fail; one key in five is removed again.
        if i % 3 == 0:
            try:
                c.get_with(PyKey(i, buckets=None), lambda: fail(i))
            except LoadFailed:
                pass
        else:
            c.get_with(PyKey(i, buckets=None), lambda: [i])
        if i % 5 == 0:
            c.remove(PyKey(i - 1, buckets=None))

    check_growth(measure(cycle, 100_000, CYCLES // 2), "get_with, Python keys")


@cpython_rss
def test_rss_bounded_int_keys() -> None:
    run_isolated(scenario_rss_int_keys, timeout=100.0)


@cpython_rss
def test_rss_bounded_str_keys_with_listener() -> None:
    run_isolated(scenario_rss_str_keys_with_listener, timeout=100.0)


@cpython_rss
def test_rss_bounded_get_with_python_keys() -> None:
    run_isolated(scenario_rss_get_with_python_keys, timeout=100.0)


# --- nothing kept alive after clear() --------------------------------------------


class Obj:
    """A weak-referenceable value."""


def collect() -> None:
    for _ in range(3):
        gc.collect()


def scenario_clear_releases_values_and_listener_arguments() -> None:
    """Values, and what the listener was given, are released once `clear()` and
    `run_pending_tasks()` return (keys here are `str`, not weak-referenceable)."""
    given: list[weakref.ref[Any]] = []

    def listener(k: str, v: Obj, cause: str) -> None:
        given.append(weakref.ref(v))

    for trial in range(100):
        refs: list[weakref.ref[Obj]] = []
        given.clear()
        capacity = 1 + trial % 17
        c: Moka[str, Obj] = Moka(capacity, eviction_listener=listener, policy="lru")
        for i in range(capacity * 3):
            v = Obj()
            refs.append(weakref.ref(v))
            c.set(f"k{i}", v)
        del v
        c.clear()
        c.run_pending_tasks()
        collect_on_pypy()
        assert len(given) == len(refs), (trial, len(given), len(refs))
        alive = sum(r() is not None for r in refs)
        assert alive == 0, f"trial {trial}: {alive} of {len(refs)} values alive after clear()"


def test_clear_releases_values_and_listener_arguments() -> None:
    # In a child interpreter: values are released through moka's epoch-based
    # reclamation, which other threads of this process could delay.
    run_isolated(scenario_clear_releases_values_and_listener_arguments)


class WeakKey:
    """A weak-referenceable key compared by Python's `__eq__`."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __hash__(self) -> int:
        return hash(self.n)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WeakKey) and other.n == self.n


def scenario_clear_releases_keys() -> None:
    """clear() hands every key to the listener, and afterwards the cache keeps
    none of them alive (not even in tombstones of moka's table)."""
    keys: list[weakref.ref[WeakKey]] = []
    given: list[weakref.ref[WeakKey]] = []

    def listener(k: WeakKey, v: int, cause: str) -> None:
        given.append(weakref.ref(k))

    c: Moka[WeakKey, int] = Moka(100, eviction_listener=listener)
    for i in range(50):
        k = WeakKey(i)
        keys.append(weakref.ref(k))
        c.set(k, i)
    del k
    c.clear()
    c.run_pending_tasks()
    collect()
    assert len(given) == 50
    alive = sum(r() is not None for r in keys)
    assert alive == 0, f"{alive} of 50 keys kept alive after clear() and run_pending_tasks()"


def test_clear_releases_keys() -> None:
    run_isolated(scenario_clear_releases_keys)


# --- cycles through the @cached wrapper --------------------------------------------


@cpython_cycles
@pytest.mark.parametrize("wait_concurrent", [False, True])
def test_cycle_through_cached_result_is_collected(wait_concurrent: bool) -> None:
    """A result that refers to the decorated function: result -> wrapper ->
    its cache -> result."""

    class Result:
        def __init__(self, fn: Any) -> None:
            self.fn = fn

    def make() -> tuple[Any, weakref.ref[Result]]:
        @cached(maxsize=8, wait_concurrent=wait_concurrent)
        def f(x: int) -> Result:
            return Result(f)

        r = f(1)
        assert f(1) is r
        return weakref.ref(f), weakref.ref(r)

    wrapper_ref, result_ref = make()
    collect()
    assert result_ref() is None
    assert wrapper_ref() is None


@cpython_cycles
@pytest.mark.parametrize("wait_concurrent", [False, True])
def test_recursive_cached_function_is_collected(wait_concurrent: bool) -> None:
    """A decorated function that calls itself by name, defined in a function:
    wrapper -> `__wrapped__` -> its closure -> wrapper."""

    def make() -> weakref.ref[Any]:
        @cached(wait_concurrent=wait_concurrent)
        def fib(n: int) -> int:
            return n if n < 2 else fib(n - 1) + fib(n - 2)

        assert fib(20) == 6765
        return weakref.ref(fib)

    wrapper_ref = make()
    collect()
    assert wrapper_ref() is None


# --- no leak of exceptions or Tasks from the coalescing paths -----------------------


def tracked_exception() -> tuple[type[Exception], weakref.WeakSet[BaseException]]:
    """A new exception class, and the set of its live instances (copies included:
    `copy.copy` of an exception calls its class)."""
    live: weakref.WeakSet[BaseException] = weakref.WeakSet()
    lock = threading.Lock()

    class Tracked(Exception):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            with lock:
                live.add(self)

    return Tracked, live


def test_get_with_failures_leave_no_exception_alive() -> None:
    Tracked, live = tracked_exception()
    c: Moka[Any, int] = Moka(10)
    release = threading.Event()
    n_threads = 8

    def init() -> int:
        release.wait(10)
        raise Tracked("load failed")

    def work(i: int) -> str:
        if i == 0:
            threading.Timer(0.2, release.set).start()
        try:
            c.get_with("k", init)
        except Tracked as e:
            assert e.args == ("load failed",)
            return "failed"
        return "loaded"

    def fail() -> int:
        raise Tracked("again")

    assert run_threads(work, n_threads) == ["failed"] * n_threads
    for i in range(2000):
        with pytest.raises(Tracked):
            c.get_with(i, fail)
    collect()
    assert len(live) == 0, f"{len(live)} exceptions kept alive"
    assert "k" not in c


def test_cached_wait_concurrent_failures_leave_no_exception_alive() -> None:
    Tracked, live = tracked_exception()
    gate = threading.Event()

    @cached(wait_concurrent=True)
    def f(x: int) -> int:
        gate.wait(10)
        raise Tracked(x)

    def work(i: int) -> None:
        if i == 0:
            threading.Timer(0.2, gate.set).start()
        with pytest.raises(Tracked):
            f(i % 3)

    run_threads(work, 12)
    collect()
    assert len(live) == 0, f"{len(live)} exceptions kept alive"


@cpython_cycles
def test_async_coalescing_leaves_no_task_exception_or_loop_alive() -> None:
    Tracked, live = tracked_exception()
    tasks: list[weakref.ref[asyncio.Task[Any]]] = []
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []
    calls = [0]

    @cached(wait_concurrent=True)
    async def f(x: int) -> list[int]:
        task = asyncio.current_task()
        assert task is not None
        tasks.append(weakref.ref(task))
        calls[0] += 1
        await asyncio.sleep(0.01)
        if x % 2:
            raise Tracked(x)
        return [x]

    async def main() -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        results = await asyncio.gather(*(f(i % 4) for i in range(40)), return_exceptions=True)
        for i, r in enumerate(results):
            if i % 2:
                assert isinstance(r, Tracked)
            else:
                assert r == [i % 4]
        # A computation whose only caller is cancelled is not kept either.
        waiter = asyncio.ensure_future(f(5))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await asyncio.sleep(0.05)

    for _ in range(3):
        asyncio.run(main())
    collect()
    assert calls[0] >= 4
    assert len(tasks) == calls[0]
    assert sum(t() is not None for t in tasks) == 0, "an asyncio.Task is kept alive"
    assert sum(lp() is not None for lp in loops) == 0, "an event loop is kept alive"
    assert len(live) == 0, f"{len(live)} exceptions kept alive"


def test_many_coalesced_loads_leave_no_exception_alive() -> None:
    """Two threads load the same 5000 keys, a quarter of the loads fail."""
    Tracked, live = tracked_exception()
    c: Moka[int, list[int]] = Moka(50)

    def load(i: int) -> list[int]:
        if i % 4 == 0:
            raise Tracked(i)
        return [i]

    def work(t: int) -> int:
        failed = 0
        for i in range(5000):
            try:
                assert c.get_with(i, functools.partial(load, i)) == [i]
            except Tracked as e:
                assert e.args == (i,)
                failed += 1
        return failed

    assert run_threads(work, 2) == [1250, 1250]
    collect()
    assert len(live) == 0, f"{len(live)} exceptions kept alive"
