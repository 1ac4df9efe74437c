"""`LocalExecutor`: calls on this machine, in a thread each or in a pool of worker processes."""

from __future__ import annotations

import concurrent.futures
import contextvars
import dataclasses
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from zixir_actors.errors import (
    ConfigError,
    ExecutorError,
    RemoteCancelledError,
    RemoteError,
    RemoteLimitError,
    RemoteLostError,
    RemoteMemoryError,
    RemoteTimeoutError,
)
from zixir_actors.executor._api import Resources, TaskFuture, TraceContext
from zixir_actors.executor._core import Deadlines, check_submit, finish, label_of, settle_reply
from zixir_actors.executor._remote import Guard, Reply, execute, guard_of, set_warm_state
from zixir_actors.executor._telemetry import Call, Telemetry
from zixir_actors.result import Ok
from zixir_actors.sandbox import Limits, WorkerPool

__all__ = ["LocalActorPool", "LocalExecutor"]

T = TypeVar("T")


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


class _Submitter:
    """Deadlines, cancellation and telemetry around one executor's calls."""

    name = "local"

    def __init__(self) -> None:
        self._telemetry = Telemetry(self.name)
        self._deadlines = Deadlines(self.name)

    def _begin(self, fn: Any, kwargs: Any, resources: Any, timeout: Any, limits: Any,
               trace_context: Any, label: str | None, *, deadline: bool = True
               ) -> tuple[TaskFuture[Any], Call, Guard | None, float | None]:
        check_submit(fn, kwargs, resources, timeout, trace_context)
        if timeout is None and limits is not None:
            timeout = getattr(limits, "hard_timeout", None)
        name = label_of(fn, label)
        call = self._telemetry.begin(name, trace_context)
        holder: list[TaskFuture[Any]] = []
        future: TaskFuture[Any] = TaskFuture(name, self.name,
                                             canceller=lambda: self._cancel(holder[0], call))
        holder.append(future)
        if timeout is not None and deadline:
            entry = self._deadlines.add(timeout, lambda: self._expire(future, call, timeout))
            future.add_done_callback(lambda _: self._deadlines.discard(entry))
        return future, call, guard_of(limits), timeout

    def _expire(self, future: TaskFuture[Any], call: Call, timeout: float) -> None:
        # A thread cannot be killed: the call is abandoned and its result dropped.
        finish(future, call, self._telemetry, "timeout",
               error=RemoteTimeoutError(call.label, self.name, timeout))

    def _cancel(self, future: TaskFuture[Any], call: Call) -> bool:
        return finish(future, call, self._telemetry, "cancelled",
                      error=RemoteCancelledError(call.label))

    def _settled(self, future: TaskFuture[Any], call: Call,
                 done: concurrent.futures.Future[Any]) -> None:
        try:
            reply: Reply = done.result()
        except BaseException as exc:  # a bug of ours, not of the call: still an outcome
            finish(future, call, self._telemetry, "error", error=exc)
            return
        settle_reply(future, call, self._telemetry, reply, self.name)


class LocalExecutor(_Submitter):
    """Runs calls on this machine: the default executor, no Ray needed.

    Example:
        >>> executor = LocalExecutor()
        >>> executor.submit(divmod, 7, 2).get(timeout=5.0)
        (3, 1)
        >>> with LocalExecutor(processes=2) as procs:
        ...     procs.submit(lambda x: x * x, 12).get(timeout=60.0)
        144

    By default each call runs in a thread of its own, in the caller's context
    (so the current span is the parent of what the call opens). With
    ``processes=N`` calls run in N sandbox worker processes (a private
    `zixir_actors.sandbox.WorkerPool`; functions and arguments travel with
    dill): `limits` are enforced there and a call past its `timeout` is
    killed with its process. In a thread, a call past its `timeout` is
    abandoned: its future fails with `RemoteTimeoutError` at once and its
    result is dropped (a thread cannot be killed). A call with `limits` that
    a thread cannot enforce (memory, CPU time, depth) goes to one sandbox
    worker process even without `processes` (`shutdown` ends it).

    Args:
        processes: worker processes (default None: a thread per call).

    Raises:
        ConfigError: `processes` is not a positive int.
    """

    def __init__(self, *, processes: int | None = None) -> None:
        super().__init__()
        if processes is not None and (isinstance(processes, bool)
                                      or not isinstance(processes, int) or processes < 1):
            raise ConfigError("processes", processes, "must be a positive int or None")
        self.processes = processes
        self._pool: WorkerPool | None = None
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        mode = f"processes={self.processes}" if self.processes else "threads"
        return f"<LocalExecutor {mode}>"

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def submit(self, fn: Callable[..., T], /, *args: Any,
               kwargs: Mapping[str, Any] | None = None, resources: Resources | None = None,
               timeout: float | None = None, limits: Any = None,
               trace_context: TraceContext | None = None,
               label: str | None = None) -> TaskFuture[T]:
        """Start ``fn(*args, **kwargs)`` and return its `TaskFuture` (see `Executor`).

        Raises:
            ConfigError: a bad argument.
            ExecutorError: the executor was shut down.
        """
        if self._closed:
            raise ExecutorError("the local executor was shut down")
        threaded = self.processes is None and guard_of(limits) is None
        future, call, _, timeout = self._begin(fn, kwargs, resources, timeout, limits,
                                               trace_context, label, deadline=threaded)
        if threaded:
            context = contextvars.copy_context()
            threading.Thread(target=context.run, daemon=True, name=f"zixir-exec-{call.label}",
                             args=(self._in_thread, future, call, fn, args, kwargs)).start()
            return future
        # A sandbox worker enforces the limits and the timeout, killing the process.
        use = limits if limits is not None else Limits()
        if timeout is not None and use.hard_timeout != timeout:
            use = dataclasses.replace(use, timeout=timeout, soft_timeout=None)
        done = self._worker_pool().submit(execute, (fn, args, kwargs, call.trace, None),
                                          {"collect_spans": True}, use)
        done.add_done_callback(lambda d: self._pooled(future, call, d))
        return future

    def _in_thread(self, future: TaskFuture[Any], call: Call, fn: Callable[..., Any],
                   args: tuple[Any, ...], kwargs: Mapping[str, Any] | None) -> None:
        settle_reply(future, call, self._telemetry, execute(fn, args, kwargs, call.trace, None),
                     self.name)

    def _pooled(self, future: TaskFuture[Any], call: Call,
                done: concurrent.futures.Future[Any]) -> None:
        try:
            outcome = done.result()
        except BaseException as exc:  # the pool was closed under the call
            finish(future, call, self._telemetry, "lost",
                   error=RemoteLostError(call.label, self.name, "worker", str(exc)))
            return
        if isinstance(outcome, Ok):
            settle_reply(future, call, self._telemetry, outcome.value, self.name)
            return
        error = outcome.error
        kind, label = error.kind, call.label
        if kind == "timeout":
            failure: BaseException = RemoteTimeoutError(label, self.name, error.limit)
        elif kind == "memory":
            failure = RemoteMemoryError(label, self.name, _int(error.limit), _int(error.measured))
        elif kind in ("cpu", "depth"):
            failure = RemoteLimitError(label, self.name, kind, error.limit, error.measured)
        elif kind == "crashed":
            failure = RemoteLostError(label, self.name, "worker", error.message)
            kind = "lost"
        else:
            failure = RemoteError(label, error.remote_type or kind, error.message,
                                  error.remote_traceback or "")
            kind = "error"
        finish(future, call, self._telemetry, kind, error=failure)

    def _worker_pool(self) -> Any:
        with self._lock:
            if self._pool is None:
                self._pool = WorkerPool(size=self.processes or 1, name="executor.local")
            return self._pool

    def actor_pool(self, setup: Callable[[], Any], *, size: int = 1) -> LocalActorPool:
        """A pool of `size` worker threads, each keeping what `setup()` built (see `warm_state`)."""
        return LocalActorPool(setup, size=size)

    def shutdown(self, *, timeout: float | None = None) -> None:
        """End the worker processes (threads of running calls finish on their own). Idempotent.

        A process call still running is abandoned with its process.
        """
        self._closed = True
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close(timeout=timeout if timeout is not None else 5.0)


class LocalActorPool(_Submitter):
    """`size` long-lived worker threads, each with the warm state its `setup()` built.

    Example:
        >>> from zixir_actors.executor import warm_state
        >>> with LocalActorPool(lambda: {"model": "tiny"}, size=2) as pool:
        ...     pool.submit(lambda: warm_state()["model"]).get(timeout=5.0)
        'tiny'

    The local twin of `RayActorPool`: calls queue until a worker is free.

    Args:
        setup: builds a worker's state, once per worker.
        size: workers.

    Raises:
        ConfigError: `setup` is not callable or `size` is not a positive int.
    """

    def __init__(self, setup: Callable[[], Any], *, size: int = 1) -> None:
        super().__init__()
        if not callable(setup):
            raise ConfigError("setup", setup, "must be callable")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError("size", size, "must be a positive int")
        self.size = size
        self._threads = concurrent.futures.ThreadPoolExecutor(
            max_workers=size, thread_name_prefix="zixir-exec-pool",
            initializer=lambda: set_warm_state(setup(), process_wide=False))

    def __enter__(self) -> LocalActorPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def submit(self, fn: Callable[..., T], /, *args: Any,
               kwargs: Mapping[str, Any] | None = None, resources: Resources | None = None,
               timeout: float | None = None, limits: Any = None,
               trace_context: TraceContext | None = None,
               label: str | None = None) -> TaskFuture[T]:
        """Queue ``fn(*args, **kwargs)`` for the next free worker (see `Executor.submit`)."""
        future, call, _, _ = self._begin(fn, kwargs, resources, timeout, limits,
                                         trace_context, label)
        context = contextvars.copy_context()
        try:
            done = self._threads.submit(context.run, execute, fn, args, kwargs, call.trace, None)
        except RuntimeError as exc:  # shut down
            self._cancel(future, call)
            raise ExecutorError("the actor pool was shut down") from exc
        done.add_done_callback(lambda d: self._settled(future, call, d))
        return future

    def shutdown(self, *, timeout: float | None = None) -> None:
        """Stop the workers after the calls already queued. Idempotent."""
        self._threads.shutdown(wait=True, cancel_futures=True)
