"""``moka_py.cached``: a ``functools.lru_cache`` replacement with TTL, TTI and
coalescing of concurrent calls, for plain and ``async`` functions.

Sync functions are wrapped by the Rust ``CachedFunction`` (key building,
lookup, counting and coalescing without Python-level frames); async functions
by one small Python wrapper per path (plain, coalescing). :func:`cached` only
picks one.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import weakref
from collections.abc import Callable
from typing import Any, Generic, Literal, NamedTuple, ParamSpec, Protocol, TypeVar, overload

from moka_py._moka_py import CachedFunction as _RustCachedFunction
from moka_py._moka_py import Moka, make_key

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)

_MISSING: Any = object()
# ``maxsize=None`` means unbounded, as in functools.
_UNBOUNDED = 2**63


class CacheInfo(NamedTuple):
    """Statistics of a decorated function, as ``functools.lru_cache`` reports them."""

    hits: int
    misses: int
    maxsize: int | None
    currsize: int


class CachedFunction(Protocol, Generic[P, R_co]):
    """What :func:`cached` returns: the function, with ``functools.lru_cache``'s extras."""

    @property
    def __wrapped__(self) -> Callable[P, R_co]: ...
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...
    def cache_info(self) -> CacheInfo: ...
    def cache_clear(self) -> None: ...
    def cache_parameters(self) -> dict[str, Any]: ...


class _SyncWrapper(_RustCachedFunction):
    """A sync function decorated with :func:`cached`: the Rust wrapper, with a
    ``__dict__`` for ``functools.update_wrapper`` that the GC traverses."""


class _Stats:
    """Hit and miss counters of an async wrapper (one event loop per thread:
    exact in single-threaded use)."""

    __slots__ = ("hits", "misses")

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0


@overload
def cached(
    maxsize: Callable[P, R],
) -> CachedFunction[P, R]: ...


@overload
def cached(
    maxsize: int | None = 128,
    typed: bool = False,
    *,
    ttl: float | None = None,
    tti: float | None = None,
    wait_concurrent: bool = False,
    policy: Literal["tiny_lfu", "lru"] = "tiny_lfu",
    weigher: Callable[[Any, Any], int] | None = None,
) -> Callable[[Callable[P, R]], CachedFunction[P, R]]: ...


def cached(
    maxsize: int | Callable[..., Any] | None = 128,
    typed: bool = False,
    *,
    ttl: float | None = None,
    tti: float | None = None,
    wait_concurrent: bool = False,
    policy: Literal["tiny_lfu", "lru"] = "tiny_lfu",
    weigher: Callable[[Any, Any], int] | None = None,
) -> Any:
    """Caches a function's results: ``functools.lru_cache`` with TTL and TTI.

    :param maxsize: the most results kept (``None``: unbounded; 0: none).
    :param typed: keep arguments of different types apart (``f(1)`` vs ``f(1.0)``).
    :param ttl: seconds a result lives after it was stored.
    :param tti: seconds a result lives after it was last used.
    :param wait_concurrent: concurrent calls with the same arguments wait for
        one computation: threads wait (without the interpreter) for the first
        caller's call; asyncio callers share one ``asyncio.Task`` per key and
        event loop.
    :param policy: ``"tiny_lfu"`` (default) or ``"lru"``.
    :param weigher: ``weigher(key, result) -> int``; ``maxsize`` then bounds
        the total weight.

    Works on plain functions, methods (the instance is part of the key),
    static and class methods, and ``async def`` functions; may be used with or
    without parentheses.
    """
    if callable(maxsize) and not isinstance(maxsize, int):
        # Used as ``@cached`` without parentheses, like ``@functools.lru_cache``.
        return cached()(maxsize)
    if maxsize is not None and (isinstance(maxsize, bool) or not isinstance(maxsize, int)):
        raise TypeError(f"maxsize must be an int or None, not {type(maxsize).__name__}")
    capacity = _UNBOUNDED if maxsize is None else max(maxsize, 0)
    # Validates every option now, at decoration time.
    Moka(capacity, ttl=ttl, tti=tti, policy=policy, weigher=weigher)

    def decorator(func: Callable[..., Any]) -> Any:
        cache: Moka[Any, Any] = Moka(capacity, ttl=ttl, tti=tti, policy=policy, weigher=weigher)
        parameters = {
            "maxsize": maxsize,
            "typed": typed,
            "ttl": ttl,
            "tti": tti,
            "wait_concurrent": wait_concurrent,
            "policy": policy,
        }
        if not inspect.iscoroutinefunction(func):
            sync = _SyncWrapper(func, cache, typed, wait_concurrent, CacheInfo, maxsize, parameters)
            return functools.update_wrapper(sync, func)
        stats = _Stats()
        path = _async_coalescing if wait_concurrent else _async_plain
        wrapper: Any = functools.wraps(func)(path(func, cache, typed, stats))

        def cache_info() -> CacheInfo:
            return CacheInfo(stats.hits, stats.misses, maxsize, len(cache))

        def cache_clear() -> None:
            cache.clear()
            stats.hits = stats.misses = 0

        def cache_parameters() -> dict[str, Any]:
            return dict(parameters)

        wrapper.cache_info = cache_info
        wrapper.cache_clear = cache_clear
        wrapper.cache_parameters = cache_parameters
        return wrapper

    return decorator


def _async_plain(func: Any, cache: Moka[Any, Any], typed: bool, stats: _Stats) -> Any:
    get = cache.get
    put = cache.set

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        key = make_key(args, kwargs, typed)
        value = get(key, _MISSING)
        if value is not _MISSING:
            stats.hits += 1
            return value
        stats.misses += 1
        value = await func(*args, **kwargs)
        # TTL/TTI start now, when the result is stored.
        put(key, value)
        return value

    return wrapper


def _async_coalescing(func: Any, cache: Moka[Any, Any], typed: bool, stats: _Stats) -> Any:
    """One shared ``asyncio.Task`` per key and event loop; the cache holds only
    finished results, so a failed or cancelled computation is retried by the
    next call."""
    get = cache.get
    put = cache.set
    # Each event loop coalesces its own callers; a loop's table goes with it.
    tables: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Any, asyncio.Task[Any]]]
    tables = weakref.WeakKeyDictionary()
    tables_lock = threading.Lock()

    def table_of(loop: asyncio.AbstractEventLoop) -> dict[Any, asyncio.Task[Any]]:
        table = tables.get(loop)
        if table is None:
            with tables_lock:
                table = tables.setdefault(loop, {})
        return table

    async def compute(key: Any, args: Any, kwargs: Any) -> Any:
        value = await func(*args, **kwargs)
        put(key, value)
        return value

    def forget(table: dict[Any, asyncio.Task[Any]], key: Any, task: asyncio.Task[Any]) -> None:
        if table.get(key) is task:
            del table[key]
        if not task.cancelled():
            # Marks the exception as retrieved: the callers got it already.
            task.exception()

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        key = make_key(args, kwargs, typed)
        value = get(key, _MISSING)
        if value is not _MISSING:
            stats.hits += 1
            return value
        table = table_of(asyncio.get_running_loop())
        task = table.get(key)
        if task is None:
            stats.misses += 1
            task = asyncio.ensure_future(compute(key, args, kwargs))
            table[key] = task
            task.add_done_callback(functools.partial(forget, table, key))
        else:
            stats.hits += 1
        # A caller that is cancelled (or times out) does not cancel the
        # computation the others are waiting for.
        return await asyncio.shield(task)

    return wrapper
