"""Durable queues: limits shared by every process on a data directory, dedupe, priority."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _subprocess import project_env

import zixir_actors
from zixir_actors import Queue, Workflow
from zixir_actors.checkpoint import open_store
from zixir_actors.errors import ConfigError, DuplicateRunError, ZixirTimeoutError
from zixir_actors.observability import metrics
from zixir_actors.queue import parse_rate, queue_stats
from zixir_actors.testing import wait_for

WAIT = 60.0


# -- in one process -----------------------------------------------------------------


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[tuple[Workflow, threading.Event, list[str]]]:
    """A runtime and a workflow whose runs record their tag, the first one waiting on a gate."""
    gate = threading.Event()
    started: list[str] = []
    wf = Workflow(f"gated-{tmp_path.name}")

    @wf.step()
    def work(tag: str) -> str:
        started.append(tag)
        if tag == "blocker":
            assert gate.wait(WAIT)
        return tag

    with zixir_actors.start(data_dir=tmp_path):
        try:
            yield wf, gate, started
        finally:
            gate.set()


def test_enqueue_returns_at_once_and_the_worker_runs_it(tmp_path: Path) -> None:
    wf = Workflow("q-echo")

    @wf.step()
    def echo(text: str) -> str:
        return text.upper()

    with zixir_actors.start(data_dir=tmp_path):
        handle = Queue("q-echo").enqueue(wf, {"text": "hi"}, run_id="r1")
        result = handle.result(timeout=WAIT)
        assert result.status == "succeeded" and result.outputs["echo"] == "HI"
        assert handle.status() == "succeeded"
        record = zixir_actors.checkpoint.connect().get_run("r1")
        assert record.owner == zixir_actors.current().id  # type: ignore[union-attr]

        async def enqueue_and_await() -> Any:
            handle = Queue("q-echo").enqueue(wf, {"text": "async"})
            return await handle

        assert asyncio.run(enqueue_and_await()).outputs["echo"] == "ASYNC"
        waited = Queue("q-echo").enqueue(wf, {"text": "w"})
        assert waited.wait(timeout=WAIT) == "succeeded"


def test_runs_wait_for_a_free_slot_then_start_by_priority(gated: Any) -> None:
    wf, gate, started = gated
    queue = Queue("q-prio", concurrency=1, priority=True)
    blocker = queue.enqueue(wf, {"tag": "blocker"})
    wait_for(lambda: started == ["blocker"], timeout=WAIT)
    handles = [queue.enqueue(wf, {"tag": tag}, priority=p)
               for tag, p in [("low", 1), ("top-a", 5), ("mid", 3), ("top-b", 5), ("zero", 0)]]
    assert {h.status() for h in handles} == {"queued"}
    stats = queue.stats()
    assert (stats.depth, stats.running) == (5, 1)
    gate.set()
    assert blocker.result(timeout=WAIT).ok
    assert all(h.result(timeout=WAIT).ok for h in handles)
    assert started == ["blocker", "top-a", "top-b", "mid", "low", "zero"]


def test_a_dedupe_key_is_refused_while_its_run_is_queued_or_running(gated: Any) -> None:
    wf, gate, _ = gated
    queue = Queue("q-dedupe", concurrency=1)
    first = queue.enqueue(wf, {"tag": "blocker"}, dedupe_key="user-7")
    with pytest.raises(DuplicateRunError) as caught:
        queue.enqueue(wf, {"tag": "other"}, dedupe_key="user-7")
    assert caught.value.dedupe_key == "user-7" and caught.value.run_id == first.run_id
    assert caught.value.queue == "q-dedupe" and "user-7" in str(caught.value)
    with pytest.raises(DuplicateRunError) as by_id:
        queue.enqueue(wf, {"tag": "x"}, run_id=first.run_id)
    assert by_id.value.run_id == first.run_id and by_id.value.dedupe_key is None
    same = queue.handle(caught.value.run_id, wf)
    gate.set()
    assert same.result(timeout=WAIT).outputs["work"] == "blocker"
    again = queue.enqueue(wf, {"tag": "later"}, dedupe_key="user-7")  # free once it ended
    assert again.result(timeout=WAIT).outputs["work"] == "later"
    assert queue.stats().depth == 0


def test_a_queued_run_can_be_cancelled_and_never_starts(gated: Any) -> None:
    wf, gate, started = gated
    queue = Queue("q-cancel", concurrency=1)
    blocker = queue.enqueue(wf, {"tag": "blocker"})
    wait_for(lambda: started == ["blocker"], timeout=WAIT)
    doomed = queue.enqueue(wf, {"tag": "doomed"})
    with pytest.raises(ZixirTimeoutError):
        doomed.result(timeout=0.2)  # every wait takes a timeout
    assert doomed.cancel() is True
    assert doomed.result(timeout=WAIT).status == "cancelled"
    gate.set()
    assert blocker.result(timeout=WAIT).ok
    after = queue.enqueue(wf, {"tag": "after"})
    assert after.result(timeout=WAIT).ok
    assert "doomed" not in started


def test_metrics_depth_wait_and_rate_limited(gated: Any) -> None:
    wf, _, started = gated
    queue = Queue("q-metrics", rate=(2, 3600.0))
    handles = [queue.enqueue(wf, {"tag": f"m{i}"}) for i in range(4)]
    assert [h.result(timeout=WAIT).ok for h in handles[:2]] == [True, True]
    wait_for(lambda: metrics.sample("zixir_queue_rate_limited_total",
                                    {"queue": "q-metrics"}) == 2.0, timeout=WAIT)
    wait_for(lambda: metrics.sample("zixir_queue_depth", {"queue": "q-metrics"}) == 2.0,
             timeout=WAIT)
    assert metrics.sample("zixir_queue_wait_seconds_count", {"queue": "q-metrics"}) == 2.0
    assert len(started) == 2 and [h.status() for h in handles[2:]] == ["queued", "queued"]
    for handle in handles[2:]:
        assert handle.cancel()


def test_a_process_with_max_local_0_only_enqueues(tmp_path: Path) -> None:
    wf = Workflow("q-enqueue-only")

    @wf.step()
    def nothing(n: int) -> int:
        return n

    with zixir_actors.start(data_dir=tmp_path, queues={"max_local": 0}):
        handle = Queue("q-only").enqueue(wf, {"n": 1})
        with pytest.raises(ZixirTimeoutError):
            handle.result(timeout=0.3)
        assert handle.status() == "queued" and queue_stats()[0].depth == 1


def test_bad_limits_rates_and_priorities_are_refused(tmp_path: Path) -> None:
    assert parse_rate("60/min") == (60, 60.0) and parse_rate("5/10s") == (5, 10.0)
    assert parse_rate("1000/h") == (1000, 3600.0) and parse_rate((20, 1)) == (20, 1.0)
    for bad in ("fast", "0/s", "3/fortnight", (0, 1.0), (5, 0)):
        with pytest.raises(ConfigError):
            Queue("q-bad", rate=bad)  # type: ignore[arg-type]
    for name, value in (("concurrency", 0), ("per_process", -1), ("concurrency", 1.5)):
        with pytest.raises(ConfigError):
            Queue("q-bad", **{name: value})
    with pytest.raises(ConfigError):
        Queue("")
    wf = Workflow("q-bad-wf")

    @wf.step()
    def one(n: int) -> int:
        return n

    with zixir_actors.start(data_dir=tmp_path):
        with pytest.raises(ConfigError):
            Queue("q-fifo").enqueue(wf, {"n": 1}, priority=3)
        with pytest.raises(ConfigError):
            Queue("q-fifo").enqueue(wf, {"n": 1}, dedupe_key="")
        assert queue_stats() == []  # nothing was stored


# -- many processes ---------------------------------------------------------------------

WORKER = textwrap.dedent('''
    import os, sys, time
    import zixir_actors
    from zixir_actors import Workflow

    EVENTS = os.environ.get("EVENTS_FILE", "")
    SLEEP = float(os.environ.get("STEP_SLEEP", "0"))
    wf = Workflow("q-shared")

    def log(kind, tag):
        line = f"{kind} {os.getpid()} {tag} {time.time():.6f}\\n"
        fd = os.open(EVENTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    @wf.step()
    def work(tag):
        log("S", tag)
        time.sleep(SLEEP)
        log("E", tag)
        return tag

    if __name__ == "__main__":
        with zixir_actors.start(data_dir=sys.argv[1]):
            print("ready", flush=True)
            sys.stdin.read()  # until the parent closes it
''')


def _workers(tmp_path: Path, n: int, sleep: float) -> list[subprocess.Popen[str]]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**project_env(), "STEP_SLEEP": str(sleep),
           "EVENTS_FILE": str(tmp_path / "events.log")}
    children = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "data")],
                                 env=env, text=True,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL) for _ in range(n)]
    for child in children:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    return children


def _finish(children: list[subprocess.Popen[str]], *, kill: bool = False) -> None:
    for child in children:
        if kill:
            child.send_signal(signal.SIGKILL)
        elif child.stdin is not None:
            child.stdin.close()
    for child in children:
        try:
            child.wait(WAIT)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(WAIT)
        for stream in (child.stdin, child.stdout):
            if stream is not None and not stream.closed:
                stream.close()


def _events(tmp_path: Path) -> list[tuple[str, int, str, float]]:
    out = []
    for line in (tmp_path / "events.log").read_text().splitlines():
        kind, pid, tag, at = line.split()
        out.append((kind, int(pid), tag, float(at)))
    return out


def _shared_workflow(tmp_path: Path) -> Workflow:
    namespace: dict[str, Any] = {"__name__": "q_parent"}
    exec(WORKER, namespace)  # the same workflow, defined here without a runtime
    namespace["EVENTS"] = str(tmp_path / "events.log")
    namespace["SLEEP"] = 0.0
    wf: Workflow = namespace["wf"]
    return wf


@pytest.mark.slow
def test_concurrency_holds_across_four_processes(tmp_path: Path) -> None:
    children = _workers(tmp_path, 4, sleep=0.05)
    try:
        wf = _shared_workflow(tmp_path)
        with open_store(tmp_path / "data") as store:  # this process only enqueues
            queue = Queue("q-global", concurrency=2, per_process=1, store=store)
            handles = [queue.enqueue(wf, {"tag": f"t{i}"}) for i in range(30)]
            results = [h.result(timeout=WAIT) for h in handles]
    finally:
        _finish(children)
    assert all(r.ok for r in results)
    running: Counter[int] = Counter()
    most = most_one = 0
    for kind, pid, _, _ in _events(tmp_path):
        running[pid] += 1 if kind == "S" else -1
        most = max(most, sum(running.values()))
        most_one = max(most_one, running[pid])
    starts = [e for e in _events(tmp_path) if e[0] == "S"]
    assert sorted(e[2] for e in starts) == sorted(f"t{i}" for i in range(30))  # each once
    assert most == 2 and most_one == 1
    assert len({e[1] for e in starts}) >= 2


@pytest.mark.slow
def test_a_rate_of_20_per_second_holds_across_processes(tmp_path: Path) -> None:
    children = _workers(tmp_path, 2, sleep=0.0)
    try:
        wf = _shared_workflow(tmp_path)
        with open_store(tmp_path / "data") as store:
            queue = Queue("q-rate", rate="20/s", store=store)
            handles = [queue.enqueue(wf, {"tag": f"r{i}"}) for i in range(240)]
            results = [h.result(timeout=WAIT) for h in handles]
    finally:
        _finish(children)
    assert all(r.ok for r in results)
    starts = sorted(e[3] for e in _events(tmp_path) if e[0] == "S")
    assert len(starts) == 240
    window = [t for t in starts if t < starts[0] + 10.0]
    assert 180 <= len(window) <= 220, len(window)  # a 2x burst per period would give ~400


@pytest.mark.slow
def test_queued_runs_survive_kill_9_of_every_process(tmp_path: Path) -> None:
    children = _workers(tmp_path, 2, sleep=120.0)
    wf = _shared_workflow(tmp_path)
    try:
        with open_store(tmp_path / "data") as store:
            queue = Queue("q-survive", concurrency=1, store=store)
            ids = [queue.enqueue(wf, {"tag": f"k{i}"}).run_id for i in range(5)]
            wait_for(lambda: any(r.status == "running" for r in store.list_runs()),
                     timeout=WAIT)
    finally:
        _finish(children, kill=True)
    # this process defines the workflow (its step does not sleep here) and starts a runtime
    with zixir_actors.start(data_dir=tmp_path / "data") as runtime:
        store = zixir_actors.checkpoint.connect()
        wait_for(lambda: all(store.get_run(i).status == "succeeded" for i in ids),
                 timeout=WAIT)
        assert {r.owner for r in store.list_runs()} == {runtime.id}
    here = [e for e in _events(tmp_path) if e[1] == os.getpid()]
    assert sorted(e[2] for e in here if e[0] == "E") == [f"k{i}" for i in range(5)]
    # The killed run was taken over, and held the only slot meanwhile.
    assert all(here[i][0] == "S" and here[i + 1][0] == "E" and here[i][2] == here[i + 1][2]
               for i in range(0, len(here), 2))


def test_queues_command_lists_and_shows(tmp_path: Path) -> None:
    wf = Workflow("q-cli")

    @wf.step()
    def nothing(n: int) -> int:
        return n

    with open_store(tmp_path) as store:  # no runtime: the runs stay queued
        queue = Queue("q-cli", concurrency=3, rate="60/min", store=store)
        for i in range(3):
            queue.enqueue(wf, {"n": i})
    env = project_env()
    listed = subprocess.run([sys.executable, "-m", "zixir_actors", "--data-dir", str(tmp_path),
                             "queues", "list", "--json"], capture_output=True, text=True,
                            env=env, timeout=WAIT, check=False)
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert (row["queue"], row["depth"], row["running"], row["concurrency"]) == \
        ("q-cli", 3, 0, 3)
    shown = subprocess.run([sys.executable, "-m", "zixir_actors", "--data-dir", str(tmp_path),
                            "queues", "show", "q-cli"], capture_output=True, text=True,
                           env=env, timeout=WAIT, check=False)
    assert shown.returncode == 0, shown.stderr
    assert "60/60s" in shown.stdout and shown.stdout.count("q-cli") >= 4
    missing = subprocess.run([sys.executable, "-m", "zixir_actors", "--data-dir", str(tmp_path),
                              "queues", "show", "nope"], capture_output=True, text=True,
                             env=env, timeout=WAIT, check=False)
    assert missing.returncode == 2 and "no queue 'nope'" in missing.stderr
