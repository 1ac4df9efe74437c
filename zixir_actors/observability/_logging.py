"""Logging: loguru's `logger`, and `configure_logging` for JSON lines or human output.

Example:
    >>> import io
    >>> from zixir_actors.observability import configure_logging, logger, span
    >>> out = io.StringIO()
    >>> handler = configure_logging(json=True, level="INFO", sink=out, replace_default=False)
    >>> with span("step"):
    ...     logger.bind(run_id="r1").info("step done")
    >>> '"run_id":"r1"' in out.getvalue() and '"trace_id":' in out.getvalue()
    True
    >>> reset_logging()

Importing this module adds no sink: the library only logs, the application
decides where logs go by calling `configure_logging` once (calling it again
replaces the previous configuration, it never duplicates lines).

Quiet by default: the library's own loggers (`LIBRARY_LOGGERS`: every module
of ``supervisors`` and ``zixir_actors``) are disabled when the packages are
imported (loguru's ``logger.disable``, which removes no sink), so a program
that merely imports them prints nothing, not even to loguru's default stderr
sink. `configure_logging` turns them on; an application with loguru sinks of
its own calls ``logger.enable("zixir_actors")`` and ``logger.enable("supervisors")``.

Safe by default: a crash is one compact record (message, and the bound fields
``error_type``, ``error``, ``where`` and ``traceback`` with the plain traceback
text) with no exception object attached, so no sink ever prints the values of
local variables (API keys, prompts, user data) unless `configure_logging` was
called with ``diagnose=True``.
"""

from __future__ import annotations

import contextlib
import json as _json
import math
import sys
import threading
import traceback
from collections.abc import Iterator
from datetime import timezone
from typing import Any, Literal

from loguru import logger

from supervisors import set_crash_diagnose
from zixir_actors.errors import ConfigError
from zixir_actors.observability._tracing import _CURRENT

__all__ = [
    "JSON_FIELDS",
    "LIBRARY_LOGGERS",
    "configure_logging",
    "format_json",
    "logger",
    "reset_logging",
]

JSON_FIELDS: tuple[str, ...] = (
    "time", "level", "message", "logger", "module", "function", "line",
    "thread", "process", "trace_id", "span_id", "exception",
)
"""The fixed keys of a JSON log line; bound fields (`logger.bind(...)`) follow them.
A bound field whose name is one of these appears under ``"extra"`` instead."""

LIBRARY_LOGGERS: tuple[str, ...] = ("supervisors", "zixir_actors")
"""The loguru logger names of the library: disabled on import, enabled by `configure_logging`."""

_RUN_FIELDS = ("workflow", "run_id", "step")
"""Fields that name the run a line is about: copied from the step's span, shown first."""

_CRASH_FIELDS = ("trace_id", "span_id", "traceback", "error_type", "error", "where", "reason")

LoggingMode = Literal["json", "human"]

_LOCK = threading.Lock()
_HANDLERS: list[int] = []
_configured = False
_captures = 0
_HUMAN = ("<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <8}</level> | "
          "<cyan>{name}</cyan>:<cyan>{function}</cyan>:<cyan>{line}</cyan> | "
          "<level>{message}</level>")


def _patch_trace(record: Any) -> None:
    # Runs where the log call is made, so the ids are right even when the
    # sink formats later in another thread (enqueue=True).
    extra = record["extra"]
    if "trace_id" not in extra:
        current = _CURRENT.get()
        if current is not None:
            extra["trace_id"] = current.trace_id
            extra["span_id"] = current.span_id
            # Work done for a workflow step (a sandboxed call, a cache, a stream
            # stage) runs in the step's span: its lines name the step and run too.
            attributes = current.attributes
            for key in _RUN_FIELDS:
                if key in attributes and key not in extra:
                    extra[key] = attributes[key]


def format_json(record: Any) -> str:
    """The JSON line (no newline) for one loguru record; what JSON mode writes.

    Keys: `JSON_FIELDS` (trace and span ids are null outside a span; the
    exception is null or ``{"type", "message", "traceback"}``), then every
    bound field. Values JSON cannot encode are written as their `repr`.
    """
    extra = dict(record["extra"])
    trace_id = extra.pop("trace_id", None)
    span_id = extra.pop("span_id", None)
    if trace_id is None:
        current = _CURRENT.get()
        if current is not None:
            trace_id, span_id = current.trace_id, current.span_id
    exception = None
    if record["exception"] is not None:
        exc_type, exc_value, exc_tb = record["exception"]
        exception = {
            "type": exc_type.__qualname__ if exc_type else None,
            "message": str(exc_value) if exc_value is not None else "",
            "traceback": "".join(traceback.format_exception(exc_type, exc_value, exc_tb)),
        }
    line: dict[str, Any] = {
        "time": record["time"].astimezone(timezone.utc).isoformat(timespec="microseconds")
        .replace("+00:00", "Z"),
        "level": record["level"].name,
        "message": record["message"],
        "logger": record["name"],
        "module": record["module"],
        "function": record["function"],
        "line": record["line"],
        "thread": record["thread"].name,
        "process": record["process"].id,
        "trace_id": trace_id,
        "span_id": span_id,
        "exception": exception,
    }
    clashes = {}
    for key, value in extra.items():
        if key in line:
            clashes[key] = value
        else:
            line[key] = value
    if clashes:
        line["extra"] = clashes
    return _json.dumps(line, default=repr, separators=(",", ":"), ensure_ascii=False)


def _json_format(record: Any) -> str:
    # loguru formats the returned template with the record: hand it the finished
    # line through `extra` so braces in messages are never interpreted.
    record["extra"]["_zixir_json"] = format_json(record)
    return "{extra[_zixir_json]}\n"


def _human_value(value: Any) -> Any:
    """Floats rounded for reading (4 significant digits; whole-ish above 1000)."""
    if isinstance(value, float) and math.isfinite(value) and value != 0:
        return f"{value:.1f}" if abs(value) >= 1000 else f"{value:.4g}"
    return value


def _human_format(record: Any) -> str:
    template = _HUMAN
    extra = record["extra"]
    trace_id = extra.get("trace_id")
    if trace_id is None and _CURRENT.get() is not None:
        trace_id = _CURRENT.get().trace_id  # type: ignore[union-attr]
    # A crash report's message already says its type, message and where.
    hidden = _CRASH_FIELDS if isinstance(extra.get("traceback"), str) else ("trace_id", "span_id")
    fields = [k for k in extra if k not in hidden and not k.startswith("_")]
    # The workflow, run and step first: what a reader looks for.
    fields.sort(key=lambda k: _RUN_FIELDS.index(k) if k in _RUN_FIELDS else len(_RUN_FIELDS))
    if fields:
        # Finished text handed through `extra`, so braces in values are never interpreted.
        extra["_zixir_fields"] = " ".join(f"{k}={_human_value(extra[k])}" for k in fields)
        template += " <dim>{extra[_zixir_fields]}</dim>"
    if trace_id is not None:
        template += f" <dim>trace={trace_id[:16]}</dim>"
    if isinstance(extra.get("traceback"), str):  # a crash report: its text below the line
        return template + "\n{extra[traceback]}{exception}"
    return template + "\n{exception}"


def configure_logging(json: bool = True, level: str | int = "INFO", sink: Any = None,
                      *, colorize: bool | None = None, enqueue: bool = False,
                      replace_default: bool = True, diagnose: bool = False) -> int:
    """Send logs to `sink` as JSON lines (or human-readable text); idempotent.

    Example:
        >>> import sys
        >>> configure_logging(json=False, level="DEBUG", sink=sys.stdout)  # doctest: +SKIP

    Args:
        json: True for one JSON object per line (see `format_json`), False for
            colored human-readable lines.
        level: the minimum level (``"DEBUG"``, ``"INFO"``, ..., or a number).
        sink: anything loguru accepts: a file object, a path, a callable;
            default `sys.stderr`.
        colorize: force colors on or off in human mode (default: if a terminal).
        enqueue: format and write in a background thread (loguru's `enqueue`).
        replace_default: also remove loguru's own default stderr handler, so
            lines are not printed twice.
        diagnose: show the values of local variables in crash tracebacks
            (loguru's ``diagnose``, human mode and your own loguru sinks). Off
            by default: those values may be API keys, prompts or user data.

    The library's loggers (`LIBRARY_LOGGERS`) are enabled from here on.

    Returns:
        The loguru handler id (removed again by the next `configure_logging`
        or `reset_logging`).

    Raises:
        ConfigError: `level` is not a loguru level.
    """
    try:
        if isinstance(level, str):
            logger.level(level)
    except ValueError as exc:
        raise ConfigError("level", level, "not a loguru level") from exc
    global _configured
    with _LOCK:
        _remove_ours()
        _configured = True
        _sync_activation()
        set_crash_diagnose(diagnose)
        if replace_default:
            with contextlib.suppress(ValueError):
                logger.remove(0)
        logger.configure(patcher=_patch_trace)
        handler = logger.add(
            sys.stderr if sink is None else sink,
            level=level,
            format=_json_format if json else _human_format,
            colorize=False if json else colorize,
            enqueue=enqueue,
            backtrace=False,
            diagnose=diagnose,
        )
        _HANDLERS.append(handler)
        return handler


def reset_logging() -> None:
    """Remove the handler `configure_logging` added (loguru's default is not restored)
    and make the library quiet again, as after import."""
    global _configured
    with _LOCK:
        _remove_ours()
        logger.configure(patcher=None)
        _configured = False
        _sync_activation()
        set_crash_diagnose(False)


@contextlib.contextmanager
def library_logs() -> Iterator[None]:
    """Enable the library's loggers inside the block (`capture_logs` uses it);
    afterwards they are as `configure_logging` / `reset_logging` left them."""
    global _captures
    with _LOCK:
        _captures += 1
        _sync_activation()
    try:
        yield
    finally:
        with _LOCK:
            _captures -= 1
            _sync_activation()


def _sync_activation() -> None:
    on = _configured or _captures > 0
    for name in LIBRARY_LOGGERS:
        if on:
            logger.enable(name)
        else:
            logger.disable(name)


def _remove_ours() -> None:
    while _HANDLERS:
        with contextlib.suppress(ValueError):  # already removed by the application
            logger.remove(_HANDLERS.pop())
