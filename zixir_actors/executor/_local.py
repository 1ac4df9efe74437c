"""`LocalExecutor`: calls on this machine, in a thread each or in a pool of worker processes."""

from __future__ import annotations

import concurrent.futures
import contextvars
import multiprocessing
import threading
from collections.abc import Callable, Mapping
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

import dill

from zixir_actors.errors import (
    ConfigError,
    ExecutorError,
    RemoteCancelledError,
    RemoteLostError,
    RemoteTimeoutError,
)
from zixir_actors.executor._api import Resources, TaskFuture, TraceContext
from zixir_actors.executor._core import Deadlines, check_submit, finish, label_of, settle_reply
from zixir_actors.executor._remote import Guard, Reply, execute, guard_of, set_warm_state
from zixir_actors.executor._telemetry import Call, Telemetry

__all__ = ["LocalActorPool", "LocalExecutor"]

T = TypeVar("T")


def _run_blob(blob: bytes) -> bytes:
    """In a worker process: run a dill-encoded call, return its dill-encoded `Reply`."""
    fn, args, kwargs, trace, guard = dill.loads(blob)
    reply = execute(fn, args, kwargs, trace, guard)
    try:
        return dill.dumps(reply)  # type: ignore[no-any-return]
    except Exception as exc:
        return dill.dumps(Reply(False, kind="exception", error_type=type(exc).__qualname__,  # type: ignore[no-any-return]
                                message=f"the result could not be pickled: {exc}",
                                duration=reply.duration, pid=reply.pid, node=reply.node))


class _Submitter:
    """Deadlines, cancellation and telemetry around one executor's calls."""

    name = "local"

    def __init__(self) -> None:
        self._telemetry = Telemetry(self.name)
        self._deadlines = Deadlines(self.name)

    def _begin(self, fn: Any, kwargs: Any, resources: Any, timeout: Any, limits: Any,
               trace_context: Any, label: str | None
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
        if timeout is not None:
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
                 done: concurrent.futures.Future[Any], decode: bool) -> None:
        try:
            raw = done.result()
        except BrokenProcessPool as exc:
            finish(future, call, self._telemetry, "lost",
                   error=RemoteLostError(call.label, self.name, "worker", str(exc)))
            return
        except BaseException as exc:  # a bug of ours, not of the call: still an outcome
            finish(future, call, self._telemetry, "error", error=exc)
            return
        reply: Reply = dill.loads(raw) if decode else raw
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
    ``processes=N`` calls run in N worker processes (functions and arguments
    travel with dill): `limits` (memory, CPU time, depth) are enforced there.
    A call past its `timeout` is abandoned: its future fails with
    `RemoteTimeoutError` at once and its result is dropped (a thread cannot
    be killed; use a `Sandbox` for calls that must be).

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
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
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
            ConfigError: a bad argument, or (processes) a call dill cannot pickle.
            ExecutorError: the executor was shut down.
        """
        if self._closed:
            raise ExecutorError("the local executor was shut down")
        future, call, guard, _ = self._begin(fn, kwargs, resources, timeout, limits,
                                             trace_context, label)
        if self.processes is None:
            context = contextvars.copy_context()
            threading.Thread(target=context.run, daemon=True, name=f"zixir-exec-{call.label}",
                             args=(self._in_thread, future, call, fn, args, kwargs)).start()
            return future
        try:
            blob = dill.dumps((fn, args, dict(kwargs or {}), call.trace, guard), recurse=True)
        except Exception as exc:
            self._cancel(future, call)
            raise ConfigError("fn", fn, f"the call cannot be pickled with dill: {exc}") from exc
        done = self._process_pool().submit(_run_blob, blob)
        done.add_done_callback(lambda d: self._settled(future, call, d, True))
        return future

    def _in_thread(self, future: TaskFuture[Any], call: Call, fn: Callable[..., Any],
                   args: tuple[Any, ...], kwargs: Mapping[str, Any] | None) -> None:
        settle_reply(future, call, self._telemetry, execute(fn, args, kwargs, call.trace, None),
                     self.name)

    def _process_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        with self._lock:
            pool = self._pool
            if pool is None or getattr(pool, "_broken", False):
                # spawn: a fork of a process full of actor threads can deadlock
                pool = self._pool = concurrent.futures.ProcessPoolExecutor(
                    max_workers=self.processes, mp_context=multiprocessing.get_context("spawn"))
            return pool

    def actor_pool(self, setup: Callable[[], Any], *, size: int = 1) -> LocalActorPool:
        """A pool of `size` worker threads, each keeping what `setup()` built (see `warm_state`)."""
        return LocalActorPool(setup, size=size)

    def shutdown(self, *, timeout: float | None = None) -> None:
        """End the worker processes (threads of running calls finish on their own). Idempotent."""
        self._closed = True
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


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
        done.add_done_callback(lambda d: self._settled(future, call, d, False))
        return future

    def shutdown(self, *, timeout: float | None = None) -> None:
        """Stop the workers after the calls already queued. Idempotent."""
        self._threads.shutdown(wait=True, cancel_futures=True)
