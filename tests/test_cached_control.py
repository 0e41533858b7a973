"""Per-call control of a function decorated with `moka_py.cached` or
`cached_method`: `f.refresh(...)` computes, stores and returns whatever is
cached; `f.uncached(...)` calls the function without reading or writing the
cache. Sync and `async def` functions, and methods."""

from __future__ import annotations

import asyncio
import gc
import inspect
import weakref
from typing import Any

import pytest
from support import cpython_refcounting

from moka_py import cached, cached_method


class Source:
    """What the decorated functions read: a version that a test bumps."""

    def __init__(self) -> None:
        self.version = 1
        self.calls: list[Any] = []

    def read(self, x: Any) -> tuple[Any, int]:
        self.calls.append(x)
        return (x, self.version)


@pytest.mark.parametrize("wait_concurrent", [False, True])
def test_refresh_recomputes_and_stores(wait_concurrent: bool) -> None:
    src = Source()

    @cached(ttl=60, wait_concurrent=wait_concurrent)
    def f(x: int) -> tuple[int, int]:
        return src.read(x)

    assert f(1) == (1, 1)
    src.version = 2
    assert f(1) == (1, 1)  # cached
    assert f.refresh(1) == (1, 2)
    assert f(1) == (1, 2) and f.cache_contains(1)
    assert src.calls == [1, 1]
    # A refresh of arguments never called stores too.
    assert f.refresh(5) == (5, 2) and f(5) == (5, 2) and src.calls == [1, 1, 5]
    # Neither counts as a call of the function.
    info = f.cache_info()
    assert (info.hits, info.misses) == (3, 1)


def test_uncached_neither_reads_nor_writes() -> None:
    src = Source()

    @cached
    def f(x: int) -> tuple[int, int]:
        return src.read(x)

    assert f.uncached(1) == (1, 1) and not f.cache_contains(1)
    assert f(1) == (1, 1)
    src.version = 2
    assert f.uncached(1) == (1, 2)
    assert f(1) == (1, 1)
    assert src.calls == [1, 1, 1]
    info = f.cache_info()
    assert (info.hits, info.misses) == (1, 1)


def test_refresh_with_a_rejected_result_removes_the_stored_one() -> None:
    src = Source()

    @cached(cache_if=lambda r: r[1] != 2)
    def f(x: int) -> tuple[int, int]:
        return src.read(x)

    assert f(1) == (1, 1)
    src.version = 2
    assert f.refresh(1) == (1, 2) and not f.cache_contains(1)
    src.version = 3
    assert f(1) == (1, 3) and f.cache_contains(1)


def test_refresh_that_raises_keeps_the_stored_result_and_records_a_load() -> None:
    fail = False

    @cached(stats=True)
    def f(x: int) -> int:
        if fail:
            raise KeyError(x)
        return x

    assert f(1) == 1
    fail = True
    with pytest.raises(KeyError):
        f.refresh(1)
    assert f(1) == 1
    stats = f.cache.stats()
    assert stats.loads == 1 and stats.load_failures == 1
    fail = False
    assert f.refresh(1) == 1 and f.cache.stats().loads == 2


def test_async_refresh_and_uncached() -> None:
    src = Source()

    @cached(ttl=60)
    async def f(x: int) -> tuple[int, int]:
        await asyncio.sleep(0)
        return src.read(x)

    async def main() -> None:
        assert await f(1) == (1, 1)
        src.version = 2
        refreshing = f.refresh(1)
        assert inspect.isawaitable(refreshing)
        assert await refreshing == (1, 2)
        assert await f(1) == (1, 2)
        src.version = 3
        assert await f.uncached(1) == (1, 3)
        assert await f(1) == (1, 2)
        assert not f.cache_contains(9)
        assert await f.uncached(9) == (9, 3) and not f.cache_contains(9)

    asyncio.run(main())
    assert src.calls == [1, 1, 1, 9]
    info = f.cache_info()
    assert (info.hits, info.misses) == (2, 1)


def test_async_refresh_with_a_rejected_result_removes_the_stored_one() -> None:
    src = Source()

    @cached(cache_if=lambda r: r[1] != 2)
    async def f(x: int) -> tuple[int, int]:
        return src.read(x)

    async def main() -> None:
        assert await f(1) == (1, 1)
        src.version = 2
        assert await f.refresh(1) == (1, 2)
        assert not f.cache_contains(1)

    asyncio.run(main())


def test_cached_method_refresh_and_uncached() -> None:
    class Account:
        def __init__(self) -> None:
            self.src = Source()

        @cached_method
        def balance(self, currency: str) -> tuple[str, int]:
            return self.src.read(currency)

        @cached_method
        async def rate(self, currency: str) -> tuple[str, int]:
            return self.src.read(currency)

    a, b = Account(), Account()
    assert a.balance("eur") == ("eur", 1) and b.balance("eur") == ("eur", 1)
    a.src.version = b.src.version = 2
    assert a.balance.refresh("eur") == ("eur", 2)
    assert a.balance("eur") == ("eur", 2)
    assert b.balance("eur") == ("eur", 1)  # another instance, another cache
    a.src.version = 3
    assert a.balance.uncached("eur") == ("eur", 3) and a.balance("eur") == ("eur", 2)

    async def main() -> None:
        assert await a.rate("usd") == ("usd", 3)
        a.src.version = 4
        assert await a.rate.refresh("usd") == ("usd", 4)
        assert await a.rate("usd") == ("usd", 4)
        assert await a.rate.uncached("usd") == ("usd", 4)

    asyncio.run(main())
    assert a.src.calls == ["eur", "eur", "eur", "usd", "usd", "usd"]


@cpython_refcounting
def test_a_dropped_function_is_freed_without_the_collector() -> None:
    # refresh and uncached add no reference cycle through a sync function: its
    # cache (and what it holds) goes as soon as the last reference does. (An
    # async one's miss path refers to the wrapper already: the collector
    # frees it.)
    def plain(x: int) -> int:
        return x

    f: Any = cached(plain)
    assert f.refresh(1) == 1 and f.uncached(2) == 2
    gone = weakref.ref(f)
    gc.disable()
    try:
        del f
        assert gone() is None
    finally:
        gc.enable()
