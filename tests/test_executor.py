"""Executors: the local and Ray executors behind one seam, limits, lost workers, traces, metrics.

The Ray tests share one local cluster started once for the session
(``ray.init(num_cpus=2)`` on the loopback address); they are skipped, with
the reason shown, only when Ray is not installed.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import functools
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _ray_cluster import NO_RAY, alive, local_cluster, sleep_forever

from zixir_actors.checkpoint import CheckpointClient, open_store
from zixir_actors.errors import (
    ClusterConnectionError,
    ConfigError,
    ExecutorError,
    ExecutorUnavailableError,
    InvalidStepError,
    RemoteCancelledError,
    RemoteError,
    RemoteLostError,
    RemoteTimeoutError,
    ZixirTimeoutError,
)
from zixir_actors.executor import (
    Executor,
    LocalActorPool,
    LocalExecutor,
    RayExecutor,
    Resources,
    TraceContext,
    configure,
    current_trace_context,
    default_executor,
    get_executor,
    offload,
    remote_callable,
    reset,
    run_sandboxed,
    sandbox_error,
    warm_state,
)
from zixir_actors.observability import metrics, span
from zixir_actors.result import Err, Ok
from zixir_actors.sandbox import Limits, Sandbox
from zixir_actors.stream import Stream, parallel, pmap
from zixir_actors.testing import FakeClock, capture_spans, wait_for
from zixir_actors.workflow import DeadLetters, RetryPolicy, Step, StepContext, Workflow

HERE = Path(__file__).resolve().parent
WAIT = 60.0
"""Seconds any single remote call of these tests may take (a cold Ray worker included)."""




@pytest.fixture(scope="session", autouse=True)
def ray_session() -> Iterator[RayExecutor | None]:
    """A local Ray cluster for the whole session, on the loopback address (None without Ray).

    Autouse, so that it starts before the first test takes its snapshot of
    threads: Ray's own driver threads are not a test's leak.
    """
    with local_cluster() as available:
        yield RayExecutor() if available else None


@pytest.fixture
def ray_executor(ray_session: RayExecutor | None) -> RayExecutor:
    if ray_session is None:
        pytest.skip(NO_RAY)
    return ray_session


@pytest.fixture
def ray_cluster(ray_executor: RayExecutor) -> Any:
    import ray

    return ray


@pytest.fixture
def executor(request: pytest.FixtureRequest) -> Iterator[Executor]:
    """Each executor kind, for tests parametrized with ``indirect=True``."""
    if request.param == "ray":
        yield request.getfixturevalue("ray_executor")
    elif request.param == "processes":
        with LocalExecutor(processes=1) as procs:
            yield procs
    else:
        yield LocalExecutor()


ALL = pytest.mark.parametrize("executor", ["local", "processes", "ray"], indirect=True)
ISOLATED = pytest.mark.parametrize("executor", ["processes", "ray"], indirect=True)


def _fails(n: int) -> int:
    raise KeyError(f"no item {n}")


def _hog_memory() -> int:
    keep = []
    while True:
        keep.append(bytearray(8 * 2**20))


def _recurse(n: int) -> int:
    return _recurse(n + 1)


def _spin() -> None:
    n = 0
    while True:
        n += 1


def _die_once(marker: str) -> str:
    if not os.path.exists(marker):
        Path(marker).write_text("died")
        os.kill(os.getpid(), signal.SIGKILL)
    return "second try"


class _Unpicklable(Exception):
    def __init__(self, lock: Any) -> None:
        super().__init__("holds a lock")
        self.lock = lock

    def __reduce__(self) -> Any:
        raise TypeError("cannot pickle me")


def _raise_unpicklable() -> None:
    raise _Unpicklable(threading.Lock())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the seam, on every executor -----------------------------------------------------


@ALL
def test_submit_returns_the_value_with_args_and_kwargs(executor: Executor) -> None:
    future = executor.submit(int, "ff", kwargs={"base": 16}, resources=Resources(num_cpus=1))
    assert future.get(timeout=WAIT) == 255
    assert future.done() and not future.cancelled()
    assert future.remote_duration is not None and future.pid is not None


@ALL
def test_a_remote_exception_comes_back_as_itself_with_its_traceback(executor: Executor) -> None:
    future = executor.submit(_fails, 7)
    with pytest.raises(KeyError, match="no item 7") as caught:
        future.get(timeout=WAIT)
    assert "_fails" in caught.value.remote_traceback  # type: ignore[attr-defined]
    assert any("remote call '_fails'" in note for note in caught.value.__notes__)


@ALL
def test_an_unpicklable_exception_comes_back_as_remote_error(executor: Executor) -> None:
    with pytest.raises(RemoteError) as caught:
        executor.submit(_raise_unpicklable).get(timeout=WAIT)
    assert caught.value.remote_type == "_Unpicklable"
    assert "holds a lock" in caught.value.message


@ALL
def test_a_future_can_be_awaited(executor: Executor) -> None:
    async def main() -> int:
        return await executor.submit(sum, [1, 2, 3])

    assert asyncio.run(main()) == 6


def test_waiting_less_than_the_call_takes_is_a_timeout_of_the_wait_only() -> None:
    gate = threading.Event()
    future = LocalExecutor().submit(gate.wait, 30)
    with pytest.raises(ZixirTimeoutError) as caught:
        future.get(timeout=0.05)
    assert not isinstance(caught.value, RemoteTimeoutError)
    gate.set()
    assert future.get(timeout=WAIT) is True


@ISOLATED
def test_a_memory_limit_ends_as_err_memory(executor: Executor) -> None:
    outcome = run_sandboxed(executor, _hog_memory, limits=Limits(memory="400MB", timeout=WAIT))
    assert isinstance(outcome, Err)
    assert outcome.error.kind == "memory"
    assert outcome.error.limit == 400 * 2**20
    assert outcome.error.measured > outcome.error.limit


@ISOLATED
def test_a_one_byte_memory_limit_is_never_ok_even_for_a_short_call(executor: Executor) -> None:
    # Far shorter than a sampling interval: only the check when the call ends can see it.
    for fn, args in [(pow, (2, 5)), (abs, (-1,))]:
        outcome = run_sandboxed(executor, fn, args, limits=Limits(memory=1, timeout=WAIT))
        assert isinstance(outcome, Err), (fn, outcome)
        assert outcome.error.kind == "memory"
        assert outcome.error.limit == 1
        assert outcome.error.measured is not None and outcome.error.measured > 1
    assert run_sandboxed(executor, pow, (2, 5), limits=Limits(memory="1GB")) == Ok(32)


def test_an_allocation_refused_with_enomem_is_a_memory_error() -> None:
    refused = OSError(errno.ENOMEM, "Cannot allocate memory")
    assert sandbox_error(refused).kind == "memory"
    try:
        try:
            raise refused
        except OSError as exc:
            raise RuntimeError("could not map the model") from exc
    except RuntimeError as wrapped:
        assert sandbox_error(wrapped).kind == "memory"
    assert sandbox_error(OSError(errno.ENOENT, "No such file")).kind == "exception"


@ISOLATED
def test_depth_and_cpu_limits_end_as_their_kinds(executor: Executor) -> None:
    depth = run_sandboxed(executor, _recurse, (0,), limits=Limits(max_depth=200))
    cpu = run_sandboxed(executor, _spin, limits=Limits(cpu_time=0.2, timeout=WAIT))
    assert isinstance(depth, Err) and depth.error.kind == "depth"
    assert isinstance(cpu, Err) and cpu.error.kind == "cpu"
    assert run_sandboxed(executor, pow, (2, 5), limits=Limits(max_depth=200)) == Ok(32)


@ALL
def test_a_sandboxed_exception_is_err_exception_with_the_remote_type(executor: Executor) -> None:
    outcome = run_sandboxed(executor, _fails, (3,), limits=Limits(timeout=WAIT))
    assert isinstance(outcome, Err)
    assert outcome.error.kind == "exception"
    assert outcome.error.remote_type == "KeyError"
    assert isinstance(outcome.error.cause, KeyError)


def test_limits_a_thread_cannot_enforce_go_to_a_worker_process() -> None:
    with LocalExecutor() as executor:
        outcome = run_sandboxed(executor, _recurse, (0,), limits=Limits(max_depth=100))
        pid = executor.submit(os.getpid, limits=Limits(max_depth=100)).get(timeout=WAIT)
    assert isinstance(outcome, Err) and outcome.error.kind == "depth"
    assert pid != os.getpid()


def test_a_local_timeout_abandons_the_call_and_says_so(tmp_path: Path) -> None:
    gate = threading.Event()
    future = LocalExecutor().submit(gate.wait, 30, timeout=0.05)
    with pytest.raises(RemoteTimeoutError) as caught:
        future.get(timeout=WAIT)
    assert caught.value.timeout == 0.05 and caught.value.kind == "timeout"
    assert isinstance(caught.value, TimeoutError)
    gate.set()


def test_the_trace_context_travels_with_a_local_call() -> None:
    with capture_spans() as spans, span("caller") as caller:
        sent = LocalExecutor().submit(current_trace_context).get(timeout=WAIT)
    task = spans.named("executor.task")[0]
    assert task.parent_id == caller.span_id and task.trace_id == caller.trace_id
    assert sent == TraceContext(caller.trace_id, task.span_id)
    assert task.attributes["outcome"] == "ok" and task.attributes["executor"] == "local"


def test_an_explicit_trace_context_is_the_one_that_travels() -> None:
    given = TraceContext("ab" * 16, "cd" * 8)
    assert LocalExecutor().submit(current_trace_context,
                                  trace_context=given).get(timeout=WAIT) == given
    assert given.traceparent == f"00-{'ab' * 16}-{'cd' * 8}-01"


# -- argument checks -------------------------------------------------------------------


@pytest.mark.parametrize(("call", "field"), [
    (lambda ex: ex.submit(42), "fn"),
    (lambda ex: ex.submit(abs, 1, timeout=0), "timeout"),
    (lambda ex: ex.submit(abs, 1, timeout=True), "timeout"),
    (lambda ex: ex.submit(abs, 1, kwargs=[1]), "kwargs"),
    (lambda ex: ex.submit(abs, 1, resources={"num_cpus": 1}), "resources"),
    (lambda ex: ex.submit(abs, 1, trace_context="00-ab"), "trace_context"),
])
def test_bad_submit_arguments_are_config_errors_naming_them(
        call: Callable[[LocalExecutor], Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        call(LocalExecutor())
    assert caught.value.field == field


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"num_cpus": -1}, "num_cpus"),
    ({"num_gpus": float("nan")}, "num_gpus"),
    ({"memory": "lots"}, "memory"),
    ({"custom": {"": 1}}, "custom"),
])
def test_bad_resources_are_config_errors(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Resources(**kwargs)
    assert caught.value.field == field


def test_resources_become_ray_options() -> None:
    resources = Resources(num_cpus=2, num_gpus=0.5, memory="1GB", custom={"tpu": 1})
    assert resources.ray_options() == {"num_cpus": 2, "num_gpus": 0.5, "memory": 2**30,
                                       "resources": {"tpu": 1}}
    assert hash(resources) == hash(Resources(2, 0.5, 2**30, {"tpu": 1}))


def test_an_unknown_executor_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="executor"):
        get_executor("dask")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        offload("spark")  # type: ignore[arg-type]


def test_asking_for_ray_without_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without Ray looks like
    with pytest.raises(ExecutorUnavailableError) as caught:
        RayExecutor()
    assert "pip install 'zixir-actors[ray]'" in str(caught.value)
    assert caught.value.extra == "ray" and isinstance(caught.value, ImportError)
    with pytest.raises(ExecutorUnavailableError):
        configure("ray")
    assert default_executor() is None


def test_a_hand_made_trace_context_that_is_not_hex_runs_the_call_without_a_parent() -> None:
    # As on Ray: ids that are not hex name no span, so the call runs without a
    # parent span instead of failing (in a thread or in a worker process).
    odd = TraceContext("not-a-trace", "zz")
    with LocalExecutor() as threads, LocalExecutor(processes=1) as processes:
        for executor in (threads, processes):
            assert executor.submit(divmod, 7, 2, trace_context=odd).get(timeout=WAIT) == (3, 1)


def test_a_shut_down_local_executor_refuses_work() -> None:
    executor = LocalExecutor(processes=1)
    executor.shutdown()
    with pytest.raises(ExecutorError, match="shut down"):
        executor.submit(abs, -1)
    with pytest.raises(ConfigError):
        LocalExecutor(processes=0)


# -- choosing an executor ---------------------------------------------------------------


def test_offload_prefers_the_most_specific_choice() -> None:
    local = LocalExecutor()
    assert offload(None, None) is None
    assert offload(local, "ray") is local
    assert offload("local", "ray") is None
    assert offload(None, local) is local
    assert get_executor("local").name == "local"
    assert get_executor(local) is local


def test_any_object_with_the_executor_members_is_a_choice_and_nothing_else() -> None:
    class Custom:
        name = "custom"

        def submit(self, fn: Any, /, *args: Any, **options: Any) -> Any:
            return LocalExecutor().submit(fn, *args, **options)

        def shutdown(self, *, timeout: float | None = None) -> None:
            return None

    class Half:
        name = "half"

        def submit(self, fn: Any, /, *args: Any, **options: Any) -> Any:
            return None

    custom = Custom()
    for _ in range(2):  # the second time, from what the first one learnt
        assert offload(None, custom) is custom and get_executor(custom) is custom
        with pytest.raises(ConfigError):
            offload(Half())  # type: ignore[arg-type]
    late = Half()
    late.shutdown = lambda **_: None  # type: ignore[attr-defined]
    assert offload(late) is late  # type: ignore[arg-type]  # its own attribute counts
    with pytest.raises(ConfigError):
        offload(Half())  # type: ignore[arg-type]  # but not for the others of its class


def test_configure_sets_the_default_that_offload_falls_back_to() -> None:
    local = LocalExecutor()
    try:
        assert configure(local) is local
        assert default_executor() is local and offload(None, None) is local
        assert offload("local") is None
        assert get_executor() is local
    finally:
        reset()
    assert default_executor() is None and offload(None) is None


def test_remote_callable_runs_each_call_on_the_executor() -> None:
    seen: list[str] = []

    def where(x: int) -> int:
        seen.append(threading.current_thread().name)
        return x + 1

    wrapped = remote_callable(where, LocalExecutor())
    assert [wrapped(i) for i in range(3)] == [1, 2, 3]
    assert wrapped.__name__ == "where"
    assert all(name.startswith("zixir-exec-") for name in seen)


# -- actor pools: warm state ---------------------------------------------------------------


def test_a_local_actor_pool_builds_warm_state_once_per_worker() -> None:
    built: list[int] = []

    def setup() -> dict[str, int]:
        built.append(1)
        return {"model": len(built)}

    with LocalActorPool(setup, size=2) as pool:
        models = {pool.submit(lambda: warm_state()["model"]).get(timeout=WAIT) for _ in range(6)}
    assert len(built) <= 2 and models <= {1, 2}
    with pytest.raises(ExecutorError, match="actor pool"):
        warm_state()
    with pytest.raises(ExecutorError):
        pool.submit(abs, 1)


# -- Ray -----------------------------------------------------------------------------------


def test_a_ray_task_runs_in_a_ray_worker_with_its_resources(ray_executor: RayExecutor) -> None:
    def assigned() -> tuple[int, dict[str, float]]:
        import ray

        return os.getpid(), dict(ray.get_runtime_context().get_assigned_resources())

    pid, resources = ray_executor.submit(assigned,
                                         resources=Resources(num_cpus=2)).get(timeout=WAIT)
    assert pid != os.getpid()
    assert resources == {"CPU": 2.0}


def test_a_ray_timeout_cancels_the_task_and_kills_its_worker(ray_executor: RayExecutor,
                                                             tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    future = ray_executor.submit(sleep_forever, str(marker), timeout=3.0)
    with pytest.raises(RemoteTimeoutError) as caught:
        future.get(timeout=WAIT)
    assert caught.value.executor == "ray" and caught.value.timeout == 3.0
    pid = int(marker.read_text())
    wait_for(lambda: not alive(pid), timeout=WAIT, what="the timed-out worker to be killed")
    assert ray_executor.submit(abs, -4).get(timeout=WAIT) == 4


def test_cancel_kills_a_running_ray_task(ray_executor: RayExecutor, tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    future = ray_executor.submit(sleep_forever, str(marker))
    wait_for(marker.exists, timeout=WAIT, what="the task to start")
    assert future.cancel() is True
    assert future.cancel() is False and future.cancelled()
    with pytest.raises(RemoteCancelledError):
        future.get(timeout=WAIT)
    wait_for(lambda: not alive(int(marker.read_text())), timeout=WAIT,
             what="the cancelled worker to be killed")


def test_a_lost_ray_worker_is_a_typed_failure_a_retry_survives(ray_executor: RayExecutor,
                                                               tmp_path: Path) -> None:
    marker = str(tmp_path / "died")
    with pytest.raises(RemoteLostError) as caught:
        ray_executor.submit(_die_once, marker).get(timeout=WAIT)
    assert caught.value.reason == "worker" and caught.value.task == "_die_once"
    assert ray_executor.submit(_die_once, marker).get(timeout=WAIT) == "second try"


def test_resources_no_node_has_are_refused_at_once(ray_executor: RayExecutor) -> None:
    with pytest.raises(ConfigError, match="GPU=0"):
        ray_executor.submit(abs, 1, resources=Resources(num_gpus=1))
    with pytest.raises(ConfigError, match="CPU=2"):
        ray_executor.submit(abs, 1, resources=Resources(num_cpus=64))


def test_the_trace_context_travels_with_a_ray_task(ray_executor: RayExecutor) -> None:
    with capture_spans() as spans, span("caller") as caller:
        sent = ray_executor.submit(current_trace_context).get(timeout=WAIT)
    task = spans.named("executor.task")[0]
    assert sent == TraceContext(caller.trace_id, task.span_id)
    assert task.parent_id == caller.span_id
    assert task.attributes["executor"] == "ray" and task.attributes["pid"] != os.getpid()
    assert task.attributes["remote_duration"] >= 0


def test_remote_outcomes_and_durations_land_in_zixir_metrics(ray_executor: RayExecutor) -> None:
    def sample(name: str, **labels: str) -> float:
        return metrics.sample(name, {"executor": "ray", **labels}) or 0.0

    ok, failed = sample("zixir_executor_tasks_total", outcome="ok"), \
        sample("zixir_executor_tasks_total", outcome="error")
    remote = sample("zixir_executor_remote_duration_seconds_count")
    ray_executor.submit(abs, -1).get(timeout=WAIT)
    with pytest.raises(KeyError):
        ray_executor.submit(_fails, 1).get(timeout=WAIT)
    assert sample("zixir_executor_tasks_total", outcome="ok") == ok + 1
    assert sample("zixir_executor_tasks_total", outcome="error") == failed + 1
    assert sample("zixir_executor_remote_duration_seconds_count") == remote + 2
    assert sample("zixir_executor_in_flight") == 0


def test_a_ray_actor_pool_keeps_warm_state_and_survives_a_lost_actor(
        ray_executor: RayExecutor) -> None:
    with ray_executor.actor_pool(lambda: {"model": os.getpid()}, size=2) as pool:
        pids = pool.wait_ready(timeout=WAIT)
        seen = {pool.submit(lambda: warm_state()["model"]).get(timeout=WAIT) for _ in range(4)}
        assert seen == set(pids)
        with pytest.raises(RemoteLostError) as caught:
            pool.submit(lambda: os.kill(os.getpid(), signal.SIGKILL)).get(timeout=WAIT)
        assert caught.value.reason == "actor"
        again = {pool.submit(lambda: warm_state()["model"] == os.getpid()).get(timeout=WAIT)
                 for _ in range(4)}
        assert again == {True}


@pytest.mark.parametrize(("make", "outcome", "error", "reason"), [
    (lambda e: e.OutOfMemoryError("node out of memory"), "memory", "RemoteMemoryError", None),
    (lambda e: e.TaskCancelledError("t"), "cancelled", "RemoteCancelledError", None),
    (lambda e: e.NodeDiedError("node gone"), "lost", "RemoteLostError", "node"),
    (lambda e: e.LocalRayletDiedError(), "lost", "RemoteLostError", "node"),
    (lambda e: e.WorkerCrashedError(), "lost", "RemoteLostError", "worker"),
    (lambda e: e.RayActorError(), "lost", "RemoteLostError", "actor"),
    (lambda e: e.ActorUnavailableError("restarting", None), "lost", "RemoteLostError", "actor"),
    (lambda e: e.ObjectLostError("ab" * 14, None, ""), "lost", "RemoteLostError", "object"),
    (lambda e: e.OwnerDiedError("ab" * 14, None, ""), "lost", "RemoteLostError", "object"),
    (lambda e: e.RaySystemError("gcs unreachable"), "disconnected", "ClusterConnectionError",
     None),
    (lambda e: e.RpcError("socket closed"), "disconnected", "ClusterConnectionError", None),
])
def test_each_ray_failure_becomes_a_typed_error(ray_cluster: Any, make: Any, outcome: str,
                                                 error: str, reason: str | None) -> None:
    from zixir_actors.executor._ray import _translate

    got, translated = _translate(ray_cluster, make(ray_cluster.exceptions), "step", "h:1",
                                 2**20)
    assert got == outcome and type(translated).__name__ == error
    if reason is not None:
        assert translated.reason == reason  # type: ignore[attr-defined]
    if outcome == "memory":
        assert translated.limit == 2**20 and translated.kind == "memory"  # type: ignore[attr-defined]


def test_an_unreachable_cluster_is_a_clear_connection_error(ray_cluster: Any) -> None:
    address = f"127.0.0.1:{_free_port()}"
    with pytest.raises(ClusterConnectionError) as caught:
        RayExecutor(address, connect_timeout=2.0)
    assert caught.value.address == address and address in str(caught.value)


def test_submitting_after_the_connection_is_gone_is_a_clear_error(
        ray_cluster: Any, ray_executor: RayExecutor, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ray_cluster, "is_initialized", lambda: False)
    with pytest.raises(ClusterConnectionError, match="not connected"):
        ray_executor.submit(abs, 1)


def test_configure_ray_makes_it_the_default(ray_cluster: Any) -> None:
    try:
        chosen = configure("ray")
        assert isinstance(chosen, RayExecutor) and not chosen.owns_cluster_connection
        assert offload(None, None) is chosen and get_executor("ray") is chosen
        assert chosen.submit(abs, -9).get(timeout=WAIT) == 9
    finally:
        reset()
    assert ray_cluster.is_initialized()  # a session's own connection stays


# -- the services on both executors -------------------------------------------------------
#
# The same workflow behaviour on the in-process default and on Ray: outputs,
# retries under our RetryPolicy, dead letters, timeouts, kill -9 and resume.
# Step functions live at module level or use files, since on Ray they run in
# other processes.

BOTH = pytest.mark.parametrize("where", ["local", "ray"])


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CheckpointClient]:
    with open_store(tmp_path / "store", clock=FakeClock()) as client:
        yield client


def _on(where: str, request: pytest.FixtureRequest) -> str:
    if where == "ray":
        request.getfixturevalue("ray_executor")
    return where


def _pid() -> int:
    return os.getpid()


def _add(a: int, b: int) -> int:
    return a + b


def _flaky_step(path: str, ctx: StepContext) -> int:
    with open(path, "a") as log:
        log.write(f"{ctx.attempt} {os.getpid()}\n")
    if ctx.attempt < 3:
        raise ConnectionError(f"attempt {ctx.attempt} refused")
    return ctx.attempt


def _enrich(a: int, model: str, fixed: str) -> str:
    if not os.path.exists(fixed):
        raise ValueError(f"model {model} rejected {a}")
    return f"{model}:{a}"


_RELEASE = threading.Event()
"""Lets a timed-out step's abandoned local thread end with its test (a Ray worker is killed)."""


def _slow_step(gate: str) -> str:
    Path(gate).write_text(str(os.getpid()))
    _RELEASE.wait(30)
    return "late"


@BOTH
def test_a_diamond_gives_the_same_outputs_on_both_executors(
        where: str, request: pytest.FixtureRequest, store: CheckpointClient) -> None:
    wf = Workflow(f"diamond-{where}", executor=_on(where, request))
    wf.add(Step("a", _add, version="1"))
    wf.add(Step("b", lambda a: a * 2, depends_on=["a"]))
    wf.add(Step("c", lambda a: a * 3, depends_on=["a"]))
    wf.add(Step("d", lambda b, c: b + c, depends_on=["b", "c"]))
    wf.add(Step("pid", _pid))
    result = wf.run({"a": 1, "b": 2}, store=store, timeout=WAIT)
    assert result.status == "succeeded"
    assert {k: result.outputs[k] for k in "abcd"} == {"a": 3, "b": 6, "c": 9, "d": 15}
    assert (result.outputs["pid"] == os.getpid()) == (where == "local")
    assert store.steps(result.run_id)["d"].output == 15  # the same checkpoint path


@BOTH
def test_retries_stay_under_our_retry_policy(where: str, request: pytest.FixtureRequest,
                                             store: CheckpointClient, tmp_path: Path) -> None:
    log = tmp_path / "attempts"
    step = Step("x", functools.partial(_flaky_step, str(log)),
                retry=RetryPolicy(max_attempts=3, initial_delay=0.5, jitter=0.0))
    result = Workflow(f"retry-{where}", [step], executor=_on(where, request),
                      clock=FakeClock()).run(store=store, timeout=WAIT)
    assert result.status == "succeeded" and result.outputs["x"] == 3
    assert result.attempts == {"x": 3}
    assert [line.split()[0] for line in log.read_text().splitlines()] == ["1", "2", "3"]


@BOTH
def test_an_exhausted_step_is_dead_lettered_and_its_retry_completes_the_run(
        where: str, request: pytest.FixtureRequest, store: CheckpointClient,
        tmp_path: Path) -> None:
    fixed = tmp_path / "fixed"
    wf = Workflow(f"dlq-{where}", executor=_on(where, request), clock=FakeClock())
    wf.add(Step("a", lambda: 7))
    wf.add(Step("enrich", functools.partial(_enrich, fixed=str(fixed)), depends_on=["a"],
                retry=RetryPolicy(max_attempts=2)))
    wf.add(Step("publish", lambda enrich: enrich.upper(), depends_on=["enrich"]))
    result = wf.run({"model": "small"}, store=store, timeout=WAIT)
    assert result.status == "failed" and result.steps["publish"].status == "not_run"
    dlq = DeadLetters(store)
    [letter] = dlq.list(workflow=wf.name)
    assert letter.error_type == "ValueError" and "rejected 7" in letter.error_message
    assert [a.attempt for a in letter.attempts] == [1, 2]
    assert "_enrich" in letter.traceback
    fixed.write_text("yes")
    again = dlq.retry(letter.id, workflow=wf)
    assert again.status == "succeeded" and again.outputs["publish"] == "SMALL:7"
    assert again.steps["a"].status == "cached"
    assert dlq.list(workflow=wf.name) == []


@BOTH
def test_a_step_timeout_is_recorded_as_timed_out(where: str, request: pytest.FixtureRequest,
                                                 store: CheckpointClient,
                                                 tmp_path: Path) -> None:
    step = Step("slow", functools.partial(_slow_step, str(tmp_path / "gate")), timeout=1.0)
    _RELEASE.clear()
    try:
        result = Workflow(f"timeout-{where}", [step], executor=_on(where, request)).run(
            store=store, timeout=WAIT)
    finally:
        _RELEASE.set()
    assert result.steps["slow"].status == "timed_out"
    [letter] = DeadLetters(store).list(workflow=f"timeout-{where}")
    assert letter.error_type == "StepTimeoutError" and letter.attempts[0].timed_out


def test_a_lost_ray_worker_is_a_failed_attempt_the_retry_policy_repeats(
        ray_executor: RayExecutor, store: CheckpointClient, tmp_path: Path) -> None:
    step = Step("fragile", functools.partial(_die_once, str(tmp_path / "died")),
                retry=RetryPolicy(max_attempts=2, initial_delay=0.0, jitter=0.0))
    result = Workflow("lost-worker", [step], executor="ray").run(store=store, timeout=WAIT)
    assert result.status == "succeeded" and result.outputs["fragile"] == "second try"
    assert result.attempts == {"fragile": 2}


def test_a_memory_limit_on_ray_fails_the_step_as_memory(ray_executor: RayExecutor,
                                                        store: CheckpointClient) -> None:
    step = Step("hog", _hog_memory, limits=Limits(memory="400MB", timeout=WAIT))
    result = Workflow("hog-ray", [step], executor="ray").run(store=store, timeout=WAIT)
    assert result.steps["hog"].status == "failed"
    [letter] = DeadLetters(store).list(workflow="hog-ray")
    assert letter.error_type == "SandboxError" and "(memory)" in letter.error_message


def test_a_step_executor_wins_over_its_workflows(ray_executor: RayExecutor,
                                                 store: CheckpointClient) -> None:
    wf = Workflow("mixed", [Step("here", _pid, executor="local"), Step("there", _pid)],
                  executor="ray")
    outputs = wf.run(store=store, timeout=WAIT).outputs
    assert outputs["here"] == os.getpid() and outputs["there"] != os.getpid()


def test_steps_take_resources_and_actor_pools(ray_executor: RayExecutor,
                                              store: CheckpointClient) -> None:
    def assigned() -> float:
        import ray

        return float(ray.get_runtime_context().get_assigned_resources()["CPU"])

    with ray_executor.actor_pool(lambda: "warm model", size=1) as pool:
        wf = Workflow("resources", [
            Step("big", assigned, resources=Resources(num_cpus=2), executor="ray"),
            Step("warm", lambda: warm_state().upper(), executor=pool)])
        outputs = wf.run(store=store, timeout=WAIT).outputs
    assert outputs == {"big": 2.0, "warm": "WARM MODEL"}


def test_bad_step_and_workflow_executors_are_refused() -> None:
    with pytest.raises(InvalidStepError, match="executor"):
        Step("x", abs, executor="spark")
    with pytest.raises(InvalidStepError, match="resources"):
        Step("x", abs, resources={"num_cpus": 1})
    with pytest.raises(InvalidStepError, match="executor"):
        Workflow("bad-executor", executor=3)


CRASH_CHILD = textwrap.dedent('''
    import json, os, sys, threading
    from pathlib import Path
    from zixir_actors import executor
    from zixir_actors.checkpoint import open_store
    from zixir_actors.workflow import Step, Workflow

    data_dir, marks, where, address, mode = sys.argv[1:6]
    if where == "ray":
        executor.configure("ray", ray_address=address)

    def make(name):
        def step(**deps):
            marks_dir = Path(marks)
            with open(marks_dir / name, "a") as f:
                f.write("ran\\n")
            if name == "c" and mode == "first":
                threading.Event().wait(120)  # killed here
            return name + "".join(sorted(str(v) for v in deps.values()))
        return step

    wf = Workflow("kill-resume", executor=where)
    wf.add(Step("a", make("a"), version="1"))
    wf.add(Step("b", make("b"), depends_on=["a"], version="1"))
    wf.add(Step("c", make("c"), depends_on=["b"], version="1"))
    wf.add(Step("d", make("d"), depends_on=["c"], version="1"))
    with open_store(data_dir) as store:
        if mode == "first":
            result = wf.run({}, run_id="crash", store=store)
        else:
            result = wf.resume("crash", store=store)
    print(json.dumps({"status": result.status, "outputs": result.outputs}))
    executor.reset()
''')


@BOTH
def test_kill_9_of_the_orchestrator_then_resume_runs_committed_steps_once(
        where: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    address = ""
    if _on(where, request) == "ray":
        import ray

        address = ray.get_runtime_context().gcs_address
    script, data, marks = tmp_path / "child.py", tmp_path / "data", tmp_path / "marks"
    script.write_text(CRASH_CHILD)
    marks.mkdir()
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    command = [sys.executable, str(script), str(data), str(marks), where, address]
    child = subprocess.Popen([*command, "first"], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (marks / "c").exists() or child.poll() is not None, timeout=WAIT,
                 what="step c to start")
        assert child.poll() is None
    finally:
        child.kill()
        child.wait(WAIT)
    with open_store(data) as store:
        assert set(store.steps("crash")) == {"a", "b"}
    final = subprocess.run([*command, "resume"], env=env, capture_output=True, text=True,
                           timeout=WAIT * 2, check=True)
    report = json.loads(final.stdout.strip().splitlines()[-1])
    assert report == {"status": "succeeded",
                      "outputs": {"a": "a", "b": "ba", "c": "cba", "d": "dcba"}}
    ran = {name: len((marks / name).read_text().splitlines()) for name in "abcd"}
    assert ran == {"a": 1, "b": 1, "c": 2, "d": 1}


class _Counting:
    """An `Executor` that forwards to another and records the most calls in flight."""

    name = "counting"

    def __init__(self, inner: Executor) -> None:
        self.inner = inner
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **options: Any) -> Any:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        future = self.inner.submit(fn, *args, **options)
        future.add_done_callback(lambda _: self._done())
        return future

    def _done(self) -> None:
        with self.lock:
            self.now -= 1

    def shutdown(self, *, timeout: float | None = None) -> None:
        self.inner.shutdown(timeout=timeout)


def test_a_ray_stream_stage_keeps_its_bound_of_calls_in_flight(
        ray_executor: RayExecutor) -> None:
    counting = _Counting(ray_executor)
    out = Stream.range(40).map(_double, concurrency=3, executor=counting).to_list(timeout=WAIT)
    assert out == [2 * i for i in range(40)]
    assert 1 <= counting.most <= 3


def _double(x: int) -> int:
    return 2 * x


def test_pmap_and_parallel_run_on_ray(ray_executor: RayExecutor) -> None:
    assert pmap(_double, range(6), concurrency=2, executor="ray", timeout=WAIT) == \
        [0, 2, 4, 6, 8, 10]
    pids = parallel([_pid, _pid], max_concurrency=2, executor="ray", timeout=WAIT)
    assert os.getpid() not in pids


def test_a_sandbox_on_ray_returns_ok_and_err_memory(ray_executor: RayExecutor) -> None:
    with Sandbox(Limits(memory="400MB", timeout=WAIT), executor="ray") as sandbox:
        assert sandbox.run(_add, 2, 3) == Ok(5)
        outcome = sandbox.run(_hog_memory)
        assert isinstance(outcome, Err) and outcome.error.kind == "memory"
        assert asyncio.run(_awaited(sandbox)) == Ok(8)


async def _awaited(sandbox: Sandbox) -> Any:
    return await sandbox.run_async(_add, 4, 4)


def test_the_runtime_executor_is_the_default_of_everything(ray_executor: RayExecutor,
                                                            tmp_path: Path) -> None:
    import zixir_actors

    with zixir_actors.start(data_dir=tmp_path / "rt", executor="ray") as runtime:
        assert isinstance(default_executor(), RayExecutor)
        result = Workflow("runtime-ray", [Step("pid", _pid)]).run(timeout=WAIT)
        assert result.outputs["pid"] != os.getpid()
        assert pmap(_double, [1, 2], timeout=WAIT) == [2, 4]
        assert runtime.is_alive()
    assert default_executor() is None


def test_a_remote_step_is_traced_under_its_attempt_span(ray_executor: RayExecutor,
                                                        store: CheckpointClient) -> None:
    with capture_spans() as spans, span("caller") as caller:
        result = Workflow("traced-ray", [Step("ids", current_trace_context)],
                          executor="ray").run(store=store, timeout=WAIT)
    [attempt] = spans.named("workflow.step")
    [task] = spans.named("executor.task")
    assert task.parent_id == attempt.span_id and task.trace_id == caller.trace_id
    assert result.outputs["ids"] == TraceContext(caller.trace_id, task.span_id)


def test_a_lost_cluster_fails_the_run_clearly_and_resume_finishes_it(
        ray_cluster: Any, ray_executor: RayExecutor, store: CheckpointClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    wf = Workflow("cluster-gone", executor=ray_executor)
    wf.add(Step("a", lambda: 1, executor="local"))
    wf.add(Step("b", _add, depends_on=["a"]))
    monkeypatch.setattr(ray_cluster, "is_initialized", lambda: False)
    result = wf.run({"b": 2}, store=store, timeout=WAIT)
    assert result.status == "failed"
    assert result.steps["b"].error.type == "ClusterConnectionError"
    assert "not connected" in result.steps["b"].error.message
    monkeypatch.undo()
    resumed = wf.resume(result.run_id, store=store, timeout=WAIT)
    assert resumed.status == "succeeded" and resumed.outputs["b"] == 3
    assert resumed.steps["a"].status == "cached"


# -- functions shipped once, cancellation of a run's remote steps --------------------


class _CountsPickles:
    """A value that counts how often this process pickles it (the function that captures it)."""

    pickled = 0

    def __init__(self, value: int) -> None:
        self.value = value

    def __reduce__(self) -> Any:
        type(self).pickled += 1
        return (_CountsPickles, (self.value,))


def _capturing(box: _CountsPickles) -> Callable[[], int]:
    return lambda: box.value


def test_a_function_is_shipped_to_ray_once_and_a_changed_closure_ships_again(
        ray_executor: RayExecutor) -> None:
    _CountsPickles.pickled = 0
    first = _capturing(_CountsPickles(1))
    assert [ray_executor.submit(first).get(timeout=WAIT) for _ in range(3)] == [1, 1, 1]
    assert _CountsPickles.pickled == 1  # shipped with its closure once, not with each call
    again = _capturing(_CountsPickles(2))  # same code, another captured value
    assert ray_executor.submit(again).get(timeout=WAIT) == 2
    assert _CountsPickles.pickled == 2

    def counter() -> tuple[Callable[[], int], Callable[[], None]]:
        n = 0

        def read() -> int:
            return n

        def bump() -> None:
            nonlocal n
            n += 1
        return read, bump

    read, bump = counter()
    assert ray_executor.submit(read).get(timeout=WAIT) == 0
    bump()  # the closure's cell now holds 1: the next call must see it
    assert ray_executor.submit(read).get(timeout=WAIT) == 1


@pytest.mark.parametrize("how", ["cancel", "timeout"])
def test_ending_a_dag_run_cancels_its_remote_steps(ray_executor: RayExecutor,
                                                   store: CheckpointClient, tmp_path: Path,
                                                   how: str) -> None:
    marker = tmp_path / "pid"
    wf = Workflow(f"remote-{how}", [Step("forever", functools.partial(sleep_forever,
                                                                       str(marker)))],
                  executor=ray_executor)
    handle = wf.start(store=store, timeout=None if how == "cancel" else 5.0)
    wait_for(marker.exists, timeout=WAIT, what="the remote step to start")
    if how == "cancel":
        assert handle.cancel() is True
    result = handle.result(timeout=WAIT)
    assert result.status == ("cancelled" if how == "cancel" else "timed_out")
    wait_for(lambda: not alive(int(marker.read_text())), timeout=WAIT,
             what="the abandoned remote step's worker to be killed")


@pytest.mark.parametrize("how", ["cancel", "timeout"])
def test_ending_a_code_first_run_cancels_its_remote_step(ray_executor: RayExecutor,
                                                         store: CheckpointClient,
                                                         tmp_path: Path, how: str) -> None:
    marker = str(tmp_path / "pid")

    def body(ctx: Any) -> None:
        ctx.step(sleep_forever, marker, executor=ray_executor)

    handle = Workflow(f"remote-body-{how}", body=body).start(
        {}, store=store, timeout=None if how == "cancel" else 5.0)
    wait_for(lambda: os.path.exists(marker), timeout=WAIT, what="the remote step to start")
    if how == "cancel":
        assert handle.cancel() is True
    assert handle.result(timeout=WAIT).status == ("cancelled" if how == "cancel"
                                                  else "timed_out")
    wait_for(lambda: not alive(int(Path(marker).read_text())), timeout=WAIT,
             what="the cancelled run's remote worker to be killed")


def _opens_spans() -> int:
    with span("remote.work", n=1) as work:
        work.set_attribute("lock", threading.Lock())  # not picklable: comes back as text
        with span("remote.inner"):
            pass
    return os.getpid()


@ISOLATED
def test_spans_opened_in_another_process_come_back_under_the_call(executor: Executor) -> None:
    with capture_spans() as spans, span("caller") as caller:
        pid = executor.submit(_opens_spans).get(timeout=WAIT)
    assert pid != os.getpid()
    [task] = spans.named("executor.task")
    [work] = spans.named("remote.work")
    [inner] = spans.named("remote.inner")
    assert task.parent_id == caller.span_id
    assert work.parent_id == task.span_id and inner.parent_id == work.span_id
    assert {task.trace_id, work.trace_id, inner.trace_id} == {caller.trace_id}
    assert work.attributes["n"] == 1 and "lock" in str(work.attributes["lock"]).lower()
    assert work.status == "ok" and inner.status == "ok"


def test_spans_of_a_remote_step_are_children_of_its_attempt(ray_executor: RayExecutor,
                                                            store: CheckpointClient) -> None:
    with capture_spans() as spans:
        result = Workflow("remote-spans", [Step("work", _opens_spans)],
                          executor="ray").run(store=store, timeout=WAIT)
    assert result.status == "succeeded"
    [attempt] = spans.named("workflow.step")
    [task] = spans.named("executor.task")
    [work] = spans.named("remote.work")
    assert task.parent_id == attempt.span_id and work.parent_id == task.span_id
    assert work.trace_id == attempt.trace_id


# -- the Ray round trip: one packed argument, the reply taken where it is awaited ---------


class _Colour(enum.IntEnum):
    RED = 1


class _Tag(str):
    pass


def _echo(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, kwargs


def _same(value: Any) -> Any:
    return value


def _shapes(value: Any) -> Any:
    """`value` with the type of each part beside it, to compare types as well as values."""
    if isinstance(value, (list, tuple)):
        return type(value), [_shapes(v) for v in value]
    if isinstance(value, dict):
        return type(value), {k: _shapes(v) for k, v in value.items()}
    return type(value), value


def test_ray_arguments_and_results_keep_their_types(ray_executor: RayExecutor) -> None:
    args = (1, 2**100, 1.5, "s", "\u00e9", "\ud800", b"b", bytearray(b"x"), None, True,
            [1, (2, 3)], {4, 5}, _Colour.RED, _Tag("t"),
            {"k": {1: "int key", (1, 2): "tuple key"}})
    kwargs = {"nested": [{"a": (1,)}, [bytearray(b"y")]], "empty": (), "n": -(2**70)}
    got_args, got_kwargs = ray_executor.submit(_echo, *args, kwargs=kwargs).get(timeout=WAIT)
    assert _shapes(got_args) == _shapes(args) and _shapes(got_kwargs) == _shapes(kwargs)
    assert ray_executor.submit(_echo).get(timeout=WAIT) == ((), {})
    for value in args + tuple(kwargs.values()):  # each as the whole result
        assert _shapes(ray_executor.submit(_same, value).get(timeout=WAIT)) == _shapes(value)


def test_an_unpicklable_ray_result_is_a_remote_error(ray_executor: RayExecutor) -> None:
    with pytest.raises(RemoteError):
        ray_executor.submit(threading.Lock).get(timeout=WAIT)


def test_a_blocking_get_takes_the_ray_reply_in_the_waiting_thread(
        ray_executor: RayExecutor) -> None:
    # No hop through Ray's callback thread: the caller that waits settles the call.
    future = ray_executor.submit(abs, -3)
    settled_in: list[int] = []
    future._future.add_done_callback(lambda _: settled_in.append(threading.get_ident()))
    assert future.get(timeout=WAIT) == 3
    assert settled_in == [threading.get_ident()]


def test_a_ray_future_nobody_waits_for_still_ends(ray_executor: RayExecutor) -> None:
    def in_flight() -> float:
        return metrics.sample("zixir_executor_in_flight", {"executor": "ray"}) or 0.0

    before = in_flight()
    with capture_spans() as spans:
        polled = ray_executor.submit(abs, -1)
        wait_for(polled.done, timeout=WAIT, what="a polled call to end")
        ray_executor.submit(abs, -2)  # dropped at once: never awaited nor polled
        ray_executor.submit(abs, -3, timeout=WAIT)  # dropped too, its deadline still pending
        gc.collect()
        wait_for(lambda: in_flight() == before, timeout=WAIT, what="the dropped calls to end")
    assert polled.get(timeout=0) == 1
    assert [s.attributes["outcome"] for s in spans.named("executor.task")] == ["ok"] * 3


def test_a_short_wait_on_a_ray_call_is_a_timeout_of_the_wait_only(ray_executor: RayExecutor,
                                                                   tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    future = ray_executor.submit(sleep_forever, str(marker))
    wait_for(marker.exists, timeout=WAIT, what="the task to start")
    for wait in (0, 0.05):
        with pytest.raises(ZixirTimeoutError) as caught:
            future.get(timeout=wait)
        assert not isinstance(caught.value, RemoteTimeoutError) and not future.done()
    assert future.cancel() is True
    wait_for(lambda: not alive(int(marker.read_text())), timeout=WAIT,
             what="the cancelled worker to be killed")


def test_cancel_ends_a_get_blocked_in_another_thread(ray_executor: RayExecutor,
                                                     tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    future = ray_executor.submit(sleep_forever, str(marker))
    wait_for(marker.exists, timeout=WAIT, what="the task to start")
    outcome: list[BaseException | None] = []
    waiter = threading.Thread(target=lambda: outcome.append(future.exception(timeout=WAIT)))
    waiter.start()
    assert future.cancel() is True
    waiter.join(WAIT)
    assert not waiter.is_alive() and isinstance(outcome[0], RemoteCancelledError)
    wait_for(lambda: not alive(int(marker.read_text())), timeout=WAIT,
             what="the cancelled worker to be killed")


def test_a_partial_of_a_closure_is_shipped_once(ray_executor: RayExecutor) -> None:
    # A code-first step with arguments reaches the executor as functools.partial(fn, *args).
    _CountsPickles.pickled = 0
    adds = _capturing_adder(_CountsPickles(10))
    results = [ray_executor.submit(functools.partial(adds, n), kwargs={"times": 2})
               .get(timeout=WAIT) for n in (1, 2, 3)]
    assert results == [22, 24, 26]
    assert _CountsPickles.pickled == 1
    with_keyword = functools.partial(adds, times=3)
    assert ray_executor.submit(with_keyword, 1).get(timeout=WAIT) == 33
    assert ray_executor.submit(with_keyword, 1, kwargs={"times": 1}).get(timeout=WAIT) == 11


def _capturing_adder(box: _CountsPickles) -> Callable[..., int]:
    return lambda n, times: (box.value + n) * times


def test_remote_code_sees_its_callers_trace_without_an_exporter(
        ray_executor: RayExecutor) -> None:
    from zixir_actors.observability import current_trace_ids

    with span("caller") as caller:
        trace_id, parent_id = ray_executor.submit(current_trace_ids).get(timeout=WAIT)
    assert trace_id == caller.trace_id and parent_id not in (None, caller.span_id)
