"""The process-wide event loop that async bodies and async steps run on.

One loop, in one daemon thread named ``zixir-loop``, started on first use:
an async client created in one step (an HTTP or LLM client bound to its
loop) can be used by every later step of every run. `zixir_actors.stop()`
and interpreter exit close it.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from zixir_actors.errors import ZixirTimeoutError

__all__ = ["LOOP_THREAD", "get_loop", "run_coro", "shutdown_loop", "submit"]

T = TypeVar("T")

LOOP_THREAD = "zixir-loop"
"""The name of the loop's thread."""

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def get_loop() -> asyncio.AbstractEventLoop:
    """The shared loop, started on first use."""
    global _loop, _thread
    loop = _loop
    if loop is not None and not loop.is_closed():
        return loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def serve() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            thread = threading.Thread(target=serve, name=LOOP_THREAD, daemon=True)
            thread.start()
            ready.wait(10.0)
            _loop, _thread = loop, thread
        return _loop


def submit(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Schedule `coro` on the shared loop; returns a thread-safe future."""
    return asyncio.run_coroutine_threadsafe(coro, get_loop())


def run_coro(coro: Coroutine[Any, Any, T], *, timeout: float | None = None) -> T:
    """Run `coro` on the shared loop and wait for it from a thread that is not the loop's.

    Raises:
        ZixirTimeoutError: it took longer than `timeout` seconds (it is cancelled).
        RuntimeError: called from the loop's own thread (await it instead).
    """
    if threading.current_thread() is _thread:
        coro.close()
        raise RuntimeError("run_coro() called on the zixir loop's own thread; await instead")
    future = submit(coro)
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise ZixirTimeoutError("coroutine on the zixir loop", timeout) from None


def shutdown_loop(timeout: float = 5.0) -> None:
    """Stop and close the shared loop (a later use starts a new one)."""
    global _loop, _thread
    with _lock:
        loop, thread = _loop, _thread
        _loop = _thread = None
    if loop is None or loop.is_closed():
        return

    async def cancel_all() -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await loop.shutdown_asyncgens()
        await loop.shutdown_default_executor()

    if thread is not None and thread.is_alive():
        with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
            asyncio.run_coroutine_threadsafe(cancel_all(), loop).result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
    if not loop.is_running():
        loop.close()


atexit.register(shutdown_loop)
