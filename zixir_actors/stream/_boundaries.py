"""Stages beyond plain fusion: overflow buffers, concurrent map with workers, junctions.

Each is an asynchronous boundary of its own, with the same chunk and demand
protocol as `Segment` (see `_stages`).
"""

from __future__ import annotations

import contextlib
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


class Worker(SupervisedActor):
    """Runs one call of a concurrent map at a time for its coordinator."""

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
        seq, item = message
        error: BaseException | None = None
        for _ in range(self.tries):
            try:
                result = self.fn(item)
            except Exception as exc:
                error = exc
                continue
            self.reply((self.index, seq, True, result))
            return None
        self.reply((self.index, seq, False, error))
        return None

    def reply(self, message: tuple[int, int, bool, Any]) -> None:
        with contextlib.suppress(pykka.ActorDeadError):  # the run is closing
            self.coordinator.tell(message)


class ConcurrentMap(Stage):
    """`map(fn, concurrency=N)`: up to N calls at once in N worker actors."""

    def __init__(self, *, control: Control, name: str, bound: int, chunk: int, ordered: bool,
                 on_error: str) -> None:
        super().__init__(control=control, name=name, bound=max(bound, 1), chunk=chunk)
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
            index, seq, ok, value = message
            self.idle.append(index)
            self.inflight -= 1
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
        while self.idle and self.todo:
            self.workers[self.idle.pop()].tell((self.seq, self.todo.popleft()))
            self.seq += 1
            self.inflight += 1
        self.send()
        held = len(self.todo) + self.inflight + len(self.results) + len(self.out) + self.requested
        credit = self.bound - held
        if not self.up_done and credit >= max(1, min(self.refill, len(self.workers))):
            self.requested += credit
            self.upstreams[0].tell(Demand(credit))
        if self.up_done and not self.todo and not self.inflight and not self.out:
            self.complete()


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
