"""Defaults, argument checks and the stats snapshot of `Cache`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from zixir_actors._clock import SYSTEM_CLOCK, Clock
from zixir_actors.errors import ConfigError

__all__ = ["DEFAULT_SYNC_INTERVAL", "DEFAULT_TIMEOUT", "CacheStats", "check_callable",
           "check_clock", "check_count", "check_ratio", "check_timeout", "check_ttl"]

DEFAULT_TIMEOUT = 5.0
"""Seconds a call waits for a restarting cache (or `Cache.start` for its actor)."""
DEFAULT_SYNC_INTERVAL = 1.0
"""Seconds between a persistent write and the group fsync that covers it."""


@dataclass(frozen=True, slots=True)
class CacheStats:
    """A snapshot of one cache's counters (`Cache.stats()`).

    Attributes:
        name: the cache name.
        hits, misses: lookups (`get`, `get_many`, `get_or_compute`) that found
            a live entry or not. Counted without a lock, so concurrent readers
            can very rarely lose an increment.
        evictions: entries dropped by LRU to respect `max_entries`/`max_bytes`.
        expirations: expired entries reclaimed (including ones found expired
            when a persistent cache loaded).
        size: entries held after reclaiming expired ones.
        bytes: encoded size of the entries (persistent caches, or any cache
            with `max_bytes`); otherwise a shallow `sys.getsizeof` estimate.
        refreshes, refresh_errors: refresh-ahead reloads that succeeded or failed.
        warm_loaded, warm_errors: entries loaded by warm-ups, and failed items.
        persist: whether entries are mirrored in LMDB.
        tables: the names of the cache's tables.
    """

    name: str
    hits: int
    misses: int
    evictions: int
    expirations: int
    size: int
    bytes: int
    refreshes: int
    refresh_errors: int
    warm_loaded: int
    warm_errors: int
    persist: bool
    tables: tuple[str, ...]

    @property
    def hit_ratio(self) -> float:
        """hits / (hits + misses), 0.0 before any lookup."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


def check_ttl(ttl: object, field: str = "ttl") -> float | None:
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl) \
            or ttl <= 0:
        raise ConfigError(field, ttl, "must be None (no expiry) or a finite number of seconds > 0")
    return float(ttl)


def check_timeout(timeout: object) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
        raise ConfigError("timeout", timeout, "must be None or seconds >= 0")
    return float(timeout)


def check_count(value: object, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(field, value, "must be None or an int >= 1")
    return value


def check_ratio(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ConfigError("refresh_ahead", value, "must be None or a fraction of the TTL in (0, 1)")
    return float(value)


def check_callable(value: Any, field: str) -> Any:
    if value is not None and not callable(value):
        raise ConfigError(field, value, "must be callable")
    return value


def check_clock(clock: Clock | None) -> Clock:
    if clock is None:
        return SYSTEM_CLOCK
    if not isinstance(clock, Clock):
        raise ConfigError("clock", clock, "needs monotonic(), time() and sleep()")
    return clock
