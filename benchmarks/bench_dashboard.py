"""Dashboard: pages with 100,000 stored runs, beside `zixir runs list --json` on the same runs.

Run alone with ``python -m benchmarks.bench_dashboard [--quick]``. The runs are
written straight through the store in batches (one LMDB transaction per
10,000); one of them is a DAG run with 20 checkpointed steps, a dead letter
with three attempts and its log lines, for the run page. The dashboard is
served by uvicorn in this process (`Dashboard(port=0)`); each request opens
a new connection, as a browser's first visit does.

Figures (p50 of the requests, milliseconds):

- the run list (first page, a page deep in the key order, a filter by
  status, a filter that matches nothing and so reads its whole scan budget
  of `SCAN_BUDGET` headers, a search by run id): time to first byte and to the
  complete page;
- the run page: the same two times;
- the overview (its counts come from a scan made in the background);
- baseline, in the same run: ``zixir runs list --json`` over the same
  100,000 runs (a process that reads and prints them all).

Every page must render in under 300 ms (`BUDGET`); the note says whether it did.
"""

from __future__ import annotations

import http.client
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

from benchmarks._harness import Figure, main
from zixir_actors.dashboard._pages import SCAN_BUDGET

RUNS = 100_000
BATCH = 10_000
BUDGET = 0.300
"""Seconds a page may take, complete (the issue's bound)."""
ROOT = Path(__file__).resolve().parent.parent


def _fill(data_dir: str) -> tuple[str, str]:
    """Write `RUNS` run headers (and one detailed run); returns (detail run id, a mid key)."""
    from zixir_actors import _codec
    from zixir_actors.checkpoint import (
        DEAD_DB,
        RUNS_DB,
        STEPS_DB,
        AttemptInfo,
        DeadLetter,
        RunRecord,
        _key,
        _pack_step,
        open_store,
    )

    statuses = ("succeeded",) * 7 + ("failed", "running", "cancelled")
    now = time.time()
    ids = [uuid.uuid4().hex for _ in range(RUNS)]
    detail = ids[RUNS // 3]
    with open_store(data_dir, durable=False) as store:
        env = store._get_channel().env
        for start in range(0, RUNS, BATCH):
            def write(txn: Any, start: int = start) -> None:
                db = env.db(RUNS_DB)
                for i in range(start, min(start + BATCH, RUNS)):
                    record = RunRecord(ids[i], ("etl", "agent", "report")[i % 3],
                                       statuses[i % len(statuses)], {"n": i, "source": "s3"},
                                       now - (RUNS - i) * 0.5, now - (RUNS - i) * 0.5 + 2.0,
                                       "ValueError: bad row" if i % 10 == 7 else None)
                    txn.put(_key(record.run_id), _codec.encode(record), db=db)

            env.write(write, durable=False)
        steps = [f"step-{k:02d}" for k in range(20)]

        def detailed(txn: Any) -> None:
            t0 = now - 120
            record = RunRecord(detail, "etl", "failed", {"n": 1, "source": "s3"}, t0, t0 + 60,
                               "ValueError: bad row", {s: "succeeded" for s in steps})
            txn.put(_key(detail), _codec.encode(record), db=env.db(RUNS_DB))
            for k, s in enumerate(steps):
                blob = _pack_step(detail, s, {"rows": list(range(50)), "k": k}, "c0de", "1nput",
                                  1, 0.5, t0 + k * 2.5, f"{detail}/{s}")
                txn.put(_key(detail, s), blob, db=env.db(STEPS_DB))
            attempts = tuple(AttemptInfo(a, t0 + 50 + a * 2, 0.4, "ValueError", "bad row")
                             for a in (1, 2, 3))
            letter = DeadLetter(uuid.uuid4().hex, detail, "etl", "load", {"rows": 50},
                                "ValueError", "bad row", "Traceback ...\nValueError: bad row",
                                attempts, t0 + 58)
            txn.put(_key(letter.id), _codec.encode(letter), db=env.db(DEAD_DB))

        env.write(detailed, durable=True)
        page, cursor = store.page_runs(after=ids[0], limit=1)
        del page, cursor
    return detail, sorted(ids)[RUNS // 2]


def _get(port: int, path: str) -> tuple[float, float, int]:
    """(time to first byte, time to the complete page, status) of one GET on a new connection."""
    began = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        first = time.perf_counter() - began
        response.read()
        return first, time.perf_counter() - began, response.status
    finally:
        conn.close()


def _p50(port: int, path: str, n: int) -> tuple[float, float]:
    _get(port, path)   # warm-up
    samples = [_get(port, path) for _ in range(n)]
    bad = [s for s in samples if s[2] != 200]
    if bad:
        raise RuntimeError(f"{path} answered {bad[0][2]}")
    return (statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples))


def _check(port: int, path: str, marker: str, count: int) -> None:
    """The page shows what is measured (not an error page that happens to be fast)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path)
        body = conn.getresponse().read().decode()
    finally:
        conn.close()
    if body.count(marker) < count:
        raise RuntimeError(f"{path} shows {body.count(marker)} x {marker!r}, expected {count}")


def _cli_list(data_dir: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    began = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "zixir_actors", "--data-dir", data_dir,
                             "runs", "list", "--json"], env=env, capture_output=True,
                            check=False, timeout=600)
    took = time.perf_counter() - began
    if result.returncode != 0:
        raise RuntimeError(result.stderr.decode()[-500:])
    return took


def run(quick: bool = False) -> list[Figure]:
    from zixir_actors.dashboard import Dashboard
    from zixir_actors.errors import DashboardUnavailableError

    try:
        Dashboard(port=0)   # checks the extra is installed; binds nothing yet
    except DashboardUnavailableError as exc:
        print(f"dashboard: skipped: {exc}", file=sys.stderr)
        return []

    n = 9 if quick else 31
    data_dir = tempfile.mkdtemp(prefix="zixir-bench-dash-")
    try:
        began = time.perf_counter()
        detail, middle = _fill(data_dir)
        filled = time.perf_counter() - began
        cli = statistics.median(_cli_list(data_dir) for _ in range(1 if quick else 3))
        pages: dict[str, tuple[float, float]] = {}
        with Dashboard(data_dir, port=0) as dash:
            port = dash.port
            assert port is not None
            _check(port, "/runs", 'class="mono" href="/runs/', 50)
            _check(port, "/runs/" + quote(detail, safe=""), 'class="seg k-', 23)
            pages["run list, first page"] = _p50(port, "/runs", n)
            pages["run list, page in the middle"] = _p50(port, "/runs?after=" + middle, n)
            pages["run list, status=failed"] = _p50(port, "/runs?status=failed", n)
            pages[f"run list, filter matching nothing ({SCAN_BUDGET:,} read)"] = _p50(
                port, "/runs?workflow=nowhere", n)
            pages["run list, search by run id"] = _p50(port, "/runs?q=" + detail, n)
            pages["run page (20 steps, dead letter)"] = _p50(
                port, "/runs/" + quote(detail, safe=""), n)
            dash._dash.aggregates.latest(wait=60.0)  # the background scan, once
            pages["overview"] = _p50(port, "/", n)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    figures = []
    for name, (first, complete) in pages.items():
        ok = "under" if complete < BUDGET else "OVER"
        figures.append(Figure(
            "dashboard", f"{name}: first byte", first * 1000, cli * 1000, "ms",
            baseline_name=f"zixir runs list --json ({RUNS:,} runs)", better="lower",
            note=f"p50 of {n}, new connection each"))
        figures.append(Figure(
            "dashboard", f"{name}: complete page", complete * 1000, cli * 1000, "ms",
            baseline_name=f"zixir runs list --json ({RUNS:,} runs)", better="lower",
            note=f"p50 of {n}; {ok} the {BUDGET * 1000:.0f} ms budget",
            extra={"budget_ms": BUDGET * 1000, "runs_stored": RUNS,
                   "fill_seconds": round(filled, 2)}))
    return figures


if __name__ == "__main__":
    main(run)
