"""The `zixir` command line, driven through subprocesses against a temporary data_dir."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

WORKFLOWS = textwrap.dedent('''
    from zixir_actors.workflow import RetryPolicy, Workflow

    etl = Workflow("cli-etl")

    @etl.step()
    def load(n):
        return list(range(n))

    @etl.step(depends_on=["load"])
    def total(load):
        return sum(load)

    broken = Workflow("cli-broken")

    @broken.step(retry=RetryPolicy(max_attempts=2, initial_delay=0.01))
    def explode(n):
        raise ValueError(f"cannot handle {n}")
''')


def zixir(data_dir: Path, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("ZIXIR_DATA_DIR", None)
    return subprocess.run([sys.executable, "-m", "zixir_actors", "--data-dir", str(data_dir),
                           *args], capture_output=True, text=True, timeout=timeout, env=env,
                          check=False)


@pytest.fixture
def flows(tmp_path: Path) -> Path:
    path = tmp_path / "flows.py"
    path.write_text(WORKFLOWS)
    return path


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("zixir: error: ")
    return lines[0]


def test_run_then_list_show_and_delete(tmp_path: Path, flows: Path) -> None:
    data = tmp_path / "data"
    ran = zixir(data, "run", f"{flows}:cli-etl", "--input", "n=5", "--run-id", "r1", "--json")
    assert ran.returncode == 0, ran.stderr
    summary = json.loads(ran.stdout)
    assert summary["status"] == "succeeded"
    assert summary["outputs"]["total"] == 10
    listed = zixir(data, "runs", "list", "--json")
    assert [r["run_id"] for r in json.loads(listed.stdout)] == ["r1"]
    shown = zixir(data, "runs", "show", "r1")
    assert shown.returncode == 0 and "cli-etl" in shown.stdout and "total" in shown.stdout
    deleted = zixir(data, "runs", "delete", "r1")
    assert deleted.returncode == 0, deleted.stderr
    assert json.loads(zixir(data, "runs", "list", "--json").stdout) == []


def test_resume_skips_finished_steps(tmp_path: Path, flows: Path) -> None:
    data = tmp_path / "data"
    ran = zixir(data, "run", f"{flows}:cli-etl", "--input", "n=3", "--run-id", "r2")
    assert ran.returncode == 0, ran.stderr
    resumed = zixir(data, "runs", "resume", "r2")
    assert resumed.returncode == 0, resumed.stderr
    assert "skip" in resumed.stdout


def test_failed_step_goes_to_the_dead_letter_queue(tmp_path: Path, flows: Path) -> None:
    data = tmp_path / "data"
    ran = zixir(data, "run", f"{flows}:cli-broken", "--input", "n=1", "--run-id", "bad")
    assert ran.returncode == 1
    letters = json.loads(zixir(data, "dlq", "list", "--json").stdout)
    assert len(letters) == 1 and letters[0]["step"] == "explode"
    assert letters[0]["attempts"] == 2
    shown = zixir(data, "dlq", "show", letters[0]["id"])
    assert "ValueError" in shown.stdout and "cannot handle 1" in shown.stdout
    assert zixir(data, "dlq", "discard", letters[0]["id"]).returncode == 0
    assert json.loads(zixir(data, "dlq", "list", "--json").stdout) == []


def test_graph_prints_mermaid_and_dot(flows: Path, tmp_path: Path) -> None:
    mermaid = zixir(tmp_path, "graph", f"{flows}:cli-etl")
    assert mermaid.returncode == 0
    assert mermaid.stdout.startswith("flowchart TD") and "-->" in mermaid.stdout
    dot = zixir(tmp_path, "graph", f"{flows}:cli-etl", "--format", "dot")
    assert '"load" -> "total";' in dot.stdout


def test_tree_prints_the_runtime_tree(tmp_path: Path) -> None:
    result = zixir(tmp_path / "data", "tree")
    assert result.returncode == 0, result.stderr
    for name in ("zixir.root", "zixir.metrics", "zixir.store", "zixir.caches",
                 "zixir.sandboxes", "zixir.workflows", "zixir.streams"):
        assert name in result.stdout


def test_cache_stats_and_clear(tmp_path: Path) -> None:
    data = tmp_path / "data"
    stats = zixir(data, "cache", "stats", "answers", "--json")
    assert stats.returncode == 0, stats.stderr
    assert "hits" in json.loads(stats.stdout)
    cleared = zixir(data, "cache", "clear", "answers")
    assert cleared.returncode == 0 and "cleared" in cleared.stdout


@pytest.mark.parametrize("args, needle", [
    (("run", "missing.py"), "no such file"),
    (("run", "{flows}:nope"), "no workflow 'nope'"),
    (("run", "{flows}"), "defines 2 workflows"),
    (("runs", "show", "no-such-run"), "no-such-run"),
    (("dlq", "show", "no-such-letter"), "no-such-letter"),
    (("run", "{flows}:cli-etl", "--input", "oops"), "KEY=VALUE"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path: Path, flows: Path,
                                               args: tuple[str, ...], needle: str) -> None:
    result = zixir(tmp_path / "data", *(a.format(flows=flows) for a in args))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert needle in one_line_error(result)
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = zixir(tmp_path / "data", "--debug", "runs", "show", "nothing")
    assert result.returncode == 2
    assert "Traceback" in result.stderr


def test_demo_json_shows_retry_dead_letter_resume_and_cache_hits(tmp_path: Path) -> None:
    result = zixir(tmp_path / "data", "demo", "--json", timeout=180.0)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["checks"] == {"retry": True, "dead_letter": True, "resume": True,
                                 "cache_hits": True, "backpressure": True}
    assert summary["workflow"]["retries"] >= 1
    assert summary["workflow"]["dead_letters"][0]["step"] == "index"
    assert "load" in summary["resume"]["skipped"]
    assert summary["cache"]["second_pass_hits"] > 0
    assert summary["seconds"] < 30
    listed = {r["run_id"]: r["status"]
              for r in json.loads(zixir(tmp_path / "data", "runs", "list", "--json").stdout)}
    assert listed == {summary["workflow"]["run_id"]: summary["workflow"]["status"],
                      summary["resume"]["run_id"]: summary["resume"]["status"]}


def test_demo_prints_steps_in_order_and_never_cuts_a_word(tmp_path: Path) -> None:
    from zixir_actors._demo import demo_workflow

    data = tmp_path / "data"
    result = zixir(data, "demo", timeout=180.0)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("step ")) + 2
    rows = [line.split(None, 3) for line in lines[start:start + 5]]
    assert [row[0] for row in rows] == list(demo_workflow(None).order)
    cell = next(row[3] for row in rows if row[0] == "index")
    letter = json.loads(zixir(data, "dlq", "list", "--json").stdout)[0]
    full = letter["error"]
    assert cell.endswith("…") and len(cell) < len(full)
    assert (full + " ").startswith(cell[:-1] + " "), (cell, full)
    run_line = next(line for line in lines if line.strip().startswith("run demo-"))
    run_id, status = run_line.split()[1].rstrip(":"), run_line.split()[2]
    listed = json.loads(zixir(data, "runs", "list", "--json", "--workflow", "demo-pipeline").stdout)
    assert [(r["run_id"], r["status"]) for r in listed] == [(run_id, status)]


def test_python_dash_m_and_console_script_help() -> None:
    result = subprocess.run([sys.executable, "-m", "zixir_actors", "--help"], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            check=False)
    assert result.returncode == 0
    for command in ("demo", "run", "runs", "dlq", "cache", "graph", "tree", "metrics", "bench"):
        assert command in result.stdout


def test_metrics_serves_prometheus_text_on_loopback(tmp_path: Path) -> None:
    import re
    import urllib.request

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen([sys.executable, "-m", "zixir_actors", "--data-dir",
                           str(tmp_path / "data"), "metrics", "--port", "0", "--duration", "20"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env) as proc:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", first)
        assert match, first
        with urllib.request.urlopen(match.group(0), timeout=10) as response:
            body = response.read().decode()
        assert "zixir_process_resident_memory_bytes" in body or "zixir_" in body
        proc.send_signal(signal.SIGTERM)  # a graceful stop, not a crash
        assert proc.wait(timeout=30) == 0


SLOW = textwrap.dedent('''
    import os, time
    from zixir_actors.workflow import Workflow

    slow = Workflow("cli-slow")

    @slow.step()
    def first(n):
        return n + 1

    @slow.step(depends_on=["first"])
    def second(first, started, release):
        open(started, "w").close()
        deadline = time.monotonic() + 60
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.01)          # a long model call
        return first * 2
''')


def test_sigterm_stops_a_run_gracefully_and_resume_finishes_it(tmp_path: Path) -> None:
    from zixir_actors.testing import wait_for

    flows = tmp_path / "slow.py"
    flows.write_text(SLOW)
    data, started, release = tmp_path / "data", tmp_path / "started", tmp_path / "release"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen([sys.executable, "-m", "zixir_actors", "--data-dir", str(data), "run",
                           str(flows), "--run-id", "s1", "--input", "n=20",
                           "--input", f"started={json.dumps(str(started))}",
                           "--input", f"release={json.dumps(str(release))}"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env) as proc:
        wait_for(started.exists, timeout=60, what="the slow step to start")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    listed = json.loads(zixir(data, "runs", "list", "--json").stdout)
    assert [(r["run_id"], r["status"]) for r in listed] == [("s1", "running")]
    release.touch()
    resumed = zixir(data, "runs", "resume", "s1", "--json")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout[resumed.stdout.index("{"):])
    assert summary["status"] == "succeeded"
    assert summary["steps"]["first"]["status"] == "cached"
    assert summary["outputs"]["second"] == 42
