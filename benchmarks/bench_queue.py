"""Durable queues: throughput of no-op runs with 1, 2 and 4 processes, enqueue-to-start latency.

Ours: runs are enqueued durably (one fsync each) by this process, which has
no runtime; 1, 2 or 4 worker processes run ``zixir_actors.start()`` on the
same directory and define the workflow (one no-op step) only once told to
go, so every process starts draining at the same moment. Throughput is
runs / (end of the last run - go); each run's record is written at its start
and its end, its step checkpoint once (every commit durable).

Baselines, measured in the same run:

- ``multiprocessing.Queue``: the same number of processes take the same
  number of no-op tasks from a queue and answer on another one (a hand-off
  with no durability: the floor of moving work between processes);
- DBOS queues on SQLite (when the ``bench`` extra is installed): one DBOS
  process, ``DBOS.register_queue(polling_interval_sec=0.05)`` (our idle
  poll is 0.05 s too; DBOS's default is 1 s), a no-op ``@DBOS.workflow``.

Latency: a run is enqueued while the worker process is idle and its step
reports when it started; the hand-off of a ``multiprocessing.Queue`` and of
DBOS are measured the same way.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from benchmarks._harness import Figure, main, percentile

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 600.0

WORKER = textwrap.dedent('''
    import sys, time
    import zixir_actors
    from zixir_actors import Workflow

    with zixir_actors.start(data_dir=sys.argv[1]):
        print("ready", flush=True)
        sys.stdin.readline()  # "go": only now can this process run the workflow
        wf = Workflow("bench-noop")

        @wf.step()
        def noop(i):
            return time.time()

        sys.stdin.read()  # until the parent closes it
''')

DBOS_SCRIPT = textwrap.dedent('''
    import json, os, sys, time
    from dbos import DBOS

    data_dir, n, m = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    DBOS(config={"name": "bench-queue", "log_level": "WARNING",
                 "system_database_url": f"sqlite:///{data_dir}/dbos.sqlite"})

    @DBOS.workflow()
    def noop(i):
        return time.time()

    DBOS.launch()
    q = DBOS.register_queue("bench", polling_interval_sec=0.05)
    for i in range(5):
        q.enqueue(noop, i).get_result()
    t0 = time.time()
    handles = [q.enqueue(noop, i) for i in range(n)]
    for h in handles:
        h.get_result()
    thr = n / (time.time() - t0)
    lat = []
    for i in range(m):
        t = time.time()
        lat.append(q.enqueue(noop, i).get_result() - t)
    print(json.dumps({"throughput": thr, "latency": lat}), flush=True)
    DBOS.destroy()
    os._exit(0)
''')


def _noop_workflow() -> Any:
    from zixir_actors import Workflow

    wf = Workflow("bench-noop")

    @wf.step()
    def noop(i: int) -> float:
        return time.time()

    return wf


class _Workers:
    """`n` worker processes with a runtime on `data_dir`, told to go together."""

    def __init__(self, data_dir: str, n: int) -> None:
        script = Path(data_dir).parent / "bench_queue_worker.py"
        script.write_text(WORKER)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.children = [subprocess.Popen([sys.executable, str(script), data_dir], env=env,
                                          text=True, stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                         for _ in range(n)]
        for child in self.children:
            assert child.stdout is not None
            if child.stdout.readline().strip() != "ready":
                self.close()
                raise RuntimeError("a queue worker did not start")

    def go(self) -> float:
        now = time.time()
        for child in self.children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        return now

    def close(self) -> None:
        for child in self.children:
            if child.stdin is not None:
                with contextlib.suppress(OSError):
                    child.stdin.close()
        for child in self.children:
            try:
                child.wait(60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(60)
            if child.stdout is not None:
                child.stdout.close()


def ours_throughput(processes: int, n: int) -> float:
    """Runs per second that `processes` workers drain from one queue."""
    from zixir_actors import Queue
    from zixir_actors.checkpoint import open_store

    wf = _noop_workflow()
    with tempfile.TemporaryDirectory(prefix="bench-queue-") as tmp:
        data = str(Path(tmp) / "data")
        with open_store(data) as store:
            queue = Queue("bench", store=store)
            ids = [queue.enqueue(wf, {"i": i}).run_id for i in range(n)]
            workers = _Workers(data, processes)
            try:
                started = workers.go()
                deadline = time.monotonic() + TIMEOUT
                while len(store.list_runs(status="succeeded")) < n:
                    if time.monotonic() > deadline:
                        raise TimeoutError("the queue did not drain")
                    time.sleep(0.05)
                ended = max(store.get_run(i).updated_at for i in ids)
            finally:
                workers.close()
    return n / (ended - started)


def ours_latency(n: int) -> list[float]:
    """Seconds from `enqueue` to the step's start, one run at a time, worker idle."""
    from zixir_actors import Queue
    from zixir_actors.checkpoint import open_store

    wf = _noop_workflow()
    with tempfile.TemporaryDirectory(prefix="bench-queue-") as tmp:
        data = str(Path(tmp) / "data")
        with open_store(data) as store:
            queue = Queue("bench-latency", store=store)
            workers = _Workers(data, 1)
            try:
                workers.go()
                queue.enqueue(wf, {"i": -1}).result(timeout=TIMEOUT)  # warm-up
                out = []
                for i in range(n):
                    time.sleep(0.06)  # let the worker go idle again
                    enqueued = time.time()
                    result = queue.enqueue(wf, {"i": i}).result(timeout=TIMEOUT)
                    out.append(result.outputs["noop"] - enqueued)
            finally:
                workers.close()
    return out


def _mp_worker(tasks: Any, done: Any) -> None:
    while True:
        item = tasks.get()
        if item is None:
            return
        done.put(time.time())


def mp_handoff(processes: int, n: int, latency: int) -> tuple[float, list[float]]:
    """multiprocessing.Queue: tasks per second through `processes` workers, and hand-off times."""
    ctx = multiprocessing.get_context("spawn")
    tasks, done = ctx.Queue(), ctx.Queue()
    workers = [ctx.Process(target=_mp_worker, args=(tasks, done)) for _ in range(processes)]
    for w in workers:
        w.start()
    try:
        for _ in range(processes):  # warm-up: every worker is up
            tasks.put(0)
        for _ in range(processes):
            done.get(timeout=TIMEOUT)
        started = time.time()
        for i in range(n):
            tasks.put(i)
        for _ in range(n):
            done.get(timeout=TIMEOUT)
        rate = n / (time.time() - started)
        lat = []
        for i in range(latency):
            time.sleep(0.01)
            sent = time.time()
            tasks.put(i)
            lat.append(done.get(timeout=TIMEOUT) - sent)
    finally:
        for _ in workers:
            tasks.put(None)
        for w in workers:
            w.join(60)
    return rate, lat


def dbos(n: int, latency: int) -> dict[str, Any] | None:
    """DBOS queues on SQLite in a child process, or None without the `bench` extra."""
    if importlib.util.find_spec("dbos") is None:
        return None
    with tempfile.TemporaryDirectory(prefix="bench-queue-dbos-") as tmp:
        script = Path(tmp) / "dbos_queue.py"
        script.write_text(DBOS_SCRIPT)
        try:
            child = subprocess.run([sys.executable, str(script), tmp, str(n), str(latency)],
                                   capture_output=True, text=True, timeout=TIMEOUT,
                                   check=False, cwd=tmp)
        except subprocess.TimeoutExpired:
            return None
        for line in child.stdout.splitlines():
            with contextlib.suppress(ValueError):
                found = json.loads(line)
                if isinstance(found, dict):
                    return found
    return None


def run(quick: bool = False) -> list[Figure]:
    n = 150 if quick else 1500
    m = 15 if quick else 150
    figures = []
    peer = dbos(n // 2, m)
    for processes in (1, 2, 4):
        ours = ours_throughput(processes, n)
        base, _ = mp_handoff(processes, n, 0)
        extra = {"dbos_1_process_runs_per_s": peer["throughput"]} if peer else {}
        figures.append(Figure(
            "queue", f"throughput, {processes} process{'es' if processes > 1 else ''}",
            ours=ours, baseline=base, unit="runs/s",
            baseline_name=f"multiprocessing.Queue hand-off, {processes} process(es), "
                          "not durable", better="higher", extra=extra,
            note=f"{n} no-op runs enqueued durably, then drained"))
    lat = ours_latency(m)
    _, base_lat = mp_handoff(1, 0, m)
    for q in (50, 99):
        extra = {f"dbos_p{q}_ms": percentile(peer["latency"], q) * 1e3} if peer else {}
        figures.append(Figure(
            "queue", f"enqueue-to-start latency p{q}, other process",
            ours=percentile(lat, q) * 1e3, baseline=percentile(base_lat, q) * 1e3, unit="ms",
            baseline_name="multiprocessing.Queue put -> get in another process", extra=extra,
            note="includes the enqueue's fsync and the idle worker's poll (0.05 s)"))
    if peer is not None:
        figures.append(Figure(
            "queue", "throughput, 1 process, vs DBOS", ours=figures[0].ours,
            baseline=peer["throughput"], unit="runs/s",
            baseline_name="DBOS queue on SQLite, 1 process (polling 0.05 s)",
            better="higher"))
        figures.append(Figure(
            "queue", "enqueue-to-start latency p50, vs DBOS",
            ours=percentile(lat, 50) * 1e3, baseline=percentile(peer["latency"], 50) * 1e3,
            unit="ms", baseline_name="DBOS queue on SQLite, 1 process (polling 0.05 s)"))
    return figures


if __name__ == "__main__":
    main(run)
