"""``GET /metrics``'s text: the server's series (:mod:`.series`) and the process's,
written by prometheus_client exactly as its own metric classes would be.

Imported with the first scrape. Each :class:`Exposition` has a registry of its own (never
prometheus_client's global default one), so that several apps in one process keep
separate counts.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Metric, ProcessCollector, generate_latest
from prometheus_client.registry import Collector

from .series import Family


def created_series() -> bool:
    """Whether ``_created`` series are written: prometheus_client's own rule (its
    ``PROMETHEUS_DISABLE_CREATED_SERIES`` environment variable turns them off)."""
    setting = os.environ.get("PROMETHEUS_DISABLE_CREATED_SERIES", "False")
    return setting.lower() not in ("true", "1", "t")


class _SeriesCollector(Collector):
    """The server's families, with the samples prometheus_client's Counter, Gauge and
    Histogram give for the same children, in the same order."""

    def __init__(self, families: Sequence[Family[Any]]) -> None:
        self._families = families
        self._created = created_series()

    def collect(self) -> Iterable[Metric]:
        for family in self._families:
            metric = Metric(family.name, family.documentation, family.kind)
            for values, child in family.children.items():
                labels = dict(zip(family.labelnames, values, strict=True))
                for suffix, own_labels, value in child.samples():
                    if suffix == "_created" and not self._created:
                        continue
                    metric.add_sample(family.name + suffix, {**labels, **own_labels}, value)
            yield metric


class Exposition:
    """The registry of one app's metrics: the process collector first, as before."""

    def __init__(self, families: Sequence[Family[Any]]) -> None:
        self._registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self._registry)
        self._registry.register(_SeriesCollector(families))

    def text(self) -> bytes:
        return generate_latest(self._registry)
