"""OpenTelemetry metrics of moka_py caches (``pip install "moka-py[otel]"``,
which needs ``opentelemetry-api`` only; the application brings the SDK).

``instrument(obj, name)`` registers a cache under ``name``; the meter
``moka_py`` then reports it through observable instruments, whose callbacks
read its cumulative statistics when the SDK collects: registering costs
nothing per cache operation. A registration holds its cache by weak
reference: a cache that is garbage collected stops being reported.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

try:
    from opentelemetry import metrics
    from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation
except ModuleNotFoundError as err:  # pragma: no cover - tested in a venv without it
    raise ModuleNotFoundError(
        f'moka_py.otel needs opentelemetry-api: pip install "moka-py[otel]" ({err})', name=err.name
    ) from err

from . import _metrics
from ._moka_py import VERSION

__all__ = ["Registration", "instrument"]

# How long the observations read for one collection wait for their callbacks.
FRESH = 1.0


class Registration:
    """A cache registered by :func:`instrument`; :meth:`unregister` stops
    reporting it (and frees its name)."""

    __slots__ = ("_name", "_ref", "_registry")

    def __init__(self, registry: _Registry, name: str, ref: weakref.ref[Any]) -> None:
        self._registry = registry
        self._name = name
        self._ref = ref

    @property
    def name(self) -> str:
        return self._name

    def unregister(self) -> None:
        """Stops reporting the cache; a second call does nothing."""
        self._registry.caches.remove(self._name, self._ref)


class _Registry:
    """The caches registered with one meter provider, and its instruments
    (made once: OpenTelemetry cannot take an instrument back)."""

    def __init__(self, meter: Meter) -> None:
        self.caches = _metrics.Registered()
        # One collection calls every instrument's callback: the first reads
        # every cache once and leaves the other families' observations here,
        # each taken by its own callback. A callback that finds its family
        # taken (a new collection), or left over for over FRESH seconds (a
        # collection that skipped it), reads again.
        self._pending: dict[_metrics.Family, list[Observation]] = {}
        self._pending_at = 0.0
        self._pending_lock = threading.Lock()  # dict operations only
        for family in _metrics.FAMILIES:
            make = (
                meter.create_observable_counter
                if family.kind == "counter"
                else meter.create_observable_gauge
            )
            make(
                family.name,
                callbacks=[self._callback(family)],
                unit=family.unit,
                description=family.description,
            )

    def _callback(
        self, family: _metrics.Family
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            with self._pending_lock:
                mine = self._pending.pop(family, None)
                fresh = time.monotonic() - self._pending_at < FRESH
            if mine is not None and fresh:
                return mine
            # Read outside any lock: reading a cache runs no Python code of
            # ours under a lock.
            by_family: dict[_metrics.Family, list[Observation]] = {f: [] for f in _metrics.FAMILIES}
            for name, (fam, attrs, value) in self.caches.samples():
                by_family[fam].append(Observation(value, {"cache.name": name, **attrs}))
            mine = by_family.pop(family)
            with self._pending_lock:
                self._pending, self._pending_at = by_family, time.monotonic()
            return mine

        return observe


_registries: dict[int, tuple[MeterProvider, _Registry]] = {}
_registries_lock = threading.Lock()


def instrument(obj: Any, name: str, *, meter_provider: MeterProvider | None = None) -> Registration:
    """Reports ``obj`` under ``name`` (the attribute ``cache.name``) on the meter
    ``moka_py`` of ``meter_provider`` (default: the global one).

    ``obj``: a ``Moka`` or a ``@cached`` function made with ``stats=True`` (the
    ``moka.cache.*`` metrics), a ``TieredCache``/``AsyncTieredCache`` made with
    ``stats=True`` (``moka.tiered.*``, and ``moka.cache.entry.count`` of its
    local tier), or a Django ``MokaCache`` with ``OPTIONS={"STATS": True}``.

    :raises TypeError: ``obj`` is none of those.
    :raises ValueError: its statistics are off, or ``name`` is taken (by a
        cache still alive) on this meter provider."""
    _metrics.reader(obj)  # TypeError or ValueError before a meter is made
    provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
    with _registries_lock:
        found = _registries.get(id(provider))
        if found is None or found[0] is not provider:
            meter = provider.get_meter("moka_py", VERSION)
            found = _registries[id(provider)] = (provider, _Registry(meter))
    registry = found[1]
    return Registration(registry, name, registry.caches.add(name, obj))
