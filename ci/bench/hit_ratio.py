"""Case 3: hit ratio of each eviction policy on recorded-style workloads.

Every workload is a list of int keys drawn from a seeded ``random.Random``, so
each process (this package's environment and moka-py 0.5.0's) rebuilds the
same requests. The cache is used cache-aside: ``get``, and on a miss ``set``.
functools.lru_cache is replayed by calling a cached identity function.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Callable
from typing import Any

from . import impls

SEED = 20240601


def sizes(quick: bool) -> tuple[int, int]:
    """(requests, distinct keys) of the Zipf workloads."""
    return (40_000, 4_000) if quick else (1_000_000, 100_000)


def zipf(alpha: float, requests: int, keys: int) -> list[int]:
    rng = random.Random(f"{SEED}-zipf-{alpha}")
    weights = [1.0 / (rank**alpha) for rank in range(1, keys + 1)]
    cum = list(itertools.accumulate(weights))
    # The hottest ranks land on scattered keys, not on 0, 1, 2, ...
    ids = list(range(keys))
    rng.shuffle(ids)
    return [ids[r] for r in rng.choices(range(keys), cum_weights=cum, k=requests)]


def hot_and_scans(requests: int, keys: int) -> list[int]:
    """Half the requests go to a hot set (5% of the keys, Zipf 1.0), the other
    half, interleaved, scan through keys that are never asked for again."""
    rng = random.Random(f"{SEED}-scan")
    hot = keys // 20
    cum = list(itertools.accumulate(1.0 / r for r in range(1, hot + 1)))
    hits = iter(rng.choices(range(hot), cum_weights=cum, k=requests))
    scan = itertools.count(keys)  # one-off keys, disjoint from the hot set
    return [next(hits) if rng.random() < 0.5 else next(scan) for _ in range(requests)]


def loop(requests: int, keys: int) -> list[int]:
    """The same sequence of keys over and over, longer than either cache."""
    length = keys * 12 // 100
    return [i % length for i in range(requests)]


def workloads(quick: bool) -> dict[str, list[int]]:
    requests, keys = sizes(quick)
    return {
        "Zipf 0.8": zipf(0.8, requests, keys),
        "Zipf 1.0": zipf(1.0, requests, keys),
        "hot set + scans": hot_and_scans(requests, keys),
        "loop": loop(requests, keys),
    }


def capacities(quick: bool) -> dict[str, int]:
    _, keys = sizes(quick)
    return {"1%": keys // 100, "10%": keys // 10}


def replay(get: Callable[[Any], Any], put: Callable[[Any, Any], Any], trace: list[int]) -> int:
    hits = 0
    for k in trace:
        if get(k) is None:
            put(k, k)
        else:
            hits += 1
    return hits


def hits_of(impl: str, policy: str, capacity: int, trace: list[int]) -> int:
    if impl == "functools":
        f = functools.lru_cache(maxsize=capacity)(lambda x: x)
        for k in trace:
            f(k)
        return f.cache_info().hits
    api = impls.make(impl, capacity, policy)
    get = api.get
    if impl == "theine":
        theine_get = get

        def get(k: Any) -> Any:
            return theine_get(k)[0]

    put = api.put
    if put is None:
        put = api.cache.__setitem__
    return replay(get, put, trace)


def run(
    impl_names: list[str], quick: bool, progress: Callable[[str], None]
) -> dict[str, dict[str, float]]:
    """Hit ratio in %: "impl policy" -> "workload, capacity" -> value."""
    traces = workloads(quick)
    out: dict[str, dict[str, float]] = {}
    for wname, trace in traces.items():
        for cname, capacity in capacities(quick).items():
            progress(f"hit ratio: {wname}, capacity {cname} ({capacity})")
            for impl in impl_names:
                for policy, label in impls.policies(impl):
                    hits = hits_of(impl, policy, capacity, trace)
                    row = out.setdefault(f"{impl} {label}", {})
                    row[f"{wname}, {cname}"] = 100.0 * hits / len(trace)
    return out
