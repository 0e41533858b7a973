"""moka_py.redis across real child processes on a real redis-server: sharing,
coherence under a hammering writer, one load per key across processes, a
loader that raises or dies, and a cache created before os.fork()."""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
import warnings
from typing import Any

import pytest
import redis
import redis_workers
from redis_servers import RedisServer
from support import SIGNING_KEY, wait_for

from moka_py.redis import TieredCache

pytestmark = pytest.mark.thread_unsafe  # child processes and shared servers

SPAWN = multiprocessing.get_context("spawn")


def _run(target: Any, *args: Any) -> Any:
    p = SPAWN.Process(target=target, args=args, daemon=True)
    p.start()
    return p


def _join(*procs: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.1, deadline - time.monotonic()))
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, "a child process did not finish in time"


def test_a_value_set_in_one_process_is_read_in_another(redis_db: RedisServer) -> None:
    out = SPAWN.Queue()
    with TieredCache(redis_db.client(), namespace="users", signing_key=SIGNING_KEY) as cache:
        cache.set(("user", 1), {"name": "ada"})
        p = _run(redis_workers.get_one, redis_db.port, ("user", 1.0), out)
        assert out.get(timeout=90) == {"name": "ada"}
        _join(p)
        assert cache.get("from child") is None
        p = _run(redis_workers.set_one, redis_db.port, "from child", [1, 2])
        _join(p)
        p.close()
        wait_for(lambda: cache.get("from child") == [1, 2], timeout=5)


def test_no_race_leaves_a_stale_value(redis_db: RedisServer) -> None:
    keys, writes, readers = 6, 1500, 3
    ready = [SPAWN.Event() for _ in range(readers)]
    go, stop, settle = SPAWN.Event(), SPAWN.Event(), SPAWN.Event()
    out, last_q = SPAWN.Queue(), SPAWN.Queue()
    procs = [
        _run(redis_workers.reader, redis_db.port, keys, ready[i], stop, settle, out)
        for i in range(readers)
    ]
    w = _run(redis_workers.writer, redis_db.port, keys, writes, go, last_q)
    for r in ready:
        assert r.wait(60)
    go.set()
    last = last_q.get(timeout=120)
    stop.set()
    settle.set()
    reports = [out.get(timeout=60) for _ in range(readers)]
    _join(w, *procs)
    with TieredCache(redis_db.client(), namespace="users", signing_key=SIGNING_KEY) as check:
        truth = {k: check.get(k) for k in range(keys)}
    expected = {k: last.get(k, truth[k]) for k in range(keys)}
    assert truth == expected
    for reads, seen in reports:
        assert reads > 100  # the readers did read while the writer wrote
        assert seen == expected


def _loads(port: int, procs: int, threads: int, **kwargs: Any) -> tuple[int, list[Any]]:
    out = SPAWN.Queue()
    start = SPAWN.Event()
    ps = [
        _run(redis_workers.load, port, "hot", threads, 0.3, "calls", out, "value", 30.0, start)
        for _ in range(procs)
    ]
    time.sleep(0.5)
    start.set()
    results = [out.get(timeout=60) for _ in range(procs)]
    _join(*ps)
    calls = int(redis.Redis(port=port).get("calls") or 0)
    return calls, [r for _, rs in results for r in rs]


def test_one_load_across_every_thread_of_every_process(redis_db: RedisServer) -> None:
    calls, results = _loads(redis_db.port, procs=3, threads=4)
    assert calls == 1
    assert len(results) == 12 and len(set(results)) == 1
    assert str(results[0]).startswith("value of ")


def test_a_loader_that_raises_hands_over_to_a_waiter(redis_db: RedisServer) -> None:
    out = SPAWN.Queue()
    failing = _run(redis_workers.load, redis_db.port, "k", 3, 0.5, "calls", out, "raise")
    wait_for(lambda: redis_db.admin.exists("users:l:sk"), timeout=30)
    waiting = _run(redis_workers.load, redis_db.port, "k", 3, 0.1, "calls", out, "value")
    by_pid = dict(out.get(timeout=60) for _ in range(2))
    _join(failing, waiting)
    # The failing process's callers got its exception; the other process
    # loaded once the claim was released (two loader calls in all).
    assert all(r[0] == "raised" for r in by_pid[failing.pid])
    assert by_pid[waiting.pid] == [f"value of {waiting.pid}"] * 3
    assert int(redis_db.admin.get("calls")) == 2
    with TieredCache(redis_db.client(), namespace="users", signing_key=SIGNING_KEY) as c:
        assert c.get("k") == f"value of {waiting.pid}"


def test_a_loader_that_dies_hands_over_after_lock_timeout(redis_db: RedisServer) -> None:
    out = SPAWN.Queue()
    dying = _run(redis_workers.load, redis_db.port, "k", 2, 0.3, "calls", out, "exit", 1.0)
    wait_for(lambda: redis_db.admin.exists("users:l:sk"), timeout=30)
    waiting = _run(redis_workers.load, redis_db.port, "k", 2, 0.1, "calls", out, "value", 1.0)
    pid, results = out.get(timeout=60)
    _join(dying, waiting)
    assert dying.exitcode == 3
    assert pid == waiting.pid and results == [f"value of {waiting.pid}"] * 2
    assert int(redis_db.admin.get("calls")) == 2


def test_a_loader_slower_than_lock_timeout_keeps_its_claim(redis_db: RedisServer) -> None:
    out = SPAWN.Queue()
    slow = _run(redis_workers.load, redis_db.port, "k", 2, 2.0, "calls", out, "value", 0.5)
    wait_for(lambda: redis_db.admin.exists("users:l:sk"), timeout=30)
    waiting = _run(redis_workers.load, redis_db.port, "k", 2, 0.1, "calls", out, "value", 0.5)
    by_pid = dict(out.get(timeout=60) for _ in range(2))
    _join(slow, waiting)
    assert int(redis_db.admin.get("calls")) == 1
    assert by_pid[waiting.pid] == by_pid[slow.pid] == [f"value of {slow.pid}"] * 2


def test_a_call_that_waits_for_another_process_is_one_wait(redis_db: RedisServer) -> None:
    out = SPAWN.Queue()
    child = _run(redis_workers.gated_load, redis_db.port, "k", "go", out)
    wait_for(lambda: redis_db.admin.exists("users:l:sk"), timeout=30)
    with TieredCache(
        redis_db.client(), namespace="users", signing_key=SIGNING_KEY, stats=True
    ) as cache:
        results: list[Any] = []

        def call() -> None:
            results.append(cache.get_with("k", lambda: "parent"))

        # One thread waits for the child's claim in Redis, the other for
        # that thread's load in this process: two calls that waited.
        threads = [threading.Thread(target=call) for _ in range(2)]
        for t in threads:
            t.start()
        wait_for(lambda: cache.stats().waits == 2, timeout=30)
        # Let the first thread poll the claim for several rounds (0.2 s each)
        # before the child's loader returns: rounds are not waits.
        time.sleep(1.0)
        redis_db.admin.set("go", 1)
        for t in threads:
            t.join(30)
        assert out.get(timeout=90) == f"value of {child.pid}"
        _join(child)
        assert results == [f"value of {child.pid}"] * 2
        s = cache.stats()
        assert (s.waits, s.loads, s.load_failures, s.remote_hits) == (2, 0, 0, 1)
        assert s == cache.stats(cumulative=True)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_cache_created_before_fork_works_in_the_child(redis_db: RedisServer) -> None:
    fork = multiprocessing.get_context("fork")
    with TieredCache(redis_db.client(), namespace="users", signing_key=SIGNING_KEY) as cache:
        assert cache.wait_ready(5)
        cache.set("k", "before fork")
        assert cache.get("k") == "before fork"
        seen, out = fork.Queue(), fork.Queue()
        with warnings.catch_warnings():
            # 3.12+ warns that forking a process with threads may deadlock; the
            # cache's own threads hold no lock the child needs.
            warnings.simplefilter("ignore", DeprecationWarning)
            child = fork.Process(target=redis_workers.forked_child, args=(cache, "k", seen, out))
            child.start()
        wait_for(lambda: cache.get(("child", child.pid)) == "hello", timeout=30)
        cache.set("k", "after fork")
        first, later, feed_up = seen.get(timeout=90)
        assert out.get(timeout=90) == "ok"
        _join(child)
        assert child.exitcode == 0
        assert (first, later, feed_up) == ("before fork", "after fork", True)
        # The parent's cache is unaffected by the child's.
        assert cache.feed_up and cache.get("k") == "after fork"
    assert sys.modules["moka_py.redis"]
