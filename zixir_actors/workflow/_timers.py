"""Durable timers' in-memory half: wake parked runs when their time comes.

The wake-up time of a parked run is stored with the run (so it survives
restarts); this module only holds the pending wake-ups of this process in
a heap, one per clock, served by one thread that exits when nothing is
pending. Timers read the workflow's clock (wall time, `Clock.time`), so a
`zixir_actors.testing.FakeClock` wakes them when the test advances it.

`TimerService` is the supervised owner (``zixir.timers`` in the runtime's
tree): stopping it cancels the pending wake-ups of this process, and its
(re)start re-arms those of the runs parked here.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable, Hashable
from typing import Any

from supervisors import ChildSpec, SupervisedActor
from zixir_actors._clock import SystemClock
from zixir_actors.observability import logger

__all__ = ["TIMERS_NAME", "TimerService", "Timers", "cancel_all", "child_spec", "on_rearm",
           "timers_for"]

TIMERS_NAME = "zixir.timers"
"""The registered name of the runtime's timer service."""
_POLL = 0.05  # how often a clock that cannot notify is read again
_MAX_WAIT = 1.0  # a system-clock wait is re-checked at least this often (clock jumps)

log = logger.bind(service="timers")


class Timers:
    """Pending callbacks of one clock, due at wall times of that clock.

    Example:
        >>> from zixir_actors.testing import FakeClock
        >>> clock = FakeClock(); fired = threading.Event()
        >>> timers = Timers(clock)
        >>> timers.add(clock.time() + 5, "k", fired.set)
        >>> clock.advance(5); fired.wait(2)
        True
    """

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, Hashable]] = []
        self._entries: dict[Hashable, tuple[int, Callable[[], object]]] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._system = isinstance(clock, SystemClock)
        add_listener = getattr(clock, "add_listener", None)
        if callable(add_listener):
            add_listener(self.kick)
            self._notifies = True
        else:
            self._notifies = self._system

    def __len__(self) -> int:
        with self._cond:
            return len(self._entries)

    def add(self, due: float, key: Hashable, fn: Callable[[], object]) -> None:
        """Call `fn()` once the clock reads `due` or later (replaces the timer of `key`)."""
        with self._cond:
            ident = next(self._ids)
            self._entries[key] = (ident, fn)
            heapq.heappush(self._heap, (due, ident, key))
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, daemon=True,
                                                name="zixir-timers")
                self._thread.start()
            self._cond.notify_all()

    def cancel(self, key: Hashable) -> bool:
        """Drop the timer of `key`; False if there was none."""
        with self._cond:
            found = self._entries.pop(key, None) is not None
            self._cond.notify_all()
            return found

    def clear(self) -> None:
        with self._cond:
            self._entries.clear()
            self._heap.clear()
            self._cond.notify_all()

    def kick(self) -> None:
        """The clock moved (a fake clock's `advance`): check the heap again."""
        with self._cond:
            self._cond.notify_all()

    def _serve(self) -> None:
        while True:
            with self._cond:
                fire: list[Callable[[], object]] = []
                while True:
                    # A cancelled or replaced timer leaves a stale heap item: skip it.
                    while self._heap:
                        due, ident, key = self._heap[0]
                        entry = self._entries.get(key)
                        if entry is None or entry[0] != ident:
                            heapq.heappop(self._heap)
                            continue
                        break
                    if not self._heap:
                        self._thread = None
                        return
                    due = self._heap[0][0]
                    now = self.clock.time()
                    if now >= due:
                        break
                    if self._system:
                        self._cond.wait(min(due - now, _MAX_WAIT))
                    elif self._notifies:
                        self._cond.wait(_MAX_WAIT)
                    else:
                        self._cond.wait(_POLL)
                now = self.clock.time()
                while self._heap and self._heap[0][0] <= now:
                    _, ident, key = heapq.heappop(self._heap)
                    entry = self._entries.get(key)
                    if entry is not None and entry[0] == ident:
                        del self._entries[key]
                        fire.append(entry[1])
            for fn in fire:
                try:
                    fn()
                except BaseException as exc:  # nor a SystemExit: this thread serves every
                    # run's wake-ups, deadlines and flushes; were it to end here, `_thread`
                    # would stay set and no timer of this clock would fire again.
                    log.error("timer callback failed", error=repr(exc))


_registry: dict[int, Timers] = {}
_registry_lock = threading.Lock()


def timers_for(clock: Any) -> Timers:
    """The `Timers` of `clock` in this process (made on first use)."""
    found = _registry.get(id(clock))
    if found is not None and found.clock is clock:
        return found
    with _registry_lock:
        found = _registry.get(id(clock))
        if found is None or found.clock is not clock:
            found = _registry[id(clock)] = Timers(clock)
        return found


def cancel_all() -> None:
    """Cancel every pending timer of this process (their runs stay parked in the store)."""
    with _registry_lock:
        timers = list(_registry.values())
    for t in timers:
        t.clear()


_rearm_hooks: list[Callable[[], object]] = []


def on_rearm(fn: Callable[[], object]) -> None:
    """Call `fn()` whenever the timer service (re)starts: it re-arms its timers."""
    if fn not in _rearm_hooks:
        _rearm_hooks.append(fn)


class TimerService(SupervisedActor):
    """The supervised owner of this process's timers (``zixir.timers``)."""

    def on_start(self) -> None:
        for hook in list(_rearm_hooks):
            hook()

    def on_receive(self, message: Any) -> Any:
        if message == "pending":
            with _registry_lock:
                return sum(len(t) for t in _registry.values())
        raise TypeError(f"TimerService got an unknown message: {message!r}")

    def on_stop(self) -> None:
        cancel_all()

    def on_failure(self, *args: Any) -> None:
        cancel_all()


def child_spec() -> ChildSpec:
    """The spec of ``zixir.timers``.

    Example:
        >>> child_spec().name
        'zixir.timers'
    """
    return ChildSpec(id="timers", start=TimerService, restart="permanent", shutdown=5.0,
                     type="worker", name=TIMERS_NAME)
