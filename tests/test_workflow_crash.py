"""Crash safety: SIGKILL a 30-step workflow at random points, resume it in a new process.

Every step appends a line to its own file just before it returns, so the
files count executions across processes. After each kill the parent reads
which checkpoints were committed. The durability contract says: a step
whose checkpoint was committed never runs again; a step that was in flight
(it ran, but its checkpoint was not committed) runs again. So each step ran
exactly once plus once per kill that caught it in flight, and the final
outputs are right.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from zixir_actors.checkpoint import open_store
from zixir_actors.testing import wait_for

STEPS = 30
RUN_ID = "crash-run"
PROCESS_TIMEOUT = 60.0

CHILD = textwrap.dedent('''
    import json, os, random, sys, time
    from zixir_actors.checkpoint import open_store
    from zixir_actors.workflow import Step, Workflow

    data_dir, counts = sys.argv[1], sys.argv[2]

    def make(i):
        def step(seed, **deps):
            time.sleep(random.random() * 0.01)
            fd = os.open(os.path.join(counts, f"s{i}"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            os.write(fd, b"ran\\n")
            os.close(fd)
            time.sleep(random.random() * 0.02)
            return seed + i + sum(deps.values())
        return step

    # Three interleaved chains (s{i} needs s{i-3}) joined every ninth step.
    wf = Workflow("crash-safety", max_concurrency=3)
    for i in range(30):
        deps = [f"s{i - 3}"] if i >= 3 else []
        if i % 9 == 8:
            deps += [f"s{i - 1}", f"s{i - 2}"]
        wf.add(Step(f"s{i}", make(i), depends_on=deps, version="1"))
    with open_store(data_dir) as store:
        result = wf.run({"seed": 100}, run_id="crash-run", store=store)
    print(json.dumps({"status": result.status, "outputs": result.outputs}))
''')


def expected_outputs() -> dict[str, int]:
    out: dict[str, int] = {}
    for i in range(STEPS):
        deps = [f"s{i - 3}"] if i >= 3 else []
        if i % 9 == 8:
            deps += [f"s{i - 1}", f"s{i - 2}"]
        out[f"s{i}"] = 100 + i + sum(out[d] for d in deps)
    return out


def counts(directory: Path) -> dict[str, int]:
    return {f"s{i}": len((directory / f"s{i}").read_bytes().splitlines())
            if (directory / f"s{i}").exists() else 0 for i in range(STEPS)}


def committed(data_dir: Path) -> set[str]:
    with open_store(data_dir) as store:
        return set(store.steps(RUN_ID))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [7, 2024])
def test_sigkill_at_random_points_then_resume_runs_committed_steps_once(
        tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    data_dir, count_dir = tmp_path / "data", tmp_path / "counts"
    count_dir.mkdir()
    root = str(Path(__file__).resolve().parent.parent)
    command = [sys.executable, str(script), str(data_dir), str(count_dir)]
    env = {**os.environ, "PYTHONPATH": root}
    reruns_expected = dict.fromkeys(expected_outputs(), 0)
    kills = 0
    for _ in range(4):
        before = counts(count_dir)
        target = sum(before.values()) + rng.randint(2, 10)
        child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda proc=child, goal=target: proc.poll() is not None
                     or sum(counts(count_dir).values()) >= goal,
                     timeout=PROCESS_TIMEOUT, interval=0.002)
            finished = child.poll() is not None
            child.kill()
        finally:
            child.wait(PROCESS_TIMEOUT)
            assert child.stdout is not None
            child.stdout.close()
        if finished:
            break
        kills += 1
        after, done = counts(count_dir), committed(data_dir)
        for name in after:
            if after[name] > before[name] and name not in done:
                reruns_expected[name] += 1  # ran, but killed before its commit
    assert kills >= 1
    final = subprocess.run(command, env=env, capture_output=True, text=True,
                           timeout=PROCESS_TIMEOUT, check=True)
    report = json.loads(final.stdout.strip().splitlines()[-1])
    assert report["status"] == "succeeded"
    assert report["outputs"] == expected_outputs()
    executions = counts(count_dir)
    assert executions == {name: 1 + n for name, n in reruns_expected.items()}
