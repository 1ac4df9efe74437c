"""Many processes on one data directory: takeover after kill -9, cross-process cache visibility.

- takeover: a worker process runs a code-first loop; it is killed with
  SIGKILL; the figure is the time from the kill to the next step started by
  another live runtime on the directory (lease 1 s, renewed every 0.25 s).
  Baseline, same run: the time from the kill to the next step when no other
  runtime is up and a fresh process is started to resume the run (what one
  process per directory had to do).
- cache visibility: a process puts a new value in a persistent cache; the
  figure is the delay until another process's `get` returns it (reads stay
  in memory; the journal is followed every 0.1 s). Baseline, same run: the
  same with diskcache (SQLite, every `get` a query).
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._harness import Figure, main

SUBJECT = "shared"
ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "_shared_worker.py"

_READER = r'''
import sys, time
kind, path, key, want = sys.argv[1:5]
if kind == "zixir":
    import zixir_actors
    from zixir_actors.cache import Cache
    zixir_actors.start(path, sandbox_workers=0)
    cache = Cache.start("bench-shared", persist=True)
    get = cache.get
else:
    import diskcache
    cache = diskcache.Cache(path)
    get = cache.get
print("ready", flush=True)
for line in sys.stdin:
    want = line.strip()
    while get(key) != want:
        pass
    print(time.time(), flush=True)
if kind == "zixir":
    zixir_actors.stop()
'''

_WRITER = r'''
import sys
kind, path, key = sys.argv[1:4]
if kind == "zixir":
    import zixir_actors
    from zixir_actors.cache import Cache
    zixir_actors.start(path, sandbox_workers=0)
    cache = Cache.start("bench-shared", persist=True)
else:
    import diskcache
    cache = diskcache.Cache(path)
print("ready", flush=True)
import time
for line in sys.stdin:
    value = line.strip()
    stamp = time.time()
    cache.set(key, value) if kind == "disk" else cache.put(key, value)
    print(stamp, flush=True)
if kind == "zixir":
    zixir_actors.stop()
'''


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("ZIXIR_DATA_DIR", None)
    return env


def _spawn(args: list[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=_env())
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("ready"):
        proc.kill()
        raise RuntimeError(f"{args[1]} did not start: {line!r}")
    return proc


def _stop(proc: subprocess.Popen[str]) -> None:
    for pipe in (proc.stdin,):
        if pipe is not None and not pipe.closed:
            pipe.close()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
    if proc.stdout is not None:
        proc.stdout.close()


def _log_after(log: Path, offset: int, not_pid: int, timeout: float = 60.0) -> float:
    """Wall time at which a step line by another pid than `not_pid` appeared past `offset`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(log, "rb") as f:
            f.seek(offset)
            for line in f.read().decode().splitlines():
                if int(line.split()[2]) != not_pid:
                    return time.time()
        time.sleep(0.002)
    raise TimeoutError("no other process continued the run")


def _takeover(root: str, with_live_peer: bool) -> float:
    data = os.path.join(root, f"takeover-{with_live_peer}-{time.monotonic_ns()}")
    log = Path(data + ".log")
    worker = [sys.executable, str(WORKER), data, str(log)]
    victim = _spawn([*worker, "--start", "1", "--steps", "100000", "--pause", "0.005"])
    peer = _spawn(worker) if with_live_peer else None
    try:
        while not log.exists() or log.stat().st_size < 200:
            time.sleep(0.005)
        offset = log.stat().st_size
        killed = time.time()
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        if peer is None:  # one process per directory: a fresh process resumes the run
            peer = subprocess.Popen([*worker], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    text=True, env=_env())
        seen = _log_after(log, offset, victim.pid)
        return seen - killed
    finally:
        if victim.stdin is not None:
            victim.stdin.close()
        if victim.stdout is not None:
            victim.stdout.close()
        if peer is not None:
            _stop(peer)


def _visibility(root: str, kind: str, rounds: int) -> list[float]:
    path = os.path.join(root, f"cache-{kind}")
    writer = _spawn([sys.executable, "-c", _WRITER, kind, path, "k"])
    reader = _spawn([sys.executable, "-c", _READER, kind, path, "k", "-"])
    assert writer.stdin and writer.stdout and reader.stdin and reader.stdout
    delays = []
    try:
        for i in range(rounds):
            reader.stdin.write(f"v{i}\n")
            reader.stdin.flush()
            writer.stdin.write(f"v{i}\n")
            writer.stdin.flush()
            written = float(writer.stdout.readline())
            seen = float(reader.stdout.readline())
            delays.append(max(0.0, seen - written))
    finally:
        _stop(writer)
        _stop(reader)
    return delays


def run(quick: bool = False) -> list[Figure]:
    rounds = 3 if quick else 7
    with tempfile.TemporaryDirectory(prefix="zixir-bench-shared-") as root:
        live, fresh = [], []
        for _ in range(rounds):  # interleaved: both see the same machine
            live.append(_takeover(root, True))
            fresh.append(_takeover(root, False))
        ours = _visibility(root, "zixir", 10 if quick else 40)
        disk = _visibility(root, "disk", 10 if quick else 40)
    return [
        Figure(SUBJECT, "takeover after kill -9 by a live runtime (lease 1 s), p50",
               statistics.median(live) * 1e3, statistics.median(fresh) * 1e3, "ms",
               "a fresh process resumes the run", "lower", None,
               extra={"lease_s": 1.0, "max_ms": max(live) * 1e3}),
        Figure(SUBJECT, "cross-process cache visibility, p50", statistics.median(ours) * 1e3,
               statistics.median(disk) * 1e3, "ms", "diskcache (SQLite) across processes",
               "lower", None,
               extra={"p99_ms": sorted(ours)[int(0.99 * (len(ours) - 1))] * 1e3,
                      "bound_ms": 100.0}),
    ]


if __name__ == "__main__":
    main(run)
