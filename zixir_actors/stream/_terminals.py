"""Terminal loops: drive a run's demand and hand its chunks to the caller, sync or async.

The terminal asks the last stage for a window of items and asks again each
time the caller has finished half of it, so the caller's own pace is the
pipeline's pace. The collecting terminals (`to_list`, `run_async`) let the
last stage append to the result itself, so only the end of the run crosses
threads. Closing the loop (return, exception, `break`, garbage
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

__all__ = ["achunks", "acollect", "aiterate_items", "collect", "deadline_of", "drain",
           "iterate_items"]

T = TypeVar("T")


def deadline_of(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if not timeout >= 0:
        raise ConfigError("timeout", timeout, "must be non-negative seconds or None")
    return time.monotonic() + timeout


def _parts(items: list[T], size: int) -> Iterator[list[T]]:
    # Hand a chunk over in half-window parts, so demand goes back upstream
    # while the consumer is still on the rest and the pipeline refills meanwhile.
    if len(items) <= size:
        yield items
        return
    for i in range(0, len(items), size):
        yield items[i:i + size]


def chunks(stream: Stream[T], timeout: float | None) -> Generator[list[T], None, None]:
    """Run `stream`, yielding its chunks; demand is returned once a chunk is consumed."""
    deadline = deadline_of(timeout)
    run = Run(stream)
    try:
        while True:
            message = run.next_message(deadline, timeout)
            if is_chunk(message):
                for part in _parts(message.items, run.refill):
                    yield part
                    run.consumed_items(len(part))
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


def collect(stream: Stream[T], timeout: float | None) -> list[T]:
    """Every item, appended by the last stage itself (see `Sink`): no handoff per chunk."""
    deadline = deadline_of(timeout)
    out: list[T] = []
    run = Run(stream, collect=out.extend)
    try:
        error = outcome(run.next_message(deadline, timeout))
    finally:
        run.close()
    if error is not None:
        raise error
    return out


async def acollect(stream: Stream[T], timeout: float | None) -> list[T]:
    """`collect` for asyncio: the caller's loop only hears the end of the run."""
    deadline = deadline_of(timeout)
    out: list[T] = []
    loop = asyncio.get_running_loop()
    run = Run(stream, loop=loop, collect=out.extend)
    try:
        error = outcome(await run.next_message_async(deadline, timeout))
    finally:
        await loop.run_in_executor(None, run.close)
    if error is not None:
        raise error
    return out


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
                for part in _parts(message.items, run.refill):
                    yield part
                    run.consumed_items(len(part))
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
