"""What runs where the call runs: `execute` (limits, trace context, a `Reply`) and warm state.

This module is imported inside Ray workers and local worker processes, so it
imports nothing heavy and never imports Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ctypes
import dataclasses
import inspect
import os
import pickle
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from zixir_actors.errors import ExecutorError
from zixir_actors.executor._api import TraceContext

__all__ = [
    "MONITOR_INTERVAL",
    "STUCK_GRACE",
    "Guard",
    "Reply",
    "current_trace_context",
    "execute",
    "execute_packed",
    "guard_of",
    "pack",
    "reply_of",
    "run_payload",
    "set_warm_state",
    "warm_state",
]

MONITOR_INTERVAL = 0.02
"""Seconds between two memory / CPU samples of a call that has limits."""
STUCK_GRACE = 2.0
"""Seconds a call that broke a limit gets to unwind before its worker process exits."""

_TRACE: contextvars.ContextVar[TraceContext | None] = contextvars.ContextVar(
    "zixir_remote_trace", default=None)
_NOTHING = object()
_PROCESS_WARM: list[Any] = [_NOTHING]
_THREAD_WARM = threading.local()
_HOST: list[str] = [""]


def _host() -> str:
    _HOST[0] = socket.gethostname()
    return _HOST[0]


@dataclass(frozen=True, slots=True)
class Guard:
    """The limits enforced inside the worker (from a sandbox `Limits`)."""

    memory: int | None = None
    cpu_time: float | None = None
    max_depth: int | None = None


def guard_of(limits: Any) -> Guard | None:
    """The part of a `Limits` that is enforced in the worker, or None."""
    if limits is None:
        return None
    guard = Guard(getattr(limits, "memory_bytes", None), getattr(limits, "cpu_time", None),
                  getattr(limits, "max_depth", None))
    return guard if guard != Guard() else None


@dataclass(frozen=True, slots=True)
class Reply:
    """How a call ended, sent back to the caller.

    `kind` is ``""`` for a value, ``"exception"`` (the call raised; `error`
    is the pickled exception or None), or the limit that was broken:
    ``"memory"``, ``"cpu"`` or ``"depth"``. `spans`: the records of the spans
    the call opened in another process, for the caller to export.
    """

    ok: bool
    value: Any = None
    kind: str = ""
    error: bytes | None = None
    error_type: str = ""
    message: str = ""
    traceback: str = ""
    limit: float | None = None
    measured: float | None = None
    duration: float = 0.0
    pid: int = 0
    node: str = ""
    spans: tuple[Any, ...] = ()

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Positional reconstruction: a slotted dataclass pickled field by field
        # costs more than the rest of a no-op call's reply.
        return (Reply, (self.ok, self.value, self.kind, self.error, self.error_type,
                        self.message, self.traceback, self.limit, self.measured,
                        self.duration, self.pid, self.node, self.spans))


class _LimitBroken(BaseException):
    """Raised inside the call by the monitor (a BaseException: `except Exception` misses it)."""


def current_trace_context() -> TraceContext:
    """The trace the running call belongs to.

    Example:
        >>> current_trace_context().trace_id is None      # outside any span or call
        True

    Inside a remote call: the context its caller sent. Elsewhere: the ids of
    the current span (both None outside any span).
    """
    sent = _TRACE.get()
    return sent if sent is not None else TraceContext.current()


def warm_state() -> Any:
    """The state the `setup` of the current actor pool worker built (a loaded model...).

    Example:
        ``pool = executor.actor_pool(load_model, size=2)``; a step running on
        `pool` calls ``model = warm_state()``.

    Raises:
        ExecutorError: not called inside a call of an actor pool.
    """
    state = getattr(_THREAD_WARM, "state", _NOTHING)
    if state is _NOTHING:
        state = _PROCESS_WARM[0]
    if state is _NOTHING:
        raise ExecutorError("warm_state() is only available inside a call of an actor pool")
    return state


def set_warm_state(state: Any, *, process_wide: bool) -> None:
    """Install the warm state of this pool worker (its process, or its thread)."""
    if process_wide:
        _PROCESS_WARM[0] = state
    else:
        _THREAD_WARM.state = state


def _reset_peak() -> bool:
    """Start a per-call peak: VmHWM back to the current RSS (Linux); False where refused."""
    try:
        with open("/proc/self/clear_refs", "wb", buffering=0) as fh:
            fh.write(b"5")
    except OSError:
        return False
    return True


def _peak_rss() -> int:
    """VmHWM of this process in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class _Monitor:
    """Samples the process's memory and CPU time during one call; breaks it when over.

    With a memory limit, the process's peak RSS is also checked when the call
    ends (`finish`), so a call shorter than `MONITOR_INTERVAL` is not missed.
    """

    def __init__(self, guard: Guard, target: int) -> None:
        import psutil

        self.per_call_peak = guard.memory is not None and _reset_peak()
        self.guard = guard
        self.target = target
        self.process = psutil.Process()
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.kind = ""
        self.limit: float | None = None
        self.measured: float | None = None
        times = self.process.cpu_times()
        self.cpu_start = times.user + times.system
        self.thread = threading.Thread(target=self._watch, daemon=True, name="zixir-exec-guard")

    def start(self) -> None:
        self.thread.start()

    def _watch(self) -> None:
        guard = self.guard
        while not self.stopped.wait(MONITOR_INTERVAL):
            if guard.memory is not None:
                rss = self.process.memory_info().rss
                if rss > guard.memory:
                    self._break("memory", guard.memory, rss)
                    break
            if guard.cpu_time is not None:
                times = self.process.cpu_times()
                used = times.user + times.system - self.cpu_start
                if used > guard.cpu_time:
                    self._break("cpu", guard.cpu_time, used)
                    break
        if self.kind and not self.stopped.wait(STUCK_GRACE):
            os._exit(70)  # the call is stuck in C code and ignores the exception

    def _break(self, kind: str, limit: float, measured: float) -> None:
        with self.lock:
            if self.stopped.is_set():
                return
            self.kind, self.limit, self.measured = kind, limit, measured
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.target),
                                                       ctypes.py_object(_LimitBroken))

    def stop(self) -> None:
        with self.lock:
            self.stopped.set()
            if self.kind:  # clear an exception that was set but not raised yet
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.target), None)
        self.thread.join()
        memory = self.guard.memory
        if memory is not None and not self.kind:
            # The peak since the call began (VmHWM), else the RSS now: a last sample.
            peak = _peak_rss() if self.per_call_peak else 0
            if not peak:
                with contextlib.suppress(Exception):
                    peak = self.process.memory_info().rss
            if peak > memory:
                self.kind, self.limit, self.measured = "memory", memory, peak


def _depth() -> int:
    frame, depth = sys._getframe(), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1  # type: ignore[assignment]
    return depth


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _failure(exc: BaseException, duration: float, node: str) -> Reply:
    blob: bytes | None
    try:
        blob = pickle.dumps(exc)
        pickle.loads(blob)
    except Exception:  # carried back as type, message and traceback only
        blob = None
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return Reply(False, kind="exception", error=blob, error_type=type(exc).__qualname__,
                 message=str(exc), traceback=text, duration=duration, pid=os.getpid(),
                 node=node)


def pack(args: tuple[Any, ...], kwargs: Mapping[str, Any] | None, trace: TraceContext,
         guard: Guard | None, collect: bool) -> list[Any]:
    """One call's arguments as the single argument of its Ray task (see `run_payload`).

    A list that Ray serializes with msgpack, in one piece: the arguments, if
    any, as one tuple (pickled, so each keeps its exact type), the trace ids
    as text, the guard, and `collect`: the caller exports spans, so those
    the call opens come back.
    """
    return [(args, dict(kwargs) if kwargs else None) if args or kwargs else None,
            trace.trace_id, trace.span_id, guard, collect]


_SCALARS = frozenset({type(None), bool, int, float})
_SMALL = 1024
"""Longest `str` or `bytes` result that comes back inside the reply's own bytes."""


def run_payload(fn: Callable[..., Any], payload: list[Any]) -> Any:
    """Run one call packed by `pack`, in a Ray worker; the reply for `reply_of`.

    A small plain value (None, a bool or number, a short `str` or `bytes`)
    without spans comes back as the pickled tuple ``(value, duration, pid,
    node)``: bytes, which Ray passes through without serializing them again;
    any other outcome as the `Reply` (Ray pickles it, a large value's
    buffers out of band).
    """
    given, trace_id, span_id, guard, collect = payload
    args, kwargs = given if given is not None else ((), None)
    trace = TraceContext(trace_id, span_id)
    parent = None
    if trace_id is not None and span_id is not None:
        parent = _parent(trace_id, span_id, collect)
    if parent is None:
        reply = _execute(fn, args, kwargs, trace, guard, "")
    else:
        try:
            reply = _execute(fn, args, kwargs, trace, guard, "")
        finally:
            spans = _collected(parent)
        if spans:
            return dataclasses.replace(reply, spans=spans)
    value = reply.value
    kind = type(value)
    if reply.ok and (kind in _SCALARS or (kind in (str, bytes) and len(value) <= _SMALL)):
        return pickle.dumps((value, reply.duration, reply.pid, reply.node),
                            pickle.HIGHEST_PROTOCOL)
    return reply


def execute_packed(payload: list[Any]) -> Any:
    """`run_payload` of a function that travels with its call: the payload's last item."""
    return run_payload(payload.pop(), payload)


def reply_of(result: Any) -> Reply | tuple[Any, float, int, str]:
    """What `run_payload` sent back: a `Reply`, or the tuple ``(value, duration, pid, node)``."""
    if type(result) is bytes:
        return pickle.loads(result)  # type: ignore[no-any-return]
    return result  # type: ignore[no-any-return]


class _Collector:
    """The exporter, in a worker process, that keeps each call's spans for its reply."""

    def export(self, record: Any) -> None:
        sink = _SPANS.get()
        if sink is not None:
            sink.append(record)

    def shutdown(self) -> None:
        return None


_SPANS: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar(
    "zixir_remote_spans", default=None)
_COLLECTOR: list[_Collector] = []


def _collect(trace: TraceContext | None) -> tuple[list[Any] | None, Any, Any] | None:
    """Make the caller's span the parent here and keep the spans the call ends."""
    if trace is None or trace.trace_id is None or trace.span_id is None:
        return None
    return _parent(trace.trace_id, trace.span_id, True)


def _parent(trace_id: str, span_id: str,
            collect: bool) -> tuple[list[Any] | None, Any, Any] | None:
    """Make the caller's span the parent here; with `collect`, keep the spans the call ends.

    Without `collect` (the caller has no span exporter: the records would be
    dropped there), the spans the call opens still carry the caller's trace.
    None for ids that are not hex (a hand-made `TraceContext`): they name no
    span, so the call runs without a parent, on Ray and in a worker process alike.
    """
    from zixir_actors.observability import _tracing

    try:
        parent = _tracing.remote_parent(trace_id, span_id)
    except ValueError:
        return None
    if not collect:
        return None, _tracing._CURRENT.set(parent), None
    if not _COLLECTOR:
        from zixir_actors.observability._exporters import add_exporter

        _COLLECTOR.append(add_exporter(_Collector()))
    sink: list[Any] = []
    return sink, _tracing._CURRENT.set(parent), _SPANS.set(sink)


def _collected(state: tuple[list[Any] | None, Any, Any]) -> tuple[Any, ...]:
    from zixir_actors.observability import _tracing

    sink, span_token, sink_token = state
    if sink_token is not None:
        _SPANS.reset(sink_token)
    with contextlib.suppress(ValueError):  # the call left another span current
        _tracing._CURRENT.reset(span_token)
    return tuple(_portable(record) for record in sink) if sink else ()


def _portable(record: Any) -> Any:
    """The record itself if it pickles; else with each unpicklable attribute value as text."""
    try:
        pickle.dumps(record)
        return record
    except Exception:
        events = tuple(dataclasses.replace(e, attributes=_plain(e.attributes))
                       for e in record.events)
        return dataclasses.replace(record, attributes=_plain(record.attributes), events=events)


def _plain(attributes: Mapping[str, Any]) -> dict[str, Any]:
    plain: dict[str, Any] = {}
    for key, value in attributes.items():
        try:
            pickle.dumps(value)
            plain[key] = value
        except Exception:
            plain[key] = repr(value)
    return plain


def execute(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any] | None,
            trace: TraceContext | None, guard: Guard | None, node: str = "", *,
            collect_spans: bool = False) -> Reply:
    """Run ``fn(*args, **kwargs)`` here under `guard`, with `trace` as the current context.

    Never raises for the call's own failures: they come back in the `Reply`.
    An ``async def`` function runs on its own event loop. With
    `collect_spans` (the call runs in another process than its caller), the
    spans it opens are children of the caller's span named by `trace`, and
    their records come back in ``Reply.spans``.
    """
    collecting = _collect(trace) if collect_spans else None
    reply = _execute(fn, args, kwargs, trace, guard, node)
    if collecting is None:
        return reply
    spans = _collected(collecting)
    return dataclasses.replace(reply, spans=spans) if spans else reply


def _execute(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any] | None,
             trace: TraceContext | None, guard: Guard | None, node: str) -> Reply:
    if not node:
        node = _HOST[0] or _host()
    token = _TRACE.set(trace)
    began = time.perf_counter()
    monitor: _Monitor | None = None
    old_depth: int | None = None
    try:
        try:
            if guard is not None and guard.max_depth is not None:
                old_depth = sys.getrecursionlimit()
                sys.setrecursionlimit(_depth() + guard.max_depth)
            if guard is not None and (guard.memory is not None or guard.cpu_time is not None):
                monitor = _Monitor(guard, threading.get_ident())
                monitor.start()
            try:
                value = fn(*args, **(kwargs or {}))
                if inspect.isawaitable(value):
                    value = asyncio.run(_await(value))
            finally:
                if monitor is not None:
                    monitor.stop()
                if old_depth is not None:
                    sys.setrecursionlimit(old_depth)
        except _LimitBroken:
            pass
        except RecursionError as exc:
            if old_depth is None:
                return _failure(exc, time.perf_counter() - began, node)
            return Reply(False, kind="depth", error_type="RecursionError", message=str(exc),
                         limit=guard.max_depth if guard else None,
                         duration=time.perf_counter() - began, pid=os.getpid(), node=node)
        except BaseException as exc:  # the call's failure is data for the caller
            if monitor is None or not monitor.kind:
                return _failure(exc, time.perf_counter() - began, node)
        duration = time.perf_counter() - began
        if monitor is not None and monitor.kind:
            return Reply(False, kind=monitor.kind, error_type="LimitExceeded",
                         message=f"{monitor.kind} limit {monitor.limit} broken "
                                 f"(measured {monitor.measured})",
                         limit=monitor.limit, measured=monitor.measured, duration=duration,
                         pid=os.getpid(), node=node)
        return Reply(True, value, duration=duration, pid=os.getpid(), node=node)
    finally:
        _TRACE.reset(token)
