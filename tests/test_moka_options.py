"""Validation of the constructor's and methods' options, and the read-only
properties that report them."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from support import param_id

from moka_py import Moka

NOT_POSITIVE = [0, 0.0, -1, -0.5, -0.0, math.nan, math.inf, -math.inf]
NOT_A_NUMBER = ["1", "0.5", b"1", True, False, [1], object(), 1j]
OUT_OF_RANGE = [1e12, 10**12, 1000 * 366 * 24 * 3600.0]


def ttl_tti_setters() -> list[tuple[str, str, Callable[[Any], object]]]:
    """(name, where, call) for every place that accepts a ttl/tti."""
    out: list[tuple[str, str, Callable[[Any], object]]] = []
    for name in ("ttl", "tti"):
        out.append((name, "Moka()", lambda v, name=name: Moka(10, **{name: v})))
        out.append((name, "set()", lambda v, name=name: Moka(10).set("k", 1, **{name: v})))
        out.append(
            (
                name,
                "get_with()",
                lambda v, name=name: Moka(10).get_with("k", lambda: 1, **{name: v}),
            )
        )
    return out


SETTERS = ttl_tti_setters()
SETTER_IDS = [f"{name}-{where}" for name, where, _ in SETTERS]


@pytest.mark.parametrize(("name", "where", "call"), SETTERS, ids=SETTER_IDS)
@pytest.mark.parametrize("value", NOT_POSITIVE, ids=param_id)
def test_duration_must_be_positive(
    name: str, where: str, call: Callable[[Any], object], value: Any
) -> None:
    with pytest.raises(ValueError, match=f"{name} must be positive"):
        call(value)


@pytest.mark.parametrize(("name", "where", "call"), SETTERS, ids=SETTER_IDS)
@pytest.mark.parametrize("value", OUT_OF_RANGE, ids=param_id)
def test_duration_out_of_range(
    name: str, where: str, call: Callable[[Any], object], value: Any
) -> None:
    with pytest.raises(ValueError, match=f"{name} is out of range"):
        call(value)


@pytest.mark.parametrize(("name", "where", "call"), SETTERS, ids=SETTER_IDS)
@pytest.mark.parametrize("value", [2**64, 10**400, -(2**64)], ids=["2**64", "10**400", "-2**64"])
def test_duration_huge_ints(
    name: str, where: str, call: Callable[[Any], object], value: Any
) -> None:
    with pytest.raises(ValueError, match=name):
        call(value)


@pytest.mark.parametrize(("name", "where", "call"), SETTERS, ids=SETTER_IDS)
@pytest.mark.parametrize("value", NOT_A_NUMBER, ids=param_id)
def test_duration_wrong_type(
    name: str, where: str, call: Callable[[Any], object], value: Any
) -> None:
    with pytest.raises(TypeError, match=name):
        call(value)


@pytest.mark.parametrize(("name", "where", "call"), SETTERS, ids=SETTER_IDS)
@pytest.mark.parametrize("value", [None, 0.001, 1, 2.5, 3600, 1e9], ids=param_id)
def test_duration_accepted(
    name: str, where: str, call: Callable[[Any], object], value: Any
) -> None:
    call(value)


def test_failed_set_does_not_insert() -> None:
    c: Moka[str, int] = Moka(10)
    with pytest.raises(ValueError):
        c.set("k", 1, ttl=-1)
    with pytest.raises(TypeError):
        c.set("k", 1, tti="1")
    assert "k" not in c
    assert len(c) == 0


def test_invalid_get_with_does_not_call_initializer() -> None:
    calls: list[int] = []
    c: Moka[str, int] = Moka(10)
    with pytest.raises(ValueError):
        c.get_with("k", lambda: calls.append(1) or 1, ttl=0)
    assert calls == []
    assert "k" not in c


def test_ttl_tti_properties() -> None:
    c: Moka[str, int] = Moka(10, ttl=1.5, tti=2)
    assert c.ttl == 1.5
    assert c.tti == 2.0
    assert isinstance(c.tti, float)
    d: Moka[str, int] = Moka(10)
    assert d.ttl is None
    assert d.tti is None
    e: Moka[str, int] = Moka(10, ttl=None, tti=None)
    assert e.ttl is None
    assert e.tti is None


# --- capacity ----------------------------------------------------------------


@pytest.mark.parametrize("capacity", [-1, -(2**70), 2**64, 2**100], ids=param_id)
def test_capacity_value_error(capacity: int) -> None:
    with pytest.raises(ValueError, match="capacity"):
        Moka(capacity)


@pytest.mark.parametrize("capacity", [1.5, 10.0, "10", None, True, [10], b"10"], ids=param_id)
def test_capacity_type_error(capacity: Any) -> None:
    with pytest.raises(TypeError, match="capacity"):
        Moka(capacity)


def test_capacity_required() -> None:
    with pytest.raises(TypeError):
        Moka()  # type: ignore[call-arg]


@pytest.mark.parametrize("capacity", [1, 10, 2**32, 2**64 - 1], ids=param_id)
def test_capacity_property(capacity: int) -> None:
    assert Moka(capacity).capacity == capacity


def test_capacity_zero_keeps_nothing() -> None:
    c: Moka[int, int] = Moka(0)
    assert c.capacity == 0
    for i in range(10):
        c.set(i, i)
    c.run_pending_tasks()
    assert all(i not in c for i in range(10))
    assert all(c.get(i) is None for i in range(10))
    assert c.count() == 0
    assert len(c) == 0


# --- policy ------------------------------------------------------------------


def test_policy_default_is_tiny_lfu() -> None:
    assert Moka(10).policy == "tiny_lfu"
    assert Moka(10, policy=None).policy == "tiny_lfu"


@pytest.mark.parametrize("policy", ["tiny_lfu", "lru"])
def test_policy_accepted(policy: str) -> None:
    c: Moka[str, int] = Moka(10, policy=policy)
    assert c.policy == policy
    c.set("a", 1)
    assert c.get("a") == 1


@pytest.mark.parametrize(
    "policy", ["LRU", "lfu", "", "tiny-lfu", " lru", b"lru", 1, ["lru"]], ids=param_id
)
def test_policy_invalid(policy: Any) -> None:
    with pytest.raises(ValueError) as info:
        Moka(10, policy=policy)
    message = str(info.value)
    assert "'tiny_lfu'" in message
    assert "'lru'" in message


# --- messages ----------------------------------------------------------------


class BadRepr(str):
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


MESSAGES: dict[str, tuple[Callable[[], object], type[Exception], str]] = {
    "capacity-value": (
        lambda: Moka(-1),
        ValueError,
        "capacity must be a non-negative int that fits in 64 bits, got -1",
    ),
    "capacity-type": (
        lambda: Moka(1.5),
        TypeError,
        "capacity must be a non-negative int, not float",
    ),
    "ttl-negative": (lambda: Moka(10, ttl=-2), ValueError, "ttl must be positive, got -2"),
    "tti-infinite": (
        lambda: Moka(10).set("k", 1, tti=math.inf),
        ValueError,
        "tti must be positive and finite, got inf",
    ),
    "ttl-too-long": (
        lambda: Moka(10, ttl=1e12),
        ValueError,
        "ttl is out of range (at most 1000 years), got 1000000000000.0",
    ),
    "ttl-type": (
        lambda: Moka(10, ttl="1"),
        TypeError,
        "ttl must be a number of seconds (int or float) or None, not str",
    ),
    "policy": (
        lambda: Moka(10, policy="fifo"),
        ValueError,
        "policy must be 'tiny_lfu' or 'lru', got 'fifo'",
    ),
    "policy-repr-fails": (
        lambda: Moka(10, policy=BadRepr("fifo")),
        ValueError,
        "policy must be 'tiny_lfu' or 'lru', got <BadRepr object>",
    ),
    "weigher-not-callable": (
        lambda: Moka(10, weigher=1),
        TypeError,
        "weigher must be callable or None, not int",
    ),
    "weigher-negative": (
        lambda: Moka(10, weigher=lambda k, v: -1).set("k", 1),
        ValueError,
        "weigher must return a non-negative int, got -1",
    ),
    "weigher-type": (
        lambda: Moka(10, weigher=lambda k, v: "1").set("k", 1),
        TypeError,
        "weigher must return an int, not str",
    ),
}


@pytest.mark.parametrize(("call", "error", "message"), MESSAGES.values(), ids=MESSAGES.keys())
def test_messages_name_the_rule_and_the_bad_value(
    call: Callable[[], object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as info:
        call()
    assert str(info.value) == message


# --- repr --------------------------------------------------------------------


def test_repr() -> None:
    r = repr(Moka(10))
    assert r.startswith("Moka(")
    assert "capacity=10" in r
    assert "tiny_lfu" in r
    r = repr(Moka(42, ttl=1.5, tti=0.25, policy="lru"))
    assert "capacity=42" in r
    assert "ttl=1.5" in r
    assert "tti=0.25" in r
    assert "lru" in r


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"ttl": 1.5}, {"tti": 3}, {"ttl": 2.0, "tti": 0.5, "policy": "lru"}],
    ids=param_id,
)
def test_repr_round_trips(kwargs: dict[str, Any]) -> None:
    c: Moka[str, int] = Moka(7, **kwargs)
    again = eval(repr(c), {"Moka": Moka})
    assert isinstance(again, Moka)
    assert (again.capacity, again.ttl, again.tti, again.policy) == (
        c.capacity,
        c.ttl,
        c.tti,
        c.policy,
    )


# --- callables ---------------------------------------------------------------


@pytest.mark.parametrize("value", [1, "f", [print], object()], ids=param_id)
@pytest.mark.parametrize("name", ["eviction_listener", "weigher"])
def test_callables_must_be_callable(name: str, value: Any) -> None:
    with pytest.raises(TypeError, match=name):
        Moka(10, **{name: value})


@pytest.mark.parametrize("name", ["eviction_listener", "weigher"])
def test_callables_may_be_none(name: str) -> None:
    c: Moka[str, int] = Moka(10, **{name: None})
    c.set("a", 1)
    assert c.get("a") == 1


def test_unknown_keyword() -> None:
    with pytest.raises(TypeError):
        Moka(10, maxsize=5)  # type: ignore[call-arg]
