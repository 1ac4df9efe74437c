"""Warming: fill a cache from pairs, or from keys and a loader, with bounded concurrency.

Items are pulled lazily from the source (a generator of a million keys is
fine), loaded by up to `concurrency` threads, spaced to at most `rate` items
per second, and put into the cache. A failing item is counted and recorded,
never raised: the cache stays usable and the rest of the items still load.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zixir_actors.errors import ConfigError
from zixir_actors.observability import logger

if TYPE_CHECKING:
    from zixir_actors.cache._state import CacheState

__all__ = ["DEFAULT_WARM_CONCURRENCY", "MAX_RECORDED_FAILURES", "WarmProgress", "WarmReport",
           "run_warm"]

DEFAULT_WARM_CONCURRENCY = 4
MAX_RECORDED_FAILURES = 100
"""`WarmReport.failures` keeps the first failures only; `errors` counts them all."""


@dataclass(frozen=True, slots=True)
class WarmProgress:
    """Passed to the `progress` callback after each item: running totals."""

    loaded: int
    errors: int


@dataclass(frozen=True, slots=True)
class WarmReport:
    """The outcome of one warm-up.

    Attributes:
        loaded: items put into the cache.
        errors: items that failed (loader raised, bad pair, unserializable value).
        failures: ``(key, error)`` for the first `MAX_RECORDED_FAILURES` failures.
        seconds: wall time taken.
        cancelled: the warm-up stopped early (deadline passed or the cache stopped).
    """

    loaded: int
    errors: int
    failures: tuple[tuple[Any, BaseException], ...]
    seconds: float
    cancelled: bool = False


class _Run:
    def __init__(self, state: CacheState, items: Iterator[Any], loader: Callable[[Any], Any] | None,
                 ttl: float | None, rate: float | None,
                 progress: Callable[[WarmProgress], object] | None,
                 deadline: float | None) -> None:
        self.state = state
        self.items = items
        self.loader = loader
        self.ttl = ttl
        self.interval = 1.0 / rate if rate else 0.0
        self.progress = progress
        self.deadline = deadline
        self.lock = threading.Lock()
        self.next_slot: float | None = None
        self.loaded = 0
        self.errors = 0
        self.failures: list[tuple[Any, BaseException]] = []
        self.cancelled = False
        self.exhausted = False

    def take(self) -> tuple[bool, Any]:
        """The next item and its start slot; (False, None) when done."""
        with self.lock:
            if self.exhausted or self.cancelled:
                return False, None
            if self.state.closed or (self.deadline is not None
                                     and time.monotonic() >= self.deadline):
                self.cancelled = True
                return False, None
            try:
                item = next(self.items)
            except StopIteration:
                self.exhausted = True
                return False, None
            except Exception as exc:  # a broken source ends the warm-up
                self.exhausted = True
                self._fail("<source>", exc)
                return False, None
            wait = 0.0
            if self.interval:
                clock = self.state.clock
                now = clock.monotonic()
                slot = now if self.next_slot is None else max(now, self.next_slot)
                self.next_slot = slot + self.interval
                wait = slot - now
        if wait > 0:
            self.state.clock.sleep(wait)
        return True, item

    def work(self) -> None:
        from zixir_actors.cache._state import Closed

        while True:
            ok, item = self.take()
            if not ok:
                return
            key: Hashable = item
            try:
                if self.loader is None:
                    key, value = item
                else:
                    value = self.loader(key)
                self.state.put(key, value, self.ttl)
                if self.loader is not None:
                    self.state.register_loader(key, self.loader)
            except Closed:
                with self.lock:
                    self.cancelled = True
                return
            except Exception as exc:  # counted, the cache stays usable
                with self.lock:
                    self._fail(key, exc)
                    snapshot = WarmProgress(self.loaded, self.errors)
            else:
                with self.lock:
                    self.loaded += 1
                    self.state.warm_loaded += 1
                    snapshot = WarmProgress(self.loaded, self.errors)
            if self.progress is not None:
                try:
                    self.progress(snapshot)
                except Exception:  # a broken progress callback is not fatal
                    logger.opt(exception=True).warning("warm progress callback raised")

    def _fail(self, key: Any, exc: BaseException) -> None:
        self.errors += 1
        self.state.warm_errors += 1
        if len(self.failures) < MAX_RECORDED_FAILURES:
            self.failures.append((key, exc))


def run_warm(state: CacheState, source: Iterable[Any] | Callable[[], Iterable[Any]],
             loader: Callable[[Any], Any] | None, *,
             concurrency: int, rate: float | None, ttl: float | None,
             progress: Callable[[WarmProgress], object] | None,
             timeout: float | None) -> WarmReport:
    """Warm `state` from `source` and return the report (see `Cache.warm`)."""
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigError("concurrency", concurrency, "must be an int >= 1")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float))
                             or not rate > 0):
        raise ConfigError("rate", rate, "must be None or a number of items per second > 0")
    if loader is not None and not callable(loader):
        raise ConfigError("loader", loader, "must be callable")
    if loader is None and callable(source):
        source = source()
    try:
        items = iter(source)  # type: ignore[arg-type]
    except TypeError as exc:
        raise ConfigError("source", source, "must be iterable (pairs, or keys with a loader)") \
            from exc
    began = time.monotonic()
    deadline = None if timeout is None else began + timeout
    run = _Run(state, items, loader, ttl, rate, progress, deadline)
    if concurrency == 1:
        run.work()
    else:
        # Each worker runs in a copy of the caller's context, so spans that
        # loaders open are children of the caller's (the warm-up's) span.
        threads = [threading.Thread(target=contextvars.copy_context().run, args=(run.work,),
                                    name=f"zixir-cache-{state.name}-warm-{i}", daemon=True)
                   for i in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    report = WarmReport(run.loaded, run.errors, tuple(run.failures),
                        time.monotonic() - began, run.cancelled)
    logger.bind(cache=state.name, loaded=report.loaded, errors=report.errors).info(
        "cache {} warmed: {} loaded, {} errors", state.name, report.loaded, report.errors)
    return report
