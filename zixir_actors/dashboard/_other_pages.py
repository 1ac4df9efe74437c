"""Dead letters, the supervision tree, caches, queues and schedules, metrics."""

from __future__ import annotations

import contextlib
import importlib
import time
from collections.abc import Mapping
from typing import Any

from zixir_actors.checkpoint import CheckpointClient
from zixir_actors.dashboard._base import PageBase, letter_href, run_href, safe
from zixir_actors.dashboard._html import (
    attr,
    badge,
    esc,
    fmt_ago,
    fmt_duration,
    fmt_time,
    json_view,
    line_chart,
    qs,
    table,
)

__all__ = ["LETTERS_PAGE", "OtherPages"]

LETTERS_PAGE = 50
"""Dead letters on one page."""


class OtherPages(PageBase):
    """Every page but the overview, the runs list and the run page."""

    # -- dead letters --

    def dead_letters(self, params: Mapping[str, str]) -> str:
        wf = params.get("workflow") or None
        letters = self.store.dead_letters(workflow=wf)[::-1]
        start = max(int(params.get("offset", "0") or 0), 0) if params.get("offset", "0") \
            .isdigit() else 0
        shown = letters[start:start + LETTERS_PAGE]
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
        if start + LETTERS_PAGE < len(letters):
            nav = (f'<a class="btn ghost" href="/dead-letters'
                   f'{qs(workflow=wf, offset=start + LETTERS_PAGE)}">next »</a>')
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
        for name in safe(Cache.names, []):
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
        stats = _listed("zixir_actors.queue", "queue_stats", self.store)
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
        schedules = _listed("zixir_actors.schedule", "schedules", self.store)
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


def _listed(module: str, function: str, store: CheckpointClient) -> list[Any] | None:
    """``module.function(store)`` as a list: None if the module is missing, [] if it failed."""
    try:
        read = getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError):  # as ``from module import function`` would fail
        return None
    try:
        return list(read(store))
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
