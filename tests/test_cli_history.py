"""`zixir runs show | logs | output`, and statuses that tell the truth, through subprocesses."""

from __future__ import annotations

import json
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _subprocess import project_env

from zixir_actors.checkpoint import open_store
from zixir_actors.testing import wait_for

WAIT = 60.0

FLOWS = textwrap.dedent('''
    import os, time
    from pathlib import Path
    from zixir_actors.observability import logger
    from zixir_actors.workflow import RetryPolicy, Workflow, durable
    from zixir_actors.workflow._history import configure_run_logs

    configure_run_logs(max_lines=int(os.environ.get("HIST_MAX_LINES", "10000")))

    etl = Workflow("hist-etl")

    @etl.step()
    def load(n, ctx):
        ctx.logger.info("loading {} rows", n)
        return list(range(n))

    @etl.step(depends_on=["load"])
    def total(load):
        return {"sum": sum(load), "when": {1, 2}}

    broken = Workflow("hist-broken")

    @broken.step(retry=RetryPolicy(max_attempts=2, initial_delay=0.01))
    def explode(n):
        raise ValueError(f"cannot handle {n}")

    chatty = Workflow("hist-chatty")

    @chatty.step()
    def chatter(n, ctx):
        for i in range(n):
            ctx.logger.info("line {}", i)
        return n

    gated = Workflow("hist-gated")

    @gated.step()
    def before(gate, ctx):
        ctx.logger.info("before the gate")
        return gate

    @gated.step(depends_on=["before"])
    def wait_gate(before, ctx):
        ctx.logger.warning("waiting at the gate")
        Path(before + ".waiting").write_text("yes")
        deadline = time.monotonic() + 60  # the test opens the gate (another process)
        while not Path(before).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        ctx.logger.info("through the gate")
        return "open"

    def shout(word):
        return word.upper()

    @durable("hist-agent")
    def agent(ctx, words):
        return [ctx.step(shout, w) for w in words]
''')


def zixir(data_dir: Path, *args: str, env: dict[str, str] | None = None,
          timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zixir_actors", "--data-dir", str(data_dir),
                           *args], capture_output=True, text=True, timeout=timeout,
                          env=_env(env), check=False)


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**project_env(), **(extra or {})}
    env.pop("ZIXIR_DATA_DIR", None)
    return env


def first_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, result
    return lines[0]


@pytest.fixture
def flows(tmp_path: Path) -> Path:
    path = tmp_path / "hflows.py"
    path.write_text(FLOWS)
    return path


@pytest.fixture
def data(tmp_path: Path, flows: Path) -> Path:
    """A data directory with a succeeded, a failed and a code-first run."""
    data = tmp_path / "data"
    for target, run_id, inputs in ((f"{flows}:hist-etl", "ok", ["--input", "n=4"]),
                                   (f"{flows}:hist-broken", "bad", ["--input", "n=4"]),
                                   (f"{flows}:hist-agent", "cf",
                                    ["--input", 'words=["a", "b", "a"]'])):
        ran = zixir(data, "run", target, "--run-id", run_id, *inputs)
        assert ran.returncode in (0, 1), ran.stderr
    return data


def test_show_prints_inputs_steps_times_outputs_and_the_log_count(data: Path) -> None:
    shown = zixir(data, "runs", "show", "ok")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == "run ok of hist-etl (dag): succeeded"
    assert "  n = 4" in lines
    assert any(line.startswith("load ") and "succeeded" in line for line in lines)
    assert "  load = [0, 1, 2, 3]" in lines
    assert any(line.startswith("  total = ") and "'sum': 6" in line for line in lines)
    assert lines[-1].startswith("logs: ") and "zixir runs logs ok" in lines[-1]


def test_show_of_a_failed_run_gives_the_error_and_the_traceback(data: Path) -> None:
    shown = zixir(data, "runs", "show", "bad")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[:2] == ["run bad of hist-broken (dag): failed",
                                            "error: explode: ValueError: cannot handle 4"]
    assert "step explode failed after 2 attempt(s) (dead letter " in shown.stdout
    assert 'raise ValueError(f"cannot handle {n}")' in shown.stdout


def test_show_json_gives_all_of_it(data: Path) -> None:
    shown = zixir(data, "runs", "show", "ok", "--json")
    assert shown.returncode == 0, shown.stderr
    detail = json.loads(shown.stdout)
    assert detail["status"] == "succeeded" and detail["inputs"] == {"n": 4}
    assert detail["outputs"]["load"] == [0, 1, 2, 3]
    assert detail["outputs"]["total"] == "{'sum': 6, 'when': {1, 2}}"  # not JSON: its repr
    steps = {s["name"]: s for s in detail["steps"]}
    assert steps["load"]["attempts"] == 1 and steps["load"]["started_at"] is not None
    assert steps["load"]["finished_at"] >= steps["load"]["started_at"]
    assert detail["logs"]["dropped"] == 0 and detail["logs"]["stored"] > 0
    failed = json.loads(zixir(data, "runs", "show", "bad", "--json").stdout)
    explode = failed["steps"][0]
    assert explode["status"] == "failed" and explode["attempts"] == 2
    assert "Traceback" in explode["traceback"] and len(explode["attempt_history"]) == 2


def test_show_of_a_code_first_run_lists_its_calls(data: Path) -> None:
    detail = json.loads(zixir(data, "runs", "show", "cf", "--json").stdout)
    assert detail["kind"] == "code-first" and detail["output"] == ["A", "B", "A"]
    assert [c["label"] for c in detail["calls"]] == ["shout#1", "shout#2", "shout#3"]
    text = zixir(data, "runs", "show", "cf").stdout
    assert "shout#3" in text and 'output: ["A", "B", "A"]' in text


def test_show_logs_and_output_of_an_unknown_run_say_no_stored_run(data: Path,
                                                                  tmp_path: Path) -> None:
    for args in (("show", "nope"), ("logs", "nope"), ("output", "nope")):
        result = zixir(data, "runs", *args)
        assert result.returncode == 2
        assert first_error(result) == "zixir: error: no stored run 'nope'"
    empty = tmp_path / "empty"
    result = zixir(empty, "runs", "logs", "nope")
    assert first_error(result) == "zixir: error: no stored run 'nope'"
    assert not empty.exists()  # reading never creates a data directory


def test_commands_without_a_run_id_say_so(data: Path) -> None:
    for action in ("show", "logs", "output"):
        result = zixir(data, "runs", action)
        assert result.returncode == 2
        assert first_error(result) == f"zixir: error: runs {action} needs a RUN_ID"


def test_logs_prints_each_line_with_time_level_step_and_attempt(data: Path) -> None:
    logs = zixir(data, "runs", "logs", "bad")
    assert logs.returncode == 0, logs.stderr
    lines = logs.stdout.splitlines()
    assert lines[0].endswith("INFO     run started  max_concurrency=8")
    assert "WARNING  explode (attempt 1): step failed, retrying  delay=" in lines[2]
    assert "error=ValueError: cannot handle 4" in lines[2]
    assert "ERROR    explode: step dead-lettered  attempts=2 letter=" in lines[4]
    assert "INFO     run ended  status=failed duration=" in lines[-1]


def test_logs_filter_by_step_and_as_json_lines(data: Path) -> None:
    only = zixir(data, "runs", "logs", "ok", "--step", "load").stdout.splitlines()
    assert [line.split(": ", 1)[1] for line in only] == ["step started", "loading 4 rows",
                                                         "step succeeded  duration=" +
                                                         only[-1].rsplit("=", 1)[1]]
    records = [json.loads(line) for line in
               zixir(data, "runs", "logs", "cf", "--json", "--step", "shout").stdout.splitlines()]
    assert {r["step"] for r in records} == {"shout#1", "shout#2", "shout#3"}
    assert [r["seq"] for r in records] == sorted(r["seq"] for r in records)
    assert all({"time", "level", "message", "attempt"} <= set(r) for r in records)


def test_logs_say_how_many_older_lines_were_dropped(tmp_path: Path, flows: Path) -> None:
    data = tmp_path / "data"
    ran = zixir(data, "run", f"{flows}:hist-chatty", "--input", "n=300", "--run-id", "chat",
                env={"HIST_MAX_LINES": "100"})
    assert ran.returncode == 0, ran.stderr
    lines = zixir(data, "runs", "logs", "chat").stdout.splitlines()
    total = 300 + 4
    assert lines[0] == f"({total - 100} older line(s) of this run were dropped to keep it " \
                       "bounded)"
    assert len(lines) == 1 + 100 and "INFO     run ended  status=succeeded" in lines[-1]
    shown = json.loads(zixir(data, "runs", "show", "chat", "--json").stdout)
    assert shown["logs"] == {"stored": 100, "dropped": total - 100}


def test_output_prints_json_of_the_run_or_a_step_or_writes_a_pickle(data: Path,
                                                                    tmp_path: Path) -> None:
    assert json.loads(zixir(data, "runs", "output", "ok", "load").stdout) == [0, 1, 2, 3]
    assert json.loads(zixir(data, "runs", "output", "cf").stdout) == ["A", "B", "A"]
    assert json.loads(zixir(data, "runs", "output", "cf", "shout#2").stdout) == "B"
    assert json.loads(zixir(data, "runs", "output", "cf", "shout").stdout) == "A"
    not_json = zixir(data, "runs", "output", "ok", "total")
    assert not_json.returncode == 2
    assert first_error(not_json) == ("zixir: error: the output of step 'total' is not JSON "
                                     "(dict); write it with --pickle FILE")
    whole = zixir(data, "runs", "output", "ok")
    assert first_error(whole) == ("zixir: error: the output of the run is not JSON (dict); "
                                  "write it with --pickle FILE")
    target = tmp_path / "total.pkl"
    written = zixir(data, "runs", "output", "ok", "total", "--pickle", str(target))
    assert written.returncode == 0, written.stderr
    assert pickle.loads(target.read_bytes()) == {"sum": 6, "when": {1, 2}}
    unknown = zixir(data, "runs", "output", "ok", "nope")
    assert first_error(unknown) == ("zixir: error: run 'ok' has no output of step 'nope' "
                                    "(steps with an output: load, total)")
    failed = zixir(data, "runs", "output", "bad", "explode")
    assert first_error(failed) == ("zixir: error: run 'bad' has no output of step 'explode' "
                                   "(steps with an output: none)")


def start_gated(data: Path, flows: Path, gate: Path) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-m", "zixir_actors", "--data-dir", str(data),
                              "run", f"{flows}:hist-gated", "--run-id", "gated",
                              "--input", f"gate={json.dumps(str(gate))}"],
                             env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             text=True)
    wait_for(Path(str(gate) + ".waiting").exists, timeout=WAIT, what="the gated step")
    return child


def test_logs_follow_prints_new_lines_until_the_run_ends(tmp_path: Path, flows: Path) -> None:
    data, gate = tmp_path / "data", tmp_path / "gate"
    child = start_gated(data, flows, gate)
    try:
        follower = subprocess.Popen([sys.executable, "-m", "zixir_actors", "--data-dir",
                                     str(data), "runs", "logs", "gated", "--follow"],
                                    env=_env(), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        assert follower.stdout is not None
        seen = []
        for line in follower.stdout:  # blocks until the follower prints
            seen.append(line.rstrip("\n"))
            if "waiting at the gate" in line:
                break
        gate.write_text("open")
        rest, err = follower.communicate(timeout=WAIT)
        assert follower.returncode == 0, err
        seen += rest.splitlines()
        assert any("through the gate" in line for line in seen)
        assert "INFO     run ended  status=succeeded" in seen[-1]
    finally:
        gate.write_text("open")
        child.wait(WAIT)


def test_a_killed_run_shows_interrupted_in_list_and_show_and_resumes(
        tmp_path: Path, flows: Path) -> None:
    data, gate = tmp_path / "data", tmp_path / "gate"
    child = start_gated(data, flows, gate)
    try:
        listed = json.loads(zixir(data, "runs", "list", "--json").stdout)
        assert [(r["run_id"], r["status"]) for r in listed] == [("gated", "running")]
        with open_store(data) as store:  # the group of lines is committed within 50 ms
            wait_for(lambda: any("waiting at the gate" in line.message
                                 for line in store.run_logs("gated")), timeout=WAIT)
        child.send_signal(signal.SIGKILL)
        child.wait(WAIT)
        interrupted = zixir(data, "runs", "list", "--status", "interrupted")
        assert interrupted.returncode == 0, interrupted.stderr
        row = interrupted.stdout.splitlines()[2]
        assert row.startswith("gated") and " interrupted " in row
        assert f"its process (pid {child.pid}) ended" in row
        assert zixir(data, "runs", "list", "--status", "running").stdout.strip() == "no runs"
        shown = zixir(data, "runs", "show", "gated").stdout.splitlines()
        assert shown[0] == "run gated of hist-gated (dag): interrupted"
        assert shown[1].startswith("interrupted ") and \
            shown[1].endswith(f": its process (pid {child.pid}) ended; continue it with "
                              "`zixir runs resume`")
        logs = zixir(data, "runs", "logs", "gated").stdout
        assert "before the gate" in logs and "waiting at the gate" in logs
        gate.write_text("open")
        resumed = zixir(data, "runs", "resume", "gated", "--json")
        assert resumed.returncode == 0, resumed.stderr
        assert json.loads(resumed.stdout)["status"] == "succeeded"
        again = json.loads(zixir(data, "runs", "show", "gated", "--json").stdout)
        assert again["status"] == "succeeded" and again["interrupted"] is None
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(WAIT)


def test_an_interrupted_clean_stop_is_recorded_with_when_and_why(tmp_path: Path,
                                                                 flows: Path) -> None:
    data, gate = tmp_path / "data", tmp_path / "gate"
    child = start_gated(data, flows, gate)
    try:
        child.send_signal(signal.SIGINT)  # Ctrl-C: the runtime stops cleanly
        assert child.wait(WAIT) == 130
        listed = json.loads(zixir(data, "runs", "list", "--json").stdout)
        assert listed[0]["status"] == "interrupted"
        assert listed[0]["interrupted"]["reason"] == "runtime stopped"
        shown = zixir(data, "runs", "show", "gated").stdout.splitlines()
        assert shown[1].endswith(": runtime stopped; continue it with `zixir runs resume`")
    finally:
        gate.write_text("open")
        if child.poll() is None:
            child.kill()
            child.wait(WAIT)
