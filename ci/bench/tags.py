"""Tags on the local cache: invalidating a tag by epoch against deleting its
entries, measured side by side in one process (issue 23); and on the Redis
tier, ``invalidate_tags`` beside a single key's invalidation.

    python -m ci.bench.tags [--entries 100000] [--rounds 7] [--no-tier] [--out ci/results]

For a tag on ``--entries`` entries, the median over ``--rounds`` rounds (the
cache filled again, untimed, before each) of:

- ``invalidate_tags(tag)``: what this package does (each tag's epoch advances;
  reads skip the entries, and the next ``len()`` sweeps them out);
- that sweep: the first ``len()`` after the invalidation (a walk of the cache);
- ``remove_many(keys)``: the least a deleting design would do on each
  invalidation (it would also keep an index from each tag to its keys, on
  every write and eviction, which is not counted here).

The tier part (unless ``--no-tier``; it needs ``redis-server``, started on a
free loopback port) fills a ``TieredCache`` with ``--entries`` values of one
tag, read by a second cache of the namespace (its own local tier and feed:
what another process holds), and times, median over the rounds (the values
written again, untimed, before each):

- ``invalidate_tags(tag)``: the call, which gives the tag a new token in Redis
  and publishes one message (counted by a subscriber of the channel);
- the delay until the second cache no longer holds a local copy of one of
  those values (the message's way through Redis and its feed);
- ``remove(key)`` of one key, and the same delay, beside them.

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


def _gone(local: Moka[int, int], key: int, since: float) -> float:
    """Seconds from ``since`` until ``key`` is no longer in ``local`` (a poll
    every 50 µs, up to 10 s)."""
    deadline = since + 10
    while key in local:
        if time.perf_counter() > deadline:
            raise SystemExit("the second cache kept its copy for 10 s")
        time.sleep(0.00005)
    return time.perf_counter() - since


def measure_tier(entries: int, rounds: int) -> dict[str, float]:
    import redis

    from ci.bench.tier import Server
    from moka_py.redis import JSON, TieredCache

    keys = list(range(entries))
    with Server() as server:
        client = redis.Redis(port=server.port)
        a: TieredCache[int, int] = TieredCache(
            client, namespace="bench", serializer=JSON, capacity=2 * entries
        )
        b: TieredCache[int, int] = TieredCache(
            client, namespace="bench", serializer=JSON, capacity=2 * entries
        )
        listener = client.pubsub()
        listener.subscribe("bench:inv")
        listener.get_message(timeout=5)
        if not (a.wait_ready(10) and b.wait_ready(10)):
            raise SystemExit("TieredCache: the invalidation feed did not come up")

        def drain() -> int:
            count = 0
            while listener.get_message(timeout=0.2) is not None:
                count += 1
            return count

        samples: dict[str, list[float]] = {
            "tier_invalidate_tags": [],
            "tier_tags_delay": [],
            "tier_remove": [],
            "tier_remove_delay": [],
            "tier_tags_messages": [],
        }
        for _ in range(rounds):
            for start in range(0, entries, 10_000):
                a.set_many({k: k for k in keys[start : start + 10_000]}, tags=["t"])
            time.sleep(0.2)  # (the writes' messages reach b before it reads)
            for start in range(0, entries, 10_000):
                b.get_many(keys[start : start + 10_000])
            if not all(k in b.local for k in keys):
                raise SystemExit("the second cache did not keep every value")
            drain()
            t0 = time.perf_counter()
            a.invalidate_tags("t")
            t1 = time.perf_counter()
            samples["tier_tags_delay"].append(_gone(b.local, keys[-1], t1))
            samples["tier_invalidate_tags"].append(t1 - t0)
            samples["tier_tags_messages"].append(drain())
            # One key: set, read by b, removed by a.
            a.set(-1, -1)
            time.sleep(0.05)
            b.get(-1)
            t0 = time.perf_counter()
            a.remove(-1)
            t1 = time.perf_counter()
            samples["tier_remove_delay"].append(_gone(b.local, -1, t1))
            samples["tier_remove"].append(t1 - t0)
            drain()
        listener.close()
        a.close()
        b.close()
        client.close()
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
            *(_tier_rows(entries, medians) if "tier_remove" in medians else []),
        ]
    )


def _tier_rows(entries: int, medians: dict[str, float]) -> list[str]:
    def ms(name: str) -> str:
        return f"{medians[name] * 1e3:,.3f} ms"

    return [
        "On the Redis tier (`TieredCache`, a local redis-server; a second cache of the "
        "namespace holds a local copy of every value; median of the same rounds):",
        "",
        "| invalidation | the call | until the other cache's copy is gone | messages |",
        "|---|---|---|---|",
        f"| `invalidate_tags(tag)`, the tag on {entries:,} values | "
        f"{ms('tier_invalidate_tags')} | {ms('tier_tags_delay')} | "
        f"{medians['tier_tags_messages']:g} |",
        f"| `remove(key)`, one key | {ms('tier_remove')} | {ms('tier_remove_delay')} | 1 |",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m ci.bench.tags", description=__doc__)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-tier", action="store_true", help="the local cache only")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    medians = measure(args.entries, args.rounds)
    if not args.no_tier:
        medians.update(measure_tier(args.entries, args.rounds))
    text = report(args.entries, args.rounds, medians)
    print(text)
    if args.out is not None:
        (args.out / "tags.md").write_text(text)


if __name__ == "__main__":
    main()
