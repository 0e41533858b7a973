"""Size-bounded eviction, the weigher and the eviction listener."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from support import Unraisable, param_id

from moka_py import Moka

POLICIES = ["tiny_lfu", "lru"]

Event = tuple[Any, Any, str]


def recorder() -> tuple[list[Event], Callable[[Any, Any, str], None]]:
    events: list[Event] = []

    def listener(k: Any, v: Any, cause: str) -> None:
        events.append((k, v, cause))

    return events, listener


# --- the capacity bound -------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_capacity_bound_without_run_pending_tasks(policy: str) -> None:
    c: Moka[int, int] = Moka(100, policy=policy)
    for i in range(1000):
        c.set(i, i)
    present = sum(1 for k in range(1000) if k in c)
    assert present <= 100 + 100 // 32
    assert len(c.keys()) <= 100 + 100 // 32
    c.run_pending_tasks()
    assert c.count() <= 100


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("capacity", [1, 2, 10, 1000])
def test_capacity_bound_small_and_large(policy: str, capacity: int) -> None:
    c: Moka[int, int] = Moka(capacity, policy=policy)
    for i in range(capacity * 10):
        c.set(i, i)
        if i % 7 == 0:
            present = sum(1 for k in range(i + 1) if k in c)
            assert present <= capacity + capacity // 32
    assert sum(1 for k in range(capacity * 10) if k in c) <= capacity + capacity // 32


@pytest.mark.parametrize("policy", POLICIES)
def test_capacity_bound_with_listener_reports_size_during_set(policy: str) -> None:
    events, listener = recorder()
    c: Moka[int, int] = Moka(100, policy=policy, eviction_listener=listener)
    for i in range(1000):
        c.set(i, i)
    # Nothing else has been called on the cache since the sets.
    assert events, "no eviction was reported during the sets"
    assert {cause for _, _, cause in events} == {"size"}
    present = sum(1 for k in range(1000) if k in c)
    assert present <= 100 + 100 // 32
    # Every key is either present or was reported evicted with its own value.
    evicted = {k for k, _, _ in events}
    assert all(k == v for k, v, _ in events)
    for k in range(1000):
        assert k in c or k in evicted


@pytest.mark.parametrize("policy", POLICIES)
def test_size_events_delivered_by_the_set_call(policy: str) -> None:
    events, listener = recorder()
    c: Moka[int, int] = Moka(10, policy=policy, eviction_listener=listener)
    delivered_by_set = 0
    for i in range(200):
        before = len(events)
        c.set(i, i)
        delivered_by_set += len(events) - before
    assert delivered_by_set > 0
    assert delivered_by_set == len(events)


# --- the weigher --------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_weighted_capacity_bounds_total_weight(policy: str) -> None:
    c: Moka[int, str] = Moka(100, policy=policy, weigher=lambda k, v: len(v))
    for i in range(200):
        c.set(i, "x" * (1 + i % 20))
    total = sum(len(v) for v in c.values())
    assert total <= 100 + 100 // 32
    c.run_pending_tasks()
    assert c.weighted_size() <= 100
    assert c.weighted_size() == sum(len(v) for v in c.values())


def test_weigher_receives_key_value_on_calling_thread() -> None:
    calls: list[tuple[Any, Any, int]] = []

    def weigher(k: Any, v: Any) -> int:
        calls.append((k, v, threading.get_ident()))
        return 1

    c: Moka[str, list[int]] = Moka(10, weigher=weigher)
    value = [1]
    c.set("main", value)
    assert calls == [("main", value, threading.get_ident())]
    assert calls[0][1] is value

    idents: list[int] = []

    def worker() -> None:
        idents.append(threading.get_ident())
        c.set("worker", 2)
        c["item"] = 3
        c.get_with("loaded", lambda: 4)

    t = threading.Thread(target=worker)
    t.start()
    t.join(30)
    assert not t.is_alive()
    assert [(k, v) for k, v, _ in calls[1:]] == [("worker", 2), ("item", 3), ("loaded", 4)]
    assert {ident for _, _, ident in calls[1:]} == set(idents)


def test_weigher_not_called_on_reads() -> None:
    calls: list[Any] = []
    c: Moka[str, int] = Moka(10, weigher=lambda k, v: calls.append(k) or 1)
    c.set("a", 1)
    c.get("a")
    _ = "a" in c
    c.get_with("a", lambda: 2)
    c.remove("a")
    assert calls == ["a"]


@pytest.mark.parametrize("weight", [-1, -(2**70)], ids=param_id)
def test_weigher_negative_is_value_error(weight: int) -> None:
    c: Moka[str, int] = Moka(10, weigher=lambda k, v: weight if k == "bad" else 1)
    with pytest.raises(ValueError, match="weigher"):
        c.set("bad", 1)
    assert "bad" not in c
    with pytest.raises(ValueError):
        c["bad"] = 1
    with pytest.raises(ValueError):
        c.get_with("bad", lambda: 1)
    assert "bad" not in c
    assert c.count() == 0


@pytest.mark.parametrize("weight", [1.0, 2.5, "1", None, b"1", [1]], ids=param_id)
def test_weigher_non_int_is_type_error(weight: Any) -> None:
    c: Moka[str, int] = Moka(10, weigher=lambda k, v: weight if k == "bad" else 1)
    with pytest.raises(TypeError, match="weigher"):
        c.set("bad", 1)
    with pytest.raises(TypeError):
        c["bad"] = 1
    with pytest.raises(TypeError):
        c.get_with("bad", lambda: 1)
    assert "bad" not in c
    assert c.count() == 0


def test_bad_weight_on_existing_key_keeps_old_value() -> None:
    c: Moka[str, int] = Moka(10, weigher=lambda k, v: v)
    c.set("k", 1)
    with pytest.raises(ValueError):
        c.set("k", -5)
    assert c.get("k") == 1


class WeigherBoom(Exception):
    pass


def test_raising_weigher_propagates() -> None:
    def weigher(k: Any, v: Any) -> int:
        if k == "bad":
            raise WeigherBoom("cannot weigh")
        return 1

    c: Moka[str, int] = Moka(10, weigher=weigher)
    with pytest.raises(WeigherBoom, match="cannot weigh"):
        c.set("bad", 1)
    with pytest.raises(WeigherBoom):
        c.get_with("bad", lambda: 1)
    assert "bad" not in c
    c.set("good", 1)
    assert c.get("good") == 1
    assert c.count() == 1


@pytest.mark.parametrize("weight", [2**32, 2**40, 2**64, 2**100], ids=param_id)
def test_huge_weight_clamps(weight: int) -> None:
    small: Moka[str, int] = Moka(10, weigher=lambda k, v: weight)
    small.set("k", 1)
    small.run_pending_tasks()
    assert "k" not in small
    assert small.weighted_size() == 0
    small.set("k2", 2)
    assert small.count() == 0

    # Clamped to 2**32 - 1, it fits in a cache of 2**33.
    big: Moka[str, int] = Moka(2**33, weigher=lambda k, v: weight)
    big.set("k", 1)
    big.run_pending_tasks()
    assert big.get("k") == 1
    assert big.weighted_size() == 2**32 - 1


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("remove", ["remove", "del", "remove_many", "remove_if"])
@pytest.mark.parametrize(("first", "then"), [(5, 0), (0, 5)])
def test_weight_stays_exact_when_a_replaced_entry_is_removed_at_once(
    policy: str, remove: str, first: int, then: int
) -> None:
    # moka 0.12 loses a replacement's change of weight when the entry is
    # removed before its housekeeping ran; the binding applies it first.
    c: Moka[str, int] = Moka(10, policy=policy, weigher=lambda k, v: v)
    removers: dict[str, Callable[[str], object]] = {
        "remove": c.remove,
        "del": c.__delitem__,
        "remove_many": lambda k: c.remove_many([k]),
        "remove_if": lambda k: c.remove_if(lambda key, v: key == k),
    }
    for _ in range(4):
        c.set("k", first)
        c.run_pending_tasks()
        c.set("k", then)
        removers[remove]("k")
        c.run_pending_tasks()
        assert "k" not in c
        assert c.weighted_size() == 0
    # The whole capacity is still there, and no more.
    for i in range(10):
        c.set(str(i), 1)
    c.run_pending_tasks()
    assert c.weighted_size() == sum(c.values()) == 10
    c.set("one more", 1)
    c.run_pending_tasks()
    assert c.weighted_size() == sum(c.values()) <= 10


def test_weight_zero_is_allowed() -> None:
    c: Moka[int, int] = Moka(10, weigher=lambda k, v: 0)
    for i in range(50):
        c.set(i, i)
    c.run_pending_tasks()
    assert c.weighted_size() == 0
    assert c.get(49) == 49


# --- the eviction listener ------------------------------------------------------


def test_seeds_example_every_time() -> None:
    """The users' eviction-listener example passes every time, not just once."""
    from test_seeds import V2_EVICTION_LISTENER

    code = compile(V2_EVICTION_LISTENER, "<seeds example>", "exec")
    for _ in range(5):
        exec(code, {"__name__": "seeds_example"})


def test_cause_explicit_remove_del_clear() -> None:
    events, listener = recorder()
    c: Moka[str, int] = Moka(10, eviction_listener=listener)
    c.set("a", 1)
    c.set("b", 2)
    c.set("c", 3)
    c.set("d", 4)
    assert c.remove("a") == 1
    assert events == [("a", 1, "explicit")]
    del c["b"]
    assert events[1:] == [("b", 2, "explicit")]
    c.clear()
    assert sorted(events[2:]) == [("c", 3, "explicit"), ("d", 4, "explicit")]
    c.remove("zzz")
    with pytest.raises(KeyError):
        del c["zzz"]
    c.clear()
    assert len(events) == 4


def test_cause_replaced() -> None:
    events, listener = recorder()
    c: Moka[str, list[int]] = Moka(10, eviction_listener=listener)
    old = [1]
    c.set("a", old)
    c.set("a", [2])
    assert events == [("a", old, "replaced")]
    assert events[0][1] is old
    c["a"] = [3]
    assert events[1] == ("a", [2], "replaced")


def test_cause_replaced_key_is_the_old_key_or_equal() -> None:
    events, listener = recorder()
    c: Moka[Any, str] = Moka(10, eviction_listener=listener)
    c.set(1, "int")
    c.set(1.0, "float")
    assert len(events) == 1
    k, v, cause = events[0]
    assert (k, v, cause) == (1, "int", "replaced")


def test_cause_size() -> None:
    events, listener = recorder()
    c: Moka[int, int] = Moka(3, eviction_listener=listener, policy="lru")
    for i in range(10):
        c.set(i, i * 10)
    assert events
    assert all(cause == "size" for _, _, cause in events)
    assert all(v == k * 10 for k, v, _ in events)


def wait_for_events(c: Moka[Any, Any], events: list[Event], limit: float = 5.0) -> None:
    """Runs pending tasks until `events` is non-empty or `limit` seconds have passed
    (moka checks per-entry deadlines on a timer wheel with ~1 s ticks)."""
    deadline = time.monotonic() + limit
    while not events and time.monotonic() < deadline:
        c.run_pending_tasks()
        time.sleep(0.05)


@pytest.mark.parametrize("kind", ["ttl", "tti"])
@pytest.mark.parametrize("where", ["cache", "entry"])
def test_cause_expired(kind: str, where: str) -> None:
    events, listener = recorder()
    if where == "cache":
        c: Moka[str, int] = Moka(10, eviction_listener=listener, **{kind: 0.1})
        c.set("a", 1)
    else:
        c = Moka(10, eviction_listener=listener)
        c.set("a", 1, **{kind: 0.1})
    time.sleep(0.3)
    wait_for_events(c, events)
    assert events == [("a", 1, "expired")]


def test_cause_expired_cache_wide_on_first_run_pending_tasks() -> None:
    events, listener = recorder()
    c: Moka[str, int] = Moka(10, eviction_listener=listener, ttl=0.1)
    c.set("a", 1)
    time.sleep(0.4)
    c.run_pending_tasks()
    assert events == [("a", 1, "expired")]


def test_notifications_delivered_on_calling_thread_before_return() -> None:
    seen: list[tuple[Any, str, int]] = []

    def listener(k: Any, v: Any, cause: str) -> None:
        seen.append((k, cause, threading.get_ident()))

    c: Moka[str, int] = Moka(2, eviction_listener=listener, policy="lru")
    problems: list[str] = []

    def check(label: str, since: int, expected: tuple[str, str]) -> None:
        """`expected` (key, cause) was delivered on this thread since `seen[since]`."""
        me = threading.get_ident()
        if (*expected, me) not in seen[since:]:
            problems.append(f"{label}: {expected} not delivered on thread {me}: {seen[since:]}")

    def worker() -> None:
        c.set("r", 1)
        mark = len(seen)
        c.set("r", 2)
        check("set (replace)", mark, ("r", "replaced"))
        mark = len(seen)
        c.remove("r")
        check("remove", mark, ("r", "explicit"))
        c["d"] = 1
        mark = len(seen)
        del c["d"]
        check("del", mark, ("d", "explicit"))
        c["x"] = 1
        mark = len(seen)
        c.clear()
        check("clear", mark, ("x", "explicit"))
        short: Moka[str, int] = Moka(10, ttl=0.05, eviction_listener=listener)
        short.set("e", 1)
        time.sleep(0.3)
        mark = len(seen)
        short.run_pending_tasks()
        check("run_pending_tasks", mark, ("e", "expired"))
        mark = len(seen)
        for i in range(20):
            c.set(f"s{i}", i)
        me = threading.get_ident()
        size = [s for s in seen[mark:] if s[1] == "size"]
        if not size or any(ident != me for _, _, ident in size):
            problems.append(f"size: {seen[mark:]}")

    for _ in range(2):
        t = threading.Thread(target=worker)
        t.start()
        t.join(30)
        assert not t.is_alive()
        c.clear()
    assert problems == []
    main = threading.get_ident()
    # The main thread only called clear().
    assert {cause for _, cause, ident in seen if ident == main} == {"explicit"}


def test_listener_reentrant_calls_do_not_deadlock(
    run_threads: Callable[..., list[Any]],
) -> None:
    calls = [0]
    lock = threading.Lock()

    def listener(k: Any, v: Any, cause: str) -> None:
        with lock:
            calls[0] += 1
        c.get(k)
        c.get("other")
        _ = k in c
        if isinstance(v, int):
            # Same key and other keys, set and remove, from inside the listener.
            # Values written here are tuples, so the cascade stops.
            c.set(k, ("from-listener", v))
            c.set(("echo", k), ("echo", v))
            c.remove(("echo", k))
            if cause != "explicit":
                c.remove(k)
            c.get_with(("loaded", v % 5), lambda: ("loaded", v))
        len(c)

    c: Moka[Any, Any] = Moka(20, eviction_listener=listener)

    def work(i: int) -> None:
        for n in range(300):
            k = (i * 1000 + n) % 60
            c.set(k, n)
            if n % 3 == 0:
                c.remove(k)
            if n % 5 == 0:
                c.set(k, n + 1)
            if n % 50 == 0:
                c.clear()

    run_threads(work, 4)
    c.clear()
    assert calls[0] > 0


def test_listener_same_key_set_on_single_thread() -> None:
    log: list[tuple[Any, str]] = []

    def listener(k: Any, v: Any, cause: str) -> None:
        log.append((k, cause))
        if cause == "explicit" and v == "first":
            c.set(k, "from-listener")

    c: Moka[str, str] = Moka(10, eviction_listener=listener)
    c.set("k", "first")
    assert c.remove("k") == "first"
    assert c.get("k") == "from-listener"
    assert log == [("k", "explicit")]


class ListenerBoom(Exception):
    pass


@pytest.mark.thread_unsafe  # swaps the process-wide sys.unraisablehook
def test_raising_listener_goes_to_unraisablehook(unraisable: list[Unraisable]) -> None:
    calls: list[str] = []

    def listener(k: Any, v: Any, cause: str) -> None:
        calls.append(cause)
        raise ListenerBoom(f"listener failed for {k!r}")

    c: Moka[str, int] = Moka(2, eviction_listener=listener, policy="lru")
    c.set("a", 1)
    c.set("a", 2)  # replaced
    assert c.remove("a") == 2  # explicit
    for i in range(10):  # size
        c.set(f"k{i}", i)
    c["d"] = 1
    del c["d"]
    c.clear()
    short: Moka[str, int] = Moka(10, ttl=0.05, eviction_listener=listener)
    short.set("e", 1)
    time.sleep(0.3)
    short.run_pending_tasks()  # expired
    assert short.get("e") is None
    assert set(calls) == {"replaced", "explicit", "size", "expired"}
    assert len(unraisable) == len(calls)
    assert all(u.exc_type is ListenerBoom for u in unraisable)
    assert all(isinstance(u.exc_value, ListenerBoom) for u in unraisable)
    assert "listener failed for 'a'" in str(unraisable[0].exc_value)
    # The cache keeps working and no error is left pending.
    c.set("z", 26)
    assert c.get("z") == 26
    assert c.count() == 1


def test_raising_listener_in_threads_no_system_error(
    unraisable: list[Unraisable], run_threads: Callable[..., list[Any]]
) -> None:
    def listener(k: Any, v: Any, cause: str) -> None:
        raise ListenerBoom(cause)

    c: Moka[int, int] = Moka(10, eviction_listener=listener)

    def work(i: int) -> None:
        for n in range(500):
            c.set(n % 40, n)
            c.get((n * 7) % 40)
            if n % 4 == 0:
                c.remove(n % 40)

    run_threads(work, 4)
    c.clear()
    assert unraisable
    assert all(u.exc_type is ListenerBoom for u in unraisable)
    assert not any(issubclass(u.exc_type, SystemError) for u in unraisable)


def test_listener_may_be_a_bound_method() -> None:
    class Owner:
        def __init__(self) -> None:
            self.seen: list[str] = []

        def on_evict(self, k: str, v: int, cause: str) -> None:
            self.seen.append(cause)

    owner = Owner()
    c: Moka[str, int] = Moka(10, eviction_listener=owner.on_evict)
    c.set("a", 1)
    c.set("a", 2)
    c.remove("a")
    assert owner.seen == ["replaced", "explicit"]


def test_listener_not_called_for_get_with_errors_or_misses() -> None:
    events, listener = recorder()
    c: Moka[str, int] = Moka(10, eviction_listener=listener)
    c.get("missing")
    c.remove("missing")
    with pytest.raises(ZeroDivisionError):
        c.get_with("k", lambda: 1 // 0)
    assert events == []
