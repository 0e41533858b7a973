"""`Moka(..., refresh_after=)`: `get_with` returns a stale value at once and
reloads it once in the background."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from moka_py import Moka

AFTER = 0.05


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(0.005)


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="refresh_after"):
        Moka(10, refresh_after=0)
    with pytest.raises(ValueError, match="shorter than ttl"):
        Moka(10, ttl=1, refresh_after=1)
    with pytest.raises(ValueError, match="refresh_after"):
        Moka(10, executor=ThreadPoolExecutor(1))
    with pytest.raises(TypeError, match="executor"):
        Moka(10, refresh_after=1, executor=object())  # type: ignore[arg-type]
    assert Moka(10, ttl=2, refresh_after=1).refresh_after == 1.0
    assert Moka(10).refresh_after is None


def test_stale_value_returned_at_once_then_replaced() -> None:
    cache: Moka[str, int] = Moka(10, refresh_after=AFTER)
    calls: list[str] = []
    release = threading.Event()

    def init() -> int:
        calls.append(threading.current_thread().name)
        if len(calls) > 1:
            assert release.wait(10)
        return len(calls)

    assert cache.get_with("k", init) == 1
    time.sleep(AFTER * 2)
    # The reload blocks until released: get_with does not wait for it.
    assert cache.get_with("k", init) == 1
    assert cache.get_with("k", init) == 1
    wait_for(lambda: len(calls) == 2)
    assert calls[1].startswith("moka_py-refresh")
    release.set()
    wait_for(lambda: cache.get("k") == 2)
    assert len(calls) == 2


def test_plain_get_never_refreshes() -> None:
    cache: Moka[str, int] = Moka(10, refresh_after=AFTER)
    calls = []
    cache.get_with("k", lambda: calls.append(1) or 1)
    time.sleep(AFTER * 2)
    for _ in range(5):
        assert cache.get("k") == 1
        assert cache["k"] == 1
    time.sleep(0.05)
    assert calls == [1]


def test_reload_restarts_ttl() -> None:
    cache: Moka[str, int] = Moka(10, ttl=0.4, refresh_after=0.1)
    n = [0]

    def init() -> int:
        n[0] += 1
        return n[0]

    cache.get_with("k", init)
    time.sleep(0.25)
    assert cache.get_with("k", init) == 1  # stale: reload starts
    wait_for(lambda: cache.get("k") == 2)
    time.sleep(0.25)  # 0.5 s after the first write, under 0.4 s after the reload
    assert cache.get("k") == 2


def test_one_reload_however_many_threads_read(run_threads: Any) -> None:
    cache: Moka[str, int] = Moka(10, refresh_after=AFTER)
    running = 0
    most = 0
    calls = 0
    lock = threading.Lock()
    release = threading.Event()

    def init() -> int:
        nonlocal running, most, calls
        with lock:
            calls += 1
            running += 1
            most = max(most, running)
        if calls > 1:
            release.wait(10)
        with lock:
            running -= 1
        return calls

    cache.get_with("k", init)
    time.sleep(AFTER * 2)
    results = run_threads(lambda i: [cache.get_with("k", init) for _ in range(50)], 8)
    assert all(v == 1 for r in results for v in r)
    release.set()
    wait_for(lambda: cache.get("k") == 2)
    assert calls == 2
    assert most == 1


@pytest.mark.thread_unsafe  # swaps the process-wide sys.unraisablehook
def test_failed_reload_keeps_old_value_and_reports(unraisable: list[Any]) -> None:
    cache: Moka[str, int] = Moka(10, ttl=5, refresh_after=AFTER)
    cache.get_with("k", lambda: 1)
    time.sleep(AFTER * 2)

    def fail() -> int:
        raise ValueError("reload failed")

    assert cache.get_with("k", fail) == 1
    wait_for(lambda: len(unraisable) == 1)
    assert isinstance(unraisable[0].exc_value, ValueError)
    assert cache.get("k") == 1
    # Still stale: the next get_with tries again, and succeeds.
    assert cache.get_with("k", lambda: 2) == 1
    wait_for(lambda: cache.get("k") == 2)


def test_never_two_reloads_of_one_key_at_once(run_threads: Any) -> None:
    cache: Moka[int, int] = Moka(100, refresh_after=0.01)
    running: dict[int, int] = {}
    overlap: list[int] = []
    lock = threading.Lock()

    def loader(k: int) -> Any:
        def init() -> int:
            with lock:
                running[k] = running.get(k, 0) + 1
                if running[k] > 1:
                    overlap.append(k)
            time.sleep(0.003)
            with lock:
                running[k] -= 1
            return k

        return init

    def work(t: int) -> None:
        end = time.monotonic() + 0.5
        i = 0
        while time.monotonic() < end:
            k = (i + t) % 4
            assert cache.get_with(k, loader(k)) == k
            i += 1

    run_threads(work, 8)
    wait_for(lambda: not any(running.values()))
    assert overlap == []


def test_get_with_miss_joins_reload_in_flight() -> None:
    """A key whose entry expires while its reload runs: get_with waits for
    the reload instead of starting a second load."""
    cache: Moka[str, int] = Moka(10, ttl=0.2, refresh_after=0.05)
    calls: list[int] = []
    started = threading.Event()
    release = threading.Event()

    def reload() -> int:
        calls.append(2)
        started.set()
        assert release.wait(10)
        return 2

    cache.get_with("k", lambda: 1)
    time.sleep(0.1)
    assert cache.get_with("k", reload) == 1
    assert started.wait(10)
    time.sleep(0.15)  # the old entry has expired now
    assert cache.get("k") is None
    threading.Timer(0.05, release.set).start()
    assert cache.get_with("k", lambda: calls.append(3) or 3) == 2
    assert calls == [2]


def test_newer_write_wins_over_reload() -> None:
    cache: Moka[str, str] = Moka(10, refresh_after=AFTER)
    started = threading.Event()
    release = threading.Event()

    def reload() -> str:
        started.set()
        assert release.wait(10)
        return "reloaded"

    cache.get_with("k", lambda: "first")
    time.sleep(AFTER * 2)
    cache.get_with("k", reload)
    assert started.wait(10)
    cache["k"] = "newer"
    release.set()
    time.sleep(0.1)
    assert cache["k"] == "newer"


class Recording(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(1, thread_name_prefix="given")
        self.submitted = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


def test_given_executor_runs_the_reloads() -> None:
    pool = Recording()
    cache: Moka[str, str] = Moka(10, refresh_after=AFTER, executor=pool)
    names: list[str] = []
    cache.get_with("k", lambda: "a")
    time.sleep(AFTER * 2)

    def init() -> str:
        names.append(threading.current_thread().name)
        return "b"

    cache.get_with("k", init)
    wait_for(lambda: cache.get("k") == "b")
    assert pool.submitted == 1
    assert names[0].startswith("given")
    pool.shutdown()


@pytest.mark.thread_unsafe  # swaps the process-wide sys.unraisablehook
def test_shut_down_executor_reports_and_recovers(unraisable: list[Any]) -> None:
    pool = ThreadPoolExecutor(1)
    pool.shutdown()
    cache: Moka[str, str] = Moka(10, refresh_after=AFTER, executor=pool)
    cache.get_with("k", lambda: "a")
    time.sleep(AFTER * 2)
    assert cache.get_with("k", lambda: "b") == "a"
    assert len(unraisable) == 1
    assert isinstance(unraisable[0].exc_value, RuntimeError)
    # The claim was given up: a load of the key is not blocked.
    del cache["k"]
    assert cache.get_with("k", lambda: "c") == "c"


def test_stats_count_reloads() -> None:
    cache: Moka[str, int] = Moka(10, refresh_after=AFTER, stats=True)
    cache.get_with("k", lambda: 1)
    time.sleep(AFTER * 2)
    cache.get_with("k", lambda: 2)
    wait_for(lambda: cache.get("k") == 2)
    s = cache.stats()
    assert s.loads == 2
    assert (s.misses, s.hits) == (1, 2)
