"""The metrics that ``moka_py.otel`` and ``moka_py.prometheus`` export: one
table of families and one reader, so that both paths make the same series.

Everything is read from the cumulative statistics (``stats(cumulative=True)``)
and the entry count as last counted (``_approx_count()``: no housekeeping, so
no eviction listener runs in a collector's thread) when a collector asks:
nothing is recorded on a cache's hot path. Names follow
OpenTelemetry's rules (there is no semantic convention for caches yet, so they
are prefixed ``moka.``): a counter's name is what it counts, without
``_total`` or a unit (an exporter adds them), and attributes are
``cache.name`` plus one per breakdown (``cache.result``, ...).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ._moka_py import Moka

__all__ = ["FAMILIES", "Family", "Registered", "Sample", "reader"]


@dataclass(frozen=True)
class Family:
    """One metric: ``kind`` "counter" (only grows) or "gauge"."""

    name: str
    kind: Literal["counter", "gauge"]
    unit: str
    description: str


_F = Family
REQUESTS = _F("moka.cache.requests", "counter", "{request}", "Reads that asked for a value")
LOADS = _F("moka.cache.loads", "counter", "{load}", "Initializer calls, by result")
LOAD_TIME = _F("moka.cache.load.time", "counter", "s", "Time spent in initializer calls")
EVICTIONS = _F("moka.cache.evictions", "counter", "{eviction}", "Entries evicted, by reason")
STALE = _F(
    "moka.cache.stale_served",
    "counter",
    "{load}",
    "Failed loads answered with an expired value (stale_if_error)",
)
ENTRIES = _F("moka.cache.entry.count", "gauge", "{entry}", "Entries in the cache")
T_REQUESTS = _F("moka.tiered.requests", "counter", "{request}", "Reads of a tiered cache")
T_LOADS = _F("moka.tiered.loads", "counter", "{load}", "Initializer calls, by result")
T_WAITS = _F("moka.tiered.waits", "counter", "{wait}", "Calls that waited for another's load")
T_INVALIDATIONS = _F(
    "moka.tiered.invalidations", "counter", "{invalidation}", "Invalidations received"
)
T_FEED_LOSSES = _F("moka.tiered.feed.losses", "counter", "{loss}", "Invalidation feed losses")
T_REDIS_ERRORS = _F("moka.tiered.redis.errors", "counter", "{error}", "Redis calls that failed")
T_REFUSED = _F("moka.tiered.refused", "counter", "{refusal}", "Payloads and messages refused")
T_FEED_UP = _F("moka.tiered.feed.up", "gauge", "", "1 while the invalidation feed is up")

FAMILIES = (
    REQUESTS,
    LOADS,
    LOAD_TIME,
    EVICTIONS,
    STALE,
    ENTRIES,
    T_REQUESTS,
    T_LOADS,
    T_WAITS,
    T_INVALIDATIONS,
    T_FEED_LOSSES,
    T_REDIS_ERRORS,
    T_REFUSED,
    T_FEED_UP,
)

# (family, attributes without cache.name, value)
Sample = tuple[Family, dict[str, str], float]


def _of_moka(cache: Moka[Any, Any]) -> list[Sample]:
    s = cache.stats(cumulative=True)
    return [
        (REQUESTS, {"cache.result": "hit"}, s.hits),
        (REQUESTS, {"cache.result": "miss"}, s.misses),
        (LOADS, {"cache.load.result": "success"}, s.loads),
        (LOADS, {"cache.load.result": "failure"}, s.load_failures),
        (LOAD_TIME, {}, s.load_time),
        (EVICTIONS, {"cache.eviction.reason": "size"}, s.evictions),
        (EVICTIONS, {"cache.eviction.reason": "expired"}, s.expirations),
        (STALE, {}, s.stale_served),
        (ENTRIES, {}, cache._approx_count()),
    ]


def _of_tiered(cache: Any) -> list[Sample]:
    s = cache.stats(cumulative=True)
    return [
        (T_REQUESTS, {"cache.result": "local_hit"}, s.local_hits),
        (T_REQUESTS, {"cache.result": "remote_hit"}, s.remote_hits),
        (T_REQUESTS, {"cache.result": "miss"}, s.misses),
        (T_REQUESTS, {"cache.result": "stale"}, s.stale_served),
        (T_LOADS, {"cache.load.result": "success"}, s.loads),
        (T_LOADS, {"cache.load.result": "failure"}, s.load_failures),
        (T_WAITS, {}, s.waits),
        (T_INVALIDATIONS, {}, s.invalidations),
        (T_FEED_LOSSES, {}, s.feed_losses),
        (T_REDIS_ERRORS, {}, s.redis_errors),
        (T_REFUSED, {}, s.rejected),
        (T_FEED_UP, {}, 1 if cache.feed_up else 0),
        (ENTRIES, {}, cache.local._approx_count()),
    ]


def reader(obj: Any) -> tuple[Any, Callable[[Any], list[Sample]]]:
    """What to hold a weak reference to for ``obj``, and how to read that
    object's samples (a function of it, so that nothing else is kept): a
    Django backend object is one per thread, so its store's ``Moka`` is held.

    :raises TypeError: ``obj`` is none of a ``Moka``, a ``@cached`` function,
        a ``TieredCache``/``AsyncTieredCache`` or a Django ``MokaCache``.
    :raises ValueError: its statistics are off."""
    inner = getattr(obj, "cache", None)
    backend = getattr(obj, "_cache", None)
    read: Callable[[Any], list[Sample]]
    if isinstance(obj, Moka):
        target, read, probe = obj, _of_moka, obj
    elif isinstance(inner, Moka) and callable(obj):
        target, read, probe = obj, (lambda f: _of_moka(f.cache)), inner
    elif hasattr(obj, "feed_up") and hasattr(obj, "local"):
        target, read, probe = obj, _of_tiered, obj
    elif isinstance(backend, Moka) and hasattr(obj, "get_backend_timeout"):
        target, read, probe = backend, _of_moka, backend
    else:
        raise TypeError(
            "expected a Moka, a @cached function, a TieredCache, an AsyncTieredCache or "
            f"a Django MokaCache, got {type(obj).__name__}"
        )
    probe.stats(cumulative=True)  # ValueError if its statistics are off
    return target, read


class Registered:
    """Caches by name, held by weak reference, each with its reader (one such
    table per meter provider, one per ``MokaCollector``)."""

    def __init__(self) -> None:
        # Held for dict operations only: no cache is read under it.
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[weakref.ref[Any], Callable[[Any], list[Sample]]]] = {}

    def add(self, name: str, obj: Any) -> weakref.ref[Any]:
        """Registers ``obj`` (see :func:`reader`); returns the reference that
        :meth:`remove` may name.

        :raises ValueError: ``name`` is taken by a cache still alive."""
        target, read = reader(obj)
        ref = weakref.ref(target)
        with self._lock:
            entry = self._entries.get(name)
            if entry is not None and entry[0]() is not None:
                raise ValueError(f"a cache is already registered as {name!r}")
            self._entries[name] = (ref, read)
        return ref

    def remove(self, name: str, ref: weakref.ref[Any] | None = None) -> None:
        """Forgets ``name`` (only if it is still ``ref``'s, when given)."""
        with self._lock:
            entry = self._entries.get(name)
            if entry is not None and (ref is None or entry[0] is ref):
                del self._entries[name]

    def samples(self) -> list[tuple[str, Sample]]:
        """Every live cache's samples, by name; a collected cache is forgotten."""
        with self._lock:
            entries = list(self._entries.items())
        out: list[tuple[str, Sample]] = []
        for name, (ref, read) in entries:
            obj = ref()
            if obj is None:
                self.remove(name, ref)
                continue
            out.extend((name, sample) for sample in read(obj))
        return out
