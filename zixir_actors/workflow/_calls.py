"""Calling a step function in this process: awaiting it on the shared loop, with a timeout.

Shared by DAG steps (`_scheduler`) and code-first step calls (`_durable`).
"""

from __future__ import annotations

import contextvars
import inspect
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from zixir_actors.errors import StepTimeoutError

__all__ = ["awaited", "call", "with_timeout"]

T = TypeVar("T")


_PLAIN = frozenset({bool, int, float, str, bytes, dict, list, tuple})
"""Types of step results that are never awaitable: `call` skips the check for them."""


def call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """`fn(*args, **kwargs)`; an awaitable result runs on the runtime's shared event loop."""
    value = fn(*args, **kwargs)
    if value is None or type(value) in _PLAIN:
        return value
    if inspect.isawaitable(value):
        from zixir_actors.workflow._loop import run_coro

        return run_coro(awaited(value))
    return value


async def awaited(awaitable: Any) -> Any:
    return await awaitable


def with_timeout(thunk: Callable[[], T], timeout: float, step: str, *, thread: str) -> T:
    """Run `thunk()` in a thread of its own and wait at most `timeout` seconds for it.

    A slower call is abandoned (Python cannot stop a thread): its thread runs
    on, and its result is thrown away.

    Raises:
        StepTimeoutError: it did not finish in time.
        (whatever `thunk` raised)
    """
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["value"] = thunk()
        except BaseException as exc:  # handed to the waiting caller
            box["error"] = exc
        finally:
            done.set()

    context = contextvars.copy_context()
    threading.Thread(target=context.run, args=(target,), daemon=True, name=thread).start()
    if not done.wait(timeout):
        raise StepTimeoutError(step, timeout)
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]
