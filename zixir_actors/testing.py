"""Test helpers shipped with the product: a fake clock and `wait_for`.

Example:
    >>> from zixir_actors.testing import FakeClock, wait_for
    >>> clock = FakeClock()
    >>> clock.sleep(2.5)          # returns at once, advances the clock
    >>> clock.monotonic()
    2.5
    >>> wait_for(lambda: True, timeout=1.0)
    True
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from zixir_actors.errors import ZixirTimeoutError

if TYPE_CHECKING:
    from zixir_actors.observability import InMemorySpanExporter

__all__ = ["CapturedLogs", "FakeClock", "capture_logs", "capture_spans", "wait_for"]


class FakeClock:
    """A clock that only moves when told to; `sleep` advances it instead of blocking.

    Thread-safe. `sleeps` records every requested sleep, so a test can check a
    backoff schedule without waiting for it.
    """

    def __init__(self, start: float = 0.0, wall: float = 1_700_000_000.0) -> None:
        self._lock = threading.Lock()
        self._now = start
        self._wall_offset = wall - start
        self.sleeps: list[float] = []
        self._listeners: list[Callable[[], object]] = []

    def monotonic(self) -> float:
        with self._lock:
            return self._now

    def time(self) -> float:
        with self._lock:
            return self._now + self._wall_offset

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            if seconds > 0:
                self._now += seconds
            listeners = list(self._listeners)
        for listener in listeners:
            listener()

    def advance(self, seconds: float) -> None:
        """Move the clock forward by `seconds`."""
        if seconds < 0:
            raise ValueError(f"cannot move a clock backwards: {seconds}")
        with self._lock:
            self._now += seconds
            listeners = list(self._listeners)
        for listener in listeners:
            listener()

    def add_listener(self, fn: Callable[[], object]) -> None:
        """Call `fn()` after every `advance` (durable timers wake on it)."""
        with self._lock:
            self._listeners.append(fn)


def wait_for(predicate: Callable[[], object], *, timeout: float = 5.0,
             interval: float = 0.005, what: str | None = None) -> bool:
    """Wait until `predicate()` is truthy, checking every `interval` seconds.

    For conditions no event signals (an OS thread ending, a process exiting).
    Prefer waiting on an `Event`, a future or a `Down` where one exists.

    Raises:
        ZixirTimeoutError: the predicate stayed falsy for `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            label = what or f"wait_for({getattr(predicate, '__name__', predicate)})"
            raise ZixirTimeoutError(label, timeout)
        time.sleep(interval)


# --- observability helpers -------------------------------------------------


class CapturedLogs:
    """The log records `capture_logs` collected, each the parsed JSON line as a dict.

    Example:
        >>> from zixir_actors.observability import logger
        >>> with capture_logs() as logs:
        ...     logger.bind(step="fetch").info("done")
        >>> logs.records[0]["step"], logs.messages
        ('fetch', ['done'])
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[dict[str, Any]] = []

    def _write(self, message: Any) -> None:
        from zixir_actors.observability import format_json

        record = json.loads(format_json(message.record))
        with self._lock:
            self._records.append(record)

    @property
    def records(self) -> list[dict[str, Any]]:
        """The captured records, oldest first (a copy)."""
        with self._lock:
            return list(self._records)

    @property
    def messages(self) -> list[str]:
        return [r["message"] for r in self.records]

    def find(self, message: str) -> list[dict[str, Any]]:
        """The records whose message contains `message`."""
        return [r for r in self.records if message in r["message"]]

    def clear(self) -> None:
        with self._lock:
            self._records.clear()


@contextlib.contextmanager
def capture_logs(level: str | int = "DEBUG") -> Iterator[CapturedLogs]:
    """Collect the log records emitted inside the block, whatever the configured sinks.

    Records are the dicts JSON logging would write (see
    `zixir_actors.observability.format_json`): message, level, trace and span
    ids, bound fields, exception. The library's loggers, quiet by default,
    are enabled inside the block.
    """
    from zixir_actors.observability import logger
    from zixir_actors.observability._logging import library_logs

    captured = CapturedLogs()
    handler = logger.add(captured._write, level=level, format="{message}", catch=False)
    try:
        with library_logs():  # the library is quiet by default: listen inside the block
            yield captured
    finally:
        logger.remove(handler)


@contextlib.contextmanager
def capture_spans(max_spans: int | None = None) -> Iterator[InMemorySpanExporter]:
    """Collect the spans finished inside the block in an `InMemorySpanExporter`.

    Example:
        >>> from zixir_actors.observability import span
        >>> with capture_spans() as spans:
        ...     with span("step"):
        ...         pass
        >>> [s.name for s in spans.spans]
        ['step']
    """
    from zixir_actors.observability import InMemorySpanExporter, add_exporter, remove_exporter

    exporter = add_exporter(InMemorySpanExporter(max_spans))
    try:
        yield exporter
    finally:
        remove_exporter(exporter)
