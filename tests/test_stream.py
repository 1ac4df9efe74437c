"""Tests for zixir_actors.stream: lazy actor pipelines, backpressure, errors, async helpers."""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from _subprocess import run_python
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisors import DynamicSupervisor, kill
from zixir_actors.errors import (
    BufferOverflowError,
    ConfigError,
    EmptyStreamError,
    StageCrashedError,
    StreamConsumedError,
    StreamTimeoutError,
)
from zixir_actors.observability import metrics
from zixir_actors.stream import (
    DEFAULT_BUFFER,
    DEFAULT_CHUNK,
    STREAMS_NAME,
    Future,
    Stream,
    async_,
    await_,
    child_spec,
    parallel,
    pmap,
)
from zixir_actors.stream._pipeline import Run
from zixir_actors.testing import FakeClock, capture_spans, wait_for

WAIT = 10.0

# -- results equal list operations ----------------------------------------------------


def test_operators_match_list_operations() -> None:
    xs = list(range(50))
    assert Stream.from_iterable(xs).map(lambda x: x * 2).to_list() == [x * 2 for x in xs]
    assert Stream.from_iterable(xs).filter(lambda x: x % 3).to_list() == [x for x in xs if x % 3]
    assert Stream.from_iterable(["ab", "", "c"]).flat_map(list).to_list() == ["a", "b", "c"]
    assert Stream.range(7).batch(3).to_list() == [[0, 1, 2], [3, 4, 5], [6]]
    assert Stream.range(6).window(3, 2).to_list() == [[0, 1, 2], [2, 3, 4]]
    assert Stream.range(10).take(4).to_list() == [0, 1, 2, 3]
    assert Stream.range(10).skip(8).to_list() == [8, 9]
    assert Stream.range(10).take_while(lambda x: x < 3).to_list() == [0, 1, 2]
    assert Stream.range(1, 5).scan(lambda a, x: a * x, 1).to_list() == [1, 2, 6, 24]
    assert Stream.from_iterable("abracadabra").distinct().to_list() == ["a", "b", "r", "c", "d"]
    assert Stream.from_iterable([3, 13, 4]).distinct(key=lambda x: x % 10).to_list() == [3, 4]
    assert Stream.range(3).chain(Stream.range(5, 7), Stream.range(9, 10)).to_list() == [
        0, 1, 2, 5, 6, 9]
    assert Stream.range(3).zip(Stream.from_iterable("abcd")).to_list() == [
        (0, "a"), (1, "b"), (2, "c")]
    assert sorted(Stream.range(300).merge(Stream.range(1000, 1300)).to_list()) == [
        *range(300), *range(1000, 1300)]
    assert Stream.range(10).reduce(lambda a, b: a + b) == 45
    assert Stream.range(0).reduce(lambda a, b: a + b, 7) == 7
    assert Stream.range(5, 9).first() == 5
    assert Stream.range(0).first(default="none") == "none"
    seen: list[int] = []
    Stream.range(4).for_each(seen.append)
    assert seen == [0, 1, 2, 3]
    assert list(Stream.range(3).tap(seen.append)) == [0, 1, 2]


def test_empty_terminals_raise_typed_errors() -> None:
    with pytest.raises(EmptyStreamError):
        Stream.range(0).first()
    with pytest.raises(EmptyStreamError):
        Stream.range(0).reduce(lambda a, b: a + b)


OPS = st.one_of(
    st.tuples(st.just("map"), st.integers(-3, 3)),
    st.tuples(st.just("filter"), st.integers(2, 4)),
    st.tuples(st.just("flat_map"), st.integers(0, 2)),
    st.tuples(st.just("take"), st.integers(0, 40)),
    st.tuples(st.just("skip"), st.integers(0, 40)),
    st.tuples(st.just("batch"), st.integers(1, 5)),
    st.tuples(st.just("window"), st.integers(1, 4)),
    st.tuples(st.just("scan"), st.just(0)),
    st.tuples(st.just("distinct"), st.integers(2, 7)),
    st.tuples(st.just("take_while"), st.integers(-5, 5)),
    st.tuples(st.just("boundary"), st.just(0)),
    st.tuples(st.just("buffer"), st.integers(1, 8)),
    st.tuples(st.just("pmap"), st.integers(1, 3)),
    st.tuples(st.just("chain"), st.integers(0, 5)),
    st.tuples(st.just("zip"), st.integers(0, 30)),
)


def _key(x: Any) -> int:
    return hash(repr(x))


def _apply(stream: Stream[Any], xs: list[Any], op: str, k: int) -> tuple[Stream[Any], list[Any]]:
    if op == "map":
        return stream.map(lambda x: (x, k)), [(x, k) for x in xs]
    if op == "filter":
        return stream.filter(lambda x: _key(x) % k), [x for x in xs if _key(x) % k]
    if op == "flat_map":
        return stream.flat_map(lambda x: [x] * k), [y for x in xs for y in [x] * k]
    if op == "take":
        return stream.take(k), xs[:k]
    if op == "skip":
        return stream.skip(k), xs[k:]
    if op == "batch":
        return stream.batch(k), [xs[i:i + k] for i in range(0, len(xs), k)]
    if op == "window":
        return stream.window(k), [xs[i:i + k] for i in range(len(xs) - k + 1)]
    if op == "scan":
        return stream.scan(lambda a, x: a + 1, 0), list(range(1, len(xs) + 1))
    if op == "distinct":
        seen: set[int] = set()
        out = []
        for x in xs:
            if _key(x) % k not in seen:
                seen.add(_key(x) % k)
                out.append(x)
        return stream.distinct(key=lambda x: _key(x) % k), out
    if op == "take_while":
        out = list(itertools.takewhile(lambda x: _key(x) % 11 != k % 11, xs))
        return stream.take_while(lambda x: _key(x) % 11 != k % 11), out
    if op == "boundary":
        return stream.async_boundary(), xs
    if op == "buffer":
        return stream.buffer(k), xs
    if op == "chain":
        return stream.chain(Stream.range(k)), [*xs, *range(k)]
    if op == "zip":
        return stream.zip(Stream.range(k).async_boundary()), list(zip(xs, range(k), strict=False))
    return stream.map(lambda x: [x], concurrency=k), [[x] for x in xs]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(xs=st.lists(st.integers(-100, 100), max_size=60),
       ops=st.lists(OPS, max_size=4))
def test_random_pipelines_equal_list_operations(xs: list[int], ops: list[tuple[str, int]]) -> None:
    stream: Stream[Any] = Stream.from_iterable(xs)
    expected: list[Any] = xs
    for op, k in ops:
        stream, expected = _apply(stream, expected, op, k)
    assert stream.to_list(timeout=WAIT) == expected


def test_stream_is_lazy_and_reusable() -> None:
    calls: list[int] = []
    stream = Stream.range(3).map(lambda x: calls.append(x) or x)
    assert calls == []
    assert stream.to_list() == [0, 1, 2]
    assert stream.to_list() == [0, 1, 2]
    assert calls == [0, 1, 2, 0, 1, 2]


def test_single_use_sources_refuse_a_second_run() -> None:
    stream = Stream.from_iterator(iter([1, 2]))
    assert stream.map(str).to_list() == ["1", "2"]
    with pytest.raises(StreamConsumedError) as err:
        stream.to_list()
    assert err.value.source == "from_iterator"


def test_sources_from_queue_and_generators() -> None:
    q: queue.Queue[Any] = queue.Queue()
    for item in ["a", "b", None]:
        q.put(item)
    assert Stream.from_queue(q).to_list(timeout=WAIT) == ["a", "b"]
    q.put(1)
    q.put("END")
    assert Stream.from_queue(q, sentinel="END").to_list(timeout=WAIT) == [1]

    def gen() -> Iterator[int]:
        yield from range(1000)

    assert Stream.from_iterator(gen()).filter(lambda x: x % 7 == 0).to_list() == list(
        range(0, 1000, 7))


def test_early_close_of_a_queue_source_stops_its_pump() -> None:
    q: queue.Queue[Any] = queue.Queue()
    q.put("first")
    assert Stream.from_queue(q).first(timeout=WAIT) == "first"
    q.put("second")
    for item in Stream.from_queue(q, buffer=1).map(str.upper):
        assert item == "SECOND"
        break  # the pump now waits on an empty queue: closing must still stop it


def test_default_stage_names_say_operator_position_and_function() -> None:
    def parse(x: str) -> int:
        return int(x)

    with pytest.raises(ValueError) as err:
        Stream.from_iterable(["1", "x"]).map(parse).to_list()
    assert err.value.stage == "map#1(parse)"  # type: ignore[attr-defined]
    assert repr(Stream.range(2).map(parse).batch(2)) == "Stream(range -> map#1(parse) -> batch#2)"


def test_bad_arguments_raise_config_errors_naming_the_argument() -> None:
    cases = [
        (lambda: Stream.range(3).batch(0), "size"),
        (lambda: Stream.range(3).map(5), "fn"),  # type: ignore[arg-type]
        (lambda: Stream.range(3).map(str, concurrency=0), "concurrency"),
        (lambda: Stream.range(3).map(str, on_error="ignore"), "on_error"),  # type: ignore[arg-type]
        (lambda: Stream.range(3).buffer(4, overflow="spill"), "overflow"),  # type: ignore[arg-type]
        (lambda: Stream.range(3).throttle(0), "rate"),
        (lambda: Stream.range(3).take(-1), "n"),
        (lambda: Stream.from_iterator([1, 2]), "iterator"),  # type: ignore[arg-type]
        (lambda: Stream.from_iterable(5), "iterable"),  # type: ignore[arg-type]
        (lambda: Stream.range(3).batch(2, timeout=0), "timeout"),
    ]
    for build, field in cases:
        with pytest.raises(ConfigError) as err:
            build()
        assert err.value.field == field


# -- stages, fusion and supervision ---------------------------------------------------


def test_consecutive_operators_fuse_and_boundaries_split() -> None:
    fused = Stream.range(10).map(str, name="a").filter(bool, name="b").batch(2, name="c")
    assert fused.stages() == ["range+a+b+c"]
    split = Stream.range(10).map(str, name="a").async_boundary().filter(bool, name="b")
    assert split.stages() == ["range+a", "b"]
    conc = Stream.range(10).map(str, concurrency=2, name="m").map(len, name="n")
    assert conc.stages() == ["range", "m", "m.worker0", "m.worker1", "n"]
    assert Stream.range(10).buffer(4, name="buf").map(str, name="s").stages() == [
        "range", "buf+s"]
    assert Stream.range(10).buffer(4, overflow="drop_new", name="buf").stages() == [
        "range", "buf"]
    bounded = Stream.range(10).buffer(4).map(str, concurrency=2, name="m")
    assert bounded.stages() == ["range", "m", "m.worker0", "m.worker1"]
    # The buffer's 4 items (the map's own bound) + a terminal window of one chunk (4).
    assert bounded.bound() == 4 + 4
    assert bounded.to_list() == [str(x) for x in range(10)]


def test_runs_under_the_runtime_streams_supervisor_when_it_runs() -> None:
    standalone = Run(Stream.range(3))
    assert not standalone.under_runtime
    standalone.close()
    streams = DynamicSupervisor.start_link(**child_spec().kwargs, name=STREAMS_NAME)
    try:
        assert child_spec().name == STREAMS_NAME
        run = Run(Stream.range(10).async_boundary())
        assert run.under_runtime
        assert streams.count_children().active == 1
        run.close()
        assert streams.count_children().active == 0
        assert Stream.range(5).map(lambda x: -x, concurrency=2).to_list() == [0, -1, -2, -3, -4]
        assert async_(sum, [1, 2]).get(timeout=WAIT) == 3
        entered, release = threading.Event(), threading.Event()
        stream = Stream.from_iterable(itertools.count()).map(
            lambda x: entered.set() or release.wait(WAIT))  # endless: only a stop ends it
        outcome: list[Any] = []

        def consume() -> None:
            try:
                stream.to_list(timeout=WAIT)
            except Exception as exc:
                outcome.append(exc)

        thread = threading.Thread(target=consume)
        thread.start()
        assert entered.wait(WAIT)
        stopping = threading.Thread(target=streams.stop)  # the runtime shuts down mid-run
        stopping.start()
        release.set()
        stopping.join(WAIT)
        thread.join(WAIT)
        assert isinstance(outcome[0], StageCrashedError), outcome
        assert outcome[0].reason == "shutdown"
    finally:
        streams.stop()


def test_a_killed_stage_fails_the_pipeline_with_stage_crashed() -> None:
    entered, release = threading.Event(), threading.Event()

    def block(x: int) -> int:
        entered.set()
        release.wait(WAIT)
        return x

    run = Run(Stream.range(5).async_boundary().map(block, name="slow"))
    try:
        assert entered.wait(WAIT)
        assert run.supervisor is not None
        stage = next(c.ref for c in run.supervisor.which_children() if c.id.endswith("range"))
        kill(stage)
        message = run.next_message(None, None)
        assert isinstance(message.error, StageCrashedError)
        assert message.error.stage == "range"
    finally:
        release.set()
        run.close()


# -- backpressure -----------------------------------------------------------------------


def _counting_producer(pulled: list[int]) -> Iterator[int]:
    for i in itertools.count():
        pulled[0] += 1
        yield i


@pytest.mark.parametrize("build", [
    lambda s: s.map(lambda x: x + 1),
    lambda s: s.map(lambda x: x).async_boundary().buffer(16).filter(lambda x: x >= 0),
    lambda s: s.buffer(8).map(lambda x: x, concurrency=2).batch(4),
])
def test_producer_never_gets_further_ahead_than_the_bound(build: Any) -> None:
    pulled = [0]
    stream = build(Stream.from_iterator(_counting_producer(pulled), buffer=32))
    bound = stream.bound()
    worst = consumed = 0
    for item in stream:
        consumed += len(item) if isinstance(item, list) else 1
        worst = max(worst, pulled[0] - consumed)
        if consumed >= 5 * DEFAULT_BUFFER:
            break
    assert 0 < worst <= bound


def test_inline_source_is_bounded_by_the_consumers_demand() -> None:
    pulled = [0]
    stream = Stream.from_iterable(_counting_producer(pulled)).map(lambda x: x)
    worst = 0
    for consumed, _ in enumerate(stream, 1):
        worst = max(worst, pulled[0] - consumed)
        if consumed >= 3 * DEFAULT_BUFFER:
            break
    assert 0 < worst <= stream.bound()


class _Enough(Exception):
    """Ends a gated run once the consumer has taken what the test wanted."""


class _Gate:
    """A producer that counts what it makes and a consumer that takes an item per permit.

    The lead (produced - consumed, in source items: a batch weighs its length)
    is recorded at every production, where it peaks, so the worst lead is exact.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.produced = 0
        self.consumed = 0
        self.worst = 0
        self.lock = threading.Lock()
        self.permits = threading.Semaphore(0)

    def source(self) -> Iterator[int]:
        for i in itertools.count():
            with self.lock:
                self.produced += 1
                self.worst = max(self.worst, self.produced - self.consumed)
            yield i

    def lead(self) -> int:
        with self.lock:
            return self.produced - self.consumed

    def take(self, item: Any) -> Any:
        if self.consumed >= self.limit:
            raise _Enough
        if not self.permits.acquire(timeout=WAIT):
            raise TimeoutError("the test did not release the consumer")
        with self.lock:
            self.consumed += len(item) if isinstance(item, list) else 1
        return item


def _same(x: Any) -> Any:
    return x


# (pipeline after the source, its documented bound, a lead it always gets back to while
# the consumer waits: a buffer refills once half empty, a terminal window once half used)
_BOUNDED = {
    # buffer(16): 16 held + one chunk of at most the smallest bound (16) at the terminal.
    "buffer": (lambda s: s.buffer(16).map(_same), 16 + 16, 8),
    # Demand after batch(4) counts 4 source items per batch: 32 + a window of 32 items.
    "batch": (lambda s: s.buffer(32).map(_same).batch(4), 32 + 32, 16),
    # map(concurrency=3) after buffer(8): at most 8 in calls or waiting + a window of 8.
    "concurrent map": (lambda s: s.buffer(8).map(_same, concurrency=3), 8 + 8, 4),
    # The demo's shape: 16 tokens + 4 batches of 8 (32 tokens) + a window of 16 tokens.
    "buffer, batch, buffer": (lambda s: s.buffer(16).map(_same).batch(8).buffer(4),
                              16 + 4 * 8 + 16, 8),
    # No buffer anywhere: the terminal's window of DEFAULT_BUFFER items is the bound.
    "no buffer": (lambda s: s.map(_same).async_boundary().map(_same), DEFAULT_BUFFER,
                  DEFAULT_BUFFER // 8),
}


def _consume_for(stream: Stream[Any], gate: _Gate) -> None:
    for item in stream:
        gate.take(item)


def _consume_for_each(stream: Stream[Any], gate: _Gate) -> None:
    stream.for_each(gate.take)


def _consume_reduce(stream: Stream[Any], gate: _Gate) -> None:
    stream.reduce(lambda acc, item: (gate.take(item), acc)[1], 0)


def _consume_to_list(stream: Stream[Any], gate: _Gate) -> None:
    # The slow consumer is the last stage: an actor of its own, pulled by to_list.
    stream.async_boundary().map(gate.take).to_list()


def _consume_async_for(stream: Stream[Any], gate: _Gate) -> None:
    async def main() -> None:
        async for item in stream:
            gate.take(item)  # blocks the loop on purpose: a consumer that cannot keep up

    asyncio.run(main())


def _consume_run_async(stream: Stream[Any], gate: _Gate) -> None:
    asyncio.run(stream.async_boundary().map(gate.take).run_async())


_TERMINALS = {"for": _consume_for, "for_each": _consume_for_each, "reduce": _consume_reduce,
              "to_list": _consume_to_list, "async for": _consume_async_for,
              "run_async": _consume_run_async}


@pytest.mark.parametrize("terminal", list(_TERMINALS))
@pytest.mark.parametrize("shape", list(_BOUNDED))
def test_a_slow_consumer_holds_the_producer_within_the_documented_bound(
        shape: str, terminal: str) -> None:
    build, bound, floor = _BOUNDED[shape]
    gate = _Gate(limit=3 * bound)
    stream = build(Stream.from_iterator(gate.source()))
    assert stream.bound() == bound
    outcome: list[BaseException] = []

    def consume() -> None:
        try:
            _TERMINALS[terminal](stream, gate)
        except _Enough:
            pass
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=consume)
    thread.start()
    try:
        step = max(1, bound // 8)
        while gate.consumed < gate.limit and not outcome:
            # The consumer is blocked: let the producer run as far ahead as it will.
            wait_for(lambda: gate.lead() >= floor or bool(outcome), timeout=WAIT)
            target = gate.consumed + 1
            for _ in range(step):
                gate.permits.release()
            wait_for(lambda t=target: gate.consumed >= t or bool(outcome), timeout=WAIT)
    finally:
        for _ in range(gate.limit):
            gate.permits.release()
        thread.join(WAIT)
    assert not thread.is_alive() and not outcome, outcome
    assert floor <= gate.worst <= bound, (gate.worst, bound)


@pytest.mark.parametrize(("build", "chunk"), [
    (lambda s: s.buffer(10).map(str), 10),
    (lambda s: s.buffer(10).async_boundary().map(str), 10),  # the bound is further up
    (lambda s: s.map(str).async_boundary().buffer(300).filter(bool), 300),
    (lambda s: s.flat_map(lambda x: [x] * 3).async_boundary().map(str), DEFAULT_CHUNK),
])
def test_no_chunk_exceeds_the_smallest_bound(build: Any, chunk: int) -> None:
    run = Run(build(Stream.range(5000)))
    sizes: list[int] = []
    try:
        while True:
            message = run.next_message(None, WAIT)
            if not hasattr(message, "items"):
                assert getattr(message, "error", None) is None
                break
            sizes.append(len(message.items))
            run.consumed_items(len(message.items))
    finally:
        run.close()
    assert sum(sizes) in (5000, 15000) and max(sizes) <= chunk


def _fill_buffer_then_drain(overflow: str) -> list[int]:
    """100 items into a buffer of 10 while the stage after it is blocked on item 0."""
    sent, release = [0], threading.Event()

    def block_first(x: int) -> int:
        if x == 0:
            release.wait(WAIT)
        return x

    def count(chunk: list[int]) -> None:
        sent[0] += len(chunk)

    stream = (Stream.range(100).batch(1).tap(count).flat_map(lambda c: c)
              .buffer(10, overflow=overflow).buffer(1).map(block_first))  # type: ignore[arg-type]
    results: list[Any] = []

    def consume() -> None:
        try:
            results.append(stream.to_list(timeout=WAIT))
        except Exception as exc:
            results.append(exc)

    thread = threading.Thread(target=consume)
    thread.start()
    # With "fail", 12 items sent past a blocked stage already overflow 10 + 1 in flight.
    target = 12 if overflow == "fail" else 100
    wait_for(lambda: sent[0] >= target, timeout=WAIT)
    release.set()
    thread.join(WAIT)
    return results[0]  # type: ignore[no-any-return]


def test_buffer_drop_head_keeps_the_newest_items() -> None:
    out = _fill_buffer_then_drain("drop_head")
    assert out[-10:] == list(range(90, 100)) and len(out) < 100


def test_buffer_drop_tail_replaces_the_newest_buffered_item() -> None:
    out = _fill_buffer_then_drain("drop_tail")
    assert out[-1] == 99 and out == sorted(out) and len(out) < 100


def test_buffer_drop_new_drops_arriving_items() -> None:
    out = _fill_buffer_then_drain("drop_new")
    assert 99 not in out and out == sorted(out) and len(out) <= 12


def test_buffer_fail_raises_buffer_overflow_naming_the_stage() -> None:
    error = _fill_buffer_then_drain("fail")
    assert isinstance(error, BufferOverflowError)
    assert error.capacity == 10 and error.stage.startswith("buffer#")


# -- concurrency ------------------------------------------------------------------------


def test_concurrent_map_runs_n_calls_at_once_and_keeps_order() -> None:
    barrier = threading.Barrier(4, timeout=WAIT)

    def meet(x: int) -> int:
        if x < 4:
            barrier.wait()  # only passes if four calls run at the same time
        return x * 10

    assert Stream.range(12).map(meet, concurrency=4).to_list(timeout=WAIT) == [
        x * 10 for x in range(12)]


def test_unordered_concurrent_map_emits_in_completion_order() -> None:
    others_done = threading.Semaphore(0)

    def slow_zero(x: int) -> int:
        if x == 0:
            for _ in range(3):
                others_done.acquire(timeout=WAIT)
        else:
            others_done.release()
        return x

    ordered = Stream.range(4).map(slow_zero, concurrency=4, ordered=True).to_list(timeout=WAIT)
    assert ordered == [0, 1, 2, 3]
    unordered = Stream.range(4).map(slow_zero, concurrency=4, ordered=False).to_list(
        timeout=WAIT)
    assert unordered[-1] == 0 and sorted(unordered) == [0, 1, 2, 3]


def test_cheap_calls_are_handed_out_several_per_message_in_order() -> None:
    items = list(range(-3000, 3000))
    assert pmap(abs, items, concurrency=4) == [abs(x) for x in items]
    kept = Stream.from_iterable(items).map(lambda x: 100 // x, concurrency=3,
                                           on_error="skip").to_list(timeout=WAIT)
    assert kept == [100 // x for x in items if x]
    unordered = Stream.from_iterable(items).map(abs, concurrency=3, ordered=False).to_list()
    assert sorted(unordered) == sorted(abs(x) for x in items)


def test_pmap_and_parallel_respect_their_caps() -> None:
    lock, now, peak = threading.Lock(), [0], [0]

    def track(x: int) -> int:
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        with lock:
            now[0] -= 1
        return x + 1

    assert pmap(track, range(30), concurrency=3) == list(range(1, 31))
    assert peak[0] <= 3
    assert parallel([lambda i=i: track(i) for i in range(10)], max_concurrency=2) == list(
        range(1, 11))
    assert parallel([]) == []


# -- time: batch timeout, throttle ------------------------------------------------------


def test_each_item_of_a_slow_generator_reaches_the_consumer_at_once() -> None:
    seen = threading.Event()

    def tokens() -> Iterator[int]:
        for i in range(3):
            yield i
            assert seen.wait(WAIT)  # the next token only comes once this one arrived
            seen.clear()

    out = []
    for token in Stream.from_iterator(tokens()).map(str).async_boundary().iterate(timeout=WAIT):
        out.append(token)
        seen.set()
    assert out == ["0", "1", "2"]


def test_batch_timeout_emits_a_partial_batch_while_a_slow_generator_waits() -> None:
    resume, finished = threading.Event(), threading.Event()

    def tokens() -> Iterator[str]:
        yield "Hel"
        yield "lo"
        resume.wait(WAIT)  # the model pauses until the consumer saw the first batch
        yield " world"
        finished.set()

    batches = []
    for batch in Stream.from_iterator(tokens()).batch(10, timeout=0.02).iterate(timeout=WAIT):
        batches.append(batch)
        resume.set()
    assert batches == [["Hel", "lo"], [" world"]]
    assert finished.is_set()


def test_batch_timeout_on_a_fake_clock_flushes_each_idle_partial_batch() -> None:
    clock = FakeClock()
    resume = threading.Event()

    def slow() -> Iterator[int]:
        yield 1
        resume.wait(WAIT)
        yield 2

    out = []
    for batch in Stream.from_iterator(slow()).batch(5, timeout=1.0, clock=clock):
        out.append(batch)
        resume.set()
    assert out == [[1], [2]]
    assert clock.monotonic() >= 1.0


def test_throttle_spaces_items_by_the_rate() -> None:
    clock = FakeClock()
    stamps: list[float] = []
    out = (Stream.range(6).throttle(4, clock=clock).tap(lambda _: stamps.append(clock.monotonic()))
           .to_list(timeout=WAIT))
    assert out == list(range(6))
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert all(gap >= 0.25 - 1e-9 for gap in gaps)
    assert stamps[-1] - stamps[0] == pytest.approx(1.25)


# -- errors -----------------------------------------------------------------------------


def test_a_stage_error_keeps_its_type_and_names_the_stage() -> None:
    with pytest.raises(ZeroDivisionError) as err:
        Stream.range(10).map(lambda x: x + 1).filter(lambda x: 1 / (x - 5), name="invert").to_list()
    assert err.value.stage == "invert"  # type: ignore[attr-defined]
    assert "in stream stage 'invert'" in err.value.__notes__

    def broken() -> Iterator[int]:
        yield 1
        raise KeyError("feed closed")

    with pytest.raises(KeyError) as key_err:
        Stream.from_iterator(broken(), name="feed").to_list()
    assert key_err.value.stage == "feed"  # type: ignore[attr-defined]

    def broken_iterable() -> Iterator[int]:
        yield 1
        raise KeyError("inline")

    with pytest.raises(KeyError) as inline_err:
        Stream.from_iterable(broken_iterable()).map(str).to_list()
    assert inline_err.value.stage == "from_iterable"  # type: ignore[attr-defined]

    with pytest.raises(ValueError) as conc_err:
        Stream.from_iterable("ab1").map(int, concurrency=2, name="parse").to_list()
    assert conc_err.value.stage == "parse"  # type: ignore[attr-defined]

    with pytest.raises(RuntimeError) as each_err:
        Stream.range(3).for_each(lambda x: (_ for _ in ()).throw(RuntimeError("sink")))
    assert each_err.value.stage == "for_each"  # type: ignore[attr-defined]


def test_a_failure_stops_pulling_the_source() -> None:
    pulled = [0]

    def explode(x: int) -> int:
        if x == 10:
            raise ValueError("bad item")
        return x

    with pytest.raises(ValueError):
        Stream.from_iterator(_counting_producer(pulled), buffer=16).async_boundary().map(
            explode).to_list(timeout=WAIT)
    after = pulled[0]
    assert after <= 10 + Stream.from_iterator(iter(())).async_boundary().bound()
    assert Stream.range(5).to_list() == list(range(5))  # other actors got time to run
    assert pulled[0] == after


def test_on_error_skip_and_retry() -> None:
    skipped = Stream.from_iterable([1, 0, 2]).map(lambda x: 4 // x, on_error="skip").to_list()
    assert skipped == [4, 2]
    attempts: dict[int, int] = {}

    def flaky(x: int) -> int:
        attempts[x] = attempts.get(x, 0) + 1
        if attempts[x] < 3:
            raise ConnectionError("try again")
        return x

    assert Stream.range(4).map(flaky, on_error="retry").to_list() == [0, 1, 2, 3]
    assert set(attempts.values()) == {3}
    with pytest.raises(ConnectionError):
        Stream.range(2).map(lambda x: flaky(x + 10), on_error="retry", retries=1).to_list()
    assert pmap(lambda x: 4 // x, [1, 2]) == [4, 2]
    assert Stream.from_iterable([1, 0, 2]).map(lambda x: 4 // x, concurrency=2,
                                               on_error="skip").to_list() == [4, 2]


def test_timeout_raises_and_stops_the_pipeline() -> None:
    release = threading.Event()

    def stalls() -> Iterator[int]:
        yield 1
        release.wait(WAIT)

    with pytest.raises(StreamTimeoutError):
        Stream.from_iterator(stalls()).map(lambda x: x).to_list(timeout=0.05)
    release.set()


# -- early close ------------------------------------------------------------------------


def test_breaking_out_of_a_for_loop_stops_source_and_stages() -> None:
    closed = threading.Event()

    def endless() -> Iterator[int]:
        try:
            yield from itertools.count()
        finally:
            closed.set()

    for x in Stream.from_iterator(endless()).map(lambda x: x * 2).async_boundary():
        if x > 100:
            break
    assert closed.wait(WAIT)
    for _ in Stream.range(10**12).batch(3, timeout=5.0):
        break

    resume, finished = threading.Event(), threading.Event()

    def waits_for_the_network() -> Iterator[str]:
        try:
            yield "first token"
            resume.wait(WAIT)  # blocked inside next() when the consumer leaves
            yield "never read"
        finally:
            finished.set()

    for token in Stream.from_iterator(waits_for_the_network()):
        assert token == "first token"
        break
    resume.set()  # the generator can only be closed once its next() returns
    assert finished.wait(WAIT)


def test_an_iterator_left_open_does_not_keep_the_interpreter_alive(tmp_path: Any) -> None:
    script = tmp_path / "left_open.py"
    script.write_text(
        "from zixir_actors.stream import Stream\n"
        "it = iter(Stream.range(10**9).async_boundary().map(str, concurrency=2))\n"
        "print(next(it))\n")
    result = run_python(str(script))
    assert (result.returncode, result.stdout, result.stderr) == (0, "0\n", "")


def test_take_and_first_stop_an_infinite_pipeline() -> None:
    assert Stream.from_iterable(itertools.count()).map(lambda x: x + 1).take(3).to_list() == [
        1, 2, 3]
    assert Stream.from_iterable(itertools.count(5)).async_boundary().first() == 5
    assert Stream.range(10**12).merge(Stream.range(10**12)).take(5).to_list() is not None


# -- asyncio ----------------------------------------------------------------------------


def test_async_for_run_async_and_async_sources() -> None:
    async def tokens() -> Any:
        for word in ["a", "b", "c"]:
            await asyncio.sleep(0)
            yield word

    async def main() -> tuple[Any, ...]:
        loop_thread = threading.get_ident()
        seen_threads = set()

        async def on_loop() -> Any:
            async for token in tokens():
                seen_threads.add(threading.get_ident())
                yield token

        upper = [t async for t in Stream.from_async_iterator(on_loop()).map(str.upper)]
        total = await Stream.range(100).map(lambda x: x * 2).run_async(timeout=WAIT)
        first = None
        async for item in Stream.range(10**9).aiterate(timeout=WAIT):
            first = item
            break
        return upper, total, first, seen_threads == {loop_thread}

    upper, total, first, on_caller_loop = asyncio.run(main())
    assert upper == ["A", "B", "C"]
    assert total == [x * 2 for x in range(100)]
    assert first == 0 and on_caller_loop
    assert Stream.from_async_iterator(tokens()).to_list(timeout=WAIT) == ["a", "b", "c"]


def test_futures_work_with_get_and_await() -> None:
    future = async_(divmod, 7, 2)
    assert isinstance(future, Future)
    assert future.get(timeout=WAIT) == (3, 1)
    assert await_([async_(abs, -1), async_(abs, -2)], timeout=WAIT) == [1, 2]

    async def main() -> Any:
        ok = await async_(sum, [1, 2, 3])
        try:
            await async_(int, "x")
        except ValueError:
            return ok, "raised"
        return ok, "not raised"

    assert asyncio.run(main()) == (6, "raised")

    release = threading.Event()
    slow = async_(release.wait, WAIT)
    with pytest.raises(StreamTimeoutError):
        await_(slow, timeout=0.01)
    release.set()
    assert slow.get(timeout=WAIT) is True
    with pytest.raises(ConfigError):
        await_(42)

    entered, never = threading.Event(), threading.Event()
    streams = DynamicSupervisor.start_link(name=STREAMS_NAME)
    try:
        stuck = async_(lambda: entered.set() or never.wait(WAIT))
        assert entered.wait(WAIT)
        kill(streams.which_children()[0].ref)  # the call's actor dies before it returns
        with pytest.raises(StageCrashedError) as err:
            stuck.get(timeout=WAIT)
        assert err.value.reason == "killed" and err.value.stage == "async_(<lambda>)"
    finally:
        never.set()
        streams.stop()


# -- observability ----------------------------------------------------------------------


def test_stage_metrics_and_run_spans_are_recorded() -> None:
    with capture_spans() as spans:
        Stream.range(500).map(lambda x: x, name="metered").to_list()
    stage = "range+metered"
    out = metrics.registry.get_sample_value("zixir_stream_items_out_total", {"stage": stage})
    assert out is not None and out >= 500
    assert metrics.registry.get_sample_value("zixir_stream_items_in_total",
                                             {"stage": stage}) is not None
    assert metrics.registry.get_sample_value("zixir_stream_mailbox_depth",
                                             {"stage": "metered"}) is None  # fused away
    Stream.range(5000).map(lambda x: x, name="fast").async_boundary().map(
        lambda x: x, name="behind").to_list()
    assert metrics.registry.get_sample_value("zixir_stream_mailbox_depth",
                                             {"stage": "behind"}) is not None
    assert metrics.registry.get_sample_value("zixir_stream_demand_wait_seconds_total",
                                             {"stage": "range+fast"}) is not None
    runs = [s for s in spans.spans if s.name == "zixir.stream.run"]
    assert runs and runs[-1].status == "ok"


def test_early_close_of_an_async_source_cancels_its_pending_step() -> None:
    never = None

    async def stalls() -> Any:
        yield 1
        await never.wait()  # type: ignore[union-attr]
        yield 2

    async def main() -> list[int]:
        nonlocal never
        never = asyncio.Event()
        out = []
        async for item in Stream.from_async_iterator(stalls()):
            out.append(item)
            break
        return out

    assert asyncio.run(main()) == [1]

    sync_never = threading.Event()

    async def stalls_privately() -> Any:
        yield "a"
        while not sync_never.is_set():
            await asyncio.sleep(0.01)  # the pump's private loop, cancelled on close
        yield "b"

    assert Stream.from_async_iterator(stalls_privately()).first(timeout=WAIT) == "a"


def test_each_stage_has_a_span_under_the_run_span_and_the_failing_one_is_an_error() -> None:
    with capture_spans() as spans, pytest.raises(ValueError):
        Stream.from_iterable(["1", "x"]).async_boundary().map(int, name="parse").to_list()
    run = next(s for s in spans.spans if s.name == "zixir.stream.run")
    stages = {s.attributes["stage"]: s for s in spans.spans if s.name == "zixir.stream.stage"}
    assert set(stages) == {"from_iterable", "parse"}
    assert all(s.parent_id == run.span_id and s.trace_id == run.trace_id for s in stages.values())
    assert stages["parse"].status == "error" and stages["from_iterable"].status == "ok"
    assert stages["from_iterable"].attributes["items_out"] == 2
    assert run.status == "error"
