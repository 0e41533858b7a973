"""Model-based tests: random sequences of operations on a `Moka`, checked step by
step against a plain-Python model (hypothesis stateful testing).

`ModelMachine` uses a capacity large enough that nothing is evicted, so the cache
must behave exactly like a `dict`. `BoundedMachine` uses a small capacity (with
or without a weigher, under both policies): there the model cannot predict which
entries survive, so it checks what must hold whatever the policy decides:

* the size (or total weight) never exceeds `capacity + slack`, right after each
  write, without calling `run_pending_tasks()` (the slack is the documented
  `capacity // 32`);
* a read returns the value most recently written for that key, or nothing;
* the listener only ever sees a value with the key it was written under, once;
* at the end, every value ever written is either still in the cache or was
  passed to the listener, never both.

Keys mix every kind the cache treats differently: ints, floats (NaN included),
`str`, `bytes`, tuples, objects equal to but distinct from earlier ones, and user
objects with a custom `__hash__`/`__eq__` (some colliding, some equal to ints).

The fast profile (the default) takes a few seconds; set `MOKA_TEST_PROFILE=long`
for a run a hundred times longer.
"""

from __future__ import annotations

import faulthandler
import os
import sys
from collections import Counter
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from support import WATCHDOG_SECONDS, PyKey

from moka_py import Moka

LONG = os.environ.get("MOKA_TEST_PROFILE") == "long"

PROFILE = settings(
    max_examples=2000 if LONG else 200,
    stateful_step_count=100 if LONG else 40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# The long profile runs for minutes: past the suite's 120 s per-test timeout,
# and past conftest's watchdog, which each example re-arms instead.
pytestmark = [pytest.mark.timeout(3600)] if LONG else []


def rearm_watchdog() -> None:
    if LONG:
        stderr = sys.__stderr__
        assert stderr is not None
        faulthandler.dump_traceback_later(WATCHDOG_SECONDS, exit=True, file=stderr)


MISSING: Any = object()


# --- keys ---------------------------------------------------------------------


class IntLike:
    """A user number equal to (and hashing like) the int `n`: one key with `n`,
    `float(n)` and, for 0 and 1, `False` and `True`. Like NumPy's integers it
    has `__index__`, by which moka_py finds the int it equals (see the README's
    limits for objects equal to a native key without it)."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n

    def __hash__(self) -> int:
        return hash(self.n)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, IntLike):
            return other.n == self.n
        if isinstance(other, (int, float)):
            return other == self.n
        return False

    def __index__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"IntLike({self.n})"


def fresh_str(s: str) -> str:
    """An equal `str` that is (for two characters or more) a distinct object."""
    return "".join(["k", s])


def fresh_int(n: int) -> int:
    """An equal `int` outside CPython's small-int cache, so a distinct object."""
    return int(str(10**6 + n))


scalar_keys = st.one_of(
    st.integers(min_value=-3, max_value=3),
    st.sampled_from([2**63 - 1, 2**63, -(2**63), 2**70]),
    st.integers(min_value=0, max_value=4).map(fresh_int),
    st.integers(min_value=-2, max_value=2).map(float),
    st.sampled_from([0.5, -0.0, float("inf"), float("nan")]),
    st.booleans(),
    st.none(),
    st.text(alphabet="ab\u00e9\U0001f980", max_size=2).map(fresh_str),
    st.binary(max_size=2),
)

keys = st.one_of(
    scalar_keys,
    st.tuples(scalar_keys, scalar_keys),
    st.tuples(st.integers(min_value=0, max_value=2), st.integers(0, 5).map(PyKey)),
    st.integers(min_value=0, max_value=7).map(PyKey),
    st.integers(min_value=-1, max_value=2).map(IntLike),
)


class Value:
    """A value remembers the key it was written under; identity tells values apart."""

    __slots__ = ("key", "serial", "weight")

    def __init__(self, key: Any, serial: int, weight: int = 1) -> None:
        self.key = key
        self.serial = serial
        self.weight = weight

    def __repr__(self) -> str:
        return f"Value({self.key!r}, #{self.serial}, w={self.weight})"


class LoadFailed(Exception):
    pass


def failing_loader() -> Value:
    raise LoadFailed("the loader failed")


# --- large capacity: the cache is a dict ----------------------------------------


class ModelMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        rearm_watchdog()
        self.cache: Moka[Any, Value] = Moka(100_000)
        self.model: dict[Any, Value] = {}
        self.serial = 0

    def value(self, key: Any) -> Value:
        self.serial += 1
        return Value(key, self.serial)

    @rule(key=keys, via_setitem=st.booleans())
    def set(self, key: Any, via_setitem: bool) -> None:
        v = self.value(key)
        if via_setitem:
            self.cache[key] = v
        else:
            self.cache.set(key, v)
        self.model[key] = v

    @rule(key=keys)
    def get(self, key: Any) -> None:
        assert self.cache.get(key, MISSING) is self.model.get(key, MISSING)
        expected = self.model.get(key)
        assert self.cache.get(key) is expected

    @rule(key=keys)
    def getitem(self, key: Any) -> None:
        if key in self.model:
            assert self.cache[key] is self.model[key]
        else:
            with pytest.raises(KeyError) as info:
                self.cache[key]
            assert info.value.args[0] is key

    @rule(key=keys)
    def get_with(self, key: Any) -> None:
        calls: list[Value] = []

        def load() -> Value:
            calls.append(self.value(key))
            return calls[-1]

        got = self.cache.get_with(key, load)
        if key in self.model:
            assert calls == []
            assert got is self.model[key]
        else:
            assert len(calls) == 1
            assert got is calls[0]
            self.model[key] = got

    @rule(key=keys)
    def get_with_failing_loader(self, key: Any) -> None:
        if key in self.model:
            assert self.cache.get_with(key, failing_loader) is self.model[key]
        else:
            with pytest.raises(LoadFailed):
                self.cache.get_with(key, failing_loader)
            assert key not in self.cache

    @rule(key=keys)
    def remove(self, key: Any) -> None:
        assert self.cache.remove(key, MISSING) is self.model.pop(key, MISSING)

    @rule(key=keys)
    def delitem(self, key: Any) -> None:
        if key in self.model:
            del self.cache[key]
            del self.model[key]
        else:
            with pytest.raises(KeyError):
                del self.cache[key]

    @rule(key=keys)
    def contains(self, key: Any) -> None:
        assert (key in self.cache) is (key in self.model)

    @rule()
    def clear(self) -> None:
        self.cache.clear()
        self.model.clear()

    @rule()
    def length(self) -> None:
        assert len(self.cache) == len(self.model)
        assert self.cache.count() == len(self.model)

    @rule()
    def iterate(self) -> None:
        check_same_contents(self.cache, self.model)

    def teardown(self) -> None:
        check_same_contents(self.cache, self.model)
        assert len(self.cache) == len(self.model)


def check_same_contents(cache: Moka[Any, Value], model: dict[Any, Value]) -> None:
    keys = list(cache)
    assert len(keys) == len(model), (keys, model)
    assert all(k in model for k in keys)
    assert all(k in cache for k in model)
    assert Counter(map(id, cache.values())) == Counter(map(id, model.values()))
    items = cache.items()
    assert len(items) == len(model)
    for k, v in items:
        assert model[k] is v
    assert len(cache.keys()) == len(model)


def test_model_large_capacity() -> None:
    run_state_machine_as_test(ModelMachine, settings=PROFILE)


# --- small capacity: the bound, and no value read that was not written ------------


class BoundedMachine(RuleBasedStateMachine):
    cache: Moka[Any, Value]

    def __init__(self) -> None:
        super().__init__()
        rearm_watchdog()
        self.latest: dict[Any, Value] = {}
        # Every value ever written (kept alive so that ids stay unique).
        self.written: list[Value] = []
        self.notified: list[tuple[Any, Value, str]] = []
        self.serial = 0

    @initialize(
        capacity=st.integers(min_value=1, max_value=40),
        policy=st.sampled_from(["tiny_lfu", "lru"]),
        weighted=st.booleans(),
    )
    def build(self, capacity: int, policy: Literal["tiny_lfu", "lru"], weighted: bool) -> None:
        self.capacity = capacity
        self.weighted = weighted
        self.slack = capacity // 32
        self.cache = Moka(
            capacity,
            policy=policy,
            eviction_listener=self.listener,
            weigher=(lambda k, v: v.weight) if weighted else None,
        )

    def listener(self, key: Any, value: Value, cause: str) -> None:
        self.notified.append((key, value, cause))

    def value(self, key: Any, weight: int) -> Value:
        self.serial += 1
        v = Value(key, self.serial, weight if self.weighted else 1)
        self.written.append(v)
        return v

    def check_read(self, key: Any, got: Any) -> None:
        """A read returns the latest value written under `key`, or nothing."""
        if got is not MISSING:
            assert key in self.latest, (key, got)
            assert got is self.latest[key], (key, got, self.latest[key])

    @rule(key=keys, weight=st.integers(min_value=0, max_value=4))
    def set(self, key: Any, weight: int) -> None:
        v = self.value(key, weight)
        self.cache.set(key, v)
        self.latest[key] = v

    @rule(key=keys)
    def get(self, key: Any) -> None:
        self.check_read(key, self.cache.get(key, MISSING))

    @rule(key=keys, weight=st.integers(min_value=0, max_value=4))
    def get_with(self, key: Any, weight: int) -> None:
        loaded: list[Value] = []

        def load() -> Value:
            loaded.append(self.value(key, weight))
            return loaded[-1]

        got = self.cache.get_with(key, load)
        if loaded:
            assert got is loaded[0]
            self.latest[key] = got
        else:
            self.check_read(key, got)

    @rule(key=keys)
    def remove(self, key: Any) -> None:
        self.check_read(key, self.cache.remove(key, MISSING))
        self.latest.pop(key, None)
        assert key not in self.cache
        assert self.cache.get(key, MISSING) is MISSING

    @rule(key=keys)
    def contains(self, key: Any) -> None:
        if key in self.cache:
            assert key in self.latest

    @rule()
    def clear(self) -> None:
        self.cache.clear()
        self.latest.clear()
        assert len(self.cache) == 0
        assert self.cache.keys() == []

    @rule()
    def run_pending_tasks(self) -> None:
        self.cache.run_pending_tasks()
        assert self.cache.weighted_size() <= self.capacity

    @invariant()
    def bounded(self) -> None:
        """Checked after every step, without running pending tasks."""
        items = self.cache.items()
        size = sum(v.weight for _, v in items) if self.weighted else len(items)
        assert size <= self.capacity + self.slack, (size, self.capacity, items)
        for k, v in items:
            self.check_read(k, v)

    @invariant()
    def notifications_are_written_values(self) -> None:
        for k, v, cause in self.notified:
            assert cause in ("explicit", "replaced", "size")
            assert k == v.key or k is v.key, (k, v)
        counts = Counter(id(v) for _, v, _ in self.notified)
        assert all(n == 1 for n in counts.values()), "a value was notified twice"

    def teardown(self) -> None:
        self.cache.run_pending_tasks()
        present = Counter(id(v) for v in self.cache.values())
        notified = Counter(id(v) for _, v, _ in self.notified)
        assert not present & notified, "a value is both in the cache and notified"
        assert +(present + notified) == Counter(id(v) for v in self.written)


def test_model_small_capacity() -> None:
    run_state_machine_as_test(BoundedMachine, settings=PROFILE)
