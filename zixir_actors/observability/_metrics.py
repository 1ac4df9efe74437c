"""Prometheus metrics: `metrics.counter/gauge/histogram/summary` on one process-wide registry.

Example:
    >>> from zixir_actors.observability import metrics
    >>> steps = metrics.counter("zixir_doc_steps_total", "Steps run.", labels=("status",))
    >>> ok = steps.labels("ok")          # bind the label child once, off the hot path
    >>> ok.inc()
    >>> metrics.counter("zixir_doc_steps_total", "Steps run.", labels=("status",)) is steps
    True

The metrics are plain prometheus-client objects on `metrics.registry`, a
`CollectorRegistry` created with the `Metrics` object: they work whether or
not the runtime (and its `MetricsRegistry` actor) is started, and updating
one never involves an actor.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from zixir_actors.errors import ConfigError, MetricConflictError

__all__ = [
    "CONTENT_TYPE_LATEST",
    "DEFAULT_BUCKETS",
    "MetricKind",
    "Metrics",
    "metrics",
]

DEFAULT_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, float("inf"),
)
"""Histogram buckets in seconds for AI work: 1 ms up to 10 minutes.

prometheus-client's defaults stop at 10 s, where a model call or a workflow
step has barely started; these keep resolution at both ends.
"""

MetricKind = Literal["counter", "gauge", "histogram", "summary"]

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_CLASSES: dict[str, type[Any]] = {"counter": Counter, "gauge": Gauge,
                                  "histogram": Histogram, "summary": Summary}
M = TypeVar("M")


@dataclass(frozen=True, slots=True)
class _Entry:
    kind: MetricKind
    labels: tuple[str, ...]
    buckets: tuple[float, ...] | None
    metric: Any

    def describe(self) -> str:
        text = f"{self.kind}(labels={self.labels!r}"
        if self.buckets is not None and self.buckets != DEFAULT_BUCKETS:
            text += f", buckets={self.buckets!r}"
        return text + ")"


class Metrics:
    """A set of Prometheus metrics on one `CollectorRegistry`, created idempotently by name.

    Example:
        >>> m = Metrics()                       # a private registry, e.g. for a test
        >>> latency = m.histogram("zixir_doc_call_seconds", "Call latency.")
        >>> latency.observe(0.42)
        >>> b"zixir_doc_call_seconds_bucket" in m.exposition()
        True

    Args:
        registry: the registry to create metrics on; default a new one.

    The same name always gives the same metric object. A name reused with
    another type, label names or buckets raises `MetricConflictError`, as
    does a name that collides with a series of an existing metric.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._registry = registry if registry is not None else CollectorRegistry()
        self._entries: dict[str, _Entry] = {}
        # (kind, name as given, labels as given) -> metric, for metrics already
        # created: repeated lookups skip validation (histograms: default buckets).
        self._fast: dict[tuple[Any, ...], Any] = {}
        self._lock = threading.Lock()
        self._before_collect: tuple[Callable[[], object], ...] = ()
        # Registered first, so it runs before every metric is read: lets
        # deferred updates (the actor message hook) land before a scrape.
        self._registry.register(_BeforeCollect(self))

    def _before_collect_add(self, fn: Callable[[], object]) -> None:
        with self._lock:
            self._before_collect = (*self._before_collect, fn)

    def _before_collect_remove(self, fn: Callable[[], object]) -> None:
        with self._lock:
            self._before_collect = tuple(f for f in self._before_collect if f != fn)

    @property
    def registry(self) -> CollectorRegistry:
        """The `CollectorRegistry` that `serve_metrics` and `exposition()` read."""
        return self._registry

    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
        """A counter (only goes up). Prometheus names it `<name>` with `_total` appended
        if missing; pass the `_total` name or not, both give the same counter.

        Raises:
            MetricConflictError: `name` is registered with another type or labels.
            ConfigError: `name` or a label name is not a valid Prometheus name.
        """
        try:
            return cast(Counter, self._fast[("counter", name, labels)])
        except (KeyError, TypeError):  # TypeError: unhashable labels (a list)
            return cast(Counter, self._get("counter", name, doc, labels, None))

    def gauge(self, name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
        """A gauge (goes up and down: queue depth, memory).

        Raises:
            MetricConflictError: `name` is registered with another type or labels.
            ConfigError: `name` or a label name is not a valid Prometheus name.
        """
        try:
            return cast(Gauge, self._fast[("gauge", name, labels)])
        except (KeyError, TypeError):
            return cast(Gauge, self._get("gauge", name, doc, labels, None))

    def histogram(self, name: str, doc: str, labels: Sequence[str] = (),
                  buckets: Sequence[float] = DEFAULT_BUCKETS) -> Histogram:
        """A histogram of durations or sizes, bucketed by `buckets` (default `DEFAULT_BUCKETS`).

        Raises:
            MetricConflictError: `name` is registered with another type,
                labels or buckets.
            ConfigError: a bad name, label name or bucket list.
        """
        if buckets is DEFAULT_BUCKETS:
            try:
                return cast(Histogram, self._fast[("histogram", name, labels)])
            except (KeyError, TypeError):
                pass
        bounds = tuple(float(b) for b in buckets)
        if not bounds or list(bounds) != sorted(set(bounds)):
            raise ConfigError("buckets", buckets, "must be a non-empty increasing sequence")
        if bounds[-1] != float("inf"):
            bounds = (*bounds, float("inf"))
        return cast(Histogram, self._get("histogram", name, doc, labels, bounds))

    def summary(self, name: str, doc: str, labels: Sequence[str] = ()) -> Summary:
        """A summary (count and sum of observations).

        Raises:
            MetricConflictError: `name` is registered with another type or labels.
            ConfigError: `name` or a label name is not a valid Prometheus name.
        """
        try:
            return cast(Summary, self._fast[("summary", name, labels)])
        except (KeyError, TypeError):
            return cast(Summary, self._get("summary", name, doc, labels, None))

    def get(self, name: str) -> Any:
        """The metric registered as `name` (counters also answer to `<name>_total`), or None."""
        entry = self._entries.get(name) or self._entries.get(_counter_key(name))
        return entry.metric if entry is not None else None

    def names(self) -> list[str]:
        """The names of the metrics created through this object, sorted."""
        return sorted(self._entries)

    def unregister(self, name: str) -> None:
        """Remove a metric; creating it again gives a fresh one. Unknown names are ignored."""
        with self._lock:
            entry = self._entries.pop(name, None) or self._entries.pop(_counter_key(name), None)
            if entry is not None:
                self._registry.unregister(entry.metric)
                self._fast = {k: v for k, v in self._fast.items() if v is not entry.metric}

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format (what `/metrics` serves)."""
        return generate_latest(self._registry)

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """The current value of one sample (`"zixir_actor_restarts_total"`), or None.

        Example:
            >>> m = Metrics()
            >>> m.counter("zixir_doc_runs_total", "Runs.").inc(2)
            >>> m.sample("zixir_doc_runs_total")
            2.0
        """
        value: float | None = self._registry.get_sample_value(name, labels or {})
        return value

    def _get(self, kind: MetricKind, name: str, doc: str, labels: Sequence[str],
             buckets: tuple[float, ...] | None) -> Any:
        key = _counter_key(name) if kind == "counter" else name
        entry = self._entries.get(key)
        if entry is not None and entry.kind == kind and (
                entry.labels is labels or entry.labels == tuple(labels)) and (
                buckets is None or entry.buckets == buckets):
            return entry.metric
        label_names = _check(kind, name, labels)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = _Entry(kind, label_names, buckets,
                               self._create(kind, key, name, doc, label_names, buckets))
                self._entries[key] = entry
        requested = _Entry(kind, label_names, buckets, None)
        if (entry.kind, entry.labels, entry.buckets) != (kind, label_names, buckets):
            raise MetricConflictError(name, entry.describe(), requested.describe())
        if buckets is None or buckets == DEFAULT_BUCKETS:
            self._fast[(kind, name, label_names)] = entry.metric
        return entry.metric

    def _create(self, kind: MetricKind, key: str, name: str, doc: str,
                labels: tuple[str, ...], buckets: tuple[float, ...] | None) -> Any:
        options: dict[str, Any] = {"registry": self._registry}
        if buckets is not None:
            options["buckets"] = buckets
        try:
            return _CLASSES[kind](key, doc or name, labels, **options)
        except ValueError as exc:
            if "Duplicated timeseries" in str(exc):
                raise MetricConflictError(
                    name, "a series of another metric",
                    _Entry(kind, labels, buckets, None).describe()) from exc
            raise ConfigError("name", name, str(exc)) from exc


class _BeforeCollect:
    """A collector with no metrics: runs `Metrics._before_collect` on each collection."""

    def __init__(self, owner: Metrics) -> None:
        self._owner = owner

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> list[Any]:
        for fn in self._owner._before_collect:
            fn()
        return []


def _counter_key(name: str) -> str:
    return name[:-6] if name.endswith("_total") else name


def _check(kind: MetricKind, name: str, labels: Sequence[str]) -> tuple[str, ...]:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError("name", name, "not a valid Prometheus metric name")
    if isinstance(labels, str):
        raise ConfigError("labels", labels, "give a sequence of label names, not one string")
    label_names = tuple(labels)
    for label in label_names:
        if not isinstance(label, str) or not _LABEL.match(label) or label.startswith("__"):
            raise ConfigError("labels", labels, f"{label!r} is not a valid label name")
    if len(set(label_names)) != len(label_names):
        raise ConfigError("labels", labels, "label names repeat")
    if kind == "histogram" and "le" in label_names:
        raise ConfigError("labels", labels, "'le' is reserved for histogram buckets")
    if kind == "summary" and "quantile" in label_names:
        raise ConfigError("labels", labels, "'quantile' is reserved for summaries")
    return label_names


metrics = Metrics()
"""The process-wide metrics: what `serve_metrics` and the `MetricsRegistry` actor expose."""
