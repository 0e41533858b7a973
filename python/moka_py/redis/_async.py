"""``AsyncTieredCache``: the asyncio shell of the tiered cache
(redis.asyncio.Redis, redis.asyncio.cluster.RedisCluster).

It mirrors ``TieredCache`` method for method, with the same decisions
(``_core``, ``_shared``); its Redis calls are bounded with
``asyncio.wait_for`` as well as the client's socket timeouts, so that the
event loop is never blocked and no call outlives ``timeout``. The invalidation
feed is the same thread as the sync cache's: it touches only the local tier,
and wakes waiting coroutines with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, ParamSpec, TypeVar, cast

from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .._moka_py import Moka, _write_unraisable
from . import _core
from ._connect import Kind, bounded_async, kind_of
from ._envelope import Envelope, TagTokens, tagged
from ._function import EPOCH_TTL, AsyncTieredFunction, Decorated, equip, new_epoch
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
from ._sync import BATCH, POLL_SECONDS

__all__ = ["AsyncTieredCache"]

K = TypeVar("K")
V = TypeVar("V")
R = TypeVar("R")
P = ParamSpec("P")

_MISS: Any = object()
# asyncio.timeout (3.11+); 3.10 has only wait_for.
_timeout: Any = getattr(asyncio, "timeout", None)


class _LoopClients:
    """The cache's own asyncio client of each event loop that uses it.

    An asyncio connection belongs to the loop that opened it, so each loop
    (a second ``asyncio.run()``, pytest-asyncio's loop per test, a forked
    child's loop) gets a client of its own, made from the user's settings.
    Clients of loops that have closed (and every client of the parent, in a
    forked child) are let go: their sockets are closed without their loop.

    The lock guards the map only: no Redis call, no user code runs under it.
    """

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._pid = os.getpid()
        # id(loop) -> (weak reference to the loop, its client)
        self._by_loop: dict[int, tuple[weakref.ref[asyncio.AbstractEventLoop], Any]] = {}
        # Made at construction (so that a setting the cache cannot carry over
        # fails there), handed to the first loop that asks.
        self._first: Any = make()

    def get(self) -> Any:
        loop = asyncio.get_running_loop()
        stale: list[Any] = []
        inherited: list[Any] = []
        with self._lock:
            if self._pid != os.getpid():
                inherited = [c for _, c in self._by_loop.values()]
                self._by_loop.clear()
                self._pid = os.getpid()
            entry = self._by_loop.get(id(loop))
            if entry is not None and entry[0]() is loop:
                return entry[1]
            for key, (ref, c) in list(self._by_loop.items()):
                other = ref()
                if other is None or other.is_closed():
                    stale.append(c)
                    del self._by_loop[key]
            # (The first client has opened no connection yet: any loop may take it.)
            client = self._first if self._first is not None else self._make()
            self._first = None
            self._by_loop[id(loop)] = (weakref.ref(loop), client)
        for c in stale:
            _let_go(c, forked=False)
        for c in inherited:
            _let_go(c, forked=True)
        return client

    def take(self) -> tuple[Any | None, list[Any], bool]:
        """For ``aclose``: the running loop's client, every other, and
        whether those others are a parent's (this process was forked)."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:
            forked = self._pid != os.getpid()
            current = None
            others = [] if self._first is None else [self._first]
            self._first = None
            for ref, c in self._by_loop.values():
                if loop is not None and ref() is loop and not forked:
                    current = c
                else:
                    others.append(c)
            self._by_loop.clear()
        return current, others, forked


def _connections(client: Any) -> list[Any]:
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        return [
            *getattr(pool, "_available_connections", ()),
            *getattr(pool, "_in_use_connections", ()),
        ]
    found: list[Any] = []
    for node in client.get_nodes():
        found += getattr(node, "_connections", ())
    return found


def _let_go(client: Any, *, forked: bool) -> None:
    """Closes the sockets of a client whose loop is gone: closed (its
    transports cannot be closed through it, so the socket is closed directly),
    or, in a forked child, the parent's. There only this process's copy of
    each socket is closed, and the loop is never touched: its selector (the
    epoll instance) is shared with the parent, whose loop may still run and
    would lose its sockets' registrations."""
    for conn in _connections(client):
        writer = getattr(conn, "_writer", None)
        conn._writer = conn._reader = None
        if writer is None:
            continue
        transport = writer.transport
        if not forked:
            try:
                transport.abort()
                continue
            except RuntimeError:  # its loop is closed
                pass
        sock = getattr(transport, "_sock", None)
        if sock is not None:
            sock.close()
            transport._sock = None


def _waker() -> tuple[asyncio.Event, Callable[[], None]]:
    """An event of the running loop, and ``wake()`` that sets it from any
    thread (the feed's): what a load waits on for another's notice."""
    loop = asyncio.get_running_loop()
    woken = asyncio.Event()

    def wake() -> None:
        try:
            loop.call_soon_threadsafe(woken.set)
        except RuntimeError:  # the loop is closed
            pass

    return woken, wake


class AsyncTieredCache(Generic[K, V]):
    """The asyncio form of :class:`moka_py.redis.TieredCache` (same options,
    same methods as coroutines). A sync and an async cache of one namespace
    are one cache."""

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
        kind = kind_of(client, asynchronous=True)
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
        self._clients = _LoopClients(lambda: bounded_async(client, kind, timeout_s))
        self._tier = Tier(
            names=self._names,
            capacity=opts.capacity,
            local_ttl=opts.local_ttl,
            stats=stats,
            client=client,
            kind=kind,
            timeout=timeout_s,
            envelope=envelope,
            seeds=[
                (n.host, n.port)
                for n in (client.get_nodes() or client.nodes_manager.startup_nodes.values())
            ]
            if kind == Kind.CLUSTER
            else None,
            slow_get=self._no_get,
            slow_aget=self._slow_get,
            label="AsyncTieredCache",
            stale_if_error=_core.check_seconds(stale_if_error, "stale_if_error"),
        )
        # (event loop, encoded key) -> the future of this process's load.
        self._flights: dict[tuple[int, bytes], asyncio.Future[Any]] = {}
        # (event loop, encoded key) -> a refresh_after reload in flight.
        self._reloading: dict[tuple[int, bytes], asyncio.Task[None]] = {}
        # The hot path: `await cache.get(k)` of a local hit awaits a finished
        # `Ready` returned by Rust; a miss returns the slow path's coroutine.
        self.get = self._tier.rust.aget  # type: ignore[method-assign]
        self._tier.start(wait=0)

    def _no_get(self, key: Any, default: Any) -> Any:
        raise TypeError("AsyncTieredCache is the asyncio cache: use TieredCache without asyncio")

    def _ensure(self) -> None:
        self._tier.ensure()

    @property
    def _own(self) -> Any:
        """The cache's own client for the running event loop."""
        return self._clients.get()

    # ------------------------------------------------------------ Redis calls

    async def _call(self, awaitable: Awaitable[R]) -> R:
        """One Redis call, bounded by ``timeout`` whatever the client does."""
        tier = self._tier
        if tier.closed or tier.down_until:
            try:
                tier.available()
            except RedisError:
                if inspect.iscoroutine(awaitable):
                    awaitable.close()
                raise
        try:
            if _timeout is not None:
                # (Cheaper than wait_for, which wraps the call in a task.)
                async with _timeout(self._timeout):
                    result = await awaitable
            else:
                result = await asyncio.wait_for(awaitable, self._timeout)
        except asyncio.TimeoutError as err:
            timeout = RedisTimeoutError(f"Redis did not answer within {self._timeout} s")
            self._tier.failed(timeout)
            raise timeout from err
        except RedisError as err:
            self._tier.failed(err)
            raise
        except RedisClusterException as err:
            wrapped = as_redis_error(err)
            self._tier.failed(wrapped)
            raise wrapped from err
        if self._tier.unreachable:
            self._tier.reachable("a call succeeded")
        return result

    async def _publish(self, messages: list[bytes]) -> None:
        for message in messages:
            if self._kind == Kind.CLUSTER:
                await self._call(
                    self._own.execute_command("SPUBLISH", self._names.channel, message)
                )
            else:
                await self._call(self._own.publish(self._names.channel, message))

    async def _write(self, commands: Callable[[Any], None], messages: list[bytes]) -> list[Any]:
        if self._kind == Kind.CLUSTER:
            pipe = self._own.pipeline(transaction=False)
            commands(pipe)
            results = await self._call(pipe.execute())
            await self._publish(messages)
            return list(results)
        pipe = self._own.pipeline(transaction=True)
        commands(pipe)
        for message in messages:
            pipe.publish(self._names.channel, message)
        return list(await self._call(pipe.execute()))[: -len(messages)]

    # ------------------------------------------------------------ tags

    async def _checked(self, names: list[bytes], payloads: list[Any]) -> list[Any]:
        """As :meth:`TieredCache._checked`: every read of a value goes
        through here."""
        tier = self._tier
        keys, wanted = tier.tag_keys(names, payloads)
        if not keys:
            return payloads
        tokens = await self._call(self._own.mget(keys))
        return tier.current(payloads, wanted, keys, list(tokens))

    async def _check(self, name: bytes, payload: Any) -> Any:
        """``_checked`` of one payload read from ``name`` (None: absent)."""
        return (await self._checked([name], [payload]))[0] if tagged(payload) else payload

    async def _get(self, name: bytes) -> Any:
        """GET of a value's key, its tags checked (``_checked``)."""
        return await self._check(name, await self._call(self._own.get(name)))

    async def _stamp(self, tags: tuple[str, ...], ttl_s: float | None) -> TagTokens:
        """As :meth:`TieredCache._stamp`."""
        tier = self._tier
        reply = await self._call(self._own.eval(TAG_SCRIPT, *tier.stamp_args(tags, ttl_s)))
        return tier.stamped(tags, reply)

    async def _extend(self, tags: tuple[str, ...], ttl_s: float | None, since: float) -> None:
        """After a load that began at ``since`` stored its value: when it took
        over half of ``TAG_MARGIN``, its tags' keys (stamped as it began) are
        extended to outlive the value (``TAG_SCRIPT``; a failure is left: the
        value then reads as absent once they expire, never as live)."""
        if tags and time.monotonic() - since > TAG_MARGIN / 2:
            try:
                await self._stamp(tags, ttl_s)
            except RedisError:
                pass

    async def invalidate_tags(self, *tags: str) -> None:
        """As :meth:`TieredCache.invalidate_tags`."""
        tier = self._tier
        names = tier.check_tags(tags, None)
        if not names:
            return
        self._ensure()
        try:
            await self._write(*tier.retag(names))
        finally:
            tier.tags_invalidated(names)

    # ------------------------------------------------------------ reads

    async def get(self, key: K, default: Any = None) -> V | Any:
        """The value of ``key``, or ``default``. (Replaced per instance by the
        Rust hot path, which returns this slow path's coroutine on a miss.)"""
        return await self._slow_get(key, default)

    async def _slow_get(self, key: Any, default: Any) -> Any:
        enc = _core.encode_key(key)
        self._ensure()
        tier = self._tier
        k = _core.plain_key(key)
        if tier.rust.trusted and not tier.rust.is_plain(key):
            found = tier.local.get(k, _MISS)
            if found is not _MISS:
                return found
        ok, value = await self._fetch(enc, k)
        return value if ok else default

    async def _fetch(self, enc: bytes, k: Any) -> tuple[bool, Any]:
        tier = self._tier
        token = tier.rust.token(k)
        try:
            payload = await self._get(self._names.value(enc))
        except RedisError:
            return tier.fail_safe(k)
        return tier.accept(self._serializer, enc, k, payload, token)

    async def get_many(self, keys: Iterable[K]) -> dict[K, V]:
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
                    payloads = await self._call(self._own.mget_nonatomic(names))
                else:
                    payloads = await self._call(self._own.mget(names))
                payloads = await self._checked(names, list(payloads))
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

    async def set(
        self, key: K, value: V, ttl: float | None = None, *, tags: Iterable[str] | None = None
    ) -> None:
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
            stamped = await self._stamp(names, ttl_s) if names else ()
            payload = tier.pack(enc, data, ttl_s, stamped)
            await self._write(lambda p: p.set(name, payload, px=ms(ttl_s)), msgs)
        except (RedisError, asyncio.CancelledError):
            tier.rust.invalidate(k)
            raise
        tier.rust.put(k, value, tier.write_bound(ttl, ttl_s), token, names or None)

    async def set_many(
        self,
        items: Mapping[K, V] | Iterable[tuple[K, V]],
        ttl: float | None = None,
        *,
        tags: Iterable[str] | None = None,
    ) -> None:
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
                stamped = await self._stamp(names, ttl_s)
            await self._write(commands, msgs)
        except (RedisError, asyncio.CancelledError):
            for _, k, _, _ in prepared:
                tier.rust.invalidate(k)
            raise
        bound = tier.write_bound(ttl, ttl_s)
        for (_, k, value, _), token in zip(prepared, tokens, strict=True):
            tier.rust.put(k, value, bound, token, names or None)

    async def remove(self, key: K, default: Any = None) -> V | Any:
        enc, old = await self._getdel(key)
        if old is None:
            return default
        ok, value, _ = self._tier.decode(self._serializer, enc, old)
        return value if ok else default

    async def _getdel(self, key: Any) -> tuple[bytes, bytes | None]:
        enc = _core.encode_key(key)
        self._ensure()
        tier = self._tier
        k = _core.plain_key(key)
        name = self._names.value(enc)
        msgs = tier.messages(_core.INVALIDATE, (enc,))
        try:
            (old,) = await self._write(lambda p: p.getdel(name), msgs)
        finally:
            tier.rust.invalidate(k)
        # (As TieredCache._getdel: a dated value was not held.)
        try:
            old = await self._check(name, old)
        except RedisError:
            old = None
        if old is _core.STALE:
            old = None
        return enc, old

    async def _contains(self, key: Any) -> bool:
        """``TieredCache._contains``."""
        enc = _core.encode_key(key)
        self._ensure()
        tier = self._tier
        k = _core.plain_key(key)
        if tier.rust.trusted and k in tier.local:
            return True
        try:
            payload = await self._get(self._names.value(enc))
        except RedisError:
            return k in tier.local
        return payload is not None and tier.holds(enc, payload)

    # ------------------------------------------------------------ atomic writes

    async def _script(
        self, script: str, name: bytes, args: list[Any], messages: list[bytes]
    ) -> bool:
        tier = self._tier
        done = bool(
            await self._call(self._own.eval(script, 1, name, *tier.script_args(args, messages)))
        )
        if done and self._kind == Kind.CLUSTER:
            await self._publish(messages)
        return done

    async def add(
        self, key: K, value: V, ttl: float | None = None, *, tags: Iterable[str] | None = None
    ) -> bool:
        """As :meth:`TieredCache.add`."""
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
            stamped = await self._stamp(names, ttl_s) if names else ()
            payload = tier.pack(enc, data, ttl_s, stamped)
            stored = await self._script(ADD_SCRIPT, name, [payload, px_arg(ttl_s)], msgs)
            if not stored:
                held = await self._call(self._own.get(name))
                if await self._check(name, held) is _core.STALE:
                    args = [held, payload, px_arg(ttl_s)]
                    stored = await self._script(SWAP_SCRIPT, name, args, msgs)
        except (RedisError, asyncio.CancelledError):
            tier.rust.invalidate(k)
            raise
        if stored:
            tier.rust.put(k, value, tier.write_bound(ttl, ttl_s), token, names or None)
        return stored

    async def update(self, key: K, fn: Callable[[V], V]) -> V:
        """As :meth:`TieredCache.update` (``fn`` is a plain function)."""
        enc = _core.encode_key(key)
        self._ensure()
        tier = self._tier
        k = _core.plain_key(key)
        name = self._names.value(enc)
        for attempt in range(MAX_SWAPS):
            token = tier.rust.token(k)
            payload = await self._call(self._own.get(name))
            checked = await self._check(name, payload)
            opened = None if checked is None else tier.reopen(enc, checked)
            ok, old = (False, None) if opened is None else tier.loads(self._serializer, opened[0])
            if not ok or opened is None:
                raise KeyError(key)
            value = fn(cast("V", old))
            new = tier.repack(enc, self._serializer.dumps(value), opened[1], opened[2])
            msgs = tier.messages(_core.INVALIDATE, (enc,))
            try:
                swapped = await self._script(SWAP_SCRIPT, name, [payload, new, b"keep"], msgs)
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
                await asyncio.sleep(swap_backoff(attempt))
        raise contended("update")

    async def touch(self, key: K, ttl: float | None = None) -> bool:
        """As :meth:`TieredCache.touch`."""
        enc = _core.encode_key(key)
        ttl_s = self._ttl_of(ttl)
        self._ensure()
        tier = self._tier
        k = _core.plain_key(key)
        name = self._names.value(enc)
        for attempt in range(MAX_SWAPS):
            payload = await self._call(self._own.get(name))
            checked = await self._check(name, payload)
            opened = None if checked is None else tier.reopen(enc, checked)
            if opened is None:
                return False
            pairs = opened[2]
            if pairs and await self._stamp(tier.names_of(pairs), ttl_s) != pairs:
                return False  # a tag invalidated meanwhile (As TieredCache.touch.)
            new = tier.pack(enc, opened[0], ttl_s, pairs)
            msgs = tier.messages(_core.INVALIDATE, (enc,))
            try:
                swapped = await self._script(SWAP_SCRIPT, name, [payload, new, px_arg(ttl_s)], msgs)
            finally:
                tier.rust.invalidate(k)
            if swapped:
                return True
            if attempt + 1 < MAX_SWAPS:
                await asyncio.sleep(swap_backoff(attempt))
        raise contended("touch")

    async def clear(self) -> None:
        self._ensure()
        tier = self._tier
        try:
            if self._kind == Kind.CLUSTER:
                for node in self._own.get_primaries():
                    await self._unlink_on(node)
            else:
                await self._unlink_on(None)
            await self._publish(tier.messages(_core.CLEAR))
        finally:
            tier.rust.invalidate_all()

    async def _unlink_on(self, node: Any) -> None:
        target = {} if node is None else {"target_nodes": node}
        cursor: Any = 0
        while True:
            reply = await self._call(
                self._own.execute_command(
                    "SCAN", cursor, "MATCH", self._names.pattern, "COUNT", 1000, **target
                )
            )
            cursor, found = reply
            if isinstance(cursor, dict):  # a cluster client names the node
                (cursor,) = cursor.values()
            for k in found:
                if self._names.owns(k):
                    await self._call(self._own.unlink(k))
            if int(cursor) == 0:
                return

    # ------------------------------------------------------------ loads

    async def get_with(
        self,
        key: K,
        initializer: Callable[[], Awaitable[V]],
        ttl: float | None = None,
        stale_if_error: float | None = None,
        tags: Iterable[str] | None = None,
    ) -> V:
        """The value of ``key``; on a miss, ``await initializer()`` runs once
        per key across every task of every process. ``stale_if_error`` and
        ``tags``: as ``TieredCache.get_with``'s."""
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
        value = await self._load(key, initializer, ttl, None, window, names)
        return value  # type: ignore[no-any-return]

    async def _load(
        self,
        key: Any,
        initializer: Callable[[], Awaitable[Any]],
        ttl: float | None,
        keep: Callable[[Any], object] | None = None,
        window: float | None = None,
        tags: tuple[str, ...] = (),
    ) -> Any:
        """``get_with``'s miss (stored with ``tags``); a value for which
        ``keep`` is false is returned (to this process's callers) but not stored; a load that
        raises returns the value kept for the key instead when it expired
        at most ``window`` seconds ago (``TieredCache._load``)."""
        enc = _core.encode_key(key)
        ttl_s = self._ttl_of(ttl)
        self._ensure()
        loop = asyncio.get_running_loop()
        slot = (id(loop), enc)
        k = _core.plain_key(key)
        flight = self._flights.get(slot)
        takeover = False
        # A call that waits (here, or below for another process) is one wait,
        # however many rounds it waits.
        waited = flight is not None
        if waited:
            self._tier.counts.add("waits")
        while flight is not None:
            try:
                return await asyncio.wait_for(asyncio.shield(flight), self._wait_timeout)
            except asyncio.TimeoutError:
                # This process's load outlasted wait_timeout: one caller takes
                # over and loads on its own; the others wait for it in turn.
                current = self._flights.get(slot)
                if current is None:
                    # A load that took over has ended: load as usual (its
                    # value is in Redis by now, which the load reads first).
                    break
                if current is flight and not flight.done():
                    takeover = True
                    self._tier.wait_outlasted(True, self._wait_timeout)
                    break
                flight = current
        flight = loop.create_future()
        self._flights[slot] = flight
        try:
            if takeover:
                value = await self._load_unclaimed(enc, k, initializer, ttl, ttl_s, keep, tags)
            else:
                value = await self._load_fleet(enc, k, initializer, ttl, ttl_s, waited, keep, tags)
        except BaseException as err:
            ok, value = (
                self._tier.stale_value(k, window) if isinstance(err, Exception) else (False, None)
            )
            if not ok:
                if not flight.done():
                    if isinstance(err, asyncio.CancelledError):
                        flight.cancel()
                    else:
                        flight.set_exception(err)
                        # Awaited or not, the exception is the callers' to see.
                        flight.exception()
                raise
            if not flight.done():
                flight.set_result(value)
            return value
        else:
            flight.set_result(value)
            return value
        finally:
            if self._flights.get(slot) is flight:
                del self._flights[slot]

    async def _load_fleet(
        self,
        enc: bytes,
        k: Any,
        initializer: Callable[[], Awaitable[Any]],
        ttl: float | None,
        ttl_s: float | None,
        waited: bool,
        keep: Callable[[Any], object] | None,
        tags: tuple[str, ...] = (),
    ) -> Any:
        tier = self._tier
        name = self._names.value(enc)
        lock_key = self._names.lock(enc)
        woken, wake = _waker()
        tier.add_waiter(enc, wake)
        give_up = time.monotonic() + self._wait_timeout
        try:
            while True:
                token = tier.rust.token(k)
                try:
                    payload = await self._get(name)
                    if payload is not None:
                        ok, value = tier.take(self._serializer, enc, k, payload, token)
                        if ok:
                            return value
                    claim = new_token()
                    claimed = await self._call(
                        self._own.set(lock_key, claim, nx=True, px=ms(self._lock_timeout))
                    )
                except RedisError:
                    value = await self._compute(initializer)
                    if keep is None or keep(value):
                        bound = tier.write_bound(ttl, ttl_s)
                        tier.keep(k, value, bound, ttl_s, token, tags)
                    return value
                if claimed:
                    absent = payload is None
                    return await self._lead(
                        enc, k, initializer, ttl, ttl_s, claim, absent, keep, tags=tags
                    )
                left = give_up - time.monotonic()
                if left <= 0:
                    # Another process's load (or a claim nobody renews away)
                    # outlasted wait_timeout: load on our own.
                    tier.wait_outlasted(False, self._wait_timeout)
                    return await self._load_unclaimed(enc, k, initializer, ttl, ttl_s, keep, tags)
                if not waited:
                    tier.counts.add("waits")
                    waited = True
                try:
                    await asyncio.wait_for(woken.wait(), min(POLL_SECONDS, left))
                except asyncio.TimeoutError:
                    pass
                woken.clear()
        finally:
            tier.remove_waiter(enc, wake)

    async def _compute(self, initializer: Callable[[], Awaitable[Any]]) -> Any:
        try:
            result = initializer()
            if inspect.isawaitable(result):
                result = await result
        except BaseException:
            self._tier.counts.add("load_failures")
            raise
        self._tier.counts.add("loads")
        return result

    async def _load_unclaimed(
        self,
        enc: bytes,
        k: Any,
        initializer: Callable[[], Awaitable[Any]],
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
            stamped: TagTokens | None = await self._stamp(tags, ttl_s) if tags else ()
        except RedisError:
            stamped = None
        value = await self._compute(initializer)
        if keep is not None and not keep(value):
            return value
        data = self._serializer.dumps(value)
        name = self._names.value(enc)
        stored = False
        if stamped is not None:  # (else Redis failed the stamp: kept here only)
            payload = tier.pack(enc, data, ttl_s, stamped)
            try:
                await self._write(
                    lambda p: p.set(name, payload, px=ms(ttl_s)),
                    tier.messages(_core.FILLED, (enc,)),
                )
                stored = True
            except RedisError:
                pass
        tier.keep(k, value, tier.write_bound(ttl, ttl_s), ttl_s, token, tags, put=stored)
        if stored:
            await self._extend(tags, ttl_s, begun)
        return value

    async def _renew(self, lock_key: bytes, claim: bytes) -> None:
        period = self._lock_timeout / 3
        while True:
            await asyncio.sleep(period)
            try:
                await self._call(
                    self._own.eval(RENEW_SCRIPT, 1, lock_key, claim, ms(self._lock_timeout))
                )
            except RedisError:
                pass

    async def _lead(
        self,
        enc: bytes,
        k: Any,
        initializer: Callable[[], Awaitable[Any]],
        ttl: float | None,
        ttl_s: float | None,
        claim: bytes,
        absent: bool,
        keep: Callable[[Any], object] | None,
        force: bool = False,
        drop: bool = False,
        tags: tuple[str, ...] = (),
    ) -> Any:
        """``TieredCache._lead``."""
        tier = self._tier
        name = self._names.value(enc)
        lock_key = self._names.lock(enc)
        stored = False
        started = time.monotonic()
        renewer = asyncio.ensure_future(self._renew(lock_key, claim))
        try:
            token = tier.rust.token(k)
            # Another process may have stored the value and released its claim
            # between this process's GET and its claim: read once more.
            try:
                again = None if force else await self._get(name)
            except RedisError:
                again = None
            if again is not None:
                ok, value = tier.take(self._serializer, enc, k, again, token)
                if ok:
                    return value
            try:
                stamped: TagTokens | None = await self._stamp(tags, ttl_s) if tags else ()
            except RedisError:
                if force:
                    raise
                stamped = None
            value = await self._compute(initializer)
            if keep is not None and not keep(value):
                if drop:
                    # A refresh whose result is not kept: the stored one is
                    # outdated all the same (FILLED: every copy is dropped).
                    await self._call(self._own.unlink(name))
                    tier.rust.invalidate(k)
                    stored = True
                return value
            data = self._serializer.dumps(value)
            if stamped is None:
                return value  # (Redis failed the stamp: not stored)
            nx = absent and not force
            payload = tier.pack(enc, data, ttl_s, stamped)
            try:
                stored = bool(await self._call(self._own.set(name, payload, px=ms(ttl_s), nx=nx)))
            except RedisError:
                if force:
                    tier.rust.invalidate(k)
                    raise
                stored = False
            if stored:
                bound = tier.write_bound(ttl, ttl_s)
                tier.keep(k, value, bound, ttl_s, token, tags, put=True)
                await self._extend(tags, ttl_s, started)
            return value
        finally:
            renewer.cancel()
            kind = _core.FILLED if stored else _core.RELEASED
            try:
                if not await self._call(self._own.eval(RELEASE_SCRIPT, 1, lock_key, claim)):
                    tier.claim_lost(time.monotonic() - started)
                await self._publish(tier.messages(kind, (enc,)))
            except RedisError:
                pass  # the claim lapses after lock_timeout; waiters poll
            # (A cancellation here goes on to the caller: the claim lapses too.)
            # (This process's own notices do not come back through the feed.)
            tier.wake(enc)

    async def _reload(
        self,
        key: Any,
        initializer: Callable[[], Awaitable[Any]],
        ttl: float | None,
        keep: Callable[[Any], object] | None,
        wait: bool,
        tags: tuple[str, ...] = (),
    ) -> tuple[bool, Any]:
        """``TieredCache._reload``."""
        enc = _core.encode_key(key)
        ttl_s = self._ttl_of(ttl)
        self._ensure()
        tier = self._tier
        k = _core.plain_key(key)
        lock_key = self._names.lock(enc)
        woken, wake = _waker()
        tier.add_waiter(enc, wake)
        give_up = time.monotonic() + self._wait_timeout
        try:
            while True:
                claim = new_token()
                lock_ms = ms(self._lock_timeout)
                if await self._call(self._own.set(lock_key, claim, nx=True, px=lock_ms)):
                    value = await self._lead(
                        enc, k, initializer, ttl, ttl_s, claim, False, keep, True, wait, tags
                    )
                    return True, value
                left = give_up - time.monotonic()
                if not wait:
                    return False, None
                if left <= 0:
                    value = await self._load_unclaimed(enc, k, initializer, ttl, ttl_s, keep, tags)
                    return True, value
                tier.counts.add("waits")
                try:
                    await asyncio.wait_for(woken.wait(), min(POLL_SECONDS, left))
                except asyncio.TimeoutError:
                    pass
                woken.clear()
        finally:
            tier.remove_waiter(enc, wake)

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
    ) -> Callable[[Callable[P, Awaitable[R]]], AsyncTieredFunction[P, R]]:
        """Caches an ``async def`` function's results in this cache (one call
        per arguments across every process; the options and the function's
        methods as for ``TieredCache.cached``, every method a coroutine; a
        reload due after ``refresh_after`` is a task on the caller's loop)."""
        if ttl is not None:
            _core.check_seconds(ttl, "ttl")
        _core.check_seconds(refresh_after, "refresh_after")
        window = self._tier.window(stale_if_error)
        if cache_if is not None and not callable(cache_if):
            raise TypeError(f"cache_if must be callable or None, not {type(cache_if).__name__}")
        tags_of = self._tier.tags_of_calls(tags)

        def decorate(fn: Callable[P, Awaitable[R]]) -> AsyncTieredFunction[P, R]:
            if not inspect.iscoroutinefunction(fn):
                raise TypeError(
                    "AsyncTieredCache.cached decorates async def functions: use "
                    f"TieredCache for {getattr(fn, '__qualname__', fn)!r}"
                )
            d = Decorated(fn, key, typed, name, cache_if, refresh_after)
            keep = d.keep()
            rust = self._tier.rust

            async def epoch_now() -> str:
                return new_epoch()

            async def key_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                # (Read without counting: TierStats count the results' reads.)
                epoch = rust.peek(d.epoch_key, _MISS) if rust.trusted else _MISS
                if epoch is _MISS:
                    epoch = await self._load(d.epoch_key, epoch_now, EPOCH_TTL)
                return d.key(epoch, args, kwargs)

            def loader(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                async def load() -> Any:
                    return d.pack(await fn(*args, **kwargs))

                return load

            @functools.wraps(fn)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                k = await key_of(args, kwargs)
                stored = rust.lookup(k, _MISS)
                if stored is _MISS:
                    tags = tags_of(args, kwargs)
                    stored = await self._load(k, loader(args, kwargs), ttl, keep, window, tags)
                value, due = d.unpack(stored)
                if due:
                    self._reload_later(k, loader(args, kwargs), ttl, keep, tags_of(args, kwargs))
                return value

            async def refresh(*args: Any, **kwargs: Any) -> Any:
                k = await key_of(args, kwargs)
                tags = tags_of(args, kwargs)
                _, stored = await self._reload(k, loader(args, kwargs), ttl, keep, True, tags)
                return d.unpack(stored)[0]

            async def cache_invalidate(*args: Any, **kwargs: Any) -> bool:
                """Removes the result of these arguments in Redis and in every
                process's local tier; whether Redis held one."""
                return (await self._getdel(await key_of(args, kwargs)))[1] is not None

            async def cache_contains(*args: Any, **kwargs: Any) -> bool:
                return await self._contains(await key_of(args, kwargs))

            async def cache_clear() -> None:
                cache: Any = self  # (the epoch is no K -> V entry of the user's)
                await cache.set(d.epoch_key, new_epoch(), EPOCH_TTL)

            out = equip(wrapper, self, refresh, cache_invalidate, cache_contains, cache_clear)
            return cast("AsyncTieredFunction[P, R]", out)

        return decorate

    def _reload_later(
        self,
        key: Any,
        initializer: Callable[[], Awaitable[Any]],
        ttl: float | None,
        keep: Callable[[Any], object] | None,
        tags: tuple[str, ...] = (),
    ) -> None:
        """``TieredCache._reload_later``: the reload is a task on the running
        loop (one per key and loop; the cache keeps it until it ends)."""
        loop = asyncio.get_running_loop()
        slot = (id(loop), _core.encode_key(key))
        if slot in self._reloading or self._tier.closed:
            return

        async def run() -> None:
            try:
                await self._reload(key, initializer, ttl, keep, False, tags)
            except RedisError:
                pass  # counted; the stored result stays
            except Exception as err:
                if not self._tier.closed:  # (else: the cache closed under it)
                    _write_unraisable(err, initializer)  # as @cached's failed reloads
            finally:
                self._reloading.pop(slot, None)

        self._reloading[slot] = loop.create_task(run())

    # ------------------------------------------------------------ the rest

    @property
    def local(self) -> Moka[Any, Any]:
        return self._tier.local

    @property
    def namespace(self) -> str:
        return self._names.namespace

    @property
    def feed_up(self) -> bool:
        return bool(self._tier.rust.trusted)

    async def wait_ready(self, timeout: float | None = None) -> bool:
        """Waits (without blocking the loop) until the feed is subscribed."""
        self._ensure()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self._timeout if timeout is None else timeout)
        while not self._tier.rust.trusted and loop.time() < deadline:
            await asyncio.sleep(0.01)
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

    async def aclose(self) -> None:
        """Stops the feed and closes the cache's own connections (the client
        given stays open)."""
        loop = asyncio.get_running_loop()
        mine = [slot for slot in self._reloading if slot[0] == id(loop)]
        reloads = [self._reloading.pop(slot) for slot in mine]
        for task in reloads:
            task.cancel()
        await asyncio.gather(*reloads, return_exceptions=True)
        await loop.run_in_executor(None, self._tier.close)
        current, others, forked = self._clients.take()
        for other in others:
            _let_go(other, forked=forked)
        if current is None:
            return
        try:
            await current.aclose()
            if self._kind != Kind.CLUSTER:
                await current.connection_pool.disconnect()
        except Exception:
            pass

    async def __aenter__(self) -> AsyncTieredCache[K, V]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"AsyncTieredCache(namespace={self._names.namespace!r}, feed_up={self.feed_up})"
