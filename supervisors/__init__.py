"""OTP supervision trees on Pykka: supervisors, names, monitors.

Example:
    >>> import pykka
    >>> from supervisors import ChildSpec, Supervisor, ref
    >>> class Counter(pykka.ThreadingActor):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.n = 0
    ...     def on_receive(self, message):
    ...         if message == "crash":
    ...             raise RuntimeError("let it crash")
    ...         self.n += 1
    ...         return self.n
    >>> sup = Supervisor.start_link([ChildSpec("counter", Counter, name="doc.counter")])
    >>> counter = ref("doc.counter")
    >>> counter.ask("tick", timeout=1.0)
    1
    >>> try:
    ...     counter.ask("crash", timeout=1.0)
    ... except RuntimeError:
    ...     pass
    >>> counter.ask("tick", timeout=1.0)    # restarted with fresh state
    1
    >>> sup.stop()

This package knows nothing about zixir_actors and never imports it.

Logging is off until the application turns it on: the package disables its
loguru logger on import (``logger.disable("supervisors")``, no sink is
touched). ``logger.enable("supervisors")`` (or zixir_actors'
`configure_logging`) shows crash reports: one compact record per crash,
without the values of local variables (see `set_crash_diagnose`).
"""

from __future__ import annotations

from loguru import logger as _logger

from supervisors._actor import SupervisedActor, kill, set_message_hook, supervised_class
from supervisors._report import set_crash_diagnose
from supervisors.dynamic import DynamicSupervisor
from supervisors.errors import (
    AlreadyStartedError,
    ChildNotFoundError,
    ChildRestartingError,
    ChildStartError,
    InvalidSpecError,
    MaxChildrenError,
    NameNotFoundError,
    NotAnActorError,
    RestartIntensityError,
    ShutdownTimeoutError,
    SupervisorError,
    SupervisorTimeoutError,
    ZixirError,
)
from supervisors.events import (
    ChildExited,
    ChildRestarted,
    ChildStarted,
    IntensityExceeded,
    SupervisionEvent,
    add_listener,
    remove_listener,
)
from supervisors.monitor import NORMAL_REASONS, Down, Monitor, monitor
from supervisors.registry import (
    NamedRef,
    NameTakenError,
    Started,
    name_of,
    ref,
    register,
    registered,
    spawn,
    unregister,
    whereis,
)
from supervisors.spec import (
    DEFAULT_MAX_RESTARTS,
    DEFAULT_MAX_SECONDS,
    DEFAULT_SHUTDOWN,
    ChildSpec,
    ChildType,
    Restart,
    Shutdown,
    Strategy,
)
from supervisors.supervisor import Child, ChildCounts, Supervisor, SupervisorRef

_logger.disable("supervisors")  # a library is quiet until the application enables it

__all__ = [
    "DEFAULT_MAX_RESTARTS",
    "DEFAULT_MAX_SECONDS",
    "DEFAULT_SHUTDOWN",
    "NORMAL_REASONS",
    "AlreadyStartedError",
    "Child",
    "ChildCounts",
    "ChildExited",
    "ChildNotFoundError",
    "ChildRestarted",
    "ChildRestartingError",
    "ChildSpec",
    "ChildStartError",
    "ChildStarted",
    "ChildType",
    "Down",
    "DynamicSupervisor",
    "IntensityExceeded",
    "InvalidSpecError",
    "MaxChildrenError",
    "Monitor",
    "NameNotFoundError",
    "NameTakenError",
    "NamedRef",
    "NotAnActorError",
    "Restart",
    "RestartIntensityError",
    "Shutdown",
    "ShutdownTimeoutError",
    "Started",
    "Strategy",
    "SupervisedActor",
    "SupervisionEvent",
    "Supervisor",
    "SupervisorError",
    "SupervisorRef",
    "SupervisorTimeoutError",
    "ZixirError",
    "add_listener",
    "kill",
    "monitor",
    "name_of",
    "ref",
    "register",
    "registered",
    "remove_listener",
    "set_crash_diagnose",
    "set_message_hook",
    "spawn",
    "supervised_class",
    "unregister",
    "whereis",
]
