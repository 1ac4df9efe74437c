"""The `MetricsRegistry` actor (`zixir.metrics`): runtime and process metrics.

Example:
    >>> from supervisors import Supervisor
    >>> from zixir_actors.observability import child_spec, metrics
    >>> root = Supervisor.start_link([child_spec(interval=1.0)], name="doc.root")
    >>> # ... actors restart, handle messages; the tree shows up in metrics:
    >>> b"zixir_process_resident_memory_bytes" in metrics.exposition()
    True
    >>> root.stop()

While it runs, the actor:

- listens to supervision events: `ChildRestarted` counts
  ``zixir_actor_restarts_total{supervisor,child}``, `IntensityExceeded`
  counts ``zixir_supervisor_escalations_total{supervisor}``, a crash
  (`ChildExited` with an exception) counts ``zixir_actor_crashes_total``;
- installs the supervised-actor message hook: ``zixir_actor_messages_total
  {actor,outcome}`` and ``zixir_actor_message_seconds{actor}`` per actor
  (its registered name, else its class name). Label children are bound once
  per actor and a message costs one `deque.append` in the actor's thread (no
  log line): the updates land before every collection of the registry (a
  scrape, `Metrics.sample`, `Metrics.exposition`) and on every tick;
- samples on a timer (every `interval` seconds, never per message): mailbox
  depth per named actor, process RSS, CPU and threads (psutil), and closes
  spans whose thread is gone;
- optionally serves ``/metrics`` (`port=`).

Hooks and listeners are installed when the actor starts and removed when it
stops; importing this module installs nothing.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil
import pykka

from supervisors import (
    ChildExited,
    ChildRestarted,
    ChildSpec,
    IntensityExceeded,
    SupervisedActor,
    add_listener,
    name_of,
    registered,
    remove_listener,
    set_message_hook,
)
from zixir_actors._clock import SYSTEM_CLOCK, Clock
from zixir_actors.errors import ConfigError
from zixir_actors.observability._metrics import Metrics
from zixir_actors.observability._metrics import metrics as default_metrics
from zixir_actors.observability._server import MetricsServer
from zixir_actors.observability._tracing import resync_wall_clock, sweep_orphan_spans

__all__ = ["DEFAULT_SAMPLE_INTERVAL", "METRICS_NAME", "MetricsRegistry", "Sample", "child_spec"]

METRICS_NAME = "zixir.metrics"
"""The registered name of the metrics actor in the runtime tree."""

DEFAULT_SAMPLE_INTERVAL = 5.0
"""Seconds between two samples of mailbox depths and process RSS/CPU."""

FLUSH_AT = 10_000
"""Queued message measurements that make the metrics actor fold them in at once."""


@dataclass(frozen=True, slots=True)
class Sample:
    """What one timer tick measured (returned by `MetricsRegistry.sample`)."""

    time: float
    rss_bytes: int
    cpu_percent: float
    threads: int
    children_rss_bytes: int
    mailbox_depths: dict[str, int]
    spans_closed: int


class _RuntimeMetrics:
    """The built-in `zixir_*` metrics, created on the registry the actor owns."""

    def __init__(self, m: Metrics) -> None:
        self.restarts = m.counter("zixir_actor_restarts_total",
                                  "Children restarted by a supervisor.", ("supervisor", "child"))
        self.crashes = m.counter("zixir_actor_crashes_total",
                                 "Supervised children that exited with an exception.",
                                 ("supervisor", "child"))
        self.escalations = m.counter("zixir_supervisor_escalations_total",
                                     "Supervisors that exceeded their restart intensity.",
                                     ("supervisor",))
        self.messages = m.counter("zixir_actor_messages_total",
                                  "Messages handled by supervised actors.", ("actor", "outcome"))
        self.seconds = m.histogram("zixir_actor_message_seconds",
                                   "Time supervised actors spent handling a message.",
                                   ("actor",))
        self.mailbox = m.gauge("zixir_actor_mailbox_depth",
                               "Messages waiting in a named actor's inbox (sampled).", ("actor",))
        self.rss = m.gauge("zixir_process_resident_memory_bytes",
                           "Resident memory of this process (sampled).")
        self.children_rss = m.gauge("zixir_process_children_resident_memory_bytes",
                                    "Resident memory of this process's children (sandboxes).")
        self.cpu = m.gauge("zixir_process_cpu_percent",
                           "CPU use of this process since the previous sample, in percent.")
        self.threads = m.gauge("zixir_process_threads", "Threads in this process (sampled).")
        self.sampled_at = m.gauge("zixir_metrics_last_sample_timestamp_seconds",
                                  "Wall-clock time of the last process sample.")


class _MessageHook:
    """`set_message_hook` target: queues (actor, seconds, error), metrics catch up later.

    The hook runs in the actor's thread right after the reply was sent, while
    the asker wakes up: anything slower than a `deque.append` there shows up
    in every `ask`. The queue is folded into the metrics (label children bound
    once per actor) before every collection of the registry (a scrape,
    `Metrics.sample`, `exposition`), on every timer tick, and by the metrics
    actor when `FLUSH_AT` entries are waiting.
    """

    __slots__ = ("__weakref__", "_alive", "_bound", "_flush_lock", "_notify", "_pending", "_rt",
                 "closed", "previous")

    def __init__(self, rt: _RuntimeMetrics, notify: Callable[[], object]) -> None:
        self._rt = rt
        self._notify = notify
        self.previous: Any = None  # the hook this one replaced, put back when it stops
        self.closed = False
        self._pending: deque[tuple[tuple[Any, Any, Any], float, BaseException | None]] = deque()
        self._flush_lock = threading.Lock()
        # Per actor incarnation (by URN): (ok counter, error counter, histogram)
        # children; `prune` drops the actors that are gone.
        self._bound: dict[str, tuple[Any, Any, Any]] = {}
        self._alive: dict[str, weakref.ref[pykka.Actor]] = {}

    def __call__(self, actor: pykka.Actor, message: Any, seconds: float,
                 error: BaseException | None) -> None:
        # Bound here, not at flush time: a crashed actor has lost its name by then.
        bound = self._bound.get(actor.actor_urn)
        if bound is None:
            bound = self._bind(actor)
        pending = self._pending
        pending.append((bound, seconds, error))
        if len(pending) == FLUSH_AT:
            self._notify()

    def flush(self) -> int:
        """Fold the queued messages into the metrics; returns how many."""
        pending = self._pending
        done = 0
        with self._flush_lock:
            while True:
                try:
                    bound, seconds, error = pending.popleft()
                except IndexError:
                    return done
                (bound[0] if error is None else bound[1]).inc()
                bound[2].observe(seconds)
                done += 1

    def _bind(self, actor: pykka.Actor) -> tuple[Any, Any, Any]:
        label = name_of(actor.actor_ref) or type(actor).__name__
        rt = self._rt
        bound = (rt.messages.labels(label, "ok"), rt.messages.labels(label, "error"),
                 rt.seconds.labels(label))
        self._alive[actor.actor_urn] = weakref.ref(actor)
        self._bound[actor.actor_urn] = bound
        return bound

    def prune(self) -> None:
        """Forget the bindings of actors that no longer exist."""
        for urn, alive in list(self._alive.items()):
            if alive() is None:
                self._alive.pop(urn, None)
                self._bound.pop(urn, None)


@dataclass(frozen=True, slots=True)
class _Flush:
    pass


class _Ticker(threading.Thread):
    """Tells the actor to sample every `interval` seconds until stopped."""

    def __init__(self, actor_ref: pykka.ActorRef[Any], interval: float) -> None:
        super().__init__(name="zixir-metrics-ticker", daemon=True)
        self._ref = actor_ref
        self._interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self._interval):
            try:
                self._ref.tell(_Tick())
            except pykka.ActorDeadError:
                return


@dataclass(frozen=True, slots=True)
class _Tick:
    pass


class MetricsRegistry(SupervisedActor):
    """The metrics actor: owns the registry, wires supervision into metrics, samples.

    Example:
        >>> actor = MetricsRegistry.start(interval=60.0)
        >>> sample = actor.proxy().sample().get(timeout=5.0)
        >>> sample.rss_bytes > 0
        True
        >>> actor.stop()
        True

    Args:
        metrics: the `Metrics` to own; default the process-wide `metrics`.
        interval: seconds between samples (`DEFAULT_SAMPLE_INTERVAL`);
            None samples only when asked (`sample()`).
        port: serve ``/metrics`` on this port while running (0 = any free
            port, read it with `port()`); None (default) does not serve.
        host: the address to serve on, loopback by default.
        clock: where sample timestamps come from.
        runtime_metrics: False skips the supervision listener and message hook.
    """

    def __init__(self, *, metrics: Metrics | None = None,
                 interval: float | None = DEFAULT_SAMPLE_INTERVAL, port: int | None = None,
                 host: str = "127.0.0.1", clock: Clock = SYSTEM_CLOCK,
                 runtime_metrics: bool = True) -> None:
        super().__init__()
        if interval is not None and not interval > 0:
            raise ConfigError("interval", interval, "must be a positive number of seconds or None")
        self._metrics = metrics if metrics is not None else default_metrics
        self._interval = interval
        self._clock = clock
        self._runtime = runtime_metrics
        self._server = MetricsServer(port, host, self._metrics.registry) \
            if port is not None else None
        self._rt: _RuntimeMetrics | None = None
        self._hook: _MessageHook | None = None
        self._listener: Any = None
        self._ticker: _Ticker | None = None
        self._process = psutil.Process()
        self._mailboxes: set[str] = set()

    # -- lifecycle -----------------------------------------------------------

    def on_start(self) -> None:
        try:
            self._install()
        except BaseException:
            # Pykka calls neither on_stop nor on_failure when on_start raises.
            self._teardown()
            raise

    def _install(self) -> None:
        self._rt = _RuntimeMetrics(self._metrics)
        self._process.cpu_percent(None)  # the first call only starts the measurement
        if self._runtime:
            self._listener = add_listener(self._on_event)
            actor_ref = self.actor_ref
            self._hook = _MessageHook(self._rt, lambda: actor_ref.tell(_Flush()))
            self._metrics._before_collect_add(self._hook.flush)
            self._hook.previous = set_message_hook(self._hook)
        self.sample()
        if self._server is not None:
            self._server.start()
        if self._interval is not None:
            self._ticker = _Ticker(self.actor_ref, self._interval)
            self._ticker.start()

    def on_stop(self) -> None:
        self._teardown()

    def on_failure(self, *exc_info: Any) -> None:
        self._teardown()

    def _teardown(self) -> None:
        if self._listener is not None:
            # The bound method stored at start: remove_listener compares identity.
            remove_listener(self._listener)
            self._listener = None
        hook = self._hook
        if hook is not None:
            hook.closed = True
            # Put back the hook ours replaced (skipping any whose registry has
            # stopped since), unless someone replaced ours in the meantime.
            restore = hook.previous
            while isinstance(restore, _MessageHook) and restore.closed:
                restore = restore.previous
            current = set_message_hook(restore)
            if current is not hook:
                set_message_hook(current)
            self._metrics._before_collect_remove(hook.flush)
            hook.flush()
            self._hook = None
        if self._ticker is not None:
            self._ticker.stopped.set()
            self._ticker.join(5.0)
            self._ticker = None
        if self._server is not None:
            self._server.stop(timeout=5.0)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _Tick):
            return self.sample()
        if isinstance(message, _Flush) and self._hook is not None:
            return self._hook.flush()
        return None

    # -- the public API (call through the proxy) ------------------------------

    def sample(self) -> Sample:
        """Measure now: mailbox depths, process RSS/CPU/threads; close orphan spans."""
        rt = self._rt
        assert rt is not None
        if self._hook is not None:
            self._hook.flush()
            self._hook.prune()
        depths: dict[str, int] = {}
        for name, actor_ref in registered().items():
            try:
                depths[name] = actor_ref.actor_inbox.qsize()  # type: ignore[attr-defined]
            except Exception:
                continue
        for name, depth in depths.items():
            rt.mailbox.labels(name).set(depth)
        for gone in self._mailboxes - depths.keys():
            with contextlib.suppress(KeyError):
                rt.mailbox.remove(gone)
        self._mailboxes = set(depths)
        with self._process.oneshot():
            rss = self._process.memory_info().rss
            cpu = self._process.cpu_percent(None)
            threads = self._process.num_threads()
        children_rss = 0
        for child in self._process.children(recursive=True):
            try:
                children_rss += child.memory_info().rss
            except psutil.Error:
                continue
        now = self._clock.time()
        rt.rss.set(rss)
        rt.children_rss.set(children_rss)
        rt.cpu.set(cpu)
        rt.threads.set(threads)
        rt.sampled_at.set(now)
        closed = sweep_orphan_spans()
        resync_wall_clock()
        return Sample(now, rss, cpu, threads, children_rss, depths, len(closed))

    def exposition(self) -> bytes:
        """The owned registry in the Prometheus text format."""
        return self._metrics.exposition()

    def port(self) -> int | None:
        """The port ``/metrics`` is served on, or None when not serving."""
        return self._server.port if self._server is not None else None

    # -- supervision events (run in the supervisor's thread) ------------------

    def _on_event(self, event: Any) -> None:
        rt = self._rt
        if rt is None:
            return
        if isinstance(event, ChildRestarted):
            rt.restarts.labels(event.supervisor, str(event.child_id)).inc()
        elif isinstance(event, IntensityExceeded):
            rt.escalations.labels(event.supervisor).inc()
        elif isinstance(event, ChildExited) and isinstance(event.reason, BaseException):
            rt.crashes.labels(event.supervisor, str(event.child_id)).inc()


def child_spec(**options: Any) -> ChildSpec:
    """The `ChildSpec` of the metrics actor, registered as ``"zixir.metrics"``.

    Example:
        >>> child_spec(interval=10.0).name
        'zixir.metrics'

    Args:
        **options: keyword arguments of `MetricsRegistry` (`interval`,
            `port`, `host`, `metrics`, `clock`, `runtime_metrics`).
    """
    return ChildSpec(id="metrics", start=MetricsRegistry, kwargs=options,
                     restart="permanent", shutdown=5.0, type="worker", name=METRICS_NAME)
