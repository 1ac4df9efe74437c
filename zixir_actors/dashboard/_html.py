"""Server-side HTML and SVG for the dashboard: no template engine, no build step.

Every value that comes from the store goes through `esc` (or `attr`); the
JSON viewer cuts big values; the charts are plain SVG, so pages work without
JavaScript and the little JavaScript there is (``static/app.js``) only swaps
fragments the server renders.
"""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

from zixir_actors.dashboard._data import Bar, Timeline

__all__ = ["MAX_ITEMS", "MAX_STRING", "attr", "badge", "bar_chart", "dag_svg", "esc", "fmt_ago",
           "fmt_duration", "fmt_time", "gantt_svg", "json_view", "line_chart", "page", "qs",
           "table"]

MAX_STRING = 2000
"""Characters of a string the JSON viewer shows before cutting it."""
MAX_ITEMS = 100
"""Items of a list or mapping the JSON viewer shows before cutting it."""

STATUS_COLORS = {
    "succeeded": "#16a34a", "ok": "#16a34a", "running": "#2563eb", "queued": "#94a3b8",
    "parked": "#9333ea",
    "waiting": "#9333ea", "failed": "#dc2626", "timed_out": "#ea580c",
    "cancelled": "#64748b", "interrupted": "#ca8a04", "corrupt": "#7f1d1d",
    "backoff": "#fbbf24", "sleep": "#0ea5e9", "park": "#c084fc", "not_run": "#cbd5e1",
    "upstream_failed": "#f87171", "cached": "#86efac",
}


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


attr = esc


def qs(**params: Any) -> str:
    """A query string of the non-empty parameters (with its ``?``), or ``""``."""
    kept = {k: v for k, v in params.items() if v not in (None, "")}
    return "?" + urlencode(kept) if kept else ""


def fmt_time(t: float | None) -> str:
    if not t:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def fmt_ago(t: float | None, now: float | None = None) -> str:
    if not t:
        return "—"
    delta = (time.time() if now is None else now) - t
    if delta < 0:
        return "in " + fmt_duration(-delta)
    return fmt_duration(delta) + " ago"


def badge(status: str) -> str:
    return f'<span class="badge s-{attr(status)}">{esc(status.replace("_", " "))}</span>'


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, empty: str = "nothing here",
          cls: str = "") -> str:
    """A table whose cells are already HTML."""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="empty">{esc(empty)}</p>'
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    return f'<table class="grid {cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


# -- JSON viewer -------------------------------------------------------------------


def _size(value: Any) -> str:
    try:
        n = len(json.dumps(value, default=repr))
    except (TypeError, ValueError):
        n = len(repr(value))
    return f"{n / 1024:.1f} KiB" if n >= 1024 else f"{n} B"


def json_view(value: Any, *, open_depth: int = 2) -> str:
    """A collapsible JSON tree; values that are not JSON are shown as their repr."""
    return f'<div class="json">{_jv(value, 0, open_depth)}</div>'


def _jv(value: Any, depth: int, open_depth: int) -> str:
    if value is None or isinstance(value, bool):
        return f'<span class="j-lit">{json.dumps(value)}</span>'
    if isinstance(value, (int, float)):
        text = repr(value) if isinstance(value, float) and not math.isfinite(value) else \
            json.dumps(value)
        return f'<span class="j-num">{esc(text)}</span>'
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            return (f'<span class="j-str">{esc(json.dumps(value[:MAX_STRING]))}</span>'
                    f'<span class="j-cut">… cut: {len(value):,} characters</span>')
        return f'<span class="j-str">{esc(json.dumps(value))}</span>'
    if isinstance(value, Mapping):
        items = list(value.items())
        if not items:
            return '<span class="j-punct">{}</span>'
        inner = "".join(f'<li><span class="j-key">{esc(json.dumps(str(k)))}</span>: '
                        f"{_jv(v, depth + 1, open_depth)}</li>" for k, v in items[:MAX_ITEMS])
        if len(items) > MAX_ITEMS:
            inner += f'<li class="j-cut">… {len(items) - MAX_ITEMS:,} more keys</li>'
        summary = f"{{…}} {len(items)} key{'s' if len(items) != 1 else ''}, {_size(value)}"
        return _fold(summary, f"<ul>{inner}</ul>", depth < open_depth)
    if isinstance(value, (list, tuple)):
        if not value:
            return '<span class="j-punct">[]</span>'
        inner = "".join(f"<li>{_jv(v, depth + 1, open_depth)}</li>" for v in value[:MAX_ITEMS])
        if len(value) > MAX_ITEMS:
            inner += f'<li class="j-cut">… {len(value) - MAX_ITEMS:,} more items</li>'
        summary = f"[…] {len(value)} item{'s' if len(value) != 1 else ''}, {_size(value)}"
        return _fold(summary, f"<ol start=0>{inner}</ol>", depth < open_depth)
    text = repr(value)
    cut = ""
    if len(text) > MAX_STRING:
        cut = f'<span class="j-cut">… cut: {len(text):,} characters</span>'
        text = text[:MAX_STRING]
    return f'<span class="j-repr" title="{attr(type(value).__qualname__)}, not JSON">' \
           f"{esc(text)}</span>{cut}"


def _fold(summary: str, body: str, is_open: bool) -> str:
    return (f'<details{" open" if is_open else ""}><summary>{esc(summary)}</summary>'
            f"{body}</details>")


# -- charts ----------------------------------------------------------------------------


def bar_chart(bars: Sequence[Bar], statuses: Sequence[str], *, width: int = 760,
              height: int = 180) -> str:
    """Stacked bars of runs by status over time."""
    left, bottom, top = 40, 22, 8
    plot_w, plot_h = width - left - 8, height - bottom - top
    peak = max((sum(b.counts.values()) for b in bars), default=0)
    scale = _nice(peak)
    n = max(len(bars), 1)
    bw = plot_w / n
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="runs by status over time">']
    for i in range(5):
        y = top + plot_h - plot_h * i / 4
        parts.append(f'<line class="gridline" x1="{left}" x2="{width - 8}" y1="{y:.1f}" '
                     f'y2="{y:.1f}"/><text class="axis" x="{left - 6}" y="{y + 4:.1f}" '
                     f'text-anchor="end">{_num(scale * i / 4)}</text>')
    for i, bar in enumerate(bars):
        x = left + i * bw
        y = top + plot_h
        total = sum(bar.counts.values())
        for status in statuses:
            count = bar.counts.get(status, 0)
            if not count:
                continue
            h = plot_h * count / scale if scale else 0
            y -= h
            parts.append(f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{max(bw - 2, 1):.1f}" '
                         f'height="{h:.1f}" fill="{STATUS_COLORS.get(status, "#94a3b8")}">'
                         f"<title>{esc(fmt_time(bar.start))}: {count} {esc(status)} "
                         f"of {total}</title></rect>")
    day = bool(bars) and bars[-1].end - bars[0].start <= 86400
    for i in (0, n // 2, n - 1):
        if i < len(bars):
            x = left + i * bw + bw / 2
            label = time.strftime("%H:%M" if day else "%b %d", time.localtime(bars[i].start))
            parts.append(f'<text class="axis" x="{x:.1f}" y="{height - 6}" '
                         f'text-anchor="middle">{esc(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _nice(peak: float) -> float:
    if peak <= 0:
        return 4.0
    exp = 10.0 ** math.floor(math.log10(peak))
    for m in (1, 2, 2.5, 5, 10):
        if peak <= m * exp:
            return float(max(m * exp, 4.0))
    return float(10 * exp)


def _nice_any(peak: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten that is at least `peak` (> 0)."""
    exp = 10.0 ** math.floor(math.log10(peak))
    for m in (1, 2, 2.5, 5, 10):
        if peak <= m * exp * (1 + 1e-9):
            return float(m * exp)
    return float(10 * exp)


def _num(v: float) -> str:
    if v >= 1_000_000:
        return f"{v / 1e6:.1f}M"
    if v >= 1000:
        return f"{v / 1e3:.1f}k"
    return f"{v:.0f}" if v == int(v) else f"{v:.3g}"


def gantt_svg(tl: Timeline, *, width: int = 980) -> str:
    """The run's Gantt chart: one row per step, bars per attempt, backoff, park; marks per event."""
    label_w, row_h, top = 170, 26, 26
    plot_w = width - label_w - 40
    height = top + row_h * max(len(tl.rows), 1) + 10
    span = max(tl.end - tl.start, 1e-3)

    def x(t: float) -> float:
        return label_w + plot_w * (t - tl.start) / span

    parts = [f'<svg class="gantt" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="timeline of the run">']
    for i in range(6):
        t = tl.start + span * i / 5
        xx = x(t)
        parts.append(f'<line class="gridline" x1="{xx:.1f}" x2="{xx:.1f}" y1="{top - 6}" '
                     f'y2="{height - 6}"/><text class="axis" x="{xx:.1f}" y="{top - 10}" '
                     f'text-anchor="middle">+{esc(fmt_duration(t - tl.start))}</text>')
    if not tl.rows:
        parts.append(f'<text class="axis" x="{label_w}" y="{top + 16}">no step has run yet</text>')
    for i, row in enumerate(tl.rows):
        y = top + i * row_h
        if i % 2:
            parts.append(f'<rect class="stripe" x="0" y="{y}" width="{width}" height="{row_h}"/>')
        color = STATUS_COLORS.get(row.status, "#94a3b8")
        parts.append(f'<circle cx="10" cy="{y + row_h / 2}" r="4" fill="{color}"/>'
                     f'<text class="label" x="20" y="{y + row_h / 2 + 4}">'
                     f"{esc(row.label[:24])}<title>{esc(row.label)}: "
                     f"{esc(row.status or 'pending')}</title></text>")
        for seg in row.segments:
            x0, x1 = x(seg.start), x(seg.end)
            w = max(x1 - x0, 2.0)
            kind = "ok" if seg.kind == "ok" else seg.kind
            parts.append(f'<rect class="seg k-{attr(kind)}" x="{x0:.1f}" y="{y + 5}" '
                         f'width="{w:.1f}" height="{row_h - 10}" rx="3" '
                         f'fill="{STATUS_COLORS.get(kind, "#94a3b8")}">'
                         f"<title>{esc(seg.title)}</title></rect>")
        for t, title in row.marks:
            xx = x(t)
            parts.append(f'<path class="mark" d="M{xx:.1f} {y + 3} l5 5 l-5 5 l-5 -5 z">'
                         f"<title>{esc(title)}</title></path>")
    for t, title in tl.events:
        xx = x(t)
        parts.append(f'<line class="event" x1="{xx:.1f}" x2="{xx:.1f}" y1="{top - 4}" '
                     f'y2="{height - 6}"><title>{esc(title)}</title></line>')
    parts.append("</svg>")
    return "".join(parts)


def dag_svg(order: Sequence[str], deps: Mapping[str, Sequence[str]],
            status: Mapping[str, str], *, link: str = "") -> str:
    """The workflow's DAG, in layers by dependency depth, nodes coloured by status."""
    depth: dict[str, int] = {}
    for name in order:
        depth[name] = 1 + max((depth.get(d, 0) for d in deps.get(name, ())), default=-1)
    layers: dict[int, list[str]] = {}
    for name in order:
        layers.setdefault(depth[name], []).append(name)
    node_w, node_h, gap_x, gap_y = 150, 34, 40, 26
    cols = max(len(v) for v in layers.values()) if layers else 1
    width = max(cols * (node_w + gap_x) + gap_x, 300)
    height = len(layers) * (node_h + gap_y) + gap_y
    pos: dict[str, tuple[float, float]] = {}
    for level, names in layers.items():
        row_w = len(names) * node_w + (len(names) - 1) * gap_x
        x0 = (width - row_w) / 2
        for i, name in enumerate(names):
            pos[name] = (x0 + i * (node_w + gap_x), gap_y + level * (node_h + gap_y))
    parts = [f'<svg class="dag" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" role="img" '
             f'aria-label="the workflow\'s steps">']
    for name in order:
        for d in deps.get(name, ()):
            if d in pos:
                (ax, ay), (bx, by) = pos[d], pos[name]
                x1, y1, x2, y2 = ax + node_w / 2, ay + node_h, bx + node_w / 2, by
                mid = (y1 + y2) / 2
                parts.append(f'<path class="edge" d="M{x1:.0f} {y1:.0f} C{x1:.0f} {mid:.0f} '
                             f'{x2:.0f} {mid:.0f} {x2:.0f} {y2 - 4:.0f}"/>')
    for name in order:
        nx, ny = pos[name]
        s = status.get(name, "not_run")
        color = STATUS_COLORS.get(s, "#94a3b8")
        parts.append(f'<g class="node"><rect x="{nx:.0f}" y="{ny:.0f}" width="{node_w}" '
                     f'height="{node_h}" rx="8" stroke="{color}"/>'
                     f'<circle cx="{nx + 14:.0f}" cy="{ny + node_h / 2:.0f}" r="5" '
                     f'fill="{color}"/><text x="{nx + 26:.0f}" y="{ny + node_h / 2 + 4:.0f}">'
                     f"{esc(name[:17])}</text><title>{esc(name)}: {esc(s)}</title></g>")
    parts.append("</svg>")
    return "".join(parts)


def line_chart(series: Mapping[str, Sequence[tuple[float, float]]], *, unit: str = "",
               width: int = 460, height: int = 170) -> str:
    """Lines over time (one per series), for the metrics page."""
    left, bottom, top = 62, 20, 10
    plot_w, plot_h = width - left - 10, height - bottom - top
    points = [p for s in series.values() for p in s]
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img">']
    if not points:
        parts.append(f'<text class="axis" x="{left}" y="{top + 30}">no samples yet</text></svg>')
        return "".join(parts)
    t0, t1 = min(p[0] for p in points), max(p[0] for p in points)
    t1 = max(t1, t0 + 1)
    peak = max(p[1] for p in points)
    scale = _nice_any(peak) if peak > 0 else 1.0
    for i in range(5):
        y = top + plot_h - plot_h * i / 4
        parts.append(f'<line class="gridline" x1="{left}" x2="{width - 10}" y1="{y:.1f}" '
                     f'y2="{y:.1f}"/><text class="axis" x="{left - 6}" y="{y + 4:.1f}" '
                     f'text-anchor="end">{esc(_fmt_unit(scale * i / 4, unit))}</text>')
    palette = ("#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c", "#0891b2")
    for i, (name, pts) in enumerate(series.items()):
        if not pts:
            continue
        coords = " ".join(f"{left + plot_w * (t - t0) / (t1 - t0):.1f},"
                          f"{top + plot_h - plot_h * min(v / scale, 1.0):.1f}" for t, v in pts)
        color = palette[i % len(palette)]
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" '
                     f'points="{coords}"><title>{esc(name)}</title></polyline>')
        parts.append(f'<text class="legend" x="{left + 8 + 120 * i}" y="{top + 12}" '
                     f'fill="{color}">{esc(name[:18])}</text>')
    parts.append(f'<text class="axis" x="{left}" y="{height - 4}">'
                 f"last {esc(fmt_duration(t1 - t0))}</text></svg>")
    return "".join(parts)


def _fmt_unit(v: float, unit: str) -> str:
    if unit == "s":
        return fmt_duration(v) if v else "0"
    return _num(v) + unit


# -- the page ---------------------------------------------------------------------------

NAV = (("/", "Overview"), ("/runs", "Runs"), ("/dead-letters", "Dead letters"),
       ("/tree", "Supervision"), ("/caches", "Caches"), ("/queues", "Queues & schedules"),
       ("/metrics", "Metrics"))


def page(title: str, body: str, *, active: str, csrf: str, data_dir: str, where: str,
         live: str = "", interval: float = 2.0) -> str:
    """The whole document around a page's body."""
    nav = "".join(f'<a href="{href}" class="{"on" if href == active else ""}">{esc(label)}</a>'
                  for href, label in NAV)
    live_attr = f' data-live="{attr(live)}" data-interval="{interval}"' if live else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{attr(csrf)}">
<title>{esc(title)} · zixir</title>
<link rel="stylesheet" href="/static/app.css">
<script src="/static/app.js" defer></script>
</head><body{live_attr}>
<header class="top"><a class="brand" href="/"><span class="logo">z</span>zixir dashboard</a>
<nav>{nav}</nav><span class="where" title="data directory">{esc(data_dir)} · {esc(where)}</span>
</header>
<main><h1>{esc(title)}</h1>
{body}
</main></body></html>"""
