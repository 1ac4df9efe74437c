"""`Workflow`: a validated DAG of steps, and the calls that run, resume, plan and cancel it."""

from __future__ import annotations

import contextvars
import dataclasses
import inspect
import time
import types
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, overload

from supervisors import ChildSpec, DynamicSupervisor, SupervisorRef, whereis
from zixir_actors._clock import SYSTEM_CLOCK, Clock
from zixir_actors._runtimes import current_owner, owned_elsewhere
from zixir_actors.checkpoint import CheckpointClient, RunRecord, connect
from zixir_actors.errors import (
    ConfigError,
    CycleError,
    DuplicateStepError,
    InvalidStepError,
    RunActiveError,
    UnknownDependencyError,
    UnknownStepError,
    WorkflowDefinitionError,
    WorkflowError,
)
from zixir_actors.observability import Span, span
from zixir_actors.workflow._hashing import code_hash
from zixir_actors.workflow._plan import compute_plan
from zixir_actors.workflow._results import Plan, RunHandle, RunResult
from zixir_actors.workflow._run import (
    WORKFLOWS_NAME,
    WorkflowRun,
    active_run,
    launch_failed,
    register_run,
)
from zixir_actors.workflow._scheduler import Job
from zixir_actors.workflow._spec import (
    DEFAULT_MAX_CONCURRENCY,
    FAILURE_POLICIES,
    NO_RETRY,
    FailurePolicy,
    RetryPolicy,
    Step,
    descendants,
)
from zixir_actors.workflow._telemetry import Telemetry, log

F = TypeVar("F", bound=Callable[..., Any])
__all__ = ["RESULT_GRACE", "RUN_SHUTDOWN", "WORKFLOWS_NAME", "Workflow", "child_spec",
           "defined_workflows", "find_workflow"]

RUN_SHUTDOWN = 5.0
"""Seconds a run actor gets to stop when its supervisor shuts down."""
RESULT_GRACE = 30.0
"""Extra seconds `run(timeout=t)` waits past `t` for the run to record its end."""

_WORKFLOWS: weakref.WeakValueDictionary[str, Workflow] = weakref.WeakValueDictionary()


def defined_workflows() -> list[str]:
    """Names of the workflows defined in this process."""
    return list(_WORKFLOWS.keys())


def find_workflow(name: str) -> Workflow | None:
    """The `Workflow` of this name defined in this process (the latest one), if any."""
    return _WORKFLOWS.get(name)


def child_spec(*, max_children: int | None = None, max_restarts: int = 3,
               max_seconds: float = 5.0) -> ChildSpec:
    """The spec of ``zixir.workflows``, the DynamicSupervisor of run actors.

    Example:
        >>> child_spec().name
        'zixir.workflows'
    """
    return DynamicSupervisor.child_spec("workflows", name=WORKFLOWS_NAME,
                                        max_children=max_children,
                                        max_restarts=max_restarts, max_seconds=max_seconds)


class Workflow:
    """A DAG of steps whose runs are checkpointed, retried, resumable and inspectable.

    Example:
        >>> wf = Workflow("doc-etl")
        >>> @wf.step()
        ... def fetch(url):
        ...     return f"<html>{url}</html>"
        >>> @wf.step(depends_on=["fetch"], retry=RetryPolicy(max_attempts=3))
        ... def parse(fetch, ctx):
        ...     return len(fetch)
        >>> wf.order
        ('fetch', 'parse')

    Then ``wf.run({"url": "x"})`` returns a `RunResult` once every step ran
    (in dependency order, independent steps in parallel), each output
    committed to LMDB as the step finishes.

    Where the store comes from: the `store=` argument of a call, else the one
    given here, else the runtime's ``zixir.store`` (`zixir_actors.start()`);
    with none of them a call raises `NotStartedError`. Runs are children of
    the runtime's ``zixir.workflows`` DynamicSupervisor, which restarts a
    crashed run actor (it continues from its checkpoints); without that
    supervisor (embedded use) a run actor is started unsupervised and a crash
    fails the run with `RunInterruptedError` (resume it by hand).

    Args:
        name: the workflow's name (stored with each run).
        steps: `Step` objects to add now (the workflow is validated at once).
        on_failure: ``"stop"`` (default): when a step exhausts its retries, start
            no new steps and end the run as failed; ``"continue"``: keep running
            every branch that does not depend on the failed step.
        max_concurrency: steps of one run executing at once (default 8).
        store: the `CheckpointClient` to use (default: the runtime's store).
        clock: what retry backoff sleeps on and timestamps read (tests pass a
            `FakeClock`).
        executor: where steps run unless a step says otherwise: ``"local"``,
            ``"ray"``, an `Executor`, or None (default: the runtime's, local
            unless ``start(executor=...)`` chose another). Results come back
            into the same checkpoints; retries, dead letters and resume work
            the same on every executor.

    Raises:
        WorkflowDefinitionError: (and subclasses) a bad step or option.
    """

    def __init__(self, name: str, steps: Iterable[Step] = (), *,
                 on_failure: FailurePolicy = "stop",
                 max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
                 store: CheckpointClient | None = None, clock: Clock = SYSTEM_CLOCK,
                 executor: Any = None, body: Callable[..., Any] | None = None) -> None:
        from zixir_actors.executor import is_executor_choice

        if not isinstance(name, str) or not name or "\x00" in name:
            raise InvalidStepError("workflow name", name, "must be a non-empty string")
        if on_failure not in FAILURE_POLICIES:
            raise InvalidStepError("on_failure", on_failure, f"must be one of {FAILURE_POLICIES}",
                                   workflow=name)
        self.name = name
        self.on_failure = on_failure
        self.max_concurrency = _check_concurrency(max_concurrency, name)
        self.store = store
        self.clock = clock
        if not is_executor_choice(executor):
            raise InvalidStepError("executor", executor,
                                   "must be 'local', 'ray', an Executor or None", workflow=name)
        self.executor = executor
        self._steps: dict[str, Step] = {}
        self._order: tuple[str, ...] | None = None
        self._children: dict[str, tuple[str, ...]] = {}
        self._hashes: dict[str, str] = {}
        self._telemetry: Telemetry | None = None
        self.body = _check_body(body, name)
        if body is not None and tuple(steps):
            raise WorkflowDefinitionError("has a body and steps: a code-first workflow's "
                                          "steps are the ctx calls of its body", workflow=name)
        for step in steps:
            self.add(step)
        if self._steps:
            self.validate()
        _WORKFLOWS[name] = self

    def __repr__(self) -> str:
        if self.body is not None:
            return f"Workflow({self.name!r}, body={getattr(self.body, '__qualname__', self.body)})"
        return f"Workflow({self.name!r}, steps={list(self._steps)})"

    # -- building --

    def add(self, step: Step) -> Step:
        """Add a step.

        Raises:
            DuplicateStepError: a step with this name exists.
        """
        if not isinstance(step, Step):
            raise InvalidStepError("step", step, "must be a Step", workflow=self.name)
        if self.body is not None:
            raise WorkflowDefinitionError("is code-first (it has a body): call steps from the "
                                          "body with ctx.step", workflow=self.name)
        if step.name in self._steps:
            raise DuplicateStepError(self.name, step.name)
        self._steps[step.name] = step
        self._order = None
        return step

    @overload
    def step(self, fn: F, *, name: str | None = None,
             depends_on: str | Iterable[str] = (), retry: RetryPolicy = NO_RETRY,
             timeout: float | None = None, limits: Any = None,
             version: str | None = None, executor: Any = None,
             resources: Any = None) -> F: ...

    @overload
    def step(self, fn: None = None, *, name: str | None = None,
             depends_on: str | Iterable[str] = (), retry: RetryPolicy = NO_RETRY,
             timeout: float | None = None, limits: Any = None,
             version: str | None = None, executor: Any = None,
             resources: Any = None) -> Callable[[F], F]: ...

    def step(self, fn: F | None = None, *, name: str | None = None,
             depends_on: str | Iterable[str] = (), retry: RetryPolicy = NO_RETRY,
             timeout: float | None = None, limits: Any = None,
             version: str | None = None, executor: Any = None,
             resources: Any = None) -> F | Callable[[F], F]:
        """Decorator adding the function as a step (see `Step` for the options).

        Usable bare (``@wf.step``) or called (``@wf.step(depends_on=["a"])``);
        the function is returned unchanged. The step's name is `name` or the
        function's name.
        """
        def add(func: F) -> F:
            deps = (depends_on,) if isinstance(depends_on, str) else tuple(depends_on)
            self.add(Step(name or func.__name__, func, deps, retry, timeout, limits, version,
                          executor, resources))
            return func

        return add(fn) if fn is not None else add

    def validate(self) -> None:
        """Check the whole graph; runs do it by themselves.

        Raises:
            UnknownDependencyError: a step depends on a step that does not exist.
            CycleError: the dependencies form a cycle (the error names it).
            WorkflowDefinitionError: the workflow has no steps.
        """
        _ = self.order

    @property
    def steps(self) -> Mapping[str, Step]:
        return types.MappingProxyType(self._steps)

    @property
    def order(self) -> tuple[str, ...]:
        """Step names in a dependency order (validates the workflow)."""
        if self._order is None:
            self._order = () if self.body is not None else self._build()
        return self._order

    @property
    def children(self) -> Mapping[str, tuple[str, ...]]:
        _ = self.order
        return self._children

    @property
    def code_hashes(self) -> Mapping[str, str]:
        _ = self.order
        return self._hashes

    def _build(self) -> tuple[str, ...]:
        if not self._steps:
            raise WorkflowDefinitionError("has no steps", workflow=self.name)
        children: dict[str, list[str]] = {name: [] for name in self._steps}
        for step in self._steps.values():
            for dep in step.depends_on:
                if dep not in self._steps:
                    raise UnknownDependencyError(self.name, step.name, dep)
                children[dep].append(step.name)
        waiting = {name: len(step.depends_on) for name, step in self._steps.items()}
        ready = [name for name, n in waiting.items() if n == 0]
        order: list[str] = []
        while ready:
            name = ready.pop(0)
            order.append(name)
            for child in children[name]:
                waiting[child] -= 1
                if waiting[child] == 0:
                    ready.append(child)
        if len(order) != len(self._steps):
            raise CycleError(self.name, self._find_cycle(set(self._steps) - set(order)))
        self._children = {name: tuple(c) for name, c in children.items()}
        self._hashes = {name: code_hash(s.fn, s.version) for name, s in self._steps.items()}
        return tuple(order)

    def _find_cycle(self, stuck: set[str]) -> tuple[str, ...]:
        # Every stuck step depends on another stuck step: walk until a repeat.
        name = min(stuck)
        path: list[str] = []
        seen: dict[str, int] = {}
        while name not in seen:
            seen[name] = len(path)
            path.append(name)
            name = next(d for d in self._steps[name].depends_on if d in stuck)
        cycle = path[seen[name]:]
        return (*cycle, cycle[0])

    # -- running --

    def run(self, inputs: Mapping[str, Any] | None = None, *, run_id: str | None = None,
            max_concurrency: int | None = None, timeout: float | None = None,
            store: CheckpointClient | None = None) -> RunResult:
        """Run the workflow and wait for its `RunResult`.

        Example:
            ``result = wf.run({"url": u}, max_concurrency=4, timeout=600)``

        Args:
            inputs: the workflow inputs, handed to steps by parameter name.
            run_id: the run's id (default a new uuid). The id of an existing
                run of this workflow continues it with these inputs: steps whose
                checkpoint is still valid are skipped (see `plan`).
            max_concurrency: steps executing at once (default the workflow's).
            timeout: seconds the run may take; then it stops, running steps
                are abandoned and the result's status is ``"timed_out"``.
            store: the checkpoint store (see the class docstring).

        Raises:
            MissingInputError: a step parameter matches no input or dependency.
            RunActiveError: that run id is already running in this process.
            NotStartedError: no store is available.
            WorkflowError: the run id belongs to another workflow.
            RunInterruptedError: the run's actor was shut down or kept crashing.
            ZixirTimeoutError: the run did not record its end `RESULT_GRACE`
                seconds after `timeout`.
        """
        handle = self.start(inputs, run_id=run_id, max_concurrency=max_concurrency,
                            timeout=timeout, store=store)
        return handle.result(timeout=None if timeout is None else timeout + RESULT_GRACE)

    def validate_inputs(self, inputs: Mapping[str, Any] | None) -> dict[str, Any]:
        """Check `inputs` as `start` does (a queue checks them when it stores a run).

        Raises:
            ConfigError: not a mapping of names, or they do not fit the body.
            MissingInputError: a step parameter matches no input or dependency.
        """
        order = self.order
        checked = _check_inputs(inputs, self.name)
        if self.body is not None:
            _check_body_inputs(self.body, checked, self.name)
        for name in order:
            self._steps[name].bind(self.name, checked, _Anything())
        return checked

    def schedule(self, cron: str, inputs: Mapping[str, Any] | None = None, *,
                 name: str | None = None, timezone: str = "UTC", catch_up: str = "latest",
                 queue: Any = None) -> Any:
        """Run this workflow on a cron schedule, stored in the data directory.

        Example:
            ``nightly.schedule("0 2 * * *", {"full": True}, timezone="Europe/Paris")``

        See `zixir_actors.schedule.schedule` for the arguments, the catch-up
        rules and the exactly-once promise.
        """
        from zixir_actors.schedule import schedule

        return schedule(self, cron, inputs, name=name, timezone=timezone, catch_up=catch_up,
                        queue=queue)

    def start(self, inputs: Mapping[str, Any] | None = None, *, run_id: str | None = None,
              max_concurrency: int | None = None, timeout: float | None = None,
              store: CheckpointClient | None = None) -> RunHandle:
        """Start a run and return its `RunHandle` at once (same arguments as `run`)."""
        inputs = self.validate_inputs(inputs)
        client = self._store(store)
        if run_id is None:
            run_id = uuid.uuid4().hex
        elif not isinstance(run_id, str) or not run_id or "\x00" in run_id:
            raise ConfigError("run_id", run_id, "must be a non-empty string without NUL")
        existing = client.find_run(run_id)
        if existing is not None:
            self._check_owner(existing)
            if owned_elsewhere(existing, client) is not None:
                raise RunActiveError(run_id, owner=existing.owner)
        return self._launch(client, run_id, inputs, existing, max_concurrency, timeout)

    def resume(self, run_id: str, *, from_step: str | None = None,
               max_concurrency: int | None = None, timeout: float | None = None,
               store: CheckpointClient | None = None) -> RunResult:
        """Continue a stored run (after a crash, a failure or a cancel) and wait for it.

        Steps with a valid checkpoint are skipped; steps whose code or inputs
        changed since their checkpoint re-run, with everything downstream
        (`plan` shows which and why). `from_step` forces that step and
        everything downstream of it to run again.

        Raises:
            RunNotFoundError: no such run.
            UnknownStepError: `from_step` is not a step of this workflow.
            RunActiveError: the run is running in this process.
            WorkflowError: the run belongs to another workflow.
            (and the errors of `run`)
        """
        client = self._store(store)
        record = client.get_run(run_id)
        self._check_owner(record)
        if self.body is None and from_step is not None and from_step not in self.steps:
            raise UnknownStepError(self.name, from_step)
        if active_run(run_id) is not None:
            raise RunActiveError(run_id)
        if owned_elsewhere(record, client) is not None:
            raise RunActiveError(run_id, owner=record.owner)
        if from_step is not None:
            if self.body is not None:
                from zixir_actors.workflow._durable import drop_from

                drop_from(self, client, run_id, from_step)
            else:
                client.invalidate(run_id, descendants(self.steps, [from_step]))
        log.bind(workflow=self.name, run_id=run_id).info("run resumed", from_step=from_step)
        handle = self._launch(client, run_id, dict(record.inputs), record, max_concurrency,
                              timeout)
        return handle.result(timeout=None if timeout is None else timeout + RESULT_GRACE)

    def plan(self, run_id: str, *, from_step: str | None = None,
             inputs: Mapping[str, Any] | None = None,
             store: CheckpointClient | None = None) -> Plan:
        """What `resume(run_id, from_step=...)` (or a run with `inputs`) would do, and why.

        Example:
            >>> # print(wf.plan(run_id)) shows, one line per step:
            >>> # "parse  rerun  code changed since its checkpoint"

        Raises:
            RunNotFoundError: no such run.
            UnknownStepError: `from_step` is not a step of this workflow.
            CorruptBlobError: a checkpoint is damaged (the error names it).
        """
        client = self._store(store)
        record = client.get_run(run_id)
        self._check_owner(record)
        if self.body is not None:
            from zixir_actors.workflow._durable import plan

            return plan(self, client, record)
        if from_step is not None and from_step not in self.steps:
            raise UnknownStepError(self.name, from_step)
        used = dict(record.inputs) if inputs is None else _check_inputs(inputs, self.name)
        return compute_plan(self, run_id, used, client.steps(run_id), from_step)

    def cancel(self, run_id: str, *, store: CheckpointClient | None = None) -> bool:
        """Stop a run: no new step starts, running steps are abandoned (their
        results are discarded), and the run ends as ``"cancelled"``. It can be
        resumed later.

        A run executing in another (or a dead) process is marked cancelled in
        the store. Returns False if the run had already ended.

        Raises:
            RunNotFoundError: no such run.
        """
        control = active_run(run_id)
        if control is not None:
            return control.cancel()
        client = self._store(store)
        record = client.get_run(run_id)
        if record.status not in ("running", "parked", "interrupted"):
            return False
        client.save_run(dataclasses.replace(record, status="cancelled", waiting=None,
                                            updated_at=self.clock.time()))
        return True

    def send(self, run_id: str, event: str, payload: Any = None, *,
             store: CheckpointClient | None = None) -> None:
        """Send `event` to a code-first run of this workflow (see `zixir_actors.send`).

        Raises:
            RunNotFoundError: no such run.
            RunEndedError: the run has ended.
            WorkflowError: the run belongs to another workflow.
        """
        from zixir_actors.workflow._durable import send_checked

        send_checked(self, run_id, event, payload, store)

    async def run_async(self, inputs: Mapping[str, Any] | None = None, *,
                        run_id: str | None = None, max_concurrency: int | None = None,
                        timeout: float | None = None,
                        store: CheckpointClient | None = None) -> RunResult:
        """`run`, awaitable: the event loop is not blocked while the run works.

        Example:
            ``result = await agent.run_async({"question": q})`` in a FastAPI handler.
        """
        import asyncio

        handle = await asyncio.to_thread(self.start, inputs, run_id=run_id,
                                         max_concurrency=max_concurrency, timeout=timeout,
                                         store=store)
        wait = asyncio.wrap_future(handle.future)
        if timeout is None:
            return await wait
        try:
            return await asyncio.wait_for(wait, timeout + RESULT_GRACE)
        except asyncio.TimeoutError:
            from zixir_actors.errors import ZixirTimeoutError

            raise ZixirTimeoutError(f"run {handle.run_id!r}", timeout) from None

    # -- internals --

    def _store(self, store: CheckpointClient | None) -> CheckpointClient:
        if store is not None:
            return store
        if self.store is not None:
            return self.store
        return connect(clock=self.clock)

    def _telemetry_for(self) -> Telemetry:
        if self._telemetry is None:
            self._telemetry = Telemetry(self.name)
        return self._telemetry

    def _check_owner(self, record: RunRecord) -> None:
        if record.workflow != self.name:
            raise WorkflowError(f"run {record.run_id!r} belongs to workflow "
                                f"{record.workflow!r}, not {self.name!r}")

    def _launch(self, client: CheckpointClient, run_id: str, inputs: dict[str, Any],
                existing: RunRecord | None, max_concurrency: int | None,
                timeout: float | None) -> RunHandle:
        concurrency = _check_concurrency(
            self.max_concurrency if max_concurrency is None else max_concurrency, self.name)
        if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
            raise ConfigError("timeout", timeout, "must be a number > 0 or None")
        if self.body is not None:
            from zixir_actors.workflow._durable import launch

            return launch(self, client, run_id, inputs, existing, concurrency, timeout)
        if existing is not None:  # a damaged checkpoint fails here, before the status changes
            compute_plan(self, run_id, inputs, client.steps(run_id))
        control = register_run(run_id)
        run_span: Span | None = None
        try:
            now = self.clock.time()
            created = existing.created_at if existing is not None else now
            client.save_run(RunRecord(run_id, self.name, "running", inputs, created, now,
                                      owner=current_owner()))
            if self._telemetry is None:
                self._telemetry = Telemetry(self.name)
            # The run's span is current in a context of its own, copied from the
            # caller's (so the caller's span is its parent); the run's worker
            # threads start from copies of it.
            context = contextvars.copy_context()
            run_span = context.run(_enter_span, "workflow.run", workflow=self.name,
                                   run_id=run_id, resumed=existing is not None)
            job = Job(self, run_id, inputs, client, self.clock, concurrency, created,
                      None if timeout is None else time.monotonic() + timeout, run_span,
                      self._telemetry, context)
            supervisor = whereis(WORKFLOWS_NAME)
            if supervisor is not None:
                SupervisorRef(supervisor).start_child(ChildSpec(
                    id=f"run:{run_id}", start=WorkflowRun, restart="transient",
                    shutdown=RUN_SHUTDOWN,
                    kwargs={"job": job, "control": control, "supervised": True}))
            else:
                WorkflowRun.start(job=job, control=control, supervised=False)
        except BaseException as exc:
            launch_failed(client, control, run_span, exc)
            raise
        return RunHandle(run_id, control.future,
                         lambda rid: self.cancel(rid, store=client))


def _enter_span(name: str, **attributes: Any) -> Span:
    """Open a span and make it current in the running context (see `_launch`)."""
    return span(name, **attributes).__enter__()


class _Anything(dict):  # type: ignore[type-arg]
    """Stands for dependency outputs when checking that every parameter can be filled."""

    def __getitem__(self, key: Any) -> None:
        return None


def _check_body(body: Any, workflow: str) -> Callable[..., Any] | None:
    if body is None:
        return None
    if not callable(body):
        raise InvalidStepError("body", body, "must be a function body(ctx, **inputs)",
                               workflow=workflow)
    try:
        params = list(inspect.signature(body).parameters.values())
    except (TypeError, ValueError):
        return body  # type: ignore[no-any-return]
    if not params or params[0].kind not in (inspect.Parameter.POSITIONAL_ONLY,
                                            inspect.Parameter.POSITIONAL_OR_KEYWORD):
        raise InvalidStepError("body", body, "must take ctx as its first parameter",
                               workflow=workflow)
    return body  # type: ignore[no-any-return]


def _check_body_inputs(body: Callable[..., Any], inputs: Mapping[str, Any],
                       workflow: str) -> None:
    try:
        signature = inspect.signature(body)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(None, **inputs)
    except TypeError as exc:
        raise ConfigError("inputs", sorted(inputs), f"do not fit the body of {workflow!r}: "
                          f"{exc}") from None


def _check_inputs(inputs: Mapping[str, Any] | None, workflow: str) -> dict[str, Any]:
    if inputs is None:
        return {}
    if not isinstance(inputs, Mapping):
        raise ConfigError("inputs", inputs, "must be a mapping of names to values")
    for key in inputs:
        if not isinstance(key, str):
            raise ConfigError("inputs", key, f"input names of {workflow!r} must be strings")
    return dict(inputs)


def _check_concurrency(value: Any, workflow: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidStepError("max_concurrency", value, "must be an integer >= 1",
                               workflow=workflow)
    return value
