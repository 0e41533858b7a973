"""The implementations the benchmark compares, behind one small interface.

Each case family asks this module for a cache of some capacity and calls the
implementation's own API on it (bound methods, fetched once), so that what is
timed is the library and not an adapter. moka-py 0.5.0 has the same import
name as this package: it runs in its own virtual environment, under the
implementation name ``moka_py-0.5.0``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import random
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

THIS = "moka_py"
OLD = "moka_py-0.5.0"
# Every implementation, in the order of the tables' columns.
ALL = (
    THIS,
    OLD,
    "theine",
    "cachebox",
    "cachetools",
    "lru-dict",
    "async-lru",
    "functools",
    "dict",
)
MODULE = {OLD: "moka_py", "lru-dict": "lru", "async-lru": "async_lru", "dict": "builtins"}
DIST = {THIS: "moka-py", OLD: "moka-py", "theine": "theine", "cachebox": "cachebox"}
DIST |= {"cachetools": "cachetools", "lru-dict": "lru-dict", "async-lru": "async-lru"}
# Those that are only a decorator of ``async def`` functions (no cache object,
# no plain functions): the latency family's async case alone measures them.
ASYNC_ONLY = ("async-lru",)
# Those whose constructor takes an eviction listener (see :func:`make`).
LISTENERS = (THIS, OLD, "lru-dict")


def module_of(impl: str) -> str:
    return MODULE.get(impl, impl)


def version(impl: str) -> str:
    dist = DIST.get(impl)
    if dist is None:
        return ""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def is_moka(impl: str) -> bool:
    return impl in (THIS, OLD)


def gil_enabled() -> bool:
    """Whether the GIL is on (always, except on a free-threaded build)."""
    return bool(getattr(sys, "_is_gil_enabled", lambda: True)())


@dataclass(frozen=True)
class Api:
    """One cache and its operations, as bound methods of the library.

    ``put`` is ``None`` for mapping-style caches, whose natural way to store is
    ``cache[key] = value`` (the timed loops use the statement, not a call).
    ``get`` returns ``None`` on a miss, except theine's (``(value, found)``).
    """

    cache: Any
    get: Callable[[Any], Any]
    put: Callable[[Any, Any], Any] | None
    remove: Callable[[Any], Any]


def make(impl: str, capacity: int, policy: str = "", listener: bool = False) -> Api:
    """A cache of ``capacity`` entries; ``policy`` picks one of :func:`policies`.

    ``listener``: with a no-op eviction listener attached (the implementations
    of :data:`LISTENERS` only). moka's is called for every entry that leaves
    the cache, replaced ones included; lru-dict's ``callback`` only for
    entries evicted for room.
    """
    if listener and impl not in LISTENERS:
        raise ValueError(f"{impl} takes no eviction listener")
    if is_moka(impl):
        import moka_py

        kwargs: dict[str, Any] = {"policy": policy or "tiny_lfu"}
        if listener:
            kwargs["eviction_listener"] = lambda k, v, cause: None
        c: Any = moka_py.Moka(capacity, **kwargs)
        return Api(c, c.get, c.set, c.remove)
    if impl == "theine":
        import theine

        c = theine.Cache(capacity)
        return Api(c, c.get, c.set, c.delete)
    if impl == "cachebox":
        import cachebox

        c = getattr(cachebox, f"{policy or 'LRU'}Cache")(capacity)
        return Api(c, c.get, None, c.pop)
    if impl == "cachetools":
        import cachetools

        kind = policy or "LRU"
        if kind == "RR":
            # Seeded, so that the evictions (and the hit ratio) are reproducible.
            c = cachetools.RRCache(capacity, choice=random.Random(7).choice)
        else:
            c = getattr(cachetools, f"{kind}Cache")(capacity)
        return Api(c, c.get, None, c.pop)
    if impl == "lru-dict":
        import lru

        c = lru.LRU(capacity, callback=(lambda k, v: None) if listener else None)
        return Api(c, c.get, None, c.pop)
    if impl == "dict":
        d: dict[Any, Any] = {}
        return Api(d, d.get, None, d.pop)
    raise ValueError(f"{impl} is not a mapping-style cache")


def policies(impl: str) -> list[tuple[str, str]]:
    """(policy argument for :func:`make`, label) of each eviction policy offered."""
    if is_moka(impl):
        return [("tiny_lfu", "tiny_lfu"), ("lru", "lru")]
    if impl == "theine":
        return [("", "W-TinyLFU")]
    if impl in ("cachebox", "cachetools"):
        return [(p, p) for p in ("LRU", "LFU", "FIFO", "RR")]
    if impl in ("lru-dict", "functools"):
        return [("", "LRU")]
    return []


def decorator(
    impl: str, capacity: int, coalescing: bool, threaded: bool = False
) -> Callable[[Any], Any] | None:
    """The implementation's memoizing decorator, or ``None``.

    ``coalescing``: the variant in which concurrent callers of one key wait for
    one call. ``threaded``: the function is called from several threads
    (cachetools then needs a lock).
    """
    if is_moka(impl):
        import moka_py

        return moka_py.cached(maxsize=capacity, wait_concurrent=coalescing)
    if impl == "theine":
        import theine

        # Memoize always lets concurrent callers of one key wait for one call.
        return theine.Memoize(capacity, None)
    if impl == "cachebox":
        import cachebox

        # lock=True (the default) is its stampede prevention: a lock per key.
        return cachebox.cached(cachebox.LRUCache(capacity), lock=coalescing)
    if impl == "cachetools":
        import cachetools

        if coalescing:
            return cachetools.cached(cachetools.LRUCache(capacity), condition=threading.Condition())
        if threaded:
            return cachetools.cached(cachetools.LRUCache(capacity), lock=threading.Lock())
        return cachetools.cached(cachetools.LRUCache(capacity))
    if impl == "functools" and not coalescing:
        return functools.lru_cache(maxsize=capacity)
    return None


def async_decorator(impl: str, capacity: int) -> Callable[[Any], Any] | None:
    """The implementation's memoizing decorator for ``async def`` functions
    (the same decorator as :func:`decorator`'s non-coalescing one where it
    takes both kinds), or ``None`` if it has none."""
    if is_moka(impl):
        import moka_py

        return moka_py.cached(maxsize=capacity)
    if impl == "theine":
        import theine

        return theine.Memoize(capacity, None)
    if impl == "cachebox":
        import cachebox

        return cachebox.cached(cachebox.LRUCache(capacity), lock=False)
    if impl == "async-lru":
        import async_lru

        return async_lru.alru_cache(maxsize=capacity)
    # cachetools' and functools' decorators would cache the coroutine object.
    return None


def available(impl: str) -> str | None:
    """``None`` if ``impl`` imports here, else why not."""
    try:
        importlib.import_module(module_of(impl))
    except ImportError as e:
        return f"does not import ({e})"
    return None
