"""Stress: sixteen threads mix every operation for a few seconds, on both builds.

One scenario, run in a child interpreter (`run_isolated`, so that a deadlock
fails the test instead of hanging the run): each thread picks at random among
`set`, `get`, `remove`, `in`, `[]`, `del`, `len`, iteration, `get_with` with
loaders that sometimes raise, keys compared in Rust and keys compared by
Python's `__eq__`, a function decorated with `@cached(wait_concurrent=True)`
that sometimes raises; one thread also calls `clear()` and `cache_clear()` from
time to time. The eviction listener re-enters the cache (reads, writes and
removes other keys) and sometimes raises.

It passes when it finishes (the work is bounded in time, the timeout only
catches a hang), nothing raised but the loaders' own exceptions, the listener's
exceptions went to `sys.unraisablehook` and nowhere else, and every value read
(by a read, a removal, a `get_with`, an iteration or the listener) is one that
some thread wrote under that key.

The time-bounded `tests/test_moka_threads.py` scenarios each stress one thing;
this one runs everything at once.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from support import PyKey, run_isolated, run_threads

from moka_py import Moka, cached

THREADS = 16
WORK_SECONDS = 3.0
CAPACITY = 64
SLACK = CAPACITY // 32

# A value is (key, writer, serial); with a key compared by Python, (key.n, writer, serial).
Val = tuple[Any, int, int]


class LoadFailed(Exception):
    pass


class ListenerBoom(Exception):
    pass


class Log:
    """What one thread wrote and read; only that thread appends to it."""

    def __init__(self, writer: int) -> None:
        self.writer = writer
        self.serial = 0
        self.written: list[Val] = []
        self.read: list[Val] = []
        self.counts: dict[str, int] = {}

    def new(self, key: Any) -> Val:
        self.serial += 1
        v = (key, self.writer, self.serial)
        self.written.append(v)
        return v

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1


def native_key(rng: random.Random) -> Any:
    r = rng.random()
    if r < 0.5:
        return rng.randrange(150)
    if r < 0.8:
        return f"s{rng.randrange(60)}"
    return ("t", rng.randrange(40))


def scenario_everything_at_once() -> None:
    logs = [Log(i) for i in range(THREADS)]
    main_log = Log(THREADS)
    local = threading.local()

    def log() -> Log:
        found: Log = getattr(local, "log", main_log)
        return found

    unraisable: list[type[BaseException]] = []
    unraisable_lock = threading.Lock()

    def hook(args: Any) -> None:
        with unraisable_lock:
            unraisable.append(args.exc_type)

    sys.unraisablehook = hook

    def seen(key: Any, value: Any) -> None:
        """Records a value read for `key` (a native key)."""
        if value is not None:
            assert value[0] == key, (key, value)
            log().read.append(value)

    def listener(key: Any, value: Val, cause: str) -> None:
        lg = log()
        lg.count("listener")
        seen(key, value)
        seen(key, native.get(key))
        _ = key in native
        if not (isinstance(key, tuple) and key[0] == "echo"):
            echo = ("echo", value[2] % 8)
            if value[2] % 3 == 0:
                native.set(echo, lg.new(echo))
            elif value[2] % 3 == 1:
                seen(echo, native.remove(echo))
        if value[2] % 11 == 0:
            raise ListenerBoom(cause)

    native: Moka[Any, Val] = Moka(CAPACITY, eviction_listener=listener)
    python_keyed: Moka[PyKey, Val] = Moka(48, policy="lru")
    calls = [0]
    calls_lock = threading.Lock()

    @cached(maxsize=32, wait_concurrent=True)
    def square(x: int) -> tuple[int, int]:
        with calls_lock:
            calls[0] += 1
            fail = calls[0] % 5 == 0
        time.sleep(0.0002)
        if fail:
            raise LoadFailed(x)
        return (x, x * x)

    def loader(lg: Log, key: Any, out: Callable[[Any], Any], fail: bool) -> Callable[[], Val]:
        def load() -> Val:
            lg.count("load")
            if fail:
                raise LoadFailed(key)
            return lg.new(out(key))

        return load

    def native_op(lg: Log, rng: random.Random) -> None:
        k = native_key(rng)
        r = rng.random()
        if r < 0.3:
            native.set(k, lg.new(k))
        elif r < 0.55:
            seen(k, native.get(k))
        elif r < 0.65:
            seen(k, native.remove(k))
        elif r < 0.8:
            try:
                seen(k, native.get_with(k, loader(lg, k, lambda k: k, rng.random() < 0.25)))
            except LoadFailed as e:
                assert e.args == (k,), (k, e.args)
                lg.count("load failed")
        elif r < 0.85:
            _ = k in native
            assert len(native) <= CAPACITY + SLACK
        elif r < 0.9:
            native[k] = lg.new(k)
        elif r < 0.95:
            try:
                seen(k, native[k])
                del native[k]
            except KeyError as e:
                assert e.args == (k,)
        else:
            for key, value in native.items():
                seen(key, value)
            for key in native:
                assert isinstance(key, (int, str, tuple)), key

    def python_keyed_op(lg: Log, rng: random.Random) -> None:
        k = PyKey(rng.randrange(80), buckets=5)

        def check(value: Val | None) -> None:
            if value is not None:
                assert value[0] == k.n, (k, value)
                lg.read.append(value)

        r = rng.random()
        if r < 0.35:
            python_keyed.set(k, lg.new(k.n))
        elif r < 0.6:
            check(python_keyed.get(k))
        elif r < 0.7:
            check(python_keyed.remove(k))
        else:
            try:
                check(python_keyed.get_with(k, loader(lg, k, lambda k: k.n, rng.random() < 0.25)))
            except LoadFailed as e:
                assert e.args == (k,), (k, e.args)
                lg.count("load failed")

    def cached_op(lg: Log, rng: random.Random) -> None:
        x = rng.randrange(40)
        try:
            assert square(x) == (x, x * x)
        except LoadFailed as e:
            assert e.args == (x,), (x, e.args)
            lg.count("cached failed")
        lg.count("cached")

    def work(i: int) -> None:
        lg = local.log = logs[i]
        rng = random.Random(i)
        stop = time.monotonic() + WORK_SECONDS
        next_clear = 0.0
        while (now := time.monotonic()) < stop:
            if i == 0 and now >= next_clear:
                native.clear()
                python_keyed.clear()
                square.cache_clear()
                lg.count("clear")
                next_clear = now + 0.05
            r = rng.random()
            if r < 0.6:
                native_op(lg, rng)
            elif r < 0.8:
                python_keyed_op(lg, rng)
            else:
                cached_op(lg, rng)
            lg.count("ops")

    run_threads(work, THREADS, timeout=60.0)

    native.run_pending_tasks()
    assert native.count() <= CAPACITY
    for k, v in native.items():
        seen(k, v)
    for k, v in python_keyed.items():
        assert v[0] == k.n
        main_log.read.append(v)

    everyone = [*logs, main_log]
    written = {v for lg in everyone for v in lg.written}
    never_written = [v for lg in everyone for v in lg.read if v not in written]
    assert never_written == [], f"values read that no thread wrote: {never_written[:10]}"

    total: dict[str, int] = {}
    for lg in everyone:
        for what, n in lg.counts.items():
            total[what] = total.get(what, 0) + n
    assert all(lg.counts.get("ops", 0) > 0 for lg in logs), [lg.counts for lg in logs]
    for what in ("load", "load failed", "listener", "cached", "cached failed", "clear"):
        assert total.get(what, 0) > 0, (what, total)
    assert unraisable, "the listener never raised"
    assert set(unraisable) == {ListenerBoom}, set(unraisable)
    print(f"{sum(len(lg.read) for lg in everyone)} reads checked; {total}", file=sys.stderr)


def test_everything_at_once() -> None:
    run_isolated(scenario_everything_at_once, timeout=90.0)


def scenario_clear_while_reading() -> None:
    """Threads read and write one cache (through every entry: the fast one of
    plain calls, PyO3's of keyword calls, `in`, `@cached`) while another clears it
    in a tight loop: a reader still inside the table that `clear()` swapped out
    must find it intact (it is freed only once no thread can read it). A table
    freed too early crashed here (a segmentation fault) about one run in ten."""
    cache: Moka[Any, Any] = Moka(256)

    @cached(maxsize=64)
    def square(x: int) -> int:
        return x * x

    stop = time.monotonic() + 2.0

    def work(i: int) -> None:
        n = 0
        while time.monotonic() < stop:
            n += 1
            if i == 0:
                cache.clear()
                square.cache_clear()
                continue
            k = (i * 7 + n) % 300
            cache.set(k, n)
            cache.get(k)
            cache.get(key=("t", k))
            _ = k in cache
            cache.get_with(str(k), lambda n=n: n)
            assert square(k % 80) == (k % 80) ** 2

    run_threads(work, 6, timeout=60.0)


def test_clear_while_reading() -> None:
    run_isolated(scenario_clear_while_reading, timeout=60.0)
