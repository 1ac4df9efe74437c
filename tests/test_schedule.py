"""Schedules: stored cron schedules, exactly one run per tick across processes, catch-up."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from _subprocess import project_env

import zixir_actors
from zixir_actors import Queue, Workflow
from zixir_actors.checkpoint import connect
from zixir_actors.errors import ConfigError, ScheduleNotFoundError
from zixir_actors.schedule import (
    delete_schedule,
    pause_schedule,
    resume_schedule,
    run_id_of,
    tick,
)
from zixir_actors.testing import FakeClock, wait_for

WAIT = 60.0
HOUR = 3600.0


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


@pytest.fixture
def report() -> Iterator[tuple[Workflow, list[str]]]:
    calls: list[str] = []
    wf = Workflow("sched-report")

    @wf.step()
    def build(day: str) -> str:
        calls.append(day)
        return day

    yield wf, calls


def runs_of(name: str) -> list[str]:
    return sorted(r.run_id for r in connect().list_runs() if r.run_id.startswith(f"{name}@"))


def settled(name: str) -> None:
    wait_for(lambda: all(r.status == "succeeded" for r in connect().list_runs()
                         if r.run_id.startswith(f"{name}@")), timeout=WAIT)


def test_a_schedule_is_stored_listed_and_survives_a_restart(tmp_path: Path, report: Any) -> None:
    wf, _ = report
    with zixir_actors.start(data_dir=tmp_path):
        s = wf.schedule("30 6 * * MON-FRI", {"day": "today"}, timezone="Europe/Paris")
        assert (s.name, s.workflow, s.catch_up, s.paused) == ("sched-report", "sched-report",
                                                              "latest", False)
    with zixir_actors.start(data_dir=tmp_path):
        [stored] = zixir_actors.schedules()
        assert (stored.cron, stored.timezone, dict(stored.inputs)) == \
            ("30 6 * * MON-FRI", "Europe/Paris", {"day": "today"})


def test_bad_expressions_zones_and_options_are_refused(report: Any) -> None:
    wf, _ = report
    for kwargs in ({"cron": "61 * * * *"}, {"cron": "every day"},
                   {"cron": "* * * * *", "timezone": "Mars/Olympus"},
                   {"cron": "* * * * *", "catch_up": "some"},
                   {"cron": "* * * * *", "name": ""},
                   {"cron": "* * * * *", "queue": "q"}):
        with pytest.raises(ConfigError):
            wf.schedule(inputs={"day": "x"}, **kwargs)


@pytest.mark.parametrize(("catch_up", "expected"), [
    ("skip", []),
    ("latest", ["01:00"]),
    ("all", ["23:00", "00:00", "01:00"]),
])
def test_catch_up_after_downtime(tmp_path: Path, report: Any, catch_up: str,
                                 expected: list[str]) -> None:
    wf, calls = report
    clock = FakeClock(wall=utc("2026-03-01T22:10:00"))
    with zixir_actors.start(data_dir=tmp_path, scheduler={"clock": clock}):
        wf.schedule("0 * * * *", {"day": "d"}, catch_up=catch_up)
        assert tick() == []
    clock.advance(3 * HOUR + 30 * 60)  # no process runs from 22:10 to 01:40
    with zixir_actors.start(data_dir=tmp_path, scheduler={"clock": clock}):
        tick()
        settled("sched-report")
        stamps = [r.split("T")[1][:5] for r in runs_of("sched-report")]
        assert sorted(stamps) == sorted(expected)
        clock.advance(HOUR)  # 02:40: a tick that comes due while a process runs always runs
        tick()
        settled("sched-report")
        assert run_id_of("sched-report", utc("2026-03-02T02:00:00")) in runs_of("sched-report")
    assert len(calls) == len(expected) + 1


def test_ticks_that_come_due_while_running_all_run_once(tmp_path: Path, report: Any) -> None:
    wf, calls = report
    clock = FakeClock(wall=utc("2026-03-01T10:00:30"))
    with zixir_actors.start(data_dir=tmp_path, scheduler={"clock": clock}):
        wf.schedule("*/15 * * * *", {"day": "d"}, catch_up="skip")
        assert tick() == []  # the scheduler has seen it
        clock.advance(HOUR)  # woke late: four ticks came due while this process ran
        tick()
        assert tick() == []
        settled("sched-report")
        made = runs_of("sched-report")
    assert [m.split("@")[1] for m in made] == ["2026-03-01T10:15:00Z", "2026-03-01T10:30:00Z",
                                               "2026-03-01T10:45:00Z", "2026-03-01T11:00:00Z"]
    assert len(calls) == 4


def test_pause_resume_and_delete(tmp_path: Path, report: Any) -> None:
    wf, calls = report
    clock = FakeClock(wall=utc("2026-03-01T10:00:30"))
    with zixir_actors.start(data_dir=tmp_path, scheduler={"clock": clock}):
        wf.schedule("0 * * * *", {"day": "d"}, name="hourly")
        assert pause_schedule("hourly").paused
        clock.advance(2 * HOUR)
        assert tick() == []
        wf.schedule("0 * * * *", {"day": "d2"}, name="hourly")  # a new declaration keeps it paused
        assert [s.paused for s in zixir_actors.schedules()] == [True]
        assert not resume_schedule("hourly").paused
        assert tick() == []  # the ticks that passed while paused never run
        clock.advance(HOUR)
        tick()
        assert runs_of("hourly") == [run_id_of("hourly", utc("2026-03-01T13:00:00"))]
        settled("hourly")
        delete_schedule("hourly")
        assert zixir_actors.schedules() == []
        clock.advance(HOUR)
        assert tick() == []
        with pytest.raises(ScheduleNotFoundError):
            pause_schedule("hourly")
    assert calls == ["d2"]


@pytest.mark.parametrize(("day", "tick_utc"), [("2026-01-15", "08:00"), ("2026-07-15", "07:00")])
def test_the_expression_is_read_in_the_schedule_timezone(tmp_path: Path, report: Any, day: str,
                                                       tick_utc: str) -> None:
    wf, _ = report
    clock = FakeClock(wall=utc(f"{day}T05:00:00"))
    with zixir_actors.start(data_dir=tmp_path, scheduler={"clock": clock}):
        wf.schedule("0 9 * * *", {"day": day}, name="paris", timezone="Europe/Paris")
        clock.advance(4 * HOUR)
        tick()
        assert runs_of("paris") == [f"paris@{day}T{tick_utc}:00Z"]
        settled("paris")


def test_a_schedule_can_put_its_runs_on_a_queue(tmp_path: Path, report: Any) -> None:
    wf, calls = report
    clock = FakeClock(wall=utc("2026-03-01T10:00:30"))
    with zixir_actors.start(data_dir=tmp_path, scheduler={"clock": clock}):
        wf.schedule("0 * * * *", {"day": "q"}, name="queued",
                    queue=Queue("sched-q", concurrency=1))
        clock.advance(HOUR)
        tick()
        [made] = runs_of("queued")
        settled("queued")
        record = connect().get_run(made)
        assert record.status == "succeeded"
        assert zixir_actors.queue.queue_stats()[0].name == "sched-q"
    assert calls == ["q"]


def test_schedules_command(tmp_path: Path, report: Any) -> None:
    wf, _ = report
    with zixir_actors.start(data_dir=tmp_path):
        wf.schedule("0 3 * * *", {"day": "d"}, name="nightly")
    env = project_env()

    def zixir(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "zixir_actors", "--data-dir", str(tmp_path),
                               "schedules", *args], capture_output=True, text=True, env=env,
                              timeout=WAIT, check=False)

    assert zixir("pause", "nightly").returncode == 0
    [row] = json.loads(zixir("list", "--json").stdout)
    assert (row["name"], row["cron"], row["paused"]) == ("nightly", "0 3 * * *", True)
    assert zixir("resume", "nightly").stdout.strip() == "resumed schedule nightly"
    assert "active" in zixir("list").stdout
    assert zixir("delete", "nightly").returncode == 0
    assert zixir("list").stdout.strip() == "no schedules"
    missing = zixir("pause", "nightly")
    assert missing.returncode == 2 and "no schedule 'nightly'" in missing.stderr


SCHEDULED = textwrap.dedent('''
    import os, sys
    import zixir_actors
    from zixir_actors import Workflow

    wf = Workflow("every-second")

    @wf.step()
    def note(ctx):
        fd = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{ctx.run_id} {os.getpid()}\\n".encode())
        finally:
            os.close(fd)

    wf.schedule("* * * * * *", name="tick")
    with zixir_actors.start(data_dir=sys.argv[1]):
        print("ready", flush=True)
        sys.stdin.read()  # until the parent closes it
''')


@pytest.mark.slow
def test_three_processes_make_exactly_one_run_per_tick(tmp_path: Path) -> None:
    import time

    script = tmp_path / "scheduled.py"
    script.write_text(SCHEDULED)
    notes = tmp_path / "notes.log"
    env = project_env()
    children = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "data"),
                                  str(notes)], env=env, text=True, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                for _ in range(3)]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        first = int(time.time()) + 2  # every process is up before this tick
        window = [run_id_of("tick", first + i) for i in range(10)]
        wait_for(lambda: notes.exists() and all(w in notes.read_text() for w in window),
                 timeout=WAIT)
    finally:
        for child in children:
            assert child.stdin is not None
            child.stdin.close()
        for child in children:
            child.wait(WAIT)
            assert child.stdout is not None
            child.stdout.close()
    lines = [line.split() for line in notes.read_text().splitlines()]
    ran = Counter(run_id for run_id, _ in lines)
    assert [ran[run_id] for run_id in window] == [1] * 10
