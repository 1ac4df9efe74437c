"""The `zixir` command line, driven through subprocesses against a temporary data_dir."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from _subprocess import project_env

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
    env = project_env()
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
                            text=True, timeout=60, env=project_env(),
                            check=False)
    assert result.returncode == 0
    for command in ("demo", "run", "runs", "dlq", "cache", "graph", "tree", "metrics", "bench"):
        assert command in result.stdout


def test_metrics_serves_prometheus_text_on_loopback(tmp_path: Path) -> None:
    import re
    import urllib.request

    env = project_env()
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


def _slow_flow(name: str, first_options: str = "") -> str:
    """A workflow file whose second step waits (up to 60 s) for a release file: a long
    model call that a signal interrupts. `first_options` go to the first step."""
    return textwrap.dedent(f'''
        import os, time
        from zixir_actors.sandbox import Limits
        from zixir_actors.workflow import Workflow

        slow = Workflow({name!r})

        @slow.step({first_options})
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


def _run_slow(data: Path, flows: Path, run_id: str, started: Path, release: Path,
              **popen: Any) -> subprocess.Popen[str]:
    """`zixir run` of a `_slow_flow` file, in the background."""
    return subprocess.Popen([sys.executable, "-m", "zixir_actors", "--data-dir", str(data),
                             "run", str(flows), "--run-id", run_id, "--input", "n=20",
                             "--input", f"started={json.dumps(str(started))}",
                             "--input", f"release={json.dumps(str(release))}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=project_env(), **popen)


SLOW = _slow_flow("cli-slow")


def test_sigterm_stops_a_run_gracefully_and_resume_finishes_it(tmp_path: Path) -> None:
    from zixir_actors.testing import wait_for

    flows = tmp_path / "slow.py"
    flows.write_text(SLOW)
    data, started, release = tmp_path / "data", tmp_path / "started", tmp_path / "release"
    with _run_slow(data, flows, "s1", started, release) as proc:
        wait_for(started.exists, timeout=60, what="the slow step to start")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    listed = json.loads(zixir(data, "runs", "list", "--json").stdout)
    # Not "running": no process runs it any more (the runtime recorded why it stopped).
    assert [(r["run_id"], r["status"]) for r in listed] == [("s1", "interrupted")]
    assert listed[0]["interrupted"]["reason"] == "runtime stopped"
    release.touch()
    resumed = zixir(data, "runs", "resume", "s1", "--json")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout[resumed.stdout.index("{"):])
    assert summary["status"] == "succeeded"
    assert summary["steps"]["first"]["status"] == "cached"
    assert summary["outputs"]["second"] == 42


# -- the command line as an operator uses it -------------------------------------------------

NO_WORKFLOW = "value = 42\n"


def zixir_at(cwd: Path, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """`zixir ARGS` run in `cwd`, without an implicit --data-dir."""
    env = project_env()
    env.pop("ZIXIR_DATA_DIR", None)
    return subprocess.run([sys.executable, "-m", "zixir_actors", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=env, check=False)


def first_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, (result.stdout, result.stderr)
    return lines[0]


def test_data_dir_is_accepted_before_or_after_the_command(tmp_path: Path, flows: Path) -> None:
    data = tmp_path / "data"
    ran = zixir_at(tmp_path, "run", f"{flows}:cli-etl", "--input", "n=2", "--run-id", "a1",
                   "--data-dir", str(data))
    assert ran.returncode == 0, ran.stderr
    before = zixir_at(tmp_path, "--data-dir", str(data), "runs", "list", "--json")
    after = zixir_at(tmp_path, "runs", "list", "--json", "--data-dir", str(data))
    assert json.loads(before.stdout) == json.loads(after.stdout)
    assert [r["run_id"] for r in json.loads(after.stdout)] == ["a1"]
    assert not (tmp_path / ".zixir").exists()


def test_version_comes_from_the_package_metadata(tmp_path: Path) -> None:
    import importlib.metadata

    import zixir_actors

    version = importlib.metadata.version("zixir-actors")
    assert zixir_actors.__version__ == version
    result = zixir_at(tmp_path, "--version")
    assert result.returncode == 0 and result.stdout.strip() == f"zixir {version}"


def test_every_option_and_command_has_help_text() -> None:
    import argparse

    from zixir_actors.cli import build_parser

    def walk(parser: argparse.ArgumentParser, where: str) -> list[str]:
        missing = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helped = {choice.dest: choice.help for choice in action._choices_actions}
                for name, sub in action.choices.items():
                    if not helped.get(name):
                        missing.append(f"{where} {name}")
                    missing += walk(sub, f"{where} {name}")
            elif not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{where} {'/'.join(action.option_strings) or action.dest}")
        return missing

    assert walk(build_parser(), "zixir") == []


def test_input_values_are_json_and_unknown_inputs_are_errors(tmp_path: Path, flows: Path) -> None:
    helped = zixir_at(tmp_path, "run", "--help")
    assert "parsed as JSON" in " ".join(helped.stdout.split())
    data = tmp_path / "data"
    bad = zixir(data, "run", f"{flows}:cli-etl", "--input", "n=2", "--input", "limit=3")
    assert bad.returncode == 2
    assert first_error_line(bad) == \
        "zixir: error: workflow 'cli-etl' takes no input 'limit' (it takes: n)"
    good = zixir(data, "run", f"{flows}:cli-etl", "--input", 'n=4', "--json")
    assert json.loads(good.stdout)["outputs"]["total"] == 6


def test_resume_uses_the_absolute_path_of_the_workflow_file(tmp_path: Path, flows: Path) -> None:
    data = tmp_path / "data"
    ran = zixir_at(tmp_path, "--data-dir", str(data), "run", "flows.py:cli-etl",
                   "--input", "n=3", "--run-id", "rel")
    assert ran.returncode == 0, ran.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    resumed = zixir_at(elsewhere, "--data-dir", str(data), "runs", "resume", "rel", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout[resumed.stdout.index("{"):])["status"] == "succeeded"


@pytest.mark.parametrize("args, first_line", [
    (("runs", "resume", "nope"), "zixir: error: no stored run 'nope'"),
    (("runs", "show", "nope"), "zixir: error: no stored run 'nope'"),
    (("runs", "delete", "nope"), "zixir: error: no stored run 'nope'"),
    (("run", "missing.py"), "zixir: error: no such file: missing.py"),
    (("run", "empty.py"), "zixir: error: empty.py defines no workflow"),
    (("run", "flows.py:nope"),
     "zixir: error: no workflow 'nope' in flows.py (found: cli-broken, cli-etl)"),
    (("run", "flows.py"), "zixir: error: flows.py defines 2 workflows (cli-broken, cli-etl); "
                          "say which with FILE:WORKFLOW"),
    (("run", "flows.py:cli-etl", "--input", "oops"),
     "zixir: error: --input expects KEY=VALUE, got 'oops'"),
    (("dlq", "show", "nope"), "zixir: error: no dead letter 'nope'"),
    (("cache", "stats", "nope"), "zixir: error: no cache 'nope' in {data}"),
    (("cache", "clear", "nope"), "zixir: error: no cache 'nope' in {data}"),
    (("runs", "list", "--since", "soon"),
     "zixir: error: --since expects a duration like 90s, 15m, 1h or 2d, got 'soon'"),
    (("metrics", "--port", "99999"),
     "zixir: error: invalid port: 99999 (must be an int from 0 to 65535)"),
    (("bench", "--quick", "nope"), "zixir: error: no benchmark subject 'nope' (known: cache, "),
])
def test_errors_print_one_exact_first_line(tmp_path: Path, flows: Path, args: tuple[str, ...],
                                           first_line: str) -> None:
    (tmp_path / "empty.py").write_text(NO_WORKFLOW)
    data = tmp_path / "data"
    if args[0] in ("runs", "dlq", "cache"):   # an existing data directory
        assert zixir(data, "run", f"{flows}:cli-etl", "--input", "n=1").returncode == 0
    result = zixir_at(tmp_path, "--data-dir", str(data), *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    expected = first_line.format(data=data)
    if expected.endswith(", "):   # a list that grows with the project: its start
        assert first_error_line(result).startswith(expected), result.stderr
    else:
        assert first_error_line(result) == expected


@pytest.mark.parametrize("args", [
    ("runs", "list"), ("runs", "list", "--json"), ("runs", "show", "x"), ("runs", "delete", "x"),
    ("runs", "resume", "x"), ("dlq", "list"), ("dlq", "show", "x"), ("cache", "list"),
    ("cache", "stats", "x"), ("cache", "clear", "x"), ("tree",),
])
def test_read_only_commands_create_no_data_directory(tmp_path: Path, args: tuple[str, ...]) -> None:
    data = tmp_path / "never"
    result = zixir(data, *args)
    assert result.returncode in (0, 2), result.stderr
    assert "Traceback" not in result.stderr
    assert not data.exists()
    assert not (tmp_path / ".zixir").exists()


def test_runs_list_filters_by_workflow_status_and_age_newest_first(tmp_path: Path,
                                                                   flows: Path) -> None:
    import time

    from zixir_actors.checkpoint import RunRecord, open_store

    data = tmp_path / "data"
    for target, run_id, status in (("cli-etl", "e1", 0), ("cli-broken", "b1", 1),
                                   ("cli-etl", "e2", 0)):
        ran = zixir(data, "run", f"{flows}:{target}", "--input", "n=1", "--run-id", run_id)
        assert ran.returncode == status, ran.stderr
    old = time.time() - 3 * 3600
    with open_store(data) as store:
        store.save_run(RunRecord("old", "cli-etl", "succeeded", {"n": 0}, old, old))

    def listed(*args: str) -> list[str]:
        result = zixir(data, "runs", "list", "--json", *args)
        assert result.returncode == 0, result.stderr
        return [r["run_id"] for r in json.loads(result.stdout)]

    assert listed() == ["e2", "b1", "e1", "old"]
    assert listed("--workflow", "cli-etl") == ["e2", "e1", "old"]
    assert listed("--status", "failed") == ["b1"]
    assert listed("--since", "1h") == ["e2", "b1", "e1"]
    assert listed("--since", "4h", "--status", "succeeded") == ["e2", "e1", "old"]
    table = zixir(data, "runs", "list", "--since", "90m").stdout.splitlines()
    assert [line.split()[0] for line in table[2:]] == ["e2", "b1", "e1"]


CACHE_USER = textwrap.dedent('''
    import sys
    import zixir_actors
    from zixir_actors import Cache

    with zixir_actors.start(data_dir=sys.argv[1]):
        answers = Cache.start("answers", persist=True)
        answers.put("q1", "a1")
        answers.put("q2", "a" * 1000)
        answers.get("q1")            # a hit
        answers.get("nothing")       # a miss
        print(answers.stats().hits, answers.stats().misses)
        scratch = Cache.start("scratch")
        scratch.put("k", "v")
        answers.stop()
        scratch.stop()
''')


def test_cache_list_and_stats_keep_hits_and_misses_across_processes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    script = tmp_path / "use_cache.py"
    script.write_text(CACHE_USER)
    env = project_env()
    counts = []
    for _ in range(2):
        used = subprocess.run([sys.executable, str(script), str(data)], capture_output=True,
                              text=True, timeout=120, env=env, check=False)
        assert used.returncode == 0, used.stderr
        counts.append(used.stdout.split())
    assert counts == [["1", "1"], ["2", "2"]]      # the second process starts from the first's
    listed = zixir(data, "cache", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    caches = {c["name"]: c for c in json.loads(listed.stdout)}
    assert caches["answers"]["persistent"] is True and caches["answers"]["entries"] == 2
    assert caches["answers"]["bytes"] > 1000
    assert caches["scratch"]["persistent"] is False and caches["scratch"]["entries"] == 1
    human = zixir(data, "cache", "list").stdout.splitlines()
    assert human[0].split() == ["cache", "persistent", "entries", "bytes", "hits", "misses"]
    stats = json.loads(zixir(data, "cache", "stats", "answers", "--json").stdout)
    assert (stats["hits"], stats["misses"], stats["size"]) == (2, 2, 2)
    cleared = zixir(data, "cache", "clear", "answers")
    assert cleared.returncode == 0 and cleared.stdout.strip() == \
        "cleared 2 entries from cache answers"
    assert json.loads(zixir(data, "cache", "stats", "answers", "--json").stdout)["size"] == 0


SIGINT_FLOW = _slow_flow("cli-ctrl-c", "limits=Limits(timeout=60)")  # first: in a sandbox


def test_ctrl_c_stops_cleanly_with_status_130_and_keeps_committed_steps(tmp_path: Path) -> None:
    from zixir_actors.testing import wait_for

    flows = tmp_path / "ctrl_c.py"
    flows.write_text(SIGINT_FLOW)
    data, started, release = tmp_path / "data", tmp_path / "started", tmp_path / "release"
    # A terminal sends SIGINT to the whole foreground process group: the CLI
    # and every worker process it started.
    with _run_slow(data, flows, "c1", started, release, start_new_session=True) as proc:
        wait_for(lambda: started.exists() or proc.poll() is not None, timeout=60,
                 what="the slow step to start")
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().splitlines() == [
        "zixir: interrupted; runs in flight are checkpointed (zixir runs resume)"]
    shown = zixir(data, "runs", "show", "c1", "--json")
    assert list(json.loads(shown.stdout)["checkpoints"]) == ["first"]
    release.touch()
    resumed = zixir(data, "runs", "resume", "c1", "--json")
    summary = json.loads(resumed.stdout[resumed.stdout.index("{"):])
    assert summary["steps"]["first"]["status"] == "cached" and summary["outputs"]["second"] == 42


# -- installed copies ------------------------------------------------------------------------


def _source_copy(dest: Path) -> Path:
    """What a source distribution holds: the packages and the packaging files."""
    import shutil

    ignore = shutil.ignore_patterns("__pycache__", "results", "*.egg-info")
    dest.mkdir()
    for name in ("pyproject.toml", "setup.cfg", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    for package in ("supervisors", "zixir_actors", "benchmarks"):
        shutil.copytree(ROOT / package, dest / package, ignore=ignore)
    return dest


def _pip(*args: str, python: Path | None = None) -> None:
    into = [] if python is None else ["--python", str(python)]
    result = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *into,
                             "install", "--quiet", "--no-deps", *args],
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_zixir_bench_runs_from_an_installed_copy(tmp_path: Path) -> None:
    site = tmp_path / "site"
    _pip("--target", str(site), str(_source_copy(tmp_path / "src")))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import benchmarks, zixir_actors; "
                            "print(benchmarks.__file__); print(zixir_actors.__file__)"],
                           cwd=outside, env=env, capture_output=True, text=True, timeout=60,
                           check=True).stdout.split()
    assert all(path.startswith(str(site)) for path in where), where
    bench = subprocess.run([sys.executable, str(site / "bin" / "zixir"), "bench", "--quick",
                            "supervisors"], cwd=outside, env=env, capture_output=True, text=True,
                           timeout=300, check=False)
    assert bench.returncode == 0, bench.stderr[-3000:]
    assert "ask via ref(name)" in bench.stdout
    report = json.loads((outside / "zixir-bench-results" / "latest.json").read_text())
    assert {f["subject"] for f in report["figures"]} == {"supervisors"}


USER_CODE = textwrap.dedent('''
    import zixir_actors
    from zixir_actors import Cache, Workflow

    wf: Workflow = Workflow("typed")
    version: str = zixir_actors.__version__
    cache: Cache | None = None
''')


@pytest.mark.slow
def test_an_editable_install_gives_mypy_strict_the_package_types(tmp_path: Path) -> None:
    import sysconfig

    pytest.importorskip("mypy")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    # The venv sees this interpreter's packages (mypy, pykka...) as a plain path: the
    # .pth files there (this checkout's own editable install) are not processed.
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(purelib) / "parent.pth").write_text("\n".join(sorted(ours)) + "\n")
    _pip("-e", str(_source_copy(tmp_path / "src")), python=python)
    user = tmp_path / "app"
    user.mkdir()
    (user / "main.py").write_text(USER_CODE)
    (user / "wrong.py").write_text(USER_CODE + "count: int = Workflow('x')\n")

    def mypy(name: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH")}
        return subprocess.run([str(python), "-m", "mypy", "--strict", "--no-incremental",
                               name], cwd=user, env=env, capture_output=True, text=True,
                              timeout=600, check=False)

    typed = mypy("main.py")
    assert typed.returncode == 0, typed.stdout + typed.stderr
    wrong = mypy("wrong.py")   # the package's types are really used
    assert wrong.returncode == 1 and 'Incompatible types in assignment (expression has type ' \
        '"Workflow", variable has type "int")' in wrong.stdout, wrong.stdout


HOG = textwrap.dedent('''
    from zixir_actors.sandbox import Limits
    from zixir_actors.workflow import RetryPolicy, Workflow

    hog = Workflow("cli-hog", on_failure="continue")

    @hog.step(retry=RetryPolicy(max_attempts=2, initial_delay=0.0123456789, jitter=0.0))
    def flaky(n, ctx):
        if ctx.attempt < 2:
            raise ConnectionError("try again")
        return n

    @hog.step(limits=Limits(memory="64MB", timeout=60), retry=RetryPolicy(max_attempts=1))
    def eat(n):
        blocks = [bytearray(16 * 1024 * 1024) for _ in range(16)]
        return len(blocks)
''')


def test_human_log_lines_name_the_step_and_run_and_round_floats(tmp_path: Path) -> None:
    import re

    flows = tmp_path / "hog.py"
    flows.write_text(HOG)
    ran = zixir(tmp_path / "data", "run", str(flows), "--run-id", "m1", "--input", "n=1")
    assert ran.returncode == 1, ran.stderr       # `eat` is killed by its memory limit
    lines = {line.split(" | ")[3].split(" workflow=")[0]: line
             for line in ran.stderr.splitlines() if line.count(" | ") >= 3}
    for message, step in (("step failed, retrying", "flaky"),
                          ("sandbox worker killed: memory", "eat"),   # logged by the sandbox
                          ("step dead-lettered", "eat")):
        line = next(text for key, text in lines.items() if key.startswith(message))
        assert f"workflow=cli-hog run_id=m1 step={step} " in line, line
    assert " delay=0.01235 " in lines["step failed, retrying"]
    floats = re.findall(r" \w+=(-?\d+\.\d+)\b", ran.stderr)
    assert floats and all(len(f.replace("-", "").replace(".", "").lstrip("0")) <= 5
                          for f in floats), floats
