"""`moka_py.cached` on plain functions: the functools.lru_cache surface and
coalescing of concurrent calls (wait_concurrent=True) across real threads."""

from __future__ import annotations

import functools
import inspect
import threading
import time
import typing
from typing import Any

import pytest
from support import run_threads

from moka_py import CacheInfo, cached


def test_caches_and_counts() -> None:
    calls: list[tuple[int, int]] = []

    @cached(maxsize=16)
    def add(x: int, y: int) -> int:
        calls.append((x, y))
        return x + y

    assert add(1, 2) == 3
    assert add(1, 2) == 3
    assert add(2, 2) == 4
    assert calls == [(1, 2), (2, 2)]
    assert add.cache_info() == CacheInfo(hits=1, misses=2, maxsize=16, currsize=2)
    add.cache_clear()
    assert add.cache_info() == CacheInfo(hits=0, misses=0, maxsize=16, currsize=0)
    assert add(1, 2) == 3
    assert len(calls) == 3


def test_functools_surface() -> None:
    def original(x: int) -> int:
        """Doc."""
        return x

    wrapped = cached(maxsize=8, ttl=3.0, tti=2.0)(original)
    assert wrapped.__wrapped__ is original
    assert wrapped.__name__ == "original"
    assert wrapped.__doc__ == "Doc."
    assert wrapped.__qualname__ == original.__qualname__
    assert wrapped.cache_parameters() == {
        "maxsize": 8,
        "typed": False,
        "ttl": 3.0,
        "tti": 2.0,
        "wait_concurrent": False,
        "policy": "tiny_lfu",
        "key": None,
        "cache_if": None,
        "stats": False,
        "refresh_after": None,
        "tags": None,
        "stale_if_error": None,
    }
    info = wrapped.cache_info()
    assert info._fields == functools.lru_cache(lambda: 0).cache_info()._fields


def test_bare_decorator() -> None:
    @cached
    def ident(x: int) -> int:
        return x

    assert ident(3) == 3
    assert ident(3) == 3
    assert ident.cache_info().hits == 1
    assert ident.cache_info().maxsize == 128


def test_keyword_order_and_typed() -> None:
    calls: list[Any] = []

    @cached()
    def f(*args: Any, **kwargs: Any) -> int:
        calls.append((args, kwargs))
        return len(calls)

    assert f(a=1, b=2) == f(b=2, a=1)
    assert f(1) == f(1.0)
    assert len(calls) == 2

    @cached(typed=True)
    def g(x: Any) -> Any:
        calls.append(x)
        return x

    assert type(g(1)) is int
    assert type(g(1.0)) is float
    assert g.cache_info().misses == 2


def test_positional_and_keyword_calls_are_distinct_like_lru_cache() -> None:
    @cached()
    def f(x: int = 0) -> object:
        return object()

    assert f(1) is f(1)
    assert f(x=1) is f(x=1)
    # lru_cache keys f(1) and f(x=1) apart too; only the result must be right.
    assert f.cache_info().misses == 2


def test_methods_static_and_class_methods() -> None:
    class Box:
        created = 0

        def __init__(self, n: int) -> None:
            self.n = n

        @cached()
        def double(self) -> int:
            Box.created += 1
            return self.n * 2

        @staticmethod
        @cached()
        def triple(x: int) -> int:
            Box.created += 1
            return x * 3

        @classmethod
        @cached()
        def name(cls) -> str:
            Box.created += 1
            return cls.__name__

    a, b = Box(1), Box(2)
    assert (a.double(), a.double(), b.double()) == (2, 2, 4)
    assert Box.created == 2  # the instance is part of the key
    assert (Box.triple(3), a.triple(3)) == (9, 9)
    assert (Box.name(), a.name()) == ("Box", "Box")
    assert Box.created == 4


def test_maxsize_zero_and_none() -> None:
    calls: list[int] = []

    @cached(maxsize=0)
    def never(x: int) -> int:
        calls.append(x)
        return x

    never(1)
    never(1)
    assert calls == [1, 1]

    @cached(maxsize=None)
    def always(x: int) -> int:
        calls.append(x)
        return x

    for i in range(1000):
        always(i)
    for i in range(1000):
        always(i)
    assert always.cache_info().hits == 1000


def test_ttl_expires() -> None:
    calls: list[int] = []

    @cached(ttl=0.5)
    def f(x: int) -> int:
        calls.append(x)
        return x

    f(1)
    f(1)
    assert calls == [1]
    time.sleep(0.8)
    f(1)
    assert calls == [1, 1]


def test_exceptions_are_not_cached() -> None:
    calls: list[int] = []

    @cached()
    def f(x: int) -> int:
        calls.append(x)
        if len(calls) == 1:
            raise ValueError("first")
        return x

    with pytest.raises(ValueError, match="first"):
        f(1)
    assert f(1) == 1
    assert f(1) == 1
    assert calls == [1, 1]


def test_bad_options_raise_at_decoration() -> None:
    with pytest.raises(ValueError, match="ttl must be positive"):
        cached(ttl=0)
    with pytest.raises(ValueError, match="tiny_lfu"):
        cached(policy="fifo")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        cached(maxsize="10")  # type: ignore[call-overload]


def test_unhashable_argument_raises_type_error() -> None:
    @cached()
    def f(x: Any) -> Any:
        return x

    with pytest.raises(TypeError):
        f([1, 2])


def test_wait_concurrent_sixteen_threads_one_call() -> None:
    calls: list[int] = []
    gate = threading.Event()

    @cached(wait_concurrent=True)
    def slow(x: int) -> object:
        calls.append(x)
        gate.wait(5)
        return object()

    def caller(i: int) -> object:
        if i == 0:
            threading.Timer(0.2, gate.set).start()
        return slow(7)

    results = run_threads(caller, 16)
    assert calls == [7]
    assert all(r is results[0] for r in results)


def test_wait_concurrent_exception_reaches_every_thread_and_is_not_cached() -> None:
    calls: list[int] = []

    @cached(wait_concurrent=True)
    def failing(x: int) -> int:
        calls.append(x)
        time.sleep(0.2)
        if len(calls) == 1:
            raise LookupError("boom")
        return x

    def caller(_: int) -> BaseException | None:
        try:
            failing(1)
        except LookupError as e:
            return e
        return None

    errors = run_threads(caller, 16)
    failed = [e for e in errors if e is not None]
    # Callers that arrived after the failure retried and got the value.
    assert failed, errors
    assert all(str(e) == "boom" for e in failed)
    assert len({id(e) for e in failed}) == len(failed)  # no shared exception object
    assert failing(1) == 1
    assert calls.count(1) >= 2


def test_wait_concurrent_recursion_on_same_key_raises() -> None:
    @cached(wait_concurrent=True)
    def recurse(x: int) -> int:
        return recurse(x)

    def caller(_: int) -> None:
        with pytest.raises(RuntimeError, match="same key"):
            recurse(1)

    run_threads(caller, 1)


def test_wait_concurrent_other_keys_nest() -> None:
    @cached(wait_concurrent=True)
    def fib(n: int) -> int:
        return n if n < 2 else fib(n - 1) + fib(n - 2)

    assert fib(60) == 1548008755920


def test_counts_are_exact_across_threads() -> None:
    @cached(maxsize=100)
    def f(x: int) -> int:
        return x

    def caller(i: int) -> None:
        for n in range(2000):
            f(n % 10)

    run_threads(caller, 8)
    info = f.cache_info()
    assert info.hits + info.misses == 8 * 2000
    assert 10 <= info.misses <= 8 * 10  # a key can miss once per racing thread
    assert info.currsize == 10


def test_binds_like_a_function() -> None:
    class A:
        @cached()
        def who(self) -> A:
            return self

    a = A()
    assert a.who() is a
    assert A.who(a) is a
    assert A.__dict__["who"].__get__(None, A) is A.__dict__["who"]
    assert A.who.__name__ == "who"


def test_make_key_shapes() -> None:
    from moka_py._moka_py import _KWARGS_MARK, make_key

    assert make_key((1,), {}, False) == 1
    assert make_key((1.0,), None, False) == 1
    assert make_key(("a", 2), None, False) == ("a", 2)
    assert make_key((1,), {"b": 2, "a": 1}, False) == (1, _KWARGS_MARK, ("a", 1), ("b", 2))
    assert make_key((1,), {"a": 1.0}, True) == (1, _KWARGS_MARK, ("a", 1.0), int, float)
    assert make_key(([1],), None, False) == ([1],)  # unhashable keys fail at lookup


def test_annotations_are_the_functions() -> None:
    # On 3.14, functools.update_wrapper copies __annotate__, not __annotations__:
    # the wrapper must still show the function's, not its class's.
    def original(x: int, *, name: str = "") -> list[int]:
        return [x]

    wrapped = cached(maxsize=8)(original)
    assert wrapped.__annotations__ == original.__annotations__
    assert wrapped.__annotations__ == {"x": "int", "name": "str", "return": "list[int]"}
    assert typing.get_type_hints(wrapped) == {"x": int, "name": str, "return": list[int]}
    assert inspect.signature(wrapped) == inspect.signature(original)

    async def fetch(key: str) -> bytes:
        return key.encode()

    assert cached(maxsize=8)(fetch).__annotations__ == {"key": "str", "return": "bytes"}
    wrapped.__annotations__ = {"x": "float"}
    assert wrapped.__annotations__ == {"x": "float"}
    del wrapped.__annotations__
    assert wrapped.__annotations__ == original.__annotations__
