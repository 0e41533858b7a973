"""``Moka.aget_with``: async loads, one computation per key and event loop.

The Rust method answers a hit itself (a finished awaitable, no coroutine);
on a miss it returns the coroutine of :func:`load`, and when a read finds the
entry due for a refresh (``refresh_after``) it calls :func:`refresh`.

Each event loop keeps its own table of the computations in flight, an
``asyncio.Task`` per ``(cache, key)``: the awaiters of a key on one loop
share its task (through ``asyncio.shield``, so that cancelling one awaiter
does not cancel it for the others), and the task leaves the table when it is
done. A failed computation caches nothing; the next call tries again. Loads
on other threads are never waited for, so the event loop is never blocked.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

from moka_py._moka_py import Moka, _write_unraisable

_Table = dict[Hashable, "asyncio.Task[Any]"]


class InFlight:
    """The computations in flight, one table per event loop (a loop's table
    goes with it)."""

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

    def start(
        self, key: Hashable, compute: Callable[[], Awaitable[Any]]
    ) -> tuple[asyncio.Task[Any], bool]:
        """The task computing ``key`` on the running loop, started with
        ``compute()`` if there is none; and whether it was in flight already."""
        loop = asyncio.get_running_loop()
        table = self.table(loop)
        task = table.get(key)
        if task is not None:
            return task, True
        task = loop.create_task(_awaited(compute))
        table[key] = task
        task.add_done_callback(lambda done: _forget(table, key, done))
        return task, False


async def _awaited(compute: Callable[[], Awaitable[Any]]) -> Any:
    return await compute()


def _forget(table: _Table, key: Hashable, task: asyncio.Task[Any]) -> None:
    if table.get(key) is task:
        del table[key]
    if not task.cancelled():
        # Marks the exception as retrieved: the awaiters got it already.
        task.exception()


_LOADS = InFlight()


async def _compute(
    cache: Moka[Any, Any],
    key: Hashable,
    initializer: Callable[[], Awaitable[Any]],
    ttl: float | None,
    tti: float | None,
) -> Any:
    start = time.perf_counter()
    try:
        value = await initializer()
    except BaseException:
        cache._record_load(time.perf_counter() - start, False)
        raise
    cache._record_load(time.perf_counter() - start, True)
    # The ttl/tti start now, when the value is stored.
    cache.set(key, value, ttl, tti)
    return value


async def load(
    cache: Moka[Any, Any],
    key: Hashable,
    initializer: Callable[[], Awaitable[Any]],
    ttl: float | None,
    tti: float | None,
) -> Any:
    """A miss of ``aget_with``: joins (or starts) the computation of ``key``."""
    task, _ = _LOADS.start((cache, key), lambda: _compute(cache, key, initializer, ttl, tti))
    return await asyncio.shield(task)


def refresh(
    cache: Moka[Any, Any],
    key: Hashable,
    initializer: Callable[[], Awaitable[Any]],
    ttl: float | None,
    tti: float | None,
) -> None:
    """A read found ``key`` due for a refresh: starts its reload as a task on
    the running loop, unless a computation of it is in flight there. Without
    a running loop there is nowhere to run it; a later read retries."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    task, running = _LOADS.start((cache, key), lambda: _compute(cache, key, initializer, ttl, tti))
    if not running:
        task.add_done_callback(lambda done: _report(done, initializer))


def _report(task: asyncio.Task[Any], initializer: object) -> None:
    """A failed reload goes to ``sys.unraisablehook`` (and counts as seen)."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        _write_unraisable(exc, initializer)
