"""Streams and async: lazy actor pipelines with backpressure, and async/await helpers.

Example:
    >>> from zixir_actors.stream import Stream, pmap
    >>> Stream.range(10).map(lambda x: x * 3).filter(lambda x: x % 2 == 0).batch(2).to_list()
    [[0, 6], [12, 18], [24]]
    >>> pmap(len, ["a", "bb", "ccc"], concurrency=2)
    [1, 2, 3]

A `Stream` is a description; a terminal (`to_list`, iteration, `async for`,
`run_async`...) runs it as Pykka actors exchanging chunks of items.
Consecutive operators are fused into one actor (consecutive `map`, `filter`
and `tap` into one compiled loop); `async_boundary()`, `buffer(n)`,
`map(concurrency=N)`, `merge`, `zip` and `chain` start new actors. A run is a
`rest_for_one` supervisor over its stages, under the runtime's
`zixir.streams` dynamic supervisor (see `child_spec`) when it is running, and
a top-level supervisor of its own otherwise, so streams work without
`zixir_actors.start()`.

Backpressure, exactly. Demand flows from the consumer to the source and is
counted in source items: a stage asks upstream only for the items its own
demand needs (k per list after `batch(k)`, n + k for `skip(k)`), and only
what the user asked for holds items ahead of demand:

- `buffer(n)`: up to n items (n lists of k after `batch(k)`, so n * k source
  items); a source's ``buffer=n``: n items;
- `map(fn, concurrency=N)`: up to N items in calls (or the `buffer(n)` just
  before it, if larger); `merge`, `zip`, `chain`: one chunk per input;
- the terminal: a window of `DEFAULT_BUFFER` source items when the pipeline
  has none of the above, else one chunk, C = min(`DEFAULT_CHUNK`, the
  smallest bound), in source items (rounded up to whole lists after `batch`).

`Stream.bound()` is that sum, and a producer is never more than
`bound()` items ahead of a slow consumer, whatever the terminal (`for`,
`for_each`, `to_list`, `reduce`, `async for`, `run_async`): with one
`buffer(n)`, n + min(`DEFAULT_CHUNK`, n). A chunk never exceeds C, and a
terminal returns demand in half-window steps as its consumer goes.

    >>> Stream.range(10**6).buffer(128).map(str).bound()  # 128 + one chunk of 128
    256
    >>> Stream.range(10**6).buffer(16).batch(8).buffer(4).bound()  # 16 + 4 * 8 + 16
    64

Only `buffer(n, overflow="drop_...")` does not hold a source back: it drops.
"""

from __future__ import annotations

from typing import Any

from supervisors import ChildSpec, DynamicSupervisor
from zixir_actors.stream._async import (
    DEFAULT_CONCURRENCY,
    Future,
    async_,
    await_,
    parallel,
    pmap,
)
from zixir_actors.stream._ops import OnError
from zixir_actors.stream._pipeline import DEFAULT_BUFFER, DEFAULT_CHUNK, STREAMS_NAME
from zixir_actors.stream._stream import DEFAULT_RETRIES, Overflow, Stream

__all__ = [
    "DEFAULT_BUFFER",
    "DEFAULT_CHUNK",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_RETRIES",
    "STREAMS_NAME",
    "Future",
    "OnError",
    "Overflow",
    "Stream",
    "async_",
    "await_",
    "child_spec",
    "parallel",
    "pmap",
]


def child_spec(*, max_children: int | None = None, **options: Any) -> ChildSpec:
    """The `zixir.streams` dynamic supervisor that running pipelines start under.

    Example:
        >>> spec = child_spec()
        >>> spec.name
        'zixir.streams'

    Args:
        max_children: cap on pipelines (and `async_` calls) running at once.
        **options: passed to `DynamicSupervisor.child_spec` (`restart`, `shutdown`...).
    """
    options.setdefault("id", "streams")
    return DynamicSupervisor.child_spec(options.pop("id"), name=STREAMS_NAME,
                                        max_children=max_children, **options)
