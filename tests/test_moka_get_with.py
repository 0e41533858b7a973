"""`Moka.get_with`: read-through loading with one initializer call per missing key."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from moka_py import Moka

RunThreads = Callable[..., list[Any]]


def test_hit_does_not_call_initializer() -> None:
    c: Moka[str, int] = Moka(10)
    c.set("k", 1)

    def init() -> int:
        raise AssertionError("initializer called on a hit")

    assert c.get_with("k", init) == 1


def test_miss_calls_once_and_caches() -> None:
    calls: list[int] = []
    value = ["loaded"]

    def init() -> list[str]:
        calls.append(1)
        return value

    c: Moka[str, list[str]] = Moka(10)
    assert c.get_with("k", init) is value
    assert c.get_with("k", init) is value
    assert c.get("k") is value
    assert c["k"] is value
    assert calls == [1]


def test_none_result_is_cached() -> None:
    calls: list[int] = []
    c: Moka[str, None] = Moka(10)
    assert c.get_with("k", lambda: calls.append(1)) is None
    assert "k" in c
    assert c.get_with("k", lambda: calls.append(1)) is None
    assert calls == [1]


def test_initializer_must_be_called_without_args() -> None:
    c: Moka[str, int] = Moka(10)
    with pytest.raises(TypeError):
        c.get_with("k", lambda x: x)
    assert "k" not in c
    with pytest.raises(TypeError):
        c.get_with("k", 5)  # type: ignore[arg-type]
    assert "k" not in c
    assert c.get_with("k", lambda: 1) == 1


def test_concurrent_misses_share_one_call(run_threads: RunThreads) -> None:
    calls: list[int] = []
    lock = threading.Lock()

    class Value:
        pass

    def init() -> Value:
        with lock:
            calls.append(threading.get_ident())
        time.sleep(0.1)
        return Value()

    c: Moka[str, Value] = Moka(10)
    results = run_threads(lambda i: c.get_with("k", init), 16)
    assert len(calls) == 1
    first = results[0]
    assert isinstance(first, Value)
    assert all(r is first for r in results)
    assert c.get("k") is first


def test_concurrent_misses_of_different_keys_run_in_parallel(run_threads: RunThreads) -> None:
    inside = threading.Barrier(4, timeout=20)

    def work(i: int) -> int:
        def init() -> int:
            # Only returns once all four initializers run at the same time.
            inside.wait()
            return i

        return c.get_with(f"key-{i}", init)

    c: Moka[str, int] = Moka(10)
    assert run_threads(work, 4) == [0, 1, 2, 3]


class LoadError(ValueError):
    pass


def test_initializer_error_reaches_every_waiter(run_threads: RunThreads) -> None:
    calls: list[int] = []
    lock = threading.Lock()

    def init() -> int:
        with lock:
            calls.append(1)
        time.sleep(0.2)
        raise ValueError("load failed for k")

    c: Moka[str, int] = Moka(10)

    def work(i: int) -> BaseException:
        try:
            c.get_with("k", init)
        except ValueError as e:
            return e
        raise AssertionError("get_with did not raise")

    errors = run_threads(work, 16)
    assert all(type(e) is ValueError for e in errors)
    assert all(e.args == ("load failed for k",) for e in errors)
    assert all(str(e) == "load failed for k" for e in errors)
    # Each thread got its own exception object.
    assert len({id(e) for e in errors}) == len(errors)
    # Shared one call, unless a thread was so late that the failed load had ended.
    assert 1 <= len(calls) <= 16
    assert "k" not in c
    assert c.get("k") is None
    # The next call retries and succeeds.
    assert c.get_with("k", lambda: 42) == 42
    assert c.get("k") == 42


def test_initializer_error_subclass_and_attributes(run_threads: RunThreads) -> None:
    def init() -> int:
        time.sleep(0.1)
        err = LoadError("custom", 7)
        err.detail = {"why": "because"}  # type: ignore[attr-defined]
        raise err

    c: Moka[str, int] = Moka(10)

    def work(i: int) -> BaseException:
        with pytest.raises(LoadError) as info:
            c.get_with("k", init)
        return info.value

    errors = run_threads(work, 8)
    assert all(type(e) is LoadError for e in errors)
    assert all(e.args == ("custom", 7) for e in errors)
    assert all(e.detail == {"why": "because"} for e in errors)  # type: ignore[attr-defined]
    assert all(e.__traceback__ is not None for e in errors)
    assert "k" not in c


def test_initializer_error_single_thread() -> None:
    c: Moka[str, int] = Moka(10)
    with pytest.raises(ZeroDivisionError):
        c.get_with("k", lambda: 1 // 0)
    assert "k" not in c
    assert c.get_with("k", lambda: 1) == 1


def test_same_key_recursion_raises_instead_of_hanging(run_threads: RunThreads) -> None:
    c: Moka[str, int] = Moka(10)

    def init() -> int:
        return c.get_with("recursive-key", lambda: 1)

    def work(i: int) -> BaseException:
        with pytest.raises(RuntimeError) as info:
            c.get_with("recursive-key", init)
        return info.value

    (error,) = run_threads(work, 1, timeout=20)
    assert "recursive-key" in str(error)
    assert "recursive-key" not in c
    assert c.get_with("recursive-key", lambda: 5) == 5


def test_same_key_recursion_caught_inside_initializer(run_threads: RunThreads) -> None:
    c: Moka[Any, str] = Moka(10)
    inner_errors: list[BaseException] = []

    def init() -> str:
        try:
            c.get_with(("k", 1), lambda: "inner")
        except RuntimeError as e:
            inner_errors.append(e)
        return "outer"

    assert run_threads(lambda i: c.get_with(("k", 1), init), 1, timeout=20) == ["outer"]
    assert len(inner_errors) == 1
    assert "('k', 1)" in str(inner_errors[0])
    assert c.get(("k", 1)) == "outer"


def test_nested_get_with_other_key(run_threads: RunThreads) -> None:
    c: Moka[str, Any] = Moka(10)

    def outer() -> tuple[str, str]:
        return ("outer", c.get_with("inner", lambda: "inner"))

    (result,) = run_threads(lambda i: c.get_with("outer", outer), 1, timeout=20)
    assert result == ("outer", "inner")
    assert c.get("inner") == "inner"
    assert c.get("outer") == ("outer", "inner")


def test_keyboard_interrupt_propagates_and_nothing_cached() -> None:
    c: Moka[str, int] = Moka(10)

    def init() -> int:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        c.get_with("k", init)
    assert "k" not in c
    assert c.get_with("k", lambda: 3) == 3
    assert c.get("k") == 3


def test_keyboard_interrupt_in_leader_lets_waiters_retry(run_threads: RunThreads) -> None:
    calls: list[int] = []
    lock = threading.Lock()

    def init() -> str:
        with lock:
            calls.append(1)
            first = len(calls) == 1
        time.sleep(0.2)
        if first:
            raise KeyboardInterrupt
        return "value"

    c: Moka[str, str] = Moka(10)

    def work(i: int) -> str:
        try:
            return c.get_with("k", init)
        except KeyboardInterrupt:
            return "interrupted"

    results = run_threads(work, 8)
    assert results.count("interrupted") == 1
    assert results.count("value") == 7
    assert c.get("k") == "value"


def test_system_exit_propagates() -> None:
    c: Moka[str, int] = Moka(10)

    def init() -> int:
        raise SystemExit(3)

    with pytest.raises(SystemExit) as info:
        c.get_with("k", init)
    assert info.value.code == 3
    assert "k" not in c


def test_get_with_per_entry_ttl() -> None:
    c: Moka[str, int] = Moka(10)
    assert c.get_with("k", lambda: 1, ttl=0.1) == 1
    assert c.get_with("other", lambda: 2) == 2
    time.sleep(0.4)
    assert "k" not in c
    assert c.get_with("k", lambda: 3) == 3
    assert c.get("other") == 2


def test_get_with_keys_follow_dict_semantics() -> None:
    c: Moka[Any, str] = Moka(10)
    assert c.get_with(1, lambda: "one") == "one"
    assert c.get_with(1.0, lambda: "float") == "one"
    assert c.get_with(True, lambda: "bool") == "one"
    assert c.get_with("1", lambda: "str") == "str"
    assert c.get_with(b"1", lambda: "bytes") == "bytes"
    assert len(c) == 3


def test_initializer_may_write_the_same_key() -> None:
    c: Moka[str, str] = Moka(10)

    def init() -> str:
        c.set("k", "written by initializer")
        return "returned"

    assert c.get_with("k", init) == "returned"
    assert c.get("k") == "returned"
