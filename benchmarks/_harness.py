"""Figures, timing helpers, the results table and the JSON report."""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

__all__ = ["Figure", "fsync_cpu", "main", "measure", "one_cpu", "percentile", "print_table",
           "run_modules", "write_json"]

def _results_dir() -> Path:
    # A source checkout keeps reports in benchmarks/results; an installed copy
    # (site-packages, read-only for users) writes them where it is run.
    here = Path(__file__).parent / "results"
    return here if here.is_dir() else Path.cwd() / "zixir-bench-results"


RESULTS = _results_dir()


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured figure beside its baseline from the same run."""

    subject: str
    name: str
    ours: float
    baseline: float | None
    unit: str
    baseline_name: str = ""
    better: Literal["lower", "higher"] = "lower"
    target: float | None = None
    note: str = ""
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.ours / self.baseline

    @property
    def verdict(self) -> str:
        ratio = self.ratio
        if self.target is None or ratio is None:
            return "report"
        ok = ratio <= self.target if self.better == "lower" else ratio >= self.target
        return "pass" if ok else "short"

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["ratio"] = self.ratio
        data["verdict"] = self.verdict
        return data


def measure(fn: Callable[[], object], n: int, *, warmup: int | None = None,
            repeat: int = 3) -> float:
    """Seconds per call of `fn`: best of `repeat` runs of `n` calls after a warm-up."""
    for _ in range(warmup if warmup is not None else max(1, n // 10)):
        fn()
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n)
    return best


@contextlib.contextmanager
def one_cpu(cpu: int | None = None) -> Iterator[str]:
    """Pin every thread of this process (and the threads they start) to one CPU.

    For figures made of thread handoffs (an ask, a restart): on a small VM a
    wake-up that crosses CPUs costs 50-100 us, 5-10x the handoff itself, and
    lands on the measured side or on the baseline at random, so ratios of the
    same code swing from 0.6x to 4x between runs. On one CPU both sides pay
    the same switch and the ratio shows the software's own cost. `cpu` is the
    one to use (default: the first this process may run on; `fsync_cpu` finds
    the one for durable loops). Yields a note for the figure; does nothing
    where affinity cannot be set.
    """
    if not hasattr(os, "sched_setaffinity"):
        yield "threads not pinned (no sched_setaffinity here)"
        return
    before = os.sched_getaffinity(0)
    chosen = min(before) if cpu is None or cpu not in before else cpu
    _set_all_threads({chosen})
    try:
        yield f"both sides pinned to CPU {chosen} (cross-CPU wake-ups on {os.cpu_count()} " \
              "vCPUs would decide the ratio)"
    finally:
        _set_all_threads(before)


def fsync_cpu(directory: str, *, writes: int = 25, rounds: int = 3) -> int | None:
    """The CPU on which a 4 KiB write + fdatasync round trip in `directory` is quickest.

    A thread waiting for an fsync is woken by the disk's completion
    interrupt, on the CPU that interrupt is routed to; running anywhere else
    it also pays a cross-CPU wake-up (an IPI, a VM exit on a VM) after every
    fsync. Unpinned, the scheduler moves a durable loop between the two at
    random, so the ratio of two such loops measured one after the other says
    more about placement than about their code (1.12x-1.27x for the same code
    on this VM). Pinned to this CPU, both sides wake the cheap way and the
    ratio shows the software's cost. None with one CPU or no affinity calls.
    """
    if not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None
    times: dict[int, list[float]] = {cpu: [] for cpu in allowed}
    block = b"\0" * 4096
    fd, path = tempfile.mkstemp(dir=directory, prefix="fsync-probe-")
    try:
        for _ in range(rounds):
            for cpu in allowed:
                os.sched_setaffinity(0, {cpu})  # this thread only
                os.pwrite(fd, block, 0)
                os.fdatasync(fd)
                began = time.perf_counter()
                for i in range(writes):
                    os.pwrite(fd, block, 4096 * (i % 8))
                    os.fdatasync(fd)
                times[cpu].append(time.perf_counter() - began)
    finally:
        os.sched_setaffinity(0, set(allowed))
        os.close(fd)
        os.unlink(path)
    return min(allowed, key=lambda cpu: statistics.median(times[cpu]))


def _set_all_threads(cpus: set[int]) -> None:
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    for tid in tids:
        with contextlib.suppress(OSError):  # a thread that just ended
            os.sched_setaffinity(tid, cpus)


def percentile(samples: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0-100) of `samples`, by linear interpolation."""
    if not samples:
        raise ValueError("no samples")
    if len(samples) == 1:
        return float(samples[0])
    if q <= 0 or q >= 100:
        return float(min(samples) if q <= 0 else max(samples))
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[max(0, min(98, int(q) - 1))]


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0 or 0.01 <= abs(value) < 100_000:
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return f"{value:.3g}"


def print_table(figures: Sequence[Figure], out: object = None) -> None:
    """Print figure, baseline, ratio, target and verdict, one row per figure."""
    stream = out or sys.stdout
    header = ("subject", "figure", "ours", "baseline", "unit", "ratio", "target", "verdict")
    rows = [header]
    for f in figures:
        sign = "<=" if f.better == "lower" else ">="
        target = "-" if f.target is None else f"{sign}{f.target}x"
        base = _fmt(f.baseline) + (f" ({f.baseline_name})" if f.baseline_name else "")
        ratio = "-" if f.ratio is None else f"{f.ratio:.2f}x"
        rows.append((f.subject, f.name, _fmt(f.ours), base, f.unit, ratio, target, f.verdict))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    for i, row in enumerate(rows):
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)), file=stream)  # type: ignore[arg-type]
        if i == 0:
            print("-+-".join("-" * w for w in widths), file=stream)  # type: ignore[arg-type]


def machine() -> dict[str, object]:
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "processor": platform.machine()}


def write_json(figures: Sequence[Figure], path: Path | None = None) -> Path:
    target = path or RESULTS / "latest.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "figures": [f.as_dict() for f in figures]}
    target.write_text(json.dumps(payload, indent=2))
    return target


def run_modules(names: Sequence[str], *, quick: bool) -> list[Figure]:
    """Import `benchmarks.bench_<name>` for each name and collect its figures."""
    import importlib

    figures: list[Figure] = []
    for name in names:
        try:
            module = importlib.import_module(f"benchmarks.bench_{name}")
        except ModuleNotFoundError as exc:
            if exc.name is None or exc.name.startswith("benchmarks"):
                raise
            # A baseline library (cachetools, diskcache...) of the dev extra is missing.
            raise SystemExit(f"benchmark {name!r} needs {exc.name!r} for its baseline: "
                             "pip install 'zixir-actors[dev]'") from None
        print(f"# running {name}{' (quick)' if quick else ''}...", file=sys.stderr, flush=True)
        figures.extend(module.run(quick=quick))
    return figures


def available() -> list[str]:
    return sorted(p.stem[len("bench_"):] for p in Path(__file__).parent.glob("bench_*.py"))


def main(run: Callable[..., list[Figure]] | None = None, argv: Sequence[str] | None = None) -> int:
    """Command line: one module's `run`, or every `bench_*` module when `run` is None."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--quick", action="store_true", help="small counts, under 2 minutes in all")
    parser.add_argument("--json", type=Path, default=None, help="where to write the JSON report")
    if run is None:
        parser.add_argument("subjects", nargs="*",
                            help=f"subjects to run (default all: {available()})")
    args = parser.parse_args(argv)
    if run is None:
        subjects = args.subjects or available()
        unknown = sorted(set(subjects) - set(available()))
        if unknown:
            parser.error(f"unknown benchmark subject(s): {', '.join(unknown)}")
        figures = run_modules(subjects, quick=args.quick)
    else:
        figures = run(quick=args.quick)
    print_table(figures)
    path = write_json(figures, args.json if args.json or run is None else
                      RESULTS / f"{figures[0].subject if figures else 'empty'}.json")
    print(f"\nJSON written to {path}")
    return 0
