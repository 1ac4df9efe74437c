"""What every page of the dashboard shares: the store and services it reads, forms, links."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from zixir_actors.checkpoint import CheckpointClient, RunRecord
from zixir_actors.dashboard._actions import Actions
from zixir_actors.dashboard._data import ACTIVE, Aggregates
from zixir_actors.dashboard._html import attr, esc
from zixir_actors.dashboard._live import MetricsHistory

__all__ = ["PageBase", "letter_href", "run_href", "safe", "waiting_text"]


def run_href(run_id: str) -> str:
    return "/runs/" + quote(run_id, safe="")


def letter_href(letter_id: str) -> str:
    return "/dead-letters/" + quote(letter_id, safe="")


class PageBase:
    """The state the pages read (`Dash` holds it) and the small pieces they share."""

    store: CheckpointClient
    data_dir: Path
    csrf: str
    in_service: bool
    aggregates: Aggregates
    history: MetricsHistory
    actions: Actions
    where: str

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


def safe(fn: Any, default: Any) -> Any:
    try:
        return fn()
    except Exception:
        return default


def waiting_text(waiting: Mapping[str, Any]) -> str:
    from zixir_actors.workflow._durable import describe_waiting

    return describe_waiting(waiting) or "—"
