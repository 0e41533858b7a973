"""`@cached(stats=True)` and `@cached(refresh_after=)`, sync and async, and
through `cached_method`."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

import pytest
from support import wait_for

from moka_py import cached, cached_method

AFTER = 0.05


@pytest.mark.parametrize("wait_concurrent", [False, True])
def test_sync_stats(wait_concurrent: bool) -> None:
    @cached(maxsize=10, stats=True, wait_concurrent=wait_concurrent)
    def f(x: int) -> int:
        if x < 0:
            raise ValueError(x)
        return x

    f(1)
    f(1)
    f(2)
    with pytest.raises(ValueError):
        f(-1)
    s = f.cache.stats()
    assert (s.hits, s.misses, s.loads, s.load_failures) == (1, 3, 2, 1)
    info = f.cache_info()
    assert (info.hits, info.misses) == (1, 3)


def test_without_stats_the_cache_says_so() -> None:
    @cached(maxsize=10)
    def f(x: int) -> int:
        return x

    with pytest.raises(ValueError, match="stats=True"):
        f.cache.stats()


@pytest.mark.parametrize("wait_concurrent", [False, True])
def test_async_stats(wait_concurrent: bool) -> None:
    @cached(maxsize=10, stats=True, wait_concurrent=wait_concurrent)
    async def f(x: int) -> int:
        await asyncio.sleep(0)
        return x

    async def main() -> None:
        assert await f(1) == 1
        assert await f(1) == 1
        assert await f(2) == 2

    asyncio.run(main())
    s = f.cache.stats()
    assert (s.hits, s.misses, s.loads) == (1, 2, 2)


def test_sync_refresh_returns_old_value_and_reloads_once(run_threads: Any) -> None:
    calls: list[int] = []
    release = threading.Event()

    @cached(maxsize=10, refresh_after=AFTER)
    def f(x: int) -> int:
        calls.append(x)
        if len(calls) > 1:
            assert release.wait(10)
        return 10 * len(calls) + x

    assert f(1) == 11
    time.sleep(AFTER * 2)
    results = run_threads(lambda i: [f(1) for _ in range(20)], 8)
    assert all(v == 11 for r in results for v in r)
    release.set()
    wait_for(lambda: f.cache.get(1) == 21)
    assert calls == [1, 1]
    assert f(1) == 21
    assert f.cache_info().misses == 1


def test_sync_refresh_respects_cache_if() -> None:
    results = itertools.chain([1, -1], itertools.repeat(2))
    calls = [0]

    @cached(maxsize=10, refresh_after=AFTER, cache_if=lambda r: r > 0)
    def f() -> int:
        calls[0] += 1
        return next(results)

    assert f() == 1
    time.sleep(AFTER * 2)
    assert f() == 1  # stale: starts a reload, which gives -1, not stored
    # Each call on the stale entry starts a reload when none is in flight (how long
    # the first one takes is the machine's business): until one stores 2, every call
    # is served the 1, never the -1.
    seen: list[int] = []

    def refreshed() -> bool:
        seen.append(f())
        return f.cache.values() == [2]

    wait_for(refreshed)
    assert set(seen) <= {1, 2}
    assert calls[0] >= 3


def test_async_refresh_is_a_task_on_the_callers_loop() -> None:
    loops: list[asyncio.AbstractEventLoop] = []
    n = 0

    @cached(maxsize=10, refresh_after=AFTER)
    async def f(x: int) -> int:
        nonlocal n
        n += 1
        loops.append(asyncio.get_running_loop())
        await asyncio.sleep(0.01)
        return n

    async def main() -> None:
        assert await f(1) == 1
        await asyncio.sleep(AFTER * 2)
        assert [await f(1) for _ in range(5)] == [1] * 5
        await asyncio.sleep(0.05)
        assert await f(1) == 2
        assert loops == [asyncio.get_running_loop()] * 2

    asyncio.run(main())
    assert n == 2


@pytest.mark.thread_unsafe  # swaps the process-wide sys.unraisablehook
def test_async_refresh_failure_keeps_value(unraisable: list[Any]) -> None:
    fail = False

    @cached(maxsize=10, refresh_after=AFTER, wait_concurrent=True)
    async def f() -> str:
        if fail:
            raise RuntimeError("reload failed")
        return "ok"

    async def main() -> None:
        nonlocal fail
        assert await f() == "ok"
        await asyncio.sleep(AFTER * 2)
        fail = True
        assert await f() == "ok"
        await asyncio.sleep(0.02)
        assert await f() == "ok"

    asyncio.run(main())
    assert unraisable and all(isinstance(u.exc_value, RuntimeError) for u in unraisable)


def test_cached_method_options() -> None:
    class Prices:
        def __init__(self) -> None:
            self.calls = 0

        @cached_method(maxsize=10, stats=True, refresh_after=AFTER)
        def quote(self, symbol: str) -> int:
            self.calls += 1
            return self.calls

    p = Prices()
    assert p.quote("A") == 1
    assert p.quote("A") == 1
    time.sleep(AFTER * 2)
    assert p.quote("A") == 1
    wait_for(lambda: p.quote.cache.get(p.quote.cache.keys()[0]) == 2)
    s = p.quote.cache.stats()
    assert s.loads == 2
    assert p.quote.cache_parameters()["refresh_after"] == AFTER


def test_bad_options_raise_at_decoration() -> None:
    with pytest.raises(ValueError, match="shorter than ttl"):
        cached(ttl=1, refresh_after=2)
    with pytest.raises(ValueError, match="refresh_after"):
        cached(refresh_after=-1)
