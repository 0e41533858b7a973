"""moka_py.redis over a real three-master Redis Cluster on loopback: sharing,
invalidation over sharded pub/sub, one load, clear() on every master, and a
feed that follows its channel's master when that master fails."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from redis.crc import key_slot
from redis_servers import RedisCluster3
from support import SIGNING_KEY, wait_for

from moka_py.redis import AsyncTieredCache, TieredCache
from moka_py.redis._shared import BREAK_SECONDS

pytestmark = pytest.mark.thread_unsafe  # one cluster per worker, flushed by each test

NS = "users"


@pytest.fixture
def cluster(redis_cluster: RedisCluster3) -> RedisCluster3:
    redis_cluster.flushall()
    return redis_cluster


def _per_master(cluster: RedisCluster3) -> dict[tuple[str, int], int]:
    counts = {}
    for s in cluster.servers:
        counts[(s.host, s.port)] = len(s.admin.keys(f"{NS}:*"))
    return counts


def test_sharing_invalidation_and_clear_on_every_master(cluster: RedisCluster3) -> None:
    client = cluster.client()
    with (
        TieredCache(client, namespace=NS, signing_key=SIGNING_KEY, stats=True) as a,
        TieredCache(client, namespace=NS, signing_key=SIGNING_KEY, stats=True) as b,
    ):
        assert a.wait_ready(10) and b.wait_ready(10)
        a.set_many({i: f"v{i}" for i in range(60)})
        assert b.get_many(range(60)) == {i: f"v{i}" for i in range(60)}
        # The keys spread over the three masters.
        assert all(n > 0 for n in _per_master(cluster).values())
        a.set(7, "new")
        wait_for(lambda: b.get(7) == "new", timeout=5)
        assert a.remove(8) == "v8"
        wait_for(lambda: b.get(8) is None, timeout=5)
        b.clear()
        assert sum(_per_master(cluster).values()) == 0
        wait_for(lambda: a.get(1) is None, timeout=5)
        assert b.stats().invalidations >= 2
        wait_for(lambda: a.stats().invalidations >= 1, timeout=5)


def test_the_feed_is_sharded_on_the_channel_master(cluster: RedisCluster3) -> None:
    client = cluster.client()
    with TieredCache(client, namespace=NS, signing_key=SIGNING_KEY) as a:
        assert a.wait_ready(10)
        slot = key_slot(f"{NS}:inv".encode())
        owner = client.nodes_manager.get_node_from_slot(slot)
        subs = {}
        for s in cluster.servers:
            reply = s.admin.execute_command("PUBSUB", "SHARDNUMSUB", f"{NS}:inv")
            subs[s.port] = int(reply[1])
        assert subs[owner.port] >= 1
        assert sum(subs.values()) == subs[owner.port]


def test_one_load_over_a_cluster(cluster: RedisCluster3) -> None:
    client = cluster.client()
    caches = [TieredCache(client, namespace=NS, signing_key=SIGNING_KEY) for _ in range(3)]
    try:
        calls: list[int] = []

        def load() -> str:
            calls.append(1)
            time.sleep(0.3)
            return "v"

        results: list[str] = []
        threads = [
            threading.Thread(target=lambda c=c: results.append(c.get_with("hot", load)))
            for c in caches * 3
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert results == ["v"] * 9 and calls == [1]
    finally:
        for c in caches:
            c.close()


def test_async_over_a_cluster(cluster: RedisCluster3) -> None:
    async def main() -> None:
        client = cluster.async_client()
        sync = TieredCache(cluster.client(), namespace=NS, signing_key=SIGNING_KEY)
        async with AsyncTieredCache(client, namespace=NS, signing_key=SIGNING_KEY) as cache:
            assert await cache.wait_ready(10)
            await cache.set_many({i: i for i in range(30)})
            assert sync.get_many(range(30)) == {i: i for i in range(30)}
            sync.set(3, "changed")
            for _ in range(500):
                if await cache.get(3) == "changed":
                    break
                await asyncio.sleep(0.01)
            assert await cache.get(3) == "changed"
            calls: list[int] = []

            async def load() -> int:
                calls.append(1)
                await asyncio.sleep(0.1)
                return 42

            assert await asyncio.gather(*(cache.get_with("g", load) for _ in range(5))) == [42] * 5
            assert calls == [1] and sync.get("g") == 42
            await cache.clear()
            assert sum(_per_master(cluster).values()) == 0
        sync.close()
        await client.aclose()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_decorated_functions_over_a_cluster(cluster: RedisCluster3) -> None:
    client = cluster.client()
    with (
        TieredCache(client, namespace=NS, signing_key=SIGNING_KEY) as a,
        TieredCache(client, namespace=NS, signing_key=SIGNING_KEY) as b,
    ):
        assert a.wait_ready(10) and b.wait_ready(10)
        version = [1]
        calls: list[int] = []

        def make(cache: TieredCache[object, object]) -> object:
            @cache.cached(ttl=60, name="cluster.read")
            def read(x: int) -> tuple[int, int]:
                calls.append(x)
                return (x, version[0])

            return read

        fa, fb = make(a), make(b)
        assert [fa(i) for i in range(20)] == [fb(i) for i in range(20)]  # type: ignore[operator]
        assert len(calls) == 20
        version[0] = 2
        assert fb.refresh(3) == (3, 2)  # type: ignore[attr-defined]
        wait_for(lambda: fa(3) == (3, 2), timeout=5)  # type: ignore[operator]
        assert fa.cache_invalidate(4) is True  # type: ignore[attr-defined]
        wait_for(lambda: not fb.cache_contains(4), timeout=5)  # type: ignore[attr-defined]
        fa.cache_clear()  # type: ignore[attr-defined]
        wait_for(lambda: fb(5) == (5, 2), timeout=5)  # type: ignore[operator]
        assert fa(6) == (6, 2) and len(calls) == 23


def test_the_feed_survives_its_master_restarting(own_redis_cluster: RedisCluster3) -> None:
    client = own_redis_cluster.client()
    with (
        TieredCache(client, namespace=NS, signing_key=SIGNING_KEY, stats=True) as a,
        TieredCache(client, namespace=NS, signing_key=SIGNING_KEY, stats=True) as b,
    ):
        assert a.wait_ready(10) and b.wait_ready(10)
        a.set("k", 1)
        wait_for(lambda: b.get("k") == 1 and b.local.get("k") == 1, timeout=5)
        slot = key_slot(f"{NS}:inv".encode())
        port = client.nodes_manager.get_node_from_slot(slot).port
        server = next(s for s in own_redis_cluster.servers if s.port == port)
        server.restart()
        own_redis_cluster.wait_ready()
        wait_for(lambda: b.stats().feed_losses >= 1, timeout=10)
        assert b.wait_ready(10) and a.wait_ready(10)
        a.set("k", 2)
        wait_for(lambda: b.get("k") == 2, timeout=10)


def test_a_cluster_with_every_node_down_is_redis_down(own_redis_cluster: RedisCluster3) -> None:
    """redis-py's cluster client raises RedisClusterException (not a RedisError)
    when no node answers: the cache treats it as Redis being unreachable (the
    fail-safe answers reads from the local tier; writes raise RedisError)."""
    import redis

    client = own_redis_cluster.client()
    with TieredCache(
        client, namespace=NS, signing_key=SIGNING_KEY, timeout=0.5, stats=True
    ) as cache:
        assert cache.wait_ready(10)
        cache.set("k", "kept")
        for server in own_redis_cluster.servers:
            server.kill()
        wait_for(lambda: not cache.feed_up, timeout=10)
        # Each round after the breaker closed again: the first call of a round
        # reaches the client (a connection error, then, once the client wants
        # to find the nodes again, RedisClusterException).
        for _ in range(2):
            time.sleep(BREAK_SECONDS + 0.1)
            assert cache.get("k") == "kept"
            time.sleep(BREAK_SECONDS + 0.1)
            assert cache.get("absent", "default") == "default"
            time.sleep(BREAK_SECONDS + 0.1)
            assert cache.get_many(["k", "absent"]) == {"k": "kept"}
            time.sleep(BREAK_SECONDS + 0.1)
            with pytest.raises(redis.RedisError):
                cache.set("other", "unwritten")
        stats = cache.stats()
        assert stats.stale_served >= 4 and stats.redis_errors >= 8
        assert cache.get_with("new", lambda: "loaded alone") == "loaded alone"
