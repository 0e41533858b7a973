"""The core API of `moka_py.Moka`: storing, reading, removing, the mapping protocol,
and `dict`-like key semantics."""

from __future__ import annotations

import math
import time
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import param_id

import moka_py
from moka_py import Moka

MISSING = object()


# --- construction and module -------------------------------------------------


def test_version_is_a_str() -> None:
    assert isinstance(moka_py.VERSION, str)
    assert moka_py.VERSION


def test_all_exports() -> None:
    assert set(moka_py.__all__) >= {"Moka", "VERSION"}


@pytest.mark.parametrize("make", [lambda: Moka(10), lambda: Moka(capacity=10)])
def test_capacity_positional_or_keyword(make: Any) -> None:
    c = make()
    assert c.capacity == 10
    c.set("k", "v")
    assert c.get("k") == "v"


def test_generic_alias_at_runtime() -> None:
    alias = Moka[str, list[int]]
    c = alias(5)
    assert isinstance(c, Moka)
    c.set("a", [1, 2])
    assert c.get("a") == [1, 2]


# --- set / get / remove ------------------------------------------------------


def test_set_get_and_default() -> None:
    c: Moka[str, int] = Moka(10)
    assert c.get("a") is None
    assert c.get("a", 5) == 5
    assert c.get("a", default=7) == 7
    c.set("a", 1)
    assert c.get("a") == 1
    assert c.get("a", 5) == 1
    c.set("a", 2)
    assert c.get("a") == 2


def test_none_is_a_real_value() -> None:
    c: Moka[str, Any] = Moka(10)
    c.set("n", None)
    assert "n" in c
    assert c.get("n", MISSING) is None
    assert c["n"] is None
    assert c.remove("n", MISSING) is None
    assert "n" not in c
    assert c.get("n", MISSING) is MISSING


def test_remove_returns_value_or_default() -> None:
    c: Moka[str, Any] = Moka(10)
    c.set("a", [1])
    assert c.remove("a") == [1]
    assert c.remove("a") is None
    assert c.remove("a", "dflt") == "dflt"
    assert c.remove("a", default=3) == 3
    assert c.get("a") is None


def test_clear() -> None:
    c: Moka[int, int] = Moka(100)
    for i in range(20):
        c.set(i, i)
    c.clear()
    assert len(c) == 0
    assert c.count() == 0
    assert all(i not in c for i in range(20))
    assert c.keys() == []
    c.set(1, 1)
    assert c.get(1) == 1


def test_count_and_weighted_size() -> None:
    c: Moka[int, int] = Moka(100)
    assert c.count() == 0
    assert c.weighted_size() == 0
    for i in range(10):
        c.set(i, i)
    assert c.count() == 10
    assert c.weighted_size() == 10
    c.remove(3)
    assert c.count() == 9
    assert c.weighted_size() == 9


def test_weighted_size_with_weigher() -> None:
    c: Moka[str, str] = Moka(1000, weigher=lambda k, v: len(v))
    c.set("a", "xxx")
    c.set("b", "yyyyy")
    assert c.count() == 2
    assert c.weighted_size() == 8


def test_run_pending_tasks_returns_none() -> None:
    c: Moka[int, int] = Moka(10)
    c.set(1, 1)
    assert c.run_pending_tasks() is None
    assert c.get(1) == 1


# --- mapping protocol --------------------------------------------------------


def test_len() -> None:
    c: Moka[int, int] = Moka(100)
    assert len(c) == 0
    for i in range(7):
        c[i] = i
    assert len(c) == 7
    del c[0]
    assert len(c) == 6


def test_contains() -> None:
    c: Moka[str, int] = Moka(10)
    assert "a" not in c
    c["a"] = 1
    assert "a" in c
    assert "b" not in c


def test_contains_does_not_count_as_access() -> None:
    c: Moka[str, int] = Moka(10, tti=0.3)
    start = time.monotonic()
    c.set("k", 1)
    first = "k" in c
    if time.monotonic() - start < 0.15:
        assert first
    # If `in` refreshed the idle clock, polling it every few ms would keep the
    # entry alive forever.
    found = True
    while time.monotonic() - start < 1.0:
        found = "k" in c
        time.sleep(0.005)
    assert not found
    assert c.get("k") is None


def test_getitem() -> None:
    c: Moka[str, int] = Moka(10)
    c["a"] = 1
    assert c["a"] == 1
    with pytest.raises(KeyError) as info:
        c["b"]
    assert info.value.args == ("b",)


@pytest.mark.parametrize(
    "key",
    ["b", 5, (1, 2), (), ("only",), frozenset({1}), None],
    ids=param_id,
)
def test_keyerror_args_is_the_key(key: Any) -> None:
    """Like `dict`: `KeyError(key).args == (key,)`, even for a tuple key."""
    c: Moka[Any, int] = Moka(10)
    with pytest.raises(KeyError) as info:
        c[key]
    assert info.value.args == (key,)
    assert info.value.args[0] == key
    with pytest.raises(KeyError) as info:
        del c[key]
    assert info.value.args == (key,)


def test_setitem_overwrites() -> None:
    c: Moka[str, int] = Moka(10)
    c["a"] = 1
    c["a"] = 2
    assert c["a"] == 2
    assert c.get("a") == 2
    assert len(c) == 1


def test_delitem() -> None:
    c: Moka[str, int] = Moka(10)
    c["a"] = 1
    del c["a"]
    assert "a" not in c
    with pytest.raises(KeyError) as info:
        del c["a"]
    assert info.value.args[0] == "a"


def test_iteration_over_keys() -> None:
    c: Moka[int, str] = Moka(100)
    for i in range(10):
        c[i] = str(i)
    keys = list(c)
    assert sorted(keys) == list(range(10))
    assert sorted(iter(c)) == list(range(10))
    assert list(Moka(3)) == []


def test_keys_values_items() -> None:
    c: Moka[int, str] = Moka(100)
    for i in range(10):
        c[i] = str(i)
    keys = c.keys()
    values = c.values()
    items = c.items()
    assert sorted(keys) == list(range(10))
    assert sorted(values, key=int) == [str(i) for i in range(10)]
    assert sorted(items) == [(i, str(i)) for i in range(10)]
    assert all(type(p) is tuple and len(p) == 2 for p in items)
    assert dict(items) == {i: str(i) for i in range(10)}


def test_keys_are_the_stored_objects() -> None:
    key = ("a", 1)
    c: Moka[tuple[str, int], int] = Moka(10)
    c[key] = 1
    (got,) = c.keys()
    assert got is key


def test_values_stored_by_reference() -> None:
    c: Moka[str, list[int]] = Moka(10)
    value = [1, 2, 3]
    c.set("a", value)
    got = c.get("a")
    assert got is value
    assert c["a"] is value
    value.append(4)
    assert c.get("a") == [1, 2, 3, 4]
    got.append(5)
    assert value == [1, 2, 3, 4, 5]
    assert c.values()[0] is value
    assert c.items()[0][1] is value
    assert c.remove("a") is value
    assert c.get_with("b", lambda: value) is value
    assert c.get("b") is value


# --- key semantics: like dict -------------------------------------------------


def test_one_one_point_zero_true_are_one_key() -> None:
    c: Moka[Any, str] = Moka(10)
    c[1] = "int"
    assert c[1.0] == "int"
    assert c[True] == "int"
    c[True] = "bool"
    assert c[1] == "bool"
    assert len(c) == 1
    c[0] = "zero"
    assert c[False] == "zero"
    assert c[0.0] == "zero"
    assert c[-0.0] == "zero"
    assert len(c) == 2


def test_negative_zero() -> None:
    c: Moka[Any, str] = Moka(10)
    c[-0.0] = "neg"
    assert c[0] == "neg"
    assert c[0.0] == "neg"
    assert c[False] == "neg"
    assert len(c) == 1


def test_floats() -> None:
    c: Moka[Any, str] = Moka(10)
    c[2.5] = "a"
    c[math.inf] = "inf"
    c[-math.inf] = "-inf"
    assert c[2.5] == "a"
    assert c[5 / 2] == "a"
    assert c.get(2.5000001) is None
    assert c[float("inf")] == "inf"
    assert c[-float("inf")] == "-inf"
    assert len(c) == 3


def test_nan() -> None:
    """A NaN equals no number, itself included: it is found by identity, as in a
    dict. On CPython each NaN object is its own key; PyPy's `is` compares floats
    by their bits, so NaNs of the same bits are one key there, as in its dict."""
    nan = float("nan")
    other_nan = float("nan")
    c: Moka[float, str] = Moka(10)
    d = {nan: "x"}
    c[nan] = "x"
    assert nan in c
    assert c[nan] == "x"
    assert (other_nan in c) == (other_nan in d) == (other_nan is nan)
    assert c.get(other_nan) == d.get(other_nan)
    c[other_nan] = "y"
    d[other_nan] = "y"
    assert c[nan] == d[nan]
    assert c[other_nan] == "y"
    assert len(c) == len(d)
    # A NaN of other bits is another key everywhere.
    negative = -nan
    assert negative not in c


def test_str_is_not_bytes() -> None:
    c: Moka[Any, str] = Moka(10)
    c["a"] = "str"
    assert b"a" not in c
    c[b"a"] = "bytes"
    assert c["a"] == "str"
    assert c[b"a"] == "bytes"
    assert c[bytes([97])] == "bytes"
    assert len(c) == 2


def test_mixed_tuples() -> None:
    key = (1, "a", b"x", None, 2.5)
    c: Moka[Any, str] = Moka(10)
    c[key] = "t"
    assert c[(1, "a", b"x", None, 2.5)] == "t"
    assert c[(1.0, "a", b"x", None, 2.5)] == "t"
    assert c[(True, "a", b"x", None, 2.5)] == "t"
    assert c.get((1, "a", "x", None, 2.5)) is None
    assert c.get((1, "a", b"x", None)) is None
    assert c.get((1, "a", b"x", None, 2.5, None)) is None
    assert c.get((1, "a")) is None
    nested = ((1, 2), ("a", (b"b", None)))
    c[nested] = "nested"
    assert c[((1.0, 2), ("a", (b"b", None)))] == "nested"
    c[()] = "empty"
    assert c[()] == "empty"
    assert c.get((None,)) is None


def test_big_ints() -> None:
    c: Moka[Any, str] = Moka(10)
    c[2**70] = "big"
    assert c[2**70] == "big"
    assert c[2.0**70] == "big"
    assert c.get(2**70 + 1) is None
    c[-(2**70)] = "neg"
    assert c[-(2.0**70)] == "neg"
    c[2**63] = "edge"
    assert c[2.0**63] == "edge"
    c[2**63 - 1] = "max"
    assert c[2**63 - 1] == "max"
    c[-(2**63)] = "min"
    assert c[-(2.0**63)] == "min"
    assert c[2**70] == "big"
    assert c[2**63] == "edge"
    assert c.get(2**64 + 2**70) is None


def test_hash_collisions_between_ints() -> None:
    # hash(-1) == hash(-2) in CPython, and hash(2**61 - 1) == hash(0).
    c: Moka[int, str] = Moka(10)
    c[-1] = "m1"
    c[-2] = "m2"
    c[0] = "zero"
    c[2**61 - 1] = "mersenne"
    assert c[-1] == "m1"
    assert c[-2] == "m2"
    assert c[0] == "zero"
    assert c[2**61 - 1] == "mersenne"
    assert len(c) == 4


def test_unicode_and_emoji() -> None:
    keys = ["é", "e\u0301", "日本語", "🦀🐍", "a\x00b", "", "ß", "\U0010ffff"]
    c: Moka[str, int] = Moka(100)
    for i, k in enumerate(keys):
        c[k] = i
    for i, k in enumerate(keys):
        assert c[k] == i
    assert len(c) == len(keys)
    assert c["🦀" + "🐍"] == keys.index("🦀🐍")


def test_lone_surrogate_str() -> None:
    key = "a\ud800b"
    c: Moka[str, int] = Moka(10)
    c[key] = 1
    assert c["a\ud800" + "b"] == 1
    assert c.get("a\ud801b") is None


def test_equal_but_not_identical_strs() -> None:
    a = "".join(["hel", "lo wor", "ld"])
    b = "".join(["hello", " ", "world"])
    assert a == b
    assert a is not b
    c: Moka[str, int] = Moka(10)
    c[a] = 1
    assert c[b] == 1
    assert b in c
    c[b] = 2
    assert c[a] == 2
    assert len(c) == 1


def test_equal_but_not_identical_bytes() -> None:
    a = bytes(bytearray(b"abc"))
    b = b"".join([b"a", b"bc"])
    assert a is not b
    c: Moka[bytes, int] = Moka(10)
    c[a] = 1
    assert c[b] == 1


class EqualsOne:
    """Hashes like 1 and equals 1, but is not a number (no `__index__`)."""

    def __hash__(self) -> int:
        return 1

    def __eq__(self, other: object) -> bool:
        return other == 1


class NumberOne(EqualsOne):
    """The same, as a number: `__index__` says which int it equals."""

    def __index__(self) -> int:
        return 1


@pytest.mark.parametrize("one", [NumberOne(), Decimal(1), Fraction(1)], ids=param_id)
def test_number_equal_to_an_int_is_one_key_with_it(one: Any) -> None:
    c: Moka[Any, str] = Moka(10)
    c[1] = "one"
    assert c[one] == "one"
    assert one in c
    c[one] = "custom"
    assert c[1] == "custom"
    assert c[1.0] == "custom"
    assert c[True] == "custom"
    assert len(c) == 1
    (key,) = c.keys()
    assert key == 1
    c2: Moka[Any, str] = Moka(10)
    c2[one] = "custom"
    assert c2[1] == "custom"
    assert c2[True] == "custom"


def test_number_equal_to_a_float_is_one_key_with_it() -> None:
    c: Moka[Any, str] = Moka(10)
    c[0.5] = "half"
    assert c[Fraction(1, 2)] == "half"
    assert c[Decimal("0.5")] == "half"
    c[Decimal("0.5")] = "decimal"
    assert c[0.5] == "decimal"
    assert len(c) == 1


def test_object_equal_to_an_int_without_being_a_number_is_its_own_key() -> None:
    """The documented limit: such a key is resolved by Python `==` among the
    keys compared by Python only, never against native keys (see the README)."""
    c: Moka[Any, str] = Moka(10)
    c[1] = "one"
    assert EqualsOne() not in c
    c[EqualsOne()] = "custom"
    assert c[1] == "one"
    assert c[EqualsOne()] == "custom"
    assert len(c) == 2


class S(str):
    pass


def test_str_subclass() -> None:
    c: Moka[str, int] = Moka(10)
    c["abc"] = 1
    assert c[S("abc")] == 1
    c[S("xyz")] = 2
    assert c["xyz"] == 2
    assert c.get(S("abd")) is None
    assert len(c) == 2


def test_frozenset_keys() -> None:
    c: Moka[frozenset[int], str] = Moka(10)
    c[frozenset({1, 2, 3})] = "fs"
    assert c[frozenset([3, 2, 1])] == "fs"
    assert c.get(frozenset({1, 2})) is None
    c[frozenset()] = "empty"
    assert c[frozenset()] == "empty"


def test_tuple_with_non_native_items() -> None:
    c: Moka[Any, str] = Moka(10)
    c[(1, frozenset({2}))] = "a"
    assert c[(1.0, frozenset({2}))] == "a"
    c[(1, S("x"))] = "b"
    assert c[(1, "x")] == "b"
    c[(1, "y")] = "c"
    assert c[(True, S("y"))] == "c"


class Unhashable:
    __hash__ = None  # type: ignore[assignment]


@pytest.mark.parametrize("key", [[1, 2], {"a": 1}, {1}, Unhashable(), (1, [2])], ids=param_id)
def test_unhashable_key_raises_type_error(key: Any) -> None:
    c: Moka[Any, int] = Moka(10)
    with pytest.raises(TypeError):
        c.set(key, 1)
    with pytest.raises(TypeError):
        c.get(key)
    with pytest.raises(TypeError):
        c.remove(key)
    with pytest.raises(TypeError):
        key in c  # noqa: B015
    with pytest.raises(TypeError):
        c[key]
    with pytest.raises(TypeError):
        c[key] = 1
    with pytest.raises(TypeError):
        del c[key]
    with pytest.raises(TypeError):
        c.get_with(key, lambda: 1)
    assert len(c) == 0


class HashBoom(Exception):
    pass


class BadHash:
    def __hash__(self) -> int:
        raise HashBoom("no hash")


def test_hash_exception_propagates() -> None:
    c: Moka[Any, int] = Moka(10)
    key = BadHash()
    calls: list[int] = []
    with pytest.raises(HashBoom, match="no hash"):
        c.set(key, 1)
    with pytest.raises(HashBoom):
        c.get(key)
    with pytest.raises(HashBoom):
        c.remove(key)
    with pytest.raises(HashBoom):
        key in c  # noqa: B015
    with pytest.raises(HashBoom):
        c[key]
    with pytest.raises(HashBoom):
        del c[key]
    with pytest.raises(HashBoom):
        c.get_with(key, lambda: calls.append(1))
    assert calls == []
    c.set("ok", 1)
    assert c.get("ok") == 1
    assert len(c) == 1


class EqBoom(Exception):
    pass


class Colliding:
    """Hashes like 42; __eq__ raises when asked to compare."""

    def __init__(self, raising: bool) -> None:
        self.raising = raising

    def __hash__(self) -> int:
        return 42

    def __eq__(self, other: object) -> bool:
        if self.raising:
            raise EqBoom("eq failed")
        return self is other


def test_eq_exception_propagates_and_cache_stays_usable() -> None:
    c: Moka[Any, str] = Moka(10)
    resident = Colliding(raising=True)
    c[resident] = "resident"
    probe = Colliding(raising=True)
    with pytest.raises(EqBoom, match="eq failed"):
        c.get(probe)
    with pytest.raises(EqBoom):
        probe in c  # noqa: B015
    with pytest.raises(EqBoom):
        c[probe]
    with pytest.raises(EqBoom):
        c.remove(probe)
    # The cache still works, for the resident key (found by identity) and others.
    assert c[resident] == "resident"
    assert resident in c
    c["x"] = "x"
    assert c["x"] == "x"
    assert c.remove("x") == "x"
    assert c.remove(resident) == "resident"
    assert len(c) == 0
    # No exception is left pending for a later, unrelated call.
    assert c.get("nothing") is None
    c.set("y", "y")
    assert c.count() == 1


def test_eq_exception_on_insert_propagates() -> None:
    c: Moka[Any, str] = Moka(10)
    c[Colliding(raising=True)] = "a"
    with pytest.raises(EqBoom):
        c.set(Colliding(raising=True), "b")
    assert c.get("unrelated") is None
    c.set("fine", "f")
    assert c["fine"] == "f"


def test_failed_set_leaves_no_entry() -> None:
    """Like `dict`: a `set` that raised (because a colliding key's `__eq__` raised)
    has no effect; the cache does not gain an entry that may duplicate a key."""
    c: Moka[Any, str] = Moka(10)
    resident = Colliding(raising=True)
    c[resident] = "a"
    failed = Colliding(raising=True)
    with pytest.raises(EqBoom):
        c.set(failed, "b")
    assert c.count() == 1
    assert [v for _, v in c.items()] == ["a"]


class Truthy:
    def __init__(self, value: bool) -> None:
        self.value = value

    def __bool__(self) -> bool:
        return self.value


class OddEq:
    """An `__eq__` that returns non-bool objects."""

    def __init__(self, name: str, result: Any) -> None:
        self.name = name
        self.result = result

    def __hash__(self) -> int:
        return 7

    def __eq__(self, other: object) -> Any:
        if isinstance(other, OddEq) and other.name == self.name:
            return self.result
        return NotImplemented


@pytest.mark.parametrize(
    ("result", "equal"),
    [(1, True), ("yes", True), ([0], True), (Truthy(True), True), (0, False), ("", False)],
    ids=param_id,
)
def test_eq_returning_non_bool(result: Any, equal: bool) -> None:
    c: Moka[Any, str] = Moka(10)
    c[OddEq("a", result)] = "v"
    assert (OddEq("a", result) in c) is equal
    assert c.get(OddEq("a", result)) == ("v" if equal else None)
    assert c.get(OddEq("b", result)) is None


# --- a property test against dict ---------------------------------------------

native = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**80), max_value=2**80),
        st.floats(allow_nan=False),
        st.text(alphabet="ab\u00e9\U0001f980\x00", max_size=4),
        st.binary(max_size=4),
    ),
    lambda inner: st.tuples(inner, inner) | st.tuples(inner),
    max_leaves=4,
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["set", "get", "remove", "in"]), native), max_size=40))
def test_key_semantics_match_dict(ops: list[tuple[str, Any]]) -> None:
    c: Moka[Any, int] = Moka(10_000)
    model: dict[Any, int] = {}
    for n, (op, key) in enumerate(ops):
        if op == "set":
            c.set(key, n)
            model[key] = n
        elif op == "get":
            assert c.get(key, MISSING) == model.get(key, MISSING)
        elif op == "remove":
            assert c.remove(key, MISSING) == model.pop(key, MISSING)
        else:
            assert (key in c) == (key in model)
    assert len(c) == len(model)
    assert sorted(c.values()) == sorted(model.values())
    for key, value in c.items():
        assert model[key] == value
