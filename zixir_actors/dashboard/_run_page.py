"""The page of one run: its header and actions, timeline, steps or calls, I/O, logs."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from zixir_actors.checkpoint import RunRecord
from zixir_actors.dashboard._base import PageBase, letter_href, run_href, safe, waiting_text
from zixir_actors.dashboard._data import ACTIVE, build_timeline, call_rows
from zixir_actors.dashboard._html import (
    attr,
    badge,
    dag_svg,
    esc,
    fmt_ago,
    fmt_duration,
    fmt_time,
    gantt_svg,
    json_view,
    table,
)

__all__ = ["LOG_LINES_SHOWN", "PROGRESS_SHOWN", "RunPage"]

PROGRESS_SHOWN = 200
"""Latest progress items shown on a run's page."""
LOG_LINES_SHOWN = 500
"""Latest log lines shown on a run's page."""


class RunPage(PageBase):
    """The run page's parts (each a fragment the page refreshes live)."""

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
        calls = safe(lambda: self.store.calls(run_id), [])
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
            facts.append(("waiting for", esc(waiting_text(waiting))))
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
        letters = safe(lambda: self.store.dead_letters(run_id=record.run_id), [])
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
        checkpoints = safe(lambda: self.store.steps(record.run_id), {})
        if not checkpoints:
            return '<p class="empty">no output</p>'
        return json_view({n: cp.output for n, cp in checkpoints.items()}, open_depth=1)

    def _progress(self, run_id: str) -> str:
        from zixir_actors.checkpoint import PROGRESS_DB

        last = safe(lambda: self.store.last_seq(PROGRESS_DB, run_id), -1)
        items = safe(lambda: self.store.progress(run_id, max(last - PROGRESS_SHOWN, -1)), [])
        if not items:
            return '<p class="empty">no progress items (ctx.emit) stored</p>'
        lines = []
        for _seq, (at, kind, step, value) in items:
            if kind == "parked" and isinstance(value, Mapping):
                text = "waiting for " + waiting_text(value)
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


def _gantt_legend() -> str:
    kinds = (("ok", "attempt that succeeded"), ("running", "running"),
             ("failed", "failed attempt"),
             ("timed_out", "timed out"), ("backoff", "backoff wait"), ("sleep", "sleep"),
             ("park", "parked (no thread held)"))
    return "".join(f'<span class="key"><i class="k-{k}"></i>{esc(t)}</span>' for k, t in kinds) \
        + '<span class="key"><i class="k-mark"></i>event arrived</span>'


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
