"""Stages beyond plain fusion: overflow buffers, concurrent map with workers, junctions.

Each is an asynchronous boundary of its own, with the same chunk and demand
protocol as `Segment` (see `_stages`).
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import pykka

from supervisors import SupervisedActor
from zixir_actors.errors import BufferOverflowError
from zixir_actors.stream._runtime import Cancel, Chunk, Complete, Control, Demand, Wire
from zixir_actors.stream._stages import Stage

__all__ = ["BufferStage", "ConcurrentMap", "Junction", "Worker"]


class BufferStage(Stage):
    """`buffer(n, overflow=...)` for a policy other than backpressure: never slows upstream."""

    def __init__(self, *, control: Control, name: str, bound: int, chunk: int,
                 overflow: str) -> None:
        super().__init__(control=control, name=name, bound=bound, chunk=chunk)
        self.overflow = overflow
        self.buf: deque[Any] = deque(maxlen=bound) if overflow == "drop_head" else deque()
        self.requested = 0
        self.up_done = False
        self.dropped = 0

    def wired(self, message: Wire) -> None:
        self.handle(None)

    def handle(self, message: Any) -> None:
        if type(message) is Chunk:
            self.requested -= len(message.items)
            self.received(len(message.items))
            self.admit(message.items)
        elif type(message) is Complete:
            self.up_done = True
        if self.finished:
            return
        buf = self.buf
        n = min(self.demand, len(buf))
        if n:
            self.out = [buf.popleft() for _ in range(n)]
            self.send()
        if not self.up_done and self.requested < self.refill:
            self.requested += self.chunk
            self.upstreams[0].tell(Demand(self.chunk))
        if self.up_done and not buf:
            self.complete()

    def admit(self, items: list[Any]) -> None:
        buf, cap, policy = self.buf, self.bound, self.overflow
        if policy == "drop_head":
            self.dropped += max(0, len(buf) + len(items) - cap)
            buf.extend(items)
        elif policy == "drop_new":
            room = max(0, cap - len(buf))
            buf.extend(items[:room])
            self.dropped += len(items) - min(room, len(items))
        elif policy == "drop_tail":
            for item in items:
                if len(buf) >= cap:
                    buf.pop()
                    self.dropped += 1
                buf.append(item)
        elif len(buf) + len(items) > cap:
            raise BufferOverflowError(self.name, cap)
        else:
            buf.extend(items)


_SKIPPED = object()


FAST_CALL = 0.0002
"""Seconds per call below which a concurrent map hands each worker several items per
message: for cheap functions the messages, not the calls, would be the cost."""

MAX_CALLS_PER_MESSAGE = 32
"""The most items one message gives a worker (cheap functions only)."""


class Worker(SupervisedActor):
    """Runs calls of a concurrent map for its coordinator, one message at a time."""

    use_daemon_thread = True

    def __init__(self, *, control: Control, fn: Callable[[Any], Any], tries: int,
                 index: int) -> None:
        super().__init__()
        self.control = control
        self.fn = fn
        self.tries = tries
        self.index = index
        self.coordinator: Any = None

    def on_receive(self, message: Any) -> Any:
        if type(message) is Wire:
            self.coordinator = message.downstream
            return None
        if self.control.stopping.is_set():
            return None
        began = time.perf_counter()
        results = [self.call(seq, item) for seq, item in message]
        done = (self.index, results, (time.perf_counter() - began) / len(results))
        with contextlib.suppress(pykka.ActorDeadError):  # the run is closing
            self.coordinator.tell(done)
        return None

    def call(self, seq: int, item: Any) -> tuple[int, bool, Any]:
        error: BaseException | None = None
        for _ in range(self.tries):
            try:
                return seq, True, self.fn(item)
            except Exception as exc:
                error = exc
        return seq, False, error


class ConcurrentMap(Stage):
    """`map(fn, concurrency=N)`: up to N calls at once in N worker actors.

    It holds at most the larger of N, a `buffer(n)` written right before it,
    and the demand of its downstream.

    Each idle worker gets one item per message while calls are slow (the
    I/O-bound case this is for, where an idle worker must never wait behind
    a busy one), and up to `MAX_CALLS_PER_MESSAGE` when the running mean
    call time is below `FAST_CALL`.
    """

    def __init__(self, *, control: Control, name: str, bound: int, chunk: int, ordered: bool,
                 on_error: str, prefetch: int = 0) -> None:
        super().__init__(control=control, name=name, bound=max(bound, 1), chunk=chunk)
        self.prefetch = prefetch
        self.ordered = ordered
        self.on_error = on_error
        self.workers: list[Any] = []
        self.idle: list[int] = []
        self.todo: deque[Any] = deque()
        self.seq = 0
        self.next_out = 0
        self.results: dict[int, Any] = {}
        self.inflight = 0
        self.requested = 0
        self.up_done = False
        self.call_time: float | None = None

    def wired(self, message: Wire) -> None:
        self.workers = list(message.workers)
        self.idle = list(range(len(self.workers)))[::-1]
        self.handle(None)

    def handle(self, message: Any) -> None:
        if type(message) is Chunk:
            self.requested -= len(message.items)
            self.received(len(message.items))
            self.todo.extend(message.items)
        elif type(message) is Complete:
            self.up_done = True
        elif type(message) is tuple:
            index, results, per_call = message
            self.idle.append(index)
            self.inflight -= len(results)
            mean = self.call_time
            self.call_time = per_call if mean is None else 0.8 * mean + 0.2 * per_call
            for seq, ok, value in results:
                self.collect(seq, ok, value)
        self.dispatch()
        self.send()
        # Hold (queued, in calls, waiting for order, ready or requested) at most
        # what downstream asked for, or enough to keep every worker busy, or
        # the `buffer(n)` written right before this map.
        held = len(self.todo) + self.inflight + len(self.results) + len(self.out) + self.requested
        credit = max(self.prefetch, len(self.workers), self.demand) - held
        if not self.up_done and credit > 0 and (
                held == 0 or credit >= max(1, min(self.refill, len(self.workers)))):
            self.requested += credit
            self.upstreams[0].tell(Demand(credit))
        if self.up_done and not self.todo and not self.inflight and not self.out:
            self.complete()

    def collect(self, seq: int, ok: bool, value: Any) -> None:
        if not ok:
            if self.on_error != "skip":
                raise value
            value = _SKIPPED
        if self.ordered:
            self.results[seq] = value
            while self.next_out in self.results:
                result = self.results.pop(self.next_out)
                self.next_out += 1
                if result is not _SKIPPED:
                    self.out.append(result)
        elif value is not _SKIPPED:
            self.out.append(value)

    def dispatch(self) -> None:
        todo, idle = self.todo, self.idle
        fast = self.call_time is not None and self.call_time < FAST_CALL
        while idle and todo:
            n = 1
            if fast:
                n = max(1, min(MAX_CALLS_PER_MESSAGE, len(todo) // len(self.workers)))
            batch = [(self.seq + i, todo.popleft()) for i in range(n)]
            self.seq += n
            self.inflight += n
            self.workers[idle.pop()].tell(batch)


class Junction(Stage):
    """`merge` (interleave as items arrive), `chain` (one after another) or `zip` (tuples)."""

    def __init__(self, *, control: Control, name: str, bound: int, chunk: int,
                 mode: str) -> None:
        super().__init__(control=control, name=name, bound=bound, chunk=chunk)
        self.mode = mode
        self.queues: list[deque[Any]] = []
        self.requested: list[int] = []
        self.done: list[bool] = []
        self.current = 0

    def wired(self, message: Wire) -> None:
        n = len(self.upstreams)
        self.queues = [deque() for _ in range(n)]
        self.requested = [0] * n
        self.done = [False] * n
        self.handle(None)

    def handle(self, message: Any) -> None:
        if type(message) is Chunk:
            items = message.items
            self.requested[message.port] -= len(items)
            self.received(len(items))
            if self.mode == "zip":
                self.queues[message.port].extend(items)
            else:
                self.out.extend(items)
        elif type(message) is Complete:
            self.done[message.port] = True
        if self.mode == "zip":
            self.zip_ready()
        self.send()
        if self.finished:
            return
        if self.mode == "chain":
            while self.current < len(self.done) and self.done[self.current]:
                self.current += 1
            live = [self.current] if self.current < len(self.done) else []
        else:
            live = [i for i, d in enumerate(self.done) if not d]
        for i in live:
            held = len(self.queues[i]) + self.requested[i] + (len(self.out) if self.mode != "zip"
                                                              else 0)
            credit = self.bound - held
            if credit >= self.refill:
                self.requested[i] += credit
                self.upstreams[i].tell(Demand(credit))
        if not live and not self.out:
            self.complete()

    def zip_ready(self) -> None:
        queues = self.queues
        n = min(len(q) for q in queues)
        if n:
            columns = [[q.popleft() for _ in range(n)] for q in queues]
            self.out.extend(zip(*columns, strict=True))
        if any(d and not q for d, q in zip(self.done, queues, strict=True)):
            # One side ended: no tuple can be completed any more.
            self.done = [True] * len(queues)
            self.tell_upstreams(Cancel())
