"""`QueueWorker` (``zixir.queues``): starts the queued runs this process can run.

Its thread looks at the store every `POLL_BUSY` seconds while some queue has
runs waiting that this process could start, every `POLL_IDLE` seconds
otherwise, and at once after an enqueue or the end of a run in this process.
A look is a read transaction; only when it finds a run it may start does it
claim, in one write transaction that checks again: the queue's global and
per-process concurrency (counted from the runs' stored statuses and their
owners' leases), its rate (a token bucket stored with the queue) and the
run's status. Claimed runs are stored as running, owned by this runtime,
then started: a run whose process dies right after its claim is taken over
like any running run.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from typing import Any

from supervisors import ChildSpec, SupervisedActor
from zixir_actors import _codec
from zixir_actors.errors import CorruptBlobError, RunActiveError
from zixir_actors.observability import logger, metrics
from zixir_actors.queue._queue import on_kick, started_here
from zixir_actors.queue._store import (
    PENDING_DB,
    RUNS_OF_DB,
    Db,
    Live,
    QueueConfig,
    configs,
    count_active,
    get_run,
    live_owners,
    name_prefix,
    put_run,
    rate_window,
    run_id_of_pending,
    scan,
    write_rate,
)

__all__ = ["DEFAULT_MAX_LOCAL", "POLL_BUSY", "POLL_IDLE", "QUEUES_NAME", "QueueWorker",
           "child_spec"]

QUEUES_NAME = "zixir.queues"
"""The registered name of the runtime's queue worker."""
POLL_BUSY = 0.02
"""Seconds between two looks at the store while runs wait that this process could start."""
POLL_IDLE = 0.05
"""Seconds between two looks at the store when no run waits for this process."""
DEFAULT_MAX_LOCAL = 64
"""Queued runs one process keeps running or parked at once, whatever the queues
allow (``start(queues={"max_local": n})``; 0: the process only enqueues)."""
CLAIM_BATCH = 16
"""Runs claimed in one write transaction at most."""
SCAN_LIMIT = 512
"""Waiting runs of one queue a look considers (the first ones in start order)."""

log = logger.bind(service="queues")
_RATE_SEEN_MAX = 10_000


@dataclass(slots=True)
class _Look:
    """What one pass over the queues found."""

    claimed: list[tuple[str, str, float, str]]  # (run_id, workflow, enqueued_at, queue)
    waiting: bool = False  # runs wait that this process could start
    next_token: float | None = None  # wall time a rate-limited queue gets a token back
    depths: dict[str, int] | None = None


class QueueWorker(SupervisedActor):
    """Claims and starts queued runs for this runtime (``zixir.queues``).

    Args:
        max_local: queued runs this process executes at once (default 64).
        find_workflow: name -> `Workflow` or None (the workflows defined here).
    """

    def __init__(self, *, max_local: int = DEFAULT_MAX_LOCAL, find_workflow: Any = None) -> None:
        super().__init__()
        if not isinstance(max_local, int) or isinstance(max_local, bool) or max_local < 0:
            from zixir_actors.errors import ConfigError

            raise ConfigError("max_local", max_local, "must be an integer >= 0")
        if find_workflow is None:
            from zixir_actors.workflow import find_workflow as default_find

            find_workflow = default_find
        self.find_workflow = find_workflow
        self.max_local = max_local
        self._halt = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._store: Any = None
        self._local: set[str] = set()
        self._local_lock = threading.Lock()
        self._rate_seen: set[str] = set()
        self._depth = metrics.gauge("zixir_queue_depth", "Runs waiting in a durable queue.",
                                    labels=("queue",))
        self._wait = metrics.histogram("zixir_queue_wait_seconds",
                                       "Seconds a queued run waited before it started.",
                                       labels=("queue",))
        self._limited = metrics.counter(
            "zixir_queue_rate_limited_total",
            "Queued runs held back by their queue's rate limit (each counted once per process).",
            labels=("queue",))

    def on_start(self) -> None:
        from zixir_actors.checkpoint import connect

        self._store = connect()
        on_kick(self.kick)
        self._thread = threading.Thread(target=self._serve, daemon=True, name="zixir-queues")
        self._thread.start()

    def on_receive(self, message: Any) -> Any:
        if message == "local":
            with self._local_lock:
                return sorted(self._local)
        raise TypeError(f"QueueWorker got an unknown message: {message!r}")

    def kick(self) -> None:
        self._wake.set()

    def on_stop(self) -> None:
        self._shutdown()

    def on_failure(self, *args: Any) -> None:
        self._shutdown()

    def _shutdown(self) -> None:
        on_kick(None)
        self._halt.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10.0)

    # -- the loop --

    def _serve(self) -> None:
        from zixir_actors._runtimes import current_owner

        while not self._halt.is_set():
            delay = POLL_IDLE
            try:
                me = current_owner()
                if me is not None:
                    delay = self._round(me)
            except Exception as exc:  # a failed look is retried at the next one
                log.warning("queue look failed", error=f"{type(exc).__name__}: {exc}")
            self._wake.wait(delay)
            self._wake.clear()

    def _round(self, me: str) -> float:
        with self._local_lock:
            room = self.max_local - len(self._local)
        if room <= 0:  # full (or max_local=0: this process only enqueues); a run's end kicks
            return POLL_IDLE
        look = self._look(me, room, write=False)
        for queue, depth in (look.depths or {}).items():
            self._depth.labels(queue).set(depth)
        if look.claimed and not self._halt.is_set():
            look = self._store.transact(lambda txn, db: self._pass(txn, db, me, room, True),
                                        durable=False)
            self._launch(look.claimed)
        delay = POLL_BUSY if look.waiting else POLL_IDLE
        if look.next_token is not None:
            delay = min(delay, max(0.0, look.next_token - time.time()))
        return 0.0 if look.claimed and look.waiting else delay

    def _look(self, me: str, room: int, *, write: bool) -> _Look:
        with self._store.snapshot() as (txn, db):
            return self._pass(txn, db, me, room, write)

    def _pass(self, txn: Any, db: Db, me: str, room: int, write: bool) -> _Look:
        """One pass over every queue: what may start here now (claimed if `write`)."""
        now = time.time()
        look = _Look([], depths={})
        live: Live | None = None
        for config in configs(txn, db):
            pending = list(scan(txn, db(PENDING_DB), name_prefix(config.name)))
            assert look.depths is not None
            look.depths[config.name] = len(pending)
            if not pending:
                continue
            # Start order holds within the first SCAN_LIMIT waiting runs: a process
            # does not decode a long tail of runs that only other processes define.
            mine = [(k, v) for k, v in pending[:SCAN_LIMIT] if self._runnable(v)]
            if not mine:
                continue
            if live is None:
                live = live_owners(txn, db, now)
            limit = self._capacity(txn, db, config, live, me, min(room, CLAIM_BATCH),
                                   write=write)
            starts = rate_window(txn, db, config, now)
            if config.rate is not None:
                tokens = config.rate[0] - len(starts)
                if tokens < min(limit, len(mine)):
                    self._note_limited(config.name, mine[max(0, tokens):])
                    refill = starts[0] + config.rate[1] if starts else now
                    look.next_token = refill if look.next_token is None else \
                        min(look.next_token, refill)
                limit = min(limit, max(0, tokens))
            taken = 0
            for key, value in mine:
                if taken >= limit:
                    break
                run_id = run_id_of_pending(config.name, key)
                record = get_run(txn, db, run_id)
                if record is None or record.status != "queued":
                    if write:  # cancelled or deleted meanwhile
                        txn.delete(key, db=db(PENDING_DB))
                    continue
                workflow, enqueued_at = _codec.decode(value, key="queued run")
                if write:
                    txn.delete(key, db=db(PENDING_DB))
                    txn.put(name_prefix(config.name) + run_id.encode(),
                            _codec.encode((me, now)), db=db(RUNS_OF_DB))
                    put_run(txn, db, replace(record, status="running", owner=me,
                                             waiting=None, updated_at=now))
                    starts.append(now)
                look.claimed.append((run_id, workflow, float(enqueued_at), config.name))
                taken += 1
                room -= 1
            if write and taken and config.rate is not None:
                write_rate(txn, db, config, starts)
            if len(mine) > taken:
                look.waiting = True
        return look

    def _runnable(self, value: bytes) -> bool:
        try:
            workflow, _ = _codec.decode(value, key="queued run")
        except (CorruptBlobError, TypeError, ValueError):
            return False
        return self.find_workflow(workflow) is not None

    def _capacity(self, txn: Any, db: Db, config: QueueConfig, live: Live, me: str,
                  room: int, *, write: bool) -> int:
        if config.concurrency is None and config.per_process is None and not write:
            return room
        # Counted (and the entries of ended runs dropped) in every claim, so the
        # queue's run index only holds runs that are still going.
        total, mine = count_active(txn, db, config.name, live, me, prune=write)
        limit = room
        if config.concurrency is not None:
            limit = min(limit, config.concurrency - total)
        if config.per_process is not None:
            limit = min(limit, config.per_process - mine)
        return max(0, limit)

    def _note_limited(self, queue: str, held: list[tuple[bytes, bytes]]) -> None:
        counter = self._limited.labels(queue)
        for key, _ in held:
            run_id = run_id_of_pending(queue, key)
            if run_id not in self._rate_seen:
                if len(self._rate_seen) >= _RATE_SEEN_MAX:
                    self._rate_seen.clear()
                self._rate_seen.add(run_id)
                counter.inc()

    def _launch(self, claimed: list[tuple[str, str, float, str]]) -> None:
        for run_id, workflow, enqueued_at, queue in claimed:
            self._wait.labels(queue).observe(max(0.0, time.time() - enqueued_at))
            self._rate_seen.discard(run_id)
            wf = self.find_workflow(workflow)
            record = self._store.find_run(run_id)
            if wf is None or record is None:
                continue
            try:
                handle = wf.start(dict(record.inputs), run_id=run_id)
                future = handle.future
            except RunActiveError:  # resumed here by start() meanwhile
                from zixir_actors.workflow._run import active_run

                control = active_run(run_id)
                if control is None:
                    continue
                future = control.future
            except Exception as exc:  # one run that cannot start must not stop the others
                log.bind(run_id=run_id, queue=queue).error(
                    "cannot start a queued run", error=f"{type(exc).__name__}: {exc}")
                self._fail(run_id, f"cannot start: {type(exc).__name__}: {exc}")
                continue
            with self._local_lock:
                self._local.add(run_id)
            started_here(run_id, future)
            future.add_done_callback(lambda _f, rid=run_id: self._ended(rid))

    def _ended(self, run_id: str) -> None:
        with self._local_lock:
            self._local.discard(run_id)
        self._wake.set()

    def _fail(self, run_id: str, error: str) -> None:
        def mark(txn: Any, db: Db) -> None:
            record = get_run(txn, db, run_id)
            if record is not None and record.status == "running":
                put_run(txn, db, replace(record, status="failed", error=error,
                                         updated_at=time.time()))

        try:
            self._store.transact(mark)
        except Exception as exc:
            log.bind(run_id=run_id).warning("cannot mark a run failed", error=str(exc))


def child_spec(*, max_local: int = DEFAULT_MAX_LOCAL) -> ChildSpec:
    """The spec of ``zixir.queues``.

    Example:
        >>> child_spec().name
        'zixir.queues'
    """
    return ChildSpec(id="queues", start=QueueWorker, kwargs={"max_local": max_local},
                     restart="permanent", shutdown=15.0, type="worker", name=QUEUES_NAME)
