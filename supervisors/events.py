"""Supervision events, delivered to listeners (metrics, logs, the CLI).

Example:
    >>> from supervisors import add_listener, remove_listener, ChildRestarted
    >>> seen = []
    >>> listener = add_listener(lambda e: seen.append(e) if isinstance(e, ChildRestarted) else None)
    >>> remove_listener(listener)
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from supervisors import _report

__all__ = [
    "ChildExited",
    "ChildRestarted",
    "ChildStarted",
    "IntensityExceeded",
    "SupervisionEvent",
    "add_listener",
    "remove_listener",
]


@dataclass(frozen=True, slots=True)
class ChildStarted:
    """A supervisor started (or adopted) a child."""

    supervisor: str
    child_id: Any
    ref: Any
    adopted: bool = False


@dataclass(frozen=True, slots=True)
class ChildExited:
    """A child stopped; `reason` as in `Down.reason`."""

    supervisor: str
    child_id: Any
    ref: Any
    reason: Any


@dataclass(frozen=True, slots=True)
class ChildRestarted:
    """A supervisor restarted a child after it exited with `reason`."""

    supervisor: str
    child_id: Any
    reason: Any
    restart_count: int


@dataclass(frozen=True, slots=True)
class IntensityExceeded:
    """A supervisor gave up: more than `max_restarts` restarts in `max_seconds`."""

    supervisor: str
    child_id: Any
    reason: Any
    max_restarts: int
    max_seconds: float


SupervisionEvent = ChildStarted | ChildExited | ChildRestarted | IntensityExceeded
Listener = Callable[[SupervisionEvent], object]

_listeners: tuple[Listener, ...] = ()
_lock = threading.Lock()


def add_listener(listener: Listener) -> Listener:
    """Call `listener(event)` for every supervision event; returns it for `remove_listener`.

    Listeners run in the supervisor's thread: keep them short. An exception in
    a listener is logged and never disturbs supervision.
    """
    global _listeners
    with _lock:
        _listeners = (*_listeners, listener)
    return listener


def remove_listener(listener: Listener) -> None:
    """Stop calling `listener`; removing one that is not installed is a no-op."""
    global _listeners
    with _lock:
        _listeners = tuple(x for x in _listeners if x is not listener)


def listening() -> bool:
    """Whether any listener is installed (events are not even built otherwise)."""
    return bool(_listeners)


def emit(event: SupervisionEvent) -> None:
    for listener in _listeners:
        try:
            listener(event)
        except Exception as failure:
            _report.log_crash("WARNING", failure, "supervision listener {} failed: {}", listener,
                              _report.summary(failure))
