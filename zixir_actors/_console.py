"""Terminal output shared by the command line and the demo: tables, short text, progress.

Both `zixir_actors.cli` and `zixir_actors._demo` import this module; it imports
neither, so the CLI depends on the demo and never the reverse.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["fmt_time", "shorten", "table", "wait_with_progress"]

ELLIPSIS = "…"


def shorten(text: str, width: int) -> str:
    """`text` on one line, at most `width` characters, cut between words.

    Example:
        >>> shorten("resident memory 142299136 B over the limit", 24)
        'resident memory…'
        >>> shorten("short", 24)
        'short'
    """
    line = " ".join(str(text).split())
    if len(line) <= width:
        return line
    room = max(width - len(ELLIPSIS), 1)
    cut = line[:room + 1].rsplit(" ", 1)[0] if " " in line[:room + 1] else line[:room]
    return cut[:room].rstrip(" ,;:") + ELLIPSIS


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """Plain-text table with aligned columns.

    Example:
        >>> print(table([("load", "succeeded")], ("step", "status")))
        step  status
        ----  ---------
        load  succeeded
    """
    cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def fmt_time(ts: float | None) -> str:
    """A local ``YYYY-MM-DD HH:MM:SS`` time, or ``-`` for none."""
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def wait_with_progress(handle: Any, store: Any, total: int, *, quiet: bool) -> Any:
    """Wait for a run, drawing a progress bar on a terminal from its committed checkpoints."""
    from zixir_actors.errors import ZixirTimeoutError

    interactive = sys.stderr.isatty() and not quiet
    while True:
        try:
            result = handle.result(timeout=0.1)
        except ZixirTimeoutError:
            if interactive:
                done = len(store.steps(handle.run_id))
                width = 30
                filled = int(width * done / max(total, 1))
                print(f"\r  [{'#' * filled}{'.' * (width - filled)}] {done}/{total} steps",
                      end="", file=sys.stderr, flush=True)
            continue
        if interactive:
            print("\r" + " " * 60 + "\r", end="", file=sys.stderr, flush=True)
        return result
