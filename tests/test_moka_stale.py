"""`Moka(..., ttl=, stale_if_error=)`: a load that raises returns the value
that expired at most `stale_if_error` ago instead, stores nothing, and the
next call loads again; `@cached(stale_if_error=)` likewise."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from support import run_threads

from moka_py import Moka, cached

TTL = 0.15


class Down(Exception):
    pass


def fail() -> int:
    raise Down("the database is down")


def expired(c: Moka[str, int], key: str) -> None:
    """Waits until `key` has expired for every read."""
    time.sleep(TTL * 2)
    assert c.get(key) is None and key not in c


def test_options() -> None:
    assert Moka(10, ttl=1, stale_if_error=30).stale_if_error == 30.0
    assert Moka(10, ttl=1).stale_if_error is None
    with pytest.raises(ValueError, match="stale_if_error keeps values past their ttl"):
        Moka(10, stale_if_error=30)
    with pytest.raises(ValueError, match="needs a ttl, and no tti"):
        Moka(10, ttl=1, tti=1, stale_if_error=30)
    with pytest.raises(ValueError, match="stale_if_error"):
        Moka(10, ttl=1, stale_if_error=0)
    with pytest.raises(TypeError, match="stale_if_error"):
        Moka(10, ttl=1, stale_if_error="1")  # type: ignore[arg-type]


def test_a_failed_load_returns_the_expired_value_and_stores_nothing() -> None:
    c: Moka[str, int] = Moka(10, ttl=TTL, stale_if_error=30, stats=True)
    assert c.get_with("k", lambda: 1) == 1
    expired(c, "k")
    assert len(c) == 0 and c.keys() == [] and c.get_many(["k"]) == {}
    assert c.get_with("k", fail) == 1
    assert c.stats().stale_served == 1 and c.stats().load_failures == 1
    # Nothing stored: still absent, and the next call loads again.
    assert c.get("k") is None
    assert c.get_with("k", fail) == 1
    assert c.get_with("k", lambda: 2) == 2 and c.get("k") == 2
    assert c.stats().stale_served == 2
    # A key never loaded has nothing to return.
    with pytest.raises(Down):
        c.get_with("never", fail)


def test_no_stale_value_past_the_window_after_a_tag_or_a_removal() -> None:
    c: Moka[str, int] = Moka(10, ttl=TTL, stale_if_error=TTL)
    c.set("k", 1)
    time.sleep(TTL * 2 + TTL * 2)
    with pytest.raises(Down):
        c.get_with("k", fail)
    c = Moka(10, ttl=TTL, stale_if_error=30)
    c.set("tagged", 1, tags=["t"])
    c.set("removed", 1)
    c.invalidate_tags("t")
    c.remove("removed")
    time.sleep(TTL * 2)
    for key in ("tagged", "removed"):
        with pytest.raises(Down):
            c.get_with(key, fail)
    # A fresh value is a hit: the loader does not run.
    c.set("fresh", 3)
    assert c.get_with("fresh", fail) == 3


def test_only_exceptions_are_answered() -> None:
    class Stop(BaseException):
        pass

    def stop() -> int:
        raise Stop

    c: Moka[str, int] = Moka(10, ttl=TTL, stale_if_error=30)
    c.set("k", 1)
    expired(c, "k")
    with pytest.raises(Stop):
        c.get_with("k", stop)


def test_the_waiters_of_a_failed_load_receive_the_expired_value() -> None:
    c: Moka[str, int] = Moka(10, ttl=TTL, stale_if_error=30, stats=True)
    c.set("k", 1)
    expired(c, "k")
    calls: list[int] = []
    gate = threading.Event()

    def slow_fail() -> int:
        calls.append(1)
        gate.wait(0.3)
        raise Down

    assert run_threads(lambda i: c.get_with("k", slow_fail), 4) == [1, 1, 1, 1]
    assert 1 <= len(calls) <= 4 and c.get("k") is None


def test_aget_with() -> None:
    c: Moka[str, int] = Moka(10, ttl=TTL, stale_if_error=30, stats=True)

    async def one() -> int:
        return 1

    async def down() -> int:
        raise Down

    async def scenario() -> None:
        assert await c.aget_with("k", one) == 1
        await asyncio.sleep(TTL * 2)
        assert c.get("k") is None
        assert await c.aget_with("k", down) == 1
        assert c.get("k") is None
        with pytest.raises(Down):
            await c.aget_with("never", down)

    asyncio.run(scenario())
    assert c.stats().stale_served == 1


@pytest.mark.parametrize("wait_concurrent", [False, True])
def test_cached(wait_concurrent: bool) -> None:
    up = [True]

    @cached(ttl=TTL, stale_if_error=30, wait_concurrent=wait_concurrent, stats=True)
    def price(item: str) -> int:
        if not up[0]:
            raise Down
        return len(item)

    assert price("abc") == 3
    assert price.cache_parameters()["stale_if_error"] == 30
    time.sleep(TTL * 2)
    up[0] = False
    assert price("abc") == 3
    assert not price.cache_contains("abc")
    with pytest.raises(Down):
        price("other")
    assert price.cache.stats().stale_served == 1
    up[0] = True
    assert price("abc") == 3 and price.cache_contains("abc")


@pytest.mark.parametrize("wait_concurrent", [False, True])
def test_async_cached(wait_concurrent: bool) -> None:
    up = [True]

    @cached(ttl=TTL, stale_if_error=30, wait_concurrent=wait_concurrent)
    async def price(item: str) -> int:
        if not up[0]:
            raise Down
        return len(item)

    async def scenario() -> None:
        assert await price("abc") == 3
        await asyncio.sleep(TTL * 2)
        up[0] = False
        assert await price("abc") == 3
        assert not price.cache_contains("abc")
        with pytest.raises(Down):
            await price("other")

    asyncio.run(scenario())
