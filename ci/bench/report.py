"""Markdown tables and PNG charts of the benchmark's results.

matplotlib is imported only by :func:`charts`, which runs in the GIL
benchmark environment (the only one that installs it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import impls

THIS = impls.THIS
COLORS = {
    THIS: "#d62728",
    impls.OLD: "#ff9896",
    "theine": "#1f77b4",
    "cachebox": "#2ca02c",
    "cachetools": "#9467bd",
    "lru-dict": "#8c564b",
    "async-lru": "#17becf",
    "functools": "#e377c2",
    "dict": "#7f7f7f",
}
CHARTS = ("latency.png", "scaling.png", "scaling_gil.png", "hit_ratio.png", "memory.png")


@dataclass
class Meta:
    quick: bool
    plan: dict[str, Any]
    pythons: dict[str, str]  # build -> Python version
    labels: dict[str, str]  # "impl|build" -> label with version
    missing: dict[str, str]  # "impl|build" -> why it is not measured there
    remarks: dict[str, str]  # "impl|build" -> a remark
    cores: int
    seconds: float
    machine: str = ""

    def label(self, impl: str, build: str = "GIL") -> str:
        return self.labels.get(f"{impl}|{build}", impl)


def display(impl: str) -> str:
    return {impls.OLD: "moka-py 0.5.0", "functools": "functools.lru_cache"}.get(impl, impl)


def order(keys: list[str]) -> list[str]:
    """Keys that start with an implementation's name, in the order of impls.ALL."""

    def rank(key: str) -> int:
        for i, impl in enumerate(impls.ALL):
            if key == impl or key.startswith((f"{impl} ", f"{impl}|")):
                return i
        return len(impls.ALL)

    return sorted(keys, key=rank)


def ratio(value: float, base: float | None) -> str:
    return "" if not base else f" ({value / base:.2f}x)"


def table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def latency_md(results: dict[str, dict[str, float]], meta: Meta) -> str:
    from . import latency

    cols = order(list(results))
    base = results.get(THIS, {})
    rows = []
    for case in latency.CASES:
        cells = []
        for impl in cols:
            v = results[impl].get(case)
            cells.append(
                "-" if v is None else f"{v:.0f}{'' if impl == THIS else ratio(v, base.get(case))}"
            )
        rows.append([case, *cells])
    plan = meta.plan
    return "\n\n".join(
        [
            "### 1. Latency of one operation (ns; ratio to moka_py)",
            f"One thread, GIL build (Python {meta.pythons.get('GIL', '?')}). Median of "
            f"{plan['latency_repeats']} interleaved repeats of {plan['latency_rounds']} passes "
            f"over {latency.POOL} keys; capacity {latency.CAPACITY}; the empty "
            "loop's own cost is subtracted. *str* keys are equal to, not the same objects as, "
            "the stored ones. *set fresh*: a new key into a full cache (an eviction). "
            "*@cached coalescing hit*: moka_py `wait_concurrent=True`, cachebox `lock=True`, "
            "cachetools `condition=`, theine `Memoize` (which always coalesces). "
            "*@cached async hit*: an `async def` function that returns its argument, decorated "
            "(moka_py and moka-py 0.5.0 `cached`, cachebox `cached` with `lock=False`, theine "
            "`Memoize`, async-lru `alru_cache`) and awaited in one running event loop; the cost "
            "of awaiting a plain `async def` coroutine that returns its argument is subtracted "
            "instead of the empty loop's, and shown, less the empty loop, as *await a plain "
            "coroutine* (measured in each column's process, for reference). cachetools' and "
            "functools' decorators take no async functions; async-lru has no other case. "
            "*registered with OpenTelemetry*: the *stats=True* pass on a cache registered "
            "with `moka_py.otel.instrument` (an SDK meter provider, collected once before). "
            f"*OpenTelemetry collection*: one collection by the SDK of {latency.POOL} "
            "registered caches, per cache.",
            table(["case", *[meta.label(i) for i in cols]], rows),
        ]
    )


def stalled_cell(n: str, stalled: int | None) -> str:
    """The cell of a thread count that has no figure."""
    return "stalled" if stalled is not None and int(n) >= stalled else "-"


def scaling_md(results: dict[str, Any], meta: Meta) -> str:
    ops = results["ops"]
    counts = [str(n) for n in meta.plan["threads"]]
    base = ops.get(THIS, {})
    rows = []
    for key in order(list(ops)):
        per = ops[key]
        name = key if key not in impls.ALL else meta.label(key, "3.13t")
        if results["gil"].get(key) and "GIL build" not in key:
            name += " (GIL on)"
        stalled = results.get("stalled", {}).get(key)
        cells = [
            stalled_cell(n, stalled)
            if n not in per
            else f"{per[n] / 1e6:.2f}{'' if key == THIS else ratio(per[n], base.get(n))}"
            for n in counts
        ]
        two = [per.get(n) for n in counts[:2]]
        speedup = f"{two[1] / two[0]:.2f}x" if len(counts) > 1 and all(two) else "-"
        rows.append([name, *cells, speedup])
    for key in order([k for k in meta.missing if k.endswith("|3.13t")]):
        if key.split("|")[0] in impls.ASYNC_ONLY:  # not a case of this table
            continue
        rows.append([display(key.split("|")[0]), "not available on 3.13t", *["-"] * len(counts)])
    plan = meta.plan
    head = ["implementation", *[f"{n} thread{'s' * (n != '1')}" for n in counts]]
    head.append(f"{counts[1]} vs {counts[0]} threads" if len(counts) > 1 else "")
    stall = (
        f" *stalled*: no progress {plan['stall_seconds']} s past the planned time (a "
        "deadlock), the run stopped and the higher counts not run."
        if results.get("stalled")
        else ""
    )
    return "\n\n".join(
        [
            "### 2. Throughput of threads sharing one cache (million ops/s; ratio to moka_py)",
            f"Free-threaded Python {meta.pythons.get('3.13t', '?')} on {meta.cores} cores: "
            "beyond that many threads the total can only hold steady. A 90/10 get/set mix "
            "over 10,000 keys, all present; each figure is all threads' operations over the "
            f"time to the last thread's stop, median of {plan['throughput_repeats']} repeats of "
            f"{plan['throughput_seconds']} s. cachetools is behind a `threading.Lock`; dict "
            "reads with `d[k]` (on 3.13t `dict.get` takes the dict's lock). "
            "functools.lru_cache has no set. *moka_py, GIL build*: the same run on the "
            f"ordinary interpreter, for reference.{stall}",
            table(head, rows),
        ]
    )


def scaling_gil_md(results: dict[str, Any], meta: Meta) -> str:
    from .scaling import GIL_VARIANTS

    plan = meta.plan
    stalled_any = any(results["stalled"].values())
    parts = [
        "### 2a. Throughput of threads sharing one cache, GIL build (million ops/s; "
        "ratio to moka_py's 1-thread figure, ratio to moka-py 0.5.0 at the same count)",
        "The case of section 2 on the ordinary interpreter (Python "
        f"{meta.pythons.get('GIL', '?')}, {meta.cores} cores), where one thread at a time runs "
        "Python code: a 90/10 get/set mix over 10,000 keys, all present; each figure is all "
        "threads' operations over the time to the last thread's stop, median of "
        f"{plan['throughput_repeats']} repeats of {plan['throughput_seconds']} s. In brackets: "
        "the ratio to moka_py's 1-thread figure in the same table, then to moka-py 0.5.0's at "
        "the same thread count. *uuid.UUID keys*: 10,000 seeded version-4 UUIDs, each thread "
        "with its own equal copies (as for the ints); hashing and comparing them runs Python "
        "code. *eviction listener*: `eviction_listener=lambda k, v, cause: None`, which moka "
        "calls on every set (the entry it replaces leaves); lru-dict's `callback=` is called "
        "for evictions for room only, none here; the other peers take no listener. cachetools "
        "is behind a `threading.Lock`; functools.lru_cache has no set."
        + (
            f" *stalled*: no progress {plan['stall_seconds']} s past the planned time (the "
            "threads deadlocked), the run stopped and the higher counts not run."
            if stalled_any
            else ""
        ),
    ]
    cols = [str(n) for n in plan["threads"]]
    head = ["implementation", *[f"{n} thread{'s' * (n != '1')}" for n in cols]]
    missing = order(
        [
            k.split("|")[0]
            for k in meta.missing
            if k.endswith("|GIL") and k.split("|")[0] not in impls.ASYNC_ONLY
        ]
    )
    for variant, (_, listener, title) in GIL_VARIANTS.items():
        ops = results["ops"].get(variant, {})
        stalled = results["stalled"].get(variant, {})
        if not ops and not stalled:
            continue
        one = ops.get(THIS, {}).get("1")
        old = ops.get(impls.OLD, {})
        rows = []
        for impl in order(list(ops.keys() | stalled.keys())):
            per = ops.get(impl, {})
            cells = []
            for n in cols:
                v = per.get(n)
                if v is None:
                    cells.append(stalled_cell(n, stalled.get(impl)))
                    continue
                bases = [f"{v / b:.2f}x" if b else "-" for b in (one, old.get(n))]
                cells.append(f"{v / 1e6:.2f} ({', '.join(bases)})")
            rows.append([meta.label(impl), *cells])
        for impl in missing:
            if not listener or impl in impls.LISTENERS:
                rows.append([display(impl), "not available", *["-"] * (len(cols) - 1)])
        parts += [f"*{title}*", table(head, rows)]
    return "\n\n".join(parts)


def coalescing_md(results: dict[str, Any], meta: Meta) -> str:
    cols: list[str] = []
    for per in results.values():
        cols += [c for c in per if c not in cols]
    rows = []
    keys = order(list(results))
    keys.sort(key=lambda k: k.split("|")[1] != "GIL")
    for key in keys:
        per = results[key]
        impl, build = key.split("|")
        cells = []
        for col in cols:
            v = per.get(col)
            if v is None:
                cells.append("-")
                continue
            lo, hi = v["calls"]
            calls = f"{lo}" if lo == hi else f"{lo}-{hi}"
            cells.append(f"{calls} call{'s' * (hi != 1)}, {v['ms']:.1f} ms")
        rows.append([f"{meta.label(impl, build)}, {build}", *cells])
    return "\n\n".join(
        [
            "### 2b. Concurrent loads of one missing key (loader calls; time to the last result)",
            "N threads, or N asyncio tasks in one event loop, call a decorated function "
            "at once for the same missing key; the function sleeps 10 ms. Time is the median "
            f"of {meta.plan['coalesce_repeats']} repeats; calls show the range. moka_py: "
            "`@cached(wait_concurrent=True)`; cachebox: `@cached` (`lock=True`); cachetools: "
            "`@cached(condition=)` (no async support); theine: `Memoize`; "
            "functools.lru_cache: no coalescing (and no async support).",
            table(["implementation", *[f"N={c}" for c in cols]], rows),
        ]
    )


def hit_ratio_md(results: dict[str, dict[str, float]], meta: Meta) -> str:
    from . import hit_ratio

    cols: list[str] = []
    for per in results.values():
        cols += [c for c in per if c not in cols]
    base = results.get(f"{THIS} tiny_lfu", {})
    rows = []
    for key in order(list(results)):
        per = results[key]
        impl, _, policy = key.partition(" ")
        cells = [
            f"{per[c]:.1f}{ratio(per[c], base.get(c)) if key != f'{THIS} tiny_lfu' else ''}"
            for c in cols
        ]
        rows.append([f"{meta.label(impl)} {policy}", *cells])
    requests, keys = hit_ratio.sizes(meta.quick)
    return "\n\n".join(
        [
            "### 3. Hit ratio (%; ratio to moka_py tiny_lfu)",
            f"{requests:,} requests; capacity 1% and 10% of the {keys:,} keys of the Zipf "
            "workloads. *hot set + scans*: half the requests go to a hot set (5% of the keys, "
            "Zipf 1.0), the other half, interleaved, to keys that are asked for once. "
            "*loop*: the same 12% of the keys in order, over and over. Single thread, "
            "cache-aside (`get`, and `set` on a miss). Each figure is one run (the requests "
            "are seeded); not every policy repeats exactly: between two quick runs theine "
            "moved by up to 1 point, moka-py 0.5.0 tiny_lfu by 0.6 and cachebox RR by 0.3, "
            "the others not at all.",
            table(["policy", *cols], rows),
        ]
    )


def memory_md(results: dict[str, Any], meta: Meta) -> str:
    per = results["bytes"]
    base = per.get(THIS)
    rows = []
    for impl in order(list(per)):
        value = per[impl]
        held = results["held"][impl]
        rows.append(
            [
                meta.label(impl),
                f"{value:.0f}",
                ratio(value, base).strip(" ()") or "1.00x",
                f"{held:,}",
            ]
        )
    return "\n\n".join(
        [
            "### 4. Memory per entry (bytes)",
            f"{results['entries']:,} int -> int entries (capacity as large), each "
            "implementation in a fresh process; growth of the resident set over the entries "
            "held, the key objects (created beforehand) not counted. Median of "
            f"{meta.plan['memory_repeats']} run{'s' * (meta.plan['memory_repeats'] != 1)}.",
            table(["implementation", "bytes per entry", "ratio to moka_py", "entries held"], rows),
        ]
    )


def targets_md(results: dict[str, Any], meta: Meta) -> str:
    """The project's performance targets, each with this run's ratio: met, or
    by how much it is missed."""
    from . import latency

    lat = results.get("latency", {})
    rows: list[list[str]] = []

    def check(target: str, value: float | None, limit: float, at_most: bool = True) -> None:
        if value is None:
            rows.append([target, "not measured", "-"])
            return
        met = value <= limit if at_most else value >= limit
        if met:
            verdict = "met"
        elif at_most:
            verdict = f"missed: {value / limit:.2f}x the limit"
        else:
            verdict = f"missed: {value / limit:.0%} of the goal"
        rows.append([target, f"{value:.2f}x", verdict])

    def ratio_of(case: str, peer: str) -> float | None:
        mine, theirs = lat.get(THIS, {}).get(case), lat.get(peer, {}).get(case)
        return mine / theirs if mine and theirs else None

    old = impls.OLD
    mine_lat, old_lat = lat.get(THIS, {}), lat.get(old, {})
    for case in latency.CASES:
        if case in mine_lat and case in old_lat and case != latency.PLAIN_AWAIT:
            # Writes: no slower than moka-py 0.5.0; everything else 0.9x.
            limit = 1.0 if case in latency.WRITES else 0.9
            check(f"{case}: at most {limit}x moka-py 0.5.0", ratio_of(case, old), limit)
    check("@cached hit: at most 0.5x moka-py 0.5.0", ratio_of("@cached hit", old), 0.5)
    check("@cached hit: at most 0.3x moka-py 0.5.0", ratio_of("@cached hit", old), 0.3)
    check("@cached hit: at most 0.5x cachebox", ratio_of("@cached hit", "cachebox"), 0.5)
    check("@cached hit: at most 4x functools.lru_cache", ratio_of("@cached hit", "functools"), 4)
    async_hit = latency.ASYNC_HIT
    check(f"{async_hit}: at most 0.6x moka-py 0.5.0", ratio_of(async_hit, old), 0.6)
    with_stats, without = mine_lat.get(latency.STATS_HIT), mine_lat.get("get hit (int)")
    check(
        "get hit with stats=True: at most 1.05x without",
        with_stats / without if with_stats and without else None,
        1.05,
    )
    registered = mine_lat.get(latency.OTEL_HIT)
    check(
        "get hit, registered with OpenTelemetry: at most 1.02x stats=True",
        registered / with_stats if registered and with_stats else None,
        1.02,
    )

    # Throughput on 3.13t: (target, moka_py's thread count, the base's key and
    # thread count, the least ratio).
    ops = results.get("scaling", {}).get("ops", {})
    for target, n, base, m, least in (
        ("3.13t: 2 threads at least 1.7x 1 thread", "2", THIS, "1", 1.7),
        ("3.13t, 1 thread: at least 0.5x cachebox", "1", "cachebox", "1", 0.5),
        ("3.13t, 2 threads: at least 0.7x cachebox", "2", "cachebox", "2", 0.7),
    ):
        mine, theirs = ops.get(THIS, {}).get(n), ops.get(base, {}).get(m)
        check(target, mine / theirs if mine and theirs else None, least, False)
    gil = results.get("scaling_gil", {}).get("ops", {})
    gil_int = gil.get("int", {}).get(THIS, {})
    for variant, what in (("int", ""), ("listener", " with an eviction listener")):
        per = gil.get(variant, {}).get(THIS, {})
        for n in [n for n in per if int(n) >= 2]:
            check(
                f"GIL{what}, {n} threads: at least 0.8x 1 thread{what}",
                per[n] / per["1"] if per.get("1") else None,
                0.8,
                False,
            )
    olds = gil.get("int", {}).get(old, {})
    for n in [n for n in gil_int if int(n) >= 2]:
        check(
            f"GIL, {n} threads: at least 1.2x moka-py 0.5.0",
            gil_int[n] / olds[n] if olds.get(n) else None,
            1.2,
            False,
        )
    uuids = gil.get("uuid", {}).get(THIS, {})
    for n in uuids:
        check(
            f"GIL, {n} thread{'s' * (n != '1')}: uuid.UUID keys at least 0.5x int keys' throughput",
            uuids[n] / gil_int[n] if gil_int.get(n) else None,
            0.5,
            False,
        )
    mem = results.get("memory", {}).get("bytes", {})
    if mem.get(THIS) and mem.get(old):
        check("memory per entry: at most moka-py 0.5.0's", mem[THIS] / mem[old], 1.0)
    return "\n\n".join(
        [
            "### Targets (ratios of moka_py to the peer, from this run)",
            table(["target", "this run", "verdict"], rows),
        ]
    )


def markdown(results: dict[str, Any], meta: Meta) -> str:
    kind = (
        "Quick run: tiny sizes, a smoke check; do not read these figures."
        if meta.quick
        else "Full run."
    )
    pythons = ", ".join(f"{b} {v}" for b, v in meta.pythons.items() if v)
    parts = [
        "## moka_py benchmark",
        f"{kind} {time.strftime('%Y-%m-%d')}, {meta.machine or f'{meta.cores} cores'}, "
        f"Python {pythons}, "
        f"PYTHONHASHSEED=0; {meta.seconds / 60:.1f} minutes of measurement.",
    ]
    parts.append(targets_md(results, meta))
    if "latency" in results:
        parts.append(latency_md(results["latency"], meta))
    if "scaling" in results:
        parts.append(scaling_md(results["scaling"], meta))
    if "scaling_gil" in results:
        parts.append(scaling_gil_md(results["scaling_gil"], meta))
    if "coalescing" in results:
        parts.append(coalescing_md(results["coalescing"], meta))
    if "hit_ratio" in results:
        parts.append(hit_ratio_md(results["hit_ratio"], meta))
    if "memory" in results:
        parts.append(memory_md(results["memory"], meta))
    lines = []
    for key, note in meta.missing.items():
        impl, build = key.split("|")
        lines.append(f"- {display(impl)}: not available on {build} ({note}).")
    for key, note in meta.remarks.items():
        impl, build = key.split("|")
        lines.append(f"- {display(impl)} on {build}: {note}.")
    if lines:
        parts += ["### Not measured, and remarks", "\n".join(lines)]
    return "\n\n".join(parts) + "\n"


# --- charts -------------------------------------------------------------------


def charts(results: dict[str, Any], meta: Meta, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    suffix = " (quick run)" if meta.quick else ""
    if "latency" in results:
        written.append(latency_chart(plt, results["latency"], meta, out, suffix))
    if "scaling" in results:
        written.append(scaling_chart(plt, results["scaling"], meta, out, suffix))
    if results.get("scaling_gil", {}).get("ops"):
        written.append(scaling_gil_chart(plt, results["scaling_gil"], meta, out, suffix))
    if "hit_ratio" in results:
        written.append(hit_ratio_chart(plt, results["hit_ratio"], meta, out, suffix))
    if "memory" in results:
        written.append(memory_chart(plt, results["memory"], meta, out, suffix))
    return written


def save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def latency_chart(plt: Any, results: dict[str, Any], meta: Meta, out: Path, suffix: str) -> Path:
    from . import latency

    cases = [c for c in latency.CASES if any(c in per for per in results.values())]
    names = order(list(results))
    fig, ax = plt.subplots(figsize=(14, 5.5))
    width = 0.85 / len(names)
    for j, impl in enumerate(names):
        xs = [i + j * width for i, c in enumerate(cases) if c in results[impl]]
        ys = [results[impl][c] for c in cases if c in results[impl]]
        ax.bar(xs, ys, width, label=meta.label(impl), color=COLORS.get(impl))
    ax.set_xticks(
        [i + 0.425 - width / 2 for i in range(len(cases))], cases, rotation=20, ha="right"
    )
    ax.set_yscale("log")
    top = max(v for per in results.values() for v in per.values())
    ax.set_ylim(top=top * 8)  # room for the legend
    ax.set_ylabel("ns per operation, log scale (lower is better)")
    ax.set_title(f"Latency of one operation, one thread, GIL build{suffix}")
    ax.legend(fontsize="small", ncols=4, loc="upper left")
    ax.grid(axis="y", which="both", alpha=0.3)
    return save(plt, fig, out / "latency.png")


def threads_axes(
    ax: Any, ops: dict[str, dict[str, float]], stalled: dict[str, int], meta: Meta, build: str
) -> None:
    """One line per implementation: million ops/s over the thread counts. A key
    that is not an implementation's name (moka_py's GIL-build reference on the
    3.13t chart) is drawn dashed in moka_py's colour."""
    for key in order(list(ops)):
        per = ops[key]
        threads = [int(n) for n in per]
        mops = [v / 1e6 for v in per.values()]
        name = meta.label(key, build) if key in impls.ALL else key
        if key in stalled:
            name += f" (stalled at {stalled[key]} threads)"
        if key in impls.ALL:
            ax.plot(threads, mops, "o-", label=name, color=COLORS.get(key))
        else:
            ax.plot(threads, mops, "o--", label=name, color=COLORS[THIS], alpha=0.5)
    threads = list(meta.plan["threads"])
    ax.set_xscale("log", base=2)
    ax.set_xticks(threads, [str(t) for t in threads])
    ax.set_ylim(bottom=0)
    ax.set_xlabel(f"threads ({meta.cores} cores)")
    ax.set_ylabel("million operations per second, all threads")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)


def scaling_chart(plt: Any, results: dict[str, Any], meta: Meta, out: Path, suffix: str) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    threads_axes(ax, results["ops"], results.get("stalled", {}), meta, "3.13t")
    ax.set_title(f"90/10 get/set on one shared cache, free-threaded 3.13t{suffix}")
    return save(plt, fig, out / "scaling.png")


def scaling_gil_chart(
    plt: Any, results: dict[str, Any], meta: Meta, out: Path, suffix: str
) -> Path:
    from .scaling import GIL_VARIANTS

    variants = [v for v in GIL_VARIANTS if results["ops"].get(v)]
    fig, axes = plt.subplots(1, len(variants), figsize=(5.5 * len(variants), 4.5), squeeze=False)
    for ax, variant in zip(axes[0], variants, strict=True):
        stalled = results["stalled"].get(variant, {})
        threads_axes(ax, results["ops"][variant], stalled, meta, "GIL")
        ax.set_title(GIL_VARIANTS[variant][2], fontsize="medium")
    fig.suptitle(f"90/10 get/set on one shared cache, GIL build{suffix}")
    return save(plt, fig, out / "scaling_gil.png")


def hit_ratio_chart(plt: Any, results: dict[str, Any], meta: Meta, out: Path, suffix: str) -> Path:
    cols: list[str] = []
    for per in results.values():
        cols += [c for c in per if c not in cols]
    workloads = list(dict.fromkeys(c.rsplit(", ", 1)[0] for c in cols))
    caps = list(dict.fromkeys(c.rsplit(", ", 1)[1] for c in cols))
    keys = order(list(results))
    fig, axes = plt.subplots(
        len(caps),
        len(workloads),
        figsize=(3.2 * len(workloads) + 2.5, 0.22 * len(keys) * len(caps) + 1.5),
        sharey=True,
        squeeze=False,
    )
    for r, cap in enumerate(caps):
        for c, wl in enumerate(workloads):
            ax = axes[r][c]
            col = f"{wl}, {cap}"
            values = [results[k].get(col, 0.0) for k in keys]
            colors = [COLORS.get(k.split(" ")[0]) for k in keys]
            ax.barh(range(len(keys)), values, color=colors)
            ax.set_title(f"{wl}, capacity {cap}", fontsize="small")
            ax.set_xlim(0, max([*values, 1.0]) * 1.15)
            ax.grid(axis="x", alpha=0.3)
            ax.tick_params(labelsize="x-small")
    labels = [f"{meta.label(k.split(' ')[0])} {k.split(' ', 1)[1]}" for k in keys]
    for r in range(len(caps)):
        axes[r][0].set_yticks(range(len(keys)), labels)
    axes[0][0].invert_yaxis()
    fig.suptitle(f"Hit ratio, % (higher is better){suffix}")
    return save(plt, fig, out / "hit_ratio.png")


def memory_chart(plt: Any, results: dict[str, Any], meta: Meta, out: Path, suffix: str) -> Path:
    per = results["bytes"]
    names = order(list(per))
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.2))
    ax.barh(range(len(names)), [per[n] for n in names], color=[COLORS.get(n) for n in names])
    ax.set_yticks(range(len(names)), [meta.label(n) for n in names])
    ax.invert_yaxis()
    ax.set_xlabel("bytes per entry (lower is better)")
    ax.set_title(f"Memory, {results['entries']:,} int -> int entries{suffix}")
    ax.grid(axis="x", alpha=0.3)
    return save(plt, fig, out / "memory.png")
