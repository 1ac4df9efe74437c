"""The benchmark harness's own helpers (the figures themselves are in `benchmarks/`)."""

from __future__ import annotations

import os
import threading

import pytest

from benchmarks._harness import one_cpu

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs sched_setaffinity and two CPUs to pin to one")


def _affinity_of(thread: threading.Thread) -> set[int]:
    assert thread.native_id is not None
    return os.sched_getaffinity(thread.native_id)


def test_one_cpu_pins_every_thread_and_the_ones_they_start_then_restores_them() -> None:
    before = os.sched_getaffinity(0)
    release = threading.Event()
    started = threading.Event()
    older = threading.Thread(target=lambda: (started.set(), release.wait(30)))
    older.start()
    assert started.wait(30)
    inside: list[threading.Thread] = []
    try:
        with one_cpu() as note:
            assert "one CPU" in note
            newer = threading.Thread(target=release.wait, args=(30,))
            newer.start()
            inside.append(newer)
            for thread in (threading.current_thread(), older, newer):
                assert _affinity_of(thread) == {min(before)}
        for thread in (threading.current_thread(), older, newer):
            assert _affinity_of(thread) == before
    finally:
        release.set()
        older.join(30)
        for thread in inside:
            thread.join(30)
