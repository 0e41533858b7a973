"""Expiration: the cache-wide `ttl`/`tti` and the per-entry ones of `set()` and
`get_with()`.

The machine is noisy, so no test asserts that something happens *before* a
time: presence right after a write is only asserted when the write and the
read were measured to finish well inside the deadline, and expiry only after
sleeping well past it.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from moka_py import Moka


def assert_present_if_quick(c: Moka[Any, Any], key: Any, value: Any, start: float, ttl: float):
    """Asserts `c[key] == value` if this read ends before half of `ttl` has passed
    since `start` (the time taken just before the write)."""
    got = c.get(key)
    if time.monotonic() - start < ttl / 2:
        assert got == value


def test_cache_ttl_expires() -> None:
    c: Moka[str, int] = Moka(10, ttl=0.1)
    start = time.monotonic()
    c.set("k", 1)
    assert_present_if_quick(c, "k", 1, start, 0.1)
    time.sleep(0.4)
    assert c.get("k") is None
    assert "k" not in c
    assert c.count() == 0


def test_cache_ttl_is_not_refreshed_by_reads() -> None:
    c: Moka[str, int] = Moka(10, ttl=0.2)
    c.set("k", 1)
    deadline = time.monotonic() + 0.8
    while time.monotonic() < deadline:
        c.get("k")
        time.sleep(0.01)
    assert c.get("k") is None


def test_cache_ttl_is_restarted_by_writes() -> None:
    c: Moka[str, int] = Moka(10, ttl=0.3)
    c.set("k", 1)
    time.sleep(0.4)
    start = time.monotonic()
    c.set("k", 2)
    assert_present_if_quick(c, "k", 2, start, 0.3)
    time.sleep(0.6)
    assert c.get("k") is None


def test_cache_tti_expires() -> None:
    c: Moka[str, int] = Moka(10, tti=0.1)
    start = time.monotonic()
    c.set("k", 1)
    assert_present_if_quick(c, "k", 1, start, 0.1)
    time.sleep(0.4)
    assert c.get("k") is None
    assert c.count() == 0


def refreshes_survive(
    c: Moka[str, int], key: str, tti: float, span: float, per_entry: bool = False
) -> bool:
    """Reads `key` every few ms until it has lived `span` seconds; True if every read
    whose gap to the previous access was well under `tti` found it, False if the
    machine stalled too long to tell (the caller retries)."""
    before_prev = time.monotonic()
    if per_entry:
        c.set(key, 1, tti=tti)
    else:
        c.set(key, 1)
    born = before_prev
    while True:
        time.sleep(0.02)
        before = time.monotonic()
        got = c.get(key)
        after = time.monotonic()
        if after - before_prev > tti * 0.6:
            return False
        assert got == 1, f"entry expired although read every <{tti * 0.6:.2f}s"
        before_prev = before
        if after - born > span:
            return True


def test_cache_tti_is_refreshed_by_reads() -> None:
    tti = 0.2
    c: Moka[str, int] = Moka(10, tti=tti)
    for _ in range(5):
        if refreshes_survive(c, "k", tti, span=2.5 * tti):
            break
    else:
        pytest.fail("the machine was too slow to test tti refresh 5 times in a row")
    time.sleep(2.5 * tti)
    assert c.get("k") is None


def test_ttl_caps_tti() -> None:
    c: Moka[str, int] = Moka(10, ttl=0.3, tti=10)
    c.set("k", 1)
    deadline = time.monotonic() + 0.8
    while time.monotonic() < deadline:
        c.get("k")
        time.sleep(0.01)
    assert c.get("k") is None


# --- per-entry expiration -----------------------------------------------------


@pytest.mark.parametrize("kind", ["ttl", "tti"])
def test_per_entry_on_set(kind: str) -> None:
    c: Moka[str, int] = Moka(10)
    start = time.monotonic()
    c.set("short", 1, **{kind: 0.1})
    c.set("plain", 2)
    assert_present_if_quick(c, "short", 1, start, 0.1)
    time.sleep(0.4)
    assert c.get("short") is None
    assert "short" not in c
    assert c.get("plain") == 2


@pytest.mark.parametrize("kind", ["ttl", "tti"])
def test_per_entry_shortens_cache_wide(kind: str) -> None:
    c: Moka[str, int] = Moka(10, **{kind: 100})
    c.set("short", 1, **{kind: 0.1})
    c.set("long", 2)
    time.sleep(0.4)
    assert c.get("short") is None
    assert c.get("long") == 2


@pytest.mark.parametrize("kind", ["ttl", "tti"])
def test_per_entry_on_get_with(kind: str) -> None:
    c: Moka[str, int] = Moka(10)
    calls: list[int] = []

    def init() -> int:
        calls.append(1)
        return len(calls)

    start = time.monotonic()
    assert c.get_with("k", init, **{kind: 0.1}) == 1
    assert_present_if_quick(c, "k", 1, start, 0.1)
    time.sleep(0.4)
    assert c.get("k") is None
    assert c.get_with("k", init) == 2
    assert len(calls) == 2
    time.sleep(0.3)
    # Loaded without per-entry expiry: it stays.
    assert c.get("k") == 2


def test_per_entry_on_get_with_shortens_cache_wide() -> None:
    c: Moka[str, int] = Moka(10, ttl=100, tti=100)
    c.get_with("a", lambda: 1, ttl=0.1)
    c.get_with("b", lambda: 2, tti=0.1)
    c.get_with("c", lambda: 3)
    time.sleep(0.4)
    assert c.get("a") is None
    assert c.get("b") is None
    assert c.get("c") == 3


def test_get_with_hit_ignores_ttl() -> None:
    c: Moka[str, int] = Moka(10)
    c.set("k", 1)
    assert c.get_with("k", lambda: 2, ttl=0.05) == 1
    time.sleep(0.3)
    assert c.get("k") == 1


@pytest.mark.parametrize("kind", ["ttl", "tti"])
def test_cache_wide_deadline_wins_over_longer_per_entry(kind: str) -> None:
    c: Moka[str, int] = Moka(10, **{kind: 0.1})
    c.set("k", 1, **{kind: 10})
    c.get_with("g", lambda: 1, **{kind: 10})
    time.sleep(0.5)
    assert c.get("k") is None
    assert c.get("g") is None


def test_cache_ttl_wins_over_longer_per_entry_tti() -> None:
    c: Moka[str, int] = Moka(10, ttl=0.1)
    c.set("k", 1, tti=10)
    time.sleep(0.5)
    assert c.get("k") is None


def test_per_entry_ttl_and_tti_together() -> None:
    c: Moka[str, int] = Moka(10)
    c.set("ttl-first", 1, ttl=0.1, tti=10)
    c.set("tti-first", 2, ttl=10, tti=0.1)
    time.sleep(0.4)
    assert c.get("ttl-first") is None
    assert c.get("tti-first") is None


def test_per_entry_ttl_not_extended_by_reads_with_tti() -> None:
    c: Moka[str, int] = Moka(10)
    c.set("k", 1, ttl=0.3, tti=0.2)
    deadline = time.monotonic() + 0.9
    while time.monotonic() < deadline:
        c.get("k")
        time.sleep(0.01)
    assert c.get("k") is None


def test_reset_without_ttl_clears_per_entry_ttl() -> None:
    c: Moka[str, int] = Moka(10)
    c.set("k", 1, ttl=0.1)
    c.set("k", 2)
    time.sleep(0.3)
    assert c.get("k") == 2
    assert "k" in c


def test_reset_without_tti_clears_per_entry_tti() -> None:
    c: Moka[str, int] = Moka(10)
    c.set("k", 1, tti=0.1)
    c["k"] = 2
    time.sleep(0.3)
    assert c.get("k") == 2


def test_reset_with_shorter_ttl() -> None:
    c: Moka[str, int] = Moka(10)
    c.set("k", 1, ttl=100)
    c.set("k", 2, ttl=0.1)
    time.sleep(0.4)
    assert c.get("k") is None


def test_per_entry_tti_is_refreshed_by_reads() -> None:
    tti = 0.2
    c: Moka[str, int] = Moka(10)
    for _ in range(5):
        if refreshes_survive(c, "k", tti, span=2.5 * tti, per_entry=True):
            break
    else:
        pytest.fail("the machine was too slow to test tti refresh 5 times in a row")
    time.sleep(2.5 * tti)
    assert c.get("k") is None


def test_contains_does_not_refresh_per_entry_tti() -> None:
    c: Moka[str, int] = Moka(10)
    c.set("k", 1, tti=0.2)
    found = True
    deadline = time.monotonic() + 0.8
    while time.monotonic() < deadline:
        found = "k" in c
        time.sleep(0.005)
    assert not found


def test_expired_entries_leave_keys_values_items() -> None:
    c: Moka[str, int] = Moka(10, ttl=0.1)
    c.set("a", 1)
    c.set("b", 2)
    c.set("c", 3, ttl=None)
    time.sleep(0.4)
    assert c.keys() == []
    assert c.values() == []
    assert c.items() == []
    assert list(c) == []
    assert len(c) == 0
