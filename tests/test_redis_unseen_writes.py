"""What does not invalidate the local copies of TieredCache, on a real
redis-server (the README's "What does not invalidate local copies"): only a
write made through a cache sends a message on the channel. A write by another
program, FLUSHDB, an eviction under maxmemory and a key expiring in Redis
before the local copy's bound leave each process's copy, served until
local_ttl; then the next read goes to Redis."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis_servers import RedisServer
from support import SIGNING_KEY, wait_for

from moka_py.redis import TieredCache

# The tests of a module share its server and use fixed keys.
pytestmark = pytest.mark.thread_unsafe

NS = "users"
NAME = b"users:v:sk"  # the Redis key of "k"
# Long enough that a noisy machine does not drop a copy before the test reads
# it, short enough to wait for.
LOCAL_TTL = 4.0


def open_cache(client: redis.Redis) -> TieredCache[Any, Any]:
    cache: TieredCache[Any, Any] = TieredCache(
        client, namespace=NS, signing_key=SIGNING_KEY, local_ttl=LOCAL_TTL, stats=True
    )
    assert cache.wait_ready(5)
    return cache


@pytest.fixture
def client(redis_db: RedisServer) -> redis.Redis:
    return redis_db.client()


@pytest.fixture
def cache(client: redis.Redis) -> Iterator[TieredCache[Any, Any]]:
    with open_cache(client) as c:
        yield c


def served_until_local_ttl(cache: TieredCache[Any, Any], held: Any, after: Any) -> None:
    """The local copy (``held``) is served now, as a local hit, with nothing
    of it left in Redis that says otherwise; once ``local_ttl`` has passed,
    reads go to Redis and return ``after``."""
    stats = cache.stats()
    assert cache.get("k") == held
    assert cache.stats().local_hits == stats.local_hits + 1
    assert cache.stats().invalidations == stats.invalidations == 0
    wait_for(lambda: cache.get("k") == after, timeout=LOCAL_TTL + 10)


def test_flushdb_leaves_local_copies(cache: TieredCache[Any, Any], client: redis.Redis) -> None:
    cache.set("k", "v")
    client.flushdb()
    assert client.dbsize() == 0
    served_until_local_ttl(cache, "v", None)


def test_a_write_by_another_program_leaves_local_copies(
    cache: TieredCache[Any, Any], client: redis.Redis
) -> None:
    # Another program (a script, a restore of a backup) puts back a value the
    # cache wrote earlier: it verifies, but no message tells the processes.
    cache.set("k", "old")
    old = client.get(NAME)
    cache.set("k", "new")
    client.set(NAME, old)  # type: ignore[arg-type]
    # A process without a copy reads it at once.
    with open_cache(client) as fresh:
        assert fresh.get("k") == "old"
    served_until_local_ttl(cache, "new", "old")


def test_a_delete_by_another_program_leaves_local_copies(
    cache: TieredCache[Any, Any], client: redis.Redis
) -> None:
    cache.set("k", "v")
    assert client.delete(NAME) == 1
    served_until_local_ttl(cache, "v", None)


def test_expiry_in_redis_before_the_local_bound_leaves_local_copies(
    cache: TieredCache[Any, Any], client: redis.Redis
) -> None:
    # The cache bounds a copy by the entry's own deadline; another program
    # shortening the key's life in Redis is not seen.
    cache.set("k", "v", ttl=600)
    assert client.pexpire(NAME, 1)
    wait_for(lambda: not client.exists(NAME), timeout=5)
    served_until_local_ttl(cache, "v", None)


def test_maxmemory_eviction_leaves_local_copies(own_redis_server: RedisServer) -> None:
    client = own_redis_server.client()
    with open_cache(client) as cache:
        cache.set("k", "v")
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", used + 1024 * 1024)
        client.config_set("maxmemory-policy", "allkeys-random")
        filler = b"x" * 50_000
        for i in range(10_000):
            if not client.exists(NAME):
                break
            client.set(f"filler:{i}", filler)
        assert not client.exists(NAME), "the key was never evicted"
        assert int(client.info("stats")["evicted_keys"]) > 0
        served_until_local_ttl(cache, "v", None)
