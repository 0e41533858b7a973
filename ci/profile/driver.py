"""Where the time of one operation goes: instruction counts under callgrind.

Run through ci/profile.sh (as ``python -m ci.profile``). For each operation,
the workload of ci/profile/ops.py runs under
``valgrind --tool=callgrind`` twice, with N1 and N2 operations; the difference
is the cost of N2 - N1 operations, with start-up and set-up cancelled out. The
empty loop's cost (measured the same way) is subtracted. Each instruction is
charged to the source it was compiled from (the Rust build carries line
tables, so code that LTO inlined is still charged to its own crate):

* CPython: the interpreter, the call protocol, int and str hashing;
* PyO3: the method trampoline and argument parsing;
* binding: moka_py's own Rust (keys, the loader, the detach wrappers, the fast entries);
* moka: moka's cache, its concurrent hash table and housekeeping, and the
  crossbeam channels and epochs it uses;
* malloc: the C allocator.

Code of the Rust standard library and of libc (atomics, ``Arc``, thread-local
look-ups, the clock) is charged to the crate whose function it ran in.

Instruction counts are stable from run to run on a shared machine, unlike
times; they do not weigh cache misses or atomics' cost.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OPS = {
    # op: the empty loop it is compared with
    "get_hit": "loop",
    "get_hit_stats": "loop",
    "get_hit_tagged": "loop",
    "get_miss": "loop_fresh",
    "set_existing": "loop",
    "set_existing_stats": "loop",
    "set_fresh_full": "loop_fresh",
    "get_with_hit": "loop",
    "get_with_miss": "loop_fresh",
    "remove": "loop_fresh",
    "remove_stats": "loop_fresh",
    "cached_hit": "loop",
    "cached_coalescing_hit": "loop",
    "get_with_hit_str": "loop_pool",
    "remove_miss": "loop_fresh",
    **{
        f"get_{r}_{kind}": "loop_pool"
        for kind in ("int", "str", "longstr", "tuple", "uuid")
        for r in ("hit", "miss")
    },
}
# Operations of this package only (moka-py 0.5.0 has no statistics).
THIS_ONLY = {"get_hit_stats", "set_existing_stats", "remove_stats", "get_hit_tagged"}
GROUPS = ("CPython", "PyO3", "binding", "moka", "malloc", "other")
LINE = re.compile(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*?):(.*?)(?:\s+\[(.*)\])?$")


def crate_of(function: str) -> str:
    """The group of the (outermost) function that code was inlined into."""
    name = function.lstrip("<")
    for prefix, which in (
        ("moka::", "moka"),
        ("crossbeam", "moka"),
        ("pyo3::", "PyO3"),
        ("_moka_py::", "binding"),
        ("arc_swap::", "binding"),
    ):
        if name.startswith(prefix):
            return which
    return ""


def group(path: str, function: str, obj: str) -> str:
    if "libpython" in obj or "/Python-" in path or obj.endswith("/python"):
        return "CPython"
    if "/pyo3-" in path or "/pyo3/" in path:
        return "PyO3"
    if any(s in path for s in ("/moka-", "/crossbeam-", "/quanta-", "/tagptr-", "/event-listener")):
        return "moka"
    if path.startswith("src/") or any(
        s in path for s in ("/arc-swap-", "/dashmap-", "/hashbrown-", "/parking_lot")
    ):
        return "binding"
    if "malloc" in path:
        return "malloc"
    # The standard library and libc (thread-locals, the clock) are charged to
    # the crate whose code called them.
    return crate_of(function) or "other"


def run(python: str, op: str, n: int, out: Path) -> dict[str, int]:
    """Instructions of one run of `op` N times, by group."""
    cg = out / f"callgrind.{op}.{n}"
    subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={cg}",
            python,
            "-m",
            "ci.profile.ops",  # ci/profile.sh puts the repository on PYTHONPATH
            op,
            str(n),
        ],
        check=True,
        capture_output=True,
        # The same string hashes in every run: dict probes then cancel out.
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    text = subprocess.run(
        ["callgrind_annotate", "--inclusive=no", "--threshold=100", "--auto=no", str(cg)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    cg.unlink()
    totals: dict[str, int] = defaultdict(int)
    for line in text.splitlines():
        m = LINE.match(line)
        if not m or "PROGRAM TOTALS" in line:
            continue
        totals[group(m.group(2), m.group(3), m.group(4) or "")] += int(m.group(1).replace(",", ""))
    return totals


def per_op(python: str, op: str, n1: int, n2: int, out: Path) -> dict[str, float]:
    a, b = run(python, op, n1, out), run(python, op, n2, out)
    return {g: (b.get(g, 0) - a.get(g, 0)) / (n2 - n1) for g in GROUPS}


def profile(
    python: str, ops: list[str], n1: int, n2: int, out: Path
) -> dict[str, dict[str, float]]:
    """Instructions per operation, by group, with the empty loop subtracted."""
    loops: dict[str, dict[str, float]] = {}
    rows: dict[str, dict[str, float]] = {}
    for op in ops:
        loop = OPS[op]
        if loop not in loops:
            loops[loop] = per_op(python, loop, n1, n2, out)
        print(f"[profile] {python}: {op}", file=sys.stderr, flush=True)
        raw = per_op(python, op, n1, n2, out)
        rows[op] = {g: raw[g] - loops[loop][g] for g in GROUPS}
    return rows


# Instructions per operation the project aims at (issue 22): an absolute limit,
# and the most this package may take relative to moka-py 0.5.0 on the same operation.
LIMITS = {"get_hit": 1000}
RELATIVE = {
    "get_hit": 0.9,
    "get_miss": 0.9,
    "get_with_hit": 0.9,
    "set_existing": 1.0,
    "remove": 1.0,
    **{
        f"get_{r}_{kind}": 0.9
        for kind in ("int", "str", "longstr", "tuple", "uuid")
        for r in ("hit", "miss")
    },
    "get_with_hit_str": 0.9,
    "remove_miss": 1.0,
}
# With stats=True, at most this much more than the same operation without.
STATS_LIMIT = 1.05
# A hit of an entry with a tag, at most this much more than one without (issue 23).
TAGGED_LIMIT = 1.1


def targets(rows: dict[str, dict[str, float]], theirs: dict[str, dict[str, float]] | None) -> str:
    """The instruction targets, each with this run's count: met, or by how much missed."""
    total = {op: sum(row.values()) for op, row in rows.items()}
    old = {op: sum(row.values()) for op, row in (theirs or {}).items()}
    lines = ["| target | this run | verdict |", "|---|---|---|"]

    def verdict(value: float, limit: float) -> str:
        return "met" if value <= limit else f"missed: {value / limit:.2f}x the limit"

    for op, limit in LIMITS.items():
        if op in total:
            lines.append(
                f"| {op}: at most {limit:,} | {total[op]:,.0f} | {verdict(total[op], limit)} |"
            )
    for op, limit in RELATIVE.items():
        if op in total and old.get(op):
            ratio = total[op] / old[op]
            lines.append(
                f"| {op}: at most {limit}x moka-py 0.5.0 | {ratio:.2f}x | {verdict(ratio, limit)} |"
            )
    for op in ("get_hit", "set_existing", "remove"):
        if op in total and f"{op}_stats" in total:
            ratio = total[f"{op}_stats"] / total[op]
            lines.append(
                f"| {op}_stats: at most {STATS_LIMIT}x {op} | {ratio:.2f}x "
                f"| {verdict(ratio, STATS_LIMIT)} |"
            )
    if "get_hit" in total and "get_hit_tagged" in total:
        ratio = total["get_hit_tagged"] / total["get_hit"]
        lines.append(
            f"| get_hit_tagged: at most {TAGGED_LIMIT}x get_hit | {ratio:.2f}x "
            f"| {verdict(ratio, TAGGED_LIMIT)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ci.profile", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--python",
        action="append",
        required=True,
        metavar="LABEL=PATH",
        help="an interpreter with a moka_py installed; the first is broken down by group",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out")
    parser.add_argument("--n1", type=int, default=1000)
    parser.add_argument("--n2", type=int, default=5000)
    parser.add_argument("ops", nargs="*", default=list(OPS))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pythons = dict(p.split("=", 1) for p in args.python)
    first, *others = pythons
    results = {
        label: profile(
            path,
            [op for op in args.ops if label == first or op not in THIS_ONLY],
            args.n1,
            args.n2,
            args.out,
        )
        for label, path in pythons.items()
    }
    header = f"| operation | {first} | " + " | ".join(GROUPS)
    header += "".join(f" | {o}" for o in others) + " |"
    lines = [header, "|" + "---|" * (len(GROUPS) + 2 + len(others))]
    for op, row in results[first].items():
        total = sum(row.values())
        cells = " | ".join(f"{row[g]:,.0f}" for g in GROUPS)
        for o in others:
            if op not in results[o]:
                cells += " | -"
                continue
            theirs = sum(results[o][op].values())
            cells += f" | {theirs:,.0f} ({theirs / total:.2f}x)"
        lines.append(f"| {op} | {total:,.0f} | {cells} |")
    table = "\n".join(lines)
    if first == "moka_py":
        table += "\n\n" + targets(results[first], results.get("moka-py 0.5.0"))
    print(table)
    (args.out / "profile.md").write_text(table + "\n")
    (args.out / "profile.json").write_text(json.dumps(results, indent=1) + "\n")
