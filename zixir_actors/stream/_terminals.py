"""Terminal loops: drive a run's demand and hand its chunks to the caller, sync or async.

The terminal asks the last stage for a window of items and asks again each
time the caller has finished half of it, so the caller's own pace is the
pipeline's pace. Closing the loop (return, exception, `break`, garbage
collection of the generator) closes the run: every stage stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from zixir_actors.errors import ConfigError
from zixir_actors.stream._pipeline import Run, is_chunk, outcome

if TYPE_CHECKING:
    from zixir_actors.stream._stream import Stream

__all__ = ["achunks", "aiterate_items", "deadline_of", "drain", "iterate_items"]

T = TypeVar("T")


def deadline_of(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if not timeout >= 0:
        raise ConfigError("timeout", timeout, "must be non-negative seconds or None")
    return time.monotonic() + timeout


def chunks(stream: Stream[T], timeout: float | None) -> Generator[list[T], None, None]:
    """Run `stream`, yielding its chunks; demand is returned once a chunk is consumed."""
    deadline = deadline_of(timeout)
    run = Run(stream)
    try:
        while True:
            message = run.next_message(deadline, timeout)
            if is_chunk(message):
                yield message.items
                run.consumed_items(len(message.items))
            else:
                error = outcome(message)
                if error is not None:
                    raise error
                return
    finally:
        run.close()


def drain(stream: Stream[Any], timeout: float | None,
          on_items: Callable[[list[Any]], None]) -> None:
    with contextlib.closing(chunks(stream, timeout)) as running:
        for items in running:
            on_items(items)


def iterate_items(stream: Stream[T], timeout: float | None) -> Iterator[T]:
    with contextlib.closing(chunks(stream, timeout)) as running:
        for items in running:
            yield from items


async def achunks(stream: Stream[T], timeout: float | None) -> AsyncGenerator[list[T], None]:
    deadline = deadline_of(timeout)
    run = Run(stream, loop=asyncio.get_running_loop())
    try:
        while True:
            message = await run.next_message_async(deadline, timeout)
            if is_chunk(message):
                yield message.items
                run.consumed_items(len(message.items))
            else:
                error = outcome(message)
                if error is not None:
                    raise error
                return
    finally:
        # Off the event loop: closing joins threads that may wait on this loop.
        await asyncio.get_running_loop().run_in_executor(None, run.close)


async def aiterate_items(stream: Stream[T], timeout: float | None) -> AsyncIterator[T]:
    chunks = achunks(stream, timeout)
    try:
        async for items in chunks:
            for item in items:
                yield item
    finally:
        await chunks.aclose()
