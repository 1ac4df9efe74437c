"""`Supervisor`: OTP's matrix (strategy x restart type x exit kind), intensity and
escalation, start failures, shutdown modes, introspection, events, logging,
and the `SupervisedActor` loop (let it crash, context propagation, kill)."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest
from _subprocess import run_python

from supervisors import (
    AlreadyStartedError,
    ChildExited,
    ChildNotFoundError,
    ChildRestarted,
    ChildRestartingError,
    ChildSpec,
    ChildStarted,
    ChildStartError,
    Down,
    IntensityExceeded,
    InvalidSpecError,
    NotAnActorError,
    RestartIntensityError,
    SupervisedActor,
    SupervisionEvent,
    Supervisor,
    SupervisorError,
    SupervisorRef,
    add_listener,
    kill,
    monitor,
    ref,
    remove_listener,
    set_message_hook,
    spawn,
    whereis,
)
from zixir_actors.testing import FakeClock, capture_logs, wait_for

WAIT = 5.0


class Boom(Exception):
    """The crash the tests provoke."""


class Journal:
    """Start/stop order of children, shared between threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[tuple[str, str]] = []

    def add(self, what: str, who: str) -> None:
        with self._lock:
            self._entries.append((what, who))

    def take(self) -> list[tuple[str, str]]:
        with self._lock:
            taken, self._entries = self._entries, []
            return taken


class Worker(pykka.ThreadingActor):
    """A plain Pykka actor: supervisors give it let-it-crash semantics."""

    def __init__(self, who: str, journal: Journal, fail_start: bool = False) -> None:
        super().__init__()
        self.who = who
        self.journal = journal
        self.fail_start = fail_start
        self.count = 0

    def on_start(self) -> None:
        if self.fail_start:
            raise Boom(f"{self.who} cannot start")
        self.journal.add("start", self.who)

    def on_stop(self) -> None:
        self.journal.add("stop", self.who)

    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise Boom(self.who)
        if message == "stop":
            self.stop()
            return None
        if message == "shutdown":
            self.stop(reason="shutdown")  # type: ignore[call-arg]  # SupervisedActor.stop
            return None
        self.count += 1
        return self.count


def spec(who: str, journal: Journal, **options: Any) -> ChildSpec:
    return ChildSpec(who, Worker, kwargs={"who": who, "journal": journal}, **options)


@pytest.fixture
def journal() -> Journal:
    return Journal()


@pytest.fixture
def events() -> Iterator[list[SupervisionEvent]]:
    seen: list[SupervisionEvent] = []
    listener = add_listener(seen.append)
    yield seen
    remove_listener(listener)


def child_ref(sup: SupervisorRef, child_id: Any) -> pykka.ActorRef[Any] | None:
    return {c.id: c.ref for c in sup.which_children(timeout=WAIT)}[child_id]


def exit_and_settle(sup: SupervisorRef, target: pykka.ActorRef[Any],
                    trigger: Callable[[], object]) -> Down:
    """Make `target` exit and return once its supervisor has dealt with it.

    The supervisor's monitor fires before ours, so its `Down` is already in
    its inbox when ours arrives; a call to it then waits for the restart.
    """
    m = monitor(target)
    trigger()
    down = m.wait(timeout=WAIT)
    sup.count_children(timeout=WAIT)
    return down


# --- OTP's matrix -------------------------------------------------------------

EXIT_KINDS = ("normal", "shutdown", "crash_tell", "crash_ask")


def provoke(target: pykka.ActorRef[Any], kind: str) -> None:
    if kind == "normal":
        target.tell("stop")
    elif kind == "shutdown":
        target.tell("shutdown")
    elif kind == "crash_tell":
        target.tell("crash")
    else:
        with pytest.raises(Boom):
            target.ask("crash", timeout=WAIT)


RESTARTS_AFTER = {"permanent": set(EXIT_KINDS), "transient": {"crash_tell", "crash_ask"},
                  "temporary": set()}

RESTARTED = {
    "one_for_one": [("start", "b")],
    "one_for_all": [("stop", "c"), ("stop", "a"), ("start", "a"), ("start", "b"), ("start", "c")],
    "rest_for_one": [("stop", "c"), ("start", "b"), ("start", "c")],
}


@pytest.mark.parametrize("kind", EXIT_KINDS)
@pytest.mark.parametrize("restart", ("permanent", "transient", "temporary"))
@pytest.mark.parametrize("strategy", ("one_for_one", "one_for_all", "rest_for_one"))
def test_strategy_restart_type_and_exit_kind(strategy: str, restart: str, kind: str,
                                             journal: Journal,
                                             events: list[SupervisionEvent]) -> None:
    sup = Supervisor.start_link([spec("a", journal), spec("b", journal, restart=restart),
                                 spec("c", journal)], strategy=strategy)  # type: ignore[arg-type]
    assert journal.take() == [("start", "a"), ("start", "b"), ("start", "c")]
    before = {c.id: c.ref for c in sup.which_children()}

    down = exit_and_settle(sup, before["b"], lambda: provoke(before["b"], kind))  # type: ignore[arg-type]

    expected_reason = {"normal": "normal", "shutdown": "shutdown"}.get(kind)
    if expected_reason is None:
        assert isinstance(down.reason, Boom)
    else:
        assert down.reason == expected_reason
    exited = [e for e in events if isinstance(e, ChildExited) and e.child_id == "b"]
    assert exited[0].reason == down.reason
    stopped_itself = [("stop", "b")] if kind in ("normal", "shutdown") else []
    after = {c.id: c.ref for c in sup.which_children()}
    if kind in RESTARTS_AFTER[restart]:
        assert journal.take() == stopped_itself + RESTARTED[strategy]
        assert after["b"] is not None and after["b"] is not before["b"]
        assert after["b"].ask("ping", timeout=WAIT) == 1  # fresh state
        restarted = {e.child_id for e in events if isinstance(e, ChildRestarted)}
        assert restarted == {"one_for_one": {"b"}, "one_for_all": {"a", "b", "c"},
                             "rest_for_one": {"b", "c"}}[strategy]
        for kept in {"a", "c"} - restarted:
            assert after[kept] is before[kept]
    else:
        assert journal.take() == stopped_itself
        assert after["a"] is before["a"] and after["c"] is before["c"]
        if restart == "temporary":
            assert list(after) == ["a", "c"]  # a temporary child's spec is forgotten
        else:
            assert after["b"] is None
        assert not any(isinstance(e, ChildRestarted) for e in events)
    sup.stop()
    assert journal.take() == [("stop", who) for who in reversed(after) if after[who] is not None]


def test_children_start_in_order_and_stop_in_reverse(journal: Journal) -> None:
    sup = Supervisor.start_link([spec(w, journal) for w in "abcd"])
    assert journal.take() == [("start", w) for w in "abcd"]
    sup.stop()
    assert journal.take() == [("stop", w) for w in "dcba"]
    assert not sup.is_alive()


def test_one_for_all_does_not_restart_temporary_siblings(journal: Journal) -> None:
    sup = Supervisor.start_link([spec("a", journal, restart="temporary"), spec("b", journal),
                                 spec("c", journal)], strategy="one_for_all")
    journal.take()
    b = child_ref(sup, "b")
    assert b is not None
    exit_and_settle(sup, b, lambda: b.tell("crash"))
    assert journal.take() == [("stop", "c"), ("stop", "a"), ("start", "b"), ("start", "c")]
    assert [c.id for c in sup.which_children()] == ["b", "c"]
    sup.stop()


def test_rest_for_one_skips_later_children_that_are_not_running(journal: Journal) -> None:
    sup = Supervisor.start_link([spec(w, journal) for w in "abc"], strategy="rest_for_one")
    sup.terminate_child("c")
    journal.take()
    b = child_ref(sup, "b")
    assert b is not None
    exit_and_settle(sup, b, lambda: b.tell("crash"))
    assert journal.take() == [("start", "b")]
    assert child_ref(sup, "c") is None
    sup.stop()


# --- restart intensity and escalation ----------------------------------------------


def crash_and_settle(sup: SupervisorRef, child_id: Any) -> Down:
    target = child_ref(sup, child_id)
    assert target is not None
    return exit_and_settle(sup, target, lambda: target.tell("crash"))


def test_intensity_counts_restarts_within_the_window_only(journal: Journal) -> None:
    clock = FakeClock()
    sup = Supervisor.start_link([spec("a", journal)], max_restarts=2, max_seconds=5.0,
                                clock=clock.monotonic)
    watch = monitor(sup.actor_ref)
    for _ in range(10):  # 2 restarts per window never exceed the intensity
        crash_and_settle(sup, "a")
        crash_and_settle(sup, "a")
        clock.advance(5.0)
    assert sup.is_alive() and watch.down is None
    crash_and_settle(sup, "a")
    crash_and_settle(sup, "a")
    target = child_ref(sup, "a")
    assert target is not None
    target.tell("crash")  # the third restart within 5 s is one too many
    down = watch.wait(timeout=WAIT)
    assert isinstance(down.reason, RestartIntensityError)
    assert down.reason.child_id == "a" and down.reason.max_restarts == 2
    assert isinstance(down.reason.last_reason, Boom)


def test_max_restarts_zero_gives_up_on_the_first_crash(journal: Journal,
                                                       events: list[SupervisionEvent]) -> None:
    sup = Supervisor.start_link([spec("a", journal), spec("b", journal)], max_restarts=0)
    watch = monitor(sup.actor_ref)
    b = child_ref(sup, "b")
    assert b is not None
    b.tell("crash")
    assert isinstance(watch.wait(timeout=WAIT).reason, RestartIntensityError)
    assert ("stop", "a") in journal.take()  # the others were stopped
    exceeded = [e for e in events if isinstance(e, IntensityExceeded)]
    assert len(exceeded) == 1 and exceeded[0].child_id == "b"
    assert exceeded[0].max_restarts == 0 and exceeded[0].max_seconds == 5.0


def test_intensity_exceeded_escalates_through_two_levels(journal: Journal,
                                                         events: list[SupervisionEvent]) -> None:
    clock = FakeClock()
    inner = Supervisor.child_spec("inner", [spec("w", journal, name="esc.w")], max_restarts=1,
                                  clock=clock.monotonic, name="esc.inner")
    middle = Supervisor.child_spec("middle", [spec("m", journal), inner], max_restarts=1,
                                   clock=clock.monotonic, name="esc.middle")
    top = Supervisor.start_link([spec("t", journal), middle], max_restarts=1,
                                clock=clock.monotonic, name="esc.top")
    top_down = monitor(top.actor_ref)

    def blow_inner() -> None:
        """Crash the worker twice: the inner supervisor gives up, the middle restarts it."""
        inner_ref = whereis("esc.inner")
        assert inner_ref is not None
        gone = monitor(inner_ref)
        worker = whereis("esc.w")
        assert worker is not None
        crash_and_settle(SupervisorRef(inner_ref), "w")
        worker = whereis("esc.w")
        assert worker is not None
        worker.tell("crash")
        assert isinstance(gone.wait(timeout=WAIT).reason, RestartIntensityError)

    def blow_middle() -> Down:
        """The inner supervisor gives up twice in the window: the middle one gives up."""
        blow_inner()  # the middle's first restart of inner: allowed
        wait_for(lambda: whereis("esc.w") is not None, timeout=WAIT)
        middle_ref = whereis("esc.middle")
        assert middle_ref is not None
        middle_gone = monitor(middle_ref)
        blow_inner()
        return middle_gone.wait(timeout=WAIT)

    middle_down = blow_middle()
    assert isinstance(middle_down.reason, RestartIntensityError)
    assert middle_down.reason.child_id == "inner"
    assert isinstance(middle_down.reason.last_reason, RestartIntensityError)
    assert isinstance(middle_down.reason.last_reason.last_reason, Boom)
    assert top_down.down is None  # top restarted the middle supervisor: its first restart
    wait_for(lambda: whereis("esc.w") is not None, timeout=WAIT)

    blow_middle()
    top_reason = top_down.wait(timeout=WAIT).reason  # top's second restart: it gives up too
    assert isinstance(top_reason, RestartIntensityError) and top_reason.child_id == "middle"
    assert [e.supervisor for e in events if isinstance(e, IntensityExceeded)] == [
        "esc.inner", "esc.inner", "esc.middle", "esc.inner", "esc.inner", "esc.middle",
        "esc.top"]
    assert whereis("esc.top") is None and whereis("esc.w") is None
    assert ("stop", "t") in journal.take()


def test_restarts_spread_out_in_time_never_escalate(journal: Journal) -> None:
    clock = FakeClock()
    inner = Supervisor.child_spec("inner", [spec("w", journal, name="calm.w")], max_restarts=1,
                                  clock=clock.monotonic, name="calm.inner")
    top = Supervisor.start_link([inner], max_restarts=1, clock=clock.monotonic)
    inner_sup = SupervisorRef(whereis("calm.inner"))  # type: ignore[arg-type]
    for _ in range(5):
        crash_and_settle(inner_sup, "w")
        clock.advance(6.0)
    assert inner_sup.is_alive() and child_ref(inner_sup, "w") is not None
    top.stop()


# --- start failures and bad input ------------------------------------------------------


def test_start_failure_stops_started_children_in_reverse_and_names_the_child(
        journal: Journal) -> None:
    failing = ChildSpec("c", Worker, kwargs={"who": "c", "journal": journal, "fail_start": True},
                        name="fail.c")
    with pytest.raises(ChildStartError) as caught:
        Supervisor.start_link([spec("a", journal, name="fail.a"), spec("b", journal), failing,
                               spec("d", journal)], name="fail.sup")
    assert caught.value.child_id == "c"
    assert isinstance(caught.value.cause, Boom) and "c cannot start" in str(caught.value)
    assert journal.take() == [("start", "a"), ("start", "b"), ("stop", "b"), ("stop", "a")]
    assert whereis("fail.sup") is None and whereis("fail.a") is None


def test_constructor_failure_is_a_child_start_error(journal: Journal) -> None:
    class Broken(pykka.ThreadingActor):
        def __init__(self) -> None:
            raise Boom("constructor")

    with pytest.raises(ChildStartError) as caught:
        Supervisor.start_link([spec("a", journal), ChildSpec("broken", Broken)])
    assert caught.value.child_id == "broken" and isinstance(caught.value.cause, Boom)
    assert journal.take() == [("start", "a"), ("stop", "a")]


def test_factory_returning_a_non_actor_is_rejected(journal: Journal) -> None:
    with pytest.raises(NotAnActorError) as caught:
        Supervisor.start_link([spec("a", journal), ChildSpec("odd", lambda: "not an actor")])
    assert caught.value.child_id == "odd" and caught.value.returned == "not an actor"
    assert journal.take() == [("start", "a"), ("stop", "a")]


def test_factory_returning_an_actor_ref_is_supervised(journal: Journal) -> None:
    sup = Supervisor.start_link([ChildSpec("f", lambda: spawn(Worker, "f", journal).ref)])
    crash_and_settle(sup, "f")
    assert journal.take() == [("start", "f"), ("start", "f")]
    sup.stop()


@pytest.mark.parametrize(("options", "field"), [
    ({"strategy": "one_for_some"}, "strategy"),
    ({"max_restarts": -1}, "max_restarts"),
    ({"max_restarts": 1.5}, "max_restarts"),
    ({"max_seconds": 0}, "max_seconds"),
    ({"max_seconds": -2.0}, "max_seconds"),
])
def test_bad_supervisor_options_raise_and_start_nothing(options: dict[str, Any], field: str,
                                                        journal: Journal) -> None:
    with pytest.raises(InvalidSpecError) as caught:
        Supervisor.start_link([spec("a", journal)], **options)
    assert caught.value.field == field
    assert journal.take() == [] and pykka.ActorRegistry.get_all() == []


def test_duplicate_child_ids_raise_and_start_nothing(journal: Journal) -> None:
    with pytest.raises(InvalidSpecError) as caught:
        Supervisor.start_link([spec("a", journal), spec("b", journal), spec("a", journal)])
    assert caught.value.field == "id" and caught.value.child_id == "a"
    assert journal.take() == [] and pykka.ActorRegistry.get_all() == []


@pytest.mark.parametrize("children", [ChildSpec("x", Worker), ["not a spec"], "abc"])
def test_a_child_list_that_is_not_specs_raises(children: Any) -> None:
    with pytest.raises(InvalidSpecError):
        Supervisor.start_link(children)
    assert pykka.ActorRegistry.get_all() == []


def test_child_spec_for_a_nested_supervisor_validates_at_once(journal: Journal) -> None:
    with pytest.raises(InvalidSpecError):
        Supervisor.child_spec("n", [spec("a", journal)], strategy="nope")  # type: ignore[arg-type]
    with pytest.raises(InvalidSpecError):
        Supervisor.child_spec("n", [spec("a", journal), spec("a", journal)])
    assert Supervisor.child_spec("n", [spec("a", journal)]).type == "supervisor"
    assert journal.take() == []


# --- shutdown modes -----------------------------------------------------------------


class Blocker(pykka.ThreadingActor):
    """Its handler (or its on_stop) blocks on an Event the test controls."""

    def __init__(self, entered: threading.Event, release: threading.Event,
                 block_on_stop: bool = False) -> None:
        super().__init__()
        self.entered = entered
        self.release = release
        self.block_on_stop = block_on_stop
        self.stopped_cleanly = False

    def on_receive(self, message: Any) -> Any:
        self.entered.set()
        self.release.wait()
        return "done"

    def on_stop(self) -> None:
        if self.block_on_stop:
            self.entered.set()
            self.release.wait()


@pytest.fixture
def gates() -> Iterator[tuple[threading.Event, threading.Event]]:
    entered, release = threading.Event(), threading.Event()
    yield entered, release
    release.set()  # no thread outlives the test


def test_shutdown_timeout_kills_a_child_stuck_in_a_handler(
        gates: tuple[threading.Event, threading.Event], events: list[SupervisionEvent]) -> None:
    entered, release = gates
    sup = Supervisor.start_link([ChildSpec("stuck", Blocker, args=(entered, release),
                                           shutdown=0.1, name="stuck")])
    stuck = whereis("stuck")
    assert stuck is not None
    watch = monitor(stuck)
    pending = stuck.ask("block", block=False)
    assert entered.wait(WAIT)
    sup.terminate_child("stuck")  # returns after about 0.1 s: the kill
    assert watch.wait(timeout=WAIT).reason == "killed"
    assert [e.reason for e in events if isinstance(e, ChildExited)] == ["killed"]
    with pytest.raises(pykka.ActorDeadError):
        pending.get(timeout=WAIT)  # the ask in flight is answered at once
    assert not stuck.is_alive() and whereis("stuck") is None
    thread = stuck._actor_weakref()._zx_thread  # type: ignore[union-attr]
    assert thread.is_alive()  # Python cannot stop a thread blocked in C...
    release.set()
    thread.join(WAIT)  # ...but it ends as soon as the call returns
    assert not thread.is_alive()
    sup.stop()


def test_supervisor_stop_kills_a_child_stuck_in_on_stop(
        gates: tuple[threading.Event, threading.Event], journal: Journal) -> None:
    entered, release = gates
    sup = Supervisor.start_link([spec("a", journal),
                                 ChildSpec("slow", Blocker, args=(entered, release, True),
                                           shutdown=0.1)])
    slow = child_ref(sup, "slow")
    assert slow is not None
    watch = monitor(slow)
    sup.stop()
    assert entered.is_set() and watch.wait(timeout=WAIT).reason == "killed"
    assert journal.take() == [("start", "a"), ("stop", "a")]  # the others still stop cleanly
    release.set()


def test_brutal_kill_does_not_run_on_stop(journal: Journal) -> None:
    sup = Supervisor.start_link([spec("a", journal, shutdown="brutal_kill")])
    a = child_ref(sup, "a")
    assert a is not None
    watch = monitor(a)
    sup.terminate_child("a")
    assert watch.wait(timeout=WAIT).reason == "killed"
    assert journal.take() == [("start", "a")]
    sup.restart_child("a")
    sup.stop()
    assert journal.take() == [("start", "a")]


def test_shutdown_none_waits_for_the_child(gates: tuple[threading.Event, threading.Event]) -> None:
    entered, release = gates
    sup = Supervisor.start_link([ChildSpec("patient", Blocker, args=(entered, release, True),
                                           shutdown=None)])
    patient = child_ref(sup, "patient")
    assert patient is not None
    watch = monitor(patient)
    stopped = threading.Event()
    stopper = threading.Thread(target=lambda: (sup.stop(), stopped.set()))
    stopper.start()
    assert entered.wait(WAIT)
    assert not stopped.wait(0.3)  # longer than the 0.1 s that kills in the test above
    release.set()
    assert stopped.wait(WAIT)
    stopper.join(WAIT)
    assert watch.wait(timeout=WAIT).reason == "shutdown"


def test_kill_of_an_idle_actor_and_of_a_dead_one() -> None:
    idle = spawn(Worker, "idle", Journal()).ref
    watch = monitor(idle)
    kill(idle)
    kill(idle)  # twice is harmless
    assert watch.wait(timeout=WAIT).reason == "killed"
    with pytest.raises(pykka.ActorDeadError):
        idle.ask("ping", timeout=WAIT)


def test_killing_a_supervisor_kills_its_children(journal: Journal) -> None:
    inner = Supervisor.child_spec("inner", [spec("b", journal)], name="killed.inner")
    sup = Supervisor.start_link([spec("a", journal), inner])
    inner_ref = whereis("killed.inner")
    assert inner_ref is not None
    b = child_ref(SupervisorRef(inner_ref), "b")
    a = child_ref(sup, "a")
    assert a is not None and b is not None
    downs = [monitor(x) for x in (sup.actor_ref, a, inner_ref, b)]
    kill(sup.actor_ref)
    assert [m.wait(timeout=WAIT).reason for m in downs] == ["killed"] * 4


# --- introspection and control ----------------------------------------------------


def test_which_and_count_children(journal: Journal) -> None:
    nested = Supervisor.child_spec("nested", [spec("x", journal)])
    sup = Supervisor.start_link([spec("a", journal, name="intro.a"), nested,
                                 spec("t", journal, restart="temporary")])
    rows = sup.which_children()
    assert [(c.id, c.type, c.restart, c.name, c.actor_class) for c in rows] == [
        ("a", "worker", "permanent", "intro.a", "Worker"),
        ("nested", "supervisor", "permanent", None, "Supervisor"),
        ("t", "worker", "temporary", None, "Worker")]
    assert rows[0].ref is whereis("intro.a")
    counts = sup.count_children()
    assert (counts.specs, counts.active, counts.supervisors, counts.workers) == (3, 3, 1, 2)
    sup.terminate_child("a")
    assert sup.count_children().active == 2 and sup.count_children().specs == 3
    sup.stop()


def test_start_child_and_its_errors(journal: Journal) -> None:
    sup = Supervisor.start_link([spec("a", journal)])
    new = sup.start_child(spec("b", journal))
    assert new.ask("ping", timeout=WAIT) == 1
    assert [c.id for c in sup.which_children()] == ["a", "b"]
    with pytest.raises(AlreadyStartedError) as running:
        sup.start_child(spec("b", journal))
    assert running.value.child_id == "b"
    sup.terminate_child("b")
    with pytest.raises(InvalidSpecError):  # present but stopped: OTP's already_present
        sup.start_child(spec("b", journal))
    with pytest.raises(InvalidSpecError):
        sup.start_child("not a spec")  # type: ignore[arg-type]
    failing = ChildSpec("f", Worker, kwargs={"who": "f", "journal": journal, "fail_start": True})
    with pytest.raises(ChildStartError):
        sup.start_child(failing)
    with pytest.raises(NotAnActorError):
        sup.start_child(ChildSpec("n", lambda: 42))
    assert [c.id for c in sup.which_children()] == ["a", "b"]
    sup.stop()


def test_terminate_restart_and_delete_child(journal: Journal) -> None:
    sup = Supervisor.start_link([spec("a", journal), spec("t", journal, restart="temporary")])
    a = child_ref(sup, "a")
    assert a is not None
    sup.terminate_child(a)  # by ref
    assert child_ref(sup, "a") is None
    with pytest.raises(AlreadyStartedError):
        sup.delete_child("t")
    sup.terminate_child("t")  # a temporary child's spec goes with it
    assert [c.id for c in sup.which_children()] == ["a"]
    again = sup.restart_child("a")
    assert child_ref(sup, "a") is again and again.ask("ping", timeout=WAIT) == 1
    with pytest.raises(AlreadyStartedError):
        sup.restart_child("a")
    sup.terminate_child("a")
    sup.delete_child("a")
    assert sup.which_children() == []
    for op in (sup.terminate_child, sup.restart_child, sup.delete_child):
        with pytest.raises(ChildNotFoundError) as missing:
            op("nope")
        assert missing.value.child_id == "nope"
    sup.stop()


def test_calls_to_a_stopped_supervisor_raise(journal: Journal) -> None:
    sup = Supervisor.start_link([spec("a", journal)])
    sup.stop()
    sup.stop()  # idempotent
    with pytest.raises(SupervisorError):
        sup.which_children()
    plain = spawn(Worker, "w", journal).ref
    with pytest.raises(TypeError):
        SupervisorRef(plain)
    plain.stop()


def test_tree_renders_a_nested_tree(journal: Journal) -> None:
    from supervisors import DynamicSupervisor

    inner = Supervisor.child_spec("inner", [spec("x", journal, name="tree.x"),
                                            spec("y", journal)],
                                  strategy="rest_for_one", name="tree.inner")
    dyn = DynamicSupervisor.child_spec("jobs", name="tree.jobs")
    sup = Supervisor.start_link([spec("a", journal, name="tree.a"), inner, dyn,
                                 spec("z", journal)], name="tree.root")
    SupervisorRef(whereis("tree.jobs")).start_child(spec("job", journal))  # type: ignore[arg-type]
    sup.terminate_child("z")
    assert sup.tree() == "\n".join([
        "tree.root  Supervisor, one_for_one, 3/4 running",
        "├── a (tree.a)  Worker  running",
        "├── inner: tree.inner  Supervisor, rest_for_one, 2/2 running",
        "│   ├── x (tree.x)  Worker  running",
        "│   └── y  Worker  running",
        "├── jobs: tree.jobs  DynamicSupervisor, dynamic, 1/1 running",
        "│   └── job  Worker  running",
        "└── z  Worker  stopped",
    ])
    sup.stop()


# --- names, adoption and idempotent start_link ------------------------------------


def test_supervisor_adopts_a_child_started_by_hand(journal: Journal,
                                                   events: list[SupervisionEvent]) -> None:
    by_hand = spawn(Worker, "a", journal, name="adopt.a").ref
    sup = Supervisor.start_link([spec("a", journal, name="adopt.a"), spec("b", journal)])
    assert child_ref(sup, "a") is by_hand
    assert journal.take() == [("start", "a"), ("start", "b")]  # no second "a"
    started = [e for e in events if isinstance(e, ChildStarted)]
    assert [(e.child_id, e.adopted) for e in started] == [("a", True), ("b", False)]
    exit_and_settle(sup, by_hand, lambda: by_hand.tell("crash"))  # supervised like its own
    assert child_ref(sup, "a") is whereis("adopt.a") is not by_hand
    sup.stop()
    assert whereis("adopt.a") is None


def test_start_link_under_a_live_name_returns_the_running_supervisor(journal: Journal) -> None:
    first = Supervisor.start_link([spec("a", journal)], name="idem.sup")
    again = Supervisor.start_link([spec("a", journal)], name="idem.sup")
    assert again == first and again.already_started and not first.already_started
    assert journal.take() == [("start", "a")]
    from supervisors import NameTakenError

    holder = spawn(Worker, "h", journal, name="idem.worker").ref
    with pytest.raises(NameTakenError):
        Supervisor.start_link([], name="idem.worker")
    holder.stop()
    first.stop()


def test_start_link_races_yield_one_supervisor(journal: Journal) -> None:
    barrier = threading.Barrier(32)
    results: list[SupervisorRef] = []
    lock = threading.Lock()

    def race() -> None:
        barrier.wait(WAIT)
        got = Supervisor.start_link([spec("a", journal)], name="race.sup")
        with lock:
            results.append(got)

    threads = [threading.Thread(target=race) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert len(results) == 32 and len(set(results)) == 1
    assert sum(not r.already_started for r in results) == 1
    assert journal.take() == [("start", "a")]
    results[0].stop()


def test_named_child_keeps_its_name_across_restarts(journal: Journal) -> None:
    sup = Supervisor.start_link([spec("a", journal, name="named.a")])
    first = whereis("named.a")
    assert first is not None
    crash_and_settle(sup, "a")
    second = whereis("named.a")
    assert second is not None and second is not first
    assert ref("named.a").ask("ping", timeout=WAIT) == 1
    sup.stop()


# --- events and logs ---------------------------------------------------------------


def test_events_describe_starts_exits_and_restarts(journal: Journal,
                                                   events: list[SupervisionEvent]) -> None:
    sup = Supervisor.start_link([spec("a", journal)], name="ev.sup")
    first = child_ref(sup, "a")
    crash_and_settle(sup, "a")
    crash_and_settle(sup, "a")
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["ChildStarted", "ChildExited", "ChildStarted", "ChildRestarted",
                     "ChildExited", "ChildStarted", "ChildRestarted"]
    assert events[1] == ChildExited("ev.sup", "a", first, events[1].reason)  # type: ignore[union-attr]
    restarted = [e for e in events if isinstance(e, ChildRestarted)]
    assert [(e.supervisor, e.child_id, e.restart_count) for e in restarted] == [
        ("ev.sup", "a", 1), ("ev.sup", "a", 2)]
    assert all(isinstance(e.reason, Boom) for e in restarted)
    sup.stop()
    assert isinstance(events[-1], ChildExited) and events[-1].reason == "shutdown"


def test_a_failing_listener_does_not_disturb_supervision(journal: Journal) -> None:
    def bad(event: SupervisionEvent) -> None:
        raise RuntimeError("listener bug")

    add_listener(bad)
    try:
        sup = Supervisor.start_link([spec("a", journal)])
        crash_and_settle(sup, "a")
        assert child_ref(sup, "a") is not None
        sup.stop()
    finally:
        remove_listener(bad)
    remove_listener(bad)  # removing twice is a no-op


def test_restarts_and_escalations_are_logged(journal: Journal) -> None:
    with capture_logs(level="WARNING") as logs:
        sup = Supervisor.start_link([spec("a", journal)], max_restarts=1, name="log.sup")
        watch = monitor(sup.actor_ref)
        crash_and_settle(sup, "a")
        target = child_ref(sup, "a")
        assert target is not None
        target.tell("crash")
        watch.wait(timeout=WAIT)
    first, second = logs.find("child a of log.sup crashed")
    assert first["message"].endswith("; restarting (restart #1)")
    assert "Boom: a at " in first["message"] and first["level"] == "WARNING"
    assert first["supervisor"] == "log.sup" and first["child"] == "a"
    assert first["restart_count"] == 1 and "Boom" in first["reason"]
    assert (first["error_type"], first["error"]) == ("Boom", "a")
    assert first["where"].endswith(" in on_receive")
    assert first["traceback"].startswith("Traceback") and "raise Boom" in first["traceback"]
    assert "_zx_run" not in first["traceback"]  # the actor loop's frames are left out
    assert first["exception"] is None  # no exception object: no sink can print locals
    assert second["message"].endswith("; restart intensity reached")
    (gave_up,) = logs.find("max restart intensity")
    assert gave_up["level"] == "ERROR" and gave_up["child"] == "a"


def test_a_failed_restart_is_one_compact_record(journal: Journal) -> None:
    gate = new_gate()
    sup = Supervisor.start_link([refusing("f", journal, gate)], max_restarts=5,
                                clock=FakeClock().monotonic)
    gate["fails"] = 1
    with capture_logs(level="WARNING") as logs:
        crash_and_settle(sup, "f")
        wait_for(lambda: child_ref(sup, "f") is not None, timeout=WAIT)
    sup.stop()
    (failed,) = logs.find("restart of child f")
    assert failed["message"].endswith("failed: Boom: f refuses to start at "
                                      f"{failed['where']}; retrying")
    assert failed["where"].endswith(" in on_start") and failed["error_type"] == "Boom"
    assert "Traceback" in failed["traceback"] and failed["exception"] is None


def test_importing_supervisors_alone_logs_nothing(tmp_path: Path) -> None:
    script = tmp_path / "quiet.py"
    script.write_text(
        "import pykka\n"
        "from supervisors import ChildSpec, SupervisedActor, Supervisor, ref\n"
        "class Crashy(pykka.ThreadingActor):\n"
        "    def on_receive(self, message):\n"
        "        api_key = 'sk-live-quiet-0123456789'\n"
        "        raise RuntimeError('crash')\n"
        "class Alone(SupervisedActor):\n"
        "    def on_receive(self, message):\n"
        "        raise RuntimeError('nobody watches')\n"
        "sup = Supervisor.start_link([ChildSpec('c', Crashy, name='c')])\n"
        "try:\n"
        "    ref('c').ask('go', timeout=5)\n"
        "except RuntimeError:\n"
        "    pass\n"
        "alone = Alone.start()\n"
        "alone.tell('go')\n"
        "alone.actor_stopped.wait(5)\n"
        "sup.stop()\n"
    )
    result = run_python(str(script))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # loguru's default stderr sink got nothing from the library


# --- the SupervisedActor loop ---------------------------------------------------------


def test_an_ask_that_crashes_reaches_the_asker_and_the_actor_is_dead_by_then() -> None:
    worker = spawn(Worker, "w", Journal()).ref
    with pytest.raises(Boom):
        worker.ask("crash", timeout=WAIT)
    assert not worker.is_alive()
    with pytest.raises(pykka.ActorDeadError):
        worker.ask("ping", timeout=WAIT)


def test_messages_queued_behind_a_crash_get_actor_dead_error() -> None:
    entered, release = threading.Event(), threading.Event()

    class Gate(SupervisedActor):
        def on_receive(self, message: Any) -> Any:
            if message == "hold":
                entered.set()
                release.wait()
                raise Boom("after hold")
            return message

    gate = Gate.start()
    holding = gate.ask("hold", block=False)
    assert entered.wait(WAIT)
    queued = [gate.ask(i, block=False) for i in range(5)]
    release.set()
    with pytest.raises(Boom):
        holding.get(timeout=WAIT)
    for future in queued:
        with pytest.raises(pykka.ActorDeadError):
            future.get(timeout=WAIT)


def test_on_failure_runs_after_a_crash_and_its_errors_are_contained() -> None:
    seen = threading.Event()

    class Fragile(SupervisedActor):
        def on_receive(self, message: Any) -> Any:
            raise Boom(message)

        def on_failure(self, *exc_info: Any) -> None:
            seen.set()
            raise RuntimeError("on_failure bug")

    fragile = Fragile.start()
    watch = monitor(fragile)
    fragile.tell("x")
    assert isinstance(watch.wait(timeout=WAIT).reason, Boom) and seen.is_set()


def test_context_vars_travel_with_tell_ask_and_proxy() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("trace", default="none")
    told: list[str] = []
    got = threading.Event()

    class Reader(SupervisedActor):
        def on_receive(self, message: Any) -> Any:
            if message == "tell":
                told.append(var.get())
                got.set()
            return var.get()

        def read(self) -> str:
            return var.get()

    sup = Supervisor.start_link([ChildSpec("r", Reader, name="ctx.r")])
    reader = whereis("ctx.r")
    assert reader is not None
    assert reader.ask("ask", timeout=WAIT) == "none"
    token = var.set("span-42")
    try:
        assert reader.ask("ask", timeout=WAIT) == "span-42"
        assert ref("ctx.r").ask("ask", timeout=WAIT) == "span-42"
        assert reader.proxy().read().get(timeout=WAIT) == "span-42"
        reader.tell("tell")
        assert got.wait(WAIT) and told == ["span-42"]
    finally:
        var.reset(token)
    assert reader.ask("ask", timeout=WAIT) == "none"  # the receiver's own context is untouched
    sup.stop()


def test_message_hook_sees_each_message_and_its_error() -> None:
    seen: list[tuple[Any, BaseException | None]] = []
    previous = set_message_hook(lambda actor, message, seconds, error: seen.append(
        (message, error)))
    try:
        worker = spawn(Worker, "h", Journal()).ref
        worker.ask("ping", timeout=WAIT)
        with pytest.raises(Boom):
            worker.ask("crash", timeout=WAIT)
    finally:
        set_message_hook(previous)
    assert seen[0] == ("ping", None)
    assert seen[1][0] == "crash" and isinstance(seen[1][1], Boom)


def test_on_start_failure_of_a_spawned_actor_is_a_child_start_error(journal: Journal) -> None:
    with pytest.raises(ChildStartError) as caught:
        spawn(Worker, "s", journal, True, name="spawn.fail")
    assert caught.value.child_id == "spawn.fail" and isinstance(caught.value.cause, Boom)
    assert whereis("spawn.fail") is None


def test_a_child_whose_on_start_hangs_fails_after_start_timeout(
        gates: tuple[threading.Event, threading.Event], journal: Journal) -> None:
    entered, release = gates

    class SlowStart(pykka.ThreadingActor):
        def on_start(self) -> None:
            entered.set()
            release.wait()

    with pytest.raises(ChildStartError) as caught:
        Supervisor.start_link([spec("a", journal), ChildSpec("slow", SlowStart, name="slow")],
                              start_timeout=0.1)
    assert caught.value.child_id == "slow" and isinstance(caught.value.cause, TimeoutError)
    assert entered.is_set() and whereis("slow") is None
    assert journal.take() == [("start", "a"), ("stop", "a")]
    release.set()


def test_nested_child_specs_pass_their_options_on(journal: Journal) -> None:
    from supervisors import DynamicSupervisor

    clock = FakeClock()
    nested = Supervisor.child_spec("n", [spec("a", journal)], max_restarts=7, clock=clock.monotonic,
                                   start_timeout=1.0, restart="transient", shutdown=2.0)
    assert nested.restart == "transient" and nested.shutdown == 2.0
    assert nested.start_kwargs["max_restarts"] == 7 and nested.start_kwargs["start_timeout"] == 1.0
    dyn = DynamicSupervisor.child_spec("d", max_children=2, clock=clock.monotonic)
    assert dyn.start_kwargs["max_children"] == 2 and dyn.start_kwargs["clock"] is not None
    with pytest.raises(InvalidSpecError):
        DynamicSupervisor.child_spec("d", max_children=-1)
    with pytest.raises(InvalidSpecError):
        DynamicSupervisor.child_spec("d", max_restarts=-1)
    sup = Supervisor.start_link([nested, dyn])
    assert sup.count_children().supervisors == 2
    sup.stop()


def test_a_child_whose_on_stop_raises_still_lets_the_others_stop(journal: Journal) -> None:
    class BadStop(pykka.ThreadingActor):
        def on_stop(self) -> None:
            raise Boom("on_stop")

    sup = Supervisor.start_link([spec("a", journal), ChildSpec("bad", BadStop),
                                 spec("c", journal)])
    bad = child_ref(sup, "bad")
    assert bad is not None
    watch = monitor(bad)
    sup.stop()
    assert isinstance(watch.wait(timeout=WAIT).reason, Boom)
    assert journal.take() == [("start", "a"), ("start", "c"), ("stop", "c"), ("stop", "a")]


def test_restarts_that_keep_failing_count_towards_the_intensity(
        events: list[SupervisionEvent]) -> None:
    starts = [0]

    class OnceOnly(pykka.ThreadingActor):
        def on_start(self) -> None:
            starts[0] += 1
            if starts[0] > 1:
                raise Boom(f"start #{starts[0]}")

        def on_receive(self, message: Any) -> Any:
            raise Boom("crash")

    sup = Supervisor.start_link([ChildSpec("once", OnceOnly)], max_restarts=3)
    watch = monitor(sup.actor_ref)
    target = child_ref(sup, "once")
    assert target is not None
    target.tell("crash")
    reason = watch.wait(timeout=WAIT).reason
    assert isinstance(reason, RestartIntensityError)
    assert isinstance(reason.last_reason, ChildStartError)
    assert starts[0] == 4  # the first start, then 3 failed restarts; the 4th exceeds
    assert not any(isinstance(e, ChildRestarted) for e in events)


def test_restart_child_that_fails_to_start_keeps_its_spec(journal: Journal) -> None:
    fail = [False]

    class Flaky(pykka.ThreadingActor):
        def on_start(self) -> None:
            if fail[0]:
                raise Boom("not now")

    sup = Supervisor.start_link([ChildSpec("f", Flaky)])
    sup.terminate_child("f")
    fail[0] = True
    with pytest.raises(ChildStartError):
        sup.restart_child("f")
    assert [(c.id, c.ref) for c in sup.which_children()] == [("f", None)]
    fail[0] = False
    assert sup.restart_child("f").is_alive()
    sup.stop()


def test_a_script_that_never_stops_its_tree_still_exits(tmp_path: Path) -> None:
    script = tmp_path / "forgetful.py"
    script.write_text(
        "import pykka\n"
        "from supervisors import ChildSpec, Supervisor\n"
        "class Worker(pykka.ThreadingActor):\n"
        "    def on_stop(self):\n"
        "        print('stopped cleanly', flush=True)\n"
        "Supervisor.start_link([ChildSpec('w', Worker)], name='forgetful')\n"
        "raise RuntimeError('the script dies without stop()')\n"
    )
    result = run_python(str(script))
    assert result.returncode == 1
    assert "the script dies without stop()" in result.stderr
    assert result.stdout.strip() == "stopped cleanly"


# --- restarts that keep failing (OTP-9549: try_again_restart) --------------------------


class Refusing(Worker):
    """A Worker whose starts fail while `gate["refuse"]` is set, or for `gate["fails"]` starts."""

    def __init__(self, who: str, journal: Journal, gate: dict[str, Any]) -> None:
        super().__init__(who, journal)
        self.gate = gate

    def on_start(self) -> None:
        gate = self.gate
        with gate["lock"]:
            gate["attempts"] += 1
            refuse = gate["refuse"].is_set() or gate["fails"] > 0
            if gate["fails"] > 0:
                gate["fails"] -= 1
        if refuse:
            raise Boom(f"{self.who} refuses to start")
        super().on_start()


def new_gate() -> dict[str, Any]:
    return {"lock": threading.Lock(), "attempts": 0, "fails": 0, "refuse": threading.Event()}


def attempts(gate: dict[str, Any]) -> int:
    with gate["lock"]:
        return int(gate["attempts"])


def refusing(who: str, journal: Journal, gate: dict[str, Any], **options: Any) -> ChildSpec:
    return ChildSpec(who, Refusing, kwargs={"who": who, "journal": journal, "gate": gate},
                     **options)


def endless_window() -> Callable[[], float]:
    """A clock that jumps past any window at each restart: intensity is never reached."""
    ticks = iter(range(0, 10**9, 1000))
    return lambda: float(next(ticks))


def test_supervisor_answers_calls_while_a_restart_keeps_failing(journal: Journal) -> None:
    gate = new_gate()
    sup = Supervisor.start_link([refusing("f", journal, gate)], max_restarts=3, max_seconds=1.0,
                                clock=endless_window())
    try:
        f = child_ref(sup, "f")
        assert f is not None
        gate["refuse"].set()
        f.tell("crash")
        wait_for(lambda: attempts(gate) >= 4, timeout=WAIT)  # the start, then 3 failed restarts
        (row,) = sup.which_children(timeout=WAIT)
        assert (row.id, row.ref, row.restarting) == ("f", None, True)
        other = sup.start_child(spec("other", journal), timeout=WAIT)
        assert other.ask("ping", timeout=WAIT) == 1
        assert sup.count_children(timeout=WAIT).active == 1
        with pytest.raises(ChildRestartingError):
            sup.restart_child("f", timeout=WAIT)
        with pytest.raises(ChildRestartingError):
            sup.delete_child("f", timeout=WAIT)
        assert "f  Refusing  restarting" in sup.tree(timeout=WAIT)
        sup.terminate_child("f", timeout=WAIT)  # ends the retries, as in OTP
        ended_at = attempts(gate)
        sup.which_children(timeout=WAIT)  # a retry queued before terminate_child is handled
        rows = {c.id: c for c in sup.which_children(timeout=WAIT)}
        assert attempts(gate) == ended_at
        assert (rows["f"].ref, rows["f"].restarting) == (None, False)
    finally:
        gate["refuse"].clear()
    assert sup.restart_child("f", timeout=WAIT).ask("ping", timeout=WAIT) == 1
    sup.stop()


def test_failed_restarts_are_retried_until_the_child_starts(
        journal: Journal, events: list[SupervisionEvent]) -> None:
    gate = new_gate()
    sup = Supervisor.start_link([refusing("f", journal, gate, name="retry.f")],
                                max_restarts=5, clock=FakeClock().monotonic)
    gate["fails"] = 2
    crash_and_settle(sup, "f")
    wait_for(lambda: child_ref(sup, "f") is not None, timeout=WAIT)
    assert ref("retry.f").ask("ping", timeout=WAIT) == 1
    restarted = [e for e in events if isinstance(e, ChildRestarted)]
    assert [(e.child_id, e.restart_count) for e in restarted] == [("f", 3)]
    assert isinstance(restarted[0].reason, Boom)  # the crash, not the failed starts
    sup.stop()


def test_retries_count_towards_the_intensity_and_then_escalate(journal: Journal) -> None:
    gate = new_gate()
    sup = Supervisor.start_link([refusing("f", journal, gate), spec("ok", journal)],
                                max_restarts=3, clock=FakeClock().monotonic)
    watch = monitor(sup.actor_ref)
    f = child_ref(sup, "f")
    assert f is not None
    gate["refuse"].set()
    f.tell("crash")
    reason = watch.wait(timeout=WAIT).reason
    assert isinstance(reason, RestartIntensityError)
    assert isinstance(reason.last_reason, ChildStartError)
    assert attempts(gate) == 4  # the start, then 3 restarts; the 4th exceeds
    assert ("stop", "ok") in journal.take()


def test_one_for_all_retries_the_whole_group_when_a_sibling_fails_to_restart(
        journal: Journal) -> None:
    gate = new_gate()
    sup = Supervisor.start_link([spec("a", journal), refusing("b", journal, gate),
                                 spec("c", journal)], strategy="one_for_all", max_restarts=5,
                                clock=FakeClock().monotonic)
    assert journal.take() == [("start", "a"), ("start", "b"), ("start", "c")]
    gate["fails"] = 2
    crash_and_settle(sup, "a")
    wait_for(lambda: all(c.ref is not None for c in sup.which_children(timeout=WAIT)),
             timeout=WAIT)
    # OTP: b's failed start leaves c down, shuts the restarted a down again, and
    # the next try restarts the whole group in order.
    assert journal.take() == [("stop", "c"), ("stop", "b"),
                              ("start", "a"), ("stop", "a"),
                              ("start", "a"), ("stop", "a"),
                              ("start", "a"), ("start", "b"), ("start", "c")]
    sup.stop()


def test_rest_for_one_keeps_later_siblings_down_while_a_restart_keeps_failing(
        journal: Journal) -> None:
    gate = new_gate()
    sup = Supervisor.start_link([spec("a", journal), spec("b", journal),
                                 refusing("c", journal, gate), spec("d", journal)],
                                strategy="rest_for_one", max_seconds=1.0, clock=endless_window())
    journal.take()
    try:
        gate["refuse"].set()
        b = child_ref(sup, "b")
        assert b is not None
        b.tell("crash")
        wait_for(lambda: attempts(gate) >= 3, timeout=WAIT)
        rows = [(c.id, c.ref is not None, c.restarting) for c in sup.which_children(timeout=WAIT)]
        assert rows == [("a", True, False), ("b", True, False), ("c", False, True),
                        ("d", False, True)]
        assert journal.take() == [("stop", "d"), ("stop", "c"), ("start", "b")]
    finally:
        gate["refuse"].clear()
    wait_for(lambda: all(c.ref is not None for c in sup.which_children(timeout=WAIT)),
             timeout=WAIT)
    # The retries restart the failed child and those after it, never b again.
    assert journal.take() == [("start", "c"), ("start", "d")]
    sup.stop()


# --- a start function that returns a supervisor (OTP's nested start_link) -------------


def test_a_start_function_may_return_a_supervisor(journal: Journal,
                                                  events: list[SupervisionEvent]) -> None:
    def start_inner() -> SupervisorRef:
        return Supervisor.start_link([spec("w", journal, name="nest.w")], name="nest.inner")

    sup = Supervisor.start_link([spec("a", journal),
                                 ChildSpec("inner", start=start_inner, type="supervisor")],
                                name="nest.root")
    inner = child_ref(sup, "inner")
    assert inner is not None and whereis("nest.inner") == inner
    assert [c.id for c in SupervisorRef(inner).which_children(timeout=WAIT)] == ["w"]
    assert "inner: nest.inner  Supervisor, one_for_one, 1/1 running" in sup.tree(timeout=WAIT)
    assert ref("nest.w").ask("ping", timeout=WAIT) == 1
    exit_and_settle(sup, inner, lambda: kill(inner))  # restarted through the start function
    again = child_ref(sup, "inner")
    assert again is not None and again != inner and whereis("nest.inner") == again
    assert ref("nest.w").ask("ping", timeout=WAIT) == 1
    assert any(isinstance(e, ChildRestarted) and e.child_id == "inner" for e in events)
    watch = monitor(again)
    sup.stop()
    assert watch.wait(timeout=WAIT).reason == "shutdown"
    assert journal.take()[-2:] == [("stop", "w"), ("stop", "a")]


def test_a_nested_supervisor_from_a_start_function_is_stopped_by_its_parent_only(
        tmp_path: Path) -> None:
    script = tmp_path / "nested.py"
    script.write_text(
        "import pykka\n"
        "from supervisors import ChildSpec, Supervisor, add_listener\n"
        "class Worker(pykka.ThreadingActor):\n"
        "    def on_stop(self):\n"
        "        print('worker stopped', flush=True)\n"
        "add_listener(lambda e: print(type(e).__name__, e.child_id, flush=True)\n"
        "             if type(e).__name__ == 'ChildRestarted' else None)\n"
        "inner = lambda: Supervisor.start_link([ChildSpec('w', Worker)])\n"
        "Supervisor.start_link([ChildSpec('inner', inner, type='supervisor')], name='outer')\n"
    )
    result = run_python(str(script))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "worker stopped"  # once: the exit stops the outer tree
