"""The exception hierarchy of `supervisors`, rooted at `ZixirError`.

Every error carries structured fields (`child_id`, `name`, ...) and builds its
own message, so callers can match on fields instead of parsing text.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AlreadyStartedError",
    "ChildNotFoundError",
    "ChildRestartingError",
    "ChildStartError",
    "InvalidSpecError",
    "MaxChildrenError",
    "NameNotFoundError",
    "NotAnActorError",
    "RestartIntensityError",
    "ShutdownTimeoutError",
    "SupervisorError",
    "SupervisorTimeoutError",
    "ZixirError",
]


class ZixirError(Exception):
    """Root of every error raised by `supervisors` and `zixir_actors`."""


class SupervisorError(ZixirError):
    """Base class for errors raised by supervisors and the name registry."""


class InvalidSpecError(SupervisorError, ValueError):
    """A child spec or supervisor option is invalid; nothing was started.

    Attributes:
        field: the option that is wrong (``"restart"``, ``"strategy"``, ...).
        value: the value that was given.
        child_id: the child the spec belongs to, if any.
    """

    def __init__(self, field: str, value: Any, reason: str, *, child_id: Any = None) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        self.child_id = child_id
        where = f" for child {child_id!r}" if child_id is not None else ""
        super().__init__(f"invalid {field}{where}: {value!r} ({reason})")


class NotAnActorError(SupervisorError, TypeError):
    """A child's `start` returned something that is not a pykka ActorRef."""

    def __init__(self, child_id: Any, returned: Any) -> None:
        self.child_id = child_id
        self.returned = returned
        super().__init__(
            f"start of child {child_id!r} returned {type(returned).__name__}, "
            "expected a pykka.ActorRef"
        )


class ChildStartError(SupervisorError):
    """A child failed to start; the children started before it were stopped.

    Attributes:
        child_id: the child that failed.
        cause: the exception its start (or `on_start`) raised.
    """

    def __init__(self, child_id: Any, cause: BaseException | str) -> None:
        self.child_id = child_id
        self.cause = cause
        detail = f"{type(cause).__name__}: {cause}" if isinstance(cause, BaseException) else cause
        super().__init__(f"child {child_id!r} failed to start: {detail}")


class ChildNotFoundError(SupervisorError, LookupError):
    """No child with this id (or ref) exists under the supervisor."""

    def __init__(self, child_id: Any) -> None:
        self.child_id = child_id
        super().__init__(f"no child {child_id!r} under this supervisor")


class AlreadyStartedError(SupervisorError):
    """A child id is already running (`start_child` with a live id, `restart_child`)."""

    def __init__(self, child_id: Any) -> None:
        self.child_id = child_id
        super().__init__(f"child {child_id!r} is already running")


class ChildRestartingError(AlreadyStartedError):
    """The child's restart keeps failing and its supervisor is retrying it
    (OTP's ``{error, restarting}``): `terminate_child` ends the retries first.

    Attributes:
        child_id: the child being restarted.
    """

    def __init__(self, child_id: Any) -> None:
        super().__init__(child_id)
        self.args = (f"child {child_id!r} is being restarted (its last restart failed and is "
                     "retried); terminate_child it first",)


class MaxChildrenError(SupervisorError):
    """A DynamicSupervisor already holds `max_children` children."""

    def __init__(self, max_children: int) -> None:
        self.max_children = max_children
        super().__init__(f"dynamic supervisor is full: max_children={max_children}")


class RestartIntensityError(SupervisorError):
    """More than `max_restarts` restarts happened within `max_seconds`.

    This is the exit reason of a supervisor that gave up; its own supervisor
    sees it as a crash of that child (escalation).
    """

    def __init__(self, supervisor: str, child_id: Any, max_restarts: int, max_seconds: float,
                 last_reason: Any = None) -> None:
        self.supervisor = supervisor
        self.child_id = child_id
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self.last_reason = last_reason
        super().__init__(
            f"supervisor {supervisor} reached max restart intensity "
            f"({max_restarts} restarts in {max_seconds}s), last crash of child "
            f"{child_id!r}: {last_reason!r}"
        )


class ShutdownTimeoutError(SupervisorError, TimeoutError):
    """A child did not stop within its shutdown time and was killed."""

    def __init__(self, child_id: Any, timeout: float) -> None:
        self.child_id = child_id
        self.timeout = timeout
        super().__init__(f"child {child_id!r} did not stop within {timeout}s and was killed")


class NameNotFoundError(SupervisorError, LookupError):
    """No live actor is registered under this name (within the wait time)."""

    def __init__(self, name: str, waited: float | None = None) -> None:
        self.name = name
        self.waited = waited
        extra = f" after waiting {waited:.3g}s" if waited else ""
        super().__init__(f"no live actor registered as {name!r}{extra}")


class SupervisorTimeoutError(SupervisorError, TimeoutError):
    """A call to a supervisor or a named actor did not answer within its timeout."""

    def __init__(self, what: str, timeout: float | None) -> None:
        self.what = what
        self.timeout = timeout
        super().__init__(f"{what} did not answer within {timeout}s")
