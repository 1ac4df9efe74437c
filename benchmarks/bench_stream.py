"""Stream throughput and memory: fused actor pipelines vs threads joined by bounded queues.

The pipeline is map -> filter -> batch over small ints. Baselines, measured in
the same run: the peer (one thread per stage joined by `queue.Queue(maxsize=64)`,
one item per put) and the limit (plain function composition in one thread).
Memory: peak traced allocation of a fast producer feeding a slow consumer at
10x and 100x the input size; flat means the peak does not grow with the input.
"""

from __future__ import annotations

import concurrent.futures
import gc
import queue
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

from benchmarks._harness import Figure, main, measure
from zixir_actors.stream import Stream, pmap

N_FULL = 200_000
N_QUICK = 50_000
BATCH = 100
QUEUE_SIZE = 64
_END = object()


def _inc(x: int) -> int:
    return x + 1


def _odd(x: int) -> bool:
    return x % 2 == 1


def limit(n: int) -> int:
    """Plain function composition: the most a single Python thread can do."""
    out, batch = [], []
    for x in range(n):
        y = _inc(x)
        if _odd(y):
            batch.append(y)
            if len(batch) == BATCH:
                out.append(batch)
                batch = []
    if batch:
        out.append(batch)
    return sum(len(b) for b in out)


def peer(n: int) -> int:
    """Three threads (map, filter, batch) joined by bounded queues, one item per put."""
    q1: queue.Queue[Any] = queue.Queue(QUEUE_SIZE)
    q2: queue.Queue[Any] = queue.Queue(QUEUE_SIZE)
    q3: queue.Queue[Any] = queue.Queue(QUEUE_SIZE)

    def mapper() -> None:
        for x in range(n):
            q1.put(_inc(x))
        q1.put(_END)

    def filterer() -> None:
        while (y := q1.get()) is not _END:
            if _odd(y):
                q2.put(y)
        q2.put(_END)

    def batcher() -> None:
        batch: list[int] = []
        while (y := q2.get()) is not _END:
            batch.append(y)
            if len(batch) == BATCH:
                q3.put(batch)
                batch = []
        if batch:
            q3.put(batch)
        q3.put(_END)

    threads = [threading.Thread(target=f) for f in (mapper, filterer, batcher)]
    for t in threads:
        t.start()
    total = 0
    while (b := q3.get()) is not _END:
        total += len(b)
    for t in threads:
        t.join()
    return total


def ours(n: int) -> int:
    """One fused stage actor (Akka-style operator fusion), chunks to the consumer."""
    return sum(len(b) for b in Stream.range(n).map(_inc).filter(_odd).batch(BATCH).to_list())


def ours_split(n: int) -> int:
    """Each operator in its own actor (async boundaries): three actors exchanging chunks."""
    stream = (Stream.range(n).map(_inc).async_boundary().filter(_odd).async_boundary()
              .batch(BATCH))
    return sum(len(b) for b in stream.to_list())


def _rate(fn: Callable[[int], int], n: int, repeat: int) -> float:
    """Items per second: best of `repeat` runs after one warm-up."""
    expected = fn(n)
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        assert fn(n) == expected
        best = min(best, time.perf_counter() - start)
    return n / best


def _rates(fns: list[Callable[[int], int]], n: int, repeat: int) -> list[float]:
    """Items per second of each of `fns`, runs interleaved so each sees the same machine."""
    expected = [fn(n) for fn in fns]
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            gc.collect()
            start = time.perf_counter()
            assert fn(n) == expected[i]
            best[i] = min(best[i], time.perf_counter() - start)
    return [n / b for b in best]


def _peak_bytes(n: int, consume: Callable[[Iterator[Any]], None],
                source: Callable[[int], Iterator[Any]]) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        consume(source(n))
        return float(tracemalloc.get_traced_memory()[1])
    finally:
        tracemalloc.stop()


def _fast_producer(n: int) -> Iterator[bytes]:
    for _ in range(n):
        yield b"x" * 100


def _slow_consumer(items: Iterator[Any]) -> None:
    for i, _ in enumerate(items):
        if i % 500 == 0:
            time.sleep(0.0005)  # the consumer is slower than the producer


def _stream_peak(n: int) -> float:
    return _peak_bytes(n, lambda it: _slow_consumer(iter(
        Stream.from_iterator(it).map(bytes.upper).async_boundary().filter(bool))), _fast_producer)


def _unbounded_peak(n: int) -> float:
    """The naive alternative: an unbounded queue between producer thread and consumer."""
    def run(it: Iterator[Any]) -> None:
        q: queue.Queue[Any] = queue.Queue()

        def produce() -> None:
            for x in it:
                q.put(x.upper())
            q.put(_END)

        t = threading.Thread(target=produce)
        t.start()
        t.join()  # the producer is faster: in the limit it finishes before the consumer starts
        _slow_consumer(iter(q.get, _END))
    return _peak_bytes(n, run, _fast_producer)


def run(quick: bool = False) -> list[Figure]:
    n = N_QUICK if quick else N_FULL
    repeat = 2 if quick else 3
    # Full size even when quick: at 50,000 items the run's start (~0.7 ms) would weigh 15%.
    lim, fused = _rates([limit, ours], N_FULL, 3 * repeat)
    fused_n = fused if n == N_FULL else _rate(ours, n, repeat)
    base = _rate(peer, n, repeat)
    split = _rate(ours_split, n, repeat)
    figures = [
        Figure("stream", f"map-filter-batch fused, {n:,} items", fused_n, base, "items/s",
               baseline_name="3 threads + Queue(64)", better="higher", target=3.0,
               note=f"{fused / lim:.0%} of plain composition ({lim:,.0f} items/s)",
               extra={"limit_items_per_s": lim, "fraction_of_limit": fused / lim}),
        Figure("stream", f"map-filter-batch 3 actors, {n:,} items", split, base, "items/s",
               baseline_name="3 threads + Queue(64)", better="higher", target=3.0,
               note=f"{split / lim:.0%} of plain composition",
               extra={"fraction_of_limit": split / lim}),
        Figure("stream", f"fused map-filter-batch vs plain composition, {N_FULL:,} items",
               fused, lim, "items/s",
               baseline_name="plain composition, same thread", better="higher", target=0.8,
               note="one compiled loop per chunk in the stage actor; to_list collects there"),
    ]
    m = 20_000 if quick else 100_000
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        pool_rate = _rate(lambda k: len(list(pool.map(_inc, range(k)))), m, repeat)
    pmap_rate = _rate(lambda k: len(pmap(_inc, range(k), concurrency=8)), m, repeat)
    figures.append(Figure(
        "stream", f"pmap of a cheap function, 8 workers, {m:,} items", pmap_rate, pool_rate,
        "items/s", baseline_name="ThreadPoolExecutor(8).map", better="higher", target=None,
        note="cheap calls go several per message; slow (I/O) calls one per idle worker"))
    runs = 50 if quick else 200
    start_peer = measure(lambda: peer(3), runs, warmup=5)
    start_ours = measure(lambda: ours(3), runs, warmup=5)
    figures.append(Figure(
        "stream", "run a 3-item pipeline (start, drain, stop)", start_ours * 1e3,
        start_peer * 1e3, "ms", baseline_name="start+join 3 threads + queues", better="lower",
        target=None, note="a run is a supervisor plus one actor per fused stage"))
    small = 10_000 if quick else 20_000
    # The worst of three runs per size: how full the stages' buffers get
    # depends on thread timing, and one lucky run at 1x would make a flat
    # curve look like growth (a bound is about the worst case).
    peaks = {k: max(_stream_peak(k * small) for _ in range(3)) for k in (1, 10, 100)}
    sizes = sorted(peaks)
    naive = {k: _unbounded_peak(k * small) for k in sizes[:2]}
    for k in sizes[1:]:
        figures.append(Figure(
            "stream", f"peak memory, fast producer/slow consumer, {k}x input ({k * small:,})",
            peaks[k] / 2**20, peaks[sizes[0]] / 2**20, "MiB", baseline_name="same at 1x",
            better="lower", target=1.5,
            note="flat: bounded by the stages' buffers, not the input size",
            extra={f"unbounded_queue_{j}x_MiB": naive[j] / 2**20 for j in naive}))
    return figures


if __name__ == "__main__":
    main(run)
