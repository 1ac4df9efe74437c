"""Spans and `zixir_executor_*` metrics of remote calls, bound once per executor.

Metrics:

- `zixir_executor_tasks_total{executor,outcome}`: calls that ended, by outcome
  (``ok``, ``error``, ``timeout``, ``memory``, ``cpu``, ``depth``, ``lost``,
  ``cancelled``, ``disconnected``).
- `zixir_executor_task_duration_seconds{executor}`: from submit to the result, as the caller saw it.
- `zixir_executor_remote_duration_seconds{executor}`: time the call ran where it ran.
- `zixir_executor_in_flight{executor}`: calls submitted and not ended.

Each call is a span ``executor.task`` (a child of the caller's current span)
with attributes `executor`, `task`, `outcome`, `pid`, `node` and
`remote_duration`; the remote side receives that span's ids as its
`TraceContext`.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from zixir_actors.executor._api import TraceContext

__all__ = ["Call", "Telemetry"]


class Call:
    """One call's span and clock, from submit to its end."""

    __slots__ = ("began", "label", "span", "trace")

    def __init__(self, label: str, span: Any, trace: TraceContext) -> None:
        self.label = label
        self.span = span
        self.trace = trace
        self.began = time.perf_counter()


class Telemetry:
    """The metrics of one executor (label children bound on first use)."""

    def __init__(self, executor: str) -> None:
        self.executor = executor
        self._lock = threading.Lock()
        self._ready = False
        self._outcomes: dict[str, Any] = {}

    def _bind(self) -> None:
        from zixir_actors.observability import DEFAULT_BUCKETS, _tracing, metrics, start_span

        with self._lock:
            if self._ready:
                return
            self._tasks = metrics.counter("zixir_executor_tasks_total",
                                          "Executor calls that ended, by outcome.",
                                          labels=("executor", "outcome"))
            self._duration = metrics.histogram(
                "zixir_executor_task_duration_seconds",
                "Executor calls from submit to result, as the caller saw them.",
                labels=("executor",), buckets=DEFAULT_BUCKETS).labels(self.executor)
            self._remote = metrics.histogram(
                "zixir_executor_remote_duration_seconds",
                "Time executor calls ran where they ran (a Ray worker...).",
                labels=("executor",), buckets=DEFAULT_BUCKETS).labels(self.executor)
            self._in_flight = metrics.gauge("zixir_executor_in_flight",
                                            "Executor calls submitted and not ended.",
                                            labels=("executor",)).labels(self.executor)
            self._start_span = start_span
            self._tracing = _tracing
            self._ready = True

    def begin(self, label: str, trace: TraceContext | None) -> Call:
        """Open the call's span (child of the current span) and count it in flight."""
        if not self._ready:
            self._bind()
        span = self._start_span("executor.task", executor=self.executor, task=label)
        self._in_flight.inc()
        return Call(label, span, trace if trace is not None
                    else TraceContext(span.trace_id, span.span_id))

    def exporting(self) -> bool:
        """True if this process exports spans (then remote calls send theirs back)."""
        if not self._ready:
            self._bind()
        return bool(self._tracing._EXPORTERS)

    def end(self, call: Call, outcome: str, *, error: BaseException | None = None,
            remote_duration: float | None = None, pid: int | None = None,
            node: str | None = None) -> None:
        """Close the call's span and record its outcome and durations."""
        self._in_flight.dec()
        self._duration.observe(time.perf_counter() - call.began)
        child = self._outcomes.get(outcome)
        if child is None:
            child = self._outcomes[outcome] = self._tasks.labels(self.executor, outcome)
        child.inc()
        span = call.span
        span.set_attribute("outcome", outcome)
        if remote_duration is not None:
            self._remote.observe(remote_duration)
            span.set_attribute("remote_duration", remote_duration)
        if pid is not None:
            span.set_attribute("pid", pid)
        if node:
            span.set_attribute("node", node)
        if error is not None:
            span.end(error=error)
        else:
            span.end(status="ok" if outcome == "ok" else "error")
