"""``moka_py.cached``: a ``functools.lru_cache`` replacement with TTL, TTI and
coalescing of concurrent calls, for plain and ``async`` functions.

Both kinds of function are wrapped by the Rust ``CachedFunction``: key
building, lookup and counting run without Python-level frames. For an
``async def`` function the cache holds each result wrapped in an already
finished awaitable (``Ready``), and a hit returns that object as it is: no
coroutine is created. A miss returns the coroutine of one small Python
function per path (plain, coalescing). :func:`cached` only picks one. The
computations in flight of an async function (coalesced misses, refreshes)
are kept per event loop by ``_aload.InFlight``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable
from concurrent.futures import Executor
from typing import (
    Any,
    Generic,
    Literal,
    NamedTuple,
    ParamSpec,
    Protocol,
    TypeVar,
    cast,
    overload,
)

from moka_py._aload import SKIP, InFlight, reload, stale, timed
from moka_py._moka_py import CachedFunction as _RustCachedFunction
from moka_py._moka_py import MissKey, Moka, Ready

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)

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
    def cache_invalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool: ...
    def cache_contains(self, *args: P.args, **kwargs: P.kwargs) -> bool: ...
    def refresh(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...
    def uncached(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...
    @property
    def cache(self) -> Moka[Any, Any]: ...


class FunctionAnnotations:
    """``__annotations__`` of a :class:`_Wrapper` and of ``cached_method``'s
    descriptor: the decorated function's own (evaluated when first asked for,
    as the function evaluates them), or what was assigned to the wrapper. Since
    3.14, ``functools.update_wrapper`` copies a function's ``__annotate__``, no
    longer its ``__annotations__``; without this, the wrapper would show its
    class's annotations (``_recompute``, ``uncached``) to ``annotationlib``,
    ``inspect`` and ``typing.get_type_hints``, which read ``__annotations__``
    first. The same on every version."""

    def __get__(self, obj: object, owner: type | None = None) -> Any:
        if obj is None:
            return {}
        own = vars(obj)
        if "__annotations__" in own:
            return own["__annotations__"]
        if "__wrapped__" not in own:
            raise AttributeError("__annotations__")
        return own["__wrapped__"].__annotations__

    def __set__(self, obj: object, value: Any) -> None:
        vars(obj)["__annotations__"] = value

    def __delete__(self, obj: object) -> None:
        vars(obj).pop("__annotations__", None)


class _Wrapper(_RustCachedFunction):
    """A function decorated with :func:`cached`: the Rust wrapper, with a
    ``__dict__`` for ``functools.update_wrapper`` that the GC traverses."""

    # Set per function by `cached` (one function per path: sync, async):
    # `_recompute(wrapper, args, kwargs)`, which holds no reference to the
    # wrapper (so that a dropped function is freed without the collector),
    # and the function itself.
    _recompute: Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]
    uncached: Callable[..., Any]
    # Last: it replaces the dict of the class's own annotations, above.
    __annotations__ = FunctionAnnotations()  # pyright: ignore[reportAssignmentType]  # a descriptor

    def refresh(self, *args: Any, **kwargs: Any) -> Any:
        """Calls the function whatever is cached, stores its result and
        returns it (for an ``async def`` function, an awaitable)."""
        return self._recompute(self, args, kwargs)

    def cache_invalidate(self, *args: Any, **kwargs: Any) -> bool:
        """Removes the cached result of the call with these arguments;
        whether there was one."""
        return self.cache.remove(self._key(args, kwargs), _ABSENT) is not _ABSENT

    def cache_contains(self, *args: Any, **kwargs: Any) -> bool:
        """Whether the result of the call with these arguments is cached (not
        counted as a call, not an access)."""
        return self._key(args, kwargs) in self.cache


# What `cache_invalidate` passes to `Moka.remove` as the default: never a result.
_ABSENT: Any = object()


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
    key: Callable[..., Hashable] | None = None,
    cache_if: Callable[[Any], object] | None = None,
    stats: bool = False,
    refresh_after: float | None = None,
    executor: Executor | None = None,
    tags: Iterable[str] | Callable[..., Iterable[str]] | None = None,
    stale_if_error: float | None = None,
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
    key: Callable[..., Hashable] | None = None,
    cache_if: Callable[[Any], object] | None = None,
    stats: bool = False,
    refresh_after: float | None = None,
    executor: Executor | None = None,
    tags: Iterable[str] | Callable[..., Iterable[str]] | None = None,
    stale_if_error: float | None = None,
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
    :param key: ``key(*args, **kwargs)``, the cache key of a call (instead of
        the arguments themselves; ``typed`` is then ignored).
    :param cache_if: ``cache_if(result) -> bool``; a result for which it is
        false is returned but not stored.
    :param stats: record statistics in the cache: ``f.cache.stats()``.
    :param refresh_after: seconds after which a hit returns the stored result
        and reloads it in the background (a sync function on the cache's
        executor, an ``async def`` one as a task on the caller's event loop).
    :param executor: the ``concurrent.futures.Executor`` of a sync function's
        reloads (default: the cache's own thread pool).
    :param stale_if_error: seconds a result stays after its ``ttl`` for a call
        that raises: the call then returns it instead (counted in
        ``f.cache.stats().stale_served``), stores nothing, and the next call
        tries again. Needs ``ttl`` and no ``tti``.
    :param tags: the tags of every stored result (strings), or
        ``tags(*args, **kwargs)`` returning a call's; ``f.cache.invalidate_tags(tag)``
        then drops the results stored with ``tag`` (including one being
        computed during the call).

    ``f.refresh(*args, **kwargs)`` calls the function whatever is cached,
    stores its result (or, if ``cache_if`` rejects it, removes the stored
    one) and returns it;
    ``f.uncached(*args, **kwargs)`` calls it without reading or writing the
    cache. Neither counts as a call in ``cache_info``; for an ``async def``
    function both return awaitables.

    Works on plain functions, methods (the instance is part of the key; see
    :func:`cached_method` for a cache per instance), static and class
    methods, and ``async def`` functions; may be used with or without
    parentheses.
    """
    if callable(maxsize) and not isinstance(maxsize, int):
        # Used as ``@cached`` without parentheses, like ``@functools.lru_cache``.
        return cached()(maxsize)
    if maxsize is not None and (isinstance(maxsize, bool) or not isinstance(maxsize, int)):
        raise TypeError(f"maxsize must be an int or None, not {type(maxsize).__name__}")
    for name, option in (("key", key), ("cache_if", cache_if)):
        if option is not None and not callable(option):
            raise TypeError(f"{name} must be callable or None, not {type(option).__name__}")
    if tags is not None and not callable(tags):
        # Kept as a tuple (an iterator can be read once), and checked now as
        # Moka checks them (a lone str refused, not read as one tag per character).
        if not isinstance(tags, str) and isinstance(tags, Iterable):
            tags = tuple(tags)
        Moka[None, None](1)._stamp(tags)
    if maxsize is not None and maxsize < 0:
        maxsize = 0  # as in functools
    capacity = _UNBOUNDED if maxsize is None else maxsize
    options: dict[str, Any] = {
        "ttl": ttl,
        "tti": tti,
        "policy": policy,
        "stats": stats,
        "refresh_after": refresh_after,
        "executor": executor,
        "stale_if_error": stale_if_error,
    }
    # Validates every option now, at decoration time.
    Moka(capacity, weigher=weigher, **options)

    def decorator(func: Callable[..., Any]) -> Any:
        is_async = inspect.iscoroutinefunction(func)
        weigh = weigher
        if is_async and weigher is not None:
            user_weigher = weigher

            # The cache holds `Ready` wrappers; the user's weigher sees results.
            def weigh_ready(key: Any, ready: Any) -> int:
                return user_weigher(key, ready.value)

            weigh = weigh_ready

        cache: Moka[Any, Any] = Moka(capacity, weigher=weigh, **options)
        parameters = {
            "maxsize": maxsize,
            "typed": typed,
            "ttl": ttl,
            "tti": tti,
            "wait_concurrent": wait_concurrent,
            "policy": policy,
            "key": key,
            "cache_if": cache_if,
            "stats": stats,
            "refresh_after": refresh_after,
            "tags": tags,
            "stale_if_error": stale_if_error,
        }
        args = (func, cache, typed, wait_concurrent, CacheInfo, maxsize, parameters)
        if not is_async:
            wrapper = _Wrapper(*args, key=key, cache_if=cache_if, tags=tags)
            wrapper._recompute = _sync_recompute(func, cache, cache_if, stats)
            wrapper.uncached = func
            return functools.update_wrapper(wrapper, func)
        invoke = _invoke(func, cache if stats else None)
        # Each event loop's computations in flight: coalesced misses, reloads.
        flights = InFlight()
        refresh = None if refresh_after is None else _async_refresh(flights, invoke, cache_if)
        misses = _Late()
        wrapper = _Wrapper(*args, misses, key=key, cache_if=cache_if, refresh=refresh, tags=tags)
        wrapper._recompute = _async_recompute(invoke, cache, cache_if)
        wrapper.uncached = func
        compute = _async_plain(invoke, _store(wrapper._store, cache_if), cache)
        if wait_concurrent:
            misses.path = _async_coalescing(flights, compute, wrapper._joined)
        else:
            misses.path = compute
        functools.update_wrapper(wrapper, func)
        _mark_coroutine_function(wrapper, func)
        return wrapper

    return decorator


def _sync_recompute(
    func: Callable[..., Any],
    cache: Moka[Any, Any],
    cache_if: Callable[[Any], object] | None,
    stats: bool,
) -> Callable[[_Wrapper, tuple[Any, ...], dict[str, Any]], Any]:
    """``f.refresh(*args, **kwargs)`` of a sync function: calls it whatever
    is cached, stores the result (its TTL starts again; one that ``cache_if``
    rejects removes the stored one instead) and returns it. Not counted as a call in ``cache_info``;
    with ``stats``, recorded as a load."""

    def recompute(wrapper: _Wrapper, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        k = wrapper._key(args, kwargs)
        stamp = wrapper._stamp(args, kwargs)
        if stats:
            start = time.perf_counter()
            try:
                value = func(*args, **kwargs)
            except BaseException:
                cache._record_load(time.perf_counter() - start, False)
                raise
            cache._record_load(time.perf_counter() - start, True)
        else:
            value = func(*args, **kwargs)
        if cache_if is None or cache_if(value):
            cache.set(k, value, tags=cast(Any, stamp))
        else:
            cache.remove(k)  # outdated all the same
        return value

    return recompute


def _async_recompute(
    invoke: Callable[[Any, Any], Awaitable[Any]],
    cache: Moka[Any, Any],
    cache_if: Callable[[Any], object] | None,
) -> Callable[[_Wrapper, tuple[Any, ...], dict[str, Any]], Any]:
    """``f.refresh(*args, **kwargs)`` of an ``async def`` function: the
    coroutine that awaits it whatever is cached, stores the result (or
    removes the stored one, as the sync form) and returns it."""

    async def recompute(wrapper: _Wrapper, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        k = wrapper._key(args, kwargs)
        stamp = wrapper._stamp(args, kwargs)
        value = await invoke(args, kwargs)
        if cache_if is None or cache_if(value):
            cache.set(k, Ready(value), tags=cast(Any, stamp))
        else:
            cache.remove(k)  # outdated all the same
        return value

    return recompute


class _Late:
    """The miss path of an async wrapper, set once the wrapper exists: it
    stores through the wrapper, and the coalescing path counts joins as hits
    on it."""

    __slots__ = ("path",)
    path: Callable[[MissKey, Any, Any], Any]

    def __call__(self, key: MissKey, args: Any, kwargs: Any) -> Any:
        return self.path(key, args, kwargs)


def _mark_coroutine_function(wrapper: Any, func: Callable[..., Any]) -> None:
    """Makes ``inspect.iscoroutinefunction(wrapper)`` true, as for ``func``:
    calling the wrapper gives an awaitable (on 3.12+ through
    ``inspect.markcoroutinefunction``; before, by showing the code object of
    ``func``, as function-like objects do)."""
    mark = getattr(inspect, "markcoroutinefunction", None)
    if mark is not None:
        mark(wrapper)
        return
    wrapper.__code__ = func.__code__
    wrapper.__defaults__ = getattr(func, "__defaults__", None)
    wrapper.__kwdefaults__ = getattr(func, "__kwdefaults__", None)
    wrapper._is_coroutine = asyncio.coroutines._is_coroutine  # type: ignore[attr-defined]


def _store(
    put: Callable[[MissKey, Any], None], cache_if: Callable[[Any], object] | None
) -> Callable[[MissKey, Any], None]:
    """``store(key, result)`` for an async function: the result, finished,
    unless ``cache_if`` rejects it. TTL/TTI start then, when it is stored.
    ``key`` is the ``MissKey`` of the call, ``put`` the wrapper's ``_store``."""
    if cache_if is None:

        def store(key: MissKey, value: Any) -> None:
            put(key, Ready(value))

    else:

        def store(key: MissKey, value: Any) -> None:
            if cache_if(value):
                put(key, Ready(value))

    return store


def _invoke(func: Any, stats: Moka[Any, Any] | None) -> Callable[[Any, Any], Awaitable[Any]]:
    """``invoke(args, kwargs)``: the awaitable of a call of an async function
    (with ``stats``, recorded as a load in that cache)."""
    if stats is None:
        return lambda args, kwargs: func(*args, **kwargs) if kwargs else func(*args)
    return lambda args, kwargs: timed(
        stats, lambda: func(*args, **kwargs) if kwargs else func(*args)
    )


def _async_plain(
    invoke: Callable[[Any, Any], Awaitable[Any]],
    store: Callable[[MissKey, Any], None],
    cache: Moka[Any, Any],
) -> Callable[[MissKey, Any, Any], Any]:
    """The miss of an async function: compute, store the result; with
    ``stale_if_error``, a call that raises returns the expired result the
    cache still keeps, if any (and stores nothing)."""

    async def miss(key: MissKey, args: Any, kwargs: Any) -> Any:
        try:
            value = await invoke(args, kwargs)
        except Exception:
            if (found := stale(cache, key.key)) is None:
                raise
            return found[0].value
        store(key, value)
        return value

    return miss


def _async_coalescing(
    flights: InFlight, compute: Callable[[MissKey, Any, Any], Any], joined: Callable[[], None]
) -> Callable[[MissKey, Any, Any], Any]:
    """The miss of an async function with ``wait_concurrent``: one shared
    ``asyncio.Task`` per key and event loop; the cache holds only finished
    results, so a failed or cancelled computation is retried by the next call.
    A caller that joins a computation in flight counts as a hit (``joined``)."""

    async def miss(key: MissKey, args: Any, kwargs: Any) -> Any:
        task, running = flights.start(key, lambda: compute(key, args, kwargs))
        if running:
            joined()
        # A caller that is cancelled (or times out) does not cancel the
        # computation the others are waiting for.
        return await asyncio.shield(task)

    return miss


def _async_refresh(
    flights: InFlight,
    invoke: Callable[[Any, Any], Awaitable[Any]],
    cache_if: Callable[[Any], object] | None,
) -> Callable[[MissKey, Any, Any, Any], None]:
    """A hit of an async function on an entry due for a refresh, whose reload
    the Rust wrapper claimed: the reload, a task on the caller's loop, in the
    function's table of computations (coalesced with the misses)."""

    def stored(value: Any) -> Any:
        return Ready(value) if cache_if is None or cache_if(value) else SKIP

    def refresh(key: MissKey, args: Any, kwargs: Any, claim: Any) -> None:
        flights.refresh(key, lambda: reload(claim, lambda: invoke(args, kwargs), stored))

    return refresh
