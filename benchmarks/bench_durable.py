"""Code-first durable workflows (issue 12), each figure beside its baseline from the same run.

- loop: a body calling 1,000 no-op ``ctx.step`` in a loop, durable store;
  baseline: the raw loop of one ``pickle.dumps`` + durable LMDB put (its own
  environment, commit + fsync) per call. Target <= 1.2x. Medians of runs
  alternating with the baseline's (`bench_workflow._interleaved` says why),
  both sides pinned to the CPU that fsyncs quickest
  (`bench_workflow._durable_pair` says why); the unpinned ratio and the
  ratio of the best runs are in the note.
- replay: resuming a run with 10,000 recorded calls (all replayed, one call
  runs live); baseline: reading and unpickling 10,000 records with one LMDB
  cursor scan. Target: under 1 s (the ratio is reported).
- send: ``send`` to a parked run until its body continues, p50 in one
  process; baseline: a ``threading.Event`` round trip. Target: p50
  under 5 ms (the ratio is reported).
- emit: ``ctx.emit`` from one step, items per second (an LLM token stream
  needs 10,000/s); reported.
- peers: the same 200-call loop on DBOS (SQLite) and LangGraph
  (``SqliteSaver``, ``durability="sync"``), where installed, each in its own
  warm process as ours is (``benchmarks.bench_peers.PeerProcess``), round by
  round; medians. Target: ours at most a third of the faster peer's time per call.

Logging is configured at WARNING to /dev/null, as a production service logs
INFO to a collector; ``python -m benchmarks durable [--quick]``.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import lmdb

from benchmarks._harness import Figure, main, percentile
from benchmarks.bench_workflow import (  # the same baseline loop, timed the same way
    _durable_pair,
    _raw_loop,
)
from zixir_actors import durable
from zixir_actors.checkpoint import CheckpointClient, open_store
from zixir_actors.observability import configure_logging, reset_logging

SUBJECT = "durable"
LOOP_CALLS = 1_000
REPLAY_CALLS = 10_000
PEER_CALLS = 200
REPLAY_TARGET_S = 1.0
SEND_TARGET_MS = 5.0
EMIT_TARGET_PER_S = 10_000.0
PEER_TARGET = 0.333  # at least 3x faster

Cleanup = Callable[[], object]


def noop() -> object:
    return None


@durable("bench-durable-loop")
def loop_body(ctx: Any, n: int) -> int:
    for _ in range(n):
        ctx.step(noop)
    return n


@durable("bench-durable-replay")
def replay_body(ctx: Any, n: int) -> int:
    for _ in range(n):
        ctx.step(noop)
    ctx.step(noop, name="last")
    return n


_continued: queue.SimpleQueue[int] = queue.SimpleQueue()


@durable("bench-durable-send")
def ping_body(ctx: Any, tag: int) -> int:
    ctx.wait_for("ping")
    _continued.put(tag)  # the body continued: the benchmark's clock stops here
    return tag


def chatty(count: int, ctx: Any) -> int:
    for i in range(count):
        ctx.emit(i)
    return count


@durable("bench-durable-emit")
def emit_body(ctx: Any, count: int) -> int:
    return int(ctx.step(chatty, count))


# -- baselines ----------------------------------------------------------------------------


def _cursor_scan(path: str, n: int, repeat: int) -> float:
    """Best seconds to read and unpickle `n` call-sized records with one cursor scan."""
    env = lmdb.open(path, map_size=1 << 30, max_dbs=4)
    db = env.open_db(b"calls")
    record = ("step", "noop#1", None, "code-hash", 0.0)
    with env.begin(write=True) as txn:
        for i in range(n):
            txn.put(b"run\x00" + i.to_bytes(8, "big"), pickle.dumps(record), db=db)
    best = float("inf")
    for _ in range(repeat):
        began = time.perf_counter()
        with env.begin() as txn:
            values = [pickle.loads(v) for _, v in txn.cursor(db=db)]
        best = min(best, time.perf_counter() - began)
        assert len(values) == n
    env.close()
    return best


def _thread_round_trip(samples: int) -> list[float]:
    """Seconds per `threading.Event` round trip: wake a waiting thread, wait for its answer."""
    there, back = threading.Event(), threading.Event()
    stop = False

    def echo() -> None:
        while True:
            there.wait()
            there.clear()
            if stop:
                return
            back.set()

    worker = threading.Thread(target=echo, name="bench-echo")
    worker.start()
    times = []
    for _ in range(samples):
        began = time.perf_counter()
        there.set()
        back.wait()
        times.append(time.perf_counter() - began)
        back.clear()
    stop = True
    there.set()
    worker.join()
    return times


# -- ours -----------------------------------------------------------------------------------


def _loop_run(store: CheckpointClient, n: int) -> Cleanup:
    result = loop_body.run({"n": n}, store=store).raise_for_status()
    return lambda: store.delete_run(result.run_id)


def _replay(store: CheckpointClient, n: int, repeat: int) -> float:
    """Best seconds to resume a run whose `n` calls are recorded (the last call runs)."""
    run_id = uuid.uuid4().hex
    replay_body.run({"n": n}, run_id=run_id, store=store).raise_for_status()
    best = float("inf")
    for _ in range(repeat):
        began = time.perf_counter()
        result = replay_body.resume(run_id, from_step="last", store=store)
        best = min(best, time.perf_counter() - began)
        result.raise_for_status()
        cached = sum(1 for s in result.steps.values() if s.status == "cached")
        if cached != n:
            raise RuntimeError(f"replay ran calls again: {cached} of {n} were replayed")
    store.delete_run(run_id)
    return best


def _send_latencies(store: CheckpointClient, samples: int) -> list[float]:
    """Seconds from `send` to the body running past its `wait_for`, one parked run each."""
    times = []
    for i in range(samples):
        handle = ping_body.start({"tag": i}, store=store)
        if handle.wait(timeout=60) != "parked":
            raise RuntimeError(f"run {handle.run_id} did not park")
        began = time.perf_counter()
        ping_body.send(handle.run_id, "ping", i, store=store)
        got = _continued.get(timeout=60)
        times.append(time.perf_counter() - began)
        if got != i:
            raise RuntimeError(f"run {i} continued as {got}")
        handle.result(timeout=60).raise_for_status()
        store.delete_run(handle.run_id)
    return times


def _emit_rate(store: CheckpointClient, count: int) -> float:
    began = time.perf_counter()
    result = emit_body.run({"count": count}, store=store).raise_for_status()
    seconds = time.perf_counter() - began
    store.delete_run(result.run_id)
    return count / seconds


def _peers(n: int, repeat: int) -> list[Figure]:
    """Ours, DBOS and LangGraph on the same loop, each in its own warm process, interleaved."""
    try:
        from benchmarks.bench_peers import PeerProcess
    except ImportError as exc:
        print(f"# durable: peers skipped: benchmarks.bench_peers unavailable ({exc})",
              file=sys.stderr)
        return []
    samples: dict[str, list[float]] = {}
    with contextlib.ExitStack() as stack:
        procs = {}
        for peer in ("ours", "dbos", "langgraph"):
            try:
                procs[peer] = stack.enter_context(PeerProcess(peer))
                procs[peer].request("loop", min(n, 20))  # warm-up
            except ImportError as exc:  # not installed (PeerNotInstalledError) or no loop
                print(f"# durable: {peer} skipped: {exc}", file=sys.stderr)
                procs.pop(peer, None)
        if "ours" not in procs or len(procs) < 2:
            print("# durable: peer loop skipped: needs ours and DBOS or LangGraph",
                  file=sys.stderr)
            return []
        for _ in range(repeat):  # round by round, so load shifts hit every peer alike
            for peer, proc in procs.items():
                samples.setdefault(peer, []).append(proc.request("loop", n))
    ms = {peer: statistics.median(times) / n * 1e3 for peer, times in samples.items()}
    ours = ms.pop("ours")
    fastest = min(ms, key=ms.__getitem__)
    figures = [Figure(SUBJECT, f"loop of {n} durable calls vs the faster peer", ours,
                      ms[fastest], "ms/call", f"{fastest} (faster peer)", "lower",
                      PEER_TARGET, note="each in its own warm process, interleaved, medians",
                      extra={f"{p}_ms_per_call": v for p, v in ms.items()})]
    figures += [Figure(SUBJECT, f"loop of {n} durable calls vs {peer}", ours, value,
                       "ms/call", peer, "lower", None)
                for peer, value in ms.items() if peer != fastest]
    return figures


def run(quick: bool = False) -> list[Figure]:
    repeat = 3 if quick else 9
    root = tempfile.mkdtemp(prefix="zixir-bench-durable-")
    with open(os.devnull, "w") as devnull:
        configure_logging(level="WARNING", sink=devnull, replace_default=True)
        try:
            return _run(root, quick, repeat)
        finally:
            reset_logging()
            shutil.rmtree(root, ignore_errors=True)


def _run(root: str, quick: bool, repeat: int) -> list[Figure]:
    figures: list[Figure] = []
    raw = _raw_loop(os.path.join(root, "raw"), LOOP_CALLS)
    with open_store(os.path.join(root, "store")) as store:
        _loop_run(store, LOOP_CALLS)()  # warm-up
        raw()()
        paired = _durable_pair(lambda: _loop_run(store, LOOP_CALLS), raw, repeat, root)
        looped = paired.pinned
        figures.append(Figure(SUBJECT, f"body: {LOOP_CALLS:,} no-op ctx.step in a loop",
                              looped.ours * 1e3, looped.base * 1e3, "ms",
                              "loop: pickle + durable LMDB put per call", "lower", 1.2,
                              note=paired.note(repeat),
                              extra={"unpinned_ratio": paired.unpinned.ratio}))

        replay = _replay(store, REPLAY_CALLS, repeat)
        scan = _cursor_scan(os.path.join(root, "scan"), REPLAY_CALLS, repeat)
        verdict = "pass" if replay < REPLAY_TARGET_S else "short"
        figures.append(Figure(SUBJECT, f"resume a run of {REPLAY_CALLS:,} recorded calls",
                              replay, scan, "s", "one LMDB cursor scan + unpickle", "lower",
                              None, note=f"target < {REPLAY_TARGET_S:g} s: {verdict}",
                              extra={"us_per_replayed_call": replay / REPLAY_CALLS * 1e6}))

        samples = 100 if quick else 500
        sends = _send_latencies(store, samples)
        trips = _thread_round_trip(samples)
        p50 = percentile(sends, 50) * 1e3
        verdict = "pass" if p50 < SEND_TARGET_MS else "short"
        figures.append(Figure(SUBJECT, "send to a parked run until the body continues, p50",
                              p50, percentile(trips, 50) * 1e3, "ms",
                              "threading.Event round trip", "lower", None,
                              note=f"target p50 < {SEND_TARGET_MS:g} ms: {verdict}",
                              extra={"p99_ms": percentile(sends, 99) * 1e3,
                                     "mean_ms": statistics.fmean(sends) * 1e3}))

        count = 10_000 if quick else 50_000
        rate = _emit_rate(store, count)
        verdict = "pass" if rate >= EMIT_TARGET_PER_S else "short"
        figures.append(Figure(SUBJECT, f"ctx.emit from one step ({count:,} items)", rate,
                              None, "items/s", better="higher",
                              note=f"target >= {EMIT_TARGET_PER_S:,.0f}/s: {verdict}"))
    figures += _peers(PEER_CALLS, 3 if quick else 5)
    return figures


if __name__ == "__main__":
    main(run)
