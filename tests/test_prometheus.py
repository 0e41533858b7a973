"""moka_py.prometheus in a real prometheus_client registry, read back from
the exposition text (generate_latest)."""

from __future__ import annotations

import gc
import re
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from redis_servers import RedisServer
from support import SIGNING_KEY, wait_for

from moka_py import Moka, cached
from moka_py.prometheus import MokaCollector
from moka_py.redis import TieredCache


def scrape(registry: CollectorRegistry) -> dict[str, float]:
    """Each sample line of the exposition: 'name{labels}' -> value."""
    text = generate_latest(registry).decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            out[series] = float(value)
    return out


def series(name: str, **labels: str) -> str:
    # (prometheus_client writes the labels sorted by name)
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def test_the_series_of_a_cache_and_a_cached_function(run_threads: Any) -> None:
    registry = CollectorRegistry()
    collector = MokaCollector()
    registry.register(collector)
    cache: Moka[int, int] = Moka(30, stats=True)

    @cached(10, stats=True)
    def square(x: int) -> int:
        return x * x

    collector.add("users", cache)
    collector.add("square", square)

    def work(t: int) -> None:
        for i in range(300):
            cache.get_with((i + t) % 60, lambda i=i: i)
            square(i % 20)

    run_threads(work, 4)
    cache.run_pending_tasks()
    s = cache.stats(cumulative=True)
    cache.reset_stats()  # exported counters do not go down
    got = scrape(registry)
    hit = series("moka_cache_requests_total", cache_name="users", cache_result="hit")
    assert got[hit] == s.hits
    assert got[series("moka_cache_requests_total", cache_name="users", cache_result="miss")] == (
        s.misses
    )
    assert got[
        series("moka_cache_loads_total", cache_name="users", cache_load_result="success")
    ] == (s.loads)
    assert got[
        series("moka_cache_evictions_total", cache_name="users", cache_eviction_reason="size")
    ] == (s.evictions)
    assert got[series("moka_cache_load_time_seconds_total", cache_name="users")] == pytest.approx(
        s.load_time
    )
    assert got[series("moka_cache_entry_count", cache_name="users")] == cache.count()
    assert got[series("moka_cache_stale_served_total", cache_name="users")] == s.stale_served
    sq = square.cache.stats(cumulative=True)
    assert got[series("moka_cache_requests_total", cache_name="square", cache_result="hit")] == (
        sq.hits
    )
    text = generate_latest(registry).decode()
    assert "# TYPE moka_cache_requests_total counter" in text
    assert "# TYPE moka_cache_entry_count gauge" in text


def test_add_remove_and_weak_references() -> None:
    registry = CollectorRegistry()
    collector = MokaCollector()
    registry.register(collector)
    cache: Moka[int, int] = Moka(10, stats=True)
    collector.add("a", cache)
    with pytest.raises(ValueError, match="'a'"):
        collector.add("a", Moka(10, stats=True))
    with pytest.raises(ValueError, match="stats=True"):
        collector.add("off", Moka(10))
    cache.get(1)
    assert series("moka_cache_requests_total", cache_name="a", cache_result="miss") in scrape(
        registry
    )
    collector.remove("a")
    collector.remove("a")
    assert not re.search(r"moka_", "\n".join(scrape(registry)))
    collector.add("b", Moka(10, stats=True))  # collected at once: nothing is kept
    gc.collect()
    assert scrape(registry) == {}


@pytest.mark.thread_unsafe  # counts exactly on one server, which the threads would share
def test_a_tiered_cache(redis_db: RedisServer) -> None:
    registry = CollectorRegistry()
    collector = MokaCollector()
    registry.register(collector)
    with TieredCache(
        redis_db.client(), namespace="users", signing_key=SIGNING_KEY, stats=True
    ) as cache:
        assert cache.wait_ready(5)
        collector.add("users", cache)
        cache.set("k", 1)
        assert cache.get("k") == 1 and cache.get("absent") is None
        assert cache.get_with("loaded", lambda: 2) == 2
        wait_for(lambda: cache.feed_up, timeout=5)
        got = scrape(registry)
        name = "moka_tiered_requests_total"
        assert got[series(name, cache_name="users", cache_result="local_hit")] == 1
        assert got[series(name, cache_name="users", cache_result="miss")] == 1
        assert (
            got[series("moka_tiered_loads_total", cache_name="users", cache_load_result="success")]
            == 1
        )
        assert got[series("moka_tiered_feed_up", cache_name="users")] == 1
        assert got[series("moka_tiered_refused_total", cache_name="users")] == 0
