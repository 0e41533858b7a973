"""`get_many`, `set_many`, `remove_many`, `remove_if` against a dict model."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import PyKey

from moka_py import Moka

keys = st.one_of(
    st.integers(-5, 20),
    st.sampled_from(["a", "b", "c"]),
    st.tuples(st.integers(0, 3)),
    st.builds(PyKey, st.integers(0, 6)),  # compared by Python's ==, colliding hashes
)
values = st.integers()
ops = st.lists(
    st.one_of(
        st.tuples(st.just("set_many"), st.dictionaries(keys, values, max_size=6)),
        st.tuples(st.just("set_pairs"), st.lists(st.tuples(keys, values), max_size=6)),
        st.tuples(st.just("get_many"), st.lists(keys, max_size=6)),
        st.tuples(st.just("remove_many"), st.lists(keys, max_size=6)),
        st.tuples(st.just("remove_if"), st.integers(0, 3)),
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_matches_a_dict(script: list[tuple[str, Any]]) -> None:
    cache: Moka[Any, int] = Moka(10_000)
    model: dict[Any, int] = {}
    for op, arg in script:
        if op == "set_many":
            cache.set_many(arg)
            model.update(arg)
        elif op == "set_pairs":
            cache.set_many(arg)
            model.update(arg)
        elif op == "get_many":
            assert cache.get_many(arg) == {k: model[k] for k in arg if k in model}
        elif op == "remove_many":
            expected = len({k for k in arg if k in model})
            assert cache.remove_many(arg) == expected
            for k in arg:
                model.pop(k, None)
        else:
            doomed = [k for k, v in model.items() if v % 4 == arg]
            assert cache.remove_if(lambda k, v, m=arg: v % 4 == m) == len(doomed)
            for k in doomed:
                del model[k]
        assert dict(cache.items()) == model


def test_bad_key_raises_before_anything_changes() -> None:
    cache: Moka[Any, int] = Moka(100)
    cache["x"] = 0
    with pytest.raises(TypeError):
        cache.set_many([("a", 1), ([], 2), ("b", 3)])
    assert dict(cache.items()) == {"x": 0}
    with pytest.raises(TypeError):
        cache.remove_many(["x", {}])
    assert dict(cache.items()) == {"x": 0}
    with pytest.raises(TypeError):
        cache.get_many(["x", []])


def test_bad_weight_raises_before_anything_changes() -> None:
    def weigh(k: str, v: Any) -> int:
        if v is None:
            raise ValueError("no weight")
        return 1

    cache: Moka[str, Any] = Moka(100, weigher=weigh)
    with pytest.raises(ValueError, match="no weight"):
        cache.set_many({"a": 1, "b": None})
    assert len(cache) == 0


def test_items_shapes() -> None:
    cache: Moka[Any, Any] = Moka(100)
    cache.set_many(iter([["a", 1], ("b", 2)]))
    assert sorted(cache.items()) == [("a", 1), ("b", 2)]
    with pytest.raises(ValueError, match="pair"):
        cache.set_many([("a", 1, 2)])
    with pytest.raises(TypeError, match="pair"):
        cache.set_many([5])
    with pytest.raises(TypeError):
        cache.set_many(5)  # type: ignore[arg-type]


def test_set_many_ttl_and_expired_entries_are_absent() -> None:
    import time

    cache: Moka[str, int] = Moka(100)
    cache.set_many({"a": 1, "b": 2}, ttl=0.05)
    cache["c"] = 3
    assert cache.get_many(["a", "b", "c"]) == {"a": 1, "b": 2, "c": 3}
    time.sleep(0.1)
    assert cache.get_many(["a", "b", "c"]) == {"c": 3}
    assert cache.remove_many(["a", "b", "c"]) == 1
    with pytest.raises(ValueError):
        cache.set_many({"a": 1}, ttl=-1)


def test_listener_sees_explicit_for_batches() -> None:
    seen: list[tuple[Any, Any, str]] = []
    cache: Moka[int, int] = Moka(100, eviction_listener=lambda k, v, c: seen.append((k, v, c)))
    cache.set_many({i: i for i in range(6)})
    assert cache.remove_many([0, 1]) == 2
    assert cache.remove_if(lambda k, v: k >= 4) == 2
    assert sorted(seen) == [
        (0, 0, "explicit"),
        (1, 1, "explicit"),
        (4, 4, "explicit"),
        (5, 5, "explicit"),
    ]


def test_remove_if_predicate_may_use_the_cache_and_errors_remove_nothing() -> None:
    cache: Moka[int, int] = Moka(100)
    cache.set_many({i: i for i in range(10)})

    def pred(k: int, v: int) -> bool:
        # Re-entering the cache from the predicate is allowed.
        return cache.get(k) == v and k % 2 == 0

    assert cache.remove_if(pred) == 5
    assert sorted(cache.keys()) == [1, 3, 5, 7, 9]

    def boom(k: int, v: int) -> bool:
        if k == 7:
            raise RuntimeError("boom")
        return True

    with pytest.raises(RuntimeError, match="boom"):
        cache.remove_if(boom)
    assert sorted(cache.keys()) == [1, 3, 5, 7, 9]


def test_remove_if_keeps_an_entry_rewritten_after_the_snapshot() -> None:
    cache: Moka[int, int] = Moka(100)
    cache.set_many({1: 1, 2: 2})

    def pred(k: int, v: int) -> bool:
        cache[1] = 100  # rewritten while the predicates run
        return True

    assert cache.remove_if(pred) == 1
    assert dict(cache.items()) == {1: 100}


def test_batches_under_threads(run_threads: Any) -> None:
    cache: Moka[int, int] = Moka(10_000)

    def work(t: int) -> int:
        removed = 0
        for r in range(50):
            base = t * 1000 + r * 10
            cache.set_many({base + i: base + i for i in range(10)})
            got = cache.get_many(range(base, base + 10))
            assert got == {base + i: base + i for i in range(10)}
            removed += cache.remove_many(range(base, base + 5))
        return removed

    assert run_threads(work, 8) == [250] * 8
    assert cache.remove_if(lambda k, v: True) == 8 * 50 * 5
    assert len(cache) == 0
