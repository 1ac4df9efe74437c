"""Trace spans: `span(...)`, the current span in a `ContextVar`, open-span bookkeeping.

The current span lives in a `ContextVar`. `supervisors.SupervisedActor` copies
the sender's context into every message it delivers, so a span opened inside
a receiving actor's handler is a child of the span that was current where
`tell`/`ask` was called: propagation across actors needs no extra code.

Every span started with `span(...)` or `start_span(...)` is kept in a
process-wide table of open spans until it ends, owned by the thread that
started it. `close_open_spans(...)` ends the spans of a thread (an actor that
crashed or stopped) with status ``"error"``, and `sweep_orphan_spans()` ends
those whose thread is gone, so a span that is never ended neither leaks nor
raises later. (The per-message spans of `TracedActor` skip the table: they
always end when their handler returns or raises.)
"""

from __future__ import annotations

import functools
import inspect
import random
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, TypeVar, cast

__all__ = [
    "ABANDONED",
    "ErrorInfo",
    "Span",
    "SpanEvent",
    "SpanRecord",
    "SpanStatus",
    "close_open_spans",
    "current_span",
    "current_trace_ids",
    "open_spans",
    "resync_wall_clock",
    "span",
    "start_span",
    "sweep_orphan_spans",
]

SpanStatus = Literal["unset", "ok", "error"]
"""`"ok"` when the span's block returned, `"error"` when it raised (or was never ended)."""

F = TypeVar("F", bound=Callable[..., Any])

_CURRENT: ContextVar[Span | None] = ContextVar("zixir_current_span", default=None)
_OPEN: dict[int, Span] = {}
_getrandbits = random.getrandbits
_mono = time.monotonic
_wall_offset = [time.time() - time.monotonic()]
"""Wall minus monotonic time: spans take their wall-clock times from it (one clock
read per span); `resync_wall_clock()` refreshes it after the system clock moved."""
_current_thread = threading.current_thread
_EXPORTERS: tuple[Any, ...] = ()
"""Where finished spans go: replaced (copy on write) by `_exporters.add_exporter`."""


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """The exception a span (or a log line) recorded.

    Example:
        >>> ErrorInfo.from_exception(ValueError("bad")).type
        'ValueError'
    """

    type: str
    message: str
    traceback: str = ""

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return cls(type=type(exc).__qualname__, message=str(exc), traceback=tb)

    def to_dict(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message, "traceback": self.traceback}


@dataclass(frozen=True, slots=True)
class SpanEvent:
    """A point in time inside a span (`Span.add_event`)."""

    name: str
    time: float
    attributes: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "time": self.time, "attributes": dict(self.attributes)}


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """A finished span, as exporters receive it.

    Times: `start_time`/`end_time` are wall clock (`time.time()`), `duration`
    is measured with `time.monotonic()` so clock steps never make it negative.
    """

    name: str
    trace_id: str
    span_id: str
    parent_id: str | None
    start_time: float
    end_time: float
    duration: float
    status: SpanStatus
    attributes: Mapping[str, Any]
    events: tuple[SpanEvent, ...]
    error: ErrorInfo | None
    thread: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (attribute values are kept as given)."""
        return {
            "name": self.name, "trace_id": self.trace_id, "span_id": self.span_id,
            "parent_id": self.parent_id, "start_time": self.start_time,
            "end_time": self.end_time, "duration": self.duration, "status": self.status,
            "attributes": dict(self.attributes),
            "events": [e.to_dict() for e in self.events],
            "error": self.error.to_dict() if self.error else None, "thread": self.thread,
        }


class Span:
    """An open span. Use `span(...)`; `start_span(...)` when you must end it yourself.

    Example:
        >>> with span("llm.call", model="small") as s:
        ...     s.set_attribute("tokens", 12)
        ...     s.add_event("first_token")
        >>> s.status, s.is_recording
        ('ok', False)

    Ending is idempotent and thread-safe: the first `end` wins, later ones do
    nothing (a span closed by `close_open_spans` stays closed).
    """

    __slots__ = (
        "__weakref__",
        "_events",
        "_mono",
        "_owner",
        "_parent",
        "_sid",
        "_tid",
        "_token",
        "_tracked",
        "attributes",
        "duration",
        "end_time",
        "error",
        "name",
        "start_time",
        "status",
    )

    _tid: int
    _sid: int
    _parent: int

    def __init__(self, name: str, attributes: dict[str, Any], parent: Span | None,
                 track: bool = True) -> None:
        # This runs per traced actor message: ids stay ints (formatted on
        # demand), events are allocated on first use, the end wall time is
        # derived from the monotonic duration (so it never precedes the start).
        self.name = name
        self.attributes = attributes
        if parent is None:
            self._tid = _getrandbits(128) or 1
            self._parent = 0
        else:
            self._tid = parent._tid
            self._parent = parent._sid
        sid: int = _getrandbits(64) or 1
        self._sid = sid
        self._events: list[SpanEvent] | None = None
        self.status: SpanStatus = "unset"
        self.error: ErrorInfo | None = None
        self.end_time: float | None = None
        self.duration: float | None = None
        self._mono = mono = _mono()
        self.start_time = mono + _wall_offset[0]
        self._owner = _current_thread()
        self._token: Token[Span | None] | None = None
        self._tracked = track
        if track:
            _OPEN[sid] = self

    @property
    def trace_id(self) -> str:
        """32 hex digits, shared by every span of one trace (W3C trace-context format)."""
        return f"{self._tid:032x}"

    @property
    def span_id(self) -> str:
        """16 hex digits, unique to this span."""
        return f"{self._sid:016x}"

    @property
    def parent_id(self) -> str | None:
        """The `span_id` of the parent span, None for a root span."""
        return f"{self._parent:016x}" if self._parent else None

    def __repr__(self) -> str:
        return (f"Span({self.name!r}, trace_id={self.trace_id}, span_id={self.span_id}, "
                f"parent_id={self.parent_id}, status={self.status!r})")

    @property
    def is_recording(self) -> bool:
        """True until the span ends."""
        return self.end_time is None

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value

    def set_attributes(self, **attributes: Any) -> None:
        self.attributes.update(attributes)

    def add_event(self, name: str, **attributes: Any) -> None:
        """Record a point in time (`"retry"`, `"first_token"`) with attributes."""
        if self._events is None:
            self._events = []
        self._events.append(SpanEvent(name, time.time(), attributes))

    @property
    def events(self) -> tuple[SpanEvent, ...]:
        """The events recorded so far, oldest first."""
        return tuple(self._events) if self._events else ()

    def record_exception(self, exc: BaseException) -> None:
        """Mark the span as failed with `exc` (type, message and traceback)."""
        self.error = ErrorInfo.from_exception(exc)
        self.status = "error"

    def end(self, *, status: SpanStatus | None = None,
            error: BaseException | None = None) -> bool:
        """End the span and export it; False if it had already ended (nothing changes then).

        Args:
            status: the final status; default ``"error"`` if an error was
                recorded, else ``"ok"``.
            error: an exception to record before ending.
        """
        # Tracked spans: the pop is atomic, so the first end wins even against
        # a concurrent close_open_spans. Untracked ones end in their own thread.
        if self._tracked:
            if _OPEN.pop(self._sid, None) is None:
                return False
        elif self.end_time is not None:
            return False
        duration = self.duration = _mono() - self._mono
        self.end_time = self.start_time + duration
        if error is not None:
            self.record_exception(error)
        if status is not None:
            self.status = status
        elif self.status == "unset":
            self.status = "ok" if self.error is None else "error"
        if _EXPORTERS:
            _export(self)
        return True

    def record(self) -> SpanRecord:
        """The span as an immutable `SpanRecord` (what exporters get once it ends).

        Raises:
            ObservabilityError: the span has not ended yet.
        """
        if self.end_time is None or self.duration is None:
            from zixir_actors.errors import ObservabilityError

            raise ObservabilityError(f"span {self.name!r} has not ended yet")
        parent = self._parent
        return SpanRecord(
            self.name, f"{self._tid:032x}", f"{self._sid:016x}",
            f"{parent:016x}" if parent else None, self.start_time, self.end_time,
            self.duration, self.status, self.attributes,
            tuple(self._events) if self._events else (), self.error, self._owner.name)


_new_span = object.__new__


def _message_span(name: str, parent: Span | None) -> Span:
    """An untracked child span, built without `__init__` (the per-message hot path).

    Same fields as `Span.__init__(name, {}, parent, track=False)`; the owner
    thread is the caller's, as always.
    """
    opened: Span = _new_span(Span)
    opened.name = name
    opened.attributes = {}
    if parent is None:
        opened._tid = _getrandbits(128) or 1
        opened._parent = 0
    else:
        opened._tid = parent._tid
        opened._parent = parent._sid
    opened._sid = _getrandbits(64) or 1
    opened._events = opened.error = opened.end_time = opened.duration = opened._token = None
    opened.status = "unset"
    opened._mono = mono = _mono()
    opened.start_time = mono + _wall_offset[0]
    opened._owner = _current_thread()
    opened._tracked = False
    return opened


def _end_ok(opened: Span) -> None:
    """`opened.end()` for an untracked span that returned normally (the hot path)."""
    if opened.end_time is None:
        duration = opened.duration = _mono() - opened._mono
        opened.end_time = opened.start_time + duration
        if opened.status == "unset":
            opened.status = "ok" if opened.error is None else "error"
        if _EXPORTERS:
            _export(opened)


def _export(ended: Span) -> None:
    record = ended.record()
    for exporter in _EXPORTERS:
        try:
            exporter.export(record)
        except Exception as exc:  # an exporter must never break the traced code
            from loguru import logger

            logger.opt(exception=exc).warning("span exporter {!r} failed", exporter)


def resync_wall_clock() -> None:
    """Re-read the wall clock offset spans use (the metrics actor does it on each sample)."""
    _wall_offset[0] = time.time() - time.monotonic()


def current_span() -> Span | None:
    """The span open in this context (this thread, task, or the message being handled)."""
    return _CURRENT.get()


def current_trace_ids() -> tuple[str | None, str | None]:
    """`(trace_id, span_id)` of the current span, or `(None, None)`."""
    current = _CURRENT.get()
    if current is None:
        return None, None
    return current.trace_id, current.span_id


def start_span(name: str, *, parent: Span | Literal["current"] | None = "current",
               **attributes: Any) -> Span:
    """Start a span without making it current; you must call `end()` on it.

    Example:
        >>> s = start_span("upload", size=3)
        >>> s.end(), s.end()              # the first end wins
        (True, False)
        >>> s.record().status
        'ok'

    A span started in an actor and never ended is closed with status
    ``"error"`` when the actor stops (see `TracedActor`) or by the metrics
    actor's periodic sweep once its thread is gone.
    """
    return Span(name, attributes, _CURRENT.get() if isinstance(parent, str) else parent)


class _SpanScope:
    """What `span(...)` returns: a (sync or async) context manager and a decorator."""

    __slots__ = ("_attributes", "_name", "_spans")

    def __init__(self, name: str, attributes: dict[str, Any]) -> None:
        self._name = name
        self._attributes = attributes
        self._spans: list[Span] = []

    def __enter__(self) -> Span:
        opened = Span(self._name, dict(self._attributes), _CURRENT.get())
        opened._token = _CURRENT.set(opened)
        self._spans.append(opened)
        return opened

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        closing = self._spans.pop()
        _exit(closing, exc)

    async def __aenter__(self) -> Span:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, fn: F) -> F:
        name, attributes = self._name, self._attributes
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                opened = Span(name, dict(attributes), _CURRENT.get())
                opened._token = _CURRENT.set(opened)
                try:
                    result = await fn(*args, **kwargs)
                except BaseException as exc:
                    _exit(opened, exc)
                    raise
                _exit(opened, None)
                return result
            return cast(F, async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            opened = Span(name, dict(attributes), _CURRENT.get())
            opened._token = _CURRENT.set(opened)
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                _exit(opened, exc)
                raise
            _exit(opened, None)
            return result
        return cast(F, wrapper)


def _exit(closing: Span, exc: BaseException | None = None) -> None:
    token = closing._token
    if token is not None:
        closing._token = None
        try:
            _CURRENT.reset(token)
        except ValueError:
            # Exited in another context than it was entered in (a generator
            # resumed elsewhere): restore the parent by hand instead.
            if _CURRENT.get() is closing:
                parent = _OPEN.get(closing._parent) if closing._parent else None
                _CURRENT.set(parent)
    if exc is None:
        closing.end()
    else:
        closing.end(error=exc)


def remote_parent(trace_id: str, span_id: str) -> Span:
    """A stand-in for a span of another process (a remote call's caller), never exported.

    Made current where a remote call runs, so that the spans the call opens
    carry the caller's trace id and name that span as their parent; their
    records go back to the caller, which exports them (`export_record`).
    """
    opened = _message_span("remote.parent", None)
    opened._tid = int(trace_id, 16)
    opened._sid = int(span_id, 16)
    opened._parent = 0
    return opened


def export_record(record: SpanRecord) -> None:
    """Send a finished span recorded elsewhere (in a remote call) to this process's exporters."""
    for exporter in _EXPORTERS:
        try:
            exporter.export(record)
        except Exception as exc:  # an exporter must never break the traced code
            from loguru import logger

            logger.opt(exception=exc).warning("span exporter {!r} failed", exporter)


def enter_span(name: str, attributes: dict[str, Any]) -> Span:
    """Open a span and make it current, without a scope object (a service's hot path).

    `attributes` is taken as is (not copied). Pair it with `exit_span` in the
    same context, in a ``finally``.
    """
    opened = Span(name, attributes, _CURRENT.get())
    opened._token = _CURRENT.set(opened)
    return opened


exit_span = _exit
"""``exit_span(opened, exc=None)``: end a span from `enter_span` (status error
with `exc`), restoring its parent (`_exit` itself: one call less per step)."""


def span(name: str, **attributes: Any) -> _SpanScope:
    """Trace a block or a function (sync or async) as a span, child of the current one.

    Example:
        >>> with span("workflow.step", step="fetch") as outer:
        ...     with span("http.get", url="https://example.org") as inner:
        ...         pass
        >>> inner.parent_id == outer.span_id and inner.trace_id == outer.trace_id
        True
        >>> @span("summarize")
        ... def summarize(text: str) -> str:
        ...     return text[:10]

    The span ends with status ``"ok"`` when the block returns and ``"error"``
    (exception type, message and traceback recorded) when it raises; the
    exception propagates unchanged. Finished spans go to the exporters added
    with `add_exporter`.

    Args:
        name: the span name, dotted by convention (``"cache.get"``).
        **attributes: initial attributes.

    Returns:
        A context manager (`with`/`async with`, yielding the `Span`) that is
        also a decorator. Use one `span(...)` object per `with` block; as a
        decorator it opens a fresh span on every call.
    """
    return _SpanScope(name, attributes)


def open_spans() -> list[Span]:
    """Spans started and not yet ended, in this process."""
    return list(_OPEN.values())


def close_open_spans(thread: threading.Thread | None = None, *,
                     reason: str = "owner stopped") -> list[SpanRecord]:
    """End, with status ``"error"``, the open spans started by `thread` (default: this one).

    Called by `TracedActor` when its actor stops or crashes, so a span its
    handler never ended does not leak. Returns the records of the spans closed.
    """
    owner = threading.current_thread() if thread is None else thread
    closed = []
    for opened in list(_OPEN.values()):
        if opened._owner is owner and _abandon(opened, reason):
            closed.append(opened.record())
    return closed


def sweep_orphan_spans(*, reason: str = "owner thread exited") -> list[SpanRecord]:
    """End, with status ``"error"``, open spans whose starting thread no longer runs."""
    closed = []
    for opened in list(_OPEN.values()):
        if not opened._owner.is_alive() and _abandon(opened, reason):
            closed.append(opened.record())
    return closed


ABANDONED = "SpanAbandoned"
"""The `ErrorInfo.type` recorded on a span that was still open when its owner stopped."""


def _abandon(opened: Span, reason: str) -> bool:
    if opened.error is None:
        opened.error = ErrorInfo(ABANDONED,
                                 f"span {opened.name!r} was not ended: {reason}")
    return opened.end(status="error")
