"""Finalizers that call back into the same cache: values (and keys) whose `__del__`
or `weakref.finalize` callback runs `get`, `set`, `remove`, `len`,
`run_pending_tasks` or `clear` on the cache that lets them go.

moka drops what it stops holding inside its own calls, while it may hold its
locks; the object's last reference then runs Python code. The rule of the
binding: everything moka lets go of is released after the moka call has
returned, so such a finalizer can neither hang nor lose a write.

Each scenario makes values (and, for Python-compared keys, keys) that record
when their finalizer runs, lets the cache release them in one way (replaced,
evicted for size, expired, removed, cleared), then checks:

* no thread hangs (`run_threads` has a deadline; the dangerous scenarios run in
  a child interpreter, `run_isolated`, as a hang there may block the main
  thread);
* a key written by a finalizer is present afterwards, unless the cache was
  entitled to drop it (evicted for size, expired); a key removed by a finalizer
  is absent;
* after `clear()`, `run_pending_tasks()` and `gc.collect()`, every finalizer has
  run exactly once;
* no exception reached `sys.unraisablehook`.
"""

from __future__ import annotations

import faulthandler
import gc
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from support import PyKey, Unraisable, cpython_refcounting, run_isolated, run_threads

from moka_py import Moka

# Key numbers: the scenario's own keys are below FIN; a finalizer of tag t
# writes key FIN + t and removes key VICTIM + t.
PER_THREAD = 10_000
FIN = 1_000_000
VICTIM = 2_000_000
# Few distinct hashes, so that lookups of Python-compared keys compare keys.
BUCKETS = 64
TTL = 0.05
SLEEP = 0.25
SMALL_CAPACITY = 16
THREAD_TIMEOUT = 10.0

# What a finalizer does with the cache (each object gets one, by its tag).
ACTIONS = ("get", "set", "remove", "run_pending_tasks", "len", "mix")
TRIGGERS = ("replaced", "size", "expired", "removed", "cleared")


@dataclass(frozen=True)
class Spec:
    trigger: str
    key_kind: str  # "int", "str", "pykey", "uuid"
    threads: int
    listener: bool
    # Every finalizer does this instead of the mix of ACTIONS.
    action: str | None = None

    @property
    def name(self) -> str:
        parts = [
            self.trigger,
            self.key_kind,
            f"{self.threads}threads",
            "listener" if self.listener else "no-listener",
        ]
        if self.action:
            parts.append(f"{self.action}-in-finalizer")
        return "-".join(parts)

    @property
    def values_per_thread(self) -> int:
        return 120 if self.threads == 1 else 30


def plain_key(kind: str, n: int) -> Any:
    """The key numbered `n`, without a finalizer."""
    if kind == "int":
        return n
    if kind == "str":
        return f"k{n}"
    if kind == "pykey":
        return PyKey(n, buckets=BUCKETS)
    if kind == "uuid":
        return uuid.UUID(int=n)
    raise AssertionError(kind)


def key_number(key: Any) -> int:
    if isinstance(key, int):
        return key
    if isinstance(key, str):
        return int(key[1:])
    if isinstance(key, PyKey):
        return key.n
    if isinstance(key, uuid.UUID):
        return key.int
    raise AssertionError(key)


class Context:
    """What the finalizers of one scenario share. Holds the cache weakly, so that
    no value refers back to the cache that holds it."""

    def __init__(self, spec: Spec, cache: Moka[Any, Any]) -> None:
        self.spec = spec
        self.cache = weakref.ref(cache)
        # Reentrant: a finalizer may run at any bytecode, so also inside a
        # section that holds this lock (on the free-threaded build a value
        # released by another thread is finalized at the owner's next check).
        self.lock = threading.RLock()
        self.next_tag = 0
        self.tags: list[int] = []  # every object with a finalizer
        self.ran: list[int] = []  # tags, once per finalizer run
        self.phase = "work"
        self.ran_in_final_clear: list[int] = []
        self.written: dict[int, float] = {}  # tag -> time just before its set
        self.removed: list[int] = []  # tags whose finalizer removed its victim
        self.problems: list[str] = []  # seen inside finalizers
        self.evicted: set[tuple[int, str]] = set()  # (key number, cause)

    def key(self, n: int) -> Any:
        return plain_key(self.spec.key_kind, n)

    def new_tag(self) -> tuple[int, str]:
        with self.lock:
            tag = self.next_tag
            self.next_tag += 1
            self.tags.append(tag)
        action = self.spec.action or ACTIONS[tag % len(ACTIONS)]
        if action in ("remove", "mix"):
            cache = self.cache()
            assert cache is not None
            cache.set(self.key(VICTIM + tag), "victim")
        return tag, action

    def on_evict(self, key: Any, value: Any, cause: str) -> None:
        # Records numbers only: keeping the key or value would keep it alive.
        with self.lock:
            self.evicted.add((key_number(key), cause))


def finalize(ctx: Context, tag: int, action: str) -> None:
    """The finalizer of every tracked object: records the run, then calls the cache."""
    with ctx.lock:
        ctx.ran.append(tag)
        if ctx.phase == "final-clear":
            ctx.ran_in_final_clear.append(tag)
    c = ctx.cache()
    if c is None or action == "none":
        return
    if action in ("get", "mix"):
        c.get(ctx.key(FIN + tag - 1))
        if c.get(ctx.key(VICTIM + tag), "absent") not in ("victim", "absent"):
            ctx.problems.append(f"finalizer {tag}: get returned a wrong value")
    if action in ("set", "mix"):
        before = time.monotonic()
        c.set(ctx.key(FIN + tag), tag)
        with ctx.lock:
            ctx.written[tag] = before
    if action in ("remove", "mix"):
        got = c.remove(ctx.key(VICTIM + tag), "absent")
        if got not in ("victim", "absent"):
            ctx.problems.append(f"finalizer {tag}: remove returned {got!r}")
        with ctx.lock:
            ctx.removed.append(tag)
    if action == "mix":
        _ = ctx.key(FIN + tag) in c
        _ = c.keys()
    if action in ("len", "mix"):
        n = len(c)
        if not (isinstance(n, int) and n >= 0):
            ctx.problems.append(f"finalizer {tag}: len returned {n!r}")
    if action in ("run_pending_tasks", "mix"):
        c.run_pending_tasks()
    if action == "clear":
        c.clear()


class DelValue:
    """A value whose `__del__` calls back into the cache."""

    def __init__(self, ctx: Context, tag: int, action: str) -> None:
        self.ctx, self.tag, self.action = ctx, tag, action

    def __del__(self) -> None:
        finalize(self.ctx, self.tag, self.action)


class FinalizedValue:
    """A value that a `weakref.finalize` callback watches."""

    def __init__(self, tag: int) -> None:
        self.tag = tag


class DelKey(PyKey):
    """A Python-compared key whose `__del__` calls back into the cache; equal to
    the `PyKey` of the same number."""

    def __init__(self, n: int, ctx: Context, tag: int, action: str) -> None:
        super().__init__(n, buckets=BUCKETS)
        self.ctx, self.tag, self.action = ctx, tag, action

    def __del__(self) -> None:
        finalize(self.ctx, self.tag, self.action)


def watch(obj: object, ctx: Context, tag: int, action: str) -> None:
    f = weakref.finalize(obj, finalize, ctx, tag, action)
    f.atexit = False


def new_value(ctx: Context) -> object:
    tag, action = ctx.new_tag()
    if tag % 2:
        return DelValue(ctx, tag, action)
    v = FinalizedValue(tag)
    watch(v, ctx, tag, action)
    return v


def new_key(ctx: Context, n: int) -> Any:
    """The key numbered `n`; a Python-compared one gets a finalizer too (`__del__`
    for PyKey, `weakref.finalize` for UUID)."""
    kind = ctx.spec.key_kind
    if kind == "pykey":
        tag, action = ctx.new_tag()
        return DelKey(n, ctx, tag, action)
    if kind == "uuid":
        tag, action = ctx.new_tag()
        key = uuid.UUID(int=n)
        watch(key, ctx, tag, action)
        return key
    return plain_key(kind, n)


def make_cache(spec: Spec) -> tuple[Moka[Any, Any], Context]:
    capacity = SMALL_CAPACITY if spec.trigger == "size" else 100_000
    ttl = TTL if spec.trigger == "expired" else None
    holder: list[Context] = []

    def listener(k: Any, v: Any, cause: str) -> None:
        holder[0].on_evict(k, v, cause)

    c: Moka[Any, Any] = Moka(
        capacity,
        ttl=ttl,
        policy="lru",
        eviction_listener=listener if spec.listener else None,
    )
    ctx = Context(spec, c)
    holder.append(ctx)
    return c, ctx


def work(c: Moka[Any, Any], ctx: Context, i: int, barrier: threading.Barrier) -> None:
    """Thread `i`'s part of the scenario: writes its own keys and lets the cache
    release them in the way the spec names."""
    spec = ctx.spec
    # A finalizer that clears the cache may remove another thread's keys.
    strict = spec.action != "clear"
    numbers = range(i * PER_THREAD, i * PER_THREAD + spec.values_per_thread)
    for n in numbers:
        c.set(new_key(ctx, n), new_value(ctx))
    if spec.trigger == "replaced":
        for _ in range(2):
            for n in numbers:
                c.set(new_key(ctx, n), new_value(ctx))
                if strict:
                    assert ctx.key(n) in c
    elif spec.trigger == "size":
        for j, n in enumerate(numbers):
            c.set(new_key(ctx, n + PER_THREAD // 2), new_value(ctx))
            if j % 8 == 7:
                c.run_pending_tasks()
    elif spec.trigger == "expired":
        time.sleep(SLEEP)
        for _ in range(3):
            for j, n in enumerate(numbers):
                if j % 2:
                    assert c.get(ctx.key(n), "absent") == "absent"
                else:
                    assert ctx.key(n) not in c
    elif spec.trigger == "removed":
        for j, n in enumerate(numbers):
            if j % 2 and strict:
                del c[ctx.key(n)]
            elif strict:
                assert c.remove(ctx.key(n)) is not None
            else:
                c.remove(ctx.key(n))
            if strict:
                assert ctx.key(n) not in c
    elif spec.trigger == "cleared":
        barrier.wait(THREAD_TIMEOUT)
        if i == 0:
            c.clear()
        else:
            for n in numbers:
                c.get(ctx.key(n))
    else:
        raise AssertionError(spec.trigger)


def collect() -> None:
    for _ in range(3):
        gc.collect()


def check_written(c: Moka[Any, Any], ctx: Context, tags: list[int]) -> list[str]:
    """The keys written and removed by the finalizers of `tags`."""
    spec = ctx.spec
    problems = []
    for tag in tags:
        action = spec.action or ACTIONS[tag % len(ACTIONS)]
        if action in ("set", "mix"):
            if tag not in ctx.written:
                problems.append(f"the finalizer of {tag} did not finish its set")
                continue
            got = c.get(ctx.key(FIN + tag), "absent")
            if got == "absent":
                # The cache may drop it only as it may drop any entry.
                if spec.trigger == "size" and (
                    not spec.listener or (FIN + tag, "size") in ctx.evicted
                ):
                    continue
                if spec.trigger == "expired" and time.monotonic() - ctx.written[tag] >= TTL:
                    continue
                problems.append(f"the key written by the finalizer of {tag} is lost")
            elif got != tag:
                problems.append(f"the key written by the finalizer of {tag} holds {got!r}")
        if action in ("remove", "mix") and ctx.key(VICTIM + tag) in c:
            problems.append(f"the key removed by the finalizer of {tag} is present")
    return problems


def run_spec(spec: Spec, unraisable: list[Any]) -> None:
    """Runs one scenario and raises AssertionError listing what went wrong."""
    c, ctx = make_cache(spec)
    barrier = threading.Barrier(spec.threads)
    run_threads(lambda i: work(c, ctx, i, barrier), spec.threads, timeout=THREAD_TIMEOUT)

    c.run_pending_tasks()
    collect()
    with ctx.lock:
        ran_so_far = list(ctx.ran)
    problems = check_written(c, ctx, ran_so_far)

    with ctx.lock:
        ctx.phase = "final-clear"
    c.clear()
    c.run_pending_tasks()
    collect()
    with ctx.lock:
        ctx.phase = "done"
        in_final_clear = list(ctx.ran_in_final_clear)
    problems += check_written(c, ctx, in_final_clear)

    ran = sorted(ctx.ran)
    twice = sorted({t for t in ran if ran.count(t) > 1})
    missing = sorted(set(ctx.tags) - set(ran))
    if twice:
        problems.append(f"finalizers ran more than once: {twice[:20]}")
    if missing:
        problems.append(
            f"{len(missing)} of {len(ctx.tags)} finalizers never ran (objects kept alive): "
            f"{missing[:20]}"
        )
    problems += ctx.problems
    problems += [f"unraisable: {u!r}" for u in unraisable]
    assert not problems, f"{spec.name}:\n" + "\n".join(problems[:40])
    # The cache is still usable. Under the expiring specs' TTL (50 ms) the entry may expire
    # between the two calls on a slow CPU (the aarch64 suite runs under qemu: it did once).
    c.clear()
    c.set(plain_key(spec.key_kind, 1), "after")
    got = c.get(plain_key(spec.key_kind, 1))
    assert got == "after" or (spec.trigger == "expired" and got is None), got


def run_in_child(*specs: Spec) -> None:
    """The body of an isolated scenario: the specs one after the other, with a
    hook collecting unraisable exceptions."""
    seen: list[Any] = []

    def hook(args: Any) -> None:
        seen.append((args.exc_type.__name__, str(args.exc_value), args.err_msg))

    sys.unraisablehook = hook
    for spec in specs:
        seen.clear()
        try:
            run_spec(spec, seen)
        except BaseException:
            print(f"scenario {spec.name} failed; the stacks of all threads:", file=sys.stderr)
            faulthandler.dump_traceback(sys.stderr, all_threads=True)
            raise


def isolated_scenario(name: str, *specs: Spec) -> Callable[[], None]:
    """A module-level function `scenario_<name>` running `specs`, so that the
    child interpreter finds it when it imports this module."""
    name = f"scenario_{name}"
    assert name not in globals(), name

    def scenario() -> None:
        run_in_child(*specs)

    scenario.__name__ = scenario.__qualname__ = name
    globals()[name] = scenario
    return scenario


def scenario_id(scenario: Callable[[], None]) -> str:
    return scenario.__name__.removeprefix("scenario_")


# --- in this interpreter: finalizers that only record ---------------------------------


@pytest.mark.thread_unsafe  # swaps the process-wide sys.unraisablehook
@pytest.mark.parametrize("listener", [False, True], ids=["no-listener", "listener"])
@pytest.mark.parametrize("kind", ["int", "str"])
@pytest.mark.parametrize("trigger", TRIGGERS)
def test_finalizers_run_exactly_once(
    trigger: str, kind: str, listener: bool, unraisable: list[Unraisable]
) -> None:
    """Finalizers that do not call the cache, in this interpreter: each runs once,
    nothing is kept alive, nothing is unraisable. (A finalizer that calls the
    cache could hang inside moka here, and a thread stuck inside moka stops the
    reclamation of removed entries for the whole process, so those run below, in
    child interpreters.)"""
    run_spec(Spec(trigger, kind, 1, listener, action="none"), unraisable)


# --- in a child interpreter: finalizers that call the cache ---------------------------


# For each way of release: native keys (int and str), Python-compared keys with
# `__del__` (PyKey) and with `weakref.finalize` (UUID); one thread and 8.
REENTERS = [
    isolated_scenario(
        f"{trigger}_{'_'.join(kinds)}_{threads}threads",
        *(Spec(trigger, kind, threads, listener) for kind in kinds for listener in (False, True)),
    )
    for trigger in TRIGGERS
    for threads in (1, 8)
    for kinds in (("int", "str"), ("pykey",), ("uuid",))
]

# Every finalizer clears the cache.
CLEARS = [
    isolated_scenario(
        f"{trigger}_clear_in_finalizer",
        Spec(trigger, "int", 1, False, action="clear"),
        Spec(trigger, "pykey", 8, True, action="clear"),
        Spec(trigger, "uuid", 1, False, action="clear"),
    )
    for trigger in TRIGGERS
]


# Each scenario has a child interpreter of its own: running it in several threads
# at once (pytest-run-parallel) would add only time.
@pytest.mark.thread_unsafe
@pytest.mark.parametrize("scenario", REENTERS, ids=scenario_id)
def test_finalizer_reenters_the_cache(scenario: Callable[[], None]) -> None:
    run_isolated(scenario)


@pytest.mark.thread_unsafe  # as above
@pytest.mark.parametrize("scenario", CLEARS, ids=scenario_id)
def test_finalizer_clears_the_cache(scenario: Callable[[], None]) -> None:
    run_isolated(scenario)


# --- finalizers that write, whose writes let go of more finalizers ---------------------

CHAIN = 5000  # finalizers in a row: five times the default recursion limit


def chain_in_finalizers() -> None:
    """Value n's finalizer writes value n + 1 over the key, replaces it and runs
    the pending tasks, so the cache lets go of n + 1 inside n's finalizer: a chain
    of CHAIN finalizers, each started by a write made in the one before. Released
    one frame deeper each time, the chain nests finalizers (it ended in a
    RecursionError, and lost the finalizer's write, once deeper than the
    recursion limit); handed to the release loop already running on this thread,
    it stays one finalizer deep, and every finalizer's own write is kept."""
    from moka_py import Moka

    cache: Moka[object, object] = Moka(2 * CHAIN)
    ran: list[int] = []
    depth = [0, 0]  # now, deepest
    seen: list[str] = []
    old_hook = sys.unraisablehook
    sys.unraisablehook = lambda args: seen.append(f"{args.exc_type.__name__}: {args.exc_value}")

    class Link:
        def __init__(self, n: int) -> None:
            self.n = n

        def __del__(self) -> None:
            depth[0] += 1
            depth[1] = max(depth)
            ran.append(self.n)
            if self.n + 1 < CHAIN:
                cache.set("k", Link(self.n + 1))
                cache.set("k", "replaced")
                # Pushes the replaced entry out of moka's deferred garbage.
                cache.run_pending_tasks()
            cache.set(("written", self.n), self.n)
            depth[0] -= 1

    try:
        cache.set("k", Link(0))
        cache.set("k", "replaced")
        cache.run_pending_tasks()
    finally:
        sys.unraisablehook = old_hook
    assert seen == []
    assert sorted(ran) == list(range(CHAIN))
    assert depth == [0, 1], f"finalizers nested {depth[1]} deep"
    assert cache.get("k") == "replaced"
    assert [n for n in range(CHAIN) if cache.get(("written", n)) != n] == []


def scenario_chain_in_finalizers() -> None:
    chain_in_finalizers()


def scenario_threads_write_from_finalizers() -> None:
    """Six threads write values whose finalizer writes another such value into a
    cache whose entries expire after 20 ms, in rounds: every release that moka's
    expiry or a replacement makes runs a finalizer that writes again. On 3.13t
    this raised RecursionError from finalizers before releases were trampolined.
    No exception may reach sys.unraisablehook, no thread may hang."""
    from moka_py import Moka

    seen: list[str] = []
    sys.unraisablehook = lambda args: seen.append(f"{args.exc_type.__name__}: {args.exc_value}")
    cache: Moka[int, object] = Moka(64, ttl=0.02)
    written = [0] * 6

    class Rewrites:
        def __init__(self, i: int, n: int) -> None:
            self.i, self.n = i, n

        def __del__(self) -> None:
            if self.n < 50:
                written[self.i] += 1
                cache.set(self.i * 1000 + self.n % 7, Rewrites(self.i, self.n + 1))

    def work(i: int) -> None:
        stop = time.monotonic() + 0.4
        n = 0
        while time.monotonic() < stop:
            cache.set(i * 1000 + n % 97, Rewrites(i, 0))
            n += 1

    for _ in range(5):
        run_threads(work, 6, timeout=20)
    cache.clear()
    gc.collect()
    assert seen == [], seen[:5]
    assert all(written), written


@cpython_refcounting
@pytest.mark.thread_unsafe  # swaps the process-wide sys.unraisablehook
def test_a_chain_of_finalizers_does_not_recurse() -> None:
    run_isolated(scenario_chain_in_finalizers)


@pytest.mark.thread_unsafe  # as above
def test_threads_writing_from_finalizers_do_not_recurse() -> None:
    run_isolated(scenario_threads_write_from_finalizers, timeout=60)
