"""The `/metrics` HTTP endpoint: `serve_metrics` and `MetricsServer`.

Example:
    >>> import urllib.request
    >>> from zixir_actors.observability import serve_metrics, stop_metrics_server
    >>> port = serve_metrics(port=0)             # a free port on 127.0.0.1
    >>> with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
    ...     body = response.read()
    >>> stop_metrics_server(port, timeout=5.0)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any
from wsgiref.simple_server import make_server

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler, make_wsgi_app

from zixir_actors.errors import ConfigError, ObservabilityError, ZixirTimeoutError

__all__ = ["MetricsServer", "serve_metrics", "stop_metrics_server"]

_LOCK = threading.Lock()
_SERVERS: dict[int, MetricsServer] = {}


class _Server(ThreadingWSGIServer):
    daemon_threads = True
    # Join request threads on close so stopping leaves no thread behind.
    block_on_close = True


class MetricsServer:
    """An HTTP server for the Prometheus text format on ``/metrics``, in one named thread.

    Example:
        >>> with MetricsServer(port=0) as server:       # doctest: +SKIP
        ...     print(server.url)
        http://127.0.0.1:40123/metrics

    Args:
        port: the TCP port; 0 picks a free one (read `port` after `start`).
        host: the address to bind; loopback by default, so metrics are not
            exposed to the network unless asked for.
        registry: the registry to serve; default the process-wide
            `metrics.registry`.
    """

    def __init__(self, port: int = 0, host: str = "127.0.0.1",
                 registry: CollectorRegistry | None = None) -> None:
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError("port", port, "must be an int from 0 to 65535")
        if registry is None:
            from zixir_actors.observability._metrics import metrics

            registry = metrics.registry
        self.host = host
        self.port = port
        self._registry = registry
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> int:
        """Bind and serve in a background thread; returns the bound port.

        Raises:
            ObservabilityError: the address cannot be bound (port in use...).
        """
        if self._httpd is not None:
            return self.port
        app = _only_metrics(make_wsgi_app(self._registry))
        try:
            httpd = make_server(self.host, self.port, app, _Server, handler_class=_SilentHandler)
        except OSError as exc:
            raise ObservabilityError(
                f"cannot serve metrics on {self.host}:{self.port}: {exc}") from exc
        self._httpd = httpd
        self.port = httpd.server_address[1]
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"zixir-metrics-http-{self.port}", daemon=True)
        self._thread.start()
        return self.port

    def stop(self, *, timeout: float | None = 5.0) -> None:
        """Stop serving, close the socket and join the thread; a no-op if not running.

        Raises:
            ZixirTimeoutError: the server thread did not end within `timeout`.
        """
        httpd, thread = self._httpd, self._thread
        if httpd is None or thread is None:
            return
        httpd.shutdown()  # returns once serve_forever has left its loop (<= poll_interval)
        thread.join(timeout)
        if thread.is_alive():
            raise ZixirTimeoutError(f"stopping the metrics server on port {self.port}", timeout)
        httpd.server_close()
        self._httpd = self._thread = None

    def __enter__(self) -> MetricsServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _only_metrics(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    def metrics_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "/") in ("/", "/metrics"):
            return app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics\n"]
    return metrics_app


def serve_metrics(port: int = 0, host: str = "127.0.0.1", *,
                  registry: CollectorRegistry | None = None) -> int:
    """Serve the process-wide metrics on ``http://{host}:{port}/metrics``; returns the port.

    Example:
        >>> port = serve_metrics()        # doctest: +SKIP
        >>> stop_metrics_server(port)     # doctest: +SKIP

    Args:
        port: the TCP port; 0 (default) picks a free one.
        host: the address to bind, loopback by default.
        registry: what to serve; default `metrics.registry`.

    Raises:
        ConfigError: `port` is out of range.
        ObservabilityError: the address cannot be bound.
    """
    server = MetricsServer(port, host, registry)
    bound = server.start()
    with _LOCK:
        _SERVERS[bound] = server
    return bound


def stop_metrics_server(port: int | None = None, *, timeout: float | None = 5.0) -> None:
    """Stop the server `serve_metrics` started on `port`, or all of them (None).

    Raises:
        ConfigError: no server started by `serve_metrics` runs on `port`.
        ZixirTimeoutError: a server thread did not end within `timeout`.
    """
    with _LOCK:
        if port is None:
            servers = list(_SERVERS.values())
            _SERVERS.clear()
        else:
            server = _SERVERS.pop(port, None)
            if server is None:
                raise ConfigError("port", port, "no metrics server started on it")
            servers = [server]
    deadline = None if timeout is None else time.monotonic() + timeout
    for server in servers:
        server.stop(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
