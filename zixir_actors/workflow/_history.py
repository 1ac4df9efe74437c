"""Run history: each run's log lines kept with the run, its true status, and its detail.

Log lines: every line of a run is stored in LMDB (``zixir.logs``) with its
time, level, step, attempt and message, so that it outlives the process:

- the engine's own events (run started, resumed, parked, woke, ended,
  interrupted; step started, succeeded, failed and retrying with the error,
  dead-lettered), whether or not logging was configured;
- the application's lines about the run: ``ctx.logger``, any loguru line
  bound to the run (``logger.bind(run_id=...)``), and any line logged inside
  a step's span once `configure_logging` installed its patcher, at
  `DEFAULT_LEVEL` (``INFO``) and above.

Lines are committed in groups without a disk sync (like progress items):
`FLUSH_AFTER` seconds after the first pending one, in the timer thread (off
the step's path; at once past `FLUSH_EVERY` pending), and with the run's
end or park. A kill -9 can therefore lose
the last group (at most `FLUSH_AFTER` seconds of lines), never a committed
one. Each run keeps its newest `DEFAULT_MAX_LINES` lines; older lines are
dropped first and counted (`CheckpointClient.run_log_bounds`).

Status: a run record saying ``running`` whose owner holds no live lease
(its process died, or its runtime stopped) is reported as ``interrupted``
by `run_state`; a runtime that stops cleanly records ``interrupted`` with
the reason ``runtime stopped`` itself.
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from zixir_actors._clock import SYSTEM_CLOCK
from zixir_actors.checkpoint import CheckpointClient, RunRecord
from zixir_actors.errors import ConfigError

__all__ = ["DEFAULT_LEVEL", "DEFAULT_MAX_LINES", "FLUSH_AFTER", "FLUSH_EVERY", "STEP_STARTED",
           "STEP_SUCCEEDED",
           "VALUE_LIMIT", "EngineLog", "RunLog", "RunState", "configure_run_logs", "jsonable",
           "live_log", "open_run_log", "record_interrupted", "run_detail", "run_state"]

DEFAULT_MAX_LINES = 10_000
"""Log lines kept per run; older ones are dropped first (and counted)."""
DEFAULT_LEVEL = "INFO"
"""The lowest level of the application's lines that runs keep (the engine's are all kept)."""
FLUSH_EVERY = 4096
"""Pending log lines of a run that are committed at once, by the thread that
logs the last one (without a disk sync); fewer wait for `FLUSH_AFTER`."""
FLUSH_AFTER = 0.05
"""Seconds after which a pending log line is committed at the latest."""
VALUE_LIMIT = 2000
"""Characters of a value's JSON that `run_detail` shows; a longer one is cut (its size said)."""
ENDED = frozenset({"succeeded", "failed", "cancelled", "timed_out"})
_LEVELS = {"TRACE": 5, "DEBUG": 10, "INFO": 20, "SUCCESS": 25, "WARNING": 30, "ERROR": 40,
           "CRITICAL": 50}
_DEBUG, _INFO = _LEVELS["DEBUG"], _LEVELS["INFO"]
_OWN_FIELDS = frozenset({"run_id", "step", "attempt", "workflow", "trace_id", "span_id"})
_ENGINE_OWN = _OWN_FIELDS | {"service"}
_SIMPLE = frozenset({str, int, bool, type(None)})
_LIBRARY = ("zixir_actors", "supervisors")  # their run lines are kept by the engine itself


class _Config:
    max_lines = DEFAULT_MAX_LINES
    level = DEFAULT_LEVEL


def configure_run_logs(*, max_lines: int = DEFAULT_MAX_LINES, level: str = DEFAULT_LEVEL) -> None:
    """Set how many log lines each run keeps and the lowest level of your lines kept.

    Example:
        ``configure_run_logs(max_lines=50_000, level="DEBUG")``

    Applies to this process from the next line on.

    Raises:
        ConfigError: `max_lines` is not an integer >= 1, or `level` is not a level name.
    """
    if not isinstance(max_lines, int) or isinstance(max_lines, bool) or max_lines < 1:
        raise ConfigError("max_lines", max_lines, "must be an integer >= 1")
    if not isinstance(level, str) or level.upper() not in _LEVELS:
        raise ConfigError("level", level, f"must be one of {', '.join(_LEVELS)}")
    with _lock:
        _Config.max_lines = max_lines
        if level.upper() != _Config.level:
            _Config.level = level.upper()
            _remove_capture()


# -- the log of one run in this process ---------------------------------------------


class RunLog:
    """The pending log lines of one run in this process (shared by its incarnations).

    `add` is the hot path: a tuple appended to a deque, with no lock (the
    appends and the flush's pops are atomic). Encoding and the LMDB commit
    happen in `flush`, in the timer thread (or past `FLUSH_EVERY`).
    """

    def __init__(self, run_id: str, store: CheckpointClient, *, fresh: bool) -> None:
        self.run_id = run_id
        self.store = store
        self.flushing = threading.Lock()  # one flush at a time: chunks commit in order
        self.pending: collections.deque[tuple[Any, ...]] = collections.deque()
        self.starts: dict[str, float] = {}
        self.next_seq = 0 if fresh else store.run_log_bounds(run_id)[1]
        self.armed = False
        self.closed = False

    def add(self, level: str, message: str, step: str | None = None,
            attempt: int | None = None, fields: Mapping[str, Any] | None = None,
            at: float | None = None) -> None:
        """Keep one line (the engine's lines, and the captured ones)."""
        now = time.time() if at is None else at
        self._keep((now, level, step, attempt, message, fields), now)

    def engine(self, level: str, message: str, fields: Mapping[str, Any],
               bound: Mapping[str, Any]) -> None:
        """Keep one of the engine's lines: `fields` passed with it, `bound` to its logger.

        The engine's hot path (two lines per step): no dict is built for a
        line with no fields besides the run's own.
        """
        step = fields.get("step", bound.get("step"))
        attempt = fields.get("attempt", bound.get("attempt"))
        rest: dict[str, Any] | None = None
        if not (fields.keys() <= _ENGINE_OWN and bound.keys() <= _ENGINE_OWN):
            found = {}
            for source in (bound, fields):
                for key, value in source.items():
                    if key not in _ENGINE_OWN:
                        found[key] = value if type(value) in _SIMPLE else _plain(value)
            rest = found or None
        now = time.time()
        line = (now, level, None if step is None else str(step),
                attempt if isinstance(attempt, int) else None, message, rest)
        first_start = attempt == 1 and message == STEP_STARTED and step is not None
        self._keep(line, now, str(step) if first_start else None)

    def _keep(self, line: tuple[Any, ...], now: float, started: str | None = None) -> None:
        """Queue `line` for the next flush (`started`: the step whose first attempt it opens)."""
        pending = self.pending
        pending.append(line)
        if started is not None:
            self.starts.setdefault(started, now)
        # After the append: a flush clears `armed` before it drains, so a line
        # it does not take finds `armed` clear and arms the timer again.
        if len(pending) >= FLUSH_EVERY:
            self.flush()
        elif not self.armed:
            self.armed = True
            from zixir_actors.workflow._timers import timers_for

            try:
                timers_for(SYSTEM_CLOCK).add(now + FLUSH_AFTER, ("run-log", id(self)),
                                             self.flush)
            except Exception:  # no timer (no thread to be had): a line must not fail
                self.flush()  # the engine's call that logs it; stored now instead

    def flush(self) -> None:
        """Commit the pending lines now, without a disk sync (best effort: never raises)."""
        with self.flushing:
            self.armed = False
            pending, marks = self.pending, self.starts
            lines = [pending.popleft() for _ in range(len(pending))]  # appends may go on
            starts = {step: marks.pop(step) for step in list(marks)}
            first = self.next_seq
            self.next_seq += len(lines)
            if not lines and not starts:
                return
            try:
                self.store.append_run_logs(self.run_id, first, lines,
                                           max_lines=_Config.max_lines, starts=starts)
            except Exception as exc:  # the run goes on without these lines
                from zixir_actors.workflow._telemetry import log

                log.bind(run_id=self.run_id).warning("run log lines could not be stored",
                                                     lines=len(lines), error=str(exc))

    def close(self) -> None:
        """The run ended (or this process let go of it): flush and stop capturing its lines."""
        with _lock:
            if _live.get(self.run_id) is self:
                del _live[self.run_id]
            self.closed = True
        from zixir_actors.workflow._timers import timers_for

        timers_for(SYSTEM_CLOCK).cancel(("run-log", id(self)))
        self.flush()


_lock = threading.Lock()
_live: dict[str, RunLog] = {}


def open_run_log(run_id: str, store: CheckpointClient, *, fresh: bool) -> RunLog:
    """The log of a run starting or continuing in this process (`fresh`: a new run id)."""
    _ensure_capture()
    with _lock:
        found = _live.get(run_id)
        if found is not None and found.store is store and not found.closed:
            return found
    log = RunLog(run_id, store, fresh=fresh)
    with _lock:
        _live[run_id] = log
    return log


def live_log(run_id: str) -> RunLog | None:
    """The log of a run that this process runs now, if any."""
    return _live.get(run_id)


# -- the engine's lines -----------------------------------------------------------------


class EngineLog:
    """The workflow engine's logger: loguru's, and each line about a run of this
    process is also kept with the run, whether or not loguru shows it.

    Use it as loguru's (``log.bind(run_id=...).info("run ended", status=...)``);
    a line is about a run when ``run_id`` is bound or passed. ``step`` and
    ``attempt`` go to their columns, the other fields (but ``workflow``) with it.
    """

    __slots__ = ("_extra", "_logger", "_options")

    def __init__(self, logger: Any, extra: Mapping[str, Any] | None = None) -> None:
        self._logger = logger
        self._extra = dict(extra or {})
        options = getattr(logger, "_options", None)
        # loguru's `_log` reads the caller's frame at depth+2: one more for `_emit`.
        self._options = None if not isinstance(options, tuple) or len(options) < 2 \
            else (options[0], options[1] + 1, *options[2:])

    def bind(self, **fields: Any) -> EngineLog:
        return EngineLog(self._logger.bind(**fields), {**self._extra, **fields})

    def debug(self, message: str, **fields: Any) -> None:
        self._emit("DEBUG", message, fields)

    def info(self, message: str, **fields: Any) -> None:
        self._emit("INFO", message, fields)

    def warning(self, message: str, **fields: Any) -> None:
        self._emit("WARNING", message, fields)

    def error(self, message: str, **fields: Any) -> None:
        self._emit("ERROR", message, fields)

    def __getattr__(self, name: str) -> Any:  # opt(), exception(), ...: loguru's own
        return getattr(self._logger, name)

    def step_started(self, run_log: RunLog | None, workflow: str, run_id: str, step: str,
                     attempt: int) -> None:
        """``debug(STEP_STARTED, ...)`` for `run_log`'s run, on the step's hot path.

        The same line as the generic path, without building a loguru record
        (or a dict) when no sink but the run's own wants it.
        """
        if run_log is not None and not run_log.closed:
            now = time.time()
            run_log._keep((now, "DEBUG", step, attempt, STEP_STARTED, None), now,
                          step if attempt == 1 else None)
        if _others_level(self._logger) <= _DEBUG:
            self._log("DEBUG", STEP_STARTED, {"workflow": workflow, "run_id": run_id,
                                              "step": step, "attempt": attempt})

    def step_succeeded(self, run_log: RunLog | None, workflow: str, run_id: str, step: str,
                       attempt: int, duration: float) -> None:
        """``info("step succeeded", ..., duration=...)``, as `step_started`."""
        if run_log is not None and not run_log.closed:  # a duration is a finite float
            now = time.time()
            run_log._keep((now, "INFO", step, attempt, STEP_SUCCEEDED, {"duration": duration}),
                          now)
        if _others_level(self._logger) <= _INFO:
            self._log("INFO", STEP_SUCCEEDED, {"workflow": workflow, "run_id": run_id,
                                               "step": step, "attempt": attempt,
                                               "duration": duration})

    def _log(self, level: str, message: str, fields: dict[str, Any], deeper: int = 0) -> None:
        # loguru reads the frame of whoever called step_started() (or, `deeper`
        # by one, info() and the others through _emit).
        options = self._options
        if options is not None:
            if deeper:
                options = (options[0], options[1] + deeper, *options[2:])
            self._logger._log(level, False, options, message, (), fields)
        else:
            self._logger.opt(depth=2 + deeper).log(level, message, **fields)

    def _emit(self, level: str, message: str, fields: dict[str, Any]) -> None:
        if _live:
            run_id = fields.get("run_id", self._extra.get("run_id"))
            run_log = _live.get(run_id) if isinstance(run_id, str) else None
            if run_log is not None:
                run_log.engine(level, message, fields, self._extra)
        if _LEVELS[level] < _others_level(self._logger):
            return  # no sink but the capture handler takes it: skip building the record
        self._log(level, message, fields, 1)


_seen: list[Any] = [None, 0]  # loguru's handlers dict last seen, the lowest level of the others


def _others_level(logger: Any) -> float:
    """The lowest level of loguru's handlers but the capture handler (inf if none).

    The capture handler lowers loguru's own threshold for everyone, so without
    this an engine line that only that handler would take (and then drop: it
    keeps the engine's lines directly) would still cost a full loguru record.
    loguru replaces its handlers dict on every add and remove.
    """
    handlers = getattr(getattr(logger, "_core", None), "handlers", None)
    if handlers is None:
        return 0
    if handlers is not _seen[0]:
        levels = [getattr(h, "levelno", 0) for key, h in handlers.items() if key != _handler]
        _seen[1] = float(min(levels)) if levels else math.inf
        _seen[0] = handlers
    return _seen[1]  # type: ignore[no-any-return]


STEP_STARTED = "step started"
"""The engine's message when a step's attempt starts (its first marks when the step started)."""
STEP_SUCCEEDED = "step succeeded"
"""The engine's message when a step's attempt succeeded (with its ``duration``)."""


# -- capturing the application's lines ---------------------------------------------

_handler: int | None = None


def _ensure_capture() -> None:
    """Install the loguru handler that keeps the application's run lines (once; again
    if the application removed every handler)."""
    global _handler
    from loguru import logger

    with _lock:
        if _handler is not None:
            handlers = getattr(getattr(logger, "_core", None), "handlers", None)
            if handlers is None or _handler in handlers:
                return
        _handler = logger.add(_capture, level=_Config.level, format="{message}",
                              filter=_wanted, colorize=False, backtrace=False, diagnose=False,
                              catch=True)


def _remove_capture() -> None:
    global _handler
    from loguru import logger

    if _handler is not None:
        with contextlib.suppress(ValueError):
            logger.remove(_handler)
        _handler = None
    if _live:
        # Runs are going on: capture at the new level right away.
        handler_id = logger.add(_capture, level=_Config.level, format="{message}",
                                filter=_wanted, colorize=False, backtrace=False,
                                diagnose=False, catch=True)
        _handler = handler_id


def _run_of(record: Mapping[str, Any]) -> tuple[str | None, Any, Any]:
    extra = record["extra"]
    run_id, step, attempt = extra.get("run_id"), extra.get("step"), extra.get("attempt")
    if run_id is not None and step is not None and attempt is not None:
        return run_id, step, attempt
    from zixir_actors.observability._tracing import _CURRENT

    current = _CURRENT.get()  # the step's span names the run, step and attempt
    if current is None:
        return run_id, step, attempt
    attributes = current.attributes
    if run_id is None or attributes.get("run_id") == run_id:
        # What the line was bound with wins; the span fills in the rest (a
        # logging patcher may have copied the step, but not the attempt).
        return (run_id if run_id is not None else attributes.get("run_id"),
                step if step is not None else attributes.get("step"),
                attempt if attempt is not None else attributes.get("attempt"))
    return run_id, step, attempt


def _wanted(record: Any) -> bool:
    if not _live:
        return False
    name = record["name"] or ""
    if name.startswith(_LIBRARY):
        return False
    return _run_of(record)[0] in _live


def _capture(message: Any) -> None:
    record = message.record
    run_id, step, attempt = _run_of(record)
    log = _live.get(run_id) if isinstance(run_id, str) else None
    if log is None:
        return
    fields = {k: _plain(v) for k, v in record["extra"].items()
              if k not in _OWN_FIELDS and not k.startswith("_")}
    log.add(record["level"].name, str(record["message"]),
            None if step is None else str(step),
            attempt if isinstance(attempt, int) else None, fields or None,
            record["time"].timestamp())


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    text = repr(value)
    return text if len(text) <= 500 else text[:500] + "..."


# -- the truth about a run's status ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunState:
    """What a run's status really is.

    Attributes:
        status: the stored status, except ``"interrupted"`` for a run stored as
            running whose owner holds no live lease.
        stored: the status its record says.
        since: when it was interrupted (its owner's last sign of life), or None.
        reason: why it was interrupted, or None.
    """

    status: str
    stored: str
    since: float | None = None
    reason: str | None = None


def run_state(record: RunRecord, runtimes: list[Any] | None, now: float | None = None) -> RunState:
    """The true status of `record`, given the lease records (`CheckpointClient.runtimes`).

    A run stored as ``running`` is running only while its owner's lease is
    alive; otherwise it was interrupted (its process died or its runtime
    stopped) and a resume continues it. Runs started without a runtime have
    no owner and keep their stored status.
    """
    if record.status == "interrupted":
        return RunState("interrupted", record.status, record.updated_at, record.error)
    if record.status != "running" or record.owner is None or runtimes is None:
        return RunState(record.status, record.status)
    from zixir_actors._runtimes import is_alive

    now = time.time() if now is None else now
    for info in runtimes:
        if info.id != record.owner:
            continue
        if is_alive(info, now):
            return RunState("running", record.status)
        if info.host == socket.gethostname() and not _process_lives(info):
            why = f"its process (pid {info.pid}) ended"
        else:
            why = f"its runtime's lease ran out (last renewed {_clock(info.renewed_at)})"
        return RunState("interrupted", record.status, max(info.renewed_at, record.updated_at),
                        why)
    return RunState("interrupted", record.status, record.updated_at,
                    f"its runtime {record.owner} is gone (stopped or died)")


def _process_lives(info: Any) -> bool:
    import psutil

    try:
        proc = psutil.Process(info.pid)
        return bool(proc.create_time() <= info.started_at + 1.0
                    and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _clock(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def record_interrupted(store: CheckpointClient, run_id: str, owner: str | None, reason: str,
                       steps: Mapping[str, str] | None = None) -> bool:
    """Record that this process let go of a running run (its runtime stopped).

    Written only if the run is still ``running`` under `owner`: a runtime that
    took it over meanwhile keeps it. Returns whether it was written.
    """
    from dataclasses import replace

    from zixir_actors import _codec
    from zixir_actors.checkpoint import RUNS_DB, _key

    key = _key(run_id)

    def mark(txn: Any, db: Any) -> bool:
        blob = txn.get(key, db=db(RUNS_DB))
        if blob is None:
            return False
        record = _codec.decode(blob, key=f"run {run_id}")
        if record.status != "running" or record.owner != owner:
            return False
        changed = replace(record, status="interrupted", error=reason, updated_at=time.time(),
                          steps=dict(steps) if steps else record.steps)
        txn.put(key, _codec.encode(changed), db=db(RUNS_DB))
        return True

    try:
        return bool(store.transact(mark, durable=True))
    except Exception:  # the store is going away too: the lease tells the truth instead
        return False


# -- what `zixir runs show` (and the dashboard) read ------------------------------------


def jsonable(value: Any, limit: int | None = VALUE_LIMIT) -> Any:
    """`value` as JSON data: itself if JSON can say it, else its repr; cut past `limit`.

    A cut value is ``{"cut": True, "bytes": <size of its full JSON>, "head": <its start>}``.
    """
    try:
        text = json.dumps(value, allow_nan=False)
        plain = value
    except (TypeError, ValueError):
        plain = text = repr(value)
    if limit is not None and len(text) > limit:
        return {"cut": True, "bytes": len(text.encode()), "head": text[:limit]}
    return plain


def run_detail(store: CheckpointClient, run_id: str, *,
               limit: int | None = VALUE_LIMIT) -> dict[str, Any]:
    """Everything stored about a run, as JSON data (what ``zixir runs show --json`` prints).

    Keys: ``run_id``, ``workflow``, ``kind`` (``"dag"`` or ``"code-first"``),
    ``status`` (the truth, see `run_state`), ``stored_status``,
    ``interrupted`` (``{"at", "reason"}`` or None), ``error``, ``owner``,
    ``created_at``, ``updated_at``, ``waiting``, ``inputs``, ``outputs``,
    ``output`` (a code-first run's result), ``steps`` (in the order they ran:
    ``name``, ``status``, ``attempts``, ``started_at``, ``finished_at``,
    ``elapsed`` (first start to end: retries and backoff included),
    ``duration`` (the attempts alone), ``error``, ``traceback``,
    ``dead_letter``, ``attempt_history``, ``output``), ``calls`` (a code-first
    run's recorded calls in order), ``checkpoints`` (a DAG run's committed
    steps: ``attempts``, ``duration``, ``finished_at``) and ``logs``
    (``{"stored", "dropped"}``).

    Raises:
        RunNotFoundError: no such run.
    """
    from zixir_actors.workflow._durable import RESULT_POS, labels

    record = store.get_run(run_id)
    state = run_state(record, store.runtimes())
    calls = store.calls(run_id)
    starts = store.step_starts(run_id)
    letters = {d.step: d for d in store.dead_letters(run_id=run_id)}
    first, end = store.run_log_bounds(run_id)
    outcome = dict(calls).get(RESULT_POS)
    detail: dict[str, Any] = {
        "run_id": record.run_id, "workflow": record.workflow,
        "kind": "code-first" if calls else "dag",
        "status": state.status, "stored_status": record.status,
        "interrupted": None if state.since is None else {"at": state.since,
                                                         "reason": state.reason},
        "error": record.error, "owner": record.owner,
        "created_at": record.created_at, "updated_at": record.updated_at,
        "waiting": dict(record.waiting) if record.waiting else None,
        "inputs": {k: jsonable(v, limit) for k, v in record.inputs.items()},
        "logs": {"stored": end - first, "dropped": first},
    }
    live = state.status in ("running", "parked")
    if not calls:
        checkpoints = store.steps(run_id)
        names = list(record.steps)
        names += sorted((n for n in {*checkpoints, *letters, *starts} if n not in names),
                        key=lambda n: (starts.get(n, math.inf), n))
        steps = []
        for name in names:
            entry = _step_entry(name, record.steps.get(name), checkpoints.get(name),
                                letters.get(name), starts.get(name), live, limit)
            steps.append(entry)
        detail["steps"] = steps
        detail["outputs"] = {n: jsonable(c.output, limit) for n, c in checkpoints.items()}
        detail["checkpoints"] = {n: {"attempts": c.attempts, "duration": c.duration,
                                     "finished_at": c.finished_at}
                                 for n, c in checkpoints.items()}
        detail["output"] = None
        detail["calls"] = []
        return detail
    found = labels(calls)
    label_at = {position: label for label, position in found.items()}
    entries = []
    steps = []
    for position, rec in calls:
        if position == RESULT_POS:
            continue
        label = label_at.get(position, rec[1])
        entries.append(_call_entry(position, label, rec, limit))
        if rec[0] in ("step", "step!"):
            steps.append(_call_step(label, rec, letters.get(label), starts.get(label), limit))
    for label, at in sorted(starts.items(), key=lambda item: item[1]):
        if label not in found:  # started, never recorded: in flight, or lost with its process
            steps.append({"name": label, "status": "running" if live else "interrupted",
                          "attempts": None, "started_at": at, "finished_at": None,
                          "elapsed": None, "duration": None, "error": None, "traceback": None,
                          "dead_letter": None, "attempt_history": [], "output": None})
    detail["calls"] = entries
    detail["steps"] = steps
    detail["checkpoints"] = {}
    output = None if outcome is None else outcome[2]
    detail["output"] = jsonable(output, limit)
    detail["outputs"] = {} if outcome is None else (
        {k: jsonable(v, limit) for k, v in output.items()} if isinstance(output, Mapping)
        else {"result": jsonable(output, limit)})
    if outcome is not None and outcome[3] is not None and not detail["error"]:
        detail["error"] = str(outcome[3])
    return detail


def _attempts(history: Any) -> list[dict[str, Any]]:
    return [{"attempt": a.attempt, "started_at": a.started_at, "duration": a.duration,
             "error": f"{a.error_type}: {a.error_message}", "timed_out": a.timed_out}
            for a in history or ()]


def _span(started: float | None, finished: float | None) -> float | None:
    if started is None or finished is None or started > finished:
        return None
    return finished - started


def _step_entry(name: str, status: str | None, checkpoint: Any, letter: Any,
                started: float | None, live: bool, limit: int | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "status": status, "attempts": None,
                             "started_at": started, "finished_at": None, "elapsed": None,
                             "duration": None, "error": None, "traceback": None,
                             "dead_letter": None, "attempt_history": [], "output": None}
    if checkpoint is not None:
        if started is not None and started > checkpoint.finished_at:
            started = None  # that mark is of a later execution that did not finish
        entry.update(status=status or "succeeded", attempts=checkpoint.attempts,
                     started_at=started, finished_at=checkpoint.finished_at,
                     duration=checkpoint.duration, output=jsonable(checkpoint.output, limit))
    elif letter is not None:
        history = letter.attempts
        begin = started if started is not None else (history[0].started_at if history else None)
        finished = (history[-1].started_at + history[-1].duration) if history else None
        entry.update(status=status or "failed", attempts=len(history), started_at=begin,
                     finished_at=finished, duration=sum(a.duration for a in history),
                     error=f"{letter.error_type}: {letter.error_message}",
                     traceback=letter.traceback, dead_letter=letter.id,
                     attempt_history=_attempts(history))
    elif status is None:
        entry["status"] = ("running" if live else "interrupted") if started is not None \
            else "pending"
    entry["elapsed"] = _span(entry["started_at"], entry["finished_at"])
    return entry


def _call_step(label: str, rec: Any, letter: Any, started: float | None,
               limit: int | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": label, "status": "succeeded", "attempts": None,
                             "started_at": started, "finished_at": None, "elapsed": None,
                             "duration": None, "error": None, "traceback": None,
                             "dead_letter": None if letter is None else letter.id,
                             "attempt_history": [], "output": None}
    if rec[0] == "step":
        extra = rec[3] if isinstance(rec[3], tuple) else ()
        if len(extra) >= 4:
            entry.update(attempts=extra[1], duration=extra[2], finished_at=extra[3])
        entry["output"] = jsonable(rec[2], limit)
    else:
        error, history, _ = rec[2]
        history = tuple(history or ())
        finished = (history[-1].started_at + history[-1].duration) if history else None
        entry.update(status="timed_out" if history and history[-1].timed_out else "failed",
                     attempts=rec[3], error=str(error), traceback=error.traceback or None,
                     finished_at=finished, duration=sum(a.duration for a in history),
                     attempt_history=_attempts(history))
        if started is None and history:
            entry["started_at"] = history[0].started_at
    if entry["started_at"] is not None and entry["finished_at"] is not None \
            and entry["started_at"] > entry["finished_at"]:
        entry["started_at"] = None
    entry["elapsed"] = _span(entry["started_at"], entry["finished_at"])
    return entry


def _call_entry(position: int, label: str, rec: Any, limit: int | None) -> dict[str, Any]:
    kind, name = rec[0], rec[1]
    entry: dict[str, Any] = {"position": position, "label": label, "kind": kind.rstrip("!?"),
                             "name": name}
    if kind == "step":
        entry.update(status="succeeded", value=jsonable(rec[2], limit))
    elif kind in ("step!", "child!"):
        entry.update(status="failed", error=str(rec[2][0]))
    elif kind == "sleep":
        entry.update(status="done", until=rec[2], seconds=rec[3])
    elif kind == "wait":
        how, payload = rec[2]
        entry.update(status="timed_out" if how == "timeout" else "received",
                     value=jsonable(payload, limit), timeout=rec[3])
    elif kind == "wait?":
        entry.update(status="waiting", until=rec[2], timeout=rec[3])
    elif kind == "child":
        entry.update(status="succeeded", value=jsonable(rec[2], limit), child_run=rec[3])
    else:
        entry.update(status="recorded", value=jsonable(rec[2], limit))
    return entry
