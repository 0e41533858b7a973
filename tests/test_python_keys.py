"""Keys of common types that compare with Python's `==` (not in Rust): `uuid.UUID`,
`datetime`, `date`, `Decimal`, `frozenset`, an `Enum` member, a frozen
dataclass, and a user class with `__eq__`/`__hash__` whose hashes collide.

The threaded scenarios run in a child interpreter (`run_isolated`): moka compares
such keys while it holds its locks, and a hang there may block the main thread.
Each thread works on keys of its own, checked exactly against a dict model of
that thread; all of them also share a few hot keys, whose values must be ones
that some thread wrote.
"""

from __future__ import annotations

import datetime
import enum
import gc
import random
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any, NamedTuple

import pytest
from support import PyKey, collect_on_pypy, run_isolated, run_threads

from moka_py import Moka

THREADS = 8
KEYS_PER_THREAD = 8
OPS_PER_THREAD = 250
HOT = range(100_000, 100_004)
MISSING = object()

Color = enum.Enum(
    "Color",
    [f"C{n}" for n in range(THREADS * KEYS_PER_THREAD)] + [f"H{n}" for n in range(len(HOT))],
)


@dataclass(frozen=True)
class Point:
    x: int
    label: str


EPOCH = datetime.datetime(2020, 1, 1, 12, 0, 0)
DAY0 = datetime.date(2000, 1, 1)


def color(n: int) -> Any:
    """Member C<n> for the threads' own keys, H<i> for the hot ones."""
    return Color[f"H{n - HOT.start}" if n in HOT else f"C{n}"]


KEY_TYPES: dict[str, Callable[[int], Any]] = {
    "uuid": lambda n: uuid.UUID(int=n),
    "datetime": lambda n: EPOCH + datetime.timedelta(seconds=n),
    "date": lambda n: DAY0 + datetime.timedelta(days=n),
    "decimal": lambda n: Decimal(n) + Decimal("0.25"),
    "frozenset": lambda n: frozenset({n, -n - 1}),
    "enum": color,
    "dataclass": lambda n: Point(n, "p"),
    "user-class": lambda n: PyKey(n, buckets=3),
}

# Types whose instances take weak references (the others are immutable
# built-ins without, or Enum members, which their class keeps alive).
WEAKREF_TYPES = ("uuid", "frozenset", "dataclass", "user-class")


def own_number(thread: int, j: int) -> int:
    return thread * KEYS_PER_THREAD + j


# --- threads on Python-compared keys -------------------------------------------------


class Checks:
    """What the listener and the threads saw that they should not have."""

    def __init__(self, make_key: Callable[[int], Any]) -> None:
        self.make_key = make_key
        self.lock = threading.Lock()
        self.problems: list[str] = []
        self.causes: dict[str, int] = {}

    def problem(self, text: str) -> None:
        with self.lock:
            self.problems.append(text)

    def listener(self, key: Any, value: Any, cause: str) -> None:
        # Keeps neither the key nor the value (the test checks they are freed).
        with self.lock:
            self.causes[cause] = self.causes.get(cause, 0) + 1
        if self.make_key(value[1]) != key:
            self.problem(f"listener: key {key!r} with the value {value!r} of another key")


def check_hot(value: Any, n: int, checks: Checks, where: str) -> None:
    if value is not None and not (isinstance(value, tuple) and value[0] == "hot" and value[1] == n):
        checks.problem(f"{where}: hot key {n} holds {value!r}")


def contents(c: Moka[Any, Any], checks: Checks) -> dict[int, Any]:
    """The cache's entries by key number (the values carry it), checking that
    each value sits under its own key. Keeps no key object."""
    found: dict[int, Any] = {}
    for k, v in c.items():
        if checks.make_key(v[1]) != k:
            checks.problem(f"items(): key {k!r} holds the value {v!r} of another key")
        if v[1] in found:
            checks.problem(f"items(): key {v[1]} appears twice")
        found[v[1]] = v
    return found


def released_after_threads(c: Moka[Any, Any], refs: list[weakref.ref[Any]]) -> list[Any]:
    """The key objects still alive once the cache has let go of everything.

    `Thread.join()` returns before a thread's native teardown: moka's memory
    reclamation may still hand entries that thread removed to the global queue
    afterwards, to be released by the next call on the cache. So look again
    (each call releases what has arrived) until none is alive or a deadline
    that only a real leak reaches."""
    deadline = time.monotonic() + 10.0
    while True:
        c.run_pending_tasks()
        gc.collect()
        alive = [r() for r in refs if r() is not None]
        if not alive or time.monotonic() > deadline:
            return alive
        del alive
        time.sleep(0.01)


def mixed_operations(kind: str, seed: int) -> None:
    """8 threads, a random mix of set/get/remove/get_with/in/del/[]; exact models of
    each thread's own keys; then every key object is freed after clear()."""
    make_key = KEY_TYPES[kind]
    checks = Checks(make_key)
    c: Moka[Any, tuple[Any, ...]] = Moka(10_000, eviction_listener=checks.listener)
    refs: list[weakref.ref[Any]] = []
    refs_lock = threading.Lock()

    def key(n: int) -> Any:
        k = make_key(n)
        if kind in WEAKREF_TYPES:
            with refs_lock:
                refs.append(weakref.ref(k))
        return k

    def work(i: int) -> tuple[dict[int, Any], list[Any]]:
        rng = random.Random(seed * 100 + i)
        model: dict[int, Any] = {}
        written_hot: list[Any] = []
        own = [own_number(i, j) for j in range(KEYS_PER_THREAD)]
        for op in range(OPS_PER_THREAD):
            r = rng.random()
            if r < 0.2:
                n = rng.choice(HOT)
                value = ("hot", n, i, op)
                if r < 0.1:
                    c.set(key(n), value)
                    written_hot.append(value)
                elif r < 0.14:
                    got = c.get_with(key(n), lambda value=value: value)
                    if got is value:
                        written_hot.append(value)
                    check_hot(got, n, checks, "get_with")
                elif r < 0.17:
                    check_hot(c.get(key(n)), n, checks, "get")
                elif r < 0.19:
                    check_hot(c.remove(key(n)), n, checks, "remove")
                else:
                    _ = key(n) in c
                continue
            n = rng.choice(own)
            value = ("own", n, i, op)
            expected = model.get(n, MISSING)
            if r < 0.4:
                c.set(key(n), value)
                model[n] = value
            elif r < 0.5:
                c[key(n)] = value
                model[n] = value
            elif r < 0.6:
                got = c.get(key(n), MISSING)
                if got != expected:
                    checks.problem(f"thread {i}: get({n}) = {got!r}, expected {expected!r}")
            elif r < 0.7:
                got = c.remove(key(n), MISSING)
                model.pop(n, None)
                if got != expected:
                    checks.problem(f"thread {i}: remove({n}) = {got!r}, expected {expected!r}")
            elif r < 0.8:
                got = c.get_with(key(n), lambda value=value: value)
                if expected is MISSING:
                    expected = value
                    model[n] = value
                if got != expected:
                    checks.problem(f"thread {i}: get_with({n}) = {got!r}, expected {expected!r}")
            elif r < 0.9:
                found = key(n) in c
                if found != (expected is not MISSING):
                    checks.problem(f"thread {i}: {n} in c = {found}, expected the opposite")
            else:
                try:
                    del c[key(n)]
                    deleted = True
                except KeyError:
                    deleted = False
                model.pop(n, None)
                if deleted != (expected is not MISSING):
                    checks.problem(f"thread {i}: del c[{n}] deleted={deleted}")
        return model, written_hot

    results = run_threads(work, THREADS)
    c.run_pending_tasks()
    expected: dict[int, Any] = {}
    for model, _ in results:
        expected.update(model)
    written = {v for _, hot in results for v in hot}
    actual = contents(c, checks)
    for n in HOT:
        got = actual.pop(n, None)
        if got is not None and got not in written:
            checks.problem(f"hot key {n} holds {got!r}, which no thread wrote")
    if actual != expected:
        wrong = {n for n in actual.keys() | expected.keys() if actual.get(n) != expected.get(n)}
        checks.problem(f"contents differ from the models for keys {sorted(wrong)[:10]}")
    for n, v in expected.items():
        got = c.get(make_key(n))
        if got != v:
            checks.problem(f"get({n}) = {got!r} at the end, expected {v!r}")
    if len(c) != len(expected) + sum(1 for n in HOT if make_key(n) in c):
        checks.problem(f"len(c) = {len(c)}, not the number of keys present")
    if set(checks.causes) - {"replaced", "explicit"}:
        checks.problem(f"the listener saw causes {checks.causes}")
    del results, expected, written, actual

    c.clear()
    alive = released_after_threads(c, refs)
    if alive:
        holders = {type(h).__name__ for a in alive for h in gc.get_referrers(a) if h is not alive}
        checks.problem(
            f"{len(alive)} key objects alive after clear(): {alive[:5]}, "
            f"referred to by Python objects of types {sorted(holders)}"
        )
    del alive
    assert not checks.problems, f"{kind}:\n" + "\n".join(checks.problems[:30])
    c.set(make_key(1), ("after", 1))
    assert c.get(make_key(1)) == ("after", 1)


def make_scenario(kind: str) -> Callable[[], None]:
    """A module-level `scenario_mixed_<kind>` for `run_isolated`."""
    name = "scenario_mixed_" + kind.replace("-", "_")

    def scenario() -> None:
        mixed_operations(kind, seed=sorted(KEY_TYPES).index(kind))

    scenario.__name__ = scenario.__qualname__ = name
    globals()[name] = scenario
    return scenario


MIXED = [make_scenario(kind) for kind in KEY_TYPES]


# Each scenario has a child interpreter and 8 threads of its own: running it in
# several threads at once (pytest-run-parallel) would add only time.
@pytest.mark.thread_unsafe
@pytest.mark.parametrize("scenario", MIXED, ids=list(KEY_TYPES))
def test_mixed_operations_under_threads(scenario: Callable[[], None]) -> None:
    run_isolated(scenario)


# --- equal but distinct key objects ---------------------------------------------------


def test_decimals_of_equal_value_are_one_key() -> None:
    c: Moka[Any, str] = Moka(10)
    c[Decimal("1.0")] = "a"
    assert c[Decimal("1.00")] == "a"
    assert Decimal("1.00") in c
    c.set(Decimal("1.00"), "b")
    assert len(c) == 1
    assert c.get(Decimal("1.0")) == "b"
    assert c.get_with(Decimal("1.000"), lambda: "never") == "b"
    assert c.remove(Decimal("1")) == "b"
    assert len(c) == 0


EQUAL_ONES: list[Any] = [1, 1.0, True, Decimal(1), Decimal("1.00"), Fraction(1, 1), complex(1, 0)]


@pytest.mark.parametrize("stored", EQUAL_ONES, ids=repr)
def test_equal_numbers_of_any_type_are_one_key(stored: Any) -> None:
    """`1`, `1.0`, `True`, `Decimal(1)`... hash and compare equal: like `dict`,
    the cache holds one entry for all of them."""
    c: Moka[Any, str] = Moka(10)
    d: dict[Any, str] = {}
    for target in (c, d):
        target[stored] = "first"
    for probe in EQUAL_ONES:
        assert c[probe] == d[probe] == "first", probe
        assert probe in c
        assert c.get(probe) == "first"
    for probe in EQUAL_ONES:
        c.set(probe, f"set by {probe!r}")
        d[probe] = f"set by {probe!r}"
        assert len(c) == len(d) == 1
    assert c.values() == list(d.values())
    assert c.keys() == [1]
    assert c.get_with(Decimal(1), lambda: "never") == d[1]
    del c[Fraction(1, 1)]
    assert len(c) == 0
    assert c.get_with(True, lambda: "loaded") == "loaded"
    assert c.get(Decimal("1.0")) == "loaded"
    assert c.remove(1.0) == "loaded"
    assert 1 not in c


def test_other_equal_objects_are_one_key() -> None:
    """Distinct objects equal by `==`: a UUID from a string and from an int, a
    datetime and a date built twice, frozensets in another order, dataclasses."""
    when = datetime.datetime(2024, 2, 29, 1, 2, 3)
    pairs: list[tuple[Any, Any]] = [
        (uuid.UUID(str(uuid.UUID(int=2**100 + 7))), uuid.UUID(int=2**100 + 7)),
        (when, datetime.datetime.fromisoformat(when.isoformat())),
        (when.date(), datetime.date.fromordinal(when.toordinal())),
        (frozenset({1, "a", (2, 3)}), frozenset([(2, 3), "a", 1])),
        (Point(5, "x"), Point(5, "x")),
        (PyKey(5, buckets=1), PyKey(5, buckets=1)),
        (Color.C7, Color["C7"]),
    ]
    c: Moka[Any, int] = Moka(100)
    for i, (a, b) in enumerate(pairs):
        assert a == b and hash(a) == hash(b)
        c.set(a, i)
        assert c.get(b) == i, b
        assert b in c
        c[b] = i + 100
        assert c[a] == i + 100
    assert len(c) == len(pairs)
    for i, (a, b) in enumerate(pairs):
        assert c.remove(b) == i + 100
        assert a not in c


# --- __eq__ that sleeps or raises -----------------------------------------------------


class SlowKey(PyKey):
    """Compares slowly, releasing the interpreter (time.sleep) in `__eq__`."""

    def __eq__(self, other: object) -> bool:
        time.sleep(0.001)
        return super().__eq__(other)

    __hash__ = PyKey.__hash__


def scenario_sleeping_eq_while_others_write() -> None:
    c: Moka[Any, Any] = Moka(10_000, eviction_listener=lambda k, v, cause: None)
    problems: list[str] = []

    def work(i: int) -> None:
        rng = random.Random(i)
        model: dict[int, Any] = {}
        for op in range(60 if i % 2 else 300):
            n = i * 1000 + rng.randrange(4 if i % 2 else 40)
            # Odd threads: slow keys, 2 hash values for all of them. Even
            # threads: int keys, and one slow key each now and then.
            k: Any = SlowKey(n, buckets=2) if i % 2 else n
            r = rng.random()
            if r < 0.4:
                c.set(k, (n, op))
                model[n] = (n, op)
            elif r < 0.6:
                got = c.remove(k)
                if got != model.pop(n, None):
                    problems.append(f"thread {i}: remove({n}) = {got!r}")
            elif r < 0.7:
                got = c.get_with(k, lambda n=n, op=op: (n, op))
                model.setdefault(n, got)
                if got != model[n]:
                    problems.append(f"thread {i}: get_with({n}) = {got!r}")
            else:
                got = c.get(k)
                if got != model.get(n):
                    problems.append(f"thread {i}: get({n}) = {got!r}, model {model.get(n)!r}")
            if not i % 2 and op % 25 == 0:
                c.set(SlowKey(-1 - i, buckets=2), i)
        for n, v in model.items():
            k = SlowKey(n, buckets=2) if i % 2 else n
            if c.get(k) != v:
                problems.append(f"thread {i}: {n} holds {c.get(k)!r} at the end, not {v!r}")

    run_threads(work, THREADS)
    assert not problems, "\n".join(problems[:30])
    c.clear()
    assert len(c) == 0


@pytest.mark.thread_unsafe  # a child interpreter of its own, as above
def test_sleeping_eq_while_others_write() -> None:
    run_isolated(scenario_sleeping_eq_while_others_write)


class Boom(Exception):
    pass


class RaisingKey:
    """Hashes like 7; comparing raises when either side has `raising` set."""

    def __init__(self, n: int, raising: bool = False) -> None:
        self.n = n
        self.raising = raising

    def __hash__(self) -> int:
        return 7

    def __eq__(self, other: object) -> bool:
        if self.raising or getattr(other, "raising", False):
            raise Boom("cannot compare")
        return isinstance(other, RaisingKey) and other.n == self.n


def test_raising_eq_propagates_and_the_cache_stays_usable() -> None:
    calls: list[int] = []
    c: Moka[Any, str] = Moka(10, eviction_listener=lambda k, v, cause: calls.append(2))
    resident = RaisingKey(1)
    c.set(resident, "one")
    probe = RaisingKey(2, raising=True)
    ops: list[Callable[[], object]] = [
        lambda: c.get(probe),
        lambda: c.get(probe, "d"),
        lambda: probe in c,
        lambda: c[probe],
        lambda: c.set(probe, "x"),
        lambda: c.__setitem__(probe, "x"),
        lambda: c.remove(probe),
        lambda: c.__delitem__(probe),
        lambda: c.get_with(probe, lambda: calls.append(1) or "x"),
    ]
    for op in ops:
        with pytest.raises(Boom, match="cannot compare"):
            op()
    assert calls == []
    # Nothing was stored or removed, and no error is left pending.
    assert c.get(resident) == "one"
    assert c.get(RaisingKey(1)) == "one"
    assert len(c) == 1
    assert c.keys() == [resident]
    probe.raising = False
    c.set(probe, "two")
    assert c.get(RaisingKey(2)) == "two"
    assert c.remove(resident) == "one"
    assert c.get_with("native", lambda: "n") == "n"
    assert len(c) == 2


def scenario_raising_eq_under_threads() -> None:
    """Thread 0 keeps probing with a key whose `__eq__` raises; it gets the
    exception every time, and the other threads, working on keys of the same
    hash, never get it."""
    c: Moka[Any, Any] = Moka(10_000, eviction_listener=lambda k, v, cause: None)
    for n in range(20):
        c.set(RaisingKey(100_000 + n), n)

    def work(i: int) -> int:
        raised = 0
        for op in range(200):
            if i == 0:
                probe = RaisingKey(op, raising=True)
                for f in (c.get, c.__contains__, c.remove, lambda k: c.set(k, "never")):
                    try:
                        f(probe)
                    except Boom:
                        raised += 1
                continue
            k = RaisingKey(i * 1000 + op % 10)
            c.set(k, (i, op))
            assert c.get(RaisingKey(i * 1000 + op % 10)) == (i, op)
            assert k in c
            if op % 3 == 0:
                assert c.remove(k) == (i, op)
        return raised

    results = run_threads(work, THREADS)
    assert results[0] == 4 * 200
    assert results[1:] == [0] * (THREADS - 1)
    assert c.get(RaisingKey(100_005)) == 5
    c.clear()


@pytest.mark.thread_unsafe  # a child interpreter of its own, as above
def test_raising_eq_under_threads() -> None:
    run_isolated(scenario_raising_eq_under_threads)


# --- get_with: one initializer call per key -------------------------------------------


def scenario_get_with_once_per_python_key() -> None:
    keys = [make(n) for make in KEY_TYPES.values() for n in range(3)]
    calls: dict[Any, int] = {}
    lock = threading.Lock()
    c: Moka[Any, Any] = Moka(1000, eviction_listener=lambda k, v, cause: None)

    def init(k: Any) -> Callable[[], object]:
        def load() -> object:
            with lock:
                calls[k] = calls.get(k, 0) + 1
            time.sleep(0.002)
            return object()

        return load

    def work(i: int) -> dict[int, object]:
        order = list(range(len(keys)))
        random.Random(i).shuffle(order)
        got = {}
        for j in order:
            # An equal but distinct key object, rebuilt by each thread.
            kind, n = divmod(j, 3)
            k = list(KEY_TYPES.values())[kind](n)
            got[j] = c.get_with(k, init(k))
        return got

    results = run_threads(work, THREADS)
    assert len(calls) == len(keys)
    assert all(v == 1 for v in calls.values()), calls
    for j in range(len(keys)):
        assert len({id(r[j]) for r in results}) == 1, keys[j]
        assert c.get(keys[j]) is results[0][j]


@pytest.mark.thread_unsafe  # a child interpreter of its own, as above
def test_get_with_once_per_python_key() -> None:
    run_isolated(scenario_get_with_once_per_python_key)


# --- nothing keeps a key alive --------------------------------------------------------


class Key(PyKey):
    pass


def test_clear_frees_every_key_object() -> None:
    c: Moka[Any, Any] = Moka(100, eviction_listener=lambda k, v, cause: None)
    refs: list[weakref.ref[Any]] = []

    def fresh(n: int) -> Key:
        k = Key(n, buckets=3)
        refs.append(weakref.ref(k))
        return k

    for n in range(30):
        c.set(fresh(n), n)
    for n in range(0, 30, 3):
        c.set(fresh(n), -n)  # replaced
        c.get(fresh(n))
        _ = fresh(n + 1) in c
    for n in range(30, 40):
        c.get_with(fresh(n), lambda n=n: n)
    for n in range(5):
        c.remove(fresh(n))
    del c[fresh(6)]
    c.items()
    c.keys()
    c.clear()
    gc.collect()
    collect_on_pypy()
    alive = [r() for r in refs if r() is not None]
    assert alive == []


# --- numbers of other types, inside tuples and at the extremes --------------------------


@pytest.mark.parametrize(
    ("native", "other"),
    [
        ((1, 1), (1, Decimal(1))),
        ((1, (2, 0.5)), (Fraction(1), (Decimal(2), Fraction(1, 2)))),
        (float("inf"), Decimal("Infinity")),
        (float("-inf"), Decimal("-Infinity")),
        (10**400, Fraction(10**400)),
        (10**400, Decimal("1e400")),
    ],
    ids=["tuple", "nested-tuple", "inf", "-inf", "huge-fraction", "huge-decimal"],
)
def test_equal_numbers_are_one_key_inside_tuples_and_at_extremes(native: Any, other: Any) -> None:
    assert native == other and hash(native) == hash(other)
    c: Moka[Any, str] = Moka(10)
    c[native] = "native"
    assert c[other] == "native"
    c[other] = "other"
    assert c[native] == "other"
    assert len(c) == 1


class Pair(NamedTuple):
    name: str
    n: int


NAN = float("nan")
DEEP: Any = "leaf"
for _ in range(20):
    DEEP = (DEEP, 1)
# Stored keys, and for each the probes a read looks it up with: tuples whose items are
# all native are compared only with entries of their hash, item by item (Repr::Lazy in
# src/store/key.rs); what they find must be what a dict finds.
TUPLE_PROBES: list[tuple[Any, list[Any]]] = [
    (("user", 1, True), [("user", 1.0, 1), ("user", True, 1.0), ("user", 2, True), ("user", 1)]),
    (Pair("user", 1), [("user", 1), ("user", 1.0), Pair("user", 1), ("user", 2)]),
    ((1, ("a", b"x"), None), [(True, ("a", b"x"), None), (1, ("a", "x"), None), (1, ("a",), None)]),
    ((2**70, "a"), [(2.0**70, "a"), (2**70 + 1, "a")]),
    ((1, Decimal(2)), [(1, 2), (1.0, 2.0), (1, 3)]),
    ((-1, "x"), [(-2, "x"), (-1, "x")]),  # hash(-1) == hash(-2): same hash, one is unequal
    ((NAN, 1), [(NAN, 1), (float("nan"), 1)]),
    (("é", 1), [("é", 1), ("e", 1)]),
    ((), [(), ((),)]),
    ((0.5, "k"), [(0.5, "k"), (0.25, "k")]),
    (DEEP, [DEEP, (DEEP, 1)]),
]


@pytest.mark.parametrize(("stored", "probes"), TUPLE_PROBES, ids=repr)
def test_tuple_reads_find_what_a_dict_finds(stored: Any, probes: list[Any]) -> None:
    c: Moka[Any, str] = Moka(10)
    d: dict[Any, str] = {}
    for target in (c, d):
        target[stored] = "stored"
    for probe in probes:
        want = d.get(probe)
        assert c.get(probe) == want, probe
        assert (probe in c) == (probe in d), probe
        assert c.get_with(probe, lambda: "loaded") == d.setdefault(probe, "loaded"), probe
        assert c.get(probe) == d[probe], probe
    assert len(c) == len(d)
    assert sorted(map(repr, c.keys())) == sorted(map(repr, d.keys()))


# Ints are hashed in Rust with CPython's rule (src/key.rs, int_hash); a number of
# another type keeps Python's hash, so the two must agree for them to be one key.
MODULUS = 2**61 - 1
EDGE_INTS = [
    0, 1, -1, -2, 2, 2**30, 2**31 - 1, -(2**31), MODULUS - 1, MODULUS, MODULUS + 1,
    -(MODULUS - 1), -MODULUS, -MODULUS - 1, 2 * MODULUS - 1, -(2 * MODULUS) + 1,
    2**62, 2**63 - 1, -(2**63), -(2**63) + 1, 2**63, -(2**63) - 1, 2**64 + 5,
    # One 30-bit digit or two: an int of one digit is read from the object itself.
    2**30 - 1, 2**30 + 1, -(2**30) + 1, -(2**30), -(2**30) - 1, 2**60, -(2**60),
]  # fmt: skip


def test_ints_of_every_size_are_found_by_equal_objects() -> None:
    """Every edge int in one cache, read with equal objects made anew (not the
    small-int cache's or the stored ones): each finds its own entry only."""
    c: Moka[int, int] = Moka(100)
    for i, value in enumerate(EDGE_INTS):
        c.set(int(str(value)), i)
    for i, value in enumerate(EDGE_INTS):
        assert c.get(int(str(value))) == i, value
        assert c.get_with(int(str(value)), lambda: -1) == i, value
    assert c.get(int("12345678901")) is None
    for i, value in enumerate(EDGE_INTS):
        assert c.remove(int(str(value))) == i, value
    assert len(c) == 0


def random_plain_tuple(rng: random.Random, depth: int = 0) -> tuple[Any, ...]:
    """A tuple of the items a read hashes in Rust (src/store/key.rs,
    lazy_tuple_hash): ints of every size, ASCII strs (with their hash computed
    or not yet), bools, None, floats, bytes and such tuples."""
    items: list[Any] = []
    for _ in range(rng.randrange(0, 5)):
        kind = rng.randrange(9 if depth < 3 else 8)
        if kind == 0:
            items.append(rng.choice(EDGE_INTS) + rng.randrange(-2, 3))
        elif kind == 1:
            items.append(rng.randrange(-(2**40), 2**40))
        elif kind == 2:
            items.append("".join(rng.choice("abcxyz") for _ in range(rng.randrange(0, 70))))
        elif kind == 3:
            items.append(rng.random() < 0.5)
        elif kind == 4:
            items.append(None)
        elif kind == 5:
            items.append(rng.choice([0.5, -1.25, 2.0, 1e300, float("inf")]))
        elif kind == 6:
            items.append(bytes(rng.randrange(0, 8)))
        elif kind == 7:
            items.append(rng.randrange(-3, 4))
        else:
            items.append(random_plain_tuple(rng, depth + 1))
    return tuple(items)


def copied(value: Any) -> Any:
    """An equal object built anew (a str without its hash computed yet)."""
    if isinstance(value, tuple):
        return tuple(copied(v) for v in value)
    if isinstance(value, str):
        return "".join(list(value))
    if type(value) is int:
        return int(str(value))
    return value


def test_tuples_hashed_in_rust_are_found_as_a_dict_finds_them() -> None:
    """A read hashes a tuple of plain items itself (the same rule as CPython's
    tuple hash), a write with hash(): they must agree on every such tuple."""
    rng = random.Random(22)
    c: Moka[Any, int] = Moka(10_000)
    d: dict[Any, int] = {}
    for i in range(2000):
        t = random_plain_tuple(rng)
        c.set(t, i)
        d[t] = i
    assert len(c) == len(d)
    for t, i in d.items():
        assert c.get(copied(t)) == i, t
        assert copied(t) in c
    for _ in range(500):
        t = random_plain_tuple(rng)
        assert c.get(copied(t)) == d.get(t), t


def test_uuids_are_found_by_equal_uuids() -> None:
    values = [uuid.UUID(int=0), uuid.UUID(int=1), uuid.UUID(int=2**128 - 1), uuid.UUID(int=2**64)]
    values += [uuid.uuid4() for _ in range(50)]
    c: Moka[uuid.UUID, int] = Moka(100)
    for i, value in enumerate(values):
        c.set(value, i)
    for i, value in enumerate(values):
        assert c.get(uuid.UUID(str(value))) == i
        assert c.get_with(uuid.UUID(str(value)), lambda: -1) == i
    assert c.get(uuid.UUID(int=12345)) is None
    assert len(c) == len(values)


def test_a_uuid_whose_int_was_replaced_is_a_python_key() -> None:
    """A UUID's `int` is read from its slot; one whose slot holds something
    else (replaced behind the class's back) is hashed and compared by Python."""
    odd = uuid.UUID(int=7)
    object.__setattr__(odd, "int", "seven")
    c: Moka[Any, str] = Moka(10)
    c.set(uuid.UUID(int=7), "real")
    c.set(odd, "odd")
    assert c.get(odd) == "odd"
    assert c.get(uuid.UUID(int=7)) == "real"
    assert len(c) == 2


@pytest.mark.parametrize("value", EDGE_INTS)
def test_ints_hash_as_python_does_and_meet_numbers_of_other_types(value: int) -> None:
    others: list[Any] = [Decimal(value), Fraction(value)]
    if float(value) == value:
        others.append(float(value))
    for other in others:
        assert hash(other) == hash(value)
        c: Moka[Any, str] = Moka(10)
        c[value] = "int"
        assert c[other] == "int", other
        c[other] = "other"
        assert c[value] == "other"
        assert len(c) == 1
        c2: Moka[Any, str] = Moka(10)
        c2[other] = "other"
        assert c2.get(value) == "other", other
        assert c2.remove(value) == "other"
        assert other not in c2


class SubUUID(uuid.UUID):
    """A subclass that keeps `UUID`'s `==` and `hash()`."""


def test_uuid_subclass_is_one_key_with_the_uuid() -> None:
    value = uuid.UUID(int=12345)
    sub = SubUUID(int=12345)
    assert value == sub and hash(value) == hash(sub)
    c: Moka[Any, str] = Moka(10)
    c[value] = "uuid"
    assert c[sub] == "uuid"
    c[sub] = "sub"
    assert c[value] == "sub"
    assert len(c) == 1


class InterruptingIndex:
    """A number whose `__index__` is interrupted (Ctrl-C)."""

    def __hash__(self) -> int:
        return 1

    def __eq__(self, other: object) -> bool:
        return other is self

    def __index__(self) -> int:
        raise KeyboardInterrupt


class FailingIndex(InterruptingIndex):
    def __index__(self) -> int:
        raise ValueError("not an int after all")


def test_exception_in_index_means_not_a_number_but_interrupts_propagate() -> None:
    c: Moka[Any, str] = Moka(10)
    failing = FailingIndex()
    c[failing] = "kept"
    assert c[failing] == "kept"
    assert 1 not in c
    with pytest.raises(KeyboardInterrupt):
        c.get(InterruptingIndex())
    assert c[failing] == "kept"


def test_unhashable_key_raises_before_the_weigher_runs() -> None:
    calls: list[Any] = []

    def weigher(k: Any, v: Any) -> int:
        calls.append(k)
        return 1

    c: Moka[Any, str] = Moka(10, weigher=weigher)
    with pytest.raises(TypeError, match="unhashable"):
        c[[1]] = "x"  # type: ignore[index]
    assert calls == []
