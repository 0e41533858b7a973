"""Garbage collection: the cache releases what it no longer holds, and reference
cycles through it (a value or the eviction listener that refers back to the
cache) are collected.
"""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest
from support import PyKey, collect_on_pypy, cpython_cycles, run_isolated

from moka_py import Moka


class Value:
    """A weak-referenceable value that may hold a reference to anything."""

    def __init__(self, ref: Any = None) -> None:
        self.ref = ref


class Owner:
    """Holds a cache whose eviction listener is one of its bound methods."""

    def __init__(self) -> None:
        self.evicted: list[Any] = []
        self.cache: Moka[Any, Any] = Moka(10, eviction_listener=self.on_evict)

    def on_evict(self, k: Any, v: Any, cause: str) -> None:
        self.evicted.append(k)


KEYS = {
    "str": lambda i: f"key-{i}",
    "int": lambda i: i,
    "tuple": lambda i: ("k", i, b"x"),
    "frozenset": lambda i: frozenset({i, -1}),
    "python-eq": PyKey,
    "big-int": lambda i: 2**70 + i,
}


def collect() -> None:
    for _ in range(3):
        gc.collect()


# Values are released through moka's concurrent hash table, whose memory
# reclamation may be deferred: one trial can pass by luck, so each test repeats
# its scenario on fresh caches of varying sizes.
TRIALS = 400


def fill(c: Moka[Any, Value], make_key: Any, n: int) -> list[weakref.ref[Value]]:
    refs = []
    for i in range(n):
        v = Value()
        refs.append(weakref.ref(v))
        c.set(make_key(i), v)
    return refs


@pytest.mark.thread_unsafe
@pytest.mark.parametrize("kind", ["str", "python-eq"])
def test_clear_releases_values(kind: str) -> None:
    make_key = KEYS[kind]
    for trial in range(TRIALS):
        n = 1 + trial % 37
        c: Moka[Any, Value] = Moka(100)
        refs = fill(c, make_key, n)
        assert all(r() is not None for r in refs)
        c.clear()
        c.run_pending_tasks()
        collect_on_pypy()
        alive = sum(1 for r in refs if r() is not None)
        assert alive == 0, f"trial {trial}: {alive} of {n} values alive after clear()"


@pytest.mark.thread_unsafe
@pytest.mark.parametrize("how", ["remove", "del", "replace"])
def test_remove_releases_values(how: str) -> None:
    make_key = KEYS["tuple"]
    for trial in range(TRIALS):
        n = 1 + trial % 37
        c: Moka[Any, Value | None] = Moka(100)
        refs = fill(c, make_key, n)
        for i in range(n):
            if how == "remove":
                assert c.remove(make_key(i)) is refs[i]()
            elif how == "del":
                del c[make_key(i)]
            else:
                c.set(make_key(i), None)
        c.run_pending_tasks()
        collect_on_pypy()
        alive = sum(1 for r in refs if r() is not None)
        assert alive == 0, f"trial {trial}: {alive} of {n} values alive after {how}"


@pytest.mark.thread_unsafe
def test_evicted_values_are_released() -> None:
    c: Moka[int, Value] = Moka(5, policy="lru")
    refs = []
    for i in range(50):
        v = Value()
        refs.append(weakref.ref(v))
        c.set(i, v)
    del v
    c.run_pending_tasks()
    collect()
    alive = [r for r in refs if r() is not None]
    assert len(alive) <= 5


def test_removed_keys_retention_is_bounded() -> None:
    """moka's hash table keeps a removed key in a tombstone until the slot is
    reused or the table is resized (documented in the README): the number of
    removed keys still referenced stays bounded, whatever the traffic."""
    c: Moka[PyKey, int] = Moka(100)
    refs = []
    for i in range(20_000):
        k = PyKey(i)
        refs.append(weakref.ref(k))
        c.set(k, i)
        assert c.remove(k) == i
    del k
    c.run_pending_tasks()
    collect()
    alive = sum(r() is not None for r in refs)
    assert alive <= 2_000, alive


def test_dropping_the_cache_releases_everything() -> None:
    c: Moka[str, Value] = Moka(100)
    v = Value()
    ref = weakref.ref(v)
    c.set("k", v)
    del v, c
    collect()
    assert ref() is None


def test_cache_supports_weakref() -> None:
    c: Moka[str, int] = Moka(10)
    ref = weakref.ref(c)
    assert ref() is c
    del c
    collect()
    assert ref() is None


# Keys compared in Rust. A cache that has seen a key compared by Python's
# `__eq__` is not traversed by the GC (see test_python_eq_keys_are_not_traversed).
NATIVE_KEYS = [kind for kind in KEYS if kind not in ("frozenset", "python-eq")]


@cpython_cycles
@pytest.mark.parametrize("kind", NATIVE_KEYS)
def test_cycle_through_value_is_collected(kind: str) -> None:
    make_key = KEYS[kind]
    c: Moka[Any, Value] = Moka(100)
    v = Value(c)
    for i in range(10):
        c.set(make_key(i), Value())
    c.set(make_key(10), v)
    value_ref = weakref.ref(v)
    del v, c
    collect()
    assert value_ref() is None


@cpython_cycles
@pytest.mark.parametrize("kind", ["str", "tuple"])
def test_cycle_through_value_is_collected_weakref_to_cache(kind: str) -> None:
    make_key = KEYS[kind]
    c: Moka[Any, Value] = Moka(100)
    for i in range(10):
        c.set(make_key(i), Value())
    c.set(make_key(10), Value(c))
    cache_ref = weakref.ref(c)
    del c
    collect()
    assert cache_ref() is None


@pytest.mark.parametrize("kind", ["frozenset", "python-eq"])
def test_python_eq_keys_are_not_traversed(kind: str) -> None:
    """Walking moka's table in the GC may wait on its resize lock, whose holder
    may need the interpreter to compare such keys; so the GC does not walk a
    cache that has seen them (documented); clear() breaks such a cycle."""
    make_key = KEYS[kind]
    c: Moka[Any, Value] = Moka(100)
    for i in range(10):
        c.set(make_key(i), Value())
    v = Value(c)
    c.set(make_key(10), v)
    value_ref = weakref.ref(v)
    del v
    c.clear()
    collect()
    assert value_ref() is None


@cpython_cycles
def test_cycle_through_listener_is_collected() -> None:
    owner = Owner()
    owner.cache.set("k", Value())
    owner_ref = weakref.ref(owner)
    del owner
    collect()
    assert owner_ref() is None


@cpython_cycles
def test_cycle_through_listener_is_collected_weakref_to_cache() -> None:
    owner = Owner()
    owner.cache.set("k", Value())
    cache_ref = weakref.ref(owner.cache)
    del owner
    collect()
    assert cache_ref() is None


@cpython_cycles
def test_cycle_through_weigher_is_collected() -> None:
    class Weighing:
        def __init__(self) -> None:
            self.cache: Moka[str, int] = Moka(100, weigher=self.weigh)

        def weigh(self, k: str, v: int) -> int:
            return 1

    w = Weighing()
    w.cache.set("k", 1)
    ref = weakref.ref(w)
    del w
    collect()
    assert ref() is None


@cpython_cycles
def test_collector_does_not_call_the_listener() -> None:
    calls: list[Any] = []

    class Holder:
        pass

    holder = Holder()
    holder.cache = Moka(10, eviction_listener=lambda k, v, c: calls.append(k))  # type: ignore[attr-defined]
    holder.cache.set("k", Value(holder))  # type: ignore[attr-defined]
    ref = weakref.ref(holder)
    del holder
    collect()
    assert ref() is None
    assert calls == []


def test_cache_usable_after_gc_with_python_keys() -> None:
    c: Moka[Any, int] = Moka(100)
    for i in range(50):
        c.set(PyKey(i), i)
    collect()
    assert all(c.get(PyKey(i)) == i for i in range(50))
    assert c.count() == 50


def scenario_gc_visit_with_python_keys() -> None:
    c: Moka[Any, Value] = Moka(100)
    for i in range(30):
        c.set(PyKey(i), Value())
    collect()
    assert c.count() == 30
    c.set(PyKey(99), Value(c))
    del c
    collect()


def test_gc_visit_does_not_panic() -> None:
    """The collector's visit of a cache (`__traverse__`) must not run Python code:
    a Rust panic there is caught by PyO3 and printed on stderr, and leaves the visit
    incomplete. Run in a child interpreter to see its stderr on its own."""
    run_isolated(scenario_gc_visit_with_python_keys)
