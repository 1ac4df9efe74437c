"""The non-actor parts of a running pipeline: control block, sink, timer thread, pumps.

`Control` is shared by every stage of one run: the stop flag (checked by
stages before they pull), the first failure, the terminal's `Sink`, and the
`Scheduler` thread that delivers timer ticks (batch timeouts, throttling).
`Pump` drives a source that may block (a generator, a queue, an async
iterator) in its own thread, filling a bounded buffer that its stage drains.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import heapq
import itertools
import queue
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pykka

from zixir_actors._clock import Clock, SystemClock

__all__ = [
    "PULL",
    "TICK",
    "Cancel",
    "Chunk",
    "Complete",
    "Control",
    "Demand",
    "Failed",
    "Pump",
    "Scheduler",
    "Sink",
    "Wire",
    "annotate",
]

# -- messages between stages (one per chunk, never per item) -------------------


@dataclass(frozen=True, slots=True)
class Chunk:
    """Items sent downstream; never more than the receiver demanded."""

    port: int
    items: list[Any]


@dataclass(frozen=True, slots=True)
class Demand:
    """The receiver can take `n` more items (Reactive Streams' `request(n)`)."""

    n: int


@dataclass(frozen=True, slots=True)
class Complete:
    """The sender will send nothing more on `port`."""

    port: int


@dataclass(frozen=True, slots=True)
class Failed:
    """A stage failed; only the terminal receives this."""

    error: BaseException
    stage: str


@dataclass(frozen=True, slots=True)
class Cancel:
    """The receiver's downstream wants no more items."""


@dataclass(frozen=True, slots=True)
class Wire:
    """Connects a started stage to its neighbours."""

    upstreams: tuple[Any, ...]
    downstream: Any
    port: int
    workers: tuple[Any, ...] = ()


class _Signal:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


PULL = _Signal("PULL")
"""A stage tells itself to pull its source again (keeps it responsive between chunks)."""
TICK = _Signal("TICK")
"""A timer fired for the stage's timed operators."""


def annotate(error: BaseException, stage: str) -> BaseException:
    """Record the failing stage on the original exception (attribute and note)."""
    with contextlib.suppress(AttributeError):
        error.stage = stage  # type: ignore[attr-defined]
    note = f"in stream stage {stage!r}"
    if hasattr(error, "add_note") and note not in getattr(error, "__notes__", ()):
        error.add_note(note)
    return error


class Sink:
    """The terminal's inbox: a thread queue, or an asyncio queue on a running loop.

    A terminal that only collects (`to_list`, `run_async`) gives `collect`:
    the last stage then appends each chunk itself and its demand is
    replenished at once, so no chunk waits for the caller's thread; only the
    end of the run (`Complete` or `Failed`) goes through the queue.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None,
                 collect: Callable[[list[Any]], object] | None = None) -> None:
        self.loop = loop
        self.collect = collect
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.aqueue: asyncio.Queue[Any] | None = asyncio.Queue() if loop is not None else None

    def tell(self, message: Any) -> None:
        if self.aqueue is None:
            self.queue.put(message)
            return
        with contextlib.suppress(RuntimeError):
            # A closed loop means nobody is listening any more.
            self.loop.call_soon_threadsafe(self.aqueue.put_nowait, message)  # type: ignore[union-attr]

    def is_alive(self) -> bool:
        return True


class Scheduler:
    """One timer thread per pipeline run, started on first use.

    With the system clock it waits on a condition; with any other clock (a
    `FakeClock`) it calls `clock.sleep`, so timed operators run instantly
    and deterministically in tests.
    """

    def __init__(self, clock: Clock, name: str) -> None:
        self.clock = clock
        self.name = name
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def call_at(self, when: float, fn: Callable[[], None]) -> None:
        with self._cond:
            if self._stopped:
                return
            heapq.heappush(self._heap, (when, next(self._seq), fn))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        real = isinstance(self.clock, SystemClock)
        cond = self._cond
        with cond:
            while not self._stopped:
                if not self._heap:
                    cond.wait()
                    continue
                delay = self._heap[0][0] - self.clock.monotonic()
                if delay > 0:
                    if real:
                        cond.wait(delay)
                    else:
                        cond.release()
                        try:
                            self.clock.sleep(delay)
                        finally:
                            cond.acquire()
                    continue
                fn = heapq.heappop(self._heap)[2]
                cond.release()
                try:
                    with contextlib.suppress(pykka.ActorDeadError):
                        fn()
                finally:
                    cond.acquire()

    def stop(self, *, timeout: float | None) -> None:
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)


class Control:
    """What every stage of one run shares: stop flag, first failure, sink, timers, pumps."""

    def __init__(self, name: str, sink: Sink, clock: Clock) -> None:
        self.name = name
        self.sink = sink
        self.clock = clock
        self.stopping = threading.Event()
        self.failure: BaseException | None = None
        self._lock = threading.Lock()
        self._scheduler: Scheduler | None = None
        self.pumps: list[Pump] = []
        self.failed_stage: str | None = None
        self.span: Any = None  # the run's span, parent of each stage's span

    def fail(self, error: BaseException, stage: str) -> None:
        """Fail the run: annotate `error` with `stage`, stop all pulling, tell the terminal.

        Ignored once the run is closing (an early close is not a failure).
        """
        with self._lock:
            if self.stopping.is_set() and self.failure is None:
                return
            first = self.failure is None
            if first:
                self.failure = annotate(error, stage)
                self.failed_stage = stage
        self.stopping.set()
        for pump in list(self.pumps):
            pump.stop()
        if first:
            self.sink.tell(Failed(error, stage))

    def scheduler(self) -> Scheduler:
        with self._lock:
            if self._scheduler is None:
                self._scheduler = Scheduler(self.clock, f"zixir-stream-timer-{self.name}")
            return self._scheduler

    def close(self, *, timeout: float | None) -> None:
        """Stop the timer thread and the pumps (a pump blocked in user code ends later)."""
        self.stopping.set()
        with self._lock:
            scheduler = self._scheduler
        if scheduler is not None:
            scheduler.stop(timeout=timeout)
        for pump in self.pumps:
            pump.stop()
        for pump in self.pumps:
            # A pump waiting for room or polling a queue ends at once; one blocked
            # inside the user's `next()` ends when that returns: do not wait for it.
            pump.join(timeout=_PUMP_JOIN if timeout is None else min(timeout, _PUMP_JOIN))


_QUEUE_POLL = 0.05
"""How often a queue (or async) source waiting for an item checks whether the run stopped."""

_PUMP_JOIN = 0.5
"""How long closing a run waits for each pump thread to end."""

_ACLOSE_WAIT = 1.0
"""How long an early-closed async iterator on the caller's loop gets to run its `aclose`."""


class Pump:
    """Pulls a blocking source in its own thread into a buffer its stage drains.

    With `prefetch` (the source's own ``buffer=n``) the pump keeps up to
    `bound` items ready whatever the demand; without, it pulls only the items
    its stage has asked for (`ask`), so it is never ahead of the demand. The
    buffer is shared with the stage under a condition, and the pump rings the
    stage (one message) when the first item lands in a buffer the stage has
    drained, so a slow source never holds items back and a fast one costs one
    message per chunk.
    """

    def __init__(self, kind: str, source: Any, *, bound: int, control: Control, stage: str,
                 sentinel: Any = None, loop: asyncio.AbstractEventLoop | None = None,
                 prefetch: bool = True) -> None:
        self.kind = kind
        self.source = source
        self.bound = bound
        self.prefetch = prefetch
        self.credit = 0
        self._pulling = 0
        self.control = control
        self.stage = stage
        self.sentinel = sentinel
        self.loop = loop
        self.pulled = 0
        self._cond = threading.Condition()
        self._buf: deque[Any] = deque()
        self._stop = False
        self._exhausted = False
        self._rung = False
        self._ring: Callable[[], None] = lambda: None
        self._thread: threading.Thread | None = None
        self._cancel: Callable[[], object] | None = None
        self._own_loop: asyncio.AbstractEventLoop | None = None

    def start(self, ring: Callable[[], None]) -> None:
        self._ring = ring
        self._thread = threading.Thread(target=self._run, name=f"zixir-stream-pump-{self.stage}",
                                        daemon=True)
        self._thread.start()

    def ask(self, n: int) -> None:
        """The stage needs `n` items from now on: pull what is not buffered or on its way."""
        with self._cond:
            short = n - len(self._buf) - self._pulling
            if short > self.credit:
                self.credit = short
                self._cond.notify()

    def take(self, n: int) -> tuple[list[Any], bool]:
        """Up to `n` buffered items, and whether the source is exhausted and drained."""
        with self._cond:
            buf = self._buf
            if len(buf) <= n:
                items = list(buf)
                buf.clear()
            else:
                items = [buf.popleft() for _ in range(n)]
            self._rung = False
            self._cond.notify()
            return items, self._exhausted and not buf

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
            cancel = self._cancel
        if cancel is not None and self._own_loop is not None:
            with contextlib.suppress(RuntimeError):  # the private loop already closed
                self._own_loop.call_soon_threadsafe(cancel)

    def join(self, *, timeout: float | None) -> None:
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _put(self, item: Any) -> None:
        with self._cond:
            self._buf.append(item)
            self._pulling = 0
            self.pulled += 1
            ring = not self._rung
            self._rung = True
        if ring:
            with contextlib.suppress(pykka.ActorDeadError):
                self._ring()

    def _room(self) -> bool:
        with self._cond:
            if self.prefetch:
                while len(self._buf) >= self.bound and not self._stop:
                    self._cond.wait()
            else:
                while self.credit <= 0 and not self._stop:
                    self._cond.wait()
                self.credit -= 1
            self._pulling = 1
            return not self._stop

    def _unreserve(self) -> None:
        # `_room` reserved an item that did not come (a queue poll timed out).
        with self._cond:
            self._pulling = 0
            if not self.prefetch:
                self.credit += 1

    def _run(self) -> None:
        try:
            for item in self._items():
                self._put(item)
        except BaseException as exc:
            if not self._stop:  # a stopped source's cancellation is no failure
                self.control.fail(exc, self.stage)
        finally:
            with self._cond:
                self._exhausted = True
                ring = not self._rung
                self._rung = True
            if ring:
                with contextlib.suppress(pykka.ActorDeadError):
                    self._ring()

    def _items(self) -> Iterator[Any]:
        if self.kind == "iterator":
            it = self.source
            try:
                while self._room():
                    try:
                        item = next(it)
                    except StopIteration:
                        return
                    yield item
            finally:
                close = getattr(it, "close", None)
                if close is not None and self._stop:
                    close()
        elif self.kind == "queue":
            q, sentinel = self.source, self.sentinel
            while self._room():
                try:
                    item = q.get(timeout=_QUEUE_POLL)
                except queue.Empty:
                    self._unreserve()
                    continue
                if item is sentinel:
                    return
                yield item
        else:
            yield from self._async_items(self.source)

    def _async_items(self, ait: AsyncIterator[Any]) -> Iterator[Any]:
        own = self.loop is None or self.loop.is_closed()
        loop: asyncio.AbstractEventLoop = asyncio.new_event_loop() if own else self.loop  # type: ignore[assignment]
        if own:
            self._own_loop = loop

        def run(coro: Any, *, interruptible: bool = True) -> Any:
            # Wait for one step of the async iterator; on stop, cancel it, so an
            # early close never leaves this thread waiting for an item.
            if own:
                task = loop.create_task(coro)
                with self._cond:
                    self._cancel = task.cancel
                try:
                    return loop.run_until_complete(task)
                finally:
                    with self._cond:
                        self._cancel = None
            future = asyncio.run_coroutine_threadsafe(coro, loop)
            waited = 0.0
            while True:
                try:
                    return future.result(timeout=_QUEUE_POLL)
                except concurrent.futures.TimeoutError:
                    waited += _QUEUE_POLL
                    if self._stop if interruptible else waited > _ACLOSE_WAIT:
                        future.cancel()
                        raise asyncio.CancelledError from None

        try:
            while self._room():
                try:
                    item = run(ait.__anext__())
                except StopAsyncIteration:
                    return
                yield item
        finally:
            aclose = getattr(ait, "aclose", None)
            try:
                if aclose is not None and self._stop:
                    with contextlib.suppress(Exception, asyncio.CancelledError):
                        run(aclose(), interruptible=False)
            finally:
                if own:
                    loop.close()
