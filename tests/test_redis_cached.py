"""`@cache.cached` of TieredCache and AsyncTieredCache on a real redis-server:
the surface of a function decorated with `moka_py.cached` (`refresh`,
`uncached`, `cache_invalidate` returning whether a result was removed,
`cache_contains`, `cache_clear` of that function across the fleet) and the
options `cache_if` and `refresh_after`.

Two caches of one namespace in one process stand for two processes (their
own local tiers, feeds and origins); `cache_clear` is also tested with real
child processes."""

from __future__ import annotations

import asyncio
import inspect
import multiprocessing
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
import redis
import redis_workers
from redis_fixtures import tiered_pair
from redis_servers import RedisServer
from support import SIGNING_KEY, wait_for

from moka_py.redis import JSON, AsyncTieredCache, TieredCache

T = TypeVar("T")
# The tests of a module share its server and use fixed keys.
pytestmark = pytest.mark.thread_unsafe

NS = "users"
SPAWN = multiprocessing.get_context("spawn")


class Source:
    """What the decorated functions read: a version a test bumps, and every
    call counted (under a lock: loads run on several threads)."""

    def __init__(self) -> None:
        self.version = 1
        self.calls: list[Any] = []
        self._lock = threading.Lock()

    def read(self, x: Any) -> list[Any]:
        with self._lock:
            self.calls.append(x)
        return [x, self.version]


@pytest.fixture
def client(redis_db: RedisServer) -> redis.Redis:
    return redis_db.client(socket_timeout=None)


@pytest.fixture
def pair(client: redis.Redis) -> Iterator[tuple[TieredCache[Any, Any], TieredCache[Any, Any]]]:
    yield from tiered_pair(client, NS)


def both(pair: tuple[TieredCache[Any, Any], ...], src: Source, **options: Any) -> tuple[Any, Any]:
    """One function, decorated in each cache of the pair."""

    def make(cache: TieredCache[Any, Any]) -> Any:
        @cache.cached(ttl=60, name="read", **options)
        def read(x: int) -> list[Any]:
            return src.read(x)

        return read

    return make(pair[0]), make(pair[1])


def test_invalidate_says_whether_a_result_was_removed(
    pair: tuple[TieredCache[Any, Any], ...],
) -> None:
    src = Source()
    fa, fb = both(pair, src)
    assert fa.cache_invalidate(1) is False
    assert fa(1) == [1, 1] and fb(1) == [1, 1]
    assert fb.cache_contains(1) and fa.cache_contains(1)
    assert fb.cache_invalidate(1) is True
    assert fb.cache_invalidate(1) is False
    assert not fb.cache_contains(1)
    wait_for(lambda: not fa.cache_contains(1), timeout=5)  # once the message reaches a
    assert fa.cache is pair[0]


def test_contains_is_not_a_read(pair: tuple[TieredCache[Any, Any], ...]) -> None:
    b = pair[1]
    src = Source()
    fa, fb = both(pair, src)
    fa(1)
    # (Once a's notices of its two loads, the epoch and the result, reached b,
    # b reads the function's epoch once and keeps it.)
    wait_for(lambda: b.stats().invalidations == 2, timeout=5)
    assert not fb.cache_contains(99)
    before = b.stats()
    assert fb.cache_contains(1) and not fb.cache_contains(2)
    after = b.stats()
    assert (after.local_hits, after.remote_hits, after.misses) == (
        before.local_hits,
        before.remote_hits,
        before.misses,
    )
    # Not read into b's local tier either: its first call is a remote hit.
    assert fb(1) == [1, 1] and b.stats().remote_hits == after.remote_hits + 1
    assert len(src.calls) == 1


def test_refresh_stores_and_invalidates_every_copy(
    pair: tuple[TieredCache[Any, Any], ...],
) -> None:
    src = Source()
    fa, fb = both(pair, src)
    assert fa(1) == [1, 1] and fb(1) == [1, 1]  # fb holds a local copy now
    src.version = 2
    assert fb(1) == [1, 1]
    assert fa.refresh(1) == [1, 2]
    wait_for(lambda: fb(1) == [1, 2], timeout=5)
    assert fa(1) == [1, 2]
    assert src.calls == [1, 1]
    # A refresh of arguments never called stores too.
    assert fb.refresh(3) == [3, 2] and fa(3) == [3, 2] and src.calls == [1, 1, 3]


def test_refresh_holds_the_claim_so_callers_elsewhere_wait_for_it(
    pair: tuple[TieredCache[Any, Any], ...],
) -> None:
    started, go = threading.Event(), threading.Event()
    calls: list[str] = []

    def make(cache: TieredCache[Any, Any], who: str) -> Any:
        @cache.cached(ttl=60, name="slow")
        def slow(x: int) -> str:
            calls.append(who)
            started.set()
            assert go.wait(10)
            return f"{who}-{x}"

        return slow

    fa, fb = make(pair[0], "a"), make(pair[1], "b")
    results: dict[str, str] = {}
    refresher = threading.Thread(target=lambda: results.update(a=fa.refresh(1)))
    refresher.start()
    assert started.wait(10)
    caller = threading.Thread(target=lambda: results.update(b=fb(1)))
    caller.start()
    # b finds no value and the key claimed: it waits (counted) for the refresh.
    wait_for(lambda: pair[1].stats().waits >= 1, timeout=10)
    go.set()
    refresher.join(10)
    caller.join(10)
    assert not refresher.is_alive() and not caller.is_alive()
    assert results == {"a": "a-1", "b": "a-1"} and calls == ["a"]


def test_refresh_with_a_rejected_result_removes_the_stored_one(
    pair: tuple[TieredCache[Any, Any], ...],
) -> None:
    src = Source()
    fa, fb = both(pair, src, cache_if=lambda r: r[1] != 2)
    assert fa(1) == [1, 1] and fb(1) == [1, 1]
    src.version = 2
    assert fa.refresh(1) == [1, 2]
    assert not fa.cache_contains(1)
    wait_for(lambda: not fb.cache_contains(1), timeout=5)
    src.version = 3
    assert fb(1) == [1, 3]


def test_uncached_neither_reads_nor_writes(
    pair: tuple[TieredCache[Any, Any], ...], client: redis.Redis
) -> None:
    src = Source()
    fa, _ = both(pair, src)
    keys = set(client.keys("*"))
    assert fa.uncached(1) == [1, 1] and not fa.cache_contains(1)
    assert fa(1) == [1, 1]
    src.version = 2
    assert fa.uncached(1) == [1, 2] and fa(1) == [1, 1]
    assert src.calls == [1, 1, 1]
    assert fa.uncached is fa.__wrapped__
    assert len(set(client.keys("*")) - keys) == 2  # the epoch and one result


def test_cache_if(pair: tuple[TieredCache[Any, Any], ...]) -> None:
    src = Source()
    fa, fb = both(pair, src, cache_if=lambda r: r[0] % 2 == 0)
    assert fa(1) == [1, 1] and fa(1) == [1, 1] and fb(1) == [1, 1]
    assert src.calls == [1, 1, 1] and not fa.cache_contains(1)
    assert fa(2) == [2, 1] and fb(2) == [2, 1] and fa(2) == [2, 1]
    assert src.calls == [1, 1, 1, 2] and fb.cache_contains(2)
    with pytest.raises(TypeError, match="cache_if"):
        pair[0].cached(cache_if=3)  # type: ignore[arg-type]


def test_cache_if_waiters_elsewhere_load_after_a_rejected_result(
    pair: tuple[TieredCache[Any, Any], ...],
) -> None:
    started, go = threading.Event(), threading.Event()
    calls: list[str] = []

    def make(cache: TieredCache[Any, Any], who: str) -> Any:
        @cache.cached(ttl=60, name="maybe", cache_if=lambda r: r is not None)
        def maybe(x: int) -> str | None:
            calls.append(who)
            if who == "a":
                started.set()
                assert go.wait(10)
                return None
            return who

        return maybe

    fa, fb = make(pair[0], "a"), make(pair[1], "b")
    results: dict[str, Any] = {}
    first = threading.Thread(target=lambda: results.update(a=fa(1)))
    first.start()
    assert started.wait(10)
    second = threading.Thread(target=lambda: results.update(b=fb(1)))
    second.start()
    wait_for(lambda: pair[1].stats().waits >= 1, timeout=10)
    go.set()
    first.join(10)
    second.join(10)
    assert results == {"a": None, "b": "b"} and calls == ["a", "b"]


def test_refresh_after_reloads_in_the_background(
    pair: tuple[TieredCache[Any, Any], ...],
) -> None:
    src = Source()
    fa, fb = both(pair, src, refresh_after=0.2)
    assert fa(1) == [1, 1] and fb(1) == [1, 1]
    src.version = 2
    # Once due, a call returns the stored result and starts one reload; every
    # process then sees the reloaded one.
    wait_for(lambda: fa(1) == [1, 2], timeout=10)
    wait_for(lambda: fb(1) == [1, 2], timeout=10)
    assert src.calls.count(1) >= 2
    with pytest.raises(ValueError, match="refresh_after"):
        pair[0].cached(refresh_after=0)


def test_refresh_after_one_reload_across_the_fleet(
    pair: tuple[TieredCache[Any, Any], ...],
) -> None:
    a, b = pair
    go = threading.Event()
    calls: list[int] = []

    def make(cache: TieredCache[Any, Any]) -> Any:
        @cache.cached(ttl=60, name="gated", refresh_after=0.1)
        def gated(x: int) -> int:
            calls.append(x)
            if len(calls) > 1:
                assert go.wait(10)
            return min(len(calls), 2)

        return gated

    fa, fb = make(a), make(b)
    assert fa(1) == 1 and fb(1) == 1
    # Once due, every call of both caches returns the stored result while one
    # reload (held at `go`) runs: the others find it in flight and leave it.
    wait_for(lambda: fa(1) == 1 and fb(1) == 1 and len(calls) == 2, timeout=10)
    for _ in range(20):
        assert fa(1) == 1 and fb(1) == 1
    assert len(calls) == 2
    go.set()
    wait_for(lambda: fa(1) == 2 and fb(1) == 2, timeout=10)


def test_a_reload_that_fails_or_is_rejected_leaves_the_stored_result(
    pair: tuple[TieredCache[Any, Any], ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    a = pair[0]
    reported: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: reported.append(u.exc_value))
    outcome = ["ok"]
    calls: list[str] = []

    @a.cached(ttl=60, name="flaky", refresh_after=0.05, cache_if=lambda r: r != "rejected")
    def flaky(x: int) -> str:
        calls.append(outcome[0])
        if outcome[0] == "fail":
            raise KeyError("the source is down")
        return outcome[0]

    assert flaky(1) == "ok"
    outcome[0] = "fail"
    wait_for(lambda: flaky(1) == "ok" and "fail" in calls and reported, timeout=10)
    assert isinstance(reported[0], KeyError)
    outcome[0] = "rejected"
    wait_for(lambda: flaky(1) == "ok" and "rejected" in calls, timeout=10)
    assert flaky.cache_contains(1) and flaky(1) == "ok"
    # An explicit refresh whose result is rejected removes the stored one.
    assert flaky.refresh(1) == "rejected" and not flaky.cache_contains(1)


def test_threads_hammering_refresh_after_and_refresh(
    pair: tuple[TieredCache[Any, Any], ...],
) -> None:
    # Calls, background reloads and refreshes of a few keys from 8 threads over
    # both caches at once: every call returns a result of its own arguments,
    # nothing deadlocks (each thread has a deadline), and once the source stops
    # changing every cache converges on its last version.
    src = Source()
    fa, fb = both(pair, src, refresh_after=0.01)
    errors: list[BaseException] = []

    def hammer(n: int) -> None:
        try:
            for i in range(150):
                f = fa if (n + i) % 2 else fb
                x = i % 4
                got = f.refresh(x) if i % 25 == n else f(x)
                assert got[0] == x and 1 <= got[1] <= src.version
                if n == 0:
                    src.version += 1
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a thread did not finish in time"
    assert errors == []
    last = src.version
    wait_for(lambda: all(f(x) == [x, last] for f in (fa, fb) for x in range(4)), timeout=10)


def test_results_written_without_refresh_after_are_reloaded(
    pair: tuple[TieredCache[Any, Any], ...],
) -> None:
    src = Source()
    fa, _ = both(pair, src)
    assert fa(1) == [1, 1]
    src.version = 2
    _, fb = both(pair, src, refresh_after=100)
    assert fb(1) == [1, 1]  # stored by the version without refresh_after
    wait_for(lambda: fb(1) == [1, 2], timeout=10)


def test_cache_clear_drops_this_function_everywhere(
    pair: tuple[TieredCache[Any, Any], ...], client: redis.Redis
) -> None:
    a, b = pair
    src = Source()
    fa, fb = both(pair, src)

    @a.cached(ttl=60, name="other")
    def other(x: int) -> list[Any]:
        return src.read(("other", x))

    assert [fa(1), fa(2), fb(1), other(1)] == [[1, 1], [2, 1], [1, 1], [("other", 1), 1]]
    a.set("plain", 1)
    src.version = 2
    fa.cache_clear()
    assert fa(1) == [1, 2]
    wait_for(lambda: fb(2) == [2, 2], timeout=5)
    assert fb(1) == [1, 2] and fa(2) == [2, 2]
    # Nothing else is touched.
    assert other(1) == [("other", 1), 1] and b.get("plain") == 1
    assert src.calls == [1, 2, ("other", 1), 1, 2]
    # No scan: the results of the old epoch stay in Redis until their ttl.
    # (2 epochs, 2 + 2 results of `read`, 1 of `other`, and "plain")
    assert len(client.keys("users:v:*")) == 8


def test_cache_clear_reaches_other_processes(redis_db: RedisServer) -> None:
    out = SPAWN.Queue()
    go = SPAWN.Event()
    with TieredCache(redis_db.client(), namespace=NS, signing_key=SIGNING_KEY) as cache:

        @cache.cached(ttl=60, name="whoami")
        def whoami(x: int) -> str:
            return "parent"

        assert whoami(1) == "parent"
        child = SPAWN.Process(
            target=redis_workers.cleared_function, args=(redis_db.port, go, out), daemon=True
        )
        child.start()
        try:
            # The child read the parent's result (and holds it locally).
            assert out.get(timeout=60) == "parent"
            whoami.cache_clear()
            go.set()
            # Its next calls compute its own.
            assert out.get(timeout=60) == "child"
            assert whoami(1) == "child"
        finally:
            child.join(30)
            if child.is_alive():
                child.kill()
        assert child.exitcode == 0


def test_json_serializer_round_trips_the_refresh_after_record(client: redis.Redis) -> None:
    with TieredCache(client, namespace=NS, serializer=JSON) as cache:
        src = Source()

        @cache.cached(ttl=60, name="json", refresh_after=100)
        def f(x: int) -> list[Any]:
            return src.read(x)

        assert f(1) == [1, 1]
        cache.local.clear()  # read back from Redis: a list, not a tuple
        assert f(1) == [1, 1] and src.calls == [1]


# ---------------------------------------------------------------- asyncio


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(coro_fn(), 60))  # type: ignore[arg-type]


async def eventually(predicate: Callable[[], object]) -> None:
    """Polls `predicate()` (an invalidation reaching the other cache's feed)
    for up to 10 s without blocking the loop; then asserts it."""
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0.01)
    assert predicate()


def test_async_surface(redis_db: RedisServer) -> None:
    src = Source()

    async def main() -> None:
        client = redis_db.async_client()
        sync = TieredCache(redis_db.client(), namespace=NS, signing_key=SIGNING_KEY)

        @sync.cached(ttl=60, name="read")
        def fs(x: int) -> list[Any]:
            return src.read(x)

        async with AsyncTieredCache(
            client, namespace=NS, signing_key=SIGNING_KEY, stats=True
        ) as cache:
            assert await cache.wait_ready(5)

            @cache.cached(ttl=60, name="read")
            async def f(x: int) -> list[Any]:
                await asyncio.sleep(0)
                return src.read(x)

            assert inspect.iscoroutinefunction(f)
            assert await f.cache_invalidate(1) is False
            assert not await f.cache_contains(1)
            assert await f(1) == [1, 1] and await f.cache_contains(1)
            assert fs(1) == [1, 1]  # one cache, one function
            src.version = 2
            refreshing = f.refresh(1)
            assert inspect.isawaitable(refreshing)
            assert await refreshing == [1, 2]
            await eventually(lambda: fs(1) == [1, 2])
            src.version = 3
            assert await f.uncached(1) == [1, 3] and await f(1) == [1, 2]
            assert await f.cache_invalidate(1) is True
            await eventually(lambda: not fs.cache_contains(1))
            assert await f(1) == [1, 3]
            await f.cache_clear()
            src.version = 4
            assert await f(1) == [1, 4]
            assert src.calls == [1, 1, 1, 1, 1]
        sync.close()
        await client.aclose()

    run(main)


def test_async_cache_if_and_refresh_after(redis_db: RedisServer) -> None:
    src = Source()

    async def main() -> None:
        client = redis_db.async_client()
        async with AsyncTieredCache(client, namespace=NS, signing_key=SIGNING_KEY) as cache:
            assert await cache.wait_ready(5)

            @cache.cached(ttl=60, name="odd", cache_if=lambda r: r[0] % 2 == 0)
            async def odd(x: int) -> list[Any]:
                return src.read(x)

            assert await odd(1) == [1, 1] and await odd(1) == [1, 1]
            assert await odd(2) == [2, 1] and await odd(2) == [2, 1]
            assert src.calls == [1, 1, 2]
            src.version = 2
            assert await odd.refresh(2) == [2, 2] and await odd(2) == [2, 2]

            @cache.cached(ttl=60, name="ahead", refresh_after=0.2)
            async def ahead(x: int) -> list[Any]:
                return src.read(("ahead", x))

            assert await ahead(1) == [("ahead", 1), 2]
            src.version = 3
            for _ in range(1000):
                if await ahead(1) == [("ahead", 1), 3]:
                    break
                await asyncio.sleep(0.01)
            assert await ahead(1) == [("ahead", 1), 3]
            # A reload left in flight is cancelled by aclose (no pending task).
            src.version = 4
            await asyncio.sleep(0.25)
            await ahead(1)
        await client.aclose()

    run(main)


def test_async_reload_that_fails_leaves_the_stored_result(
    redis_db: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    reported: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: reported.append(u.exc_value))
    outcome = ["ok"]

    async def main() -> None:
        client = redis_db.async_client()
        async with AsyncTieredCache(client, namespace=NS, signing_key=SIGNING_KEY) as cache:
            assert await cache.wait_ready(5)

            @cache.cached(ttl=60, name="aflaky", refresh_after=0.05)
            async def flaky(x: int) -> str:
                if outcome[0] == "fail":
                    raise KeyError("the source is down")
                return outcome[0]

            assert await flaky(1) == "ok"
            outcome[0] = "fail"
            for _ in range(1000):
                assert await flaky(1) == "ok"
                if reported:
                    break
                await asyncio.sleep(0.01)
            assert isinstance(reported[0], KeyError)
        await client.aclose()

    run(main)
