"""`RayExecutor` and `RayActorPool`: calls as Ray tasks, or on warm Ray actors.

Ray is imported only when one of these is created, so the rest of the
package works without the ``ray`` extra.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from zixir_actors.errors import (
    ClusterConnectionError,
    ConfigError,
    ExecutorError,
    ExecutorUnavailableError,
    RemoteCancelledError,
    RemoteError,
    RemoteLostError,
    RemoteMemoryError,
    RemoteTimeoutError,
)
from zixir_actors.executor._api import Resources, TaskFuture, TraceContext
from zixir_actors.executor._core import (
    Deadlines,
    check_submit,
    finish,
    finish_where,
    label_of,
    settle_reply,
)
from zixir_actors.executor._remote import (
    Guard,
    Reply,
    execute_packed,
    guard_of,
    pack,
    reply_of,
    set_warm_state,
)
from zixir_actors.executor._shipping import (
    MAX_SHIPPED,
    Shipper,
    fits_task_name,
    task_name,
    unwrap,
)
from zixir_actors.executor._telemetry import Call, Telemetry

__all__ = ["DEFAULT_CONNECT_TIMEOUT", "RAY_EXTRA", "RayActorPool", "RayExecutor", "import_ray"]

T = TypeVar("T")

RAY_EXTRA = "ray"
"""The `zixir-actors` extra that installs Ray: ``pip install 'zixir-actors[ray]'``."""
DEFAULT_CONNECT_TIMEOUT = 10.0
"""Seconds to wait for a cluster's address to answer before `ClusterConnectionError`."""
_RESOURCE_REFRESH = 5.0
RESTART_PROBE = 0.2
"""Seconds between two checks whether a restarting pool actor is back."""
RESTART_PROBES = 300
"""Checks before a pool actor that does not come back gets calls again (they then fail)."""
WAIT_SLICE = 1.0
"""Longest single ``ray.get`` of a thread waiting for a call before it looks again whether
a cancel or a timeout ended the call meanwhile (their kill normally ends the wait at once)."""


def import_ray() -> Any:
    """The `ray` module.

    Raises:
        ExecutorUnavailableError: Ray is not installed (the error names the extra).
    """
    try:
        import ray
    except ImportError as exc:
        raise ExecutorUnavailableError("ray", RAY_EXTRA, f"ray is not importable: {exc}") \
            from None
    return ray


def _probe(address: str, timeout: float) -> None:
    """Fail fast on an address nobody listens at (``ray.init`` would retry for minutes)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterConnectionError(address, "expected host:port, 'auto' or ray://host:port")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ClusterConnectionError(address, f"nothing answers there ({exc})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _translate(ray: Any, exc: BaseException, label: str, address: str | None,
               limit: int | None) -> tuple[str, BaseException]:
    """Ray's failure of a call as our outcome and typed error."""
    errors = ray.exceptions
    if isinstance(exc, errors.OutOfMemoryError):
        return "memory", RemoteMemoryError(label, "ray", limit, None, _first_line(exc))
    if isinstance(exc, errors.TaskCancelledError):
        return "cancelled", RemoteCancelledError(label)
    if isinstance(exc, (errors.NodeDiedError, errors.LocalRayletDiedError)):
        return "lost", RemoteLostError(label, "ray", "node", _first_line(exc))
    if isinstance(exc, errors.WorkerCrashedError):
        return "lost", RemoteLostError(label, "ray", "worker", _first_line(exc))
    if isinstance(exc, (errors.RayActorError, errors.ActorUnavailableError)):
        return "lost", RemoteLostError(label, "ray", "actor", _first_line(exc))
    if isinstance(exc, (errors.ObjectLostError, errors.OwnerDiedError)):
        return "lost", RemoteLostError(label, "ray", "object", _first_line(exc))
    if isinstance(exc, errors.RayTaskError):  # raised outside our wrapper: the result's pickling
        cause = getattr(exc, "cause", None)
        kind = type(cause).__qualname__ if cause is not None else "RayTaskError"
        return "error", RemoteError(label, kind, _first_line(cause or exc), str(exc))
    if isinstance(exc, (errors.RaySystemError, errors.RpcError, ConnectionError)):
        return "disconnected", ClusterConnectionError(address, _first_line(exc))
    return "error", exc


class _Pending:
    """One Ray call not ended yet: the `Source` of its `TaskFuture`.

    A thread that waits (``get``) takes the reply itself with ``ray.get``, as
    a bare Ray caller does: no callback thread hands it over. Only a future
    that is polled, given a callback, awaited, dropped, cancelled or timed
    out has Ray's completion callback armed (`watch`), once.
    """

    __slots__ = ("call", "calls", "kill", "limit", "lost", "ref", "watched")

    def __init__(self, calls: _RayCalls, ref: Any, call: Call, limit: int | None,
                 kill: Callable[[], None], lost: Callable[[], None] | None) -> None:
        self.calls = calls
        self.ref = ref
        self.call = call
        self.limit = limit
        self.kill = kill
        self.lost = lost
        self.watched = False

    def wait(self, future: TaskFuture[Any], timeout: float | None) -> None:
        calls = self.calls
        ray = calls._ray
        expired = ray.exceptions.GetTimeoutError
        end: float | None = None
        left = WAIT_SLICE
        if timeout is not None:
            end, left = time.monotonic() + timeout, min(WAIT_SLICE, timeout)
        while True:
            try:
                result = ray.get(self.ref, timeout=max(left, 0.0))
            except expired:
                if future._future.done():  # a cancel or a timeout ended it meanwhile
                    return
                if end is not None:
                    left = min(WAIT_SLICE, end - time.monotonic())
                    if left < 0.001:  # Ray counts whole milliseconds
                        return
                continue
            except Exception as exc:
                calls._failed(future, self, exc)
                return
            calls._arrived(future, self, result)
            return

    def watch(self, future: TaskFuture[Any]) -> None:
        if self.watched:
            return
        self.watched = True
        try:
            done = self.ref.future()
        except Exception as exc:  # the connection is gone
            self.calls._failed(future, self, exc)
            return
        done.add_done_callback(lambda d: self.calls._settled(future, self, d))

    def cancel(self, future: TaskFuture[Any]) -> bool:
        return self.calls._cancel(future, self)


class _Launch:
    """How the calls of one Ray remote function, with one set of options, are submitted.

    ``remote(payload)`` sends a call with its one argument (`pack`);
    ``named(name=...)`` sends one with no argument at all, its trace ids in
    the task's name (`task_name`): Ray's cheapest task, as a bare
    ``f.remote()``. Both are built once, so a call makes no ``options()``
    call of its own.
    """

    __slots__ = ("named", "remote")

    def __init__(self, base: Any, options: dict[str, Any]) -> None:
        self.remote = base.options(**options).remote  # also checks the options
        self.named = _named(base, options)


_SUBMIT_PARAMETERS = frozenset({"args", "kwargs", "serialized_runtime_env_info"})


def _named(base: Any, options: dict[str, Any]) -> Callable[..., Any]:
    """`_Launch.named`: Ray's own submit with `options` merged in once, where Ray has it.

    ``f.options(**o).remote()`` checks and merges `o` and builds a wrapper
    at every call (a tenth of a no-op task's caller-side cost); the task it
    submits is ``f._remote(args=..., kwargs=..., serialized_runtime_env_info=...,
    **merged)``, which this calls directly when `base` has that method with
    those parameters (Ray 2.x), else falls back to ``options(name=...)``.
    """
    submit: Callable[..., Any] | None = getattr(base, "_remote", None)
    defaults = getattr(base, "_default_options", None)
    env = getattr(base, "_serialized_base_runtime_env_info", _MISSING)
    try:
        parameters = inspect.signature(submit).parameters if submit is not None else {}
    except (TypeError, ValueError):
        parameters = {}
    if submit is None or not isinstance(defaults, dict) or env is _MISSING \
            or not parameters.keys() >= _SUBMIT_PARAMETERS:
        return functools.partial(_named_by_options, base, options)
    merged = {**defaults, **options}
    merged.pop("max_calls", None)  # what options() does: a per-worker setting, not a task's
    return functools.partial(submit, args=(), kwargs={}, serialized_runtime_env_info=env,
                             **merged)


_MISSING = object()


def _named_by_options(base: Any, options: dict[str, Any], *, name: str) -> Any:
    return base.options(name=name, **options).remote()


class _RayCalls:
    """Telemetry, deadlines and result handling shared by tasks and actor pools."""

    name = "ray"

    def __init__(self, ray: Any, address: str | None) -> None:
        self._ray = ray
        self.address = address
        self._telemetry = Telemetry(self.name)
        self._deadlines = Deadlines(self.name)

    def _connected(self) -> None:
        if not self._ray.is_initialized():
            raise ClusterConnectionError(self.address, "not connected: ray.shutdown() was "
                                         "called or the connection to the cluster was lost")

    def _future(self, ref: Any, call: Call, limit: int | None, timeout: float | None,
                kill: Callable[[], None],
                lost: Callable[[], None] | None = None) -> TaskFuture[Any]:
        """The `TaskFuture` of the call `ref` stands for, with its deadline."""
        pending = _Pending(self, ref, call, limit, kill, lost)
        future: TaskFuture[Any] = TaskFuture(call.label, self.name, source=pending)
        if timeout is not None:
            # A weak reference: a future dropped unsettled still reaches its __del__.
            weak = weakref.ref(future)
            entry = self._deadlines.add(timeout, lambda: self._expire(weak, pending, timeout))
            future._future.add_done_callback(lambda _: self._deadlines.discard(entry))
        return future

    def _settled(self, future: TaskFuture[Any], pending: _Pending, done: Any) -> None:
        try:
            result = done.result()
        except BaseException as exc:
            self._failed(future, pending, exc)
            return
        self._arrived(future, pending, result)

    def _arrived(self, future: TaskFuture[Any], pending: _Pending, result: Any) -> None:
        reply = reply_of(result)
        if isinstance(reply, Reply):
            settle_reply(future, pending.call, self._telemetry, reply, self.name)
            return
        value, duration, pid, node = reply  # a small value: no Reply to build
        finish_where(future, pending.call, self._telemetry, "ok", value, None, duration, pid,
                     node)

    def _failed(self, future: TaskFuture[Any], pending: _Pending, exc: BaseException) -> None:
        call = pending.call
        outcome, error = _translate(self._ray, exc, call.label, self.address, pending.limit)
        if outcome == "lost" and pending.lost is not None:
            pending.lost()  # before the caller hears of it, so its retry goes elsewhere
        finish(future, call, self._telemetry, outcome, error=error)

    def _expire(self, weak: weakref.ref[TaskFuture[Any]], pending: _Pending,
                timeout: float) -> None:
        future = weak()
        if future is not None and finish(future, pending.call, self._telemetry, "timeout",
                                         error=RemoteTimeoutError(pending.call.label,
                                                                  self.name, timeout)):
            pending.kill()
            pending.watch(future)  # take the killed call's outcome, so Ray has it handled

    def _cancel(self, future: TaskFuture[Any], pending: _Pending) -> bool:
        if not finish(future, pending.call, self._telemetry, "cancelled",
                      error=RemoteCancelledError(pending.call.label)):
            return False
        pending.kill()
        pending.watch(future)
        return True


class RayExecutor(_RayCalls):
    """Runs calls as Ray tasks on a cluster (or a local one started for this process).

    Example:
        ``executor = RayExecutor("10.0.0.5:6379")``, then
        ``executor.submit(embed, batch, resources=Resources(num_gpus=1), timeout=60).get()``.

    A plain function (a lambda and a closure too) is shipped to the cluster
    once, as a Ray remote function of its own, keyed by its code and the
    current values of its closure: a call then carries only its arguments,
    and a closure whose captured value changed ships again (see
    `zixir_actors.executor._shipping`). A call with arguments, limits or
    spans to collect (the caller exports spans) travels as one Ray argument
    (its arguments, trace ids and limits); a call with none of them (a
    no-argument workflow step) is a Ray task with no argument, as
    ``f.remote()`` is, named ``"<label> <traceparent>"`` so its trace ids
    still reach the worker. A thread waiting in `TaskFuture.get` takes Ray's
    reply itself, as ``ray.get(f.remote())`` does: no callback thread hands
    it over.

    Each call is a Ray task with ``max_retries=0``: a failure comes back to
    the caller, whose `RetryPolicy` decides (so attempts and dead letters are
    counted as for local steps). A call past its `timeout` is cancelled with
    ``ray.cancel(force=True)``, which kills its worker. `limits` are enforced
    inside the worker (memory and CPU time sampled every `MONITOR_INTERVAL`;
    the call is interrupted between two Python bytecodes when over, and if it
    is stuck in C code `STUCK_GRACE` seconds later its worker exits, which
    reads as a lost worker); a memory limit also reserves that much of Ray's
    ``memory`` resource unless `resources` says otherwise, so the scheduler
    only places the call where that much is free. A worker or node that dies
    is `RemoteLostError`; Ray's own out-of-memory killer is `RemoteMemoryError`.

    Args:
        address: the cluster (``"host:port"``, ``"auto"``, ``"ray://host:port"``);
            None: join the Ray instance this process already has, or start a
            local one.
        num_cpus: CPUs of a local cluster started here (default: all).
        connect_timeout: seconds to wait for `address` to answer.
        check_resources: refuse at once a call whose `resources` no node of
            the cluster could ever offer (turn off with an autoscaler).
        init_options: more keyword arguments for ``ray.init``.

    Raises:
        ExecutorUnavailableError: Ray is not installed (names the extra to install).
        ClusterConnectionError: the cluster cannot be reached.
    """

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 check_resources: bool = True,
                 init_options: Mapping[str, Any] | None = None) -> None:
        ray = import_ray()
        super().__init__(ray, address)
        self.check_resources = check_resources
        self._owns = False
        self._lock = threading.Lock()
        self._options: dict[tuple[Any, ...], _Launch] = {}
        self._totals: dict[str, float] = {}
        self._totals_at = -_RESOURCE_REFRESH
        if address not in (None, "auto", "local") and not address.startswith("ray://"):
            _probe(address, connect_timeout)
        if not ray.is_initialized():  # else: one connection per process, join it
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                       "configure_logging": False}
            options.update(init_options or {})
            try:
                ray.init(address=address, num_cpus=num_cpus, **options)
            except (ConnectionError, RuntimeError, TimeoutError, ValueError) as exc:
                raise ClusterConnectionError(address, _first_line(exc)) from exc
            self._owns = True
        self._remote = ray.remote(execute_packed)
        self._shipper = Shipper(ray)

    def __repr__(self) -> str:
        return f"<RayExecutor {self.address or 'local'}>"

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    @property
    def owns_cluster_connection(self) -> bool:
        """True if this executor called ``ray.init`` (and `shutdown` disconnects)."""
        return self._owns

    def submit(self, fn: Callable[..., T], /, *args: Any,
               kwargs: Mapping[str, Any] | None = None, resources: Resources | None = None,
               timeout: float | None = None, limits: Any = None,
               trace_context: TraceContext | None = None,
               label: str | None = None) -> TaskFuture[T]:
        """Start ``fn(*args, **kwargs)`` as a Ray task and return its `TaskFuture`.

        Raises:
            ConfigError: a bad argument, or resources no node can offer.
            ClusterConnectionError: not connected to the cluster any more.
        """
        check_submit(fn, kwargs, resources, timeout, trace_context)
        self._connected()
        guard = guard_of(limits)
        if timeout is None and limits is not None:
            timeout = getattr(limits, "hard_timeout", None)
        name = label_of(fn, label)
        fn, args, kwargs = unwrap(fn, args, kwargs)
        shipped = self._shipper.remote(fn)
        launch = self._task_options(shipped, resources, guard)
        telemetry = self._telemetry
        call = telemetry.begin(name, trace_context)
        try:
            if shipped is not None and not args and not kwargs and guard is None \
                    and not telemetry.exporting() and (  # nothing to send but trace ids
                        trace_context is None  # ours: always hex ids
                        or fits_task_name(trace_context.trace_id, trace_context.span_id)):
                trace = call.trace
                ref = launch.named(name=task_name(name, trace.trace_id, trace.span_id))
            else:
                payload = pack(args, kwargs, call.trace, guard, telemetry.exporting())
                if shipped is None:  # not a plain function: it travels with the call
                    payload.append(fn)
                ref = launch.remote(payload)
        except Exception as exc:
            error = ClusterConnectionError(self.address, f"cannot submit {name!r}: "
                                           f"{_first_line(exc)}")
            telemetry.end(call, "disconnected", error=error)  # counted, not left in flight
            raise error from exc
        return self._future(ref, call, guard.memory if guard else None, timeout,
                            self._killer(ref))

    def _killer(self, ref: Any) -> Callable[[], None]:
        def kill() -> None:
            with contextlib.suppress(Exception):  # already finished, or the cluster is gone
                self._ray.cancel(ref, force=True)
        return kill

    def _task_options(self, shipped: tuple[Any, Any] | None, resources: Resources | None,
                      guard: Guard | None) -> _Launch:
        key = (None if shipped is None else shipped[0], resources,
               guard.memory if guard else None)
        launch = self._options.get(key)
        if launch is not None:
            return launch
        wanted = resources.ray_options() if resources is not None else {}
        if guard is not None and guard.memory is not None and "memory" not in wanted:
            wanted["memory"] = guard.memory
        if self.check_resources:
            self._check_feasible(wanted, resources)
        base = self._remote if shipped is None else shipped[1]
        launch = _Launch(base, {"max_retries": 0, "retry_exceptions": False, **wanted})
        with self._lock:
            while len(self._options) >= 4 * MAX_SHIPPED:  # with the functions they run
                del self._options[next(iter(self._options))]
            self._options[key] = launch
        return launch

    def _check_feasible(self, wanted: dict[str, Any], resources: Resources | None) -> None:
        asked = {"CPU": wanted.get("num_cpus", 0), "GPU": wanted.get("num_gpus", 0),
                 "memory": wanted.get("memory", 0), **wanted.get("resources", {})}
        for attempt in (1, 2):
            now = time.monotonic()
            if attempt == 2 or now - self._totals_at > _RESOURCE_REFRESH:
                self._totals = {k: float(v) for k, v in self._ray.cluster_resources().items()}
                self._totals_at = now
            short = [k for k, v in asked.items() if v and v > self._totals.get(k, 0.0)]
            if not short:
                return
        have = ", ".join(f"{k}={self._totals.get(k, 0.0):g}" for k in short)
        raise ConfigError("resources", resources or wanted,
                          f"no node of the cluster can ever offer it (the cluster has {have})")

    def actor_pool(self, setup: Callable[[], Any], *, size: int = 1,
                   resources: Resources | None = None) -> RayActorPool:
        """`size` Ray actors each keeping what `setup()` built (see `RayActorPool`)."""
        return RayActorPool(setup, size=size, resources=resources, executor=self)

    def shutdown(self, *, timeout: float | None = None) -> None:
        """Disconnect from the cluster if this executor connected (``ray.shutdown()``).

        A connection that existed before (a session-wide ``ray.init``) stays.
        Idempotent.
        """
        with self._lock:
            owns, self._owns = self._owns, False
        if owns and self._ray.is_initialized():
            self._ray.shutdown()


class _WarmActor:
    """The Ray actor of a `RayActorPool`: builds its warm state once, then runs calls."""

    def __init__(self, setup: Callable[[], Any]) -> None:
        set_warm_state(setup(), process_wide=True)

    def ready(self) -> int:
        return os.getpid()

    def call(self, payload: list[Any]) -> Any:
        return execute_packed(payload)


class RayActorPool(_RayCalls):
    """`size` Ray actors, each holding warm state (a loaded model) built once by `setup()`.

    Example:
        ``pool = executor.actor_pool(lambda: load_model("small"), size=2,
        resources=Resources(num_gpus=1))``; a call submitted to `pool` reads
        ``warm_state()`` for the model. `pool` is an `Executor`: give it to a
        `Step(executor=pool)` or a `Stream.map(..., executor=pool)`.

    Calls go to the actor with the fewest calls in flight. An actor that dies
    is restarted by Ray (its `setup` runs again) and the call that was on it
    fails with `RemoteLostError`, for the caller's retry policy. A call past
    its `timeout` (or cancelled) kills its actor, which restarts.

    Args:
        setup: builds an actor's state, once per actor (incarnation).
        size: actors.
        resources: what each actor reserves (its CPUs, GPUs, memory).
        executor: the `RayExecutor` whose connection to use (default: connect
            as `RayExecutor()` does).

    Raises:
        ConfigError: `setup` is not callable or `size` not a positive int.
        ExecutorUnavailableError: Ray is not installed.
    """

    def __init__(self, setup: Callable[[], Any], *, size: int = 1,
                 resources: Resources | None = None,
                 executor: RayExecutor | None = None) -> None:
        if not callable(setup):
            raise ConfigError("setup", setup, "must be callable")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError("size", size, "must be a positive int")
        if resources is not None and not isinstance(resources, Resources):
            raise ConfigError("resources", resources, "must be a Resources")
        executor = executor if executor is not None else RayExecutor()
        super().__init__(executor._ray, executor.address)
        self._connected()
        options = resources.ray_options() if resources is not None else {}
        actor = self._ray.remote(_WarmActor).options(max_restarts=-1, max_task_retries=0,
                                                     **options)
        self._actors = [actor.remote(setup) for _ in range(size)]
        self._busy = [0] * size
        self._down: set[int] = set()
        self._turn = -1
        self._lock = threading.Lock()
        self.size = size

    def __enter__(self) -> RayActorPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def wait_ready(self, *, timeout: float | None = 60.0) -> list[int]:
        """Wait until every actor has run its `setup`; their process ids."""
        return list(self._ray.get([a.ready.remote() for a in self._actors], timeout=timeout))

    def submit(self, fn: Callable[..., T], /, *args: Any,
               kwargs: Mapping[str, Any] | None = None, resources: Resources | None = None,
               timeout: float | None = None, limits: Any = None,
               trace_context: TraceContext | None = None,
               label: str | None = None) -> TaskFuture[T]:
        """Run ``fn(*args, **kwargs)`` on the least busy actor (`resources` are the pool's)."""
        check_submit(fn, kwargs, resources, timeout, trace_context)
        self._connected()
        guard = guard_of(limits)
        if timeout is None and limits is not None:
            timeout = getattr(limits, "hard_timeout", None)
        name = label_of(fn, label)
        with self._lock:
            if not self._actors:
                raise ExecutorError("the actor pool was shut down")
            self._turn = (self._turn + 1) % self.size  # ties go round the pool
            order = [(self._turn + i) % self.size for i in range(self.size)]
            # an actor that is restarting gets work only when all are
            index = min(order, key=lambda i: (i in self._down, self._busy[i]))
            self._busy[index] += 1
            actor = self._actors[index]
        call = self._telemetry.begin(name, trace_context)
        payload = pack(args, kwargs, call.trace, guard, self._telemetry.exporting())
        payload.append(fn)
        try:
            ref = actor.call.remote(payload)
        except Exception as exc:
            self._release(index)
            error = ClusterConnectionError(self.address, f"cannot submit {name!r}: "
                                           f"{_first_line(exc)}")
            self._telemetry.end(call, "disconnected", error=error)
            raise error from exc

        def kill() -> None:
            self._restarting(index)
            with contextlib.suppress(Exception):  # restarts it: max_restarts=-1
                self._ray.kill(actor, no_restart=False)

        future = self._future(ref, call, guard.memory if guard else None, timeout, kill,
                              lost=lambda: self._restarting(index))
        future._future.add_done_callback(lambda _: self._release(index))
        return future

    def _release(self, index: int) -> None:
        with self._lock:
            self._busy[index] -= 1

    def _restarting(self, index: int) -> None:
        """Keep work off actor `index` until Ray has restarted it and its `setup` ran."""
        with self._lock:
            if index in self._down or index >= len(self._actors):
                return
            self._down.add(index)
        self._probe(index, RESTART_PROBES)

    def _probe(self, index: int, left: int) -> None:
        with self._lock:
            if index >= len(self._actors):
                return
            actor = self._actors[index]

        def answered(done: Any) -> None:
            if done.exception() is None or left <= 1:  # back, or let calls say why not
                with self._lock:
                    self._down.discard(index)
            else:  # not back yet: ask again shortly
                self._deadlines.add(RESTART_PROBE, lambda: self._probe(index, left - 1))

        try:  # retried by Ray until the new incarnation answers
            ready = actor.ready.options(max_task_retries=-1).remote().future()
        except Exception:  # the pool is shutting down, or the cluster is gone
            with self._lock:
                self._down.discard(index)
            return
        ready.add_done_callback(answered)

    def shutdown(self, *, timeout: float | None = None) -> None:
        """Kill the actors (no restart). Idempotent."""
        actors, self._actors = self._actors, []
        for actor in actors:
            with contextlib.suppress(Exception):
                self._ray.kill(actor, no_restart=True)
