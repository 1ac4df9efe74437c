"""Where finished spans go: in memory, a JSON-lines file, the log, OpenTelemetry.

Example:
    >>> from zixir_actors.observability import InMemorySpanExporter, add_exporter, span
    >>> memory = add_exporter(InMemorySpanExporter())
    >>> with span("demo"):
    ...     pass
    >>> [s.name for s in memory.spans]
    ['demo']
    >>> remove_exporter(memory)

No exporter is installed by default: until one is added, a finished span
costs nothing beyond building its record.
"""

from __future__ import annotations

import json
import os
import threading
from collections import deque
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar, runtime_checkable

from zixir_actors.errors import ConfigError, ObservabilityError
from zixir_actors.observability import _tracing
from zixir_actors.observability._tracing import SpanRecord

__all__ = [
    "InMemorySpanExporter",
    "JsonLinesSpanExporter",
    "LogSpanExporter",
    "OpenTelemetryBridge",
    "SpanExporter",
    "add_exporter",
    "exporters",
    "remove_exporter",
]

E = TypeVar("E", bound="SpanExporter")

_LOCK = threading.Lock()


@runtime_checkable
class SpanExporter(Protocol):
    """Receives each finished span, in the thread that ended it; must not block for long."""

    def export(self, record: SpanRecord) -> None: ...

    def shutdown(self) -> None: ...


def add_exporter(exporter: E) -> E:
    """Send finished spans to `exporter` too; returns it. Adding one twice is a no-op.

    Raises:
        ConfigError: `exporter` has no `export(record)` method.
    """
    if not callable(getattr(exporter, "export", None)):
        raise ConfigError("exporter", exporter, "needs an export(record) method")
    with _LOCK:
        if not any(e is exporter for e in _tracing._EXPORTERS):
            _tracing._EXPORTERS = (*_tracing._EXPORTERS, exporter)
    return exporter


def remove_exporter(exporter: SpanExporter, *, shutdown: bool = True) -> None:
    """Stop sending spans to `exporter` (and shut it down); unknown exporters are ignored."""
    with _LOCK:
        before = _tracing._EXPORTERS
        _tracing._EXPORTERS = tuple(e for e in before if e is not exporter)
        removed = len(before) != len(_tracing._EXPORTERS)
    if removed and shutdown:
        exporter.shutdown()


def exporters() -> tuple[SpanExporter, ...]:
    """The exporters installed, in the order they were added."""
    return _tracing._EXPORTERS


class InMemorySpanExporter:
    """Keeps finished spans in a list: for tests (`zixir_actors.testing.capture_spans`).

    Args:
        max_spans: keep at most this many (the oldest are dropped); None keeps all.
    """

    def __init__(self, max_spans: int | None = 10_000) -> None:
        if max_spans is not None and max_spans < 1:
            raise ConfigError("max_spans", max_spans, "must be at least 1 or None")
        self._spans: deque[SpanRecord] = deque(maxlen=max_spans)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    def export(self, record: SpanRecord) -> None:
        with self._changed:
            self._spans.append(record)
            self._changed.notify_all()

    def shutdown(self) -> None:
        """Nothing to release; the spans stay readable."""

    @property
    def spans(self) -> list[SpanRecord]:
        """The finished spans, oldest first (a copy)."""
        with self._lock:
            return list(self._spans)

    def named(self, name: str) -> list[SpanRecord]:
        """The finished spans called `name`."""
        return [s for s in self.spans if s.name == name]

    def wait_for(self, name: str, *, count: int = 1,
                 timeout: float | None = 5.0) -> list[SpanRecord]:
        """Block until `count` spans called `name` have finished; returns them.

        Raises:
            ZixirTimeoutError: fewer finished within `timeout` seconds.
        """
        from zixir_actors.errors import ZixirTimeoutError

        def ready() -> bool:
            return sum(1 for s in self._spans if s.name == name) >= count

        with self._changed:
            if not self._changed.wait_for(ready, timeout=timeout):
                raise ZixirTimeoutError(f"waiting for {count} span(s) {name!r}", timeout)
        return self.named(name)

    def clear(self) -> None:
        with self._lock:
            self._spans.clear()


class JsonLinesSpanExporter:
    """Appends one JSON object per finished span to a file (see `SpanRecord.to_dict`).

    The file is opened on the first span and closed by `shutdown()`; every
    line is flushed, so a crash loses at most the span being written.

    Args:
        path: the file to append to; its directory must exist.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise ConfigError("path", str(path), "its directory does not exist")
        self._file: IO[str] | None = None
        self._lock = threading.Lock()

    def export(self, record: SpanRecord) -> None:
        line = json.dumps(record.to_dict(), default=repr, separators=(",", ":"))
        with self._lock:
            if self._file is None:
                self._file = self.path.open("a", encoding="utf-8")
            self._file.write(line + "\n")
            self._file.flush()

    def shutdown(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


class LogSpanExporter:
    """Logs each finished span as one loguru record, the span under the `span` field.

    Args:
        level: the level for spans that ended ok; failed spans log at WARNING
            (or `level` if higher).
    """

    def __init__(self, level: str = "DEBUG") -> None:
        from loguru import logger

        try:
            self._no = logger.level(level).no
        except ValueError as exc:
            raise ConfigError("level", level, "not a loguru level") from exc
        self.level = level
        self._error_level = level if self._no >= logger.level("WARNING").no else "WARNING"

    def export(self, record: SpanRecord) -> None:
        from loguru import logger

        level = self._error_level if record.status == "error" else self.level
        logger.bind(span=record.to_dict()).log(
            level, "span {} {} in {:.3f} ms", record.name, record.status,
            record.duration * 1000)

    def shutdown(self) -> None:
        """Nothing to release."""


_EXPORTING = threading.local()
"""The ids of the span `OpenTelemetryBridge.export` is re-emitting, for `ZixirIdGenerator`."""


class OpenTelemetryBridge:
    """Re-emits finished spans through the OpenTelemetry API (`pip install zixir-actors[otel]`).

    Example (needs the OpenTelemetry SDK, so not run as a doctest)::

        from opentelemetry.sdk.trace import TracerProvider
        provider = TracerProvider(id_generator=OpenTelemetryBridge.id_generator())
        add_exporter(OpenTelemetryBridge(provider.get_tracer("zixir")))

    Each span keeps its name, start and end times, attributes (values that
    OpenTelemetry cannot hold are written as their `repr`), events and status;
    our ids are also kept as the attributes ``zixir.trace_id`` and
    ``zixir.span_id``. Child spans point at our parent span id within our
    trace id. For the OpenTelemetry spans to carry exactly our ids (so roots
    and children form one trace there too), give the SDK's `TracerProvider`
    the `id_generator()`; otherwise the SDK picks the span ids, and a root
    span's trace id.

    Args:
        tracer: an OpenTelemetry `Tracer`; default
            ``opentelemetry.trace.get_tracer("zixir_actors")``.

    Raises:
        ObservabilityError: `opentelemetry` is not installed.
    """

    def __init__(self, tracer: Any = None) -> None:
        try:
            from opentelemetry import context as otel_context
            from opentelemetry import trace
        except ImportError as exc:
            raise ObservabilityError(
                "OpenTelemetryBridge needs the opentelemetry API: "
                "pip install 'zixir-actors[otel]'") from exc
        self._trace = trace
        self._root_context = otel_context.Context()
        self._tracer = tracer if tracer is not None else trace.get_tracer("zixir_actors")

    @staticmethod
    def id_generator() -> Any:
        """An OpenTelemetry SDK `IdGenerator` that reuses our ids for re-emitted spans.

        Other spans (made directly with OpenTelemetry) get random ids as usual.

        Raises:
            ObservabilityError: the OpenTelemetry SDK is not installed.
        """
        try:
            from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
        except ImportError as exc:
            raise ObservabilityError(
                "OpenTelemetryBridge.id_generator needs the opentelemetry SDK: "
                "pip install 'zixir-actors[otel]'") from exc

        class ZixirIdGenerator(IdGenerator):  # type: ignore[misc,unused-ignore]
            def __init__(self) -> None:
                self._random = RandomIdGenerator()

            def generate_span_id(self) -> int:
                ids = getattr(_EXPORTING, "ids", None)
                return ids[1] if ids else int(self._random.generate_span_id())

            def generate_trace_id(self) -> int:
                ids = getattr(_EXPORTING, "ids", None)
                return ids[0] if ids else int(self._random.generate_trace_id())

        return ZixirIdGenerator()

    def export(self, record: SpanRecord) -> None:
        trace = self._trace
        if record.parent_id is not None:
            parent = trace.SpanContext(trace_id=int(record.trace_id, 16),
                                       span_id=int(record.parent_id, 16), is_remote=True,
                                       trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED))
            context = trace.set_span_in_context(trace.NonRecordingSpan(parent))
        else:
            # A root here is a root there, whatever OpenTelemetry span is current.
            context = self._root_context
        attributes = {k: v if isinstance(v, (str, bool, int, float)) else repr(v)
                      for k, v in record.attributes.items()}
        attributes["zixir.trace_id"] = record.trace_id
        attributes["zixir.span_id"] = record.span_id
        _EXPORTING.ids = (int(record.trace_id, 16), int(record.span_id, 16))
        try:
            otel_span = self._tracer.start_span(record.name, context=context,
                                                attributes=attributes,
                                                start_time=int(record.start_time * 1e9))
        finally:
            _EXPORTING.ids = None
        for event in record.events:
            otel_span.add_event(event.name, attributes={k: repr(v) if not isinstance(
                v, (str, bool, int, float)) else v for k, v in event.attributes.items()},
                timestamp=int(event.time * 1e9))
        if record.status == "error":
            message = f"{record.error.type}: {record.error.message}" if record.error else ""
            otel_span.set_status(trace.Status(trace.StatusCode.ERROR, message))
        else:
            otel_span.set_status(trace.Status(trace.StatusCode.OK))
        otel_span.end(end_time=int(record.end_time * 1e9))

    def shutdown(self) -> None:
        """Nothing to release: the OpenTelemetry SDK owns its exporters."""
