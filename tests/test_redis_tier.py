"""TieredCache against a real redis-server, in one process.

Two caches of one namespace in one process have their own local tiers, feeds
and origins: to each other they are what two processes are (the tests with
real child processes are in test_redis_processes.py)."""

from __future__ import annotations

import json
import pickle
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis_fixtures import tiered_pair
from redis_servers import RedisServer
from support import SIGNING_KEY, wait_for

from moka_py import Moka
from moka_py.redis import TieredCache, TierStats

# The tests of a module share its server and use fixed keys.
pytestmark = pytest.mark.thread_unsafe

NS = "users"


@pytest.fixture
def client(redis_db: RedisServer) -> redis.Redis:
    # The user's client: no socket timeout at all, as redis-py allows.
    return redis_db.client(socket_timeout=None)


@pytest.fixture
def pair(client: redis.Redis) -> Iterator[tuple[TieredCache[Any, Any], TieredCache[Any, Any]]]:
    yield from tiered_pair(client, NS)


def test_set_in_one_is_read_in_the_other(pair: tuple[TieredCache[Any, Any], ...]) -> None:
    a, b = pair
    a.set("k", [1, 2])
    # (Once a's invalidation has arrived, b's first read keeps its copy: one
    # arriving during the read's round trip would make b refuse the copy.)
    wait_for(lambda: b.stats().invalidations == 1, timeout=5)
    assert b.get("k") == [1, 2]
    # Deserialized once: the local tier holds the object itself.
    assert b.get("k") is b.get("k")
    stats = b.stats()
    assert stats.remote_hits == 1 and stats.local_hits == 2
    assert b.get("absent") is None and b.get("absent", "d") == "d"


def test_writes_invalidate_the_other_tier(pair: tuple[TieredCache[Any, Any], ...]) -> None:
    a, b = pair
    a.set("k", 1)
    assert b.get("k") == 1
    a.set("k", 2)
    wait_for(lambda: b.get("k") == 2, timeout=5)
    assert a.remove("k") == 2
    wait_for(lambda: b.get("k") is None, timeout=5)
    assert a.remove("k", "gone") == "gone"
    a.set_many({"x": 1, ("t", 2): 2})
    assert b.get_many(["x", ("t", 2.0), "nope"]) == {"x": 1, ("t", 2.0): 2}
    a.set_many([("x", 10), (("t", 2), 20)])
    wait_for(lambda: b.get_many(["x", ("t", 2)]) == {"x": 10, ("t", 2): 20}, timeout=5)
    assert b.stats().invalidations >= 4


def test_equal_keys_are_one_entry(pair: tuple[TieredCache[Any, Any], ...]) -> None:
    a, b = pair
    a.set(1, "one")
    assert b.get(1.0) == "one" and b.get(True) == "one" and b.get("1") is None
    a.set(("a", 2), "t")
    assert b.get(("a", 2.0)) == "t"


def test_other_key_types_raise(pair: tuple[TieredCache[Any, Any], ...]) -> None:
    a, _ = pair
    for call in (lambda: a.get([1]), lambda: a.set({1}, 1), lambda: a.remove(object())):
        with pytest.raises(TypeError, match=r"key of moka_py\.redis"):
            call()


def test_namespaces_are_apart_and_prefix_every_key(client: redis.Redis) -> None:
    with (
        TieredCache(client, namespace="users", signing_key=SIGNING_KEY) as u,
        TieredCache(client, namespace="orders", signing_key=SIGNING_KEY) as o,
    ):
        u.set("k", "u")
        o.set("k", "o")
        calls: list[int] = []
        u.get_with("g", lambda: calls.append(1) or "loaded")
        assert u.get("k") == "u" and o.get("k") == "o"
        names = client.keys("*")
        assert names and all(n.startswith((b"users:", b"orders:")) for n in names)
        u.clear()
        assert o.get("k") == "o" and u.get("k") is None
        assert all(n.startswith(b"orders:") for n in client.keys("*"))


def test_clear_reaches_every_tier(
    pair: tuple[TieredCache[Any, Any], ...], client: redis.Redis
) -> None:
    a, b = pair
    a.set_many({i: i for i in range(50)})
    assert len(b.get_many(range(50))) == 50
    b.clear()
    assert client.keys("users:*") == []
    wait_for(lambda: a.get(3) is None, timeout=5)
    assert a.get_many(range(50)) == {}


def test_get_with_loads_once(pair: tuple[TieredCache[Any, Any], ...]) -> None:
    a, b = pair
    calls: list[int] = []

    def load() -> str:
        calls.append(1)
        time.sleep(0.2)
        return "v"

    results: list[str] = []
    threads = [
        threading.Thread(target=lambda c=c: results.append(c.get_with("key", load)))
        for c in (a, b) * 4
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == ["v"] * 8 and calls == [1]
    assert a.get("key") == b.get("key") == "v"


def test_a_failing_loader_caches_nothing_and_raises(
    pair: tuple[TieredCache[Any, Any], ...],
) -> None:
    a, _ = pair

    def boom() -> str:
        raise KeyError("no")

    with pytest.raises(KeyError):
        a.get_with("k", boom)
    assert a.get("k") is None
    assert a.get_with("k", lambda: "ok") == "ok"
    # One loader call that raised, one that returned: one figure each (and
    # a get_with that loads is no miss: only the get is).
    s = a.stats()
    assert (s.loads, s.load_failures, s.misses) == (1, 1, 1)


def test_reset_stats_moves_a_baseline_and_the_cumulative_figures_only_grow(
    pair: tuple[TieredCache[Any, Any], ...],
) -> None:
    a, _ = pair
    a.set("k", 1)
    assert a.get("k") == 1 and a.get("absent") is None
    assert a.get_with("loaded", lambda: 2) == 2
    before = a.stats(cumulative=True)
    assert before == a.stats()
    assert (before.local_hits, before.misses, before.loads) == (1, 1, 1)
    a.reset_stats()
    assert a.stats() == TierStats()
    assert a.stats(cumulative=True) == before
    assert a.get("k") == 1 and a.get("absent") is None
    after, total = a.stats(), a.stats(cumulative=True)
    assert (after.local_hits, after.misses, after.loads) == (1, 1, 0)
    assert (total.local_hits, total.misses, total.loads) == (2, 2, 1)


def test_values_that_cannot_be_pickled_store_nothing(
    pair: tuple[TieredCache[Any, Any], ...], client: redis.Redis
) -> None:
    a, _ = pair
    a.set("k", 1)
    with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
        a.set("k", lambda: None)
    assert a.get("k") == 1
    with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
        a.set_many({"k": 2, "other": threading.Lock()})
    assert a.get("k") == 1 and a.get("other") is None and client.get("users:v:sother") is None


def test_bytes_written_by_another_program_are_a_miss(
    pair: tuple[TieredCache[Any, Any], ...], client: redis.Redis
) -> None:
    a, _ = pair
    client.set("users:v:sk", b"written by another program")
    assert a.get("k", "default") == "default"
    assert a.get_with("k", lambda: "fresh") == "fresh"
    assert a.get("k") == "fresh"
    # get, then get_with before and after taking the claim.
    assert a.stats().rejected == 3


def test_custom_serializer(client: redis.Redis) -> None:
    class Json:
        def dumps(self, obj: object) -> bytes:
            return json.dumps(obj).encode()

        def loads(self, data: bytes) -> object:
            return json.loads(data)

    with TieredCache(client, namespace="j", serializer=Json()) as a:
        a.set("k", {"a": [1, 2]})
        assert json.loads(client.get("j:v:sk")[9:]) == {"a": [1, 2]}  # type: ignore[index]
    with TieredCache(client, namespace="j", serializer=Json()) as b:
        assert b.get("k") == {"a": [1, 2]}


def test_ttl_applies_in_redis_and_locally(
    pair: tuple[TieredCache[Any, Any], ...], client: redis.Redis
) -> None:
    a, b = pair
    a.set("short", 1, ttl=0.3)
    assert b.get("short") == 1
    assert 0 < client.pttl("users:v:sshort") <= 300
    wait_for(lambda: a.get("short") is None and b.get("short") is None, timeout=5)


def test_local_ttl_bounds_the_local_copy(client: redis.Redis) -> None:
    with TieredCache(client, namespace=NS, signing_key=SIGNING_KEY, local_ttl=0.2, stats=True) as c:
        c.set("k", 1)
        assert c.get("k") == 1 and c.stats().local_hits == 1
        time.sleep(0.3)
        assert c.get("k") == 1
        # Gone from the local tier, read again from Redis.
        assert c.stats().remote_hits == 1


def test_decorator(pair: tuple[TieredCache[Any, Any], ...]) -> None:
    a, b = pair
    calls: list[tuple[Any, ...]] = []

    def make(cache: TieredCache[Any, Any]) -> Any:
        @cache.cached(ttl=10, name="area")
        def area(w: int, h: int = 1) -> int:
            calls.append((w, h))
            return w * h

        return area

    fa, fb = make(a), make(b)
    assert fa(2, h=3) == 6 and fb(2, h=3) == 6 and fa(2, 3) == 6
    # One call across both caches; a positional call is another key, as in
    # functools.lru_cache.
    assert calls == [(2, 3), (2, 3)]
    fa.cache_invalidate(2, h=3)
    # Once the invalidation reaches b, its next call computes again, once.
    wait_for(lambda: fb(2, h=3) == 6 and len(calls) == 3, timeout=5)
    assert fb(2, h=3) == 6 and len(calls) == 3

    with pytest.raises(TypeError, match="AsyncTieredCache"):

        @a.cached()
        async def coro() -> None: ...


def test_stats_off_raises(client: redis.Redis) -> None:
    with TieredCache(client, namespace=NS, signing_key=SIGNING_KEY) as c:
        with pytest.raises(ValueError, match="stats=True"):
            c.stats()
    with TieredCache(client, namespace=NS, signing_key=SIGNING_KEY, stats=True) as c:
        assert isinstance(c.stats(), TierStats) and c.stats().requests == 0


def test_local_is_a_moka(pair: tuple[TieredCache[Any, Any], ...]) -> None:
    a, _ = pair
    a.set("k", 1)
    assert isinstance(a.local, Moka) and a.local.get("k") == 1


def test_bad_arguments(client: redis.Redis) -> None:
    with pytest.raises(TypeError, match="client"):
        TieredCache(object(), namespace=NS, signing_key=SIGNING_KEY)
    with pytest.raises(TypeError, match="AsyncTieredCache"):
        TieredCache(redis.asyncio.Redis(), namespace=NS, signing_key=SIGNING_KEY)
    with pytest.raises(TypeError, match="namespace"):
        TieredCache(client, namespace=None, signing_key=SIGNING_KEY)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="namespace"):
        TieredCache(client, namespace="", signing_key=SIGNING_KEY)
    with pytest.raises(ValueError, match="capacity"):
        TieredCache(client, namespace=NS, signing_key=SIGNING_KEY, capacity=-1)
    with pytest.raises(ValueError, match="ttl"):
        TieredCache(client, namespace=NS, signing_key=SIGNING_KEY, ttl=-5)
    with pytest.raises(ValueError, match="timeout"):
        TieredCache(client, namespace=NS, signing_key=SIGNING_KEY, timeout=0)
    with TieredCache(client, namespace=NS, signing_key=SIGNING_KEY) as c:
        with pytest.raises(ValueError, match="ttl"):
            c.set("k", 1, ttl=0)


def test_close_stops_everything_and_leaves_the_client_open(redis_db: RedisServer) -> None:
    client = redis_db.client(client_name="app-1")
    before = {t.ident for t in threading.enumerate()}
    c: TieredCache[Any, Any] = TieredCache(client, namespace=NS, signing_key=SIGNING_KEY)
    assert c.wait_ready(5)
    c.set("k", 1)
    c.get_with("g", lambda: 1)
    # Every connection of the cache's own carries the client's name.
    names = [x["name"] for x in redis_db.admin.client_list()]
    assert names.count("app-1") >= 2
    c.close()

    def started_since() -> list[str]:
        # The cache's threads (feed, claims) are named "moka_py.redis ...";
        # a thread of anything else in this worker is not this test's concern.
        return [
            t.name
            for t in threading.enumerate()
            if t.ident not in before and t.name.startswith("moka_py.redis")
        ]

    deadline = time.monotonic() + 5
    while started_since() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert started_since() == []
    wait_for(
        lambda: [x["name"] for x in redis_db.admin.client_list()].count("app-1") == 0,
        timeout=5,
    )
    assert client.ping()
    with pytest.raises(RuntimeError, match="closed"):
        c.set("k", 2)
    with pytest.raises(RuntimeError, match="closed"):
        c.get("k")


def test_acl_confined_user(own_redis_server: RedisServer) -> None:
    own_redis_server.acl_setuser("app", "pw", keys=("users*",), channels=("users*",))
    client = own_redis_server.client(username="app", password="pw", client_name="app")
    with (
        TieredCache(client, namespace="users", signing_key=SIGNING_KEY) as a,
        TieredCache(client, namespace="users", signing_key=SIGNING_KEY) as b,
    ):
        assert a.wait_ready(5) and b.wait_ready(5)
        a.set("k", 1)
        assert b.get("k") == 1
        assert a.get_with("g", lambda: 2) == 2
        a.clear()
        wait_for(lambda: b.get("k") is None, timeout=5)
        users = {x["user"] for x in own_redis_server.admin.client_list() if x["name"] == "app"}
        assert users == {"app"}
    with TieredCache(client, namespace="orders", signing_key=SIGNING_KEY) as o:
        with pytest.raises(redis.exceptions.NoPermissionError):
            o.set("k", 1)
        assert o.local.get("k") is None


def test_one_write_one_message_and_a_fill_none(
    pair: tuple[TieredCache[Any, Any], ...], client: redis.Redis
) -> None:
    a, b = pair
    listener = client.pubsub()
    listener.subscribe("users:inv")
    assert listener.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]

    def messages() -> int:
        count = 0
        while listener.get_message(timeout=0.3) is not None:
            count += 1
        return count

    a.set_many({i: i for i in range(20)})
    assert messages() == 1  # twenty keys, one message
    # Reads that fill the local tier from Redis tell nobody.
    assert b.get_many(range(20)) == {i: i for i in range(20)}
    assert b.get(3) == 3
    assert messages() == 0
    a.set(3, "x")
    a.remove(4)
    assert messages() == 2
    listener.close()
