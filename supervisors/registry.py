"""Registered names: `register`, `whereis`, `ref` (a stable reference) and `spawn`.

Pykka's `ActorRegistry` has no names; this table maps a dotted name
(``"zixir.store"``) to the current incarnation of an actor. A name is dropped
when its actor stops and taken by the next incarnation when it starts.

Example:
    >>> import pykka
    >>> from supervisors import spawn, whereis, ref
    >>> class Echo(pykka.ThreadingActor):
    ...     def on_receive(self, message):
    ...         return message
    >>> first = spawn(Echo, name="doc.echo")
    >>> again = spawn(Echo, name="doc.echo")      # idempotent, like GenServer
    >>> again.already_started, again.ref is first.ref
    (True, True)
    >>> ref("doc.echo").ask("hi", timeout=1.0)
    'hi'
    >>> first.ref.stop()
    True
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pykka

from supervisors import _registry
from supervisors._actor import stamped
from supervisors._future import Reply
from supervisors.errors import (
    NameNotFoundError,
    SupervisorError,
    SupervisorTimeoutError,
)

__all__ = [
    "DEFAULT_NAME_WAIT",
    "NameTakenError",
    "NamedRef",
    "Started",
    "name_of",
    "ref",
    "register",
    "registered",
    "spawn",
    "unregister",
    "whereis",
]

DEFAULT_NAME_WAIT = 5.0
"""How long `ref(name)` waits for a name to come back while a restart is under way."""


class NameTakenError(SupervisorError):
    """The name is registered to another live actor."""

    def __init__(self, name: str, holder: Any) -> None:
        self.name = name
        self.holder = holder
        super().__init__(f"name {name!r} is already registered to {holder}")


@dataclass(frozen=True, slots=True)
class Started:
    """What `spawn` returns: the actor and whether it was already running."""

    ref: pykka.ActorRef[Any]
    already_started: bool


def register(name: str, actor_ref: pykka.ActorRef[Any]) -> None:
    """Register `actor_ref` under `name` until the actor stops.

    Raises:
        NameTakenError: another live actor holds the name.
        TypeError: `name` is not a non-empty string or `actor_ref` not an ActorRef.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"a name must be a non-empty string, got {name!r}")
    if not isinstance(actor_ref, pykka.ActorRef):
        raise TypeError(f"expected a pykka.ActorRef, got {type(actor_ref).__name__}")
    with _registry.lock:
        holder = _registry.names.get(name)
        if holder is actor_ref:
            return
        if _registry.alive(holder):
            raise NameTakenError(name, holder)
        if holder is not None:
            _registry.name_of_urn.pop(holder.actor_urn, None)
        if _registry.parked and _registry.alive(actor_ref):
            _registry.deliver_parked(name, actor_ref)  # first: they came before anyone else
        _registry.names[name] = actor_ref
        _registry.name_of_urn[actor_ref.actor_urn] = name
        _registry.changed.notify_all()
    if not _registry.alive(actor_ref):
        _registry.forget(actor_ref)


def unregister(name: str) -> None:
    """Remove `name`; the actor keeps running. Unknown names are a no-op."""
    with _registry.lock:
        holder = _registry.names.pop(name, None)
        if holder is not None:
            _registry.name_of_urn.pop(holder.actor_urn, None)


def whereis(name: str) -> pykka.ActorRef[Any] | None:
    """The live actor registered as `name`, or ``None``."""
    found = _registry.names.get(name)
    return found if _registry.alive(found) else None


def name_of(actor_ref: pykka.ActorRef[Any]) -> str | None:
    """The name `actor_ref` is registered under, or ``None``."""
    return _registry.name_of_urn.get(actor_ref.actor_urn)


def registered() -> dict[str, pykka.ActorRef[Any]]:
    """A snapshot of every live name and its actor."""
    with _registry.lock:
        return {n: r for n, r in _registry.names.items() if _registry.alive(r)}


def _await_name(name: str, deadline: float | None, began: float) -> pykka.ActorRef[Any]:
    found = _registry.names.get(name)
    if _registry.alive(found):
        return found  # type: ignore[return-value]
    with _registry.lock:
        while True:
            found = _registry.names.get(name)
            if _registry.alive(found):
                return found  # type: ignore[return-value]
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise NameNotFoundError(name, time.monotonic() - began)
            # Woken by `register` (the restart) or `forget` (the old holder's exit).
            _registry.changed.wait(remaining)


def _crashed_with(actor_ref: pykka.ActorRef[Any], exc: BaseException) -> bool:
    actor = actor_ref._actor_weakref()
    return actor is not None and getattr(actor, "_zx_reason", None) is exc


class _NamedProxy:
    """A proxy that follows the name to the current incarnation."""

    __slots__ = ("_cache", "_named")

    def __init__(self, named: NamedRef) -> None:
        self._named = named
        self._cache: tuple[str, pykka.ActorProxy[Any]] | None = None

    def _proxy(self) -> pykka.ActorProxy[Any]:
        current = self._named.whereis(timeout=self._named.wait)
        cache = self._cache
        if cache is None or cache[0] != current.actor_urn:
            cache = (current.actor_urn, current.proxy())
            self._cache = cache
        return cache[1]

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._proxy(), attr)

    def __repr__(self) -> str:
        return f"<proxy of {self._named!r}>"


class NamedRef:
    """A stable reference: `tell`, `ask` and `proxy` reach whatever actor holds
    the name now, waiting up to `wait` seconds while a restart is under way.

    A message that reached an incarnation which died before handling it is
    sent again to the next one; a message that crashed the actor is not
    (the asker gets that exception).
    """

    __slots__ = ("name", "wait")

    def __init__(self, name: str, *, wait: float | None = DEFAULT_NAME_WAIT) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"a name must be a non-empty string, got {name!r}")
        self.name = name
        self.wait = wait

    def __repr__(self) -> str:
        return f"NamedRef({self.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NamedRef) and other.name == self.name

    def __hash__(self) -> int:
        return hash(("NamedRef", self.name))

    def whereis(self, *, timeout: float | None = 0.0) -> pykka.ActorRef[Any]:
        """The current incarnation, waiting up to `timeout` for one.

        Raises:
            NameNotFoundError: no live actor holds the name in time.
        """
        found = _registry.names.get(self.name)
        if found is not None and not found.actor_stopped.is_set():
            return found
        now = time.monotonic()
        return _await_name(self.name, None if timeout is None else now + timeout, now)

    def is_alive(self) -> bool:
        return whereis(self.name) is not None

    def _current(self, deadline: float | None) -> pykka.ActorRef[Any]:
        # Each wait for a restart gets `self.wait` afresh, within the call's deadline.
        found = _registry.names.get(self.name)
        if found is not None and not found.actor_stopped.is_set():
            return found
        now = time.monotonic()
        limit = None if self.wait is None else now + self.wait
        if deadline is not None and (limit is None or deadline < limit):
            limit = deadline
        return _await_name(self.name, limit, now)

    def tell(self, message: Any) -> None:
        """Send `message` to the current incarnation.

        Raises:
            NameNotFoundError: no incarnation appeared within `wait` seconds.
        """
        while True:
            current = self._current(None)
            try:
                current.tell(message)
                return
            except pykka.ActorDeadError:
                continue

    def ask(self, message: Any, *, timeout: float | None = None, block: bool = True) -> Any:
        """Ask the current incarnation and return its answer.

        If no incarnation holds the name (its supervisor is restarting it),
        the message waits, up to `wait` seconds, for the next one to register
        the name, and goes into its inbox before anyone else's (it is handled
        after that incarnation's `on_start`). If the incarnation dies before
        handling the message, the message is asked again of the next one. With
        ``block=False`` a future of the current incarnation is returned (it is
        not re-sent if that incarnation dies).

        Raises:
            NameNotFoundError: no incarnation appeared in time.
            SupervisorTimeoutError: no answer within `timeout`.
            Exception: whatever the handler raised.
        """
        if not block:
            return self._current(None if timeout is None else time.monotonic() + timeout) \
                .ask(message, block=False)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            reply = Reply()
            envelope = stamped(message, reply)
            if not _registry.send_or_park(self.name, envelope):
                # Parked: the next holder's register() delivers it, or the wait ends.
                parked_at = time.monotonic()
                limit = None if self.wait is None else parked_at + self.wait
                if deadline is not None and (limit is None or deadline < limit):
                    limit = deadline
                if not reply.wait(None if limit is None else limit - time.monotonic()) \
                        and _registry.unpark(self.name, envelope):
                    raise NameNotFoundError(self.name, time.monotonic() - parked_at)
            if not reply.wait(None if deadline is None else deadline - time.monotonic()):
                raise SupervisorTimeoutError(f"ask to {self.name!r}", timeout)
            try:
                return reply.result()
            except pykka.ActorDeadError as exc:
                target = reply.target
                if target is not None and _crashed_with(target, exc):
                    raise  # the handler itself raised it: the message was handled
                continue  # that incarnation died before handling it: ask the next one

    def proxy(self) -> Any:
        """A proxy whose calls go to the current incarnation (futures as in Pykka)."""
        return _NamedProxy(self)

    def stop(self, *, timeout: float | None = None) -> bool:
        """Stop the current incarnation (its supervisor may restart it)."""
        current = whereis(self.name)
        return False if current is None else bool(current.stop(block=True, timeout=timeout))


def ref(name: str, *, wait: float | None = DEFAULT_NAME_WAIT) -> NamedRef:
    """A stable reference to whatever actor is registered as `name`.

    Args:
        name: the registered name.
        wait: seconds each call waits for the name to reappear while its actor
            restarts (``None`` waits forever). Default `DEFAULT_NAME_WAIT`.
    """
    return NamedRef(name, wait=wait)


def spawn(start: type[pykka.Actor] | Callable[..., pykka.ActorRef[Any]], *args: Any,
          name: str | None = None, start_timeout: float | None = 30.0,
          **kwargs: Any) -> Started:
    """Start an actor with supervised semantics, idempotently by name.

    If `name` is held by a live actor, that actor is returned with
    ``already_started=True`` and nothing new starts, also when many threads
    race to start the same name. The name is registered before the actor's
    thread runs (as in OTP): messages sent to it meanwhile are handled after
    its `on_start`.

    Args:
        start: a `pykka.ThreadingActor` subclass, or a callable returning an ActorRef.
        args, kwargs: passed to `start`.
        name: register the actor under this name.
        start_timeout: how long its `on_start` may take (``None``: no limit).

    Raises:
        InvalidSpecError: `start` is neither an actor class nor a callable.
        NotAnActorError: a callable `start` returned something else.
        ChildStartError: the constructor or `on_start` raised, or `on_start`
            timed out (the error's ``child_id`` is the name, or the class name).
    """
    from supervisors.spec import ChildSpec
    from supervisors.supervisor import start_actor

    spec = ChildSpec(name or getattr(start, "__name__", repr(start)), start, args, kwargs,
                     name=name)
    ref_, already_started = start_actor(spec, start_timeout=start_timeout)
    return Started(ref_, already_started)
