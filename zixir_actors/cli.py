"""The `zixir` command line (also `python -m zixir_actors`).

Every command works on one data directory (``--data-dir``, else
``$ZIXIR_DATA_DIR``, else ``./.zixir``). Errors print one line and exit with
status 2 (bad input, unknown run, missing file) or 1 (anything unexpected);
``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from zixir_actors._console import fmt_time as _fmt_time
from zixir_actors._console import shorten, table
from zixir_actors._console import wait_with_progress as _progress
from zixir_actors.errors import ZixirError

__all__ = ["CliError", "main"]

SOURCES_FILE = "cli_sources.json"
"""Where `zixir run` remembers which file defined each run, for `runs resume`."""


class CliError(ZixirError):
    """A command-line mistake: exits with status 2 and this one-line message."""


# -- helpers ---------------------------------------------------------------------


def _data_dir(args: argparse.Namespace) -> Path:
    from zixir_actors.runtime import resolve_data_dir

    return resolve_data_dir(args.data_dir)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_inputs(pairs: Sequence[str]) -> dict[str, Any]:
    """``["n=3", "name=ada"]`` -> ``{"n": 3, "name": "ada"}``; values that are JSON are parsed."""
    inputs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CliError(f"--input expects KEY=VALUE, got {pair!r}")
        inputs[key.strip()] = _parse_value(value)
    return inputs


def load_workflow(target: str) -> tuple[Any, Path, str]:
    """Load ``FILE[:WORKFLOW]``; returns (workflow, file, workflow name).

    Without ``:WORKFLOW`` the file must define exactly one `Workflow`.
    """
    from zixir_actors.workflow import Workflow

    file_part, _, wanted = target.partition(":") if not Path(target).exists() else (target, "", "")
    path = Path(file_part).expanduser().resolve()
    if not path.is_file():
        raise CliError(f"no such file: {file_part}")
    module_name = _module_name(path)
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise CliError(f"cannot load {file_part} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    # The file's directory stays on sys.path, which sandbox workers inherit: they
    # import the module by its name to unpickle its sandboxed steps.
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise CliError(f"{file_part} failed to import: {type(exc).__name__}: {exc}") from exc
    found = {name: value for name, value in vars(module).items() if isinstance(value, Workflow)}
    if not found:
        raise CliError(f"{file_part} defines no workflow")
    if wanted:
        for var, wf in found.items():
            if wanted in (var, wf.name):
                return wf, path, wf.name
        known = ", ".join(sorted({wf.name for wf in found.values()})) or "none"
        raise CliError(f"no workflow {wanted!r} in {file_part} (found: {known})")
    if len(found) != 1:
        names = ", ".join(sorted(wf.name for wf in found.values())) or "none"
        raise CliError(f"{file_part} defines {len(found)} workflows ({names}); "
                       "say which with FILE:WORKFLOW")
    wf = next(iter(found.values()))
    return wf, path, wf.name


def _module_name(path: Path) -> str:
    """The file's stem when it imports as nothing else (so workers can import it too)."""
    stem = path.stem
    if stem.isidentifier() and stem not in sys.modules:
        try:
            found = importlib.util.find_spec(stem)
            # Free, or this very file (its directory is already on sys.path).
            taken = found is not None and Path(found.origin or "").resolve() != path
        except (ImportError, ValueError):
            taken = True
        if not taken:
            return stem
    return f"_zixir_user_{abs(hash(str(path)))}"


def accepted_inputs(wf: Any) -> set[str] | None:
    """The input names `wf` takes, or None when it takes any (a ``**kwargs`` parameter)."""
    import inspect

    # A code-first body is body(ctx, **inputs); a step's parameters are its
    # dependencies' outputs, `ctx`, and inputs.
    functions = [(wf.body, 1, ())] if getattr(wf, "body", None) is not None else \
        [(step.fn, 0, step.depends_on) for step in wf.steps.values()]
    names: set[str] = set()
    for fn, skip, depends_on in functions:
        try:
            params = list(inspect.signature(fn).parameters.values())[skip:]
        except (TypeError, ValueError):
            return None
        for p in params:
            if p.kind is p.VAR_KEYWORD:
                return None
            if p.kind is not p.VAR_POSITIONAL and p.name != "ctx" and p.name not in depends_on:
                names.add(p.name)
    return names


def check_inputs(wf: Any, inputs: dict[str, Any]) -> None:
    """Refuse an input that no step (or body) of `wf` takes: it is a typo, never used.

    Raises:
        CliError: naming the first unknown input and the inputs the workflow takes.
    """
    accepted = accepted_inputs(wf)
    if accepted is None:
        return
    for key in inputs:
        if key not in accepted:
            takes = ", ".join(sorted(accepted)) or "no inputs"
            raise CliError(f"workflow {wf.name!r} takes no input {key!r} (it takes: {takes})")


def _remember_source(data_dir: Path, run_id: str, target: str) -> None:
    path = data_dir / SOURCES_FILE
    try:
        known = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, json.JSONDecodeError):
        known = {}
    known[run_id] = target
    path.write_text(json.dumps(known, indent=1))


def _source_of(data_dir: Path, run_id: str) -> str | None:
    path = data_dir / SOURCES_FILE
    try:
        return json.loads(path.read_text()).get(run_id) if path.exists() else None
    except (OSError, json.JSONDecodeError):
        return None


class _NoStore:
    """What a data directory without a store holds: nothing (read-only commands)."""

    def list_runs(self, **_: Any) -> list[Any]:
        return []

    def get_run(self, run_id: str) -> Any:
        from zixir_actors.errors import RunNotFoundError

        raise RunNotFoundError(run_id)

    def delete_run(self, run_id: str, **_: Any) -> bool:
        return False

    def dead_letters(self, **_: Any) -> list[Any]:
        return []

    def runtimes(self) -> list[Any]:
        return []

    def get_dead_letter(self, letter_id: str) -> Any:
        from zixir_actors.errors import DeadLetterNotFoundError

        raise DeadLetterNotFoundError(letter_id)


@contextmanager
def _existing_store(args: argparse.Namespace) -> Iterator[Any]:
    """The data directory's store, or a `_NoStore` if it has none: reading never
    creates a data directory (or a store in an empty one)."""
    from zixir_actors.checkpoint import open_store

    data_dir = _data_dir(args)
    if not (data_dir / "data.mdb").is_file():
        yield _NoStore()
        return
    with open_store(data_dir) as store:
        yield store


DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """``"90s"``, ``"15m"``, ``"1h"``, ``"2d"`` (or plain seconds) -> seconds.

    Raises:
        CliError: not a duration.
    """
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if match is None:
        raise CliError(f"--since expects a duration like 90s, 15m, 1h or 2d, got {text!r}")
    return float(match.group(1)) * DURATION_UNITS[match.group(2)]


@contextmanager
def _runtime(args: argparse.Namespace, **options: Any) -> Any:
    import zixir_actors

    # The CLI resumes runs only when asked (`runs resume`, `run --run-id`).
    options.setdefault("resume_runs", False)
    runtime = zixir_actors.start(data_dir=_data_dir(args), **options)
    previous: dict[signal.Signals, Any] = {}

    def graceful(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, graceful)
    try:
        yield runtime
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        runtime.stop()


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def run_summary(result: Any) -> dict[str, Any]:
    """A JSON-friendly summary of a `RunResult`."""
    return {
        "run_id": result.run_id, "workflow": result.workflow, "status": result.status,
        "duration": round(result.duration, 4),
        "steps": {name: {"status": s.status, "attempts": s.attempts,
                         "duration": round(s.duration, 4),
                         "error": None if s.error is None else str(s.error),
                         "dead_letter": s.dead_letter}
                  for name, s in result.steps.items()},
        "outputs": {k: v if isinstance(v, (int, float, str, bool, type(None))) else repr(v)[:200]
                    for k, v in result.outputs.items()},
    }


def _print_run(result: Any, order: Sequence[str] = ()) -> None:
    """The run's steps in the workflow's order (`order`), then any others, and its status."""
    names = [n for n in order if n in result.steps]
    names += [n for n in result.steps if n not in names]
    rows = [(name, s.status, s.attempts, f"{s.duration:.3f}s",
             "" if s.error is None else shorten(str(s.error), 60))
            for name, s in ((n, result.steps[n]) for n in names)]
    print(table(rows, ("step", "status", "attempts", "time", "error")))
    print(f"\nrun {result.run_id}: {result.status} in {result.duration:.2f}s")


# -- commands ----------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from zixir_actors.checkpoint import connect

    wf, path, name = load_workflow(args.target)
    inputs = parse_inputs(args.input)
    check_inputs(wf, inputs)
    with _runtime(args):
        store = connect()
        handle = wf.start(inputs, run_id=args.run_id, max_concurrency=args.max_concurrency)
        # Absolute, so `runs resume` works from any directory.
        _remember_source(_data_dir(args), handle.run_id, f"{path}:{name}")
        if wf.body is not None:
            return _settle(handle, wf, quiet=args.json, as_json=args.json)
        result = _progress(handle, store, len(wf.order), quiet=args.json)
    if args.json:
        _print_json(run_summary(result))
    else:
        _print_run(result, wf.order)
    return 0 if result.ok else 1


def _workflow_for_run(args: argparse.Namespace, run_id: str) -> Any:
    target = getattr(args, "file", None) or _source_of(_data_dir(args), run_id)
    if target is None:
        raise CliError(f"run {run_id!r} was not started by `zixir run`; "
                       "pass --file FILE[:WORKFLOW] that defines its workflow")
    return load_workflow(target)[0]


def cmd_runs(args: argparse.Namespace) -> int:
    if args.action == "send":
        return _send_event(args)
    if args.action == "watch":
        return _watch(args)
    if args.action == "resume":
        if not args.run_id:
            raise CliError("runs resume needs a RUN_ID")
        with _existing_store(args) as store:
            store.get_run(args.run_id)   # an unknown run is "no stored run", as in `show`
        wf = _workflow_for_run(args, args.run_id)
        with _runtime(args):
            plan = wf.plan(args.run_id, from_step=args.from_step)
            if not args.json:
                print(plan)
            result = wf.resume(args.run_id, from_step=args.from_step)
        _print_json(run_summary(result)) if args.json else _print_run(result, wf.order)
        return 0 if result.ok else 1
    if args.action == "logs":
        from zixir_actors._runs_cli import show_logs

        if not args.run_id:
            raise CliError("runs logs needs a RUN_ID")
        return show_logs(lambda: _existing_store(args), args.run_id, step=args.step,
                         follow=args.follow, as_json=args.json)
    with _existing_store(args) as store:
        if args.action == "list":
            from zixir_actors._runs_cli import list_states, note

            since = None if args.since is None else time.time() - parse_duration(args.since)
            # The status shown is the truth: "interrupted" for a run stored as running
            # that no live process owns (see zixir_actors.workflow._history.run_state).
            stored = store.list_runs()
            states = list_states(store, stored)
            # Corrupt headers are listed (status "corrupt") whatever the filters say,
            # so that they can be found and deleted.
            runs = [r for r in stored if r.status == "corrupt" or (
                args.workflow in (None, r.workflow)
                and args.status in (None, states[r.run_id].status)
                and (since is None or r.created_at >= since))]
            runs.sort(key=lambda r: (r.created_at, r.run_id), reverse=True)   # newest first
            if args.json:
                _print_json([{"run_id": r.run_id, "workflow": r.workflow,
                              "status": states[r.run_id].status,
                              "created_at": r.created_at, "updated_at": r.updated_at,
                              "waiting": r.waiting,
                              "interrupted": None if states[r.run_id].since is None else {
                                  "at": states[r.run_id].since,
                                  "reason": states[r.run_id].reason},
                              **({"error": r.error} if r.status == "corrupt" else {})}
                             for r in runs])
            elif not runs:
                print("no runs")
            else:
                print(table([(r.run_id, r.workflow, states[r.run_id].status,
                              _fmt_time(r.created_at), _fmt_time(r.updated_at),
                              shorten(note(r, states[r.run_id]), 60)) for r in runs],
                            ("run", "workflow", "status", "created", "updated", "note")))
                corrupt = [r for r in runs if r.status == "corrupt"]
                for r in corrupt:
                    print(f"\ncorrupt run record {r.run_id}: {r.error}; "
                          f"remove it with `zixir runs delete {r.run_id}`")
            return 0
        if not args.run_id:
            raise CliError(f"runs {args.action} needs a RUN_ID")
        if args.action == "show":
            from zixir_actors._runs_cli import show

            return show(store, args.run_id, as_json=args.json)
        if args.action == "output":
            from zixir_actors._runs_cli import show_output

            return show_output(store, args.run_id, args.event, pickle_to=args.pickle)
        if args.action == "delete":
            if not store.delete_run(args.run_id):
                from zixir_actors.errors import RunNotFoundError

                raise RunNotFoundError(args.run_id)
            print(f"deleted run {args.run_id}")
            return 0
    raise CliError(f"unknown runs action {args.action!r}")


def _send_event(args: argparse.Namespace) -> int:
    """`runs send RUN_ID EVENT [--data JSON]`: commit the event, then continue the run
    here if it waits for it and its workflow file is known."""
    from zixir_actors.checkpoint import open_store
    from zixir_actors.workflow import send

    if not args.run_id or not args.event:
        raise CliError("runs send needs a RUN_ID and an EVENT")
    try:
        payload = None if args.data is None else json.loads(args.data)
    except json.JSONDecodeError as exc:
        raise CliError(f"--data is not valid JSON: {exc}") from None
    data_dir = _data_dir(args)
    if not data_dir.exists():
        from zixir_actors.errors import RunNotFoundError

        raise RunNotFoundError(args.run_id)
    with open_store(data_dir) as store:
        send(args.run_id, args.event, payload, store=store)
        record = store.get_run(args.run_id)
    print(f"sent {args.event!r} to run {args.run_id}")
    waiting = record.waiting or {}
    if record.status != "parked" or waiting.get("kind") != "event" \
            or waiting.get("event") != args.event:
        return 0
    target = getattr(args, "file", None) or _source_of(data_dir, args.run_id)
    if target is None:
        print(f"run {args.run_id} continues when a process that defines workflow "
              f"{record.workflow!r} resumes it (zixir runs resume {args.run_id} --file FILE)")
        return 0
    wf = load_workflow(target)[0]
    with _runtime(args):
        handle = wf.start(dict(record.inputs), run_id=args.run_id)
        return _settle(handle, wf, quiet=args.json, as_json=args.json)


def _settle(handle: Any, wf: Any, *, quiet: bool, as_json: bool) -> int:
    """Wait until a code-first run ends or parks again, and say which."""
    from zixir_actors.workflow._durable import describe_waiting

    status = handle.wait()
    if status == "parked":
        from zixir_actors.checkpoint import connect

        record = connect().get_run(handle.run_id)
        if as_json:
            _print_json({"run_id": handle.run_id, "workflow": wf.name, "status": "parked",
                         "waiting": record.waiting})
        else:
            print(f"run {handle.run_id}: parked, waiting for "
                  f"{describe_waiting(record.waiting)}")
            if (record.waiting or {}).get("kind") == "event":
                print(f"send it with: zixir runs send {handle.run_id} "
                      f"{record.waiting['event']} --data JSON")  # type: ignore[index]
        return 0
    result = handle.result()
    if as_json:
        _print_json(run_summary(result))
    else:
        _print_run(result, wf.order)
        if result.output is not None and wf.body is not None:
            print(f"output: {json.dumps(result.output, default=repr)[:2000]}")
    return 0 if result.ok else 1


def _watch(args: argparse.Namespace) -> int:
    """`runs watch RUN_ID`: print a run's progress items as they come, until it ends."""
    from zixir_actors.checkpoint import open_store
    from zixir_actors.workflow import ProgressStream

    if not args.run_id:
        raise CliError("runs watch needs a RUN_ID")
    with open_store(_data_dir(args)) as store:
        store.get_run(args.run_id)
        for item in ProgressStream(args.run_id, store):
            if args.json:
                _print_json({"seq": item.seq, "time": item.time, "kind": item.kind,
                             "step": item.step, "value": item.value})
            elif item.kind == "emit":
                text = item.value if isinstance(item.value, str) else \
                    json.dumps(item.value, default=repr) + "\n"
                print(text, end="", flush=True)
            else:
                where = f" {item.step}" if item.step else ""
                print(f"\n[{item.kind}{where}] {item.value}", flush=True)
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    from zixir_actors.workflow import DeadLetters

    if args.action == "retry":
        if not args.letter_id:
            raise CliError("dlq retry needs a LETTER_ID")
        with _existing_store(args) as store:
            letter = DeadLetters(store).get(args.letter_id)
        wf = _workflow_for_run(args, letter.run_id)
        with _runtime(args):
            result = DeadLetters().retry(args.letter_id, workflow=wf)
        _print_json(run_summary(result)) if args.json else _print_run(result, wf.order)
        return 0 if result.ok else 1
    with _existing_store(args) as store:
        letters = DeadLetters(store)
        if args.action == "list":
            found = letters.list(workflow=args.workflow)
            if args.json:
                _print_json([{"id": d.id, "run_id": d.run_id, "workflow": d.workflow,
                              "step": d.step, "error": f"{d.error_type}: {d.error_message}",
                              "attempts": len(d.attempts)} for d in found])
            elif not found:
                print("no dead letters")
            else:
                print(table([(d.id, d.workflow, d.run_id, d.step, len(d.attempts),
                              shorten(f"{d.error_type}: {d.error_message}", 60))
                             for d in found],
                            ("letter", "workflow", "run", "step", "attempts", "error")))
            return 0
        if not args.letter_id:
            raise CliError(f"dlq {args.action} needs a LETTER_ID")
        if args.action == "show":
            d = letters.get(args.letter_id)
            if args.json:
                _print_json({"id": d.id, "run_id": d.run_id, "workflow": d.workflow,
                             "step": d.step, "error_type": d.error_type,
                             "error_message": d.error_message, "traceback": d.traceback,
                             "inputs": {k: repr(v) for k, v in d.inputs.items()},
                             "attempts": [dataclasses.asdict(a) for a in d.attempts]})
                return 0
            print(f"dead letter {d.id}: step {d.step} of run {d.run_id} ({d.workflow})")
            print(f"error: {d.error_type}: {d.error_message}")
            print(table([(a.attempt, f"{a.duration:.3f}s", a.error_type,
                          shorten(a.error_message, 50),
                          "yes" if a.timed_out else "") for a in d.attempts],
                        ("attempt", "time", "error", "message", "timed out")))
            if d.traceback:
                print("\n" + d.traceback.rstrip())
            return 0
        if args.action == "discard":
            letters.discard(args.letter_id)
            print(f"discarded {args.letter_id}")
            return 0
    raise CliError(f"unknown dlq action {args.action!r}")


def cmd_store(args: argparse.Namespace) -> int:
    from zixir_actors.checkpoint import backup_store, check_store

    if args.action == "check":
        report = check_store(_data_dir(args))
        if args.json:
            _print_json({"data_dir": report.data_dir, "ok": report.ok,
                         "records": dict(report.records), "problems": list(report.problems)})
        else:
            counts = ", ".join(f"{n} {db}" for db, n in sorted(report.records.items()))
            print(f"store {report.data_dir}: {counts or 'no records read'}")
            for problem in report.problems:
                print(f"  corrupt: {problem}")
            print("ok" if report.ok else f"{len(report.problems)} problem(s) found")
        return 0 if report.ok else 1
    if not args.dest:
        raise CliError("store backup needs a DEST directory")
    out = backup_store(_data_dir(args), args.dest)
    size = Path(out).stat().st_size
    if args.json:
        _print_json({"backup": out, "bytes": size})
    else:
        print(f"backed up {_data_dir(args)} to {out} ({size} bytes, compacted)")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from zixir_actors.cache import stored_caches

    caches = {c.name: c for c in stored_caches(_data_dir(args))}   # read-only
    if args.action == "list":
        rows = [{"name": c.name, "persistent": c.persistent, "entries": c.entries,
                 "bytes": c.bytes, "hits": c.hits, "misses": c.misses,
                 "updated_at": c.updated_at} for c in caches.values()]
        if args.json:
            _print_json(rows)
        elif not rows:
            print("no caches")
        else:
            print(table([(r["name"], "yes" if r["persistent"] else "no", r["entries"], r["bytes"],
                          r["hits"], r["misses"]) for r in rows],
                        ("cache", "persistent", "entries", "bytes", "hits", "misses")))
        return 0
    if not args.name:
        raise CliError(f"cache {args.action} needs a NAME")
    found = caches.get(args.name)
    if found is None:
        raise CliError(f"no cache {args.name!r} in {_data_dir(args)}")
    if args.action == "stats":
        total = found.hits + found.misses
        data = {"name": found.name, "persistent": found.persistent, "size": found.entries,
                "bytes": found.bytes, "hits": found.hits, "misses": found.misses,
                "hit_ratio": round(found.hits / total, 4) if total else 0.0,
                "updated_at": found.updated_at}
        if args.json:
            _print_json(data)
        else:
            data["updated_at"] = _fmt_time(found.updated_at)
            print(table(list(data.items()), ("cache " + args.name, "value")))
        return 0
    if not found.persistent:
        raise CliError(f"cache {args.name!r} is memory-only: only the process running it "
                       "can clear it")
    from zixir_actors.cache import Cache

    with _runtime(args):
        cache = Cache.start(args.name, persist=True)
        try:
            removed = cache.clear()
        finally:
            cache.stop()
    print(f"cleared {removed} entries from cache {args.name}")
    return 0


def _rate_text(rate: Any) -> str:
    return "-" if rate is None else f"{rate[0]}/{rate[1]:g}s"


def _queue_row(found: Any) -> dict[str, Any]:
    c = found.config
    return {"queue": found.name, "depth": found.depth, "running": found.running,
            "oldest_wait": round(found.oldest_wait, 3), "concurrency": c.concurrency,
            "per_process": c.per_process, "rate": _rate_text(c.rate), "priority": c.priority}


def cmd_queues(args: argparse.Namespace) -> int:
    from zixir_actors.queue import queue_stats

    with _existing_store(args) as store:  # read-only, beside live runtimes
        found = [] if isinstance(store, _NoStore) else \
            queue_stats(store, waiting=args.action == "show")
    if args.action == "list":
        rows = [_queue_row(q) for q in found]
        if args.json:
            _print_json(rows)
        elif not rows:
            print("no queues")
        else:
            print(table([(r["queue"], r["depth"], r["running"], f"{r['oldest_wait']:.1f}s",
                          r["concurrency"] or "-", r["per_process"] or "-", r["rate"])
                         for r in rows],
                        ("queue", "depth", "running", "oldest wait", "concurrency",
                         "per process", "rate")))
        return 0
    if not args.name:
        raise CliError("queues show needs a NAME")
    match = [q for q in found if q.name == args.name]
    if not match:
        raise CliError(f"no queue {args.name!r} in {_data_dir(args)}")
    row = _queue_row(match[0])
    now = time.time()
    waiting = [{"run_id": run_id, "workflow": workflow, "waited": round(now - at, 3)}
               for run_id, workflow, at in match[0].waiting]
    if args.json:
        _print_json({**row, "waiting": waiting})
        return 0
    print(table([(k, "-" if v is None else v) for k, v in row.items()],
                ("queue " + args.name, "value")))
    if waiting:
        print(table([(w["run_id"], w["workflow"], f"{w['waited']:.1f}s") for w in waiting],
                    ("waiting run", "workflow", "waited")))
    return 0


def cmd_schedules(args: argparse.Namespace) -> int:
    from zixir_actors.schedule import (
        delete_schedule,
        pause_schedule,
        resume_schedule,
        schedules,
    )

    if args.action == "list":
        with _existing_store(args) as store:
            found = [] if isinstance(store, _NoStore) else schedules(store)
        rows: list[dict[str, Any]] = [{"name": s.name, "workflow": s.workflow, "cron": s.cron,
                 "timezone": s.timezone, "catch_up": s.catch_up,
                 "queue": None if s.queue is None else s.queue.name, "paused": s.paused,
                 "last_tick": s.last_tick, "next_tick": None if s.paused
                 else s.next_tick(max(time.time(), s.last_tick))} for s in found]
        if args.json:
            _print_json(rows)
        elif not rows:
            print("no schedules")
        else:
            print(table([(r["name"], r["workflow"], r["cron"], r["timezone"],
                          "paused" if r["paused"] else "active", _fmt_time(r["next_tick"]),
                          r["queue"] or "-") for r in rows],
                        ("schedule", "workflow", "cron", "timezone", "state", "next tick",
                         "queue")))
        return 0
    if not args.name:
        raise CliError(f"schedules {args.action} needs a NAME")
    if not (_data_dir(args) / "data.mdb").is_file():
        raise CliError(f"no schedule {args.name!r} in {_data_dir(args)}")
    change = {"pause": pause_schedule, "resume": resume_schedule,
              "delete": delete_schedule}[args.action]
    from zixir_actors.checkpoint import open_store

    with open_store(_data_dir(args)) as store:
        change(args.name, store=store)
    done = {"pause": "paused", "resume": "resumed", "delete": "deleted"}[args.action]
    if args.json:
        _print_json({"schedule": args.name, "action": done})
    else:
        print(f"{done} schedule {args.name}")
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    wf, _, _ = load_workflow(args.target)
    print(render_graph(wf, args.format))
    return 0


def render_graph(wf: Any, fmt: str) -> str:
    """The workflow's DAG as Mermaid (``flowchart TD``) or Graphviz DOT."""
    edges = [(dep, name) for name in wf.order for dep in wf.steps[name].depends_on]
    if fmt == "dot":
        lines = [f'digraph "{wf.name}" {{', "  rankdir=TB;"]
        lines += [f'  "{name}";' for name in wf.order]
        lines += [f'  "{a}" -> "{b}";' for a, b in edges]
        return "\n".join([*lines, "}"])
    ids = {name: f"s{i}" for i, name in enumerate(wf.order)}
    lines = ["flowchart TD"] + [f'  {ids[n]}["{n}"]' for n in wf.order]
    lines += [f"  {ids[a]} --> {ids[b]}" for a, b in edges]
    return "\n".join(lines)


def cmd_tree(args: argparse.Namespace) -> int:
    import tempfile

    from zixir_actors._runtimes import is_alive

    # The runtimes on the directory, each with its pid, lease and tree (each
    # runtime stores its tree with its lease).
    data_dir = _data_dir(args)
    if data_dir.exists():
        from zixir_actors.checkpoint import open_store

        with open_store(data_dir) as store:
            infos = store.runtimes()
        now = time.time()
        for info in sorted(infos, key=lambda i: i.started_at):
            state = (f"lease {info.expires_at() - now:.1f}s left" if is_alive(info, now)
                     else "dead (its runs go to a live runtime)")
            print(f"runtime {info.id} pid {info.pid} on {info.host}: {state}; "
                  f"workflows: {', '.join(info.workflows) or '-'}")
            for line in (info.tree or "").splitlines():
                print(f"  {line}")
        if infos:
            return 0
        print(f"no runtime on {data_dir}; the tree start() builds:")
    # The tree's shape does not depend on the data directory: build it in a
    # scratch one, so this read-only command creates nothing and works while
    # another process runs a runtime on the real one.
    with tempfile.TemporaryDirectory(prefix="zixir-tree-") as scratch:
        args = argparse.Namespace(**{**vars(args), "data_dir": scratch})
        with _runtime(args) as runtime:
            print(runtime.tree())
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    from zixir_actors._runtimes import StoreGauges
    from zixir_actors.checkpoint import connect
    from zixir_actors.observability import metrics

    with _runtime(args, metrics_port=args.port) as runtime:
        gauges = StoreGauges(connect())  # what every process on the directory adds up to
        metrics._before_collect_add(gauges)
        port = runtime.metrics_port
        print(f"serving http://127.0.0.1:{port}/metrics for {runtime.data_dir} (Ctrl-C stops)",
              flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait(args.duration)
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    import os

    from zixir_actors.dashboard import TOKEN_ENV

    token = args.token or os.environ.get(TOKEN_ENV) or None
    # A runtime of its own on the directory (shared with the services on it):
    # actions that run workflow code (resume, retry from the file `zixir run`
    # remembered) run under it, with its lease, like `zixir runs resume`.
    with _runtime(args, dashboard_port=args.port,
                  dashboard={"host": args.host, "token": token}) as runtime:
        port = runtime.dashboard_port
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(f"serving the dashboard of {runtime.data_dir} on http://{host}:{port}/"
              + (" (token required)" if token else "") + " (Ctrl-C stops)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait(args.duration)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    try:
        from benchmarks._harness import available
        from benchmarks._harness import main as bench_main
    except ImportError:   # a copy installed without its `benchmarks` package
        raise CliError("the benchmarks are not installed with this copy of zixir-actors "
                       "(reinstall it, or run python -m benchmarks in a checkout)") from None
    known = available()
    for subject in args.subjects:
        if subject not in known:
            raise CliError(f"no benchmark subject {subject!r} (known: {', '.join(known)})")
    argv = (["--quick"] if args.quick else []) + list(args.subjects)
    return bench_main(None, argv)


def cmd_demo(args: argparse.Namespace) -> int:
    from zixir_actors._demo import run_demo

    return run_demo(data_dir=args.data_dir, as_json=args.json)


# -- parser -------------------------------------------------------------------------

DATA_DIR_HELP = "state directory (default $ZIXIR_DATA_DIR or ./.zixir); before or after COMMAND"
TARGET_HELP = "a Python file that defines workflows, and which one if it defines several"


def build_parser() -> argparse.ArgumentParser:
    from zixir_actors import __version__

    parser = argparse.ArgumentParser(
        prog="zixir", description="OTP-style supervised workflows, sandboxes, streams and caches.")
    parser.add_argument("--version", action="version", version=f"zixir {__version__}",
                        help="print the version and exit")
    parser.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--log-level", default="WARNING", help="log level (default WARNING)")
    parser.add_argument("--log-json", action="store_true", help="logs as JSON lines on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[[argparse.Namespace], int], help_: str,
            json_flag: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(fn=fn)
        # Also after the command; SUPPRESS keeps a --data-dir given before it.
        p.add_argument("--data-dir", default=argparse.SUPPRESS, help=DATA_DIR_HELP)
        if json_flag:
            p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    add("demo", cmd_demo, "run the end-to-end showcase (offline, under 30 s)")
    p = add("run", cmd_run, "run a workflow defined in a Python file")
    p.add_argument("target", metavar="FILE[:WORKFLOW]", help=TARGET_HELP)
    p.add_argument("--input", action="append", default=[], metavar="KEY=VALUE",
                   help="an input of the workflow, repeatable; VALUE is parsed as JSON "
                        "(n=3 is a number, tags='[\"a\"]' a list) and kept as a string "
                        "when it is not JSON (name=ada); an input no step takes is an error")
    p.add_argument("--run-id", default=None,
                   help="the run's id (default a new random one); an existing run's id "
                        "continues that run")
    p.add_argument("--max-concurrency", type=int, default=None,
                   help="most steps running at once (default the workflow's)")
    p = add("runs", cmd_runs, "list, show, resume, delete, watch workflow runs, read their "
            "logs and outputs, or send an event to one")
    p.add_argument("action", choices=("list", "show", "logs", "output", "resume", "delete",
                                      "send", "watch"),
                   help="what to do")
    p.add_argument("run_id", nargs="?", help="the run (all but list)")
    p.add_argument("event", nargs="?", metavar="EVENT|STEP",
                   help="(send) the event's name, e.g. approval; (output) the step whose "
                        "output to print (default the run's), e.g. fetch or llm#2")
    p.add_argument("--step", default=None,
                   help="(logs) only the lines of this step (a name, or a call label llm#2)")
    p.add_argument("--follow", action="store_true",
                   help="(logs) keep printing new lines until the run ends")
    p.add_argument("--pickle", default=None, metavar="FILE",
                   help="(output) write the value pickled to FILE instead of printing JSON")
    p.add_argument("--data", default=None, metavar="JSON",
                   help="(send) the event's payload, parsed as JSON (default null)")
    p.add_argument("--workflow", default=None, help="only runs of this workflow (list)")
    p.add_argument("--status", default=None,
                   help="only runs with this status, e.g. failed, running or interrupted "
                        "(list)")
    p.add_argument("--since", default=None, metavar="DURATION",
                   help="only runs created in the last DURATION: 90s, 15m, 1h, 2d (list)")
    p.add_argument("--file", default=None, metavar="FILE[:WORKFLOW]",
                   help="(resume) the file that defines the run's workflow, if it moved "
                        "(default the one `zixir run` recorded)")
    p.add_argument("--from-step", default=None, help="force a re-run from this step (resume)")
    p = add("dlq", cmd_dlq, "list, show, retry or discard dead letters")
    p.add_argument("action", choices=("list", "show", "retry", "discard"), help="what to do")
    p.add_argument("letter_id", nargs="?", help="the dead letter (all but list)")
    p.add_argument("--workflow", default=None, help="only letters of this workflow (list)")
    p.add_argument("--file", default=None, metavar="FILE[:WORKFLOW]",
                   help="(retry) the file that defines the run's workflow, if it moved")
    p = add("store", cmd_store, "check the store for damage, or back it up (consistent, "
            "compacted; also of a live directory)")
    p.add_argument("action", choices=("check", "backup"), help="what to do")
    p.add_argument("dest", nargs="?", metavar="DEST", help="(backup) an empty or new directory")
    p = add("cache", cmd_cache, "list the caches of the data directory, show one's stats, "
            "or clear a persistent one")
    p.add_argument("action", choices=("list", "stats", "clear"), help="what to do")
    p.add_argument("name", nargs="?", help="the cache (stats, clear)")
    p = add("queues", cmd_queues, "list the durable queues of the data directory (depth, "
            "running, oldest wait) or show one with its waiting runs")
    p.add_argument("action", choices=("list", "show"), help="what to do")
    p.add_argument("name", nargs="?", help="the queue (show)")
    p = add("schedules", cmd_schedules, "list the stored schedules, or pause, resume or "
            "delete one (every process on the directory follows)")
    p.add_argument("action", choices=("list", "pause", "resume", "delete"), help="what to do")
    p.add_argument("name", nargs="?", help="the schedule (all but list)")
    p = add("graph", cmd_graph, "print a workflow's DAG as Mermaid or DOT", json_flag=False)
    p.add_argument("target", metavar="FILE[:WORKFLOW]", help=TARGET_HELP)
    p.add_argument("--format", choices=("mermaid", "dot"), default="mermaid",
                   help="Mermaid (default) or Graphviz DOT")
    add("tree", cmd_tree, "print the supervision tree that start() builds", json_flag=False)
    p = add("metrics", cmd_metrics, "serve /metrics for this data directory", json_flag=False)
    p.add_argument("--port", type=int, default=9464,
                   help="port on 127.0.0.1 (default 9464; 0 picks a free one)")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds to serve (default forever)")
    p = add("dashboard", cmd_dashboard, "serve the web dashboard of this data directory "
            "(beside the services on it)", json_flag=False)
    p.add_argument("--port", type=int, default=8765,
                   help="port (default 8765; 0 picks a free one)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1); any other needs --token")
    p.add_argument("--token", default=None,
                   help="secret every page and action asks for (default "
                        "$ZIXIR_DASHBOARD_TOKEN; none: loopback only)")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds to serve (default forever)")
    p = add("bench", cmd_bench, "run the benchmarks beside their baselines", json_flag=False)
    p.add_argument("--quick", action="store_true", help="small counts (under two minutes)")
    p.add_argument("subjects", nargs="*",
                   help="subjects to run, e.g. cache stream (default all)")
    return parser


def _fail(message: str, code: int) -> NoReturn:
    print(f"zixir: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `zixir` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from zixir_actors.observability import configure_logging

        configure_logging(json=args.log_json, level=args.log_level.upper())
        return int(args.fn(args))
    except KeyboardInterrupt:
        print("zixir: interrupted; runs in flight are checkpointed (zixir runs resume)",
              file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        cause = _root_cause(exc)
        if isinstance(cause, (ZixirError, OSError)):
            _fail(str(cause).splitlines()[0] if str(cause) else type(cause).__name__, 2)
        _fail(f"{type(cause).__name__}: {cause}".splitlines()[0], 1)


def _root_cause(exc: BaseException) -> BaseException:
    """The error a service raised, not the supervisor's "child failed to start" around it."""
    from supervisors.errors import ChildStartError

    while isinstance(exc, ChildStartError) and isinstance(exc.cause, BaseException):
        exc = exc.cause
    return exc


if __name__ == "__main__":
    sys.exit(main())
