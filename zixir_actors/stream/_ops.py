"""Chunk operators: the per-stage logic that fused stages run over lists of items.

Each operator turns one input chunk (a list) into one output chunk, keeping
whatever state it needs between chunks, and converts demand for its outputs
into demand for its inputs (`need`: k items per `batch(k)` list), so a stage
pulls no more upstream items than its downstream asked for. A fused stage
runs a chain of them inside one actor; consecutive `map`/`filter`/`tap` calls
are compiled into one loop (`fuse`), so the per-item cost is the user's
function calls and nothing else.
"""

from __future__ import annotations

import abc
import types
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Literal

from zixir_actors._clock import Clock

__all__ = [
    "Batch",
    "Distinct",
    "Filter",
    "FlatMap",
    "Fused",
    "Map",
    "OnError",
    "Op",
    "Scan",
    "Skip",
    "Take",
    "TakeWhile",
    "Tap",
    "Throttle",
    "Window",
    "flush_chain",
    "fuse",
    "need_of",
    "run_chain",
]

OnError = Literal["fail", "skip", "retry"]
"""What a stage does when its function raises: fail the pipeline (default),
drop the item, or call again up to `retries` times and then fail."""


class Op(abc.ABC):
    """One operator: `process` a chunk, `finish` at end of input, optional timer.

    Attributes:
        name: the stage name that errors and metrics report.
        done: set once the operator wants no more input (`take`, `take_while`).
        pending: outputs held that will be released without new input (throttle).
    """

    timed = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.done = False
        self.pending = 0

    @abc.abstractmethod
    def process(self, items: list[Any]) -> list[Any]:
        """Transform one chunk of items; return what goes downstream."""

    def need(self, n: int) -> int:
        """Input items to take so that this operator can emit `n` more items.

        One input per output unless the operator says otherwise; an operator
        that may drop items (filter) asks again once it has seen the result.
        """
        return n

    def finish(self) -> list[Any]:
        return []

    def deadline(self) -> float | None:
        return None

    def tick(self, now: float) -> list[Any]:
        return []


class _Call(Op):
    """Base of the operators that call a user function once per item."""

    def __init__(self, name: str, fn: Callable[..., Any], on_error: OnError, retries: int) -> None:
        super().__init__(name)
        self.fn = fn
        self.on_error = on_error
        self.tries = 1 + (retries if on_error != "fail" else 0)
        self.skipped = 0

    def process(self, items: list[Any]) -> list[Any]:
        if self.on_error == "fail":
            return self.fast(items)
        out: list[Any] = []
        for item in items:
            error: Exception | None = None
            for _ in range(self.tries):
                try:
                    out.extend(self.one(item))
                    error = None
                    break
                except Exception as exc:
                    error = exc
            if error is not None:
                if self.on_error == "retry":
                    raise error
                self.skipped += 1
        return out

    @abc.abstractmethod
    def fast(self, items: list[Any]) -> list[Any]:
        """The whole chunk at once (the path when no item fails)."""

    @abc.abstractmethod
    def one(self, item: Any) -> Iterable[Any]:
        """One item, for `on_error` handling item by item."""


class Map(_Call):
    def fast(self, items: list[Any]) -> list[Any]:
        fn = self.fn
        return [fn(x) for x in items]

    def one(self, item: Any) -> Iterable[Any]:
        return (self.fn(item),)


class Filter(_Call):
    def fast(self, items: list[Any]) -> list[Any]:
        fn = self.fn
        return [x for x in items if fn(x)]

    def one(self, item: Any) -> Iterable[Any]:
        return (item,) if self.fn(item) else ()


class FlatMap(_Call):
    def fast(self, items: list[Any]) -> list[Any]:
        fn = self.fn
        return [y for x in items for y in fn(x)]

    def one(self, item: Any) -> Iterable[Any]:
        return list(self.fn(item))


class Tap(_Call):
    def fast(self, items: list[Any]) -> list[Any]:
        fn = self.fn
        for x in items:
            fn(x)
        return items

    def one(self, item: Any) -> Iterable[Any]:
        self.fn(item)
        return (item,)


class Take(Op):
    def __init__(self, name: str, n: int) -> None:
        super().__init__(name)
        self.left = n
        self.done = n <= 0

    def need(self, n: int) -> int:
        return min(n, self.left)

    def process(self, items: list[Any]) -> list[Any]:
        if len(items) < self.left:
            self.left -= len(items)
            return items
        out, self.left, self.done = items[: self.left], 0, True
        return out


class Skip(Op):
    def __init__(self, name: str, n: int) -> None:
        super().__init__(name)
        self.left = n

    def need(self, n: int) -> int:
        return n + max(0, self.left)

    def process(self, items: list[Any]) -> list[Any]:
        if self.left <= 0:
            return items
        out = items[self.left:]
        self.left -= len(items) - len(out)
        return out


class TakeWhile(Op):
    def __init__(self, name: str, pred: Callable[[Any], object]) -> None:
        super().__init__(name)
        self.pred = pred

    def process(self, items: list[Any]) -> list[Any]:
        pred = self.pred
        for i, x in enumerate(items):
            if not pred(x):
                self.done = True
                return items[:i]
        return items


class Scan(Op):
    def __init__(self, name: str, fn: Callable[[Any, Any], Any], initial: Any) -> None:
        super().__init__(name)
        self.fn = fn
        self.acc = initial

    def process(self, items: list[Any]) -> list[Any]:
        fn, acc = self.fn, self.acc
        out: list[Any] = []
        append = out.append
        for x in items:
            acc = fn(acc, x)
            append(acc)
        self.acc = acc
        return out


class Distinct(Op):
    def __init__(self, name: str, key: Callable[[Any], Hashable] | None) -> None:
        super().__init__(name)
        self.key = key
        self.seen: set[Hashable] = set()

    def process(self, items: list[Any]) -> list[Any]:
        seen, add, key = self.seen, self.seen.add, self.key
        if key is None:
            return [x for x in items if not (x in seen or add(x))]
        out = []
        for x in items:
            k = key(x)
            if k not in seen:
                add(k)
                out.append(x)
        return out


class Batch(Op):
    """Lists of `size` items; with `timeout`, a partial list after that long without input."""

    timed = True

    def __init__(self, name: str, size: int, timeout: float | None, clock: Clock) -> None:
        super().__init__(name)
        self.size = size
        self.timeout = timeout
        self.clock = clock
        self.buf: list[Any] = []
        self.last = 0.0

    def need(self, n: int) -> int:
        return max(0, n * self.size - len(self.buf))

    def process(self, items: list[Any]) -> list[Any]:
        if not items:
            return items
        buf = self.buf
        buf.extend(items)
        size = self.size
        full = len(buf) - len(buf) % size
        out = [buf[i:i + size] for i in range(0, full, size)]
        self.buf = buf[full:] if full else buf
        if self.timeout is not None:
            self.last = self.clock.monotonic()
        return out

    def finish(self) -> list[Any]:
        out, self.buf = ([self.buf] if self.buf else []), []
        return out

    def deadline(self) -> float | None:
        return self.last + self.timeout if self.buf and self.timeout is not None else None

    def tick(self, now: float) -> list[Any]:
        due = self.deadline()
        return self.finish() if due is not None and now >= due else []


class Window(Op):
    """Sliding windows: lists of `size` consecutive items, one every `step` items."""

    def __init__(self, name: str, size: int, step: int) -> None:
        super().__init__(name)
        self.size = size
        self.step = step
        self.buf: deque[Any] = deque(maxlen=size)
        self.seen = 0

    def need(self, n: int) -> int:
        if n <= 0:
            return 0
        seen, size, step = self.seen, self.size, self.step
        first = size - seen if seen < size else step - (seen - size) % step
        return first + (n - 1) * step

    def process(self, items: list[Any]) -> list[Any]:
        buf, size, step, out = self.buf, self.size, self.step, []
        seen = self.seen
        for x in items:
            buf.append(x)
            seen += 1
            if seen >= size and (seen - size) % step == 0:
                out.append(list(buf))
        self.seen = seen
        return out


class Throttle(Op):
    """At most one item every `per / rate` seconds; the rest wait (and count as pending)."""

    timed = True

    def __init__(self, name: str, rate: float, per: float, clock: Clock) -> None:
        super().__init__(name)
        self.interval = per / rate
        self.clock = clock
        self.queue: deque[Any] = deque()
        self.next_at = float("-inf")

    def need(self, n: int) -> int:
        return max(0, n - len(self.queue))

    def process(self, items: list[Any]) -> list[Any]:
        self.queue.extend(items)
        return self.tick(self.clock.monotonic())

    def tick(self, now: float) -> list[Any]:
        out = []
        queue, interval = self.queue, self.interval
        while queue and now >= self.next_at:
            out.append(queue.popleft())
            # Keep the schedule when a tick fires a little late; restart it after idling.
            start = self.next_at if self.next_at > now - interval else now
            self.next_at = start + interval
        self.pending = len(queue)
        return out

    def finish(self) -> list[Any]:
        # End of input does not lift the rate limit: the stage drains by ticks.
        return []

    def deadline(self) -> float | None:
        return self.next_at if self.queue else None


_FUSIBLE = {Map: "map", Filter: "filter", Tap: "tap"}

_compiled: dict[tuple[str, ...], tuple[Callable[..., Any], dict[int, int]]] = {}


def _compile(kinds: tuple[str, ...]) -> tuple[Callable[..., Any], dict[int, int]]:
    """One loop running `kinds` over each item of a chunk, built once per shape.

    Returns a factory taking the functions, and the line of each call, to
    name the operator that raised at no cost per item.
    """
    found = _compiled.get(kinds)
    if found is not None:
        return found
    fns = [f"f{i}" for i in range(len(kinds))]
    lines: list[str] = [f"def make({', '.join(fns)}):"]
    calls: dict[int, int] = {}
    lines += ["    def process(items):", "        out = []", "        append = out.append",
              "        for x in items:"]
    for i, kind in enumerate(kinds):
        calls[len(lines) + 1] = i
        if kind == "map":
            lines.append(f"            x = f{i}(x)")
        elif kind == "tap":
            lines.append(f"            f{i}(x)")
        else:
            lines += [f"            if not f{i}(x):", "                continue"]
    lines += ["            append(x)", "        return out"]
    lines += ["    return process"]
    namespace: dict[str, Any] = {}
    exec(compile("\n".join(lines), f"<zixir fused {'-'.join(kinds)}>", "exec"), namespace)
    found = (namespace["make"], calls)
    _compiled[kinds] = found
    return found


class Fused(Op):
    """Consecutive `map`/`filter`/`tap` calls (``on_error="fail"``) as one compiled loop.

    The plain loop a person would write by hand: no intermediate list per
    operator, no method call per operator and chunk. An exception names the
    operator whose function raised, found from the line of the loop it came from.
    """

    def __init__(self, members: list[_Call]) -> None:
        super().__init__("+".join(op.name for op in members))
        self.members = members
        make, self.calls = _compile(tuple(_FUSIBLE[type(op)] for op in members))
        self._process = make(*(op.fn for op in members))

    def process(self, items: list[Any]) -> list[Any]:
        try:
            return self._process(items)  # type: ignore[no-any-return]
        except Exception as exc:
            raise self._failed(exc) from exc

    def _line(self, tb: types.TracebackType | None) -> int | None:
        while tb is not None:
            if tb.tb_frame.f_code is self._process.__code__:
                return tb.tb_lineno
            tb = tb.tb_next
        return None

    def _failed(self, exc: Exception) -> _OpFailed:
        line = self._line(exc.__traceback__)
        index = self.calls.get(line, 0) if line is not None else 0
        return _OpFailed(self.members[index], exc)


def fuse(ops: list[Op]) -> list[Op]:
    """`ops` with each run of plain `map`/`filter`/`tap` replaced by one `Fused` op."""
    out: list[Op] = []
    run: list[_Call] = []
    for op in [*ops, None]:
        if op is not None and type(op) in _FUSIBLE and op.on_error == "fail":  # type: ignore[attr-defined]
            run.append(op)  # type: ignore[arg-type]
            continue
        if run:
            out.append(Fused(run))
            run = []
        if op is not None:
            out.append(op)
    return out


def need_of(ops: list[Op], n: int, start: int = 0) -> int:
    """Input items `ops[start:]` must take to emit `n` more items (0: wait, e.g. for ticks)."""
    for i in range(len(ops) - 1, start - 1, -1):
        if n <= 0:
            return 0
        n = ops[i].need(n)
    return max(0, n)


def run_chain(ops: list[Op], items: list[Any], start: int = 0) -> list[Any]:
    """Pass `items` through `ops[start:]`; an exception carries the failing op in `op`."""
    for i in range(start, len(ops)):
        if not items:
            return items
        op = ops[i]
        try:
            items = op.process(items)
        except _OpFailed:
            raise
        except Exception as exc:
            raise _OpFailed(op, exc) from exc
    return items


def flush_chain(ops: list[Op], start: int = 0) -> tuple[list[Any], int | None]:
    """End of input at `ops[start]`: finish each op and pass what it releases downstream.

    Returns the items released and, if an op still holds pending items (a
    throttle draining by ticks), its index: flushing resumes after it once
    its pending count reaches zero.
    """
    carry: list[Any] = []
    for i in range(start, len(ops)):
        op = ops[i]
        try:
            carry = (op.process(carry) if carry else []) + op.finish()
        except _OpFailed:
            raise
        except Exception as exc:
            raise _OpFailed(op, exc) from exc
        if op.pending:
            return carry, i
    return carry, None


class _OpFailed(Exception):
    """Internal: an op raised; `op` names it, `error` is the original exception."""

    def __init__(self, op: Op, error: BaseException) -> None:
        super().__init__(op.name)
        self.op = op
        self.error = error


OpFailed = _OpFailed
