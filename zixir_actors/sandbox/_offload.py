"""The seam through which `Sandbox(executor=...)` reaches executors without importing them.

Dependencies point one way: `zixir_actors.executor` uses the sandbox (its
worker processes are sandbox workers, its limits are `Limits`), and the
sandbox never imports the executor. The executor package registers an
`Offload` here when it is imported; a `Sandbox` asks it whether an
``executor=`` choice is valid and where its calls go. When a sandbox names an
executor before anything loaded the executors, the seam asks the package
that holds both (``zixir_actors``, the composition root) to load them.

Example:
    >>> from zixir_actors.sandbox._offload import route
    >>> route("local") is None   # "local": this machine's sandbox workers
    True
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from zixir_actors.errors import ConfigError, SandboxError
from zixir_actors.result import Result

__all__ = ["Offload", "accepts_executor", "register_offload", "route"]

_lock = threading.Lock()
_offload: Offload | None = None


@runtime_checkable
class Offload(Protocol):
    """What the executor package provides to sandboxes (registered with `register_offload`).

    ``target(choice)`` returns None to run calls in this machine's sandbox
    workers, or an opaque target that ``run`` and ``submit`` send calls to,
    with their `Limits`, returning the same `Ok`/`Err` a local call would.
    """

    def accepts(self, choice: Any) -> bool: ...

    def target(self, choice: Any) -> Any: ...

    def run(self, target: Any, fn: Callable[..., Any], args: tuple[Any, ...],
            kwargs: Mapping[str, Any] | None, limits: Any, *,
            label: str) -> Result[Any, SandboxError]: ...

    def submit(self, target: Any, fn: Callable[..., Any], args: tuple[Any, ...],
               kwargs: Mapping[str, Any] | None, limits: Any, *, label: str
               ) -> concurrent.futures.Future[Result[Any, SandboxError]]: ...


def register_offload(offload: Offload | None) -> Offload | None:
    """Install where sandboxes send calls that name an executor; returns the previous one.

    Called by `zixir_actors.executor` when it is imported; None removes it
    (then only ``executor=None`` and ``"local"`` are accepted).

    Raises:
        ConfigError: `offload` does not have the `Offload` methods.
    """
    global _offload
    if offload is not None and not isinstance(offload, Offload):
        raise ConfigError("offload", offload, "expected an object with the Offload methods")
    with _lock:
        previous, _offload = _offload, offload
    return previous


def _registered() -> Offload | None:
    """The registered `Offload`; the first time one is needed, the package loads it."""
    if _offload is None:
        import zixir_actors

        load = getattr(zixir_actors, "_load_sandbox_offload", None)
        if load is not None:
            load()
    return _offload


def _local(choice: Any) -> bool:
    return choice is None or (isinstance(choice, str) and choice == "local")


def accepts_executor(choice: Any) -> bool:
    """True for what ``Sandbox(executor=...)`` takes: None, ``"local"``, or an executor's choice."""
    if _local(choice):
        return True
    offload = _registered()
    return offload is not None and offload.accepts(choice)


def route(choice: Any) -> tuple[Offload, Any] | None:
    """Where calls of a sandbox with ``executor=choice`` go: None means this machine's workers.

    Otherwise the registered `Offload` and the target to hand to its `run`/`submit`.

    Raises:
        ConfigError: `choice` names an executor but none is registered.
        ExecutorUnavailableError: the executor's library is missing (from the executor).
        ClusterConnectionError: the cluster cannot be reached (from the executor).
    """
    # None may still mean an executor: the runtime's default, which only a
    # loaded executor package can have set.
    offload = _offload if _local(choice) else _registered()
    if offload is None:
        if _local(choice):
            return None
        raise ConfigError("executor", choice, "no executor is registered with the sandbox")
    target = offload.target(choice)
    return None if target is None else (offload, target)
