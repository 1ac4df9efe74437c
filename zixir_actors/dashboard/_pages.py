"""The dashboard's pages, rendered to HTML from the store (see `_app` for the routes).

`Dash` holds what they read; the overview and the runs list are here, the run
page in `_run_page`, the other pages in `_other_pages`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zixir_actors.checkpoint import CheckpointClient
from zixir_actors.dashboard._actions import Actions
from zixir_actors.dashboard._base import letter_href, run_href, waiting_text
from zixir_actors.dashboard._data import (
    ACTIVE,
    STATUSES,
    WINDOWS,
    Aggregates,
    RunFilter,
)
from zixir_actors.dashboard._html import (
    attr,
    badge,
    bar_chart,
    esc,
    fmt_ago,
    fmt_duration,
    fmt_time,
    qs,
    table,
)
from zixir_actors.dashboard._live import MetricsHistory, metric_total
from zixir_actors.dashboard._other_pages import OtherPages
from zixir_actors.dashboard._run_page import RunPage

__all__ = ["PAGE_SIZE", "SCAN_BUDGET", "Dash", "letter_href", "run_href"]

PAGE_SIZE = 50
"""Runs on one page of the runs list."""
SCAN_BUDGET = 10_000
"""Run headers one request of a filtered runs list reads at most (then it offers to go on)."""


@dataclass
class Dash(RunPage, OtherPages):
    """Everything the pages read: the store, the aggregates, this process's metrics."""

    store: CheckpointClient
    data_dir: Path
    csrf: str
    in_service: bool
    aggregates: Aggregates
    history: MetricsHistory
    actions: Actions
    where: str = field(default_factory=lambda: f"pid {os.getpid()}")

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
            what = waiting_text(waiting)
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
