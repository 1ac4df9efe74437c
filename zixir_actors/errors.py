"""The exception hierarchy of `zixir_actors`, extending `supervisors.errors`.

Everything public raises a subclass of `ZixirError`. Sandboxed calls do not
raise: they return `Err(SandboxError)` (see `zixir_actors.result`).
Each service keeps its errors in its own section below.
"""

from __future__ import annotations

from typing import Any

from supervisors.errors import (
    AlreadyStartedError,
    ChildNotFoundError,
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

__all__ = [
    "AlreadyStartedError",
    "CacheError",
    "ChildNotFoundError",
    "ChildStartError",
    "ConfigError",
    "CorruptBlobError",
    "InvalidSpecError",
    "MaxChildrenError",
    "MetricConflictError",
    "NameNotFoundError",
    "NotAnActorError",
    "NotStartedError",
    "ObservabilityError",
    "RestartIntensityError",
    "ShutdownTimeoutError",
    "StoreError",
    "SupervisorError",
    "SupervisorTimeoutError",
    "UnserializableError",
    "UnwrapError",
    "ZixirError",
    "ZixirTimeoutError",
]


# --- shared -----------------------------------------------------------------


class ConfigError(ZixirError, ValueError):
    """An argument or setting is invalid (a bad size string, a negative TTL...).

    Attributes:
        field: the argument that is wrong.
        value: the value given.
    """

    def __init__(self, field: str, value: Any, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"invalid {field}: {value!r} ({reason})")


class ZixirTimeoutError(ZixirError, TimeoutError):
    """A blocking call did not finish within its `timeout`."""

    def __init__(self, what: str, timeout: float | None) -> None:
        self.what = what
        self.timeout = timeout
        super().__init__(f"{what} did not finish within {timeout}s")


class NotStartedError(ZixirError, RuntimeError):
    """A service was used before `zixir_actors.start()` started it."""

    def __init__(self, service: str) -> None:
        self.service = service
        super().__init__(
            f"service {service!r} is not running: call zixir_actors.start() first"
        )


class UnwrapError(ZixirError):
    """`unwrap()` on an `Err` whose error is not an exception, or `unwrap_err()` on an `Ok`."""

    def __init__(self, result: Any) -> None:
        self.result = result
        super().__init__(f"cannot unwrap {result!r}")


# --- store (checkpoint) -----------------------------------------------------


class StoreError(ZixirError):
    """The LMDB store failed (unwritable directory, closed environment...)."""


class CorruptBlobError(StoreError):
    """A stored blob is truncated, corrupted or not written by zixir-actors.

    Attributes:
        key: where the blob was read from, if known.
        reason: what check failed (magic, version, checksum, decode).
    """

    def __init__(self, reason: str, *, key: Any = None) -> None:
        self.reason = reason
        self.key = key
        where = f" at {key!r}" if key is not None else ""
        super().__init__(f"corrupt or foreign blob{where}: {reason}")


# --- cache ------------------------------------------------------------------


class CacheError(ZixirError):
    """Base class for cache errors."""


class UnserializableError(StoreError, TypeError):
    """A value cannot be serialized, not even by dill.

    Attributes:
        type_name: the type of the value.
        cause: the exception the serializer raised.
    """

    def __init__(self, value: Any, cause: BaseException) -> None:
        self.type_name = type(value).__name__
        self.cause = cause
        super().__init__(
            f"cannot serialize a {self.type_name}: {type(cause).__name__}: {cause}"
        )


# --- observability ----------------------------------------------------------


class ObservabilityError(ZixirError):
    """Base class for errors raised by `zixir_actors.observability`."""


class MetricConflictError(ObservabilityError, ValueError):
    """A metric name is already registered with another type, label set or buckets.

    Attributes:
        name: the metric name.
        existing: what is registered (``"counter(labels=('a',))"``).
        requested: what was asked for.
    """

    def __init__(self, name: str, existing: str, requested: str) -> None:
        self.name = name
        self.existing = existing
        self.requested = requested
        super().__init__(
            f"metric {name!r} is already registered as {existing}, cannot register it as {requested}"
        )
