"""CheckpointStore: LMDB records, group commit, integrity, retention, restarts."""

from __future__ import annotations

import errno
import os
import stat
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _smallfs import fill, small_filesystem
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
    backup_store,
    check_store,
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
    StoreCorruptError,
    StoreError,
    StoreFullError,
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
    # The engine's per-step path checks a key's two parts apart (each is cached)
    # and their sum: each bad form is still refused, and nothing is written.
    for run_id, name in (("r1", "bad\x00step"), ("r1", ""), ("r" * 300, "s" * 300), (7, "a")):
        with pytest.raises(ConfigError):
            store.save_step_fields(run_id, name, 1, "code", "inputs",  # type: ignore[arg-type]
                                   1, 0.1, 0.0, "key")
    assert store.steps("r1") == {}


def _block_first_commit(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event,
                                                                   threading.Event, list[int]]:
    """Hold the first write transaction open; `commits` gets each transaction's write count."""
    entered, release = threading.Event(), threading.Event()
    commits: list[int] = []
    real_apply = _lmdb.SharedEnv.apply

    def apply(env: _lmdb.SharedEnv, ops: list[tuple[str, bytes, bytes | None]], *,
              durable: bool = False) -> None:
        commits.append(0)  # one call, one transaction
        if len(commits) == 1:
            entered.set()
            release.wait(10)
        commits[-1] += len(ops)
        real_apply(env, ops, durable=durable)

    monkeypatch.setattr(_lmdb.SharedEnv, "apply", apply)
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


def test_apply_puts_and_deletes_in_one_commit_and_opens_a_new_database_first(
        tmp_path: Path) -> None:
    env = _lmdb.open_env(tmp_path)
    try:
        env.apply([("t.one", b"a", b"1"), ("t.one", b"b", b"2")], durable=True)
        # "t.two" is not open yet: opening it inside the write transaction
        # would deadlock, so it is opened first, then the whole batch commits.
        env.apply([("t.one", b"a", None), ("t.two", b"c", b"3")])
        with env.read() as txn:
            assert txn.get(b"a", db=env.db("t.one")) is None
            assert bytes(txn.get(b"b", db=env.db("t.one"))) == b"2"
            assert bytes(txn.get(b"c", db=env.db("t.two"))) == b"3"
        env.apply([("t.one", b"missing", None)])  # deleting what is not there is no error
    finally:
        _lmdb.release(env)
    with pytest.raises(StoreError, match="closed"):
        env.apply([("t.one", b"z", b"1")])


def test_apply_grows_a_full_map(tmp_path: Path) -> None:
    env = _lmdb.open_env(tmp_path, map_size=256 * 1024)
    try:
        for i in range(20):
            env.apply([("t.big", i.to_bytes(4, "big"), b"x" * 50_000)])
        with env.read() as txn:
            assert txn.stat(env.db("t.big"))["entries"] == 20
        assert env.env.info()["map_size"] > 256 * 1024
    finally:
        _lmdb.release(env)


def test_a_full_map_grows_instead_of_failing(tmp_path: Path) -> None:
    with open_store(tmp_path, map_size=256 * 1024, durable=False) as small:
        for i in range(40):
            small.save_step(step("big", f"s{i}", b"x" * 50_000))
        assert len(small.steps("big")) == 40
        assert small.get_step("big", "s39").output == b"x" * 50_000  # type: ignore[union-attr]


def test_the_map_grows_under_concurrent_readers_and_writers(tmp_path: Path) -> None:
    # A resize waits for every transaction in flight and holds new ones back
    # (the gate): nothing hangs, fails or is lost while threads read and write.
    with open_store(tmp_path, map_size=256 * 1024, durable=False) as small:
        def writer(n: int) -> None:
            for i in range(12):
                small.save_step(step("grow", f"w{n}_{i}", b"x" * 30_000))
                small.steps("grow")  # a read between writes

        assert _in_threads(writer, 6) == []
        assert len(small.steps("grow")) == 72


def _in_threads(work: Callable[[int], object], count: int) -> list[BaseException]:
    """Run ``work(0)`` ... ``work(count - 1)`` in threads at once; what they raised.

    Fails the test if one is still running a minute later (a hang).
    """
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            work(n)
        except BaseException as exc:  # reported to the caller
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    return errors


# -- hardening: files, full disk, damaged files, quarantine, backup -------------------


def test_data_files_are_created_owner_only(tmp_path: Path) -> None:
    with open_store(tmp_path / "d") as client:
        client.save_run(run("r1"))
    for name in ("data.mdb", "lock.mdb"):
        assert stat.S_IMODE((tmp_path / "d" / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o700


def test_existing_world_readable_data_files_are_made_owner_only(tmp_path: Path) -> None:
    with open_store(tmp_path) as client:
        client.save_run(run("r1"))
    for name in ("data.mdb", "lock.mdb"):
        (tmp_path / name).chmod(0o644)
    with open_store(tmp_path) as client:
        assert client.get_run("r1").run_id == "r1"
    for name in ("data.mdb", "lock.mdb"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name


def test_a_full_disk_is_a_typed_error_and_the_store_recovers_when_space_is_freed(
        tmp_path: Path) -> None:
    with small_filesystem(tmp_path, "4m") as mount_point:
        data_dir = mount_point / "d"
        with open_store(data_dir) as client:
            client.save_run(run("before"))
            filler = fill(mount_point)
            with pytest.raises(StoreFullError) as info:
                for i in range(50):
                    client.save_step(step("r1", f"s{i}", os.urandom(200_000)))
            assert info.value.data_dir == str(data_dir)
            assert info.value.errno == errno.ENOSPC
            assert "disk full" in str(info.value) and str(data_dir) in str(info.value)
            # Concurrent writers sharing one commit each get the error; none hangs.
            errors = _in_threads(lambda n: client.save_step(
                step("r2", f"s{n}", os.urandom(200_000)), timeout=30), 6)
            assert len(errors) == 6 and all(isinstance(e, StoreFullError) for e in errors)
            filler.unlink()
            client.save_step(step("r1", "after", os.urandom(200_000)))
            assert client.get_step("r1", "after") is not None
            assert client.get_run("before").run_id == "before"


def _open_in_child(data_dir: Path) -> subprocess.CompletedProcess[str]:
    code = ("import sys\n"
            "from zixir_actors.checkpoint import open_store\n"
            "from zixir_actors.errors import StoreCorruptError\n"
            "try:\n"
            "    with open_store(sys.argv[1]) as s:\n"
            "        print('opened', len(s.list_runs()))\n"
            "except StoreCorruptError as exc:\n"
            "    print('refused', exc.path, '|', exc.reason)\n")
    return subprocess.run([sys.executable, "-c", code, str(data_dir)], capture_output=True,
                          text=True, timeout=120, check=False)


def _fill_store(data_dir: Path, runs: int = 300) -> None:
    with open_store(data_dir, durable=False) as client:
        for i in range(runs):
            client.save_run(run(f"run-{i:04d}", created=float(i)))
            client.save_step(step(f"run-{i:04d}", "s", "x" * 300))


def test_a_truncated_data_file_is_refused_before_it_is_mapped(tmp_path: Path) -> None:
    _fill_store(tmp_path)
    data = tmp_path / "data.mdb"
    size = data.stat().st_size
    with open(data, "r+b") as f:
        f.truncate(size // 2)
    child = _open_in_child(tmp_path)
    assert child.returncode == 0, child.stderr[-2000:]  # before: killed by SIGBUS
    assert child.stdout.startswith(f"refused {data} |"), child.stdout
    assert "truncated" in child.stdout
    with pytest.raises(StoreCorruptError) as info:
        _lmdb.check_file(str(data))
    assert info.value.path == str(data)


def test_zeroed_meta_pages_are_refused(tmp_path: Path) -> None:
    _fill_store(tmp_path, runs=10)
    data = tmp_path / "data.mdb"
    with open(data, "r+b") as f:
        f.write(b"\0" * 4096)
    child = _open_in_child(tmp_path)
    assert child.returncode == 0, child.stderr[-2000:]
    assert "refused" in child.stdout and "meta page 0" in child.stdout


def _zero_leaf_pages(data: Path) -> list[int]:
    """Zero every leaf page that no meta page points at (not a root); returns their numbers."""
    raw = data.read_bytes()
    page = 4096
    zeroed = []
    for pgno in range(3, len(raw) // page):
        number, _, flags = struct.unpack_from("=QHH", raw, pgno * page)
        if number == pgno and flags & 0x02:
            with open(data, "r+b") as f:
                f.seek(pgno * page)
                f.write(b"\0" * page)
            try:
                _lmdb.check_file(str(data))
                zeroed.append(pgno)
            except StoreCorruptError:  # a root page: put it back
                with open(data, "r+b") as f:
                    f.seek(pgno * page)
                    f.write(raw[pgno * page:(pgno + 1) * page])
    assert zeroed, "no leaf page found"
    return zeroed


def test_check_store_reports_zeroed_pages_without_crashing(tmp_path: Path) -> None:
    _fill_store(tmp_path)
    assert check_store(tmp_path).ok
    zeroed = _zero_leaf_pages(tmp_path / "data.mdb")
    report = check_store(tmp_path)  # LMDB reads the damaged B-tree in a child, not here
    assert not report.ok
    for pgno in zeroed:
        assert f"page {pgno}: header says page 0 (flags 0x0): zeroed or overwritten" \
            in report.problems
    assert any("zixir.steps" in p or "ended the reader" in p for p in report.problems), \
        report.problems


def test_check_store_reports_corrupt_records_and_counts_the_rest(tmp_path: Path) -> None:
    with open_store(tmp_path) as client:
        for i in range(5):
            client.save_run(run(f"r{i}"))
        client.save_step(step("r1", "a", 1))
        raw_put(client, checkpoint.RUNS_DB, b"r3", b"ZX\x01\x00garbage")
        raw_put(client, checkpoint.STEPS_DB, b"r1\x00b", b"junk")
    report = check_store(tmp_path)
    assert report.records[checkpoint.RUNS_DB] == 5
    assert report.records[checkpoint.STEPS_DB] == 2
    assert len(report.problems) == 2
    assert any("zixir.runs 'r3'" in p for p in report.problems)
    assert any("zixir.steps" in p and "r1" in p for p in report.problems)


def test_check_store_without_a_store_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no store"):
        check_store(tmp_path)


def test_backup_of_a_live_store_is_a_consistent_compacted_copy(tmp_path: Path) -> None:
    source = tmp_path / "live"
    with open_store(source, durable=False) as client:
        for i in range(200):
            client.save_step(step("r", f"s{i}", "y" * 2000))
        for i in range(150):  # free pages that a compacted copy leaves out
            client.invalidate("r", [f"s{i}"])
        stop = threading.Event()

        def keep_writing() -> None:
            n = 0
            while not stop.is_set():
                client.save_step(step("w", f"s{n % 50}", n))
                n += 1

        writer = threading.Thread(target=keep_writing)
        writer.start()
        try:
            out = backup_store(source, tmp_path / "copy")
        finally:
            stop.set()
            writer.join(30)
        assert Path(out) == tmp_path / "copy" / "data.mdb"
        assert stat.S_IMODE(Path(out).stat().st_mode) == 0o600
        assert Path(out).stat().st_size < (source / "data.mdb").stat().st_size
    with open_store(tmp_path / "copy") as copy:
        assert sorted(copy.steps("r")) == sorted(f"s{i}" for i in range(150, 200))
    assert check_store(tmp_path / "copy").ok
    with pytest.raises(StoreError, match="not an empty directory"):
        backup_store(source, tmp_path / "copy")


def test_a_corrupt_run_header_is_quarantined_listed_and_deletable(
        store: CheckpointClient) -> None:
    store.save_run(run("good-1", created=1.0))
    store.save_run(run("bad", created=2.0, status="running"))
    store.save_run(run("good-2", created=3.0))
    store.save_step(step("bad", "a", 1))
    store.save_dead_letter(letter("L1", "bad"))
    blob = _codec.encode(run("bad"))
    raw_put(store, checkpoint.RUNS_DB, b"bad", blob[: len(blob) // 2])
    runs = store.list_runs()
    assert [(r.run_id, r.status) for r in runs] == [
        ("bad", "corrupt"), ("good-1", "succeeded"), ("good-2", "succeeded")]
    assert "truncated" in (runs[0].error or "") or "corrupt" in (runs[0].error or "")
    assert [r.run_id for r in store.list_runs(status="running")] == []
    assert [r.run_id for r in store.list_runs(workflow="wf")] == ["good-1", "good-2"]
    with pytest.raises(CorruptBlobError):
        store.get_run("bad")
    assert store.prune(keep_last=0) == ["good-1", "good-2"]  # never a corrupt one
    assert store.delete_run("bad") is True
    assert store.list_runs() == []
    assert store.steps("bad") == {}
    assert store.dead_letters() == []


def test_a_dead_letter_can_replace_older_ones_in_one_commit(store: CheckpointClient) -> None:
    store.save_dead_letter(letter("L1", "r1"))
    store.save_dead_letter(letter("L2", "r1"))
    store.save_dead_letter(letter("L3", "r1"), replaces=["L1", "L2"])
    assert [d.id for d in store.dead_letters()] == ["L3"]
