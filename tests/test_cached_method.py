"""`moka_py.cached_method`: one cache per instance, freed with it; the instance
is not part of the key, need not be hashable and is not kept alive."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from typing import Any

import pytest
from conftest import run_threads
from support import collect_on_pypy

from moka_py import CacheInfo, Moka, cached_method


class Account:
    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.calls: list[Any] = []

    @cached_method(maxsize=8)
    def balance(self, currency: str) -> str:
        self.calls.append(currency)
        return f"{self.owner}:{currency}"

    @cached_method
    def name(self) -> str:
        self.calls.append("name")
        return self.owner


def test_each_instance_has_its_own_cache() -> None:
    a, b = Account("a"), Account("b")
    assert a.balance("eur") == "a:eur"
    assert a.balance("eur") == "a:eur"
    assert b.balance("eur") == "b:eur"
    assert a.calls == ["eur"]
    assert b.calls == ["eur"]
    assert a.balance.cache_info() == CacheInfo(hits=1, misses=1, maxsize=8, currsize=1)
    assert b.balance.cache_info() == CacheInfo(hits=0, misses=1, maxsize=8, currsize=1)
    a.balance.cache_clear()
    assert a.balance.cache_info().currsize == 0
    assert b.balance.cache_info().currsize == 1
    assert a.balance.cache is not b.balance.cache
    assert isinstance(a.balance.cache, Moka)
    # The instance is not part of the key.
    assert a.balance.cache.keys() == [] and b.balance.cache.keys() == ["eur"]
    assert a.name() == "a" and a.name() == "a"
    assert a.name.cache_info().hits == 1


def test_class_access_and_metadata() -> None:
    descriptor = Account.balance
    assert Account.__dict__["balance"] is descriptor
    assert descriptor.__name__ == "balance"
    assert descriptor.__wrapped__ is Account.__dict__["balance"].__wrapped__
    a = Account("a")
    assert a.balance is a.balance  # one cached function per instance
    assert a.balance.__name__ == "balance"
    assert a.balance.__qualname__ == "Account.balance"
    # The method's annotations, on the descriptor and on an instance's function
    # (3.14's functools.update_wrapper copies __annotate__, not __annotations__).
    want = {"currency": "str", "return": "str"}
    assert descriptor.__annotations__ == want
    assert a.balance.__annotations__ == want


def test_instances_are_freed_with_their_cache() -> None:
    a = Account("a")
    a.balance("eur")
    instance = weakref.ref(a)
    cache = weakref.ref(a.balance.cache)
    del a
    gc.collect()
    collect_on_pypy()
    assert instance() is None
    assert cache() is None
    assert Account.__dict__["balance"]._caches == {}


def test_unhashable_instance() -> None:
    class Point:
        __hash__ = None  # type: ignore[assignment]

        def __init__(self, x: int) -> None:
            self.x = x

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Point) and other.x == self.x

        @cached_method()
        def scaled(self, k: int) -> int:
            return self.x * k

    p, q = Point(2), Point(2)
    assert p.scaled(3) == 6 and q.scaled(3) == 6
    assert p.scaled.cache_info().misses == 1
    assert q.scaled.cache_info().misses == 1  # equal instances, separate caches


def test_slots_without_weakref_name_the_fix() -> None:
    class Slotted:
        __slots__ = ("x",)

        def __init__(self) -> None:
            self.x = 1

        @cached_method()
        def get(self) -> int:
            return self.x

    try:
        weakref.ref(Slotted())
    except TypeError:
        with pytest.raises(TypeError, match=r"'__weakref__'.*__slots__"):
            Slotted().get()
    else:  # PyPy: every object takes weak references, slots or not
        assert Slotted().get() == 1

    class Weak:
        __slots__ = ("__weakref__", "x")

        def __init__(self) -> None:
            self.x = 1

        @cached_method()
        def get(self) -> int:
            return self.x

    assert Weak().get() == 1


def test_first_use_from_eight_threads_makes_one_cache() -> None:
    computed: list[int] = []
    barrier = threading.Barrier(8)

    class Service:
        @cached_method(wait_concurrent=True)
        def value(self, x: int) -> int:
            computed.append(x)
            return x

    for _ in range(20):
        service = Service()
        computed.clear()

        def caller(_: int, service: Service = service) -> tuple[int, int]:
            barrier.wait(10)
            bound = service.value
            return id(bound.cache), bound(1)

        results = run_threads(caller, 8)
        assert len({cache_id for cache_id, _ in results}) == 1
        assert [value for _, value in results] == [1] * 8
        assert computed == [1]
        assert service.value.cache_info() == CacheInfo(hits=7, misses=1, maxsize=128, currsize=1)


def test_async_method_and_options() -> None:
    class Client:
        def __init__(self) -> None:
            self.fetched: list[str] = []

        @cached_method(wait_concurrent=True, key=lambda path, **_: path.lower())
        async def get(self, path: str, timeout: float = 1.0) -> str:
            self.fetched.append(path)
            await asyncio.sleep(0.01)
            return path.lower()

    client = Client()

    async def main(client: Client) -> list[str]:
        return await asyncio.gather(*(client.get(p) for p in ["/A", "/a", "/A"]))

    assert asyncio.run(main(client)) == ["/a", "/a", "/a"]
    assert client.fetched == ["/A"]
    assert client.get.cache_info() == CacheInfo(hits=2, misses=1, maxsize=128, currsize=1)
    assert client.get.cache_contains("/A")
    assert client.get.cache_invalidate("/a")
    ref = weakref.ref(client)
    del client
    gc.collect()
    assert ref() is None


def test_a_kept_bound_method_does_not_keep_the_instance() -> None:
    a = Account("a")
    bound = a.balance
    del a
    gc.collect()
    with pytest.raises(ReferenceError, match="no longer exists"):
        bound("usd")
