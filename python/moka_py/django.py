"""``moka_py.django.MokaCache``: a Django cache backend on :class:`moka_py.Moka`
(one process); ``moka_py.django.TieredMokaCache`` (``_django_tier.py``): one on
:class:`moka_py.redis.TieredCache`, shared by every worker through Redis.

Configured like Django's ``LocMemCache``::

    CACHES = {
        "default": {
            "BACKEND": "moka_py.django.MokaCache",
            "TIMEOUT": 300,
            "OPTIONS": {"MAX_ENTRIES": 10_000, "POLICY": "tiny_lfu"},
        }
    }

How it is built:

- Django makes one backend object per thread (and per async context), so the
  entries live in a store shared by every ``MokaCache`` with the same
  ``LOCATION`` and options, as ``LocMemCache`` shares its dict by ``LOCATION``.
- Each entry is stored as ``(payload, deadline)``: the pickled value (or the
  value itself with ``"PICKLE": False``) and the ``time.monotonic()`` instant
  at which it expires (``None``: never). A read checks the deadline itself, so
  expiry is exact as Django defines it (alive while ``deadline > now``), and
  the entry is also given to moka with that ``ttl``, so that moka drops it.
  ``incr`` keeps the deadline, which moka cannot report.
- Reads take no lock. Every write (``set``, ``add``, ``delete``, ``touch``,
  ``incr``) takes one lock of 64, chosen by the key's hash, and holds it only
  around its moka calls and ``is`` comparisons: no Python code (pickling,
  ``__add__``, ``__eq__``, a finalizer) runs under it, so no thread waits for
  it while another runs such code. (With ``"PICKLE": False`` a released value's
  finalizer may run under it: see ``_Store``.)
- ``add`` is atomic because the check "is the key alive?" and the ``set`` that
  follows happen under the key's lock, which every other write of that key
  also takes: no write of the key can come between them. (``Moka.get_with``
  gives one initializer call per key, but its insert does not exclude a
  concurrent ``set``, so an ``add`` built on it could overwrite one.)
- ``incr`` and ``touch`` compare and swap: they read the entry without a lock,
  compute the new one outside it (unpickling and ``value + delta`` are the
  caller's code), then, under the key's lock, write it only if the stored
  entry is still the very object they read (each write stores a new tuple, so
  ``is`` cannot be fooled by an equal value), and otherwise start again. A
  retry means another write of that key succeeded, so some thread always
  makes progress, and no increment is lost or counted twice.
"""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Iterable
from typing import Any, Final, Literal

from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache
from django.core.exceptions import ImproperlyConfigured

from moka_py._django_tier import SIGNING_SALT, TieredMokaCache
from moka_py._moka_py import CacheStats, Moka

__all__ = ["SIGNING_SALT", "MokaCache", "TieredMokaCache"]

# The clock of the deadlines. A module attribute so that tests can replace it.
_clock = time.monotonic

# moka_py refuses a ttl over 1000 years: a longer timeout is kept by the
# deadline alone (moka holds the entry until it is evicted or overwritten).
_MAX_TTL: Final = 1000.0 * 365.0 * 24.0 * 3600.0

_STRIPES: Final = 64

_POLICIES: Final = ("tiny_lfu", "lru")
_OPTIONS: Final = ("MAX_ENTRIES", "POLICY", "PICKLE", "STATS", "CULL_FREQUENCY")
# MAX_ENTRIES and CULL_FREQUENCY mean what Django says: a write that finds the
# cache holding MAX_ENTRIES entries or more first removes 1/CULL_FREQUENCY of
# them (0: all). moka's own capacity is a backstop above it, never reached in
# practice (the cull keeps the count below it), so that moka never refuses or
# evicts a key just written: under TinyLFU a key set into a full cache can be
# refused at once, and Django's caches promise that a key just set is there.
# moka's count of entries lags its pending writes, at most its write log (384
# entries) plus what concurrent writers add: a write looks at that count and
# counts exactly (moka's pending work applied) only within _SLACK of the limit.
_SLACK: Final = 512

# An entry: the payload (pickled bytes, or the value itself) and its deadline.
_Entry = tuple[Any, "float | None"]


class _Store:
    """The entries of one ``LOCATION`` and the key locks that guard their writes."""

    __slots__ = ("cull_lock", "culling", "locks", "moka")

    def __init__(
        self, capacity: int, policy: Literal["tiny_lfu", "lru"], pickled: bool, stats: bool
    ) -> None:
        self.moka: Moka[Any, _Entry] = Moka(capacity + 2 * _SLACK, policy=policy, stats=stats)
        # One cull at a time: the flag is claimed and given back under the
        # lock, and the cull itself (moka calls that release values) runs
        # outside it; a write that finds a cull running goes on without one.
        self.cull_lock = threading.Lock()
        self.culling = False
        # moka_py releases what moka lets go of (a replaced or evicted entry, or
        # one freed later from moka's garbage) after any moka call, so also after
        # one made under these locks. With pickled values that runs no Python
        # code: an entry is a tuple of bytes and a float. A value stored by
        # reference may have a finalizer that uses the cache: so that it cannot
        # deadlock on these locks, such a store has a single reentrant one
        # (writes of all keys take turns; a finalizer that runs under it takes
        # it again, and no thread that holds it waits for another's).
        self.locks: list[Any] = (
            [threading.Lock() for _ in range(_STRIPES)]
            if pickled
            else [threading.RLock()] * _STRIPES
        )


# A store per LOCATION and options (CULL_FREQUENCY too: how a store culls is
# the store's, as its capacity is).
_stores: dict[tuple[str, int, int, str, bool, bool], _Store] = {}
_stores_lock = threading.Lock()


def _store(
    location: str,
    capacity: int,
    cull_frequency: int,
    policy: Literal["tiny_lfu", "lru"],
    pickled: bool,
    stats: bool,
) -> _Store:
    ident = (location, capacity, cull_frequency, policy, pickled, stats)
    with _stores_lock:
        store = _stores.get(ident)
        if store is None:
            store = _stores[ident] = _Store(capacity, policy, pickled, stats)
        return store


def _options(options: dict[str, Any]) -> tuple[int, Literal["tiny_lfu", "lru"], bool, bool]:
    unknown = sorted(set(options) - set(_OPTIONS), key=str)
    if unknown:
        raise ImproperlyConfigured(
            f"MokaCache: unknown OPTIONS {', '.join(map(repr, unknown))}; "
            f"the options are {', '.join(_OPTIONS)}"
        )
    capacity = options.get("MAX_ENTRIES", 300)
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0:
        raise ImproperlyConfigured(f"MokaCache: MAX_ENTRIES must be an int >= 0, not {capacity!r}")
    policy = options.get("POLICY", "tiny_lfu")
    if policy not in _POLICIES:
        raise ImproperlyConfigured(f"MokaCache: POLICY must be 'tiny_lfu' or 'lru', not {policy!r}")
    pickled = options.get("PICKLE", True)
    if not isinstance(pickled, bool):
        raise ImproperlyConfigured(f"MokaCache: PICKLE must be True or False, not {pickled!r}")
    stats = options.get("STATS", False)
    if not isinstance(stats, bool):
        raise ImproperlyConfigured(f"MokaCache: STATS must be True or False, not {stats!r}")
    return capacity, policy, pickled, stats


def _alive(entry: _Entry | None) -> bool:
    if entry is None:
        return False
    deadline = entry[1]
    return deadline is None or deadline > _clock()


class MokaCache(BaseCache):
    """A Django cache backend on :class:`moka_py.Moka`, with ``LocMemCache``'s semantics.

    ``OPTIONS``: ``MAX_ENTRIES`` (the capacity, default 300), ``POLICY``
    (``"tiny_lfu"``, the default, or ``"lru"``), ``PICKLE`` (default ``True``:
    values are pickled, so mutating a value read back does not change the
    cache; ``False`` stores references: faster, for values nobody mutates, and
    the writes of all keys take turns on one lock, see ``_Store``) and
    ``STATS`` (default ``False``: ``True`` records statistics, read with
    :meth:`stats`, exported by ``moka_py.otel``/``moka_py.prometheus``) and
    ``CULL_FREQUENCY`` (default 3). Any other option raises
    ``ImproperlyConfigured``. ``MAX_ENTRIES`` and ``CULL_FREQUENCY`` mean
    what Django says: a write that finds ``MAX_ENTRIES`` entries or more
    first removes ``1/CULL_FREQUENCY`` of them (``0``: all of them); a key
    just written is always there to be read. ``POLICY`` is the policy of
    moka's capacity, ``MAX_ENTRIES + 1024``, which the cull keeps the cache
    below.

    Timeouts are Django's: ``None`` never expires, ``0`` or less deletes the key
    (``add`` then stores nothing but returns ``True`` if the key was absent).
    ``delete`` returns ``False`` for an expired key, where ``LocMemCache``
    returns ``True`` until it notices the expiry. The ``a*`` methods run the
    sync ones directly, in the event loop: with pickled values no call waits
    longer than a few moka calls of another thread on the same key.
    """

    pickle_protocol = pickle.HIGHEST_PROTOCOL

    def __init__(self, location: str, params: dict[str, Any]) -> None:
        capacity, policy, pickled, stats = _options(params.get("OPTIONS", {}))
        super().__init__(params)
        self._max_entries = capacity
        self._pickled = pickled
        store = _store(location, capacity, self._cull_frequency, policy, pickled, stats)
        self._store = store
        self._cache = store.moka
        self._locks = store.locks

    def stats(self, *, cumulative: bool = False) -> CacheStats:
        """The statistics of this ``LOCATION`` (``OPTIONS={"STATS": True}``),
        as :meth:`moka_py.Moka.stats`: every read of the backend is a hit or a
        miss (``get``, ``get_many``, ``has_key``, and the reads of ``add``,
        ``incr``, ``touch``...).

        :raises ValueError: ``STATS`` is off."""
        return self._cache.stats(cumulative=cumulative)

    def reset_stats(self) -> None:
        """As :meth:`moka_py.Moka.reset_stats` (shared by every backend
        object of this ``LOCATION``)."""
        self._cache.reset_stats()

    # --- helpers ---------------------------------------------------------------

    def _dump(self, value: Any) -> Any:
        return pickle.dumps(value, self.pickle_protocol) if self._pickled else value

    def _load(self, payload: Any) -> Any:
        return pickle.loads(payload) if self._pickled else payload

    def _make_room(self) -> None:
        """Django's cull, before a write: if the cache holds ``MAX_ENTRIES``
        entries or more, removes ``count // CULL_FREQUENCY`` of them (all for
        ``CULL_FREQUENCY=0``), the first in moka's order (Django leaves which
        ones to the backend: ``LocMemCache`` the least recently used, the
        database cache the first by key, the file cache at random). Called
        with no lock held."""
        limit = self._max_entries
        cache = self._cache
        if cache._approx_count() < limit - _SLACK:
            return
        store = self._store
        with store.cull_lock:
            if store.culling:
                return
            store.culling = True
        try:
            count = cache.count()
            if count < limit:
                return
            if self._cull_frequency == 0:
                cache.clear()
            else:
                cache.remove_many(cache.keys()[: count // self._cull_frequency])
        finally:
            with store.cull_lock:
                store.culling = False

    def _lock(self, key: str) -> Any:
        return self._locks[hash(key) % _STRIPES]

    def _deadline(self, timeout: Any) -> tuple[bool, float | None]:
        """``(expires_now, deadline)`` for a Django timeout."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        if timeout is None:
            return False, None
        if not timeout > 0:  # zero, negative or NaN, as Django decides
            return True, None
        return False, _clock() + timeout

    def _live(self, key: str) -> _Entry | None:
        entry = self._cache.get(key)
        return entry if _alive(entry) else None

    def _write(self, key: str, payload: Any, deadline: float | None) -> None:
        """Stores the entry (the caller holds the key's lock); removes the key
        instead if the deadline has already passed."""
        ttl = None if deadline is None else deadline - _clock()
        if ttl is not None and not ttl > 0:
            self._cache.remove(key)
        else:
            # Beyond moka's range the deadline alone expires the entry.
            self._cache.set(key, (payload, deadline), ttl=ttl if ttl and ttl <= _MAX_TTL else None)

    def _replace(
        self, key: str, expected: _Entry, payload: Any, deadline: float | None, remove: bool = False
    ) -> bool:
        """Compare and swap: writes the entry (or removes the key) only if
        ``expected`` is still the stored entry. The entries read here are
        released after the unlock."""
        with self._lock(key):
            current = self._cache.get(key)
            if current is not expected:
                return False
            if remove:
                self._cache.remove(key)
            else:
                self._write(key, payload, deadline)
            return True

    # --- sync API ----------------------------------------------------------------

    def add(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        k = self.make_and_validate_key(key, version=version)
        payload = self._dump(value)
        expires_now, deadline = self._deadline(timeout)
        self._make_room()
        with self._lock(k):
            current = self._cache.get(k)
            if _alive(current):
                return False
            if expires_now:
                if current is not None:
                    self._cache.remove(k)  # an entry past its deadline
            else:
                self._write(k, payload, deadline)
            return True

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        entry = self._live(self.make_and_validate_key(key, version=version))
        return default if entry is None else self._load(entry[0])

    def set(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> None:
        k = self.make_and_validate_key(key, version=version)
        payload = self._dump(value)
        expires_now, deadline = self._deadline(timeout)
        self._make_room()
        with self._lock(k):
            if expires_now:
                self._cache.remove(k)
            else:
                self._write(k, payload, deadline)

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        k = self.make_and_validate_key(key, version=version)
        while True:
            entry = self._live(k)
            if entry is None:
                return False
            expires_now, deadline = self._deadline(timeout)
            if self._replace(k, entry, entry[0], deadline, remove=expires_now):
                return True

    def delete(self, key: Any, version: int | None = None) -> bool:
        k = self.make_and_validate_key(key, version=version)
        with self._lock(k):
            entry = self._cache.remove(k)
        return _alive(entry)

    def get_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        found = {}
        for key in keys:
            entry = self._live(self.make_and_validate_key(key, version=version))
            if entry is not None:
                found[key] = self._load(entry[0])
        return found

    def has_key(self, key: Any, version: int | None = None) -> bool:
        return self._live(self.make_and_validate_key(key, version=version)) is not None

    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        k = self.make_and_validate_key(key, version=version)
        while True:
            entry = self._live(k)
            if entry is None:
                raise ValueError(f"Key '{k}' not found")
            new_value = self._load(entry[0]) + delta
            if self._replace(k, entry, self._dump(new_value), entry[1]):
                return new_value

    def set_many(
        self, data: dict[Any, Any], timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> list[Any]:
        for key, value in data.items():
            self.set(key, value, timeout=timeout, version=version)
        return []

    def delete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        for key in keys:
            self.delete(key, version=version)

    def clear(self) -> None:
        self._cache.clear()

    # --- async API: the sync methods, run in place ---------------------------------

    async def aadd(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        return self.add(key, value, timeout, version)

    async def aget(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        return self.get(key, default, version)

    async def aset(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> None:
        self.set(key, value, timeout, version)

    async def atouch(
        self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        return self.touch(key, timeout, version)

    async def adelete(self, key: Any, version: int | None = None) -> bool:
        return self.delete(key, version)

    async def aget_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        return self.get_many(keys, version)

    async def ahas_key(self, key: Any, version: int | None = None) -> bool:
        return self.has_key(key, version)

    async def aincr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        return self.incr(key, delta, version)

    async def aset_many(
        self, data: dict[Any, Any], timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> list[Any]:
        return self.set_many(data, timeout, version)

    async def adelete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        self.delete_many(keys, version)

    async def aclear(self) -> None:
        self.clear()
