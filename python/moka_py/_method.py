"""``moka_py.cached_method``: a cache per instance for a method.

The descriptor keeps, for each instance that called the method, a weak
reference to it and the instance's own :func:`~moka_py.cached` function, in a
table keyed by ``id(instance)``: the instance is never hashed, never part of a
key and never kept alive by the table. The weak reference's callback removes
the entry (and with it the cache) when the instance is freed. Accessing the
method on an instance returns that instance's cached function, whose
``cache_info``/``cache_clear``/``cache`` are the instance's.
"""

from __future__ import annotations

import functools
import inspect
import threading
import weakref
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import Executor
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Generic,
    Literal,
    ParamSpec,
    TypeVar,
    cast,
    overload,
)

from moka_py._cached import CachedFunction, FunctionAnnotations, cached

if TYPE_CHECKING:
    from typing_extensions import Self

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")

_Entry = tuple["weakref.ref[Any]", CachedFunction[..., Any]]


class CachedMethod(Generic[T, P, R]):
    """What :func:`cached_method` returns: a descriptor that gives each
    instance its own cached function."""

    # The decorated function's (3.14's update_wrapper no longer copies them).
    __annotations__ = FunctionAnnotations()  # pyright: ignore[reportAssignmentType]  # a descriptor

    def __init__(
        self,
        func: Callable[Concatenate[T, P], R],
        make: Callable[[Callable[..., Any]], CachedFunction[..., Any]],
    ) -> None:
        self.__wrapped__ = func
        self._make = make
        self._name = getattr(func, "__name__", "method")
        self._caches: dict[int, _Entry] = {}
        # Reentrant: a weak reference's callback may run on this thread while
        # it holds the lock (a collection triggered inside `_create`).
        self._lock = threading.RLock()
        functools.update_wrapper(cast(Any, self), func)

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self._name = name

    @overload
    def __get__(self, obj: None, owner: type[Any] | None = None) -> Self: ...
    @overload
    def __get__(self, obj: T, owner: type[Any] | None = None) -> CachedFunction[P, R]: ...
    def __get__(self, obj: T | None, owner: type[Any] | None = None) -> Any:
        if obj is None:
            return self
        entry = self._caches.get(id(obj))
        if entry is not None and entry[0]() is obj:
            return entry[1]
        return self._create(obj)

    def _create(self, obj: T) -> CachedFunction[..., Any]:
        """The cache of ``obj``, made once however many threads ask at once."""
        with self._lock:
            entry = self._caches.get(id(obj))
            if entry is not None and entry[0]() is obj:
                return entry[1]
            key = id(obj)
            try:
                ref = weakref.ref(obj, lambda ref: self._forget(key, ref))
            except TypeError:
                raise TypeError(
                    f"cached_method {self._name!r} needs weak references to instances of "
                    f"{type(obj).__qualname__!r}, which has __slots__ without "
                    f"'__weakref__': add '__weakref__' to its __slots__"
                ) from None
            function = self._make(_through(self.__wrapped__, ref))
            self._caches[key] = (ref, function)
            return function

    def _forget(self, key: int, ref: weakref.ref[Any]) -> None:
        """The instance of ``ref`` is gone: its cache goes too."""
        with self._lock:
            entry = self._caches.get(key)
            if entry is not None and entry[0] is ref:
                del self._caches[key]


def _through(func: Callable[..., Any], ref: weakref.ref[Any]) -> Callable[..., Any]:
    """``func`` called with the instance of ``ref`` first (a plain function or
    an ``async`` one, as ``func``)."""

    def instance() -> Any:
        obj = ref()
        if obj is None:
            raise ReferenceError(f"the instance of {func.__qualname__} no longer exists")
        return obj

    async def call_async(*args: Any, **kwargs: Any) -> Any:
        return await func(instance(), *args, **kwargs)

    def call(*args: Any, **kwargs: Any) -> Any:
        return func(instance(), *args, **kwargs)

    if inspect.iscoroutinefunction(func):
        return functools.update_wrapper(call_async, func)
    return functools.update_wrapper(call, func)


@overload
def cached_method(
    maxsize: Callable[Concatenate[T, P], R],
) -> CachedMethod[T, P, R]: ...


@overload
def cached_method(
    maxsize: int | None = 128,
    typed: bool = False,
    *,
    ttl: float | None = None,
    tti: float | None = None,
    wait_concurrent: bool = False,
    policy: Literal["tiny_lfu", "lru"] = "tiny_lfu",
    weigher: Callable[[Any, Any], int] | None = None,
    key: Callable[..., Hashable] | None = None,
    cache_if: Callable[[Any], object] | None = None,
    stats: bool = False,
    refresh_after: float | None = None,
    executor: Executor | None = None,
    tags: Iterable[str] | Callable[..., Iterable[str]] | None = None,
    stale_if_error: float | None = None,
) -> Callable[[Callable[Concatenate[T, P], R]], CachedMethod[T, P, R]]: ...


def cached_method(
    maxsize: int | Callable[..., Any] | None = 128,
    typed: bool = False,
    *,
    ttl: float | None = None,
    tti: float | None = None,
    wait_concurrent: bool = False,
    policy: Literal["tiny_lfu", "lru"] = "tiny_lfu",
    weigher: Callable[[Any, Any], int] | None = None,
    key: Callable[..., Hashable] | None = None,
    cache_if: Callable[[Any], object] | None = None,
    stats: bool = False,
    refresh_after: float | None = None,
    executor: Executor | None = None,
    tags: Iterable[str] | Callable[..., Iterable[str]] | None = None,
    stale_if_error: float | None = None,
) -> Any:
    """:func:`~moka_py.cached` for methods: each instance gets its own cache.

    Takes the same options as :func:`~moka_py.cached`. The cache of an
    instance is made on its first call and freed with it; the instance is not
    part of the key (``key`` receives the other arguments), need not be
    hashable, and is not kept alive by the cache, so its class needs weak
    references (with ``__slots__``, list ``'__weakref__'``). ``obj.method`` is
    that instance's cached function: ``obj.method.cache_info()`` and
    ``obj.method.cache_clear()`` act on its cache alone.
    """
    if callable(maxsize) and not isinstance(maxsize, int):
        # Used as ``@cached_method`` without parentheses.
        return cached_method()(maxsize)
    make: Callable[[Callable[..., Any]], CachedFunction[..., Any]] = cached(
        maxsize,
        typed,
        ttl=ttl,
        tti=tti,
        wait_concurrent=wait_concurrent,
        policy=policy,
        weigher=weigher,
        key=key,
        cache_if=cache_if,
        stats=stats,
        refresh_after=refresh_after,
        executor=executor,
        tags=tags,
        stale_if_error=stale_if_error,
    )

    def decorator(func: Callable[Concatenate[T, P], R]) -> CachedMethod[T, P, R]:
        return CachedMethod(func, make)

    return decorator
