"""What a run gives back: `StepContext`, `StepResult`, `RunResult`, `Plan`, `RunHandle`."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

from zixir_actors.errors import RunFailedError, ZixirTimeoutError

if TYPE_CHECKING:
    from loguru import Logger

__all__ = [
    "Plan",
    "PlanAction",
    "PlanEntry",
    "RunHandle",
    "RunResult",
    "RunStatus",
    "StepContext",
    "StepError",
    "StepResult",
    "StepStatus",
]

RunStatus = Literal["succeeded", "failed", "cancelled", "timed_out"]
"""How a run ended. A run that is still going (or whose process died) is
stored as ``"running"``."""
StepStatus = Literal["succeeded", "cached", "failed", "timed_out", "upstream_failed",
                     "cancelled", "not_run"]
"""How a step ended: ``"cached"`` means its checkpoint was reused;
``"upstream_failed"`` that a step it depends on failed (``continue`` policy);
``"not_run"`` that the run stopped before reaching it."""
PlanAction = Literal["skip", "run", "rerun"]


class _Remote:
    """Stands for the progress log of a step context sent to another process."""

    def __reduce__(self) -> str:
        return "_REMOTE"


_REMOTE = _Remote()


@dataclass(frozen=True, slots=True)
class StepContext:
    """The `ctx` a step receives.

    Attributes:
        run_id: the run.
        step: the step's name.
        attempt: 1 for the first attempt, 2 for the first retry...
        idempotency_key: the same for every attempt of this step in this run,
            across retries, crashes and resumes: pass it to external services
            so that an at-least-once re-execution does not act twice.
        workflow: the workflow's name.
    """

    run_id: str
    step: str
    attempt: int
    idempotency_key: str
    workflow: str
    progress: Any = field(default=None, repr=False, compare=False)
    store: Any = field(default=None, repr=False, compare=False)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # A step sent to a sandbox worker or a Ray task gets its identity, not
        # this process's progress log or store client (they hold actor refs).
        return (StepContext, (self.run_id, self.step, self.attempt, self.idempotency_key,
                              self.workflow, _REMOTE))

    def emit(self, value: Any) -> None:
        """Append `value` to the run's progress stream (a token, a partial result).

        Raises:
            WorkflowError: the step belongs to a DAG workflow, which has no
                progress stream (emit from a code-first run's step), or it
                runs in a sandbox process or on an executor, from where its
                items cannot reach the run (emit from the body, with the result).
        """
        if self.progress is None or self.progress is _REMOTE:
            from zixir_actors.errors import WorkflowError

            if self.progress is _REMOTE:
                raise WorkflowError(f"step {self.step!r}: ctx.emit is not available in a step "
                                    "that runs in a sandbox process or on an executor; emit "
                                    "from the body (or a step in this process) instead")
            raise WorkflowError(f"step {self.step!r}: ctx.emit needs a code-first run "
                                "(a body decorated with durable())")
        self.progress.append("emit", self.step, value)

    def run(self, workflow: Any, inputs: Mapping[str, Any] | None = None, *,
            timeout: float | None = None) -> Any:
        """Run `workflow` as a child of this step and return its outputs.

        The child's run id is ``"<run_id>/<step>"``: a retry or a resume of
        this step continues the same child instead of starting another.

        Raises:
            WorkflowError: the child run did not succeed.
            ZixirTimeoutError: it did not end within `timeout` seconds.
        """
        from zixir_actors.workflow._durable import run_child_blocking

        return run_child_blocking(workflow, f"{self.run_id}/{self.step}", inputs, self.store,
                                  timeout)

    @property
    def logger(self) -> Logger:
        """The logger bound to ``run_id``, ``step``, ``attempt`` and ``workflow``."""
        from zixir_actors.observability import logger

        return logger.bind(run_id=self.run_id, step=self.step, attempt=self.attempt,
                           workflow=self.workflow)


@dataclass(frozen=True, slots=True)
class StepError:
    """Why a step failed: the last attempt's exception, as text (it may not pickle)."""

    type: str
    message: str
    traceback: str = ""

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"


@dataclass(frozen=True, slots=True)
class StepResult:
    """One step's outcome in a run.

    `duration` is the seconds its attempts took in this run (0 if cached);
    `dead_letter` the id of the dead letter it went to, if it did.
    """

    name: str
    status: StepStatus
    attempts: int = 0
    duration: float = 0.0
    error: StepError | None = None
    dead_letter: str | None = None


# What a frozen dataclass's __init__ does (object.__setattr__ per field, from
# Python), done by the slots' own setters: every succeeded step makes one.
_set_name, _set_status, _set_attempts, _set_duration, _set_error, _set_letter = (
    StepResult.__dict__[f.name].__set__ for f in fields(StepResult))
_new = object.__new__


def succeeded_step(name: str, attempts: int, duration: float) -> StepResult:
    """``StepResult(name, "succeeded", attempts, duration)``, at half the cost."""
    made: StepResult = _new(StepResult)
    _set_name(made, name)
    _set_status(made, "succeeded")
    _set_attempts(made, attempts)
    _set_duration(made, duration)
    _set_error(made, None)
    _set_letter(made, None)
    return made


@dataclass(frozen=True, slots=True)
class RunResult:
    """A finished run.

    Example:
        ``result = wf.run({"url": u}); result.status, result.outputs["summary"]``

    Attributes:
        run_id: the run.
        workflow: the workflow's name.
        status: ``"succeeded"``, ``"failed"``, ``"cancelled"`` or ``"timed_out"``.
        outputs: the output of every step that has one (run now or cached);
            for a code-first run, the body's return value if it is a
            mapping, else ``{"result": value}``.
        steps: each step's `StepResult` (a code-first run: each call, by label
            ``"name#n"``).
        duration: seconds from start to end of this execution.
        output: a code-first run's return value (a DAG run: None).
        error: why a code-first run's body failed (None otherwise).
    """

    run_id: str
    workflow: str
    status: RunStatus
    outputs: Mapping[str, Any]
    steps: Mapping[str, StepResult]
    duration: float = 0.0
    output: Any = None
    error: StepError | None = None

    def progress(self, *, after: int | None = None, store: Any = None) -> Any:
        """The run's stored progress items (see `RunHandle.progress`)."""
        from zixir_actors.workflow._durable import progress_of

        return progress_of(self.run_id, store, after, None)

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"

    @property
    def attempts(self) -> dict[str, int]:
        """Attempts per step in this execution."""
        return {name: s.attempts for name, s in self.steps.items()}

    @property
    def durations(self) -> dict[str, float]:
        """Seconds per step in this execution."""
        return {name: s.duration for name, s in self.steps.items()}

    @property
    def errors(self) -> dict[str, StepError]:
        """The error of each step that failed or timed out."""
        return {name: s.error for name, s in self.steps.items() if s.error is not None}

    def raise_for_status(self) -> RunResult:
        """Return self if the run succeeded.

        Raises:
            RunFailedError: it did not; the error carries this result.
        """
        if self.status != "succeeded":
            raise RunFailedError(self)
        return self


@dataclass(frozen=True, slots=True)
class PlanEntry:
    """What a resume will do with one step, and why."""

    step: str
    action: PlanAction
    reason: str

    def __str__(self) -> str:
        return f"{self.step}: {self.action} ({self.reason})"


@dataclass(frozen=True, slots=True)
class Plan:
    """What resuming a run will skip, run or re-run, step by step, in run order.

    Example:
        >>> plan = Plan("r1", "etl", (PlanEntry("fetch", "skip", "checkpoint found"),
        ...                          PlanEntry("parse", "rerun", "code changed")))
        >>> plan["parse"].action, plan.to_run
        ('rerun', ('parse',))
    """

    run_id: str
    workflow: str
    entries: tuple[PlanEntry, ...]
    checkpoints: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __iter__(self) -> Iterator[PlanEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, step: str) -> PlanEntry:
        for entry in self.entries:
            if entry.step == step:
                return entry
        raise KeyError(step)

    @property
    def to_skip(self) -> tuple[str, ...]:
        return tuple(e.step for e in self.entries if e.action == "skip")

    @property
    def to_run(self) -> tuple[str, ...]:
        """Steps that will execute (``run`` or ``rerun``)."""
        return tuple(e.step for e in self.entries if e.action != "skip")

    def __str__(self) -> str:
        width = max((len(e.step) for e in self.entries), default=4)
        lines = [f"plan for run {self.run_id} of {self.workflow}:"]
        lines += [f"  {e.step.ljust(width)}  {e.action.ljust(5)}  {e.reason}"
                  for e in self.entries]
        return "\n".join(lines)


class RunHandle:
    """A run in progress: `start()` returns one.

    Example:
        ``handle = wf.start({"n": 3}); result = handle.result(timeout=60)``
        (or ``result = await handle`` in asyncio).
    """

    def __init__(self, run_id: str, future: concurrent.futures.Future[RunResult],
                 cancel: Any, *, store: Any = None) -> None:
        self.run_id = run_id
        self.future = future
        self._cancel = cancel
        self._store = store

    def status(self) -> str:
        """``"running"``, ``"parked"`` (a code-first run waiting), or how it ended."""
        if self.future.done():
            try:
                return self.future.result().status
            except Exception:
                return "interrupted"
        if self._store is not None:
            record = self._store.find_run(self.run_id)
            if record is not None:
                return str(record.status)
        return "running"

    def wait(self, *, timeout: float | None = None) -> str:
        """Wait until the run ends or, a code-first run, parks; return its status.

        Raises:
            ZixirTimeoutError: neither happened within `timeout` seconds.
        """
        from zixir_actors.workflow._durable import wait_settled

        if not wait_settled(self.run_id, self.future, timeout):
            raise ZixirTimeoutError(f"run {self.run_id!r}", timeout)
        return self.status()

    def progress(self, *, after: int | None = None, timeout: float | None = None) -> Any:
        """Iterate the run's progress: past items first, then live ones until it ends.

        Example:
            ``for item in handle.progress(): print(item.value, end="")``
            (``async for`` works too). Pass ``after=item.seq`` to continue
            after an item already seen.

        Raises (while iterating):
            ZixirTimeoutError: the run did not end within `timeout` seconds.
        """
        from zixir_actors.workflow._durable import progress_of

        return progress_of(self.run_id, self._store, after, timeout)

    def __repr__(self) -> str:
        state = "done" if self.future.done() else "running"
        return f"RunHandle({self.run_id!r}, {state})"

    def done(self) -> bool:
        return self.future.done()

    def result(self, *, timeout: float | None = None) -> RunResult:
        """Wait for the run to end and return its `RunResult`.

        Raises:
            ZixirTimeoutError: it did not end within `timeout` seconds (it keeps running).
            RunInterruptedError: its actor was shut down or kept crashing; resume it.
        """
        try:
            return self.future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            raise ZixirTimeoutError(f"run {self.run_id!r}", timeout) from None

    def cancel(self) -> bool:
        """Stop the run (see `Workflow.cancel`); False if it had already ended."""
        return bool(self._cancel(self.run_id))

    def __await__(self) -> Generator[Any, None, RunResult]:
        return asyncio.wrap_future(self.future).__await__()
