"""What the dashboard shows, read from the store: pages of runs, aggregates, timelines.

Everything here reads LMDB through a `CheckpointClient` (readers never block a
writer, in this process or another). Lists are pages read with a cursor in
key order (`CheckpointClient.page_runs`); only the overview's aggregates read
every run header, and they do it in a background thread, at most once per
`Aggregates.min_interval` (stretched to ten times the last scan's duration),
so a page never waits for a scan of 100,000 runs.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from zixir_actors.checkpoint import CORRUPT, CheckpointClient, RunRecord

__all__ = ["ACTIVE", "ENDED", "STATUSES", "WINDOWS", "Aggregates", "Bar", "Overview",
           "RunFilter", "Segment", "Timeline", "TimelineRow", "build_timeline", "call_rows"]

ENDED = frozenset({"succeeded", "failed", "cancelled", "timed_out"})
ACTIVE = frozenset({"running", "parked"})
STATUSES = ("queued", "running", "parked", "succeeded", "failed", "timed_out", "cancelled",
            "interrupted", CORRUPT)
WINDOWS: Mapping[str, tuple[float, int]] = {
    "1h": (3600.0, 30), "24h": (86400.0, 24), "7d": (7 * 86400.0, 28),
}
"""Overview chart windows: (seconds covered, number of bars)."""
RESULT_POS = 2**63


# -- runs list -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunFilter:
    """The runs page's filters (all optional)."""

    workflow: str | None = None
    status: str | None = None
    since: float | None = None
    """Only runs created at or after this wall time."""
    until: float | None = None

    def active(self) -> bool:
        return any(v is not None for v in (self.workflow, self.status, self.since, self.until))

    def __call__(self, record: RunRecord) -> bool:
        return ((self.workflow is None or record.workflow == self.workflow)
                and (self.status is None or record.status == self.status)
                and (self.since is None or record.created_at >= self.since)
                and (self.until is None or record.created_at < self.until))


# -- overview aggregates -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bar:
    start: float
    end: float
    counts: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class Overview:
    """One full read of the run headers (see `Aggregates`)."""

    at: float
    took: float
    total: int
    by_status: Mapping[str, int]
    bars: Mapping[str, tuple[Bar, ...]]
    parked: tuple[RunRecord, ...]
    workflows: tuple[str, ...]


class Aggregates:
    """Counts of every run by status and over time, refreshed in a background thread.

    Args:
        store: where the runs are.
        min_interval: seconds between two scans at least.
        clock: wall time (tests pass their own).
    """

    def __init__(self, store: CheckpointClient, *, min_interval: float = 3.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.min_interval = min_interval
        self.clock = clock
        self._latest: Overview | None = None
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._scanning = False
        self._stopped = False
        self._next_at = 0.0
        self._thread: threading.Thread | None = None

    def latest(self, *, wait: float = 0.0) -> Overview | None:
        """The latest aggregates (starting a scan when they are due); waits up to `wait`."""
        with self._lock:
            due = not self._scanning and not self._stopped and time.monotonic() >= self._next_at
            if due:
                self._scanning = True
                self._thread = threading.Thread(target=self._scan, daemon=True,
                                                name="zixir-dashboard-aggregates")
                self._thread.start()
            if self._latest is None and wait > 0:
                self._ready.wait(wait)
            return self._latest

    def peek(self) -> Overview | None:
        """The latest aggregates, without starting a scan."""
        with self._lock:
            return self._latest

    def stop(self, *, timeout: float | None = 10.0) -> None:
        """Start no more scans and wait for the one under way (it stops at its next page)."""
        with self._lock:
            self._stopped = True
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _scan(self) -> None:
        began = time.monotonic()
        try:
            overview = self.compute()
        except Exception:  # a store that went away: try again later
            overview = None
        took = time.monotonic() - began
        with self._lock:
            if overview is not None:
                self._latest = overview
            self._scanning = False
            self._next_at = time.monotonic() + max(self.min_interval, 10 * took)
            self._ready.notify_all()

    def compute(self) -> Overview:
        """Read every run header once (in pages, so no read snapshot is held long)."""
        began = time.monotonic()
        now = self.clock()
        by_status: dict[str, int] = {}
        grids = {name: (now - span, span / n, [dict[str, int]() for _ in range(n)])
                 for name, (span, n) in WINDOWS.items()}
        parked: list[RunRecord] = []
        workflows: set[str] = set()
        total = 0
        cursor: str | None = None
        while True:
            page, cursor = self.store.page_runs(after=cursor, limit=5000)
            for r in page:
                total += 1
                by_status[r.status] = by_status.get(r.status, 0) + 1
                if r.workflow:
                    workflows.add(r.workflow)
                if r.status == "parked" and len(parked) < 200:
                    parked.append(r)
                for start, width, cells in grids.values():
                    if r.created_at >= start:
                        i = min(int((r.created_at - start) / width), len(cells) - 1)
                        cells[i][r.status] = cells[i].get(r.status, 0) + 1
            if cursor is None or self._stopped:
                break
        bars = {name: tuple(Bar(start + i * width, start + (i + 1) * width, cells[i])
                            for i in range(len(cells)))
                for name, (start, width, cells) in grids.items()}
        parked.sort(key=lambda r: r.updated_at, reverse=True)
        return Overview(now, time.monotonic() - began, total, by_status, bars,
                        tuple(parked[:20]), tuple(sorted(workflows)))


# -- run timeline ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Segment:
    """One bar of the timeline: `kind` is ok, failed, timed_out, backoff, sleep,
    park, waiting or running; `title` is its tooltip."""

    start: float
    end: float
    kind: str
    title: str


@dataclass(slots=True)
class TimelineRow:
    label: str
    segments: list[Segment] = field(default_factory=list)
    status: str = ""
    marks: list[tuple[float, str]] = field(default_factory=list)
    """Instants on the row: (time, title) of an event that arrived."""


@dataclass(slots=True)
class Timeline:
    start: float
    end: float
    rows: list[TimelineRow]
    events: list[tuple[float, str]]
    """Run-wide instants: (time, title)."""


def _fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _attempt_segments(row: TimelineRow, attempts: Any) -> None:
    """Failed attempts (`AttemptInfo`s) and the backoff waits between them."""
    previous_end: float | None = None
    for a in attempts:
        if previous_end is not None and a.started_at > previous_end:
            row.segments.append(Segment(previous_end, a.started_at, "backoff",
                                        f"backoff {_fmt_s(a.started_at - previous_end)}"))
        end = a.started_at + a.duration
        kind = "timed_out" if a.timed_out else "failed"
        row.segments.append(Segment(a.started_at, end, kind,
                                    f"attempt {a.attempt}: {a.error_type}: "
                                    f"{a.error_message[:200]} ({_fmt_s(a.duration)})"))
        previous_end = end


def build_timeline(store: CheckpointClient, record: RunRecord, *, now: float | None = None,
                   order: tuple[str, ...] = ()) -> Timeline:
    """The Gantt chart of a run: a row per step with its attempts, backoffs, parks, events.

    DAG runs: each checkpoint gives its last attempt; the run's dead letters
    give every failed attempt with its start, and the gaps between them are
    backoff waits. Code-first runs: each call record (steps, failed steps with
    their attempts, sleeps, waits, child runs), and the stored progress items
    give the parks and when they ended.
    """
    now = time.time() if now is None else now
    start = record.created_at
    end = now if record.status in ACTIVE else max(record.updated_at, start)
    rows: dict[str, TimelineRow] = {}
    events: list[tuple[float, str]] = []

    def row(label: str) -> TimelineRow:
        found = rows.get(label)
        if found is None:
            found = rows[label] = TimelineRow(label)
        return found

    calls = store.calls(record.run_id)
    starts: Mapping[str, float] = {}
    with contextlib.suppress(Exception):  # kept by stores that keep run history
        starts = store.step_starts(record.run_id)
    if calls:
        _code_first_rows(store, record, calls, row, events, now, starts)
    else:
        for name in order:
            row(name)
        letters = store.dead_letters(run_id=record.run_id)
        for letter in letters:
            r = row(letter.step)
            _attempt_segments(r, letter.attempts)
            r.status = "failed"
        for name, cp in store.steps(record.run_id).items():
            r = row(name)
            began = cp.finished_at - cp.duration
            _earlier(r, starts.get(name), began, cp.attempts)
            gap_from = max((s.end for s in r.segments), default=None)
            if gap_from is not None and began > gap_from:
                r.segments.append(Segment(gap_from, began, "backoff",
                                          f"waited {_fmt_s(began - gap_from)}"))
            r.segments.append(Segment(began, cp.finished_at, "ok",
                                      f"succeeded after {cp.attempts} attempt(s), "
                                      f"{_fmt_s(cp.duration)}"))
            r.status = "succeeded"
        for name, status in record.steps.items():
            if name in rows and not rows[name].status:
                rows[name].status = status
    if record.status == "running":
        # Steps that started and have not finished: from their first start until now.
        for label, at in starts.items():
            r = row(label)
            if not r.segments and not r.status:
                r.segments.append(Segment(at, now, "running", f"running for {_fmt_s(now - at)}"))
                r.status = "running"
    ordered = list(rows.values())
    if not calls and not order:  # a DAG run whose workflow is not defined here: by start
        ordered.sort(key=lambda r: min((s.start for s in r.segments), default=float("inf")))
    for r in ordered:
        for s in r.segments:
            start = min(start, s.start)
            end = max(end, s.end)
    for t, _ in events:
        end = max(end, t)
    return Timeline(start, max(end, start + 1e-3), ordered, events)


def _earlier(row: TimelineRow, first_start: float | None, last_start: float,
             attempts: int) -> None:
    """A step that succeeded after retries whose failed attempts are no longer kept
    (their dead letter was resolved): one bar from its first start to its last attempt."""
    if first_start is None or row.segments or first_start >= last_start - 1e-4:
        return
    row.segments.append(Segment(first_start, last_start, "backoff",
                                f"{attempts - 1} earlier attempt(s) and their backoff waits, "
                                f"{_fmt_s(last_start - first_start)}"))


def _code_first_rows(store: CheckpointClient, record: RunRecord, calls: list[tuple[int, Any]],
                     row: Callable[[str], TimelineRow], events: list[tuple[float, str]],
                     now: float, starts: Mapping[str, float]) -> None:
    parks: list[tuple[float, Any]] = []
    ended_at: float | None = None
    with contextlib.suppress(Exception):
        for _, (at, kind, _step, value) in store.progress(record.run_id):
            if kind == "parked":
                parks.append((at, value))
            elif kind == "ended":
                ended_at = at
    counts: dict[str, int] = {}
    pending_waits: list[tuple[str, str]] = []  # (label, event) of waits that completed
    waiting_label: str | None = None  # the wait the run is parked on now
    for position, rec in calls:
        if position == RESULT_POS:
            continue
        kind, name = rec[0], rec[1]
        counts[name] = _occurrence(rec, counts)
        label = f"{name}#{counts[name]}" if kind not in ("now", "uuid", "random") else ""
        if not label:
            continue
        if kind == "step":
            _hash, attempts, total, finished = rec[3][:4]
            r = row(label)
            _earlier(r, starts.get(label), finished - total, attempts)
            r.segments.append(Segment(finished - total, finished, "ok",
                                      f"succeeded after {attempts} attempt(s), "
                                      f"{_fmt_s(total)}"))
            r.status = "succeeded"
        elif kind == "step!":
            _error, history, _inputs = rec[2]
            r = row(label)
            _attempt_segments(r, history)
            r.status = "failed"
        elif kind == "sleep":
            until, seconds = rec[2], rec[3]
            r = row(label)
            r.segments.append(Segment(until - seconds, min(until, max(now, until - seconds)),
                                      "sleep", f"sleep {_fmt_s(seconds)}"))
            r.status = "succeeded" if until <= now else "waiting"
        elif kind in ("wait", "wait?"):
            r = row(label)
            if kind == "wait?":
                waiting_label = label
            r.status = "waiting" if kind == "wait?" else (
                "succeeded" if rec[2][0] == "event" else "timed_out")
            if kind == "wait":
                pending_waits.append((label, f"event {name!r} "
                                             + ("arrived" if rec[2][0] == "event"
                                                else "timed out")))
        elif kind in ("child", "child!"):
            r = row(label)
            r.status = "succeeded" if kind == "child" else "failed"
    # Parks: from when the run parked until it went on (the next progress item,
    # its end, or now); a wait's row gets the park and the event's arrival.
    wait_rows = [lbl for lbl, _ in pending_waits]
    for i, (at, waiting) in enumerate(parks):
        later = [t for t, _ in parks[i + 1:]]
        resumed = min([t for t in (*later, ended_at) if t is not None and t > at],
                      default=None)
        what = waiting.get("kind", "park") if isinstance(waiting, Mapping) else "park"
        title = f"parked, waiting for {what}"
        if isinstance(waiting, Mapping) and waiting.get("event"):
            title += f" {waiting['event']!r}"
        target: str | None = None
        if what == "event":
            target = wait_rows[0] if wait_rows else waiting_label
        elif what == "timer":
            target = f"sleep#{counts['sleep']}" if "sleep" in counts else None
        label = target or "(parked)"
        r = row(label)
        if resumed is None and record.status in ACTIVE:
            r.segments.append(Segment(at, now, "park", title + " (now)"))
        else:
            stop = resumed if resumed is not None else record.updated_at
            r.segments.append(Segment(at, max(stop, at), "park", title))
            if what == "event" and wait_rows:
                lbl, text = pending_waits.pop(0)
                wait_rows.pop(0)
                row(lbl).marks.append((max(stop, at), text))
    for at, kind, value in _mailbox(store, record.run_id):
        events.append((at, f"event {kind!r} sent{value}"))


def _mailbox(store: CheckpointClient, run_id: str) -> list[tuple[float, str, str]]:
    out = []
    with contextlib.suppress(Exception):
        for _seq, event, _payload, sent_at in store.events(run_id):
            out.append((sent_at, event, ", waiting in the mailbox"))
    return out


def _occurrence(rec: Any, counts: Mapping[str, int]) -> int:
    """The call's occurrence of its name (recorded since call records carry it)."""
    if len(rec) > 4 and isinstance(rec[4], int):
        return rec[4]
    return counts.get(rec[1], 0) + 1


def call_rows(calls: list[tuple[int, Any]]) -> list[dict[str, Any]]:
    """The sequence of a code-first run's calls, for the run page."""
    out: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    for position, rec in calls:
        if position == RESULT_POS:
            continue
        kind, name = rec[0], rec[1]
        counts[name] = _occurrence(rec, counts)
        item: dict[str, Any] = {"position": position, "kind": kind.rstrip("!?"),
                                "label": f"{name}#{counts[name]}", "status": "succeeded",
                                "attempts": "", "duration": None, "value": None,
                                "error": None, "has_value": False}
        if kind == "step":
            item.update(value=rec[2], has_value=True, attempts=rec[3][1],
                        duration=rec[3][2])
        elif kind == "step!":
            error, history, _inputs = rec[2]
            item.update(status="failed", error=error, attempts=rec[3],
                        duration=sum(a.duration for a in history))
        elif kind == "sleep":
            item.update(value=f"until {time.strftime('%H:%M:%S', time.localtime(rec[2]))}",
                        has_value=True, duration=rec[3])
        elif kind == "wait":
            how, payload = rec[2]
            item.update(status="succeeded" if how == "event" else "timed_out",
                        value=payload, has_value=how == "event")
        elif kind == "wait?":
            item.update(status="waiting")
        elif kind == "child":
            item.update(value=rec[2], has_value=True)
        elif kind == "child!":
            item.update(status="failed", error=rec[2][0])
        else:  # now, uuid, random
            item.update(value=rec[2], has_value=True)
        out.append(item)
    return out
