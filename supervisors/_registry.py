"""The process-wide name table (private state behind `supervisors.registry`)."""

from __future__ import annotations

import threading
from typing import Any

import pykka

# One lock guards the table; `changed` wakes threads waiting for a name.
lock = threading.RLock()
changed = threading.Condition(lock)
names: dict[str, pykka.ActorRef[Any]] = {}
name_of_urn: dict[str, str] = {}
_start_locks: dict[str, threading.Lock] = {}


def alive(ref: pykka.ActorRef[Any] | None) -> bool:
    return ref is not None and not ref.actor_stopped.is_set()


def start_lock(name: str) -> threading.Lock:
    found = _start_locks.get(name)  # every restart of a named child: no table lock then
    if found is not None:
        return found
    with lock:
        found = _start_locks.get(name)
        if found is None:
            found = _start_locks[name] = threading.Lock()
        return found


def forget(ref: pykka.ActorRef[Any]) -> None:
    """Drop the name of a stopped actor (called from its thread as it exits).

    Nobody is woken: threads waiting for a name wait for a live holder, which
    only `register` brings.
    """
    with lock:
        name = name_of_urn.pop(ref.actor_urn, None)
        if name is not None and names.get(name) is ref:
            del names[name]


def reset() -> None:
    """Forget every name (tests only)."""
    with lock:
        names.clear()
        name_of_urn.clear()
        _start_locks.clear()
        changed.notify_all()
