"""`monitor(target)`: be told when an actor stops, for any reason.

Example:
    >>> import pykka
    >>> from supervisors import monitor, spawn
    >>> class Worker(pykka.ThreadingActor):
    ...     def on_receive(self, message):
    ...         raise ValueError(message)
    >>> worker = spawn(Worker).ref
    >>> m = monitor(worker)
    >>> worker.tell("boom")
    >>> m.wait(timeout=1.0).reason
    ValueError('boom')
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pykka

from supervisors import _report
from supervisors.errors import NameNotFoundError, SupervisorError, SupervisorTimeoutError

__all__ = ["NORMAL_REASONS", "Down", "Monitor", "monitor"]

NORMAL_REASONS = frozenset({"normal", "shutdown"})
"""Exit reasons that are not crashes: a `transient` child is not restarted after them."""


@dataclass(frozen=True, slots=True)
class Down:
    """The notice a watcher gets when a monitored actor stops.

    `reason` is ``"normal"`` (it stopped itself or was stopped by a caller),
    ``"shutdown"`` (stopped by its supervisor), ``"killed"`` (did not stop in
    time), ``"noproc"`` (was already dead when monitored), ``"unknown"`` (an
    actor without supervised semantics stopped), or the exception that crashed it.
    """

    ref: pykka.ActorRef[Any]
    reason: Any

    @property
    def abnormal(self) -> bool:
        """True for a crash, a kill or noproc: what a `transient` child restarts after."""
        return not (isinstance(self.reason, str) and self.reason in NORMAL_REASONS)


Watcher = "pykka.ActorRef[Any] | Callable[[Down], object] | None"


class Monitor:
    """One monitor: `wait()` for the `Down`, or `cancel()` it."""

    __slots__ = ("_cancelled", "_detach", "_done", "_down", "_event", "_watcher", "target")

    def __init__(self, target: pykka.ActorRef[Any],
                 watcher: pykka.ActorRef[Any] | Callable[[Down], object] | None) -> None:
        self.target = target
        self._watcher = watcher
        # A supervisor's monitors have a watcher and are never waited on: their
        # event is made only if someone calls wait().
        self._event: threading.Event | None = threading.Event() if watcher is None else None
        self._down: Down | None = None
        self._done = False
        self._cancelled = False
        self._detach: Callable[[], None] | None = None

    def _fire(self, down: Down) -> None:
        # The watcher is told before `wait()` returns, so a test (or a caller)
        # that waited on the monitor can rely on the watcher having the Down.
        if self._down is not None or self._cancelled:
            return
        self._down = down
        watcher = self._watcher
        if isinstance(watcher, pykka.ActorRef):
            with contextlib.suppress(pykka.ActorDeadError):
                watcher.tell(down)
        elif watcher is not None:
            try:
                watcher(down)
            except Exception as failure:
                _report.log_crash("ERROR", failure, "monitor watcher {!r} raised: {}", watcher,
                                  _report.summary(failure))
        self._done = True
        event = self._event
        if event is not None:
            event.set()

    def _ready(self) -> threading.Event:
        event = self._event
        if event is None:
            with _lazy_lock:
                event = self._event
                if event is None:
                    event = self._event = threading.Event()
            if self._done or self._cancelled:
                event.set()
        return event

    @property
    def down(self) -> Down | None:
        """The `Down`, once the target has stopped (and the watcher was told)."""
        return self._down if self._done else None

    def wait(self, *, timeout: float | None = None) -> Down:
        """Block until the target stops and return the `Down`.

        Raises:
            SupervisorTimeoutError: the target is still running after `timeout`.
            SupervisorError: the monitor was cancelled before a `Down` arrived.
        """
        if not self._ready().wait(timeout):
            raise SupervisorTimeoutError(f"monitor of {self.target}", timeout)
        if not self._done:
            raise SupervisorError(f"monitor of {self.target} was cancelled")
        return self._down  # type: ignore[return-value]

    def cancel(self) -> None:
        """Stop monitoring (demonitor); no `Down` is delivered afterwards.

        Cancelling after the `Down` arrived changes nothing; `wait()` on a
        monitor cancelled before then raises `SupervisorError`.
        """
        if self._done:
            return
        self._cancelled = True
        event = self._event
        if event is not None:
            event.set()
        if self._detach is not None:
            self._detach()


_lazy_lock = threading.Lock()


class _NotifyingEvent(threading.Event):
    """A stop event that runs callbacks when set, for actors we did not start.

    It also reports the event it replaced: if the actor's thread set the old
    one while we swapped, the actor still reads as stopped.
    """

    def __init__(self, replaced: threading.Event) -> None:
        super().__init__()
        self.replaced = replaced
        self.callbacks: list[Callable[[], None]] = []

    def is_set(self) -> bool:
        return super().is_set() or self.replaced.is_set()

    def set(self) -> None:
        was_set = super().is_set()
        super().set()
        if not was_set:
            for callback in list(self.callbacks):
                callback()


_foreign_lock = threading.Lock()


def _watch_foreign(actor: pykka.Actor, m: Monitor) -> bool:
    """Hook a plain Pykka actor's stop event; False if it has already stopped."""
    with _foreign_lock:
        event = actor.actor_stopped
        if not isinstance(event, _NotifyingEvent):
            if event.is_set():
                return False
            new = _NotifyingEvent(event)
            actor.actor_stopped = new
            actor.actor_ref.actor_stopped = new
            if event.is_set():  # it stopped while we swapped
                new.set()
                return False
            event = new
        callback = lambda: m._fire(Down(actor.actor_ref, "unknown"))  # noqa: E731
        event.callbacks.append(callback)
        m._detach = lambda: (event.callbacks.remove(callback)
                             if callback in event.callbacks else None)
        return not event.is_set()


def _resolve(target: Any) -> pykka.ActorRef[Any]:
    """The ActorRef a name or a `NamedRef` stands for now."""
    from supervisors.registry import NamedRef, whereis

    if isinstance(target, NamedRef):
        return target.whereis(timeout=0)
    if isinstance(target, str):
        found = whereis(target)
        if found is None:
            raise NameNotFoundError(target)
        return found
    raise TypeError(f"cannot monitor {type(target).__name__}: expected an ActorRef or a name")


def _is_supervised(actor: object) -> bool:
    from supervisors._actor import SupervisedActor  # it imports this module

    return SupervisedActor in type(actor).__mro__  # isinstance, without ABCMeta's hook


def monitor(target: Any,
            watcher: pykka.ActorRef[Any] | Callable[[Down], object] | None = None) -> Monitor:
    """Watch `target` (an ActorRef, a registered name, or a `NamedRef`).

    When it stops, for any reason, a `Down(ref, reason)` is delivered once:
    told to `watcher` if it is an ActorRef, passed to it if it is a callable,
    and always available through the returned `Monitor`'s `wait()`. A target
    that is already dead gives ``Down(ref, "noproc")`` at once. Names are
    resolved now: the monitor watches the current incarnation.

    Raises:
        NameNotFoundError: `target` is a name that nothing holds.
        TypeError: `target` is not an actor reference or a name.
    """
    if not isinstance(target, pykka.ActorRef):
        target = _resolve(target)
    m = Monitor(target, watcher)
    actor = target._actor_weakref()
    add = getattr(actor, "_zx_add_monitor", None)  # a SupervisedActor (every child of ours)
    if actor is None:
        attached = False
    elif add is not None and _is_supervised(actor):
        attached = add(m)
        if attached:
            m._detach = functools.partial(actor._zx_remove_monitor, m)
    else:
        attached = _watch_foreign(actor, m)
    if not attached:
        m._fire(Down(target, "noproc"))
    return m
