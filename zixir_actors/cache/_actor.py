"""The cache actor, the table of published cache states, and `child_spec`.

Each cache is one `CacheActor` under the ``zixir.caches`` DynamicSupervisor,
registered as ``zixir.cache.<name>``. Its `on_start` builds the cache state
(loading LMDB for a persistent cache, or inheriting the entries of a crashed
predecessor for a memory-only one) and publishes it in `_live`, where every
`Cache` handle reads it without a round-trip. `on_stop` and `on_failure`
close the state: writers that were waiting on its lock see it closed and
retry on the next incarnation, so no confirmed write is lost.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pykka
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from supervisors import ChildSpec, DynamicSupervisor, SupervisedActor
from zixir_actors._lmdb import resolve_data_dir
from zixir_actors.cache._state import CacheOptions, CacheState
from zixir_actors.cache._tables import Tables
from zixir_actors.errors import CacheNotFoundError, ZixirTimeoutError
from zixir_actors.observability import logger

__all__ = ["ACTOR_PREFIX", "CACHES", "CacheActor", "child_spec", "current_state",
           "default_data_dir", "ensure_collector", "live_names", "runtime_data_dir"]

CACHES = "zixir.caches"
"""Registered name of the DynamicSupervisor that every cache actor runs under."""
ACTOR_PREFIX = "zixir.cache."
"""A cache named ``n`` is registered as ``zixir.cache.n``."""
_live: dict[str, CacheState] = {}
_live_changed = threading.Condition(threading.Lock())
_configured_data_dir: list[str] = []


class CacheActor(SupervisedActor):
    """Owns one cache's state: builds it on start, closes it on stop or crash.

    Reads and writes do not pass through the mailbox (see the package docs);
    the actor's messages are maintenance calls: a callable sent with `ask` runs
    against the state in the actor's thread, and anything else crashes it.
    """

    def __init__(self, options: CacheOptions) -> None:
        super().__init__()
        self.options = options
        self.state: CacheState | None = None

    def on_start(self) -> None:
        name = self.options.name
        with _live_changed:
            old = _live.get(name)
        if old is not None and not old.closed:
            # The predecessor was killed without running on_stop/on_failure.
            old.crashed = True
            old.close()
        state = CacheState(self.options, old if old is not None and old.crashed else None)
        try:
            state.tables = Tables(state, old.tables if old is not None and old.crashed else None)
        except BaseException:
            state.close()
            raise
        self.state = state
        with _live_changed:
            _live[name] = state
            _live_changed.notify_all()
        logger.bind(cache=name, entries=len(state.data)).debug("cache {} started", name)

    def on_receive(self, message: Any) -> Any:
        if callable(message):
            return message(self.state)
        raise TypeError(f"cache actor {self.options.name!r} got an unknown message {message!r}")

    def on_stop(self) -> None:
        self._close(crashed=False)

    def on_failure(self, *exc_info: Any) -> None:
        self._close(crashed=True)

    def _close(self, *, crashed: bool) -> None:
        state = self.state
        if state is None:
            return
        if getattr(self, "_zx_reason", None) == "killed":
            # `supervisors.kill` raises an asynchronous exception in this
            # thread, which could land inside LMDB bookkeeping; the next
            # incarnation closes this state from its own thread instead.
            state.crashed = True
            return
        state.crashed = crashed
        try:
            state.close()
        finally:
            with _live_changed:
                if not crashed and _live.get(state.name) is state:
                    del _live[state.name]
                _live_changed.notify_all()


def current_state(name: str, *, timeout: float | None) -> CacheState:
    """The open state of cache `name`, waiting up to `timeout` while it restarts.

    Raises:
        CacheNotFoundError: no cache of that name was started, or it stopped.
        ZixirTimeoutError: the cache is restarting and did not come back in time.
    """
    state = _live.get(name)
    if state is not None and not state.closed:
        return state
    deadline = None if timeout is None else time.monotonic() + timeout
    with _live_changed:
        while True:
            state = _live.get(name)
            if state is None:
                raise CacheNotFoundError(name)
            if not state.closed:
                return state
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise ZixirTimeoutError(f"waiting for cache {name!r} to restart", timeout)
            _live_changed.wait(left)


def live_names() -> list[str]:
    """Names of the caches that are running now."""
    return sorted(n for n, s in list(_live.items()) if not s.closed)


def default_data_dir() -> str:
    """The data directory of persistent caches started without `data_dir=`.

    The one given to `child_spec(data_dir=...)` (the runtime's), else
    ``$ZIXIR_DATA_DIR``, else ``./.zixir``.
    """
    if _configured_data_dir:
        return _configured_data_dir[-1]
    return str(resolve_data_dir())


def runtime_data_dir() -> str | None:
    """The running runtime's data directory, where memory-only caches record
    their size and counts when they stop (for `zixir cache list`); None
    without a runtime, so a cache alone never creates a directory."""
    from zixir_actors.runtime import current

    runtime = current()
    return None if runtime is None else str(runtime.data_dir)


def _start_caches(*, data_dir: str | None, max_children: int | None,
                  max_restarts: int, max_seconds: float) -> pykka.ActorRef[Any]:
    if data_dir is not None:
        _configured_data_dir[:] = [os.fspath(data_dir)]
    return DynamicSupervisor.start(max_children=max_children,
                                   max_restarts=max_restarts, max_seconds=max_seconds)


def child_spec(*, data_dir: str | os.PathLike[str] | None = None, max_children: int | None = None,
               max_restarts: int = 10, max_seconds: float = 5.0,
               id: str = "caches") -> ChildSpec:
    """The spec of the caches supervisor, registered as ``zixir.caches``.

    Example:
        >>> spec = child_spec(data_dir="/tmp/zixir-doc")
        >>> spec.name, spec.type
        ('zixir.caches', 'supervisor')

    Args:
        data_dir: where persistent caches keep their LMDB data when
            `Cache.start` is not given a `data_dir`; recorded when the
            supervisor starts (default ``$ZIXIR_DATA_DIR`` or ``./.zixir``).
        max_children: most caches at once (None: no limit).
        max_restarts, max_seconds: restart intensity of the caches supervisor.
        id: the child id under the root supervisor.
    """
    start = functools.partial(_start_caches, data_dir=None if data_dir is None
                              else os.fspath(data_dir), max_children=max_children,
                              max_restarts=max_restarts, max_seconds=max_seconds)
    return ChildSpec(id, start, restart="permanent", shutdown=None, type="supervisor",
                     name=CACHES)


class _StatsCollector(Collector):
    """Exposes every running cache's counters as ``zixir_cache_*`` at scrape time,
    so the read path never touches a Prometheus metric."""

    _COUNTERS = (("hits", "Cache lookups that found a live entry."),
                 ("misses", "Cache lookups that found nothing (or an expired entry)."),
                 ("evictions", "Entries evicted by max_entries or max_bytes (LRU)."),
                 ("expirations", "Expired entries reclaimed."),
                 ("refreshes", "Refresh-ahead reloads that succeeded."),
                 ("refresh_errors", "Refresh-ahead reloads whose loader raised."),
                 ("warm_loaded", "Entries loaded by warm-ups."),
                 ("warm_errors", "Warm-up items that failed."))
    _GAUGES = (("entries", "Entries held, live or not yet reclaimed.", "size"),
               ("bytes", "Encoded (persistent) or estimated size of the entries.", "bytes"))

    def describe(self) -> Iterator[Any]:
        for name, doc in self._COUNTERS:
            yield CounterMetricFamily(f"zixir_cache_{name}", doc, labels=["cache"])
        for name, doc, _ in self._GAUGES:
            yield GaugeMetricFamily(f"zixir_cache_{name}", doc, labels=["cache"])

    def collect(self) -> Iterator[Any]:
        states = [s for s in list(_live.values()) if not s.closed]
        for name, doc in self._COUNTERS:
            family = CounterMetricFamily(f"zixir_cache_{name}", doc, labels=["cache"])
            for s in states:
                family.add_metric([s.name], getattr(s, name))
            yield family
        for name, doc, attr in self._GAUGES:
            gauge = GaugeMetricFamily(f"zixir_cache_{name}", doc, labels=["cache"])
            for s in states:
                gauge.add_metric([s.name], len(s.data) if attr == "size" else s.bytes)
            yield gauge


_collector: list[_StatsCollector] = []
_collector_lock = threading.Lock()


def ensure_collector() -> None:
    """Register the ``zixir_cache_*`` collector on the observability registry, once."""
    if _collector:
        return
    with _collector_lock:
        if _collector:
            return
        from zixir_actors.observability import metrics

        collector = _StatsCollector()
        try:
            metrics.registry.register(collector)
        except ValueError as exc:  # a zixir_cache_* name already taken: report, keep caching
            logger.warning("zixir_cache_* metrics not registered: {}", exc)
        _collector.append(collector)
