"""What the sync and the async tiered caches share besides ``_core``: the
local tier with its feed, the breaker, the waiters of loads and the claims.

A :class:`Tier` is one process's view of one namespace: the local ``Moka``
behind the Rust ``_Tier`` (the hot path and the sequence numbers), the feed
thread that keeps it coherent, and the bookkeeping both shells need. The
shells own the Redis client they send commands through (sync or asyncio).

Locks here (``threading.Lock``) are held for a few dict operations on bytes
keys: no user code runs under them and nothing waits on Redis under them.
"""

from __future__ import annotations

import logging
import math
import os
import random
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .._moka_py import Moka, _Tier
from . import _core
from ._connect import Kind, feed_settings, release_feed
from ._envelope import (
    MAX_TAG_BYTES,
    MAX_TAGS,
    TAG_TOKEN_BYTES,
    Envelope,
    Refused,
    TagTokens,
    tagged,
)
from ._feed import Feed

__all__ = ["Tier", "Unavailable"]

# How long Redis counts as down after a connection error or a timeout: calls
# meanwhile do not wait for it (reads serve the local tier or the default,
# writes raise at once). The feed coming back closes the breaker early.
BREAK_SECONDS = 1.0


class Unavailable(RedisConnectionError):
    """Redis failed a moment ago; the cache does not wait for it again yet."""


class ClusterUnavailable(RedisConnectionError):
    """A cluster client's ``RedisClusterException`` (no node reachable, slots
    not covered), which redis-py does not raise as a ``RedisError``: the cache
    treats it as Redis being unreachable."""


def as_redis_error(err: RedisClusterException) -> RedisError:
    out = ClusterUnavailable(f"Redis Cluster unavailable: {type(err).__name__}")
    out.__cause__ = err
    return out


# The tier's state changes are logged here, never with a key's bytes or bytes
# from the wire, and never on the path of a read or a write:
# * WARNING: the feed lost (with the cause), the breaker opened, a load that
#   outlasted its claim or a wait for another's load; refusals, at most once
#   per REFUSAL_LOG_SECONDS per cache, with their count and a reason of ours;
# * INFO: the feed back after a loss, the breaker closed;
# * DEBUG: what happens in normal operation (the feed up at start, stopped).
log = logging.getLogger("moka_py.redis")
REFUSAL_LOG_SECONDS = 60.0


class _Refusals:
    """Counts refused payloads and messages and logs them, rate-limited."""

    __slots__ = ("_lock", "_namespace", "_next", "_since")

    def __init__(self, namespace: str) -> None:
        self._namespace = namespace
        self._lock = threading.Lock()
        self._next = 0.0
        self._since = 0

    def new_lock(self) -> None:
        self._lock = threading.Lock()

    def note(self, what: str, reason: str) -> None:
        with self._lock:
            self._since += 1
            now = time.monotonic()
            if now < self._next:
                return
            self._next = now + REFUSAL_LOG_SECONDS
            count, self._since = self._since, 0
        # Outside the lock: a handler is the user's code.
        log.warning(
            "namespace %r: refused %d payload(s) or message(s) from Redis since the last "
            "report (this one: a %s, %s); a refused payload is a miss, a refused message is "
            "dropped. Is every process configured with the same signing_key and serializer? "
            "(TierStats.rejected counts them; this is logged at most every %.0f s)",
            self._namespace,
            count,
            what,
            reason,
            REFUSAL_LOG_SECONDS,
        )


_MISSING: Any = object()
_TIERS: weakref.WeakSet[Tier] = weakref.WeakSet()
_FORK_HOOK = False
_FORK_HOOK_LOCK = threading.Lock()


def _after_fork_in_child() -> None:
    for tier in list(_TIERS):
        tier.forked()


def _install_fork_hook() -> None:
    global _FORK_HOOK
    with _FORK_HOOK_LOCK:
        if not _FORK_HOOK and hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_after_fork_in_child)
            _FORK_HOOK = True


class Tier:
    """The local tier of one cache, its feed and its bookkeeping."""

    def __init__(
        self,
        *,
        names: _core.Names,
        capacity: int,
        local_ttl: float | None,
        stats: bool,
        client: Any,
        kind: str,
        timeout: float,
        envelope: Envelope,
        seeds: list[tuple[str, int]] | None,
        slow_get: Callable[[Any, Any], Any],
        slow_aget: Callable[[Any, Any], Any],
        label: str,
        stale_if_error: float | None = None,
    ) -> None:
        self.names = names
        self.envelope = envelope
        self._refusals = _Refusals(names.namespace)
        self.kind = kind
        self.timeout = timeout
        self.local_ttl = local_ttl
        self.local: Moka[Any, Any] = Moka(capacity, stats=stats)
        self.rust = _Tier(self.local, slow_get, slow_aget, uuid.UUID)
        # stale_if_error: the last value this process read or loaded for each
        # key, `(value, deadline, token)`, kept `stale_if_error` seconds past
        # the value's deadline (see `remember`); None when it is off.
        self.stale_if_error = stale_if_error
        self.stale: Moka[Any, tuple[Any, float, int]] | None = (
            Moka(capacity) if stale_if_error is not None else None
        )
        self.counts: _core.LoadStats | _core.NoStats = (
            _core.LoadStats() if stats else _core.NoStats()
        )
        self.stats_enabled = stats
        self._feed_cls, self._feed_kw = feed_settings(client, kind, timeout)
        # For a cluster: nodes to ask which master serves the channel's slot
        # (the client's nodes; every master seen since is added).
        self._seeds = list(seeds or [])
        self._label = label
        self.closed = False
        self._run_id: bytes | None = None
        self.restarts = 0
        self._reset()
        _TIERS.add(self)
        _install_fork_hook()

    def _reset(self) -> None:
        """The per-process state (made again in a child after a fork)."""
        self.origin = _core.new_origin()
        self.pid = os.getpid()
        self.down_until = 0.0
        # Whether the breaker is open (from a failed call to the first call
        # that succeeds or the feed's return): only read on Redis calls.
        self.unreachable = False
        self._lost_at: float | None = None
        self._lock = threading.Lock()
        self._waiters: dict[bytes, set[Callable[[], None]]] = {}
        # The counters' locks too: a fork while the feed thread held one
        # would leave the child's first count waiting for ever.
        self.counts.new_lock()
        self._refusals.new_lock()
        self.rust.trusted = False
        self.feed: Feed | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self, wait: float) -> None:
        """Starts the feed (once per process) and waits up to ``wait`` seconds
        for it to subscribe."""
        with self._lock:
            if self.closed:
                raise RuntimeError(f"{self._label} is closed")
            if self.feed is not None:
                return
            self.feed = Feed(
                self._feed_connect,
                self.names.channel,
                self.kind == Kind.CLUSTER,
                self._on_message,
                self._on_up,
                self._on_down,
                name=f"moka_py.redis feed {self.names.namespace}",
            )
            feed = self.feed
        feed.start()
        if wait > 0:
            feed.wait_up(wait)

    def ensure(self) -> None:
        """Called on every slow path: a closed cache raises, and a forked child
        starts its own feed."""
        if self.closed:
            raise RuntimeError(f"{self._label} is closed")
        if self.feed is None:
            self.start(0)

    def forked(self) -> None:
        """In a child after ``os.fork()``: nothing of the parent's threads or
        state is used; the feed starts again on first use."""
        self._reset()

    def close(self) -> None:
        with self._lock:
            self.closed = True
            feed, self.feed = self.feed, None
        self.rust.trusted = False
        if feed is not None:
            feed.stop()
        release_feed(self._feed_kw)
        _TIERS.discard(self)

    # ------------------------------------------------------------ the feed

    def _feed_connect(self) -> tuple[Any, bytes | None]:
        kw = dict(self._feed_kw)
        if self.kind == Kind.CLUSTER:
            host, port = self._channel_master(kw)
            kw.update(host=host, port=port)
        conn = self._feed_cls(**kw)
        conn.connect()
        conn.send_command("INFO", "server")
        info = conn.read_response()
        run_id = None
        if isinstance(info, (bytes, str)):
            text = info.decode() if isinstance(info, bytes) else info
            for line in text.splitlines():
                if line.startswith("run_id:"):
                    run_id = line.split(":", 1)[1].strip().encode()
        return conn, run_id

    def _channel_master(self, kw: dict[str, Any]) -> tuple[str, int]:
        """Asks the known nodes (CLUSTER SLOTS) which master serves the
        channel's slot: sharded pub/sub must subscribe there."""
        slot = key_slot(self.names.channel)
        last: Exception | None = None
        for host, port in list(self._seeds):
            conn = self._feed_cls(**{**kw, "host": host, "port": port})
            try:
                conn.connect()
                conn.send_command("CLUSTER", "SLOTS")
                ranges = conn.read_response()
            except (RedisError, OSError) as err:
                last = err
                continue
            finally:
                conn.disconnect()
            found = None
            for entry in ranges:
                start, end, master = int(entry[0]), int(entry[1]), entry[2]
                node = (_text(master[0]) or host, int(master[1]))
                if node not in self._seeds:
                    self._seeds.append(node)
                if start <= slot <= end:
                    found = node
            if found is not None:
                return found
        raise RedisConnectionError(f"no known cluster node serves slot {slot}: {last}")

    def _on_up(self, run_id: bytes | None) -> None:
        restarted = self._run_id is not None and run_id is not None and run_id != self._run_id
        if restarted:
            self.restarts += 1
        self._run_id = run_id
        # Whatever was sent while the feed was away is unknown: drop every
        # local copy (and refuse fills that started before), then trust.
        self.rust.invalidate_all()
        self.down_until = 0.0
        self.rust.trusted = True
        self._wake_all()
        lost_at, self._lost_at = self._lost_at, None
        if lost_at is None:
            log.debug("namespace %r: the invalidation feed is up", self.names.namespace)
        else:
            log.info(
                "namespace %r: the invalidation feed is back after %.1f s%s; the local "
                "copies made before were dropped and the local tier is trusted again",
                self.names.namespace,
                time.monotonic() - lost_at,
                " (the server restarted)" if restarted else "",
            )
        self.reachable("the invalidation feed is back")

    def _on_down(self, cause: str | None) -> None:
        """The feed ended: lost (``cause`` says why), or stopped (None)."""
        self.rust.trusted = False
        if cause is None:
            log.debug("namespace %r: the invalidation feed stopped", self.names.namespace)
            return
        self.counts.add("feed_losses")
        self._lost_at = time.monotonic()
        log.warning(
            "namespace %r: the invalidation feed was lost (%s); until it is back, reads "
            "ask Redis instead of trusting the local tier",
            self.names.namespace,
            cause,
        )

    def _on_message(self, data: bytes) -> None:
        """One message from the channel: never raises (a message must not end
        the feed's session), and does bounded work (``_envelope``'s bounds)."""
        try:
            self._act_on(data)
        except Exception as err:
            # A bug of ours, or a message the bounds did not foresee: drop it.
            self.refused("message", Refused(f"unreadable ({type(err).__name__})"))

    def _act_on(self, data: bytes) -> None:
        try:
            kind, origin, keys = self.envelope.open_message(data)
        except Refused as err:
            self.refused("message", err)
            return
        if origin == self.origin:
            return
        if keys is None or kind == _core.CLEAR:
            self.rust.invalidate_all()
            self.counts.add("invalidations")
            self._wake_all()
            return
        if kind == _core.TAGS:
            try:
                names = [t.decode("utf-8") for t in keys if len(t) <= MAX_TAG_BYTES]
            except UnicodeDecodeError:
                names = []
            if len(names) != len(keys):
                self.refused("message", Refused("naming a tag no cache writes"))
                return
            self.tags_invalidated(names)
            self.counts.add("invalidations")
            return
        for enc in keys:
            if kind in (_core.INVALIDATE, _core.FILLED):
                try:
                    key = _core.decode_key(enc)
                except (ValueError, UnicodeDecodeError):
                    self.refused("message", Refused("naming a key no cache encodes"))
                    continue
                self.rust.invalidate(key)
                self.counts.add("invalidations")
            if kind in (_core.FILLED, _core.RELEASED):
                self.wake(enc)

    def tags_invalidated(self, tags: Iterable[str]) -> None:
        """Makes the local copies written with one of ``tags`` absent, with
        the values kept for ``stale_if_error``, and refuses the fills in
        flight (``_Tier.invalidate_tags``)."""
        tags = list(tags)
        self.rust.invalidate_tags(tags)
        if self.stale is not None:
            self.stale.invalidate_tags(*tags)

    def refused(self, what: str, err: Refused) -> None:
        self.counts.add("rejected")
        self._refusals.note(what, err.reason)

    # ------------------------------------------------------------ waiters

    def add_waiter(self, enc: bytes, wake: Callable[[], None]) -> None:
        with self._lock:
            self._waiters.setdefault(enc, set()).add(wake)

    def remove_waiter(self, enc: bytes, wake: Callable[[], None]) -> None:
        with self._lock:
            waiters = self._waiters.get(enc)
            if waiters is not None:
                waiters.discard(wake)
                if not waiters:
                    del self._waiters[enc]

    def wake(self, enc: bytes) -> None:
        with self._lock:
            waiters = list(self._waiters.get(enc, ()))
        for w in waiters:
            w()

    def _wake_all(self) -> None:
        with self._lock:
            waiters = [w for ws in self._waiters.values() for w in ws]
        for w in waiters:
            w()

    # ------------------------------------------------------------ the breaker

    def available(self) -> None:
        """Raises :class:`Unavailable` while the breaker is open, and once the
        cache is closed (a load or a reload that outlived ``close`` opens no
        connection again)."""
        if self.closed:
            raise Unavailable(f"{self._label} is closed")
        if self.down_until and time.monotonic() < self.down_until:
            raise Unavailable(
                f"Redis failed less than {BREAK_SECONDS} s ago; not waiting for it again yet"
            )

    def failed(self, err: RedisError) -> None:
        """Counts a failed Redis call; a connection error or a timeout opens
        the breaker."""
        self.counts.add("redis_errors")
        if isinstance(err, (RedisConnectionError, RedisTimeoutError)) and not isinstance(
            err, Unavailable
        ):
            self.down_until = time.monotonic() + BREAK_SECONDS
            with self._lock:
                opened, self.unreachable = not self.unreachable, True
            if opened:
                log.warning(
                    "namespace %r: Redis unreachable (%s); the breaker is open: calls do "
                    "not wait for Redis again for %.1f s after each failure (reads answer "
                    "from the local tier where they may) until a call succeeds",
                    self.names.namespace,
                    type(err).__name__,
                    BREAK_SECONDS,
                )

    def reachable(self, how: str) -> None:
        """Closes the breaker if it is open (``how``: what showed Redis back)."""
        with self._lock:
            closed, self.unreachable = self.unreachable, False
        if closed:
            log.info(
                "namespace %r: Redis reachable again (%s); the breaker is closed",
                self.names.namespace,
                how,
            )

    def claim_lost(self, seconds: float) -> None:
        """A load of this process found its claim gone when it ended."""
        log.warning(
            "namespace %r: a load of %.1f s outlasted its claim on the key (lock_timeout, "
            "renewed while the load runs unless Redis was unreachable): another process "
            "may have loaded the same key",
            self.names.namespace,
            seconds,
        )

    def wait_outlasted(self, here: bool, wait_timeout: float) -> None:
        """A call waited ``wait_timeout`` for a load of this process (``here``)
        or of another, and loads the key itself."""
        log.warning(
            "namespace %r: a load of %s outlasted wait_timeout (%.1f s); a waiting call "
            "loads the key itself",
            self.names.namespace,
            "this process" if here else "another process",
            wait_timeout,
        )

    # ------------------------------------------------------------ reads

    def local_bound(self, left: float | None) -> float | None:
        return _core.local_bound(self.local_ttl, left)

    def write_bound(self, ttl: float | None, ttl_s: float | None) -> float | None:
        """How long this process keeps a value it wrote: the cache's local
        bound, or, for a per-call ``ttl`` (checked as ``ttl_s``), the shorter
        of it and ``local_ttl``."""
        return self.local_ttl if ttl is None else self.local_bound(ttl_s)

    def pack(self, enc: bytes, data: bytes, ttl: float | None, tags: TagTokens = ()) -> bytes:
        """The payload to store for ``enc``'s serialized value ``data``, with
        its tags' tokens (``stamped``)."""
        return self.envelope.pack(
            self.names.value(enc), self._bytes(data), _core.deadline_ms(ttl), tags
        )

    # ------------------------------------------------------------ tags

    def check_tags(self, tags: object, limit: int | None = MAX_TAGS) -> tuple[str, ...]:
        """A write's ``tags=`` (or an invalidation's, ``limit=None``), checked
        (``_core.check_tags``)."""
        names = _core.check_tags(tags, limit)
        if names and self.names.tags_refused:
            raise ValueError(
                f"namespace {self.names.namespace!r} holds a '{{}}', which would put its "
                "tags in different cluster slots: use another namespace for tags"
            )
        return names

    def stamp_args(self, tags: tuple[str, ...], ttl: float | None) -> list[Any]:
        """``TAG_SCRIPT``'s arguments for a write of ``tags`` whose value lives
        ``ttl`` seconds: the number of keys, the keys, the expiry, then a
        new token per tag (kept where the tag has none)."""
        keys = [self.names.tag(t.encode()) for t in tags]
        px = px_arg(None if ttl is None else ttl + TAG_MARGIN)
        return [len(keys), *keys, px, *(os.urandom(TAG_TOKEN_BYTES) for _ in tags)]

    @staticmethod
    def stamped(tags: tuple[str, ...], reply: Any) -> TagTokens:
        """The (tag, token) pairs of ``TAG_SCRIPT``'s reply."""
        tokens = list(reply) if isinstance(reply, (list, tuple)) else []
        if len(tokens) != len(tags) or any(
            type(t) is not bytes or len(t) != TAG_TOKEN_BYTES for t in tokens
        ):
            raise RedisError("unexpected reply to the tag script")
        return tuple((t.encode(), tok) for t, tok in zip(tags, tokens, strict=True))

    def tags_of_calls(
        self, tags: object
    ) -> Callable[[tuple[Any, ...], dict[str, Any]], tuple[str, ...]]:
        """A decorator's ``tags=``: the tags of a call, from its arguments.
        Tags given as an iterable are checked now; a function's, per call."""
        if tags is None:
            return lambda args, kwargs: ()
        if callable(tags):
            fn = tags
            return lambda args, kwargs: self.check_tags(fn(*args, **kwargs))
        fixed = self.check_tags(tags)
        return lambda args, kwargs: fixed

    @staticmethod
    def names_of(pairs: TagTokens) -> tuple[str, ...]:
        """The tag names of an opened payload's (tag, token) pairs (UTF-8:
        ``parse_tags`` refuses anything else)."""
        return tuple(t.decode("utf-8") for t, _ in pairs)

    def retag(self, tags: tuple[str, ...]) -> tuple[Callable[[Any], None], list[bytes]]:
        """``invalidate_tags``'s write (the shells' ``_write``): a new token
        for each tag that has one (``SET XX KEEPTTL``), and its message."""
        retag = [(self.names.tag(t.encode()), os.urandom(TAG_TOKEN_BYTES)) for t in tags]

        def commands(pipe: Any) -> None:
            for key, token in retag:
                pipe.set(key, token, xx=True, keepttl=True)

        return commands, self.messages(_core.TAGS, [t.encode() for t in tags])

    def tag_keys(
        self, names: list[bytes], payloads: list[Any]
    ) -> tuple[list[bytes], list[list[tuple[bytes, bytes]]]]:
        """The keys of the tags that the tagged ones of ``payloads`` (read
        from ``names``) name, verified first ([] when none is tagged: the
        first bytes tell, before anything else): what a read fetches to check
        them; and each payload's (tag key, token) pairs."""
        if not any(tagged(p) for p in payloads):
            return [], []
        tags_of = self.envelope.tags_of
        wanted = [
            [(self.names.tag(t), tok) for t, tok in tags_of(n, p)]
            for n, p in zip(names, payloads, strict=True)
        ]
        return list(dict.fromkeys(key for ws in wanted for key, _ in ws)), wanted

    @staticmethod
    def current(
        payloads: list[Any],
        wanted: list[list[tuple[bytes, bytes]]],
        keys: list[bytes],
        tokens: list[Any],
    ) -> list[Any]:
        """``payloads`` with each tagged one whose tags (``wanted``, from
        ``tag_keys``) do not all hold in ``tokens`` (what Redis holds for
        ``keys`` now) replaced by ``_core.STALE``: a tag of it was
        invalidated since it was written."""
        now = dict(zip(keys, tokens, strict=True))
        out = list(payloads)
        for i, ws in enumerate(wanted):
            if ws and any(now.get(key) != tok for key, tok in ws):
                out[i] = _core.STALE
        return out

    @staticmethod
    def _bytes(data: Any) -> bytes:
        if type(data) is not bytes:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(
                    f"the serializer's dumps() must return bytes, not {type(data).__name__}"
                )
            data = bytes(data)
        return data  # type: ignore[no-any-return]

    def messages(self, kind: bytes, keys: Iterable[bytes] = ()) -> list[bytes]:
        """The messages that tell the other processes of a write of ``keys``."""
        return self.envelope.messages(kind, self.origin, keys)

    def decode(
        self, serializer: _core.Serializer, enc: bytes, payload: bytes
    ) -> tuple[bool, Any, float | None]:
        """``(ok, value, seconds left)`` of a payload read from Redis (its tags
        checked by the shell, ``current``): verified first, deserialized
        after. A payload refused (or that the serializer cannot read) is
        counted and logged (rate-limited), never raised."""
        opened = self._open(enc, payload)
        if opened is None:
            return False, None, None
        data, left, _ = opened
        ok, value = self.loads(serializer, data)
        return (True, value, left) if ok else (False, None, None)

    def _open(
        self, enc: bytes, payload: bytes
    ) -> tuple[bytes, float | None, tuple[str, ...]] | None:
        """The serialized value of a payload read from Redis, its seconds
        left and its tags, or None when it is refused (counted), stale or
        has expired."""
        opened = self.reopen(enc, payload)
        if opened is None:
            return None
        data, deadline, pairs = opened
        return data, _core.seconds_left(deadline), self.names_of(pairs)

    def reopen(self, enc: bytes, payload: bytes) -> tuple[bytes, int, TagTokens] | None:
        """The serialized value of a payload read from Redis, its deadline
        (wall-clock ms, 0: none) and its (tag, token) pairs, or None when it
        is refused (counted), stale (``_core.STALE``) or has expired: what a
        compare-and-swap re-signs with the same deadline and tags."""
        if payload is _core.STALE:
            return None
        try:
            data, deadline, pairs = self.envelope.open(self.names.value(enc), payload)
        except Refused as err:
            self.refused("payload", err)
            return None
        left = _core.seconds_left(deadline)
        if left is not None and left <= 0:
            return None
        return data, deadline, pairs

    def repack(self, enc: bytes, data: bytes, deadline: int, tags: TagTokens = ()) -> bytes:
        """A payload for ``enc`` with an explicit deadline and tags (``reopen``'s)."""
        return self.envelope.pack(self.names.value(enc), self._bytes(data), deadline, tags)

    def loads(self, serializer: _core.Serializer, data: bytes) -> tuple[bool, Any]:
        """``serializer.loads(data)`` of verified bytes; ``(False, None)``
        (counted as refused) when the serializer cannot read them."""
        try:
            return True, serializer.loads(data)
        except Exception as err:
            self.refused(
                "payload", Refused(f"that the serializer could not read ({type(err).__name__})")
            )
            return False, None

    def script_args(self, args: list[Any], messages: list[bytes]) -> list[Any]:
        """The ARGV of ``ADD_SCRIPT``/``SWAP_SCRIPT``: ``args``, the channel,
        then the messages the script publishes when it writes (none on a
        cluster: the shell sends them with SPUBLISH after the script)."""
        out = [*args, self.names.channel]
        if self.kind != Kind.CLUSTER:
            out.extend(messages)
        return out

    def holds(self, enc: bytes, payload: bytes) -> bool:
        """Whether a payload read from Redis holds a value a read would
        return (verified, not expired; not deserialized)."""
        return self._open(enc, payload) is not None

    def accept(
        self, serializer: _core.Serializer, enc: bytes, k: Any, payload: bytes | None, token: int
    ) -> tuple[bool, Any]:
        """A read's answer from Redis for ``k`` (None: absent): ``(True, value)``,
        the value kept locally unless ``k`` was invalidated since ``token``, or
        ``(False, None)``; counted as a remote hit or a miss."""
        if payload is not None:
            ok, value = self.take(serializer, enc, k, payload, token)
            if ok:
                return True, value
        self.counts.add("misses")
        return False, None

    def take(
        self, serializer: _core.Serializer, enc: bytes, k: Any, payload: bytes, token: int
    ) -> tuple[bool, Any]:
        """A payload read from Redis for ``k``: ``(True, value)``, counted as a
        remote hit and kept locally unless ``k`` was invalidated since
        ``token``, or ``(False, None)`` when it is refused or expired."""
        opened = self._open(enc, payload)
        if opened is None:
            return False, None
        data, left, tags = opened
        ok, value = self.loads(serializer, data)
        if not ok:
            return False, None
        self.counts.add("remote_hits")
        if self.stale is None:
            self.rust.fill(k, value, self.local_bound(left), token, tags or None)
        else:
            self.keep(k, value, self.local_bound(left), left, token, tags)
        return True, value

    def fail_safe(self, k: Any) -> tuple[bool, Any]:
        """Redis did not answer a read of ``k``: the local copy if there is one,
        else (with ``stale_if_error``) the last value known here if it expired
        at most that long ago (both counted as served stale), else a miss."""
        found = self.rust.peek(k, _MISSING)
        if found is _MISSING:
            ok, found = self.stale_value(k, self.stale_if_error)
            if not ok:
                self.counts.add("misses")
                return False, None
            return True, found
        self.counts.add("stale_served")
        return True, found

    # ------------------------------------------------------------ stale_if_error

    def window(self, stale_if_error: object) -> float | None:
        """The ``stale_if_error`` of one call, checked (None: the cache's; 0:
        off for this call). It can only shorten the cache's, which bounds
        how long values are kept."""
        if stale_if_error is None:
            return self.stale_if_error
        if type(stale_if_error) in (int, float) and stale_if_error == 0:
            return None
        seconds = _core.check_seconds(stale_if_error, "stale_if_error")
        assert seconds is not None
        if self.stale_if_error is None or seconds > self.stale_if_error:
            raise ValueError(
                f"stale_if_error={stale_if_error!r} is longer than the cache's "
                f"stale_if_error={self.stale_if_error!r}, which bounds how long expired "
                "values are kept: set it on the cache"
            )
        return seconds

    def keep(
        self,
        k: Any,
        value: Any,
        bound: float | None,
        left: float | None,
        token: int,
        tags: tuple[str, ...] = (),
        put: bool = False,
    ) -> None:
        """Keeps a value read or loaded for ``k`` locally (``rust.fill``, or
        ``rust.put`` for a value this process stored), for at most ``bound``
        seconds, unless ``k`` or one of ``tags`` was invalidated since
        ``token``; and, only when it was kept, for ``stale_if_error``
        (``remember``), with the tags' epochs of the ``stale`` Moka taken
        before the local write: an invalidation of a tag that the local write
        passed before is then an invalidation of the kept value too."""
        stale = self.stale
        stamp = stale._stamp(tags) if stale is not None and tags else None
        write = self.rust.put if put else self.rust.fill
        if write(k, value, bound, token, tags or None) and stale is not None:
            # A put bumps the key's stripe once (the low half of the token,
            # see `src/py/tier.rs`): the token with the value in place.
            self.remember(k, value, left, token + 1 if put else token, stamp)

    def remember(
        self, k: Any, value: Any, left: float | None, token: int, tags: Any = None
    ) -> None:
        """Keeps ``value``, read or loaded for ``k`` with ``left`` seconds to
        live (None: no deadline), for ``stale_if_error`` seconds past that
        deadline. ``token`` is the key's sequence token once the value is in
        place (``rust.token`` before a ``fill``; one more after a ``put``,
        which bumps it): any later invalidation of the key (or of a key of
        its stripe, or of the whole tier) moves the token, and the kept value
        is then never served; nor after an invalidation of one of ``tags``
        (names, or a stamp of ``stale``: see ``keep``)."""
        stale = self.stale
        if stale is None or self.stale_if_error is None:
            return
        if left is None:
            stale.set(k, (value, math.inf, token), tags=tags or None)
        elif left > 0:
            deadline = time.monotonic() + left
            stale.set(
                k, (value, deadline, token), ttl=left + self.stale_if_error, tags=tags or None
            )

    def stale_value(self, k: Any, window: float | None) -> tuple[bool, Any]:
        """``(True, value)``: the value kept for ``k`` whose deadline passed at
        most ``window`` seconds ago (None: off) and that nothing invalidated
        since, counted as served stale; else ``(False, None)``."""
        stale = self.stale
        if stale is None or window is None:
            return False, None
        found = stale.get(k, _MISSING)
        if found is _MISSING:
            return False, None
        value, deadline, token = found
        # (The tag sequence of the tokens is left out: the kept value's own
        # tags are checked by `stale` itself.)
        if time.monotonic() > deadline + window or (self.rust.token(k) ^ token) & ~_TAG_BITS:
            return False, None
        self.counts.add("stale_served")
        return True, value

    def split_local(
        self, keys: Iterable[Any]
    ) -> tuple[dict[Any, Any], list[tuple[Any, bytes, Any]]]:
        """``get_many``'s first step: the values the trusted local tier holds,
        and ``(key, encoded, plain key)`` of the others, to read from Redis."""
        found: dict[Any, Any] = {}
        wanted: list[tuple[Any, bytes, Any]] = []
        trusted = self.rust.trusted
        for key in keys:
            enc = _core.encode_key(key)
            k = _core.plain_key(key)
            if trusted:
                v = self.local.get(k, _MISSING)
                if v is not _MISSING:
                    found[key] = v
                    continue
            wanted.append((key, enc, k))
        return found, wanted

    def stats(self, cumulative: bool = False) -> _core.TierStats:
        if not isinstance(self.counts, _core.LoadStats):
            raise ValueError("statistics are off: create the cache with stats=True")
        local_hits = self.local.stats(cumulative=cumulative).hits
        return self.counts.snapshot(local_hits, cumulative)

    def reset_stats(self) -> None:
        if not isinstance(self.counts, _core.LoadStats):
            raise ValueError("statistics are off: create the cache with stats=True")
        self.counts.reset()
        self.local.reset_stats()


# The tag sequence's bits of a `_Tier` token (`src/py/tier.rs`, `Seqs`).
_TAG_BITS = 0xFFFF_FFFF << 64

# A tag's key in Redis outlives the values written with it by this much (it
# is stamped when a write or a load begins, before the value is stored).
TAG_MARGIN = 60.0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def ms(seconds: float | None) -> int | None:
    return None if seconds is None else max(1, int(seconds * 1000))


RENEW_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""

# A write of tagged values begins here: the token each tag has (a new one,
# ARGV[1 + i], where it has none or not one of ours), its key kept at least
# ARGV[1] ms more ('' : for ever). KEYS: the tags' keys, all in one slot.
TAG_SCRIPT = """
local out = {}
for i = 1, #KEYS do
  local t = redis.call('get', KEYS[i])
  if not t or #t ~= 16 then
    t = ARGV[i + 1]
    if ARGV[1] == '' then
      redis.call('set', KEYS[i], t)
    else
      redis.call('set', KEYS[i], t, 'PX', ARGV[1])
    end
  elseif ARGV[1] == '' then
    redis.call('persist', KEYS[i])
  else
    redis.call('pexpire', KEYS[i], ARGV[1], 'GT')
  end
  out[i] = t
end
return out
"""

RELEASE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


# add(): SET NX, and only if it stored, the invalidation messages (ARGV[4:],
# none on a cluster, where they go by SPUBLISH after). ARGV: payload, PX in
# ms or '' (no expiry), the channel, the messages.
ADD_SCRIPT = """
local done
if ARGV[2] == '' then
  done = redis.call('set', KEYS[1], ARGV[1], 'NX')
else
  done = redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
end
if not done then return 0 end
for i = 4, #ARGV do redis.call('publish', ARGV[3], ARGV[i]) end
return 1
"""

# update() and touch(): compare and swap of a payload. ARGV: the payload read,
# the new one, 'keep' (KEEPTTL), '' (no expiry) or PX in ms, the channel, the
# messages. The payloads are compared byte for byte: an equal payload written
# meanwhile holds the same value and deadline, so swapping over it is right.
SWAP_SCRIPT = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[3] == 'keep' then
  redis.call('set', KEYS[1], ARGV[2], 'KEEPTTL')
elseif ARGV[3] == '' then
  redis.call('set', KEYS[1], ARGV[2])
else
  redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
for i = 5, #ARGV do redis.call('publish', ARGV[4], ARGV[i]) end
return 1
"""


# update() and touch(): compare-and-swap attempts before giving up, each lost
# to another write of the key made in between (a key written without pause by
# others would otherwise keep the call retrying for ever).
MAX_SWAPS = 64
# After a lost swap a caller waits a random time up to 1 ms, doubled after
# each further loss up to 50 ms (full jitter), so that writers racing for
# one key spread out instead of losing to each other in step: without it, a
# slower writer among a few fast ones (a free-threaded build's threads, on a
# loaded machine) lost all 64 in a row.
_BACKOFF_FIRST = 0.001
_BACKOFF_MAX = 0.05


def swap_backoff(attempt: int) -> float:
    """Seconds to wait after losing swap number ``attempt`` (from 0)."""
    return random.uniform(0.0, min(_BACKOFF_MAX, _BACKOFF_FIRST * (1 << min(attempt, 16))))


def contended(method: str) -> WatchError:
    """The error of an ``update``/``touch`` that lost every swap."""
    return WatchError(
        f"{method}: another write of the key came between each of {MAX_SWAPS} attempts "
        "to swap its value; nothing was written"
    )


def px_arg(seconds: float | None) -> bytes:
    """A script's PX argument: milliseconds, or b'' for no expiry."""
    return b"" if seconds is None else b"%d" % max(1, int(seconds * 1000))


def new_token() -> bytes:
    return os.urandom(12).hex().encode()


__all__ += [
    "ADD_SCRIPT",
    "MAX_SWAPS",
    "RELEASE_SCRIPT",
    "RENEW_SCRIPT",
    "SWAP_SCRIPT",
    "TAG_SCRIPT",
    "RedisError",
    "contended",
    "ms",
    "new_token",
    "px_arg",
    "swap_backoff",
]
