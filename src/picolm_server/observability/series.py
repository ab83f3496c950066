"""The series the server counts for Prometheus, held without prometheus_client.

Counters, gauges and histograms with labels, kept as prometheus_client keeps them (each
labelled child made on first use, with its creation time; a histogram's per-bucket
counts and sum), so that :mod:`.exposition` writes exactly what
prometheus_client's own metric classes would. prometheus_client itself is imported with
the first scrape (about 1.3 MiB of idle memory and a tenth of a second of start-up
otherwise; docs/benchmarks.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, Literal, TypeVar

# One sample of a child: the suffix after the family's name, labels of its own (a
# histogram bucket's "le"), the value.
Sample = tuple[str, dict[str, str], float]
Kind = Literal["counter", "gauge", "histogram"]


def go_float(value: float) -> str:
    """A float as Prometheus' Go code writes it (prometheus_client's floatToGoString):
    a histogram bucket's ``le`` label."""
    if value == float("inf"):
        return "+Inf"
    if value == float("-inf"):
        return "-Inf"
    if value != value:
        return "NaN"
    text = repr(float(value))
    dot = text.find(".")
    if value > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+0{dot - 1}"
    return text


class CounterChild:
    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.value += amount

    def samples(self) -> Iterator[Sample]:
        yield "_total", {}, self.value
        yield "_created", {}, self.created


class GaugeChild:
    __slots__ = ("_function", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self._function: Callable[[], float] | None = None

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)

    def set_function(self, function: Callable[[], float]) -> None:
        """Read the value from ``function`` at each scrape."""
        self._function = function

    def samples(self) -> Iterator[Sample]:
        yield "", {}, float(self._function() if self._function is not None else self.value)


class HistogramChild:
    __slots__ = ("_bounds", "_counts", "created", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = bounds
        self._counts = [0.0] * len(bounds)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        self.sum += amount
        for index, bound in enumerate(self._bounds):
            if amount <= bound:
                self._counts[index] += 1
                break

    def samples(self) -> Iterator[Sample]:
        total = 0.0
        for bound, count in zip(self._bounds, self._counts, strict=True):
            total += count
            yield "_bucket", {"le": go_float(bound)}, total
        yield "_count", {}, total
        if self._bounds[0] >= 0:
            yield "_sum", {}, self.sum
        yield "_created", {}, self.created


ChildT = TypeVar("ChildT", CounterChild, GaugeChild, HistogramChild)


class Family(Generic[ChildT]):
    """A metric with labels: its children by label values, in the order first used."""

    def __init__(
        self,
        kind: Kind,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        make_child: Callable[[], ChildT],
    ) -> None:
        self.kind = kind
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.children: dict[tuple[str, ...], ChildT] = {}
        self._make_child: Callable[[], ChildT] = make_child

    def labels(self, *values: str) -> ChildT:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {values}")
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = self._make_child()
        return child


class Registry:
    """The families of one app, in the order they were declared (the exposition's)."""

    def __init__(self) -> None:
        self.families: list[Family[Any]] = []

    def _add(self, family: Family[ChildT]) -> Family[ChildT]:
        self.families.append(family)
        return family

    def counter(
        self, name: str, documentation: str, labelnames: Sequence[str]
    ) -> Family[CounterChild]:
        return self._add(Family("counter", name, documentation, labelnames, CounterChild))

    def gauge(self, name: str, documentation: str, labelnames: Sequence[str]) -> Family[GaugeChild]:
        return self._add(Family("gauge", name, documentation, labelnames, GaugeChild))

    def histogram(
        self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]
    ) -> Family[HistogramChild]:
        bounds = [float(bound) for bound in buckets]
        if bounds[-1] != float("inf"):
            bounds.append(float("inf"))
        return self._add(
            Family("histogram", name, documentation, labelnames, lambda: HistogramChild(bounds))
        )
