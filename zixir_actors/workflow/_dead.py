"""`DeadLetters`: the steps that exhausted their retries, persisted in LMDB."""

from __future__ import annotations

from typing import TYPE_CHECKING

from zixir_actors.checkpoint import CheckpointClient, DeadLetter, connect
from zixir_actors.errors import WorkflowNotFoundError
from zixir_actors.workflow._results import RunResult
from zixir_actors.workflow._telemetry import Telemetry, log

if TYPE_CHECKING:
    from zixir_actors.workflow._workflow import Workflow

__all__ = ["DeadLetters"]


class DeadLetters:
    """The dead letter queue: list, inspect, retry or discard failed steps.

    Example:
        ``dlq = DeadLetters(); letter = dlq.list()[0]; print(letter.traceback)``,
        fix the cause, then ``dlq.retry(letter.id)`` re-drives the run from that
        step and returns its `RunResult`.

    A `DeadLetter` holds the run id, workflow, step, the step's inputs, the
    error type, message and traceback, and every attempt (`AttemptInfo`).

    Args:
        store: the `CheckpointClient` (default: the runtime's ``zixir.store``).
    """

    def __init__(self, store: CheckpointClient | None = None) -> None:
        self._client = store

    @property
    def store(self) -> CheckpointClient:
        if self._client is None:
            self._client = connect()
        return self._client

    def list(self, *, workflow: str | None = None,
             run_id: str | None = None) -> list[DeadLetter]:
        """Parked letters, oldest first, optionally of one workflow or run."""
        return self.store.dead_letters(workflow=workflow, run_id=run_id)

    def __len__(self) -> int:
        return self.store.count_dead_letters()

    def get(self, letter_id: str) -> DeadLetter:
        """One letter.

        Raises:
            DeadLetterNotFoundError: no such letter.
        """
        return self.store.get_dead_letter(letter_id)

    def discard(self, letter_id: str) -> None:
        """Delete a letter without retrying it.

        Raises:
            DeadLetterNotFoundError: no such letter.
        """
        letter = self.get(letter_id)
        self.store.delete_dead_letter(letter_id)
        Telemetry(letter.workflow).dead_letters(self.store.count_dead_letters())
        log.bind(workflow=letter.workflow, run_id=letter.run_id, step=letter.step).info(
            "dead letter discarded", letter=letter_id)

    def retry(self, letter_id: str, *, workflow: Workflow | None = None,
              max_concurrency: int | None = None,
              timeout: float | None = None) -> RunResult:
        """Re-drive the letter's run from its step (after you fixed the cause) and wait.

        The step and everything downstream of it run again; steps that had
        finished elsewhere in the run are skipped. The letter is removed when
        the step succeeds; if it fails again, a new letter replaces it.

        Args:
            letter_id: the letter.
            workflow: the `Workflow` to run (default: the one of the letter's
                name defined in this process).
            max_concurrency, timeout: as for `Workflow.run`.

        Raises:
            DeadLetterNotFoundError: no such letter.
            WorkflowNotFoundError: no workflow of that name is defined here.
            (and the errors of `Workflow.resume`)
        """
        from zixir_actors.workflow._workflow import find_workflow

        letter = self.get(letter_id)
        wf = workflow if workflow is not None else find_workflow(letter.workflow)
        if wf is None:
            raise WorkflowNotFoundError(letter.workflow)
        log.bind(workflow=letter.workflow, run_id=letter.run_id, step=letter.step).info(
            "dead letter retried", letter=letter_id)
        result = wf.resume(letter.run_id, from_step=letter.step, store=self.store,
                           max_concurrency=max_concurrency, timeout=timeout)
        if result.steps[letter.step].status not in ("cancelled", "not_run"):
            self.store.delete_dead_letter(letter_id)
            Telemetry(letter.workflow).dead_letters(self.store.count_dead_letters())
        return result
