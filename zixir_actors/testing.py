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

import threading
import time
from collections.abc import Callable

from zixir_actors.errors import ZixirTimeoutError

__all__ = ["FakeClock", "wait_for"]


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

    def advance(self, seconds: float) -> None:
        """Move the clock forward by `seconds`."""
        if seconds < 0:
            raise ValueError(f"cannot move a clock backwards: {seconds}")
        with self._lock:
            self._now += seconds


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
            raise ZixirTimeoutError(what or f"wait_for({getattr(predicate, '__name__', predicate)})",
                                    timeout)
        time.sleep(interval)
