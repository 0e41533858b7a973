"""The names CPython's ``test.test_functools.TestLRU`` takes from the module it
tests, with ``lru_cache`` built on ``moka_py.cached(..., policy="lru")``
(used by tests/test_functools_lru.py)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from moka_py import CacheInfo, cached

WRAPPER_ASSIGNMENTS = functools.WRAPPER_ASSIGNMENTS
partial = functools.partial
_CacheInfo = CacheInfo


def lru_cache(maxsize: Any = 128, typed: bool = False) -> Any:
    """``functools.lru_cache``'s signature, on ``moka_py.cached``."""
    if callable(maxsize) and not isinstance(maxsize, int):
        function: Callable[..., Any] = maxsize
        return cached(policy="lru")(function)
    return cached(maxsize, typed, policy="lru")
