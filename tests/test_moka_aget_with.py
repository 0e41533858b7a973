"""`await cache.aget_with(key, initializer)`: one computation per key and
event loop, failure and cancellation rules, several loops in several threads."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from moka_py import Moka


def test_coalesces_awaiters_of_one_key() -> None:
    cache: Moka[str, object] = Moka(100, stats=True)
    calls = 0

    async def init() -> object:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.02)
        return object()

    async def main() -> list[object]:
        return await asyncio.gather(*[cache.aget_with("k", init) for _ in range(20)])

    results = asyncio.run(main())
    assert calls == 1
    assert all(r is results[0] for r in results)
    assert cache.get("k") is results[0]
    s = cache.stats()
    assert (s.misses, s.hits, s.loads) == (20, 1, 1)  # 20 awaiters, then the get


def test_hit_is_a_finished_awaitable_and_a_coroutine() -> None:
    cache: Moka[str, int] = Moka(100)
    cache["k"] = 5

    async def init() -> int:
        raise AssertionError("not called on a hit")

    async def main() -> tuple[int, int]:
        task = asyncio.create_task(cache.aget_with("k", init))  # type: ignore[arg-type]
        return await cache.aget_with("k", init), await task

    assert asyncio.run(main()) == (5, 5)


def test_value_cached_by_a_thread_is_a_hit() -> None:
    cache: Moka[str, str] = Moka(100)
    t = threading.Thread(target=lambda: cache.get_with("k", lambda: "thread"))
    t.start()
    t.join(10)
    assert not t.is_alive()

    async def init() -> str:
        return "loop"

    assert asyncio.run(cache.aget_with("k", init)) == "thread"  # type: ignore[arg-type]


def test_failure_is_not_cached_and_reaches_every_awaiter() -> None:
    cache: Moka[str, int] = Moka(100, stats=True)
    calls = 0

    async def fail() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        raise ValueError("nope")

    async def ok() -> int:
        return 7

    async def main() -> None:
        results = await asyncio.gather(
            *[cache.aget_with("k", fail) for _ in range(5)], return_exceptions=True
        )
        assert all(isinstance(r, ValueError) for r in results)
        assert "k" not in cache
        assert await cache.aget_with("k", ok) == 7

    asyncio.run(main())
    assert calls == 1
    s = cache.stats()
    assert (s.load_failures, s.loads) == (1, 1)


def test_cancelling_one_awaiter_does_not_cancel_the_others() -> None:
    cache: Moka[str, str] = Moka(100)
    started = 0

    async def init() -> str:
        nonlocal started
        started += 1
        await asyncio.sleep(0.05)
        return "v"

    async def main() -> None:
        first = asyncio.ensure_future(cache.aget_with("k", init))
        second = asyncio.ensure_future(cache.aget_with("k", init))
        await asyncio.sleep(0.01)
        first.cancel()
        assert await second == "v"
        with pytest.raises(asyncio.CancelledError):
            await first
        assert cache.get("k") == "v"

    asyncio.run(main())
    assert started == 1


def test_cancelling_every_awaiter_still_caches() -> None:
    cache: Moka[str, str] = Moka(100)

    async def init() -> str:
        await asyncio.sleep(0.02)
        return "v"

    async def main() -> None:
        # asyncio.TimeoutError: the builtin TimeoutError on 3.11+, its own class on 3.10.
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(cache.aget_with("k", init), 0.001)
        await asyncio.sleep(0.05)
        assert cache.get("k") == "v"

    asyncio.run(main())


def test_several_loops_in_several_threads(run_threads: Any) -> None:
    cache: Moka[int, tuple[int, int]] = Moka(1000)
    calls: list[tuple[int, int]] = []
    lock = threading.Lock()

    def in_thread(t: int) -> list[tuple[int, int]]:
        async def main() -> list[tuple[int, int]]:
            async def init(k: int) -> tuple[int, int]:
                with lock:
                    calls.append((t, k))
                await asyncio.sleep(0.005)
                return (k, k)

            out = []
            for k in range(20):
                got = await asyncio.gather(
                    *[cache.aget_with(k, lambda k=k: init(k)) for _ in range(4)]
                )
                assert all(g == (k, k) for g in got)
                out.extend(got)
            return out

        return asyncio.run(main())

    results = run_threads(in_thread, 4)
    assert all(len(r) == 80 for r in results)
    # One computation per key per loop at most: 4 loops, 20 keys.
    assert len(calls) <= 4 * 20
    per_loop: dict[int, list[int]] = {}
    for t, k in calls:
        per_loop.setdefault(t, []).append(k)
    assert all(len(ks) == len(set(ks)) for ks in per_loop.values())
    assert sorted(cache.keys()) == list(range(20))


def test_does_not_block_the_loop_while_a_thread_loads() -> None:
    cache: Moka[str, str] = Moka(100)
    release = threading.Event()
    loading = threading.Event()

    def slow() -> str:
        loading.set()
        assert release.wait(10)
        return "thread"

    t = threading.Thread(target=lambda: cache.get_with("k", slow))
    t.start()
    assert loading.wait(10)

    async def init() -> str:
        return "loop"

    async def main() -> str:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        tick = asyncio.ensure_future(ticker())
        value = await cache.aget_with("k", init)
        await asyncio.sleep(0.01)
        tick.cancel()
        assert ticks > 0
        return value

    assert asyncio.run(main()) == "loop"
    release.set()
    t.join(10)
    assert not t.is_alive()


@pytest.mark.thread_unsafe  # swaps the process-wide sys.unraisablehook
def test_refresh_runs_as_a_task_on_the_loop(unraisable: list[Any]) -> None:
    cache: Moka[str, int] = Moka(100, refresh_after=0.05)
    n = 0

    async def init() -> int:
        nonlocal n
        n += 1
        await asyncio.sleep(0.01)
        return n

    async def fail() -> int:
        raise ValueError("reload failed")

    async def main() -> None:
        assert await cache.aget_with("k", init) == 1
        await asyncio.sleep(0.1)
        # Stale: the old value at once, one reload however many reads.
        assert [await cache.aget_with("k", init) for _ in range(5)] == [1] * 5
        await asyncio.sleep(0.05)
        assert cache.get("k") == 2
        assert n == 2
        await asyncio.sleep(0.1)
        assert await cache.aget_with("k", fail) == 2
        await asyncio.sleep(0.02)
        assert cache.get("k") == 2

    asyncio.run(main())
    assert [type(u.exc_value) for u in unraisable] == [ValueError]


def test_bad_arguments_raise_at_the_call() -> None:
    cache: Moka[Any, int] = Moka(100)

    async def init() -> int:
        return 1

    with pytest.raises(TypeError):
        cache.aget_with([], init)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        cache.aget_with("k", init, ttl=-1)


def test_ttl_applies_to_the_loaded_value() -> None:
    cache: Moka[str, int] = Moka(100)

    async def init() -> int:
        return 1

    async def main() -> None:
        assert await cache.aget_with("k", init, ttl=0.05) == 1
        assert cache.get("k") == 1
        await asyncio.sleep(0.1)
        assert cache.get("k") is None

    asyncio.run(main())


def test_initializer_raising_on_call_counts_as_a_failed_load() -> None:
    cache: Moka[str, int] = Moka(100, stats=True)

    def not_async() -> Any:
        raise RuntimeError("raised before any await")

    async def main() -> None:
        with pytest.raises(RuntimeError):
            await cache.aget_with("k", not_async)

    asyncio.run(main())
    assert cache.stats().load_failures == 1
