"""`Reply`: the future behind a blocking ask through a name, on one plain lock.

Pykka's `ThreadingFuture` waits on a `threading.Condition`: a Python-level
wait that allocates a lock per waiter and re-takes the condition's lock when
woken. A blocking `NamedRef.ask` has one waiter and one answer, so a lock held
from birth and released by the answer does the same job: the answering actor
releases it, the asker's `acquire` returns. It never leaves the package (a
non-blocking ask still returns Pykka's future), and it honours what actors and
inboxes do with a reply: `set`, `set_exception` (with or without `exc_info`),
and `queue.Full` for a second answer (say an actor's late reply after `kill`
answered it).
"""

from __future__ import annotations

import _thread
import queue
import sys
from typing import Any

import pykka

__all__ = ["Reply"]


class Reply(pykka.Future[Any]):
    """A one-shot future: the first `set` or `set_exception` wins, `get` waits for it."""

    def __init__(self) -> None:
        # pykka.Future.__init__ only prepares get hooks, which a Reply never has.
        self._get_hook = None
        self._done = _thread.allocate_lock()
        self._done.acquire()
        self._claim = [None]  # list.pop is atomic: the first setter takes it
        self._value: Any = None
        self._exc_info: Any = None
        self.target: pykka.ActorRef[Any] | None = None
        """The actor the message was put in the inbox of (set by whoever put it there)."""

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to `timeout` seconds (``None``: no limit) for the answer; True once it came."""
        done = self._done
        if not done.acquire(True, -1 if timeout is None else max(0.0, timeout)):
            return False
        done.release()  # answered for good: later waits return at once
        return True

    def get(self, *, timeout: float | None = None) -> Any:
        """The answer, waiting up to `timeout` seconds (``None``: no limit).

        Raises:
            pykka.Timeout: no answer in time.
            Exception: the exception the answer carries.
        """
        if not self.wait(timeout):
            raise pykka.Timeout(f"{timeout} seconds")
        return self.result()

    def result(self) -> Any:
        """The answer that came (call after `wait` returned True).

        Raises:
            Exception: the exception the answer carries.
        """
        exc_info = self._exc_info
        if exc_info is None:
            return self._value
        exc_type, exc_value, exc_traceback = exc_info
        if exc_value is None:
            exc_value = exc_type()
        if exc_value.__traceback__ is not exc_traceback:
            raise exc_value.with_traceback(exc_traceback)
        raise exc_value

    def _take(self) -> None:
        try:
            self._claim.pop()
        except IndexError:
            raise queue.Full from None

    def set(self, value: Any | None = None) -> None:
        self._take()
        self._value = value
        self._done.release()

    def set_exception(self, exc_info: Any = None) -> None:
        self._take()
        self._exc_info = sys.exc_info() if exc_info is None else exc_info
        self._done.release()

    def set_get_hook(self, func: Any) -> None:
        raise NotImplementedError("a Reply is answered by set() or set_exception() only")
