"""`Stream`: a lazy, immutable description of a pipeline; terminals run it."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar, get_args

from zixir_actors._clock import Clock
from zixir_actors.errors import ConfigError, EmptyStreamError
from zixir_actors.stream import _ops
from zixir_actors.stream._ops import OnError
from zixir_actors.stream._pipeline import plan_bound, stage_names
from zixir_actors.stream._runtime import annotate
from zixir_actors.stream._terminals import acollect, aiterate_items, collect, drain, iterate_items

__all__ = ["DEFAULT_RETRIES", "Overflow", "Stream"]

T = TypeVar("T")
U = TypeVar("U")

Overflow = Literal["backpressure", "drop_head", "drop_tail", "drop_new", "fail"]
"""What `buffer(n, overflow=...)` does when full, as in Akka Streams: slow the
upstream (default), drop the oldest buffered item, drop the newest buffered
item, drop the arriving item, or fail the pipeline with `BufferOverflowError`."""

DEFAULT_RETRIES = 3
"""Extra attempts per item with ``on_error="retry"`` when `retries` is not given."""

_MISSING: Any = object()


@dataclass(frozen=True, slots=True)
class _SourceSpec:
    kind: str
    name: str
    payload: Any = None
    sentinel: Any = None
    bound: int | None = None
    once: list[bool] | None = None
    streams: tuple[Stream[Any], ...] = ()
    mode: str = ""


@dataclass(frozen=True, slots=True)
class _OpSpec:
    kind: str  # "op" | "boundary" | "buffer" | "cmap"
    name: str
    build: Callable[[], _ops.Op] | None = None
    bound: int = 0
    overflow: str = "backpressure"
    fn: Callable[[Any], Any] | None = None
    concurrency: int = 1
    ordered: bool = True
    on_error: str = "fail"
    retries: int = 0
    clock: Clock | None = None
    factor: int = 1  # source items per item after this op: k after batch(k), size after window


def _positive(field: str, value: Any, *, zero: bool = False) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and (value >= 0 if zero
                                                                     else value > 0)
    if not ok:
        raise ConfigError(field, value, "must be a non-negative int" if zero else
                          "must be a positive int")


def _callable(field: str, fn: Any) -> None:
    if not callable(fn):
        raise ConfigError(field, fn, "must be callable")


def _policy(on_error: str, retries: int | None) -> int:
    if on_error not in get_args(OnError):
        raise ConfigError("on_error", on_error, f"expected one of {get_args(OnError)}")
    if retries is None:
        return DEFAULT_RETRIES if on_error == "retry" else 0
    _positive("retries", retries, zero=True)
    return retries


def _fn_name(fn: Any) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


class Stream(Generic[T]):
    """A lazy pipeline: sources, transformations, then one terminal that runs it.

    Example:
        >>> Stream.range(10).map(lambda x: x * x).filter(lambda x: x % 2).to_list()
        [1, 9, 25, 49, 81]
        >>> Stream.from_iterable("abcde").batch(2).to_list()
        [['a', 'b'], ['c', 'd'], ['e']]

    Nothing runs until a terminal (`to_list`, `reduce`, `for_each`, `first`,
    iteration, `async for`, `run_async`). Each run starts the stages as
    Pykka actors under one `rest_for_one` supervisor (a temporary child of
    the runtime's `zixir.streams` when it runs, top-level otherwise, so
    streams work without `zixir_actors.start()`): consecutive operators
    are fused into one actor, and `async_boundary()`, `buffer(n)`,
    `map(concurrency=N)`, `merge`, `zip` and `chain` start new ones. Stages
    pass chunks of items and ask upstream only for what the consumer's
    demand needs, counted in source items; only a `buffer(n)` holds items
    ahead of it, so a producer is never more than `bound()` items ahead of
    the consumer whatever the speed of the source. A `Stream` is immutable:
    every operator returns a new one, and a stream over a re-iterable source
    can run many times.

    Failure: an exception in a stage fails the run with that exception
    (same type; its `stage` attribute and a note name the stage), stops
    every stage and stops pulling the source. Stages are `temporary`
    children: a stage is never restarted, because a fresh stage would have
    lost the items it held; `on_error="skip"|"retry"` handles bad items.
    Closing early (`break`, `take`, `first`, an exception in the consumer)
    stops the source and every stage.
    """

    __slots__ = ("_ops", "_source")

    def __init__(self, source: _SourceSpec, ops: tuple[_OpSpec, ...] = ()) -> None:
        self._source = source
        self._ops = ops

    def __repr__(self) -> str:
        return f"Stream({' -> '.join([self._source.name, *(op.name for op in self._ops)])})"

    # -- sources ---------------------------------------------------------------

    @classmethod
    def from_iterable(cls, iterable: Iterable[T], *, name: str = "from_iterable") -> Stream[T]:
        """Items of an iterable that never blocks (list, range, dict view...).

        The stage pulls it in chunks on its own thread; it is iterated afresh
        for every run. Use `from_iterator` for anything that may block.

        Raises:
            ConfigError: `iterable` is not iterable.
        """
        if not isinstance(iterable, Iterable):
            raise ConfigError("iterable", iterable, "is not iterable")
        return cls(_SourceSpec("iterable", name, iterable))

    @classmethod
    def range(cls, start: int, stop: int | None = None, step: int = 1) -> Stream[int]:
        """Integers as `range(start, stop, step)`: ``Stream.range(3)`` gives 0, 1, 2."""
        r = range(start) if stop is None else range(start, stop, step)
        return Stream(_SourceSpec("iterable", "range", r))

    @classmethod
    def from_iterator(cls, iterator: Iterator[T], *, buffer: int | None = None,
                      name: str = "from_iterator") -> Stream[T]:
        """Items of an iterator that may block: a generator, an LLM client's token stream.

        A pump thread pulls it and hands each item on as soon as it
        arrives, so a slow source is never held back to fill a chunk. It
        pulls only what the pipeline's demand asks for; with `buffer` it
        keeps up to that many items ready ahead of demand (a bound, see
        `bound()`). Single use: a second run raises `StreamConsumedError`.
        On early close the generator is closed once its current `next()`
        returns.

        Raises:
            ConfigError: `iterator` is not an iterator, or `buffer` is not positive.
        """
        if not isinstance(iterator, Iterator):
            raise ConfigError("iterator", iterator, "is not an iterator (use from_iterable)")
        if buffer is not None:
            _positive("buffer", buffer)
        return cls(_SourceSpec("iterator", name, iterator, bound=buffer, once=[False]))

    @classmethod
    def from_async_iterator(cls, iterator: AsyncIterator[T], *, buffer: int | None = None,
                            name: str = "from_async_iterator") -> Stream[T]:
        """Items of an async iterator (an async generator, an async SDK stream).

        Consumed with `async for` or `run_async`, it is driven on the caller's
        event loop; consumed synchronously, on a private loop in the pump
        thread. Single use, like `from_iterator`.

        Raises:
            ConfigError: `iterator` is not an async iterator.
        """
        if not isinstance(iterator, AsyncIterator):
            raise ConfigError("iterator", iterator, "is not an async iterator")
        if buffer is not None:
            _positive("buffer", buffer)
        return cls(_SourceSpec("async", name, iterator, bound=buffer, once=[False]))

    @classmethod
    def from_queue(cls, queue: Any, *, sentinel: Any = None, buffer: int | None = None,
                   name: str = "from_queue") -> Stream[Any]:
        """Items put on a `queue.Queue` until `sentinel` (default None, by identity) arrives.

        Raises:
            ConfigError: `queue` has no `get(timeout=...)`.
        """
        if not callable(getattr(queue, "get", None)):
            raise ConfigError("queue", queue, "needs a get(timeout=...) method")
        if buffer is not None:
            _positive("buffer", buffer)
        return cls(_SourceSpec("queue", name, queue, sentinel=sentinel, bound=buffer,
                               once=[False]))

    # -- transformations -----------------------------------------------------------

    def _then(self, spec: _OpSpec) -> Stream[Any]:
        return Stream(self._source, (*self._ops, spec))

    def _name(self, kind: str, name: str | None, fn: Any = None) -> str:
        if name is not None:
            return name
        suffix = f"({_fn_name(fn)})" if fn is not None else ""
        return f"{kind}#{len(self._ops) + 1}{suffix}"

    def _call_op(self, kind: str, cls: type[_ops._Call], fn: Callable[..., Any],
                 on_error: str, retries: int | None, name: str | None) -> Stream[Any]:
        _callable("fn", fn)
        tries = _policy(on_error, retries)
        label = self._name(kind, name, fn)
        return self._then(_OpSpec("op", label, lambda: cls(label, fn, on_error, tries),  # type: ignore[arg-type]
                                  on_error=on_error, retries=tries))

    def map(self, fn: Callable[[T], U], *, concurrency: int | None = None, ordered: bool = True,
            on_error: OnError = "fail", retries: int | None = None,
            name: str | None = None, executor: Any = None) -> Stream[U]:
        """Apply `fn` to each item.

        Example:
            >>> Stream.range(4).map(str).to_list()
            ['0', '1', '2', '3']
            >>> import time
            >>> Stream.range(4).map(lambda x: x * 2, concurrency=3).to_list()
            [0, 2, 4, 6]

        Args:
            fn: the function.
            concurrency: run up to this many calls at once, each in a worker
                actor; this stage is then its own asynchronous boundary. For
                I/O-bound calls (HTTP, LLM APIs). Default: inline, fused.
            ordered: with `concurrency`, emit in input order (default) or as
                calls finish.
            on_error: ``"fail"`` (default) fails the pipeline with the
                exception, ``"skip"`` drops the item, ``"retry"`` calls again.
            retries: extra attempts before skipping or failing (default
                `DEFAULT_RETRIES` for ``"retry"``, 0 for ``"skip"``).
            name: the stage name in errors and metrics (default ``map#i(fn)``).
            executor: where each call runs: ``"local"``, ``"ray"`` or an
                `Executor` (see `zixir_actors.executor`); default: in this
                process, or the runtime's executor for a stage with
                `concurrency`. A worker waits for its remote call, so no
                more than `concurrency` calls are in flight: backpressure holds.

        Raises:
            ConfigError: `fn` is not callable, `concurrency` is not a positive
                int, `on_error`/`retries` is invalid, or `executor` is unknown.
            ExecutorUnavailableError: ``executor="ray"`` without Ray installed.
        """
        if executor is not None or concurrency is not None:
            from zixir_actors.executor import offload, remote_callable

            _callable("fn", fn)
            target = offload(executor)
            if target is not None:
                name = self._name("map", name, fn)
                fn = remote_callable(fn, target)
        if concurrency is None:
            return self._call_op("map", _ops.Map, fn, on_error, retries, name)
        _callable("fn", fn)
        _positive("concurrency", concurrency)
        tries = _policy(on_error, retries)
        return self._then(_OpSpec("cmap", self._name("map", name, fn), fn=fn,
                                  concurrency=concurrency, ordered=bool(ordered),
                                  on_error=on_error, retries=tries))

    def filter(self, pred: Callable[[T], object], *, on_error: OnError = "fail",
               retries: int | None = None, name: str | None = None) -> Stream[T]:
        """Keep the items for which `pred` is truthy. `on_error` as for `map`."""
        return self._call_op("filter", _ops.Filter, pred, on_error, retries, name)

    def flat_map(self, fn: Callable[[T], Iterable[U]], *, on_error: OnError = "fail",
                 retries: int | None = None, name: str | None = None) -> Stream[U]:
        """Replace each item by the items of `fn(item)`.

        Example:
            >>> Stream.from_iterable(["ab", "c"]).flat_map(list).to_list()
            ['a', 'b', 'c']

        Demand counts source items: the items made from one input item are
        that one item against the bound.
        """
        return self._call_op("flat_map", _ops.FlatMap, fn, on_error, retries, name)

    def tap(self, fn: Callable[[T], object], *, on_error: OnError = "fail",
            retries: int | None = None, name: str | None = None) -> Stream[T]:
        """Call `fn` on each item for its side effect; items pass unchanged."""
        return self._call_op("tap", _ops.Tap, fn, on_error, retries, name)

    def batch(self, size: int, *, timeout: float | None = None, clock: Clock | None = None,
              name: str | None = None) -> Stream[list[T]]:
        """Lists of `size` items; the last one may be shorter.

        Example:
            >>> Stream.range(5).batch(2).to_list()
            [[0, 1], [2, 3], [4]]

        Args:
            size: items per batch.
            timeout: emit a partial batch after this many seconds without a
                new item (for token streams); None waits for `size` items.
            clock: the clock for `timeout` (a `FakeClock` in tests).

        Raises:
            ConfigError: `size` is not a positive int or `timeout` is not positive.
        """
        _positive("size", size)
        if timeout is not None and not timeout > 0:
            raise ConfigError("timeout", timeout, "must be positive seconds or None")
        label = self._name("batch", name)
        the_clock = clock or _default_clock()
        return self._then(_OpSpec("op", label, lambda: _ops.Batch(label, size, timeout, the_clock),
                                  clock=clock, factor=size))

    def window(self, size: int, step: int = 1, *, name: str | None = None) -> Stream[list[T]]:
        """Sliding windows: lists of `size` consecutive items, starting every `step` items.

        Example:
            >>> Stream.range(5).window(3).to_list()
            [[0, 1, 2], [1, 2, 3], [2, 3, 4]]

        Only full windows are emitted.
        """
        _positive("size", size)
        _positive("step", step)
        label = self._name("window", name)
        return self._then(_OpSpec("op", label, lambda: _ops.Window(label, size, step),
                                  factor=size))

    def take(self, n: int, *, name: str | None = None) -> Stream[T]:
        """The first `n` items; then the source and every stage upstream stop."""
        _positive("n", n, zero=True)
        label = self._name("take", name)
        return self._then(_OpSpec("op", label, lambda: _ops.Take(label, n)))

    def skip(self, n: int, *, name: str | None = None) -> Stream[T]:
        """All but the first `n` items."""
        _positive("n", n, zero=True)
        label = self._name("skip", name)
        return self._then(_OpSpec("op", label, lambda: _ops.Skip(label, n)))

    def take_while(self, pred: Callable[[T], object], *, name: str | None = None) -> Stream[T]:
        """Items while `pred` holds; the first failing item ends the stream."""
        _callable("pred", pred)
        label = self._name("take_while", name, pred)
        return self._then(_OpSpec("op", label, lambda: _ops.TakeWhile(label, pred)))

    def scan(self, fn: Callable[[U, T], U], initial: U, *,
             name: str | None = None) -> Stream[U]:
        """Running accumulation: emits `fn(acc, item)` for each item (not `initial`).

        Example:
            >>> Stream.range(1, 5).scan(lambda a, x: a + x, 0).to_list()
            [1, 3, 6, 10]
        """
        _callable("fn", fn)
        label = self._name("scan", name, fn)
        return self._then(_OpSpec("op", label, lambda: _ops.Scan(label, fn, initial)))

    def distinct(self, key: Callable[[T], Hashable] | None = None, *,
                 name: str | None = None) -> Stream[T]:
        """Items whose key (default: the item) was not seen before; keeps every key seen."""
        if key is not None:
            _callable("key", key)
        label = self._name("distinct", name)
        return self._then(_OpSpec("op", label, lambda: _ops.Distinct(label, key)))

    def throttle(self, rate: float, *, per: float = 1.0, clock: Clock | None = None,
                 name: str | None = None) -> Stream[T]:
        """At most `rate` items every `per` seconds, evenly spaced; the rest wait.

        Waiting items count against the stage's bound, so upstream slows down.

        Raises:
            ConfigError: `rate` or `per` is not positive.
        """
        if not (isinstance(rate, (int, float)) and rate > 0):
            raise ConfigError("rate", rate, "must be a positive number")
        if not (isinstance(per, (int, float)) and per > 0):
            raise ConfigError("per", per, "must be positive seconds")
        label = self._name("throttle", name)
        the_clock = clock or _default_clock()
        return self._then(_OpSpec("op", label,
                                  lambda: _ops.Throttle(label, rate, per, the_clock), clock=clock))

    def buffer(self, n: int, *, overflow: Overflow = "backpressure",
               name: str | None = None) -> Stream[T]:
        """An asynchronous boundary holding up to `n` items ahead of demand.

        Example:
            >>> Stream.range(5).buffer(2).to_list()
            [0, 1, 2, 3, 4]

        With ``overflow="backpressure"`` (default) upstream sends only what
        fits, and `n` bounds the whole pipeline: its producer is never more
        than `bound()` items ahead of the consumer (n + one chunk of at most
        n when it is the only bound; items here are lists after `batch`).
        The other policies never slow upstream, for sources that cannot wait
        (webhooks, sensors): ``"drop_head"`` drops the oldest buffered item,
        ``"drop_tail"`` the newest buffered item, ``"drop_new"`` the
        arriving item, and ``"fail"`` fails the pipeline with
        `BufferOverflowError`.

        Raises:
            ConfigError: `n` is not a positive int or `overflow` is unknown.
        """
        _positive("n", n)
        if overflow not in get_args(Overflow):
            raise ConfigError("overflow", overflow, f"expected one of {get_args(Overflow)}")
        return self._then(_OpSpec("buffer", self._name("buffer", name), bound=n,
                                  overflow=overflow))

    def async_boundary(self) -> Stream[T]:
        """End the current fused stage: what follows runs in another actor.

        Use it to run two expensive operators in parallel threads (or to keep
        a slow operator from delaying the source).
        """
        return self._then(_OpSpec("boundary", "async_boundary"))

    def _junction(self, mode: str, others: tuple[Stream[Any], ...]) -> Stream[Any]:
        for other in others:
            if not isinstance(other, Stream):
                raise ConfigError(mode, other, "expected a Stream")
        return Stream(_SourceSpec("junction", mode, streams=(self, *others), mode=mode))

    def merge(self, *others: Stream[T]) -> Stream[T]:
        """Items of this stream and `others`, interleaved as they arrive (order not kept)."""
        return self._junction("merge", others)

    def zip(self, *others: Stream[Any]) -> Stream[tuple[Any, ...]]:
        """Tuples of one item from each stream; ends with the shortest."""
        return self._junction("zip", others)

    def chain(self, *others: Stream[T]) -> Stream[T]:
        """All items of this stream, then of each of `others` in turn."""
        return self._junction("chain", others)

    # -- introspection ------------------------------------------------------------

    def bound(self) -> int:
        """The most source items in flight between the source and the consumer.

        Example:
            >>> Stream.range(100).buffer(16).map(str).bound()  # 16 + one chunk of 16
            32
            >>> Stream.range(100).map(str).bound()  # no bound given: DEFAULT_BUFFER
            4096

        A producer is never further than this ahead of a slow consumer,
        whatever the terminal: the items every `buffer(n)` (n * k source
        items after `batch(k)`), source ``buffer=n`` and `map(concurrency=N)`
        may hold ahead of demand, plus the terminal's window: one chunk of
        min(`DEFAULT_CHUNK`, the smallest of those bounds), or
        `DEFAULT_BUFFER` items when there is none (see the module docs).
        """
        return plan_bound(self)

    def stages(self) -> list[str]:
        """The actors a run starts, by stage name (fused operators joined with ``+``)."""
        return stage_names(self)

    def _walk_ops(self) -> Iterator[_OpSpec]:
        for sub in self._source.streams:
            yield from sub._walk_ops()
        yield from self._ops

    # -- terminals ----------------------------------------------------------------

    def __iter__(self) -> Iterator[T]:
        return self.iterate()

    def iterate(self, *, timeout: float | None = None) -> Iterator[T]:
        """A generator over the items; closing it (or `break`) stops the pipeline.

        Raises (while iterating):
            the exception of a failed stage (with its `stage` attribute);
            StreamTimeoutError: the whole iteration took longer than `timeout`.
        """
        return iterate_items(self, timeout)

    def to_list(self, *, timeout: float | None = None) -> list[T]:
        """Run the pipeline and return every item.

        Raises:
            Exception: the original exception of a failed stage, with a
                `stage` attribute and a note naming it.
            StreamTimeoutError: not finished within `timeout` seconds.
            StreamConsumedError: a single-use source was already run.
        """
        return collect(self, timeout)

    def for_each(self, fn: Callable[[T], object], *, timeout: float | None = None) -> None:
        """Call `fn` on each item in the calling thread.

        Raises:
            Exception: what `fn` raised (stage ``"for_each"``) or a stage's error.
            StreamTimeoutError: not finished within `timeout` seconds.
        """
        _callable("fn", fn)

        def each(items: list[T]) -> None:
            try:
                for item in items:
                    fn(item)
            except Exception as exc:
                raise annotate(exc, "for_each") from None

        drain(self, timeout, each)

    def reduce(self, fn: Callable[[U, T], U], initial: U = _MISSING, *,
               timeout: float | None = None) -> U:
        """Fold the items with `fn`, as `functools.reduce`.

        Raises:
            EmptyStreamError: no items and no `initial`.
            Exception: what `fn` raised (stage ``"reduce"``) or a stage's error.
            StreamTimeoutError: not finished within `timeout` seconds.
        """
        _callable("fn", fn)
        acc: list[Any] = [] if initial is _MISSING else [initial]

        def fold(items: list[T]) -> None:
            try:
                if not acc:
                    acc.append(functools.reduce(fn, items))  # type: ignore[arg-type]
                else:
                    acc[0] = functools.reduce(fn, items, acc[0])
            except Exception as exc:
                raise annotate(exc, "reduce") from None

        drain(self, timeout, fold)
        if not acc:
            raise EmptyStreamError("reduce")
        return acc[0]  # type: ignore[no-any-return]

    def first(self, default: Any = _MISSING, *, timeout: float | None = None) -> T:
        """The first item; the pipeline stops right after it.

        Raises:
            EmptyStreamError: no items and no `default`.
        """
        items = self.take(1).to_list(timeout=timeout)
        if items:
            return items[0]
        if default is _MISSING:
            raise EmptyStreamError("first")
        return default  # type: ignore[no-any-return]

    def __aiter__(self) -> AsyncIterator[T]:
        return aiterate_items(self, None)

    def aiterate(self, *, timeout: float | None = None) -> AsyncIterator[T]:
        """`async for` with a timeout over the whole iteration."""
        return aiterate_items(self, timeout)

    async def run_async(self, *, timeout: float | None = None) -> list[T]:
        """Run inside asyncio and return every item, without blocking the event loop.

        Example:
            >>> import asyncio
            >>> asyncio.run(Stream.range(3).map(lambda x: x + 1).run_async())
            [1, 2, 3]
        """
        return await acollect(self, timeout)


def _default_clock() -> Clock:
    from zixir_actors._clock import SYSTEM_CLOCK

    return SYSTEM_CLOCK
