"""The Rust core of moka_py (built from ``src/``)."""

from collections.abc import (
    Awaitable,
    Callable,
    Generator,
    Hashable,
    Iterable,
    Iterator,
    Mapping,
)
from concurrent.futures import Executor
from typing import Any, Generic, Literal, NoReturn, TypeVar, final, overload

from typing_extensions import Self, disjoint_base

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")
_D = TypeVar("_D")

__all__ = [
    "VERSION",
    "_KWARGS_MARK",
    "CacheStats",
    "CachedFunction",
    "MissKey",
    "Moka",
    "Ready",
    "_Claim",
    "_Mac",
    "_TagStamp",
    "_Tier",
    "_write_unraisable",
    "make_key",
]

VERSION: str
"""The version of the moka_py package."""

_KWARGS_MARK: object
"""Separates positional from keyword arguments in ``@cached`` keys."""

_Cause = Literal["expired", "explicit", "replaced", "size"]
"""Why an entry left the cache, as passed to an eviction listener."""

@final
class Moka(Generic[_K, _V]):
    """A thread-safe in-memory cache bounded by size, with optional expiration.

    Keys follow ``dict`` semantics (``1``, ``1.0`` and ``True`` are one key);
    values are stored by reference. Every method is safe to call from any
    thread, and never holds the interpreter while it waits.
    """

    def __new__(
        cls,
        capacity: int,
        ttl: float | None = None,
        tti: float | None = None,
        eviction_listener: Callable[[_K, _V, _Cause], object] | None = None,
        policy: Literal["tiny_lfu", "lru"] = "tiny_lfu",
        weigher: Callable[[_K, _V], int] | None = None,
        stats: bool = False,
        refresh_after: float | None = None,
        executor: Executor | None = None,
        stale_if_error: float | None = None,
    ) -> Self:
        """Creates a cache.

        :param capacity: the maximum number of entries, or with ``weigher`` the
            maximum total weight. The cache may briefly exceed it by
            ``capacity // 32`` (at most 256 entries without a weigher).
        :param ttl: seconds an entry lives after it was set (time to live).
        :param tti: seconds an entry lives after its last read or set (time to idle).
        :param eviction_listener: called as ``listener(key, value, cause)`` when an
            entry leaves the cache, on the thread whose call caused it and before
            that call returns. Exceptions go to ``sys.unraisablehook``.
        :param policy: ``"tiny_lfu"`` (admission by frequency, the default) or ``"lru"``.
        :param weigher: ``weigher(key, value) -> int``, the weight of an entry,
            called on the calling thread before each insert (clamped to 2**32-1).
        :param stats: record statistics, read with :meth:`stats`.
        :param refresh_after: seconds after which ``get_with`` (and
            ``aget_with``) returns an entry's value at once and reloads it in
            the background with the same initializer; shorter than ``ttl``.
        :param executor: where the reloads run (a ``concurrent.futures.Executor``);
            by default a ``ThreadPoolExecutor`` the cache makes on first use.
        :param stale_if_error: seconds an entry is kept after its ``ttl`` (absent
            to every read meanwhile) for a ``get_with``/``aget_with`` load of its
            key that raises: the load returns it instead (counted in
            ``stats().stale_served``), stores nothing, and the next call loads
            again. Needs ``ttl`` and no ``tti``.
        :raises ValueError: a non-positive, non-finite or too long (over 1000 years)
            ``ttl``/``tti``/``refresh_after``, ``refresh_after`` not shorter than
            ``ttl``, ``executor`` without ``refresh_after``, a negative capacity,
            an unknown policy, ``stale_if_error`` without ``ttl`` or with ``tti``.
        :raises TypeError: arguments of the wrong type.
        """

    @property
    def capacity(self) -> int:
        """The maximum number of entries (or total weight, with a weigher)."""
    @property
    def policy(self) -> Literal["tiny_lfu", "lru"]:
        """The eviction policy."""
    @property
    def ttl(self) -> float | None:
        """The cache-wide time to live in seconds."""
    @property
    def tti(self) -> float | None:
        """The cache-wide time to idle in seconds."""
    @property
    def refresh_after(self) -> float | None:
        """The seconds after which ``get_with`` reloads an entry, or None."""
    @property
    def stale_if_error(self) -> float | None:
        """Seconds an expired value stays for a failed load to return, or None."""
    def _stale(self, key: _K) -> tuple[_V] | None:
        """For an async load of ``key`` that raised: its expired value (counted
        as served), as a 1-tuple, or None."""
    def set(
        self,
        key: _K,
        value: _V,
        ttl: float | None = None,
        tti: float | None = None,
        *,
        tags: Iterable[str] | None = None,
    ) -> None:
        """Stores ``value`` under ``key``.

        ``ttl``/``tti`` apply to this entry only and can only shorten the
        cache-wide ones; setting a key again without them clears them.
        ``tags`` (strings) name groups of entries that ``invalidate_tags``
        removes at once.
        """
    def invalidate_tags(self, *tags: str) -> None:
        """Makes every entry written with one of ``tags`` before the call
        absent, at once, whatever their number (each tag has an epoch that
        entries carry; they are removed by the next ``len()`` or
        ``run_pending_tasks()``, or by eviction). A load in flight during
        the call stores a value that is absent at once."""
    def _stamp(self, tags: Iterable[str]) -> _TagStamp | None: ...
    @overload
    def get(self, key: _K) -> _V | None: ...
    @overload
    def get(self, key: _K, default: _D) -> _V | _D:
        """The value for ``key``, or ``default`` when it is absent or expired."""
    def get_with(
        self,
        key: _K,
        initializer: Callable[[], _V],
        ttl: float | None = None,
        tti: float | None = None,
        *,
        tags: Iterable[str] | None = None,
    ) -> _V:
        """The value for ``key``, computed by ``initializer()`` on a miss.

        However many threads ask for a missing key at once, ``initializer`` runs
        once, and all of them receive the same object. If it raises, every
        waiting thread raises (a copy of) the same exception, nothing is cached
        and the next call tries again. Calling ``get_with`` for the same key from
        inside its own initializer raises ``RuntimeError``.

        With ``refresh_after``, an entry older than that is returned at once and
        reloaded once in the background (see ``Moka``); if the reload raises,
        the old value stays until it expires and the exception goes to
        ``sys.unraisablehook``.
        """
    def aget_with(
        self,
        key: _K,
        initializer: Callable[[], Awaitable[_V]],
        ttl: float | None = None,
        tti: float | None = None,
        *,
        tags: Iterable[str] | None = None,
    ) -> Awaitable[_V]:
        """``await cache.aget_with(key, initializer)``: the value for ``key``,
        computed by ``await initializer()`` on a miss.

        The awaiters of a missing key on one event loop share one computation
        (an ``asyncio.Task``); cancelling one awaiter does not cancel it for the
        others; if it raises, nothing is cached. A value stored by any thread or
        loop is a hit, and the event loop never waits for another thread."""
    def get_many(self, keys: Iterable[_K]) -> dict[_K, _V]:
        """The values of the present, unexpired ``keys``."""
    def set_many(
        self,
        items: Mapping[_K, _V] | Iterable[tuple[_K, _V]],
        ttl: float | None = None,
        tti: float | None = None,
        *,
        tags: Iterable[str] | None = None,
    ) -> None:
        """Stores every ``(key, value)`` pair. Every key (and weight) is checked
        before anything is stored."""
    def remove_many(self, keys: Iterable[_K]) -> int:
        """Removes the present ``keys``; returns how many were removed."""
    def remove_if(self, predicate: Callable[[_K, _V], object]) -> int:
        """Removes the entries for which ``predicate(key, value)`` is true
        (run on a snapshot, outside the cache; the listener sees cause
        ``"explicit"``); returns how many were removed."""
    def stats(self, *, cumulative: bool = False) -> CacheStats:
        """A snapshot of the statistics: what was recorded since the last
        :meth:`reset_stats` (or since the cache was made).

        :param cumulative: the figures since the cache was made, whatever
            :meth:`reset_stats` did. The counters behind them only grow: this
            is what an exporter reads (``moka_py.otel``, ``moka_py.prometheus``).
        :raises ValueError: the cache was made without ``stats=True``."""
    def reset_stats(self) -> None:
        """Makes :meth:`stats` count from zero again. The counters themselves
        keep growing: ``stats(cumulative=True)`` does not change.

        :raises ValueError: the cache was made without ``stats=True``."""
    def _approx_count(self) -> int:
        """The number of entries as last counted, without applying pending
        evictions (what ``moka_py.otel``/``moka_py.prometheus`` report: no
        eviction listener runs in a collector's thread)."""
    def _record_load(self, seconds: float, ok: bool) -> None:
        """Records an initializer call made outside Rust (``aget_with``)."""
    @overload
    def remove(self, key: _K) -> _V | None: ...
    @overload
    def remove(self, key: _K, default: _D) -> _V | _D:
        """Removes ``key``; returns its value, or ``default`` when it was absent."""
    def clear(self) -> None:
        """Removes every entry (the listener sees cause ``"explicit"``)."""
    def count(self) -> int:
        """The number of entries, after applying pending evictions."""
    def weighted_size(self) -> int:
        """The total weight of the entries (their number without a weigher)."""
    def run_pending_tasks(self) -> None:
        """Applies pending evictions, expirations and notifications now."""
    def keys(self) -> list[_K]:
        """A snapshot of the keys."""
    def values(self) -> list[_V]:
        """A snapshot of the values."""
    def items(self) -> list[tuple[_K, _V]]:
        """A snapshot of the ``(key, value)`` pairs."""
    def __len__(self) -> int: ...
    def __contains__(self, key: object, /) -> bool:
        """Whether ``key`` is present; does not count as an access."""
    def __getitem__(self, key: _K, /) -> _V:
        """The value for ``key``; ``KeyError`` when it is absent."""
    def __setitem__(self, key: _K, value: _V, /) -> None: ...
    def __delitem__(self, key: _K, /) -> None:
        """Removes ``key``; ``KeyError`` when it is absent."""
    def __iter__(self) -> Iterator[_K]:
        """Iterates over a snapshot of the keys."""

def make_key(args: tuple[Any, ...], kwargs: dict[str, Any] | None, typed: bool) -> Hashable:
    """The cache key ``@cached`` builds for a call with these arguments."""

@disjoint_base
class CachedFunction:
    """A function decorated with ``moka_py.cached`` (see ``moka_py.cached``).

    For an ``async def`` function (``miss`` given), a hit returns the stored
    ``Ready`` and a miss returns ``miss(MissKey, args, kwargs)``."""

    def __new__(
        cls,
        func: Callable[..., Any],
        cache: Moka[Any, Any],
        typed: bool,
        wait_concurrent: bool,
        cache_info_type: Callable[[int, int, int | None, int], Any],
        maxsize: int | None,
        parameters: dict[str, Any],
        miss: Callable[[MissKey, tuple[Any, ...], dict[str, Any] | None], Any] | None = None,
        key: Callable[..., Hashable] | None = None,
        cache_if: Callable[[Any], object] | None = None,
        refresh: Callable[[MissKey, tuple[Any, ...], dict[str, Any] | None, _Claim], None]
        | None = None,
        tags: Iterable[str] | Callable[..., Iterable[str]] | None = None,
    ) -> Self: ...
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...
    def __get__(self, obj: object, owner: object = None, /) -> Any: ...
    def cache_info(self) -> Any:
        """``CacheInfo(hits, misses, maxsize, currsize)``: each call counts
        once, a miss if it computed the result, else a hit."""
    def _joined(self) -> None:
        """Counts a call first counted as a miss as a hit (an async caller
        that joined a computation in flight)."""
    def cache_clear(self) -> None:
        """Empties the cache and resets the statistics."""
    def cache_parameters(self) -> dict[str, Any]:
        """The decorator's arguments."""
    def _store(self, key: MissKey, value: object) -> None:
        """Stores ``value`` under the key of an async miss."""
    @property
    def cache(self) -> Moka[Any, Any]:
        """The underlying ``Moka`` cache."""
    def _key(self, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> Hashable:
        """The cache key of a call with these arguments."""
    def _stamp(
        self, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None
    ) -> _TagStamp | None:
        """The tags of a call's result, stamped now (``tags=``)."""
    def __copy__(self) -> Self:
        """The function itself, as for ``functools.lru_cache``."""
    def __deepcopy__(self, memo: Any, /) -> Self:
        """The function itself, as for ``functools.lru_cache``."""
    def __reduce__(self) -> str:
        """Its qualified name: it pickles as a reference, like a function."""

@final
class MissKey:
    """The key of an ``async`` call that missed, resolved once: hashed and
    compared in Rust, without running the arguments' ``__hash__``/``__eq__``."""

    @property
    def key(self) -> Hashable:
        """The key object."""
    def __hash__(self) -> int: ...
    def __eq__(self, other: object, /) -> bool: ...

@final
class Ready(Generic[_V]):
    """An awaitable that is already done: awaiting it gives ``value`` at once.

    The cache of an ``async def`` function decorated with ``moka_py.cached``
    holds its results as ``Ready`` objects, and a hit returns the stored one.
    It holds no state, so it may be awaited any number of times, and asyncio
    takes it as a coroutine (``send``, ``throw``, ``close``)."""

    def __new__(cls, value: _V) -> Self: ...
    @property
    def value(self) -> _V:
        """The result."""
    def __await__(self) -> Generator[Any, Any, _V]: ...
    def __iter__(self) -> Self: ...
    def __next__(self) -> NoReturn: ...
    def send(self, value: object, /) -> NoReturn:
        """Finishes with ``value`` (raises ``StopIteration(value)``)."""
    def throw(self, typ: Any, val: Any = None, tb: Any = None, /) -> NoReturn:
        """Raises the exception it is given."""
    def close(self) -> None:
        """Does nothing: there is nothing to stop."""

@final
class CacheStats:
    """A snapshot of a cache's statistics (``Moka.stats()``).

    Each figure counts one thing, once: a read that asked for a value is one
    hit or one miss; an initializer call is one load or one load failure
    (whoever made it: ``get_with``, ``aget_with``, ``@cached``, a refresh);
    an entry that left the cache for size is one eviction, for its ttl/tti
    one expiration. The figures of ``stats(cumulative=True)`` only grow."""

    @property
    def hits(self) -> int:
        """Reads that found a value (``get``, ``[]``, ``get_with``, ``get_many``,
        ``aget_with``, ``@cached`` calls; ``in`` is not counted)."""
    @property
    def misses(self) -> int:
        """Reads that found none."""
    @property
    def loads(self) -> int:
        """Initializer calls that returned a value (refreshes included)."""
    @property
    def load_failures(self) -> int:
        """Initializer calls that raised."""
    @property
    def load_time(self) -> float:
        """Seconds spent in initializer calls, in all."""
    @property
    def evictions(self) -> int:
        """Entries evicted for size."""
    @property
    def evicted_weight(self) -> int:
        """The total weight of the entries evicted for size."""
    @property
    def expirations(self) -> int:
        """Entries removed because they expired."""
    @property
    def stale_served(self) -> int:
        """Failed loads answered with an expired value (``stale_if_error``)."""
    @property
    def requests(self) -> int:
        """``hits + misses``."""
    @property
    def hit_rate(self) -> float:
        """``hits / requests``; 0.0 without requests."""
    @property
    def miss_rate(self) -> float:
        """``misses / requests``; 0.0 without requests."""

@final
class _Claim:
    """An async reload's claim on its key (``refresh_after``): finished once,
    with the value or the exception; dropped unfinished, it is given up."""

    def finish(self, value: object, store: bool = True) -> None:
        """Stores ``value`` (with ``store``, unless a newer write won) and
        hands it to the callers waiting for the key."""
    def fail(self, exc: BaseException) -> None:
        """Hands ``exc`` to the callers waiting for the key."""

@final
class _TagStamp:
    """Tags with their epochs when a load began (``Moka._stamp``); passed as
    ``tags=`` of the write that stores the load's value."""

def _write_unraisable(exc: BaseException, obj: object) -> None:
    """Sends ``exc`` to ``sys.unraisablehook`` (failed async reloads)."""

@final
class _Mac:
    """HMAC-SHA256 under one key (src/py/mac.rs), for the envelope of
    ``moka_py.redis``. Internal: the key is never shown or pickled."""

    def __new__(cls, key: bytes) -> Self: ...
    def sign(self, *parts: bytes) -> bytes:
        """The 32-byte MAC of the concatenated ``parts``."""
    def verify(self, mac: bytes, *parts: bytes) -> bool:
        """Whether ``mac`` is the MAC of the concatenated ``parts`` (constant time)."""

@final
class _Tier:
    """The local tier of ``moka_py.redis`` (src/tier.rs): the Rust hot path of
    ``TieredCache.get`` and the sequence numbers that keep the tier coherent.
    Internal: use ``moka_py.redis.TieredCache``."""

    trusted: bool
    def __new__(
        cls,
        local: Moka[Any, Any],
        slow_get: Callable[[Any, Any], Any],
        slow_aget: Callable[[Any, Any], Any],
        uuid: type,
    ) -> Self: ...
    def get(self, key: Any, default: Any = None) -> Any: ...
    def aget(self, key: Any, default: Any = None) -> Any: ...
    def lookup(self, key: Any, default: Any) -> Any: ...
    def is_plain(self, key: Any) -> bool: ...
    def peek(self, key: Any, default: Any) -> Any: ...
    def token(self, key: Any) -> int: ...
    def fill(
        self, key: Any, value: Any, ttl: float | None, token: int, tags: Any = None
    ) -> bool: ...
    def put(
        self, key: Any, value: Any, ttl: float | None, token: int, tags: Any = None
    ) -> bool: ...
    def invalidate(self, key: Any) -> None: ...
    def invalidate_tags(self, tags: Iterable[str]) -> None: ...
    def invalidate_all(self) -> None: ...
    @property
    def local(self) -> Moka[Any, Any]: ...
