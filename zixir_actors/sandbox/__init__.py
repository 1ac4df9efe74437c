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
- ``memory``: the worker's resident memory went over `memory` (sampled every
  `SAMPLE_INTERVAL` seconds; the worker is killed), or an allocation failed
  under the RLIMIT_AS ceiling set for the call.
- ``cpu``: `cpu_time` CPU seconds used, or CPU use above `max_cpu_percent`.
- ``depth``: recursion deeper than `max_depth`, or sandboxed calls nested
  deeper than `max_nesting`.
- ``exception``: the call raised; `remote_type` and `remote_traceback` say what.
- ``crashed``: the worker died (a segfault, `os._exit`, a kill from outside).
- ``unpicklable``: the function, arguments or result could not be pickled.

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

from zixir_actors.errors import SandboxClosedError, SandboxError, SoftTimeoutError
from zixir_actors.sandbox._actor import POOL_NAME, GetStats, GetWorkerPool, SandboxPool, child_spec
from zixir_actors.sandbox._limits import (
    DEFAULT_MAX_NESTING,
    DEFAULT_SOFT_GRACE,
    ErrorKind,
    Limits,
    parse_size,
)
from zixir_actors.sandbox._offload import Offload, register_offload
from zixir_actors.sandbox._pool import DEFAULT_POOL_SIZE, SAMPLE_INTERVAL, PoolStats, WorkerPool
from zixir_actors.sandbox._process import nesting_level
from zixir_actors.sandbox._sandbox import Sandbox, SandboxFuture

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
    "parse_size",
    "register_offload",
]
