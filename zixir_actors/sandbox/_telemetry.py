"""Logs, metrics and span events of the sandbox, bound once and cheap on the hot path.

Metrics (all `zixir_sandbox_*`):

- `zixir_sandbox_calls_total{outcome}`: calls by outcome (``ok`` or the error kind).
- `zixir_sandbox_kills_total{reason}`: workers killed for breaking a limit or dying.
- `zixir_sandbox_call_duration_seconds`: wall time of each call.
- `zixir_sandbox_worker_restarts_total{pool}`: workers replaced after a kill or death;
  each also counts in the runtime's ``zixir_actor_restarts_total{supervisor=<pool>,
  child="sandbox-worker"}``, like any supervised restart.
- `zixir_sandbox_cpu_percent{pool}`: last CPU sample of a monitored call, percent of one core.
- `zixir_sandbox_peak_memory_bytes`: peak resident memory of each call.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["WORKER_CHILD", "Telemetry", "telemetry"]

WORKER_CHILD = "sandbox-worker"
"""The `child` label of worker replacements in ``zixir_actor_restarts_total``."""

_MEMORY_BUCKETS = tuple(float(2**n) for n in range(20, 37, 2))  # 1 MiB .. 64 GiB


class Telemetry:
    """Lazily bound metric children plus logging and span helpers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready = False
        self._calls: dict[str, Any] = {}
        self._kills: dict[str, Any] = {}
        self._restarts: dict[str, Any] = {}
        self._cpu: dict[str, Any] = {}
        self._duration: Any = None
        self._peak: Any = None
        self._obs: Any = None

    def _bind(self) -> None:
        with self._lock:
            if self._ready:
                return
            try:
                from zixir_actors import observability as obs
                m = obs.metrics
                self._calls_metric = m.counter("zixir_sandbox_calls_total",
                                               "Sandboxed calls by outcome.", labels=("outcome",))
                self._kills_metric = m.counter("zixir_sandbox_kills_total",
                                               "Sandbox workers killed, by reason.",
                                               labels=("reason",))
                self._restarts_metric = m.counter("zixir_sandbox_worker_restarts_total",
                                                  "Sandbox workers replaced after a kill or death.",
                                                  labels=("pool",))
                self._cpu_metric = m.gauge("zixir_sandbox_cpu_percent",
                                           "Last CPU sample of a monitored sandboxed call "
                                           "(percent of one core).", labels=("pool",))
                try:
                    # A replaced worker counts like any supervised restart.
                    self._actor_restarts: Any = m.counter(
                        "zixir_actor_restarts_total", "Children restarted by a supervisor.",
                        labels=("supervisor", "child"))
                except Exception:  # registered differently by the runtime: keep ours only
                    self._actor_restarts = None
                self._duration = m.histogram("zixir_sandbox_call_duration_seconds",
                                             "Wall time of sandboxed calls.")
                self._peak = m.histogram("zixir_sandbox_peak_memory_bytes",
                                         "Peak resident memory of sandboxed calls.",
                                         buckets=_MEMORY_BUCKETS)
                self._obs = obs
            except Exception:  # observability unavailable: logs and metrics are off
                self._obs = None
            self._ready = True

    @staticmethod
    def _child(cache: dict[str, Any], metric: Any, label: str) -> Any:
        child = cache.get(label)
        if child is None:
            child = cache[label] = metric.labels(label)
        return child

    def call(self, outcome: str, duration: float, peak: int | None, error: Any = None) -> None:
        """Count one finished call and note it on the current span."""
        if not self._ready:
            self._bind()
        obs = self._obs
        if obs is None:
            return
        self._child(self._calls, self._calls_metric, outcome).inc()
        self._duration.observe(duration)
        if peak:
            self._peak.observe(peak)
        current = obs.current_span()
        if current is not None:
            attrs: dict[str, Any] = {"outcome": outcome, "duration_s": round(duration, 6)}
            if peak:
                attrs["peak_memory"] = peak
            if error is not None:
                attrs.update(kind=error.kind, limit=error.limit, measured=error.measured,
                             remote_type=error.remote_type)
            current.add_event("sandbox.call", **attrs)

    def kill(self, pool: str, reason: str, pid: int, limit: Any, measured: Any) -> None:
        """Log and count a worker killed for `reason` (a limit kind or ``crashed``)."""
        if not self._ready:
            self._bind()
        obs = self._obs
        if obs is None:
            return
        self._child(self._kills, self._kills_metric, reason).inc()
        obs.logger.bind(pool=pool, pid=pid, reason=reason, limit=limit, measured=measured).warning(
            "sandbox worker killed: {} (limit {}, measured {})", reason, limit, measured)
        current = obs.current_span()
        if current is not None:
            current.add_event("sandbox.kill", reason=reason, pid=pid, limit=limit,
                              measured=measured)

    def breach(self, pool: str, kind: str, limit: Any, measured: Any) -> None:
        """Log a limit breach the worker survived (depth): no kill, no restart."""
        if not self._ready:
            self._bind()
        obs = self._obs
        if obs is None:
            return
        obs.logger.bind(pool=pool, reason=kind, limit=limit, measured=measured).warning(
            "sandbox limit breached: {} (limit {}, measured {})", kind, limit, measured)

    def restart(self, pool: str, reason: str, count: int) -> None:
        """Count and log a replaced worker."""
        if not self._ready:
            self._bind()
        obs = self._obs
        if obs is None:
            return
        self._child(self._restarts, self._restarts_metric, pool).inc()
        if self._actor_restarts is not None:
            self._actor_restarts.labels(pool, WORKER_CHILD).inc()
        obs.logger.bind(pool=pool, reason=reason, restarts=count).info(
            "sandbox worker replaced after {}", reason)

    def cpu_sample(self, pool: str, percent: float) -> None:
        """Export one CPU-percent sample."""
        if not self._ready:
            self._bind()
        if self._obs is not None:
            self._child(self._cpu, self._cpu_metric, pool).set(percent)


telemetry = Telemetry()
