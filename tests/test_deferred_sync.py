"""A checkpoint's fsync left under way while the engine does its bookkeeping.

A lone DAG worker commits a step's checkpoint, starts its fsync
(`SharedEnv.start_sync`) and records the step and picks the next one while
the disk writes; the fsync is waited for before any step runs on that output,
before more workers start, and before the run ends. These tests hold that
rule, the store's group commit around a pending fsync, and a failing fsync.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from zixir_actors import _lmdb
from zixir_actors.checkpoint import CheckpointClient, PendingSync, StepCheckpoint, open_store
from zixir_actors.errors import StoreError
from zixir_actors.workflow import Step, Workflow


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CheckpointClient]:
    with open_store(tmp_path) as client:
        yield client


def checkpoint(run_id: str, step: str, output: Any = None) -> StepCheckpoint:
    return StepCheckpoint(run_id, step, output, "code", "inputs", 1, 0.1, 0.0, f"{run_id}/{step}")


def save(store: CheckpointClient, run_id: str, step: str, *, defer: bool) -> PendingSync | None:
    return store.save_step_fields(run_id, step, step.upper(), "code", "inputs", 1, 0.1, 0.0,
                                  f"{run_id}/{step}", defer_sync=defer)


class SyncLedger:
    """Every fsync the store left pending, and whether it was waited for."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.lock = threading.Lock()
        self.pending: dict[int, str] = {}  # id(PendingSync) -> step, until waited for
        self.deferred = 0
        real_save = CheckpointClient.save_step_fields
        real_wait = PendingSync.wait
        ledger = self

        def save_step_fields(client: CheckpointClient, run_id: str, step: str, *args: Any,
                             **kwargs: Any) -> PendingSync | None:
            sync = real_save(client, run_id, step, *args, **kwargs)
            if sync is not None:
                with ledger.lock:
                    ledger.pending[id(sync)] = step
                    ledger.deferred += 1
            return sync

        def wait(sync: PendingSync) -> None:
            try:
                real_wait(sync)
            finally:
                with ledger.lock:
                    ledger.pending.pop(id(sync), None)

        monkeypatch.setattr(CheckpointClient, "save_step_fields", save_step_fields)
        monkeypatch.setattr(PendingSync, "wait", wait)

    def unsynced(self) -> list[str]:
        with self.lock:
            return sorted(self.pending.values())


def test_a_deferred_fsync_holds_the_group_commit_until_it_is_waited_for(
        store: CheckpointClient) -> None:
    sync = save(store, "r1", "a", defer=True)
    assert isinstance(sync, PendingSync)
    assert store.get_step("r1", "a").output == "A"  # type: ignore[union-attr]  # committed
    other = threading.Thread(target=store.save_step, args=(checkpoint("r1", "b"),))
    other.start()
    other.join(0.2)  # a bounded look: the next writer waits behind the pending fsync
    assert other.is_alive()
    sync.wait()
    other.join(10)
    assert not other.is_alive()
    assert set(store.steps("r1")) == {"a", "b"}
    sync.wait()  # a second wait does nothing


def test_the_writer_holding_a_deferred_fsync_can_write_again_without_waiting_for_itself(
        store: CheckpointClient) -> None:
    first = save(store, "r2", "a", defer=True)
    assert first is not None
    second = save(store, "r2", "b", defer=True)  # the same thread: its own fsync ends first
    assert second is not None
    second.wait()
    first.wait()
    assert set(store.steps("r2")) == {"a", "b"}


def test_a_store_that_is_not_durable_never_defers(tmp_path: Path) -> None:
    with open_store(tmp_path, durable=False) as fast:
        assert save(fast, "r3", "a", defer=True) is None
        assert fast.get_step("r3", "a") is not None


def test_no_step_runs_before_the_checkpoint_it_reads_is_on_disk(
        store: CheckpointClient, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = SyncLedger(monkeypatch)
    seen: dict[str, list[str]] = {}

    def look(label: str) -> Any:
        def step(**_: Any) -> str:
            seen[label] = ledger.unsynced()
            return label
        return step

    # A chain, then a fan-out (new workers start), a fan-in, and a chain again.
    steps = [Step("a", look("a")), Step("b", look("b"), depends_on=("a",))]
    steps += [Step(f"f{i}", look(f"f{i}"), depends_on=("b",)) for i in range(4)]
    steps += [Step("join", look("join"), depends_on=tuple(f"f{i}" for i in range(4))),
              Step("last", look("last"), depends_on=("join",))]
    result = Workflow("deferred-order", steps).run(store=store)
    assert result.status == "succeeded"
    assert ledger.deferred >= 3  # the chain parts did leave their fsyncs under way
    assert seen == {label: [] for label in seen} and len(seen) == len(steps)
    assert ledger.unsynced() == []  # and the run ended only once all were on disk


def test_a_failing_deferred_fsync_fails_the_run_and_the_store_keeps_working(
        store: CheckpointClient, monkeypatch: pytest.MonkeyPatch) -> None:
    real_sync = _lmdb.SharedEnv.sync
    failures = [0]

    def sync(env: _lmdb.SharedEnv) -> None:
        if threading.current_thread().name.startswith("zixir-wf-") and not failures[0]:
            failures[0] += 1
            raise StoreError("fsync failed: EIO")
        real_sync(env)

    monkeypatch.setattr(_lmdb.SharedEnv, "sync", sync)
    ran: list[str] = []
    wf = Workflow("deferred-fails", [
        Step("a", lambda: ran.append("a")),
        Step("b", lambda a: ran.append("b"), depends_on=("a",)),
    ])
    with pytest.raises(StoreError, match="fsync failed"):  # as for a commit that fails
        wf.run(store=store, run_id="r-fsync")
    assert failures == [1]
    assert ran == ["a"]  # b never ran on an output that may not be on disk
    store.save_step(checkpoint("after", "x"))  # the group commit was handed on
    assert store.get_step("after", "x") is not None
    monkeypatch.undo()
    resumed = wf.resume("r-fsync", store=store)
    assert resumed.status == "succeeded" and ran[-1] == "b"


def test_start_sync_on_a_released_environment_does_nothing(tmp_path: Path) -> None:
    env = _lmdb.open_env(tmp_path)
    env.apply([("t.x", b"k", b"v")])
    env.start_sync()
    env.sync()
    _lmdb.release(env)
    env.start_sync()  # the descriptor is closed with the environment: no error, no write
