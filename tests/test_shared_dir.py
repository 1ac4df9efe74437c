"""Many processes on one data directory: shared store, ownership, takeover, shared caches."""

from __future__ import annotations

import collections
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from _subprocess import project_env

import zixir_actors
from zixir_actors import durable
from zixir_actors._runtimes import live_runtimes
from zixir_actors.cache import Cache
from zixir_actors.checkpoint import open_store
from zixir_actors.errors import RunActiveError
from zixir_actors.testing import wait_for

WORKER = Path(__file__).resolve().parent / "_shared_worker.py"
WAIT = 60.0


def _env() -> dict[str, str]:
    env = project_env()
    env.pop("ZIXIR_DATA_DIR", None)
    return env


class Workers:
    """Worker processes (tests/_shared_worker.py) on one directory."""

    def __init__(self, data_dir: Path, log: Path) -> None:
        self.data_dir, self.log = data_dir, log
        self.procs: list[subprocess.Popen[str]] = []

    def spawn(self, *args: str, wait: bool = True) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, str(WORKER), str(self.data_dir),
                                 str(self.log), *args],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                env=_env())
        self.procs.append(proc)
        if wait:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # until the runtime is up (or the process died)
            assert line.startswith("ready"), f"worker did not start: {line!r}"
        return proc

    def alive(self) -> list[subprocess.Popen[str]]:
        return [p for p in self.procs if p.poll() is None]

    def kill(self, proc: subprocess.Popen[str]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=WAIT)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()

    def close(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None and not proc.stdin.closed:
                proc.stdin.close()  # a clean stop for the live ones
        for proc in self.procs:
            try:
                proc.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=WAIT)
            if proc.stdout is not None and not proc.stdout.closed:
                proc.stdout.close()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    group = Workers(tmp_path / "data", tmp_path / "steps.log")
    try:
        yield group
    finally:
        group.close()


def _lines(log: Path) -> list[tuple[str, int, int]]:
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        run_id, step, pid = line.split()
        out.append((run_id, int(step), int(pid)))
    return out


def _statuses(data_dir: Path) -> dict[str, str]:
    with open_store(data_dir) as store:
        return {r.run_id: r.status for r in store.list_runs()}


def _owner_pids(data_dir: Path) -> set[int]:
    with open_store(data_dir) as store:
        return {int(r.owner.split(":")[1]) for r in store.list_runs()
                if r.status == "running" and r.owner}


@pytest.mark.slow
def test_four_processes_take_over_each_others_runs_through_twenty_kills(
        workers: Workers) -> None:
    runs, steps = 3, 3000
    workers.spawn("--start", str(runs), "--steps", str(steps))
    for _ in range(3):
        workers.spawn()
    rng = random.Random(7)
    kills = 0
    while kills < 20:
        owners = _owner_pids(workers.data_dir)
        victims = [p for p in workers.alive() if p.pid in owners]
        if not victims:
            statuses = _statuses(workers.data_dir)
            if all(s == "succeeded" for s in statuses.values()):
                break  # every run ended
            # Between an owner's death and the takeover no live process owns a run.
            wait_for(lambda: bool(_owner_pids(workers.data_dir) & {
                p.pid for p in workers.alive()}) or set(
                _statuses(workers.data_dir).values()) == {"succeeded"}, timeout=WAIT,
                what="a live process owns the runs")
            continue
        victim = rng.choice(victims)
        seen = len(_lines(workers.log))
        workers.kill(victim)  # in the middle of its runs' steps
        kills += 1
        workers.spawn(wait=False)
        # Another process takes the runs over and their steps go on.
        wait_for(lambda v=victim.pid, n=seen: any(
            pid != v for _, _, pid in _lines(workers.log)[n:]), timeout=WAIT,
            what="another process continues the runs")
    assert kills >= 20, "the runs ended before 20 kills: give them more steps"
    wait_for(lambda: all(s == "succeeded" for s in _statuses(workers.data_dir).values()),
             timeout=240, what="every run succeeds after the takeovers")
    lines = _lines(workers.log)
    for n in range(runs):
        counts = collections.Counter(step for run_id, step, _ in lines if run_id == f"run-{n}")
        assert set(counts) == set(range(steps)), "a step never ran"
        # Only a step in flight at a kill runs twice: at most one per kill.
        assert sum(c - 1 for c in counts.values()) <= kills
    assert len({pid for _, _, pid in lines}) > 1, "nobody took over"
    with open_store(workers.data_dir) as store:
        for n in range(runs):
            record = store.get_run(f"run-{n}")
            assert record.status == "succeeded"


def test_a_second_runtime_on_the_same_directory_starts_and_sees_the_first(
        workers: Workers, tmp_path: Path) -> None:
    workers.spawn()
    with zixir_actors.start(workers.data_dir, sandbox_workers=0) as runtime:
        from zixir_actors.checkpoint import connect

        ids = {info.id for info in live_runtimes(connect())}
        assert runtime.id in ids and len(ids) == 2


def test_a_run_owned_by_a_live_runtime_is_not_started_twice(workers: Workers) -> None:
    workers.spawn("--start", "1", "--steps", "100000", "--pause", "0.001")
    wait_for(lambda: len(_lines(workers.log)) > 0, timeout=WAIT, what="the run started")

    @durable("shared-loop")
    def loop(ctx, steps: int) -> int:  # type: ignore[no-untyped-def]
        return steps

    with zixir_actors.start(workers.data_dir, sandbox_workers=0, resume_runs=True) as rt:
        assert rt.resumed == []  # its owner lives: not ours to continue
        with pytest.raises(RunActiveError) as caught:
            loop.start({"steps": 1}, run_id="run-0")
        assert caught.value.owner is not None and caught.value.owner != rt.id


def test_a_confirmed_cache_write_is_seen_by_another_process(tmp_path: Path) -> None:
    data = tmp_path / "data"
    script = (
        "import sys, zixir_actors\n"
        "from zixir_actors.cache import Cache\n"
        f"zixir_actors.start({str(data)!r}, sandbox_workers=0)\n"
        "c = Cache.start('shared', persist=True)\n"
        "op, key, value = sys.argv[1:4]\n"
        "c.put(key, value) if op == 'put' else c.delete(key)\n"
        "zixir_actors.stop()\n")

    def other(*args: str) -> None:
        subprocess.run([sys.executable, "-c", script, *args], env=_env(), check=True,
                       timeout=WAIT, capture_output=True)

    with zixir_actors.start(data, sandbox_workers=0):
        cache = Cache.start("shared", persist=True)
        cache.put("model", "old")
        assert cache.get("model") == "old"
        other("put", "model", "new")  # the split-brain case: another process overwrites
        wait_for(lambda: cache.get("model") == "new", timeout=WAIT,
                 what="the other process's value")
        other("put", "fresh", "1")  # never in this memory: a miss reads through
        assert cache.get("fresh") == "1"
        other("delete", "model", "-")
        wait_for(lambda: cache.get("model") is None, timeout=WAIT, what="the delete")
    # After a restart, the last confirmed write wins (no stale value comes back).
    with zixir_actors.start(data, sandbox_workers=0):
        cache = Cache.start("shared", persist=True)
        assert cache.get("model") is None and cache.get("fresh") == "1"


def test_an_embedded_store_beside_a_live_runtime_sees_its_runs(tmp_path: Path) -> None:
    data = tmp_path / "data"

    @durable("side-by-side")
    def body(ctx) -> str:  # type: ignore[no-untyped-def]
        return "done"

    with zixir_actors.start(data, sandbox_workers=0) as rt:
        result = body.run({}, run_id="r1")
        script = (
            "from zixir_actors.checkpoint import open_store\n"
            f"with open_store({str(data)!r}) as s:\n"
            "    r = s.get_run('r1'); print(r.status, r.owner)\n")
        out = subprocess.run([sys.executable, "-c", script], env=_env(), check=True,
                             timeout=WAIT, capture_output=True, text=True).stdout.split()
        assert out == [result.status, rt.id]


def _zixir(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zixir_actors", "--data-dir", str(data_dir),
                           *args], env=_env(), capture_output=True, text=True, timeout=WAIT,
                          check=False)


def test_the_command_line_works_beside_a_live_runtime(workers: Workers) -> None:
    worker = workers.spawn("--start", "1", "--steps", "5", "--pause", "0")
    wait_for(lambda: _statuses(workers.data_dir).get("run-0") == "succeeded", timeout=WAIT,
             what="the run ends")
    trees: list[subprocess.CompletedProcess[str]] = []

    def tree_stored() -> bool:  # each runtime stores its tree with a lease renewal
        trees.append(_zixir(workers.data_dir, "tree"))
        return "zixir.lease" in trees[-1].stdout

    wait_for(tree_stored, timeout=WAIT, interval=0.2, what="the worker's stored tree")
    tree = trees[-1]
    assert tree.returncode == 0, tree.stderr
    first = tree.stdout.splitlines()[0]
    assert first.startswith("runtime ") and f" pid {worker.pid} " in first
    assert "lease" in first and "shared-loop" in first
    assert "zixir.lease" in tree.stdout  # its supervision tree, stored with its lease
    listed = _zixir(workers.data_dir, "runs", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert '"run-0"' in listed.stdout


def test_zixir_metrics_beside_live_runtimes_has_store_wide_gauges(workers: Workers) -> None:
    import socket
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    workers.spawn("--start", "2", "--steps", "3", "--pause", "0")
    wait_for(lambda: set(_statuses(workers.data_dir).values()) == {"succeeded"},
             timeout=WAIT, what="the runs end")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "zixir_actors", "--data-dir",
                               str(workers.data_dir), "metrics", "--port", str(port),
                               "--duration", "60"], env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        assert server.stdout.readline().startswith("serving")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=WAIT) as r:
            text = r.read().decode()
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=WAIT)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("zixir_store_runs", (("status", "succeeded"),))] == 2
    assert samples[("zixir_store_dead_letters", ())] == 0
    assert samples[("zixir_store_runtimes", ())] >= 2  # the worker and the metrics process


def test_a_read_only_directory_can_be_inspected_but_not_changed(tmp_path: Path) -> None:
    source, mount = tmp_path / "data", tmp_path / "ro"

    @durable("read-only-demo")
    def body(ctx) -> int:  # type: ignore[no-untyped-def]
        return 1

    with zixir_actors.start(source, sandbox_workers=0):
        body.run({}, run_id="r-ro")
    mount.mkdir()
    bound = subprocess.run(["mount", "--bind", str(source), str(mount)], capture_output=True,
                           check=False)
    if bound.returncode != 0:
        pytest.skip(f"cannot bind-mount here (needs root): {bound.stderr.decode().strip()}")
    try:
        remount = subprocess.run(["mount", "-o", "remount,ro,bind", str(mount)],
                                 capture_output=True, check=False)
        if remount.returncode != 0:
            pytest.skip(f"cannot remount read-only: {remount.stderr.decode().strip()}")
        listed = _zixir(mount, "runs", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert '"r-ro"' in listed.stdout
        refused = _zixir(mount, "runs", "delete", "r-ro")
        assert refused.returncode == 2
        assert refused.stderr.splitlines()[0] == (
            f"zixir: error: data directory {mount} is read-only: it can be inspected, "
            "not changed")
    finally:
        subprocess.run(["umount", str(mount)], check=False, capture_output=True)
    with open_store(source) as store:
        assert store.get_run("r-ro").status == "succeeded"  # nothing changed
