"""Per-operation latency of moka_py and its peers, side by side in one run.

Run through ci/bench.sh, which builds moka_py in release mode and installs the
peers. moka-py 0.5.0 installs under the same import name, so it is measured by
this same script in a second virtual environment (``--peer-json``) and merged
into the table. Prints a Markdown table of medians (ns per operation, the
loop's own cost subtracted) and ratios to moka_py.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

POOL = 1000  # distinct keys cycled through (no single hot needle)
CAPACITY = 10_000

Case = Callable[[], Callable[[list[Any]], None]]


def int_keys() -> list[Any]:
    return list(range(POOL))


def str_keys() -> list[Any]:
    # Equal but not identical to the stored keys.
    return ["".join(["key-", str(i)]) for i in range(POOL)]


def stored_str_keys() -> list[Any]:
    return [f"key-{i}" for i in range(POOL)]


def build_cases(impl: str) -> dict[str, tuple[Case, Callable[[], list[Any]]]]:
    """Case name -> (setup returning an op over a key list, key factory)."""
    cases: dict[str, tuple[Case, Callable[[], list[Any]]]] = {}

    def add(name: str, keys: Callable[[], list[Any]]) -> Callable[[Case], Case]:
        def deco(setup: Case) -> Case:
            cases[name] = (setup, keys)
            return setup

        return deco

    make, get, put, pop = _mapping_api(impl)
    if make is not None:

        @add("get hit (int)", int_keys)
        def _get_hit_int() -> Callable[[list[Any]], None]:
            c = make()
            for k in int_keys():
                put(c, k, k)
            g = get(c)

            def run(keys: list[Any]) -> None:
                for k in keys:
                    g(k)

            return run

        @add("get hit (str)", str_keys)
        def _get_hit_str() -> Callable[[list[Any]], None]:
            c = make()
            for k in stored_str_keys():
                put(c, k, k)
            g = get(c)

            def run(keys: list[Any]) -> None:
                for k in keys:
                    g(k)

            return run

        @add("get miss (int)", int_keys)
        def _get_miss() -> Callable[[list[Any]], None]:
            c = make()
            g = get(c)

            def run(keys: list[Any]) -> None:
                for k in keys:
                    g(k)

            return run

        @add("set existing", int_keys)
        def _set_existing() -> Callable[[list[Any]], None]:
            c = make()
            for k in int_keys():
                put(c, k, k)

            def run(keys: list[Any]) -> None:
                for k in keys:
                    put(c, k, k)

            return run

        @add("set fresh, full cache", lambda: list(range(POOL)))
        def _set_fresh() -> Callable[[list[Any]], None]:
            c = make()
            for k in range(10**9, 10**9 + CAPACITY):
                put(c, k, k)
            counter = iter(range(10**12))

            def run(keys: list[Any]) -> None:
                base = next(counter) * POOL
                for k in keys:
                    put(c, base + k, k)

            return run

        @add("remove", int_keys)
        def _remove() -> Callable[[list[Any]], None]:
            c = make()

            def run(keys: list[Any]) -> None:
                for k in keys:
                    put(c, k, k)
                for k in keys:
                    pop(c, k)

            return run

    if impl in ("moka_py", "moka_py-0.5.0"):
        import moka_py

        @add("get_with hit", int_keys)
        def _get_with_hit() -> Callable[[list[Any]], None]:
            c = moka_py.Moka(CAPACITY)
            for k in int_keys():
                c.set(k, k)
            gw = c.get_with

            def init() -> int:
                return 0

            def run(keys: list[Any]) -> None:
                for k in keys:
                    gw(k, init)

            return run

        @add("get_with miss", int_keys)
        def _get_with_miss() -> Callable[[list[Any]], None]:
            c = moka_py.Moka(CAPACITY)
            gw = c.get_with

            def init() -> int:
                return 0

            def run(keys: list[Any]) -> None:
                c.clear()
                for k in keys:
                    gw(k, init)

            return run

    deco = _decorator(impl)
    if deco is not None:
        for label, kwargs in (("@cached hit", {}), ("@cached(wait_concurrent) hit", None)):
            if kwargs is None and impl not in ("moka_py", "moka_py-0.5.0"):
                continue

            def setup(kw: Any = kwargs) -> Callable[[list[Any]], None]:
                import moka_py

                if kw is None:
                    f = moka_py.cached(maxsize=CAPACITY, wait_concurrent=True)(lambda x: x)
                else:
                    f = deco(lambda x: x)
                for k in int_keys():
                    f(k)

                def run(keys: list[Any]) -> None:
                    for k in keys:
                        f(k)

                return run

            cases[label] = (setup, int_keys)
    return cases


def _mapping_api(impl: str) -> tuple[Any, Any, Any, Any]:
    def dict_get(c: Any) -> Any:
        return c.get

    def setitem(c: Any, k: Any, v: Any) -> None:
        c[k] = v

    def pop(c: Any, k: Any) -> None:
        c.pop(k, None)

    if impl in ("moka_py", "moka_py-0.5.0"):
        import moka_py

        def moka_put(c: Any, k: Any, v: Any) -> None:
            c.set(k, v)

        def moka_pop(c: Any, k: Any) -> None:
            c.remove(k)

        return (lambda: moka_py.Moka(CAPACITY)), dict_get, moka_put, moka_pop
    if impl == "dict":
        return dict, dict_get, setitem, pop
    if impl == "cachebox":
        import cachebox

        return (lambda: cachebox.LRUCache(CAPACITY)), dict_get, setitem, pop
    if impl == "cachetools":
        import cachetools

        return (lambda: cachetools.LRUCache(CAPACITY)), dict_get, setitem, pop
    if impl == "lru-dict":
        import lru

        return (lambda: lru.LRU(CAPACITY)), dict_get, setitem, pop
    return None, None, None, None


def _decorator(impl: str) -> Any:
    if impl in ("moka_py", "moka_py-0.5.0"):
        import moka_py

        return moka_py.cached(maxsize=CAPACITY)
    if impl == "functools":
        return functools.lru_cache(maxsize=CAPACITY)
    if impl == "cachebox":
        import cachebox

        return cachebox.cached(cachebox.LRUCache(CAPACITY))
    if impl == "cachetools":
        import cachetools

        return cachetools.cached(cachetools.LRUCache(CAPACITY))
    return None


def measure(impls: list[str], repeats: int, rounds: int) -> dict[str, dict[str, float]]:
    """ns/op medians: impl -> case -> value. Repeats interleave the impls."""
    setups = {impl: build_cases(impl) for impl in impls}
    samples: dict[tuple[str, str], list[float]] = {}
    runs = {
        (impl, name): (setup(), keys())
        for impl, cases in setups.items()
        for name, (setup, keys) in cases.items()
    }

    def empty(keys: list[Any]) -> None:
        for _ in keys:
            pass

    for r in range(repeats):
        print(f"  repeat {r + 1}/{repeats}", file=sys.stderr, flush=True)
        for (impl, name), (run, keys) in runs.items():
            run(keys)  # warm
            t0 = time.perf_counter_ns()
            for _ in range(rounds):
                run(keys)
            t1 = time.perf_counter_ns()
            for _ in range(rounds):
                empty(keys)
            t2 = time.perf_counter_ns()
            per_op = ((t1 - t0) - (t2 - t1)) / (rounds * len(keys))
            if name == "remove":
                per_op /= 2  # each round sets then removes every key
            samples.setdefault((impl, name), []).append(per_op)
    out: dict[str, dict[str, float]] = {}
    for (impl, name), values in samples.items():
        out.setdefault(impl, {})[name] = statistics.median(values)
    return out


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def table(results: dict[str, dict[str, float]], labels: dict[str, str]) -> str:
    cases: list[str] = []
    for per_impl in results.values():
        cases += [c for c in per_impl if c not in cases]
    impls = list(results)
    head = "| case | " + " | ".join(labels[i] for i in impls) + " |"
    rows = [head, "|---" * (len(impls) + 1) + "|"]
    base = results.get("moka_py", {})
    for case in cases:
        cells = []
        for impl in impls:
            v = results[impl].get(case)
            if v is None:
                cells.append("-")
            elif impl == "moka_py" or case not in base:
                cells.append(f"{v:.0f}")
            else:
                cells.append(f"{v:.0f} ({v / base[case]:.2f}x)")
        rows.append(f"| {case} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a smoke run: few repeats")
    ap.add_argument("--impl", action="append", help="measure only these (default: all found)")
    ap.add_argument("--json", action="store_true", help="print JSON results only")
    ap.add_argument("--peer-python", help="interpreter of the venv holding moka-py 0.5.0")
    args = ap.parse_args()
    repeats, rounds = (3, 2) if args.quick else (9, 20)
    impls = args.impl or ["moka_py", "cachebox", "cachetools", "lru-dict", "functools", "dict"]
    found = []
    for impl in impls:
        mod = {"lru-dict": "lru", "functools": "functools", "dict": "builtins"}.get(impl, impl)
        try:
            __import__(mod)
            found.append(impl)
        except ImportError:
            print(f"  {impl}: not installed, skipped", file=sys.stderr)
    results = measure(found, repeats, rounds)
    if args.json:
        print(json.dumps(results))
        return
    labels = {i: f"{i} {version(i)}" for i in found}
    labels["moka_py"] = f"moka_py {version('moka-py')} (this)"
    labels["functools"] = "functools.lru_cache"
    labels["dict"] = "dict"
    if args.peer_python:
        cmd = [args.peer_python, __file__, "--json", "--impl", "moka_py"]
        if args.quick:
            cmd.append("--quick")
        peer = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        results["moka_py-0.5.0"] = peer["moka_py"]
        labels["moka_py-0.5.0"] = "moka-py 0.5.0"
        order = ["moka_py", "moka_py-0.5.0"] + [i for i in results if not i.startswith("moka")]
        results = {i: results[i] for i in order}
    print(
        f"\n### Latency, ns per operation (median of {repeats} interleaved repeats; "
        f"ratio to moka_py)\n\nPython {sys.version.split()[0]}, "
        f"PYTHONHASHSEED={os.environ.get('PYTHONHASHSEED', 'random')}, "
        f"{time.strftime('%Y-%m-%d')}\n"
    )
    print(table(results, labels))


if __name__ == "__main__":
    main()
