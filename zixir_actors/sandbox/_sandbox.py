"""`Sandbox`: run a call in a worker process under `Limits`, get `Ok` or `Err` back."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

import pykka

from zixir_actors.errors import (
    ConfigError,
    NotStartedError,
    SandboxClosedError,
    SandboxError,
    ZixirTimeoutError,
)
from zixir_actors.result import Result
from zixir_actors.sandbox._limits import Limits
from zixir_actors.sandbox._offload import Offload, accepts_executor, route
from zixir_actors.sandbox._pool import WorkerPool

__all__ = ["DEFAULT_RESOLVE_TIMEOUT", "Sandbox", "SandboxFuture"]

DEFAULT_RESOLVE_TIMEOUT = 5.0
"""Seconds to wait for a named `SandboxPool` actor to hand over its workers."""


class SandboxFuture:
    """The pending outcome of `Sandbox.run_async`: `.get(timeout)` or ``await`` it.

    Example:
        >>> with Sandbox(Limits(timeout=10)) as sandbox:
        ...     future = sandbox.run_async(sum, [1, 2, 3])
        ...     future.get(10)
        Ok(value=6)
    """

    __slots__ = ("_future",)

    def __init__(self, future: concurrent.futures.Future[Result[Any, SandboxError]]) -> None:
        self._future = future

    def done(self) -> bool:
        """True once the call has ended (with `Ok` or `Err`)."""
        return self._future.done()

    def get(self, timeout: float | None = None) -> Result[Any, SandboxError]:
        """Block until the call ends and return its `Ok` or `Err`.

        Raises:
            ZixirTimeoutError: the call did not end within `timeout` seconds
                (it goes on; get again later).
            SandboxClosedError: the sandbox was closed before the call started.
        """
        try:
            return self._future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise ZixirTimeoutError("sandboxed call", timeout) from None

    def __await__(self) -> Generator[Any, None, Result[Any, SandboxError]]:
        return asyncio.wrap_future(self._future).__await__()


class Sandbox:
    """Runs calls in child processes with time, memory, CPU and depth limits.

    Example:
        >>> from zixir_actors.sandbox import Limits, Sandbox
        >>> with Sandbox(Limits(timeout=10, memory="512MB")) as sandbox:
        ...     sandbox.run(lambda x: x * 2, 21)
        Ok(value=42)

    Each call is pickled with dill (so lambdas and closures travel), runs in a
    worker process and comes back as `Ok(value)` or `Err(SandboxError)`; the
    sandboxed code's failures never raise here. A worker that breaks a limit
    or dies is killed with its whole process tree and replaced.

    This is resource isolation, not a security boundary: the worker runs as
    the same user with the same files, network and environment as your
    process. Do not run untrusted or malicious code in it.

    Args:
        limits: default limits of every call (`Limits()` = unlimited).
        pool: where the workers come from. ``None`` (default): a private pool
            of `size` warm workers, started on the first call and ended by
            `close()`. A `WorkerPool`: shared, not closed by this sandbox. A
            registered name (``"zixir.sandboxes"``) or an `ActorRef` of a
            `SandboxPool` actor: its workers, followed across its restarts.
        fresh_process: run every call in a new, never-used process (full
            isolation; still cheap, the helper process forks ahead of time).
        size: warm workers of the private pool.
        name: used in logs, metrics and errors.
        pool_timeout: seconds to wait for a named pool actor to answer (also
            while its supervisor restarts it).
        learn_imports: of the private pool: let its helper process import
            the module of each function called, so new workers start with it
            (see `WorkerPool`).
        executor: run the calls on this executor instead (``"ray"``, an
            `Executor`; see `zixir_actors.executor`): the limits go with each
            call (memory and CPU time sampled in the remote worker, `timeout`
            cancels the task) and outcomes are the same `Ok`/`Err` kinds.
            Default None: the runtime's executor, this machine unless
            ``start(executor=...)`` chose another; ``"local"`` keeps calls here.

    Raises:
        ConfigError: `limits` is not a `Limits`, `pool` is of the wrong type,
            or `executor` is unknown.
    """

    def __init__(self, limits: Limits | None = None, *,
                 pool: WorkerPool | str | pykka.ActorRef[Any] | None = None,
                 fresh_process: bool = False, size: int = 1, name: str = "sandbox",
                 pool_timeout: float = DEFAULT_RESOLVE_TIMEOUT,
                 learn_imports: bool = True, executor: Any = None) -> None:
        if not accepts_executor(executor):
            raise ConfigError("executor", executor, "expected 'local', 'ray', an Executor or None")
        self.executor = executor
        if limits is None:
            limits = Limits()
        if not isinstance(limits, Limits):
            raise ConfigError("limits", limits, "expected a zixir_actors.sandbox.Limits")
        if pool is not None and not isinstance(pool, (WorkerPool, str, pykka.ActorRef)):
            raise ConfigError("pool", pool, "expected None, a WorkerPool, a pool name or an "
                              "ActorRef of a SandboxPool")
        self.limits = limits
        self.fresh_process = bool(fresh_process)
        self.name = name
        self._source = pool
        self._pool_timeout = pool_timeout
        self._size = size
        self._pool: WorkerPool | None = pool if isinstance(pool, WorkerPool) else None
        self._owned = pool is None
        if self._owned:
            self._pool = WorkerPool(size=size, name=name, learn_imports=learn_imports)
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"<Sandbox {self.name!r} {self.limits}>"

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pool(self) -> WorkerPool:
        """The worker pool in use (resolving a named `SandboxPool` if needed).

        Raises:
            SandboxClosedError: this sandbox is closed.
            NotStartedError: the named pool actor is not running.
        """
        if self._closed:
            raise SandboxClosedError(self.name)
        pool = self._pool
        if pool is not None and not pool.closed:
            return pool
        if self._owned or isinstance(self._source, WorkerPool):
            raise SandboxClosedError(self.name)
        with self._lock:
            if self._pool is None or self._pool.closed:
                self._pool = _resolve(self._source, timeout=self._pool_timeout)
            return self._pool

    def run(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
            ) -> Result[Any, SandboxError]:
        """Run ``fn(*args, **kwargs)`` in a worker under this sandbox's limits.

        Example:
            >>> with Sandbox(Limits(timeout=10)) as sandbox:
            ...     sandbox.run(int, "nope").unwrap_err().kind
            'exception'

        Returns:
            `Ok(value)`, or `Err(SandboxError)` whose `kind` says why:
            ``timeout``, ``memory``, ``cpu``, ``depth``, ``exception``,
            ``crashed`` or ``unpicklable``.

        Raises:
            SandboxClosedError: the sandbox (or its pool) is closed.
            NotStartedError: the named pool actor is not running.
        """
        return self.call(fn, args, kwargs)

    def call(self, fn: Callable[..., Any], args: tuple[Any, ...] = (),
             kwargs: dict[str, Any] | None = None, *, limits: Limits | None = None,
             fresh_process: bool | None = None) -> Result[Any, SandboxError]:
        """Like `run`, with the arguments given explicitly and per-call overrides.

        Args:
            fn: the callable, pickled with dill.
            args: positional arguments for `fn`.
            kwargs: keyword arguments for `fn`.
            limits: limits for this call instead of the sandbox's.
            fresh_process: override the sandbox's `fresh_process` for this call.

        Raises:
            ConfigError: `limits` is not a `Limits`.
            SandboxClosedError: the sandbox (or its pool) is closed.
            NotStartedError: the named pool actor is not running.
        """
        use = self.limits if limits is None else limits
        if not isinstance(use, Limits):
            raise ConfigError("limits", use, "expected a zixir_actors.sandbox.Limits")
        fresh = self.fresh_process if fresh_process is None else fresh_process
        remote = self._route()
        if remote is not None:
            offload, target = remote
            return offload.run(target, fn, tuple(args), kwargs, use, label=self.name)
        for attempt in (1, 2):
            pool = self.pool
            try:
                return pool.call(fn, tuple(args), dict(kwargs or {}), use, fresh=fresh)
            except SandboxClosedError:
                # A named pool restarting between lookup and call: look it up once more.
                if attempt == 2 or self._owned or self._closed:
                    raise
        raise AssertionError("unreachable")

    def run_async(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> SandboxFuture:
        """Start ``fn(*args, **kwargs)`` and return a `SandboxFuture` at once.

        Example:
            >>> import asyncio
            >>> async def main(sandbox):
            ...     return await sandbox.run_async(max, 3, 7)
            >>> with Sandbox(Limits(timeout=10)) as sandbox:
            ...     asyncio.run(main(sandbox))
            Ok(value=7)

        Raises:
            SandboxClosedError: the sandbox (or its pool) is closed.
            NotStartedError: the named pool actor is not running.
        """
        remote = self._route()
        if remote is not None:
            offload, target = remote
            return SandboxFuture(offload.submit(target, fn, tuple(args), kwargs, self.limits,
                                                label=self.name))
        return SandboxFuture(self.pool.submit(fn, args, kwargs, self.limits,
                                              fresh=self.fresh_process))

    def _route(self) -> tuple[Offload, Any] | None:
        """The executor calls go to, or None to run them in this machine's workers."""
        if self._closed:
            raise SandboxClosedError(self.name)
        return route(self.executor)

    def close(self, *, timeout: float | None = 5.0) -> None:
        """End the private pool's workers and helper process (a shared pool is left running).

        Idempotent.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._owned and self._pool is not None:
            self._pool.close(timeout=timeout)


def _resolve(source: Any, *, timeout: float = DEFAULT_RESOLVE_TIMEOUT) -> WorkerPool:
    from zixir_actors.sandbox._actor import GetWorkerPool

    deadline = time.monotonic() + timeout
    if isinstance(source, str):
        from supervisors import NameNotFoundError, ref

        try:
            pool = ref(source, wait=timeout).ask(GetWorkerPool(), timeout=timeout)
        except NameNotFoundError:
            raise NotStartedError(source) from None
    else:
        try:
            pool = source.ask(GetWorkerPool(), timeout=max(0.0, deadline - time.monotonic()))
        except pykka.ActorDeadError:
            raise NotStartedError(str(source)) from None
    if not isinstance(pool, WorkerPool):
        raise ConfigError("pool", source, "the actor did not answer with a WorkerPool")
    return pool
