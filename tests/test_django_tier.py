"""moka_py.django.TieredMokaCache: Django's cache API on the tier, against a real
redis-server (and the 3-master cluster, and a Sentinel).

Backends are built as Django builds them, ``TieredMokaCache(LOCATION, params)``,
with the settings of tests/django_settings.py (SECRET_KEY). Backend objects of
one configuration share one tier per process; two configurations that differ
only in LOCAL_MAX_ENTRIES have two tiers of one namespace, which are to each
other what two worker processes are (test_django_gunicorn.py has real ones, and
so has the child-process test here).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pickle
import threading
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import django.conf
import django_workers
import pytest
from django.core.cache import CacheKeyWarning
from django.core.exceptions import ImproperlyConfigured
from django.utils.crypto import salted_hmac
from django.utils.functional import empty
from redis_servers import SENTINEL_SERVICE, RedisCluster3, RedisServer
from support import run_threads, wait_for

import moka_py._django_tier as django_tier
from moka_py.django import SIGNING_SALT, TieredMokaCache
from moka_py.redis import TieredCache

pytestmark = pytest.mark.thread_unsafe  # the module's server, and Django's settings


@pytest.fixture(scope="module", autouse=True)
def django_settings_module() -> Iterator[None]:
    """tests/django_settings.py for this module (restored after)."""
    saved_env = os.environ.get("DJANGO_SETTINGS_MODULE")
    saved = django.conf.settings._wrapped
    os.environ["DJANGO_SETTINGS_MODULE"] = "django_settings"
    django.conf.settings._wrapped = empty
    yield
    django.conf.settings._wrapped = saved
    if saved_env is None:
        del os.environ["DJANGO_SETTINGS_MODULE"]
    else:
        os.environ["DJANGO_SETTINGS_MODULE"] = saved_env


@pytest.fixture(autouse=True)
def close_tiers() -> Iterator[None]:
    """Each test's tiers are closed after it (a process keeps them otherwise)."""
    yield
    django_tier.close_all()


def backend(location: Any, *, worker: int = 0, **params: Any) -> TieredMokaCache:
    """A backend; ``worker`` makes a tier of its own (another 'process')."""
    options = {"NAMESPACE": "dj", "LOCAL_MAX_ENTRIES": 1000 + worker, **params.pop("OPTIONS", {})}
    cache = TieredMokaCache(location, {"OPTIONS": options, **params})
    assert cache._cache.wait_ready(5)
    return cache


@pytest.fixture
def url(redis_db: RedisServer) -> str:
    return redis_db.url


def test_options_are_checked(url: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="unknown OPTIONS 'MAX_ENTRIES'"):
        TieredMokaCache(url, {"OPTIONS": {"MAX_ENTRIES": 10}})
    with pytest.raises(ImproperlyConfigured, match="SIGNING_KEY cannot be None"):
        TieredMokaCache(url, {"OPTIONS": {"SIGNING_KEY": None}})
    with pytest.raises(ImproperlyConfigured, match="LOCATION must be a Redis URL"):
        TieredMokaCache([], {})
    # A URL may hold a password: never shown.
    with pytest.raises(ImproperlyConfigured) as refused:
        TieredMokaCache(["redis://:hunter2-secret@127.0.0.1:1/0", ""], {})
    assert "hunter2" not in str(refused.value) and "a list of 2" in str(refused.value)
    with pytest.raises(ImproperlyConfigured, match="SERIALIZER"):
        TieredMokaCache(url, {"OPTIONS": {"SERIALIZER": 42}})
    with pytest.raises(ImproperlyConfigured, match="SENTINEL_SERVICE"):
        TieredMokaCache(url, {"OPTIONS": {"SENTINELS": [("127.0.0.1", 1)]}})
    with pytest.raises(ValueError, match="32"):
        TieredMokaCache(url, {"OPTIONS": {"SIGNING_KEY": "short"}})


def test_the_signing_key_is_derived_from_secret_key(url: str, redis_db: RedisServer) -> None:
    cache = backend(url)
    cache.set("k", {"v": 1})
    expected = salted_hmac(SIGNING_SALT, b"", "moka-py tests", algorithm="sha256").digest()
    assert django_tier.derived_keys() == [expected]
    assert expected != b"moka-py tests" and len(expected) == 32
    # A tier with that key (and pickle, its default) reads the backend's payload.
    with TieredCache(redis_db.client(), "dj", signing_key=expected) as reader:
        assert reader.get(":1:k") == {"v": 1}
    # Another SECRET_KEY: the payload is refused, never unpickled.
    with _Override(SECRET_KEY="another secret"):
        other = backend(url, worker=1, OPTIONS={"STATS": True})
        assert other.get("k", "missing") == "missing"
        assert other.stats().rejected == 1
    # With the old key as a fallback, the rotation reads old payloads.
    with _Override(SECRET_KEY="another secret", SECRET_KEY_FALLBACKS=["moka-py tests"]):
        rotated = backend(url, worker=2)
        assert rotated.get("k") == {"v": 1}


class _Override:
    """Sets Django settings for a block (django.test.override_settings needs
    the test runner's apps; this needs nothing)."""

    def __init__(self, **values: Any) -> None:
        self.values = values
        self.saved: dict[str, Any] = {}

    def __enter__(self) -> None:
        s = django.conf.settings
        for name, value in self.values.items():
            self.saved[name] = getattr(s, name, _Override)
            setattr(s, name, value)

    def __exit__(self, *exc: object) -> None:
        s = django.conf.settings
        for name, value in self.saved.items():
            if value is _Override:
                delattr(s, name)
            else:
                setattr(s, name, value)


def test_the_django_api(url: str) -> None:
    cache = backend(url, TIMEOUT=300)
    assert cache.get("a") is None and cache.get("a", 1) == 1
    cache.set("a", [1, 2])
    assert cache.get("a") == [1, 2]
    cache.get("a").append(3)  # a copy: the cache's value is unchanged
    assert cache.get("a") == [1, 2]
    assert cache.add("a", 0) is False and cache.add("b", None) is True
    assert cache.has_key("b") and cache.get("b", "default") is None
    assert "b" in cache and "nope" not in cache
    assert cache.delete("b") is True and cache.delete("b") is False
    cache.set_many({"x": 1, "y": 2})
    assert cache.get_many(["x", "y", "z"]) == {"x": 1, "y": 2}
    cache.delete_many(["x", "z"])
    assert cache.get_many(["x", "y"]) == {"y": 2}
    assert cache.incr("y") == 3 and cache.decr("y", 5) == -2 and cache.get("y") == -2
    with pytest.raises(ValueError, match="Key 'nope' not found"):
        cache.incr("nope")
    assert cache.touch("y", None) is True and cache.touch("nope") is False
    assert cache.get_or_set("g", lambda: "made") == "made"
    assert cache.get_or_set("g", lambda: "again") == "made"
    assert cache.get_or_set("n", None) is None and cache.has_key("n")
    # Versions and make_key.
    cache.set("v", "one", version=1)
    cache.set("v", "two", version=2)
    assert cache.get("v", version=1) == "one" and cache.get("v", version=2) == "two"
    assert cache.incr_version("v", version=2) == 3
    assert cache.get("v", version=3) == "two" and cache.get("v", version=2) is None
    assert cache.make_key("v", version=7) == ":7:v"
    # Timeouts: 0 or less stores nothing (add says whether the key was absent).
    cache.set("z", 1, timeout=0)
    assert cache.get("z") is None
    assert cache.add("z", 1, timeout=-1) is True and not cache.has_key("z")
    assert cache.add("a", 1, timeout=0) is False
    cache.set("t", 1, timeout=1000)
    assert cache.touch("t", 0) is True and cache.get("t") is None


def test_timeouts_reach_redis(url: str, redis_db: RedisServer) -> None:
    cache = backend(url, TIMEOUT=None)
    plain = redis_db.client()
    cache.set("forever", 1)
    assert plain.pttl(b"dj:v:s:1:forever") == -1
    cache.set("long", 1, timeout=10**12)  # over the tier's 100 years: its longest
    assert plain.pttl(b"dj:v:s:1:long") > 10**12
    cache.set("short", 1, timeout=100)
    assert 0 < plain.pttl(b"dj:v:s:1:short") <= 100_000
    cache.incr("short")
    assert 0 < plain.pttl(b"dj:v:s:1:short") <= 100_000  # incr keeps the expiry
    assert cache.touch("short", None) is True
    assert plain.pttl(b"dj:v:s:1:short") == -1


def test_clear_deletes_this_namespace_only(url: str, redis_db: RedisServer) -> None:
    one = backend(url)
    two = backend(url, OPTIONS={"NAMESPACE": "other"})
    plain = redis_db.client()
    plain.set(b"unrelated", b"1")
    one.set("k", 1)
    two.set("k", 2)
    one.clear()
    assert one.get("k") is None and two.get("k") == 2 and plain.get(b"unrelated") == b"1"


def test_key_warnings_as_djangos_backends(url: str) -> None:
    cache = backend(url)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        cache.set("with space", 1)
        cache.get("x" * 300)
        assert cache.get("with space") == 1
    assert [w.category for w in seen] == [CacheKeyWarning] * 3


def test_writes_reach_every_worker(url: str) -> None:
    a = backend(url, worker=1, OPTIONS={"STATS": True})
    b = backend(url, worker=2, OPTIONS={"STATS": True})
    a.set("k", "one")
    assert b.get("k") == "one"  # b now holds a local copy
    wait_for(lambda: b.get("k") == "one" and b.stats().local_hits > 0, timeout=5)
    for write, expected in (
        (lambda: a.set("k", "two"), "two"),
        (lambda: a.touch("k", 50), "two"),
        (lambda: a.delete("k"), None),
        (lambda: a.add("k", 10), 10),
        (lambda: a.incr("k", 5), 15),
        (lambda: a.set_many({"k": 20}), 20),
        (lambda: a.clear(), None),
    ):
        write()
        wait_for(lambda expected=expected: b.get("k") == expected, timeout=5)


def test_add_and_incr_are_atomic_across_workers(url: str) -> None:
    caches = [backend(url, worker=i) for i in range(2)]
    caches[0].set("n", 0)
    won: list[int] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        cache = caches[i % 2]
        for n in range(50):
            cache.incr("n")
            if cache.add(f"once-{n}", i):
                with lock:
                    won.append(n)

    run_threads(work, 4)
    assert caches[1].incr("n", 0) == 200 and sorted(won) == list(range(50))


def test_get_or_set_loads_once_across_workers(url: str) -> None:
    caches = [backend(url, worker=i) for i in range(2)]
    calls: list[int] = []
    go = threading.Event()

    def slow() -> str:
        calls.append(1)
        go.wait(5)
        return "value"

    def work(i: int) -> str:
        if i == 3:
            wait_for(lambda: bool(calls), timeout=5)
            go.set()
        return caches[i % 2].get_or_set("slow", slow, 60)  # type: ignore[no-any-return]

    assert run_threads(work, 4) == ["value"] * 4
    assert calls == [1]


def test_tags_through_the_backend(url: str) -> None:
    """Tags beyond Django's API: written by one worker, invalidated by
    another, gone in every worker; the key versions of Django apart."""
    a = backend(url, worker=1)
    b = backend(url, worker=2)
    a.set("profile", {"name": "ada"}, tags=["user:1"])
    a.set("profile", {"name": "v2"}, version=2, tags=["user:1", "v2"])
    a.set_many({"feed": [1], "inbox": [2]}, tags=["user:1"])
    assert a.add("settings", {"dark": True}, tags=["user:2"])
    assert b.get_or_set("menu", lambda: ["home"], tags=["site"]) == ["home"]
    assert b.get("profile") == {"name": "ada"} and b.get("feed") == [1]
    b.invalidate_tags("user:1")
    for c in (a, b):
        wait_for(lambda c=c: c.get("profile") is None, timeout=5)
        assert c.get("profile", version=2) is None and c.get_many(["feed", "inbox"]) == {}
        assert c.get("settings") == {"dark": True} and c.get("menu") == ["home"]
    assert not a.has_key("feed")
    assert a.add("feed", [3])  # a dated entry is absent to add too
    with pytest.raises(TypeError, match="a list of one tag"):
        a.set("k", 1, tags="user:1")

    async def main() -> None:
        await a.aset("k", 1, tags=["t"])
        await a.aset_many({"j": 2}, tags=["t"])
        assert await a.aadd("i", 3, tags=["t"])
        assert await a.aget_or_set("h", lambda: 4, tags=["t"]) == 4
        await b.ainvalidate_tags("t")
        # b's own copies are gone when the call returns (a's: see below).
        assert [await b.aget(key) for key in "kjih"] == [None] * 4

    asyncio.run(asyncio.wait_for(main(), 60))
    wait_for(lambda: [a.get(k) for k in "kjih"] == [None] * 4, timeout=5)


def test_the_async_api(url: str) -> None:
    a = backend(url, worker=1, OPTIONS={"STATS": True})
    b = backend(url, worker=2)

    async def main() -> None:
        await a.aset("k", {"v": 1})
        assert await a.aget("k") == {"v": 1}  # a local hit, in the loop
        assert a.stats().local_hits >= 1
        assert await b.aget("k") == {"v": 1}
        assert await a.aadd("k", 2) is False and await a.aadd("j", 2) is True
        assert await a.ahas_key("j") and not await a.ahas_key("nope")
        await asyncio.gather(*(c.aincr("j") for c in (a, b) for _ in range(20)))
        assert await b.adecr("j", 2) == 40
        assert await a.aget_or_set("g", lambda: "made") == "made"
        assert await b.aget_or_set("g", lambda: "again") == "made"
        await a.aset_many({"x": 1, "y": 2})
        assert await b.aget_many(["x", "y", "z"]) == {"x": 1, "y": 2}
        await a.adelete_many(["x"])
        assert await a.atouch("y", 10) is True and await a.adelete("y") is True
        await a.aclear()
        for _ in range(500):  # (b drops its copy when a's message arrives)
            if await b.aget("k") is None:
                break
            await asyncio.sleep(0.01)
        assert await b.aget("k") is None
        await a.aclose()
        assert await a.aget("g") is None  # aclose closed nothing

    asyncio.run(asyncio.wait_for(main(), 60))


def test_forged_payloads_are_misses(url: str, redis_db: RedisServer) -> None:
    cache = backend(url, OPTIONS={"STATS": True})
    marker = f"/tmp/moka-py-forged-{uuid.uuid4().hex}"
    # A pickle that would create a file if it were ever unpickled.
    evil = pickle.dumps(_Evil(marker))
    plain = redis_db.client()
    plain.set(b"dj:v:s:1:k", evil)
    plain.set(b"dj:v:s:1:n", b"\x02" + b"\x00" * 44 + evil)
    assert cache.get("k") is None and cache.get("n", "d") == "d"
    with pytest.raises(ValueError):
        cache.incr("n")
    assert not cache.has_key("k") and cache.touch("k") is False
    assert cache.stats().rejected >= 4
    assert not os.path.exists(marker)


class _Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (open, (self.path, "w"))


def test_a_cluster_location(redis_cluster: RedisCluster3) -> None:
    redis_cluster.flushall()
    urls = [s.url for s in redis_cluster.servers]
    a = backend(urls, worker=1)
    b = backend(urls[::-1], worker=2)
    a.set_many({f"k{i}": i for i in range(30)})
    assert b.get_many([f"k{i}" for i in range(30)]) == {f"k{i}": i for i in range(30)}
    assert b.incr("k3", 10) == 13
    wait_for(lambda: a.get("k3") == 13, timeout=5)
    assert a.add("k4", 0) is False and a.touch("k5", 100) is True
    a.clear()
    wait_for(lambda: b.get_many([f"k{i}" for i in range(30)]) == {}, timeout=5)


def test_sentinel_options(redis_sentinel: tuple[RedisServer, RedisServer]) -> None:
    _, sentinel = redis_sentinel
    cache = backend(
        "",
        OPTIONS={"SENTINELS": [("127.0.0.1", sentinel.port)], "SENTINEL_SERVICE": SENTINEL_SERVICE},
    )
    cache.set("k", 1)
    assert cache.incr("k") == 2 and cache.get("k") == 2


def test_backend_objects_of_one_configuration_share_one_tier(url: str) -> None:
    one = backend(url)
    seen: list[Any] = []
    thread = threading.Thread(target=lambda: seen.append(backend(url)._cache))
    thread.start()
    thread.join(10)
    assert seen == [one._cache]


def test_threads_that_build_one_configuration_at_once_share_one_tier(url: str) -> None:
    go = threading.Barrier(4)

    def build(i: int) -> Any:
        go.wait(10)
        return TieredMokaCache(url, {"OPTIONS": {"NAMESPACE": "race"}})._cache

    tiers = run_threads(build, 4)
    assert all(t is tiers[0] for t in tiers)
    # The tiers built meanwhile were closed: one feed thread is left.
    wait_for(
        lambda: [t.name for t in threading.enumerate()].count("moka_py.redis feed race") == 1,
        timeout=10,
    )


# --- real processes -------------------------------------------------------------------


def test_incr_is_atomic_across_processes(url: str) -> None:
    cache = backend(url)
    cache.set("n", 0)
    assert cache.get("n") == 0  # a local copy, which the children's writes drop
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    children = [
        ctx.Process(target=django_workers.incr, args=(url, "dj", 100, out)) for _ in range(3)
    ]
    for child in children:
        child.start()
    try:
        last = [out.get(timeout=60) for _ in children]
    finally:
        for child in children:
            child.join(30)
            if child.is_alive():
                child.kill()
    assert max(last) == 300 and all(child.exitcode == 0 for child in children)
    wait_for(lambda: cache.get("n") == 300, timeout=5)
