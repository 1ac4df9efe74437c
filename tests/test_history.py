"""Run history: log lines kept with each run, the true status, and a run's detail."""

from __future__ import annotations

import itertools
import json
import signal
import struct
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _subprocess import project_env

import zixir_actors
from zixir_actors import checkpoint
from zixir_actors.checkpoint import CheckpointClient, open_store
from zixir_actors.errors import ConfigError, CorruptBlobError, StepFailedError
from zixir_actors.observability import logger
from zixir_actors.testing import capture_logs, wait_for
from zixir_actors.workflow import RetryPolicy, StepContext, Workflow, durable
from zixir_actors.workflow._history import (
    DEFAULT_MAX_LINES,
    configure_run_logs,
    jsonable,
    open_run_log,
    run_detail,
    run_state,
)

WAIT = 60.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CheckpointClient]:
    with open_store(tmp_path) as client:
        yield client


@pytest.fixture(autouse=True)
def default_run_logs() -> Iterator[None]:
    yield
    configure_run_logs()


def lines(store: CheckpointClient, run_id: str) -> list[tuple[str, str, str | None, int | None]]:
    return [(line.level, line.message, line.step, line.attempt)
            for line in store.run_logs(run_id)]


# -- log lines -----------------------------------------------------------------------------


def flaky_workflow(name: str) -> Workflow:
    wf = Workflow(name)
    calls = {"fetch": 0}

    @wf.step(retry=RetryPolicy(max_attempts=3, initial_delay=0.05))
    def fetch(url: str, ctx: StepContext) -> str:
        calls["fetch"] += 1
        ctx.logger.info("fetching {}", url)
        if calls["fetch"] == 1:
            raise ConnectionError("reset by peer")
        return f"<html>{url}</html>"

    @wf.step(depends_on=["fetch"])
    def parse(fetch: str) -> int:
        logger.bind(run_id="r-flaky").warning("a line bound to the run", size=len(fetch))
        logger.debug("below the kept level")
        logger.info("a plain line inside the step")
        return len(fetch)

    return wf


def test_a_run_keeps_engine_events_and_its_own_lines_without_configured_logging(
        store: CheckpointClient) -> None:
    result = flaky_workflow("hist-flaky").run({"url": "x"}, run_id="r-flaky", store=store)
    assert result.ok
    assert lines(store, "r-flaky") == [
        ("INFO", "run started", None, None),
        ("DEBUG", "step started", "fetch", 1),
        ("INFO", "fetching x", "fetch", 1),
        ("WARNING", "step failed, retrying", "fetch", 1),
        ("DEBUG", "step started", "fetch", 2),
        ("INFO", "fetching x", "fetch", 2),
        ("INFO", "step succeeded", "fetch", 2),
        ("DEBUG", "step started", "parse", 1),
        ("WARNING", "a line bound to the run", "parse", 1),
        ("INFO", "a plain line inside the step", "parse", 1),
        ("INFO", "step succeeded", "parse", 1),
        ("INFO", "run ended", None, None),
    ]
    logged = store.run_logs("r-flaky")
    assert [line.seq for line in logged] == list(range(len(logged)))
    assert logged[3].fields["error"] == "ConnectionError: reset by peer"
    assert logged[8].fields == {"size": len("<html>x</html>")}
    assert logged[-1].fields["status"] == "succeeded"
    assert all(a.time <= b.time for a, b in itertools.pairwise(logged))


def test_engine_lines_still_reach_loguru_with_their_callers(store: CheckpointClient) -> None:
    with capture_logs() as logs:
        flaky_workflow("hist-loguru").run({"url": "y"}, run_id="r-loguru", store=store)
    retried = logs.find("step failed, retrying")
    assert retried and retried[0]["logger"] == "zixir_actors.workflow._scheduler"
    assert retried[0]["run_id"] == "r-loguru" and retried[0]["step"] == "fetch"
    # Engine lines are kept once, not a second time through loguru.
    assert [m for _, m, _, _ in lines(store, "r-loguru")].count("step failed, retrying") == 1


def test_code_first_step_lines_reach_loguru_with_their_caller_and_are_kept_once(
        store: CheckpointClient) -> None:
    @durable("hist-cf-loguru")
    def body(ctx: Any) -> int:
        return int(ctx.step(len, [1, 2])) + int(ctx.step(len, [3]))

    with capture_logs() as logs:
        body.run(run_id="r-cf-loguru", store=store).raise_for_status()
    step_lines = [r for r in logs.records if r["message"] in ("step started", "step succeeded")]
    assert {r["function"] for r in step_lines} == {"run_step"}
    assert [(r["message"], r["step"], r["attempt"]) for r in step_lines] == [
        ("step started", "len#1", 1), ("step succeeded", "len#1", 1),
        ("step started", "len#2", 1), ("step succeeded", "len#2", 1)]
    kept = [(lvl, m, step, attempt) for lvl, m, step, attempt in lines(store, "r-cf-loguru")
            if m.startswith("step ")]
    assert kept == [("DEBUG", "step started", "len#1", 1), ("INFO", "step succeeded", "len#1", 1),
                    ("DEBUG", "step started", "len#2", 1), ("INFO", "step succeeded", "len#2", 1)]
    succeeded = [line for line in store.run_logs("r-cf-loguru") if line.message == "step succeeded"]
    assert all(isinstance(line.fields["duration"], float) for line in succeeded)


def test_step_starts_keep_the_earliest_across_groups_and_read_older_marks(
        store: CheckpointClient) -> None:
    line = (1.0, "DEBUG", "a", 1, "step started", None)
    store.append_run_logs("r-starts", 0, [line], max_lines=100, starts={"a": 10.0})
    store.append_run_logs("r-starts", 1, [line, line], max_lines=100,
                          starts={"a": 30.0, "b": 20.0})  # "a" again (a resume): kept at 10
    store.append_run_logs("r-starts", 3, [line], max_lines=100, starts={"b": 5.0})
    # A mark as earlier versions stored it: one key per step after 0xff.
    prefix = checkpoint._prefix("r-starts")
    store.transact(lambda txn, db: txn.put(prefix + b"\xffc", struct.pack(">d", 7.0),
                                           db=db(checkpoint.LOGS_DB)))
    assert store.step_starts("r-starts") == {"a": 10.0, "b": 5.0, "c": 7.0}
    # The records of starts are not lines: the four lines read back, and nothing else.
    assert [entry.seq for entry in store.run_logs("r-starts")] == [0, 1, 2, 3]
    assert store.run_log_bounds("r-starts") == (0, 4)
    store.delete_run("r-starts")
    assert store.step_starts("r-starts") == {}


def test_a_damaged_record_of_step_starts_is_a_typed_error(store: CheckpointClient) -> None:
    line = (1.0, "DEBUG", "a", 1, "step started", None)
    store.append_run_logs("r-bad-starts", 0, [line], max_lines=100, starts={"a": 1.0})
    key = checkpoint._prefix("r-bad-starts") + b"\xfe" + struct.pack(">Q", 0)
    store.transact(lambda txn, db: txn.put(key, b"garbage", db=db(checkpoint.LOGS_DB)))
    with pytest.raises(CorruptBlobError):
        store.step_starts("r-bad-starts")


def test_lines_added_from_many_threads_while_flushing_are_each_kept_once_in_order(
        store: CheckpointClient) -> None:
    # `add` takes no lock: its appends race the flushes' drains, and no line
    # may be lost, doubled or numbered out of turn.
    log = open_run_log("r-race", store, fresh=True)
    threads, per_thread = 4, 500  # under DEFAULT_MAX_LINES: nothing is trimmed
    go = threading.Barrier(threads + 1)

    def add(worker: int) -> None:
        go.wait(10)
        for i in range(per_thread):
            log.add("INFO", f"w{worker}", attempt=i + 1)

    adders = [threading.Thread(target=add, args=(w,)) for w in range(threads)]
    for thread in adders:
        thread.start()
    go.wait(10)
    while any(thread.is_alive() for thread in adders):
        log.flush()
    for thread in adders:
        thread.join(10)
    log.close()
    kept = store.run_logs("r-race")
    assert [line.seq for line in kept] == list(range(threads * per_thread))
    for worker in range(threads):  # each thread's lines, in the order it added them
        assert [line.attempt for line in kept if line.message == f"w{worker}"] == list(
            range(1, per_thread + 1))


def test_run_logs_filter_by_step_and_read_on_after_a_seq(store: CheckpointClient) -> None:
    flaky_workflow("hist-filter").run({"url": "z"}, run_id="r-filter", store=store)
    fetch = store.run_logs("r-filter", step="fetch")
    assert {line.step for line in fetch} == {"fetch"} and len(fetch) == 6
    later = store.run_logs("r-filter", after=fetch[2].seq)
    assert later[0].seq == fetch[2].seq + 1
    assert [line.seq for line in store.run_logs("r-filter", after=2, limit=3)] == [3, 4, 5]
    assert store.run_logs("r-filter", after=10_000) == []
    assert store.run_logs("no-such-run") == []
    assert store.run_log_bounds("no-such-run") == (0, 0)


def double(x: int) -> int:
    return 2 * x


def refuse(x: int) -> int:
    raise ValueError(f"no {x}")


def fetch(i: int) -> str:
    return f"page {i}"


def test_a_code_first_run_keeps_a_line_per_call_with_its_label(store: CheckpointClient) -> None:
    @durable("hist-body")
    def body(ctx, n):  # type: ignore[no-untyped-def]
        total = sum(ctx.step(double, i) for i in range(n))
        try:
            ctx.step(refuse, total)
        except StepFailedError:
            logger.bind(run_id=ctx.run_id).info("refused, going on")
        return {"total": total}

    result = body.run({"n": 2}, run_id="r-body", store=store)
    assert result.output == {"total": 2}
    kept = lines(store, "r-body")
    assert kept[0] == ("INFO", "run started", None, None)
    assert ("INFO", "step succeeded", "double#2", 1) in kept
    assert ("ERROR", "step failed", "refuse#1", 1) in kept
    assert ("INFO", "refused, going on", None, None) in kept
    assert kept[-1] == ("INFO", "run ended", None, None)
    assert [line.step for line in store.run_logs("r-body", step="double")] == \
        ["double#1", "double#1", "double#2", "double#2"]


def test_run_logs_are_bounded_the_oldest_dropped_first_and_counted(
        store: CheckpointClient) -> None:
    configure_run_logs(max_lines=50)
    wf = Workflow("hist-chatty")

    @wf.step()
    def chatter(n: int, ctx: StepContext) -> int:
        for i in range(n):
            ctx.logger.info("line {}", i)
        return n

    assert wf.run({"n": 700}, run_id="r-chatty", store=store).ok
    kept = store.run_logs("r-chatty")
    first, end = store.run_log_bounds("r-chatty")
    assert len(kept) == 50 and end - first == 50
    total = 700 + 4  # run started, step started, 700 lines, step succeeded, run ended
    assert end == total and first == total - 50  # dropped: counted by the first seq
    assert kept[0].seq == first and kept[-1].message == "run ended"
    assert [line.message for line in kept[:3]] == ["line 652", "line 653", "line 654"]


def test_a_resumed_run_appends_to_its_log(store: CheckpointClient) -> None:
    wf = Workflow("hist-resume")
    gate = {"fail": True}

    @wf.step()
    def once() -> int:
        if gate["fail"]:
            raise RuntimeError("not yet")
        return 1

    assert not wf.run(run_id="r-resume", store=store).ok
    before = store.run_log_bounds("r-resume")[1]
    gate["fail"] = False
    assert wf.resume("r-resume", store=store).ok
    kept = store.run_logs("r-resume")
    assert [line.seq for line in kept] == list(range(len(kept)))
    assert kept[before].message == "run resumed"


def test_configure_run_logs_rejects_bad_values() -> None:
    with pytest.raises(ConfigError) as bad:
        configure_run_logs(max_lines=0)
    assert str(bad.value).splitlines()[0] == "invalid max_lines: 0 (must be an integer >= 1)"
    with pytest.raises(ConfigError) as level:
        configure_run_logs(level="LOUD")
    assert str(level.value).splitlines()[0] == ("invalid level: 'LOUD' (must be one of TRACE, "
                                                "DEBUG, INFO, SUCCESS, WARNING, ERROR, CRITICAL)")
    assert DEFAULT_MAX_LINES == 10_000


def test_debug_lines_are_kept_once_the_level_allows_them(store: CheckpointClient) -> None:
    configure_run_logs(level="DEBUG")
    wf = Workflow("hist-debug")

    @wf.step()
    def talk(ctx: StepContext) -> None:
        ctx.logger.debug("fine detail")

    wf.run(run_id="r-debug", store=store)
    assert ("DEBUG", "fine detail", "talk", 1) in lines(store, "r-debug")


# -- a run's detail ---------------------------------------------------------------------------


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque thing>"


def test_detail_of_a_dag_run_has_values_as_json_times_errors_and_tracebacks(
        store: CheckpointClient) -> None:
    wf = Workflow("hist-detail", on_failure="continue")
    delay = 0.05

    @wf.step(retry=RetryPolicy(max_attempts=2, initial_delay=delay, jitter=0.0))
    def retried(ctx: StepContext) -> dict[str, object]:
        if ctx.attempt == 1:
            raise TimeoutError("slow upstream")
        return {"big": "x" * 5000, "opaque": Opaque()}

    @wf.step()
    def broken(n: int) -> int:
        raise KeyError(f"missing {n}")

    wf.run({"n": 7, "thing": Opaque()}, run_id="r-detail", store=store)
    detail = run_detail(store, "r-detail")
    json.dumps(detail)  # all of it is JSON
    assert detail["kind"] == "dag" and detail["status"] == "failed"
    assert detail["inputs"] == {"n": 7, "thing": "<Opaque thing>"}
    steps = {s["name"]: s for s in detail["steps"]}
    retried_step = steps["retried"]
    assert retried_step["status"] == "succeeded" and retried_step["attempts"] == 2
    assert retried_step["elapsed"] >= delay  # the backoff between attempts counts
    assert retried_step["started_at"] <= retried_step["finished_at"]
    cut = retried_step["output"]
    assert cut["cut"] is True and cut["bytes"] > 5000 and len(cut["head"]) == 2000
    failed = steps["broken"]
    assert failed["status"] == "failed" and failed["error"] == "KeyError: 'missing 7'"
    assert 'raise KeyError(f"missing {n}")' in failed["traceback"]
    assert failed["dead_letter"] and failed["attempt_history"][0]["error"] == \
        "KeyError: 'missing 7'"
    assert detail["logs"] == {"stored": len(store.run_logs("r-detail")), "dropped": 0}


def test_detail_of_a_code_first_run_lists_each_call(store: CheckpointClient) -> None:
    @durable("hist-calls")
    def body(ctx, n):  # type: ignore[no-untyped-def]
        pages = [ctx.step(fetch, i) for i in range(n)]
        ctx.sleep(0)
        stamp = ctx.now()
        return {"pages": pages, "at": stamp}

    result = body.run({"n": 2}, run_id="r-calls", store=store)
    detail = run_detail(store, "r-calls")
    assert detail["kind"] == "code-first" and detail["status"] == "succeeded"
    assert [(c["label"], c["kind"]) for c in detail["calls"]] == [
        ("fetch#1", "step"), ("fetch#2", "step"), ("sleep#1", "sleep"), ("now#1", "now")]
    assert detail["calls"][1]["value"] == "page 1"
    assert detail["output"] == result.output == detail["outputs"]
    assert [s["name"] for s in detail["steps"]] == ["fetch#1", "fetch#2"]
    assert all(s["attempts"] == 1 and s["started_at"] is not None for s in detail["steps"])


def test_detail_of_a_parked_run_says_what_it_waits_for_and_until_when(tmp_path: Path) -> None:
    @durable("hist-parked")
    def body(ctx):  # type: ignore[no-untyped-def]
        return ctx.wait_for("approval", timeout=3600)

    with zixir_actors.start(data_dir=tmp_path) as runtime:
        handle = body.start(run_id="r-parked")
        assert handle.wait(timeout=WAIT) == "parked"
        from zixir_actors.checkpoint import connect

        detail = run_detail(connect(), "r-parked")
        assert detail["status"] == "parked"
        assert detail["waiting"]["kind"] == "event" and detail["waiting"]["event"] == "approval"
        assert detail["waiting"]["until"] > detail["created_at"]
        assert runtime.is_alive()
        messages = [line.message for line in connect().run_logs("r-parked")]
        assert messages[-1] == "run parked"


def test_jsonable_keeps_json_says_repr_otherwise_and_cuts_big_values() -> None:
    assert jsonable({"a": [1, 2.5, None]}) == {"a": [1, 2.5, None]}
    assert jsonable(Opaque()) == "<Opaque thing>"
    assert jsonable(float("nan")) == "nan"
    assert jsonable("y" * 10, limit=5) == {"cut": True, "bytes": 12, "head": '"yyyy'}


def test_detail_of_an_unknown_run_is_run_not_found(store: CheckpointClient) -> None:
    from zixir_actors.errors import RunNotFoundError

    with pytest.raises(RunNotFoundError) as missing:
        run_detail(store, "nope")
    assert str(missing.value) == "no stored run 'nope'"


# -- the truth about status ---------------------------------------------------------------


def blocking_workflow(name: str, started: threading.Event,
                      release: threading.Event) -> Workflow:
    wf = Workflow(name)

    @wf.step()
    def first(ctx: StepContext) -> int:
        ctx.logger.info("first is done")
        return 1

    @wf.step(depends_on=["first"])
    def hang(first: int, ctx: StepContext) -> int:
        ctx.logger.info("waiting for the release")
        started.set()
        release.wait(WAIT)
        return first + 1

    return wf


def test_a_clean_stop_records_interrupted_and_the_next_start_resumes_it(tmp_path: Path) -> None:
    started, release = threading.Event(), threading.Event()
    wf = blocking_workflow("hist-stop", started, release)
    runtime = zixir_actors.start(data_dir=tmp_path, resume_runs=False)
    try:
        handle = wf.start(run_id="r-stop")
        assert started.wait(WAIT)
    finally:
        runtime.stop()
        release.set()
    with open_store(tmp_path) as store:
        record = store.get_run("r-stop")
        assert (record.status, record.error) == ("interrupted", "runtime stopped")
        state = run_state(record, store.runtimes())
        assert (state.status, state.reason) == ("interrupted", "runtime stopped")
        kept = [line.message for line in store.run_logs("r-stop")]
        assert kept[-1] == "run interrupted" and "waiting for the release" in kept
        assert run_detail(store, "r-stop")["interrupted"]["reason"] == "runtime stopped"
    del handle
    release.clear()
    release.set()
    with zixir_actors.start(data_dir=tmp_path) as again:
        assert [h.run_id for h in again.resumed] == ["r-stop"]
        assert again.resumed[0].result(timeout=WAIT).ok
        from zixir_actors.checkpoint import connect

        assert connect().get_run("r-stop").status == "succeeded"
        assert [line.message for line in connect().run_logs("r-stop")].count("run resumed") == 1


def test_cancel_and_send_accept_an_interrupted_run(store: CheckpointClient) -> None:
    from dataclasses import replace

    from zixir_actors.checkpoint import RunRecord
    from zixir_actors.workflow import send

    @durable("hist-waiter")
    def waiter(ctx):  # type: ignore[no-untyped-def]
        return ctx.wait_for("go")

    store.save_run(RunRecord("r-int", "hist-waiter", "interrupted", {}, 1.0, 2.0,
                             "runtime stopped", owner="gone:1:1"))
    send("r-int", "go", {"ok": True}, store=store)
    assert [e[1] for e in store.events("r-int")] == ["go"]
    assert waiter.cancel("r-int", store=store) is True
    assert store.get_run("r-int").status == "cancelled"
    store.save_run(replace(store.get_run("r-int"), status="interrupted"))
    assert waiter.run(run_id="r-int", store=store).output == {"ok": True}


HANGING = textwrap.dedent('''
    import sys, threading
    from pathlib import Path
    import zixir_actors
    from zixir_actors.workflow import Workflow

    wf = Workflow("hist-kill")

    @wf.step()
    def first(ctx):
        ctx.logger.info("first is done")
        return 1

    @wf.step(depends_on=["first"])
    def hang(first, ctx):
        ctx.logger.warning("hanging until killed")
        Path(sys.argv[2]).write_text("ready")
        threading.Event().wait()

    with zixir_actors.start(data_dir=sys.argv[1]):
        wf.run(run_id="r-kill")
''')


def test_after_kill_9_the_run_shows_interrupted_and_its_logs_survive(tmp_path: Path) -> None:
    script = tmp_path / "hang.py"
    script.write_text(HANGING)
    data, ready = tmp_path / "data", tmp_path / "ready"
    env = project_env()
    child = subprocess.Popen([sys.executable, str(script), str(data), str(ready)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(ready.exists, timeout=WAIT, what="the step to start")
        with open_store(data) as store:
            # Lines are committed in groups within FLUSH_AFTER; wait for the last group.
            wait_for(lambda: any(line.message == "hanging until killed"
                                 for line in store.run_logs("r-kill")), timeout=WAIT)
            assert run_state(store.get_run("r-kill"), store.runtimes()).status == "running"
            child.send_signal(signal.SIGKILL)
            child.wait(WAIT)
            record = store.get_run("r-kill")
            assert record.status == "running"  # what the record says; the truth differs
            state = run_state(record, store.runtimes())
            assert state.status == "interrupted"
            assert state.reason == f"its process (pid {child.pid}) ended"
            assert state.since is not None and state.since >= record.updated_at
            kept = [(line.message, line.step) for line in store.run_logs("r-kill")]
            assert ("first is done", "first") in kept
            assert ("hanging until killed", "hang") in kept
            steps = {s["name"]: s for s in run_detail(store, "r-kill")["steps"]}
            assert steps["first"]["status"] == "succeeded"
            assert steps["hang"]["status"] == "interrupted"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(WAIT)


def test_run_state_says_why_a_running_run_is_interrupted(store: CheckpointClient) -> None:
    import socket
    import time

    from zixir_actors._runtimes import RuntimeInfo
    from zixir_actors.checkpoint import RunRecord
    from zixir_actors.workflow import ProgressStream

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(WAIT)
    now = time.time()
    here = RuntimeInfo(f"{socket.gethostname()}:{gone.pid}:1", socket.gethostname(), gone.pid,
                       now - 10, now - 1, 5.0)
    far = RuntimeInfo("elsewhere:7:1", "elsewhere", 7, now - 100, now - 60, 5.0)
    store.save_runtime(here)
    store.save_runtime(far)
    runtimes = store.runtimes()
    for run_id, owner in (("r-here", here.id), ("r-far", far.id), ("r-none", "vanished:1:1")):
        store.save_run(RunRecord(run_id, "hist-owned", "running", {}, now - 30, now - 20,
                                 owner=owner))
    here_state = run_state(store.get_run("r-here"), runtimes)
    assert (here_state.status, here_state.reason) == ("interrupted",
                                                      f"its process (pid {gone.pid}) ended")
    assert here_state.since == now - 1  # its last renewal: the last sign of life
    far_state = run_state(store.get_run("r-far"), runtimes)
    assert far_state.status == "interrupted"
    assert far_state.reason is not None and far_state.reason.startswith(
        "its runtime's lease ran out (last renewed ")
    none_state = run_state(store.get_run("r-none"), runtimes)
    assert none_state.reason == "its runtime vanished:1:1 is gone (stopped or died)"
    assert none_state.since == now - 20
    # Nothing more will come from a run whose owner died: its progress stream ends.
    assert list(ProgressStream("r-here", store, timeout=WAIT)) == []
    unowned = RunRecord("r-embedded", "hist-owned", "running", {}, now, now)
    assert run_state(unowned, runtimes).status == "running"  # no owner: nothing to check


def test_with_configured_logging_lines_are_kept_once_and_still_shown(
        store: CheckpointClient) -> None:
    import io

    from zixir_actors.observability import configure_logging, reset_logging

    out = io.StringIO()
    configure_logging(json=True, level="INFO", sink=out)
    try:
        flaky_workflow("hist-configured").run({"url": "c"}, run_id="r-conf", store=store)
    finally:
        reset_logging()
    kept = [m for _, m, _, _ in lines(store, "r-conf")]
    assert kept.count("fetching c") == 2 and kept.count("step succeeded") == 2
    assert kept.count("a plain line inside the step") == 1
    shown = [json.loads(line)["message"] for line in out.getvalue().splitlines()]
    assert "step failed, retrying" in shown and "a plain line inside the step" in shown
    assert "step started" not in shown  # DEBUG: below the sink's level, kept all the same
    assert "step started" in kept
