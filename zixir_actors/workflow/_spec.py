"""Step specs: `RetryPolicy`, `Step`, and how a step's parameters are filled."""

from __future__ import annotations

import inspect
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from zixir_actors.errors import InvalidStepError, MissingInputError

__all__ = [
    "DEFAULT_MAX_CONCURRENCY",
    "NO_RETRY",
    "FailurePolicy",
    "RetryPolicy",
    "Step",
]

FailurePolicy = Literal["stop", "continue"]
"""What a run does when a step exhausts its retries: ``"stop"`` scheduling
(running steps finish and are checkpointed) or ``"continue"`` with every
branch that does not depend on the failed step."""
FAILURE_POLICIES: tuple[str, ...] = ("stop", "continue")
DEFAULT_MAX_CONCURRENCY = 8
"""Steps of one run that execute at once unless `max_concurrency` says otherwise."""
CTX = "ctx"
"""The parameter name through which a step receives its `StepContext`."""


def _exception_types(value: Any, field_name: str) -> tuple[type[BaseException], ...]:
    items = (value,) if isinstance(value, type) else tuple(value)
    for item in items:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise InvalidStepError(field_name, value, "must be exception classes")
    return items


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When and how often a failed step is tried again.

    Example:
        >>> policy = RetryPolicy(max_attempts=4, initial_delay=0.5, backoff=2.0, jitter=0.0)
        >>> [policy.delay(n) for n in (1, 2, 3)]
        [0.5, 1.0, 2.0]

    The delay before attempt ``n + 1`` is ``initial_delay * backoff ** (n - 1)``,
    capped at `max_delay`, then spread by `jitter`: multiplied by a random
    factor in ``[1 - jitter, 1 + jitter]`` (never above `max_delay`), so
    retries of many runs do not hit a service in lockstep.

    Args:
        max_attempts: attempts in all, first one included (default 3; 1 = no retry).
        initial_delay: seconds before the second attempt (default 1.0).
        backoff: factor applied to the delay after each failure (default 2.0, >= 1).
        max_delay: ceiling of any delay (default 60.0).
        jitter: relative spread of each delay, 0 to 1 (default 0.1).
        retry_on: exception classes that are retried (default ``(Exception,)``).
        give_up_on: exception classes that are never retried, even when they
            match `retry_on` (default none).

    Raises:
        InvalidStepError: a field is out of range or not exception classes.
    """

    max_attempts: int = 3
    initial_delay: float = 1.0
    backoff: float = 2.0
    max_delay: float = 60.0
    jitter: float = 0.1
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    give_up_on: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if (not isinstance(self.max_attempts, int) or isinstance(self.max_attempts, bool)
                or self.max_attempts < 1):
            raise InvalidStepError("retry.max_attempts", self.max_attempts,
                                   "must be an integer >= 1")
        for name in ("initial_delay", "max_delay"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise InvalidStepError(f"retry.{name}", value, "must be a finite number >= 0")
        if not isinstance(self.backoff, (int, float)) or not 1 <= self.backoff < math.inf:
            raise InvalidStepError("retry.backoff", self.backoff, "must be a finite number >= 1")
        if not isinstance(self.jitter, (int, float)) or not 0 <= self.jitter <= 1:
            raise InvalidStepError("retry.jitter", self.jitter, "must be between 0 and 1")
        object.__setattr__(self, "retry_on", _exception_types(self.retry_on, "retry.retry_on"))
        object.__setattr__(self, "give_up_on",
                           _exception_types(self.give_up_on, "retry.give_up_on"))

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the `failures`-th failed attempt."""
        exponent = max(0, failures - 1)
        try:
            base = self.initial_delay * self.backoff ** exponent
        except OverflowError:
            base = math.inf
        base = min(self.max_delay, base)
        if self.jitter:
            base *= 1.0 + self.jitter * (2.0 * (rng or random).random() - 1.0)
        return max(0.0, min(self.max_delay, base))

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """Whether attempt number `attempt`, which raised `error`, is followed by another."""
        if attempt >= self.max_attempts or isinstance(error, self.give_up_on):
            return False
        return isinstance(error, self.retry_on)


NO_RETRY = RetryPolicy(max_attempts=1, initial_delay=0.0, jitter=0.0)
"""The default policy of a step: one attempt."""


@dataclass(frozen=True, slots=True)
class _Param:
    name: str
    source: Literal["dep", "input", "ctx", "default", "all"]


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a workflow: a function and what it needs.

    Example:
        >>> def summarize(text, ctx):
        ...     return text[:10]
        >>> step = Step("summary", summarize, depends_on=["text"],
        ...             retry=RetryPolicy(max_attempts=3), timeout=30.0)
        >>> step.depends_on
        ('text',)

    The function gets, by parameter name, the outputs of its dependencies,
    the workflow inputs, and `ctx` (a `StepContext`); ``**kwargs`` gets all
    of them except `ctx`. A dependency wins over an input of the same name.

    Args:
        name: the step's name, a Python identifier (dependents receive its
            output under this name).
        fn: the function; its return value is the step's output (checkpointed,
            so it must be serializable by pickle or dill).
        depends_on: names of steps that must finish first.
        retry: the `RetryPolicy` (default `NO_RETRY`: one attempt).
        timeout: seconds an attempt may take; a slower attempt is abandoned
            and recorded as timed out (default None: no limit).
        limits: a `zixir_actors.sandbox.Limits`: run the step in a sandbox
            process under these limits (default None: in a thread of this process).
        version: a label that replaces the code hash, when a change that the
            hash cannot see (a closure, a global, a model file) must re-run
            the step, or a cosmetic one must not.
        executor: where the step runs: ``"local"``, ``"ray"``, an `Executor`
            (a `RayActorPool` for warm state...), or None (default: the
            workflow's, else the runtime's; see `zixir_actors.executor`).
        resources: a `zixir_actors.executor.Resources` the step reserves on
            a cluster (``num_cpus``, ``num_gpus``, ``memory``).

    Raises:
        InvalidStepError: a bad name, function, dependency list, timeout,
            executor or resources.
    """

    name: str
    fn: Callable[..., Any]
    depends_on: tuple[str, ...] = ()
    retry: RetryPolicy = NO_RETRY
    timeout: float | None = None
    limits: Any = None
    version: str | None = None
    executor: Any = None
    resources: Any = None
    _params: tuple[_Param, ...] = field(default=(), repr=False, compare=False)
    _takes_ctx: bool = field(default=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier() or self.name == CTX:
            raise InvalidStepError("name", self.name,
                                   "must be a Python identifier other than 'ctx'")
        if not callable(self.fn):
            raise InvalidStepError("fn", self.fn, "must be callable", step=self.name)
        deps = (self.depends_on,) if isinstance(self.depends_on, str) else self.depends_on
        try:
            deps = tuple(deps)
        except TypeError:
            raise InvalidStepError("depends_on", self.depends_on,
                                   "must be a step name or a sequence of them",
                                   step=self.name) from None
        for dep in deps:
            if not isinstance(dep, str):
                raise InvalidStepError("depends_on", self.depends_on,
                                       "must contain step names", step=self.name)
        if len(set(deps)) != len(deps):
            raise InvalidStepError("depends_on", deps, "lists a step twice", step=self.name)
        if self.name in deps:
            raise InvalidStepError("depends_on", deps, "a step cannot depend on itself",
                                   step=self.name)
        object.__setattr__(self, "depends_on", deps)
        if not isinstance(self.retry, RetryPolicy):
            raise InvalidStepError("retry", self.retry, "must be a RetryPolicy", step=self.name)
        if self.timeout is not None and (
                not isinstance(self.timeout, (int, float)) or isinstance(self.timeout, bool)
                or not 0 < self.timeout < math.inf):
            raise InvalidStepError("timeout", self.timeout, "must be a number > 0 or None",
                                   step=self.name)
        if self.version is not None and not isinstance(self.version, str):
            raise InvalidStepError("version", self.version, "must be a string", step=self.name)
        from zixir_actors.executor import Resources, is_executor_choice

        if not is_executor_choice(self.executor):
            raise InvalidStepError("executor", self.executor,
                                   "must be 'local', 'ray', an Executor or None", step=self.name)
        if self.resources is not None and not isinstance(self.resources, Resources):
            raise InvalidStepError("resources", self.resources,
                                   "must be a zixir_actors.executor.Resources", step=self.name)
        object.__setattr__(self, "_params", _parameters(self))
        object.__setattr__(self, "_takes_ctx", any(p.source == "ctx" for p in self._params))

    def bind(self, workflow: str, inputs: Mapping[str, Any],
             outputs: Mapping[str, Any]) -> dict[str, Any]:
        """The keyword arguments of a call, without `ctx`.

        Raises:
            MissingInputError: a parameter matches nothing and has no default.
        """
        kwargs: dict[str, Any] = {}
        for param in self._params:
            if param.source == "all":
                kwargs.update({k: v for k, v in inputs.items() if k not in kwargs})
                kwargs.update({d: outputs[d] for d in self.depends_on})
            elif param.source == "ctx":
                continue
            elif param.name in self.depends_on:
                kwargs[param.name] = outputs[param.name]
            elif param.name in inputs:
                kwargs[param.name] = inputs[param.name]
            elif param.source != "default":
                raise MissingInputError(workflow, self.name, param.name)
        return kwargs

    @property
    def takes_ctx(self) -> bool:
        return self._takes_ctx


def _parameters(step: Step) -> tuple[_Param, ...]:
    try:
        signature = inspect.signature(step.fn)
    except (TypeError, ValueError):
        return (_Param("kwargs", "all"),)
    params: list[_Param] = []
    for p in signature.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            params.append(_Param(p.name, "all"))
        elif p.kind is p.VAR_POSITIONAL:
            continue
        elif p.kind is p.POSITIONAL_ONLY:
            if p.default is p.empty:
                raise InvalidStepError("fn", step.fn, f"positional-only parameter {p.name!r} "
                                       "cannot be filled by name", step=step.name)
        elif p.name == CTX:
            params.append(_Param(p.name, "ctx"))
        elif p.name in step.depends_on:
            params.append(_Param(p.name, "dep"))
        else:
            params.append(_Param(p.name, "input" if p.default is p.empty else "default"))
    return tuple(params)


def descendants(steps: Mapping[str, Step], roots: Sequence[str]) -> set[str]:
    """`roots` and every step that depends on them, directly or not."""
    children: dict[str, list[str]] = {name: [] for name in steps}
    for step in steps.values():
        for dep in step.depends_on:
            children.setdefault(dep, []).append(step.name)
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        name = stack.pop()
        if name not in seen:
            seen.add(name)
            stack.extend(children.get(name, ()))
    return seen
