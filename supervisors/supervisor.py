"""`Supervisor`: OTP supervision of an ordered list of children.

Example:
    >>> import pykka
    >>> from supervisors import ChildSpec, Supervisor, ref
    >>> class Greeter(pykka.ThreadingActor):
    ...     def on_receive(self, message):
    ...         return f"hello {message}"
    >>> sup = Supervisor.start_link([ChildSpec("greeter", Greeter, name="doc.greeter")],
    ...                             strategy="one_for_one", name="doc.sup")
    >>> ref("doc.greeter").ask("ada", timeout=1.0)
    'hello ada'
    >>> [c.id for c in sup.which_children()]
    ['greeter']
    >>> sup.stop()

Semantics follow Erlang/OTP's `supervisor` and Elixir's `Supervisor`:
children start in order, each after the previous one's `on_start` finished;
if one fails, those already started are stopped in reverse order and
`start_link` raises `ChildStartError`. They stop in reverse order, each within
its `shutdown` time, after which it is killed (see `supervisors._actor.kill`
for what killing a thread can and cannot do). More than `max_restarts`
restarts within `max_seconds` make the supervisor stop all children and exit
with `RestartIntensityError`, which its own supervisor treats as a crash.

Restart types: `permanent` children are restarted whatever the exit reason;
`transient` ones only after an abnormal exit (anything but ``"normal"`` and
``"shutdown"``); `temporary` ones never, and their spec is forgotten.
Strategies: `one_for_one` restarts the child that exited; `one_for_all` stops
the other running children (last first) and restarts them all in order;
`rest_for_one` does that for the children started after it. Siblings stopped
for a group restart exit with ``"shutdown"``, are restarted with reason
``"sibling_restart"``, and temporary ones among them are dropped, as in OTP.
A child's name is registered before its thread runs, so `ref(name)` callers
queue their messages during a restart instead of failing.

A restart whose start fails (the constructor or `on_start` raises) is
retried through the supervisor's own mailbox, as OTP's ``try_again_restart``
(OTP-9549): calls queued meanwhile (`which_children`, `start_child`,
`terminate_child`, ...) are answered between attempts, each attempt counts
towards the intensity, and `terminate_child` of the child ends the retries.
While it is retried, the child's `Child.restarting` is True and
`restart_child` / `delete_child` raise `ChildRestartingError`. For
one_for_all (and rest_for_one), the children of the group after the one
that failed stay down, and the next attempt stops the ones already
restarted and restarts the group again in order; rest_for_one retries from
the child that failed.

A start function may return a `SupervisorRef` (``start=lambda:
Supervisor.start_link([...])``, with ``type="supervisor"``): the nested
supervisor is supervised, restarted and stopped like any child.

Each exit worth reporting is one compact log record (loguru, bound fields
``supervisor``, ``child``, ``reason``, ``restart_count``, and for a crash
``error_type``, ``error``, ``where``, ``traceback``; see
`supervisors._report`): WARNING for a crash, INFO for a normal exit of a
permanent child; a failed restart is one WARNING, and giving up one ERROR,
besides the `ChildRestarted` and `IntensityExceeded` events. The package
logs nothing until the application enables it (``logger.enable("supervisors")``).
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import pykka

from supervisors import _registry, _report, events
from supervisors._actor import (
    SupervisedActor,
    kill,
    mark_shutdown,
    start_supervised,
    wait_started,
)
from supervisors.errors import (
    AlreadyStartedError,
    ChildNotFoundError,
    ChildRestartingError,
    ChildStartError,
    InvalidSpecError,
    MaxChildrenError,
    NotAnActorError,
    RestartIntensityError,
    SupervisorError,
    SupervisorTimeoutError,
)
from supervisors.monitor import NORMAL_REASONS, Down, Monitor, monitor
from supervisors.registry import NameTakenError, name_of, register, whereis
from supervisors.spec import (
    DEFAULT_MAX_RESTARTS,
    DEFAULT_MAX_SECONDS,
    ChildSpec,
    Strategy,
    check_intensity,
    check_max_children,
    check_strategy,
)

__all__ = [
    "DEFAULT_CALL_TIMEOUT",
    "DEFAULT_START_TIMEOUT",
    "Child",
    "ChildCounts",
    "Supervisor",
    "SupervisorRef",
    "is_supervisor_class",
]

DEFAULT_CALL_TIMEOUT = 30.0
"""Default timeout of calls to a supervisor (start_child, which_children...)."""
DEFAULT_START_TIMEOUT = 60.0
"""How long a child's `on_start` may take before its start counts as failed."""


@dataclass(frozen=True, slots=True)
class Child:
    """One row of `which_children()`: ``ref`` is None when the child is not running."""

    id: Any
    ref: pykka.ActorRef[Any] | None
    type: str
    restart: str
    name: str | None
    actor_class: str
    restarting: bool = False
    """True while a restart of this child is due: its last start failed and the
    supervisor retries it through its mailbox, or it waits for a group restart."""


@dataclass(frozen=True, slots=True)
class ChildCounts:
    """`count_children()`: specs, running children, and specs by type."""

    specs: int
    active: int
    supervisors: int
    workers: int


@dataclass(frozen=True, slots=True)
class _Call:
    op: str
    args: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class _Reply:
    value: Any = None
    error: BaseException | None = None


@dataclass(frozen=True, slots=True, eq=False)
class _TryAgain:
    """Told by a supervisor to itself after a failed restart (OTP's try_again_restart)."""

    child: _Child
    reason: Any
    error: BaseException


class _Child:
    __slots__ = ("last_urn", "monitor", "pending", "ref", "restarts", "retry", "spec")

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.ref: pykka.ActorRef[Any] | None = None
        self.monitor: Monitor | None = None
        self.restarts = 0
        # A restart is due: its start failed and is retried, or it waits for its group.
        self.pending = False
        # The one retry message that counts; others still queued are stale.
        self.retry: _TryAgain | None = None
        # Its last incarnation's urn: a DynamicSupervisor finds a child whose
        # restart keeps failing by the ref it had.
        self.last_urn: str | None = None


class _Restarting:
    """``restarting (restart #n)``, formatted only when a report is built."""

    __slots__ = ("count",)

    def __init__(self, count: int) -> None:
        self.count = count

    def __format__(self, spec: str) -> str:
        return f"restarting (restart #{self.count})"


def _class_name(spec: ChildSpec) -> str:
    return getattr(spec.start, "__name__", type(spec.start).__name__)


def start_actor(spec: ChildSpec, *, start_timeout: float | None,
                on_created: Callable[[pykka.ActorRef[Any]], object] | None = None,
                ) -> tuple[pykka.ActorRef[Any], bool]:
    """Start one child (or adopt a live actor holding its name). Returns (ref, adopted).

    `on_created(ref)` runs once a new actor exists, before its name is
    registered (a supervisor attaches its monitor there, ahead of anyone who
    waits for the name).

    Raises:
        ChildStartError: the constructor or `on_start` raised, or timed out.
        NotAnActorError: a factory returned something that is not an ActorRef.
    """
    if spec.name is not None:
        existing = whereis(spec.name)
        if existing is not None:
            return existing, True
    lock = _registry.start_lock(spec.name) if spec.name is not None else None
    if lock is not None:
        lock.acquire()
    try:
        if spec.name is not None:
            existing = whereis(spec.name)
            if existing is not None:
                return existing, True
        name = spec.name

        def before_loop(new: pykka.ActorRef[Any]) -> None:
            if on_created is not None:
                on_created(new)
            if name is not None:
                register(name, new)

        try:
            new: Any
            if isinstance(spec.start, type):
                new = start_supervised(cast("type[pykka.ThreadingActor]", spec.start),
                                       spec.args, spec.start_kwargs, before_loop=before_loop)
            else:
                new = spec.start(*spec.args, **spec.start_kwargs)
                if isinstance(new, SupervisorRef):
                    # OTP's idiom: a start function that calls start_link. The new
                    # supervisor belongs to this tree now, not to the exit hook.
                    _unlink_top_level(new.actor_ref)
                    new = new.actor_ref
                if isinstance(new, pykka.ActorRef):
                    try:
                        before_loop(new)
                    except BaseException:
                        new.stop(block=False)
                        raise
        except Exception as exc:
            raise ChildStartError(spec.id, exc) from exc
        if not isinstance(new, pykka.ActorRef):
            stop = getattr(new, "stop", None)
            if callable(stop):
                with contextlib.suppress(Exception):  # best effort on what is no actor
                    stop()
            raise NotAnActorError(spec.id, new)
        try:
            error = wait_started(new, timeout=start_timeout)
        except TimeoutError as exc:
            kill(new)
            raise ChildStartError(spec.id, exc) from exc
        if error is not None:
            raise ChildStartError(spec.id, error)
        return new, False
    finally:
        if lock is not None:
            lock.release()


class _SupervisorCore(SupervisedActor):
    """What `Supervisor` and `DynamicSupervisor` share: starting, watching,
    restarting and stopping children."""

    _dynamic = False
    kind = "Supervisor"

    def __init__(self, children: Iterable[ChildSpec] = (), strategy: Strategy = "one_for_one",
                 max_restarts: int = DEFAULT_MAX_RESTARTS,
                 max_seconds: float = DEFAULT_MAX_SECONDS, *,
                 max_children: int | None = None,
                 clock: Callable[[], float] | None = None,
                 start_timeout: float | None = DEFAULT_START_TIMEOUT) -> None:
        super().__init__()
        self._strategy = check_strategy(strategy)
        check_intensity(max_restarts, max_seconds)
        check_max_children(max_children)
        self._specs = validate_children(children)
        self._max_restarts = max_restarts
        self._max_seconds = float(max_seconds)
        self._max_children = max_children
        self._clock = clock or time.monotonic
        self._start_timeout = start_timeout
        self._children: list[_Child] = []
        self._by_id: dict[Any, _Child] = {}
        self._by_urn: dict[str, _Child] = {}
        self._restart_times: collections.deque[float] = collections.deque()

    @property
    def label(self) -> str:
        return name_of(self.actor_ref) or f"{self.kind}<{self.actor_urn[-8:]}>"

    # -- lifecycle ------------------------------------------------------------

    def on_start(self) -> None:
        for spec in self._specs:
            child = _Child(spec)
            try:
                self._start(child)
            except SupervisorError:
                self._terminate_all()
                raise
            self._add(child)

    def on_stop(self) -> None:
        self._terminate_all()

    def on_failure(self, *exc_info: Any) -> None:
        self._terminate_all()

    def _zx_on_kill(self) -> None:
        # Killed supervisor (its thread may be stuck): kill its children, last first,
        # as OTP's links would, so that no orphan outlives it.
        for child in reversed(list(self._children)):
            ref, monitor_ = child.ref, child.monitor
            if monitor_ is not None:
                monitor_.cancel()
            if ref is not None:
                kill(ref)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Down):
            self._on_down(message)
            return None
        if isinstance(message, _TryAgain):
            self._on_try_again(message)
            return None
        if isinstance(message, _Call):
            try:
                return _Reply(value=getattr(self, f"_op_{message.op}")(*message.args))
            except RestartIntensityError:
                raise
            except Exception as exc:
                return _Reply(error=exc)
        return super().on_receive(message)

    # -- children -------------------------------------------------------------

    def _add(self, child: _Child) -> None:
        self._children.append(child)
        if not self._dynamic:
            self._by_id[child.spec.id] = child

    def _remove(self, child: _Child) -> None:
        self._settle(child)
        self._children.remove(child)
        if not self._dynamic:
            self._by_id.pop(child.spec.id, None)

    def _start(self, child: _Child) -> pykka.ActorRef[Any]:
        attached: list[Monitor] = []

        def on_created(new: pykka.ActorRef[Any]) -> None:
            # Before the new thread runs: the child's bookkeeping is done by the
            # time it competes with us for the interpreter.
            attached.append(monitor(new, self.actor_ref))
            child.ref = new
            self._by_urn[new.actor_urn] = child

        try:
            ref, adopted = start_actor(child.spec, start_timeout=self._start_timeout,
                                       on_created=on_created)
        except BaseException as exc:
            for m in attached:
                m.cancel()
                self._by_urn.pop(m.target.actor_urn, None)
                if not isinstance(exc, Exception):  # we are being killed: leave no orphan
                    kill(m.target)
            child.ref = None
            raise
        child.ref = ref
        self._by_urn[ref.actor_urn] = child
        child.monitor = attached[0] if attached else monitor(ref, self.actor_ref)
        if events.listening():
            events.emit(events.ChildStarted(self.label, child.spec.id, ref, adopted))
        return ref

    def _terminate(self, child: _Child) -> None:
        ref = child.ref
        if ref is None:
            return
        if child.monitor is not None:
            child.monitor.cancel()
            child.monitor = None
        self._by_urn.pop(ref.actor_urn, None)
        child.ref = None
        reason: Any = "shutdown"
        mark_shutdown(ref)
        shutdown = child.spec.shutdown
        if shutdown == "brutal_kill":
            kill(ref)
            reason = "killed"
        else:
            try:
                ref.stop(block=True, timeout=shutdown)
            except pykka.Timeout:
                kill(ref)
                reason = "killed"
                _report.log_crash("WARNING", None,
                                  "child {} did not stop within {}s and was killed",
                                  child.spec.id, shutdown, supervisor=self.label,
                                  child=str(child.spec.id))
        if events.listening():
            events.emit(events.ChildExited(self.label, child.spec.id, ref, reason))

    def _terminate_all(self) -> None:
        for child in reversed(self._children):
            try:
                self._terminate(child)
            except Exception as failure:
                _report.log_crash("ERROR", failure, "stopping child {} failed: {}", child.spec.id,
                                  _report.summary(failure), supervisor=self.label,
                                  child=str(child.spec.id))

    def _on_down(self, down: Down) -> None:
        child = self._by_urn.pop(down.ref.actor_urn, None)
        if child is None or child.ref is not down.ref:
            return  # a child we stopped ourselves, or a stale notice
        child.ref = None
        child.monitor = None
        reason = down.reason
        if events.listening():
            events.emit(events.ChildExited(self.label, child.spec.id, down.ref, reason))
        restart = child.spec.restart
        if restart == "temporary" or (restart == "transient" and not down.abnormal):
            if down.abnormal:
                self._report_exit(child, reason, "not restarted (temporary)")
            if restart == "temporary" or self._dynamic:
                self._remove(child)
            return
        if not self._note_restart():
            self._report_exit(child, reason, "restart intensity reached")
            self._give_up(child, reason)
        self._report_exit(child, reason, _Restarting(child.restarts + 1),
                          restart_count=child.restarts + 1)
        child.last_urn = down.ref.actor_urn
        self._restart_group(child, reason)

    def _report_exit(self, child: _Child, reason: Any, action: object, **fields: Any) -> None:
        """One compact record per exit worth reporting (see `supervisors._report`)."""
        if _report.quiet(1):
            return  # nothing would take the record (the library's default): build nothing
        crash = reason if isinstance(reason, BaseException) else None
        abnormal = crash is not None or reason not in NORMAL_REASONS
        label = self.label
        _report.log_crash("WARNING" if abnormal else "INFO", crash,
                          "child {} of {} {}: {}; {}", child.spec.id, label,
                          "crashed" if crash is not None else "exited",
                          _report.Summary(reason), action, depth=1,
                          supervisor=label, child=str(child.spec.id), _reason=reason, **fields)

    def _note_restart(self) -> bool:
        now = self._clock()
        times = self._restart_times
        times.append(now)
        while times and times[0] <= now - self._max_seconds:
            times.popleft()
        return len(times) <= self._max_restarts

    def _give_up(self, child: _Child, reason: Any) -> None:
        _report.log_crash(
            "ERROR", None, "supervisor {} reached max restart intensity ({} in {}s); "
            "stopping all children", self.label, self._max_restarts, self._max_seconds,
            supervisor=self.label, child=str(child.spec.id), reason=repr(reason))
        if events.listening():
            events.emit(events.IntensityExceeded(self.label, child.spec.id, reason,
                                                 self._max_restarts, self._max_seconds))
        self._terminate_all()
        raise RestartIntensityError(self.label, child.spec.id, self._max_restarts,
                                    self._max_seconds, reason)

    def _restart_group(self, crashed: _Child, reason: Any) -> None:
        """Restart `crashed` with its strategy's group (OTP's restart/3).

        The group is every child of one_for_all, or `crashed` and the children
        after it for rest_for_one, that is running or waiting for a restart;
        the running ones stop first, last first. Children stopped by
        `terminate_child` are left alone.
        """
        if self._strategy == "one_for_one" or self._dynamic:
            group = [crashed]
        else:
            index = self._children.index(crashed)
            members = self._children if self._strategy == "one_for_all" \
                else self._children[index:]
            group = [c for c in members if c is crashed or c.ref is not None or c.pending]
            for other in reversed(group):
                if other is not crashed:
                    self._terminate(other)
            for other in [c for c in group if c is not crashed and c.spec.restart == "temporary"]:
                self._remove(other)
                group.remove(other)
        for child in group:
            child.pending = True
            child.retry = None
        self._start_group(group, crashed, reason)

    def _start_group(self, group: list[_Child], crashed: _Child, reason: Any) -> None:
        for child in group:
            cause = reason if child is crashed else "sibling_restart"
            child.restarts += 1
            try:
                self._start(child)
            except SupervisorError as exc:
                # OTP-9549: leave the rest of the group down and retry through our
                # own mailbox, so calls queued meanwhile are answered, and
                # terminate_child can end the retries.
                self._retry_later(child, cause, exc)
                return
            self._settle(child)
            if events.listening():
                events.emit(events.ChildRestarted(self.label, child.spec.id, cause,
                                                  child.restarts))

    def _retry_later(self, child: _Child, reason: Any, error: SupervisorError) -> None:
        cause = error.cause if isinstance(error, ChildStartError) and \
            isinstance(error.cause, BaseException) else error
        _report.log_crash("WARNING", cause, "restart of child {} of {} failed: {}; retrying",
                          child.spec.id, self.label, _report.summary(cause),
                          supervisor=self.label, child=str(child.spec.id),
                          restart_count=child.restarts)
        retry = child.retry = _TryAgain(child, reason, error)
        if child.last_urn is not None:
            self._by_urn[child.last_urn] = child
        self.actor_ref.tell(retry)

    def _on_try_again(self, retry: _TryAgain) -> None:
        child = retry.child
        if child.retry is not retry:
            return  # terminated, deleted, restarted meanwhile, or superseded
        child.retry = None
        if not self._note_restart():
            self._give_up(child, retry.error)
        self._restart_group(child, retry.reason)

    def _settle(self, child: _Child) -> None:
        """`child` needs no restart any more: running, or stopped on request."""
        child.pending = False
        child.retry = None
        urn, child.last_urn = child.last_urn, None
        if urn is not None and self._by_urn.get(urn) is child:
            del self._by_urn[urn]

    def _find(self, key: Any) -> _Child:
        if isinstance(key, pykka.ActorRef):
            child = self._by_urn.get(key.actor_urn)
        else:
            child = None if self._dynamic else self._by_id.get(key)
        if child is None:
            raise ChildNotFoundError(key)
        return child

    # -- requests ---------------------------------------------------------------

    def _op_which_children(self) -> list[Child]:
        return [Child(c.spec.id, c.ref, c.spec.type, c.spec.restart, c.spec.name,
                      _class_name(c.spec), c.pending) for c in self._children]

    def _op_count_children(self) -> ChildCounts:
        sups = sum(1 for c in self._children if c.spec.type == "supervisor")
        return ChildCounts(len(self._children), sum(1 for c in self._children if c.ref),
                           sups, len(self._children) - sups)

    def _op_start_child(self, spec: ChildSpec) -> pykka.ActorRef[Any]:
        if not isinstance(spec, ChildSpec):
            raise InvalidSpecError("spec", spec, "expected a ChildSpec")
        if self._dynamic:
            if self._max_children is not None and len(self._children) >= self._max_children:
                raise MaxChildrenError(self._max_children)
        else:
            existing = self._by_id.get(spec.id)
            if existing is not None:
                if existing.ref is not None:
                    raise AlreadyStartedError(spec.id)
                if existing.pending:
                    raise ChildRestartingError(spec.id)
                raise InvalidSpecError("id", spec.id, "a child with this id is already present;"
                                       " restart_child or delete_child it", child_id=spec.id)
        child = _Child(spec)
        ref = self._start(child)
        self._add(child)
        return ref

    def _op_terminate_child(self, key: Any) -> None:
        child = self._find(key)
        self._terminate(child)
        self._settle(child)  # ends a restart that keeps failing (OTP)
        if self._dynamic or child.spec.restart == "temporary":
            self._remove(child)

    def _op_restart_child(self, key: Any) -> pykka.ActorRef[Any]:
        child = self._find(key)
        if child.ref is not None:
            raise AlreadyStartedError(child.spec.id)
        if child.pending:
            raise ChildRestartingError(child.spec.id)
        return self._start(child)

    def _op_delete_child(self, key: Any) -> None:
        child = self._find(key)
        if child.ref is not None:
            raise AlreadyStartedError(child.spec.id)
        if child.pending:
            raise ChildRestartingError(child.spec.id)
        self._remove(child)

    def _op_describe(self) -> dict[str, Any]:
        return {"label": self.label, "kind": self.kind,
                "strategy": "dynamic" if self._dynamic else self._strategy,
                "children": self._op_which_children()}


def validate_children(children: Iterable[ChildSpec]) -> list[ChildSpec]:
    """Check a child list before anything starts: types and unique ids."""
    if isinstance(children, (ChildSpec, str, bytes)):
        raise InvalidSpecError("children", children, "expected a list of ChildSpec")
    specs = list(children)
    seen: set[Any] = set()
    for spec in specs:
        if not isinstance(spec, ChildSpec):
            raise InvalidSpecError("children", spec, "every child must be a ChildSpec")
        if spec.id in seen:
            raise InvalidSpecError("id", spec.id, "duplicate child id", child_id=spec.id)
        seen.add(spec.id)
    return specs


def is_supervisor_class(cls: Any) -> bool:
    return isinstance(cls, type) and issubclass(cls, _SupervisorCore)


class SupervisorRef:
    """A handle on a running supervisor; every call takes a keyword `timeout`.

    Wrap any supervisor's ActorRef: ``SupervisorRef(whereis("zixir.caches"))``.
    """

    __slots__ = ("actor_ref", "already_started")

    def __init__(self, actor_ref: pykka.ActorRef[Any], *, already_started: bool = False) -> None:
        if not isinstance(actor_ref, pykka.ActorRef) or \
                not is_supervisor_class(actor_ref.actor_class):
            raise TypeError(f"not a supervisor's ActorRef: {actor_ref!r}")
        self.actor_ref = actor_ref
        self.already_started = already_started

    def __repr__(self) -> str:
        return f"<SupervisorRef {name_of(self.actor_ref) or self.actor_ref.actor_urn}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SupervisorRef) and other.actor_ref is self.actor_ref

    def __hash__(self) -> int:
        return hash(self.actor_ref.actor_urn)

    @property
    def name(self) -> str | None:
        """The supervisor's registered name, if any."""
        return name_of(self.actor_ref)

    def is_alive(self) -> bool:
        """Whether the supervisor is running (False once it stopped or gave up)."""
        return self.actor_ref.is_alive()

    def _call(self, op: str, *args: Any, timeout: float | None) -> Any:
        try:
            reply: _Reply = self.actor_ref.ask(_Call(op, args), block=True, timeout=timeout)
        except pykka.Timeout:
            raise SupervisorTimeoutError(f"supervisor {self!r} {op}", timeout) from None
        except pykka.ActorDeadError:
            raise SupervisorError(f"supervisor {self!r} is not running") from None
        if reply.error is not None:
            raise reply.error
        return reply.value

    def which_children(self, *, timeout: float | None = DEFAULT_CALL_TIMEOUT) -> list[Child]:
        """Every child in start order, with its current ref (None if not running).

        Raises:
            SupervisorTimeoutError: no answer within `timeout` (the supervisor is
                busy, say starting a slow child).
            SupervisorError: the supervisor is not running.
        """
        return self._call("which_children", timeout=timeout)  # type: ignore[no-any-return]

    def count_children(self, *, timeout: float | None = DEFAULT_CALL_TIMEOUT) -> ChildCounts:
        """Counts as OTP's ``count_children``: specs, running (active), supervisors, workers.

        Raises:
            SupervisorTimeoutError / SupervisorError: as for `which_children`.
        """
        return self._call("count_children", timeout=timeout)  # type: ignore[no-any-return]

    def start_child(self, spec: ChildSpec, *,
                    timeout: float | None = DEFAULT_CALL_TIMEOUT) -> pykka.ActorRef[Any]:
        """Start and supervise one more child; returns its ref.

        Raises:
            AlreadyStartedError: a child with this id is running (Supervisor).
            InvalidSpecError: the id is present but stopped, or `spec` is bad.
            MaxChildrenError: a DynamicSupervisor is full.
            ChildStartError / NotAnActorError: the child failed to start.
        """
        return self._call("start_child", spec, timeout=timeout)  # type: ignore[no-any-return]

    def terminate_child(self, key: Any, *, timeout: float | None = DEFAULT_CALL_TIMEOUT) -> None:
        """Stop a child (by id, or by ref); its spec stays unless it is temporary
        or the supervisor is dynamic.

        Raises:
            ChildNotFoundError: no such child.
        """
        self._call("terminate_child", key, timeout=timeout)

    def restart_child(self, key: Any, *,
                      timeout: float | None = DEFAULT_CALL_TIMEOUT) -> pykka.ActorRef[Any]:
        """Start a terminated child again from its spec.

        Raises:
            ChildNotFoundError: no such child. AlreadyStartedError: it is running.
        """
        return self._call("restart_child", key, timeout=timeout)  # type: ignore[no-any-return]

    def delete_child(self, key: Any, *, timeout: float | None = DEFAULT_CALL_TIMEOUT) -> None:
        """Forget a terminated child's spec.

        Raises:
            ChildNotFoundError: no such child. AlreadyStartedError: it is running.
        """
        self._call("delete_child", key, timeout=timeout)

    def stop(self, *, timeout: float | None = None) -> None:
        """Stop the supervisor: its children stop first, in reverse start order.

        Each child gets its `shutdown` time and is killed after it; the
        supervisor's monitors see ``"shutdown"``. Stopping a stopped
        supervisor does nothing. A nested supervisor stopped this way is
        restarted by its parent if its restart type says so.

        Raises:
            SupervisorTimeoutError: not stopped within `timeout` (it goes on stopping).
        """
        mark_shutdown(self.actor_ref)
        try:
            self.actor_ref.stop(block=True, timeout=timeout)
        except pykka.Timeout:
            raise SupervisorTimeoutError(f"stop of supervisor {self!r}", timeout) from None

    def tree(self, *, timeout: float | None = DEFAULT_CALL_TIMEOUT) -> str:
        """A readable rendering of the running tree, for logs and the CLI.

        Example::

            zixir.root  Supervisor, one_for_one, 2/2 running
            ├── store (zixir.store)  CheckpointStore  running
            └── jobs: zixir.jobs  DynamicSupervisor, dynamic, 1/1 running
                └── run-1  WorkflowRun  running

        Raises:
            SupervisorTimeoutError / SupervisorError: as for `which_children`.
        """
        lines: list[str] = []
        self._render(lines, "", "", timeout)
        return "\n".join(lines)

    def _render(self, lines: list[str], first: str, rest: str, timeout: float | None) -> None:
        info = self._call("describe", timeout=timeout)
        running = sum(1 for c in info["children"] if c.ref is not None)
        lines.append(f"{first}{info['label']}  {info['kind']}, {info['strategy']}, "
                     f"{running}/{len(info['children'])} running")
        children: Sequence[Child] = info["children"]
        for i, child in enumerate(children):
            last = i == len(children) - 1
            branch, cont = ("└── ", "    ") if last else ("├── ", "│   ")
            if child.ref is not None and is_supervisor_class(child.ref.actor_class):
                try:
                    SupervisorRef(child.ref)._render(lines, rest + branch + f"{child.id}: ",
                                                     rest + cont, timeout)
                    continue
                except SupervisorError:
                    pass
            state = "running" if child.ref is not None else \
                "restarting" if child.restarting else "stopped"
            name = f" ({child.name})" if child.name else ""
            lines.append(f"{rest}{branch}{child.id}{name}  {child.actor_class}  {state}")


class Supervisor(_SupervisorCore):
    """A supervisor of an ordered, mostly static list of children (see the module docstring)."""

    @classmethod
    def start_link(cls, children: Iterable[ChildSpec] = (), strategy: Strategy = "one_for_one",
                   max_restarts: int = DEFAULT_MAX_RESTARTS,
                   max_seconds: float = DEFAULT_MAX_SECONDS, name: str | None = None, *,
                   clock: Callable[[], float] | None = None,
                   start_timeout: float | None = DEFAULT_START_TIMEOUT) -> SupervisorRef:
        """Start a supervisor and its children, in order; return its `SupervisorRef`.

        Args:
            children: the child specs, started in this order.
            strategy: ``"one_for_one"`` (default), ``"one_for_all"`` or ``"rest_for_one"``.
            max_restarts: restarts allowed within `max_seconds` (default 3).
            max_seconds: the intensity window in seconds (default 5.0).
            name: register the supervisor under this name; if a live supervisor
                already holds it, that one is returned with ``already_started=True``.
            clock: monotonic clock for the intensity window (tests inject one).
            start_timeout: how long each child's `on_start` may take.

        Raises:
            InvalidSpecError: bad strategy, intensity or child list; nothing started.
            ChildStartError: a child failed to start (its constructor or `on_start`
                raised, or `on_start` outlasted `start_timeout`); the children
                started before it were stopped, last first. ``child_id`` and
                ``cause`` name the child and the error.
            NotAnActorError: a child's factory returned something that is not an
                ActorRef; the others were stopped.
            NameTakenError: `name` is held by a live actor that is no supervisor.
        """
        return _start_supervisor(cls, name, children=children, strategy=strategy,
                                 max_restarts=max_restarts, max_seconds=max_seconds,
                                 clock=clock, start_timeout=start_timeout)

    @classmethod
    def child_spec(cls, id: Any, children: Iterable[ChildSpec] = (),
                   strategy: Strategy = "one_for_one", max_restarts: int = DEFAULT_MAX_RESTARTS,
                   max_seconds: float = DEFAULT_MAX_SECONDS, *, name: str | None = None,
                   restart: str = "permanent", shutdown: Any = None,
                   clock: Callable[[], float] | None = None,
                   start_timeout: float | None = DEFAULT_START_TIMEOUT) -> ChildSpec:
        """A `ChildSpec` that nests this supervisor under another one.

        Example:
            >>> import pykka
            >>> from supervisors import ChildSpec, Supervisor
            >>> class Stage(pykka.ThreadingActor):
            ...     pass
            >>> spec = Supervisor.child_spec("pipeline", [ChildSpec("a", Stage)],
            ...                              strategy="rest_for_one")
            >>> spec.type, spec.shutdown
            ('supervisor', None)

        Args:
            id: the child id under the parent.
            children, strategy, max_restarts, max_seconds, clock, start_timeout:
                as for `start_link`.
            name: a registered name for the nested supervisor.
            restart: its restart type under the parent (default ``"permanent"``).
            shutdown: how long the parent waits for it to stop (default
                ``None``: as long as its children take).

        Raises:
            InvalidSpecError: bad strategy, intensity or child list.
        """
        check_strategy(strategy)
        check_intensity(max_restarts, max_seconds)
        specs = validate_children(children)
        return ChildSpec(id, cls, kwargs={"children": specs, "strategy": strategy,
                                          "max_restarts": max_restarts,
                                          "max_seconds": max_seconds, "clock": clock,
                                          "start_timeout": start_timeout},
                         restart=restart, shutdown=shutdown, type="supervisor",  # type: ignore[arg-type]
                         name=name)


def _start_supervisor(cls: type[_SupervisorCore], name: str | None,
                      **kwargs: Any) -> SupervisorRef:
    # Validate in the caller's thread so bad input starts nothing.
    check_strategy(kwargs.get("strategy", "one_for_one"))
    check_intensity(kwargs.get("max_restarts", DEFAULT_MAX_RESTARTS),
                    kwargs.get("max_seconds", DEFAULT_MAX_SECONDS))
    if "children" in kwargs:
        kwargs["children"] = validate_children(kwargs["children"])
    check_max_children(kwargs.get("max_children"))
    spec = ChildSpec(name or cls.__name__, cls, kwargs=kwargs, name=name, type="supervisor")
    try:
        ref, adopted = start_actor(spec, start_timeout=None)
    except ChildStartError as exc:
        if isinstance(exc.cause, SupervisorError):
            raise exc.cause from None
        raise
    if adopted and not is_supervisor_class(ref.actor_class):
        raise NameTakenError(name, ref)  # type: ignore[arg-type]
    if not adopted:
        _stop_at_exit(ref)
    return SupervisorRef(ref, already_started=adopted)


_top_level: list[pykka.ActorRef[Any]] = []
_top_level_lock = threading.Lock()
_exit_hook_installed = False


def _stop_at_exit(ref: pykka.ActorRef[Any]) -> None:
    """Remember a top-level supervisor so interpreter exit stops its tree.

    Actor threads are not daemons: a script that ends (or dies on an
    exception) without `stop()` would otherwise wait for them forever.
    `atexit` runs too late, after the interpreter joins non-daemon threads;
    threading's own exit hooks run before that join, as concurrent.futures
    relies on. Trees stop newest first, each child in reverse start order.
    """
    global _exit_hook_installed
    with _top_level_lock:
        _top_level[:] = [r for r in _top_level if r.is_alive()]
        _top_level.append(ref)
        if _exit_hook_installed:
            return
        register = getattr(threading, "_register_atexit", None)
        if register is None:
            return
        register(_stop_top_level)
        _exit_hook_installed = True


def _unlink_top_level(ref: pykka.ActorRef[Any]) -> None:
    with _top_level_lock:
        _top_level[:] = [r for r in _top_level if r.actor_urn != ref.actor_urn and r.is_alive()]


def _stop_top_level() -> None:
    with _top_level_lock:
        trees = list(reversed(_top_level))
        _top_level.clear()
    for tree in trees:
        if tree.is_alive():
            try:
                SupervisorRef(tree).stop(timeout=DEFAULT_CALL_TIMEOUT)
            except Exception as failure:  # exiting anyway: stop the others
                _report.log_crash("WARNING", failure, "stopping {} at exit failed: {}", tree,
                                  _report.summary(failure))
