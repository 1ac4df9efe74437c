"""zixir_actors.sandbox: calls in child processes with time, memory, CPU and depth limits."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import mmap
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from supervisors import Supervisor, monitor
from zixir_actors.errors import (
    ConfigError,
    NotStartedError,
    SandboxClosedError,
    SandboxError,
    SoftTimeoutError,
    ZixirTimeoutError,
)
from zixir_actors.observability import metrics, span
from zixir_actors.result import Err, Ok
from zixir_actors.sandbox import (
    DEFAULT_SOFT_GRACE,
    POOL_NAME,
    GetStats,
    Limits,
    Sandbox,
    SandboxPool,
    WorkerPool,
    child_spec,
    parse_size,
)
from zixir_actors.testing import capture_logs, capture_spans, wait_for

MB = 1024**2
MEMORY_LIMIT = 64 * MB
BOUND = 20.0
"""Hard timeout of the limit tests: a call ending with another kind ended before it."""


# --- functions run in the sandbox (module level: workers import them by name) ---

def double(x: int) -> int:
    return x * 2


def fail(message: str) -> None:
    raise ValueError(message)


def spin() -> None:
    # A loop with a body: CPython cannot catch a signal handler's exception
    # raised in `while True: pass`.
    n = 0
    while True:
        n += 1


def allocate_at_once(size: int) -> int:
    return len(b"x" * size)


def allocate_gradually(size: int) -> int:
    chunks = []
    for _ in range(size // MB):
        chunks.append(b"x" * MB)
    return len(chunks)


def recurse(n: int) -> int:
    return recurse(n + 1) + 1


def nest(level: int) -> int:
    with Sandbox(Limits(timeout=BOUND)) as inner:
        return nest_inner(inner, level)


def nest_inner(inner: Sandbox, level: int) -> int:
    return inner.run(nest, level + 1).unwrap()


def make_generator() -> object:
    return (i for i in range(3))


def die(code: int) -> None:
    os._exit(code)


def pid() -> int:
    return os.getpid()


def clean_up_on_soft_timeout(marker: str) -> str:
    try:
        spin()
    except SoftTimeoutError:
        Path(marker).write_text("cleaned up")
        return "swallowed"
    return "unreachable"


def spawn_grandchild_then_spin(pid_file: str) -> None:
    child = subprocess.Popen(["sleep", "600"])
    Path(pid_file).write_text(str(child.pid))
    spin()


def wait_for_file(path: str) -> int:
    """Block until `path` exists (the test creates it), then return this worker's pid."""
    wait_for(lambda: Path(path).exists(), timeout=BOUND, interval=0.001)
    return os.getpid()


SLEEP_WITH_GRANDCHILD = (
    "import subprocess, time\n"
    "child = subprocess.Popen(['sleep', '60'])\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(60)\n")
DAEMON = (
    "import os\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    os.setsid()\n"
    "    os.execvp('sleep', ['sleep', '60'])\n"
    "print(pid, flush=True)\n")
"""Double fork: a `sleep 60` in its own session whose parent has already exited."""


def spawn_tree(pid_file: str) -> list[tuple[int, float]]:
    """Start processes the way calls do; write and return their (pid, create_time).

    Two `sleep 60` children, a child with a `sleep 60` grandchild, a
    `multiprocess` child (a fork of the worker), and a daemon (own session,
    orphaned at once) that neither the process group nor a walk of the call's
    children can see without a subreaper.
    """
    import multiprocess

    procs = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    middle = subprocess.Popen([sys.executable, "-c", SLEEP_WITH_GRANDCHILD],
                              stdout=subprocess.PIPE)
    daemonizer = subprocess.Popen([sys.executable, "-c", DAEMON], stdout=subprocess.PIPE)
    forked = multiprocess.Process(target=time.sleep, args=(60,), daemon=False)
    forked.start()
    assert middle.stdout is not None and daemonizer.stdout is not None
    pids = [p.pid for p in procs] + [middle.pid, int(middle.stdout.readline()),
                                     int(daemonizer.stdout.readline()), forked.pid]
    daemonizer.wait()
    found = [(p, psutil.Process(p).create_time()) for p in pids]
    Path(pid_file + ".tmp").write_text(json.dumps(found))
    os.replace(pid_file + ".tmp", pid_file)
    return found


def spawn_tree_then(pid_file: str, then: str) -> object:
    found = spawn_tree(pid_file)
    if then == "spin":
        spin()
    if then == "allocate":
        allocate_gradually(64 * MEMORY_LIMIT)
    if then == "raise":
        raise ValueError("failed, leaving processes behind")
    return found


CHILD_HOG = (
    "import time\n"
    "chunks = []\n"
    "try:\n"
    "    for _ in range({mb}):\n"
    "        chunks.append(b'x' * 2**20)\n"
    "except MemoryError:\n"
    "    pass\n"
    "time.sleep(60)\n")


def child_hogs_memory(mb: int) -> int:
    """The call itself stays small; the process it starts holds up to `mb` MiB."""
    return subprocess.Popen([sys.executable, "-c", CHILD_HOG.format(mb=mb)]).wait()


HOLD = (
    "import time\n"
    "held = b'x' * ({mb} * 2**20)\n"
    "print('holding', flush=True)\n"
    "time.sleep(60)\n")


def start_holding_child(mb: int) -> int:
    """Start a process that holds `mb` MiB, and return as soon as it does (leaving it running)."""
    child = subprocess.Popen([sys.executable, "-c", HOLD.format(mb=mb)], stdout=subprocess.PIPE)
    assert child.stdout is not None
    assert child.stdout.readline() == b"holding\n"
    return child.pid


def map_anonymous(size: int) -> int:
    with mmap.mmap(-1, size) as mapped:
        return len(mapped)


def allocate_bytearray(size: int) -> int:
    return len(bytearray(size))


def map_then_wrap(size: int) -> int:
    try:
        return map_anonymous(size)
    except OSError as exc:
        raise RuntimeError("could not map the model") from exc


def rss_now() -> int:
    return psutil.Process().memory_info().rss


def write_bytes(size: int) -> int:
    """Touch `size` fresh bytes (RSS grows by about that much), then let them go."""
    return len(b"x" * size)


# --- helpers ---------------------------------------------------------------------


_before: set[psutil.Process] = set()


@pytest.fixture(autouse=True)
def _processes_before() -> Iterator[None]:
    """Remember the processes that existed before the test (other suites may leave some)."""
    _before.clear()
    _before.update(psutil.Process().children(recursive=True))
    yield
    _before.clear()


def _descendants() -> set[psutil.Process]:
    """Processes under this one that the current test started."""
    return set(psutil.Process().children(recursive=True)) - _before


def _gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _pid_gone(pid: int) -> bool:
    """Whether process `pid` has ended: exited, reaped or a zombie. (Asking
    `pid_exists` first races the reaper: the pid can go between the two calls.)"""
    try:
        return _gone(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return True


def assert_no_orphans(procs: set[psutil.Process]) -> None:
    wait_for(lambda: all(_gone(p) for p in procs), timeout=5.0,
             what=f"sandbox processes {sorted(p.pid for p in procs)} to end")


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    box = Sandbox(Limits(timeout=BOUND), name="test")
    try:
        yield box
    finally:
        seen = _descendants()
        box.close()
        assert_no_orphans(seen)


def _only_worker(box: Sandbox) -> int:
    (worker,) = box.pool.worker_pids()
    return worker


# --- sizes and limits ------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("512MB", 512 * MB), ("2GB", 2 * 1024**3), ("1.5GiB", 3 * 1024**3 // 2), ("64mib", 64 * MB),
    ("10KB", 10 * 1024), ("10KiB", 10 * 1024), ("1 GB", 1024**3), ("100", 100), (4096, 4096),
])
def test_parse_size_uses_powers_of_1024(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "lots", "12 parsecs", "-5MB", "0GB", 0, -1, 1.5, None, True])
def test_parse_size_rejects_bad_input_naming_it(bad: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse_size(bad)  # type: ignore[arg-type]
    assert info.value.field == "memory"
    assert info.value.value == bad


def test_limits_normalise_memory_and_validate() -> None:
    assert Limits(memory="2GB").memory == 2 * 1024**3
    assert Limits(soft_timeout=2.0).hard_timeout == 2.0 + DEFAULT_SOFT_GRACE
    assert Limits(soft_timeout=1.0, timeout=3.0).hard_timeout == 3.0
    with pytest.raises(ConfigError, match="soft_timeout"):
        Limits(soft_timeout=3.0, timeout=2.0)
    with pytest.raises(ConfigError, match="memory"):
        Limits(memory="two gigs")
    with pytest.raises(ConfigError, match="timeout"):
        Limits(timeout=-1)
    with pytest.raises(ConfigError, match="max_depth"):
        Limits(max_depth=0)
    with pytest.raises(ConfigError, match="max_cpu_percent"):
        Limits(max_cpu_percent=-5)
    with pytest.raises(ConfigError, match="limits"):
        Sandbox(limits={"timeout": 1})  # type: ignore[arg-type]


def test_sandbox_error_survives_pickling() -> None:
    error = SandboxError("memory", "too big", limit=10, measured=20, remote_type="MemoryError",
                         peak_memory=30, cpu_time=0.5, duration=1.0)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.kind, copy.message, copy.limit, copy.measured, copy.peak_memory) == \
        ("memory", "too big", 10, 20, 30)
    assert str(copy) == str(error)


# --- outcomes --------------------------------------------------------------------


def test_run_returns_ok_for_functions_lambdas_and_closures(sandbox: Sandbox) -> None:
    factor = 3
    assert sandbox.run(double, 21) == Ok(42)
    assert sandbox.run(lambda x: x * factor, 5) == Ok(15)
    assert sandbox.run(sorted, [3, 1, 2], reverse=True) == Ok([3, 2, 1])
    assert sandbox.run(pid).unwrap() != os.getpid()


def test_exception_returns_err_with_remote_type_and_traceback(sandbox: Sandbox) -> None:
    result = sandbox.run(fail, "bad input")
    match result:
        case Err(SandboxError(kind="exception") as error):
            pass
        case _:
            pytest.fail(f"expected an exception error, got {result!r}")
    assert error.remote_type == "ValueError"
    assert "bad input" in error.message
    assert error.remote_traceback is not None
    assert "in fail" in error.remote_traceback and "ValueError: bad input" in error.remote_traceback
    assert isinstance(error.cause, ValueError)
    assert error.peak_memory and error.peak_memory > 0
    assert error.cpu_time is not None and error.cpu_time >= 0
    assert sandbox.run(double, 1) == Ok(2)


def test_infinite_loop_ends_as_timeout_and_the_worker_is_replaced(sandbox: Sandbox) -> None:
    assert sandbox.run(double, 1) == Ok(2)
    first = _only_worker(sandbox)
    result = sandbox.call(spin, limits=Limits(timeout=0.3))
    assert result.is_err
    error = result.unwrap_err()
    assert error.kind == "timeout"
    assert error.limit == 0.3 and error.measured is not None and error.measured >= 0.3
    assert _pid_gone(first)
    assert sandbox.run(double, 2) == Ok(4)
    assert _only_worker(sandbox) != first
    assert sandbox.pool.stats().restarts == 1


def test_soft_timeout_raises_a_catchable_exception_inside_the_call(
        sandbox: Sandbox, tmp_path: Path) -> None:
    marker = tmp_path / "cleanup"
    result = sandbox.call(clean_up_on_soft_timeout, (str(marker),),
                          limits=Limits(soft_timeout=0.2, timeout=BOUND))
    assert marker.read_text() == "cleaned up"
    assert result.unwrap_err().kind == "timeout"
    assert result.unwrap_err().limit == 0.2


def test_uncaught_soft_timeout_reports_the_remote_exception(sandbox: Sandbox) -> None:
    error = sandbox.call(spin, limits=Limits(soft_timeout=0.2, timeout=BOUND)).unwrap_err()
    assert error.kind == "timeout"
    assert error.remote_type == "zixir_actors.errors.SoftTimeoutError"
    assert error.remote_traceback is not None and "in spin" in error.remote_traceback
    assert sandbox.run(double, 3) == Ok(6)


@pytest.mark.parametrize("allocate", [allocate_at_once, allocate_gradually])
def test_allocating_4x_the_memory_limit_ends_as_memory(sandbox: Sandbox, allocate: object) -> None:
    parent_before = psutil.Process().memory_info().rss
    result = sandbox.call(allocate, (4 * MEMORY_LIMIT,),  # type: ignore[arg-type]
                          limits=Limits(memory=MEMORY_LIMIT, timeout=BOUND))
    error = result.unwrap_err()
    assert error.kind == "memory", error
    assert error.limit == MEMORY_LIMIT
    parent_after = psutil.Process().memory_info().rss
    assert parent_after - parent_before < MEMORY_LIMIT // 2
    assert sandbox.run(double, 4) == Ok(8)


def test_rss_breach_reports_the_measured_value(sandbox: Sandbox) -> None:
    error = sandbox.call(allocate_gradually, (4 * MEMORY_LIMIT,),
                         limits=Limits(memory=MEMORY_LIMIT, timeout=BOUND)).unwrap_err()
    assert error.kind == "memory"
    assert error.measured is not None and error.measured > MEMORY_LIMIT
    assert error.peak_memory is not None and error.peak_memory >= error.measured


def test_deep_recursion_ends_as_depth_and_the_worker_survives(sandbox: Sandbox) -> None:
    assert sandbox.run(double, 1) == Ok(2)
    worker = _only_worker(sandbox)
    with capture_logs() as logs:
        error = sandbox.call(recurse, (0,),
                             limits=Limits(max_depth=100, timeout=BOUND)).unwrap_err()
    (breach,) = logs.find("sandbox limit breached")
    assert (breach["reason"], breach["limit"]) == ("depth", 100)
    assert error.kind == "depth"
    assert error.limit == 100
    assert error.remote_type == "RecursionError"
    assert sandbox.run(pid) == Ok(worker)


def test_nested_sandboxed_calls_end_as_depth(sandbox: Sandbox) -> None:
    error = sandbox.run(nest, 0).unwrap_err()
    assert error.kind == "depth"
    assert "max_nesting" in error.message
    assert sandbox.run(double, 5) == Ok(10)


def test_one_level_of_nesting_is_allowed(sandbox: Sandbox) -> None:
    def inner() -> int:
        with Sandbox(Limits(timeout=BOUND, max_nesting=2)) as box:
            return box.run(double, 7).unwrap() + 1
    assert sandbox.run(inner) == Ok(15)


def test_unpicklable_result_is_err_unpicklable(sandbox: Sandbox) -> None:
    error = sandbox.run(make_generator).unwrap_err()
    assert error.kind == "unpicklable"
    assert "generator" in error.message
    assert sandbox.run(double, 6) == Ok(12)


def test_unpicklable_arguments_are_err_unpicklable(sandbox: Sandbox) -> None:
    error = sandbox.run(list, (i for i in range(3))).unwrap_err()
    assert error.kind == "unpicklable"
    assert "argument" in error.message


def test_worker_that_dies_is_err_crashed(sandbox: Sandbox) -> None:
    error = sandbox.run(die, 3).unwrap_err()
    assert error.kind == "crashed"
    assert sandbox.run(double, 7) == Ok(14)
    assert sandbox.pool.stats().restarts == 1


def test_cpu_time_limit_ends_as_cpu(sandbox: Sandbox) -> None:
    error = sandbox.call(spin, limits=Limits(cpu_time=0.2, timeout=BOUND)).unwrap_err()
    assert error.kind == "cpu"
    assert error.limit == 0.2
    # The kernel's CPU timer counts in scheduler ticks: it may fire a tick early.
    assert error.cpu_time is not None and error.cpu_time > 0.1
    assert error.measured == error.cpu_time


def test_cpu_percent_limit_ends_as_cpu_with_the_sample(sandbox: Sandbox) -> None:
    error = sandbox.call(spin, limits=Limits(max_cpu_percent=20, cpu_window=0.2,
                                             timeout=BOUND)).unwrap_err()
    assert error.kind == "cpu"
    assert error.limit == 20
    assert error.cpu_percent is not None and error.cpu_percent > 20
    assert error.measured == error.cpu_percent


FAILURES = {
    "timeout": (spin, (), Limits(timeout=0.2)),
    "memory": (allocate_gradually, (4 * MEMORY_LIMIT,), Limits(memory=MEMORY_LIMIT, timeout=BOUND)),
    "cpu": (spin, (), Limits(cpu_time=0.1, timeout=BOUND)),
    "depth": (recurse, (0,), Limits(max_depth=50, timeout=BOUND)),
    "exception": (fail, ("x",), Limits(timeout=BOUND)),
    "crashed": (die, (9,), Limits(timeout=BOUND)),
    "unpicklable": (make_generator, (), Limits(timeout=BOUND)),
}


@pytest.mark.parametrize("kind", sorted(FAILURES))
@pytest.mark.parametrize("fresh", [False, True], ids=["warm", "fresh"])
def test_pool_recovers_after_each_kind_of_failure(kind: str, fresh: bool) -> None:
    fn, args, limits = FAILURES[kind]
    box = Sandbox(Limits(timeout=BOUND), fresh_process=fresh, size=1, name=f"recover-{kind}")
    try:
        assert box.call(fn, args, limits=limits).unwrap_err().kind == kind
        assert box.run(double, 8) == Ok(16)
        assert box.run(double, 9) == Ok(18)
        assert len(box.pool.worker_pids()) == (0 if fresh else 1)
    finally:
        seen = _descendants()
        box.close()
        assert_no_orphans(seen)


def test_a_kill_takes_the_whole_process_tree(sandbox: Sandbox, tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild"
    error = sandbox.call(spawn_grandchild_then_spin, (str(pid_file),),
                         limits=Limits(timeout=1.0)).unwrap_err()
    assert error.kind == "timeout"
    grandchild = int(pid_file.read_text())
    wait_for(lambda: _pid_gone(grandchild), timeout=5.0, what="the grandchild to be killed")


def _alive(procs: list[list[float]] | list[tuple[int, float]]) -> list[int]:
    """The pids of `procs` that still exist (zombies included; a reused pid is not ours)."""
    alive = []
    for pid_, created in procs:
        try:
            if psutil.Process(int(pid_)).create_time() == created:
                alive.append(int(pid_))
        except psutil.NoSuchProcess:
            pass
    return alive


def _kill_leftovers(pid_file: Path) -> None:
    if pid_file.exists():
        for pid_ in _alive(json.loads(pid_file.read_text())):
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid_).kill()


KILLS = {
    "timeout": ("spin", Limits(timeout=1.0)),
    "soft-timeout": ("spin", Limits(soft_timeout=1.0, timeout=BOUND)),
    "cpu": ("spin", Limits(cpu_time=1.0, timeout=BOUND)),
    # Room for the tree itself (two Python interpreters): the allocation breaks the limit.
    "memory": ("allocate", Limits(memory=4 * MEMORY_LIMIT, timeout=BOUND)),
}


@pytest.mark.parametrize("kind", sorted(KILLS))
def test_a_killed_call_takes_its_whole_process_tree_before_err_returns(
        sandbox: Sandbox, tmp_path: Path, kind: str) -> None:
    then, limits = KILLS[kind]
    pid_file = tmp_path / "pids"
    try:
        error = sandbox.call(spawn_tree_then, (str(pid_file), then), limits=limits).unwrap_err()
        assert error.kind == kind.removeprefix("soft-")
        procs = json.loads(pid_file.read_text())
        assert len(procs) == 6
        # Killed and reaped by the time the Err is back: not even a zombie is left.
        assert _alive(procs) == []
        assert sandbox.run(double, 1) == Ok(2)
    finally:
        _kill_leftovers(pid_file)


@pytest.mark.parametrize("then", ["return", "raise"])
@pytest.mark.parametrize("fresh", [False, True], ids=["warm", "fresh"])
def test_processes_a_call_leaves_running_end_before_its_result_returns(
        tmp_path: Path, then: str, fresh: bool) -> None:
    pid_file = tmp_path / "pids"
    box = Sandbox(Limits(timeout=BOUND), fresh_process=fresh, size=1, name="leftovers")
    try:
        worker = None if fresh else box.run(pid).unwrap()
        result = box.call(spawn_tree_then, (str(pid_file), then))
        if then == "return":
            procs = result.unwrap()
        else:
            assert result.unwrap_err().kind == "exception"
            procs = json.loads(pid_file.read_text())
        assert len(procs) == 6
        assert _alive(procs) == []
        if worker is not None:  # the warm worker was cleaned, not replaced
            assert box.run(pid) == Ok(worker)
            assert box.pool.stats().restarts == 0
    finally:
        _kill_leftovers(pid_file)
        seen = _descendants()
        box.close()
        assert_no_orphans(seen)


@pytest.mark.parametrize("allocate", [map_anonymous, allocate_bytearray, map_then_wrap])
def test_a_2gb_allocation_under_a_256mb_limit_is_memory(sandbox: Sandbox,
                                                        allocate: object) -> None:
    error = sandbox.call(allocate, (2 * 1024**3,),  # type: ignore[arg-type]
                         limits=Limits(memory="256MB", timeout=BOUND)).unwrap_err()
    assert error.kind == "memory", error
    assert error.limit == 256 * MB
    assert sandbox.run(double, 1) == Ok(2)


@pytest.mark.parametrize("fresh", [False, True], ids=["warm", "fresh"])
def test_a_one_byte_memory_limit_never_returns_ok(fresh: bool) -> None:
    box = Sandbox(Limits(timeout=BOUND, memory=1), fresh_process=fresh, size=1, name="one-byte")
    try:
        for fn, args in [(double, (1,)), (pow, (2, 8)), (fail, ("x",)), (pid, ())]:
            error = box.call(fn, args).unwrap_err()
            assert error.kind == "memory", (fn, error)
            assert error.limit == 1
            assert error.measured is not None and error.measured > 1
        assert box.call(double, (2,), limits=Limits(timeout=BOUND)) == Ok(4)
    finally:
        seen = _descendants()
        box.close()
        assert_no_orphans(seen)


def test_a_call_shorter_than_the_sampling_interval_is_checked_when_it_ends() -> None:
    # The monitor's first sample would come an hour in: only the end-of-call check can see it.
    pool = WorkerPool(size=1, name="unsampled", sample_interval=3600.0)
    try:
        with Sandbox(Limits(timeout=BOUND), pool=pool) as box:
            base = box.run(rss_now).unwrap()
            limit = base + 32 * MB
            # 40 MiB more RSS breaks the limit, yet stays under the address-space cap.
            error = box.call(write_bytes, (40 * MB,),
                             limits=Limits(memory=limit, timeout=BOUND)).unwrap_err()
            assert error.kind == "memory", error
            assert error.limit == limit
            assert error.measured is not None and error.measured > limit
            assert error.peak_memory is not None and error.peak_memory >= error.measured
            assert box.call(write_bytes, (MB,), limits=Limits(memory=limit + 64 * MB,
                                                              timeout=BOUND)) == Ok(MB)
            assert pool.stats().restarts == 1
    finally:
        seen = _descendants()
        pool.close()
        assert_no_orphans(seen)


def test_a_process_a_short_call_left_running_counts_at_its_peak_when_the_call_ends() -> None:
    pool = WorkerPool(size=1, name="unsampled-children", sample_interval=3600.0)
    try:
        with Sandbox(Limits(timeout=BOUND), pool=pool) as box:
            limit = box.run(rss_now).unwrap() + 32 * MB
            # An unlimited call's bigger child first: the worker's lifetime peak of
            # its children is then above what the limited call's child reaches.
            assert box.run(start_holding_child, (limit + 48 * MB) // MB).is_ok
            error = box.call(start_holding_child, ((limit + 16 * MB) // MB,),
                             limits=Limits(memory=limit, timeout=BOUND)).unwrap_err()
            assert error.kind == "memory", error
            assert error.measured is not None and error.measured > limit
    finally:
        seen = _descendants()
        pool.close()
        assert_no_orphans(seen)


def test_memory_of_processes_the_call_starts_counts_toward_its_limit(sandbox: Sandbox) -> None:
    error = sandbox.call(child_hogs_memory, (4 * MEMORY_LIMIT // MB,),
                         limits=Limits(memory=MEMORY_LIMIT, timeout=BOUND)).unwrap_err()
    assert error.kind == "memory", error
    assert error.measured is not None and error.measured > MEMORY_LIMIT


def test_a_sandbox_can_name_an_executor_that_nothing_has_loaded_yet(tmp_path: Path) -> None:
    # A fresh process that imports only the sandbox: the executor package is
    # loaded through the package's seam, never imported by the sandbox itself.
    script = (
        "import sys\n"
        "from zixir_actors.sandbox import Limits, Sandbox\n"
        "assert 'zixir_actors.executor' not in sys.modules\n"
        "with Sandbox(Limits(timeout=60), executor='local') as box:\n"
        "    assert box.run(abs, -3).unwrap() == 3\n"
        "from zixir_actors.sandbox._offload import accepts_executor\n"
        "assert accepts_executor('ray') and not accepts_executor('spark')\n"
        "print('ok')\n")
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_the_sandbox_never_imports_the_executor() -> None:
    """The executor uses sandbox workers; the sandbox reaches executors through a seam only."""
    package = Path(__file__).resolve().parent.parent / "zixir_actors"

    def imported(folder: str) -> set[str]:
        names: set[str] = set()
        for file in (package / folder).glob("*.py"):
            for node in ast.walk(ast.parse(file.read_text())):
                if isinstance(node, ast.Import):
                    names.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom):
                    if node.level:  # relative: resolve against zixir_actors.<folder>
                        parts = ["zixir_actors", folder][:3 - node.level]
                        base = ".".join(parts + ([node.module] if node.module else []))
                    else:
                        base = node.module or ""
                    names.add(base)
                    names.update(f"{base}.{alias.name}" for alias in node.names)
                elif isinstance(node, ast.Call) and node.args \
                        and isinstance(node.args[0], ast.Constant) \
                        and isinstance(node.args[0].value, str):
                    names.add(node.args[0].value)  # import_module("..."), __import__("...")
        return names

    def reaches(names: set[str], target: str) -> list[str]:
        return sorted(n for n in names if n == target or n.startswith(target + "."))

    assert reaches(imported("sandbox"), "zixir_actors.executor") == []
    assert reaches(imported("executor"), "zixir_actors.sandbox")  # the one way


def test_idle_worker_killed_from_outside_is_replaced(sandbox: Sandbox) -> None:
    assert sandbox.run(double, 1) == Ok(2)
    worker = _only_worker(sandbox)
    os.kill(worker, signal.SIGKILL)
    wait_for(lambda: _pid_gone(worker), timeout=5.0)
    assert sandbox.run(double, 2) == Ok(4)
    assert _only_worker(sandbox) != worker
    assert sandbox.pool.stats().restarts == 1


def test_helper_process_killed_from_outside_is_restarted() -> None:
    box = Sandbox(Limits(timeout=BOUND), fresh_process=True)
    try:
        assert box.run(double, 1) == Ok(2)
        (helper,) = [p for p in psutil.Process().children() if p in _descendants()]
        helper.kill()
        wait_for(lambda: _gone(helper), timeout=5.0)
        assert box.run(double, 2) == Ok(4)
    finally:
        seen = _descendants()
        box.close()
        assert_no_orphans(seen)


def test_fresh_process_runs_every_call_in_a_new_process() -> None:
    box = Sandbox(Limits(timeout=BOUND), fresh_process=True)
    try:
        pids = {box.run(pid).unwrap() for _ in range(3)}
        assert len(pids) == 3
        assert box.call(pid, fresh_process=False).unwrap() not in pids
    finally:
        seen = _descendants()
        box.close()
        assert_no_orphans(seen)


def test_run_async_gives_a_future_for_get_and_await(sandbox: Sandbox) -> None:
    future = sandbox.run_async(double, 10)
    assert future.get(BOUND) == Ok(20)
    assert future.done()

    async def both() -> list[object]:
        return list(await asyncio.gather(sandbox.run_async(double, 1),
                                         sandbox.run_async(fail, "async")))

    ok, err = asyncio.run(both())
    assert ok == Ok(2)
    assert isinstance(err, Err) and err.error.kind == "exception"


def test_future_get_times_out_while_the_call_runs(sandbox: Sandbox, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    future = sandbox.run_async(wait_for_file, str(gate))
    with pytest.raises(ZixirTimeoutError):
        future.get(0.05)
    assert not future.done()
    gate.touch()
    assert future.get(BOUND).is_ok


def test_concurrent_calls_each_get_a_worker_and_the_pool_keeps_its_size(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    box = Sandbox(Limits(timeout=BOUND), size=2, name="concurrent")
    try:
        futures = [box.run_async(wait_for_file, str(gate)) for _ in range(4)]
        wait_for(lambda: box.pool.stats().busy == 4, timeout=BOUND)
        gate.touch()
        pids = {f.get(BOUND).unwrap() for f in futures}
        assert len(pids) == 4
        stats = box.pool.stats()
        assert (stats.idle, stats.busy, stats.restarts) == (2, 0, 0)
    finally:
        seen = _descendants()
        box.close()
        assert_no_orphans(seen)


def test_without_learned_imports_calls_still_work() -> None:
    box = Sandbox(Limits(timeout=BOUND), fresh_process=True, learn_imports=False)
    try:
        assert box.run(double, 11) == Ok(22)
        assert box.run(double, 12) == Ok(24)
    finally:
        seen = _descendants()
        box.close()
        assert_no_orphans(seen)


def test_closed_sandbox_refuses_calls() -> None:
    box = Sandbox(Limits(timeout=BOUND))
    box.close()
    box.close()
    with pytest.raises(SandboxClosedError):
        box.run(double, 1)
    with pytest.raises(SandboxClosedError):
        box.run_async(double, 1)


def test_shared_worker_pool_is_not_closed_by_its_sandboxes() -> None:
    pool = WorkerPool(size=1, name="shared")
    try:
        with Sandbox(Limits(timeout=BOUND), pool=pool) as box:
            assert box.run(double, 2) == Ok(4)
        with Sandbox(Limits(timeout=BOUND), pool=pool) as box:
            assert box.run(double, 3) == Ok(6)
        assert pool.stats().calls == 2
    finally:
        seen = _descendants()
        pool.close()
        assert_no_orphans(seen)


# --- the SandboxPool actor ---------------------------------------------------------


def test_sandbox_pool_runs_under_a_supervisor_and_counts_replacements() -> None:
    sup = Supervisor.start_link([child_spec(size=1)], name="test.sandbox.root")
    try:
        assert child_spec().name == POOL_NAME
        with Sandbox(Limits(timeout=BOUND), pool=POOL_NAME) as box:
            assert box.run(double, 4) == Ok(8)
            assert box.call(spin, limits=Limits(timeout=0.2)).unwrap_err().kind == "timeout"
            assert box.run(double, 5) == Ok(10)
            stats = box.pool.stats()
            assert (stats.restarts, stats.calls, stats.idle) == (1, 3, 1)
    finally:
        seen = _descendants()
        sup.stop()
        assert_no_orphans(seen)


def test_named_sandbox_follows_the_pool_across_its_restart() -> None:
    sup = Supervisor.start_link([child_spec(size=1)], name="test.sandbox.root")
    try:
        with Sandbox(Limits(timeout=BOUND), pool=POOL_NAME) as box:
            assert box.run(double, 1) == Ok(2)
            old = box.pool
            (child,) = sup.which_children()
            down = monitor(child.ref)
            with pytest.raises(TypeError):
                child.ref.ask("not a message", timeout=BOUND)
            down.wait(timeout=BOUND)
            assert old.closed
            assert box.run(double, 2) == Ok(4)
            assert box.pool is not old
            assert isinstance(sup.which_children()[0].ref.ask(GetStats(), timeout=BOUND).calls, int)
    finally:
        seen = _descendants()
        sup.stop()
        assert_no_orphans(seen)


def test_named_pool_that_is_not_running_is_not_started_error() -> None:
    with Sandbox(pool="test.no.such.pool", pool_timeout=0.1) as box, \
            pytest.raises(NotStartedError):
        box.run(double, 1)


def test_sandbox_pool_actor_stops_its_processes() -> None:
    ref = SandboxPool.start(size=2)
    seen: set[psutil.Process] = set()
    try:
        assert ref.ask(GetStats(), timeout=BOUND).idle == 2  # answered once on_start is done
        seen = _descendants()
        assert len(seen) >= 3  # the helper, two warm workers and a spare
    finally:
        ref.stop()
        assert_no_orphans(seen)


# --- observability -----------------------------------------------------------------


def test_breaches_are_counted_logged_and_recorded_on_the_span(sandbox: Sandbox) -> None:
    def count(name: str, **labels: str) -> float:
        return metrics.sample(name, labels) or 0.0

    calls_before = count("zixir_sandbox_calls_total", outcome="timeout")
    ok_before = count("zixir_sandbox_calls_total", outcome="ok")
    kills_before = count("zixir_sandbox_kills_total", reason="timeout")
    restarts_before = count("zixir_sandbox_worker_restarts_total", pool="test")
    actor_restarts_before = count("zixir_actor_restarts_total", supervisor="test",
                                  child="sandbox-worker")
    with capture_logs() as logs, capture_spans() as spans, span("agent.tool"):
        assert sandbox.run(double, 1) == Ok(2)
        assert sandbox.call(spin, limits=Limits(timeout=0.2)).is_err
    assert count("zixir_sandbox_calls_total", outcome="timeout") == calls_before + 1
    assert count("zixir_sandbox_calls_total", outcome="ok") == ok_before + 1
    assert count("zixir_sandbox_kills_total", reason="timeout") == kills_before + 1
    assert count("zixir_sandbox_worker_restarts_total", pool="test") == restarts_before + 1
    assert count("zixir_actor_restarts_total", supervisor="test",
                 child="sandbox-worker") == actor_restarts_before + 1
    assert (metrics.sample("zixir_sandbox_call_duration_seconds_count") or 0) >= 2
    (killed,) = logs.find("sandbox worker killed")
    assert killed["reason"] == "timeout" and killed["limit"] == 0.2
    assert killed["measured"] >= 0.2
    (record,) = spans.named("agent.tool")
    events = [(e.name, e.attributes.get("outcome")) for e in record.events]
    assert events == [("sandbox.call", "ok"), ("sandbox.kill", None),
                      ("sandbox.call", "timeout")]
