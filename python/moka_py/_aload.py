"""Async loads shared per event loop: ``Moka.aget_with``, and the coalescing
and refreshes of ``async def`` functions decorated with ``@cached``.

The Rust method ``aget_with`` answers a hit itself (a finished awaitable, no
coroutine); on a miss it returns the coroutine of :func:`load`, and when a
read finds the entry due for a refresh (``refresh_after``) it calls
:func:`refresh`.

Each event loop keeps its own table of the computations in flight, an
``asyncio.Task`` per key (:class:`InFlight`): the awaiters of a key on one
loop share its task (through ``asyncio.shield``, so that cancelling one
awaiter does not cancel it for the others), and the task leaves the table
when it is done. A failed computation caches nothing; the next call tries
again. Loads on other threads are never waited for, so the event loop is
never blocked.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Iterable
from typing import Any, cast

from moka_py._moka_py import Moka, _Claim, _write_unraisable

_Table = dict[Hashable, "asyncio.Task[Any]"]
_Compute = Callable[[], Coroutine[Any, Any, Any]]


class InFlight:
    """The computations in flight, one table per event loop (a loop's table
    goes with it). ``aget_with`` keeps one for every cache; each ``async``
    function decorated with ``@cached`` keeps its own."""

    def __init__(self) -> None:
        self._tables: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Table]
        self._tables = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def table(self, loop: asyncio.AbstractEventLoop) -> _Table:
        table = self._tables.get(loop)
        if table is None:
            with self._lock:
                table = self._tables.setdefault(loop, {})
        return table

    def start(self, key: Hashable, compute: _Compute) -> tuple[asyncio.Task[Any], bool]:
        """The task computing ``key`` on the running loop, started with
        ``compute()`` if there is none; and whether it was in flight already."""
        loop = asyncio.get_running_loop()
        table = self.table(loop)
        task = table.get(key)
        # A task that is done leaves the table at the loop's next step: a
        # caller that comes before then starts anew.
        if task is not None and not task.done():
            return task, True
        task = loop.create_task(compute())
        table[key] = task
        task.add_done_callback(lambda done: _forget(table, key, done))
        return task, False

    async def join(self, key: Hashable, compute: _Compute) -> Any:
        """Awaits the computation of ``key`` (started if there is none); a
        caller that is cancelled does not cancel it for the others."""
        task, _ = self.start(key, compute)
        return await asyncio.shield(task)

    def refresh(self, key: Hashable, compute: _Compute) -> None:
        """Starts a reload of ``key`` as a task on the running loop, unless a
        computation of it is in flight there; a failure goes to
        ``sys.unraisablehook``. Without a running loop there is nowhere to
        run it: a later read retries."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        task, running = self.start(key, compute)
        if not running:
            task.add_done_callback(_report)


def _forget(table: _Table, key: Hashable, task: asyncio.Task[Any]) -> None:
    if table.get(key) is task:
        del table[key]
    if not task.cancelled():
        # Marks the exception as retrieved: the awaiters got it already.
        task.exception()


def _report(task: asyncio.Task[Any]) -> None:
    """A failed reload goes to ``sys.unraisablehook``."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        _write_unraisable(exc, task)


async def timed(cache: Moka[Any, Any], call: Callable[[], Awaitable[Any]]) -> Any:
    """``await call()``, recorded as a load in the cache's statistics (a
    failure too, if ``call()`` itself raises)."""
    start = time.perf_counter()
    try:
        result = await call()
    except BaseException:
        cache._record_load(time.perf_counter() - start, False)
        raise
    cache._record_load(time.perf_counter() - start, True)
    return result


_LOADS = InFlight()


def stale(cache: Moka[Any, Any], key: Hashable) -> tuple[Any] | None:
    """For an async load of ``key`` that raised (``aget_with``, an async
    ``@cached`` function): with ``stale_if_error``, the expired value the
    cache still keeps, as a 1-tuple (counted as served; it is not stored
    again, so the next call loads), else None."""
    return None if cache.stale_if_error is None else cache._stale(key)


async def _compute(
    cache: Moka[Any, Any],
    key: Hashable,
    initializer: Callable[[], Awaitable[Any]],
    ttl: float | None,
    tti: float | None,
    tags: Iterable[str] | None,
) -> Any:
    # The tags are stamped before the load: an invalidation during it dates
    # the value (it is stored, and absent at once).
    stamp = None if tags is None else cache._stamp(tags)
    try:
        value = await timed(cache, initializer)
    except Exception:
        if (found := stale(cache, key)) is None:
            raise
        return found[0]
    # The ttl/tti start now, when the value is stored.
    cache.set(key, value, ttl, tti, tags=cast(Any, stamp))
    return value


def load(
    cache: Moka[Any, Any],
    key: Hashable,
    initializer: Callable[[], Awaitable[Any]],
    ttl: float | None,
    tti: float | None,
    tags: Iterable[str] | None = None,
) -> Coroutine[Any, Any, Any]:
    """A miss of ``aget_with``: joins (or starts) the computation of ``key``."""
    return _LOADS.join((cache, key), lambda: _compute(cache, key, initializer, ttl, tti, tags))


def refresh(
    cache: Moka[Any, Any],
    key: Hashable,
    initializer: Callable[[], Awaitable[Any]],
    claim: _Claim,
) -> None:
    """A read of ``aget_with`` found ``key`` due for a refresh, and claimed its
    reload (so no other load of it runs): reloads it under the claim."""
    _LOADS.refresh((cache, key), lambda: reload(claim, lambda: timed(cache, initializer)))


# What a reload's ``stored`` returns for a result that is not stored.
SKIP: Any = object()


async def reload(
    claim: _Claim,
    compute: Callable[[], Awaitable[Any]],
    stored: Callable[[Any], Any] = lambda value: value,
) -> Any:
    """A reload under ``claim``: ``await compute()``, then ``stored(value)``
    goes into the cache (unless it is ``SKIP``, or a newer write won, see
    ``refresh.rs``) and to the callers waiting for the key."""
    try:
        value = await compute()
    except BaseException as exc:
        claim.fail(exc)
        raise
    kept = stored(value)
    if kept is SKIP:
        claim.finish(value, store=False)
    else:
        claim.finish(kept)
    return value
