"""`WorkerPool`: warm worker processes, checked out per call, and the limit monitor.

The pool is thread-safe and does its work in the calling thread: a call takes
an idle worker, sends the pickled call over a Unix socket and waits for the
answer with the hard timeout. One monitor thread per pool samples the RSS (of
the worker and every process under it) and CPU of the calls that have memory
or CPU limits (every `SAMPLE_INTERVAL` seconds, only while such calls run) and
kills a worker's tree when it breaks them; the peak RSS the worker reports
with each answer is checked too, so a call shorter than a sample is not missed.
Workers are forked by a small helper process started from a fresh
interpreter, so the cost of a new process does not grow with the size of the
application process.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psutil

from zixir_actors._clock import SYSTEM_CLOCK, Clock
from zixir_actors.errors import ConfigError, SandboxClosedError, SandboxError
from zixir_actors.result import Err, Ok, Result
from zixir_actors.sandbox import _worker
from zixir_actors.sandbox._limits import Limits
from zixir_actors.sandbox._process import (
    KILL_WAIT,
    LEARNED,
    Worker,
    Zygote,
    nesting_level,
    tree_rss,
    wait_gone,
)
from zixir_actors.sandbox._telemetry import telemetry

__all__ = [
    "DEFAULT_POOL_SIZE",
    "SAMPLE_INTERVAL",
    "PoolStats",
    "WorkerPool",
]

DEFAULT_POOL_SIZE = max(1, os.cpu_count() or 1)
"""Warm workers a pool keeps when none is given (one per core)."""

SAMPLE_INTERVAL = 0.005
"""Seconds between two RSS/CPU samples of a monitored call."""

CPU_TIME_GRACE = 0.5
"""CPU seconds over `cpu_time` before the monitor kills: a backstop for code stuck in C,
since the worker's own CPU timer fires first (the monitor's count also includes
unpickling the call, imports included)."""

@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of a pool: warm idle workers, workers in use, restarts so far."""

    name: str
    idle: int
    busy: int
    restarts: int
    calls: int


class _Call:
    """One call in flight: what the monitor samples and what it decided."""

    __slots__ = ("cpu0", "cpu_mark", "cpu_peak", "cpu_used", "due", "limits", "peak", "sent",
                 "started", "verdict", "worker")

    def __init__(self, worker: Worker, limits: Limits, started: float) -> None:
        self.worker = worker
        self.limits = limits
        self.started = started
        self.sent = started
        self.verdict: tuple[str, str, float | None, float | None] | None = None
        self.peak = 0
        self.cpu0 = 0.0
        self.cpu_mark: tuple[float, float] | None = None
        self.cpu_peak: float | None = None
        self.cpu_used: float | None = None
        self.due = 0.0


def _monitored(limits: Limits) -> bool:
    return limits.memory is not None or limits.cpu_time is not None \
        or limits.max_cpu_percent is not None


class WorkerPool:
    """Thread-safe pool of sandbox worker processes (the engine behind `Sandbox`).

    Example:
        >>> pool = WorkerPool(size=1)
        >>> pool.call(pow, (2, 10), {}, Limits(timeout=10))
        Ok(value=1024)
        >>> pool.close()

    Args:
        size: warm workers kept idle between calls (`DEFAULT_POOL_SIZE`).
        spares: workers the helper process keeps forked in advance, so a new
            or fresh process is a hand-over instead of a fork.
        name: used in logs, metrics and errors.
        sample_interval: seconds between RSS/CPU samples of monitored calls.
        learn_imports: have the helper process import the module of each
            function called (once per module), so later workers, fresh ones
            included, do not import it again; helpers started later in this
            process preload every module learned so far. Like a forkserver
            preload, this runs the module's import in the helper: turn it off
            for modules that start threads or open resources when imported.
        clock: monotonic clock for durations and the CPU-percent windows.

    Raises:
        ConfigError: `size`, `spares` or `sample_interval` out of range.
    """

    def __init__(self, *, size: int = DEFAULT_POOL_SIZE, spares: int = 1,
                 name: str = "sandbox", sample_interval: float = SAMPLE_INTERVAL,
                 learn_imports: bool = True, clock: Clock = SYSTEM_CLOCK) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ConfigError("size", size, "expected a non-negative number of warm workers")
        if isinstance(spares, bool) or not isinstance(spares, int) or spares < 0:
            raise ConfigError("spares", spares, "expected a non-negative number of spare workers")
        if not sample_interval > 0:
            raise ConfigError("sample_interval", sample_interval, "expected positive seconds")
        self.name = name
        self.size = size
        self._interval = sample_interval
        self._clock = clock
        self._zygote = Zygote(name, spares, learn_imports)
        # A pool dropped without close(): ending the helper ends every worker
        # it forked (it kills them when its control socket closes).
        weakref.finalize(self, self._zygote.stop, timeout=1.0)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._idle: list[Worker] = []
        self._busy: set[Worker] = set()
        self._watched: set[_Call] = set()
        self._monitor: threading.Thread | None = None
        self._monitor_idle = False
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        self._learn = learn_imports
        self._learned: set[str] = set()
        self.restarts = 0
        self.calls = 0

    # --- lifecycle ------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def start(self, *, prewarm: bool = True) -> None:
        """Start the helper process and, with `prewarm`, fill the pool with `size` workers.

        Raises:
            SandboxClosedError: the pool was closed.
        """
        self._check_open()
        while prewarm:
            with self._lock:
                if len(self._idle) + len(self._busy) >= self.size:
                    return
            worker = self._zygote.spawn(fresh=False)
            self._checkin(worker)

    def close(self, *, timeout: float | None = 5.0) -> None:
        """Kill every worker and the helper process; wait for in-flight async calls.

        Idempotent. Calls still running end as ``Err(kind="crashed")``.
        """
        with self._cond:
            if self._closed:
                return
            self._closed = True
            idle, busy = list(self._idle), list(self._busy)
            self._idle.clear()
            self._cond.notify_all()
        procs = [proc for worker in (*idle, *busy) for proc in worker.signal_tree()]
        for worker in idle:
            worker.sock.close()
        # Busy callers wake up with EOF and close their sockets themselves.
        wait_gone(procs, timeout=KILL_WAIT)
        if self._monitor is not None:
            self._monitor.join(timeout)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._zygote.stop(timeout=timeout)

    def stats(self) -> PoolStats:
        """A snapshot of idle and busy workers, restarts and calls so far."""
        with self._lock:
            return PoolStats(self.name, len(self._idle), len(self._busy), self.restarts,
                             self.calls)

    def worker_pids(self) -> list[int]:
        """Process ids of the pool's current workers (idle and busy)."""
        with self._lock:
            return [w.pid for w in (*self._idle, *self._busy)]

    def _check_open(self) -> None:
        if self._closed:
            raise SandboxClosedError(self.name)

    # --- workers --------------------------------------------------------------

    def _checkout(self, fresh: bool) -> Worker:
        self._check_open()
        if not fresh:
            with self._lock:
                while self._idle:
                    worker = self._idle.pop()
                    if worker.idle_ok():
                        self._busy.add(worker)
                        return worker
                    dead = worker
                    break
                else:
                    dead = None
            if dead is not None:
                self._replace(dead, "died while idle", None, None)
        worker = self._zygote.spawn(fresh=fresh)
        with self._lock:
            if self._closed:
                worker.retire()
                raise SandboxClosedError(self.name)
            self._busy.add(worker)
        return worker

    def _checkin(self, worker: Worker) -> None:
        with self._lock:
            self._busy.discard(worker)
            if self._closed or worker.fresh or worker.dead or len(self._idle) >= self.size:
                retire = True
            else:
                self._idle.append(worker)
                retire = False
        if retire:
            worker.retire()

    def _replace(self, worker: Worker, reason: str, limit: Any, measured: Any) -> None:
        """Kill a worker that broke a limit or died; count it as a restart if it was warm.

        The replacement is the helper's pre-forked spare, handed over by the
        next checkout, so the failing call returns without waiting for it.
        """
        worker.kill_tree()
        worker.sock.close()
        with self._lock:
            self._busy.discard(worker)
            if self._closed:
                return
            if not worker.fresh:
                self.restarts += 1
            count = self.restarts
        telemetry.kill(self.name, reason, worker.pid, limit, measured)
        if not worker.fresh:
            telemetry.restart(self.name, reason, count)

    # --- monitor --------------------------------------------------------------

    def _watch(self, call: _Call) -> None:
        call.due = time.monotonic() + self._interval
        with self._cond:
            self._watched.add(call)
            if self._monitor is None:
                self._monitor = threading.Thread(target=self._monitor_loop,
                                                 name=f"zixir-sandbox-monitor-{self.name}",
                                                 daemon=True)
                self._monitor.start()
            elif self._monitor_idle:
                # A monitor in a timed wait picks the call up at its next tick.
                self._cond.notify()

    def _unwatch(self, call: _Call) -> None:
        with self._lock:
            self._watched.discard(call)

    def _monitor_loop(self) -> None:
        while True:
            with self._cond:
                while not self._watched and not self._closed:
                    self._monitor_idle = True
                    self._cond.wait()
                self._monitor_idle = False
                if self._closed:
                    return
                calls = list(self._watched)
            now = time.monotonic()
            next_due = now + self._interval
            for call in calls:
                if call.verdict is not None:
                    continue
                if call.due <= now:
                    self._sample(call)
                    call.due = now + self._interval
                next_due = min(next_due, call.due)
            with self._cond:
                if self._closed:
                    return
                self._cond.wait(max(0.0, next_due - time.monotonic()))

    def _sample(self, call: _Call) -> None:
        limits = call.limits
        cpu_limited = limits.cpu_time is not None or limits.max_cpu_percent is not None
        memory = limits.memory_bytes
        try:
            proc = call.worker.process()
            with proc.oneshot():
                rss = proc.memory_info().rss
                times = proc.cpu_times() if cpu_limited else None
            if memory is not None:
                rss = tree_rss(proc, rss)
        except psutil.Error:
            return
        call.peak = max(call.peak, rss)
        if memory is not None and rss > memory:
            self._breach(call, "memory", f"resident memory of the call's processes {rss} B "
                         f"over the {memory} B limit", memory, rss)
            return
        if times is None:
            return
        used = times.user + times.system
        now = self._clock.monotonic()
        if call.cpu_mark is None:
            # First sample: the CPU count starts here (the worker's own timer
            # covers the call from its first instruction).
            call.cpu0, call.cpu_mark = used, (now, used)
            return
        call.cpu_used = used - call.cpu0
        if limits.cpu_time is not None and call.cpu_used > limits.cpu_time + CPU_TIME_GRACE:
            self._breach(call, "cpu", f"used {call.cpu_used:.3f} CPU s of {limits.cpu_time}",
                         limits.cpu_time, call.cpu_used)
            return
        mark_time, mark_cpu = call.cpu_mark
        if now - mark_time >= limits.cpu_window:
            percent = 100.0 * (used - mark_cpu) / (now - mark_time)
            call.cpu_mark = (now, used)
            call.cpu_peak = max(call.cpu_peak or 0.0, percent)
            telemetry.cpu_sample(self.name, percent)
            if limits.max_cpu_percent is not None and percent > limits.max_cpu_percent:
                self._breach(call, "cpu", f"CPU use {percent:.0f}% over the "
                             f"{limits.max_cpu_percent}% limit", limits.max_cpu_percent, percent)

    def _breach(self, call: _Call, kind: str, message: str, limit: float | None,
                measured: float | None) -> None:
        with self._lock:
            # Only while the call is in flight: once its caller unwatched it,
            # the worker may already serve another call.
            if call.verdict is not None or call not in self._watched:
                return
            call.verdict = (kind, message, limit, measured)
            # The caller blocked on the socket wakes up with EOF once the process is gone;
            # it waits for the tree to be reaped (`Worker.kill_tree`).
            procs = call.worker.signal_tree()
        wait_gone(procs, timeout=KILL_WAIT, reaped=[])

    # --- calls ----------------------------------------------------------------

    def call(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
             limits: Limits, *, fresh: bool = False) -> Result[Any, SandboxError]:
        """Run `fn(*args, **kwargs)` in a worker under `limits`; never raises for the call.

        Raises:
            SandboxClosedError: the pool was closed before the call started.
        """
        started = self._clock.monotonic()
        level, ceiling = nesting_level()
        allowed = min(limits.max_nesting, ceiling) if ceiling is not None else limits.max_nesting
        if level >= allowed:
            return self._finish(started, Err(SandboxError(
                "depth", f"sandboxed calls nested {level + 1} deep; max_nesting is {allowed}",
                limit=allowed, measured=level + 1)), None)
        config = {"soft_timeout": limits.soft_timeout, "cpu_time": limits.cpu_time,
                  "max_depth": limits.max_depth, "memory": limits.memory,
                  "max_nesting": allowed}
        try:
            data = _worker.dumps((config, fn, args, kwargs))
        except Exception as exc:
            return self._finish(started, Err(SandboxError(
                "unpicklable", f"cannot pickle the call's function or arguments: "
                f"{type(exc).__name__}: {exc}", cause=exc)), None)
        try:
            worker = self._checkout(fresh)
        except (OSError, EOFError) as exc:
            return self._finish(started, Err(SandboxError(
                "crashed", f"could not start a worker process: {type(exc).__name__}: {exc}",
                cause=exc)), None)
        if self._learn:
            module = getattr(fn, "__module__", None)
            if module and module not in self._learned:
                self._learned.add(module)
                if module != "__main__" and module in sys.modules:
                    LEARNED.add(module)
                    self._zygote.preload(module)
        call = _Call(worker, limits, started)
        monitored = _monitored(limits)
        if monitored:
            self._watch(call)
        hard = limits.hard_timeout
        # Time limits run from the hand-over to the worker, like the worker's own timers:
        # waiting for a new worker to start is not the call's time.
        call.sent = self._clock.monotonic()
        try:
            reply = self._exchange(worker, data, None if hard is None else call.sent + hard)
        finally:
            if monitored:
                self._unwatch(call)
        return self._conclude(call, reply)

    def _exchange(self, worker: Worker, data: bytes, deadline: float | None) -> Any:
        """Send the call and wait for the answer: bytes, or an exception instance."""
        sock = worker.sock

        def arm() -> None:
            if deadline is not None:
                left = deadline - self._clock.monotonic()
                if left <= 0:
                    raise TimeoutError("deadline passed")
                sock.settimeout(left)

        try:
            if deadline is None and sock.gettimeout() is not None:
                sock.settimeout(None)
            arm()
            _worker.send_frame(sock, data)
            arm()
            return _worker.recv_frame(sock)
        except TimeoutError as exc:
            return exc
        except (OSError, EOFError) as exc:
            return exc

    def _conclude(self, call: _Call, reply: Any) -> Result[Any, SandboxError]:
        worker = call.worker
        limits = call.limits
        duration = self._clock.monotonic() - call.started
        worker.calls += 1
        peak = call.peak or None
        if call.verdict is not None:
            kind, why, broken, value = call.verdict
            self._replace(worker, kind, broken, value)
            return self._finish(call.started, Err(SandboxError(
                kind, why, limit=broken, measured=value, peak_memory=peak,
                cpu_time=call.cpu_used, cpu_percent=call.cpu_peak, duration=duration)), peak)
        if isinstance(reply, TimeoutError):
            hard = limits.hard_timeout
            ran = self._clock.monotonic() - call.sent
            self._replace(worker, "timeout", hard, ran)
            return self._finish(call.started, Err(SandboxError(
                "timeout", f"no result within the {hard}s time limit; worker killed",
                limit=hard, measured=ran, peak_memory=peak, cpu_percent=call.cpu_peak,
                duration=duration)), peak)
        if isinstance(reply, BaseException):
            self._replace(worker, "crashed", None, None)
            return self._finish(call.started, Err(SandboxError(
                "crashed", f"worker process {worker.pid} died during the call "
                f"({type(reply).__name__})", peak_memory=peak, duration=duration)), peak)
        try:
            status, payload, cpu_time, peak_rss, clean = _worker.loads(reply)
        except Exception as exc:
            self._checkin(worker)
            return self._finish(call.started, Err(SandboxError(
                "unpicklable", f"cannot unpickle the result here: {type(exc).__name__}: {exc}",
                cause=exc, duration=duration)), peak)
        peak = max(peak or 0, peak_rss or 0) or None
        memory = limits.memory_bytes
        if memory is not None and peak_rss and peak_rss > memory \
                and status not in ("timeout", "cpu", "memory"):
            # Checked when every call ends, so one shorter than a sampling interval counts too.
            self._replace(worker, "memory", memory, peak_rss)
            return self._finish(call.started, Err(SandboxError(
                "memory", f"peak resident memory {peak_rss} B over the {memory} B limit "
                "(checked when the call ended; its outcome was discarded)",
                limit=memory, measured=peak_rss, peak_memory=peak, cpu_time=cpu_time,
                cpu_percent=call.cpu_peak, duration=duration)), peak)
        if status == "ok":
            self._release(worker, clean)
            return self._finish(call.started, Ok(payload), peak)
        remote_type, message, text, pickled = payload
        cause = None
        if pickled is not None:
            with contextlib.suppress(Exception):
                cause = _worker.loads(pickled)
        limit: float | None = None
        measured: float | None = None
        if status == "timeout":
            limit, measured = limits.soft_timeout, self._clock.monotonic() - call.sent
            message = f"soft time limit of {limit}s reached: {message}"
        elif status == "cpu":
            limit, measured = limits.cpu_time, cpu_time
        elif status == "memory":
            limit, measured = limits.memory_bytes, peak
            message = f"allocation failed under the {limit} B memory limit ({remote_type})" \
                + (f": {message}" if message else "")
        elif status == "depth":
            if isinstance(cause, SandboxError):
                limit, measured = cause.limit, cause.measured
                message = cause.message
            else:
                limit = limits.max_depth
                message = f"call depth over max_depth={limit}: {message}" if limit else message
        if status in ("timeout", "cpu", "memory"):
            self._replace(worker, status, limit, measured)
        else:
            if status == "depth":
                telemetry.breach(self.name, status, limit, measured)
            self._release(worker, clean)
        return self._finish(call.started, Err(SandboxError(
            status, message, limit=limit, measured=measured, remote_type=remote_type,
            remote_traceback=text or None, cause=cause, peak_memory=peak, cpu_time=cpu_time,
            cpu_percent=call.cpu_peak, duration=duration)), peak)

    def _release(self, worker: Worker, clean: bool) -> None:
        """Back to the pool after a call, unless processes it started would not die."""
        if clean:
            self._checkin(worker)
        else:
            self._replace(worker, "leftover processes", None, None)

    def _finish(self, started: float, result: Result[Any, SandboxError],
                peak: int | None) -> Result[Any, SandboxError]:
        with self._lock:
            self.calls += 1
        duration = self._clock.monotonic() - started
        if isinstance(result, Ok):
            telemetry.call("ok", duration, peak)
        else:
            telemetry.call(result.error.kind, duration, peak, result.error)
        return result

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
               limits: Limits, *, fresh: bool = False) -> Any:
        """Start `call` on the pool's async thread; returns a `concurrent.futures.Future`.

        Raises:
            SandboxClosedError: the pool is closed.
        """
        import contextvars

        with self._lock:
            self._check_open()
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=max(4, 2 * self.size),
                    thread_name_prefix=f"zixir-sandbox-{self.name}")
            executor = self._executor
        ctx = contextvars.copy_context()
        return executor.submit(ctx.run, self.call, fn, args, kwargs, limits, fresh=fresh)

