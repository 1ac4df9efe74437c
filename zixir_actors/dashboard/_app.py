"""The dashboard's web app (Starlette routes) and its guard: token, host and CSRF checks.

Security model:

- Bound to a loopback address without a token, only requests whose ``Host``
  is a loopback name are served (a DNS-rebinding page cannot reach it).
- With a token (required to bind anywhere else), every request must carry it:
  ``Authorization: Bearer T``, the ``zixir_token`` cookie, or ``?token=T``
  once (which sets the cookie, HttpOnly and SameSite=Strict, and redirects
  without it). Anything else gets 401.
- Actions are POSTs, refused with 403 unless they come from the dashboard's
  own pages: ``Sec-Fetch-Site`` (when the browser sends it) must be
  ``same-origin``, ``Origin`` (when sent) must be this server, and the form
  (or the ``X-CSRF-Token`` header) must carry the page's CSRF token.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

from zixir_actors.dashboard._html import esc, page

__all__ = ["COOKIE", "build_app", "is_loopback"]

COOKIE = "zixir_token"
STATIC = Path(__file__).with_name("static")
_STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".svg": "image/svg+xml"}

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or ``localhost``) is this machine only."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def _respond(send: Send, status: int, body: str, *,
                   headers: list[tuple[bytes, bytes]] | None = None) -> None:
    data = body.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/html; charset=utf-8"),
                            (b"content-length", str(len(data)).encode()),
                            (b"cache-control", b"no-store"), *(headers or [])]})
    await send({"type": "http.response.body", "body": data})


_REFUSED = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>{status} · zixir</title><link rel="stylesheet" href="/static/app.css"></head>
<body class="refused"><main class="narrow"><h1>{status} {title}</h1><p>{message}</p>{extra}
</main></body></html>"""


class Guard:
    """ASGI middleware: the token, the Host check and the cross-site checks of POSTs."""

    def __init__(self, app: ASGIApp, *, token: str | None, loopback_only: bool) -> None:
        self.app = app
        self.token = token
        self.loopback_only = loopback_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = _header(scope, b"host") or ""
        hostname = host.rsplit(":", 1)[0] if not host.startswith("[") else \
            host.split("]")[0] + "]"
        if self.token is None and self.loopback_only and not is_loopback(hostname):
            await _respond(send, 403, _REFUSED.format(
                status=403, title="Forbidden", extra="",
                message=f"this dashboard answers only to loopback host names, not {esc(host)}"))
            return
        path = scope.get("path", "")
        if self.token is not None and not path.startswith("/static/") \
                and not await self._authorized(scope, send):
            return
        if scope.get("method") == "POST":
            why = self._cross_site(scope, host)
            if why:
                await _respond(send, 403, _REFUSED.format(
                    status=403, title="Forbidden", extra="",
                    message=f"cross-site request refused: {esc(why)}"))
                return
        await self.app(scope, receive, send)

    async def _authorized(self, scope: Scope, send: Send) -> bool:
        assert self.token is not None
        given: str | None = None
        auth = _header(scope, b"authorization")
        if auth and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        from_query = query.get("token", [None])[0]
        if given is None and from_query is None:
            cookie = SimpleCookie(_header(scope, b"cookie") or "")
            if COOKIE in cookie:
                given = cookie[COOKIE].value
        if given is None:
            given = from_query
        if given is not None and hmac.compare_digest(given.encode(), self.token.encode()):
            if from_query is not None and scope.get("method") == "GET":
                rest = {k: v for k, v in query.items() if k != "token"}
                location = quote(scope.get("path", "/")) + (
                    "?" + urlencode(rest, doseq=True) if rest else "")
                await _respond(send, 303, "", headers=[
                    (b"location", location.encode()),
                    (b"set-cookie", f"{COOKIE}={self.token}; HttpOnly; SameSite=Strict; "
                                    f"Path=/".encode())])
                return False
            return True
        form = ('<form method="get" action="/"><input type="password" name="token" '
                'placeholder="token" autofocus> <button class="btn primary">Open</button></form>')
        await _respond(send, 401, _REFUSED.format(
            status=401, title="Unauthorized", extra=form,
            message="this dashboard needs its token (zixir dashboard --token, or "
                    "ZIXIR_DASHBOARD_TOKEN)." if given is None else "wrong token."),
            headers=[(b"www-authenticate", b'Bearer realm="zixir"')])
        return False

    @staticmethod
    def _cross_site(scope: Scope, host: str) -> str:
        fetch_site = _header(scope, b"sec-fetch-site")
        if fetch_site is not None and fetch_site not in ("same-origin", "none"):
            return f"Sec-Fetch-Site is {fetch_site}"
        origin = _header(scope, b"origin")
        if origin is not None:
            # Host and port only: behind a TLS-terminating proxy the scheme differs.
            netloc = origin.split("://", 1)[-1]
            if origin == "null" or netloc != host:
                return f"Origin {origin} is not this server ({host})"
        return ""


def build_app(dash: Any, *, token: str | None, loopback_only: bool) -> ASGIApp:
    """The Starlette app around a `Dash`, wrapped in its `Guard`."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
    from starlette.routing import Route

    static_cache: dict[str, bytes] = {}

    def render(title: str, body: str, active: str, live: str = "",
               interval: float = 2.0, status: int = 200) -> HTMLResponse:
        return HTMLResponse(page(title, body, active=active, csrf=dash.csrf,
                                 data_dir=str(dash.data_dir), where=dash.where, live=live,
                                 interval=interval), status_code=status,
                            headers={"cache-control": "no-store"})

    def not_found(what: str) -> HTMLResponse:
        return render("Not found", f'<p class="flash bad">{esc(what)}</p>', "", status=404)

    def overview(request: Request) -> Response:
        window = request.query_params.get("window", "24h")
        return render("Overview", dash.overview(window), "/",
                      live="/api/overview?" + urlencode({"window": window}))

    def overview_api(request: Request) -> Response:
        return JSONResponse({"fragments": dash.overview_fragments(
            request.query_params.get("window", "24h"))})

    def runs(request: Request) -> Response:
        return render("Runs", dash.runs(dict(request.query_params)), "/runs")

    def run(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        q = request.query_params
        body = dash.run(run_id, q.get("msg", ""), q.get("ok", "1") == "1")
        if body is None:
            return not_found(f"no stored run {run_id!r}")
        return render(f"Run {run_id[:40]}", body, "/runs",
                      live="/api/run?" + urlencode({"id": run_id}))

    def run_api(request: Request) -> Response:
        record = dash.store.find_run(request.query_params.get("id", ""))
        if record is None:
            return JSONResponse({"error": "no such run"}, status_code=404)
        return JSONResponse({"fragments": dash.run_fragments(record),
                             "status": record.status})

    def letters(request: Request) -> Response:
        return render("Dead letters", dash.dead_letters(dict(request.query_params)),
                      "/dead-letters")

    def letter(request: Request) -> Response:
        letter_id = request.path_params["letter_id"]
        body = dash.dead_letter(letter_id)
        if body is None:
            return not_found(f"no dead letter {letter_id!r}")
        q = request.query_params
        flash = f'<p class="flash {"good" if q.get("ok", "1") == "1" else "bad"}">' \
                f'{esc(q["msg"])}</p>' if q.get("msg") else ""
        return render(f"Dead letter {letter_id[:16]}", flash + body, "/dead-letters")

    def tree(request: Request) -> Response:
        return render("Supervision", dash.tree(), "/tree")

    def caches(request: Request) -> Response:
        return render("Caches", dash.caches(), "/caches")

    def queues(request: Request) -> Response:
        return render("Queues & schedules", dash.queues(), "/queues")

    def metrics_page(request: Request) -> Response:
        return render("Metrics", dash.metrics(), "/metrics", live="/api/metrics")

    def metrics_api(request: Request) -> Response:
        return JSONResponse({"fragments": dash.metrics_fragments()})

    def static(request: Request) -> Response:
        name = request.path_params["name"]
        path = STATIC / name
        if "/" in name or path.suffix not in _STATIC_TYPES or not path.is_file():
            return Response("not found", status_code=404)
        data = static_cache.get(name)
        if data is None:
            data = static_cache[name] = path.read_bytes()
        return Response(data, media_type=_STATIC_TYPES[path.suffix],
                        headers={"cache-control": "max-age=300"})

    async def action(request: Request) -> Response:
        raw = (await request.body()).decode("utf-8", "replace")
        form = {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}
        given = request.headers.get("x-csrf-token") or form.get("_csrf", "")
        if not hmac.compare_digest(given.encode(), dash.csrf.encode()):
            return HTMLResponse(_REFUSED.format(
                status=403, title="Forbidden", extra="",
                message="cross-site request refused: missing or wrong CSRF token"),
                status_code=403)
        name = request.path_params["name"]
        ok, message, target = await run_in_threadpool(_act, dash, name, form)
        if request.headers.get("accept", "").startswith("application/json"):
            return JSONResponse({"ok": ok, "message": message, "next": target},
                                status_code=200 if ok else 409)
        sep = "&" if "?" in target else "?"
        return RedirectResponse(target + sep + urlencode({"msg": message, "ok": int(ok)}),
                                status_code=303)

    routes = [
        Route("/", overview), Route("/api/overview", overview_api),
        Route("/runs", runs), Route("/runs/{run_id:path}", run), Route("/api/run", run_api),
        Route("/dead-letters", letters), Route("/dead-letters/{letter_id:path}", letter),
        Route("/tree", tree), Route("/caches", caches), Route("/queues", queues),
        Route("/metrics", metrics_page), Route("/api/metrics", metrics_api),
        Route("/static/{name}", static),
        Route("/actions/{name}", action, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    return Guard(app, token=token, loopback_only=loopback_only)


def _act(dash: Any, name: str, form: dict[str, str]) -> tuple[bool, str, str]:
    """Run one action; returns (ok, message, where to go next)."""
    from zixir_actors.dashboard._actions import ActionError
    from zixir_actors.dashboard._pages import run_href
    from zixir_actors.errors import ZixirError

    target = form.get("next") or "/"
    if not target.startswith("/") or target[1:2] in ("/", "\\"):  # never off-site
        target = "/"
    actions = dash.actions
    try:
        if name == "resume":
            return True, actions.resume(form["run_id"]), target
        if name == "cancel":
            return True, actions.cancel(form["run_id"]), target
        if name == "send":
            text = form.get("payload", "").strip() or "null"
            try:
                payload = json.loads(text)
            except json.JSONDecodeError as exc:
                return False, f"the payload is not JSON: {exc}", target
            return True, actions.send(form["run_id"], form.get("event", "").strip(),
                                      payload), target
        if name == "retry":
            message, run_id = actions.retry(form["letter_id"])
            return True, message, run_href(run_id)
        if name == "discard":
            return True, actions.discard(form["letter_id"]), target
    except KeyError as exc:
        return False, f"missing form field {exc}", target
    except ActionError as exc:
        return False, str(exc), target
    except ZixirError as exc:
        return False, f"{type(exc).__name__}: {exc}", target
    return False, f"unknown action {name!r}", target


def new_csrf_token() -> str:
    return secrets.token_urlsafe(24)
