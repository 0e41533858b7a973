"""moka_py.redis when Redis misbehaves, injected for real: the feed's
connection killed, channel permissions revoked (messages lost for good), the
server restarted (its run_id changes, its data is gone), stopped with SIGSTOP
(accepts connections, never answers), or killed (refuses connections).

The time bounds asserted here are the cache's contract (`timeout` plus a
margin, against a user's client with no socket timeout, which would otherwise
wait forever): generous margins, not measurements."""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
import redis
from redis_servers import RedisServer
from support import SIGNING_KEY, run_isolated, wait_for

from moka_py.redis import TieredCache

pytestmark = pytest.mark.thread_unsafe  # each test changes its own server

T = TypeVar("T")
TIMEOUT = 0.5
# What a call may take beyond `timeout` on this shared, noisy machine.
MARGIN = 1.5


def bounded(call: Callable[[], T]) -> T:
    start = time.monotonic()
    result = call()
    elapsed = time.monotonic() - start
    assert elapsed < TIMEOUT + MARGIN, f"took {elapsed:.2f} s"
    return result


def cache_on(server: RedisServer, **kwargs: Any) -> TieredCache[Any, Any]:
    # The user's client: no socket timeout, redis-py's default retries.
    client = server.client(socket_timeout=None, socket_connect_timeout=None, **kwargs)
    c: TieredCache[Any, Any] = TieredCache(
        client, namespace="users", signing_key=SIGNING_KEY, timeout=TIMEOUT, stats=True
    )
    assert c.wait_ready(5)
    return c


def test_a_killed_feed_reconnects_and_drops_what_it_held(own_redis_server: RedisServer) -> None:
    a, b = cache_on(own_redis_server), cache_on(own_redis_server)
    try:
        a.set("k", 1)
        # (A first read may not keep its copy: a's invalidation can arrive
        # during its round trip, and then the copy is refused.)
        wait_for(lambda: b.get("k") == 1 and b.local.get("k") == 1, timeout=5)
        remote_hits = b.stats().remote_hits
        assert own_redis_server.client_kill(type="pubsub") >= 2
        wait_for(lambda: b.stats().feed_losses >= 1, timeout=5)
        assert b.wait_ready(5)
        # Every local copy from before the loss is gone; the value is read again.
        assert b.local.get("k") is None
        assert b.get("k") == 1 and b.stats().remote_hits == remote_hits + 1
        a.set("k", 2)
        wait_for(lambda: b.get("k") == 2, timeout=5)
    finally:
        a.close()
        b.close()


def test_messages_lost_while_the_feed_is_away_lose_no_invalidation(
    own_redis_server: RedisServer,
) -> None:
    admin = own_redis_server.admin
    own_redis_server.acl_setuser("app", "pw", keys=("users*",), channels=("users*",))
    writer = cache_on(own_redis_server)
    reader = cache_on(own_redis_server, username="app", password="pw")
    try:
        writer.set("k", "old")
        assert reader.get("k") == "old" and reader.get("k") == "old"
        # Revoking the channel disconnects the reader's subscription, and it
        # cannot subscribe again: every message is lost to it from now on.
        admin.execute_command("ACL", "SETUSER", "app", "resetchannels")
        wait_for(lambda: not reader.feed_up, timeout=5)
        writer.set("k", "new")
        writer.set("other", 1)
        # Reads ask Redis while the feed is away: the lost message costs nothing.
        assert reader.get("k") == "new" and reader.get("other") == 1
        writer.remove("other")
        assert reader.get("other") is None
        admin.execute_command("ACL", "SETUSER", "app", "&users*")
        assert reader.wait_ready(5)
        assert reader.get("k") == "new"
        writer.set("k", "newer")
        wait_for(lambda: reader.get("k") == "newer", timeout=5)
    finally:
        writer.close()
        reader.close()


def test_a_restart_trusts_nothing_from_before(own_redis_server: RedisServer) -> None:
    a, b = cache_on(own_redis_server), cache_on(own_redis_server)
    try:
        a.set("k", "before")
        assert b.get("k") == "before"
        run_id = own_redis_server.run_id()
        own_redis_server.restart()
        assert own_redis_server.run_id() != run_id
        assert b.wait_ready(10) and a.wait_ready(10)
        wait_for(lambda: b.stats().feed_losses >= 1, timeout=5)
        # The restarted server holds nothing (no persistence): neither may we.
        assert b.get("k") is None and a.get("k") is None
        a.set("k", "after")
        wait_for(lambda: b.get("k") == "after", timeout=5)
    finally:
        a.close()
        b.close()


def test_a_stopped_server_never_breaks_a_read(own_redis_server: RedisServer) -> None:
    a, b = cache_on(own_redis_server), cache_on(own_redis_server)
    try:
        a.set("k", "v")
        assert a.get("k") == "v"
        own_redis_server.pause()
        try:
            # The local copy is served (fail-safe); an absent key is the default.
            for _ in range(3):
                assert bounded(lambda: a.get("k")) == "v"
                assert bounded(lambda: a.get("absent", "d")) == "d"
            # Once the health check notices, local copies are no longer
            # trusted: each read asks Redis, and serves the local copy when
            # Redis does not answer.
            wait_for(lambda: not a.feed_up, timeout=5)
            for _ in range(3):
                assert bounded(lambda: a.get("k")) == "v"
            assert a.stats().stale_served >= 1
            # get_with loads here and answers.
            assert bounded(lambda: a.get_with("new", lambda: "loaded")) == "loaded"
            # Writes raise and leave no local copy of what they could not write.
            with pytest.raises(redis.RedisError):
                bounded(lambda: a.set("k", "unwritten"))
            assert a.local.get("k") is None
            with pytest.raises(redis.RedisError):
                bounded(lambda: a.remove("new"))
            with pytest.raises(redis.RedisError):
                bounded(lambda: a.set_many({"x": 1}))
            with pytest.raises(redis.RedisError):
                bounded(lambda: a.clear())
            assert bounded(lambda: b.get("absent")) is None
        finally:
            own_redis_server.resume()
        # Back by itself: the feeds reconnect and writes are seen everywhere.
        assert a.wait_ready(10) and b.wait_ready(10)
        a.set("k", "after")
        wait_for(lambda: b.get("k") == "after", timeout=5)
        assert a.stats().redis_errors > 0 and a.stats().stale_served > 0
    finally:
        a.close()
        b.close()


def test_a_refusing_server(own_redis_server: RedisServer) -> None:
    a = cache_on(own_redis_server)
    try:
        a.set("k", "v")
        a.get("k")
        own_redis_server.kill()
        wait_for(lambda: not a.feed_up, timeout=5)
        assert bounded(lambda: a.get("k")) == "v"
        assert bounded(lambda: a.get("absent")) is None
        assert bounded(lambda: a.get_many(["k", "absent"])) == {"k": "v"}
        assert bounded(lambda: a.get_with("g", lambda: 1)) == 1
        with pytest.raises(redis.ConnectionError):
            bounded(lambda: a.set("k", 2))
        own_redis_server.restart()
        assert a.wait_ready(10)
        a.set("k", 3)
        assert a.get("k") == 3
    finally:
        a.close()


def _a_bug_in_the_feed_is_reported_and_the_feed_goes_on() -> None:
    """In a child interpreter, with CPython's own sys.unraisablehook (pytest
    replaces it with one that accepts anything)."""
    port = int(os.environ["MOKA_TEST_REDIS_PORT"])
    a = TieredCache(redis.Redis(port=port), namespace="users", signing_key=SIGNING_KEY)
    b = TieredCache(redis.Redis(port=port), namespace="users", signing_key=SIGNING_KEY)
    with a, b:
        assert a.wait_ready(5) and b.wait_ready(5)
        feed: Any = a._tier.feed
        handle, raised = feed._on_message, []

        def once(data: bytes) -> None:
            if not raised:
                raised.append(data)
                raise RuntimeError("boom in a handler")
            handle(data)

        feed._on_message = once
        real_stderr, captured = sys.stderr, io.StringIO()
        sys.stderr = captured
        try:
            b.set("k", 1)
            deadline = time.monotonic() + 10
            while "boom" not in captured.getvalue() and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            sys.stderr = real_stderr
        text = captured.getvalue()
        assert "Exception ignored in: 'moka_py.redis feed'" in text, text
        assert "RuntimeError: boom in a handler" in text, text
        # The feed reconnects by itself, and invalidations arrive again.
        assert a.wait_ready(10)
        assert a.get("k") == 1
        b.set("k", 2)
        wait_for(lambda: a.get("k") == 2, timeout=10)


def test_a_bug_in_the_feed_is_reported_and_the_feed_goes_on(
    redis_db: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOKA_TEST_REDIS_PORT", str(redis_db.port))
    run_isolated(_a_bug_in_the_feed_is_reported_and_the_feed_goes_on)
