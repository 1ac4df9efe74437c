"""Live progress of code-first runs: what `ctx.emit` appends, and the readers of it.

Each run has a sequence of `ProgressItem`s. Emitted values (and parks and
ends) are stored in LMDB in groups: they ride along with the next step
checkpoint's commit, or are committed without a disk sync once 256 are
pending or 50 ms after the first pending one. A crash may therefore lose
the last group of progress items, never a checkpoint. Step starts and ends
are live-only items (the checkpoints themselves record what finished).

A reader (`read`) yields the stored items after its cursor first, then the
live ones of this process until the run ends; from another process it
reads the store until the run's record says it ended.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from zixir_actors._clock import SYSTEM_CLOCK
from zixir_actors.checkpoint import PROGRESS_DB, CheckpointClient
from zixir_actors.errors import ZixirTimeoutError

__all__ = ["FLUSH_AFTER", "FLUSH_EVERY", "ProgressItem", "ProgressKind", "ProgressLog",
           "ProgressStream", "log_for"]

ProgressKind = Literal["emit", "step_started", "step_finished", "parked", "ended"]
FLUSH_EVERY = 256
"""Pending progress items that trigger a commit (without a disk sync)."""
FLUSH_AFTER = 0.05
"""Seconds after which a pending progress item is committed at the latest."""
_LIVE_KEEP = 10_000  # live items kept in memory for readers that attach late
_STORED_KINDS = frozenset({"emit", "parked", "ended"})
_ENDED = frozenset({"succeeded", "failed", "cancelled", "timed_out", "interrupted"})
_POLL = 0.05


@dataclass(frozen=True, slots=True)
class ProgressItem:
    """One item of a run's progress stream.

    Attributes:
        seq: its position; pass it as `after=` to continue after it.
        time: wall time it was produced.
        kind: ``"emit"`` (`value` is what was emitted), ``"step_started"``,
            ``"step_finished"`` (`value` is the step's status), ``"parked"``
            (`value` says what the run waits for), ``"ended"`` (`value` is
            the run's final status).
        step: the step label (``"llm#2"``) for items of a step, else None.
        value: see `kind`.
    """

    seq: int
    time: float
    kind: ProgressKind
    step: str | None
    value: Any


class ProgressLog:
    """The progress of one run in this process (shared by its incarnations)."""

    def __init__(self, run_id: str, store: CheckpointClient) -> None:
        self.run_id = run_id
        self.store = store
        self.cond = threading.Condition(threading.Lock())
        self.live: deque[ProgressItem] = deque(maxlen=_LIVE_KEEP)
        self.pending: list[ProgressItem] = []
        self.ended = False
        self.readers = 0  # live readers: step starts and ends are only made for them
        self.next_seq = store.last_seq(PROGRESS_DB, run_id) + 1
        self._flush_armed = False

    def append(self, kind: ProgressKind, step: str | None, value: Any) -> ProgressItem:
        with self.cond:
            item = ProgressItem(self.next_seq, time.time(), kind, step, value)
            self.next_seq += 1
            self.live.append(item)
            store = kind in _STORED_KINDS
            if store:
                self.pending.append(item)
            flush_now = len(self.pending) >= FLUSH_EVERY
            arm = store and not flush_now and not self._flush_armed
            if arm:
                self._flush_armed = True
            self.cond.notify_all()
        if flush_now:
            self.flush()
        elif arm:
            from zixir_actors.workflow._timers import timers_for

            try:
                timers_for(SYSTEM_CLOCK).add(time.time() + FLUSH_AFTER, ("progress", id(self)),
                                             self.flush)
            except Exception:  # no timer (no thread to be had): an emit, a park or
                self.flush()  # a run's end must not fail for it; stored now instead
        return item

    def take_pending(self, batch: Any) -> None:
        """Move the pending items into `batch` (they commit with it)."""
        with self.cond:
            pending, self.pending = self.pending, []
        for item in pending:
            batch.put_progress(self.run_id, item.seq, _stored(item))

    def flush(self) -> None:
        """Commit pending items now, without a disk sync."""
        with self.cond:
            self._flush_armed = False
        batch = self.store.batch()
        self.take_pending(batch)
        if batch.ops:
            try:
                self.store.commit(batch, durable=False)
            except Exception:  # progress is best effort; checkpoints are not
                from zixir_actors.workflow._telemetry import log

                log.bind(run_id=self.run_id).warning("progress items could not be stored")

    def end(self) -> None:
        with self.cond:
            self.ended = True
            self.cond.notify_all()

    def reopen(self) -> None:
        with self.cond:
            self.ended = False


def _interrupted(record: Any, store: CheckpointClient) -> bool:
    """A run stored as running whose owner no longer lives: nothing more will come."""
    if record.status != "running" or record.owner is None:
        return False
    from zixir_actors.workflow._history import run_state

    return run_state(record, store.runtimes()).status == "interrupted"


def _stored(item: ProgressItem) -> tuple[Any, ...]:
    from zixir_actors import _codec
    from zixir_actors.errors import UnserializableError

    value = item.value
    try:
        _codec.encode(value)
    except UnserializableError:
        value = repr(value)
    return (item.time, item.kind, item.step, value)


_logs: dict[str, ProgressLog] = {}
_logs_lock = threading.Lock()


def log_for(run_id: str, store: CheckpointClient) -> ProgressLog:
    """The progress log of a run of this process (made on first use)."""
    with _logs_lock:
        found = _logs.get(run_id)
        if found is None or found.store is not store:
            found = _logs[run_id] = ProgressLog(run_id, store)
        return found


def forget(run_id: str) -> None:
    with _logs_lock:
        _logs.pop(run_id, None)


def _live_log(run_id: str) -> ProgressLog | None:
    with _logs_lock:
        return _logs.get(run_id)


class ProgressStream:
    """What `RunHandle.progress()` returns: iterate it with ``for`` or ``async for``.

    Args:
        run_id: the run.
        store: where its stored items are.
        after: continue after this `ProgressItem.seq` (default: from the start).
        timeout: seconds to wait for the run to end; then `ZixirTimeoutError`.
    """

    def __init__(self, run_id: str, store: CheckpointClient, *, after: int | None = None,
                 timeout: float | None = None) -> None:
        self.run_id = run_id
        self.store = store
        self.cursor = -1 if after is None else after
        self.timeout = timeout

    def __iter__(self) -> Iterator[ProgressItem]:
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            for seq, (at, kind, step, value) in self.store.progress(self.run_id, self.cursor):
                self.cursor = seq
                yield ProgressItem(seq, at, kind, step, value)
            log = _live_log(self.run_id)
            if log is not None:
                yield from self._follow(log, deadline)
                return
            record = self.store.find_run(self.run_id)
            if record is None or record.status in _ENDED or _interrupted(record, self.store):
                # One more read: items committed just before the end record.
                for seq, (at, kind, step, value) in self.store.progress(self.run_id,
                                                                         self.cursor):
                    self.cursor = seq
                    yield ProgressItem(seq, at, kind, step, value)
                return
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise ZixirTimeoutError(f"progress of run {self.run_id!r}", self.timeout)
            time.sleep(_POLL if left is None else min(_POLL, left))

    def _follow(self, log: ProgressLog, deadline: float | None) -> Iterator[ProgressItem]:
        with log.cond:
            log.readers += 1
        try:
            yield from self._follow_live(log, deadline)
        finally:
            with log.cond:
                log.readers -= 1

    def _follow_live(self, log: ProgressLog,
                     deadline: float | None) -> Iterator[ProgressItem]:
        while True:
            with log.cond:
                fresh = [item for item in log.live if item.seq > self.cursor]
                if not fresh:
                    if log.ended:
                        return
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise ZixirTimeoutError(f"progress of run {self.run_id!r}",
                                                self.timeout)
                    log.cond.wait(left)
                    continue
            if fresh[0].seq > self.cursor + 1:
                # Items older than the live window: read them from the store.
                for seq, (at, kind, step, value) in self.store.progress(
                        self.run_id, self.cursor, limit=fresh[0].seq - self.cursor - 1):
                    if seq >= fresh[0].seq:
                        break
                    self.cursor = seq
                    yield ProgressItem(seq, at, kind, step, value)
            for item in fresh:
                self.cursor = item.seq
                yield item

    async def __aiter__(self) -> AsyncIterator[ProgressItem]:
        iterator = iter(self)
        done = object()
        while True:
            item = await asyncio.to_thread(next, iterator, done)
            if item is done:
                return
            yield item  # type: ignore[misc]
