"""The web dashboard: runs, timelines, dead letters, the supervision tree, caches, metrics.

Example:
    ``zixir dashboard --port 8765`` serves it for a data directory beside the
    services that use it; ``zixir_actors.start(dashboard_port=8765)`` serves
    it from inside a service (as ``zixir.dashboard``, the last child of the
    tree), where resume and retry run the workflows the service defines.

    >>> from zixir_actors.dashboard import child_spec
    >>> child_spec(port=0).name
    'zixir.dashboard'

Pages are rendered on the server (HTML and SVG, no build step, nothing
loaded from a CDN); a few lines of JavaScript refresh the live parts by
short polling. Lists are read from LMDB a page at a time with a cursor.
Loopback only by default; any other address needs a token (``--token`` or
``$ZIXIR_DASHBOARD_TOKEN``), and actions are POSTs with a CSRF token,
refused when they come from another site. Needs the ``dashboard`` extra
(Starlette and uvicorn): ``pip install 'zixir-actors[dashboard]'``.
"""

from __future__ import annotations

from zixir_actors.dashboard._server import (
    DASHBOARD_NAME,
    DEFAULT_HOST,
    DEFAULT_PORT,
    TOKEN_ENV,
    Dashboard,
    DashboardService,
    child_spec,
)

__all__ = [
    "DASHBOARD_NAME",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "TOKEN_ENV",
    "Dashboard",
    "DashboardService",
    "child_spec",
]
