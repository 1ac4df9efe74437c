"""`SupervisedActor`: Pykka's ThreadingActor with OTP exit semantics.

What it changes in Pykka's actor loop, and why:

- Let it crash: an exception escaping *any* handler, ``ask`` included, stops
  the actor (Pykka keeps an actor alive after a failed ``ask``). The asker still
  receives the exception; then the supervisor restarts the child fresh.
- Exit reasons: the actor records why it stopped (``"normal"``,
  ``"shutdown"``, ``"killed"`` or the exception) and, once its loop is over,
  delivers `Down` to every monitor. Crash detection is event-driven.
- Context propagation: every message carries the sender's `contextvars`
  context, and the handler runs inside it, so a trace span (or any
  `ContextVar`) set by the sender is visible to the receiver.
- Kill: `kill()` stops a child that ignores its shutdown time as far as
  Python allows: the actor is marked dead at once (no further message is
  handled, monitors get ``"killed"``) and an asynchronous exception is raised
  in its thread, which takes effect at the next Python bytecode. A thread
  blocked inside C code (a socket read, `time.sleep`) ends only when that call
  returns: Python cannot kill a thread.
"""

from __future__ import annotations

import contextvars
import ctypes
import queue
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

import pykka
from loguru import logger
from pykka import ActorRegistry
from pykka._envelope import Envelope

from supervisors import _registry
from supervisors.monitor import Down, Monitor

__all__ = ["SupervisedActor", "kill", "set_message_hook", "supervised_class"]

A = TypeVar("A", bound=pykka.Actor)

MessageHook = Callable[[pykka.Actor, Any, float, "BaseException | None"], object]
_message_hook: MessageHook | None = None


def set_message_hook(hook: MessageHook | None) -> MessageHook | None:
    """Install `hook(actor, message, seconds, error)`, called after each message
    handled by a supervised actor (``None`` removes it). Returns the previous hook.

    The hook runs in the actor's thread on the hot path: keep it to a few
    microseconds (update pre-bound metrics, never log per message).
    """
    global _message_hook
    previous, _message_hook = _message_hook, hook
    return previous


class _Killed(BaseException):
    """Raised asynchronously in the thread of a killed actor."""


class _ContextEnvelope(Envelope[Any]):
    __slots__ = ("context",)

    context: contextvars.Context


class _ContextInbox(queue.Queue):  # type: ignore[type-arg]
    """An inbox that stamps each envelope with the sender's context."""

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        envelope = _ContextEnvelope(item.message, item.reply_to)
        envelope.context = contextvars.copy_context()
        super().put(envelope, block, timeout)


class SupervisedActor(pykka.ThreadingActor):
    """Base class for actors with OTP exit semantics (see the module docstring).

    Subclass it for actors of your own; any other `pykka.ThreadingActor`
    started by a supervisor or `spawn` gets the same behaviour through
    `supervised_class`.

    Example:
        >>> from supervisors import SupervisedActor, monitor
        >>> class Counter(SupervisedActor):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.n = 0
        ...     def on_receive(self, message):
        ...         self.n += 1
        ...         return self.n
        >>> ref = Counter.start()
        >>> ref.ask("tick", timeout=1.0)
        1
        >>> m = monitor(ref)
        >>> ref.stop()
        True
        >>> m.wait(timeout=1.0).reason
        'normal'
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._zx_lock = threading.Lock()
        self._zx_monitors: list[Monitor] | None = []
        self._zx_reason: Any = None
        self._zx_shutdown = False
        self._zx_thread: threading.Thread | None = None
        self._zx_started = threading.Event()
        self._zx_start_error: BaseException | None = None

    @staticmethod
    def _create_actor_inbox() -> Any:
        return _ContextInbox()

    # -- the loop -----------------------------------------------------------

    def _actor_loop(self) -> None:
        self._zx_thread = threading.current_thread()
        try:
            try:
                self._actor_loop_setup()
            finally:
                if self._zx_reason is not None:
                    self._zx_start_error = self._zx_reason
                self._zx_started.set()
            self._zx_run()
            self._actor_loop_teardown()
        except _Killed:
            self._actor_loop_teardown()
        except BaseException as exc:  # noqa: BLE001 - recorded as the exit reason
            self._zx_record(exc)
        finally:
            self._zx_exit()

    def _zx_run(self) -> None:
        inbox = self.actor_inbox
        stopped = self.actor_stopped
        while not stopped.is_set():
            envelope = inbox.get()
            reply_to = envelope.reply_to
            hook = _message_hook
            began = time.perf_counter() if hook is not None else 0.0
            error: BaseException | None = None
            try:
                context = getattr(envelope, "context", None)
                if context is not None:
                    response = context.run(self._handle_receive, envelope.message)
                else:
                    response = self._handle_receive(envelope.message)
                if reply_to is not None:
                    reply_to.set(response)
            except _Killed:
                raise
            except BaseException as exc:  # noqa: BLE001 - let it crash
                error = exc
                exc_info = sys.exc_info()
                if reply_to is not None:
                    reply_to.set_exception(exc_info)  # type: ignore[arg-type]
                self._zx_crash(exc_info)  # type: ignore[arg-type]
            if hook is not None:
                try:
                    hook(self, envelope.message, time.perf_counter() - began, error)
                except Exception:  # noqa: BLE001 - instrumentation never kills an actor
                    pass

    def _zx_crash(self, exc_info: tuple[type[BaseException], BaseException, TracebackType]) -> None:
        self._handle_failure(*exc_info)
        try:
            self.on_failure(*exc_info)
        except Exception:  # noqa: BLE001
            logger.opt(exception=True).error("on_failure of {} raised", self)

    def _handle_failure(self, exception_type: type[BaseException] | None,
                        exception_value: BaseException | None,
                        traceback: TracebackType | None) -> None:
        self._zx_record(exception_value)
        # The traceback goes into the supervisor's restart report, once.
        logger.bind(actor=str(self)).debug("actor {} crashed: {!r}", self, exception_value)
        ActorRegistry.unregister(self.actor_ref)
        self.actor_stopped.set()

    def _zx_record(self, reason: Any) -> None:
        with self._zx_lock:
            if self._zx_reason is None:
                self._zx_reason = reason

    def _zx_exit(self) -> None:
        try:
            ActorRegistry.unregister(self.actor_ref)
            self.actor_stopped.set()
            with self._zx_lock:
                reason = self._zx_reason
                if reason is None:
                    reason = "shutdown" if self._zx_shutdown else "normal"
                    self._zx_reason = reason
                monitors, self._zx_monitors = self._zx_monitors, None
            _registry.forget(self.actor_ref)
            if monitors:
                down = Down(self.actor_ref, reason)
                for m in monitors:
                    m._fire(down)
        except _Killed:
            pass

    # -- used by monitor(), supervisors and kill() ---------------------------

    def _zx_add_monitor(self, m: Monitor) -> bool:
        with self._zx_lock:
            if self._zx_monitors is None:
                return False
            self._zx_monitors.append(m)
            return True

    def _zx_remove_monitor(self, m: Monitor) -> None:
        with self._zx_lock:
            if self._zx_monitors is not None and m in self._zx_monitors:
                self._zx_monitors.remove(m)

    @property
    def exit_reason(self) -> Any:
        """Why the actor stopped, or ``None`` while it runs."""
        return self._zx_reason if self._zx_monitors is None else None


def _overrides_on_start(cls: type) -> bool:
    return cls.on_start is not pykka.Actor.on_start


_wrapped: dict[type, type] = {}
_wrapped_lock = threading.Lock()


def supervised_class(cls: type[A]) -> type[A]:
    """Return `cls` with `SupervisedActor` behaviour (itself if it already has it).

    The subclass keeps the name, module and all behaviour of `cls`; it is
    cached, so each class is wrapped once.
    """
    if issubclass(cls, SupervisedActor):
        return cls
    if not issubclass(cls, pykka.ThreadingActor):
        raise TypeError(f"{cls!r} is not a pykka.ThreadingActor subclass")
    with _wrapped_lock:
        sub = _wrapped.get(cls)
        if sub is None:
            sub = type(cls.__name__, (SupervisedActor, cls), {
                "__module__": cls.__module__, "__qualname__": cls.__qualname__,
                "__doc__": cls.__doc__,
            })
            _wrapped[cls] = sub
        return sub  # type: ignore[return-value]


def wait_started(ref: pykka.ActorRef[Any], *, timeout: float | None) -> BaseException | None:
    """Wait until the actor's `on_start` has run; return its error, if any.

    Actors without an `on_start` of their own are ready once `start()`
    returns, so no thread handoff is paid for them.

    Raises:
        TimeoutError: `on_start` did not finish within `timeout`.
    """
    actor = ref._actor_weakref()  # noqa: SLF001
    if not isinstance(actor, SupervisedActor) or not _overrides_on_start(type(actor)):
        return None
    if not actor._zx_started.wait(timeout):
        raise TimeoutError(f"on_start of {actor} did not finish within {timeout}s")
    return actor._zx_start_error


def mark_shutdown(ref: pykka.ActorRef[Any]) -> None:
    """Make the actor's next stop report ``"shutdown"`` rather than ``"normal"``."""
    actor = ref._actor_weakref()  # noqa: SLF001
    if isinstance(actor, SupervisedActor):
        actor._zx_shutdown = True


def kill(ref: pykka.ActorRef[Any]) -> None:
    """Kill an actor as far as Python allows (see the module docstring).

    Monitors receive ``Down(ref, "killed")`` at once; no further message is
    handled; pending ``ask`` callers get `pykka.ActorDeadError`.
    """
    actor = ref._actor_weakref()  # noqa: SLF001
    ActorRegistry.unregister(ref)
    ref.actor_stopped.set()
    if actor is None:
        return
    if isinstance(actor, SupervisedActor):
        actor._zx_record("killed")
        thread = actor._zx_thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident or 0),
                                                       ctypes.py_object(_Killed))
        # Wake an idle loop blocked on its inbox so the thread can finish.
        try:
            actor.actor_inbox.put(Envelope(pykka.messages._ActorStop()))  # noqa: SLF001
        except Exception:  # noqa: BLE001
            pass
        actor._zx_exit()
