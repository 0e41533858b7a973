"""The hand-written entries of `Moka.get`, `get_with`, `set` and `remove`
(src/py/fast.rs): every call gives what PyO3's entry gave, whichever path it
takes (the fast one: positional arguments, a key of a built-in type, a cache
without callbacks; PyO3's for the rest)."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from moka_py import Moka

PLAIN_KEYS: list[Any] = [7, 2**70, "k", b"k", 1.5, True, None, ("user", 1, True), ((1, 2), "x")]
OTHER_KEYS: list[Any] = ["é", frozenset({1}), ("é", 1), 1 + 2j]


def caches() -> list[Moka[Any, Any]]:
    """A plain cache, and one of each kind that PyO3's entry serves."""
    return [
        Moka(100),
        Moka(100, stats=True),
        Moka(100, eviction_listener=lambda k, v, cause: None),
        Moka(100, weigher=lambda k, v: 1),
        Moka(100, refresh_after=60),
    ]


@pytest.mark.parametrize("key", PLAIN_KEYS + OTHER_KEYS, ids=repr)
@pytest.mark.parametrize("index", range(5))
def test_each_entry_behaves_as_the_mapping(key: Any, index: int) -> None:
    c = caches()[index]
    assert c.get(key) is None
    assert c.get(key, "dflt") == "dflt"
    assert c.get(key, default="kw") == "kw"
    assert c.remove(key) is None
    assert c.remove(key, "gone") == "gone"
    assert c.get_with(key, lambda: "loaded") == "loaded"
    assert c.get_with(key, lambda: "never") == "loaded"
    assert c.get(key) == "loaded"
    c.set(key, "v")
    assert c.get(key) == "v" and Moka.get(c, key) == "v"
    getter = c.get
    assert getter(key, None) == "v"
    c.set(key=key, value="w")
    assert c.get(key=key) == "w"
    assert c.remove(key, "x") == "w"
    assert c.get(key) is None
    c.set(key, "t", ttl=30)
    assert c.get_with(key=key, initializer=lambda: "never") == "t"
    assert c.remove(key=key) == "t"


@pytest.mark.parametrize("index", range(5))
def test_bad_calls_raise_as_pyo3_did(index: int) -> None:
    c = caches()[index]
    with pytest.raises(TypeError, match="get"):
        c.get()  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="get"):
        c.get(1, 2, 3)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="unexpected keyword"):
        c.get(1, nope=2)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="set"):
        c.set(1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="remove"):
        c.remove()  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="get_with"):
        c.get_with(1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unhashable"):
        c.get([1])
    with pytest.raises(TypeError, match="unhashable"):
        c.set((1, [2]), 1)
    with pytest.raises(TypeError):
        Moka.get(object(), 1)  # type: ignore[call-overload]
    with pytest.raises(ZeroDivisionError):
        c.get_with("boom", lambda: 1 / 0)
    assert c.get("boom") is None


def test_signatures_and_docs_are_pyo3s() -> None:
    assert str(inspect.signature(Moka.get)) == "(self, /, key, default=None)"
    with_tags = "ttl=None, tti=None, *, tags=None)"
    assert str(inspect.signature(Moka.set)) == f"(self, /, key, value, {with_tags}"
    assert str(inspect.signature(Moka.remove)) == "(self, /, key, default=None)"
    with_init = f"(self, /, key, initializer, {with_tags}"
    assert str(inspect.signature(Moka.get_with)) == with_init
    for name in ("get", "set", "remove", "get_with"):
        doc = getattr(Moka, name).__doc__
        assert doc and "--" not in doc.splitlines()[0], (name, doc)


def test_statistics_count_each_call_once() -> None:
    c: Moka[Any, Any] = Moka(100, stats=True)
    c.get("a")
    c.get_with("a", lambda: 1)  # a miss, then a load
    c.get_with("a", lambda: 2)  # a hit
    c.get(("t", 1))
    c.set(("t", 1), 1)
    c.get(("t", 1))
    s = c.stats()
    assert (s.hits, s.misses, s.loads) == (2, 3, 1)
