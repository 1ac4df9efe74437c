"""zixir-actors: OTP-style supervised services for Python AI automation.

Example:
    >>> import tempfile, zixir_actors
    >>> from zixir_actors import Ok, Workflow
    >>> with zixir_actors.start(data_dir=tempfile.mkdtemp()) as runtime:
    ...     wf = Workflow("doc-front-door")
    ...     @wf.step()
    ...     def double(n):
    ...         return n * 2
    ...     wf.run({"n": 21}).outputs["double"]
    42

Everything long-lived is a Pykka actor under the runtime's supervision tree
(`start()`): workflows with checkpoints (`Workflow`), sandboxes (`Sandbox`),
streams (`Stream`), caches (`Cache`) and the metrics registry.
"""

from __future__ import annotations

import importlib as _importlib
from typing import TYPE_CHECKING, Any

from loguru import logger as _loguru

if TYPE_CHECKING:
    from zixir_actors import errors
    from zixir_actors.cache import Cache
    from zixir_actors.checkpoint import CheckpointStore
    from zixir_actors.errors import (
        EventTimeoutError,
        NondeterminismError,
        StepFailedError,
        ZixirError,
    )
    from zixir_actors.observability import (
        configure_logging,
        logger,
        metrics,
        serve_metrics,
        span,
    )
    from zixir_actors.queue import Queue
    from zixir_actors.result import Err, Ok, Result
    from zixir_actors.runtime import Runtime, current, schedules, start, stop
    from zixir_actors.sandbox import Limits, Sandbox, SandboxError
    from zixir_actors.stream import Stream, async_, await_, parallel, pmap
    from zixir_actors.workflow import (
        DeadLetters,
        RetryPolicy,
        RunResult,
        Step,
        Workflow,
        durable,
        send,
    )

# Importing the package loads only what the first call needs: each public name
# is imported from its module on first access (PEP 562), so a script that runs
# one workflow never loads the sandbox, streams, caches, queues or Ray.
_LAZY: dict[str, str] = {}
for _module, _names in (
    ("zixir_actors.cache", ("Cache",)),
    ("zixir_actors.checkpoint", ("CheckpointStore",)),
    ("zixir_actors.errors", ("EventTimeoutError", "NondeterminismError", "StepFailedError",
                             "ZixirError")),
    ("zixir_actors.observability", ("configure_logging", "logger", "metrics",
                                    "serve_metrics", "span")),
    ("zixir_actors.queue", ("Queue",)),
    ("zixir_actors.result", ("Err", "Ok", "Result")),
    ("zixir_actors.runtime", ("Runtime", "current", "schedules", "start", "stop")),
    ("zixir_actors.sandbox", ("Limits", "Sandbox", "SandboxError")),
    ("zixir_actors.stream", ("Stream", "async_", "await_", "parallel", "pmap")),
    ("zixir_actors.workflow", ("DeadLetters", "RetryPolicy", "RunResult", "Step", "Workflow",
                               "durable", "send")),
):
    for _name in _names:
        _LAZY[_name] = _module
del _module, _names, _name


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(_importlib.import_module(module), name)
    elif name == "errors":
        value = _importlib.import_module("zixir_actors.errors")
    elif name == "__version__":
        value = _version()
    else:
        raise AttributeError(f"module 'zixir_actors' has no attribute {name!r}")
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, "__version__"})


def _load_sandbox_offload() -> None:
    """Load the executors, which register how sandboxes reach them.

    The sandbox never imports `zixir_actors.executor` (the dependency points
    the other way); it calls this, through the package that holds both, when
    a sandbox names an executor and nothing has loaded the executors yet.
    """
    _importlib.import_module("zixir_actors.executor")


def _version() -> str:
    from importlib import metadata

    try:
        # One source of truth: the version in pyproject.toml, as installed.
        return metadata.version("zixir-actors")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"

# A library is quiet until the application turns logging on (configure_logging).
_loguru.disable("zixir_actors")

__all__ = [
    "Cache",
    "CheckpointStore",
    "DeadLetters",
    "Err",
    "EventTimeoutError",
    "Limits",
    "NondeterminismError",
    "Ok",
    "Queue",
    "Result",
    "RetryPolicy",
    "RunResult",
    "Runtime",
    "Sandbox",
    "SandboxError",
    "Step",
    "StepFailedError",
    "Stream",
    "Workflow",
    "ZixirError",
    "async_",
    "await_",
    "configure_logging",
    "current",
    "durable",
    "errors",
    "logger",
    "metrics",
    "parallel",
    "pmap",
    "schedules",
    "send",
    "serve_metrics",
    "span",
    "start",
    "stop",
]
