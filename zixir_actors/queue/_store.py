"""The records of durable queues in LMDB, and the transactions that change them.

Sub-databases (opened by the checkpoint store at start):

- ``zixir.queues``: queue name -> its limits (a dict); ``name NUL rate`` -> the
  start times of its last runs (packed doubles: the rate's token bucket);
  `MARK` -> a sequence number bumped by every enqueue (workers watch it).
- ``zixir.queued``: ``queue NUL priority seq run_id`` -> ``(workflow, enqueued_at)``:
  the waiting runs, in the order they start.
- ``zixir.queue_runs``: ``queue NUL run_id`` -> ``(owner, started_at)``: the runs a
  queue started; a run counts against the queue's concurrency while its record
  says running or parked and its owner's lease holds, or a live runtime that
  defines its workflow will take it over (`Live.holds`).
- ``zixir.queue_keys``: ``queue NUL dedupe_key`` -> run id.

Every decision (dedupe, concurrency, rate) is a read-check-write inside one
LMDB write transaction, which LMDB serializes across every process on the
directory: nothing is counted in memory, so nothing drifts after a kill -9.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from zixir_actors import _codec
from zixir_actors.checkpoint import RUNS_DB, RUNTIMES_DB, RunRecord
from zixir_actors.errors import CorruptBlobError, DuplicateRunError, WorkflowError

__all__ = ["ACTIVE", "CONFIG_DB", "KEYS_DB", "MARK", "PENDING_DB", "RUNS_OF_DB",
           "Live", "QueueConfig", "QueueStats", "enqueue_in", "live_owners", "pending_key"]

CONFIG_DB = "zixir.queues"
PENDING_DB = "zixir.queued"
RUNS_OF_DB = "zixir.queue_runs"
KEYS_DB = "zixir.queue_keys"
MARK = b"\xff.mark"  # no UTF-8 queue name starts with 0xff
ACTIVE = ("running", "parked", "interrupted")
"""Statuses of a run that holds one of its queue's concurrency slots (an interrupted
run is continued by the next runtime that defines its workflow)."""
_SEP = b"\x00"
_ORDER = struct.Struct(">QQ")
_SEQ = struct.Struct(">Q")
_PRIO_BASE = 2**62
MAX_PRIORITY = 2**61
"""Priorities lie in ``[-MAX_PRIORITY, MAX_PRIORITY]``."""

Db = Callable[[str], Any]


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """A queue's limits as stored (the `Queue` that enqueued last wrote them)."""

    name: str
    concurrency: int | None = None
    per_process: int | None = None
    rate: tuple[int, float] | None = None
    priority: bool = False


@dataclass(frozen=True, slots=True)
class QueueStats:
    """What ``zixir queues`` shows of one queue.

    Attributes:
        name: the queue.
        depth: runs waiting.
        running: runs started by it that are running or parked under a live runtime.
        oldest_wait: seconds the oldest waiting run has waited (0 if none).
        config: its limits.
        waiting: ``(run_id, workflow, enqueued_at)`` of the waiting runs, in start order.
    """

    name: str
    depth: int
    running: int
    oldest_wait: float
    config: QueueConfig
    waiting: tuple[tuple[str, str, float], ...] = ()


def name_prefix(queue: str) -> bytes:
    return queue.encode() + _SEP


def pending_key(queue: str, priority: int, seq: int, run_id: str) -> bytes:
    """Waiting runs sort by priority (highest first), then by enqueue order."""
    return name_prefix(queue) + _ORDER.pack(_PRIO_BASE - priority, seq) + run_id.encode()


def run_id_of_pending(queue: str, key: bytes) -> str:
    return key[len(name_prefix(queue)) + _ORDER.size:].decode()


def rate_key(queue: str) -> bytes:
    return name_prefix(queue) + b"rate"


def read_config(txn: Any, db: Db, queue: str) -> QueueConfig | None:
    return _codec.decode_as(txn.get(queue.encode(), db=db(CONFIG_DB)), QueueConfig,
                            key=f"queue {queue}")


def configs(txn: Any, db: Db) -> list[QueueConfig]:
    out = []
    for key, blob in txn.cursor(db=db(CONFIG_DB)):
        if key == MARK or _SEP in key:
            continue
        value = _codec.decode_as(blob, QueueConfig, key=f"queue {key.decode(errors='replace')}")
        if value is not None:
            out.append(value)
    return out


def mark(txn: Any, db: Db) -> int:
    raw = txn.get(MARK, db=db(CONFIG_DB))
    return 0 if raw is None else int(_SEQ.unpack(raw)[0])


def get_run(txn: Any, db: Db, run_id: str) -> RunRecord | None:
    return _codec.decode_as(txn.get(run_id.encode(), db=db(RUNS_DB)), RunRecord,
                            key=f"run {run_id}")


def put_run(txn: Any, db: Db, record: RunRecord) -> None:
    txn.put(record.run_id.encode(), _codec.encode(record), db=db(RUNS_DB))


@dataclass(frozen=True, slots=True)
class Live:
    """The runtimes on the directory whose lease holds, and the workflows they define."""

    ids: frozenset[str]
    workflows: frozenset[str]

    def holds(self, record: RunRecord) -> bool:
        """Whether a running or parked run holds its slot: its owner lives, or a live
        runtime that defines its workflow will take it over."""
        return record.owner in self.ids or record.workflow in self.workflows


def live_owners(txn: Any, db: Db, now: float | None = None) -> Live:
    """The live runtimes on the directory (read in `txn`)."""
    from zixir_actors._runtimes import is_alive

    now = time.time() if now is None else now
    ids, workflows = set(), set()
    for key, blob in txn.cursor(db=db(RUNTIMES_DB)):
        try:
            info = _codec.decode(blob, key=f"runtime {key.decode(errors='replace')}")
        except CorruptBlobError:
            continue
        if is_alive(info, now):
            ids.add(info.id)
            workflows.update(info.workflows)
    return Live(frozenset(ids), frozenset(workflows))


def scan(txn: Any, handle: Any, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
    cursor = txn.cursor(db=handle)
    if not cursor.set_range(prefix):
        return
    for key, value in cursor:
        if not key.startswith(prefix):
            return
        yield bytes(key), bytes(value)


def count_active(txn: Any, db: Db, queue: str, live: Live, me: str | None, *,
                 prune: bool) -> tuple[int, int]:
    """(runs of `queue` holding a slot, those owned by `me`); `prune` drops ended ones."""
    total = mine = 0
    handle = db(RUNS_OF_DB)
    stale = []
    for key, _ in list(scan(txn, handle, name_prefix(queue))):
        run_id = key[len(name_prefix(queue)):].decode()
        record = get_run(txn, db, run_id)
        if record is None or record.status not in ACTIVE:
            if record is None or record.status != "queued":
                stale.append(key)
            continue
        if live.holds(record):
            total += 1
            mine += record.owner == me
    if prune:
        for key in stale:
            txn.delete(key, db=handle)
    return total, mine


def rate_window(txn: Any, db: Db, config: QueueConfig, now: float) -> list[float]:
    """Start times of the queue's runs within its rate period (oldest first)."""
    if config.rate is None:
        return []
    raw = txn.get(rate_key(config.name), db=db(CONFIG_DB))
    if not raw:
        return []
    starts = struct.unpack(f">{len(raw) // 8}d", raw)
    return [t for t in starts if t > now - config.rate[1]]


def write_rate(txn: Any, db: Db, config: QueueConfig, starts: list[float]) -> None:
    assert config.rate is not None
    keep = starts[-config.rate[0]:]
    txn.put(rate_key(config.name), struct.pack(f">{len(keep)}d", *keep), db=db(CONFIG_DB))


def enqueue_in(txn: Any, db: Db, config: QueueConfig, workflow: str, run_id: str,
               inputs: Mapping[str, Any], *, priority: int, dedupe_key: str | None,
               now: float) -> RunRecord:
    """Store a run as queued on `config.name` inside the write transaction `txn`.

    Raises:
        DuplicateRunError: `dedupe_key` (or `run_id`) is already queued or running.
        WorkflowError: `run_id` is a run of another workflow.
    """
    queue = config.name
    keys = db(KEYS_DB)
    if dedupe_key is not None:
        holder = txn.get(name_prefix(queue) + dedupe_key.encode(), db=keys)
        if holder is not None:
            other = get_run(txn, db, holder.decode())
            if other is not None and other.status in ("queued", *ACTIVE):
                raise DuplicateRunError(queue, other.run_id, other.status, dedupe_key)
    existing = get_run(txn, db, run_id)
    if existing is not None:
        if existing.status in ("queued", *ACTIVE):
            raise DuplicateRunError(queue, run_id, existing.status)
        if existing.workflow != workflow:
            raise WorkflowError(f"run {run_id!r} belongs to workflow {existing.workflow!r}, "
                                f"not {workflow!r}")
    stored = read_config(txn, db, queue)
    if stored != config:
        txn.put(queue.encode(), _codec.encode(config), db=db(CONFIG_DB))
    seq = mark(txn, db) + 1
    txn.put(MARK, _SEQ.pack(seq), db=db(CONFIG_DB))
    key = pending_key(queue, priority, seq, run_id)
    txn.put(key, _codec.encode((workflow, now)), db=db(PENDING_DB))
    if dedupe_key is not None:
        txn.put(name_prefix(queue) + dedupe_key.encode(), run_id.encode(), db=keys)
    waiting = {"kind": "queue", "queue": queue, "key": key.hex(), "priority": priority,
               "dedupe_key": dedupe_key}
    created = existing.created_at if existing is not None else now
    record = RunRecord(run_id, workflow, "queued", dict(inputs), created, now, waiting=waiting)
    put_run(txn, db, record)
    return record


def cancel_in(txn: Any, db: Db, run_id: str, now: float) -> bool:
    """Take a queued run off its queue and mark it cancelled; False if it is not queued."""
    record = get_run(txn, db, run_id)
    if record is None or record.status != "queued" or not record.waiting:
        return False
    key = bytes.fromhex(str(record.waiting.get("key", "")))
    if key:
        txn.delete(key, db=db(PENDING_DB))
    put_run(txn, db, replace(record, status="cancelled", waiting=None, updated_at=now))
    return True


def stats(txn: Any, db: Db, now: float, *, waiting: bool = False) -> list[QueueStats]:
    """Depth, running and waiting time of every queue (read in `txn`)."""
    live = live_owners(txn, db, now)
    out = []
    for config in sorted(configs(txn, db), key=lambda c: c.name):
        entries = []
        for key, blob in scan(txn, db(PENDING_DB), name_prefix(config.name)):
            try:
                workflow, enqueued_at = _codec.decode(blob, key="queued run")
            except (CorruptBlobError, TypeError, ValueError):
                continue
            entries.append((run_id_of_pending(config.name, key), workflow, float(enqueued_at)))
        running, _ = count_active(txn, db, config.name, live, None, prune=False)
        oldest = max((now - e[2] for e in entries), default=0.0)
        out.append(QueueStats(config.name, len(entries), running, max(0.0, oldest), config,
                              tuple(entries) if waiting else ()))
    return out
