"""Shared fixtures: every test must leave no actor, thread or child process behind."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import psutil
import pykka
import pytest

from zixir_actors.observability import open_spans

LEAK_GRACE = 5.0
"""How long a test's threads and processes get to finish after it returns."""

PROCESS_WIDE_THREADS: tuple[str, ...] = ("asyncio_", "zixir-loop")
"""Name prefixes of threads that live for the whole process by design (the
default executor of asyncio.run is shut down by it, but its idle workers may
linger a moment), and the shared event loop of async bodies and steps
(``zixir-loop``: lives for the process unless `zixir_actors.stop()` closes it)."""


def _live_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.is_alive()}


def _session_wide(process: psutil.Process) -> bool:
    # A local Ray cluster started once per test session (tests of the `ray`
    # executor) spawns and reaps its own workers; they are not leaks of a test.
    try:
        name = process.name()
        cmdline = " ".join(process.cmdline()[:3])
    except psutil.Error:
        return False
    return name.startswith(("raylet", "gcs_server", "ray::")) or "ray/" in cmdline \
        or "ray::" in cmdline


def _children() -> set[int]:
    found = set()
    try:
        for p in psutil.Process().children(recursive=True):
            try:
                if p.status() != psutil.STATUS_ZOMBIE and not _session_wide(p):
                    found.add(p.pid)
            except psutil.Error:
                continue
    except psutil.Error:
        pass
    return found


def _settle(check: callable, grace: float) -> object:  # type: ignore[valid-type]
    # Threads and processes take a moment to exit after their stop is
    # confirmed; poll briefly, this is the one place no event exists.
    deadline = time.monotonic() + grace
    while True:
        left = check()
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.01)


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail a test that leaves actors, threads or child processes running, or spans open."""
    threads_before = _live_threads()
    children_before = _children()
    spans_before = {id(opened) for opened in open_spans()}
    yield
    actors = _settle(pykka.ActorRegistry.get_all, LEAK_GRACE)
    threads = _settle(lambda: {t for t in _live_threads() - threads_before
                               if not t.name.startswith(PROCESS_WIDE_THREADS)},
                      LEAK_GRACE)
    children = _settle(lambda: _children() - children_before, LEAK_GRACE)
    # A span left open stays in the process's open spans: a later test's
    # `close_open_spans` would find it there.
    spans = _settle(lambda: [s for s in open_spans() if id(s) not in spans_before], LEAK_GRACE)
    problems = []
    if spans:
        problems.append(f"spans left open: {sorted(s.name for s in spans)}")  # type: ignore[union-attr]
        for opened in spans:  # type: ignore[union-attr]
            opened.end(status="error")
    if actors:
        problems.append(f"actors left running: {actors}")
        pykka.ActorRegistry.stop_all(block=True, timeout=5)
    if threads:
        problems.append(f"threads left running: {sorted(t.name for t in threads)}")  # type: ignore[union-attr]
    if children:
        problems.append(f"child processes left running: {sorted(children)}")  # type: ignore[arg-type]
        for pid in children:  # type: ignore[union-attr]
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()
    try:
        from supervisors import _registry
        _registry.reset()
    except ImportError:
        pass
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)
