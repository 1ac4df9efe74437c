"""Code-first durable workflows: steps, replay, events, timers, progress, async, cancel.

Crash safety across processes (kill -9) is in test_durable_crash.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from _subprocess import project_env

import zixir_actors
from zixir_actors import durable, send
from zixir_actors.checkpoint import CheckpointClient, open_store
from zixir_actors.errors import (
    EventTimeoutError,
    RunEndedError,
    RunInterruptedError,
    RunNotFoundError,
    StepFailedError,
    ZixirTimeoutError,
)
from zixir_actors.observability import metrics, open_spans
from zixir_actors.testing import FakeClock, capture_spans, wait_for
from zixir_actors.workflow import DeadLetters, RetryPolicy, Step, Workflow

ROOT = Path(__file__).resolve().parent.parent
WAIT = 30.0
"""Generous: the machine is shared and busy."""


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CheckpointClient]:
    with open_store(tmp_path) as client:
        yield client


def wait_status(handle: Any, status: str) -> None:
    wait_for(lambda: handle.status() == status, timeout=WAIT,
             what=f"run {handle.run_id} {status}")


def stored_status(store: CheckpointClient, run_id: str) -> str | None:
    record = store.find_run(run_id)
    return None if record is None else record.status


def double(x: int) -> int:
    return x * 2


def add(a: int, b: int) -> int:
    return a + b


# -- steps and results ---------------------------------------------------------


def test_body_runs_steps_in_plain_python_and_returns_its_value(
        store: CheckpointClient) -> None:
    @durable("loop-sum")
    def body(ctx: Any, n: int) -> dict[str, int]:
        total = 0
        for i in range(n):
            total = ctx.step(add, total, ctx.step(double, i))
        return {"total": total}

    assert isinstance(body, Workflow)
    result = body.run({"n": 4}, store=store)
    assert result.status == "succeeded"
    assert result.output == {"total": 12}
    assert result.outputs == {"total": 12}
    assert [label for label in result.steps if label.startswith("double")] == \
        ["double#1", "double#2", "double#3", "double#4"]
    assert all(s.status == "succeeded" for s in result.steps.values())


def test_workflow_with_body_is_durable_spelled_out(store: CheckpointClient) -> None:
    def body(ctx: Any, word: str) -> str:
        return ctx.step(str.upper, word, name="shout")

    wf = Workflow("spelled-out", body=body)
    result = wf.run({"word": "hi"}, store=store)
    assert result.output == "HI"
    assert result.outputs == {"result": "HI"}
    assert list(result.steps) == ["shout#1"]


def test_a_step_with_a_ctx_parameter_gets_its_label_and_idempotency_key(
        store: CheckpointClient) -> None:
    seen: list[Any] = []

    def probe(x: int, ctx: Any) -> int:
        seen.append(ctx)
        return x

    @durable("step-ctx")
    def body(ctx: Any) -> int:
        return ctx.step(probe, 1, name="probe") + ctx.step(probe, 2, name="probe")

    result = body.run({}, run_id="r-ctx", store=store)
    assert result.output == 3
    assert [c.step for c in seen] == ["probe#1", "probe#2"]
    assert {c.run_id for c in seen} == {"r-ctx"}
    assert seen[0].idempotency_key != seen[1].idempotency_key


def test_retries_then_success_records_the_attempts(store: CheckpointClient,
                                                    clock: FakeClock) -> None:
    attempts = Counter[str]()

    def flaky() -> str:
        attempts["flaky"] += 1
        if attempts["flaky"] < 3:
            raise ConnectionError("try again")
        return "ok"

    @durable("retrying", clock=clock)
    def body(ctx: Any) -> str:
        return ctx.step(flaky, name="flaky",
                        retry=RetryPolicy(max_attempts=3, initial_delay=0.5))

    result = body.run({}, store=store)
    assert result.output == "ok"
    assert result.steps["flaky#1"].attempts == 3
    assert clock.sleeps  # backoff slept on the injected clock


def test_an_uncaught_exception_in_the_body_fails_the_run(store: CheckpointClient) -> None:
    @durable("body-raises")
    def body(ctx: Any) -> None:
        ctx.step(double, 1)
        raise KeyError("missing")

    result = body.run({}, store=store)
    assert result.status == "failed"
    assert result.error is not None and result.error.type == "KeyError"
    assert stored_status(store, result.run_id) == "failed"


# -- replay ----------------------------------------------------------------------


def test_resume_replays_recorded_calls_without_calling_them(store: CheckpointClient) -> None:
    calls = Counter[str]()
    broken = threading.Event()
    broken.set()

    def fetch(i: int) -> int:
        calls[f"fetch{i}"] += 1
        return i * 10

    def publish(total: int) -> int:
        calls["publish"] += 1
        if broken.is_set():
            raise RuntimeError("publisher down")
        return total

    @durable("replay")
    def body(ctx: Any) -> int:
        total = sum(ctx.step(fetch, i, name="fetch") for i in range(3))
        return ctx.step(publish, total, name="publish")

    first = body.run({}, run_id="r-replay", store=store)
    assert first.status == "failed"
    broken.clear()
    second = body.resume("r-replay", store=store)
    assert second.status == "succeeded" and second.output == 30
    assert calls == {"fetch0": 1, "fetch1": 1, "fetch2": 1, "publish": 2}
    assert [second.steps[f"fetch#{i}"].status for i in (1, 2, 3)] == ["cached"] * 3
    assert second.steps["publish#1"].status == "succeeded"


def test_resume_from_step_drops_records_from_that_call_on(store: CheckpointClient) -> None:
    calls = Counter[str]()

    def llm(turn: int) -> str:
        calls[f"llm{turn}"] += 1
        return f"answer{turn}"

    @durable("from-step")
    def body(ctx: Any) -> list[str]:
        return [ctx.step(llm, turn, name="llm") for turn in range(3)]

    assert body.run({}, run_id="r-from", store=store).output == ["answer0", "answer1",
                                                                  "answer2"]
    again = body.resume("r-from", from_step="llm#2", store=store)
    assert again.output == ["answer0", "answer1", "answer2"]
    assert calls == {"llm0": 1, "llm1": 2, "llm2": 2}
    assert again.steps["llm#1"].status == "cached"
    assert again.steps["llm#2"].status == "succeeded"


def test_changed_body_is_a_nondeterminism_error_shown_by_plan(store: CheckpointClient) -> None:
    calls = Counter[str]()
    fixed = threading.Event()

    def fetch() -> str:
        calls["fetch"] += 1
        return "page"

    def parse(page: str) -> int:
        calls["parse"] += 1
        return len(page)

    def summarize(page: str) -> str:
        calls["summarize"] += 1
        return page[:2]

    def publish(value: Any) -> str:
        calls["publish"] += 1
        if not fixed.is_set():
            raise RuntimeError("publisher down")
        return f"published {value}"

    @durable("evolving")
    def v1(ctx: Any) -> Any:
        page = ctx.step(fetch, name="fetch")
        return ctx.step(publish, ctx.step(parse, page, name="parse"), name="publish")

    assert v1.run({}, run_id="r-evolve", store=store).status == "failed"

    @durable("evolving")
    def v2(ctx: Any) -> Any:
        page = ctx.step(fetch, name="fetch")
        # parse#1 was recorded where summarize#1 is asked for now
        return ctx.step(publish, ctx.step(summarize, page, name="summarize"), name="publish")

    plan = v2.plan("r-evolve", store=store)
    assert plan["fetch#1"].action == "skip"
    flagged = [e for e in plan if e.reason.startswith("nondeterminism:")]
    assert len(flagged) == 1 and flagged[0].action == "rerun"
    assert "summarize" in flagged[0].reason and "parse" in flagged[0].reason
    fixed.set()
    replayed = v2.resume("r-evolve", store=store)
    assert replayed.status == "failed"
    assert replayed.error is not None and replayed.error.type == "NondeterminismError"
    assert "'parse'" in replayed.error.message and "'summarize'" in replayed.error.message
    assert calls == {"fetch": 1, "parse": 1, "publish": 1}  # nothing ran for v2

    # the records are intact: the original body resumes where it stopped
    result = v1.resume("r-evolve", store=store)
    assert result.status == "succeeded" and result.output == "published 4"
    assert calls == {"fetch": 1, "parse": 1, "publish": 2}


def test_harmless_changes_replay_recorded_values(store: CheckpointClient) -> None:
    calls = Counter[str]()
    lines: list[str] = []

    def lookup(key: str) -> str:
        calls["v1"] += 1
        return f"v1:{key}"

    @durable("harmless")
    def v1(ctx: Any) -> str:
        value = ctx.step(lookup, "k", name="lookup")
        lines.append(f"got {value}")
        ctx.wait_for("go")
        return value

    handle = v1.start({}, run_id="r-harmless", store=store)
    wait_status(handle, "parked")
    assert handle.cancel()
    assert handle.result(timeout=WAIT).status == "cancelled"

    def lookup_v2(key: str) -> str:  # a new implementation under the recorded name
        calls["v2"] += 1
        return f"v2:{key}"

    @durable("harmless")
    def v2(ctx: Any) -> str:
        value = ctx.step(lookup_v2, "k", name="lookup")
        lines.append(f"the value is {value} (reworded log line)")
        payload = ctx.wait_for("go")
        return f"{value}/{payload}"

    assert v2.plan("r-harmless", store=store)["lookup#1"].action == "skip"
    handle = v2.start({}, run_id="r-harmless", store=store)
    wait_status(handle, "parked")
    v2.send("r-harmless", "go", "now", store=store)
    result = handle.result(timeout=WAIT)
    assert result.status == "succeeded"
    assert result.output == "v1:k/now"
    assert calls == {"v1": 1}
    # the body itself runs again on every replay (a wake-up replays too): only ctx
    # calls are exactly-once
    assert lines[0] == "got v1:k"
    assert set(lines[1:]) == {"the value is v1:k (reworded log line)"}


def test_now_uuid_and_random_are_recorded_and_replayed(store: CheckpointClient,
                                                       clock: FakeClock) -> None:
    seen: list[tuple[float, uuid.UUID, float]] = []
    broken = threading.Event()
    broken.set()

    def check() -> None:
        if broken.is_set():
            raise RuntimeError("not yet")

    @durable("recorded-values", clock=clock)
    def body(ctx: Any) -> tuple[float, str, float]:
        values = (ctx.now(), ctx.uuid(), ctx.random())
        seen.append(values)
        ctx.step(check)
        return values[0], str(values[1]), values[2]

    first = body.run({}, run_id="r-values", store=store)
    assert first.status == "failed"
    clock.advance(500.0)
    broken.clear()
    second = body.resume("r-values", store=store)
    assert second.status == "succeeded"
    assert len(seen) == 2 and seen[0] == seen[1]  # the second body execution replayed
    now, made, rnd = seen[0]
    assert now == 1_700_000_000.0
    assert isinstance(made, uuid.UUID) and 0.0 <= rnd < 1.0
    other = body.run({}, run_id="r-values-2", store=store)
    assert other.status == "succeeded"
    assert other.output[0] == 1_700_000_500.0 and other.output[1] != str(made)


# -- failures and dead letters ---------------------------------------------------


def test_an_engine_failure_before_the_end_is_written_interrupts_the_run_and_resume_ends_it(
        store: CheckpointClient, monkeypatch: pytest.MonkeyPatch) -> None:
    @durable("broken-end")
    def body(ctx: Any) -> int:
        return int(ctx.step(double, 21))

    def broken(self: CheckpointClient) -> Any:
        raise RuntimeError("the engine broke")

    with monkeypatch.context() as patch:  # a step commits without a batch; the end needs one
        patch.setattr(CheckpointClient, "batch", broken)
        with pytest.raises(RunInterruptedError, match="the engine broke"):
            body.run({}, run_id="r-broken-end", store=store, timeout=WAIT)
    assert stored_status(store, "r-broken-end") == "interrupted"

    result = body.resume("r-broken-end", store=store, timeout=WAIT)
    assert result.status == "succeeded" and result.output == 42
    assert result.steps["double#1"].status == "cached"


def test_a_failure_reporting_a_recorded_end_leaves_the_result_as_stored(
        store: CheckpointClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from zixir_actors.workflow._telemetry import Telemetry

    def broken(self: Telemetry, status: str) -> None:
        raise RuntimeError("metrics backend is gone")

    @durable("broken-report")
    def body(ctx: Any) -> int:
        return int(ctx.step(double, 21))

    monkeypatch.setattr(Telemetry, "run_ended", broken)
    result = body.run({}, run_id="r-broken-report", store=store, timeout=WAIT)

    assert result.status == "succeeded" and result.output == 42
    assert stored_status(store, "r-broken-report") == "succeeded"
    assert not [s for s in open_spans() if s.attributes.get("run_id") == result.run_id]


class BrokenMapping(Mapping[str, int]):
    """A Mapping that pickles (its state is a plain attribute) but cannot be listed."""

    def __init__(self) -> None:
        self.size = 1

    def __getitem__(self, key: str) -> int:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("this mapping cannot be listed")

    def __len__(self) -> int:
        return self.size


def test_a_returned_mapping_that_cannot_be_listed_fails_the_run_instead_of_hanging(
        store: CheckpointClient) -> None:
    @durable("broken-outputs")
    def body(ctx: Any) -> BrokenMapping:
        ctx.step(double, 1)
        return BrokenMapping()

    result = body.run({}, run_id="r-broken-out", store=store, timeout=WAIT)

    assert result.status == "failed"
    assert result.error is not None and "cannot be listed" in str(result.error)
    assert stored_status(store, "r-broken-out") == "failed"


def test_step_failure_caught_in_the_body_is_replayed_and_an_uncaught_one_is_a_dead_letter(
        store: CheckpointClient) -> None:
    calls = Counter[str]()
    fixed = threading.Event()

    def primary(q: str) -> str:
        calls["primary"] += 1
        raise TimeoutError(f"primary model timed out on {q}")

    def fallback(q: str) -> str:
        calls["fallback"] += 1
        return f"fallback:{q}"

    def publish(text: str) -> str:
        calls["publish"] += 1
        if not fixed.is_set():
            raise ValueError("schema changed")
        return text.upper()

    caught: list[StepFailedError] = []

    @durable("fallbacks")
    def body(ctx: Any, q: str) -> str:
        try:
            text = ctx.step(primary, q, name="primary",
                            retry=RetryPolicy(max_attempts=2, initial_delay=0.0))
        except StepFailedError as exc:
            caught.append(exc)
            text = ctx.step(fallback, q, name="fallback")
        return ctx.step(publish, text, name="publish")

    result = body.run({"q": "why"}, run_id="r-dlq", store=store)
    assert result.status == "failed"
    assert caught[0].step == "primary#1" and caught[0].error.type == "TimeoutError"
    assert caught[0].attempts == 2
    assert result.steps["primary#1"].status == "failed"
    assert result.steps["fallback#1"].status == "succeeded"
    [letter] = DeadLetters(store).list(run_id="r-dlq")
    assert letter.step == "publish#1" and letter.error_type == "ValueError"
    assert result.steps["publish#1"].dead_letter == letter.id

    fixed.set()
    again = DeadLetters(store).retry(letter.id)
    assert again.status == "succeeded" and again.output == "FALLBACK:WHY"
    assert calls == {"primary": 2, "fallback": 1, "publish": 2}
    assert len(caught) == 2 and caught[1].step == "primary#1"
    assert DeadLetters(store).list(run_id="r-dlq") == []


def test_a_step_timeout_is_a_step_failed_error_the_body_can_catch(
        store: CheckpointClient) -> None:
    release = threading.Event()

    def hang() -> str:
        release.wait(WAIT)
        return "late"

    @durable("step-timeout")
    def body(ctx: Any) -> str:
        try:
            return ctx.step(hang, name="hang", timeout=0.05)
        except StepFailedError as exc:
            return f"{exc.step}: {exc.error.type}"

    try:
        result = body.run({}, store=store)
    finally:
        release.set()
    assert result.output == "hang#1: StepTimeoutError"
    assert result.steps["hang#1"].status == "timed_out"


def test_a_step_whose_value_cannot_be_stored_fails_as_a_step(store: CheckpointClient) -> None:
    def generator() -> Any:
        return (i for i in range(3))  # neither pickle nor dill can store it

    @durable("unstorable")
    def body(ctx: Any) -> str:
        try:
            ctx.step(generator, name="generator")
        except StepFailedError as exc:
            return exc.error.type
        return "stored"

    assert body.run({}, store=store).output == "UnserializableError"


def hog() -> int:
    return len(bytearray(512 * 1024 * 1024))


def triple(n: int) -> int:
    return n * 3


def test_steps_run_in_a_sandbox_with_limits(store: CheckpointClient) -> None:
    from zixir_actors import Limits

    @durable("sandboxed-agent")
    def body(ctx: Any) -> Any:
        value = ctx.step(triple, 2, limits=Limits(timeout=30))
        try:
            ctx.step(hog, limits=Limits(memory="128MB", timeout=30))
        except StepFailedError as exc:
            return value, exc.step, exc.error.type, "memory" in exc.error.message
        return value, "no limit hit"

    assert body.run({}, store=store).output == (6, "hog#1", "SandboxError", True)


def test_a_run_timeout_ends_a_parked_run(store: CheckpointClient) -> None:
    @durable("parked-timeout")
    def body(ctx: Any) -> Any:
        return ctx.wait_for("never")

    result = body.run({}, store=store, timeout=0.3)
    assert result.status == "timed_out"
    assert stored_status(store, result.run_id) == "timed_out"


# -- fan-out -----------------------------------------------------------------------


def test_map_returns_results_in_order_with_bounded_concurrency(store: CheckpointClient) -> None:
    lock = threading.Lock()
    in_flight = 0
    peak = 0
    full = threading.Event()
    second_done = threading.Event()

    def work(x: int) -> int:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
            if in_flight == 3:
                full.set()
        try:
            full.wait(WAIT)  # the first calls hold until three are in flight
            if x == 0:
                second_done.wait(WAIT)  # item 0 finishes after item 1
            return x * x
        finally:
            if x == 1:
                second_done.set()
            with lock:
                in_flight -= 1

    @durable("mapped")
    def body(ctx: Any, items: list[int]) -> list[int]:
        return ctx.map(work, items, concurrency=3, name="work")

    items = list(range(10))
    result = body.run({"items": items}, store=store)
    assert result.status == "succeeded"
    assert result.output == [x * x for x in items]
    assert peak == 3
    assert full.is_set()
    assert sum(1 for label in result.steps if label.startswith("work#")) == 10


def test_labels_survive_the_gap_a_cancelled_map_leaves(store: CheckpointClient) -> None:
    calls = Counter[int]()
    release = threading.Event()

    def work(x: int) -> int:
        calls[x] += 1
        if x == 1 and calls[x] == 1:
            release.wait(WAIT)  # the middle item is in flight when the run is cancelled
        return x * 10

    @durable("gappy")
    def body(ctx: Any) -> list[int]:
        return ctx.map(work, [0, 1, 2], concurrency=3, name="work")

    handle = body.start({}, run_id="r-gap", store=store)
    wait_for(lambda: len(store.calls("r-gap")) == 2, timeout=WAIT)  # items 0 and 2 recorded
    try:
        assert handle.cancel()
        assert handle.result(timeout=WAIT).status == "cancelled"
    finally:
        release.set()
    # the record of item 2 is work#3, whatever is missing before it
    result = body.resume("r-gap", from_step="work#3", store=store)
    assert result.output == [0, 10, 20]
    assert calls == {0: 1, 1: 2, 2: 2}
    assert result.steps["work#1"].status == "cached"


def test_spawn_returns_futures_the_body_collects(store: CheckpointClient) -> None:
    @durable("spawned")
    def body(ctx: Any, n: int) -> list[int]:
        futures = [ctx.spawn(double, i) for i in range(n)]
        return [f.result(timeout=WAIT) for f in futures]

    assert body.run({"n": 5}, store=store).output == [0, 2, 4, 6, 8]


# -- events --------------------------------------------------------------------------


def test_events_sent_before_and_after_the_wait(store: CheckpointClient) -> None:
    reached = threading.Event()
    release = threading.Event()

    def slow() -> str:
        reached.set()
        release.wait(WAIT)
        return "slow done"

    @durable("mailbox")
    def body(ctx: Any) -> list[Any]:
        ctx.step(slow)
        early = ctx.wait_for("early")
        late = ctx.wait_for("late")
        return [early, late]

    handle = body.start({}, run_id="r-mail", store=store)
    assert reached.wait(WAIT)
    body.send("r-mail", "early", {"n": 1}, store=store)  # before the body waits
    release.set()
    wait_status(handle, "parked")
    record = store.get_run("r-mail")
    assert record.waiting is not None
    assert record.waiting["kind"] == "event" and record.waiting["event"] == "late"
    send("r-mail", "late", [2], store=store)  # the top-level send, after the wait began
    result = handle.result(timeout=WAIT)
    assert result.output == [{"n": 1}, [2]]


def test_duplicate_events_are_each_consumed_once_in_order(store: CheckpointClient) -> None:
    @durable("fifo")
    def body(ctx: Any) -> dict[str, list[Any]]:
        ctx.wait_for("start")
        a = [ctx.wait_for("a") for _ in range(3)]
        b = [ctx.wait_for("b") for _ in range(2)]
        return {"a": a, "b": b}

    def waits_for(event: str) -> bool:
        record = store.get_run("r-fifo")
        return record.status == "parked" and record.waiting["event"] == event

    handle = body.start({}, run_id="r-fifo", store=store)
    wait_for(lambda: waits_for("start"), timeout=WAIT)
    for event, payload in (("a", "a1"), ("b", "b1"), ("a", "a1")):  # a1 twice: a duplicate
        body.send("r-fifo", event, payload, store=store)
    body.send("r-fifo", "start", store=store)
    wait_for(lambda: waits_for("a"), timeout=WAIT)  # consumed a1, a1; a third "a" is due
    body.send("r-fifo", "a", "a2", store=store)
    wait_for(lambda: waits_for("b"), timeout=WAIT)  # consumed b1; a second "b" is due
    body.send("r-fifo", "b", "b2", store=store)
    result = handle.result(timeout=WAIT)
    assert result.output == {"a": ["a1", "a1", "a2"], "b": ["b1", "b2"]}
    assert store.events("r-fifo") == []  # each event consumed once, none left over


def test_events_from_concurrent_senders_each_arrive_once_in_order_per_sender(
        store: CheckpointClient) -> None:
    per_sender = 40

    @durable("ticker")
    def body(ctx: Any) -> list[Any]:
        return [ctx.wait_for("tick") for _ in range(2 * per_sender)]

    handle = body.start({}, run_id="r-ticks", store=store)

    def sender(tag: int) -> None:
        for i in range(per_sender):  # while the run parks, wakes and replays
            body.send("r-ticks", "tick", (tag, i), store=store)

    senders = [threading.Thread(target=sender, args=(tag,)) for tag in range(2)]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join(WAIT)
    received = handle.result(timeout=WAIT).output
    assert sorted(received) == [(tag, i) for tag in range(2) for i in range(per_sender)]
    for tag in range(2):
        assert [p for p in received if p[0] == tag] == [(tag, i) for i in range(per_sender)]


def test_wait_timeout_raises_event_timeout_error_in_the_body(store: CheckpointClient,
                                                             clock: FakeClock) -> None:
    @durable("approval-timeout", clock=clock)
    def body(ctx: Any) -> str:
        try:
            return ctx.wait_for("approval", timeout=3600)
        except EventTimeoutError as exc:
            return f"timed out waiting for {exc.event}"

    handle = body.start({}, run_id="r-timeout", store=store)
    wait_status(handle, "parked")
    waiting = store.get_run("r-timeout").waiting
    assert waiting["kind"] == "event" and waiting["until"] == clock.time() + 3600
    clock.advance(3600)
    result = handle.result(timeout=WAIT)
    assert result.status == "succeeded"
    assert result.output == "timed out waiting for approval"


def test_a_wait_deadline_survives_a_runtime_restart(tmp_path: Path, clock: FakeClock) -> None:
    @durable("deadline", clock=clock)
    def body(ctx: Any) -> str:
        try:
            return ctx.wait_for("approval", timeout=3600)
        except EventTimeoutError:
            return "expired"

    with zixir_actors.start(data_dir=tmp_path):
        assert body.start({}, run_id="r-deadline").wait(timeout=WAIT) == "parked"
        clock.advance(1000)
    with zixir_actors.start(data_dir=tmp_path) as runtime:  # resumes the parked run
        [handle] = runtime.resumed
        assert handle.wait(timeout=WAIT) == "parked"
        clock.advance(2599)
        assert not handle.done()
        clock.advance(1)  # the deadline set before the restart
        assert handle.result(timeout=WAIT).output == "expired"


def test_sending_to_an_unknown_or_ended_run_is_a_typed_error(store: CheckpointClient) -> None:
    @durable("ended")
    def body(ctx: Any) -> int:
        return ctx.step(double, 2)

    body.run({}, run_id="r-ended", store=store)
    with pytest.raises(RunEndedError) as ended:
        body.send("r-ended", "approval", True, store=store)
    assert ended.value.run_id == "r-ended" and ended.value.status == "succeeded"
    with pytest.raises(RunEndedError):
        send("r-ended", "approval", store=store)
    with pytest.raises(RunNotFoundError):
        body.send("no-such-run", "approval", store=store)
    with pytest.raises(RunNotFoundError):
        send("no-such-run", "approval", store=store)


def test_metrics_count_parked_runs_and_events(store: CheckpointClient) -> None:
    def sample(name: str, labels: dict[str, str] | None = None) -> float:
        return metrics.sample(name, labels) or 0.0

    @durable("metered")
    def body(ctx: Any) -> Any:
        return ctx.wait_for("go")

    sent = {"workflow": "metered", "outcome": "sent"}
    consumed = {"workflow": "metered", "outcome": "consumed"}
    runs = {"workflow": "metered", "status": "succeeded"}
    before = (sample("zixir_workflow_parked_runs"), sample("zixir_workflow_events_total", sent),
              sample("zixir_workflow_events_total", consumed),
              sample("zixir_workflow_runs_total", runs))
    handle = body.start({}, store=store)
    wait_status(handle, "parked")
    # the gauge follows the stored status a moment later
    wait_for(lambda: sample("zixir_workflow_parked_runs") == before[0] + 1, timeout=WAIT)
    body.send(handle.run_id, "go", 1, store=store)
    assert handle.result(timeout=WAIT).output == 1
    assert sample("zixir_workflow_parked_runs") == before[0]
    assert sample("zixir_workflow_events_total", sent) == before[1] + 1
    assert sample("zixir_workflow_events_total", consumed) == before[2] + 1
    assert sample("zixir_workflow_runs_total", runs) == before[3] + 1


# -- timers ----------------------------------------------------------------------------


def test_sleep_is_a_durable_timer_on_the_workflows_clock(store: CheckpointClient,
                                                         clock: FakeClock) -> None:
    @durable("napper", clock=clock)
    def body(ctx: Any) -> float:
        ctx.sleep(60)
        return ctx.now()

    start = clock.time()
    handle = body.start({}, run_id="r-nap", store=store)
    wait_status(handle, "parked")
    assert store.get_run("r-nap").waiting == {"kind": "timer", "until": start + 60}
    clock.advance(59)
    assert not handle.done()
    clock.advance(1)
    result = handle.result(timeout=WAIT)
    assert result.output == start + 60


def test_an_async_body_sleeps_on_a_durable_timer(store: CheckpointClient,
                                                 clock: FakeClock) -> None:
    @durable("async-napper", clock=clock)
    async def body(ctx: Any) -> float:
        await ctx.sleep(100)
        return ctx.now()

    handle = body.start({}, store=store)
    assert handle.wait(timeout=WAIT) == "parked"
    clock.advance(100)
    assert handle.result(timeout=WAIT).output == 1_700_000_100.0


def test_an_event_sent_during_a_sleep_waits_in_the_mailbox(store: CheckpointClient,
                                                           clock: FakeClock) -> None:
    @durable("nap-then-wait", clock=clock)
    def body(ctx: Any) -> Any:
        ctx.sleep(100)
        return ctx.wait_for("x")

    handle = body.start({}, store=store)
    assert handle.wait(timeout=WAIT) == "parked"
    body.send(handle.run_id, "x", "early", store=store)  # the run is parked on its timer
    assert store.get_run(handle.run_id).waiting["kind"] == "timer"
    clock.advance(100)
    assert handle.result(timeout=WAIT).output == "early"


def test_sleep_on_the_real_clock_wakes_by_itself(store: CheckpointClient) -> None:
    @durable("short-nap")
    def body(ctx: Any) -> str:
        ctx.sleep(0.05)
        return "awake"

    assert body.run({}, store=store, timeout=WAIT).output == "awake"


# -- cancel --------------------------------------------------------------------------


def test_cancel_while_parked_ends_the_run(store: CheckpointClient) -> None:
    after_wait = threading.Event()

    @durable("cancel-parked")
    def body(ctx: Any) -> None:
        ctx.wait_for("never")
        after_wait.set()

    handle = body.start({}, run_id="r-cancel", store=store)
    wait_status(handle, "parked")
    assert handle.cancel() is True
    result = handle.result(timeout=WAIT)
    assert result.status == "cancelled"
    assert stored_status(store, "r-cancel") == "cancelled"
    assert not after_wait.is_set()
    with pytest.raises(RunEndedError):
        body.send("r-cancel", "never", store=store)
    assert handle.cancel() is False


def test_cancel_during_a_step_does_not_commit_its_late_result(store: CheckpointClient) -> None:
    calls = Counter[str]()
    entered = threading.Event()
    release = threading.Event()

    def slow() -> str:
        calls["slow"] += 1
        if calls["slow"] == 1:
            entered.set()
            release.wait(WAIT)
        return f"result {calls['slow']}"

    @durable("cancel-step")
    def body(ctx: Any) -> str:
        return ctx.step(slow)

    handle = body.start({}, run_id="r-late", store=store)
    assert entered.wait(WAIT)
    assert handle.cancel()
    assert handle.result(timeout=WAIT).status == "cancelled"
    release.set()
    resumed = body.resume("r-late", store=store)
    assert resumed.output == "result 2"
    assert calls["slow"] == 2


def test_cancel_during_an_async_step_does_not_commit_its_late_result(
        store: CheckpointClient) -> None:
    calls: list[int] = []
    entered, returned = threading.Event(), threading.Event()

    async def slow() -> str:
        calls.append(1)
        number = len(calls)
        entered.set()
        try:
            await asyncio.sleep(0.2 if number == 1 else 0)
            return f"result {number}"
        finally:
            if number == 1:
                returned.set()

    @durable("async-cancel")
    async def body(ctx: Any) -> str:
        return str(await ctx.step(slow, name="slow"))

    handle = body.start({}, run_id="r-async-late", store=store)
    assert entered.wait(WAIT)
    assert handle.cancel()
    assert handle.result(timeout=WAIT).status == "cancelled"
    assert returned.wait(WAIT)  # the cancelled attempt returned "result 1" late
    resumed = body.resume("r-async-late", store=store)
    assert resumed.output == "result 2" and len(calls) == 2


# -- child runs and DAG interplay ---------------------------------------------------------


def test_child_workflow_run_from_a_body_and_from_a_dag_step(store: CheckpointClient) -> None:
    @durable("child-research")
    def research(ctx: Any, topic: str) -> dict[str, str]:
        return {"notes": ctx.step(str.upper, topic, name="read")}

    @durable("parent-agent")
    def parent(ctx: Any, topics: list[str]) -> list[str]:
        return [ctx.run(research, {"topic": t})["notes"] for t in topics]

    result = parent.run({"topics": ["ab", "cd"]}, run_id="r-parent", store=store)
    assert result.output == ["AB", "CD"]
    children = {r.run_id for r in store.list_runs(workflow="child-research")}
    assert len(children) == 2 and "r-parent" not in children
    again = parent.resume("r-parent", store=store)  # replays: no new child runs
    assert again.output == ["AB", "CD"]
    assert {r.run_id for r in store.list_runs(workflow="child-research")} == children

    dag = Workflow("dag-with-agent", store=store)

    @dag.step()
    def topic() -> str:
        return "ef"

    @dag.step(depends_on=["topic"])
    def notes(topic: str, ctx: Any) -> str:
        return ctx.run(research, {"topic": topic})["notes"]

    dag_result = dag.run({}, store=store)
    assert dag_result.status == "succeeded"
    assert dag_result.outputs["notes"] == "EF"


def test_a_parent_parks_on_its_child_and_a_failed_child_is_a_step_failure(
        store: CheckpointClient) -> None:
    @durable("waiting-kid")
    def kid(ctx: Any, n: int) -> dict[str, int]:
        return {"v": n + ctx.wait_for("go")}

    @durable("broken-kid")
    def broken_kid(ctx: Any) -> None:
        raise ValueError("kid broke")

    @durable("patient-parent")
    def parent(ctx: Any) -> Any:
        out = ctx.run(kid, {"n": 1})
        try:
            ctx.run(broken_kid, {})
        except StepFailedError as exc:
            return out, exc.step, exc.error.type
        return out, "no failure"

    handle = parent.start({}, run_id="r-patient", store=store)
    assert handle.wait(timeout=WAIT) == "parked"
    waiting = store.get_run("r-patient").waiting
    assert waiting["kind"] == "child"
    assert store.get_run(waiting["run_id"]).workflow == "waiting-kid"
    kid.send(waiting["run_id"], "go", 10, store=store)
    assert handle.result(timeout=WAIT).output == ({"v": 11}, "broken-kid#1", "ValueError")


def test_dag_workflows_keep_working_beside_code_first_ones(store: CheckpointClient) -> None:
    wf = Workflow("still-a-dag", [Step("a", lambda: 1), Step("b", lambda a: a + 1, ("a",))])
    assert wf.run({}, store=store).outputs == {"a": 1, "b": 2}


# -- progress ------------------------------------------------------------------------------


def test_progress_past_then_live_items_with_a_cursor(store: CheckpointClient) -> None:
    def llm(prompt: str, ctx: Any) -> str:
        tokens = prompt.split()
        for token in tokens:
            ctx.emit(token)
        return " ".join(tokens)

    @durable("streamer")
    def body(ctx: Any) -> str:
        ctx.emit("thinking")
        ctx.wait_for("go")
        return ctx.step(llm, "hello brave new world", name="llm")

    handle = body.start({}, run_id="r-progress", store=store)
    wait_status(handle, "parked")
    collected: list[Any] = []
    reader_done = threading.Event()

    def read() -> None:
        collected.extend(handle.progress(timeout=WAIT))
        reader_done.set()

    reader = threading.Thread(target=read)
    reader.start()
    wait_for(lambda: any(i.kind == "parked" for i in collected), timeout=WAIT)
    body.send("r-progress", "go", store=store)
    assert reader_done.wait(WAIT)
    reader.join(WAIT)
    result = handle.result(timeout=WAIT)
    kinds = [i.kind for i in collected]
    assert kinds[0] == "emit" and kinds[-1] == "ended"
    assert collected[-1].value == "succeeded"
    assert [i.value for i in collected if i.kind == "emit"] == \
        ["thinking", "hello", "brave", "new", "world"]
    tokens = [i for i in collected if i.kind == "emit" and i.step is not None]
    assert {i.step for i in tokens} == {"llm#1"}
    assert next(i for i in collected if i.kind == "emit").step is None
    started = kinds.index("step_started")
    assert kinds.index("step_finished") > started
    seqs = [i.seq for i in collected]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    # step starts and ends are live-only; emits, parks and the end are stored
    stored = [i for i in collected if i.kind not in ("step_started", "step_finished")]
    assert list(result.progress(store=store)) == stored
    cursor = stored[2].seq
    assert list(handle.progress(after=cursor)) == stored[3:]


def test_progress_async_for(store: CheckpointClient) -> None:
    def speak(ctx: Any) -> str:
        for token in ("a", "b", "c"):
            ctx.emit(token)
        return "abc"

    @durable("async-progress")
    def body(ctx: Any) -> str:
        ctx.wait_for("go")
        return ctx.step(speak)

    handle = body.start({}, store=store)
    wait_status(handle, "parked")

    async def consume() -> list[Any]:
        body.send(handle.run_id, "go", store=store)
        return [item async for item in handle.progress(timeout=WAIT)]

    items = asyncio.run(consume())
    assert [i.value for i in items if i.kind == "emit"] == ["a", "b", "c"]
    assert items[-1].kind == "ended"


def test_progress_of_a_run_that_does_not_end_times_out(store: CheckpointClient) -> None:
    @durable("progress-timeout")
    def body(ctx: Any) -> Any:
        ctx.emit("waiting")
        return ctx.wait_for("never")

    handle = body.start({}, store=store)
    assert handle.wait(timeout=WAIT) == "parked"
    seen: list[str] = []
    with pytest.raises(ZixirTimeoutError):
        for item in handle.progress(timeout=0.2):
            seen.append(item.kind)
    assert seen == ["emit", "parked"]  # the past items came before the timeout
    assert handle.cancel()
    assert handle.result(timeout=WAIT).status == "cancelled"


def test_ten_thousand_emits_from_one_step(store: CheckpointClient) -> None:
    def chatty(ctx: Any) -> int:
        for i in range(10_000):
            ctx.emit(i)
        return 10_000

    @durable("chatty")
    def body(ctx: Any) -> int:
        return ctx.step(chatty)

    result = body.run({}, store=store)
    emitted = [i.value for i in result.progress(store=store) if i.kind == "emit"]
    assert emitted == list(range(10_000))


# -- observability ------------------------------------------------------------------------------


def test_one_span_per_step_call_children_of_the_run_span(store: CheckpointClient) -> None:
    @durable("traced-agent")
    def body(ctx: Any) -> int:
        total = 0
        for i in range(3):
            total += ctx.step(double, i)
        return total

    with capture_spans() as spans:
        result = body.run({}, store=store)
    assert result.output == 6
    [run_span] = spans.named("workflow.run")
    step_spans = spans.named("workflow.step")
    assert sorted(s.attributes["step"] for s in step_spans) == ["double#1", "double#2",
                                                               "double#3"]
    assert all(s.parent_id == run_span.span_id for s in step_spans)
    assert {s.trace_id for s in step_spans} == {run_span.trace_id}

    with capture_spans() as spans:
        body.resume(result.run_id, from_step="double#3", store=store)
    # replayed calls open no step span; only the one call that ran again does
    assert [s.attributes["step"] for s in spans.named("workflow.step")] == ["double#3"]


# -- async ---------------------------------------------------------------------------------------


class FakeAsyncLLM:
    """An async client bound to the loop it is first used on, like httpx.AsyncClient."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.lock: asyncio.Lock | None = None
        self.threads: set[str] = set()
        self.calls = 0

    async def complete(self, prompt: str) -> str:
        loop = asyncio.get_running_loop()
        if self.loop is None:
            self.loop, self.lock = loop, asyncio.Lock()
        elif loop is not self.loop:
            raise RuntimeError("client used from another event loop")
        assert self.lock is not None
        async with self.lock:
            self.calls += 1
            self.threads.add(threading.current_thread().name)
            await asyncio.sleep(0)
            return prompt.upper()


def test_async_body_shares_one_async_client_and_is_awaited_from_a_running_loop(
        store: CheckpointClient) -> None:
    client = FakeAsyncLLM()

    async def ask(prompt: str) -> str:
        return await client.complete(prompt)

    @durable("async-agent")
    async def body(ctx: Any, question: str) -> dict[str, Any]:
        first = await ctx.step(ask, question)
        fanned = await ctx.map(ask, ["x", "y", "z"], concurrency=2)
        approval = await ctx.wait_for("approval")
        return {"first": first, "fanned": fanned, "approval": approval}

    async def web_handler() -> Any:
        # the caller's loop stays free: it can wait for the park and send the
        # approval while run_async is pending
        run = asyncio.ensure_future(body.run_async({"question": "why"}, run_id="r-async",
                                                   store=store))
        await asyncio.to_thread(wait_for, lambda: stored_status(store, "r-async") == "parked",
                                timeout=WAIT)
        body.send("r-async", "approval", "yes", store=store)
        return await asyncio.wait_for(run, WAIT)

    result = asyncio.run(web_handler())
    assert result.status == "succeeded"
    assert result.output == {"first": "WHY", "fanned": ["X", "Y", "Z"], "approval": "yes"}
    assert client.calls == 4
    assert client.threads == {"zixir-loop"}


def test_awaiting_a_handle_inside_a_running_loop(store: CheckpointClient) -> None:
    @durable("awaited")
    def body(ctx: Any, n: int) -> int:
        return ctx.step(double, n)

    async def main() -> Any:
        handle = body.start({"n": 21}, store=store)
        return await handle

    assert asyncio.run(main()).output == 42


# -- many parked runs -----------------------------------------------------------------------------


@pytest.mark.slow
def test_ten_thousand_parked_runs_hold_no_threads(tmp_path: Path) -> None:
    n = 10_000

    @durable("parked-many")
    def body(ctx: Any, i: int) -> int:
        return ctx.wait_for("go") + i

    threads_before = threading.active_count()
    peak = threads_before
    with open_store(tmp_path, durable=False) as store:
        handles = []
        for i in range(n):
            handles.append(body.start({"i": i}, run_id=f"p{i}", store=store))
            if i % 250 == 0:
                peak = max(peak, threading.active_count())
        assert {h.wait(timeout=600) for h in handles} == {"parked"}
        parked_threads = threading.active_count()
        assert parked_threads <= threads_before + 16, (threads_before, parked_threads)
        # starting runs briefly holds threads until they park: far fewer than the runs
        assert peak <= threads_before + 1_000, (threads_before, peak)
        for i in range(n):
            body.send(f"p{i}", "go", 1, store=store)
        results = [h.result(timeout=600) for h in handles]
    assert [r.output for r in results] == [i + 1 for i in range(n)]


# -- command line ----------------------------------------------------------------------------------


def test_zixir_runs_send_on_the_command_line_wakes_a_parked_run(tmp_path: Path) -> None:
    @durable("cli-approval")
    def body(ctx: Any) -> Any:
        return ctx.wait_for("approval")

    data_dir = tmp_path / "data"
    with zixir_actors.start(data_dir=data_dir):
        handle = body.start({}, run_id="r-cli")
        wait_status(handle, "parked")
        env = project_env()
        env.pop("ZIXIR_DATA_DIR", None)
        sent = subprocess.run(
            [sys.executable, "-m", "zixir_actors", "--data-dir", str(data_dir), "runs", "send",
             "r-cli", "approval", "--data", json.dumps({"approved": True})],
            capture_output=True, text=True, timeout=120, env=env, check=False)
        assert sent.returncode == 0, sent.stderr
        result = handle.result(timeout=WAIT)
    assert result.output == {"approved": True}
    missing = zixir(data_dir, "runs", "send", "no-such-run", "approval")
    assert missing.returncode == 2
    assert "no-such-run" in missing.stderr


def zixir(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = project_env()
    env.pop("ZIXIR_DATA_DIR", None)
    return subprocess.run([sys.executable, "-m", "zixir_actors", "--data-dir", str(data_dir),
                           *args], capture_output=True, text=True, timeout=120, env=env,
                          check=False)


def test_agent_example_parks_under_zixir_run_and_an_approval_from_the_cli_finishes_it(
        tmp_path: Path) -> None:
    started = zixir(tmp_path, "run", str(ROOT / "examples" / "agent.py") + ":agent",
                    "--run-id", "agent-1", "--json")
    assert started.returncode == 0, started.stderr
    parked = json.loads(started.stdout)
    assert parked["status"] == "parked"
    assert parked["waiting"]["kind"] == "event" and parked["waiting"]["event"] == "approval"
    listed = zixir(tmp_path, "runs", "list", "--json")
    assert [(r["run_id"], r["status"]) for r in json.loads(listed.stdout)] == \
        [("agent-1", "parked")]
    approved = zixir(tmp_path, "runs", "send", "agent-1", "approval", "--data",
                     json.dumps({"approved": True}), "--json")
    assert approved.returncode == 0, approved.stderr
    summary = json.loads(approved.stdout[approved.stdout.index("{"):])
    assert summary["status"] == "succeeded"
    assert summary["outputs"]["approved"] is True
    assert "rest_for_one" in summary["outputs"]["answer"]
    again = zixir(tmp_path, "runs", "send", "agent-1", "approval")
    assert again.returncode == 2 and "agent-1" in again.stderr  # the run has ended
    watched = zixir(tmp_path, "runs", "watch", "agent-1")  # an ended run: its stored items
    assert watched.returncode == 0, watched.stderr
    assert "earlier siblings keep running" in watched.stdout
    assert watched.stdout.rstrip().endswith("succeeded")


def test_runs_list_and_show_say_what_a_parked_run_waits_for_and_until_when(
        tmp_path: Path) -> None:
    started = zixir(tmp_path, "run", str(ROOT / "examples" / "agent.py") + ":agent",
                    "--run-id", "agent-2", "--json")
    assert started.returncode == 0, started.stderr
    until = json.loads(started.stdout)["waiting"]["until"]
    shown = zixir(tmp_path, "runs", "show", "agent-2", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["waiting"] == {"kind": "event", "event": "approval",
                                                   "until": until}
    text = zixir(tmp_path, "runs", "show", "agent-2")
    assert "approval" in text.stdout
    listed = zixir(tmp_path, "runs", "list")
    assert "approval" in listed.stdout


def test_the_readme_web_handler_serves_an_agent_with_run_async(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx2")  # what starlette's TestClient uses (httpx is deprecated there)
    import re
    import runpy

    from fastapi.testclient import TestClient

    readme = (ROOT / "README.md").read_text()
    [block] = [b for b in re.findall(r"```py\n(.*?)```", readme, re.DOTALL) if "FastAPI(" in b]
    script = tmp_path / "web.py"
    script.write_text(block)
    monkeypatch.setenv("ZIXIR_DATA_DIR", str(tmp_path / "data"))
    app = runpy.run_path(str(script))["app"]
    with TestClient(app) as client:
        answered = client.post("/ask", params={"question": "why"})
        assert answered.status_code == 200
        assert answered.json()["answer"] == "answer to why from 3 facts"
        run_id = answered.json()["run_id"]
        assert client.post(f"/runs/{run_id}/events/approval", json={}).status_code == 409
        assert client.post("/runs/nope/events/approval", json={}).status_code == 404


def test_a_full_disk_ends_a_code_first_run_with_the_store_error(tmp_path: Path) -> None:
    import os
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _smallfs import fill, small_filesystem

    from zixir_actors.errors import StoreFullError

    def blob(i: int) -> bytes:
        return os.urandom(300_000)

    @durable("fills-the-disk")
    def body(ctx: Any, n: int) -> int:
        return sum(len(ctx.step(blob, i)) for i in range(n))

    with small_filesystem(tmp_path, "8m") as mount_point, \
            zixir_actors.start(data_dir=mount_point / "d", sandbox_workers=0):
        assert body.run({"n": 1}, timeout=WAIT).status == "succeeded"
        filler = fill(mount_point, leave=500_000)
        with pytest.raises(StoreFullError):
            body.run({"n": 20}, run_id="r-full", timeout=WAIT)
        filler.unlink()  # space again: the same runtime works on
        assert body.run({"n": 2}, timeout=WAIT).status == "succeeded"
        result = body.resume("r-full", timeout=WAIT)
        assert result.status == "succeeded" and result.output == 20 * 300_000


def test_a_bare_except_around_a_wait_cannot_run_the_rest_of_the_body(
        store: CheckpointClient) -> None:
    ran: list[str] = []

    def after(tag: str) -> str:
        ran.append(tag)
        return tag

    @durable("bare-except")
    def body(ctx: Any) -> Any:
        try:
            got = ctx.wait_for("go")
        except:  # noqa: E722 - the mistake under test
            got = None
        ctx.step(after, "after the wait")
        return got

    handle = body.start({}, run_id="r-bare", store=store)
    wait_status(handle, "parked")
    assert ran == []  # the swallowed park still parks: nothing after it ran live
    body.send("r-bare", "go", 5, store=store)
    assert handle.result(timeout=WAIT).output == 5
    assert ran == ["after the wait"]


def test_cancelling_a_parent_cancels_the_child_it_waits_for(store: CheckpointClient) -> None:
    @durable("waiting-child")
    def child(ctx: Any) -> Any:
        return ctx.wait_for("never")

    @durable("cancelled-parent")
    def parent(ctx: Any) -> Any:
        return ctx.run(child)

    handle = parent.start({}, run_id="r-parent-cancel", store=store)
    child_id = "r-parent-cancel/waiting-child#1"
    wait_for(lambda: stored_status(store, child_id) == "parked", timeout=WAIT,
             what="the child parks")
    assert handle.cancel()
    assert handle.result(timeout=WAIT).status == "cancelled"
    wait_for(lambda: stored_status(store, child_id) == "cancelled", timeout=WAIT,
             what="the child is cancelled with its parent")


def test_emit_from_a_sandboxed_step_is_a_clear_error(store: CheckpointClient) -> None:
    from zixir_actors.sandbox import Limits

    def chatty(ctx: Any) -> int:
        ctx.emit("token")
        return 1

    @durable("emit-in-sandbox")
    def body(ctx: Any) -> int:
        return ctx.step(chatty, limits=Limits(timeout=30))

    result = body.run({}, store=store, timeout=WAIT)
    assert result.status == "failed" and result.error is not None
    assert "not available in a step that runs in a sandbox" in result.error.message


def test_plan_says_when_a_recorded_steps_code_changed(store: CheckpointClient) -> None:
    def v1(x: int) -> int:
        return x + 1

    def v2(x: int) -> int:
        return x + 2

    impl = {"fn": v1}

    @durable("versioned")
    def body(ctx: Any) -> int:
        return ctx.step(impl["fn"], 1, name="compute")

    body.run({}, run_id="r-versioned", store=store)
    assert "code changed" not in body.plan("r-versioned", store=store)["compute#1"].reason
    impl["fn"] = v2
    entry = body.plan("r-versioned", store=store)["compute#1"]
    assert entry.action == "skip" and "code changed" in entry.reason
    assert body.resume("r-versioned", store=store).output == 2  # replayed, as the plan says


def _pid() -> int:
    return os.getpid()


def test_code_first_steps_go_to_the_runtime_default_executor_as_dag_steps_do(
        store: CheckpointClient) -> None:
    from zixir_actors.executor import LocalExecutor, configure, reset

    @durable("default-executor")
    def body(ctx: Any) -> dict[str, int]:
        return {"step": ctx.step(_pid), "here": ctx.step(_pid, executor="local")}

    with LocalExecutor(processes=1) as processes:
        configure(processes)
        try:
            result = body.run(store=store).raise_for_status()
            dag = Workflow("default-executor-dag", [Step("pid", _pid)]).run(store=store)
        finally:
            reset()
    assert dag.outputs["pid"] != os.getpid()
    assert result.outputs["step"] != os.getpid()  # in the executor's worker process
    assert result.outputs["here"] == os.getpid()  # "local" wins over the default
