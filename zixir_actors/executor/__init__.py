"""Executors: where workflow steps, stream stages and sandboxed calls run.

Example:
    >>> from zixir_actors.executor import LocalExecutor, Resources
    >>> executor = LocalExecutor()
    >>> future = executor.submit(sum, [1, 2, 3], resources=Resources(num_cpus=1), timeout=30)
    >>> future.get(timeout=5.0)
    6

Two executors share one interface (`Executor`):

- ``"local"`` (`LocalExecutor`), the default: threads of this process, or
  worker processes with ``processes=N``. No extra dependency.
- ``"ray"`` (`RayExecutor`): Ray tasks on a cluster, or `RayActorPool` for
  warm state (a loaded model) kept in long-lived Ray actors. Needs the extra:
  ``pip install 'zixir-actors[ray]'``; without it, asking for ``"ray"``
  raises `ExecutorUnavailableError` naming that extra.

Choose per runtime (``zixir_actors.start(executor="ray", ray_address=...)``,
which calls `configure`), per workflow (``Workflow(..., executor="ray")``) or
per step (``Step(..., executor=pool, resources=Resources(num_gpus=1))``); the
stream (``Stream.map(fn, concurrency=N, executor="ray")``), `pmap`,
`parallel` and `Sandbox` take ``executor=`` too. Orchestration stays here:
supervision, checkpoints in LMDB, retries under the step's `RetryPolicy`
(remote tasks are never retried by Ray), metrics. Only the calls move.

Each call is an ``executor.task`` span, child of the caller's span; its ids
travel with the call (`current_trace_context()` inside it), and
`zixir_executor_*` metrics count outcomes and remote durations.

Dependencies point one way: this package uses `zixir_actors.sandbox` (its
worker processes, `Limits`) and, when imported, registers `SandboxOffload`
with it, which is how ``Sandbox(executor=...)`` reaches an executor without
the sandbox importing this package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from zixir_actors.errors import (
    ClusterConnectionError,
    ExecutorError,
    ExecutorUnavailableError,
    RemoteCancelledError,
    RemoteError,
    RemoteLimitError,
    RemoteLostError,
    RemoteMemoryError,
    RemoteTimeoutError,
)
from zixir_actors.executor._adapters import (
    InFlight,
    SandboxOffload,
    call_step,
    remote_callable,
    run_sandboxed,
    sandbox_error,
    submit_sandboxed,
)
from zixir_actors.executor._api import (
    EXECUTOR_NAMES,
    Executor,
    ExecutorName,
    Resources,
    TaskFuture,
    TraceContext,
)
from zixir_actors.executor._select import (
    configure,
    default_executor,
    get_executor,
    is_executor_choice,
    offload,
    reset,
)
from zixir_actors.sandbox._offload import register_offload

if TYPE_CHECKING:
    from zixir_actors.executor._local import LocalActorPool, LocalExecutor
    from zixir_actors.executor._ray import (
        DEFAULT_CONNECT_TIMEOUT,
        RAY_EXTRA,
        RayActorPool,
        RayExecutor,
    )
    from zixir_actors.executor._remote import (
        MONITOR_INTERVAL,
        current_trace_context,
        warm_state,
    )

# The sandbox reaches executors through this seam and never imports this package.
register_offload(SandboxOffload())

# The executors themselves (sandbox worker processes, Ray's module) load on
# first use of their names (PEP 562): a workflow that runs locally never pays.
_LAZY = {
    "LocalActorPool": "_local", "LocalExecutor": "_local",
    "DEFAULT_CONNECT_TIMEOUT": "_ray", "RAY_EXTRA": "_ray", "RayActorPool": "_ray",
    "RayExecutor": "_ray",
    "MONITOR_INTERVAL": "_remote", "current_trace_context": "_remote", "warm_state": "_remote",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'zixir_actors.executor' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"zixir_actors.executor.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "EXECUTOR_NAMES",
    "MONITOR_INTERVAL",
    "RAY_EXTRA",
    "ClusterConnectionError",
    "Executor",
    "ExecutorError",
    "ExecutorName",
    "ExecutorUnavailableError",
    "InFlight",
    "LocalActorPool",
    "LocalExecutor",
    "RayActorPool",
    "RayExecutor",
    "RemoteCancelledError",
    "RemoteError",
    "RemoteLimitError",
    "RemoteLostError",
    "RemoteMemoryError",
    "RemoteTimeoutError",
    "Resources",
    "TaskFuture",
    "TraceContext",
    "call_step",
    "configure",
    "current_trace_context",
    "default_executor",
    "get_executor",
    "is_executor_choice",
    "offload",
    "remote_callable",
    "reset",
    "run_sandboxed",
    "sandbox_error",
    "submit_sandboxed",
    "warm_state",
]
