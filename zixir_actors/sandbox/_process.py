"""Worker processes and the helper ("zygote") process that forks them.

`_Zygote` starts the helper from a fresh interpreter (so forking stays cheap
whatever the size of the application) and asks it for workers; `_Worker` is
the parent's handle on one worker: its socket, and killing its whole process
tree.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time

import psutil

from zixir_actors.errors import SandboxClosedError
from zixir_actors.sandbox import _worker

__all__ = [
    "KILL_WAIT",
    "LEARNED",
    "SPAWN_TIMEOUT",
    "Worker",
    "Zygote",
    "nesting_level",
    "tree_rss",
    "wait_gone",
]

SPAWN_TIMEOUT = 30.0
"""Seconds the helper process gets to hand over a worker before it is restarted."""

KILL_WAIT = 2.0
"""Seconds `kill_tree` waits for killed processes to die, and again for them to be reaped."""

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

_SCRIPT = _worker.__file__

LEARNED: set[str] = set()
"""Modules of functions called in any pool of this process: later helpers preload them."""


def nesting_level() -> tuple[int, int | None]:
    """How many sandboxes deep this process runs, and the deepest level allowed from outside."""
    level = int(os.environ.get(_worker.LEVEL_ENV, "0") or 0)
    ceiling = os.environ.get(_worker.MAX_LEVEL_ENV)
    return level, int(ceiling) if ceiling else None


def _descendants(proc: psutil.Process) -> list[psutil.Process]:
    """Every process under `proc`, read from /proc/PID/task/TID/children.

    Much faster than `psutil.Process.children`, which scans every process on
    the machine; it falls back to that where the kernel lacks the file.
    """
    found: list[psutil.Process] = []
    stack = [proc.pid]
    while stack:
        pid = stack.pop()
        try:
            tids = os.listdir(f"/proc/{pid}/task")
            texts = []
            for tid in tids:
                with open(f"/proc/{pid}/task/{tid}/children") as fh:
                    texts.append(fh.read())
        except FileNotFoundError:
            if pid == proc.pid and os.path.exists(f"/proc/{pid}"):
                with contextlib.suppress(psutil.Error):
                    return list(proc.children(recursive=True))
            continue
        except OSError:
            continue
        for text in texts:
            for child in text.split():
                with contextlib.suppress(psutil.Error, ValueError):
                    found.append(psutil.Process(int(child)))
                    stack.append(int(child))
    return found


def _dead(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def _reaped(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running()  # also False for a pid reused by another process
    except psutil.Error:
        return True


def wait_gone(procs: list[psutil.Process], *, timeout: float,
              reaped: list[psutil.Process] | None = None) -> None:
    """Wait until killed processes are dead (their memory is free), then `reaped` reaped.

    Not our children (the helper forked them), so there is nothing to wait
    on: poll with a short, growing interval; this only runs after a kill. The
    helper is their subreaper and reaps them at once; a zombie that nobody
    reaps (the helper itself died) is waited for at most `timeout` more.

    Args:
        procs: the killed processes.
        timeout: seconds for each of the two waits.
        reaped: those of `procs` that must also be reaped (default: all).
    """
    for gone, which in ((_dead, procs), (_reaped, procs if reaped is None else reaped)):
        deadline = time.monotonic() + timeout
        delay = 0.0002
        left = [p for p in which if not gone(p)]
        while left and time.monotonic() < deadline:
            time.sleep(delay)
            delay = min(delay * 1.5, 0.01)
            left = [p for p in left if not gone(p)]


def tree_rss(proc: psutil.Process, rss: int) -> int:
    """`rss` (the worker's, already read) plus the RSS of every process under it.

    Each process counts all its resident pages, so pages shared between them
    (copy-on-write after a fork) count once per process: never less than
    what the tree really uses.
    """
    pids = _worker.descendants(proc.pid)
    if not pids and not os.path.isdir("/proc/self/task"):
        with contextlib.suppress(psutil.Error):
            for child in proc.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    rss += child.memory_info().rss
        return rss
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", "rb") as fh:
                rss += int(fh.read().split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            continue  # ended, or a zombie (no pages)
    return rss


class Worker:
    """The parent's handle on one worker process."""

    __slots__ = ("_kill_lock", "calls", "dead", "fresh", "killed", "pid", "proc", "sock")

    def __init__(self, pid: int, sock: socket.socket, fresh: bool) -> None:
        self.pid = pid
        self.sock = sock
        self.fresh = fresh
        self.calls = 0
        self.dead = False
        self.killed: list[psutil.Process] = []
        self._kill_lock = threading.Lock()
        # Bound now, while the pid surely is this worker: psutil then refuses
        # to signal a later process that reuses the pid.
        try:
            self.proc: psutil.Process | None = psutil.Process(pid)
        except psutil.Error:
            self.proc = None

    def process(self) -> psutil.Process:
        if self.proc is None:
            raise psutil.NoSuchProcess(self.pid)
        return self.proc

    def idle_ok(self) -> bool:
        """True if the idle worker still listens (a dead one makes its socket readable: EOF)."""
        try:
            readable = select.select([self.sock], [], [], 0)[0]
        except (OSError, ValueError):
            return False
        return not readable

    def kill_tree(self) -> None:
        """SIGKILL the worker and every process under it, and wait until they are gone.

        Also waits for a kill that another thread (the limit monitor) started.
        """
        self.signal_tree()
        # The worker itself is the pool's business: dead is enough. The processes
        # of the call must be gone for good (reaped) before the call's Err returns.
        wait_gone(self.killed, timeout=KILL_WAIT, reaped=self.killed[1:])

    def signal_tree(self) -> list[psutil.Process]:
        """SIGKILL the worker and every process under it; returns them (to wait on).

        A second caller (the limit monitor and the call's thread may both kill)
        gets an empty list, once the first one's processes are all signalled.
        """
        with self._kill_lock:
            if self.dead:
                return []
            procs: list[psutil.Process] = []
            if self.proc is not None:
                procs = [self.proc, *_descendants(self.proc)]
            self.killed = procs
            self.dead = True
            # The worker leads its own process group (setsid): this also reaches a
            # process forked after the walk. Orphans are the worker's (a subreaper).
            with contextlib.suppress(OSError):
                os.killpg(self.pid, signal.SIGKILL)
            for proc in procs:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            return procs

    def retire(self) -> None:
        """End a healthy worker (its process group) without the tree walk.

        Its calls left no process behind (the worker ends them after each
        call); the helper ends whatever an unfinished call may have left.
        """
        with self._kill_lock:
            if not self.dead:
                self.dead = True
                with contextlib.suppress(OSError):
                    os.killpg(self.pid, signal.SIGKILL)
        self.sock.close()


class Zygote:
    """The small helper process that forks workers."""

    def __init__(self, name: str, spares: int, learn: bool) -> None:
        self._name = name
        self._spares = spares
        self._learn = learn
        self._stopped = False
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._ctl: socket.socket | None = None
        self.starts = 0

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        level, ceiling = nesting_level()
        env = dict(os.environ)
        env[_worker.PATH_ENV] = os.pathsep.join(p or os.getcwd() for p in sys.path)
        env[_worker.LEVEL_ENV] = str(level + 1)
        env[_worker.SPARES_ENV] = str(self._spares)
        if ceiling is not None:
            env[_worker.MAX_LEVEL_ENV] = str(ceiling)
        env.pop(_worker.PRELOAD_ENV, None)
        if self._learn and LEARNED:
            env[_worker.PRELOAD_ENV] = ",".join(sorted(LEARNED))
        try:
            self._proc = subprocess.Popen(
                [sys.executable, _SCRIPT, str(theirs.fileno())], pass_fds=(theirs.fileno(),),
                env=env, stdin=subprocess.DEVNULL, close_fds=True)
        finally:
            theirs.close()
        # A helper that does not answer is replaced rather than waited on forever.
        ours.settimeout(SPAWN_TIMEOUT)
        self._ctl = ours
        self.starts += 1

    def spawn(self, *, fresh: bool) -> Worker:
        with self._lock:
            if self._stopped:
                raise SandboxClosedError(self._name)
            for attempt in (1, 2):
                if self._proc is None or self._proc.poll() is not None:
                    self._stop_locked(timeout=1.0)
                    self._start()
                assert self._ctl is not None
                try:
                    self._ctl.sendall(b"s")
                    pid, sock = _worker.recv_worker(self._ctl)
                    return Worker(pid, sock, fresh)
                except (OSError, EOFError):
                    if attempt == 2:
                        raise
                    # Dead or stuck (a preloaded module that hangs, say): start a
                    # plain one, without preloads.
                    self._learn = False
                    self._stop_locked(timeout=1.0)
        raise AssertionError("unreachable")

    def preload(self, module: str) -> None:
        """Have the helper import `module`, so workers forked from now on start with it."""
        with self._lock:
            if self._ctl is None or not self._learn:
                return
            with contextlib.suppress(OSError):
                self._ctl.sendall(b"i")
                _worker.send_frame(self._ctl, module.encode())

    def _stop_locked(self, *, timeout: float | None) -> None:
        if self._ctl is not None:
            self._ctl.close()
            self._ctl = None
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop(self, *, timeout: float | None = 5.0) -> None:
        """Stop the helper for good (it kills the workers it forked); idempotent."""
        with self._lock:
            self._stopped = True
            self._stop_locked(timeout=timeout)
