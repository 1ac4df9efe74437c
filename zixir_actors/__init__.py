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

from importlib import metadata as _metadata

from loguru import logger as _loguru

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

try:
    # One source of truth: the version in pyproject.toml, as installed.
    __version__: str = _metadata.version("zixir-actors")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

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
