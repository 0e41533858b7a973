"""moka_py.django.MokaCache: Django's cache API with LocMemCache's semantics.

The backends come from a real settings module, tests/django_settings.py, through
``django.core.cache.caches``. Tests that need a store of their own (most of them:
pytest-run-parallel runs each test in several threads at once) build one from
the same settings with a unique LOCATION. Time is a fake clock where a test
needs a deadline to pass exactly, and a short real ttl where moka's own expiry
is under test.
"""

from __future__ import annotations

import asyncio
import gc
import os
import pickle
import sys
import time
import types
import uuid
from collections.abc import Iterator
from typing import Any

import django.conf
import pytest
from asgiref.local import Local
from django.core.cache import CacheKeyWarning, caches
from django.core.cache.backends import base as django_base
from django.core.cache.backends import locmem as django_locmem
from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.cache.backends.locmem import LocMemCache
from django.core.exceptions import ImproperlyConfigured
from django.utils.functional import empty
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

import moka_py.django as moka_django
from moka_py.django import MokaCache

# --- settings -----------------------------------------------------------------------
# (django.conf.settings is not a global of this module: pytest-run-parallel inspects
# the globals of the tests, and the lazy settings object raises when touched unset.)


def _reset_caches() -> None:
    """Makes ``caches`` read CACHES again (as Django's own tests do on a change)."""
    caches.__dict__.pop("settings", None)
    caches._settings = None
    caches._connections = Local()


@pytest.fixture(scope="module", autouse=True)
def django_settings_module() -> Iterator[None]:
    """Points Django at tests/django_settings.py for this module, and restores what
    was there before: tests/test_readme.py configures Django in this process too."""
    saved_env = os.environ.get("DJANGO_SETTINGS_MODULE")
    saved_settings = django.conf.settings._wrapped
    os.environ["DJANGO_SETTINGS_MODULE"] = "django_settings"
    django.conf.settings._wrapped = empty
    _reset_caches()
    yield
    django.conf.settings._wrapped = saved_settings
    if saved_env is None:
        del os.environ["DJANGO_SETTINGS_MODULE"]
    else:
        os.environ["DJANGO_SETTINGS_MODULE"] = saved_env
    _reset_caches()


def params_of(alias: str) -> dict[str, Any]:
    """The parameters Django passes to the backend of ``alias`` (all but BACKEND and
    LOCATION)."""
    config = django.conf.settings.CACHES[alias]
    return {k: v for k, v in config.items() if k not in ("BACKEND", "LOCATION")}


def fresh(alias: str = "default", **options: Any) -> MokaCache:
    """A MokaCache configured as ``alias`` in the settings (OPTIONS updated with
    ``options``), with a store of its own."""
    params = params_of(alias)
    params["OPTIONS"] = {**params.get("OPTIONS", {}), **options}
    return MokaCache(f"test-{uuid.uuid4()}", params)


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex}"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """MokaCache's deadlines on a fake clock (moka's own ttl stays real: the
    timeouts used with it are long, so moka never drops an entry first)."""
    fake = FakeClock()
    monkeypatch.setattr(moka_django, "_clock", fake)
    return fake


# --- configuration ------------------------------------------------------------------


def test_caches_come_from_the_settings_module() -> None:
    default = caches["default"]
    assert isinstance(default, MokaCache)
    assert default.default_timeout == 300
    assert default._max_entries == 10_000 and default._cull_frequency == 3
    assert default._cache.policy == "tiny_lfu"
    lru = caches["lru"]
    assert isinstance(lru, MokaCache)
    assert lru._max_entries == 100 and lru._cache.policy == "lru" and lru._cull_frequency == 4
    assert isinstance(caches["locmem"], LocMemCache)


def test_threads_get_their_own_backend_object_over_one_store(run_threads: Any) -> None:
    key = unique("shared")
    caches["default"].set(key, "from the main thread")

    def in_thread(i: int) -> tuple[int, Any]:
        cache = caches["default"]
        return id(cache), cache.get(key)

    results = run_threads(in_thread, 4)
    assert all(value == "from the main thread" for _, value in results)
    assert id(caches["default"]) not in {ident for ident, _ in results}
    caches["default"].delete(key)


def test_stores_are_per_location_and_options() -> None:
    params: dict[str, Any] = {"OPTIONS": {"MAX_ENTRIES": 50}}
    location = unique("loc")
    a, b = MokaCache(location, params), MokaCache(location, params)
    other_location = MokaCache(unique("loc"), params)
    other_options = MokaCache(location, {"OPTIONS": {"MAX_ENTRIES": 51}})
    other_cull = MokaCache(location, {"OPTIONS": {"MAX_ENTRIES": 50, "CULL_FREQUENCY": 0}})
    a.set("k", 1)
    assert b.get("k") == 1
    assert other_location.get("k") is None
    assert other_options.get("k") is None
    assert other_cull.get("k") is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"MAX_ENTIRES": 10}, "unknown OPTIONS 'MAX_ENTIRES'; the options are MAX_ENTRIES"),
        ({"MAX_ENTRIES": -1}, "MAX_ENTRIES must be an int >= 0, not -1"),
        ({"MAX_ENTRIES": "10"}, "MAX_ENTRIES must be an int >= 0, not '10'"),
        ({"MAX_ENTRIES": True}, "MAX_ENTRIES must be an int >= 0, not True"),
        ({"POLICY": "lfu"}, "POLICY must be 'tiny_lfu' or 'lru', not 'lfu'"),
        ({"PICKLE": "no"}, "PICKLE must be True or False, not 'no'"),
        ({"STATS": 1}, "STATS must be True or False, not 1"),
    ],
)
def test_bad_options_raise(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=message):
        MokaCache(unique("bad"), {"OPTIONS": options})


def test_stats_option_counts_every_read_and_is_exported() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from prometheus_client import CollectorRegistry, generate_latest

    from moka_py.otel import instrument
    from moka_py.prometheus import MokaCollector

    with pytest.raises(ValueError, match="stats=True"):
        fresh().stats()
    location = unique("stats")
    params: dict[str, Any] = {"OPTIONS": {"STATS": True}}
    cache = MokaCache(location, params)
    reader = InMemoryMetricReader()
    instrument(cache, "django", meter_provider=MeterProvider(metric_readers=[reader]))
    registry = CollectorRegistry()
    collector = MokaCollector()
    registry.register(collector)
    collector.add("django", cache)
    cache.set("a", 1)
    assert cache.get("a") == 1 and cache.get("b") is None
    assert cache.get_many(["a", "b"]) == {"a": 1}
    # Another backend object of the same LOCATION shares the store and its figures.
    other = MokaCache(location, params)
    assert other.get("a") == 1
    s = other.stats()
    assert (s.hits, s.misses) == (3, 2)
    cache.reset_stats()
    assert cache.stats().requests == 0 and cache.stats(cumulative=True).requests == 5
    # A backend object is one per thread: the export follows the store, not it.
    del cache, other
    gc.collect()
    data = reader.get_metrics_data()
    assert data is not None
    hits = [
        p.value  # type: ignore[union-attr]
        for m in data.resource_metrics[0].scope_metrics[0].metrics
        if m.name == "moka.cache.requests"
        for p in m.data.data_points  # type: ignore[union-attr]
        if p.attributes == {"cache.name": "django", "cache.result": "hit"}
    ]
    assert hits == [3]
    text = generate_latest(registry).decode()
    assert 'moka_cache_requests_total{cache_name="django",cache_result="miss"} 2.0' in text


def _cull_count(cache: MokaCache, n: int) -> int:
    for i in range(1, n):
        cache.set(f"cull{i}", "value", 1000)
    return sum(cache.has_key(f"cull{i}") for i in range(1, n))


@pytest.mark.parametrize("policy", ["tiny_lfu", "lru"])
def test_max_entries_and_cull_frequency_are_djangos(policy: str) -> None:
    # Django's numbers (its BaseCacheTests.test_cull and test_zero_cull, which
    # tests/django_cache_suite.py also runs): 49 keys into 30 entries leave 29
    # (a third culled at each 30), or 19 with CULL_FREQUENCY=0 (emptied at 30).
    assert _cull_count(fresh(MAX_ENTRIES=30, POLICY=policy), 50) == 29
    assert _cull_count(fresh(MAX_ENTRIES=30, CULL_FREQUENCY=0, POLICY=policy), 50) == 19
    locmem = LocMemCache(unique("locmem"), {"OPTIONS": {"MAX_ENTRIES": 30}})
    assert _cull_count(locmem, 50) == 29
    cache = fresh(MAX_ENTRIES=100, CULL_FREQUENCY=4, POLICY=policy)
    for i in range(1000):
        cache.set(i, i)
        assert cache.has_key(i)  # a key just written is there, full or not
    assert 0 < cache._cache.count() <= 100
    assert MokaCache(unique("defaults"), {})._max_entries == 300  # Django's default


def test_a_key_just_set_into_a_full_cache_is_there() -> None:
    # Under TinyLFU, moka may refuse a new key when it is full; the cull keeps
    # the cache below moka's capacity, so it never is (Django's
    # test_cull_delete_when_store_empty forces a cull at every write).
    cache = fresh(MAX_ENTRIES=30)
    for i in range(30):
        cache.get("hot")  # a frequent key that TinyLFU would prefer
        cache.set(f"k{i}", i)
    cache._max_entries = -1
    cache.set("force_cull_delete", "value", 1000)
    assert cache.has_key("force_cull_delete")
    nothing = fresh(MAX_ENTRIES=0, CULL_FREQUENCY=0)
    assert nothing.add("k", 1) is True and nothing.has_key("k")  # emptied, then written


def test_culls_from_threads_keep_the_bound(run_threads: Any) -> None:
    cache = fresh(MAX_ENTRIES=50)

    def write(i: int) -> None:
        for j in range(500):
            cache.set(f"{i}-{j}", j)

    # (A write that finds another thread's cull under way goes on without one:
    # the count may pass the bound by what is written meanwhile; the next
    # write's cull takes a third of it.)
    run_threads(write, 4)
    assert cache._cache.count() < 200
    for _ in range(10):
        cache.set("last", 1)
    assert cache._cache.count() <= 50 and cache.get("last") == 1


# --- values ---------------------------------------------------------------------------


def test_values_are_pickled_copies() -> None:
    cache = fresh()
    value = {"list": [1, 2], "none": None}
    cache.set("k", value)
    assert cache._cache.get(":1:k")[0] == pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    value["list"].append(3)
    got = cache.get("k")
    assert got == {"list": [1, 2], "none": None}
    got["list"].append(4)
    assert cache.get("k") == {"list": [1, 2], "none": None}
    assert cache.get("k") is not cache.get("k")
    cache.set("none", None)
    assert cache.get("none", "default") is None and cache.has_key("none")
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        cache.set("lambda", lambda: 1)
    assert not cache.has_key("lambda")


def test_pickle_false_stores_references() -> None:
    cache = fresh("references")
    value = [1, 2]
    cache.set("k", value)
    assert cache.get("k") is value
    fn = lambda: 1  # noqa: E731 - not picklable, stored as is
    assert cache.add("fn", fn) and cache.get("fn") is fn
    assert cache.get_many(["k", "fn"]) == {"k": value, "fn": fn}
    assert cache.get_or_set("k", None) is value
    cache.set("n", 10)
    assert cache.incr("n", 5) == 15 and cache.get("n") == 15


class UsesTheCacheWhenReleased:
    """A value whose finalizer writes to the cache that held it."""

    def __init__(self, cache: MokaCache, key: str, finalized: list[str]) -> None:
        self.cache, self.key, self.finalized = cache, key, finalized

    def __del__(self) -> None:
        self.cache.set(self.key, "written by __del__")
        self.cache.add(f"{self.key}-added", 1)
        self.finalized.append(self.key)


def test_pickle_false_values_may_use_the_cache_when_released(run_threads: Any) -> None:
    """moka_py releases replaced and evicted values after any moka call, so also
    under the store's write lock: their finalizers write to the same cache, from
    several threads at once, without a deadlock, and each runs once."""
    cache = fresh("references", MAX_ENTRIES=8)
    finalized: list[str] = []

    def scenario(i: int) -> None:
        for j in range(300):
            key = f"k{i}-{j % 5}"
            value = UsesTheCacheWhenReleased(cache, key, finalized)
            match j % 4:
                case 0:
                    cache.set(key, value)
                case 1:
                    cache.add(key, value)
                case 2:
                    cache.set_many({key: value, f"{key}-b": 2})
                case _:
                    cache.set(key, value)
                    cache.touch(key, 0)
            del value
            cache.delete(f"k{i}-{(j + 2) % 5}")

    run_threads(scenario, 4, timeout=60.0)
    # moka frees what the ended threads left behind at later calls: a few rounds.
    deadline = time.monotonic() + 10.0
    while len(finalized) < 4 * 300 and time.monotonic() < deadline:
        cache.clear()
        cache._cache.run_pending_tasks()
        gc.collect()
    assert len(finalized) == 4 * 300


# --- timeouts -------------------------------------------------------------------------


@pytest.mark.thread_unsafe  # replaces the module's clock
def test_default_none_zero_negative_and_positive_timeouts(clock: FakeClock) -> None:
    cache = fresh()
    cache.set("default", 1)  # TIMEOUT 300
    cache.set("explicit_default", 1, timeout=DEFAULT_TIMEOUT)
    cache.set("forever", 1, timeout=None)
    cache.set("short", 1, timeout=10)
    cache.set("float", 1, timeout=10.5)
    clock.advance(10)  # Django: alive while the deadline is later than now
    assert cache.get_many(["default", "explicit_default", "forever", "short", "float"]) == {
        "default": 1,
        "explicit_default": 1,
        "forever": 1,
        "float": 1,
    }
    clock.advance(290)
    assert cache.get_many(["default", "explicit_default", "forever", "float"]) == {"forever": 1}
    clock.advance(10**12)
    assert cache.get("forever") == 1
    for timeout in (0, -1, -0.5, float("nan")):
        cache.set("k", 1)
        cache.set("k", 2, timeout=timeout)  # deletes the existing key
        assert not cache.has_key("k")
        assert cache.add("k", 3, timeout=timeout) is True  # absent: "added", not kept
        assert cache.get("k", "absent") == "absent"
        cache.set("k", 1)
        assert cache.add("k", 3, timeout=timeout) is False
        assert cache.get("k") == 1
    cache.set("huge", 1, timeout=10**15)  # beyond moka's ttl range: the deadline alone
    clock.advance(10**15 - 1)
    assert cache.get("huge") == 1
    clock.advance(1)
    assert cache.get("huge") is None


@pytest.mark.thread_unsafe  # replaces the module's clock
def test_settings_timeout_none_is_forever(clock: FakeClock) -> None:
    cache = fresh("references")  # TIMEOUT: None
    cache.set("k", 1)
    cache.add("a", 1)
    clock.advance(10**12)
    assert cache.get_many(["k", "a"]) == {"k": 1, "a": 1}


@pytest.mark.thread_unsafe  # replaces the module's clock
def test_expired_key_is_absent_everywhere(clock: FakeClock) -> None:
    cache = fresh()
    cache.set("k", 5, timeout=60)
    clock.advance(60)
    assert cache.get("k") is None
    assert cache.get_many(["k"]) == {}
    assert not cache.has_key("k") and "k" not in cache
    assert cache.touch("k") is False
    with pytest.raises(ValueError, match="Key ':1:k' not found"):
        cache.incr("k")
    with pytest.raises(ValueError, match="Key 'k' not found"):
        cache.incr_version("k")
    assert cache.delete("k") is False  # LocMemCache: True, until a read notices
    cache.set("k", 5, timeout=60)
    clock.advance(60)
    assert cache.add("k", 6) is True and cache.get("k") == 6
    cache.set("k", 5, timeout=60)
    clock.advance(60)
    assert cache.get_or_set("k", 7) == 7


def test_short_real_ttls_expire_in_moka_too() -> None:
    cache = fresh()
    cache.set("set", 1, timeout=0.05)
    cache.add("add", 1, timeout=0.05)
    cache.set("touched", 1)
    cache.touch("touched", 0.05)
    cache.set("incr", 1, timeout=0.05)
    cache.incr("incr")  # keeps the deadline
    cache.set("long", 1, timeout=60)
    time.sleep(0.12)
    keys = ["set", "add", "touched", "incr"]
    assert cache.get_many(keys) == {}
    assert not any(cache.has_key(k) for k in keys)
    with pytest.raises(ValueError):
        cache.incr("incr")
    assert cache.touch("touched") is False
    assert cache.get("long") == 1
    assert len(cache._cache) == 1  # moka dropped the expired entries itself


@pytest.mark.thread_unsafe  # replaces the module's clock
def test_touch(clock: FakeClock) -> None:
    cache = fresh()
    assert cache.touch("missing") is False
    cache.set("k", 1, timeout=100)
    assert cache.touch("k", 200) is True
    clock.advance(150)
    assert cache.get("k") == 1
    assert cache.touch("k", 10) is True  # may shorten too
    clock.advance(10)
    assert cache.get("k") is None
    cache.set("k", 1, timeout=100)
    assert cache.touch("k", None) is True
    clock.advance(10**9)
    assert cache.get("k") == 1
    assert cache.touch("k") is True  # DEFAULT_TIMEOUT: 300
    clock.advance(299)
    assert cache.has_key("k")
    clock.advance(1)
    assert not cache.has_key("k")
    cache.set("k", 1)
    assert cache.touch("k", 0) is True  # expires it now
    assert not cache.has_key("k")
    cache.set("k", [1])
    assert cache.touch("k", -5) is True and cache.get("k") is None


# --- the rest of the API ----------------------------------------------------------------


@pytest.mark.thread_unsafe  # replaces the module's clock
def test_incr_and_decr(clock: FakeClock) -> None:
    cache = fresh()
    with pytest.raises(ValueError, match="not found"):
        cache.incr("missing")
    with pytest.raises(ValueError, match="not found"):
        cache.decr("missing")
    cache.set("n", 10, timeout=100)
    assert cache.incr("n") == 11
    assert cache.incr("n", 10) == 21
    assert cache.decr("n") == 20
    assert cache.decr("n", 30) == -10
    assert cache.incr("n", -1) == -11
    assert cache.get("n") == -11
    clock.advance(99)  # incr kept the deadline
    assert cache.get("n") == -11
    clock.advance(1)
    assert cache.get("n") is None
    cache.set("f", 1.5, timeout=None)
    assert cache.incr("f") == 2.5
    clock.advance(10**9)
    assert cache.get("f") == 2.5
    cache.set("s", "text")
    with pytest.raises(TypeError):
        cache.incr("s")
    assert cache.get("s") == "text"


def test_add_get_set_delete_has_key() -> None:
    cache = fresh()
    assert cache.get("k") is None and cache.get("k", 0) == 0
    assert cache.add("k", "a") is True
    assert cache.add("k", "b") is False
    assert cache.get("k") == "a"
    assert cache.set("k", "c") is None
    assert cache.get("k") == "c" and cache.has_key("k") and "k" in cache
    assert cache.delete("k") is True
    assert cache.delete("k") is False
    assert not cache.has_key("k") and "k" not in cache


def test_many_keys_at_once() -> None:
    cache = fresh()
    assert cache.set_many({"a": 1, "b": 2, "c": 3}) == []
    assert cache.get_many(["a", "b", "c", "d"]) == {"a": 1, "b": 2, "c": 3}
    assert cache.get_many(iter(["c", "a"])) == {"c": 3, "a": 1}
    assert cache.delete_many(["a", "b", "missing"]) is None
    assert cache.get_many(["a", "b", "c"]) == {"c": 3}
    assert cache.set_many({"x": 1, "y": 2}, timeout=0) == []
    assert cache.get_many(["x", "y"]) == {}
    cache.set_many({"x": 1}, version=2)
    assert cache.get_many(["x"]) == {} and cache.get_many(["x"], version=2) == {"x": 1}
    cache.delete_many(["x"], version=2)
    assert cache.get("x", version=2) is None


def test_clear_and_close() -> None:
    cache = fresh()
    cache.set_many({"a": 1, "b": 2})
    cache.set("c", 3, version=5)
    assert cache.clear() is None
    assert cache.get_many(["a", "b"]) == {} and cache.get("c", version=5) is None
    assert cache.close() is None
    cache.set("a", 1)  # still usable after close
    assert cache.get("a") == 1


def test_get_or_set() -> None:
    cache = fresh()
    calls = []

    def compute() -> str:
        calls.append(1)
        return "computed"

    assert cache.get_or_set("k", compute) == "computed"
    assert cache.get_or_set("k", compute) == "computed"
    assert calls == [1]
    assert cache.get_or_set("plain", [1, 2]) == [1, 2]
    assert cache.get_or_set("none", None) is None and cache.has_key("none")
    assert cache.get_or_set("zero", "v", timeout=0) == "v" and not cache.has_key("zero")
    assert cache.get_or_set("v2", "two", version=2) == "two"
    assert cache.get("v2") is None and cache.get("v2", version=2) == "two"


def test_key_prefix_version_and_key_function() -> None:
    # KEY_PREFIX site1, VERSION 3, KEY_FUNCTION reversed_key
    params = params_of("prefixed")
    location = unique("prefixed")
    cache = MokaCache(location, params)
    assert cache.make_key("abc") == "3/site1/cba"
    assert cache.make_key("abc", version=1) == "1/site1/cba"
    cache.set("abc", "v3")
    assert cache.get("abc", version=3) == "v3" and cache.get("abc", version=1) is None
    assert cache._cache.get("3/site1/cba") is not None  # stored under the made key
    other_prefix = MokaCache(location, {**params, "KEY_PREFIX": "site2"})  # the same store
    assert other_prefix.get("abc") is None
    other_prefix.set("abc", "site2")
    assert cache.get("abc") == "v3"


def test_versions() -> None:
    cache = fresh()
    cache.set("k", "v1")
    cache.set("k", "v2", version=2)
    assert cache.get("k") == "v1" and cache.get("k", version=2) == "v2"
    assert cache.incr_version("k") == 2  # moves version 1 to 2
    assert cache.get("k") is None and cache.get("k", version=2) == "v1"
    assert cache.incr_version("k", delta=3, version=2) == 5
    assert cache.decr_version("k", version=5) == 4
    assert cache.get("k", version=4) == "v1"
    with pytest.raises(ValueError, match="not found"):
        cache.incr_version("missing")
    with pytest.raises(ValueError, match="not found"):
        cache.decr_version("k", version=2)


@pytest.mark.thread_unsafe  # pytest.warns records warnings process-wide
def test_key_validation_warns() -> None:
    cache = fresh()
    with pytest.warns(CacheKeyWarning, match="characters"):
        cache.set("has space", 1)
    with pytest.warns(CacheKeyWarning, match="characters"):
        assert cache.get("has space") == 1
    with pytest.warns(CacheKeyWarning, match="longer than 250"):
        assert cache.add("x" * 300, 1) is True
    with pytest.warns(CacheKeyWarning):
        cache.set("\n", 1)
    # every method validates the key it is given
    calls = [
        lambda: cache.get("\n"),
        lambda: cache.has_key("\n"),
        lambda: cache.touch("\n"),
        lambda: cache.incr("\n"),
        lambda: cache.get_or_set("\n", 2),
        lambda: cache.incr_version("\n"),
        lambda: cache.get_many(["\x00"]),
        lambda: cache.set_many({"\x00": 1}),
        lambda: cache.delete_many(["\x00"]),
        lambda: cache.delete("\n", version=2),
    ]
    for call in calls:
        with pytest.warns(CacheKeyWarning, match="characters"):
            call()


# --- threads ---------------------------------------------------------------------------------


@pytest.fixture
def frequent_switches() -> Iterator[None]:
    """On the GIL build, threads take turns every few bytecodes instead of every
    5 ms, so that a race between a read and a write would show."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


def racy(test: Any) -> Any:
    """A threaded test run with frequent switches (alone under pytest-run-parallel,
    whose threads would restore each other's interval)."""
    return pytest.mark.thread_unsafe(pytest.mark.usefixtures("frequent_switches")(test))


@racy
def test_concurrent_add_of_one_key_has_one_winner(run_threads: Any) -> None:
    cache = fresh()
    for round_ in range(20):
        key = f"k{round_}"
        results = run_threads(lambda i, key=key: cache.add(key, i), 8)
        assert results.count(True) == 1
        assert cache.get(key) == results.index(True)


@racy
def test_concurrent_add_after_expiry_has_one_winner(run_threads: Any) -> None:
    cache = fresh()
    for round_ in range(10):
        key = f"k{round_}"
        cache.set(key, "old", timeout=0.01)
        time.sleep(0.02)
        results = run_threads(lambda i, key=key: cache.add(key, i), 8)
        assert results.count(True) == 1
        assert cache.get(key) == results.index(True)


@racy
def test_concurrent_incr_is_exact(run_threads: Any) -> None:
    cache = fresh()
    cache.set("n", 0, timeout=None)
    cache.set("m", 1000)
    threads, k = 8, 300

    def work(i: int) -> None:
        for _ in range(k):
            cache.incr("n")
            cache.decr("m", 2) if i % 2 else cache.incr("m", 2)

    run_threads(work, threads)
    assert cache.get("n") == threads * k
    assert cache.get("m") == 1000


@racy
def test_concurrent_reads_never_miss_a_key_being_rewritten(run_threads: Any) -> None:
    """Writers set, incr and touch keys that always exist; readers must always find
    them, with a value some writer wrote."""
    cache = fresh()
    keys = [f"k{i}" for i in range(4)]
    for key in keys:
        cache.set(key, 0, timeout=None)
    writers = 3
    finished = []

    def work(i: int) -> int:
        if i < writers:
            for j in range(2000):
                key = keys[j % len(keys)]
                if j % 3 == 0:
                    cache.set(key, j * 10, timeout=None)
                elif j % 3 == 1:
                    cache.incr(key)
                else:
                    cache.touch(key, None)
            finished.append(i)
            return 0
        reads = 0
        while True:  # at least one pass, then until the writers are done
            for key in keys:
                value = cache.get(key, "MISSING")
                assert isinstance(value, int), (key, value)
                assert cache.has_key(key)
                reads += 1
            if len(finished) == writers or reads >= 1_000_000:
                return reads

    results = run_threads(work, writers + 2, timeout=60.0)
    assert all(reads > 0 for reads in results[writers:])
    assert all(isinstance(cache.get(key), int) for key in keys)


@racy
def test_touch_and_delete_do_not_resurrect(run_threads: Any) -> None:
    """touch rewrites the entry it read only if it is still the stored one: a
    concurrent delete is never undone."""
    cache = fresh()
    for round_ in range(200):
        key = f"k{round_}"
        cache.set(key, round_)
        run_threads(
            lambda i, key=key: cache.touch(key, 100) if i else cache.delete(key),
            2,
        )
        assert not cache.has_key(key)


# --- asyncio ------------------------------------------------------------------------------


def test_async_methods() -> None:
    cache = fresh()

    async def main() -> None:
        assert await cache.aadd("k", 1) is True
        assert await cache.aadd("k", 2) is False
        assert await cache.aget("k") == 1 and await cache.aget("x", "d") == "d"
        assert await cache.aset("k", 5) is None
        assert await cache.aincr("k", 2) == 7 and await cache.adecr("k") == 6
        assert await cache.ahas_key("k") and not await cache.ahas_key("x")
        assert await cache.atouch("k", None) is True and await cache.atouch("x") is False
        assert await cache.aset_many({"a": 1, "b": 2}) == []
        assert await cache.aget_many(["a", "b", "x"]) == {"a": 1, "b": 2}
        assert await cache.adelete_many(["a"]) is None
        assert await cache.adelete("b") is True and await cache.adelete("b") is False
        assert await cache.aget_or_set("g", lambda: "made") == "made"
        assert await cache.aget_or_set("g", "other") == "made"
        assert await cache.aincr_version("g") == 2 and await cache.aget("g", version=2) == "made"
        assert await cache.adecr_version("g", version=2) == 1 and await cache.aget("g") == "made"
        with pytest.raises(ValueError):
            await cache.aincr("missing")
        assert await cache.atouch("k", 0) is True and not await cache.ahas_key("k")
        assert await cache.aclose() is None
        assert await cache.aclear() is None and await cache.aget("g") is None

    asyncio.run(main())


def test_async_add_and_incr_from_tasks_and_threads(run_threads: Any) -> None:
    cache = fresh()
    cache.set("n", 0)

    async def main(i: int) -> list[bool]:
        wins = await asyncio.gather(*(cache.aadd("once", (i, j)) for j in range(10)))
        await asyncio.gather(*(cache.aincr("n") for _ in range(100)))
        return list(wins)

    results = run_threads(lambda i: asyncio.run(main(i)), 4)
    assert sum(r.count(True) for r in results) == 1
    assert cache.get("n") == 400


# --- the same calls against LocMemCache ----------------------------------------------------

KEYS = st.sampled_from(["a", "b", "c"])
VERSIONS = st.sampled_from([None, 1, 2])
# Multiples of 50 (TIMEOUT is 300, the clock moves by 50s): a deadline is either
# passed (maybe exactly) or at least 50 s away, for the fake clock and for moka's.
TIMEOUTS = st.sampled_from([DEFAULT_TIMEOUT, None, 0, -1, -50, 50, 100, 1000])
VALUES = st.integers(-3, 3) | st.sampled_from(["s", None, (1, 2)])
MISSING = object()


def outcome(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except (ValueError, TypeError) as e:
        return type(e)


class AgainstLocMem(RuleBasedStateMachine):
    """Drives a MokaCache and a LocMemCache (the same settings) with the same calls,
    both on one fake clock."""

    clock: FakeClock

    def __init__(self) -> None:
        super().__init__()
        self.clock.advance(1000)
        self.moka = fresh()
        self.locmem = LocMemCache(unique("model"), params_of("locmem"))

    def both(self, method: str, *args: Any, **kwargs: Any) -> Any:
        ours = outcome(getattr(self.moka, method), *args, **kwargs)
        theirs = outcome(getattr(self.locmem, method), *args, **kwargs)
        assert ours == theirs, (method, args, kwargs)
        return ours

    @rule(key=KEYS, value=VALUES, timeout=TIMEOUTS, version=VERSIONS)
    def set(self, key: str, value: Any, timeout: Any, version: int | None) -> None:
        self.both("set", key, value, timeout=timeout, version=version)

    @rule(key=KEYS, value=VALUES, timeout=TIMEOUTS, version=VERSIONS)
    def add(self, key: str, value: Any, timeout: Any, version: int | None) -> None:
        self.both("add", key, value, timeout=timeout, version=version)

    @rule(key=KEYS, version=VERSIONS)
    def get(self, key: str, version: int | None) -> None:
        self.both("get", key, MISSING, version=version)

    @rule(key=KEYS, timeout=TIMEOUTS, version=VERSIONS)
    def touch(self, key: str, timeout: Any, version: int | None) -> None:
        self.both("touch", key, timeout=timeout, version=version)

    @rule(key=KEYS, version=VERSIONS)
    def delete(self, key: str, version: int | None) -> None:
        # LocMemCache returns True for an expired key it has not noticed yet.
        alive = self.locmem.has_key(key, version=version)
        assert self.moka.delete(key, version=version) is alive
        self.locmem.delete(key, version=version)

    @rule(key=KEYS, delta=st.integers(-2, 2), version=VERSIONS, decr=st.booleans())
    def incr(self, key: str, delta: int, version: int | None, decr: bool) -> None:
        self.both("decr" if decr else "incr", key, delta, version=version)

    @rule(key=KEYS, version=VERSIONS)
    def has_key(self, key: str, version: int | None) -> None:
        self.both("has_key", key, version=version)

    @rule(keys=st.lists(KEYS, max_size=4), version=VERSIONS)
    def get_many(self, keys: list[str], version: int | None) -> None:
        self.both("get_many", keys, version=version)

    @rule(data=st.dictionaries(KEYS, VALUES, max_size=3), timeout=TIMEOUTS, version=VERSIONS)
    def set_many(self, data: dict[str, Any], timeout: Any, version: int | None) -> None:
        self.both("set_many", data, timeout=timeout, version=version)

    @rule(keys=st.lists(KEYS, max_size=3), version=VERSIONS)
    def delete_many(self, keys: list[str], version: int | None) -> None:
        self.both("delete_many", keys, version=version)

    @rule(key=KEYS, value=VALUES, timeout=TIMEOUTS, version=VERSIONS)
    def get_or_set(self, key: str, value: Any, timeout: Any, version: int | None) -> None:
        self.both("get_or_set", key, value, timeout=timeout, version=version)

    @rule(key=KEYS, version=VERSIONS, decr=st.booleans())
    def change_version(self, key: str, version: int | None, decr: bool) -> None:
        self.both("decr_version" if decr else "incr_version", key, version=version)

    @rule()
    def clear(self) -> None:
        self.both("clear")

    @rule(seconds=st.sampled_from([50, 100, 250, 300]))
    def advance(self, seconds: int) -> None:
        self.clock.advance(seconds)

    @invariant()
    def same_contents(self) -> None:
        for version in (1, 2, 3, 0):
            keys = ["a", "b", "c"]
            ours = self.moka.get_many(keys, version=version)
            assert ours == self.locmem.get_many(keys, version=version), version


@pytest.mark.thread_unsafe  # replaces the clocks of moka_py.django and of Django
def test_same_results_as_locmem(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_time = types.SimpleNamespace(time=clock)
    monkeypatch.setattr(django_base, "time", fake_time)
    monkeypatch.setattr(django_locmem, "time", fake_time)
    AgainstLocMem.clock = clock
    run_state_machine_as_test(
        AgainstLocMem,
        settings=hypothesis_settings(
            max_examples=150,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
