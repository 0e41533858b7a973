"""Module-level cached functions, importable by name from a worker process
(tests/test_cached_options.py sends them to a ProcessPoolExecutor)."""

from __future__ import annotations

import os

from moka_py import cached


@cached(maxsize=16)
def square(x: int) -> int:
    return x * x


@cached
def worker_pid(_: int) -> int:
    return os.getpid()
