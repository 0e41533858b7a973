"""`Moka(..., stats=True)`: exact in one thread, consistent under threads."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import pytest

from moka_py import Moka


def test_off_by_default_and_says_how_to_turn_on() -> None:
    cache: Moka[int, int] = Moka(10)
    with pytest.raises(ValueError, match=r"stats=True"):
        cache.stats()
    with pytest.raises(ValueError, match=r"stats=True"):
        cache.reset_stats()


def test_empty_stats_have_zero_rates() -> None:
    s = Moka(10, stats=True).stats()
    assert (s.hits, s.misses, s.requests, s.loads, s.load_failures) == (0, 0, 0, 0, 0)
    assert (s.evictions, s.evicted_weight, s.expirations, s.load_time) == (0, 0, 0, 0.0)
    assert s.hit_rate == 0.0
    assert s.miss_rate == 0.0


def test_reads_count_exactly_in_one_thread() -> None:
    cache: Moka[Any, Any] = Moka(100, stats=True)
    cache["a"] = 1
    cache.set("b", 2)
    assert cache.get("a") == 1  # hit
    assert cache.get("zz") is None  # miss
    assert cache["b"] == 2  # hit
    with pytest.raises(KeyError):
        cache["nope"]  # miss
    assert "a" in cache  # not counted
    assert cache.get_many(["a", "b", "c"]) == {"a": 1, "b": 2}  # 2 hits, 1 miss
    assert cache.get_with("a", lambda: 0) == 1  # hit
    assert cache.get_with("c", lambda: 3) == 3  # miss and a load
    s = cache.stats()
    assert (s.hits, s.misses, s.requests) == (5, 4, 9)
    assert s.hit_rate == pytest.approx(5 / 9)
    assert s.miss_rate == pytest.approx(4 / 9)
    assert (s.loads, s.load_failures) == (1, 0)


def test_loads_failures_and_load_time() -> None:
    cache: Moka[str, int] = Moka(100, stats=True)

    def slow() -> int:
        time.sleep(0.02)
        return 1

    def fail() -> int:
        time.sleep(0.02)
        raise ValueError("no")

    cache.get_with("a", slow)
    with pytest.raises(ValueError):
        cache.get_with("b", fail)
    s = cache.stats()
    assert (s.loads, s.load_failures, s.misses) == (1, 1, 2)
    # Both calls slept 20 ms: the total is at least that (no upper bound).
    assert s.load_time >= 0.04
    assert math.isfinite(s.load_time)


def test_evictions_expirations_and_weight() -> None:
    cache: Moka[int, str] = Moka(10, stats=True, weigher=lambda k, v: len(v), policy="lru")
    for i in range(10):
        cache[i] = "xx"  # weight 2 each: 20 > 10
    cache.run_pending_tasks()
    s = cache.stats()
    assert s.evictions == 10 - cache.count()
    assert s.evicted_weight == 2 * s.evictions
    assert s.evictions >= 5
    ttl_cache: Moka[int, int] = Moka(100, ttl=0.05, stats=True)
    for i in range(5):
        ttl_cache[i] = i
    time.sleep(0.1)
    ttl_cache.run_pending_tasks()
    assert ttl_cache.stats().expirations == 5
    assert ttl_cache.stats().evictions == 0


def test_explicit_removals_are_not_evictions() -> None:
    cache: Moka[int, int] = Moka(100, stats=True)
    cache.set_many({i: i for i in range(5)})
    del cache[0]
    cache.remove(1)
    cache.remove_many([2])
    cache[3] = 33  # replaced
    cache.clear()
    cache.run_pending_tasks()
    s = cache.stats()
    assert (s.evictions, s.expirations, s.evicted_weight) == (0, 0, 0)


def test_listener_still_called_with_stats() -> None:
    seen: list[tuple[int, int, str]] = []
    cache: Moka[int, int] = Moka(
        100, ttl=0.05, stats=True, eviction_listener=lambda k, v, c: seen.append((k, v, c))
    )
    cache[1] = 1
    time.sleep(0.1)
    cache.run_pending_tasks()
    assert seen == [(1, 1, "expired")]
    assert cache.stats().expirations == 1


def test_reset_stats() -> None:
    cache: Moka[int, int] = Moka(10, stats=True)
    cache[1] = 1
    cache.get(1)
    cache.get(2)
    cache.get_with(3, lambda: 3)
    before = cache.stats(cumulative=True)
    assert before == cache.stats()
    cache.reset_stats()
    s = cache.stats()
    assert (s.hits, s.misses, s.requests, s.loads, s.load_time) == (0, 0, 0, 0, 0.0)
    # The counters themselves never go down: an exporter reads them.
    assert cache.stats(cumulative=True) == before
    cache.get(1)
    assert cache.stats().hits == 1
    assert cache.stats(cumulative=True).hits == before.hits + 1
    assert cache.stats(cumulative=True).loads == before.loads == 1
    cache.reset_stats()
    assert cache.stats().hits == 0
    assert cache.stats(cumulative=True).hits == before.hits + 1


def test_each_loader_call_is_one_load_or_one_failure(run_threads: Any) -> None:
    cache: Moka[int, int] = Moka(100, stats=True)
    calls = threading.Lock()
    outcomes: list[bool] = []

    def work(t: int) -> None:
        for i in range(200):
            k = i % 20

            def init(k: int = k) -> int:
                ok = (k + t) % 3 != 0
                with calls:
                    outcomes.append(ok)
                if not ok:
                    raise ValueError(k)
                return k

            try:
                cache.get_with(k, init)
            except ValueError:
                pass
            if i % 7 == 0:
                cache.remove(k)

    run_threads(work, 4)
    s = cache.stats()
    assert s.loads == outcomes.count(True)
    assert s.load_failures == outcomes.count(False)
    assert s.load_failures > 0 and s.loads > 0


def test_snapshot_is_frozen_and_compares() -> None:
    cache: Moka[int, int] = Moka(10, stats=True)
    first = cache.stats()
    cache.get(1)
    assert first.misses == 0
    assert cache.stats().misses == 1
    assert first == Moka(10, stats=True).stats()
    assert first != cache.stats()
    with pytest.raises(AttributeError):
        first.hits = 3  # type: ignore[misc]
    assert "misses=0" in repr(first)


def test_consistent_under_threads(run_threads: Any) -> None:
    cache: Moka[int, int] = Moka(1000, stats=True)
    for i in range(0, 100, 2):
        cache[i] = i
    per_thread = 2000
    loads = threading.Lock()
    loaded: list[int] = []

    def work(t: int) -> None:
        for i in range(per_thread):
            k = (i * 7 + t) % 100
            if i % 3 == 0:
                cache.get(k)
            elif i % 3 == 1:
                try:
                    cache[k]
                except KeyError:
                    pass
            else:

                def init(k: int = k) -> int:
                    with loads:
                        loaded.append(k)
                    return k

                cache.get_with(k, init)

    run_threads(work, 8)
    s = cache.stats()
    assert s.requests == 8 * per_thread
    assert s.hits + s.misses == 8 * per_thread
    assert s.loads == len(loaded)
    assert s.misses >= s.loads
