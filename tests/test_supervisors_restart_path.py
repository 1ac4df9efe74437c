"""What the restart path does cheaply, and must still do right: actor threads
started without a handshake, the one-lock reply of an ask through a name, crash
reports skipped only when loguru would drop them, and the order of a dying
actor's notices (its name is free by the time its `Down` arrives)."""

from __future__ import annotations

import contextvars
import queue
import threading
from pathlib import Path
from typing import Any

import pykka
import pytest
from _subprocess import run_python
from loguru import logger

from supervisors import (
    ChildSpec,
    Down,
    NameNotFoundError,
    Supervisor,
    SupervisorTimeoutError,
    _actor,
    _future,
    _registry,
    _report,
    monitor,
    name_of,
    ref,
    register,
    spawn,
    whereis,
)
from zixir_actors.testing import capture_logs, wait_for

WAIT = 5.0


class Boom(Exception):
    pass


class Echo(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise Boom("crash")
        if message == "slow":
            gate.wait(WAIT)
        return message


gate = threading.Event()


# --- actor threads -------------------------------------------------------------------


@pytest.mark.skipif(not _actor._NO_WAIT_START, reason="Thread.start has another shape here")
def test_an_actor_thread_start_returns_before_the_thread_has_run() -> None:
    release = threading.Event()
    ran = threading.Event()

    class Held(_actor._ActorThread):
        def _bootstrap(self) -> None:
            release.wait(WAIT)  # the thread cannot run before the test lets it
            super()._bootstrap()

    thread = Held(target=ran.set, name="held-0")
    thread.start()  # the standard start() would wait here until release times out
    try:
        assert not thread._started.is_set()  # type: ignore[attr-defined]
        assert thread.is_alive() and thread in threading.enumerate()  # as any live thread
        thread.join(0.01)  # waits for the start first, then for the end: neither comes
        assert thread.is_alive() and not ran.is_set()
    finally:
        release.set()
    thread.join(WAIT)
    assert ran.is_set() and not thread.is_alive()


@pytest.mark.skipif(not _actor._NO_WAIT_START, reason="Thread.start has another shape here")
def test_an_actor_started_just_before_exit_still_runs(tmp_path: Path) -> None:
    # Its thread is held before its bootstrap, so the interpreter's exit comes
    # first: threading's join of non-daemon threads must still wait for it.
    script = tmp_path / "late.py"
    script.write_text(
        "import threading\n"
        "import pykka\n"
        "from supervisors import _actor, spawn\n"
        "bootstrap = _actor._ActorThread._bootstrap\n"
        "def held(self):\n"
        "    threading.Event().wait(0.3)\n"
        "    bootstrap(self)\n"
        "_actor._ActorThread._bootstrap = held\n"
        "class Once(pykka.ThreadingActor):\n"
        "    def on_receive(self, message):\n"
        "        print(message, flush=True)\n"
        "        self.stop()\n"
        "spawn(Once).ref.tell('ran')  # no on_start: spawn does not wait for the thread\n"
    )
    result = run_python(str(script))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ran\n"


def test_a_restarted_child_runs_in_a_thread_named_after_its_class() -> None:
    names: list[str] = []

    class Named(pykka.ThreadingActor):
        def on_receive(self, message: Any) -> Any:
            if message == "crash":
                raise Boom("crash")
            names.append(threading.current_thread().name)
            return threading.current_thread().daemon

    sup = Supervisor.start_link([ChildSpec("n", Named, name="path.named")])
    try:
        target = ref("path.named")
        assert target.ask("who", timeout=WAIT) is False  # not a daemon, as Pykka's threads
        with pytest.raises(Boom):
            target.ask("crash", timeout=WAIT)
        target.ask("who", timeout=WAIT)
    finally:
        sup.stop()
    first, second = names
    assert first != second
    assert first.startswith("Named-") and second.startswith("Named-")


# --- the reply of an ask through a name ------------------------------------------------


def test_a_reply_keeps_the_first_answer() -> None:
    reply = _future.Reply()
    with pytest.raises(pykka.Timeout):
        reply.get(timeout=0)
    reply.set(1)
    with pytest.raises(queue.Full):
        reply.set(2)
    with pytest.raises(queue.Full):
        reply.set_exception((Boom, Boom("late"), None))
    assert reply.get(timeout=0) == 1
    assert reply.get() == 1  # answered for good


def test_a_reply_raises_the_exception_it_was_given() -> None:
    reply = _future.Reply()
    try:
        raise Boom("from the handler")
    except Boom:
        reply.set_exception()  # as Pykka's own loop does: the exception being handled
    with pytest.raises(Boom, match="from the handler"):
        reply.get(timeout=WAIT)
    with pytest.raises(Boom, match="from the handler"):
        reply.get(timeout=WAIT)
    bare = _future.Reply()
    bare.set_exception((Boom, None, None))
    with pytest.raises(Boom):
        bare.get(timeout=WAIT)


def test_ask_through_a_name_reaches_a_plain_pykka_actor() -> None:
    plain = Echo.start()  # Pykka's own loop answers, not SupervisedActor's
    try:
        register("path.plain", plain)
        target = ref("path.plain", wait=0.2)
        assert target.ask("hi", timeout=WAIT) == "hi"
        with pytest.raises(Boom):
            target.ask("crash", timeout=WAIT)  # Pykka keeps a plain actor alive after this
        assert target.ask("again", timeout=WAIT) == "again"
        gate.clear()
        with pytest.raises(SupervisorTimeoutError):
            target.ask("slow", timeout=0.05)
        gate.set()
    finally:
        gate.set()
        plain.stop()


def test_an_ask_through_a_name_times_out_as_before() -> None:
    echo = spawn(Echo, name="path.echo").ref
    try:
        gate.clear()
        with pytest.raises(SupervisorTimeoutError):
            ref("path.echo").ask("slow", timeout=0.05)
        gate.set()
        assert ref("path.echo").ask("after", timeout=WAIT) == "after"
    finally:
        gate.set()
        echo.stop()


# --- asks parked while no actor holds the name ----------------------------------------


class Recorder(pykka.ThreadingActor):
    """Records what it handles, in order, and the asker's context variable."""

    def __init__(self, log: list[Any]) -> None:
        super().__init__()
        self.log = log

    def on_start(self) -> None:
        self.log.append("on_start")

    def on_receive(self, message: Any) -> Any:
        self.log.append(message)
        return (message, request_id.get())


request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def _ask_in_thread(name: str, message: Any, results: list[Any], *, wait: float = WAIT,
                   context: str = "-") -> threading.Thread:
    def run() -> None:
        request_id.set(context)
        try:
            results.append(ref(name, wait=wait).ask(message, timeout=WAIT))
        except Exception as exc:
            results.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_an_ask_parked_for_a_missing_name_goes_first_to_the_next_holder() -> None:
    log: list[Any] = []
    results: list[Any] = []
    asker = _ask_in_thread("path.later", "first", results, context="req-1")
    wait_for(lambda: "path.later" in _registry.parked, timeout=WAIT)
    started = spawn(Recorder, log, name="path.later").ref
    try:
        assert ref("path.later").ask("second", timeout=WAIT) == ("second", "-")
        asker.join(WAIT)
        # handled after on_start, before anything sent once the name was back, and
        # in the asker's context although the thread that registered the name delivered it
        assert results == [("first", "req-1")]
        assert log == ["on_start", "first", "second"]
        assert "path.later" not in _registry.parked
    finally:
        started.stop()


def test_a_parked_ask_gives_up_after_the_wait_and_is_never_delivered() -> None:
    log: list[Any] = []
    with pytest.raises(NameNotFoundError) as caught:
        ref("path.absent", wait=0.05).ask("lost", timeout=WAIT)
    assert caught.value.name == "path.absent" and caught.value.waited
    assert "path.absent" not in _registry.parked
    started = spawn(Recorder, log, name="path.absent").ref
    try:
        assert ref("path.absent").ask("found", timeout=WAIT) == ("found", "-")
        assert log == ["on_start", "found"]
    finally:
        started.stop()


def test_a_parked_ask_waits_no_longer_than_its_timeout() -> None:
    with pytest.raises(NameNotFoundError):
        ref("path.absent", wait=WAIT).ask("lost", timeout=0.05)
    assert "path.absent" not in _registry.parked


def test_resetting_the_name_table_answers_parked_asks() -> None:
    results: list[Any] = []
    asker = _ask_in_thread("path.reset", "never", results, wait=WAIT)
    wait_for(lambda: "path.reset" in _registry.parked, timeout=WAIT)
    _registry.reset()
    asker.join(WAIT)
    assert len(results) == 1 and isinstance(results[0], NameNotFoundError)


def test_asks_waiting_through_a_restart_are_answered_by_the_next_incarnation() -> None:
    log: list[Any] = []
    sup = Supervisor.start_link([ChildSpec("r", Recorder, args=(log,), name="path.restarting",
                                           shutdown=WAIT)])
    try:
        first = whereis("path.restarting")
        assert first is not None
        first.stop(block=False)  # exits "normal": a permanent child is restarted
        results: list[Any] = []
        askers = [_ask_in_thread("path.restarting", n, results, context=f"req-{n}")
                  for n in range(5)]
        for asker in askers:
            asker.join(WAIT)
        assert sorted(results) == [(n, f"req-{n}") for n in range(5)]
    finally:
        sup.stop()


# --- the order of a dying actor's notices ---------------------------------------------


def test_a_watcher_told_of_a_crash_finds_the_name_already_free() -> None:
    seen: list[tuple[Any, Any]] = []
    told = threading.Event()
    worker = spawn(Echo, name="path.dying").ref

    def watcher(down: Down) -> None:
        seen.append((name_of(down.ref), whereis("path.dying")))
        told.set()

    monitor(worker, watcher)
    worker.tell("crash")
    assert told.wait(WAIT)
    assert seen == [(None, None)]


def test_the_asker_whose_message_crashed_a_child_hears_it_and_the_child_comes_back() -> None:
    downs: list[Down] = []
    sup = Supervisor.start_link([ChildSpec("e", Echo, name="path.crashy")])
    try:
        first = whereis("path.crashy")
        assert first is not None
        monitor(first, downs.append)
        with pytest.raises(Boom):
            ref("path.crashy").ask("crash", timeout=WAIT)
        assert ref("path.crashy").ask("back", timeout=WAIT) == "back"
        wait_for(lambda: bool(downs), timeout=WAIT)
        assert isinstance(downs[0].reason, Boom)
        assert whereis("path.crashy") is not first
    finally:
        sup.stop()


# --- crash reports when nothing listens ------------------------------------------------


def test_crash_reports_are_skipped_only_when_loguru_would_drop_them() -> None:
    sup = Supervisor.start_link([ChildSpec("e", Echo, name="path.reported")])
    try:
        with pytest.raises(Boom):
            ref("path.reported").ask("crash", timeout=WAIT)  # quiet: the library is disabled
        ref("path.reported").ask("up", timeout=WAIT)
        assert _quiet_in("supervisors.supervisor")
        with capture_logs(level="WARNING") as logs:
            assert not _quiet_in("supervisors.supervisor")
            with pytest.raises(Boom):
                ref("path.reported").ask("crash", timeout=WAIT)
            ref("path.reported").ask("up", timeout=WAIT)
        (report,) = logs.find("child e of")
        assert report["error_type"] == "Boom" and report["restart_count"] == 2
        assert _quiet_in("supervisors.supervisor")  # disabled again after the block
    finally:
        sup.stop()


def test_quiet_lets_loguru_decide_for_a_module_it_has_not_judged() -> None:
    handler = logger.add(lambda message: None, level="DEBUG")
    try:
        assert not _quiet_in("supervisors.never_logged_from_here")
    finally:
        logger.remove(handler)


def _quiet_in(module: str) -> bool:
    # _report.quiet() judges its caller's module: call it from code of that module.
    namespace = {"__name__": module, "_report": _report}
    exec("def probe():\n    return _report.quiet()\n", namespace)
    return bool(namespace["probe"]())
