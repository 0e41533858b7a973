"""``moka_py.django.TieredMokaCache``: a Django cache backend on the tier
(:class:`moka_py.redis.TieredCache`): a local moka tier in every worker
process in front of a Redis shared by all of them.

How it is built:

- Django makes one backend object per thread (and per async context); they
  share one ``TieredCache`` per process and configuration (``_tiers``), so a
  process has one local tier and one invalidation feed per cache alias.
  ``close()``, which Django calls at the end of every request, closes nothing.
- The tier carries bytes: the backend serializes (pickle by default) and the
  tier signs what it stores, so the local tier holds the serialized value and
  every read deserializes it, as Django's other backends do: mutating a value
  read from the cache never changes what the next read returns. Pickle is
  safe here because every payload is signed (``SIGNING_KEY``, by default
  derived from ``SECRET_KEY``) and verified before it is unpickled.
- Django's timeouts map to the tier's ttl: ``None`` never expires (the tier
  is made with ``ttl=None``), zero or less deletes.
- ``add``, ``incr``/``decr`` and ``touch`` are the tier's atomic writes
  (``SET NX``, a compare and swap), ``get_or_set`` its ``get_with`` (one load
  of the default across every process). Every write tells the other
  processes, which drop their local copies.
- The ``a*`` methods answer a local hit in the event loop and run everything
  that talks to Redis in a thread (``sync_to_async(thread_sensitive=False)``:
  the backend is thread-safe, so calls need not take turns on one thread).
- No lock of this module is held while any code but a few dict operations
  runs: ``_tiers_lock`` guards the registry only; a tier is built (it
  connects) outside it, and of two built at once the second is closed.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache
from django.core.exceptions import ImproperlyConfigured
from django.utils.crypto import salted_hmac
from django.utils.module_loading import import_string

if TYPE_CHECKING:
    from moka_py.redis import TieredCache, TierStats

__all__ = ["SIGNING_SALT", "TieredMokaCache", "close_all"]

# The salt of the signing key derived from SECRET_KEY (and from each of
# SECRET_KEY_FALLBACKS, which verify): salted_hmac(SIGNING_SALT, b"", secret,
# algorithm="sha256").digest(), 32 bytes. Never SECRET_KEY itself.
SIGNING_SALT: Final = "moka_py.django.TieredMokaCache.signing_key"

_OPTIONS: Final = (
    "NAMESPACE",
    "LOCAL_MAX_ENTRIES",
    "LOCAL_TIMEOUT",
    "SERIALIZER",
    "SIGNING_KEY",
    "REDIS_TIMEOUT",
    "LOCK_TIMEOUT",
    "WAIT_TIMEOUT",
    "STATS",
    "CONNECTION_KWARGS",
    "SENTINELS",
    "SENTINEL_SERVICE",
    "SENTINEL_KWARGS",
)

_MISS: Any = object()
_FOREVER: Final = 100 * 365 * 86400.0  # the tier's longest ttl


class _Bytes:
    """The tier's serializer: the backend hands it bytes already serialized."""

    __slots__ = ()

    @staticmethod
    def dumps(obj: bytes) -> bytes:
        return obj

    @staticmethod
    def loads(data: bytes) -> bytes:
        return data


def _serializer(spec: Any) -> Any:
    # The tier's own serializers (imported here: moka_py.redis needs redis-py,
    # which MokaCache does not).
    from moka_py.redis import JSON
    from moka_py.redis._core import PICKLE

    if spec in (None, "pickle"):
        return PICKLE
    if spec == "json":
        return JSON
    if isinstance(spec, str):
        try:
            spec = import_string(spec)
        except ImportError as err:
            raise ImproperlyConfigured(f"TieredMokaCache: SERIALIZER {spec!r}: {err}") from err
        if isinstance(spec, type):
            spec = spec()
    if callable(getattr(spec, "dumps", None)) and callable(getattr(spec, "loads", None)):
        return spec
    raise ImproperlyConfigured(
        "TieredMokaCache: SERIALIZER must be 'pickle', 'json', or an object (or the dotted "
        f"path of a class or object) with dumps() and loads(), not {type(spec).__name__}"
    )


def derived_keys() -> list[bytes]:
    """The signing keys derived from ``SECRET_KEY`` (signs) and from each of
    ``SECRET_KEY_FALLBACKS`` (verify, for a rotation)."""
    secrets = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    if not secrets[0]:
        raise ImproperlyConfigured(
            "TieredMokaCache derives its signing key from SECRET_KEY, which is empty: "
            "set SECRET_KEY or OPTIONS['SIGNING_KEY']"
        )
    return [salted_hmac(SIGNING_SALT, b"", s, algorithm="sha256").digest() for s in secrets]


def _check(options: dict[str, Any]) -> None:
    unknown = sorted(set(options) - set(_OPTIONS), key=str)
    if unknown:
        raise ImproperlyConfigured(
            f"TieredMokaCache: unknown OPTIONS {', '.join(map(repr, unknown))}; "
            f"the options are {', '.join(_OPTIONS)}"
        )
    if "SIGNING_KEY" in options and options["SIGNING_KEY"] is None:
        raise ImproperlyConfigured(
            "TieredMokaCache: SIGNING_KEY cannot be None (payloads are always signed); "
            "leave it out to derive it from SECRET_KEY"
        )


def _client(location: str | Sequence[str], options: dict[str, Any]) -> Any:
    """The redis-py client of ``LOCATION`` (a URL; several: a cluster) or of
    the Sentinel service of ``OPTIONS``."""
    import redis
    import redis.cluster
    import redis.connection
    import redis.sentinel

    kwargs = dict(options.get("CONNECTION_KWARGS") or {})
    sentinels = options.get("SENTINELS")
    if sentinels:
        service = options.get("SENTINEL_SERVICE")
        if not isinstance(service, str) or location:
            raise ImproperlyConfigured(
                "TieredMokaCache: with SENTINELS, give SENTINEL_SERVICE (the master's "
                "name) and leave LOCATION empty"
            )
        manager = redis.sentinel.Sentinel(
            [tuple(s) for s in sentinels],
            sentinel_kwargs=options.get("SENTINEL_KWARGS"),
            **kwargs,
        )
        client: Any = manager.master_for(service)
        # (Closed with it: the connections that ask the Sentinels.)
        client._moka_py_sentinels = manager.sentinels
        return client
    urls = [location] if isinstance(location, str) else list(location)
    if not urls or not all(isinstance(u, str) and u for u in urls):
        raise ImproperlyConfigured(
            "TieredMokaCache: LOCATION must be a Redis URL, or a non-empty list of the URLs "
            f"of a cluster's nodes, not {_shape(location)} (a URL may hold a password: it is "
            "not shown)"
        )
    if len(urls) == 1 and isinstance(location, str):
        return redis.Redis.from_url(urls[0], **kwargs)
    # A cluster: the nodes of every URL, the settings of the first (a
    # cluster has no database but 0; rediss:// is ssl=True).
    parse: Callable[[str], dict[str, Any]] = redis.connection.parse_url
    node: Callable[[str, int], Any] = redis.cluster.ClusterNode
    nodes = []
    for url in urls:
        parsed = parse(url)
        nodes.append(node(parsed.get("host", "localhost"), parsed["port"]))
    settings_of = parse(urls[0])
    for name in ("host", "port", "path"):
        settings_of.pop(name, None)
    if settings_of.pop("db", 0) != 0:
        raise ImproperlyConfigured("TieredMokaCache: a Redis Cluster has no database but 0")
    if settings_of.pop("connection_class", None) is redis.connection.SSLConnection:
        settings_of["ssl"] = True
    return redis.cluster.RedisCluster(startup_nodes=nodes, **{**settings_of, **kwargs})


def _shape(location: object) -> str:
    """What ``location`` is, without its text (a URL may hold a password)."""
    if isinstance(location, str):
        return "an empty str" if not location else "that str"
    if isinstance(location, (list, tuple)):
        return f"a {type(location).__name__} of {len(location)}"
    return f"a {type(location).__name__}"


_tiers: dict[tuple[str, str], TieredCache[str, bytes]] = {}
# The redis-py client of each tier: made here, so closed here (close_all).
_clients: dict[tuple[str, str], Any] = {}
_tiers_lock = threading.Lock()


def close_all() -> None:
    """Closes every tier of this process and its client, and forgets them
    (the next backend object connects again). For tests, and for a process
    that wants its connections closed before it ends."""
    with _tiers_lock:
        tiers = list(_tiers.values())
        clients = list(_clients.values())
        _tiers.clear()
        _clients.clear()
    for tier in tiers:
        tier.close()
    for client in clients:
        _close(client)


def _close(client: Any) -> None:
    client.close()
    for sentinel in getattr(client, "_moka_py_sentinels", ()):
        sentinel.close()


def _tier(location: str | Sequence[str], options: dict[str, Any]) -> TieredCache[str, bytes]:
    from moka_py.redis import TieredCache

    keys = options["SIGNING_KEY"] if "SIGNING_KEY" in options else derived_keys()
    # (The keys enter the registry's key as a digest only.)
    public = {k: v for k, v in options.items() if k != "SIGNING_KEY"}
    ident = (
        repr(location),
        repr(sorted(public.items())) + hashlib.sha256(repr(keys).encode()).hexdigest(),
    )
    with _tiers_lock:
        found = _tiers.get(ident)
    if found is not None:
        return found
    # Built outside the lock (it connects, starts the feed and may log: a
    # handler that uses this cache must not wait on the lock its own thread
    # holds); two threads that build at once keep the first, close the other.
    client = _client(location, options)
    try:
        tier: TieredCache[str, bytes] = TieredCache(
            client,
            options.get("NAMESPACE", "django"),
            capacity=options.get("LOCAL_MAX_ENTRIES", 10_000),
            ttl=None,
            local_ttl=options.get("LOCAL_TIMEOUT"),
            serializer=_Bytes(),
            signing_key=keys,
            lock_timeout=options.get("LOCK_TIMEOUT", 30.0),
            wait_timeout=options.get("WAIT_TIMEOUT", 30.0),
            timeout=options.get("REDIS_TIMEOUT", 1.0),
            stats=options.get("STATS", False),
        )
    except BaseException:
        _close(client)  # (a bad option: nothing is kept)
        raise
    with _tiers_lock:
        found = _tiers.get(ident)
        if found is None:
            _tiers[ident] = tier
            _clients[ident] = client
            return tier
    tier.close()
    _close(client)
    return found


def _in_thread(fn: Callable[..., Any]) -> Callable[..., Any]:
    return sync_to_async(fn, thread_sensitive=False)


class TieredMokaCache(BaseCache):
    """A Django cache backend on :class:`moka_py.redis.TieredCache`: every
    worker process answers reads of what it holds locally without a round
    trip, and every write reaches Redis and every other worker at once.

    ``LOCATION``: a Redis URL (``redis://``, ``rediss://``, ``unix://``), or
    a list of the URLs of a Redis Cluster's nodes; empty with ``SENTINELS``.
    ``OPTIONS``: ``NAMESPACE`` (the prefix of every Redis key and of the
    channel, default ``"django"``; ``clear()`` deletes this namespace only),
    ``LOCAL_MAX_ENTRIES`` (each process's local tier, default 10,000),
    ``LOCAL_TIMEOUT`` (the longest a local copy is trusted, seconds; default
    none: until the entry expires or a write elsewhere invalidates it),
    ``SERIALIZER`` (``"pickle"``, the default, ``"json"``, or an object or the
    dotted path of a class with ``dumps``/``loads``), ``SIGNING_KEY`` (32 or
    more secret bytes, or a list whose first signs; default: derived from
    ``SECRET_KEY`` and ``SECRET_KEY_FALLBACKS`` with the salt
    :data:`SIGNING_SALT`), ``REDIS_TIMEOUT`` (bound of each Redis call,
    default 1 s), ``LOCK_TIMEOUT``/``WAIT_TIMEOUT`` (``get_or_set``'s load
    claim and wait, default 30 s), ``STATS``, ``CONNECTION_KWARGS`` (given to
    redis-py's client), ``SENTINELS`` (``[(host, port), ...]``),
    ``SENTINEL_SERVICE``, ``SENTINEL_KWARGS``. Any other option raises
    ``ImproperlyConfigured``; ``MAX_ENTRIES``/``CULL_FREQUENCY`` are not
    options: Redis's ``maxmemory`` policy bounds what Redis keeps.

    Tags, beyond Django's API: ``set``/``add``/``get_or_set``/``set_many``
    (and their async forms) take ``tags=[...]``, and
    ``invalidate_tags(*tags)``/``ainvalidate_tags`` make every entry written
    with one of them absent in every worker (``TieredCache.invalidate_tags``).
    """

    def __init__(self, server: str | Sequence[str], params: dict[str, Any]) -> None:
        options = dict(params.get("OPTIONS") or {})
        _check(options)
        super().__init__({**params, "OPTIONS": {}})
        self._serializer = _serializer(options.get("SERIALIZER"))
        self._cache = _tier(server, options)
        # The tier's lookup of a local hit (no Redis call; default otherwise).
        self._local = self._cache._tier.rust.lookup

    # --- helpers ---------------------------------------------------------------

    def _dumps(self, value: Any) -> bytes:
        return self._serializer.dumps(value)  # type: ignore[no-any-return]

    def _loads(self, data: bytes) -> Any:
        return self._serializer.loads(data)

    def _ttl(self, timeout: Any) -> tuple[bool, float | None]:
        """``(expires_now, ttl)`` for a Django timeout (``ttl`` None: never)."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        if timeout is None:
            return False, None
        if not timeout > 0:  # zero, negative or NaN
            return True, None
        return False, min(float(timeout), _FOREVER)

    # --- sync API ----------------------------------------------------------------

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        data = self._cache.get(self.make_and_validate_key(key, version=version), _MISS)
        return default if data is _MISS else self._loads(data)

    def set(
        self,
        key: Any,
        value: Any,
        timeout: Any = DEFAULT_TIMEOUT,
        version: int | None = None,
        *,
        tags: Iterable[str] | None = None,
    ) -> None:
        k = self.make_and_validate_key(key, version=version)
        data = self._dumps(value)
        expires_now, ttl = self._ttl(timeout)
        if expires_now:
            self._cache.remove(k)
        else:
            self._cache.set(k, data, ttl, tags=tags)

    def add(
        self,
        key: Any,
        value: Any,
        timeout: Any = DEFAULT_TIMEOUT,
        version: int | None = None,
        *,
        tags: Iterable[str] | None = None,
    ) -> bool:
        k = self.make_and_validate_key(key, version=version)
        data = self._dumps(value)
        expires_now, ttl = self._ttl(timeout)
        if expires_now:
            # Stores nothing; True if the key was absent (Django's RedisCache).
            return not self._cache._contains(k)
        return self._cache.add(k, data, ttl, tags=tags)

    def invalidate_tags(self, *tags: str) -> None:
        """Makes every entry written with one of ``tags`` absent, in Redis and
        in every worker's local tier (one message, whatever their number)."""
        self._cache.invalidate_tags(*tags)

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        k = self.make_and_validate_key(key, version=version)
        expires_now, ttl = self._ttl(timeout)
        if expires_now:
            return self._cache.remove(k, _MISS) is not _MISS
        return self._cache.touch(k, ttl)

    def delete(self, key: Any, version: int | None = None) -> bool:
        k = self.make_and_validate_key(key, version=version)
        return self._cache.remove(k, _MISS) is not _MISS

    def get_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        made = {self.make_and_validate_key(key, version=version): key for key in keys}
        found = self._cache.get_many(made)
        return {made[k]: self._loads(data) for k, data in found.items()}

    def has_key(self, key: Any, version: int | None = None) -> bool:
        return self._cache._contains(self.make_and_validate_key(key, version=version))

    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        k = self.make_and_validate_key(key, version=version)
        new_value: Any = None

        def step(data: bytes) -> bytes:
            nonlocal new_value
            new_value = self._loads(data) + delta
            return self._dumps(new_value)

        try:
            self._cache.update(k, step)
        except KeyError:
            raise ValueError(f"Key '{key}' not found") from None
        return new_value

    def get_or_set(
        self,
        key: Any,
        default: Any,
        timeout: Any = DEFAULT_TIMEOUT,
        version: int | None = None,
        *,
        tags: Iterable[str] | None = None,
    ) -> Any:
        k = self.make_and_validate_key(key, version=version)
        data = self._cache.get(k, _MISS)
        if data is not _MISS:
            return self._loads(data)
        expires_now, ttl = self._ttl(timeout)
        if expires_now:
            return default() if callable(default) else default
        # One call of `default` across every process (the tier's get_with).
        data = self._cache.get_with(
            k, lambda: self._dumps(default() if callable(default) else default), ttl, None, tags
        )
        return self._loads(data)

    def set_many(
        self,
        data: dict[Any, Any],
        timeout: Any = DEFAULT_TIMEOUT,
        version: int | None = None,
        *,
        tags: Iterable[str] | None = None,
    ) -> list[Any]:
        items = {
            self.make_and_validate_key(k, version=version): self._dumps(v) for k, v in data.items()
        }
        expires_now, ttl = self._ttl(timeout)
        if expires_now:
            for k in items:
                self._cache.remove(k)
        else:
            self._cache.set_many(items, ttl, tags=tags)
        return []

    def delete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        for key in keys:
            self.delete(key, version=version)

    def clear(self) -> None:
        """Deletes every entry of this cache's ``NAMESPACE`` (and only those)
        from Redis and from every process's local tier."""
        self._cache.clear()

    def close(self, **kwargs: Any) -> None:
        """Nothing: the tier is the process's, and outlives a request."""

    def stats(self, *, cumulative: bool = False) -> TierStats:
        """The tier's statistics (``OPTIONS={"STATS": True}``; else ``ValueError``)."""
        return self._cache.stats(cumulative=cumulative)

    # --- async API: local hits here, Redis in a thread ------------------------------

    async def aget(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        k = self.make_and_validate_key(key, version=version)
        data = self._local(k, _MISS)
        if data is _MISS:
            data = await _in_thread(self._cache.get)(k, _MISS)
        return default if data is _MISS else self._loads(data)

    async def aget_or_set(
        self,
        key: Any,
        default: Any,
        timeout: Any = DEFAULT_TIMEOUT,
        version: int | None = None,
        *,
        tags: Iterable[str] | None = None,
    ) -> Any:
        k = self.make_and_validate_key(key, version=version)
        data = self._local(k, _MISS)
        if data is not _MISS:
            return self._loads(data)
        return await _in_thread(self.get_or_set)(key, default, timeout, version, tags=tags)

    async def aadd(
        self,
        key: Any,
        value: Any,
        timeout: Any = DEFAULT_TIMEOUT,
        version: int | None = None,
        *,
        tags: Iterable[str] | None = None,
    ) -> bool:
        added = await _in_thread(self.add)(key, value, timeout, version, tags=tags)
        return added  # type: ignore[no-any-return]

    async def aset(
        self,
        key: Any,
        value: Any,
        timeout: Any = DEFAULT_TIMEOUT,
        version: int | None = None,
        *,
        tags: Iterable[str] | None = None,
    ) -> None:
        await _in_thread(self.set)(key, value, timeout, version, tags=tags)

    async def ainvalidate_tags(self, *tags: str) -> None:
        await _in_thread(self.invalidate_tags)(*tags)

    async def atouch(
        self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        return await _in_thread(self.touch)(key, timeout, version)  # type: ignore[no-any-return]

    async def adelete(self, key: Any, version: int | None = None) -> bool:
        return await _in_thread(self.delete)(key, version)  # type: ignore[no-any-return]

    async def aget_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        return await _in_thread(self.get_many)(list(keys), version)  # type: ignore[no-any-return]

    async def ahas_key(self, key: Any, version: int | None = None) -> bool:
        return await _in_thread(self.has_key)(key, version)  # type: ignore[no-any-return]

    async def aincr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        return await _in_thread(self.incr)(key, delta, version)

    async def adecr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        return await _in_thread(self.incr)(key, -delta, version)

    async def aset_many(
        self,
        data: dict[Any, Any],
        timeout: Any = DEFAULT_TIMEOUT,
        version: int | None = None,
        *,
        tags: Iterable[str] | None = None,
    ) -> list[Any]:
        done = await _in_thread(self.set_many)(data, timeout, version, tags=tags)
        return done  # type: ignore[no-any-return]

    async def adelete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        await _in_thread(self.delete_many)(list(keys), version)

    async def aclear(self) -> None:
        await _in_thread(self.clear)()

    async def aclose(self, **kwargs: Any) -> None:
        """Nothing, as :meth:`close`."""
