"""`DynamicSupervisor`: children started on demand, identified by ref, bounded by max_children."""

from __future__ import annotations

import threading
from typing import Any

import pykka
import pytest

from supervisors import (
    ChildNotFoundError,
    ChildSpec,
    ChildStartError,
    Down,
    DynamicSupervisor,
    InvalidSpecError,
    MaxChildrenError,
    RestartIntensityError,
    Supervisor,
    SupervisorRef,
    monitor,
    whereis,
)
from zixir_actors.testing import FakeClock, wait_for

WAIT = 5.0


class Boom(Exception):
    pass


class Job(pykka.ThreadingActor):
    def __init__(self, fail_start: bool = False) -> None:
        super().__init__()
        self.fail_start = fail_start
        self.count = 0

    def on_start(self) -> None:
        if self.fail_start:
            raise Boom("cannot start")

    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise Boom("job")
        if message == "stop":
            self.stop()
            return None
        self.count += 1
        return self.count


def settle(sup: SupervisorRef, target: pykka.ActorRef[Any], message: str) -> Down:
    m = monitor(target)
    target.tell(message)
    down = m.wait(timeout=WAIT)
    sup.count_children(timeout=WAIT)  # the supervisor has handled the Down by now
    return down


def refs(sup: SupervisorRef) -> list[pykka.ActorRef[Any] | None]:
    return [c.ref for c in sup.which_children(timeout=WAIT)]


def test_start_and_terminate_children_by_ref() -> None:
    dyn = DynamicSupervisor.start_link(name="dyn.jobs")
    first = dyn.start_child(ChildSpec("job", Job))
    second = dyn.start_child(ChildSpec("job", Job))  # ids need not be unique
    assert first is not second and refs(dyn) == [first, second]
    assert first.ask("tick", timeout=WAIT) == 1
    dyn.terminate_child(first)
    assert refs(dyn) == [second] and not first.is_alive()  # removed, not kept as a spec
    counts = dyn.count_children()
    assert (counts.specs, counts.active, counts.workers, counts.supervisors) == (1, 1, 1, 0)
    with pytest.raises(ChildNotFoundError):
        dyn.terminate_child(first)
    with pytest.raises(ChildNotFoundError):
        dyn.terminate_child("job")  # dynamic children are found by ref only
    dyn.stop()
    assert not second.is_alive()


def test_max_children() -> None:
    dyn = DynamicSupervisor.start_link(max_children=2)
    one = dyn.start_child(ChildSpec("a", Job))
    dyn.start_child(ChildSpec("b", Job))
    with pytest.raises(MaxChildrenError) as caught:
        dyn.start_child(ChildSpec("c", Job))
    assert caught.value.max_children == 2
    dyn.terminate_child(one)
    dyn.start_child(ChildSpec("c", Job))  # room again
    assert [c.id for c in dyn.which_children()] == ["b", "c"]
    dyn.stop()


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True])
def test_bad_max_children_raises_and_starts_nothing(bad: Any) -> None:
    with pytest.raises(InvalidSpecError) as caught:
        DynamicSupervisor.start_link(max_children=bad)
    assert caught.value.field == "max_children"
    assert pykka.ActorRegistry.get_all() == []


def test_bad_intensity_raises_and_starts_nothing() -> None:
    with pytest.raises(InvalidSpecError):
        DynamicSupervisor.start_link(max_restarts=-1)
    assert pykka.ActorRegistry.get_all() == []


@pytest.mark.parametrize(("restart", "message", "restarted"), [
    ("permanent", "stop", True),
    ("permanent", "crash", True),
    ("transient", "stop", False),
    ("transient", "crash", True),
    ("temporary", "stop", False),
    ("temporary", "crash", False),
])
def test_restart_types(restart: str, message: str, restarted: bool) -> None:
    dyn = DynamicSupervisor.start_link()
    child = dyn.start_child(ChildSpec("j", Job, restart=restart))  # type: ignore[arg-type]
    keep = dyn.start_child(ChildSpec("keep", Job))
    settle(dyn, child, message)
    now = refs(dyn)
    if restarted:
        assert len(now) == 2 and child not in now and keep in now
        new = next(r for r in now if r is not keep)
        assert new is not None and new.ask("tick", timeout=WAIT) == 1
    else:
        assert now == [keep]  # an exit for good removes the child
    dyn.stop()


def test_a_failing_child_start_is_reported_and_not_kept() -> None:
    dyn = DynamicSupervisor.start_link()
    with pytest.raises(ChildStartError) as caught:
        dyn.start_child(ChildSpec("bad", Job, kwargs={"fail_start": True}))
    assert caught.value.child_id == "bad" and isinstance(caught.value.cause, Boom)
    assert dyn.which_children() == []
    dyn.stop()


def test_restart_intensity_applies_to_dynamic_children() -> None:
    clock = FakeClock()
    dyn = DynamicSupervisor.start_link(max_restarts=1, clock=clock.monotonic)
    watch = monitor(dyn.actor_ref)
    child = dyn.start_child(ChildSpec("j", Job))
    settle(dyn, child, "crash")
    clock.advance(10.0)  # out of the window
    settle(dyn, refs(dyn)[0], "crash")  # type: ignore[arg-type]
    assert dyn.is_alive()
    current = refs(dyn)[0]
    assert current is not None
    current.tell("crash")
    assert isinstance(watch.wait(timeout=WAIT).reason, RestartIntensityError)


def test_nested_dynamic_supervisor_and_restart_of_it() -> None:
    spec = DynamicSupervisor.child_spec("jobs", name="dyn.nested", max_children=3)
    assert spec.type == "supervisor" and spec.shutdown is None
    root = Supervisor.start_link([spec])
    jobs = SupervisorRef(whereis("dyn.nested"))  # type: ignore[arg-type]
    child = jobs.start_child(ChildSpec("j", Job))
    jobs_gone = monitor(jobs.actor_ref)
    child_gone = monitor(child)
    jobs.actor_ref.tell("not a request")  # unknown messages are ignored
    jobs.stop()  # stopped by hand: its supervisor restarts it (permanent), empty
    assert jobs_gone.wait(timeout=WAIT).reason == "shutdown"
    assert child_gone.wait(timeout=WAIT).reason == "shutdown"
    root.count_children()
    again = SupervisorRef(whereis("dyn.nested"))  # type: ignore[arg-type]
    assert again != jobs and again.which_children() == []
    assert "DynamicSupervisor, dynamic, 0/0 running" in root.tree()
    for _ in range(3):
        again.start_child(ChildSpec("j", Job))
    with pytest.raises(MaxChildrenError):
        again.start_child(ChildSpec("j", Job))
    root.stop()


class Gated(Job):
    """Starts only while `gate` is set; counts its starts."""

    def __init__(self, gate: threading.Event, starts: list[int]) -> None:
        super().__init__()
        self.gate = gate
        self.starts = starts

    def on_start(self) -> None:
        self.starts.append(1)
        if not self.gate.is_set():
            raise Boom("not now")


def test_a_child_whose_restart_keeps_failing_is_terminated_by_its_last_ref() -> None:
    gate, starts = threading.Event(), []
    gate.set()
    ticks = iter(range(0, 10**9, 1000))  # each restart in a window of its own: never gives up
    jobs = DynamicSupervisor.start_link(max_seconds=1.0, clock=lambda: float(next(ticks)))
    try:
        job = jobs.start_child(ChildSpec("job", Gated, kwargs={"gate": gate, "starts": starts}))
        gate.clear()
        job.tell("crash")
        wait_for(lambda: len(starts) >= 3, timeout=WAIT)
        (row,) = jobs.which_children(timeout=WAIT)  # answers between the retries
        assert (row.ref, row.restarting) == (None, True)
        other = jobs.start_child(ChildSpec("other", Job), timeout=WAIT)
        assert other.ask("ping", timeout=WAIT) == 1
        jobs.terminate_child(job, timeout=WAIT)  # the ref it had ends the retries
        ended_at = len(starts)
        jobs.count_children(timeout=WAIT)
        assert jobs.count_children(timeout=WAIT).specs == 1 and len(starts) == ended_at
        with pytest.raises(ChildNotFoundError):
            jobs.terminate_child(job, timeout=WAIT)
    finally:
        gate.set()
    jobs.stop()
