"""`WorkflowRun`: the actor that drives one run.

The actor is the run's supervised identity; the work happens in the worker
threads of its `Scheduler` (at most `max_concurrency`). When the scheduler
reports that nothing is left, the actor records the run's end and stops
normally; the run's future is resolved in `on_stop`.

If the actor crashes, its supervisor (``zixir.workflows``) starts it again
with the same arguments: the new incarnation plans from the checkpoints and
continues. Steps that were in flight run again (at-least-once); their
`ctx.idempotency_key` does not change.

A store that cannot write (full disk) ends the run instead: its header is
saved as failed with the error if that still fits, and the run's future gets
the store's error (`StoreFullError`) either way, so no caller waits forever
and the supervisor's restart intensity is not spent on a disk that is full.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import pykka

from supervisors import SupervisedActor, monitor, whereis
from zixir_actors._runtimes import current_owner
from zixir_actors.checkpoint import RunRecord
from zixir_actors.errors import RunActiveError, RunInterruptedError, StoreError
from zixir_actors.workflow._history import open_run_log, record_interrupted
from zixir_actors.workflow._plan import compute_plan
from zixir_actors.workflow._results import RunResult
from zixir_actors.workflow._scheduler import Crash, Finished, Job, Scheduler
from zixir_actors.workflow._telemetry import end_failed, log, report_end

__all__ = ["MAX_CRASHES", "WORKFLOWS_NAME", "WorkflowRun", "active_children", "active_run",
           "await_restart", "launch_failed", "parent_supervisor", "register_run", "release_run",
           "restarted"]

MAX_CRASHES = 3
"""Crashes of one run's actor after which its future fails with
`RunInterruptedError` instead of waiting for another restart."""

_ACTIVE: dict[str, _Control] = {}
_ACTIVE_LOCK = threading.Lock()
WORKFLOWS_NAME = "zixir.workflows"
"""The registered name of the DynamicSupervisor of the run actors (`WorkflowRun`, `BodyRun`)."""


class _Control:
    """What every incarnation of a run's actor shares: the future, cancellation, crashes."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.future: concurrent.futures.Future[RunResult] = concurrent.futures.Future()
        self.lock = threading.Lock()
        self.crashes = 0
        self.cancelled = False
        self.scheduler: Scheduler | None = None
        self.owner = current_owner()  # the owner its record names while it runs here
        self.logs: Any = None  # its `_history.RunLog`, opened by the first incarnation
        # While a crashed actor waits for its supervisor to start the next one:
        # what `await_restart` watches (cleared by `restarted`).
        self.awaiting: object | None = None
        self.watch: Any = None

    def cancel(self) -> bool:
        with self.lock:
            if self.future.done():
                return False
            self.cancelled = True
            scheduler = self.scheduler
        if scheduler is not None:
            scheduler.stop("cancelled")
        return True


def await_restart(control: _Control, parent: pykka.ActorRef[Any] | None,
                  let_go: Callable[[], None]) -> None:
    """A supervised run actor crashed: its supervisor starts the next incarnation,
    unless it stops first (past its restart intensity it stops every child, and
    forgets this one): then nothing would end the run, and `let_go()` does."""
    token = object()
    control.awaiting = token

    def gone(_down: Any) -> None:
        if control.awaiting is token:
            control.awaiting = None
            let_go()

    if parent is None:
        gone(None)
    else:
        control.watch = monitor(parent, watcher=gone)


def restarted(control: _Control) -> None:
    """An incarnation of the run's actor started: no longer waiting for one."""
    control.awaiting = None
    watch, control.watch = control.watch, None
    if watch is not None:
        watch.cancel()


def parent_supervisor(supervised: bool) -> pykka.ActorRef[Any] | None:
    """The supervisor starting a run actor (``zixir.workflows``), if supervised."""
    return whereis(WORKFLOWS_NAME) if supervised else None


def register_run(run_id: str) -> _Control:
    """Claim `run_id` for this process.

    Raises:
        RunActiveError: it is already running here.
    """
    with _ACTIVE_LOCK:
        if run_id in _ACTIVE:
            raise RunActiveError(run_id)
        control = _ACTIVE[run_id] = _Control(run_id)
        return control


def release_run(control: _Control) -> None:
    with _ACTIVE_LOCK:
        if _ACTIVE.get(control.run_id) is control:
            del _ACTIVE[control.run_id]


def launch_failed(store: Any, control: _Control, run_span: Any, exc: BaseException) -> None:
    """A run could not start after it was marked running (its actor, its deadline
    timer): record it as interrupted, so that resume continues it, end its span
    and let it go. The caller re-raises `exc`."""
    if run_span is not None:
        end_failed(run_span)
    record_interrupted(store, control.run_id, control.owner,
                       f"cannot start: {type(exc).__name__}: {exc}")
    release_run(control)


def active_run(run_id: str) -> _Control | None:
    """The control block of a run executing in this process, if any."""
    with _ACTIVE_LOCK:
        return _ACTIVE.get(run_id)


def active_children(run_id: str) -> list[_Control]:
    """The control blocks of the child runs of `run_id` executing in this process
    (child run ids start with ``"<run_id>/"``)."""
    prefix = run_id + "/"
    with _ACTIVE_LOCK:
        return [c for rid, c in _ACTIVE.items() if rid.startswith(prefix)]


def running_here(run_id: str) -> bool:
    """Whether a `WorkflowRun` of this process is executing `run_id` now."""
    return active_run(run_id) is not None


_DRIVE = object()


class WorkflowRun(SupervisedActor):
    """The actor of one run, a child of ``zixir.workflows`` (see the module docstring).

    Args:
        job: what to run (shared by every incarnation).
        control: the future and cancellation flag (shared by every incarnation).
        supervised: whether a supervisor restarts this actor when it crashes;
            if not, a crash fails the run's future at once.
    """

    def __init__(self, *, job: Job, control: _Control, supervised: bool) -> None:
        super().__init__()
        self.job = job
        self.control = control
        self.supervised = supervised
        self.parent = parent_supervisor(supervised)
        self.scheduler: Scheduler | None = None
        self.result: RunResult | None = None
        self.error: BaseException | None = None  # ends the future instead of `result`
        self.timer: threading.Timer | None = None

    def on_start(self) -> None:
        restarted(self.control)
        self.actor_ref.tell(_DRIVE)

    def on_receive(self, message: Any) -> Any:
        if message is _DRIVE:
            self._drive()
        elif isinstance(message, Finished):
            self._finish()
        elif isinstance(message, Crash):
            raise message.error
        return None

    def _drive(self) -> None:
        job, control = self.job, self.control
        if control.future.done():
            self.stop()
            return
        if control.logs is None:
            control.logs = open_run_log(job.run_id, job.store, fresh=False)
            log.bind(workflow=job.workflow.name, run_id=job.run_id).info(
                "run resumed" if control.logs.next_seq else "run started",
                max_concurrency=job.max_concurrency)
        if control.crashes:
            log.bind(workflow=job.workflow.name, run_id=job.run_id).warning(
                "run actor restarted, resuming from checkpoints", crashes=control.crashes)
        try:
            plan = compute_plan(job.workflow, job.run_id, job.inputs,
                                job.store.steps(job.run_id))
        except Exception as exc:  # a corrupt checkpoint fails the run, clearly
            # This incarnation was restarted mid-run (a first launch checks the
            # checkpoints before marking the run running): record that it cannot
            # go on, so that later `start()`s do not try it again and again.
            self._save_header("failed", f"cannot resume: {exc}", {})
            job.span.end(error=exc)
            control.future.set_exception(exc)
            self.stop()
            return
        scheduler = Scheduler(job, plan, self._tell_self)
        self.scheduler = scheduler
        with control.lock:
            control.scheduler = scheduler
            cancelled = control.cancelled
        if cancelled:
            scheduler.stop("cancelled")
            return
        if job.deadline is not None:
            self.timer = threading.Timer(max(0.0, job.deadline - time.monotonic()),
                                         scheduler.stop, args=("timed_out",))
            self.timer.daemon = True
            self.timer.start()
        scheduler.start()

    def _tell_self(self, message: Any) -> None:
        # If this incarnation is gone, its successor plans from the checkpoints.
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(message)

    def _save_header(self, status: str, error: str | None, steps: dict[str, str]) -> bool:
        job = self.job
        try:
            job.store.save_run(RunRecord(job.run_id, job.workflow.name, status, job.inputs,
                                         job.created_at, job.clock.time(), error, steps,
                                         owner=current_owner()))
        except StoreError as exc:
            if self.error is None:
                self.error = exc
            log.bind(workflow=job.workflow.name, run_id=job.run_id).error(
                "cannot record the run's end", status=status, error=str(exc))
            return False
        return True

    def _finish(self) -> None:
        job, scheduler = self.job, self.scheduler
        assert scheduler is not None
        result = scheduler.result()
        if scheduler.store_error is not None:
            self.error = scheduler.store_error
        self._save_header(result.status,
                          "; ".join(f"{n}: {e}" for n, e in result.errors.items()) or None,
                          {n: s.status for n, s in result.steps.items()})
        report_end(job.telemetry, job.span, job.workflow.name, job.run_id, result.status,
                   result.ok, result.duration)
        self.result = result
        self.stop()

    def _teardown(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            if self.timer is not threading.current_thread():
                self.timer.join(timeout=1.0)
        if self.scheduler is not None:
            self.scheduler.close()

    def _let_go(self, reason: str, *, crashed: bool = False) -> None:
        """This process stops running the run: record it as interrupted (if still ours)."""
        job = self.job
        bound = log.bind(workflow=job.workflow.name, run_id=job.run_id)
        # A clean stop is expected (INFO: the command line shows no line for it).
        (bound.warning if crashed else bound.info)("run interrupted", reason=reason)
        record_interrupted(job.store, job.run_id, self.control.owner, reason)

    def _close_logs(self) -> None:
        if self.control.logs is not None:
            self.control.logs.close()

    def on_stop(self) -> None:
        try:
            self._teardown()
            if not self.control.future.done() and self.error is None and self.result is None:
                self._let_go("runtime stopped")
            self._close_logs()
        finally:  # whatever failed above, whoever waits on the run hears of its end
            # Released before the future resolves: whoever waits on it may resume at once.
            release_run(self.control)
            future = self.control.future
            if not future.done():
                if self.result is None:
                    end_failed(self.job.span)
                if self.error is not None:
                    future.set_exception(self.error)
                elif self.result is not None:
                    future.set_result(self.result)
                else:
                    future.set_exception(RunInterruptedError(self.job.run_id, "shutdown"))

    def on_failure(self, exc_type: Any = None, exc: Any = None, tb: Any = None) -> None:
        control = self.control
        control.crashes += 1
        try:
            self._teardown()
            log.bind(workflow=self.job.workflow.name, run_id=self.job.run_id).error(
                "run actor crashed", error=repr(exc), crashes=control.crashes)
        finally:
            if not self.supervised or control.crashes >= MAX_CRASHES:
                self._end_crashed(exc, f"its actor crashed ({control.crashes} times)")
            else:
                await_restart(control, self.parent, lambda: self._end_crashed(
                    exc, "its actor crashed and its supervisor stopped"))

    def _end_crashed(self, exc: Any, why: str) -> None:
        """No incarnation comes after this crashed one: the run ends as interrupted."""
        control = self.control
        try:
            if not control.future.done():
                self._let_go(f"{why}: {exc!r}", crashed=True)
            self._close_logs()
        finally:  # whoever waits on the run must hear of it
            release_run(control)
            if not control.future.done():
                end_failed(self.job.span)
                control.future.set_exception(RunInterruptedError(self.job.run_id, exc))
