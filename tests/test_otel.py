"""moka_py.otel read by the real OpenTelemetry SDK (InMemoryMetricReader):
the figures exported are the cumulative statistics at collection time, a
registration keeps nothing alive, and a tier's feed loss on a real
redis-server is seen."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from redis_servers import RedisServer
from support import SIGNING_KEY, wait_for

from moka_py import Moka, cached
from moka_py.otel import instrument
from moka_py.redis import TieredCache

Points = dict[tuple[str, tuple[tuple[str, Any], ...]], float]


def _sdk() -> tuple[MeterProvider, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    return MeterProvider(metric_readers=[reader]), reader


def collect(reader: InMemoryMetricReader) -> Points:
    """(metric name, sorted attributes) -> value, from one collection."""
    points: Points = {}
    data = reader.get_metrics_data()
    if data is None:
        return points
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            assert sm.scope.name == "moka_py"
            for metric in sm.metrics:
                for p in metric.data.data_points:  # type: ignore[union-attr]
                    key = (metric.name, tuple(sorted(p.attributes.items())))  # type: ignore[union-attr]
                    points[key] = p.value  # type: ignore[union-attr]
    return points


def of(points: Points, metric: str, name: str, **attrs: str) -> float | None:
    want = {"cache.name": name, **{k.replace("_", "."): v for k, v in attrs.items()}}
    return points.get((metric, tuple(sorted(want.items()))))


def test_a_cache_is_read_at_collection_time(run_threads: Any) -> None:
    provider, reader = _sdk()
    cache: Moka[int, int] = Moka(50, stats=True)
    registration = instrument(cache, "users", meter_provider=provider)
    assert registration.name == "users"

    def work(t: int) -> None:
        for i in range(500):
            k = (i * 7 + t) % 100
            if i % 5 == 0:
                try:
                    cache.get_with(k, lambda k=k: 1 // (k % 4))
                except ZeroDivisionError:
                    pass
            else:
                cache.get(k)

    run_threads(work, 4)
    cache.run_pending_tasks()
    s = cache.stats(cumulative=True)
    points = collect(reader)
    assert of(points, "moka.cache.requests", "users", cache_result="hit") == s.hits
    assert of(points, "moka.cache.requests", "users", cache_result="miss") == s.misses
    assert of(points, "moka.cache.loads", "users", cache_load_result="success") == s.loads
    assert of(points, "moka.cache.loads", "users", cache_load_result="failure") == s.load_failures
    assert of(points, "moka.cache.evictions", "users", cache_eviction_reason="size") == s.evictions
    assert of(points, "moka.cache.load.time", "users") == pytest.approx(s.load_time)
    assert of(points, "moka.cache.entry.count", "users") == cache.count()
    assert s.hits + s.misses == 4 * 500 and s.load_failures > 0 and s.evictions > 0
    # A reset changes what stats() says, never what is exported.
    cache.reset_stats()
    assert cache.stats().hits == 0
    assert of(collect(reader), "moka.cache.requests", "users", cache_result="hit") == s.hits


def test_registering_keeps_nothing_alive_and_unregisters() -> None:
    provider, reader = _sdk()
    cache: Moka[str, int] = Moka(10, stats=True)
    other: Moka[str, int] = Moka(10, stats=True)
    instrument(cache, "gone", meter_provider=provider)
    registration = instrument(other, "kept", meter_provider=provider)
    cache.get("a")
    other.get("a")
    points = collect(reader)
    assert of(points, "moka.cache.requests", "gone", cache_result="miss") == 1
    with pytest.raises(ValueError, match="'kept'"):
        instrument(Moka(10, stats=True), "kept", meter_provider=provider)
    ref = weakref.ref(cache)
    del cache
    gc.collect()
    assert ref() is None
    points = collect(reader)
    assert of(points, "moka.cache.requests", "gone", cache_result="miss") is None
    assert of(points, "moka.cache.requests", "kept", cache_result="miss") == 1
    # The name of a collected cache is free again; so is an unregistered one.
    instrument(Moka(10, stats=True), "gone", meter_provider=provider)
    registration.unregister()
    registration.unregister()
    assert of(collect(reader), "moka.cache.requests", "kept", cache_result="miss") is None
    instrument(other, "kept", meter_provider=provider)


def test_what_cannot_be_registered() -> None:
    provider, _ = _sdk()
    with pytest.raises(ValueError, match="stats=True"):
        instrument(Moka(10), "off", meter_provider=provider)
    with pytest.raises(TypeError, match="dict"):
        instrument({}, "dict", meter_provider=provider)


def test_stale_served_of_a_cache() -> None:
    provider, reader = _sdk()
    cache: Moka[str, int] = Moka(10, ttl=0.05, stale_if_error=60, stats=True)
    instrument(cache, "rates", meter_provider=provider)
    assert of(collect(reader), "moka.cache.stale_served", "rates") == 0
    cache.set("EUR", 1)
    wait_for(lambda: cache.get("EUR") is None, timeout=5)

    def down() -> int:
        raise ConnectionError

    assert cache.get_with("EUR", down) == 1
    assert of(collect(reader), "moka.cache.stale_served", "rates") == 1


def test_a_cached_function() -> None:
    provider, reader = _sdk()

    @cached(100, stats=True)
    def square(x: int) -> int:
        return x * x

    instrument(square, "square", meter_provider=provider)
    for x in (1, 2, 1, 1):
        square(x)
    points = collect(reader)
    assert of(points, "moka.cache.requests", "square", cache_result="hit") == 2
    assert of(points, "moka.cache.loads", "square", cache_load_result="success") == 2


@pytest.mark.thread_unsafe  # counts exactly on one server, which the threads would share
def test_a_tiered_cache_and_its_feed_loss(own_redis_server: RedisServer) -> None:
    provider, reader = _sdk()
    client = own_redis_server.client(socket_timeout=None)
    with (
        TieredCache(client, namespace="users", signing_key=SIGNING_KEY, stats=True) as a,
        TieredCache(client, namespace="users", signing_key=SIGNING_KEY, stats=True) as b,
    ):
        assert a.wait_ready(5) and b.wait_ready(5)
        instrument(b, "users", meter_provider=provider)
        a.set("k", 1)
        wait_for(lambda: b.get("k") == 1 and b.local.get("k") == 1, timeout=5)
        assert b.get("absent") is None
        # (The entry count exported is moka's last count, made by its
        # housekeeping: run it, so that it is exact.)
        b.local.run_pending_tasks()
        count = b.local.count()
        points = collect(reader)
        s = b.stats(cumulative=True)
        assert of(points, "moka.tiered.requests", "users", cache_result="local_hit") == s.local_hits
        remote = of(points, "moka.tiered.requests", "users", cache_result="remote_hit")
        assert remote == s.remote_hits >= 1
        assert of(points, "moka.tiered.requests", "users", cache_result="miss") == s.misses >= 1
        # (On a loaded machine the feed can be lost on its own, a health
        # check timing out: the exported figures must be the statistics'.)
        losses = of(points, "moka.tiered.feed.losses", "users")
        assert losses == s.feed_losses
        # (A loss clears the local tier: the count exported is the one before
        # the collection or the one after it.)
        assert of(points, "moka.cache.entry.count", "users") in {count, b.local.count()}
        assert b.wait_ready(5)
        assert own_redis_server.client_kill(type="pubsub") >= 2
        wait_for(lambda: b.stats(cumulative=True).feed_losses > losses, timeout=5)
        assert b.wait_ready(5)
        points = collect(reader)
        assert of(points, "moka.tiered.feed.losses", "users") >= losses + 1
        assert of(points, "moka.tiered.feed.up", "users") == 1
