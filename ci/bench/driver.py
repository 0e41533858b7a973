"""The benchmark of moka_py against its peers, every case side by side in one run.

Run through ci/bench.sh (as ``python -m ci.bench``), which builds moka_py in
release mode and installs the peers: in this (GIL) environment, in a second one
for moka-py 0.5.0 (same import name), and in a free-threaded 3.13t one. This
driver measures each case family in worker processes of those environments
(``python -m ci.bench --worker``), prints Markdown tables (medians of
interleaved repeats, ratios to moka_py) and writes them with the charts and the
raw figures to ``--out``:

1. latency: one operation, one thread (latency.py)
2. scaling: threads sharing a cache on 3.13t, and coalesced loads (scaling.py)
2a. scaling_gil: threads sharing a cache on the GIL build, with int keys, with
   ``uuid.UUID`` keys and with an eviction listener (scaling.py)
3. hit ratio of the eviction policies (hit_ratio.py)
4. memory per entry (memory.py)
5. tier: moka_py.redis beside redis-py and its peers, on redis-servers of its
   own (tier.py; GIL build only; its own tier.md, tier.json and tier.png)

Progress goes to stderr, the tables to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import impls

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = ("latency", "scaling", "scaling_gil", "hit_ratio", "memory", "tier")
# Workers inherit the driver's start, so that their progress lines tell the run's time.
STARTED = float(os.environ.setdefault("MOKA_BENCH_STARTED", str(time.time())))


def log(message: str) -> None:
    elapsed = int(time.time() - STARTED)
    print(f"[bench {elapsed // 60}:{elapsed % 60:02d}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Plan:
    """How much of each case family to run."""

    latency_repeats: int
    latency_rounds: int
    threads: tuple[int, ...]
    throughput_seconds: float
    throughput_repeats: int
    coalesce_counts: tuple[int, ...]
    coalesce_repeats: int
    memory_repeats: int
    # A thread count whose run has not ended this long after its planned time
    # is stopped as deadlocked (the healthy ones end within a second).
    stall_seconds: float


QUICK = Plan(3, 10, (1, 2, 4, 8), 0.05, 2, (8,), 2, 1, 5.0)
FULL = Plan(9, 200, (1, 2, 4, 8), 0.5, 5, (8, 64), 5, 3, 10.0)


@dataclass
class Env:
    """A virtual environment and what runs in it."""

    name: str  # "GIL" or "3.13t"
    python: str
    impls: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    python_version: str = ""


# A peer's worker that fails does not stop the run: "impl|build" -> what happened.
FAILED: dict[str, str] = {}
TIMEOUT = 900  # seconds; a worker that takes longer is stuck


def worker(python: str, family: str, who: str = "", **spec: Any) -> Any:
    """Runs one measurement in a fresh process of ``python``; its JSON result
    (the last line that it prints).

    ``who`` ("impl|build") names a peer whose failure is reported and skipped
    (the result is then ``None``); any other failure ends the run. A
    throughput worker that its own alarm stopped (see :func:`run_worker`)
    gives the figures it printed before, with ``"stalled": True``.
    """
    # ci/bench.sh puts the repository on PYTHONPATH, which the workers inherit.
    cmd = [python, "-m", "ci.bench", "--worker", json.dumps({"family": family, **spec})]
    env = dict(os.environ, PYTHONHASHSEED="0")
    try:
        proc = subprocess.run(
            cmd, stdout=subprocess.PIPE, text=True, env=env, check=False, timeout=TIMEOUT
        )
        lines = proc.stdout.splitlines()
        error = f"exit status {proc.returncode}" if proc.returncode else ""
        if proc.returncode == -signal.SIGALRM:
            error = f"no progress {spec.get('stall')} s past its planned time (a deadlock?)"
            if who:
                return {**(json.loads(lines[-1]) if lines else {}), "stalled": True}
    except subprocess.TimeoutExpired:
        error = f"no result after {TIMEOUT} s"
    if not error:
        return json.loads(lines[-1])
    if not who:
        raise SystemExit(f"worker {family} {spec} failed in {python}: {error}")
    log(f"{who.replace('|', ' on ')}: {family} failed ({error}), skipped")
    FAILED[who] = f"{family} failed ({error})"
    return None


def run_worker(spec: dict[str, Any]) -> Any:
    """The ``--worker`` side: one measurement, in whichever environment runs it."""
    family = spec["family"]
    if family == "probe":
        out = {}
        for impl in spec["impls"]:
            error = impls.available(impl)
            out[impl] = {"error": error, "version": impls.version(impl)}
        return {"impls": out, "gil": impls.gil_enabled(), "python": sys.version.split()[0]}
    if family == "latency":
        from . import latency

        return latency.run(spec["impls"], spec["rounds"])
    if family == "hit_ratio":
        from . import hit_ratio

        return hit_ratio.run(spec["impls"], spec["quick"], log)
    if family == "memory":
        from . import memory

        return memory.run(spec["impl"], spec["entries"])
    if family == "throughput":
        from . import scaling

        ops: dict[str, float] = {}
        for n in spec["threads"]:
            # A deadlock can leave a thread that holds the GIL waiting for ever,
            # and Python's own timers with it: SIGALRM's default action ends the
            # process instead, and the driver keeps the figures printed so far.
            signal.setitimer(signal.ITIMER_REAL, spec["seconds"] + spec["stall"])
            ops[str(n)] = scaling.throughput(
                spec["impl"],
                n,
                spec["seconds"],
                spec.get("keys", "int"),
                spec.get("listener", False),
            )
            signal.setitimer(signal.ITIMER_REAL, 0)
            print(json.dumps({"ops": ops, "gil": impls.gil_enabled()}), flush=True)
        return {"ops": ops, "gil": impls.gil_enabled()}
    if family == "coalescing":
        from . import scaling

        return scaling.run_coalescing(spec["impls"], spec["counts"])
    if family == "tier":
        from . import tier

        return tier.probe() if spec["case"] == "probe" else tier.run(spec["case"], spec["quick"])
    raise ValueError(family)


# --- environments ---------------------------------------------------------


@dataclass
class Notes:
    """What is not measured and why, and remarks: "impl|build" -> text."""

    missing: dict[str, str] = field(default_factory=dict)
    remarks: dict[str, str] = field(default_factory=dict)


def probe(env: Env, candidates: list[str], notes: Notes) -> None:
    """Finds which implementations import in ``env`` (one process each on 3.13t,
    so that one that turns the GIL back on is seen)."""
    groups = [[c] for c in candidates] if env.name == "3.13t" else [candidates]
    for group in groups:
        found = worker(env.python, "probe", impls=group)
        env.python_version = found["python"]
        for impl, info in found["impls"].items():
            if info["error"] is not None:
                notes.missing[f"{impl}|{env.name}"] = info["error"]
                continue
            env.impls.append(impl)
            env.versions[impl] = info["version"]
            if env.name == "3.13t" and found["gil"]:
                notes.remarks[f"{impl}|3.13t"] = "its import turns the GIL back on"


def machine() -> str:
    """The CPU model, the memory and the load when the run ends: what the
    figures were measured on."""
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                cpu,
            )
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
        memory = f", {kib / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        memory = ""
    load = (
        ", load {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()) if hasattr(os, "getloadavg") else ""
    )
    return f"{cpu}, {os.cpu_count()} cores{memory}{load}"


def read_ft_status(path: str | None) -> dict[str, str]:
    """ci/bench.sh's notes on installing the peers on 3.13t: impl -> note."""
    out: dict[str, str] = {}
    if not path or not Path(path).exists():
        return out
    for line in Path(path).read_text().splitlines():
        req, _, note = line.partition("\t")
        name = req.split("==")[0].strip()
        out[impls.OLD if name == "moka-py" else name] = note.strip()
    return out


def environments(args: argparse.Namespace) -> tuple[list[Env], Notes]:
    """The environments, each with the implementations that run there."""
    notes = Notes()
    gil = Env("GIL", sys.executable)
    mine = [i for i in impls.ALL if i != impls.OLD]
    probe(gil, mine, notes)
    envs = [gil]
    if args.peer_python:
        old = Env("GIL", args.peer_python)
        probe(old, [impls.OLD], notes)
        envs.append(old)
    if args.ft_python:
        ft = Env("3.13t", args.ft_python)
        probe(ft, mine, notes)
        envs.append(ft)
        if args.ft_peer_python:
            ft_old = Env("3.13t", args.ft_peer_python)
            probe(ft_old, [impls.OLD], notes)
            envs.append(ft_old)
        else:
            notes.missing[f"{impls.OLD}|3.13t"] = "not installed"
        # ci/bench.sh knows better why a peer is missing than a failed import.
        for impl, note in read_ft_status(args.ft_status).items():
            key = f"{impl}|3.13t"
            if key in notes.missing:
                notes.missing[key] = note
            else:
                notes.remarks[key] = note
    return envs, notes


def label(impl: str, env: Env) -> str:
    if impl == impls.THIS:
        return f"moka_py {env.versions[impl]} (this)"
    if impl == impls.OLD:
        return f"moka-py {env.versions[impl]}"
    if impl == "functools":
        return "functools.lru_cache"
    if impl == "dict":
        return "dict"
    return f"{impl} {env.versions[impl]}"


def peer(impl: str, env: Env) -> str:
    """``worker``'s ``who``: empty for moka_py, whose failure ends the run."""
    return "" if impl == impls.THIS else f"{impl}|{env.name}"


def where(envs: list[Env], name: str, async_only: bool = False) -> list[tuple[Env, list[str]]]:
    """The environments of build ``name`` and their implementations; those of
    impls.ASYNC_ONLY only if ``async_only`` (the latency family alone has a case
    for them)."""
    out = []
    for e in envs:
        names = [i for i in e.impls if async_only or i not in impls.ASYNC_ONLY]
        if e.name == name and names:
            out.append((e, names))
    return out


# --- the case families --------------------------------------------------------


def measure_latency(envs: list[Env], plan: Plan) -> dict[str, Any]:
    samples: dict[str, dict[str, list[float]]] = {}
    for r in range(plan.latency_repeats):
        for env, names in where(envs, "GIL", async_only=True):
            log(f"latency: repeat {r + 1}/{plan.latency_repeats}, {', '.join(names)}")
            found = worker(env.python, "latency", impls=names, rounds=plan.latency_rounds)
            for impl, cases in found.items():
                for case, value in cases.items():
                    samples.setdefault(impl, {}).setdefault(case, []).append(value)
    return {
        impl: {case: statistics.median(v) for case, v in cases.items()}
        for impl, cases in samples.items()
    }


Run = tuple[Env, str, Any, dict[str, Any]]  # env, impl, key of its figures, worker spec


def throughput_runs(runs: list[Run], plan: Plan, what: str) -> dict[str, Any]:
    """The throughput workers of ``runs``, interleaved over the repeats.

    ``ops``: key -> thread count -> median ops/s; ``gil``: key -> whether the
    GIL was on; ``stalled``: key -> the lowest thread count at which a peer's
    run stopped making progress (deadlocked); that count and the higher ones
    are then left out of the figures and of the later repeats.
    """
    samples: dict[Any, dict[str, list[float]]] = {}
    gil_on: dict[Any, bool] = {}
    stalled: dict[Any, int] = {}
    for r in range(plan.throughput_repeats):
        log(f"{what}: repeat {r + 1}/{plan.throughput_repeats}, threads {list(plan.threads)}")
        for env, impl, key, spec in runs:
            counts = [n for n in plan.threads if n < stalled.get(key, n + 1)]
            if not counts:
                continue
            found = worker(
                env.python,
                "throughput",
                who=peer(impl, env),
                impl=impl,
                threads=counts,
                seconds=plan.throughput_seconds,
                stall=plan.stall_seconds,
                **spec,
            )
            if found is None:
                continue
            if "gil" in found:
                gil_on[key] = found["gil"]
            for n, ops in found.get("ops", {}).items():
                samples.setdefault(key, {}).setdefault(n, []).append(ops)
            if found.get("stalled"):
                stalled[key] = counts[len(found.get("ops", {}))]
                variant = "".join(f", {k}={v}" for k, v in spec.items())
                log(
                    f"{impl} on {env.name}{variant}: no progress at {stalled[key]} threads "
                    f"{plan.stall_seconds} s past the planned time (a deadlock?), stopped"
                )
    ops = {
        key: {n: statistics.median(v) for n, v in per.items() if int(n) < stalled.get(key, 1e9)}
        for key, per in samples.items()
    }
    return {"ops": ops, "gil": gil_on, "stalled": stalled}


def measure_scaling(envs: list[Env], plan: Plan) -> dict[str, Any]:
    runs: list[Run] = []
    for env, names in where(envs, "3.13t"):
        runs += [(env, impl, impl, {}) for impl in names if impl != "functools"]  # it has no set
    for env, names in where(envs, "GIL"):
        if impls.THIS in names:
            runs.append((env, impls.THIS, "moka_py, GIL build", {}))
    return throughput_runs(runs, plan, "scaling")


def measure_scaling_gil(envs: list[Env], plan: Plan) -> dict[str, Any]:
    """The throughput case on the GIL build, every implementation that has a
    set (moka-py 0.5.0 in its own environment), in each variant that it
    supports. ``ops`` and ``stalled`` as of :func:`throughput_runs`, by variant
    then implementation."""
    from .scaling import GIL_VARIANTS

    runs: list[Run] = []
    for env, names in where(envs, "GIL"):
        for impl in names:
            if impl == "functools":  # it has no set
                continue
            for variant, (keys, listener, _) in GIL_VARIANTS.items():
                if not listener or impl in impls.LISTENERS:
                    spec = {"keys": keys, "listener": listener}
                    runs.append((env, impl, (variant, impl), spec))
    found = throughput_runs(runs, plan, f"scaling on the GIL build, {len(runs)} processes")
    out: dict[str, Any] = {"ops": {}, "stalled": {}}
    for part in ("ops", "stalled"):
        for (variant, impl), value in found[part].items():
            out[part].setdefault(variant, {})[impl] = value
    return out


def measure_coalescing(envs: list[Env], plan: Plan) -> dict[str, Any]:
    counts = list(plan.coalesce_counts)
    samples: dict[str, dict[str, list[list[float]]]] = {}
    for r in range(plan.coalesce_repeats):
        log(f"coalescing: repeat {r + 1}/{plan.coalesce_repeats}, N={counts}, a process each")
        for env in envs:
            for impl in [i for i in env.impls if i not in impls.ASYNC_ONLY]:
                found = worker(
                    env.python, "coalescing", who=peer(impl, env), impls=[impl], counts=counts
                )
                if found is None:
                    continue
                row = samples.setdefault(f"{impl}|{env.name}", {})
                for col, value in found[impl].items():
                    row.setdefault(col, []).append(value)
    out: dict[str, dict[str, Any]] = {}
    for key, cols in samples.items():
        for col, values in cols.items():
            calls = sorted(int(v[0]) for v in values)
            ms = statistics.median(v[1] for v in values)
            out.setdefault(key, {})[col] = {"calls": [calls[0], calls[-1]], "ms": ms}
    return out


def measure_hit_ratio(envs: list[Env], quick: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for env, names in where(envs, "GIL"):
        log(f"hit ratio: {', '.join(names)}")
        out |= worker(env.python, "hit_ratio", impls=names, quick=quick)
    return out


def measure_memory(envs: list[Env], plan: Plan, quick: bool) -> dict[str, Any]:
    from . import memory

    n = memory.entries(quick)
    samples: dict[str, list[float]] = {}
    held: dict[str, int] = {}
    for r in range(plan.memory_repeats):
        log(f"memory: repeat {r + 1}/{plan.memory_repeats}, {n} entries, a process each")
        for env, names in where(envs, "GIL"):
            for impl in names:
                found = worker(env.python, "memory", who=peer(impl, env), impl=impl, entries=n)
                if found is None:
                    continue
                samples.setdefault(impl, []).append(found["bytes"])
                held[impl] = found["entries"]
    return {
        "entries": n,
        "bytes": {impl: statistics.median(v) for impl, v in samples.items()},
        "held": held,
    }


TIER_CASES = ("hits", "django", "invalidation", "stampede", "throughput")


def measure_tier(
    quick: bool, cases: tuple[str, ...] = TIER_CASES
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The tier family (or some of its ``cases``): each case in a worker
    process of this (GIL) environment, on a redis-server of its own. Its
    results and what the report needs to know."""
    from . import tier

    plan = tier.QUICK if quick else tier.FULL
    started = time.time()
    found = worker(sys.executable, "tier", case="probe", quick=quick)
    for impl, why in found["missing"].items():
        log(f"tier: {impl} not measured ({why})")
    results: dict[str, Any] = {}
    # The latency cases: repeats in fresh workers, interleaved, medians of them.
    for latency in ("hits", "django"):
        if latency not in cases:
            continue
        samples: dict[str, dict[str, list[float]]] = {}
        for r in range(plan.repeats):
            log(f"tier: {latency}, repeat {r + 1}/{plan.repeats}")
            for case, per in worker(sys.executable, "tier", case=latency, quick=quick).items():
                for impl, ns in per.items():
                    samples.setdefault(case, {}).setdefault(impl, []).append(ns)
        results[latency] = {
            case: {impl: statistics.median(v) for impl, v in per.items()}
            for case, per in samples.items()
        }
    for case in ("invalidation", "stampede", "throughput"):
        if case not in cases:
            continue
        log(f"tier: {case}")
        results[case] = worker(sys.executable, "tier", case=case, quick=quick)
    meta = {
        "quick": quick,
        "plan": plan.__dict__,
        "versions": found["versions"],
        "missing": found["missing"],
        "python": sys.version.split()[0],
        "machine": machine(),
        "seconds": time.time() - started,
        "date": time.strftime("%Y-%m-%d"),
    }
    return results, meta


def write_tier(results: dict[str, Any], meta: dict[str, Any], out: Path) -> None:
    from . import tier_report

    markdown = tier_report.markdown(results, meta)
    print(markdown)
    (out / "tier.md").write_text(markdown)
    (out / "tier.json").write_text(json.dumps({"meta": meta, **results}, indent=1))
    log("tier chart")
    written = tier_report.chart(results, meta, out)
    log(f"wrote {out / 'tier.md'}, {out / 'tier.json'}, {written}")


# --- main ---------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m ci.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: tiny sizes, few repeats")
    ap.add_argument("--out", default=str(ROOT / "bench-out"), help="charts and results.md")
    ap.add_argument("--only", action="append", choices=FAMILIES, help="run only these families")
    ap.add_argument("--peer-python", help="interpreter of the venv holding moka-py 0.5.0")
    ap.add_argument("--ft-python", help="interpreter of the free-threaded 3.13t venv")
    ap.add_argument("--ft-peer-python", help="a 3.13t venv holding moka-py 0.5.0, if any")
    ap.add_argument("--ft-status", help="ci/bench.sh's notes on the peers' install on 3.13t")
    ap.add_argument(
        "--tier-case",
        action="append",
        choices=TIER_CASES,
        help="with --only tier: run only these cases of it, and print their results (JSON "
        "and the tables they fill) instead of writing OUT/tier.*",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument(
        "--render",
        action="store_true",
        help="measure nothing: rewrite OUT/results.md from OUT/results.json (after a change "
        "to the report or its targets)",
    )
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return

    from . import report

    if args.render:
        data = json.loads((Path(args.out) / "results.json").read_text())
        meta = report.Meta(**data.pop("meta"))
        (Path(args.out) / "results.md").write_text(report.markdown(data, meta))
        return

    plan = QUICK if args.quick else FULL
    families = args.only or list(FAMILIES)
    log(f"{'quick' if args.quick else 'full'} run: {', '.join(families)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if families == ["tier"] and args.tier_case:  # a part: printed, nothing written
        from . import tier_report

        results, meta = measure_tier(args.quick, tuple(args.tier_case))
        print(json.dumps(results, indent=1))
        print(tier_report.partial_md(results, meta))
        return
    if families == ["tier"]:  # results.md is the other families': left as it is
        write_tier(*measure_tier(args.quick), out)
        return
    envs, notes = environments(args)
    for key, note in notes.missing.items():
        impl, build = key.split("|")
        log(f"{report.display(impl)}: not available on {build} ({note})")
    for key, note in notes.remarks.items():
        impl, build = key.split("|")
        log(f"{report.display(impl)} on {build}: {note}")
    results: dict[str, Any] = {}
    if "latency" in families:
        results["latency"] = measure_latency(envs, plan)
    if "scaling" in families:
        results["scaling"] = measure_scaling(envs, plan)
        results["coalescing"] = measure_coalescing(envs, plan)
    if "scaling_gil" in families:
        results["scaling_gil"] = measure_scaling_gil(envs, plan)
    if "hit_ratio" in families:
        results["hit_ratio"] = measure_hit_ratio(envs, args.quick)
    if "memory" in families:
        results["memory"] = measure_memory(envs, plan, args.quick)

    meta = report.Meta(
        quick=args.quick,
        plan=plan.__dict__,
        pythons={e.name: e.python_version for e in envs},
        labels={f"{i}|{e.name}": label(i, e) for e in envs for i in e.impls},
        missing=notes.missing,
        remarks=notes.remarks | FAILED,
        cores=os.cpu_count() or 0,
        seconds=time.time() - STARTED,
        machine=machine(),
    )
    markdown = report.markdown(results, meta)
    print(markdown)
    (out / "results.md").write_text(markdown)
    (out / "results.json").write_text(json.dumps({"meta": meta.__dict__, **results}, indent=1))
    log("charts")
    written = report.charts(results, meta, out)
    log(f"wrote {', '.join(str(p) for p in [out / 'results.md', *written])}")
    if "tier" in families:
        write_tier(*measure_tier(args.quick), out)
