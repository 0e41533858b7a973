"""The zig-linked manylinux2014 wheel (what ci/wheels.sh ships) against the native
build (what the benchmark and the profile use), on the latency family's moka_py
cases, side by side in one run.

Run through ci/bench_zig.sh (as ``python -m ci.bench.linkers``), which builds both
wheels for one interpreter and installs each in its own venv. Each repeat runs one
latency worker (latency.py, a fresh process) per build, the order of the builds
alternating from repeat to repeat; the table has the medians and the ratio
zig / native (below 1.00x: the zig-linked wheel is faster).
"""

from __future__ import annotations

import argparse
import statistics

from . import impls
from .driver import log, worker


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--native", required=True, help="python of the venv with the native build")
    ap.add_argument("--zig", required=True, help="python of the venv with the zig-linked wheel")
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--rounds", type=int, default=200)
    args = ap.parse_args()
    builds = [("native", args.native), ("zig", args.zig)]
    samples: dict[str, dict[str, list[float]]] = {name: {} for name, _ in builds}
    for r in range(args.repeats):
        for name, python in builds if r % 2 == 0 else builds[::-1]:
            log(f"latency: repeat {r + 1}/{args.repeats}, {name}")
            found = worker(python, "latency", impls=[impls.THIS], rounds=args.rounds)
            for case, value in found[impls.THIS].items():
                samples[name].setdefault(case, []).append(value)
    native = {c: statistics.median(v) for c, v in samples["native"].items()}
    zig = {c: statistics.median(v) for c, v in samples["zig"].items()}
    print(f"moka_py latency, ns per operation, median of {args.repeats} interleaved repeats")
    print()
    print("| case | native build | zig-linked manylinux2014 wheel | zig / native |")
    print("|---|---|---|---|")
    for case, ns in native.items():
        if case in zig:
            print(f"| {case} | {ns:.1f} | {zig[case]:.1f} | {zig[case] / ns:.2f}x |")


if __name__ == "__main__":
    main()
