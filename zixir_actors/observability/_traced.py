"""`TracedActor`: a supervised actor that opens a span for every message it handles.

Example:
    >>> from zixir_actors.observability import TracedActor, span
    >>> from zixir_actors.testing import capture_spans
    >>> class Summarizer(TracedActor):
    ...     def summarize(self, text: str) -> str:
    ...         return text[:5]
    >>> actor = Summarizer.start()
    >>> with capture_spans() as spans, span("request") as request:
    ...     actor.proxy().summarize("hello world").get(timeout=1.0)
    'hello'
    >>> actor.stop()
    True
    >>> handled = spans.named("Summarizer.summarize")[0]
    >>> handled.parent_id == request.span_id
    True

Propagation itself needs no base class: `supervisors.SupervisedActor` runs
each message in the sender's `contextvars` context, so any span a handler
opens is a child of the sender's current span. `TracedActor` adds a span per
message (named ``"<Class>.<method>"``, or ``"<Class>.on_receive"`` for plain
messages) and closes the spans its thread left open when the actor stops or
crashes, with status ``"error"``.
"""

from __future__ import annotations

from contextvars import ContextVar
from types import TracebackType
from typing import Any, ClassVar

import pykka
from pykka.messages import ProxyCall, ProxyGetAttr, ProxySetAttr, _ActorStop

from supervisors import SupervisedActor
from zixir_actors.observability._tracing import (
    _CURRENT,
    _end_ok,
    _exit,
    _message_span,
    close_open_spans,
)

__all__ = ["TracedActor"]

_THREAD_CONTEXT: ContextVar[bool] = ContextVar("zixir_actor_thread_context", default=False)
"""True in an actor thread's own context; a message context copied from a sender
lacks it (unless the sender was an actor's on_start, which only costs a reset)."""


class TracedActor(SupervisedActor):
    """A `SupervisedActor` that traces each message as a child span of the sender's.

    Class attributes:
        trace_messages: False turns the per-message span off (the stop/crash
            clean-up of open spans stays on).
    """

    trace_messages: ClassVar[bool] = True
    _dispatch_directly: ClassVar[bool] = True
    _span_names: ClassVar[dict[tuple[str, ...] | None, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._span_names = {}
        cls._dispatch_directly = _pykka_dispatch_follows(cls)

    def _handle_receive(self, message: Any) -> Any:
        cls = type(message)
        if cls is ProxyCall:
            key: Any = message.attr_path
        elif cls is _ActorStop or cls is ProxyGetAttr or cls is ProxySetAttr:
            return super()._handle_receive(message)
        else:
            key = None
        if not self.trace_messages:
            return super()._handle_receive(message)
        name = self._span_names.get(key)
        if name is None:
            name = self._span_name(key)
        opened = _message_span(name, _CURRENT.get())
        if _THREAD_CONTEXT.get():
            # Running in the thread's own context (no per-message copy): the
            # span must not outlive the message there, so undo the set.
            opened._token = _CURRENT.set(opened)
            try:
                result = super()._handle_receive(message)
            except BaseException as exc:
                _exit(opened, exc)
                raise
            _exit(opened, None)
            return result
        # SupervisedActor runs each message in a copy of the sender's context,
        # discarded afterwards: no reset needed (it costs about 1 us per ask).
        _CURRENT.set(opened)
        try:
            if self._dispatch_directly:
                # What pykka.Actor._handle_receive does for these two kinds,
                # minus its isinstance ladder and a super() hop: about 2 us
                # less per ask, as measured by benchmarks/bench_observability.
                if key is None:
                    result = self.on_receive(message)
                else:
                    target: Any = self
                    for attr_name in key:
                        target = getattr(target, attr_name)
                    result = target(*message.args, **message.kwargs)
            else:
                result = super()._handle_receive(message)
        except BaseException as exc:
            opened.end(error=exc)
            raise
        _end_ok(opened)
        return result

    def _span_name(self, key: tuple[str, ...] | None) -> str:
        path = ".".join(key) if key is not None else "on_receive"
        name = self._span_names[key] = f"{type(self).__name__}.{path}"
        return name

    def on_stop(self) -> None:
        close_open_spans(reason=f"{self} stopped")
        super().on_stop()

    def on_failure(self, exception_type: type[BaseException] | None,
                   exception_value: BaseException | None,
                   traceback: TracebackType | None) -> None:
        close_open_spans(reason=f"{self} crashed: {exception_value!r}")
        super().on_failure(exception_type, exception_value, traceback)

    def _actor_loop(self) -> None:
        _THREAD_CONTEXT.set(True)
        # The backstop for every other exit (a kill, an on_stop override that
        # skips super()): still in the actor's thread, so its spans are found.
        try:
            super()._actor_loop()
        finally:
            close_open_spans(reason=f"{self} exited")


def _pykka_dispatch_follows(cls: type) -> bool:
    """True if no class after `TracedActor` in `cls`'s MRO overrides `_handle_receive`
    (so dispatching plain messages and proxy calls ourselves skips nothing)."""
    mro = cls.__mro__
    for later in mro[mro.index(TracedActor) + 1:]:
        if "_handle_receive" in vars(later):
            return later is pykka.Actor
    return False


TracedActor._dispatch_directly = _pykka_dispatch_follows(TracedActor)
