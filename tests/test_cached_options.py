"""`moka_py.cached`: the `key` and `cache_if` options, `cache_invalidate`,
`cache_contains` and `cache`, how calls are counted (sync and async alike),
and the behaviour of an `lru_cache` wrapper that Python code relies on (copy,
pickle, one `__hash__` per call, negative maxsize)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import multiprocessing
import pickle
import threading
from typing import Any

import cached_helpers
import pytest
from conftest import run_threads

from moka_py import CacheInfo, Moka, cached


def test_key_builds_the_cache_key_and_typed_is_ignored() -> None:
    calls: list[tuple[int, str]] = []

    @cached(typed=True, key=lambda user, lang="en": user)
    def greet(user: int, lang: str = "en") -> str:
        calls.append((user, lang))
        return f"{lang}:{user}"

    assert greet(1) == "en:1"
    assert greet(1, lang="fr") == "en:1"  # one key per user
    assert greet(1.0, "de") == "en:1"  # type: ignore[arg-type]  # typed ignored
    assert calls == [(1, "en")]
    assert greet.cache.keys() == [1]
    assert greet.cache_info() == CacheInfo(hits=2, misses=1, maxsize=128, currsize=1)
    assert greet.cache_parameters()["typed"] is True


def test_key_that_raises_or_is_unhashable_propagates() -> None:
    def bad_key(x: int) -> Any:
        if x < 0:
            raise LookupError("no key")
        return [x]

    @cached(key=bad_key)
    def f(x: int) -> int:
        return x

    with pytest.raises(LookupError, match="no key"):
        f(-1)
    with pytest.raises(TypeError, match="unhashable"):
        f(1)
    with pytest.raises(TypeError, match="key must be callable"):
        cached(key=3)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="cache_if must be callable"):
        cached(cache_if="yes")  # type: ignore[call-overload]


@pytest.mark.parametrize("wait_concurrent", [False, True])
def test_cache_if_false_is_returned_not_stored(wait_concurrent: bool) -> None:
    calls: list[int] = []

    @cached(wait_concurrent=wait_concurrent, cache_if=lambda result: result is not None)
    def find(x: int) -> int | None:
        calls.append(x)
        return x if x > 0 else None

    assert find(0) is None
    assert find(0) is None  # a miss again
    assert find(2) == 2
    assert find(2) == 2
    assert calls == [0, 0, 2]
    assert not find.cache_contains(0)
    assert find.cache_contains(2)
    assert find.cache_info() == CacheInfo(hits=1, misses=3, maxsize=128, currsize=1)


def test_cache_if_coalesced_threads_share_an_uncached_result() -> None:
    calls: list[int] = []
    release = threading.Event()
    arrived = threading.Barrier(8)

    @cached(wait_concurrent=True, cache_if=lambda result: False)
    def fetch(x: int) -> object:
        calls.append(x)
        release.wait(10)
        return object()

    def caller(i: int) -> object:
        arrived.wait(10)
        if i == 0:
            threading.Timer(0.2, release.set).start()
        return fetch(1)

    results = run_threads(caller, 8)
    # Every call either computed or received a computation's result (waiters
    # share it though it is not stored), and counts as such.
    distinct = {id(r) for r in results}
    assert len(distinct) == len(calls)
    info = fetch.cache_info()
    assert (info.misses, info.hits, info.currsize) == (len(calls), 8 - len(calls), 0)
    assert not fetch.cache_contains(1)


def test_cache_if_coalesced_async_awaiters_share_an_uncached_result() -> None:
    calls: list[int] = []

    @cached(wait_concurrent=True, cache_if=lambda result: False)
    async def fetch(x: int) -> object:
        calls.append(x)
        await asyncio.sleep(0.01)
        return object()

    async def main() -> list[object]:
        return await asyncio.gather(*(fetch(1) for _ in range(8)))

    results = asyncio.run(main())
    assert calls == [1]
    assert all(r is results[0] for r in results)
    assert not fetch.cache_contains(1)
    assert asyncio.run(main())[0] is not results[0]  # not stored: computed again
    assert calls == [1, 1]
    assert fetch.cache_info() == CacheInfo(hits=14, misses=2, maxsize=128, currsize=0)


def test_cache_if_async_plain() -> None:
    @cached(cache_if=lambda result: result > 0)
    async def f(x: int) -> int:
        return x

    async def main() -> None:
        assert await f(0) == 0
        assert await f(1) == 1

    asyncio.run(main())
    assert not f.cache_contains(0)
    assert f.cache_contains(1)


def test_invalidate_contains_and_cache() -> None:
    @cached(maxsize=8, typed=True)
    def f(x: Any, *, scale: int = 1) -> Any:
        return x * scale

    assert isinstance(f.cache, Moka)
    assert f.cache.capacity == 8
    f(2, scale=3)
    f(2.0)
    assert f.cache_contains(2, scale=3)
    assert f.cache_contains(2.0)
    assert not f.cache_contains(2)  # typed: 2 and 2.0 are apart
    assert f.cache_info().hits == 0  # cache_contains is not a call
    assert f.cache_invalidate(2, scale=3) is True
    assert f.cache_invalidate(2, scale=3) is False
    assert not f.cache_contains(2, scale=3)
    assert f.cache_contains(2.0)
    assert len(f.cache) == 1


def test_invalidate_async_and_key() -> None:
    @cached(key=lambda user, **_: user)
    async def load(user: str, fresh: bool = False) -> str:
        return user.upper()

    assert asyncio.run(load("ann")) == "ANN"
    assert load.cache_contains("ann", fresh=True)
    assert load.cache_invalidate("ann") is True
    assert not load.cache_contains("ann")


# --- counting: one rule for sync and async ---------------------------------


def test_sync_coalesced_callers_count_one_miss_and_hits() -> None:
    calls: list[int] = []
    release = threading.Event()
    arrived = threading.Barrier(8)

    @cached(wait_concurrent=True)
    def slow(x: int) -> object:
        calls.append(x)
        release.wait(10)
        return object()

    def caller(i: int) -> object:
        arrived.wait(10)
        if i == 0:
            threading.Timer(0.2, release.set).start()
        return slow(3)

    results = run_threads(caller, 8)
    assert calls == [3]
    assert all(r is results[0] for r in results)
    assert slow.cache_info() == CacheInfo(hits=7, misses=1, maxsize=128, currsize=1)


def test_async_coalesced_callers_count_one_miss_and_hits() -> None:
    @cached(wait_concurrent=True)
    async def slow(x: int) -> object:
        await asyncio.sleep(0.01)
        return object()

    async def main() -> list[object]:
        return await asyncio.gather(*(slow(3) for _ in range(8)))

    results = asyncio.run(main())
    assert all(r is results[0] for r in results)
    assert slow.cache_info() == CacheInfo(hits=7, misses=1, maxsize=128, currsize=1)


def test_sync_coalesced_failure_counts_the_same_way() -> None:
    @cached(wait_concurrent=True)
    def boom(x: int) -> int:
        raise ValueError(x)

    with pytest.raises(ValueError):
        boom(1)
    with pytest.raises(ValueError):
        boom(1)
    assert boom.cache_info() == CacheInfo(hits=0, misses=2, maxsize=128, currsize=0)


@pytest.mark.parametrize("wait_concurrent", [False, True])
def test_counts_exact_under_threads_sync_and_async(wait_concurrent: bool) -> None:
    @cached(maxsize=64, wait_concurrent=wait_concurrent)
    def f(x: int) -> int:
        return x

    @cached(maxsize=64, wait_concurrent=wait_concurrent)
    async def g(x: int) -> int:
        await asyncio.sleep(0)
        return x

    async def many() -> None:
        await asyncio.gather(*(g(n % 10) for n in range(200)))

    def caller(_: int) -> None:
        for n in range(500):
            f(n % 10)
        asyncio.run(many())

    run_threads(caller, 8)
    sync, asyn = f.cache_info(), g.cache_info()
    assert sync.hits + sync.misses == 8 * 500
    assert asyn.hits + asyn.misses == 8 * 200
    assert 10 <= sync.misses <= 8 * 10  # a key can miss once per racing thread
    if wait_concurrent:
        assert 10 <= asyn.misses <= 8 * 10  # one computation per key and loop
    else:
        # The 200 calls of a gather all start before any result is stored.
        assert 10 <= asyn.misses


# --- behaves like an lru_cache wrapper -------------------------------------


def test_copy_and_deepcopy_return_the_function() -> None:
    @cached
    def f(x: int) -> int:
        return x

    assert copy.copy(f) is f
    assert copy.deepcopy(f) is f
    assert copy.deepcopy({"f": [f]})["f"][0] is f


def test_pickles_by_qualified_name() -> None:
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        assert pickle.loads(pickle.dumps(cached_helpers.square, proto)) is cached_helpers.square

    @cached
    def local(x: int) -> int:
        return x

    with pytest.raises((pickle.PicklingError, AttributeError)):
        pickle.dumps(local)


def test_module_level_function_runs_in_a_process_pool() -> None:
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as pool:
        assert list(pool.map(cached_helpers.square, [2, 3, 2], timeout=60)) == [4, 9, 4]
        pids = set(pool.map(cached_helpers.worker_pid, range(4), timeout=60))
    assert cached_helpers.worker_pid(0) not in pids  # ran in the workers
    assert cached_helpers.square.cache_info().currsize == 0  # not in this process


class CountingKey:
    """Compared by Python (its own `__eq__`), counting its `__hash__` calls
    (under a lock: on 3.13t, threads hashing at once would lose updates of a
    plain `+= 1`)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.hashes = 0
        self._count_lock = threading.Lock()

    def __hash__(self) -> int:
        with self._count_lock:
            self.hashes += 1
        return hash(self.n)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CountingKey) and other.n == self.n


class CountingIdentity:
    """Keeps `object`'s equality, counting its `__hash__` calls."""

    def __init__(self) -> None:
        self.hashes = 0
        self._count_lock = threading.Lock()

    def __hash__(self) -> int:
        with self._count_lock:
            self.hashes += 1
        return 7


@pytest.mark.parametrize("compared", ["eq", "identity"])
@pytest.mark.parametrize("wait_concurrent", [False, True])
@pytest.mark.parametrize("as_keyword", [False, True])
def test_hash_runs_once_per_call_hit_or_miss(
    compared: str, wait_concurrent: bool, as_keyword: bool
) -> None:
    @cached(maxsize=1, wait_concurrent=wait_concurrent, policy="lru")
    def f(x: Any, y: int = 0) -> int:
        return y

    arg: CountingKey | CountingIdentity = CountingKey(5) if compared == "eq" else CountingIdentity()
    call = (lambda: f(x=arg, y=1)) if as_keyword else (lambda: f(arg, 1))
    call()  # miss
    assert arg.hashes == 1
    call()  # hit
    assert arg.hashes == 2
    f(6, 2)  # evicts arg's entry, does not hash it
    f.cache.run_pending_tasks()
    assert arg.hashes == 2
    call()  # miss again
    assert arg.hashes == 3
    assert f.cache_info().hits == 1


def test_hash_runs_once_per_call_for_coalesced_threads() -> None:
    arg = CountingKey(1)
    release = threading.Event()
    arrived = threading.Barrier(8)

    @cached(wait_concurrent=True)
    def slow(x: Any) -> int:
        release.wait(10)
        return 1

    def caller(i: int) -> int:
        arrived.wait(10)
        if i == 0:
            threading.Timer(0.2, release.set).start()
        return slow(arg)

    run_threads(caller, 8)
    assert arg.hashes == 8
    assert slow.cache_info().hits + slow.cache_info().misses == 8


@pytest.mark.parametrize("wait_concurrent", [False, True])
def test_hash_runs_once_per_call_async(wait_concurrent: bool) -> None:
    arg = CountingKey(1)

    @cached(wait_concurrent=wait_concurrent)
    async def f(x: Any) -> int:
        await asyncio.sleep(0.01)
        return 1

    async def main() -> None:
        await asyncio.gather(*(f(arg) for _ in range(4)))
        await f(arg)

    asyncio.run(main())
    assert arg.hashes == 5


def test_negative_maxsize_means_zero() -> None:
    calls: list[int] = []

    @cached(maxsize=-5)
    def f(x: int) -> int:
        calls.append(x)
        return x

    f(1)
    f(1)
    assert calls == [1, 1]
    assert f.cache_info() == CacheInfo(hits=0, misses=2, maxsize=0, currsize=0)
    assert f.cache_parameters()["maxsize"] == 0


def test_async_coalescing_joins_equal_keys_compared_by_python() -> None:
    calls: list[int] = []

    @cached(wait_concurrent=True)
    async def f(x: CountingKey) -> object:
        calls.append(x.n)
        await asyncio.sleep(0.01)
        return object()

    async def main() -> list[object]:
        # Equal, distinct objects (one key); then another key of the same hash.
        return await asyncio.gather(f(CountingKey(1)), f(CountingKey(1)), f(CountingKey(2**61)))

    first, second, other = asyncio.run(main())
    assert first is second and other is not first
    assert hash(2**61) == hash(1)
    assert sorted(calls) == [1, 2**61]
    assert f.cache_info() == CacheInfo(hits=1, misses=2, maxsize=128, currsize=2)
