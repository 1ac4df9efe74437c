"""Cache: `get` and `put` ops/s beside `cachetools.TTLCache` + lock and `diskcache.Cache`.

Run alone with ``python -m benchmarks.bench_cache [--quick]``. Every figure
is measured in this process, in this run, beside its baseline:

- get (hit), memory cache with TTL and LRU bound, vs TTLCache behind a Lock;
- get (hit) from 4 threads at once, total throughput, same baseline;
- get (hit) from a persistent cache (served from memory too);
- put, memory cache, vs TTLCache behind a Lock (reported, no target);
- put, persistent cache (LMDB commit, group fsync), vs `diskcache.Cache.set`;
- put, persistent cache with ``durable=True`` (fsync per put), vs diskcache (reported).
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cachetools
import diskcache

from benchmarks._harness import Figure, main, measure
from supervisors import DynamicSupervisor
from zixir_actors.cache import Cache

VALUE = "x" * 200
"""A typical small cached answer."""


def _ops(seconds_per_op: float) -> float:
    return 1.0 / seconds_per_op


def _work(fn: Any, count: int, start: threading.Barrier, done: threading.Barrier) -> None:
    start.wait()
    for _ in range(count):
        fn()
    done.wait()


def _threaded(fn: Any, n: int, *, threads: int) -> float:
    """Seconds per call of `fn` when `threads` threads share `n` calls (best of 3)."""
    per_thread = n // threads
    best = float("inf")
    for _ in range(3):
        barrier = threading.Barrier(threads + 1)
        done = threading.Barrier(threads + 1)
        workers = [threading.Thread(target=_work, args=(fn, per_thread, barrier, done))
                   for _ in range(threads)]
        for w in workers:
            w.start()
        barrier.wait()
        start = time.perf_counter()
        done.wait()
        best = min(best, (time.perf_counter() - start) / (per_thread * threads))
        for w in workers:
            w.join()
    return best


def run(quick: bool = False) -> list[Figure]:
    n_get = 50_000 if quick else 500_000
    n_put = 3_000 if quick else 30_000
    n_durable = 100 if quick else 1_000
    n_keys = 1_000
    keys = [f"key-{i}" for i in range(n_keys)]
    figures: list[Figure] = []
    tmp = Path(tempfile.mkdtemp(prefix="zixir-bench-cache-"))
    sup = DynamicSupervisor.start_link(name="zixir.caches")
    try:
        # -- get ----------------------------------------------------------------
        lock = threading.Lock()
        ttl_cache: cachetools.TTLCache[str, Any] = cachetools.TTLCache(maxsize=100_000, ttl=300)
        for k in keys:
            ttl_cache[k] = VALUE

        base_keys = itertools.cycle(keys)

        def base_get() -> Any:
            with lock:
                return ttl_cache.get(next(base_keys))

        mem = Cache.start("bench-mem", ttl=300, max_entries=100_000)
        for k in keys:
            mem.put(k, VALUE)
        mem_get = mem.get
        mem_keys = itertools.cycle(keys)

        def ours_get() -> Any:
            return mem_get(next(mem_keys))

        base = measure(base_get, n_get)
        ours = measure(ours_get, n_get)
        figures.append(Figure("cache", "get (hit, ttl + max_entries)", _ops(ours), _ops(base),
                              "ops/s", "cachetools.TTLCache + Lock", better="higher",
                              target=1.0))

        base_threads = _threaded(base_get, n_get, threads=4)
        ours = _threaded(ours_get, n_get, threads=4)
        figures.append(Figure("cache", "get (hit, 4 threads)", _ops(ours), _ops(base_threads),
                              "ops/s",
                              "cachetools.TTLCache + Lock", better="higher", target=1.0,
                              note="total throughput of 4 reader threads"))

        disk = Cache.start("bench-disk", ttl=300, persist=True, data_dir=tmp / "zixir")
        for k in keys:
            disk.put(k, VALUE)
        disk_get = disk.get
        disk_keys = itertools.cycle(keys)

        def ours_disk_get() -> Any:
            return disk_get(next(disk_keys))

        ours = measure(ours_disk_get, n_get)
        figures.append(Figure("cache", "get (hit, persistent)", _ops(ours), _ops(base), "ops/s",
                              "cachetools.TTLCache + Lock", better="higher", target=1.0))

        # -- put ----------------------------------------------------------------
        base_n = itertools.count()

        def base_put() -> None:
            with lock:
                ttl_cache[f"p{next(base_n) % 50_000}"] = VALUE

        ours_n = itertools.count()

        def ours_put() -> None:
            mem.put(f"p{next(ours_n) % 50_000}", VALUE)

        base = measure(base_put, n_put * 5)
        ours = measure(ours_put, n_put * 5)
        figures.append(Figure("cache", "put (memory)", _ops(ours), _ops(base), "ops/s",
                              "cachetools.TTLCache + Lock", better="higher",
                              note="reported: a put also maintains the expiry heap and LRU"))

        dc = diskcache.Cache(str(tmp / "diskcache"))

        dc_n = itertools.count()

        def dc_put() -> None:
            dc.set(f"d{next(dc_n)}", VALUE)

        persist_n = itertools.count()

        def ours_persist_put() -> None:
            disk.put(f"d{next(persist_n)}", VALUE)

        base = measure(dc_put, n_put)
        ours = measure(ours_persist_put, n_put)
        figures.append(Figure("cache", "put (persistent)", _ops(ours), _ops(base), "ops/s",
                              "diskcache.Cache.set", better="higher", target=1.0,
                              note="committed to LMDB before returning; fsync in groups"))

        durable = Cache.start("bench-durable", persist=True, durable=True,
                              data_dir=tmp / "zixir")

        durable_n = itertools.count()

        def ours_durable_put() -> None:
            durable.put(f"s{next(durable_n)}", VALUE)

        ours = measure(ours_durable_put, n_durable, warmup=10)
        figures.append(Figure("cache", "put (persistent, durable=True)", _ops(ours), _ops(base),
                              "ops/s", "diskcache.Cache.set", better="higher",
                              note="reported: fsync per put (diskcache does not fsync)"))
        dc.close()
    finally:
        sup.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return figures


if __name__ == "__main__":
    main(run)
