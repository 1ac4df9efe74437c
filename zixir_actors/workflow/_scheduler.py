"""The scheduler of one run incarnation: dependency bookkeeping, worker threads, attempts.

A worker takes a ready step, runs its attempts (retries sleep on the
injectable clock), commits the checkpoint through the store, then itself
picks the next ready step, so a chain of steps costs no thread hand-off
besides the store's commit. When nothing is left, the last worker tells the
run's actor (`Finished`); an unexpected error in a worker tells it `Crash`,
which crashes the actor so that its supervisor restarts the run.

A store that cannot write (a full disk) is not a crash: restarting would only
fail again and burn the supervisor's restart intensity. The run stops
scheduling, ends as failed, and the store's error (`StoreFullError`) is what
its caller gets (`store_error`).

A step abandoned by `stop` (cancel, run timeout) may still return later; its
result is discarded, never committed: a commit starts only while the run has
not ended, and `stop` waits for the commits already under way. Its remote
calls (steps on an executor) are cancelled: a Ray task is killed.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import random
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from zixir_actors import _codec
from zixir_actors._clock import Clock, SystemClock
from zixir_actors.checkpoint import (
    AttemptInfo,
    CheckpointClient,
    DeadLetter,
    PendingSync,
)
from zixir_actors.errors import (
    CorruptBlobError,
    StepTimeoutError,
    StoreError,
    UnserializableError,
)
from zixir_actors.executor import InFlight, call_step, default_executor, offload
from zixir_actors.observability import Span
from zixir_actors.observability._tracing import enter_span, exit_span
from zixir_actors.result import Ok
from zixir_actors.workflow._calls import call as invoke
from zixir_actors.workflow._calls import with_timeout
from zixir_actors.workflow._hashing import fingerprint
from zixir_actors.workflow._history import live_log
from zixir_actors.workflow._plan import idempotency_key
from zixir_actors.workflow._results import (
    Plan,
    RunResult,
    StepContext,
    StepError,
    StepResult,
    succeeded_step,
)
from zixir_actors.workflow._spec import Step, descendants
from zixir_actors.workflow._telemetry import Telemetry, log

if TYPE_CHECKING:
    from zixir_actors.workflow._workflow import Workflow

__all__ = ["FINISHED", "SANDBOX_POOL", "Crash", "Finished", "Job", "Scheduler", "cancel_remote",
           "invoke"]

SANDBOX_POOL = "zixir.sandboxes"
"""The runtime's sandbox pool, used by steps with `limits` when it is running."""

@dataclass(slots=True)
class Job:
    """Everything an incarnation of `WorkflowRun` needs; shared across restarts."""

    workflow: Workflow
    run_id: str
    inputs: Mapping[str, Any]
    store: CheckpointClient
    clock: Clock
    max_concurrency: int
    created_at: float
    deadline: float | None
    span: Span
    telemetry: Telemetry
    context: contextvars.Context
    rng: random.Random = field(default_factory=random.Random)


_UNSET: Any = object()  # a step's value when its commit did not happen


class _Outcome:
    # A plain slotted class: built once per step, where a frozen dataclass's
    # field-by-field ``object.__setattr__`` costs a microsecond.
    __slots__ = ("output", "result")

    def __init__(self, result: StepResult, output: Any = None) -> None:
        self.result = result
        self.output = output


class Finished:
    __slots__ = ()


class Crash:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


FINISHED = Finished()


def _error_of(exc: BaseException) -> StepError:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return StepError(type(exc).__qualname__, str(exc), text)


def cancel_remote(calls: InFlight, workflow: str, run_id: str) -> None:
    """Cancel a stopping run's remote calls (they do not run on, abandoned).

    Never raises: an executor that cannot cancel (its cluster is gone) leaves
    those calls running, and their late results are discarded anyway; the
    run's end must still be recorded.
    """
    try:
        calls.cancel_all()
    except Exception as exc:
        log.bind(workflow=workflow, run_id=run_id).warning(
            "cannot cancel the run's remote calls", error=f"{type(exc).__name__}: {exc}")


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, StepTimeoutError) or getattr(exc, "kind", None) == "timeout"


def _safe_inputs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    safe: dict[str, Any] = {}
    for key, value in kwargs.items():
        try:
            _codec.encode(value)
            safe[key] = value
        except UnserializableError:
            safe[key] = f"<unserializable {type(value).__name__}: {value!r:.200}>"
    return safe


class Scheduler:
    """Dependency bookkeeping and worker threads of one incarnation of a run."""

    def __init__(self, job: Job, plan: Plan, notify: Callable[[Any], None]) -> None:
        self.job = job
        self.wf = job.workflow
        self.notify = notify
        self.lock = threading.Lock()
        self.wake = threading.Event()  # set when the run stops: cuts retry sleeps short
        self.status: dict[str, str] = {}
        self.results: dict[str, StepResult] = {}
        self.outputs: dict[str, Any] = {}
        self.waiting: dict[str, int] = {}
        self.ready: deque[str] = deque()
        self.running: set[str] = set()
        self.active = 0
        self.closing = False
        self.failed = False
        self.ended: str | None = None
        self.started = time.perf_counter()
        self.letters: dict[str, list[str]] = {}
        self.parked: dict[str, DeadLetter] = {}  # the newest letter of each step, to replace
        self.store_error: StoreError | None = None
        # Step commits under way; `stop` waits for them. A commit appends, then
        # checks `ended`; `stop` sets `ended`, then waits for this to empty:
        # one of them always sees the other (list.append and pop are atomic),
        # and a step's commit takes no lock (16 workers would convoy on it).
        self.committing: list[None] = []
        self.commit_done = threading.Condition(self.lock)
        # The fsync of the last checkpoint, while still under way: only a lone
        # worker leaves one (`_execute`), so that its bookkeeping and its choice
        # of the next step overlap the disk write. It is waited for before any
        # step runs, before more workers start, and before the run ends.
        self.unsynced: list[tuple[PendingSync, str]] = []
        self._workers = 0
        self.remote_calls = InFlight()  # steps on executors: `stop` cancels them
        self._steps = self.wf.steps
        self._hashes = self.wf.code_hashes
        self._children = self.wf.children
        for name in self.wf.order:
            if name in plan.checkpoints:
                self.status[name] = "cached"
                self.outputs[name] = plan.checkpoints[name].output
                self.results[name] = StepResult(name, "cached")
        for name in self.wf.order:
            if name not in self.status:
                self.status[name] = "pending"
                deps = self.wf.steps[name].depends_on
                self.waiting[name] = sum(1 for d in deps if self.status[d] != "cached")
                if self.waiting[name] == 0:
                    self.ready.append(name)

    # -- lifecycle --

    def start(self) -> None:
        try:
            letters = self.job.store.dead_letters(run_id=self.job.run_id)
        except CorruptBlobError as exc:  # a damaged letter must not stop every run
            log.bind(workflow=self.wf.name, run_id=self.job.run_id).warning(
                "cannot read dead letters; resolved letters stay parked", error=str(exc))
            letters = []
        for letter in letters:
            self.letters.setdefault(letter.step, []).append(letter.id)
            self.parked[letter.step] = letter  # oldest first: the last one is the newest
        self.job.telemetry.dead_letters(self.job.store.count_dead_letters())
        with self.lock:
            if not self.waiting:
                self.ended = "succeeded"
            else:
                self._spawn_locked(min(self.job.max_concurrency, len(self.ready)))
        if self.ended is not None:
            self.notify(FINISHED)

    def stop(self, status: str) -> bool:
        """End the run now as `status` (cancelled, timed_out); running steps are abandoned."""
        with self.lock:
            if self.ended is not None:
                return False
            self.ended = status
            while self.committing:  # a step whose commit began before the end keeps it
                self.commit_done.wait(0.01)  # an ending commit notifies; this bounds a miss
            for name in self.running:
                self.status[name] = "cancelled"
                self.results[name] = StepResult(name, "cancelled")
            self._mark_not_run_locked()
        self.wake.set()
        cancel_remote(self.remote_calls, self.wf.name, self.job.run_id)
        self.notify(FINISHED)
        return True

    def close(self) -> None:
        """Stop scheduling without ending the run (the actor is going away)."""
        with self.lock:
            if self.ended is None:
                self.ended = "interrupted"
        self.wake.set()

    def result(self) -> RunResult:
        with self.lock:
            results = self.results
            steps = {name: results.get(name) or StepResult(name, "not_run")
                     for name in self.wf.order}
            return RunResult(self.job.run_id, self.wf.name, self.ended,  # type: ignore[arg-type]
                             dict(self.outputs), steps, time.perf_counter() - self.started)

    # -- workers --

    def _spawn_locked(self, count: int) -> None:
        if count <= 0:  # a chain: the worker that finished a step runs its successor
            return
        if self.unsynced:  # new workers may run steps on its output: on disk first
            self._wait_synced(locked=True)
            if self.closing:
                return
        for _ in range(min(count, self.job.max_concurrency - self.active)):
            self.active += 1
            self._workers += 1
            context = self.job.context.copy()
            thread = threading.Thread(
                target=context.run, args=(self._work,), daemon=True,
                name=f"zixir-wf-{self.job.run_id[:12]}-{self._workers}")
            thread.start()

    def _work(self) -> None:
        lock = self.lock
        try:
            finished = False
            # One lock round per step: recording a step's outcome and taking the
            # next ready step (its successor, in a chain) happen under one hold.
            with lock:
                while True:
                    if self.ended is not None or self.closing or not self.ready:
                        if self.unsynced:  # on disk before this worker may end the run
                            lock.release()
                            try:
                                self._wait_synced()
                            finally:
                                lock.acquire()
                            continue
                        self.active -= 1
                        finished = self._maybe_end_locked()
                        break
                    name = self.ready.popleft()
                    self.running.add(name)
                    self.status[name] = "running"
                    lock.release()
                    try:
                        outcome = self._execute(name)
                    except StoreError as exc:  # cannot write: end the run, don't crash it
                        outcome = self._store_failed(name, exc)
                    finally:
                        lock.acquire()
                    self.running.discard(name)
                    if self.ended is None:
                        self._record_locked(name, outcome)
            if finished:
                self.notify(FINISHED)
        except BaseException as exc:  # a scheduler bug crashes the run actor
            for pending, _ in self.unsynced:
                with contextlib.suppress(Exception):  # the crash must still be told
                    pending.wait()  # the store's next writers wait for it
            if self.ended is None:
                self.notify(Crash(exc))
            else:  # an abandoned step finished after its run ended (store may be gone)
                log.bind(workflow=self.wf.name, run_id=self.job.run_id).debug(
                    "abandoned step ended after its run", error=repr(exc))

    def _wait_synced(self, *, locked: bool = False) -> None:
        """Wait for the fsync of the checkpoint left under way (`unsynced`); if it
        failed, the run fails as for a failed commit, and so does that step (its
        checkpoint may not be on disk: a resume runs it again)."""
        while self.unsynced:
            pending, name = self.unsynced.pop()
            try:
                pending.wait()
            except StoreError as exc:
                result = self._store_failed(name, exc, locked=locked).result
                with contextlib.nullcontext() if locked else self.lock:
                    self.results[name] = result
                    self.status[name] = "failed"

    def _store_failed(self, name: str, exc: StoreError, *, locked: bool = False) -> _Outcome:
        log.bind(workflow=self.wf.name, run_id=self.job.run_id, step=name).error(
            "the store cannot write; ending the run", error=str(exc))
        with contextlib.nullcontext() if locked else self.lock:
            if self.store_error is None:
                self.store_error = exc
            self.failed = self.closing = True
        return _Outcome(StepResult(name, "failed", error=_error_of(exc)))

    def _maybe_end_locked(self) -> bool:
        if self.ended is not None or self.running or self.active:
            return False
        if self.ready and not self.closing:
            return False
        self.ended = "failed" if self.failed else "succeeded"
        self._mark_not_run_locked()
        return True

    def _mark_not_run_locked(self) -> None:
        for name, status in self.status.items():
            if status in ("pending", "running"):
                self.status[name] = "not_run"

    def _record_locked(self, name: str, outcome: _Outcome) -> None:
        result = outcome.result
        self.results[name] = result
        self.status[name] = result.status
        if result.status == "succeeded":
            self.outputs[name] = outcome.output
            for child in self._children[name]:
                if self.status.get(child) == "pending":
                    self.waiting[child] -= 1
                    if self.waiting[child] == 0:
                        self.ready.append(child)
            self._spawn_locked(len(self.ready) - 1)
            return
        self.failed = True
        if self.wf.on_failure == "stop":
            self.closing = True
            return
        for other in descendants(self.wf.steps, [name]) - {name}:
            if self.status.get(other) == "pending":
                self.status[other] = "upstream_failed"
                self.results[other] = StepResult(other, "upstream_failed")

    # -- one step --

    def _execute(self, name: str) -> _Outcome:
        # The per-step hot path of every run: no bound logger (the fields go
        # with each record instead), the attempt's span opened and closed
        # without a scope object, one clock read for the checkpoint.
        job, wf = self.job, self.wf
        run_id, store, telemetry = job.run_id, job.store, job.telemetry
        step = self._steps[name]
        kwargs = step.bind(wf.name, job.inputs, self.outputs)
        input_hash = fingerprint(kwargs)
        key = idempotency_key(run_id, name)
        takes_ctx = step.takes_ctx
        run_log = live_log(run_id)
        history: list[AttemptInfo] = []
        total = 0.0
        attempt = 0
        while True:
            attempt += 1
            if self.ended is not None:
                return _Outcome(StepResult(name, "cancelled", attempt - 1, total))
            ctx = StepContext(run_id, name, attempt, key, wf.name,
                              store=store) if takes_ctx else None
            # The attempt's span is current while the step runs (this worker's
            # context descends from the run's), so spans the step opens nest in it.
            attempt_span = enter_span("workflow.step", {
                "step": name, "attempt": attempt, "run_id": run_id, "workflow": wf.name})
            started_at = job.clock.time()
            log.step_started(run_log, wf.name, run_id, name, attempt)
            failure: Exception | None = None
            try:
                if self.unsynced:  # the checkpoint before this one is on disk before this runs
                    self._wait_synced()
                    if self.closing:
                        return _Outcome(StepResult(name, "not_run"))
                began = time.perf_counter()
                try:
                    value = self._call(step, kwargs, ctx)
                except Exception as exc:  # the step's failure is data
                    failure = exc
                seconds = time.perf_counter() - began
                total += seconds
                if failure is None:
                    self.committing.append(None)
                    if self.ended is not None:  # abandoned: its result is discarded
                        self.committing.pop()
                        return _Outcome(StepResult(name, "cancelled", attempt, total))
                    committed = False
                    try:
                        # A lone worker leaves the fsync under way (the store may too):
                        # no other worker exists to run a step on this output meanwhile.
                        sync = store.save_step_fields(
                            run_id, name, value, self._hashes[name], input_hash, attempt,
                            total, job.clock.time(), key,
                            resolve_letters=self.letters.get(name, ()),
                            defer_sync=self.active == 1)
                        if sync is not None:
                            self.unsynced.append((sync, name))
                        committed = True
                    except UnserializableError as exc:
                        failure = exc
                    finally:
                        self._commit_ended(name, value if committed else _UNSET, attempt, total)
                if failure is not None:
                    attempt_span.record_exception(failure)
            finally:
                exit_span(attempt_span, sys.exc_info()[1])
            if failure is not None:
                timed_out = _is_timeout(failure)
                telemetry.attempt(name, "timed_out" if timed_out else "failed", seconds)
                history.append(AttemptInfo(attempt, started_at, seconds,
                                           type(failure).__qualname__, str(failure), timed_out))
                if (not isinstance(failure, UnserializableError) and self.ended is None
                        and step.retry.should_retry(failure, attempt)):
                    delay = step.retry.delay(attempt, job.rng)
                    log.warning("step failed, retrying", workflow=wf.name, run_id=run_id,
                                step=name, attempt=attempt, delay=delay,
                                error=f"{type(failure).__qualname__}: {failure}")
                    self._sleep(delay)
                    continue
                if self.ended is not None:
                    return _Outcome(StepResult(name, "cancelled", attempt, total))
                return self._give_up(step, kwargs, failure, history, total, timed_out)
            telemetry.attempt(name, "succeeded", seconds)
            log.step_succeeded(run_log, wf.name, run_id, name, attempt, seconds)
            return _Outcome(succeeded_step(name, attempt, total), value)

    def _commit_ended(self, name: str, value: Any, attempt: int, total: float) -> None:
        """A step's commit ended (`value` is `_UNSET` if it did not commit)."""
        if self.ended is None:
            self.committing.pop()
            if self.ended is None:
                return
            with self.lock:  # the run ended meanwhile: `stop` may be waiting for this
                self.commit_done.notify_all()
            return
        with self.lock:  # `stop` is waiting for this commit: report the step as done first
            if value is not _UNSET:
                self.running.discard(name)
                self.status[name] = "succeeded"
                self.outputs[name] = value
                self.results[name] = succeeded_step(name, attempt, total)
            self.committing.pop()
            self.commit_done.notify_all()

    def _call(self, step: Step, kwargs: dict[str, Any], ctx: StepContext | None) -> Any:
        call = dict(kwargs)
        if ctx is not None:
            call["ctx"] = ctx
        if step.executor is None and self.wf.executor is None:
            executor = default_executor()  # `offload`'s answer, without checking two Nones
        else:
            executor = offload(step.executor, self.wf.executor)
        if executor is not None:  # its result comes back here, into the same checkpoint
            return call_step(executor, step.fn, call, step=step.name, timeout=step.timeout,
                             limits=step.limits, resources=step.resources,
                             inflight=self.remote_calls)
        if step.limits is not None:
            return _sandboxed(step, call)
        if step.timeout is None:
            return invoke(step.fn, (), call)
        return with_timeout(lambda: invoke(step.fn, (), call), step.timeout, step.name,
                            thread=f"zixir-wf-step-{step.name}")

    def _sleep(self, delay: float) -> None:
        clock = self.job.clock
        if isinstance(clock, SystemClock):
            self.wake.wait(delay)
        else:
            clock.sleep(delay)

    def _give_up(self, step: Step, kwargs: Mapping[str, Any], exc: BaseException,
                 history: list[AttemptInfo], total: float, timed_out: bool) -> _Outcome:
        job = self.job
        error = _error_of(exc)
        # One letter per stuck step: a resumed run that fails again replaces the
        # step's letter (in the same commit; it keeps every attempt so far)
        # instead of adding a second one.
        previous = self.parked.get(step.name)
        letter = DeadLetter(uuid.uuid4().hex, job.run_id,
                            self.wf.name, step.name, _safe_inputs(kwargs), error.type,
                            error.message, error.traceback,
                            (() if previous is None else previous.attempts) + tuple(history),
                            job.clock.time())
        job.store.save_dead_letter(letter, replaces=self.letters.get(step.name, ()))
        self.parked[step.name] = letter
        self.letters[step.name] = [letter.id]
        job.telemetry.exhausted(step.name)
        job.telemetry.dead_letters(job.store.count_dead_letters())
        log.bind(workflow=self.wf.name, run_id=job.run_id, step=step.name).error(
            "step dead-lettered", attempts=len(history), letter=letter.id, error=str(error))
        status = "timed_out" if timed_out else "failed"
        return _Outcome(StepResult(step.name, status, len(history), total,  # type: ignore[arg-type]
                                   error, letter.id))


def _sandboxed(step: Step, call: dict[str, Any]) -> Any:
    """Run a step with `limits` in a sandbox worker: the runtime's pool
    (``zixir.sandboxes``) when it runs, else a private one for this attempt."""
    import dataclasses

    from supervisors import whereis
    from zixir_actors.sandbox import Sandbox

    limits = step.limits
    if step.timeout is not None and getattr(limits, "timeout", None) is None:
        limits = dataclasses.replace(limits, timeout=step.timeout)
    pool = SANDBOX_POOL if whereis(SANDBOX_POOL) is not None else None
    with Sandbox(limits, pool=pool, name=f"workflow.{step.name}") as sandbox:
        if inspect.iscoroutinefunction(step.fn):
            outcome = sandbox.run(invoke, step.fn, (), call)
        else:
            outcome = sandbox.run(step.fn, **call)
    if isinstance(outcome, Ok):
        return outcome.value
    raise outcome.error
