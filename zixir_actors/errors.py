"""The exception hierarchy of `zixir_actors`, extending `supervisors.errors`.

Everything public raises a subclass of `ZixirError`. Sandboxed calls do not
raise: they return `Err(SandboxError)` (see `zixir_actors.result`).
Each service keeps its errors in its own section below.
"""

from __future__ import annotations

from typing import Any

from supervisors.errors import (
    AlreadyStartedError,
    ChildNotFoundError,
    ChildRestartingError,
    ChildStartError,
    InvalidSpecError,
    MaxChildrenError,
    NameNotFoundError,
    NotAnActorError,
    RestartIntensityError,
    ShutdownTimeoutError,
    SupervisorError,
    SupervisorTimeoutError,
    ZixirError,
)

__all__ = [
    "AlreadyStartedError",
    "BufferOverflowError",
    "CacheError",
    "CacheNotFoundError",
    "ChildNotFoundError",
    "ChildRestartingError",
    "ChildStartError",
    "ClusterConnectionError",
    "ConfigError",
    "CorruptBlobError",
    "CycleError",
    "DashboardError",
    "DashboardUnavailableError",
    "DataDirError",
    "DataDirLockedError",
    "DeadLetterNotFoundError",
    "DuplicateKeyError",
    "DuplicateRunError",
    "DuplicateStepError",
    "EmptyStreamError",
    "EntryTooLargeError",
    "EventTimeoutError",
    "ExecutorError",
    "ExecutorUnavailableError",
    "InvalidKeyError",
    "InvalidQueryError",
    "InvalidRecordError",
    "InvalidSpecError",
    "InvalidStepError",
    "MaxChildrenError",
    "MetricConflictError",
    "MissingInputError",
    "NameNotFoundError",
    "NondeterminismError",
    "NotAnActorError",
    "NotStartedError",
    "ObservabilityError",
    "QueueError",
    "RecordNotFoundError",
    "RemoteCancelledError",
    "RemoteError",
    "RemoteLimitError",
    "RemoteLostError",
    "RemoteMemoryError",
    "RemoteTimeoutError",
    "RestartIntensityError",
    "RunActiveError",
    "RunEndedError",
    "RunFailedError",
    "RunInterruptedError",
    "RunNotFoundError",
    "RuntimeConflictError",
    "SandboxClosedError",
    "SandboxError",
    "ScheduleNotFoundError",
    "ShutdownTimeoutError",
    "SoftTimeoutError",
    "StageCrashedError",
    "StepFailedError",
    "StepTimeoutError",
    "StoreCorruptError",
    "StoreError",
    "StoreFullError",
    "StreamConsumedError",
    "StreamError",
    "StreamTimeoutError",
    "SupervisorError",
    "SupervisorTimeoutError",
    "TableExistsError",
    "UnknownDependencyError",
    "UnknownStepError",
    "UnknownTableError",
    "UnserializableError",
    "UnwrapError",
    "WorkflowDefinitionError",
    "WorkflowError",
    "WorkflowNotFoundError",
    "ZixirError",
    "ZixirTimeoutError",
]


# --- shared -----------------------------------------------------------------


class ConfigError(ZixirError, ValueError):
    """An argument or setting is invalid (a bad size string, a negative TTL...).

    Attributes:
        field: the argument that is wrong.
        value: the value given.
    """

    def __init__(self, field: str, value: Any, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"invalid {field}: {value!r} ({reason})")


class ZixirTimeoutError(ZixirError, TimeoutError):
    """A blocking call did not finish within its `timeout`."""

    def __init__(self, what: str, timeout: float | None) -> None:
        self.what = what
        self.timeout = timeout
        super().__init__(f"{what} did not finish within {timeout}s")


class NotStartedError(ZixirError, RuntimeError):
    """A service was used before `zixir_actors.start()` started it."""

    def __init__(self, service: str) -> None:
        self.service = service
        super().__init__(
            f"service {service!r} is not running: call zixir_actors.start() first"
        )


class UnwrapError(ZixirError):
    """`unwrap()` on an `Err` whose error is not an exception, or `unwrap_err()` on an `Ok`."""

    def __init__(self, result: Any) -> None:
        self.result = result
        super().__init__(f"cannot unwrap {result!r}")


# --- store (checkpoint) -----------------------------------------------------


class StoreError(ZixirError):
    """The LMDB store failed (unwritable directory, closed environment...)."""


class CorruptBlobError(StoreError):
    """A stored blob is truncated, corrupted or not written by zixir-actors.

    Attributes:
        key: where the blob was read from, if known.
        reason: what check failed (magic, version, checksum, decode).
    """

    def __init__(self, reason: str, *, key: Any = None) -> None:
        self.reason = reason
        self.key = key
        where = f" at {key!r}" if key is not None else ""
        super().__init__(f"corrupt or foreign blob{where}: {reason}")


class StoreFullError(StoreError, OSError):
    """A write failed because the filesystem of the data directory is full.

    Nothing of the failed write was committed; the store keeps working once
    space is freed.

    Attributes:
        data_dir: the data directory.
        errno: the error number (``errno.ENOSPC``).
        free: bytes left on the filesystem when the write failed.
        detail: LMDB's own message.
    """

    def __init__(self, data_dir: str, *, free: int, detail: str = "") -> None:
        import errno as _errno

        self.data_dir = data_dir
        self.free = free
        self.detail = detail
        text = (f"disk full: cannot write to the store in {data_dir} "
                f"({free} bytes free){': ' + detail if detail else ''}")
        super().__init__(_errno.ENOSPC, text)

    def __str__(self) -> str:
        return str(self.args[1])

    def __reduce__(self) -> tuple[Any, ...]:
        return (_store_full, (self.data_dir, self.free, self.detail))


def _store_full(data_dir: str, free: int, detail: str) -> StoreFullError:
    return StoreFullError(data_dir, free=free, detail=detail)


class StoreCorruptError(StoreError):
    """An LMDB data file is damaged (truncated, zeroed or foreign): refused before mapping it.

    Attributes:
        path: the damaged file.
        reason: what check failed.
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"corrupt store file {path}: {reason} "
                         "(restore a backup, or move the directory away to start empty)")


# --- cache ------------------------------------------------------------------


class CacheError(ZixirError):
    """Base class for cache errors."""


class CacheNotFoundError(CacheError, LookupError):
    """No cache of this name is running (never started, or stopped).

    Attributes:
        cache: the cache name.
    """

    def __init__(self, cache: str) -> None:
        self.cache = cache
        super().__init__(f"no running cache named {cache!r}: start it with Cache.start()")


class InvalidKeyError(CacheError, TypeError):
    """A cache key or record key is unhashable or cannot be encoded for storage.

    Attributes:
        key: the key given.
        reason: what is wrong with it.
    """

    def __init__(self, key: Any, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"invalid cache key {key!r}: {reason}")


class EntryTooLargeError(CacheError, ValueError):
    """One entry is larger than the cache's whole `max_bytes` budget.

    Attributes:
        cache: the cache name.
        key: the key of the entry.
        size: the entry's encoded size in bytes.
        max_bytes: the cache's budget.
    """

    def __init__(self, cache: str, key: Any, size: int, max_bytes: int) -> None:
        self.cache = cache
        self.key = key
        self.size = size
        self.max_bytes = max_bytes
        super().__init__(f"entry {key!r} of {size} bytes does not fit cache {cache!r} "
                         f"(max_bytes={max_bytes})")


class UnknownTableError(CacheError, LookupError):
    """A table operation named a table that was never created (or was dropped).

    Attributes:
        cache: the cache name.
        table: the table name.
    """

    def __init__(self, cache: str, table: str) -> None:
        self.cache = cache
        self.table = table
        super().__init__(f"cache {cache!r} has no table {table!r}: "
                         "create it with create_table()")


class TableExistsError(CacheError):
    """`create_table` named an existing table with a different key field.

    Attributes:
        cache: the cache name.
        table: the table name.
        key_field: the key field the table already has.
    """

    def __init__(self, cache: str, table: str, key_field: str) -> None:
        self.cache = cache
        self.table = table
        self.key_field = key_field
        super().__init__(f"table {table!r} of cache {cache!r} already exists "
                         f"with key field {key_field!r}")


class DuplicateKeyError(CacheError):
    """`insert` found a record with the same key already in the table.

    Attributes:
        table: the table name.
        key: the duplicate key.
    """

    def __init__(self, table: str, key: Any) -> None:
        self.table = table
        self.key = key
        super().__init__(f"table {table!r} already has a record with key {key!r}")


class RecordNotFoundError(CacheError, LookupError):
    """`update` named a key that is not in the table.

    Attributes:
        table: the table name.
        key: the missing key.
    """

    def __init__(self, table: str, key: Any) -> None:
        self.table = table
        self.key = key
        super().__init__(f"table {table!r} has no record with key {key!r}")


class InvalidRecordError(CacheError, ValueError):
    """A record or a change set is not a mapping, lacks its key, or changes its key.

    Attributes:
        table: the table name.
        reason: what is wrong.
    """

    def __init__(self, table: str, reason: str) -> None:
        self.table = table
        self.reason = reason
        super().__init__(f"invalid record for table {table!r}: {reason}")


class InvalidQueryError(CacheError, ValueError):
    """A `query`/`count` argument (`where`, `order_by`, `limit`) is invalid or failed.

    Attributes:
        table: the table name.
        argument: ``"where"``, ``"order_by"`` or ``"limit"``.
        value: the value given.
        reason: what is wrong (or the error it raised).
    """

    def __init__(self, table: str, argument: str, value: Any, reason: str) -> None:
        self.table = table
        self.argument = argument
        self.value = value
        self.reason = reason
        super().__init__(f"invalid {argument} for table {table!r}: {value!r} ({reason})")


class UnserializableError(StoreError, TypeError):
    """A value cannot be serialized, not even by dill.

    Attributes:
        type_name: the type of the value.
        cause: the exception the serializer raised.
    """

    def __init__(self, value: Any, cause: BaseException) -> None:
        self.type_name = type(value).__name__
        self.cause = cause
        super().__init__(
            f"cannot serialize a {self.type_name}: {type(cause).__name__}: {cause}"
        )


# --- observability ----------------------------------------------------------


class ObservabilityError(ZixirError):
    """Base class for errors raised by `zixir_actors.observability`."""


class MetricConflictError(ObservabilityError, ValueError):
    """A metric name is already registered with another type, label set or buckets.

    Attributes:
        name: the metric name.
        existing: what is registered (``"counter(labels=('a',))"``).
        requested: what was asked for.
    """

    def __init__(self, name: str, existing: str, requested: str) -> None:
        self.name = name
        self.existing = existing
        self.requested = requested
        super().__init__(
            f"metric {name!r} is already registered as {existing}, "
            f"cannot register it as {requested}"
        )


# --- workflow ---------------------------------------------------------------


class WorkflowError(ZixirError):
    """Base class for errors raised by `zixir_actors.workflow`."""


class WorkflowDefinitionError(WorkflowError, ValueError):
    """A workflow is badly built; raised before anything runs.

    Attributes:
        workflow: the workflow's name.
        step: the step at fault, if one is.
    """

    def __init__(self, message: str, *, workflow: str | None, step: str | None = None) -> None:
        self.workflow = workflow
        self.step = step
        super().__init__(message if workflow is None else f"workflow {workflow!r}: {message}")


class CycleError(WorkflowDefinitionError):
    """The dependencies form a cycle.

    Attributes:
        cycle: the steps of the cycle in order, first step repeated at the end.
    """

    def __init__(self, workflow: str, cycle: tuple[str, ...]) -> None:
        self.cycle = cycle
        super().__init__(f"dependency cycle {' -> '.join(cycle)}", workflow=workflow,
                         step=cycle[0] if cycle else None)


class UnknownDependencyError(WorkflowDefinitionError, LookupError):
    """A step depends on a step that does not exist.

    Attributes:
        dependency: the missing step's name.
    """

    def __init__(self, workflow: str, step: str, dependency: str) -> None:
        self.dependency = dependency
        super().__init__(f"step {step!r} depends on unknown step {dependency!r}",
                         workflow=workflow, step=step)


class DuplicateStepError(WorkflowDefinitionError):
    """Two steps have the same name."""

    def __init__(self, workflow: str, step: str) -> None:
        super().__init__(f"duplicate step name {step!r}", workflow=workflow, step=step)


class InvalidStepError(WorkflowDefinitionError):
    """A step option or a retry policy field is invalid.

    Attributes:
        field: the option that is wrong (``"retry.max_attempts"``, ``"timeout"``...).
        value: the value given.
        reason: why it is wrong.
    """

    def __init__(self, field: str, value: Any, reason: str, *, workflow: str | None = None,
                 step: str | None = None) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        where = f"step {step!r}: " if step is not None else ""
        super().__init__(f"{where}invalid {field}: {value!r} ({reason})",
                         workflow=workflow, step=step)


class MissingInputError(WorkflowError, ValueError):
    """A step parameter matches no dependency, workflow input or default.

    Attributes:
        workflow: the workflow's name.
        step: the step whose parameter is unfilled.
        parameter: the parameter's name.
    """

    def __init__(self, workflow: str, step: str, parameter: str) -> None:
        self.workflow = workflow
        self.step = step
        self.parameter = parameter
        super().__init__(
            f"workflow {workflow!r}: step {step!r} needs {parameter!r}, which is neither a "
            "dependency, a workflow input nor a parameter with a default"
        )


class UnknownStepError(WorkflowError, LookupError):
    """A step name given to `resume`/`plan` is not a step of the workflow."""

    def __init__(self, workflow: str, step: str) -> None:
        self.workflow = workflow
        self.step = step
        super().__init__(f"workflow {workflow!r} has no step {step!r}")


class RunNotFoundError(WorkflowError, LookupError):
    """No run with this id is stored."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"no stored run {run_id!r}")


class RunActiveError(WorkflowError):
    """The run is already executing, here or in another live runtime (resume it later).

    Attributes:
        run_id: the run.
        owner: the id of the other runtime that runs it (None: this process).
    """

    def __init__(self, run_id: str, *, owner: str | None = None) -> None:
        self.run_id = run_id
        self.owner = owner
        where = "in this process" if owner is None else f"in runtime {owner}"
        super().__init__(f"run {run_id!r} is already running {where}")


class RunInterruptedError(WorkflowError):
    """The run's actor was stopped (shutdown) or crashed too often before it finished.

    The checkpoints are kept: `Workflow.resume(run_id)` continues the run.
    """

    def __init__(self, run_id: str, reason: Any) -> None:
        self.run_id = run_id
        self.reason = reason
        super().__init__(f"run {run_id!r} was interrupted before it finished: {reason}")


class StepTimeoutError(WorkflowError, TimeoutError):
    """A step attempt did not finish within the step's `timeout`."""

    def __init__(self, step: str, timeout: float) -> None:
        self.step = step
        self.timeout = timeout
        super().__init__(f"step {step!r} did not finish within {timeout}s")


class RunFailedError(WorkflowError):
    """`RunResult.raise_for_status()` on a run that did not succeed.

    Attributes:
        result: the `RunResult`.
    """

    def __init__(self, result: Any) -> None:
        self.result = result
        failed = ", ".join(f"{n}: {s.error}" for n, s in result.steps.items() if s.error)
        super().__init__(f"run {result.run_id!r} ended {result.status}"
                         + (f" ({failed})" if failed else ""))


class DeadLetterNotFoundError(WorkflowError, LookupError):
    """No dead letter with this id is stored."""

    def __init__(self, letter_id: str) -> None:
        self.letter_id = letter_id
        super().__init__(f"no dead letter {letter_id!r}")


class WorkflowNotFoundError(WorkflowError, LookupError):
    """No `Workflow` with this name is defined in this process (needed to re-drive a run)."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no workflow named {name!r} is defined in this process; "
                         "pass workflow= explicitly")


class StepFailedError(WorkflowError):
    """A `ctx.step` call of a code-first workflow exhausted its retries.

    Raised in the body, where it can be caught; a body that lets it escape
    ends the run as failed with a dead letter for the call.

    Attributes:
        step: the call's label (``"name#occurrence"``).
        error: the last attempt's `StepError` (type, message, traceback).
        attempts: how many attempts ran.
    """

    def __init__(self, step: str, error: Any, attempts: int = 0) -> None:
        self.step = step
        self.error = error
        self.attempts = attempts
        super().__init__(f"step {step!r} failed after {attempts} attempt(s): {error}")


class EventTimeoutError(WorkflowError, TimeoutError):
    """`ctx.wait_for(event, timeout=...)` saw no such event in time (raised in the body)."""

    def __init__(self, run_id: str, event: str, timeout: float | None) -> None:
        self.run_id = run_id
        self.event = event
        self.timeout = timeout
        super().__init__(f"run {run_id!r} received no event {event!r} within {timeout}s")


class NondeterminismError(WorkflowError):
    """A replayed body asked for another call than the one recorded at that position.

    The code changed in a way that matters between the run's start and its
    resume. `Workflow.plan(run_id)` shows it beforehand; `resume(run_id,
    from_step=...)` drops the records from a call on.

    Attributes:
        run_id: the run.
        position: the call's position in the body (0-based).
        recorded: the call recorded there (``"step fetch#1"``).
        requested: the call the body asks for now.
    """

    def __init__(self, run_id: str, position: int, recorded: str, requested: str) -> None:
        self.run_id = run_id
        self.position = position
        self.recorded = recorded
        self.requested = requested
        super().__init__(f"run {run_id!r}: call {position} was recorded as {recorded} but the "
                         f"body now asks for {requested} (the code changed; resume with "
                         "from_step= to run again from an earlier call)")


class RunEndedError(WorkflowError):
    """An event was sent to a run that has already ended."""

    def __init__(self, run_id: str, status: str) -> None:
        self.run_id = run_id
        self.status = status
        super().__init__(f"run {run_id!r} has ended ({status}); it takes no more events")


# --- sandbox ----------------------------------------------------------------


class SandboxError(ZixirError):
    """Why a sandboxed call failed; sandboxes return it inside `Err`, they do not raise it.

    Example:
        >>> err = SandboxError("memory", "used 412 MiB of 256 MiB", limit=2**28, measured=432013312)
        >>> err.kind, err.limit
        ('memory', 268435456)

    Attributes:
        kind: ``"timeout"``, ``"memory"``, ``"cpu"``, ``"depth"``, ``"exception"``,
            ``"crashed"`` or ``"unpicklable"``.
        message: what happened, in words.
        limit: the limit that was broken (bytes, seconds, percent, frames), if any.
        measured: the value measured when it was broken, if any.
        remote_type: qualified type name of the exception raised in the worker.
        remote_traceback: its formatted traceback, from the worker.
        cause: the remote exception itself when it could be carried back, else None.
        peak_memory: highest resident memory of the worker during the call, bytes
            (for a call without a memory limit: the worker's highest so far).
        cpu_time: CPU seconds the call used.
        cpu_percent: highest sampled CPU use, percent of one core, if sampled.
        duration: wall-clock seconds from sending the call to its end.
    """

    def __init__(self, kind: str, message: str, *, limit: float | None = None,
                 measured: float | None = None, remote_type: str | None = None,
                 remote_traceback: str | None = None, cause: BaseException | None = None,
                 peak_memory: int | None = None, cpu_time: float | None = None,
                 cpu_percent: float | None = None, duration: float | None = None) -> None:
        self.kind = kind
        self.message = message
        self.limit = limit
        self.measured = measured
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback
        self.cause = cause
        self.peak_memory = peak_memory
        self.cpu_time = cpu_time
        self.cpu_percent = cpu_percent
        self.duration = duration
        super().__init__(f"sandboxed call failed ({kind}): {message}")

    def __reduce__(self) -> Any:
        fields = {name: getattr(self, name) for name in (
            "limit", "measured", "remote_type", "remote_traceback", "cause", "peak_memory",
            "cpu_time", "cpu_percent", "duration")}
        return (_rebuild_sandbox_error, (self.kind, self.message, fields))


def _rebuild_sandbox_error(kind: str, message: str, fields: dict[str, Any]) -> SandboxError:
    return SandboxError(kind, message, **fields)


class SoftTimeoutError(ZixirError, TimeoutError):
    """Raised inside a sandboxed call when its `soft_timeout` passes, so it can clean up.

    Catch it in the sandboxed code to release resources; the call still ends
    as ``Err(kind="timeout")``, and the hard `timeout` kills the worker if the
    call goes on.
    """


class SandboxClosedError(ZixirError, RuntimeError):
    """A `Sandbox` or `SandboxPool` was used after `close()`.

    Attributes:
        name: the sandbox or pool.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"sandbox {name!r} is closed")


# --- runtime ----------------------------------------------------------------


class DataDirError(ZixirError):
    """The data directory cannot be used (unwritable, not a directory, corrupt store).

    Attributes:
        path: the directory.
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"data directory {path}: {reason}")


class DataDirLockedError(DataDirError):
    """Another process runs a zixir runtime on this data directory.

    Attributes:
        pid: the process holding the lock, if it could be read.
    """

    def __init__(self, path: str, pid: int | None) -> None:
        self.pid = pid
        holder = f"process {pid}" if pid else "another process"
        super().__init__(path, f"in use by {holder}; stop it or use another data_dir")


class RuntimeConflictError(ZixirError, RuntimeError):
    """`start()` was called with a different data directory while a runtime runs."""

    def __init__(self, running: str, requested: str) -> None:
        self.running = running
        self.requested = requested
        super().__init__(f"a runtime is already running on {running}; "
                         f"stop it before starting one on {requested}")


# --- queues and schedules -----------------------------------------------------


class QueueError(ZixirError):
    """Base of durable queue and schedule errors."""


class DuplicateRunError(QueueError):
    """A run with this dedupe key (or run id) is already queued or running.

    Attributes:
        queue: the queue.
        dedupe_key: the key given to `enqueue` (None: the run id was the duplicate).
        run_id: the id of the existing run (its handle: `Queue.handle(run_id)`).
        status: the existing run's status (``"queued"``, ``"running"``, ``"parked"``).
    """

    def __init__(self, queue: str, run_id: str, status: str,
                 dedupe_key: str | None = None) -> None:
        self.queue = queue
        self.dedupe_key = dedupe_key
        self.run_id = run_id
        self.status = status
        what = (f"dedupe key {dedupe_key!r}" if dedupe_key is not None
                else f"run id {run_id!r}")
        super().__init__(f"queue {queue!r}: {what} is already {status} as run {run_id!r}")

    def __reduce__(self) -> Any:
        return (type(self), (self.queue, self.run_id, self.status, self.dedupe_key))


class ScheduleNotFoundError(QueueError, LookupError):
    """No stored schedule has this name."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no schedule {name!r}")


# --- stream -----------------------------------------------------------------


class StreamError(ZixirError):
    """Base class for stream pipeline errors.

    A stage whose own function raises fails the pipeline with *that*
    exception, not a `StreamError`: its type is kept, and its `stage`
    attribute and a note name the stage.
    """


class BufferOverflowError(StreamError):
    """A `buffer(n, overflow="fail")` stage received more than `n` items ahead of demand.

    Attributes:
        stage: the buffer stage's name.
        capacity: its size `n`.
    """

    def __init__(self, stage: str, capacity: int) -> None:
        self.stage = stage
        self.capacity = capacity
        super().__init__(f"stream buffer {stage!r} overflowed its capacity of {capacity} items")


class StageCrashedError(StreamError):
    """A stage actor stopped abnormally (killed, or a crash outside user code).

    Attributes:
        stage: the stage's name.
        reason: the exit reason from its `Down`.
    """

    def __init__(self, stage: str, reason: object) -> None:
        self.stage = stage
        self.reason = reason
        super().__init__(f"stream stage {stage!r} stopped abnormally: {reason!r}")


class StreamConsumedError(StreamError):
    """A single-use source (`from_iterator`, `from_async_iterator`) was run a second time.

    Attributes:
        source: the source's name.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        super().__init__(f"stream source {source!r} was already consumed by an earlier run; "
                         "build a new stream from a fresh iterator")


class EmptyStreamError(StreamError, LookupError):
    """`first()` or `reduce()` without an initial value on a stream that produced nothing."""

    def __init__(self, terminal: str) -> None:
        self.terminal = terminal
        super().__init__(f"{terminal}() on an empty stream (pass a default/initial value)")


class StreamTimeoutError(StreamError, ZixirTimeoutError):
    """A stream terminal (`to_list`, iteration, `await_`...) did not finish within `timeout`."""


# --- executor ---------------------------------------------------------------


class ExecutorError(ZixirError):
    """Base class of executor errors (where steps, stream calls and sandboxed calls run)."""


class ExecutorUnavailableError(ExecutorError, ImportError):
    """An executor was asked for whose optional dependency is not installed.

    Example:
        >>> error = ExecutorUnavailableError("ray", "ray")
        >>> "pip install 'zixir-actors[ray]'" in str(error), error.extra
        (True, 'ray')

    Attributes:
        executor: the executor asked for (``"ray"``).
        extra: the extra of the `zixir-actors` package that installs it.
        reason: why it cannot be used.
    """

    def __init__(self, executor: str, extra: str, reason: str | None = None) -> None:
        self.executor = executor
        self.extra = extra
        self.reason = reason or f"{executor} is not importable"
        super().__init__(f"the {executor!r} executor needs its optional extra: "
                         f"pip install 'zixir-actors[{extra}]' ({self.reason})")

    def __reduce__(self) -> Any:
        return (type(self), (self.executor, self.extra, self.reason))


class ClusterConnectionError(ExecutorError, ConnectionError):
    """The cluster cannot be reached, or the connection to it was lost.

    Work already committed (workflow checkpoints) is safe: once the cluster is
    back, `Workflow.resume(run_id)` continues the run.

    Attributes:
        address: the cluster address (None: a local cluster).
        reason: what went wrong.
    """

    def __init__(self, address: str | None, reason: str) -> None:
        self.address = address
        self.reason = reason
        where = f"at {address!r}" if address else "(local)"
        super().__init__(f"cannot use the Ray cluster {where}: {reason}")

    def __reduce__(self) -> Any:
        return (type(self), (self.address, self.reason))


class RemoteLostError(ExecutorError):
    """The worker process, actor or node that ran a remote call died before answering.

    A step failure like any other: the step's `RetryPolicy` decides whether it
    runs again (the default ``retry_on=(Exception,)`` retries it).

    Attributes:
        task: the call's label (step or function name).
        executor: the executor's name.
        reason: ``"worker"``, ``"node"``, ``"actor"`` or ``"object"`` (its result was lost).
        detail: the engine's own message.
    """

    def __init__(self, task: str, executor: str, reason: str, detail: str = "") -> None:
        self.task = task
        self.executor = executor
        self.reason = reason
        self.detail = detail
        text = f"remote call {task!r} on {executor} lost its {reason}"
        super().__init__(f"{text}: {detail}" if detail else text)

    def __reduce__(self) -> Any:
        return (type(self), (self.task, self.executor, self.reason, self.detail))


class RemoteTimeoutError(ExecutorError, ZixirTimeoutError):
    """A remote call ran past its `timeout` and was cancelled (a Ray task is killed).

    Attributes:
        task: the call's label.
        executor: the executor's name.
        timeout: the limit in seconds.
        kind: always ``"timeout"`` (as a `SandboxError` says it).
    """

    kind = "timeout"

    def __init__(self, task: str, executor: str, timeout: float | None) -> None:
        self.task = task
        self.executor = executor
        self.what = f"remote call {task!r} on {executor}"
        self.timeout = timeout
        Exception.__init__(self, f"remote call {task!r} on {executor} did not finish within "
                                 f"{timeout}s and was cancelled")

    def __reduce__(self) -> Any:
        return (type(self), (self.task, self.executor, self.timeout))


class RemoteLimitError(ExecutorError):
    """A remote call broke one of its `Limits` where it ran and was stopped.

    Attributes:
        task: the call's label.
        executor: the executor's name.
        kind: ``"cpu"`` or ``"depth"`` (``"memory"``: see `RemoteMemoryError`).
        limit: the limit (CPU seconds, frames).
        measured: what was measured when it was broken, if known.
    """

    def __init__(self, task: str, executor: str, kind: str, limit: float | None,
                 measured: float | None = None) -> None:
        self.task = task
        self.executor = executor
        self.kind = kind
        self.limit = limit
        self.measured = measured
        seen = f" (measured {measured})" if measured is not None else ""
        super().__init__(f"remote call {task!r} on {executor} broke its {kind} limit "
                         f"{limit}{seen}")

    def __reduce__(self) -> Any:
        return (type(self), (self.task, self.executor, self.kind, self.limit, self.measured))


class RemoteMemoryError(ExecutorError, MemoryError):
    """A remote call went over its memory limit, or the engine killed it for memory.

    Attributes:
        task: the call's label.
        executor: the executor's name.
        limit: the limit in bytes (None: the node ran out of memory).
        measured: resident bytes measured when the limit was broken, if known.
        kind: always ``"memory"``.
    """

    kind = "memory"

    def __init__(self, task: str, executor: str, limit: int | None,
                 measured: int | None = None, detail: str = "") -> None:
        self.task = task
        self.executor = executor
        self.limit = limit
        self.measured = measured
        self.detail = detail
        if limit is not None:
            used = f"used {measured} bytes of " if measured is not None else "went over "
            text = f"remote call {task!r} on {executor} {used}its {limit} byte limit"
        else:
            text = f"remote call {task!r} on {executor} was killed: its node ran out of memory"
        super().__init__(f"{text}; {detail}" if detail else text)

    def __reduce__(self) -> Any:
        return (type(self), (self.task, self.executor, self.limit, self.measured, self.detail))


class RemoteCancelledError(ExecutorError):
    """`TaskFuture.get()` of a call that was cancelled with `cancel()`.

    Attributes:
        task: the call's label.
    """

    def __init__(self, task: str) -> None:
        self.task = task
        super().__init__(f"remote call {task!r} was cancelled")

    def __reduce__(self) -> Any:
        return (type(self), (self.task,))


class RemoteError(ExecutorError):
    """A remote call raised an exception that could not be carried back as itself.

    (An exception that can be pickled is re-raised as itself, with a
    `remote_traceback` attribute.)

    Attributes:
        task: the call's label.
        remote_type: the qualified type name of the remote exception.
        message: its message.
        remote_traceback: its formatted traceback, from the worker.
    """

    def __init__(self, task: str, remote_type: str, message: str,
                 remote_traceback: str = "") -> None:
        self.task = task
        self.remote_type = remote_type
        self.message = message
        self.remote_traceback = remote_traceback
        super().__init__(f"remote call {task!r} raised {remote_type}: {message}")

    def __reduce__(self) -> Any:
        return (type(self), (self.task, self.remote_type, self.message, self.remote_traceback))


# --- dashboard --------------------------------------------------------------


class DashboardError(ZixirError):
    """Base class for errors raised by `zixir_actors.dashboard`."""


class DashboardUnavailableError(DashboardError, ImportError):
    """The dashboard's web libraries (its optional extra) are not installed.

    Example:
        >>> "pip install 'zixir-actors[dashboard]'" in str(DashboardUnavailableError("starlette"))
        True

    Attributes:
        module: the module that could not be imported.
    """

    def __init__(self, module: str) -> None:
        self.module = module
        super().__init__(f"the dashboard needs {module}: pip install 'zixir-actors[dashboard]'")
