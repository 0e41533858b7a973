"""Functions that run in real child processes for the moka_py.redis tests
(started with multiprocessing's "spawn" context, or "fork" where the test is
about a fork). Each builds its own client and cache from plain arguments,
reports through a multiprocessing queue, and ends by itself."""

from __future__ import annotations

import os
import random
import threading
import time
from typing import Any

import redis
import redis.cluster
from support import SIGNING_KEY

from moka_py.redis import TieredCache

NS = "users"


def _cache(port: int, **options: Any) -> TieredCache[Any, Any]:
    client = redis.Redis(port=port, socket_timeout=None)
    cache: TieredCache[Any, Any] = TieredCache(
        client, namespace=NS, signing_key=SIGNING_KEY, **options
    )
    if not cache.wait_ready(10):
        raise RuntimeError("the feed did not come up")
    return cache


def get_one(port: int, key: Any, out: Any) -> None:
    with _cache(port) as cache:
        out.put(cache.get(key))


def set_one(port: int, key: Any, value: Any) -> None:
    with _cache(port) as cache:
        cache.set(key, value)


def reader(port: int, keys: int, ready: Any, stop: Any, settle: Any, out: Any) -> None:
    """Reads random keys through the local tier until `stop`, then (once the
    writer is done and `settle` is set) reports what it sees of every key."""
    with _cache(port) as cache:
        ready.set()
        rng = random.Random(os.getpid())
        reads = 0
        while not stop.is_set():
            cache.get(rng.randrange(keys))
            reads += 1
        settle.wait(30)
        # The invalidations of the last writes are a few milliseconds away;
        # a copy left stale by a race would stay stale for the whole ttl.
        time.sleep(0.5)
        seen = {k: cache.get(k) for k in range(keys)}
        out.put((reads, seen))


def writer(port: int, keys: int, writes: int, go: Any, out: Any) -> None:
    """Writes `writes` versions of random keys (with set, set_many and remove),
    then reports the last value written to each key."""
    with _cache(port) as cache:
        go.wait(30)
        rng = random.Random(7)
        last: dict[int, Any] = {}
        for version in range(writes):
            op = rng.random()
            k = rng.randrange(keys)
            if op < 0.7:
                cache.set(k, ("v", version))
                last[k] = ("v", version)
            elif op < 0.9:
                k2 = (k + 1) % keys
                cache.set_many({k: ("m", version), k2: ("m", version)})
                last[k] = last[k2] = ("m", version)
            else:
                cache.remove(k)
                last[k] = None
        out.put(last)


def load(
    port: int,
    key: str,
    threads: int,
    sleep: float,
    counter: str,
    out: Any,
    outcome: str = "value",
    lock_timeout: float = 30.0,
    start: Any = None,
) -> None:
    """`threads` threads of this process call get_with(key) at once; the
    loader counts itself in Redis (INCR `counter`), sleeps, then returns a
    value naming this process, raises, or ends the process (`outcome`)."""
    plain = redis.Redis(port=port)
    with _cache(port, lock_timeout=lock_timeout) as cache:

        def loader() -> str:
            plain.incr(counter)
            time.sleep(sleep)
            if outcome == "raise":
                raise LookupError(f"loader of {os.getpid()} failed")
            if outcome == "exit":
                os._exit(3)
            return f"value of {os.getpid()}"

        results: list[Any] = []
        lock = threading.Lock()

        def call() -> None:
            try:
                r: Any = cache.get_with(key, loader)
            except LookupError as e:
                r = ("raised", str(e))
            with lock:
                results.append(r)

        if start is not None:
            start.wait(30)
        pool = [threading.Thread(target=call) for _ in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join(60)
        out.put((os.getpid(), results))


def forked_child(cache: TieredCache[Any, Any], key: Any, seen_from_parent: Any, out: Any) -> None:
    """Runs in a child made by os.fork() from a process whose `cache` was
    created before the fork: the child uses it as it is."""
    try:
        first = cache.get(key)
        # The child's own feed starts on first use; until it is subscribed,
        # reads check Redis, so wait for it before telling the parent to write.
        ready = cache.wait_ready(10)
        cache.set(("child", os.getpid()), "hello")
        # The parent's next write must reach this child's local tier.
        deadline = time.monotonic() + 10
        value = cache.get(key)
        while value == first and time.monotonic() < deadline:
            time.sleep(0.02)
            value = cache.get(key)
        seen_from_parent.put((first, value, ready and cache.feed_up))
        out.put("ok")
    except BaseException as e:  # report, then let the process end
        out.put(repr(e))
        raise


def forked_async_child(cache: Any, out: Any, from_running_loop: bool = False) -> None:
    """Runs in a child made by os.fork() from a process whose AsyncTieredCache
    was used before the fork (in a loop that has ended, or, with
    `from_running_loop`, in the loop that forked): the child uses it in a loop
    of its own."""
    import asyncio

    if from_running_loop:
        # The forking thread's running loop is the parent's; before 3.12 the
        # child still sees it as running.
        asyncio.events._set_running_loop(None)

    async def main() -> tuple[Any, Any]:
        if not await cache.wait_ready(10):
            raise RuntimeError("the child's feed did not come up")
        await cache.set("k", "child")
        cache.local.clear()

        async def load() -> str:
            return "child"

        return await cache.get("k"), await cache.get_with(("loaded", "child"), load)

    try:
        out.put(asyncio.run(asyncio.wait_for(main(), 30)))
    except BaseException as e:  # report, then let the process end
        out.put(repr(e))
        raise


def gated_load(port: int, key: str, gate: str, out: Any) -> None:
    """One get_with(key) whose loader waits (30 s at most) until the Redis key
    `gate` exists, then returns a value naming this process."""
    plain = redis.Redis(port=port)
    with _cache(port) as cache:

        def loader() -> str:
            deadline = time.monotonic() + 30
            while not plain.exists(gate) and time.monotonic() < deadline:
                time.sleep(0.02)
            return f"value of {os.getpid()}"

        out.put(cache.get_with(key, loader))


def cleared_function(port: int, go: Any, out: Any) -> None:
    """Reports what a decorated function returns (the parent's result), then,
    once the parent cleared it (`go`), what it returns after (its own)."""
    with _cache(port) as cache:

        @cache.cached(ttl=60, name="whoami")
        def whoami(x: int) -> str:
            return "child"

        out.put(whoami(1))
        go.wait(30)
        deadline = time.monotonic() + 10
        while whoami(1) != "child" and time.monotonic() < deadline:
            time.sleep(0.01)
        out.put(whoami(1))


def _any_client(nodes: list[tuple[str, int]]) -> Any:
    """A client of a single server (one node) or of the cluster (several)."""
    if len(nodes) == 1:
        return redis.Redis(host=nodes[0][0], port=nodes[0][1], socket_timeout=None)
    return redis.cluster.RedisCluster(
        startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in nodes]
    )


def tag_reader(
    nodes: list[tuple[str, int]], keys: int, tags: int, ready: Any, stop: Any, settle: Any, out: Any
) -> None:
    """Loads keys with get_with(tags=[the key's tag]) until `stop`: the loader
    reads the tag's generation (a plain Redis counter, raised by the writer
    before each invalidation) and takes a moment, so that invalidations land
    while loads are in flight. Once `settle` is set, reports the generation
    each key is served with."""
    client = _any_client(nodes)
    cache: TieredCache[Any, Any] = TieredCache(client, namespace="tagrace", signing_key=SIGNING_KEY)
    try:
        if not cache.wait_ready(10):
            raise RuntimeError("the feed did not come up")
        rng = random.Random(os.getpid())

        def load(k: int) -> tuple[int, int]:
            gen = int(client.get(f"gen:{k % tags}") or 0)
            time.sleep(rng.random() * 0.003)
            return k, gen

        def read(k: int) -> tuple[int, int]:
            return cache.get_with(k, lambda: load(k), tags=[f"t{k % tags}"])  # type: ignore[no-any-return]

        ready.set()
        reads = 0
        while not stop.is_set():
            read(rng.randrange(keys))
            reads += 1
        settle.wait(30)
        # (The last invalidations' messages are a few milliseconds away.)
        time.sleep(0.5)
        out.put((reads, {k: read(k)[1] for k in range(keys)}))
    finally:
        cache.close()
        client.close()
