"""Workflow events as logs, spans and `zixir_workflow_*` metrics.

Metric objects are created on first use (never on import) and label children
are bound once per (workflow, step), so the hot path is a dict lookup and
an ``inc``.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import threading
from collections.abc import Callable
from typing import Any

from zixir_actors.observability import DEFAULT_BUCKETS, logger, metrics
from zixir_actors.workflow._history import EngineLog

__all__ = ["Telemetry", "end_failed", "log", "report_end"]

log = EngineLog(logger.bind(service="workflow"))
"""The engine's logger: its lines about a run are also kept with the run (`_history`)."""


class _Metrics:
    def __init__(self) -> None:
        self.attempts = metrics.counter(
            "zixir_workflow_step_attempts_total", "Step attempts, by outcome.",
            labels=("workflow", "step", "outcome"))
        self.exhausted = metrics.counter(
            "zixir_workflow_retries_exhausted_total",
            "Steps that failed every attempt (or gave up) and went to the dead letters.",
            labels=("workflow", "step"))
        self.dead_letters = metrics.gauge(
            "zixir_workflow_dead_letters", "Dead letters parked in the store.")
        self.duration = metrics.histogram(
            "zixir_workflow_step_duration_seconds", "Duration of step attempts.",
            labels=("workflow", "step"), buckets=DEFAULT_BUCKETS)
        self.runs = metrics.counter(
            "zixir_workflow_runs_total", "Runs that ended, by status.",
            labels=("workflow", "status"))
        self.parked = metrics.gauge(
            "zixir_workflow_parked_runs",
            "Code-first runs of this process parked on an event, a timer or a child run.")
        self.events = metrics.counter(
            "zixir_workflow_events_total", "Events sent to runs, by outcome.",
            labels=("workflow", "outcome"))
        self._children: dict[tuple[Any, ...], Any] = {}
        self._lock = threading.Lock()

    def child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            with self._lock:
                found = self._children.get(key)
                if found is None:
                    found = metric.labels(*labels)
                    self._children[key] = found
        return found


_metrics: _Metrics | None = None
_metrics_lock = threading.Lock()


def _get_metrics() -> _Metrics:
    global _metrics
    if _metrics is None:
        with _metrics_lock:
            if _metrics is None:
                _metrics = _Metrics()
    return _metrics


def _recorder(counter: Any, histogram: Any) -> Callable[[float], None]:
    """``counter.inc(); histogram.observe(seconds)`` for two label children, cheaply.

    Once per step attempt: the values' own ``inc`` are bound once and the
    bucket is found by bisection (what ``Histogram.observe`` does, without
    its per-call checks and its linear scan). Children of another shape
    (prometheus_client's multiprocess mode, a future version) get the
    public calls.
    """
    try:
        count, total = counter._value.inc, histogram._sum.inc
        bounds = list(histogram._upper_bounds)
        buckets = [bucket.inc for bucket in histogram._buckets]
    except AttributeError:
        buckets = []
    if not buckets or len(buckets) != len(bounds) or bounds[-1] != math.inf:
        def public(seconds: float) -> None:
            counter.inc()
            histogram.observe(seconds)
        return public

    def record(seconds: float) -> None:
        count(1)
        total(seconds)
        buckets[bisect.bisect_left(bounds, seconds)](1)
    return record


class Telemetry:
    """The metrics of one workflow, with label children bound once."""

    def __init__(self, workflow: str) -> None:
        self.workflow = workflow
        self._m = _get_metrics()
        self._attempt: dict[tuple[str, str], Callable[[float], None]] = {}

    def attempt(self, step: str, outcome: str, seconds: float) -> None:
        record = self._attempt.get((step, outcome))
        if record is None:
            m = self._m
            record = _recorder(m.child(m.attempts, self.workflow, step, outcome),
                               m.child(m.duration, self.workflow, step))
            self._attempt[(step, outcome)] = record
        record(seconds)

    def exhausted(self, step: str) -> None:
        self._m.child(self._m.exhausted, self.workflow, step).inc()

    def run_ended(self, status: str) -> None:
        self._m.child(self._m.runs, self.workflow, status).inc()

    def dead_letters(self, count: int) -> None:
        self._m.dead_letters.set(count)

    def parked(self, delta: int) -> None:
        """A run of this process parked (+1) or woke (-1)."""
        self._m.parked.inc(delta)

    def event(self, outcome: str) -> None:
        """An event was ``sent`` to, or ``consumed`` by, a run of this workflow."""
        self._m.child(self._m.events, self.workflow, outcome).inc()


def end_failed(span: Any) -> None:
    """End a run's span as an error, where the run ends without a result
    (interrupted, not started). A failing span backend is not the run's end:
    its error is dropped, as the end that called this must still go on."""
    with contextlib.suppress(Exception):
        span.end(status="error")


def report_end(telemetry: Telemetry, span: Any, workflow: str, run_id: str, status: str,
               ok: bool, duration: float) -> None:
    """Count, close the span of and log a run whose end is recorded.

    Never raises: once the end is in the store, a failing metrics backend or
    span exporter must not turn the run into another outcome (it is logged).
    """
    bound = log.bind(workflow=workflow, run_id=run_id)

    def count() -> None:
        telemetry.run_ended(status)

    def close_span() -> None:
        span.set_attribute("status", status)
        span.end(status="ok" if ok else "error")

    for report in (count, close_span):  # one failing, the other still runs
        try:
            report()
        except Exception as exc:
            bound.error("cannot report the run's end", error=f"{type(exc).__name__}: {exc}")
    bound.info("run ended", status=status, duration=duration)
