"""`Queue`: durable queues of workflow runs, shared by every process on a data directory."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import re
import threading
import time
import uuid
import weakref
from collections.abc import Generator, Mapping
from typing import Any

from zixir_actors.checkpoint import CheckpointClient, connect
from zixir_actors.errors import ConfigError, ZixirTimeoutError
from zixir_actors.queue._store import (
    MAX_PRIORITY,
    QueueConfig,
    cancel_in,
    enqueue_in,
)
from zixir_actors.workflow import RunHandle, RunResult, Workflow

__all__ = ["RESULT_POLL", "Queue", "QueuedRunHandle", "parse_rate"]

RESULT_POLL = 0.05
"""Seconds between two looks at the store while a handle waits for a run that
executes in another process."""
_ENDED = frozenset({"succeeded", "failed", "cancelled", "timed_out"})
_UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
          "h": 3600.0, "hour": 3600.0, "d": 86400.0, "day": 86400.0}
_RATE = re.compile(r"\s*(\d+)\s*/\s*(\d*\.?\d*)\s*([a-z]+)\s*")

# run id -> futures of handles waiting here for a run this process may execute
_waiting: dict[str, weakref.WeakSet[concurrent.futures.Future[RunResult]]] = {}
_waiting_lock = threading.Lock()
_SWEEP_AT = 1024
_kick_hooks: list[Any] = []


def parse_rate(rate: str | tuple[int, float] | None) -> tuple[int, float] | None:
    """``"60/min"``, ``"20/s"``, ``"1000/h"``, ``"5/10s"`` or ``(60, 60.0)`` -> (count, seconds).

    Raises:
        ConfigError: anything else.
    """
    if rate is None:
        return None
    if isinstance(rate, tuple) and len(rate) == 2:
        count, per = rate
        if isinstance(count, int) and not isinstance(count, bool) and count >= 1 \
                and isinstance(per, (int, float)) and per > 0:
            return count, float(per)
        raise ConfigError("rate", rate, "needs (count >= 1, seconds > 0)")
    if isinstance(rate, str):
        match = _RATE.fullmatch(rate.lower())
        if match is not None:
            unit = match.group(3)
            seconds = _UNITS.get(unit) or _UNITS.get(unit.rstrip("s"))
            times = float(match.group(2)) if match.group(2) else 1.0
            count = int(match.group(1))
            if seconds and count >= 1 and times > 0:
                return count, times * seconds
    raise ConfigError("rate", rate, "must look like '60/min', '20/s', '1000/h' or (60, 60.0)")


def _limit(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(name, value, "must be an integer >= 1 or None")
    return value


class Queue:
    """A durable queue of workflow runs, shared by every process on the data directory.

    Example:
        >>> import tempfile, zixir_actors
        >>> from zixir_actors import Queue, Workflow
        >>> wf = Workflow("doc-queued")
        >>> @wf.step()
        ... def echo(text):
        ...     return text.upper()
        >>> llm = Queue("doc-llm", concurrency=2, rate="60/min")
        >>> with zixir_actors.start(data_dir=tempfile.mkdtemp()):
        ...     handle = llm.enqueue(wf, {"text": "hi"})
        ...     handle.result(timeout=30).outputs["echo"]
        'HI'

    `enqueue` stores the run as ``"queued"`` and returns at once; the
    ``zixir.queues`` worker of any runtime on the directory that has the
    workflow defined starts it, when the queue's limits allow:

    - `concurrency`: runs of this queue running (or parked) at once, across
      every process on the directory;
    - `per_process`: the same, in one process;
    - `rate`: a token bucket shared by every process: a run takes a token to
      start and each token comes back `per` seconds after it was taken, so at
      most `count` runs start in any window of `per` seconds, however many
      workers there are.

    Each decision is made in one LMDB write transaction that reads what the
    store says (runs' statuses and owners' leases), so nothing is counted in
    memory and nothing drifts when a process is killed. A run whose process
    died keeps its slot while a live runtime that defines its workflow will
    take it over (and continue it); with none, the slot is free. Queued runs
    survive the death of every process and start after the next
    `zixir_actors.start()`.

    The limits are stored with the queue by each `enqueue`: declare a queue
    the same way in every process (the last enqueue's limits hold).

    Args:
        name: the queue's name (non-empty, no NUL).
        concurrency: global cap (None: no cap).
        per_process: cap per process (None: no cap).
        rate: ``"60/min"``, ``"20/s"``, ``"1000/h"``, ``"5/10s"`` or ``(count, seconds)``.
        priority: honour `enqueue(priority=...)` (higher starts first); without
            it runs start in enqueue order.
        store: the checkpoint store (default the runtime's).

    Raises:
        ConfigError: a bad name or limit.
    """

    def __init__(self, name: str, concurrency: int | None = None,
                 per_process: int | None = None,
                 rate: str | tuple[int, float] | None = None, priority: bool = False, *,
                 store: CheckpointClient | None = None) -> None:
        if not isinstance(name, str) or not name or "\x00" in name or name.startswith("\xff"):
            raise ConfigError("queue name", name, "must be a non-empty string without NUL")
        self.name = name
        self.config = QueueConfig(name, _limit("concurrency", concurrency),
                                  _limit("per_process", per_process), parse_rate(rate),
                                  bool(priority))
        self.store = store

    def __repr__(self) -> str:
        c = self.config
        return (f"Queue({self.name!r}, concurrency={c.concurrency}, "
                f"per_process={c.per_process}, rate={c.rate}, priority={c.priority})")

    def _client(self) -> CheckpointClient:
        return self.store if self.store is not None else connect()

    def enqueue(self, workflow: Workflow, inputs: Mapping[str, Any] | None = None, *,
                run_id: str | None = None, priority: int = 0,
                dedupe_key: str | None = None) -> QueuedRunHandle:
        """Queue a run of `workflow` and return its handle at once.

        Example:
            ``handle = llm.enqueue(summarize, {"url": u}, dedupe_key=u)``

        Args:
            workflow: the workflow to run (any process that defines a workflow
                of this name may run it).
            inputs: its inputs (checked as `Workflow.start` checks them).
            run_id: the run's id (default a new uuid); the id of an ended run
                of this workflow queues it again (it continues from its checkpoints).
            priority: with ``Queue(priority=True)``, higher starts first.
            dedupe_key: refuse a second run with this key while the first is
                queued, running or parked (once it ended the key is free again).

        Raises:
            DuplicateRunError: `dedupe_key` (or `run_id`) belongs to a run that
                is queued, running or parked: the error names that run; the
                existing handle is `handle(error.run_id)`. Nothing is stored.
            ConfigError: bad inputs, run id or priority.
            WorkflowError: `run_id` is a run of another workflow.
            NotStartedError: no store (start the runtime first).
            UnserializableError: the inputs cannot be stored.
        """
        checked = workflow.validate_inputs(inputs)
        if run_id is None:
            run_id = uuid.uuid4().hex
        elif not isinstance(run_id, str) or not run_id or "\x00" in run_id:
            raise ConfigError("run_id", run_id, "must be a non-empty string without NUL")
        if not isinstance(priority, int) or isinstance(priority, bool) or \
                abs(priority) > MAX_PRIORITY:
            raise ConfigError("priority", priority, f"must be an integer within "
                                                    f"+-{MAX_PRIORITY}")
        if priority and not self.config.priority:
            raise ConfigError("priority", priority,
                              f"queue {self.name!r} was declared without priority=True")
        if dedupe_key is not None and (not isinstance(dedupe_key, str) or not dedupe_key
                                       or "\x00" in dedupe_key):
            raise ConfigError("dedupe_key", dedupe_key, "must be a non-empty string without NUL")
        client = self._client()
        now = time.time()
        handle = QueuedRunHandle(run_id, workflow, client)  # registered before any start
        try:
            client.transact(lambda txn, db: enqueue_in(
                txn, db, self.config, workflow.name, run_id, checked, priority=priority,
                dedupe_key=dedupe_key, now=now))
        except BaseException:
            handle._forget()
            raise
        kick()
        return handle

    def handle(self, run_id: str, workflow: Workflow) -> QueuedRunHandle:
        """A handle on a run of this queue (e.g. the one a `DuplicateRunError` names)."""
        return QueuedRunHandle(run_id, workflow, self._client())

    def stats(self) -> Any:
        """This queue's `QueueStats` (depth, running, oldest wait)."""
        from zixir_actors.queue._store import QueueConfig as _Config
        from zixir_actors.queue._store import QueueStats, stats

        with self._client().snapshot() as (txn, db):
            for found in stats(txn, db, time.time()):
                if found.name == self.name:
                    return found
        return QueueStats(self.name, 0, 0, 0.0, _Config(self.name))


class QueuedRunHandle(RunHandle):
    """The handle of a queued run: it works in the enqueuing process wherever the run executes.

    `result`, `wait` and ``await`` follow the run in this process when it runs
    here, else read its stored record every `RESULT_POLL` seconds; each takes
    a timeout. `cancel` takes a run that has not started off its queue.
    """

    def __init__(self, run_id: str, workflow: Workflow, store: CheckpointClient) -> None:
        self.workflow = workflow
        future: concurrent.futures.Future[RunResult] = concurrent.futures.Future()
        super().__init__(run_id, future, self._cancel_run, store=store)
        with _waiting_lock:
            if len(_waiting) >= _SWEEP_AT:  # handles dropped without waiting for their run
                for key in [k for k, v in _waiting.items() if not v]:
                    del _waiting[key]
            _waiting.setdefault(run_id, weakref.WeakSet()).add(future)

    def _forget(self) -> None:
        with _waiting_lock:
            found = _waiting.get(self.run_id)
            if found is not None:
                found.discard(self.future)
                if not found:
                    del _waiting[self.run_id]

    def _cancel_run(self, run_id: str) -> bool:
        store = self._store
        if store.transact(lambda txn, db: cancel_in(txn, db, run_id, time.time())):
            return True
        return bool(self.workflow.cancel(run_id, store=store))

    def _poll(self) -> bool:
        """Resolve the future from the store if the run ended; True once done."""
        if self.future.done():
            return True
        record = self._store.find_run(self.run_id)
        if record is None or record.status not in _ENDED:
            return False
        from zixir_actors.workflow._durable import stored_result

        result = stored_result(self.workflow, record, self._store)
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            self.future.set_result(result)  # unless it ended here at the same moment
        self._forget()
        return True

    def status(self) -> str:
        """``"queued"``, ``"running"``, ``"parked"`` or how the run ended."""
        if self.future.done():
            return super().status()
        record = self._store.find_run(self.run_id)
        return "queued" if record is None else str(record.status)

    def result(self, *, timeout: float | None = None) -> RunResult:
        """Wait for the run to end and return its `RunResult`.

        Raises:
            ZixirTimeoutError: it did not end within `timeout` seconds (it stays queued
                or keeps running).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._poll():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise ZixirTimeoutError(f"run {self.run_id!r}", timeout)
            try:
                self.future.result(RESULT_POLL if left is None else min(left, RESULT_POLL))
            except concurrent.futures.TimeoutError:
                continue
        return self.future.result()

    def wait(self, *, timeout: float | None = None) -> str:
        """Wait until the run ends or parks; return its status.

        Raises:
            ZixirTimeoutError: neither happened within `timeout` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._poll():
                return self.status()
            status = self.status()
            if status not in ("queued", "running"):
                return status
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise ZixirTimeoutError(f"run {self.run_id!r}", timeout)
            try:
                self.future.exception(RESULT_POLL if left is None else min(left, RESULT_POLL))
            except concurrent.futures.TimeoutError:
                continue

    def __await__(self) -> Generator[Any, None, RunResult]:
        return asyncio.to_thread(self.result).__await__()


def started_here(run_id: str, future: concurrent.futures.Future[RunResult]) -> None:
    """The worker of this process started `run_id`: its handles here follow `future`."""
    with _waiting_lock:
        waiters = list(_waiting.pop(run_id, ()))
    if not waiters:
        return

    def relay(done: concurrent.futures.Future[RunResult]) -> None:
        for waiter in waiters:
            if waiter.done():
                continue
            try:
                error = done.exception()
                if error is not None:
                    waiter.set_exception(error)
                else:
                    waiter.set_result(done.result())
            except concurrent.futures.InvalidStateError:
                pass

    future.add_done_callback(relay)


def on_kick(fn: Any) -> None:
    """Call `fn()` after every enqueue in this process (the worker wakes at once);
    None: nobody listens any more."""
    _kick_hooks[:] = [] if fn is None else [fn]


def kick() -> None:
    for fn in list(_kick_hooks):
        fn()
