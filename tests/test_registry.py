"""Names: `register`/`whereis`/`unregister`, idempotent `spawn`, and `ref(name)`,
the stable reference that follows an actor across restarts."""

from __future__ import annotations

import threading
from typing import Any

import pykka
import pytest

from supervisors import (
    ChildSpec,
    ChildStartError,
    NamedRef,
    NameNotFoundError,
    NameTakenError,
    NotAnActorError,
    Started,
    Supervisor,
    SupervisorTimeoutError,
    monitor,
    name_of,
    ref,
    register,
    registered,
    spawn,
    unregister,
    whereis,
)

WAIT = 5.0


class Boom(Exception):
    pass


class Counter(pykka.ThreadingActor):
    constructed = 0
    _lock = threading.Lock()

    def __init__(self, start: int = 0) -> None:
        super().__init__()
        with Counter._lock:
            Counter.constructed += 1
        self.n = start

    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise Boom("crash")
        if message == "dead":
            raise pykka.ActorDeadError("raised by the handler itself")
        self.n += 1
        return self.n

    def value(self) -> int:
        return self.n


# --- register / whereis / unregister ----------------------------------------------


def test_register_whereis_name_of_and_unregister() -> None:
    actor = Counter.start()
    register("reg.a", actor)
    register("reg.a", actor)  # again: a no-op
    assert whereis("reg.a") is actor and name_of(actor) == "reg.a"
    assert registered() == {"reg.a": actor}
    other = Counter.start()
    with pytest.raises(NameTakenError) as caught:
        register("reg.a", other)
    assert caught.value.name == "reg.a" and caught.value.holder is actor
    unregister("reg.a")
    unregister("reg.a")  # unknown: a no-op
    assert whereis("reg.a") is None and name_of(actor) is None and actor.is_alive()
    register("reg.a", other)
    assert whereis("reg.a") is other
    actor.stop()
    other.stop()
    assert whereis("reg.a") is None and registered() == {}


@pytest.mark.parametrize(("name", "target"), [("", None), (42, None), ("ok", "not a ref")])
def test_register_rejects_bad_names_and_targets(name: Any, target: Any) -> None:
    actor = Counter.start()
    with pytest.raises(TypeError):
        register(name, actor if target is None else target)
    actor.stop()


def test_the_name_of_a_stopped_actor_is_free_again() -> None:
    first = spawn(Counter, name="reg.free").ref
    m = monitor(first)
    first.stop()
    m.wait(timeout=WAIT)
    assert whereis("reg.free") is None
    second = spawn(Counter, name="reg.free")
    assert not second.already_started and second.ref is not first
    second.ref.stop()


def test_registering_a_dead_actor_does_not_hold_the_name() -> None:
    dead = spawn(Counter).ref
    dead.stop()
    monitor(dead).wait(timeout=WAIT)
    register("reg.dead", dead)
    assert whereis("reg.dead") is None


# --- spawn: idempotent by name ---------------------------------------------------------


def test_spawn_is_idempotent_by_name() -> None:
    first = spawn(Counter, 10, name="reg.idem")
    again = spawn(Counter, 99, name="reg.idem")
    assert first == Started(first.ref, False) and again == Started(first.ref, True)
    assert first.ref.ask("tick", timeout=WAIT) == 11  # the first one's state
    unnamed = spawn(Counter)
    assert not unnamed.already_started and name_of(unnamed.ref) is None
    first.ref.stop()
    unnamed.ref.stop()


def test_spawn_under_32_racing_threads_starts_one_actor() -> None:
    Counter.constructed = 0
    barrier = threading.Barrier(32)
    results: list[Started] = []
    lock = threading.Lock()

    def race() -> None:
        barrier.wait(WAIT)
        got = spawn(Counter, name="reg.race")
        with lock:
            results.append(got)

    threads = [threading.Thread(target=race) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert len(results) == 32
    assert len({id(r.ref) for r in results}) == 1
    assert sum(not r.already_started for r in results) == 1
    assert Counter.constructed == 1
    assert len(pykka.ActorRegistry.get_by_class(Counter)) == 1
    results[0].ref.stop()


def test_spawn_with_a_factory() -> None:
    made = spawn(lambda start: Counter.start(start), 5, name="reg.factory")
    assert made.ref.ask("tick", timeout=WAIT) == 6 and whereis("reg.factory") is made.ref
    with pytest.raises(NotAnActorError):
        spawn(lambda: "nope", name="reg.nope")
    assert whereis("reg.nope") is None
    made.ref.stop()


def test_spawn_reports_on_start_failure() -> None:
    class Failing(pykka.ThreadingActor):
        def on_start(self) -> None:
            raise Boom("no")

    with pytest.raises(ChildStartError) as caught:
        spawn(Failing, name="reg.failing")
    assert isinstance(caught.value.cause, Boom) and whereis("reg.failing") is None


# --- ref(name): stable across restarts ------------------------------------------------------


def test_ref_keeps_answering_while_its_actor_is_crashed_and_restarted_100_times() -> None:
    sup = Supervisor.start_link([ChildSpec("c", Counter, name="reg.flaky")], max_restarts=1_000)
    stable = ref("reg.flaky")
    stop = threading.Event()
    answers: list[int] = []
    failures: list[BaseException] = []

    def keep_asking() -> None:
        while not stop.is_set():
            try:
                answers.append(stable.ask("tick", timeout=WAIT))
            except BaseException as exc:
                failures.append(exc)
                return

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        for _ in range(100):
            current = stable.whereis(timeout=WAIT)
            down = monitor(current)
            with pytest.raises(Boom):
                stable.ask("crash", timeout=WAIT)
            assert isinstance(down.wait(timeout=WAIT).reason, Boom)
            assert stable.ask("tick", timeout=WAIT) >= 1  # the next incarnation answers
    finally:
        stop.set()
        asker.join(WAIT)
    assert failures == [] and answers
    assert stable.ask("tick", timeout=WAIT) >= 1
    sup.stop()


def test_ref_tell_and_proxy_follow_restarts() -> None:
    sup = Supervisor.start_link([ChildSpec("c", Counter, name="reg.follow")])
    stable = ref("reg.follow")
    proxy = stable.proxy()
    assert proxy.value().get(timeout=WAIT) == 0
    stable.tell("tick")
    assert proxy.value().get(timeout=WAIT) == 1
    first = stable.whereis()
    down = monitor(first)
    stable.tell("crash")
    down.wait(timeout=WAIT)
    assert proxy.value().get(timeout=WAIT) == 0  # fresh state, new incarnation
    assert stable.whereis(timeout=WAIT) is not first and stable.is_alive()
    assert "reg.follow" in repr(proxy)
    sup.stop()
    assert not stable.is_alive() and stable.stop() is False


def test_ref_waits_a_bounded_time_then_raises_name_not_found() -> None:
    absent = ref("reg.absent", wait=0.05)
    for call in (lambda: absent.ask("x"), lambda: absent.tell("x"),
                 lambda: absent.whereis(timeout=0.05), lambda: absent.proxy().value):
        with pytest.raises(NameNotFoundError) as caught:
            call()
        assert caught.value.name == "reg.absent" and isinstance(caught.value, LookupError)
        assert caught.value.waited is not None and caught.value.waited >= 0.05
    with pytest.raises(NameNotFoundError):
        ref("reg.absent").whereis()  # timeout 0: no wait


def test_ref_waits_for_a_name_that_appears() -> None:
    stable = ref("reg.later", wait=WAIT)
    got: list[Any] = []
    asker = threading.Thread(target=lambda: got.append(stable.ask("tick", timeout=WAIT)))
    asker.start()
    actor = spawn(Counter, name="reg.later").ref
    asker.join(WAIT)
    assert got == [1]
    actor.stop()


def test_ref_ask_timeout_and_non_blocking_ask() -> None:
    entered, release = threading.Event(), threading.Event()

    class Slow(pykka.ThreadingActor):
        def on_receive(self, message: Any) -> Any:
            entered.set()
            release.wait(WAIT)
            return "late"

    actor = spawn(Slow, name="reg.slow").ref
    stable = ref("reg.slow")
    future = stable.ask("first", block=False)
    assert entered.wait(WAIT)
    with pytest.raises(SupervisorTimeoutError) as caught:
        stable.ask("second", timeout=0.05)
    assert caught.value.timeout == 0.05
    release.set()
    assert future.get(timeout=WAIT) == "late"
    actor.stop()


def test_ref_does_not_resend_a_message_whose_handler_raised_actor_dead_error() -> None:
    sup = Supervisor.start_link([ChildSpec("c", Counter, name="reg.dead_handler")])
    stable = ref("reg.dead_handler")
    first = stable.whereis()
    with pytest.raises(pykka.ActorDeadError, match="raised by the handler"):
        stable.ask("dead", timeout=WAIT)
    assert not first.is_alive()
    sup.stop()


def test_named_ref_is_a_value() -> None:
    assert ref("a") == NamedRef("a") and hash(ref("a")) == hash(NamedRef("a"))
    assert ref("a") != ref("b") and ref("a") != "a"
    assert repr(ref("a")) == "NamedRef('a')"
    with pytest.raises(TypeError):
        ref("")


def test_spawn_wraps_constructor_errors_and_rejects_what_cannot_start() -> None:
    from supervisors import InvalidSpecError

    class Broken(pykka.ThreadingActor):
        def __init__(self) -> None:
            raise Boom("constructor")

    with pytest.raises(ChildStartError) as caught:
        spawn(Broken, name="reg.broken")
    assert caught.value.child_id == "reg.broken" and isinstance(caught.value.cause, Boom)
    with pytest.raises(ChildStartError):
        spawn(Counter, "too", "many", "args")
    with pytest.raises(InvalidSpecError):
        spawn(42)  # type: ignore[arg-type]
    assert whereis("reg.broken") is None and pykka.ActorRegistry.get_all() == []


def test_a_spawned_name_is_visible_before_on_start_finishes() -> None:
    entered, release = threading.Event(), threading.Event()

    class SlowStart(pykka.ThreadingActor):
        def on_start(self) -> None:
            entered.set()
            release.wait(WAIT)

        def on_receive(self, message: Any) -> Any:
            return message

    done: list[Started] = []
    starter = threading.Thread(target=lambda: done.append(spawn(SlowStart, name="reg.early")))
    starter.start()
    assert entered.wait(WAIT)
    early = whereis("reg.early")
    assert early is not None  # as in OTP: registered before init runs
    pending = ref("reg.early").ask("queued", block=False)  # handled after on_start
    release.set()
    starter.join(WAIT)
    assert pending.get(timeout=WAIT) == "queued" and done[0].ref is early
    early.stop()
