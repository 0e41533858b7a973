"""The workload that ci/profile.sh runs under callgrind: one operation, N times.

    python -m ci.profile.ops OP N      (with the repository on PYTHONPATH)

The set-up of an OP is the same for every N, so the difference between two
runs with different N is the cost of the extra operations alone (set-up,
imports and interpreter start-up cancel out). ``loop`` is the empty loop, whose
cost ci/profile/driver.py subtracts.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable

from moka_py import Moka, cached

KEYS = 1000
CAPACITY = 10_000
MAX_N = 8000  # the most operations a run may ask for


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
    ops: dict[str, Callable[[int], object]] = {
        "loop": lambda i: keys[i % KEYS],
        "loop_fresh": lambda i: fresh[i],
        "get_hit": lambda i: get(keys[i % KEYS]),
        "get_hit_stats": lambda i: counted(keys[i % KEYS]),
        "get_miss": lambda i: get(fresh[i]),
        "set_existing": lambda i: set_(keys[i % KEYS], i),
        "set_existing_stats": lambda i: counted_set(keys[i % KEYS], i),
        "set_fresh_full": lambda i: full.set(fresh[i], i),
        "get_with_hit": lambda i: get_with(keys[i % KEYS], initializer),
        "get_with_miss": lambda i: get_with(fresh[i], initializer),
        "remove": lambda i: removable.remove(fresh[i]),
        "remove_stats": lambda i: counted_removable.remove(fresh[i]),
        "cached_hit": lambda i: plain(keys[i % KEYS]),
        "cached_coalescing_hit": lambda i: coalescing(keys[i % KEYS]),
    }
    run = ops[op]
    gc.disable()  # a collection would land in one run and not the other
    for i in range(n):
        run(i)


if __name__ == "__main__":
    main()
