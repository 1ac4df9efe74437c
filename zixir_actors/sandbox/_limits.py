"""`Limits` and `parse_size`: what a sandboxed call may use.

Example:
    >>> from zixir_actors.sandbox import Limits, parse_size
    >>> parse_size("1.5GiB") == 3 * 1024**3 // 2
    True
    >>> Limits(timeout=5.0, memory="512MB").memory
    536870912
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from zixir_actors.errors import ConfigError

__all__ = [
    "DEFAULT_MAX_NESTING",
    "DEFAULT_SOFT_GRACE",
    "ErrorKind",
    "Limits",
    "parse_size",
]

ErrorKind = Literal["timeout", "memory", "cpu", "depth", "exception", "crashed", "unpicklable"]
"""Why a sandboxed call failed; the `kind` of a `SandboxError`."""

DEFAULT_SOFT_GRACE = 1.0
"""Seconds between a soft timeout and the hard kill when only `soft_timeout` is set."""

DEFAULT_MAX_NESTING = 2
"""How many sandboxes deep a sandboxed call may start further sandboxed calls."""

_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kb": 1024, "kib": 1024,
    "m": 1024**2, "mb": 1024**2, "mib": 1024**2,
    "g": 1024**3, "gb": 1024**3, "gib": 1024**3,
    "t": 1024**4, "tb": 1024**4, "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_size(value: int | str, *, field: str = "memory") -> int:
    """Bytes in a memory size: ``"2GB"`` is 2 x 1024^3, as in Zixir.

    Example:
        >>> parse_size("512MB"), parse_size("2GB"), parse_size(4096)
        (536870912, 2147483648, 4096)

    `KB`, `KiB`, `MB`, `MiB`, `GB`, `GiB` (and `TB`/`TiB`) are all powers of
    1024, case-insensitive; fractions are allowed (``"1.5GiB"``); plain
    integers are bytes.

    Args:
        value: a size string or a number of bytes.
        field: the argument name used in the error message.

    Raises:
        ConfigError: the string is not a size, the unit is unknown, or the
            size is not positive.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(field, value, "expected bytes as an int or a string like '512MB'")
    if isinstance(value, int):
        if value <= 0:
            raise ConfigError(field, value, "a memory size must be positive")
        return value
    match = _SIZE.match(value)
    if match is None:
        raise ConfigError(field, value, "expected a number and a unit like '512MB' or '1.5GiB'")
    number, unit = match.groups()
    factor = _UNITS.get(unit.lower())
    if factor is None:
        raise ConfigError(field, value, f"unknown unit {unit!r}; use B, KB, MB, GB, TB or KiB..TiB")
    size = int(float(number) * factor)
    if size <= 0:
        raise ConfigError(field, value, "a memory size must be positive")
    return size


def _check_seconds(field: str, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value <= 0:
        raise ConfigError(field, value, "expected a positive number of seconds or None")


@dataclass(frozen=True, slots=True)
class Limits:
    """What one sandboxed call may use; `None` means unlimited.

    Example:
        >>> limits = Limits(soft_timeout=2.0, timeout=3.0, memory="256MB", max_depth=200)
        >>> limits.hard_timeout
        3.0

    Args:
        timeout: hard wall-clock limit in seconds: the worker is killed and the
            call ends as ``Err(kind="timeout")``.
        soft_timeout: seconds after which `SoftTimeLimitExceeded` is raised
            inside the call so it can clean up; the call still ends as
            ``Err(kind="timeout")``. Without `timeout`, the hard kill follows
            `DEFAULT_SOFT_GRACE` seconds later.
        memory: limit on the resident memory (RSS) of the call's processes:
            the worker (interpreter included) plus every process the call
            started, summed; checked while the call runs and when it ends,
            with an address-space cap of the same size on the call's growth
            (see `zixir_actors.sandbox`): ``"512MB"``, ``"1.5GiB"`` or bytes.
            Stored as bytes.
        cpu_time: CPU seconds (user + system) the call may use.
        max_cpu_percent: highest CPU use, averaged over `cpu_window` seconds,
            in percent of one core (a busy loop is about 100).
        cpu_window: seconds over which `max_cpu_percent` is averaged.
        max_depth: Python call depth available to the call (the recursion
            limit inside it); deeper recursion ends as ``Err(kind="depth")``.
        max_nesting: how many sandboxes deep calls may nest (a sandboxed call
            that runs another sandboxed call is one level deeper).

    Raises:
        ConfigError: a value has the wrong type or range, the memory string
            is not a size, or `soft_timeout` is not below `timeout`.
    """

    timeout: float | None = None
    soft_timeout: float | None = None
    memory: int | str | None = None
    cpu_time: float | None = None
    max_cpu_percent: float | None = None
    cpu_window: float = 1.0
    max_depth: int | None = None
    max_nesting: int = DEFAULT_MAX_NESTING

    def __post_init__(self) -> None:
        _check_seconds("timeout", self.timeout)
        _check_seconds("soft_timeout", self.soft_timeout)
        _check_seconds("cpu_time", self.cpu_time)
        _check_seconds("cpu_window", self.cpu_window)
        if self.timeout is not None and self.soft_timeout is not None \
                and self.soft_timeout >= self.timeout:
            raise ConfigError("soft_timeout", self.soft_timeout,
                              f"must be below timeout={self.timeout}")
        if self.memory is not None:
            object.__setattr__(self, "memory", parse_size(self.memory))
        if self.max_cpu_percent is not None and (
                isinstance(self.max_cpu_percent, bool)
                or not isinstance(self.max_cpu_percent, (int, float))
                or not self.max_cpu_percent > 0):
            raise ConfigError("max_cpu_percent", self.max_cpu_percent,
                              "expected a positive percentage of one core")
        for name in ("max_depth", "max_nesting"):
            value = getattr(self, name)
            if value is None and name == "max_depth":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(name, value, "expected a positive integer")

    @property
    def memory_bytes(self) -> int | None:
        """The memory limit in bytes (`memory` is normalised to bytes already)."""
        return self.memory  # type: ignore[return-value]

    @property
    def hard_timeout(self) -> float | None:
        """Seconds after which the worker is killed: `timeout`, or soft + grace."""
        if self.timeout is not None:
            return self.timeout
        if self.soft_timeout is not None:
            return self.soft_timeout + DEFAULT_SOFT_GRACE
        return None
