"""`monitor`: a `Down(ref, reason)` for every way an actor can stop, to every kind of watcher."""

from __future__ import annotations

import threading
from typing import Any

import pykka
import pytest

from supervisors import (
    ChildSpec,
    Down,
    Monitor,
    NameNotFoundError,
    SupervisedActor,
    Supervisor,
    SupervisorError,
    SupervisorTimeoutError,
    kill,
    monitor,
    ref,
    spawn,
    whereis,
)

WAIT = 5.0


class Boom(Exception):
    pass


class Target(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise Boom("target")
        if message == "stop":
            self.stop()
        if message == "shutdown":
            self.stop(reason="shutdown")  # type: ignore[call-arg]
        if isinstance(message, tuple) and message[0] == "stop_with":
            self.stop(reason=message[1])  # type: ignore[call-arg]
        return message


class Collector(SupervisedActor):
    """An actor watcher: keeps the `Down`s it is told."""

    def __init__(self) -> None:
        super().__init__()
        self.downs: list[Down] = []

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Down):
            self.downs.append(message)
            return None
        return list(self.downs)


def started() -> pykka.ActorRef[Any]:
    return spawn(Target).ref


def test_down_reason_normal_when_stopped_by_a_caller() -> None:
    target = started()
    m = monitor(target)
    assert m.down is None
    target.stop()
    down = m.wait(timeout=WAIT)
    assert down == Down(target, "normal") and not down.abnormal and m.down is down


def test_down_reason_normal_when_it_stops_itself() -> None:
    target = started()
    m = monitor(target)
    target.tell("stop")
    assert m.wait(timeout=WAIT).reason == "normal"


def test_down_reason_shutdown_from_its_supervisor_or_itself() -> None:
    sup = Supervisor.start_link([ChildSpec("t", Target, name="mon.t")])
    m = monitor("mon.t")
    sup.terminate_child("t")
    assert m.wait(timeout=WAIT).reason == "shutdown"
    target = started()
    m = monitor(target)
    target.tell("shutdown")
    assert m.wait(timeout=WAIT).reason == "shutdown" and not m.wait(timeout=WAIT).abnormal
    sup.stop()


def test_down_reason_of_a_custom_stop_reason_is_abnormal() -> None:
    target = started()
    m = monitor(target)
    target.tell(("stop_with", "lost connection"))
    down = m.wait(timeout=WAIT)
    assert down.reason == "lost connection" and down.abnormal


@pytest.mark.parametrize("via", ["tell", "ask"])
def test_down_reason_is_the_exception_after_a_crash(via: str) -> None:
    target = started()
    m = monitor(target)
    if via == "tell":
        target.tell("crash")
    else:
        with pytest.raises(Boom):
            target.ask("crash", timeout=WAIT)
    down = m.wait(timeout=WAIT)
    assert isinstance(down.reason, Boom) and down.abnormal


def test_down_reason_killed() -> None:
    target = started()
    m = monitor(target)
    kill(target)
    down = m.wait(timeout=WAIT)
    assert down.reason == "killed" and down.abnormal


def test_down_noproc_for_an_actor_already_dead() -> None:
    target = started()
    target.stop()
    m = monitor(target)
    assert m.down == Down(target, "noproc") and m.wait(timeout=0).abnormal


def test_down_is_told_to_an_actor_watcher() -> None:
    collector = Collector.start()
    target = started()
    m = monitor(target, watcher=collector)
    target.tell("crash")
    down = m.wait(timeout=WAIT)
    assert collector.ask("list", timeout=WAIT) == [down]
    noproc = monitor(target, watcher=collector).wait(timeout=WAIT)
    assert collector.ask("list", timeout=WAIT) == [down, noproc]
    collector.stop()


def test_down_is_passed_to_a_callable_watcher_in_the_stopping_thread() -> None:
    got: list[tuple[Down, str]] = []
    target = started()
    m = monitor(target, watcher=lambda d: got.append((d, threading.current_thread().name)))
    target.stop()
    down = m.wait(timeout=WAIT)
    assert got == [(down, got[0][1])] and got[0][1] != threading.current_thread().name


def test_a_raising_watcher_does_not_stop_the_other_monitors() -> None:
    def bad(down: Down) -> None:
        raise RuntimeError("watcher bug")

    target = started()
    first = monitor(target, watcher=bad)
    second = monitor(target)
    target.stop()
    assert first.wait(timeout=WAIT).reason == "normal"
    assert second.wait(timeout=WAIT).reason == "normal"


def test_a_dead_actor_watcher_is_ignored() -> None:
    collector = Collector.start()
    collector.stop()
    target = started()
    m = monitor(target, watcher=collector)
    target.stop()
    assert m.wait(timeout=WAIT).reason == "normal"


def test_cancel_stops_delivery() -> None:
    got: list[Down] = []
    target = started()
    m = monitor(target, watcher=got.append)
    other = monitor(target)
    m.cancel()
    target.stop()
    other.wait(timeout=WAIT)
    assert got == [] and m.down is None
    with pytest.raises(SupervisorError, match="cancelled"):
        m.wait(timeout=WAIT)
    other.cancel()  # after the Down: no change
    assert other.wait(timeout=0).reason == "normal"


def test_wait_times_out_while_the_target_runs() -> None:
    target = started()
    m = monitor(target)
    with pytest.raises(SupervisorTimeoutError) as caught:
        m.wait(timeout=0.05)
    assert isinstance(caught.value, TimeoutError) and caught.value.timeout == 0.05
    target.stop()


def test_monitor_by_name_and_by_named_ref_watches_the_current_incarnation() -> None:
    first = spawn(Target, name="mon.named").ref
    by_name = monitor("mon.named")
    by_ref = monitor(ref("mon.named"))
    assert isinstance(by_name, Monitor) and by_name.target is first and by_ref.target is first
    first.stop()
    assert by_name.wait(timeout=WAIT).ref is first and by_ref.wait(timeout=WAIT).ref is first
    with pytest.raises(NameNotFoundError):
        monitor("mon.named")
    with pytest.raises(NameNotFoundError):
        monitor(ref("mon.nobody"))


def test_monitor_rejects_what_is_not_an_actor() -> None:
    with pytest.raises(TypeError):
        monitor(42)


def test_monitor_of_a_plain_pykka_actor() -> None:
    plain = Target.start()  # not started through spawn: no supervised semantics
    m = monitor(plain)
    twice = monitor(plain)
    assert plain.is_alive()
    plain.stop()
    assert m.wait(timeout=WAIT).reason == "unknown"
    assert twice.wait(timeout=WAIT).reason == "unknown"
    assert not plain.is_alive()
    assert monitor(plain).wait(timeout=0).reason == "noproc"


def test_cancel_on_a_plain_pykka_actor() -> None:
    plain = Target.start()
    m = monitor(plain)
    m.cancel()
    plain.stop()
    assert m.down is None and not plain.is_alive()


def test_monitors_fire_once_the_name_is_free() -> None:
    sup = Supervisor.start_link([ChildSpec("t", Target, name="mon.free", restart="temporary")])
    target = whereis("mon.free")
    assert target is not None
    seen: list[object] = []
    m = monitor(target, watcher=lambda d: seen.append(whereis("mon.free")))
    target.tell("crash")
    m.wait(timeout=WAIT)  # the watcher has run by then
    assert seen == [None]
    sup.stop()
