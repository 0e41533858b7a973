"""A ``prometheus_client`` collector of moka_py caches
(``pip install "moka-py[prometheus]"``).

``MokaCollector`` reads the cumulative statistics of the caches added to it
when Prometheus scrapes (nothing is recorded on a cache's hot path), and
makes the series the OpenTelemetry Prometheus exporter makes of
``moka_py.otel``: the same names (dots made underscores, ``_seconds`` for a
time, ``_total`` for a counter) and labels (``cache_name``, ``cache_result``,
...), so that one dashboard reads either path. Caches are held by weak
reference.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

try:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ModuleNotFoundError as err:  # pragma: no cover - tested in a venv without it
    raise ModuleNotFoundError(
        f'moka_py.prometheus needs prometheus-client: pip install "moka-py[prometheus]" ({err})',
        name=err.name,
    ) from err

from . import _metrics

__all__ = ["MokaCollector"]


def _prometheus_name(family: _metrics.Family) -> str:
    name = family.name.replace(".", "_")
    if family.unit == "s":
        name += "_seconds"
    return name


def _label(attribute: str) -> str:
    return attribute.replace(".", "_")


class MokaCollector(Collector):
    """Register it once (``prometheus_client.REGISTRY.register(collector)``),
    then :meth:`add` caches to it: a ``Moka`` or ``@cached`` function made
    with ``stats=True``, a ``TieredCache``/``AsyncTieredCache`` made with
    ``stats=True``, or a Django ``MokaCache`` with ``OPTIONS={"STATS": True}``."""

    def __init__(self) -> None:
        self._caches = _metrics.Registered()

    def add(self, name: str, obj: Any) -> None:
        """Reports ``obj`` with the label ``cache_name=name``.

        :raises TypeError: ``obj`` is none of the kinds above.
        :raises ValueError: its statistics are off, or ``name`` is taken by a
            cache still alive."""
        self._caches.add(name, obj)

    def remove(self, name: str) -> None:
        """Stops reporting the cache added as ``name`` (none: nothing happens)."""
        self._caches.remove(name)

    def collect(self) -> Iterator[Metric]:
        by_family: dict[_metrics.Family, list[tuple[dict[str, str], float]]] = {}
        for name, (family, attrs, value) in self._caches.samples():
            by_family.setdefault(family, []).append(({"cache.name": name, **attrs}, value))
        for family in _metrics.FAMILIES:
            samples = by_family.get(family)
            if not samples:
                continue
            labels = [_label(a) for a in samples[0][0]]
            metric: CounterMetricFamily | GaugeMetricFamily = (
                CounterMetricFamily(_prometheus_name(family), family.description, labels=labels)
                if family.kind == "counter"
                else GaugeMetricFamily(_prometheus_name(family), family.description, labels=labels)
            )
            for attrs, value in samples:
                metric.add_metric(list(attrs.values()), value)
            yield metric
