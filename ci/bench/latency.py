"""Case 1: the latency of one operation, one thread (GIL build).

Each case cycles over a pool of keys (no single hot key). A round times one
pass over the pool; the same pass with an empty loop body is timed right after
it and subtracted, so the figures are the cost of the operation alone. Any
set-up a round needs (a fresh block of keys, refilling the cache before a
``remove`` pass) happens outside the timed pass.

*@cached async hit* awaits a decorated ``async def`` function inside one
running event loop (one ``asyncio.run`` per repeat); the same pass awaiting a
plain ``async def`` coroutine that returns its argument is timed right after
it and subtracted instead, and is reported itself, less the empty loop, as
*await a plain coroutine*.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import impls

POOL = 1000
CAPACITY = 10_000

CASES = (
    "get hit (int)",
    "get hit (str)",
    "get hit (long str)",
    "get hit (tuple)",
    "get hit (UUID)",
    "get hit (int), stats=True",
    "get hit, registered with OpenTelemetry",
    "get miss (int)",
    "get miss (str)",
    "get miss (long str)",
    "get miss (tuple)",
    "get miss (UUID)",
    "set existing",
    "set fresh, full cache",
    "remove",
    "remove miss",
    "get_with hit",
    "get_with hit (str)",
    "get_with miss",
    "@cached hit",
    "@cached coalescing hit",
    "@cached async hit",
    "await a plain coroutine",
    "OpenTelemetry collection, per registered cache",
)
ASYNC_HIT = "@cached async hit"
# moka_py only (moka-py 0.5.0 has no statistics): compared with "get hit (int)".
STATS_HIT = "get hit (int), stats=True"
# moka_py only: the STATS_HIT pass on a cache registered with moka_py.otel (compared
# with STATS_HIT), and one collection by the OpenTelemetry SDK of 1,000 registered
# caches, per cache (not an operation of a cache: reported, not compared).
OTEL_HIT = "get hit, registered with OpenTelemetry"
OTEL_COLLECT = "OpenTelemetry collection, per registered cache"
# The cases that write: their target is parity with moka-py 0.5.0, since most of a write
# is moka's own (README, Performance), where reads aim at 0.9x.
WRITES = ("set existing", "set fresh, full cache", "remove", "remove miss")
# Not a cache's operation: the cost subtracted from ASYNC_HIT, for reference.
PLAIN_AWAIT = "await a plain coroutine"


@dataclass
class Case:
    keys: Callable[[], list[Any]]  # the keys of the next round (not timed)
    run: Callable[[list[Any]], None]  # one timed pass


def int_keys() -> list[Any]:
    return list(range(POOL))


def str_keys(prefix: str) -> list[Any]:
    # Built at run time: equal to, but not the same objects as, the stored keys.
    return ["".join([prefix, str(i)]) for i in range(POOL)]


LONG = "x" * 64  # the prefix of the long str keys


def tuple_keys(base: int) -> list[Any]:
    # Built at run time, as str_keys; the shape moka-py's own benchmark uses.
    return [("user", base + i, True) for i in range(POOL)]


def uuid_keys(base: int) -> list[Any]:
    import uuid

    return [uuid.UUID(int=((base + i) << 64) | 12345) for i in range(POOL)]


def get_loop(get: Callable[[Any], Any]) -> Callable[[list[Any]], None]:
    def run(keys: list[Any]) -> None:
        for k in keys:
            get(k)

    return run


def set_loop(api: impls.Api) -> Callable[[list[Any]], None]:
    put = api.put
    if put is None:
        c = api.cache

        def run_items(keys: list[Any]) -> None:
            for k in keys:
                c[k] = k

        return run_items

    def run(keys: list[Any]) -> None:
        for k in keys:
            put(k, k)

    return run


def fill(api: impls.Api, keys: list[Any]) -> None:
    for k in keys:
        if api.put is None:
            api.cache[k] = k
        else:
            api.put(k, k)


def fixed(keys: list[Any]) -> Callable[[], list[Any]]:
    return lambda: keys


def mapping_cases(impl: str) -> dict[str, Case]:
    out: dict[str, Case] = {}
    ints = int_keys()

    api = impls.make(impl, CAPACITY)
    fill(api, ints)
    out["get hit (int)"] = Case(fixed(ints), get_loop(api.get))
    out["set existing"] = Case(fixed(ints), set_loop(api))

    api = impls.make(impl, CAPACITY)
    fill(api, str_keys("key-"))
    out["get hit (str)"] = Case(fixed(str_keys("key-")), get_loop(api.get))

    # Each key shape: stored, then read back with equal objects (hits) and with
    # absent keys of the same shape (misses).
    for shape, make in (
        ("long str", lambda base: str_keys(f"{LONG}{base}-")),
        ("tuple", tuple_keys),
        ("UUID", uuid_keys),
    ):
        api = impls.make(impl, CAPACITY)
        fill(api, make(0))
        out[f"get hit ({shape})"] = Case(fixed(make(0)), get_loop(api.get))
        out[f"get miss ({shape})"] = Case(fixed(make(POOL)), get_loop(api.get))

    api = impls.make(impl, CAPACITY)
    fill(api, [-1 - k for k in ints])
    out["get miss (int)"] = Case(fixed(ints), get_loop(api.get))
    out["get miss (str)"] = Case(fixed(str_keys("miss-")), get_loop(api.get))
    if impls.is_moka(impl):  # the others' remove raises KeyError on a miss
        out["remove miss"] = Case(fixed(ints), get_loop(api.remove))

    api = impls.make(impl, CAPACITY)
    fill(api, list(range(10**9, 10**9 + CAPACITY)))
    blocks = iter(range(10**12))

    def fresh() -> list[Any]:
        base = 2 * 10**9 + next(blocks) * POOL
        return list(range(base, base + POOL))

    out["set fresh, full cache"] = Case(fresh, set_loop(api))

    removing = impls.make(impl, CAPACITY)

    def refill() -> list[Any]:
        fill(removing, ints)
        return ints

    out["remove"] = Case(refill, get_loop(removing.remove))
    return out


def stats_cases(impl: str) -> dict[str, Case]:
    """moka_py's get hit with statistics on: the same pass as "get hit (int)";
    the same again on a cache registered with OpenTelemetry (a real SDK meter
    provider, read once before); and the SDK's collection of POOL registered
    caches, per cache."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    import moka_py
    from moka_py.otel import instrument

    ints = int_keys()
    cache: Any = moka_py.Moka(CAPACITY, stats=True)
    registered: Any = moka_py.Moka(CAPACITY, stats=True)
    for k in ints:
        cache.set(k, k)
        registered.set(k, k)
    reader = InMemoryMetricReader()
    instrument(registered, "bench", meter_provider=MeterProvider(metric_readers=[reader]))
    reader.get_metrics_data()
    many_reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[many_reader])
    many = [moka_py.Moka(16, stats=True) for _ in ints]
    for i, c in enumerate(many):
        c.set(i, i)
        c.get(i)
        instrument(c, f"cache-{i}", meter_provider=provider)

    def collect(keys: list[Any]) -> None:
        # One collection reads every one of the len(keys) caches.
        assert len(keys) == len(many)
        many_reader.get_metrics_data()

    return {
        STATS_HIT: Case(fixed(ints), get_loop(cache.get)),
        OTEL_HIT: Case(fixed(ints), get_loop(registered.get)),
        OTEL_COLLECT: Case(fixed(ints), collect),
    }


def get_with_cases(impl: str) -> dict[str, Case]:
    import moka_py

    ints = int_keys()

    def init() -> int:
        return 0

    hit: Any = moka_py.Moka(CAPACITY)
    for k in ints:
        hit.set(k, k)
    gw = hit.get_with

    def run_hit(keys: list[Any]) -> None:
        for k in keys:
            gw(k, init)

    miss: Any = moka_py.Moka(CAPACITY)
    gw_miss = miss.get_with

    def cleared() -> list[Any]:
        miss.clear()
        return ints

    def run_miss(keys: list[Any]) -> None:
        for k in keys:
            gw_miss(k, init)

    strs: Any = moka_py.Moka(CAPACITY)
    for k in str_keys("key-"):
        strs.set(k, k)
    gw_str = strs.get_with

    def run_str(keys: list[Any]) -> None:
        for k in keys:
            gw_str(k, init)

    return {
        "get_with hit": Case(fixed(ints), run_hit),
        "get_with hit (str)": Case(fixed(str_keys("key-")), run_str),
        "get_with miss": Case(cleared, run_miss),
    }


def decorator_cases(impl: str) -> dict[str, Case]:
    out: dict[str, Case] = {}
    ints = int_keys()
    for name, coalescing in (("@cached hit", False), ("@cached coalescing hit", True)):
        deco = impls.decorator(impl, CAPACITY, coalescing)
        if deco is None:
            continue
        f = deco(lambda x: x)
        for k in ints:
            f(k)
        out[name] = Case(fixed(ints), get_loop(f))
    return out


def build(impl: str) -> dict[str, Case]:
    cases: dict[str, Case] = {}
    if impl != "functools" and impl not in impls.ASYNC_ONLY:
        cases |= mapping_cases(impl)
    if impls.is_moka(impl):
        cases |= get_with_cases(impl)
    if impl == impls.THIS:
        cases |= stats_cases(impl)
    cases |= decorator_cases(impl)
    return {name: cases[name] for name in CASES if name in cases}


def empty(keys: list[Any]) -> None:
    for _ in keys:
        pass


async def plain(x: Any) -> Any:
    return x


async def async_hits(impl_names: list[str], rounds: int) -> dict[str, tuple[float, float]]:
    """ASYNC_HIT and PLAIN_AWAIT of each implementation that has an async
    decorator, side by side in the running event loop: impl -> (ns, ns)."""
    out: dict[str, tuple[float, float]] = {}
    keys = int_keys()
    for impl in impl_names:
        deco = impls.async_decorator(impl, CAPACITY)
        if deco is None:
            continue

        async def identity(x: Any) -> Any:
            return x

        # Decorated and filled in this loop: async-lru binds to the first loop it runs in.
        f = deco(identity)
        for k in keys:
            await f(k)
        for k in keys:  # warm up
            await f(k)
        timed = awaited = loop = 0
        for _ in range(rounds):
            t0 = time.perf_counter_ns()
            for k in keys:
                await f(k)
            t1 = time.perf_counter_ns()
            for k in keys:
                await plain(k)
            t2 = time.perf_counter_ns()
            empty(keys)
            t3 = time.perf_counter_ns()
            timed += t1 - t0
            awaited += t2 - t1
            loop += t3 - t2
        n = rounds * POOL
        out[impl] = ((timed - awaited) / n, (awaited - loop) / n)
    return out


def run(impl_names: list[str], rounds: int) -> dict[str, dict[str, float]]:
    """One repeat: ns per operation, impl -> case -> value."""
    built = {impl: build(impl) for impl in impl_names}
    out: dict[str, dict[str, float]] = {impl: {} for impl in impl_names}
    # Case-major, so that the implementations of one case run side by side.
    for name in CASES:
        if name == ASYNC_HIT:
            for impl, (hit, awaited) in asyncio.run(async_hits(impl_names, rounds)).items():
                out[impl][ASYNC_HIT] = hit
                out[impl][PLAIN_AWAIT] = awaited
            continue
        for impl in impl_names:
            case = built[impl].get(name)
            if case is None:
                continue
            keys = case.keys()
            case.run(keys)  # warm up
            timed = loop = 0
            for _ in range(rounds):
                keys = case.keys()
                t0 = time.perf_counter_ns()
                case.run(keys)
                t1 = time.perf_counter_ns()
                empty(keys)
                t2 = time.perf_counter_ns()
                timed += t1 - t0
                loop += t2 - t1
            out[impl][name] = (timed - loop) / (rounds * POOL)
    return out
