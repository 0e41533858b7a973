"""moka_py.redis over TLS: every connection the cache opens (its own client,
its invalidation feed, its look-ups of a Sentinel's master) keeps the TLS,
certificates, verification mode and credentials of the user's client, for
every shape of client, sync and asyncio.

The servers are real and TLS-only (tests/redis_servers.py: `--port 0 --tls-port
P`, client certificates required, a password), so a connection the cache made
in plaintext, or without the client certificate, fails: two caches that share
values and see each other's invalidations prove that their own clients and
their feeds went over TLS. A plain TCP listener posing as the server (or as the
master a Sentinel announces) proves that nothing, and no `AUTH`, leaves a cache
in clear, as the review that found the plaintext `AUTH` did. The Sentinel
scenarios run in a child interpreter (`run_isolated`): redis-py's Sentinel
clients keep sockets that would warn, unclosed, in a later test.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.connection
import redis.asyncio.sentinel
import redis.connection
import redis.sentinel
from redis_fixtures import TLS_PASSWORD
from redis_servers import (
    HOST,
    SENTINEL_SERVICE,
    PlainListener,
    RedisCluster3,
    RedisServer,
    TLSFiles,
)
from support import SIGNING_KEY, run_isolated, wait_for

from moka_py.redis import AsyncTieredCache, TieredCache, _connect

pytestmark = pytest.mark.thread_unsafe  # the threads of one test would share its servers

NS = "users"
TLS_RECORD = b"\x16\x03"  # a TLS handshake record: the first bytes of a ClientHello


@pytest.fixture
def tls_db(redis_tls_server: RedisServer) -> RedisServer:
    redis_tls_server.flushall()
    return redis_tls_server


@pytest.fixture
def tls_cluster(redis_tls_cluster: RedisCluster3) -> RedisCluster3:
    redis_tls_cluster.flushall()
    return redis_tls_cluster


def _share(a: TieredCache[Any, Any], b: TieredCache[Any, Any]) -> None:
    """Both feeds subscribe; a value set by one is read by the other, and its
    change reaches the other's local copy through the feed."""
    assert a.wait_ready(10) and b.wait_ready(10)
    a.set("k", 1)
    assert b.get("k") == 1  # now in b's local tier too
    a.set("k", 2)
    wait_for(lambda: b.get("k") == 2, timeout=5)
    assert a.feed_up and b.feed_up


async def _share_async(a: AsyncTieredCache[Any, Any], b: AsyncTieredCache[Any, Any]) -> None:
    assert await a.wait_ready(10) and await b.wait_ready(10)
    await a.set("k", 1)
    assert await b.get("k") == 1
    await a.set("k", 2)
    deadline = time.monotonic() + 5
    while await b.get("k") != 2:
        assert time.monotonic() < deadline, "b never saw a's change"
        await asyncio.sleep(0.01)
    assert a.feed_up and b.feed_up


# ---------------------------------------------------------------- the shapes


def _acl_url(server: RedisServer) -> str:
    """A `rediss://` URL of an ACL user (username and password) of `server`."""
    server.acl_setuser("app", "app-password", keys=(f"{NS}:*",), channels=(f"{NS}:*",))
    assert server.tls is not None
    return f"rediss://app:app-password@{HOST}:{server.port}/0?{server.tls.url_query()}"


SYNC_SHAPES: dict[str, Callable[[RedisServer], redis.Redis]] = {
    "Redis(ssl=True)": lambda s: s.client(),
    "from_url(rediss://)": lambda s: redis.Redis.from_url(s.url),
    "from_url(rediss://user:password)": lambda s: redis.Redis.from_url(_acl_url(s)),
}


@pytest.mark.parametrize("shape", list(SYNC_SHAPES))
def test_sync_client_shares_over_tls(tls_db: RedisServer, shape: str) -> None:
    client = SYNC_SHAPES[shape](tls_db)
    with (
        TieredCache(client, namespace=NS, signing_key=SIGNING_KEY) as a,
        TieredCache(client, namespace=NS, signing_key=SIGNING_KEY) as b,
    ):
        _share(a, b)
    client.close()


ASYNC_SHAPES: dict[str, Callable[[RedisServer], redis.asyncio.Redis]] = {
    "Redis(ssl=True)": lambda s: s.async_client(),
    "from_url(rediss://)": lambda s: redis.asyncio.Redis.from_url(s.url),
    "from_url(rediss://user:password)": lambda s: redis.asyncio.Redis.from_url(_acl_url(s)),
}


@pytest.mark.parametrize("shape", list(ASYNC_SHAPES))
def test_asyncio_client_shares_over_tls(tls_db: RedisServer, shape: str) -> None:
    async def main() -> None:
        client = ASYNC_SHAPES[shape](tls_db)
        async with (
            AsyncTieredCache(client, namespace=NS, signing_key=SIGNING_KEY) as a,
            AsyncTieredCache(client, namespace=NS, signing_key=SIGNING_KEY) as b,
        ):
            await _share_async(a, b)
        await client.aclose()

    asyncio.run(main())


def test_sync_cluster_shares_over_tls(tls_cluster: RedisCluster3) -> None:
    client = tls_cluster.client()
    with (
        TieredCache(client, namespace=NS, signing_key=SIGNING_KEY) as a,
        TieredCache(client, namespace=NS, signing_key=SIGNING_KEY) as b,
    ):
        _share(a, b)
        a.set_many({i: i for i in range(30)})  # keys on every master
        assert b.get_many(range(30)) == {i: i for i in range(30)}


def test_asyncio_cluster_shares_over_tls(tls_cluster: RedisCluster3) -> None:
    # The shape whose own client went plain: TLS is its connection_class.
    async def main() -> None:
        client = tls_cluster.async_client()
        async with (
            AsyncTieredCache(client, namespace=NS, signing_key=SIGNING_KEY) as a,
            AsyncTieredCache(client, namespace=NS, signing_key=SIGNING_KEY) as b,
        ):
            await _share_async(a, b)
            await a.set_many({i: i for i in range(30)})
            assert await b.get_many(range(30)) == {i: i for i in range(30)}
        await client.aclose()

    asyncio.run(main())


# ---------------------------------------------------------------- Sentinel


def _sentinel_env(
    monkeypatch: pytest.MonkeyPatch, tls: TLSFiles, sentinel: RedisServer, master: int = 0
) -> None:
    monkeypatch.setenv("MOKA_TEST_TLS_DIR", str(tls.ca.parent))
    monkeypatch.setenv("MOKA_TEST_SENTINEL_PORT", str(sentinel.port))
    monkeypatch.setenv("MOKA_TEST_MASTER_PORT", str(master))


def _sentinel_settings() -> tuple[int, int, dict[str, Any]]:
    """The Sentinel's and the master's ports, and the TLS settings of a
    client (certificates, verification, the password) from the environment."""
    tls = TLSFiles.at(Path(os.environ["MOKA_TEST_TLS_DIR"]))
    sentinel, master = (int(os.environ[f"MOKA_TEST_{n}_PORT"]) for n in ("SENTINEL", "MASTER"))
    settings = {"ssl": True, "socket_timeout": 2, **tls.client_kwargs()}
    return sentinel, master, settings


def test_sync_sentinel_shares_over_tls(
    redis_tls_sentinel: tuple[RedisServer, RedisServer],
    tls_files: TLSFiles,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The shape whose own client went plain: TLS is the pool's connection class.
    master, sentinel = redis_tls_sentinel
    _sentinel_env(monkeypatch, tls_files, sentinel, master.port)
    run_isolated(_sync_sentinel_shares)


def _sync_sentinel_shares() -> None:
    sentinel, master, tls = _sentinel_settings()
    manager = redis.sentinel.Sentinel(
        [(HOST, sentinel)], sentinel_kwargs=tls, password=TLS_PASSWORD, **tls
    )
    client = manager.master_for(SENTINEL_SERVICE, client_name="app")
    assert client.connection_pool.connection_class is redis.sentinel.SentinelManagedSSLConnection
    with (
        TieredCache(client, namespace=NS, signing_key=SIGNING_KEY) as a,
        TieredCache(client, namespace=NS, signing_key=SIGNING_KEY) as b,
    ):
        _share(a, b)
        with redis.Redis(port=master, password=TLS_PASSWORD, **tls) as admin:
            assert admin.exists(f"{NS}:v:sk") == 1  # on the master, over TLS
            names = [c["name"] for c in admin.client_list()]
        assert names.count("app") >= 4, names  # two own clients and two feeds
    client.close()
    for sentinel in manager.sentinels:  # (Sentinel.close() is redis-py 6's)
        sentinel.close()
    gc.collect()


def test_asyncio_sentinel_shares_over_tls(
    redis_tls_sentinel: tuple[RedisServer, RedisServer],
    tls_files: TLSFiles,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The shape whose feed went plain (and whose feed asked the Sentinel in
    # plaintext): the sentinels are TLS-only here too.
    master, sentinel = redis_tls_sentinel
    _sentinel_env(monkeypatch, tls_files, sentinel, master.port)
    run_isolated(_asyncio_sentinel_shares)


def _asyncio_sentinel_shares() -> None:
    sentinel, master, tls = _sentinel_settings()

    async def main() -> list[Any]:
        manager = redis.asyncio.sentinel.Sentinel(
            [(HOST, sentinel)], sentinel_kwargs=tls, password=TLS_PASSWORD, **tls
        )
        client = manager.master_for(SENTINEL_SERVICE, client_name="app")
        async with (
            AsyncTieredCache(client, namespace=NS, signing_key=SIGNING_KEY) as a,
            AsyncTieredCache(client, namespace=NS, signing_key=SIGNING_KEY) as b,
        ):
            await _share_async(a, b)
            async with redis.asyncio.Redis(port=master, password=TLS_PASSWORD, **tls) as admin:
                names = [c["name"] for c in await admin.client_list()]
        await client.aclose()
        for s in manager.sentinels:
            await s.aclose()
        return names

    names = asyncio.run(main())
    gc.collect()
    assert names.count("app") >= 4, names  # two own clients and two feeds


# ---------------------------------------------------------------- nothing in clear


def _cache_connections(listener: PlainListener) -> list[bytes]:
    """What each connection to the listener sent, but a Sentinel's own links
    (plaintext, named `sentinel-<id>-cmd`/`-pubsub`: see the Sentinel test)."""
    return [d for d in listener.received if not (d.startswith(b"*") and b"sentinel-" in d)]


def _assert_only_tls(listener: PlainListener) -> None:
    """Connections of the cache reached the listener, and each one began a TLS
    handshake or sent nothing at all (one given up before its first byte): no
    AUTH, no password, nothing in clear."""
    wait_for(
        lambda: sum(d.startswith(TLS_RECORD) for d in _cache_connections(listener)) >= 2,
        timeout=10,
    )
    for data in _cache_connections(listener):
        assert data == b"" or data.startswith(TLS_RECORD), data[:80]
        assert b"AUTH" not in data.upper() and TLS_PASSWORD.encode() not in data


def _plain_listener_client(tls: TLSFiles, listener: PlainListener, **kw: Any) -> dict[str, Any]:
    return {
        "host": HOST,
        "port": listener.port,
        "password": TLS_PASSWORD,
        "socket_timeout": 1,
        **tls.client_kwargs(),
        **kw,
    }


def test_nothing_leaves_a_sync_cache_in_clear(tls_files: TLSFiles) -> None:
    with PlainListener() as listener:
        for client in (
            redis.Redis(ssl=True, **_plain_listener_client(tls_files, listener)),
            redis.Redis.from_url(
                f"rediss://:{TLS_PASSWORD}@{HOST}:{listener.port}/0?{tls_files.url_query()}"
            ),
        ):
            with TieredCache(client, namespace=NS, signing_key=SIGNING_KEY, timeout=0.5) as c:
                assert not c.wait_ready(0.5)
                assert c.get("k", "miss") == "miss"  # fail-safe: the server is unreachable
                with pytest.raises(redis.RedisError):
                    c.set("k", 1)
            client.close()
        _assert_only_tls(listener)


def test_nothing_leaves_an_asyncio_cache_in_clear(tls_files: TLSFiles) -> None:
    # The asyncio cluster client connects on first use, so the listener can be
    # its startup node: the own client and the feed's CLUSTER SLOTS go there.
    async def main(listener: PlainListener) -> None:
        kw = _plain_listener_client(tls_files, listener)
        for client in (
            redis.asyncio.Redis(ssl=True, **kw),
            redis.asyncio.cluster.RedisCluster(ssl=True, **kw),
        ):
            async with AsyncTieredCache(
                client, namespace=NS, signing_key=SIGNING_KEY, timeout=0.5
            ) as c:
                assert not await c.wait_ready(0.5)
                assert await c.get("k", "miss") == "miss"
                with pytest.raises(redis.RedisError):
                    await c.set("k", 1)
            await client.aclose()

    with PlainListener() as listener:
        asyncio.run(main(listener))
        _assert_only_tls(listener)


@pytest.fixture
def sentinel_of_listener(
    tls_files: TLSFiles, monkeypatch: pytest.MonkeyPatch
) -> Iterator[PlainListener]:
    """A TLS-only Sentinel that announces a PlainListener as the master (down
    only after a minute). The Sentinel itself reaches the listener in
    plaintext (`--tls-replication no`), so its own links, which carry its
    name, are told apart from the cache's."""
    with PlainListener() as listener:
        sentinel = RedisServer(
            "--tls-replication", "no",
            monitors=(HOST, listener.port),
            tls=tls_files,
            down_after_ms=60_000,
        )  # fmt: skip
        try:
            sentinel.start()
            _sentinel_env(monkeypatch, tls_files, sentinel)
            yield listener
        finally:
            sentinel.close()


def test_nothing_leaves_a_sync_sentinel_cache_in_clear(sentinel_of_listener: PlainListener) -> None:
    run_isolated(_sync_sentinel_to_listener)
    _assert_only_tls(sentinel_of_listener)


def _sync_sentinel_to_listener() -> None:
    sentinel, _, tls = _sentinel_settings()
    manager = redis.sentinel.Sentinel(
        [(HOST, sentinel)], sentinel_kwargs=tls, password=TLS_PASSWORD, **tls
    )
    client = manager.master_for(SENTINEL_SERVICE)
    # Each call asks the Sentinel (a TLS handshake) before it reaches the listener: 2 s, not
    # 0.5, leaves room for that on an emulated CPU (the aarch64 suite runs under qemu).
    with TieredCache(client, namespace=NS, signing_key=SIGNING_KEY, timeout=2.0) as c:
        assert not c.wait_ready(1.5)  # the feed tries (and fails) meanwhile
        for _ in range(2):
            assert c.get("k", "miss") == "miss"
    client.close()
    for sentinel in manager.sentinels:  # (Sentinel.close() is redis-py 6's)
        sentinel.close()
    gc.collect()


def test_nothing_leaves_an_asyncio_sentinel_cache_in_clear(
    sentinel_of_listener: PlainListener,
) -> None:
    run_isolated(_asyncio_sentinel_to_listener)
    _assert_only_tls(sentinel_of_listener)


def _asyncio_sentinel_to_listener() -> None:
    sentinel, _, tls = _sentinel_settings()

    async def main() -> None:
        manager = redis.asyncio.sentinel.Sentinel(
            [(HOST, sentinel)], sentinel_kwargs=tls, password=TLS_PASSWORD, **tls
        )
        client = manager.master_for(SENTINEL_SERVICE)
        # 2 s per call, not 0.5: as in _sync_sentinel_to_listener.
        async with AsyncTieredCache(
            client, namespace=NS, signing_key=SIGNING_KEY, timeout=2.0
        ) as c:
            assert not await c.wait_ready(1.5)  # the feed tries (and fails) meanwhile
            assert await c.get("k", "miss") == "miss"
        await client.aclose()
        for s in manager.sentinels:
            await s.aclose()

    asyncio.run(main())
    gc.collect()


# ---------------------------------------------------------------- verification


def test_a_wrong_ca_fails_rather_than_falling_back(
    tls_db: RedisServer, tls_files: TLSFiles
) -> None:
    """`ssl_cert_reqs="required"` with a CA that did not sign the server:
    the cache never connects (no fallback to plaintext or to no verification)."""
    good = tls_db.client()
    with TieredCache(good, namespace=NS, signing_key=SIGNING_KEY) as writer:
        writer.set("k", "secret value")
    wrong = tls_db.client(ssl_ca_certs=str(tls_files.wrong_ca), client_name="wrong-ca")
    assert wrong.connection_pool.connection_kwargs["ssl_cert_reqs"] == "required"
    with TieredCache(wrong, namespace=NS, signing_key=SIGNING_KEY, timeout=0.5) as c:
        assert not c.wait_ready(1)
        assert c.get("k", "miss") == "miss"
        names = [x["name"] for x in tls_db.admin.client_list()]
        assert "wrong-ca" not in names
    wrong.close()
    good.close()


def test_no_verification_is_carried_over_too(tls_db: RedisServer, tls_files: TLSFiles) -> None:
    """The other way round: a client that verifies nothing
    (`ssl_cert_reqs=none`, the wrong CA) still reaches the server, and so do
    the cache's connections: the mode is the client's, not a default."""
    url = (
        f"rediss://:{TLS_PASSWORD}@{HOST}:{tls_db.port}/0?ssl_cert_reqs=none"
        f"&ssl_check_hostname=false&ssl_ca_certs={tls_files.wrong_ca}"
        f"&ssl_certfile={tls_files.client_cert}&ssl_keyfile={tls_files.client_key}"
    )
    client = redis.Redis.from_url(url)
    with (
        TieredCache(client, namespace=NS, signing_key=SIGNING_KEY) as a,
        TieredCache(client, namespace=NS, signing_key=SIGNING_KEY) as b,
    ):
        _share(a, b)
    client.close()


# ---------------------------------------------------------------- refusals


class _CustomSSLConnection(redis.asyncio.connection.SSLConnection):
    """A connection class the cache cannot reproduce as a sync one."""


def test_a_custom_asyncio_connection_class_is_refused(tls_files: TLSFiles) -> None:
    async def main() -> None:
        pool = redis.asyncio.ConnectionPool(
            connection_class=_CustomSSLConnection,
            host=HOST,
            port=1,
            password=TLS_PASSWORD,
            **tls_files.client_kwargs(),
        )
        client = redis.asyncio.Redis(connection_pool=pool)
        with pytest.raises(TypeError, match="_CustomSSLConnection") as info:
            AsyncTieredCache(client, namespace=NS, signing_key=SIGNING_KEY)
        assert TLS_PASSWORD not in str(info.value)
        await client.aclose()

    asyncio.run(main())


def test_a_sync_custom_connection_class_is_kept(tls_db: RedisServer) -> None:
    """A sync client's own class is the cache's too (own client and feed)."""

    class Counting(redis.connection.SSLConnection):
        made = 0

        def __init__(self, **kw: Any) -> None:
            type(self).made += 1
            super().__init__(**kw)

    kw = tls_db._client_kwargs({})
    kw.pop("ssl")
    client = redis.Redis(connection_pool=redis.ConnectionPool(connection_class=Counting, **kw))
    with TieredCache(client, namespace=NS, signing_key=SIGNING_KEY) as c:
        assert c.wait_ready(5)
        c.set("k", 1)
        assert Counting.made >= 2  # the feed's connection and the own client's
    client.close()


@pytest.mark.parametrize(
    ("user", "ours", "lost"),
    [
        # TLS dropped: the password would cross in clear.
        (
            (redis.connection.SSLConnection, {"password": "pw-secret", "ssl_ca_certs": "ca"}),
            (redis.connection.Connection, {"password": "pw-secret"}),
            "TLS",
        ),
        # Verification weakened.
        (
            (redis.connection.SSLConnection, {"ssl_cert_reqs": "required"}),
            (redis.connection.SSLConnection, {"ssl_cert_reqs": "none"}),
            "ssl_cert_reqs",
        ),
        # A client certificate dropped, a password dropped.
        (
            (redis.connection.SSLConnection, {"ssl_certfile": "c", "password": "pw-secret"}),
            (redis.connection.SSLConnection, {}),
            "password, ssl_certfile",
        ),
        # An asyncio CA dropped on the way to the sync feed.
        (
            (redis.asyncio.connection.SSLConnection, {"ssl_ca_certs": "ca"}),
            (redis.sentinel.SentinelManagedSSLConnection, {}),
            "ssl_ca_certs",
        ),
    ],
)
def test_a_lost_setting_refuses_the_cache(
    user: tuple[type, dict[str, Any]], ours: tuple[type, dict[str, Any]], lost: str
) -> None:
    """The check every connection of the cache passes at construction
    (_connect._keep), without a server: it names the settings, never their
    values."""
    with pytest.raises(ValueError, match="Refusing rather than connect with less") as info:
        _connect._keep("a connection", user, ours)
    assert f": {lost} would differ" in str(info.value)
    assert "pw-secret" not in str(info.value)


def test_the_same_settings_pass_across_sync_and_asyncio() -> None:
    # The sync TLS class knows settings the asyncio one has not (OCSP): at
    # their defaults they are no loss.
    _connect._keep(
        "a connection",
        (redis.asyncio.connection.SSLConnection, {"ssl_ca_certs": "ca", "password": "p"}),
        (
            redis.connection.SSLConnection,
            {"ssl_ca_certs": "ca", "password": "p", "ssl_validate_ocsp": False},
        ),
    )
    with pytest.raises(ValueError, match="ssl_validate_ocsp"):
        _connect._keep(
            "a connection",
            (redis.asyncio.connection.SSLConnection, {"ssl_ca_certs": "ca"}),
            (redis.connection.SSLConnection, {"ssl_ca_certs": "ca", "ssl_validate_ocsp": True}),
        )
