"""The process-wide name table (private state behind `supervisors.registry`)."""

from __future__ import annotations

import contextlib
import queue
import threading
from typing import Any

import pykka

from supervisors.errors import NameNotFoundError

# One lock guards the table; `changed` wakes threads waiting for a name.
lock = threading.RLock()
changed = threading.Condition(lock)
names: dict[str, pykka.ActorRef[Any]] = {}
name_of_urn: dict[str, str] = {}
_start_locks: dict[str, threading.Lock] = {}
parked: dict[str, list[Any]] = {}
"""Asks through a name that no live actor holds (a restart under way), by name, in
the order they came: `register` puts them in the next holder's inbox before the
name is visible, so they keep their order and their askers sleep until the answer."""


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


def deliver(holder: pykka.ActorRef[Any], envelope: Any) -> None:
    """Put a stamped envelope (see `supervisors._actor.stamped`) in `holder`'s inbox."""
    envelope.reply_to.target = holder
    inbox = holder.actor_inbox
    put = getattr(inbox, "put_stamped", None)  # a SupervisedActor's inbox keeps the stamp
    if put is not None:
        put(envelope)
    else:
        inbox.put(envelope)


def send_or_park(name: str, envelope: Any) -> bool:
    """Deliver `envelope` to the live holder of `name` (True), or park it for the next (False)."""
    holder = names.get(name)
    if not alive(holder):
        with lock:
            holder = names.get(name)
            if not alive(holder):
                parked.setdefault(name, []).append(envelope)
                return False
    deliver(holder, envelope)  # type: ignore[arg-type]
    return True


def unpark(name: str, envelope: Any) -> bool:
    """Take back a parked envelope: True if it was still parked, False if delivered."""
    with lock:
        waiting = parked.get(name)
        if waiting is None or envelope not in waiting:
            return False
        waiting.remove(envelope)
        if not waiting:
            del parked[name]
        return True


def deliver_parked(name: str, holder: pykka.ActorRef[Any]) -> None:
    """Move the asks parked for `name` into its new holder's inbox (with the table lock held)."""
    waiting = parked.pop(name, None)
    if waiting:
        for envelope in waiting:
            deliver(holder, envelope)


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
        waiting = [(envelope, name) for name, envelopes in parked.items()
                   for envelope in envelopes]
        parked.clear()
        changed.notify_all()
    for envelope, name in waiting:  # their askers must not wait for a name that is gone
        with contextlib.suppress(queue.Full):
            error = NameNotFoundError(name)
            envelope.reply_to.set_exception((NameNotFoundError, error, None))
