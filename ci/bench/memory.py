"""Case 4: memory per entry, one implementation per fresh process.

The key objects (ints, each also its own value) are created before the first
reading, so they are not counted: what is left is the cache's own structure.
Memory is the process's resident set (``/proc/self/statm``), which also sees
the allocations of Rust and C extensions that ``tracemalloc`` cannot.
"""

from __future__ import annotations

import gc
import os
from typing import Any

from . import impls


def entries(quick: bool) -> int:
    return 50_000 if quick else 1_000_000


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run(impl: str, n: int) -> dict[str, float]:
    """Bytes per entry held, and the number of entries held."""
    keys = list(range(10**12, 10**12 + n))
    gc.collect()
    before = rss()
    held: Any
    if impl == "functools":
        f = impls.decorator(impl, n, coalescing=False)
        assert f is not None
        held = f(lambda x: x)
        for k in keys:
            held(k)
        count = held.cache_info().currsize
    else:
        api = impls.make(impl, n)
        held = api.cache
        if api.put is None:
            for k in keys:
                held[k] = k
        else:
            for k in keys:
                api.put(k, k)
        if impls.is_moka(impl):
            held.run_pending_tasks()
            count = held.count()  # moka-py 0.5.0 has no len()
        else:
            count = len(held)
    gc.collect()
    grown = rss() - before
    return {"bytes": grown / max(count, 1), "entries": count}
