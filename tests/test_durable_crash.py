"""Code-first workflows across kill -9: agent loops (sync and async), timers, events, a child
run, a changed body, progress, a parked run taken over by the next runtime.

Every step appends its label to one file (O_APPEND, one short write per line)
just before it returns, so the file counts executions across processes.
After each kill the parent reads which calls were committed. The contract:
a committed call never runs again; a call in flight at the kill (it ran,
but its record was not committed) runs again. So every call ran exactly
once, plus once per kill that caught it in flight, and the outputs are right.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from _subprocess import project_env

from zixir_actors.checkpoint import open_store
from zixir_actors.testing import FakeClock, wait_for
from zixir_actors.workflow._durable import labels as _labels

pytestmark = pytest.mark.slow

PROCESS_TIMEOUT = 60.0
WAIT = 30.0

# The agent's decisions, shared by the child script and the parent's expectation.
LOGIC = textwrap.dedent('''
    def decide(seed, total, turn):
        h = (seed * 31 + total * 7 + turn * 13) % 97
        if turn >= 16 or (turn >= 9 and h % 4 == 0):
            return {"action": "stop"}
        if h % 3 == 0:
            return {"action": "fanout", "items": [h % 7 + k for k in range(2 + h % 3)]}
        return {"action": "tool", "arg": h}

    def use_tool(x):
        return x * 2 + 1

    def simulate(seed):
        total, turn, calls = 0, 0, 0
        while True:
            turn += 1
            decision = decide(seed, total, turn)
            calls += 1
            if decision["action"] == "stop":
                break
            if decision["action"] == "fanout":
                total += sum(use_tool(x) for x in decision["items"])
                calls += len(decision["items"])
            else:
                total += use_tool(decision["arg"])
                calls += 1
        return {"total": total, "turns": turn}, calls
''')

COMMON = textwrap.dedent('''
    import json, os, random, sys, threading, time
    from zixir_actors import durable
    from zixir_actors.checkpoint import open_store

    def mark(ctx):
        time.sleep(random.random() * 0.01)
        fd = os.open(COUNTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, f"{ctx.run_id}/{ctx.step} {ctx.idempotency_key}\\n".encode())
        os.close(fd)
        time.sleep(random.random() * 0.01)
''')

AGENT = COMMON + LOGIC + textwrap.dedent('''
    data_dir, COUNTS, seed, run_id = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

    def think(seed, total, turn, ctx):
        mark(ctx)
        return decide(seed, total, turn)

    def tool(x, ctx):
        mark(ctx)
        return use_tool(x)

    @durable("crash-agent", max_concurrency=3)
    def agent(ctx, seed):
        total, turn = 0, 0
        while True:
            turn += 1
            decision = ctx.step(think, seed, total, turn)
            if decision["action"] == "stop":
                break
            if decision["action"] == "fanout":
                total += sum(ctx.map(tool, decision["items"], concurrency=3))
            else:
                total += ctx.step(tool, decision["arg"])
            if turn % 4 == 0:
                ctx.sleep(0.001)
        return {"total": total, "turns": turn}

    # The same agent as an async body with async steps, on the runtime's event loop.
    import asyncio

    async def amark(ctx):
        await asyncio.sleep(random.random() * 0.01)
        fd = os.open(COUNTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, f"{ctx.run_id}/{ctx.step} {ctx.idempotency_key}\\n".encode())
        os.close(fd)
        await asyncio.sleep(random.random() * 0.01)

    async def athink(seed, total, turn, ctx):
        await amark(ctx)
        return decide(seed, total, turn)

    async def atool(x, ctx):
        await amark(ctx)
        return use_tool(x)

    @durable("crash-agent-async", max_concurrency=3)
    async def async_agent(ctx, seed):
        total, turn = 0, 0
        while True:
            turn += 1
            decision = await ctx.step(athink, seed, total, turn, name="think")
            if decision["action"] == "stop":
                break
            if decision["action"] == "fanout":
                total += sum(await ctx.map(atool, decision["items"], concurrency=3,
                                           name="tool"))
            else:
                total += await ctx.step(atool, decision["arg"], name="tool")
            if turn % 4 == 0:
                await ctx.sleep(0.001)
        return {"total": total, "turns": turn}

    chosen = async_agent if sys.argv[5] == "async" else agent
    with open_store(data_dir) as store:
        result = chosen.run({"seed": seed}, run_id=run_id, store=store)
    print(json.dumps({"status": result.status, "output": result.output}))
''')


def python(script: Path, *args: str) -> list[str]:
    return [sys.executable, str(script), *map(str, args)]


def env() -> dict[str, str]:
    return project_env()


def counts(path: Path) -> Counter[str]:
    """Executions per call label (``run_id/label``), from the lines the steps wrote."""
    lines = path.read_text().splitlines() if path.exists() else []
    return Counter(line.split(" ")[0] for line in lines)


def keys(path: Path) -> dict[str, set[str]]:
    """The idempotency keys each call label ran with (one per call, across processes)."""
    found: dict[str, set[str]] = {}
    for line in path.read_text().splitlines():
        label, _, key = line.partition(" ")
        found.setdefault(label, set()).add(key)
    return found


def committed(data_dir: Path, run_id: str) -> set[int]:
    """The positions of the step calls committed for `run_id`.

    Positions, not labels: a kill in the middle of a ``ctx.map`` can leave
    gaps, and a label (``name#n``) can only be told from the full sequence.
    """
    with open_store(data_dir) as store:
        calls = store.calls(run_id)
    kinds = dict(calls)
    return {position for position in _labels(calls).values() if kinds[position][0] == "step"}


def final_labels(data_dir: Path, run_id: str) -> dict[int, str]:
    """``position -> "run_id/label"`` of the step calls of a finished run."""
    with open_store(data_dir) as store:
        calls = store.calls(run_id)
    kinds = dict(calls)
    return {position: f"{run_id}/{label}" for label, position in _labels(calls).items()
            if kinds[position][0] == "step"}


def finish(command: list[str]) -> dict[str, Any]:
    done = subprocess.run(command, env=env(), capture_output=True, text=True,
                          timeout=PROCESS_TIMEOUT, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def kill_at(command: list[str], reached: Any, rng: random.Random) -> bool:
    """Start `command`, SIGKILL it once `reached()` is true; False if it finished first."""
    child = subprocess.Popen(command, env=env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: child.poll() is not None or reached(), timeout=PROCESS_TIMEOUT,
                 interval=0.002)
        if child.poll() is not None:
            return False
        # A little later still, so that kills also land between calls, in a commit,
        # in a timer or in the replay of the next process.
        if rng.random() < 0.5:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(rng.random() * 0.02)
        child.send_signal(signal.SIGKILL)
        return True
    finally:
        child.wait(PROCESS_TIMEOUT)


def test_agent_loop_killed_30_times_at_random_points_runs_each_call_once(
        tmp_path: Path) -> None:
    logic: dict[str, Any] = {}
    exec(LOGIC, logic)
    script = tmp_path / "agent.py"
    script.write_text(AGENT)
    data_dir, count_file = tmp_path / "data", tmp_path / "counts"
    kills = 0
    # 46, 43 and 42 step calls; the last agent is an async body with async steps
    for seed, flavour in ((3, "sync"), (18, "sync"), (21, "async")):
        rng = random.Random(seed)
        run_id = f"agent-{seed}"
        command = python(script, data_dir, count_file, seed, run_id, flavour)
        expected_output, expected_calls = logic["simulate"](seed)
        snapshots = []  # (ran before, ran after, committed positions) at each kill
        for _ in range(11):
            before = counts(count_file)
            goal = sum(before.values()) + rng.randint(1, 3)
            if not kill_at(command, lambda g=goal: sum(counts(count_file).values()) >= g, rng):
                break
            kills += 1
            snapshots.append((before, counts(count_file), committed(data_dir, run_id)))
        report = finish(command)
        assert report == {"status": "succeeded", "output": expected_output}
        label_of = final_labels(data_dir, run_id)
        reruns: Counter[str] = Counter()
        for before, after, done in snapshots:
            done_labels = {label_of[p] for p in done}
            for label in after:
                if after[label] > before[label] and label not in done_labels:
                    reruns[label] += 1  # it ran, but was killed before its commit
        ran = {k: v for k, v in counts(count_file).items() if k.startswith(f"{run_id}/")}
        assert len(ran) == expected_calls
        assert set(ran) == set(label_of.values())
        assert ran == {label: 1 + reruns[label] for label in ran}
    assert kills >= 30
    # a call that ran again after a kill had the same idempotency key
    assert all(len(found) == 1 for found in keys(count_file).values())


NAP = textwrap.dedent('''
    from zixir_actors import durable

    def note(text, ctx):
        fd = os.open(COUNTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, f"{ctx.step}:{text}\\n".encode())
        os.close(fd)
        return text

    def build(clock):
        @durable("restart-nap", clock=clock)
        def napper(ctx):
            ctx.step(note, "before")
            ctx.sleep(3600)
            return ctx.step(note, "after")
        return napper
''')

NAP_CHILD = COMMON + NAP + textwrap.dedent('''
    from zixir_actors.testing import FakeClock
    data_dir, COUNTS = sys.argv[1], sys.argv[2]
    napper = build(FakeClock(wall=1_700_000_000.0))
    with open_store(data_dir) as store:
        handle = napper.start({}, run_id="nap", store=store)
        print(handle.wait(timeout=60), flush=True)
        threading.Event().wait(120)  # until the parent kills this process
''')


def test_a_timer_survives_kill_9_and_sleeps_only_what_is_left(tmp_path: Path) -> None:
    script = tmp_path / "nap.py"
    script.write_text(NAP_CHILD)
    data_dir, count_file = tmp_path / "data", tmp_path / "counts"
    child = subprocess.Popen(python(script, data_dir, count_file), env=env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.strip() == "parked", child.stderr.read() if child.stderr else ""
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(PROCESS_TIMEOUT)
        for pipe in (child.stdout, child.stderr):
            if pipe is not None:
                pipe.close()

    namespace: dict[str, Any] = {"os": os, "COUNTS": str(count_file)}
    exec(NAP, namespace)
    clock = FakeClock(wall=1_700_001_000.0)  # the new process starts 1000 s later
    napper = namespace["build"](clock)
    with open_store(data_dir) as store:
        record = store.get_run("nap")
        assert record.status == "parked"
        assert record.waiting == {"kind": "timer", "until": 1_700_003_600.0}
        handle = napper.start({}, run_id="nap", store=store)
        wait_for(lambda: handle.status() == "parked", timeout=WAIT)
        assert store.get_run("nap").waiting["until"] == 1_700_003_600.0
        clock.advance(2599)
        assert not handle.done()
        clock.advance(1)
        result = handle.result(timeout=WAIT)
    assert result.status == "succeeded" and result.output == "after"
    assert counts(count_file) == {"note#1:before": 1, "note#2:after": 1}


CHILD_RUN = COMMON + textwrap.dedent('''
    data_dir, COUNTS = sys.argv[1], sys.argv[2]

    def prepare(n, ctx):
        mark(ctx)
        return n + 1

    def chunk(i, base, ctx):
        mark(ctx)
        return base * 10 + i

    def finish(parts, ctx):
        mark(ctx)
        return sum(parts)

    @durable("crash-child")
    def child(ctx, base):
        return {"parts": [ctx.step(chunk, i, base) for i in range(8)]}

    @durable("crash-parent")
    def parent(ctx, n):
        base = ctx.step(prepare, n)
        out = ctx.run(child, {"base": base})
        return ctx.step(finish, out["parts"])

    with open_store(data_dir) as store:
        result = parent.run({"n": 4}, run_id="parent", store=store)
        children = [r.run_id for r in store.list_runs(workflow="crash-child")]
    print(json.dumps({"status": result.status, "output": result.output,
                      "children": children}))
''')


def test_a_child_run_killed_midway_resumes_inside_its_parent(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(CHILD_RUN)
    data_dir, count_file = tmp_path / "data", tmp_path / "counts"
    command = python(script, data_dir, count_file)
    rng = random.Random(5)
    reruns: Counter[str] = Counter()

    def child_lines() -> int:
        return sum(n for label, n in counts(count_file).items() if "chunk" in label)

    snapshots = []
    for goal in (2, 5):
        before = counts(count_file)
        assert kill_at(command, lambda g=goal: child_lines() >= g, rng)
        with open_store(data_dir) as store:
            runs = [r.run_id for r in store.list_runs(workflow="crash-child")]
        assert len(runs) == 1
        snapshots.append((before, counts(count_file), committed(data_dir, "parent"),
                          committed(data_dir, runs[0])))
    report = finish(command)
    assert report["status"] == "succeeded"
    assert report["output"] == sum(50 + i for i in range(8))
    [child_id] = report["children"]
    assert child_id.startswith("parent")  # derived from the parent's id
    parent_labels, child_labels = final_labels(data_dir, "parent"), final_labels(data_dir,
                                                                               child_id)
    reruns: Counter[str] = Counter()
    for before, after, parent_done, child_done in snapshots:
        done = {parent_labels[p] for p in parent_done} | {child_labels[p] for p in child_done}
        for label in after:
            if after[label] > before[label] and label not in done:
                reruns[label] += 1
    ran = counts(count_file)
    assert set(ran) == set(parent_labels.values()) | set(child_labels.values())
    assert len(ran) == 10  # prepare, 8 chunks, finish
    assert ran == {label: 1 + reruns[label] for label in ran}


CHANGING = COMMON + textwrap.dedent('''
    data_dir, COUNTS = sys.argv[1], sys.argv[2]

    def fetch(ctx):
        mark(ctx)
        return "page"

    def parse(page, ctx):
        mark(ctx)
        return len(page)

    @durable("changing")
    def body(ctx):
        n = ctx.step(parse, ctx.step(fetch))
        return {"n": n, "approval": ctx.wait_for("approval")}

    with open_store(data_dir) as store:
        handle = body.start({}, run_id="changing", store=store)
        print(handle.wait(timeout=60), flush=True)
        threading.Event().wait(120)
''')


def test_a_body_changed_between_kill_and_resume(tmp_path: Path) -> None:
    from zixir_actors import durable

    script = tmp_path / "changing.py"
    script.write_text(CHANGING)
    data_dir, count_file = tmp_path / "data", tmp_path / "counts"
    child = subprocess.Popen(python(script, data_dir, count_file), env=env(),
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "parked"
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(PROCESS_TIMEOUT)
        if child.stdout is not None:
            child.stdout.close()
    calls: Counter[str] = Counter()

    def fetch() -> str:
        calls["fetch"] += 1
        return "other page"

    def parse(page: str) -> int:
        calls["parse"] += 1
        return -1

    def summarize(page: str) -> str:
        calls["summarize"] += 1
        return page[:3]

    @durable("changing")
    def harmful(ctx: Any) -> Any:
        # parse#1 is recorded where summarize#1 is asked for now
        summary = ctx.step(summarize, ctx.step(fetch, name="fetch"), name="summarize")
        return {"n": summary, "approval": ctx.wait_for("approval")}

    with open_store(data_dir) as store:
        plan = harmful.plan("changing", store=store)
        assert [e.action for e in plan if e.reason.startswith("nondeterminism:")] == ["rerun"]
        broken = harmful.resume("changing", store=store)
        assert broken.status == "failed"
        assert broken.error is not None and broken.error.type == "NondeterminismError"

        logged: list[str] = []

        @durable("changing")
        def harmless(ctx: Any) -> Any:
            # new implementations under the recorded names
            n = ctx.step(parse, ctx.step(fetch, name="fetch"), name="parse")
            logged.append(f"parsed {n} characters")
            return {"n": n, "approval": ctx.wait_for("approval")}

        handle = harmless.start({}, run_id="changing", store=store)
        wait_for(lambda: handle.status() == "parked", timeout=WAIT)
        harmless.send("changing", "approval", True, store=store)
        result = handle.result(timeout=WAIT)
    assert result.status == "succeeded"
    assert result.output == {"n": 4, "approval": True}  # the recorded values
    assert calls == {}  # nothing ran again: every call was replayed
    assert set(logged) == {"parsed 4 characters"}  # the body replays; its calls do not run
    assert counts(count_file) == {"changing/fetch#1": 1, "changing/parse#1": 1}


TALKER = COMMON + textwrap.dedent('''
    data_dir, COUNTS = sys.argv[1], sys.argv[2]

    def speak(i, ctx):
        for t in range(40):
            ctx.emit(f"{i}:{t}")
        mark(ctx)
        return i

    @durable("crash-progress")
    def talker(ctx):
        return sum(ctx.step(speak, i) for i in range(20))

    with open_store(data_dir) as store:
        result = talker.run({}, run_id="talker", store=store)
    print(json.dumps({"status": result.status, "output": result.output}))
''')


def test_a_kill_never_loses_the_progress_of_a_committed_step(tmp_path: Path) -> None:
    script = tmp_path / "talker.py"
    script.write_text(TALKER)
    data_dir, count_file = tmp_path / "data", tmp_path / "counts"
    command = python(script, data_dir, count_file)
    rng = random.Random(9)
    for _ in range(2):
        goal = sum(counts(count_file).values()) + rng.randint(2, 8)
        assert kill_at(command, lambda g=goal: sum(counts(count_file).values()) >= g, rng)
        with open_store(data_dir) as store:
            calls = store.calls("talker")
            emitted = [(step, value) for _, (_, kind, step, value) in store.progress("talker")
                       if kind == "emit"]
        done = [label for label, position in _labels(calls).items()
                if dict(calls)[position][0] == "step"]
        assert done  # the kill came after some steps committed
        for label in done:
            i = int(label.split("#")[1]) - 1
            tokens = [value for step, value in emitted if step == label]
            # the last 40 are those of the attempt that committed (an attempt cut
            # short by an earlier kill may have left some before them)
            assert tokens[-40:] == [f"{i}:{t}" for t in range(40)], label
    assert finish(command) == {"status": "succeeded", "output": sum(range(20))}


WAITER = textwrap.dedent('''
    from zixir_actors import durable

    def build(calls):
        def fetch(n):
            calls.append(n)
            return n * 2

        @durable("restart-waiter")
        def waiter(ctx, n):
            doubled = ctx.step(fetch, n, name="fetch")
            return doubled + ctx.wait_for("go")
        return waiter
''')

WAITER_CHILD = WAITER + textwrap.dedent('''
    import sys, threading
    import zixir_actors
    waiter = build([])
    with zixir_actors.start(data_dir=sys.argv[1]):
        handle = waiter.start({"n": 20}, run_id="waiter")
        print(handle.wait(timeout=60), flush=True)
        threading.Event().wait(120)  # until the parent kills this process
''')


def test_a_parked_run_survives_kill_9_and_the_next_runtime_wakes_it(tmp_path: Path) -> None:
    import zixir_actors

    script = tmp_path / "waiter.py"
    script.write_text(WAITER_CHILD)
    data_dir = tmp_path / "data"
    child = subprocess.Popen(python(script, data_dir), env=env(), stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "parked"
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(PROCESS_TIMEOUT)
        if child.stdout is not None:
            child.stdout.close()
    namespace: dict[str, Any] = {}
    exec(WAITER, namespace)
    calls: list[int] = []
    waiter = namespace["build"](calls)
    with zixir_actors.start(data_dir=data_dir) as runtime:  # resumes interrupted runs
        [handle] = [h for h in runtime.resumed if h.run_id == "waiter"]
        assert handle.wait(timeout=WAIT) == "parked"
        waiter.send("waiter", "go", 2)
        result = handle.result(timeout=WAIT)
    assert result.status == "succeeded" and result.output == 42
    assert calls == []  # fetch ran once, in the killed process


CONSUMER = COMMON + textwrap.dedent('''
    import zixir_actors
    data_dir, COUNTS = sys.argv[1], sys.argv[2]

    def record(x, ctx):
        mark(ctx)
        return x

    @durable("crash-events")
    def consumer(ctx):
        return [ctx.step(record, ctx.wait_for("e")) for _ in range(6)]

    with zixir_actors.start(data_dir=data_dir) as runtime:  # resumes the run after a kill
        resumed = [h for h in runtime.resumed if h.run_id == "events"]
        handle = resumed[0] if resumed else consumer.start({}, run_id="events")
        result = handle.result(timeout=120)
    print(json.dumps({"status": result.status, "output": result.output}))
''')


def test_events_survive_kills_and_are_each_consumed_once(tmp_path: Path) -> None:
    from zixir_actors import send

    script = tmp_path / "consumer.py"
    script.write_text(CONSUMER)
    data_dir, count_file = tmp_path / "data", tmp_path / "counts"
    command = python(script, data_dir, count_file)
    rng = random.Random(13)

    def parked_waiting() -> bool:
        with open_store(data_dir) as store:
            record = store.find_run("events")
            return record is not None and record.status == "parked"

    snapshots = []
    for event in range(4):  # one event per process, then kill -9 at a random point
        before = counts(count_file)
        child = subprocess.Popen(command, env=env(), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda proc=child: proc.poll() is not None or parked_waiting(),
                     timeout=PROCESS_TIMEOUT, interval=0.01)
            assert child.poll() is None
            with open_store(data_dir) as store:
                send("events", "e", event, store=store)
            if rng.random() < 0.5:  # kill once the step ran, or at once
                lines = sum(before.values())
                wait_for(lambda g=lines: sum(counts(count_file).values()) > g,
                         timeout=PROCESS_TIMEOUT, interval=0.002)
            child.send_signal(signal.SIGKILL)
        finally:
            child.wait(PROCESS_TIMEOUT)
        snapshots.append((before, counts(count_file), committed(data_dir, "events")))
    with open_store(data_dir) as store:  # the rest arrive before the last process starts
        send("events", "e", 4, store=store)
        send("events", "e", 5, store=store)
    assert finish(command) == {"status": "succeeded", "output": [0, 1, 2, 3, 4, 5]}
    label_of = final_labels(data_dir, "events")
    reruns: Counter[str] = Counter()
    for before, after, done in snapshots:
        done_labels = {label_of[p] for p in done}
        for label in after:
            if after[label] > before[label] and label not in done_labels:
                reruns[label] += 1
    ran = counts(count_file)
    assert len(ran) == 6
    assert ran == {label: 1 + reruns[label] for label in ran}
    with open_store(data_dir) as store:
        assert store.events("events") == []  # every event consumed, none twice

