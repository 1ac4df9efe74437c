"""The benchmark harness's own helpers (the figures themselves are in `benchmarks/`)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from benchmarks._harness import fsync_cpu, one_cpu

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
            assert f"CPU {min(before)}" in note
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


def test_one_cpu_pins_to_the_cpu_asked_for_and_ignores_one_it_may_not_use() -> None:
    before = os.sched_getaffinity(0)
    chosen = max(before)
    with one_cpu(chosen) as note:
        assert os.sched_getaffinity(0) == {chosen}
        assert f"CPU {chosen}" in note
    assert os.sched_getaffinity(0) == before
    with one_cpu(max(before) + 1000):  # not ours: the first allowed one instead
        assert os.sched_getaffinity(0) == {min(before)}
    assert os.sched_getaffinity(0) == before


def test_fsync_cpu_names_an_allowed_cpu_and_leaves_the_affinity_and_directory_as_found(
        tmp_path: Path) -> None:
    before = os.sched_getaffinity(0)
    cpu = fsync_cpu(str(tmp_path), writes=2, rounds=1)
    assert cpu in before
    assert os.sched_getaffinity(0) == before
    assert list(tmp_path.iterdir()) == []  # its probe file is gone
