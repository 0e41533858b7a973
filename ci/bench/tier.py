"""Case family 5: ``moka_py.redis`` (the local tier in front of Redis) beside
redis-py and the Python caches that put something in front of Redis.

Every case runs on a redis-server of its own, started by :class:`Server` on a
free loopback port and stopped when the case ends. The driver runs each case
in a worker process (``run``); the cases with several processes start them
from that worker (``multiprocessing``, spawn) and talk to them over pipes,
so that one set of processes serves every implementation and repeat of a case
(side by side, interleaved).

1. local hit: ``get`` of an entry held locally, one thread (ns per call, the
   empty loop subtracted; asyncio ones await in one running loop, the cost of
   awaiting a plain coroutine subtracted instead).
2. remote hit: ``get`` of an entry in Redis but not in the local tier (the
   local tier is cleared, untimed, before each pass), beside redis-py's own
   ``GET`` and ``pickle.loads`` of the same value on the same server.
3. invalidation delay: a writer process sets a key, a reader process polls
   ``get`` every POLL_SECONDS; the time from ``set`` returning to the reader
   seeing the new value (``time.perf_counter_ns``, CLOCK_MONOTONIC, which
   every process of the machine shares).
4. stampede: PROCESSES processes x CALLERS threads (or asyncio tasks) ask at
   once for one missing key whose loader takes LOAD_SECONDS; loader calls
   (counted in Redis) and the time from the start to the last answer.
5. throughput: PROCESSES processes, one thread each, Zipf(1.0) reads over the
   keys with 1% writes, the local tier holding 10% of the keys.
6. Django: ``cache.get`` of moka_py.django.TieredMokaCache beside Django's own
   RedisCache and django-redis, on the same server in one process: a hit
   (held in TieredMokaCache's local tier; a round trip for the others), a
   remote hit (in Redis, the local tier cleared, untimed, before each pass)
   and a miss (in neither: a round trip for all three). ns per call of
   ``cache.get`` (Django's make_key and validate_key included for all).
"""

from __future__ import annotations

import asyncio
import bisect
import importlib
import importlib.metadata
import multiprocessing
import os
import pickle
import random
import shutil
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Implementations (the tables' rows, in this order).
TIER = "moka_py TieredCache"
# The remote hit again, unsigned (serializer=UNSAFE_PICKLE): what signing costs.
TIER_UNSIGNED = "moka_py TieredCache, UNSAFE_PICKLE"
ATIER = "moka_py AsyncTieredCache"
MOKA = "moka_py Moka"
REDIS = "redis-py"
CSC = "redis-py client-side cache"
CASHEWS = "cashews"
CASHEWS_CS = "cashews client-side"
DOGPILE = "dogpile.cache"
AIOCACHE = "aiocache"
# The Django rows (case 6).
DJ_TIER = "moka_py TieredMokaCache"
DJ_REDIS = "Django RedisCache"
DJ_DJREDIS = "django-redis"
# The distribution and the import behind each peer.
PEERS = {
    "redis": "redis",
    "cashews": "cashews",
    "dogpile.cache": "dogpile",
    "aiocache": "aiocache",
    "django": "django",
    "django-redis": "django_redis",
}
NEEDS = {
    CSC: "redis",
    REDIS: "redis",
    CASHEWS: "cashews",
    CASHEWS_CS: "cashews",
    DOGPILE: "dogpile.cache",
    AIOCACHE: "aiocache",
    DJ_TIER: "django",
    DJ_REDIS: "django",
    DJ_DJREDIS: "django-redis",
}

# The tier's caches sign their payloads (the default serializer, pickle, needs a key).
SIGNING_KEY = b"moka_py benchmark: a 32-byte or longer secret"
POOL = 1000  # keys of the latency cases
PROCESSES = 4
CALLERS = 8
LOAD_SECONDS = 0.05
POLL_SECONDS = 0.0001  # the invalidation reader's pause between two gets
WRITE_EVERY = 100  # throughput: one write in every 100 operations
ZIPF = 1.0


@dataclass(frozen=True)
class Plan:
    rounds: int  # latency cases: timed passes
    repeats: int  # latency cases: worker processes, interleaved
    writes: int  # invalidation delay: writes per implementation
    stampedes: int  # stampede repeats
    keys: int  # throughput: keys
    seconds: float  # throughput: seconds per run
    runs: int  # throughput repeats


QUICK = Plan(rounds=3, repeats=1, writes=30, stampedes=1, keys=10_000, seconds=0.3, runs=1)
FULL = Plan(rounds=30, repeats=3, writes=500, stampedes=5, keys=100_000, seconds=3.0, runs=3)


def value_of(i: int) -> dict[str, Any]:
    """The cached values: a small dict (about 60 bytes pickled)."""
    return {"id": i, "name": f"user-{i}", "active": True}


def versions() -> dict[str, str]:
    out = {}
    for dist in ("moka-py", *PEERS):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = ""
    out["redis-server"] = server_version()
    return out


def missing() -> dict[str, str]:
    """Peer distribution -> why it cannot be measured (it does not import)."""
    out = {}
    for dist, module in PEERS.items():
        try:
            importlib.import_module(module)
        except ImportError as e:
            out[dist] = f"does not import ({e})"
    return out


def usable(impl: str, gone: dict[str, str]) -> bool:
    return impl not in gone and NEEDS.get(impl) not in gone


def csc_missing(port: int) -> str | None:
    """Why redis-py's client-side cache cannot run against this server, if it cannot."""
    import redis

    try:
        from redis.cache import CacheConfig

        client = redis.Redis(port=port, protocol=3, cache_config=CacheConfig())
        client.ping()
        client.close()
    except (ImportError, redis.RedisError) as e:
        return f"{type(e).__name__}: {e}"
    return None


# --- the server -------------------------------------------------------------


def server_exe() -> str | None:
    """The redis-server of the tier family: MOKA_PY_REDIS_BIN's (ci/bench.sh sets it to
    Redis 8's, which redis-py's client-side cache needs), else the one on PATH."""
    bin_dir = os.environ.get("MOKA_PY_REDIS_BIN")
    return shutil.which(os.path.join(bin_dir, "redis-server") if bin_dir else "redis-server")


def server_version() -> str:
    exe = server_exe()
    if exe is None:
        return ""
    out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    for part in out.split():
        if part.startswith("v="):
            return part[2:]
    return out.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A redis-server on a free loopback port, without persistence; stopped on exit."""

    def __init__(self) -> None:
        exe = server_exe()
        if exe is None:
            raise SystemExit("redis-server is not installed (ci/bench.sh installs it)")
        self.port = free_port()
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
        args += ["no", "--protected-mode", "no", "--loglevel", "warning"]
        self.proc = subprocess.Popen([exe, *args], stdout=subprocess.DEVNULL)
        import redis

        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port, socket_timeout=1).ping()
                return
            except redis.RedisError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise SystemExit(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def url(port: int) -> str:
    return f"redis://127.0.0.1:{port}/0"


async def cashews_client_side(port: int, **kwargs: Any) -> Any:
    """cashews' client-side cache, initialized. ``protocol=2``: redis-py 8
    speaks RESP3 by default, and on a RESP3 connection Redis sends the
    tracking invalidations that cashews listens for on ``__redis__:invalidate``
    as push messages instead, which cashews never reads: its local copies
    would never be invalidated."""
    from cashews import Cache

    c = Cache()
    c.setup(url(port), client_side=True, protocol=2, **kwargs)
    await c.init()
    return c


# --- 1, 2: local and remote hits (one process) -----------------------------------


def str_keys(prefix: str = "key-") -> list[str]:
    # Built at run time: equal to, not the same objects as, the stored keys.
    return ["".join([prefix, str(i)]) for i in range(POOL)]


def empty(keys: list[Any]) -> None:
    for _ in keys:
        pass


def per_call(
    run: Callable[[list[Any]], None], keys: list[Any], before: Callable[[], None]
) -> float:
    """ns per call of one timed pass, the empty loop subtracted."""
    before()
    t0 = time.perf_counter_ns()
    run(keys)
    t1 = time.perf_counter_ns()
    empty(keys)
    t2 = time.perf_counter_ns()
    return ((t1 - t0) - (t2 - t1)) / len(keys)


def get_loop(get: Callable[[Any], Any]) -> Callable[[list[Any]], None]:
    def run(keys: list[Any]) -> None:
        for k in keys:
            get(k)

    return run


def nothing() -> None:
    pass


async def plain(x: Any) -> Any:
    return x


async def aper_call(get: Callable[[Any], Any], keys: list[Any], before: Callable[[], Any]) -> float:
    """ns per awaited call, the cost of awaiting a plain coroutine subtracted."""
    r = before()
    if asyncio.iscoroutine(r):
        await r
    t0 = time.perf_counter_ns()
    for k in keys:
        await get(k)
    t1 = time.perf_counter_ns()
    for k in keys:
        await plain(k)
    t2 = time.perf_counter_ns()
    return ((t1 - t0) - (t2 - t1)) / len(keys)


async def aplain_cost(keys: list[Any]) -> float:
    t0 = time.perf_counter_ns()
    for k in keys:
        await plain(k)
    t1 = time.perf_counter_ns()
    empty(keys)
    t2 = time.perf_counter_ns()
    return ((t1 - t0) - (t2 - t1)) / len(keys)


def hits(port: int, rounds: int, gone: dict[str, str]) -> dict[str, dict[str, float]]:
    """One repeat of cases 1 and 2: case -> impl -> median ns per call."""
    import redis

    import moka_py
    from moka_py.redis import UNSAFE_PICKLE, TieredCache

    keys = str_keys()
    values = {k: value_of(i) for i, k in enumerate(keys)}
    sync: dict[str, tuple[Callable[[list[Any]], None], Callable[[], None]]] = {}
    closers: list[Callable[[], Any]] = []

    moka: Any = moka_py.Moka(10_000)
    for k, v in values.items():
        moka.set(k, v)
    sync[MOKA] = (get_loop(moka.get), nothing)

    tier: Any = TieredCache(
        redis.Redis(port=port), namespace="bench-local", signing_key=SIGNING_KEY, capacity=10_000
    )
    closers.append(tier.close)
    if not tier.wait_ready(5):
        raise SystemExit("TieredCache: the invalidation feed did not come up")
    tier.set_many(values)
    sync[TIER] = (get_loop(tier.get), nothing)

    if usable(CSC, gone):
        from redis.cache import CacheConfig

        csc = redis.Redis(port=port, protocol=3, cache_config=CacheConfig(max_size=10_000))
        closers.append(csc.close)
        for k, v in values.items():
            csc.set(k, pickle.dumps(v, pickle.HIGHEST_PROTOCOL))
        for k in keys:
            csc.get(k)
        # Its hit is the cached reply (bytes): the same value a GET returns.
        sync[CSC] = (get_loop(csc.get), nothing)

    # Remote hits: the local tier cleared before each pass (not timed).
    remote: dict[str, tuple[Callable[[list[Any]], None], Callable[[], None]]] = {}
    remote[TIER] = (get_loop(tier.get), tier.local.clear)
    unsigned: Any = TieredCache(
        redis.Redis(port=port),
        namespace="bench-unsigned",
        serializer=UNSAFE_PICKLE,
        capacity=10_000,
    )
    closers.append(unsigned.close)
    if not unsigned.wait_ready(5):
        raise SystemExit("TieredCache: the invalidation feed did not come up")
    unsigned.set_many(values)
    remote[TIER_UNSIGNED] = (get_loop(unsigned.get), unsigned.local.clear)
    plain_client = redis.Redis(port=port)
    closers.append(plain_client.close)
    names = ["".join(["plain:", k]) for k in keys]
    for n, k in zip(names, keys, strict=True):
        plain_client.set(n, pickle.dumps(values[k], pickle.HIGHEST_PROTOCOL))
    rget, loads = plain_client.get, pickle.loads

    def redis_get(ks: list[Any]) -> None:
        for n in ks:
            loads(rget(n))

    remote[REDIS] = (redis_get, nothing)

    samples: dict[str, dict[str, list[float]]] = {"local": {}, "remote": {}}
    for case, impls_ in (("local", sync), ("remote", remote)):
        for impl, (run, _) in impls_.items():  # warm up
            run(names if impl == REDIS else keys)
        for _ in range(rounds):
            for impl, (run, before) in impls_.items():
                ks = names if impl == REDIS else str_keys()
                samples[case].setdefault(impl, []).append(per_call(run, ks, before))

    samples |= asyncio.run(ahits(port, rounds, gone, values))
    for close in closers:
        close()
    return {
        case: {impl: statistics.median(v) for impl, v in per.items()}
        for case, per in samples.items()
    }


async def ahits(
    port: int, rounds: int, gone: dict[str, str], values: dict[str, Any]
) -> dict[str, dict[str, list[float]]]:
    """The asyncio side of cases 1 and 2, in one running event loop."""
    import redis.asyncio as aredis

    from moka_py.redis import AsyncTieredCache

    keys = list(values)
    local: dict[str, tuple[Callable[[Any], Any], Callable[[], Any]]] = {}
    remote: dict[str, tuple[Callable[[Any], Any], Callable[[], Any]]] = {}
    closers: list[Callable[[], Any]] = []

    tier: Any = AsyncTieredCache(
        aredis.Redis(port=port), namespace="bench-alocal", signing_key=SIGNING_KEY, capacity=10_000
    )
    closers.append(tier.aclose)
    if not await tier.wait_ready(5):
        raise SystemExit("AsyncTieredCache: the invalidation feed did not come up")
    await tier.set_many(values)
    local[ATIER] = (tier.get, nothing)
    remote[ATIER] = (tier.get, tier.local.clear)

    if usable(CASHEWS_CS, gone):
        cashews_cache = await cashews_client_side(port)
        closers.append(cashews_cache.close)
        for k, v in values.items():
            await cashews_cache.set(k, v)
        for k in keys:
            await cashews_cache.get(k)
        local[CASHEWS_CS] = (cashews_cache.get, nothing)

    client = aredis.Redis(port=port)
    closers.append(client.aclose)
    for k, v in values.items():
        await client.set("".join(["aplain:", k]), pickle.dumps(v, pickle.HIGHEST_PROTOCOL))
    rget, loads = client.get, pickle.loads

    async def redis_get(name: str) -> Any:
        return loads(await rget(name))

    remote[REDIS] = (redis_get, nothing)

    out: dict[str, dict[str, list[float]]] = {"async local": {}, "async remote": {}}
    for case, impls_ in (("async local", local), ("async remote", remote)):
        for impl, (get, before) in impls_.items():  # warm up
            await aper_call(get, str_keys("aplain:key-" if impl == REDIS else "key-"), before)
        for _ in range(rounds):
            for impl, (get, before) in impls_.items():
                prefix = "aplain:key-" if impl == REDIS else "key-"
                out[case].setdefault(impl, []).append(
                    await aper_call(get, str_keys(prefix), before)
                )
        out[case]["await a plain coroutine"] = [await aplain_cost(keys) for _ in range(rounds)]
    for close in closers:
        await close()
    return out


# --- 6: Django (one process) -----------------------------------------------------------


def django_hits(port: int, rounds: int, gone: dict[str, str]) -> dict[str, dict[str, float]]:
    """Case 6: case ("django hit", "django remote hit", "django miss") -> impl ->
    median ns per ``cache.get``."""
    if not usable(DJ_TIER, gone):
        return {}
    import django.conf
    from django.core.cache import caches

    backends = {DJ_TIER: "moka_py.django.TieredMokaCache"}
    backends[DJ_REDIS] = "django.core.cache.backends.redis.RedisCache"
    if usable(DJ_DJREDIS, gone):
        backends[DJ_DJREDIS] = "django_redis.cache.RedisCache"
    django.conf.settings.configure(
        SECRET_KEY="moka_py benchmark",
        CACHES={
            impl: {
                "BACKEND": backend,
                "LOCATION": url(port),
                "TIMEOUT": None,
                # Each its own keys on the one server.
                "KEY_PREFIX": f"p{i}",
                **({"OPTIONS": {"NAMESPACE": "bench-django"}} if impl == DJ_TIER else {}),
            }
            for i, (impl, backend) in enumerate(backends.items())
        },
    )
    keys = str_keys()
    absent = str_keys("absent-")
    cache = {impl: caches[impl] for impl in backends}
    for c in cache.values():
        c.set_many({k: value_of(i) for i, k in enumerate(keys)})
    tier: Any = cache[DJ_TIER]._cache  # type: ignore[attr-defined]
    if not tier.wait_ready(5):
        raise SystemExit("TieredMokaCache: the invalidation feed did not come up")
    cases: dict[str, tuple[list[str], dict[str, Callable[[], None]]]] = {
        "django hit": (keys, {impl: nothing for impl in backends}),
        "django remote hit": (keys, {DJ_TIER: tier.local.clear}),
        "django miss": (absent, {impl: nothing for impl in backends}),
    }
    samples: dict[str, dict[str, list[float]]] = {}
    for case, (ks, impls_) in cases.items():
        for impl in impls_:  # warm up (and fill the local tier for the hit)
            get_loop(cache[impl].get)(ks)
        for _ in range(rounds):
            for impl, before in impls_.items():
                run = get_loop(cache[impl].get)
                samples.setdefault(case, {}).setdefault(impl, []).append(
                    per_call(run, list(ks), before)
                )
    tier.close()
    return {
        case: {impl: statistics.median(v) for impl, v in per.items()}
        for case, per in samples.items()
    }


# --- the processes of cases 3-5 -------------------------------------------------------


class Pool:
    """PROCESSES spawned processes that run :func:`child` and answer commands."""

    def __init__(self, n: int, port: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipes = []
        self.procs = []
        for i in range(n):
            here, there = ctx.Pipe()
            p = ctx.Process(target=child, args=(there, port, i), daemon=True)
            p.start()
            self.pipes.append(here)
            self.procs.append(p)

    def ask(self, command: tuple[Any, ...], timeout: float = 120) -> list[Any]:
        for p in self.pipes:
            p.send(command)
        out = []
        for p in self.pipes:
            if not p.poll(timeout):
                raise SystemExit(f"a benchmark process did not answer {command[:2]} in {timeout} s")
            answer = p.recv()
            if isinstance(answer, BaseException):
                raise answer
            out.append(answer)
        return out

    def close(self) -> None:
        for p in self.pipes:
            try:
                p.send(("exit",))
            except OSError:
                pass
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()


def child(pipe: Any, port: int, index: int) -> None:
    """A benchmark process: builds each implementation once, on first use, and
    runs the commands it is sent until "exit"."""
    made: dict[tuple[str, str], Any] = {}
    while True:
        command = pipe.recv()
        if command[0] == "exit":
            for thing in made.values():
                thing.close()
            return
        try:
            case, impl, *args = command
            key = (case, impl)
            if key not in made:
                made[key] = CHILD_CASES[case](impl, port, index)
            pipe.send(made[key].run(*args))
        except BaseException as e:  # reported to the worker, which stops the run
            pipe.send(RuntimeError(f"process {index}, {command[:2]}: {type(e).__name__}: {e}"))


def until(t0: int) -> None:
    """Sleeps until ``time.perf_counter_ns()`` reaches ``t0``."""
    while True:
        left = t0 - time.perf_counter_ns()
        if left <= 0:
            return
        time.sleep(min(left / 1e9, 0.002) if left > 2_000_000 else 0)


async def auntil(t0: int) -> None:
    while True:
        left = t0 - time.perf_counter_ns()
        if left <= 0:
            return
        await asyncio.sleep(min(left / 1e9, 0.002) if left > 2_000_000 else 0)


class Loop:
    """An event loop of its own in a thread, for the asyncio implementations
    in a child process (whose main thread answers the pipe)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


# --- 3: invalidation delay ------------------------------------------------------------

INVALIDATION = (TIER, CSC, CASHEWS_CS)
DELAY_KEY = "delay-key"


class Side:
    """One implementation's get and set of case 3, sync or asyncio."""

    def __init__(self, impl: str, port: int) -> None:
        import redis

        self.loop: Loop | None = None
        self.closers: list[Callable[[], Any]] = []
        if impl == TIER:
            from moka_py.redis import TieredCache

            cache: Any = TieredCache(
                redis.Redis(port=port),
                namespace="bench-delay",
                signing_key=SIGNING_KEY,
                capacity=1000,
            )
            if not cache.wait_ready(5):
                raise RuntimeError("the invalidation feed did not come up")
            self.closers.append(cache.close)
            self.get, self.set = cache.get, cache.set
        elif impl == CSC:
            from redis.cache import CacheConfig

            client = redis.Redis(port=port, protocol=3, cache_config=CacheConfig())
            self.closers.append(client.close)

            def get(k: str) -> Any:
                raw = client.get(k)
                return None if raw is None else pickle.loads(raw)

            def put(k: str, v: Any) -> None:
                client.set(k, pickle.dumps(v, pickle.HIGHEST_PROTOCOL))

            self.get, self.set = get, put
        elif impl == CASHEWS_CS:
            self.loop = Loop()
            c = self.loop.run(cashews_client_side(port))
            self.closers.append(lambda: self.loop.run(c.close()) if self.loop else None)
            self.aget, self.aset = c.get, c.set
        else:
            raise ValueError(impl)

    def close(self) -> None:
        for close in self.closers:
            close()
        if self.loop is not None:
            self.loop.close()


class Reader:
    """Case 3's reader: polls the key until it has seen ``n`` writes; the
    perf_counter_ns at which it first saw each value. ``progress`` holds the
    last value seen, for the writer."""

    def __init__(self, impl: str, port: int, progress: Any) -> None:
        self.side = Side(impl, port)
        self.progress = progress

    def run(self, n: int) -> list[int]:
        seen = [0] * n
        if self.side.loop is not None:
            return self.side.loop.run(self.apoll(seen))
        get, last, progress = self.side.get, -2, self.progress
        deadline = time.monotonic() + 300
        while last < n - 1 and time.monotonic() < deadline:
            v = get(DELAY_KEY)
            if v is not None and v > last:
                if v >= 0:
                    seen[v] = time.perf_counter_ns()
                last = progress.value = v
            time.sleep(POLL_SECONDS)
        return seen

    async def apoll(self, seen: list[int]) -> list[int]:
        get, last, progress = self.side.aget, -2, self.progress
        deadline = time.monotonic() + 300
        while last < len(seen) - 1 and time.monotonic() < deadline:
            v = await get(DELAY_KEY)
            if v is not None and v > last:
                if v >= 0:
                    seen[v] = time.perf_counter_ns()
                last = progress.value = v
            await asyncio.sleep(POLL_SECONDS)
        return seen

    def close(self) -> None:
        self.side.close()


def reader_main(pipe: Any, port: int, impl: str, n: int, progress: Any) -> None:
    """The reader process of case 3."""
    try:
        reader = Reader(impl, port, progress)
        pipe.send("ready")
        pipe.send(reader.run(n))
        reader.close()
    except BaseException as e:
        pipe.send(RuntimeError(f"{impl} reader: {type(e).__name__}: {e}"))


def invalidation(port: int, plan: Plan, gone: dict[str, str]) -> dict[str, Any]:
    """Case 3 for each implementation: the reader in a process of its own, the
    writer in this one, one write at a time: the next one 1 to 3 ms after the
    reader saw the last (or after a second, if it did not)."""
    out: dict[str, Any] = {}
    ctx = multiprocessing.get_context("spawn")
    rng = random.Random(5)
    n = plan.writes
    for impl in [i for i in INVALIDATION if usable(i, gone)]:
        writer = Side(impl, port)
        write(writer, -1)  # read by the reader first, untimed
        progress = ctx.Value("q", -3, lock=False)
        here, there = ctx.Pipe()
        proc = ctx.Process(target=reader_main, args=(there, port, impl, n, progress), daemon=True)
        proc.start()
        if not here.poll(60) or here.recv() != "ready":
            raise SystemExit(f"{impl}: the invalidation reader did not start")
        deadline = time.monotonic() + 10
        while progress.value != -1 and time.monotonic() < deadline:
            time.sleep(0.001)
        done = [0] * n
        late = 0
        for i in range(n):
            write(writer, i)
            done[i] = time.perf_counter_ns()
            deadline = time.monotonic() + 1
            while progress.value < i:
                if time.monotonic() > deadline:
                    late += 1
                    break
                time.sleep(POLL_SECONDS)
            time.sleep(0.001 + 0.002 * rng.random())
        if not here.poll(120):
            raise SystemExit(f"{impl}: the invalidation reader did not finish")
        seen = here.recv()
        if isinstance(seen, BaseException):
            raise seen
        proc.join(5)
        writer.close()
        delays = [max(0, s - d) / 1e6 for s, d in zip(seen, done, strict=True) if s]
        out[impl] = {
            "p50": percentile(delays, 50),
            "p99": percentile(delays, 99),
            "max": max(delays) if delays else float("nan"),
            "writes": n,
            "seen": len(delays),
            "late": late,
            "early": sum(1 for s, d in zip(seen, done, strict=True) if s and s < d),
        }
    return out


def write(side: Side, v: int) -> None:
    if side.loop is None:
        side.set(DELAY_KEY, v)
    else:
        side.loop.run(side.aset(DELAY_KEY, v))


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    i = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[i]


# --- 4: stampede --------------------------------------------------------------------

STAMPEDE = (TIER, ATIER, CASHEWS, DOGPILE, AIOCACHE, REDIS)
STAMPEDE_NOTES = {
    TIER: "`get_with`, 8 threads",
    ATIER: "`await get_with`, 8 tasks",
    CASHEWS: "`@cache(ttl=60, lock=True)`, redis backend, 8 tasks",
    DOGPILE: "`get_or_create`, redis backend, `distributed_lock=True`, 8 threads",
    AIOCACHE: "`@cached_stampede` (RedLock, `lease=2`), 8 tasks",
    REDIS: "cache-aside: `GET`, on a miss load and `SET`, 8 threads",
}


class Stampede:
    """One process of case 4: CALLERS threads or tasks ask for one key at t0."""

    def __init__(self, impl: str, port: int, index: int) -> None:
        import redis

        self.impl = impl
        self.counter = redis.Redis(port=port)
        self.loop: Loop | None = None
        self.closers: list[Callable[[], Any]] = [self.counter.close]
        counter = self.counter

        def load(key: str) -> Any:
            counter.incr(f"calls:{key}")
            time.sleep(LOAD_SECONDS)
            return value_of(7)

        if impl in (ATIER, CASHEWS, AIOCACHE):
            self.loop = Loop()
            self.fetch = self.loop.run(self._async_fetch(impl, port))
            return
        if impl == TIER:
            from moka_py.redis import TieredCache

            cache: Any = TieredCache(
                redis.Redis(port=port), namespace="bench-stampede", signing_key=SIGNING_KEY
            )
            cache.wait_ready(5)
            self.closers.append(cache.close)
            self.fetch = lambda key: cache.get_with(key, lambda: load(key))
        elif impl == DOGPILE:
            from dogpile.cache import make_region

            region = make_region().configure(
                "dogpile.cache.redis",
                expiration_time=60,
                arguments={
                    "host": "127.0.0.1",
                    "port": port,
                    "distributed_lock": True,
                    "thread_local_lock": False,
                    "lock_timeout": 5,
                    "redis_expiration_time": 120,
                },
            )
            self.fetch = lambda key: region.get_or_create(key, lambda: load(key))
        elif impl == REDIS:
            client = redis.Redis(port=port)
            self.closers.append(client.close)

            def aside(key: str) -> Any:
                raw = client.get(key)
                if raw is not None:
                    return pickle.loads(raw)
                v = load(key)
                client.set(key, pickle.dumps(v, pickle.HIGHEST_PROTOCOL), ex=120)
                return v

            self.fetch = aside
        else:
            raise ValueError(impl)

    async def _async_fetch(self, impl: str, port: int) -> Callable[[str], Any]:
        import redis.asyncio as aredis

        counter = aredis.Redis(port=port)

        async def load(key: str) -> Any:
            await counter.incr(f"calls:{key}")
            await asyncio.sleep(LOAD_SECONDS)
            return value_of(7)

        if impl == ATIER:
            from moka_py.redis import AsyncTieredCache

            cache: Any = AsyncTieredCache(
                aredis.Redis(port=port), namespace="bench-stampede", signing_key=SIGNING_KEY
            )
            await cache.wait_ready(5)
            self.closers.append(lambda: self.loop.run(cache.aclose()) if self.loop else None)
            return lambda key: cache.get_with(key, lambda: load(key))
        if impl == CASHEWS:
            from cashews import Cache

            c = Cache()
            c.setup(url(port))
            await c.init()
            self.closers.append(lambda: self.loop.run(c.close()) if self.loop else None)

            @c(ttl=60, lock=True)
            async def fetch(key: str) -> Any:
                return await load(key)

            return fetch
        if impl == AIOCACHE:
            from aiocache import Cache as ACache
            from aiocache import cached_stampede
            from aiocache.serializers import PickleSerializer

            @cached_stampede(
                lease=2,
                ttl=60,
                cache=ACache.REDIS,
                endpoint="127.0.0.1",
                port=port,
                serializer=PickleSerializer(),
            )
            async def afetch(key: str) -> Any:
                return await load(key)

            return afetch
        raise ValueError(impl)

    def run(self, key: str, t0: int) -> float:
        """The perf_counter_ns of this process's last answer."""
        if self.loop is not None:
            return self.loop.run(self._arun(key, t0))
        ends = [0] * CALLERS
        errors: list[BaseException] = []

        def call(i: int) -> None:
            until(t0)
            try:
                if self.fetch(key) != value_of(7):
                    raise RuntimeError("wrong value")
            except BaseException as e:
                errors.append(e)
            ends[i] = time.perf_counter_ns()

        threads = [threading.Thread(target=call, args=(i,)) for i in range(CALLERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return max(ends)

    async def _arun(self, key: str, t0: int) -> float:
        async def call() -> int:
            await auntil(t0)
            if await self.fetch(key) != value_of(7):
                raise RuntimeError("wrong value")
            return time.perf_counter_ns()

        return max(await asyncio.gather(*[call() for _ in range(CALLERS)]))

    def close(self) -> None:
        for close in self.closers:
            close()
        if self.loop is not None:
            self.loop.close()


def stampede(pool: Pool, port: int, plan: Plan, gone: dict[str, str]) -> dict[str, Any]:
    import redis

    client = redis.Redis(port=port)
    samples: dict[str, list[tuple[int, float]]] = {}
    names = [i for i in STAMPEDE if usable(i, gone)]
    for impl in names:  # built, connected and warmed up before any timing
        pool.ask(("stampede", impl, f"warm-{impl}", time.perf_counter_ns()))
    for r in range(plan.stampedes):
        for impl in names:
            key = f"stampede-{r}-{impl.replace(' ', '_')}"
            t0 = time.perf_counter_ns() + 300_000_000
            ends = pool.ask(("stampede", impl, key, t0))
            calls = int(client.get(f"calls:{key}") or 0)
            samples.setdefault(impl, []).append((calls, (max(ends) - t0) / 1e6))
    client.close()
    return {
        impl: {
            "calls": [min(c for c, _ in v), max(c for c, _ in v)],
            "ms": statistics.median(ms for _, ms in v),
        }
        for impl, v in samples.items()
    }


# --- 5: throughput -------------------------------------------------------------------

THROUGHPUT = (REDIS, TIER, ATIER, CSC, CASHEWS_CS, DOGPILE, AIOCACHE)
THROUGHPUT_NOTES = {
    REDIS: "`GET` + `pickle.loads`, writes `SET`: no local tier",
    TIER: "local tier of 10% of the keys",
    ATIER: "local tier of 10% of the keys",
    CSC: "`CacheConfig(max_size=10% of the keys)`",
    CASHEWS_CS: "client-side, its local `Memory(size=10% of the keys)`",
    DOGPILE: "redis backend: no local tier",
    AIOCACHE: "redis backend: no local tier",
}


def mangle(key: str) -> str:
    """dogpile.cache's keys in case 5 (each implementation keeps its own keys)."""
    return "dp:" + key


def zipf_keys(n_keys: int, n: int, seed: int) -> list[str]:
    """``n`` keys drawn from Zipf(ZIPF) over ``n_keys`` keys (rank 1 the hottest),
    as the strings the caches store."""
    weights = [1 / (r**ZIPF) for r in range(1, n_keys + 1)]
    cdf = []
    total = 0.0
    for w in weights:
        total += w
        cdf.append(total)
    rng = random.Random(seed)
    names = [f"z{i}" for i in range(n_keys)]
    return [names[min(n_keys - 1, bisect.bisect(cdf, rng.random() * total))] for _ in range(n)]


class Throughput:
    """One process of case 5: reads and writes one implementation for a while."""

    def __init__(self, impl: str, port: int, index: int) -> None:
        self.impl, self.port, self.index = impl, port, index
        self.loop: Loop | None = None
        self.closers: list[Callable[[], Any]] = []
        self.sample: list[str] = []
        self.made_for = 0

    def make(self, n_keys: int) -> None:
        import redis

        impl, port = self.impl, self.port
        self.sample = zipf_keys(n_keys, 200_000, 1000 + self.index)
        self.made_for = n_keys
        local = n_keys // 10
        if impl in (ATIER, CASHEWS_CS, AIOCACHE):
            self.loop = Loop()
            self.loop.run(self._amake(local))
            return
        if impl == TIER:
            from moka_py.redis import TieredCache

            cache: Any = TieredCache(
                redis.Redis(port=port),
                namespace="bench-tp",
                signing_key=SIGNING_KEY,
                capacity=local,
            )
            cache.wait_ready(5)
            self.closers.append(cache.close)
            self.get, self.set = cache.get, cache.set
        elif impl in (REDIS, CSC):
            if impl == CSC:
                from redis.cache import CacheConfig

                client = redis.Redis(
                    port=port, protocol=3, cache_config=CacheConfig(max_size=local)
                )
            else:
                client = redis.Redis(port=port)
            self.closers.append(client.close)
            rget, rset, loads, dumps = client.get, client.set, pickle.loads, pickle.dumps
            prefix = "plain:"

            def get(k: str) -> Any:
                raw = rget(prefix + k)
                return None if raw is None else loads(raw)

            def put(k: str, v: Any) -> None:
                rset(prefix + k, dumps(v, pickle.HIGHEST_PROTOCOL))

            self.get, self.set = get, put
        elif impl == DOGPILE:
            from dogpile.cache import make_region

            region = make_region(key_mangler=mangle).configure(
                "dogpile.cache.redis",
                expiration_time=3600,
                arguments={"host": "127.0.0.1", "port": port, "redis_expiration_time": 7200},
            )
            self.get, self.set = region.get, region.set
        else:
            raise ValueError(impl)

    async def _amake(self, local: int) -> None:
        import redis.asyncio as aredis

        impl, port = self.impl, self.port
        if impl == ATIER:
            from moka_py.redis import AsyncTieredCache

            cache: Any = AsyncTieredCache(
                aredis.Redis(port=port),
                namespace="bench-tp",
                signing_key=SIGNING_KEY,
                capacity=local,
            )
            await cache.wait_ready(5)
            self.closers.append(lambda: self.loop.run(cache.aclose()) if self.loop else None)
            self.aget, self.aset = cache.get, cache.set
        elif impl == CASHEWS_CS:
            from cashews.backends.memory import Memory

            c = await cashews_client_side(port, local_cache=Memory(size=local))
            self.closers.append(lambda: self.loop.run(c.close()) if self.loop else None)
            self.aget, self.aset = c.get, c.set
        elif impl == AIOCACHE:
            from aiocache import Cache as ACache
            from aiocache.serializers import PickleSerializer

            a = ACache(
                ACache.REDIS,
                endpoint="127.0.0.1",
                port=port,
                serializer=PickleSerializer(),
                namespace="aio:",
            )
            self.closers.append(lambda: self.loop.run(a.close()) if self.loop else None)
            self.aget, self.aset = a.get, a.set
        else:
            raise ValueError(impl)

    def run(self, n_keys: int, t0: int, seconds: float) -> tuple[int, float]:
        """(operations, seconds) from t0 for ``seconds``."""
        if self.made_for != n_keys:
            self.make(n_keys)
        if self.loop is not None:
            return self.loop.run(self._arun(t0, seconds))
        get, put, sample = self.get, self.set, self.sample
        until(t0)
        end = t0 + int(seconds * 1e9)
        ops, i, n = 0, 0, len(sample)
        while True:
            for _ in range(100):
                k = sample[i]
                i = i + 1 if i + 1 < n else 0
                if i % WRITE_EVERY == 0:
                    put(k, value_of(i))
                else:
                    get(k)
            ops += 100
            now = time.perf_counter_ns()
            if now >= end:
                return ops, (now - t0) / 1e9

    async def _arun(self, t0: int, seconds: float) -> tuple[int, float]:
        get, put, sample = self.aget, self.aset, self.sample
        await auntil(t0)
        end = t0 + int(seconds * 1e9)
        ops, i, n = 0, 0, len(sample)
        while True:
            for _ in range(100):
                k = sample[i]
                i = i + 1 if i + 1 < n else 0
                if i % WRITE_EVERY == 0:
                    await put(k, value_of(i))
                else:
                    await get(k)
            ops += 100
            now = time.perf_counter_ns()
            if now >= end:
                return ops, (now - t0) / 1e9

    def close(self) -> None:
        for close in self.closers:
            close()
        if self.loop is not None:
            self.loop.close()


def fill_throughput(port: int, impl: str, n_keys: int) -> None:
    """Every key in Redis, in the implementation's own format (untimed)."""
    import redis

    names = [f"z{i}" for i in range(n_keys)]
    chunks = [names[i : i + 1000] for i in range(0, n_keys, 1000)]
    if impl in (REDIS, CSC):
        client = redis.Redis(port=port)
        if not client.exists("plain:z0"):
            for chunk in chunks:
                client.mset({f"plain:{k}": pickle.dumps(value_of(0)) for k in chunk})
        client.close()
    elif impl in (TIER, ATIER):
        from moka_py.redis import TieredCache

        with TieredCache(
            redis.Redis(port=port), namespace="bench-tp", signing_key=SIGNING_KEY, capacity=10
        ) as cache:
            if cache.get(names[0]) is None:
                for chunk in chunks:
                    cache.set_many({k: value_of(0) for k in chunk})
    elif impl == DOGPILE:
        from dogpile.cache import make_region

        region = make_region(key_mangler=mangle).configure(
            "dogpile.cache.redis",
            expiration_time=3600,
            arguments={"host": "127.0.0.1", "port": port, "redis_expiration_time": 7200},
        )
        for chunk in chunks:
            region.set_multi({k: value_of(0) for k in chunk})
    elif impl in (CASHEWS_CS, AIOCACHE):
        asyncio.run(afill(port, impl, chunks))


async def afill(port: int, impl: str, chunks: list[list[str]]) -> None:
    if impl == CASHEWS_CS:
        c = await cashews_client_side(port)
        for chunk in chunks:
            await c.set_many({k: value_of(0) for k in chunk})
        await c.close()
    else:
        from aiocache import Cache as ACache
        from aiocache.serializers import PickleSerializer

        a = ACache(
            ACache.REDIS,
            endpoint="127.0.0.1",
            port=port,
            serializer=PickleSerializer(),
            namespace="aio:",
        )
        for chunk in chunks:
            await a.multi_set([(k, value_of(0)) for k in chunk])
        await a.close()


def throughput(pool: Pool, port: int, plan: Plan, gone: dict[str, str]) -> dict[str, Any]:
    names = [i for i in THROUGHPUT if usable(i, gone)]
    for impl in names:
        fill_throughput(port, impl, plan.keys)
        # Built, connected and warmed up (the local tiers filled) before timing.
        pool.ask(("throughput", impl, plan.keys, time.perf_counter_ns(), plan.seconds / 2))
    samples: dict[str, list[float]] = {}
    for _ in range(plan.runs):
        for impl in names:
            t0 = time.perf_counter_ns() + 200_000_000
            found = pool.ask(("throughput", impl, plan.keys, t0, plan.seconds))
            ops = sum(o for o, _ in found) / max(s for _, s in found)
            samples.setdefault(impl, []).append(ops)
    return {impl: statistics.median(v) for impl, v in samples.items()}


CHILD_CASES: dict[str, Callable[[str, int, int], Any]] = {
    "stampede": Stampede,
    "throughput": Throughput,
}


# --- the worker's entry --------------------------------------------------------------


def run(case: str, quick: bool) -> dict[str, Any]:
    """One case on a server of its own (the ``--worker`` side)."""
    plan = QUICK if quick else FULL
    gone = missing()
    with Server() as server:
        why = csc_missing(server.port) if "redis" not in gone else None
        if why is not None:
            gone[CSC] = why
        if case == "hits":
            return hits(server.port, plan.rounds, gone)
        if case == "django":
            return django_hits(server.port, plan.rounds, gone)
        if case == "invalidation":
            return invalidation(server.port, plan, gone)
        pool = Pool(PROCESSES, server.port)
        try:
            if case == "stampede":
                return stampede(pool, server.port, plan, gone)
            if case == "throughput":
                return throughput(pool, server.port, plan, gone)
        finally:
            pool.close()
    raise ValueError(case)


def probe() -> dict[str, Any]:
    """The versions, and which peers cannot be measured and why."""
    gone = missing()
    if "redis" not in gone:
        with Server() as server:
            why = csc_missing(server.port)
        if why is not None:
            gone[CSC] = why
    return {"versions": versions(), "missing": gone}
