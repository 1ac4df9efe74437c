"""`Dashboard`: the web server (uvicorn in a thread of its own) and its supervised actor."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from supervisors import ChildSpec, SupervisedActor
from zixir_actors.errors import ConfigError, DashboardUnavailableError, ZixirTimeoutError

__all__ = ["DASHBOARD_NAME", "DEFAULT_HOST", "DEFAULT_PORT", "TOKEN_ENV", "Dashboard",
           "DashboardService", "child_spec"]

DASHBOARD_NAME = "zixir.dashboard"
"""The registered name of the dashboard actor in the runtime tree."""
DEFAULT_PORT = 8765
DEFAULT_HOST = "127.0.0.1"
TOKEN_ENV = "ZIXIR_DASHBOARD_TOKEN"
"""The environment variable that gives the token when none is passed."""


def _require_web() -> Any:
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise DashboardUnavailableError(exc.name or "starlette") from None
    return uvicorn


class Dashboard:
    """The dashboard of one data directory, served on `host`:`port`.

    Example:
        ``with Dashboard(".zixir", port=0) as dash: print(dash.url)``; or
        ``zixir dashboard`` on the command line; or
        ``zixir_actors.start(dashboard_port=8765)`` inside a service.

    Args:
        data_dir: the data directory (default the running runtime's, else
            ``$ZIXIR_DATA_DIR`` or ``./.zixir``).
        port: TCP port (default 8765; 0 picks a free one, see `port`).
        host: address to bind (default 127.0.0.1). Any address that is not
            loopback needs a `token`.
        token: the secret every request must carry (default
            ``$ZIXIR_DASHBOARD_TOKEN``; None: loopback only, no token).
        store: the `CheckpointClient` to read (default: the runtime's store
            when one runs in this process on `data_dir`, else a private one).
        in_service: whether it is served from the service that runs the
            workflows (default: whether a runtime runs in this process on
            `data_dir`); only changes what the pages say.

    Raises:
        ConfigError: a non-loopback `host` without a token, or a bad port.
        DashboardUnavailableError: the ``dashboard`` extra is not installed.
    """

    def __init__(self, data_dir: str | os.PathLike[str] | None = None, *,
                 port: int = DEFAULT_PORT, host: str = DEFAULT_HOST, token: str | None = None,
                 store: Any = None, in_service: bool | None = None) -> None:
        from zixir_actors.dashboard._app import is_loopback

        _require_web()
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ConfigError("port", port, "invalid port: must be 0..65535")
        token = token if token is not None else (os.environ.get(TOKEN_ENV) or None)
        if not is_loopback(host) and not token:
            raise ConfigError("host", host, "binding beyond loopback needs a token "
                              f"(--token, or ${TOKEN_ENV})")
        self.host = host
        self.token = token
        self._want_port = port
        self._data_dir = data_dir
        self._store = store
        self._in_service = in_service
        self._owned_store: Any = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._dash: Any = None
        self.port: int | None = None
        """The bound port once started."""

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def __enter__(self) -> Dashboard:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _open(self) -> tuple[Any, Path, bool]:
        from zixir_actors.checkpoint import CheckpointClient, CheckpointStore, connect
        from zixir_actors.runtime import current, resolve_data_dir

        runtime = current()
        path = resolve_data_dir(self._data_dir) if self._data_dir is not None else (
            runtime.data_dir if runtime is not None else resolve_data_dir(None))
        in_service = runtime is not None and runtime.data_dir == path
        if self._in_service is not None:
            in_service = self._in_service
        if self._store is not None:
            return self._store, path, in_service
        if in_service:
            return connect(), path, True
        self._owned_store = CheckpointStore.start(data_dir=path)
        return CheckpointClient(self._owned_store), path, False

    def start(self, *, timeout: float | None = 10.0) -> int:
        """Bind and serve in a thread; returns the port.

        Raises:
            ConfigError: the address cannot be bound (in use, not local...).
            ZixirTimeoutError: the server did not start within `timeout`.
        """
        from zixir_actors.dashboard._actions import Actions
        from zixir_actors.dashboard._app import build_app, is_loopback, new_csrf_token
        from zixir_actors.dashboard._data import Aggregates
        from zixir_actors.dashboard._live import MetricsHistory
        from zixir_actors.dashboard._pages import Dash

        if self._thread is not None:
            return self.port or 0
        uvicorn = _require_web()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self._want_port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise ConfigError("port", self._want_port,
                              f"cannot listen on {self.host}:{self._want_port}: "
                              f"{exc.strerror or exc}") from None
        self.port = int(sock.getsockname()[1])
        try:
            store, path, in_service = self._open()
        except BaseException:
            sock.close()
            raise
        history = MetricsHistory()
        dash = Dash(store=store, data_dir=path, csrf=new_csrf_token(), in_service=in_service,
                    aggregates=Aggregates(store), history=history,
                    actions=Actions(store, path),
                    where=f"pid {os.getpid()}" + (" · in service" if in_service else ""))
        self._dash = dash
        app = build_app(dash, token=self.token, loopback_only=is_loopback(self.host))
        ready = threading.Event()

        class _Server(uvicorn.Server):  # type: ignore[misc,name-defined]
            async def startup(self, sockets: Any = None) -> None:
                await super().startup(sockets=sockets)
                ready.set()

        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                loop="asyncio", http="h11", ws="none", log_config=None,
                                timeout_keep_alive=5, timeout_graceful_shutdown=2)
        server = _Server(config)
        self._server = server

        def serve() -> None:
            try:
                server.run(sockets=[sock])
            finally:
                sock.close()
                ready.set()

        self._thread = threading.Thread(target=serve, daemon=True, name="zixir-dashboard")
        self._thread.start()
        history.start()
        if not ready.wait(timeout) or not server.started:
            self.stop()
            raise ZixirTimeoutError("starting the dashboard", timeout)
        return self.port

    def stop(self, *, timeout: float | None = 10.0) -> None:
        """Stop serving and release what it opened. Stopping twice is a no-op."""
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(timeout)
        dash, self._dash = self._dash, None
        if dash is not None:
            dash.history.stop()
            dash.aggregates.stop()
        owned, self._owned_store = self._owned_store, None
        if owned is not None:
            owned.stop(timeout=timeout)


class DashboardService(SupervisedActor):
    """The supervised dashboard of a service (``zixir.dashboard``): a `Dashboard` whose
    store is the runtime's, started with the actor and stopped with it."""

    def __init__(self, *, port: int = DEFAULT_PORT, host: str = DEFAULT_HOST,
                 token: str | None = None) -> None:
        super().__init__()
        from zixir_actors.checkpoint import connect

        store = connect()
        self.dashboard = Dashboard(store.data_dir, port=port, host=host, token=token,
                                   store=store, in_service=True)

    def on_start(self) -> None:
        self.dashboard.start()

    def on_receive(self, message: Any) -> Any:
        if message == "port":
            return self.dashboard.port
        if message == "url":
            return self.dashboard.url
        raise TypeError(f"DashboardService got an unknown message: {message!r}")

    def on_stop(self) -> None:
        self.dashboard.stop()

    def on_failure(self, *args: Any) -> None:
        self.dashboard.stop()


def child_spec(*, port: int = DEFAULT_PORT, host: str = DEFAULT_HOST,
               token: str | None = None) -> ChildSpec:
    """The spec of ``zixir.dashboard`` (the last child of the runtime's tree when asked).

    Example:
        >>> child_spec(port=0).name
        'zixir.dashboard'

    Raises:
        ConfigError: a non-loopback `host` without a token, or a bad port.
    """
    from zixir_actors.dashboard._app import is_loopback

    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ConfigError("port", port, "invalid port: must be 0..65535")
    if not is_loopback(host) and not (token or os.environ.get(TOKEN_ENV)):
        raise ConfigError("host", host, "binding beyond loopback needs a token "
                          f"(dashboard={{'token': ...}}, or ${TOKEN_ENV})")
    return ChildSpec(id="dashboard", start=DashboardService,
                     kwargs={"port": port, "host": host, "token": token},
                     restart="permanent", shutdown=15.0, type="worker", name=DASHBOARD_NAME)
