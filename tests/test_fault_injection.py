"""Fault injection on both workflow engines: every blocking call ends.

Each test makes one internal function on a run's path raise (once, or every
time) and checks what the project promises: whoever waits for the run gets
its result or a typed error within `WAIT` (never a hang), no thread or actor
is left behind (the autouse fixture), a run nobody runs any more is not
stored as ``running``, and, when the failure came before the run's end was
recorded, ``resume`` finishes it with the steps already committed replayed
(``cached``), not run again.

Code-first runs (`durable`) and DAG runs (`Workflow(name, [Step...])`) are
driven here without a runtime (their actor is unsupervised: a crash ends the
run as interrupted) and, for a few points, under the ``zixir.workflows``
supervisor (a crash restarts the run's actor, which continues by itself).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from supervisors import Supervisor
from zixir_actors import checkpoint, durable
from zixir_actors.checkpoint import CheckpointClient, open_store
from zixir_actors.errors import (
    RunInterruptedError,
    StoreError,
    ZixirError,
    ZixirTimeoutError,
)
from zixir_actors.executor._adapters import InFlight
from zixir_actors.observability._tracing import Span, open_spans
from zixir_actors.testing import wait_for
from zixir_actors.workflow import Step, Workflow, child_spec
from zixir_actors.workflow._durable import _Body, _next_event_seq, parked_bodies
from zixir_actors.workflow._history import RunLog
from zixir_actors.workflow._progress import ProgressLog
from zixir_actors.workflow._results import RunHandle, RunResult
from zixir_actors.workflow._run import WorkflowRun
from zixir_actors.workflow._scheduler import Scheduler
from zixir_actors.workflow._telemetry import Telemetry
from zixir_actors.workflow._timers import Timers

WAIT = 15.0
"""Seconds a run gets to end after a fault: far more than it needs, even on a busy
machine; a run that has not ended by then hangs, and the test fails at once."""


class Injected(RuntimeError):
    """The engine failure a test injects (not a store error: the engine's own bug)."""


@dataclass
class Fault:
    """A patched function: raises `Injected` on calls ``skip+1 .. skip+times``."""

    name: str
    skip: int = 0
    times: int | None = 1  # None: every call from ``skip+1`` on
    calls: int = 0
    raised: int = 0


def inject(monkeypatch: pytest.MonkeyPatch, owner: Any, attr: str, *, skip: int = 0,
           times: int | None = 1, when: Callable[..., bool] | None = None,
           error: Callable[[str], BaseException] = Injected, after: bool = False) -> Fault:
    """Patch ``owner.attr`` to raise `error` (default `Injected`) on its matching
    calls (see `Fault`): instead of running, or (`after`) once it ran."""
    real = getattr(owner, attr)
    fault = Fault(f"{getattr(owner, '__name__', owner)}.{attr}", skip, times)
    lock = threading.Lock()

    def broken(*args: Any, **kwargs: Any) -> Any:
        if when is None or when(*args, **kwargs):
            with lock:
                fault.calls += 1
                hit = fault.calls > fault.skip and (
                    fault.times is None or fault.raised < fault.times)
                if hit:
                    fault.raised += 1
            if hit:
                if after:
                    real(*args, **kwargs)
                raise error(f"{fault.name} broke")
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, attr, broken)
    return fault


def outcome(handle: RunHandle) -> RunResult | ZixirError:
    """The run's result, or the typed error its caller got; fails the test on a hang."""
    try:
        return handle.result(timeout=WAIT)
    except ZixirTimeoutError:
        pytest.fail(f"run {handle.run_id} did not end within {WAIT}s: it hangs")
    except ZixirError as exc:
        return exc


def stored_status(store: CheckpointClient, run_id: str) -> str | None:
    record = store.find_run(run_id)
    return None if record is None else record.status


@pytest.fixture(autouse=True)
def _end_spans_an_injected_failure_left_open() -> Iterator[None]:
    """A test that makes `Span.end` raise leaves that span open; it must not
    show up in a later test's `close_open_spans` (the engine's own spans are
    checked where a test says so)."""
    before = {id(opened) for opened in open_spans()}
    yield
    for opened in open_spans():
        if id(opened) not in before:
            opened.end(status="error")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CheckpointClient]:
    with open_store(tmp_path) as client:
        yield client


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[CheckpointClient]:
    """The store and the ``zixir.workflows`` supervisor, as a runtime has them."""
    sup = Supervisor.start_link([checkpoint.child_spec(tmp_path / "sup"), child_spec()])
    try:
        yield checkpoint.connect()
    finally:
        sup.stop()


# -- the workflows under test -----------------------------------------------------------

EXPECTED = {"a": 2, "b": 4, "c": 5}


def counted(calls: Counter[str], gate: threading.Event | None = None) -> tuple[Any, Any, Any]:
    """The three steps both workflows run, counting their calls; the first
    waits for `gate`, if given. Parameter names are the DAG's dependencies."""
    def a(n: int) -> int:
        if gate is not None:
            gate.wait(WAIT)
        calls["first"] += 1
        return n + 1

    def b(a: int) -> int:
        calls["second"] += 1
        return a * 2

    def c(b: int) -> int:
        calls["third"] += 1
        return b + 1

    return a, b, c


def code_first(name: str, calls: Counter[str],
               gate: threading.Event | None = None) -> Workflow:
    """Three steps; the second commits in a batch (a recorded `now` rides with it)."""
    first, second, third = counted(calls, gate)

    @durable(name)
    def body(ctx: Any, n: int) -> dict[str, int]:
        a = ctx.step(first, n, name="first")
        ctx.now()
        b = ctx.step(second, a, name="second")
        return {"a": a, "b": b, "c": ctx.step(third, b, name="third")}

    return body


def dag(name: str, calls: Counter[str], gate: threading.Event | None = None) -> Workflow:
    """`code_first` as a chain of three steps."""
    a, b, c = counted(calls, gate)
    return Workflow(name, [Step("a", a), Step("b", b, ("a",)), Step("c", c, ("b",))])


def first_then(engine: str, name: str, step: str, fn: Any, calls: Counter[str]) -> Workflow:
    """The first counting step, then `fn` (a parameter named ``first``) on its output."""
    first = counted(calls)[0]
    if engine == "dag":
        return Workflow(name, [Step("first", first), Step(step, fn, ("first",))])

    @durable(name)
    def body(ctx: Any, n: int) -> int:
        return int(ctx.step(fn, ctx.step(first, n, name="first"), name=step))

    return body


def outputs(result: RunResult) -> dict[str, Any]:
    return dict(result.output) if result.output is not None and not isinstance(
        result.output, dict) else dict(result.outputs)


def check_ended(store: CheckpointClient, run_id: str, ended: RunResult | ZixirError) -> None:
    """The caller got a typed answer, and the store does not say a dead run runs."""
    if isinstance(ended, ZixirError):
        assert isinstance(ended, RunInterruptedError), repr(ended)
    assert stored_status(store, run_id) != "running"


def check_resumed(wf: Workflow, store: CheckpointClient, run_id: str, calls: Counter[str],
                  committed: tuple[str, ...]) -> None:
    """Resume finishes the run; the steps committed before the fault are replayed."""
    result = wf.resume(run_id, store=store, timeout=WAIT)
    assert result.status == "succeeded", result.error or result.errors
    assert outputs(result) == EXPECTED
    labels = {"first": ("first#1", "a"), "second": ("second#1", "b"),
              "third": ("third#1", "c")}
    for fn in committed:
        label = labels[fn][0] if wf.body is not None else labels[fn][1]
        assert result.steps[label].status == "cached", (fn, result.steps)
        assert calls[fn] == 1, (fn, calls)


# -- one fault on the run's path, for each engine ------------------------------------------


def _step_span(span: Span, **_: Any) -> bool:
    return span.name == "workflow.step"


def _durable_commit(_client: Any, _batch: Any, **options: Any) -> bool:
    return bool(options.get("durable", True))  # not the progress flush's


def _ended_item(_log: Any, kind: str, *_: Any) -> bool:
    return kind == "ended"


@dataclass(frozen=True)
class Point:
    """Where a fault is injected, and which steps were committed before it."""

    engine: str  # "code-first" | "dag"
    owner: Any
    attr: str
    skip: int = 0
    times: int | None = 1
    committed: tuple[str, ...] = ()
    when: Callable[..., bool] | None = None

    @property
    def id(self) -> str:
        name = getattr(self.owner, "__name__", str(self.owner))
        return f"{self.engine}-{name}.{self.attr}-{self.skip}-{self.times or 'always'}"


ALL = ("first", "second", "third")
POINTS = [
    # code-first: the second step commits in a batch (a recorded value rides with
    # it), the first and third alone (put_call); the end in a batch.
    Point("code-first", CheckpointClient, "put_call", skip=1, committed=ALL[:2]),
    Point("code-first", CheckpointClient, "batch", committed=ALL[:1]),
    Point("code-first", CheckpointClient, "batch", skip=1, committed=ALL),
    Point("code-first", CheckpointClient, "commit", committed=ALL[:1], when=_durable_commit),
    Point("code-first", CheckpointClient, "commit", skip=1, committed=ALL,
          when=_durable_commit),
    Point("code-first", Telemetry, "attempt", skip=1, committed=ALL[:2]),
    Point("code-first", Span, "end", skip=1, committed=ALL[:2], when=_step_span),
    Point("code-first", _Body, "records"),
    Point("code-first", _Body, "load_letters"),
    Point("code-first", ProgressLog, "append", committed=ALL, when=_ended_item),
    Point("code-first", RunLog, "flush", times=None, committed=ALL),
    # DAG: a, b and c in a chain (a lone worker: its fsync is left under way).
    Point("dag", CheckpointClient, "save_step_fields", skip=1, committed=ALL[:1]),
    Point("dag", CheckpointClient, "save_step_fields", times=None),
    Point("dag", Telemetry, "attempt", skip=1, committed=ALL[:2]),
    Point("dag", Span, "end", skip=1, committed=ALL[:2], when=_step_span),
    Point("dag", Scheduler, "_record_locked", skip=1, committed=ALL[:2]),
    Point("dag", CheckpointClient, "save_run", skip=1, committed=ALL),
    Point("dag", CheckpointClient, "dead_letters"),
    Point("dag", RunLog, "flush", times=None, committed=ALL),
]


def run_hit(point: Point, name: str, run_id: str, calls: Counter[str], store: CheckpointClient,
            monkeypatch: pytest.MonkeyPatch) -> tuple[Workflow, Any, RunResult | ZixirError]:
    """Start the `point.engine` workflow with the fault injected; it must end: checked."""
    wf = (code_first if point.engine == "code-first" else dag)(name, calls)
    with monkeypatch.context() as patch:
        fault = inject(patch, point.owner, point.attr, skip=point.skip, times=point.times,
                       when=point.when)
        ended = outcome(wf.start({"n": 1}, run_id=run_id, store=store))
    check_ended(store, run_id, ended)
    return wf, fault, ended


@pytest.mark.parametrize("point", POINTS, ids=[p.id for p in POINTS])
def test_an_engine_failure_on_the_run_path_ends_the_run_and_resume_finishes_it(
        point: Point, store: CheckpointClient, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = Counter[str]()
    RUN = f"r-{point.id}"
    wf, fault, ended = run_hit(point, f"fi-{point.id}", RUN, calls, store, monkeypatch)
    assert fault.raised >= 1, f"{fault.name} was not on the run's path"
    if isinstance(ended, RunResult) and ended.status == "succeeded":
        assert outputs(ended) == EXPECTED
        assert stored_status(store, RUN) == "succeeded"
        assert calls == Counter(first=1, second=1, third=1)
        return
    check_resumed(wf, store, RUN, calls, point.committed)


# -- stopping a run: cancel and the run's deadline -------------------------------------------


def blocking(name: str, engine: str, started: threading.Event,
             release: threading.Event) -> Workflow:
    """A run of one step that blocks until `release` (its late result is discarded)."""
    def slow() -> int:
        started.set()
        release.wait(WAIT)
        return 1

    if engine == "dag":
        return Workflow(name, [Step("slow", slow)])

    @durable(name)
    def body(ctx: Any) -> int:
        return int(ctx.step(slow, name="slow"))

    return body


@pytest.mark.parametrize("how", ["cancel", "deadline"])
@pytest.mark.parametrize("engine", ["code-first", "dag"])
def test_a_run_stopped_while_a_step_runs_ends_even_if_its_remote_calls_cannot_be_cancelled(
        engine: str, how: str, store: CheckpointClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    started, release = threading.Event(), threading.Event()
    wf = blocking(f"fi-stop-{engine}-{how}", engine, started, release)
    fault = inject(monkeypatch, InFlight, "cancel_all", times=None)
    try:
        handle = wf.start(run_id=f"r-stop-{engine}-{how}", store=store,
                          timeout=0.5 if how == "deadline" else None)
        assert started.wait(WAIT)
        if how == "cancel":
            assert handle.cancel() is True
        ended = outcome(handle)
    finally:
        release.set()
    assert fault.raised == 1
    expected = "cancelled" if how == "cancel" else "timed_out"
    assert isinstance(ended, RunResult) and ended.status == expected
    assert stored_status(store, f"r-stop-{engine}-{how}") == expected


def parked_on(name: str, calls: Counter[str], *, wait_timeout: float | None = None) -> Workflow:
    """A step, then a wait for the event ``go``; returns both."""
    first = counted(calls)[0]

    @durable(name)
    def body(ctx: Any) -> dict[str, Any]:
        a = ctx.step(first, 1, name="first")
        return {"a": a, "go": ctx.wait_for("go", timeout=wait_timeout)}

    return body


@pytest.mark.parametrize("how", ["cancel", "deadline", "wake"])
def test_a_parked_run_ends_or_wakes_even_if_its_parked_gauge_fails(
        how: str, store: CheckpointClient, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = Counter[str]()
    wf = parked_on(f"fi-parked-{how}", calls)
    fault = inject(monkeypatch, Telemetry, "parked", times=None)  # as it parks, and after
    handle = wf.start(run_id=f"r-parked-{how}", store=store,
                      timeout=3.0 if how == "deadline" else None)
    assert handle.wait(timeout=WAIT) == "parked"
    if how == "cancel":
        assert handle.cancel() is True
    elif how == "wake":
        wf.send(f"r-parked-{how}", "go", 7, store=store)
    ended = outcome(handle)
    assert fault.raised == 2
    assert isinstance(ended, RunResult), repr(ended)
    expected = {"cancel": "cancelled", "deadline": "timed_out", "wake": "succeeded"}[how]
    assert ended.status == expected
    assert stored_status(store, f"r-parked-{how}") == expected
    if how == "wake":
        assert ended.output == {"a": 2, "go": 7} and calls["first"] == 1


# -- a crash whose report fails too ------------------------------------------------------


@pytest.mark.parametrize("engine", ["code-first", "dag"])
def test_a_crashed_run_is_interrupted_even_if_its_span_cannot_end(
        engine: str, store: CheckpointClient, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = Counter[str]()
    wf = (code_first if engine == "code-first" else dag)(f"fi-crash-span-{engine}", calls)
    with monkeypatch.context() as patch:
        inject(patch, Span, "end", times=None, when=lambda span, **_: span.name == "workflow.run")
        if engine == "code-first":  # the run's actor crashes as it starts driving the body
            inject(patch, _Body, "load_letters")
        else:  # ... as it records the second step
            inject(patch, Scheduler, "_record_locked", skip=1)
        ended = outcome(wf.start({"n": 1}, run_id=f"r-crash-{engine}", store=store))
    assert isinstance(ended, RunInterruptedError), repr(ended)
    assert stored_status(store, f"r-crash-{engine}") == "interrupted"
    check_resumed(wf, store, f"r-crash-{engine}", calls, () if engine == "code-first" else ALL[:2])


# -- timers that cannot be armed ------------------------------------------------------------


def _timer(kind: str) -> Callable[..., bool]:
    def matches(_timers: Any, _due: float, key: Any, _fn: Any) -> bool:
        return isinstance(key, tuple) and key[0] == kind
    return matches


def emitting(name: str, calls: Counter[str]) -> Workflow:
    """A step, a progress item, then a wait (with a durable deadline) for ``go``."""
    first = counted(calls)[0]

    @durable(name)
    def body(ctx: Any) -> dict[str, Any]:
        a = ctx.step(first, 1, name="first")
        ctx.emit("half way")
        return {"a": a, "go": ctx.wait_for("go", timeout=600)}

    return body


@pytest.mark.parametrize("kind", ["run-log", "progress"])
def test_a_run_goes_on_when_its_log_or_progress_flush_cannot_be_scheduled(
        kind: str, store: CheckpointClient, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = Counter[str]()
    wf = emitting(f"fi-timer-{kind}", calls)
    run_id = f"r-timer-{kind}"
    fault = inject(monkeypatch, Timers, "add", times=None, when=_timer(kind))
    handle = wf.start(run_id=run_id, store=store)
    assert handle.wait(timeout=WAIT) == "parked"
    wf.send(run_id, "go", 7, store=store)
    ended = outcome(handle)
    assert fault.raised >= 1
    assert isinstance(ended, RunResult) and ended.status == "succeeded", repr(ended)
    assert ended.output == {"a": 2, "go": 7} and calls["first"] == 1
    assert [item.value for item in handle.progress(timeout=WAIT)
            if item.kind == "emit"] == ["half way"]
    assert store.run_logs(run_id), "the run's log lines were lost"


@pytest.mark.parametrize("kind", ["wake", "mailbox"])
def test_a_park_whose_wake_up_cannot_be_armed_interrupts_the_run_and_resume_ends_it(
        kind: str, store: CheckpointClient, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = Counter[str]()
    wf = emitting(f"fi-timer-{kind}", calls)
    run_id = f"r-timer-{kind}"
    with monkeypatch.context() as patch:
        fault = inject(patch, Timers, "add", when=_timer(kind))
        ended = outcome(wf.start(run_id=run_id, store=store))
    assert fault.raised == 1
    assert isinstance(ended, RunInterruptedError), repr(ended)
    assert stored_status(store, run_id) == "parked"  # it still waits: resume continues it
    wf.send(run_id, "go", 7, store=store)
    result = wf.resume(run_id, store=store, timeout=WAIT)
    assert result.status == "succeeded" and result.output == {"a": 2, "go": 7}
    assert result.steps["first#1"].status == "cached" and calls["first"] == 1


# -- a run that cannot be launched ---------------------------------------------------------


LAUNCH = [
    ("code-first", Timers, "add", _timer("deadline")),  # its deadline
    ("code-first", _Body, "activate", None),  # its actor
    ("dag", WorkflowRun, "start", None),  # its actor
]


@pytest.mark.parametrize(("engine", "owner", "attr", "when"), LAUNCH,
                         ids=["code-first-deadline", "code-first-activate", "dag-start"])
def test_a_run_that_cannot_be_launched_raises_and_is_not_left_running(
        engine: str, owner: Any, attr: str, when: Any, store: CheckpointClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = Counter[str]()
    wf = (code_first if engine == "code-first" else dag)(f"fi-launch-{engine}-{attr}", calls)
    run_id = f"r-launch-{engine}-{attr}"
    with monkeypatch.context() as patch:
        inject(patch, owner, attr, when=when)
        with pytest.raises(Injected):
            wf.start({"n": 1}, run_id=run_id, store=store, timeout=600)
    assert stored_status(store, run_id) == "interrupted"  # not "running": nothing runs it
    assert not [s for s in open_spans() if s.attributes.get("run_id") == run_id]  # ended
    check_resumed(wf, store, run_id, calls, ())


# -- parks ------------------------------------------------------------------------------


PARK = [
    pytest.param(_Body, "park", 0, id="park"),
    pytest.param(CheckpointClient, "batch", 0, id="park-batch"),  # the parked record's
    pytest.param(CheckpointClient, "commit", 0, id="park-commit"),
]


@pytest.mark.parametrize(("owner", "attr", "skip"), PARK)
def test_a_park_that_fails_interrupts_the_run_and_resume_ends_it(
        owner: Any, attr: str, skip: int, store: CheckpointClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = Counter[str]()
    wf = parked_on(f"fi-park-{attr}", calls)
    run_id = f"r-park-{attr}"
    with monkeypatch.context() as patch:
        fault = inject(patch, owner, attr, skip=skip,
                       when=_durable_commit if attr == "commit" else None)
        ended = outcome(wf.start(run_id=run_id, store=store))
    assert fault.raised == 1
    assert isinstance(ended, RunInterruptedError), repr(ended)
    assert stored_status(store, run_id) == "interrupted"
    wf.send(run_id, "go", 7, store=store)
    result = wf.resume(run_id, store=store, timeout=WAIT)
    assert result.status == "succeeded" and result.output == {"a": 2, "go": 7}
    assert result.steps["first#1"].status == "cached" and calls["first"] == 1


def test_a_supervised_run_whose_park_fails_once_is_restarted_and_parks(
        supervised: CheckpointClient, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = Counter[str]()
    wf = parked_on("fi-park-supervised", calls)
    fault = inject(monkeypatch, _Body, "park")
    handle = wf.start(run_id="r-park-sup", store=supervised)
    assert handle.wait(timeout=WAIT) == "parked"
    assert fault.raised == 1
    wf.send("r-park-sup", "go", 7, store=supervised)
    ended = outcome(handle)
    assert isinstance(ended, RunResult) and ended.output == {"a": 2, "go": 7}, repr(ended)
    assert calls["first"] == 1


@pytest.mark.parametrize("then", ["returns", "calls ctx", "raises"])
def test_a_body_that_swallows_its_park_with_a_bare_except_still_parks(
        then: str, store: CheckpointClient) -> None:
    calls = Counter[str]()

    def first(x: int) -> int:
        calls["first"] += 1
        return x + 1

    @durable(f"fi-swallow-{then}")
    def body(ctx: Any) -> dict[str, Any]:
        a = ctx.step(first, 1, name="first")
        try:
            got = ctx.wait_for("go")
        except:  # noqa: E722 - what is tested
            if then == "calls ctx":
                got = ctx.step(first, 100, name="fallback")
            elif then == "raises":
                raise ValueError("the body's own error, after the park") from None
            else:
                got = "swallowed"
        return {"a": a, "go": got}

    run_id = f"r-swallow-{then.replace(' ', '-')}"
    handle = body.start(run_id=run_id, store=store)
    assert handle.wait(timeout=WAIT) == "parked"
    body.send(run_id, "go", 7, store=store)
    ended = outcome(handle)
    assert isinstance(ended, RunResult) and ended.output == {"a": 2, "go": 7}, repr(ended)
    assert calls["first"] == 1


# -- values that cannot be stored -------------------------------------------------------------


def unpicklable(x: int) -> Any:
    return (i for i in range(x))  # neither pickle nor dill can store a generator


@pytest.mark.parametrize("how", ["step", "spawn", "map", "dag"])
def test_a_step_whose_value_cannot_be_stored_fails_the_run_with_a_dead_letter(
        how: str, store: CheckpointClient) -> None:
    if how == "dag":
        wf = Workflow("fi-unpicklable-dag", [Step("lock", unpicklable)])
        label = "lock"
    else:
        @durable(f"fi-unpicklable-{how}")
        def wf(ctx: Any) -> Any:
            if how == "step":
                return ctx.step(unpicklable, 1, name="lock")
            if how == "spawn":
                return ctx.spawn(unpicklable, 1, name="lock").result(timeout=WAIT)
            return ctx.map(unpicklable, [1], name="lock")

        label = "lock#1"
    run_id = f"r-unpicklable-{how}"
    ended = outcome(wf.start({"x": 1} if how == "dag" else {}, run_id=run_id, store=store))
    assert isinstance(ended, RunResult) and ended.status == "failed", repr(ended)
    assert ended.steps[label].status == "failed"
    assert "UnserializableError" in str(ended.steps[label].error)
    assert stored_status(store, run_id) == "failed"
    assert [d.step for d in store.dead_letters(run_id=run_id)] == [label]


def test_a_store_failure_that_the_body_swallows_with_a_bare_except_still_ends_the_run(
        store: CheckpointClient, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = Counter[str]()
    first = counted(calls)[0]

    @durable("fi-swallow-store")
    def body(ctx: Any) -> dict[str, int]:
        try:
            a = ctx.step(first, 1, name="first")
        except:  # noqa: E722 - what is tested
            a = -1
        return {"a": a, "b": ctx.step(first, a, name="second")}

    with monkeypatch.context() as patch:
        fault = inject(patch, CheckpointClient, "put_call", error=StoreError)
        ended = outcome(body.start(run_id="r-swallow-store", store=store))
    assert fault.raised == 1
    # As if it had not been swallowed: the run ends with the store's error, and
    # nothing the body did after the failed commit is kept.
    assert isinstance(ended, StoreError), repr(ended)
    assert stored_status(store, "r-swallow-store") == "failed"
    assert calls["first"] == 1
    result = body.resume("r-swallow-store", store=store, timeout=WAIT)
    assert result.status == "succeeded" and result.output == {"a": 2, "b": 3}


# -- under the zixir.workflows supervisor -----------------------------------------------------


SUPERVISED = [p for p in POINTS if p.times == 1 and p.id in {
    "code-first-CheckpointClient.batch-1-1", "code-first-_Body.load_letters-0-1",
    "code-first-_Body.records-0-1", "dag-CheckpointClient.save_step_fields-1-1",
    "dag-Scheduler._record_locked-1-1", "dag-CheckpointClient.save_run-1-1",
    "dag-CheckpointClient.dead_letters-0-1", "dag-Telemetry.attempt-1-1"}]


@pytest.mark.parametrize("point", SUPERVISED, ids=[p.id for p in SUPERVISED])
def test_a_supervised_run_hit_by_one_engine_failure_ends_and_loses_no_step(
        point: Point, supervised: CheckpointClient, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = Counter[str]()
    run_id = f"r-sup-{point.id}"
    wf, fault, ended = run_hit(point, f"fi-sup-{point.id}", run_id, calls, supervised,
                               monkeypatch)
    assert fault.raised == 1
    if isinstance(ended, RunResult) and ended.status == "succeeded":
        # A crash restarted the run's actor, which went on from the checkpoints.
        assert outputs(ended) == EXPECTED
        assert all(calls[fn] == 1 for fn in point.committed), calls
        return
    check_resumed(wf, supervised, run_id, calls, point.committed)


# -- async bodies --------------------------------------------------------------------------


def async_code_first(name: str, calls: Counter[str]) -> Workflow:
    """`code_first` as an ``async def`` body."""
    first, second, third = counted(calls)

    @durable(name)
    async def body(ctx: Any, n: int) -> dict[str, int]:
        a = await ctx.step(first, n, name="first")
        ctx.now()
        b = await ctx.step(second, a, name="second")
        return {"a": a, "b": b, "c": await ctx.step(third, b, name="third")}

    return body


ASYNC = [p for p in POINTS if p.engine == "code-first" and p.id in {
    "code-first-CheckpointClient.put_call-1-1", "code-first-CheckpointClient.batch-1-1",
    "code-first-_Body.records-0-1", "code-first-_Body.load_letters-0-1",
    "code-first-Telemetry.attempt-1-1"}]


@pytest.mark.parametrize("point", ASYNC, ids=[p.id for p in ASYNC])
def test_an_async_body_hit_by_an_engine_failure_ends_and_resume_finishes_it(
        point: Point, store: CheckpointClient, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = Counter[str]()
    wf = async_code_first(f"fi-async-{point.id}", calls)
    run_id = f"r-async-{point.id}"
    with monkeypatch.context() as patch:
        fault = inject(patch, point.owner, point.attr, skip=point.skip, when=point.when)
        ended = outcome(wf.start({"n": 1}, run_id=run_id, store=store))
    assert fault.raised == 1
    check_ended(store, run_id, ended)
    check_resumed(wf, store, run_id, calls, point.committed)


# -- a step that fails for good: its dead letter ---------------------------------------------


LETTER = [("code-first", Telemetry, "exhausted"), ("dag", Telemetry, "exhausted"),
          ("dag", CheckpointClient, "save_dead_letter"), ("dag", Telemetry, "dead_letters"),
          ("dag", CheckpointClient, "count_dead_letters")]


@pytest.mark.parametrize(("engine", "owner", "attr"), LETTER,
                         ids=[f"{e}-{o.__name__}.{a}" for e, o, a in LETTER])
def test_a_failed_step_whose_dead_letter_path_fails_still_ends_the_run(
        engine: str, owner: Any, attr: str, store: CheckpointClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = Counter[str]()

    def boom(first: int) -> int:
        calls["boom"] += 1
        raise ValueError("the step's own failure")

    wf = first_then(engine, f"fi-letter-{engine}-{attr}", "boom", boom, calls)
    run_id = f"r-letter-{engine}-{attr}"
    with monkeypatch.context() as patch:
        fault = inject(patch, owner, attr)
        ended = outcome(wf.start({"n": 1}, run_id=run_id, store=store))
    assert fault.raised == 1
    check_ended(store, run_id, ended)
    result = wf.resume(run_id, store=store, timeout=WAIT)
    assert result.status == "failed"  # the step fails for good; the run ends each time
    assert calls["first"] == 1
    assert len(store.dead_letters(run_id=run_id)) == 1


# -- two faults at once --------------------------------------------------------------------


def test_a_dag_worker_that_crashes_with_a_checkpoint_sync_under_way_that_fails_ends_the_run(
        store: CheckpointClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lone worker leaves its checkpoint's fsync under way; if the worker then
    fails and waiting for that fsync fails too, the run must still end."""
    calls = Counter[str]()
    wf = dag("fi-unsynced", calls)
    with monkeypatch.context() as patch:
        inject(patch, Telemetry, "attempt")  # right after the first checkpoint
        inject(patch, checkpoint.PendingSync, "wait", times=None, after=True)
        ended = outcome(wf.start({"n": 1}, run_id="r-unsynced", store=store))
    assert isinstance(ended, RunInterruptedError), repr(ended)
    assert stored_status(store, "r-unsynced") == "interrupted"
    check_resumed(wf, store, "r-unsynced", calls, ())


# -- threads that cannot start -----------------------------------------------------------------


def _call_thread(thread: threading.Thread) -> bool:
    return thread.name.startswith("zixir-wf-call-")


def test_a_spawn_whose_thread_cannot_start_leaves_nothing_in_flight(
        store: CheckpointClient, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = Counter[str]()
    first = counted(calls)[0]

    @durable("fi-spawn-thread")
    def body(ctx: Any) -> dict[str, Any]:
        with contextlib.suppress(RuntimeError):  # no thread to be had: it goes on without
            ctx.spawn(first, 1, name="first")
        return {"go": ctx.wait_for("go")}

    with monkeypatch.context() as patch:
        fault = inject(patch, threading.Thread, "start", when=_call_thread)
        handle = body.start(run_id="r-spawn-thread", store=store)
        status = handle.wait(timeout=WAIT)
    assert fault.raised == 1
    assert status == "parked"  # not stuck waiting for a call that never started
    body.send("r-spawn-thread", "go", 7, store=store)
    ended = outcome(handle)
    assert isinstance(ended, RunResult) and ended.output == {"go": 7}, repr(ended)
    assert calls["first"] == 1  # the replay after the wake-up had a thread for it


THREADS = [("code-first", "zixir-body-", 0), ("dag", "zixir-wf-r-thread-", 0),
           ("dag", "zixir-wf-r-thread-", 1)]


@pytest.mark.parametrize(("engine", "prefix", "skip"), THREADS,
                         ids=["code-first-body", "dag-first-worker", "dag-second-worker"])
def test_a_run_whose_thread_cannot_start_ends_and_resume_finishes_it(
        engine: str, prefix: str, skip: int, store: CheckpointClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The body's thread (code-first), or a worker (DAG: the first, or the one
    the first starts for two ready steps), cannot start: no thread to be had."""
    calls = Counter[str]()
    if engine == "dag":  # a fan-out, so that a worker starts another
        a, b, third = counted(calls)

        def c(a: int) -> int:
            return int(third(a + 2))  # the chain's third step, fed by a: a + 3

        wf = Workflow(f"fi-thread-{skip}", [Step("a", a), Step("b", b, ("a",)),
                                             Step("c", c, ("a",))])
    else:
        wf = code_first(f"fi-thread-cf-{skip}", calls)
    run_id = f"r-thread-{engine}-{skip}"
    with monkeypatch.context() as patch:
        fault = inject(patch, threading.Thread, "start", skip=skip,
                       when=lambda t: t.name.startswith(prefix))
        ended = outcome(wf.start({"n": 1}, run_id=run_id, store=store))
    assert fault.raised == 1
    assert isinstance(ended, RunInterruptedError), repr(ended)
    assert stored_status(store, run_id) == "interrupted"
    result = wf.resume(run_id, store=store, timeout=WAIT)
    assert result.status == "succeeded", result.errors
    assert calls["first"] == 1


@pytest.mark.parametrize("kind", ["wake", "mailbox"])
def test_a_supervised_run_whose_wake_up_cannot_be_armed_once_parks_again_and_wakes(
        kind: str, supervised: CheckpointClient, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = Counter[str]()
    wf = emitting(f"fi-timer-sup-{kind}", calls)
    run_id = f"r-timer-sup-{kind}"
    fault = inject(monkeypatch, Timers, "add", when=_timer(kind))
    handle = wf.start(run_id=run_id, store=supervised)
    wait_for(lambda: fault.raised == 1 and handle.status() == "parked" and
             run_id in parked_bodies(), timeout=WAIT, what="the run parked again")
    wf.send(run_id, "go", 7, store=supervised)
    ended = outcome(handle)
    assert isinstance(ended, RunResult) and ended.output == {"a": 2, "go": 7}, repr(ended)
    assert calls["first"] == 1


# -- events sent by another process ------------------------------------------------------------


def send_from_elsewhere(store: CheckpointClient, run_id: str, event: str, payload: Any) -> None:
    """What `send` commits from another process: the event and the mailbox mark, no signal."""
    batch = store.batch()
    seq = _next_event_seq()
    batch.put_event(run_id, seq, event, payload, time.time())
    batch.touch_mailbox(seq)
    store.commit(batch)


def test_a_run_parked_on_an_event_wakes_even_if_one_look_at_the_mailboxes_fails(
        store: CheckpointClient, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = Counter[str]()
    wf = parked_on("fi-mailbox-poll", calls)
    handle = wf.start(run_id="r-mailbox-poll", store=store)
    assert handle.wait(timeout=WAIT) == "parked"
    fault = inject(monkeypatch, CheckpointClient, "pending_events")
    send_from_elsewhere(store, "r-mailbox-poll", "go", 7)
    ended = outcome(handle)
    assert fault.raised == 1
    assert isinstance(ended, RunResult) and ended.output == {"a": 2, "go": 7}, repr(ended)


# -- a step that raises what is not an Exception -------------------------------------------------


@pytest.mark.parametrize("engine", ["code-first", "dag"])
@pytest.mark.parametrize("exc", [SystemExit, KeyboardInterrupt, GeneratorExit])
def test_a_step_raising_a_base_exception_ends_the_run_and_resume_finishes_it(
        engine: str, exc: type[BaseException], store: CheckpointClient) -> None:
    calls = Counter[str]()
    raised = threading.Event()

    def exits(first: int) -> int:
        calls["second"] += 1
        if not raised.is_set():
            raised.set()
            raise exc("a step that ends its thread")
        return first

    wf = first_then(engine, f"fi-base-{engine}-{exc.__name__}", "exits", exits, calls)
    run_id = f"r-base-{engine}-{exc.__name__}"
    ended = outcome(wf.start({"n": 1}, run_id=run_id, store=store))
    assert raised.is_set()
    check_ended(store, run_id, ended)
    result = wf.resume(run_id, store=store, timeout=WAIT)
    assert result.status == "succeeded" and calls["first"] == 1


# -- more crashes than the supervisor allows ----------------------------------------------------


@pytest.mark.parametrize("engine", ["code-first", "dag"])
def test_runs_crashing_past_the_supervisors_restart_intensity_still_end(
        engine: str, supervised: CheckpointClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """``zixir.workflows`` gives up (and stops every child) past its restart
    intensity: a run whose actor crashed and is not restarted must still end."""
    calls = Counter[str]()
    started = threading.Event()  # every run starts before the first crash
    wfs = [(code_first if engine == "code-first" else dag)(f"fi-intensity-{engine}-{i}", calls,
                                                           started)
           for i in range(3)]
    if engine == "code-first":  # its actor crashes once the body returned
        inject(monkeypatch, _Body, "conclude_value", times=None)
    else:  # ... once the first step is committed
        inject(monkeypatch, Scheduler, "_record_locked", times=None)
    handles = [wf.start({"n": 1}, run_id=f"r-intensity-{engine}-{i}", store=supervised)
               for i, wf in enumerate(wfs)]
    started.set()
    for handle in handles:
        ended = outcome(handle)
        assert isinstance(ended, RunInterruptedError), repr(ended)
    monkeypatch.undo()
    for i, wf in enumerate(wfs):
        run_id = f"r-intensity-{engine}-{i}"
        assert stored_status(supervised, run_id) == "interrupted"
        result = wf.resume(run_id, store=supervised, timeout=WAIT)
        assert result.status == "succeeded" and outputs(result) == EXPECTED
    assert calls["first"] == 3  # one per run: committed before the crashes, then replayed


@pytest.mark.parametrize("how", ["crash", "let-go"])
def test_a_run_that_ends_without_recording_its_end_leaves_no_deadline_armed(
        how: str, store: CheckpointClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """A code-first run's deadline is a timer of the process: whatever way the run
    ends here (interrupted by a crash, or let go of while parked), it must not
    stay armed (nor keep the timer thread) until it is due."""
    from zixir_actors._clock import SYSTEM_CLOCK
    from zixir_actors.workflow._durable import interrupt_parked
    from zixir_actors.workflow._timers import timers_for

    calls = Counter[str]()
    run_id = f"r-deadline-{how}"
    if how == "crash":
        wf = code_first(f"fi-deadline-{how}", calls)
        with monkeypatch.context() as patch:
            inject(patch, _Body, "load_letters")
            handle = wf.start({"n": 1}, run_id=run_id, store=store, timeout=600)
            ended = outcome(handle)
    else:
        wf = parked_on(f"fi-deadline-{how}", calls)
        handle = wf.start(run_id=run_id, store=store, timeout=600)
        assert handle.wait(timeout=WAIT) == "parked"
        interrupt_parked()
        ended = outcome(handle)
    assert isinstance(ended, RunInterruptedError), repr(ended)
    assert not timers_for(SYSTEM_CLOCK).cancel(("deadline", run_id))


# -- several workers at once -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["unsupervised", "supervised"])
def test_a_dag_worker_failing_while_others_run_ends_the_run_and_keeps_their_checkpoints(
        mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = Counter[str]()
    together = threading.Barrier(4, timeout=WAIT)  # the four branches run at once

    def branch(n: int, ctx: Any) -> int:
        calls[ctx.step] += 1
        if calls[ctx.step] == 1:
            with contextlib.suppress(threading.BrokenBarrierError):
                together.wait()
        return n

    wf = Workflow(f"fi-wide-{mode}", [Step(f"s{i}", branch) for i in range(4)]
                  + [Step("join", lambda s0, s1, s2, s3: s0 + s1 + s2 + s3,
                          ("s0", "s1", "s2", "s3"))])
    run_id = f"r-wide-{mode}"

    def second_branch(_client: Any, _run_id: str, step: str, *_: Any, **__: Any) -> bool:
        return step == "s1"

    with contextlib.ExitStack() as stack:
        if mode == "supervised":
            sup = Supervisor.start_link([checkpoint.child_spec(tmp_path / "sup"), child_spec()])
            stack.callback(sup.stop)
            client = checkpoint.connect()
        else:
            client = stack.enter_context(open_store(tmp_path / "own"))
        with monkeypatch.context() as patch:
            fault = inject(patch, CheckpointClient, "save_step_fields", when=second_branch)
            ended = outcome(wf.start({"n": 1}, run_id=run_id, store=client))
        assert fault.raised == 1
        if mode == "supervised":  # restarted by its supervisor, it went on by itself
            assert isinstance(ended, RunResult) and ended.outputs["join"] == 4, repr(ended)
            # in flight at the crash, a branch may run again (at least once), never more
            assert all(1 <= calls[f"s{i}"] <= 2 for i in range(4)), calls
            return
        assert isinstance(ended, RunInterruptedError), repr(ended)
        assert stored_status(client, run_id) == "interrupted"
        committed = set(client.steps(run_id))
        result = wf.resume(run_id, store=client, timeout=WAIT)
        assert result.outputs["join"] == 4
        for name in committed:  # committed before the crash: replayed, not run again
            assert result.steps[name].status == "cached" and calls[name] == 1, (name, calls)


def test_an_async_body_that_swallows_its_park_with_a_bare_except_still_parks(
        store: CheckpointClient) -> None:
    calls = Counter[str]()

    def first(x: int) -> int:
        calls["first"] += 1
        return x + 1

    @durable("fi-swallow-async")
    async def body(ctx: Any) -> dict[str, Any]:
        a = await ctx.step(first, 1, name="first")
        try:
            got = await ctx.wait_for("go")
        except:  # noqa: E722 - what is tested
            got = "swallowed"
        return {"a": a, "go": got}

    handle = body.start(run_id="r-swallow-async", store=store)
    assert handle.wait(timeout=WAIT) == "parked"
    body.send("r-swallow-async", "go", 7, store=store)
    ended = outcome(handle)
    assert isinstance(ended, RunResult) and ended.output == {"a": 2, "go": 7}, repr(ended)
    assert calls["first"] == 1


# -- child runs ----------------------------------------------------------------------------


def _child_body(body: _Body, *_: Any) -> bool:
    return "/" in body.run_id  # a child's run id is "<parent>/<label>"


def test_a_parent_whose_child_run_crashes_ends_and_resume_finishes_both(
        store: CheckpointClient, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = Counter[str]()
    child = code_first("fi-child", calls)

    @durable("fi-parent")
    def parent(ctx: Any) -> Any:
        return ctx.run(child, {"n": 1})

    with monkeypatch.context() as patch:
        fault = inject(patch, _Body, "load_letters", when=_child_body)
        ended = outcome(parent.start(run_id="r-parent", store=store))
    assert fault.raised == 1
    check_ended(store, "r-parent", ended)
    assert stored_status(store, "r-parent/fi-child#1") == "interrupted"
    result = parent.resume("r-parent", store=store, timeout=WAIT)
    assert result.status == "succeeded" and result.output == EXPECTED
    assert calls == Counter(first=1, second=1, third=1)


def test_a_supervised_run_restarted_after_it_parked_is_not_driven_beside_its_wake_up(
        supervised: CheckpointClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's actor crashes once the run parked (its wake-up timer could not be
    armed); the event comes while the supervisor restarts that actor. The wake-up
    starts the next incarnation: the restarted one must not run the body too."""
    from zixir_actors.workflow._durable import BodyRun

    calls = Counter[str]()
    in_after, after_gate = threading.Event(), threading.Event()
    restarting, restart_gate, restart_decided = (threading.Event(), threading.Event(),
                                                 threading.Event())

    def first(x: int) -> int:
        calls["first"] += 1
        return x + 1

    def after(x: int) -> int:
        calls["after"] += 1
        in_after.set()
        after_gate.wait(WAIT)
        return x

    @durable("fi-restart-parked")
    def body(ctx: Any) -> dict[str, Any]:
        a = ctx.step(first, 1, name="first")
        go = ctx.wait_for("go", timeout=600)
        return {"a": a, "go": ctx.step(after, go, name="after")}

    starts = Counter[str]()
    real_start, real_drive = BodyRun.on_start, BodyRun._drive

    def on_start(self: Any) -> None:
        starts["n"] += 1
        self.restarted_one = starts["n"] == 2  # the supervisor's restart of the first
        real_start(self)

    def drive(self: Any) -> None:
        if not self.restarted_one:
            real_drive(self)
            return
        restarting.set()
        restart_gate.wait(WAIT)  # meanwhile, the event wakes the run
        try:
            real_drive(self)
        finally:
            restart_decided.set()

    monkeypatch.setattr(BodyRun, "on_start", on_start)
    monkeypatch.setattr(BodyRun, "_drive", drive)
    fault = inject(monkeypatch, Timers, "add", when=_timer("wake"))
    handle = body.start(run_id="r-restart-parked", store=supervised)
    assert restarting.wait(WAIT) and fault.raised == 1
    body.send("r-restart-parked", "go", 7, store=supervised)  # wakes it: next incarnation
    assert in_after.wait(WAIT)
    restart_gate.set()
    assert restart_decided.wait(WAIT)
    after_gate.set()
    ended = outcome(handle)
    assert isinstance(ended, RunResult) and ended.output == {"a": 2, "go": 7}, repr(ended)
    wait_for(lambda: not [t for t in threading.enumerate() if t.name.startswith("zixir-body-")],
             timeout=WAIT, what="the body threads ended")
    assert calls == Counter(first=1, after=1)


# -- the timer thread ------------------------------------------------------------------------


def test_a_timer_callback_raising_a_base_exception_does_not_stop_the_other_timers() -> None:
    """Every run's deadline, wake-up and flush shares one timer thread per clock:
    a callback that raises what is not an Exception must not end it for all."""
    from zixir_actors.testing import FakeClock

    clock = FakeClock()
    timers = Timers(clock)
    bad_ran, later = threading.Event(), threading.Event()

    def bad() -> None:
        bad_ran.set()
        raise SystemExit("a callback that ends its thread")

    timers.add(clock.time() + 1, "bad", bad)
    timers.add(clock.time() + 2, "pending", later.set)  # already due with the bad one
    clock.advance(2)
    assert bad_ran.wait(WAIT)
    assert later.wait(WAIT), "the timer thread died with the callback"
    after = threading.Event()
    timers.add(clock.time() + 1, "after", after.set)
    clock.advance(1)
    assert after.wait(WAIT)
