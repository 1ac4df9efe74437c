"""Observability: JSON logs, trace spans across actors, Prometheus metrics.

Example:
    >>> from zixir_actors.observability import logger, metrics, span
    >>> calls = metrics.counter("zixir_doc_llm_calls_total", "LLM calls.", labels=("model",))
    >>> small = calls.labels("small")                 # bind label children once
    >>> with span("llm.call", model="small") as s:
    ...     small.inc()
    ...     logger.bind(model="small").debug("calling")   # no sink unless configured
    >>> s.status
    'ok'

Everything here works whether or not the runtime is started, and importing
it has no side effects: no log sink, no thread, no server. The application
calls `configure_logging(...)`, `serve_metrics(...)` or starts the
`MetricsRegistry` actor (`zixir.metrics`, part of `zixir_actors.start()`),
which adds runtime metrics from the supervision tree.

Trace context crosses actors by itself: the current span lives in a
`ContextVar`, and `supervisors.SupervisedActor` runs each message in the
sender's context, so a span opened in a receiving actor's handler (for a
`tell` or an `ask`) is a child of the sender's current span. `TracedActor`
also opens one span per message, and closes with status ``"error"`` the
spans its thread left open when it stops or crashes; the metrics actor's
sampler does the same for spans of any thread that has ended.

- Logging: `logger` (loguru's), `configure_logging`, `reset_logging`,
  `format_json`; `zixir_actors.testing.capture_logs` in tests.
- Tracing: `span`, `start_span`, `current_span`, `current_trace_ids`,
  exporters (`InMemorySpanExporter`, `JsonLinesSpanExporter`,
  `LogSpanExporter`, `OpenTelemetryBridge`) added with `add_exporter`;
  `zixir_actors.testing.capture_spans` in tests.
- Metrics: `metrics` (counter, gauge, histogram, summary on one registry,
  `DEFAULT_BUCKETS` from 1 ms to 10 min), `serve_metrics`, the
  `MetricsRegistry` actor and its `child_spec`.
"""

from __future__ import annotations

import importlib as _importlib
from typing import TYPE_CHECKING, Any

from zixir_actors.observability._exporters import (
    InMemorySpanExporter,
    JsonLinesSpanExporter,
    LogSpanExporter,
    OpenTelemetryBridge,
    SpanExporter,
    add_exporter,
    exporters,
    remove_exporter,
)
from zixir_actors.observability._logging import (
    JSON_FIELDS,
    configure_logging,
    format_json,
    logger,
    reset_logging,
)
from zixir_actors.observability._metrics import DEFAULT_BUCKETS, MetricKind, Metrics, metrics

if TYPE_CHECKING:
    from zixir_actors.observability._runtime import (
        DEFAULT_SAMPLE_INTERVAL,
        METRICS_NAME,
        MetricsRegistry,
        Sample,
        child_spec,
    )
    from zixir_actors.observability._server import (
        MetricsServer,
        serve_metrics,
        stop_metrics_server,
    )
from zixir_actors.observability._traced import TracedActor
from zixir_actors.observability._tracing import (
    ABANDONED,
    ErrorInfo,
    Span,
    SpanEvent,
    SpanRecord,
    SpanStatus,
    close_open_spans,
    current_span,
    current_trace_ids,
    open_spans,
    resync_wall_clock,
    span,
    start_span,
    sweep_orphan_spans,
)

# The metrics actor (psutil) and the HTTP server load on first use (PEP 562):
# logging, spans and metrics objects cost no more than themselves.
_LAZY = {
    **dict.fromkeys(("DEFAULT_SAMPLE_INTERVAL", "METRICS_NAME", "MetricsRegistry", "Sample",
                     "child_spec"), "zixir_actors.observability._runtime"),
    **dict.fromkeys(("MetricsServer", "serve_metrics", "stop_metrics_server"),
                    "zixir_actors.observability._server"),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'zixir_actors.observability' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "ABANDONED",
    "DEFAULT_BUCKETS",
    "DEFAULT_SAMPLE_INTERVAL",
    "JSON_FIELDS",
    "METRICS_NAME",
    "ErrorInfo",
    "InMemorySpanExporter",
    "JsonLinesSpanExporter",
    "LogSpanExporter",
    "MetricKind",
    "Metrics",
    "MetricsRegistry",
    "MetricsServer",
    "OpenTelemetryBridge",
    "Sample",
    "Span",
    "SpanEvent",
    "SpanExporter",
    "SpanRecord",
    "SpanStatus",
    "TracedActor",
    "add_exporter",
    "child_spec",
    "close_open_spans",
    "configure_logging",
    "current_span",
    "current_trace_ids",
    "exporters",
    "format_json",
    "logger",
    "metrics",
    "open_spans",
    "remove_exporter",
    "reset_logging",
    "resync_wall_clock",
    "serve_metrics",
    "span",
    "start_span",
    "stop_metrics_server",
    "sweep_orphan_spans",
]
