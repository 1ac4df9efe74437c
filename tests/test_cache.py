"""Tests of `zixir_actors.cache`: TTL, LRU, persistence, crashes, tables, memoize, warming."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisors import DynamicSupervisor, Supervisor, kill, monitor, whereis
from supervisors.supervisor import SupervisorRef
from zixir_actors._lmdb import open_env, release
from zixir_actors.cache import Cache, CacheStats, WarmProgress, child_spec
from zixir_actors.cache._keys import canonical, key_bytes, memo_key, parse_size
from zixir_actors.cache._state import REAP_PER_WRITE
from zixir_actors.errors import (
    CacheNotFoundError,
    ConfigError,
    DuplicateKeyError,
    EntryTooLargeError,
    InvalidKeyError,
    InvalidQueryError,
    InvalidRecordError,
    NotStartedError,
    RecordNotFoundError,
    StoreError,
    TableExistsError,
    UnknownTableError,
    UnserializableError,
    ZixirTimeoutError,
)
from zixir_actors.observability import metrics, span
from zixir_actors.testing import FakeClock, capture_spans, wait_for

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def caches() -> Iterator[SupervisorRef]:
    sup = DynamicSupervisor.start_link(max_restarts=50, max_seconds=10.0, name="zixir.caches")
    yield sup
    sup.stop()


def run_python(code: str, data_dir: Path) -> Any:
    """Run `code` in a fresh interpreter; it prints one JSON document."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), ZIXIR_TEST_DIR=str(data_dir))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=60, check=False, cwd=data_dir)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


SUBPROCESS_PRELUDE = """
import json, os, time
from supervisors import DynamicSupervisor
from zixir_actors.cache import Cache
from zixir_actors.testing import FakeClock
sup = DynamicSupervisor.start_link(name="zixir.caches")
data_dir = os.environ["ZIXIR_TEST_DIR"]
"""


# -- key/value basics -----------------------------------------------------------


def test_put_get_delete_clear_contains(caches: SupervisorRef) -> None:
    c = Cache.start("basic")
    assert c.get("missing") is None
    assert c.get("missing", "dflt") == "dflt"
    c.put("a", 1)
    c.put(("tuple", 2), {"nested": [1, 2]})
    assert c.get("a") == 1
    assert c.get(("tuple", 2)) == {"nested": [1, 2]}
    assert c.contains("a") and "a" in c and not c.contains("zz")
    assert c.get_many(["a", "zz", ("tuple", 2)]) == {"a": 1, ("tuple", 2): {"nested": [1, 2]}}
    assert c.delete("a") is True
    assert c.delete("a") is False
    assert c.get("a") is None
    c.put("b", None)
    assert c.contains("b") and c.get("b", "dflt") is None
    assert c.clear() == 2
    assert c.stats().size == 0 and len(c) == 0


def test_unhashable_key_is_a_typed_error(caches: SupervisorRef) -> None:
    c = Cache.start("keys")
    with pytest.raises(InvalidKeyError, match="unhashable"):
        c.put(["a", "list"], 1)
    with pytest.raises(InvalidKeyError):
        c.get({"a": 1})


def test_memory_cache_holds_unpicklable_values_but_persistent_one_refuses(
        caches: SupervisorRef, tmp_path: Path) -> None:
    mem = Cache.start("mem-any")
    gen = (x for x in range(3))
    mem.put("gen", gen)
    assert mem.get("gen") is gen
    disk = Cache.start("disk-any", persist=True, data_dir=tmp_path)
    with pytest.raises(UnserializableError):
        disk.put("gen", gen)
    assert not disk.contains("gen")
    disk.put("fn", lambda x: x + 1)          # dill handles lambdas
    assert disk.get("fn")(1) == 2


def test_start_is_idempotent_also_when_threads_race(caches: SupervisorRef) -> None:
    barrier = threading.Barrier(16)
    handles: list[Cache] = []

    def start() -> None:
        barrier.wait(timeout=5)
        handles.append(Cache.start("racy", ttl=5))

    threads = [threading.Thread(target=start) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(handles) == 16
    assert caches.count_children().active == 1
    handles[0].put("k", "v")
    assert all(h.get("k") == "v" for h in handles)
    assert Cache.names() == ["racy"]


def test_start_without_caches_supervisor_raises_not_started() -> None:
    with pytest.raises(NotStartedError, match=r"zixir\.caches"):
        Cache.start("orphan")


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"ttl": -1}, "ttl"), ({"ttl": float("inf")}, "ttl"), ({"ttl": True}, "ttl"),
    ({"max_entries": 0}, "max_entries"), ({"max_bytes": "lots"}, "max_bytes"),
    ({"max_bytes": -5}, "max_bytes"), ({"refresh_ahead": 1.5}, "refresh_ahead"),
    ({"loader": 42}, "loader"), ({"clock": object()}, "clock"),
])
def test_bad_start_arguments_are_config_errors(caches: SupervisorRef, kwargs: dict[str, Any],
                                               field: str) -> None:
    with pytest.raises(ConfigError) as info:
        Cache.start("bad", **kwargs)
    assert info.value.field == field
    assert caches.count_children().active == 0


def test_bad_cache_name_and_put_ttl(caches: SupervisorRef) -> None:
    with pytest.raises(ConfigError):
        Cache.start("")
    c = Cache.start("ttl-check")
    with pytest.raises(ConfigError, match="ttl"):
        c.put("k", 1, ttl=0)


def test_lookup_and_stop(caches: SupervisorRef) -> None:
    with pytest.raises(CacheNotFoundError, match="nope"):
        Cache.lookup("nope")
    c = Cache.start("stoppable")
    c.put("k", 1)
    assert Cache.lookup("stoppable").get("k") == 1
    c.stop()
    c.stop()  # stopping twice does nothing
    with pytest.raises(CacheNotFoundError):
        c.get("k")
    assert Cache.names() == []
    fresh = Cache.start("stoppable")          # memory caches start empty again
    assert fresh.get("k") is None


# -- expiry ---------------------------------------------------------------------


def test_ttl_expires_entries_on_the_injected_clock(caches: SupervisorRef) -> None:
    clock = FakeClock()
    c = Cache.start("ttl", ttl=10, clock=clock)
    c.put("default", 1)
    c.put("short", 2, ttl=1)
    c.put("long", 3, ttl=100)
    clock.advance(0.999)
    assert c.get("short") == 2
    clock.advance(0.001)
    assert c.get("short") is None and not c.contains("short")
    clock.advance(9)
    assert c.get("default") is None
    assert c.get("long") == 3
    stats = c.stats()
    assert stats.expirations == 2 and stats.size == 1
    assert c.keys() == ["long"]


def test_expired_entries_are_reclaimed_incrementally_not_by_full_scan(
        caches: SupervisorRef) -> None:
    clock = FakeClock()
    c = Cache.start("reap", clock=clock)
    for i in range(200):
        c.put(i, i, ttl=1)
    c.put("keep", 0)
    clock.advance(2)
    state = c._live()
    c.put("new", 1)
    # One write reclaims a bounded batch from the expiry heap, not all 200.
    assert len(state.data) == 202 - REAP_PER_WRITE
    assert c.purge() == 200 - REAP_PER_WRITE
    assert sorted(map(str, c.keys())) == ["keep", "new"]
    assert c.stats().expirations == 200


def test_expiry_heap_stays_bounded_under_overwrites(caches: SupervisorRef) -> None:
    c = Cache.start("heap", ttl=60)
    for i in range(5000):
        c.put("same", i)
    assert len(c._live().heap) <= 2 + 1024 + 1
    assert c.get("same") == 4999


def test_overwritten_entry_uses_its_new_ttl(caches: SupervisorRef) -> None:
    clock = FakeClock()
    c = Cache.start("overwrite", clock=clock)
    c.put("k", "old", ttl=1)
    c.put("k", "new", ttl=10)
    clock.advance(5)
    assert c.purge() == 0
    assert c.get("k") == "new"


# -- LRU ------------------------------------------------------------------------


def test_lru_evicts_least_recently_used_by_max_entries(caches: SupervisorRef) -> None:
    c = Cache.start("lru", max_entries=3)
    for k in "abc":
        c.put(k, k.upper())
    assert c.get("a") == "A"          # a is now the most recently used
    c.put("d", "D")                   # evicts b
    assert c.keys() == ["c", "a", "d"]
    c.get("c")
    c.put("b", "B")                   # evicts a
    assert sorted(c.keys()) == ["b", "c", "d"]
    assert c.stats().evictions == 2
    c.put("d", "D2")                  # overwriting evicts nothing
    assert c.stats().evictions == 2 and c.stats().size == 3


OPS = st.lists(st.tuples(st.sampled_from(["put", "get", "delete"]), st.integers(0, 9),
                         st.integers()), max_size=60)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_lru_cache_behaves_like_an_ordered_dict_model(caches: SupervisorRef,
                                                      ops: list[tuple[str, int, int]]) -> None:
    c = Cache.start("lru-model", max_entries=4)
    c.clear()
    model: OrderedDict[int, int] = OrderedDict()
    for op, key, value in ops:
        if op == "put":
            c.put(key, value)
            model[key] = value
            model.move_to_end(key)
            while len(model) > 4:
                model.popitem(last=False)
        elif op == "get":
            assert c.get(key) == model.get(key)
            if key in model:
                model.move_to_end(key)
        else:
            assert c.delete(key) == (model.pop(key, None) is not None)
        assert sorted(c.keys()) == sorted(model)


TTL_OPS = st.lists(st.tuples(st.sampled_from(["put", "get", "advance", "purge"]),
                             st.integers(0, 5), st.integers(1, 4)), max_size=60)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=TTL_OPS)
def test_ttl_cache_never_serves_an_expired_entry(caches: SupervisorRef,
                                                 ops: list[tuple[str, int, int]]) -> None:
    clock = FakeClock()
    c = Cache.start(f"ttl-model-{id(clock)}", clock=clock)
    model: dict[int, tuple[int, float]] = {}
    try:
        for step, (op, key, n) in enumerate(ops):
            now = clock.time()
            if op == "put":
                c.put(key, step, ttl=n)
                model[key] = (step, now + n)
            elif op == "get":
                live = key in model and model[key][1] > now
                assert c.get(key) == (model[key][0] if live else None)
            elif op == "advance":
                clock.advance(n / 2)
            else:
                c.purge()
            assert sorted(c.keys()) == sorted(k for k, (_, exp) in model.items()
                                              if exp > clock.time())
    finally:
        c.stop()


def test_lru_evicts_by_max_bytes(caches: SupervisorRef) -> None:
    c = Cache.start("bytes", max_bytes="1KiB")
    for i in range(4):
        c.put(i, b"x" * 300)
    stats = c.stats()
    assert stats.bytes <= 1024 and stats.size == 3 and stats.evictions == 1
    assert not c.contains(0)
    with pytest.raises(EntryTooLargeError) as info:
        c.put("huge", b"x" * 2000)
    assert info.value.max_bytes == 1024 and info.value.key == "huge"
    assert c.stats().size == 3


# -- persistence ----------------------------------------------------------------


def test_persistent_cache_survives_stop_and_start(caches: SupervisorRef, tmp_path: Path) -> None:
    clock = FakeClock()
    c = Cache.start("persist", persist=True, data_dir=tmp_path, clock=clock)
    c.put("forever", {"v": 1})
    c.put("short", 2, ttl=5)
    c.put("long", 3, ttl=50)
    c.put("gone", 4)
    c.delete("gone")
    c.stop()
    clock.advance(10)                 # "short" expires while the cache is down
    c = Cache.start("persist", persist=True, data_dir=tmp_path, clock=clock)
    assert c.get("forever") == {"v": 1}
    assert c.get("long") == 3
    assert not c.contains("short") and not c.contains("gone")
    assert c.stats().expirations == 1
    clock.advance(50)
    assert c.get("long") is None
    c.clear()
    c.stop()
    c = Cache.start("persist", persist=True, data_dir=tmp_path, clock=clock)
    assert c.stats().size == 0


KEYS = st.one_of(st.text(max_size=200), st.integers(), st.booleans(), st.binary(max_size=20),
                 st.tuples(st.text(max_size=5), st.integers()),
                 st.frozensets(st.integers(), max_size=4))
VALUES = st.recursive(st.none() | st.integers() | st.floats(allow_nan=False) | st.text(),
                      lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.dictionaries(KEYS, VALUES, max_size=12))
def test_persisted_entries_round_trip_through_a_restart(caches: SupervisorRef, tmp_path: Path,
                                                        entries: dict[Any, Any]) -> None:
    c = Cache.start("round-trip", persist=True, data_dir=tmp_path)
    c.clear()
    for key, value in entries.items():
        c.put(key, value)
    c.stop()
    c = Cache.start("round-trip", persist=True, data_dir=tmp_path)
    try:
        assert c.stats().size == len(entries)
        for key, value in entries.items():
            assert c.get(key, "missing") == value
    finally:
        c.stop()


def test_new_process_sees_unexpired_entries_and_none_that_expired_while_down(
        caches: SupervisorRef, tmp_path: Path) -> None:
    c = Cache.start("cross", persist=True, data_dir=tmp_path)
    c.put("forever", [1, 2, 3])
    c.put("hour", "h", ttl=3600)
    c.put("minute", "m", ttl=60)
    c.put(("tuple", 1), "t")
    c.stop()
    # The child process's wall clock is 10 minutes ahead: "minute" expired
    # while no process had the cache open.
    seen = run_python(SUBPROCESS_PRELUDE + """
clock = FakeClock(wall=time.time() + 600)
c = Cache.start("cross", persist=True, data_dir=data_dir, clock=clock)
out = {"forever": c.get("forever"), "hour": c.get("hour"), "minute": c.get("minute"),
       "tuple": c.get(("tuple", 1)), "size": c.stats().size}
c.put("from-child", "hello")
sup.stop()
print(json.dumps(out))
""", tmp_path)
    assert seen == {"forever": [1, 2, 3], "hour": "h", "minute": None, "tuple": "t", "size": 3}
    c = Cache.start("cross", persist=True, data_dir=tmp_path)
    assert c.get("from-child") == "hello"
    assert not c.contains("minute")     # the child deleted it from LMDB too


def test_confirmed_puts_survive_kill_9_of_the_process(caches: SupervisorRef,
                                                      tmp_path: Path) -> None:
    code = SUBPROCESS_PRELUDE + """
import signal, sys
c = Cache.start("killed-process", persist=True, data_dir=data_dir, sync_interval=3600)
for i in range(500):
    c.put(f"k{i}", {"i": i})
print(json.dumps({"confirmed": 500}), flush=True)
os.kill(os.getpid(), signal.SIGKILL)      # no stop, no fsync, no atexit
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT), ZIXIR_TEST_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=60, check=False)
    assert proc.returncode == -9, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"confirmed": 500}
    c = Cache.start("killed-process", persist=True, data_dir=tmp_path)
    assert c.stats().size == 500
    assert all(c.get(f"k{i}") == {"i": i} for i in range(500))


def test_child_spec_starts_caches_supervisor_with_default_data_dir(tmp_path: Path) -> None:
    spec = child_spec(data_dir=tmp_path)
    assert spec.name == "zixir.caches" and spec.type == "supervisor"
    root = Supervisor.start_link([spec], name="test.root")
    try:
        c = Cache.start("rooted", persist=True)
        c.put("k", "v")
        assert (tmp_path / "data.mdb").exists()
    finally:
        root.stop()


def test_corrupt_persisted_entry_is_skipped_not_fatal(caches: SupervisorRef,
                                                     tmp_path: Path) -> None:
    c = Cache.start("corrupt", persist=True, data_dir=tmp_path)
    c.put("good", 1)
    c.stop()
    env = open_env(tmp_path)
    try:
        db = env.db("cache:corrupt")
        env.write(lambda txn: txn.put(b"s3:bad", b"not a zixir blob", db=db))
    finally:
        release(env)
    c = Cache.start("corrupt", persist=True, data_dir=tmp_path)
    assert c.get("good") == 1 and c.stats().size == 1
    c.put("after", 2)
    assert c.get("after") == 2


def test_unwritable_data_dir_is_a_store_error(caches: SupervisorRef, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError):
        Cache.start("nodir", persist=True, data_dir=blocker / "sub")
    assert caches.count_children().active == 0


def test_durable_cache_round_trips(caches: SupervisorRef, tmp_path: Path) -> None:
    c = Cache.start("durable", persist=True, data_dir=tmp_path, durable=True)
    c.put("k", "v")
    c.stop()
    assert Cache.start("durable", persist=True, data_dir=tmp_path).get("k") == "v"


def test_persistent_writes_are_fsynced_in_groups(caches: SupervisorRef, tmp_path: Path) -> None:
    c = Cache.start("group-sync", persist=True, data_dir=tmp_path, sync_interval=0.5)
    state = c._live()
    for i in range(10):
        c.put(i, i)
    assert state._dirty                       # committed, not yet fsynced
    wait_for(lambda: not state._dirty and state._timer is None, timeout=5)
    stats = c.stats()
    assert stats.size == 10 and stats.bytes > 10 * 12   # encoded blob sizes


# -- crashes --------------------------------------------------------------------


def _crash(name: str) -> None:
    actor = whereis(f"zixir.cache.{name}")
    assert actor is not None
    down = monitor(actor)
    with pytest.raises(TypeError, match="unknown message"):
        actor.ask("boom", timeout=5)
    assert isinstance(down.wait(timeout=5).reason, TypeError)
    wait_for(lambda: whereis(f"zixir.cache.{name}") not in (None, actor), timeout=5)


def test_actor_crash_mid_traffic_loses_no_confirmed_write(caches: SupervisorRef,
                                                          tmp_path: Path) -> None:
    c = Cache.start("crashy", persist=True, data_dir=tmp_path)
    confirmed: dict[str, list[int]] = {}
    stop = threading.Event()
    progress = threading.Semaphore(0)

    def writer(wid: int) -> None:
        handle = Cache.lookup("crashy")
        done = confirmed.setdefault(f"w{wid}", [])
        i = 0
        while not stop.is_set():
            handle.put(f"w{wid}-{i}", i)
            done.append(i)
            progress.release()
            i += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for _ in range(3):
        for _ in range(50):           # some writes land before each crash
            assert progress.acquire(timeout=10)
        _crash("crashy")
    for _ in range(50):               # and after the last one
        assert progress.acquire(timeout=10)
    stop.set()
    for t in threads:
        t.join(10)
    total = sum(len(v) for v in confirmed.values())
    assert total >= 200

    def check(cache: Cache) -> None:
        for wid, numbers in confirmed.items():
            for i in numbers:
                assert cache.get(f"{wid}-{i}") == i, f"{wid}-{i} lost"

    check(c)                          # the same handle follows the restarts
    c.stop()
    check(Cache.start("crashy", persist=True, data_dir=tmp_path))


def test_memory_cache_keeps_entries_across_an_actor_crash(caches: SupervisorRef) -> None:
    c = Cache.start("heir", ttl=60)
    c.put("k", "v")
    c.get("k")
    _crash("heir")
    assert c.get("k") == "v"
    assert c.stats().hits == 2        # counters carry over too


def test_killed_memory_cache_actor_is_replaced_and_entries_kept(caches: SupervisorRef) -> None:
    c = Cache.start("killed-mem")
    c.put("k", "v")
    actor = whereis("zixir.cache.killed-mem")
    assert actor is not None
    kill(actor)
    wait_for(lambda: whereis("zixir.cache.killed-mem") not in (None, actor), timeout=5)
    assert c.get("k") == "v"


def test_concurrent_readers_and_writers_with_eviction_stay_consistent(
        caches: SupervisorRef) -> None:
    c = Cache.start("stress", max_entries=50, ttl=60)
    errors: list[BaseException] = []
    wrong: list[Any] = []

    def writer(seed: int) -> None:
        try:
            for i in range(3000):
                k = (seed * 7 + i) % 200
                c.put(k, k * 3)
                if i % 97 == 0:
                    c.delete((k + 1) % 200)
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        try:
            for i in range(6000):
                v = c.get(i % 200)
                if v is not None and v != (i % 200) * 3:
                    wrong.append((i % 200, v))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(s,)) for s in range(2)]
    threads += [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == [] and wrong == []
    stats = c.stats()
    assert stats.size <= 50 and stats.evictions > 0
    assert stats.hits + stats.misses <= 24_000


def test_killed_actor_is_replaced_and_data_kept(caches: SupervisorRef, tmp_path: Path) -> None:
    c = Cache.start("killed", persist=True, data_dir=tmp_path)
    c.put("k", "v")
    actor = whereis("zixir.cache.killed")
    assert actor is not None
    kill(actor)
    wait_for(lambda: whereis("zixir.cache.killed") not in (None, actor), timeout=5)
    assert c.get("k") == "v"
    c.put("k2", "v2")
    assert Cache.lookup("killed").get("k2") == "v2"


# -- tables ---------------------------------------------------------------------


def test_table_insert_query_update_delete_count(caches: SupervisorRef) -> None:
    c = Cache.start("tables")
    assert c.create_table("docs") is True
    assert c.create_table("docs") is False
    rows = [{"id": 1, "lang": "en", "score": 5}, {"id": 2, "lang": "fr", "score": 9},
            {"id": 3, "lang": "en", "score": 7}, {"id": 4, "lang": "de"}]
    for row in rows:
        assert c.insert("docs", row) == row["id"]
    assert c.insert("docs", {"id": 5, "lang": "it", "score": 1}, key="id") == 5
    assert c.get_record("docs", 5) == {"id": 5, "lang": "it", "score": 1}
    assert c.count("docs") == 5
    assert [r["id"] for r in c.query("docs", where={"lang": "en"})] == [1, 3]
    assert [r["id"] for r in c.query("docs", order_by="-score")] == [2, 3, 1, 5, 4]
    assert [r["id"] for r in c.query("docs", order_by=["lang", "-score"], limit=3)] == [4, 3, 1]
    assert [r["id"] for r in c.query("docs", where={"score": lambda s: s > 5})] == [2, 3]
    assert c.count("docs", where=lambda r: r.get("score", 0) >= 5) == 3
    assert c.query("docs", order_by=lambda r: -r["id"], limit=1)[0]["id"] == 5
    assert c.update("docs", 4, {"score": 3}) == {"id": 4, "lang": "de", "score": 3}
    result = c.query("docs", where={"id": 4})
    result[0]["score"] = 999          # copies: the stored record is untouched
    assert c.get_record("docs", 4)["score"] == 3  # type: ignore[index]
    assert c.delete("docs", 4) is True
    assert c.delete("docs", 4) is False
    assert c.count("docs") == 4
    view = c.table("docs")
    view.insert({"id": 10})
    assert view.get(10) == {"id": 10} and view.count() == 5
    assert c.tables() == ["docs"] and c.stats().tables == ("docs",)
    c.drop_table("docs")
    assert c.tables() == []


def test_table_custom_key_field(caches: SupervisorRef) -> None:
    c = Cache.start("users")
    c.create_table("users", key="email")
    c.insert("users", {"email": "a@x", "name": "A"})
    with pytest.raises(TableExistsError, match="email"):
        c.create_table("users", key="id")
    assert c.query("users") == [{"email": "a@x", "name": "A"}]


def test_first_insert_creates_the_table_with_its_key_field(caches: SupervisorRef,
                                                          tmp_path: Path) -> None:
    c = Cache.start("implicit", persist=True, data_dir=tmp_path)
    assert c.insert("docs", {"id": 1, "title": "OTP"}, key="id") == 1
    assert c.insert("people", {"email": "b@x"}, key="email") == "b@x"
    assert c.insert("people", {"email": "c@x"}) == "c@x"
    with pytest.raises(DuplicateKeyError):
        c.insert("people", {"email": "c@x"}, key="email")
    assert c.query("docs", where={"title": "OTP"}) == [{"id": 1, "title": "OTP"}]
    c.stop()
    c = Cache.start("implicit", persist=True, data_dir=tmp_path)
    assert c.tables() == ["docs", "people"] and c.count("people") == 2
    with pytest.raises(TableExistsError):
        c.create_table("people")


def test_insert_without_the_key_field_generates_an_id(caches: SupervisorRef,
                                                      tmp_path: Path) -> None:
    c = Cache.start("generated-ids", persist=True, data_dir=tmp_path)
    record = {"title": "OTP"}
    first = c.insert("docs", record)
    second = c.insert("docs", {"title": "OTP"})
    assert isinstance(first, str) and len(first) == 32 and first != second
    assert record == {"title": "OTP"}          # the caller's mapping is not changed
    assert c.get_record("docs", first) == {"id": first, "title": "OTP"}
    c.create_table("people", key="email")
    made = c.insert("people", {"name": "Ada"})
    assert c.get_record("people", made) == {"email": made, "name": "Ada"}
    assert c.table("people").insert({"name": "Bob"}) in {
        r["email"] for r in c.query("people", where={"name": "Bob"})}
    c.stop()
    c = Cache.start("generated-ids", persist=True, data_dir=tmp_path)
    assert c.get_record("docs", first) == {"id": first, "title": "OTP"}
    assert c.count("docs") == 2
    c.stop()


def test_table_errors_name_the_bad_input(caches: SupervisorRef) -> None:
    c = Cache.start("bad-tables")
    with pytest.raises(UnknownTableError, match="nope") as unknown:
        c.query("nope")
    assert unknown.value.table == "nope"
    for call in (lambda: c.query("nope"), lambda: c.count("nope"),
                 lambda: c.update("nope", 1, {}), lambda: c.delete("nope", 1),
                 lambda: c.drop_table("nope"), lambda: c.table("nope")):
        with pytest.raises(UnknownTableError):
            call()
    c.create_table("t")
    c.insert("t", {"id": 1, "v": "a"})
    with pytest.raises(DuplicateKeyError) as dup:
        c.insert("t", {"id": 1, "v": "b"})
    assert dup.value.key == 1 and c.get_record("t", 1) == {"id": 1, "v": "a"}
    with pytest.raises(InvalidRecordError, match="mapping"):
        c.insert("t", ["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(InvalidRecordError, match="keyed by 'id', not 'v'"):
        c.insert("t", {"id": 3, "v": "d"}, key="v")
    with pytest.raises(ConfigError):
        c.insert("t", {"id": 3}, key=2)  # type: ignore[arg-type]
    with pytest.raises(InvalidRecordError):
        c.insert("fresh", ["bad"])  # type: ignore[arg-type]
    assert "fresh" not in c.tables()   # a failed first insert creates no table
    with pytest.raises(InvalidKeyError):
        c.insert("t", {"id": [1]})
    with pytest.raises(RecordNotFoundError):
        c.update("t", 99, {"v": "x"})
    with pytest.raises(InvalidRecordError, match="key field"):
        c.update("t", 1, {"id": 2})
    with pytest.raises(InvalidRecordError):
        c.update("t", 1, "v=x")  # type: ignore[arg-type]
    for kwargs, argument in (({"where": 42}, "where"), ({"where": {1: "x"}}, "where"),
                             ({"order_by": 5}, "order_by"), ({"order_by": ""}, "order_by"),
                             ({"limit": -1}, "limit"), ({"limit": 1.5}, "limit")):
        with pytest.raises(InvalidQueryError) as bad:
            c.query("t", **kwargs)
        assert bad.value.argument == argument
    with pytest.raises(InvalidQueryError, match="KeyError"):
        c.query("t", where=lambda r: r["missing"])
    c.insert("t", {"id": 2, "v": 5})
    with pytest.raises(InvalidQueryError, match="cannot be compared"):
        c.query("t", order_by="v")
    with pytest.raises(ConfigError):
        c.create_table("")
    assert c.count("t") == 2          # nothing above changed stored state


def test_tables_persist_across_restarts(caches: SupervisorRef, tmp_path: Path) -> None:
    c = Cache.start("ptables", persist=True, data_dir=tmp_path)
    c.create_table("a")
    c.create_table("b", key="name")
    c.insert("a", {"id": 1, "x": 1})
    c.insert("a", {"id": 2, "x": 2})
    c.insert("b", {"name": "n", "y": [1]})
    c.update("a", 2, {"x": 20})
    c.delete("a", 1)
    c.put("entry", "kv")
    c.stop()
    c = Cache.start("ptables", persist=True, data_dir=tmp_path)
    assert c.tables() == ["a", "b"]
    assert c.query("a") == [{"id": 2, "x": 20}]
    assert c.query("b") == [{"name": "n", "y": [1]}]
    assert c.get("entry") == "kv"
    c.drop_table("a")
    c.stop()
    c = Cache.start("ptables", persist=True, data_dir=tmp_path)
    assert c.tables() == ["b"]


# -- get_or_compute and memoize ---------------------------------------------------


def test_concurrent_get_or_compute_computes_once(caches: SupervisorRef) -> None:
    c = Cache.start("once")
    calls: list[int] = []
    release = threading.Event()
    barrier = threading.Barrier(32)
    results: list[Any] = []

    def compute() -> str:
        calls.append(1)
        assert release.wait(10)
        return "value"

    def caller() -> None:
        barrier.wait(timeout=10)
        results.append(c.get_or_compute("k", compute, timeout=10))

    threads = [threading.Thread(target=caller) for _ in range(32)]
    for t in threads:
        t.start()
    wait_for(lambda: calls, timeout=10)
    release.set()
    for t in threads:
        t.join(10)
    assert len(calls) == 1
    assert results == ["value"] * 32


def test_get_or_compute_error_reaches_every_caller_and_stores_nothing(
        caches: SupervisorRef) -> None:
    c = Cache.start("compute-errors")
    release = threading.Event()
    barrier = threading.Barrier(8)
    calls: list[int] = []
    outcomes: list[Any] = []

    def failing() -> Any:
        calls.append(1)
        assert release.wait(10)
        raise ValueError("model down")

    def caller() -> None:
        barrier.wait(timeout=10)
        try:
            outcomes.append(c.get_or_compute("k", failing, timeout=10))
        except ValueError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for t in threads:
        t.start()
    wait_for(lambda: calls, timeout=10)
    release.set()
    for t in threads:
        t.join(10)
    assert len(outcomes) == 8 and all(isinstance(o, ValueError) for o in outcomes)
    assert not c.contains("k")
    assert c.get_or_compute("k", lambda: 7) == 7


def test_get_or_compute_waiter_timeout(caches: SupervisorRef) -> None:
    c = Cache.start("compute-timeout")
    started = threading.Event()
    release = threading.Event()

    def slow() -> int:
        started.set()
        assert release.wait(10)
        return 1

    t = threading.Thread(target=lambda: c.get_or_compute("k", slow))
    t.start()
    assert started.wait(10)
    with pytest.raises(ZixirTimeoutError):
        c.get_or_compute("k", slow, timeout=0.01)
    release.set()
    t.join(10)
    assert c.get("k") == 1


def test_memoize_caches_by_bound_arguments(caches: SupervisorRef) -> None:
    c = Cache.start("memo")
    calls: list[tuple[Any, ...]] = []

    @c.memoize(ttl=60)
    def embed(text: str, dim: int = 3) -> list[float]:
        calls.append((text, dim))
        return [float(len(text))] * dim

    assert embed("abc") == [3.0, 3.0, 3.0]
    assert embed("abc", 3) == [3.0, 3.0, 3.0]
    assert embed(text="abc", dim=3) == [3.0, 3.0, 3.0]
    assert embed("abc", dim=2) == [3.0, 3.0]
    assert calls == [("abc", 3), ("abc", 2)]
    assert embed.cache_key("abc") == embed.cache_key(text="abc", dim=3)  # type: ignore[attr-defined]

    @c.memoize
    def nothing() -> None:
        calls.append(("nothing",))

    nothing()
    nothing()
    assert calls[-1] == ("nothing",) and len(calls) == 3   # None results are cached too


def test_memoize_rejects_coroutines_and_unencodable_arguments(caches: SupervisorRef) -> None:
    c = Cache.start("memo-bad")

    async def coro() -> None:
        return None

    with pytest.raises(ConfigError):
        c.memoize(coro)

    @c.memoize
    def f(x: Any) -> Any:
        return x

    with pytest.raises(InvalidKeyError):
        f(threading.Lock())


def test_memoize_keys_are_stable_across_processes_and_survive_restart(
        caches: SupervisorRef, tmp_path: Path) -> None:
    code = SUBPROCESS_PRELUDE + """
from zixir_actors.cache._keys import memo_key, signature_of
def embed(text, dim=3):
    return [len(text)] * dim
key = memo_key("tests.embed", signature_of(embed), ("hello",), {"dim": 2})
sup.stop()
print(json.dumps(list(key)))
"""
    first = run_python(code, tmp_path)
    second = run_python(code, tmp_path)

    def embed(text: str, dim: int = 3) -> list[int]:
        return [len(text)] * dim

    here = memo_key("tests.embed", __import__("inspect").signature(embed), ("hello", 2), {})
    assert first == second == list(here)

    calls: list[str] = []

    def make(cache: Cache) -> Any:
        @cache.memoize
        def summarize(text: str) -> str:
            calls.append(text)
            return text[:3]
        return summarize

    c = Cache.start("memo-persist", persist=True, data_dir=tmp_path)
    assert make(c)("abcdef") == "abc"
    c.stop()
    c = Cache.start("memo-persist", persist=True, data_dir=tmp_path)
    assert make(c)("abcdef") == "abc"
    assert calls == ["abcdef"]


# -- warming and refresh-ahead -----------------------------------------------------


def test_warm_from_pairs_and_from_keys_with_loader(caches: SupervisorRef) -> None:
    c = Cache.start("warm")
    seen: list[WarmProgress] = []
    report = c.warm([(f"k{i}", i) for i in range(20)], progress=seen.append)
    assert (report.loaded, report.errors, report.cancelled) == (20, 0, False)
    assert (len(seen) == 20 and seen[-1] == WarmProgress(20, 0)) or max(
        p.loaded for p in seen) == 20

    def loader(key: int) -> int:
        if key % 5 == 0:
            raise RuntimeError(f"bad {key}")
        return key * 10

    report = c.warm(range(1, 21), loader, concurrency=3)
    assert (report.loaded, report.errors) == (16, 4)
    assert sorted(k for k, _ in report.failures) == [5, 10, 15, 20]
    assert isinstance(report.failures[0][1], RuntimeError)
    assert c.get(7) == 70 and not c.contains(5)
    c.put("after", 1)                  # the cache stays usable
    assert c.get("after") == 1
    stats = c.stats()
    assert stats.warm_loaded == 36 and stats.warm_errors == 4
    bad = c.warm([("ok", 1), "not-a-pair", ("fine", 2)], concurrency=1)
    assert (bad.loaded, bad.errors) == (2, 1)


def test_warm_runs_loaders_concurrently(caches: SupervisorRef) -> None:
    c = Cache.start("warm-concurrency")
    barrier = threading.Barrier(4)
    active = [0, 0]
    lock = threading.Lock()

    def loader(key: int) -> int:
        with lock:
            active[0] += 1
            active[1] = max(active[1], active[0])
        barrier.wait(timeout=10)      # only passes if 4 loaders run at once
        with lock:
            active[0] -= 1
        return key

    report = c.warm(range(8), loader, concurrency=4)
    assert report.loaded == 8 and active[1] == 4


def test_warm_rate_paces_items_on_the_clock(caches: SupervisorRef) -> None:
    clock = FakeClock()
    c = Cache.start("warm-rate", clock=clock)
    report = c.warm([(i, i) for i in range(11)], rate=5, concurrency=1)
    assert report.loaded == 11
    assert sum(clock.sleeps) == pytest.approx(2.0)     # 10 gaps of 1/5 s
    assert clock.monotonic() == pytest.approx(2.0)


def test_warm_source_that_raises_is_an_error_not_a_crash(caches: SupervisorRef) -> None:
    c = Cache.start("warm-broken")

    def source() -> Iterator[tuple[str, int]]:
        yield ("a", 1)
        raise OSError("disk gone")

    report = c.warm(source)
    assert (report.loaded, report.errors) == (1, 1)
    with pytest.raises(ConfigError):
        c.warm(42)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        c.warm([], concurrency=0)
    with pytest.raises(ConfigError):
        c.warm([], rate=-1)


def test_warm_past_its_timeout_is_cancelled_and_the_cache_usable(caches: SupervisorRef) -> None:
    c = Cache.start("warm-timeout")
    report = c.warm([(i, i) for i in range(10)], timeout=0)
    assert report.cancelled and report.loaded == 0
    c.put("k", 1)
    assert c.get("k") == 1


def test_warm_at_start_in_the_background(caches: SupervisorRef) -> None:
    c = Cache.start("warm-start", loader=lambda k: k * 2, warm=range(50))
    wait_for(lambda: c.stats().warm_loaded == 50, timeout=10)
    assert c.get(21) == 42
    report = c.warm_async([("x", 1)]).result(timeout=10)
    assert report.loaded == 1


def test_refresh_ahead_reloads_hot_keys_before_they_expire(caches: SupervisorRef) -> None:
    clock = FakeClock()
    c = Cache.start("refresh", clock=clock, refresh_ahead=0.2)
    version = [0]

    def load() -> int:
        version[0] += 1
        return version[0]

    assert c.get_or_compute("hot", load, ttl=10) == 1
    clock.advance(7.9)
    assert c.get("hot") == 1 and version[0] == 1      # not yet in the last 20%
    clock.advance(0.2)
    assert c.get("hot") == 1                            # served, and a reload starts
    wait_for(lambda: c.get("hot") == 2, timeout=5)
    clock.advance(9)                                    # 17.1 s after the first put
    assert c.get("hot") == 2                            # the refreshed entry lives on
    assert c.stats().refreshes == 1


def test_refresh_ahead_uses_the_cache_loader_and_survives_loader_errors(
        caches: SupervisorRef) -> None:
    clock = FakeClock()
    fail = threading.Event()

    def loader(key: str) -> str:
        if fail.is_set():
            raise RuntimeError("upstream down")
        return key + "!"

    c = Cache.start("refresh-loader", ttl=10, clock=clock, refresh_ahead=0.5, loader=loader)
    c.warm(["a"], loader)
    fail.set()
    clock.advance(6)
    assert c.get("a") == "a!"
    wait_for(lambda: c.stats().refresh_errors == 1, timeout=5)
    assert c.get("a") == "a!"                          # the old value stays until expiry
    assert c.stats().refresh_errors == 1               # and the failing loader is not retried
    clock.advance(5)
    assert c.get("a") is None


# -- stats and metrics ----------------------------------------------------------


def test_stats_and_prometheus_metrics(caches: SupervisorRef) -> None:
    c = Cache.start("metered", max_entries=2)
    c.put("a", 1)
    c.put("b", 2)
    c.put("c", 3)
    c.get("b")
    c.get("c")
    c.get("a")
    stats = c.stats()
    assert isinstance(stats, CacheStats)
    assert (stats.hits, stats.misses, stats.evictions, stats.size) == (2, 1, 1, 2)
    assert stats.hit_ratio == pytest.approx(2 / 3)
    labels = {"cache": "metered"}
    assert metrics.sample("zixir_cache_hits_total", labels) == 2
    assert metrics.sample("zixir_cache_misses_total", labels) == 1
    assert metrics.sample("zixir_cache_evictions_total", labels) == 1
    assert metrics.sample("zixir_cache_entries", labels) == 2
    assert b'zixir_cache_bytes{cache="metered"}' in metrics.exposition()


def test_cache_work_is_traced_under_the_callers_span(caches: SupervisorRef) -> None:
    c = Cache.start("traced")

    def model(key: str) -> str:
        with span("llm.call"):
            return key.upper()

    with capture_spans() as spans, span("app.request") as outer:
        c.get_or_compute("q", lambda: model("q"))
        c.warm(["a", "b"], model, concurrency=2)
    by_name: dict[str, list[Any]] = {}
    for record in spans.spans:
        by_name.setdefault(record.name, []).append(record)
    compute = by_name["cache.compute"][0]
    warm = by_name["cache.warm"][0]
    assert compute.parent_id == outer.span_id and warm.parent_id == outer.span_id
    calls = by_name["llm.call"]
    assert len(calls) == 3
    assert sorted(call.parent_id for call in calls) == sorted(
        [compute.span_id, warm.span_id, warm.span_id])


# -- keys -----------------------------------------------------------------------


def test_canonical_encoding_is_order_and_type_stable() -> None:
    assert canonical({"b": 1, "a": 2}) == canonical({"a": 2, "b": 1})
    assert canonical({3, 1, 2}) == canonical({2, 3, 1})
    assert canonical(1) == canonical(1.0) == canonical(True)
    assert canonical((1, 2)) != canonical([1, 2])
    assert canonical("ab") != canonical(b"ab")
    assert canonical(("a", "bc")) != canonical(("ab", "c"))
    assert key_bytes("x" * 5000).startswith(b"#") and len(key_bytes("x" * 5000)) == 33
    with pytest.raises(InvalidKeyError):
        canonical(threading.Lock())


def test_parse_size_units() -> None:
    assert parse_size("2GB", "max_bytes") == 2 * 1024**3
    assert parse_size("64 MiB", "max_bytes") == 64 * 1024**2
    assert parse_size(100, "max_bytes") == 100
    with pytest.raises(ConfigError):
        parse_size("2 parsecs", "max_bytes")


def test_persistent_cache_ttl_with_real_clock_is_wall_time(caches: SupervisorRef,
                                                           tmp_path: Path) -> None:
    c = Cache.start("wall", persist=True, data_dir=tmp_path, ttl=3600)
    before = time.time()
    c.put("k", 1)
    expires = c._live().data["k"][1]
    assert before + 3600 <= expires <= time.time() + 3600


def test_front_door_exports_and_import_has_no_side_effects(tmp_path: Path) -> None:
    import zixir_actors.cache as front

    for name in front.__all__:
        assert getattr(front, name) is not None
    assert len(set(front.__all__)) == len(front.__all__)
    seen = run_python("""
import json, threading
before = threading.active_count()
import zixir_actors.cache
print(json.dumps({"threads": threading.active_count() - before}))
""", tmp_path)
    assert seen == {"threads": 0}
    assert list(tmp_path.iterdir()) == []      # no data directory, no file


def test_persistent_hit_and_miss_counts_continue_after_a_restart(caches: SupervisorRef,
                                                                 tmp_path: Path) -> None:
    from zixir_actors.cache import stored_caches

    c = Cache.start("counted", persist=True, data_dir=tmp_path)
    c.put("k", 1)
    c.get("k"), c.get("k"), c.get("missing")
    c.stop()
    c = Cache.start("counted", persist=True, data_dir=tmp_path)
    c.get("k")
    assert (c.stats().hits, c.stats().misses) == (3, 1)
    c.stop()
    [stored] = stored_caches(tmp_path)
    assert (stored.name, stored.persistent, stored.entries, stored.hits, stored.misses) == \
        ("counted", True, 1, 3, 1)
    memory_only = Cache.start("scratch")      # no runtime: records nothing anywhere
    memory_only.put("k", 1)
    memory_only.stop()
    assert [s.name for s in stored_caches(tmp_path)] == ["counted"]
