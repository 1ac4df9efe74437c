"""The dashboard's pages, rendered to HTML from the store (see `_app` for the routes)."""

from __future__ import annotations

import contextlib
import os
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from zixir_actors.checkpoint import CheckpointClient, RunRecord
from zixir_actors.dashboard._actions import Actions
from zixir_actors.dashboard._data import (
    ACTIVE,
    STATUSES,
    WINDOWS,
    Aggregates,
    RunFilter,
    build_timeline,
    call_rows,
)
from zixir_actors.dashboard._html import (
    attr,
    badge,
    bar_chart,
    dag_svg,
    esc,
    fmt_ago,
    fmt_duration,
    fmt_time,
    gantt_svg,
    json_view,
    line_chart,
    qs,
    table,
)
from zixir_actors.dashboard._live import MetricsHistory, metric_total

__all__ = ["PAGE_SIZE", "SCAN_BUDGET", "Dash"]

PAGE_SIZE = 50
"""Runs on one page of the runs list."""
SCAN_BUDGET = 10_000
"""Run headers one request of a filtered runs list reads at most (then it offers to go on)."""
PROGRESS_SHOWN = 200
"""Latest progress items shown on a run's page."""
LOG_LINES_SHOWN = 500


def run_href(run_id: str) -> str:
    return "/runs/" + quote(run_id, safe="")


def letter_href(letter_id: str) -> str:
    return "/dead-letters/" + quote(letter_id, safe="")


@dataclass
class Dash:
    """Everything the pages read: the store, the aggregates, this process's metrics."""

    store: CheckpointClient
    data_dir: Path
    csrf: str
    in_service: bool
    aggregates: Aggregates
    history: MetricsHistory
    actions: Actions
    where: str = field(default_factory=lambda: f"pid {os.getpid()}")

    # -- small pieces --

    def form(self, action: str, fields: Mapping[str, str], label: str, *, cls: str = "btn",
             confirm: str = "", extra: str = "") -> str:
        hidden = "".join(f'<input type="hidden" name="{attr(k)}" value="{attr(v)}">'
                         for k, v in fields.items())
        data = f' data-confirm="{attr(confirm)}"' if confirm else ""
        return (f'<form method="post" action="{attr(action)}" class="inline"{data}>'
                f'<input type="hidden" name="_csrf" value="{attr(self.csrf)}">{hidden}{extra}'
                f'<button class="{attr(cls)}" type="submit">{esc(label)}</button></form>')

    def live_runtimes(self) -> tuple[list[Any], set[str]]:
        from zixir_actors._runtimes import is_alive

        infos = self.store.runtimes()
        now = time.time()
        return infos, {i.id for i in infos if is_alive(i, now)}

    def shown_status(self, record: RunRecord, live: set[str]) -> str:
        """`running` only while a live runtime owns the run; else `interrupted`."""
        if record.status in ACTIVE and record.owner not in live:
            from zixir_actors.workflow._durable import parked_bodies

            if record.status == "running" or record.run_id not in parked_bodies():
                return "interrupted" if record.status == "running" else record.status
        return record.status

    # -- overview --

    def overview(self, window: str) -> str:
        window = window if window in WINDOWS else "24h"
        tabs = "".join(f'<a class="tab{" on" if w == window else ""}" href="/{qs(window=w)}">'
                       f"{w}</a>" for w in WINDOWS)
        frags = self.overview_fragments(window)
        legend = "".join(f'<span class="key"><i class="s-{s}"></i>{esc(s.replace("_", " "))}'
                         f"</span>" for s in STATUSES[:-1])
        return (f'<section id="ov-cards" class="cards">{frags["ov-cards"]}</section>'
                f'<section class="panel"><div class="panel-head"><h2>Runs by status</h2>'
                f'<div class="tabs">{tabs}</div></div><div id="ov-chart">{frags["ov-chart"]}'
                f'</div><div class="legend">{legend}</div></section>'
                f'<div class="two"><section class="panel"><h2>Parked runs</h2>'
                f'<div id="ov-parked">{frags["ov-parked"]}</div></section>'
                f'<section class="panel"><h2>Latest dead letters</h2>'
                f'<div id="ov-dead">{frags["ov-dead"]}</div></section></div>'
                f'<div class="two"><section class="panel"><h2>Queues</h2>'
                f'<div id="ov-queues">{frags["ov-queues"]}</div></section>'
                f'<section class="panel"><h2>Runtimes on this directory</h2>'
                f'<div id="ov-runtimes">{frags["ov-runtimes"]}</div></section></div>')

    def overview_fragments(self, window: str) -> dict[str, str]:
        ov = self.aggregates.latest(wait=0.25)
        letters = self.store.count_dead_letters()
        restarts = metric_total("zixir_actor_restarts_total")
        infos, live = self.live_runtimes()
        by = dict(ov.by_status) if ov is not None else {}

        def card(label: str, value: Any, cls: str = "", href: str = "") -> str:
            inner = f'<div class="num">{esc(value)}</div><div class="lbl">{esc(label)}</div>'
            return (f'<a class="card {cls}" href="{attr(href)}">{inner}</a>' if href
                    else f'<div class="card {cls}">{inner}</div>')

        counting = "…" if ov is None else None
        cards = "".join([
            card("runs stored", counting or f"{ov.total:,}" if ov else "…", "", "/runs"),
            card("running", counting or by.get("running", 0), "c-running",
                 "/runs" + qs(status="running")),
            card("parked", counting or by.get("parked", 0), "c-parked",
                 "/runs" + qs(status="parked")),
            card("failed", counting or by.get("failed", 0) + by.get("timed_out", 0),
                 "c-failed", "/runs" + qs(status="failed")),
            card("succeeded", counting or by.get("succeeded", 0), "c-succeeded",
                 "/runs" + qs(status="succeeded")),
            card("dead letters", letters, "c-failed" if letters else "", "/dead-letters"),
            card("restarts (this process)", f"{restarts:.0f}", "c-interrupted" if restarts
                 else "", "/tree"),
            card("live runtimes", len(live), "", "/tree"),
        ])
        if ov is None:
            chart = '<p class="empty">counting the stored runs…</p>'
        else:
            chart = bar_chart(ov.bars[window], STATUSES) + (
                f'<p class="note">{ov.total:,} runs read in {fmt_duration(ov.took)}, '
                f"{fmt_ago(ov.at)}</p>")
        parked_rows = []
        for r in (ov.parked if ov is not None else ()):
            waiting = r.waiting or {}
            what = _waiting_text(waiting)
            approve = ""
            if waiting.get("kind") == "event":
                approve = self.form("/actions/send", {"run_id": r.run_id,
                                                      "event": str(waiting.get("event")),
                                                      "payload": '{"approved": true}',
                                                      "next": run_href(r.run_id)},
                                    "Approve", cls="btn small primary")
            parked_rows.append((f'<a href="{attr(run_href(r.run_id))}">{esc(r.run_id[:24])}</a>',
                                esc(r.workflow), esc(what), esc(fmt_ago(r.updated_at)), approve))
        parked = table(("run", "workflow", "waiting for", "since", ""), parked_rows,
                       empty="no run is parked")
        dead = table(("letter", "step", "error", "when"), [
            (f'<a href="{attr(letter_href(d.id))}">{esc(d.id[:10])}</a>', esc(d.step),
             f'<span class="err">{esc((d.error_type + ": " + d.error_message)[:90])}</span>',
             esc(fmt_ago(d.created_at)))
            for d in self.store.dead_letters()[-5:][::-1]], empty="no dead letters")
        return {"ov-cards": cards, "ov-chart": chart, "ov-parked": parked, "ov-dead": dead,
                "ov-queues": self.queue_table(compact=True),
                "ov-runtimes": self.runtime_table(infos, live, compact=True)}

    # -- runs --

    def runs(self, params: Mapping[str, str]) -> str:
        flt, error = _parse_filter(params)
        q = params.get("q", "").strip()
        after = params.get("after") or None
        latest = self.aggregates.peek()
        workflows = latest.workflows if latest is not None else ()
        options = "".join(f'<option value="{attr(s)}"{" selected" if flt.status == s else ""}>'
                          f"{esc(s)}</option>" for s in STATUSES)
        wf_opts = "".join(f'<option value="{attr(w)}">' for w in workflows)
        since = params.get("since", "")
        form = (f'<form class="filters" method="get" action="/runs">'
                f'<input name="q" placeholder="run id or prefix" value="{attr(q)}">'
                f'<input name="workflow" list="wfs" placeholder="workflow" '
                f'value="{attr(flt.workflow or "")}"><datalist id="wfs">{wf_opts}</datalist>'
                f'<select name="status"><option value="">any status</option>{options}</select>'
                f'<input name="since" placeholder="since: 15m, 1h, 2d" value="{attr(since)}" '
                f'size="16"><button class="btn primary" type="submit">Filter</button>'
                f'<a class="btn ghost" href="/runs">Clear</a></form>')
        if error:
            return form + f'<p class="flash bad">{esc(error)}</p>'
        exact = self.store.find_run(q) if q else None
        began = time.perf_counter()
        page, cursor = self.store.page_runs(after=after, limit=PAGE_SIZE, prefix=q if q and
                                            exact is None else "",
                                            match=flt if flt.active() else None,
                                            max_scan=SCAN_BUDGET if flt.active() else None)
        if exact is not None and after is None:
            page = [exact]
            cursor = None
        took = time.perf_counter() - began
        _, live = self.live_runtimes()
        rows = []
        for r in page:
            shown = self.shown_status(r, live)
            rows.append((f'<a class="mono" href="{attr(run_href(r.run_id))}">{esc(r.run_id)}</a>',
                         esc(r.workflow), badge(shown), esc(fmt_time(r.created_at)),
                         esc(fmt_duration(max(r.updated_at - r.created_at, 0.0))
                             if r.status not in (*ACTIVE, "queued") else fmt_ago(r.created_at)),
                         f'<span class="err">{esc((r.error or "")[:80])}</span>'))
        keep = {k: v for k, v in params.items() if k in ("q", "workflow", "status", "since")}
        nav = ""
        if after:
            nav += '<a class="btn ghost" href="/runs' + qs(**keep) + '">« first page</a>'
        if cursor is not None:
            label = "next page »" if len(page) >= PAGE_SIZE else \
                f"no more matches in the next {SCAN_BUDGET:,} runs read: keep looking »"
            nav += f'<a class="btn ghost" id="next" href="/runs{qs(**keep, after=cursor)}">' \
                   f"{esc(label)}</a>"
        total = self.store.count_runs()
        note = (f"{len(page)} run(s) · {total:,} stored · in run id order, read from LMDB with "
                f"a cursor ({fmt_duration(took)})")
        return ('<section class="panel">' + form + f'<p class="note">{esc(note)}</p>'
                + table(("run", "workflow", "status", "created", "took", "error"), rows,
                        empty="no run matches", cls="runs")
                + f'<div class="pager">{nav}</div></section>')

    # -- one run --

    def run(self, run_id: str, message: str = "", ok: bool = True) -> str | None:
        record = self.store.find_run(run_id)
        if record is None:
            return None
        frags = self.run_fragments(record)
        flash = f'<p class="flash {"good" if ok else "bad"}">{esc(message)}</p>' if message \
            else ""
        return (flash + f'<section id="run-head" class="panel">{frags["run-head"]}</section>'
                f'<section class="panel"><h2>Timeline</h2><div id="run-timeline">'
                f'{frags["run-timeline"]}</div><div class="legend">{_gantt_legend()}</div>'
                f"</section>"
                f'<section class="panel"><h2 id="steps-title">{frags["steps-title"]}</h2>'
                f'<div id="run-steps">{frags["run-steps"]}</div></section>'
                f'<div id="run-errors">{frags["run-errors"]}</div>'
                f'<div class="two"><section class="panel"><h2>Inputs</h2>'
                f'{json_view(dict(record.inputs))}</section>'
                f'<section class="panel"><h2>Output</h2><div id="run-output">'
                f'{frags["run-output"]}</div></section></div>'
                f'<section class="panel"><h2>Progress</h2><div id="run-progress">'
                f'{frags["run-progress"]}</div></section>'
                f'<section class="panel"><h2>Logs</h2><div id="run-logs">{frags["run-logs"]}'
                f"</div></section>")

    def run_fragments(self, record: RunRecord) -> dict[str, str]:
        from zixir_actors.workflow import find_workflow

        run_id = record.run_id
        _, live = self.live_runtimes()
        shown = self.shown_status(record, live)
        wf = find_workflow(record.workflow)
        calls = _safe(lambda: self.store.calls(run_id), [])
        code_first = bool(calls) or (wf is not None and wf.body is not None)
        order = tuple(wf.order) if wf is not None and wf.body is None else ()
        timeline = build_timeline(self.store, record, order=order)
        head = self._run_head(record, shown, live)
        if code_first:
            rows = call_rows(calls)
            steps_title = "Calls, in the order the body made them"
            steps = table(("#", "call", "kind", "status", "attempts", "time", "value"), [
                (str(i + 1), f'<span class="mono">{esc(c["label"])}</span>', esc(c["kind"]),
                 badge(c["status"]), esc(c["attempts"]), esc(fmt_duration(c["duration"])),
                 (json_view(c["value"], open_depth=0) if c["has_value"] else
                  f'<span class="err">{esc(c["error"] or "")}</span>'))
                for i, c in enumerate(rows)], empty="no call recorded yet")
        else:
            checkpoints = self.store.steps(run_id)
            status = {**dict(record.steps), **{n: "succeeded" for n in checkpoints}}
            if wf is not None:
                deps = {n: tuple(wf.steps[n].depends_on) for n in wf.order}
                graph = dag_svg(wf.order, deps, status)
                names = list(wf.order)
            else:
                names = list(dict.fromkeys([*record.steps, *checkpoints]))
                graph = ('<p class="note">The DAG shows when the workflow is defined in the '
                         "process serving the dashboard; its stored steps:</p>")
            steps_title = "Steps"
            rows2 = []
            for n in names:
                cp = checkpoints.get(n)
                rows2.append((f'<span class="mono">{esc(n)}</span>',
                               badge(status.get(n, "not_run")),
                               esc(cp.attempts if cp else ""),
                               esc(fmt_duration(cp.duration) if cp else ""),
                               esc(fmt_time(cp.finished_at) if cp else ""),
                               json_view(cp.output, open_depth=0) if cp else ""))
            steps = graph + table(("step", "status", "attempts", "time", "finished", "output"),
                                  rows2, empty="no step recorded yet")
        return {"run-head": head, "run-timeline": gantt_svg(timeline), "steps-title": steps_title,
                "run-steps": steps, "run-errors": self._run_errors(record, calls),
                "run-output": self._run_output(record, calls),
                "run-progress": self._progress(run_id), "run-logs": self._logs(run_id)}

    def _run_head(self, record: RunRecord, shown: str, live: set[str]) -> str:
        run_id = record.run_id
        buttons = []
        waiting = record.waiting or {}
        if record.status == "parked" and waiting.get("kind") == "event":
            buttons.append(self.form("/actions/send", {
                "run_id": run_id, "event": str(waiting.get("event")),
                "payload": '{"approved": true}', "next": run_href(run_id)},
                "Approve", cls="btn primary", extra=""))
        if shown not in ("succeeded", "queued") and (record.status not in ACTIVE
                                                     or shown == "interrupted"):
            buttons.append(self.form("/actions/resume", {"run_id": run_id,
                                                         "next": run_href(run_id)}, "Resume"))
        if record.status in ACTIVE:
            buttons.append(self.form("/actions/cancel", {"run_id": run_id,
                                                         "next": run_href(run_id)},
                                     "Cancel", cls="btn danger",
                                     confirm=f"Cancel run {run_id}?"))
        send = ""
        if record.status not in ("succeeded", "failed", "cancelled", "timed_out"):
            send = ('<details class="send"><summary class="btn ghost">Send event…</summary>'
                    + self.form("/actions/send", {"run_id": run_id, "next": run_href(run_id)},
                                "Send", cls="btn primary",
                                extra=f'<input name="event" placeholder="event" required '
                                      f'value="{attr(waiting.get("event") or "")}">'
                                      '<input name="payload" placeholder="payload (JSON)" '
                                      'value="null" class="wide">') + "</details>")
        owner = record.owner or "—"
        owner_note = "live" if record.owner in live else "not live" if record.owner else ""
        facts = [
            ("workflow", esc(record.workflow)), ("status", badge(shown)),
            ("created", esc(fmt_time(record.created_at))),
            ("updated", esc(f"{fmt_time(record.updated_at)} ({fmt_ago(record.updated_at)})")),
            ("owner", f'<span class="mono">{esc(owner)}</span> {esc(owner_note)}'),
        ]
        if waiting:
            facts.append(("waiting for", esc(_waiting_text(waiting))))
        if shown == "interrupted":
            facts.append(("note", "its process stopped or died while it ran: resume it"))
        if shown == "queued":
            facts.append(("note", "waiting in its queue for a runtime that defines "
                                  f"{record.workflow!r} and a free slot (Queues page)"))
        dl = "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in facts)
        return (f'<div class="run-head"><div><div class="mono big">{esc(run_id)}</div>'
                f'<dl class="facts">{dl}</dl></div><div class="actions">{"".join(buttons)}'
                f"{send}</div></div>")

    def _run_errors(self, record: RunRecord, calls: list[tuple[int, Any]]) -> str:
        parts = []
        letters = _safe(lambda: self.store.dead_letters(run_id=record.run_id), [])
        for d in letters:
            parts.append(f'<div class="error-box"><div class="error-title">Step '
                         f'<b>{esc(d.step)}</b> failed after {len(d.attempts)} attempt(s): '
                         f'{esc(d.error_type)}: {esc(d.error_message)}</div>'
                         f'<div class="actions">'
                         + self.form("/actions/retry", {"letter_id": d.id,
                                                        "next": run_href(record.run_id)},
                                     "Retry step", cls="btn primary")
                         + f' <a class="btn ghost" href="{attr(letter_href(d.id))}">'
                           f"Dead letter</a></div>"
                         f"<pre class=\"tb\">{esc(d.traceback.rstrip())}</pre></div>")
        if not letters:
            for c in call_rows(calls):
                err = c["error"]
                if c["status"] == "failed" and err is not None:
                    parts.append(f'<div class="error-box"><div class="error-title">Call '
                                 f'<b>{esc(c["label"])}</b> failed: {esc(err)}</div>'
                                 f'<pre class="tb">{esc(getattr(err, "traceback", "").rstrip())}'
                                 f"</pre></div>")
        if record.error and not parts:
            parts.append(f'<div class="error-box"><div class="error-title">'
                         f"{esc(record.error)}</div></div>")
        if not parts:
            return ""
        return '<section class="panel"><h2>Errors</h2>' + "".join(parts) + "</section>"

    def _run_output(self, record: RunRecord, calls: list[tuple[int, Any]]) -> str:
        from zixir_actors.dashboard._data import RESULT_POS

        for position, rec in reversed(calls):
            if position == RESULT_POS:
                return json_view(rec[2])
        if calls or record.status in ACTIVE:
            return '<p class="empty">no output yet</p>'
        checkpoints = _safe(lambda: self.store.steps(record.run_id), {})
        if not checkpoints:
            return '<p class="empty">no output</p>'
        return json_view({n: cp.output for n, cp in checkpoints.items()}, open_depth=1)

    def _progress(self, run_id: str) -> str:
        from zixir_actors.checkpoint import PROGRESS_DB

        last = _safe(lambda: self.store.last_seq(PROGRESS_DB, run_id), -1)
        items = _safe(lambda: self.store.progress(run_id, max(last - PROGRESS_SHOWN, -1)), [])
        if not items:
            return '<p class="empty">no progress items (ctx.emit) stored</p>'
        lines = []
        for _seq, (at, kind, step, value) in items:
            if kind == "parked" and isinstance(value, Mapping):
                text = "waiting for " + _waiting_text(value)
            else:
                text = value if isinstance(value, str) else repr(value)
            lines.append(f'<li><span class="t">{esc(time.strftime("%H:%M:%S", time.localtime(at)))}'
                         f'</span><span class="k k-{attr(kind)}">{esc(kind)}</span>'
                         f'{esc(step or "")} <span class="v">{esc(text[:500])}</span></li>')
        return f'<ol class="progress" start="{items[0][0]}">{"".join(lines)}</ol>'

    def _logs(self, run_id: str) -> str:
        read = getattr(self.store, "run_logs", None)
        if read is None:
            return ('<p class="empty">this version of the store keeps no log lines with '
                    "runs</p>")
        try:
            first, end = self.store.run_log_bounds(run_id)
            lines = list(read(run_id, after=max(end - LOG_LINES_SHOWN, first) - 1))
        except Exception as exc:
            return f'<p class="flash bad">cannot read the logs: {esc(exc)}</p>'
        if not lines:
            return '<p class="empty">no log lines kept for this run</p>'
        out = "".join(_log_line(line) for line in lines)
        kept = end - first
        notes = []
        if kept > len(lines):
            notes.append(f"the last {len(lines):,} of {kept:,} lines kept")
        if first:
            notes.append(f"{first:,} older lines were dropped (the run's bound)")
        more = f'<p class="note">{esc("; ".join(notes))} · zixir runs logs {esc(run_id)}</p>' \
            if notes else ""
        return more + f'<div class="logs">{out}</div>'

    # -- dead letters --

    def dead_letters(self, params: Mapping[str, str]) -> str:
        wf = params.get("workflow") or None
        letters = self.store.dead_letters(workflow=wf)[::-1]
        start = max(int(params.get("offset", "0") or 0), 0) if params.get("offset", "0") \
            .isdigit() else 0
        shown = letters[start:start + PAGE_SIZE]
        rows = [(f'<a class="mono" href="{attr(letter_href(d.id))}">{esc(d.id[:12])}</a>',
                 esc(d.workflow), f'<a class="mono" href="{attr(run_href(d.run_id))}">'
                 f"{esc(d.run_id[:16])}</a>", esc(d.step), esc(len(d.attempts)),
                 f'<span class="err">{esc((d.error_type + ": " + d.error_message)[:80])}</span>',
                 esc(fmt_ago(d.created_at)),
                 self.form("/actions/retry", {"letter_id": d.id, "next": run_href(d.run_id)},
                           "Retry", cls="btn small primary")
                 + self.form("/actions/discard", {"letter_id": d.id, "next": "/dead-letters"},
                             "Discard", cls="btn small danger",
                             confirm="Discard this dead letter without retrying it?"))
                for d in shown]
        nav = ""
        if start + PAGE_SIZE < len(letters):
            nav = (f'<a class="btn ghost" href="/dead-letters'
                   f'{qs(workflow=wf, offset=start + PAGE_SIZE)}">next »</a>')
        return (f'<p class="note">{len(letters)} dead letter(s): steps that exhausted their '
                "retries. Retry re-drives the run from the step (in this process, see the "
                "README); Discard deletes the letter.</p>"
                + '<section class="panel">'
                + table(("letter", "workflow", "run", "step", "attempts", "error", "when", ""),
                        rows, empty="no dead letters")
                + f'<div class="pager">{nav}</div></section>')

    def dead_letter(self, letter_id: str) -> str | None:
        from zixir_actors.errors import DeadLetterNotFoundError

        try:
            d = self.store.get_dead_letter(letter_id)
        except DeadLetterNotFoundError:
            return None
        attempts = table(("attempt", "started", "time", "error", "timed out"), [
            (esc(a.attempt), esc(fmt_time(a.started_at)), esc(fmt_duration(a.duration)),
             f'<span class="err">{esc(a.error_type)}: {esc(a.error_message[:200])}</span>',
             "yes" if a.timed_out else "") for a in d.attempts])
        actions = (self.form("/actions/retry", {"letter_id": d.id, "next": run_href(d.run_id)},
                             "Retry", cls="btn primary")
                   + self.form("/actions/discard", {"letter_id": d.id, "next": "/dead-letters"},
                               "Discard", cls="btn danger",
                               confirm="Discard this dead letter without retrying it?"))
        facts = "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in (
            ("workflow", esc(d.workflow)),
            ("run", f'<a class="mono" href="{attr(run_href(d.run_id))}">{esc(d.run_id)}</a>'),
            ("step", f'<span class="mono">{esc(d.step)}</span>'),
            ("error", f'<span class="err">{esc(d.error_type)}: {esc(d.error_message)}</span>'),
            ("parked", esc(fmt_time(d.created_at)))))
        return (f'<section class="panel"><div class="run-head"><dl class="facts">{facts}</dl>'
                f'<div class="actions">{actions}</div></div></section>'
                f'<section class="panel"><h2>Attempts</h2>{attempts}</section>'
                f'<section class="panel"><h2>Traceback</h2><pre class="tb">'
                f"{esc(d.traceback.rstrip() or 'no traceback kept')}</pre></section>"
                f'<section class="panel"><h2>Step inputs</h2>{json_view(dict(d.inputs))}'
                f"</section>")

    # -- supervision --

    def tree(self) -> str:
        infos, live = self.live_runtimes()
        from zixir_actors._runtimes import current_owner

        me = current_owner()
        parts = [f'<section class="panel"><h2>Runtimes on this directory</h2>'
                 f"{self.runtime_table(infos, live)}</section>"]
        from zixir_actors.runtime import current

        runtime = current()
        if runtime is None:
            parts.append('<section class="panel"><h2>Supervision tree</h2><p class="empty">'
                         "No runtime runs in the process serving this dashboard; the trees "
                         "below are the ones the runtimes above stored with their leases."
                         "</p></section>")
        else:
            restarts = _restart_counts()
            try:
                tree = _render_tree(runtime.supervisor, "zixir.root", restarts)
            except Exception as exc:
                tree = f'<p class="flash bad">cannot read the tree: {esc(exc)}</p>'
            parts.append(f'<section class="panel"><h2>Supervision tree of this process '
                         f'<span class="mono small">{esc(me or "")}</span></h2>'
                         f'<ul class="tree">{tree}</ul></section>')
        for info in sorted(infos, key=lambda i: i.started_at):
            text = getattr(info, "tree", "")
            if info.id == me or not text:
                continue
            state = "live" if info.id in live else "not live: its runs go to a live runtime"
            parts.append(f'<section class="panel"><h2>Supervision tree of pid {esc(info.pid)} '
                         f'<span class="mono small">{esc(info.id)} · {esc(state)} · as of '
                         f"{esc(fmt_ago(info.renewed_at))}</span></h2>"
                         f'<pre class="treetext">{esc(text)}</pre></section>')
        return "".join(parts)

    def runtime_table(self, infos: list[Any], live: set[str], *, compact: bool = False) -> str:
        from zixir_actors._runtimes import current_owner

        me = current_owner()
        now = time.time()
        rows = []
        for i in sorted(infos, key=lambda i: i.started_at):
            alive = i.id in live
            state = badge("running" if alive else "interrupted")
            lease = (f"renewed {fmt_ago(i.renewed_at)}, expires "
                     f"{fmt_ago(i.expires_at(), now)}")
            name = esc(i.id) + (' <span class="pill">this process</span>' if i.id == me else "")
            row = [f'<span class="mono">{name}</span>', esc(i.pid), state, esc(lease)]
            if not compact:
                row += [esc(fmt_time(i.started_at)), esc(", ".join(i.workflows) or "—")]
            rows.append(row)
        headers = ("runtime", "pid", "state", "lease") + (() if compact else
                                                           ("started", "workflows defined"))
        return table(headers, rows, empty="no runtime holds a lease on this directory")

    # -- caches, queues, schedules --

    def caches(self) -> str:
        from zixir_actors.cache import Cache, stored_caches

        try:
            stored = {c.name: c for c in stored_caches(self.data_dir)}
        except Exception as exc:
            return f'<p class="flash bad">cannot read the caches: {esc(exc)}</p>'
        live: dict[str, tuple[Any, str]] = {}
        for name in _safe(Cache.names, []):
            with contextlib.suppress(Exception):
                cache = Cache.lookup(name)
                stats = cache.stats()
                tables = " · ".join(f"{t} {cache.count(t):,}" for t in cache.tables())
                live[name] = (stats, tables)
        rows = []
        for name in sorted({*stored, *live}):
            if name in live:
                st, tables = live[name]
                kind = "persistent" if st.persist else "memory"
                entries, size, hits, misses = st.size, st.bytes, st.hits, st.misses
                where, updated = "running here", "now"
            else:
                c = stored[name]
                kind = "persistent" if c.persistent else "memory"
                entries, size, hits, misses = c.entries, c.bytes, c.hits, c.misses
                where, updated, tables = "stored", fmt_ago(c.updated_at), ""
            total = hits + misses
            ratio = hits / total if total else 0.0
            meter = (f'<div class="meter"><i style="width:{ratio * 100:.0f}%"></i></div>'
                     f"{ratio:.0%}") if total else "—"
            rows.append((f'<span class="mono">{esc(name)}</span>', esc(kind), esc(where),
                         f"{entries:,}", esc(_bytes(size)), f"{hits:,}", f"{misses:,}", meter,
                         esc(tables or "—"), esc(updated)))
        return ('<section class="panel">' + table(
            ("cache", "kind", "state", "entries", "size", "hits", "misses", "hit ratio",
             "tables (rows)", "updated"),
            rows, empty="no cache recorded in this data directory") + "</section>"
            + '<p class="note">Caches running in the process serving the dashboard show live '
              "counters and their tables; the others, what their last process stored "
              "(persistent caches: their entries in LMDB now).</p>")

    def queue_table(self, *, compact: bool = False) -> str:
        stats = _queue_stats(self.store)
        if stats is None:
            return '<p class="empty">queues are not available in this version</p>'
        rows = []
        for q in stats:
            cfg = q.config
            row = [f'<span class="mono">{esc(q.name)}</span>', f"{q.depth:,}",
                   f"{q.running:,}", esc(fmt_duration(q.oldest_wait) if q.depth else "—")]
            if not compact:
                row += [esc(_limit_text(cfg.concurrency)), esc(_limit_text(cfg.per_process)),
                        esc(_rate_text(cfg.rate)), "yes" if cfg.priority else "no"]
            rows.append(row)
        headers = ("queue", "waiting", "running", "oldest wait") + (() if compact else (
            "concurrency", "per process", "rate", "priority"))
        return table(headers, rows, empty="no queue on this directory")

    def queues(self) -> str:
        parts = [f'<section class="panel"><h2>Queues</h2>{self.queue_table()}</section>']
        schedules = _schedules(self.store)
        if schedules is None:
            parts.append('<section class="panel"><h2>Schedules</h2><p class="empty">'
                         "schedules are not available in this version</p></section>")
        else:
            now = time.time()
            rows = []
            for sc in schedules:
                try:
                    upcoming = fmt_time(sc.next_tick(max(now, sc.last_tick)))
                except Exception:
                    upcoming = "—"
                state = '<span class="badge s-cancelled">paused</span>' if sc.paused else \
                    badge("running").replace(">running<", ">active<")
                rows.append((f'<span class="mono">{esc(sc.name)}</span>', esc(sc.workflow),
                             f'<span class="mono">{esc(sc.cron)}</span>', esc(sc.timezone),
                             esc(sc.catch_up), esc(getattr(sc.queue, "name", sc.queue) or "—"),
                             state, esc(upcoming if not sc.paused else "—"),
                             esc(fmt_time(sc.last_tick))))
            parts.append('<section class="panel"><h2>Schedules</h2>' + table(
                ("schedule", "workflow", "cron", "timezone", "catch-up", "queue", "state",
                 "next tick", "last tick"),
                rows, empty="no schedule on this directory") + "</section>")
        return "".join(parts)

    # -- metrics --

    def metrics(self) -> str:
        frags = self.metrics_fragments()
        note = ("Live charts from the metrics registry of the process serving this dashboard"
                + (" (the service itself)." if self.in_service else
                   " (a dashboard process: serve it from your service with "
                   "zixir_actors.start(dashboard_port=...) to chart its steps).")
                + " Store-wide figures are on the overview; Prometheus scrapes /metrics.")
        charts = "".join(f'<section class="panel chart-panel"><h2>{esc(title)}</h2>'
                         f'<div id="{key}">{frags[key]}</div></section>'
                         for key, title in (("m-throughput", "Throughput"),
                                            ("m-latency", "Step latency (from the histogram)"),
                                            ("m-restarts", "Actor restarts (cumulative)"),
                                            ("m-memory", "Resident memory")))
        return f'<p class="note">{esc(note)}</p><div class="grid2">{charts}</div>'

    def metrics_fragments(self) -> dict[str, str]:
        s = self.history.series()
        return {"m-throughput": line_chart(s["throughput"], unit="/s"),
                "m-latency": line_chart(s["latency"], unit="s"),
                "m-restarts": line_chart(s["restarts"]),
                "m-memory": line_chart(s["memory"], unit=" MiB")}


# -- helpers -------------------------------------------------------------------------


def _safe(fn: Any, default: Any) -> Any:
    try:
        return fn()
    except Exception:
        return default


def _waiting_text(waiting: Mapping[str, Any]) -> str:
    from zixir_actors.workflow._durable import describe_waiting

    return describe_waiting(waiting) or "—"


def _gantt_legend() -> str:
    kinds = (("ok", "attempt that succeeded"), ("running", "running"),
             ("failed", "failed attempt"),
             ("timed_out", "timed out"), ("backoff", "backoff wait"), ("sleep", "sleep"),
             ("park", "parked (no thread held)"))
    return "".join(f'<span class="key"><i class="k-{k}"></i>{esc(t)}</span>' for k, t in kinds) \
        + '<span class="key"><i class="k-mark"></i>event arrived</span>'


def _parse_filter(params: Mapping[str, str]) -> tuple[RunFilter, str]:
    since = params.get("since", "").strip()
    since_t = None
    if since:
        from zixir_actors.cli import CliError, parse_duration

        try:
            since_t = time.time() - parse_duration(since)
        except CliError:
            return RunFilter(), f"since expects a duration like 90s, 15m, 1h or 2d, got {since!r}"
    status = params.get("status") or None
    return RunFilter(workflow=params.get("workflow") or None, status=status,
                     since=since_t), ""


def _log_line(line: Any) -> str:
    if isinstance(line, Mapping):
        get = line.get
    else:
        def get(k: str, d: Any = None) -> Any:
            return getattr(line, k, d)
    at = get("time") or get("at")
    level = str(get("level") or "info").lower()
    step = get("step") or ""
    attempt = get("attempt")
    message = get("message") or get("text") or (line if isinstance(line, str) else repr(line))
    fields = get("fields") or {}
    if isinstance(fields, Mapping) and fields:
        extra = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in fields.items()
                         if k not in ("workflow", "run_id", "step", "attempt"))
        message = f"{message} {extra}".rstrip()
    when = time.strftime("%H:%M:%S", time.localtime(at)) if isinstance(at, (int, float)) else ""
    where = f"{step}" + (f" #{attempt}" if attempt else "")
    return (f'<div class="log l-{attr(level)}"><span class="t">{esc(when)}</span>'
            f'<span class="lvl">{esc(level)}</span><span class="where">{esc(where)}</span>'
            f'<span class="msg">{esc(message)}</span></div>')


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n:.1f} TiB"


def _limit_text(v: Any) -> str:
    return "no limit" if v is None else str(v)


def _rate_text(v: Any) -> str:
    if v is None:
        return "no limit"
    if isinstance(v, (tuple, list)) and len(v) == 2:
        return f"{v[0]} per {v[1]:g} s"
    return str(v)


def _queue_stats(store: CheckpointClient) -> list[Any] | None:
    try:
        from zixir_actors.queue import queue_stats
    except ImportError:
        return None
    try:
        return list(queue_stats(store))
    except Exception:
        return []


def _schedules(store: CheckpointClient) -> list[Any] | None:
    try:
        from zixir_actors.schedule import schedules
    except ImportError:
        return None
    try:
        return list(schedules(store))
    except Exception:
        return []


def _restart_counts() -> dict[str, float]:
    from zixir_actors.observability import metrics

    out: dict[str, float] = {}
    with contextlib.suppress(Exception):
        for family in metrics.registry.collect():
            for s in family.samples:
                if s.name == "zixir_actor_restarts_total":
                    child = s.labels.get("child", "")
                    out[child] = out.get(child, 0.0) + s.value
    return out


def _render_tree(sup: Any, label: str, restarts: Mapping[str, float], depth: int = 0) -> str:
    from supervisors import SupervisorRef
    from supervisors.supervisor import is_supervisor_class

    children = sup.which_children(timeout=5.0)
    running = sum(1 for c in children if c.ref is not None)
    out = [f'<li class="sup"><span class="node-name">{esc(label)}</span> '
           f'<span class="pill">{running}/{len(children)} running</span><ul>']
    shown = children[:200]
    for c in shown:
        name = f" ({c.name})" if c.name else ""
        count = restarts.get(str(c.id), 0.0)
        extra = f' <span class="pill warn">{count:.0f} restarts</span>' if count else ""
        if c.ref is not None and is_supervisor_class(c.ref.actor_class) and depth < 4:
            try:
                inner = _render_tree(SupervisorRef(c.ref), f"{c.id}{name}", restarts, depth + 1)
                out.append(inner.replace("</span> <span", f"</span>{extra} <span", 1))
                continue
            except Exception:
                pass
        state = "running" if c.ref is not None else "restarting" if c.restarting else "stopped"
        out.append(f'<li><span class="dot s-{state}"></span><span class="node-name">'
                   f"{esc(str(c.id))}{esc(name)}</span> <span class=\"cls\">"
                   f"{esc(c.actor_class)}</span> {badge(state)}{extra}</li>")
    if len(children) > len(shown):
        out.append(f'<li class="note">… {len(children) - len(shown)} more children</li>')
    out.append("</ul></li>")
    return "".join(out)


def format_exc(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()
