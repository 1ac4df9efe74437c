"""How the services use an executor: a workflow step, a sandboxed call, a stream stage."""

from __future__ import annotations

import concurrent.futures
import functools
import threading
from collections.abc import Callable, Mapping
from typing import Any

from zixir_actors.errors import (
    ClusterConnectionError,
    ExecutorUnavailableError,
    RemoteCancelledError,
    RemoteError,
    RemoteLimitError,
    RemoteLostError,
    RemoteMemoryError,
    RemoteTimeoutError,
    SandboxError,
    StepTimeoutError,
)
from zixir_actors.executor._api import Executor, Resources, TaskFuture
from zixir_actors.executor._select import is_executor_choice, offload
from zixir_actors.result import Err, Ok, Result
from zixir_actors.sandbox import out_of_memory

__all__ = [
    "InFlight",
    "SandboxOffload",
    "call_step",
    "remote_callable",
    "run_sandboxed",
    "sandbox_error",
    "submit_sandboxed",
]


class InFlight:
    """The executor calls of one run that have not ended: its `stop` cancels them.

    Example:
        >>> calls = InFlight()
        >>> calls.cancel_all()   # the run ended: later calls are cancelled as they start
        0

    A run (DAG or code-first) keeps one and gives it to `call_step`; when the
    run is cancelled or times out, `cancel_all` cancels every remote call
    still running (a Ray task is killed) instead of leaving it running,
    abandoned, and any call submitted afterwards is cancelled at once.
    """

    __slots__ = ("_closed", "_futures", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._futures: set[TaskFuture[Any]] = set()
        self._closed = False

    def add(self, future: TaskFuture[Any]) -> None:
        with self._lock:
            if not self._closed:
                self._futures.add(future)
                return
        future.cancel()

    def discard(self, future: TaskFuture[Any]) -> None:
        with self._lock:
            self._futures.discard(future)

    def cancel_all(self) -> int:
        """Cancel the calls in flight (and every later one); how many were cancelled."""
        with self._lock:
            self._closed = True
            futures, self._futures = self._futures, set()
        return sum(1 for future in futures if future.cancel())


def call_step(executor: Executor, fn: Callable[..., Any], call: Mapping[str, Any], *,
              step: str, timeout: float | None = None, limits: Any = None,
              resources: Resources | None = None, inflight: InFlight | None = None) -> Any:
    """Run one attempt of a workflow step on `executor` and return its output.

    Failures raise, exactly as a local attempt does, for the step's
    `RetryPolicy`: the step's own exception as itself; `StepTimeoutError`
    after `timeout` (the remote task is cancelled); `RemoteLostError` when its
    worker or node died; with `limits`, the `SandboxError` of a sandboxed step
    (``kind="memory"``...); `RemoteCancelledError` when `inflight` (the
    run's calls) was cancelled because the run ended.
    """
    if limits is not None:
        if timeout is not None and getattr(limits, "timeout", None) is None:
            import dataclasses

            limits = dataclasses.replace(limits, timeout=timeout)
        outcome = run_sandboxed(executor, fn, (), call, limits, resources=resources, label=step,
                                inflight=inflight)
        if isinstance(outcome, Ok):
            return outcome.value
        raise outcome.error
    future = executor.submit(fn, kwargs=call, timeout=timeout, resources=resources, label=step)
    if inflight is not None:
        inflight.add(future)
    try:
        return future.get()
    except RemoteTimeoutError:
        raise StepTimeoutError(step, timeout) from None  # type: ignore[arg-type]
    finally:
        if inflight is not None:
            inflight.discard(future)


def sandbox_error(error: BaseException) -> SandboxError:
    """A remote call's failure as the `SandboxError` a sandboxed call returns."""
    if isinstance(error, RemoteMemoryError):
        return SandboxError("memory", str(error), limit=error.limit, measured=error.measured)
    if isinstance(error, RemoteTimeoutError):
        return SandboxError("timeout", str(error), limit=error.timeout)
    if isinstance(error, RemoteLimitError):
        return SandboxError(error.kind, str(error), limit=error.limit, measured=error.measured)
    if isinstance(error, (RemoteLostError, RemoteCancelledError)):
        return SandboxError("crashed", str(error))
    if out_of_memory(error):
        return SandboxError("memory", f"an allocation failed: {type(error).__qualname__}: "
                            f"{error}", remote_type=type(error).__qualname__, cause=error)
    if isinstance(error, RecursionError):
        return SandboxError("depth", str(error), remote_type="RecursionError", cause=error)
    if isinstance(error, RemoteError):
        return SandboxError("exception", error.message, remote_type=error.remote_type,
                            remote_traceback=error.remote_traceback)
    return SandboxError("exception", f"{type(error).__qualname__}: {error}",
                        remote_type=type(error).__qualname__,
                        remote_traceback=getattr(error, "remote_traceback", None), cause=error)


def run_sandboxed(executor: Executor, fn: Callable[..., Any], args: tuple[Any, ...] = (),
                  kwargs: Mapping[str, Any] | None = None, limits: Any = None, *,
                  resources: Resources | None = None, label: str | None = None,
                  inflight: InFlight | None = None) -> Result[Any, SandboxError]:
    """A sandboxed call on `executor`: `Ok(value)` or `Err(SandboxError)`; the call never raises.

    Example:
        >>> from zixir_actors.executor import LocalExecutor
        >>> run_sandboxed(LocalExecutor(), int, ("7",))
        Ok(value=7)

    The `Limits` go with the call: `timeout` cancels it, `memory` and
    `cpu_time` are sampled in its worker and `max_depth` caps its recursion;
    breaking one is ``Err(SandboxError(kind=...))`` as in a local sandbox.
    (`max_cpu_percent` and `max_nesting` are for local sandboxes only.)

    Raises:
        ClusterConnectionError: the cluster is unreachable (not a result of the call).
        ExecutorUnavailableError: the executor's library is missing.
    """
    future: TaskFuture[Any] | None = None
    try:
        future = executor.submit(fn, *args, kwargs=kwargs, limits=limits, resources=resources,
                                 label=label)
        if inflight is not None:
            inflight.add(future)
        return Ok(future.get())
    except (ClusterConnectionError, ExecutorUnavailableError):
        raise
    except Exception as exc:  # the call's failure is data
        return Err(sandbox_error(exc))
    finally:
        if inflight is not None and future is not None:
            inflight.discard(future)


def submit_sandboxed(executor: Executor, fn: Callable[..., Any], args: tuple[Any, ...] = (),
                     kwargs: Mapping[str, Any] | None = None, limits: Any = None, *,
                     resources: Resources | None = None, label: str | None = None
                     ) -> concurrent.futures.Future[Result[Any, SandboxError]]:
    """`run_sandboxed` without waiting: a future of the `Ok` or `Err`.

    Example:
        >>> from zixir_actors.executor import LocalExecutor
        >>> submit_sandboxed(LocalExecutor(), abs, (-2,)).result(timeout=5.0)
        Ok(value=2)

    Raises:
        ClusterConnectionError: the cluster is unreachable (now, or from the future).
        ExecutorUnavailableError: the executor's library is missing.
    """
    out: concurrent.futures.Future[Result[Any, SandboxError]] = concurrent.futures.Future()
    try:
        future = executor.submit(fn, *args, kwargs=kwargs, limits=limits, resources=resources,
                                 label=label)
    except (ClusterConnectionError, ExecutorUnavailableError):
        raise
    except Exception as exc:  # refused before it ran: still the call's outcome
        out.set_result(Err(sandbox_error(exc)))
        return out

    def settle(done: Any) -> None:
        error = done.exception()
        if error is None:
            out.set_result(Ok(done.get()))
        elif isinstance(error, ClusterConnectionError):
            out.set_exception(error)
        else:
            out.set_result(Err(sandbox_error(error)))

    future.add_done_callback(settle)
    return out


def remote_callable(fn: Callable[..., Any], executor: Executor, *,
                    resources: Resources | None = None,
                    timeout: float | None = None) -> Callable[..., Any]:
    """`fn`, but each call runs on `executor` and the caller waits for it.

    Example:
        >>> from zixir_actors.executor import LocalExecutor
        >>> remote_callable(str.upper, LocalExecutor())("ok")
        'OK'

    A stream stage with N workers calls this from each of them, so no more
    than N calls are in flight at once: the stage's backpressure holds.
    """
    label = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", "call")

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        return executor.submit(fn, *args, kwargs=kwargs, resources=resources, timeout=timeout,
                               label=label).get()

    return call


class SandboxOffload:
    """How a `Sandbox` with ``executor=`` reaches executors (a `zixir_actors.sandbox.Offload`).

    Registered by `zixir_actors.executor` when it is imported, so the sandbox
    never imports the executor package: the dependency points one way.
    """

    def accepts(self, choice: Any) -> bool:
        """True for None, ``"local"``, ``"ray"`` or an `Executor`."""
        return is_executor_choice(choice)

    def target(self, choice: Any) -> Executor | None:
        """The executor calls go to, or None for this machine's sandbox workers.

        Raises:
            ConfigError: an unknown executor name.
            ExecutorUnavailableError: ``"ray"`` without Ray installed.
            ClusterConnectionError: the Ray cluster cannot be reached.
        """
        return offload(choice)

    def run(self, target: Executor, fn: Callable[..., Any], args: tuple[Any, ...],
            kwargs: Mapping[str, Any] | None, limits: Any, *,
            label: str) -> Result[Any, SandboxError]:
        """`run_sandboxed` on `target`."""
        return run_sandboxed(target, fn, args, kwargs, limits, label=label)

    def submit(self, target: Executor, fn: Callable[..., Any], args: tuple[Any, ...],
               kwargs: Mapping[str, Any] | None, limits: Any, *, label: str
               ) -> concurrent.futures.Future[Result[Any, SandboxError]]:
        """`submit_sandboxed` on `target`."""
        return submit_sandboxed(target, fn, args, kwargs, limits, label=label)
