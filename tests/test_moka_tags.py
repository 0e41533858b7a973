"""`Moka(...).set(..., tags=[...])` and `invalidate_tags(*tags)`: every entry
written with a tag before the invalidation is absent after it, including the
value of a load that was in flight."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from support import run_threads, wait_for

from moka_py import Moka, cached, cached_method


def test_an_invalidated_tag_removes_its_entries_and_no_other() -> None:
    removed: list[tuple[Any, Any, str]] = []
    c: Moka[str, int] = Moka(100, eviction_listener=lambda *a: removed.append(a))
    c.set("a", 1, tags=["user:1"])
    c.set("b", 2, tags=["user:1", "org:9"])
    c.set("c", 3, tags=["org:9"])
    c.set("d", 4)
    c.set_many({"e": 5, "f": 6}, tags=("user:1",))
    assert c.invalidate_tags("user:1") is None
    for k in "abef":
        assert c.get(k) is None and c.get(k, "absent") == "absent" and k not in c
        with pytest.raises(KeyError):
            c[k]
        assert c.get_with(k, lambda: -1) == -1
    assert c.get("c") == 3 and c.get("d") == 4
    c.invalidate_tags("org:9", "nobody")
    # "b" was loaded again above, without tags: it stays.
    assert c.get("c") is None and c.get("d") == 4
    assert c.get_many(["a", "b", "c", "d"]) == {"a": -1, "b": -1, "d": 4}
    # The loads replaced the invalidated entries ("c" waits for the sweep).
    c.run_pending_tasks()
    assert sorted(removed) == [
        ("a", 1, "replaced"),
        ("b", 2, "replaced"),
        ("c", 3, "explicit"),
        ("e", 5, "replaced"),
        ("f", 6, "replaced"),
    ]


def test_reads_writes_and_snapshots_skip_invalidated_entries() -> None:
    removed: list[tuple[Any, Any, str]] = []
    c: Moka[str, int] = Moka(100, eviction_listener=lambda *a: removed.append(a))
    c.set("t1", 1, tags=["t"])
    c.set("t2", 2, tags=["t"])
    c.set("u", 3, tags=["u"])
    c.set("plain", 4)
    c.invalidate_tags("t")
    assert c.get_many(["t1", "t2", "u", "plain"]) == {"u": 3, "plain": 4}
    assert sorted(c.keys()) == ["plain", "u"]
    assert sorted(c.values()) == [3, 4]
    assert sorted(c.items()) == [("plain", 4), ("u", 3)]
    assert sorted(c) == ["plain", "u"]
    # len() removes them (the listener sees them as explicit removals).
    assert len(c) == 2 and c.count() == 2
    c.run_pending_tasks()
    assert sorted(removed) == [("t1", 1, "explicit"), ("t2", 2, "explicit")]
    # remove/remove_many of an invalidated entry: absent.
    c.set("x", 5, tags=["x"])
    c.set("y", 6, tags=["x"])
    c.invalidate_tags("x")
    assert c.remove("x") is None and c.remove("x", "gone") == "gone"
    assert c.remove_many(["y", "u"]) == 1
    with pytest.raises(KeyError):
        del c["x"]


def test_a_write_after_the_invalidation_is_present() -> None:
    c: Moka[str, int] = Moka(100)
    c.set("k", 1, tags=["t"])
    c.invalidate_tags("t")
    c.set("k", 2, tags=["t"])
    assert c.get("k") == 2
    c.set("j", 3)
    c.invalidate_tags("t")
    assert c.get("k") is None and c.get("j") == 3
    # Rewritten without tags: no tag applies any more.
    c.set("k", 4, tags=["t"])
    c.set("k", 5)
    c.invalidate_tags("t")
    assert c.get("k") == 5


def test_a_load_in_flight_during_the_invalidation_is_not_served() -> None:
    c: Moka[str, int] = Moka(100)
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def slow() -> int:
        calls.append(1)
        started.set()
        assert release.wait(10)
        return len(calls)

    def load(i: int) -> int:
        return c.get_with("k", slow, tags=["t"]) if i == 0 else -1

    t = threading.Thread(target=load, args=(0,), daemon=True)
    t.start()
    assert started.wait(10)
    c.invalidate_tags("t")
    release.set()
    t.join(10)
    assert not t.is_alive()
    # The value of the load that began before the invalidation is not served.
    assert c.get("k") is None
    assert c.get_with("k", slow, tags=["t"]) == 2
    assert c.get("k") == 2


def test_aget_with_a_load_in_flight_during_the_invalidation_is_not_served() -> None:
    c: Moka[str, int] = Moka(100)

    async def scenario() -> None:
        started, release = asyncio.Event(), asyncio.Event()
        n = [0]

        async def slow() -> int:
            n[0] += 1
            started.set()
            await release.wait()
            return n[0]

        task = asyncio.ensure_future(c.aget_with("k", slow, tags=["t"]))
        await asyncio.wait_for(started.wait(), 10)
        c.invalidate_tags("t")
        release.set()
        assert await asyncio.wait_for(task, 10) == 1
        assert c.get("k") is None
        assert await c.aget_with("k", slow, tags=["t"]) == 2
        assert c.get("k") == 2
        c.invalidate_tags("t")
        assert c.get("k") is None

    asyncio.run(scenario())


def test_a_refresh_keeps_the_entry_tags() -> None:
    c: Moka[str, int] = Moka(100, refresh_after=0.05)
    n = [0]

    def load() -> int:
        n[0] += 1
        return n[0]

    assert c.get_with("k", load, tags=["t"]) == 1
    time.sleep(0.1)
    assert c.get_with("k", load, tags=["t"]) == 1
    wait_for(lambda: c.get("k") == 2)
    c.invalidate_tags("t")
    assert c.get("k") is None


def test_bad_tags_are_refused_before_anything_is_stored() -> None:
    c: Moka[str, int] = Moka(100)
    with pytest.raises(TypeError, match=r"tags must be an iterable of str \(a list of one tag"):
        c.set("k", 1, tags="user:1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="each tag must be a str, not int"):
        c.set("k", 1, tags=["a", 1])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="tags must be an iterable of str, not int"):
        c.set_many({"k": 1}, tags=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="each tag must be a str"):
        c.get_with("k", lambda: 1, tags=[None])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="each tag must be a str"):
        c.aget_with("k", lambda: asyncio.sleep(0, 1), tags=[b"t"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="each tag must be a str"):
        c.invalidate_tags(3)  # type: ignore[arg-type]
    assert "k" not in c and len(c) == 0
    # No tags, or an empty list: an untagged entry.
    c.set("k", 1, tags=[])
    c.set("j", 1, tags=None)
    c.invalidate_tags()
    assert c.get("k") == 1 and c.get("j") == 1


def test_writers_and_invalidators_on_threads() -> None:
    c: Moka[int, tuple[int, int]] = Moka(10_000)
    stop = threading.Event()
    # done[i]: the last round of writer i whose writes had all returned.
    done = [0, 0, 0]

    def work(i: int) -> None:
        if i == 0:
            rounds = 0
            while rounds < 300 or min(done[1:]) < 3:
                rounds += 1
                snap = list(done)
                c.invalidate_tags("hot")
                # A value of a round that had returned before the call is
                # never served after it.
                for k in range(50):
                    v = c.get(k)
                    assert v is None or v[1] > snap[v[0]], (k, v, snap)
            stop.set()
            return
        n = 0
        while not stop.is_set():
            n += 1
            for k in range(50):
                c.set(k, (i, n), tags=["hot", f"w{i}"])
            done[i] = n

    run_threads(work, 3, timeout=60)
    assert done[1] > 0 and done[2] > 0


def test_the_tags_of_many_entries_are_released_with_them() -> None:
    c: Moka[int, int] = Moka(100)
    for i in range(5000):
        c.set(i, i, tags=[f"t{i}"])
    c.run_pending_tasks()
    assert len(c) <= 100
    c.invalidate_tags(*(f"t{i}" for i in range(5000)))
    assert len(c) == 0


@pytest.mark.parametrize("wait_concurrent", [False, True])
def test_cached_results_are_invalidated_by_the_tags_of_their_call(wait_concurrent: bool) -> None:
    calls: list[int] = []

    @cached(tags=lambda user, part: [f"user:{user}", "all"], wait_concurrent=wait_concurrent)
    def profile(user: int, part: str) -> tuple[int, str, int]:
        calls.append(user)
        return (user, part, len(calls))

    assert profile(1, "a") == (1, "a", 1) and profile(1, "b") == (1, "b", 2)
    assert profile(2, "a") == (2, "a", 3)
    assert profile(1, "a") == (1, "a", 1) and len(calls) == 3
    profile.cache.invalidate_tags("user:1")
    assert profile(1, "a") == (1, "a", 4) and profile(1, "b") == (1, "b", 5)
    assert profile(2, "a") == (2, "a", 3)
    # f.refresh stores its result with the call's tags.
    assert profile.refresh(2, "a") == (2, "a", 6)
    profile.cache.invalidate_tags("all")
    assert not profile.cache_contains(2, "a") and not profile.cache_contains(1, "a")
    assert profile.cache_parameters()["tags"] is not None


def test_cached_fixed_tags_and_a_call_in_flight() -> None:
    started, release = threading.Event(), threading.Event()
    n = [0]

    @cached(tags=["prices"], wait_concurrent=True)
    def price(item: str) -> int:
        n[0] += 1
        if item == "slow":
            started.set()
            assert release.wait(10)
        return n[0]

    assert price.cache_parameters()["tags"] == ("prices",)
    t = threading.Thread(target=price, args=("slow",), daemon=True)
    t.start()
    assert started.wait(10)
    assert price("fast") == 2
    price.cache.invalidate_tags("prices")
    release.set()
    t.join(10)
    assert not t.is_alive()
    assert not price.cache_contains("slow") and not price.cache_contains("fast")
    started.clear()
    release.set()
    assert price("slow") == 3 and price.cache_contains("slow")


def test_async_cached_results_and_a_call_in_flight() -> None:
    async def scenario() -> None:
        started, release = asyncio.Event(), asyncio.Event()
        n = [0]

        @cached(tags=lambda k: [k])
        async def load(k: str) -> int:
            n[0] += 1
            started.set()
            await release.wait()
            return n[0]

        task = asyncio.ensure_future(load("a"))
        await asyncio.wait_for(started.wait(), 10)
        load.cache.invalidate_tags("a")
        release.set()
        assert await asyncio.wait_for(task, 10) == 1
        assert not load.cache_contains("a")
        assert await load("a") == 2 and await load("a") == 2
        assert await load.refresh("a") == 3
        load.cache.invalidate_tags("a")
        assert not load.cache_contains("a")

    asyncio.run(scenario())


def test_cached_method_tags_and_bad_tags() -> None:
    class Repo:
        def __init__(self) -> None:
            self.n = 0

        @cached_method(tags=lambda k: [f"k:{k}"])
        def get(self, k: int) -> int:
            self.n += 1
            return self.n

    r = Repo()
    assert r.get(1) == 1 and r.get(1) == 1 and r.get(2) == 2
    r.get.cache.invalidate_tags("k:1")
    assert r.get(1) == 3 and r.get(2) == 2
    with pytest.raises(TypeError, match="tags must be an iterable of str"):
        cached(tags="one")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="each tag must be a str, not int"):
        cached(tags=[1])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="tags must be an iterable of str, not int"):
        cached(tags=5)  # type: ignore[arg-type]

    # Tags given as an iterator are read once and kept.
    @cached(tags=(t for t in ["gen"]))
    def once(k: int) -> int:
        return k

    assert once.cache_parameters()["tags"] == ("gen",)
    once(1)
    once.cache.invalidate_tags("gen")
    assert not once.cache_contains(1)

    @cached(tags=lambda k: k)
    def bad(k: Any) -> int:
        return 1

    with pytest.raises(TypeError, match="tags must be an iterable of str"):
        bad("one")
    with pytest.raises(TypeError, match="each tag must be a str"):
        bad((None,))
    assert bad.cache_info().currsize == 0
