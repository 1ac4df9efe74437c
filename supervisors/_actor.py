"""`SupervisedActor`: Pykka's ThreadingActor with OTP exit semantics.

What it changes in Pykka's actor loop, and why:

- Let it crash: an exception escaping *any* handler, ``ask`` included, stops
  the actor (Pykka keeps an actor alive after a failed ``ask``). The actor is
  marked dead first, then the asker receives the exception, then the
  supervisor (told through `monitor`) restarts the child fresh.
- Exit reasons: the actor records why it stopped (``"normal"``,
  ``"shutdown"``, ``"killed"`` or the exception) and, once its loop is over,
  delivers `Down` to every monitor. Crash detection is event-driven.
- No lost replies: messages still queued when the actor exits, or sent in
  the instant it exits, are answered with `pykka.ActorDeadError`.
- Context propagation: every message carries the sender's `contextvars`
  context, and the handler runs inside it, so a trace span (or any
  `ContextVar`) set by the sender is visible to the receiver.
- Kill: `kill()` stops a child that ignores its shutdown time as far as
  Python allows: the actor is marked dead at once (no further message is
  handled, `on_stop` is not called, monitors get ``"killed"``, the ask in
  flight and queued asks get `pykka.ActorDeadError`) and, if the actor is
  inside a handler, an asynchronous exception is raised in its thread, which
  takes effect at the next Python bytecode. A thread blocked inside C code (a
  socket read, `time.sleep`, a lock) ends only when that call returns: Python
  cannot kill a thread. Killing a supervisor kills its children too.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import itertools
import queue
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar, cast

import pykka
import pykka._threading as pykka_threading
from pykka import ActorDeadError, ActorRegistry
from pykka._envelope import Envelope
from pykka.messages import ProxyCall, ProxyGetAttr, ProxySetAttr, _ActorStop

from supervisors import _registry, _report
from supervisors.monitor import Down, Monitor

__all__ = ["SupervisedActor", "kill", "set_message_hook", "supervised_class"]

A = TypeVar("A", bound=pykka.Actor)

MessageHook = Callable[[pykka.Actor, Any, float, "BaseException | None"], object]
_message_hook: MessageHook | None = None


def set_message_hook(hook: MessageHook | None) -> MessageHook | None:
    """Install `hook(actor, message, seconds, error)`, called after each message
    handled by a supervised actor (``None`` removes it). Returns the previous hook.

    Example:
        >>> from supervisors import set_message_hook
        >>> previous = set_message_hook(lambda actor, message, seconds, error: None)
        >>> _ = set_message_hook(previous)

    The hook runs in the actor's thread on the hot path: keep it to a few
    microseconds (update pre-bound metrics, never log per message). An
    exception in the hook is ignored.
    """
    global _message_hook
    previous, _message_hook = _message_hook, hook
    return previous


class _Killed(BaseException):
    """Raised asynchronously in the thread of a killed actor."""


def _set_async_exc(thread: threading.Thread, exc: type[BaseException] | None) -> None:
    # None clears a pending asynchronous exception of that thread.
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread.ident or 0), None if exc is None else ctypes.py_object(exc))


class _ContextEnvelope(Envelope[Any]):
    __slots__ = ("context",)

    context: contextvars.Context


class _ContextInbox(queue.SimpleQueue):  # type: ignore[type-arg]
    """An inbox that stamps each envelope with the sender's context.

    A C `SimpleQueue` underneath: an unbounded inbox, as Pykka's `Queue`, at a
    fraction of the cost per message and per actor. Once its actor has
    exited the inbox is closed: a message that slipped in after the actor's
    last drain (the sender saw it alive a moment before) is answered by the
    sender itself, so no asker waits for a reply that never comes.
    """

    closed = False
    owner: object = "actor"

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        envelope = _ContextEnvelope(item.message, item.reply_to)
        envelope.context = contextvars.copy_context()
        super().put(envelope)
        if self.closed:
            self.drain()

    def put_nowait(self, item: Any) -> None:
        self.put(item)

    def put_stamped(self, envelope: _ContextEnvelope) -> None:
        """Put an envelope that already carries its sender's context (see `stamped`)."""
        super().put(envelope)
        if self.closed:
            self.drain()

    def close(self, owner: object, *, wake: bool = False) -> None:
        """Refuse further messages; `wake` unblocks a loop waiting on `get()`."""
        self.owner = owner
        self.closed = True
        self.drain()
        if wake:
            super().put(_WAKE)

    def drain(self) -> None:
        """Answer every queued message: stops with None, asks with ActorDeadError."""
        taken: list[Any] = []
        while not self.empty():
            try:
                taken.append(self.get_nowait())
            except queue.Empty:
                break
        for envelope in taken:
            reply_to = envelope.reply_to
            if envelope is _WAKE:
                super().put(_WAKE)
            elif reply_to is not None:
                try:
                    if isinstance(envelope.message, _ActorStop):
                        reply_to.set(None)
                    else:
                        reply_to.set_exception((ActorDeadError, ActorDeadError(
                            f"{self.owner} stopped before handling the message"), None))
                except queue.Full:
                    pass


_WAKE: Envelope[Any] = Envelope(None)
"""Put in a killed actor's closed inbox to end a loop blocked on `get()`."""


def stamped(message: Any, reply_to: pykka.Future[Any] | None) -> _ContextEnvelope:
    """An envelope carrying the calling thread's context, to be put in an inbox later
    (an ask parked until a restarting actor's next incarnation registers its name)."""
    envelope = _ContextEnvelope(message, reply_to)
    envelope.context = contextvars.copy_context()
    return envelope


def _no_wait_start_supported() -> bool:
    # Thread.start is "put in _limbo, _start_new_thread(_bootstrap), wait for
    # _started" on CPython 3.10-3.12; other versions start the standard way.
    names = threading.Thread.start.__code__.co_names
    return all(hasattr(threading, n) for n in ("_start_new_thread", "_limbo",
                                                "_active_limbo_lock")) \
        and "_start_new_thread" in names and "_limbo" in names


_NO_WAIT_START = _no_wait_start_supported()
_thread_numbers = getattr(pykka_threading, "_actor_thread_counter", None) or itertools.count()


_exit_hook_installed = False
_exit_hook_lock = threading.Lock()


def _install_exit_wait() -> None:
    """At interpreter exit, let actor threads still starting register themselves.

    Threading's exit joins the non-daemon threads that have run their
    bootstrap; one started a moment before (without the handshake) might not
    have yet. This hook runs before that join (threading's own exit hooks run
    first) and waits for such threads, so they are joined as any thread
    started the standard way.
    """
    global _exit_hook_installed
    with _exit_hook_lock:
        if _exit_hook_installed:
            return
        _exit_hook_installed = True
        register = getattr(threading, "_register_atexit", None)
        if register is not None:
            with contextlib.suppress(RuntimeError):  # already shutting down
                register(_await_starting_threads)


def _await_starting_threads() -> None:
    for thread in list(threading._limbo):  # type: ignore[attr-defined]
        if isinstance(thread, _ActorThread):
            thread._started.wait(5.0)  # type: ignore[attr-defined]


class _ActorThread(threading.Thread):
    """An actor's thread, whose `start()` does not wait for the thread to run.

    `Thread.start` blocks until the new thread has run its bootstrap: a round
    trip between the two threads (the starter sleeps, the new thread wakes
    it) that a supervisor's restart would pay for nothing, since the actor's
    messages already queue in its inbox. Until it has run, the thread counts
    in `threading.enumerate()` and `active_count()` (as any thread being
    started), `is_alive()` is True and `join()` waits for it to start first.
    """

    def is_alive(self) -> bool:
        if self._started.is_set():  # type: ignore[attr-defined]
            return super().is_alive()
        return self in threading._limbo  # type: ignore[attr-defined]  # started, not yet run

    def join(self, timeout: float | None = None) -> None:
        started = self._started  # type: ignore[attr-defined]
        if not started.is_set() and self in threading._limbo:  # type: ignore[attr-defined]
            deadline = None if timeout is None else time.monotonic() + timeout
            if not started.wait(timeout):
                return  # still starting after `timeout`: as a join that timed out
            if deadline is not None:
                timeout = max(0.0, deadline - time.monotonic())
        super().join(timeout)

    def start(self) -> None:
        if not _NO_WAIT_START:
            super().start()
            return
        if not _exit_hook_installed:
            _install_exit_wait()
        limbo: dict[threading.Thread, threading.Thread] = threading._limbo  # type: ignore[attr-defined]
        with threading._active_limbo_lock:  # type: ignore[attr-defined]
            limbo[self] = self
        try:
            threading._start_new_thread(self._bootstrap, ())  # type: ignore[attr-defined]
        except BaseException:
            with threading._active_limbo_lock:  # type: ignore[attr-defined]
                del limbo[self]
            raise


_STARTED = threading.Event()
_STARTED.set()
_default_on_start = pykka.Actor.on_start
_pykka_handle_receive = pykka.Actor._handle_receive
_PYKKA_MESSAGES = (_ActorStop, ProxyCall, ProxyGetAttr, ProxySetAttr)
"""What Pykka's `_handle_receive` handles itself; anything else goes to `on_receive`."""


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

    # Defaults shared by every instance until it sets its own (a restart builds one
    # actor per crash: a dozen fewer attribute writes on the supervisor's thread).
    _zx_reason: Any = None
    _zx_shutdown = False
    _zx_stop_reason: Any = None
    _zx_killed = False
    _zx_busy = False
    _zx_inflight: pykka.Future[Any] | None = None
    _zx_crash_reply: tuple[pykka.Future[Any], Any] | None = None
    _zx_thread: threading.Thread | None = None
    _zx_started: threading.Event = _STARTED
    """Set once `on_start` has run; only an actor with an on_start of its own gets an
    Event of its own and is waited for (`wait_started`)."""
    _zx_start_error: BaseException | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._zx_lock = threading.Lock()
        self._zx_monitors: list[Monitor] | None = []
        if type(self).on_start is not _default_on_start:
            self._zx_started = threading.Event()

    @staticmethod
    def _create_actor_inbox() -> Any:
        return _ContextInbox()

    def _start_actor_loop(self) -> None:
        # As Pykka's, in a thread whose start() does not wait for it to run.
        thread = _ActorThread(target=self._actor_loop,
                              name=f"{type(self).__name__}-{next(_thread_numbers)}")
        thread.daemon = self.use_daemon_thread
        thread.start()

    def stop(self, reason: Any = None) -> None:
        """Stop after the messages already queued, as Pykka's `stop`, with an exit reason.

        Example:
            ``self.stop()`` in a handler exits ``"normal"``;
            ``self.stop(reason="shutdown")`` exits ``"shutdown"`` (a `transient`
            child is not restarted after either); any other reason, say
            ``self.stop(reason="lost connection")``, is abnormal, as in OTP's
            ``{stop, Reason, State}``.

        Args:
            reason: the reason monitors and the supervisor see (default ``"normal"``).
        """
        if reason is not None:
            self._zx_stop_reason = reason
        super().stop()

    # -- the loop -----------------------------------------------------------

    def _actor_loop(self) -> None:
        self._zx_thread = threading.current_thread()
        self._zx_busy = True
        # kill() raises at most one _Killed in this thread, and only while busy:
        # each step that it may hit catches it, so it never escapes the thread.
        try:
            self._zx_live()
        except _Killed:
            pass
        except BaseException as exc:
            self._zx_record(exc)
        try:  # noqa: SIM105 - suppress() has an __enter__ the exception could hit
            self._zx_disarm()
        except _Killed:
            pass  # delivered rather than cleared: nothing is pending any more
        self._zx_exit()

    def _zx_live(self) -> None:
        try:
            if self._zx_started is not _STARTED:  # an on_start of its own (Pykka's is empty)
                self.on_start()
        except _Killed:
            raise
        except BaseException as exc:
            self._handle_failure(type(exc), exc, exc.__traceback__)
        finally:
            self._zx_start_error = self._zx_reason
            if self._zx_started is not _STARTED:
                self._zx_started.set()
        self._zx_run()

    def _zx_run(self) -> None:
        inbox = self.actor_inbox
        stopped = self.actor_stopped
        handle = self._handle_receive
        if type(self)._handle_receive is _pykka_handle_receive:
            handle = self._zx_dispatch
        while not stopped.is_set():
            self._zx_busy = False
            if self._zx_killed:
                return
            envelope = inbox.get()
            self._zx_busy = True
            if self._zx_killed:
                return
            reply_to = self._zx_inflight = envelope.reply_to
            hook = _message_hook
            began = time.perf_counter() if hook is not None else 0.0
            error: BaseException | None = None
            try:
                response = envelope.context.run(handle, envelope.message)  # type: ignore[attr-defined]
                if reply_to is not None:
                    try:  # noqa: SIM105 - the hot path: a bare try costs nothing
                        reply_to.set(response)
                    except queue.Full:
                        pass  # killed meanwhile: the asker already got ActorDeadError
            except _Killed:
                raise
            except BaseException as exc:
                error = exc
                exc_info = sys.exc_info()
                # Dead at once (no further message is accepted); the asker hears of
                # the crash from `_zx_exit`, after `on_failure`.
                self._handle_failure(*exc_info)
                if reply_to is not None:
                    self._zx_crash_reply = (reply_to, exc_info)
                try:
                    self.on_failure(*exc_info)
                except Exception as failure:
                    _report.log_crash("ERROR", failure, "on_failure of {} raised: {}", self,
                                      _report.summary(failure))
            else:
                self._zx_inflight = None
            if hook is not None:
                try:  # noqa: SIM105 - the hot path
                    hook(self, envelope.message, time.perf_counter() - began, error)
                except Exception:
                    pass  # instrumentation never kills an actor

    def _zx_dispatch(self, message: Any) -> Any:
        # Pykka's _handle_receive, with one isinstance for its own messages instead
        # of four; used only by actors that do not override _handle_receive.
        if isinstance(message, _PYKKA_MESSAGES):
            return _pykka_handle_receive(self, message)
        return self.on_receive(message)

    def _handle_failure(self, exception_type: type[BaseException] | None,
                        exception_value: BaseException | None,
                        traceback: TracebackType | None) -> None:
        # Pykka calls this when on_start or on_stop raises; we also call it on a crash.
        # The traceback is logged once: by the supervisor's restart report, or at exit.
        self._zx_record(exception_value)
        ActorRegistry.unregister(self.actor_ref)
        self.actor_stopped.set()

    def _zx_record(self, reason: Any) -> None:
        with self._zx_lock:
            if self._zx_reason is None:
                self._zx_reason = reason

    def _zx_disarm(self) -> None:
        # After this no asynchronous _Killed can reach the thread: kill() only
        # raises one while busy (under the lock), and a pending one is cleared.
        thread = self._zx_thread
        while True:
            try:
                with self._zx_lock:
                    self._zx_busy = False
                    if self._zx_killed and thread is not None:
                        _set_async_exc(thread, None)
                return
            except _Killed:
                continue

    def _zx_exit(self, *, wake: bool = False) -> None:
        """Mark the actor dead, answer what is queued, drop its name, then tell the
        asker whose message crashed it and deliver `Down`.

        Runs in the actor's thread as it ends, or in the killer's thread; the
        first call drops the name and delivers `Down`. The bookkeeping comes
        first and the two notices last, so this thread has next to nothing
        left to do once they are out: the threads they wake are not kept
        waiting for the interpreter lock. The asker hears first: if it asks
        again through the name, its message is parked (see `NamedRef.ask`)
        before the supervisor's restart registers the name, and goes into the
        new incarnation's inbox before its thread runs.
        """
        if not self.actor_stopped.is_set():
            ActorRegistry.unregister(self.actor_ref)
            self.actor_stopped.set()
        with self._zx_lock:
            monitors, self._zx_monitors = self._zx_monitors, None
            reason = self._zx_reason
            if reason is None:
                reason = self._zx_stop_reason or ("shutdown" if self._zx_shutdown else "normal")
                self._zx_reason = reason
        cast(_ContextInbox, self.actor_inbox).close(self.actor_ref, wake=wake)
        if monitors is not None:
            _registry.forget(self.actor_ref)
        crash, self._zx_crash_reply = self._zx_crash_reply, None
        if crash is not None:
            try:  # noqa: SIM105 - on the restart's path: a bare try costs nothing
                crash[0].set_exception(crash[1])
            except queue.Full:
                pass  # kill() answered it already
        if monitors:
            down = Down(self.actor_ref, reason)
            for m in monitors:
                try:
                    m._fire(down)
                except Exception as failure:
                    _report.log_crash("ERROR", failure, "monitor {} of {} failed: {}", m, self,
                                      _report.summary(failure))
        if monitors is not None and not monitors and isinstance(reason, BaseException) \
                and not _report.quiet():
            # A supervisor reports the crash of its child; a crash nobody watches is
            # logged here, at DEBUG (the library is quiet until logging is configured).
            _report.log_crash("DEBUG", reason, "actor {} crashed: {}", self,
                              _report.Summary(reason), actor=str(self))

    def _zx_on_kill(self) -> None:
        """Called in the killer's thread after the actor was marked killed."""

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


_report.register_loop_code(SupervisedActor._zx_run.__code__, SupervisedActor._zx_live.__code__)




_wrapped: dict[type, type] = {}
_wrapped_lock = threading.Lock()


def supervised_class(cls: type[A]) -> type[A]:
    """Return `cls` with `SupervisedActor` behaviour (itself if it already has it).

    Example:
        >>> import pykka
        >>> class Plain(pykka.ThreadingActor):
        ...     pass
        >>> wrapped = supervised_class(Plain)
        >>> wrapped.__name__, issubclass(wrapped, (Plain, SupervisedActor))
        ('Plain', True)
        >>> supervised_class(Plain) is wrapped
        True

    The subclass keeps the name, module and all behaviour of `cls`; it is
    cached, so each class is wrapped once.

    Raises:
        TypeError: `cls` is not a `pykka.ThreadingActor` subclass.
    """
    sub = _wrapped.get(cls)  # every restart comes here: the cache goes first
    if sub is not None:
        return sub
    if not isinstance(cls, type) or not issubclass(cls, pykka.ThreadingActor):
        raise TypeError(f"{cls!r} is not a pykka.ThreadingActor subclass")
    with _wrapped_lock:
        sub = _wrapped.get(cls)
        if sub is None:
            if issubclass(cls, SupervisedActor):
                sub = cls
            else:
                sub = type(cls.__name__, (SupervisedActor, cls), {
                    "__module__": cls.__module__, "__qualname__": cls.__qualname__,
                    "__doc__": cls.__doc__,
                })
            _wrapped[cls] = sub
        return sub


def start_supervised(cls: type[pykka.ThreadingActor], args: tuple[Any, ...],
                     kwargs: dict[str, Any], *,
                     before_loop: Callable[[pykka.ActorRef[Any]], object] | None = None,
                     ) -> pykka.ActorRef[Any]:
    """`cls.start(*args, **kwargs)` with supervised semantics, and a hook.

    `before_loop(ref)` runs once the actor exists and before its thread
    starts: a name registered there is visible before the actor runs, as in
    OTP, so a caller waiting for the name can queue its message while the
    thread starts (it is handled after `on_start`).

    Raises:
        Exception: whatever the constructor or `before_loop` raised (nothing
            is left running then).
    """
    actor: SupervisedActor = supervised_class(cls)(*args, **kwargs)  # type: ignore[assignment]
    ref = actor.actor_ref
    ActorRegistry.register(ref)
    try:
        if before_loop is not None:
            before_loop(ref)
        actor._start_actor_loop()
    except BaseException as exc:
        actor._zx_record(exc)
        actor._zx_start_error = exc
        if actor._zx_started is not _STARTED:
            actor._zx_started.set()
        actor._zx_exit()
        raise
    return ref


def wait_started(ref: pykka.ActorRef[Any], *, timeout: float | None) -> BaseException | None:
    """Wait until the actor's `on_start` has run; return its error, if any.

    Actors without an `on_start` of their own are ready once `start()`
    returns, so no thread handoff is paid for them.

    Raises:
        TimeoutError: `on_start` did not finish within `timeout`.
    """
    actor = ref._actor_weakref()
    # _STARTED: a SupervisedActor without an on_start of its own; no attribute: another kind.
    if getattr(actor, "_zx_started", _STARTED) is _STARTED or \
            not isinstance(actor, SupervisedActor):
        return None
    if not actor._zx_started.wait(timeout):
        raise TimeoutError(f"on_start of {actor} did not finish within {timeout}s")
    return actor._zx_start_error


def mark_shutdown(ref: pykka.ActorRef[Any]) -> None:
    """Make the actor's next stop report ``"shutdown"`` rather than ``"normal"``."""
    actor = ref._actor_weakref()
    if isinstance(actor, SupervisedActor):
        actor._zx_shutdown = True


def kill(ref: pykka.ActorRef[Any]) -> None:
    """Kill an actor as far as Python allows (see the module docstring).

    Example:
        >>> import pykka
        >>> from supervisors import kill, monitor, spawn
        >>> class Idle(pykka.ThreadingActor):
        ...     pass
        >>> idle = spawn(Idle).ref
        >>> m = monitor(idle)
        >>> kill(idle)
        >>> m.wait(timeout=1.0).reason
        'killed'

    Monitors receive ``Down(ref, "killed")`` at once; no further message is
    handled and `on_stop` is not called; the ask in flight and queued asks get
    `pykka.ActorDeadError`. Killing an actor that already stopped does nothing.
    A plain Pykka actor (not supervised) is only marked stopped.
    """
    actor = ref._actor_weakref()
    if not isinstance(actor, SupervisedActor):
        ActorRegistry.unregister(ref)
        ref.actor_stopped.set()
        return
    with actor._zx_lock:
        if actor._zx_monitors is None or actor._zx_killed:
            return  # already exited or being killed
        actor._zx_killed = True
        if actor._zx_reason is None:
            actor._zx_reason = "killed"
        thread = actor._zx_thread
        if actor._zx_busy and thread is not None and thread is not threading.current_thread():
            _set_async_exc(thread, _Killed)
        inflight = actor._zx_inflight
    ActorRegistry.unregister(ref)
    ref.actor_stopped.set()
    if inflight is not None:
        with contextlib.suppress(queue.Full):
            inflight.set_exception((ActorDeadError, ActorDeadError(f"{ref} was killed"), None))
    actor._zx_exit(wake=True)  # wake=True ends an idle loop blocked on its inbox
    actor._zx_on_kill()
