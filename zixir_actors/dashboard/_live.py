"""Live series for the metrics page, sampled from this process's metrics registry."""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["HISTORY", "MetricsHistory", "Point", "metric_total"]

HISTORY = 300
"""Samples kept (ten minutes at one every two seconds)."""


def _families(registry: Any) -> Iterable[Any]:
    try:
        return list(registry.collect())
    except Exception:  # a collector failing must not take the page down
        return []


def metric_total(name: str, registry: Any = None) -> float:
    """The sum of a metric's samples over every label set (0 when absent)."""
    if registry is None:
        from zixir_actors.observability import metrics

        registry = metrics.registry
    total = 0.0
    for family in _families(registry):
        for sample in family.samples:
            if sample.name == name:
                total += sample.value
    return total


@dataclass(frozen=True, slots=True)
class Point:
    """One sample: cumulative counters and the step latency histogram's buckets."""

    time: float
    steps: float
    runs: float
    restarts: float
    retries: float
    dead_letters: float
    rss: float
    threads: float
    buckets: tuple[tuple[float, float], ...]  # (le, cumulative count)


class MetricsHistory:
    """Samples the registry every `interval` seconds in a thread, keeps the last `HISTORY`."""

    def __init__(self, *, interval: float = 2.0, registry: Any = None) -> None:
        self.interval = interval
        self.registry = registry
        self.points: deque[Point] = deque(maxlen=HISTORY)
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        self.sample()
        self._thread = threading.Thread(target=self._serve, daemon=True,
                                        name="zixir-dashboard-metrics")
        self._thread.start()

    def stop(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def _serve(self) -> None:
        while not self._halt.wait(self.interval):
            self.sample()

    def sample(self) -> Point:
        registry = self.registry
        if registry is None:
            from zixir_actors.observability import metrics

            registry = metrics.registry
        totals: dict[str, float] = {}
        buckets: dict[float, float] = {}
        for family in _families(registry):
            for s in family.samples:
                if s.name == "zixir_workflow_step_duration_seconds_bucket":
                    le = float(s.labels.get("le", "inf"))
                    buckets[le] = buckets.get(le, 0.0) + s.value
                else:
                    totals[s.name] = totals.get(s.name, 0.0) + s.value
        point = Point(time.time(), totals.get("zixir_workflow_step_attempts_total", 0.0),
                      totals.get("zixir_workflow_runs_total", 0.0),
                      totals.get("zixir_actor_restarts_total", 0.0),
                      totals.get("zixir_workflow_retries_exhausted_total", 0.0),
                      totals.get("zixir_workflow_dead_letters", 0.0),
                      totals.get("zixir_process_resident_memory_bytes", 0.0),
                      totals.get("zixir_process_threads", 0.0),
                      tuple(sorted(buckets.items())))
        with self._lock:
            self.points.append(point)
        return point

    def series(self) -> dict[str, dict[str, list[tuple[float, float]]]]:
        """The charts' series: rates between samples, latency quantiles, levels."""
        with self._lock:
            points = list(self.points)
        out: dict[str, dict[str, list[tuple[float, float]]]] = {
            "throughput": {"step attempts/s": [], "runs/s": []},
            "latency": {"p50": [], "p95": []},
            "restarts": {"restarts": []},
            "memory": {"RSS MiB": []},
        }
        for a, b in itertools.pairwise(points):
            dt = max(b.time - a.time, 1e-6)
            out["throughput"]["step attempts/s"].append((b.time, max(b.steps - a.steps, 0) / dt))
            out["throughput"]["runs/s"].append((b.time, max(b.runs - a.runs, 0) / dt))
        # Latency over a sliding window of about 30 s of samples, so single
        # quiet intervals do not drop the line to nothing.
        window = max(1, int(30 / max(self.interval, 0.1)))
        for i in range(1, len(points)):
            a, b = points[max(0, i - window)], points[i]
            for q, key in ((0.5, "p50"), (0.95, "p95")):
                value = quantile(a.buckets, b.buckets, q)
                if value is not None:
                    out["latency"][key].append((b.time, value))
        for p in points:
            out["restarts"]["restarts"].append((p.time, p.restarts))
            out["memory"]["RSS MiB"].append((p.time, p.rss / 2**20))
        return out


def quantile(before: tuple[tuple[float, float], ...], after: tuple[tuple[float, float], ...],
             q: float) -> float | None:
    """The `q` quantile of the observations made between two cumulative bucket snapshots."""
    old = dict(before)
    deltas = [(le, count - old.get(le, 0.0)) for le, count in after]
    if not deltas or deltas[-1][1] <= 0:
        return None
    total = deltas[-1][1]
    rank = q * total
    lower_le, lower_count = 0.0, 0.0
    for le, count in deltas:
        if count >= rank:
            if le == float("inf"):
                return lower_le
            span = count - lower_count
            frac = 0.0 if span <= 0 else (rank - lower_count) / span
            return lower_le + (le - lower_le) * frac
        lower_le, lower_count = le, count
    return lower_le
