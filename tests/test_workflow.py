"""Workflows: validation, DAG execution, retries, dead letters, cancel, timeouts, plan, resume."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisors import ChildExited, DynamicSupervisor, Supervisor, add_listener, remove_listener
from zixir_actors import _lmdb, checkpoint
from zixir_actors.checkpoint import CheckpointClient, open_store
from zixir_actors.errors import (
    CorruptBlobError,
    CycleError,
    DeadLetterNotFoundError,
    DuplicateStepError,
    InvalidStepError,
    MissingInputError,
    NotStartedError,
    RunActiveError,
    RunFailedError,
    RunInterruptedError,
    RunNotFoundError,
    StepTimeoutError,
    UnknownDependencyError,
    UnknownStepError,
    WorkflowDefinitionError,
    WorkflowError,
    WorkflowNotFoundError,
)
from zixir_actors.observability import metrics, open_spans
from zixir_actors.testing import FakeClock, capture_logs, capture_spans, wait_for
from zixir_actors.workflow import (
    DeadLetters,
    RetryPolicy,
    RunResult,
    Step,
    StepContext,
    Workflow,
    child_spec,
)
from zixir_actors.workflow import _scheduler as scheduler_module

RESULT_TIMEOUT = 20.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[CheckpointClient]:
    with open_store(tmp_path, clock=clock) as client:
        yield client


def diamond(calls: Counter[str], name: str = "diamond", **options: Any) -> Workflow:
    wf = Workflow(name, **options)

    @wf.step()
    def a(n: int) -> int:
        calls["a"] += 1
        return n + 1

    @wf.step(depends_on=["a"])
    def b(a: int) -> int:
        calls["b"] += 1
        return a * 2

    @wf.step(depends_on=["a"])
    def c(a: int) -> int:
        calls["c"] += 1
        return a * 3

    @wf.step(depends_on=["b", "c"])
    def d(b: int, c: int) -> int:
        calls["d"] += 1
        return b + c

    return wf


# -- validation ---------------------------------------------------------------------


def test_cycle_is_named_before_anything_runs(store: CheckpointClient) -> None:
    wf = Workflow("cyclic")
    wf.add(Step("start", lambda: 1))
    wf.add(Step("a", lambda: 1, depends_on=["c", "start"]))
    wf.add(Step("b", lambda: 1, depends_on=["a"]))
    wf.add(Step("c", lambda: 1, depends_on=["b"]))
    with pytest.raises(CycleError) as info:
        wf.run(store=store)
    assert info.value.cycle == ("a", "c", "b", "a")
    assert "a -> c -> b -> a" in str(info.value)
    assert store.list_runs() == []


def test_cycle_in_constructor_raises_at_once() -> None:
    with pytest.raises(CycleError):
        Workflow("loop", [Step("x", lambda y: 1, depends_on="y"),
                          Step("y", lambda x: 1, depends_on="x")])


def test_unknown_dependency_is_named() -> None:
    with pytest.raises(UnknownDependencyError) as info:
        Workflow("w", [Step("a", lambda: 1, depends_on=["ghost"])])
    assert (info.value.step, info.value.dependency) == ("a", "ghost")


def test_duplicate_step_names_are_rejected() -> None:
    wf = Workflow("dup")
    wf.add(Step("a", lambda: 1))
    with pytest.raises(DuplicateStepError):

        @wf.step(name="a")
        def other() -> int:
            return 2


@pytest.mark.parametrize(("make", "field"), [
    (lambda: RetryPolicy(max_attempts=0), "retry.max_attempts"),
    (lambda: RetryPolicy(initial_delay=-1), "retry.initial_delay"),
    (lambda: RetryPolicy(backoff=0.5), "retry.backoff"),
    (lambda: RetryPolicy(jitter=2), "retry.jitter"),
    (lambda: RetryPolicy(max_delay=float("inf")), "retry.max_delay"),
    (lambda: RetryPolicy(retry_on=(ValueError, "nope")), "retry.retry_on"),  # type: ignore[arg-type]
    (lambda: RetryPolicy(give_up_on=int), "retry.give_up_on"),  # type: ignore[arg-type]
    (lambda: Step("a", lambda: 1, timeout=0), "timeout"),
    (lambda: Step("a", lambda: 1, retry=3), "retry"),  # type: ignore[arg-type]
    (lambda: Step("not valid", lambda: 1), "name"),
    (lambda: Step("ctx", lambda: 1), "name"),
    (lambda: Step("a", 42), "fn"),  # type: ignore[arg-type]
    (lambda: Step("a", lambda: 1, depends_on=["a"]), "depends_on"),
    (lambda: Workflow("w", on_failure="explode"), "on_failure"),  # type: ignore[arg-type]
    (lambda: Workflow("w", max_concurrency=0), "max_concurrency"),
])
def test_bad_policies_and_options_are_typed_errors(make: Any, field: str) -> None:
    with pytest.raises(InvalidStepError) as info:
        make()
    assert info.value.field == field
    assert isinstance(info.value, WorkflowDefinitionError)


def test_an_empty_workflow_is_a_definition_error(store: CheckpointClient) -> None:
    with pytest.raises(WorkflowDefinitionError):
        Workflow("empty").run(store=store)


def test_missing_input_is_reported_before_anything_runs(store: CheckpointClient) -> None:
    calls: Counter[str] = Counter()
    wf = diamond(calls)
    with pytest.raises(MissingInputError) as info:
        wf.run({}, store=store)
    assert (info.value.step, info.value.parameter) == ("a", "n")
    assert calls == Counter()
    assert store.list_runs() == []


def test_without_a_store_running_raises_not_started() -> None:
    wf = Workflow("nostore", [Step("a", lambda: 1)])
    with pytest.raises(NotStartedError):
        wf.run()


# -- execution ----------------------------------------------------------------------


def test_diamond_runs_in_dependency_order_with_parallel_branches(
        store: CheckpointClient) -> None:
    barrier = threading.Barrier(2, timeout=10)
    wf = Workflow("par")
    wf.add(Step("a", lambda n: n))
    # b and c can only both pass the barrier if they run at the same time.
    wf.add(Step("b", lambda a: (barrier.wait(), a + 1)[1], depends_on=["a"]))
    wf.add(Step("c", lambda a: (barrier.wait(), a + 2)[1], depends_on=["a"]))
    wf.add(Step("d", lambda b, c: b * c, depends_on=["b", "c"]))
    result = wf.run({"n": 1}, store=store)
    assert result.status == "succeeded"
    assert result.outputs == {"a": 1, "b": 2, "c": 3, "d": 6}
    assert result.attempts == {"a": 1, "b": 1, "c": 1, "d": 1}
    assert all(d >= 0 for d in result.durations.values())
    assert store.get_run(result.run_id).status == "succeeded"
    assert set(store.steps(result.run_id)) == {"a", "b", "c", "d"}


def test_wide_dag_with_a_join(store: CheckpointClient) -> None:
    wf = Workflow("wide", max_concurrency=4)
    for i in range(40):
        wf.add(Step(f"leaf{i}", lambda base, i=i: base + i))
    wf.add(Step("total", lambda **outs: sum(v for k, v in outs.items() if k.startswith("leaf")),
                depends_on=[f"leaf{i}" for i in range(40)]))
    result = wf.run({"base": 1}, store=store)
    assert result.ok
    assert result.outputs["total"] == sum(1 + i for i in range(40))


def test_ctx_carries_run_step_attempt_and_a_bound_logger(store: CheckpointClient) -> None:
    seen: list[StepContext] = []
    wf = Workflow("ctx")

    @wf.step()
    def only(ctx: StepContext) -> str:
        seen.append(ctx)
        ctx.logger.info("inside the step")
        return ctx.idempotency_key

    with capture_logs() as logs:
        result = wf.run(run_id="run-ctx", store=store)
    assert seen[0].run_id == "run-ctx"
    assert (seen[0].step, seen[0].attempt, seen[0].workflow) == ("only", 1, "ctx")
    assert result.outputs["only"] == seen[0].idempotency_key
    record = next(r for r in logs.records if r["message"] == "inside the step")
    assert record["run_id"] == "run-ctx"
    assert record["step"] == "only"


def test_events_go_to_logs_spans_and_metrics(store: CheckpointClient) -> None:
    wf = Workflow("observed")
    wf.add(Step("x", lambda: 1))
    before = metrics.sample("zixir_workflow_step_attempts_total",
                            {"workflow": "observed", "step": "x", "outcome": "succeeded"}) or 0
    with capture_logs() as logs, capture_spans() as spans:
        result = wf.run(store=store)
    after = metrics.sample("zixir_workflow_step_attempts_total",
                           {"workflow": "observed", "step": "x", "outcome": "succeeded"})
    assert after == before + 1
    assert any(r["message"] == "step succeeded" and r["run_id"] == result.run_id
               for r in logs.records)
    # The engine's per-step lines name the engine function that logged them.
    assert {r["function"] for r in logs.records
            if r["message"] in ("step started", "step succeeded")} == {"_execute"}
    run_span = next(s for s in spans.spans if s.name == "workflow.run")
    step_span = next(s for s in spans.spans if s.name == "workflow.step")
    assert step_span.parent_id == run_span.span_id
    assert step_span.attributes["step"] == "x"
    assert metrics.sample("zixir_workflow_step_duration_seconds_count",
                          {"workflow": "observed", "step": "x"}) >= 1


def test_start_returns_a_handle_with_a_future(store: CheckpointClient) -> None:
    release = threading.Event()
    wf = Workflow("handle", [Step("slow", lambda: release.wait(10))])
    handle = wf.start(store=store)
    assert not handle.done()
    release.set()
    assert handle.result(timeout=RESULT_TIMEOUT).outputs["slow"] is True
    assert handle.future.done()


def test_a_handle_can_be_awaited(store: CheckpointClient) -> None:
    wf = Workflow("awaited", [Step("x", lambda: 5)])

    async def main() -> RunResult:
        return await wf.start(store=store)

    assert asyncio.run(main()).outputs["x"] == 5


def test_same_run_twice_in_this_process_is_refused(store: CheckpointClient) -> None:
    release = threading.Event()
    wf = Workflow("twice", [Step("x", lambda: release.wait(10))])
    handle = wf.start(run_id="r", store=store)
    try:
        with pytest.raises(RunActiveError):
            wf.start(run_id="r", store=store)
    finally:
        release.set()
        handle.result(timeout=RESULT_TIMEOUT)


def test_a_run_id_of_another_workflow_is_refused(store: CheckpointClient) -> None:
    Workflow("one", [Step("x", lambda: 1)]).run(run_id="shared", store=store)
    with pytest.raises(WorkflowError):
        Workflow("two", [Step("x", lambda: 1)]).run(run_id="shared", store=store)


# -- retries -----------------------------------------------------------------------


def flaky(failures: int, error: type[Exception] = ConnectionError) -> Any:
    calls = {"n": 0}

    def fn(ctx: StepContext) -> str:
        calls["n"] += 1
        if calls["n"] <= failures:
            raise error(f"failure {calls['n']}")
        return ctx.idempotency_key

    fn.calls = calls  # type: ignore[attr-defined]
    return fn


def test_retries_back_off_exponentially_with_jitter_on_the_clock(
        store: CheckpointClient, clock: FakeClock) -> None:
    policy = RetryPolicy(max_attempts=5, initial_delay=1.0, backoff=2.0, max_delay=5.0,
                         jitter=0.2)
    fn = flaky(4)
    wf = Workflow("retry", [Step("x", fn, retry=policy)], clock=clock)
    result = wf.run(store=store)
    assert result.ok
    assert result.attempts == {"x": 5}
    assert len(clock.sleeps) == 4
    for failures, slept in enumerate(clock.sleeps, start=1):
        base = min(5.0, 1.0 * 2.0 ** (failures - 1))
        assert base * 0.8 <= slept <= min(5.0, base * 1.2)


def test_idempotency_key_is_stable_across_retries(store: CheckpointClient,
                                                  clock: FakeClock) -> None:
    keys: list[str] = []

    def fn(ctx: StepContext) -> None:
        keys.append(ctx.idempotency_key)
        if ctx.attempt < 3:
            raise TimeoutError("slow API")

    wf = Workflow("keys", [Step("x", fn, retry=RetryPolicy(max_attempts=3))], clock=clock)
    wf.run(store=store)
    assert len(keys) == 3 and len(set(keys)) == 1


def test_give_up_on_stops_at_once(store: CheckpointClient, clock: FakeClock) -> None:
    fn = flaky(10, PermissionError)
    policy = RetryPolicy(max_attempts=5, give_up_on=(PermissionError,))
    wf = Workflow("giveup", [Step("x", fn, retry=policy)], clock=clock)
    result = wf.run(store=store)
    assert result.status == "failed"
    assert result.attempts == {"x": 1}
    assert clock.sleeps == []
    assert result.errors["x"].type == "PermissionError"


def test_errors_outside_retry_on_are_not_retried(store: CheckpointClient,
                                                 clock: FakeClock) -> None:
    fn = flaky(10, KeyError)
    policy = RetryPolicy(max_attempts=5, retry_on=(ConnectionError,))
    result = Workflow("retryon", [Step("x", fn, retry=policy)], clock=clock).run(store=store)
    assert result.attempts == {"x": 1}
    assert fn.calls["n"] == 1


# -- dead letters ----------------------------------------------------------------------


def test_exhausted_step_goes_to_dead_letters_and_retry_completes_the_run(
        store: CheckpointClient, clock: FakeClock) -> None:
    fixed = threading.Event()
    calls: Counter[str] = Counter()

    def enrich(a: int, model: str) -> str:
        calls["enrich"] += 1
        if not fixed.is_set():
            raise ValueError(f"model {model} rejected {a}")
        return f"{model}:{a}"

    wf = Workflow("dlq", clock=clock)
    wf.add(Step("a", lambda: calls.update(["a"]) or 7))
    wf.add(Step("enrich", enrich, depends_on=["a"], retry=RetryPolicy(max_attempts=3)))
    wf.add(Step("publish", lambda enrich: enrich.upper(), depends_on=["enrich"]))
    result = wf.run({"model": "small"}, store=store)
    assert result.status == "failed"
    assert result.steps["publish"].status == "not_run"
    dlq = DeadLetters(store)
    [letter] = dlq.list()
    assert letter.id == result.steps["enrich"].dead_letter
    assert (letter.run_id, letter.step, letter.workflow) == (result.run_id, "enrich", "dlq")
    assert letter.inputs == {"a": 7, "model": "small"}
    assert letter.error_type == "ValueError" and "rejected 7" in letter.error_message
    assert "Traceback" in letter.traceback and "enrich" in letter.traceback
    assert [a.attempt for a in letter.attempts] == [1, 2, 3]
    assert dlq.get(letter.id) == letter
    assert len(dlq) == 1
    assert metrics.sample("zixir_workflow_dead_letters") == 1
    assert metrics.sample("zixir_workflow_retries_exhausted_total",
                          {"workflow": "dlq", "step": "enrich"}) >= 1

    fixed.set()
    again = dlq.retry(letter.id)
    assert again.status == "succeeded"
    assert again.outputs["publish"] == "SMALL:7"
    assert again.steps["a"].status == "cached"
    assert calls["a"] == 1
    assert dlq.list() == []
    assert metrics.sample("zixir_workflow_dead_letters") == 0


def test_discard_removes_a_letter(store: CheckpointClient) -> None:
    wf = Workflow("discard", [Step("x", lambda: 1 / 0)])
    wf.run(store=store)
    dlq = DeadLetters(store)
    [letter] = dlq.list(workflow="discard")
    dlq.discard(letter.id)
    assert dlq.list() == []
    with pytest.raises(DeadLetterNotFoundError):
        dlq.discard(letter.id)


def test_retry_needs_the_workflow_defined_here(store: CheckpointClient) -> None:
    Workflow("ephemeral-wf", [Step("x", lambda: 1 / 0)]).run(store=store)
    import gc

    gc.collect()
    letter = DeadLetters(store).list()[0]
    with pytest.raises(WorkflowNotFoundError):
        DeadLetters(store).retry(letter.id)
    fixed = Workflow("ephemeral-wf", [Step("x", lambda: 2)])
    assert DeadLetters(store).retry(letter.id, workflow=fixed).outputs["x"] == 2


def test_unserializable_output_fails_the_step_clearly(store: CheckpointClient) -> None:
    wf = Workflow("gen", [Step("x", lambda: (i for i in range(3)),
                               retry=RetryPolicy(max_attempts=3))])
    result = wf.run(store=store)
    assert result.status == "failed"
    assert result.attempts == {"x": 1}
    assert result.errors["x"].type == "UnserializableError"


# -- failure policy -------------------------------------------------------------------


def branching(on_failure: str) -> Workflow:
    wf = Workflow(f"branch-{on_failure}", on_failure=on_failure)  # type: ignore[arg-type]
    wf.add(Step("bad", lambda: 1 / 0))
    wf.add(Step("after_bad", lambda bad: bad, depends_on=["bad"]))
    wf.add(Step("good", lambda: "ok"))
    wf.add(Step("after_good", lambda good: good + "!", depends_on=["good"]))
    return wf


def test_continue_policy_runs_independent_branches(store: CheckpointClient) -> None:
    result = branching("continue").run(store=store, max_concurrency=1)
    assert result.status == "failed"
    assert result.steps["bad"].status == "failed"
    assert result.steps["after_bad"].status == "upstream_failed"
    assert result.outputs["after_good"] == "ok!"
    assert store.get_run(result.run_id).steps["after_good"] == "succeeded"


def test_stop_policy_starts_nothing_after_the_first_exhausted_step(
        store: CheckpointClient) -> None:
    result = branching("stop").run(store=store, max_concurrency=1)
    assert result.status == "failed"
    assert result.steps["after_bad"].status == "not_run"
    assert result.steps["after_good"].status == "not_run"
    with pytest.raises(RunFailedError) as info:
        result.raise_for_status()
    assert "ZeroDivisionError" in str(info.value)


# -- cancel and timeouts ---------------------------------------------------------------


def test_cancel_stops_a_running_run(store: CheckpointClient) -> None:
    started, release = threading.Event(), threading.Event()
    calls: Counter[str] = Counter()

    def slow() -> str:
        started.set()
        release.wait(10)
        return "late"

    wf = Workflow("cancel")
    wf.add(Step("slow", slow))
    wf.add(Step("next", lambda slow: calls.update(["next"]), depends_on=["slow"]))
    handle = wf.start(store=store)
    assert started.wait(5)
    assert handle.cancel() is True
    result = handle.result(timeout=RESULT_TIMEOUT)
    release.set()
    assert result.status == "cancelled"
    assert result.steps["slow"].status == "cancelled"
    assert result.steps["next"].status == "not_run"
    assert calls["next"] == 0
    assert store.get_run(handle.run_id).status == "cancelled"
    assert wf.cancel(handle.run_id, store=store) is False


def test_cancel_waits_for_a_commit_under_way_and_reports_its_step_done(
        store: CheckpointClient, monkeypatch: pytest.MonkeyPatch) -> None:
    # A step whose commit began before the cancel keeps it: `cancel` returns
    # only once that commit ended, and the result says the step succeeded.
    committing, release = threading.Event(), threading.Event()
    real_apply = _lmdb.SharedEnv.apply

    def apply(env: Any, ops: Any, *, durable: bool = False) -> None:
        if any(db == checkpoint.STEPS_DB and key.endswith(b"\x00first") for db, key, _ in ops):
            committing.set()
            release.wait(10)
        real_apply(env, ops, durable=durable)

    monkeypatch.setattr(_lmdb.SharedEnv, "apply", apply)
    wf = Workflow("cancel-commit", [Step("first", lambda: "kept"),
                                    Step("second", lambda first: first, depends_on=["first"])])
    handle = wf.start(store=store)
    assert committing.wait(5)
    cancelled: list[bool] = []
    canceller = threading.Thread(target=lambda: cancelled.append(handle.cancel()))
    canceller.start()
    canceller.join(0.2)  # a bounded look: it must still be waiting for the commit
    assert canceller.is_alive()
    release.set()
    canceller.join(5)
    assert cancelled == [True]
    result = handle.result(timeout=RESULT_TIMEOUT)
    assert result.status == "cancelled"
    assert result.steps["first"].status == "succeeded"
    assert result.steps["second"].status == "not_run"
    assert store.get_step(handle.run_id, "first").output == "kept"  # type: ignore[union-attr]


def test_cancel_of_a_run_from_a_dead_process_marks_it(store: CheckpointClient) -> None:
    wf = Workflow("orphan", [Step("x", lambda: 1)])
    store.save_run(checkpoint.RunRecord("ghost", "orphan", "running", {}, 0.0, 0.0))
    assert wf.cancel("ghost", store=store) is True
    assert store.get_run("ghost").status == "cancelled"
    with pytest.raises(RunNotFoundError):
        wf.cancel("never", store=store)


def test_step_timeout_records_the_step_as_timed_out(store: CheckpointClient) -> None:
    release = threading.Event()
    wf = Workflow("timeout", [Step("stuck", lambda: release.wait(10), timeout=0.1)])
    result = wf.run(store=store)
    release.set()
    assert result.status == "failed"
    assert result.steps["stuck"].status == "timed_out"
    assert result.errors["stuck"].type == StepTimeoutError.__qualname__
    assert DeadLetters(store).list()[0].attempts[0].timed_out is True


def test_run_timeout_ends_the_run_as_timed_out(store: CheckpointClient) -> None:
    release = threading.Event()
    wf = Workflow("runtimeout", [Step("stuck", lambda: release.wait(10))])
    result = wf.run(store=store, timeout=0.1)
    release.set()
    assert result.status == "timed_out"
    assert result.steps["stuck"].status == "cancelled"


# -- plan and resume ---------------------------------------------------------------------


def test_resume_after_failure_skips_finished_steps(store: CheckpointClient) -> None:
    calls: Counter[str] = Counter()
    broken = {"b": True}
    wf = Workflow("resume")
    wf.add(Step("a", lambda: calls.update(["a"]) or 1))

    def b(a: int) -> int:
        calls["b"] += 1
        if broken["b"]:
            raise RuntimeError("flaky dependency")
        return a + 1

    wf.add(Step("b", b, depends_on=["a"]))
    first = wf.run(store=store)
    assert first.status == "failed"
    plan = wf.plan(first.run_id, store=store)
    assert plan["a"].action == "skip"
    assert (plan["b"].action, plan["b"].reason) == ("run", "no checkpoint")
    broken["b"] = False
    second = wf.resume(first.run_id, store=store)
    assert second.ok and second.outputs == {"a": 1, "b": 2}
    assert calls == Counter({"a": 1, "b": 2})
    assert second.steps["a"].status == "cached"


def test_plan_explains_code_and_input_changes(store: CheckpointClient) -> None:
    calls: Counter[str] = Counter()
    result = diamond(calls, name="planned").run({"n": 1}, run_id="p1", store=store)
    assert result.outputs["d"] == 10
    same = diamond(calls, name="planned")
    assert same.plan("p1", store=store).to_run == ()
    assert "unchanged" in same.plan("p1", store=store)["a"].reason

    original = diamond(Counter(), "tmp").steps
    changed = Workflow("planned")
    changed.add(original["a"])
    changed.add(Step("b", lambda a: a * 20, depends_on=["a"]))  # new code
    changed.add(original["c"])
    changed.add(original["d"])
    plan = changed.plan("p1", store=store)
    actions = {e.step: (e.action, e.reason) for e in plan}
    assert actions["b"] == ("rerun", "code changed since its checkpoint")
    assert actions["d"] == ("rerun", "upstream step 'b' will run")
    assert plan["c"].action == "skip"
    assert "b" in str(plan) and "rerun" in str(plan)

    inputs_plan = diamond(Counter(), name="planned").plan("p1", inputs={"n": 2}, store=store)
    assert inputs_plan["a"].reason == "inputs changed since its checkpoint"
    assert inputs_plan.to_run == ("a", "b", "c", "d")


def test_changed_inputs_rerun_that_step_and_downstream(store: CheckpointClient) -> None:
    calls: Counter[str] = Counter()
    wf = Workflow("inputs")
    wf.add(Step("fixed", lambda: calls.update(["fixed"]) or "f"))
    wf.add(Step("uses", lambda x: calls.update(["uses"]) or x * 2))
    wf.add(Step("join", lambda fixed, uses: calls.update(["join"]) or fixed + str(uses),
                depends_on=["fixed", "uses"]))
    wf.run({"x": 1}, run_id="i1", store=store)
    again = wf.run({"x": 1}, run_id="i1", store=store)
    assert {s.status for s in again.steps.values()} == {"cached"}
    changed = wf.run({"x": 5}, run_id="i1", store=store)
    assert changed.outputs["join"] == "f10"
    assert calls == Counter({"fixed": 1, "uses": 2, "join": 2})


def test_resume_from_step_forces_it_and_downstream(store: CheckpointClient) -> None:
    calls: Counter[str] = Counter()
    wf = diamond(calls, name="forced")
    wf.run({"n": 1}, run_id="f1", store=store)
    plan = wf.plan("f1", from_step="b", store=store)
    assert plan.to_run == ("b", "d")
    assert plan["b"].reason == "forced: resume from this step"
    result = wf.resume("f1", from_step="b", store=store)
    assert result.ok
    assert calls == Counter({"a": 1, "b": 2, "c": 1, "d": 2})
    with pytest.raises(UnknownStepError):
        wf.resume("f1", from_step="zzz", store=store)
    with pytest.raises(RunNotFoundError):
        wf.resume("missing", store=store)
    with pytest.raises(RunNotFoundError):
        wf.plan("missing", store=store)


def test_idempotency_key_is_stable_across_resumes(store: CheckpointClient) -> None:
    keys: list[str] = []
    fail = {"on": True}

    def x(ctx: StepContext) -> None:
        keys.append(ctx.idempotency_key)
        if fail["on"]:
            raise RuntimeError("down")

    wf = Workflow("keys-resume", [Step("x", x)])
    first = wf.run(store=store)
    fail["on"] = False
    wf.resume(first.run_id, store=store)
    assert len(keys) == 2 and keys[0] == keys[1]


def test_corrupt_checkpoint_makes_resume_fail_clearly(store: CheckpointClient) -> None:
    wf = Workflow("corrupt", [Step("a", lambda: 1), Step("b", lambda a: a, depends_on="a")])
    wf.run(run_id="c1", store=store)
    env = _lmdb.open_env(store.data_dir)
    try:
        db = env.db(checkpoint.STEPS_DB)
        env.write(lambda txn: txn.put(b"c1\x00a", b"ZX\x01\x00garbage", db=db))
    finally:
        _lmdb.release(env)
    with pytest.raises(CorruptBlobError) as info:
        wf.plan("c1", store=store)
    assert "c1/a" in str(info.value)
    with pytest.raises(CorruptBlobError):
        wf.resume("c1", store=store)


# -- supervision -------------------------------------------------------------------------


def test_run_actor_crash_is_restarted_and_continues_from_checkpoints(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: Counter[str] = Counter()
    wf = diamond(calls, name="crashy")
    real = scheduler_module.Scheduler._record_locked
    crashed = threading.Event()

    def record(self: Any, name: str, outcome: Any) -> None:
        real(self, name, outcome)
        if name == "a" and not crashed.is_set():
            crashed.set()
            raise RuntimeError("injected scheduler crash")

    monkeypatch.setattr(scheduler_module.Scheduler, "_record_locked", record)
    exits: list[ChildExited] = []

    def listen(event: object) -> None:
        if isinstance(event, ChildExited):
            exits.append(event)

    add_listener(listen)
    sup = Supervisor.start_link([checkpoint.child_spec(tmp_path), child_spec()])
    try:
        result = wf.run({"n": 1}, timeout=RESULT_TIMEOUT)
        assert result.ok
        assert result.outputs["d"] == 10
        assert calls["a"] == 1  # committed before the crash: never re-run
        assert result.steps["a"].status == "cached"
        assert any(isinstance(e.reason, RuntimeError) for e in exits)
    finally:
        sup.stop()
        remove_listener(listen)


def test_unsupervised_run_actor_crash_fails_the_run(store: CheckpointClient,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def record(self: Any, name: str, outcome: Any) -> None:
        raise RuntimeError("injected")

    monkeypatch.setattr(scheduler_module.Scheduler, "_record_locked", record)
    wf = Workflow("nosup", [Step("x", lambda: 1)])
    with pytest.raises(RunInterruptedError) as info:
        wf.run(store=store)
    assert isinstance(info.value.reason, RuntimeError)
    monkeypatch.undo()
    assert wf.resume(info.value.run_id, store=store).steps["x"].status == "cached"


def test_a_failure_reporting_a_recorded_end_leaves_the_result_as_stored(
        store: CheckpointClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from zixir_actors.workflow._telemetry import Telemetry

    def broken(self: Telemetry, status: str) -> None:
        raise RuntimeError("metrics backend is gone")

    monkeypatch.setattr(Telemetry, "run_ended", broken)
    wf = Workflow("broken-report", [Step("x", lambda: 1)])
    result = wf.run(store=store, timeout=RESULT_TIMEOUT)

    assert result.status == "succeeded" and result.outputs == {"x": 1}
    record = store.find_run(result.run_id)
    assert record is not None and record.status == "succeeded"
    assert not [s for s in open_spans() if s.attributes.get("run_id") == result.run_id]


def test_runs_are_children_of_the_workflows_supervisor(tmp_path: Path) -> None:
    release = threading.Event()
    wf = Workflow("child", [Step("x", lambda: release.wait(10))])
    sup = Supervisor.start_link([checkpoint.child_spec(tmp_path), child_spec()])
    try:
        handle = wf.start()
        from supervisors import SupervisorRef, whereis

        workflows = SupervisorRef(whereis("zixir.workflows"))
        wait_for(lambda: workflows.count_children().active == 1, timeout=5)
        release.set()
        assert handle.result(timeout=RESULT_TIMEOUT).ok
        wait_for(lambda: workflows.count_children().active == 0, timeout=5)
    finally:
        release.set()
        sup.stop()


def test_supervisor_shutdown_interrupts_a_run_that_can_be_resumed(tmp_path: Path) -> None:
    started, release = threading.Event(), threading.Event()
    calls: Counter[str] = Counter()

    def slow() -> int:
        calls["slow"] += 1
        started.set()
        release.wait(10)
        return 1

    wf = Workflow("shutdown", [Step("slow", slow)])
    sup = DynamicSupervisor.start_link(name="zixir.workflows")
    with open_store(tmp_path) as store:
        handle = wf.start(store=store)
        assert started.wait(5)
        sup.stop()
        with pytest.raises(RunInterruptedError):
            handle.result(timeout=RESULT_TIMEOUT)
        release.set()
        stopped = store.get_run(handle.run_id)  # not "running": no process runs it now
        assert (stopped.status, stopped.error) == ("interrupted", "runtime stopped")
        assert wf.resume(handle.run_id, store=store).ok


# -- sandboxed steps ----------------------------------------------------------------------


def sandboxed_pid(n: int, ctx: StepContext) -> tuple[int, int, str]:
    import os

    return os.getpid(), n * 2, ctx.step


def spin_forever() -> None:
    while True:
        pass


def test_steps_with_limits_run_in_a_sandbox_process(store: CheckpointClient) -> None:
    import os

    from zixir_actors.sandbox import Limits

    wf = Workflow("sandboxed", on_failure="continue")
    wf.add(Step("inside", sandboxed_pid, limits=Limits(timeout=30)))
    # The soft limit ends the call cleanly (Celery-style); the hard kill path is
    # the sandbox's own tests' business.
    wf.add(Step("runaway", spin_forever, limits=Limits(soft_timeout=0.3, timeout=20)))
    result = wf.run({"n": 21}, store=store, max_concurrency=1)
    pid, doubled, name = result.outputs["inside"]
    assert pid != os.getpid()
    assert (doubled, name) == (42, "inside")
    assert result.steps["runaway"].status == "timed_out", result.errors
    assert result.errors["runaway"].type == "SandboxError"


def test_async_steps_run_on_their_own_event_loop(store: CheckpointClient) -> None:
    wf = Workflow("async")

    @wf.step()
    async def fetch(url: str) -> str:
        await asyncio.sleep(0)
        return url.upper()

    @wf.step(depends_on=["fetch"], timeout=10)
    async def size(fetch: str, ctx: StepContext) -> tuple[int, int]:
        return len(fetch), ctx.attempt

    result = wf.run({"url": "abc"}, store=store)
    assert result.outputs == {"fetch": "ABC", "size": (3, 1)}


def test_the_run_span_is_a_child_of_the_callers_span(store: CheckpointClient) -> None:
    from zixir_actors.observability import span

    wf = Workflow("traced", [Step("x", lambda: 1)])
    with capture_spans() as spans, span("app.request") as outer:
        wf.run(store=store)
    run_span = next(s for s in spans.spans if s.name == "workflow.run")
    assert run_span.parent_id == outer.span_id
    assert run_span.trace_id == outer.trace_id


def test_inside_the_runtime_runs_find_the_store_and_supervisor_by_name(tmp_path: Path) -> None:
    import zixir_actors
    from zixir_actors.checkpoint import connect

    wf = Workflow("in-runtime")
    wf.add(Step("x", lambda n: n + 1))
    wf.add(Step("boom", lambda x: 1 / 0, depends_on="x"))
    with zixir_actors.start(data_dir=tmp_path):
        result = wf.run({"n": 1})
        assert result.outputs == {"x": 2}
        assert [r.run_id for r in connect().list_runs(workflow="in-runtime")] == [result.run_id]
        [letter] = DeadLetters().list(workflow="in-runtime")
        assert letter.step == "boom"
    with pytest.raises(NotStartedError):
        wf.run({"n": 1})


def test_a_retried_letter_that_fails_again_is_replaced_by_a_new_one(
        store: CheckpointClient) -> None:
    wf = Workflow("still-broken", [Step("x", lambda: 1 / 0)])
    wf.run(store=store)
    dlq = DeadLetters(store)
    [first] = dlq.list()
    again = dlq.retry(first.id)
    assert again.status == "failed"
    [second] = dlq.list()
    assert second.id != first.id
    assert second.run_id == first.run_id
    with pytest.raises(DeadLetterNotFoundError):
        dlq.get(first.id)


# -- property: resume never redoes finished work ------------------------------------------

@st.composite
def dags(draw: Any) -> tuple[list[list[int]], set[int]]:
    size = draw(st.integers(min_value=1, max_value=8))
    deps = [sorted(draw(st.sets(st.integers(0, i - 1), max_size=3))) if i else []
            for i in range(size)]
    failing = draw(st.sets(st.integers(0, size - 1)))
    return deps, failing


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dags())
def test_resuming_until_done_runs_every_step_once_plus_its_failures(
        store: CheckpointClient, case: tuple[list[list[int]], set[int]]) -> None:
    deps, failing = case
    calls: Counter[int] = Counter()

    def make(i: int) -> Any:
        def fn(**inputs: int) -> int:
            calls[i] += 1
            if i in failing and calls[i] == 1:
                raise RuntimeError(f"first attempt of s{i} fails")
            return i + sum(v for k, v in inputs.items() if k.startswith("s"))
        return fn

    wf = Workflow("property", [Step(f"s{i}", make(i), [f"s{d}" for d in ds])
                               for i, ds in enumerate(deps)], on_failure="continue")
    expected: dict[str, int] = {}
    for i, ds in enumerate(deps):
        expected[f"s{i}"] = i + sum(expected[f"s{d}"] for d in ds)
    result = wf.run(store=store)
    for _ in range(len(deps)):
        if result.ok:
            break
        result = wf.resume(result.run_id, store=store)
    assert result.ok
    assert result.outputs == expected
    assert calls == Counter({i: 1 + (i in failing) for i in range(len(deps))})


def test_a_sandboxed_step_timeout_becomes_the_sandbox_hard_limit(
        store: CheckpointClient, monkeypatch: pytest.MonkeyPatch) -> None:
    import zixir_actors.sandbox as sandbox_module
    from zixir_actors.result import Ok
    from zixir_actors.sandbox import Limits

    seen: list[Any] = []

    class RecordingSandbox:
        def __init__(self, limits: Any, **options: Any) -> None:
            seen.append(limits)

        def __enter__(self) -> RecordingSandbox:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def run(self, fn: Any, /, *args: Any, **kwargs: Any) -> Ok[Any]:
            return Ok(fn(*args, **kwargs))

    monkeypatch.setattr(sandbox_module, "Sandbox", RecordingSandbox)
    wf = Workflow("limits-map", [Step("x", lambda: 7, limits=Limits(memory="256MB"),
                                      timeout=2.5)])
    assert wf.run(store=store).outputs["x"] == 7
    assert seen[0].timeout == 2.5
    assert seen[0].memory == 256 * 1024**2


def test_a_step_can_run_another_workflow(store: CheckpointClient) -> None:
    inner = Workflow("inner", [Step("double", lambda n: n * 2)])
    outer = Workflow("outer")

    @outer.step()
    def delegate(n: int, ctx: StepContext) -> int:
        # A nested run gets a run id derived from the step's idempotency key,
        # so a re-executed step continues the same inner run.
        result = inner.run({"n": n}, run_id=f"{ctx.idempotency_key}/inner", store=store)
        return int(result.outputs["double"])

    assert outer.run({"n": 21}, run_id="nest", store=store).outputs["delegate"] == 42
    assert store.get_run("nest/delegate/inner").status == "succeeded"


def test_spans_opened_by_a_step_nest_in_its_attempt_span(store: CheckpointClient) -> None:
    from zixir_actors.observability import span

    wf = Workflow("nested-spans")

    @wf.step(timeout=10)
    def call_llm() -> str:
        with span("llm.call", model="small"):
            return "ok"

    with capture_spans() as spans:
        wf.run(store=store)
    by_name = {s.name: s for s in spans.spans}
    assert by_name["llm.call"].parent_id == by_name["workflow.step"].span_id
    assert by_name["workflow.step"].parent_id == by_name["workflow.run"].span_id
    assert len({s.trace_id for s in spans.spans}) == 1


# -- fingerprints -------------------------------------------------------------------------


def test_code_hash_follows_the_body_not_the_position() -> None:
    from zixir_actors.workflow import code_hash

    def first(x: int) -> int:
        return x + 1

    def second(x: int) -> int:  # same body, other place: same hash
        return x + 1

    def changed(x: int) -> int:
        return x + 2

    assert code_hash(first) == code_hash(second)
    assert code_hash(first) != code_hash(changed)
    assert code_hash(first, version="2") == "v:2"


def test_input_fingerprints_do_not_depend_on_hash_seed_or_order() -> None:
    import os
    import subprocess
    import sys

    from zixir_actors.workflow import fingerprint

    value = {"tags": {"b", "a", "c"}, "n": 1, "nested": {"y": [1.5, None], "x": (b"z",)}}
    reordered = {"nested": {"x": (b"z",), "y": [1.5, None]}, "n": 1, "tags": {"c", "a", "b"}}
    assert fingerprint(value) == fingerprint(reordered)
    assert fingerprint(value) != fingerprint({**value, "n": 2})
    code = ("from zixir_actors.workflow import fingerprint; "
            f"print(fingerprint({value!r}))")
    seeds = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, env={**os.environ, "PYTHONHASHSEED": s},
                            timeout=60).stdout.strip() for s in ("1", "2", "3")}
    assert seeds == {fingerprint(value)}


def test_a_new_version_label_reruns_the_step(store: CheckpointClient) -> None:
    calls: Counter[str] = Counter()

    def build(version: str) -> Workflow:
        wf = Workflow("versioned")
        wf.add(Step("model", lambda: calls.update(["model"]) or "weights", version=version))
        wf.add(Step("serve", lambda model: calls.update(["serve"]) or model.upper(),
                    depends_on="model"))
        return wf

    build("1").run(run_id="v", store=store)
    plan = build("2").plan("v", store=store)
    assert plan["model"].reason == "code changed since its checkpoint"
    assert plan.to_run == ("model", "serve")
    assert build("1").plan("v", store=store).to_run == ()


# -- hardening: full disk, abandoned steps, one letter per step, corrupt resume ----------


def test_a_full_disk_ends_every_run_with_a_typed_error_and_the_service_stays_up(
        tmp_path: Path) -> None:
    import os

    from _smallfs import fill, small_filesystem

    import zixir_actors
    from supervisors import IntensityExceeded, whereis
    from zixir_actors.errors import StoreFullError
    from zixir_actors.workflow import running_here

    wf = Workflow("fill-disk", max_concurrency=2)

    @wf.step()
    def a(n: int) -> bytes:
        return os.urandom(300_000)

    @wf.step(depends_on=["a"])
    def b(a: bytes) -> bytes:
        return os.urandom(300_000)

    events: list[object] = []
    add_listener(events.append)
    try:
        with small_filesystem(tmp_path, "8m") as mount_point, \
                zixir_actors.start(data_dir=mount_point / "d"):
            workflows = whereis("zixir.workflows")
            assert wf.run({"n": 0}).status == "succeeded"
            filler = fill(mount_point, leave=500_000)
            outcomes: list[object] = []
            lock = threading.Lock()

            def go(i: int) -> None:
                try:
                    # Half the callers give no timeout: they must end all the same.
                    outcome: object = wf.run({"n": i}, timeout=None if i % 2 else 60)
                except BaseException as exc:
                    outcome = exc
                with lock:
                    outcomes.append(outcome)

            callers = [threading.Thread(target=go, args=(i,)) for i in range(1, 9)]
            for t in callers:
                t.start()
            for t in callers:
                t.join(120)
            assert not any(t.is_alive() for t in callers), "a wf.run() call never ended"
            assert len(outcomes) == 8
            for outcome in outcomes:
                assert isinstance(outcome, StoreFullError), outcome
                assert "disk full" in str(outcome) and str(mount_point / "d") in str(outcome)
            assert whereis("zixir.workflows") is workflows  # no crash, no restart
            assert not [e for e in events if isinstance(e, IntensityExceeded)]
            store = checkpoint.connect()
            runs = store.list_runs(workflow="fill-disk")
            assert not any(running_here(r.run_id) for r in runs)
            for r in runs[1:]:  # what fitted says failed, with the reason
                assert r.status in ("failed", "running")
                if r.status == "failed":
                    assert "disk full" in (r.error or "")
            filler.unlink()
            assert wf.run({"n": 99}).status == "succeeded"  # space is back: so is the service
    finally:
        remove_listener(events.append)


def test_an_abandoned_steps_late_result_is_discarded_and_resume_runs_it(
        store: CheckpointClient) -> None:
    started, release = threading.Event(), threading.Event()
    calls: Counter[str] = Counter()

    def slow() -> str:
        calls["slow"] += 1
        if calls["slow"] == 1:
            started.set()
            release.wait(10)
            return "late"
        return "fresh"

    wf = Workflow("abandon")
    wf.add(Step("slow", slow))
    wf.add(Step("next", lambda slow: slow.upper(), depends_on=["slow"]))
    handle = wf.start(store=store)
    assert started.wait(5)
    assert handle.cancel() is True
    assert handle.result(timeout=RESULT_TIMEOUT).steps["slow"].status == "cancelled"
    release.set()  # the abandoned step now returns "late"
    prefix = f"zixir-wf-{handle.run_id[:12]}"
    wait_for(lambda: not any(t.name.startswith(prefix) for t in threading.enumerate()),
             timeout=RESULT_TIMEOUT)
    assert store.get_step(handle.run_id, "slow") is None  # discarded, as cancel() says
    resumed = wf.resume(handle.run_id, store=store)
    assert resumed.status == "succeeded"
    assert resumed.steps["slow"].status == "succeeded"
    assert resumed.outputs["next"] == "FRESH"
    assert calls["slow"] == 2


def test_a_run_timeout_discards_the_late_result_too(store: CheckpointClient) -> None:
    release = threading.Event()
    wf = Workflow("abandon-timeout", [Step("slow", lambda: release.wait(10) and "late")])
    result = wf.run(timeout=0.2, store=store)
    assert result.status == "timed_out"
    release.set()
    prefix = f"zixir-wf-{result.run_id[:12]}"
    wait_for(lambda: not any(t.name.startswith(prefix) for t in threading.enumerate()),
             timeout=RESULT_TIMEOUT)
    assert store.get_step(result.run_id, "slow") is None


def test_resuming_a_failed_run_keeps_one_dead_letter_per_step(
        store: CheckpointClient, clock: FakeClock) -> None:
    fixed = threading.Event()

    def flaky() -> int:
        if not fixed.is_set():
            raise ValueError("still broken")
        return 1

    wf = Workflow("one-letter", clock=clock)
    wf.add(Step("flaky", flaky, retry=RetryPolicy(max_attempts=2)))
    first = wf.run(store=store)
    assert first.status == "failed"
    [letter] = store.dead_letters()
    second = wf.resume(first.run_id, store=store)
    assert second.status == "failed"
    [again] = store.dead_letters()  # replaced, not added
    assert again.id == second.steps["flaky"].dead_letter != letter.id
    assert [a.attempt for a in again.attempts] == [1, 2, 1, 2]  # every attempt so far
    assert len(DeadLetters(store)) == 1
    fixed.set()
    assert wf.resume(first.run_id, store=store).status == "succeeded"
    assert store.dead_letters() == []


def test_a_resume_failing_on_a_corrupt_checkpoint_leaves_the_run_as_it_was(
        store: CheckpointClient) -> None:
    wf = Workflow("corrupt-kept", [Step("a", lambda: 1), Step("b", lambda a: a, depends_on="a")])
    wf.run(run_id="k1", store=store)
    before = store.get_run("k1")
    assert before.status == "succeeded"
    env = _lmdb.open_env(store.data_dir)
    try:
        db = env.db(checkpoint.STEPS_DB)
        env.write(lambda txn: txn.put(b"k1\x00a", b"ZX\x01\x00garbage", db=db))
    finally:
        _lmdb.release(env)
    with pytest.raises(CorruptBlobError):
        wf.resume("k1", store=store)
    with pytest.raises(CorruptBlobError):
        wf.run(run_id="k1", store=store)
    assert store.get_run("k1") == before  # nothing ran: still succeeded


# -- step metrics -----------------------------------------------------------------------


def test_step_attempt_metrics_match_what_prometheus_client_itself_records() -> None:
    # The engine records an attempt through bound value calls and a bisection;
    # every count, sum and bucket must equal Counter.inc + Histogram.observe.
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from zixir_actors.observability import DEFAULT_BUCKETS
    from zixir_actors.workflow._telemetry import _recorder

    def pair(registry: CollectorRegistry) -> tuple[Any, Any]:
        counter = Counter("attempts", "a", ["step"], registry=registry)
        histogram = Histogram("duration", "d", ["step"], buckets=DEFAULT_BUCKETS,
                              registry=registry)
        return counter.labels("s"), histogram.labels("s")

    fast_registry, public_registry = CollectorRegistry(), CollectorRegistry()
    record = _recorder(*pair(fast_registry))
    counter, histogram = pair(public_registry)
    values = [0.0, 1e-7, *DEFAULT_BUCKETS[:-1], *(b * 1.0001 for b in DEFAULT_BUCKETS[:-1]),
              1e6]
    for seconds in values:
        record(seconds)
        counter.inc()
        histogram.observe(seconds)

    def samples(registry: CollectorRegistry) -> list[tuple[str, str, float]]:
        return sorted((s.name, repr(sorted(s.labels.items())), s.value)
                      for m in registry.collect() for s in m.samples
                      if not s.name.endswith("_created"))

    assert samples(fast_registry) == samples(public_registry)
    assert any(name == "duration_count" and value == len(values)
               for name, _, value in samples(fast_registry))


def test_a_new_runs_plan_follows_steps_added_to_the_workflow() -> None:
    from zixir_actors.workflow._plan import compute_plan

    wf = Workflow("plan-shape", [Step("a", lambda: 1)])
    first = compute_plan(wf, "r1", {}, {})
    assert [(e.step, e.action, e.reason) for e in first.entries] == [("a", "run", "no checkpoint")]
    assert compute_plan(wf, "r2", {}, {}).entries == first.entries and first.checkpoints == {}
    wf.add(Step("b", lambda a: a, depends_on=["a"]))
    assert [e.step for e in compute_plan(wf, "r3", {}, {}).entries] == ["a", "b"]
