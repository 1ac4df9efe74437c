"""Ray executor: a call with nothing to send but its trace is a Ray task with no argument.

A plain function called without arguments, limits or a span exporter is
submitted as ``f.remote()`` is (its trace ids in the task's name), and
everything the executor promises still holds on that path: the caller's
trace, typed errors, fresh closures, cancel and timeout killing the task.
The tests share one local Ray cluster (``ray.init(num_cpus=2)`` on the
loopback address) with `tests/test_executor.py`; they are skipped, with the
reason shown, only when Ray is not installed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _ray_cluster import NO_RAY, alive, local_cluster, sleep_forever

from zixir_actors.checkpoint import CheckpointClient, open_store
from zixir_actors.errors import ClusterConnectionError, RemoteCancelledError, RemoteTimeoutError
from zixir_actors.executor import RayExecutor, TraceContext, current_trace_context
from zixir_actors.executor._ray import _Launch, _named
from zixir_actors.executor._shipping import NO_TRACE, task_name, trace_of_task_name
from zixir_actors.observability import current_trace_ids, metrics, span
from zixir_actors.testing import FakeClock, capture_spans, wait_for
from zixir_actors.workflow import Step, Workflow

WAIT = 60.0
"""Seconds any single remote call of these tests may take (a cold Ray worker included)."""


@pytest.fixture(scope="session", autouse=True)
def ray_session() -> Iterator[bool]:
    """A local Ray cluster for the session, on the loopback address (False without Ray).

    Autouse, so that it starts before the first test takes its snapshot of
    threads: Ray's own driver threads are not a test's leak. A cluster that
    `tests/test_executor.py` started already is joined, not started again.
    """
    with local_cluster() as available:
        yield available


@pytest.fixture
def submitted(ray_session: bool, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every Ray task submitted during the test: its arguments and its name."""
    if not ray_session:
        pytest.skip(NO_RAY)
    from ray.remote_function import RemoteFunction

    original = RemoteFunction._remote
    seen: list[dict[str, Any]] = []

    def spy(self: Any, args: Any = None, kwargs: Any = None,
            serialized_runtime_env_info: Any = None, **options: Any) -> Any:
        seen.append({"args": tuple(args or ()), "kwargs": dict(kwargs or {}),
                     "name": options.get("name")})
        return original(self, args=args, kwargs=kwargs,
                        serialized_runtime_env_info=serialized_runtime_env_info, **options)

    monkeypatch.setattr(RemoteFunction, "_remote", spy)
    return seen


@pytest.fixture
def executor(submitted: list[dict[str, Any]]) -> RayExecutor:
    """A `RayExecutor` joining the session's cluster, made after the spy is in place."""
    made = RayExecutor()
    assert not made.owns_cluster_connection
    return made


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CheckpointClient]:
    with open_store(tmp_path / "store", clock=FakeClock()) as client:
        yield client


def _seven() -> int:
    return 7


def _task_name() -> str:
    import ray

    return str(ray.get_runtime_context().get_task_name())


def _fails() -> None:
    raise KeyError("no such item")


def _sleeper(marker: str) -> Callable[[], None]:
    def sleeps() -> None:  # a plain function without arguments: the no-argument path
        sleep_forever(marker)
    return sleeps


def _opens_a_span() -> int:
    with span("remote.work"):
        pass
    return os.getpid()


def test_a_call_without_arguments_is_a_ray_task_without_an_argument(
        executor: RayExecutor, submitted: list[dict[str, Any]]) -> None:
    with span("caller") as caller:
        assert executor.submit(_seven).get(timeout=WAIT) == 7
    [task] = submitted
    assert task["args"] == () and task["kwargs"] == {}
    trace_id, span_id = trace_of_task_name(task["name"])
    assert task["name"].startswith("_seven ") and trace_id == caller.trace_id
    assert span_id not in (None, caller.span_id)


def test_the_task_is_named_after_its_label_and_traceparent(executor: RayExecutor) -> None:
    with span("caller") as caller:
        name = executor.submit(_task_name, label="load step").get(timeout=WAIT)
    label, _, traceparent = name.rpartition(" ")
    assert label == "load step" and traceparent.startswith(f"00-{caller.trace_id}-")


def test_a_label_that_does_not_print_is_one_line_in_the_task_name(
        executor: RayExecutor) -> None:
    with span("caller") as caller:
        name = executor.submit(_task_name, label="two\nlines\r").get(timeout=WAIT)
    assert name.startswith("two lines  00-") and "\n" not in name and "\r" not in name
    assert trace_of_task_name(name)[0] == caller.trace_id


def test_remote_code_sees_its_callers_trace_without_an_argument(
        executor: RayExecutor, submitted: list[dict[str, Any]]) -> None:
    with span("caller") as caller:
        sent = executor.submit(current_trace_context).get(timeout=WAIT)
        trace_id, parent_id = executor.submit(current_trace_ids).get(timeout=WAIT)
    assert all(task["args"] == () for task in submitted)
    assert sent.trace_id == caller.trace_id and sent.span_id not in (None, caller.span_id)
    assert trace_id == caller.trace_id and parent_id not in (None, caller.span_id)


def test_an_explicit_trace_context_travels_without_an_argument(
        executor: RayExecutor, submitted: list[dict[str, Any]]) -> None:
    given = TraceContext("ab" * 16, "cd" * 8)
    assert executor.submit(current_trace_context, trace_context=given).get(timeout=WAIT) \
        == given
    assert submitted[-1]["args"] == ()


@pytest.mark.parametrize("given", [TraceContext("not hex-ids", "x y"),
                                   TraceContext("ab" * 16, None), TraceContext(None, None)])
def test_a_trace_context_a_name_cannot_carry_travels_as_it_is(
        executor: RayExecutor, given: TraceContext) -> None:
    assert executor.submit(current_trace_context, trace_context=given).get(timeout=WAIT) \
        == (given if given.trace_id is not None else TraceContext(None, None))


def test_a_failure_without_arguments_comes_back_as_itself(executor: RayExecutor) -> None:
    with pytest.raises(KeyError, match="no such item") as caught:
        executor.submit(_fails).get(timeout=WAIT)
    assert "_fails" in caught.value.remote_traceback  # type: ignore[attr-defined]


def test_a_closure_without_arguments_stays_fresh(executor: RayExecutor,
                                                 submitted: list[dict[str, Any]]) -> None:
    n = 0

    def read() -> int:
        return n

    assert executor.submit(read).get(timeout=WAIT) == 0
    n = 5  # the closure's cell changed: the next call must see it
    assert executor.submit(read).get(timeout=WAIT) == 5
    assert [task["args"] for task in submitted] == [(), ()]


@pytest.mark.parametrize("how", ["cancel", "timeout"])
def test_cancel_and_timeout_kill_a_call_without_arguments(
        executor: RayExecutor, submitted: list[dict[str, Any]], tmp_path: Path,
        how: str) -> None:
    marker = tmp_path / "pid"
    future = executor.submit(_sleeper(str(marker)), timeout=None if how == "cancel" else 3.0)
    assert submitted[-1]["args"] == ()
    wait_for(marker.exists, timeout=WAIT, what="the task to start")
    if how == "cancel":
        assert future.cancel() is True
    with pytest.raises(RemoteCancelledError if how == "cancel" else RemoteTimeoutError):
        future.get(timeout=WAIT)
    wait_for(lambda: not alive(int(marker.read_text())), timeout=WAIT,
             what="the ended call's worker to be killed")


def test_with_an_exporter_the_call_collects_its_spans_under_the_call(
        executor: RayExecutor, submitted: list[dict[str, Any]]) -> None:
    with capture_spans() as spans, span("caller") as caller:
        pid = executor.submit(_opens_a_span).get(timeout=WAIT)
    assert pid != os.getpid()
    assert len(submitted[-1]["args"]) == 1  # the collecting call sends its one argument
    [task] = spans.named("executor.task")
    [work] = spans.named("remote.work")
    assert task.parent_id == caller.span_id and work.parent_id == task.span_id
    assert work.trace_id == caller.trace_id


def test_arguments_still_travel_exactly(executor: RayExecutor,
                                        submitted: list[dict[str, Any]]) -> None:
    value = executor.submit(lambda b, *, tag: (type(b), bytes(b), tag), bytearray(b"xy"),
                            kwargs={"tag": "t"}).get(timeout=WAIT)
    assert value == (bytearray, b"xy", "t")
    assert len(submitted[-1]["args"]) == 1


def test_a_chain_of_remote_steps_sends_no_arguments_and_keeps_its_trace(
        executor: RayExecutor, submitted: list[dict[str, Any]],
        store: CheckpointClient) -> None:
    steps = [Step("a", _seven), Step("b", current_trace_context, ("a",)),
             Step("c", _task_name, ("b",))]
    with span("caller") as caller:
        result = Workflow("fast-chain", steps, executor=executor).run(store=store,
                                                                     timeout=WAIT)
    assert result.status == "succeeded", result
    assert result.outputs["a"] == 7 and result.outputs["b"].trace_id == caller.trace_id
    assert result.outputs["c"].startswith("c 00-")
    assert [task["args"] for task in submitted] == [(), (), ()]


@pytest.mark.parametrize("with_argument", [False, True])
def test_a_call_ray_refuses_is_counted_and_leaves_nothing_in_flight(
        executor: RayExecutor, with_argument: bool) -> None:
    def sample(name: str, **labels: str) -> float:
        return metrics.sample(name, {"executor": "ray", **labels}) or 0.0

    def refuse(*_: Any, **__: Any) -> Any:
        raise ConnectionError("the raylet is gone")

    launch = executor._task_options(executor._shipper.remote(_seven), None, None)
    launch.named = launch.remote = refuse
    disconnected = sample("zixir_executor_tasks_total", outcome="disconnected")
    in_flight = sample("zixir_executor_in_flight")
    with capture_spans() as spans, pytest.raises(ClusterConnectionError, match="raylet"):
        executor.submit(_seven, *((1,) if with_argument else ()))
    assert sample("zixir_executor_tasks_total", outcome="disconnected") == disconnected + 1
    assert sample("zixir_executor_in_flight") == in_flight
    [task] = spans.named("executor.task")
    assert task.status == "error" and task.attributes["outcome"] == "disconnected"


class _RefusingActor:
    """An actor handle whose calls Ray refuses (the cluster went away)."""

    class _Method:
        def remote(self, *_: Any) -> Any:
            raise ConnectionError("the actor's node is gone")

    call = _Method()


def test_an_actor_pool_call_ray_refuses_is_typed_and_frees_its_actor(
        executor: RayExecutor) -> None:
    with executor.actor_pool(lambda: "warm", size=1) as pool:
        pool.wait_ready(timeout=WAIT)
        real, pool._actors = pool._actors, [_RefusingActor()]
        in_flight = metrics.sample("zixir_executor_in_flight", {"executor": "ray"}) or 0.0
        with pytest.raises(ClusterConnectionError, match="node is gone"):
            pool.submit(_seven)
        assert pool._busy == [0]
        assert (metrics.sample("zixir_executor_in_flight", {"executor": "ray"}) or 0.0) \
            == in_flight
        pool._actors = real
        assert pool.submit(_seven).get(timeout=WAIT) == 7


class _PublicOnly:
    """A remote function seen through its public ``options`` only (another Ray version)."""

    def __init__(self, remote: Any) -> None:
        self._remote_function = remote

    def options(self, **options: Any) -> Any:
        return self._remote_function.options(**options)


def test_without_rays_private_submit_the_name_goes_through_options(ray_session: bool) -> None:
    if not ray_session:
        pytest.skip(NO_RAY)
    import ray

    launch = _Launch(_PublicOnly(ray.remote(_task_name)), {"max_retries": 0})
    name = task_name("fallback", "ab" * 16, "cd" * 8)
    assert ray.get(launch.named(name=name), timeout=WAIT) == name
    assert ray.get(_named(ray.remote(_task_name), {"max_retries": 0})(name=name),
                   timeout=WAIT) == name


def test_a_task_name_carries_its_trace_and_only_its_own() -> None:
    name = task_name("my step", "0a" * 16, "b7" * 8)
    assert name == f"my step 00-{'0a' * 16}-{'b7' * 8}-01"
    assert trace_of_task_name(name) == ("0a" * 16, "b7" * 8)
    lookalike = task_name(f"x 00-{'ab' * 16}-{'cd' * 8}-01", None, None)
    assert lookalike.endswith(f" {NO_TRACE}") and trace_of_task_name(lookalike) == (None, None)
    assert trace_of_task_name("zixir_call.noop") == (None, None)
