"""`ChildSpec`: how a supervisor starts, restarts and stops one child."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import pykka

from supervisors.errors import InvalidSpecError

__all__ = [
    "DEFAULT_MAX_RESTARTS",
    "DEFAULT_MAX_SECONDS",
    "DEFAULT_SHUTDOWN",
    "ChildSpec",
    "ChildType",
    "Restart",
    "Shutdown",
    "Strategy",
]

Restart = Literal["permanent", "transient", "temporary"]
"""`permanent`: always restarted. `transient`: restarted only after an abnormal
exit (not ``"normal"`` or ``"shutdown"``). `temporary`: never restarted, and
its spec is forgotten when it exits."""

Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
"""`one_for_one`: restart only the child that exited. `one_for_all`: stop the
others (reverse order) and restart all. `rest_for_one`: stop and restart the
children started after it."""

ChildType = Literal["worker", "supervisor"]
Shutdown = float | Literal["brutal_kill"] | None
"""Seconds to wait for a graceful stop before killing, ``"brutal_kill"`` to kill
at once, or ``None`` to wait forever (the default for supervisors)."""

DEFAULT_SHUTDOWN = 5.0
"""Shutdown time of a worker, in seconds (OTP's 5000 ms)."""
DEFAULT_MAX_RESTARTS = 3
DEFAULT_MAX_SECONDS = 5.0

_RESTARTS = get_args(Restart)
_STRATEGIES = get_args(Strategy)
_TYPES = get_args(ChildType)

_DEFAULT: Any = object()


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """How to start one child, when to restart it and how to stop it.

    Example:
        >>> import pykka
        >>> class Echo(pykka.ThreadingActor):
        ...     def on_receive(self, message):
        ...         return message
        >>> spec = ChildSpec("echo", Echo, name="demo.echo")
        >>> spec.restart, spec.shutdown
        ('permanent', 5.0)

    Args:
        id: unique among the supervisor's children (any hashable).
        start: a `pykka.Actor` subclass (started with ``args``/``kwargs``), or
            a callable returning a `pykka.ActorRef`, or a `SupervisorRef` (OTP's
            nesting idiom: ``start=lambda: Supervisor.start_link([...])``, with
            ``type="supervisor"``).
        args: positional arguments for ``start``.
        kwargs: keyword arguments for ``start``.
        restart: ``"permanent"`` (default), ``"transient"`` or ``"temporary"``.
        shutdown: seconds (default 5.0 for workers, ``None`` = forever for
            supervisors), or ``"brutal_kill"``.
        type: ``"worker"`` (default) or ``"supervisor"``; inferred as
            ``"supervisor"`` when ``start`` is a supervisor class.
        name: a registered name for the child; each incarnation registers it.

    Raises:
        InvalidSpecError: any field is invalid.
    """

    id: Any
    start: type[pykka.Actor] | Callable[..., pykka.ActorRef[Any]]
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] | None = None
    restart: Restart = "permanent"
    shutdown: Shutdown = _DEFAULT
    type: ChildType = _DEFAULT
    name: str | None = None
    _kwargs: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            hash(self.id)
        except TypeError:
            raise InvalidSpecError("id", self.id, "must be hashable") from None
        if self.id is None:
            raise InvalidSpecError("id", self.id, "must not be None")
        is_class = isinstance(self.start, type)
        if is_class and not issubclass(self.start, pykka.Actor):  # type: ignore[arg-type]
            raise InvalidSpecError("start", self.start, "a class must be a pykka.Actor subclass",
                                   child_id=self.id)
        if not is_class and not callable(self.start):
            raise InvalidSpecError("start", self.start,
                                   "must be an actor class or a callable returning an ActorRef",
                                   child_id=self.id)
        if not isinstance(self.args, tuple):
            object.__setattr__(self, "args", tuple(self.args))
        if self.kwargs is not None and not isinstance(self.kwargs, Mapping):
            raise InvalidSpecError("kwargs", self.kwargs, "must be a mapping", child_id=self.id)
        object.__setattr__(self, "_kwargs", dict(self.kwargs or {}))
        if self.restart not in _RESTARTS:
            raise InvalidSpecError("restart", self.restart, f"expected one of {_RESTARTS}",
                                   child_id=self.id)
        child_type = self.type
        if child_type is _DEFAULT:
            from supervisors.supervisor import is_supervisor_class

            child_type = "supervisor" if is_class and is_supervisor_class(self.start) else "worker"
            object.__setattr__(self, "type", child_type)
        if child_type not in _TYPES:
            raise InvalidSpecError("type", child_type, f"expected one of {_TYPES}",
                                   child_id=self.id)
        if self.shutdown is _DEFAULT:
            object.__setattr__(self, "shutdown",
                               None if child_type == "supervisor" else DEFAULT_SHUTDOWN)
        shutdown = self.shutdown
        if not (shutdown is None or shutdown == "brutal_kill" or (
                isinstance(shutdown, (int, float)) and not isinstance(shutdown, bool)
                and shutdown >= 0 and math.isfinite(shutdown))):
            raise InvalidSpecError("shutdown", shutdown,
                                   "expected seconds >= 0, 'brutal_kill' or None",
                                   child_id=self.id)
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise InvalidSpecError("name", self.name, "must be a non-empty string",
                                   child_id=self.id)

    @property
    def start_kwargs(self) -> dict[str, Any]:
        """A fresh copy of the keyword arguments for one start."""
        return dict(self._kwargs)


def check_strategy(strategy: Any) -> Strategy:
    if strategy not in _STRATEGIES:
        raise InvalidSpecError("strategy", strategy, f"expected one of {_STRATEGIES}")
    return strategy  # type: ignore[no-any-return]


def check_intensity(max_restarts: Any, max_seconds: Any) -> None:
    if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
        raise InvalidSpecError("max_restarts", max_restarts, "must be an integer >= 0")
    if (isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float))
            or not max_seconds > 0 or not math.isfinite(max_seconds)):
        raise InvalidSpecError("max_seconds", max_seconds, "must be a number of seconds > 0")


def check_max_children(max_children: Any) -> None:
    if max_children is not None and (isinstance(max_children, bool) or
                                     not isinstance(max_children, int) or max_children < 0):
        raise InvalidSpecError("max_children", max_children, "must be an integer >= 0 or None")
