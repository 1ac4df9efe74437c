"""What both executors share: argument checks, call deadlines, turning a `Reply` into an outcome."""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import pickle
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from zixir_actors.errors import (
    ConfigError,
    RemoteError,
    RemoteLimitError,
    RemoteMemoryError,
)
from zixir_actors.executor._api import Resources, TaskFuture, TraceContext
from zixir_actors.executor._remote import Reply
from zixir_actors.executor._telemetry import Call, Telemetry

__all__ = ["Deadlines", "check_submit", "error_of", "finish", "finish_where", "label_of",
           "settle_reply"]


def label_of(fn: Any, label: str | None) -> str:
    """The name a call goes by in spans, metrics and errors."""
    if label is not None:
        return label
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) \
        or type(fn).__name__


def check_submit(fn: Any, kwargs: Any, resources: Any, timeout: Any,
                 trace_context: Any) -> None:
    """Reject bad `submit` arguments with a `ConfigError` naming the argument."""
    if not callable(fn):
        raise ConfigError("fn", fn, "must be callable")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise ConfigError("kwargs", kwargs, "must be a mapping of argument names to values")
    if resources is not None and not isinstance(resources, Resources):
        raise ConfigError("resources", resources, "must be a zixir_actors.executor.Resources")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not 0 < timeout < math.inf):
        raise ConfigError("timeout", timeout, "must be a number of seconds > 0 or None")
    if trace_context is not None and not isinstance(trace_context, TraceContext):
        raise ConfigError("trace_context", trace_context, "must be a TraceContext or None")


class Deadlines:
    """Fires callbacks at deadlines from one thread, which exits whenever nothing is pending.

    Example:
        ``entry = deadlines.add(2.5, expire)``; ``deadlines.discard(entry)``
        when the call ended first.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._heap: list[list[Any]] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, delay: float, fn: Callable[[], object]) -> list[Any]:
        entry = [time.monotonic() + delay, next(self._seq), fn, True]
        with self._cond:
            heapq.heappush(self._heap, entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name=f"zixir-exec-deadlines-{self.name}")
                self._thread.start()
            else:
                self._cond.notify()
        return entry

    def discard(self, entry: list[Any]) -> None:
        with self._cond:
            entry[3] = False
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._heap and not self._heap[0][3]:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._thread = None
                    return
                wait = self._heap[0][0] - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                entry = heapq.heappop(self._heap)
            entry[2]()


def error_of(reply: Reply, label: str, executor: str) -> BaseException:
    """The exception a failed `Reply` stands for, raised by `TaskFuture.get`."""
    if reply.kind == "memory":
        measured = int(reply.measured) if reply.measured is not None else None
        return RemoteMemoryError(label, executor, int(reply.limit or 0), measured)
    if reply.kind in ("cpu", "depth"):
        return RemoteLimitError(label, executor, reply.kind, reply.limit, reply.measured)
    error: BaseException | None = None
    if reply.error is not None:
        try:
            error = pickle.loads(reply.error)
        except Exception:
            error = None
    if error is None:
        return RemoteError(label, reply.error_type, reply.message, reply.traceback)
    with contextlib.suppress(AttributeError):  # an exception type with __slots__
        error.remote_traceback = reply.traceback  # type: ignore[attr-defined]
    add_note = getattr(error, "add_note", None)
    if add_note is not None:
        add_note(f"(raised in remote call {label!r} on {executor}, pid {reply.pid}; "
                 "remote traceback:)\n" + reply.traceback.rstrip())
    return error


def finish(future: TaskFuture[Any], call: Call, telemetry: Telemetry, outcome: str, *,
           value: Any = None, error: BaseException | None = None,
           reply: Reply | None = None) -> bool:
    """Settle `future` and record the call, unless an earlier outcome won (timeout, cancel)."""
    if reply is None:
        if not future._settle(value, error):
            return False
        telemetry.end(call, outcome, error=error)
        return True
    return finish_where(future, call, telemetry, outcome, value, error, reply.duration,
                        reply.pid, reply.node)


def finish_where(future: TaskFuture[Any], call: Call, telemetry: Telemetry, outcome: str,
                 value: Any, error: BaseException | None, duration: float, pid: int,
                 node: str) -> bool:
    """`finish` for a call that ran somewhere: `duration` seconds, in process `pid` on `node`."""
    future.pid, future.node, future.remote_duration = pid, node, duration
    if not future._settle(value, error):
        return False
    telemetry.end(call, outcome, error=error, remote_duration=duration, pid=pid, node=node)
    return True


def settle_reply(future: TaskFuture[Any], call: Call, telemetry: Telemetry, reply: Reply,
                 executor: str) -> bool:
    """Settle `future` from the worker's `Reply` (exporting the spans the call opened there)."""
    if reply.spans:
        from zixir_actors.observability._tracing import export_record

        for record in reply.spans:
            export_record(record)
    if reply.ok:
        return finish(future, call, telemetry, "ok", value=reply.value, reply=reply)
    outcome = "error" if reply.kind == "exception" else reply.kind
    return finish(future, call, telemetry, outcome,
                  error=error_of(reply, call.label, executor), reply=reply)
