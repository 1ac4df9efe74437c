"""`zixir store check|backup` and corrupt run records in `zixir runs`, through subprocesses."""

from __future__ import annotations

import json
import stat
import struct
import subprocess
import sys
from pathlib import Path

from _subprocess import project_env

from zixir_actors import _codec, _lmdb, checkpoint
from zixir_actors.checkpoint import RunRecord, StepCheckpoint, open_store
from zixir_actors.errors import StoreCorruptError


def zixir(data_dir: Path, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    env = project_env()
    env.pop("ZIXIR_DATA_DIR", None)
    return subprocess.run([sys.executable, "-m", "zixir_actors", "--data-dir", str(data_dir),
                           *args], capture_output=True, text=True, timeout=timeout, env=env,
                          check=False)


def fill(data_dir: Path, runs: int = 300) -> None:
    with open_store(data_dir, durable=False) as store:
        for i in range(runs):
            store.save_run(RunRecord(f"run-{i:04d}", "wf", "succeeded", {}, float(i), float(i)))
            store.save_step(StepCheckpoint(f"run-{i:04d}", "s", "x" * 300, "c", "i", 1, 0.0,
                                           0.0, f"run-{i:04d}/s"))


def put_raw(data_dir: Path, db: str, key: bytes, value: bytes) -> None:
    env = _lmdb.open_env(data_dir)
    try:
        handle = env.db(db)
        env.write(lambda txn: txn.put(key, value, db=handle))
    finally:
        _lmdb.release(env)


def test_store_check_of_a_sound_store(tmp_path: Path) -> None:
    fill(tmp_path, runs=20)
    done = zixir(tmp_path, "store", "check")
    assert done.returncode == 0, done.stderr
    assert "20 zixir.runs" in done.stdout and done.stdout.rstrip().endswith("ok")
    report = json.loads(zixir(tmp_path, "store", "check", "--json").stdout)
    assert report["ok"] is True and report["records"]["zixir.steps"] == 20


def zero_a_leaf_page(data: Path) -> int:
    """Zero one leaf page that is no DB's root (open_env still accepts the file)."""
    raw = data.read_bytes()
    for pgno in range(len(raw) // 4096 - 1, 2, -1):
        number, _, flags = struct.unpack_from("=QHH", raw, pgno * 4096)
        if number != pgno or not flags & 0x02:
            continue
        with open(data, "r+b") as f:
            f.seek(pgno * 4096)
            f.write(b"\0" * 4096)
        try:
            _lmdb.check_file(str(data))
            return pgno
        except StoreCorruptError:
            with open(data, "r+b") as f:
                f.seek(pgno * 4096)
                f.write(raw[pgno * 4096:(pgno + 1) * 4096])
    raise AssertionError("no leaf page to zero")


def test_store_check_reports_a_zeroed_page(tmp_path: Path) -> None:
    fill(tmp_path)
    pgno = zero_a_leaf_page(tmp_path / "data.mdb")
    done = zixir(tmp_path, "store", "check")
    assert done.returncode == 1, done.stderr
    assert f"corrupt: page {pgno}: header says page 0" in done.stdout
    assert "problem(s) found" in done.stdout


def test_store_check_reports_corrupt_records(tmp_path: Path) -> None:
    fill(tmp_path, runs=5)
    put_raw(tmp_path, checkpoint.RUNS_DB, b"run-0001", b"ZX\x01\x00garbage")
    done = zixir(tmp_path, "store", "check", "--json")
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is False and report["records"]["zixir.runs"] == 5
    [problem] = report["problems"]
    assert problem.startswith("zixir.runs 'run-0001':")


def test_store_check_and_open_refuse_a_truncated_file(tmp_path: Path) -> None:
    fill(tmp_path)
    data = tmp_path / "data.mdb"
    with open(data, "r+b") as f:
        f.truncate(data.stat().st_size // 3)
    done = zixir(tmp_path, "store", "check")
    assert done.returncode == 1
    assert "truncated" in done.stdout
    listed = zixir(tmp_path, "runs", "list")  # before: killed by SIGBUS
    assert listed.returncode == 2, listed.stderr
    assert "corrupt store file" in listed.stderr and str(data) in listed.stderr


def test_store_backup_makes_a_compacted_owner_only_copy(tmp_path: Path) -> None:
    source = tmp_path / "src"
    fill(source, runs=200)
    with open_store(source) as store:
        store.prune(keep_last=20)
    dest = tmp_path / "backup"
    done = zixir(source, "store", "backup", str(dest))
    assert done.returncode == 0, done.stderr
    assert "compacted" in done.stdout
    copy = dest / "data.mdb"
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert copy.stat().st_size < (source / "data.mdb").stat().st_size
    listed = json.loads(zixir(dest, "runs", "list", "--json").stdout)
    assert sorted(r["run_id"] for r in listed) == [f"run-{i:04d}" for i in range(180, 200)]
    again = zixir(source, "store", "backup", str(dest))
    assert again.returncode == 2 and "not an empty directory" in again.stderr
    missing = zixir(source, "store", "backup")
    assert missing.returncode == 2 and "DEST" in missing.stderr


def test_store_backup_of_a_live_directory(tmp_path: Path) -> None:
    import zixir_actors
    from zixir_actors.checkpoint import connect

    with zixir_actors.start(data_dir=tmp_path / "live"):
        store = connect()
        for i in range(50):
            store.save_run(RunRecord(f"r{i}", "wf", "succeeded", {}, float(i), float(i)))
        done = zixir(tmp_path / "live", "store", "backup", str(tmp_path / "copy"))
        assert done.returncode == 0, done.stderr
    with open_store(tmp_path / "copy") as copy:
        assert len(copy.list_runs()) == 50


def test_runs_list_shows_a_corrupt_record_and_runs_delete_removes_it(tmp_path: Path) -> None:
    fill(tmp_path, runs=2)
    blob = _codec.encode(RunRecord("bad", "wf", "running", {}, 5.0, 5.0))
    put_raw(tmp_path, checkpoint.RUNS_DB, b"bad", blob[: len(blob) // 2])
    listed = zixir(tmp_path, "runs", "list")
    assert listed.returncode == 0, listed.stderr
    assert "run-0000" in listed.stdout and "run-0001" in listed.stdout
    assert "corrupt run record bad" in listed.stdout
    assert "zixir runs delete bad" in listed.stdout
    rows = json.loads(zixir(tmp_path, "runs", "list", "--json", "--workflow", "wf").stdout)
    assert {r["run_id"]: r["status"] for r in rows} == {
        "bad": "corrupt", "run-0000": "succeeded", "run-0001": "succeeded"}
    deleted = zixir(tmp_path, "runs", "delete", "bad")
    assert deleted.returncode == 0, deleted.stderr
    rows = json.loads(zixir(tmp_path, "runs", "list", "--json").stdout)
    assert sorted(r["run_id"] for r in rows) == ["run-0000", "run-0001"]
