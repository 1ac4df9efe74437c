"""Sandboxed calls: child processes with time, memory, CPU and depth limits.

Example:
    >>> from zixir_actors.result import Err, Ok
    >>> from zixir_actors.sandbox import Limits, Sandbox
    >>> with Sandbox(Limits(timeout=10, memory="256MB", max_depth=500)) as sandbox:
    ...     match sandbox.run(lambda n: sum(range(n)), 10):
    ...         case Ok(value):
    ...             print(value)
    ...         case Err(error):
    ...             print(error.kind)
    45

A call runs in a worker process (multiprocess/dill, so lambdas and closures
travel) and returns `Ok(value)` or `Err(SandboxError)` with a `kind`:

- ``timeout``: `soft_timeout` raised `SoftTimeoutError` inside the call, or
  the hard `timeout` killed the worker.
- ``memory``: the call's processes used more resident memory than `memory`.
  What is counted is the RSS of the call's process tree: the worker
  (interpreter included) plus every process the call started. While the call
  runs, their summed RSS is sampled every `SAMPLE_INTERVAL` seconds (over the
  limit: the tree is killed); when it ends, however short, the worker's peak
  RSS during the call (VmHWM, reset per call) and the peak of each process it
  started, as reported when that process is reaped, are checked (over the
  limit: its value is discarded); and the
  worker's address space may grow by at most `memory` during the call
  (RLIMIT_AS, inherited by its processes), so a larger allocation fails at
  once with MemoryError or ENOMEM. The worker is replaced in each case.
- ``cpu``: `cpu_time` CPU seconds used, or CPU use above `max_cpu_percent`.
- ``depth``: recursion deeper than `max_depth`, or sandboxed calls nested
  deeper than `max_nesting`.
- ``exception``: the call raised; `remote_type` and `remote_traceback` say what.
- ``crashed``: the worker died (a segfault, `os._exit`, a kill from outside).
- ``unpicklable``: the function, arguments or result could not be pickled.

A call's processes end with the call: one killed for a limit takes its whole
process tree with it (killed at once and reaped before the `Err` returns),
and processes left running by a call that returned or raised are killed and
reaped by the worker before it answers, so a warm worker starts each call
clean. On Linux, workers and the helper are child subreapers: orphaned
grandchildren and double-forked daemons stay in the tree.

Workers come from a small helper process started from a fresh interpreter,
so a new process costs the same whatever the size of the application. A
`SandboxPool` actor (``child_spec()``, registered as ``"zixir.sandboxes"``)
keeps warm workers under the runtime's supervisor.

This is resource isolation, not a security boundary: sandboxed code runs as
the same user, with the same files, network and environment access as the
application. Never use it to contain untrusted or malicious code; use
containers, VMs or seccomp-based jails for that.
"""

from __future__ import annotations

import importlib as _importlib
from typing import TYPE_CHECKING, Any

from zixir_actors.errors import SandboxClosedError, SandboxError, SoftTimeoutError
from zixir_actors.sandbox._limits import (
    DEFAULT_MAX_NESTING,
    DEFAULT_SOFT_GRACE,
    ErrorKind,
    Limits,
    parse_size,
)
from zixir_actors.sandbox._offload import Offload, register_offload

if TYPE_CHECKING:
    from zixir_actors.sandbox._actor import (
        POOL_NAME,
        GetStats,
        GetWorkerPool,
        SandboxPool,
        child_spec,
    )
    from zixir_actors.sandbox._pool import (
        DEFAULT_POOL_SIZE,
        SAMPLE_INTERVAL,
        PoolStats,
        WorkerPool,
    )
    from zixir_actors.sandbox._process import nesting_level
    from zixir_actors.sandbox._sandbox import Sandbox, SandboxFuture
    from zixir_actors.sandbox._worker import out_of_memory

# Worker processes (multiprocess, psutil) load on first use of these names
# (PEP 562): `Limits` and the errors stay importable at no cost.
_LAZY = {
    **dict.fromkeys(("POOL_NAME", "GetStats", "GetWorkerPool", "SandboxPool", "child_spec"),
                    "zixir_actors.sandbox._actor"),
    **dict.fromkeys(("DEFAULT_POOL_SIZE", "SAMPLE_INTERVAL", "PoolStats", "WorkerPool"),
                    "zixir_actors.sandbox._pool"),
    "nesting_level": "zixir_actors.sandbox._process",
    "out_of_memory": "zixir_actors.sandbox._worker",
    "Sandbox": "zixir_actors.sandbox._sandbox",
    "SandboxFuture": "zixir_actors.sandbox._sandbox",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'zixir_actors.sandbox' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

__all__ = [
    "DEFAULT_MAX_NESTING",
    "DEFAULT_POOL_SIZE",
    "DEFAULT_SOFT_GRACE",
    "POOL_NAME",
    "SAMPLE_INTERVAL",
    "ErrorKind",
    "GetStats",
    "GetWorkerPool",
    "Limits",
    "Offload",
    "PoolStats",
    "Sandbox",
    "SandboxClosedError",
    "SandboxError",
    "SandboxFuture",
    "SandboxPool",
    "SoftTimeoutError",
    "WorkerPool",
    "child_spec",
    "nesting_level",
    "out_of_memory",
    "parse_size",
    "register_offload",
]
