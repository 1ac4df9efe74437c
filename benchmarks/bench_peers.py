"""The peers, measured by our own benchmark: DBOS, LangGraph and Prefect beside us.

Every peer runs the same work with durability on, each in its own process so
that no peer's imports, threads or servers disturb another's, interleaved
round by round so that load shifts on the machine hit all alike:

- chain: 200 no-op steps, each after the previous; ms per step.
- fan-out: 200 independent no-op steps and a join; ms per fanned step.
- loop: a code-first body calling 200 no-op durable steps in a loop (issue 12);
  ours needs ``zixir_actors.durable`` and is skipped, saying so, until it exists.
- cold start: a script that runs a one-step durable workflow, as a whole fresh
  process (spawn to exit), median of several.
- kill: a 20-step chain whose process is killed with SIGKILL as step 11 starts
  (after step 10 finished), then resumed in a fresh process: how many steps ran
  in both processes (the step in flight runs again: 1 is the floor) and how
  long the resume took (from the script's first line after its imports).

The per-step figures come from warm processes (medians of the rounds); ours is
the ``zixir_actors`` `Workflow` on the durable store (``open_store``: commit +
fsync per step, concurrent steps share one). Each peer row is a baseline:
``better="lower"``; chain, fan-out and loop target at least 3x faster than both
DBOS and LangGraph (so than the faster of them); cold start and kill report.

How each peer is set up (printed with the table, stored in each figure's note):

- DBOS: ``DBOS(config={"system_database_url": "sqlite:///DIR/dbos.sqlite"})``
  (SQLite, rollback journal, synchronous=FULL), ``@DBOS.workflow`` calling
  ``@DBOS.step`` functions, ``DBOS.launch()`` once, a fresh ``SetWorkflowID``
  per run; fan-out: an async workflow gathering 200 async steps; resume after a
  kill: ``DBOS.launch()`` recovers the pending workflow.
- LangGraph: a ``StateGraph`` of N nodes compiled with ``SqliteSaver`` (WAL,
  synchronous=FULL), ``invoke(..., durability="sync")``; the loop uses the
  functional API (``@entrypoint`` and ``@task``); resume: ``invoke(None, config)``.
  The kill test also runs the default ``durability="async"``.
- Prefect: ``@task(persist_result=True, cache_policy=INPUTS + TASK_SOURCE)``
  in a ``@flow``, ``PREFECT_RESULTS_PERSIST_BY_DEFAULT=true``, its temporary
  local API server (started by the process itself, offline); resume: the flow
  called again, its persisted task results are reused. ``--quick`` skips
  Prefect's cold start and kill test (about 20 s per process here).

Install the peers with ``pip install -e '.[bench]'``; a peer that is not
installed is skipped with a line saying so. Run with
``python -m benchmarks peers [--quick]``. From another benchmark,
`peer_loop_ms` gives a peer's side of the 200-call loop, and `PeerProcess`
lets a caller interleave its own measurements with a peer's.
"""

from __future__ import annotations

import contextlib
import json
import operator
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, TypedDict, TypeVar

from benchmarks._harness import Figure, main

__all__ = ["PEERS", "PeerError", "PeerNotInstalledError", "PeerProcess", "installed",
           "ours_durable", "peer_loop_ms", "run"]

SUBJECT = "peers"
PEERS = ("ours", "dbos", "langgraph", "prefect")
"""Every peer the benchmark knows, ours first."""

NAMES = {"ours": "zixir-actors", "dbos": "DBOS", "langgraph": "LangGraph", "prefect": "Prefect"}
DISTRIBUTIONS = {"ours": ("zixir-actors",), "dbos": ("dbos",),
                 "langgraph": ("langgraph", "langgraph-checkpoint-sqlite"),
                 "prefect": ("prefect",)}
DURABILITY = {
    "ours": "open_store(DIR): LMDB, commit + fsync per step (concurrent steps share one)",
    "dbos": "SQLite system db sqlite:///DIR/dbos.sqlite (journal, synchronous=FULL)",
    "langgraph": 'SqliteSaver (WAL, synchronous=FULL), invoke(..., durability="sync")',
    "prefect": "@task(persist_result=True), PREFECT_RESULTS_PERSIST_BY_DEFAULT=true, "
               "temporary local API server (offline)",
}
TARGET = 0.333
"""Chain, fan-out and loop: ours at most a third of DBOS's and of LangGraph's time."""
TARGETED = ("dbos", "langgraph")
KILL_STEPS = 20
KILL_AT = 11
"""The process dies as step 11 starts: steps 1-10 have finished."""
START_TIMEOUT = 240.0
OP_TIMEOUT = 600.0
REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")


class PeerError(RuntimeError):
    """A peer process failed to start, answer or finish."""


class PeerNotInstalledError(ImportError):
    """The peer's packages are not installed (``pip install -e '.[bench]'``)."""

    def __init__(self, peer: str, missing: Sequence[str]) -> None:
        self.peer = peer
        self.missing = tuple(missing)
        super().__init__(f"{NAMES.get(peer, peer)} is not installed "
                         f"(missing {', '.join(missing)}; pip install -e '.[bench]')")


def installed(peer: str) -> tuple[str, ...]:
    """The missing distributions of `peer` (empty when it is installed), without importing it."""
    missing = []
    for dist in DISTRIBUTIONS[peer]:
        try:
            metadata.version(dist)
        except metadata.PackageNotFoundError:
            missing.append(dist)
    return tuple(missing)


def version(peer: str) -> str:
    return " + ".join(f"{d} {metadata.version(d)}" for d in DISTRIBUTIONS[peer])


def ours_durable() -> Callable[..., Any]:
    """``zixir_actors.durable``, or ImportError while it does not exist yet (issue 12)."""
    import zixir_actors

    durable = getattr(zixir_actors, "durable", None)
    if durable is None:
        raise ImportError("zixir_actors.durable does not exist yet (issue 12): "
                          "our side of the code-first loop is skipped")
    return durable  # type: ignore[no-any-return]


# -- the peers' work, run inside each peer's own warm process ------------------------------


def _noop(i: int = 0) -> int:
    return i


class _Ours:
    """zixir_actors `Workflow`s on the durable store; the loop needs `durable`."""

    def __init__(self, data_dir: str) -> None:
        from zixir_actors.checkpoint import open_store
        from zixir_actors.observability import configure_logging
        from zixir_actors.workflow import Step, Workflow

        self._devnull = open(os.devnull, "w")  # noqa: SIM115 - closed in close()
        configure_logging(level="WARNING", sink=self._devnull, replace_default=True)
        self._Step, self._Workflow = Step, Workflow
        self._opened = open_store(data_dir)
        self.store = self._opened.__enter__()
        self._flows: dict[tuple[str, int], Any] = {}

    def _flow(self, kind: str, n: int) -> Any:
        wf = self._flows.get((kind, n))
        if wf is None:
            step = self._Step
            if kind == "chain":
                steps = [step(f"s{i}", _noop, (f"s{i - 1}",) if i else ()) for i in range(n)]
                wf = self._Workflow(f"peers-chain-{n}", steps)
            else:
                steps = [step(f"s{i}", _noop) for i in range(n)]
                steps.append(step("join", _noop, tuple(f"s{i}" for i in range(n))))
                wf = self._Workflow(f"peers-fan-{n}", steps, max_concurrency=16)
            self._flows[(kind, n)] = wf
        return wf

    def chain(self, n: int) -> float:
        wf = self._flow("chain", n)
        began = time.perf_counter()
        wf.run(store=self.store).raise_for_status()
        return time.perf_counter() - began

    def fan(self, n: int) -> float:
        wf = self._flow("fan", n)
        began = time.perf_counter()
        wf.run(store=self.store).raise_for_status()
        return time.perf_counter() - began

    def loop(self, n: int) -> float:
        wf = self._flows.get(("loop", 0))
        if wf is None:
            wf = self._flows[("loop", 0)] = ours_durable()("peers-loop")(_loop_body)
        began = time.perf_counter()
        wf.run({"n": n}, store=self.store).raise_for_status()
        return time.perf_counter() - began

    def close(self) -> None:
        self._opened.__exit__(None, None, None)
        from zixir_actors.observability import reset_logging

        reset_logging()
        self._devnull.close()


def _loop_body(ctx: Any, n: int) -> int:
    """Our side of the code-first loop: `n` durable no-op calls."""
    for i in range(n):
        ctx.step(_noop, i)
    return n


class _Dbos:
    """DBOS Transact on its SQLite system database."""

    def __init__(self, data_dir: str) -> None:
        import asyncio

        from dbos import DBOS, SetWorkflowID

        self._asyncio, self._dbos, self._set_id = asyncio, DBOS, SetWorkflowID
        DBOS(config={"name": "peers", "log_level": "WARNING",
                     "system_database_url": f"sqlite:///{data_dir}/dbos.sqlite"})

        @DBOS.step()
        def noop(i: int) -> int:
            return i

        @DBOS.step()
        async def anoop(i: int) -> int:
            return i

        @DBOS.workflow()
        def chain(n: int) -> int:
            for i in range(n):
                noop(i)
            return n

        @DBOS.workflow()
        async def fan(n: int) -> int:
            done = await asyncio.gather(*[anoop(i) for i in range(n)])
            await anoop(-1)  # the join
            return len(done)

        self._chain, self._fan = chain, fan
        DBOS.launch()

    def chain(self, n: int) -> float:
        began = time.perf_counter()
        with self._set_id(uuid.uuid4().hex):
            self._chain(n)
        return time.perf_counter() - began

    def fan(self, n: int) -> float:
        began = time.perf_counter()
        with self._set_id(uuid.uuid4().hex):
            self._asyncio.run(self._fan(n))
        return time.perf_counter() - began

    loop = chain  # a DBOS workflow is already a code-first loop of steps

    def close(self) -> None:
        self._dbos.destroy()


class _LangGraph:
    """LangGraph with its SQLite checkpointer, ``durability="sync"``."""

    def __init__(self, data_dir: str, durability: str = "sync") -> None:
        import sqlite3

        from langgraph.checkpoint.sqlite import SqliteSaver

        self._conn = sqlite3.connect(os.path.join(data_dir, "langgraph.sqlite"),
                                     check_same_thread=False)
        self.saver = SqliteSaver(self._conn)
        self.durability = durability
        self._graphs: dict[tuple[str, int], Any] = {}

    def _graph(self, kind: str, n: int) -> Any:
        graph = self._graphs.get((kind, n))
        if graph is not None:
            return graph
        from langgraph.graph import END, START, StateGraph

        if kind == "chain":
            builder: Any = StateGraph(_ChainState)
            for i in range(n):
                builder.add_node(f"s{i}", _set_x(i))
                builder.add_edge(START if i == 0 else f"s{i - 1}", f"s{i}")
            builder.add_edge(f"s{n - 1}", END)
        elif kind == "fan":
            builder = StateGraph(_FanState)
            for i in range(n):
                builder.add_node(f"s{i}", _append(i))
                builder.add_edge(START, f"s{i}")
                builder.add_edge(f"s{i}", "join")
            builder.add_node("join", _append(-1))
            builder.add_edge("join", END)
        else:
            from langgraph.func import entrypoint, task

            noop = task(_noop)

            @entrypoint(checkpointer=self.saver)
            def loop(count: int) -> int:
                for i in range(count):
                    noop(i).result()
                return count

            self._graphs[(kind, n)] = loop
            return loop
        graph = builder.compile(checkpointer=self.saver)
        self._graphs[(kind, n)] = graph
        return graph

    def _invoke(self, kind: str, n: int, inputs: Any) -> float:
        graph = self._graph(kind, n)
        config = {"configurable": {"thread_id": uuid.uuid4().hex}, "recursion_limit": 4 * n + 10}
        began = time.perf_counter()
        graph.invoke(inputs, config, durability=self.durability)
        return time.perf_counter() - began

    def chain(self, n: int) -> float:
        return self._invoke("chain", n, {"x": 0})

    def fan(self, n: int) -> float:
        return self._invoke("fan", n, {"out": []})

    def loop(self, n: int) -> float:
        return self._invoke("loop", n, n)

    def close(self) -> None:
        self._conn.close()


class _ChainState(TypedDict, total=False):
    x: int


class _FanState(TypedDict, total=False):
    out: Annotated[list[int], operator.add]


def _set_x(i: int) -> Callable[[Any], dict[str, int]]:
    def node(state: Any) -> dict[str, int]:
        return {"x": i}
    return node


def _append(i: int) -> Callable[[Any], dict[str, list[int]]]:
    def node(state: Any) -> dict[str, list[int]]:
        return {"out": [i]}
    return node


PREFECT_ENV = {"PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true", "PREFECT_LOGGING_LEVEL": "WARNING",
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
               "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "true",
               # its default 20 s is not enough for the server to start on a loaded machine
               "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}


def _prefect_env(data_dir: str) -> dict[str, str]:
    return {**PREFECT_ENV, "PREFECT_HOME": os.path.join(data_dir, "prefect")}


class _Prefect:
    """Prefect with persisted results and its temporary local API server."""

    def __init__(self, data_dir: str) -> None:
        for name in ("PREFECT_API_URL", "PREFECT_PROFILES_PATH"):
            os.environ.pop(name, None)
        os.environ.update(_prefect_env(data_dir))
        from prefect import flow, task
        from prefect.cache_policies import INPUTS, TASK_SOURCE

        noop = task(persist_result=True, cache_policy=INPUTS + TASK_SOURCE)(_keyed_noop)

        @flow(persist_result=True)
        def chain(key: str, n: int) -> int:
            prev = None
            for i in range(n):
                prev = noop(key, i, prev)
            return n

        @flow(persist_result=True)
        def fan(key: str, n: int) -> int:
            futures = [noop.submit(key, i, None) for i in range(n)]
            return noop(key, -1, [f.result() for f in futures])  # the join

        self._chain, self._fan = chain, fan
        chain(uuid.uuid4().hex, 1)  # starts the temporary server before the first timing

    def chain(self, n: int) -> float:
        began = time.perf_counter()
        self._chain(uuid.uuid4().hex, n)
        return time.perf_counter() - began

    def fan(self, n: int) -> float:
        began = time.perf_counter()
        self._fan(uuid.uuid4().hex, n)
        return time.perf_counter() - began

    loop = chain  # a flow is already a code-first loop of tasks (the benchmark skips it)

    def close(self) -> None:
        pass  # the temporary server stops with the process (its group is killed after)


def _keyed_noop(key: str, i: int, prev: Any) -> int:
    return i


DRIVERS: dict[str, Callable[[str], Any]] = {"ours": _Ours, "dbos": _Dbos,
                                            "langgraph": _LangGraph, "prefect": _Prefect}


def _serve(peer: str, data_dir: str) -> int:
    """A warm peer process: one JSON command per stdin line, one JSON reply per line."""
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever the peer prints goes to the log, never into the replies
    sys.stdout = sys.stderr
    try:
        driver = DRIVERS[peer](data_dir)
    except Exception as exc:
        replies.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
        return 1
    replies.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "quit":
            break
        try:
            reply: dict[str, Any] = {"seconds": getattr(driver, command["op"])(command["n"])}
        except ImportError as exc:
            reply = {"skip": str(exc)}
        except Exception as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        replies.write(json.dumps(reply) + "\n")
    driver.close()
    return 0


# -- the parent's side -----------------------------------------------------------------


def _kill_group(pid: int) -> None:
    """Kill what a peer process left in its session (Prefect's temporary server)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class PeerProcess:
    """One peer in its own warm process, answering timed runs of its work.

    Example:
        ``with PeerProcess("dbos", tmp) as dbos: seconds = dbos.request("loop", 200)``

    Args:
        peer: one of `PEERS`.
        data_dir: where the peer keeps its database (a new temporary one if None).
        timeout: seconds to wait for the process to be ready.

    Raises:
        PeerNotInstalledError: the peer's packages are not installed.
        PeerError: the process failed to start (with the end of its log).
    """

    def __init__(self, peer: str, data_dir: str | None = None, *,
                 timeout: float = START_TIMEOUT) -> None:
        missing = installed(peer)
        if missing:
            raise PeerNotInstalledError(peer, missing)
        self.peer = peer
        self._owned = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix=f"zixir-peer-{peer}-")
        self.log_path = os.path.join(self.data_dir, f"{peer}.log")
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in close()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bench_peers", "--serve", peer, self.data_dir],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, cwd=REPO,
            env=_child_env(), start_new_session=True, text=True)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name=f"peer-{peer}-reader",
                                        daemon=True)
        self._reader.start()
        self._deadline = time.monotonic() + timeout
        self._ready = False

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _reply(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=max(0.0, timeout))
        except queue.Empty:
            raise PeerError(f"{self.peer}: no answer in {timeout:.0f} s; {self.tail()}") from None
        if line is None:
            raise PeerError(f"{self.peer}: process ended (exit {self._proc.wait()}); "
                            f"{self.tail()}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise PeerError(f"{self.peer}: {reply['error']}")
        return reply

    def wait_ready(self) -> None:
        """Block until the peer has imported and set itself up."""
        if not self._ready:
            self._reply(self._deadline - time.monotonic())
            self._ready = True

    def request(self, op: str, n: int, *, timeout: float = OP_TIMEOUT) -> float:
        """Seconds one run of `op` (``"chain"``, ``"fan"``, ``"loop"``) of `n` steps took.

        Raises:
            ImportError: the peer cannot do `op` (ours without ``durable``).
            PeerError: the run failed or did not answer within `timeout`.
        """
        self.wait_ready()
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps({"op": op, "n": n}) + "\n")
        self._proc.stdin.flush()
        reply = self._reply(timeout)
        if "skip" in reply:
            raise ImportError(reply["skip"])
        return float(reply["seconds"])

    def tail(self, lines: int = 6) -> str:
        self._log.flush()
        try:
            text = Path(self.log_path).read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return "log: " + " | ".join(text[-lines:]) if text else "empty log"

    def close(self, *, timeout: float = 60.0) -> None:
        """Ask the process to quit, then kill whatever is left of its session."""
        with contextlib.suppress(OSError, ValueError):
            assert self._proc.stdin is not None
            self._proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self._proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=timeout)
        _kill_group(self._proc.pid)
        self._proc.wait()
        self._reader.join(timeout=5)
        self._log.close()
        if self._owned:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> PeerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.pop("PREFECT_API_URL", None)
    return env


def peer_loop_ms(peer: str, n: int = 200, *, repeat: int = 5) -> float:
    """Median ms per call of a code-first loop of `n` durable no-op calls on `peer`.

    The peer runs in its own warm process (one warm-up run, then `repeat`
    runs): DBOS, a ``@DBOS.workflow`` calling a ``@DBOS.step`` `n` times on
    SQLite; LangGraph, an ``@entrypoint`` calling a ``@task`` `n` times with
    ``SqliteSaver`` and ``durability="sync"``; ours, a ``durable`` body calling
    ``ctx.step`` `n` times on the durable store.

    Raises:
        PeerNotInstalledError: (an ImportError) the peer is not installed.
        ImportError: ours, while ``zixir_actors.durable`` does not exist.
        PeerError: the peer failed.
    """
    with PeerProcess(peer) as proc:
        proc.request("loop", min(n, 20))
        samples = [proc.request("loop", n) for _ in range(repeat)]
    return statistics.median(samples) / n * 1e3


def ours_loop_ms(n: int = 200, *, repeat: int = 5) -> float:
    """Our side of the loop, measured as the peers' is (ImportError until ``durable`` exists)."""
    ours_durable()
    return peer_loop_ms("ours", n, repeat=repeat)


# -- whole processes: cold start and kill ---------------------------------------------

_PRELUDE = '''\
import json, os, signal, sys, time
data_dir, key, n, kill_at, log, mode, durability, out = sys.argv[1:9]
n, kill_at = int(n), int(kill_at)
_log = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT) if log else -1
def note(i):
    if _log >= 0:
        os.write(_log, b"%d\\n" % i)
    if i == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
def done(began):
    with open(out, "w") as f:
        json.dump({"seconds": time.perf_counter() - began}, f)
'''

SCRIPTS = {
    "ours": '''
from zixir_actors.checkpoint import open_store
from zixir_actors.observability import configure_logging
from zixir_actors.workflow import Step, Workflow
configure_logging(level="WARNING", sink=open(os.devnull, "w"), replace_default=True)
def make(i):
    def step():
        note(i)
        return i
    return step
wf = Workflow("peers-script", [Step(f"s{i}", make(i), (f"s{i - 1}",) if i > 1 else ())
                               for i in range(1, n + 1)])
began = time.perf_counter()
with open_store(data_dir) as store:
    if mode == "resume":
        wf.resume(key, store=store).raise_for_status()
    else:
        wf.run(run_id=key, store=store).raise_for_status()
done(began)
''',
    "dbos": '''
from dbos import DBOS, SetWorkflowID
DBOS(config={"name": "peers-script", "log_level": "WARNING",
             "system_database_url": f"sqlite:///{data_dir}/dbos.sqlite"})
@DBOS.step()
def step(i):
    note(i)
    return i
@DBOS.workflow()
def chain(count):
    for i in range(1, count + 1):
        step(i)
    return count
began = time.perf_counter()
DBOS.launch()
if mode == "resume":
    DBOS.retrieve_workflow(key).get_result()
else:
    with SetWorkflowID(key):
        chain(n)
done(began)
''',
    "langgraph": '''
import sqlite3
from typing import TypedDict
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
class State(TypedDict, total=False):
    x: int
def make(i):
    def node(state):
        note(i)
        return {"x": i}
    return node
graph = StateGraph(State)
for i in range(1, n + 1):
    graph.add_node(f"s{i}", make(i))
    graph.add_edge(START if i == 1 else f"s{i - 1}", f"s{i}")
graph.add_edge(f"s{n}", END)
began = time.perf_counter()
conn = sqlite3.connect(os.path.join(data_dir, "langgraph.sqlite"), check_same_thread=False)
app = graph.compile(checkpointer=SqliteSaver(conn))
app.invoke(None if mode == "resume" else {"x": 0}, {"configurable": {"thread_id": key}},
           durability=durability)
done(began)
''',
    "prefect": '''
from prefect import flow, task
from prefect.cache_policies import INPUTS, TASK_SOURCE
@task(persist_result=True, cache_policy=INPUTS + TASK_SOURCE)
def step(key, i, prev):
    note(i)
    return i
@flow(persist_result=True)
def chain(key, count):
    prev = None
    for i in range(1, count + 1):
        prev = step(key, i, prev)
    return count
began = time.perf_counter()
chain(key, n)
done(began)
''',
}


@dataclass
class _Script:
    """One peer's script on disk, and how to run it as a fresh process."""

    peer: str
    root: str
    durability: str = "sync"
    path: str = field(init=False)
    data_dir: str = field(init=False)

    def __post_init__(self) -> None:
        self.data_dir = os.path.join(self.root, f"{self.peer}-{self.durability}-script")
        os.makedirs(self.data_dir, exist_ok=True)
        self.path = os.path.join(self.root, f"peer_{self.peer}_{self.durability}.py")
        Path(self.path).write_text(_PRELUDE + SCRIPTS[self.peer])

    def run(self, key: str, n: int, *, kill_at: int = 0, log: str = "",
            mode: str = "run", timeout: float = OP_TIMEOUT) -> tuple[float, int, float | None]:
        """(wall seconds from spawn to exit, exit code, in-process seconds or None)."""
        out = os.path.join(self.data_dir, f"{key}-{mode}.json")
        env = _child_env()
        if self.peer == "prefect":
            env.update(_prefect_env(self.data_dir))
        argv = [sys.executable, self.path, self.data_dir, key, str(n), str(kill_at), log, mode,
                self.durability, out]
        with open(os.path.join(self.data_dir, "script.log"), "ab") as err:
            began = time.perf_counter()
            proc = subprocess.Popen(argv, stdout=err, stderr=err, cwd=self.data_dir, env=env,
                                    start_new_session=True)
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                code = None
            wall = time.perf_counter() - began
            _kill_group(proc.pid)
            proc.wait()
        if code is None:
            raise PeerError(f"{self.peer}: script did not end in {timeout:.0f} s")
        try:
            inner = float(json.loads(Path(out).read_text())["seconds"])
        except (OSError, ValueError, KeyError):
            inner = None
        return wall, code, inner

    def tail(self) -> str:
        try:
            lines = Path(self.data_dir, "script.log").read_text(errors="replace").splitlines()
        except OSError:
            return "no log"
        return " | ".join(lines[-4:])


@dataclass(frozen=True)
class _KillResult:
    rerun: int
    resume_seconds: float
    resume_wall: float


def _kill_test(script: _Script) -> _KillResult:
    key = uuid.uuid4().hex
    first_log = os.path.join(script.data_dir, f"{key}-first.log")
    second_log = os.path.join(script.data_dir, f"{key}-second.log")
    _, code, _ = script.run(key, KILL_STEPS, kill_at=KILL_AT, log=first_log)
    if code != -signal.SIGKILL:
        raise PeerError(f"{script.peer}: the first process was not killed (exit {code}); "
                        f"{script.tail()}")
    wall, code, inner = script.run(key, KILL_STEPS, log=second_log, mode="resume")
    if code != 0 or inner is None:
        raise PeerError(f"{script.peer}: resume failed (exit {code}); {script.tail()}")
    first, second = _steps(first_log), _steps(second_log)
    if first | second != set(range(1, KILL_STEPS + 1)) or KILL_AT not in first:
        raise PeerError(f"{script.peer}: steps ran {sorted(first)} then {sorted(second)}")
    return _KillResult(len(first & second), inner, wall)


def _steps(log: str) -> set[int]:
    try:
        return {int(line) for line in Path(log).read_text().split()}
    except OSError:
        return set()


# -- the benchmark --------------------------------------------------------------------


@dataclass
class _Plan:
    rounds: int
    prefect_rounds: int
    cold: int
    prefect_cold: int
    kills: int
    prefect_kills: int
    n: int = 200

    @classmethod
    def of(cls, quick: bool) -> _Plan:
        if quick:
            return cls(rounds=3, prefect_rounds=1, cold=2, prefect_cold=0, kills=1,
                       prefect_kills=0)
        return cls(rounds=9, prefect_rounds=3, cold=7, prefect_cold=3, kills=3, prefect_kills=1)

    def count(self, peer: str, what: str) -> int:
        return int(getattr(self, f"prefect_{what}" if peer == "prefect" else what))


def _say(text: str) -> None:
    print(f"# peers: {text}", flush=True)


def _rotated(items: Sequence[T], shift: int) -> list[T]:
    shift %= max(1, len(items))
    return [*items[shift:], *items[:shift]]


def run(quick: bool = False) -> list[Figure]:
    plan = _Plan.of(quick)
    peers = []
    for peer in PEERS:
        missing = installed(peer)
        if missing:
            _say(f"{NAMES[peer]} skipped: not installed (missing {', '.join(missing)}; "
                 "pip install -e '.[bench]')")
            continue
        peers.append(peer)
        _say(f"{NAMES[peer]} ({version(peer)}): {DURABILITY[peer]}")
    _say(f"machine: {os.cpu_count()} cores; date {time.strftime('%Y-%m-%d')}")
    root = tempfile.mkdtemp(prefix="zixir-bench-peers-")
    try:
        per_step = _warm(peers, plan, root)
        cold = _cold(peers, plan, root)
        kills = _kills(peers, plan, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return _figures(peers, plan, per_step, cold, kills)


Samples = dict[str, dict[str, list[float]]]


def _warm(peers: Sequence[str], plan: _Plan, root: str) -> Samples:
    procs: dict[str, PeerProcess] = {}
    samples: Samples = {peer: {"chain": [], "fan": [], "loop": []} for peer in peers}
    try:
        for peer in peers:  # all start at once; nothing is timed until all are ready
            data_dir = os.path.join(root, f"{peer}-warm")
            os.makedirs(data_dir)
            procs[peer] = PeerProcess(peer, data_dir)
        for peer in list(procs):
            try:
                procs[peer].wait_ready()
            except PeerError as exc:
                _say(f"{NAMES[peer]} skipped: did not start: {exc}")
                procs.pop(peer).close()
        # Prefect's loop would be its chain again (a flow calling tasks): not run twice.
        ops = {peer: ["chain", "fan"] + (["loop"] if peer != "prefect" else []) for peer in procs}
        # Warm-up: one run of the very work that is timed (each peer builds and
        # caches its graph, flow or workflow per size; first-use costs are not timed).
        for peer, proc in procs.items():
            for op in list(ops[peer]):
                try:
                    proc.request(op, plan.n)
                except ImportError as exc:
                    _say(f"{NAMES[peer]} {op} skipped: {exc}")
                    ops[peer].remove(op)
        for r in range(max(plan.rounds, plan.prefect_rounds)):
            for peer in _rotated(list(procs), r):
                if r >= plan.count(peer, "rounds"):
                    continue
                for op in ops[peer]:
                    samples[peer][op].append(procs[peer].request(op, plan.n) / plan.n)
    finally:
        for proc in procs.values():
            proc.close()
    return samples


def _cold(peers: Sequence[str], plan: _Plan, root: str) -> dict[str, list[float]]:
    scripts = {peer: _Script(peer, root) for peer in peers}
    walls: dict[str, list[float]] = {peer: [] for peer in peers}
    for peer in peers:
        if plan.count(peer, "cold") == 0:
            _say(f"{NAMES[peer]} cold start skipped in --quick (about 20 s per process)")
            continue
        _, code, _ = scripts[peer].run(uuid.uuid4().hex, 1)  # creates its database
        if code != 0:
            _say(f"{NAMES[peer]} cold start failed (exit {code}): {scripts[peer].tail()}")
            walls[peer] = [float("nan")]
    for r in range(max(plan.cold, plan.prefect_cold)):
        for peer in _rotated(peers, r):
            if r < plan.count(peer, "cold") and walls[peer] != [float("nan")]:
                wall, code, _ = scripts[peer].run(uuid.uuid4().hex, 1)
                if code == 0:
                    walls[peer].append(wall)
    return {peer: w for peer, w in walls.items() if w and w != [float("nan")]}


KillSamples = dict[str, list[_KillResult]]


def _kills(peers: Sequence[str], plan: _Plan, root: str) -> KillSamples:
    variants: list[tuple[str, str]] = [(peer, "sync") for peer in peers]
    if "langgraph" in peers:
        variants.append(("langgraph", "async"))
    scripts = {v: _Script(v[0], root, v[1]) for v in variants}
    results: KillSamples = {}
    for peer in peers:
        if plan.count(peer, "kills") == 0:
            _say(f"{NAMES[peer]} kill test skipped in --quick (about 20 s per process)")
    for r in range(max(plan.kills, plan.prefect_kills)):
        due = [v for v in variants if r < plan.count(v[0], "kills")]
        for peer, durability in _rotated(due, r):
            label = peer if durability == "sync" else f"{peer}-async"
            try:
                results.setdefault(label, []).append(_kill_test(scripts[(peer, durability)]))
            except PeerError as exc:
                _say(f"{label} kill test failed: {exc}")
    return results


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


def _figures(peers: Sequence[str], plan: _Plan, per_step: Samples,
             cold: dict[str, list[float]], kills: KillSamples) -> list[Figure]:
    figures: list[Figure] = []
    others = [p for p in peers if p != "ours"]

    def row(name: str, ours: float, peer: str, base: float, unit: str,
            target: float | None, note: str = "") -> None:
        figures.append(Figure(SUBJECT, name, ours, base, unit,
                              f"{NAMES.get(peer, peer)}", "lower", target,
                              note=note or DURABILITY.get(peer, "")))

    titles = {"chain": f"chain of {plan.n} no-op steps",
              "fan": f"fan-out of {plan.n} (+ join)",
              "loop": f"code-first loop of {plan.n} calls"}
    for op, title in titles.items():
        mine = per_step.get("ours", {}).get(op)
        if not mine:
            values = ", ".join(f"{NAMES[p]} {_median(per_step[p][op]) * 1e3:.3g} ms"
                               for p in others if per_step.get(p, {}).get(op))
            _say(f"{title}: ours not measured; peers per step: {values or 'none'}")
            continue
        for peer in others:
            theirs = per_step.get(peer, {}).get(op)
            if theirs:
                row(f"{title}, vs {NAMES[peer]}", _median(mine) * 1e3, peer,
                    _median(theirs) * 1e3, "ms/step", TARGET if peer in TARGETED else None)
    if "ours" in cold:
        for peer in others:
            if peer in cold:
                row(f"cold start, 1-step workflow process, vs {NAMES[peer]}",
                    _median(cold["ours"]), peer, _median(cold[peer]), "s", None,
                    note=f"median of {len(cold[peer])} fresh processes")
    mine_kill = kills.get("ours")
    if mine_kill:
        labels = [p for p in others if p in kills]
        if "langgraph-async" in kills:
            labels.append("langgraph-async")
        for label in labels:
            peer = label.split("-")[0]
            shown = NAMES[peer] + (' durability="async" (default)' if "async" in label else "")
            theirs_kill = kills[label]
            note = (f"steps re-run per kill: {[k.rerun for k in theirs_kill]}; resume process "
                    f"{_median([k.resume_wall for k in theirs_kill]):.2f} s")
            figures.append(Figure(
                SUBJECT, f"steps re-run after SIGKILL after step 10 of 20, vs {shown}",
                max(k.rerun for k in mine_kill), max(k.rerun for k in theirs_kill), "steps",
                shown, "lower", None, note=note))
            figures.append(Figure(
                SUBJECT, f"resume after SIGKILL, in-process, vs {shown}",
                _median([k.resume_seconds for k in mine_kill]) * 1e3,
                _median([k.resume_seconds for k in theirs_kill]) * 1e3, "ms", shown, "lower",
                None, note=note, extra={
                    "ours_process_s": _median([k.resume_wall for k in mine_kill]),
                    "peer_process_s": _median([k.resume_wall for k in theirs_kill])}))
    return figures


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        sys.exit(_serve(sys.argv[2], sys.argv[3]))
    main(run)
