"""Runtimes sharing one data directory: identity, leases, run ownership, takeover.

Any number of processes on one machine may run `zixir_actors.start(dir)` on
the same directory; LMDB lets them share the environment (one writer at a
time, readers never blocked). Each runtime has an id (``host:pid:start``)
and a lease record in ``zixir.runtimes`` that its `LeaseKeeper` renews
(every `DEFAULT_RENEW` seconds; the lease lasts `DEFAULT_LEASE`). Every run
records its owner.

A runtime is dead when its lease ran out, or at once when it ran on this
host and its process is gone (kill -9). A live runtime that has a dead
one's workflows defined takes over its running and parked runs: each run
is claimed in one LMDB write transaction that checks the owner is still the
dead one, so exactly one runtime continues it, and it continues from its
checkpoints (no committed step runs again).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from supervisors import ChildSpec, SupervisedActor
from zixir_actors.observability import logger

__all__ = ["DEFAULT_LEASE", "DEFAULT_RENEW", "LEASE_NAME", "LeaseKeeper", "RuntimeInfo",
           "StoreGauges",
           "child_spec", "current_owner", "is_alive", "live_runtimes", "new_runtime_id",
           "owned_elsewhere"]

LEASE_NAME = "zixir.lease"
"""The registered name of the runtime's lease keeper."""
DEFAULT_LEASE = 5.0
"""Seconds a runtime's lease lasts without renewal."""
DEFAULT_RENEW = 1.0
"""Seconds between two renewals of a runtime's lease (and looks for dead runtimes)."""

log = logger.bind(service="lease")
TAKEN_OVER = ("running", "parked", "interrupted")
"""Statuses of the runs of a dead runtime that a live one takes over."""

_current: str | None = None
_current_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class RuntimeInfo:
    """A runtime on the data directory, as its lease record says.

    Attributes:
        id: ``host:pid:start-ms``.
        host, pid: where it runs.
        started_at, renewed_at: wall times.
        lease: seconds its lease lasts past `renewed_at`.
        workflows: names of the workflows it has defined (it can take their runs).
    """

    id: str
    host: str
    pid: int
    started_at: float
    renewed_at: float
    lease: float
    workflows: tuple[str, ...] = ()
    tree: str = ""
    """Its supervision tree as text, as of its last renewal."""

    def expires_at(self) -> float:
        return self.renewed_at + self.lease


def new_runtime_id(started_at: float) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{int(started_at * 1000)}"


def current_owner() -> str | None:
    """The id of this process's runtime (the owner its runs record), or None."""
    return _current


def is_alive(info: RuntimeInfo, now: float | None = None) -> bool:
    """Whether a runtime still holds its lease (and, on this host, its process lives)."""
    now = time.time() if now is None else now
    if info.host == socket.gethostname():
        if info.pid == os.getpid():
            return info.id == _current
        import psutil  # only to check another process of this host (not on import)

        try:
            proc = psutil.Process(info.pid)
            # A reused pid belongs to a process created after the runtime's last
            # renewal (psutil's create time comes from a boot time in whole
            # seconds: allow for it).
            if proc.create_time() > info.renewed_at + 2.0 or \
                    proc.status() == psutil.STATUS_ZOMBIE:
                return False
        except psutil.Error:
            return False
    return now <= info.expires_at()


def live_runtimes(store: Any) -> list[RuntimeInfo]:
    """The runtimes on the store's directory whose lease holds."""
    now = time.time()
    return [info for info in store.runtimes() if is_alive(info, now)]


def owned_elsewhere(record: Any, store: Any) -> str | None:
    """The id of the live runtime, not this one, that owns the run `record`, if any."""
    owner = getattr(record, "owner", None)
    if owner is None or owner == _current or record.status not in ("running", "parked"):
        return None
    for info in store.runtimes():
        if info.id == owner:
            return owner if is_alive(info) else None
    return None


class LeaseKeeper(SupervisedActor):
    """Holds this runtime's lease and takes over the runs of dead runtimes (``zixir.lease``).

    Args:
        runtime_id: this runtime's id (kept across restarts of this actor).
        started_at: when this runtime started (wall time).
        lease: seconds the lease lasts (default 5).
        renew_every: seconds between renewals (default 1).
        find_workflow: name -> `Workflow` or None (the workflows defined here).
        defined: names of the workflows defined here (for the lease record).
        resume: called with the claimed `RunRecord`s to continue them here.
    """

    def __init__(self, *, runtime_id: str, started_at: float, lease: float = DEFAULT_LEASE,
                 renew_every: float = DEFAULT_RENEW,
                 find_workflow: Callable[[str], Any], defined: Callable[[], Iterable[str]],
                 resume: Callable[[list[Any]], object]) -> None:
        super().__init__()
        if not lease > 0 or not renew_every > 0 or renew_every >= lease:
            from zixir_actors.errors import ConfigError

            raise ConfigError("lease", (lease, renew_every),
                              "needs lease > renew_every > 0")
        self.lease = lease
        self.renew_every = renew_every
        self.find_workflow = find_workflow
        self.defined = defined
        self.resume = resume
        self.started_at = started_at
        self.id = runtime_id
        self._halt = threading.Event()
        self._renewals = 0
        self._last_tree = ""
        self._thread: threading.Thread | None = None
        self._store: Any = None

    def on_start(self) -> None:
        global _current
        from zixir_actors.checkpoint import connect

        self._store = connect()
        with _current_lock:
            _current = self.id
        self._renew(durable=True)
        self._thread = threading.Thread(target=self._serve, daemon=True, name="zixir-lease")
        self._thread.start()

    def on_receive(self, message: Any) -> Any:
        if message == "id":
            return self.id
        if message == "takeover":
            self._tree()
            return self._takeover()
        raise TypeError(f"LeaseKeeper got an unknown message: {message!r}")

    def _serve(self) -> None:
        while not self._halt.wait(self.renew_every):
            try:
                self._renew(durable=False)
                self.actor_ref.tell("takeover")
            except Exception as exc:  # a failed renewal is retried next round
                log.warning("lease renewal failed", error=str(exc))

    def _renew(self, *, durable: bool) -> None:
        # Never blocks on an actor: a renewal that waits risks the lease.
        info = RuntimeInfo(self.id, socket.gethostname(), os.getpid(), self.started_at,
                           time.time(), self.lease, tuple(sorted(self.defined())),
                           self._last_tree)
        self._store.save_runtime(info, durable=durable)

    def _tree(self) -> str:
        # Shown by `zixir tree` from other processes; refreshed by the actor
        # every few renewals (asking the supervisors takes a moment).
        self._renewals += 1
        if self._renewals % 5 != 1 and self._last_tree:
            return self._last_tree
        from supervisors import SupervisorRef, whereis

        root = whereis("zixir.root")
        text = ""
        if root is not None:
            try:
                text = SupervisorRef(root).tree(timeout=1.0)
            except Exception:  # a tree mid-restart: keep the last one
                text = self._last_tree
        self._last_tree = text
        return text

    def _takeover(self) -> int:
        """Claim and continue the runs of dead runtimes that this one can run."""
        store = self._store
        runtimes = store.runtimes()
        now = time.time()
        dead = {info.id for info in runtimes if info.id != self.id and not is_alive(info, now)}
        live = {info.id for info in runtimes if info.id not in dead}
        candidates = [r for r in store.list_runs()
                      if r.status in TAKEN_OVER and r.owner not in live
                      and (r.owner is not None or dead)]
        mine = [r for r in candidates if self.find_workflow(r.workflow) is not None]
        claimed = store.claim_runs([r.run_id for r in mine], allowed=dead | {None},
                                   owner=self.id, statuses=TAKEN_OVER) if mine else []
        if claimed:
            log.info("took over runs of dead runtimes", runs=len(claimed),
                     runtimes=sorted(dead))
            self.resume(claimed)
        leftover = {r.owner for r in candidates} - {None}
        for runtime_id in dead - leftover:
            store.delete_runtime(runtime_id)  # nothing of it is left to take over
        return len(claimed)

    def on_stop(self) -> None:
        self._shutdown(clean=True)

    def on_failure(self, *args: Any) -> None:
        self._shutdown(clean=False)

    def _shutdown(self, *, clean: bool) -> None:
        global _current
        self._halt.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
        if clean and self._store is not None:
            # Its runs stay owned by this id: with the lease record gone, any
            # live runtime (or the next start) takes them over.
            try:
                self._store.delete_runtime(self.id)
            except Exception as exc:
                log.warning("cannot remove the lease record", error=str(exc))
        with _current_lock:
            if _current == self.id:
                _current = None


def child_spec(*, runtime_id: str, started_at: float, lease: float = DEFAULT_LEASE,
               renew_every: float = DEFAULT_RENEW, find_workflow: Callable[[str], Any],
               defined: Callable[[], Iterable[str]],
               resume: Callable[[list[Any]], object]) -> ChildSpec:
    """The spec of ``zixir.lease``."""
    return ChildSpec(id="lease", start=LeaseKeeper,
                     kwargs={"runtime_id": runtime_id, "started_at": started_at,
                             "lease": lease, "renew_every": renew_every,
                             "find_workflow": find_workflow, "defined": defined,
                             "resume": resume},
                     restart="permanent", shutdown=10.0, type="worker", name=LEASE_NAME)


class StoreGauges:
    """Store-wide gauges for ``zixir metrics`` beside live runtimes: what every
    process on the directory adds up to (runs by status, dead letters, live
    runtimes, queue depths). Read from LMDB at scrape time, at most every `every` seconds."""

    def __init__(self, store: Any, *, every: float = 5.0) -> None:
        from zixir_actors.observability import metrics

        self.store = store
        self.every = every
        self.read_at = 0.0
        self.runs = metrics.gauge("zixir_store_runs", "Runs stored on the data directory, "
                                  "by status (every process's).", labels=("status",))
        self.dead = metrics.gauge("zixir_store_dead_letters",
                                  "Dead letters stored on the data directory.")
        self.live = metrics.gauge("zixir_store_runtimes",
                                  "Runtimes holding a lease on the data directory.")
        self.queued = metrics.gauge("zixir_store_queue_depth", "Runs waiting in each queue "
                                    "on the data directory (every process's).",
                                    labels=("queue",))
        self.seen: set[str] = set()

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self.read_at < self.every:
            return
        self.read_at = now
        counts: dict[str, int] = {}
        for record in self.store.list_runs():
            counts[record.status] = counts.get(record.status, 0) + 1
        for status in self.seen - set(counts):
            self.runs.labels(status).set(0)
        for status, count in counts.items():
            self.runs.labels(status).set(count)
        self.seen |= set(counts)
        self.dead.set(self.store.count_dead_letters())
        self.live.set(len(live_runtimes(self.store)))
        from zixir_actors.queue import queue_stats

        for queue in queue_stats(self.store):
            self.queued.labels(queue.name).set(queue.depth)
