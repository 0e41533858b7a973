"""An expired entry is absent, whichever method looks at it; and what code written
for moka-py 0.5.0 relies on (`Moka[K, V] is Moka`, a weigher returning a bool).

Every expiry test writes entries with a short lifetime, sleeps well past it, and
only then looks: nothing asserts how soon anything happens. Each cache holds two
native keys (compared in Rust) and two Python-compared ones, all expired.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from support import PyKey

from moka_py import Moka

LIFETIME = 0.05
# Well past LIFETIME, so that no scheduling delay makes an entry look fresh.
SLEEP = 0.25

# How an entry gets its lifetime: the cache's ttl or tti, or the entry's own
# ttl or tti given to set() or get_with().
KINDS = ["ttl", "tti", "set-ttl", "set-tti", "get_with-ttl"]

KEYS: list[Any] = ["expired", PyKey(7, buckets=1), "expired-2", PyKey(8, buckets=1)]


def expired_cache(kind: str) -> tuple[Moka[Any, Any], Any]:
    """A cache in which every key of `KEYS` was written (value `("old", key)`) with
    a lifetime of `LIFETIME` seconds that has passed. Returns it and the key
    still present, or None when the cache-wide lifetime would expire it too."""
    if kind == "ttl":
        c: Moka[Any, Any] = Moka(100, ttl=LIFETIME)
    elif kind == "tti":
        c = Moka(100, tti=LIFETIME)
    else:
        c = Moka(100)
    for key in KEYS:
        if kind == "set-ttl":
            c.set(key, ("old", key), ttl=LIFETIME)
        elif kind == "set-tti":
            c.set(key, ("old", key), tti=LIFETIME)
        elif kind == "get_with-ttl":
            assert c.get_with(key, lambda key=key: ("old", key), ttl=LIFETIME) == ("old", key)
        else:
            c.set(key, ("old", key))
    kept = None
    if kind not in ("ttl", "tti"):
        kept = "kept"
        c.set(kept, "kept-value")
    time.sleep(SLEEP)
    return c, kept


@pytest.mark.parametrize("kind", KINDS)
def test_get_returns_default(kind: str) -> None:
    c, _ = expired_cache(kind)
    for key in KEYS:
        assert c.get(key) is None, key
        assert c.get(key, "d") == "d", key


@pytest.mark.parametrize("kind", KINDS)
def test_contains_is_false(kind: str) -> None:
    c, _ = expired_cache(kind)
    for key in KEYS:
        assert (key in c) is False, key
        assert key not in c, key


@pytest.mark.parametrize("kind", KINDS)
def test_getitem_raises_key_error(kind: str) -> None:
    c, _ = expired_cache(kind)
    for key in KEYS:
        with pytest.raises(KeyError):
            c[key]


@pytest.mark.parametrize("kind", KINDS)
def test_remove_returns_default(kind: str) -> None:
    c, kept = expired_cache(kind)
    for key in KEYS[:2]:
        assert c.remove(key, "d") == "d", key
    for key in KEYS[2:]:
        assert c.remove(key) is None, key
    for key in KEYS:
        assert key not in c
        assert c.get(key, "d") == "d"
    assert list(c) == ([] if kept is None else [kept])


@pytest.mark.parametrize("kind", KINDS)
def test_del_raises_key_error(kind: str) -> None:
    c, _ = expired_cache(kind)
    for key in KEYS:
        with pytest.raises(KeyError):
            del c[key]
        with pytest.raises(KeyError):  # still absent: the first del removed nothing visible
            del c[key]


@pytest.mark.parametrize("kind", KINDS)
def test_get_with_calls_the_initializer_again(kind: str) -> None:
    c, _ = expired_cache(kind)
    for key in KEYS:
        calls: list[Any] = []

        def init(key: Any = key, calls: list[Any] = calls) -> tuple[str, Any]:
            calls.append(key)
            return ("new", key)

        assert c.get_with(key, init) == ("new", key)
        assert calls == [key]


@pytest.mark.parametrize("kind", KINDS)
def test_iteration_does_not_show_it(kind: str) -> None:
    c, kept = expired_cache(kind)
    expected_keys = [] if kept is None else [kept]
    expected_values = [] if kept is None else ["kept-value"]
    assert list(c) == expected_keys
    assert c.keys() == expected_keys
    assert c.values() == expected_values
    assert c.items() == list(zip(expected_keys, expected_values, strict=True))
    assert not any(isinstance(v, tuple) and v[0] == "old" for v in c.values())


@pytest.mark.parametrize("kind", KINDS)
def test_len_does_not_count_it(kind: str) -> None:
    c, kept = expired_cache(kind)
    expected = 0 if kept is None else 1
    assert len(c) == expected
    assert c.count() == expected


@pytest.mark.parametrize("kind", KINDS)
def test_len_before_any_other_read(kind: str) -> None:
    """`len` first, then every read agrees with it."""
    c, kept = expired_cache(kind)
    n = len(c)
    assert n == (0 if kept is None else 1)
    assert len(c.keys()) == n
    for key in KEYS:
        assert key not in c


@pytest.mark.parametrize("kind", KINDS)
def test_expired_entry_can_be_set_again(kind: str) -> None:
    """Writing the key again stores the new value (and, for the cache-wide
    lifetime, it expires like any other)."""
    c, _ = expired_cache(kind)
    for key in KEYS:
        c.set(key, ("new", key))
        got = c.get(key, "expired-again")
        assert got in (("new", key), "expired-again"), got


# --- compatibility with moka-py 0.5.0 ------------------------------------------------


def test_subscripted_class_is_the_class() -> None:
    assert Moka[str, int] is Moka
    assert Moka[Any, Any] is Moka


def test_isinstance_with_subscripted_class() -> None:
    c: Moka[str, int] = Moka(10)
    assert isinstance(c, Moka[str, int])
    assert not isinstance({}, Moka[str, int])
    assert issubclass(Moka, Moka[str, int])


def test_subscripted_class_still_constructs() -> None:
    c = Moka[str, int](10, ttl=60.0)
    assert type(c) is Moka
    c.set("a", 1)
    assert c.get("a") == 1


def bool_weigher(k: Any, v: Any) -> bool:
    return bool(v)


@pytest.mark.parametrize("path", ["set", "setitem", "get_with"])
def test_weigher_returning_bool_weighs_like_int(path: str) -> None:
    c: Moka[str, int] = Moka(10, weigher=bool_weigher)
    put: Callable[[str, int], object] = {
        "set": c.set,
        "setitem": c.__setitem__,
        "get_with": lambda k, v: c.get_with(k, lambda: v),
    }[path]
    put("heavy-1", 1)
    put("heavy-2", 2)
    put("free", 0)
    assert c.weighted_size() == 2
    assert (c.get("heavy-1"), c.get("heavy-2"), c.get("free")) == (1, 2, 0)


def test_weigher_returning_bool_bounds_the_size() -> None:
    """True counts as 1 against the capacity, False as nothing: many weightless
    entries fit in a capacity of 5."""
    c: Moka[int, int] = Moka(5, weigher=lambda k, v: k % 2 == 0, policy="lru")
    for i in range(40):
        c.set(i, i)
    c.run_pending_tasks()
    assert c.weighted_size() <= 5
    assert len(c) > 5
    assert sum(1 for k in c if k % 2 == 0) <= 5
