"""`DynamicSupervisor`: children added and removed at run time, one_for_one.

Example:
    >>> import pykka
    >>> from supervisors import ChildSpec, DynamicSupervisor
    >>> class Job(pykka.ThreadingActor):
    ...     def on_receive(self, message):
    ...         return message * 2
    >>> jobs = DynamicSupervisor.start_link(max_children=10, name="doc.jobs")
    >>> job = jobs.start_child(ChildSpec("job", Job, restart="transient"))
    >>> job.ask(21, timeout=1.0)
    42
    >>> jobs.terminate_child(job)
    >>> jobs.count_children().active
    0
    >>> jobs.stop()

As in Elixir, children are identified by their ref (ids need not be unique),
a child that exits for good is forgotten, and restart intensity works as for
`Supervisor`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from supervisors.spec import (
    DEFAULT_MAX_RESTARTS,
    DEFAULT_MAX_SECONDS,
    ChildSpec,
    check_intensity,
    check_max_children,
)
from supervisors.supervisor import (
    DEFAULT_START_TIMEOUT,
    SupervisorRef,
    _start_supervisor,
    _SupervisorCore,
)

__all__ = ["DynamicSupervisor"]


class DynamicSupervisor(_SupervisorCore):
    """A one_for_one supervisor whose children are started on demand."""

    _dynamic = True
    kind = "DynamicSupervisor"

    def __init__(self, max_children: int | None = None,
                 max_restarts: int = DEFAULT_MAX_RESTARTS,
                 max_seconds: float = DEFAULT_MAX_SECONDS, *,
                 clock: Callable[[], float] | None = None,
                 start_timeout: float | None = DEFAULT_START_TIMEOUT) -> None:
        super().__init__((), "one_for_one", max_restarts, max_seconds,
                         max_children=max_children, clock=clock, start_timeout=start_timeout)

    @classmethod
    def start_link(cls, max_children: int | None = None,
                   max_restarts: int = DEFAULT_MAX_RESTARTS,
                   max_seconds: float = DEFAULT_MAX_SECONDS, name: str | None = None, *,
                   clock: Callable[[], float] | None = None,
                   start_timeout: float | None = DEFAULT_START_TIMEOUT) -> SupervisorRef:
        """Start an empty dynamic supervisor; returns its `SupervisorRef`.

        Args:
            max_children: refuse `start_child` beyond this many (None: no limit).
            max_restarts, max_seconds: restart intensity, as for `Supervisor`.
            name: registered name; a live holder is returned with ``already_started=True``.

        Raises:
            InvalidSpecError: bad `max_children` or intensity.
        """
        return _start_supervisor(cls, name, max_children=max_children,
                                 max_restarts=max_restarts, max_seconds=max_seconds,
                                 clock=clock, start_timeout=start_timeout)

    @classmethod
    def child_spec(cls, id: Any, *, name: str | None = None, max_children: int | None = None,
                   max_restarts: int = DEFAULT_MAX_RESTARTS,
                   max_seconds: float = DEFAULT_MAX_SECONDS, restart: str = "permanent",
                   shutdown: Any = None, clock: Callable[[], float] | None = None,
                   start_timeout: float | None = DEFAULT_START_TIMEOUT) -> ChildSpec:
        """A `ChildSpec` that nests a dynamic supervisor under another supervisor.

        Options are those of `start_link`, plus its `restart` type and
        `shutdown` under the parent (default ``None``: wait for its children).

        Raises:
            InvalidSpecError: bad `max_children` or intensity.
        """
        check_intensity(max_restarts, max_seconds)
        check_max_children(max_children)
        return ChildSpec(id, cls, kwargs={"max_children": max_children,
                                          "max_restarts": max_restarts,
                                          "max_seconds": max_seconds, "clock": clock,
                                          "start_timeout": start_timeout},
                         restart=restart, shutdown=shutdown, type="supervisor",  # type: ignore[arg-type]
                         name=name)
