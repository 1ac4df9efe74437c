"""What the dashboard's buttons do: resume, cancel, send an event, retry or discard a letter.

Sending an event and cancelling need only the store: the process that owns a
parked run sees the event in its mailbox and wakes the run. Resuming and
retrying run the workflow's code, so they happen in the dashboard's process
when the workflow is defined there (a dashboard served from inside a
service), or through the file `zixir run` remembered for the run (as
`zixir runs resume` does); otherwise the action says so and changes nothing.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from zixir_actors.checkpoint import CheckpointClient
from zixir_actors.errors import ZixirError

__all__ = ["ActionError", "Actions"]

ENDED = frozenset({"succeeded", "failed", "cancelled", "timed_out"})


class ActionError(ZixirError):
    """An action the dashboard cannot do; its message is shown to the user."""


class Actions:
    """The dashboard's actions on one data directory.

    Args:
        store: the store client.
        data_dir: the data directory (for the files `zixir run` remembered).
    """

    def __init__(self, store: CheckpointClient, data_dir: Path) -> None:
        self.store = store
        self.data_dir = data_dir
        self._loaded: dict[str, Any] = {}
        self._lock = threading.Lock()

    def workflow_for(self, name: str, run_id: str) -> tuple[Any, str]:
        """The run's `Workflow` and where it came from.

        Raises:
            ActionError: not defined in this process and no remembered file.
        """
        from zixir_actors.workflow import find_workflow

        wf = find_workflow(name)
        if wf is not None:
            return wf, "defined in this process"
        from zixir_actors.cli import CliError, _source_of, load_workflow

        target = _source_of(self.data_dir, run_id)
        if target is None:
            raise ActionError(
                f"workflow {name!r} is not defined in the process serving this dashboard, and "
                f"run {run_id!r} was not started by `zixir run`: serve the dashboard from "
                f"the service that defines it (zixir_actors.start(dashboard_port=...)), or use "
                f"`zixir runs resume {run_id} --file FILE`")
        with self._lock:
            wf = self._loaded.get(target)
            if wf is None:
                try:
                    wf = load_workflow(target)[0]
                except CliError as exc:
                    raise ActionError(f"cannot load {target}: {exc}") from None
                self._loaded[target] = wf
        if wf.name != name:
            raise ActionError(f"{target} defines workflow {wf.name!r}, not {name!r}")
        return wf, f"loaded from {target}"

    def resume(self, run_id: str) -> str:
        """Continue a stored run in this process (committed steps are skipped)."""
        record = self.store.get_run(run_id)
        if record.status == "succeeded":
            raise ActionError(f"run {run_id!r} already succeeded")
        wf, where = self.workflow_for(record.workflow, run_id)
        self._start(wf, record, run_id)
        return f"resumed run {run_id} in this process (workflow {where})"

    def _start(self, wf: Any, record: Any, run_id: str) -> None:
        from zixir_actors.errors import RunActiveError

        try:
            wf.start(dict(record.inputs), run_id=run_id, store=self.store)
        except RunActiveError as exc:
            raise ActionError(str(exc)) from None

    def cancel(self, run_id: str) -> str:
        record = self.store.get_run(run_id)
        if record.status in ENDED:
            raise ActionError(f"run {run_id!r} has already ended ({record.status})")
        from zixir_actors.workflow import find_workflow

        wf = find_workflow(record.workflow)
        if wf is None:
            # Only the store is needed to mark a run cancelled from outside its process.
            from dataclasses import replace

            self.store.save_run(replace(record, status="cancelled", waiting=None,
                                        updated_at=self.store.clock.time()))
            return f"cancelled run {run_id}"
        if not wf.cancel(run_id, store=self.store):
            raise ActionError(f"run {run_id!r} had already ended")
        return f"cancelled run {run_id}"

    def send(self, run_id: str, event: str, payload: Any) -> str:
        """Commit an event to the run's mailbox; continue the run here if nobody else will."""
        from zixir_actors._runtimes import owned_elsewhere
        from zixir_actors.workflow import send

        # Judged on the record as it was before the event: its owner may take
        # the event (and move on) before this reads the store again.
        record = self.store.get_run(run_id)
        send(run_id, event, payload, store=self.store)
        message = f"sent {event!r} to run {run_id}"
        waiting = record.waiting or {}
        if record.status != "parked" or waiting.get("kind") != "event" \
                or waiting.get("event") != event:
            return message
        from zixir_actors._runtimes import current_owner
        from zixir_actors.workflow import running_here
        from zixir_actors.workflow._durable import parked_bodies

        me = current_owner()
        if run_id in parked_bodies() or running_here(run_id) or (
                me is not None and record.owner == me):
            return message + "; it continues in this process"
        if owned_elsewhere(record, self.store) is not None:
            return message + f"; the process that owns it ({record.owner}) wakes it"
        try:
            wf, where = self.workflow_for(record.workflow, run_id)
        except ActionError:
            return message + (f"; it continues when a process that defines workflow "
                              f"{record.workflow!r} resumes it")
        self._start(wf, record, run_id)
        return message + f"; continued here (workflow {where})"

    def retry(self, letter_id: str) -> tuple[str, str]:
        """Re-drive a dead letter's run from its step, in this process; returns (message, run)."""
        letter = self.store.get_dead_letter(letter_id)
        record = self.store.get_run(letter.run_id)
        wf, where = self.workflow_for(letter.workflow, letter.run_id)
        if wf.body is None:
            from zixir_actors.workflow._spec import descendants

            if letter.step in wf.steps:
                self.store.invalidate(letter.run_id, descendants(wf.steps, [letter.step]))
        # A code-first run that failed re-runs the call that failed it; the step's
        # letter is deleted in the commit of its success, or replaced if it fails again.
        self._start(wf, record, letter.run_id)
        return (f"retrying step {letter.step} of run {letter.run_id} in this process "
                f"(workflow {where})", letter.run_id)

    def discard(self, letter_id: str) -> str:
        from zixir_actors.workflow import DeadLetters

        DeadLetters(self.store).discard(letter_id)
        return f"discarded dead letter {letter_id}"
