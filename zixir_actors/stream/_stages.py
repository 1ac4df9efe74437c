"""Stage actors: the protocol every stage speaks, and fused segments.

Every stage is a `supervisors.SupervisedActor` that exchanges `Chunk`s with
its neighbours. A stage sends at most what its downstream asked for
(`Demand(n)`) and asks upstream for only the input items that demand needs,
converted by its operators (k per list after `batch(k)`); only a `buffer(n)`
(and a concurrent map's calls) hold items ahead of demand, so the items in
flight between a source and the terminal never exceed `Stream.bound()`.
"""

from __future__ import annotations

import abc
import contextlib
import time
from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import Any

import pykka

from supervisors import SupervisedActor
from zixir_actors.observability import start_span
from zixir_actors.stream._ops import Op, OpFailed, flush_chain, fuse, need_of, run_chain
from zixir_actors.stream._runtime import (
    PULL,
    TICK,
    Cancel,
    Chunk,
    Complete,
    Control,
    Demand,
    Pump,
    Sink,
    Wire,
)

__all__ = ["IterSource", "Segment", "Stage"]


METRICS_EVERY = 64
"""Chunks a stage may take within one message before it updates its metrics."""


class _Metrics:
    """Per-stage metric children, bound once; updated per message, never per item."""

    __slots__ = ("depth", "items_in", "items_out", "waited")

    def __init__(self, stage: str) -> None:
        from zixir_actors.observability import metrics

        label = (stage,)
        self.items_in = metrics.counter("zixir_stream_items_in_total",
                                        "Items received by a stream stage.",
                                        labels=("stage",)).labels(*label)
        self.items_out = metrics.counter("zixir_stream_items_out_total",
                                         "Items sent downstream by a stream stage.",
                                         labels=("stage",)).labels(*label)
        self.depth = metrics.gauge("zixir_stream_mailbox_depth",
                                   "Messages waiting in a stream stage's mailbox.",
                                   labels=("stage",)).labels(*label)
        self.waited = metrics.counter("zixir_stream_demand_wait_seconds_total",
                                      "Time a stream stage held output while downstream had "
                                      "no demand.", labels=("stage",)).labels(*label)


def _stage_metrics(stage: str) -> _Metrics | None:
    try:
        return _Metrics(stage)
    except Exception:
        return None


class IterSource:
    """A non-blocking iterable pulled inline by its stage, a chunk at a time.

    A range, list or tuple is cut into slices (a range slice makes no item
    until an operator reads it); anything else is pulled with `islice`.
    """

    def __init__(self, iterable: Any, stage: str) -> None:
        self.iterable = iterable
        self.stage = stage
        self.it: Any = None
        self.sliced = type(iterable) in (range, list, tuple)
        self.pos = 0

    def start(self, ring: Callable[[], None]) -> None:
        if not self.sliced:
            self.it = iter(self.iterable)

    def take(self, n: int) -> tuple[Any, bool]:
        if self.sliced:
            seq, pos = self.iterable, self.pos
            items = seq[pos:pos + n]
            self.pos = pos = pos + len(items)
            return items, pos >= len(seq)
        items = list(islice(self.it, n))
        return items, len(items) < n

    def stop(self) -> None:
        close = getattr(self.it, "close", None)
        if close is not None:
            close()


class Stage(SupervisedActor):
    """Wiring, demand toward downstream, sending, failure reporting."""

    use_daemon_thread = True  # an unfinished run never keeps the interpreter from exiting

    def __init__(self, *, control: Control, name: str, bound: int, chunk: int) -> None:
        super().__init__()
        self.control = control
        self.name = name
        self.bound = bound
        self.chunk = chunk
        self.refill = max(1, min(chunk, bound // 2))
        self.upstreams: tuple[Any, ...] = ()
        self.downstream: Any = None
        self.deliver: Callable[[list[Any]], object] | None = None  # the sink's `collect`
        self.port = 0
        self.demand = 0
        self.out: list[Any] = []
        self.finished = False
        self.metrics: _Metrics | None = None
        self._blocked_since: float | None = None
        self.items_in = 0
        self.items_out = 0
        self._counted_in = 0   # what the metrics already show: they catch up per
        self._counted_out = 0  # message (or every METRICS_EVERY chunks), not per chunk
        self._chunks = 0
        self.span: Any = None

    def on_start(self) -> None:
        self.metrics = _stage_metrics(self.name)
        with contextlib.suppress(Exception):  # tracing never stops a pipeline
            self.span = start_span("zixir.stream.stage", parent=self.control.span,
                                   stage=self.name, run=self.control.name)

    def on_stop(self) -> None:
        self.count()
        span = self.span
        if span is not None:
            span.set_attributes(items_in=self.items_in, items_out=self.items_out)
            failed = self.control.failed_stage
            mine = failed is not None and (failed == self.name or failed in self.name.split("+"))
            span.end(error=self.control.failure if mine else None)

    def _zx_on_kill(self) -> None:
        # Killed: `on_stop` never runs, so the stage's span ends here (it would
        # stay among the process's open spans for good).
        span = self.span
        if span is not None:
            with contextlib.suppress(Exception):  # tracing never stops a pipeline
                span.set_attributes(items_in=self.items_in, items_out=self.items_out,
                                    reason="killed")
                span.end(status="error")

    def on_receive(self, message: Any) -> Any:
        if self.control.stopping.is_set():
            return None
        try:
            if type(message) is Wire:
                self.upstreams = message.upstreams
                self.downstream = message.downstream
                if type(message.downstream) is Sink:
                    self.deliver = message.downstream.collect
                self.port = message.port
                self.wired(message)
            else:
                if type(message) is Demand:
                    self.demand += message.n
                elif type(message) is Cancel:
                    self.cancel()
                    return None
                self.handle(message)
        except OpFailed as failed:
            self.fail(failed.error, failed.op.name)
        except Exception as exc:
            self.fail(exc, self.name)
        self.count()
        return None

    def count(self) -> None:
        """Bring the stage's metrics up to date."""
        m = self.metrics
        self._chunks = 0
        if m is None:
            return
        if self.items_in != self._counted_in:
            m.items_in.inc(self.items_in - self._counted_in)
            self._counted_in = self.items_in
            m.depth.set(self.actor_inbox.qsize())  # type: ignore[attr-defined]
        if self.items_out != self._counted_out:
            m.items_out.inc(self.items_out - self._counted_out)
            self._counted_out = self.items_out

    def wired(self, message: Wire) -> None:
        pass

    @abc.abstractmethod
    def handle(self, message: Any) -> None:
        """Handle a message that is not part of the shared stage protocol."""

    def cancel(self) -> None:
        self.finished = True
        self.tell_upstreams(Cancel())

    def fail(self, error: BaseException, stage: str) -> None:
        self.finished = True
        self.control.fail(error, stage)
        self.tell_upstreams(Cancel())

    def tell_upstreams(self, message: Any) -> None:
        for up in self.upstreams:
            with contextlib.suppress(pykka.ActorDeadError):
                up.tell(message)

    def send(self) -> None:
        """Send ready output up to the downstream demand, in chunks of at most `chunk`."""
        out = self.out
        if not out:
            return
        n = min(self.demand, len(out))
        m = self.metrics
        if n == 0:
            if m is not None and self._blocked_since is None:
                self._blocked_since = time.perf_counter()
            return
        if n == len(out):
            items, self.out = out, []
        else:
            items = out[:n]
            del out[:n]
        self.demand -= n
        self.items_out += n
        if self._blocked_since is not None and m is not None:
            m.waited.inc(time.perf_counter() - self._blocked_since)
            self._blocked_since = None
        deliver = self.deliver
        if deliver is not None:
            deliver(items)  # the terminal's consumer took them: its demand is back at once
            self.demand += n
            return
        chunk, port, downstream = self.chunk, self.port, self.downstream
        try:
            if n <= chunk:
                downstream.tell(Chunk(port, items))
            else:  # never more than a chunk per message
                for i in range(0, n, chunk):
                    downstream.tell(Chunk(port, items[i:i + chunk]))
        except pykka.ActorDeadError:
            self.finished = True

    def complete(self) -> None:
        self.finished = True
        with contextlib.suppress(pykka.ActorDeadError):
            self.downstream.tell(Complete(self.port))

    def received(self, n: int) -> None:
        self.items_in += n
        self._chunks += 1
        if self._chunks >= METRICS_EVERY:  # a long drive (an inline source) stays visible
            self.count()


class Segment(Stage):
    """Fused operators in one actor, fed by an upstream stage or by a source inline.

    Demand drives everything: the segment converts what downstream asked for
    into input items (`need_of`: k per `batch(k)` list) and takes, processes
    and asks upstream for only that many. A segment that starts at
    `buffer(n)` (`prefetch=n`) also keeps up to n input items ready ahead of
    demand; any other segment holds nothing beyond it.
    """

    def __init__(self, *, control: Control, name: str, bound: int, chunk: int, ops: list[Op],
                 source: IterSource | Pump | None = None, prefetch: int = 0) -> None:
        super().__init__(control=control, name=name, bound=bound, chunk=chunk)
        self.ops = fuse(ops)
        self.source = source
        self.prefetch = prefetch
        self.inbox: deque[list[Any]] = deque()
        self.in_count = 0
        self.requested = 0
        self.up_done = False
        self.cut: int | None = None       # index of an op that wants no more input
        self.flush_from: int | None = None
        self.flushed = False
        self.tick_at: float | None = None
        self.timed = [i for i, op in enumerate(self.ops) if op.timed]

    def wired(self, message: Wire) -> None:
        if self.source is not None:
            ref = self.actor_ref
            self.source.start(lambda: ref.tell(PULL))
        self.handle(None)

    def on_stop(self) -> None:
        if self.source is not None:
            self.source.stop()
        super().on_stop()

    def cancel(self) -> None:
        super().cancel()
        if self.source is not None:
            self.source.stop()

    def handle(self, message: Any) -> None:
        if type(message) is Chunk:
            items = message.items
            self.requested -= len(items)
            self.received(len(items))
            if self.cut is None:
                self.inbox.append(items)
                self.in_count += len(items)
        elif type(message) is Complete:
            self.up_done = True
        elif message is TICK:
            self.tick_at = None
            self.on_tick()
        if not self.finished:
            self.drive()

    def drive(self) -> None:
        ops, chunk, out = self.ops, self.chunk, self.out
        idle = self.actor_inbox.empty
        self.check_cut()  # `take(0)` wants nothing from the start
        while True:
            self.send()
            out = self.out
            if self.finished or self.cut is not None:
                break
            want = self.demand - len(out)
            need = need_of(ops, want) if want > 0 else 0
            if need <= 0:
                break
            if self.inbox:
                out.extend(run_chain(ops, self.take_inbox(min(need, chunk))))
                self.check_cut()
                continue
            source = self.source
            if source is None or self.up_done or self.control.stopping.is_set():
                break
            if type(source) is IterSource:
                # Exactly what the demand needs (never ahead of it), in one C call.
                try:
                    items, exhausted = source.take(min(chunk, need))
                except Exception as exc:
                    self.fail(exc, source.stage)
                    return
                if items:
                    self.received(len(items))
                    out.extend(run_chain(ops, items))
                    self.check_cut()
                if exhausted:
                    self.up_done = True
                elif not idle():
                    break  # a message is waiting (Cancel, Demand, TICK): it drives on
                continue
            assert type(source) is Pump
            n = min(chunk, need)
            if not source.prefetch:
                source.ask(need)
            items, exhausted = source.take(n)
            if items:
                self.received(len(items))
                out.extend(run_chain(ops, items))
                self.check_cut()
            if exhausted:
                self.up_done = True
            elif len(items) < n:
                break  # the pump rings when it has more
        self.send()
        self.request()
        self.end_of_input()
        self.schedule()

    def take_inbox(self, n: int) -> list[Any]:
        inbox = self.inbox
        items = inbox[0]
        if len(items) <= n:
            inbox.popleft()
        else:
            inbox[0] = items[n:]
            items = items[:n]
        self.in_count -= len(items)
        return items

    def check_cut(self) -> None:
        if self.cut is not None:
            return
        for i, op in enumerate(self.ops):
            if op.done:
                self.cut = i
                self.inbox.clear()
                self.in_count = 0
                self.up_done = True
                self.tell_upstreams(Cancel())
                if self.source is not None:
                    self.source.stop()
                return

    def request(self) -> None:
        """Ask upstream for what the demand needs, and with `prefetch`, for up to that many."""
        if self.up_done or not self.upstreams:
            return
        held = self.in_count + self.requested
        want = self.demand - len(self.out)
        need = need_of(self.ops, want) if want > 0 else 0
        target = max(self.prefetch, need)
        credit = target - held
        # Top up once half used (or when nothing is on its way): chunks, not dribbles.
        if credit > 0 and (held == 0 or credit >= max(1, min(self.chunk, target // 2))):
            self.requested += credit
            self.upstreams[0].tell(Demand(credit))

    def end_of_input(self) -> None:
        if self.finished or not self.up_done or self.inbox:
            return
        if not self.flushed:
            start = self.cut + 1 if self.cut is not None else 0
            if self.flush_from is not None:
                if self.ops[self.flush_from].pending:
                    return
                start = self.flush_from + 1
            items, self.flush_from = flush_chain(self.ops, start)
            self.out.extend(items)
            self.flushed = self.flush_from is None
            self.send()
        if self.flushed and not self.out:
            self.complete()

    def on_tick(self) -> None:
        now = self.control.clock.monotonic()
        ops = self.ops
        for i in self.timed:
            items = ops[i].tick(now)
            if items:
                self.out.extend(run_chain(ops, items, i + 1))
        self.check_cut()

    def schedule(self) -> None:
        if not self.timed or self.finished:
            return
        due = [d for d in (self.ops[i].deadline() for i in self.timed) if d is not None]
        if not due:
            return
        when = min(due)
        if self.tick_at is None or when < self.tick_at:
            self.tick_at = when
            ref = self.actor_ref
            self.control.scheduler().call_at(when, lambda: ref.tell(TICK))
