"""Choosing an executor: by name, per runtime (`configure`), per workflow or step (`offload`)."""

from __future__ import annotations

import threading
from typing import Any

from zixir_actors.errors import ConfigError
from zixir_actors.executor._api import EXECUTOR_NAMES, Executor

__all__ = [
    "configure",
    "default_executor",
    "get_executor",
    "is_executor_choice",
    "offload",
    "reset",
]

_lock = threading.RLock()
_default: Executor | None = None
"""The runtime's executor; None: the local default (work runs in-process as usual)."""
_ray: Any = None
"""The shared `RayExecutor` behind the name ``"ray"``, created on first use."""
_ray_address: str | None = None
_ray_options: dict[str, Any] = {}
_local: Any = None


def is_executor_choice(value: Any) -> bool:
    """True for what ``executor=`` accepts: None, ``"local"``, ``"ray"`` or an `Executor`.

    Example:
        >>> is_executor_choice("ray"), is_executor_choice("spark")
        (True, False)
    """
    if value is None:
        return True
    if isinstance(value, str):
        return value in EXECUTOR_NAMES
    kind = type(value)
    if kind in _EXECUTOR_TYPES:  # a structural check costs ~20 us: once per type
        return True
    if not isinstance(value, Executor):
        return False
    if all(hasattr(kind, member) for member in _MEMBERS):  # not per-instance attributes
        _EXECUTOR_TYPES.add(kind)
    return True


_MEMBERS = ("name", "submit", "shutdown")
_EXECUTOR_TYPES: set[type] = set()
"""Classes whose instances were found to be `Executor`s (by their class's members)."""


def _check(spec: Any) -> None:
    if not is_executor_choice(spec):
        raise ConfigError("executor", spec,
                          f"must be one of {EXECUTOR_NAMES}, an Executor or None")


def get_executor(spec: str | Executor | None = None) -> Executor:
    """The executor `spec` names.

    Example:
        >>> get_executor("local").name
        'local'

    Args:
        spec: ``"local"`` (a `LocalExecutor` running calls in threads),
            ``"ray"`` (the process's shared `RayExecutor`, connected to the
            address given to `configure`, or a local cluster), an `Executor`
            (returned as is), or None (the runtime's choice, local by default).

    Raises:
        ConfigError: an unknown name.
        ExecutorUnavailableError: ``"ray"`` without Ray installed (names the extra).
        ClusterConnectionError: the Ray cluster cannot be reached.
    """
    global _ray, _local
    _check(spec)
    if spec is None:
        spec = _default if _default is not None else "local"
    if not isinstance(spec, str):
        return spec
    with _lock:
        if spec == "ray":
            if _ray is None or not _ray._ray.is_initialized():
                from zixir_actors.executor._ray import RayExecutor

                _ray = RayExecutor(_ray_address, **_ray_options)
            return _ray  # type: ignore[no-any-return]
        if _local is None:
            from zixir_actors.executor._local import LocalExecutor

            _local = LocalExecutor()
        return _local  # type: ignore[no-any-return]


def configure(executor: str | Executor | None = "local", *, ray_address: str | None = None,
              **ray_options: Any) -> Executor | None:
    """Set this process's default executor (what ``zixir_actors.start(executor=...)`` does).

    Example:
        ``configure("ray", ray_address="10.0.0.5:6379")``: every workflow step,
        concurrent stream stage, `pmap`/`parallel` and sandbox that does not
        name an executor now runs on that cluster. ``configure("local")``
        (or `reset`) goes back.

    Args:
        executor: ``"local"``, ``"ray"`` or an `Executor`.
        ray_address: the cluster that ``"ray"`` connects to (None: join this
            process's Ray instance or start a local one).
        **ray_options: more arguments for `RayExecutor` (``num_cpus``,
            ``init_options``...).

    Returns:
        The default executor, or None for the local default.

    Raises:
        ConfigError: an unknown executor name.
        ExecutorUnavailableError: ``"ray"`` without Ray installed.
        ClusterConnectionError: the Ray cluster cannot be reached (checked now,
            so a runtime does not start half-configured).
    """
    global _default, _ray_address, _ray_options
    _check(executor)
    with _lock:
        reset()
        _ray_address = ray_address
        _ray_options = dict(ray_options)
        if executor is None or executor == "local":
            return None
        _default = get_executor(executor)
        return _default


def reset(*, timeout: float | None = None) -> None:
    """Back to the local default; disconnect the shared Ray executor if it connected.

    Also ends the worker process the shared ``"local"`` executor may have
    started for calls with limits.
    """
    global _default, _ray, _ray_address, _ray_options, _local
    with _lock:
        shared, _ray = _ray, None
        local, _local = _local, None
        _default = None
        _ray_address = None
        _ray_options = {}
    if shared is not None:
        shared.shutdown(timeout=timeout)
    if local is not None:
        local.shutdown(timeout=timeout)


def default_executor() -> Executor | None:
    """The runtime's executor, or None when work runs locally (the default)."""
    return _default


def offload(*choices: str | Executor | None) -> Executor | None:
    """Where a service should send work: the first choice given, else the runtime's default.

    Example:
        >>> offload(None, None) is None      # nothing chosen, local runtime: run in-process
        True
        >>> offload("local", "ray") is None  # a step's "local" wins over its workflow's "ray"
        True

    The services call this with their most specific choice first
    (``offload(step.executor, workflow.executor)``). None means: run it here
    the usual way (threads, stream worker actors, sandbox processes); an
    `Executor` means: submit it there.

    Raises:
        ConfigError: an unknown executor name.
        ExecutorUnavailableError: ``"ray"`` without Ray installed.
        ClusterConnectionError: the Ray cluster cannot be reached.
    """
    for choice in choices:
        _check(choice)
        if choice is None:
            continue
        if choice == "local":
            return None
        return get_executor(choice)
    return _default
