"""Durable checkpoints in LMDB: runs, step outputs and dead letters.

Example:
    >>> import tempfile
    >>> from zixir_actors.checkpoint import RunRecord, StepCheckpoint, open_store
    >>> with open_store(tempfile.mkdtemp()) as store:
    ...     store.save_run(RunRecord("r1", "etl", "running", {"n": 2}, 0.0, 0.0))
    ...     store.save_step(StepCheckpoint("r1", "fetch", [1, 2], "c0de", "1nput", 1, 0.01,
    ...                                    0.0, "r1/fetch"))
    ...     store.get_step("r1", "fetch").output
    [1, 2]

`CheckpointStore` is the actor that owns the runtime's LMDB environment
(registered as ``zixir.store``; `child_spec` builds its spec). Application
code and the workflow engine talk to it through a `CheckpointClient`
(`connect()`), which

- reads straight from LMDB in the caller's thread (LMDB readers run
  concurrently and never block on the writer), and
- commits writes through the actor's write channel with group commit: one
  writer at a time (the leader) commits everything that is waiting in one
  transaction and fsyncs once, so concurrent steps' checkpoints share one
  disk sync. The leader is the first waiting caller, not the actor's thread:
  a lone writer commits with no thread hand-off, which matters when a
  durable commit itself takes about 200 us.

The actor owns the environment's lifetime (opened when it starts, released
when it stops or crashes, reopened by its restart); clients fetch the
current incarnation's channel and follow restarts by themselves.

A step's output and its done-mark are one record (`StepCheckpoint`): it
exists exactly when the step finished, and one commit writes it. Blobs are
`zixir_actors._codec` blobs (pickle fast path, dill fallback, header and
CRC), so a corrupt or foreign blob raises `CorruptBlobError` naming its key.

Sub-databases in the shared environment: ``zixir.runs`` (run id ->
`RunRecord`), ``zixir.steps`` (``run_id NUL step`` -> `StepCheckpoint`) and
``zixir.dead`` (letter id -> `DeadLetter`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar, cast

import pykka

from supervisors import ChildSpec, SupervisedActor, whereis
from zixir_actors import _codec, _lmdb
from zixir_actors._clock import SYSTEM_CLOCK, Clock
from zixir_actors._lmdb import DEFAULT_DATA_DIR, resolve_data_dir
from zixir_actors.errors import (
    ConfigError,
    CorruptBlobError,
    DeadLetterNotFoundError,
    NotStartedError,
    RunNotFoundError,
    StoreCorruptError,
    StoreError,
    StoreFullError,
    ZixirTimeoutError,
)

__all__ = [
    "DEFAULT_DATA_DIR",
    "DEFAULT_TIMEOUT",
    "STORE_NAME",
    "AttemptInfo",
    "Batch",
    "CheckpointClient",
    "CheckpointStore",
    "DeadLetter",
    "LogLine",
    "RunRecord",
    "StepCheckpoint",
    "StoreCheck",
    "backup_store",
    "check_record",
    "check_store",
    "child_spec",
    "connect",
    "open_store",
]

STORE_NAME = "zixir.store"
"""The registered name of the runtime's store actor."""
DEFAULT_TIMEOUT = 30.0
"""Default seconds a write waits for its commit."""

RUNS_DB = "zixir.runs"
STEPS_DB = "zixir.steps"
DEAD_DB = "zixir.dead"
CALLS_DB = "zixir.calls"
EVENTS_DB = "zixir.events"
PROGRESS_DB = "zixir.progress"
LOGS_DB = "zixir.logs"  # run log lines in chunks, and when each step first started
RUNTIMES_DB = "zixir.runtimes"
QUEUE_DBS = ("zixir.queues", "zixir.queued", "zixir.queue_runs", "zixir.queue_keys",
             "zixir.schedules")  # zixir_actors.queue and .schedule keep their records here
_SEP = b"\x00"
CORRUPT = "corrupt"
"""The status `list_runs` gives a run whose stored header cannot be decoded."""
_MAX_KEY = 511  # LMDB's default maximum key size
_T = TypeVar("_T")


# -- records ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A run's durable header: which workflow, its inputs, its status.

    `steps` maps each step to its last known status (filled when the run ends).
    A code-first run waiting for an event or a timer is stored as ``"parked"``
    with `waiting` saying what it waits for.
    """

    run_id: str
    workflow: str
    status: str
    inputs: Mapping[str, Any]
    created_at: float
    updated_at: float
    error: str | None = None
    steps: Mapping[str, str] = field(default_factory=dict)
    owner: str | None = None
    """The id of the runtime that runs it (``host:pid:start``; None outside a runtime)."""
    waiting: Mapping[str, Any] | None = None
    """What a parked code-first run waits for: ``{"kind": "event", "event": ...,
    "until": ...}``, ``{"kind": "timer", "until": ...}`` or ``{"kind": "child",
    "run_id": ...}``; None otherwise."""


@dataclass(frozen=True, slots=True)
class StepCheckpoint:
    """A finished step: its output and the hashes that decide whether it is still valid."""

    run_id: str
    step: str
    output: Any
    code_hash: str
    input_hash: str
    attempts: int
    duration: float
    finished_at: float
    idempotency_key: str

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Positional reconstruction: pickling a slotted dataclass field by field
        # costs more than the rest of a checkpoint's encoding.
        return (StepCheckpoint, (self.run_id, self.step, self.output, self.code_hash,
                                 self.input_hash, self.attempts, self.duration,
                                 self.finished_at, self.idempotency_key))


@dataclass(frozen=True, slots=True)
class AttemptInfo:
    """One failed attempt of a step."""

    attempt: int
    started_at: float
    duration: float
    error_type: str
    error_message: str
    timed_out: bool = False


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A step that exhausted its retries, with everything needed to look into it."""

    id: str
    run_id: str
    workflow: str
    step: str
    inputs: Mapping[str, Any]
    error_type: str
    error_message: str
    traceback: str
    attempts: tuple[AttemptInfo, ...]
    created_at: float


@dataclass(frozen=True, slots=True)
class LogLine:
    """One log line kept with a run (`CheckpointClient.run_logs`).

    Attributes:
        seq: its position in the run's log (0 is the run's first line ever;
            pass it as `after=` to read on from it).
        time: wall time it was logged.
        level: the loguru level name (``"INFO"``, ``"WARNING"``, ...).
        message: the message.
        step: the step (or code-first call label, ``"llm#2"``) it is about, or None.
        attempt: the step's attempt, or None.
        fields: the other bound fields (JSON-friendly: other values are their repr).
    """

    seq: int
    time: float
    level: str
    message: str
    step: str | None = None
    attempt: int | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)


# -- keys and blobs -------------------------------------------------------------


def _key(*parts: str) -> bytes:
    try:
        key = _SEP.join([p.encode() for p in parts])
    except AttributeError:
        raise ConfigError("key", parts, "parts must be strings") from None
    if key.count(_SEP) != len(parts) - 1 or not all(parts):
        raise ConfigError("key", parts, "parts must be non-empty strings without NUL")
    if len(key) > _MAX_KEY:
        raise ConfigError("key", parts, f"longer than {_MAX_KEY} bytes once encoded")
    return key


@functools.lru_cache(maxsize=4096)
def _memo_key(part: str) -> bytes:
    return _key(part)


def _known_key(part: str) -> bytes:
    """``_key(part)``, checked once per distinct part and cached (a run's every
    commit needs its keys)."""
    try:
        return _memo_key(part)
    except TypeError:  # a part that is not a string cannot be cached: _key names it
        return _key(part)


def _prefix(run_id: str) -> bytes:
    """``_key(run_id) + _SEP``: where a run's records start in the per-run databases."""
    return _known_key(run_id) + _SEP


def _step_key(run_id: str, step: str) -> bytes:
    """``_key(run_id, step)`` from its two parts, each checked once and cached (a
    workflow's step names repeat in every run, a run's id in every step)."""
    key = _prefix(run_id) + _known_key(step)
    if len(key) > _MAX_KEY:
        raise ConfigError("key", (run_id, step), f"longer than {_MAX_KEY} bytes once encoded")
    return key


def _decode(blob: bytes, where: str) -> Any:
    return _codec.decode(blob, key=where)


def _pack_step(run_id: str, step: str, output: Any, code_hash: str, input_hash: str,
               attempts: int, duration: float, finished_at: float, idempotency_key: str) -> bytes:
    # Run id and step live in the key, and the idempotency key is almost always
    # derived from them: leaving them out keeps records small, so the B-tree
    # stays shallow and commits rarely extend the file (a costlier fsync).
    key = None if idempotency_key == f"{run_id}/{step}" else idempotency_key
    return _codec.encode((output, code_hash, input_hash, attempts, duration, finished_at, key))


def _unpack_step(run_id: str, step: str, blob: bytes) -> StepCheckpoint:
    where = f"step {run_id}/{step}"
    value = _decode(blob, where)
    try:
        output, code_hash, input_hash, attempts, duration, finished_at, key = value
    except (TypeError, ValueError):
        raise CorruptBlobError(f"not a step checkpoint: {type(value).__name__}",
                               key=where) from None
    return StepCheckpoint(run_id, step, output, code_hash, input_hash, attempts, duration,
                          finished_at, key or f"{run_id}/{step}")


def _letter_of(blob: bytes, run_id: str) -> bool:
    """Whether a stored dead letter belongs to `run_id` (a corrupt one belongs to none)."""
    try:
        return bool(_codec.decode(blob).run_id == run_id)
    except (CorruptBlobError, AttributeError):
        return False


_Op = tuple[str, bytes, "bytes | None"]  # (sub-database, key, value or None to delete)


# -- the actor ------------------------------------------------------------------


class _Request:
    __slots__ = ("error", "finished", "lead", "ops", "wake")

    def __init__(self, ops: Sequence[_Op]) -> None:
        self.ops = ops
        self.wake: threading.Event | None = None  # followers only: finished, or must lead
        self.lead = False
        self.finished = False
        self.error: BaseException | None = None


class _Closed(Exception):
    """The channel's actor has stopped; fetch a new channel."""


class _Channel:
    """Group commit for one incarnation of the store actor (leader/follower).

    A writer appends its request to `pending`; if no commit is in progress it
    becomes the leader: it takes every pending request, commits them in one
    transaction, fsyncs once, marks them finished, then hands leadership to
    the oldest request that arrived meanwhile. A lone writer thus commits in
    its own thread with no hand-off (a chain of steps pays only its fsync),
    and concurrent writers share one fsync per round. Only one thread
    commits at a time, so LMDB's writer lock never sees a convoy.
    """

    def __init__(self, env: _lmdb.SharedEnv, durable: bool) -> None:
        self.env = env
        self.durable = durable
        self.lock = threading.Lock()
        self.pending: list[_Request] = []
        self.committing = False
        self.closed = False
        self.deferred: tuple[int, PendingSync] | None = None  # a lead held by a pending fsync

    def submit(self, ops: Sequence[_Op], *, timeout: float | None,
               defer: bool = False) -> PendingSync | None:
        """Commit `ops`; with `defer`, a lone writer's fsync may be left pending.

        A deferred fsync has started (`SharedEnv.start_sync`) and is returned:
        its writer keeps the lead (the next writers wait) until it calls
        `PendingSync.wait`. Otherwise this returns once the commit is durable.
        """
        held = self.deferred
        if held is not None and held[0] == threading.get_ident():
            held[1].wait()  # this thread's own pending fsync: it would wait for itself
        with self.lock:
            if self.closed:
                raise _Closed
            lone = not self.committing
            if lone:
                self.committing = True
            else:
                request = _Request(ops)
                request.wake = threading.Event()
                self.pending.append(request)
        if lone:  # the common case: commit in this thread, no request to queue
            if defer and self.durable:
                try:
                    self.env.apply(ops)
                    self.env.start_sync()
                except BaseException:
                    self._hand_off()
                    raise
                pending = PendingSync(self)
                self.deferred = (threading.get_ident(), pending)
                return pending
            try:
                self.env.apply(ops, durable=self.durable)
            finally:
                self._hand_off()
            return None
        self._follow(request, timeout)
        if request.lead and not request.finished:
            self._round()
        if request.error is not None:
            raise _Closed if isinstance(request.error, _Closed) else request.error
        return None

    def _follow(self, request: _Request, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            assert request.wake is not None
            request.wake.wait(left)
            with self.lock:
                if request.finished or request.lead:
                    return
                if request in self.pending:  # still queued: withdraw it
                    self.pending.remove(request)
                    raise ZixirTimeoutError("checkpoint write", timeout)
            deadline = None  # being committed right now: that ends soon

    def _round(self) -> None:
        with self.lock:
            batch, self.pending = self.pending, []
        try:
            self._commit(batch)
        finally:
            with self.lock:
                for request in batch:
                    request.finished = True
                    if request.wake is not None:
                        request.wake.set()
            self._hand_off()

    def _hand_off(self) -> None:
        """Leadership goes to the oldest request that arrived during a commit, if any."""
        with self.lock:
            if self.pending and not self.closed:
                successor = self.pending[0]
                successor.lead = True
                if successor.wake is not None:
                    successor.wake.set()
            else:
                self.committing = False

    def _commit(self, batch: list[_Request]) -> None:
        env = self.env
        try:
            env.apply([op for request in batch for op in request.ops], durable=self.durable)
        except StoreFullError as exc:  # no neighbour can fit either: fail them all at once
            for request in batch:
                request.error = exc
        except StoreError as exc:
            if len(batch) == 1:
                batch[0].error = exc
                return
            # One bad request must not fail its neighbours: commit them one by one.
            for request in batch:
                try:
                    env.apply(request.ops, durable=self.durable)
                except StoreError as one:
                    request.error = one
        except BaseException as exc:  # every caller must hear how its write ended
            for request in batch:
                request.error = exc

    def close(self) -> None:
        with self.lock:
            self.closed = True
            batch, self.pending = self.pending, []
            for request in batch:
                request.error = _Closed()
                request.finished = True
                if request.wake is not None:
                    request.wake.set()


class PendingSync:
    """The fsync of a commit, started but not waited for (`CheckpointClient.save_step_fields`).

    The commit is done: readers see it, and it survives the death of the
    process. `wait` makes it survive a power cut too; until then its writer
    holds the store's group commit (other writers wait), so it must call
    `wait` soon, and before anything that relies on the commit's durability
    (the workflow engine: before it calls the next step).
    """

    __slots__ = ("_channel",)

    def __init__(self, channel: _Channel) -> None:
        self._channel: _Channel | None = channel

    def wait(self) -> None:
        """Wait for the fsync; a second call does nothing.

        Raises:
            StoreFullError, StoreError: the fsync failed (the commit may not be on disk).
        """
        channel, self._channel = self._channel, None
        if channel is None:
            return
        try:
            if not channel.env.closed:  # else the store closed it, syncing on the way
                channel.env.sync()
        finally:
            channel.deferred = None
            channel._hand_off()


class _GetChannel:
    __slots__ = ()


_GET_CHANNEL = _GetChannel()


class CheckpointStore(SupervisedActor):
    """The actor that owns the LMDB environment and its write channel.

    Example:
        >>> import tempfile
        >>> ref = CheckpointStore.start(data_dir=tempfile.mkdtemp())
        >>> store = connect(ref)
        >>> store.list_runs()
        []
        >>> ref.stop()
        True

    Args:
        data_dir: the directory of the LMDB environment (created 0700);
            default ``$ZIXIR_DATA_DIR`` or ``./.zixir``.
        durable: fsync after each group commit (default True), so a checkpoint
            survives a power cut; without it a commit survives the process
            being killed but not the machine losing power.
        map_size: initial LMDB map size in bytes if this store opens the
            environment first (it doubles whenever a write finds it full).

    Raises:
        StoreError: the directory cannot be created or opened (at start).
    """

    def __init__(self, data_dir: str | os.PathLike[str] | None = None, *,
                 durable: bool = True, map_size: int = _lmdb.DEFAULT_MAP_SIZE) -> None:
        super().__init__()
        self.data_dir = str(resolve_data_dir(data_dir))
        self.durable = durable
        self._env = _lmdb.open_env(self.data_dir, map_size=map_size)
        for name in (RUNS_DB, STEPS_DB, DEAD_DB, CALLS_DB, EVENTS_DB, PROGRESS_DB, LOGS_DB,
                     RUNTIMES_DB, *QUEUE_DBS):
            self._env.db(name)
        self._channel: _Channel | None = None

    def on_start(self) -> None:
        self._channel = _Channel(self._env, self.durable)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _GetChannel):
            return self._channel
        raise TypeError(f"CheckpointStore got an unknown message: {message!r}")

    def on_stop(self) -> None:
        self._close()

    def on_failure(self, *args: Any) -> None:
        self._close()

    def _close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()
        if not self._env.closed:
            _lmdb.release(self._env)


def child_spec(data_dir: str | os.PathLike[str] | None = None, *, durable: bool = True,
               shutdown: float = 10.0) -> ChildSpec:
    """The spec of the runtime's store: `CheckpointStore` registered as ``zixir.store``.

    Example:
        >>> child_spec("/tmp/zx").name
        'zixir.store'
    """
    return ChildSpec(id="store", start=CheckpointStore,
                     kwargs={"data_dir": data_dir, "durable": durable},
                     restart="permanent", shutdown=shutdown, type="worker", name=STORE_NAME)


# -- the client -----------------------------------------------------------------


class CheckpointClient:
    """Reads and writes checkpoints; safe to share between threads.

    Get one with `connect()` (the runtime's ``zixir.store``) or `open_store()`
    (an embedded store for scripts and tests). It follows restarts of the
    store actor: after a restart it fetches the new incarnation's channel.

    Args:
        target: the store actor: a registered name (default ``"zixir.store"``),
            an `ActorRef`, or a `supervisors.NamedRef`.
        clock: the clock `prune` reads (default the system clock).
        timeout: default seconds a write waits for its commit.
    """

    def __init__(self, target: Any = STORE_NAME, *, clock: Clock = SYSTEM_CLOCK,
                 timeout: float | None = DEFAULT_TIMEOUT) -> None:
        self._target = target
        self._clock = clock
        self._timeout = timeout
        self._channel: _Channel | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"CheckpointClient({self._target!r})"

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def data_dir(self) -> str:
        """The directory of the LMDB environment."""
        return self._get_channel().env.path

    # -- plumbing --

    def _actor(self) -> pykka.ActorRef[Any]:
        target = self._target
        if isinstance(target, str):
            found = whereis(target)
            if found is None:
                raise NotStartedError(target)
            return found
        if hasattr(target, "whereis"):  # a supervisors.NamedRef
            try:
                return target.whereis(timeout=0.0)  # type: ignore[no-any-return]
            except LookupError as exc:
                raise NotStartedError(str(getattr(target, "name", target))) from exc
        return target  # type: ignore[no-any-return]

    def _get_channel(self) -> _Channel:
        channel = self._channel
        if channel is not None and not channel.closed:
            return channel
        with self._lock:
            channel = self._channel
            if channel is None or channel.closed:
                actor = self._actor()
                try:
                    channel = cast("_Channel | None", actor.ask(
                        _GET_CHANNEL, timeout=self._timeout or DEFAULT_TIMEOUT))
                except pykka.ActorDeadError as exc:
                    raise NotStartedError(str(self._target)) from exc
                if channel is None:
                    raise NotStartedError(str(self._target))
                self._channel = channel
            return channel

    def _write(self, ops: Sequence[_Op], timeout: float | None,
               defer: bool = False) -> PendingSync | None:
        timeout = self._timeout if timeout is None else timeout
        for _ in range(3):
            channel = self._channel  # `_get_channel`'s fast path, inline: every commit's
            if channel is None or channel.closed:
                channel = self._get_channel()
            try:
                return channel.submit(ops, timeout=timeout, defer=defer)
            except _Closed:
                continue  # the actor restarted under us; resend to the new one
        raise StoreError("the checkpoint store kept stopping while writing")

    @contextmanager
    def _read(self) -> Iterator[tuple[_lmdb.SharedEnv, Any]]:
        for attempt in range(3):
            channel = self._get_channel()
            stack = ExitStack()
            try:
                txn = stack.enter_context(channel.env.read())
            except StoreError:
                stack.close()
                if channel.env.closed and attempt < 2:
                    continue  # the actor restarted between fetching and reading
                raise
            with stack:
                yield channel.env, txn
            return

    def _get(self, db_name: str, key: bytes, where: str) -> Any:
        with self._read() as (env, txn):
            blob = txn.get(key, db=env.db(db_name))
        return None if blob is None else _decode(blob, where)

    def _scan(self, db_name: str, prefix: bytes = b"") -> list[tuple[bytes, bytes]]:
        with self._read() as (env, txn):
            cursor = txn.cursor(db=env.db(db_name))
            items: list[tuple[bytes, bytes]] = []
            if not cursor.set_range(prefix):
                return items
            for key, value in cursor:
                if not key.startswith(prefix):
                    break
                items.append((key, value))
            return items

    # -- runs --

    def save_run(self, record: RunRecord, *, timeout: float | None = None) -> None:
        """Write (or overwrite) a run's header durably.

        Raises:
            UnserializableError: the inputs cannot be serialized.
            StoreError, ZixirTimeoutError: the commit failed or took too long.
        """
        self._write([(RUNS_DB, _key(record.run_id), _codec.encode(record))], timeout)

    def find_run(self, run_id: str) -> RunRecord | None:
        """The run's header, or None."""
        return self._get(RUNS_DB, _key(run_id), f"run {run_id}")  # type: ignore[no-any-return]

    def get_run(self, run_id: str) -> RunRecord:
        """The run's header.

        Raises:
            RunNotFoundError: no such run.
            CorruptBlobError: its record is damaged.
        """
        record = self.find_run(run_id)
        if record is None:
            raise RunNotFoundError(run_id)
        return record

    def list_runs(self, *, workflow: str | None = None,
                  status: str | None = None) -> list[RunRecord]:
        """All runs, oldest first, optionally of one workflow or status.

        A run whose header cannot be decoded is quarantined, not fatal: it is
        listed as a `RunRecord` with status ``"corrupt"``, workflow ``""``,
        times 0 and the decoding error in `error`. Only `delete_run` removes
        it (`prune` leaves it alone); `get_run` on it raises `CorruptBlobError`.
        """
        runs: list[RunRecord] = []
        for key, value in self._scan(RUNS_DB):
            run_id = key.decode(errors="replace")
            try:
                runs.append(_decode(value, f"run {run_id}"))
            except CorruptBlobError as exc:
                runs.append(RunRecord(run_id, "", CORRUPT, {}, 0.0, 0.0, str(exc)))
        return sorted((r for r in runs if (workflow is None or r.workflow == workflow)
                       and (status is None or r.status == status)),
                      key=lambda r: (r.created_at, r.run_id))

    def page_runs(self, *, after: str | None = None, limit: int = 50, prefix: str = "",
                  match: Callable[[RunRecord], bool] | None = None,
                  max_scan: int | None = None) -> tuple[list[RunRecord], str | None]:
        """One page of runs in key (run id) order, read with a cursor: never every run.

        Example:
            ``page, cursor = store.page_runs(limit=50)``, then
            ``store.page_runs(after=cursor, limit=50)`` for the next page.

        Args:
            after: continue after this run id (the cursor a previous page gave).
            limit: most runs on the page.
            prefix: only run ids that start with it.
            match: keep only the records it accepts (a corrupt header is kept,
                with status ``"corrupt"`` as in `list_runs`).
            max_scan: read at most this many records (a filter that matches
                little stops early and returns the cursor where it stopped).

        Returns:
            The page, and the cursor to pass as `after` for the next one
            (None when the scan reached the last run).
        """
        if limit < 1:
            raise ConfigError("limit", limit, "must be >= 1")
        pfx = prefix.encode()
        start = (after.encode() + b"\x00") if after is not None else pfx
        start = max(start, pfx)
        out: list[RunRecord] = []
        scanned = 0
        with self._read() as (env, txn):
            cursor = txn.cursor(db=env.db(RUNS_DB))
            if not cursor.set_range(start):
                return out, None
            for key, value in cursor:
                if not key.startswith(pfx):
                    return out, None
                run_id = key.decode(errors="replace")
                scanned += 1
                try:
                    record: RunRecord = _decode(value, f"run {run_id}")
                    keep = match is None or match(record)
                except CorruptBlobError as exc:
                    record, keep = RunRecord(run_id, "", CORRUPT, {}, 0.0, 0.0, str(exc)), True
                if keep:
                    out.append(record)
                if len(out) >= limit or (max_scan is not None and scanned >= max_scan):
                    return out, (run_id if cursor.next() and cursor.key().startswith(pfx)
                                 else None)
        return out, None

    def count_runs(self) -> int:
        """How many runs are stored (one LMDB stat, no scan)."""
        with self._read() as (env, txn):
            return int(txn.stat(env.db(RUNS_DB))["entries"])

    def delete_run(self, run_id: str, *, timeout: float | None = None) -> bool:
        """Delete a run, its checkpoints and its dead letters in one commit.

        Returns:
            False if there was no such run.
        """
        key = _key(run_id)
        with self._read() as (env, txn):  # a corrupt header must stay deletable
            existed = txn.get(key, db=env.db(RUNS_DB)) is not None
        ops: list[_Op] = [(RUNS_DB, key, None)]
        ops += [(STEPS_DB, k, None) for k, _ in self._scan(STEPS_DB, key + _SEP)]
        for db_name in (CALLS_DB, EVENTS_DB, PROGRESS_DB, LOGS_DB):
            ops += [(db_name, k, None) for k, _ in self._scan(db_name, key + _SEP)]
        ops += [(DEAD_DB, k, None) for k, v in self._scan(DEAD_DB) if _letter_of(v, run_id)]
        self._write(ops, timeout)
        return existed

    def prune(self, *, older_than: float | None = None, keep_last: int | None = None,
              include_running: bool = False, timeout: float | None = None) -> list[str]:
        """Retention: delete runs older than `older_than` seconds, keep the last `keep_last`.

        Example:
            ``store.prune(older_than=7 * 86400, keep_last=100)`` deletes runs
            older than a week, but never the 100 most recent.

        Args:
            older_than: delete runs created more than this many seconds ago.
            keep_last: keep the most recent `keep_last` runs whatever their age
                (alone: delete every other run).
            include_running: also delete runs whose status is ``"running"``.

        Returns:
            The ids of the deleted runs.

        Raises:
            ConfigError: a negative `older_than` or `keep_last`, or neither given.
        """
        if older_than is None and keep_last is None:
            raise ConfigError("prune", None, "give older_than, keep_last or both")
        if older_than is not None and older_than < 0:
            raise ConfigError("older_than", older_than, "must be >= 0")
        if keep_last is not None and (not isinstance(keep_last, int) or keep_last < 0):
            raise ConfigError("keep_last", keep_last, "must be an integer >= 0")
        runs = self.list_runs()
        protected = {r.run_id for r in runs[len(runs) - keep_last:]} if keep_last else set()
        cutoff = None if older_than is None else self._clock.time() - older_than
        doomed = [r.run_id for r in runs
                  if r.run_id not in protected
                  and (cutoff is None or r.created_at < cutoff)
                  and (include_running or r.status != "running") and r.status != CORRUPT]
        for run_id in doomed:
            self.delete_run(run_id, timeout=timeout)
        return doomed

    # -- steps --

    def save_step(self, checkpoint: StepCheckpoint, *, resolve_letters: Iterable[str] = (),
                  timeout: float | None = None) -> None:
        """Commit a finished step (its output and done-mark are one record).

        Args:
            checkpoint: the step's record.
            resolve_letters: dead letters of this step to delete in the same commit.

        Raises:
            UnserializableError: the output cannot be serialized.
            StoreError, ZixirTimeoutError: the commit failed or took too long.
        """
        c = checkpoint
        self.save_step_fields(c.run_id, c.step, c.output, c.code_hash, c.input_hash,
                              c.attempts, c.duration, c.finished_at, c.idempotency_key,
                              resolve_letters=resolve_letters, timeout=timeout)

    def save_step_fields(self, run_id: str, step: str, output: Any, code_hash: str,
                         input_hash: str, attempts: int, duration: float, finished_at: float,
                         idempotency_key: str, *, resolve_letters: Iterable[str] = (),
                         timeout: float | None = None,
                         defer_sync: bool = False) -> PendingSync | None:
        """`save_step` of a `StepCheckpoint` with these fields, without building one
        (the workflow engine's per-step path).

        With `defer_sync`, this may return once the checkpoint is committed,
        its fsync under way: a `PendingSync` to wait for (see there).
        """
        ops: list[_Op] = [(STEPS_DB, _step_key(run_id, step),
                           _pack_step(run_id, step, output, code_hash, input_hash, attempts,
                                      duration, finished_at, idempotency_key))]
        if resolve_letters:
            ops += [(DEAD_DB, _key(letter), None) for letter in resolve_letters]
        return self._write(ops, timeout, defer_sync)

    def get_step(self, run_id: str, step: str) -> StepCheckpoint | None:
        """The step's checkpoint, or None if it has not finished.

        Raises:
            CorruptBlobError: the checkpoint is damaged (the error names it).
        """
        with self._read() as (env, txn):
            blob = txn.get(_key(run_id, step), db=env.db(STEPS_DB))
        return None if blob is None else _unpack_step(run_id, step, blob)

    def steps(self, run_id: str) -> dict[str, StepCheckpoint]:
        """Every checkpoint of a run, by step name.

        Raises:
            CorruptBlobError: a checkpoint is damaged (the error names it).
        """
        prefix = _prefix(run_id)
        out: dict[str, StepCheckpoint] = {}
        for key, blob in self._scan(STEPS_DB, prefix):
            name = key[len(prefix):].decode()
            out[name] = _unpack_step(run_id, name, blob)
        return out

    def invalidate(self, run_id: str, steps: Iterable[str], *,
                   timeout: float | None = None) -> None:
        """Delete the checkpoints of `steps` in one commit (they will run again)."""
        ops: list[_Op] = [(STEPS_DB, _key(run_id, s), None) for s in steps]
        if ops:
            self._write(ops, timeout)

    # -- dead letters --

    def save_dead_letter(self, letter: DeadLetter, *, run: RunRecord | None = None,
                         replaces: Iterable[str] = (),
                         timeout: float | None = None) -> None:
        """Park a dead letter (and update its run's header) in one commit.

        Args:
            replaces: ids of older letters this one supersedes, deleted in the
                same commit (a step has one letter per failure, not per resume).
        """
        ops: list[_Op] = [(DEAD_DB, _key(old), None) for old in replaces if old != letter.id]
        ops.append((DEAD_DB, _key(letter.id), _codec.encode(letter)))
        if run is not None:
            ops.append((RUNS_DB, _key(run.run_id), _codec.encode(run)))
        self._write(ops, timeout)

    def dead_letters(self, *, workflow: str | None = None,
                     run_id: str | None = None) -> list[DeadLetter]:
        """Dead letters, oldest first, optionally of one workflow or run."""
        letters = [_decode(v, f"dead letter {k.decode(errors='replace')}")
                   for k, v in self._scan(DEAD_DB)]
        return sorted((d for d in letters if (workflow is None or d.workflow == workflow)
                       and (run_id is None or d.run_id == run_id)),
                      key=lambda d: (d.created_at, d.id))

    def get_dead_letter(self, letter_id: str) -> DeadLetter:
        """One dead letter.

        Raises:
            DeadLetterNotFoundError: no such letter.
        """
        letter = self._get(DEAD_DB, _key(letter_id), f"dead letter {letter_id}")
        if letter is None:
            raise DeadLetterNotFoundError(letter_id)
        return letter  # type: ignore[no-any-return]

    def delete_dead_letter(self, letter_id: str, *, timeout: float | None = None) -> bool:
        """Remove a dead letter; False if it did not exist."""
        key = _key(letter_id)
        with self._read() as (env, txn):
            existed = txn.get(key, db=env.db(DEAD_DB)) is not None
        if existed:
            self._write([(DEAD_DB, key, None)], timeout)
        return existed

    def count_dead_letters(self) -> int:
        """How many dead letters are parked."""
        with self._read() as (env, txn):
            return int(txn.stat(env.db(DEAD_DB))["entries"])

    # -- code-first runs: call records, event mailboxes, progress -------------

    def batch(self) -> Batch:
        """A set of writes to commit together with `commit` (one transaction)."""
        return Batch()

    def commit(self, batch: Batch, *, durable: bool = True,
               timeout: float | None = None) -> None:
        """Commit `batch` in one transaction.

        Args:
            durable: go through the group commit and fsync (default); False
                commits at once without a disk sync (progress items: a crash
                of the machine may lose them, a crash of the process cannot).

        Raises:
            StoreError, ZixirTimeoutError: the commit failed or took too long.
        """
        if not batch.ops:
            return
        if durable:
            self._write(batch.ops, timeout)
            return
        self._get_channel().env.apply(batch.ops)

    def put_call(self, run_id: str, position: int, record: Any, *,
                 timeout: float | None = None) -> None:
        """Commit one call record of a code-first run, durably (`Batch.put_call` alone).

        Raises:
            UnserializableError: `record` cannot be pickled (nothing is written).
            StoreError, ZixirTimeoutError: the commit failed or took too long.
        """
        self._write(((CALLS_DB, _prefix(run_id) + _SEQ.pack(position),
                      _codec.encode(record)),), timeout)

    def calls(self, run_id: str) -> list[tuple[int, Any]]:
        """Every call record of a code-first run, as ``(position, record)`` in order.

        Raises:
            CorruptBlobError: a record is damaged (the error names it).
        """
        prefix = _prefix(run_id)
        return [(_SEQ.unpack(key[len(prefix):])[0],
                 _decode(blob, f"call {run_id}/{key[len(prefix):].hex()}"))
                for key, blob in self._scan(CALLS_DB, prefix)]

    def get_call(self, run_id: str, position: int) -> Any:
        """The call record at `position` of a code-first run, or None."""
        key = _prefix(run_id) + _SEQ.pack(position)
        return self._get(CALLS_DB, key, f"call {run_id}/{position}")

    def drop_calls(self, run_id: str, from_position: int = 0, *,
                   timeout: float | None = None) -> int:
        """Delete the call records at `from_position` and after; returns how many."""
        prefix = _prefix(run_id)
        doomed = [key for key, _ in self._scan(CALLS_DB, prefix)
                  if _SEQ.unpack(key[len(prefix):])[0] >= from_position]
        if doomed:
            self._write([(CALLS_DB, key, None) for key in doomed], timeout)
        return len(doomed)

    def events(self, run_id: str) -> list[tuple[int, str, Any, float]]:
        """The run's mailbox: ``(seq, event, payload, sent_at)``, oldest first."""
        prefix = _prefix(run_id)
        out = []
        for key, blob in self._scan(EVENTS_DB, prefix):
            event, payload, sent_at = _decode(blob, f"event {run_id}")
            out.append((_SEQ.unpack(key[len(prefix):])[0], event, payload, sent_at))
        return out

    # -- runtimes sharing the directory ---------------------------------------

    def save_runtime(self, info: Any, *, durable: bool = True) -> None:
        """Write a runtime's lease record (`zixir_actors._runtimes.RuntimeInfo`)."""
        batch = Batch()
        batch.ops.append((RUNTIMES_DB, _key(info.id), _codec.encode(info)))
        self.commit(batch, durable=durable)

    def delete_runtime(self, runtime_id: str) -> None:
        self._write([(RUNTIMES_DB, _key(runtime_id), None)], None)

    def runtimes(self) -> list[Any]:
        """Every runtime lease record on the directory (dead ones included)."""
        out = []
        for key, blob in self._scan(RUNTIMES_DB):
            try:
                out.append(_decode(blob, f"runtime {key.decode(errors='replace')}"))
            except CorruptBlobError:
                continue  # a damaged lease is as good as an expired one
        return out

    def claim_runs(self, run_ids: Iterable[str], *, allowed: Any, owner: str,
                   statuses: tuple[str, ...] = ("running", "parked")) -> list[RunRecord]:
        """Make `owner` the owner of each run whose current owner is in `allowed`.

        One write transaction reads and rewrites the records, so when several
        runtimes claim the same run at once exactly one gets it.

        Returns:
            The claimed runs' records (with the new owner).
        """
        wanted = list(run_ids)
        claimed: list[RunRecord] = []

        def claim(txn: Any) -> None:
            claimed.clear()
            db = env.db(RUNS_DB)
            for run_id in wanted:
                record = _codec.decode_as(txn.get(_key(run_id), db=db), RunRecord,
                                          key=f"run {run_id}")
                if record is None or record.status not in statuses \
                        or record.owner not in allowed:
                    continue
                record = replace(record, owner=owner)
                txn.put(_key(run_id), _codec.encode(record), db=db)
                claimed.append(record)

        if not wanted:
            return claimed
        env = self._get_channel().env
        env.write(claim, durable=True)
        return claimed

    def transact(self, fn: Callable[[Any, Callable[[str], Any]], _T], *,
                 durable: bool = True) -> _T:
        """Run ``fn(txn, db)`` in one LMDB write transaction and commit it.

        ``db(name)`` gives a sub-database handle (only those the store opens at
        start). LMDB serializes write transactions across every process on the
        directory, so a read-check-write inside `fn` is atomic. `fn` may run
        again if the map had to grow: it must only touch the transaction.
        """
        env = self._get_channel().env
        return env.write(lambda txn: fn(txn, env.db), durable=durable)

    @contextmanager
    def snapshot(self) -> Iterator[tuple[Any, Callable[[str], Any]]]:
        """A read transaction and ``db(name)``: one consistent view of the store."""
        with self._read() as (env, txn):
            yield txn, env.db

    def pending_events(self) -> list[tuple[str, str]]:
        """Every event not yet taken, as ``(run_id, event)``, in one pass over the mailboxes."""
        out: list[tuple[str, str]] = []
        for key, blob in self._scan(EVENTS_DB):
            if key == _MAILBOX_MARK:
                continue
            run_id = key[:-(_SEQ.size + 1)].decode(errors="replace")
            try:
                event = _decode(blob, f"event {run_id}")[0]
            except CorruptBlobError:
                continue
            out.append((run_id, event))
        return out

    def mailbox_mark(self) -> int:
        """The sequence number of the last event sent to any run (0 if none)."""
        with self._read() as (env, txn):
            raw = txn.get(_MAILBOX_MARK, db=env.db(EVENTS_DB))
        return 0 if raw is None else int(_SEQ.unpack(raw)[0])

    def progress(self, run_id: str, after: int = -1,
                 limit: int | None = None) -> list[tuple[int, Any]]:
        """Stored progress items of a run with a sequence number above `after`."""
        prefix = _prefix(run_id)
        start = prefix + _SEQ.pack(after + 1) if after >= 0 else prefix
        out: list[tuple[int, Any]] = []
        with self._read() as (env, txn):
            cursor = txn.cursor(db=env.db(PROGRESS_DB))
            if not cursor.set_range(start):
                return out
            for key, blob in cursor:
                if not key.startswith(prefix):
                    break
                out.append((_SEQ.unpack(key[len(prefix):])[0],
                            _decode(blob, f"progress {run_id}")))
                if limit is not None and len(out) >= limit:
                    break
        return out

    def last_seq(self, db: str, run_id: str) -> int:
        """The highest sequence number stored for `run_id` in `db` (-1 if none)."""
        prefix = _prefix(run_id)
        upper = _key(run_id) + b"\x01"
        with self._read() as (env, txn):
            cursor = txn.cursor(db=env.db(db))
            found = cursor.prev() if cursor.set_range(upper) else cursor.last()
            if not found or not cursor.key().startswith(prefix):
                return -1
            return int(_SEQ.unpack(cursor.key()[len(prefix):])[0])


    # -- run logs (zixir_actors.workflow._history writes them) ---------------
    #
    # ``zixir.logs`` holds, under ``run_id NUL``: chunks of lines keyed by the
    # big-endian seq of their first line (a chunk is one encoded list of
    # ``(time, level, step, attempt, message, fields)``), and, under
    # ``run_id NUL 0xfe seq``, when the steps that started in that chunk first
    # started (an encoded dict label -> time: one record per chunk, not one
    # key per step). Earlier versions kept ``run_id NUL 0xff label`` -> 8-byte
    # float; `step_starts` still reads those.

    def append_run_logs(self, run_id: str, first_seq: int, lines: Sequence[tuple[Any, ...]],
                        *, max_lines: int, starts: Mapping[str, float] | None = None) -> int:
        """Store a run's lines ``first_seq, first_seq + 1, ...`` as one chunk, without
        a disk sync, and drop the run's oldest lines beyond `max_lines` (one transaction).

        Args:
            lines: ``(time, level, step, attempt, message, fields)`` tuples.
            max_lines: how many of the run's newest lines to keep.
            starts: step label -> when it first started (an existing mark is kept).

        Returns:
            How many lines this call dropped.
        """
        prefix = _prefix(run_id)
        chunk = _codec.encode(list(lines)) if lines else None
        end = first_seq + len(lines)
        marks_key = prefix + _STARTS + _SEQ.pack(first_seq)

        def apply(txn: Any, db: Callable[[str], Any]) -> int:
            handle = db(LOGS_DB)
            if starts:  # one record per group of lines: a run's starts are the earliest
                found = txn.get(marks_key, db=handle)
                merged = dict(starts)
                if found is not None:
                    _keep_earliest(merged, _codec.decode(found, key="step starts"))
                txn.put(marks_key, _codec.encode(merged), db=handle)
            if chunk is None:
                return 0
            txn.put(prefix + _SEQ.pack(first_seq), chunk, db=handle)
            return _trim_logs(txn, handle, prefix, end - max_lines)

        return int(self.transact(apply, durable=False))

    def run_logs(self, run_id: str, *, after: int | None = None, step: str | None = None,
                 limit: int | None = None) -> list[LogLine]:
        """A run's stored log lines, oldest first.

        Example:
            ``for line in store.run_logs(run_id, step="fetch"): print(line.message)``

        Args:
            after: only lines with a `LogLine.seq` above this one (to read on).
            step: only lines of this step (a code-first label ``"llm#2"``, or
                a name, which matches every call of that name).
            limit: at most this many lines (the oldest that match).

        Raises:
            CorruptBlobError: a chunk of lines is damaged (the error names it).
        """
        prefix = _prefix(run_id)
        out: list[LogLine] = []
        with self._read() as (env, txn):
            cursor = txn.cursor(db=env.db(LOGS_DB))
            found = _seek_chunk(cursor, prefix, 0 if after is None else after + 1)
            while found:
                key = cursor.key()
                if not _is_chunk(key, prefix):
                    break
                first = _SEQ.unpack(key[len(prefix):])[0]
                lines = _decode(cursor.value(), f"log lines {run_id}/{first}")
                for offset, (at, level, label, attempt, message, fields) in enumerate(lines):
                    seq = first + offset
                    if after is not None and seq <= after:
                        continue
                    if step is not None and label != step and (
                            label is None or "#" in step or label.split("#", 1)[0] != step):
                        continue
                    out.append(LogLine(seq, at, level, message, label, attempt, fields or {}))
                    if limit is not None and len(out) >= limit:
                        return out
                found = cursor.next()
        return out

    def run_log_bounds(self, run_id: str) -> tuple[int, int]:
        """``(first, end)``: the seq of a run's oldest stored line and one past its
        newest. `first` is also how many of its lines were dropped to keep it
        bounded; ``(0, 0)`` when it has none."""
        prefix = _prefix(run_id)
        with self._read() as (env, txn):
            cursor = txn.cursor(db=env.db(LOGS_DB))
            if not cursor.set_range(prefix) or not _is_chunk(cursor.key(), prefix):
                return (0, 0)
            first = _SEQ.unpack(cursor.key()[len(prefix):])[0]
            # The first key past every chunk (their seqs start with a 0 byte).
            moved = cursor.prev() if cursor.set_range(prefix + b"\x01") else cursor.last()
            if not moved or not _is_chunk(cursor.key(), prefix):
                return (0, 0)
            last = _SEQ.unpack(cursor.key()[len(prefix):])[0]
            size = len(_decode(cursor.value(), f"log lines {run_id}/{last}"))
            return (int(first), int(last + size))

    def step_starts(self, run_id: str) -> dict[str, float]:
        """When each step (or code-first call label) of a run first started.

        Raises:
            CorruptBlobError: a record of starts is damaged (the error names it).
        """
        prefix = _prefix(run_id)
        starts: dict[str, float] = {}
        for _, value in self._scan(LOGS_DB, prefix + _STARTS):
            _keep_earliest(starts, _decode(value, f"step starts {run_id}"))
        for key, value in self._scan(LOGS_DB, prefix + _OLD_START):  # earlier versions' marks
            label = key[len(prefix) + 1:].decode(errors="replace")
            _keep_earliest(starts, {label: struct.unpack(">d", value)[0]})
        return starts


_STARTS = b"\xfe"
"""After a run's prefix in the log database: a record of when steps first started,
one per group of lines (a dict label -> time), keyed by the group's first seq."""
_OLD_START = b"\xff"
"""After a run's prefix: one step's first start (stored so before records grouped them)."""


def _keep_earliest(into: dict[str, float], more: Any) -> None:
    if not isinstance(more, dict):
        raise CorruptBlobError(f"not a record of step starts: {type(more).__name__}",
                               key="step starts")
    for label, at in more.items():
        known = into.get(label)
        if known is None or at < known:
            into[label] = at


def _is_chunk(key: bytes | None, prefix: bytes) -> bool:
    # A chunk's seq is below 2**56 (first byte 0); the step starts begin with 0xfe or 0xff.
    if not key:
        return False
    return key.startswith(prefix) and len(key) == len(prefix) + 8 and key[len(prefix)] == 0


def _seek_chunk(cursor: Any, prefix: bytes, seq: int) -> bool:
    """Put `cursor` on the chunk holding line `seq` (or the first after it)."""
    target = prefix + _SEQ.pack(seq)
    if cursor.set_range(target):
        if cursor.key() == target:
            return True
        moved = cursor.prev()
    else:
        moved = cursor.last()
    if moved and _is_chunk(cursor.key(), prefix):
        return True
    return bool(cursor.set_range(prefix))


def _trim_logs(txn: Any, handle: Any, prefix: bytes, floor: int) -> int:
    """Delete a run's lines below seq `floor` (a chunk across it is cut); returns how many."""
    if floor <= 0:
        return 0
    dropped = 0
    cursor = txn.cursor(db=handle)
    if not cursor.set_range(prefix):
        return 0
    while _is_chunk(cursor.key(), prefix):
        key = cursor.key()
        first = _SEQ.unpack(key[len(prefix):])[0]
        if first >= floor:
            break
        lines = _codec.decode(cursor.value(), key=f"log lines at {first}")
        cut = int(floor - first)
        cursor.delete()  # moves the cursor to the next record
        if cut < len(lines):
            txn.put(prefix + _SEQ.pack(floor), _codec.encode(lines[cut:]), db=handle)
            return dropped + cut
        dropped += len(lines)
        if not cursor.key():
            break
    return dropped


_SEQ = struct.Struct(">Q")
_MAILBOX_MARK = b"\xff.sent"  # no UTF-8 run id starts with 0xff


class Batch:
    """Writes of a code-first run that commit together (`CheckpointClient.commit`)."""

    __slots__ = ("ops",)

    def __init__(self) -> None:
        self.ops: list[_Op] = []

    def __len__(self) -> int:
        return len(self.ops)

    def put_call(self, run_id: str, position: int, record: Any) -> None:
        self.ops.append((CALLS_DB, _prefix(run_id) + _SEQ.pack(position),
                         _codec.encode(record)))

    def put_event(self, run_id: str, seq: int, event: str, payload: Any,
                  sent_at: float) -> None:
        self.ops.append((EVENTS_DB, _prefix(run_id) + _SEQ.pack(seq),
                         _codec.encode((event, payload, sent_at))))

    def delete_event(self, run_id: str, seq: int) -> None:
        self.ops.append((EVENTS_DB, _prefix(run_id) + _SEQ.pack(seq), None))

    def touch_mailbox(self, seq: int) -> None:
        """Mark that an event was sent (processes watching their parked runs read it)."""
        self.ops.append((EVENTS_DB, _MAILBOX_MARK, _SEQ.pack(seq)))

    def put_progress(self, run_id: str, seq: int, item: Any) -> None:
        self.ops.append((PROGRESS_DB, _prefix(run_id) + _SEQ.pack(seq),
                         _codec.encode(item)))

    def put_run(self, record: RunRecord) -> None:
        self.ops.append((RUNS_DB, _key(record.run_id), _codec.encode(record)))

    def put_dead_letter(self, letter: DeadLetter) -> None:
        self.ops.append((DEAD_DB, _key(letter.id), _codec.encode(letter)))

    def delete_dead_letter(self, letter_id: str) -> None:
        self.ops.append((DEAD_DB, _key(letter_id), None))

    def extend(self, other: Batch) -> None:
        self.ops.extend(other.ops)


def connect(target: Any = STORE_NAME, *, clock: Clock = SYSTEM_CLOCK,
            timeout: float | None = DEFAULT_TIMEOUT) -> CheckpointClient:
    """A client of the store actor `target` (default the runtime's ``zixir.store``).

    Example:
        ``store = connect(); store.list_runs(workflow="etl")``

    Raises:
        NotStartedError: no store is running under that name (at first use).
    """
    return CheckpointClient(target, clock=clock, timeout=timeout)


@contextmanager
def open_store(data_dir: str | os.PathLike[str] | None = None, *, durable: bool = True,
               map_size: int = _lmdb.DEFAULT_MAP_SIZE, clock: Clock = SYSTEM_CLOCK,
               timeout: float | None = DEFAULT_TIMEOUT) -> Iterator[CheckpointClient]:
    """An embedded store for scripts and tests: a private `CheckpointStore` actor.

    The actor is not supervised and stops when the block ends. Inside a
    running runtime use `connect()` instead.

    Example:
        ``with open_store(tmp_path) as store: wf.run({...}, store=store)``
    """
    actor = CheckpointStore.start(data_dir=data_dir, durable=durable, map_size=map_size)
    try:
        yield CheckpointClient(actor, clock=clock, timeout=timeout)
    finally:
        actor.stop(timeout=timeout)


# -- integrity and backup ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoreCheck:
    """What `check_store` found in a data directory.

    Attributes:
        data_dir: the directory checked.
        records: records read, per sub-database.
        problems: one line per damaged file part, page or record (empty: sound).
    """

    data_dir: str
    records: Mapping[str, int]
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def check_record(db: str, key: bytes, value: bytes) -> str | None:
    """What is wrong with one record of the checkpoint store's sub-databases, or None.

    Records of other sub-databases (caches) are only read, not decoded.
    """
    name = key.decode(errors="replace")
    try:
        if db in (RUNS_DB, DEAD_DB):
            _codec.decode(value, key=name)
        elif db == STEPS_DB:
            run_id, _, step = name.partition("\x00")
            _unpack_step(run_id, step, value)
    except CorruptBlobError as exc:
        return exc.reason
    return None


CHECK_TIMEOUT = 600.0
"""Default seconds `check_store` lets its reader process walk the records."""


def check_store(data_dir: str | os.PathLike[str] | None = None, *,
                timeout: float | None = CHECK_TIMEOUT) -> StoreCheck:
    """Check a data directory's ``data.mdb`` without risking the caller.

    Checks the file against its meta pages, every page header (a zeroed or
    overwritten page is named), then reads every record of every sub-database
    and decodes the checkpoint store's records. The reading runs in a child
    process: LMDB aborts on a damaged B-tree page, which then ends only the
    child and is reported with the sub-database it was reading. Safe on a
    live directory (a runtime may be writing: the check reads one snapshot).

    Example:
        ``report = check_store(".zixir"); print(report.ok, report.problems)``

    Args:
        data_dir: the directory (default ``$ZIXIR_DATA_DIR`` or ``./.zixir``).
        timeout: seconds the reader process may take (None: no limit).

    Raises:
        StoreError: there is no store in `data_dir`.
        ZixirTimeoutError: the reader did not finish within `timeout`.
    """
    import json
    import subprocess
    import sys

    path = str(resolve_data_dir(data_dir))
    data = os.path.join(path, "data.mdb")
    if not os.path.isfile(data):
        raise StoreError(f"no store in {path} (no data.mdb)")
    try:
        problems = _lmdb.scan_pages(data)
    except StoreCorruptError as exc:
        return StoreCheck(path, {}, (exc.reason,))
    code = "import sys; from zixir_actors._lmdb import _walk_main; _walk_main()"
    try:
        child = subprocess.run([sys.executable, "-c", code, path], capture_output=True,
                               text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ZixirTimeoutError(f"checking the store in {path}", timeout) from None
    counts: dict[str, int] = {}
    reading = None
    for line in child.stdout.splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if "db" in message:
            reading = message["db"]
        elif "counts" in message:
            counts = message["counts"]
            problems += message["problems"]
            reading = None
    if child.returncode != 0 or reading is not None:
        how = (f"signal {-child.returncode}" if child.returncode < 0
               else f"exit status {child.returncode}")
        where = f"sub-database {reading!r}" if reading else "the database list"
        last = (child.stderr.strip().splitlines() or [""])[-1][:300]
        problems.append(f"reading {where} ended the reader ({how}): a damaged B-tree page"
                        + (f"; {last}" if last else ""))
    return StoreCheck(path, counts, tuple(problems))


def backup_store(data_dir: str | os.PathLike[str] | None, dest: str | os.PathLike[str]) -> str:
    """Write a consistent, compacted copy of a data directory's store into `dest`.

    The copy is one read snapshot (LMDB's ``mdb_env_copy2`` with compaction),
    so it is consistent even while a runtime writes to the directory; free
    pages are left out. `dest` is created owner-only and must be empty.
    Open the copy like any data directory (``start(data_dir=dest)``).

    Example:
        ``backup_store(".zixir", "/backups/zixir-2026-01-01")``

    Returns:
        The path of the copy's ``data.mdb``.

    Raises:
        StoreError: no store in `data_dir`, or `dest` exists and is not an
            empty directory.
        StoreCorruptError: the source file is damaged (see `check_store`).
        StoreFullError: `dest`'s filesystem filled up (the partial copy is removed).
    """
    path = str(resolve_data_dir(data_dir))
    target = os.path.abspath(os.fspath(dest))
    if not os.path.isfile(os.path.join(path, "data.mdb")):
        raise StoreError(f"no store in {path} (no data.mdb)")
    if os.path.exists(target) and (not os.path.isdir(target) or os.listdir(target)):
        raise StoreError(f"backup destination {target} exists and is not an empty directory")
    os.makedirs(target, mode=0o700, exist_ok=True)
    out = os.path.join(target, "data.mdb")
    env = _lmdb.open_env(path)
    try:
        env.copy(target, compact=True)
    except StoreError:
        with contextlib.suppress(OSError):
            os.remove(out)
        raise
    finally:
        _lmdb.release(env)
    os.chmod(out, _lmdb.FILE_MODE)
    _lmdb.check_file(out)
    return out

