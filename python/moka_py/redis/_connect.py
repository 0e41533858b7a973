"""The connections a tiered cache opens for itself, made from the user's client.

The user's client may have no socket timeout and retry ten times (redis-py 8's
default), so the cache never sends its own commands through it: it builds a
client of the same kind from the same settings (host, database, username and
password, TLS, ``client_name``, the Sentinel service...) whose every command
is bounded by the cache's ``timeout`` and is not retried, and a connection of
the same settings for its invalidation feed. The user's client stays theirs:
the cache never closes it.

Every one of those connections keeps the security of the user's: TLS (its
certificates, CA, verification mode and every other ``ssl_*`` setting),
username, password and credential provider, and the same for the look-ups
that find a Sentinel service's master. ``_keep`` compares what each
connection of the cache will use with the user's client once it is built, so
a setting lost on the way (a shape of client, or a redis-py version, that
moves it somewhere else) refuses the cache at construction instead of
connecting with less: TLS dropped would send the password in clear. A
connection class the cache cannot reproduce (a custom asyncio class, which the
feed's thread would need as a sync one) is refused the same way.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.connection
import redis.asyncio.sentinel
import redis.cluster
import redis.connection
import redis.sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = ["Kind", "bounded_async", "bounded_sync", "feed_settings", "kind_of", "release_feed"]

# What the cache's own connections change of the user's settings.
_DROP = (
    "cache",
    "cache_config",
    "maint_notifications_config",
    "oss_cluster_maint_notifications_handler",
    "retry_on_timeout",
    # A cluster client's hook for its own connections (READONLY and such).
    "redis_connect_func",
    "response_callbacks",
    "himport_registry",
)


class Kind:
    REDIS = "redis"
    CLUSTER = "cluster"


def kind_of(client: object, *, asynchronous: bool) -> str:
    """``Kind.REDIS`` or ``Kind.CLUSTER``; ``TypeError`` for anything else."""
    if asynchronous:
        if isinstance(client, redis.asyncio.cluster.RedisCluster):
            return Kind.CLUSTER
        if isinstance(client, redis.asyncio.Redis):
            return Kind.REDIS
        want = "redis.asyncio.Redis or redis.asyncio.cluster.RedisCluster"
    else:
        if isinstance(client, redis.cluster.RedisCluster):
            return Kind.CLUSTER
        if isinstance(client, redis.Redis):
            return Kind.REDIS
        want = "redis.Redis or redis.cluster.RedisCluster"
    hint = ""
    if not asynchronous and isinstance(
        client, (redis.asyncio.Redis, redis.asyncio.cluster.RedisCluster)
    ):
        hint = " (an asyncio client: use AsyncTieredCache)"
    elif asynchronous and isinstance(client, (redis.Redis, redis.cluster.RedisCluster)):
        hint = " (a sync client: use TieredCache)"
    raise TypeError(f"client must be a {want}, not {type(client).__name__}{hint}")


def _bounded(
    kwargs: dict[str, Any], timeout: float, *, asynchronous: bool = False
) -> dict[str, Any]:
    """``kwargs`` with every command bounded by ``timeout`` and never retried.
    An asyncio client gets the asyncio ``Retry`` (redis-py 8.2 warns when it is
    given the sync one); a sync connection, the sync one."""
    out = {k: v for k, v in kwargs.items() if k not in _DROP}
    out.update(
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=AsyncRetry(NoBackoff(), 0) if asynchronous else Retry(NoBackoff(), 0),
        retry_on_error=[],
        health_check_interval=0,
        decode_responses=False,
        protocol=2,
    )
    return out


def _pool_kwargs(client: Any) -> dict[str, Any]:
    return dict(client.connection_pool.connection_kwargs)


# ------------------------------------------------------------ what must be kept

# The settings besides TLS that make a connection's security: who it
# authenticates as.
_AUTH_KEYS = ("username", "password", "credential_provider")
_TLS_CLASSES = (redis.connection.SSLConnection, redis.asyncio.connection.SSLConnection)


def _is_tls(cls: type) -> bool:
    return issubclass(cls, _TLS_CLASSES)


def _cluster_class(kw: dict[str, Any], *, asynchronous: bool) -> type:
    """The connection class of a cluster client's nodes (``ssl=True`` or a
    ``connection_class`` in its settings)."""
    cls: type | None = kw.get("connection_class")
    if cls is not None:
        return cls
    if asynchronous:
        return (
            redis.asyncio.connection.SSLConnection
            if kw.get("ssl")
            else redis.asyncio.connection.Connection
        )
    return redis.connection.SSLConnection if kw.get("ssl") else redis.connection.Connection


@functools.cache
def _ssl_defaults(cls: type) -> dict[str, Any]:
    """The ``ssl_*`` parameters of a TLS class (sync or asyncio) and their
    defaults: what a connection uses for a setting it is not given."""
    base = next(b for b in cls.__mro__ if b in _TLS_CLASSES)
    params = inspect.signature(base.__init__).parameters
    return {k: p.default for k, p in params.items() if k.startswith("ssl_")}


def _security(cls: type, kw: dict[str, Any]) -> dict[str, Any]:
    """What a connection of class ``cls`` made with ``kw`` authenticates with,
    and how it protects and verifies the link (an ``ssl_*`` setting not in
    ``kw`` at its default)."""
    out = {k: kw.get(k) for k in _AUTH_KEYS}
    out["TLS"] = _is_tls(cls)
    if out["TLS"]:
        out.update(_ssl_defaults(cls))
        out.update((k, v) for k, v in kw.items() if k.startswith("ssl_"))
    return out


def _keep(what: str, user: tuple[type, dict[str, Any]], ours: tuple[type, dict[str, Any]]) -> None:
    """Refuses (``ValueError``) a connection of the cache's that would not keep
    every security setting of the user's client. A setting that only the
    cache's class knows (the sync TLS class has OCSP settings the asyncio one
    has not) must be at its default. The message names the settings, never
    their values."""
    want, have = _security(*user), _security(*ours)
    defaults = _ssl_defaults(ours[0]) if have["TLS"] else {}
    lost = sorted(
        k for k in want.keys() | have.keys() if want.get(k, defaults.get(k)) != have.get(k)
    )
    if want["TLS"] != have["TLS"]:
        lost = ["TLS", *(k for k in lost if not k.startswith("ssl_") and k != "TLS")]
    if lost:
        raise ValueError(
            f"moka_py.redis cannot make {what} with the client's security settings: "
            f"{', '.join(lost)} would differ from the client's. Refusing rather than "
            "connect with less; please report the client's shape (redis-py "
            f"{redis.__version__})"
        )


def _refuse_class(cls: type, what: str, allowed: str) -> TypeError:
    return TypeError(
        f"moka_py.redis cannot reproduce the connection class "
        f"{cls.__module__}.{cls.__qualname__} for {what}: it makes its own connections "
        f"from the client's settings, and only knows {allowed}. Refusing rather than "
        "connect without what that class does"
    )


# ------------------------------------------------------------ the cache's own client


def bounded_sync(client: Any, kind: str, timeout: float) -> Any:
    """A sync client of the same settings as ``client`` (sync), bounded."""
    if kind == Kind.CLUSTER:
        user = dict(client.nodes_manager.connection_kwargs)
        kw = _bounded(user, timeout)
        for k in ("host", "port", "retry_on_error"):
            kw.pop(k, None)
        nodes = [
            redis.cluster.ClusterNode(n.host, n.port)  # type: ignore[no-untyped-call]
            for n in client.get_nodes()
        ]
        own = redis.cluster.RedisCluster(
            startup_nodes=nodes,
            require_full_coverage=False,
            **kw,
        )
        ours = dict(own.nodes_manager.connection_kwargs)
        try:
            _keep(
                "its own cluster client",
                (_cluster_class(user, asynchronous=False), user),
                (_cluster_class(ours, asynchronous=False), ours),
            )
        except ValueError:
            own.close()  # (a sync cluster client connects as it is made)
            raise
        return own
    pool = client.connection_pool
    kw = _bounded(_pool_kwargs(client), timeout)
    # The class carries TLS for a Sentinel client, where `ssl=True` became
    # the pool's connection_class and is not in connection_kwargs.
    kw["connection_class"] = pool.connection_class
    from redis.sentinel import SentinelConnectionPool

    new_pool: Any
    if isinstance(pool, SentinelConnectionPool):
        # The same Sentinel service: failovers are followed as the user's are.
        make: Any = SentinelConnectionPool
        new_pool = make(pool.service_name, pool.sentinel_manager, **kw)
    else:
        new_pool = redis.ConnectionPool(**kw)
    _keep(
        "its own client",
        (pool.connection_class, pool.connection_kwargs),
        (new_pool.connection_class, new_pool.connection_kwargs),
    )
    return redis.Redis(connection_pool=new_pool)


def bounded_async(client: Any, kind: str, timeout: float) -> Any:
    """An asyncio client of the same settings as ``client`` (asyncio), bounded."""
    if kind == Kind.CLUSTER:
        raw = dict(client.connection_kwargs)
        user_cls = _cluster_class(raw, asynchronous=True)
        if user_cls not in (
            redis.asyncio.connection.Connection,
            redis.asyncio.connection.SSLConnection,
        ):
            raise _refuse_class(
                user_cls,
                "its own asyncio cluster client",
                "redis.asyncio.Connection and SSLConnection (ssl=True)",
            )
        kw = _bounded(
            {k: v for k, v in raw.items() if k in _ASYNC_CLUSTER_KEYS or k.startswith("ssl_")},
            timeout,
            asynchronous=True,
        )
        kw.pop("retry_on_error", None)
        # The asyncio cluster client takes TLS as ssl=True (it builds the
        # connection class itself) and every ssl_* setting as an argument.
        kw["ssl"] = _is_tls(user_cls)
        # An asyncio cluster client knows only its startup nodes until its
        # first command.
        known = client.get_nodes() or list(client.nodes_manager.startup_nodes.values())
        nodes = [redis.asyncio.cluster.ClusterNode(n.host, n.port) for n in known]
        own = redis.asyncio.cluster.RedisCluster(
            startup_nodes=nodes, require_full_coverage=False, **kw
        )
        ours = dict(own.connection_kwargs)
        _keep(
            "its own asyncio cluster client",
            (user_cls, raw),
            (_cluster_class(ours, asynchronous=True), ours),
        )
        return own
    pool = client.connection_pool
    kw = _bounded(_pool_kwargs(client), timeout, asynchronous=True)
    new_pool = redis.asyncio.ConnectionPool(connection_class=pool.connection_class, **kw)
    _keep(
        "its own asyncio client",
        (pool.connection_class, pool.connection_kwargs),
        (new_pool.connection_class, new_pool.connection_kwargs),
    )
    return redis.asyncio.Redis(connection_pool=new_pool)


# The settings an asyncio cluster client of the cache's own takes from the
# user's (with every ssl_* one).
_ASYNC_CLUSTER_KEYS = frozenset(
    {
        "client_name",
        "credential_provider",
        "username",
        "password",
        "encoding",
        "encoding_errors",
        "max_connections",
        "socket_keepalive",
        "socket_keepalive_options",
        "socket_read_size",
    }
)

# ------------------------------------------------------------ the feed

# The settings a sync connection of the feed takes from an asyncio client
# (with every ssl_* one when the connection is TLS).
_FEED_KEYS = (
    "host",
    "port",
    "db",
    "username",
    "password",
    "credential_provider",
    "client_name",
    "path",
    "socket_keepalive",
    "socket_keepalive_options",
    "lib_name",
    "lib_version",
)
_ASYNC_TO_SYNC: dict[type, type] = {
    redis.asyncio.connection.Connection: redis.connection.Connection,
    redis.asyncio.connection.SSLConnection: redis.connection.SSLConnection,
    redis.asyncio.connection.UnixDomainSocketConnection: (
        redis.connection.UnixDomainSocketConnection
    ),
}
_ASYNC_SENTINEL_TO_SYNC: dict[type, type] = {
    redis.asyncio.sentinel.SentinelManagedConnection: redis.sentinel.SentinelManagedConnection,
    redis.asyncio.sentinel.SentinelManagedSSLConnection: (
        redis.sentinel.SentinelManagedSSLConnection
    ),
}


def _sync_class(cls: type, table: dict[type, type], what: str) -> type:
    """The sync counterpart of the asyncio connection class ``cls``; a class
    that is not one of redis-py's own (``table``) is refused."""
    sync = table.get(cls)
    if sync is None:
        allowed = ", ".join(f"{c.__module__}.{c.__qualname__}" for c in table)
        raise _refuse_class(cls, what, allowed)
    return sync


def _async_to_sync_kwargs(raw: dict[str, Any], cls: type) -> dict[str, Any]:
    """The settings of an asyncio connection that its sync counterpart of
    class ``cls`` takes: ``_FEED_KEYS``, and every ``ssl_*`` one for TLS
    (the sync SSL classes take every setting the asyncio ones do)."""
    keep = {k: raw[k] for k in _FEED_KEYS if k in raw}
    if _is_tls(cls):
        keep.update((k, v) for k, v in raw.items() if k.startswith("ssl_"))
    return keep


class _FeedSentinelPool(redis.sentinel.SentinelConnectionPool):
    """The sync Sentinel pool made for the feed of an asyncio Sentinel client:
    the cache's own, closed with it (a user's pool, or a proxy of it, is not
    of this type)."""


def release_feed(kw: dict[str, Any]) -> None:
    """Closes what ``feed_settings`` made for the feed: the sync Sentinel pool
    of an asyncio Sentinel client, and its connections to the sentinels."""
    pool = kw.get("connection_pool")
    if type(pool) is _FeedSentinelPool:
        pool.disconnect()
        for sentinel in pool.sentinel_manager.sentinels:
            sentinel.close()


def _sync_sentinel_pool(pool: Any, cls: type, kw: dict[str, Any]) -> Any:
    """A sync ``SentinelConnectionPool`` for the service of an asyncio one:
    the same sentinels, asked with the same settings (TLS and credentials
    included), and connections of class ``cls`` to the master."""
    manager = pool.sentinel_manager
    pools = [s.connection_pool for s in manager.sentinels]
    # Every sentinel is asked with the same settings (the user's sentinel_kwargs).
    sentinel_cls = _sync_class(
        pools[0].connection_class, _ASYNC_TO_SYNC, "the feed's look-ups of the Sentinel master"
    )
    sentinel_kw = _async_to_sync_kwargs(pools[0].connection_kwargs, sentinel_cls)
    for k in ("host", "port", "db", "path"):
        sentinel_kw.pop(k, None)
    # (A sync Redis takes TLS as ssl=True.)
    sentinel_kw["ssl"] = _is_tls(sentinel_cls)
    # (Typed from redis-py 8.2 on, untyped before.)
    sync = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
        [(p.connection_kwargs["host"], p.connection_kwargs["port"]) for p in pools],
        min_other_sentinels=manager.min_other_sentinels,
        sentinel_kwargs=_bounded(sentinel_kw, kw["socket_timeout"]),
    )
    for theirs, mine in zip(pools, sync.sentinels, strict=True):
        _keep(
            "the feed's look-ups of the Sentinel master",
            (theirs.connection_class, theirs.connection_kwargs),
            (mine.connection_pool.connection_class, mine.connection_pool.connection_kwargs),
        )
    return _FeedSentinelPool(  # type: ignore[no-untyped-call]
        pool.service_name, sync, connection_class=cls, **kw
    )


def _is_asyncio(client: object) -> bool:
    return isinstance(client, (redis.asyncio.Redis, redis.asyncio.cluster.RedisCluster))


def feed_settings(client: Any, kind: str, timeout: float) -> tuple[type, dict[str, Any]]:
    """The connection class and settings of the feed's sync connection, for a
    sync or an asyncio ``client`` (the feed runs on a thread of its own either
    way). For a cluster, ``host``/``port`` are filled in per node."""
    asynchronous = _is_asyncio(client)
    what = "its invalidation feed's connection"
    if kind == Kind.CLUSTER:
        raw = dict(
            client.connection_kwargs if asynchronous else client.nodes_manager.connection_kwargs
        )
        user_cls = _cluster_class(raw, asynchronous=asynchronous)
    else:
        pool = client.connection_pool
        raw = dict(pool.connection_kwargs)
        user_cls = pool.connection_class
        if isinstance(pool, redis.asyncio.sentinel.SentinelConnectionPool):
            # The feed's thread needs a sync connection to the service's
            # master: one through a sync Sentinel of the same sentinels.
            cls = _sync_class(user_cls, _ASYNC_SENTINEL_TO_SYNC, what)
            kw = _bounded(_async_to_sync_kwargs(raw, cls), timeout)
            for k in ("host", "port"):
                kw.pop(k, None)
            kw["connection_pool"] = _sync_sentinel_pool(pool, cls, kw)
            _keep(what, (user_cls, raw), (cls, kw))
            return cls, kw
    if asynchronous:
        cls = _sync_class(user_cls, _ASYNC_TO_SYNC, what)
        kw = _bounded(_async_to_sync_kwargs(raw, cls), timeout)
    else:
        cls = user_cls
        kw = _bounded(raw, timeout)
    for k in ("connection_class", "ssl", "max_connections"):
        kw.pop(k, None)
    if not _is_tls(cls):
        kw = {k: v for k, v in kw.items() if not k.startswith("ssl_")}
    _keep(what, (user_cls, raw), (cls, kw))
    return cls, kw
