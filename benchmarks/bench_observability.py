"""Observability overhead: tracing and metrics per actor message, metric updates, spans, logs.

Run alone with `python -m benchmarks.bench_observability [--quick]`.

Figures (each beside a baseline measured in the same run):

- ``ask, traced+metrics``: an `ask` to a `TracedActor` (one span per message)
  while the `MetricsRegistry` actor's message hook runs (two metric updates
  per message), against the same `ask` to a plain `SupervisedActor` with no
  hook. Target 1.15x. Asks are timed in interleaved blocks, best block kept,
  with the process pinned to one CPU (`benchmarks._harness.one_cpu`), because
  a thread handoff on a shared 2-core machine is noisy.
- ``ask, traced+metrics+exporter``: the same with every span exported to an
  `InMemorySpanExporter` (reported).
- ``ask, traced+metrics vs pykka``: the same, against a bare
  `pykka.ThreadingActor` (reported: the gap includes what `SupervisedActor`
  itself adds).
- ``counter inc``: `.inc()` on a counter from `metrics.counter(...)` against
  `.inc()` on a counter made with prometheus-client directly. Target 1.2x.
- ``labelled counter inc``: the same with a label child bound once.
- ``counter lookup+inc``: `metrics.counter(name, doc).inc()` on every call
  (reported: holding the metric is the documented way).
- ``span enter+exit``: `with span(...)` against an empty `with` (reported).
- ``JSON log line``: `configure_logging(json=True)` against loguru's own
  `serialize=True`, both to a null sink (reported).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from typing import Any

import pykka
from prometheus_client import CollectorRegistry, Counter

from benchmarks._harness import Figure, main, measure, one_cpu
from supervisors import SupervisedActor
from zixir_actors.observability import (
    InMemorySpanExporter,
    Metrics,
    MetricsRegistry,
    TracedActor,
    add_exporter,
    configure_logging,
    logger,
    remove_exporter,
    reset_logging,
    span,
)

SUBJECT = "observability"


class _Plain(SupervisedActor):
    def on_receive(self, message: Any) -> Any:
        return message


class _Traced(TracedActor):
    def on_receive(self, message: Any) -> Any:
        return message


class _Bare(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        return message


def _interleaved(variants: dict[str, Callable[[], object]], n: int,
                 rounds: int) -> dict[str, float]:
    """Seconds per call of each variant: best of `rounds` blocks of `n`, blocks interleaved."""
    best = {name: float("inf") for name in variants}
    for fn in variants.values():
        for _ in range(max(1, n // 5)):
            fn()
    for _ in range(rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            for _ in range(n):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / n)
    return best


def _block(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def _timed_asks(n: int, rounds: int) -> dict[str, float]:
    bare, plain, traced = _Bare.start(), _Plain.start(), _Traced.start()
    calls = {"bare": lambda: bare.ask(1, timeout=5.0), "plain": lambda: plain.ask(1, timeout=5.0),
             "traced": lambda: traced.ask(1, timeout=5.0)}
    best = dict.fromkeys([*calls, "exported"], float("inf"))
    memory = InMemorySpanExporter(max_spans=1_000)
    try:
        for fn in calls.values():
            _block(fn, n)
        # The message hook is process-wide: baselines are timed with the
        # metrics actor stopped, ours with it running, phases alternating.
        for _ in range(rounds):
            for name in ("bare", "plain"):
                _block(calls[name], 10)
                best[name] = min(best[name], _block(calls[name], n))
            registry = MetricsRegistry.start(metrics=Metrics(), interval=None)
            try:
                registry.proxy().port().get(timeout=5.0)  # on_start has installed the hook
                _block(calls["traced"], 10)  # binds the actor's label children: not steady state
                best["traced"] = min(best["traced"], _block(calls["traced"], n))
                add_exporter(memory)
                try:
                    best["exported"] = min(best["exported"], _block(calls["traced"], n))
                finally:
                    remove_exporter(memory)
            finally:
                registry.stop()
    finally:
        for actor in (bare, plain, traced):
            actor.stop()
    return best


def _asks(quick: bool) -> list[Figure]:
    n, rounds = (100, 50) if quick else (200, 150)
    # As for the supervisors' asks: the handoff is measured, not where the OS wakes a thread.
    with one_cpu() as pinned:
        best = _timed_asks(n, rounds)
    return [
        Figure(SUBJECT, "ask, traced+metrics", ours=best["traced"] * 1e6,
               baseline=best["plain"] * 1e6, unit="us/ask",
               baseline_name="SupervisedActor ask, no hook", target=1.15,
               note="TracedActor (span per message) with the MetricsRegistry message hook; "
                    f"{pinned}"),
        Figure(SUBJECT, "ask, traced+metrics+exporter", ours=best["exported"] * 1e6,
               baseline=best["plain"] * 1e6, unit="us/ask",
               baseline_name="SupervisedActor ask, no hook", target=None,
               note="as above, every span also exported to an InMemorySpanExporter"),
        Figure(SUBJECT, "ask, traced+metrics vs pykka", ours=best["traced"] * 1e6,
               baseline=best["bare"] * 1e6, unit="us/ask",
               baseline_name="pykka.ThreadingActor ask", target=None),
    ]


def _counters(quick: bool) -> list[Figure]:
    n, rounds = 20_000, (25 if quick else 60)
    raw = Counter("zixir_bench_raw", "raw", registry=CollectorRegistry())
    raw_labelled = Counter("zixir_bench_raw_l", "raw", ["k"], registry=CollectorRegistry())
    m = Metrics()
    ours = m.counter("zixir_bench_ours_total", "ours")
    ours_labelled = m.counter("zixir_bench_ours_l_total", "ours", labels=("k",))
    raw_child, ours_child = raw_labelled.labels("a"), ours_labelled.labels("a")
    def lookup_inc() -> None:
        m.counter("zixir_bench_ours_total", "ours").inc()

    times = _interleaved({"raw": raw.inc, "ours": ours.inc, "raw_l": raw_child.inc,
                          "ours_l": ours_child.inc, "lookup": lookup_inc}, n, rounds)
    lookup = times["lookup"]
    return [
        Figure(SUBJECT, "counter inc", ours=times["ours"] * 1e6, baseline=times["raw"] * 1e6,
               unit="us/op", baseline_name="prometheus_client Counter.inc", target=1.2),
        Figure(SUBJECT, "labelled counter inc", ours=times["ours_l"] * 1e6,
               baseline=times["raw_l"] * 1e6, unit="us/op",
               baseline_name="prometheus_client .labels(...) child inc", target=1.2),
        Figure(SUBJECT, "counter lookup+inc", ours=lookup * 1e6, baseline=times["raw"] * 1e6,
               unit="us/op", baseline_name="prometheus_client Counter.inc", target=None,
               note="metrics.counter(name, doc).inc() per call; hold the metric instead"),
    ]


def _spans(quick: bool) -> list[Figure]:
    n = 20_000 if quick else 200_000

    def traced() -> None:
        with span("bench"):
            pass

    def empty() -> None:
        with contextlib.nullcontext():
            pass

    times = _interleaved({"empty": empty, "span": traced}, n, 5)
    return [Figure(SUBJECT, "span enter+exit", ours=times["span"] * 1e6,
                   baseline=times["empty"] * 1e6, unit="us/op",
                   baseline_name="with nullcontext()", target=None,
                   note="no exporter installed")]


class _Null:
    def write(self, message: str) -> None:
        pass


def _logs(quick: bool) -> list[Figure]:
    n = 1_000 if quick else 10_000
    bound = logger.bind(run_id="r1", step="fetch")
    # Only the measured sink may write: loguru's default stderr handler goes
    # for the measurement and a stderr handler comes back afterwards.
    try:
        logger.remove(0)
        removed_default = True
    except ValueError:
        removed_default = False
    base = ours = float("inf")
    try:
        with span("bench"):
            for _ in range(5):  # alternate the two sinks, keep each one's best block
                handler = logger.add(_Null(), serialize=True, level="INFO")
                base = min(base, measure(lambda: bound.info("step done"), n, repeat=1))
                logger.remove(handler)
                configure_logging(json=True, sink=_Null(), level="INFO", replace_default=False)
                ours = min(ours, measure(lambda: bound.info("step done"), n, repeat=1))
                reset_logging()
    finally:
        reset_logging()
        if removed_default:
            logger.add(sys.stderr)
    return [Figure(SUBJECT, "JSON log line", ours=ours * 1e6, baseline=base * 1e6,
                   unit="us/line", baseline_name="loguru serialize=True", target=None,
                   note="ours adds trace/span ids and flattens bound fields")]


def run(quick: bool = False) -> list[Figure]:
    return [*_asks(quick), *_counters(quick), *_spans(quick), *_logs(quick)]


if __name__ == "__main__":
    main(run)
