"""Executor: CPU-bound fan-out on the local executor vs Ray, and the cost of a remote step.

Figures, each beside its peer measured in the same run:

- fan-out of 200 CPU-bound calls (about 50 ms of pure Python each) as Ray
  tasks vs the local executor (threads: the GIL runs one at a time), with
  the local process executor as an extra; reported, since the point is the
  same API, not a speed-up on a 2-core machine;
- the same fan-out as workflow steps (``Workflow(executor="ray")`` vs the
  default in-process run), when the workflow takes ``executor=``;
- a no-op call round trip on Ray vs the local executor: the difference is
  the overhead of a remote step (target: under 2 ms), also as workflow steps;
- our Ray round trip vs a bare ``ray.get(f.remote())`` (target 1.5x), and
  the same with a batch of calls in flight (interleaved, best of 3);
- a chain of no-op steps on Ray: what a remote step costs more than a local
  one, beside a bare Ray round trip measured in the same interleaved rounds
  (target 1.2x; medians of the rounds, the remote step's cost taken round by
  round, the best-of ratio in the note); a chain of closure steps
  (shipped once, keyed by code and closure) and a chain of local steps that
  each make a bare Ray round trip (the same trip, inside a chain) are in the
  note.

Run: ``python -m benchmarks.bench_executor [--quick]``.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._harness import Figure, main, measure

ROOT = Path(__file__).resolve().parent.parent
BURN_SECONDS = 0.05
CHAIN_ROUNDS = 5
"""Interleaved rounds of the chain figures (each a chain of local, Ray, closure and
bare-round-trip steps, and a loop of bare round trips); medians kept."""


def burn(n: int) -> int:
    """Pure-Python CPU work: about `BURN_SECONDS` for the calibrated `n`."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def noop() -> None:
    return None


def _calibrate() -> int:
    n = 20_000
    while True:
        start = time.perf_counter()
        burn(n)
        took = time.perf_counter() - start
        if took > 0.01:
            return int(n * BURN_SECONDS / took)
        n *= 2


def _fan_out(executor: Any, n: int, count: int) -> float:
    start = time.perf_counter()
    futures = [executor.submit(burn, n) for _ in range(count)]
    for future in futures:
        future.get(timeout=600)
    return time.perf_counter() - start


def _workflow(name: str, count: int, fn: Any, executor: Any, store: Any) -> float:
    from zixir_actors.workflow import Step, Workflow

    wf = Workflow(name, max_concurrency=min(count, 16), executor=executor)
    for i in range(count):
        wf.add(Step(f"s{i}", fn, version="1"))
    start = time.perf_counter()
    result = wf.run({}, store=store, timeout=600)
    took = time.perf_counter() - start
    assert result.status == "succeeded", result
    return took


def _chain(name: str, count: int, fn: Any, executor: Any, store: Any) -> float:
    """Seconds of a run of `count` steps, each depending on the previous one."""
    from zixir_actors.workflow import Step, Workflow

    wf = Workflow(name, [Step(f"s{i}", fn, (f"s{i - 1}",) if i else (), version="1")
                         for i in range(count)], executor=executor)
    start = time.perf_counter()
    result = wf.run({}, store=store, timeout=600)
    took = time.perf_counter() - start
    assert result.status == "succeeded", result
    store.delete_run(result.run_id)
    return took


def _closure_step(value: int) -> Any:
    return lambda: value


def run(quick: bool = False) -> list[Figure]:
    from zixir_actors.observability import configure_logging, reset_logging

    with open(os.devnull, "w") as devnull:
        configure_logging(level="WARNING", sink=devnull, replace_default=True)
        try:
            return _run(quick)
        finally:
            reset_logging()


def _run(quick: bool) -> list[Figure]:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a loopback-only cluster
    import ray

    from zixir_actors.executor import LocalExecutor, RayExecutor
    from zixir_actors.workflow import Step

    count = 40 if quick else 200
    calls = 100 if quick else 500
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    figures: list[Figure] = []
    try:
        local, ray_ex = LocalExecutor(), RayExecutor()
        n = _calibrate()
        _fan_out(ray_ex, n, 4)  # warm the Ray workers
        with LocalExecutor(processes=2) as procs:
            _fan_out(procs, n, 4)
            procs_s = _fan_out(procs, n, count)
        threads_s = _fan_out(local, n, count)
        ray_s = _fan_out(ray_ex, n, count)
        figures.append(Figure(
            "executor", f"fan-out {count} x 50 ms CPU calls", ours=ray_s, baseline=threads_s,
            unit="s", baseline_name="local executor (threads)", better="lower",
            note="2 cores; reported", extra={"local_processes_s": procs_s}))

        ray_rt = measure(lambda: ray_ex.submit(noop).get(timeout=60), calls)
        local_rt = measure(lambda: local.submit(noop).get(timeout=60), calls)
        figures.append(Figure(
            "executor", "no-op call round trip", ours=ray_rt * 1e3, baseline=local_rt * 1e3,
            unit="ms/call", baseline_name="local executor (thread)", better="lower",
            note=f"overhead {(ray_rt - local_rt) * 1e3:.2f} ms per remote call (target < 2 ms)",
            extra={"overhead_ms": (ray_rt - local_rt) * 1e3}))

        bare = ray.remote(noop).options(max_retries=0)
        bare_rt = measure(lambda: ray.get(bare.remote(), timeout=60), calls)
        figures.append(Figure(
            "executor", "Ray no-op via executor vs bare Ray", ours=ray_rt * 1e3,
            baseline=bare_rt * 1e3, unit="ms/call", baseline_name="ray.get(f.remote())",
            better="lower", target=1.5))

        batch = calls * 2
        pipelined = bare_pipelined = float("inf")
        for _ in range(3):  # interleaved, best of each: one batch each swung 1.2x-1.7x
            start = time.perf_counter()
            futures = [ray_ex.submit(noop) for _ in range(batch)]
            for future in futures:
                future.get(timeout=60)
            pipelined = min(pipelined, (time.perf_counter() - start) / batch)
            start = time.perf_counter()
            ray.get([bare.remote() for _ in range(batch)], timeout=60)
            bare_pipelined = min(bare_pipelined, (time.perf_counter() - start) / batch)
        figures.append(Figure(
            "executor", f"Ray no-op, {batch} in flight", ours=pipelined * 1e3,
            baseline=bare_pipelined * 1e3, unit="ms/call", baseline_name="bare Ray, same batch",
            better="lower", target=1.5))

        if "executor" in getattr(Step, "__dataclass_fields__", {}):
            from zixir_actors.checkpoint import open_store

            with tempfile.TemporaryDirectory() as tmp, open_store(tmp) as store:
                steps = count
                local_wf = _workflow("bench-local", steps, lambda: burn(n), None, store)
                ray_wf = _workflow("bench-ray", steps, lambda: burn(n), "ray", store)
                figures.append(Figure(
                    "executor", f"workflow fan-out {steps} x 50 ms CPU steps", ours=ray_wf,
                    baseline=local_wf, unit="s", baseline_name="workflow, local threads",
                    better="lower", note="reported"))
                links = 30 if quick else 100
                def bare_step() -> None:  # a local step that makes a bare Ray round trip
                    ray.get(bare.remote(), timeout=60)

                _chain("bench-chain-warm", 4, noop, "ray", store)
                rounds: dict[str, list[float]] = {
                    "local": [], "ray": [], "closure": [], "bare_step": [], "bare": []}
                for _ in range(CHAIN_ROUNDS):  # interleaved: load shifts hit all alike
                    rounds["local"].append(_chain("bench-chain-local", links, noop, None,
                                                  store) / links)
                    rounds["ray"].append(_chain("bench-chain-ray", links, noop, "ray",
                                                store) / links)
                    rounds["closure"].append(_chain("bench-chain-closure", links,
                                                    _closure_step(7), "ray", store) / links)
                    rounds["bare_step"].append(_chain("bench-chain-bare", links, bare_step,
                                                      None, store) / links)
                    # The baseline, the same bare round trip as `bare_rt`, measured in the
                    # same rounds as the chains (not minutes earlier, under another load).
                    start = time.perf_counter()
                    for _ in range(links):
                        ray.get(bare.remote(), timeout=60)
                    rounds["bare"].append((time.perf_counter() - start) / links)
                mid = {key: statistics.median(values) for key, values in rounds.items()}
                # A remote step's cost over a local one, round by round (each pair ran
                # under the same load), then the median; the best-of ratio goes in the note.
                over = statistics.median(
                    r - lo for r, lo in zip(rounds["ray"], rounds["local"], strict=True))
                best_over = min(rounds["ray"]) - min(rounds["local"])
                figures.append(Figure(
                    "executor", f"remote step in a chain of {links}: cost over a local step",
                    ours=over * 1e3, baseline=mid["bare"] * 1e3,
                    unit="ms/step", baseline_name="bare Ray round trip", better="lower",
                    target=1.2,
                    note=f"medians of {CHAIN_ROUNDS} rounds: local step {mid['local'] * 1e3:.2f} "
                         f"ms, Ray step {mid['ray'] * 1e3:.2f} ms; a closure step "
                         f"{mid['closure'] * 1e3:.2f} ms; a local step making a bare Ray round "
                         f"trip {(mid['bare_step'] - mid['local']) * 1e3:.2f} ms over a local "
                         f"one; best of each: {best_over / min(rounds['bare']):.2f}x; bare "
                         f"round trip {bare_rt * 1e3:.2f} ms earlier in the run",
                    extra={"local_step_ms": mid["local"] * 1e3, "ray_step_ms": mid["ray"] * 1e3,
                           "closure_step_ms": mid["closure"] * 1e3,
                           "bare_round_trip_step_ms": mid["bare_step"] * 1e3,
                           "bare_round_trip_earlier_ms": bare_rt * 1e3}))
                local_noop = _workflow("bench-noop-local", calls, noop, None, store)
                ray_noop = _workflow("bench-noop-ray", calls, noop, "ray", store)
                per_local, per_ray = local_noop / calls * 1e3, ray_noop / calls * 1e3
                figures.append(Figure(
                    "executor", f"workflow no-op step ({calls} steps)", ours=per_ray,
                    baseline=per_local, unit="ms/step", baseline_name="workflow, local",
                    better="lower",
                    note=f"overhead {per_ray - per_local:.2f} ms per remote step "
                         "(target < 2 ms)",
                    extra={"overhead_ms": per_ray - per_local}))
        ray_ex.shutdown()
    finally:
        if started:
            ray.shutdown()
    return figures


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    main(run)
