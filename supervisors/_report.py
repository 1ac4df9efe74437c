"""Crash reports: what a log record says about an exception, cheaply and safely.

A crash report is one log record per crash with bound fields
``error_type``, ``error`` (the message), ``where`` (``file:line in function``
of the innermost frame) and ``traceback`` (the plain traceback text). No
exception object is attached to the record, so a loguru sink with
``diagnose=True`` (loguru's default for `logger.add` and for its own stderr
sink) never prints the values of local variables: those hold API keys,
prompts and user data. `set_crash_diagnose(True)` attaches the exception
again, for sinks that should show the values (a debugging session).

The fields are built by a loguru patcher, which runs only when some sink
takes the record: a crash that nobody logs costs a few microseconds.
"""

from __future__ import annotations

import linecache
import os
import sys
import traceback
from types import CodeType, TracebackType
from typing import Any

import pykka
from loguru import logger

__all__ = ["crash_fields", "log_crash", "quiet", "set_crash_diagnose", "where"]

_diagnose = False
_PYKKA_DIR = os.path.dirname(pykka.__file__) + os.sep
_loop_codes: set[int] = set()
"""ids of the actor loop's code objects (hashing a code object hashes its
bytecode): a traceback is shown from below them."""


def set_crash_diagnose(enabled: bool) -> bool:
    """Attach the exception itself to crash reports (off by default); returns the previous value.

    Example:
        >>> from supervisors import set_crash_diagnose
        >>> previous = set_crash_diagnose(False)

    With it on, a loguru sink added with ``diagnose=True`` prints the value
    of every local variable of the crashed frames: turn it on only where logs
    may hold secrets. `zixir_actors.observability.configure_logging(diagnose=True)`
    turns it on together with its sink's ``diagnose``.
    """
    global _diagnose
    previous, _diagnose = _diagnose, bool(enabled)
    return previous


def register_loop_code(*codes: CodeType) -> None:
    """Frames of these code objects (the actor loop) and above are left out of reports."""
    _loop_codes.update(id(code) for code in codes)


def _user_tb(tb: TracebackType | None) -> TracebackType | None:
    # The crash's traceback starts in the actor loop; an asker that re-raised the
    # same exception object may have put its own frames in front meanwhile.
    # Show the frames below the loop (and below pykka's dispatch) only.
    start = tb
    node = tb
    while node is not None:
        if id(node.tb_frame.f_code) in _loop_codes:
            start = node.tb_next
        node = node.tb_next
    while start is not None and start.tb_frame.f_code.co_filename.startswith(_PYKKA_DIR) \
            and start.tb_next is not None:
        start = start.tb_next
    return start


def where(exc: BaseException) -> str:
    """``file:line in function`` of the frame that raised `exc` (``"?"`` if unknown)."""
    tb = exc.__traceback__
    if tb is None:
        return "?"
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    return f"{code.co_filename}:{tb.tb_lineno} in {code.co_name}"


def crash_fields(exc: BaseException) -> dict[str, Any]:
    """The fields of a crash report: ``error_type``, ``error``, ``where``, ``traceback``."""
    fields: dict[str, Any] = {
        "error_type": type(exc).__qualname__,
        "error": str(exc),
        "where": where(exc),
    }
    if not _diagnose:  # with diagnose on, the attached exception carries it
        lines: list[str] = []
        _format(exc, _user_tb(exc.__traceback__), lines, set())
        fields["traceback"] = "".join(lines)
    return fields


def _format(exc: BaseException, tb: TracebackType | None, lines: list[str],
            seen: set[int]) -> None:
    """The standard traceback text, without 3.11's column carets (a third of the cost)."""
    seen.add(id(exc))
    cause, context = exc.__cause__, exc.__context__
    if cause is not None and id(cause) not in seen:
        _format(cause, cause.__traceback__, lines, seen)
        lines.append("\nThe above exception was the direct cause of the following exception:\n\n")
    elif context is not None and not exc.__suppress_context__ and id(context) not in seen:
        _format(context, context.__traceback__, lines, seen)
        lines.append("\nDuring handling of the above exception, another exception occurred:\n\n")
    if tb is not None:
        lines.append("Traceback (most recent call last):\n")
    while tb is not None:
        frame = tb.tb_frame
        code = frame.f_code
        lines.append(f'  File "{code.co_filename}", line {tb.tb_lineno}, in {code.co_name}\n')
        source = linecache.getline(code.co_filename, tb.tb_lineno, frame.f_globals).strip()
        if source:
            lines.append(f"    {source}\n")
        tb = tb.tb_next
    lines.extend(_exception_only(exc))


def _exception_only(exc: BaseException) -> list[str]:
    # traceback.format_exception_only builds a TracebackException; the common
    # case (no notes, not a SyntaxError) is one line in the same words.
    cls = type(exc)
    if isinstance(exc, SyntaxError) or getattr(exc, "__notes__", None) is not None:
        return traceback.format_exception_only(cls, exc)
    name = cls.__qualname__
    if cls.__module__ not in ("__main__", "builtins"):
        name = f"{cls.__module__}.{name}"
    try:
        text = str(exc)
    except Exception:
        return traceback.format_exception_only(cls, exc)
    return [f"{name}: {text}\n" if text else f"{name}\n"]


def summary(reason: Any) -> str:
    """One line for an exit reason: ``Type: message at file:line in fn`` or its repr."""
    if isinstance(reason, BaseException):
        text = f"{type(reason).__qualname__}: {reason}" if str(reason) \
            else type(reason).__qualname__
        return f"{text} at {where(reason)}"
    return repr(reason)


class Summary:
    """`summary(reason)`, computed only when a message is formatted (a record is built)."""

    __slots__ = ("reason",)

    def __init__(self, reason: Any) -> None:
        self.reason = reason

    def __format__(self, spec: str) -> str:
        return format(summary(self.reason), spec)

    def __str__(self) -> str:
        return summary(self.reason)


_NOTHING = object()


def _add_crash_fields(record: Any) -> None:
    extra = record["extra"]
    exc = extra.pop("_crash", None)
    reason = extra.pop("_reason", _NOTHING)
    if reason is not _NOTHING:
        extra["reason"] = repr(reason)
    if exc is not None:
        extra.update(crash_fields(exc))


_logger = logger.patch(_add_crash_fields)
"""Runs only for records some sink takes: a disabled logger costs a few microseconds."""

_at_depth = [_logger.opt(depth=d) for d in range(1, 5)]
"""`_logger.opt(depth=d)` for the usual depths, made once (they are immutable)."""


def quiet(depth: int = 0) -> bool:
    """Whether loguru drops, for certain, what the caller (`depth` frames further
    up) logs: no sink at all, or the module disabled (``logger.disable``, as this
    package is until the application enables it).

    It reads loguru's own cached verdict for the module, which loguru replaces
    on every `enable`/`disable`; before loguru has judged the module, or if its
    internals differ, the answer is False and loguru decides as usual. A crash
    report skipped this way costs a fraction of a microsecond instead of
    loguru's frame walk.
    """
    try:
        core = logger._core  # type: ignore[attr-defined]
        if not core.handlers:
            return True
        return core.enabled.get(sys._getframe(depth + 1).f_globals["__name__"]) is False
    except Exception:
        return False


def log_crash(level: str, exc: BaseException | None, message: str, *args: Any,
              depth: int = 0, **fields: Any) -> None:
    """Log one compact record: `message` formatted with `args`, `fields` bound, and,
    when `exc` is given, its crash fields (built only if a sink takes the record).

    A ``_reason`` field becomes ``reason``, its repr (also built only then).
    """
    if quiet(depth + 1):
        return
    if exc is not None and _diagnose:
        options = _logger.opt(exception=exc, depth=depth + 1)
    elif depth < len(_at_depth):
        options = _at_depth[depth]
    else:
        options = _logger.opt(depth=depth + 1)
    # loguru's capture puts the keyword arguments in `extra`; the message only
    # uses positional fields.
    options.log(level, message, *args, _crash=exc, **fields)
