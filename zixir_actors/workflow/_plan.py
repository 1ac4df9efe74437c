"""Deciding, step by step, what a resume skips, runs or re-runs."""

from __future__ import annotations

import datetime
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from zixir_actors.checkpoint import StepCheckpoint
from zixir_actors.workflow._hashing import fingerprint
from zixir_actors.workflow._results import Plan, PlanAction, PlanEntry
from zixir_actors.workflow._spec import descendants

if TYPE_CHECKING:
    from zixir_actors.workflow._workflow import Workflow

__all__ = ["compute_plan", "idempotency_key"]


def idempotency_key(run_id: str, step: str) -> str:
    """The key a step keeps across retries, crashes and resumes of one run."""
    return f"{run_id}/{step}"


def _when(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def compute_plan(workflow: Workflow, run_id: str, inputs: Mapping[str, Any],
                 checkpoints: Mapping[str, StepCheckpoint],
                 from_step: str | None = None) -> Plan:
    """The plan for running `workflow` as run `run_id` with `inputs`, given its checkpoints.

    A step is skipped only if it has a checkpoint whose code hash matches the
    step's code now and whose input hash matches the inputs it would get now
    (its dependencies' checkpointed outputs and the workflow inputs). A step
    that runs makes every step downstream of it run too.

    Raises:
        MissingInputError: a step parameter matches nothing.
    """
    if not checkpoints and from_step is None:  # a new run: every step runs
        return Plan(run_id, workflow.name, _fresh_entries(workflow), {})
    steps = workflow.steps
    forced = descendants(steps, [from_step]) if from_step is not None else set()
    actions: dict[str, PlanAction] = {}
    entries: list[PlanEntry] = []
    for name in workflow.order:
        step = steps[name]
        checkpoint = checkpoints.get(name)
        action: PlanAction
        if name in forced:
            action = "rerun" if checkpoint is not None else "run"
            reason = ("forced: resume from this step" if name == from_step
                      else f"forced: downstream of {from_step!r}")
        elif checkpoint is None:  # a new run's every step: nothing more to look at
            action, reason = "run", "no checkpoint"
        elif (upstream := next((d for d in step.depends_on if actions[d] != "skip"),
                               None)) is not None:
            action, reason = "rerun", f"upstream step {upstream!r} will run"
        elif checkpoint.code_hash != workflow.code_hashes[name]:
            action, reason = "rerun", "code changed since its checkpoint"
        else:
            outputs = {d: checkpoints[d].output for d in step.depends_on}
            kwargs = step.bind(workflow.name, inputs, outputs)
            if fingerprint(kwargs) != checkpoint.input_hash:
                action, reason = "rerun", "inputs changed since its checkpoint"
            else:
                action = "skip"
                reason = (f"checkpoint from {_when(checkpoint.finished_at)} "
                          f"(attempt {checkpoint.attempts}), code and inputs unchanged")
        actions[name] = action
        entries.append(PlanEntry(name, action, reason))
    kept = {n: c for n, c in checkpoints.items() if actions.get(n) == "skip"}
    return Plan(run_id, workflow.name, tuple(entries), kept)


_fresh: weakref.WeakKeyDictionary[Any, tuple[tuple[str, ...], tuple[PlanEntry, ...]]] = \
    weakref.WeakKeyDictionary()


def _fresh_entries(workflow: Workflow) -> tuple[PlanEntry, ...]:
    """The plan entries of a run with no checkpoint, built once per shape of `workflow`."""
    order = workflow.order
    found = _fresh.get(workflow)
    if found is None or found[0] is not order:  # a step added since: another shape
        found = (order, tuple(PlanEntry(name, "run", "no checkpoint") for name in order))
        _fresh[workflow] = found
    return found[1]
