"""`zixir runs show | logs | output`, and the true status that `runs list` shows.

The command line's view of `zixir_actors.workflow._history`: what a person
reads about a run after the fact (inputs, outputs, each step with its
times, errors and tracebacks, what a parked run waits for, why an
interrupted one stopped), its log lines, and its outputs as JSON or pickle.
"""

from __future__ import annotations

import json
import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zixir_actors._console import fmt_time, shorten, table

__all__ = ["FOLLOW_POLL", "list_states", "show", "show_logs", "show_output"]

FOLLOW_POLL = 0.2
"""Seconds between two reads of the store by ``runs logs --follow``."""
_TEXT_LIMIT = 200  # characters of a value that the text view of `runs show` prints
_DONE = frozenset({"succeeded", "failed", "cancelled", "timed_out", "interrupted", "corrupt"})


def _cli_error(message: str) -> Exception:
    """A `runs` command that cannot do what was asked (`CliError`: printed, status 2)."""
    from zixir_actors.cli import CliError

    return CliError(message)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def list_states(store: Any, runs: list[Any]) -> dict[str, Any]:
    """The true `RunState` of each run (one read of the lease records)."""
    from zixir_actors.workflow._history import run_state

    runtimes = store.runtimes()
    return {r.run_id: run_state(r, runtimes) for r in runs}


def note(record: Any, state: Any) -> str:
    """What `runs list` says beside a status: what a parked run waits for, why a run
    was interrupted, or its error."""
    from zixir_actors.workflow._durable import describe_waiting

    if state.status == "parked":
        return "waiting for " + describe_waiting(record.waiting)
    if state.status == "interrupted":
        return f"{state.reason or 'interrupted'} ({fmt_time(state.since)})"
    return record.error or ""


# -- runs show ------------------------------------------------------------------------


def show(store: Any, run_id: str, *, as_json: bool) -> int:
    """`runs show RUN_ID [--json]`."""
    from zixir_actors.workflow._history import run_detail

    detail = run_detail(store, run_id, limit=None if as_json else _TEXT_LIMIT)
    if as_json:
        _print_json(detail)
        return 0
    _show_text(detail)
    return 0


def _value(value: Any) -> str:
    if isinstance(value, dict) and value.get("cut") is True and "head" in value:
        return f"{value['head']}... ({_size(value['bytes'])} in all)"
    return json.dumps(value, default=str)


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}s"


def _show_text(d: dict[str, Any]) -> None:
    from zixir_actors.workflow._durable import describe_waiting

    status = d["status"]
    head = f"run {d['run_id']} of {d['workflow']} ({d['kind']}): {status}"
    print(head)
    if d["interrupted"] is not None:
        print(f"interrupted {fmt_time(d['interrupted']['at'])}: {d['interrupted']['reason']}"
              "; continue it with `zixir runs resume`")
    elif d["error"]:
        print(f"error: {d['error']}")
    if status == "parked" and d["waiting"]:
        print(f"waiting for {describe_waiting(d['waiting'])}")
    print(f"created {fmt_time(d['created_at'])}, updated {fmt_time(d['updated_at'])}"
          + (f", owner {d['owner']}" if d["owner"] else ""))
    print("\ninputs:")
    for key, value in d["inputs"].items():
        print(f"  {key} = {_value(value)}")
    if not d["inputs"]:
        print("  (none)")
    if d["steps"]:
        print()
        print(table([(s["name"], s["status"], "" if s["attempts"] is None else s["attempts"],
                      fmt_time(s["started_at"]), fmt_time(s["finished_at"]),
                      _seconds(s["elapsed"]), _seconds(s["duration"]),
                      shorten(s["error"] or "", 50)) for s in d["steps"]],
                    ("step", "status", "attempts", "started", "ended", "elapsed", "working",
                     "error")))
    other = [c for c in d["calls"] if c["kind"] not in ("step",)]
    if other:
        print("\nother calls:")
        for c in other:
            what = {k: v for k, v in c.items() if k not in ("position", "label", "kind", "name")}
            print(f"  {c['label']:<16} {c['kind']:<7} "
                  + ", ".join(f"{k}={_value(v)}" for k, v in what.items()))
    for s in d["steps"]:
        if s["traceback"]:
            print(f"\nstep {s['name']} failed after {s['attempts']} attempt(s)"
                  + (f" (dead letter {s['dead_letter']})" if s["dead_letter"] else "") + ":")
            print(s["traceback"].rstrip())
    if d["kind"] == "code-first":
        print(f"\noutput: {_value(d['output'])}")
    elif d["outputs"]:
        print("\noutputs:")
        for key, value in d["outputs"].items():
            print(f"  {key} = {_value(value)}")
    logs = d["logs"]
    print(f"\nlogs: {logs['stored']} line(s)"
          + (f", {logs['dropped']} older dropped" if logs["dropped"] else "")
          + f" (zixir runs logs {d['run_id']})")


# -- runs logs -------------------------------------------------------------------------


def _line_json(line: Any) -> str:
    return json.dumps({"seq": line.seq, "time": line.time, "level": line.level,
                       "step": line.step, "attempt": line.attempt, "message": line.message,
                       **({"fields": dict(line.fields)} if line.fields else {})},
                      default=str)


def _line_text(line: Any) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(line.time))
    when += f".{int(line.time % 1 * 1000):03d}"
    where = ""
    if line.step is not None:
        where = line.step + ("" if line.attempt is None else f" (attempt {line.attempt})")
    fields = " ".join(f"{k}={_field(v)}" for k, v in (line.fields or {}).items())
    return f"{when} {line.level:<8} {where + ': ' if where else ''}{line.message}" \
        + (f"  {fields}" if fields else "")


def _field(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def show_logs(open_store: Callable[[], Any], run_id: str, *, step: str | None, follow: bool,
              as_json: bool) -> int:
    """`runs logs RUN_ID [--step S] [--follow] [--json]`; `open_store()` is a context
    manager giving the store (each read is a fresh LMDB snapshot: `--follow` sees the
    lines another process commits)."""
    from zixir_actors.workflow._history import run_state

    with open_store() as store:
        store.get_run(run_id)
        first, _ = store.run_log_bounds(run_id)
        if first and not as_json:
            print(f"({first} older line(s) of this run were dropped to keep it bounded)")
        cursor = None
        while True:
            for line in store.run_logs(run_id, after=cursor, step=step):
                print(_line_json(line) if as_json else _line_text(line), flush=True)
                cursor = line.seq
            if cursor is None:
                _, end = store.run_log_bounds(run_id)
                cursor = end - 1 if end else None
            if not follow:
                return 0
            state = run_state(store.get_run(run_id), store.runtimes())
            if state.status in _DONE:
                for line in store.run_logs(run_id, after=cursor, step=step):
                    print(_line_json(line) if as_json else _line_text(line), flush=True)
                return 0
            time.sleep(FOLLOW_POLL)


# -- runs output ------------------------------------------------------------------------


def show_output(store: Any, run_id: str, step: str | None, *, pickle_to: str | None) -> int:
    """`runs output RUN_ID [STEP] [--pickle FILE]`."""
    value = output_of(store, run_id, step)
    if pickle_to is not None:
        from zixir_actors.errors import UnserializableError

        try:
            data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            import dill

            try:
                data = dill.dumps(value, recurse=True)
            except Exception as exc:
                raise UnserializableError(value, exc) from exc
        Path(pickle_to).write_bytes(data)
        print(f"wrote {len(data)} bytes to {pickle_to}")
        return 0
    try:
        print(json.dumps(value, indent=2, allow_nan=False))
    except (TypeError, ValueError):
        what = f"step {step!r}" if step else "the run"
        raise _cli_error(f"the output of {what} is not JSON ({type(value).__name__}); "
                     "write it with --pickle FILE") from None
    return 0


def output_of(store: Any, run_id: str, step: str | None) -> Any:
    """The stored output of a run (all its steps' outputs for a DAG run, the body's
    result for a code-first run), or of one of its steps.

    Raises:
        RunNotFoundError: no such run.
        CliError: no such step, or no output stored yet.
    """
    from zixir_actors.workflow._durable import RESULT_POS, labels

    record = store.get_run(run_id)
    calls = store.calls(run_id)
    if not calls:
        checkpoints = store.steps(run_id)
        if step is None:
            return {name: c.output for name, c in checkpoints.items()}
        if step not in checkpoints:
            known = ", ".join(checkpoints) or "none"
            raise _cli_error(f"run {run_id!r} has no output of step {step!r} "
                         f"(steps with an output: {known})")
        return checkpoints[step].output
    found = dict(calls)
    if step is None:
        outcome = found.get(RESULT_POS)
        if outcome is None:
            raise _cli_error(f"run {run_id!r} has no output yet (it is {record.status})")
        return outcome[2]
    positions = labels(calls)
    label = step if "#" in step else f"{step}#1"
    rec = found.get(positions.get(label, -1))
    if rec is None or rec[0] not in ("step", "child"):
        known = ", ".join(lb for lb, p in positions.items() if found[p][0] in ("step", "child"))
        raise _cli_error(f"run {run_id!r} has no output of step {step!r} "
                     f"(steps with an output: {known or 'none'})")
    return rec[2]
