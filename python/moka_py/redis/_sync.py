"""``TieredCache``: the sync shell of the tiered cache (redis.Redis, RedisCluster)."""

from __future__ import annotations

import functools
import inspect
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, ParamSpec, TypeVar, cast

from redis.exceptions import RedisClusterException, RedisError

from .._moka_py import Moka, _write_unraisable
from . import _core
from ._connect import Kind, bounded_sync, kind_of
from ._envelope import Envelope, TagTokens, tagged
from ._function import EPOCH_TTL, Decorated, TieredFunction, equip, new_epoch
from ._shared import (
    ADD_SCRIPT,
    MAX_SWAPS,
    RELEASE_SCRIPT,
    RENEW_SCRIPT,
    SWAP_SCRIPT,
    TAG_MARGIN,
    TAG_SCRIPT,
    Tier,
    as_redis_error,
    contended,
    ms,
    new_token,
    px_arg,
    swap_backoff,
)

__all__ = ["TieredCache"]

K = TypeVar("K")
V = TypeVar("V")
R = TypeVar("R")
P = ParamSpec("P")

_MISS: Any = object()
# The longest a process's leader waits between two looks at Redis while
# another process loads the key (a notice on the feed usually ends it sooner).
POLL_SECONDS = 0.2
# get_many reads at most this many keys per MGET.
BATCH = 500


class _Flight:
    """One load of a key in this process: the leader's result for the callers
    that joined it."""

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class _Renewer:
    """Extends the claims this process holds while their loaders run: one
    thread, started on first use, stopped by ``close``."""

    def __init__(self, cache: TieredCache[Any, Any], lock_timeout: float) -> None:
        self._cache = cache
        self._lock_ms = ms(lock_timeout)
        self._period = lock_timeout / 3
        self._claims: dict[bytes, bytes] = {}
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None

    def hold(self, lock_key: bytes, token: bytes) -> None:
        with self._cond:
            self._claims[lock_key] = token
            if self._thread is None and not self._stop:
                self._thread = threading.Thread(
                    target=self._run, name="moka_py.redis claims", daemon=True
                )
                self._thread.start()

    def drop(self, lock_key: bytes) -> None:
        with self._cond:
            self._claims.pop(lock_key, None)

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(2.0)

    def _run(self) -> None:
        while True:
            with self._cond:
                # (A stop() made before this thread first waited has notified
                # no one: look first, or the thread outlives close() by a period.)
                if not self._stop:
                    self._cond.wait(self._period)
                if self._stop:
                    return
                claims = list(self._claims.items())
            for lock_key, token in claims:
                try:
                    self._cache._call(
                        self._cache._own.eval, RENEW_SCRIPT, 1, lock_key, token, self._lock_ms
                    )
                except RedisError:
                    pass


class TieredCache(Generic[K, V]):
    """A local moka tier in every process in front of Redis (see the README).

    ``get`` of a key held locally is answered in Rust without a Redis round
    trip while the invalidation feed is up; every write reaches Redis first
    and then tells the other processes, which drop their copies.
    """

    def __init__(
        self,
        client: Any,
        namespace: str,
        *,
        capacity: int = 10_000,
        ttl: float | None = 300.0,
        local_ttl: float | None = None,
        serializer: _core.Serializer | None = None,
        signing_key: str | bytes | Sequence[str | bytes] | None = None,
        lock_timeout: float = 30.0,
        wait_timeout: float = 30.0,
        timeout: float = 1.0,
        stats: bool = False,
        stale_if_error: float | None = None,
    ) -> None:
        kind = kind_of(client, asynchronous=False)
        opts = _core.check_options(
            namespace,
            capacity,
            ttl,
            local_ttl,
            serializer,
            signing_key,
            lock_timeout,
            timeout,
            wait_timeout,
        )
        self._names = _core.Names(opts.namespace)
        envelope = Envelope(opts.namespace, self._names.channel, opts.keys)
        self._kind = kind
        self._ttl = opts.ttl
        self._serializer = opts.serializer
        self._lock_timeout = opts.lock_timeout
        self._wait_timeout = opts.wait_timeout
        self._timeout = timeout_s = opts.timeout
        self._own = bounded_sync(client, kind, timeout_s)
        self._tier = Tier(
            names=self._names,
            capacity=opts.capacity,
            local_ttl=opts.local_ttl,
            stats=stats,
            client=client,
            kind=kind,
            timeout=timeout_s,
            envelope=envelope,
            seeds=[(n.host, n.port) for n in client.get_nodes()] if kind == Kind.CLUSTER else None,
            slow_get=self._slow_get,
            slow_aget=self._no_aget,
            label="TieredCache",
            stale_if_error=_core.check_seconds(stale_if_error, "stale_if_error"),
        )
        self._forked()
        # The hot path: `cache.get` is the Rust method itself (no Python frame).
        self.get = self._tier.rust.get  # type: ignore[method-assign]
        self._tier.start(wait=timeout_s)

    def _forked(self) -> None:
        self._flights: dict[bytes, _Flight] = {}
        self._flights_lock = threading.Lock()
        # refresh_after's reloads in the background: one thread, made on first
        # use, shut down by close (a forked child makes its own).
        self._reloading: set[bytes] = set()
        self._reloads: ThreadPoolExecutor | None = None
        self._renewer = _Renewer(self, self._lock_timeout)
        self._pid = self._tier.pid

    def _ensure(self) -> None:
        tier = self._tier
        if tier.pid != self._pid or tier.feed is None:
            if tier.pid != self._pid:
                self._forked()
            tier.ensure()
        elif tier.closed:
            raise RuntimeError("TieredCache is closed")

    # ------------------------------------------------------------ Redis calls

    def _call(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """One bounded Redis call; failures are counted (and open the breaker)."""
        tier = self._tier
        if tier.closed or tier.down_until:
            tier.available()
        try:
            result = fn(*args, **kwargs)
        except RedisError as err:
            tier.failed(err)
            raise
        except RedisClusterException as err:
            wrapped = as_redis_error(err)
            tier.failed(wrapped)
            raise wrapped from err
        if tier.unreachable:
            tier.reachable("a call succeeded")
        return result

    def _publish(self, messages: list[bytes]) -> None:
        for message in messages:
            if self._kind == Kind.CLUSTER:
                self._call(self._own.execute_command, "SPUBLISH", self._names.channel, message)
            else:
                self._call(self._own.publish, self._names.channel, message)

    def _write(self, commands: Callable[[Any], None], messages: list[bytes]) -> list[Any]:
        """Sends a write and its invalidation messages: in one MULTI/EXEC on a
        single server (so no process can see one without the other), or the
        commands then ``SPUBLISH`` on a cluster."""
        if self._kind == Kind.CLUSTER:
            pipe = self._own.pipeline(transaction=False)
            commands(pipe)
            results = self._call(pipe.execute)
            self._publish(messages)
            return list(results)
        pipe = self._own.pipeline(transaction=True)
        commands(pipe)
        for message in messages:
            pipe.publish(self._names.channel, message)
        return list(self._call(pipe.execute))[: -len(messages)]

    # ------------------------------------------------------------ tags

    def _checked(self, names: list[bytes], payloads: list[Any]) -> list[Any]:
        """Payloads read from Redis, each tagged one whose tags were
        invalidated since it was written replaced by ``_core.STALE``: one
        more read (the tags' tokens, one slot) when any of them is tagged.
        Every read of a value goes through here."""
        tier = self._tier
        keys, wanted = tier.tag_keys(names, payloads)
        if not keys:
            return payloads
        return tier.current(payloads, wanted, keys, list(self._call(self._own.mget, keys)))

    def _check(self, name: bytes, payload: Any) -> Any:
        """``_checked`` of one payload read from ``name`` (None: absent)."""
        return self._checked([name], [payload])[0] if tagged(payload) else payload

    def _get(self, name: bytes) -> Any:
        """GET of a value's key, its tags checked (``_checked``)."""
        return self._check(name, self._call(self._own.get, name))

    def _stamp(self, tags: tuple[str, ...], ttl_s: float | None) -> TagTokens:
        """The token of each of ``tags`` as a write or a load begins (made
        where a tag has none), for its payload: ``TAG_SCRIPT``."""
        tier = self._tier
        return tier.stamped(
            tags, self._call(self._own.eval, TAG_SCRIPT, *tier.stamp_args(tags, ttl_s))
        )

    def _extend(self, tags: tuple[str, ...], ttl_s: float | None, since: float) -> None:
        """After a load that began at ``since`` stored its value: when it took
        over half of ``TAG_MARGIN``, its tags' keys (stamped as it began) are
        extended to outlive the value (``TAG_SCRIPT``; a failure is left: the
        value then reads as absent once they expire, never as live)."""
        if tags and time.monotonic() - since > TAG_MARGIN / 2:
            try:
                self._stamp(tags, ttl_s)
            except RedisError:
                pass

    def invalidate_tags(self, *tags: str) -> None:
        """Makes every value written with one of ``tags`` before this call
        absent, in Redis and in every process's local tier, loads in flight
        included: one new token per tag in Redis and one message, whatever
        the number of values. Raises ``redis.RedisError`` when Redis cannot
        be written (the local tier drops its copies all the same)."""
        tier = self._tier
        names = tier.check_tags(tags, None)
        if not names:
            return
        self._ensure()
        try:
            self._write(*tier.retag(names))
        finally:
            tier.tags_invalidated(names)

    # ------------------------------------------------------------ reads

    def get(self, key: K, default: Any = None) -> V | Any:
        """The value of ``key``, or ``default``. (Replaced per instance by the
        Rust hot path, which calls the slow path below on a local miss.)"""
        return self._slow_get(key, default)

    def _no_aget(self, key: Any, default: Any) -> Any:
        raise TypeError("TieredCache is the sync cache: use AsyncTieredCache with asyncio")

    def _slow_get(self, key: Any, default: Any) -> Any:
        enc = _core.encode_key(key)
        self._ensure()
        tier = self._tier
        k = _core.plain_key(key)
        if tier.rust.trusted and not tier.rust.is_plain(key):
            found = tier.local.get(k, _MISS)
            if found is not _MISS:
                return found
        ok, value = self._fetch(enc, k)
        return value if ok else default

    def _fetch(self, enc: bytes, k: Any) -> tuple[bool, Any]:
        """Reads ``k`` from Redis into the local tier; on a Redis failure, the
        local copy if there is one (fail-safe)."""
        tier = self._tier
        token = tier.rust.token(k)
        try:
            payload = self._get(self._names.value(enc))
        except RedisError:
            return tier.fail_safe(k)
        return tier.accept(self._serializer, enc, k, payload, token)

    def get_many(self, keys: Iterable[K]) -> dict[K, V]:
        """The values of those of ``keys`` that are present (local or in Redis)."""
        self._ensure()
        tier = self._tier
        found, wanted = tier.split_local(keys)
        if not wanted:
            return found
        for start in range(0, len(wanted), BATCH):
            batch = wanted[start : start + BATCH]
            tokens = [tier.rust.token(k) for _, _, k in batch]
            names = [self._names.value(enc) for _, enc, _ in batch]
            try:
                if self._kind == Kind.CLUSTER:
                    payloads = self._call(self._own.mget_nonatomic, names)
                else:
                    payloads = self._call(self._own.mget, names)
                payloads = self._checked(names, list(payloads))
            except RedisError:
                payloads = None
            for i, (key, enc, k) in enumerate(batch):
                if payloads is None:
                    ok, value = tier.fail_safe(k)
                else:
                    ok, value = tier.accept(self._serializer, enc, k, payloads[i], tokens[i])
                if ok:
                    found[key] = value
        return found

    # ------------------------------------------------------------ writes

    def _ttl_of(self, ttl: float | None) -> float | None:
        return self._ttl if ttl is None else _core.check_seconds(ttl, "ttl")

    def set(
        self, key: K, value: V, ttl: float | None = None, *, tags: Iterable[str] | None = None
    ) -> None:
        """Stores ``value`` in Redis and locally; every other process drops its
        copy. ``tags``: see :meth:`invalidate_tags`. Raises ``redis.RedisError``
        (and keeps no local copy) when Redis cannot be written."""
        enc = _core.encode_key(key)
        ttl_s = self._ttl_of(ttl)
        tier = self._tier
        names = () if tags is None else tier.check_tags(tags)
        data = self._serializer.dumps(value)
        self._ensure()
        k = _core.plain_key(key)
        token = tier.rust.token(k)
        name = self._names.value(enc)
        msgs = tier.messages(_core.INVALIDATE, (enc,))
        try:
            payload = tier.pack(enc, data, ttl_s, self._stamp(names, ttl_s) if names else ())
            self._write(lambda p: p.set(name, payload, px=ms(ttl_s)), msgs)
        except RedisError:
            tier.rust.invalidate(k)
            raise
        tier.rust.put(k, value, tier.write_bound(ttl, ttl_s), token, names or None)

    def set_many(
        self,
        items: Mapping[K, V] | Iterable[tuple[K, V]],
        ttl: float | None = None,
        *,
        tags: Iterable[str] | None = None,
    ) -> None:
        """``set`` of every pair, in one round trip and one message (two with
        ``tags``, which every value gets). Every value is serialized first:
        one that cannot be leaves nothing stored."""
        pairs = list(items.items() if isinstance(items, Mapping) else items)
        ttl_s = self._ttl_of(ttl)
        names = () if tags is None else self._tier.check_tags(tags)
        prepared = []
        for key, value in pairs:
            enc = _core.encode_key(key)
            prepared.append((enc, _core.plain_key(key), value, self._serializer.dumps(value)))
        if not prepared:
            return
        self._ensure()
        tier = self._tier
        tokens = [tier.rust.token(k) for _, k, _, _ in prepared]
        px = ms(ttl_s)
        msgs = tier.messages(_core.INVALIDATE, [enc for enc, _, _, _ in prepared])

        stamped: TagTokens = ()

        def commands(pipe: Any) -> None:
            for enc, _, _, data in prepared:
                pipe.set(self._names.value(enc), tier.pack(enc, data, ttl_s, stamped), px=px)

        try:
            if names:
                stamped = self._stamp(names, ttl_s)
            self._write(commands, msgs)
        except RedisError:
            for _, k, _, _ in prepared:
                tier.rust.invalidate(k)
            raise
        bound = tier.write_bound(ttl, ttl_s)
        for (_, k, value, _), token in zip(prepared, tokens, strict=True):
            tier.rust.put(k, value, bound, token, names or None)

    def remove(self, key: K, default: Any = None) -> V | Any:
        """Removes ``key`` everywhere; the value that was stored, or ``default``."""
        enc, old = self._getdel(key)
        if old is None:
            return default
        ok, value, _ = self._tier.decode(self._serializer, enc, old)
        return value if ok else default

    def _getdel(self, key: Any) -> tuple[bytes, bytes | None]:
        """Removes ``key`` everywhere: its encoding, and the payload Redis held."""
        enc = _core.encode_key(key)
        self._ensure()
        tier = self._tier
        k = _core.plain_key(key)
        name = self._names.value(enc)
        msgs = tier.messages(_core.INVALIDATE, (enc,))
        try:
            (old,) = self._write(lambda p: p.getdel(name), msgs)
        finally:
            tier.rust.invalidate(k)
        # A value one of whose tags was invalidated was not held (and one
        # whose tags cannot be checked is not vouched for).
        try:
            old = self._check(name, old)
        except RedisError:
            old = None
        if old is _core.STALE:
            old = None
        return enc, old

    def _contains(self, key: Any) -> bool:
        """Whether a read of ``key`` would find a value (the trusted local
        tier's, or a payload in Redis that verifies and has not expired),
        without reading it into the local tier or counting a read. On a
        Redis failure, whether a local copy is held."""
        enc = _core.encode_key(key)
        self._ensure()
        tier = self._tier
        k = _core.plain_key(key)
        if tier.rust.trusted and k in tier.local:
            return True
        try:
            payload = self._get(self._names.value(enc))
        except RedisError:
            return k in tier.local
        return payload is not None and tier.holds(enc, payload)

    # ------------------------------------------------------------ atomic writes

    def _script(self, script: str, name: bytes, args: list[Any], messages: list[bytes]) -> bool:
        """Runs ``ADD_SCRIPT`` or ``SWAP_SCRIPT`` on ``name``: whether it
        wrote. On a single server the script publishes the messages itself
        (no process sees the write without them); on a cluster they follow."""
        tier = self._tier
        done = bool(self._call(self._own.eval, script, 1, name, *tier.script_args(args, messages)))
        if done and self._kind == Kind.CLUSTER:
            self._publish(messages)
        return done

    def add(
        self, key: K, value: V, ttl: float | None = None, *, tags: Iterable[str] | None = None
    ) -> bool:
        """Stores ``value`` only if Redis holds no value for ``key`` (one
        atomic ``SET NX`` across every process, or a swap of a value one of
        whose tags was invalidated); whether it stored. Every other process
        drops its copy when it does. Raises ``redis.RedisError`` when Redis
        cannot be asked."""
        enc = _core.encode_key(key)
        ttl_s = self._ttl_of(ttl)
        tier = self._tier
        names = () if tags is None else tier.check_tags(tags)
        data = self._serializer.dumps(value)
        self._ensure()
        k = _core.plain_key(key)
        token = tier.rust.token(k)
        name = self._names.value(enc)
        msgs = tier.messages(_core.INVALIDATE, (enc,))
        try:
            payload = tier.pack(enc, data, ttl_s, self._stamp(names, ttl_s) if names else ())
            stored = self._script(ADD_SCRIPT, name, [payload, px_arg(ttl_s)], msgs)
            if not stored:
                held = self._call(self._own.get, name)
                if self._check(name, held) is _core.STALE:
                    args = [held, payload, px_arg(ttl_s)]
                    stored = self._script(SWAP_SCRIPT, name, args, msgs)
        except RedisError:
            tier.rust.invalidate(k)
            raise
        if stored:
            tier.rust.put(k, value, tier.write_bound(ttl, ttl_s), token, names or None)
        return stored

    def update(self, key: K, fn: Callable[[V], V]) -> V:
        """Replaces the value of ``key`` with ``fn(value)`` atomically across
        every process (compare and swap: ``fn`` runs again if another write
        of the key came between), keeping its expiry; returns the new value
        and every other process drops its copy. ``KeyError`` if Redis holds
        no value for ``key``; ``fn``'s exceptions propagate (nothing is
        written); ``redis.WatchError`` (nothing written) when another write
        of the key came between each of 64 attempts (after each lost one
        the call waits a random pause, its bound doubling from 1 ms to
        50 ms); ``redis.RedisError`` when Redis cannot be asked."""
        enc = _core.encode_key(key)
        self._ensure()
        tier = self._tier
        k = _core.plain_key(key)
        name = self._names.value(enc)
        for attempt in range(MAX_SWAPS):
            token = tier.rust.token(k)
            payload = self._call(self._own.get, name)
            checked = self._check(name, payload)
            opened = None if checked is None else tier.reopen(enc, checked)
            ok, old = (False, None) if opened is None else tier.loads(self._serializer, opened[0])
            if not ok or opened is None:
                raise KeyError(key)
            value = fn(cast("V", old))
            new = tier.repack(enc, self._serializer.dumps(value), opened[1], opened[2])
            msgs = tier.messages(_core.INVALIDATE, (enc,))
            try:
                swapped = self._script(SWAP_SCRIPT, name, [payload, new, b"keep"], msgs)
            except RedisError:
                tier.rust.invalidate(k)
                raise
            if swapped:
                left = _core.seconds_left(opened[1])
                tier.rust.put(
                    k, value, tier.local_bound(left), token, tier.names_of(opened[2]) or None
                )
                return value
            if attempt + 1 < MAX_SWAPS:
                time.sleep(swap_backoff(attempt))
        raise contended("update")

    def touch(self, key: K, ttl: float | None = None) -> bool:
        """Gives the value of ``key`` a new expiry (``ttl`` seconds from now,
        or the cache's ``ttl``) without changing it, atomically across every
        process; whether Redis held a value. Raises ``redis.WatchError`` as
        :meth:`update` does, ``redis.RedisError`` when Redis cannot be asked."""
        enc = _core.encode_key(key)
        ttl_s = self._ttl_of(ttl)
        self._ensure()
        tier = self._tier
        k = _core.plain_key(key)
        name = self._names.value(enc)
        for attempt in range(MAX_SWAPS):
            payload = self._call(self._own.get, name)
            checked = self._check(name, payload)
            opened = None if checked is None else tier.reopen(enc, checked)
            if opened is None:
                return False
            pairs = opened[2]
            if pairs:
                # The tags' keys must outlive the new expiry too.
                if self._stamp(tier.names_of(pairs), ttl_s) != pairs:
                    return False  # a tag invalidated meanwhile
            new = tier.pack(enc, opened[0], ttl_s, pairs)
            msgs = tier.messages(_core.INVALIDATE, (enc,))
            try:
                swapped = self._script(SWAP_SCRIPT, name, [payload, new, px_arg(ttl_s)], msgs)
            finally:
                # (The local copy's bound was the old expiry: read it again.)
                tier.rust.invalidate(k)
            if swapped:
                return True
            if attempt + 1 < MAX_SWAPS:
                time.sleep(swap_backoff(attempt))
        raise contended("touch")

    def clear(self) -> None:
        """Deletes every entry of this namespace from Redis (every master of a
        cluster) and from every process's local tier."""
        self._ensure()
        tier = self._tier
        try:
            self._unlink_namespace()
            self._publish(tier.messages(_core.CLEAR))
        finally:
            tier.rust.invalidate_all()

    def _unlink_namespace(self) -> None:
        if self._kind == Kind.CLUSTER:
            for node in self._call(self._own.get_primaries):
                client = self._own.get_redis_connection(node)
                self._unlink_on(client)
        else:
            self._unlink_on(self._own)

    def _unlink_on(self, client: Any) -> None:
        cursor: int | bytes = 0
        while True:
            cursor, found = self._call(
                client.scan, cursor=cursor, match=self._names.pattern, count=1000
            )
            mine = [k for k in found if self._names.owns(k)]
            # One key per UNLINK on a cluster node's connection would be slow;
            # keys of one SCAN batch live on this node but not in one slot.
            for k in mine:
                self._call(client.unlink, k)
            if int(cursor) == 0:
                return

    # ------------------------------------------------------------ loads

    def get_with(
        self,
        key: K,
        initializer: Callable[[], V],
        ttl: float | None = None,
        stale_if_error: float | None = None,
        tags: Iterable[str] | None = None,
    ) -> V:
        """The value of ``key``; on a miss, ``initializer()`` runs once per key
        across every thread of every process, and its result is stored (with
        ``tags``: see :meth:`invalidate_tags`).
        ``stale_if_error`` (None: the cache's; 0: off; at most the cache's):
        if the load fails, the last value known here that expired at most
        that long ago is returned instead (see the README)."""
        # (A hit pays one comparison per option; a value given is checked
        # on every call, hit or miss. Not keyword-only: CPython fills a
        # keyword-only default from a dict on every call, ~10 ns of a hit.)
        if stale_if_error is not None:
            self._tier.window(stale_if_error)
        names = () if tags is None else self._tier.check_tags(tags)
        found = self._tier.rust.lookup(key, _MISS)
        if found is not _MISS:
            return found  # type: ignore[no-any-return]
        window = self._tier.window(stale_if_error)
        return self._load(key, initializer, ttl, None, window, names)  # type: ignore[no-any-return]

    def _load(
        self,
        key: Any,
        initializer: Callable[[], Any],
        ttl: float | None,
        keep: Callable[[Any], object] | None = None,
        window: float | None = None,
        tags: tuple[str, ...] = (),
    ) -> Any:
        """``get_with``'s miss (the value stored with ``tags``); a value for
        which ``keep`` is false is returned (to this process's callers) but
        not stored. A load that
        raises an ``Exception`` returns instead the value kept for the key if
        it expired at most ``window`` seconds ago (the callers waiting for
        this load get it too)."""
        enc = _core.encode_key(key)
        ttl_s = self._ttl_of(ttl)
        self._ensure()
        k = _core.plain_key(key)
        takeover = False
        with self._flights_lock:
            flight = self._flights.get(enc)
            if flight is None:
                flight = self._flights[enc] = _Flight()
                leader = True
            else:
                leader = False
        # A call that waits (here, or below for another process) is one wait,
        # however many rounds it waits.
        waited = not leader
        if waited:
            self._tier.counts.add("waits")
        while not leader:
            if flight.done.wait(self._wait_timeout):
                if flight.error is not None:
                    raise flight.error
                return flight.value
            # This process's load outlasted wait_timeout: one caller takes over
            # and loads on its own; the others wait for it in turn.
            with self._flights_lock:
                current = self._flights.get(enc)
                if current is None:
                    # A load that took over has ended: load as usual (its
                    # value is in Redis by now, which the load reads first).
                    flight = self._flights[enc] = _Flight()
                    leader = True
                elif current is flight and not flight.done.is_set():
                    flight = self._flights[enc] = _Flight()
                    leader = takeover = True
                    self._tier.wait_outlasted(True, self._wait_timeout)
                else:
                    flight = current
        try:
            if takeover:
                flight.value = self._load_unclaimed(enc, k, initializer, ttl, ttl_s, keep, tags)
            else:
                flight.value = self._load_fleet(enc, k, initializer, ttl, ttl_s, waited, keep, tags)
            return flight.value
        except Exception as err:
            ok, stale = self._tier.stale_value(k, window)
            if not ok:
                flight.error = err
                raise
            flight.value = stale
            return stale
        except BaseException as err:
            flight.error = err
            raise
        finally:
            with self._flights_lock:
                if self._flights.get(enc) is flight:
                    del self._flights[enc]
            flight.done.set()

    def _load_fleet(
        self,
        enc: bytes,
        k: Any,
        initializer: Callable[[], Any],
        ttl: float | None,
        ttl_s: float | None,
        waited: bool,
        keep: Callable[[Any], object] | None,
        tags: tuple[str, ...] = (),
    ) -> Any:
        tier = self._tier
        name = self._names.value(enc)
        lock_key = self._names.lock(enc)
        woken = threading.Event()
        tier.add_waiter(enc, woken.set)
        give_up = time.monotonic() + self._wait_timeout
        try:
            while True:
                token = tier.rust.token(k)
                try:
                    payload = self._get(name)
                    if payload is not None:
                        ok, value = tier.take(self._serializer, enc, k, payload, token)
                        if ok:
                            return value
                    claim = new_token()
                    lock_ms = ms(self._lock_timeout)
                    claimed = self._call(self._own.set, lock_key, claim, nx=True, px=lock_ms)
                except RedisError:
                    return self._load_alone(k, initializer, ttl, ttl_s, token, keep, tags)
                if claimed:
                    absent = payload is None
                    return self._lead(
                        enc, k, initializer, ttl, ttl_s, claim, absent, keep, tags=tags
                    )
                left = give_up - time.monotonic()
                if left <= 0:
                    # Another process's load (or a claim nobody renews away)
                    # outlasted wait_timeout: load on our own.
                    tier.wait_outlasted(False, self._wait_timeout)
                    return self._load_unclaimed(enc, k, initializer, ttl, ttl_s, keep, tags)
                if not waited:
                    tier.counts.add("waits")
                    waited = True
                woken.wait(min(POLL_SECONDS, left))
                woken.clear()
        finally:
            tier.remove_waiter(enc, woken.set)

    def _compute(self, initializer: Callable[[], Any]) -> Any:
        try:
            value = initializer()
        except BaseException:
            self._tier.counts.add("load_failures")
            raise
        self._tier.counts.add("loads")
        return value

    def _load_alone(
        self,
        k: Any,
        initializer: Callable[[], Any],
        ttl: float | None,
        ttl_s: float | None,
        token: int,
        keep: Callable[[Any], object] | None,
        tags: tuple[str, ...] = (),
    ) -> Any:
        """Redis is unreachable: load in this process, keep the value locally
        (for at most the entry's bounds), store nothing in Redis."""
        value = self._compute(initializer)
        if keep is None or keep(value):
            bound = self._tier.write_bound(ttl, ttl_s)
            self._tier.keep(k, value, bound, ttl_s, token, tags)
        return value

    def _load_unclaimed(
        self,
        enc: bytes,
        k: Any,
        initializer: Callable[[], Any],
        ttl: float | None,
        ttl_s: float | None,
        keep: Callable[[Any], object] | None,
        tags: tuple[str, ...] = (),
    ) -> Any:
        """``wait_timeout`` passed while another load held the key: load here,
        store the value in Redis (over any) and tell the other processes."""
        tier = self._tier
        token = tier.rust.token(k)
        begun = time.monotonic()
        try:
            stamped: TagTokens | None = self._stamp(tags, ttl_s) if tags else ()
        except RedisError:
            stamped = None
        value = self._compute(initializer)
        if keep is not None and not keep(value):
            return value
        data = self._serializer.dumps(value)
        name = self._names.value(enc)
        stored = False
        if stamped is not None:  # (else Redis failed the stamp: kept here only)
            payload = tier.pack(enc, data, ttl_s, stamped)
            try:
                self._write(
                    lambda p: p.set(name, payload, px=ms(ttl_s)),
                    tier.messages(_core.FILLED, (enc,)),
                )
                stored = True
            except RedisError:
                pass
        tier.keep(k, value, tier.write_bound(ttl, ttl_s), ttl_s, token, tags, put=stored)
        if stored:
            self._extend(tags, ttl_s, begun)
        return value

    def _lead(
        self,
        enc: bytes,
        k: Any,
        initializer: Callable[[], Any],
        ttl: float | None,
        ttl_s: float | None,
        claim: bytes,
        absent: bool,
        keep: Callable[[Any], object] | None,
        force: bool = False,
        drop: bool = False,
        tags: tuple[str, ...] = (),
    ) -> Any:
        """This process holds the claim: load, store (with ``tags``, their
        tokens taken before the load begins), release, tell the
        waiters. ``force`` (a refresh or a reload): load whatever Redis
        holds, store over it, and raise if it cannot be stored; ``drop`` (a
        refresh): a result ``keep`` rejects unlinks the stored one."""
        tier = self._tier
        name = self._names.value(enc)
        lock_key = self._names.lock(enc)
        stored = False
        started = time.monotonic()
        self._renewer.hold(lock_key, claim)
        try:
            token = tier.rust.token(k)
            # Another process may have stored the value and released its claim
            # between this process's GET and its claim: read once more.
            try:
                again = None if force else self._get(name)
            except RedisError:
                again = None
            if again is not None:
                ok, value = tier.take(self._serializer, enc, k, again, token)
                if ok:
                    return value
            # The tags' tokens before the load: an invalidation of one of
            # them while it runs dates the value it stores.
            try:
                stamped: TagTokens | None = self._stamp(tags, ttl_s) if tags else ()
            except RedisError:
                if force:
                    raise
                stamped = None
            value = self._compute(initializer)
            if keep is not None and not keep(value):
                if drop:
                    # A refresh whose result is not kept: the stored one is
                    # outdated all the same (FILLED: every copy is dropped).
                    self._call(self._own.unlink, name)
                    tier.rust.invalidate(k)
                    stored = True
                return value
            data = self._serializer.dumps(value)
            if stamped is None:
                return value  # (Redis failed the stamp: not stored, as below)
            try:
                # NX: a `set` of this key made meanwhile wins over the load.
                # A value that could not be read (absent is False) is replaced.
                stored = bool(
                    self._call(
                        self._own.set,
                        name,
                        tier.pack(enc, data, ttl_s, stamped),
                        px=ms(ttl_s),
                        nx=absent and not force,
                    )
                )
            except RedisError:
                if force:
                    tier.rust.invalidate(k)
                    raise
                stored = False
            if stored:
                bound = tier.write_bound(ttl, ttl_s)
                tier.keep(k, value, bound, ttl_s, token, tags, put=True)
                self._extend(tags, ttl_s, started)
            return value
        finally:
            self._renewer.drop(lock_key)
            kind = _core.FILLED if stored else _core.RELEASED
            try:
                if not self._call(self._own.eval, RELEASE_SCRIPT, 1, lock_key, claim):
                    tier.claim_lost(time.monotonic() - started)
                self._publish(tier.messages(kind, (enc,)))
            except RedisError:
                pass  # the claim lapses after lock_timeout; waiters poll
            # (This process's own notices do not come back through the feed.)
            tier.wake(enc)

    def _reload(
        self,
        key: Any,
        initializer: Callable[[], Any],
        ttl: float | None,
        keep: Callable[[Any], object] | None,
        wait: bool,
        tags: tuple[str, ...] = (),
    ) -> tuple[bool, Any]:
        """A load of ``key`` whatever is stored (``refresh``), holding the
        key's claim like any load, so that callers meanwhile wait for it:
        ``(True, value)``, stored over any value and every process's copy
        invalidated; or ``(False, None)`` when another load holds the claim
        and ``wait`` is false (a background reload: that load is the
        reload). Raises ``redis.RedisError`` when Redis cannot be asked."""
        enc = _core.encode_key(key)
        ttl_s = self._ttl_of(ttl)
        self._ensure()
        tier = self._tier
        k = _core.plain_key(key)
        lock_key = self._names.lock(enc)
        woken = threading.Event()
        tier.add_waiter(enc, woken.set)
        give_up = time.monotonic() + self._wait_timeout
        try:
            while True:
                claim = new_token()
                lock_ms = ms(self._lock_timeout)
                if self._call(self._own.set, lock_key, claim, nx=True, px=lock_ms):
                    value = self._lead(
                        enc, k, initializer, ttl, ttl_s, claim, False, keep, True, wait, tags
                    )
                    return True, value
                left = give_up - time.monotonic()
                if not wait:
                    return False, None
                if left <= 0:
                    return True, self._load_unclaimed(enc, k, initializer, ttl, ttl_s, keep, tags)
                tier.counts.add("waits")
                woken.wait(min(POLL_SECONDS, left))
                woken.clear()
        finally:
            tier.remove_waiter(enc, woken.set)

    # ------------------------------------------------------------ decorator

    def cached(
        self,
        ttl: float | None = None,
        key: Callable[..., Any] | None = None,
        typed: bool = False,
        name: str | None = None,
        *,
        cache_if: Callable[[Any], object] | None = None,
        refresh_after: float | None = None,
        stale_if_error: float | None = None,
        tags: Iterable[str] | Callable[..., Iterable[str]] | None = None,
    ) -> Callable[[Callable[P, R]], TieredFunction[P, R]]:
        """Caches a sync function's results in this cache: one call per
        arguments across every process (``get_with``). The key is ``name``
        (default: the function's module and qualified name) plus the arguments
        (or what ``key(*args, **kwargs)`` returns); a function defined inside
        another, or a lambda, needs ``name=``: its qualified name does not
        tell two of them apart.

        ``cache_if(result)``: a result for which it is false is returned but
        not stored. ``stale_if_error``: as ``get_with``'s, for every call.
        ``refresh_after``: seconds after which a call that finds
        the result returns it and reloads it in the background (one reload
        across the fleet: a process that finds another's load in flight
        leaves it to that one). ``tags``: the tags of every result, or a
        function of the arguments that returns them (see
        :meth:`invalidate_tags`).

        The function gets ``f.refresh(*args, **kwargs)`` (loads whatever is
        stored, holding the key's claim so that callers elsewhere wait for it,
        stores over any value and invalidates every process's copy; returns
        the result), ``f.uncached(*args, **kwargs)`` (the function itself),
        ``f.cache_invalidate(*args, **kwargs)`` (removes one result
        everywhere; whether Redis held it), ``f.cache_contains(*args,
        **kwargs)`` and ``f.cache_clear()`` (every result of this function,
        in every process)."""
        if ttl is not None:
            _core.check_seconds(ttl, "ttl")
        _core.check_seconds(refresh_after, "refresh_after")
        window = self._tier.window(stale_if_error)
        if cache_if is not None and not callable(cache_if):
            raise TypeError(f"cache_if must be callable or None, not {type(cache_if).__name__}")
        tags_of = self._tier.tags_of_calls(tags)

        def decorate(fn: Callable[P, R]) -> TieredFunction[P, R]:
            if inspect.iscoroutinefunction(fn):
                raise TypeError(
                    "TieredCache.cached decorates sync functions: use AsyncTieredCache "
                    f"for async def {fn.__qualname__}"
                )
            d = Decorated(fn, key, typed, name, cache_if, refresh_after)
            keep = d.keep()
            rust = self._tier.rust

            def key_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                # (Read without counting: TierStats count the results' reads.)
                epoch = rust.peek(d.epoch_key, _MISS) if rust.trusted else _MISS
                if epoch is _MISS:
                    epoch = self._load(d.epoch_key, new_epoch, EPOCH_TTL)
                return d.key(epoch, args, kwargs)

            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                k = key_of(args, kwargs)
                stored = rust.lookup(k, _MISS)
                if stored is _MISS:
                    stored = self._load(
                        k,
                        lambda: d.pack(fn(*args, **kwargs)),
                        ttl,
                        keep,
                        window,
                        tags_of(args, kwargs),
                    )
                value, due = d.unpack(stored)
                if due:
                    self._reload_later(
                        k, lambda: d.pack(fn(*args, **kwargs)), ttl, keep, tags_of(args, kwargs)
                    )
                return value

            def refresh(*args: Any, **kwargs: Any) -> Any:
                k = key_of(args, kwargs)
                load = lambda: d.pack(fn(*args, **kwargs))  # noqa: E731
                _, stored = self._reload(k, load, ttl, keep, True, tags_of(args, kwargs))
                return d.unpack(stored)[0]

            def cache_invalidate(*args: Any, **kwargs: Any) -> bool:
                """Removes the result of these arguments in Redis and in every
                process's local tier; whether Redis held one."""
                return self._getdel(key_of(args, kwargs))[1] is not None

            def cache_contains(*args: Any, **kwargs: Any) -> bool:
                return self._contains(key_of(args, kwargs))

            def cache_clear() -> None:
                cache: Any = self  # (the epoch is no K -> V entry of the user's)
                cache.set(d.epoch_key, new_epoch(), EPOCH_TTL)

            out = equip(wrapper, self, refresh, cache_invalidate, cache_contains, cache_clear)
            return cast("TieredFunction[P, R]", out)

        return decorate

    def _reload_later(
        self,
        key: Any,
        initializer: Callable[[], Any],
        ttl: float | None,
        keep: Callable[[Any], object] | None,
        tags: tuple[str, ...] = (),
    ) -> None:
        """A hit on a result due for a reload (``refresh_after``): reloads it
        on the cache's reload thread, unless this process reloads it already
        or the cache is closed. A reload that fails, or whose result
        ``cache_if`` rejects, leaves the stored result; the loader's exception
        goes to ``sys.unraisablehook`` (as ``@cached``'s), a Redis failure is
        counted in ``redis_errors``."""
        enc = _core.encode_key(key)

        def run() -> None:
            try:
                self._reload(key, initializer, ttl, keep, False, tags)
            except RedisError:
                pass  # counted; the stored result stays
            except Exception as err:
                if not self._tier.closed:  # (else: the cache closed under it)
                    _write_unraisable(err, initializer)  # as @cached's failed reloads
            finally:
                with self._flights_lock:
                    self._reloading.discard(enc)

        with self._flights_lock:
            if enc in self._reloading or self._tier.closed or self._pid != self._tier.pid:
                return
            self._reloading.add(enc)
            if self._reloads is None:
                self._reloads = ThreadPoolExecutor(1, thread_name_prefix="moka_py.redis reload")
            # (Under the lock, so that close() cannot shut the pool down
            # between; submit runs no code of the user's.)
            self._reloads.submit(run)

    # ------------------------------------------------------------ the rest

    @property
    def local(self) -> Moka[Any, Any]:
        """The local tier (a ``Moka``): read it, but write through the cache."""
        return self._tier.local

    @property
    def namespace(self) -> str:
        return self._names.namespace

    @property
    def feed_up(self) -> bool:
        """Whether the invalidation feed is subscribed (local copies trusted)."""
        return bool(self._tier.rust.trusted)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Waits until the invalidation feed is subscribed; whether it is."""
        self._ensure()
        feed = self._tier.feed
        deadline = time.monotonic() + (self._timeout if timeout is None else timeout)
        while feed is not None and time.monotonic() < deadline:
            if feed.wait_up(min(0.05, max(0.0, deadline - time.monotonic()))):
                return bool(self._tier.rust.trusted)
        return bool(self._tier.rust.trusted)

    def stats(self, *, cumulative: bool = False) -> _core.TierStats:
        """What the cache recorded (``stats=True``; else ``ValueError``) since
        the last :meth:`reset_stats`, or (``cumulative``) since it was made:
        the figures an exporter reads, which only grow."""
        return self._tier.stats(cumulative)

    def reset_stats(self) -> None:
        """Makes :meth:`stats` count from zero again (the cumulative figures
        are left alone)."""
        self._tier.reset_stats()

    def close(self) -> None:
        """Stops the feed and the claims' thread and closes the cache's own
        connections (the client given stays open: it is the caller's)."""
        self._renewer.stop()
        self._tier.close()
        # (After the tier is closed: no reload is submitted from now on.)
        with self._flights_lock:
            reloads, self._reloads = self._reloads, None
        if reloads is not None:
            reloads.shutdown(wait=False)
        try:
            self._own.close()
            if self._kind != Kind.CLUSTER:
                self._own.connection_pool.disconnect()
        except Exception:
            pass

    def __enter__(self) -> TieredCache[K, V]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TieredCache(namespace={self._names.namespace!r}, feed_up={self.feed_up})"
