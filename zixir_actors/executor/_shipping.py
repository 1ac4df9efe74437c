"""Functions shipped to a Ray cluster once, keyed by their code and closure.

Sending the function with every call means pickling it (by value, for a
lambda or a closure) at each submit and unpickling it in the worker. Instead
each plain function gets a Ray remote function of its own, a thin wrapper
that calls `execute` on it: Ray pickles and exports the wrapper once, each
worker loads it once, and a call only carries its arguments.

The cache key is the function's code object plus the *values* its closure
cells, defaults and the globals its code reads hold now, so a closure whose
captured value changed is a new key and ships again (it never runs stale).
A module-level function that workers import by name is keyed by its code
alone: its module's state is the worker's own, as with any pickled function.
Values that can be hashed are compared by equality; others by their
pickled bytes (plain `pickle`, cheap for data), and objects that cannot be
pickled that way by identity. A ``functools.partial`` of a plain function
is shipped as that function, its arguments travelling with each call
(`unwrap`). Other callables (bound methods, callable objects) are not
cached: they travel with each call.
"""

from __future__ import annotations

import functools
import pickle
import sys
import threading
import types
from collections.abc import Callable, Mapping
from typing import Any

from zixir_actors.executor._remote import run_payload

__all__ = ["MAX_SHIPPED", "NO_TRACE", "Shipper", "fits_task_name", "fresh_key", "run_named",
           "task_name", "trace_of_task_name", "unwrap"]

MAX_SHIPPED = 256
"""Remote wrappers kept per executor; the oldest is dropped beyond that."""

_BY_IDENTITY = (types.ModuleType, type, types.BuiltinFunctionType, types.MethodType)


def _value_key(value: Any, depth: int = 0) -> Any:
    if isinstance(value, types.FunctionType):
        return fresh_key(value, depth + 1) if depth < 4 else ("id", id(value))
    if isinstance(value, _BY_IDENTITY):
        return ("id", id(value))
    try:
        hash(value)
    except TypeError:
        pass
    else:
        return (type(value), value)
    try:
        return ("pickle", pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:  # not plain data: the same object is the same value
        return ("id", id(value))


def fresh_key(fn: Any, depth: int = 0) -> Any:
    """What decides whether `fn` was already shipped; None if it is not a plain function.

    Example:
        >>> def make(n):
        ...     return lambda: n
        >>> fresh_key(make(1)) == fresh_key(make(1)), fresh_key(make(1)) == fresh_key(make(2))
        (True, False)
    """
    if type(fn) is not types.FunctionType:
        return None
    code = fn.__code__
    if _by_reference(fn):  # workers import it from its module: nothing of ours travels
        return (code, fn.__module__, fn.__qualname__)
    cells: tuple[Any, ...] = ()
    if fn.__closure__:
        values = []
        for cell in fn.__closure__:
            try:
                values.append(_value_key(cell.cell_contents, depth))
            except ValueError:  # a cell not bound yet
                values.append(("empty",))
        cells = tuple(values)
    names = code.co_names
    glob: tuple[Any, ...] = ()
    if names:
        scope = fn.__globals__
        glob = tuple((name, _value_key(scope[name], depth)) for name in names
                     if name in scope)
    defaults = fn.__defaults__
    kwdefaults = fn.__kwdefaults__
    return (code, fn.__module__, cells, glob,
            None if defaults is None else _value_key(defaults, depth),
            None if kwdefaults is None else _value_key(kwdefaults, depth))


def _by_reference(fn: types.FunctionType) -> bool:
    """Whether pickling `fn` names it (module + qualified name) instead of copying it."""
    module = sys.modules.get(fn.__module__)
    if module is None or fn.__module__ == "__main__" or "<locals>" in fn.__qualname__:
        return False
    found: Any = module
    for part in fn.__qualname__.split("."):
        found = getattr(found, part, None)
    return found is fn


def unwrap(fn: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any] | None
           ) -> tuple[Any, tuple[Any, ...], Mapping[str, Any] | None]:
    """A ``functools.partial`` of a plain function as that function and the call's arguments.

    Example:
        >>> def add(a, b, *, scale=1):
        ...     return (a + b) * scale
        >>> unwrap(functools.partial(add, 1, scale=2), (3,), None)[1:]
        ((1, 3), {'scale': 2})

    So the function is shipped once and the partial's arguments travel as
    the call's (a code-first step with arguments reaches an executor as
    ``partial(fn, *args)``). Other callables are returned as they are.
    """
    if type(fn) is not functools.partial or type(fn.func) is not types.FunctionType:
        return fn, args, kwargs
    if fn.keywords:
        kwargs = {**fn.keywords, **kwargs} if kwargs else fn.keywords
    return fn.func, fn.args + tuple(args), kwargs


NO_TRACE = "-"
"""The last word of the name of a task sent without trace ids (see `task_name`)."""


def task_name(label: str, trace_id: str | None, span_id: str | None) -> str:
    """The Ray task name of a call sent without an argument: its label and its trace.

    Example:
        >>> task_name("load", "ab" * 16, "cd" * 8)
        'load 00-abababababababababababababababab-cdcdcdcdcdcdcdcd-01'
        >>> trace_of_task_name(task_name("load", "ab" * 16, "cd" * 8)) == ("ab" * 16, "cd" * 8)
        True

    The name is the only per-call data of such a task, and Ray shows it
    (``ray list tasks``, the dashboard) beside the call's W3C ``traceparent``.
    A character of `label` that does not print (a newline) is a space here:
    Ray writes the name into its worker logs as one line.
    """
    if not label.isprintable():
        label = "".join(c if c.isprintable() else " " for c in label)
    if trace_id is None or span_id is None:
        return f"{label} {NO_TRACE}"
    return f"{label} 00-{trace_id}-{span_id}-01"


_HEX = frozenset("0123456789abcdef")


def fits_task_name(trace_id: str | None, span_id: str | None) -> bool:
    """Whether `task_name` carries these ids exactly (both None, or W3C hex ids).

    Example:
        >>> fits_task_name("ab" * 16, "cd" * 8), fits_task_name("ab" * 16, None)
        (True, False)
    """
    if trace_id is None or span_id is None:
        return trace_id is None and span_id is None
    return len(trace_id) == 32 and len(span_id) == 16 and _HEX.issuperset(trace_id) \
        and _HEX.issuperset(span_id)


def trace_of_task_name(name: str) -> tuple[str | None, str | None]:
    """`(trace_id, span_id)` from a `task_name` (both None if it carries none)."""
    parts = name.rpartition(" ")[2].split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None, None
    return parts[1], parts[2]


def run_named(fn: Callable[..., Any]) -> Any:
    """Run a call sent without an argument, in its Ray worker (see `task_name`)."""
    from ray import get_runtime_context

    trace_id, span_id = trace_of_task_name(get_runtime_context().get_task_name() or "")
    return run_payload(fn, [None, trace_id, span_id, None, False])


def _wrapper(fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(*payload: list[Any]) -> Any:
        # A call with arguments, limits or span collection sends them as one
        # argument (`pack`); one without sends none, its trace ids in its name.
        return run_payload(fn, payload[0]) if payload else run_named(fn)

    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", "call")
    call.__name__ = call.__qualname__ = f"zixir_call.{name}"
    return call


class Shipper:
    """The Ray remote function of each plain function, made (and shipped) once."""

    def __init__(self, ray: Any) -> None:
        self._ray = ray
        self._lock = threading.Lock()
        self._remotes: dict[Any, Any] = {}

    def remote(self, fn: Callable[..., Any]) -> tuple[Any, Any] | None:
        """`(key, remote function)` for `fn`, or None when `fn` travels with each call."""
        key = fresh_key(fn)
        if key is None:
            return None
        try:
            found = self._remotes.get(key)
        except TypeError:  # a value whose hash is broken: do not cache it
            return None
        if found is None:
            found = self._ray.remote(_wrapper(fn))
            with self._lock:
                while len(self._remotes) >= MAX_SHIPPED:
                    del self._remotes[next(iter(self._remotes))]
                self._remotes[key] = found
        return key, found

    def __len__(self) -> int:
        return len(self._remotes)
