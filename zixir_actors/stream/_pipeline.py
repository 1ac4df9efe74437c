"""Planning and running: a `Stream` description becomes a supervised tree of stage actors.

Planning fuses consecutive operators into one `Segment` actor (Akka's operator
fusion); `async_boundary()`, `buffer(n)`, `map(concurrency=N)` and the
junctions (`merge`, `zip`, `chain`) start new actors. Running starts the
stages as `temporary` children of one `rest_for_one` supervisor, under the
runtime's `zixir.streams` dynamic supervisor when it runs and as a
top-level supervisor otherwise, then wires them and lets the terminal drive
demand. Stopping sets the run's stop flag first, so every stage turns inert
before the supervisor stops them in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pykka

from supervisors import ChildSpec, Down, Supervisor, SupervisorRef, monitor, whereis
from zixir_actors._clock import SYSTEM_CLOCK, Clock
from zixir_actors.errors import (
    StageCrashedError,
    StreamConsumedError,
    StreamTimeoutError,
    SupervisorError,
)
from zixir_actors.observability import metrics, start_span
from zixir_actors.stream._boundaries import BufferStage, ConcurrentMap, Junction, Worker
from zixir_actors.stream._runtime import (
    Chunk,
    Complete,
    Control,
    Demand,
    Failed,
    Pump,
    Sink,
    Wire,
)
from zixir_actors.stream._stages import IterSource, Segment

if TYPE_CHECKING:
    from zixir_actors.stream._stream import Stream

__all__ = [
    "DEFAULT_BUFFER", "DEFAULT_CHUNK", "STREAMS_NAME", "Run", "is_chunk", "outcome", "plan_bound",
    "stage_names",
]

STREAMS_NAME = "zixir.streams"
"""The runtime's dynamic supervisor of running pipelines."""

DEFAULT_CHUNK = 1024
"""The most items a stage takes or sends at once (per-item messages cost ~6 us, a
chunk amortises it); smaller when a bound in the pipeline is smaller."""

DEFAULT_BUFFER = 4096
"""The terminal's window, in source items, for a pipeline with no explicit bound
(no `buffer(n)`, no source ``buffer=n``): the most such a pipeline holds."""

STAGE_SHUTDOWN = 5.0
"""Seconds each stage gets to stop (a stage busy in user code finishes that call first)."""

_ids = itertools.count(1)


class _PipelineSupervisor(Supervisor):
    """A run's `rest_for_one` supervisor, on a daemon thread like its stages: an
    iterator left open at interpreter exit must not keep the process alive."""

    use_daemon_thread = True


@dataclass
class _Node:
    cls: type[pykka.ThreadingActor]
    name: str
    kwargs: dict[str, Any]
    ups: list[int] = field(default_factory=list)
    workers: list[int] = field(default_factory=list)
    down: int | None = None
    port: int = 0
    hold: int = 0  # the most source items this node holds ahead of demand


def _survey(stream: Stream[Any]) -> tuple[list[int], int]:
    """The explicit bounds of `stream` in source items, and source items per output item.

    A bound is a `buffer(n)` (n items at that point: n lists of k after
    `batch(k)` are n * k source items) or a source's ``buffer=n``.
    """
    src = stream._source
    bounds: list[int] = []
    factor = 1
    if src.kind == "junction":
        factors = []
        for sub in src.streams:
            sub_bounds, sub_factor = _survey(sub)
            bounds += sub_bounds
            factors.append(sub_factor)
        factor = max(factors)
    elif src.bound is not None:
        bounds.append(src.bound)
    for spec in stream._ops:
        if spec.kind == "buffer":
            bounds.append(spec.bound * factor)
        factor *= spec.factor
    return bounds, factor


class _Planner:
    """Builds the stage nodes of a stream.

    The sizes follow from what the user asked for: `chunk` is
    `DEFAULT_CHUNK` or the smallest explicit bound if smaller; the terminal's
    window is `DEFAULT_BUFFER` source items when no bound is given and one
    chunk otherwise, in the terminal's units (`window` lists after `batch(k)`).
    """

    def __init__(self, stream: Stream[Any], control: Control,
                 loop: asyncio.AbstractEventLoop | None, consume: bool) -> None:
        self.control = control
        self.loop = loop
        self.consume = consume
        self.nodes: list[_Node] = []
        bounds, self.factor = _survey(stream)
        self.chunk = min([DEFAULT_CHUNK, *bounds])
        items = self.chunk if bounds else DEFAULT_BUFFER
        self.window = max(1, items // self.factor)
        self.out = self.build(stream)[0]

    def add(self, node: _Node, ups: list[int]) -> int:
        index = len(self.nodes)
        node.ups = ups
        for port, up in enumerate(ups):
            self.nodes[up].down = index
            self.nodes[up].port = port
        self.nodes.append(node)
        return index

    def source(self, stream: Stream[Any], prefix: str) -> IterSource | Pump:
        src = stream._source
        if src.kind == "iterable":
            return IterSource(src.payload, prefix + src.name)
        if src.once is not None and self.consume:
            if src.once[0]:
                raise StreamConsumedError(src.name)
            src.once[0] = True
        pump = Pump(src.kind, src.payload, bound=src.bound or DEFAULT_BUFFER, control=self.control,
                    stage=prefix + src.name, sentinel=src.sentinel, loop=self.loop,
                    prefetch=src.bound is not None)
        self.control.pumps.append(pump)
        return pump

    def build(self, stream: Stream[Any], prefix: str = "") -> tuple[int, int]:
        """Add the nodes of `stream`; its last node and its source items per output item."""
        src = stream._source
        prev: int | None = None
        source: IterSource | Pump | None = None
        names: list[str] = []
        if src.kind == "junction":
            built = [self.build(sub, f"{prefix}{src.name}.{i}/")
                     for i, sub in enumerate(src.streams)]
            factor = max(f for _, f in built)
            prev = self.add(_Node(Junction, prefix + src.name,
                                  {"mode": src.mode, "bound": self.chunk},
                                  hold=self.chunk * factor * len(built)), [u for u, _ in built])
        else:
            factor = 1
            source = self.source(stream, prefix)
            names.append(prefix + src.name)
        ops: list[Any] = []
        prefetch = 0
        start_factor = factor
        forced = False
        source_hold = source.bound if isinstance(source, Pump) and source.prefetch else 0

        def close(force: bool = False) -> None:
            nonlocal prev, source, ops, names, prefetch, forced, source_hold, start_factor
            if ops or source is not None or force or forced:
                name = "+".join(names) or f"{prefix}segment"
                built = [spec.build() for spec in ops]
                for op, spec in zip(built, ops, strict=True):
                    op.name = prefix + spec.name
                node = _Node(Segment, name, {"ops": built, "source": source,
                                             "bound": prefetch or self.chunk,
                                             "prefetch": prefetch},
                             hold=prefetch * start_factor + source_hold)
                prev = self.add(node, [prev] if prev is not None else [])
            source, ops, names, prefetch, forced, source_hold = None, [], [], 0, False, 0
            start_factor = factor

        for spec in stream._ops:
            if spec.kind == "op":
                ops.append(spec)
                names.append(prefix + spec.name)
            elif spec.kind == "boundary":
                close()
            elif spec.kind == "buffer":
                close()
                if spec.overflow == "backpressure":
                    prefetch, forced = spec.bound, True
                    names.append(prefix + spec.name)
                else:
                    node = _Node(BufferStage, prefix + spec.name,
                                 {"overflow": spec.overflow, "bound": spec.bound},
                                 hold=(spec.bound + min(self.chunk, spec.bound)) * factor)
                    prev = self.add(node, [prev] if prev is not None else [])
            else:  # concurrent map
                cap = 0
                if forced and not ops and source is None:
                    # `buffer(n)` right before it: n is this stage's own bound.
                    cap = prefetch
                    names, prefetch, forced = [], 0, False
                else:
                    close()
                node = _Node(ConcurrentMap, prefix + spec.name,
                             {"ordered": spec.ordered, "on_error": spec.on_error,
                              "bound": max(cap, spec.concurrency), "prefetch": cap},
                             hold=max(cap, spec.concurrency) * factor)
                prev = self.add(node, [prev] if prev is not None else [])
                tries = 1 + (spec.retries if spec.on_error != "fail" else 0)
                for i in range(spec.concurrency):
                    worker = _Node(Worker, f"{prefix}{spec.name}.worker{i}",
                                   {"fn": spec.fn, "tries": tries, "index": i})
                    worker.down = prev
                    self.nodes[prev].workers.append(len(self.nodes))
                    self.nodes.append(worker)
                start_factor = factor
            factor *= spec.factor
        close(force=prev is None)
        assert prev is not None
        return prev, factor


def _plan(stream: Stream[Any]) -> _Planner:
    return _Planner(stream, Control("plan", Sink(), SYSTEM_CLOCK), None, consume=False)


def plan_bound(stream: Stream[Any]) -> int:
    """How many source items may be in flight between the source and the consumer, at most.

    The sum of what each stage may hold ahead of demand (a `buffer(n)`, a
    source's ``buffer=n``, a concurrent map's calls, a junction's chunk per
    input), plus the terminal's window, all counted in source items.
    """
    planner = _plan(stream)
    return sum(node.hold for node in planner.nodes) + planner.window * planner.factor


def stage_names(stream: Stream[Any]) -> list[str]:
    """The actors a run of `stream` starts, in start order."""
    return [node.name for node in _plan(stream).nodes]


class Run:
    """One running pipeline: its supervisor, stage refs, sink and control block."""

    def __init__(self, stream: Stream[Any], *, loop: asyncio.AbstractEventLoop | None = None,
                 collect: Callable[[list[Any]], object] | None = None) -> None:
        self.id = f"stream-{next(_ids)}"
        self.sink = Sink(loop, collect)
        self.control = Control(self.id, self.sink, _clock_of(stream))
        self._dynamic: SupervisorRef | None = None
        self._sup_ref: Any = None
        self._closed = False
        self.supervisor: SupervisorRef | None = None
        planner = _Planner(stream, self.control, loop, consume=True)
        # The terminal's window, in its own items: it asks for that many and
        # asks again for what the consumer has finished, in half-window steps.
        demand = self.demand = planner.window
        self.refill = max(1, demand // 2)
        self.consumed = 0
        out, nodes, chunk = planner.out, planner.nodes, planner.chunk
        specs = []
        for i, node in enumerate(nodes):
            kwargs = dict(node.kwargs, control=self.control)
            if node.cls is not Worker:
                kwargs.update(name=node.name, chunk=min(chunk, kwargs["bound"]))
            specs.append(ChildSpec(id=f"{i}:{node.name}", start=node.cls, kwargs=kwargs,
                                   restart="temporary", shutdown=STAGE_SHUTDOWN))
        self.span = start_span("zixir.stream.run", run=self.id, stages=len(nodes),
                               under_runtime=whereis(STREAMS_NAME) is not None)
        self.control.span = self.span
        try:
            self.supervisor = self._start_tree(specs)
            refs: list[Any] = [child.ref for child in self.supervisor.which_children()]
            self.monitors = [monitor(r, watcher=self._watcher(n.name))
                             for r, n in zip(refs, nodes, strict=True)]
            # Workers first: a coordinator may hand out work as soon as it is wired.
            # The rest upstream first: a stage asks for items only once wired,
            # and its upstream is wired by then.
            order = sorted(range(len(nodes)), key=lambda i: nodes[i].cls is not Worker)
            for i in order:
                node = nodes[i]
                down = self.sink if node.down is None else refs[node.down]
                refs[i].tell(Wire(tuple(refs[u] for u in node.ups), down, node.port,
                                  tuple(refs[w] for w in node.workers)))
        except BaseException:
            self.close()
            raise
        self.last = refs[out]
        self.last.tell(Demand(demand))

    def _start_tree(self, specs: list[ChildSpec]) -> SupervisorRef:
        streams = whereis(STREAMS_NAME)
        if streams is not None and streams.is_alive():
            self._dynamic = SupervisorRef(streams)
            self._sup_ref = self._dynamic.start_child(_PipelineSupervisor.child_spec(
                self.id, children=specs, strategy="rest_for_one", restart="temporary"))
            return SupervisorRef(self._sup_ref)
        return _PipelineSupervisor.start_link(specs, strategy="rest_for_one")

    def _watcher(self, name: str) -> Callable[[Down], None]:
        control = self.control

        def on_down(down: Down) -> None:
            # Stages never stop by themselves: any exit before the run closes
            # (a crash, a kill, the runtime shutting down) fails the run.
            if not control.stopping.is_set():
                control.fail(StageCrashedError(name, down.reason), name)

        return on_down

    @property
    def under_runtime(self) -> bool:
        """True when this run is a child of the runtime's `zixir.streams` supervisor."""
        return self._dynamic is not None

    def consumed_items(self, n: int) -> None:
        """The consumer finished `n` more items: replenish demand in half-window steps."""
        self.consumed += n
        if self.consumed >= self.refill:
            n, self.consumed = self.consumed, 0
            with contextlib.suppress(pykka.ActorDeadError):
                self.last.tell(Demand(n))

    def next_message(self, deadline: float | None, timeout: float | None) -> Any:
        import queue

        try:
            if deadline is None:
                return self.sink.queue.get()
            return self.sink.queue.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise StreamTimeoutError(f"stream {self.id}", timeout) from None

    async def next_message_async(self, deadline: float | None, timeout: float | None) -> Any:
        aqueue = self.sink.aqueue
        assert aqueue is not None
        if deadline is None:
            return await aqueue.get()
        try:
            return await asyncio.wait_for(aqueue.get(), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise StreamTimeoutError(f"stream {self.id}", timeout) from None

    def close(self, *, timeout: float | None = STAGE_SHUTDOWN * 2) -> None:
        """Stop every stage, the timer thread and the pumps. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if sys.is_finalizing():
            return  # interpreter exit: the stages run on daemon threads and end with it
        self.control.stopping.set()
        try:
            if self._dynamic is not None and self._sup_ref is not None:
                try:
                    self._dynamic.terminate_child(self._sup_ref, timeout=timeout)
                except (pykka.ActorDeadError, SupervisorError):
                    # Already gone if the runtime stopped meanwhile: nothing left to stop.
                    if self._dynamic.is_alive() and self._sup_ref.is_alive():
                        raise
            elif self.supervisor is not None:
                self.supervisor.stop(timeout=timeout)
        finally:
            self.control.close(timeout=timeout)
            failure = self.control.failure
            # Instrumentation never masks the outcome (nor fails at interpreter exit).
            with contextlib.suppress(Exception):
                self.span.end(error=failure)
                _runs().labels("error" if failure is not None else "ok").inc()


def _runs() -> Any:
    return metrics.counter("zixir_stream_runs_total", "Stream pipeline runs by outcome "
                           "(early close counts as ok).", labels=("outcome",))


def _clock_of(stream: Stream[Any]) -> Clock:
    for spec in stream._walk_ops():
        if spec.clock is not None:
            return spec.clock
    return SYSTEM_CLOCK


def is_chunk(message: Any) -> bool:
    return type(message) is Chunk


def outcome(message: Any) -> BaseException | None:
    """`None` for `Complete`; the error for `Failed`."""
    if type(message) is Complete:
        return None
    if type(message) is Failed:
        return message.error
    raise AssertionError(f"unexpected terminal message {message!r}")
