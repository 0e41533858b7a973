"""The tier's atomic writes: ``add`` (SET NX), ``update`` (compare and swap)
and ``touch`` (a new expiry), sync and asyncio, on a real redis-server and
the 3-master cluster.

Two caches of one namespace in one process have their own local tiers,
feeds and origins: to each other they are two processes (as in
test_redis_tier.py)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis_fixtures import tiered_pair
from redis_servers import RedisCluster3, RedisServer
from support import SIGNING_KEY, run_threads, wait_for

from moka_py.redis import AsyncTieredCache, TieredCache
from moka_py.redis._shared import MAX_SWAPS

pytestmark = pytest.mark.thread_unsafe  # the module's server, fixed keys

NS = "atomic"
Pair = tuple[TieredCache[Any, Any], TieredCache[Any, Any]]


def _pair(client: Any) -> Iterator[Pair]:
    yield from tiered_pair(client, NS)


@pytest.fixture
def pair(redis_db: RedisServer) -> Iterator[Pair]:
    yield from _pair(redis_db.client(socket_timeout=None))


@pytest.fixture
def cluster_pair(redis_cluster: RedisCluster3) -> Iterator[Pair]:
    redis_cluster.flushall()
    yield from _pair(redis_cluster.client())


def test_add_stores_only_an_absent_key(pair: Pair) -> None:
    a, b = pair
    assert a.add("k", 1) is True
    assert b.get("k") == 1  # b keeps a local copy
    assert b.add("k", 2) is False
    assert a.add("k", 3) is False
    assert a.get("k") == 1 and b.get("k") == 1
    a.remove("k")
    wait_for(lambda: b.get("k") is None, timeout=5)
    assert b.add("k", 4) is True
    wait_for(lambda: a.get("k") == 4, timeout=5)


def test_add_is_atomic_across_caches(pair: Pair) -> None:
    a, b = pair
    won: list[int] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        for n in range(50):
            if (a if i % 2 else b).add(("race", n), i):
                with lock:
                    won.append(n)

    run_threads(one, 4)
    # Each key was stored by exactly one of the 4 threads over 2 caches.
    assert sorted(won) == list(range(50))


def test_update_replaces_atomically_and_every_tier_sees_it(pair: Pair) -> None:
    a, b = pair
    a.set("n", 0)
    assert b.get("n") == 0

    def bump(i: int) -> None:
        cache = a if i % 2 else b
        for _ in range(100):
            cache.update("n", lambda v: v + 1)

    run_threads(bump, 4)
    # No increment lost or counted twice, and each tier's copy is the last
    # value (the other's writes invalidated it).
    assert a.update("n", lambda v: v + 0) == 400
    wait_for(lambda: a.get("n") == 400 and b.get("n") == 400, timeout=5)


def test_update_of_an_absent_or_refused_key(pair: Pair, redis_db: RedisServer) -> None:
    a, _ = pair
    with pytest.raises(KeyError):
        a.update("none", lambda v: v + 1)
    # A value no key of ours signed is absent to update (and refused).
    redis_db.client().set(b"atomic:v:sforged", b"\x02" + b"x" * 80)
    with pytest.raises(KeyError):
        a.update("forged", lambda v: v + 1)
    assert a.stats().rejected == 1
    assert redis_db.client().get(b"atomic:v:sforged") == b"\x02" + b"x" * 80


def test_update_keeps_the_expiry_and_fn_errors_write_nothing(
    pair: Pair, redis_db: RedisServer
) -> None:
    a, b = pair
    plain = redis_db.client()
    a.set("t", 1, ttl=1000)
    a.set("p", 1)  # the cache's ttl, 300 s
    a.update("t", lambda v: v + 1)
    pttl = plain.pttl(b"atomic:v:st")
    assert 0 < pttl <= 1_000_000
    with pytest.raises(ZeroDivisionError):
        a.update("t", lambda v: v // 0)
    assert b.get("t") == 2
    forever: TieredCache[Any, Any] = TieredCache(
        plain, namespace=NS, signing_key=SIGNING_KEY, ttl=None
    )
    try:
        forever.set("f", 1)
        assert forever.update("f", lambda v: v * 10) == 10
        assert plain.pttl(b"atomic:v:sf") == -1
    finally:
        forever.close()


def test_update_under_endless_writes_gives_up(pair: Pair, redis_db: RedisServer) -> None:
    """A key that another client rewrites between every read and swap: update
    stops after MAX_SWAPS attempts with WatchError, writing nothing."""
    a, b = pair
    a.set("hot", 0)
    calls: list[int] = []

    def meddle(v: int) -> int:
        calls.append(v)
        b.set("hot", -len(calls))  # a new payload: the swap finds it changed
        return v + 1000

    with pytest.raises(redis.WatchError):
        a.update("hot", meddle)
    assert len(calls) == MAX_SWAPS
    assert b.get("hot") == -MAX_SWAPS
    wait_for(lambda: a.get("hot") == -MAX_SWAPS, timeout=5)

    async def main() -> None:
        client = redis_db.async_client()
        async with AsyncTieredCache(client, namespace=NS, signing_key=SIGNING_KEY) as c:
            assert await c.wait_ready(5)
            calls.clear()
            with pytest.raises(redis.WatchError):
                await c.update("hot", meddle)
            assert len(calls) == MAX_SWAPS
        await client.aclose()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_touch(pair: Pair, redis_db: RedisServer) -> None:
    a, b = pair
    plain = redis_db.client()
    assert a.touch("absent", 10) is False
    a.set("k", {"v": 1}, ttl=5)
    assert b.get("k") == {"v": 1}
    assert b.touch("k", 1000) is True
    assert plain.pttl(b"atomic:v:sk") > 5000
    # The value is unchanged, for every tier, and still signed.
    assert a.get("k") == {"v": 1} and b.get("k") == {"v": 1}
    forever: TieredCache[Any, Any] = TieredCache(
        plain, namespace=NS, signing_key=SIGNING_KEY, ttl=None
    )
    try:
        assert forever.touch("k") is True
        assert plain.pttl(b"atomic:v:sk") == -1
        assert forever.get("k") == {"v": 1}
    finally:
        forever.close()
    assert a.stats().rejected == 0 and b.stats().rejected == 0


def test_a_local_copy_is_dropped_by_touch(pair: Pair, redis_db: RedisServer) -> None:
    a, b = pair
    a.set("short", 1, ttl=100)
    # (A read during which a's invalidation arrives keeps no copy: read again.)
    wait_for(lambda: b.get("short") == 1 and "short" in b.local, timeout=5)
    a.touch("short", 1000)
    wait_for(lambda: "short" not in b.local, timeout=5)


def test_atomic_writes_over_a_cluster(cluster_pair: Pair) -> None:
    a, b = cluster_pair
    for i in range(20):  # keys on every master
        assert a.add(("k", i), i) is True
        assert b.add(("k", i), -1) is False
    assert b.get_many([("k", i) for i in range(20)]) == {("k", i): i for i in range(20)}
    for i in range(20):
        assert a.update(("k", i), lambda v: v * 2) == 2 * i
        assert a.touch(("k", i), 100) is True
    wait_for(lambda: all(b.get(("k", i)) == 2 * i for i in range(20)), timeout=5)
    with pytest.raises(KeyError):
        b.update("absent", lambda v: v)


def test_async_atomic_writes(redis_db: RedisServer) -> None:
    async def main() -> None:
        client = redis_db.async_client()
        sync: TieredCache[Any, Any] = TieredCache(
            redis_db.client(), namespace=NS, signing_key=SIGNING_KEY
        )
        async with AsyncTieredCache(client, namespace=NS, signing_key=SIGNING_KEY) as cache:
            assert await cache.wait_ready(5) and sync.wait_ready(5)
            assert await cache.add("a", 1) is True
            assert await cache.add("a", 2) is False
            assert sync.get("a") == 1
            assert sync.add("a", 3) is False

            async def bump() -> None:
                for _ in range(50):
                    await cache.update("a", lambda v: v + 1)

            thread = threading.Thread(
                target=lambda: [sync.update("a", lambda v: v + 1) for _ in range(50)]
            )
            thread.start()
            await asyncio.gather(bump(), bump())
            await asyncio.to_thread(thread.join, 30)
            assert await cache.update("a", lambda v: v) == 151
            for _ in range(500):
                if sync.get("a") == 151:
                    break
                await asyncio.sleep(0.01)
            assert sync.get("a") == 151
            with pytest.raises(KeyError):
                await cache.update("absent", lambda v: v)
            assert await cache.touch("absent", 5) is False
            assert await cache.touch("a", 1000) is True
            assert redis_db.client().pttl(b"atomic:v:sa") > 300_000
        sync.close()
        await client.aclose()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_atomic_writes_stay_signed(redis_db: RedisServer) -> None:
    cache: TieredCache[Any, Any] = TieredCache(
        redis_db.client(), namespace=NS, signing_key=SIGNING_KEY
    )
    try:
        cache.add("s", "v")
        cache.update("s", lambda v: v + "w")
        raw = redis.Redis(port=redis_db.port).get(b"atomic:v:ss")
        assert raw is not None and raw[0] == 2 and raw.endswith(b"vw" + b"\x94.")
    finally:
        cache.close()


def test_a_lost_swap_waits_a_bounded_random_pause() -> None:
    from moka_py.redis._shared import swap_backoff

    first = [swap_backoff(0) for _ in range(200)]
    assert all(0.0 <= p <= 0.001 for p in first) and len(set(first)) > 1
    assert all(0.0 <= swap_backoff(n) <= 0.05 for n in (5, 6, 63, 10_000))
    assert max(swap_backoff(63) for _ in range(200)) > 0.001
