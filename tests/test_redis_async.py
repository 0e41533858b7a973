"""AsyncTieredCache on a real redis-server: the same cache as TieredCache
(one namespace, one cache), and an event loop that is never blocked, not
while another process loads the key, not while Redis hangs."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
import warnings
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio
import redis_workers
from redis_servers import RedisServer
from support import SIGNING_KEY

from moka_py._moka_py import Ready
from moka_py.redis import AsyncTieredCache, TieredCache

T = TypeVar("T")
# The tests of a module share its server and use fixed keys.
pytestmark = pytest.mark.thread_unsafe

NS = "users"


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(coro_fn(), 60))  # type: ignore[arg-type]


async def watch_loop(stop: asyncio.Event) -> float:
    """The longest the loop went without running this task (seconds)."""
    worst, last = 0.0, time.monotonic()
    while not stop.is_set():
        await asyncio.sleep(0.005)
        now = time.monotonic()
        worst, last = max(worst, now - last), now
    return worst


def test_async_and_sync_caches_are_one_cache(redis_db: RedisServer) -> None:
    async def main() -> None:
        client = redis_db.async_client()
        sync = TieredCache(redis_db.client(), namespace=NS, signing_key=SIGNING_KEY)
        async with AsyncTieredCache(
            client, namespace=NS, signing_key=SIGNING_KEY, stats=True
        ) as cache:
            assert await cache.wait_ready(5)
            await cache.set("k", [1])
            assert sync.get("k") == [1]
            assert await cache.get("k") == [1]
            # A local hit is a finished awaitable from Rust (no coroutine made).
            assert isinstance(cache.get("k"), Ready)
            sync.set("k", [2])
            for _ in range(500):
                if await cache.get("k") == [2]:
                    break
                await asyncio.sleep(0.01)
            assert await cache.get("k") == [2]
            assert await cache.get("absent", "d") == "d"
            await cache.set_many({"a": 1, "b": 2})
            assert await cache.get_many(["a", "b", "c"]) == {"a": 1, "b": 2}
            assert await cache.remove("a") == 1 and await cache.remove("a", 0) == 0
            assert sync.get("a") is None
            await cache.clear()
            assert sync.get("b") is None and await cache.get("k") is None
            stats = cache.stats()
            assert stats.local_hits >= 1 and stats.remote_hits >= 1
        sync.close()
        await client.aclose()

    run(main)


def test_async_get_with_coalesces_and_decorates(redis_db: RedisServer) -> None:
    async def main() -> None:
        client = redis_db.async_client()
        async with AsyncTieredCache(client, namespace=NS, signing_key=SIGNING_KEY) as cache:
            calls: list[int] = []

            async def load() -> str:
                calls.append(1)
                await asyncio.sleep(0.1)
                return "v"

            got = await asyncio.gather(*(cache.get_with("g", load) for _ in range(10)))
            assert got == ["v"] * 10 and calls == [1]

            async def boom() -> str:
                raise KeyError("x")

            with pytest.raises(KeyError):
                await cache.get_with("bad", boom)
            assert await cache.get("bad") is None

            @cache.cached(ttl=5, name="double")
            async def double(x: int) -> int:
                calls.append(x)
                return 2 * x

            assert await double(4) == 8 and await double(4) == 8 and calls == [1, 4]
            await double.cache_invalidate(4)  # type: ignore[attr-defined]
            assert await double(4) == 8 and calls == [1, 4, 4]
            with pytest.raises(TypeError, match="TieredCache"):
                cache.cached()(lambda: 1)
        await client.aclose()

    run(main)


@pytest.mark.thread_unsafe
def test_the_loop_runs_while_another_process_loads(redis_db: RedisServer) -> None:
    spawn = multiprocessing.get_context("spawn")
    out = spawn.Queue()
    loader = spawn.Process(
        target=redis_workers.load,
        args=(redis_db.port, "k", 1, 1.5, "calls", out, "value"),
        daemon=True,
    )
    loader.start()
    deadline = time.monotonic() + 30
    while not redis_db.admin.exists("users:l:sk"):
        assert time.monotonic() < deadline
        time.sleep(0.01)

    async def main() -> tuple[Any, float]:
        client = redis_db.async_client()
        async with AsyncTieredCache(client, namespace=NS, signing_key=SIGNING_KEY) as cache:
            stop = asyncio.Event()
            watcher = asyncio.ensure_future(watch_loop(stop))

            async def never() -> str:
                raise AssertionError("the other process holds the load")

            value = await cache.get_with("k", never)
            stop.set()
            worst = await watcher
        await client.aclose()
        return value, worst

    value, worst = run(main)
    pid, _ = out.get(timeout=90)
    loader.join(30)
    assert value == f"value of {pid}"
    assert int(redis_db.admin.get("calls")) == 1
    assert worst < 0.5, f"the event loop stood still for {worst:.2f} s"


@pytest.mark.thread_unsafe
def test_the_loop_runs_while_redis_hangs(own_redis_server: RedisServer) -> None:
    async def main() -> None:
        client = own_redis_server.async_client(socket_timeout=None)
        cache: AsyncTieredCache[Any, Any] = AsyncTieredCache(
            client, namespace=NS, signing_key=SIGNING_KEY, timeout=0.5
        )
        assert await cache.wait_ready(5)
        await cache.set("k", "v")
        assert await cache.get("k") == "v"
        own_redis_server.pause()
        try:
            stop = asyncio.Event()
            watcher = asyncio.ensure_future(watch_loop(stop))
            start = time.monotonic()
            assert await cache.get("absent", "d") == "d"
            assert await cache.get_with("new", lambda: asyncio.sleep(0, "loaded")) == "loaded"
            with pytest.raises(redis.RedisError):
                await cache.set("k", "unwritten")
            assert cache.local.get("k") is None
            elapsed = time.monotonic() - start
            stop.set()
            worst = await watcher
        finally:
            own_redis_server.resume()
        assert elapsed < 0.5 * 3 + 1.5, f"took {elapsed:.2f} s"
        assert worst < 0.3, f"the event loop stood still for {worst:.2f} s"
        await cache.aclose()
        await client.aclose()

    run(main)


def test_async_bad_client() -> None:
    with pytest.raises(TypeError, match="TieredCache"):
        AsyncTieredCache(redis.Redis(), namespace=NS, signing_key=SIGNING_KEY)
    with pytest.raises(TypeError, match="client"):
        AsyncTieredCache("redis://", namespace=NS, signing_key=SIGNING_KEY)


async def _round_trip(cache: AsyncTieredCache[Any, Any], value: Any) -> tuple[Any, Any]:
    """A write, a read from Redis (the local copy dropped) and a load, all
    through the cache's own client of the running loop."""
    assert await cache.wait_ready(5)
    await cache.set("k", value)
    cache.local.clear()

    async def load() -> Any:
        return value

    return await cache.get("k"), await cache.get_with(("loaded", value), load)


def test_one_cache_from_one_event_loop_after_another(
    redis_db: RedisServer, unraisable: list[Any]
) -> None:
    """A cache made outside any loop, used by several asyncio.run() in turn
    (as pytest-asyncio's loop per test does): each loop gets connections of
    its own, and those of a closed loop are let go without a warning."""
    cache: AsyncTieredCache[Any, Any] = AsyncTieredCache(
        redis_db.async_client(), namespace=NS, signing_key=SIGNING_KEY
    )
    try:
        for i in range(3):
            assert run(lambda i=i: _round_trip(cache, i)) == (i, i)  # type: ignore[misc]
    finally:
        run(cache.aclose)
    import gc

    gc.collect()
    assert unraisable == []


def test_an_async_cache_made_before_fork_works_in_the_child(
    redis_db: RedisServer, unraisable: list[Any]
) -> None:
    fork = multiprocessing.get_context("fork")
    cache: AsyncTieredCache[Any, Any] = AsyncTieredCache(
        redis_db.async_client(), namespace=NS, signing_key=SIGNING_KEY
    )
    try:
        assert run(lambda: _round_trip(cache, "parent")) == ("parent", "parent")
        out = fork.Queue()
        with warnings.catch_warnings():
            # 3.12+ warns that forking a process with threads may deadlock; the
            # cache's own threads hold no lock the child needs.
            warnings.simplefilter("ignore", DeprecationWarning)
            child = fork.Process(target=redis_workers.forked_async_child, args=(cache, out))
            child.start()
        assert out.get(timeout=90) == ("child", "child")
        child.join(30)
        assert child.exitcode == 0
        # The parent's connections were not the child's to close.
        assert run(lambda: _round_trip(cache, "again")) == ("again", "again")
    finally:
        run(cache.aclose)
    assert unraisable == []


def test_a_child_forked_while_the_loop_runs_leaves_the_parent_its_connections(
    redis_db: RedisServer, unraisable: list[Any]
) -> None:
    """The parent forks from inside its running loop; the child lets go of
    the parent's connections. It must close only its own copies of the
    sockets: the epoll instance of the parent's loop is shared with the
    child, and removing a socket from it there would leave the parent
    waiting for replies that never wake it."""
    fork = multiprocessing.get_context("fork")

    async def main() -> None:
        cache: AsyncTieredCache[Any, Any] = AsyncTieredCache(
            redis_db.async_client(), namespace=NS, signing_key=SIGNING_KEY, timeout=2.0
        )
        try:
            assert await _round_trip(cache, "parent") == ("parent", "parent")
            out = fork.Queue()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                child = fork.Process(
                    target=redis_workers.forked_async_child, args=(cache, out, True)
                )
                child.start()
            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(None, out.get, True, 30) == ("child", "child")
            await loop.run_in_executor(None, child.join, 30)
            assert child.exitcode == 0
            # The same connections of the parent's loop, after the child's exit.
            assert await _round_trip(cache, "again") == ("again", "again")
        finally:
            await cache.aclose()

    run(main)
    assert unraisable == []
