"""Supervision costs: restart latency, asks through a name, big supervisors.

Run alone with `python -m benchmarks.bench_supervisors [--quick]`.

Figures (each beside a baseline measured in the same run):

- ``restart latency p50, default logging`` / ``p99``: from the moment a
  supervised child's handler raises to the moment its next incarnation has
  answered an ask sent through `ref(name)` (the crash is provoked by an ask
  through the same name, so the time includes the asker hearing of the crash,
  the `Down`, the supervisor's restart, the new thread and the re-resolved
  name), against a raw Pykka ``start()`` plus first ``ask``, with logging as
  a program gets it by importing the library (quiet until configured).
  Target: p50 within 2x. Samples of ours and of the baseline alternate, so
  both see the same noise. ``restart latency p50, asker's view`` starts the
  clock when the crash reaches the asker instead (reported).
- ``restart latency p50, JSON logs``: the same with
  ``configure_logging(json=True, level="INFO")`` writing every crash report
  (one JSON line with the traceback text) to a null sink (reported), and
  ``crash report, JSON line``: what one report costs, against a plain bound
  WARNING line in the same mode (reported).
- ``restart latency p50, loguru defaults``: the same with the library's
  loggers enabled and a loguru sink with loguru's own defaults
  (``diagnose=True``, its text format) writing to a null sink: what crash
  reports cost an application with loguru sinks of its own (reported).
- ``ask via ref(name)``: an ``ask`` through `ref(name)` to a supervised child,
  against a raw ``ActorRef.ask`` to a plain `pykka.ThreadingActor`: the whole
  price of names and supervision on the hot path. Target 1.15x.
  ``ask via ref(name), same actor`` isolates the name lookup (reported).
- ``start+stop 1,000 children``: `Supervisor.start_link` with 1,000 children,
  then `stop()` (children stop one by one, last first, each within its
  shutdown time), against starting 1,000 raw Pykka actors and stopping them
  the same way. Target 1.5x.

Asks are timed in interleaved blocks, the best block of each kept, because a
thread handoff on a shared 2-core machine is noisy. Restarts and asks run
with the process pinned to one CPU (`benchmarks._harness.one_cpu`): a wake-up
that crosses CPUs on a small VM costs 5-10x the handoff and lands on either
side at random (unpinned, the same code measured 0.6x-4x). One restart row
is also taken unpinned, for reference.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pykka
from loguru import logger

from benchmarks._harness import Figure, main, measure, one_cpu, percentile
from supervisors import ChildSpec, Supervisor, _report, ref, whereis
from zixir_actors.observability import configure_logging, reset_logging

SUBJECT = "supervisors"


class Plain(pykka.ThreadingActor):
    """A bare Pykka actor: the baseline."""

    def on_receive(self, message: Any) -> Any:
        return message


class Crashy(pykka.ThreadingActor):
    """Records the instant it crashes, then raises."""

    crashed_at = 0.0

    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            Crashy.crashed_at = time.perf_counter()
            raise RuntimeError("benchmark crash")
        return message


def _settle(threads: int) -> None:
    """Let stopped actors' threads finish, so that no sample pays for another's exit."""
    deadline = time.monotonic() + 0.05
    while threading.active_count() > threads and time.monotonic() < deadline:
        time.sleep(0.0002)


class _Null:
    """A sink that drops what it is given (a file-like object for loguru)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def _drop(message: Any) -> None:
    """A loguru sink that drops each formatted message."""


_stderr_handler = 0
"""loguru's own stderr sink (id 0 until this module sets it aside and back)."""


@contextlib.contextmanager
def _logging(mode: str) -> Iterator[None]:
    """``default``: as imported; ``json``: configure_logging to a null sink;
    ``loguru``: the library's loggers on, one sink with loguru's defaults.

    loguru's own stderr sink is set aside meanwhile (it would print every
    report to the terminal) and put back after.
    """
    global _stderr_handler
    if mode == "default":
        yield
        return
    try:
        logger.remove(_stderr_handler)
        removed = True
    except ValueError:
        removed = False
    try:
        if mode == "json":
            configure_logging(json=True, level="INFO", sink=_Null(), replace_default=False)
            try:
                yield
            finally:
                reset_logging()
        else:
            # loguru's defaults: its text format, diagnose=True, backtrace=True
            handler = logger.add(_drop, level="DEBUG")
            logger.enable("supervisors")
            try:
                yield
            finally:
                logger.disable("supervisors")
                logger.remove(handler)
    finally:
        if removed:
            _stderr_handler = logger.add(sys.stderr)


def _crash_report_cost(n: int) -> tuple[float, float]:
    """Seconds per crash report and per plain bound WARNING line, both as JSON lines."""
    try:
        Crashy().on_receive("crash")
    except RuntimeError as exc:
        crash = exc
    fields: dict[str, Any] = {"supervisor": "bench.sup", "child": "c", "restart_count": 1}
    report = measure(lambda: _report.log_crash(
        "WARNING", crash, "child {} of {} {}: {}; {}", "c", "bench.sup", "crashed",
        _report.Summary(crash), "restarting (restart #1)", _reason=crash, **fields), n)
    line = measure(lambda: logger.bind(**fields).warning("child {} restarted", "c"), n)
    return report, line


def _restart_samples(n: int) -> tuple[list[float], list[float], list[float]]:
    """(restart latencies, the same seen from the asker, raw start + first ask
    latencies), sampled alternately."""
    sup = Supervisor.start_link([ChildSpec("c", Crashy, name="bench.crashy")],
                                max_restarts=n * 2 + 10, max_seconds=3600.0)
    named = ref("bench.crashy")
    ours, heard, base = [], [], []
    try:
        named.ask("warm", timeout=5.0)
        threads = threading.active_count()
        for _ in range(n):
            _settle(threads)
            began = time.perf_counter()
            actor = Plain.start()
            actor.ask("ping", timeout=5.0)
            base.append(time.perf_counter() - began)
            actor.stop()
            _settle(threads)
            with contextlib.suppress(RuntimeError):
                named.ask("crash", timeout=5.0)
            told = time.perf_counter()
            named.ask("ping", timeout=5.0)
            done = time.perf_counter()
            ours.append(done - Crashy.crashed_at)
            heard.append(done - told)
    finally:
        sup.stop()
    return ours, heard, base


def _interleaved_ask(calls: dict[str, Any], n: int, blocks: int) -> dict[str, float]:
    """Seconds per ask for each callable: best of `blocks` interleaved blocks of `n`."""
    best = dict.fromkeys(calls, float("inf"))
    for fn in calls.values():
        for _ in range(max(1, n // 10)):
            fn("warm")
    for _ in range(blocks):
        for label, fn in calls.items():
            gc.collect()
            began = time.perf_counter()
            for _ in range(n):
                fn("ping")
            best[label] = min(best[label], (time.perf_counter() - began) / n)
    return best


def _start_stop_supervisor(children: int) -> float:
    specs = [ChildSpec(i, Plain) for i in range(children)]
    began = time.perf_counter()
    sup = Supervisor.start_link(specs)
    sup.stop()
    return time.perf_counter() - began


def _start_stop_raw(children: int) -> float:
    began = time.perf_counter()
    actors = [Plain.start() for _ in range(children)]
    for actor in reversed(actors):
        actor.stop(block=True, timeout=5.0)
    return time.perf_counter() - began


def _wait_threads_gone(baseline: int) -> None:
    # Stopped actors' threads finish a moment after their stop is confirmed.
    deadline = time.monotonic() + 10.0
    while threading.active_count() > baseline and time.monotonic() < deadline:
        time.sleep(0.01)


def run(quick: bool = False) -> list[Figure]:
    restarts = 300 if quick else 3_000
    asks, blocks = (500, 20) if quick else (1_000, 100)
    rounds = 3 if quick else 10
    threads_before = threading.active_count()
    figures: list[Figure] = []

    # (1) restart latency, with logging as imported, as configured, and with loguru's defaults
    with _logging("default"):
        free, _, free_base = _restart_samples(restarts)
        with one_cpu() as pinned:
            ours, heard, base = _restart_samples(restarts)
    figures += [
        Figure(SUBJECT, "restart latency p50, default logging", ours=percentile(ours, 50) * 1e6,
               baseline=percentile(base, 50) * 1e6, unit="us", better="lower", target=2.0,
               baseline_name="pykka start + first ask",
               note=f"{restarts} crashes, logging as imported (quiet until configured); "
                    f"{pinned}"),
        Figure(SUBJECT, "restart latency p50, default logging, threads free",
               ours=percentile(free, 50) * 1e6, baseline=percentile(free_base, 50) * 1e6,
               unit="us", better="lower", baseline_name="pykka start + first ask",
               note="not pinned: where the OS wakes each thread decides much of it"),
        Figure(SUBJECT, "restart latency p99, default logging", ours=percentile(ours, 99) * 1e6,
               baseline=percentile(base, 99) * 1e6, unit="us", better="lower",
               baseline_name="pykka start + first ask"),
        Figure(SUBJECT, "restart latency p50, asker's view", ours=percentile(heard, 50) * 1e6,
               baseline=percentile(base, 50) * 1e6, unit="us", better="lower",
               baseline_name="pykka start + first ask",
               note="from the crash reaching the asker to the next answer"),
    ]
    _wait_threads_gone(threads_before)
    with _logging("json"), one_cpu():
        ours, _, base = _restart_samples(restarts)
        report, line = _crash_report_cost(2_000 if quick else 20_000)
    figures += [
        Figure(SUBJECT, "restart latency p50, JSON logs", ours=percentile(ours, 50) * 1e6,
               baseline=percentile(base, 50) * 1e6, unit="us", better="lower",
               baseline_name="pykka start + first ask",
               note="configure_logging(json=True): one JSON line with the traceback per crash"),
        Figure(SUBJECT, "crash report, JSON line", ours=report * 1e6, baseline=line * 1e6,
               unit="us/line", better="lower", baseline_name="logger.bind(...).warning, JSON",
               note="type, message, where, traceback text; no exception object"),
    ]
    _wait_threads_gone(threads_before)
    with _logging("loguru"), one_cpu():
        ours, _, base = _restart_samples(restarts)
    figures.append(
        Figure(SUBJECT, "restart latency p50, loguru defaults", ours=percentile(ours, 50) * 1e6,
               baseline=percentile(base, 50) * 1e6, unit="us", better="lower",
               baseline_name="pykka start + first ask",
               note="logger.enable('supervisors') + logger.add(sink) (diagnose=True)"))
    _wait_threads_gone(threads_before)

    # (2) ask through a name
    sup = Supervisor.start_link([ChildSpec("echo", Plain, name="bench.echo")])
    plain = Plain.start()
    try:
        named = ref("bench.echo")
        direct = whereis("bench.echo")
        assert direct is not None
        with one_cpu() as pinned:
            timing = _interleaved_ask({
                "raw": lambda m: plain.ask(m),
                "direct": lambda m: direct.ask(m),
                "named": lambda m: named.ask(m),
            }, asks, blocks)
    finally:
        plain.stop()
        sup.stop()
    figures += [
        Figure(SUBJECT, "ask via ref(name)", ours=timing["named"] * 1e6,
               baseline=timing["raw"] * 1e6, unit="us/op", better="lower", target=1.15,
               baseline_name="ActorRef.ask, plain pykka actor", note=pinned),
        Figure(SUBJECT, "ask via ref(name), same actor", ours=timing["named"] * 1e6,
               baseline=timing["direct"] * 1e6, unit="us/op", better="lower",
               baseline_name="its own ActorRef.ask"),
    ]
    _wait_threads_gone(threads_before)

    # (3) a big supervisor
    children = 1_000
    raw_times, sup_times = [], []
    for _ in range(rounds):  # interleaved, best of each
        raw_times.append(_start_stop_raw(children))
        _wait_threads_gone(threads_before)
        sup_times.append(_start_stop_supervisor(children))
        _wait_threads_gone(threads_before)
    figures.append(Figure(SUBJECT, "start+stop 1,000 children", ours=min(sup_times) * 1e3,
                          baseline=min(raw_times) * 1e3, unit="ms", better="lower", target=1.5,
                          baseline_name="1,000 pykka actors started, stopped last first",
                          note=f"best of {rounds}"))
    return figures


if __name__ == "__main__":
    main(run)
