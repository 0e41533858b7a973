"""Hostile input: keys, weighers, listeners and initializers that misbehave. Each
case gets a clear exception (or `dict`'s behaviour), and the cache stays usable.

Already covered elsewhere, not repeated here: a `__hash__` or `__eq__` that
raises on set/get/remove/in (test_moka_basic.py), `__eq__` returning truthy or
falsy non-bools (ibid.), weighers that raise or return negative, huge or
non-int weights (test_moka_eviction.py), a listener that raises an `Exception`
(ibid.), `KeyboardInterrupt`/`SystemExit` from a single `get_with` initializer
(test_moka_get_with.py), and out-of-range or mistyped `ttl`/`tti`/capacity
(test_moka_options.py).

Scenarios that could hang or crash the interpreter run in a child interpreter
(`run_isolated`).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from support import run_isolated, run_threads

from moka_py import Moka, cached


class Boom(Exception):
    pass


T = TypeVar("T")


def counting(calls: list[int], result: T) -> Callable[[], T]:
    """An initializer that records its calls in `calls` and returns `result`."""

    def init() -> T:
        calls.append(1)
        return result

    return init


def assert_usable(c: Moka[Any, Any]) -> None:
    """The cache still stores, finds and removes entries, and has no error pending."""
    c.set("after", 1)
    assert c.get("after") == 1
    assert "after" in c
    assert c.get_with("loaded-after", lambda: 2) == 2
    assert c.remove("after") == 1
    assert c.remove("loaded-after") == 2
    c.run_pending_tasks()


# --- keys: __hash__ -----------------------------------------------------------------


class VaryingHash:
    """A different hash at every call."""

    def __init__(self) -> None:
        self.calls = 0

    def __hash__(self) -> int:
        self.calls += 1
        return self.calls * 1_000_003


def run_ops(target: Any, key: Any) -> list[Any]:
    """The same operations on a `Moka` or a `dict`; returns what they observed."""
    seen: list[Any] = []
    target[key] = "a"
    target[key] = "b"
    seen.append(len(target))
    seen.append(key in target)
    seen.append(target.get(key, "missing"))
    seen.append(sorted(v for v in target.values()))
    seen.append(sum(1 for k in target if k is key))
    return seen


def test_varying_hash_behaves_like_dict() -> None:
    """Each lookup uses a new hash, so the key is never found again; like `dict`."""
    c: Moka[Any, str] = Moka(10)
    expected = run_ops({}, VaryingHash())
    assert run_ops(c, VaryingHash()) == expected
    c.clear()
    assert len(c) == 0
    assert_usable(c)


class Mutable:
    """A key whose hash follows a mutable field."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __hash__(self) -> int:
        return hash(self.n)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mutable) and other.n == self.n


def test_key_mutated_after_insert_behaves_like_dict() -> None:
    c: Moka[Any, str] = Moka(10)
    d: dict[Any, str] = {}
    for target in (c, d):
        k = Mutable(1)
        target[k] = "v"
        k.n = 2
        assert (k in target) is False
        assert (Mutable(1) in target) is False  # hash matches, __eq__ does not
        assert target.get(Mutable(2)) is None
        assert len(target) == 1
        target[k] = "w"  # stored again under the new hash
        assert len(target) == 2
    assert sorted(c.values()) == sorted(d.values())
    c.clear()
    assert len(c) == 0
    assert_usable(c)


class HashReturns:
    def __init__(self, value: Any) -> None:
        self.value = value

    def __hash__(self) -> Any:
        return self.value


@pytest.mark.parametrize("value", ["x", 1.5, None, [1]])
def test_hash_returning_non_int_is_type_error(value: Any) -> None:
    c: Moka[Any, int] = Moka(10)
    key = HashReturns(value)
    calls: list[int] = []
    ops: list[Callable[[], object]] = [
        lambda: c.set(key, 1),
        lambda: c.get(key),
        lambda: key in c,
        lambda: c.remove(key),
        lambda: c.get_with(key, counting(calls, 1)),
    ]
    for op in ops:
        with pytest.raises(TypeError, match="__hash__"):
            op()
    assert calls == []
    assert len(c) == 0
    assert_usable(c)


@pytest.mark.parametrize("value", [-1, 2**100, -(2**100), 2**64 - 1], ids=str)
def test_hash_returning_odd_ints_works(value: int) -> None:
    """Python reduces these hashes (-1 becomes -2, big ints are folded)."""
    c: Moka[Any, int] = Moka(10)
    key = HashReturns(value)
    c.set(key, 1)
    assert c.get(key) == 1
    assert key in c
    assert c.get_with(key, lambda: 2) == 1
    assert c.remove(key) == 1
    assert_usable(c)


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit], ids=lambda e: e.__name__)
def test_hash_raising_base_exception_propagates(exc: type[BaseException]) -> None:
    class Key:
        def __hash__(self) -> int:
            raise exc

    c: Moka[Any, int] = Moka(10)
    calls: list[int] = []
    with pytest.raises(exc):
        c.set(Key(), 1)
    with pytest.raises(exc):
        c.get_with(Key(), counting(calls, 1))
    assert calls == []
    assert len(c) == 0
    assert_usable(c)


# --- keys: __eq__ ----------------------------------------------------------------------


class Colliding:
    """Hashes like 42; comparing raises when either side has `raising` set."""

    def __init__(self, n: int, raising: bool = False) -> None:
        self.n = n
        self.raising = raising

    def __hash__(self) -> int:
        return 42

    def __eq__(self, other: object) -> bool:
        if self.raising or getattr(other, "raising", False):
            raise Boom(f"cannot compare {self.n}")
        return isinstance(other, Colliding) and other.n == self.n

    def __repr__(self) -> str:
        return f"Colliding({self.n})"


def test_eq_raising_in_get_with_lookup() -> None:
    c: Moka[Any, str] = Moka(10)
    c.set(Colliding(1), "one")
    calls: list[int] = []
    probe = Colliding(2, raising=True)
    with pytest.raises(Boom):
        c.get_with(probe, counting(calls, "two"))
    assert calls == []
    probe.raising = False
    assert c.get_with(probe, lambda: "two") == "two"
    assert c.get(Colliding(1)) == "one"
    assert len(c) == 2
    assert_usable(c)


def scenario_eq_raising_while_another_load_is_in_flight() -> None:
    """The key's `__eq__` raises while `get_with` looks for an in-flight load of a
    colliding key: the call raises, and leaves nothing behind that a later call
    of the same key (on this thread or another) would wait for."""
    c: Moka[Any, str] = Moka(10)
    started, release = threading.Event(), threading.Event()
    results: list[str] = []

    def slow() -> str:
        started.set()
        release.wait(20)
        return "first"

    loader = threading.Thread(
        target=lambda: results.append(c.get_with(Colliding(1), slow)), daemon=True
    )
    loader.start()
    assert started.wait(10)
    try:
        probe = Colliding(2, raising=True)
        try:
            c.get_with(probe, lambda: "never")
        except Boom:
            pass
        else:
            raise AssertionError("get_with did not raise the exception of __eq__")
        probe.raising = False
        # While the other load is still running:
        assert c.get_with(probe, lambda: "same thread") == "same thread"
        assert c.remove(probe) == "same thread"
        other: list[str] = []
        t = threading.Thread(target=lambda: other.append(c.get_with(probe, lambda: "other")))
        t.daemon = True
        t.start()
        t.join(10)
        assert not t.is_alive(), "get_with waits for a load that nobody runs"
        assert other == ["other"]
    finally:
        release.set()
    loader.join(10)
    assert results == ["first"]
    assert c.get(Colliding(1)) == "first"


def test_eq_raising_while_another_load_is_in_flight() -> None:
    run_isolated(scenario_eq_raising_while_another_load_is_in_flight)


class BadBool:
    def __bool__(self) -> bool:
        raise Boom("no truth value")


class EqReturnsBadBool:
    def __hash__(self) -> int:
        return 7

    def __eq__(self, other: object) -> Any:
        return BadBool()


def test_eq_result_whose_bool_raises() -> None:
    c: Moka[Any, int] = Moka(10)
    resident = EqReturnsBadBool()
    c.set(resident, 1)
    with pytest.raises(Boom, match="no truth value"):
        c.get(EqReturnsBadBool())
    with pytest.raises(Boom):
        EqReturnsBadBool() in c  # noqa: B015
    with pytest.raises(Boom):
        c.set(EqReturnsBadBool(), 2)
    assert c.get(resident) == 1  # found by identity
    assert len(c) == 1
    assert_usable(c)


class EqNotImplemented:
    def __hash__(self) -> int:
        return 7

    def __eq__(self, other: object) -> bool:
        return NotImplemented


def test_eq_not_implemented_falls_back_to_identity() -> None:
    c: Moka[Any, int] = Moka(10)
    a, b = EqNotImplemented(), EqNotImplemented()
    c.set(a, 1)
    c.set(b, 2)
    assert (c.get(a), c.get(b), len(c)) == (1, 2, 2)
    assert c.get(EqNotImplemented()) is None
    assert_usable(c)


def scenario_deeply_nested_tuple_key() -> None:
    """A key that `hash()` and `dict` accept must not crash the cache (a Rust
    stack overflow kills the process); it works, or raises RecursionError."""
    key: tuple[Any, ...] = ()
    for _ in range(100_000):
        key = (key,)
    try:
        assert {key: 1}[key] == 1
    except RecursionError:
        pass  # PyPy: hash() of such a tuple recurses in Python code, and its limit stops it
    c: Moka[Any, int] = Moka(10)
    try:
        c.set(key, 1)
        assert c.get(key) == 1
        assert c.remove(key) == 1
    except RecursionError:
        pass
    assert_usable(c)


def test_deeply_nested_tuple_key() -> None:
    run_isolated(scenario_deeply_nested_tuple_key)


# --- the weigher ------------------------------------------------------------------------


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit], ids=lambda e: e.__name__)
def test_weigher_raising_base_exception(exc: type[BaseException]) -> None:
    def weigher(k: Any, v: Any) -> int:
        if k == "bad":
            raise exc
        return 1

    c: Moka[str, int] = Moka(10, weigher=weigher)
    with pytest.raises(exc):
        c.set("bad", 1)
    with pytest.raises(exc):
        c.get_with("bad", lambda: 1)
    assert "bad" not in c
    assert_usable(c)


def test_weigher_returning_int_subclass() -> None:
    class Weight(int):
        def __index__(self) -> int:
            raise Boom("not used")

    c: Moka[str, int] = Moka(100, weigher=lambda k, v: Weight(7))
    c.set("a", 1)
    c.set("b", 2)
    assert c.weighted_size() == 14
    assert_usable(c)


def test_weigher_failing_inside_coalesced_load_reaches_every_waiter() -> None:
    """The leader's insert fails (the weigher raises): every waiter gets the
    error, nothing is cached, the next call tries again."""
    fail = [True]

    def weigher(k: Any, v: Any) -> int:
        if fail[0] and k == "k":
            raise Boom("cannot weigh")
        return 1

    c: Moka[str, int] = Moka(10, weigher=weigher)
    gate = threading.Event()

    def init() -> int:
        gate.wait(10)
        return 5

    def work(i: int) -> str:
        if i == 0:
            threading.Timer(0.2, gate.set).start()
        try:
            c.get_with("k", init)
        except Boom as e:
            assert str(e) == "cannot weigh"
            return "failed"
        return "loaded"

    assert run_threads(work, 8) == ["failed"] * 8
    assert "k" not in c
    fail[0] = False
    assert c.get_with("k", lambda: 6) == 6
    assert_usable(c)


def scenario_weigher_reenters_the_cache() -> None:
    def weigher(k: Any, v: Any) -> int:
        if isinstance(k, str):
            c.get(k)
            c.set(("weighed", k), 0)
            c.remove(("weighed", "x"))
            _ = k in c
            len(c)
        return 1

    c: Moka[Any, int] = Moka(20, weigher=weigher, policy="lru")

    def work(i: int) -> None:
        for n in range(300):
            c.set(f"k{(i * 7 + n) % 40}", n)
            c.get_with(f"g{n % 30}", counting([], n))

    run_threads(work, 4)
    c.run_pending_tasks()
    assert c.weighted_size() <= 20
    assert_usable(c)


def test_weigher_reenters_the_cache() -> None:
    run_isolated(scenario_weigher_reenters_the_cache)


# --- the listener -------------------------------------------------------------------


def scenario_hostile_listeners() -> None:
    """Listeners that raise BaseException subclasses, take the wrong arguments,
    clear the cache, or drop the last reference to it."""
    unraisable: list[type[BaseException]] = []
    sys.unraisablehook = lambda args: unraisable.append(args.exc_type)
    calls: list[str] = []

    def raising(k: str, v: int, cause: str) -> None:
        calls.append(k)
        if k == "ki":
            raise KeyboardInterrupt
        if k == "exit":
            raise SystemExit(3)

    c: Moka[str, int] = Moka(10, eviction_listener=raising)
    for k in ("ki", "exit", "ok"):
        c.set(k, 1)
    c.clear()  # the operation completes; every notification is delivered
    assert sorted(calls) == ["exit", "ki", "ok"]
    assert sorted(e.__name__ for e in unraisable) == ["KeyboardInterrupt", "SystemExit"]
    assert_usable(c)

    unraisable.clear()
    wrong: Moka[str, int] = Moka(10, eviction_listener=lambda k, v: None)  # type: ignore[arg-type,misc]
    wrong.set("a", 1)
    assert wrong.remove("a") == 1
    assert unraisable == [TypeError]
    assert_usable(wrong)

    unraisable.clear()
    cleared: list[str] = []

    def clearing(k: str, v: int, cause: str) -> None:
        cleared.append(cause)
        c2.clear()

    c2: Moka[str, int] = Moka(3, eviction_listener=clearing)
    for i in range(10):
        c2.set(f"k{i}", i)
    c2.remove("k9")
    c2.clear()
    assert cleared
    assert len(c2) == 0
    c2.set("x", 1)
    assert c2.get("x") == 1

    class Holder:
        cache: Moka[str, int] | None = None

    holder = Holder()

    def dropping(k: str, v: int, cause: str) -> None:
        holder.cache = None  # the last reference but the one of the running call

    holder.cache = Moka(2, eviction_listener=dropping)
    n = 0
    while holder.cache is not None:
        holder.cache.set(f"k{n}", n)
        n += 1
        assert n < 100, "the listener was never called"
    assert unraisable == []


def test_hostile_listeners() -> None:
    run_isolated(scenario_hostile_listeners)


# --- initializers raising BaseException subclasses ------------------------------------


class Abort(BaseException):
    """A BaseException that is neither KeyboardInterrupt nor SystemExit."""


@pytest.mark.parametrize("exc", [SystemExit, Abort, GeneratorExit], ids=lambda e: e.__name__)
def test_base_exception_in_leader_lets_waiters_retry(exc: type[BaseException]) -> None:
    calls: list[int] = []
    lock = threading.Lock()
    gate = threading.Event()

    def init() -> str:
        with lock:
            calls.append(1)
            first = len(calls) == 1
        if first:
            gate.wait(10)
            raise exc
        return "value"

    c: Moka[str, str] = Moka(10)

    def work(i: int) -> str:
        if i == 0:
            threading.Timer(0.2, gate.set).start()
        try:
            return c.get_with("k", init)
        except exc:
            return "raised"

    results = run_threads(work, 8)
    assert results.count("raised") == 1
    assert results.count("value") == 7
    assert c.get("k") == "value"
    assert_usable(c)


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit], ids=lambda e: e.__name__)
@pytest.mark.parametrize("wait_concurrent", [False, True])
def test_cached_base_exception_propagates_and_is_not_cached(
    exc: type[BaseException], wait_concurrent: bool
) -> None:
    calls: list[int] = []

    @cached(wait_concurrent=wait_concurrent)
    def f(x: int) -> int:
        calls.append(x)
        if len(calls) == 1:
            raise exc
        return x * 2

    with pytest.raises(exc):
        f(1)
    assert f(1) == 2
    assert f(1) == 2
    assert calls == [1, 1]


def test_initializer_that_clears_the_cache() -> None:
    c: Moka[str, str] = Moka(10)
    c.set("other", "o")

    def init() -> str:
        c.clear()
        return "loaded"

    assert c.get_with("k", init) == "loaded"
    assert c.get("k") == "loaded"
    assert "other" not in c
    assert_usable(c)


def test_initializer_that_removes_its_key_while_others_wait() -> None:
    c: Moka[str, str] = Moka(10)
    gate = threading.Event()

    def init() -> str:
        gate.wait(10)
        c.remove("k")
        return "loaded"

    def work(i: int) -> str:
        if i == 0:
            threading.Timer(0.2, gate.set).start()
        return c.get_with("k", init)

    assert run_threads(work, 6) == ["loaded"] * 6
    assert c.get("k") == "loaded"


# --- absurd durations and capacities -----------------------------------------------


@pytest.mark.parametrize("seconds", [5e-324, 1e-12, 1e-9], ids=str)
def test_tiny_durations_expire_at_once(seconds: float) -> None:
    for kind in ("ttl", "tti"):
        c: Moka[int, int] = Moka(10, ttl=seconds) if kind == "ttl" else Moka(10, tti=seconds)
        c.set(1, 1)
        time.sleep(0.001)
        assert c.get(1) is None
        e: Moka[int, int] = Moka(10)
        if kind == "ttl":
            e.set(1, 1, ttl=seconds)
        else:
            e.set(1, 1, tti=seconds)
        time.sleep(0.001)
        assert 1 not in e
        assert len(c) == 0
        assert_usable(e)


def test_largest_capacity_with_clamped_weights() -> None:
    c: Moka[int, int] = Moka(2**64 - 1, weigher=lambda k, v: 2**70)
    for i in range(10):
        c.set(i, i)
    assert c.weighted_size() == 10 * (2**32 - 1)
    assert all(c.get(i) == i for i in range(10))
    assert_usable(c)


def test_float_subclass_durations_are_accepted() -> None:
    class Seconds(float):
        def __float__(self) -> float:
            raise Boom("not used")

    c: Moka[str, int] = Moka(10, ttl=Seconds(60.0), tti=Seconds(30.0))
    assert (c.ttl, c.tti) == (60.0, 30.0)
    c.set("k", 1, ttl=Seconds(10.0))
    assert c.get("k") == 1
    assert_usable(c)
