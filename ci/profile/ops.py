"""The workload that ci/profile.sh runs under callgrind: one operation, N times.

    python -m ci.profile.ops OP N      (with the repository on PYTHONPATH)

The set-up of an OP is the same for every N, so the difference between two
runs with different N is the cost of the extra operations alone (set-up,
imports and interpreter start-up cancel out). ``loop`` is the empty loop, whose
cost ci/profile/driver.py subtracts.

``get_hit_KIND``/``get_miss_KIND`` look up keys of one shape (``int`` above
the small-int cache, a short ``str``, a 64-character ``str``, a tuple
``("user", i, True)``, a ``uuid.UUID``) with needles that are equal to, but
not the same objects as, the stored keys, drawn in turn from a pool of
``POOL`` (so that hashing and comparison really run, and bucket luck averages
out); ``loop_pool`` is their empty loop.
"""

from __future__ import annotations

import gc
import sys
import uuid
from collections.abc import Callable
from typing import Any

from moka_py import Moka, cached

KEYS = 1000
CAPACITY = 10_000
MAX_N = 8000  # the most operations a run may ask for
POOL = 100  # needles of one key shape
KINDS = ("int", "str", "longstr", "tuple", "uuid")
LONG = "x" * 64


def shaped(kind: str, i: int) -> Any:
    """Key number `i` of one shape, built anew at each call (equal objects, not
    the same one)."""
    if kind == "int":
        return 10**6 + i
    if kind == "str":
        return "".join(["k", str(i)])
    if kind == "longstr":
        return "".join([LONG, str(i)])
    if kind == "tuple":
        return ("user", i, True)
    return uuid.UUID(int=(i << 64) | 12345)


def shape_ops(kind: str) -> dict[str, Callable[[int], object]]:
    """get hit and miss of keys of one shape (see the module comment)."""
    cache: Any = Moka(CAPACITY)
    for i in range(KEYS):
        cache.set(shaped(kind, i), i)
    hits = [shaped(kind, i * (KEYS // POOL)) for i in range(POOL)]
    misses = [shaped(kind, KEYS + i) for i in range(POOL)]
    get = cache.get
    return {
        f"get_hit_{kind}": lambda i: get(hits[i % POOL]),
        f"get_miss_{kind}": lambda i: get(misses[i % POOL]),
    }


def main() -> None:
    op, n = sys.argv[1], int(sys.argv[2])
    if not 0 <= n <= MAX_N:
        sys.exit(f"N must be between 0 and {MAX_N}")
    keys = list(range(KEYS))
    fresh = list(range(KEYS, KEYS + MAX_N))
    cache: Moka[int, int] = Moka(CAPACITY)
    full: Moka[int, int] = Moka(KEYS)
    removable: Moka[int, int] = Moka(2 * MAX_N)
    for k in keys:
        cache.set(k, k)
        full.set(k, k)
    for k in fresh:
        removable.set(k, k)
    full.run_pending_tasks()

    @cached(maxsize=CAPACITY)
    def plain(x: int) -> int:
        return x

    @cached(maxsize=CAPACITY, wait_concurrent=True)
    def coalescing(x: int) -> int:
        return x

    for k in keys:
        plain(k)
        coalescing(k)

    def initializer() -> int:
        return 0

    short = [shaped("str", i) for i in range(KEYS)]
    with_str: Moka[str, int] = Moka(CAPACITY)
    for k in short:
        with_str.set(k, 0)
    str_needles = [shaped("str", i * (KEYS // POOL)) for i in range(POOL)]

    get, set_, get_with = cache.get, cache.set, cache.get_with
    counted, counted_set, counted_removable = get, set_, removable
    if op.endswith("_stats"):
        # Made for these operations only: moka-py 0.5.0 has no statistics.
        # Set-up cancels out between the two run lengths anyway.
        with_stats: Moka[int, int] = Moka(CAPACITY, stats=True)
        counted_removable = Moka(2 * MAX_N, stats=True)
        for k in keys:
            with_stats.set(k, k)
        for k in fresh:
            counted_removable.set(k, k)
        counted, counted_set = with_stats.get, with_stats.set
    tagged_get = get
    if op == "get_hit_tagged":
        # This package only (moka-py 0.5.0 has no tags): every entry has a
        # tag, one of 100, whose epoch a hit checks.
        tagged: Moka[int, int] = Moka(CAPACITY)
        for k in keys:
            tagged.set(k, k, tags=[f"group:{k % 100}"])
        tagged_get = tagged.get
    ops: dict[str, Callable[[int], object]] = {
        "loop": lambda i: keys[i % KEYS],
        "loop_fresh": lambda i: fresh[i],
        "get_hit": lambda i: get(keys[i % KEYS]),
        "get_hit_stats": lambda i: counted(keys[i % KEYS]),
        "get_hit_tagged": lambda i: tagged_get(keys[i % KEYS]),
        "get_miss": lambda i: get(fresh[i]),
        "set_existing": lambda i: set_(keys[i % KEYS], i),
        "set_existing_stats": lambda i: counted_set(keys[i % KEYS], i),
        "set_fresh_full": lambda i: full.set(fresh[i], i),
        "get_with_hit": lambda i: get_with(keys[i % KEYS], initializer),
        "get_with_miss": lambda i: get_with(fresh[i], initializer),
        "get_with_hit_str": lambda i: with_str.get_with(str_needles[i % POOL], initializer),
        "remove": lambda i: removable.remove(fresh[i]),
        "remove_miss": lambda i: cache.remove(fresh[i]),
        "remove_stats": lambda i: counted_removable.remove(fresh[i]),
        "cached_hit": lambda i: plain(keys[i % KEYS]),
        "cached_coalescing_hit": lambda i: coalescing(keys[i % KEYS]),
    }
    kind = op.rpartition("_")[2]
    if kind in KINDS and op.startswith("get_"):
        ops |= shape_ops(kind)
    needles = [shaped("int", i) for i in range(POOL)]
    ops["loop_pool"] = lambda i: needles[i % POOL]
    run = ops[op]
    gc.disable()  # a collection would land in one run and not the other
    for i in range(n):
        run(i)


if __name__ == "__main__":
    main()
