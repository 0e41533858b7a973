"""What a function decorated by a tiered cache's ``cached`` decides without
I/O, for both shells: its identity and the key of a call, the epoch that
``cache_clear`` replaces, and, with ``refresh_after``, the age that travels
with each result.

A call's key is ``(name, epoch, arguments...)``. The epoch is an entry of the
cache itself, under ``(EPOCH, name)``: a random token, read through the local
tier like any entry (a Rust hit once held), signed in Redis like any payload,
and replaced by ``cache_clear`` with a write that invalidates every process's
copy. Results stored under the previous epoch are never read again and expire
with their ``ttl``: nothing scans the keyspace.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Protocol, TypeVar

if TYPE_CHECKING:
    from ._async import AsyncTieredCache
    from ._sync import TieredCache

P = ParamSpec("P")
R_co = TypeVar("R_co", covariant=True)

# The first element of the key of every decorated function's epoch.
EPOCH = "moka_py.cached.epoch"
# The first element of a result stored with refresh_after: (RECORD, written
# at, result).
RECORD = "moka_py.cached.result"
# How long an epoch lives in Redis (an expired or evicted one is replaced by a
# fresh token: that function's results are then cleared, never mixed).
EPOCH_TTL = 10 * 365 * 86400.0


class TieredFunction(Protocol, Generic[P, R_co]):
    """What ``TieredCache.cached`` returns: the function, with the surface of
    one decorated by :func:`moka_py.cached`."""

    @property
    def __wrapped__(self) -> Callable[P, R_co]: ...
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...
    def refresh(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...
    def uncached(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...
    def cache_invalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool: ...
    def cache_contains(self, *args: P.args, **kwargs: P.kwargs) -> bool: ...
    def cache_clear(self) -> None: ...
    @property
    def cache(self) -> TieredCache[Any, Any]: ...


class AsyncTieredFunction(Protocol, Generic[P, R_co]):
    """What ``AsyncTieredCache.cached`` returns: :class:`TieredFunction`
    with every method a coroutine."""

    @property
    def __wrapped__(self) -> Callable[P, Awaitable[R_co]]: ...
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Awaitable[R_co]: ...
    def refresh(self, *args: P.args, **kwargs: P.kwargs) -> Awaitable[R_co]: ...
    def uncached(self, *args: P.args, **kwargs: P.kwargs) -> Awaitable[R_co]: ...
    def cache_invalidate(self, *args: P.args, **kwargs: P.kwargs) -> Awaitable[bool]: ...
    def cache_contains(self, *args: P.args, **kwargs: P.kwargs) -> Awaitable[bool]: ...
    def cache_clear(self) -> Awaitable[None]: ...
    @property
    def cache(self) -> AsyncTieredCache[Any, Any]: ...


def new_epoch() -> str:
    return os.urandom(8).hex()


class Decorated:
    """One decorated function's decisions (both shells call these)."""

    __slots__ = ("_make", "cache_if", "epoch_key", "refresh_after")

    def __init__(
        self,
        fn: Callable[..., Any],
        key: Callable[..., Any] | None,
        typed: bool,
        name: str | None,
        cache_if: Callable[[Any], object] | None,
        refresh_after: float | None,
    ) -> None:
        prefix = function_name(fn, name)
        self._make = call_key(prefix, key, typed)
        self.epoch_key = (EPOCH, prefix)
        self.cache_if = cache_if
        self.refresh_after = refresh_after

    def key(self, epoch: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The key of a call under ``epoch`` (what the epoch entry holds; an
        entry that is not a str, which no cache writes, counts as empty)."""
        return self._make(epoch if type(epoch) is str else "", args, kwargs)

    def pack(self, value: Any) -> Any:
        """What is stored for a result: itself, or with ``refresh_after``,
        ``(RECORD, written at, result)`` (wall-clock ms, as the payloads'
        deadlines)."""
        if self.refresh_after is None:
            return value
        return (RECORD, time.time_ns() // 1_000_000, value)

    def unpack(self, stored: Any) -> tuple[Any, bool]:
        """The result in what was stored, and whether it is due for a reload."""
        if self.refresh_after is None:
            return stored, False
        # A tuple, or a list after JSON. Anything else was stored without
        # refresh_after (by an earlier version of the function): reload it.
        if (
            type(stored) not in (tuple, list)
            or len(stored) != 3
            or stored[0] != RECORD
            or type(stored[1]) is not int
        ):
            return stored, True
        _, written, value = stored
        due = time.time_ns() // 1_000_000 - written >= self.refresh_after * 1000
        return value, due

    def keep(self) -> Callable[[Any], object] | None:
        """``keep(stored)``: whether a computed result is stored (``cache_if``)."""
        cache_if = self.cache_if
        if cache_if is None:
            return None
        unpack = self.unpack
        return lambda stored: cache_if(unpack(stored)[0])


def equip(
    wrapper: Callable[..., Any],
    cache: Any,
    refresh: Callable[..., Any],
    cache_invalidate: Callable[..., Any],
    cache_contains: Callable[..., Any],
    cache_clear: Callable[..., Any],
) -> Any:
    """Gives a decorated function (made by ``functools.wraps``, so its
    ``__wrapped__`` is the function itself) its methods."""
    out: Any = wrapper
    out.refresh = refresh
    out.uncached = out.__wrapped__
    out.cache_invalidate = cache_invalidate
    out.cache_contains = cache_contains
    out.cache_clear = cache_clear
    out.cache = cache
    return out


def function_name(fn: Callable[..., Any], name: str | None) -> str:
    """The identity of a decorated function in Redis: ``name``, or its module
    and qualified name, which must tell it apart from every other function
    (``ValueError`` for a nested function or a lambda without ``name``)."""
    if name is not None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str, not {name!r}")
        return name
    qualname = getattr(fn, "__qualname__", None)
    module = getattr(fn, "__module__", None)
    if not isinstance(qualname, str):
        raise ValueError(f"{fn!r} has no __qualname__: pass name= to cached()")
    if "<locals>" in qualname or "<lambda>" in qualname:
        raise ValueError(
            f"{qualname} is defined inside a function or is a lambda, so its name is shared "
            "by every function made there, and their results would share keys: pass "
            "name= (one per function, e.g. name=f'price:{tenant}')"
        )
    return f"{module}.{qualname}"


def call_key(
    prefix: str, key: Callable[..., Any] | None, typed: bool
) -> Callable[[str, tuple[Any, ...], dict[str, Any]], Any]:
    """How a decorated function's call becomes a cache key: the function's
    identity (:func:`function_name`) and epoch, then the arguments (keyword
    arguments sorted by name), or ``key(*args, **kwargs)``; ``typed`` adds
    the types' names."""
    if key is not None:
        custom = key

        def make(epoch: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            return (prefix, epoch, custom(*args, **kwargs))

        return make

    def make_default(epoch: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        parts: tuple[Any, ...] = (prefix, epoch, args)
        if kwargs:
            parts += (tuple(sorted(kwargs.items())),)
        if typed:
            parts += (
                tuple(type(a).__qualname__ for a in args),
                tuple(type(v).__qualname__ for _, v in sorted(kwargs.items())),
            )
        return parts

    return make_default
