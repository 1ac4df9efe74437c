"""Durable queues of workflow runs, shared by every process on a data directory.

Example:
    >>> import tempfile, zixir_actors
    >>> from zixir_actors.queue import Queue
    >>> from zixir_actors.workflow import Workflow
    >>> wf = Workflow("doc-queue-front")
    >>> @wf.step()
    ... def square(n):
    ...     return n * n
    >>> q = Queue("doc-front", concurrency=1)
    >>> with zixir_actors.start(data_dir=tempfile.mkdtemp()):
    ...     q.enqueue(wf, {"n": 7}).result(timeout=30).outputs["square"]
    49

`Queue.enqueue` stores a run as ``"queued"``; the ``zixir.queues`` worker
(`QueueWorker`) of any runtime on the directory that defines the workflow
starts it when the queue's limits allow (global `concurrency`,
`per_process`, a shared `rate`). See `Queue`.
"""

from __future__ import annotations

from zixir_actors.errors import DuplicateRunError, QueueError
from zixir_actors.queue._queue import RESULT_POLL, Queue, QueuedRunHandle, parse_rate
from zixir_actors.queue._store import QueueConfig, QueueStats
from zixir_actors.queue._worker import (
    DEFAULT_MAX_LOCAL,
    POLL_BUSY,
    POLL_IDLE,
    QUEUES_NAME,
    QueueWorker,
    child_spec,
)

__all__ = [
    "DEFAULT_MAX_LOCAL",
    "POLL_BUSY",
    "POLL_IDLE",
    "QUEUES_NAME",
    "RESULT_POLL",
    "DuplicateRunError",
    "Queue",
    "QueueConfig",
    "QueueError",
    "QueueStats",
    "QueueWorker",
    "QueuedRunHandle",
    "child_spec",
    "parse_rate",
    "queue_stats",
]


def queue_stats(store: object = None, *, waiting: bool = False) -> list[QueueStats]:
    """Depth, running count and oldest wait of every queue on the store's directory.

    Args:
        store: a `CheckpointClient` (default the runtime's store).
        waiting: also list the waiting runs of each queue.
    """
    import time

    from zixir_actors.checkpoint import connect
    from zixir_actors.queue._store import stats

    client = connect() if store is None else store
    with client.snapshot() as (txn, db):  # type: ignore[attr-defined]
        return stats(txn, db, time.time(), waiting=waiting)
