"""Code-first durable workflows: a body of plain Python whose `ctx` calls are recorded.

A body ``body(ctx, **inputs)`` runs in a thread of its own (an ``async def``
body on the runtime's event loop). Every `ctx` call gets the next position
in the run; its outcome is committed to LMDB under that position, with the
call's kind and name. After any crash the body runs again from the top and
each call that has a record returns it at once (replay); the first call
without a record runs live. A recorded call that does not match what the
body asks for at its position raises `NondeterminismError`.

A body that waits (`ctx.wait_for` with no event in its mailbox, a long
`ctx.sleep`, a child run that has not ended) parks: the body unwinds, its
actor stops and no thread is held. The run's record says what it waits
for; `send`, the timer service or the child's end wakes it, and it replays
up to where it stopped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import functools
import inspect
import random
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import pykka

from supervisors import ChildSpec, SupervisedActor, SupervisorRef, whereis
from zixir_actors import _codec
from zixir_actors._clock import SYSTEM_CLOCK, SystemClock
from zixir_actors._runtimes import current_owner
from zixir_actors.checkpoint import AttemptInfo, CheckpointClient, DeadLetter, RunRecord
from zixir_actors.errors import (
    ConfigError,
    CorruptBlobError,
    EventTimeoutError,
    NondeterminismError,
    RunActiveError,
    RunEndedError,
    RunInterruptedError,
    RunNotFoundError,
    StepFailedError,
    StepTimeoutError,
    StoreError,
    UnknownStepError,
    UnserializableError,
    WorkflowError,
    ZixirTimeoutError,
)
from zixir_actors.executor._adapters import InFlight
from zixir_actors.executor._select import default_executor
from zixir_actors.observability import Span, span
from zixir_actors.observability._tracing import enter_span, exit_span
from zixir_actors.result import Ok
from zixir_actors.workflow._calls import awaited, call, with_timeout
from zixir_actors.workflow._hashing import code_hash
from zixir_actors.workflow._history import (
    RunLog,
    open_run_log,
    record_interrupted,
)
from zixir_actors.workflow._loop import run_coro, submit
from zixir_actors.workflow._progress import ProgressStream, forget, log_for
from zixir_actors.workflow._results import (
    Plan,
    PlanEntry,
    RunHandle,
    RunResult,
    StepContext,
    StepError,
    StepResult,
    succeeded_step,
)
from zixir_actors.workflow._run import (
    MAX_CRASHES,
    WORKFLOWS_NAME,
    _Control,
    active_children,
    active_run,
    await_restart,
    launch_failed,
    parent_supervisor,
    register_run,
    release_run,
    restarted,
)
from zixir_actors.workflow._scheduler import cancel_remote
from zixir_actors.workflow._spec import NO_RETRY, RetryPolicy
from zixir_actors.workflow._telemetry import Telemetry, end_failed, log, report_end
from zixir_actors.workflow._timers import on_rearm, timers_for

if TYPE_CHECKING:
    from zixir_actors.workflow._workflow import Workflow

__all__ = ["CHILD_HOLD", "SLEEP_HOLD", "AsyncDurableContext", "BodyRun", "CallFuture",
           "DurableContext", "durable", "send"]

SLEEP_HOLD = 1.0
"""A `ctx.sleep` (or the rest of one) at most this long keeps its thread
instead of parking, on the system clock."""
CHILD_HOLD = 1.0
"""Seconds `ctx.run` waits in its thread for a child run before parking."""
RESULT_POS = 2**63
"""The position of a run's outcome record among its call records."""
ENDED = frozenset({"succeeded", "failed", "cancelled", "timed_out"})

# Record kinds: (kind, name, value, extra). A trailing "!" marks a failure,
# "?" a call that started and has not finished (its deadline is durable).
_STEP, _STEP_FAILED = "step", "step!"
_SLEEP, _WAIT, _WAITING = "sleep", "wait", "wait?"
_CHILD, _CHILD_FAILED = "child", "child!"
_VALUE_KINDS = ("now", "uuid", "random")
_SANDBOX_POOL = "zixir.sandboxes"


def _family(kind: str) -> str:
    return kind.rstrip("!?")


class _Park(BaseException):
    """Unwinds a body that has to wait (not an Exception: a body's ``except`` keeps out)."""

    def __init__(self, waiting: dict[str, Any], gen: int) -> None:
        super().__init__(waiting)
        self.waiting = waiting
        self.gen = gen


class _Stop(BaseException):
    """Unwinds a body whose run was cancelled, timed out or interrupted."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


class _PlanStop(BaseException):
    """Ends a planning replay at the first call that would run live."""


class _StoreFailed(BaseException):
    """A commit failed: the run ends with the store's error (a body cannot swallow it)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


@dataclasses.dataclass(frozen=True, slots=True)
class _Options:
    retry: RetryPolicy
    timeout: float | None
    limits: Any
    executor: Any
    resources: Any


def _options(retry: RetryPolicy | None, timeout: float | None, limits: Any, executor: Any,
             resources: Any, label: str) -> _Options:
    if (retry is None and timeout is None and limits is None and executor is None
            and resources is None):
        return _PLAIN
    from zixir_actors.errors import InvalidStepError
    from zixir_actors.executor import Resources, is_executor_choice

    if retry is None:
        retry = NO_RETRY
    elif not isinstance(retry, RetryPolicy):
        raise InvalidStepError("retry", retry, "must be a RetryPolicy", step=label)
    if timeout is not None and (not isinstance(timeout, (int, float))
                                or isinstance(timeout, bool) or not 0 < timeout < float("inf")):
        raise InvalidStepError("timeout", timeout, "must be a number > 0 or None", step=label)
    if not is_executor_choice(executor):
        raise InvalidStepError("executor", executor,
                               "must be 'local', 'ray', an Executor or None", step=label)
    if resources is not None and not isinstance(resources, Resources):
        raise InvalidStepError("resources", resources,
                               "must be a zixir_actors.executor.Resources", step=label)
    return _Options(retry, timeout, limits, executor, resources)


_PLAIN = _Options(NO_RETRY, None, None, None, None)


def _outputs(output: Any, status: str) -> dict[str, Any]:
    """A run's outputs: a Mapping the body returned, or its value under ``result``."""
    if isinstance(output, Mapping):
        return dict(output)
    return {} if output is None and status != "succeeded" else {"result": output}


@functools.lru_cache(maxsize=4096)
def _wants_ctx(fn: Callable[..., Any]) -> bool:
    try:
        return "ctx" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


_hashes: dict[Any, str] = {}


def _hash_of(fn: Callable[..., Any]) -> str:
    key = getattr(fn, "__code__", None) or fn
    try:
        found = _hashes.get(key)
    except TypeError:
        return code_hash(fn)
    if found is None:
        found = _hashes[key] = code_hash(fn)
    return found


def _call_name(fn: Any, name: str | None) -> str:
    if name is not None:
        if not isinstance(name, str) or not name or "#" in name or "\x00" in name:
            raise ConfigError("name", name, "must be a non-empty string without '#' or NUL")
        return name
    try:
        return _memo_name(fn)
    except TypeError:  # an unhashable callable: named each time
        return _name_of(fn)


@functools.lru_cache(maxsize=4096)
def _memo_name(fn: Any) -> str:
    return _name_of(fn)


def _name_of(fn: Any) -> str:
    if not callable(fn):
        raise ConfigError("fn", fn, "must be callable")
    target = fn
    while isinstance(target, functools.partial):
        target = target.func
    return str(getattr(target, "__qualname__", None) or getattr(target, "__name__", None)
               or type(target).__qualname__)


def _error_of(exc: BaseException) -> StepError:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return StepError(type(exc).__qualname__, str(exc), text)


def _safe(value: Any) -> Any:
    try:
        _codec.encode(value)
        return value
    except UnserializableError:
        return f"<unserializable {type(value).__name__}: {value!r:.200}>"


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, StepTimeoutError) or getattr(exc, "kind", None) == "timeout"


# -- calling a step function ------------------------------------------------------


def _attempt(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
             opts: _Options, label: str, wf_executor: Any, inflight: Any = None) -> Any:
    """One attempt of a step call: on an executor, in a sandbox, with a timeout, or inline."""
    if opts.executor is not None or wf_executor is not None or default_executor() is not None:
        from zixir_actors.executor import call_step, offload

        executor = offload(opts.executor, wf_executor)
        if executor is not None:
            remote = functools.partial(fn, *args) if args else fn
            return call_step(executor, remote, kwargs, step=label, timeout=opts.timeout,
                             limits=opts.limits, resources=opts.resources, inflight=inflight)
    if opts.limits is not None:
        return _sandboxed(fn, args, kwargs, opts, label)
    if opts.timeout is None:
        return call(fn, args, kwargs)
    return with_timeout(lambda: call(fn, args, kwargs), opts.timeout, label,
                        thread=f"zixir-wf-call-{label}")


def _sandboxed(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
               opts: _Options, label: str) -> Any:
    from zixir_actors.sandbox import Sandbox

    limits = opts.limits
    if opts.timeout is not None and getattr(limits, "timeout", None) is None:
        limits = dataclasses.replace(limits, timeout=opts.timeout)
    pool = _SANDBOX_POOL if whereis(_SANDBOX_POOL) is not None else None
    with Sandbox(limits, pool=pool, name=f"workflow.{label}") as sandbox:
        if inspect.iscoroutinefunction(fn):
            outcome = sandbox.run(_run_async_in_worker, fn, args, kwargs)
        else:
            outcome = sandbox.run(fn, *args, **kwargs)
    if isinstance(outcome, Ok):
        return outcome.value
    raise outcome.error


def _run_async_in_worker(fn: Callable[..., Any], args: tuple[Any, ...],
                         kwargs: dict[str, Any]) -> Any:
    return asyncio.run(awaited(fn(*args, **kwargs)))


# -- futures of spawned calls -----------------------------------------------------


class CallFuture:
    """The pending result of `ctx.spawn`: ``fut.result(timeout=...)`` waits for it.

    Raises (from `result`):
        StepFailedError: the call exhausted its retries.
        ZixirTimeoutError: it did not finish within `timeout` seconds.
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self._future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def __repr__(self) -> str:
        return f"CallFuture({self.label!r}, {'done' if self.done() else 'running'})"

    def done(self) -> bool:
        return self._future.done()

    def result(self, *, timeout: float | None = None) -> Any:
        try:
            return self._future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise ZixirTimeoutError(f"call {self.label!r}", timeout) from None

    def __await__(self) -> Any:
        return asyncio.wrap_future(self._future).__await__()


# -- one run's state in this process ----------------------------------------------


_BODIES: dict[str, _Body] = {}
_BODIES_LOCK = threading.Lock()


def _registered(run_id: str) -> _Body | None:
    with _BODIES_LOCK:
        return _BODIES.get(run_id)


class _Body:
    """Everything about one code-first run in this process, shared by its incarnations."""

    def __init__(self, wf: Workflow, run_id: str, inputs: dict[str, Any],
                 store: CheckpointClient, created_at: float, control: _Control,
                 run_span: Span, context: contextvars.Context, max_concurrency: int,
                 records: list[tuple[int, Any]] | None) -> None:
        self.wf = wf
        self.run_id = run_id
        self.inputs = inputs
        self.store = store
        self.clock = wf.clock
        self.created_at = created_at
        self.control = control
        self.span = run_span
        self.context = context
        self.telemetry = wf._telemetry_for()
        self.cond = threading.Condition(threading.Lock())
        self.state = "running"  # running | parked | ended
        self.waiting: dict[str, Any] | None = None
        self.gen = 0
        self.stopping: str | None = None
        # A commit the store refused: it ends the run, even if the body swallowed it.
        self.store_failed: _StoreFailed | None = None
        # Commits under way; `stop` waits for them. A commit appends, then
        # checks `stopping`; `stop` sets `stopping`, then waits for this to
        # empty: one always sees the other (list.append and pop are atomic), so
        # a commit takes no lock (as the DAG scheduler's).
        self.committing: list[None] = []
        self.commit_done = threading.Condition(threading.Lock())
        self.inflight = 0
        self.remote_calls = InFlight()  # steps on executors: `stop` cancels them
        self.incarnation = 0
        self.hold = threading.Event()
        self.settled = threading.Event()  # set while parked, and once ended
        self.spawn_slots = threading.BoundedSemaphore(max_concurrency)
        self.progress = log_for(run_id, store)
        self.started = time.perf_counter()
        self.steps: dict[str, StepResult] = {}
        self.pending_records: list[tuple[int, Any]] = []
        self.occurrences: dict[int, int] = {}  # position -> occurrence of calls in flight
        self.letters: dict[str, list[str]] = {}
        self.failures: dict[str, tuple[Any, tuple[AttemptInfo, ...]]] = {}
        self.preloaded = records
        self.body_emits: int | None = None  # body-level emits already in the stream
        self.is_async = inspect.iscoroutinefunction(wf.body)
        self.logs: RunLog | None = None  # its log lines, kept with it (set by `launch`)

    # -- lifecycle --

    def activate(self, incarnation: int | None = None) -> None:
        """Start an incarnation: a `BodyRun` actor that drives the body (the next
        one, unless `wake` numbered it already)."""
        if incarnation is None:
            with self.cond:
                self.incarnation += 1
                incarnation = self.incarnation
        supervisor = whereis(WORKFLOWS_NAME)
        kwargs = {"body": self, "supervised": supervisor is not None, "incarnation": incarnation}
        if supervisor is not None:
            SupervisorRef(supervisor).start_child(ChildSpec(
                id=f"run:{self.run_id}:{incarnation}", start=BodyRun,
                restart="transient", shutdown=5.0, kwargs=kwargs))
        else:
            BodyRun.start(**kwargs)

    def check_live(self) -> None:
        if self.stopping is not None:
            raise _Stop(self.stopping)

    def stop(self, status: str) -> bool:
        """End the run now as `status` (cancelled, timed_out); the body stops at its next call."""
        with self.cond:
            if self.state == "ended" or self.stopping is not None:
                return False
            self.stopping = status
            was_parked = self.state == "parked"
        try:
            # A commit in flight finishes first; none starts after this (it sees `stopping`).
            deadline = time.monotonic() + 30.0
            with self.commit_done:
                while self.committing and time.monotonic() < deadline:
                    self.commit_done.wait(0.01)  # an ending commit notifies; this bounds a miss
            cancel_remote(self.remote_calls, self.wf.name, self.run_id)
            self.hold.set()
            if was_parked:
                self._unparked()
        finally:  # `stopping` is set: nothing else will end the run
            self.finish(status, None, None)
        # Its children go with it (Temporal's default parent-close policy): a
        # child left running or parked would wait for a parent that is gone.
        for child in active_children(self.run_id):
            child.cancel()
        return True

    def interrupt(self, reason: Any) -> None:
        """This process lets go of the run (shutdown): nothing more is written but,
        unless it is parked (it still waits), that it was interrupted and why."""
        with self.cond:
            if self.state == "ended":
                return
            was_parked = self.state == "parked"
            self.stopping = "interrupted"
            self.state = "ended"
        try:
            self.hold.set()
            if was_parked:
                self._unparked()
            else:
                why = "runtime stopped" if reason == "shutdown" else (
                    reason if isinstance(reason, str) else f"{type(reason).__name__}: {reason}")
                bound = log.bind(workflow=self.wf.name, run_id=self.run_id)
                # A clean stop is expected (INFO: the command line shows no line for it).
                (bound.info if reason == "shutdown" else bound.warning)("run interrupted",
                                                                       reason=why)
                record_interrupted(self.store, self.run_id, self.control.owner, why)
        finally:  # the run is marked ended: nothing else will resolve its future
            end_failed(self.span)
            self._release(None, RunInterruptedError(self.run_id, reason))

    def signal(self, event: str | None) -> None:
        """Something the run may wait for happened (an event was sent): wake it if parked."""
        with self.cond:
            self.gen += 1
            waiting = self.waiting
            if self.state != "parked" or waiting is None:
                return
            if event is not None and not (waiting.get("kind") == "event"
                                          and waiting.get("event") == event):
                return
        self.wake()

    def wake(self) -> bool:
        with self.cond:
            self.gen += 1
            if self.state != "parked" or self.stopping is not None:
                return False
            self.state = "running"
            self.waiting = None
            self.settled.clear()
            # Numbered with the state change: an earlier incarnation that its
            # supervisor restarts now sees that this one drives the run.
            self.incarnation += 1
            incarnation = self.incarnation
        self._unparked()
        self.progress.reopen()
        log.bind(workflow=self.wf.name, run_id=self.run_id).info("run woke")
        try:
            self.activate(incarnation)
        except Exception as exc:  # the supervisor is gone (shutdown): let go of the run
            self.interrupt(exc)
        return True

    def _unparked(self) -> None:
        timers_for(self.clock).cancel(("wake", self.run_id))
        self._count_parked(-1)

    def _count_parked(self, delta: int) -> None:
        """Move the parked-runs gauge; a failing metrics backend is logged, never
        left to stop a wake-up, a cancel or a park half way."""
        try:
            self.telemetry.parked(delta)
        except Exception as exc:
            log.bind(workflow=self.wf.name, run_id=self.run_id).warning(
                "cannot count the parked run", error=f"{type(exc).__name__}: {exc}")

    def rearm(self) -> None:
        with self.cond:
            until = self.waiting.get("until") if self.state == "parked" and self.waiting else None
        if until is not None:
            timers_for(self.clock).add(until, ("wake", self.run_id), self.wake)

    def rearm_waiting(self) -> None:
        """Arm the wake-ups of a parked run again (its actor crashed arming them)."""
        with self.cond:
            waiting = self.waiting if self.state == "parked" else None
        if waiting is not None and waiting.get("kind") == "event":
            _watch_mailboxes(self.store)
        self.rearm()

    # -- running the body --

    def records(self) -> dict[int, Any]:
        loaded = self.preloaded
        self.preloaded = None
        if loaded is None:
            loaded = self.store.calls(self.run_id)
        return {pos: rec for pos, rec in loaded if pos != RESULT_POS}

    def load_letters(self) -> None:
        try:
            letters = self.store.dead_letters(run_id=self.run_id)
        except CorruptBlobError:
            letters = []
        self.letters = {}
        for letter in letters:
            self.letters.setdefault(letter.step, []).append(letter.id)

    def execute(self) -> None:
        """Run the body (sync) until it ends or parks; called in the body's thread."""
        while True:
            with self.cond:
                gen = self.gen
            try:
                ctx = DurableContext(self, self.records(), gen)
                try:
                    value = self.wf.body(ctx, **self.inputs)  # type: ignore[misc]
                except BaseException as exc:
                    ctx._settle(exc)
                ctx._settle()
            except _Park as park:
                if self.park(park):
                    return
                continue
            except BaseException as exc:
                self.conclude_error(exc)
                return
            self.conclude_value(value)
            return

    async def execute_async(self) -> None:
        """Run an ``async def`` body on the shared loop until it ends or parks."""
        while True:
            with self.cond:
                gen = self.gen
            try:
                records = await asyncio.to_thread(self.records)
                core = DurableContext(self, records, gen)
                try:
                    value = await self.wf.body(AsyncDurableContext(core),  # type: ignore[misc]
                                               **self.inputs)
                except BaseException as exc:
                    core._settle(exc)
                core._settle()
            except _Park as park:
                if await asyncio.to_thread(self.park, park):
                    return
                continue
            except BaseException as exc:
                if isinstance(exc, asyncio.CancelledError) and self.stopping is None:
                    raise
                await asyncio.to_thread(self.conclude_error, exc)
                return
            await asyncio.to_thread(self.conclude_value, value)
            return

    def conclude_value(self, value: Any) -> None:
        try:
            _codec.encode(value)
            _outputs(value, "succeeded")  # a Mapping that cannot be listed fails here
        except Exception as exc:  # UnserializableError, or the Mapping's own error
            self.finish("failed", None, _error_of(exc))
            return
        self.finish("succeeded", value, None)

    def conclude_error(self, exc: BaseException) -> None:
        if isinstance(exc, _Stop):
            return  # whoever stopped the run has recorded its end
        if isinstance(exc, _StoreFailed):
            self.finish("failed", None, _error_of(exc.error), store_error=exc.error)
            return
        if isinstance(exc, StepFailedError) and getattr(exc, "_zixir_run", None) == self.run_id:
            self.finish("failed", None, exc.error, letter_for=exc)
            return
        if not isinstance(exc, Exception):
            raise exc  # KeyboardInterrupt, SystemExit: not the body's failure
        self.finish("failed", None, _error_of(exc))

    def park(self, park: _Park) -> bool:
        """Record that the run waits; False if something it waits for came meanwhile."""
        with self.cond:
            while self.inflight:
                self.cond.wait(1.0)
            if self.stopping is not None:
                return True
            if self.gen != park.gen:
                return False
        waiting = park.waiting
        record = RunRecord(self.run_id, self.wf.name, "parked", self.inputs, self.created_at,
                           self.clock.time(), None,
                           {label: s.status for label, s in self.steps.items()},
                           owner=current_owner(), waiting=waiting)
        batch = self.store.batch()
        self._take_records(batch)
        self.progress.append("parked", None, waiting)
        self.progress.take_pending(batch)
        batch.put_run(record)
        try:
            self.commit(batch)
        except _Stop:
            return True
        except _StoreFailed as failed:
            self.finish("failed", None, _error_of(failed.error), store_error=failed.error)
            return True
        with self.cond:
            if self.stopping is not None:
                return True
            if self.gen != park.gen:
                return False
            self.state = "parked"
            self.waiting = waiting
            self.settled.set()
        self._count_parked(1)
        if waiting.get("kind") == "event":
            _watch_mailboxes(self.store)
        until = waiting.get("until")
        if until is not None:
            timers_for(self.clock).add(until, ("wake", self.run_id), self.wake)
        log.bind(workflow=self.wf.name, run_id=self.run_id).info("run parked", **waiting)
        if self.logs is not None:
            self.logs.flush()
        return True

    def finish(self, status: str, output: Any, error: StepError | None, *,
               letter_for: StepFailedError | None = None,
               store_error: BaseException | None = None) -> None:
        """Record the run's end and resolve its future (with `store_error`, when the
        store could not write: the caller gets that error, as a DAG run's does)."""
        with self.cond:
            if self.state == "ended":
                return
            self.state = "ended"
        try:
            result = self._record_end(status, output, error, letter_for, store_error)
        except Exception as exc:  # an engine failure: whoever waits must still hear of it
            self._abandon(exc)
            return
        report_end(self.telemetry, self.span, self.wf.name, self.run_id, result.status,
                   result.ok, result.duration)
        if store_error is not None:
            self._release(None, store_error)
        else:
            self._release(result, None)

    def _record_end(self, status: str, output: Any, error: StepError | None,
                    letter_for: StepFailedError | None,
                    store_error: BaseException | None) -> RunResult:
        """Write the run's end (its result, dead letter and header); returns its result."""
        store_broken = store_error is not None
        timers_for(SYSTEM_CLOCK).cancel(("deadline", self.run_id))
        outputs = _outputs(output, status)
        letter = None if letter_for is None or store_broken else self._letter(letter_for)
        if letter is not None and letter_for is not None and letter_for.step in self.steps:
            self.steps[letter_for.step] = dataclasses.replace(self.steps[letter_for.step],
                                                              dead_letter=letter.id)
        result = RunResult(self.run_id, self.wf.name, status, outputs,  # type: ignore[arg-type]
                           dict(self.steps), time.perf_counter() - self.started,
                           output=output, error=error)
        record = RunRecord(self.run_id, self.wf.name, status, self.inputs, self.created_at,
                           self.clock.time(), None if error is None else str(error),
                           {label: s.status for label, s in self.steps.items()},
                           owner=current_owner())
        if not store_broken:
            batch = self.store.batch()
            self._take_records(batch)
            failed_call = None if letter_for is None else letter_for.step
            batch.put_call(self.run_id, RESULT_POS,
                           ("result", status, output, error, failed_call))
            if letter is not None:
                for old in self.letters.get(letter.step, ()):  # one letter per call
                    batch.delete_dead_letter(old)
                batch.put_dead_letter(letter)
            self.progress.append("ended", None, status)
            self.progress.take_pending(batch)
            batch.put_run(record)
            try:
                self.store.commit(batch)
            except (StoreError, ZixirTimeoutError) as exc:
                log.bind(workflow=self.wf.name, run_id=self.run_id).error(
                    "cannot record the run's end", error=str(exc))
                result = dataclasses.replace(result, status="failed", error=_error_of(exc))
        else:
            try:  # the header may still fit: then the run's status says it failed
                self.store.save_run(record)
            except Exception as exc:
                log.bind(workflow=self.wf.name, run_id=self.run_id).error(
                    "cannot record the run's end", error=str(exc))
        return result

    def _abandon(self, exc: Exception) -> None:
        """Recording the run's end failed in the engine (not in the store, which
        `finish` reports itself): the run ends as interrupted, its checkpoints
        kept, so that `resume` can finish it, and whoever waits gets the error."""
        why = f"{type(exc).__name__}: {exc}"
        log.bind(workflow=self.wf.name, run_id=self.run_id).error(
            "cannot record the run's end", error=why,
            traceback="".join(traceback.format_exception(exc)))
        record_interrupted(self.store, self.run_id, self.control.owner, why)
        end_failed(self.span)
        self._release(None, RunInterruptedError(self.run_id, why))

    def _release(self, result: RunResult | None, error: BaseException | None) -> None:
        try:
            if self.logs is not None:
                self.logs.close()
        finally:
            self.settled.set()
            self.progress.end()
            forget(self.run_id)
            # However it ended (interrupted, let go of): its deadline is not armed on.
            timers_for(SYSTEM_CLOCK).cancel(("deadline", self.run_id))
            with _BODIES_LOCK:
                if _BODIES.get(self.run_id) is self:
                    del _BODIES[self.run_id]
            # Released before the future resolves: whoever waits on it may resume at once.
            release_run(self.control)
            future = self.control.future
            if not future.done():
                if result is not None:
                    future.set_result(result)
                else:
                    future.set_exception(error or RunInterruptedError(self.run_id, "stopped"))

    def _letter(self, exc: StepFailedError) -> DeadLetter:
        inputs, history = self.failures.get(exc.step, ({}, ()))
        error = exc.error
        letter = DeadLetter(uuid.uuid4().hex, self.run_id, self.wf.name, exc.step,
                            inputs if isinstance(inputs, Mapping) else {"args": inputs},
                            error.type, error.message, error.traceback, tuple(history),
                            self.clock.time())
        self.telemetry.exhausted(exc.step.split("#", 1)[0])
        log.bind(workflow=self.wf.name, run_id=self.run_id, step=exc.step).error(
            "step dead-lettered", letter=letter.id, error=str(error))
        return letter

    def emit_once(self, index: int) -> bool:
        """Whether the body's `index`-th emit is new (not already in the stream)."""
        with self.cond:
            if self.body_emits is None:
                self.body_emits = sum(
                    1 for _, item in self.store.progress(self.run_id)
                    if item[1] == "emit" and item[2] is None)
            if index < self.body_emits:
                return False
            self.body_emits = index + 1
            return True

    # -- commits --

    def _stamped(self, position: int, rec: Any) -> Any:
        # The occurrence goes with the record: labels stay right across the gaps
        # that calls in flight at a crash or a cancel leave between positions.
        occurrence = self.occurrences.pop(position, None)
        return rec if occurrence is None or len(rec) > 4 else (*rec, occurrence)

    def record(self, position: int, rec: Any) -> None:
        """Record a value call (now, uuid, random): it commits with the next commit."""
        rec = self._stamped(position, rec)
        with self.cond:
            self.pending_records.append((position, rec))

    def _take_records(self, batch: Any) -> None:
        with self.cond:
            pending, self.pending_records = self.pending_records, []
        for position, rec in pending:
            batch.put_call(self.run_id, position, rec)

    def commit_call(self, position: int, rec: Any, *, consume: int | None = None,
                    label: str | None = None) -> None:
        if (consume is None and not self.pending_records and not self.progress.pending
                and (label is None or not self.letters)):
            # The per-step path: one record, no batch to build.
            self._guarded(self.store.put_call, self.run_id, position,
                          self._stamped(position, rec))
            return
        batch = self.store.batch()
        # UnserializableError comes here, before any write.
        batch.put_call(self.run_id, position, self._stamped(position, rec))
        if consume is not None:
            batch.delete_event(self.run_id, consume)
        if label is not None and self.letters:  # a retried call succeeded: its letters are resolved
            for letter in self.letters.pop(label, ()):
                batch.delete_dead_letter(letter)
        if self.pending_records:  # appended by the body thread: seen here, or with the next commit
            self._take_records(batch)
        if self.progress.pending:
            self.progress.take_pending(batch)
        self.commit(batch)

    def commit(self, batch: Any) -> None:
        self._guarded(self.store.commit, batch)

    def _guarded(self, write: Callable[..., None], *args: Any) -> None:
        """`write(*args)` unless the run is stopping: a late result of a stopped run is not kept."""
        committing = self.committing
        committing.append(None)
        try:
            if self.stopping is not None:
                raise _Stop(self.stopping)
            write(*args)
        except UnserializableError:
            raise  # the value, not the store: nothing was written
        except (StoreError, ZixirTimeoutError) as exc:
            failed = self.store_failed = _StoreFailed(exc)
            raise failed from exc
        finally:
            committing.pop()
            if self.stopping is not None:  # `stop` may be waiting for this commit
                with self.commit_done:
                    self.commit_done.notify_all()

    # -- one step call --

    def run_step(self, position: int, label: str, name: str, fn: Callable[..., Any],
                 args: tuple[Any, ...], kwargs: dict[str, Any], opts: _Options) -> Any:
        """Run a step call's attempts and commit its outcome; returns its value."""
        wants_ctx = "ctx" not in kwargs and _wants_ctx(fn)
        history: list[AttemptInfo] = []
        total = 0.0
        attempt = 0
        progress = self.progress
        run_id, workflow, wf_executor = self.run_id, self.wf.name, self.wf.executor
        # No executor (its own, its workflow's or the runtime's), sandbox or timeout:
        inline = opts is _PLAIN and wf_executor is None and default_executor() is None
        while True:
            attempt += 1
            if self.stopping is not None:
                raise _Stop(self.stopping)
            arguments = kwargs
            if wants_ctx:
                arguments = dict(kwargs)
                arguments["ctx"] = StepContext(run_id, label, attempt, f"{run_id}/{label}",
                                               workflow, progress=progress, store=self.store)
            if progress.readers:
                progress.append("step_started", label, attempt)
            log.step_started(self.logs, workflow, run_id, label, attempt)
            attempt_span = enter_span("workflow.step", {
                "step": label, "attempt": attempt, "run_id": run_id, "workflow": workflow})
            started_at = self.clock.time()
            began = time.perf_counter()
            failure: Exception | None = None
            try:
                try:
                    value = call(fn, args, arguments) if inline else _attempt(
                        fn, args, arguments, opts, label, wf_executor, self.remote_calls)
                except Exception as exc:  # the step's failure is data
                    failure = exc
                seconds = time.perf_counter() - began
                total += seconds
                if failure is None:
                    try:
                        self.commit_call(position, (_STEP, name, value,
                                                    (_hash_of(fn), attempt, total,
                                                     self.clock.time())), label=label)
                    except UnserializableError as exc:
                        failure = exc
                if failure is not None:
                    attempt_span.record_exception(failure)
            finally:
                exit_span(attempt_span, sys.exc_info()[1])
            if failure is None:
                self.telemetry.attempt(name, "succeeded", seconds)
                self.steps[label] = succeeded_step(label, attempt, total)
                log.step_succeeded(self.logs, workflow, run_id, label, attempt, seconds)
                if progress.readers:
                    progress.append("step_finished", label, "succeeded")
                return value
            timed_out = _is_timeout(failure)
            self.telemetry.attempt(name, "timed_out" if timed_out else "failed", seconds)
            history.append(AttemptInfo(attempt, started_at, seconds,
                                       type(failure).__qualname__, str(failure), timed_out))
            if (not isinstance(failure, UnserializableError) and self.stopping is None
                    and opts.retry.should_retry(failure, attempt)):
                delay = opts.retry.delay(attempt)
                log.bind(workflow=self.wf.name, run_id=self.run_id, step=label).warning(
                    "step failed, retrying", attempt=attempt, delay=delay,
                    error=f"{type(failure).__qualname__}: {failure}")
                self._sleep(delay)
                continue
            self.check_live()
            error = _error_of(failure)
            inputs = _safe({"args": list(args), **kwargs} if args else dict(kwargs))
            self.failures[label] = (inputs, tuple(history))
            status = "timed_out" if timed_out else "failed"
            self.commit_call(position, (_STEP_FAILED, name, (error, tuple(history), inputs),
                                        attempt))
            self.steps[label] = StepResult(label, status, attempt, total, error)  # type: ignore[arg-type]
            self.progress.append("step_finished", label, status)
            log.error("step failed", workflow=self.wf.name, run_id=self.run_id, step=label,
                      attempt=attempt, error=str(error))
            raise self.step_failed(label, error, attempt) from failure

    def step_failed(self, label: str, error: StepError, attempts: int) -> StepFailedError:
        exc = StepFailedError(label, error, attempts)
        exc._zixir_run = self.run_id  # type: ignore[attr-defined]
        return exc

    def replayed(self, label: str, rec: Any) -> Any:
        kind = rec[0]
        if kind == _STEP_FAILED:
            error, history, inputs = rec[2]
            self.failures[label] = (inputs, tuple(history))
            self.steps[label] = StepResult(label, "failed", rec[3], 0.0, error)
            raise self.step_failed(label, error, rec[3])
        self.steps[label] = StepResult(label, "cached")
        return rec[2]

    def _sleep(self, delay: float) -> None:
        if isinstance(self.clock, SystemClock):
            self.hold.wait(delay)
        else:
            self.clock.sleep(delay)

    def spawn(self, position: int, label: str, name: str, fn: Callable[..., Any],
              args: tuple[Any, ...], kwargs: dict[str, Any], opts: _Options,
              slots: threading.Semaphore) -> CallFuture:
        future = CallFuture(label)
        slots.acquire()
        with self.cond:
            self.inflight += 1
        context = contextvars.copy_context()

        def work() -> None:
            try:
                future._future.set_result(
                    self.run_step(position, label, name, fn, args, kwargs, opts))
            except BaseException as exc:  # the body sees it through the future
                future._future.set_exception(exc)
            finally:
                slots.release()
                with self.cond:
                    self.inflight -= 1
                    self.cond.notify_all()

        try:
            threading.Thread(target=context.run, args=(work,), daemon=True,
                             name=f"zixir-wf-call-{label}").start()
        except BaseException:  # no thread to be had: the call is not in flight
            slots.release()
            with self.cond:
                self.inflight -= 1
                self.cond.notify_all()
            raise
        return future

    # -- child runs --

    def child_future(self, child: Workflow, child_id: str,
                     inputs: Mapping[str, Any] | None) -> concurrent.futures.Future[RunResult]:
        for _ in range(3):
            control = active_run(child_id)
            if control is not None:
                return control.future
            record = self.store.find_run(child_id)
            if record is not None and record.status in ENDED:
                done: concurrent.futures.Future[RunResult] = concurrent.futures.Future()
                done.set_result(stored_result(child, record, self.store))
                return done
            try:
                if record is not None:
                    return child._launch(self.store, child_id, dict(record.inputs), record,
                                         None, None).future
                return child.start(inputs, run_id=child_id, store=self.store).future
            except RunActiveError:
                continue  # started by someone else meanwhile: wait for that one
        raise RunActiveError(child_id)


def stored_result(wf: Workflow, record: RunRecord, store: CheckpointClient) -> RunResult:
    """The `RunResult` of an ended run, rebuilt from the store."""
    output: Any = None
    error: StepError | None = None
    if wf.body is not None:
        outcome = store.get_call(record.run_id, RESULT_POS)
        if outcome is not None:
            output, error = outcome[2], outcome[3]
        outputs = dict(output) if isinstance(output, Mapping) else (
            {} if output is None else {"result": output})
    else:
        outputs = {name: c.output for name, c in store.steps(record.run_id).items()}
        output = outputs
    steps = {name: StepResult(name, status) for name, status in record.steps.items()}  # type: ignore[arg-type]
    return RunResult(record.run_id, record.workflow, record.status,  # type: ignore[arg-type]
                     outputs, steps, 0.0, output=output, error=error)


# -- the actor --------------------------------------------------------------------


class _Drive:
    __slots__ = ()


class _Done:
    __slots__ = ()


class _Crash:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


_DRIVE, _DONE = _Drive(), _Done()


class BodyRun(SupervisedActor):
    """The actor of one incarnation of a code-first run (a child of ``zixir.workflows``).

    It drives the body in a thread of its own (or on the shared loop) and
    stops when the body ends or parks. If it crashes, its supervisor starts
    it again and the body replays from its records.
    """

    def __init__(self, *, body: _Body, supervised: bool, incarnation: int = 0) -> None:
        super().__init__()
        self.body = body
        self.supervised = supervised
        self.incarnation = incarnation
        self.parent = parent_supervisor(supervised)
        self.released = False  # the body ended or parked under this incarnation

    def on_start(self) -> None:
        restarted(self.body.control)
        self.actor_ref.tell(_DRIVE)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _Drive):
            self._drive()
        elif isinstance(message, _Done):
            self.stop()
        elif isinstance(message, _Crash):
            raise message.error
        return None

    def _tell(self, message: Any) -> None:
        with contextlib.suppress(pykka.ActorDeadError):  # a successor replays anyway
            self.actor_ref.tell(message)

    def _drive(self) -> None:
        body = self.body
        with body.cond:
            state = body.state
            current = not self.incarnation or self.incarnation == body.incarnation
        if state == "ended" or not current:
            # Ended, or restarted after a wake-up started the next incarnation: that
            # one drives the run (this one must not run the body beside it).
            self.released = True
            self.stop()
            return
        if state == "parked":
            # Restarted after the run parked (it crashed arming its wake-ups): the
            # run still waits; arm them again instead of running the body.
            self.released = True
            body.rearm_waiting()
            self.stop()
            return
        if body.control.crashes:
            log.bind(workflow=body.wf.name, run_id=body.run_id).warning(
                "run actor restarted, replaying from its records", crashes=body.control.crashes)
        body.load_letters()
        if body.is_async:
            future = body.context.run(submit, body.execute_async())
            future.add_done_callback(self._ended)
            return
        context = body.context.copy()
        threading.Thread(target=context.run, args=(self._run_sync,), daemon=True,
                         name=f"zixir-body-{body.run_id[:12]}").start()

    def _run_sync(self) -> None:
        try:
            self.body.execute()
        except BaseException as exc:  # an engine failure crashes the run actor
            self._tell(_Crash(exc))
            return
        self.released = True
        self._tell(_DONE)

    def _ended(self, future: concurrent.futures.Future[None]) -> None:
        try:
            future.result()
        except BaseException as exc:  # an engine failure (or the loop closing)
            self._tell(_Crash(exc))
            return
        self.released = True
        self._tell(_DONE)

    def on_stop(self) -> None:
        # Stopped while its body still runs (a shutdown): the run is let go. Once
        # the body parked, a later wake-up belongs to the next incarnation.
        if not self.released and self.body.state == "running":
            self.body.interrupt("shutdown")

    def on_failure(self, exc_type: Any = None, exc: Any = None, tb: Any = None) -> None:
        body = self.body
        control = body.control
        control.crashes += 1
        log.bind(workflow=body.wf.name, run_id=body.run_id).error(
            "run actor crashed", error=repr(exc), crashes=control.crashes)
        if not self.supervised or control.crashes >= MAX_CRASHES:
            body.interrupt(exc)
        else:  # its supervisor starts the next incarnation, unless it stops first
            await_restart(control, self.parent, lambda: body.interrupt(exc))


# -- the contexts ------------------------------------------------------------------


class DurableContext:
    """The `ctx` of a code-first body: every call is recorded and replayed.

    Example:
        >>> # @durable("agent")
        >>> # def agent(ctx, question):
        >>> #     plan = ctx.step(ask_llm, question, retry=RetryPolicy(max_attempts=3))
        >>> #     answers = ctx.map(search, plan["queries"], concurrency=4)
        >>> #     if not ctx.wait_for("approval", timeout=86400)["approved"]:
        >>> #         return {"status": "rejected"}
        >>> #     return {"answer": ctx.step(summarize, answers)}

    The determinism rule: between two `ctx` calls the body may do anything
    that gives the same result on every run (pure computation on the values
    the calls returned); anything that reads the world (the time, random
    numbers, files, the network, an LLM) goes through a `ctx` call, so that
    a replay sees the recorded value.

    Attributes:
        run_id: the run.
        workflow: the workflow's name.
        inputs: the run's inputs.
    """

    def __init__(self, body: _Body, records: dict[int, Any], gen: int,
                 plan: list[PlanEntry] | None = None) -> None:
        self._b = body
        self._records = records
        self._gen = gen
        self._plan = plan
        self._pos = 0
        self._occ: dict[str, int] = {}
        self._emits = 0
        self._unwinding: BaseException | None = None
        self.run_id = body.run_id
        self.workflow = body.wf.name
        self.inputs = body.inputs

    def __repr__(self) -> str:
        return f"DurableContext(run_id={self.run_id!r}, position={self._pos})"

    def _unwind(self, exc: BaseException) -> BaseException:
        self._unwinding = exc
        return exc

    def _settle(self, exc: BaseException | None = None) -> None:
        """After the body returned (or raised `exc`): a failed commit, a park or a stop
        that it swallowed (a bare ``except:``) wins over how it ended."""
        failed = self._b.store_failed
        if failed is not None and exc is not failed:
            raise failed from exc
        if self._unwinding is not None and exc is not self._unwinding:
            raise self._unwinding from exc
        if exc is not None:
            raise exc

    def _next(self, kind: str, name: str) -> tuple[int, str, Any]:
        if self._unwinding is not None:
            # The body swallowed a park or a stop (a bare ``except:``): nothing
            # more may run live in this execution.
            raise self._unwinding
        if self._b.store_failed is not None:  # ... or a commit the store refused
            raise self._b.store_failed
        if self._plan is None and self._b.stopping is not None:  # `check_live`, inline
            raise self._unwind(_Stop(self._b.stopping)) from None
        position = self._pos
        self._pos += 1
        occurrence = self._occ.get(name, 0) + 1
        self._occ[name] = occurrence
        label = f"{name}#{occurrence}"
        rec = self._records.get(position)
        if self._plan is None and (rec is None or rec[0].endswith("?")):
            self._b.occurrences[position] = occurrence  # stored with the call's record
        if rec is not None and (_family(rec[0]) != kind or rec[1] != name):
            recorded, requested = f"{_family(rec[0])} {rec[1]!r}", f"{kind} {name!r}"
            if self._plan is not None:
                self._plan.append(PlanEntry(label, "rerun",
                                            f"nondeterminism: recorded {recorded}, "
                                            f"the body now asks for {requested}"))
                raise _PlanStop
            raise NondeterminismError(self.run_id, position, recorded, requested)
        if self._plan is not None:
            if rec is None or rec[0] in (_WAITING,) or (
                    rec[0] == _SLEEP and rec[2] > self._b.clock.time()):
                reason = "no record: runs live from here" if rec is None else "still waiting"
                self._plan.append(PlanEntry(label, "run", reason))
                raise _PlanStop
            self._plan.append(PlanEntry(label, "skip", _describe(rec)))
        return position, label, rec

    # -- steps --

    def step(self, fn: Callable[..., Any], *args: Any, name: str | None = None,
             retry: RetryPolicy | None = None, timeout: float | None = None,
             limits: Any = None, executor: Any = None, resources: Any = None,
             **kwargs: Any) -> Any:
        """Call `fn(*args, **kwargs)` as a durable step and return its value.

        The call is recorded under `name` (default: the function's qualified
        name) and its occurrence number (label ``"name#n"``). A function with
        a ``ctx`` parameter gets a `StepContext` (``ctx.emit`` streams
        progress, ``ctx.idempotency_key`` is stable across retries).

        Args:
            retry: a `RetryPolicy` (default one attempt).
            timeout: seconds an attempt may take (then `StepTimeoutError`).
            limits: sandbox `Limits`: the call runs in a sandbox process.
            executor, resources: where it runs (as for DAG steps).

        Raises:
            StepFailedError: every attempt failed (catchable; replayed the same way).
            NondeterminismError: a replay found another call at this position.
        """
        name = _call_name(fn, name)
        position, label, rec = self._next("step", name)
        if rec is not None:
            if self._plan is not None:
                self._note_code_change(rec, fn)
            return self._b.replayed(label, rec)
        opts = _options(retry, timeout, limits, executor, resources, label)
        return self._b.run_step(position, label, name, fn, args, kwargs, opts)

    def spawn(self, fn: Callable[..., Any], *args: Any, name: str | None = None,
              retry: RetryPolicy | None = None, timeout: float | None = None,
              limits: Any = None, executor: Any = None, resources: Any = None,
              **kwargs: Any) -> CallFuture:
        """Start `fn` as a durable step in parallel and return a `CallFuture` at once.

        At most the workflow's `max_concurrency` spawned calls run at once;
        a further `spawn` waits for a free slot.
        """
        name = _call_name(fn, name)
        position, label, rec = self._next("step", name)
        if rec is not None:
            return self._replayed_future(label, rec)
        opts = _options(retry, timeout, limits, executor, resources, label)
        return self._b.spawn(position, label, name, fn, args, kwargs, opts,
                             self._b.spawn_slots)

    def _note_code_change(self, rec: Any, fn: Callable[..., Any]) -> None:
        """In a plan: say when a recorded step's code changed since its record."""
        extra = rec[3] if rec[0] == _STEP else None
        if not isinstance(extra, tuple) or not extra or not self._plan:
            return
        if extra[0] != _hash_of(fn):
            entry = self._plan[-1]
            self._plan[-1] = PlanEntry(entry.step, entry.action,
                                       "recorded: replays its output, though its code changed "
                                       "since (resume with from_step= to run it again)")

    def _replayed_future(self, label: str, rec: Any) -> CallFuture:
        future = CallFuture(label)
        try:
            future._future.set_result(self._b.replayed(label, rec))
        except StepFailedError as exc:
            future._future.set_exception(exc)
        return future

    def map(self, fn: Callable[..., Any], items: Iterable[Any], *,
            concurrency: int | None = None, name: str | None = None,
            retry: RetryPolicy | None = None, timeout: float | None = None,
            limits: Any = None, executor: Any = None, resources: Any = None) -> list[Any]:
        """One durable step `fn(item)` per item, at most `concurrency` at once; results in order.

        Raises:
            StepFailedError: the first item (in order) whose call failed, after all ended.
        """
        limit = self._b.spawn_slots._initial_value if concurrency is None else concurrency  # type: ignore[attr-defined]
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ConfigError("concurrency", concurrency, "must be an integer >= 1 or None")
        slots = threading.BoundedSemaphore(limit)
        futures: list[CallFuture] = []
        cname = _call_name(fn, name)
        for item in items:
            position, label, rec = self._next("step", cname)
            if rec is not None:
                future = self._replayed_future(label, rec)
            else:
                opts = _options(retry, timeout, limits, executor, resources, label)
                future = self._b.spawn(position, label, cname, fn, (item,), {}, opts, slots)
            futures.append(future)
        concurrent.futures.wait([f._future for f in futures])
        return [f.result() for f in futures]

    # -- time --

    def sleep(self, seconds: float) -> None:
        """A durable timer: the wake-up time is recorded; after a restart only the rest is slept.

        A long sleep parks the run (no thread is held) until the timer service wakes it.
        """
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds < 0:
            raise ConfigError("seconds", seconds, "must be a number >= 0")
        position, _, rec = self._next("sleep", "sleep")
        if rec is None:
            until = self._b.clock.time() + seconds
            self._b.commit_call(position, (_SLEEP, "sleep", until, seconds))
        else:
            until = rec[2]
        self._wait_until(until)

    def _wait_until(self, until: float) -> None:
        body = self._b
        while True:
            left = until - body.clock.time()
            if left <= 0:
                return
            if isinstance(body.clock, SystemClock) and left <= SLEEP_HOLD:
                body.hold.wait(left)
                body.check_live()
                continue
            raise self._unwind(_Park({"kind": "timer", "until": until}, body.gen))

    def now(self) -> float:
        """The wall time (of the workflow's clock), recorded: a replay returns the same value."""
        return self._value("now", lambda: self._b.clock.time())  # type: ignore[no-any-return]

    def uuid(self) -> uuid.UUID:
        """A random UUID, recorded."""
        return self._value("uuid", uuid.uuid4)  # type: ignore[no-any-return]

    def random(self) -> float:
        """A random float in [0, 1), recorded."""
        return self._value("random", random.random)  # type: ignore[no-any-return]

    def _value(self, kind: str, make: Callable[[], Any]) -> Any:
        position, _, rec = self._next(kind, kind)
        if rec is not None:
            return rec[2]
        value = make()
        self._b.record(position, (kind, kind, value, None))
        return value

    # -- events --

    def wait_for(self, event: str, *, timeout: float | None = None) -> Any:
        """Wait until `event` is sent to this run (`send`) and return its payload.

        Events sent before the call wait in the run's durable mailbox (first
        in, first out per name); each is consumed once. While nothing came,
        the run parks and holds no thread.

        Raises:
            EventTimeoutError: nothing came within `timeout` seconds (durable deadline).
        """
        _check_event(event)
        if timeout is not None and (not isinstance(timeout, (int, float)) or timeout < 0):
            raise ConfigError("timeout", timeout, "must be a number >= 0 or None")
        position, _, rec = self._next("wait", event)
        body = self._b
        if rec is not None and rec[0] == _WAIT:
            return _wait_outcome(body.run_id, event, rec)
        until = rec[2] if rec is not None else (
            None if timeout is None else body.clock.time() + timeout)
        limit = rec[3] if rec is not None else timeout
        with body.cond:
            gen = body.gen
        for seq, name, payload, _ in body.store.events(body.run_id):
            if name == event:
                body.commit_call(position, (_WAIT, event, ("event", payload), limit),
                                 consume=seq)
                body.telemetry.event("consumed")
                return payload
        if until is not None and body.clock.time() >= until:
            body.commit_call(position, (_WAIT, event, ("timeout", None), limit))
            raise EventTimeoutError(body.run_id, event, limit)
        if rec is None and until is not None:
            body.commit_call(position, (_WAITING, event, until, limit))
        raise self._unwind(_Park({"kind": "event", "event": event, "until": until}, gen))

    # -- progress --

    def emit(self, value: Any) -> None:
        """Append `value` to the run's progress stream (`RunHandle.progress()`).

        A replay does not emit again what the body emitted before (the
        stream keeps it); what a crash lost before it was stored is emitted again.
        """
        if self._plan is not None:
            return
        index = self._emits
        self._emits += 1
        if self._b.emit_once(index):
            self._b.progress.append("emit", None, value)

    # -- child runs --

    def run(self, workflow: Workflow, inputs: Mapping[str, Any] | None = None, *,
            name: str | None = None) -> Any:
        """Run `workflow` as a child and return its outputs (a body's return value).

        The child's run id is derived from this run's (``"<run_id>/<name>#n"``),
        so after a crash the same child is resumed, never started twice.

        Raises:
            StepFailedError: the child run did not succeed.
        """
        name = _call_name(workflow, name if name is not None else workflow.name)
        position, label, rec = self._next("child", name)
        if rec is not None:
            return self._b.replayed(label, (_STEP_FAILED if rec[0] == _CHILD_FAILED else _STEP,
                                            *rec[1:]))
        body = self._b
        with body.cond:
            gen = body.gen
        future = body.child_future(workflow, f"{body.run_id}/{label}", inputs)
        try:
            result = future.result(CHILD_HOLD if isinstance(body.clock, SystemClock) else 0)
        except concurrent.futures.TimeoutError:
            future.add_done_callback(lambda _: body.wake())
            raise self._unwind(_Park({"kind": "child", "run_id": f"{body.run_id}/{label}"},
                                     gen)) from None
        return self._child_done(position, label, name, workflow, result)

    def _child_done(self, position: int, label: str, name: str, workflow: Workflow,
                    result: RunResult) -> Any:
        body = self._b
        if result.status == "succeeded":
            value = result.output if workflow.body is not None else dict(result.outputs)
            body.commit_call(position, (_CHILD, name, value, result.run_id))
            body.steps[label] = StepResult(label, "succeeded")
            return value
        error = result.error or StepError("RunFailedError",
                                          f"child run {result.run_id!r} ended {result.status}")
        body.commit_call(position, (_CHILD_FAILED, name, (error, (), {}), 1))
        body.steps[label] = StepResult(label, "failed", 1, 0.0, error)
        raise body.step_failed(label, error, 1)


class AsyncDurableContext:
    """The `ctx` of an ``async def`` body: the same calls, awaitable.

    ``await ctx.step(...)``, ``await ctx.map(...)``, ``await ctx.spawn(...)``
    (gives a `CallFuture` you can await), ``await ctx.sleep(...)``,
    ``await ctx.wait_for(...)``, ``await ctx.run(...)``; `emit`, `now`,
    `uuid` and `random` are plain calls. Positions are taken when a call
    starts, so ``asyncio.gather(ctx.step(a), ctx.step(b))`` records `a` then
    `b` and runs both at once. Step functions run in worker threads; an
    ``async def`` step runs on the shared loop, so async clients can be shared.
    """

    def __init__(self, ctx: DurableContext) -> None:
        self._ctx = ctx
        self.run_id = ctx.run_id
        self.workflow = ctx.workflow
        self.inputs = ctx.inputs

    def __repr__(self) -> str:
        return f"AsyncDurableContext(run_id={self.run_id!r})"

    async def step(self, fn: Callable[..., Any], *args: Any, name: str | None = None,
                   retry: RetryPolicy | None = None, timeout: float | None = None,
                   limits: Any = None, executor: Any = None, resources: Any = None,
                   **kwargs: Any) -> Any:
        """`DurableContext.step`, awaitable."""
        ctx = self._ctx
        name = _call_name(fn, name)
        position, label, rec = ctx._next("step", name)
        if rec is not None:
            return ctx._b.replayed(label, rec)
        opts = _options(retry, timeout, limits, executor, resources, label)
        return await asyncio.to_thread(ctx._b.run_step, position, label, name, fn, args,
                                       kwargs, opts)

    async def spawn(self, fn: Callable[..., Any], *args: Any, **options: Any) -> CallFuture:
        """`DurableContext.spawn`, awaitable (waiting for a free slot does not block the loop)."""
        return await asyncio.to_thread(self._ctx.spawn, fn, *args, **options)

    async def map(self, fn: Callable[..., Any], items: Iterable[Any], **options: Any) -> list[Any]:
        """`DurableContext.map`, awaitable."""
        return await asyncio.to_thread(self._ctx.map, fn, list(items), **options)

    async def sleep(self, seconds: float) -> None:
        """`DurableContext.sleep`, awaitable."""
        ctx = self._ctx
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds < 0:
            raise ConfigError("seconds", seconds, "must be a number >= 0")
        position, _, rec = ctx._next("sleep", "sleep")
        body = ctx._b
        if rec is None:
            until = body.clock.time() + seconds
            await asyncio.to_thread(body.commit_call, position, (_SLEEP, "sleep", until, seconds))
        else:
            until = rec[2]
        while True:
            left = until - body.clock.time()
            if left <= 0:
                return
            if isinstance(body.clock, SystemClock) and left <= SLEEP_HOLD:
                await asyncio.sleep(left)
                body.check_live()
                continue
            raise ctx._unwind(_Park({"kind": "timer", "until": until}, body.gen))

    async def wait_for(self, event: str, *, timeout: float | None = None) -> Any:
        """`DurableContext.wait_for`, awaitable."""
        return await asyncio.to_thread(self._ctx.wait_for, event, timeout=timeout)

    async def run(self, workflow: Workflow, inputs: Mapping[str, Any] | None = None, *,
                  name: str | None = None) -> Any:
        """`DurableContext.run`, awaitable."""
        return await asyncio.to_thread(self._ctx.run, workflow, inputs, name=name)

    def emit(self, value: Any) -> None:
        self._ctx.emit(value)

    def now(self) -> float:
        return self._ctx.now()

    def uuid(self) -> uuid.UUID:
        return self._ctx.uuid()

    def random(self) -> float:
        return self._ctx.random()


def _describe(rec: Any) -> str:
    kind = rec[0]
    if kind == _STEP:
        return "recorded: replays its output"
    if kind == _STEP_FAILED:
        return "recorded failure: raises StepFailedError again"
    if kind == _SLEEP:
        return "timer already due"
    if kind == _WAIT:
        return "event received" if rec[2][0] == "event" else "wait timed out"
    if kind == _CHILD:
        return "child run finished"
    if kind == _CHILD_FAILED:
        return "child run failed"
    return f"recorded {kind}"


def _wait_outcome(run_id: str, event: str, rec: Any) -> Any:
    how, payload = rec[2]
    if how == "timeout":
        raise EventTimeoutError(run_id, event, rec[3])
    return payload


def _check_event(event: Any) -> None:
    if not isinstance(event, str) or not event or "\x00" in event or "#" in event:
        raise ConfigError("event", event, "must be a non-empty string without '#' or NUL")


# -- sending events ----------------------------------------------------------------

_seq_lock = threading.Lock()
_last_seq = 0


def _next_event_seq() -> int:
    global _last_seq
    import os

    with _seq_lock:
        # Microseconds since the epoch, times 1000, plus the pid's last three
        # digits: ordered by send time and distinct across processes.
        seq = (time.time_ns() // 1000) * 1000 + os.getpid() % 1000
        if seq <= _last_seq:
            seq = _last_seq + 1
        _last_seq = seq
        return seq


def send(run_id: str, event: str, payload: Any = None, *,
         store: CheckpointClient | None = None) -> None:
    """Send `event` (with `payload`) to a code-first run: wakes it if it waits for it.

    Example:
        ``zixir_actors.send(run_id, "approval", {"approved": True})``

    The event is committed to the run's durable mailbox before this returns;
    a run that waits for another event, or none yet, keeps it (first in,
    first out per event name) until its `ctx.wait_for` takes it.

    Raises:
        RunNotFoundError: no such run.
        RunEndedError: the run has ended.
        ConfigError: a bad event name.
        UnserializableError: the payload cannot be stored.
    """
    from zixir_actors.checkpoint import connect

    _check_event(event)
    client = store if store is not None else connect()
    record = client.find_run(run_id)
    if record is None:
        raise RunNotFoundError(run_id)
    if record.status in ENDED:
        raise RunEndedError(run_id, record.status)
    batch = client.batch()
    seq = _next_event_seq()
    batch.put_event(run_id, seq, event, payload, time.time())
    batch.touch_mailbox(seq)
    client.commit(batch)
    Telemetry(record.workflow).event("sent")
    body = _registered(run_id)
    if body is not None:
        body.signal(event)


# -- launching, planning, resuming ----------------------------------------------------


def launch(wf: Workflow, client: CheckpointClient, run_id: str, inputs: dict[str, Any],
           existing: RunRecord | None, max_concurrency: int,
           timeout: float | None) -> RunHandle:
    """Start (or continue) a code-first run; the `Workflow` methods call this."""
    records = client.calls(run_id) if existing is not None else []  # corrupt: fail first
    if existing is not None and existing.status == "failed":
        records = _retry_failed_call(client, run_id, records)
    control = register_run(run_id)
    body: _Body | None = None
    run_span: Span | None = None
    try:
        now = wf.clock.time()
        created = existing.created_at if existing is not None else now
        client.save_run(RunRecord(run_id, wf.name, "running", inputs, created, now,
                                  owner=current_owner()))
        context = contextvars.copy_context()
        run_span = context.run(_enter_span, "workflow.run", workflow=wf.name, run_id=run_id,
                               resumed=existing is not None)
        body = _Body(wf, run_id, inputs, client, created, control, run_span, context,
                     max_concurrency, records)
        body.logs = open_run_log(run_id, client, fresh=existing is None)
        log.bind(workflow=wf.name, run_id=run_id).info(
            "run resumed" if existing is not None else "run started")
        control.scheduler = body  # type: ignore[assignment]  # control.cancel() stops it
        with _BODIES_LOCK:
            _BODIES[run_id] = body
        if timeout is not None:
            timers_for(SYSTEM_CLOCK).add(time.time() + timeout, ("deadline", run_id),
                                         lambda: body.stop("timed_out"))
        body.activate()
    except BaseException as exc:
        if body is not None and body.logs is not None:
            body.logs.close()
        with _BODIES_LOCK:
            _BODIES.pop(run_id, None)
        timers_for(SYSTEM_CLOCK).cancel(("deadline", run_id))
        launch_failed(client, control, run_span, exc)
        raise
    return RunHandle(run_id, control.future, lambda rid: wf.cancel(rid, store=client),
                     store=client)


def _retry_failed_call(client: CheckpointClient, run_id: str,
                       records: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    """Resuming a run that failed on a call runs that call again (a caught failure replays)."""
    outcome = dict(records).get(RESULT_POS)
    failed = outcome[4] if outcome is not None and len(outcome) > 4 else None
    position = labels(records).get(failed) if failed else None
    if position is None:
        return records
    client.drop_calls(run_id, position)
    return [(p, r) for p, r in records if p < position]


def _enter_span(name: str, **attributes: Any) -> Span:
    return span(name, **attributes).__enter__()


def labels(records: list[tuple[int, Any]]) -> dict[str, int]:
    """The label (``"name#n"``) of each recorded call, with its position."""
    counts: dict[str, int] = {}
    out: dict[str, int] = {}
    for position, rec in records:
        if position == RESULT_POS:
            continue
        occurrence = rec[4] if len(rec) > 4 else counts.get(rec[1], 0) + 1
        counts[rec[1]] = occurrence
        out[f"{rec[1]}#{occurrence}"] = position
    return out


def drop_from(wf: Workflow, client: CheckpointClient, run_id: str, from_step: str) -> None:
    """Drop the records of `from_step` (a label, or a name for its first call) and after."""
    records = client.calls(run_id)
    found = labels(records)
    label = from_step if "#" in from_step else f"{from_step}#1"
    if label not in found:
        raise UnknownStepError(wf.name, from_step)
    client.drop_calls(run_id, found[label])


def plan(wf: Workflow, client: CheckpointClient, record: RunRecord) -> Plan:
    """Replay the body against its records without running anything live."""
    records = client.calls(record.run_id)
    control = _Control(record.run_id)
    probe = _Body.__new__(_Body)
    probe.wf, probe.run_id, probe.store = wf, record.run_id, client
    probe.inputs = dict(record.inputs)
    probe.clock, probe.steps, probe.failures = wf.clock, {}, {}
    probe.stopping, probe.control, probe.store_failed = None, control, None
    entries: list[PlanEntry] = []
    ctx = DurableContext(probe, {p: r for p, r in records if p != RESULT_POS}, 0, entries)
    try:
        if inspect.iscoroutinefunction(wf.body):
            run_coro(wf.body(AsyncDurableContext(ctx), **probe.inputs))
        else:
            wf.body(ctx, **probe.inputs)  # type: ignore[misc]
    except (_PlanStop, StepFailedError, EventTimeoutError):
        pass
    except Exception as exc:  # the body itself fails on replay: say so
        entries.append(PlanEntry("<body>", "rerun", f"the body raises {exc!r} on replay"))
    return Plan(record.run_id, wf.name, tuple(entries))


def run_child_blocking(workflow: Workflow, child_id: str, inputs: Mapping[str, Any] | None,
                       store: CheckpointClient | None, timeout: float | None) -> Any:
    """A DAG step's `ctx.run`: run (or resume, or read) a child run and wait for its outputs."""
    client = workflow._store(store)
    control = active_run(child_id)
    if control is not None:
        future = control.future
    else:
        record = client.find_run(child_id)
        if record is not None and record.status in ENDED:
            result = stored_result(workflow, record, client)
            future = concurrent.futures.Future()
            future.set_result(result)
        elif record is not None:
            future = workflow._launch(client, child_id, dict(record.inputs), record, None,
                                      None).future
        else:
            future = workflow.start(inputs, run_id=child_id, store=client).future
    try:
        result = future.result(timeout)
    except concurrent.futures.TimeoutError:
        raise ZixirTimeoutError(f"child run {child_id!r}", timeout) from None
    if result.status != "succeeded":
        raise WorkflowError(f"child run {child_id!r} ended {result.status}"
                            + (f": {result.error}" if result.error else ""))
    return result.output if workflow.body is not None else dict(result.outputs)


MAILBOX_POLL = 0.1
"""Seconds between two looks at the store for events that another process sent
to runs parked in this one."""
_watched: dict[int, int] = {}  # id(store) -> the mailbox mark last seen
_watched_lock = threading.Lock()


def _watch_mailboxes(store: CheckpointClient) -> None:
    """Arm the poll that wakes runs parked here when another process sends them an event."""
    key = id(store)
    with _watched_lock:
        if key in _watched:
            return
        try:
            _watched[key] = store.mailbox_mark()
        except (StoreError, CorruptBlobError):
            return
    timers_for(SYSTEM_CLOCK).add(time.time() + MAILBOX_POLL, ("mailbox", key),
                                 lambda: _poll_mailboxes(store))


def _poll_mailboxes(store: CheckpointClient) -> None:
    key = id(store)
    with _BODIES_LOCK:
        waiting = [b for b in _BODIES.values() if b.store is store and b.state == "parked"
                   and (b.waiting or {}).get("kind") == "event"]
    if not waiting:
        with _watched_lock:
            _watched.pop(key, None)
        return
    try:
        mark = store.mailbox_mark()
        with _watched_lock:
            changed = mark != _watched.get(key)
        if changed:  # one pass over the undelivered events, however many runs wait
            parked = {body.run_id: body for body in waiting}
            for run_id, event in store.pending_events():
                body = parked.get(run_id)
                if body is not None and (body.waiting or {}).get("event") == event:
                    body.signal(event)
        with _watched_lock:  # seen once the pass is done: a failed one is tried again
            _watched[key] = mark
    except (StoreError, CorruptBlobError) as exc:  # the store went away: stop watching
        log.warning("cannot read the mailboxes", error=str(exc))
        with _watched_lock:
            _watched.pop(key, None)
        return
    except Exception as exc:  # anything else: look again at the next poll
        log.warning("cannot read the mailboxes", error=f"{type(exc).__name__}: {exc}")
    timers_for(SYSTEM_CLOCK).add(time.time() + MAILBOX_POLL, ("mailbox", key),
                                 lambda: _poll_mailboxes(store))


def rearm_all() -> None:
    """Re-arm the timers of the runs parked in this process (the timer service restarted)."""
    with _BODIES_LOCK:
        bodies = list(_BODIES.values())
    for body in bodies:
        body.rearm()


def interrupt_parked(reason: str = "shutdown") -> None:
    """Let go of the runs parked in this process (the runtime stops): they stay parked
    in the store, and the next `start()` resumes them."""
    with _BODIES_LOCK:
        bodies = [b for b in _BODIES.values() if b.state == "parked"]
    for body in bodies:
        body.interrupt(reason)


on_rearm(rearm_all)


def durable(name: str, **workflow_options: Any) -> Callable[[Callable[..., Any]], Workflow]:
    """Decorate a body ``body(ctx, **inputs)`` and get a code-first `Workflow`.

    Example:
        >>> import tempfile
        >>> from zixir_actors.checkpoint import open_store
        >>> def double(x):
        ...     return 2 * x
        >>> @durable("doc-doubler")
        ... def doubler(ctx, n):
        ...     total = 0
        ...     for i in range(n):
        ...         total += ctx.step(double, i)
        ...     return {"total": total}
        >>> with open_store(tempfile.mkdtemp()) as store:
        ...     result = doubler.run({"n": 4}, store=store)
        >>> result.status, result.output
        ('succeeded', {'total': 12})

    Args:
        name: the workflow's name.
        workflow_options: any keyword of `Workflow` (``max_concurrency``,
            ``store``, ``clock``, ``executor``).

    Returns:
        A `Workflow` whose `run`, `start`, `resume`, `cancel`, `plan` and
        `send` work as for every workflow.
    """
    from zixir_actors.workflow._workflow import Workflow

    def wrap(fn: Callable[..., Any]) -> Workflow:
        return Workflow(name, body=fn, **workflow_options)

    return wrap


def send_checked(wf: Workflow, run_id: str, event: str, payload: Any,
                 store: CheckpointClient | None) -> None:
    """`Workflow.send`: like `send`, for a run of `wf`."""
    client = wf._store(store)
    record = client.find_run(run_id)
    if record is None:
        raise RunNotFoundError(run_id)
    wf._check_owner(record)
    send(run_id, event, payload, store=client)


def parked_bodies() -> list[str]:
    """Run ids parked in this process."""
    with _BODIES_LOCK:
        return [rid for rid, b in _BODIES.items() if b.state == "parked"]


def describe_waiting(waiting: Mapping[str, Any] | None) -> str:
    """A line saying what a parked run waits for (for the command line)."""
    if not waiting:
        return ""
    until = waiting.get("until")
    when = "" if until is None else time.strftime(" until %Y-%m-%d %H:%M:%S",
                                                   time.localtime(until))
    kind = waiting.get("kind")
    if kind == "event":
        return f"event {waiting.get('event')!r}{when}"
    if kind == "child":
        return f"child run {waiting.get('run_id')!r}"
    return f"timer{when}"


def progress_of(run_id: str, store: CheckpointClient | None, after: int | None,
                timeout: float | None) -> ProgressStream:
    from zixir_actors.checkpoint import connect

    body = _registered(run_id)
    client = store if store is not None else (body.store if body is not None else connect())
    return ProgressStream(run_id, client, after=after, timeout=timeout)


def wait_settled(run_id: str, future: concurrent.futures.Future[Any],
                 timeout: float | None) -> bool:
    """Wait until a run ends or (a code-first run) parks; False on timeout."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not future.done():
        body = _registered(run_id)
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return False
        if body is None:
            try:
                future.exception(left)
            except concurrent.futures.TimeoutError:
                return False
            return True
        if body.settled.wait(0.1 if left is None else min(left, 0.1)):
            with body.cond:
                if body.state in ("parked", "ended"):
                    return True
    return True
