"""The runtime root tree: idempotent start, clean stop, data directory rules."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pykka
import pytest
from _subprocess import run_python

import zixir_actors
from supervisors import monitor, whereis
from zixir_actors.errors import DataDirError, RuntimeConflictError
from zixir_actors.runtime import SERVICE_NAMES, current, resolve_data_dir


def test_start_builds_the_tree_of_the_design(tmp_path: Path) -> None:
    with zixir_actors.start(data_dir=tmp_path) as runtime:
        names = [c.name for c in runtime.supervisor.which_children()]
        assert names == list(SERVICE_NAMES)
        assert all(whereis(n) is not None for n in SERVICE_NAMES)
        tree = runtime.tree()
        assert tree.startswith("zixir.root")
        for name in SERVICE_NAMES:
            assert name in tree
    assert pykka.ActorRegistry.get_all() == []
    assert current() is None


def test_start_is_idempotent(tmp_path: Path) -> None:
    first = zixir_actors.start(data_dir=tmp_path)
    try:
        assert zixir_actors.start() is first
        assert zixir_actors.start(data_dir=tmp_path) is first
        assert current() is first
    finally:
        first.stop()
    first.stop()  # a second stop is a no-op
    assert not first.is_alive()


def test_start_with_another_data_dir_while_running_is_an_error(tmp_path: Path) -> None:
    with zixir_actors.start(data_dir=tmp_path / "a"):
        with pytest.raises(RuntimeConflictError) as info:
            zixir_actors.start(data_dir=tmp_path / "b")
        assert str(tmp_path / "a") in str(info.value)


def test_data_dir_is_owner_only(tmp_path: Path) -> None:
    target = tmp_path / "state"
    with zixir_actors.start(data_dir=target):
        mode = stat.S_IMODE(os.stat(target).st_mode)
        assert mode == 0o700


def test_data_dir_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("not a directory")
    with pytest.raises(DataDirError, match="not a directory"):
        zixir_actors.start(data_dir=target)
    assert current() is None


def test_uncreatable_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory should be")
    with pytest.raises(DataDirError, match="cannot create"):
        zixir_actors.start(data_dir=blocker / "state")


def test_a_script_that_never_calls_stop_still_exits(tmp_path: Path) -> None:
    script = f"import zixir_actors\nzixir_actors.start(data_dir={str(tmp_path)!r})\nprint('up')\n"
    result = run_python("-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "up"


def test_env_var_sets_the_default_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZIXIR_DATA_DIR", str(tmp_path / "from-env"))
    assert resolve_data_dir() == (tmp_path / "from-env").resolve()
    monkeypatch.delenv("ZIXIR_DATA_DIR")
    monkeypatch.chdir(tmp_path)
    assert resolve_data_dir() == (tmp_path / ".zixir").resolve()


def test_a_process_beside_an_exclusive_runtime_gets_a_clear_error(tmp_path: Path) -> None:
    script = (
        "import sys, zixir_actors\n"
        "from zixir_actors.errors import DataDirLockedError\n"
        "try:\n"
        f"    zixir_actors.start(data_dir={str(tmp_path)!r})\n"
        "except DataDirLockedError as e:\n"
        "    print('LOCKED', e.pid); sys.exit(3)\n"
        "sys.exit(0)\n"
    )
    with zixir_actors.start(data_dir=tmp_path, exclusive=True):
        result = run_python("-c", script)
    assert result.returncode == 3, result.stderr
    assert f"LOCKED {os.getpid()}" in result.stdout
    # Once stopped, another process may take the directory.
    again = run_python("-c", script)
    assert again.returncode == 0, again.stderr


def test_a_crashed_service_is_restarted_and_found_by_name(tmp_path: Path) -> None:
    with zixir_actors.start(data_dir=tmp_path) as runtime:
        store = whereis("zixir.store")
        assert store is not None
        down = monitor(store)
        from supervisors import kill

        kill(store)
        assert down.wait(timeout=5.0).reason == "killed"
        service = runtime.service("store")
        fresh = service.whereis(timeout=5.0)
        assert fresh is not store and fresh.is_alive()


def test_workflow_runs_through_the_front_door(tmp_path: Path) -> None:
    with zixir_actors.start(data_dir=tmp_path):
        wf = zixir_actors.Workflow("front-door-test")

        @wf.step()
        def square(n: int) -> int:
            return n * n

        result = wf.run({"n": 7}, timeout=30)
        assert result.status == "succeeded"
        assert result.outputs["square"] == 49
        cache = zixir_actors.Cache.start("front-door-cache", ttl=60)
        cache.put("k", "v")
        assert cache.get("k") == "v"
        cache.stop()


def test_metrics_port_serves_prometheus_text(tmp_path: Path) -> None:
    import urllib.request

    with zixir_actors.start(data_dir=tmp_path, metrics_port=0) as runtime:
        port = runtime.metrics_port
        assert isinstance(port, int) and port > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            body = response.read().decode()
        assert "zixir_" in body


def test_runs_in_flight_when_the_process_died_resume_on_the_next_start(tmp_path: Path) -> None:
    flows = tmp_path / "flows.py"
    flows.write_text(
        "import os\n"
        "from zixir_actors.workflow import Workflow\n"
        "wf = Workflow('resume-on-start')\n"
        "@wf.step()\n"
        "def first(n):\n"
        "    return n + 1\n"
        "@wf.step(depends_on=['first'])\n"
        "def second(first, marker):\n"
        "    if not os.path.exists(marker):\n"
        "        open(marker, 'w').close()\n"
        "        os.kill(os.getpid(), 9)\n"
        "    return first * 10\n"
    )
    data, marker = tmp_path / "data", tmp_path / "marker"
    child = (f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n"
             "import zixir_actors, flows\n"
             f"rt = zixir_actors.start(data_dir={str(data)!r})\n"
             f"flows.wf.run({{'n': 4, 'marker': {str(marker)!r}}}, run_id='r-1')\n")
    result = run_python("-c", child)
    assert result.returncode == -9, result.stderr
    import importlib.util

    spec = importlib.util.spec_from_file_location("flows_resume_test", flows)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with zixir_actors.start(data_dir=data) as runtime:
        assert [h.run_id for h in runtime.resumed] == ["r-1"]
        resumed = runtime.resumed[0].result(timeout=30)
        assert resumed.status == "succeeded"
        assert resumed.outputs["second"] == 50
        assert resumed.steps["first"].status == "cached"
        assert runtime.interrupted_runs() == []


# -- hardening: corrupt records never block start(); a failed start leaves nothing ----


def _corrupt_run_header(data_dir: Path, run_id: str) -> None:
    from zixir_actors import _codec, _lmdb, checkpoint

    env = _lmdb.open_env(data_dir)
    try:
        db = env.db(checkpoint.RUNS_DB)
        blob = _codec.encode(checkpoint.RunRecord(run_id, "wf", "running", {}, 0.0, 0.0))
        env.write(lambda txn: txn.put(run_id.encode(), blob[: len(blob) // 2], db=db))
    finally:
        _lmdb.release(env)


def test_a_corrupt_run_record_never_blocks_start_and_can_be_deleted(tmp_path: Path) -> None:
    from zixir_actors.checkpoint import RunRecord, connect, open_store

    with open_store(tmp_path) as store:
        store.save_run(RunRecord("fine", "wf", "succeeded", {}, 1.0, 1.0))
    _corrupt_run_header(tmp_path, "broken")
    with zixir_actors.start(data_dir=tmp_path) as runtime:
        store = connect()
        assert [(r.run_id, r.status) for r in store.list_runs()] == [
            ("broken", "corrupt"), ("fine", "succeeded")]
        assert runtime.interrupted_runs() == []
        assert store.delete_run("broken") is True
        assert [r.run_id for r in store.list_runs()] == ["fine"]


def test_an_interrupted_run_with_a_corrupt_checkpoint_is_failed_once_not_retried(
        tmp_path: Path) -> None:
    from zixir_actors import _lmdb, checkpoint
    from zixir_actors.checkpoint import RunRecord, connect, open_store
    from zixir_actors.workflow import Step, Workflow

    wf = Workflow("rt-corrupt", [Step("a", lambda: 1), Step("b", lambda a: a, depends_on="a")])
    with open_store(tmp_path) as store:
        store.save_run(RunRecord("r1", "rt-corrupt", "running", {}, 0.0, 0.0))
    env = _lmdb.open_env(tmp_path)
    try:
        db = env.db(checkpoint.STEPS_DB)
        env.write(lambda txn: txn.put(b"r1\x00a", b"ZX\x01\x00garbage", db=db))
    finally:
        _lmdb.release(env)
    with zixir_actors.start(data_dir=tmp_path) as runtime:
        assert runtime.resumed == []
        record = connect().get_run("r1")
        assert record.status == "failed"
        assert "cannot resume" in (record.error or "") and "r1/a" in (record.error or "")
        assert runtime.interrupted_runs() == []
    with zixir_actors.start(data_dir=tmp_path) as runtime:  # not tried again
        assert runtime.resumed == []
        assert connect().get_run("r1") == record
    del wf


def test_a_start_that_raises_leaves_nothing_running(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from zixir_actors.runtime import Runtime

    def explode(self: Runtime) -> list[object]:
        raise RuntimeError("resume failed")

    monkeypatch.setattr(Runtime, "resume_interrupted", explode)
    with pytest.raises(RuntimeError, match="resume failed"):
        zixir_actors.start(data_dir=tmp_path)
    assert current() is None
    assert pykka.ActorRegistry.get_all() == []
    assert all(whereis(n) is None for n in SERVICE_NAMES)
    monkeypatch.undo()
    with zixir_actors.start(data_dir=tmp_path) as runtime:  # the directory lock was released
        assert runtime.is_alive()


def test_start_on_a_truncated_store_raises_a_typed_error_and_leaves_nothing(
        tmp_path: Path) -> None:
    from supervisors.errors import ChildStartError
    from zixir_actors.checkpoint import RunRecord, open_store
    from zixir_actors.errors import StoreCorruptError

    with open_store(tmp_path, durable=False) as store:
        for i in range(300):
            store.save_run(RunRecord(f"r{i}", "wf", "succeeded", {"pad": "x" * 200}, 0.0, 0.0))
    data = tmp_path / "data.mdb"
    with open(data, "r+b") as f:
        f.truncate(data.stat().st_size // 2)
    with pytest.raises(ChildStartError) as info:
        zixir_actors.start(data_dir=tmp_path)
    cause = info.value.cause
    assert isinstance(cause, StoreCorruptError), info.value
    assert cause.path == str(data) and "truncated" in cause.reason
    assert current() is None
    assert pykka.ActorRegistry.get_all() == []
