"""The invalidation feed: a thread that listens on the namespace's channel.

Pub/sub delivers at most once: a message sent while the feed was away is lost
for good. So the feed's state decides whether local copies may be trusted:

* while it is subscribed and its health check answers, the local tier is
  trusted (``on_up``), and each message drops the local copies it names;
* the moment the connection fails, a health check goes unanswered for
  ``HEALTH_TIMEOUT`` seconds, or the server unsubscribes it (a cluster slot
  moved), the tier is distrusted (``on_down``): reads ask Redis;
* once it is subscribed again, ``on_up`` drops every local copy made before
  (whatever was sent meanwhile is unknown) and trusts the tier again. A new
  server ``run_id`` (a restart or a failover: what Redis held is gone) is
  noticed the same way, and reported to ``on_up``.

One thread per cache, owned by it: ``stop()`` ends it within a bounded time.
It holds no lock of the cache's while it waits; the callbacks it calls take
none that a caller could hold while waiting on the feed.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisClusterException, RedisError

from moka_py._moka_py import _write_unraisable

__all__ = ["Feed"]

# Seconds between health checks (a PING on the subscribed connection), and
# how long its answer may take before the feed counts as lost.
HEALTH_INTERVAL = 0.3
HEALTH_TIMEOUT = 0.7
# How long each wait for a message lasts (so that stop() is noticed).
POLL = 0.1
# Back-off between reconnection attempts.
RETRY_MIN, RETRY_MAX = 0.05, 1.0


class _Lost(Exception):
    pass


class Feed:
    """Subscribes ``connect()``'s connection to ``channel`` (``SSUBSCRIBE``
    when ``sharded``) and hands each message's data to ``on_message``."""

    def __init__(
        self,
        connect: Callable[[], Any],
        channel: bytes,
        sharded: bool,
        on_message: Callable[[bytes], None],
        on_up: Callable[[bytes | None], None],
        on_down: Callable[[str | None], None],
        name: str,
    ) -> None:
        self._connect = connect
        self._channel = channel
        self._sharded = sharded
        self._on_message = on_message
        self._on_up = on_up
        self._on_down = on_down
        self._stop = threading.Event()
        self._up = threading.Event()
        self._conn: Any = None
        self._conn_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def up(self) -> bool:
        return self._up.is_set()

    def wait_up(self, timeout: float) -> bool:
        """Waits until the feed is subscribed (bounded); whether it is."""
        return self._up.wait(timeout)

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        with self._conn_lock:
            conn = self._conn
        if conn is not None:
            try:
                conn.disconnect()
            except Exception:
                pass
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def kill_connection(self) -> None:
        """Drops the current connection (as a network failure would)."""
        with self._conn_lock:
            conn = self._conn
        if conn is not None:
            conn.disconnect()

    # ------------------------------------------------------------ the thread

    def _run(self) -> None:
        backoff = RETRY_MIN
        while not self._stop.is_set():
            # Why the session ended, in words of ours (an exception's type,
            # never its message: that may quote the server's reply).
            cause = "the session ended"
            try:
                self._session()
                backoff = RETRY_MIN
            except _Lost as err:
                cause = str(err)
            except (RedisError, RedisClusterException, OSError, ValueError) as err:
                cause = type(err).__name__
            except Exception as err:
                # stop() disconnects the connection under a read in progress,
                # which redis-py may report as anything; otherwise it is a bug
                # of ours: report it, and keep the feed alive.
                cause = type(err).__name__
                if not self._stop.is_set():
                    _report("moka_py.redis feed")
            finally:
                self._close()
            if self._up.is_set():
                self._up.clear()
                self._on_down(None if self._stop.is_set() else cause)
            self._stop.wait(backoff)
            backoff = min(RETRY_MAX, backoff * 2)

    def _close(self) -> None:
        with self._conn_lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.disconnect()
            except Exception:
                pass

    def _session(self) -> None:
        conn, run_id = self._connect()
        with self._conn_lock:
            self._conn = conn
        if self._stop.is_set():
            return
        command = "SSUBSCRIBE" if self._sharded else "SUBSCRIBE"
        conn.send_command(command, self._channel)
        deadline = time.monotonic() + HEALTH_TIMEOUT * 3
        while True:
            if time.monotonic() > deadline:
                raise _Lost("no subscription confirmed")
            if conn.can_read(timeout=POLL):
                reply = conn.read_response()
                if _kind(reply) in (b"subscribe", b"ssubscribe"):
                    break
            if self._stop.is_set():
                return
        self._on_up(run_id)
        self._up.set()
        last_seen = time.monotonic()
        ping_sent: float | None = None
        while not self._stop.is_set():
            if conn.can_read(timeout=POLL):
                reply = conn.read_response()
                kind = _kind(reply)
                last_seen = time.monotonic()
                if kind in (b"message", b"smessage"):
                    self._on_message(bytes(reply[2]))
                elif kind == b"pong":
                    ping_sent = None
                elif kind in (b"unsubscribe", b"sunsubscribe"):
                    raise _Lost("unsubscribed by the server")
            now = time.monotonic()
            if ping_sent is None:
                if now - last_seen >= HEALTH_INTERVAL:
                    conn.send_command("PING")
                    ping_sent = now
            elif now - ping_sent > HEALTH_TIMEOUT:
                raise _Lost("health check unanswered")


def _kind(reply: Any) -> bytes | None:
    if isinstance(reply, list) and reply and isinstance(reply[0], bytes):
        return reply[0].lower()
    return None


def _report(what: str) -> None:
    """Hands the exception being handled to ``sys.unraisablehook`` ("Exception
    ignored in: <what>"), as CPython reports an error nobody can catch."""
    exc = sys.exc_info()[1]
    if exc is not None:
        _write_unraisable(exc, what)
