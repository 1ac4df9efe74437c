"""The runtime: the root supervision tree of every zixir-actors service.

Example:
    >>> import tempfile, zixir_actors
    >>> with zixir_actors.start(data_dir=tempfile.mkdtemp()) as rt:
    ...     zixir_actors.start() is rt          # idempotent, like a GenServer
    True

The tree (see DESIGN.md)::

    zixir.root          Supervisor, one_for_one
    ├── zixir.metrics   MetricsRegistry
    ├── zixir.store     CheckpointStore (owns the LMDB environment)
    ├── zixir.caches    DynamicSupervisor of Cache actors
    ├── zixir.sandboxes SandboxPool of worker processes
    ├── zixir.workflows DynamicSupervisor of WorkflowRun actors
    └── zixir.streams   DynamicSupervisor of pipelines

One process owns a data directory at a time: `start()` takes an exclusive
lock on ``<data_dir>/runtime.lock`` and a second process gets
`DataDirLockedError` naming the holder's pid. (LMDB itself would let several
processes share the environment, but workflow runs and cache write-behind
assume a single owner.) Read-only CLI commands open the store without the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from supervisors import ChildSpec, NamedRef, Supervisor, SupervisorRef, ref
from zixir_actors._lmdb import DATA_DIR_ENV, DEFAULT_DATA_DIR, resolve_data_dir
from zixir_actors._runtimes import new_runtime_id
from zixir_actors.errors import (
    DataDirError,
    DataDirLockedError,
    NotStartedError,
    RuntimeConflictError,
)

__all__ = [
    "DATA_DIR_ENV",
    "DEFAULT_DATA_DIR",
    "ROOT_NAME",
    "SERVICE_NAMES",
    "Runtime",
    "current",
    "resolve_data_dir",
    "schedules",
    "start",
    "stop",
]

ROOT_NAME = "zixir.root"
SERVICE_NAMES = ("zixir.metrics", "zixir.store", "zixir.caches", "zixir.sandboxes",
                 "zixir.workflows", "zixir.streams", "zixir.timers", "zixir.lease",
                 "zixir.queues", "zixir.scheduler")
ROOT_MAX_RESTARTS = 10
ROOT_MAX_SECONDS = 60.0
DEFAULT_STOP_TIMEOUT = 30.0

_lock = threading.RLock()
_current: Runtime | None = None


def _prepare(path: Path, *, exclusive: bool = False) -> int:
    """Create the directory (owner-only) and take its lock; returns the lock's fd.

    Runtimes share a directory with a shared lock; `exclusive` takes it alone
    (and fails while any other runtime is on it)."""
    if path.exists() and not path.is_dir():
        raise DataDirError(str(path), "exists and is not a directory")
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise DataDirError(str(path), f"cannot create it: {exc.strerror or exc}") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise DataDirError(str(path), "is not writable")
    lock_path = path / "runtime.lock"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise DataDirError(str(path), f"cannot open {lock_path.name}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            pid = int(os.pread(fd, 32, 0).decode().strip() or 0) or None
        except (OSError, ValueError):
            pid = None
        os.close(fd)
        raise DataDirLockedError(str(path), pid) from None
    if exclusive:  # the pid tells a refused runtime who holds the directory alone
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _service_specs(path: Path, *, metrics_port: int | None, sandbox_workers: int | None,
                   options: dict[str, Any], runtime_id: str,
                   started_at: float) -> list[ChildSpec]:
    from zixir_actors import (
        _runtimes,
        cache,
        checkpoint,
        observability,
        queue,
        sandbox,
        schedule,
        stream,
        workflow,
    )

    metrics_opts: dict[str, Any] = dict(options.get("metrics", {}))
    if metrics_port is not None:
        metrics_opts["port"] = metrics_port
    sandbox_opts: dict[str, Any] = dict(options.get("sandbox", {}))
    if sandbox_workers is not None:
        sandbox_opts["size"] = sandbox_workers
    return [
        observability.child_spec(**metrics_opts),
        checkpoint.child_spec(path, **options.get("store", {})),
        cache.child_spec(data_dir=path, **options.get("cache", {})),
        sandbox.child_spec(**sandbox_opts),
        workflow.child_spec(**options.get("workflow", {})),
        stream.child_spec(**options.get("stream", {})),
        workflow.timers_child_spec(),
        _runtimes.child_spec(runtime_id=runtime_id, started_at=started_at,
                             find_workflow=workflow.find_workflow,
                             defined=workflow.defined_workflows, resume=_continue_runs,
                             **options.get("lease", {})),
        queue.child_spec(**options.get("queues", {})),
        schedule.child_spec(**options.get("scheduler", {})),
        *_dashboard_specs(options),
    ]


def _dashboard_specs(options: dict[str, Any]) -> list[ChildSpec]:
    """``zixir.dashboard`` at the end of the tree, only when a port was asked for."""
    opts = dict(options.get("dashboard", {}))
    if opts.get("port") is None:
        return []
    from zixir_actors import dashboard

    return [dashboard.child_spec(**opts)]


def _continue_runs(records: list[Any]) -> list[Any]:
    """Continue runs this runtime has claimed (their owner now says so)."""
    from zixir_actors.workflow import find_workflow

    handles = []
    for record in records:
        wf = find_workflow(record.workflow)
        if wf is None:
            continue
        try:
            handles.append(wf.start(dict(record.inputs), run_id=record.run_id))
        except Exception as exc:  # one run that cannot continue must not stop the others
            from zixir_actors.observability import logger

            logger.bind(service="runtime", run_id=record.run_id).error(
                "cannot continue a run", error=str(exc))
    return handles


class Runtime:
    """A running root tree. Use it as a context manager, or call `stop()`.

    Attributes:
        data_dir: where all state lives (one LMDB environment).
        supervisor: the root `SupervisorRef` (``zixir.root``).
    """

    def __init__(self, data_dir: Path, supervisor: SupervisorRef, lock_fd: int,
                 runtime_id: str = "") -> None:
        self.id = runtime_id
        """``host:pid:start-ms``: the owner its runs record, the key of its lease."""
        self.data_dir = data_dir
        self.supervisor = supervisor
        self._lock_fd: int | None = lock_fd
        self._executor_set = False
        self.resumed: list[Any] = []
        """Handles of the interrupted runs that `start(resume_runs=True)` continued."""

    def __repr__(self) -> str:
        state = "running" if self.is_alive() else "stopped"
        return f"<Runtime {self.data_dir} {state}>"

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def is_alive(self) -> bool:
        return self._lock_fd is not None and self.supervisor.is_alive()

    def service(self, name: str) -> NamedRef:
        """A stable reference to a service (``"store"`` or ``"zixir.store"``)."""
        full = name if name.startswith("zixir.") else f"zixir.{name}"
        if full not in SERVICE_NAMES:
            raise NotStartedError(name)
        return ref(full)

    @property
    def metrics_port(self) -> int | None:
        """The port `/metrics` is served on, when started with `metrics_port`."""
        try:
            port = ref("zixir.metrics", wait=1.0).proxy().port().get(timeout=5.0)
        except Exception:
            return None
        return port if isinstance(port, int) else None

    @property
    def dashboard_port(self) -> int | None:
        """The port the dashboard is served on, when started with `dashboard_port`."""
        from supervisors import whereis

        found = whereis("zixir.dashboard")
        if found is None:
            return None
        try:
            port = found.ask("port", timeout=5.0)
        except Exception:
            return None
        return port if isinstance(port, int) else None

    def interrupted_runs(self) -> list[Any]:
        """Stored runs still marked running that no actor of this process executes:
        their process died or the runtime was stopped in the middle of them."""
        from zixir_actors._runtimes import live_runtimes
        from zixir_actors.checkpoint import connect
        from zixir_actors.workflow import running_here

        store = connect()
        live = {info.id for info in live_runtimes(store)} - {self.id}
        return [r for r in store.list_runs() if r.status in ("running", "parked", "interrupted")
                and not running_here(r.run_id) and r.owner not in live]

    def resume_interrupted(self) -> list[Any]:
        """Continue every interrupted run whose workflow is defined in this process.

        Committed steps are skipped; the steps that were in flight run again.
        Returns the `RunHandle` of each resumed run (runs of workflows this
        process does not define are left for `zixir runs resume`).

        A run that cannot be continued is logged and skipped, never fatal; one
        whose checkpoints are damaged is marked ``"failed"`` (with the error)
        so that later starts do not try it again. Corrupt run headers are
        listed with status ``"corrupt"`` and never resumed.
        """
        import dataclasses

        from zixir_actors.checkpoint import connect
        from zixir_actors.errors import CorruptBlobError
        from zixir_actors.observability import logger
        from zixir_actors.workflow import find_workflow

        handles = []
        runs = [r for r in self.interrupted_runs() if find_workflow(r.workflow) is not None]
        # Claimed in one transaction: a runtime starting beside this one, or
        # taking over the same dead runtime, cannot continue the same run.
        claimed = connect().claim_runs([r.run_id for r in runs], owner=self.id,
                                       allowed={r.owner for r in runs},
                                       statuses=("running", "parked", "interrupted"))
        for record in claimed:
            wf = find_workflow(record.workflow)
            if wf is None:
                continue
            try:
                handles.append(wf.start(dict(record.inputs), run_id=record.run_id))
            except Exception as exc:
                logger.bind(workflow=record.workflow, run_id=record.run_id).error(
                    "cannot resume an interrupted run", error=f"{type(exc).__name__}: {exc}")
                if isinstance(exc, CorruptBlobError):
                    with contextlib.suppress(Exception):
                        connect().save_run(dataclasses.replace(
                            record, status="failed", error=f"cannot resume: {exc}",
                            updated_at=time.time()))
        return handles

    def tree(self, *, timeout: float | None = 10.0) -> str:
        """The running supervision tree, rendered for humans."""
        return self.supervisor.tree(timeout=timeout)

    def stop(self, *, timeout: float | None = DEFAULT_STOP_TIMEOUT) -> None:
        """Stop every service in reverse start order and release the data directory.

        Workflow runs in flight stay checkpointed and can be resumed after the
        next `start()`. Stopping twice is a no-op.
        """
        global _current
        with _lock:
            if self._lock_fd is None:
                return
            from zixir_actors.workflow import interrupt_parked, shutdown_loop

            try:
                interrupt_parked("the runtime stopped")
                if self.supervisor.is_alive():
                    self.supervisor.stop(timeout=timeout)
            finally:
                shutdown_loop()
                os.close(self._lock_fd)
                self._lock_fd = None
                if self._executor_set:
                    from zixir_actors.executor import reset

                    reset()
                if _current is self:
                    _current = None


def current() -> Runtime | None:
    """The running runtime of this process, or None."""
    runtime = _current
    return runtime if runtime is not None and runtime.is_alive() else None


def start(data_dir: str | os.PathLike[str] | None = None, *, metrics_port: int | None = None,
          log_json: bool | None = None, log_level: str = "INFO",
          sandbox_workers: int | None = None, resume_runs: bool = True,
          executor: Any = None, ray_address: str | None = None, exclusive: bool = False,
          dashboard_port: int | None = None, **options: Any) -> Runtime:
    """Start the root tree, or return the one already running (idempotent).

    Args:
        data_dir: where state lives; default ``$ZIXIR_DATA_DIR`` or ``./.zixir``.
            Created with owner-only permissions.
        metrics_port: serve Prometheus ``/metrics`` on 127.0.0.1 at this port
            (0 picks a free one; see `Runtime.metrics_port`). None: no server.
        log_json: configure logging (True: JSON lines, False: human-readable);
            None leaves logging as the application set it.
        log_level: level for `log_json`.
        sandbox_workers: warm worker processes in the sandbox pool.
        resume_runs: continue the runs that were in flight when the previous
            runtime on this data directory stopped or died, for the workflows
            defined in this process by now (see `Runtime.resume_interrupted`).
        executor: where workflow steps, concurrent stream stages, `pmap`,
            `parallel` and sandboxed calls run unless they say otherwise:
            ``"local"`` (default), ``"ray"`` or an `Executor` (see
            `zixir_actors.executor`). The orchestration (this tree, the
            checkpoints, retries, metrics) stays in this process.
        ray_address: the Ray cluster for ``"ray"`` (``"host:port"``,
            ``"ray://..."``; implies ``executor="ray"``). None: join this
            process's Ray instance or start a local one.
        dashboard_port: serve the web dashboard from this process at this port
            (``zixir.dashboard``, the last child of the tree; 0 picks a free
            one, see `Runtime.dashboard_port`; needs the ``dashboard`` extra).
            ``dashboard={"host": ..., "token": ...}`` binds elsewhere than
            127.0.0.1, which needs a token. None: no dashboard.
        exclusive: hold the directory alone (default False: any number of
            processes on this machine share it; each holds a lease, and a
            live one takes over the runs of one that died).
        **options: per-service options (``lease``: ``{"lease": 5.0,
            "renew_every": 1.0}``; ``queues``: ``{"max_local": 64}``;
            ``scheduler``: ``{"clock": FakeClock()}``); ``metrics``, ``store``, ``cache``,
            ``sandbox``, ``workflow``, ``stream`` dicts passed to their `child_spec`.

    Raises:
        DataDirError: the directory cannot be created or written.
        DataDirLockedError: `exclusive` and another runtime is on it, or another
            process holds it exclusively.
        RuntimeConflictError: this process runs a runtime on another directory.
        ChildStartError: a service failed to start (its cause attached).
        ExecutorUnavailableError: ``executor="ray"`` without Ray installed
            (names the extra: ``pip install 'zixir-actors[ray]'``).
        ClusterConnectionError: the Ray cluster cannot be reached.
    """
    global _current
    with _lock:
        running = current()
        if running is not None:
            if data_dir is not None and resolve_data_dir(data_dir) != running.data_dir:
                raise RuntimeConflictError(str(running.data_dir), str(resolve_data_dir(data_dir)))
            return running
        path = resolve_data_dir(data_dir)
        if log_json is not None:
            from zixir_actors.observability import configure_logging

            configure_logging(json=log_json, level=log_level)
        fd = _prepare(path, exclusive=exclusive)
        started_at = time.time()
        runtime_id = new_runtime_id(started_at)
        chosen = executor if executor is not None else "ray" if ray_address is not None else None
        try:
            if chosen is not None:
                from zixir_actors.executor import configure

                configure(chosen, ray_address=ray_address)
            if dashboard_port is not None:
                options["dashboard"] = {**options.get("dashboard", {}), "port": dashboard_port}
            specs = _service_specs(path, metrics_port=metrics_port,
                                   sandbox_workers=sandbox_workers, options=options,
                                   runtime_id=runtime_id, started_at=started_at)
            root = Supervisor.start_link(specs, strategy="one_for_one",
                                         max_restarts=ROOT_MAX_RESTARTS,
                                         max_seconds=ROOT_MAX_SECONDS, name=ROOT_NAME)
        except BaseException:
            if chosen is not None:
                from zixir_actors.executor import reset

                reset()
            os.close(fd)
            raise
        runtime = _current = Runtime(path, root, fd, runtime_id)
        runtime._executor_set = chosen is not None
        _stop_before_thread_join()
        if resume_runs:
            try:
                runtime.resumed = runtime.resume_interrupted()
            except BaseException:  # a start() that raises leaves nothing running
                runtime.stop()
                raise
        return runtime


_exit_hook_installed = False


def _stop_before_thread_join() -> None:
    # Actor threads are not daemons, so a script that ends without stop() would
    # wait for them forever. `atexit` runs too late (after the interpreter joins
    # non-daemon threads); threading's own exit hooks run before that join, as
    # concurrent.futures relies on.
    global _exit_hook_installed
    if _exit_hook_installed:
        return
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        register(stop)
        _exit_hook_installed = True


def stop(*, timeout: float | None = DEFAULT_STOP_TIMEOUT) -> None:
    """Stop the running runtime, if any."""
    with _lock:
        runtime = _current
    if runtime is not None:
        runtime.stop(timeout=timeout)


def schedules(store: Any = None) -> list[Any]:
    """Every schedule stored in the data directory (`zixir_actors.schedule.Schedule`).

    Raises:
        NotStartedError: no store given and no runtime running.
    """
    from zixir_actors.schedule import schedules as stored

    return stored(store)
