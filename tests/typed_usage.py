"""Typed usage of the public API: checked by `mypy --strict` (ci/lint.sh) against
the stub, and collected by pytest (`python_files` in pyproject.toml), whose
`test_typed_usage` runs every call, so the typed calls work as written."""

from __future__ import annotations

import asyncio
import secrets
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import pytest
import redis
import redis.asyncio

from moka_py import VERSION, CacheInfo, CacheStats, Moka, cached, cached_method
from moka_py.otel import Registration, instrument
from moka_py.prometheus import MokaCollector
from moka_py.redis import JSON, AsyncTieredCache, TieredCache, TierStats

Cause = Literal["expired", "explicit", "replaced", "size"]


def listener(k: str, v: list[int], cause: Cause) -> None:
    pass


def use_moka() -> None:
    c: Moka[str, list[int]] = Moka(10, ttl=1.0, tti=0.5, eviction_listener=listener, policy="lru")
    c.set("a", [1], ttl=0.5)
    maybe: list[int] | None = c.get("a")
    either: list[int] | str = c.get("a", "default")
    loaded: list[int] = c.get_with("b", lambda: [2])
    removed: list[int] | None = c.remove("a")
    c["x"] = [3]
    value: list[int] = c["x"]
    del c["x"]
    keys: list[str] = c.keys()
    pairs: list[tuple[str, list[int]]] = c.items()
    size: int = len(c) + c.count() + c.weighted_size()
    present: bool = "a" in c
    c.run_pending_tasks()
    c.clear()
    assert isinstance(VERSION, str)
    del maybe, either, loaded, removed, value, keys, pairs, size, present


@cached(maxsize=16, ttl=1.0)
def square(x: int) -> int:
    return x * x


@cached
def bare(x: int) -> int:
    return x


@cached(wait_concurrent=True)
async def fetch(x: int) -> str:
    await asyncio.sleep(0)
    return str(x)


def use_moka_features() -> None:
    pool = ThreadPoolExecutor(1)
    c: Moka[str, int] = Moka(10, ttl=2.0, stats=True, refresh_after=1.0, executor=pool)
    c.set_many({"a": 1}, ttl=1.0)
    c.set_many([("b", 2)])
    got: dict[str, int] = c.get_many(["a", "b"])
    gone: int = c.remove_many(["a"]) + c.remove_if(lambda k, v: v > 1)
    after: float | None = c.refresh_after
    s: CacheStats = c.stats()
    figures: tuple[int, ...] = (s.hits, s.misses, s.loads, s.load_failures, s.requests)
    more: tuple[int, ...] = (s.evictions, s.evicted_weight, s.expirations)
    rates: tuple[float, ...] = (s.hit_rate, s.miss_rate, s.load_time)
    c.reset_stats()
    total: CacheStats = c.stats(cumulative=True)
    # One name per cache: the registry is global, and 3.13t runs this test in 4 threads at once.
    registration: Registration = instrument(c, f"typed-{id(c)}")
    registration.unregister()
    collector = MokaCollector()
    collector.add("c", c)
    collector.remove("c")

    async def load() -> int:
        return 3

    async def main() -> int:
        return await c.aget_with("c", load, ttl=1.0)

    three: int = asyncio.run(main())
    pool.shutdown()
    del got, gone, after, figures, more, rates, three, total


# The key function takes the decorated function's arguments, which the decorator factory
# cannot know yet (its type is Callable[..., Hashable]): pyright --strict wants it annotated.
def greet_key(user: int, lang: str = "en") -> int:
    return user


@cached(key=greet_key, cache_if=lambda result: result != "")
def greet(user: int, lang: str = "en") -> str:
    return f"{lang}:{user}"


class Account:
    def __init__(self, owner: str) -> None:
        self.owner = owner

    @cached_method(maxsize=8, ttl=60.0)
    def balance(self, currency: str) -> str:
        return f"{self.owner}:{currency}"

    @cached_method
    def name(self) -> str:
        return self.owner

    @cached_method(wait_concurrent=True)
    async def remote(self, path: str) -> bytes:
        await asyncio.sleep(0)
        return path.encode()


@cached(maxsize=16, ttl=60.0, stats=True, refresh_after=30.0, executor=None)
def rate(pair: str) -> float:
    return 1.0


def use_cached() -> None:
    stats: CacheStats = (rate("EURUSD"), rate.cache.stats())[1]
    n: int = square(3) + bare(2) + stats.hits
    info: CacheInfo = square.cache_info()
    square.cache_clear()
    params = square.cache_parameters()
    text: str = asyncio.run(fetch(1))
    hello: str = greet(1, lang="fr")
    removed: bool = greet.cache_invalidate(1)
    present: bool = greet.cache_contains(1, "en")
    cache: Moka[object, object] = greet.cache
    fresh: str = greet.refresh(1, lang="fr") + greet.uncached(2)
    fetched: str = asyncio.run(fetch.refresh(1)) + asyncio.run(fetch.uncached(2))
    del n, info, params, text, hello, removed, present, cache, fresh, fetched


def use_cached_method() -> None:
    account = Account("ann")
    money: str = account.balance("eur")
    own: str = account.name()
    data: bytes = asyncio.run(account.remote("/x"))
    info: CacheInfo = account.balance.cache_info()
    account.balance.cache_clear()
    gone: bool = account.balance.cache_invalidate("eur")
    kept: bool = account.balance.cache_contains("eur")
    again: str = account.balance.refresh("eur") + account.balance.uncached("usd")
    del money, own, data, info, gone, kept, again


def test_typed_usage() -> None:
    use_moka()
    use_moka_features()
    use_cached()
    use_cached_method()


def use_tier(client: redis.Redis) -> None:
    with TieredCache[str, list[int]](
        client, namespace="typed", signing_key=secrets.token_bytes(32), ttl=60.0, stats=True
    ) as c:
        c.set("a", [1], ttl=5.0)
        maybe: list[int] | None = c.get("a")
        loaded: list[int] = c.get_with("b", lambda: [2])
        many: dict[str, list[int]] = c.get_many(["a", "b"])
        c.set_many({"c": [3]})
        removed: list[int] | None = c.remove("a")
        local: Moka[Any, Any] = c.local
        stats: TierStats = c.stats()

        @c.cached(ttl=10.0, name="typed.twice")
        def twice(x: int) -> int:
            return 2 * x

        doubled: int = twice(2)
        fresh: int = twice.refresh(2) + twice.uncached(2)
        dropped: bool = twice.cache_invalidate(2)
        held: bool = twice.cache_contains(2)
        twice.cache_clear()
        assert fresh == 8 and dropped and not held
        c.set("t", [4], tags=["tag"])
        c.set_many({"u": [5]}, tags=("tag",))
        added: bool = c.add("v", [6], tags=["tag"])
        tagged: list[int] = c.get_with("w", lambda: [7], tags=["tag"])

        def tags_of(x: int) -> list[str]:
            return [f"x:{x}"]

        @c.cached(name="typed.tagged", tags=tags_of)
        def tagged_fn(x: int) -> int:
            return x

        c.invalidate_tags("tag", "x:1")
        assert added and tagged == [7] and tagged_fn(1) == 1 and c.get("t") is None
        c.clear()
        assert maybe == [1] and loaded == [2] and many == {"a": [1], "b": [2]}
        assert removed == [1] and local.get("c") is None and doubled == 4
        assert stats.hits >= 1


async def use_async_tier(client: redis.asyncio.Redis) -> None:
    async with AsyncTieredCache[str, int](
        client, namespace="typed-async", serializer=JSON, wait_timeout=5.0
    ) as c:
        await c.set("a", 1)
        got: int | None = await c.get("a")

        async def load() -> int:
            return 2

        loaded: int = await c.get_with("b", load)
        assert got == 1 and loaded == 2
        await c.set("t", 3, tags=["tag"])
        await c.set_many({"u": 4}, tags=["tag"])
        assert await c.add("v", 5, tags=["tag"])
        assert await c.get_with("w", load, tags=["tag"]) == 2
        await c.invalidate_tags("tag")
        assert await c.get("t") is None

        @c.cached(ttl=10.0, name="typed.inc", cache_if=lambda r: r > 0, refresh_after=5.0)
        async def inc(x: int) -> int:
            return x + 1

        one: int = await inc(0) + await inc.refresh(0) + await inc.uncached(0)
        dropped: bool = await inc.cache_invalidate(0)
        held: bool = await inc.cache_contains(0)
        await inc.cache_clear()
        assert one == 3 and dropped and not held
        await c.clear()
    await client.aclose()


@pytest.mark.thread_unsafe  # fixed keys on the module's server
def test_typed_tier(redis_db: Any) -> None:
    use_tier(redis_db.client())
    asyncio.run(use_async_tier(redis_db.async_client()))
