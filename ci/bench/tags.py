"""Tags on the local cache: invalidating a tag by epoch against deleting its
entries, measured side by side in one process (issue 23).

    python -m ci.bench.tags [--entries 100000] [--rounds 7] [--out ci/results]

For a tag on ``--entries`` entries, the median over ``--rounds`` rounds (the
cache filled again, untimed, before each) of:

- ``invalidate_tags(tag)``: what this package does (each tag's epoch advances;
  reads skip the entries, and the next ``len()`` sweeps them out);
- that sweep: the first ``len()`` after the invalidation (a walk of the cache);
- ``remove_many(keys)``: the least a deleting design would do on each
  invalidation (it would also keep an index from each tag to its keys, on
  every write and eviction, which is not counted here).

With ``--out``, writes ``tags.md`` there (``ci/readme_results.py`` copies it
into the README).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from moka_py import Moka


def _timed(fill: Callable[[], Moka[int, int]], op: Callable[[Moka[int, int]], object]) -> float:
    cache = fill()
    start = time.perf_counter()
    op(cache)
    return time.perf_counter() - start


def measure(entries: int, rounds: int) -> dict[str, float]:
    keys = list(range(entries))

    def fill(tagged: bool) -> Callable[[], Moka[int, int]]:
        def make() -> Moka[int, int]:
            cache: Moka[int, int] = Moka(2 * entries)
            cache.set_many(((k, k) for k in keys), tags=["t"] if tagged else None)
            cache.run_pending_tasks()
            return cache

        return make

    def invalidated() -> Moka[int, int]:
        cache = fill(True)()
        cache.invalidate_tags("t")
        return cache

    ops: dict[str, tuple[Callable[[], Moka[int, int]], Callable[[Moka[int, int]], object]]] = {
        "invalidate_tags": (fill(True), lambda c: c.invalidate_tags("t")),
        "sweep": (invalidated, len),
        "remove_many": (fill(False), lambda c: c.remove_many(keys)),
    }
    samples: dict[str, list[float]] = {name: [] for name in ops}
    for _ in range(rounds):
        # Interleaved, so that the machine's load falls on all alike.
        for name, (make, op) in ops.items():
            samples[name].append(_timed(make, op))
    return {name: statistics.median(s) for name, s in samples.items()}


def report(entries: int, rounds: int, medians: dict[str, float]) -> str:
    base = medians["remove_many"]

    def row(name: str, what: str) -> str:
        m = medians[name]
        return f"| {what} | {m * 1e3:,.3f} ms | {m / base:.3g}x |"

    return "\n".join(
        [
            f"#### Tags: a tag on {entries:,} entries, invalidated (median of {rounds})",
            "",
            "`python -m ci.bench.tags --out ci/results`, one process, interleaved rounds.",
            "",
            "| operation | median | vs deleting the entries |",
            "|---|---|---|",
            row("invalidate_tags", "`invalidate_tags(tag)` (epoch: what moka_py does)"),
            row("sweep", "the next `len()`, which sweeps them out"),
            row("remove_many", "`remove_many(keys)` (the least deleting would cost)"),
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m ci.bench.tags", description=__doc__)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    text = report(args.entries, args.rounds, measure(args.entries, args.rounds))
    print(text)
    if args.out is not None:
        (args.out / "tags.md").write_text(text)


if __name__ == "__main__":
    main()
