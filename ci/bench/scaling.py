"""Case 2: threads sharing one cache, and concurrent loads of one missing key.

Throughput: 1, 2, 4 and 8 threads run a 90/10 get/set mix on one shared cache
for a fixed time; the figure is all threads' operations divided by the time
from the common start to the last thread's stop. Each thread makes its own key
objects (equal across threads), so they share the cache and not the objects'
reference counts. The driver runs it on free-threaded 3.13t (family
``scaling``), and on the ordinary GIL build (family ``scaling_gil``) with int
keys, with ``uuid.UUID`` keys, and with a no-op eviction listener attached.

Coalescing: N threads, or N asyncio tasks, ask at once for one missing key
whose loader sleeps 10 ms. It reports how many times the loader ran and the
time from the start to the last result.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from . import impls

POOL = 10_000  # keys in the cache (its capacity too): every get hits
CHUNK = 10_000  # operations between two looks at the clock
LOADER_SECONDS = 0.01


# The variants of the case on the GIL build (family scaling_gil): name ->
# (kind of key, with a no-op eviction listener, title in the report).
GIL_VARIANTS = {
    "int": ("int", False, "int keys"),
    "listener": ("int", True, "int keys, a no-op eviction listener attached"),
    "uuid": ("uuid", False, "uuid.UUID keys"),
}


def key_pool(kind: str) -> list[Any]:
    """The POOL keys of ``kind``: new objects at every call, equal to every other
    call's (the ints 0..9,999; seeded random version-4 ``uuid.UUID``s)."""
    if kind == "int":
        return list(range(POOL))
    if kind == "uuid":
        rng = random.Random("uuid-keys")
        return [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(POOL)]
    raise ValueError(kind)


def ops_of(thread: int, keys: str = "int") -> list[tuple[Any, bool]]:
    """(key, is_set) pairs: 10% sets, uniform keys; built by the thread itself."""
    pool = key_pool(keys)
    rng = random.Random(f"mix-{thread}")
    return [(pool[rng.randrange(POOL)], rng.random() < 0.1) for _ in range(CHUNK)]


Bind = Callable[[], tuple[Callable[[Any], Any], Callable[[Any, Any], Any]]]


def shared_cache(impl: str, keys: str = "int", listener: bool = False) -> Bind:
    """One cache for all threads, pre-filled with the keys of ``keys``, and a
    function that each thread calls to make its own ``(get, set)``: objects that
    a thread makes are its own on 3.13t, so calling them does not contend on
    their reference counts. ``listener``: see :func:`impls.make`."""
    if impl == "cachetools":
        import cachetools

        tools: Any = cachetools.LRUCache(POOL)
        lock = threading.Lock()
        for k in key_pool(keys):
            tools[k] = k

        def bind_locked() -> Any:
            get_item, set_item = tools.get, tools.__setitem__

            def get(k: Any) -> Any:
                with lock:
                    return get_item(k)

            def put(k: Any, v: Any) -> None:
                with lock:
                    set_item(k, v)

            return get, put

        return bind_locked
    api = impls.make(impl, POOL, listener=listener)
    c = api.cache
    fill = api.put if api.put is not None else c.__setitem__
    for k in key_pool(keys):
        fill(k, k)
    if impl == "dict":
        # dict.get holds the dict's lock on 3.13t (not on 3.14); d[k] does not.
        return lambda: (c.__getitem__, c.__setitem__)
    if api.put is None:
        return lambda: (c.get, c.__setitem__)
    return lambda: (c.get, c.set)


def throughput(
    impl: str, threads: int, seconds: float, keys: str = "int", listener: bool = False
) -> float:
    """Operations per second, all threads together."""
    bind = shared_cache(impl, keys, listener)
    start = threading.Barrier(threads + 1)
    done = [0] * threads
    stops = [0.0] * threads
    deadline = [0.0]

    def work(i: int) -> None:
        get, put = bind()
        ops = ops_of(i, keys)
        start.wait()
        end = deadline[0]
        n = 0
        while True:
            for k, is_set in ops:
                if is_set:
                    put(k, k)
                else:
                    get(k)
            n += CHUNK
            now = time.perf_counter()
            if now >= end:
                break
        done[i] = n
        stops[i] = now

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    t0 = time.perf_counter()
    deadline[0] = t0 + seconds
    start.wait()
    for w in workers:
        w.join()
    return sum(done) / (max(stops) - t0)


class Loader:
    """A loader that sleeps 10 ms and counts its calls."""

    def __init__(self) -> None:
        self.calls: list[int] = []  # list.append is atomic on both builds

    def sync(self, key: Any) -> Any:
        self.calls.append(key)
        time.sleep(LOADER_SECONDS)
        return object()

    async def coro(self, key: Any) -> Any:
        self.calls.append(key)
        await asyncio.sleep(LOADER_SECONDS)
        return object()


def coalesce_threads(impl: str, n: int) -> tuple[int, float] | None:
    loader = Loader()
    deco = impls.decorator(impl, 1024, coalescing=True, threaded=True)
    if deco is None:
        deco = impls.decorator(impl, 1024, coalescing=False, threaded=True)
    if deco is None:
        return None
    f = deco(loader.sync)
    go = threading.Event()
    stops = [0.0] * n

    def call(i: int) -> None:
        go.wait()
        f("key")
        stops[i] = time.perf_counter()

    workers = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for w in workers:
        w.start()
    time.sleep(0.02)  # let every thread reach go.wait()
    t0 = time.perf_counter()
    go.set()
    for w in workers:
        w.join()
    return len(loader.calls), (max(stops) - t0) * 1e3


def coalesce_tasks(impl: str, n: int) -> tuple[int, float] | None:
    if impl in ("cachetools", "functools"):
        return None  # their decorators would cache the coroutine object
    deco = impls.decorator(impl, 1024, coalescing=True)
    if deco is None:
        return None
    loader = Loader()
    f = deco(loader.coro)

    async def main() -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(f("key") for _ in range(n)))
        return time.perf_counter() - t0

    elapsed = asyncio.run(main())
    return len(loader.calls), elapsed * 1e3


def run_coalescing(impl_names: list[str], counts: list[int]) -> dict[str, Any]:
    """impl -> "threads, N=8" -> [loader calls, ms]; one repeat."""
    out: dict[str, Any] = {}
    for impl in impl_names:
        row: dict[str, Any] = {}
        for n in counts:
            for mode, fn in (("threads", coalesce_threads), ("asyncio tasks", coalesce_tasks)):
                result = fn(impl, n)
                if result is not None:
                    row[f"{n} {mode}"] = list(result)
        out[impl] = row
    return out
