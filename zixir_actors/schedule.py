"""Cron schedules of workflows, stored in the data directory and run exactly once per tick.

Example:
    >>> import tempfile, zixir_actors
    >>> from zixir_actors import Workflow
    >>> report = Workflow("doc-report")
    >>> @report.step()
    ... def build(day):
    ...     return f"report for {day}"
    >>> with zixir_actors.start(data_dir=tempfile.mkdtemp()):
    ...     s = report.schedule("0 6 * * MON-FRI", {"day": "today"}, timezone="Europe/Paris")
    ...     [(x.name, x.cron, x.paused) for x in zixir_actors.schedules()]
    [('doc-report', '0 6 * * MON-FRI', False)]

A schedule is a record in the ``zixir.schedules`` sub-database: it survives
restarts and is seen by every process on the directory. The
``zixir.scheduler`` actor of each runtime sleeps until the next tick of the
schedules it can run (their workflow is defined in this process, or they put
their runs on a queue), on its clock (`start(scheduler={"clock": c})`; tests
pass a `zixir_actors.testing.FakeClock`), then starts the tick's run.

Exactly once per tick: the run id is derived from the schedule's name and
the tick's time (``nightly@2026-01-01T02:00:00Z``), and the run is created in
one LMDB write transaction that first checks that no run has that id. When
several processes wake for the same tick, one creates the run and the others
find it there.

Catch-up: ticks that came due while no process ran (at most
`MAX_CATCH_UP` per look) are handled by `catch_up` when a process first sees
the schedule: ``"skip"`` runs none of them, ``"latest"`` (default) runs the
most recent one, ``"all"`` runs every one. A tick that comes due while a
process runs always runs, even if that process woke late. Ticks that pass
while a schedule is paused never run (`resume_schedule` starts from now).

Cron expressions are parsed by croniter (maintained under pallets-eco; it
takes 5 fields, or 6 with seconds first: ``"*/10 * * * * *"``), in the
schedule's `timezone` (an IANA name; daylight-saving days follow croniter).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from datetime import timezone as _tz
from typing import Any, Literal, cast

import pykka

from supervisors import ChildSpec, SupervisedActor, whereis
from zixir_actors import _codec
from zixir_actors._clock import SYSTEM_CLOCK, Clock
from zixir_actors.checkpoint import CheckpointClient, RunRecord, connect
from zixir_actors.errors import (
    ConfigError,
    RunActiveError,
    ScheduleNotFoundError,
)
from zixir_actors.observability import logger

__all__ = ["CATCH_UP", "MAX_CATCH_UP", "SCHEDULER_NAME", "CatchUp", "Schedule", "Scheduler",
           "child_spec", "delete_schedule", "pause_schedule", "resume_schedule", "run_id_of",
           "schedule", "schedules", "tick"]

CatchUp = Literal["skip", "latest", "all"]
CATCH_UP: tuple[str, ...] = ("skip", "latest", "all")
SCHEDULER_NAME = "zixir.scheduler"
"""The registered name of the runtime's scheduler."""
SCHEDULES_DB = "zixir.schedules"
MAX_CATCH_UP = 1000
"""Missed ticks one look runs at most with ``catch_up="all"`` (the next look runs more)."""
RELOAD = 1.0
"""Seconds (real time) between two reads of the stored schedules while the scheduler
sleeps: pauses, resumes and deletions from other processes are seen within that."""

log = logger.bind(service="scheduler")
_declared: dict[str, Schedule] = {}  # declared while no scheduler ran: stored at its start
_declared_lock = threading.Lock()
_clock: Clock = SYSTEM_CLOCK  # the running scheduler's clock (declarations read it)


@dataclass(frozen=True, slots=True)
class Schedule:
    """A stored schedule.

    Attributes:
        name: its name (the workflow's name unless given).
        workflow: the workflow it runs.
        cron: the cron expression.
        inputs: the inputs of every run.
        timezone: the IANA time zone the expression is read in.
        catch_up: ``"skip"``, ``"latest"`` or ``"all"`` (see the module docs).
        queue: the queue its runs go on (its stored limits), or None.
        paused: paused schedules start no runs.
        last_tick: the wall time of the last tick handled (run, or skipped by catch-up).
        created_at: when it was first stored.
    """

    name: str
    workflow: str
    cron: str
    inputs: Mapping[str, Any]
    timezone: str
    catch_up: str
    queue: Any
    paused: bool
    last_tick: float
    created_at: float

    def next_tick(self, after: float) -> float:
        """The first tick strictly after the wall time `after`."""
        return _iter(self.cron, self.timezone, after).get_next(float)  # type: ignore[no-any-return]


def run_id_of(name: str, tick: float) -> str:
    """The run id of the tick at wall time `tick` of schedule `name`."""
    stamp = datetime.fromtimestamp(round(tick), _tz.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{name}@{stamp}"


def _iter(cron: str, timezone: str, start: float) -> Any:
    from zoneinfo import ZoneInfo

    from croniter import croniter

    return croniter(cron, datetime.fromtimestamp(start, ZoneInfo(timezone)),
                    second_at_beginning=True)


def _check(cron: Any, timezone: Any, catch_up: Any) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from croniter import croniter

    if not isinstance(cron, str) or not croniter.is_valid(cron, second_at_beginning=True):
        raise ConfigError("cron", cron, "is not a cron expression (5 fields, or 6 with "
                                        "seconds first)")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ConfigError("timezone", timezone, "is not an IANA time zone name "
                                                "such as 'UTC' or 'Europe/Paris'") from None
    if catch_up not in CATCH_UP:
        raise ConfigError("catch_up", catch_up, f"must be one of {CATCH_UP}")


def _ticks(s: Schedule, after: float, until: float, limit: int = MAX_CATCH_UP) -> list[float]:
    if until <= after:
        return []
    it = _iter(s.cron, s.timezone, after)
    out: list[float] = []
    while len(out) < limit:
        t = float(it.get_next(float))
        if t > until:
            break
        out.append(t)
    return out


def _latest(s: Schedule, after: float, until: float) -> list[float]:
    if until <= after:
        return []
    t = float(_iter(s.cron, s.timezone, until + 0.001).get_prev(float))
    return [t] if after < t <= until else []


# -- the store --------------------------------------------------------------------


def _read(txn: Any, db: Any, name: str) -> Schedule | None:
    return _codec.decode_as(txn.get(name.encode(), db=db(SCHEDULES_DB)), Schedule,
                            key=f"schedule {name}")


def _write(txn: Any, db: Any, s: Schedule) -> None:
    txn.put(s.name.encode(), _codec.encode(s), db=db(SCHEDULES_DB))


def _declare(store: CheckpointClient, s: Schedule) -> Schedule:
    def write(txn: Any, db: Any) -> Schedule:
        old = _read(txn, db, s.name)
        new = s if old is None else dataclasses.replace(
            s, paused=old.paused, last_tick=old.last_tick, created_at=old.created_at)
        if new != old:
            _write(txn, db, new)
        return new

    return store.transact(write)


def schedule(wf: Any, cron: str, inputs: Mapping[str, Any] | None = None, *,
             name: str | None = None, timezone: str = "UTC", catch_up: str = "latest",
             queue: Any = None) -> Schedule:
    """Store a schedule that runs `wf` at every tick of `cron` (`Workflow.schedule`).

    Declaring it again (every process does at start, say) updates its
    expression, inputs and options and keeps whether it is paused and the
    ticks it handled. Called before `zixir_actors.start()`, it is stored when
    the runtime's scheduler starts (on the directory of that runtime).

    Args:
        wf: the workflow.
        cron: 5 fields (minute hour day month weekday), or 6 with seconds first.
        inputs: the inputs of every run (checked now).
        name: the schedule's name (default the workflow's name).
        timezone: the IANA zone `cron` is read in (default ``"UTC"``).
        catch_up: what to do with ticks missed while no process ran:
            ``"skip"``, ``"latest"`` (default) or ``"all"``.
        queue: a `zixir_actors.Queue` to put the runs on (its limits apply).

    Returns:
        The `Schedule` (as stored, or as it will be).

    Raises:
        ConfigError: a bad expression, zone, catch-up, name or queue.
        (and the errors of `Workflow.validate_inputs`)
    """
    from zixir_actors.queue import Queue

    _check(cron, timezone, catch_up)
    checked = wf.validate_inputs(inputs)
    name = wf.name if name is None else name
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ConfigError("schedule name", name, "must be a non-empty string without NUL")
    if queue is not None and not isinstance(queue, Queue):
        raise ConfigError("queue", queue, "must be a zixir_actors.Queue or None")
    now = _clock.time()
    s = Schedule(name, wf.name, cron, checked, timezone, catch_up,
                 None if queue is None else queue.config, False, now, now)
    if whereis(SCHEDULER_NAME) is None:
        with _declared_lock:
            _declared[name] = s
        return s
    stored = _declare(connect(), s)
    _kick()
    return stored


def schedules(store: CheckpointClient | None = None) -> list[Schedule]:
    """Every stored schedule of the data directory, by name.

    Raises:
        NotStartedError: no store given and no runtime running.
    """
    client = connect() if store is None else store
    out = []
    with client.snapshot() as (txn, db):
        for key, blob in txn.cursor(db=db(SCHEDULES_DB)):
            value = _codec.decode_as(blob, Schedule,
                                     key=f"schedule {key.decode(errors='replace')}")
            if value is not None:
                out.append(value)
    return sorted(out, key=lambda s: s.name)


def _change(name: str, store: CheckpointClient | None, fn: Any) -> Schedule | None:
    client = connect() if store is None else store

    def write(txn: Any, db: Any) -> Schedule | None:
        old = _read(txn, db, name)
        if old is None:
            raise ScheduleNotFoundError(name)
        new: Schedule | None = fn(old)
        if new is None:
            txn.delete(name.encode(), db=db(SCHEDULES_DB))
        elif new != old:
            _write(txn, db, new)
        return new

    result = client.transact(write)
    _kick()
    return result


def pause_schedule(name: str, *, store: CheckpointClient | None = None) -> Schedule:
    """Pause a schedule in every process (no tick runs until it is resumed).

    Raises:
        ScheduleNotFoundError: no such schedule.
    """
    found = _change(name, store, lambda s: dataclasses.replace(s, paused=True))
    assert found is not None
    return found


def resume_schedule(name: str, *, store: CheckpointClient | None = None) -> Schedule:
    """Resume a paused schedule: the next tick from now runs (none of those while paused).

    Raises:
        ScheduleNotFoundError: no such schedule.
    """
    now = _clock.time()
    found = _change(name, store, lambda s: s if not s.paused else dataclasses.replace(
        s, paused=False, last_tick=max(s.last_tick, now)))
    assert found is not None
    return found


def delete_schedule(name: str, *, store: CheckpointClient | None = None) -> None:
    """Delete a schedule (its past runs stay). Declaring it again brings it back.

    Raises:
        ScheduleNotFoundError: no such schedule.
    """
    with _declared_lock:
        _declared.pop(name, None)
    _change(name, store, lambda s: None)


def tick(*, timeout: float | None = 10.0) -> list[str]:
    """Make this process's scheduler look at every schedule now; the run ids it created.

    Raises:
        NotStartedError: the runtime (its scheduler) is not running.
        ZixirTimeoutError: the look did not end within `timeout` seconds.
    """
    from zixir_actors.errors import NotStartedError, ZixirTimeoutError

    found = whereis(SCHEDULER_NAME)
    if found is None:
        raise NotStartedError(SCHEDULER_NAME)
    try:
        made = cast("list[str]", found.ask("tick", timeout=timeout))
    except pykka.Timeout:
        raise ZixirTimeoutError("the scheduler's look", timeout) from None
    except pykka.ActorDeadError:
        raise NotStartedError(SCHEDULER_NAME) from None
    return made


def _kick() -> None:
    found = whereis(SCHEDULER_NAME)
    if found is not None:
        found.tell("kick")


# -- the actor ------------------------------------------------------------------------


class Scheduler(SupervisedActor):
    """Starts the runs of the schedules this process can run (``zixir.scheduler``).

    Args:
        clock: what it sleeps on and reads tick times from (default the system clock).
    """

    def __init__(self, *, clock: Clock = SYSTEM_CLOCK) -> None:
        super().__init__()
        self.clock = clock
        self._cursor: dict[str, float] = {}
        self._cond = threading.Condition()
        self._halt = False
        self._kicked = False
        self._next: float | None = None
        self._thread: threading.Thread | None = None
        self._store: CheckpointClient | None = None

    def on_start(self) -> None:
        global _clock
        _clock = self.clock
        self._store = connect()
        with _declared_lock:
            declared = list(_declared.values())
            _declared.clear()
        now = self.clock.time()
        for s in declared:
            _declare(self._store, dataclasses.replace(s, last_tick=now, created_at=now))
        add_listener = getattr(self.clock, "add_listener", None)
        if callable(add_listener):
            add_listener(self._wake)
        self._kicked = True  # look at once
        self._thread = threading.Thread(target=self._sleep, daemon=True, name="zixir-scheduler")
        self._thread.start()

    def on_receive(self, message: Any) -> Any:
        if message == "tick":
            return self._look()
        if message == "kick":
            self._wake()
            return None
        raise TypeError(f"Scheduler got an unknown message: {message!r}")

    def on_stop(self) -> None:
        self._shutdown()

    def on_failure(self, *args: Any) -> None:
        self._shutdown()

    def _shutdown(self) -> None:
        global _clock
        with self._cond:
            self._halt = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10.0)
        if _clock is self.clock:
            _clock = SYSTEM_CLOCK

    def _wake(self) -> None:
        with self._cond:
            self._kicked = True
            self._cond.notify_all()

    def _sleep(self) -> None:
        """Sleep until the next tick (or a kick, or `RELOAD`), then make the actor look."""
        while True:
            with self._cond:
                while not self._halt and not self._kicked:
                    due = self._next
                    left = RELOAD if due is None else due - self.clock.time()
                    if left <= 0:
                        break
                    if not self._cond.wait(min(left, RELOAD)):
                        break  # RELOAD passed: read the store again
                if self._halt:
                    return
                self._kicked = False
            try:
                future = self.actor_ref.ask("tick", block=False)
                while True:  # never block the actor's stop (it joins this thread)
                    try:
                        future.get(timeout=0.1)
                        break
                    except pykka.Timeout:
                        with self._cond:
                            if self._halt:
                                return
            except Exception as exc:  # stopping, or one look failed: the next one retries
                with self._cond:
                    if self._halt:
                        return
                    log.warning("scheduler look failed", error=f"{type(exc).__name__}: {exc}")
                    self._cond.wait(RELOAD)

    # -- one look at every schedule --

    def _look(self) -> list[str]:
        from zixir_actors.workflow import find_workflow

        assert self._store is not None
        now = self.clock.time()
        created: list[str] = []
        upcoming: float | None = None
        stored = {s.name: s for s in schedules(self._store)}
        for name in list(self._cursor):
            if name not in stored:
                del self._cursor[name]
        for s in stored.values():
            if s.queue is None and find_workflow(s.workflow) is None:
                continue  # another process runs it
            try:
                created += self._due(s, now)
                nxt = s.next_tick(now)
            except Exception as exc:  # one bad schedule must not stop the others
                log.bind(schedule=s.name).error("schedule failed",
                                                error=f"{type(exc).__name__}: {exc}")
                continue
            if s.name not in self._cursor:
                nxt = now  # more missed ticks to catch up: look again at once
            upcoming = nxt if upcoming is None else min(upcoming, nxt)
        with self._cond:
            self._next = upcoming
        return created

    def _due(self, s: Schedule, now: float) -> list[str]:
        cursor = self._cursor.get(s.name)
        self._cursor[s.name] = now
        if s.paused:
            return []
        fire: list[float] = []
        handled = s.last_tick
        if cursor is None:  # first look in this process: ticks missed while none ran
            if s.catch_up == "all":
                fire = _ticks(s, s.last_tick, now)
                handled = fire[-1] if len(fire) == MAX_CATCH_UP else now
                if len(fire) == MAX_CATCH_UP:
                    self._cursor.pop(s.name)  # look again for the rest
            else:
                if s.catch_up == "latest":
                    fire = _latest(s, s.last_tick, now)
                handled = now
        else:
            fire = _ticks(s, cursor, now)  # came due while this process ran: all run
            if fire:
                handled = fire[-1]
        if not fire and handled <= s.last_tick:
            return []
        return self._fire(s, fire, handled)

    def _fire(self, s: Schedule, ticks: list[float], handled: float) -> list[str]:
        from zixir_actors._runtimes import current_owner
        from zixir_actors.queue._store import enqueue_in
        from zixir_actors.queue._store import put_run as store_run

        assert self._store is not None
        owner = current_owner()
        wall = time.time()

        def write(txn: Any, db: Any) -> list[str]:
            current = _read(txn, db, s.name)
            if current is None or current.paused:
                return []
            made = []
            for t in ticks:
                run_id = run_id_of(s.name, t)
                if txn.get(run_id.encode(), db=db("zixir.runs")) is not None:
                    continue  # another process made this tick's run
                if current.queue is not None:
                    enqueue_in(txn, db, current.queue, current.workflow, run_id,
                               current.inputs, priority=0, dedupe_key=None, now=wall)
                else:
                    store_run(txn, db, RunRecord(run_id, current.workflow, "running",
                                                 dict(current.inputs), wall, wall,
                                                 owner=owner))
                made.append(run_id)
            if handled > current.last_tick:
                _write(txn, db, dataclasses.replace(current, last_tick=handled))
            return made

        made = self._store.transact(write)
        if not made:
            return made
        if s.queue is not None:
            from zixir_actors.queue._queue import kick

            kick()
            return made
        from zixir_actors.workflow import find_workflow

        wf = find_workflow(s.workflow)
        for run_id in made:
            try:
                if wf is None:
                    raise LookupError(f"workflow {s.workflow!r} is not defined here")
                wf.start(dict(s.inputs), run_id=run_id)
            except RunActiveError:
                continue  # start() resumed it first (it was stored as running here)
            except Exception as exc:  # the run stays "running" here: start() resumes it
                log.bind(schedule=s.name, run_id=run_id).error(
                    "cannot start a scheduled run", error=f"{type(exc).__name__}: {exc}")
        log.bind(schedule=s.name).info("scheduled runs started", runs=made)
        return made


def child_spec(*, clock: Clock = SYSTEM_CLOCK) -> ChildSpec:
    """The spec of ``zixir.scheduler``.

    Example:
        >>> child_spec().name
        'zixir.scheduler'
    """
    return ChildSpec(id="scheduler", start=Scheduler, kwargs={"clock": clock},
                     restart="permanent", shutdown=15.0, type="worker", name=SCHEDULER_NAME)
