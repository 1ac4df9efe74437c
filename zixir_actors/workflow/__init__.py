"""Workflows: DAG runs with durable checkpoints, retries, dead letters and resume.

Example:
    >>> import tempfile
    >>> from zixir_actors.checkpoint import open_store
    >>> from zixir_actors.workflow import RetryPolicy, Workflow
    >>> wf = Workflow("doc-greet")
    >>> @wf.step()
    ... def name(who):
    ...     return who.title()
    >>> @wf.step(depends_on=["name"], retry=RetryPolicy(max_attempts=3, initial_delay=0.1))
    ... def greeting(name, ctx):
    ...     return f"hello {name} (attempt {ctx.attempt})"
    >>> with open_store(tempfile.mkdtemp()) as store:
    ...     result = wf.run({"who": "ada"}, store=store)
    >>> result.status, result.outputs["greeting"]
    ('succeeded', 'hello Ada (attempt 1)')

Each step's output is committed to LMDB, together with the mark that the
step is done, as the step finishes; concurrent steps share one commit and
one fsync. After any crash, `Workflow.resume(run_id)` skips committed steps
and re-runs the ones that were in flight (at-least-once; `ctx.idempotency_key`
is stable). `Workflow.plan(run_id)` tells what a resume will skip, run or
re-run and why: each checkpoint records a hash of its step's code and inputs.

Code-first workflows: `durable(name)` decorates ``body(ctx, **inputs)`` (or
``Workflow(name, body=fn)``): loops, branches and waits in plain Python,
each `ctx` call recorded and replayed after a crash (see `DurableContext`).

Inside the runtime (`zixir_actors.start()`), runs are `WorkflowRun` actors
under the ``zixir.workflows`` DynamicSupervisor (`child_spec`) and use the
``zixir.store`` checkpoint store; a crashed run actor is restarted and
continues from its checkpoints.
"""

from __future__ import annotations

from zixir_actors.checkpoint import AttemptInfo, DeadLetter
from zixir_actors.errors import (
    EventTimeoutError,
    NondeterminismError,
    RunEndedError,
    StepFailedError,
)
from zixir_actors.workflow._dead import DeadLetters
from zixir_actors.workflow._durable import (
    AsyncDurableContext,
    BodyRun,
    CallFuture,
    DurableContext,
    durable,
    interrupt_parked,
    send,
)
from zixir_actors.workflow._hashing import code_hash, fingerprint
from zixir_actors.workflow._history import RunState, configure_run_logs, run_detail, run_state
from zixir_actors.workflow._loop import shutdown_loop
from zixir_actors.workflow._progress import ProgressItem, ProgressStream
from zixir_actors.workflow._results import (
    Plan,
    PlanAction,
    PlanEntry,
    RunHandle,
    RunResult,
    RunStatus,
    StepContext,
    StepError,
    StepResult,
    StepStatus,
)
from zixir_actors.workflow._run import MAX_CRASHES, WorkflowRun, running_here
from zixir_actors.workflow._spec import (
    DEFAULT_MAX_CONCURRENCY,
    NO_RETRY,
    FailurePolicy,
    RetryPolicy,
    Step,
)
from zixir_actors.workflow._timers import TIMERS_NAME, TimerService
from zixir_actors.workflow._timers import child_spec as timers_child_spec
from zixir_actors.workflow._workflow import (
    RESULT_GRACE,
    RUN_SHUTDOWN,
    WORKFLOWS_NAME,
    Workflow,
    child_spec,
    defined_workflows,
    find_workflow,
)

__all__ = [
    "DEFAULT_MAX_CONCURRENCY",
    "MAX_CRASHES",
    "NO_RETRY",
    "RESULT_GRACE",
    "RUN_SHUTDOWN",
    "TIMERS_NAME",
    "WORKFLOWS_NAME",
    "AsyncDurableContext",
    "AttemptInfo",
    "BodyRun",
    "CallFuture",
    "DeadLetter",
    "DeadLetters",
    "DurableContext",
    "EventTimeoutError",
    "FailurePolicy",
    "NondeterminismError",
    "Plan",
    "PlanAction",
    "PlanEntry",
    "ProgressItem",
    "ProgressStream",
    "RetryPolicy",
    "RunEndedError",
    "RunHandle",
    "RunResult",
    "RunState",
    "RunStatus",
    "Step",
    "StepContext",
    "StepError",
    "StepFailedError",
    "StepResult",
    "StepStatus",
    "TimerService",
    "Workflow",
    "WorkflowRun",
    "child_spec",
    "code_hash",
    "configure_run_logs",
    "defined_workflows",
    "durable",
    "find_workflow",
    "fingerprint",
    "interrupt_parked",
    "run_detail",
    "run_state",
    "running_here",
    "send",
    "shutdown_loop",
    "timers_child_spec",
]
