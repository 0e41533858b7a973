"""`stale_if_error` on TieredCache and AsyncTieredCache, on a real
redis-server: a load that raises (or runs while Redis does not answer and
raises) returns the last value this process knew for the key if it expired at
most that long ago; the next call loads again; an invalidated value is never
served; one load per key at a time. Waits here let entries expire; nothing is
asserted about how long a call takes."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import pytest
from redis_servers import RedisServer
from support import SIGNING_KEY, run_threads, wait_for

from moka_py.redis import AsyncTieredCache, TieredCache

T = TypeVar("T")
# The tests of a module share its server and use fixed keys.
pytestmark = pytest.mark.thread_unsafe

TTL = 0.3


class LoaderDown(Exception):
    pass


def failing() -> NoReturn:
    raise LoaderDown("the database is down")


async def afailing() -> NoReturn:
    raise LoaderDown("the database is down")


def tiered(server: RedisServer, **kwargs: Any) -> TieredCache[Any, Any]:
    kwargs.setdefault("ttl", TTL)
    c: TieredCache[Any, Any] = TieredCache(
        server.client(), namespace="stale", signing_key=SIGNING_KEY, stats=True, **kwargs
    )
    assert c.wait_ready(5)
    return c


def expired(c: TieredCache[Any, Any], key: str) -> None:
    """Waits until ``key``'s value has expired (a plain read misses)."""
    wait_for(lambda: c.get(key) is None, timeout=10)


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(coro_fn(), 60))  # type: ignore[arg-type]


def test_a_failed_load_serves_the_expired_value_then_loads_again(redis_db: RedisServer) -> None:
    with tiered(redis_db, stale_if_error=60) as c:
        assert c.get_with("k", lambda: "v1") == "v1"
        expired(c, "k")
        # Only a load that fails serves it, and it is not stored again.
        assert c.get_with("k", failing) == "v1"
        assert c.get("k") is None
        s = c.stats()
        assert s.stale_served == 1 and s.load_failures == 1 and s.loads == 1
        # The next call tries the loader again.
        assert c.get_with("k", lambda: "v2") == "v2"
        assert c.get("k") == "v2"
        assert c.stats().loads == 2


def test_past_the_window_the_error_is_raised(redis_db: RedisServer) -> None:
    with tiered(redis_db, stale_if_error=0.3) as c:
        c.get_with("k", lambda: "v1")
        expired(c, "k")
        time.sleep(TTL + 0.3 + 0.2)  # past the value's deadline plus the window
        with pytest.raises(LoaderDown):
            c.get_with("k", failing)
        assert c.stats().stale_served == 0


def test_off_by_default_and_per_call(redis_db: RedisServer) -> None:
    with tiered(redis_db) as plain:
        plain.get_with("k", lambda: "v1")
        expired(plain, "k")
        with pytest.raises(LoaderDown):
            plain.get_with("k", failing)
        # A cache without it cannot turn it on per call (nothing was kept).
        with pytest.raises(ValueError, match="stale_if_error"):
            plain.get_with("k", failing, stale_if_error=1)
    with tiered(redis_db, stale_if_error=60) as c:
        c.get_with("k", lambda: "v1")
        expired(c, "k")
        with pytest.raises(LoaderDown):
            c.get_with("k", failing, stale_if_error=0)  # off for this call
        with pytest.raises(ValueError, match="longer than the cache's"):
            c.get_with("k", failing, stale_if_error=61)
        with pytest.raises(ValueError, match="positive"):
            c.get_with("k", failing, stale_if_error=-1)
        assert c.get_with("k", failing, stale_if_error=30) == "v1"
    with pytest.raises(TypeError, match="stale_if_error"):
        tiered(redis_db, stale_if_error="60")


def test_an_invalidated_value_is_never_served(redis_db: RedisServer) -> None:
    with tiered(redis_db, stale_if_error=60) as a, tiered(redis_db, stale_if_error=60) as b:
        a.get_with("mine", lambda: "v1")
        a.remove("mine")
        with pytest.raises(LoaderDown):
            a.get_with("mine", failing)
        # Removed by another process: the message reaches `a`.
        a.get_with("theirs", lambda: "v1")
        b.remove("theirs")
        wait_for(lambda: a.stats().invalidations >= 1, timeout=5)
        with pytest.raises(LoaderDown):
            a.get_with("theirs", failing)
        # Cleared: nothing from before is served.
        a.get_with("k", lambda: "v1")
        b.clear()
        wait_for(lambda: a.stats().invalidations >= 2, timeout=5)
        with pytest.raises(LoaderDown):
            a.get_with("k", failing)
        assert a.stats().stale_served == 0


def test_one_failing_load_per_key_at_a_time_under_threads(redis_db: RedisServer) -> None:
    with tiered(redis_db, stale_if_error=60) as c:
        c.get_with("k", lambda: "v1")
        expired(c, "k")
        lock = threading.Lock()
        running = [0]
        most = [0]
        calls = [0]

        def slow_failing() -> NoReturn:
            with lock:
                running[0] += 1
                calls[0] += 1
                most[0] = max(most[0], running[0])
            time.sleep(0.05)
            with lock:
                running[0] -= 1
            raise LoaderDown("down")

        results = run_threads(lambda i: c.get_with("k", slow_failing), 8, timeout=60)
        assert results == ["v1"] * 8
        assert most[0] == 1
        # Every caller got the stale value: from a failed load of its own or
        # as a waiter of one.
        assert 1 <= calls[0] <= 8
        assert c.stats().stale_served == calls[0]


def test_the_decorator_serves_stale_results(redis_db: RedisServer) -> None:
    with tiered(redis_db, stale_if_error=60) as c:
        down = [False]

        @c.cached(name="price", stale_if_error=30)
        def price(item: str) -> int:
            if down[0]:
                raise LoaderDown(item)
            return len(item)

        assert price("abc") == 3
        wait_for(lambda: not price.cache_contains("abc"), timeout=10)
        down[0] = True
        assert price("abc") == 3
        with pytest.raises(LoaderDown):
            price("never loaded")
        down[0] = False
        assert price("abcd") == 4
        with pytest.raises(ValueError, match="longer than the cache's"):
            c.cached(name="p2", stale_if_error=61)


def test_redis_down_and_loader_failing(own_redis_server: RedisServer) -> None:
    with (
        tiered(own_redis_server, stale_if_error=60, timeout=0.5) as c,
        tiered(own_redis_server, timeout=0.5) as plain,
    ):
        c.get_with("k", lambda: "v1")
        plain.get_with("k2", lambda: "v1")
        expired(c, "k")
        expired(plain, "k2")
        own_redis_server.pause()
        try:
            # A read through the outage: no local copy, the kept value instead
            # (the default tier: a miss, as before).
            assert c.get("k") == "v1"
            assert plain.get("k2") is None
            # A load runs here; when it fails, the kept value.
            assert c.get_with("k", failing) == "v1"
            with pytest.raises(LoaderDown):
                plain.get_with("k2", failing)
            # A load that succeeds is served and kept.
            assert c.get_with("new", lambda: "fresh") == "fresh"
            wait_for(lambda: not c.feed_up, timeout=10)
        finally:
            own_redis_server.resume()
        assert c.stats().stale_served >= 2 and c.stats().redis_errors > 0
        # Once the feed is back, nothing from before it is served.
        assert c.wait_ready(15)
        c.get_with("fresh", lambda: 1)  # Redis answers again
        with pytest.raises(LoaderDown):
            c.get_with("new", failing)


def test_async_serves_stale_and_retries(redis_db: RedisServer) -> None:
    async def main() -> None:
        async with AsyncTieredCache(
            redis_db.async_client(),
            namespace="stale",
            signing_key=SIGNING_KEY,
            stats=True,
            ttl=TTL,
            stale_if_error=60,
        ) as c:
            assert await c.wait_ready(5)

            async def v1() -> str:
                return "v1"

            assert await c.get_with("ak", v1) == "v1"
            for _ in range(2000):
                if await c.get("ak") is None:
                    break
                await asyncio.sleep(0.01)
            assert await c.get("ak") is None
            # Concurrent callers: one load, all served the kept value.
            loads = [0]

            async def slow_failing() -> NoReturn:
                loads[0] += 1
                await asyncio.sleep(0.05)
                raise LoaderDown("down")

            got = await asyncio.gather(*(c.get_with("ak", slow_failing) for _ in range(5)))
            assert got == ["v1"] * 5 and loads[0] == 1
            assert c.stats().stale_served == 1 and c.stats().load_failures == 1
            with pytest.raises(LoaderDown):
                await c.get_with("ak", afailing, stale_if_error=0)

            async def v2() -> str:
                return "v2"

            assert await c.get_with("ak", v2) == "v2"

            down = [False]

            @c.cached(name="aprice", stale_if_error=60)
            async def aprice(item: str) -> int:
                if down[0]:
                    raise LoaderDown(item)
                return len(item)

            assert await aprice("abc") == 3
            for _ in range(2000):
                if not await aprice.cache_contains("abc"):
                    break
                await asyncio.sleep(0.01)
            down[0] = True
            assert await aprice("abc") == 3
            with pytest.raises(LoaderDown):
                await aprice("never loaded")

    run(main)


def test_async_redis_down_and_loader_failing(own_redis_server: RedisServer) -> None:
    async def main() -> None:
        async with AsyncTieredCache(
            own_redis_server.async_client(),
            namespace="stale",
            signing_key=SIGNING_KEY,
            stats=True,
            ttl=TTL,
            timeout=0.5,
            stale_if_error=60,
        ) as c:
            assert await c.wait_ready(5)

            async def v1() -> str:
                return "v1"

            assert await c.get_with("k", v1) == "v1"
            for _ in range(2000):
                if await c.get("k") is None:
                    break
                await asyncio.sleep(0.01)
            own_redis_server.pause()
            try:
                assert await c.get("k") == "v1"  # no local copy: the kept value
                assert await c.get_with("k", afailing) == "v1"
                # Loaded here while Redis is away, kept, and served when the
                # next load fails.
                assert await c.get_with("new", v1) == "v1"
                c.local.remove("new")
                assert await c.get_with("new", afailing) == "v1"
            finally:
                own_redis_server.resume()
            assert c.stats().stale_served >= 3 and c.stats().redis_errors > 0

    run(main)


def test_a_value_of_an_invalidated_tag_is_never_served_stale(redis_db: RedisServer) -> None:
    """A load in flight when its tag is invalidated: its value is not kept
    for stale_if_error either; a value kept before the invalidation is
    dropped by it; an untagged value stays servable."""
    with tiered(redis_db, stale_if_error=60, ttl=30) as c:
        started, release = threading.Event(), threading.Event()
        out: list[Any] = []

        def slow() -> str:
            started.set()
            assert release.wait(10)
            return "dated"

        t = threading.Thread(target=lambda: out.append(c.get_with("k", slow, tags=["a"])))
        t.start()
        assert started.wait(10)
        c.invalidate_tags("a")
        release.set()
        t.join(10)
        assert out == ["dated"]
        with pytest.raises(LoaderDown):
            c.get_with("k", failing, tags=["a"])
        # Kept, then its tag invalidated: not served either.
        assert c.get_with("j", lambda: "live", tags=["b"]) == "live"
        c.invalidate_tags("b")
        with pytest.raises(LoaderDown):
            c.get_with("j", failing, tags=["b"])
        # An untagged value stays servable after any tag's invalidation.
        assert c.get_with("u", lambda: "untagged", ttl=TTL) == "untagged"
        expired(c, "u")
        c.invalidate_tags("b")
        assert c.get_with("u", failing) == "untagged"
        assert c.stats().stale_served == 1
