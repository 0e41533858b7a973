"""`Moka(..., refresh_after=)`: `get_with` returns a stale value at once and
reloads it once in the background."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from support import wait_for

from moka_py import Moka

AFTER = 0.05


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
    wait_for(lambda: dict(cache.items()).get("k") == 2)  # items() is not counted
    s = cache.stats()
    assert s.loads == 2
    assert (s.misses, s.hits) == (1, 1)


def test_removal_during_a_reload_stays_a_removal() -> None:
    cache: Moka[str, str] = Moka(10, refresh_after=AFTER)
    started = threading.Event()
    release = threading.Event()

    def reload() -> str:
        started.set()
        assert release.wait(10)
        return "reloaded"

    cache.get_with("k", lambda: "old")
    time.sleep(AFTER * 2)
    assert cache.get_with("k", reload) == "old"
    assert started.wait(10)
    assert cache.remove("k") == "old"
    release.set()
    time.sleep(0.1)
    assert "k" not in cache
    # clear() too.
    cache.get_with("j", lambda: "old")
    time.sleep(AFTER * 2)
    started.clear()
    release.clear()
    cache.get_with("j", reload)
    assert started.wait(10)
    cache.clear()
    release.set()
    time.sleep(0.1)
    assert len(cache) == 0


def test_async_and_sync_reloads_of_one_key_never_overlap() -> None:
    import asyncio

    cache: Moka[str, int] = Moka(10, refresh_after=AFTER)
    running = 0
    most = 0
    lock = threading.Lock()

    def enter() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)

    def leave() -> None:
        nonlocal running
        with lock:
            running -= 1

    def sync_init() -> int:
        enter()
        time.sleep(0.05)
        leave()
        return 1

    async def async_init() -> int:
        enter()
        await asyncio.sleep(0.05)
        leave()
        return 2

    cache.get_with("k", sync_init)
    end = time.monotonic() + 0.6

    def reader() -> None:
        while time.monotonic() < end:
            cache.get_with("k", sync_init)
            time.sleep(0.002)

    def loop_reader() -> None:
        async def main() -> None:
            while time.monotonic() < end:
                await cache.aget_with("k", async_init)
                await asyncio.sleep(0.002)

        asyncio.run(main())

    threads = [threading.Thread(target=f) for f in (reader, loop_reader, loop_reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not any(t.is_alive() for t in threads)
    assert most == 1


def test_async_reload_loses_to_a_newer_write() -> None:
    import asyncio

    cache: Moka[str, str] = Moka(10, refresh_after=AFTER)

    async def slow() -> str:
        await asyncio.sleep(0.05)
        return "reloaded"

    async def first() -> str:
        return "old"

    async def main() -> None:
        await cache.aget_with("k", first)
        await asyncio.sleep(AFTER * 2)
        assert await cache.aget_with("k", slow) == "old"
        cache["k"] = "newer"
        await asyncio.sleep(0.1)
        assert cache["k"] == "newer"

    asyncio.run(main())


def test_caches_share_one_default_pool() -> None:
    caches = [Moka(10, refresh_after=0.01) for _ in range(30)]
    for c in caches:
        c.get_with("k", lambda: 1)
    time.sleep(0.05)
    for c in caches:
        c.get_with("k", lambda: 2)
    wait_for(lambda: all(c.get("k") == 2 for c in caches))
    pools = {t.name.rsplit("_", 1)[0] for t in threading.enumerate() if "moka_py-refresh" in t.name}
    workers = [t for t in threading.enumerate() if t.name.startswith("moka_py-refresh")]
    assert pools == {"moka_py-refresh"}
    # One pool: at most its max_workers threads (min(32, cpus + 4)), not one per cache.
    assert len(workers) <= 32


def reload_in_forked_child() -> None:
    """Run in a child interpreter by run_isolated: the default pool made in
    the parent has no thread in a forked child; the child's reloads still run."""
    import os
    import warnings

    cache: Moka[str, str] = Moka(10, refresh_after=AFTER)
    cache.get_with("k", lambda: "parent")
    time.sleep(AFTER * 2)
    cache.get_with("k", lambda: "parent-reload")  # makes the pool in the parent
    wait_for(lambda: cache.get("k") == "parent-reload")
    with warnings.catch_warnings():
        # 3.12+ warns that the process has threads (the pool's): that is the point.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        code = 1
        try:
            time.sleep(AFTER * 2)
            assert cache.get_with("k", lambda: "child-reload") == "parent-reload"
            wait_for(lambda: cache.get("k") == "child-reload", timeout=5)
            del cache["k"]
            assert cache.get_with("k", lambda: "child-load") == "child-load"
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_reloads_run_in_a_forked_child() -> None:
    from support import run_isolated

    run_isolated(reload_in_forked_child)
