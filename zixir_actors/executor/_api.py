"""The seam: `Executor`, `Resources`, `TraceContext`, `TaskFuture`."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar, runtime_checkable

from zixir_actors.errors import ConfigError, RemoteCancelledError, ZixirTimeoutError

__all__ = [
    "EXECUTOR_NAMES",
    "Executor",
    "ExecutorName",
    "Resources",
    "Source",
    "TaskFuture",
    "TraceContext",
]

T = TypeVar("T")

ExecutorName = Literal["local", "ray"]
"""The executors known by name: ``"local"`` (this process) and ``"ray"`` (a Ray cluster)."""
EXECUTOR_NAMES: tuple[str, ...] = ("local", "ray")


def _amount(field: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value < 0:
        raise ConfigError(field, value, "must be a finite number >= 0 or None")
    return value


@dataclass(frozen=True, slots=True)
class Resources:
    """What one remote call needs on its node (the Ray scheduler reserves it).

    Example:
        >>> Resources(num_cpus=2, memory="512MB").memory
        536870912
        >>> Resources(num_gpus=0.5, custom={"tpu": 1}).ray_options()
        {'num_gpus': 0.5, 'resources': {'tpu': 1}}

    `memory` is a reservation for scheduling (Ray's ``memory`` resource), not a
    limit; pass `Limits(memory=...)` to have a call stopped when it goes over.
    The local executor accepts and ignores them.

    Args:
        num_cpus: CPUs reserved (default: the engine's, 1 for a Ray task).
        num_gpus: GPUs reserved, fractions allowed (default 0).
        memory: bytes reserved: ``"2GB"`` (powers of 1024) or an int.
        custom: other named resources of the cluster.

    Raises:
        ConfigError: a negative or non-numeric amount, or a bad memory size.
    """

    num_cpus: float | None = None
    num_gpus: float | None = None
    memory: int | str | None = None
    custom: Mapping[str, float] | tuple[tuple[str, float], ...] | None = None

    def __post_init__(self) -> None:
        _amount("num_cpus", self.num_cpus)
        _amount("num_gpus", self.num_gpus)
        if self.memory is not None:
            from zixir_actors.sandbox._limits import parse_size

            object.__setattr__(self, "memory", parse_size(self.memory, field="memory"))
        if self.custom is not None:
            items = self.custom.items() if isinstance(self.custom, Mapping) else self.custom
            pairs = []
            for key, amount in items:
                if not isinstance(key, str) or not key:
                    raise ConfigError("custom", self.custom, "resource names must be strings")
                pairs.append((key, _amount(f"custom[{key!r}]", amount)))
            object.__setattr__(self, "custom", tuple(sorted(pairs)))

    def ray_options(self) -> dict[str, Any]:
        """These resources as keyword arguments of Ray's ``.options(...)``."""
        options: dict[str, Any] = {}
        if self.num_cpus is not None:
            options["num_cpus"] = self.num_cpus
        if self.num_gpus is not None:
            options["num_gpus"] = self.num_gpus
        if self.memory is not None:
            options["memory"] = self.memory
        if self.custom:
            options["resources"] = dict(self.custom)
        return options


@dataclass(frozen=True, slots=True)
class TraceContext:
    """The trace a remote call belongs to: it travels with the call.

    Example:
        >>> TraceContext("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331").traceparent
        '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'

    Inside the call, `current_trace_context()` returns it, so remote code can
    log or forward the ids (W3C ``traceparent`` format).
    """

    trace_id: str | None = None
    span_id: str | None = None

    @classmethod
    def current(cls) -> TraceContext:
        """The ids of the span current here (both None outside any span)."""
        from zixir_actors.observability import current_trace_ids

        trace_id, span_id = current_trace_ids()
        return cls(trace_id, span_id)

    @property
    def traceparent(self) -> str | None:
        """The W3C ``traceparent`` header value, or None without a trace."""
        if self.trace_id is None or self.span_id is None:
            return None
        return f"00-{self.trace_id}-{self.span_id}-01"


class Source(Protocol):
    """Where a `TaskFuture`'s outcome comes from when no thread of ours delivers it (Ray).

    `wait` blocks the waiting thread until the call ends (settling the
    future) or `timeout` passes; `watch` makes the future settle by itself
    (someone polls, adds a callback or awaits it, or dropped it); `cancel`
    ends the call, False if it had already ended. `watch` and `cancel` may
    be called more than once.
    """

    def wait(self, future: TaskFuture[Any], timeout: float | None) -> None: ...

    def watch(self, future: TaskFuture[Any]) -> None: ...

    def cancel(self, future: TaskFuture[Any]) -> bool: ...


class TaskFuture(Generic[T]):
    """The pending result of `Executor.submit`: ``get(timeout=...)``, ``await``, `cancel`.

    Example:
        >>> from zixir_actors.executor import LocalExecutor
        >>> LocalExecutor().submit(pow, 2, 10).get(timeout=5.0)
        1024

    After the call ended, `pid`, `node` and `remote_duration` say where it ran
    and how long it took there.
    """

    __slots__ = ("__weakref__", "_canceller", "_future", "_source", "executor", "label", "node",
                 "pid", "remote_duration")

    def __init__(self, label: str, executor: str,
                 canceller: Callable[[], bool] | None = None, *,
                 source: Source | None = None) -> None:
        self.label = label
        self.executor = executor
        self._future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._canceller = canceller
        self._source = source
        self.pid: int | None = None
        self.node: str | None = None
        self.remote_duration: float | None = None

    def __del__(self) -> None:
        # Dropped before anyone waited: its outcome must still be recorded (span, metrics).
        source = self._source
        if source is not None and not self._future.done():
            with contextlib.suppress(Exception):  # the cluster is gone (interpreter exit)
                source.watch(self)

    def __repr__(self) -> str:
        state = "done" if self._future.done() else "pending"
        return f"<TaskFuture {self.label!r} on {self.executor} {state}>"

    def done(self) -> bool:
        """True once the call has ended (or was cancelled or timed out)."""
        if self._future.done():
            return True
        if self._source is not None:
            self._source.watch(self)
        return self._future.done()

    def cancelled(self) -> bool:
        """True if `cancel()` ended the call."""
        return self._future.done() and isinstance(self._future.exception(), RemoteCancelledError)

    def get(self, *, timeout: float | None = None) -> T:
        """Wait for the call and return its value, or raise what it raised.

        Raises:
            ZixirTimeoutError: not ended within `timeout` seconds (the call goes on).
            RemoteTimeoutError: the call ran past its own `timeout` and was cancelled.
            RemoteLostError: its worker, actor or node died.
            RemoteMemoryError: it went over its memory limit.
            RemoteCancelledError: `cancel()` was called.
            ClusterConnectionError: the cluster was lost.
            Exception: what the call raised, as itself (``remote_traceback`` attached).
        """
        if not self._wait(timeout):
            raise ZixirTimeoutError(f"remote call {self.label!r}", timeout)
        return self._future.result(0)

    def exception(self, *, timeout: float | None = None) -> BaseException | None:
        """Wait for the call; its exception, or None if it returned (same waits as `get`)."""
        if not self._wait(timeout):
            raise ZixirTimeoutError(f"remote call {self.label!r}", timeout)
        return self._future.exception(0)

    def _wait(self, timeout: float | None) -> bool:
        """Wait up to `timeout` seconds for the call to end; False if it has not."""
        future = self._future
        if future.done():
            return True
        if self._source is not None:  # the waiting thread takes the reply itself
            self._source.wait(self, timeout)
            return future.done()
        try:  # returns the call's own exception: a TimeoutError here is the wait's
            future.exception(timeout)
        except concurrent.futures.TimeoutError:
            return False
        return True

    def cancel(self) -> bool:
        """Stop the call (a Ray task is killed); False if it had already ended.

        `get()` then raises `RemoteCancelledError`.
        """
        if self._source is not None:
            return self._source.cancel(self)
        if self._canceller is not None:
            return bool(self._canceller())
        return self._settle(error=RemoteCancelledError(self.label))

    def add_done_callback(self, fn: Callable[[TaskFuture[T]], object]) -> None:
        """Call ``fn(self)`` when the call ends (at once if it has)."""
        if self._source is not None and not self._future.done():
            self._source.watch(self)
        self._future.add_done_callback(lambda _: fn(self))

    def __await__(self) -> Generator[Any, None, T]:
        if self._source is not None and not self._future.done():
            self._source.watch(self)
        return asyncio.wrap_future(self._future).__await__()

    def _settle(self, value: Any = None, error: BaseException | None = None) -> bool:
        """Resolve the future; False if it was resolved already (the first outcome wins)."""
        try:
            if error is not None:
                self._future.set_exception(error)
            else:
                self._future.set_result(value)
        except concurrent.futures.InvalidStateError:
            return False
        return True


@runtime_checkable
class Executor(Protocol):
    """Where calls run: `LocalExecutor` (this process) or `RayExecutor` (a Ray cluster).

    Example:
        >>> from zixir_actors.executor import LocalExecutor, Resources
        >>> executor = LocalExecutor()
        >>> executor.submit(sum, [1, 2, 3], resources=Resources(num_cpus=1)).get(timeout=5.0)
        6

    `submit(fn, *args, kwargs=..., resources=..., timeout=..., limits=...,
    trace_context=..., label=...)` returns a `TaskFuture` at once.
    `timeout` ends the call (a Ray task is cancelled with ``force=True``);
    `limits` (a `zixir_actors.sandbox.Limits`: `memory`, `cpu_time`,
    `max_depth`, `timeout`) are enforced where the call runs; `trace_context`
    defaults to the current span's ids. Retries are not the executor's job:
    the caller's `RetryPolicy` decides.
    """

    @property
    def name(self) -> str: ...

    def submit(self, fn: Callable[..., T], /, *args: Any,
               kwargs: Mapping[str, Any] | None = None, resources: Resources | None = None,
               timeout: float | None = None, limits: Any = None,
               trace_context: TraceContext | None = None,
               label: str | None = None) -> TaskFuture[T]: ...

    def shutdown(self, *, timeout: float | None = None) -> None: ...
