"""`SandboxPool`: the supervised actor that owns the runtime's warm sandbox workers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from supervisors import ChildSpec, SupervisedActor
from zixir_actors.sandbox._pool import DEFAULT_POOL_SIZE, PoolStats, WorkerPool

__all__ = ["POOL_NAME", "GetStats", "GetWorkerPool", "SandboxPool", "child_spec"]

POOL_NAME = "zixir.sandboxes"
"""The registered name of the runtime's sandbox pool."""


@dataclass(frozen=True, slots=True)
class GetWorkerPool:
    """Ask a `SandboxPool` for its thread-safe `WorkerPool` (same process only)."""


@dataclass(frozen=True, slots=True)
class GetStats:
    """Ask a `SandboxPool` for a `PoolStats` snapshot."""


class SandboxPool(SupervisedActor):
    """Keeps warm sandbox worker processes under a supervisor.

    Example:
        >>> from supervisors import Supervisor, ref
        >>> from zixir_actors.sandbox import Limits, Sandbox, child_spec
        >>> sup = Supervisor.start_link([child_spec(size=1)])
        >>> with Sandbox(Limits(timeout=10), pool="zixir.sandboxes") as sandbox:
        ...     sandbox.run(len, "abc")
        Ok(value=3)
        >>> sup.stop()

    Calls do not go through the actor's mailbox: `Sandbox` asks it once for
    its `WorkerPool` and then uses the workers directly from the calling
    thread, so a slow call never blocks others. A worker that breaks a limit
    or dies is killed with its process tree and replaced inside the pool;
    each replacement is counted (`zixir_sandbox_worker_restarts_total`) and
    logged. If the actor itself crashes or is restarted, its supervisor
    starts a new pool with fresh workers, and named sandboxes follow it.

    Args:
        size: warm workers to keep (`DEFAULT_POOL_SIZE`, one per core).
        spares: workers the helper process keeps forked ahead of time.
        name: used in logs and metrics.
        learn_imports: let the helper import the module of each function
            called, so new workers start with it (see `WorkerPool`).
    """

    def __init__(self, size: int = DEFAULT_POOL_SIZE, spares: int = 1,
                 name: str = POOL_NAME, learn_imports: bool = True) -> None:
        super().__init__()
        self._pool = WorkerPool(size=size, spares=spares, name=name,
                                learn_imports=learn_imports)

    def on_start(self) -> None:
        try:
            self._pool.start(prewarm=True)
        except BaseException:
            # Pykka calls neither on_stop nor on_failure after a failed on_start.
            self._pool.close()
            raise

    def on_stop(self) -> None:
        self._pool.close()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        self._pool.close()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, GetWorkerPool):
            return self._pool
        if isinstance(message, GetStats):
            return self._pool.stats()
        raise TypeError(f"SandboxPool got an unknown message: {message!r}")

    def worker_pool(self) -> WorkerPool:
        """The pool's `WorkerPool` (for proxies)."""
        return self._pool

    def stats(self) -> PoolStats:
        """Idle and busy workers, restarts and calls so far."""
        return self._pool.stats()


def child_spec(*, size: int = DEFAULT_POOL_SIZE, spares: int = 1, name: str = POOL_NAME,
               learn_imports: bool = True, id: str = "sandboxes",
               restart: str = "permanent", shutdown: float = 10.0) -> ChildSpec:
    """The `ChildSpec` of the runtime's `SandboxPool`, registered as ``"zixir.sandboxes"``.

    Example:
        >>> child_spec(size=2).name
        'zixir.sandboxes'

    Args:
        size: warm workers to keep.
        spares: workers forked ahead of time by the helper process.
        name: the registered name.
        learn_imports: see `SandboxPool`.
        id: the child id under its supervisor.
        restart: the restart type (``"permanent"``).
        shutdown: seconds the pool gets to stop its processes.

    Raises:
        InvalidSpecError: a spec field is invalid.
    """
    return ChildSpec(id=id, start=SandboxPool,
                     kwargs={"size": size, "spares": spares, "name": name,
                             "learn_imports": learn_imports},
                     restart=restart, shutdown=shutdown, type="worker", name=name)  # type: ignore[arg-type]
