"""Tags on the tiered caches against a real redis-server (and the 3-master
cluster): ``set``/``get_with``/``@cache.cached`` with ``tags=``, and
``invalidate_tags`` reaching Redis and every local tier, loads in flight
included; and the attacks on the tags (a raw client as the attacker)."""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis_workers
from redis_fixtures import tiered_pair
from redis_servers import RedisCluster3, RedisServer
from support import SIGNING_KEY, wait_for

from moka_py.redis import JSON, AsyncTieredCache, TieredCache

pytestmark = pytest.mark.thread_unsafe

NS = "tagged"
SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture
def client(redis_db: RedisServer) -> redis.Redis:
    return redis_db.client()


@pytest.fixture
def pair(client: redis.Redis) -> Iterator[tuple[TieredCache[Any, Any], TieredCache[Any, Any]]]:
    yield from tiered_pair(client, NS)


def fresh(client: Any) -> TieredCache[Any, Any]:
    """A cache with an empty local tier: what it reads comes from Redis."""
    cache: TieredCache[Any, Any] = TieredCache(
        client, namespace=NS, signing_key=SIGNING_KEY, stats=True
    )
    assert cache.wait_ready(5)
    return cache


def test_a_tag_invalidated_anywhere_is_gone_everywhere(
    pair: tuple[TieredCache[Any, Any], ...], client: redis.Redis
) -> None:
    a, b = pair
    a.set("k1", 1, tags=["user:1"])
    a.set("k2", 2, tags=["user:1", "org:7"])
    a.set_many({"k3": 3, "k4": 4}, tags=["org:7"])
    a.set("k5", 5)
    wait_for(lambda: b.stats().invalidations >= 4, timeout=5)
    assert b.get_many(["k1", "k2", "k3", "k4", "k5"]) == {
        "k1": 1,
        "k2": 2,
        "k3": 3,
        "k4": 4,
        "k5": 5,
    }
    assert "k1" in b.local and "k2" in b.local
    a.invalidate_tags("user:1")
    # Redis holds no value of the tag from the moment the call returns.
    c = fresh(client)
    try:
        assert c.get("k1") is None and c.get("k2") is None
        assert c.get_many(["k1", "k2", "k3"]) == {"k3": 3}
        assert c.get("k5") == 5
    finally:
        c.close()
    assert a.get("k1") is None and a.get("k2") is None and a.get("k3") == 3
    wait_for(lambda: "k1" not in b.local and "k2" not in b.local, timeout=5)
    assert b.get("k1") is None and b.get("k2") is None
    assert b.get("k3") == 3 and b.get("k4") == 4 and b.get("k5") == 5
    # A value written after the invalidation is live.
    a.set("k1", 10, tags=["user:1"])
    wait_for(lambda: b.get("k1") == 10, timeout=5)
    a.invalidate_tags("org:7", "nobody's")
    wait_for(lambda: b.get("k3") is None and b.get("k4") is None, timeout=5)
    assert b.get("k1") == 10 and b.get("k5") == 5
    assert a.stats().rejected == 0 and b.stats().rejected == 0


def test_one_message_per_invalidation_and_no_scan(
    pair: tuple[TieredCache[Any, Any], ...], client: redis.Redis
) -> None:
    a, b = pair
    a.set_many({i: i for i in range(2000)}, tags=["bulk"])
    listener = client.pubsub()
    listener.subscribe(f"{NS}:inv")
    assert listener.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
    scans = client.info("commandstats").get("cmdstat_scan", {}).get("calls", 0)
    a.invalidate_tags("bulk")
    count = 0
    while listener.get_message(timeout=0.3) is not None:
        count += 1
    listener.close()
    assert count == 1
    assert client.info("commandstats").get("cmdstat_scan", {}).get("calls", 0) == scans
    assert b.get_many(range(2000)) == {}


def test_get_with_and_the_decorator_take_tags(
    pair: tuple[TieredCache[Any, Any], ...], client: redis.Redis
) -> None:
    a, b = pair
    calls: list[int] = []

    @a.cached(name="profile", tags=lambda user: [f"user:{user}"])
    def profile(user: int) -> dict[str, int]:
        calls.append(user)
        return {"user": user, "n": len(calls)}

    @b.cached(name="profile", tags=lambda user: [f"user:{user}"])
    def profile_b(user: int) -> dict[str, int]:
        calls.append(user)
        return {"user": user, "n": len(calls)}

    assert profile(1) == {"user": 1, "n": 1}
    assert profile(2) == {"user": 2, "n": 2}
    assert profile_b(1) == {"user": 1, "n": 1}  # from Redis
    assert b.get_with("plain", lambda: "v", tags=["user:1"]) == "v"
    b.invalidate_tags("user:1")
    assert profile_b(1) == {"user": 1, "n": 3}
    wait_for(lambda: profile(1) == {"user": 1, "n": 3}, timeout=5)
    assert profile(2) == {"user": 2, "n": 2}
    assert a.get("plain") is None
    assert calls == [1, 2, 1]
    with pytest.raises(TypeError, match="iterable of str"):
        a.cached(tags="user:1")


def test_a_load_in_flight_stores_a_value_already_dated(
    pair: tuple[TieredCache[Any, Any], ...], client: redis.Redis
) -> None:
    """invalidate_tags while another cache loads an entry with that tag: the
    load returns its value to its callers, but no reader anywhere takes it
    afterwards (Redis's token moved before the load stored it)."""
    a, b = pair
    started, release = threading.Event(), threading.Event()
    out: list[Any] = []

    def loader() -> str:
        started.set()
        assert release.wait(10)
        return "old"

    t = threading.Thread(target=lambda: out.append(b.get_with("k", loader, tags=["t"])))
    t.start()
    assert started.wait(10)
    before = b.stats().invalidations
    a.invalidate_tags("t")
    wait_for(lambda: b.stats().invalidations > before, timeout=5)
    release.set()
    t.join(10)
    assert out == ["old"]
    assert b.get("k") is None and a.get("k") is None
    c = fresh(client)
    try:
        assert c.get("k") is None
    finally:
        c.close()
    # The next load stores a live value over the dated one.
    assert a.get_with("k", lambda: "new", tags=["t"]) == "new"
    wait_for(lambda: b.get("k") == "new", timeout=5)


def test_the_atomic_writes_see_tags(
    pair: tuple[TieredCache[Any, Any], ...], client: redis.Redis
) -> None:
    a, b = pair
    a.set("k", 1, tags=["t"])
    assert a.update("k", lambda v: v + 1) == 2
    assert b.get("k") == 2
    assert a.touch("k", 60)
    assert not a.add("k", 3)
    a.invalidate_tags("t")
    # A dated value is absent to every write that reads first.
    with pytest.raises(KeyError):
        a.update("k", lambda v: v + 1)
    assert not a.touch("k")
    assert a.remove("k", "gone") == "gone"
    a.set("k", 1, tags=["t"])
    a.invalidate_tags("t")
    assert a.add("k", 5, tags=["t"])
    wait_for(lambda: b.get("k") == 5, timeout=5)


def test_bad_tags_are_refused_before_anything_is_written(
    pair: tuple[TieredCache[Any, Any], ...], client: redis.Redis
) -> None:
    a, _ = pair
    with pytest.raises(TypeError, match="a list of one tag"):
        a.set("k", 1, tags="user:1")
    with pytest.raises(TypeError, match="each tag must be a str"):
        a.set("k", 1, tags=[1])
    with pytest.raises(ValueError, match="at most 32 tags"):
        a.set("k", 1, tags=[str(i) for i in range(33)])
    with pytest.raises(ValueError, match="at most 255 bytes"):
        a.set("k", 1, tags=["x" * 256])
    with pytest.raises(TypeError):
        a.invalidate_tags(1)  # type: ignore[arg-type]
    assert a.get("k") is None and not client.keys(f"{NS}:*")
    a.set("k", 1, tags=("t", "t"))  # repeated: one tag
    a.invalidate_tags(*[str(i) for i in range(100)])  # any number at once


def test_tags_without_a_signing_key(client: redis.Redis) -> None:
    """An unsigned cache (JSON) writes the unsigned tagged payload (version
    5) and invalidates alike; what it refuses is the signed one."""
    a: TieredCache[Any, Any] = TieredCache(client, namespace="plain", serializer=JSON)
    b: TieredCache[Any, Any] = TieredCache(client, namespace="plain", serializer=JSON)
    try:
        assert a.wait_ready(5) and b.wait_ready(5)
        a.set("k", [1], tags=["t"])
        assert client.get(b"plain:v:sk")[0] == 5  # type: ignore[index]
        assert b.get("k") == [1]
        a.invalidate_tags("t")
        wait_for(lambda: b.get("k") is None, timeout=5)
        assert a.get_with("k", lambda: [2], tags=["t"]) == [2]
        wait_for(lambda: b.get("k") == [2], timeout=5)
    finally:
        a.close()
        b.close()


# ------------------------------------------------------------ attacks


def test_forged_tag_messages_and_tampered_tags_are_refused(
    pair: tuple[TieredCache[Any, Any], ...], client: redis.Redis
) -> None:
    """A raw client as the attacker: an unsigned "t" message, a payload whose
    tags were stripped, a header over the bounds and a tag token replaced by
    junk are refused (counted, never raised), and the feed keeps running."""
    a, b = pair
    a.set("k", "v", tags=["t"])
    # (Once a's invalidation has arrived, b's read keeps its copy.)
    wait_for(lambda: b.stats().invalidations == 1, timeout=5)
    assert b.get("k") == "v"
    name = f"{NS}:v:".encode() + b"sk"
    payload = client.get(name)
    assert payload is not None and payload[0] == 4
    rejected = b.stats().rejected
    client.publish(f"{NS}:inv", b"\x03t" + bytes(8) + b"\x00\x00\x00\x01t")
    wait_for(lambda: b.stats().rejected > rejected, timeout=5)
    assert "k" in b.local  # the forged invalidation dropped nothing
    # The tags stripped (version 2, the block cut out): the MAC does not hold.
    block = 1 + 1 + 1 + 16
    client.set(name, b"\x02" + payload[1:13] + payload[13 + block :])
    c = fresh(client)
    try:
        assert c.get("k") is None and c.stats().rejected == 1
        client.set(name, b"\x04" + payload[1:13] + b"\xff" + bytes(100_000))
        assert c.get("k") is None and c.stats().rejected == 2
        # Well-formed tags under a forged MAC: refused before any tag is read.
        block32 = bytes([32]) + (bytes([255]) + b"x" * 255 + b"t" * 16) * 32
        mgets = client.info("commandstats").get("cmdstat_mget", {}).get("calls", 0)
        client.set(name, b"\x04" + payload[1:13] + block32 + bytes(32) + b"data")
        assert c.get("k") is None and c.stats().rejected == 3
        assert client.info("commandstats").get("cmdstat_mget", {}).get("calls", 0) == mgets
        client.set(name, payload)
        assert c.get("k") == "v"
        c.local.clear()
        # The tag's token replaced by anything else: the value is dated.
        client.set(f"{NS}:t:{{{NS}:t}}:t".encode(), b"junk")
        assert c.get("k") is None
        # A new write stamps the tag again.
        a.set("k", "w", tags=["t"])
        assert c.get("k") == "w"
    finally:
        c.close()
    assert b.feed_up
    a.invalidate_tags("t")
    wait_for(lambda: b.get("k") is None, timeout=5)


# ------------------------------------------------------------ cluster


def test_tags_on_a_cluster(redis_cluster: RedisCluster3) -> None:
    client = redis_cluster.client()
    a: TieredCache[Any, Any] = TieredCache(client, namespace="ctags", signing_key=SIGNING_KEY)
    b: TieredCache[Any, Any] = TieredCache(client, namespace="ctags", signing_key=SIGNING_KEY)
    try:
        assert a.wait_ready(5) and b.wait_ready(5)
        a.set_many({f"k{i}": i for i in range(50)}, tags=["all"])
        a.set("odd", 1, tags=["all", "odd"])
        assert len(b.get_many([f"k{i}" for i in range(50)])) == 50
        assert b.get("odd") == 1
        b.invalidate_tags("odd")
        wait_for(lambda: a.get("odd") is None, timeout=5)
        assert a.get("k3") == 3
        a.invalidate_tags("all")
        wait_for(lambda: b.get_many([f"k{i}" for i in range(50)]) == {}, timeout=5)
        assert b.get_with("odd", lambda: 2, tags=["odd"]) == 2
        wait_for(lambda: a.get("odd") == 2, timeout=5)
    finally:
        a.close()
        b.close()
        client.close()


# ------------------------------------------------------------ asyncio


def test_async_tags_and_a_load_in_flight(redis_db: RedisServer) -> None:
    """AsyncTieredCache: the same tags, the same Redis tokens as the sync
    cache (one fleet), and a load in flight when its tag is invalidated."""

    async def main() -> None:
        client = redis_db.async_client()
        sync = fresh(redis_db.client())
        async with AsyncTieredCache(
            client, namespace=NS, signing_key=SIGNING_KEY, stats=True
        ) as cache:
            assert await cache.wait_ready(5)
            await cache.set("k1", 1, tags=["user:1"])
            await cache.set_many({"k2": 2, "k3": 3}, tags=["org"])
            assert sync.get("k1") == 1 and sync.get("k2") == 2
            sync.invalidate_tags("user:1")
            for _ in range(500):
                if await cache.get("k1") is None:
                    break
                await asyncio.sleep(0.01)
            assert await cache.get("k1") is None and await cache.get("k2") == 2
            await cache.invalidate_tags("org")
            wait_for(lambda: sync.get("k2") is None and sync.get("k3") is None, timeout=5)
            assert await cache.get_many(["k2", "k3"]) == {}

            started, release = asyncio.Event(), asyncio.Event()

            async def loader() -> str:
                started.set()
                await asyncio.wait_for(release.wait(), 10)
                return "old"

            task = asyncio.ensure_future(cache.get_with("k", loader, tags=["t"]))
            await asyncio.wait_for(started.wait(), 10)
            before = cache.stats().invalidations
            sync.invalidate_tags("t")
            for _ in range(500):
                if cache.stats().invalidations > before:
                    break
                await asyncio.sleep(0.01)
            release.set()
            assert await asyncio.wait_for(task, 10) == "old"
            assert await cache.get("k") is None and sync.get("k") is None

            calls: list[int] = []

            @cache.cached(name="f", tags=lambda x: [f"x:{x}"])
            async def f(x: int) -> int:
                calls.append(x)
                return x * 10

            assert await f(1) == 10 and await f(1) == 10 and await f(2) == 20
            await cache.invalidate_tags("x:1")
            assert await f(1) == 10 and await f(2) == 20
            assert calls == [1, 2, 1]
            assert cache.stats().rejected == 0
        sync.close()
        await client.aclose()

    asyncio.run(asyncio.wait_for(main(), 60))


# ------------------------------------------------------------ real processes


def _tag_race(nodes: list[tuple[str, int]], client: Any) -> None:
    """Reader processes load keys with tags while this process raises a
    tag's generation and invalidates the tag, hundreds of times: once it is
    done, every reader serves every key at its tag's last generation (a
    load in flight during an invalidation stored a value no one takes)."""
    keys, tags, rounds, readers = 12, 3, 200, 2
    ready = [SPAWN.Event() for _ in range(readers)]
    stop, settle = SPAWN.Event(), SPAWN.Event()
    out = SPAWN.Queue()
    procs = [
        SPAWN.Process(
            target=redis_workers.tag_reader,
            args=(nodes, keys, tags, ready[i], stop, settle, out),
            daemon=True,
        )
        for i in range(readers)
    ]
    for p in procs:
        p.start()
    try:
        for r in ready:
            assert r.wait(90)
        rng = random.Random(3)
        with TieredCache(client, namespace="tagrace", signing_key=SIGNING_KEY) as writer:
            assert writer.wait_ready(5)
            for _ in range(rounds):
                tag = rng.randrange(tags)
                client.incr(f"gen:{tag}")
                writer.invalidate_tags(f"t{tag}")
                time.sleep(rng.random() * 0.004)
        stop.set()
        settle.set()
        reports = [out.get(timeout=90) for _ in range(readers)]
    finally:
        stop.set()
        settle.set()
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    final = {k: int(client.get(f"gen:{k % tags}")) for k in range(keys)}
    for reads, seen in reports:
        assert reads > 50  # the readers loaded while the tags were invalidated
        assert seen == final


def test_a_tag_race_across_processes(redis_db: RedisServer) -> None:
    _tag_race([(redis_db.host, redis_db.port)], redis_db.client())


def test_a_tag_race_across_processes_on_a_cluster(redis_cluster: RedisCluster3) -> None:
    _tag_race(redis_cluster.nodes, redis_cluster.client())
