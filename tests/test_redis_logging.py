"""What moka_py.redis logs on the logger "moka_py.redis", seen with real
faults on a real redis-server: the feed's connection killed, the server
stopped (SIGSTOP) and resumed, a claim that vanished under a load, a claim of
another process that outlasts wait_timeout. Normal operation logs nothing
above DEBUG, and no record carries a key."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from redis_servers import RedisServer
from support import SIGNING_KEY, wait_for

from moka_py.redis import AsyncTieredCache, TieredCache

pytestmark = pytest.mark.thread_unsafe  # each test changes its own server

NS = "users"
# A key whose name must never appear in a log record (nor its encoding).
KEY = "sk-do-not-log-me"


@pytest.fixture
def records(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG, logger="moka_py")
    yield caplog
    for r in caplog.get_records("call"):
        assert KEY not in r.getMessage()


def _of(records: pytest.LogCaptureFixture, level: int, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in list(records.records)
        if r.name == "moka_py.redis" and r.levelno == level and text in r.getMessage()
    ]


def _above_debug(records: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in list(records.records) if r.levelno > logging.DEBUG]


def cache_on(server: RedisServer, **options: Any) -> TieredCache[Any, Any]:
    client = server.client(socket_timeout=None, socket_connect_timeout=None)
    c: TieredCache[Any, Any] = TieredCache(
        client, namespace=NS, signing_key=SIGNING_KEY, timeout=0.5, stats=True, **options
    )
    assert c.wait_ready(5)
    return c


def test_normal_operation_logs_nothing_above_debug(
    redis_db: RedisServer, records: pytest.LogCaptureFixture
) -> None:
    with cache_on(redis_db) as a, cache_on(redis_db) as b:
        a.set(KEY, 1)
        wait_for(lambda: b.get(KEY) == 1, timeout=5)
        assert b.get_with("loaded", lambda: 2) == 2
        a.remove(KEY)
    assert _above_debug(records) == []
    # The feeds coming up at start and stopping at close are DEBUG records.
    assert len(_of(records, logging.DEBUG, "the invalidation feed is up")) == 2
    assert len(_of(records, logging.DEBUG, "the invalidation feed stopped")) == 2


def test_a_killed_feed_is_logged_lost_with_its_cause_then_back(
    own_redis_server: RedisServer, records: pytest.LogCaptureFixture
) -> None:
    with cache_on(own_redis_server) as a:
        a.set(KEY, 1)
        assert _above_debug(records) == []
        assert own_redis_server.client_kill(type="pubsub") >= 1
        wait_for(lambda: a.stats().feed_losses == 1, timeout=5)
        assert a.wait_ready(5)
        wait_for(lambda: _of(records, logging.INFO, "feed is back after"), timeout=5)
    lost = _of(records, logging.WARNING, "the invalidation feed was lost (")
    assert len(lost) == 1
    # The cause is named (the connection closed under the read) in our words.
    assert "namespace 'users'" in lost[0] and "()" not in lost[0]
    back = _of(records, logging.INFO, "feed is back after")
    assert len(back) == 1 and "restarted" not in back[0]


def test_the_breaker_is_logged_open_then_closed(
    own_redis_server: RedisServer, records: pytest.LogCaptureFixture
) -> None:
    with cache_on(own_redis_server) as a:
        a.set(KEY, "v")
        own_redis_server.pause()
        try:
            # A value not held locally: the read asks Redis, which never answers.
            assert a.get("absent", "d") == "d"
            assert a.get("absent", "d") == "d"
        finally:
            own_redis_server.resume()
        assert a.wait_ready(10)
        wait_for(lambda: a.get("absent", "d") == "d" and not a._tier.unreachable, timeout=10)
    opened = _of(records, logging.WARNING, "the breaker is open")
    closed = _of(records, logging.INFO, "the breaker is closed")
    assert opened and "Redis unreachable (TimeoutError)" in opened[0]
    # Each opening is followed by one closing (the feed's return or a call).
    assert len(closed) == len(opened)


def test_a_claim_that_vanished_under_a_load_is_logged(
    redis_db: RedisServer, records: pytest.LogCaptureFixture
) -> None:
    admin = redis_db.admin
    with cache_on(redis_db) as a:

        def load() -> str:
            # The claim is lost while the loader runs (as maxmemory eviction
            # or a FLUSHDB would lose it).
            for lock_key in admin.keys(f"{NS}:l:*"):
                admin.delete(lock_key)
            return "v"

        assert a.get_with(KEY, load) == "v"
    lost = _of(records, logging.WARNING, "outlasted its claim")
    assert len(lost) == 1 and "another process may have loaded" in lost[0]


def test_a_wait_that_outlasts_wait_timeout_is_logged(
    redis_db: RedisServer, records: pytest.LogCaptureFixture
) -> None:
    with cache_on(redis_db, wait_timeout=0.3) as a:
        # Another process's claim that it never releases (planted).
        lock_key = _lock_key_of(redis_db)
        redis_db.admin.set(lock_key, "someone else", px=60_000)
        assert a.get_with(KEY, lambda: "mine") == "mine"
        assert a.stats().waits == 1 and a.stats().loads == 1
    outlasted = _of(records, logging.WARNING, "outlasted wait_timeout")
    assert len(outlasted) == 1 and "another process" in outlasted[0]


def test_the_async_cache_logs_a_wait_that_outlasts_wait_timeout(
    redis_db: RedisServer, records: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        client = redis_db.async_client()
        async with AsyncTieredCache(
            client, namespace=NS, signing_key=SIGNING_KEY, wait_timeout=0.3, stats=True
        ) as a:
            assert await a.wait_ready(5)
            lock_key = _lock_key_of(redis_db)
            redis_db.admin.set(lock_key, "someone else", px=60_000)

            async def mine() -> str:
                return "mine"

            assert await a.get_with(KEY, mine) == "mine"
            assert a.stats().waits == 1 and a.stats().loads == 1
        await client.aclose()

    asyncio.run(asyncio.wait_for(main(), 30))
    outlasted = _of(records, logging.WARNING, "outlasted wait_timeout")
    assert len(outlasted) == 1 and "another process" in outlasted[0]


def _lock_key_of(server: RedisServer) -> bytes:
    """The Redis key of KEY's claim, found as a load (of a cache of its own)
    makes it."""
    seen: list[bytes] = []

    def load() -> str:
        seen.extend(server.admin.keys(f"{NS}:l:*"))
        return "probe"

    with TieredCache(server.client(), namespace=NS, signing_key=SIGNING_KEY) as probe:
        probe.get_with(KEY, load)
        probe.remove(KEY)
    assert len(seen) == 1
    return seen[0]
