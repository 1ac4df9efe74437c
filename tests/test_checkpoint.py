"""CheckpointStore: LMDB records, group commit, integrity, retention, restarts."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisors import Supervisor, monitor
from zixir_actors import _codec, _lmdb, checkpoint
from zixir_actors.checkpoint import (
    AttemptInfo,
    CheckpointClient,
    CheckpointStore,
    DeadLetter,
    RunRecord,
    StepCheckpoint,
    child_spec,
    connect,
    open_store,
)
from zixir_actors.errors import (
    ConfigError,
    CorruptBlobError,
    DeadLetterNotFoundError,
    NotStartedError,
    RunNotFoundError,
    UnserializableError,
    ZixirTimeoutError,
)
from zixir_actors.testing import FakeClock, wait_for


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(wall=1_000_000.0)


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[CheckpointClient]:
    with open_store(tmp_path, clock=clock) as client:
        yield client


def run(run_id: str, created: float = 0.0, workflow: str = "wf",
        status: str = "succeeded") -> RunRecord:
    return RunRecord(run_id, workflow, status, {"n": 1}, created, created)


def step(run_id: str, name: str, output: object = None) -> StepCheckpoint:
    return StepCheckpoint(run_id, name, output, "code", "input", 1, 0.01, 5.0, f"{run_id}/{name}")


def letter(letter_id: str, run_id: str, step_name: str = "s", created: float = 0.0) -> DeadLetter:
    return DeadLetter(letter_id, run_id, "wf", step_name, {"x": 1}, "ValueError", "bad",
                      "Traceback...", (AttemptInfo(1, 0.0, 0.1, "ValueError", "bad"),), created)


def raw_put(client: CheckpointClient, db: str, key: bytes, value: bytes) -> None:
    env = _lmdb.open_env(client.data_dir)
    try:
        handle = env.db(db)
        env.write(lambda txn: txn.put(key, value, db=handle))
    finally:
        _lmdb.release(env)


def test_step_output_and_done_mark_round_trip(store: CheckpointClient) -> None:
    assert store.get_step("r1", "a") is None
    store.save_step(step("r1", "a", {"rows": [1, 2, 3]}))
    saved = store.get_step("r1", "a")
    assert saved == step("r1", "a", {"rows": [1, 2, 3]})
    assert list(store.steps("r1")) == ["a"]


def test_closures_and_lambdas_round_trip_through_dill(store: CheckpointClient) -> None:
    base = 10
    store.save_step(step("r1", "fn", (lambda x: x + base, {"k": (1, 2)})))
    fn, data = store.get_step("r1", "fn").output  # type: ignore[union-attr]
    assert fn(5) == 15
    assert data == {"k": (1, 2)}


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text() | st.binary()
                    | st.floats(allow_nan=False),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=4),
                    max_leaves=12))
def test_any_plain_value_round_trips(store: CheckpointClient, value: object) -> None:
    store.save_step(step("prop", "s", value))
    assert store.get_step("prop", "s").output == value  # type: ignore[union-attr]


def test_unserializable_output_is_a_typed_error_and_writes_nothing(
        store: CheckpointClient) -> None:
    with pytest.raises(UnserializableError):
        store.save_step(step("r1", "lock", (n for n in range(3))))
    assert store.get_step("r1", "lock") is None


@pytest.mark.parametrize("damage", [
    lambda blob: blob[: len(blob) // 2],
    lambda blob: blob[:-1] + bytes([blob[-1] ^ 0xFF]),
    lambda blob: b"not a zixir blob at all",
    lambda blob: b"",
], ids=["truncated", "bit-flip", "foreign", "empty"])
def test_corrupt_checkpoint_raises_corrupt_blob_error_naming_it(store: CheckpointClient,
                                                                 damage: object) -> None:
    store.save_step(step("r1", "a", "fine"))
    blob = _codec.encode(step("r1", "b", list(range(100))))
    raw_put(store, checkpoint.STEPS_DB, b"r1\x00b", damage(blob))  # type: ignore[operator]
    with pytest.raises(CorruptBlobError) as info:
        store.steps("r1")
    assert "r1/b" in str(info.value)
    with pytest.raises(CorruptBlobError):
        store.get_step("r1", "b")
    assert store.get_step("r1", "a").output == "fine"  # type: ignore[union-attr]


def test_runs_are_listed_oldest_first_and_filtered(store: CheckpointClient) -> None:
    store.save_run(run("b", created=2.0, workflow="etl"))
    store.save_run(run("a", created=1.0, workflow="etl", status="failed"))
    store.save_run(run("c", created=3.0, workflow="other"))
    assert [r.run_id for r in store.list_runs()] == ["a", "b", "c"]
    assert [r.run_id for r in store.list_runs(workflow="etl")] == ["a", "b"]
    assert [r.run_id for r in store.list_runs(status="failed")] == ["a"]
    assert store.get_run("b").workflow == "etl"
    with pytest.raises(RunNotFoundError):
        store.get_run("nope")


def test_delete_run_removes_its_steps_and_dead_letters_only(store: CheckpointClient) -> None:
    for run_id in ("r1", "r2"):
        store.save_run(run(run_id))
        store.save_step(step(run_id, "a"))
        store.save_dead_letter(letter(f"dl-{run_id}", run_id))
    assert store.delete_run("r1") is True
    assert store.find_run("r1") is None
    assert store.steps("r1") == {}
    assert [d.id for d in store.dead_letters()] == ["dl-r2"]
    assert list(store.steps("r2")) == ["a"]
    assert store.delete_run("r1") is False


def test_prune_older_than_keeps_recent_runs(store: CheckpointClient, clock: FakeClock) -> None:
    now = clock.time()
    for i, age in enumerate([100.0, 50.0, 10.0, 1.0]):
        store.save_run(run(f"r{i}", created=now - age))
    assert store.prune(older_than=30.0) == ["r0", "r1"]
    assert [r.run_id for r in store.list_runs()] == ["r2", "r3"]


def test_prune_keep_last_and_both_criteria(store: CheckpointClient, clock: FakeClock) -> None:
    now = clock.time()
    for i in range(6):
        store.save_run(run(f"r{i}", created=now - 100 + i))
    store.save_run(run("live", created=now - 500, status="running"))
    assert store.prune(keep_last=4) == ["r0", "r1"]
    # Old ones go, but the last 3 are kept whatever their age; running runs are spared.
    assert store.prune(older_than=10.0, keep_last=3) == ["r2"]
    assert [r.run_id for r in store.list_runs()] == ["live", "r3", "r4", "r5"]
    assert store.prune(keep_last=0, include_running=True) == ["live", "r3", "r4", "r5"]


@pytest.mark.parametrize("kwargs", [{}, {"older_than": -1.0}, {"keep_last": -2},
                                    {"keep_last": 1.5}])
def test_prune_rejects_bad_retention(store: CheckpointClient, kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        store.prune(**kwargs)  # type: ignore[arg-type]


def test_dead_letters_are_persisted_listed_and_deleted(store: CheckpointClient) -> None:
    store.save_dead_letter(letter("d2", "r1", created=2.0))
    store.save_dead_letter(letter("d1", "r2", created=1.0), run=run("r2", status="failed"))
    assert [d.id for d in store.dead_letters()] == ["d1", "d2"]
    assert [d.id for d in store.dead_letters(run_id="r1")] == ["d2"]
    assert store.get_run("r2").status == "failed"
    assert store.get_dead_letter("d1").attempts[0].error_type == "ValueError"
    assert store.count_dead_letters() == 2
    assert store.delete_dead_letter("d1") is True
    assert store.delete_dead_letter("d1") is False
    with pytest.raises(DeadLetterNotFoundError):
        store.get_dead_letter("d1")


def test_a_step_success_resolves_its_dead_letters_in_the_same_commit(
        store: CheckpointClient) -> None:
    store.save_dead_letter(letter("d1", "r1", "a"))
    store.save_step(step("r1", "a", 1), resolve_letters=["d1"])
    assert store.dead_letters() == []
    assert store.get_step("r1", "a") is not None


def test_bad_keys_are_rejected_before_writing(store: CheckpointClient) -> None:
    with pytest.raises(ConfigError):
        store.save_step(step("r\x001", "a"))
    with pytest.raises(ConfigError):
        store.save_run(run("x" * 600))


def _block_first_commit(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event,
                                                                   threading.Event, list[int]]:
    entered, release = threading.Event(), threading.Event()
    commits: list[int] = []
    real_apply = checkpoint._apply

    def apply(env: object, txn: object, batch: list[object]) -> None:
        commits.append(len(batch))
        if len(commits) == 1:
            entered.set()
            release.wait(10)
        real_apply(env, txn, batch)  # type: ignore[arg-type]

    monkeypatch.setattr(checkpoint, "_apply", apply)
    return entered, release, commits


def test_concurrent_writes_share_one_commit(store: CheckpointClient,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    entered, release, commits = _block_first_commit(monkeypatch)
    leader = threading.Thread(target=store.save_step, args=(step("g", "lead"),))
    leader.start()
    assert entered.wait(5)
    followers = [threading.Thread(target=store.save_step, args=(step("g", f"f{i}"),))
                 for i in range(5)]
    for t in followers:
        t.start()
    channel = store._get_channel()
    wait_for(lambda: len(channel.pending) == 5, timeout=5)
    release.set()
    for t in [leader, *followers]:
        t.join(5)
    assert commits == [1, 5]  # the five waiting writes were committed together
    assert len(store.steps("g")) == 6


def test_a_write_that_waits_too_long_is_withdrawn(store: CheckpointClient,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    entered, release, _ = _block_first_commit(monkeypatch)
    leader = threading.Thread(target=store.save_step, args=(step("t", "lead"),))
    leader.start()
    assert entered.wait(5)
    with pytest.raises(ZixirTimeoutError):
        store.save_step(step("t", "late"), timeout=0.05)
    release.set()
    leader.join(5)
    assert list(store.steps("t")) == ["lead"]


def test_many_threads_write_and_everything_is_stored(store: CheckpointClient) -> None:
    def writer(n: int) -> None:
        for i in range(20):
            store.save_step(step("many", f"t{n}_{i}", i))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(store.steps("many")) == 160


def test_data_survives_the_store_stopping_and_reopening(tmp_path: Path) -> None:
    with open_store(tmp_path) as first:
        first.save_run(run("keep"))
        first.save_step(step("keep", "a", [1, 2]))
    with open_store(tmp_path) as second:
        assert second.get_step("keep", "a").output == [1, 2]  # type: ignore[union-attr]
        assert second.get_run("keep").status == "succeeded"


def test_connect_without_a_running_store_raises_not_started() -> None:
    with pytest.raises(NotStartedError) as info:
        connect().list_runs()
    assert info.value.service == "zixir.store"


def test_client_follows_the_store_across_a_supervised_restart(tmp_path: Path) -> None:
    sup = Supervisor.start_link([child_spec(tmp_path)])
    try:
        store = connect()
        store.save_run(run("before"))
        old = sup.which_children()[0].ref
        down = monitor(old)
        with pytest.raises(TypeError):
            old.ask("not a message", timeout=5)  # let it crash: the supervisor restarts it
        assert down.wait(timeout=5).reason is not None
        wait_for(lambda: sup.which_children()[0].ref not in (None, old), timeout=5)
        store.save_run(run("after"))
        assert [r.run_id for r in store.list_runs()] == ["after", "before"]
    finally:
        sup.stop()


def test_child_spec_registers_the_store_name(tmp_path: Path) -> None:
    spec = child_spec(tmp_path)
    assert spec.name == "zixir.store"
    assert spec.start is CheckpointStore
    assert spec.kwargs["data_dir"] == tmp_path


def test_unknown_message_to_store_is_a_type_error(tmp_path: Path) -> None:
    ref = CheckpointStore.start(data_dir=tmp_path)
    try:
        with pytest.raises(TypeError):
            ref.ask(42, timeout=5)
    finally:
        if ref.is_alive():
            ref.stop()


def test_a_full_map_grows_instead_of_failing(tmp_path: Path) -> None:
    with open_store(tmp_path, map_size=256 * 1024, durable=False) as small:
        for i in range(40):
            small.save_step(step("big", f"s{i}", b"x" * 50_000))
        assert len(small.steps("big")) == 40
        assert small.get_step("big", "s39").output == b"x" * 50_000  # type: ignore[union-attr]
