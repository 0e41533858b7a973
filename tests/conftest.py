"""Fixtures and hooks only; the helpers that test modules import are in
support.py."""

from __future__ import annotations

import faulthandler
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support import WATCHDOG_SECONDS, Unraisable, run_threads

# redis_server, redis_db, own_redis_server, redis_cluster, own_redis_cluster,
# redis_sentinel: real redis-server processes for the moka_py.redis tests.
pytest_plugins = ["redis_fixtures"]


@pytest.fixture(name="run_threads")
def run_threads_fixture() -> Callable[..., list[Any]]:
    """`support.run_threads`, for tests that take it as a fixture."""
    return run_threads


@pytest.fixture(autouse=True)
def watchdog() -> Iterator[None]:
    """Ends the process (with every thread's stack on stderr) if a test hangs in
    a way that pytest-timeout cannot interrupt."""
    faulthandler.dump_traceback_later(WATCHDOG_SECONDS, exit=True, file=sys.__stderr__)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def unraisable() -> Iterator[list[Unraisable]]:
    """Collects every `sys.unraisablehook` call made during the test (from any thread)."""
    seen: list[Unraisable] = []
    lock = threading.Lock()

    def hook(args: Any) -> None:
        with lock:
            seen.append(Unraisable(args.exc_type, args.exc_value, args.err_msg, args.object))

    old = sys.unraisablehook
    sys.unraisablehook = hook
    try:
        yield seen
    finally:
        sys.unraisablehook = old
        seen.clear()


def pytest_report_header() -> str:
    """Which redis-server the moka_py.redis tests start (MOKA_PY_REDIS_SERVER)."""
    import shutil
    import subprocess

    from redis_servers import binary

    server = binary("redis-server")
    if shutil.which(server) is None:
        return f"redis-server: {server} not found"
    out = subprocess.run([server, "--version"], capture_output=True, text=True, timeout=10)
    return f"redis-server: {server}: {out.stdout.strip()}"
