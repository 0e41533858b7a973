"""`moka_py.cached` on `async def` functions, with and without wait_concurrent."""

from __future__ import annotations

import asyncio
import gc
import inspect
import threading
import time
from typing import Any

import pytest
from support import run_threads

from moka_py import cached


def test_plain_async_hit_and_miss() -> None:
    calls: list[int] = []

    @cached(maxsize=8)
    async def f(x: int) -> list[int]:
        calls.append(x)
        await asyncio.sleep(0)
        return [x]

    assert inspect.iscoroutinefunction(f)

    async def main() -> None:
        a = await f(1)
        b = await f(1)
        assert a is b

    asyncio.run(main())
    asyncio.run(main())  # a second loop: still a hit
    assert calls == [1]
    assert f.cache_info().hits == 3


def test_coalescing_one_task_same_object() -> None:
    calls: list[int] = []

    @cached(wait_concurrent=True)
    async def f(x: int) -> object:
        calls.append(x)
        await asyncio.sleep(0.02)
        return object()

    async def main() -> list[object]:
        return await asyncio.gather(*(f(5) for _ in range(50)))

    results = asyncio.run(main())
    assert calls == [5]
    assert all(r is results[0] for r in results)
    assert asyncio.run(main())[0] is results[0]  # cached, no new call
    assert calls == [5]


def _collect_loop_errors(loop: asyncio.AbstractEventLoop, sink: list[dict[str, Any]]) -> None:
    loop.set_exception_handler(lambda _loop, context: sink.append(context))


def test_coalescing_exception_fan_out_not_cached_no_unretrieved_warning() -> None:
    calls: list[int] = []
    loop_errors: list[dict[str, Any]] = []

    @cached(wait_concurrent=True)
    async def f(x: int) -> int:
        calls.append(x)
        await asyncio.sleep(0.02)
        if len(calls) == 1:
            raise KeyError("boom")
        return x

    async def main() -> list[Any]:
        _collect_loop_errors(asyncio.get_running_loop(), loop_errors)
        return await asyncio.gather(*(f(1) for _ in range(10)), return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(r, KeyError) for r in results)
    assert len(calls) == 1
    assert asyncio.run(main()) == [1] * 10  # not cached: retried
    assert len(calls) == 2
    gc.collect()
    assert loop_errors == []


def test_cancelling_one_caller_does_not_cancel_the_computation() -> None:
    calls: list[int] = []

    @cached(wait_concurrent=True)
    async def f(x: int) -> str:
        calls.append(x)
        await asyncio.sleep(0.1)
        return "done"

    async def main() -> None:
        first = asyncio.ensure_future(f(1))
        second = asyncio.ensure_future(f(1))
        await asyncio.sleep(0.01)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert await second == "done"
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(f(2), 0.01)
        assert await f(2) == "done"  # the timed-out computation went on

    asyncio.run(main())
    assert calls == [1, 2]


def test_cancelled_computation_is_not_cached() -> None:
    calls: list[int] = []

    @cached(wait_concurrent=True)
    async def f(x: int) -> int:
        calls.append(x)
        if len(calls) == 1:
            raise asyncio.CancelledError
        return x

    async def main() -> int:
        return await f(3)

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(main())
    assert asyncio.run(main()) == 3
    assert calls == [3, 3]


def test_several_loops_in_threads() -> None:
    calls: list[int] = []
    lock = threading.Lock()

    @cached(wait_concurrent=True)
    async def f(x: int) -> int:
        with lock:
            calls.append(x)
        await asyncio.sleep(0.05)
        return x * 10

    def in_thread(i: int) -> list[int]:
        async def main() -> list[int]:
            return await asyncio.gather(*(f(i % 2) for _ in range(20)))

        return asyncio.run(main())

    results = run_threads(in_thread, 4)
    assert [r[0] for r in results] == [0, 10, 0, 10]
    # Each loop coalesces its own callers: at most one call per key per loop.
    assert 2 <= len(calls) <= 4
    before = len(calls)
    assert in_thread(0) == [0] * 20  # cached by another loop: a hit
    assert len(calls) == before


def test_ttl_starts_when_result_is_stored() -> None:
    calls: list[int] = []

    @cached(ttl=0.6, wait_concurrent=True)
    async def f(x: int) -> int:
        calls.append(x)
        await asyncio.sleep(0.8)  # longer than the ttl
        return x

    async def main() -> None:
        await f(1)
        await f(1)  # stored 0 s ago: still fresh

    asyncio.run(main())
    assert calls == [1]
    time.sleep(1.0)
    asyncio.run(main())
    assert calls == [1, 1]


# --- a hit is an already finished awaitable ---------------------------------------------


def test_hit_is_a_finished_awaitable_that_asyncio_accepts() -> None:
    """A hit hands back the stored result without running a coroutine; it is
    still accepted wherever asyncio takes a coroutine."""
    calls: list[int] = []

    @cached(maxsize=8)
    async def f(x: int) -> int:
        calls.append(x)
        return x * 10

    async def main() -> None:
        assert await f(1) == 10
        hit = f(1)
        assert asyncio.iscoroutine(hit)
        assert await hit == 10
        assert await hit == 10  # the same object may be awaited again
        assert await asyncio.create_task(f(1)) == 10
        assert await asyncio.gather(f(1), f(1)) == [10, 10]
        assert await asyncio.wait_for(f(1), timeout=5) == 10

    asyncio.run(main())
    assert calls == [1]
    assert f.cache_info().hits == 5


@pytest.mark.parametrize(
    "result",
    [(1, 2), (), ValueError("returned, not raised"), None, [3]],
    ids=["tuple", "empty-tuple", "exception-object", "None", "list"],
)
def test_hit_returns_any_result_unchanged(result: Any) -> None:
    """Tuples and exception objects are results like any other (they travel in
    StopIteration, where they could be mistaken for its arguments)."""

    @cached(maxsize=8)
    async def f() -> Any:
        return result

    async def main() -> None:
        assert await f() is result
        assert await f() is result
        assert await asyncio.create_task(f()) is result

    asyncio.run(main())
    assert f.cache_info().hits == 2


def test_hit_driven_by_send_and_throw_like_a_coroutine() -> None:
    @cached(maxsize=8)
    async def f() -> str:
        return "done"

    asyncio.run(f())
    hit = f()
    with pytest.raises(StopIteration) as stop:
        hit.send(None)
    assert stop.value.value == "done"
    with pytest.raises(KeyError, match="thrown"):
        hit.throw(KeyError("thrown"))
    hit.close()


def test_async_weigher_sees_the_results() -> None:
    seen: list[Any] = []

    def weigher(key: Any, value: Any) -> int:
        seen.append(value)
        return len(value)

    @cached(maxsize=5, weigher=weigher)
    async def f(n: int) -> str:
        return "x" * n

    async def main() -> None:
        for n in (2, 2, 3):
            assert await f(n) == "x" * n

    asyncio.run(main())
    assert seen == ["xx", "xxx"]
