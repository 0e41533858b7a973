"""The connections a tiered cache opens for itself, made from the user's client.

The user's client may have no socket timeout and retry ten times (redis-py 8's
default), so the cache never sends its own commands through it: it builds a
client of the same kind from the same settings (host, database, username and
password, TLS, ``client_name``, the Sentinel service...) whose every command
is bounded by the cache's ``timeout`` and is not retried, and a connection of
the same settings for its invalidation feed. The user's client stays theirs:
the cache never closes it.
"""

from __future__ import annotations

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


def bounded_sync(client: Any, kind: str, timeout: float) -> Any:
    """A sync client of the same settings as ``client`` (sync), bounded."""
    if kind == Kind.CLUSTER:
        kw = _bounded(dict(client.nodes_manager.connection_kwargs), timeout)
        for k in ("host", "port", "retry_on_error"):
            kw.pop(k, None)
        nodes = [
            redis.cluster.ClusterNode(n.host, n.port)  # type: ignore[no-untyped-call]
            for n in client.get_nodes()
        ]
        return redis.cluster.RedisCluster(
            startup_nodes=nodes,
            require_full_coverage=False,
            **kw,
        )
    pool = client.connection_pool
    kw = _bounded(_pool_kwargs(client), timeout)
    from redis.sentinel import SentinelConnectionPool

    new_pool: Any
    if isinstance(pool, SentinelConnectionPool):
        # The same Sentinel service: failovers are followed as the user's are.
        make: Any = SentinelConnectionPool
        new_pool = make(pool.service_name, pool.sentinel_manager, **kw)
    else:
        new_pool = redis.ConnectionPool(connection_class=pool.connection_class, **kw)
    return redis.Redis(connection_pool=new_pool)


def bounded_async(client: Any, kind: str, timeout: float) -> Any:
    """An asyncio client of the same settings as ``client`` (asyncio), bounded."""
    if kind == Kind.CLUSTER:
        raw = dict(client.connection_kwargs)
        kw = _bounded(
            {k: v for k, v in raw.items() if k in _ASYNC_CLUSTER_KEYS}, timeout, asynchronous=True
        )
        kw.pop("retry_on_error", None)
        # An asyncio cluster client knows only its startup nodes until its
        # first command.
        known = client.get_nodes() or list(client.nodes_manager.startup_nodes.values())
        nodes = [redis.asyncio.cluster.ClusterNode(n.host, n.port) for n in known]
        return redis.asyncio.cluster.RedisCluster(
            startup_nodes=nodes, require_full_coverage=False, **kw
        )
    pool = client.connection_pool
    kw = _bounded(_pool_kwargs(client), timeout, asynchronous=True)
    new_pool = redis.asyncio.ConnectionPool(connection_class=pool.connection_class, **kw)
    return redis.asyncio.Redis(connection_pool=new_pool)


# The settings an asyncio cluster client of the cache's own takes from the user's.
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
        "ssl",
        "ssl_ca_certs",
        "ssl_ca_data",
        "ssl_cert_reqs",
        "ssl_certfile",
        "ssl_check_hostname",
        "ssl_keyfile",
        "ssl_min_version",
        "ssl_ciphers",
    }
)

# The settings a sync connection of the feed takes from an asyncio client.
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


def _sync_sentinel_pool(pool: Any, kw: dict[str, Any]) -> Any:
    """A sync ``SentinelConnectionPool`` for the service of an asyncio one:
    the same sentinels, asked with the same settings."""
    manager = pool.sentinel_manager
    settings = [s.connection_pool.connection_kwargs for s in manager.sentinels]
    # Every sentinel is asked with the same settings (the user's sentinel_kwargs).
    sentinel_kw = {k: settings[0][k] for k in _FEED_KEYS if k in settings[0]}
    for k in ("host", "port", "db"):
        sentinel_kw.pop(k, None)
    # (Typed from redis-py 8.2 on, untyped before.)
    sync = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
        [(s["host"], s["port"]) for s in settings],
        min_other_sentinels=manager.min_other_sentinels,
        sentinel_kwargs=_bounded(sentinel_kw, kw["socket_timeout"]),
    )
    return _FeedSentinelPool(pool.service_name, sync, **kw)  # type: ignore[no-untyped-call]


def feed_settings(client: Any, kind: str, timeout: float) -> tuple[type, dict[str, Any]]:
    """The connection class and settings of the feed's sync connection, for a
    sync or an asyncio ``client`` (the feed runs on a thread of its own either
    way). For a cluster, ``host``/``port`` are filled in per node."""
    if kind == Kind.CLUSTER:
        raw = dict(
            client.nodes_manager.connection_kwargs
            if hasattr(client, "nodes_manager")
            else client.connection_kwargs
        )
        cls: type = redis.connection.Connection
        if raw.get("ssl") or raw.get("connection_class") in (
            redis.connection.SSLConnection,
            redis.asyncio.connection.SSLConnection,
        ):
            cls = redis.connection.SSLConnection
    else:
        pool = client.connection_pool
        raw = dict(pool.connection_kwargs)
        cls = _ASYNC_TO_SYNC.get(pool.connection_class) or pool.connection_class
        if isinstance(pool, redis.asyncio.sentinel.SentinelConnectionPool):
            # The feed's thread needs a sync connection to the service's
            # master: one through a sync Sentinel of the same sentinels.
            kw = {k: raw[k] for k in _FEED_KEYS if k in raw and k not in ("host", "port")}
            kw = _bounded(kw, timeout)
            kw["connection_pool"] = _sync_sentinel_pool(pool, kw)
            return redis.sentinel.SentinelManagedConnection, kw
    if cls in _ASYNC_TO_SYNC.values() and isinstance(
        client, (redis.asyncio.Redis, redis.asyncio.cluster.RedisCluster)
    ):
        keep = {k: raw[k] for k in _FEED_KEYS if k in raw}
        keep.update({k: v for k, v in raw.items() if k.startswith("ssl_")})
        raw = keep
    kw = _bounded(raw, timeout)
    for k in ("connection_class", "ssl", "max_connections"):
        kw.pop(k, None)
    if cls is not redis.connection.SSLConnection:
        kw = {k: v for k, v in kw.items() if not k.startswith("ssl_")}
    return cls, kw
