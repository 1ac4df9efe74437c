"""Async/await helpers: `async_`, `await_`, `parallel`, `pmap`, and their `Future`."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import Any, Generic, TypeVar

import pykka

from supervisors import ChildSpec, Down, SupervisedActor, SupervisorRef, monitor, whereis
from zixir_actors.errors import ConfigError, StageCrashedError, StreamTimeoutError
from zixir_actors.stream._pipeline import STREAMS_NAME
from zixir_actors.stream._stream import Stream

__all__ = ["DEFAULT_CONCURRENCY", "Future", "async_", "await_", "parallel", "pmap"]

T = TypeVar("T")
U = TypeVar("U")

DEFAULT_CONCURRENCY = 8
"""Calls at once for `pmap`, and the cap for `parallel` when `max_concurrency` is None."""

_ids = itertools.count(1)


class Future(Generic[T]):
    """The eventual result of `async_`: block with `get(timeout=...)` or `await` it.

    Example:
        >>> f = async_(sum, [1, 2, 3])
        >>> f.get(timeout=5.0)
        6
        >>> import asyncio
        >>> async def main():
        ...     return await async_(max, 4, 9)
        >>> asyncio.run(main())
        9
    """

    __slots__ = ("_future",)

    def __init__(self, future: concurrent.futures.Future[T] | None = None) -> None:
        self._future: concurrent.futures.Future[T] = future or concurrent.futures.Future()

    def get(self, timeout: float | None = None) -> T:
        """The result, or the exception the call raised, re-raised here.

        `timeout` may be given by position, as with Pykka's and concurrent.futures'
        futures (``future.get(5.0)``).

        Raises:
            StreamTimeoutError: no result within `timeout` seconds.
        """
        try:
            return self._future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise StreamTimeoutError("future", timeout) from None

    def done(self) -> bool:
        return self._future.done()

    def add_done_callback(self, fn: Callable[[Future[T]], object]) -> None:
        """Call `fn(self)` once the result is set (at once if it already is)."""
        self._future.add_done_callback(lambda _: fn(self))

    def __await__(self) -> Generator[Any, None, T]:
        return asyncio.wrap_future(self._future).__await__()

    def __repr__(self) -> str:
        return f"<Future {'done' if self.done() else 'pending'}>"


class _Task(SupervisedActor):
    """Runs one call, resolves its future, and stops itself."""

    use_daemon_thread = True  # like a daemon executor thread: exit does not wait for it

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                 future: concurrent.futures.Future[Any]) -> None:
        super().__init__()
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.future = future

    def on_receive(self, message: Any) -> Any:
        try:
            result = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:
            self.future.set_exception(exc)
        else:
            self.future.set_result(result)
        finally:
            self.stop()
        return None


def async_(fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
    """Start `fn(*args, **kwargs)` in its own actor and return its `Future` at once.

    Example:
        >>> f = async_(pow, 2, 10)
        >>> await_(f, timeout=5.0)
        1024

    The actor is a temporary child of the runtime's `zixir.streams`
    supervisor when it runs, a standalone actor otherwise; it stops once the
    call returns. The caller's trace context travels with the call.

    Raises:
        ConfigError: `fn` is not callable.
    """
    if not callable(fn):
        raise ConfigError("fn", fn, "must be callable")
    future: concurrent.futures.Future[T] = concurrent.futures.Future()
    kw = {"fn": fn, "args": args, "kwargs": kwargs, "future": future}
    streams = whereis(STREAMS_NAME)
    ref: pykka.ActorRef[Any] | None = None
    if streams is not None and streams.is_alive():
        try:
            ref = SupervisorRef(streams).start_child(
                ChildSpec(id=f"async-{next(_ids)}", start=_Task, kwargs=kw, restart="temporary"))
        except pykka.ActorDeadError:
            ref = None
    if ref is None:
        ref = _Task.start(**kw)
    name = f"async_({getattr(fn, '__name__', type(fn).__name__)})"

    def on_down(down: Down) -> None:
        # Stopped before the call returned (killed, the runtime shutting down).
        if not future.done():
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                future.set_exception(StageCrashedError(name, down.reason))

    monitor(ref, watcher=on_down)
    ref.tell("run")
    return Future(future)


def _get(future: Any, remaining: float | None) -> Any:
    if isinstance(future, Future):
        return future.get(timeout=remaining)
    if isinstance(future, concurrent.futures.Future):
        try:
            return future.result(remaining)
        except concurrent.futures.TimeoutError:
            raise StreamTimeoutError("future", remaining) from None
    if isinstance(future, pykka.Future):
        try:
            return future.get(timeout=remaining)
        except pykka.Timeout:
            raise StreamTimeoutError("future", remaining) from None
    raise ConfigError("future", future, "expected a Future, a pykka.Future or a "
                                        "concurrent.futures.Future")


def await_(future: Any, *, timeout: float | None = None) -> Any:
    """Wait for a future, or for each of a list of futures, under one deadline.

    Example:
        >>> await_([async_(abs, -1), async_(abs, -2)], timeout=5.0)
        [1, 2]

    Raises:
        StreamTimeoutError: not every result arrived within `timeout` seconds.
        ConfigError: something other than a future was given.
        Exception: what a call raised.
    """
    deadline = None if timeout is None else time.monotonic() + timeout

    def remaining() -> float | None:
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    try:
        if isinstance(future, (list, tuple)):
            return [_get(f, remaining()) for f in future]
        return _get(future, remaining())
    except StreamTimeoutError:
        raise StreamTimeoutError("await_", timeout) from None


def pmap(fn: Callable[[T], U], items: Iterable[T], *, concurrency: int = DEFAULT_CONCURRENCY,
         ordered: bool = True, timeout: float | None = None, executor: Any = None) -> list[U]:
    """`[fn(x) for x in items]` with up to `concurrency` calls at once.

    Example:
        >>> pmap(lambda x: x * 10, [1, 2, 3], concurrency=2)
        [10, 20, 30]

    ``executor="ray"`` (or an `Executor`) runs the calls there, still at most
    `concurrency` at once (see `Stream.map`).

    Raises:
        Exception: the first exception a call raised (its `stage` is ``"pmap(fn)"``);
            the calls still queued are not started.
        StreamTimeoutError: not finished within `timeout` seconds.
        ConfigError: `concurrency` is not a positive int.
    """
    name = f"pmap({getattr(fn, '__name__', type(fn).__name__)})"
    return Stream.from_iterable(list(items)).map(
        fn, concurrency=concurrency, ordered=ordered, name=name,
        executor=executor).to_list(timeout=timeout)


def parallel(fns: Sequence[Callable[[], T]], *, max_concurrency: int | None = None,
             timeout: float | None = None, executor: Any = None) -> list[T]:
    """Call each of `fns` (no arguments), up to `max_concurrency` at once; results in order.

    Example:
        >>> parallel([lambda: 1, lambda: 2], max_concurrency=2)
        [1, 2]

    Args:
        fns: zero-argument callables.
        max_concurrency: the cap (default: one per call, at most `DEFAULT_CONCURRENCY`).
        timeout: for all of them together.
        executor: where the calls run (as for `Stream.map`; default: the
            runtime's executor, this process unless configured).

    Raises:
        as `pmap` (the stage is ``"parallel"``).
    """
    calls = list(fns)
    for fn in calls:
        if not callable(fn):
            raise ConfigError("fns", fn, "every item must be callable")
    if not calls:
        return []
    cap = max_concurrency if max_concurrency is not None else min(len(calls), DEFAULT_CONCURRENCY)
    return Stream.from_iterable(calls).map(_call, concurrency=cap, name="parallel",
                                           executor=executor).to_list(timeout=timeout)


def _call(fn: Callable[[], T]) -> T:
    return fn()
