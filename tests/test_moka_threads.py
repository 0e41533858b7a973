"""Threaded stress tests: real threads, each doing a bounded amount of work, joined
with a timeout so that a deadlock fails the test instead of hanging the run.

Each scenario runs in a child interpreter (`run_isolated`): a thread that waits
on a lock while holding the GIL would otherwise hang this process beyond the
reach of any timeout.

Values are `(key, n)` tuples, so a read can check that it never returns a value
that was written for another key.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

from support import PyKey, run_isolated, run_threads

from moka_py import Moka

WORK_SECONDS = 1.0


def check(key: Any, value: Any) -> None:
    if value is not None:
        assert isinstance(value, tuple), value
        assert value[0] == key, (key, value)


class LoadFailed(Exception):
    pass


def scenario_mixed_operations_with_get_with() -> None:
    c: Moka[int, tuple[int, int]] = Moka(100)
    keys = range(200)
    loads = [0]
    failures = [0]
    lock = threading.Lock()

    def writer(rng: random.Random, stop: float) -> int:
        ops = 0
        while time.monotonic() < stop:
            k = rng.choice(keys)
            r = rng.random()
            if r < 0.4:
                c.set(k, (k, ops))
            elif r < 0.6:
                check(k, c.remove(k))
            elif r < 0.7:
                c[k] = (k, ops)
            elif r < 0.75:
                _ = k in c
            else:
                check(k, c.get(k))
            ops += 1
        return ops

    def loader(rng: random.Random, stop: float) -> int:
        ops = 0
        while time.monotonic() < stop:
            k = rng.choice(keys)
            fail = rng.random() < 0.2

            def init(k: int = k, fail: bool = fail) -> tuple[int, int]:
                with lock:
                    loads[0] += 1
                if fail:
                    raise LoadFailed(k)
                return (k, -1)

            try:
                check(k, c.get_with(k, init))
            except LoadFailed as e:
                assert e.args == (k,)
                with lock:
                    failures[0] += 1
            ops += 1
        return ops

    def work(i: int) -> int:
        rng = random.Random(i)
        stop = time.monotonic() + WORK_SECONDS
        return writer(rng, stop) if i < 8 else loader(rng, stop)

    ops = run_threads(work, 12)
    assert all(n > 0 for n in ops)
    assert loads[0] > 0
    assert failures[0] > 0
    for k, v in c.items():
        check(k, v)
    c.run_pending_tasks()
    assert c.count() <= 100


def scenario_small_cache_with_reading_listener() -> None:
    notified = [0]
    lock = threading.Lock()

    def listener(k: int, v: tuple[int, int], cause: str) -> None:
        check(k, v)
        check(k, c.get(k))
        check(k + 1, c.get(k + 1))
        _ = k in c
        with lock:
            notified[0] += 1

    c: Moka[int, tuple[int, int]] = Moka(50, eviction_listener=listener)

    def work(i: int) -> None:
        rng = random.Random(100 + i)
        stop = time.monotonic() + WORK_SECONDS
        n = 0
        while time.monotonic() < stop:
            k = rng.randrange(300)
            if rng.random() < 0.5:
                c.set(k, (k, n))
            else:
                check(k, c.get(k))
            n += 1

    run_threads(work, 4)
    assert notified[0] > 0
    c.run_pending_tasks()
    assert c.count() <= 50


def scenario_python_eq_keys_with_collisions() -> None:
    c: Moka[PyKey, tuple[PyKey, int]] = Moka(60)

    def work(i: int) -> int:
        rng = random.Random(200 + i)
        stop = time.monotonic() + WORK_SECONDS
        n = 0
        while time.monotonic() < stop:
            k = PyKey(rng.randrange(100), buckets=7)
            r = rng.random()
            if r < 0.35:
                c.set(k, (k, n))
            elif r < 0.5:
                check(k, c.remove(k))
            elif r < 0.6:
                check(k, c.get_with(k, lambda k=k: (k, -1)))
            else:
                check(k, c.get(k))
            n += 1
        return n

    assert all(n > 0 for n in run_threads(work, 8))
    seen = set()
    for k, v in c.items():
        check(k, v)
        assert k.n not in seen, f"duplicate key {k}"
        seen.add(k.n)


def scenario_clear_while_working() -> None:
    events: list[str] = []
    lock = threading.Lock()

    def listener(k: Any, v: Any, cause: str) -> None:
        check(k, v)
        with lock:
            events.append(cause)

    c: Moka[Any, Any] = Moka(80, eviction_listener=listener, tti=5)

    def work(i: int) -> int:
        rng = random.Random(300 + i)
        stop = time.monotonic() + WORK_SECONDS
        n = 0
        while time.monotonic() < stop:
            if i == 0:
                c.clear()
                time.sleep(0.01)
            else:
                k = rng.choice([rng.randrange(150), f"s{rng.randrange(50)}", (i, rng.randrange(9))])
                r = rng.random()
                if r < 0.5:
                    c.set(k, (k, n))
                elif r < 0.6:
                    check(k, c.get_with(k, lambda k=k: (k, -1)))
                elif r < 0.7:
                    check(k, c.remove(k))
                else:
                    check(k, c.get(k))
            n += 1
        return n

    assert all(n > 0 for n in run_threads(work, 8))
    assert "explicit" in events
    c.clear()
    assert len(c) == 0
    assert c.keys() == []


def scenario_len_and_iteration_while_writing() -> None:
    c: Moka[int, tuple[int, int]] = Moka(100)

    def work(i: int) -> None:
        stop = time.monotonic() + WORK_SECONDS
        n = 0
        while time.monotonic() < stop:
            if i < 2:
                for k, v in c.items():
                    check(k, v)
                assert 0 <= len(c) <= 100 + 100 // 32
                for k in c:
                    assert isinstance(k, int)
            else:
                k = (i * 7919 + n) % 500
                c.set(k, (k, n))
            n += 1

    run_threads(work, 6)


def test_mixed_operations_with_get_with() -> None:
    run_isolated(scenario_mixed_operations_with_get_with)


def test_small_cache_with_reading_listener() -> None:
    run_isolated(scenario_small_cache_with_reading_listener)


def test_python_eq_keys_with_collisions() -> None:
    run_isolated(scenario_python_eq_keys_with_collisions)


def test_clear_while_working() -> None:
    run_isolated(scenario_clear_while_working)


def test_len_and_iteration_while_writing() -> None:
    run_isolated(scenario_len_and_iteration_while_writing)
